// Keys of any length the source accepts, through the agent on each plugin.
// A role with INSERT on one tracked table inserting a 2,688-character key
// used to make the store refuse the batch (a btree entry holds about 2,700
// bytes) and the agent retry it forever, history stopped for every table.
// Now the store indexes long keys by digest (migrations/3_safe_history.sql):
// every path that writes or probes keys is exercised with long ones (COPY,
// unchanged-TOAST carry, a key change, TRUNCATE, a spilled transaction),
// every key at every recorded LSN must read back as the table was, and
// another table keeps being recorded meanwhile.

import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { setupTimewarp, startAgent, type InProcessAgent, type Timewarp } from '../support/timewarp.js';
import { waitFor } from '../support/wait.js';
import { useCluster } from '../support/use-cluster.js';

const cluster = useCluster({ settings: { wal_sender_timeout: '2s' } });

const long = (c: string, n: number): string => c.repeat(n);
/** Keys the workload uses: two just past the store's old limit, one multibyte, one short. */
const KEYS = [long('k', 2688), long('m', 5000), long('é', 400), 'short'];

interface Snapshot {
  lsn: string;
  rows: Map<string, string>;
}

async function snapshot(source: pg.Client): Promise<Snapshot> {
  const lsn = await source.query<{ lsn: string }>(`SELECT pg_current_wal_insert_lsn()::text AS lsn`);
  const rows = await source.query<{ k: string; j: string }>(`SELECT k, to_jsonb(t)::text AS j FROM docs t`);
  return { lsn: lsn.rows[0]!.lsn, rows: new Map(rows.rows.map((r) => [r.k, r.j])) };
}

describe.each(['pgoutput', 'wal2json'] as const)('long keys through the agent on %s', (plugin) => {
  let timewarp: Timewarp;
  let agent: InProcessAgent;
  const history: Snapshot[] = [];

  beforeAll(async () => {
    timewarp = await setupTimewarp(cluster(), { sourceDb: `src_${plugin}`, storeDb: `store_${plugin}`, nodeId: plugin });
    const { source } = timewarp;
    await source.query(`CREATE TABLE docs (k text PRIMARY KEY, n int, big text)`);
    await source.query(`ALTER TABLE docs ALTER big SET STORAGE EXTERNAL`);
    await source.query(`CREATE TABLE other (id int PRIMARY KEY, v int)`);
    // a transaction of more than 3 keys is merged in the store piece by piece
    agent = await startAgent(timewarp, plugin, { spillKeys: 3 });
    // a long key in the baseline too
    await source.query(`INSERT INTO docs VALUES ($1, 0, repeat('b', 7000))`, [KEYS[0]]);
    await source.query(`SELECT pgtimewarp_track('docs')`);
    await source.query(`SELECT pgtimewarp_track('other')`);
    history.push(await snapshot(source));

    const workload: Array<[string, unknown[]]> = [
      [`INSERT INTO docs VALUES ($1, 1, 'one')`, [KEYS[1]]],
      // unchanged TOAST value carried from the long key's previous version
      [`UPDATE docs SET n = 10 WHERE k = $1`, [KEYS[0]]],
      // a key change from one long key to another, the TOAST value untouched
      [`UPDATE docs SET k = $2 WHERE k = $1`, [KEYS[0], KEYS[2]]],
      [`INSERT INTO docs VALUES ($1, 3, 'three')`, [KEYS[3]]],
      [`DELETE FROM docs WHERE k = $1`, [KEYS[1]]],
    ];
    for (const [sql, params] of workload) {
      await source.query(sql, params);
      await source.query(`INSERT INTO other VALUES ($1, 0) ON CONFLICT (id) DO UPDATE SET v = other.v + 1`, [history.length]);
      history.push(await snapshot(source));
    }
    // a spilled transaction (more keys than spillKeys) with long keys and a TRUNCATE
    await source.query('BEGIN');
    for (let i = 0; i < 5; i++) await source.query(`INSERT INTO docs VALUES ($1, $2, 'spilled')`, [long(String(i), 3000), i]);
    await source.query(`UPDATE docs SET n = 99 WHERE k = $1`, [KEYS[2]]);
    await source.query('COMMIT');
    history.push(await snapshot(source));
    await source.query('BEGIN');
    await source.query('TRUNCATE docs');
    await source.query(`INSERT INTO docs VALUES ($1, 7, 'after truncate')`, [KEYS[1]]);
    await source.query('COMMIT');
    history.push(await snapshot(source));
    await source.query(`INSERT INTO other VALUES (1000, 0)`);
  });

  afterAll(async () => {
    await agent?.stop();
    await timewarp?.source.end();
  });

  it('stores every version of every long key, and the other table meanwhile', async () => {
    const { source } = timewarp;
    await waitFor('the last change to the other table in the store', async () =>
      (await source.query(`SELECT pgtimewarp_asof_pk_lsn('other', '{"id": 1000}', 'FFFFFFFF/FFFFFFFF') IS NOT NULL AS ok`)
        .catch(() => ({ rows: [{ ok: false }] }))).rows[0]?.ok === true,
    30_000);

    const keys = new Set<string>();
    for (const s of history) for (const k of s.rows.keys()) keys.add(k);
    expect(keys.size).toBeGreaterThan(KEYS.length);
    for (const s of history) {
      for (const k of keys) {
        const res = await source.query<{ got: string | null }>(
          `SELECT pgtimewarp_asof_pk_lsn('docs', jsonb_build_object('k', $1::text), $2)::text AS got`, [k, s.lsn],
        );
        expect(res.rows[0]?.got ?? null, `key of ${k.length} characters at ${s.lsn}`).toBe(s.rows.get(k) ?? null);
      }
    }
    // no retry: a refused key would have been retried
    expect(agent.events.filter((e) => e.level !== 'info')).toEqual([]);
  });

  it('keeps long keys whole in the store, indexed by digest', async () => {
    const store = await cluster().connect(`store_${plugin}`);
    try {
      const res = await store.query<{ digests: string; whole_ok: boolean; longest: number }>(
        `SELECT count(*) FILTER (WHERE v.pk[1] IS NULL) AS digests,
                bool_and(v.pk_full IS NULL OR v.pk = pgtimewarp_store.index_key(v.pk_full)) AS whole_ok,
                max(length((coalesce(v.pk_full, v.pk))[1])) AS longest
           FROM pgtimewarp_store.row_versions v
           JOIN pgtimewarp_store.tracked_relations r USING (relation_id)
          WHERE r.table_name = 'docs'`,
      );
      expect(Number(res.rows[0]!.digests)).toBeGreaterThan(5);
      expect(res.rows[0]!.whole_ok).toBe(true);
      expect(res.rows[0]!.longest).toBe(5000);
    } finally {
      await store.end();
    }
  });
});
