// The store writer: applies assembled transactions to the store and moves
// the agent's checkpoint, in ONE store transaction (DESIGN hard case 5).
// The source is acknowledged only after that commit, by the caller, with the
// checkpoint LSN this returns; a restart resumes from the stored checkpoint.
//
// Each transaction is written with a few set-based statements, whatever its
// size: close the open versions of the keys it wrote (returning their data,
// for TOAST carry-forward), insert its versions, close what a TRUNCATE left
// open, record its commit time.  A transaction applied twice would violate
// row_versions' primary key: the store refuses to double a version.

import type pg from 'pg';

import type { AssembledTransaction, TrackedTable, VersionWrite } from './assemble.js';
import { lsnFromText, lsnToText, type Lsn } from './decode.js';
import { unixMicrosToIso } from './pgtime.js';

export interface Checkpoint {
  /** Resume streaming here: the end LSN of the last applied transaction (or a heartbeat's). */
  lsn: Lsn;
  /** Commit time of that transaction, or the heartbeat's time. */
  time: Date;
  /** `time` exactly, in microseconds since 1970, when known. */
  timeMicros?: bigint;
}

/** A checkpoint's time as exact timestamptz text. */
function checkpointTime(checkpoint: Checkpoint): string {
  return checkpoint.timeMicros === undefined
    ? checkpoint.time.toISOString()
    : unixMicrosToIso(checkpoint.timeMicros);
}

export class StoreWriteError extends Error {}

export class StoreWriter {
  constructor(
    private readonly store: pg.ClientBase,
    readonly nodeId: string,
    readonly slotName: string,
  ) {}

  /**
   * Register this node in the store (pgtimewarp_track does too, but the
   * agent may start first, and its heartbeats need the node).
   */
  async registerNode(databaseName: string, systemIdentifier: string): Promise<void> {
    await this.store.query(
      `INSERT INTO pgtimewarp_store.nodes (node_id, database_name, system_identifier)
       VALUES ($1, $2, $3) ON CONFLICT (node_id) DO NOTHING`,
      [this.nodeId, databaseName, systemIdentifier],
    );
  }

  /** A health event for `pgtimewarp doctor` and operators. */
  async recordHealth(severity: 'info' | 'warning' | 'error', kind: string, message: string, detail?: object): Promise<void> {
    await this.store.query(
      `INSERT INTO pgtimewarp_store.health_events (node_id, severity, kind, message, detail)
       VALUES ($1, $2, $3, $4, $5)`,
      [this.nodeId, severity, kind, message, detail === undefined ? null : JSON.stringify(detail)],
    );
  }

  /** Where the agent left off, or null before its first checkpoint. */
  async checkpoint(): Promise<Checkpoint | null> {
    const res = await this.store.query<{ lsn: string; ts: Date }>(
      `SELECT confirmed_lsn::text AS lsn, confirmed_ts AS ts
         FROM pgtimewarp_store.wal_checkpoints WHERE node_id = $1`,
      [this.nodeId],
    );
    const row = res.rows[0];
    return row === undefined ? null : { lsn: lsnFromText(row.lsn), time: row.ts };
  }

  /** Every table tracked (or once tracked) on this node. */
  async trackedTables(): Promise<TrackedTable[]> {
    const res = await this.store.query<{
      schema_name: string; table_name: string; pk_columns: string[];
      tracked_from_lsn: string; untracked_lsn: string | null;
    }>(
      `SELECT schema_name, table_name, pk_columns, tracked_from_lsn::text, untracked_lsn::text
         FROM pgtimewarp_store.tracked_relations WHERE node_id = $1`,
      [this.nodeId],
    );
    return res.rows.map((r) => ({
      schema: r.schema_name,
      table: r.table_name,
      pkColumns: r.pk_columns,
      trackedFromLsn: lsnFromText(r.tracked_from_lsn),
      untrackedLsn: r.untracked_lsn === null ? null : lsnFromText(r.untracked_lsn),
    }));
  }

