// Live load: pgbench's own TPC-B (`pgbench -b tpcb-like`, 8 clients, after
// `pgbench -i -s N`), which is what production looks like, rather than a
// backlog drained afterwards.  Three set-ups, each on a fresh cluster with
// fsync, full_page_writes and synchronous_commit on, so that each starts
// level (same WAL, same caches, no bloat left by the one before):
// - no versioning;
// - pgtimewarp: pgbench_accounts, pgbench_branches and pgbench_tellers
//   tracked, the compiled agent running, the store on the same cluster as
//   a one-host install has it (pgbench_history has no primary key and is
//   not tracked);
// - periods: the same three tables system-versioned by the periods
//   extension (its triggers write the old rows to history tables).  Its
//   trigger refuses to update a row that a transaction begun later has
//   changed ("invalid row version", not a serialization failure, so
//   pgbench does not retry it), and TPC-B's clients update the same few
//   branches all the time: pgbench aborts those clients.  Such a run is
//   reported as failed, with the error, and its TPS is not compared.
// One run per set-up: a run is long enough to smooth the machine's noise
// within it, and three set-ups of a minute each, plus the baseline copy
// and the agent's catch-up, already take a few minutes.
//
// For pgtimewarp it also measures how current the store stays:
//
// - Lag, commit to stored.  Every `sampleEveryMs` one connection to the
//   store reads the checkpoint (wal_checkpoints.confirmed_lsn: the agent
//   writes it in the same store transaction as the versions, so everything
//   before it is stored), then one to the source reads
//   pg_current_wal_lsn(); both are connections of their own, not queued
//   behind pgbench.  The WAL positions with their sample times make a
//   series; the lag at sample j is t_j minus the time of the earliest
//   sample i <= j whose WAL position was beyond the checkpoint read at j:
//   how old the oldest WAL not yet stored is.  It is 0 when the checkpoint
//   is at or past the previous sample's WAL position.  WAL written between
//   two samples is dated at the later one, so the lag reads low by up to
//   one interval.  The checkpoint moves past WAL of untracked tables only
//   with the next stored tracked transaction or a heartbeat; under TPC-B,
//   where every transaction changes tracked tables, that is the next one.
//   p50/p95/p99 are over the samples taken while pgbench ran.
// - Transactions stored when pgbench ended.  Every TPC-B transaction
//   updates exactly one teller and commits with a commit LSN of its own,
//   so pgbench_tellers gets exactly one version per transaction (several
//   in one teller's history when it is picked again).  The count of
//   teller versions with valid_from_lsn at or before the checkpoint read
//   when pgbench exited is the number of the run's transactions stored by
//   then: batches are atomic and versions never change, so counting later
//   is exact.  They are counted in the store's row_history view (history
//   by name, as people read it); the denominator is pgbench_history's
//   rows, one per committed transaction.
// - Time from pgbench's end to zero lag: until the checkpoint reaches the
//   source's WAL position at pgbench's end (which may need a heartbeat,
//   since autovacuum and the like write WAL after the last commit), and
//   separately until the last transaction was stored.  The agent gets at
//   most `catchupLimitSeconds`; what it reached by then is reported.
// - The agent's CPU seconds during the run (/proc) and its peak RSS (VmHWM).
//
// Targets (reports, never pass/fail): lag p99 <= 1 s during the run, at
// least 99% of the run's transactions stored when it ends.

import type pg from 'pg';

import { lsnFromText, lsnToText, type Lsn } from '../agent/decode.js';
import { startCluster, type Cluster } from '../test/support/cluster.js';
import { setupTimewarp } from '../test/support/timewarp.js';
import { fmt, fmtRatio, percentile } from './stats.js';
import {
  AgentProcess, failQueriesOnly, pgbenchInit, poll, progress, runPgbench, sleep, TPCB_TABLES, versionWithPeriods, type PgbenchRun,
} from './support.js';
import { DURABLE_SETTINGS } from './write-path.js';

const CLIENTS = 8;
const THREADS = 2;
const NODE = 'live';
const SLOT = 'live_agent';
const DB = 'source';
/** Targets the figures are printed beside. */
const TARGET_LAG_P99_SECONDS = 1;
const TARGET_STORED_AT_END = 0.99;

type Setup = 'none' | 'pgtimewarp' | 'periods';

export interface LiveOptions {
  scale: number;
  seconds: number;
  periods: boolean;
  catchupLimitSeconds: number;
  sampleEveryMs: number;
}

