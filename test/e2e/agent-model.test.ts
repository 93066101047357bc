// The model-based test of DESIGN.md ("Tests"): a seeded random workload on a
// tracked table while runAgent() streams it into the store, on each plugin.
// After every transaction (committed or rolled back) the whole table is
// recorded at pg_current_wal_insert_lsn(); afterwards every key ever seen,
// at every recorded LSN, must be what pgtimewarp_asof_pk_lsn answers, and
// pgtimewarp_diff_pk must give each key's versions exactly as the model has
// them.
//
// The workload: inserts (single, multi-row, upserts), updates of small
// columns (most: the TOASTed big and j stay unchanged), of big and j, of
// several rows at once, no-op updates, primary-key changes, deletes,
// TRUNCATE, transactions of 2-5 statements that come back to the same keys,
// explicit ROLLBACKs, SAVEPOINTs rolled back (some after a failed statement)
// or released inside committed transactions, and ALTER TABLE ADD / DROP
// COLUMN of non-key columns (hard case 11).  Values: 40-digit numerics,
// bigints beyond 2^53, unicode, quotes, backslashes, values over 8 kB.  On
// wal2json the workload leaves out what wal2json 2.5 documentedly loses
// (agent/wal2json.ts): NaN and infinities of float8 and numeric, and
// dropping a variable-length column.
//
// The model.  Every statement says which keys it wrote (RETURNING, or the
// rows a TRUNCATE found), savepoints rolled back forget theirs, and a
// committed transaction gives each key it wrote one version (DESIGN
// "Semantics"): "insert" if the key was absent before it and present after,
// "update" if present before and after, "delete" or "truncate" (how it went
// last) if present before and absent after, none if absent before and after.
// A version's row is the table's row right after its commit: snapshot k.
//
// The comparison, and why not simply "answer at L = the table at L".
// Schema changes make that false by design: row_data follows the table's
// columns at each version, so a row untouched since before ADD COLUMN x is
// answered without x while to_jsonb(row) has "x": null, and one untouched
// since before DROP COLUMN y is still answered with y (to a superuser, like
// this test; README "Access").  So the expected answer at snapshot m is the
// row of the key's latest version at or before m, in snapshot k: to_jsonb
// of the table right after the commit that wrote the version, which has
// exactly the columns the version was written with.  (That needs the
// columns at commit to be those of the transaction's row changes: in a
// committed transaction DDL comes first, before any row change; elsewhere
// the workload runs DDL only where it is undone, in a savepoint rolled back
// or a transaction rolled back.)  Answers are typed by the table's columns
// *now*, and a column the table no longer has comes back as its stored
// text, a JSON string (README "Limits"); model.as_now does the same to the
// expectation.  A column added after the version and before the point asked
// reads as the table had it there, its default or NULL (model.with_added).
// Extra columns get fresh names and are never retyped.  Then
// answer and expectation must be equal as jsonb *text*: not jsonb =, which
// takes 1.50 for 1.5, and not in JavaScript, whose JSON.parse rounds
// 40-digit numerics and int8.  The model itself is checked against the
// plain comparison where that one is sound (model.agrees): the table at m
// and the version's row from k have the key in both or in neither, and
// agree on every column both have -- a write the model missed shows there.
//
// pgtimewarp_asof_table(NULL::items, t) and pgtimewarp_asof_table_lsn
// (NULL::items, L) at every recorded point (t: clock_timestamp() read right
// after the transaction's commit, before the next one), as sets of rows:
// the table's content recorded there, typed as the table is now -- columns
// added since NULL, dropped ones gone (model.as_typed) -- compared as
// to_jsonb(row)::text, ordered by id, so a row missing, doubled, stale or
// from the future shows.  A column added with a DEFAULT shows its default in
// rows untouched since, as the table did (migrations/6_column_additions.sql).
// pgtimewarp_asof_pks('items', keys, t) at every
// recorded time, for every key ever seen in a shuffled order plus a
// repeated key and one never seen: one row per key in input order, pk the
// key given, row_data what pgtimewarp_asof_pk answers for that key and time.
//
// pgtimewarp_diff_pk over the whole tracked range, for every key: the ops
// in order, row_data (as above), changed_columns (as a set, computed from
// the stored text as the extension does), valid_from_lsn after the snapshot
// before the committing transaction and at or before the one after it, and
// valid_to_lsn the next version's valid_from_lsn.
//
// Replay: the seed (one per run, for both plugins) is printed on failure,
// with the path of the workload written out as SQL;
// PGTIMEWARP_SEED=<seed> runs the same workload again.

import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type pg from 'pg';
import { afterAll, describe, expect, it, onTestFailed } from 'vitest';

import { lsnFromText } from '../../agent/decode.js';
import { runAgent, type AgentEvent } from '../../agent/run.js';
import { Random, testSeed } from '../support/random.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { waitFor } from '../support/wait.js';
import { useCluster } from '../support/use-cluster.js';

const cluster = useCluster();

const SEED = testSeed();

/** Keys the workload inserts; primary-key changes also move rows up to KEY_RANGE_PK. */
const KEY_RANGE = 40;
const KEY_RANGE_PK = 55;
const SENTINEL = 999;
/** Rows in the table when tracking starts: the baseline. */
const BASELINE_ROWS = 12;
const MAX_EXTRA_COLUMNS = 3;

type Plugin = 'pgoutput' | 'wal2json';
type Op = 'baseline' | 'insert' | 'update' | 'delete' | 'truncate';

// ---------------------------------------------------------------------------
// Values (as text, passed as query parameters and cast in SQL)

const TEXT_PIECES = [
  'plain', "O'Reilly", "it''s", 'say "hi"', 'back\\slash', 'C:\\path\\new', '\\x41', '\\u0000 not a NUL',
  'tab\there', 'line\nbreak', 'cr\r\n', 'ünïcødé', '日本語テキスト', '😀👍🏽🇪🇺', 'עברית', 'e\u0301 combining',
  '\u2028\u2029', '{"not": "json"}', 'NULL', '', ' ', '%_*', '--', '/*', '$$', 'Ωmega', '\u00a0nbsp',
];

function textValue(r: Random): string {
  let s = '';
  const n = r.int(1, 4);
  for (let i = 0; i < n; i++) s += r.pick(TEXT_PIECES) + (r.chance(0.3) ? String(r.int(0, 999)) : '');
  return s;
}

const BIG_ALPHABET = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \'"\\/ßéΩж中😀';

/** Incompressible text of about `length` characters. */
function noise(r: Random, length: number): string {
  const chars = [...BIG_ALPHABET];
  let s = '';
  while (s.length < length) s += chars[Math.floor(r.next() * chars.length)];
  return s;
}

