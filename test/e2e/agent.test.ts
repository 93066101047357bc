// The agent end to end, on each plugin: a scripted workload on a tracked
// table while runAgent() streams it into the store; the table's contents are
// recorded after every commit, and afterwards every key at every recorded
// LSN must be what pgtimewarp_asof_pk_lsn answers.  Compared as text in SQL
// (to_jsonb(row) against the answer), so JSON number parsing cannot hide a
// difference.

import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runAgent, type AgentEvent } from '../../agent/run.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { waitFor } from '../support/wait.js';
import { useCluster } from '../support/use-cluster.js';

// frequent keepalives, so heartbeats and retries happen within a test
const cluster = useCluster({ settings: { wal_sender_timeout: '2s' } });

/** Table contents at one WAL position: id -> to_jsonb(row)::text. */
interface Snapshot {
  lsn: string;
  rows: Map<number, string>;
}

const SENTINEL = 999;

async function snapshot(source: pg.Client): Promise<Snapshot> {
  const lsn = await source.query<{ lsn: string }>(`SELECT pg_current_wal_insert_lsn()::text AS lsn`);
  const rows = await source.query<{ id: number; j: string }>(`SELECT id, to_jsonb(t)::text AS j FROM items t`);
  return { lsn: lsn.rows[0]!.lsn, rows: new Map(rows.rows.map((r) => [r.id, r.j])) };
}

/** The workload: each entry one transaction (or a rollback), run in order. */
const WORKLOAD: string[][] = [
  [`INSERT INTO items SELECT g, g * 1.5, repeat(md5(g::text), 200), 'n' || g FROM generate_series(1, 5) g`],
  // big (6.4 kB, stored out of line uncompressed) untouched: unchanged TOAST
  [`UPDATE items SET note = 'one' WHERE id = 1`],
  [`UPDATE items SET big = repeat('y', 7000) WHERE id = 2`],
  [`DELETE FROM items WHERE id = 3`],
  // primary-key change with the TOASTed value untouched
  [`UPDATE items SET id = 40 WHERE id = 4`],
  // several changes of one key in one transaction make one version; 6 never shows
  [`UPDATE items SET v = 100 WHERE id = 1`, `UPDATE items SET v = v + 1, note = 'twice' WHERE id = 1`,
    `INSERT INTO items VALUES (6, 6, 'six', 'six')`, `DELETE FROM items WHERE id = 6`],
  ['ROLLBACK', `UPDATE items SET note = 'rolled back' WHERE id = 1`],
  [`UPDATE items SET note = 'kept' WHERE id = 2`, 'SAVEPOINT s', `UPDATE items SET note = 'undone' WHERE id = 5`,
    'ROLLBACK TO SAVEPOINT s'],
  [`TRUNCATE items`, `INSERT INTO items VALUES (7, 12345678901234567890.123456789012345678901, 'seven', NULL)`],
  [`INSERT INTO items VALUES (3, 3, 'back', 'again')`],
  [`UPDATE items SET v = -0.5 WHERE id = 7`],
];

