// The agent's Prometheus metrics end to end: runAgent() with an
// AgentMetrics observer serving /metrics, a workload of a few hundred
// transactions on a tracked table, and what a scrape over HTTP says about
// it: the families and their types, counters equal to what was written,
// lag that shows while the store is held up and falls to zero after, one
// store write observed per batch.  Then `pgtimewarp agent --metrics-port`
// as a user runs it.
//
// The store is on a cluster of its own, as on a real host: a store on the
// source's cluster writes WAL the source's walsender reports too, and the
// agent's own last commit would then always show as a few bytes of lag.

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { AgentMetrics } from '../../agent/metrics.js';
import { runAgent, type AgentEvent } from '../../agent/run.js';
import { findFreePort } from '../../installer/local-cluster.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';
import { waitFor } from '../support/wait.js';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));

// frequent keepalives: the server's position reaches the agent while it is quiet
const sourceCluster = useCluster({ settings: { wal_sender_timeout: '2s' } });
const storeCluster = useCluster();

/** A scrape: every sample by its series (name plus labels as printed), and every family's TYPE. */
interface Scrape {
  samples: Map<string, number>;
  types: Map<string, string>;
  contentType: string | null;
}

async function scrape(url: string): Promise<Scrape> {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of (await res.text()).split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type !== null) types.set(type[1]!, type[2]!);
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return { samples, types, contentType: res.headers.get('content-type') };
}

function value(s: Scrape, series: string): number {
  const v = s.samples.get(series);
  if (v === undefined) throw new Error(`no sample ${series} in the scrape (${[...s.samples.keys()].filter((k) => k.startsWith('pgtimewarp')).join(', ')})`);
  return v;
}

const FAMILIES: Record<string, string> = {
  pgtimewarp_agent_applied_lsn_bytes: 'gauge',
  pgtimewarp_agent_confirmed_lsn_bytes: 'gauge',
  pgtimewarp_agent_server_sent_lsn_bytes: 'gauge',
  pgtimewarp_agent_lag_bytes: 'gauge',
  pgtimewarp_agent_lag_seconds: 'gauge',
  pgtimewarp_agent_pending_transactions: 'gauge',
  pgtimewarp_agent_applied_transactions_total: 'counter',
  pgtimewarp_agent_applied_versions_total: 'counter',
  pgtimewarp_agent_applied_bytes_total: 'counter',
  pgtimewarp_agent_batch_transactions: 'histogram',
  pgtimewarp_agent_store_write_duration_seconds: 'histogram',
  pgtimewarp_agent_heartbeats_total: 'counter',
  pgtimewarp_agent_retries_total: 'counter',
  pgtimewarp_agent_last_heartbeat_timestamp_seconds: 'gauge',
  pgtimewarp_agent_last_applied_commit_timestamp_seconds: 'gauge',
  // prom-client's process metrics, under their standard names
  process_cpu_seconds_total: 'counter',
  process_resident_memory_bytes: 'gauge',
  nodejs_eventloop_lag_seconds: 'gauge',
};