/** big: stored out of line (STORAGE EXTERNAL) from ~2 kB; sometimes over 8 kB. */
function bigValue(r: Random): string | null {
  return r.weighted<() => string | null>([
    [1, () => null],
    [3, () => textValue(r)],
    [3, () => noise(r, r.int(2500, 4000))],
    [3, () => noise(r, r.int(8500, 20000))],
  ])();
}

function numericValue(r: Random, plugin: Plugin): string | null {
  return r.weighted<() => string | null>([
    [1, () => null],
    [2, () => String(r.int(-1000, 1000))],
    [2, () => `${r.int(0, 99)}.${r.pick(['5', '50', '500', '05', '123456789'])}`],
    [3, () => `${r.chance(0.5) ? '-' : ''}${r.digits(40)}`],
    [2, () => `${r.digits(25)}.${r.digits(15)}`],
    [1, () => `0.${'0'.repeat(30)}${r.digits(9)}`],
    [1, () => '0.000'],
    [plugin === 'pgoutput' ? 1 : 0, () => r.pick(['NaN', 'Infinity', '-Infinity'])],
  ])();
}

function bigintValue(r: Random): string | null {
  return r.weighted<() => string | null>([
    [1, () => null],
    [2, () => String(r.int(-100000, 100000))],
    [3, () => r.pick(['9007199254740993', '-9007199254740993', '9223372036854775807', '-9223372036854775808', '9007199254740992'])],
    [3, () => `${r.chance(0.5) ? '-' : ''}${r.digits(18)}`],
  ])();
}

function floatValue(r: Random, plugin: Plugin): string | null {
  return r.weighted<() => string | null>([
    [1, () => null],
    [4, () => r.pick(['1.5', '-0', '0.1', '1e300', '5e-324', '3.141592653589793', '-2.2250738585072014e-308', '1.7976931348623157e308'])],
    [2, () => String(r.int(-1000, 1000) / 8)],
    [plugin === 'pgoutput' ? 2 : 0, () => r.pick(['NaN', 'Infinity', '-Infinity'])],
  ])();
}

function jsonValue(r: Random): string | null {
  return r.weighted<() => string | null>([
    [1, () => null],
    [4, () => JSON.stringify({ k: textValue(r), n: r.int(-5, 5), a: [1, 'two', null, true], nested: { deep: [textValue(r)] } })
      // exact numbers JSON.stringify could not write
      .replace('"n":', `"big": ${r.digits(40)}.${r.digits(5)}, "i8": 9007199254740993, "n":`)],
    [1, () => JSON.stringify([textValue(r), { '': 'empty key', 'ключ': 'значение' }])],
    [1, () => JSON.stringify(textValue(r))],
    // incompressible and over the TOAST threshold: stored out of line
    [2, () => JSON.stringify({ blob: noise(r, r.int(3000, 9000)), n: r.int(0, 9) })],
  ])();
}

interface Column {
  name: string;
  /** format_type() of the column's type */
  type: string;
}

const FIXED_LENGTH_TYPES = new Set(['integer', 'bigint', 'boolean']);
const EXTRA_TYPES = ['integer', 'bigint', 'boolean', 'numeric', 'text'];

function valueFor(r: Random, plugin: Plugin, column: Column): string | null {
  if (column.name === 'big') return bigValue(r);
  switch (column.type) {
    case 'integer':
      return r.chance(0.2) ? null : String(r.pick([r.int(-1000, 1000), -2147483648, 2147483647]));
    case 'bigint':
      return bigintValue(r);
    case 'numeric':
      return numericValue(r, plugin);
    case 'double precision':
      return floatValue(r, plugin);
    case 'boolean':
      return r.pick([null, 't', 'f']);
    case 'jsonb':
      return jsonValue(r);
    case 'text':
      return r.chance(0.15) ? null : r.chance(0.05) ? noise(r, 3000) : textValue(r);
    default:
      throw new Error(`no values for type ${column.type}`);
  }
}

// ---------------------------------------------------------------------------
// SQL text, for the transcript (a replayable psql script of the workload)

function literal(value: string | number | null): string {
  if (value === null) return 'NULL';
  if (typeof value === 'number') return String(value);
  return `'${value.replace(/'/g, "''")}'`;
}

function inlineParams(sql: string, params: ReadonlyArray<string | number | null>): string {
  return sql.replace(/\$(\d+)/g, (_, n: string) => literal(params[Number(n) - 1] ?? null));
}

