// Input the agent must not trust, and transactions it cannot apply
// (DESIGN.md, "Identity, access and robustness": no input an ordinary role
// can produce may stop history, and a deterministic failure is recorded,
// never retried forever).
//
// - Tracking messages.  pgtimewarp_track and _untrack write the store
//   (tracked_relations, through postgres_fdw, in the source transaction)
//   and announce it with a "pgtimewarp" logical message.  Any role can
//   write such a message (pg_logical_emit_message is executable by PUBLIC),
//   so a message is a claim: the store is the source of truth.  One the
//   agent's catalog already shows costs nothing; otherwise the catalog is
//   read again from the store, and only a catalog that changed makes the
//   agent flush and (wal2json) restart its stream.  What the store does not
//   show is recorded as a health event, at most one a minute of each kind,
//   and ignored.
// - Poison transactions.  A transaction that cannot be decoded or assembled,
//   or whose versions the store refuses with an error that depends on the
//   data (a constraint, a trigger, a value out of range), fails the same way
//   on every try.  It is a TransactionFailure, named by its end LSN; after
//   POISON_ATTEMPTS alike the agent records a poison_transaction health
//   event and stops, saying how to skip it.  Losing a connection is not a
//   transaction's fault and is retried as before.
// - Skipped transactions.  `pgtimewarp skip-transaction <end-lsn>` lists one
//   in skipped_transactions.  The agent reads the list at each start and
//   when notified; meeting the transaction, it stores none of its versions,
//   records an open-ended history gap from its commit for each tracked table
//   it changed (every table recording then, when it could not be decoded),
//   marks it skipped, and goes on.  The gap is committed before the
//   checkpoint passes the transaction, so a crash in between skips it again
//   (the same gap, no second one) and never loses it silently.

import type pg from 'pg';

import { recordingAt, type AssembledTransaction, type ChangedTable, type TrackedTable, type TrackingEvent } from './assemble.js';
import { lsnFromText, lsnToText, type Lsn } from './decode.js';
import { unixMicrosToIso } from './pgtime.js';
import { StoreWriteError, StoreWriter } from './writer.js';

/** Failures alike, in a row, before a transaction is called poison. */
export const POISON_ATTEMPTS = 3;

/** The channel skip-transaction notifies, with the node id as payload. */
export const SKIP_CHANNEL = 'pgtimewarp_skip_transaction';

/**
 * A transaction that failed in a way that depends on its content alone:
 * retried, it fails the same way.
 */
export class TransactionFailure extends Error {
  override name = 'TransactionFailure';

  constructor(
    readonly endLsn: Lsn,
    readonly xid: number,
    /** Tracked tables it changed; null when not known (it could not be decoded). */
    readonly tables: ChangedTable[] | null,
    readonly stage: 'decode' | 'store',
    /** The error, as one line (PostgreSQL's SQLSTATE and detail kept). */
    readonly reason: string,
  ) {
    super(`the transaction ending at ${lsnToText(endLsn)} (xid ${xid}${tables === null || tables.length === 0 ? '' : `, ${tableList(tables)}`}) ` +
      `cannot be ${stage === 'decode' ? 'decoded' : 'stored'}: ${reason}`);
  }

  static of(txn: AssembledTransaction, stage: 'decode' | 'store', err: unknown): TransactionFailure {
    return new TransactionFailure(txn.endLsn, txn.xid, txn.failure === null ? txn.tables : null, stage, describeError(err));
  }
}

/** "public.items, public.other" */
export function tableList(tables: ChangedTable[]): string {
  return tables.map((t) => `${t.schema}.${t.table}`).join(', ');
}

/** An error as one line, with PostgreSQL's SQLSTATE and DETAIL when it has them. */
export function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const e = err as Error & { code?: unknown; detail?: unknown };
  const code = typeof e.code === 'string' ? ` (SQLSTATE ${e.code})` : '';
  // DETAIL may quote a whole row ("Failing row contains ..."): its start says enough
  const detail = typeof e.detail === 'string' && e.detail !== '' ? `; ${e.detail.length <= 300 ? e.detail : `${e.detail.slice(0, 300)}...`}` : '';
  return `${e.message}${code}${detail}`;
}

