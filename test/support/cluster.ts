// The one helper that starts a throwaway PostgreSQL cluster, used by every
// test and by the regression runner.
//
// Each cluster lives in its own temp dir:
//   <dir>/data        the data directory
//   <dir>/server.log  the server log (pg_ctl -l)
//   <dir>/.s.PGSQL.N  the unix socket
// It listens on 127.0.0.1:<free port> and on that socket, trusts everyone,
// has wal_level=logical and allows the wal2json output plugin.
//
// initdb refuses to run as root, so when this process is root the server
// programs run as the `postgres` OS user (runuser) and the temp dir is
// handed to that user.
//
// Making, starting and stopping the cluster is the product's own
// installer/local-cluster.ts (pgtimewarp demo uses it too); this adds what
// tests want on top: tracked clients, psql, the test settings.

import { join } from 'node:path';

import pg from 'pg';

import {
  ClusterError, describeFailure, runProgram, serverBinDir, serverEnv, startLocalCluster,
} from '../../installer/local-cluster.js';

export { ClusterError };

export interface ClusterOptions {
  /** Extra postgresql.conf settings; they override the defaults (local-cluster's and TEST_SETTINGS). */
  settings?: Record<string, string>;
}

export interface Cluster {
  /** TCP host the server listens on. */
  readonly host: string;
  readonly port: number;
  /** Directory holding the server's unix socket (usable as PGHOST). */
  readonly socketDir: string;
  readonly dataDir: string;
  readonly logFile: string;
  readonly superuser: string;
  /** postgresql:// URL for `dbname` (default "postgres") over TCP. */
  url(dbname?: string): string;
  /** A connected client; stop() ends any still open. */
  connect(dbname?: string): Promise<pg.Client>;
  /**
   * Run psql -X -At -v ON_ERROR_STOP=1 -c sql over TCP; resolves to its stdout.
   * Several statements in one call run as one transaction (psql -c).
   */
  psql(sql: string, dbname?: string): Promise<string>;
  /** The last `lines` lines of the server log. */
  logTail(lines?: number): string;
  /**
   * Restart the server on the same data directory and port: pg_ctl stop in
   * `mode` (default "fast"; "immediate" is a crash: recovery on start), wait
   * `downMs` (default 0) while it is down, pg_ctl start.  Clients from
   * connect() are ended first (the server drops every connection anyway);
   * connect again afterwards.  Nothing else changes: databases, settings and
   * replication slots stay (after "immediate", as of the last checkpoint).
   */
  restart(opts?: { mode?: 'fast' | 'immediate'; downMs?: number }): Promise<void>;
  /** Stop the server (immediate mode) and delete its files. Idempotent. */
  stop(): Promise<void>;
}

// On top of local-cluster's own (wal_level=logical, 10 slots and WAL senders).
const TEST_SETTINGS: Readonly<Record<string, string>> = {
  fsync: 'off',
  full_page_writes: 'off',
  // Not synchronous_commit=off: logical decoding only sees flushed WAL, so a
  // just-committed transaction would be missing from pg_logical_slot_get_changes.
};

/**
 * Directory holding initdb, pg_ctl, psql: $PGTIMEWARP_PG_BINDIR, else
 * `pg_config --bindir`, else the newest /usr/lib/postgresql/<major>/bin.
 */
export function pgBinDir(): string {
  return serverBinDir();
}

/** Start a throwaway cluster.  Call stop() when done. */
export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const local = await startLocalCluster({
    dirPrefix: 'pgtimewarp-cluster-',
    // the tests decode with all three (test_decoding reads slots directly)
    outputPlugins: ['pgoutput', 'test_decoding', 'wal2json'],
    settings: { ...TEST_SETTINGS, ...opts.settings },
  });
  const { host, port, superuser } = local;
  const clients = new Set<pg.Client>();

  const endClients = (): Promise<unknown> => Promise.all(
    [...clients].map(async (client) => {
      client.on('error', () => {}); // the server is going away; that is the point
      await client.end().catch(() => {});
    }),
  );

  return {
    host,
    port,
    socketDir: local.socketDir,
    dataDir: local.dataDir,
    logFile: local.logFile,
    superuser,
    url: (dbname) => local.url(dbname),
    async connect(dbname = 'postgres') {
      const client = new pg.Client({ host, port, user: superuser, database: dbname });
      await client.connect();
      clients.add(client);
      client.once('end', () => clients.delete(client));
      return client;
    },
    async psql(sql, dbname = 'postgres') {
      const result = await runProgram(
        join(local.binDir, 'psql'),
        ['-X', '-At', '-v', 'ON_ERROR_STOP=1', '-h', host, '-p', String(port), '-U', superuser, '-d', dbname, '-c', sql],
        local.dir,
        serverEnv(),
      );
      if (result.code !== 0) throw new ClusterError(describeFailure(`psql -c ${JSON.stringify(sql)}`, result));
      return result.stdout;
    },
    logTail: (lines) => local.logTail(lines),
    async restart(restartOpts) {
      await endClients();
      await local.restart(restartOpts);
    },
    async stop() {
      await endClients();
      await local.stop();
    },
  };
}
