// A throwaway PostgreSQL cluster on this machine: initdb into a fresh temp
// dir, start it on a free port, stop it and delete every file of it.  Used
// by `pgtimewarp demo` and, through test/support/cluster.ts, by every test.
//
// Each cluster lives in its own temp dir:
//   <dir>/data        the data directory
//   <dir>/server.log  the server log (pg_ctl -l)
//   <dir>/.s.PGSQL.N  the unix socket
// It listens on 127.0.0.1:<free port> and on that socket, with
// wal_level=logical.
//
// initdb refuses to run as root, so when this process is root the server
// programs run as the `postgres` OS user (runuser) and the temp dir is
// handed to that user.
//
// A cluster that is not stopped is stopped (immediately) and deleted when
// this process exits or is killed by SIGINT, SIGTERM or SIGHUP: a throwaway
// cluster must not outlive what made it.  keep() opts out.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export class ClusterError extends Error {
  override name = 'ClusterError';
}

export interface LocalClusterOptions {
  /** Start of the temp dir's name (default "pgtimewarp-cluster-"). */
  dirPrefix?: string;
  /**
   * Output plugins the server may load, set as output_plugin_libraries
   * only when the server has that setting (some builds allow-list output
   * plugins; stock PostgreSQL has no such setting and allows every one).
   */
  outputPlugins?: string[];
  /**
   * The superuser's password.  Given: TCP connections need it (SCRAM), and
   * only the unix socket, in the private temp dir, trusts.  Absent: every
   * connection is trusted (tests).
   */
  superuserPassword?: string;
  /** postgresql.conf settings; they override the defaults. */
  settings?: Record<string, string>;
}

export interface LocalCluster {
  /** The temp dir holding everything of this cluster. */
  readonly dir: string;
  readonly dataDir: string;
  readonly logFile: string;
  /** Directory holding the server's unix socket (usable as PGHOST). */
  readonly socketDir: string;
  /** TCP host the server listens on. */
  readonly host: string;
  readonly port: number;
  readonly superuser: string;
  /** Directory of the server programs (initdb, pg_ctl, psql). */
  readonly binDir: string;
  /** The OS user the server runs as: "postgres" when we are root, else ourselves (null). */
  readonly serverOsUser: string | null;
  /** postgresql:// URL for `dbname` (default "postgres") over TCP, with the password when there is one. */
  url(dbname?: string): string;
  /** The last `lines` lines of the server log. */
  logTail(lines?: number): string;
  /**
   * pg_ctl stop in `mode` (default "fast"; "immediate" is a crash: recovery
   * on start), wait `downMs`, pg_ctl start on the same data directory and port.
   */
  restart(opts?: { mode?: 'fast' | 'immediate'; downMs?: number }): Promise<void>;
  /** Stop the server (immediate mode) and delete its files.  Idempotent. */
  stop(): Promise<void>;
  /** Leave it running when this process exits (pgtimewarp demo --keep). */
  keep(): void;
  /** The command lines that stop it and delete its files, for a person to run later. */
  removalCommands(): string[];
}

const SUPERUSER = 'postgres';
const HOST = '127.0.0.1';
const SERVER_OS_USER = 'postgres';
const LOG_TAIL_LINES = 40;

const runAsServerUser = process.getuid?.() === 0;

let cachedBinDir: string | undefined;

/**
 * Directory holding initdb, pg_ctl and psql: $PGTIMEWARP_PG_BINDIR, else
 * `pg_config --bindir`, else the newest /usr/lib/postgresql/<major>/bin
 * (Debian's layout, where pg_config may be missing: it comes with the
 * development packages).
 */
