// The work behind `pgtimewarp track`, `untrack`, `status`, `asof` and `diff`:
// each a plain function over the extension's SQL API in the source database
// (README.md, "The SQL API"), returning a result object that
// installer/query-format.ts turns into text and commands.ts wires to the
// command line.  Errors from PostgreSQL propagate unchanged, so the CLI shows
// their DETAIL and HINT; NOTICEs and WARNINGs (for instance "history ... is
// complete only up to ...") are collected into the result and also passed
// to `onNotice` as they arrive, so the CLI can show them even when a later
// statement fails.

import { once } from 'node:events';
import { pipeline } from 'node:stream/promises';

import pg from 'pg';

import { resolveConnections } from './config.js';
import { CopyOut } from './copy-out.js';
import { type PgNotice } from './output.js';
import { describeConnection, quoteIdent, quoteLiteral } from './query-connection.js';

/** What every query command takes: where the source is, and who hears notices. */
export interface SourceOptions {
  /** Source database URL; else PGTIMEWARP_SOURCE_URL, the config file, PG* variables. */
  source?: string;
  /** Environment to resolve the connection from (tests pass their own). */
  env?: NodeJS.ProcessEnv;
  /** Called with each NOTICE/WARNING as PostgreSQL sends it. */
  onNotice?: (notice: PgNotice) => void;
}

/** A table as PostgreSQL resolved the name given (search_path applies, as in psql). */
export interface TableName {
  /** schema.table, quoted where needed: the form the extension's messages use. */
  display: string;
  schema: string;
  name: string;
}

/** A connected source session, with the extension found. */
interface SourceSession {
  client: pg.Client;
  notices: PgNotice[];
  /** Schema the extension's functions live in, quoted for SQL. */
  fn: string;
}

/**
 * Connect to the source database and find the extension, or fail with what
 * to do.  The caller ends the client.
 */
async function openSource(opts: SourceOptions): Promise<SourceSession> {
  const env = opts.env ?? process.env;
  const conn = resolveConnections({ source: opts.source }, { source: true }, env);
  const where = describeConnection('source', opts.source, env, conn.config);
  const client = new pg.Client({
    connectionString: conn.sourceUrl,
    application_name: 'pgtimewarp cli',
    connectionTimeoutMillis: 15_000,
  });
  const notices: PgNotice[] = [];
  client.on('notice', (msg) => {
    const notice: PgNotice = { severity: msg.severity ?? 'NOTICE', message: msg.message ?? '' };
    if (msg.detail) notice.detail = msg.detail;
    if (msg.hint) notice.hint = msg.hint;
    notices.push(notice);
    opts.onNotice?.(notice);
  });
  client.on('error', () => undefined); // a lost connection surfaces through the failing query
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`could not connect to the source database ${where}: ${reason}`);
  }
  try {
    // libpq honours PGTZ; node-postgres does not.  Times without a zone
    // (--at '2024-05-01 10:42') are read, and times printed, in that zone.
    const tz = env['PGTZ'];
    if (tz) await client.query(`SELECT pg_catalog.set_config('TimeZone', $1, false)`, [tz]);
    const ext = await client.query<{ schema: string; db: string }>(
      `SELECT n.nspname AS schema, pg_catalog.current_database() AS db
         FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname = 'pgtimewarp'`,
    );
    const schema = ext.rows[0]?.schema;
    if (schema === undefined) {
      const db = await client.query<{ db: string }>(`SELECT pg_catalog.current_database() AS db`);
      throw new Error(
        `the pgtimewarp extension is not installed in database "${db.rows[0]?.db}" (source ${where}): ` +
          `point --source at the database whose tables you track, or set it up with "pgtimewarp install"`,
      );
    }
    return { client, notices, fn: quoteIdent(schema) };
  } catch (err) {
    await client.end().catch(() => undefined);
    throw err;
  }
}

async function withSource<T>(opts: SourceOptions, work: (s: SourceSession) => Promise<T>): Promise<T> {
  const session = await openSource(opts);
  try {
    return await work(session);
  } finally {
    await session.client.end().catch(() => undefined);
  }
}

/**
 * The table a name stands for, read as SQL reads it (search_path applies,
 * unquoted names fold to lower case); one clean line when there is none.
 */