interface LiveRun {
  setup: Setup;
  /** pgbench's TPS (excluding connection time); not comparable when `error` is set. */
  tps: number;
  transactions: number;
  abortedClients: number;
  error?: string;
}

/** How current the store stayed under the load (pgtimewarp set-up). */
interface AgentUnderLoad {
  /** Transactions the run committed: pgbench_history's rows. */
  committed: number;
  lagSeconds: { p50: number; p95: number; p99: number; max: number };
  lagSamples: number;
  /** The run's transactions stored when pgbench ended, and when the wait after it ended. */
  storedAtEnd: number;
  storedAfterWait: number;
  /** Seconds from pgbench's end until the checkpoint reached its WAL position; null: not within the limit. */
  zeroLagSeconds: number | null;
  /** Seconds from pgbench's end until its last transaction was stored; null: not within the limit. */
  allStoredSeconds: number | null;
  /** WAL the run wrote, bytes. */
  walBytes: number;
  agentCpuSeconds: number;
  agentPeakRssMb: number;
}

export interface LiveResult {
  scale: number;
  clients: number;
  threads: number;
  seconds: number;
  settings: Record<string, string>;
  sampleEveryMs: number;
  catchupLimitSeconds: number;
  runs: LiveRun[];
  /** null when the pgtimewarp run failed. */
  agent: AgentUnderLoad | null;
  targets: { lagP99Seconds: number; storedAtEndShare: number };
}

/** pgbench's built-in TPC-B, as the section runs it. */
function tpcbArgs(opts: LiveOptions): string[] {
  return ['-b', 'tpcb-like', '-c', String(CLIENTS), '-j', String(THREADS), '-T', String(opts.seconds)];
}

function liveRun(setup: Setup, run: PgbenchRun): LiveRun {
  const result: LiveRun = { setup, tps: run.tps, transactions: run.transactions, abortedClients: run.abortedClients };
  if (run.abortedClients > 0) {
    result.error = `${run.abortedClients} of ${CLIENTS} clients aborted: ${run.abortError ?? 'see pgbench\'s output'}`;
  } else if (run.code !== 0 || !Number.isFinite(run.tps)) {
    result.error = `pgbench failed (exit ${run.code}): ${run.stderr.trim().split('\n').slice(0, 3).join(' ')}`;
  }
  return result;
}

/** Vacuumed and checkpointed, so that no set-up starts with the one-off work of another. */
async function settle(db: pg.Client): Promise<void> {
  await db.query('VACUUM ANALYZE');
  await db.query('CHECKPOINT');
}

/** No versioning, or periods on the three tables: a fresh cluster, pgbench -i, the run. */
async function plainRun(setup: 'none' | 'periods', opts: LiveOptions): Promise<LiveRun> {
  const cluster = await startCluster({ settings: { ...DURABLE_SETTINGS } });
  try {
    await cluster.psql(`CREATE DATABASE ${DB}`);
    await pgbenchInit(cluster, DB, opts.scale);
    const db = failQueriesOnly(await cluster.connect(DB));
    if (setup === 'periods') {
      for (const { table, key } of TPCB_TABLES) await versionWithPeriods(db, table, key);
    }
    await settle(db);
    progress('live', `${setup}: pgbench -b tpcb-like, ${CLIENTS} clients, ${opts.seconds} s`);
    return liveRun(setup, await runPgbench(cluster, DB, tpcbArgs(opts)));
  } finally {
    await cluster.stop();
  }
}

interface LagSample {
  /** performance.now() when the WAL position was read, ms */
  t: number;
  wal: Lsn;
  /** the store's checkpoint, read just before `wal` */
  stored: Lsn;
}

/**
 * Samples the source's WAL position and the store's checkpoint every
 * `everyMs` on connections of its own, one sample at a time.
 */
class LagSampler {
  readonly samples: LagSample[] = [];
  private chain: Promise<unknown> = Promise.resolve();
  private stopped = false;
  private readonly loop: Promise<void>;

