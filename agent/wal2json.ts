// The wal2json decoder: wal2json format-version 2, one JSON document per
// XLogData message, into the plugin-independent DecodedMessage (decode.ts).
// For hosts that already run wal2json; pgoutput is the default.
//
// What the wal2json path keeps and loses, measured against wal2json 2.5
// (Debian, PostgreSQL 15) by test/e2e/wal2json.test.ts:
//
// Kept exactly (the same text pgoutput would send):
// - int2/int4/int8/oid/float4/float8/numeric arrive as bare JSON numbers;
//   agent/exact-json.ts keeps each literal's text, so int8 9007199254740993,
//   -9223372036854775808 and 40-digit numerics come through digit for digit
//   (JSON.parse would round them).  float8 -0, 1e+300, 5e-324 likewise.
// - bool arrives as JSON true/false and becomes 't'/'f' again.
// - bytea arrives as its hex output with the leading "\x" cut off; the
//   decoder puts it back.  This needs bytea_output=hex (CANONICAL_SETTINGS);
//   a value that is not hex digits is an error, not a guess.
// - Every other type (json, jsonb, arrays, timestamptz, interval, money,
//   uuid, enums, text with any unicode, quotes, backslashes, control
//   characters) arrives as a JSON string holding its text output.  Domains
//   count as "other types" even over numeric, bool or bytea: wal2json
//   decides by the column's own type OID, so a domain over numeric keeps
//   'NaN' exactly and a domain over bytea keeps its "\x".
// - Values are printed under the walsender session's settings: the
//   replication connection must carry canonicalOptions() (agent/key.ts), or
//   timestamptz, date, interval come out in another style or zone.
// - Unchanged TOASTed values under REPLICA IDENTITY FULL: the new tuple
//   omits them but the old one ("identity") has them, and they are taken
//   from there.
//
// Lost, because wal2json 2.5 does not send it:
// - NaN, Infinity and -Infinity of float4, float8 and numeric arrive as JSON
//   null, indistinguishable from SQL NULL; they become NULL.  (wal2json 2.6's
//   source has numeric-data-types-as-string, which 2.5 refuses as unknown;
//   the decoder already takes numbers sent as strings as their text.)
// - An UPDATE leaves out every column whose value is TOASTed out of line and
//   unchanged; no marker, no null.  The decoder knows the table's columns and
//   sends such a column as UNCHANGED_TOAST, for the assembler to carry the
//   value forward.  It can only know columns it has seen in an INSERT or
//   UPDATE, or been told about with knowRelation(): after a restart the
//   agent must call knowRelation() for each tracked table, or the first
//   UPDATE that omits a column would drop it from the row.
// - There is no DDL and no relation message.  The decoder infers a table's
//   columns from the changes: an INSERT lists them all; an UPDATE shows
//   added, renamed and retyped columns by their position (attnum).  A
//   dropped column is recognized at once when its type is fixed-length
//   (it cannot be TOASTed, so its absence means it is gone); a dropped
//   variable-length column looks exactly like an unchanged TOASTed one and is
//   carried forward as UNCHANGED_TOAST until the next INSERT into the table.
// - The table's OID is not sent: RelationInfo.oid is 0; relations are known
//   by schema and table name (a renamed table looks like a new one).
// - A logical message's content is cut at its first NUL byte.  A payload
//   that is not valid UTF-8 is an error, not a guess (the decoder assumes a
//   UTF8 database, where all text is valid UTF-8), except a logical
//   message's: any role can write one of any bytes, and its content comes
//   with U+FFFD for the bytes that are not UTF-8.
// - A DELETE under REPLICA IDENTITY DEFAULT carries the key columns only;
//   oldRow holds just those (pgoutput's key tuple holds the same values).
// - Commit timestamps arrive as ISO text in the session's time zone, with
//   microseconds: commitTimeMicros keeps them exactly (commitTime, a Date,
//   to the millisecond, as for pgoutput).
//
// Options (WAL2JSON_OPTIONS, plus add-tables from addTablesOption()):
// - format-version 2: one object per change instead of one per transaction,
//   so a large transaction streams through in bounded memory.
// - include-transaction, include-xids, include-timestamp, include-lsn: the
//   B and C objects with xid, commit timestamp, commit LSN ("lsn") and end
//   of the commit record ("nextlsn").
// - include-type-oids 1, include-types 0: wal2json chooses how to print a
//   value by the column's type OID, so the OID is what the decoder needs
//   (and what RelationColumn.typeOid is); type names only cost bytes.
// - include-pk: the primary key's column names on every change (isKey).
// - include-column-positions: attnum of each column, to follow ADD / DROP /
//   RENAME COLUMN without relation messages.
// - include-schemas (the default, sent anyway): the schema of each change.
// - add-msg-prefixes pgtimewarp: only the extension's tracking messages.
//   wal2json 2.5 has no option to turn messages on: they are always decoded
//   (action "M"), subject to the prefix filters.
// - add-tables: the tracked tables; changes to other tables are filtered out
//   by the server (their transactions still send empty B/C pairs).  An empty
//   list means no table at all.  The table set is fixed for the life of a
//   stream: after pgtimewarp_track the agent must restart the stream with
//   the new list before it confirms past the tracking transaction, or the
//   new table's first changes are filtered out for good.
// Not sent: write-in-chunks (format 1 only), include-not-null (a NOT NULL
// column with null would tell NaN-or-Infinity from NULL, but not which),
// numeric-data-types-as-string (2.5 refuses unknown options, so the stream
// would not start).