async function resolveTable(s: SourceSession, table: string): Promise<TableName & { oid: string }> {
  const res = await s.client.query<{ db: string; oid: string | null; display: string; schema: string; name: string }>(
    `SELECT pg_catalog.current_database() AS db, c.oid::text AS oid,
            CASE WHEN c.oid IS NOT NULL THEN pg_catalog.format('%I.%I', n.nspname, c.relname) END AS display,
            n.nspname AS schema, c.relname AS name
       FROM (SELECT pg_catalog.to_regclass($1::text) AS r) q
       LEFT JOIN pg_catalog.pg_class c ON c.oid = q.r
       LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace`,
    [table],
  );
  const { db, oid, ...name } = res.rows[0]!;
  if (oid === null) {
    throw new Error(
      `table ${table} does not exist in database "${db}": name it as in SQL, schema-qualified unless its schema is on the search_path`,
    );
  }
  return { oid, ...name };
}

/**
 * A key is JSON text handed to PostgreSQL as it is (so 40-digit numbers
 * stay exact); only its syntax is checked here, because PostgreSQL's own
 * message for bad JSON names no key.  Whether it names the right columns
 * is the extension's to say: its error lists the primary key.
 */
export function checkKeySyntax(key: string): void {
  try {
    JSON.parse(key);
  } catch (err) {
    throw new Error(
      `the key is not valid JSON (${err instanceof Error ? err.message : String(err)}): ` +
        `give a JSON object naming the primary key columns, e.g. '{"id": 42}'`,
    );
  }
}

// track / untrack ---------------------------------------------------------

export interface TrackResult {
  table: TableName;
  /** pg_lsn from which the table's history is complete. */
  lsn: string;
  notices: PgNotice[];
}

/** SELECT pgtimewarp_track(table): start recording; history is complete from the LSN returned. */
export async function track(opts: SourceOptions & { table: string }): Promise<TrackResult> {
  return withSource(opts, async (s) => {
    const { oid, ...table } = await resolveTable(s, opts.table);
    const res = await s.client.query<{ lsn: string }>(
      `SELECT ${s.fn}.pgtimewarp_track($1::oid::regclass)::text AS lsn`, [oid],
    );
    return { table, lsn: res.rows[0]!.lsn, notices: s.notices };
  });
}

export interface UntrackResult {
  table: TableName;
  notices: PgNotice[];
}

/** SELECT pgtimewarp_untrack(table): stop recording; the history stays queryable. */
export async function untrack(opts: SourceOptions & { table: string }): Promise<UntrackResult> {
  return withSource(opts, async (s) => {
    const { oid, ...table } = await resolveTable(s, opts.table);
    await s.client.query(`SELECT ${s.fn}.pgtimewarp_untrack($1::oid::regclass)`, [oid]);
    return { table, notices: s.notices };
  });
}

// status ------------------------------------------------------------------

/** One row of pgtimewarp_status(). LSNs and times as PostgreSQL prints them. */
export interface StatusRow {
  schema: string;
  table: string;
  tracking: boolean;
  trackedFromLsn: string;
  trackedFromTs: string;
  untrackedLsn: string | null;
  rowVersions: number;
  /** How far the agent has applied the WAL (null: no checkpoint yet). */
  confirmedLsn: string | null;
  confirmedTs: string | null;
  /** Bytes of WAL the source has written beyond confirmedLsn. */
  lagBytes: number | null;
  /**
   * How far behind now history is, in seconds: 0 when confirmedLsn is at
   * or past the source's current WAL position (everything written is
   * stored), else the time since confirmedTs, on the source's clock.  An
   * upper bound: every change not yet stored was committed after
   * confirmedTs.  Null without a checkpoint.
   */
  lagSeconds: number | null;
}

export interface StatusResult {
  tables: StatusRow[];
  notices: PgNotice[];
}

