// Whole table as of a time: every row of a table as it was, read with
// pgtimewarp_asof_table (by time) and pgtimewarp_asof_table_lsn (by LSN),
// extension 0.4, against periods' as-of function on a twin table changed in
// the same transactions.
//
// The table has `rows` rows of five columns (int, int, numeric,
// timestamptz, text), each with VERSIONS versions: its baseline when
// tracking began and VERSIONS - 1 updates of every row, CHUNK rows a
// transaction.  Along the way each round also inserts rows/100 new rows and
// deletes half of those the round before inserted, so that the row count
// changes over time and a deleted row that still shows is caught.  Between
// rounds, with no transaction open, the benchmark notes a time and a WAL
// position: an as-of there is not ambiguous between pgtimewarp's commit
// times and periods' transaction start times.  Early, middle and late are
// after the 2nd, 6th and 10th version.
//
// Rows are consumed on the server: `SELECT count(s) FROM (SELECT ...) s`
// counts whole rows, so every column of every row is formed (count(*)
// would let the planner skip columns of periods' inlined view); node only
// receives the count.  Median of `repetitions`, methods interleaved.  Then
// once per time, to the client: `COPY (SELECT ...) TO STDOUT` read into a
// sink that drops it.  Before any timing, at each time, the answers are
// compared: the row counts, and EXCEPT ALL both ways on all five columns.

import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

import type pg from 'pg';
import { to as copyTo } from 'pg-copy-streams';

import { buildHistory, hasFunction, NOT_IN_EXTENSION, timedQuery } from './history.js';
import { fmt, fmtRatio, median } from './stats.js';
import { progress, sleep } from './support.js';

const NODE = 'whole';
const SLOT = 'whole_agent';
const VERSIONS = 10;
const CHUNK = 10_000;
/** After which version each as-of time is taken. */
const POINTS = [
  { name: 'early', afterVersion: 2 },
  { name: 'middle', afterVersion: 6 },
  { name: 'late', afterVersion: VERSIONS },
] as const;
const COLUMNS = 'id, n, amount, changed_at, note';

export interface AsofTableOptions {
  rows: number;
  repetitions: number;
  periods: boolean;
}

type Method = 'pgtimewarp' | 'pgtimewarpLsn' | 'periods';

export interface AsofTablePoint {
  name: string;
  afterVersion: number;
  at: string;
  lsn: string;
  /** Rows each method returned (the same in every repetition). */
  rows: Partial<Record<Method, number>>;
  /** Rows per second counted on the server, median of the repetitions. */
  rowsPerSecond: Partial<Record<Method, number>>;
  seconds: Partial<Record<Method, number[]>>;
  /** Rows per second to the client, COPY ... TO STDOUT into a null sink, once. */
  copyRowsPerSecond: Partial<Record<Method, number>>;
  /** Rows in one answer and not the other (EXCEPT ALL both ways); null without both. */
  except: { onlyPgtimewarp: number; onlyPeriods: number } | null;
}

export interface AsofTableResult {
  rows: number;
  /** Versions of the table in the store. */
  versions: number;
  repetitions: number;
  /** Whether the extension has pgtimewarp_asof_table (0.4). */
  measured: boolean;
  periods: boolean;
  points: AsofTablePoint[];
  /** Notices and warnings the reads raised (e.g. beyond the horizon: the call waited for the agent), each once. */
  notices: string[];
}

const SOURCES: Record<Method, (param: string) => string> = {
  pgtimewarp: (p) => `SELECT * FROM pgtimewarp_asof_table(NULL::tbl, ${p}::timestamptz)`,
  pgtimewarpLsn: (p) => `SELECT * FROM pgtimewarp_asof_table_lsn(NULL::tbl, ${p}::pg_lsn)`,
  // the table's five columns: the same rows to form, without periods' own two
  periods: (p) => `SELECT ${COLUMNS} FROM tbl_p__as_of(${p}::timestamptz)`,
};

/** Rows the query gives, read with COPY TO STDOUT into a sink that drops them; rows per second. */
async function copyToNowhere(db: pg.Client, query: string, rows: number): Promise<number> {
  const started = process.hrtime.bigint();
  await pipeline(db.query(copyTo(`COPY (${query}) TO STDOUT`)), new Writable({ write: (_chunk, _enc, done) => done() }));
  return rows / (Number(process.hrtime.bigint() - started) / 1e9);
}

