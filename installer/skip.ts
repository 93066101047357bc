// pgtimewarp skip-transaction <end-lsn>: tell the agent to skip one
// transaction it cannot store (a poison transaction, agent/poison.ts).  The
// decision is the operator's and is kept in the store
// (skipped_transactions), where the agent reads it; the agent then records
// the history gap that skipping leaves.  A plain function and its commander
// wiring.

import type { Command } from 'commander';
import pg from 'pg';

import { lsnFromText, lsnToText } from '../agent/decode.js';
import { SKIP_CHANNEL } from '../agent/poison.js';
import { resolveConnections } from './config.js';
import { describeConnection } from './query-connection.js';

export interface SkipTransactionOptions {
  /** The transaction's end LSN, as the agent and doctor report it. */
  endLsn: string;
  reason?: string;
  /** Store database URL; else PGTIMEWARP_STORE_URL, the config file. */
  store?: string;
  /** Node id; else PGTIMEWARP_NODE_ID, the config file, else the node whose agent reported this LSN. */
  node?: string;
  /** Environment to resolve connections from (tests pass their own). */
  env?: NodeJS.ProcessEnv;
}

export interface SkipTransactionResult {
  nodeId: string;
  endLsn: string;
  reason: string;
  /** false: it was listed already, nothing changed. */
  added: boolean;
  /** The agent's report of the transaction failing, when there is one. */
  poison: { at: string; message: string; tables: string[] | null } | null;
}

const DEFAULT_REASON = 'skipped with pgtimewarp skip-transaction';

export async function skipTransaction(opts: SkipTransactionOptions): Promise<SkipTransactionResult> {
  const env = opts.env ?? process.env;
  let endLsn: string;
  try {
    endLsn = lsnToText(lsnFromText(opts.endLsn.trim()));
  } catch {
    throw new Error(`${JSON.stringify(opts.endLsn)} is not an LSN: give the end LSN the agent reported, e.g. 0/1A2B3C4 (pgtimewarp doctor shows it)`);
  }
  const reason = opts.reason?.trim() || DEFAULT_REASON;
  const conn = resolveConnections({ store: opts.store, node: opts.node }, { store: true }, env);
  const where = describeConnection('store', opts.store, env, conn.config);
  const store = new pg.Client({ connectionString: conn.storeUrl, application_name: 'pgtimewarp cli', connectionTimeoutMillis: 15_000 });
  store.on('error', () => undefined); // a lost connection surfaces through the failing query
  try {
    await store.connect();
  } catch (err) {
    await store.end().catch(() => undefined);
    throw new Error(`could not connect to the store database ${where}: ${err instanceof Error ? err.message : String(err)}`);
  }
  try {
    const nodeId = conn.nodeId ?? (await nodeReporting(store, endLsn));
    const node = await store.query<{ confirmed: string | null; past: boolean | null }>(
      `SELECT c.confirmed_lsn::text AS confirmed, c.confirmed_lsn >= $2::pg_lsn AS past
         FROM pgtimewarp_store.nodes n LEFT JOIN pgtimewarp_store.wal_checkpoints c ON c.node_id = n.node_id
        WHERE n.node_id = $1`,
      [nodeId, endLsn],
    );
    const row = node.rows[0];
    if (row === undefined) throw new Error(`the store ${where} has no node "${nodeId}": pass the node the agent runs for with --node`);
    if (row.past === true) {
      throw new Error(`the agent of node "${nodeId}" has stored history up to ${row.confirmed}, past ${endLsn}: ` +
        'a transaction ending there is behind it, and there is nothing to skip');
    }
    const poison = await store.query<{ at: string; message: string; tables: string[]; known: boolean }>(
      `SELECT occurred_at::text AS at, message, ARRAY(SELECT jsonb_array_elements_text(detail -> 'tables')) AS tables,
              jsonb_typeof(detail -> 'tables') = 'array' AS known
         FROM pgtimewarp_store.health_events
        WHERE node_id = $1 AND kind = 'poison_transaction' AND detail ->> 'end_lsn' = $2
        ORDER BY occurred_at DESC LIMIT 1`,
      [nodeId, endLsn],
    );
    const added = await store.query(
      `INSERT INTO pgtimewarp_store.skipped_transactions (node_id, end_lsn, reason)
       VALUES ($1, $2, $3) ON CONFLICT (node_id, end_lsn) DO NOTHING`,
      [nodeId, endLsn, reason],
    );
    // a running agent reads the list again
    await store.query(`SELECT pg_catalog.pg_notify($1, $2)`, [SKIP_CHANNEL, nodeId]);
    const p = poison.rows[0];
    return {
      nodeId, endLsn, reason, added: added.rowCount === 1,
      poison: p === undefined ? null : { at: p.at, message: p.message, tables: p.known ? p.tables : null },
    };
  } finally {
    await store.end().catch(() => undefined);
  }
}

