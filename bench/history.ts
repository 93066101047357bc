// What the two as-of sections (asof.ts, asof-table.ts) share.  The
// recorded history they read: a table filled with its first rows, tracked
// by pgtimewarp from then on (those rows are its baseline), changed by a
// workload the section gives, every change stored by the real agent
// (compiled, as users run it); and with periods, a twin `<table>_p`
// system-versioned by periods and changed in the same transactions, so that
// both keep the same history.  And whether the installed extension has a
// function yet, so that a figure it cannot give is reported as such.

import type pg from 'pg';

import { startCluster, type Cluster } from '../test/support/cluster.js';
import { setupTimewarp } from '../test/support/timewarp.js';
import { AgentProcess, poll, progress, versionWithPeriods } from './support.js';
import { DURABLE_SETTINGS } from './write-path.js';

/**
 * One source transaction: each statement, its table written as `{t}`, run
 * on the table and then on its periods twin.
 */
export type Transaction = (statements: ReadonlyArray<readonly [sql: string, values?: readonly unknown[]]>) => Promise<void>;

export interface HistoryOptions {
  /** For progress lines. */
  section: string;
  nodeId: string;
  slot: string;
  table: string;
  /** Column definitions; the primary key is `id`. */
  columns: string;
  /** The first rows: a SELECT over `g`, which runs through generate_series(1, $1). */
  fill: string;
  rows: number;
  periods: boolean;
  /** postgresql.conf settings on top of DURABLE_SETTINGS. */
  settings?: Record<string, string>;
  /** The changes, written with synchronous_commit off in the source session. */
  write: (transaction: Transaction, source: pg.Client) => Promise<void>;
}

export interface History {
  cluster: Cluster;
  /** The source database, as the superuser. */
  source: pg.Client;
  /** The store database, as the superuser. */
  store: pg.Client;
  /** The tables written: the table, and its periods twin with periods. */
  tables: string[];
  relationId: number;
  /** When and where tracking began: the earliest time an as-of may ask for. */
  fromTs: Date;
  fromLsn: string;
  /** The last commit time in the store's commit-time map. */
  toTs: Date;
  /** Versions of the table in the store. */
  versions: number;
  /** Ends both connections and stops the cluster. */
  stop(): Promise<void>;
}

/**
 * Build the history on a fresh cluster and wait until the agent stored all
 * of it; the agent is stopped, the tables vacuumed and analyzed.
 */
