// What a logical decoding plugin's output means to the agent, whichever
// plugin produced it.  The decoders (agent/pgoutput.ts, agent/wal2json.ts)
// turn the bytes of one XLogData message into DecodedMessage values; the
// transaction assembler consumes them without knowing the plugin.
//
// LSNs are bigint: a pg_lsn is 64 bits and JavaScript numbers hold 53.

export type Lsn = bigint;

/** A value TOASTed out of line and unchanged by an UPDATE: not sent. */
export const UNCHANGED_TOAST: unique symbol = Symbol('unchanged TOAST value');
export type Unchanged = typeof UNCHANGED_TOAST;

/**
 * A column value as the walsender printed it (its type's output function
 * under the connection's settings, i.e. agent/key.ts CANONICAL_SETTINGS),
 * null for SQL NULL, or UNCHANGED_TOAST.
 */
export type ColumnValue = string | null | Unchanged;

export interface RelationColumn {
  name: string;
  /** pg_type OID of the column's type (a domain's own OID, not its base type). */
  typeOid: number;
  /** Part of the replica identity (the primary key, for tracked tables). */
  isKey: boolean;
}

/** A table as the stream describes it; re-sent after every schema change. */
export interface RelationInfo {
  /** Source OID: a cache key within one stream, never stored as identity. */
  oid: number;
  schema: string;
  table: string;
  columns: RelationColumn[];
}

/** Column values by column name, in the relation's column order. */
export type RowImage = Map<string, ColumnValue>;

export type DecodedMessage =
  | {
      type: 'begin';
      xid: number;
      finalLsn: Lsn;
      commitTime: Date;
      /**
       * commitTime exactly, in microseconds since 1970-01-01 UTC (commitTime
       * is this rounded down to milliseconds).  What the store records: a
       * commit time cut to milliseconds could resolve a time between the two
       * to a commit that had not happened yet.
       */
      commitTimeMicros: bigint;
    }
  | {
      type: 'commit';
      /** Start of the commit record (equals BEGIN's finalLsn). */
      commitLsn: Lsn;
      /**
       * End of the commit record: where the transaction becomes visible (the
       * LSN its versions are valid from) and where a restart resumes after it.
       */
      endLsn: Lsn;
      commitTime: Date;
      /**
       * commitTime exactly, in microseconds since 1970-01-01 UTC (commitTime
       * is this rounded down to milliseconds).  What the store records: a
       * commit time cut to milliseconds could resolve a time between the two
       * to a commit that had not happened yet.
       */
      commitTimeMicros: bigint;
    }
  | { type: 'relation'; relation: RelationInfo }
  | { type: 'insert'; relation: RelationInfo; newRow: RowImage }
  | {
      type: 'update';
      relation: RelationInfo;
      /** The old key (or full old row) when the key changed or identity is FULL. */
      oldRow: RowImage | null;
      newRow: RowImage;
    }
  | { type: 'delete'; relation: RelationInfo; oldRow: RowImage }
  | { type: 'truncate'; relations: RelationInfo[] }
  | { type: 'message'; transactional: boolean; lsn: Lsn; prefix: string; content: string };

/** Bytes of one XLogData payload in, zero or more messages out. */
export interface Decoder {
  decode(payload: Buffer): DecodedMessage[];
}

export function lsnFromText(text: string): Lsn {
  const match = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text);
  if (match === null) {
    throw new Error(`not an LSN: ${JSON.stringify(text)}`);
  }
  return (BigInt(`0x${match[1]}`) << 32n) | BigInt(`0x${match[2]}`);
}

export function lsnToText(lsn: Lsn): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}