/** The node whose agent reported a poison transaction ending at `endLsn`, else the store's only node. */
async function nodeReporting(store: pg.Client, endLsn: string): Promise<string> {
  const reported = await store.query<{ node_id: string }>(
    `SELECT DISTINCT node_id FROM pgtimewarp_store.health_events WHERE kind = 'poison_transaction' AND detail ->> 'end_lsn' = $1`,
    [endLsn],
  );
  if (reported.rows.length === 1) return reported.rows[0]!.node_id;
  const nodes = await store.query<{ node_id: string }>(`SELECT node_id FROM pgtimewarp_store.nodes ORDER BY 1`);
  if (reported.rows.length === 0 && nodes.rows.length === 1) return nodes.rows[0]!.node_id;
  throw new Error(`which node? ${reported.rows.length > 1 ? `the agents of nodes ${reported.rows.map((r) => r.node_id).join(', ')} all reported ${endLsn}` : `the store has nodes ${nodes.rows.map((r) => r.node_id).join(', ') || '(none)'}`}: ` +
    'pass --node <id> or set PGTIMEWARP_NODE_ID');
}

/** The result as people read it: what was done, what it costs, what happens next. */
export function formatSkipTransaction(r: SkipTransactionResult): string {
  const lines = [
    r.added
      ? `listed the transaction ending at ${r.endLsn} of node "${r.nodeId}" to be skipped (reason: ${r.reason})`
      : `the transaction ending at ${r.endLsn} of node "${r.nodeId}" was already listed to be skipped; nothing changed`,
  ];
  if (r.poison !== null) {
    lines.push(`the agent reported it at ${r.poison.at}: ${r.poison.message}`);
  } else {
    lines.push(`warning: the agent has reported no poison transaction ending at ${r.endLsn}; check the LSN: ` +
      'only a transaction ending exactly there is skipped');
  }
  const tables = r.poison?.tables ?? null;
  lines.push(
    `What is lost: none of its changes are recorded. ${tables === null ? 'Each tracked table it changed' : `${tables.join(', ')}`} ` +
      `get${tables !== null && tables.length === 1 ? 's' : ''} a history gap from ${r.endLsn} on, recorded in pgtimewarp_store.history_gaps ` +
      `(every tracked table, when which ones it changed could not be decoded): a lookup in the gap is an error, not a stale row.`,
    'Next: a running agent skips it when it reaches it; a stopped one when it is started again.',
  );
  return lines.join('\n');
}

export function registerSkipCommand(program: Command): void {
  program
    .command('skip-transaction')
    .description('let the agent go past one transaction it cannot store (a poison transaction doctor reports): its changes are not recorded, and a history gap is recorded for the tables it changed')
    .argument('<end-lsn>', 'the transaction\'s end LSN, as the agent\'s message and doctor report it, e.g. 0/1A2B3C4')
    .option('--reason <text>', 'why, kept with the decision and the gap')
    .option('--store <url>', 'store database URL (default: $PGTIMEWARP_STORE_URL, else the config file)')
    .option('--node <id>', 'node id (default: $PGTIMEWARP_NODE_ID, the config file, else the node whose agent reported the LSN)')
    .option('--json', 'print the result as one JSON object')
    .addHelpText('after', `
When a transaction fails the same way on every try (the store refuses its
data, or it cannot be decoded), the agent stops after 3 tries and says so in
its log, in the store's health_events and in pgtimewarp doctor, with this
command. Skipping it is a decision to lose its changes: the agent stores none
of them, records an open-ended gap in pgtimewarp_store.history_gaps for each
tracked table it changed (every tracked table, if it could not be decoded),
and goes on. The decision is kept in pgtimewarp_store.skipped_transactions.

Example:
  $ pgtimewarp skip-transaction 0/1A2B3C4 --reason 'store trigger refused it; INC-123'`)
    .action(async (endLsn: string, flags: { reason?: string; store?: string; node?: string; json?: boolean }) => {
      const result = await skipTransaction({ endLsn, reason: flags.reason, store: flags.store, node: flags.node });
      console.log(flags.json ? JSON.stringify(result) : formatSkipTransaction(result));
    });
}