describe.each(['pgoutput', 'wal2json'] as const)('the agent on %s', (plugin) => {
  let timewarp: Timewarp;
  const events: AgentEvent[] = [];
  const stop = new AbortController();
  let running: Promise<void>;
  const history: Snapshot[] = [];

  beforeAll(async () => {
    timewarp = await setupTimewarp(cluster(), { sourceDb: `src_${plugin}`, storeDb: `store_${plugin}`, nodeId: plugin });
    const { source } = timewarp;
    await source.query(`CREATE TABLE items (id int PRIMARY KEY, v numeric, big text, note text)`);
    await source.query(`ALTER TABLE items ALTER big SET STORAGE EXTERNAL`);
    // the agent first, so its slot exists before tracking starts
    running = runAgent({
      sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId,
      slot: `agent_${plugin}`, plugin, signal: stop.signal, log: (e) => events.push(e),
      backoff: { initialMs: 100, maxMs: 1000 },
    });
    await waitFor('the agent\'s slot', async () => (await source.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $1`, [`agent_${plugin}`])).rowCount === 1, 30_000);
    await source.query(`SELECT pgtimewarp_track('items')`);
    history.push(await snapshot(source));

    for (const statements of WORKLOAD) {
      await source.query('BEGIN');
      if (statements[0] === 'ROLLBACK') {
        for (const sql of statements.slice(1)) await source.query(sql);
        await source.query('ROLLBACK');
      } else {
        for (const sql of statements) await source.query(sql);
        await source.query('COMMIT');
      }
      history.push(await snapshot(source));
    }
    await source.query(`INSERT INTO items VALUES (${SENTINEL}, 0, 'end', 'end')`);
    history.push(await snapshot(source));
  });

  afterAll(async () => {
    stop.abort();
    await running?.catch(() => undefined);
    await timewarp?.source.end();
  });

  it('stores every version, then answers every key at every recorded LSN as the table was', async () => {
    const { source } = timewarp;
    await waitFor('the sentinel in the store', async () =>
      (await source.query(`SELECT pgtimewarp_asof_pk_lsn('items', $1, 'FFFFFFFF/FFFFFFFF') IS NOT NULL AS ok`,
        [JSON.stringify({ id: SENTINEL })]).catch(() => ({ rows: [{ ok: false }] }))).rows[0]?.ok === true,
    30_000);

    const ids = new Set<number>();
    for (const s of history) for (const id of s.rows.keys()) ids.add(id);
    ids.add(6); // inserted and deleted inside one transaction: never visible
    let compared = 0;
    for (const s of history) {
      for (const id of ids) {
        const res = await source.query<{ got: string | null }>(
          `SELECT pgtimewarp_asof_pk_lsn('items', $1, $2)::text AS got`,
          [JSON.stringify({ id }), s.lsn],
        );
        expect(res.rows[0]?.got ?? null, `id ${id} at ${s.lsn}`).toBe(s.rows.get(id) ?? null);
        compared++;
      }
    }
    expect(compared).toBe(history.length * ids.size);
    expect(events.some((e) => e.event === 'applied')).toBe(true);
    // a clean run needs no retry: every warning here is a bug
    expect(events.filter((e) => e.level !== 'info')).toEqual([]);
  });

  it('records one version per committed change of a key, none for the rollback', async () => {
    const { source } = timewarp;
    // items was empty when tracked, so there is no baseline version
    const res = await source.query<{ op: string; changed: string[] | null }>(
      `SELECT op, changed_columns AS changed FROM pgtimewarp_diff_pk('items', '{"id": 1}',
         (SELECT tracked_from_ts FROM pgtimewarp_status() WHERE table_name = 'items'), now())`,
    );
    expect(res.rows).toEqual([
      { op: 'insert', changed: ['id', 'v', 'big', 'note'] },
      { op: 'update', changed: ['note'] },
      { op: 'update', changed: ['v', 'note'] },
      { op: 'truncate', changed: null },
    ]);
  });

  it('confirms the slot only as far as the store has it', async () => {
    const { source } = timewarp;
    const slot = await source.query<{ confirmed: string }>(
      `SELECT confirmed_flush_lsn::text AS confirmed FROM pg_replication_slots WHERE slot_name = $1`,
      [`agent_${plugin}`],
    );
    const store = await cluster().connect(`store_${plugin}`);
    try {
      const checkpoint = await store.query<{ lsn: string }>(
        `SELECT confirmed_lsn::text AS lsn FROM pgtimewarp_store.wal_checkpoints WHERE node_id = $1`,
        [timewarp.nodeId],
      );
      const confirmed = slot.rows[0]!.confirmed;
      const stored = checkpoint.rows[0]!.lsn;
      const cmp = await source.query<{ le: boolean }>(`SELECT $1::pg_lsn <= $2::pg_lsn AS le`, [confirmed, stored]);
      expect(cmp.rows[0]?.le, `slot confirmed ${confirmed}, store checkpoint ${stored}`).toBe(true);
    } finally {
      await store.end();
    }
  });
});

