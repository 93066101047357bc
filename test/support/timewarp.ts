// pgtimewarp set up on one throwaway cluster, as the installer sets it up on
// a real host: a source database with the extension, a store database with
// the store schema, and the extension's foreign server pointed at the store.
// No slot and no agent: tests that need them add them.

import type pg from 'pg';

import { runAgent, type AgentEvent, type AgentOptions } from '../../agent/run.js';
import { migrateStore } from '../../installer/store.js';
import type { Cluster } from './cluster.js';
import { waitFor } from './wait.js';

export interface TimewarpOptions {
  /** Database whose tables are tracked; created here. Default "source". */
  sourceDb?: string;
  /** Database holding the store schema; created here. Default "store". */
  storeDb?: string;
  /** Node id passed to pgtimewarp_configure(). Default "e2e". */
  nodeId?: string;
  /**
   * The cluster that holds the store database, as on a real host with the
   * store elsewhere: the source's WAL then carries none of the store's
   * writes.  Default: the source's cluster.
   */
  storeCluster?: Cluster;
}

export interface Timewarp {
  /** Connected to the source database as the superuser; the caller ends it. */
  source: pg.Client;
  sourceUrl: string;
  storeUrl: string;
  nodeId: string;
}

/** Quote an identifier for SQL (the database names are ours, but be exact). */
function ident(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** Quote a string literal for SQL. */
function literal(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

/**
 * Create the source database on `cluster` and the store database on
 * opts.storeCluster (default the same cluster), migrate the store,
 * and install and configure the extension in the source.  The foreign
 * server reaches the store over the cluster's unix socket; the user mapping
 * is the superuser's, which owns the extension.
 */
export async function setupTimewarp(cluster: Cluster, opts: TimewarpOptions = {}): Promise<Timewarp> {
  const sourceDb = opts.sourceDb ?? 'source';
  const storeDb = opts.storeDb ?? 'store';
  const nodeId = opts.nodeId ?? 'e2e';
  const storeCluster = opts.storeCluster ?? cluster;

  // CREATE DATABASE cannot run inside a transaction block: one psql call each.
  await cluster.psql(`CREATE DATABASE ${ident(sourceDb)}`);
  await storeCluster.psql(`CREATE DATABASE ${ident(storeDb)}`);
  const sourceUrl = cluster.url(sourceDb);
  const storeUrl = storeCluster.url(storeDb);
  await migrateStore(storeUrl);

  const source = await cluster.connect(sourceDb);
  try {
    await source.query('CREATE EXTENSION pgtimewarp CASCADE');
    // ALTER SERVER takes no parameters: the options are literals.
    await source.query(
      `ALTER SERVER pgtimewarp_store OPTIONS (ADD host ${literal(storeCluster.socketDir)}, ` +
        `ADD port ${literal(String(storeCluster.port))}, ADD dbname ${literal(storeDb)})`,
    );
    await source.query('CREATE USER MAPPING FOR CURRENT_USER SERVER pgtimewarp_store');
    await source.query('SELECT pgtimewarp_configure($1)', [nodeId]);
  } catch (err) {
    await source.end();
    throw err;
  }
  return { source, sourceUrl, storeUrl, nodeId };
}

/** An agent run in this process by startAgent(): what it logged, and how to stop it. */
export interface InProcessAgent {
  events: AgentEvent[];
  /** Stops it and waits until it has (a failure it ended with is not thrown). */
  stop(): Promise<void>;
}

/**
 * runAgent() on `timewarp`'s databases with slot agent_<plugin>, quick to
 * retry, returning once its slot exists (so that tables tracked after are
 * tracked from a point the slot covers).
 */
export async function startAgent(
  timewarp: Timewarp, plugin: 'pgoutput' | 'wal2json', options: Partial<AgentOptions> = {},
): Promise<InProcessAgent> {
  const events: AgentEvent[] = [];
  const abort = new AbortController();
  const slot = `agent_${plugin}`;
  const running = runAgent({
    sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId,
    slot, plugin, signal: abort.signal, log: (e) => events.push(e),
    backoff: { initialMs: 100, maxMs: 1000 }, ...options,
  });
  await waitFor('the agent\'s slot', async () =>
    (await timewarp.source.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $1`, [slot])).rowCount === 1, 30_000);
  return {
    events,
    stop: async () => {
      abort.abort();
      await running.catch(() => undefined);
    },
  };
}
