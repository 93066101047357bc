// Transaction assembly, message by message: what versions a committed
// transaction produces (agent/assemble.ts).  No database: the decoded
// messages are written out by hand, as the decoders would produce them.

import { describe, expect, it } from 'vitest';

import {
  AssemblyError, MAX_TRACKING_EVENTS, TransactionAssembler, parseTrackingMessage, readPgtimewarpMessage, type Catalog, type TrackedTable,
} from '../../agent/assemble.js';
import { UNCHANGED_TOAST, type ColumnValue, type DecodedMessage, type RelationInfo } from '../../agent/decode.js';

const INT4 = 23;
const TEXT = 25;
const NUMERIC = 1700;

const accounts: RelationInfo = {
  oid: 16384,
  schema: 'public',
  table: 'accounts',
  columns: [
    { name: 'id', typeOid: INT4, isKey: true },
    { name: 'note', typeOid: TEXT, isKey: false },
    { name: 'big', typeOid: TEXT, isKey: false },
  ],
};
const prices: RelationInfo = {
  oid: 16390,
  schema: 'public',
  table: 'prices',
  columns: [{ name: 'p', typeOid: NUMERIC, isKey: true }],
};
const untracked: RelationInfo = { oid: 16400, schema: 'public', table: 'other', columns: [{ name: 'id', typeOid: INT4, isKey: true }] };

function catalog(tables: TrackedTable[]): Catalog {
  return {
    tracked: (schema, table) => tables.find((t) => t.schema === schema && t.table === table),
    baseType: (oid) => oid,
  };
}

const tracked: TrackedTable[] = [
  { relationId: 1, relid: 16384, schema: 'public', table: 'accounts', pkColumns: ['id'], trackedFromLsn: 100n, untrackedLsn: null },
  { relationId: 2, relid: 16390, schema: 'public', table: 'prices', pkColumns: ['p'], trackedFromLsn: 100n, untrackedLsn: null },
];

function row(values: Record<string, ColumnValue>): Map<string, ColumnValue> {
  return new Map(Object.entries(values));
}

const when = new Date('2024-01-01T00:00:00Z');
const whenMicros = BigInt(when.getTime()) * 1000n + 7n;

/** Run one transaction committing at `lsn` through a fresh assembler. */
function transaction(changes: DecodedMessage[], lsn = 1000n, tables = tracked) {
  const assembler = new TransactionAssembler(catalog(tables));
  expect(assembler.push({ type: 'begin', xid: 7, finalLsn: lsn, commitTime: when, commitTimeMicros: whenMicros })).toBeNull();
  for (const change of changes) expect(assembler.push(change)).toBeNull();
  const done = assembler.push({ type: 'commit', commitLsn: lsn, endLsn: lsn + 48n, commitTime: when, commitTimeMicros: whenMicros });
  if (done === null) throw new Error('no transaction at COMMIT');
  return done;
}

const insert = (id: string, note: ColumnValue, big: ColumnValue = 'b'): DecodedMessage => ({
  type: 'insert', relation: accounts, newRow: row({ id, note, big }),
});
const update = (id: string, note: ColumnValue, big: ColumnValue = 'b', oldId?: string): DecodedMessage => ({
  type: 'update', relation: accounts, oldRow: oldId === undefined ? null : row({ id: oldId }), newRow: row({ id, note, big }),
});
const del = (id: string): DecodedMessage => ({ type: 'delete', relation: accounts, oldRow: row({ id }) });