export async function asofTable(opts: AsofTableOptions): Promise<AsofTableResult> {
  const section = 'whole-table';
  const churn = Math.max(1, Math.round(opts.rows / 100));
  const marks: Array<{ name: string; afterVersion: number; at: string; lsn: string }> = [];
  const history = await buildHistory({
    section, nodeId: NODE, slot: SLOT, table: 'tbl', periods: opts.periods,
    columns: 'id int PRIMARY KEY, n int NOT NULL, amount numeric(12,2) NOT NULL, changed_at timestamptz NOT NULL, note text NOT NULL',
    fill: `SELECT g, 0, (g % 1000) * 1.25, timestamptz '2026-01-01' + g * interval '1 s', md5(g::text) FROM generate_series(1, $1) g`,
    rows: opts.rows,
    write: async (transaction, source) => {
      progress(section, `${VERSIONS - 1} updates of all ${fmt(opts.rows)} rows, ${fmt(CHUNK)} a transaction, ` +
        `${fmt(churn)} rows inserted and ${fmt(churn / 2)} deleted a round, both tables in the same transactions`);
      const mark = async (version: number): Promise<void> => {
        const point = POINTS.find((p) => p.afterVersion === version);
        if (point === undefined) return;
        // no transaction open on either side of the time noted
        await sleep(20);
        const res = await source.query<{ at: string; lsn: string }>(
          `SELECT clock_timestamp()::text AS at, pg_current_wal_insert_lsn()::text AS lsn`);
        marks.push({ ...point, ...res.rows[0]! });
        await sleep(20);
      };
      for (let version = 2; version <= VERSIONS; version++) {
        for (let lo = 1; lo <= opts.rows; lo += CHUNK) {
          await transaction([[`UPDATE {t} SET n = n + 1, amount = amount + 0.75, changed_at = now(), note = md5(note)
                                WHERE id BETWEEN $1 AND $2`, [lo, Math.min(lo + CHUNK - 1, opts.rows)]]]);
        }
        // this round's new rows, and half of the last round's deleted
        const added = opts.rows + (version - 2) * churn;
        await transaction([
          [`INSERT INTO {t} SELECT g, 0, 1.25, now(), md5(g::text) FROM generate_series($1::int, $2::int) g`, [added + 1, added + churn]],
          ...(version > 2 ? [[`DELETE FROM {t} WHERE id > $1::int AND id <= $1::int + $2::int`, [added - churn, Math.floor(churn / 2)]] as const] : []),
        ]);
        await mark(version);
      }
    },
  });
  try {
    const { source, versions } = history;
    const notices = new Set<string>();
    source.on('notice', (n) => notices.add(`${n.severity ?? 'NOTICE'}: ${n.message ?? ''}`));
    progress(section, `${fmt(versions)} versions in the store`);
    const measured = await hasFunction(source, 'pgtimewarp_asof_table(anyelement, timestamptz)') &&
      await hasFunction(source, 'pgtimewarp_asof_table_lsn(anyelement, pg_lsn)');
    if (!measured) progress(section, `pgtimewarp_asof_table: ${NOT_IN_EXTENSION}; periods alone`);
    const methods: Method[] = [...(measured ? ['pgtimewarp', 'pgtimewarpLsn'] as const : []), ...(opts.periods ? ['periods' as const] : [])];
    const param = (m: Method, point: { at: string; lsn: string }): string => (m === 'pgtimewarpLsn' ? point.lsn : point.at);

    const points: AsofTablePoint[] = [];
    for (const mark of marks) {
      const point: AsofTablePoint = { ...mark, rows: {}, rowsPerSecond: {}, seconds: {}, copyRowsPerSecond: {}, except: null };
      // the answers first: wrong ones make the figures worthless (and this warms the caches)
      if (measured && opts.periods) {
        const res = await source.query<{ only_pgtimewarp: string; only_periods: string }>(
          `SELECT (SELECT count(*) FROM (SELECT ${COLUMNS} FROM pgtimewarp_asof_table(NULL::tbl, $1::timestamptz)
                                          EXCEPT ALL ${SOURCES.periods('$1')}) d) AS only_pgtimewarp,
                  (SELECT count(*) FROM (${SOURCES.periods('$1')}
                                          EXCEPT ALL SELECT ${COLUMNS} FROM pgtimewarp_asof_table(NULL::tbl, $1::timestamptz)) d) AS only_periods`,
          [mark.at]);
        point.except = { onlyPgtimewarp: Number(res.rows[0]!.only_pgtimewarp), onlyPeriods: Number(res.rows[0]!.only_periods) };
        const same = point.except.onlyPgtimewarp === 0 && point.except.onlyPeriods === 0;
        progress(section, `${mark.name}: ${same ? 'the same rows both ways' : `WRONG ANSWERS: ${point.except.onlyPgtimewarp} rows only pgtimewarp's, ${point.except.onlyPeriods} only periods'`}`);
      }
      points.push(point);
    }
    for (let rep = 0; rep < opts.repetitions; rep++) {
      for (const point of points) {
        for (const m of methods) {
          const { ms, result } = await timedQuery<{ n: string }>(source, `SELECT count(s) AS n FROM (${SOURCES[m]('$1')}) s`, [param(m, point)]);
          const rows = Number(result.rows[0]!.n);
          if (point.rows[m] !== undefined && point.rows[m] !== rows) throw new Error(`${m} at ${point.name} gave ${point.rows[m]} rows, then ${rows}`);
          point.rows[m] = rows;
          (point.seconds[m] ??= []).push(ms / 1000);
          progress(section, `#${rep + 1} ${point.name} ${m}: ${fmt(rows)} rows in ${(ms / 1000).toFixed(2)} s`);
        }
      }
    }
    for (const point of points) {
      for (const m of methods) point.rowsPerSecond[m] = point.rows[m]! / median(point.seconds[m]!);
      const counts = new Set(methods.map((m) => point.rows[m]));
      if (counts.size > 1) progress(section, `WRONG ANSWERS at ${point.name}: ${methods.map((m) => `${m} ${point.rows[m]}`).join(', ')} rows`);
      for (const m of methods.filter((x) => x !== 'pgtimewarpLsn')) {
        // COPY takes no parameters: the time as a literal (PostgreSQL's own text of it, no quotes in it)
        point.copyRowsPerSecond[m] = await copyToNowhere(source, SOURCES[m](`'${point.at}'`), point.rows[m]!);
        progress(section, `${point.name} ${m}: to the client (COPY) at ${fmt(point.copyRowsPerSecond[m]!)} rows/s`);
      }
    }
    for (const n of notices) progress(section, `the reads raised ${n}`);
    return { rows: opts.rows, versions, repetitions: opts.repetitions, measured, periods: opts.periods, points, notices: [...notices] };
  } finally {
    await history.stop();
  }
}

