// What the benchmark sections share: progress lines, the compiled agent as
// a child process (its log, peak RSS and CPU time), CPU time of server
// processes, pg_recvlogical and pgbench runs, and the prerequisites.
// Clusters come from the project's one helper, test/support/cluster.ts.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import type pg from 'pg';

import { packageRoot } from '../installer/paths.js';
import { pgBinDir, type Cluster } from '../test/support/cluster.js';
import type { AgentStart } from '../test/support/agent-child.js';
import { envWithoutPg, procStatusKb } from '../test/support/process.js';
import { sleep } from '../test/support/wait.js';

const benchStarted = Date.now();

/** Seconds since the benchmark started, as "mm:ss". */
function elapsed(): string {
  const s = Math.floor((Date.now() - benchStarted) / 1000);
  return `${String(Math.floor(s / 60)).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
}

/** One progress line: "[mm:ss] section: message". */
export function progress(section: string, message: string): void {
  console.log(`[${elapsed()}] ${section}: ${message}`);
}

export { sleep };

/** Poll `probe` every `everyMs` until it returns something other than undefined/false. */
export async function poll<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs: number, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Seconds of CPU (user + system) a process has used, from /proc/<pid>/stat; NaN once it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // fields after "pid (comm) ": state is the 3rd field; utime and stime are the 14th and 15th
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / CLOCK_TICKS;
  } catch {
    return Number.NaN;
  }
}

const CLOCK_TICKS = (() => {
  const out = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  const ticks = Number(out.stdout?.trim());
  return Number.isFinite(ticks) && ticks > 0 ? ticks : 100;
})();

/**
 * Samples the CPU time of some processes while they run, so that the last
 * figure survives their exit (a walsender ends with its connection).
 */
export class CpuSampler {
  private readonly last = new Map<string, number>();
  private readonly pids = new Map<string, number>();
  private readonly timer: NodeJS.Timeout;

  constructor(everyMs = 200) {
    this.timer = setInterval(() => this.sample(), everyMs);
  }

  watch(name: string, pid: number): void {
    this.pids.set(name, pid);
    this.sample();
  }

  private sample(): void {
    for (const [name, pid] of this.pids) {
      const s = cpuSeconds(pid);
      if (Number.isFinite(s)) this.last.set(name, s);
    }
  }

  /** The last CPU seconds seen of each watched process. */
  stop(): Record<string, number> {
    this.sample();
    clearInterval(this.timer);
    return Object.fromEntries(this.last);
  }
}

/** One line of the agent's `--log-format json` output. */
export interface AgentLogEvent {
  time: string;
  level: string;
  event: string;
  message: string;
  lsn?: string;
  versions?: number;
  transactions?: number;
}

/**
 * `pgtimewarp agent`, compiled (dist/), as a child process: as users run
 * it, and without tsx's loader in its memory.  Its JSON log is kept.
 */
export class AgentProcess {
  readonly events: AgentLogEvent[] = [];
  private readonly lines: string[] = [];
  private readonly child: ChildProcess;
  private exitCode: number | null | undefined;
  private readonly exited: Promise<void>;
  /** Date.now() when it was spawned. */
  readonly spawnedAt = Date.now();

  constructor(opts: AgentStart) {
    this.child = spawn(
      process.execPath,
      [join(packageRoot, 'dist', 'installer', 'cli.js'), 'agent', '--source', opts.sourceUrl, '--store', opts.storeUrl,
        '--node', opts.nodeId, '--slot', opts.slot, '--plugin', opts.plugin, '--log-format', 'json'],
      { cwd: packageRoot, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    for (const out of [this.child.stdout!, this.child.stderr!]) {
      createInterface({ input: out }).on('line', (line) => {
        this.lines.push(line);
        if (this.lines.length > 200) this.lines.shift();
        if (!line.startsWith('{')) return;
        try {
          this.events.push(JSON.parse(line) as AgentLogEvent);
        } catch {
          // not one of its events
        }
      });
    }
    this.exited = new Promise((resolve) => this.child.once('exit', (code) => {
      this.exitCode = code;
      resolve();
    }));
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Throws, with the agent's last log lines, if it stopped or logged an error. */
  check(): void {
    const error = this.events.find((e) => e.level === 'error' || e.event === 'retry');
    if (this.exitCode !== undefined || error !== undefined) {
      const why = this.exitCode !== undefined ? `exited (code ${this.exitCode})` : `logged ${error!.event}: ${error!.message}`;
      throw new Error(`the agent ${why}; its last lines:\n${this.lines.slice(-15).join('\n')}`);
    }
  }

  /** The first event named `event` (waiting for it). */
  async waitForEvent(event: string, timeoutMs = 60_000): Promise<AgentLogEvent> {
    return poll(`the agent's "${event}" event`, async () => {
      this.check();
      return this.events.find((e) => e.event === event);
    }, timeoutMs);
  }

  peakRssKb(): number {
    return procStatusKb(this.pid, 'VmHWM');
  }

  cpuSeconds(): number {
    return cpuSeconds(this.pid);
  }

  /** SIGTERM (a clean stop), SIGKILL if it has not exited within 15 s. */
  async stop(): Promise<void> {
    if (this.exitCode !== undefined) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 15_000);
    await this.exited;
    clearTimeout(timer);
  }
}