/**
 * SQLSTATE classes of errors that depend on the data written, not on the
 * connection or the server's state: data exceptions (22), integrity
 * constraints (23), program limits such as an index row too large (54),
 * PL/pgSQL RAISE (P0), functions and external routines (38, 39).  Not
 * privileges or missing objects (42): those are the set-up's, and every
 * transaction would fail alike.
 */
const DATA_ERROR_CLASSES = new Set(['22', '23', '54', 'P0', '38', '39']);

/**
 * Whether `err`, raised while storing a transaction, would be raised again
 * for it on every try: the writer's own refusals (StoreWriteError) and
 * PostgreSQL errors of DATA_ERROR_CLASSES.
 */
export function failsEveryTime(err: unknown): boolean {
  if (err instanceof StoreWriteError) return true;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.length === 5 && DATA_ERROR_CLASSES.has(code.slice(0, 2));
}

/** Counts failures of one transaction in a row: the same end LSN, the same error. */
export class FailureStreak {
  private key: string | null = null;
  private count = 0;

  /** Note a failure; returns how many alike in a row, this one included. */
  note(failure: TransactionFailure): number {
    const key = `${failure.endLsn}\n${failure.message}`;
    this.count = key === this.key ? this.count + 1 : 1;
    this.key = key;
    return this.count;
  }
}

/** The command that skips the transaction ending at `endLsn`. */
export function skipCommand(endLsn: Lsn): string {
  return `pgtimewarp skip-transaction ${lsnToText(endLsn)} --reason '<why>'`;
}

/** What the agent says when it stops at a poison transaction: what failed, and exactly what to do. */
export function poisonMessage(failure: TransactionFailure, attempts: number): string {
  return `history has stopped: ${failure.message} (${attempts} times alike; retrying cannot fix it). ` +
    `Either remove the cause (a store trigger or constraint, say) and start the agent again, or skip the transaction: ` +
    `${skipCommand(failure.endLsn)}, then start the agent again. Skipping stores none of its changes and records a ` +
    `history gap from it on for ${failure.tables === null ? 'every tracked table (which ones it changed is not known)' : `the tables it changed (${tableList(failure.tables)})`}.`;
}

/**
 * Record a poison transaction for doctor and operators: once an hour per
 * transaction, however often a restarted agent stops at it again.
 */
export async function recordPoison(store: pg.ClientBase, nodeId: string, failure: TransactionFailure, message: string): Promise<void> {
  const detail = {
    end_lsn: lsnToText(failure.endLsn), xid: failure.xid, stage: failure.stage, error: failure.reason,
    tables: failure.tables === null ? null : failure.tables.map((t) => `${t.schema}.${t.table}`),
    skip_command: skipCommand(failure.endLsn),
  };
  await store.query(
    `INSERT INTO pgtimewarp_store.health_events (node_id, severity, kind, message, detail)
     SELECT $1, 'error', 'poison_transaction', $2, $3::jsonb
      WHERE NOT EXISTS (SELECT 1 FROM pgtimewarp_store.health_events
                         WHERE node_id = $1 AND kind = 'poison_transaction' AND detail ->> 'end_lsn' = $4
                           AND occurred_at > now() - interval '1 hour')`,
    [nodeId, message, JSON.stringify(detail), detail.end_lsn],
  );
}

// ---------------------------------------------------------------------------
// Skipped transactions

export interface SkipRequest {
  reason: string;
  requestedBy: string;
  requestedAt: Date;
}

/** The transactions the operator told the agent to skip, by end LSN. */
export async function loadSkips(store: pg.ClientBase, nodeId: string): Promise<Map<Lsn, SkipRequest>> {
  const res = await store.query<{ end_lsn: string; reason: string; requested_by: string; requested_at: Date }>(
    `SELECT end_lsn::text, reason, requested_by, requested_at
       FROM pgtimewarp_store.skipped_transactions WHERE node_id = $1`,
    [nodeId],
  );
  return new Map(res.rows.map((r) => [lsnFromText(r.end_lsn), { reason: r.reason, requestedBy: r.requested_by, requestedAt: r.requested_at }]));
}

/**
 * The tables a skipped transaction leaves a gap in: those it changed, or,
 * when it could not be decoded (so which ones is not known), every table
 * recording at its commit.
 */
