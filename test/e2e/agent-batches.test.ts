// How the agent batches a backlog: many transactions go to the store
// together (the store writes one batch while the next is decoded), but a
// batch never grows past its limits of transactions, versions or bytes of
// row values, so a backlog of mid-sized transactions cannot add up to
// unbounded memory.  The agent starts on a backlog written while it was
// stopped, with small limits; every 'applied' event must stay within them
// (plus the one transaction that crossed a limit), batches must hold more
// than one transaction, and the store must hold every version.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runAgent, type AgentEvent } from '../../agent/run.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';
import { waitFor } from '../support/wait.js';

const cluster = useCluster();

const SLOT = 'batches';
const WIDE_TRANSACTIONS = 120; // each updates 3 rows with a new 10,000-character value
const NARROW_TRANSACTIONS = 120; // each inserts 10 small rows
const VALUE_CHARS = 10_000;
const LIMITS = { maxBatch: 50, maxBatchVersions: 25, maxBatchBytes: 64 * 1024 };

let timewarp: Timewarp;

beforeAll(async () => {
  timewarp = await setupTimewarp(cluster(), { nodeId: 'batches' });
  const { source } = timewarp;
  await source.query(`CREATE TABLE wide (id int PRIMARY KEY, body text)`);
  await source.query(`CREATE TABLE narrow (id int PRIMARY KEY, note text)`);
  await source.query(`INSERT INTO wide SELECT g, 'start' FROM generate_series(1, 3) g`);
  await source.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [SLOT]);
  await source.query(`CREATE PUBLICATION pgtimewarp`);
  await source.query(`SELECT pgtimewarp_track('wide')`);
  await source.query(`SELECT pgtimewarp_track('narrow')`);
  // the backlog: wide transactions (the byte limit cuts their batches), then narrow ones (the version limit)
  for (let i = 0; i < WIDE_TRANSACTIONS; i++) {
    await source.query(`UPDATE wide SET body = repeat(chr(65 + $1::int % 26), $2) || id`, [i, VALUE_CHARS]);
  }
  for (let i = 0; i < NARROW_TRANSACTIONS; i++) {
    await source.query(`INSERT INTO narrow SELECT g, 'n' || g FROM generate_series($1::int * 10 + 1, $1::int * 10 + 10) g`, [i]);
  }
});

afterAll(async () => {
  await timewarp?.source.end();
});

describe('the agent on a backlog of many transactions', () => {
  it('writes them in batches, each within its limits, and stores every version', { timeout: 120_000 }, async () => {
    const { source } = timewarp;
    const target = (await source.query<{ lsn: string }>(`SELECT pg_current_wal_lsn()::text AS lsn`)).rows[0]!.lsn;
    const events: AgentEvent[] = [];
    const stop = new AbortController();
    const running = runAgent({
      sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId, slot: SLOT, plugin: 'pgoutput',
      signal: stop.signal, log: (e) => events.push(e), backoff: { initialMs: 100, maxMs: 1000 }, ...LIMITS,
    });
    try {
      await waitFor(`the agent to store up to ${target}`, async () =>
        (await source.query<{ ok: boolean }>(`SELECT confirmed_lsn >= $1::pg_lsn AS ok FROM pgtimewarp_status() LIMIT 1`, [target]))
          .rows[0]?.ok === true, 90_000);
    } finally {
      stop.abort();
      await running;
    }

    const applied = events.filter((e) => e.event === 'applied') as Array<AgentEvent & { transactions: number; versions: number; bytes: number }>;
    const transactions = applied.reduce((n, e) => n + e.transactions, 0);
    expect(transactions).toBeGreaterThanOrEqual(WIDE_TRANSACTIONS + NARROW_TRANSACTIONS);
    // batching happened: a backlog is not written one transaction at a time
    expect(Math.max(...applied.map((e) => e.transactions))).toBeGreaterThan(1);
    // one transaction at most crosses a limit: 3 wide versions of ~10 kB, or 10 narrow versions
    const wideTransactionBytes = 3 * (VALUE_CHARS + 1_000);
    for (const e of applied) {
      expect(e.transactions, JSON.stringify(e)).toBeLessThanOrEqual(LIMITS.maxBatch);
      expect(e.versions, JSON.stringify(e)).toBeLessThan(LIMITS.maxBatchVersions + 10);
      expect(e.bytes, JSON.stringify(e)).toBeLessThan(LIMITS.maxBatchBytes + wideTransactionBytes);
    }
    // both limits did cut batches (a batch ends at the first message that finds it full)
    const summary = JSON.stringify(applied.map((e) => [e.transactions, e.versions, e.bytes]));
    expect(applied.some((e) => e.bytes >= LIMITS.maxBatchBytes), summary).toBe(true);
    expect(applied.some((e) => e.versions >= LIMITS.maxBatchVersions), summary).toBe(true);

    // every version, and the last value of each wide row exactly
    const store = await cluster().connect('store');
    try {
      const counts = await store.query<{ table_name: string; op: string; n: string }>(
        `SELECT table_name, op, count(*) AS n FROM pgtimewarp_store.row_history WHERE node_id = 'batches'
          GROUP BY 1, 2 ORDER BY 1, 2`,
      );
      expect(counts.rows).toEqual([
        { table_name: 'narrow', op: 'insert', n: String(NARROW_TRANSACTIONS * 10) },
        { table_name: 'wide', op: 'baseline', n: '3' },
        { table_name: 'wide', op: 'update', n: String(3 * WIDE_TRANSACTIONS) },
      ]);
      const last = await store.query<{ id: string; body: string }>(
        `SELECT pk[1] AS id, md5(row_data->>'body') AS body FROM pgtimewarp_store.row_history
          WHERE node_id = 'batches' AND table_name = 'wide' AND valid_to_lsn IS NULL ORDER BY 1`,
      );
      const expected = await source.query<{ id: string; body: string }>(`SELECT id::text, md5(body) AS body FROM wide ORDER BY 1`);
      expect(last.rows).toEqual(expected.rows);
    } finally {
      await store.end();
    }
  });
});
