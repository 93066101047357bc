// relation_stats (migrations/5_relation_stats.sql) counts each tracked
// incarnation's versions as the agent writes them, so pgtimewarp_status()
// reads a count instead of counting history.  After a mixed workload through
// the real agent, on each plugin, every table's count must be exactly the
// number of its rows in row_versions: inserts, updates, key changes,
// deletes, TRUNCATE tombstones, transactions across tables, batches of
// many small transactions, and transactions big enough to be spilled to the
// store piece by piece (which write their versions in SQL, not by COPY).
// Two of the tables have rows when tracked: pgtimewarp_track (the extension,
// 0.4 on) counts their baseline, and the agent adds to that count.

import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { setupTimewarp, startAgent, type InProcessAgent, type Timewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';
import { waitFor } from '../support/wait.js';

// frequent keepalives: the agent's checkpoint follows the WAL within seconds
const cluster = useCluster({ settings: { wal_sender_timeout: '2s' } });

const PLUGINS = ['pgoutput', 'wal2json'] as const;
type Plugin = (typeof PLUGINS)[number];

/** Keys a transaction may hold before the agent spills it: small, so the big transactions below spill. */
const SPILL_KEYS = 40;

interface Setup {
  timewarp: Timewarp;
  agent: InProcessAgent;
  store: pg.Client;
}
const setups = new Map<Plugin, Setup>();

beforeAll(async () => {
  for (const plugin of PLUGINS) {
    const timewarp = await setupTimewarp(cluster(), { sourceDb: `source_${plugin}`, storeDb: `store_${plugin}`, nodeId: plugin });
    const agent = await startAgent(timewarp, plugin, { spillKeys: SPILL_KEYS, heartbeatIntervalMs: 200 });
    const store = await cluster().connect(`store_${plugin}`);
    setups.set(plugin, { timewarp, agent, store });
  }
});

afterAll(async () => {
  for (const { timewarp, agent } of setups.values()) {
    await agent.stop();
    await timewarp.source.end();
  }
});

/** The workload, each statement (or BEGIN ... COMMIT group) its own transaction. */
const WORKLOAD = [
  // many small transactions: the agent writes them in batches
  ...Array.from({ length: 30 }, (_, i) => `INSERT INTO accounts VALUES (${i + 1}, ${i * 10}, 'note ${i + 1}')`),
  `UPDATE accounts SET balance = balance + 1 WHERE id <= 10`,
  `DELETE FROM accounts WHERE id BETWEEN 25 AND 27`,
  // a key change: a tombstone for the old key, a version of the new one
  `UPDATE accounts SET id = 1000 WHERE id = 1`,
  // a row with a TOASTed value, then an update that leaves it unsent
  `INSERT INTO docs VALUES (1, 'title', repeat('long body ', 1000))`,
  `UPDATE docs SET title = 'retitled' WHERE id = 1`,
  // both tables in one transaction, a key written twice in it
  `BEGIN; INSERT INTO docs VALUES (2, 'two', 'short'); UPDATE accounts SET note = 'x' WHERE id = 2;
   UPDATE accounts SET note = 'y' WHERE id = 2; DELETE FROM docs WHERE id = 2; COMMIT`,
  // TRUNCATE: a tombstone for every live key, then rows again
  `INSERT INTO ledger SELECT g, g FROM generate_series(1, 20) g`,
  `TRUNCATE ledger`,
  `INSERT INTO ledger SELECT g, -g FROM generate_series(1, 5) g`,
  // big enough to spill: inserts, updates of some, deletes of others, in pieces
  `BEGIN; INSERT INTO ledger SELECT g, g FROM generate_series(100, 399) g;
   UPDATE ledger SET amount = amount * 2 WHERE id % 3 = 0; DELETE FROM ledger WHERE id % 7 = 0;
   UPDATE accounts SET balance = 0; COMMIT`,
  // a spilled transaction with a TRUNCATE inside, after rows it wrote itself
  `BEGIN; INSERT INTO ledger SELECT g, g FROM generate_series(1000, 1199) g; TRUNCATE ledger;
   INSERT INTO ledger SELECT g, g FROM generate_series(2000, 2099) g; COMMIT`,
  `UPDATE ledger SET amount = 1 WHERE id < 2050`,
];

describe('relation_stats after the agent applied a mixed workload', () => {
  it.each(PLUGINS)('%s: each table\'s count is exactly its number of row versions', async (plugin) => {
    const { timewarp, agent, store } = setups.get(plugin)!;
    const { source } = timewarp;
    await source.query(`CREATE TABLE accounts (id int PRIMARY KEY, balance numeric NOT NULL, note text)`);
    await source.query(`CREATE TABLE docs (id int PRIMARY KEY, title text, body text)`);
    await source.query(`CREATE TABLE ledger (id bigint PRIMARY KEY, amount numeric)`);
    await source.query(`INSERT INTO accounts SELECT g, 0, NULL FROM generate_series(500, 549) g`);
    await source.query(`INSERT INTO ledger SELECT g, 0 FROM generate_series(5000, 5009) g`);
    for (const table of ['accounts', 'docs', 'ledger']) await source.query(`SELECT pgtimewarp_track($1)`, [table]);
    const baselines = await store.query<{ table_name: string; versions: string }>(
      `SELECT r.table_name, s.versions::text FROM pgtimewarp_store.tracked_relations r
         JOIN pgtimewarp_store.relation_stats s USING (relation_id) WHERE r.node_id = $1 ORDER BY r.table_name`, [plugin]);
    expect(baselines.rows).toEqual([
      { table_name: 'accounts', versions: '50' }, { table_name: 'docs', versions: '0' }, { table_name: 'ledger', versions: '10' },
    ]);

    for (const sql of WORKLOAD) await source.query(sql);
    const end = (await source.query<{ lsn: string }>(`SELECT pg_current_wal_lsn()::text AS lsn`)).rows[0]!.lsn;
    await waitFor(`the ${plugin} agent to store up to ${end}`, async () =>
      (await store.query<{ ok: boolean }>(
        `SELECT confirmed_lsn >= $1::pg_lsn AS ok FROM pgtimewarp_store.wal_checkpoints WHERE node_id = $2`, [end, plugin],
      )).rows[0]?.ok === true, 60_000);

    const { rows } = await store.query<{ table_name: string; versions: string | null; counted: string; truncates: string }>(
      `SELECT r.table_name, s.versions::text,
              (SELECT count(*) FROM pgtimewarp_store.row_versions v WHERE v.relation_id = r.relation_id)::text AS counted,
              (SELECT count(*) FROM pgtimewarp_store.row_versions v WHERE v.relation_id = r.relation_id AND v.op = 't')::text AS truncates
         FROM pgtimewarp_store.tracked_relations r
         LEFT JOIN pgtimewarp_store.relation_stats s ON s.relation_id = r.relation_id
        WHERE r.node_id = $1 ORDER BY r.table_name`,
      [plugin],
    );
    expect(rows.map((r) => r.table_name)).toEqual(['accounts', 'docs', 'ledger']);
    for (const r of rows) {
      expect(Number(r.counted), `${r.table_name} has versions`).toBeGreaterThan(0);
      expect(r.versions, `${r.table_name}: relation_stats.versions against count(*) of row_versions`).toBe(r.counted);
    }
    // the workload reached the store the ways it is meant to: TRUNCATE tombstones, and the three transactions of more than SPILL_KEYS keys spilled
    expect(Number(rows.find((r) => r.table_name === 'ledger')!.truncates)).toBeGreaterThan(0);
    expect(agent.events.filter((e) => e.event === 'spilling')).toHaveLength(3);
  });
});