describe('the agent\'s metrics', () => {
  let timewarp: Timewarp;
  let store: pg.Client;
  const metrics = new AgentMetrics();
  let url: string;
  const events: AgentEvent[] = [];
  const stop = new AbortController();
  let running: Promise<void> | undefined;

  const batches = (): AgentEvent[] => events.filter((e) => e.event === 'applied');
  const sum = (field: string): number => batches().reduce((n, e) => n + (e[field] as number), 0);

  /** Scrape until the agent has stored everything the server sent (bounded). */
  const caughtUp = (what: string, extra: (s: Scrape) => boolean = () => true): Promise<Scrape> =>
    waitFor(what, async () => {
      const s = await scrape(url);
      return value(s, 'pgtimewarp_agent_lag_bytes') === 0 && value(s, 'pgtimewarp_agent_lag_seconds') === 0 &&
        value(s, 'pgtimewarp_agent_server_sent_lsn_bytes') > 0 && extra(s) && s;
    }, 30_000);

  beforeAll(async () => {
    timewarp = await setupTimewarp(sourceCluster(), { storeCluster: storeCluster() });
    store = await storeCluster().connect('store');
    await timewarp.source.query(`CREATE TABLE items (id int PRIMARY KEY, v int, note text)`);
    await timewarp.source.query(`CREATE TABLE untracked (id serial PRIMARY KEY)`);
    url = (await metrics.start(0)).url;
    running = runAgent({
      sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId,
      slot: 'pgtimewarp', plugin: 'pgoutput', signal: stop.signal, log: (e) => events.push(e),
      backoff: { initialMs: 100, maxMs: 1000 }, observer: metrics,
    });
    await waitFor('the agent\'s slot', async () =>
      (await timewarp.source.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = 'pgtimewarp'`)).rowCount === 1, 30_000);
    await timewarp.source.query(`SELECT pgtimewarp_track('items')`);
  });

  afterAll(async () => {
    stop.abort();
    await running?.catch(() => undefined);
    await metrics.close();
    await store?.end();
    await timewarp?.source.end();
  });

  it('serves every family with its type on /metrics, and nothing elsewhere', async () => {
    const s = await scrape(url);
    expect(s.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    for (const [family, type] of Object.entries(FAMILIES)) expect(s.types.get(family), family).toBe(type);
    for (const kind of ['decode_error', 'store_write_error', 'agent_retry']) {
      expect(value(s, `pgtimewarp_agent_retries_total{kind="${kind}"}`)).toBe(0);
    }
    expect(new URL(url).hostname).toBe('127.0.0.1');
    expect((await fetch(new URL('/', url))).status).toBe(404);
    expect((await fetch(url, { method: 'POST' })).status).toBe(405);
  });

  it('counts what a workload wrote; lag shows while the store is held up and falls to zero after', async () => {
    const { source } = timewarp;
    // the tracking transaction stored: the counters' starting point
    const start = await caughtUp('the agent to store the tracking transaction', (s) => value(s, 'pgtimewarp_agent_applied_transactions_total') >= 1);
    const transactions0 = value(start, 'pgtimewarp_agent_applied_transactions_total');
    const versions0 = value(start, 'pgtimewarp_agent_applied_versions_total');

    // the store held up: a batch cannot commit while its checkpoint row is locked
    await store.query('BEGIN');
    await store.query('LOCK TABLE pgtimewarp_store.wal_checkpoints IN ACCESS EXCLUSIVE MODE');
    const beforeCommit = Date.now();
    await source.query(`INSERT INTO items VALUES (0, 0, 'first while held up')`);
    const afterCommit = Date.now();
    let transactions = 1;
    let versions = 1;
    const held = await waitFor('the agent to receive it and not store it', async () => {
      const s = await scrape(url);
      return value(s, 'pgtimewarp_agent_pending_transactions') >= 1 && value(s, 'pgtimewarp_agent_lag_seconds') >= 1 && s;
    }, 30_000);
    const scraped = Date.now();
    // the age of that commit, on this machine's clock (the cluster's is the same)
    expect(value(held, 'pgtimewarp_agent_lag_seconds')).toBeGreaterThanOrEqual((scraped - afterCommit) / 1000 - 0.5);
    expect(value(held, 'pgtimewarp_agent_lag_seconds')).toBeLessThanOrEqual((scraped - beforeCommit) / 1000 + 0.1);
    expect(value(held, 'pgtimewarp_agent_lag_bytes')).toBeGreaterThan(0);
    expect(value(held, 'pgtimewarp_agent_applied_transactions_total')).toBe(transactions0);

    // a few hundred transactions, part of them while the store is still held up
    const run = async (sqls: string[], commit = true): Promise<void> => {
      await source.query('BEGIN');
      for (const sql of sqls) await source.query(sql);
      await source.query(commit ? 'COMMIT' : 'ROLLBACK');
    };
    for (let i = 1; i <= 200; i++) {
      await run([`INSERT INTO items VALUES (${i}, ${i}, 'one')`]);
      if (i === 100) await store.query('ROLLBACK'); // the store free again
    }
    transactions += 200;
    versions += 200;
    for (let j = 0; j < 50; j++) {
      const id = 1000 + 4 * j;
      await run([`INSERT INTO items SELECT g, g, 'four' FROM generate_series(${id}, ${id + 3}) g`]);
    }
    transactions += 50;
    versions += 200;
    for (let i = 1; i <= 100; i++) await run([`UPDATE items SET v = v + 1 WHERE id = ${i}`]);
    transactions += 100;
    versions += 100;
    // two updates of one row in one transaction: one version
    for (let i = 1; i <= 20; i++) await run([`UPDATE items SET v = 0 WHERE id = ${i}`, `UPDATE items SET note = 'twice' WHERE id = ${i}`]);
    transactions += 20;
    versions += 20;
    for (let i = 151; i <= 180; i++) await run([`DELETE FROM items WHERE id = ${i}`]);
    transactions += 30;
    versions += 30;
    // rolled back: nothing
    for (let i = 1; i <= 5; i++) await run([`UPDATE items SET note = 'never' WHERE id = ${i}`], false);

    const done = await caughtUp('the agent to store the workload', (s) =>
      value(s, 'pgtimewarp_agent_applied_transactions_total') >= transactions0 + transactions);
    expect(value(done, 'pgtimewarp_agent_applied_transactions_total') - transactions0).toBe(transactions);
    expect(value(done, 'pgtimewarp_agent_applied_versions_total') - versions0).toBe(versions);
    expect(value(done, 'pgtimewarp_agent_pending_transactions')).toBe(0);
    // the table was empty when tracked: no baseline, every version is the workload's
    const status = await source.query<{ n: string }>(`SELECT row_versions::text AS n FROM pgtimewarp_status() WHERE table_name = 'items'`);
    expect(Number(status.rows[0]!.n)).toBe(versions);

    // the agent's own account of its batches ('applied' log events) against the scrape
    const n = batches().length;
    expect(n).toBeGreaterThan(1);
    expect(value(done, 'pgtimewarp_agent_store_write_duration_seconds_count{kind="batch"}')).toBe(n);
    expect(value(done, 'pgtimewarp_agent_batch_transactions_count')).toBe(n);
    expect(value(done, 'pgtimewarp_agent_batch_transactions_sum')).toBe(sum('transactions'));
    expect(value(done, 'pgtimewarp_agent_batch_transactions_bucket{le="+Inf"}')).toBe(n);
    expect(value(done, 'pgtimewarp_agent_applied_transactions_total')).toBe(sum('transactions'));
    expect(value(done, 'pgtimewarp_agent_applied_versions_total')).toBe(sum('versions'));
    expect(value(done, 'pgtimewarp_agent_applied_bytes_total')).toBe(sum('bytes'));
    expect(value(done, 'pgtimewarp_agent_applied_bytes_total')).toBeGreaterThan(0);
    // the store was held up: some batch waited at least a second
    expect(value(done, 'pgtimewarp_agent_store_write_duration_seconds_bucket{le="0.5",kind="batch"}')).toBeLessThan(n);
    // what arrived while the store was held up went in one batch, not one per transaction
    expect(value(done, 'pgtimewarp_agent_batch_transactions_bucket{le="50"}')).toBeLessThan(n);
    expect(n).toBeLessThan(transactions);

    const last = batches().at(-1)!;
    expect(value(done, 'pgtimewarp_agent_applied_lsn_bytes')).toBe(lsnBytes(last['lsn'] as string));
    expect(value(done, 'pgtimewarp_agent_confirmed_lsn_bytes')).toBeGreaterThanOrEqual(value(done, 'pgtimewarp_agent_applied_lsn_bytes'));
    expect(value(done, 'pgtimewarp_agent_server_sent_lsn_bytes')).toBe(value(done, 'pgtimewarp_agent_confirmed_lsn_bytes'));
    const lastCommit = value(done, 'pgtimewarp_agent_last_applied_commit_timestamp_seconds');
    expect(lastCommit).toBeGreaterThan(afterCommit / 1000);
    expect(lastCommit).toBeLessThanOrEqual(Date.now() / 1000);
  });

  it('WAL with nothing to store is confirmed by a heartbeat: lag in bytes back to zero', async () => {
    const before = await scrape(url);
    const heartbeats0 = value(before, 'pgtimewarp_agent_heartbeats_total');
    const position0 = value(before, 'pgtimewarp_agent_server_sent_lsn_bytes');
    await timewarp.source.query(`INSERT INTO untracked DEFAULT VALUES`);
    const after = await caughtUp('a heartbeat past the untracked write', (s) =>
      value(s, 'pgtimewarp_agent_server_sent_lsn_bytes') > position0);
    expect(value(after, 'pgtimewarp_agent_heartbeats_total')).toBeGreaterThan(heartbeats0);
    expect(value(after, 'pgtimewarp_agent_store_write_duration_seconds_count{kind="heartbeat"}')).toBe(value(after, 'pgtimewarp_agent_heartbeats_total'));
    expect(value(after, 'pgtimewarp_agent_confirmed_lsn_bytes')).toBeGreaterThan(value(after, 'pgtimewarp_agent_applied_lsn_bytes'));
    // the heartbeat's time is the source server's, just now
    expect(Math.abs(value(after, 'pgtimewarp_agent_last_heartbeat_timestamp_seconds') - Date.now() / 1000)).toBeLessThan(10);
  });

  it('pgtimewarp agent --metrics-port serves them, says where, and stops cleanly', async () => {
    stop.abort(); // the slot is the CLI agent's now
    await running;
    running = undefined;
    const port = await findFreePort();
    const child = spawn(process.execPath, [
      '--import', 'tsx', 'installer/cli.ts', 'agent', '--source', timewarp.sourceUrl, '--store', timewarp.storeUrl,
      '--node', timewarp.nodeId, '--slot', 'pgtimewarp', '--log-format', 'json', '--metrics-port', String(port),
    ], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    const logged: AgentEvent[] = [];
    const other: string[] = [];
    for (const out of [child.stdout, child.stderr]) {
      createInterface({ input: out }).on('line', (line) => {
        try {
          logged.push(JSON.parse(line) as AgentEvent);
        } catch {
          other.push(line);
        }
      });
    }
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const served = await waitFor('the metrics line', () => logged.find((e) => e.event === 'metrics'), 30_000);
      expect(served).toMatchObject({ level: 'info', url: `http://127.0.0.1:${port}/metrics` });
      expect(served.message).toBe(`serving Prometheus metrics at http://127.0.0.1:${port}/metrics`);
      await waitFor('the CLI agent to stream', () => logged.some((e) => e.event === 'streaming'), 30_000);
      await timewarp.source.query(`UPDATE items SET note = 'from the CLI agent' WHERE id = 1`);
      const s = await waitFor('the CLI agent\'s metrics to count the update', async () => {
        const got = await scrape(served.url as string);
        return value(got, 'pgtimewarp_agent_applied_versions_total') === 1 && got;
      }, 30_000);
      expect(value(s, 'pgtimewarp_agent_applied_transactions_total')).toBe(1);
      expect(s.types.get('process_cpu_seconds_total')).toBe('counter');
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited, other.join('\n')).toBe(0);
    expect(logged.at(-1)).toMatchObject({ event: 'stopped' });
    await expect(fetch(`http://127.0.0.1:${port}/metrics`)).rejects.toThrow();
  });
});

/** An LSN as text (0/1A2B3C4) to its byte position. */
function lsnBytes(lsn: string): number {
  const [hi, lo] = lsn.split('/');
  return parseInt(hi!, 16) * 2 ** 32 + parseInt(lo!, 16);
}
