// Transaction assembly: decoded changes in, the row versions one committed
// transaction produces out.  Pure logic; the store writer applies the result.
//
// Semantics (DESIGN.md, "Semantics" and "Hard cases"):
// - Every version a transaction writes carries its commit LSN (the end of
//   its commit record, where it becomes visible: agent/writer.ts), so several
//   changes of one key in one transaction make one version: its state at
//   commit.  A key inserted and deleted in the same transaction leaves none.
// - A version's op comes from the key's first change in the transaction: a
//   first INSERT means the row did not exist before, so "insert"; anything
//   else means it did, so "update", or, if it is gone at commit, "delete" or
//   "truncate" after the statement that removed the row as it was before
//   (the first removal: DELETE 5; INSERT 5; TRUNCATE is a "delete").
// - A primary-key change closes the old key (a "delete" tombstone) and opens
//   the new one ("insert").
// - TRUNCATE closes every open version of the table.  A key written after
//   it in the same transaction gets a version if it exists at commit; only
//   the store knows whether it existed before, so the writer names the op.
// - A column an UPDATE left unchanged and TOASTed is not sent: its value is
//   taken from earlier in the transaction when known, else marked for the
//   writer to carry forward from the key's previous version in the store
//   (the baseline guarantees there is one).
// - Memory is bounded whatever a transaction's size: past a number of keys
//   (or bytes of values) the key states so far are handed, as SpillOps, to
//   the writer, which keeps them in a temporary table of its open store
//   transaction and merges later states of the same keys into them by the
//   rules above (agent/writer.ts).  The transaction then comes out at COMMIT
//   marked `spilled`, its versions in the store's temporary table.
// - Only tables tracked at the commit count: commit LSN > tracked_from_lsn,
//   and, once untracked, commit LSN <= untracked_lsn.  pgtimewarp_track and
//   _untrack announce themselves with transactional messages (prefix
//   "pgtimewarp"), which arrive in commit order like any change.  Any role
//   may write such a message (pg_logical_emit_message is PUBLIC), so a
//   message is only a claim, passed on for the agent to check against the
//   store (agent/poison.ts); one that is not a tracking event at all is
//   counted and passed on too, never an error.
// - A change that cannot be assembled (or decoded: the caller says so with
//   fail()) fails its transaction, not the stream: the rest of the
//   transaction is read and dropped, and its COMMIT yields it with
//   `failure` set and no versions.  The caller then knows the transaction by
//   its end LSN, which only COMMIT tells, and can skip it or stop there.

import {
  UNCHANGED_TOAST,
  type ColumnValue,
  type DecodedMessage,
  type Lsn,
  type RelationInfo,
  type RowImage,
  lsnFromText,
} from './decode.js';
import { canonicalKey } from './key.js';

export const TRACKING_MESSAGE_PREFIX = 'pgtimewarp';

/** A tracked incarnation of a table, as tracked_relations has it. */
export interface TrackedTable {
  /** The store's id of this incarnation: what its versions are written under. */
  relationId: number;
  /** The OID of the source table it records (null only in stores from before 0.3 written by hand). */
  relid: number | null;
  /** Its name now: the name changes reach the stream under from here on (see Catalog). */
  schema: string;
  table: string;
  /** Primary key columns, in key order (tracked_relations.pk_columns). */
  pkColumns: string[];
  /**
   * Other names each primary key column has in the transaction being read:
   * names it was given there, before the store knows (agent/ddl.ts).
   */
  pkAliases?: string[][];
  /** attnum -> name, as of the last DDL the agent followed (tracked_relations.columns); null if not known. */
  columns?: Record<string, string> | null;
  trackedFromLsn: Lsn;
  untrackedLsn: Lsn | null;
}

/** What the assembler needs to know about tables and types. */
export interface Catalog {
  /**
   * The incarnation a change to schema.table in a transaction committing at
   * `commitLsn` belongs to, if one records it: a name may have been another
   * table's before, or this table's under another name (agent/ddl.ts).
   */
  tracked(schema: string, table: string, commitLsn: Lsn): TrackedTable | undefined;
  /** The base type OID of a type OID (a domain's base type, else itself). */
  baseType(typeOid: number): number;
}