import { TRACKING_MESSAGE_PREFIX } from './assemble.js';
import {
  UNCHANGED_TOAST,
  lsnFromText,
  type DecodedMessage,
  type Decoder,
  type Lsn,
  type RelationColumn,
  type RelationInfo,
  type RowImage,
} from './decode.js';
import { JsonNumber, parseExactJson, type JsonObject, type JsonValue } from './exact-json.js';
import { unixMicrosToDate } from './pgtime.js';

/** The plugin options the agent passes, apart from add-tables. */
export const WAL2JSON_OPTIONS: Readonly<Record<string, string>> = Object.freeze({
  'format-version': '2',
  'include-transaction': '1',
  'include-xids': '1',
  'include-timestamp': '1',
  'include-lsn': '1',
  'include-schemas': '1',
  'include-types': '0',
  'include-type-oids': '1',
  'include-pk': '1',
  'include-column-positions': '1',
  'add-msg-prefixes': TRACKING_MESSAGE_PREFIX,
});

export interface TableName {
  schema: string;
  table: string;
}

/**
 * The value of wal2json's add-tables option selecting exactly these tables.
 *
 * wal2json splits the list at unescaped commas and whitespace, then each
 * entry at its first unescaped '.', drops every backslash and keeps the
 * character after it; "*" alone (or "*." leading) is a wildcard.  So every
 * backslash, comma, period, asterisk, quote and whitespace character in a
 * name is escaped with a backslash.  An empty list selects no table.
 */
export function addTablesOption(tables: readonly TableName[]): string {
  return tables.map(({ schema, table }) => `${escapeTableName(schema)}.${escapeTableName(table)}`).join(',');
}