describe('TransactionAssembler', () => {
  it('makes one version per key: its state at commit, with the commit LSN and time', () => {
    const t = transaction([update('1', 'a'), update('1', 'b'), update('1', 'c')]);
    expect(t).toMatchObject({ commitLsn: 1000n, endLsn: 1048n, commitTime: when, commitTimeMicros: whenMicros, truncated: [], tracking: [] });
    expect(t.versions).toEqual([
      { relationId: 1, schema: 'public', table: 'accounts', pk: ['1'], op: 'update', rowData: { id: '1', note: 'c', big: 'b' }, carryColumns: [], carryFromPk: null, opFromStore: false },
    ]);
  });

  it('names the op after the key\'s first change', () => {
    const t = transaction([insert('1', 'new'), update('1', 'newer'), del('2'), insert('2', 'back'), update('3', 'x'), del('3')]);
    expect(t.versions.map((v) => [v.pk[0], v.op, v.rowData?.['note'] ?? null])).toEqual([
      ['1', 'insert', 'newer'],
      ['2', 'update', 'back'],
      ['3', 'delete', null],
    ]);
  });

  it('leaves nothing for a row inserted and deleted in the same transaction', () => {
    expect(transaction([insert('9', 'tmp'), del('9')]).versions).toEqual([]);
  });

  it('closes the old key and opens the new one on a primary-key change', () => {
    const t = transaction([update('20', 'moved', 'b', '2')]);
    expect(t.versions).toEqual([
      { relationId: 1, schema: 'public', table: 'accounts', pk: ['2'], op: 'delete', rowData: null, carryColumns: [], carryFromPk: null, opFromStore: false },
      { relationId: 1, schema: 'public', table: 'accounts', pk: ['20'], op: 'insert', rowData: { id: '20', note: 'moved', big: 'b' }, carryColumns: [], carryFromPk: null, opFromStore: false },
    ]);
  });

  it('carries an unchanged TOASTed value from earlier in the transaction', () => {
    const t = transaction([insert('1', 'n', 'LARGE'), update('1', 'm', UNCHANGED_TOAST)]);
    expect(t.versions[0]).toMatchObject({ op: 'insert', rowData: { id: '1', note: 'm', big: 'LARGE' }, carryColumns: [] });
  });

  it('asks the writer to carry an unchanged TOASTed value from the store otherwise', () => {
    const t = transaction([update('1', 'm', UNCHANGED_TOAST)]);
    expect(t.versions[0]).toMatchObject({ op: 'update', rowData: { id: '1', note: 'm' }, carryColumns: ['big'], carryFromPk: ['1'] });
  });

  it('carries from the old key when the key changed and a TOASTed value did not', () => {
    const t = transaction([update('5', 'moved', UNCHANGED_TOAST, '4')]);
    expect(t.versions[1]).toMatchObject({ pk: ['5'], op: 'insert', carryColumns: ['big'], carryFromPk: ['4'] });
    // and when the old key's row is known in this transaction, from that row
    const u = transaction([update('4', 'seen', 'OLDBIG'), update('5', 'moved', UNCHANGED_TOAST, '4')]);
    expect(u.versions[1]).toMatchObject({ pk: ['5'], rowData: { id: '5', note: 'moved', big: 'OLDBIG' }, carryColumns: [] });
  });

  it('truncate closes what the transaction touched before it and is reported for the rest', () => {
    const t = transaction([
      update('1', 'before'),
      insert('9', 'brief'),
      { type: 'truncate', relations: [accounts] },
      insert('2', 'after'),
      insert('3', 'fleeting'),
      del('3'),
    ]);
    expect(t.truncated).toEqual([{ relationId: 1, schema: 'public', table: 'accounts' }]);
    expect(t.versions.map((v) => [v.pk[0], v.op, v.opFromStore])).toEqual([
      ['1', 'truncate', false],
      // 9 lived only inside the transaction; 3, written after the truncate and
      // gone at commit, is the truncate step's to close if it existed before
      // whether 2 existed before is the store's to say
      ['2', 'update', true],
    ]);
  });

  it('keys values by the canonical encoding', () => {
    const t = transaction([{ type: 'insert', relation: prices, newRow: row({ p: '1.50' }) }]);
    expect(t.versions[0]?.pk).toEqual(['1.5']);
    expect(t.versions[0]?.rowData).toEqual({ p: '1.50' });
  });

  it('records a table only between its tracking LSNs', () => {
    const change = [insert('1', 'x')];
    expect(transaction(change, 100n).versions).toEqual([]); // commit at tracked_from_lsn: in the baseline
    expect(transaction(change, 101n).versions).toHaveLength(1);
    const stopped = [{ ...tracked[0]!, untrackedLsn: 500n }];
    expect(transaction(change, 500n, stopped).versions).toHaveLength(1);
    expect(transaction(change, 501n, stopped).versions).toEqual([]);
    expect(transaction([{ type: 'insert', relation: untracked, newRow: row({ id: '1' }) }]).versions).toEqual([]);
  });

  it('reports tracking messages in the transaction that carries them, others ignored', () => {
    const t = transaction([
      { type: 'message', transactional: true, lsn: 990n, prefix: 'pgtimewarp',
        content: '{"action": "track", "node_id": "n1", "schema_name": "public", "table_name": "t", "lsn": "0/3E8"}' },
      { type: 'message', transactional: true, lsn: 991n, prefix: 'someone-else', content: 'hello' },
    ]);
    expect(t.tracking).toEqual([{ action: 'track', nodeId: 'n1', schema: 'public', table: 't', lsn: 1000n }]);
  });

  it('fails the transaction of a change without its key, and refuses a stream out of order', () => {
    const t = transaction([{ type: 'delete', relation: accounts, oldRow: row({ note: 'x' }) }]);
    expect(t.failure?.message).toMatch(/lacks primary key column "id"/);
    const assembler = new TransactionAssembler(catalog(tracked));
    expect(() => assembler.push(insert('1', 'x'))).toThrow(AssemblyError);
    assembler.push({ type: 'begin', xid: 1, finalLsn: 200n, commitTime: when, commitTimeMicros: whenMicros });
    expect(() => assembler.push({ type: 'begin', xid: 2, finalLsn: 300n, commitTime: when, commitTimeMicros: whenMicros })).toThrow(/inside xid 1/);
    expect(() => assembler.push({ type: 'commit', commitLsn: 300n, endLsn: 310n, commitTime: when, commitTimeMicros: whenMicros })).toThrow(/BEGIN said/);
  });
});

