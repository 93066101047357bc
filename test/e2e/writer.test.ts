// The store writer against a real store, read back through the extension:
// a real pgtimewarp_track baseline, then transactions assembled from
// hand-written decoded messages (as the decoders produce them), applied by
// StoreWriter, and answered by pgtimewarp_asof_pk_lsn / _diff_pk.

import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { TransactionAssembler, type AssembledTransaction, type Catalog } from '../../agent/assemble.js';
import { UNCHANGED_TOAST, lsnFromText, lsnToText, type ColumnValue, type DecodedMessage, type Lsn, type RelationInfo } from '../../agent/decode.js';
import { StoreWriter } from '../../agent/writer.js';
import { docs } from '../support/docs-relation.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';

const cluster = useCluster();
let timewarp: Timewarp;
let store: pg.Client;
let writer: StoreWriter;
let trackedFrom: Lsn;

const BIG = 'x'.repeat(100_000);
const COMMIT_RECORD = 8n;

function row(values: Record<string, ColumnValue>): Map<string, ColumnValue> {
  return new Map(Object.entries(values));
}

let assembler: TransactionAssembler;

/**
 * Assemble one transaction whose commit record starts `offset` bytes after
 * tracking began and ends COMMIT_RECORD bytes later, where it is visible.
 */
function txn(offset: bigint, changes: DecodedMessage[]): AssembledTransaction {
  const commitLsn = trackedFrom + offset;
  const commitTime = new Date(Date.UTC(2030, 0, 1, 0, 0, Number(offset)));
  // a sub-millisecond part, which a Date would lose
  const commitTimeMicros = BigInt(commitTime.getTime()) * 1000n + 654n;
  assembler.push({ type: 'begin', xid: Number(offset), finalLsn: commitLsn, commitTime, commitTimeMicros });
  for (const change of changes) assembler.push(change);
  const done = assembler.push({ type: 'commit', commitLsn, endLsn: commitLsn + COMMIT_RECORD, commitTime, commitTimeMicros });
  if (done === null) throw new Error('no transaction');
  return done;
}

/** The row at the end of the commit record of the transaction at `offset` (txn()). */
async function asof(id: number, offset: bigint): Promise<Record<string, unknown> | null> {
  const res = await timewarp.source.query<{ r: Record<string, unknown> | null }>(
    `SELECT pgtimewarp_asof_pk_lsn('docs', $1, $2) AS r`,
    [JSON.stringify({ id }), lsnToText(trackedFrom + offset + COMMIT_RECORD)],
  );
  return res.rows[0]?.r ?? null;
}

beforeAll(async () => {
  timewarp = await setupTimewarp(cluster());
  store = await cluster().connect('store');
  const { source } = timewarp;
  await source.query(`CREATE TABLE docs (id int PRIMARY KEY, title text, body text)`);
  await source.query(`INSERT INTO docs VALUES (1, 'one', $1), (2, 'two', 'short'), (3, 'three', NULL)`, [BIG]);
  const res = await source.query<{ b: string }>(`SELECT pgtimewarp_track('docs')::text AS b`);
  trackedFrom = lsnFromText(res.rows[0]!.b);

  writer = new StoreWriter(store, timewarp.nodeId, 'pgtimewarp');
  const tables = await writer.trackedTables();
  const catalog: Catalog = {
    tracked: (schema, table) => tables.find((t) => t.schema === schema && t.table === table),
    baseType: (oid) => oid,
  };
  assembler = new TransactionAssembler(catalog);
});

afterAll(async () => {
  await timewarp?.source.end();
  await store?.end();
});

