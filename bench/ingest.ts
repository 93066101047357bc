// Ingest: the agent's applied row changes per second against the decoding
// ceiling, pg_recvlogical reading the same slot start with the same plugin
// and options into /dev/null, alone.  pg_recvlogical reads the backlog in
// two runs (--endpos at the end of the 1,000-row transactions, then at the
// end), so the two transaction sizes get a figure each; the agent's split
// comes from its 'applied' events.

import { lsnToText } from '../agent/decode.js';
import { PGOUTPUT_PROTO_VERSION } from '../agent/pgoutput.js';
import { PUBLICATION } from '../agent/run.js';
import { wal2jsonOptions } from '../agent/wal2json.js';
import { bulkChanges, copyOriginSlot, dropSlot, singleChanges, type Backlog } from './backlog.js';
import type { AgentDrain } from './catchup.js';
import { fmt, fmtRatio, median } from './stats.js';
import { progress, recvlogical } from './support.js';

/** The options the agent passes its plugin. */
export function pluginOptions(plugin: 'pgoutput' | 'wal2json'): Array<[string, string]> {
  return plugin === 'pgoutput'
    ? [['proto_version', PGOUTPUT_PROTO_VERSION], ['publication_names', PUBLICATION], ['messages', 'true']]
    : wal2jsonOptions([{ schema: 'public', table: 'ingest' }]);
}

export interface RecvDrain {
  plugin: 'pgoutput' | 'wal2json';
  bulkSeconds: number;
  singleSeconds: number;
  walsenderCpu: number;
}

export async function drainWithRecvlogical(backlog: Backlog, plugin: 'pgoutput' | 'wal2json', rep: number): Promise<RecvDrain> {
  const slot = `recv_${plugin}_${rep}`;
  await copyOriginSlot(backlog, slot, plugin);
  try {
    const options = pluginOptions(plugin);
    const db = 'source';
    const bulk = await recvlogical(backlog.cluster, db, slot, lsnToText(backlog.lsns.boundary), options);
    const single = await recvlogical(backlog.cluster, db, slot, lsnToText(backlog.lsns.end), options);
    const drain = { plugin, bulkSeconds: bulk.seconds, singleSeconds: single.seconds, walsenderCpu: bulk.walsenderCpu + single.walsenderCpu };
    progress('ingest', `${plugin} #${rep + 1}: pg_recvlogical read the backlog in ${(drain.bulkSeconds + drain.singleSeconds).toFixed(1)} s ` +
      `(${fmt(backlog.changes / (drain.bulkSeconds + drain.singleSeconds))} changes/s)`);
    return drain;
  } finally {
    await dropSlot(backlog, slot).catch(() => undefined);
  }
}

interface Rates {
  /** row changes per second */
  agent: number;
  ceiling: number;
  ratio: number;
}

export interface IngestResult {
  changes: number;
  bulkChanges: number;
  singleChanges: number;
  /** drains per plugin: the agent's, pg_recvlogical's */
  agentRepetitions: number;
  repetitions: number;
  perPlugin: Array<{ plugin: string; all: Rates; bulk: Rates; single: Rates }>;
}

export function ingestResult(backlog: Backlog, agents: AgentDrain[], recvs: RecvDrain[]): IngestResult {
  const bulk = bulkChanges(backlog.sizes);
  const single = singleChanges(backlog.sizes);
  const plugins = [...new Set(recvs.map((d) => d.plugin))];
  const rates = (agent: number, ceiling: number): Rates => ({ agent, ceiling, ratio: agent / ceiling });
  return {
    changes: backlog.changes,
    bulkChanges: bulk,
    singleChanges: single,
    agentRepetitions: Math.min(...plugins.map((p) => agents.filter((d) => d.plugin === p).length)),
    repetitions: Math.min(...plugins.map((p) => recvs.filter((d) => d.plugin === p).length)),
    perPlugin: plugins.map((plugin) => {
      const a = agents.filter((d) => d.plugin === plugin);
      const r = recvs.filter((d) => d.plugin === plugin);
      return {
        plugin,
        all: rates(median(a.map((d) => backlog.changes / d.streamingSeconds)), median(r.map((d) => backlog.changes / (d.bulkSeconds + d.singleSeconds)))),
        bulk: rates(median(a.map((d) => bulk / d.bulkSeconds)), median(r.map((d) => bulk / d.bulkSeconds))),
        single: rates(median(a.map((d) => single / (d.streamingSeconds - d.bulkSeconds))), median(r.map((d) => single / d.singleSeconds))),
      };
    }),
  };
}

export function ingestMarkdown(r: IngestResult): string {
  const rows = r.perPlugin.flatMap((p) => ([
    ['all', p.all], [`1,000-row transactions (${fmt(r.bulkChanges)} changes)`, p.bulk], [`1-row transactions (${fmt(r.singleChanges)})`, p.single],
  ] as const).map(([what, x]) => `| ${p.plugin} | ${what} | ${fmt(x.agent)} | ${fmt(x.ceiling)} | ${fmtRatio(x.ratio)} |`));
  return [
    `${fmt(r.changes)} row changes (inserts, updates, deletes; every 50th row with a 3.2 kB out-of-line value the updates leave unchanged), ` +
      `read from the same slot start by each consumer alone; row changes per second ` +
      `(the agent: ${r.agentRepetitions === 1 ? 'one drain' : `median of ${r.agentRepetitions} drains`}, each into a fresh store; pg_recvlogical: median of ${r.repetitions}).`,
    '',
    '| plugin | transactions | agent (applied to the store) | pg_recvlogical to /dev/null (decoding ceiling) | agent / ceiling |',
    '|---|---|---|---|---|',
    ...rows,
  ].join('\n');
}