/** The pid of a backend: the one connected to `database` that is not `exceptPid`, or a slot's walsender. */
export async function backendPid(client: pg.Client, database: string): Promise<number | undefined> {
  const res = await client.query<{ pid: number }>(
    `SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()
      ORDER BY backend_start LIMIT 1`,
    [database],
  );
  return res.rows[0]?.pid;
}

export async function walsenderPid(client: pg.Client, slot: string): Promise<number | undefined> {
  const res = await client.query<{ pid: number | null }>(`SELECT active_pid AS pid FROM pg_replication_slots WHERE slot_name = $1`, [slot]);
  return res.rows[0]?.pid ?? undefined;
}

/**
 * Let the connection's queries fail, rather than the benchmark, when its
 * server goes away (a backend crash restarts them all): node-postgres
 * raises an 'error' event on an idle client, fatal without a listener.
 */
export function failQueriesOnly<T extends pg.Client>(client: T): T {
  client.on('error', () => {});
  return client;
}

/** A server program of the PostgreSQL the clusters run (pg_recvlogical, pgbench, postgres). */
export function pgProgram(name: string): string {
  return join(pgBinDir(), name);
}

export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
  seconds: number;
}

/** Run a command to its end; resolves with its output and wall time (never rejects on a non-zero exit). */
export function runCommand(command: string, args: string[], env: NodeJS.ProcessEnv = process.env, onStart?: (child: ChildProcess) => void): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', (err) => reject(new Error(`cannot run ${command}: ${err.message}`)));
    child.on('close', (code) => resolve({ code, stdout, stderr, seconds: Number(process.hrtime.bigint() - started) / 1e9 }));
    onStart?.(child);
  });
}

/** Our environment without PG* variables that could point a client elsewhere. */
export const cleanEnv = envWithoutPg;

/**
 * pg_recvlogical reading `slot` to `endpos` into /dev/null: the decoding
 * ceiling.  Returns its wall time and its walsender's CPU time.
 */
export async function recvlogical(
  cluster: Cluster,
  db: string,
  slot: string,
  endpos: string,
  options: Array<[string, string]>,
): Promise<{ seconds: number; walsenderCpu: number }> {
  const watcher = await cluster.connect(db);
  const sampler = new CpuSampler();
  try {
    let found = false;
    const result = await runCommand(
      pgProgram('pg_recvlogical'),
      ['-d', cluster.url(db), '--slot', slot, '--start', '--no-loop', '-f', '/dev/null', '--endpos', endpos,
        ...options.flatMap(([k, v]) => ['-o', `${k}=${v}`])],
      cleanEnv(),
      () => {
        const look = async (): Promise<void> => {
          for (let i = 0; i < 100 && !found; i++) {
            const pid = await walsenderPid(watcher, slot).catch(() => undefined);
            if (pid !== undefined) {
              sampler.watch('walsender', pid);
              found = true;
            } else await sleep(20);
          }
        };
        void look();
      },
    );
    if (result.code !== 0) throw new Error(`pg_recvlogical failed (exit ${result.code}): ${result.stderr.trim()}`);
    return { seconds: result.seconds, walsenderCpu: sampler.stop()['walsender'] ?? Number.NaN };
  } finally {
    sampler.stop();
    await watcher.end();
  }
}

