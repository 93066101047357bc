// Spilled transactions (bounded memory, agent/assemble.ts and agent/writer.ts)
// and batches of transactions give exactly the versions held ones, applied
// one at a time, give.  A seeded random stream of
// decoded messages (inserts, updates with values left unsent as unchanged
// TOAST, key changes and chains of them, deletes, reinserts, TRUNCATEs, in
// transactions of 1 to 12 changes) goes through assemblers and writers into
// one store under three node ids: one never spills and applies each
// transaction alone; one spills after every 1 to 3 keys, so key states of one
// transaction meet across pieces in every way the stream allows; one applies
// the held transactions in batches of 1 to 40, so a key's versions chain
// within one batch, a key change carries from a key an earlier transaction
// of the batch wrote, and TRUNCATEs fall mid-batch.  All start from the same
// real baseline; afterwards their row_versions and commit times must be
// identical, and the checkpoint the same.  The held path is itself checked
// against a model by agent-model.test.ts.

import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';

import { TransactionAssembler, type AssembledTransaction, type Catalog, type TrackedTable } from '../../agent/assemble.js';
import { UNCHANGED_TOAST, lsnFromText, type ColumnValue, type DecodedMessage, type Lsn } from '../../agent/decode.js';
import { StoreWriter } from '../../agent/writer.js';
import { docs } from '../support/docs-relation.js';
import { Random, testSeed } from '../support/random.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';

const cluster = useCluster();
let timewarp: Timewarp;
let store: pg.Client;
/** Each node's tracked incarnations: the same table, under each node's own relation id. */
const tracked = new Map<string, TrackedTable[]>();
let trackedFrom: Lsn;

const INITIAL_KEYS = 6;
const KEY_RANGE = 14;
const HELD = 'held';
const SPILLED = 'spilled';
const BATCHED = 'batched';

beforeAll(async () => {
  timewarp = await setupTimewarp(cluster(), { nodeId: HELD });
  store = await cluster().connect('store');
  const { source } = timewarp;
  await source.query(`CREATE TABLE docs (id int PRIMARY KEY, title text, body text)`);
  await source.query(`INSERT INTO docs SELECT g, 'title ' || g, repeat('body ' || g, 3000) FROM generate_series(1, $1) g`, [INITIAL_KEYS]);
  const res = await source.query<{ b: string }>(`SELECT pgtimewarp_track('docs')::text AS b`);
  trackedFrom = lsnFromText(res.rows[0]!.b);
  // the other nodes: the same baseline
  for (const node of [SPILLED, BATCHED]) {
    await store.query(`INSERT INTO pgtimewarp_store.nodes (node_id, database_name, system_identifier)
                       SELECT $2, database_name, system_identifier FROM pgtimewarp_store.nodes WHERE node_id = $1`, [HELD, node]);
    await store.query(`INSERT INTO pgtimewarp_store.tracked_relations
                              (node_id, schema_name, table_name, relid, pk_columns, tracked_from_lsn, tracked_from_ts, untracked_lsn, untracked_ts)
                       SELECT $2, schema_name, table_name, relid, pk_columns, tracked_from_lsn, tracked_from_ts, untracked_lsn, untracked_ts
                         FROM pgtimewarp_store.tracked_relations WHERE node_id = $1`, [HELD, node]);
    await store.query(`INSERT INTO pgtimewarp_store.row_versions (relation_id, pk, valid_from_lsn, valid_from_ts, op, row_data)
                       SELECT h.relation_id, v.pk, v.valid_from_lsn, v.valid_from_ts, v.op, v.row_data
                         FROM pgtimewarp_store.row_versions v
                         JOIN pgtimewarp_store.tracked_relations o ON o.relation_id = v.relation_id AND o.node_id = $1
                         JOIN pgtimewarp_store.tracked_relations h
                           ON h.node_id = $2 AND h.schema_name = o.schema_name AND h.table_name = o.table_name`, [HELD, node]);
  }
  for (const node of [HELD, SPILLED, BATCHED]) tracked.set(node, await new StoreWriter(store, node, 'pgtimewarp').trackedTables());
});

afterAll(async () => {
  await timewarp?.source.end();
  await store?.end();
});

