// Decoder for pgoutput, PostgreSQL's built-in logical replication output
// plugin, protocol version 1 (PostgreSQL docs, "Logical Replication Message
// Formats").  The agent starts it with
//   proto_version '1', publication_names 'pgtimewarp', messages 'true'
// and text (not binary) values, so each column arrives as its type's output
// function printed it under the connection's (canonical) settings.
//
// Each XLogData payload is exactly one pgoutput message.  LSNs in messages:
//   BEGIN   finalLsn   start of the transaction's commit record
//   COMMIT  commitLsn  start of the commit record (== BEGIN's finalLsn)
//           endLsn     end of the commit record; this is what to confirm
//                      after storing the transaction: a stream restarted at
//                      it skips exactly the transactions committed before.
// Timestamps are int64 microseconds since 2000-01-01 UTC.

import {
  UNCHANGED_TOAST,
  type ColumnValue,
  type DecodedMessage,
  type Decoder,
  type RelationColumn,
  type RelationInfo,
  type RowImage,
} from './decode.js';
import { pgTimestampToUnixMicros, unixMicrosToDate } from './pgtime.js';

/** The pgoutput protocol version this decoder reads. */
export const PGOUTPUT_PROTO_VERSION = '1';

/** A payload that is not a well-formed pgoutput v1 message. */
export class PgoutputDecodeError extends Error {
  override name = 'PgoutputDecodeError';
  constructor(
    message: string,
    /** Byte offset in the payload where decoding failed. */
    readonly offset: number,
    /** The message's type byte as a character ('' for an empty payload). */
    readonly messageType: string,
  ) {
    super(message);
  }
}

const MESSAGE_NAMES: Readonly<Record<string, string>> = {
  B: 'BEGIN',
  C: 'COMMIT',
  O: 'ORIGIN',
  R: 'RELATION',
  Y: 'TYPE',
  I: 'INSERT',
  U: 'UPDATE',
  D: 'DELETE',
  T: 'TRUNCATE',
  M: 'MESSAGE',
  // Not in protocol version 1; named only to make the error clearer.
  S: 'STREAM START (protocol version 2)',
  E: 'STREAM STOP (protocol version 2)',
  c: 'STREAM COMMIT (protocol version 2)',
  A: 'STREAM ABORT (protocol version 2)',
  b: 'BEGIN PREPARE (protocol version 3)',
  P: 'PREPARE (protocol version 3)',
  K: 'COMMIT PREPARED (protocol version 3)',
  r: 'ROLLBACK PREPARED (protocol version 3)',
  p: 'STREAM PREPARE (protocol version 3)',
};

/** RELATION column flag: part of the replica identity. */
const COLUMN_FLAG_KEY = 1;
/** MESSAGE flag: transactional (emitted inside a transaction, delivered at its commit). */
const MESSAGE_FLAG_TRANSACTIONAL = 1;

/** Reads one pgoutput message, naming the message and offset in every error. */
class MessageReader {
  offset = 0;
  readonly type: string;

  constructor(private readonly buffer: Buffer) {
    this.type = buffer.length > 0 ? String.fromCharCode(buffer[0] as number) : '';
  }

  fail(problem: string, offset = this.offset): never {
    const code = this.type.charCodeAt(0);
    const printable = code >= 0x21 && code <= 0x7e ? `'${this.type}' ` : '';
    const what = this.type === '' ? 'pgoutput message' : `pgoutput ${MESSAGE_NAMES[this.type] ?? 'unknown'} message (type ${printable}0x${code.toString(16).padStart(2, '0')})`;
    throw new PgoutputDecodeError(
      `${what}: ${problem} at byte offset ${offset} of ${this.buffer.length}`,
      offset,
      this.type,
    );
  }

  private need(bytes: number, what: string): void {
    if (this.offset + bytes > this.buffer.length) {
      this.fail(`truncated: ${what} needs ${bytes} bytes, ${this.buffer.length - this.offset} left`);
    }
  }

  uint8(what: string): number {
    this.need(1, what);
    return this.buffer.readUInt8(this.offset++);
  }

  char(what: string): string {
    return String.fromCharCode(this.uint8(what));
  }

  int16(what: string): number {
    this.need(2, what);
    const value = this.buffer.readInt16BE(this.offset);
    this.offset += 2;
    return value;
  }

  int32(what: string): number {
    this.need(4, what);
    const value = this.buffer.readInt32BE(this.offset);
    this.offset += 4;
    return value;
  }