export function asofTableMarkdown(r: AsofTableResult): string {
  const rate = (p: AsofTablePoint, m: Method): string => {
    if (m !== 'periods' && !r.measured) return NOT_IN_EXTENSION;
    if (m === 'periods' && !r.periods) return 'not measured (periods not installed)';
    return fmt(p.rowsPerSecond[m] ?? Number.NaN);
  };
  const rows = r.points.map((p) => {
    const counts = [...new Set(Object.values(p.rows))];
    const wrong = counts.length > 1 || (p.except !== null && (p.except.onlyPgtimewarp > 0 || p.except.onlyPeriods > 0));
    const ratio = wrong ? '**answers differ**' : fmtRatio((p.rowsPerSecond.pgtimewarp ?? Number.NaN) / (p.rowsPerSecond.periods ?? Number.NaN));
    const copy = `${fmt(p.copyRowsPerSecond.pgtimewarp ?? Number.NaN)} / ${fmt(p.copyRowsPerSecond.periods ?? Number.NaN)}`;
    return `| ${p.name} (after version ${p.afterVersion} of ${VERSIONS}) | ${fmt(counts[0] ?? Number.NaN)} | ${rate(p, 'pgtimewarp')} | ` +
      `${rate(p, 'pgtimewarpLsn')} | ${rate(p, 'periods')} | ${ratio} | ≥ 0.5× | ${copy} |`;
  });
  const checked = r.points.filter((p) => p.except !== null);
  const differing = r.points.filter((p) => new Set(Object.values(p.rows)).size > 1 || (p.except !== null && p.except.onlyPgtimewarp + p.except.onlyPeriods > 0));
  const check = !r.measured || !r.periods
    ? 'The answers were not compared: that needs both pgtimewarp_asof_table and periods.'
    : differing.length === 0
      ? `At each time both gave the same number of rows, and the same rows: \`EXCEPT ALL\` both ways on all five columns found none in one answer and not the other (checked at ${checked.length} times).`
      : `**Wrong answers** at ${differing.map((p) => `${p.name} (rows: ${Object.entries(p.rows).map(([m, n]) => `${m} ${fmt(n)}`).join(', ')}` +
          `${p.except === null ? '' : `; only pgtimewarp's ${fmt(p.except.onlyPgtimewarp)}, only periods' ${fmt(p.except.onlyPeriods)}`})`).join('; ')}: the ratios compare different answers.`;
  return [
    `A ${fmt(r.rows)}-row table (int, int, numeric, timestamptz, text), ${VERSIONS} versions a row (the baseline and ${VERSIONS - 1} updates of every row), ` +
      `and 1% of the rows inserted and half as many deleted a round; ${fmt(r.versions)} versions in the store, and a periods twin changed in the same transactions. ` +
      `Every row as of a time between two rounds. Rows per second counted on the server, \`SELECT count(s) FROM (SELECT ...) s\` ` +
      `(whole rows: every column formed; only the count sent to the client), median of ${r.repetitions}; ` +
      `to the client: one \`COPY (SELECT ...) TO STDOUT\` into a sink that drops the data. periods: \`SELECT ${COLUMNS} FROM tbl_p__as_of(ts)\`.`,
    '',
    '| as of | rows | `pgtimewarp_asof_table(NULL::tbl, ts)` rows/s | `pgtimewarp_asof_table_lsn(NULL::tbl, lsn)` rows/s | periods `tbl_p__as_of(ts)` rows/s | ratio to periods | target | to the client (COPY) rows/s: pgtimewarp / periods |',
    '|---|---|---|---|---|---|---|---|',
    ...rows,
    '',
    check,
    ...(r.notices.length === 0 ? [] : ['', `**The reads raised:** ${r.notices.map((n) => `"${n}"`).join('; ')}.`]),
  ].join('\n');
}