export type VersionOp = 'insert' | 'update' | 'delete' | 'truncate';

/** One version to write, valid from the transaction's commit LSN. */
export interface VersionWrite {
  /** The incarnation it belongs to (TrackedTable.relationId); schema and table name it for messages. */
  relationId: number;
  schema: string;
  table: string;
  /** Canonical key (agent/key.ts). */
  pk: string[];
  op: VersionOp;
  /** Column -> text output or null; null for delete and truncate. */
  rowData: Record<string, string | null> | null;
  /**
   * Columns whose value the stream did not send (unchanged TOAST) and that
   * were not set earlier in the transaction: take them from the key's
   * previous version in the store.
   */
  carryColumns: string[];
  /** Key whose previous version holds the carried values (the old key after a key change). */
  carryFromPk: string[] | null;
  /**
   * The key was first written after a TRUNCATE of its table in this
   * transaction, so whether it existed before the transaction is known only
   * to the store: the writer makes op "insert" or "update" by whether it
   * closed a live version of the key.
   */
  opFromStore: boolean;
}

/** A tracking change announced in the stream: a claim, until the store confirms it. */
export interface TrackingEvent {
  action: 'track' | 'untrack';
  nodeId: string;
  schema: string;
  table: string;
  /** The LSN the message names: tracked_from_lsn, or untracked_lsn. */
  lsn: Lsn;
}

/**
 * A "pgtimewarp" message {"action": "ddl", "first": id, "last": id}: the
 * extension's event triggers logged renames or drops of tables, rows first
 * to last of pgtimewarp.ddl_log, in this transaction.  A claim like a
 * tracking event: only the log rows this transaction wrote are to be
 * believed (pgtimewarp_ddl_events).
 */
export interface DdlClaim {
  first: number;
  last: number;
}

/** A "pgtimewarp" message that is neither a tracking event nor a DDL claim. */
export interface MalformedTrackingMessage {
  /** Where the message is in the WAL. */
  messageLsn: Lsn;
  /** Why it is not a tracking event, with the start of its content. */
  reason: string;
}

/** A tracked incarnation a transaction changed, with the name the stream gave it. */
export interface ChangedTable {
  relationId: number;
  schema: string;
  table: string;
}

/**
 * A key's state partway through a transaction, handed to the writer when the
 * transaction spills.  The same facts as the assembler's own key state, with
 * unchanged-TOAST columns listed apart from the values known.
 */
export interface SpilledKey {
  relationId: number;
  schema: string;
  table: string;
  pk: string[];
  bornHere: boolean;
  afterTruncate: boolean;
  /** The row at this point, without toastColumns; null once removed. */
  rowData: Record<string, string | null> | null;
  /**
   * Columns not sent (unchanged TOAST) and not set since the key's state
   * began: their values are those of key carryFromPk (or pk) as it was
   * before this state began.
   */
  toastColumns: string[];
  carryFromPk: string[] | null;
  firstRemoval: 'delete' | 'truncate' | null;
}

/**
 * What the writer must do, in order, for a transaction too big to hold:
 * merge key states (later states of a key continue earlier ones), or apply
 * a TRUNCATE to the states merged so far.
 */
export type SpillOp =
  | { kind: 'merge'; keys: SpilledKey[] }
  | { kind: 'truncate'; relationId: number };

export interface AssemblerOptions {
  /** Spill once the open transaction holds this many key states.  Default 5000. */
  spillKeys?: number;
  /** ... or roughly this many bytes of values.  Default 4 MiB. */
  spillBytes?: number;
}

