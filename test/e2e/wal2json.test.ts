// The wal2json decoder (agent/wal2json.ts) against real wal2json output.
//
// Each test creates a wal2json slot, runs a workload, reads the changes with
// pg_logical_slot_get_changes() and the agent's options (each row's data is
// one format-2 JSON document, the same bytes a walsender sends as XLogData),
// and checks the decoded messages exactly, including the documented losses,
// so that a wal2json that stops losing them fails here and the documentation
// at the top of agent/wal2json.ts gets updated.

import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  UNCHANGED_TOAST,
  lsnFromText,
  type DecodedMessage,
  type RelationInfo,
  type RowImage,
} from '../../agent/decode.js';
import { CANONICAL_SETTINGS } from '../../agent/key.js';
import {
  Wal2jsonDecoder,
  addTablesOption,
  wal2jsonOptions,
  type CatalogColumn,
  type TableName,
} from '../../agent/wal2json.js';
import { useCluster } from '../support/use-cluster.js';

const cluster = useCluster();

/** Every value as the raw text the server sent. */
const rawText: pg.CustomTypesConfig = { getTypeParser: () => (value: string) => value };

const INT4 = 23;
const INT8 = 20;
const TEXT = 25;
const NUMERIC = 1700;
const FLOAT4 = 700;
const FLOAT8 = 701;
const BOOL = 16;
const BYTEA = 17;
const JSON_OID = 114;
const JSONB = 3802;
const TEXT_ARRAY = 1009;
const TIMESTAMPTZ = 1184;

const ACCOUNTS: TableName = { schema: 'tw', table: 'accounts' };
const WEIRD: TableName = { schema: `we.ird, s\\c`, table: `t.a,b\\c *d'é\ttab` };

interface SlotRow {
  lsn: string;
  data: string;
}

/** Decoded messages with what the test compares: no LSNs or times, rows as ordered entries. */
type Described =
  | { type: 'begin' | 'commit' }
  | { type: 'relation'; table: string; columns: string[] }
  | { type: 'insert'; table: string; newRow: Array<[string, unknown]> }
  | { type: 'update'; table: string; oldRow: Array<[string, unknown]> | null; newRow: Array<[string, unknown]> }
  | { type: 'delete'; table: string; oldRow: Array<[string, unknown]> }
  | { type: 'truncate'; tables: string[] }
  | { type: 'message'; transactional: boolean; prefix: string; content: string };

function tableName(relation: RelationInfo): string {
  return `${relation.schema}.${relation.table}`;
}

function entries(row: RowImage): Array<[string, unknown]> {
  return [...row.entries()];
}

function describeMessage(message: DecodedMessage): Described {
  switch (message.type) {
    case 'begin':
    case 'commit':
      return { type: message.type };
    case 'relation':
      return {
        type: 'relation',
        table: tableName(message.relation),
        columns: message.relation.columns.map((c) => `${c.name}:${c.typeOid}${c.isKey ? ':key' : ''}`),
      };
    case 'insert':
      return { type: 'insert', table: tableName(message.relation), newRow: entries(message.newRow) };
    case 'update':
      return {
        type: 'update',
        table: tableName(message.relation),
        oldRow: message.oldRow === null ? null : entries(message.oldRow),
        newRow: entries(message.newRow),
      };
    case 'delete':
      return { type: 'delete', table: tableName(message.relation), oldRow: entries(message.oldRow) };
    case 'truncate':
      return { type: 'truncate', tables: message.relations.map(tableName) };
    case 'message':
      return { type: 'message', transactional: message.transactional, prefix: message.prefix, content: message.content };
  }
}

