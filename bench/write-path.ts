// Write-path cost: pgbench, 8 clients, a script of primary-key updates (each
// client its own eighth of the keys), on
// three identical tables of one cluster: one not versioned, one tracked by
// pgtimewarp with its agent running (and its store on the same cluster, as
// a one-host install has it), one system-versioned by the periods extension
// (a trigger writes the old row to a history table).  The variants take
// turns, repetition by repetition, so that a disturbance on the machine
// spreads over all of them.
//
// The cluster runs with fsync and full_page_writes on and synchronous
// commit: the cost of versioning is to be seen against a commit that
// really reaches the disk, as in production.  With fsync off a trigger's
// extra work would look larger than it is.
//
// The agent runs only during its variant: before each of its runs the slot
// skips the WAL of the other variants (nothing tracked changed there), and
// after it the agent is given up to `catchupLimitSeconds` to store the
// run's last change; how long that took is its lag at the end of the run.
// Whatever it has not stored by then is skipped with the rest (this is a
// benchmark store: its history may have gaps), so that the next runs start
// level; the figures say how much of each run the agent had stored.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { startCluster } from '../test/support/cluster.js';
import { setupTimewarp } from '../test/support/timewarp.js';
import { fmt, fmtRatio, median } from './stats.js';
import { AgentProcess, pgbench, poll, progress, versionWithPeriods } from './support.js';

export const DURABLE_SETTINGS: Readonly<Record<string, string>> = {
  fsync: 'on',
  full_page_writes: 'on',
  synchronous_commit: 'on',
  max_wal_size: '4GB',
};

const CLIENTS = 8;
const THREADS = 2;
const NODE = 'writepath';
const SLOT = 'writepath_agent';

type Variant = 'none' | 'pgtimewarp' | 'periods';

export interface WritePathOptions {
  rows: number;
  seconds: number;
  repetitions: number;
  periods: boolean;
  catchupLimitSeconds: number;
}

interface Run {
  variant: Variant;
  tps: number;
  transactions: number;
  /** pgtimewarp: versions the agent had stored when pgbench ended, and by the end of the wait */
  storedAtEnd?: number;
  storedAfterWait?: number;
  /** seconds after the run until its last change was stored; null if not within the limit */
  agentLagSeconds?: number | null;
  agentCpuSeconds?: number;
  error?: string;
}

export interface WritePathResult {
  rows: number;
  clients: number;
  seconds: number;
  repetitions: number;
  settings: Record<string, string>;
  catchupLimitSeconds: number;
  runs: Run[];
  median: Record<Variant, number | null>;
  /** Median share of a run's changes the agent had stored when the run ended, and after the wait. */
  storedAtEndShare: number;
  storedAfterWaitShare: number;
  /** Median time the agent needed after a run to store its last change (NaN: not within the limit). */
  agentLagSeconds: number;
  agentCpuPerRunSeconds: number;
}