describe('tracking messages anyone can write', () => {
  const message = (content: string, lsn = 990n): DecodedMessage => ({ type: 'message', transactional: true, lsn, prefix: 'pgtimewarp', content });
  const track = (table: string, lsn = '0/3E8'): string =>
    JSON.stringify({ action: 'track', node_id: 'n1', schema_name: 'public', table_name: table, lsn });

  it('are never an error: what is not a tracking event is counted, with the start of the first few', () => {
    const contents = ['x', 'null', '[1]', '{"action": "track"}', track('t', 'not an lsn'), '{"action": "drop", "node_id": "n1"}', 'y'.repeat(10_000)];
    const t = transaction([...contents.map((c, i) => message(c, 900n + BigInt(i))), insert('1', 'still recorded')]);
    expect(t.failure).toBeNull();
    expect(t.tracking).toEqual([]);
    expect(t.malformedTrackingCount).toBe(contents.length);
    expect(t.malformedTracking).toEqual([
      { messageLsn: 900n, reason: 'pgtimewarp message is not JSON: "x"' },
      { messageLsn: 901n, reason: 'unexpected pgtimewarp message: "null"' },
      { messageLsn: 902n, reason: 'unexpected pgtimewarp message: "[1]"' },
    ]);
    expect(t.versions).toHaveLength(1);
    // a long one is quoted in part
    expect(readPgtimewarpMessage('y'.repeat(10_000))).toBe(`pgtimewarp message is not JSON: "${'y'.repeat(200)}"... (10000 characters)`);
    expect(() => parseTrackingMessage('null')).toThrow(AssemblyError);
  });

  it('include the extension\'s DDL claims, passed on as claims', () => {
    const t = transaction([message('{"action" : "ddl", "first" : 2, "last" : 3}'), message('{"action": "ddl", "first": 2, "last": 3}'),
      message('{"action": "ddl", "first": 3, "last": 2}'), message('{"action": "ddl", "first": "1", "last": 2}')]);
    expect(t.ddl).toEqual([{ first: 2, last: 3 }]);
    expect(t.malformedTrackingCount).toBe(2);
    expect(() => parseTrackingMessage('{"action": "ddl", "first": 2, "last": 3}')).toThrow(/not a tracking message/);
  });

  it('are kept once each, and only so many: beyond that the transaction says the list is not whole', () => {
    const t = transaction([message(track('t')), message(track('t')), message(track('u'))]);
    expect(t.tracking.map((e) => e.table)).toEqual(['t', 'u']);
    expect(t.trackingOverflow).toBe(false);
    const flood = transaction(Array.from({ length: MAX_TRACKING_EVENTS + 5 }, (_, i) => message(track(`t${i}`))));
    expect(flood.tracking).toHaveLength(MAX_TRACKING_EVENTS);
    expect(flood.trackingOverflow).toBe(true);
  });
});

