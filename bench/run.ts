// npm run bench: what pgtimewarp costs and how fast it is, each figure
// against a baseline measured in the same run on the same machine.
// Writes bench/results/latest.json and latest.md (--quick: quick.*) and
// prints the tables.  Benchmarks report; they never fail on time.

import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { extensionDir, packageRoot } from '../installer/paths.js';
import { asofTable, asofTableMarkdown, type AsofTableResult } from './asof-table.js';
import { asof, asofMarkdown, type AsofResult } from './asof.js';
import { ingestSizes, writeBacklog, type Backlog } from './backlog.js';
import { catchupMarkdown, catchupResult, drainWithAgent, type AgentDrain, type CatchupResult } from './catchup.js';
import { freshness, freshnessMarkdown, type FreshnessResult } from './freshness.js';
import { drainWithRecvlogical, ingestMarkdown, ingestResult, type IngestResult, type RecvDrain } from './ingest.js';
import { live, liveMarkdown, type LiveResult } from './live.js';
import { measurePeriods, measureStore, storageMarkdown, type StorageResult, type StoreSize } from './storage.js';
import { ensurePeriods, machine, progress, type Machine } from './support.js';
import { DURABLE_SETTINGS, writePath, writePathMarkdown, type WritePathResult } from './write-path.js';

const SECTIONS = ['ingest', 'write-path', 'asof', 'whole-table', 'catchup', 'storage', 'live', 'freshness'] as const;
type Section = (typeof SECTIONS)[number];
const PLUGINS = ['pgoutput', 'wal2json'] as const;
type Plugin = (typeof PLUGINS)[number];

const HELP = `npm run bench [-- options]

Benchmarks pgtimewarp on throwaway clusters (test/support/cluster.ts) and
writes bench/results/latest.json and bench/results/latest.md (with --quick:
quick.json and quick.md), printing the tables at the end.

Sections (all by default):
  ingest      the agent's applied row changes/s against pg_recvlogical (the
              decoding ceiling) on a 1,000,000-change backlog, per plugin
  write-path  pgbench TPS: no versioning, pgtimewarp (agent running),
              periods (trigger-based system versioning)
  asof        p50/p95/p99 of pgtimewarp_asof_pk against a direct store
              lookup and periods' as-of query; 10,000 lookups in one query
              (one pgtimewarp_asof_pk per key, and pgtimewarp_asof_pks);
              pgtimewarp_diff_pk of a key with 10 versions against the
              same reads in the store
  whole-table rows/s of every row as of an early, a middle and a late
              time (pgtimewarp_asof_table, by time and by LSN) against
              periods' as-of function, 100,000 rows of 10 versions each
  catchup     time from the backlog to zero lag; the agent's peak RSS
  storage     bytes per row version: store against periods' history table
  live        pgbench's built-in TPC-B (-b tpcb-like after -i -s 10, 8
              clients, 60 s), a fresh cluster each: no versioning,
              pgtimewarp (accounts, branches, tellers tracked, agent
              running), periods; TPS against none, and for pgtimewarp the
              lag commit to stored (p50/p95/p99), the share of the run's
              transactions stored when pgbench ended, the time to zero lag
              after it (at most 60 s), the agent's CPU and peak RSS
  freshness   commit to the first as-of at its time answered without the
              horizon warning, p50/p99 idle (50 samples) and under TPC-B
              with 4 clients; as-of now() 1 s after the last commit: how
              often it warned, how long it took

Options:
  --quick            reduced sizes, one repetition: a smoke run of a few minutes
                     (live: scale 1, 15 s; freshness: 10 samples each;
                     whole-table: 10,000 rows)
  --sections LIST    comma-separated sections to run (${SECTIONS.join(',')})
  --plugins LIST     plugins for ingest and catch-up (default pgoutput,wal2json)
  --reps N           repetitions (default 3; with --quick 1)
  --agent-reps N     agent drains of the 1,000,000-change backlog per plugin
                     (default 1: at the agent's present speed one takes
                     minutes; pg_recvlogical reads it --reps times)
  --scale N          divide the ingest sizes by N (--quick: 20)
  --seed N           seed of the random lookups (default: random)
  --no-install       do not apt-get install postgresql-15-periods when missing
  -h, --help         this text

Needs the test setup (bash .ci/run, or npm ci with PostgreSQL 15, its server
headers and wal2json installed).  Builds and installs the extension
(make -C extension install) and compiles the agent (dist/) first.  The
periods extension comes from the Debian package postgresql-15-periods: run
as root, the benchmark installs it when missing; otherwise it says how.`;

interface Options {
  quick: boolean;
  sections: Set<Section>;
  plugins: Plugin[];
  reps: number;
  agentReps: number;
  scale: number;
  seed: number;
  install: boolean;
}