/**
 * A stream of transactions the table could really produce: it knows which
 * keys exist, so updates and deletes hit existing rows and inserts new ones.
 */
function* workload(r: Random, transactions: number): Generator<DecodedMessage[]> {
  const rows = new Map<number, { title: string }>();
  for (let id = 1; id <= INITIAL_KEYS; id++) rows.set(id, { title: `title ${id}` });
  const row = (values: Record<string, ColumnValue>): Map<string, ColumnValue> => new Map(Object.entries(values));
  let n = 0;
  for (let t = 0; t < transactions; t++) {
    const changes: DecodedMessage[] = [];
    const count = r.int(1, 12);
    for (let c = 0; c < count; c++) {
      n++;
      const present = [...rows.keys()];
      const absent = Array.from({ length: KEY_RANGE }, (_, i) => i + 1).filter((id) => !rows.has(id));
      const kind = r.weighted<string>([
        [present.length > 0 ? 5 : 0, 'update'],
        [present.length > 0 && absent.length > 0 ? 3 : 0, 'key change'],
        [present.length > 0 ? 2 : 0, 'delete'],
        [absent.length > 0 ? 3 : 0, 'insert'],
        [0.3, 'truncate'],
      ]);
      // a body is either sent (a new value) or left unsent, as unchanged TOAST
      const body = (): ColumnValue => (r.chance(0.6) ? UNCHANGED_TOAST : r.chance(0.2) ? null : `body ${n}`);
      if (kind === 'update') {
        const id = r.pick(present);
        const title = r.chance(0.8) ? `t${n}` : rows.get(id)!.title;
        changes.push({ type: 'update', relation: docs, oldRow: null, newRow: row({ id: String(id), title, body: body() }) });
        rows.set(id, { title });
      } else if (kind === 'key change') {
        const from = r.pick(present);
        const to = r.pick(absent);
        changes.push({ type: 'update', relation: docs, oldRow: row({ id: String(from) }),
          newRow: row({ id: String(to), title: rows.get(from)!.title, body: body() }) });
        rows.set(to, rows.get(from)!);
        rows.delete(from);
      } else if (kind === 'delete') {
        const id = r.pick(present);
        changes.push({ type: 'delete', relation: docs, oldRow: row({ id: String(id) }) });
        rows.delete(id);
      } else if (kind === 'insert') {
        const id = r.pick(absent);
        changes.push({ type: 'insert', relation: docs, newRow: row({ id: String(id), title: `new ${n}`, body: r.chance(0.5) ? null : `body ${n}` }) });
        rows.set(id, { title: `new ${n}` });
      } else {
        changes.push({ type: 'truncate', relations: [docs] });
        rows.clear();
      }
    }
    yield changes;
  }
}