/** What one pgbench run reported. */
export interface PgbenchRun {
  /** TPS excluding connection time; NaN when pgbench printed none. */
  tps: number;
  /** Transactions it completed. */
  transactions: number;
  /** Clients that pgbench gave up on after an error (it goes on with the others and exits with 2). */
  abortedClients: number;
  /** The first error a client was aborted with, with its DETAIL line; undefined when none was. */
  abortError?: string;
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Run pgbench (`-n`, no vacuum first) with `args` (its script, clients,
 * duration, ...) against `db`; never rejects on a non-zero exit: the
 * caller decides what an aborted client means.
 */
export async function runPgbench(cluster: Cluster, db: string, args: string[]): Promise<PgbenchRun> {
  const result = await runCommand(
    pgProgram('pgbench'),
    ['-n', ...args, '-h', cluster.host, '-p', String(cluster.port), '-U', cluster.superuser, db],
    cleanEnv(),
  );
  const tps = /tps = ([\d.]+) \(without initial connection time\)/.exec(result.stdout);
  const transactions = /number of transactions actually processed: (\d+)/.exec(result.stdout);
  const aborted = result.stderr.match(/client \d+ script \d+ aborted/g) ?? [];
  const abortError = /aborted in command \d+ query \d+: (ERROR: .*)(?:\n(DETAIL: .*))?/.exec(result.stderr);
  return {
    tps: tps === null ? Number.NaN : Number(tps[1]),
    transactions: transactions === null ? 0 : Number(transactions[1]),
    abortedClients: aborted.length,
    abortError: abortError === null ? undefined : [abortError[1], abortError[2]].filter(Boolean).join(' ').replace(/\s+/g, ' '),
    code: result.code,
    stdout: result.stdout,
    stderr: result.stderr,
  };
}

/** Run pgbench with a script file; returns the TPS it reports (excluding connection time) and its transactions. */
export async function pgbench(
  cluster: Cluster,
  db: string,
  script: string,
  opts: { clients: number; threads: number; seconds: number },
): Promise<{ tps: number; transactions: number }> {
  const run = await runPgbench(cluster, db,
    ['-M', 'prepared', '-c', String(opts.clients), '-j', String(opts.threads), '-T', String(opts.seconds), '-f', script]);
  if (run.code !== 0 || !Number.isFinite(run.tps)) {
    throw new Error(`pgbench failed (exit ${run.code}):\n${run.stderr.trim()}\n${run.stdout.trim()}`);
  }
  return { tps: run.tps, transactions: run.transactions };
}

/** pgbench -i -s `scale` in `db`: its four tables, with primary keys, vacuumed. */
export async function pgbenchInit(cluster: Cluster, db: string, scale: number): Promise<void> {
  const result = await runCommand(
    pgProgram('pgbench'),
    ['-i', '-q', '-s', String(scale), '-h', cluster.host, '-p', String(cluster.port), '-U', cluster.superuser, db],
    cleanEnv(),
  );
  if (result.code !== 0) throw new Error(`pgbench -i failed (exit ${result.code}):\n${result.stderr.trim()}`);
}

/** The tables of pgbench's TPC-B with their primary key column (pgbench_history has none). */
export const TPCB_TABLES: ReadonlyArray<{ table: string; key: string }> = [
  { table: 'pgbench_accounts', key: 'aid' },
  { table: 'pgbench_branches', key: 'bid' },
  { table: 'pgbench_tellers', key: 'tid' },
];

/** The machine the figures were measured on. */
export interface Machine {
  cpu: string;
  cores: number;
  ramGiB: number;
  kernel: string;
  postgres: string;
  node: string;
}

export function machine(): Machine {
  const version = spawnSync(pgProgram('postgres'), ['--version'], { encoding: 'utf8' }).stdout?.trim() ?? 'unknown';
  return {
    cpu: cpus()[0]?.model.trim() ?? 'unknown',
    cores: cpus().length,
    ramGiB: Math.round(totalmem() / 1024 ** 3),
    kernel: release(),
    postgres: version,
    node: process.version,
  };
}

export const PERIODS_PACKAGE = 'postgresql-15-periods';
export const PERIODS_INSTALL = `apt-get install -y ${PERIODS_PACKAGE}`;

/**
 * Version `table` with periods (created here in the database): a
 * SYSTEM_TIME period on columns system_time_start and system_time_end
 * (added when missing), the history table `<table>_history`, and an index
 * on it for as-of lookups by `key` (default id), as a user of periods
 * would make.
 */
export async function versionWithPeriods(db: pg.Client, table: string, key = 'id'): Promise<void> {
  await db.query('CREATE EXTENSION IF NOT EXISTS periods CASCADE');
  await db.query(`SELECT periods.add_system_time_period($1)`, [table]);
  await db.query(`SELECT periods.add_system_versioning($1)`, [table]);
  await db.query(`CREATE INDEX ON ${table}_history (${key}, system_time_start)`);
}

/** Whether the `periods` extension is installed in the PostgreSQL the clusters run. */
export function periodsInstalled(): boolean {
  const sharedir = spawnSync(pgProgram('pg_config'), ['--sharedir'], { encoding: 'utf8' });
  const dir = sharedir.status === 0 ? sharedir.stdout.trim() : '/usr/share/postgresql/15';
  return existsSync(join(dir, 'extension', 'periods.control'));
}

/**
 * Make sure `periods` is there: when missing and we are root, install its
 * Debian package (apt-get update first if the package is unknown);
 * otherwise say how.  Returns whether it is available.
 */
export async function ensurePeriods(mayInstall: boolean): Promise<boolean> {
  if (periodsInstalled()) return true;
  const root = process.getuid?.() === 0;
  if (!mayInstall || !root) {
    console.log(`the periods extension (trigger-based system versioning, the write-path and lookup baseline) is not installed;` +
      ` its figures are left out. Install it with: ${root ? '' : 'sudo '}${PERIODS_INSTALL}`);
    return false;
  }
  progress('setup', `installing the periods extension: ${PERIODS_INSTALL}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  let result = await runCommand('apt-get', ['install', '-y', PERIODS_PACKAGE], env);
  if (result.code !== 0) {
    await runCommand('apt-get', ['update'], env);
    result = await runCommand('apt-get', ['install', '-y', PERIODS_PACKAGE], env);
  }
  if (result.code !== 0 || !periodsInstalled()) {
    console.log(`installing ${PERIODS_PACKAGE} failed; its figures are left out:\n${result.stderr.trim()}`);
    return false;
  }
  return true;
}
