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

import { spawn, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync, appendFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import pg from 'pg';

export interface ClusterOptions {
  /** Extra postgresql.conf settings; they override the defaults below. */
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

const SUPERUSER = 'postgres';
const HOST = '127.0.0.1';
const SERVER_OS_USER = 'postgres';
const LOG_TAIL_LINES = 40;

const BASE_SETTINGS: Readonly<Record<string, string>> = {
  listen_addresses: HOST,
  wal_level: 'logical',
  max_replication_slots: '10',
  max_wal_senders: '10',
  // This build only loads the logical decoding plugins listed here.
  output_plugin_libraries: 'pgoutput, test_decoding, wal2json',
  fsync: 'off',
  full_page_writes: 'off',
  // Not synchronous_commit=off: logical decoding only sees flushed WAL, so a
  // just-committed transaction would be missing from pg_logical_slot_get_changes.
};

export class ClusterError extends Error {
  override name = 'ClusterError';
}

const runAsServerUser = process.getuid?.() === 0;

let cachedBinDir: string | undefined;

/**
 * Directory holding initdb, pg_ctl, psql: $PGTIMEWARP_PG_BINDIR, else
 * `pg_config --bindir`, else the Debian location of PostgreSQL 15.
 */
export function pgBinDir(): string {
  if (cachedBinDir !== undefined) return cachedBinDir;
  const override = process.env['PGTIMEWARP_PG_BINDIR'];
  if (override) {
    if (!existsSync(join(override, 'initdb'))) {
      throw new ClusterError(`PGTIMEWARP_PG_BINDIR=${override} does not contain initdb`);
    }
    cachedBinDir = override;
    return override;
  }
  const candidates: string[] = [];
  const fromPgConfig = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' });
  if (fromPgConfig.status === 0) candidates.push(fromPgConfig.stdout.trim());
  candidates.push('/usr/lib/postgresql/15/bin');
  const found = candidates.find((dir) => existsSync(join(dir, 'initdb')));
  if (found === undefined) {
    throw new ClusterError(
      `cannot find initdb in ${candidates.join(' or ')}; set PGTIMEWARP_PG_BINDIR to the PostgreSQL bin directory`,
    );
  }
  cachedBinDir = found;
  return found;
}

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The command line that runs a server program, as the postgres OS user when we are root. */
function serverCommand(program: string, args: string[]): [string, string[]] {
  const path = join(pgBinDir(), program);
  return runAsServerUser ? ['runuser', ['-u', SERVER_OS_USER, '--', path, ...args]] : [path, args];
}

function runServerProgram(
  program: string,
  args: string[],
  cwd: string,
  env: NodeJS.ProcessEnv = serverEnv(),
): Promise<RunResult> {
  const [command, commandArgs] = serverCommand(program, args);
  return runCommand(command, commandArgs, cwd, env);
}

function runCommand(
  command: string,
  args: string[],
  cwd: string,
  env: NodeJS.ProcessEnv,
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', (err) => reject(new ClusterError(`cannot run ${command}: ${err.message}`)));
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/**
 * The environment for server programs: ours without PG* variables that
 * could point them at another cluster.  The server's own libpq connections
 * (postgres_fdw, dblink loopbacks) default to PGHOST/PGPORT from the
 * postmaster's environment; startCluster() sets those to this cluster.
 */
function serverEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('PG')) env[key] = value;
  }
  return { ...env, ...extra };
}

function describeFailure(what: string, result: RunResult): string {
  const status = result.signal ? `signal ${result.signal}` : `exit code ${result.code}`;
  const output = [result.stderr.trim(), result.stdout.trim()].filter(Boolean).join('\n');
  return `${what} failed (${status})${output ? `:\n${output}` : ''}`;
}

function readTail(file: string, lines: number): string {
  if (!existsSync(file)) return '(no server log)';
  const text = readFileSync(file, 'utf8').trimEnd();
  return text.split('\n').slice(-lines).join('\n');
}