  /**
   * Apply `transactions` (in commit order) and set the checkpoint to the
   * last one's end, all or nothing.  Returns the new checkpoint.
   */
  async apply(transactions: AssembledTransaction[]): Promise<Checkpoint> {
    const last = transactions[transactions.length - 1];
    if (last === undefined) throw new StoreWriteError('apply() needs at least one transaction');
    const checkpoint = { lsn: last.endLsn, time: last.commitTime, timeMicros: last.commitTimeMicros };
    await this.inTransaction(async () => {
      for (const txn of transactions) await this.applyOne(txn);
      await this.saveCheckpoint(checkpoint);
    });
    return checkpoint;
  }

  /**
   * A heartbeat: nothing tracked committed up to `lsn`, so history is
   * complete to there.  Lets timestamps in idle periods resolve, and lets
   * the slot advance.
   */
  async heartbeat(checkpoint: Checkpoint): Promise<void> {
    await this.inTransaction(async () => {
      await this.store.query(
        `INSERT INTO pgtimewarp_store.lsn_time_map (node_id, lsn, commit_ts, is_heartbeat)
         VALUES ($1, $2, $3, true) ON CONFLICT (node_id, lsn) DO NOTHING`,
        [this.nodeId, lsnToText(checkpoint.lsn), checkpointTime(checkpoint)],
      );
      await this.saveCheckpoint(checkpoint);
    });
  }