export interface AssembledTransaction {
  /**
   * The transaction's key states went to the writer as SpillOps (`versions`
   * is empty): the writer makes the versions from what it merged.
   */
  spilled: boolean;
  xid: number;
  commitLsn: Lsn;
  endLsn: Lsn;
  commitTime: Date;
  /** The exact commit time, microseconds since 1970 (agent/decode.ts). */
  commitTimeMicros: bigint;
  /** Tables truncated by this transaction: close all their other open versions. */
  truncated: Array<{ relationId: number; schema: string; table: string }>;
  versions: VersionWrite[];
  /** Tracking events it carries, each once, at most MAX_TRACKING_EVENTS. */
  tracking: TrackingEvent[];
  /** DDL claims it carries, each once, at most MAX_TRACKING_EVENTS. */
  ddl: DdlClaim[];
  /**
   * It carried more distinct tracking events or DDL claims than are kept:
   * the store and the source, not the lists, say what changed.
   */
  trackingOverflow: boolean;
  /** "pgtimewarp" messages that are not tracking events: the first few, and how many in all. */
  malformedTracking: MalformedTrackingMessage[];
  malformedTrackingCount: number;
  /** Tracked tables it changed (whatever the versions: a spilled transaction has none here). */
  tables: ChangedTable[];
  /**
   * Why it could not be decoded or assembled (see fail()); then `versions`
   * is empty, and `tables` holds only those changed before the failure.
   */
  failure: Error | null;
  /** Roughly the bytes of row values the changes carried (0 when spilled): bounds a batch's memory. */
  bytes: number;
  /**
   * Renames and drops of tracked tables it made, verified against the
   * extension's DDL log (agent/ddl.ts); the agent sets them, the writer
   * stores them with the transaction.
   */
  identity?: IdentityChange[];
}

/**
 * A tracked incarnation renamed (its table now named schema.table),
 * dropped, or with columns renamed (or its columns first known: columns
 * set, no renames).
 */
export interface IdentityChange {
  kind: 'renamed' | 'dropped' | 'columns';
  relationId: number;
  schema: string;
  table: string;
  oldSchema: string;
  oldTable: string;
  /** For 'columns': attnum -> name after the change, the renames, and the primary key columns' names after it. */
  columns?: Record<string, string>;
  renamedColumns?: Array<{ old: string; new: string }>;
  pkColumns?: string[];
  /** For 'columns': attnums of the columns the change added (migrations/6_column_additions.sql). */
  addedColumns?: number[];
}

/** Distinct tracking events one transaction keeps; pgtimewarp_track writes one per table. */
export const MAX_TRACKING_EVENTS = 1000;
/** Malformed "pgtimewarp" messages one transaction keeps as examples (all are counted). */
const MALFORMED_EXAMPLES = 3;

/** The state of one key within the open transaction. */
interface KeyState {
  relationId: number;
  schema: string;
  table: string;
  pk: string[];
  /** The key's first change in this transaction was an INSERT. */
  bornHere: boolean;
  /** The key's first change came after a TRUNCATE of its table in this transaction. */
  afterTruncate: boolean;
  /** Row at this point of the transaction, or null once deleted. */
  row: Map<string, ColumnValue> | null;
  /**
   * The statement that first removed the key's row in this transaction: the
   * one that removed the row as it was before, which names a tombstone.
   */
  firstRemoval: 'delete' | 'truncate' | null;
  carryFromPk: string[] | null;
}

export class AssemblyError extends Error {}

/**
 * Feed it the decoded messages of the stream in order; it returns an
 * AssembledTransaction at each commit.
 */
export class TransactionAssembler {
  private open: {
    xid: number;
    finalLsn: Lsn;
    keys: Map<string, KeyState>;
    /** Rough size of the values held in `keys`. */
    bytes: number;
    /** Key states were handed to the writer. */
    spilled: boolean;
    /** By relation id. */
    truncated: Map<number, { relationId: number; schema: string; table: string }>;
    /** By trackingKey: a message repeated is one event. */
    tracking: Map<string, TrackingEvent>;
    ddl: Map<string, DdlClaim>;
    trackingOverflow: boolean;
    malformed: MalformedTrackingMessage[];
    malformedCount: number;
    /** By relation id. */
    tables: Map<number, ChangedTable>;
    failure: Error | null;
  } | null = null;

  private spillQueue: SpillOp[] = [];
  private readonly spillKeys: number;
  private readonly spillBytes: number;