/** SELECT * FROM pgtimewarp_status(): the tracked tables the caller may read. */
export async function status(opts: SourceOptions = {}): Promise<StatusResult> {
  return withSource(opts, async (s) => {
    const res = await s.client.query<{
      schema_name: string; table_name: string; tracking: boolean; tracked_from_lsn: string; tracked_from_ts: string;
      untracked_lsn: string | null; row_versions: string; confirmed_lsn: string | null; confirmed_ts: string | null;
      lag_bytes: string | null; lag_seconds: number | null;
    }>(
      // lag_seconds as doctor's slot_lag check has it; clock_timestamp() and
      // the WAL position are read after the function has read the store
      `SELECT schema_name, table_name, tracking, tracked_from_lsn::text, tracked_from_ts::text,
              untracked_lsn::text, row_versions::text, confirmed_lsn::text, confirmed_ts::text, lag_bytes::text,
              CASE WHEN confirmed_lsn IS NULL OR confirmed_ts IS NULL THEN NULL
                   WHEN confirmed_lsn >= pg_catalog.pg_current_wal_lsn() THEN 0
                   ELSE greatest(0, extract(epoch FROM pg_catalog.clock_timestamp() - confirmed_ts))
              END::float8 AS lag_seconds
         FROM ${s.fn}.pgtimewarp_status()`,
    );
    const tables = res.rows.map((r): StatusRow => ({
      schema: r.schema_name,
      table: r.table_name,
      tracking: r.tracking,
      trackedFromLsn: r.tracked_from_lsn,
      trackedFromTs: r.tracked_from_ts,
      untrackedLsn: r.untracked_lsn,
      rowVersions: Number(r.row_versions),
      confirmedLsn: r.confirmed_lsn,
      confirmedTs: r.confirmed_ts,
      lagBytes: r.lag_bytes === null ? null : Number(r.lag_bytes),
      lagSeconds: r.lag_seconds,
    }));
    return { tables, notices: s.notices };
  });
}

// asof --------------------------------------------------------------------

export interface AsofOptions extends SourceOptions {
  table: string;
  /** The primary key as JSON text: '{"id": 42}'. */
  key: string;
  /** A timestamptz (exactly one of at and lsn). */
  at?: string;
  /** A pg_lsn (exactly one of at and lsn). */
  lsn?: string;
}

export interface AsofResult {
  table: TableName;
  key: string;
  /** The time asked for, as PostgreSQL read it (absent for --lsn). */
  at?: string;
  lsn?: string;
  /** The row as JSON text exactly as PostgreSQL printed it, or null: no row with that key then. */
  row: string | null;
  notices: PgNotice[];
}

/** pgtimewarp_asof_pk / pgtimewarp_asof_pk_lsn: the row as it was. */
export async function asof(opts: AsofOptions): Promise<AsofResult> {
  if ((opts.at === undefined) === (opts.lsn === undefined)) {
    throw new Error('asof needs exactly one point in history: a time (--at <timestamptz>) or a WAL position (--lsn <pg_lsn>)');
  }
  checkKeySyntax(opts.key);
  return withSource(opts, async (s) => {
    const { oid, ...table } = await resolveTable(s, opts.table);
    if (opts.at !== undefined) {
      const res = await s.client.query<{ row: string | null; at: string }>(
        `SELECT ${s.fn}.pgtimewarp_asof_pk($1::oid::regclass, $2::jsonb, $3::timestamptz)::text AS row,
                $3::timestamptz::text AS at`,
        [oid, opts.key, opts.at],
      );
      return { table, key: opts.key, at: res.rows[0]!.at, row: res.rows[0]!.row, notices: s.notices };
    }
    const res = await s.client.query<{ row: string | null; lsn: string }>(
      `SELECT ${s.fn}.pgtimewarp_asof_pk_lsn($1::oid::regclass, $2::jsonb, $3::pg_lsn)::text AS row,
              $3::pg_lsn::text AS lsn`,
      [oid, opts.key, opts.lsn],
    );
    return { table, key: opts.key, lsn: res.rows[0]!.lsn, row: res.rows[0]!.row, notices: s.notices };
  });
}

// asof of a whole table --------------------------------------------------

export interface AsofTableOptions extends SourceOptions {
  table: string;
  /** A timestamptz (exactly one of at and lsn). */
  at?: string;
  /** A pg_lsn (exactly one of at and lsn). */
  lsn?: string;
  /** csv: COPY's CSV with a header row; jsonl: one to_jsonb(row) object per line. */
  format: 'csv' | 'jsonl';
  /** Where the rows go as they arrive (stdout for the CLI); not ended. */
  out: NodeJS.WritableStream;
  /** Rows per FETCH for jsonl.  Default 1000. */
  batchRows?: number;
}

export interface AsofTableResult {
  table: TableName;
  /** The time asked for, as PostgreSQL read it (absent for lsn). */
  at?: string;
  lsn?: string;
  /** How many rows were written to `out`. */
  rows: number;
  notices: PgNotice[];
}

/**
 * pgtimewarp_asof_table / pgtimewarp_asof_table_lsn: every row of the table
 * as it was, streamed to opts.out, never all of it in memory: CSV through
 * COPY TO STDOUT, JSON lines through a cursor fetched in batches.
 */
