// The store goes away under sessions that have read it (issue 10).
//
// The store is on a cluster of its own, as on a real host; the agent runs
// on pgoutput.  Two long-lived source sessions (one with plain statements,
// one with a named prepared statement) read history, so each holds a store
// connection from an earlier transaction.  Then the store:
// - restarts (pg_ctl restart, fast and immediate);
// - has the extension's store connections terminated (pg_terminate_backend
//   of the store's backends connected over the unix socket, which is how
//   the foreign server reaches it; the agent and this test use TCP);
//   between transactions, and inside a transaction that has read the store;
// - is down for a few seconds.
// Meanwhile the looked-up row changes and the change is stored (checked by
// a fresh session), so a session that answered from before the outage would
// answer the old value.
//
// What must hold.  After a restart or a terminated connection, a session's
// next call either reconnects and answers the row as it is now, or fails
// with SQLSTATE class 08 and the message "could not reach the pgtimewarp
// store"; the call after that answers the row as it is now.  Never an old
// value.  Inside a transaction that read the store before its connection
// was terminated, the next lookup fails (class 08, that message) or answers
// from the transaction's snapshot (the value it saw before), never the
// newer one; after ROLLBACK the session answers the row as it is now.  With
// the store down, a call fails with that error, without waiting
// unreasonably, and the session stays usable (a plain query, and a
// transaction rolled back); once the store is back, the session recovers as
// above.

import { performance } from 'node:perf_hooks';

import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { setupTimewarp, startAgent, type InProcessAgent, type Timewarp } from '../support/timewarp.js';
import { waitFor } from '../support/wait.js';
import { useCluster } from '../support/use-cluster.js';

const sourceCluster = useCluster();
const storeCluster = useCluster();

const UNREACHABLE = 'could not reach the pgtimewarp store';
const LOOKUP = `SELECT pgtimewarp_asof_pk('items', '{"id": 1}', now()) ->> 'v' AS v`;
/** Later than anything stored: the store snapshot's latest version (with a warning). */
const LOOKUP_LATEST = `SELECT pgtimewarp_asof_pk('items', '{"id": 1}', now() + interval '1 hour') ->> 'v' AS v`;

type Outcome = { ok: true; value: string | null } | { ok: false; code: string | undefined; message: string };

function show(o: Outcome): string {
  return o.ok ? `answered ${JSON.stringify(o.value)}` : `failed ${o.code}: ${o.message}`;
}

function unreachable(o: Outcome): boolean {
  return !o.ok && /^08/.test(o.code ?? '') && o.message === UNREACHABLE;
}

interface Session {
  name: string;
  client: pg.Client;
  prepared: boolean;
}