  constructor(private readonly catalog: Catalog, options: AssemblerOptions = {}) {
    this.spillKeys = Math.max(1, options.spillKeys ?? 5_000);
    this.spillBytes = Math.max(1, options.spillBytes ?? 4 << 20);
  }

  /**
   * The spill work push() queued, in order, for the writer; empty unless the
   * open transaction outgrew the limits.  Take it after every push().
   */
  takeSpill(): SpillOp[] {
    const ops = this.spillQueue;
    this.spillQueue = [];
    return ops;
  }

  /** Between a BEGIN and its COMMIT. */
  get inTransaction(): boolean {
    return this.open !== null;
  }

  /** The transaction if `message` commits one, else null. */
  push(message: DecodedMessage): AssembledTransaction | null {
    switch (message.type) {
      case 'begin':
        if (this.open !== null) {
          throw new AssemblyError(`BEGIN of xid ${message.xid} inside xid ${this.open.xid}`);
        }
        this.open = {
          xid: message.xid, finalLsn: message.finalLsn, keys: new Map(), bytes: 0, spilled: false,
          truncated: new Map(), tracking: new Map(), ddl: new Map(), trackingOverflow: false, malformed: [], malformedCount: 0,
          tables: new Map(), failure: null,
        };
        return null;
      case 'commit':
        return this.commit(message.commitLsn, message.endLsn, message.commitTime, message.commitTimeMicros);
      case 'relation':
        return null;
      case 'message':
        if (message.transactional && message.prefix === TRACKING_MESSAGE_PREFIX) this.trackingMessage(message.lsn, message.content);
        return null;
      case 'insert':
      case 'update':
      case 'delete':
      case 'truncate':
        this.change(message);
        return null;
    }
  }

  /**
   * The open transaction cannot be decoded or assembled: drop what it holds,
   * ignore the rest of it, and yield it at COMMIT with this failure.
   */
  fail(err: Error): void {
    const open = this.require('a failure');
    if (open.failure !== null) return;
    open.failure = err;
    open.keys = new Map();
    open.bytes = 0;
    this.spillQueue = [];
  }

  private change(message: Extract<DecodedMessage, { type: 'insert' | 'update' | 'delete' | 'truncate' }>): void {
    const open = this.require('change');
    if (open.failure !== null) return;
    try {
      switch (message.type) {
        case 'insert':
          this.applyRow(message.relation, null, message.newRow, 'insert');
          break;
        case 'update':
          this.applyRow(message.relation, message.oldRow, message.newRow, 'update');
          break;
        case 'delete':
          this.applyDelete(message.relation, message.oldRow);
          break;
        case 'truncate':
          for (const relation of message.relations) this.applyTruncate(relation);
          return;
      }
    } catch (err) {
      // the same change fails the same way every time: the transaction's
      // failure, for the caller to decide on once COMMIT names it
      this.fail(err instanceof Error ? err : new AssemblyError(String(err)));
      return;
    }
    this.spillIfFull();
  }

  private trackingMessage(messageLsn: Lsn, content: string): void {
    const open = this.require('message');
    const message = readPgtimewarpMessage(content);
    if (typeof message === 'string') {
      open.malformedCount++;
      if (open.malformed.length < MALFORMED_EXAMPLES) open.malformed.push({ messageLsn, reason: message });
      return;
    }
    const [list, key, value]: [Map<string, TrackingEvent | DdlClaim>, string, TrackingEvent | DdlClaim] = message.kind === 'tracking'
      ? [open.tracking, trackingKey(message.event), message.event]
      : [open.ddl, `${message.claim.first}-${message.claim.last}`, message.claim];
    if (list.has(key)) return;
    if (list.size >= MAX_TRACKING_EVENTS) {
      open.trackingOverflow = true;
      return;
    }
    list.set(key, value);
  }

  private require(what: string): NonNullable<TransactionAssembler['open']> {
    if (this.open === null) {
      throw new AssemblyError(`${what} outside a transaction`);
    }
    return this.open;
  }