export function serverBinDir(): string {
  if (cachedBinDir !== undefined) return cachedBinDir;
  const override = process.env['PGTIMEWARP_PG_BINDIR'];
  if (override) {
    if (!existsSync(join(override, 'initdb'))) {
      throw new ClusterError(`PGTIMEWARP_PG_BINDIR=${override} does not contain initdb: point it at the PostgreSQL server's bin directory`);
    }
    cachedBinDir = override;
    return override;
  }
  const candidates: string[] = [];
  const fromPgConfig = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' });
  if (fromPgConfig.status === 0) candidates.push(fromPgConfig.stdout.trim());
  const debianRoot = '/usr/lib/postgresql';
  const majors = existsSync(debianRoot)
    ? readdirSync(debianRoot).filter((d) => /^\d+(\.\d+)?$/.test(d)).sort((a, b) => Number(b) - Number(a))
    : [];
  candidates.push(...majors.map((m) => join(debianRoot, m, 'bin')));
  const found = candidates.find((dir) => existsSync(join(dir, 'initdb')));
  if (found === undefined) {
    const looked = candidates.length > 0 ? candidates.join(', ') : `pg_config --bindir (no pg_config) and ${debianRoot}/<version>/bin`;
    throw new ClusterError(
      `cannot find the PostgreSQL server programs (initdb; looked in ${looked}): install the server ` +
        '(apt-get install postgresql-15) or set PGTIMEWARP_PG_BINDIR to its bin directory',
    );
  }
  cachedBinDir = found;
  return found;
}

const knownSettings = new Map<string, Set<string>>();

/** Whether the server in `binDir` has the setting `name` (postgres --describe-config needs no data directory and may run as root). */
export function serverHasSetting(binDir: string, name: string): boolean {
  let names = knownSettings.get(binDir);
  if (names === undefined) {
    const r = spawnSync(join(binDir, 'postgres'), ['--describe-config'], { encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 });
    names = new Set(r.status === 0 ? r.stdout.split('\n').map((line) => line.split('\t')[0] ?? '') : []);
    knownSettings.set(binDir, names);
  }
  return names.has(name);
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The command line that runs a server program, as the postgres OS user when we are root. */
function serverCommand(program: string, args: string[]): [string, string[]] {
  const path = join(serverBinDir(), program);
  return runAsServerUser ? ['runuser', ['-u', SERVER_OS_USER, '--', path, ...args]] : [path, args];
}

/** The same, as one line a person can paste into a shell. */
function serverCommandLine(program: string, args: string[]): string {
  const [command, commandArgs] = serverCommand(program, args);
  return [command, ...commandArgs].map(shellWord).join(' ');
}

export function shellWord(word: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

// initdb and pg_ctl while they run: stopped along with the clusters when
// the process ends, lest an initdb go on writing into a deleted temp dir
// or a pg_ctl start bring up a server nobody will stop.
const serverPrograms = new Set<ChildProcess>();

function runServerProgram(program: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = serverEnv()): Promise<RunResult> {
  const [command, commandArgs] = serverCommand(program, args);
  return runProgram(command, commandArgs, cwd, env, serverPrograms);
}

/** Run a program to its end, collecting its output; while it runs, it is in `running`. */
export function runProgram(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv, running?: Set<ChildProcess>): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    running?.add(child);
    child.on('exit', () => running?.delete(child));
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
 * postmaster's environment; startLocalCluster() sets those to this cluster.
 */
export function serverEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('PG')) env[key] = value;
  }
  return { ...env, ...extra };
}

export function describeFailure(what: string, result: RunResult): string {
  const status = result.signal ? `signal ${result.signal}` : `exit code ${result.code}`;
  const output = [result.stderr.trim(), result.stdout.trim()].filter(Boolean).join('\n');
  return `${what} failed (${status})${output ? `:\n${output}` : ''}`;
}

function readTail(file: string, lines: number): string {
  if (!existsSync(file)) return '(no server log)';
  const text = readFileSync(file, 'utf8').trimEnd();
  return text.split('\n').slice(-lines).join('\n');
}

/** A TCP port on 127.0.0.1 that nothing listens on right now. */
export async function findFreePort(): Promise<number> {
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

// ---------------------------------------------------------------------------
// cleanup when the process ends

// Synchronous cleanups, run newest first when the process exits or a
// signal kills it: what was made last (an agent on a cluster) goes first.
const cleanups: Array<() => void> = [];
let exitHooksInstalled = false;

function runCleanups(): void {
  // runuser passes the SIGTERM on; initdb then removes what it made
  for (const child of serverPrograms) child.kill('SIGTERM');
  while (cleanups.length > 0) {
    const cleanup = cleanups.pop()!;
    try {
      cleanup();
    } catch {
      // the process is ending: one failed cleanup must not keep the others from running
    }
  }
}

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  process.on('exit', runCleanups);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      runCleanups();
      process.removeListener(signal, onSignal);
      // Let the default action (or other handlers) run as if we were not here.
      process.kill(process.pid, signal);
    };
    process.on(signal, onSignal);
  }
}