function parseOptions(): Options | null {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      sections: { type: 'string' },
      plugins: { type: 'string' },
      reps: { type: 'string' },
      'agent-reps': { type: 'string' },
      scale: { type: 'string' },
      seed: { type: 'string' },
      'no-install': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    allowPositionals: false,
  });
  if (values.help) {
    console.log(HELP);
    return null;
  }
  const problems: string[] = [];
  const list = <T extends string>(value: string | undefined, allowed: readonly T[], what: string): T[] => {
    if (value === undefined) return [...allowed];
    const items = value.split(',').map((s) => s.trim()).filter(Boolean);
    for (const item of items) if (!allowed.includes(item as T)) problems.push(`unknown ${what} "${item}" (one of ${allowed.join(', ')})`);
    return items as T[];
  };
  const sections = new Set(list(values.sections, SECTIONS, 'section'));
  const plugins = list(values.plugins, PLUGINS, 'plugin');
  const reps = values.reps === undefined ? (values.quick ? 1 : 3) : Number(values.reps);
  if (!Number.isInteger(reps) || reps < 1) problems.push(`--reps must be a positive integer, not ${values.reps}`);
  const agentReps = values['agent-reps'] === undefined ? 1 : Number(values['agent-reps']);
  if (!Number.isInteger(agentReps) || agentReps < 1) problems.push(`--agent-reps must be a positive integer, not ${values['agent-reps']}`);
  const scale = values.scale === undefined ? (values.quick ? 20 : 1) : Number(values.scale);
  if (!(scale >= 1)) problems.push(`--scale must be a number >= 1, not ${values.scale}`);
  const seed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed);
  if (!Number.isSafeInteger(seed)) problems.push(`--seed must be an integer, not ${values.seed}`);
  if (problems.length > 0) throw new Error(problems.join('; '));
  return { quick: values.quick ?? false, sections, plugins, reps, agentReps: Math.min(agentReps, reps), scale, seed, install: !values['no-install'] };
}

/** Run a program with its output shown; throws when it fails. */
function step(command: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: packageRoot, stdio: ['ignore', 'ignore', 'inherit'] });
    child.on('error', (err) => reject(new Error(`cannot run ${command}: ${err.message}`)));
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${command} ${args.join(' ')} failed (exit ${code})`))));
  });
}

interface Results {
  startedAt: string;
  finishedAt?: string;
  durationSeconds?: number;
  quick: boolean;
  repetitions: number;
  machine: Machine;
  settings: Record<string, string>;
  ingest?: IngestResult;
  writePath?: WritePathResult;
  asof?: AsofResult;
  wholeTable?: AsofTableResult;
  catchup?: CatchupResult;
  storage?: StorageResult;
  live?: LiveResult;
  freshness?: FreshnessResult;
  raw: { agentDrains: AgentDrain[]; recvlogicalDrains: RecvDrain[] };
  /** Sections that failed, with why: the others are still reported. */
  errors: Partial<Record<Section, string>>;
}

/** Run a section; a failure is reported with the results, and the other sections go on. */
async function guarded(results: Results, sections: Section[], work: () => Promise<void>): Promise<void> {
  try {
    await work();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    for (const s of sections) results.errors[s] = message;
    progress(sections.join(', '), `failed: ${message}`);
  }
}

function markdown(r: Results): string {
  const m = r.machine;
  const parts = [
    `Measured ${r.startedAt.slice(0, 16).replace('T', ' ')} UTC${r.quick ? ' (--quick: reduced sizes, not the published figures)' : ''} ` +
      `on ${m.cores} × ${m.cpu}, ${m.ramGiB} GiB RAM, ${m.postgres}, Node ${m.node}, Linux ${m.kernel}; ` +
      `every cluster with ${Object.entries(r.settings).map(([k, v]) => `${k}=${v}`).join(', ')}; ` +
      `the store on the same cluster as the source. ${r.durationSeconds === undefined ? '' : `The whole run took ${Math.round(r.durationSeconds / 60)} min.`}`,
  ];
  const section = (title: string, body: string | undefined): void => {
    if (body !== undefined) parts.push(`#### ${title}\n\n${body}`);
  };
  section('1. Ingest', r.ingest && ingestMarkdown(r.ingest));
  section('2. Write-path cost', r.writePath && writePathMarkdown(r.writePath));
  section('3. As-of latency', r.asof && asofMarkdown(r.asof));
  section('4. Catch-up', r.catchup && catchupMarkdown(r.catchup));
  section('5. Storage', r.storage && storageMarkdown(r.storage));
  section('6. Live load (TPC-B)', r.live && liveMarkdown(r.live));
  section('7. Freshness', r.freshness && freshnessMarkdown(r.freshness));
  section('8. Whole table as of a time', r.wholeTable && asofTableMarkdown(r.wholeTable));
  for (const [name, error] of Object.entries(r.errors)) parts.push(`**${name} failed:** ${error}`);
  return parts.join('\n\n') + '\n';
}

