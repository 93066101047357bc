// The store writer: applies assembled transactions to the store and moves
// the agent's checkpoint, in ONE store transaction (DESIGN hard case 5).
// The source is acknowledged only after that commit, by the caller, with the
// checkpoint LSN this returns; a restart resumes from the stored checkpoint.
//
// A batch of transactions is written with three set-based statements,
// whatever its size: close the open versions of the keys it writes
// (returning their data, for TOAST carry-forward), insert its versions, and
// record its commit times.  A key written by several transactions of the
// batch gets its chain of versions in that one insert: the writer works out
// in memory where each ends.  A TRUNCATE ends a batch (it closes whatever is
// open at its commit), and so does a size limit.  A transaction applied
// twice would violate row_versions' primary key: the store refuses to double
// a version.
//
// A transaction too big to hold in memory arrives in pieces (SpillOps, see
// agent/assemble.ts) before its COMMIT: the store transaction opens at the
// first piece, the pieces merge into a temporary table, and at COMMIT the
// versions are made from it in SQL, the same way, then everything commits
// together with the checkpoint as for any transaction.

import type pg from 'pg';

import type { AssembledTransaction, SpillOp, TrackedTable, VersionWrite } from './assemble.js';
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

/** The temporary table a spilled transaction's key states merge into. */
const SPILL = 'pg_temp.pgtimewarp_spill';

export class StoreWriter {
  /** A spilled transaction's store transaction is open. */
  private spillOpen = false;
  /** How many versions the last apply() wrote for a spilled transaction. */
  spilledVersions = 0;

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

  /** The store server's system identifier: the same as the source's when both are one cluster. */
  async systemIdentifier(): Promise<string> {
    const res = await this.store.query<{ sysid: string }>(
      `SELECT system_identifier::text AS sysid FROM pg_catalog.pg_control_system()`,
    );
    return res.rows[0]!.sysid;
  }