/**
 * Run `cleanup` (synchronous) when this process exits or is killed by
 * SIGINT, SIGTERM or SIGHUP, unless the returned function is called first.
 */
export function onExitCleanup(cleanup: () => void): () => void {
  installExitHooks();
  cleanups.push(cleanup);
  return () => {
    const at = cleanups.indexOf(cleanup);
    if (at >= 0) cleanups.splice(at, 1);
  };
}

// ---------------------------------------------------------------------------
// the cluster

/** Make a cluster in a fresh temp dir and start it.  Call stop() (or keep()) when done. */
export async function startLocalCluster(opts: LocalClusterOptions = {}): Promise<LocalCluster> {
  const bin = serverBinDir();
  const dir = mkdtempSync(join(tmpdir(), opts.dirPrefix ?? 'pgtimewarp-cluster-'));
  const dataDir = join(dir, 'data');
  const logFile = join(dir, 'server.log');

  const stopSync = (): void => {
    const [command, args] = serverCommand('pg_ctl', ['-D', dataDir, '-m', 'immediate', '-w', 'stop']);
    spawnSync(command, args, { cwd: dir, env: serverEnv(), stdio: 'ignore' });
    // retried: an initdb stopped just now may still be removing its files
    rmSync(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  };
  // from here on, an exit or signal cleans up whatever exists
  const forget = onExitCleanup(stopSync);

  // Clean up after a failed start; the caller throws what this returns.
  const failure = (message: string): ClusterError => {
    const tail = readTail(logFile, LOG_TAIL_LINES);
    forget();
    stopSync();
    return new ClusterError(`${message}\n--- last lines of ${logFile} ---\n${tail}`);
  };

  // the server's OS user owns the temp dir (and the password file initdb reads)
  let owner: { uid: number; gid: number } | null = null;
  if (runAsServerUser) {
    const ids = spawnSync('id', ['-u', SERVER_OS_USER], { encoding: 'utf8' });
    const gids = spawnSync('id', ['-g', SERVER_OS_USER], { encoding: 'utf8' });
    if (ids.status !== 0 || gids.status !== 0) {
      forget();
      rmSync(dir, { recursive: true, force: true });
      throw new ClusterError(
        `running as root, but there is no "${SERVER_OS_USER}" OS user to run the server as (initdb refuses root): ` +
          `create it (useradd --system ${SERVER_OS_USER}) or run as an ordinary user`,
      );
    }
    owner = { uid: Number(ids.stdout.trim()), gid: Number(gids.stdout.trim()) };
    chownSync(dir, owner.uid, owner.gid);
  }

  const initdbArgs = ['-D', dataDir, '-U', SUPERUSER, '-E', 'UTF8', '--locale=C', '--no-sync'];
  let pwFile: string | undefined;
  if (opts.superuserPassword !== undefined) {
    // the socket sits in the temp dir, which only the server's OS user (and root) may enter
    pwFile = join(dir, 'initdb.pw');
    writeFileSync(pwFile, `${opts.superuserPassword}\n`, { mode: 0o600 });
    if (owner !== null) chownSync(pwFile, owner.uid, owner.gid);
    initdbArgs.push('--auth-local=trust', '--auth-host=scram-sha-256', `--pwfile=${pwFile}`);
  } else {
    initdbArgs.push('--auth=trust');
  }
  const initdb = await runServerProgram('initdb', initdbArgs, dir);
  if (pwFile !== undefined) rmSync(pwFile, { force: true });
  if (initdb.code !== 0) {
    const hint = runAsServerUser
      ? `\n(initdb ran as OS user ${SERVER_OS_USER}; ${dir} and every directory above it must be reachable by that user — is TMPDIR=${tmpdir()} private to root?)`
      : '';
    throw failure(describeFailure(`initdb in ${bin}`, initdb) + hint);
  }

  const settings: Record<string, string> = {
    listen_addresses: HOST,
    unix_socket_directories: dir,
    wal_level: 'logical',
    max_replication_slots: '10',
    max_wal_senders: '10',
  };
  if (opts.outputPlugins !== undefined && serverHasSetting(bin, 'output_plugin_libraries')) {
    settings['output_plugin_libraries'] = opts.outputPlugins.join(', ');
  }
  Object.assign(settings, opts.settings);
  const fixedPort = opts.settings?.['port'];
  const conf = join(dataDir, 'postgresql.conf');
  appendFileSync(
    conf,
    '\n# pgtimewarp throwaway cluster\n' +
      Object.entries(settings)
        .filter(([name]) => name !== 'port')
        .map(([name, value]) => confLine(name, value))
        .join(''),
  );

  // A probed free port can be taken before the server binds it; try a few.
  let port = 0;
  const startServer = (): Promise<RunResult> => runServerProgram(
    'pg_ctl',
    ['-D', dataDir, '-l', logFile, '-w', '-t', '60', 'start'],
    dir,
    serverEnv({ PGHOST: dir, PGPORT: String(port) }),
  );
  for (let attempt = 1; ; attempt++) {
    port = fixedPort !== undefined ? Number(fixedPort) : await findFreePort();
    appendFileSync(conf, confLine('port', String(port))); // the last line wins
    const start = await startServer();
    if (start.code === 0) break;
    const addressInUse = readTail(logFile, LOG_TAIL_LINES).includes('Address already in use');
    if (!addressInUse || attempt >= 3 || fixedPort !== undefined) {
      throw failure(describeFailure(`pg_ctl start (port ${port}, data ${dataDir})`, start));
    }
  }

  let stopped = false;
  const password = opts.superuserPassword;
  const withLog = (message: string): string => `${message}\n--- last lines of ${logFile} ---\n${readTail(logFile, LOG_TAIL_LINES)}`;

  return {
    dir,
    dataDir,
    logFile,
    socketDir: dir,
    host: HOST,
    port,
    superuser: SUPERUSER,
    binDir: bin,
    serverOsUser: runAsServerUser ? SERVER_OS_USER : null,
    url(dbname = 'postgres') {
      const who = password === undefined ? SUPERUSER : `${SUPERUSER}:${encodeURIComponent(password)}`;
      return `postgresql://${who}@${HOST}:${port}/${encodeURIComponent(dbname)}`;
    },
    logTail(lines = LOG_TAIL_LINES) {
      return readTail(logFile, lines);
    },
    async restart({ mode = 'fast', downMs = 0 } = {}) {
      if (stopped) throw new ClusterError('restart() after stop()');
      const down = await runServerProgram('pg_ctl', ['-D', dataDir, '-m', mode, '-w', '-t', '60', 'stop'], dir);
      if (down.code !== 0) throw new ClusterError(withLog(describeFailure('pg_ctl stop', down)));
      if (downMs > 0) await new Promise((resolve) => setTimeout(resolve, downMs));
      // the port is the last port line of postgresql.conf, as at the first start
      const up = await startServer();
      if (up.code !== 0) throw new ClusterError(withLog(describeFailure(`pg_ctl start (port ${port}, data ${dataDir})`, up)));
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      forget();
      const result = await runServerProgram('pg_ctl', ['-D', dataDir, '-m', 'immediate', '-w', 'stop'], dir);
      // pg_ctl exits 1 with "PID file ... does not exist" if the server already stopped.
      const failed = result.code !== 0 && !/does not exist|Is server running\?/.test(result.stderr);
      const message = failed ? withLog(describeFailure('pg_ctl stop', result)) : '';
      rmSync(dir, { recursive: true, force: true });
      if (failed) throw new ClusterError(message);
    },
    keep() {
      forget();
    },
    removalCommands() {
      return [serverCommandLine('pg_ctl', ['-D', dataDir, '-m', 'fast', 'stop']), `rm -rf ${shellWord(dir)}`];
    },
  };
}