export async function asofTable(opts: AsofTableOptions): Promise<AsofTableResult> {
  if ((opts.at === undefined) === (opts.lsn === undefined)) {
    throw new Error('asof needs exactly one point in history: a time (--at <timestamptz>) or a WAL position (--lsn <pg_lsn>)');
  }
  return withSource(opts, async (s) => {
    const { display, schema, name } = await resolveTable(s, opts.table);
    // COPY and DECLARE take no parameters: the point goes into the statement
    // as a literal of the server's own output for it, read once, so 'now'
    // is one moment and nothing the user typed reaches the SQL text
    const point = opts.at !== undefined
      ? (await s.client.query<{ p: string }>(`SELECT $1::timestamptz::text AS p`, [opts.at])).rows[0]!.p
      : (await s.client.query<{ p: string }>(`SELECT $1::pg_lsn::text AS p`, [opts.lsn])).rows[0]!.p;
    const rows = opts.at !== undefined
      ? `${s.fn}.pgtimewarp_asof_table(NULL::${display}, ${quoteLiteral(point)}::timestamptz)`
      : `${s.fn}.pgtimewarp_asof_table_lsn(NULL::${display}, ${quoteLiteral(point)}::pg_lsn)`;
    const written = opts.format === 'csv'
      ? await copyCsv(s.client, rows, opts.out)
      : await fetchJsonLines(s.client, rows, opts.out, opts.batchRows ?? 1000);
    return {
      table: { display, schema, name },
      ...(opts.at !== undefined ? { at: point } : { lsn: point }),
      rows: written,
      notices: s.notices,
    };
  });
}

/** COPY (SELECT * FROM <rows>) as CSV with a header, into `out`. */
async function copyCsv(client: pg.Client, rows: string, out: NodeJS.WritableStream): Promise<number> {
  const copy = client.query(new CopyOut(`COPY (SELECT * FROM ${rows}) TO STDOUT WITH (FORMAT csv, HEADER)`));
  await pipeline(copy, out, { end: false });
  return copy.rowCount;
}

