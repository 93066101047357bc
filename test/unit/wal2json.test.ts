// agent/wal2json.ts on hand-written format-2 documents: the paths real
// wal2json output (test/e2e/wal2json.test.ts) does not reach — malformed
// input and missing options fail loudly instead of decoding to a guess.

import { describe, expect, it } from 'vitest';

import { Wal2jsonDecoder, Wal2jsonError, WAL2JSON_OPTIONS, wal2jsonOptions } from '../../agent/wal2json.js';

function decode(doc: string | Buffer): ReturnType<Wal2jsonDecoder['decode']> {
  return new Wal2jsonDecoder().decode(typeof doc === 'string' ? Buffer.from(doc, 'utf8') : doc);
}

const insert = (value: string, typeoid = 17): string =>
  `{"action":"I","schema":"s","table":"t","columns":[{"name":"c","typeoid":${typeoid},"value":${value},"position":1}],"pk":[]}`;

describe('Wal2jsonDecoder on malformed input', () => {
  it('refuses bytes that are not UTF-8, but in a logical message, which any role can write', () => {
    expect(() => decode(Buffer.from([0x7b, 0xff, 0x7d]))).toThrow(/not valid UTF-8/);
    expect(() => decode(Buffer.concat([Buffer.from(insert('"'), 'utf8'), Buffer.from([0xff]), Buffer.from('"')]))).toThrow(/not valid UTF-8/);
    const message = Buffer.concat([
      Buffer.from('{"action":"M","transactional":true,"prefix":"pgtimewarp","content":"a', 'utf8'), Buffer.from([0xff, 0xc3]),
      Buffer.from('","lsn":"0/16B3F08"}', 'utf8'),
    ]);
    expect(decode(message)).toEqual([{ type: 'message', transactional: true, lsn: 0x16b3f08n, prefix: 'pgtimewarp', content: 'a\ufffd\ufffd' }]);
  });

  it('refuses text that is not one JSON object', () => {
    expect(() => decode('{"action":"B"')).toThrow(Wal2jsonError);
    expect(() => decode('[]')).toThrow(/not a JSON object/);
    expect(() => decode('{"action":"X"}')).toThrow(/unknown wal2json action "X"/);
  });

  it('names the option whose field is missing', () => {
    expect(() => decode('{"action":"B","timestamp":"2024-01-01 00:00:00+00","lsn":"0/1"}')).toThrow(/include-xids/);
    expect(() => decode('{"action":"C","timestamp":"2024-01-01 00:00:00+00"}')).toThrow(/include-lsn/);
    expect(() => decode('{"action":"I","schema":"s","table":"t","columns":[{"name":"c","value":1,"position":1}],"pk":[]}')).toThrow(
      /include-type-oids/,
    );
    expect(() => decode('{"action":"I","schema":"s","table":"t","columns":[{"name":"c","typeoid":23,"value":1}],"pk":[]}')).toThrow(
      /include-column-positions/,
    );
  });

  it('refuses bytea that is not hex output', () => {
    expect(decode(insert('"00ff"'))).toContainEqual(expect.objectContaining({ type: 'insert' }));
    expect(() => decode(insert('"\\\\000abc"'))).toThrow(/bytea_output=hex/);
    expect(() => decode(insert('"abc"'))).toThrow(/bytea_output=hex/);
  });

  it('refuses JSON booleans, arrays and objects where wal2json prints none', () => {
    expect(() => decode(insert('true', 25))).toThrow(/JSON boolean/);
    expect(() => decode(insert('[1]', 25))).toThrow(/array/);
    expect(() => decode(insert('{}', 25))).toThrow(/object/);
  });

  it('reads commit timestamps with any offset, to the microsecond', () => {
    const at = (stamp: string): bigint | undefined => {
      const [begin] = decode(`{"action":"B","xid":1,"timestamp":"${stamp}","lsn":"0/1"}`);
      return begin?.type === 'begin' ? begin.commitTimeMicros : undefined;
    };
    const base = BigInt(Date.UTC(2024, 4, 1, 10, 0, 0)) * 1000n;
    expect(at('2024-05-01 10:00:00+00')).toBe(base);
    expect(at('2024-05-01 10:00:00.000001+00')).toBe(base + 1n);
    expect(at('2024-05-01 15:30:00.12+05:30')).toBe(base + 120_000n);
    expect(at('2024-05-01 09:59:59.999999-00:00:01')).toBe(base + 999_999n);
    expect(() => at('2024-05-01T10:00:00Z')).toThrow(/not an ISO timestamp/);
  });

  it('sends every option wal2json 2.5 needs for these fields, and add-tables last', () => {
    const options = wal2jsonOptions([{ schema: 'public', table: 'a' }]);
    expect(options.slice(0, -1)).toEqual(Object.entries(WAL2JSON_OPTIONS));
    expect(options.at(-1)).toEqual(['add-tables', 'public.a']);
  });
});
