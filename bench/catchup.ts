// Catch-up: the compiled agent, started on a slot with the whole backlog
// behind it, until the store holds everything (zero lag).  One such drain
// also gives the ingest section its rate and the storage section its store.
//
// Measured per drain:
// - time to zero lag: from spawning `node dist/installer/cli.js agent` to
//   the 'applied' event whose checkpoint covers the sentinel's commit;
// - streaming time: from its 'streaming' event to the same point (the
//   ingest rate's denominator), and when it passed the end of the 1,000-row
//   transactions;
// - peak RSS: VmHWM of the agent process;
// - CPU seconds of the agent, of its store backend and of its walsender, to
//   see where the time goes (on two cores, the pipeline's stages add up).

import { lsnFromText, type Lsn } from '../agent/decode.js';
import type pg from 'pg';

import { copyOriginSlot, dropSlot, freshStore, INGEST_NODE, SENTINEL_ID, type Backlog } from './backlog.js';
import { fmt, median } from './stats.js';
import { AgentProcess, CpuSampler, poll, progress, walsenderPid, type AgentLogEvent } from './support.js';

export interface AgentDrain {
  plugin: 'pgoutput' | 'wal2json';
  /** Spawn to zero lag, s. */
  catchupSeconds: number;
  /** 'streaming' to zero lag, s. */
  streamingSeconds: number;
  /** 'streaming' to past the 1,000-row transactions, s. */
  bulkSeconds: number;
  peakRssMb: number;
  cpu: { agent: number; store: number; walsender: number };
  batches: number;
  /** Mean store transaction of the drain: transactions and versions per 'applied' event. */
  meanBatchTransactions: number;
  versions: number;
  /** The store's execution time of the agent's statements (pg_stat_statements), by statement, largest first. */
  storeStatements: StoreStatement[];
}

export interface StoreStatement {
  query: string;
  calls: number;
  seconds: number;
}

/** Start counting the store's statement times afresh (pg_stat_statements is preloaded on the bench cluster). */
async function resetStatements(store: pg.Client): Promise<void> {
  await store.query(`SELECT pg_stat_statements_reset()`);
}

async function storeStatements(store: pg.Client): Promise<StoreStatement[]> {
  const res = await store.query<{ query: string; calls: string; ms: number }>(
    `SELECT regexp_replace(left(query, 120), '\\s+', ' ', 'g') AS query, calls, total_exec_time AS ms
       FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
      WHERE d.datname = current_database() AND query !~* 'pg_stat_statements|pg_stat_activity|ARRAY\\[\\$2\\]'
      ORDER BY total_exec_time DESC LIMIT 6`,
  );
  return res.rows.map((r) => ({ query: r.query, calls: Number(r.calls), seconds: r.ms / 1000 }));
}

function eventMs(e: AgentLogEvent): number {
  return Date.parse(e.time);
}

/** The first 'applied' event whose checkpoint is at or after `lsn`. */
function appliedAt(events: AgentLogEvent[], lsn: Lsn): AgentLogEvent | undefined {
  return events.find((e) => e.event === 'applied' && e.lsn !== undefined && lsnFromText(e.lsn) >= lsn);
}

/**
 * One drain into a fresh store.  `withStore` sees the store afterwards
 * (the whole workload's history), before it is dropped.
 */