/** Each row of <rows> as to_jsonb text, one a line, into `out`: a cursor, FETCH by FETCH. */
async function fetchJsonLines(client: pg.Client, rows: string, out: NodeJS.WritableStream, batchRows: number): Promise<number> {
  await client.query('BEGIN');
  try {
    await client.query(`DECLARE pgtimewarp_rows NO SCROLL CURSOR FOR SELECT pg_catalog.to_jsonb(r)::text FROM ${rows} AS r`);
    let written = 0;
    for (;;) {
      const batch = await client.query<[string]>({ text: `FETCH ${batchRows} FROM pgtimewarp_rows`, rowMode: 'array' });
      if (batch.rows.length === 0) break;
      written += batch.rows.length;
      if (!out.write(`${batch.rows.map((r) => r[0]).join('\n')}\n`)) await once(out, 'drain');
    }
    await client.query('COMMIT');
    return written;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

// diff --------------------------------------------------------------------

export interface DiffOptions extends SourceOptions {
  table: string;
  key: string;
  /** timestamptz; default: when tracking of the table began. */
  from?: string;
  /** timestamptz; default: now(). */
  to?: string;
}

/** One column that differs from the previous version; values are JSON text, absent when the column was. */
export interface ColumnChange {
  column: string;
  old?: string;
  new?: string;
}

export interface DiffVersion {
  op: 'baseline' | 'insert' | 'update' | 'delete' | 'truncate';
  validFromLsn: string;
  validToLsn: string | null;
  validFromTs: string;
  validToTs: string | null;
  /** The row as JSON text; null for delete and truncate. */
  row: string | null;
  /**
   * What differs from the version before (which may lie before `from`):
   * every column for an insert or baseline (old absent); none for a
   * delete or truncate.
   */
  changes: ColumnChange[];
  /** An earlier version of this key exists (false for an update that moved the row here from another key). */
  hasPrevious: boolean;
}

export interface DiffResult {
  table: TableName;
  key: string;
  from: string;
  to: string;
  versions: DiffVersion[];
  notices: PgNotice[];
}

/**
 * When tracking of a table began, or null when it is not tracked (the
 * extension's own error then says so).  The store's tracked_relations,
 * through the extension's foreign table, when this role may read it (the
 * extension's owner); else pgtimewarp_status(), which any role may call but
 * which counts every version of every table in the store.
 */
async function trackingStart(s: SourceSession, table: TableName): Promise<string | null> {
  let res: pg.QueryResult<{ ts: string }>;
  try {
    res = await s.client.query<{ ts: string }>(
      `SELECT r.tracked_from_ts::text AS ts FROM pgtimewarp.tracked_relations r
        WHERE r.node_id = (SELECT node_id FROM pgtimewarp.config) AND r.schema_name = $1 AND r.table_name = $2`,
      [table.schema, table.name],
    );
  } catch {
    res = await s.client.query<{ ts: string }>(
      `SELECT tracked_from_ts::text AS ts FROM ${s.fn}.pgtimewarp_status() WHERE schema_name = $1 AND table_name = $2`,
      [table.schema, table.name],
    );
  }
  return res.rows[0]?.ts ?? null;
}

/**
 * pgtimewarp_diff_pk: every version of the row current at some moment in
 * [from, to], oldest first, each with what it changed.  The values before a
 * change come from the previous version; for the first one in the window,
 * from the version just before it (pgtimewarp_asof_pk_lsn one byte of WAL
 * earlier), which is what the extension compared it with too.
 */
export async function diff(opts: DiffOptions): Promise<DiffResult> {
  checkKeySyntax(opts.key);
  return withSource(opts, async (s) => {
    const { oid, ...table } = await resolveTable(s, opts.table);
    const start = opts.from ?? (await trackingStart(s, table));
    // One statement, so that "now" in --from and the default --to are the
    // same instant.  Not tracked: ask anyway with from = to, so that the
    // extension says so, with its hint.
    const range = await s.client.query<{ from_ts: string; to_ts: string }>(
      `SELECT coalesce($1::timestamptz, $2::timestamptz, now())::text AS from_ts,
              coalesce($2::timestamptz, now())::text AS to_ts`,
      [start, opts.to ?? null],
    );
    const { from_ts: from, to_ts: to } = range.rows[0]!;
    const res = await s.client.query<{
      op: DiffVersion['op']; valid_from_lsn: string; valid_to_lsn: string | null; valid_from_ts: string;
      valid_to_ts: string | null; row_data: string | null; changed: string[]; old_values: (string | null)[];
      new_values: (string | null)[]; has_previous: boolean;
    }>(
      `WITH d AS (
         SELECT * FROM ${s.fn}.pgtimewarp_diff_pk($1::oid::regclass, $2::jsonb, $3::timestamptz, $4::timestamptz)
                WITH ORDINALITY AS d(valid_from_lsn, valid_to_lsn, valid_from_ts, valid_to_ts, op, row_data, changed_columns, n)
       ), p AS (
         SELECT d.*,
                CASE WHEN n = 1 THEN
                       CASE WHEN op = 'update'
                            THEN ${s.fn}.pgtimewarp_asof_pk_lsn($1::oid::regclass, $2::jsonb, valid_from_lsn - 1) END
                     ELSE lag(row_data) OVER (ORDER BY n) END AS previous
           FROM d
       )
       SELECT op, valid_from_lsn::text, valid_to_lsn::text, valid_from_ts::text, valid_to_ts::text,
              row_data::text,
              coalesce(changed_columns, '{}') AS changed,
              ARRAY(SELECT (previous -> c)::text FROM unnest(changed_columns) WITH ORDINALITY AS u(c, i) ORDER BY i) AS old_values,
              ARRAY(SELECT (row_data -> c)::text FROM unnest(changed_columns) WITH ORDINALITY AS u(c, i) ORDER BY i) AS new_values,
              previous IS NOT NULL AS has_previous
         FROM p ORDER BY n`,
      [oid, opts.key, from, to],
    );
    const versions = res.rows.map((r): DiffVersion => ({
      op: r.op,
      validFromLsn: r.valid_from_lsn,
      validToLsn: r.valid_to_lsn,
      validFromTs: r.valid_from_ts,
      validToTs: r.valid_to_ts,
      row: r.row_data,
      changes: r.changed.map((column, i) => {
        const change: ColumnChange = { column };
        const before = r.old_values[i];
        const after = r.new_values[i];
        if (before !== null && before !== undefined) change.old = before;
        if (after !== null && after !== undefined) change.new = after;
        return change;
      }),
      hasPrevious: r.has_previous,
    }));
    return { table, key: opts.key, from, to, versions, notices: s.notices };
  });
}