  constructor(private readonly source: pg.Client, private readonly store: pg.Client, private readonly everyMs: number) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const started = performance.now();
      try {
        await this.sample();
      } catch {
        return; // the cluster is going away; sample() callers see the error themselves
      }
      await sleep(Math.max(0, this.everyMs - (performance.now() - started)));
    }
  }

  /** Take a sample now (after any in progress) and return it. */
  sample(): Promise<LagSample> {
    const next = this.chain.then(async () => {
      const stored = await this.store.query<{ lsn: string }>(
        `SELECT confirmed_lsn::text AS lsn FROM pgtimewarp_store.wal_checkpoints WHERE node_id = $1`, [NODE]);
      const wal = await this.source.query<{ lsn: string }>(`SELECT pg_current_wal_lsn()::text AS lsn`);
      const s: LagSample = { t: performance.now(), wal: lsnFromText(wal.rows[0]!.lsn), stored: lsnFromText(stored.rows[0]?.lsn ?? '0/0') };
      this.samples.push(s);
      return s;
    });
    this.chain = next.catch(() => undefined);
    return next;
  }

  get last(): LagSample | undefined {
    return this.samples[this.samples.length - 1];
  }

  /** Stop sampling (idempotent); the samples stay. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }

  /** The lag at each sample of [from, to]: the age of the oldest WAL the checkpoint did not cover, seconds. */
  lags(from: number, to: number): number[] {
    const lags: number[] = [];
    for (let j = from; j <= to; j++) {
      const { t, stored } = this.samples[j]!;
      // WAL positions only grow: the earliest sample beyond the checkpoint, by bisection
      let lo = 0;
      let hi = j + 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.samples[mid]!.wal > stored) hi = mid;
        else lo = mid + 1;
      }
      lags.push(lo <= j ? (t - this.samples[lo]!.t) / 1000 : 0);
    }
    return lags;
  }

  /** Seconds from sample `from` to the first sample at or after it whose checkpoint reached `lsn`; null if none. */
  reached(from: number, lsn: Lsn): number | null {
    for (let j = from; j < this.samples.length; j++) {
      if (this.samples[j]!.stored >= lsn) return (this.samples[j]!.t - this.samples[from]!.t) / 1000;
    }
    return null;
  }
}