describe('StoreWriter', () => {
  it('knows the tracked table from the store, and has no checkpoint yet', async () => {
    expect(await writer.trackedTables()).toEqual([
      {
        relationId: expect.any(Number), relid: expect.any(Number), schema: 'public', table: 'docs', pkColumns: ['id'],
        columns: { 1: 'id', 2: 'title', 3: 'body' }, trackedFromLsn: trackedFrom, untrackedLsn: null,
      },
    ]);
    expect(await writer.checkpoint()).toBeNull();
  });

  it('applies transactions so the extension answers with them', async () => {
    const checkpoint = await writer.apply([
      // 100: title of 1 changes, its big body unchanged (TOAST, not sent)
      txn(100n, [{ type: 'update', relation: docs, oldRow: null, newRow: row({ id: '1', title: 'uno', body: UNCHANGED_TOAST }) }]),
      // 200: 2 deleted (key-only identity), 4 inserted
      txn(200n, [
        { type: 'delete', relation: docs, oldRow: row({ id: '2' }) },
        { type: 'insert', relation: docs, newRow: row({ id: '4', title: 'four', body: null }) },
      ]),
      // 300: key of 1 changes to 10, body still unchanged
      txn(300n, [{ type: 'update', relation: docs, oldRow: row({ id: '1' }), newRow: row({ id: '10', title: 'uno', body: UNCHANGED_TOAST }) }]),
    ]);
    expect(checkpoint.lsn).toBe(trackedFrom + 308n);
    expect((await writer.checkpoint())?.lsn).toBe(checkpoint.lsn);
    // commit times are stored to the microsecond
    const times = await store.query<{ t: string }>(
      `SELECT to_char(commit_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS t
         FROM pgtimewarp_store.lsn_time_map WHERE lsn = $1`,
      [lsnToText(trackedFrom + 100n + COMMIT_RECORD)],
    );
    expect(times.rows).toEqual([{ t: '2030-01-01 00:01:40.000654' }]);
    const versionTimes = await store.query<{ t: string }>(
      `SELECT to_char(valid_from_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS t
         FROM pgtimewarp_store.row_history WHERE valid_from_lsn = $1`,
      [lsnToText(trackedFrom + 200n + COMMIT_RECORD)],
    );
    expect(versionTimes.rows.map((r) => r.t)).toEqual(['2030-01-01 00:03:20.000654', '2030-01-01 00:03:20.000654']);

    expect(await asof(1, 99n)).toEqual({ id: 1, title: 'one', body: BIG });
    expect(await asof(1, 100n)).toEqual({ id: 1, title: 'uno', body: BIG });
    expect(await asof(2, 199n)).toEqual({ id: 2, title: 'two', body: 'short' });
    expect(await asof(2, 200n)).toBeNull();
    expect(await asof(4, 200n)).toEqual({ id: 4, title: 'four', body: null });
    expect(await asof(1, 300n)).toBeNull();
    expect(await asof(10, 300n)).toEqual({ id: 10, title: 'uno', body: BIG });
    expect(await asof(3, 300n)).toEqual({ id: 3, title: 'three', body: null });
  });

  it('closes every open version on TRUNCATE, keeping what the transaction wrote after it', async () => {
    await writer.apply([
      txn(400n, [
        { type: 'truncate', relations: [docs] },
        { type: 'insert', relation: docs, newRow: row({ id: '3', title: 'three again', body: null }) },
        { type: 'insert', relation: docs, newRow: row({ id: '8', title: 'eight', body: null }) },
        { type: 'insert', relation: docs, newRow: row({ id: '9', title: 'gone', body: null }) },
        { type: 'delete', relation: docs, oldRow: row({ id: '9' }) },
      ]),
    ]);
    for (const id of [4, 9, 10]) expect(await asof(id, 400n)).toBeNull();
    expect(await asof(3, 400n)).toEqual({ id: 3, title: 'three again', body: null });
    expect(await asof(8, 400n)).toEqual({ id: 8, title: 'eight', body: null });
    expect(await asof(4, 399n)).not.toBeNull();

    // 3 existed before the transaction, 8 did not, 9 never existed outside it
    const opsAt400 = await store.query<{ pk: string[]; op: string }>(
      `SELECT pk, op FROM pgtimewarp_store.row_history
        WHERE table_name = 'docs' AND valid_from_lsn = $1 ORDER BY pk`,
      [lsnToText(trackedFrom + 400n + COMMIT_RECORD)],
    );
    expect(opsAt400.rows).toEqual([
      { pk: ['10'], op: 'truncate' },
      { pk: ['3'], op: 'update' },
      { pk: ['4'], op: 'truncate' },
      { pk: ['8'], op: 'insert' },
    ]);

    const ops = await store.query<{ op: string; open: boolean }>(
      `SELECT op, valid_to_lsn IS NULL AS open FROM pgtimewarp_store.row_history
        WHERE table_name = 'docs' AND pk = '{10}' ORDER BY valid_from_lsn`,
    );
    expect(ops.rows).toEqual([{ op: 'insert', open: false }, { op: 'truncate', open: true }]);
  });

  it('refuses to apply a transaction twice, and keeps the checkpoint where it was', async () => {
    const before = await writer.checkpoint();
    const again = txn(500n, [{ type: 'insert', relation: docs, newRow: row({ id: '5', title: 'five', body: null }) }]);
    await writer.apply([again]);
    const after = await writer.checkpoint();
    await expect(writer.apply([again])).rejects.toThrow(/duplicate key|one_open_version/);
    expect((await writer.checkpoint())?.lsn).toBe(after!.lsn);
    expect(after!.lsn > before!.lsn).toBe(true);
    const count = await store.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pgtimewarp_store.row_history WHERE table_name = 'docs' AND pk = '{5}'`,
    );
    expect(count.rows[0]?.n).toBe(1);
  });

  it('fails loudly, writing nothing, when a carried value has no previous version', async () => {
    const before = await writer.checkpoint();
    const orphan = txn(600n, [
      { type: 'insert', relation: docs, newRow: row({ id: '6', title: 'six', body: null }) },
      { type: 'update', relation: docs, oldRow: null, newRow: row({ id: '77', title: 'ghost', body: UNCHANGED_TOAST }) },
    ]);
    await expect(writer.apply([orphan])).rejects.toThrow(/cannot carry the unchanged value of public.docs.body/);
    expect((await writer.checkpoint())?.lsn).toBe(before!.lsn);
    expect(await asof(6, 600n)).toBeNull();
  });

  it('stores keys and values with every character COPY and array literals escape, exactly', async () => {
    const { source } = timewarp;
    await source.query(`CREATE TABLE notes (k text PRIMARY KEY, v text)`);
    const from = lsnFromText((await source.query<{ b: string }>(`SELECT pgtimewarp_track('notes')::text AS b`)).rows[0]!.b);
    const tables = await writer.trackedTables();
    const notes: RelationInfo = {
      oid: 0, schema: 'public', table: 'notes',
      columns: [{ name: 'k', typeOid: 25, isKey: true }, { name: 'v', typeOid: 25, isKey: false }],
    };
    const own = new TransactionAssembler({
      tracked: (schema, table) => tables.find((t) => t.schema === schema && t.table === table),
      baseType: (oid) => oid,
    });
    const nasty = ['tab\there', 'new\nline', 'cr\rx', 'back\\slash', '\\N', 'end\\', '"quoted"', '{braces},comma', 'NULL', '', '日本語 🎉 é'];
    const commitLsn = from + 1000n;
    const commitTime = new Date(Date.UTC(2030, 0, 2));
    const commitTimeMicros = BigInt(commitTime.getTime()) * 1000n;
    own.push({ type: 'begin', xid: 9001, finalLsn: commitLsn, commitTime, commitTimeMicros });
    nasty.forEach((k, i) => own.push({ type: 'insert', relation: notes, newRow: row({ k, v: i % 2 === 0 ? `${k} ${k}` : null }) }));
    const done = own.push({ type: 'commit', commitLsn, endLsn: commitLsn + COMMIT_RECORD, commitTime, commitTimeMicros });
    await writer.apply([done!]);
    const stored = await store.query<{ pk: string[]; row_data: Record<string, string | null> }>(
      `SELECT pk, row_data FROM pgtimewarp_store.row_history WHERE table_name = 'notes' AND op = 'insert'`,
    );
    const byKey = (a: { pk: string[] }, b: { pk: string[] }): number => (a.pk[0]! < b.pk[0]! ? -1 : a.pk[0]! > b.pk[0]! ? 1 : 0);
    expect(stored.rows.sort(byKey)).toEqual(
      nasty.map((k, i) => ({ pk: [k], row_data: { k, v: i % 2 === 0 ? `${k} ${k}` : null } })).sort(byKey),
    );
  });

  it('records heartbeats so idle time resolves, and never moves the checkpoint back', async () => {
    const current = (await writer.checkpoint())!;
    const later = { lsn: current.lsn + 1000n, time: new Date(current.time.getTime() + 60_000) };
    await writer.heartbeat(later);
    expect(await writer.checkpoint()).toEqual(later);
    await writer.heartbeat(current);
    expect(await writer.checkpoint()).toEqual(later);
    const beat = await store.query<{ is_heartbeat: boolean }>(
      `SELECT is_heartbeat FROM pgtimewarp_store.lsn_time_map WHERE lsn = $1`,
      [lsnToText(later.lsn)],
    );
    expect(beat.rows).toEqual([{ is_heartbeat: true }]);
  });
});