async function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, HOST, () => {
      const address = server.address();
      if (address === null || typeof address === 'string') {
        server.close();
        reject(new ClusterError('cannot determine a free TCP port'));
        return;
      }
      server.close(() => resolve(address.port));
    });
  });
}

function confLine(name: string, value: string): string {
  if (!/^[a-z_][a-z0-9_.]*$/i.test(name)) {
    throw new ClusterError(`invalid setting name ${JSON.stringify(name)}`);
  }
  return `${name} = '${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'\n`;
}

// Clusters still running, stopped synchronously if the process exits first.
const running = new Set<{ dir: string; dataDir: string }>();
let exitHooksInstalled = false;

function stopSync(entry: { dir: string; dataDir: string }): void {
  const [command, args] = serverCommand('pg_ctl', ['-D', entry.dataDir, '-m', 'immediate', '-w', 'stop']);
  spawnSync(command, args, { cwd: entry.dir, env: serverEnv(), stdio: 'ignore' });
  rmSync(entry.dir, { recursive: true, force: true });
  running.delete(entry);
}

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  process.on('exit', () => {
    for (const entry of [...running]) stopSync(entry);
  });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      for (const entry of [...running]) stopSync(entry);
      process.removeListener(signal, onSignal);
      // Let the default action (or other handlers) run as if we were not here.
      process.kill(process.pid, signal);
    };
    process.on(signal, onSignal);
  }
}

