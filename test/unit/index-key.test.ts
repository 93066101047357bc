// The index form of a canonical key (agent/key.ts indexKey): long keys by
// digest, at the same boundary and with the same digest as the extension and
// the store (checked against them in test/e2e/long-keys.test.ts and
// test/regress/sql/18_long_keys.sql).

import { createHash } from 'node:crypto';

import { describe, expect, it } from 'vitest';

import { LONG_KEY_BYTES, indexKey, isLongKey } from '../../agent/key.js';

describe('indexKey', () => {
  it('keeps a key of up to LONG_KEY_BYTES UTF-8 bytes as it is', () => {
    expect(indexKey(['42'])).toEqual(['42']);
    expect(indexKey(['x'.repeat(LONG_KEY_BYTES)])).toEqual(['x'.repeat(LONG_KEY_BYTES)]);
    // 256 two-byte characters: 512 bytes, though 768 would be the worst case
    expect(isLongKey(['é'.repeat(256)])).toBe(false);
    expect(isLongKey(['a'.repeat(200), 'b'.repeat(312)])).toBe(false);
  });

  it('indexes a longer key by the SHA-256 of its lengths and bytes, behind a NULL no key has', () => {
    expect(isLongKey(['x'.repeat(LONG_KEY_BYTES + 1)])).toBe(true);
    expect(isLongKey(['é'.repeat(257)])).toBe(true);
    const key = ['é'.repeat(300), 'b'];
    const expected = createHash('sha256').update(`600:${'é'.repeat(300)}1:b`, 'utf8').digest('hex');
    expect(indexKey(key)).toEqual([null, expected]);
  });

  it('tells keys apart whose values only split differently', () => {
    expect(indexKey(['a'.repeat(300), 'b'.repeat(300)])).not.toEqual(indexKey(['a'.repeat(301), 'b'.repeat(299)]));
  });
});
