// pgtimewarp demo: the whole story on a throwaway cluster, with nothing to
// set up beyond the PostgreSQL server programs.  It makes a cluster in a
// temp dir, installs pgtimewarp on it the way a DBA would (runInstall), then
// creates, tracks and changes a small table and travels back in time, in
// SQL, printed as a psql session.  Everything it makes lives in the temp dir
// (the cluster, the config file, the agent's pid and log files) and goes
// away at the end, or on Ctrl-C, unless --keep.
//
// The one thing it leaves outside the temp dir is what install always
// leaves: the extension's files in the server's directories (make install),
// and with --install-deps the packages apt installed.

import { randomBytes } from 'node:crypto';
import { join } from 'node:path';

import type { Command } from 'commander';
import pg from 'pg';

import { agentFiles, backgroundAgentState, cliCommand, logTail, stopBackgroundAgent, type AgentFiles } from './agent-service.js';
import { doctor } from './doctor-checks.js';
import { formatDoctorReport } from './doctor.js';
import { runInstall, type InstallResult } from './install.js';
import { onExitCleanup, runProgram, serverBinDir, serverEnv, shellWord, startLocalCluster, type LocalCluster } from './local-cluster.js';
import { RawJson, stringifyJson } from './output.js';
import { diff, type DiffResult } from './query.js';
import { formatDiff } from './query-format.js';

const SOURCE_DB = 'demo';
const STORE_DB = 'demo_store';
const NODE_ID = 'demo';
const SLOT = 'pgtimewarp';
const PLUGIN = 'pgoutput';
const AGENT = { nodeId: NODE_ID, slot: SLOT, plugin: PLUGIN } as const;
/** How long the agent may take to store a change before the demo gives up (it usually takes well under a second). */
const CATCH_UP_TIMEOUT_MS = 30_000;

export interface DemoOptions {
  /** Leave the cluster and the agent running, and say how to reach and remove them. */
  keep?: boolean;
  /** Passed to install: apt-get installs the build dependencies that are missing. */
  installDeps?: boolean;
  /** The psql-like walk-through; default: stdout.  Nothing under --json. */
  narrate?: (text: string) => void;
  /** Progress, one line per step; default: stdout. */
  progress?: (text: string) => void;
  /** Pause between the changes, so that they happen at distinct, readable times; default 1000 ms. */
  pauseMs?: number;
}

/** A point in time the demo remembered, as PostgreSQL printed clock_timestamp(). */
export interface Moment {
  name: string;
  at: string;
  what: string;
}

export interface DemoResult {
  command: 'demo';
  kept: boolean;
  /** The temp dir that held everything; gone unless kept. */
  dir: string;
  /** The demo database and the store, as the superuser (the cluster's password included: it is a throwaway). */
  sourceUrl: string;
  storeUrl: string;
  configFile: string;
  agent: { pid: number | null; logFile: string };
  moments: Moment[];
  /** Account 1 as of the first remembered moment, before any change (JSON text as PostgreSQL printed it). */
  accountBefore: string | null;
  accountNow: string | null;
  timeline: DiffResult;
  /** With --keep: the commands that stop and remove it all. */
  removal: string[];
}

// ---------------------------------------------------------------------------
// psql-like output

/** Type OIDs psql right-aligns: the numeric types. */
const NUMERIC_TYPES = new Set([20, 21, 23, 26, 700, 701, 790, 1700]);

/** A result as psql's aligned format prints it. */
export function renderPsqlTable(columns: Array<{ name: string; numeric: boolean }>, rows: Array<Array<string | null>>): string {
  const cells = rows.map((r) => r.map((v) => v ?? ''));
  const widths = columns.map((c, i) => Math.max(c.name.length, ...cells.map((r) => (r[i] ?? '').length)));
  const header = columns.map((c, i) => {
    const room = widths[i]! - c.name.length;
    return ` ${' '.repeat(Math.floor(room / 2))}${c.name}${' '.repeat(room - Math.floor(room / 2))} `;
  }).join('|');
  const rule = widths.map((w) => '-'.repeat(w + 2)).join('+');
  const lines = cells.map((r) => r.map((v, i) => {
    const last = i === r.length - 1;
    if (columns[i]!.numeric) return ` ${v.padStart(widths[i]!)}${last ? '' : ' '}`;
    return last ? ` ${v}` : ` ${v.padEnd(widths[i]!)} `;
  }).join('|'));
  return [header, rule, ...lines, `(${rows.length} row${rows.length === 1 ? '' : 's'})`].join('\n');
}

