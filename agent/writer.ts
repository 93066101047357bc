// The store writer: applies assembled transactions to the store and moves
// the agent's checkpoint, in ONE store transaction (DESIGN hard case 5).
// The source is acknowledged only after that commit, by the caller, with the
// checkpoint LSN this returns; a restart resumes from the stored checkpoint.
//
// The store keeps versions append-only (migrations/2_compact_versions.sql):
// a version ends where its key's next version begins, so writing a change is
// one insert, never an update of the version before.  A batch of
// transactions is written with a few set-based statements, whatever its
// size: the relation ids of its tables, the previous versions of the keys
// whose previous version matters (unchanged TOAST values to carry forward,
// insert or update after a TRUNCATE), one insert of every version, and the
// commit times.  A TRUNCATE ends a group of transactions (it ends every
// version live at its commit), and so does a size limit.  A transaction
// applied twice would violate row_versions' primary key: the store refuses
// to double a version.
//
// A transaction too big to hold in memory arrives in pieces (SpillOps, see
// agent/assemble.ts) before its COMMIT: the store transaction opens at the
// first piece, the pieces merge into a temporary table, and at COMMIT the
// versions are made from it in SQL, the same way, then everything commits
// together with the checkpoint as for any transaction.
//
// Each store transaction also adds the versions it wrote to each table's
// count in relation_stats (migrations/5_relation_stats.sql), in one
// statement for all its tables, so that the count moves with the versions
// and pgtimewarp_status() never counts history.

import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';

