// The ingest workload and the backlog it leaves in a slot, shared by the
// ingest, catch-up and storage sections.
//
// The workload changes table `ingest` (id, n, payload, doc): 95% of its row
// changes in transactions of 1,000 rows, 5% in transactions of one row (the
// agent stores those slowly: more would not fit the benchmark's time);
// inserts, then updates, then deletes in each part.  Every 50th row has a
// 3.2 kB `doc` stored out of line (STORAGE EXTERNAL), which the updates
// leave unchanged: the unchanged-TOAST case the agent fills in from the
// store.  A last one-row transaction inserts the sentinel key 0, so "the
// store holds everything" is "the store has key 0".
//
// The backlog is written once, with the agent stopped, after a slot
// (bench_origin) was made at the start.  Each drain reads a copy of that
// slot (pg_copy_logical_replication_slot), so every consumer starts at the
// same LSN and reads exactly the same WAL, alone.  Each agent drain writes
// into a store database of its own, a copy of the store as tracking left
// it: a fresh store, as on a first catch-up, with no statistics carried
// over from an earlier drain (they change the store's query plans).

import type pg from 'pg';

import { lsnFromText, type Lsn } from '../agent/decode.js';
import { startCluster, type Cluster } from '../test/support/cluster.js';
import { setupTimewarp, type Timewarp } from '../test/support/timewarp.js';
import { progress } from './support.js';

export interface IngestSizes {
  /** 1,000-row transactions: inserts, updates, deletes (rows). */
  bulkInserts: number;
  bulkUpdates: number;
  bulkDeletes: number;
  /** one-row transactions */
  singleInserts: number;
  singleUpdates: number;
  singleDeletes: number;
}

export const BULK_ROWS = 1000;
export const SENTINEL_ID = 0;

/** 1,000,001 row changes at full size (with the sentinel); `scale` divides them. */
export function ingestSizes(scale: number): IngestSizes {
  const rows = (n: number): number => Math.max(BULK_ROWS, Math.round(n / scale / BULK_ROWS) * BULK_ROWS);
  return {
    bulkInserts: rows(400_000), bulkUpdates: rows(350_000), bulkDeletes: rows(200_000),
    singleInserts: rows(20_000), singleUpdates: rows(20_000), singleDeletes: rows(10_000),
  };
}

export function bulkChanges(s: IngestSizes): number {
  return s.bulkInserts + s.bulkUpdates + s.bulkDeletes;
}

export function singleChanges(s: IngestSizes): number {
  return s.singleInserts + s.singleUpdates + s.singleDeletes + 1; // + the sentinel
}

export const INGEST_TABLE_SQL = `CREATE TABLE ingest (id int PRIMARY KEY, n int NOT NULL, payload text NOT NULL, doc text);
ALTER TABLE ingest ALTER doc SET STORAGE EXTERNAL`;

/** The value of `doc` for id `expr`: 3.2 kB on every 50th row (out of line), else NULL. */
const DOC = (expr: string): string => `CASE WHEN ${expr} % 50 = 0 THEN repeat(md5(${expr}::text), 100) END`;

export interface WorkloadLsns {
  /** After the 1,000-row transactions, before the one-row ones. */
  boundary: Lsn;
  /** After the sentinel. */
  end: Lsn;
}

async function insertLsn(client: pg.Client): Promise<Lsn> {
  const res = await client.query<{ lsn: string }>(`SELECT pg_current_wal_insert_lsn()::text AS lsn`);
  return lsnFromText(res.rows[0]!.lsn);
}

/**
 * Run the workload on `ingest` through `client` (autocommit).  The session
 * commits asynchronously: that only saves time writing the backlog, the
 * WAL is the same.
 */
