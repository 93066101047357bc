// How the agent names what goes wrong (agent/run.ts): the health events
// `pgtimewarp doctor` and operators read.

import { describe, expect, it } from 'vitest';

import { AssemblyError } from '../../agent/assemble.js';
import { PgoutputDecodeError } from '../../agent/pgoutput.js';
import { retryKind, walRisk } from '../../agent/run.js';
import { Wal2jsonError } from '../../agent/wal2json.js';
import { StoreWriteError } from '../../agent/writer.js';

const GiB = 1n << 30n;

describe('walRisk', () => {
  it('is quiet while the slot has headroom or no limit', () => {
    expect(walRisk('reserved', null, GiB)).toBeNull(); // max_slot_wal_keep_size = -1: no limit
    expect(walRisk('reserved', 2n * GiB, GiB)).toBeNull();
    expect(walRisk('extended', 2n * GiB, GiB)).toBeNull();
  });

  it('warns when WAL the slot needs is about to go, and says when it is gone', () => {
    expect(walRisk('reserved', GiB - 1n, GiB)).toMatch(/only 1073741823 bytes of WAL can still be written/);
    expect(walRisk('unreserved', 0n, GiB)).toMatch(/about to lose WAL/);
    expect(walRisk('lost', null, GiB)).toMatch(/has lost WAL it needs: history has a gap/);
  });
});

describe('retryKind', () => {
  it('tells decode and store errors from lost connections', () => {
    expect(retryKind(new PgoutputDecodeError('bad byte', 3, 'U'))).toBe('decode_error');
    expect(retryKind(new Wal2jsonError('bad json'))).toBe('decode_error');
    expect(retryKind(new AssemblyError('no key'))).toBe('decode_error');
    expect(retryKind(new StoreWriteError('cannot carry'))).toBe('store_write_error');
    expect(retryKind(new Error('Connection terminated unexpectedly'))).toBe('agent_retry');
  });
});