  uint32(what: string): number {
    this.need(4, what);
    const value = this.buffer.readUInt32BE(this.offset);
    this.offset += 4;
    return value;
  }

  lsn(what: string): bigint {
    this.need(8, what);
    const value = this.buffer.readBigUInt64BE(this.offset);
    this.offset += 8;
    return value;
  }

  int64(what: string): bigint {
    this.need(8, what);
    const value = this.buffer.readBigInt64BE(this.offset);
    this.offset += 8;
    return value;
  }

  /** A NUL-terminated string. */
  cstring(what: string): string {
    const end = this.buffer.indexOf(0, this.offset);
    if (end < 0) this.fail(`truncated: ${what} has no terminating NUL`);
    const value = this.buffer.toString('utf8', this.offset, end);
    this.offset = end + 1;
    return value;
  }

  /** `length` bytes as UTF-8 text. */
  text(length: number, what: string): string {
    this.need(length, what);
    const value = this.buffer.toString('utf8', this.offset, this.offset + length);
    this.offset += length;
    return value;
  }

  end(): void {
    if (this.offset !== this.buffer.length) {
      this.fail(`${this.buffer.length - this.offset} unexpected trailing bytes`);
    }
  }
}

/**
 * pgoutput v1 -> DecodedMessage.  Keeps the relations announced by RELATION
 * messages (by OID, replaced when re-sent after a schema change), so one
 * decoder serves one stream from its start.
 *
 * Old row images: under REPLICA IDENTITY DEFAULT (or USING INDEX) pgoutput
 * sends the old key ('K') with every non-key column as NULL; those NULLs are
 * not data, so the decoded oldRow holds only the key columns.  A full old
 * row ('O', REPLICA IDENTITY FULL) is passed on whole.
 *
 * TYPE and ORIGIN messages decode to nothing: values arrive as text, and
 * the origin of a change does not matter to its history.
 */
export class PgoutputDecoder implements Decoder {
  private readonly relations = new Map<number, RelationInfo>();

  decode(payload: Buffer): DecodedMessage[] {
    const reader = new MessageReader(payload);
    if (payload.length === 0) reader.fail('empty payload');
    reader.offset = 1;
    const decoded = this.decodeBody(reader);
    reader.end();
    return decoded;
  }

  /** The relation last announced under `oid`, if any. */
  relation(oid: number): RelationInfo | undefined {
    return this.relations.get(oid);
  }

  private decodeBody(reader: MessageReader): DecodedMessage[] {
    switch (reader.type) {
      case 'B': {
        const finalLsn = reader.lsn('final LSN');
        const micros = pgTimestampToUnixMicros(reader.int64('commit timestamp'));
        const xid = reader.uint32('xid');
        return [{ type: 'begin', xid, finalLsn, commitTime: unixMicrosToDate(micros), commitTimeMicros: micros }];
      }
      case 'C': {
        const flagsAt = reader.offset;
        const flags = reader.uint8('flags');
        if (flags !== 0) reader.fail(`unknown flags ${flags}`, flagsAt);
        const commitLsn = reader.lsn('commit LSN');
        const endLsn = reader.lsn('end LSN');
        const micros = pgTimestampToUnixMicros(reader.int64('commit timestamp'));
        return [{ type: 'commit', commitLsn, endLsn, commitTime: unixMicrosToDate(micros), commitTimeMicros: micros }];
      }
      case 'O':
        reader.lsn('origin commit LSN');
        reader.cstring('origin name');
        return [];
      case 'Y':
        reader.uint32('type OID');
        reader.cstring('type namespace');
        reader.cstring('type name');
        return [];
      case 'R':
        return [{ type: 'relation', relation: this.decodeRelation(reader) }];
      case 'I': {
        const relation = this.lookUp(reader);
        this.expectTupleKind(reader, 'N');
        return [{ type: 'insert', relation, newRow: this.decodeTuple(reader, relation) }];
      }
      case 'U': {
        const relation = this.lookUp(reader);
        let kind = reader.char('tuple kind');
        let oldRow: RowImage | null = null;
        if (kind === 'K' || kind === 'O') {
          oldRow = this.decodeOldRow(reader, relation, kind);
          kind = reader.char('tuple kind');
        }
        if (kind !== 'N') reader.fail(`expected new tuple 'N', got '${kind}'`, reader.offset - 1);
        return [{ type: 'update', relation, oldRow, newRow: this.decodeTuple(reader, relation) }];
      }
      case 'D': {
        const relation = this.lookUp(reader);
        const kind = reader.char('tuple kind');
        if (kind !== 'K' && kind !== 'O') reader.fail(`expected old tuple 'K' or 'O', got '${kind}'`, reader.offset - 1);
        return [{ type: 'delete', relation, oldRow: this.decodeOldRow(reader, relation, kind) }];
      }
      case 'T': {
        const count = reader.uint32('relation count');
        reader.uint8('options'); // CASCADE / RESTART IDENTITY: the relations listed are what was emptied
        const relations: RelationInfo[] = [];
        for (let i = 0; i < count; i++) relations.push(this.lookUp(reader));
        return [{ type: 'truncate', relations }];
      }
      case 'M': {
        const flags = reader.uint8('flags');
        const lsn = reader.lsn('message LSN');
        const prefix = reader.cstring('prefix');
        const length = reader.uint32('content length');
        // The content is bytes (pg_logical_emit_message takes text or
        // bytea); invalid UTF-8 becomes U+FFFD rather than an error, so a
        // binary message of another application cannot stop the stream.
        const content = reader.text(length, 'content');
        return [{ type: 'message', transactional: (flags & MESSAGE_FLAG_TRANSACTIONAL) !== 0, lsn, prefix, content }];
      }
      default:
        return reader.fail('unsupported message type; this decoder reads pgoutput protocol version 1', 0);
    }
  }