import type { AssembledTransaction, SpillOp, TrackedTable, VersionOp, VersionWrite } from './assemble.js';
import { lsnFromText, lsnToText, type Lsn } from './decode.js';
import { indexKey } from './key.js';
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
  /** Versions written per relation id in the store transaction apply() has open. */
  private written = new Map<number, number>();

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
      relation_id: number; relid: number | null; schema_name: string; table_name: string; pk_columns: string[];
      tracked_from_lsn: string; untracked_lsn: string | null; columns: Record<string, string> | null;
    }>(
      `SELECT relation_id, relid::bigint::float8 AS relid, schema_name, table_name, pk_columns, columns,
              tracked_from_lsn::text, untracked_lsn::text
         FROM pgtimewarp_store.tracked_relations WHERE node_id = $1`,
      [this.nodeId],
    );
    return res.rows.map((r) => ({
      relationId: r.relation_id,
      relid: r.relid,
      schema: r.schema_name,
      table: r.table_name,
      pkColumns: r.pk_columns,
      columns: r.columns,
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
      this.written = new Map();
      const relations = await this.relationIds();
      let group: AssembledTransaction[] = [];
      let groupVersions = 0;
      for (const txn of transactions) {
        if (txn.spilled) {
          await this.applySpilled(txn, relations);
          await this.applyIdentity(txn);
          continue;
        }
        group.push(txn);
        groupVersions += txn.versions.length;
        // a TRUNCATE closes what is open at its commit: what comes before it must be written
        if (txn.truncated.length > 0 || groupVersions >= MAX_GROUP_VERSIONS || (txn.identity?.length ?? 0) > 0) {
          await this.applyGroup(group, relations);
          await this.applyIdentity(txn);
          group = [];
          groupVersions = 0;
        }
      }
      if (group.length > 0) await this.applyGroup(group, relations);
      await this.saveVersionCounts();
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
           relation_id integer NOT NULL,
           -- for messages
           schema_name text NOT NULL,
           table_name text NOT NULL,
           pk text[] COLLATE "C" NOT NULL,
           -- keyed by the store's index form of pk: a long key would not fit
           pk_index text[] COLLATE "C" NOT NULL,
           born_here boolean NOT NULL,
           after_truncate boolean NOT NULL,
           row_data jsonb,
           toast text[] NOT NULL,
           carry_from_pk text[] COLLATE "C",
           first_removal text,
           prior_live boolean NOT NULL DEFAULT false,
           PRIMARY KEY (relation_id, pk_index)
         ) ON COMMIT DROP`));
    }
    await this.run(() => (op.kind === 'merge' ? this.mergeSpilled(op.keys) : this.truncateSpilled(op.relationId)));
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
           "relationId" integer, schema text, "table" text, pk text[], "bornHere" boolean, "afterTruncate" boolean,
           "rowData" jsonb, "toastColumns" text[], "carryFromPk" text[], "firstRemoval" text)
       ), r AS (
         SELECT s.*, e.pk IS NOT NULL AS found, e.row_data AS e_row, e.toast AS e_toast,
                coalesce(e.carry_from_pk, e.pk) AS e_carry
           FROM s LEFT JOIN ${SPILL} e
             ON cardinality(s."toastColumns") > 0 AND e.relation_id = s."relationId"
            AND e.pk_index = pgtimewarp_store.index_key(coalesce(s."carryFromPk", s.pk))
       ), resolved AS (
         SELECT r.*,
                CASE WHEN found THEN ARRAY(SELECT c FROM unnest(r."toastColumns") c WHERE c = ANY (r.e_toast))
                     ELSE r."toastColumns" END AS left_toast
           FROM r
       ), merged AS (
         INSERT INTO ${SPILL} AS t
                (relation_id, schema_name, table_name, pk, pk_index, born_here, after_truncate, row_data, toast, carry_from_pk, first_removal)
         SELECT "relationId", schema, "table", pk, pgtimewarp_store.index_key(pk), "bornHere", "afterTruncate",
                CASE WHEN found
                     THEN "rowData" || coalesce((SELECT jsonb_object_agg(c, e_row -> c) FROM unnest("toastColumns") c
                                                  WHERE e_row ? c), '{}')
                     ELSE "rowData" END,
                left_toast,
                CASE WHEN cardinality(left_toast) = 0 THEN NULL WHEN found THEN e_carry ELSE "carryFromPk" END,
                "firstRemoval"
           FROM resolved
         ON CONFLICT (relation_id, pk_index) DO UPDATE
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
  private async truncateSpilled(relationId: number): Promise<void> {
    await this.store.query(
      `UPDATE ${SPILL}
          SET row_data = NULL, toast = '{}', carry_from_pk = NULL, first_removal = coalesce(first_removal, 'truncate')
        WHERE relation_id = $1 AND row_data IS NOT NULL`,
      [relationId],
    );
  }

  /** `n` more versions of `relationId` in this store transaction. */
  private countWritten(relationId: number, n: number): void {
    if (n > 0) this.written.set(relationId, (this.written.get(relationId) ?? 0) + n);
  }

  /**
   * Add this store transaction's versions to relation_stats, one statement
   * for all its tables.  The foreign key refuses a count for an incarnation
   * forgotten since relationIds() read it: the batch fails, and is retried
   * without that incarnation's versions, none of which are then left behind.
   */
  private async saveVersionCounts(): Promise<void> {
    if (this.written.size === 0) return;
    const ids = [...this.written.keys()].sort((a, b) => a - b);
    await this.store.query(
      `INSERT INTO pgtimewarp_store.relation_stats (relation_id, versions)
       SELECT * FROM unnest($1::integer[], $2::bigint[])
       ON CONFLICT (relation_id) DO UPDATE SET versions = relation_stats.versions + EXCLUDED.versions`,
      [ids, ids.map((id) => String(this.written.get(id)))],
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

  /**
   * A transaction's renames and drops of tracked tables (agent/ddl.ts): the
   * incarnation's name from its commit on, or its end.  Versions carry the
   * relation id, so names matter only to people and to lookups by name.
   */
  private async applyIdentity(txn: AssembledTransaction): Promise<void> {
    const commit = commitPoint(txn);
    for (const c of txn.identity ?? []) {
      if (c.kind !== 'columns' || (c.renamedColumns ?? []).length > 0) {
        await this.recordHealth('info', `tracked_${c.kind === 'columns' ? 'columns' : 'table'}_${c.kind === 'dropped' ? 'dropped' : 'renamed'}`,
          c.kind === 'renamed'
            ? `tracked table ${c.oldSchema}.${c.oldTable} was renamed to ${c.schema}.${c.table} at ${commit.lsn}; its history continues under the new name`
            : c.kind === 'dropped'
              ? `tracked table ${c.schema}.${c.table} was dropped at ${commit.lsn}; its history up to then stays in the store`
              : `columns of tracked table ${c.schema}.${c.table} were renamed at ${commit.lsn} (${(c.renamedColumns ?? []).map((r) => `${r.old} to ${r.new}`).join(', ')}); older versions read under the new names`,
          { relationId: c.relationId, lsn: commit.lsn });
      }
      if (c.kind === 'columns') {
        // a version written before a rename is read with the new name (the extension's rename_columns);
        // one written before a column was added reads its missing value from the addition on
        await this.store.query(
          `UPDATE pgtimewarp_store.tracked_relations
              SET columns = $2::jsonb, pk_columns = $3,
                  column_renames = CASE WHEN jsonb_array_length($4::jsonb) = 0 THEN column_renames
                                        ELSE coalesce(column_renames, '[]') || $4::jsonb END,
                  column_additions = CASE WHEN jsonb_array_length($5::jsonb) = 0 THEN column_additions
                                          ELSE coalesce(column_additions, '[]') || $5::jsonb END
            WHERE relation_id = $1`,
          [c.relationId, JSON.stringify(c.columns ?? {}), c.pkColumns,
            JSON.stringify((c.renamedColumns ?? []).map((r) => ({ lsn: commit.lsn, old: r.old, new: r.new }))),
            JSON.stringify((c.addedColumns ?? []).map((attnum) => ({ lsn: commit.lsn, attnum })))],
        );
      } else if (c.kind === 'renamed') {
        await this.store.query(
          `UPDATE pgtimewarp_store.tracked_relations SET schema_name = $2, table_name = $3 WHERE relation_id = $1`,
          [c.relationId, c.schema, c.table],
        );
        await this.store.query(
          `INSERT INTO pgtimewarp_store.relation_renames (relation_id, lsn, schema_name, table_name)
           SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM pgtimewarp_store.tracked_relations WHERE relation_id = $1)
           ON CONFLICT (relation_id, lsn) DO UPDATE SET schema_name = EXCLUDED.schema_name, table_name = EXCLUDED.table_name`,
          [c.relationId, commit.lsn, c.schema, c.table],
        );
      } else {
        // history is complete up to the drop: as if untracked there
        await this.store.query(
          `UPDATE pgtimewarp_store.tracked_relations
              SET dropped_lsn = $2, dropped_ts = $3,
                  untracked_lsn = coalesce(untracked_lsn, $2), untracked_ts = coalesce(untracked_ts, $3)
            WHERE relation_id = $1`,
          [c.relationId, commit.lsn, commit.ts],
        );
      }
    }
  }

  /** A spilled transaction: its versions from the merged pieces, then as any other. */
  private async applySpilled(txn: AssembledTransaction, relations: RelationIds): Promise<void> {
    const commit = commitPoint(txn);
    await this.writeSpilledVersions(commit.lsn, commit.ts);
    await this.endTruncated(txn, commit, relations);
    await this.recordCommits([commit]);
  }

  /**
   * The tracked incarnations of this node, read in the store transaction
   * that writes the versions: versions of one whose history was deleted
   * (pgtimewarp_forget) before they were stored are not written; relation
   * ids are never reused.
   */
  private async relationIds(): Promise<RelationIds> {
    const res = await this.store.query<{ relation_id: number }>(
      `SELECT relation_id FROM pgtimewarp_store.tracked_relations WHERE node_id = $1`,
      [this.nodeId],
    );
    return new Set(res.rows.map((r) => r.relation_id));
  }

  /**
   * Transactions in commit order, of which only the last may have
   * truncated tables: their versions, the TRUNCATEs' tombstones, their
   * commit times.
   */
  private async applyGroup(group: AssembledTransaction[], relations: RelationIds): Promise<void> {
    const commits = group.map(commitPoint);
    // Keys whose version before the group matters: where unchanged TOAST
    // values come from, and keys written after a TRUNCATE in their
    // transaction (insert or update, by whether a live version came before).
    const wanted = new Map<string, ProbedKey>();
    group.forEach((txn) => {
      for (const v of txn.versions) {
        if (v.rowData !== null && v.carryColumns.length > 0) {
          const from = v.carryFromPk ?? v.pk;
          wanted.set(versionKey(v.relationId, from), { relationId: v.relationId, pk: from });
        }
        if (v.opFromStore) wanted.set(versionKey(v.relationId, v.pk), { relationId: v.relationId, pk: v.pk });
      }
    });
    /** Each key's latest version's row data (null: a tombstone), from the store, then from this group as it is written. */
    const latest = wanted.size === 0 ? new Map<string, Latest>() : await this.latestVersions([...wanted.values()], relations);
    const rows: VersionRow[] = [];
    group.forEach((txn, i) => {
      const commit = commits[i]!;
      // every lookup in a transaction sees the keys as they were before it
      const made = txn.versions.flatMap((v) => {
        const relationId = v.relationId;
        // its history was deleted (pgtimewarp_forget) before the agent stored this version
        if (!relations.has(relationId)) return [];
        const op = v.opFromStore ? (livePrevious(v, latest) ? 'update' : 'insert') : v.op;
        return [{ v, row: { r: relationId, k: v.pk, l: commit.lsn, t: commit.ts, o: OP_CODES[op], d: withCarried(v, latest) } satisfies VersionRow }];
      });
      for (const { v, row } of made) {
        rows.push(row);
        this.countWritten(row.r, 1);
        latest.set(versionKey(v.relationId, v.pk), { rowData: row.d });
      }
    });
    if (rows.length > 0) await this.copyVersions(rows);
    const last = group[group.length - 1]!;
    await this.endTruncated(last, commits[commits.length - 1]!, relations);
    await this.recordCommits(commits);
  }

  /**
   * Append versions with COPY (text format): the store parses each field
   * once and inserts the rows in bulk, where an INSERT ... SELECT from one
   * JSON document parsed the document, then every field again.
   */
  private async copyVersions(rows: VersionRow[]): Promise<void> {
    const copy = this.store.query(copyFrom(
      'COPY pgtimewarp_store.row_versions (valid_from_lsn, valid_from_ts, relation_id, op, pk, pk_full, row_data) FROM STDIN',
    ));
    // the text is made chunk by chunk as the stream asks for it: a batch's
    // rows are in memory once, not once more as text
    await pipeline(Readable.from(copyChunks(rows)), copy);
  }

  /**
   * A transaction's TRUNCATEs: a 'truncate' tombstone for every key of the
   * table whose latest version before the commit holds a row, unless the
   * transaction itself wrote the key.  Reads every version of the table
   * (the store keeps no index of live rows); TRUNCATE is rare.
   */
  private async endTruncated(txn: AssembledTransaction, commit: CommitPoint, relations: RelationIds): Promise<void> {
    for (const { relationId } of txn.truncated) {
      if (!relations.has(relationId)) continue; // its history was deleted
      const tombstones = await this.store.query(
        `INSERT INTO pgtimewarp_store.row_versions (relation_id, pk, pk_full, valid_from_lsn, valid_from_ts, op, row_data)
         SELECT $1, l.pk, l.pk_full, $2, $3, 't', NULL
           FROM (SELECT DISTINCT ON (pk) pk, pk_full, op FROM pgtimewarp_store.row_versions
                  WHERE relation_id = $1 AND valid_from_lsn < $2
                  ORDER BY pk DESC, valid_from_lsn DESC) AS l
          WHERE l.op NOT IN ('d', 't')
            AND NOT EXISTS (SELECT 1 FROM pgtimewarp_store.row_versions w
                             WHERE w.relation_id = $1 AND w.pk = l.pk AND w.valid_from_lsn = $2)`,
        [relationId, commit.lsn, commit.ts],
      );
      this.countWritten(relationId, tombstones.rowCount ?? 0);
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
    // values not sent: from the latest version of the key they come from
    await this.store.query(
      `WITH prev AS (
         SELECT p.relation_id, p.pk_index, v.row_data
           FROM ${SPILL} p
           JOIN pgtimewarp_store.tracked_relations r ON r.relation_id = p.relation_id
          CROSS JOIN LATERAL (
                SELECT w.row_data FROM pgtimewarp_store.row_versions w
                 WHERE w.relation_id = r.relation_id
                   AND w.pk = pgtimewarp_store.index_key(coalesce(p.carry_from_pk, p.pk))
                 ORDER BY w.valid_from_lsn DESC LIMIT 1) AS v
          WHERE cardinality(p.toast) > 0 AND p.row_data IS NOT NULL AND v.row_data IS NOT NULL)
       UPDATE ${SPILL} p
          SET row_data = p.row_data || coalesce((SELECT jsonb_object_agg(c, prev.row_data -> c) FROM unnest(p.toast) c
                                                  WHERE prev.row_data ? c), '{}'),
              toast = '{}'
         FROM prev
        WHERE p.relation_id = prev.relation_id AND p.pk_index = prev.pk_index`,
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
    // keys with a version: present at commit, or removed having existed
    // before; whether a row was there before tells insert from update
    await this.store.query(
      `WITH prior AS (
         SELECT p.relation_id, p.pk_index, v.row_data IS NOT NULL AS live
           FROM ${SPILL} p
           JOIN pgtimewarp_store.tracked_relations r ON r.relation_id = p.relation_id
          CROSS JOIN LATERAL (
                SELECT w.row_data FROM pgtimewarp_store.row_versions w
                 WHERE w.relation_id = r.relation_id AND w.pk = p.pk_index AND w.valid_from_lsn < $1
                 ORDER BY w.valid_from_lsn DESC LIMIT 1) AS v
          WHERE p.row_data IS NOT NULL OR NOT (p.born_here OR p.after_truncate))
       UPDATE ${SPILL} p SET prior_live = prior.live
         FROM prior
        WHERE p.relation_id = prior.relation_id AND p.pk_index = prior.pk_index`,
      [commitLsn],
    );
    const inserted = await this.store.query<{ relation_id: number; n: string }>(
      `WITH inserted AS (
       INSERT INTO pgtimewarp_store.row_versions (relation_id, pk, pk_full, valid_from_lsn, valid_from_ts, op, row_data)
       SELECT r.relation_id, p.pk_index, CASE WHEN p.pk_index[1] IS NULL THEN p.pk END, $1, $2,
              CASE WHEN p.row_data IS NULL THEN CASE p.first_removal WHEN 'truncate' THEN 't' ELSE 'd' END
                   WHEN p.born_here THEN 'i'
                   WHEN p.after_truncate AND NOT p.prior_live THEN 'i'
                   ELSE 'u' END::"char",
              p.row_data
         FROM ${SPILL} p
         JOIN pgtimewarp_store.tracked_relations r ON r.relation_id = p.relation_id
        WHERE p.row_data IS NOT NULL OR NOT (p.born_here OR p.after_truncate)
       RETURNING relation_id)
       SELECT relation_id, count(*)::text AS n FROM inserted GROUP BY relation_id`,
      [commitLsn, commitTime],
    );
    for (const r of inserted.rows) {
      this.countWritten(r.relation_id, Number(r.n));
      this.spilledVersions += Number(r.n);
    }
  }

  /**
   * The latest stored version of each key (its row data, null for a
   * tombstone); keys with none are left out.  Each is one backward probe of
   * the primary key index.
   */
  private async latestVersions(keys: ProbedKey[], relations: RelationIds): Promise<Map<string, Latest>> {
    const probes = keys.flatMap((k, i) => (relations.has(k.relationId) ? [{ i, r: k.relationId, k: indexKey(k.pk) }] : []));
    const res = await this.store.query<{ i: number; row_data: Record<string, string | null> | null }>(
      `SELECT p.i, v.row_data
         FROM jsonb_to_recordset($1::jsonb) AS p(i integer, r integer, k text[])
        CROSS JOIN LATERAL (
              SELECT w.row_data FROM pgtimewarp_store.row_versions w
               WHERE w.relation_id = p.r AND w.pk = p.k
               ORDER BY w.valid_from_lsn DESC LIMIT 1) AS v`,
      [JSON.stringify(probes)],
    );
    return new Map(res.rows.map((r) => {
      const k = keys[r.i]!;
      return [versionKey(k.relationId, k.pk), { rowData: r.row_data }];
    }));
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

/**
 * A row_versions row as the group insert sends it (short names: the
 * statement parses every one of them): relation id, key, valid_from_lsn,
 * valid_from_ts, op code, row data.
 */
interface VersionRow {
  r: number;
  k: string[];
  l: string;
  t: string;
  o: OpCode;
  d: Record<string, string | null> | null;
}

/** The store's op codes (row_versions.op). */
type OpCode = 'b' | 'i' | 'u' | 'd' | 't';
const OP_CODES: Record<VersionOp, OpCode> = { insert: 'i', update: 'u', delete: 'd', truncate: 't' };

/** A key's latest version while a group is written: from the store, then from the group. */
interface Latest {
  rowData: Record<string, string | null> | null;
}

/** A text value as a field of COPY's text format. */
function copyText(value: string): string {
  return value.replace(/[\\\n\r\t]/g, (c) => COPY_ESCAPES[c]!);
}
const COPY_ESCAPES: Record<string, string> = { '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/** A text[] literal, every element quoted but NULL. */
function arrayLiteral(elements: Array<string | null>): string {
  return `{${elements.map((e) => (e === null ? 'NULL' : `"${e.replace(/["\\]/g, (c) => `\\${c}`)}"`)).join(',')}}`;
}

/** pk and pk_full as COPY fields: a long key is indexed by digest and kept whole (agent/key.ts). */
function keyFields(key: string[]): string {
  const index = indexKey(key);
  return index[0] === null
    ? `${copyText(arrayLiteral(index))}\t${copyText(arrayLiteral(key))}`
    : `${copyText(arrayLiteral(key))}\t\\N`;
}

/** The rows as COPY text, in chunks of about 256 kB, so the stream writes few, large buffers. */
function* copyChunks(rows: VersionRow[]): Generator<string> {
  let chunk = '';
  for (const x of rows) {
    chunk += `${x.l}\t${x.t}\t${x.r}\t${x.o}\t${keyFields(x.k)}\t${x.d === null ? '\\N' : copyText(JSON.stringify(x.d))}\n`;
    if (chunk.length >= 256 * 1024) {
      yield chunk;
      chunk = '';
    }
  }
  if (chunk.length > 0) yield chunk;
}

/** A key whose latest stored version a write needs. */
interface ProbedKey {
  relationId: number;
  pk: string[];
}

/** The relation ids of the incarnations the store has (not forgotten). */
type RelationIds = Set<number>;

/** Versions per group insert: bounds the statement's JSON (a held transaction alone can be 5,000 keys). */
const MAX_GROUP_VERSIONS = 10_000;

function versionKey(relationId: number, pk: string[]): string {
  return JSON.stringify([relationId, pk]);
}

/** Whether the version this one follows held a row (not a delete or truncate tombstone). */
function livePrevious(v: VersionWrite, previous: Map<string, Latest>): boolean {
  const prior = previous.get(versionKey(v.relationId, v.pk));
  return prior !== undefined && prior.rowData !== null;
}

/** The version's row data with unchanged TOAST values filled in from the previous version. */
function withCarried(v: VersionWrite, previous: Map<string, Latest>): Record<string, string | null> | null {
  if (v.rowData === null || v.carryColumns.length === 0) return v.rowData;
  const from = v.carryFromPk ?? v.pk;
  const prior = previous.get(versionKey(v.relationId, from))?.rowData;
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