/** pgtimewarp on the three tables, agent running: the run and how current the store stayed. */
async function timewarpRun(opts: LiveOptions): Promise<{ run: LiveRun; agent: AgentUnderLoad | null }> {
  const section = 'live';
  const cluster: Cluster = await startCluster({ settings: { ...DURABLE_SETTINGS } });
  try {
    const { source, sourceUrl, storeUrl } = await setupTimewarp(cluster, { sourceDb: DB, nodeId: NODE });
    failQueriesOnly(source);
    await pgbenchInit(cluster, DB, opts.scale);
    const agent = new AgentProcess({ sourceUrl, storeUrl, nodeId: NODE, slot: SLOT, plugin: 'pgoutput' });
    let sampler: LagSampler | undefined;
    try {
      // the agent first (it makes the slot and publication), then track
      await agent.waitForEvent('streaming');
      progress(section, `pgtimewarp: tracking ${TPCB_TABLES.map((t) => t.table).join(', ')} ` +
        `(a baseline of ${fmt(opts.scale * 100_000)} accounts)`);
      for (const { table } of TPCB_TABLES) await source.query(`SELECT pgtimewarp_track($1)`, [table]);
      await settle(source);
      const store = failQueriesOnly(await cluster.connect('store'));
      const sampling = failQueriesOnly(await cluster.connect(DB));
      // start level: a tracked commit after everything so far, and the agent has stored it
      const before = (await sampling.query<{ lsn: string }>(`SELECT pg_current_wal_lsn()::text AS lsn`)).rows[0]!.lsn;
      await source.query(`UPDATE pgbench_branches SET filler = filler WHERE bid = 1`);
      await poll('the agent to store everything before the run', async () => {
        agent.check();
        const res = await store.query<{ lsn: string }>(
          `SELECT confirmed_lsn::text AS lsn FROM pgtimewarp_store.wal_checkpoints WHERE node_id = $1`, [NODE]);
        return res.rows[0] !== undefined && lsnFromText(res.rows[0].lsn) >= lsnFromText(before);
      }, 60_000, 100);

      sampler = new LagSampler(sampling, store, opts.sampleEveryMs);
      const first = await sampler.sample();
      const cpuBefore = agent.cpuSeconds();
      progress(section, `pgtimewarp: pgbench -b tpcb-like, ${CLIENTS} clients, ${opts.seconds} s, lag sampled every ${opts.sampleEveryMs} ms`);
      const pgbenchRun = await runPgbench(cluster, DB, tpcbArgs(opts));
      const end = await sampler.sample();
      const endIndex = sampler.samples.length - 1;
      const agentCpuSeconds = agent.cpuSeconds() - cpuBefore;
      const run = liveRun('pgtimewarp', pgbenchRun);
      if (run.error !== undefined) return { run, agent: null };
      const endLag = sampler.lags(endIndex, endIndex)[0]!;
      progress(section, `pgtimewarp: ${fmt(run.tps)} TPS; at the end the lag was ${fmt(endLag, 1)} s; ` +
        `waiting up to ${opts.catchupLimitSeconds} s for zero lag`);
      await poll('zero lag', async () => {
        agent.check();
        const last = sampler!.last;
        return last !== undefined && last.stored >= end.wal;
      }, opts.catchupLimitSeconds * 1000, 100).catch(() => false);
      await sampler.stop();
      const afterWait = sampler.last!;
      const agentPeakRssMb = agent.peakRssKb() / 1024;

      const committed = Number((await source.query<{ n: string }>(`SELECT count(*) AS n FROM pgbench_history`)).rows[0]!.n);
      // row_history: the store's history by name; filtered by relation id, which its window is partitioned by
      const counted = await store.query<{ at_end: string; after_wait: string; last: string | null }>(
        `SELECT count(*) FILTER (WHERE h.valid_from_lsn <= $3::pg_lsn) AS at_end,
                count(*) FILTER (WHERE h.valid_from_lsn <= $4::pg_lsn) AS after_wait,
                max(h.valid_from_lsn) FILTER (WHERE h.valid_from_lsn <= $4::pg_lsn)::text AS last
           FROM pgtimewarp_store.row_history h
          WHERE h.relation_id = (SELECT r.relation_id FROM pgtimewarp_store.tracked_relations r
                                  WHERE r.node_id = $1 AND r.schema_name = 'public' AND r.table_name = $2)
            AND h.op = 'update' AND h.valid_from_lsn > $5::pg_lsn`,
        [NODE, 'pgbench_tellers', lsnToText(end.stored), lsnToText(afterWait.stored), lsnToText(first.wal)],
      );
      const c = counted.rows[0]!;
      const storedAtEnd = Number(c.at_end);
      const storedAfterWait = Number(c.after_wait);
      const allStoredSeconds = storedAfterWait >= committed && c.last !== null ? sampler.reached(endIndex, lsnFromText(c.last)) : null;
      const lags = sampler.lags(sampler.samples.indexOf(first), endIndex);
      const result: AgentUnderLoad = {
        committed,
        lagSeconds: { p50: percentile(lags, 50), p95: percentile(lags, 95), p99: percentile(lags, 99), max: Math.max(...lags) },
        lagSamples: lags.length,
        storedAtEnd,
        storedAfterWait,
        zeroLagSeconds: sampler.reached(endIndex, end.wal),
        allStoredSeconds,
        walBytes: Number(end.wal - first.wal),
        agentCpuSeconds,
        agentPeakRssMb,
      };
      progress(section, `pgtimewarp: lag p50 ${fmt(result.lagSeconds.p50, 2)} s, p99 ${fmt(result.lagSeconds.p99, 2)} s; ` +
        `${fmt((100 * storedAtEnd) / committed, 2)}% of ${fmt(committed)} transactions stored when pgbench ended, ` +
        (result.zeroLagSeconds === null
          ? `${fmt((100 * storedAfterWait) / committed, 2)}% ${opts.catchupLimitSeconds} s later (no zero lag)`
          : `zero lag ${fmt(result.zeroLagSeconds, 1)} s after`) +
        `; agent CPU ${fmt(agentCpuSeconds, 1)} s, peak RSS ${fmt(agentPeakRssMb)} MB`);
      return { run, agent: result };
    } finally {
      await sampler?.stop();
      await agent.stop();
    }
  } finally {
    await cluster.stop();
  }
}

export async function live(opts: LiveOptions): Promise<LiveResult> {
  const section = 'live';
  const setups: Setup[] = opts.periods ? ['none', 'pgtimewarp', 'periods'] : ['none', 'pgtimewarp'];
  const runs: LiveRun[] = [];
  let agent: AgentUnderLoad | null = null;
  for (const setup of setups) {
    try {
      progress(section, `${setup}: a fresh cluster, pgbench -i -s ${opts.scale}`);
      if (setup === 'pgtimewarp') {
        const r = await timewarpRun(opts);
        runs.push(r.run);
        agent = r.agent;
      } else {
        runs.push(await plainRun(setup, opts));
      }
    } catch (err) {
      // a benchmark reports: the set-up counts as failed, the others go on
      const error = err instanceof Error ? err.message.split('\n').slice(0, 3).join(' ') : String(err);
      runs.push({ setup, tps: Number.NaN, transactions: 0, abortedClients: 0, error });
    }
    const run = runs[runs.length - 1]!;
    progress(section, `${setup}: ${run.error === undefined ? `${fmt(run.tps)} TPS` : `failed: ${run.error}`}`);
  }
  return {
    scale: opts.scale, clients: CLIENTS, threads: THREADS, seconds: opts.seconds, settings: { ...DURABLE_SETTINGS },
    sampleEveryMs: opts.sampleEveryMs, catchupLimitSeconds: opts.catchupLimitSeconds, runs, agent,
    targets: { lagP99Seconds: TARGET_LAG_P99_SECONDS, storedAtEndShare: TARGET_STORED_AT_END },
  };
}