export async function buildHistory(opts: HistoryOptions): Promise<History> {
  const { section, table } = opts;
  const cluster = await startCluster({ settings: { ...DURABLE_SETTINGS, ...opts.settings } });
  try {
    const { source, sourceUrl, storeUrl } = await setupTimewarp(cluster, { nodeId: opts.nodeId });
    const store = await cluster.connect('store');
    const tables = opts.periods ? [table, `${table}_p`] : [table];
    for (const t of tables) {
      await source.query(`CREATE TABLE ${t} (${opts.columns})`);
      await source.query(`INSERT INTO ${t} ${opts.fill}`, [opts.rows]);
    }
    if (opts.periods) await versionWithPeriods(source, `${table}_p`);

    const transaction: Transaction = async (statements) => {
      await source.query('BEGIN');
      try {
        for (const [sql, values] of statements) {
          for (const t of tables) await source.query(sql.replaceAll('{t}', t), values === undefined ? undefined : [...values]);
        }
        await source.query('COMMIT');
      } catch (err) {
        await source.query('ROLLBACK');
        throw err;
      }
    };
    const agent = new AgentProcess({ sourceUrl, storeUrl, nodeId: opts.nodeId, slot: opts.slot, plugin: 'pgoutput' });
    try {
      await agent.waitForEvent('streaming');
      await source.query(`SELECT pgtimewarp_track($1)`, [table]);
      const started = Date.now();
      await source.query('SET synchronous_commit = off');
      await opts.write(transaction, source);
      await source.query('RESET synchronous_commit');
      // the insert position, not pg_current_wal_lsn(): with synchronous_commit
      // off the WAL written so far may end before the last commit
      const end = (await source.query<{ lsn: string; ts: string }>(
        `SELECT pg_current_wal_insert_lsn()::text AS lsn, clock_timestamp()::text AS ts`)).rows[0]!;
      progress(section, `written in ${((Date.now() - started) / 1000).toFixed(1)} s; waiting for the agent to store it`);
      // and until the horizon is past the end (a heartbeat, within about a
      // second): an as-of at a time noted while writing must not wait for
      // the agent, which is stopped next, nor warn
      await poll('the agent to store the history', async () => {
        agent.check();
        const res = await store.query<{ done: boolean }>(
          `SELECT confirmed_lsn >= $2::pg_lsn AND confirmed_ts >= $3::timestamptz AS done
             FROM pgtimewarp_store.wal_checkpoints WHERE node_id = $1`,
          [opts.nodeId, end.lsn, end.ts],
        );
        return res.rows[0]?.done === true;
      }, 600_000, 100);
      progress(section, `stored ${((Date.now() - started) / 1000).toFixed(1)} s after the first change`);
    } finally {
      await agent.stop();
    }
    // the tables read, not the whole databases: a database-wide VACUUM
    // commits once per catalog table, minutes on a busy disk with fsync on
    const vacuumStarted = Date.now();
    await store.query('VACUUM ANALYZE pgtimewarp_store.row_versions, pgtimewarp_store.lsn_time_map');
    await source.query(`VACUUM ANALYZE ${[...tables, ...(opts.periods ? [`${table}_p_history`] : [])].join(', ')}`);
    progress(section, `vacuumed and analyzed in ${((Date.now() - vacuumStarted) / 1000).toFixed(1)} s`);

    const span = await store.query<{ from_ts: Date; to_ts: Date; from_lsn: string; versions: string; relation_id: number }>(
      `SELECT r.tracked_from_ts AS from_ts, (SELECT max(commit_ts) FROM pgtimewarp_store.lsn_time_map WHERE node_id = $1) AS to_ts,
              r.tracked_from_lsn::text AS from_lsn, r.relation_id,
              (SELECT count(*) FROM pgtimewarp_store.row_versions v WHERE v.relation_id = r.relation_id) AS versions
         FROM pgtimewarp_store.tracked_relations r WHERE r.node_id = $1 AND r.table_name = $2`,
      [opts.nodeId, table],
    );
    const row = span.rows[0]!;
    return {
      cluster, source, store, tables, relationId: row.relation_id, fromTs: row.from_ts, fromLsn: row.from_lsn, toTs: row.to_ts,
      versions: Number(row.versions),
      stop: async () => {
        await store.end();
        await source.end();
        await cluster.stop();
      },
    };
  } catch (err) {
    await cluster.stop();
    throw err;
  }
}

/** What a figure reads when the installed extension lacks the function it measures. */
export const NOT_IN_EXTENSION = 'not measured (extension older than 0.4)';

/** Whether the database has the function `signature`, e.g. 'pgtimewarp_asof_pks(regclass, jsonb[], timestamptz)'. */
export async function hasFunction(db: pg.Client, signature: string): Promise<boolean> {
  const res = await db.query<{ found: boolean }>(`SELECT to_regprocedure($1) IS NOT NULL AS found`, [signature]);
  return res.rows[0]?.found === true;
}

/** Run a query, timed at the client: its result and milliseconds. */
export async function timedQuery<R extends pg.QueryResultRow>(
  db: pg.Client, query: string | pg.QueryConfig, values?: unknown[],
): Promise<{ ms: number; result: pg.QueryResult<R> }> {
  const started = process.hrtime.bigint();
  const result = typeof query === 'string' ? await db.query<R>(query, values) : await db.query<R>(query);
  return { ms: Number(process.hrtime.bigint() - started) / 1e6, result };
}