describe('wal2json format 2 decoder', () => {
  let admin: pg.Client;
  /** Reads the slots; the canonical settings SET in the session, as a walsender gets them from canonicalOptions(). */
  let reader: pg.Client;
  let dnumOid: number;
  let slotCount = 0;

  beforeAll(async () => {
    admin = await cluster().connect();
    await admin.query(`
      CREATE SCHEMA tw;
      CREATE DOMAIN tw.dnum AS numeric;
      CREATE TABLE tw.accounts (
        id int8 PRIMARY KEY, amount numeric, ratio float8, small real, flag bool, payload bytea,
        doc json, docb jsonb, tags text[], at timestamptz, note text, dn tw.dnum, blob text);
      -- EXTERNAL: stored out of line uncompressed, so 10 kB of one letter is TOASTed
      ALTER TABLE tw.accounts ALTER COLUMN blob SET STORAGE EXTERNAL;
      CREATE TABLE tw.untracked (id int PRIMARY KEY);
      CREATE SCHEMA "we.ird, s\\c";
      CREATE TABLE "we.ird, s\\c"."t.a,b\\c *d'é\ttab" (id int PRIMARY KEY);
    `);
    dnumOid = Number((await admin.query<{ oid: string }>(`SELECT 'tw.dnum'::regtype::oid AS oid`)).rows[0]?.oid);

    // Deliberately not canonical at connection time; the SETs below fix it.
    reader = new pg.Client({
      connectionString: cluster().url(),
      options: '-c TimeZone=America/New_York -c DateStyle=SQL,DMY -c IntervalStyle=sql_standard -c bytea_output=escape',
      types: rawText,
    });
    await reader.connect();
    await canonicalize(reader);
  });

  afterAll(async () => {
    await reader?.end();
  });

  async function canonicalize(client: pg.Client): Promise<void> {
    for (const [name, value] of Object.entries(CANONICAL_SETTINGS)) {
      await client.query(`SELECT set_config($1, $2, false)`, [name, value]);
    }
  }

  async function createSlot(): Promise<string> {
    const slot = `w2j_${++slotCount}`;
    await admin.query(`SELECT pg_create_logical_replication_slot($1, 'wal2json')`, [slot]);
    return slot;
  }

  async function readSlot(
    slot: string,
    tables: readonly TableName[],
    how: 'get' | 'peek' = 'get',
    client: pg.Client = reader,
  ): Promise<SlotRow[]> {
    const options = wal2jsonOptions(tables).flat();
    const res = await client.query<SlotRow>(
      `SELECT lsn::text AS lsn, data FROM pg_logical_slot_${how}_changes($1, NULL, NULL, VARIADIC $2::text[])`,
      [slot, options],
    );
    return res.rows;
  }

  function decodeAll(rows: readonly SlotRow[], decoder = new Wal2jsonDecoder()): DecodedMessage[] {
    return rows.flatMap((row) => decoder.decode(Buffer.from(row.data, 'utf8')));
  }

  /** Run statements one by one, each in its own implicit transaction unless it says BEGIN. */
  async function run(statements: readonly string[]): Promise<void> {
    for (const sql of statements) await admin.query(sql);
  }

  it('decodes a workload to the exact message sequence', async () => {
    const slot = await createSlot();
    const blob = 'x'.repeat(10_000);
    const blob2 = 'z'.repeat(9_000);
    await run([
      `INSERT INTO tw.accounts VALUES
        (9007199254740993, 1234567890123456789012345678901234.567890, 'NaN', '-Infinity', true, '\\x00ff10',
         '{"a": 1.00000000000000000001, "b": [1, 2]}', '{"a": 1.00000000000000000001}', '{"a b",NULL,"c,d"}',
         '2024-05-01 12:00:00.123456+02', E'q"\\\\ \\t\\n\\u0001 é 🎉', 'NaN', '${blob}'),
        (2, 'NaN', 'Infinity', 0.5, false, '\\x', 'null', '[]', '{}', NULL, '', 'Infinity', '${blob2}')`,
      // leaves blob (TOASTed) out
      `UPDATE tw.accounts SET note = 'changed' WHERE id = 9007199254740993`,
      // key change that also leaves blob out
      `UPDATE tw.accounts SET id = 3 WHERE id = 2`,
      // REPLICA IDENTITY DEFAULT: the key only
      `DELETE FROM tw.accounts WHERE id = 3`,
      // not in add-tables: an empty transaction
      `INSERT INTO tw.untracked VALUES (1)`,
      `BEGIN`,
      `SELECT pg_logical_emit_message(true, 'pgtimewarp', '{"hello": "wörld"}')`,
      `SELECT pg_logical_emit_message(true, 'other', 'filtered by add-msg-prefixes')`,
      `INSERT INTO "we.ird, s\\c"."t.a,b\\c *d'é\ttab" VALUES (7)`,
      `COMMIT`,
      `BEGIN`,
      `INSERT INTO tw.accounts (id) VALUES (4)`,
      `ROLLBACK`,
      `SELECT pg_logical_emit_message(false, 'pgtimewarp', 'not transactional')`,
      `TRUNCATE tw.accounts`,
    ]);

    const rows = await readSlot(slot, [ACCOUNTS, WEIRD]);
    const messages = decodeAll(rows);
    const accounts = 'tw.accounts';
    const weird = `${WEIRD.schema}.${WEIRD.table}`;

    expect(messages.map(describeMessage)).toEqual([
      { type: 'begin' },
      {
        type: 'relation',
        table: accounts,
        columns: [
          `id:${INT8}:key`, `amount:${NUMERIC}`, `ratio:${FLOAT8}`, `small:${FLOAT4}`, `flag:${BOOL}`,
          `payload:${BYTEA}`, `doc:${JSON_OID}`, `docb:${JSONB}`, `tags:${TEXT_ARRAY}`, `at:${TIMESTAMPTZ}`,
          `note:${TEXT}`, `dn:${dnumOid}`, `blob:${TEXT}`,
        ],
      },
      {
        type: 'insert',
        table: accounts,
        newRow: [
          ['id', '9007199254740993'],
          ['amount', '1234567890123456789012345678901234.567890'],
          ['ratio', null], // NaN: lost
          ['small', null], // -Infinity: lost
          ['flag', 't'],
          ['payload', '\\x00ff10'],
          ['doc', '{"a": 1.00000000000000000001, "b": [1, 2]}'],
          ['docb', '{"a": 1.00000000000000000001}'],
          ['tags', '{"a b",NULL,"c,d"}'],
          ['at', '2024-05-01 10:00:00.123456+00'],
          ['note', 'q"\\ \t\n\u0001 é 🎉'],
          ['dn', 'NaN'], // a domain over numeric is printed as a string: kept
          ['blob', blob],
        ],
      },
      {
        type: 'insert',
        table: accounts,
        newRow: [
          ['id', '2'],
          ['amount', null], // NaN: lost
          ['ratio', null], // Infinity: lost
          ['small', '0.5'],
          ['flag', 'f'],
          ['payload', '\\x'],
          ['doc', 'null'],
          ['docb', '[]'],
          ['tags', '{}'],
          ['at', null],
          ['note', ''],
          ['dn', 'Infinity'],
          ['blob', blob2],
        ],
      },
      { type: 'commit' },
      { type: 'begin' },
      {
        type: 'update',
        table: accounts,
        oldRow: null,
        newRow: [
          ['id', '9007199254740993'],
          ['amount', '1234567890123456789012345678901234.567890'],
          ['ratio', null],
          ['small', null],
          ['flag', 't'],
          ['payload', '\\x00ff10'],
          ['doc', '{"a": 1.00000000000000000001, "b": [1, 2]}'],
          ['docb', '{"a": 1.00000000000000000001}'],
          ['tags', '{"a b",NULL,"c,d"}'],
          ['at', '2024-05-01 10:00:00.123456+00'],
          ['note', 'changed'],
          ['dn', 'NaN'],
          ['blob', UNCHANGED_TOAST],
        ],
      },
      { type: 'commit' },
      { type: 'begin' },
      {
        type: 'update',
        table: accounts,
        oldRow: [['id', '2']],
        newRow: [
          ['id', '3'],
          ['amount', null],
          ['ratio', null],
          ['small', '0.5'],
          ['flag', 'f'],
          ['payload', '\\x'],
          ['doc', 'null'],
          ['docb', '[]'],
          ['tags', '{}'],
          ['at', null],
          ['note', ''],
          ['dn', 'Infinity'],
          ['blob', UNCHANGED_TOAST],
        ],
      },
      { type: 'commit' },
      { type: 'begin' },
      { type: 'delete', table: accounts, oldRow: [['id', '3']] },
      { type: 'commit' },
      // tw.untracked: filtered on the server, the transaction stays
      { type: 'begin' },
      { type: 'commit' },
      { type: 'begin' },
      { type: 'message', transactional: true, prefix: 'pgtimewarp', content: '{"hello": "wörld"}' },
      { type: 'relation', table: weird, columns: [`id:${INT4}:key`] },
      { type: 'insert', table: weird, newRow: [['id', '7']] },
      { type: 'commit' },
      // the rolled-back transaction: nothing at all
      { type: 'message', transactional: false, prefix: 'pgtimewarp', content: 'not transactional' },
      { type: 'begin' },
      { type: 'truncate', tables: [accounts] },
      { type: 'commit' },
    ]);

    // LSNs and times: BEGIN and COMMIT agree, and COMMIT's end is where the
    // slot says the transaction ends.
    for (let i = 0; i < messages.length; i++) {
      const begin = messages[i];
      if (begin?.type !== 'begin') continue;
      const commitIndex = messages.findIndex((m, j) => j > i && m.type === 'commit');
      const commit = messages[commitIndex];
      if (commit?.type !== 'commit') throw new Error('BEGIN without COMMIT');
      expect(commit.commitLsn).toBe(begin.finalLsn);
      expect(commit.endLsn > commit.commitLsn).toBe(true);
      expect(commit.commitTime.getTime()).toBe(begin.commitTime.getTime());
      expect(commit.commitTimeMicros).toBe(begin.commitTimeMicros);
      expect(Math.abs(commit.commitTime.getTime() - Date.now())).toBeLessThan(60_000);
    }
    // one message per row, in order: the C rows' lsn column is the end of the commit record
    const perRow = rows.map((row) => new Wal2jsonDecoder().decode(Buffer.from(row.data, 'utf8')));
    rows.forEach((row, i) => {
      const last = perRow[i]?.at(-1);
      if (last?.type === 'commit') expect(last.endLsn).toBe(lsnFromText(row.lsn));
      if (last?.type === 'message') expect(last.lsn).toBe(lsnFromText(row.lsn));
    });

    // The commit time is the instant PostgreSQL reads from wal2json's text:
    // exactly in commitTimeMicros, to the millisecond in commitTime.
    const stamps = rows.flatMap((row) => (row.data.startsWith('{"action":"B"') ? [/"timestamp":"([^"]+)"/.exec(row.data)?.[1]] : []));
    const begins = messages.filter((m): m is Extract<DecodedMessage, { type: 'begin' }> => m.type === 'begin');
    expect(stamps).toHaveLength(begins.length);
    for (const [i, stamp] of stamps.entries()) {
      expect(stamp).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00$/);
      const fromPg = await admin.query<{ micros: string }>(
        `SELECT (extract(epoch FROM $1::timestamptz) * 1000000)::bigint::text AS micros`,
        [stamp],
      );
      const micros = BigInt(fromPg.rows[0]?.micros ?? 'NaN');
      expect(begins[i]?.commitTimeMicros).toBe(micros);
      expect(begins[i]?.commitTime.getTime()).toBe(Number(micros / 1000n));
    }
  });

  it('keeps values exact as their text output, except NaN and Infinity of float and numeric', async () => {
    await admin.query(`
      CREATE TYPE tw.mood AS ENUM ('happy', 'sad');
      CREATE DOMAIN tw.dbool AS bool;
      CREATE DOMAIN tw.dbytea AS bytea;
      CREATE TABLE tw.vals (
        id int PRIMARY KEY, i2 int2, i4 int4, i8 int8, o oid, f4 float4, f8 float8, n numeric,
        b bool, by bytea, j json, jb jsonb, ia int[], ta text[], tz timestamptz, ts timestamp, d date,
        iv interval, m money, u uuid, e tw.mood, db tw.dbool, dby tw.dbytea, dn tw.dnum, t text)`);
    const columns = (await admin.query<{ attname: string }>(
      `SELECT attname FROM pg_attribute WHERE attrelid = 'tw.vals'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`,
    )).rows.map((r) => r.attname);
    const slot = await createSlot();
    await run([
      `INSERT INTO tw.vals VALUES (1, -32768, 2147483647, -9223372036854775808, 4294967295, 3.4e38, 5e-324,
        -1234567890123456789012345678901234567890.0000000001, false, '\\xdeadbeef',
        '{"k": [1, 2.50, "x"], "k": 1e400}', '{"b": [1, 2.50], "a": null, "c": 1e-20}', '{1,NULL,3}',
        '{"a\\"b","c\\\\d",NULL,""}', '2024-12-31 23:59:59.999999-11', '2024-02-29 12:34:56.5', '0044-03-15 BC',
        '1 year 2 months -3 days 04:05:06.7', 10.5, 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 'sad', true,
        '\\x00', 'NaN', E'日本語 🎉 \\u00e9 \\x01\\x1f "q" \\\\ \\r\\n\\t end')`,
      `INSERT INTO tw.vals (id, f4, f8, n, dn, i8) VALUES (2, 'NaN', 'Infinity', 'NaN', '-Infinity', 9007199254740993)`,
      `INSERT INTO tw.vals (id, f4, f8, n) VALUES (3, '-Infinity', '-0', 'Infinity')`,
      `INSERT INTO tw.vals (id, f8, n) VALUES (4, '-Infinity', '-Infinity')`,
      `INSERT INTO tw.vals (id) VALUES (5)`,
    ]);
    const table: TableName = { schema: 'tw', table: 'vals' };

    // wal2json prints values under the session's settings: without the
    // canonical ones, timestamptz, date and interval come out differently.
    // Commit timestamps are ISO in any DateStyle, in the session's zone
    // (+05:30 here), and decode to the same instant.
    const sloppy = new pg.Client({
      connectionString: cluster().url(),
      options: '-c TimeZone=Asia/Kolkata -c DateStyle=SQL,DMY -c IntervalStyle=sql_standard',
      types: rawText,
    });
    await sloppy.connect();
    let sloppyMessages: DecodedMessage[];
    try {
      const sloppyRows = await readSlot(slot, [table], 'peek', sloppy);
      expect(sloppyRows[0]?.data).toMatch(/"timestamp":"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+05:30"/);
      sloppyMessages = decodeAll(sloppyRows);
    } finally {
      await sloppy.end();
    }
    const sloppyFirst = sloppyMessages.find((m) => m.type === 'insert');
    expect(sloppyFirst?.type === 'insert' && sloppyFirst.newRow.get('tz')).toBe('01/01/2025 16:29:59.999999 IST');

    const messages = decodeAll(await readSlot(slot, [table]));
    const commitTimes = (list: DecodedMessage[]): Array<bigint | undefined> =>
      list.flatMap((m) => (m.type === 'begin' || m.type === 'commit' ? [m.commitTimeMicros] : []));
    expect(commitTimes(sloppyMessages)).toEqual(commitTimes(messages));
    expect(commitTimes(messages)).not.toContain(undefined);

    const inserts = messages.filter(
      (m): m is Extract<DecodedMessage, { type: 'insert' }> => m.type === 'insert',
    );
    expect(inserts).toHaveLength(5);

    // What the store must hold: each value's text output under the canonical
    // settings, as the server sends it in a text-format result (not ::text,
    // which prints bool as "true").
    const expected = await reader.query<Record<string, string | null>>(`SELECT ${columns.join(', ')} FROM tw.vals ORDER BY id`);
    const differences: string[] = [];
    inserts.forEach((insert, i) => {
      const truth = expected.rows[i] ?? {};
      for (const column of columns) {
        const decoded = insert.newRow.get(column);
        if (decoded !== truth[column]) {
          differences.push(`row ${truth['id']} ${column}: ${JSON.stringify(truth[column])} arrived as ${String(decoded)}`);
        }
      }
    });
    // The documented losses, and nothing else: float4/float8/numeric
    // NaN and +-Infinity become NULL.  A domain over numeric keeps them.
    expect(differences).toEqual([
      'row 2 f4: "NaN" arrived as null',
      'row 2 f8: "Infinity" arrived as null',
      'row 2 n: "NaN" arrived as null',
      'row 3 f4: "-Infinity" arrived as null',
      'row 3 n: "Infinity" arrived as null',
      'row 4 f8: "-Infinity" arrived as null',
      'row 4 n: "-Infinity" arrived as null',
    ]);
    // spot checks of what the comparison covered
    expect(inserts[0]?.newRow.get('i8')).toBe('-9223372036854775808');
    expect(inserts[1]?.newRow.get('i8')).toBe('9007199254740993');
    expect(inserts[0]?.newRow.get('n')).toBe('-1234567890123456789012345678901234567890.0000000001');
    expect(inserts[0]?.newRow.get('f8')).toBe('5e-324');
    expect(inserts[2]?.newRow.get('f8')).toBe('-0');
    expect(inserts[0]?.newRow.get('by')).toBe('\\xdeadbeef');
    expect(inserts[0]?.newRow.get('dby')).toBe('\\x00');
    expect(inserts[0]?.newRow.get('db')).toBe('t');
    expect(inserts[0]?.newRow.get('j')).toBe('{"k": [1, 2.50, "x"], "k": 1e400}');
    expect(inserts[1]?.newRow.get('dn')).toBe('-Infinity');
    expect(inserts[4]?.newRow.get('t')).toBeNull();
  });

  it('cuts a logical message at its first NUL byte', async () => {
    const slot = await createSlot();
    await admin.query(`SELECT pg_logical_emit_message(true, 'pgtimewarp', '\\x61620063'::bytea)`);
    const messages = decodeAll(await readSlot(slot, []));
    expect(messages.filter((m) => m.type === 'message').map(describeMessage)).toEqual([
      { type: 'message', transactional: true, prefix: 'pgtimewarp', content: 'ab' },
    ]);
  });

  it('filters on the server by add-tables, whatever characters the names hold', async () => {
    const tracked: TableName[] = [
      WEIRD,
      { schema: 'public', table: '*' },
      { schema: '*', table: 'x' },
      { schema: 'public', table: 'back\\slash' },
      { schema: 'public', table: 'Mixed Case' },
    ];
    const untracked: TableName[] = [
      { schema: 'public', table: 'x' }, // "*.x" unescaped would match it
      { schema: 'public', table: 'other' }, // "public.*" unescaped would match it
      { schema: 'public', table: 'mixed case' },
      { schema: 'public', table: 'backslash' },
    ];
    const ident = (name: string): string => `"${name.replace(/"/g, '""')}"`;
    const qualified = (t: TableName): string => `${ident(t.schema)}.${ident(t.table)}`;
    await admin.query(`CREATE SCHEMA "*"`);
    for (const t of [...tracked, ...untracked]) {
      if (t !== WEIRD) await admin.query(`CREATE TABLE ${qualified(t)} (id int PRIMARY KEY)`);
    }
    expect(addTablesOption([WEIRD, { schema: 'public', table: '*' }])).toBe(
      `we\\.ird\\,\\ s\\\\c.t\\.a\\,b\\\\c\\ \\*d\\'é\\\ttab,public.\\*`,
    );

    const slot = await createSlot();
    for (const t of [...tracked, ...untracked]) await admin.query(`INSERT INTO ${qualified(t)} VALUES (1)`);

    const none = decodeAll(await readSlot(slot, [], 'peek'));
    expect(none.filter((m) => m.type === 'insert')).toEqual([]);

    const messages = decodeAll(await readSlot(slot, tracked));
    const inserted = messages.flatMap((m) => (m.type === 'insert' ? [{ schema: m.relation.schema, table: m.relation.table }] : []));
    expect(inserted).toEqual(tracked);
  });

  it('follows column changes and carries unchanged TOAST values as UNCHANGED_TOAST', async () => {
    await admin.query(`
      CREATE TABLE tw.shape (id int PRIMARY KEY, a text, big text, c int);
      ALTER TABLE tw.shape ALTER COLUMN big SET STORAGE EXTERNAL`);
    const table: TableName = { schema: 'tw', table: 'shape' };
    const big = 'y'.repeat(9_000);
    const slot = await createSlot();
    await run([
      `INSERT INTO tw.shape VALUES (1, 'a', '${big}', 5)`,
      `ALTER TABLE tw.shape DROP COLUMN c`,
      `ALTER TABLE tw.shape ADD COLUMN e int`,
      `ALTER TABLE tw.shape RENAME COLUMN a TO a2`,
      `UPDATE tw.shape SET a2 = 'b' WHERE id = 1`,
      `ALTER TABLE tw.shape REPLICA IDENTITY FULL`,
      `UPDATE tw.shape SET a2 = 'c' WHERE id = 1`,
      `ALTER TABLE tw.shape DROP COLUMN a2`,
      `UPDATE tw.shape SET e = 1 WHERE id = 1`,
      `INSERT INTO tw.shape VALUES (2, 'small', 2)`,
      `DELETE FROM tw.shape WHERE id = 2`,
    ]);
    const changes = decodeAll(await readSlot(slot, [table])).filter((m) => m.type !== 'begin' && m.type !== 'commit');
    expect(changes.map(describeMessage)).toEqual([
      { type: 'relation', table: 'tw.shape', columns: [`id:${INT4}:key`, `a:${TEXT}`, `big:${TEXT}`, `c:${INT4}`] },
      { type: 'insert', table: 'tw.shape', newRow: [['id', '1'], ['a', 'a'], ['big', big], ['c', '5']] },
      // c (fixed-length) is gone, e is new, a is a2 now: seen by position
      { type: 'relation', table: 'tw.shape', columns: [`id:${INT4}:key`, `a2:${TEXT}`, `big:${TEXT}`, `e:${INT4}`] },
      {
        type: 'update',
        table: 'tw.shape',
        oldRow: null,
        newRow: [['id', '1'], ['a2', 'b'], ['big', UNCHANGED_TOAST], ['e', null]],
      },
      // REPLICA IDENTITY FULL: the old row has big, so the new one gets it from there
      {
        type: 'update',
        table: 'tw.shape',
        oldRow: [['id', '1'], ['a2', 'b'], ['big', big], ['e', null]],
        newRow: [['id', '1'], ['a2', 'c'], ['big', big], ['e', null]],
      },
      // a2 was dropped, but a missing text column looks like unchanged TOAST: the documented loss
      {
        type: 'update',
        table: 'tw.shape',
        oldRow: [['id', '1'], ['big', big], ['e', null]],
        newRow: [['id', '1'], ['a2', UNCHANGED_TOAST], ['big', big], ['e', '1']],
      },
      // the next INSERT shows the table as it is
      { type: 'relation', table: 'tw.shape', columns: [`id:${INT4}:key`, `big:${TEXT}`, `e:${INT4}`] },
      { type: 'insert', table: 'tw.shape', newRow: [['id', '2'], ['big', 'small'], ['e', '2']] },
      // REPLICA IDENTITY FULL: the whole old row
      { type: 'delete', table: 'tw.shape', oldRow: [['id', '2'], ['big', 'small'], ['e', '2']] },
    ]);
  });

  it('needs knowRelation() to recognize a left-out TOAST column before it has seen the table', async () => {
    await admin.query(`
      CREATE TABLE tw.restart (id int PRIMARY KEY, note text, big text);
      ALTER TABLE tw.restart ALTER COLUMN big SET STORAGE EXTERNAL;
      INSERT INTO tw.restart VALUES (1, 'a', repeat('q', 9000))`);
    const table: TableName = { schema: 'tw', table: 'restart' };
    // as after an agent restart: the stream resumes after the INSERT
    const slot = await createSlot();
    await admin.query(`UPDATE tw.restart SET note = 'b' WHERE id = 1`);
    const rows = await readSlot(slot, [table]);

    const updateOf = (messages: DecodedMessage[]): Described | undefined =>
      messages.filter((m) => m.type === 'update').map(describeMessage)[0];

    // Unseeded, the decoder cannot know big exists: it is missing from the row.
    expect(updateOf(decodeAll(rows))).toEqual({
      type: 'update',
      table: 'tw.restart',
      oldRow: null,
      newRow: [['id', '1'], ['note', 'b']],
    });

    const catalog = await admin.query<CatalogColumn>(
      `SELECT a.attname AS name, a.atttypid::int AS "typeOid", a.attnum::int AS attnum,
              coalesce(a.attnum = ANY (i.indkey), false) AS "isKey"
         FROM pg_attribute a
         LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
        WHERE a.attrelid = 'tw.restart'::regclass AND a.attnum > 0 AND NOT a.attisdropped`,
    );
    const seeded = new Wal2jsonDecoder();
    seeded.knowRelation('tw', 'restart', catalog.rows);
    const messages = decodeAll(rows, seeded);
    expect(messages.filter((m) => m.type === 'relation').map(describeMessage)).toEqual([
      { type: 'relation', table: 'tw.restart', columns: [`id:${INT4}:key`, `note:${TEXT}`, `big:${TEXT}`] },
    ]);
    expect(updateOf(messages)).toEqual({
      type: 'update',
      table: 'tw.restart',
      oldRow: null,
      newRow: [['id', '1'], ['note', 'b'], ['big', UNCHANGED_TOAST]],
    });
  });
});