  /**
   * Whether changes to this table in the open transaction are recorded.
   * Decided here, mid-transaction, by the commit record's start (BEGIN's
   * final LSN; the end is known only at COMMIT).  For a tracked table the
   * two agree: pgtimewarp_track's lock means every earlier commit to the
   * table ended by tracked_from_lsn and every later one starts after it.
   */
  private trackedNow(relation: RelationInfo): TrackedTable | undefined {
    const open = this.require('change');
    const tracked = this.catalog.tracked(relation.schema, relation.table, open.finalLsn);
    if (tracked === undefined) return undefined;
    if (!recordingAt(tracked, open.finalLsn)) return undefined;
    open.tables.set(tracked.relationId, { relationId: tracked.relationId, schema: relation.schema, table: relation.table });
    return tracked;
  }

  private keyOf(relation: RelationInfo, tracked: TrackedTable, row: RowImage): string[] {
    const values: string[] = [];
    const types: number[] = [];
    for (const [i, pkName] of tracked.pkColumns.entries()) {
      // the column under the name the stream gives it (one it was renamed to in this transaction)
      const name = [pkName, ...(tracked.pkAliases?.[i] ?? [])].find((n) => row.has(n)) ?? pkName;
      const value = row.get(name);
      const column = relation.columns.find((c) => c.name === name);
      if (typeof value !== 'string' || column === undefined) {
        throw new AssemblyError(
          `change to ${relation.schema}.${relation.table} lacks primary key column "${name}" ` +
            `(the table's primary key is (${tracked.pkColumns.join(', ')}))`,
        );
      }
      values.push(value);
      types.push(this.catalog.baseType(column.typeOid));
    }
    return canonicalKey(values, types);
  }

  private stateFor(relation: RelationInfo, tracked: TrackedTable, pk: string[], firstOp: 'insert' | 'other'): KeyState {
    const open = this.require('change');
    const id = keyId(tracked.relationId, pk);
    let state = open.keys.get(id);
    if (state === undefined) {
      const afterTruncate = open.truncated.has(tracked.relationId);
      state = {
        relationId: tracked.relationId,
        schema: relation.schema,
        table: relation.table,
        pk,
        bornHere: firstOp === 'insert' && !afterTruncate,
        afterTruncate,
        row: null,
        firstRemoval: null,
        carryFromPk: null,
      };
      open.keys.set(id, state);
    }
    return state;
  }

  private applyRow(relation: RelationInfo, oldRow: RowImage | null, newRow: RowImage, kind: 'insert' | 'update'): void {
    const tracked = this.trackedNow(relation);
    if (tracked === undefined) return;
    const newPk = this.keyOf(relation, tracked, newRow);
    let carried: Map<string, ColumnValue> | null = null;
    let carryFromPk: string[] | null = null;

    if (kind === 'update' && oldRow !== null) {
      const oldPk = this.keyOf(relation, tracked, oldRow);
      if (keyId(tracked.relationId, oldPk) !== keyId(tracked.relationId, newPk)) {
        // key change: the old key is gone, the new one begins with its values
        const old = this.stateFor(relation, tracked, oldPk, 'other');
        carried = old.row;
        carryFromPk = old.row === null ? oldPk : old.carryFromPk ?? oldPk;
        old.row = null;
        old.firstRemoval ??= 'delete';
        const fresh = this.stateFor(relation, tracked, newPk, 'insert');
        fresh.row = mergeRow(newRow, carried);
        fresh.carryFromPk = carryFromPk;
        this.require('change').bytes += rowBytes(newRow);
        return;
      }
    }

    const state = this.stateFor(relation, tracked, newPk, kind === 'insert' ? 'insert' : 'other');
    state.row = mergeRow(newRow, state.row);
    this.require('change').bytes += rowBytes(newRow);
  }

  private applyDelete(relation: RelationInfo, oldRow: RowImage): void {
    const tracked = this.trackedNow(relation);
    if (tracked === undefined) return;
    const state = this.stateFor(relation, tracked, this.keyOf(relation, tracked, oldRow), 'other');
    state.row = null;
    state.firstRemoval ??= 'delete';
  }