export async function writePath(opts: WritePathOptions): Promise<WritePathResult> {
  const section = 'write-path';
  const cluster = await startCluster({ settings: { ...DURABLE_SETTINGS } });
  const scripts = mkdtempSync(join(tmpdir(), 'pgtimewarp-bench-'));
  try {
    const timewarp = await setupTimewarp(cluster, { nodeId: NODE });
    const { source, sourceUrl, storeUrl } = timewarp;
    const tables: Record<Variant, string> = { none: 'wp_plain', pgtimewarp: 'wp_tracked', periods: 'wp_periods' };
    progress(section, `three tables of ${opts.rows.toLocaleString('en-US')} rows`);
    for (const table of Object.values(tables)) {
      await source.query(`CREATE TABLE ${table} (id int PRIMARY KEY, balance int NOT NULL, note text, updated_at timestamptz NOT NULL)`);
      await source.query(`INSERT INTO ${table} SELECT g, 0, md5(g::text), now() FROM generate_series(1, $1) g`, [opts.rows]);
      // each client updates keys of its own: periods refuses to update a row that a transaction which began
      // later has changed ("invalid row version", not retryable), so no variant gets same-row conflicts
      const perClient = Math.floor(opts.rows / CLIENTS);
      writeFileSync(join(scripts, `${table}.sql`),
        `\\set id :client_id * ${perClient} + random(1, ${perClient})\n` +
          `UPDATE ${table} SET balance = balance + 1, updated_at = now() WHERE id = :id;\n`);
    }
    if (opts.periods) {
      await versionWithPeriods(source, 'wp_periods');
    }
    // the agent first (it makes the slot and publication), then track
    let agent = new AgentProcess({ sourceUrl, storeUrl, nodeId: NODE, slot: SLOT, plugin: 'pgoutput' });
    await agent.waitForEvent('streaming');
    await source.query(`SELECT pgtimewarp_track('wp_tracked')`);
    await agent.waitForEvent('tracking');
    await agent.stop();
    await source.query('VACUUM ANALYZE');

    const variants: Variant[] = opts.periods ? ['none', 'pgtimewarp', 'periods'] : ['none', 'pgtimewarp'];
    const runs: Run[] = [];
    for (let rep = 0; rep < opts.repetitions; rep++) {
      for (const variant of variants) {
        await source.query('CHECKPOINT');
        if (variant === 'pgtimewarp') {
          await source.query(`SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())`, [SLOT]);
          agent = new AgentProcess({ sourceUrl, storeUrl, nodeId: NODE, slot: SLOT, plugin: 'pgoutput' });
          await agent.waitForEvent('streaming');
        }
        const appliedBefore = agent.events.length;
        let tps: number;
        let transactions: number;
        try {
          ({ tps, transactions } = await pgbench(cluster, 'source', join(scripts, `${tables[variant]}.sql`), { clients: CLIENTS, threads: THREADS, seconds: opts.seconds }));
        } catch (err) {
          // a benchmark reports: the run counts as failed, the others go on
          const error = err instanceof Error ? err.message.split('\n').slice(0, 3).join(' ') : String(err);
          runs.push({ variant, tps: Number.NaN, transactions: 0, error });
          progress(section, `#${rep + 1} ${variant}: pgbench failed: ${error}`);
          if (variant === 'pgtimewarp') await agent.stop();
          continue;
        }
        if (variant !== 'pgtimewarp') {
          runs.push({ variant, tps, transactions });
          progress(section, `#${rep + 1} ${variant}: ${fmt(tps)} TPS`);
          continue;
        }
        const ended = Date.now();
        const stored = (): number => agent.events.slice(appliedBefore).reduce((n, e) => n + (e.event === 'applied' ? e.versions ?? 0 : 0), 0);
        const storedAtEnd = stored();
        const marker = `end of run ${rep}`;
        await source.query(`UPDATE wp_tracked SET note = $1 WHERE id = 1`, [marker]);
        const caughtUp = await poll('the agent to store the run\'s last change', async () => {
          agent.check();
          const res = await source.query<{ note: string | undefined }>(
            `SELECT pgtimewarp_asof_pk_lsn('wp_tracked', '{"id": 1}', pg_current_wal_lsn())->>'note' AS note`,
          );
          return res.rows[0]?.note === marker;
        }, opts.catchupLimitSeconds * 1000, 200).catch(() => false);
        const agentLagSeconds = caughtUp ? (Date.now() - ended) / 1000 : null;
        const storedAfterWait = Math.min(stored(), transactions);
        const agentCpuSeconds = agent.cpuSeconds();
        await agent.stop();
        runs.push({ variant, tps, transactions, storedAtEnd, storedAfterWait, agentLagSeconds, agentCpuSeconds });
        progress(section, `#${rep + 1} pgtimewarp: ${fmt(tps)} TPS; when the run ended the agent had stored ` +
          `${fmt((100 * storedAtEnd) / transactions)}% of its ${fmt(transactions)} changes; ` +
          (agentLagSeconds === null ? `not all within ${opts.catchupLimitSeconds} s after (${fmt((100 * storedAfterWait) / transactions)}%)` : `all ${agentLagSeconds.toFixed(1)} s after`) +
          `; agent CPU ${agentCpuSeconds.toFixed(1)} s`);
      }
    }
    const med = (v: Variant): number | null => {
      const tps = runs.filter((r) => r.variant === v && r.error === undefined).map((r) => r.tps);
      return tps.length === 0 ? null : median(tps);
    };
    const tw = runs.filter((r) => r.variant === 'pgtimewarp' && r.error === undefined);
    return {
      rows: opts.rows, clients: CLIENTS, seconds: opts.seconds, repetitions: opts.repetitions, settings: { ...DURABLE_SETTINGS },
      catchupLimitSeconds: opts.catchupLimitSeconds,
      runs,
      median: { none: med('none'), pgtimewarp: med('pgtimewarp'), periods: med('periods') },
      storedAtEndShare: median(tw.map((r) => r.storedAtEnd! / r.transactions)),
      storedAfterWaitShare: median(tw.map((r) => r.storedAfterWait! / r.transactions)),
      agentLagSeconds: median(tw.map((r) => r.agentLagSeconds ?? Number.POSITIVE_INFINITY)),
      agentCpuPerRunSeconds: median(tw.map((r) => r.agentCpuSeconds!)),
    };
  } finally {
    rmSync(scripts, { recursive: true, force: true });
    await cluster.stop();
  }
}

export function writePathMarkdown(r: WritePathResult): string {
  const base = r.median.none ?? Number.NaN;
  const row = (what: string, tps: number | null): string =>
    tps === null ? `| ${what} | not measured (periods not installed) | |` : `| ${what} | ${fmt(tps)} | ${fmtRatio(tps / base)} |`;
  return [
    `pgbench, ${r.clients} clients, ${r.seconds} s per run, primary-key updates on a ${fmt(r.rows)}-row table (each client its own keys); ` +
      `fsync, full_page_writes and synchronous_commit on; median of ${r.repetitions} runs each, variants interleaved.`,
    '',
    ...r.runs.filter((x) => x.error !== undefined).map((x) => `A ${x.variant} run failed and is left out: ${x.error}\n`),
    '| versioning | TPS | ratio to none |',
    '|---|---|---|',
    row('none', r.median.none),
    row('pgtimewarp (tracked, agent running, store on the same cluster)', r.median.pgtimewarp),
    row('periods (trigger-based system versioning)', r.median.periods),
    '',
    `When a pgtimewarp run ended, the agent had stored ${fmt(100 * r.storedAtEndShare)}% of its changes (median); ` +
      (Number.isFinite(r.agentLagSeconds)
        ? `it stored the last one ${fmt(r.agentLagSeconds, 1)} s later. `
        : `${r.catchupLimitSeconds} s later, ${fmt(100 * r.storedAfterWaitShare)}%: it did not keep up. `) +
      `The agent used ${fmt(r.agentCpuPerRunSeconds, 1)} CPU s per run of ${r.seconds} s (startup and the wait included).`,
  ].join('\n');
}