describe('a transaction that cannot be assembled', () => {
  it('fails at its COMMIT, with the tracked tables it changed, and the stream goes on', () => {
    const assembler = new TransactionAssembler(catalog(tracked));
    assembler.push({ type: 'begin', xid: 7, finalLsn: 1000n, commitTime: when, commitTimeMicros: whenMicros });
    assembler.push(insert('1', 'before'));
    expect(assembler.push({ type: 'delete', relation: accounts, oldRow: row({ note: 'no key' }) })).toBeNull();
    assembler.push({ type: 'insert', relation: prices, newRow: row({ p: '1.5' }) }); // after the failure: ignored
    assembler.push({ type: 'insert', relation: untracked, newRow: row({ id: '1' }) });
    const failed = assembler.push({ type: 'commit', commitLsn: 1000n, endLsn: 1048n, commitTime: when, commitTimeMicros: whenMicros });
    expect(failed).toMatchObject({ xid: 7, endLsn: 1048n, versions: [], truncated: [], tables: [{ relationId: 1, schema: 'public', table: 'accounts' }] });
    expect(failed?.failure).toBeInstanceOf(AssemblyError);
    expect(failed?.failure?.message).toMatch(/change to public\.accounts lacks primary key column "id"/);

    assembler.push({ type: 'begin', xid: 8, finalLsn: 2000n, commitTime: when, commitTimeMicros: whenMicros });
    assembler.push(insert('2', 'after'));
    const next = assembler.push({ type: 'commit', commitLsn: 2000n, endLsn: 2048n, commitTime: when, commitTimeMicros: whenMicros });
    expect(next?.failure).toBeNull();
    expect(next?.versions.map((v) => v.pk)).toEqual([['2']]);
  });

  it('fails when the caller says it could not be decoded, and drops what it spilled', () => {
    const assembler = new TransactionAssembler(catalog(tracked), { spillKeys: 2 });
    assembler.push({ type: 'begin', xid: 9, finalLsn: 3000n, commitTime: when, commitTimeMicros: whenMicros });
    assembler.push(insert('1', 'a'));
    assembler.push(insert('2', 'b'));
    expect(assembler.takeSpill()).toHaveLength(1); // the caller merged these into the store already
    assembler.push(insert('3', 'c'));
    assembler.fail(new Error('payload cannot be decoded'));
    assembler.push(insert('4', 'd'));
    assembler.push(insert('5', 'e'));
    const failed = assembler.push({ type: 'commit', commitLsn: 3000n, endLsn: 3048n, commitTime: when, commitTimeMicros: whenMicros });
    expect(assembler.takeSpill()).toEqual([]); // no merge of the rest: the pieces are the caller's to drop
    expect(failed).toMatchObject({ spilled: true, versions: [] });
    expect(failed?.failure?.message).toBe('payload cannot be decoded');
    expect(() => new TransactionAssembler(catalog(tracked)).fail(new Error('x'))).toThrow(/outside a transaction/);
  });

  it('lists the tracked tables a transaction changed', () => {
    const t = transaction([insert('1', 'x'), { type: 'insert', relation: untracked, newRow: row({ id: '1' }) },
      { type: 'truncate', relations: [prices] }]);
    expect(t.tables).toEqual([{ relationId: 1, schema: 'public', table: 'accounts' }, { relationId: 2, schema: 'public', table: 'prices' }]);
  });
});

describe('tombstone names', () => {
  it('come from the statement that removed the row as it was before the transaction', () => {
    const deletedFirst = transaction([del('1'), insert('1', 'again'), { type: 'truncate', relations: [accounts] }]);
    expect(deletedFirst.versions.map((v) => [v.pk[0], v.op])).toEqual([['1', 'delete']]);
    const truncatedFirst = transaction([update('1', 'x'), { type: 'truncate', relations: [accounts] }, insert('1', 'y'), del('1')]);
    expect(truncatedFirst.versions.map((v) => [v.pk[0], v.op])).toEqual([['1', 'truncate']]);
  });
});