export async function runIngestWorkload(client: pg.Client, s: IngestSizes, say: (message: string) => void): Promise<WorkloadLsns> {
  await client.query(`SET synchronous_commit = off`);
  const bulk = async (what: string, count: number, sql: string, first: number): Promise<void> => {
    say(`${what}: ${count.toLocaleString('en-US')} rows in ${count / BULK_ROWS} transactions of ${BULK_ROWS}`);
    for (let lo = first; lo < first + count; lo += BULK_ROWS) await client.query(sql, [lo, lo + BULK_ROWS - 1]);
  };
  await bulk('bulk inserts', s.bulkInserts,
    `INSERT INTO ingest SELECT g, 0, md5(g::text), ${DOC('g')} FROM generate_series($1::int, $2::int) g`, 1);
  await bulk('bulk updates', s.bulkUpdates, `UPDATE ingest SET n = n + 1, payload = md5(payload) WHERE id BETWEEN $1 AND $2`, 1);
  await bulk('bulk deletes', s.bulkDeletes, `DELETE FROM ingest WHERE id BETWEEN $1 AND $2`, s.bulkInserts - s.bulkDeletes + 1);
  const boundary = await insertLsn(client);

  // one transaction per row: COMMIT inside a DO loop, no round trip each
  const single = async (what: string, from: number, count: number, statement: string): Promise<void> => {
    say(`single-row ${what}: ${count.toLocaleString('en-US')} transactions`);
    await client.query(`DO $$ BEGIN FOR i IN ${from}..${from + count - 1} LOOP ${statement}; COMMIT; END LOOP; END $$`);
  };
  const first = s.bulkInserts + 1;
  await single('inserts', first, s.singleInserts, `INSERT INTO ingest VALUES (i, 0, md5(i::text), ${DOC('i')})`);
  await single('updates', 1, s.singleUpdates, `UPDATE ingest SET n = n + 1, payload = md5(payload) WHERE id = i`);
  await single('deletes', first + s.singleInserts - s.singleDeletes, s.singleDeletes, `DELETE FROM ingest WHERE id = i`);
  await client.query(`INSERT INTO ingest VALUES (${SENTINEL_ID}, 0, 'sentinel', NULL)`);
  await client.query(`RESET synchronous_commit`);
  return { boundary, end: await insertLsn(client) };
}

export interface Backlog {
  cluster: Cluster;
  timewarp: Timewarp;
  sizes: IngestSizes;
  lsns: WorkloadLsns;
  /** Row changes in the backlog, the sentinel included. */
  changes: number;
  stop(): Promise<void>;
}

export const ORIGIN_SLOT = 'bench_origin';
export const INGEST_NODE = 'bench';

/**
 * A cluster with durable settings, pgtimewarp set up, `ingest` tracked and
 * the backlog written behind slot bench_origin.
 */
export async function writeBacklog(s: IngestSizes, settings: Record<string, string>): Promise<Backlog> {
  const section = 'backlog';
  const cluster = await startCluster({ settings });
  try {
    const timewarp = await setupTimewarp(cluster, { nodeId: INGEST_NODE });
    const { source } = timewarp;
    await source.query(INGEST_TABLE_SQL);
    await source.query(`CREATE PUBLICATION pgtimewarp`);
    await source.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [ORIGIN_SLOT]);
    await source.query(`SELECT pgtimewarp_track('ingest')`);
    // the store as tracking left it is the template of every drain's store: nobody may stay connected to it
    await source.query(`SELECT pgtimewarp_disconnect()`);
    await cluster.psql('CREATE EXTENSION pg_stat_statements', 'store');
    const changes = bulkChanges(s) + singleChanges(s);
    progress(section, `writing ${changes.toLocaleString('en-US')} row changes with no agent running`);
    const started = Date.now();
    const lsns = await runIngestWorkload(source, s, (m) => progress(section, m));
    await source.query('CHECKPOINT');
    progress(section, `written in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return {
      cluster, timewarp, sizes: s, lsns, changes,
      async stop() {
        await source.end().catch(() => undefined);
        await cluster.stop();
      },
    };
  } catch (err) {
    await cluster.stop();
    throw err;
  }
}

/** A copy of the origin slot, read by `plugin`, at the start of the backlog. */
export async function copyOriginSlot(backlog: Backlog, slot: string, plugin: 'pgoutput' | 'wal2json'): Promise<void> {
  await backlog.timewarp.source.query(`SELECT pg_copy_logical_replication_slot($1, $2, false, $3)`, [ORIGIN_SLOT, slot, plugin]);
}

export async function dropSlot(backlog: Backlog, slot: string): Promise<void> {
  await backlog.timewarp.source.query(`SELECT pg_drop_replication_slot($1)`, [slot]);
}

export interface DrainStore {
  url: string;
  client: pg.Client;
  drop(): Promise<void>;
}

/** A store database of its own for one drain: a copy of the store as tracking left it. */
export async function freshStore(backlog: Backlog, name: string): Promise<DrainStore> {
  await backlog.cluster.psql(`CREATE DATABASE ${name} TEMPLATE store`);
  const client = await backlog.cluster.connect(name);
  await client.query('CHECKPOINT');
  return {
    url: backlog.cluster.url(name),
    client,
    async drop() {
      await client.end().catch(() => undefined);
      await backlog.cluster.psql(`DROP DATABASE ${name} WITH (FORCE)`);
    },
  };
}
