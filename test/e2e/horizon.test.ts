// A fresh horizon end to end, on each plugin, with the store on the
// source's cluster as on a one-host install (extension/src/horizon.c,
// agent/run.ts): an as-of at now(), a second after the last commit, answers
// the new value without the "complete only up to" warning.  The store's own
// WAL (the agent's commits and heartbeats) keeps the source's WAL position
// ahead of every checkpoint, so this holds only because the call asks the
// agent for a heartbeat and waits for it; with the wait turned off
// (pgtimewarp.horizon_wait = 0) the same call warns, which shows the test
// can fail.  A quiet agent must also not feed itself: over idle seconds, it
// writes no heartbeat per second for its own WAL.

import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runAgent, type AgentEvent } from '../../agent/run.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { waitFor } from '../support/wait.js';
import { useCluster } from '../support/use-cluster.js';

const cluster = useCluster();

/** Run `sql` on a new connection to the source, returning its rows and every warning it raised. */
async function withNotices(database: string, sql: string, settings: string[] = []): Promise<{ rows: Array<Record<string, unknown>>; warnings: string[]; ms: number }> {
  const client: pg.Client = await cluster().connect(database);
  const warnings: string[] = [];
  client.on('notice', (n) => {
    if (n.severity === 'WARNING') warnings.push(n.message ?? '');
  });
  try {
    for (const s of settings) await client.query(s);
    const started = performance.now();
    const res = await client.query(sql);
    return { rows: res.rows as Array<Record<string, unknown>>, warnings, ms: performance.now() - started };
  } finally {
    await client.end();
  }
}

describe.each(['pgoutput', 'wal2json'] as const)('the horizon on %s', (plugin) => {
  let timewarp: Timewarp;
  const events: AgentEvent[] = [];
  const stop = new AbortController();
  let running: Promise<void>;
  let heartbeats = 0;
  let trackedAt: string;

  beforeAll(async () => {
    timewarp = await setupTimewarp(cluster(), { sourceDb: `hsrc_${plugin}`, storeDb: `hstore_${plugin}`, nodeId: `h_${plugin}` });
    const { source } = timewarp;
    await source.query(`CREATE TABLE items (id int PRIMARY KEY, label text)`);
    await source.query(`INSERT INTO items VALUES (1, 'v0')`);
    running = runAgent({
      sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId,
      slot: `horizon_${plugin}`, plugin, signal: stop.signal, log: (e) => events.push(e),
      observer: { heartbeat: () => void heartbeats++ },
    });
    await waitFor('the agent\'s slot', async () =>
      (await source.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $1`, [`horizon_${plugin}`])).rowCount === 1, 30_000);
    await source.query(`SELECT pgtimewarp_track('items')`);
    trackedAt = (await source.query<{ t: string }>(`SELECT now()::text AS t`)).rows[0]!.t;
  });

  afterAll(async () => {
    stop.abort();
    await running?.catch(() => undefined);
    await timewarp?.source.end();
  });

  it('answers an as-of at now() a second after the last commit without a warning', async () => {
    const { source } = timewarp;
    for (const label of ['v1', 'v2', 'v3']) {
      await source.query(`UPDATE items SET label = $1 WHERE id = 1`, [label]);
      await new Promise((r) => setTimeout(r, 1000));
      const fresh = await withNotices(`hsrc_${plugin}`, `SELECT pgtimewarp_asof_pk('items', '{"id": 1}', now()) ->> 'label' AS label`);
      expect(fresh.warnings).toEqual([]);
      expect(fresh.rows).toEqual([{ label }]);
      // the typed form and a diff up to now() agree
      const typed = await withNotices(`hsrc_${plugin}`, `SELECT label FROM pgtimewarp_asof_row(NULL::items, '{"id": 1}', now())`);
      expect(typed).toMatchObject({ warnings: [], rows: [{ label }] });
    }
    const diff = await withNotices(`hsrc_${plugin}`,
      `SELECT array_agg(row_data ->> 'label' ORDER BY valid_from_lsn) AS labels
         FROM pgtimewarp_diff_pk('items', '{"id": 1}', '${trackedAt}', now())`);
    expect(diff).toMatchObject({ warnings: [], rows: [{ labels: ['v0', 'v1', 'v2', 'v3'] }] });
  });

  it('warns about now() when the call may not wait for the agent, since the store writes WAL of its own', async () => {
    const { source } = timewarp;
    await source.query(`UPDATE items SET label = 'v4' WHERE id = 1`);
    await new Promise((r) => setTimeout(r, 1000));
    const unasked = await withNotices(`hsrc_${plugin}`, `SELECT pgtimewarp_asof_pk('items', '{"id": 1}', now()) ->> 'label' AS label`,
      ['SET pgtimewarp.horizon_wait = 0']);
    expect(unasked.rows).toEqual([{ label: 'v4' }]);
    expect(unasked.warnings).toEqual([expect.stringMatching(/^history of table public\.items is complete only up to /)]);
  });

  it('writes no heartbeats for its own WAL while the source is quiet', async () => {
    // let the last change and its heartbeats settle, then count over quiet seconds
    await new Promise((r) => setTimeout(r, 2000));
    const before = heartbeats;
    await new Promise((r) => setTimeout(r, 4000));
    expect(heartbeats - before).toBeLessThanOrEqual(1);
    expect(events.filter((e) => e.level === 'error')).toEqual([]);
  });
});