/** What psql prints after a statement that returns no rows: its command tag. */
function commandTag(sql: string, res: pg.QueryResult): string {
  const command = res.command?.toUpperCase() ?? '';
  if (command === 'INSERT') return `INSERT 0 ${res.rowCount ?? 0}`;
  if (command === 'UPDATE' || command === 'DELETE') return `${command} ${res.rowCount ?? 0}`;
  // node-postgres keeps only the tag's first word; DDL tags are the statement's first two
  return sql.trim().split(/\s+/).slice(0, 2).join(' ').toUpperCase();
}

/** A session on the demo database that prints each statement and its result as psql would. */
class PsqlSession {
  private constructor(private readonly client: pg.Client, private readonly print: (text: string) => void) {}

  static async open(url: string, print: (text: string) => void): Promise<PsqlSession> {
    // every value as the text PostgreSQL printed: exact, as psql shows it
    const client = new pg.Client({ connectionString: url, application_name: 'pgtimewarp demo', types: { getTypeParser: () => (value: string) => value } });
    client.on('error', () => undefined); // a lost connection surfaces through the failing query
    client.on('notice', (n) => {
      const lines = [`${n.severity ?? 'NOTICE'}:  ${n.message ?? ''}`];
      if (n.detail) lines.push(`DETAIL:  ${n.detail}`);
      if (n.hint) lines.push(`HINT:  ${n.hint}`);
      print(lines.join('\n'));
    });
    await client.connect();
    return new PsqlSession(client, print);
  }

  /** Show `sql`, run it, show its result; returns the rows (values as text). */
  async run(sql: string): Promise<Array<Array<string | null>>> {
    const [first, ...rest] = sql.split('\n');
    this.print([`${SOURCE_DB}=# ${first}`, ...rest.map((line) => `${SOURCE_DB}-# ${line}`)].join('\n'));
    const res = await this.client.query<Array<string | null>>({ text: sql, rowMode: 'array' });
    if (res.fields.length > 0) {
      this.print(renderPsqlTable(res.fields.map((f) => ({ name: f.name, numeric: NUMERIC_TYPES.has(f.dataTypeID) })), res.rows) + '\n');
    } else {
      this.print(commandTag(sql, res) + '\n');
    }
    return res.rows;
  }

  /** The first row, quietly: for what the demo needs to know but does not show. */
  async row(sql: string, params: unknown[] = []): Promise<Array<string | null>> {
    const res = await this.client.query<Array<string | null>>({ text: sql, values: params, rowMode: 'array' });
    return res.rows[0] ?? [];
  }

  async value(sql: string, params: unknown[] = []): Promise<string | null> {
    return (await this.row(sql, params))[0] ?? null;
  }