describe('the store restarted or unreachable under sessions holding a store connection', () => {
  let timewarp: Timewarp;
  let agent: InProcessAgent;
  let sessions: Session[] = [];
  /** What each first call after an outage did, for the log. */
  const firstCalls: string[] = [];
  let value = 'v0';

  beforeAll(async () => {
    timewarp = await setupTimewarp(sourceCluster(), { storeCluster: storeCluster(), nodeId: 'restart' });
    const { source } = timewarp;
    await source.query(`CREATE TABLE items (id int PRIMARY KEY, v text)`);
    await source.query(`INSERT INTO items VALUES (1, $1), (2, 'other')`, [value]);
    agent = await startAgent(timewarp, 'pgoutput');
    await source.query(`SELECT pgtimewarp_track('items')`);
    sessions = [
      { name: 'plain', client: await sourceCluster().connect('source'), prepared: false },
      { name: 'prepared', client: await sourceCluster().connect('source'), prepared: true },
    ];
    for (const s of sessions) s.client.on('error', () => {}); // not expected: the source stays up
  });

  afterAll(async () => {
    console.log(`store restart: the first calls after an outage:\n${firstCalls.join('\n')}`);
    await agent?.stop();
    for (const s of sessions) await s.client.end().catch(() => {});
    await timewarp?.source.end();
  });

  async function call(s: Session, sql = LOOKUP): Promise<Outcome> {
    try {
      const res = await s.client.query<{ v: string | null }>(s.prepared ? { name: sql === LOOKUP ? 'lookup' : 'latest', text: sql } : sql);
      return { ok: true, value: res.rows[0]?.v ?? null };
    } catch (err) {
      const e = err as pg.DatabaseError;
      return { ok: false, code: e.code, message: e.message };
    }
  }

  /** A session that has never read the store: what history says now (undefined while the store is unreachable). */
  async function freshLookup(): Promise<string | null | undefined> {
    const client = new pg.Client({ connectionString: timewarp.sourceUrl });
    await client.connect();
    try {
      return (await client.query<{ v: string | null }>(LOOKUP)).rows[0]?.v ?? null;
    } catch {
      return undefined;
    } finally {
      await client.end();
    }
  }

  /** Change the row and wait until the agent has stored the change. */
  async function change(): Promise<void> {
    const next = `v${Number(value.slice(1)) + 1}`;
    await timewarp.source.query(`UPDATE items SET v = $1 WHERE id = 1`, [next]);
    await waitFor(`the agent to store ${next}`, async () => (await freshLookup()) === next, 30_000);
    value = next;
  }

  /** Every session answers the row as it is now (each holds a store connection afterwards). */
  async function allAnswer(): Promise<void> {
    for (const s of sessions) expect(await call(s), `${s.name}`).toEqual({ ok: true, value });
  }

  /** The first call after an outage: the row as it is now, or the error; the second: the row. */
  async function allRecover(what: string): Promise<void> {
    for (const s of sessions) {
      const first = await call(s);
      firstCalls.push(`${what}, ${s.name} session: ${show(first)}`);
      if (!unreachable(first)) expect(first, `${what}: the first call of the ${s.name} session`).toEqual({ ok: true, value });
      expect(await call(s), `${what}: the second call of the ${s.name} session`).toEqual({ ok: true, value });
    }
  }

  /** Terminate the store backends of the extension's connections (over the unix socket); how many. */
  async function terminateExtensionConnections(): Promise<number> {
    const store = await storeCluster().connect('store');
    try {
      const res = await store.query<{ n: string }>(
        `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS n FROM pg_stat_activity
          WHERE datname = current_database() AND backend_type = 'client backend'
            AND client_port = -1 AND pid <> pg_backend_pid()`);
      return Number(res.rows[0]!.n);
    } finally {
      await store.end();
    }
  }

  it('answers the row as it is now after the store restarted, or fails once with a connection error', { timeout: 60_000 }, async () => {
    await allAnswer();
    for (const mode of ['fast', 'immediate'] as const) {
      await change();
      await storeCluster().restart({ mode });
      // stored while the sessions' connections were gone: an answer from before the restart shows
      await change();
      await allRecover(`after a restart of the store (${mode})`);
    }
  });

  it('answers the row as it is now after its store connection was terminated, or fails once with a connection error', { timeout: 60_000 }, async () => {
    await allAnswer();
    await change();
    expect(await terminateExtensionConnections()).toBeGreaterThanOrEqual(sessions.length);
    await change();
    await allRecover('after pg_terminate_backend of the store connections');
  });

  it('inside a transaction, never answers from another snapshot after its store connection was terminated', { timeout: 60_000 }, async () => {
    await allAnswer();
    for (const s of sessions) await s.client.query('BEGIN');
    const seen = value;
    for (const s of sessions) expect(await call(s, LOOKUP_LATEST), s.name).toEqual({ ok: true, value: seen });
    await change();
    expect(await terminateExtensionConnections()).toBeGreaterThanOrEqual(sessions.length);
    for (const s of sessions) {
      const next = await call(s, LOOKUP_LATEST);
      firstCalls.push(`inside a transaction whose store connection was terminated, ${s.name} session: ${show(next)}`);
      if (!unreachable(next)) expect(next, `${s.name}: the snapshot of the transaction`).toEqual({ ok: true, value: seen });
      await s.client.query('ROLLBACK');
    }
    await allRecover('after the transaction');

    // terminated inside a transaction that then reads nothing more: the session goes on
    for (const s of sessions) {
      await s.client.query('BEGIN');
      expect(await call(s), s.name).toEqual({ ok: true, value });
    }
    expect(await terminateExtensionConnections()).toBeGreaterThanOrEqual(sessions.length);
    for (const s of sessions) {
      const commit = await s.client.query('COMMIT').then(() => 'committed', (e: pg.DatabaseError) => `failed ${e.code}: ${e.message}`);
      firstCalls.push(`COMMIT of a transaction whose store connection was terminated, ${s.name} session: ${commit}`);
      expect((await s.client.query<{ one: number }>('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    }
    await change();
    await allRecover('after that COMMIT');
  });

  it('fails with a connection error while the store is down, and the session stays usable', { timeout: 60_000 }, async () => {
    await allAnswer();
    let back = false;
    const restart = storeCluster().restart({ mode: 'fast', downMs: 8000 }).then(() => { back = true; });
    try {
      await waitFor('the store to go down', async () => {
        const probe = new pg.Client({ connectionString: storeCluster().url('store') });
        probe.on('error', () => {});
        return probe.connect().then(async () => { await probe.end(); return false; }, () => true);
      }, 10_000);
      for (const s of sessions) {
        const started = performance.now();
        const down = await call(s);
        expect(unreachable(down), `${s.name}: ${show(down)}`).toBe(true);
        // no long wait: at most pgtimewarp.horizon_wait (1 s) for the agent, then the connection attempt
        expect(performance.now() - started).toBeLessThan(5000);
        // the session goes on, and so does a transaction rolled back after the error
        expect((await s.client.query<{ one: number }>('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
        await s.client.query('BEGIN');
        const status = await s.client.query(`SELECT * FROM pgtimewarp_status()`).then(
          () => ({ ok: true, value: null }) as Outcome,
          (e: pg.DatabaseError) => ({ ok: false, code: e.code, message: e.message }) as Outcome);
        expect(unreachable(status), `${s.name}: pgtimewarp_status() ${show(status)}`).toBe(true);
        await s.client.query('ROLLBACK');
        expect((await s.client.query<{ one: number }>('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      }
      // the calls above happened while the store was down
      expect(back).toBe(false);
    } finally {
      await restart;
    }
    await change();
    await allRecover('after the store came back');
    // the agent retried its way through every outage
    expect(agent.events.filter((e) => e.level === 'error')).toEqual([]);
  });

  it('has the agent keep the history exact across the outages', async () => {
    // each value the row had, in order, once
    const res = await timewarp.source.query<{ values: string[] }>(
      `SELECT array_agg(row_data ->> 'v' ORDER BY valid_from_lsn) AS values
         FROM pgtimewarp_diff_pk('items', '{"id": 1}', now() - interval '1 hour', now())`);
    const want = Array.from({ length: Number(value.slice(1)) + 1 }, (_, i) => `v${i}`);
    expect(res.rows[0]!.values).toEqual(want);
  });
});