export function liveMarkdown(r: LiveResult): string {
  const names: Record<Setup, string> = {
    none: 'none',
    pgtimewarp: 'pgtimewarp (accounts, branches, tellers tracked; agent running, store on the same cluster)',
    periods: 'periods (the same three tables system-versioned by triggers)',
  };
  const none = r.runs.find((x) => x.setup === 'none');
  const base = none?.error === undefined ? none?.tps ?? Number.NaN : Number.NaN;
  const row = (setup: Setup): string => {
    const run = r.runs.find((x) => x.setup === setup);
    if (run === undefined) return `| ${names[setup]} | not measured (periods not installed) | |`;
    if (run.error !== undefined) return `| ${names[setup]} | failed: ${run.error.replace(/\|/g, '\\|')} | |`;
    return `| ${names[setup]} | ${fmt(run.tps)} | ${fmtRatio(run.tps / base)} |`;
  };
  const parts = [
    `pgbench's built-in TPC-B (\`pgbench -b tpcb-like -c ${r.clients} -j ${r.threads} -T ${r.seconds}\` after \`pgbench -i -s ${r.scale}\`); ` +
      `one run per set-up, each on a fresh cluster; fsync, full_page_writes and synchronous_commit on.`,
    '',
    '| versioning | TPS | ratio to none |',
    '|---|---|---|',
    row('none'),
    row('pgtimewarp'),
    row('periods'),
  ];
  const a = r.agent;
  if (a === null) return parts.join('\n');
  const pct = (n: number): string => `${fmt((100 * n) / a.committed, 2)}%`;
  const after = (s: number | null): string => (s === null ? `not within ${r.catchupLimitSeconds} s` : `${fmt(s, 1)} s`);
  parts.push(
    '',
    `How current the store stayed (lag sampled every ${r.sampleEveryMs} ms while pgbench ran, ${fmt(a.lagSamples)} samples: ` +
      `the age of the oldest WAL the store's checkpoint did not yet cover; stored transactions counted from pgbench_tellers' versions):`,
    '',
    '| pgtimewarp under TPC-B | measured | target |',
    '|---|---|---|',
    `| lag, commit to stored: p50 / p95 / p99 (max) | ${fmt(a.lagSeconds.p50, 2)} / ${fmt(a.lagSeconds.p95, 2)} / ${fmt(a.lagSeconds.p99, 2)} s ` +
      `(${fmt(a.lagSeconds.max, 2)} s) | p99 ≤ ${r.targets.lagP99Seconds} s |`,
    `| the run's transactions stored when pgbench ended | ${pct(a.storedAtEnd)} (${fmt(a.storedAtEnd)} of ${fmt(a.committed)}) | ≥ ${fmt(100 * r.targets.storedAtEndShare)}% |`,
    `| pgbench's end to its last transaction stored | ${after(a.allStoredSeconds)} | |`,
    `| pgbench's end to zero lag (checkpoint at the WAL position of pgbench's end) | ${after(a.zeroLagSeconds)} | |`,
    `| stored after the wait (at most ${r.catchupLimitSeconds} s) | ${pct(a.storedAfterWait)} | |`,
    `| agent CPU during the run | ${fmt(a.agentCpuSeconds, 1)} s (${fmt(a.agentCpuSeconds / r.seconds, 2)} of a core) | |`,
    `| agent peak RSS (VmHWM) | ${fmt(a.agentPeakRssMb)} MB | |`,
    '',
    `The run wrote ${fmt(a.walBytes / 1024 / 1024, 1)} MB of WAL (${fmt(a.walBytes / 1024 / 1024 / r.seconds, 2)} MB/s).`,
  );
  return parts.join('\n');
}