async function main(): Promise<number> {
  const opts = parseOptions();
  if (opts === null) return 0;
  const started = Date.now();

  progress('setup', 'building and installing the extension, compiling the agent');
  await step('make', ['-C', extensionDir]);
  await step('make', ['-C', extensionDir, 'install']);
  await step(process.execPath, [join(packageRoot, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json']);
  const needsPeriods = ['write-path', 'asof', 'whole-table', 'storage', 'live'].some((x) => opts.sections.has(x as Section));
  const periods = needsPeriods ? await ensurePeriods(opts.install) : false;

  const results: Results = {
    startedAt: new Date(started).toISOString(), quick: opts.quick, repetitions: opts.reps, machine: machine(),
    settings: { ...DURABLE_SETTINGS }, raw: { agentDrains: [], recvlogicalDrains: [] }, errors: {},
  };

  const s = opts.sections;
  if (s.has('ingest') || s.has('catchup') || s.has('storage')) await guarded(results, ['ingest', 'catchup', 'storage'].filter((x) => s.has(x as Section)) as Section[], async () => {
    const sizes = ingestSizes(opts.scale);
    // pg_stat_statements: where the store's time goes during a drain
    const backlog: Backlog = await writeBacklog(sizes, { ...DURABLE_SETTINGS, shared_preload_libraries: 'pg_stat_statements' });
    try {
      const plugins = s.has('ingest') || s.has('catchup') ? opts.plugins : ['pgoutput' as const];
      const rounds = s.has('ingest') ? opts.reps : s.has('catchup') ? opts.agentReps : 1;
      let store: StoreSize | undefined;
      for (let rep = 0; rep < rounds; rep++) {
        for (const plugin of plugins) {
          // the store after the first whole drain holds the workload's history
          if (rep < opts.agentReps) {
            results.raw.agentDrains.push(await drainWithAgent(backlog, plugin, rep, store === undefined ? async (client) => {
              store = await measureStore(client);
            } : undefined));
          }
          if (s.has('ingest')) results.raw.recvlogicalDrains.push(await drainWithRecvlogical(backlog, plugin, rep));
        }
      }
      if (s.has('ingest')) results.ingest = ingestResult(backlog, results.raw.agentDrains, results.raw.recvlogicalDrains);
      if (s.has('catchup')) results.catchup = catchupResult(backlog.changes, results.raw.agentDrains);
      if (s.has('storage')) {
        results.storage = { changes: backlog.changes, store: store!, periods: periods ? await measurePeriods(backlog) : null };
      }
    } finally {
      await backlog.stop();
    }
  });
  if (s.has('write-path')) await guarded(results, ['write-path'], async () => {
    results.writePath = await writePath({
      rows: opts.quick ? 10_000 : 100_000, seconds: opts.quick ? 5 : 20, repetitions: opts.reps, periods,
      catchupLimitSeconds: opts.quick ? 20 : 30,
    });
  });
  if (s.has('asof')) await guarded(results, ['asof'], async () => {
    results.asof = await asof({
      keys: opts.quick ? 2_000 : 10_000, rounds: opts.quick ? 4 : 10, samples: opts.quick ? 300 : 2_000,
      repetitions: opts.reps, periods, seed: opts.seed,
    });
  });
  if (s.has('whole-table')) await guarded(results, ['whole-table'], async () => {
    results.wholeTable = await asofTable({ rows: opts.quick ? 10_000 : 100_000, repetitions: opts.reps, periods });
  });
  if (s.has('live')) await guarded(results, ['live'], async () => {
    results.live = await live({
      scale: opts.quick ? 1 : 10, seconds: opts.quick ? 15 : 60, periods,
      catchupLimitSeconds: opts.quick ? 30 : 60, sampleEveryMs: 100,
    });
  });
  if (s.has('freshness')) await guarded(results, ['freshness'], async () => {
    results.freshness = await freshness({
      scale: opts.quick ? 1 : 10,
      idleSamples: opts.quick ? 10 : 50, idleBudgetSeconds: opts.quick ? 60 : 240,
      loadSamples: opts.quick ? 10 : 50, loadSeconds: opts.quick ? 30 : 90,
      nowChecks: opts.quick ? 5 : 10, sampleLimitSeconds: opts.quick ? 15 : 30,
    });
  });

  results.finishedAt = new Date().toISOString();
  results.durationSeconds = (Date.now() - started) / 1000;
  const dir = join(packageRoot, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const name = opts.quick ? 'quick' : 'latest';
  const md = markdown(results);
  writeFileSync(join(dir, `${name}.json`), JSON.stringify(results, null, 2) + '\n');
  writeFileSync(join(dir, `${name}.md`), md);
  console.log(`\n${md}`);
  progress('done', `wrote bench/results/${name}.json and ${name}.md`);
  return 0;
}

main().then((code) => process.exit(code), (err: unknown) => {
  console.error(`bench: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
  process.exit(1);
});