function escapeTableName(name: string): string {
  if (name.length === 0) throw new Error('empty schema or table name');
  if (name.includes('\0')) throw new Error(`name contains a NUL character: ${JSON.stringify(name)}`);
  return name.replace(/[\\,.*'\s]/g, (c) => `\\${c}`);
}

/** All options for a stream of these tables, in the order to send them. */
export function wal2jsonOptions(tables: readonly TableName[]): Array<[string, string]> {
  return [...Object.entries(WAL2JSON_OPTIONS), ['add-tables', addTablesOption(tables)]];
}

/** A column as the catalog has it, for knowRelation(). */
export interface CatalogColumn extends RelationColumn {
  /** pg_attribute.attnum: what wal2json calls the column's position. */
  attnum: number;
}

export class Wal2jsonError extends Error {
  override name = 'Wal2jsonError';
}

const BOOL_OID = 16;
const BYTEA_OID = 17;

/**
 * Built-in types of fixed length: never TOASTed, so never left out of an
 * UPDATE; one missing from an UPDATE has been dropped.
 */
const FIXED_LENGTH_TYPES: ReadonlySet<number> = new Set([
  16, 18, 19, 20, 21, 23, 24, 26, 27, 28, 29, // bool "char" name int8 int2 int4 regproc oid tid xid cid
  600, 601, 603, 628, 700, 701, 718, 774, 790, 829, // point lseg box line float4 float8 circle macaddr8 money macaddr
  1082, 1083, 1114, 1184, 1186, 1266, // date time timestamp timestamptz interval timetz
  2202, 2203, 2204, 2205, 2206, 2950, 3220, 3734, 3769, 4089, 4096, 4191, 5069, // reg*, uuid, pg_lsn, xid8
]);

interface KnownColumn {
  name: string;
  typeOid: number;
  position: number;
}

interface KnownRelation {
  info: RelationInfo;
  columns: KnownColumn[];
  /** A 'relation' message for `info` has been emitted. */
  announced: boolean;
}

/** One entry of a "columns" or "identity" array. */
interface WireColumn {
  name: string;
  typeOid: number;
  /** Present in "columns" (include-column-positions), absent in "identity". */
  position: number | null;
  /** Text output or null; never UNCHANGED_TOAST (left-out columns have no entry). */
  value: string | null;
}

export class Wal2jsonDecoder implements Decoder {
  private readonly relations = new Map<string, KnownRelation>();
  private readonly utf8 = new TextDecoder('utf-8', { fatal: true });

  decode(payload: Buffer): DecodedMessage[] {
    let text: string;
    let utf8 = true;
    try {
      text = this.utf8.decode(payload);
    } catch {
      // Any role can write a logical message of any bytes (wal2json copies
      // them as they are): such a message is decoded with U+FFFD for what is
      // not UTF-8, for the agent to ignore as not pgtimewarp's, rather than
      // stop the stream.  Anything else that is not UTF-8 is an error.
      text = new TextDecoder('utf-8').decode(payload);
      utf8 = false;
    }
    let doc: JsonValue;
    try {
      doc = parseExactJson(text);
    } catch (err) {
      if (!utf8) throw notUtf8();
      throw new Wal2jsonError(`wal2json output is not JSON: ${(err as Error).message}: ${excerpt(text)}`);
    }
    if (!(doc instanceof Map) || (!utf8 && doc.get('action') !== 'M')) {
      if (!utf8) throw notUtf8();
      throw new Wal2jsonError(`wal2json output is not a JSON object: ${excerpt(text)}`);
    }
    try {
      return this.decodeObject(doc);
    } catch (err) {
      if (err instanceof Wal2jsonError) err.message += `: ${excerpt(text)}`;
      throw err;
    }
  }

  /**
   * Tell the decoder a table's columns as the catalog has them now (attnum
   * > 0, not dropped), so that an UPDATE leaving out an unchanged TOASTed
   * column is recognized even before the table's first INSERT in this
   * stream.  Call it for every tracked table before streaming.
   */
  knowRelation(schema: string, table: string, columns: readonly CatalogColumn[]): void {
    const known = [...columns]
      .sort((a, b) => a.attnum - b.attnum)
      .map((c) => ({ name: c.name, typeOid: c.typeOid, position: c.attnum }));
    const keys = new Set(columns.filter((c) => c.isKey).map((c) => c.name));
    this.relations.set(relationKey(schema, table), {
      info: relationInfo(schema, table, known, keys),
      columns: known,
      announced: false,
    });
  }

  private decodeObject(doc: JsonObject): DecodedMessage[] {
    const action = stringField(doc, 'action');
    switch (action) {
      case 'B': {
        const micros = timestampField(doc);
        return [
          {
            type: 'begin',
            xid: xidField(doc),
            finalLsn: lsnField(doc, 'lsn', 'include-lsn'),
            commitTime: unixMicrosToDate(micros),
            commitTimeMicros: micros,
          },
        ];
      }
      case 'C': {
        const micros = timestampField(doc);
        return [
          {
            type: 'commit',
            commitLsn: lsnField(doc, 'lsn', 'include-lsn'),
            endLsn: lsnField(doc, 'nextlsn', 'include-lsn'),
            commitTime: unixMicrosToDate(micros),
            commitTimeMicros: micros,
          },
        ];
      }
      case 'I':
        return this.insert(doc);
      case 'U':
        return this.update(doc);
      case 'D':
        return this.delete(doc);
      case 'T':
        return this.truncate(doc);
      case 'M':
        return [
          {
            type: 'message',
            transactional: booleanField(doc, 'transactional'),
            lsn: lsnField(doc, 'lsn', 'include-lsn'),
            prefix: stringField(doc, 'prefix'),
            content: stringField(doc, 'content'),
          },
        ];
      default:
        throw new Wal2jsonError(`unknown wal2json action ${JSON.stringify(action)}`);
    }
  }

  private insert(doc: JsonObject): DecodedMessage[] {
    const { schema, table } = tableOf(doc);
    const columns = wireColumns(doc, 'columns', true);
    const { relation, announce } = this.relationFor(schema, table, columns, primaryKey(doc), true);
    const newRow: RowImage = new Map();
    const byName = new Map(columns.map((c) => [c.name, c]));
    for (const column of relation.columns) {
      newRow.set(column.name, byName.get(column.name)?.value ?? null);
    }
    return [...announce, { type: 'insert', relation, newRow }];
  }

  private update(doc: JsonObject): DecodedMessage[] {
    const { schema, table } = tableOf(doc);
    const columns = wireColumns(doc, 'columns', true);
    const identity = wireColumns(doc, 'identity', false);
    const { relation, announce } = this.relationFor(schema, table, columns, primaryKey(doc), false);

    const sent = new Map(columns.map((c) => [c.name, c.value]));
    const old = new Map(identity.map((c) => [c.name, c.value]));
    const newRow: RowImage = new Map();
    for (const column of relation.columns) {
      const value = sent.get(column.name);
      if (value !== undefined) {
        newRow.set(column.name, value);
      } else if (old.has(column.name)) {
        // left out as unchanged TOAST, so equal to the old value, which a
        // REPLICA IDENTITY FULL old tuple carries in full
        newRow.set(column.name, old.get(column.name) ?? null);
      } else {
        newRow.set(column.name, UNCHANGED_TOAST);
      }
    }

    // wal2json always sends an identity: the old key when the key changed
    // (or the whole old row under REPLICA IDENTITY FULL), else the key read
    // from the new row.  Only an identity that differs says something.
    const unchanged = identity.every((c) => newRow.get(c.name) === c.value);
    const oldRow: RowImage | null = unchanged ? null : new Map(identity.map((c) => [c.name, c.value]));
    return [...announce, { type: 'update', relation, oldRow, newRow }];
  }

  private delete(doc: JsonObject): DecodedMessage[] {
    const { schema, table } = tableOf(doc);
    const identity = wireColumns(doc, 'identity', false);
    const keys = primaryKey(doc);
    const known = this.relations.get(relationKey(schema, table));
    let relation: RelationInfo;
    let announce: DecodedMessage[] = [];
    if (known !== undefined) {
      ({ relation, announce } = this.remember(schema, table, known.columns, keys));
    } else {
      // Only the identity columns are known; not enough to remember the table.
      relation = {
        oid: 0,
        schema,
        table,
        columns: identity.map((c) => ({ name: c.name, typeOid: c.typeOid, isKey: keys.has(c.name) })),
      };
    }
    const oldRow: RowImage = new Map(identity.map((c) => [c.name, c.value]));
    return [...announce, { type: 'delete', relation, oldRow }];
  }

  private truncate(doc: JsonObject): DecodedMessage[] {
    const { schema, table } = tableOf(doc);
    const relation = this.relations.get(relationKey(schema, table))?.info ?? { oid: 0, schema, table, columns: [] };
    // wal2json sends one T per table of a TRUNCATE statement
    return [{ type: 'truncate', relations: [relation] }];
  }

  /**
   * The table's columns after this change: all of them for an INSERT; for an
   * UPDATE, those known before, updated and extended by position with the
   * ones sent, less fixed-length ones not sent (dropped: only TOASTed
   * values are left out).
   */
  private relationFor(
    schema: string,
    table: string,
    sent: readonly WireColumn[],
    keys: ReadonlySet<string>,
    complete: boolean,
  ): { relation: RelationInfo; announce: DecodedMessage[] } {
    const known = this.relations.get(relationKey(schema, table));
    const byPosition = new Map<number, KnownColumn>();
    if (!complete && known !== undefined) {
      const sentPositions = new Set(sent.map((c) => c.position));
      const sentNames = new Set(sent.map((c) => c.name));
      for (const column of known.columns) {
        if (sentPositions.has(column.position)) continue;
        if (FIXED_LENGTH_TYPES.has(column.typeOid)) continue; // dropped
        if (sentNames.has(column.name)) continue; // dropped, and the name reused
        byPosition.set(column.position, column);
      }
    }
    for (const { name, typeOid, position } of sent) {
      if (position === null) throw new Wal2jsonError(`column "${name}" has no position`);
      byPosition.set(position, { name, typeOid, position });
    }
    const columns = [...byPosition.values()].sort((a, b) => a.position - b.position);
    return this.remember(schema, table, columns, keys);
  }

  /** Store the table's shape; a 'relation' message when it is new or changed. */
  private remember(
    schema: string,
    table: string,
    columns: KnownColumn[],
    keys: ReadonlySet<string>,
  ): { relation: RelationInfo; announce: DecodedMessage[] } {
    const key = relationKey(schema, table);
    const known = this.relations.get(key);
    const info = relationInfo(schema, table, columns, keys);
    if (known !== undefined && known.announced && sameRelation(known.info, info)) {
      return { relation: known.info, announce: [] };
    }
    this.relations.set(key, { info, columns, announced: true });
    return { relation: info, announce: [{ type: 'relation', relation: info }] };
  }
}

function relationInfo(schema: string, table: string, columns: readonly KnownColumn[], keys: ReadonlySet<string>): RelationInfo {
  return {
    oid: 0,
    schema,
    table,
    columns: columns.map((c) => ({ name: c.name, typeOid: c.typeOid, isKey: keys.has(c.name) })),
  };
}

function sameRelation(a: RelationInfo, b: RelationInfo): boolean {
  return (
    a.columns.length === b.columns.length &&
    a.columns.every((c, i) => {
      const d = b.columns[i];
      return d !== undefined && c.name === d.name && c.typeOid === d.typeOid && c.isKey === d.isKey;
    })
  );
}

function relationKey(schema: string, table: string): string {
  return JSON.stringify([schema, table]);
}

/** The column's text output from what wal2json printed for it. */
function columnValue(raw: JsonValue, typeOid: number, name: string): string | null {
  if (raw === null) return null;
  if (raw instanceof JsonNumber) return raw.text;
  if (typeof raw === 'boolean') {
    if (typeOid !== BOOL_OID) throw new Wal2jsonError(`column "${name}" of type ${typeOid} is a JSON boolean`);
    return raw ? 't' : 'f';
  }
  if (typeof raw === 'string') {
    if (typeOid !== BYTEA_OID) return raw;
    // wal2json cuts the "\x" off bytea's hex output
    if (raw.length % 2 !== 0 || !/^[0-9a-f]*$/.test(raw)) {
      throw new Wal2jsonError(`bytea column "${name}" is not hex output: the session must have bytea_output=hex`);
    }
    return `\\x${raw}`;
  }
  throw new Wal2jsonError(`column "${name}" has a JSON ${Array.isArray(raw) ? 'array' : 'object'} value`);
}

function wireColumns(doc: JsonObject, field: 'columns' | 'identity', positioned: boolean): WireColumn[] {
  const list = doc.get(field);
  if (!Array.isArray(list)) {
    throw new Wal2jsonError(`"${field}" is missing or not an array`);
  }
  return list.map((entry) => {
    if (!(entry instanceof Map)) throw new Wal2jsonError(`an entry of "${field}" is not an object`);
    const name = stringField(entry, 'name');
    const typeOid = integerField(entry, 'typeoid', 'include-type-oids');
    if (!entry.has('value')) throw new Wal2jsonError(`column "${name}" has no value`);
    const position = positioned ? integerField(entry, 'position', 'include-column-positions') : null;
    return { name, typeOid, position, value: columnValue(entry.get('value') ?? null, typeOid, name) };
  });
}

function primaryKey(doc: JsonObject): Set<string> {
  const list = doc.get('pk');
  if (!Array.isArray(list)) throw new Wal2jsonError('"pk" is missing (include-pk)');
  return new Set(
    list.map((entry) => {
      if (!(entry instanceof Map)) throw new Wal2jsonError('an entry of "pk" is not an object');
      return stringField(entry, 'name');
    }),
  );
}

function tableOf(doc: JsonObject): TableName {
  return { schema: stringField(doc, 'schema', 'include-schemas'), table: stringField(doc, 'table') };
}

function stringField(doc: JsonObject, field: string, option?: string): string {
  const value = doc.get(field);
  if (typeof value !== 'string') throw missingField(field, 'a string', option);
  return value;
}

function booleanField(doc: JsonObject, field: string): boolean {
  const value = doc.get(field);
  if (typeof value !== 'boolean') throw missingField(field, 'a boolean');
  return value;
}

function integerField(doc: JsonObject, field: string, option?: string): number {
  const value = doc.get(field);
  if (!(value instanceof JsonNumber) || !/^\d{1,10}$/.test(value.text)) throw missingField(field, 'an integer', option);
  return Number(value.text);
}

function xidField(doc: JsonObject): number {
  const xid = integerField(doc, 'xid', 'include-xids');
  if (xid > 0xffffffff) throw new Wal2jsonError(`xid ${xid} is out of range`);
  return xid;
}

function lsnField(doc: JsonObject, field: string, option: string): Lsn {
  return lsnFromText(stringField(doc, field, option));
}

function missingField(field: string, what: string, option?: string): Wal2jsonError {
  const hint = option === undefined ? '' : ` (wal2json option ${option}; see WAL2JSON_OPTIONS)`;
  return new Wal2jsonError(`"${field}" is missing or not ${what}${hint}`);
}

/**
 * timestamptz_to_str() output, always ISO whatever DateStyle says, in the
 * session's time zone: "2024-05-01 10:00:00.123456+00", the offset as +HH,
 * +HH:MM or +HH:MM:SS, trailing zeros of the fraction dropped.
 */
const TIMESTAMP = /^(\d{4,})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?$/;

/** The commit timestamp in microseconds since the Unix epoch, exactly. */
function timestampField(doc: JsonObject): bigint {
  const text = stringField(doc, 'timestamp', 'include-timestamp');
  const m = TIMESTAMP.exec(text);
  if (m === null) throw new Wal2jsonError(`"timestamp" is not an ISO timestamp: ${JSON.stringify(text)}`);
  const n = (i: number): number => Number(m[i] ?? '0');
  const localSeconds = Date.UTC(n(1), n(2) - 1, n(3), n(4), n(5), n(6)) / 1000;
  const offsetSeconds = (m[8] === '-' ? -1 : 1) * (n(9) * 3600 + n(10) * 60 + n(11));
  const fraction = BigInt((m[7] ?? '').padEnd(6, '0'));
  return BigInt(localSeconds - offsetSeconds) * 1_000_000n + fraction;
}

function notUtf8(): Wal2jsonError {
  return new Wal2jsonError('wal2json output is not valid UTF-8 (is the database encoding UTF8?)');
}

function excerpt(text: string): string {
  return text.length <= 300 ? text : `${text.slice(0, 300)}...`;
}