  private applyTruncate(relation: RelationInfo): void {
    const tracked = this.trackedNow(relation);
    if (tracked === undefined) return;
    const open = this.require('truncate');
    if (open.spilled) {
      // states merged earlier are the writer's: it truncates them, after
      // merging those held here, which came before this TRUNCATE
      this.spill();
      this.spillQueue.push({ kind: 'truncate', relationId: tracked.relationId });
    }
    for (const state of open.keys.values()) {
      if (state.relationId === tracked.relationId && state.row !== null) {
        state.row = null;
        state.firstRemoval ??= 'truncate';
      }
    }
    open.truncated.set(tracked.relationId, { relationId: tracked.relationId, schema: relation.schema, table: relation.table });
  }

  private commit(commitLsn: Lsn, endLsn: Lsn, commitTime: Date, commitTimeMicros: bigint): AssembledTransaction {
    const open = this.require('COMMIT');
    if (commitLsn !== open.finalLsn) {
      throw new AssemblyError(`COMMIT at ${commitLsn} of a transaction that BEGIN said commits at ${open.finalLsn}`);
    }
    this.open = null;
    const common = {
      xid: open.xid, commitLsn, endLsn, commitTime, commitTimeMicros,
      tracking: [...open.tracking.values()], ddl: [...open.ddl.values()], trackingOverflow: open.trackingOverflow,
      malformedTracking: open.malformed, malformedTrackingCount: open.malformedCount,
      tables: [...open.tables.values()], failure: open.failure,
    };

    if (open.failure !== null) {
      // pieces it spilled before failing are the caller's to drop (StoreWriter.abandonSpill)
      return { ...common, spilled: open.spilled, truncated: [], versions: [], bytes: 0 };
    }
    if (open.spilled) {
      this.spillQueue.push({ kind: 'merge', keys: [...open.keys.values()].map(spilledKey) });
      return { ...common, spilled: true, truncated: [...open.truncated.values()], versions: [], bytes: 0 };
    }

    const versions: VersionWrite[] = [];
    for (const state of open.keys.values()) {
      if (state.row === null) {
        // gone at commit: a tombstone, unless the row never existed outside
        // this transaction; after a TRUNCATE, the writer's truncate step
        // closes it if it existed
        if (state.bornHere || state.afterTruncate) continue;
        versions.push({
          relationId: state.relationId, schema: state.schema, table: state.table, pk: state.pk,
          op: state.firstRemoval ?? 'delete',
          rowData: null, carryColumns: [], carryFromPk: null, opFromStore: false,
        });
        continue;
      }
      const rowData: Record<string, string | null> = {};
      const carryColumns: string[] = [];
      for (const [name, value] of state.row) {
        if (value === UNCHANGED_TOAST) carryColumns.push(name);
        else rowData[name] = value;
      }
      versions.push({
        relationId: state.relationId, schema: state.schema, table: state.table, pk: state.pk,
        op: state.bornHere ? 'insert' : 'update',
        rowData, carryColumns,
        carryFromPk: carryColumns.length > 0 ? state.carryFromPk ?? state.pk : null,
        opFromStore: state.afterTruncate,
      });
    }
    return { ...common, spilled: false, truncated: [...open.truncated.values()], versions, bytes: open.bytes };
  }

  private spillIfFull(): void {
    const open = this.open;
    if (open !== null && (open.keys.size >= this.spillKeys || open.bytes >= this.spillBytes)) this.spill();
  }

  /** Hand every key state held to the writer and start afresh. */
  private spill(): void {
    const open = this.require('spill');
    open.spilled = true;
    if (open.keys.size === 0) return;
    this.spillQueue.push({ kind: 'merge', keys: [...open.keys.values()].map(spilledKey) });
    open.keys = new Map();
    open.bytes = 0;
  }
}

function spilledKey(state: KeyState): SpilledKey {
  let rowData: Record<string, string | null> | null = null;
  const toastColumns: string[] = [];
  if (state.row !== null) {
    rowData = {};
    for (const [name, value] of state.row) {
      if (value === UNCHANGED_TOAST) toastColumns.push(name);
      else rowData[name] = value;
    }
  }
  return {
    relationId: state.relationId, schema: state.schema, table: state.table, pk: state.pk,
    bornHere: state.bornHere, afterTruncate: state.afterTruncate,
    rowData, toastColumns,
    carryFromPk: toastColumns.length > 0 ? state.carryFromPk : null,
    firstRemoval: state.firstRemoval,
  };
}