export async function drainWithAgent(
  backlog: Backlog,
  plugin: 'pgoutput' | 'wal2json',
  rep: number,
  withStore?: (store: pg.Client) => Promise<void>,
): Promise<AgentDrain> {
  const section = 'catch-up';
  const slot = `agent_${plugin}_${rep}`;
  const drainStore = await freshStore(backlog, `store_${plugin}_${rep}`);
  const store = drainStore.client;
  await copyOriginSlot(backlog, slot, plugin);
  await resetStatements(store);
  const { sourceUrl, source } = backlog.timewarp;
  const storeUrl = drainStore.url;
  const sampler = new CpuSampler();
  progress(section, `${plugin} #${rep + 1}: agent started on ${backlog.changes.toLocaleString('en-US')} changes of backlog`);
  const agent = new AgentProcess({ sourceUrl, storeUrl, nodeId: INGEST_NODE, slot, plugin });
  try {
    sampler.watch('agent', agent.pid);
    let lastPids = 0;
    let lastReport = Date.now();
    // the store has the sentinel's version: its valid_from_lsn is the last commit's end
    const sentinelLsn = await poll('the store to hold the sentinel', async () => {
      agent.check();
      if (Date.now() - lastPids > 1000) {
        lastPids = Date.now();
        // the agent reconnects once for wal2json (its table list changes at the track message): follow its backends
        const walsender = await walsenderPid(source, slot);
        if (walsender !== undefined) sampler.watch(`walsender:${walsender}`, walsender);
        const backends = await store.query<{ pid: number }>(
          `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`,
        );
        for (const { pid } of backends.rows) sampler.watch(`store:${pid}`, pid);
      }
      if (Date.now() - lastReport > 10_000) {
        lastReport = Date.now();
        const last = [...agent.events].reverse().find((e) => e.event === 'applied');
        progress(section, `${plugin} #${rep + 1}: ${((Date.now() - agent.spawnedAt) / 1000).toFixed(0)} s, applied up to ${last?.lsn ?? '(nothing yet)'}`);
      }
      const res = await store.query<{ lsn: string }>(
        `SELECT v.valid_from_lsn::text AS lsn FROM pgtimewarp_store.row_versions v
           JOIN pgtimewarp_store.tracked_relations r ON r.relation_id = v.relation_id
          WHERE r.node_id = $1 AND r.schema_name = 'public' AND r.table_name = 'ingest' AND v.pk = ARRAY[$2]`,
        [INGEST_NODE, String(SENTINEL_ID)],
      );
      return res.rows[0] === undefined ? undefined : lsnFromText(res.rows[0].lsn);
    }, 3_600_000, 100);
    const done = await poll('the agent to log the sentinel\'s batch', async () => appliedAt(agent.events, sentinelLsn), 10_000);
    const peakRssMb = agent.peakRssKb() / 1024;
    const cpu = sampler.stop();
    const sum = (prefix: string): number => Object.entries(cpu).filter(([k]) => k.startsWith(prefix)).reduce((s, [, v]) => s + v, 0);
    const streaming = agent.events.find((e) => e.event === 'streaming');
    const bulkDone = appliedAt(agent.events, backlog.lsns.boundary);
    const applied = agent.events.filter((e) => e.event === 'applied' && lsnFromText(e.lsn ?? '0/0') <= lsnFromText(done.lsn!));
    const drain: AgentDrain = {
      plugin,
      catchupSeconds: (eventMs(done) - agent.spawnedAt) / 1000,
      streamingSeconds: (eventMs(done) - eventMs(streaming!)) / 1000,
      bulkSeconds: bulkDone === undefined ? Number.NaN : (eventMs(bulkDone) - eventMs(streaming!)) / 1000,
      peakRssMb,
      cpu: { agent: cpu['agent'] ?? Number.NaN, store: sum('store:'), walsender: sum('walsender:') },
      batches: applied.length,
      meanBatchTransactions: applied.reduce((s, e) => s + (e.transactions ?? 0), 0) / Math.max(1, applied.length),
      versions: applied.reduce((s, e) => s + (e.versions ?? 0), 0),
      storeStatements: await storeStatements(store),
    };
    progress(section, `${plugin} #${rep + 1}: zero lag after ${drain.catchupSeconds.toFixed(1)} s ` +
      `(${fmt(backlog.changes / drain.streamingSeconds)} changes/s streaming), peak RSS ${drain.peakRssMb.toFixed(0)} MB, ` +
      `CPU s agent ${drain.cpu.agent.toFixed(1)} / store backend ${drain.cpu.store.toFixed(1)} / walsender ${drain.cpu.walsender.toFixed(1)}`);
    await agent.stop();
    await withStore?.(store);
    return drain;
  } finally {
    sampler.stop();
    await agent.stop();
    await dropSlot(backlog, slot).catch(() => undefined);
    await drainStore.drop();
  }
}