  private decodeRelation(reader: MessageReader): RelationInfo {
    const oid = reader.uint32('relation OID');
    // pgoutput sends an empty namespace for pg_catalog.
    const schema = reader.cstring('namespace') || 'pg_catalog';
    const table = reader.cstring('relation name');
    reader.uint8('replica identity');
    const count = reader.int16('column count');
    const columns: RelationColumn[] = [];
    for (let i = 0; i < count; i++) {
      const flags = reader.uint8('column flags');
      const name = reader.cstring('column name');
      const typeOid = reader.uint32('column type OID');
      reader.int32('column type modifier');
      columns.push({ name, typeOid, isKey: (flags & COLUMN_FLAG_KEY) !== 0 });
    }
    const relation: RelationInfo = { oid, schema, table, columns };
    this.relations.set(oid, relation);
    return relation;
  }

  private lookUp(reader: MessageReader): RelationInfo {
    const at = reader.offset;
    const oid = reader.uint32('relation OID');
    const relation = this.relations.get(oid);
    if (relation === undefined) reader.fail(`relation OID ${oid} was not announced by a RELATION message`, at);
    return relation;
  }

  private expectTupleKind(reader: MessageReader, expected: string): void {
    const kind = reader.char('tuple kind');
    if (kind !== expected) reader.fail(`expected tuple '${expected}', got '${kind}'`, reader.offset - 1);
  }

  private decodeOldRow(reader: MessageReader, relation: RelationInfo, kind: 'K' | 'O'): RowImage {
    const row = this.decodeTuple(reader, relation);
    if (kind === 'O') return row;
    const key: RowImage = new Map();
    for (const column of relation.columns) {
      if (column.isKey) key.set(column.name, row.get(column.name) ?? null);
    }
    return key;
  }

  private decodeTuple(reader: MessageReader, relation: RelationInfo): RowImage {
    const countAt = reader.offset;
    const count = reader.int16('tuple column count');
    if (count !== relation.columns.length) {
      reader.fail(
        `tuple has ${count} columns, relation ${relation.schema}.${relation.table} has ${relation.columns.length}`,
        countAt,
      );
    }
    const row: RowImage = new Map();
    for (const column of relation.columns) {
      const kindAt = reader.offset;
      const kind = reader.char(`kind of column "${column.name}"`);
      let value: ColumnValue;
      switch (kind) {
        case 'n':
          value = null;
          break;
        case 'u':
          value = UNCHANGED_TOAST;
          break;
        case 't': {
          const length = reader.uint32(`length of column "${column.name}"`);
          value = reader.text(length, `value of column "${column.name}"`);
          break;
        }
        case 'b':
          return reader.fail(`binary value for column "${column.name}"; start pgoutput without the binary option`, kindAt);
        default:
          return reader.fail(`unknown kind '${kind}' for column "${column.name}"`, kindAt);
      }
      row.set(column.name, value);
    }
    return row;
  }
}