/** Roughly what a row image costs to hold: its text, and something per column. */
function rowBytes(row: RowImage): number {
  let bytes = 64;
  for (const [name, value] of row) bytes += 32 + name.length + (typeof value === 'string' ? value.length : 0);
  return bytes;
}

/** newRow with values it did not send (unchanged TOAST) taken from `earlier` when known. */
function mergeRow(newRow: RowImage, earlier: Map<string, ColumnValue> | null): Map<string, ColumnValue> {
  const merged = new Map<string, ColumnValue>();
  for (const [name, value] of newRow) {
    const before = earlier?.get(name);
    merged.set(name, value === UNCHANGED_TOAST && before !== undefined ? before : value);
  }
  return merged;
}

/** A key of an incarnation: the same row whatever name the stream gave its table. */
function keyId(relationId: number, pk: string[]): string {
  return JSON.stringify([relationId, pk]);
}

function trackingKey(e: TrackingEvent): string {
  return JSON.stringify([e.action, e.nodeId, e.schema, e.table, e.lsn.toString()]);
}

/**
 * Whether a table's changes in a transaction whose commit record starts at
 * `commitLsn` are recorded: after tracking began, not after it stopped.
 */
export function recordingAt(t: TrackedTable, commitLsn: Lsn): boolean {
  return commitLsn > t.trackedFromLsn && (t.untrackedLsn === null || commitLsn <= t.untrackedLsn);
}

/**
 * The JSON pgtimewarp_track / _untrack put in their logical message.
 * Throws AssemblyError for anything else; readPgtimewarpMessage says why instead.
 */
export function parseTrackingMessage(content: string): TrackingEvent {
  const message = readPgtimewarpMessage(content);
  if (typeof message === 'string') throw new AssemblyError(message);
  if (message.kind !== 'tracking') throw new AssemblyError(`not a tracking message: ${excerpt(content)}`);
  return message.event;
}

/** What a "pgtimewarp" transactional message claims. */
export type PgtimewarpMessage = { kind: 'tracking'; event: TrackingEvent } | { kind: 'ddl'; claim: DdlClaim };

/**
 * The claim a "pgtimewarp" message holds, or why it holds none.  Any role
 * can write such a message, so anything at all may arrive here: the answer
 * is never an exception, and quotes at most the start of it.
 */
export function readPgtimewarpMessage(content: string): PgtimewarpMessage | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(content);
  } catch {
    return `pgtimewarp message is not JSON: ${excerpt(content)}`;
  }
  const m = typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? parsed as Record<string, unknown> : {};
  const action = m['action'];
  if (action === 'ddl') {
    const first = m['first'];
    const last = m['last'];
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last) || (first as number) < 1 || (first as number) > (last as number)) {
      return `unexpected pgtimewarp message: ${excerpt(content)}`;
    }
    return { kind: 'ddl', claim: { first: first as number, last: last as number } };
  }
  const nodeId = m['node_id'];
  const schema = m['schema_name'];
  const table = m['table_name'];
  const lsn = m['lsn'];
  if (
    (action !== 'track' && action !== 'untrack') || typeof nodeId !== 'string' || typeof schema !== 'string' ||
    typeof table !== 'string' || typeof lsn !== 'string' || !LSN_TEXT.test(lsn)
  ) {
    return `unexpected pgtimewarp message: ${excerpt(content)}`;
  }
  return { kind: 'tracking', event: { action, nodeId, schema, table, lsn: lsnFromText(lsn) } };
}

const LSN_TEXT = /^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/;

/** The start of a message's content, for an error or a health event. */
function excerpt(content: string): string {
  return content.length <= 200 ? JSON.stringify(content) : `${JSON.stringify(content.slice(0, 200))}... (${content.length} characters)`;
}