  async end(): Promise<void> {
    await this.client.end().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------
// progress

class Progress {
  private n = 0;
  private started = 0;
  private open = false;

  constructor(private readonly total: number, private readonly write: (text: string) => void) {}

  /** A step that prints nothing else while it runs: its outcome ends the same line. */
  begin(title: string): void {
    this.started = Date.now();
    this.write(`[${++this.n}/${this.total}] ${title} ... `);
    this.open = true;
  }

  end(outcome: string): void {
    this.write(`${outcome} (${((Date.now() - this.started) / 1000).toFixed(1)} s)\n`);
    this.open = false;
  }

  /** A step whose walk-through follows. */
  heading(title: string): void {
    this.write(`\n[${++this.n}/${this.total}] ${title}\n\n`);
  }

  /** A failure ends an open line, so the error starts on its own. */
  fail(): void {
    if (this.open) this.write('failed\n');
    this.open = false;
  }
}

// ---------------------------------------------------------------------------
// the demo

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The server's version, as `postgres --version` says it ("15.20"). */
async function serverVersion(binDir: string): Promise<string> {
  const r = await runProgram(join(binDir, 'postgres'), ['--version'], '/', serverEnv());
  return /(\d+(\.\d+)*)/.exec(r.stdout)?.[1] ?? 'unknown version';
}

/**
 * Wait until the store holds everything the source wrote up to `lsn`: the
 * agent's checkpoint (through pgtimewarp_status()) has reached it.
 */
async function waitForHistory(session: PsqlSession, lsn: string, files: AgentFiles): Promise<{ lsn: string; ts: string }> {
  const deadline = Date.now() + CATCH_UP_TIMEOUT_MS;
  for (;;) {
    // one checkpoint per node: every row of pgtimewarp_status() carries the same
    const [confirmed = null, ts = null, reached = null] = await session.row(
      `SELECT confirmed_lsn::text, confirmed_ts::text, confirmed_lsn >= $1::pg_lsn FROM pgtimewarp_status() LIMIT 1`, [lsn],
    );
    if (confirmed !== null && ts !== null && reached === 't') return { lsn: confirmed, ts };
    if (Date.now() > deadline) {
      throw new Error(
        `the agent has not stored the changes up to LSN ${lsn} after ${CATCH_UP_TIMEOUT_MS / 1000} s ` +
          `(history is complete up to ${confirmed ?? 'nothing yet'}); its log ${files.logFile} ends with:\n${logTail(files.logFile, 10)}`,
      );
    }
    await sleep(100);
  }
}

/** The install steps that did something, one line each. */
function installSummary(result: InstallResult): string[] {
  return result.steps.filter((s) => s.status === 'changed').map((s) => `      ${s.title}: ${s.detail}`);
}

/**
 * Run the demo; see the module comment.  Throws when a step fails, after
 * cleaning up (unless keep).
 */
export async function runDemo(opts: DemoOptions = {}): Promise<DemoResult> {
  const print = opts.narrate ?? ((text: string) => console.log(text));
  const writeProgress = opts.progress ?? ((text: string) => void process.stdout.write(text));
  const progress = new Progress(7, writeProgress);
  const pauseMs = opts.pauseMs ?? 1000;
  const keep = opts.keep ?? false;

  let cluster: LocalCluster | undefined;
  let files: AgentFiles | undefined;
  let session: PsqlSession | undefined;
  let forgetAgent: (() => void) | undefined;
  let succeeded = false;
  let installed: InstallResult | undefined;
  /** The commands that stop and remove what runs, for a person to run later. */
  const removalCommands = (): string[] => {
    const agent = files === undefined ? null : backgroundAgentState(files.pidFile, AGENT);
    return [...(agent !== null && agent.state !== 'stopped' ? [`kill ${agent.pid}`] : []), ...(cluster?.removalCommands() ?? [])];
  };
  // Ctrl-C (or SIGTERM) mid-demo: the exit hooks of local-cluster.ts stop
  // the agent (registered last, so it goes first) and the cluster, delete
  // the temp dir, and this says so.  Registered first: it runs last.
  const forgetNotice = onExitCleanup(() => {
    if (cluster !== undefined) process.stderr.write(`\npgtimewarp demo: stopped part-way: its agent and cluster were stopped and ${cluster.dir} removed\n`);
  });

  try {
    // 1. the cluster ---------------------------------------------------------
    progress.begin('Start a throwaway PostgreSQL cluster');
    const binDir = serverBinDir();
    const version = await serverVersion(binDir);
    cluster = await startLocalCluster({
      dirPrefix: 'pgtimewarp-demo-',
      outputPlugins: [PLUGIN],
      // the cluster listens on 127.0.0.1 while it runs, perhaps for long with --keep: not for everyone to use
      superuserPassword: randomBytes(12).toString('hex'),
    });
    const c = cluster;
    const configFile = join(c.dir, 'pgtimewarp', 'config.json');
    // install's config and the agent's pid and log files (next to the config): all in the temp dir
    const env: NodeJS.ProcessEnv = { ...serverEnv(), PGTIMEWARP_CONFIG: configFile };
    files = agentFiles(NODE_ID, configFile, env);
    const agentFilesHere = files;
    forgetAgent = onExitCleanup(() => {
      const state = backgroundAgentState(agentFilesHere.pidFile, AGENT);
      if (state.state !== 'stopped') process.kill(state.pid, 'SIGKILL'); // its history goes with the cluster: no need to stop it gently
    });
    progress.end(`PostgreSQL ${version} (${binDir}), port ${c.port}, in ${c.dir}`);

    // 2. install ---------------------------------------------------------------
    progress.begin(`Install pgtimewarp: source database "${SOURCE_DB}", store database "${STORE_DB}", agent in the background`);
    const admin = new pg.Client({ connectionString: c.url() });
    await admin.connect();
    try {
      await admin.query(`CREATE DATABASE ${SOURCE_DB}`);
    } finally {
      await admin.end();
    }
    installed = await runInstall({
      source: c.url(SOURCE_DB), store: c.url(STORE_DB), node: NODE_ID, slot: SLOT, plugin: PLUGIN, agent: 'background',
      installDeps: opts.installDeps ?? false, renderer: 'silent', env,
    });
    progress.end(`agent pid ${installed.agent.pid ?? '?'}`);
    for (const line of installSummary(installed)) writeProgress(`${line}\n`);

    // 3. a table, tracked --------------------------------------------------------
    progress.heading(`Create a table and track it (psql ${SOURCE_DB})`);
    session = await PsqlSession.open(c.url(SOURCE_DB), print);
    const s = session;
    await s.run(
      'CREATE TABLE accounts (\n' +
        '  id int PRIMARY KEY,\n' +
        '  owner text NOT NULL,\n' +
        '  balance numeric(12,2) NOT NULL,\n' +
        '  updated_at timestamptz NOT NULL DEFAULT now()\n' +
        ');',
    );
    await s.run(`INSERT INTO accounts (id, owner, balance) VALUES (1, 'alice', 100.00), (2, 'bob', 250.00), (3, 'carol', 75.50);`);
    print('-- from here on, every committed change to accounts is kept in the store');
    await s.run(`SELECT pgtimewarp_track('accounts');`);

    // 4. changes over a few seconds ---------------------------------------------
    progress.heading('Change it over a few seconds, remembering the time between changes');
    const moments: Moment[] = [];
    const remember = async (name: string, what: string): Promise<string> => {
      const at = (await s.value(`SELECT clock_timestamp()::text`))!;
      moments.push({ name, at, what });
      print(`-- ${name} = '${at}'   (${what})\n`);
      return at;
    };
    const t0 = await remember('t0', 'before any change');
    await sleep(pauseMs);
    await s.run(`UPDATE accounts SET balance = balance - 30.00, updated_at = now() WHERE id = 1;`);
    const t1 = await remember('t1', 'after alice paid 30.00');
    await sleep(pauseMs);
    await s.run(`UPDATE accounts SET balance = balance + 120.00, updated_at = now() WHERE id = 1;`);
    const t2 = await remember('t2', 'after alice received 120.00');
    await sleep(pauseMs);
    await s.run(`DELETE FROM accounts WHERE id = 3;`);
    await s.run(`INSERT INTO accounts (id, owner, balance) VALUES (4, 'dave', 20.00);`);
    await s.run(`UPDATE accounts SET owner = 'robert', updated_at = now() WHERE id = 2;`);

    // 5. the agent catches up ------------------------------------------------------
    // t3 is where the store's history ends once it holds every change: the
    // last change's commit time (or a later heartbeat's).  A clock reading
    // taken now would lie past that end, and a question about a time the
    // agent has not confirmed yet gets a warning saying so.
    progress.begin('Wait for the agent to store the changes');
    const end = (await s.value(`SELECT pg_current_wal_insert_lsn()::text`))!;
    const horizon = await waitForHistory(s, end, files);
    const t3 = horizon.ts;
    moments.push({ name: 't3', at: t3, what: 'history is complete up to here: every change is in' });
    progress.end(`history is complete up to LSN ${horizon.lsn}, at ${t3}`);

    // 6. time travel ------------------------------------------------------------------
    progress.heading('Travel back in time, in SQL');
    print(`-- t3 = '${t3}'   (history is complete up to here: every change is in)\n`);
    print('-- the table now:');
    await s.run(`SELECT * FROM accounts ORDER BY id;`);
    print(`-- account 1 as it was at t0, before any change, and at t1, after the first one:`);
    const [[accountBefore = null] = []] = await s.run(`SELECT pgtimewarp_asof_pk('accounts', '{"id": 1}', '${t0}');`);
    await s.run(`SELECT pgtimewarp_asof_pk('accounts', '{"id": 1}', '${t1}');`);
    print('-- and at t3, after every change, for contrast:');
    const [[accountNow = null] = []] = await s.run(`SELECT pgtimewarp_asof_pk('accounts', '{"id": 1}', '${t3}');`);
    print(`-- a deleted row, typed as the table's row: carol's account at t2, before it was closed`);
    await s.run(`SELECT * FROM pgtimewarp_asof_row(NULL::accounts, '{"id": 3}', '${t2}');`);
    print('-- every version of account 1 from t0 to t3, with the columns each changed:');
    await s.run(`SELECT valid_from_ts, op, changed_columns, row_data\n  FROM pgtimewarp_diff_pk('accounts', '{"id": 1}', '${t0}', '${t3}');`);

    print('-- the same history as the CLI shows it:');
    print(`$ pgtimewarp diff accounts --key '{"id": 1}' --from '${t0}' --to '${t3}'`);
    const timeline = await diff({ source: c.url(SOURCE_DB), env, table: 'accounts', key: '{"id": 1}', from: t0, to: t3 });
    print(formatDiff(timeline, false) + '\n');

    // a quick health check: the problems `pgtimewarp doctor` finds, if any
    print('$ pgtimewarp doctor');
    const report = await doctor({ env });
    const problems = formatDoctorReport(report).split('\n').slice(1).filter((l) => l !== '' && !l.startsWith('[ ok ]'));
    const ok = report.findings.filter((f) => f.status === 'ok').length;
    print(`${problems.join('\n')}; ${ok} of ${report.findings.length} checks ok\n`);

    // 7. clean up, or keep -------------------------------------------------------------
    const removal = removalCommands();
    const result: DemoResult = {
      command: 'demo', kept: keep, dir: c.dir, sourceUrl: c.url(SOURCE_DB), storeUrl: c.url(STORE_DB), configFile,
      agent: { pid: installed.agent.pid ?? null, logFile: files.logFile }, moments, accountBefore, accountNow, timeline,
      removal: keep ? removal : [],
    };
    succeeded = true;
    if (keep) {
      // the CLI as this process runs it (there may be no `pgtimewarp` on the PATH), with the demo's config file
      const cli = `PGTIMEWARP_CONFIG=${shellWord(configFile)} ${cliCommand().map(shellWord).join(' ')}`;
      progress.heading('Keep it running (--keep)');
      print([
        `connect:   psql '${c.url(SOURCE_DB)}'`,
        `           (the store: psql '${c.url(STORE_DB)}')`,
        `the CLI:   ${cli} status`,
        `           ${cli} diff accounts --key '{"id": 2}'`,
        `agent log: ${files.logFile} (pid ${installed.agent.pid ?? '?'})`,
        `remove it: ${removal.join('\n           ')}`,
      ].join('\n'));
    }
    return result;
  } catch (err) {
    progress.fail();
    if (err instanceof Error && cluster !== undefined) {
      err.message += keep
        ? `\n(--keep: what the demo made is left in ${cluster.dir}, its server log is ${cluster.logFile}; remove it with: ${removalCommands().join(' && ')})`
        : `\n(the demo's cluster was stopped and ${cluster.dir} removed${installed !== undefined ? '; run the demo with --keep to look at what was there' : ''})`;
    }
    throw err;
  } finally {
    await session?.end();
    if (keep && cluster !== undefined) {
      cluster.keep();
      forgetAgent?.();
    } else {
      if (succeeded) progress.begin('Clean up: stop the agent and the cluster, remove the temp dir');
      if (files !== undefined) await stopBackgroundAgent(files, AGENT);
      forgetAgent?.();
      await cluster?.stop();
      if (succeeded) progress.end(`removed ${cluster?.dir}`);
    }
    forgetNotice();
  }
}

// ---------------------------------------------------------------------------
// the command

function formatJson(result: DemoResult): string {
  return stringifyJson({
    ok: true, ...result,
    accountBefore: result.accountBefore === null ? null : new RawJson(result.accountBefore),
    accountNow: result.accountNow === null ? null : new RawJson(result.accountNow),
    timeline: new RawJson(formatDiff(result.timeline, true)),
  });
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('the whole story on a throwaway cluster: install, track a table, change it, travel back in time; then clean up')
    .option('--keep', 'leave the cluster and the agent running, and print how to connect and how to remove them')
    .option('--install-deps', 'install missing build dependencies with apt-get (postgresql-server-dev-<major>, make, gcc), as install does')
    .option('--json', 'print only a JSON summary (the URLs, the remembered times, account 1 before and now, its timeline) on stdout; progress goes to stderr')
    .addHelpText('after', `
What it does, in some 15 seconds (after the build):
  1. initdb a throwaway cluster in a fresh temp dir (as the postgres OS user
     when run as root): wal_level=logical, 127.0.0.1 and a unix socket in
     the temp dir, a free port, a random superuser password;
  2. pgtimewarp install on it: source database "${SOURCE_DB}", store database
     "${STORE_DB}", a background agent, plugin ${PLUGIN}; its config file and
     the agent's pid and log files go into the temp dir, never /etc;
  3. create a small table "accounts" and track it;
  4. change it over a few seconds, remembering the time between changes;
  5. wait until the agent has stored every change;
  6. show, in SQL as psql would, rows as they were at the remembered times
     (pgtimewarp_asof_pk, pgtimewarp_asof_row) and how a row changed
     (pgtimewarp_diff_pk), then the CLI's diff timeline and doctor's verdict;
  7. stop the agent and the cluster and delete the temp dir (also on Ctrl-C).

What it leaves behind: the extension's files in the PostgreSQL server's
directories (installed with make install, as install does), and with
--install-deps the packages apt installed.  With --keep, also the cluster
and the agent, until you run the commands it prints.

Needs: the PostgreSQL server programs (pg_config --bindir, else the newest
/usr/lib/postgresql/<version>/bin, or $PGTIMEWARP_PG_BINDIR); to build the
extension, its server headers, make and a C compiler (--install-deps brings
them); root or write access to the server's extension directories.

From a fresh clone: npm run demo (npm ci and the build first, then this
with --install-deps; add options after --, e.g. npm run demo -- --keep).`)
    .action(async (flags: { keep?: boolean; installDeps?: boolean; json?: boolean }) => {
      if (!flags.json) {
        await runDemo({ keep: flags.keep, installDeps: flags.installDeps });
        return;
      }
      // stdout is the JSON (a failure's comes from the handler in cli.ts); progress goes to stderr
      const result = await runDemo({
        keep: flags.keep, installDeps: flags.installDeps, narrate: () => undefined, progress: (text) => void process.stderr.write(text),
      });
      console.log(formatJson(result));
    });
}