export function gapTables(txn: AssembledTransaction, tracked: TrackedTable[]): ChangedTable[] {
  if (txn.failure === null) return txn.tables;
  return tracked.filter((t) => recordingAt(t, txn.commitLsn)).map((t) => ({ relationId: t.relationId, schema: t.schema, table: t.table }));
}

/**
 * Record that the transaction is skipped, in one store transaction: a gap
 * from its commit on, open-ended, for each of `tables`; skipped_at; a
 * health event (the first time).  The caller then lets the checkpoint pass
 * it.  Returns the gap's reason.
 */
export async function recordSkip(
  store: pg.ClientBase,
  nodeId: string,
  txn: AssembledTransaction,
  tables: ChangedTable[],
  request: SkipRequest,
): Promise<string> {
  const endLsn = lsnToText(txn.endLsn);
  const reason = `transaction ending at ${endLsn} (xid ${txn.xid}) skipped by ${request.requestedBy} ` +
    `(pgtimewarp skip-transaction, requested ${request.requestedAt.toISOString()}): ${request.reason}`;
  await store.query('BEGIN');
  try {
    // a version is valid from its commit's end LSN (agent/writer.ts): the
    // gap starts where this one's versions would, in the incarnations they
    // would have gone to (by id: the name may have changed since)
    await store.query(
      `INSERT INTO pgtimewarp_store.history_gaps (relation_id, from_lsn, from_ts, reason)
       SELECT r.relation_id, $3::pg_lsn, $4::timestamptz, $5
         FROM pgtimewarp_store.tracked_relations r
        WHERE r.node_id = $1 AND r.relation_id = ANY ($2::integer[])
       ON CONFLICT (relation_id, from_lsn) DO NOTHING`,
      [nodeId, tables.map((t) => t.relationId), endLsn, unixMicrosToIso(txn.commitTimeMicros), reason],
    );
    const first = await store.query(
      `UPDATE pgtimewarp_store.skipped_transactions SET skipped_at = now()
        WHERE node_id = $1 AND end_lsn = $2 AND skipped_at IS NULL`,
      [nodeId, endLsn],
    );
    if (first.rowCount === 1) {
      await new StoreWriter(store, nodeId, '').recordHealth('warning', 'transaction_skipped',
        `${reason}; its changes are not in history, and ${tables.length === 0 ? 'it changed no tracked table' : `${tableList(tables)} have a history gap from ${endLsn} on`}`,
        { end_lsn: endLsn, xid: txn.xid, tables: tables.map((t) => `${t.schema}.${t.table}`) });
    }
    await store.query('COMMIT');
  } catch (err) {
    await store.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
  return reason;
}

/**
 * The transaction as it is stored when skipped: its commit (lsn_time_map,
 * the checkpoint) and no versions.  Its tracking messages stay, to be
 * checked like any: a table tracked in it is tracked, skipped or not.
 */
export function skippedTransaction(txn: AssembledTransaction): AssembledTransaction {
  return { ...txn, spilled: false, versions: [], truncated: [], bytes: 0, failure: null };
}

// ---------------------------------------------------------------------------
// Tracking messages

/**
 * Whether the catalog (the store's tracked_relations, any incarnation of
 * the name) shows the tracking a message claims; if not, not yet or never.
 */
export function catalogShows(event: TrackingEvent, nodeId: string, tracked: TrackedTable[]): boolean {
  if (event.nodeId !== nodeId) return false;
  return tracked.some((t) => t.schema === event.schema && t.table === event.table &&
    (event.action === 'track' ? t.trackedFromLsn === event.lsn : t.untrackedLsn === event.lsn));
}

/**
 * At most one report of each kind per interval; the ones held back are
 * counted, and the next report says how many.
 */
export class Throttle {
  private readonly last = new Map<string, { at: number; held: number }>();

  constructor(private readonly intervalMs = 60_000) {}

  /** null: hold this one back; else how many were held back since the last report. */
  take(kind: string, now = Date.now()): number | null {
    const seen = this.last.get(kind);
    if (seen !== undefined && now - seen.at < this.intervalMs) {
      seen.held++;
      return null;
    }
    this.last.set(kind, { at: now, held: 0 });
    return seen?.held ?? 0;
  }
}