describe('a spilled transaction, and a batch of transactions', () => {
  const seed = testSeed();

  it('write exactly the versions held ones applied one at a time write', { timeout: 120_000 }, async () => {
    onTestFailed(() => console.error(`spill and batch differential: replay with PGTIMEWARP_SEED=${seed}`));
    const r = new Random(seed);
    const catalog = (node: string): Catalog => ({
      tracked: (schema, table) => tracked.get(node)!.find((t) => t.schema === schema && t.table === table),
      baseType: (oid) => oid,
    });
    const held = { assembler: new TransactionAssembler(catalog(HELD)), writer: new StoreWriter(store, HELD, 'pgtimewarp') };
    // the same transactions for the batched writer, under its node's relation id
    const batchedAssembler = new TransactionAssembler(catalog(BATCHED));
    const spilledWriter = new StoreWriter(store, SPILLED, 'pgtimewarp');
    const batchedWriter = new StoreWriter(store, BATCHED, 'pgtimewarp');
    let batch: AssembledTransaction[] = [];
    let batchSize = r.int(1, 40);
    let batches = 0;

    let lsn = trackedFrom;
    let spilledTransactions = 0;
    let truncates = 0;
    for (const changes of workload(r, 250)) {
      lsn += 1000n;
      const commitTime = new Date(Date.UTC(2030, 0, 1) + Number(lsn - trackedFrom));
      const commitTimeMicros = BigInt(commitTime.getTime()) * 1000n;
      const begin: DecodedMessage = { type: 'begin', xid: Number(lsn % 100000n), finalLsn: lsn, commitTime, commitTimeMicros };
      const commit: DecodedMessage = { type: 'commit', commitLsn: lsn, endLsn: lsn + 16n, commitTime, commitTimeMicros };
      truncates += changes.filter((c) => c.type === 'truncate').length;

      // held: the usual path
      held.assembler.push(begin);
      for (const change of changes) held.assembler.push(change);
      const heldTxn = held.assembler.push(commit)!;
      expect(heldTxn.spilled).toBe(false);
      await held.writer.apply([heldTxn]);
      batchedAssembler.push(begin);
      for (const change of changes) batchedAssembler.push(change);
      batch.push(batchedAssembler.push(commit)!);
      if (batch.length >= batchSize) {
        await batchedWriter.apply(batch);
        batches++;
        batch = [];
        batchSize = r.int(1, 40);
      }

      // spilled: a fresh assembler per transaction, so each gets its own small limit
      const spiller = new TransactionAssembler(catalog(SPILLED), { spillKeys: r.int(1, 3) });
      for (const message of [begin, ...changes, commit]) {
        const txn = spiller.push(message);
        for (const op of spiller.takeSpill()) await spilledWriter.spill(op);
        if (txn === null) continue;
        if (txn.spilled) spilledTransactions++;
        await spilledWriter.apply([txn]);
      }
    }
    if (batch.length > 0) await batchedWriter.apply(batch);
    // the stream did exercise the pieces and the batches
    expect(spilledTransactions).toBeGreaterThan(150);
    expect(batches).toBeGreaterThan(5);
    expect(truncates).toBeGreaterThan(0);

    const versions = async (node: string): Promise<string[]> => {
      const res = await store.query<{ v: string }>(
        `SELECT format('%s %s %s..%s %s', pk, op, valid_from_lsn, valid_to_lsn, row_data) AS v
           FROM pgtimewarp_store.row_history WHERE node_id = $1
          ORDER BY pk, valid_from_lsn`,
        [node],
      );
      return res.rows.map((x) => x.v);
    };
    const expected = await versions(HELD);
    expect(expected.length).toBeGreaterThan(500);
    expect(await versions(SPILLED)).toEqual(expected);
    expect(await versions(BATCHED)).toEqual(expected);
    const commits = async (node: string): Promise<string[]> => {
      const res = await store.query<{ c: string }>(
        `SELECT format('%s %s %s', lsn, commit_ts, resolve_ts) AS c FROM pgtimewarp_store.lsn_time_map WHERE node_id = $1 ORDER BY lsn`,
        [node],
      );
      return res.rows.map((x) => x.c);
    };
    const expectedCommits = await commits(HELD);
    expect(expectedCommits).toHaveLength(250); // one per transaction of the workload
    expect(await commits(SPILLED)).toEqual(expectedCommits);
    expect(await commits(BATCHED)).toEqual(expectedCommits);
    expect(await spilledWriter.checkpoint()).toEqual(await held.writer.checkpoint());
    expect(await batchedWriter.checkpoint()).toEqual(await held.writer.checkpoint());
  });

  it('leaves nothing behind when abandoned', async () => {
    const writer = new StoreWriter(store, SPILLED, 'pgtimewarp');
    const before = await store.query(`SELECT count(*) FROM pgtimewarp_store.row_versions`);
    await writer.spill({ kind: 'merge', keys: [{ relationId: 1, schema: 'public', table: 'docs', pk: ['1'], bornHere: false, afterTruncate: false,
      rowData: { id: '1', title: 'x', body: null }, toastColumns: [], carryFromPk: null, firstRemoval: null }] });
    expect(writer.spilling).toBe(true);
    await writer.abandonSpill();
    expect(writer.spilling).toBe(false);
    expect((await store.query(`SELECT count(*) FROM pgtimewarp_store.row_versions`)).rows).toEqual(before.rows);
    // the temporary table went with the store transaction
    expect((await store.query(`SELECT to_regclass('pg_temp.pgtimewarp_spill') AS t`)).rows).toEqual([{ t: null }]);
  });
});
