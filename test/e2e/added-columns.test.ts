// Columns added to a tracked table, through the agent on each plugin.
// ALTER TABLE ... ADD COLUMN c ... DEFAULT d gives the rows already there
// c = d without writing them: no change of theirs reaches the WAL.  The
// agent records the addition's LSN from the extension's DDL log
// (migrations/6_column_additions.sql), and every lookup at a point from the
// addition on reads c = d in rows untouched since, as the table did; before
// it, the column did not exist (NULL in rows, absent from the JSON).  A
// column dropped and added again under its name is another column: the old
// one's values are never read as the new one's.  The whole table at every
// recorded point equals the table recorded there, renamed columns under
// their names now.

import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { setupTimewarp, startAgent, type InProcessAgent, type Timewarp } from '../support/timewarp.js';
import { waitFor } from '../support/wait.js';
import { useCluster } from '../support/use-cluster.js';

const cluster = useCluster({ settings: { wal_sender_timeout: '2s' } });

describe.each(['pgoutput', 'wal2json'] as const)('columns added on %s', (plugin) => {
  let timewarp: Timewarp;
  let agent: InProcessAgent;
  let store: pg.Client;
  /** After each transaction: its LSN, and the table's rows as attnum -> value (names change). */
  const recorded: Array<{ lsn: string; rows: string[] }> = [];

  async function record(source: pg.Client): Promise<void> {
    const res = await source.query<{ lsn: string; rows: string[] | null }>(
      `SELECT pg_current_wal_insert_lsn()::text AS lsn,
              (SELECT array_agg((SELECT jsonb_object_agg(a.attnum::text, to_jsonb(t) -> a.attname::text)
                                   FROM pg_attribute a
                                  WHERE a.attrelid = 'wide'::regclass AND a.attnum > 0 AND NOT a.attisdropped)::text
                                ORDER BY id)
                 FROM wide t) AS rows`);
    recorded.push({ lsn: res.rows[0]!.lsn, rows: res.rows[0]!.rows ?? [] });
  }

  beforeAll(async () => {
    timewarp = await setupTimewarp(cluster(), { sourceDb: `src_${plugin}`, storeDb: `store_${plugin}`, nodeId: plugin });
    const { source } = timewarp;
    await source.query(`CREATE TABLE wide (id int PRIMARY KEY, v text)`);
    await source.query(`INSERT INTO wide SELECT g, 'v' || g FROM generate_series(1, 4) g`);
    store = new pg.Client({ connectionString: timewarp.storeUrl });
    await store.connect();
    agent = await startAgent(timewarp, plugin);
    await source.query(`SELECT pgtimewarp_track('wide')`);
    await record(source);
    for (const sql of [
      `ALTER TABLE wide ADD COLUMN qty int DEFAULT 7`,
      `UPDATE wide SET qty = 8 WHERE id = 2`,
      `ALTER TABLE wide ADD COLUMN note text, ADD COLUMN born date DEFAULT '2026-01-02'`,
      `UPDATE wide SET note = 'n' WHERE id = 3`,
      `INSERT INTO wide (id, v) VALUES (5, 'v5')`,
      `ALTER TABLE wide RENAME qty TO amount`,
      `ALTER TABLE wide DROP COLUMN note`,
      `ALTER TABLE wide ADD COLUMN note numeric DEFAULT 1.50`,
      `DELETE FROM wide WHERE id = 4`,
    ]) {
      await source.query(sql);
      await record(source);
    }
    await waitFor('the agent past the last change', async () => (await store.query<{ n: string }>(
      `SELECT count(*) AS n FROM pgtimewarp_store.wal_checkpoints WHERE confirmed_lsn >= $1::pg_lsn`, [recorded.at(-1)!.lsn])).rows[0]!.n === '1', 20_000);
  }, 60_000);

  afterAll(async () => {
    await agent?.stop();
    await store?.end();
    await timewarp?.source.end();
  });

  it('records each addition by attnum at its commit', async () => {
    const res = await store.query<{ additions: Array<{ lsn: string; attnum: number }> }>(
      `SELECT column_additions AS additions FROM pgtimewarp_store.tracked_relations WHERE table_name = 'wide'`);
    expect(res.rows[0]!.additions.map((a) => a.attnum)).toEqual([3, 4, 5, 6]);
  });

  it('reads the whole table at every recorded point as the table was, typed as now', async () => {
    const { source } = timewarp;
    for (const [i, point] of recorded.entries()) {
      // the table then, typed as now: by attnum under the names of now, columns added since NULL, dropped ones gone
      const want = (await source.query<{ rows: string[] | null }>(
        `SELECT array_agg((SELECT jsonb_object_agg(a.attname, coalesce(r::jsonb -> a.attnum::text, 'null'))
                             FROM pg_attribute a
                            WHERE a.attrelid = 'wide'::regclass AND a.attnum > 0 AND NOT a.attisdropped)::text
                          ORDER BY ord) AS rows
           FROM unnest($1::text[]) WITH ORDINALITY AS u(r, ord)`, [point.rows])).rows[0]!.rows ?? [];
      const got = (await source.query<{ rows: string[] | null }>(
        `SELECT array_agg(to_jsonb(a)::text ORDER BY id) AS rows FROM pgtimewarp_asof_table_lsn(NULL::wide, $1::pg_lsn) a`,
        [point.lsn])).rows[0]!.rows ?? [];
      expect(got, `point ${i} at ${point.lsn}`).toEqual(want);
    }
  });

  it('answers each key at the last point exactly as the table has it now', async () => {
    const { source } = timewarp;
    const res = await source.query<{ id: number; same: boolean }>(
      `SELECT id, pgtimewarp_asof_pk_lsn('wide', jsonb_build_object('id', id), $1::pg_lsn) = to_jsonb(w) AS same
         FROM wide w ORDER BY id`, [recorded.at(-1)!.lsn]);
    expect(res.rows).toEqual([{ id: 1, same: true }, { id: 2, same: true }, { id: 3, same: true }, { id: 5, same: true }]);
  });
});