export interface CatchupResult {
  changes: number;
  repetitions: number;
  perPlugin: Array<{
    plugin: string;
    catchupSeconds: number;
    peakRssMb: number;
    maxPeakRssMb: number;
    cpuAgentSeconds: number;
    cpuStoreSeconds: number;
    cpuWalsenderSeconds: number;
    /** (agent + store backend + walsender CPU) / wall time while streaming: above 1, stages ran in parallel. */
    busyCores: number;
    batches: number;
    meanBatchTransactions: number;
    /** Time the store spent executing the agent's statements (pg_stat_statements, top level). */
    storeExecSeconds: number;
    /** The agent's costliest store statements, in its first drain. */
    storeStatements: StoreStatement[];
  }>;
}

export function catchupResult(changes: number, drains: AgentDrain[]): CatchupResult {
  const plugins = [...new Set(drains.map((d) => d.plugin))];
  return {
    changes,
    repetitions: Math.min(...plugins.map((p) => drains.filter((d) => d.plugin === p).length)),
    perPlugin: plugins.map((plugin) => {
      const ds = drains.filter((d) => d.plugin === plugin);
      const m = (f: (d: AgentDrain) => number): number => median(ds.map(f));
      return {
        plugin,
        catchupSeconds: m((d) => d.catchupSeconds),
        peakRssMb: m((d) => d.peakRssMb),
        maxPeakRssMb: Math.max(...ds.map((d) => d.peakRssMb)),
        cpuAgentSeconds: m((d) => d.cpu.agent),
        cpuStoreSeconds: m((d) => d.cpu.store),
        cpuWalsenderSeconds: m((d) => d.cpu.walsender),
        busyCores: m((d) => (d.cpu.agent + d.cpu.store + d.cpu.walsender) / d.catchupSeconds),
        batches: m((d) => d.batches),
        meanBatchTransactions: m((d) => d.meanBatchTransactions),
        storeExecSeconds: m((d) => d.storeStatements.reduce((s, q) => s + q.seconds, 0)),
        storeStatements: ds[0]?.storeStatements ?? [],
      };
    }),
  };
}

export function catchupMarkdown(r: CatchupResult): string {
  const rows = r.perPlugin.map((p) =>
    `| ${p.plugin} | ${fmt(p.catchupSeconds, 1)} s | ${fmt(p.peakRssMb)} MB (max ${fmt(p.maxPeakRssMb)}) | ` +
    `${fmt(p.cpuAgentSeconds, 1)} / ${fmt(p.cpuStoreSeconds, 1)} / ${fmt(p.cpuWalsenderSeconds, 1)} | ${fmt(p.busyCores, 2)} | ${fmt(p.storeExecSeconds, 1)} s |`);
  return [
    `Backlog of ${fmt(r.changes)} row changes, agent started on it; median of ${r.repetitions}.`,
    '',
    '| plugin | time to zero lag | agent peak RSS (VmHWM) | CPU s: agent / store backend / walsender | cores busy | store executing the agent\'s statements |',
    '|---|---|---|---|---|---|',
    ...rows,
    '',
    ...r.perPlugin.flatMap((p) => [
      `The store's time on the agent's statements (${p.plugin}, first drain; pg_stat_statements): ` +
        p.storeStatements.slice(0, 4).map((q) => `\`${q.query.slice(0, 60)}…\` ${fmt(q.seconds, 1)} s in ${fmt(q.calls)} calls`).join('; ') + '.',
      '',
    ]),
  ].join('\n');
}