  private async inTransaction(work: () => Promise<void>): Promise<void> {
    await this.store.query('BEGIN');
    try {
      await work();
      await this.store.query('COMMIT');
    } catch (err) {
      await this.store.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
  }

  private async saveCheckpoint(checkpoint: Checkpoint): Promise<void> {
    // never backwards: a late or repeated write must not rewind the resume point
    await this.store.query(
      `INSERT INTO pgtimewarp_store.wal_checkpoints (node_id, slot_name, confirmed_lsn, confirmed_ts, updated_at)
       VALUES ($1, $2, $3, $4, now())
       ON CONFLICT (node_id) DO UPDATE
          SET slot_name = EXCLUDED.slot_name, confirmed_lsn = EXCLUDED.confirmed_lsn,
              confirmed_ts = EXCLUDED.confirmed_ts, updated_at = now()
        WHERE wal_checkpoints.confirmed_lsn <= EXCLUDED.confirmed_lsn`,
      [this.nodeId, this.slotName, lsnToText(checkpoint.lsn), checkpointTime(checkpoint)],
    );
  }

  private async applyOne(txn: AssembledTransaction): Promise<void> {
    // A commit is visible at L when its commit record has ended by L: the
    // record's start can equal the end of the commit before it, so a version
    // dated by the start would show at a position where that earlier commit
    // had completed and this one had not.
    const commitLsn = lsnToText(txn.endLsn);
    const commitTime = unixMicrosToIso(txn.commitTimeMicros);
    if (txn.versions.length > 0) {
      const previous = await this.closeOpenVersions(txn, commitLsn, commitTime);
      await this.insertVersions(txn, commitLsn, commitTime, previous);
    }
    for (const { schema, table } of txn.truncated) {
      // versions the transaction wrote begin at its commit LSN and stay open
      await this.store.query(
        `WITH closed AS (
           UPDATE pgtimewarp_store.row_versions
              SET valid_to_lsn = $4, valid_to_ts = $5
            WHERE node_id = $1 AND schema_name = $2 AND table_name = $3
              AND valid_to_lsn IS NULL AND valid_from_lsn < $4
              AND op NOT IN ('delete', 'truncate')
           RETURNING pk)
         INSERT INTO pgtimewarp_store.row_versions
               (node_id, schema_name, table_name, pk, valid_from_lsn, valid_from_ts, op, row_data)
         SELECT $1, $2, $3, pk, $4, $5, 'truncate', NULL FROM closed`,
        [this.nodeId, schema, table, commitLsn, commitTime],
      );
    }
    await this.store.query(
      `INSERT INTO pgtimewarp_store.lsn_time_map (node_id, lsn, commit_ts)
       VALUES ($1, $2, $3) ON CONFLICT (node_id, lsn) DO NOTHING`,
      [this.nodeId, commitLsn, commitTime],
    );
  }

  /**
   * Close the open version of every key the transaction writes (and of every
   * key a carried value comes from); returns the closed versions' row data
   * by key, for carrying unchanged TOAST values forward.
   */
  private async closeOpenVersions(
    txn: AssembledTransaction,
    commitLsn: string,
    commitTime: string,
  ): Promise<Map<string, Record<string, string | null> | null>> {
    const keys = txn.versions.map((v) => ({ schema: v.schema, table: v.table, pk: v.pk }));
    const res = await this.store.query<{ schema_name: string; table_name: string; pk: string[]; row_data: Record<string, string | null> | null }>(
      `UPDATE pgtimewarp_store.row_versions v
          SET valid_to_lsn = $2, valid_to_ts = $3
         FROM jsonb_to_recordset($4::jsonb) AS k(schema text, "table" text, pk text[])
        WHERE v.node_id = $1 AND v.schema_name = k.schema AND v.table_name = k."table"
          AND v.pk = k.pk AND v.valid_to_lsn IS NULL AND v.valid_from_lsn < $2
       RETURNING v.schema_name, v.table_name, v.pk, v.row_data`,
      [this.nodeId, commitLsn, commitTime, JSON.stringify(keys)],
    );
    return new Map(res.rows.map((r) => [versionKey(r.schema_name, r.table_name, r.pk), r.row_data]));
  }

  private async insertVersions(
    txn: AssembledTransaction,
    commitLsn: string,
    commitTime: string,
    previous: Map<string, Record<string, string | null> | null>,
  ): Promise<void> {
    const rows = txn.versions.map((v) => ({
      schema: v.schema,
      table: v.table,
      pk: v.pk,
      op: v.opFromStore ? (livePrevious(v, previous) ? 'update' : 'insert') : v.op,
      row_data: withCarried(v, previous),
    }));
    await this.store.query(
      `INSERT INTO pgtimewarp_store.row_versions
             (node_id, schema_name, table_name, pk, valid_from_lsn, valid_from_ts, op, row_data)
       SELECT $1, x.schema, x."table", x.pk, $2, $3, x.op, x.row_data
         FROM jsonb_to_recordset($4::jsonb) AS x(schema text, "table" text, pk text[], op text, row_data jsonb)`,
      [this.nodeId, commitLsn, commitTime, JSON.stringify(rows)],
    );
  }
}

function versionKey(schema: string, table: string, pk: string[]): string {
  return JSON.stringify([schema, table, pk]);
}

/** Whether the version this one follows held a row (not a delete or truncate tombstone). */
function livePrevious(v: VersionWrite, previous: Map<string, Record<string, string | null> | null>): boolean {
  const prior = previous.get(versionKey(v.schema, v.table, v.pk));
  return prior !== undefined && prior !== null;
}

/** The version's row data with unchanged TOAST values filled in from the previous version. */
function withCarried(
  v: VersionWrite,
  previous: Map<string, Record<string, string | null> | null>,
): Record<string, string | null> | null {
  if (v.rowData === null || v.carryColumns.length === 0) return v.rowData;
  const from = v.carryFromPk ?? v.pk;
  const prior = previous.get(versionKey(v.schema, v.table, from));
  const filled = { ...v.rowData };
  if (prior === undefined || prior === null) {
    throw new StoreWriteError(
      `cannot carry the unchanged value of ${v.schema}.${v.table}.${v.carryColumns.join(', ')} for key ` +
        `${JSON.stringify(v.pk)}: the store has no previous version of key ${JSON.stringify(from)}`,
    );
  }
  for (const column of v.carryColumns) {
    // A column the previous version lacks did not exist when it was written:
    // wal2json, resuming, knows the table's columns as they are now, so an
    // UPDATE from before an ADD COLUMN seems to leave the new column out.
    if (column in prior) filled[column] = prior[column] ?? null;
  }
  return filled;
}