/** Start a throwaway cluster.  Call stop() when done. */
export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const bin = pgBinDir();
  const dir = mkdtempSync(join(tmpdir(), 'pgtimewarp-cluster-'));
  const dataDir = join(dir, 'data');
  const logFile = join(dir, 'server.log');
  const entry = { dir, dataDir };
  installExitHooks();
  running.add(entry); // from here on, an exit or signal cleans up whatever exists

  // Clean up after a failed start; the caller throws what this returns.
  const failure = (message: string): ClusterError => {
    const tail = readTail(logFile, LOG_TAIL_LINES);
    stopSync(entry);
    return new ClusterError(`${message}\n--- last lines of ${logFile} ---\n${tail}`);
  };

  if (runAsServerUser) {
    const ids = spawnSync('id', ['-u', SERVER_OS_USER], { encoding: 'utf8' });
    const gids = spawnSync('id', ['-g', SERVER_OS_USER], { encoding: 'utf8' });
    if (ids.status !== 0 || gids.status !== 0) {
      rmSync(dir, { recursive: true, force: true });
      throw new ClusterError(
        `running as root, but there is no "${SERVER_OS_USER}" OS user to run the server as (initdb refuses root)`,
      );
    }
    chownSync(dir, Number(ids.stdout.trim()), Number(gids.stdout.trim()));
  }

  const initdb = await runServerProgram(
    'initdb',
    ['-D', dataDir, '-U', SUPERUSER, '--auth=trust', '-E', 'UTF8', '--locale=C', '--no-sync'],
    dir,
  );
  if (initdb.code !== 0) {
    const hint = runAsServerUser
      ? `\n(initdb ran as OS user ${SERVER_OS_USER}; ${dir} and every directory above it must be reachable by that user — is TMPDIR=${tmpdir()} private to root?)`
      : '';
    throw failure(describeFailure(`initdb in ${bin}`, initdb) + hint);
  }

  const settings = { ...BASE_SETTINGS, unix_socket_directories: dir, ...opts.settings };
  const fixedPort = opts.settings?.['port'];
  const conf = join(dataDir, 'postgresql.conf');
  appendFileSync(
    conf,
    '\n# pgtimewarp test cluster\n' +
      Object.entries(settings)
        .filter(([name]) => name !== 'port')
        .map(([name, value]) => confLine(name, value))
        .join(''),
  );

  // A probed free port can be taken before the server binds it; try a few.
  let port = 0;
  for (let attempt = 1; ; attempt++) {
    port = fixedPort !== undefined ? Number(fixedPort) : await findFreePort();
    appendFileSync(conf, confLine('port', String(port))); // the last line wins
    const start = await runServerProgram(
      'pg_ctl',
      ['-D', dataDir, '-l', logFile, '-w', '-t', '60', 'start'],
      dir,
      serverEnv({ PGHOST: dir, PGPORT: String(port) }),
    );
    if (start.code === 0) break;
    const addressInUse = readTail(logFile, LOG_TAIL_LINES).includes('Address already in use');
    if (!addressInUse || attempt >= 3 || fixedPort !== undefined) {
      throw failure(describeFailure(`pg_ctl start (port ${port}, data ${dataDir})`, start));
    }
  }

  const clients = new Set<pg.Client>();
  let stopped = false;

  const url = (dbname = 'postgres'): string =>
    `postgresql://${SUPERUSER}@${HOST}:${port}/${encodeURIComponent(dbname)}`;

  return {
    host: HOST,
    port,
    socketDir: dir,
    dataDir,
    logFile,
    superuser: SUPERUSER,
    url,
    async connect(dbname = 'postgres') {
      const client = new pg.Client({ host: HOST, port, user: SUPERUSER, database: dbname });
      await client.connect();
      clients.add(client);
      client.once('end', () => clients.delete(client));
      return client;
    },
    async psql(sql, dbname = 'postgres') {
      const result = await runCommand(
        join(bin, 'psql'),
        ['-X', '-At', '-v', 'ON_ERROR_STOP=1', '-h', HOST, '-p', String(port), '-U', SUPERUSER, '-d', dbname, '-c', sql],
        dir,
        serverEnv(),
      );
      if (result.code !== 0) throw new ClusterError(describeFailure(`psql -c ${JSON.stringify(sql)}`, result));
      return result.stdout;
    },
    logTail(lines = LOG_TAIL_LINES) {
      return readTail(logFile, lines);
    },
    async restart({ mode = 'fast', downMs = 0 } = {}) {
      if (stopped) throw new ClusterError('restart() after stop()');
      await Promise.all(
        [...clients].map(async (client) => {
          client.on('error', () => {}); // the server is going away; that is the point
          await client.end().catch(() => {});
        }),
      );
      const down = await runServerProgram('pg_ctl', ['-D', dataDir, '-m', mode, '-w', '-t', '60', 'stop'], dir);
      if (down.code !== 0) {
        throw new ClusterError(`${describeFailure('pg_ctl stop', down)}\n--- last lines of ${logFile} ---\n${readTail(logFile, LOG_TAIL_LINES)}`);
      }
      if (downMs > 0) await new Promise((resolve) => setTimeout(resolve, downMs));
      // the port is the last port line of postgresql.conf, as at the first start
      const up = await runServerProgram(
        'pg_ctl',
        ['-D', dataDir, '-l', logFile, '-w', '-t', '60', 'start'],
        dir,
        serverEnv({ PGHOST: dir, PGPORT: String(port) }),
      );
      if (up.code !== 0) {
        throw new ClusterError(`${describeFailure(`pg_ctl start (port ${port}, data ${dataDir})`, up)}\n--- last lines of ${logFile} ---\n${readTail(logFile, LOG_TAIL_LINES)}`);
      }
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await Promise.all(
        [...clients].map(async (client) => {
          client.on('error', () => {}); // the server is going away; that is the point
          await client.end().catch(() => {});
        }),
      );
      const result = await runServerProgram('pg_ctl', ['-D', dataDir, '-m', 'immediate', '-w', 'stop'], dir);
      // pg_ctl exits 1 with "PID file ... does not exist" if the server already stopped.
      if (result.code !== 0 && !/does not exist|Is server running\?/.test(result.stderr)) {
        const tail = readTail(logFile, LOG_TAIL_LINES);
        rmSync(dir, { recursive: true, force: true });
        running.delete(entry);
        throw new ClusterError(`${describeFailure('pg_ctl stop', result)}\n--- last lines of ${logFile} ---\n${tail}`);
      }
      rmSync(dir, { recursive: true, force: true });
      running.delete(entry);
    },
  };
}