function ident(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

// ---------------------------------------------------------------------------
// The model

/** The table right after a transaction: id -> to_jsonb(row)::text. */
interface Snapshot {
  lsn: string;
  /** clock_timestamp() as text (microseconds) when it was recorded: after its commit, before the next. */
  ts: string;
  rows: Map<number, string>;
  /** What produced it, for messages. */
  label: string;
}

interface Version {
  /** The snapshot taken right after the committing transaction (0: the baseline). */
  seq: number;
  op: Op;
}

/** The keys a transaction wrote so far, and how each first went away. */
interface Effects {
  touched: Set<number>;
  removal: Map<number, 'delete' | 'truncate'>;
}

function cloneEffects(e: Effects): Effects {
  return { touched: new Set(e.touched), removal: new Map(e.removal) };
}

class Model {
  readonly snapshots: Snapshot[] = [];
  readonly versions = new Map<number, Version[]>();
  readonly everSeen = new Set<number>();
  private readonly textByHash = new Map<string, string>();

  constructor(private readonly db: pg.Client) {}

  /** Record the table as it is now. */
  async snapshot(label: string): Promise<Snapshot> {
    const res = await this.db.query<{ lsn: string; ts: string; rows: string }>(
      `SELECT pg_current_wal_insert_lsn()::text AS lsn, clock_timestamp()::text AS ts,
              coalesce((SELECT json_agg(json_build_array(id, md5(to_jsonb(whole_row)::text)) ORDER BY id) FROM items whole_row), '[]')::text AS rows`,
    );
    const hashes = JSON.parse(res.rows[0]!.rows) as Array<[number, string]>;
    const unknown = hashes.filter(([, h]) => !this.textByHash.has(h)).map(([id]) => id);
    if (unknown.length > 0) {
      const full = await this.db.query<{ id: number; row: string; h: string }>(
        `SELECT id, to_jsonb(whole_row)::text AS row, md5(to_jsonb(whole_row)::text) AS h FROM items whole_row WHERE id = ANY($1::int[])`,
        [unknown],
      );
      for (const r of full.rows) this.textByHash.set(r.h, r.row);
    }
    const rows = new Map<number, string>();
    for (const [id, h] of hashes) {
      const text = this.textByHash.get(h);
      if (text === undefined) throw new Error(`model: row ${id} changed while being recorded`);
      rows.set(id, text);
      this.everSeen.add(id);
    }
    const snap = { lsn: res.rows[0]!.lsn, ts: res.rows[0]!.ts, rows, label };
    this.snapshots.push(snap);
    return snap;
  }

  /** The versions a committed transaction wrote; its snapshot was just taken. */
  commit(effects: Effects): void {
    const seq = this.snapshots.length - 1;
    const before = this.snapshots[seq - 1]!.rows;
    const after = this.snapshots[seq]!.rows;
    for (const id of effects.touched) {
      const was = before.has(id);
      const is = after.has(id);
      let op: Op;
      if (!was && !is) continue; // born and gone inside the transaction: never visible
      else if (!was) op = 'insert';
      else if (is) op = 'update';
      else op = effects.removal.get(id) ?? 'delete';
      this.add(id, { seq, op });
    }
  }

  baseline(): void {
    for (const id of this.snapshots[0]!.rows.keys()) this.add(id, { seq: 0, op: 'baseline' });
  }

  private add(id: number, v: Version): void {
    const list = this.versions.get(id) ?? [];
    list.push(v);
    this.versions.set(id, list);
  }

  /** The version of `id` visible at snapshot `seq`, if any. */
  versionAt(id: number, seq: number): Version | undefined {
    let found: Version | undefined;
    for (const v of this.versions.get(id) ?? []) {
      if (v.seq > seq) break;
      found = v;
    }
    return found;
  }
}

// ---------------------------------------------------------------------------
// The workload

interface TableState {
  ids: number[];
  columns: Column[];
}

class Workload {
  private extraSeq = 0;
  private savepointSeq = 0;
  private effects: Effects = { touched: new Set(), removal: new Map() };
  /** Keys this transaction used, to come back to them. */
  private used: number[] = [];

  constructor(
    private readonly db: pg.Client,
    private readonly r: Random,
    private readonly plugin: Plugin,
    private readonly model: Model,
    readonly transcript: string[],
  ) {}

  private async exec(sql: string, params: Array<string | number | null> = []): Promise<pg.QueryResult> {
    this.transcript.push(`${inlineParams(sql, params)};`);
    return this.db.query(sql, params);
  }

  private async state(): Promise<TableState> {
    const res = await this.db.query<{ ids: number[]; columns: Column[] }>(
      `SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM items) AS ids,
              (SELECT json_agg(json_build_object('name', attname, 'type', format_type(atttypid, NULL)) ORDER BY attnum)
                 FROM pg_attribute WHERE attrelid = 'items'::regclass AND attnum > 0 AND NOT attisdropped) AS columns`,
    );
    return res.rows[0]!;
  }

  private wrote(ids: Iterable<number>): void {
    for (const id of ids) {
      this.effects.touched.add(id);
      this.model.everSeen.add(id);
      this.used.push(id);
    }
  }

  private removed(ids: Iterable<number>, how: 'delete' | 'truncate'): void {
    for (const id of ids) {
      this.wrote([id]);
      // a tombstone is named by what removed the row as it was before the
      // transaction: the first removal (agent/assemble.ts)
      if (!this.effects.removal.has(id)) this.effects.removal.set(id, how);
    }
  }

  private returnedIds(res: pg.QueryResult): number[] {
    return res.rows.map((row: { id: number }) => row.id);
  }

  /** An existing key, often one this transaction already used. */
  private existing(s: TableState): number | undefined {
    const again = this.used.filter((id) => s.ids.includes(id));
    if (again.length > 0 && this.r.chance(0.5)) return this.r.pick(again);
    return s.ids.length > 0 ? this.r.pick(s.ids) : undefined;
  }

  private free(s: TableState, range: number): number | undefined {
    const again = this.used.filter((id) => !s.ids.includes(id) && id <= range);
    if (again.length > 0 && this.r.chance(0.4)) return this.r.pick(again);
    const free = [];
    for (let id = 1; id <= range; id++) if (!s.ids.includes(id)) free.push(id);
    return free.length > 0 ? this.r.pick(free) : undefined;
  }

  private smallColumns(s: TableState): Column[] {
    return s.columns.filter((c) => c.name !== 'id' && c.name !== 'big' && c.name !== 'j');
  }

  private assignments(columns: Column[], params: Array<string | number | null>): string {
    return columns.map((c) => {
      params.push(valueFor(this.r, this.plugin, c));
      return `${ident(c.name)} = $${params.length}::${c.type}`;
    }).join(', ');
  }

  private someOf<T>(items: T[], min: number, max: number): T[] {
    const pool = [...items];
    const out: T[] = [];
    const n = Math.min(pool.length, this.r.int(min, max));
    while (out.length < n) out.push(pool.splice(Math.floor(this.r.next() * pool.length), 1)[0]!);
    return out;
  }

  /** Insert fresh rows; before tracking too. */
  async insert(s: TableState, count: number): Promise<void> {
    const ids: number[] = [];
    const taken = { ids: [...s.ids], columns: s.columns };
    for (let i = 0; i < count; i++) {
      const id = this.free(taken, KEY_RANGE);
      if (id === undefined) break;
      ids.push(id);
      taken.ids.push(id);
    }
    if (ids.length === 0) return;
    const params: Array<string | number | null> = [];
    const tuples = ids.map((id) => {
      const values = s.columns.map((c) => {
        params.push(c.name === 'id' ? String(id) : valueFor(this.r, this.plugin, c));
        return `$${params.length}::${c.type}`;
      });
      return `(${values.join(', ')})`;
    });
    const res = await this.exec(
      `INSERT INTO items (${s.columns.map((c) => ident(c.name)).join(', ')}) VALUES ${tuples.join(', ')} RETURNING id`,
      params,
    );
    this.wrote(this.returnedIds(res));
  }

  /** One random row-changing statement. */
  private async dml(allowTruncate: boolean): Promise<void> {
    const s = await this.state();
    const kind = this.r.weighted<string>([
      [18, 'insert'], [4, 'insert many'], [4, 'upsert'], [2, 'insert or nothing'],
      [26, 'update small'], [6, 'update big'], [5, 'update j'], [4, 'update range'], [3, 'update noop'],
      [4, 'update extra'],
      [8, 'change key'], [10, 'delete'], [2, 'delete range'],
      [allowTruncate ? 1 : 0, 'truncate'],
    ]);
    const id = this.existing(s);
    const params: Array<string | number | null> = [];
    switch (kind) {
      case 'insert':
        return this.insert(s, 1);
      case 'insert many':
        return this.insert(s, this.r.int(2, 4));
      case 'upsert': {
        const target = this.r.chance(0.6) ? id ?? 1 : this.r.int(1, KEY_RANGE);
        params.push(String(target), valueFor(this.r, this.plugin, { name: 't', type: 'text' }),
          valueFor(this.r, this.plugin, { name: 'n', type: 'numeric' }));
        const res = await this.exec(
          `INSERT INTO items (id, t, n) VALUES ($1::int, $2::text, $3::numeric)
             ON CONFLICT (id) DO UPDATE SET t = EXCLUDED.t, n = EXCLUDED.n RETURNING id`,
          params,
        );
        return this.wrote(this.returnedIds(res));
      }
      case 'insert or nothing': {
        params.push(String(this.r.int(1, KEY_RANGE)), valueFor(this.r, this.plugin, { name: 'big', type: 'text' }));
        const res = await this.exec(`INSERT INTO items (id, big) VALUES ($1::int, $2::text) ON CONFLICT DO NOTHING RETURNING id`, params);
        return this.wrote(this.returnedIds(res));
      }
      case 'update small':
      case 'update big':
      case 'update j':
      case 'update extra': {
        if (id === undefined) return this.insert(s, 1);
        let columns: Column[];
        if (kind === 'update small') columns = this.someOf(this.smallColumns(s), 1, 3);
        else if (kind === 'update extra') columns = this.someOf(s.columns.filter((c) => /^x\d+$/.test(c.name)), 1, 2);
        else columns = s.columns.filter((c) => c.name === (kind === 'update big' ? 'big' : 'j'));
        if (columns.length === 0) columns = this.someOf(this.smallColumns(s), 1, 1);
        if (kind !== 'update small' && this.r.chance(0.3)) columns.push(...this.someOf(this.smallColumns(s), 1, 1));
        const set = this.assignments([...new Set(columns)], params);
        params.push(String(id));
        const res = await this.exec(`UPDATE items SET ${set} WHERE id = $${params.length}::int RETURNING id`, params);
        return this.wrote(this.returnedIds(res));
      }
      case 'update range': {
        const columns = this.someOf(this.smallColumns(s), 1, 2);
        const set = this.assignments(columns, params);
        params.push(this.r.int(2, 5));
        params.push(this.r.int(0, Number(params[params.length - 1]) - 1));
        const res = await this.exec(
          `UPDATE items SET ${set} WHERE id % $${params.length - 1}::int = $${params.length}::int RETURNING id`, params);
        return this.wrote(this.returnedIds(res));
      }
      case 'update noop': {
        if (id === undefined) return this.insert(s, 1);
        // changes nothing, but is a row change in the WAL like any other
        const res = await this.exec(`UPDATE items SET t = t WHERE id = $1::int RETURNING id`, [String(id)]);
        return this.wrote(this.returnedIds(res));
      }
      case 'change key': {
        if (id === undefined) return this.insert(s, 1);
        const to = this.free(s, KEY_RANGE_PK);
        if (to === undefined) return;
        params.push(String(to));
        let set = `id = $1::int`;
        if (this.r.chance(0.4)) set += `, ${this.assignments(this.someOf(this.smallColumns(s), 1, 2), params)}`;
        if (this.r.chance(0.15)) set += `, ${this.assignments(s.columns.filter((c) => c.name === 'big'), params)}`;
        params.push(String(id));
        const res = await this.exec(`UPDATE items SET ${set} WHERE id = $${params.length}::int RETURNING id`, params);
        if (res.rowCount === 1) this.removed([id], 'delete');
        return this.wrote(this.returnedIds(res));
      }
      case 'delete': {
        if (id === undefined) return this.insert(s, 1);
        const res = await this.exec(`DELETE FROM items WHERE id = $1::int RETURNING id`, [String(id)]);
        return this.removed(this.returnedIds(res), 'delete');
      }
      case 'delete range': {
        const m = this.r.int(3, 7);
        const res = await this.exec(`DELETE FROM items WHERE id % $1::int = $2::int RETURNING id`, [m, this.r.int(0, m - 1)]);
        return this.removed(this.returnedIds(res), 'delete');
      }
      case 'truncate':
        await this.exec(`TRUNCATE items`);
        return this.removed(s.ids, 'truncate');
    }
    throw new Error(`unknown statement kind ${kind}`);
  }

  /** ALTER TABLE ADD or DROP COLUMN of a non-key column. */
  private async ddl(): Promise<void> {
    const s = await this.state();
    const extras = s.columns.filter((c) => /^x\d+$/.test(c.name));
    // wal2json 2.5 cannot tell a dropped variable-length column from an
    // unchanged TOASTed one (agent/wal2json.ts): the documented loss
    const droppable = extras.filter((c) => this.plugin === 'pgoutput' || FIXED_LENGTH_TYPES.has(c.type));
    if (droppable.length > 0 && (extras.length >= MAX_EXTRA_COLUMNS || this.r.chance(0.4))) {
      await this.exec(`ALTER TABLE items DROP COLUMN ${ident(this.r.pick(droppable).name)}`);
      return;
    }
    if (extras.length >= MAX_EXTRA_COLUMNS) return;
    const type = this.r.pick(EXTRA_TYPES);
    // names are never reused: answers are typed by the column of that name now
    const name = `x${++this.extraSeq}`;
    const fallback = this.r.chance(0.3) ? valueFor(this.r, this.plugin, { name, type }) : null;
    await this.exec(`ALTER TABLE items ADD COLUMN ${ident(name)} ${type}${fallback === null ? '' : ` DEFAULT ${literal(fallback)}::${type}`}`);
  }

  /** A SAVEPOINT, a few statements, then ROLLBACK TO it or RELEASE it. */
  private async savepoint(inRollback: boolean): Promise<void> {
    const name = `s${++this.savepointSeq}`;
    const undo = this.r.chance(0.65);
    await this.exec(`SAVEPOINT ${name}`);
    const saved = cloneEffects(this.effects);
    const n = this.r.int(1, 3);
    for (let i = 0; i < n; i++) {
      // DDL after row changes only where it is undone (see the header)
      if ((undo || inRollback) && this.r.chance(0.1)) await this.ddl();
      else await this.dml(this.r.chance(0.1));
    }
    if (undo) {
      if (this.r.chance(0.3)) {
        // a failing statement: the transaction is aborted until ROLLBACK TO
        const s = await this.state();
        const dup = s.ids.length > 0 ? this.r.pick(s.ids) : undefined;
        if (dup !== undefined) {
          const err = await this.exec(`INSERT INTO items (id) VALUES ($1::int)`, [String(dup)]).then(() => null, (e: Error) => e);
          if (err === null) throw new Error(`model: inserting existing key ${dup} did not fail`);
          this.transcript.push(`-- (fails: ${err.message})`);
        }
      }
      await this.exec(`ROLLBACK TO SAVEPOINT ${name}`);
      this.effects = saved;
    } else {
      await this.exec(`RELEASE SAVEPOINT ${name}`);
    }
  }

  /** One random transaction, its snapshot, and its versions in the model. */
  async transaction(index: number): Promise<void> {
    this.effects = { touched: new Set(), removal: new Map() };
    this.used = [];
    const kind = this.r.weighted<string>([[70, 'commit'], [8, 'rollback'], [5, 'ddl'], [3, 'truncate']]);
    const statements = this.r.chance(0.45) ? 1 : this.r.int(2, 5);
    this.transcript.push(`-- transaction ${index}: ${kind}`);
    await this.exec('BEGIN');
    if (kind === 'ddl') {
      // DDL first, before any row change: the columns at commit are those of every change
      await this.ddl();
      if (this.r.chance(0.3)) await this.ddl();
    }
    const truncateAt = kind === 'truncate' ? this.r.int(0, statements - 1) : -1;
    for (let i = 0; i < statements; i++) {
      if (i === truncateAt) {
        const s = await this.state();
        await this.exec('TRUNCATE items');
        this.removed(s.ids, 'truncate');
      } else if (this.r.chance(0.12)) {
        await this.savepoint(kind === 'rollback');
      } else if (kind === 'rollback' && this.r.chance(0.15)) {
        await this.ddl();
      } else {
        await this.dml(kind === 'rollback' && this.r.chance(0.2));
      }
    }
    if (kind === 'rollback') {
      await this.exec('ROLLBACK');
      await this.model.snapshot(`after transaction ${index} (rolled back)`);
    } else {
      await this.exec('COMMIT');
      await this.model.snapshot(`after transaction ${index}`);
      this.model.commit(this.effects);
    }
    this.transcript.push(`-- snapshot ${this.model.snapshots.length - 1} at ${this.model.snapshots[this.model.snapshots.length - 1]!.lsn}`);
  }

  /** The one-statement transaction that marks the end. */
  async sentinel(): Promise<void> {
    this.effects = { touched: new Set(), removal: new Map() };
    this.transcript.push('-- the sentinel');
    const res = await this.exec(`INSERT INTO items (id, t) VALUES ($1::int, 'end') RETURNING id`, [String(SENTINEL)]);
    this.wrote(this.returnedIds(res));
    await this.model.snapshot('after the sentinel');
    this.model.commit(this.effects);
  }

  async fill(): Promise<void> {
    await this.insert(await this.state(), BASELINE_ROWS);
  }
}

// ---------------------------------------------------------------------------
// Helpers in SQL for the comparison (see the header)

const MODEL_FUNCTIONS = `
CREATE SCHEMA model;
-- A version's row (to_jsonb of the table then) as the extension answers it
-- now: columns the table still has as they were, others as stored text.
-- The workload's extra columns are int, bigint, boolean, numeric or text.
CREATE FUNCTION model.as_now(r jsonb, columns text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT coalesce(jsonb_object_agg(e.key, CASE
           WHEN e.key = ANY (columns) OR jsonb_typeof(e.value) IN ('null', 'string') THEN e.value
           WHEN jsonb_typeof(e.value) = 'boolean' THEN to_jsonb(CASE WHEN e.value = 'true' THEN 't' ELSE 'f' END)
           ELSE to_jsonb(e.value::text) END), '{}')
    FROM jsonb_each(r) e
$$;
-- A version's row as read at a later point, where the table had the row
-- table_row: with the columns added in between (those the version lacks
-- and the table has, here and now) as the table had them, their default
-- or NULL (migrations/6_column_additions.sql).
CREATE FUNCTION model.with_added(version_row jsonb, table_row jsonb, columns text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce((SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(table_row) e
                    WHERE e.key = ANY (columns) AND NOT version_row ? e.key), '{}') || version_row
$$;
-- A version's row (to_jsonb of the table then) as a row of the table's type
-- now: every column it has now, NULL where the version has none; dropped
-- columns are not in the type.
CREATE FUNCTION model.as_typed(r jsonb, columns text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT jsonb_object_agg(c, coalesce(r -> c, 'null'::jsonb)) FROM unnest(columns) c
$$;
-- The model checked against the table: present in both or neither, and
-- equal (as text) on every column both have.
CREATE FUNCTION model.agrees(version_row jsonb, table_row jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
  SELECT (version_row IS NULL) = (table_row IS NULL)
     AND (version_row IS NULL OR NOT EXISTS (
           SELECT 1 FROM jsonb_each(version_row) e
            WHERE table_row ? e.key AND (table_row -> e.key)::text <> e.value::text))
$$;
-- Columns whose stored value differs between two rows (either may be NULL).
CREATE FUNCTION model.changed(prev jsonb, cur jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
  SELECT coalesce(array_agg(k ORDER BY k), '{}')
    FROM (SELECT jsonb_object_keys(prev) UNION SELECT jsonb_object_keys(cur)) x(k)
   WHERE (prev -> k)::text IS DISTINCT FROM (cur -> k)::text
$$;
`;

/** The names of the table's columns now. */
async function columnsNow(db: pg.Client): Promise<string[]> {
  return (await db.query<{ names: string[] }>(
    `SELECT array_agg(attname::text) AS names FROM pg_attribute WHERE attrelid = 'items'::regclass AND attnum > 0 AND NOT attisdropped`,
  )).rows[0]!.names;
}

/** got vs want, around where they first differ. */
function showDifference(got: string | null, want: string | null): string {
  if (got === null || want === null) return `got ${clip(got, 0)}, want ${clip(want, 0)}`;
  let i = 0;
  while (i < got.length && i < want.length && got[i] === want[i]) i++;
  return `differ at char ${i}: got ${clip(got, i)}, want ${clip(want, i)}`;
}

function clip(text: string | null, at: number): string {
  if (text === null) return 'NULL';
  const from = Math.max(0, at - 60);
  const to = Math.min(text.length, at + 140);
  return `${from > 0 ? '…' : ''}${text.slice(from, to)}${to < text.length ? `… (${text.length} chars)` : ''}`;
}

// ---------------------------------------------------------------------------

describe.each(['pgoutput', 'wal2json'] as const)('the agent on %s against the model', (plugin) => {
  const seed = SEED;
  const replay = `agent model (${plugin}): replay with PGTIMEWARP_SEED=${seed}`;
  let timewarp: Timewarp | undefined;
  const events: AgentEvent[] = [];
  const stop = new AbortController();
  let running: Promise<void> | undefined;
  let agentError: unknown;
  let model: Model | undefined;
  /** Set once the workload is stored: the comparisons need all of it. */
  let stored = false;
  const transcript: string[] = [`-- pgtimewarp model workload, plugin ${plugin}, seed ${seed}`];
  let transcriptWritten = false;

  const onFailure = (): void => {
    onTestFailed(() => {
      if (!transcriptWritten) {
        const file = join(tmpdir(), `pgtimewarp-model-${plugin}-${seed}.sql`);
        try {
          writeFileSync(file, transcript.join('\n') + '\n');
          console.error(`${replay}\nthe workload as SQL: ${file}`);
        } catch {
          console.error(replay);
        }
        transcriptWritten = true;
      } else {
        console.error(replay);
      }
    });
  };

  afterAll(async () => {
    stop.abort();
    await running?.catch(() => undefined);
    await timewarp?.source.end();
  });

  it('streams a random workload into the store', { timeout: 240_000 }, async () => {
    onFailure();
    const started = Date.now();
    timewarp = await setupTimewarp(cluster(), { sourceDb: `model_src_${plugin}`, storeDb: `model_store_${plugin}`, nodeId: `model_${plugin}` });
    const { source } = timewarp;
    await source.query(MODEL_FUNCTIONS);
    await source.query(`CREATE TABLE items (id int PRIMARY KEY, n numeric, i8 bigint, t text, big text, j jsonb, f float8)`);
    await source.query(`ALTER TABLE items ALTER big SET STORAGE EXTERNAL`);
    transcript.push(
      `CREATE TABLE items (id int PRIMARY KEY, n numeric, i8 bigint, t text, big text, j jsonb, f float8);`,
      `ALTER TABLE items ALTER big SET STORAGE EXTERNAL;`,
    );

    const random = new Random(seed);
    model = new Model(source);
    const workload = new Workload(source, random, plugin, model, transcript);
    await workload.fill();

    // the agent first, so its slot exists before tracking starts (as agent.test.ts)
    running = runAgent({
      sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId,
      slot: `model_${plugin}`, plugin, signal: stop.signal, log: (e) => events.push(e),
      backoff: { initialMs: 100, maxMs: 1000 },
    });
    running.catch((err: unknown) => { agentError = err; });
    await waitFor('the agent\'s slot', async () => (await source.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $1`, [`model_${plugin}`])).rowCount === 1, 60_000);
    await source.query(`SELECT pgtimewarp_track('items')`);
    transcript.push(`SELECT pgtimewarp_track('items');`);
    await model.snapshot('after tracking');
    model.baseline();

    const transactions = random.int(150, 300);
    for (let i = 1; i <= transactions; i++) await workload.transaction(i);
    await workload.sentinel();
    const workloadMs = Date.now() - started;

    await waitFor('the sentinel in the store', async () => {
      if (agentError !== undefined) throw new Error(`the agent stopped: ${String(agentError)}; ${replay}`);
      // a clean run needs no retry: say why at once rather than time out
      const trouble = events.filter((e) => e.level !== 'info');
      if (trouble.length > 0) throw new Error(`the agent ${trouble[0]!.event}: ${trouble[0]!.message}; ${replay}`);
      const res = await source.query<{ ok: boolean }>(
        `SELECT pgtimewarp_asof_pk_lsn('items', $1, 'FFFFFFFF/FFFFFFFF') IS NOT NULL AS ok`, [JSON.stringify({ id: SENTINEL })],
      ).catch(() => ({ rows: [{ ok: false }] }));
      return res.rows[0]?.ok === true;
    }, 60_000);
    console.log(`agent model (${plugin}, seed ${seed}): ${transactions} transactions, ${model.snapshots.length} snapshots, ` +
      `${[...model.versions.values()].reduce((n, v) => n + v.length, 0)} versions of ${model.versions.size} keys; ` +
      `workload ${workloadMs} ms, stored after ${Date.now() - started} ms`);
    stored = true;
    // History is complete: stop the agent, so that the comparisons have the machine to themselves.
    stop.abort();
    await running;
    // a clean run needs no retry: every warning here is a bug
    expect(events.filter((e) => e.level !== 'info'), replay).toEqual([]);
  });

  it('answers every key at every recorded LSN as the model has it', { timeout: 240_000 }, async (ctx) => {
    // the workload's test has failed already: nothing to compare
    if (!stored || timewarp === undefined || model === undefined) return ctx.skip();
    onFailure();
    const started = Date.now();
    const { source } = timewarp;
    const columns = await columnsNow(source);
    const lsns = model.snapshots.map((s) => s.lsn);
    const failures: string[] = [];
    let compared = 0;
    for (const id of [...model.everSeen].sort((a, b) => a - b)) {
      // the rows this key had, once each; per snapshot, the one expected and the one in the table
      const texts: string[] = [];
      const index = (text: string | undefined): number | null => {
        if (text === undefined) return null;
        let i = texts.indexOf(text);
        if (i < 0) i = texts.push(text) - 1;
        return i + 1;
      };
      const expected = model.snapshots.map((_, seq) => {
        const v = model!.versionAt(id, seq);
        return v === undefined ? null : index(model!.snapshots[v.seq]!.rows.get(id));
      });
      const inTable = model.snapshots.map((s) => index(s.rows.get(id)));
      const res = await source.query<{ n: string; bad: Array<{ seq: number; got: string | null; want: string | null; model_ok: boolean }> | null }>(
        `SELECT count(*) AS n,
                json_agg(json_build_object('seq', x.i - 1, 'got', a.got, 'want', b.want, 'model_ok', c.ok) ORDER BY x.i)
                  FILTER (WHERE a.got IS DISTINCT FROM b.want OR NOT c.ok) AS bad
           FROM unnest($2::pg_lsn[], $3::int[], $4::int[]) WITH ORDINALITY AS x(lsn, w, t, i)
          CROSS JOIN LATERAL (SELECT pgtimewarp_asof_pk_lsn('items', $1::jsonb, x.lsn)::text AS got) a
          CROSS JOIN LATERAL (SELECT model.as_now(model.with_added(($5::text[])[x.w]::jsonb, ($5::text[])[x.t]::jsonb, $6::text[]), $6::text[])::text AS want) b
          CROSS JOIN LATERAL (SELECT model.agrees(($5::text[])[x.w]::jsonb, ($5::text[])[x.t]::jsonb) AS ok) c`,
        [JSON.stringify({ id }), lsns, expected, inTable, texts, columns],
      );
      compared += Number(res.rows[0]!.n);
      for (const b of res.rows[0]!.bad ?? []) {
        const snap = model.snapshots[b.seq]!;
        const v = model.versionAt(id, b.seq);
        const where = `id ${id} at ${snap.lsn} (snapshot ${b.seq}, ${snap.label}; model: ${v === undefined ? 'no version' : `${v.op} of snapshot ${v.seq}`})`;
        if (!b.model_ok) failures.push(`MODEL ERROR ${where}: the table has ${clip(snap.rows.get(id) ?? null, 0)}`);
        if (b.got !== b.want) failures.push(`${where}: ${showDifference(b.got, b.want)}`);
      }
    }
    console.log(`agent model (${plugin}, seed ${seed}): ${compared} as-of lookups compared in ${Date.now() - started} ms`);
    expect(compared).toBe(model.snapshots.length * model.everSeen.size);
    expect(failures.slice(0, 12), `${failures.length} mismatches; ${replay}`).toEqual([]);
  });

  it('answers pgtimewarp_asof_table and pgtimewarp_asof_table_lsn with the model\'s rows at every recorded point', { timeout: 240_000 }, async (ctx) => {
    // the workload's test has failed already: nothing to compare
    if (!stored || timewarp === undefined || model === undefined) return ctx.skip();
    onFailure();
    const started = Date.now();
    const { source } = timewarp;
    const m = model;
    // each recorded row once; per snapshot, the table's rows then as indexes into them
    const texts: string[] = [];
    const textIndex = new Map<string, number>();
    const present = m.snapshots.map((snap) => [...snap.rows.entries()].sort(([a], [b]) => a - b).map(([id, text]) => {
      let i = textIndex.get(text);
      if (i === undefined) textIndex.set(text, i = texts.push(text) - 1);
      return { id, i };
    }));
    const typed = (await source.query<{ row: string }>(
      `SELECT model.as_typed(u.r::jsonb, $2::text[])::text AS row FROM unnest($1::text[]) WITH ORDINALITY AS u(r, i) ORDER BY u.i`,
      [texts, await columnsNow(source)],
    )).rows.map((r) => r.row);

    const failures: string[] = [];
    let compared = 0;
    const FUNCTIONS = [
      { name: 'pgtimewarp_asof_table', at: (snap: Snapshot) => snap.ts, sql: `pgtimewarp_asof_table(NULL::items, $1::timestamptz)` },
      { name: 'pgtimewarp_asof_table_lsn', at: (snap: Snapshot) => snap.lsn, sql: `pgtimewarp_asof_table_lsn(NULL::items, $1::pg_lsn)` },
    ];
    for (const fn of FUNCTIONS) {
      for (const [seq, snap] of m.snapshots.entries()) {
        if (failures.length >= 24) break;
        const where = `${fn.name} at ${fn.at(snap)} (snapshot ${seq}, ${snap.label})`;
        const want = present[seq]!.map((p) => ({ id: p.id, row: typed[p.i]! }));
        let got: string[];
        try {
          got = (await source.query<{ rows: string[] }>(
            `SELECT coalesce(array_agg(to_jsonb(r)::text ORDER BY r.id), '{}') AS rows FROM ${fn.sql} r`, [fn.at(snap)],
          )).rows[0]!.rows;
        } catch (err) {
          failures.push(`${where}: ${(err as Error).message}`);
          continue;
        }
        compared++;
        if (JSON.stringify(got) === JSON.stringify(want.map((w) => w.row))) continue;
        const gotIds = got.map((row) => (JSON.parse(row) as { id: number }).id);
        const missing = want.filter((w) => !gotIds.includes(w.id)).map((w) => w.id);
        const extra = gotIds.filter((id, i) => !want.some((w) => w.id === id) || gotIds.indexOf(id) !== i);
        const differ = want.flatMap((w) => {
          const g = got[gotIds.indexOf(w.id)];
          return g === undefined || g === w.row ? [] : [`id ${w.id}: ${showDifference(g, w.row)}`];
        });
        failures.push(`${where}: ${got.length} rows, want ${want.length}` +
          (missing.length > 0 ? `; missing ids ${missing.join(', ')}` : '') +
          (extra.length > 0 ? `; extra or repeated ids ${extra.join(', ')}` : '') +
          (differ.length > 0 ? `; ${differ.length} rows differ, first ${differ[0]}` : ''));
      }
    }
    console.log(`agent model (${plugin}, seed ${seed}): ${compared} whole-table answers compared in ${Date.now() - started} ms`);
    expect(failures.slice(0, 12), `${failures.length} mismatches; ${replay}`).toEqual([]);
    expect(compared).toBe(2 * m.snapshots.length);
  });

  it('answers pgtimewarp_asof_pks for many keys as pgtimewarp_asof_pk answers each, at every recorded time', { timeout: 240_000 }, async (ctx) => {
    // the workload's test has failed already: nothing to compare
    if (!stored || timewarp === undefined || model === undefined) return ctx.skip();
    onFailure();
    const started = Date.now();
    const { source } = timewarp;
    // every key ever seen, shuffled, then one again and one never seen
    const r = new Random(seed + 1);
    const keys = [...model.everSeen].sort((a, b) => a - b);
    for (let i = keys.length - 1; i > 0; i--) {
      const j = r.int(0, i);
      [keys[i], keys[j]] = [keys[j]!, keys[i]!];
    }
    keys.push(keys[0]!, 100_000);
    const pks = keys.map((id) => JSON.stringify({ id }));
    const failures: string[] = [];
    let compared = 0;
    for (const [seq, snap] of model.snapshots.entries()) {
      if (failures.length >= 24) break;
      const where = `at ${snap.ts} (snapshot ${seq}, ${snap.label})`;
      let res: pg.QueryResult<{ n: string; bad: Array<{ o: number; want_pk: string | null; got_pk: string | null; want: string | null; got: string | null }> | null }>;
      try {
        res = await source.query(
          `WITH want AS (
             SELECT k.o, k.pk, pgtimewarp_asof_pk('items', k.pk, $2::timestamptz)::text AS row
               FROM unnest($1::jsonb[]) WITH ORDINALITY AS k(pk, o)),
           got AS (
             SELECT p.o, p.pk, p.row_data::text AS row
               FROM pgtimewarp_asof_pks('items', $1::jsonb[], $2::timestamptz) WITH ORDINALITY AS p(pk, row_data, o))
           SELECT (SELECT count(*) FROM got) AS n,
                  json_agg(json_build_object('o', o, 'want_pk', want.pk::text, 'got_pk', got.pk::text, 'want', want.row, 'got', got.row) ORDER BY o)
                    FILTER (WHERE want.o IS NULL OR got.o IS NULL OR want.pk IS DISTINCT FROM got.pk OR want.row IS DISTINCT FROM got.row) AS bad
             FROM want FULL JOIN got USING (o)`,
          [pks, snap.ts],
        );
      } catch (err) {
        failures.push(`${where}: ${(err as Error).message}`);
        continue;
      }
      compared += keys.length;
      if (Number(res.rows[0]!.n) !== keys.length) failures.push(`${where}: ${res.rows[0]!.n} rows for ${keys.length} keys`);
      for (const b of res.rows[0]!.bad ?? []) {
        failures.push(`${where}, key ${b.o} of ${keys.length} (${b.want_pk ?? 'none given'}): ` +
          (b.got_pk === null ? 'no row' : b.want_pk === null ? `an extra row for ${b.got_pk}` :
            b.got_pk !== b.want_pk ? `pk ${b.got_pk}` : `row_data ${showDifference(b.got, b.want)} (want: what pgtimewarp_asof_pk answers)`));
      }
    }
    console.log(`agent model (${plugin}, seed ${seed}): ${compared} keys looked up with pgtimewarp_asof_pks in ${Date.now() - started} ms`);
    expect(failures.slice(0, 12), `${failures.length} mismatches; ${replay}`).toEqual([]);
    expect(compared).toBe(model.snapshots.length * keys.length);
  });

  it('gives every key exactly the model\'s versions with pgtimewarp_diff_pk', { timeout: 240_000 }, async (ctx) => {
    // the workload's test has failed already: nothing to compare
    if (!stored || timewarp === undefined || model === undefined) return ctx.skip();
    onFailure();
    const { source } = timewarp;
    // as text: a Date would cut the microseconds, and so start before tracking did
    const status = await source.query<{ from_ts: string }>(
      `SELECT tracked_from_ts::text AS from_ts FROM pgtimewarp_status() WHERE table_name = 'items'`,
    );
    const fromTs = status.rows[0]!.from_ts;
    // the agent is stopped: a call about now() would wait for it (up to a
    // second each) before answering with what is stored, which is complete
    await source.query(`SET pgtimewarp.horizon_wait = 0`);
    const columns = await columnsNow(source);
    const problems: string[] = [];
    let checked = 0;
    /** The first snapshot taken at or after an LSN. */
    const snapshotOf = (lsn: string): number => {
      const at = lsnFromText(lsn);
      const i = model!.snapshots.findIndex((s) => lsnFromText(s.lsn) >= at);
      return i < 0 ? model!.snapshots.length : i;
    };
    for (const id of [...model.everSeen].sort((a, b) => a - b)) {
      const versions = model.versions.get(id) ?? [];
      const rows = versions.map((v) => (v.op === 'delete' || v.op === 'truncate' ? null : model!.snapshots[v.seq]!.rows.get(id) ?? null));
      const want = (await source.query<{ row: string | null; changed: string[] }>(
        `SELECT model.as_now(u.r::jsonb, $3::text[])::text AS row, model.changed(u.p::jsonb, u.r::jsonb) AS changed
           FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(r, p, i) ORDER BY u.i`,
        [rows, rows.map((_, i) => (i === 0 ? null : rows[i - 1])), columns],
      )).rows.map((r, i) => ({
        op: versions[i]!.op,
        row: r.row,
        changed: rows[i] === null ? null : r.changed,
      }));
      const got = await source.query<{ from_lsn: string; to_lsn: string | null; op: string; row: string | null; changed: string[] | null }>(
        `SELECT valid_from_lsn::text AS from_lsn, valid_to_lsn::text AS to_lsn, op, row_data::text AS row, changed_columns AS changed
           FROM pgtimewarp_diff_pk('items', $1::jsonb, $2::timestamptz, now())`,
        [JSON.stringify({ id }), fromTs],
      );
      const gotVersions = got.rows.map((r) => ({ op: r.op, row: r.row, changed: r.changed === null ? null : [...r.changed].sort() }));
      checked += versions.length;
      const sameOps = JSON.stringify(gotVersions.map((v) => v.op)) === JSON.stringify(want.map((v) => v.op));
      if (!sameOps) {
        problems.push(`id ${id}: versions ${got.rows.map((r) => `${r.op}@${snapshotOf(r.from_lsn)}`).join(' ')}, ` +
          `want ${versions.map((v) => `${v.op}@${v.seq}`).join(' ')} (op@snapshot: the first snapshot that sees it)`);
        continue;
      }
      want.forEach((w, i) => {
        const g = gotVersions[i]!;
        const v = versions[i]!;
        const where = `id ${id}, version ${i} (${v.op} of snapshot ${v.seq}, ${model!.snapshots[v.seq]!.label})`;
        if (g.row !== w.row) problems.push(`${where}: row_data ${showDifference(g.row, w.row)}`);
        if (JSON.stringify(g.changed) !== JSON.stringify(w.changed)) {
          problems.push(`${where}: changed_columns ${JSON.stringify(g.changed)}, want ${JSON.stringify(w.changed)}`);
        }
        // valid from the commit of its transaction: after the snapshot before it, at or before its own
        const from = lsnFromText(got.rows[i]!.from_lsn);
        const upper = lsnFromText(model!.snapshots[v.seq]!.lsn);
        const lower = v.seq === 0 ? 0n : lsnFromText(model!.snapshots[v.seq - 1]!.lsn);
        if (!(from > lower && from <= upper)) {
          problems.push(`${where}: valid_from_lsn ${got.rows[i]!.from_lsn} outside (${v.seq === 0 ? '0/0' : model!.snapshots[v.seq - 1]!.lsn}, ${model!.snapshots[v.seq]!.lsn}]`);
        }
        const next = got.rows[i + 1]?.from_lsn ?? null;
        if (got.rows[i]!.to_lsn !== next) problems.push(`${where}: valid_to_lsn ${got.rows[i]!.to_lsn}, want ${next}`);
      });
    }
    console.log(`agent model (${plugin}, seed ${seed}): ${checked} versions of ${model.everSeen.size} keys compared with pgtimewarp_diff_pk`);
    expect(problems.slice(0, 12), `${problems.length} problems; ${replay}`).toEqual([]);
  });
});