  /**
   * The store server's WAL insert position now.  Read right after a store
   * commit on a store that shares the source's cluster, it bounds that
   * commit's own WAL, which the source's walsender then reports like any
   * other (see the heartbeat rules in agent/run.ts).
   */
  async walInsertLsn(): Promise<Lsn> {
    const res = await this.store.query<{ lsn: string }>(`SELECT pg_catalog.pg_current_wal_insert_lsn()::text AS lsn`);
    return lsnFromText(res.rows[0]!.lsn);
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
    if (this.spillOpen !== (transactions[0]?.spilled ?? false) || transactions.slice(1).some((t) => t.spilled)) {
      // pieces belong to the transaction they were spilled from, which must come first
      throw new StoreWriteError('a spilled transaction and its pieces do not match: apply it first, after its pieces');
    }
    this.spilledVersions = 0;
    await this.inTransaction(async () => {
      let group: AssembledTransaction[] = [];
      let groupVersions = 0;
      for (const txn of transactions) {
        if (txn.spilled) {
          await this.applySpilled(txn);
          continue;
        }
        group.push(txn);
        groupVersions += txn.versions.length;
        // a TRUNCATE closes what is open at its commit: what comes before it must be written
        if (txn.truncated.length > 0 || groupVersions >= MAX_GROUP_VERSIONS) {
          await this.applyGroup(group);
          group = [];
          groupVersions = 0;
        }
      }
      if (group.length > 0) await this.applyGroup(group);
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
    if (this.spillOpen) throw new StoreWriteError('no heartbeat inside a spilled transaction');
    await this.inTransaction(async () => {
      await this.store.query(
        `INSERT INTO pgtimewarp_store.lsn_time_map (node_id, lsn, commit_ts, is_heartbeat)
         VALUES ($1, $2, $3, true) ON CONFLICT (node_id, lsn) DO NOTHING`,
        [this.nodeId, lsnToText(checkpoint.lsn), checkpointTime(checkpoint)],
      );
      await this.saveCheckpoint(checkpoint);
    });
  }

  /** A spilled transaction's pieces are in an open store transaction. */
  get spilling(): boolean {
    return this.spillOpen;
  }

  /**
   * Take a piece of a transaction too big to hold (in order).  The first
   * opens the store transaction that apply() commits; nothing is visible
   * before then, and a crash or abandonSpill() leaves no trace.
   */
  async spill(op: SpillOp): Promise<void> {
    if (!this.spillOpen) {
      await this.store.query('BEGIN');
      this.spillOpen = true;
      await this.run(() => this.store.query(
        `CREATE TEMPORARY TABLE pgtimewarp_spill (
           schema_name text NOT NULL,
           table_name text NOT NULL,
           pk text[] COLLATE "C" NOT NULL,
           born_here boolean NOT NULL,
           after_truncate boolean NOT NULL,
           row_data jsonb,
           toast text[] NOT NULL,
           carry_from_pk text[] COLLATE "C",
           first_removal text,
           prior_live boolean NOT NULL DEFAULT false,
           PRIMARY KEY (schema_name, table_name, pk)
         ) ON COMMIT DROP`));
    }
    await this.run(() => (op.kind === 'merge' ? this.mergeSpilled(op.keys) : this.truncateSpilled(op.schema, op.table)));
  }

  /** Drop a spilled transaction's pieces (it turned out to be stored already). */
  async abandonSpill(): Promise<void> {
    if (!this.spillOpen) return;
    this.spillOpen = false;
    await this.store.query('ROLLBACK');
  }

  /** `work`, rolling back a spilled transaction's store transaction if it fails. */
  private async run(work: () => Promise<unknown>): Promise<void> {
    try {
      await work();
    } catch (err) {
      this.spillOpen = false;
      await this.store.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
  }

  private async inTransaction(work: () => Promise<void>): Promise<void> {
    // a spilled transaction's pieces are in the store transaction already open
    if (!this.spillOpen) await this.store.query('BEGIN');
    try {
      await work();
      await this.store.query('COMMIT');
    } catch (err) {
      await this.store.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      this.spillOpen = false;
    }
  }

  /**
   * Merge key states into those of earlier pieces, as the assembler merges
   * changes: the earlier state's first-change facts stand; the later row
   * replaces the earlier one, taking the values it did not send from the
   * state its key (or the key it came from) had before this piece; a key's
   * first removal stays its first.  Every lookup reads the table as it was
   * before this statement, which is "before this piece".
   */
  private async mergeSpilled(keys: Extract<SpillOp, { kind: 'merge' }>['keys']): Promise<void> {
    if (keys.length === 0) return;
    const res = await this.store.query<{ orphans: string }>(
      `WITH s AS (
         SELECT * FROM jsonb_to_recordset($1::jsonb) AS s(
           schema text, "table" text, pk text[], "bornHere" boolean, "afterTruncate" boolean,
           "rowData" jsonb, "toastColumns" text[], "carryFromPk" text[], "firstRemoval" text)
       ), r AS (
         SELECT s.*, e.pk IS NOT NULL AS found, e.row_data AS e_row, e.toast AS e_toast,
                coalesce(e.carry_from_pk, e.pk) AS e_carry
           FROM s LEFT JOIN ${SPILL} e
             ON cardinality(s."toastColumns") > 0 AND e.schema_name = s.schema
            AND e.table_name = s."table" AND e.pk = coalesce(s."carryFromPk", s.pk)
       ), resolved AS (
         SELECT r.*,
                CASE WHEN found THEN ARRAY(SELECT c FROM unnest(r."toastColumns") c WHERE c = ANY (r.e_toast))
                     ELSE r."toastColumns" END AS left_toast
           FROM r
       ), merged AS (
         INSERT INTO ${SPILL} AS t
                (schema_name, table_name, pk, born_here, after_truncate, row_data, toast, carry_from_pk, first_removal)
         SELECT schema, "table", pk, "bornHere", "afterTruncate",
                CASE WHEN found
                     THEN "rowData" || coalesce((SELECT jsonb_object_agg(c, e_row -> c) FROM unnest("toastColumns") c
                                                  WHERE e_row ? c), '{}')
                     ELSE "rowData" END,
                left_toast,
                CASE WHEN cardinality(left_toast) = 0 THEN NULL WHEN found THEN e_carry ELSE "carryFromPk" END,
                "firstRemoval"
           FROM resolved
         ON CONFLICT (schema_name, table_name, pk) DO UPDATE
            SET row_data = EXCLUDED.row_data, toast = EXCLUDED.toast, carry_from_pk = EXCLUDED.carry_from_pk,
                first_removal = coalesce(t.first_removal, EXCLUDED.first_removal)
         RETURNING 1)
       SELECT (SELECT count(*) FROM merged) AS merged,
              (SELECT count(*) FROM r WHERE found AND e_row IS NULL) AS orphans`,
      [JSON.stringify(keys)],
    );
    if (Number(res.rows[0]?.orphans ?? 0) > 0) {
      // an UPDATE that left a value unsent cannot follow the row's removal
      throw new StoreWriteError('a spilled transaction updated a row it had removed earlier, keeping an unsent (TOASTed) value; the stream is inconsistent');
    }
  }

  /** A TRUNCATE in a spilled transaction: the rows of earlier pieces are gone. */
  private async truncateSpilled(schema: string, table: string): Promise<void> {
    await this.store.query(
      `UPDATE ${SPILL}
          SET row_data = NULL, toast = '{}', carry_from_pk = NULL, first_removal = coalesce(first_removal, 'truncate')
        WHERE schema_name = $1 AND table_name = $2 AND row_data IS NOT NULL`,
      [schema, table],
    );
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

  /** A spilled transaction: its versions from the merged pieces, then as any other. */
  private async applySpilled(txn: AssembledTransaction): Promise<void> {
    const commit = commitPoint(txn);
    await this.writeSpilledVersions(commit.lsn, commit.ts);
    await this.closeTruncated(txn, commit);
    await this.recordCommits([commit]);
  }

  /**
   * Transactions in commit order, of which only the last may have
   * truncated tables: their versions, the TRUNCATEs' closing, their commit
   * times.
   */
  private async applyGroup(group: AssembledTransaction[]): Promise<void> {
    const commits = group.map(commitPoint);
    const rows: VersionRow[] = [];
    // Where each key is first written in the group: its open version in the
    // store closes there, and is what that first write follows.
    const firstWrite = new Map<string, { schema: string; table: string; pk: string[]; lsn: string; ts: string }>();
    group.forEach((txn, i) => {
      for (const v of txn.versions) {
        const key = versionKey(v.schema, v.table, v.pk);
        if (!firstWrite.has(key)) firstWrite.set(key, { schema: v.schema, table: v.table, pk: v.pk, lsn: commits[i]!.lsn, ts: commits[i]!.ts });
      }
    });
    /** Each key's latest version: row data (null: a tombstone), and its row here if written in this group. */
    const latest = firstWrite.size === 0 ? new Map<string, Latest>() : await this.closeOpenVersions([...firstWrite.values()]);
    group.forEach((txn, i) => {
      const commit = commits[i]!;
      // every lookup in a transaction sees the keys as they were before it
      const made = txn.versions.map((v) => ({
        v,
        row: {
          schema: v.schema, table: v.table, pk: v.pk,
          valid_from_lsn: commit.lsn, valid_from_ts: commit.ts, valid_to_lsn: null, valid_to_ts: null,
          op: v.opFromStore ? (livePrevious(v, latest) ? 'update' : 'insert') : v.op,
          row_data: withCarried(v, latest),
        } satisfies VersionRow,
      }));
      for (const { v, row } of made) {
        const key = versionKey(v.schema, v.table, v.pk);
        const before = latest.get(key)?.row;
        if (before !== undefined) {
          // written earlier in this group: that version ends here
          before.valid_to_lsn = commit.lsn;
          before.valid_to_ts = commit.ts;
        }
        rows.push(row);
        latest.set(key, { rowData: row.row_data, row });
      }
    });
    if (rows.length > 0) {
      await this.store.query(
        `INSERT INTO pgtimewarp_store.row_versions
               (node_id, schema_name, table_name, pk, valid_from_lsn, valid_from_ts, valid_to_lsn, valid_to_ts, op, row_data)
         SELECT $1, x.schema, x."table", x.pk, x.valid_from_lsn, x.valid_from_ts, x.valid_to_lsn, x.valid_to_ts, x.op, x.row_data
           FROM jsonb_to_recordset($2::jsonb) AS x(schema text, "table" text, pk text[], valid_from_lsn pg_lsn,
                valid_from_ts timestamptz, valid_to_lsn pg_lsn, valid_to_ts timestamptz, op text, row_data jsonb)`,
        [this.nodeId, JSON.stringify(rows)],
      );
    }
    const last = group[group.length - 1]!;
    await this.closeTruncated(last, commits[commits.length - 1]!);
    await this.recordCommits(commits);
  }

  /** Close the versions a transaction's TRUNCATEs ended with a 'truncate' tombstone. */
  private async closeTruncated(txn: AssembledTransaction, commit: CommitPoint): Promise<void> {
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
        [this.nodeId, schema, table, commit.lsn, commit.ts],
      );
    }
  }

  /** Commit LSN -> commit time, for resolving timestamps (every commit, with versions or not). */
  private async recordCommits(commits: CommitPoint[]): Promise<void> {
    await this.store.query(
      `INSERT INTO pgtimewarp_store.lsn_time_map (node_id, lsn, commit_ts)
       SELECT $1, c.lsn, c.ts FROM jsonb_to_recordset($2::jsonb) AS c(lsn pg_lsn, ts timestamptz)
       ORDER BY c.lsn
       ON CONFLICT (node_id, lsn) DO NOTHING`,
      [this.nodeId, JSON.stringify(commits)],
    );
  }

  /**
   * The versions of a spilled transaction, from its merged key states: the
   * same rules as the assembler's commit and closeOpenVersions /
   * insertVersions below, in set-based SQL over the temporary table.
   */
  private async writeSpilledVersions(commitLsn: string, commitTime: string): Promise<void> {
    if (!this.spillOpen) throw new StoreWriteError('a spilled transaction reached the writer without its pieces');
    await this.store.query(`ANALYZE ${SPILL}`); // temporary tables get no statistics otherwise
    // values not sent: from the open version of the key they come from
    await this.store.query(
      `UPDATE ${SPILL} p
          SET row_data = p.row_data || coalesce((SELECT jsonb_object_agg(c, v.row_data -> c) FROM unnest(p.toast) c
                                                  WHERE v.row_data ? c), '{}'),
              toast = '{}'
         FROM pgtimewarp_store.row_versions v
        WHERE cardinality(p.toast) > 0 AND p.row_data IS NOT NULL
          AND v.node_id = $1 AND v.schema_name = p.schema_name AND v.table_name = p.table_name
          AND v.pk = coalesce(p.carry_from_pk, p.pk) AND v.valid_to_lsn IS NULL AND v.row_data IS NOT NULL`,
      [this.nodeId],
    );
    const uncarried = await this.store.query<{ schema_name: string; table_name: string; pk: string[]; toast: string[]; carry: string[] }>(
      `SELECT schema_name, table_name, pk, toast, coalesce(carry_from_pk, pk) AS carry
         FROM ${SPILL} WHERE cardinality(toast) > 0 AND row_data IS NOT NULL LIMIT 1`,
    );
    const u = uncarried.rows[0];
    if (u !== undefined) {
      throw new StoreWriteError(
        `cannot carry the unchanged value of ${u.schema_name}.${u.table_name}.${u.toast.join(', ')} for key ` +
          `${JSON.stringify(u.pk)}: the store has no previous version of key ${JSON.stringify(u.carry)}`,
      );
    }
    // keys with a version: present at commit, or removed having existed before
    await this.store.query(
      `WITH closed AS (
         UPDATE pgtimewarp_store.row_versions v
            SET valid_to_lsn = $2, valid_to_ts = $3
           FROM ${SPILL} p
          WHERE (p.row_data IS NOT NULL OR NOT (p.born_here OR p.after_truncate))
            AND v.node_id = $1 AND v.schema_name = p.schema_name AND v.table_name = p.table_name
            AND v.pk = p.pk AND v.valid_to_lsn IS NULL AND v.valid_from_lsn < $2
         RETURNING v.schema_name, v.table_name, v.pk, v.row_data IS NOT NULL AS live)
       UPDATE ${SPILL} p SET prior_live = c.live
         FROM closed c
        WHERE p.schema_name = c.schema_name AND p.table_name = c.table_name AND p.pk = c.pk`,
      [this.nodeId, commitLsn, commitTime],
    );
    const inserted = await this.store.query(
      `INSERT INTO pgtimewarp_store.row_versions
             (node_id, schema_name, table_name, pk, valid_from_lsn, valid_from_ts, op, row_data)
       SELECT $1, schema_name, table_name, pk, $2, $3,
              CASE WHEN row_data IS NULL THEN coalesce(first_removal, 'delete')
                   WHEN born_here THEN 'insert'
                   WHEN after_truncate AND NOT prior_live THEN 'insert'
                   ELSE 'update' END,
              row_data
         FROM ${SPILL}
        WHERE row_data IS NOT NULL OR NOT (born_here OR after_truncate)`,
      [this.nodeId, commitLsn, commitTime],
    );
    this.spilledVersions = inserted.rowCount ?? 0;
  }

  /**
   * Close the open version of each key where the group first writes it;
   * returns the closed versions' row data by key, for carrying unchanged
   * TOAST values forward and telling inserts from updates.
   *
   * Each key is probed through the one-open-version index and its version
   * updated by ctid: a join of the keys with row_versions would let the
   * planner hash every open version of the node when the store has no
   * statistics yet (a new store, before autovacuum's first ANALYZE), some
   * 100 ms per call at 200,000 versions against 0.3 ms.
   */
  private async closeOpenVersions(
    keys: Array<{ schema: string; table: string; pk: string[]; lsn: string; ts: string }>,
  ): Promise<Map<string, Latest>> {
    const res = await this.store.query<{ schema_name: string; table_name: string; pk: string[]; row_data: Record<string, string | null> | null }>(
      `UPDATE pgtimewarp_store.row_versions v
          SET valid_to_lsn = o.lsn, valid_to_ts = o.ts
         FROM (SELECT open.tid, k.lsn, k.ts
                 FROM jsonb_to_recordset($2::jsonb) AS k(schema text, "table" text, pk text[], lsn pg_lsn, ts timestamptz)
                CROSS JOIN LATERAL (
                      SELECT w.ctid AS tid FROM pgtimewarp_store.row_versions w
                       WHERE w.node_id = $1 AND w.schema_name = k.schema AND w.table_name = k."table"
                         AND w.pk = k.pk AND w.valid_to_lsn IS NULL AND w.valid_from_lsn < k.lsn
                       LIMIT 1) AS open) AS o
        WHERE v.ctid = o.tid
       RETURNING v.schema_name, v.table_name, v.pk, v.row_data`,
      [this.nodeId, JSON.stringify(keys)],
    );
    return new Map(res.rows.map((r) => [versionKey(r.schema_name, r.table_name, r.pk), { rowData: r.row_data }]));
  }
}

/** Where a transaction's versions begin: its commit (see applyGroup). */
interface CommitPoint {
  lsn: string;
  ts: string;
}

function commitPoint(txn: AssembledTransaction): CommitPoint {
  // A commit is visible at L when its commit record has ended by L: the
  // record's start can equal the end of the commit before it, so a version
  // dated by the start would show at a position where that earlier commit
  // had completed and this one had not.
  return { lsn: lsnToText(txn.endLsn), ts: unixMicrosToIso(txn.commitTimeMicros) };
}

/** A row_versions row as the group insert sends it. */
interface VersionRow {
  schema: string;
  table: string;
  pk: string[];
  valid_from_lsn: string;
  valid_from_ts: string;
  valid_to_lsn: string | null;
  valid_to_ts: string | null;
  op: string;
  row_data: Record<string, string | null> | null;
}

/** A key's latest version while a group is written: from the store, or `row` of this group. */
interface Latest {
  rowData: Record<string, string | null> | null;
  row?: VersionRow;
}

/** Versions per group insert: bounds the statement's JSON (a held transaction alone can be 5,000 keys). */
const MAX_GROUP_VERSIONS = 10_000;

function versionKey(schema: string, table: string, pk: string[]): string {
  return JSON.stringify([schema, table, pk]);
}

/** Whether the version this one follows held a row (not a delete or truncate tombstone). */
function livePrevious(v: VersionWrite, previous: Map<string, Latest>): boolean {
  const prior = previous.get(versionKey(v.schema, v.table, v.pk));
  return prior !== undefined && prior.rowData !== null;
}

/** The version's row data with unchanged TOAST values filled in from the previous version. */
function withCarried(v: VersionWrite, previous: Map<string, Latest>): Record<string, string | null> | null {
  if (v.rowData === null || v.carryColumns.length === 0) return v.rowData;
  const from = v.carryFromPk ?? v.pk;
  const prior = previous.get(versionKey(v.schema, v.table, from))?.rowData;
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
