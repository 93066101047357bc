// As-of latency: one row as of a time, three ways, for random keys at
// random times within the recorded history, each a prepared statement from
// one client connection, timed at the client:
// - pgtimewarp_asof_pk in the source database (over the extension's own
//   store connection);
// - the direct lookup in the store: the two index probes the extension
//   makes (time -> LSN in lsn_time_map, then the key's latest version at
//   or before it in row_versions), run in the store database itself;
// - the periods extension's as-of function on a twin table changed in the
//   same transactions (its history table indexed on (id, system_time_start)).
// Then the timeline of one key with DIFF_VERSIONS versions over the whole
// history: pgtimewarp_diff_pk against the same reads made directly in the
// store.  Then the throughput of many lookups in one query (every key at
// one time): the scalar form, one pgtimewarp_asof_pk call per key, and
// pgtimewarp_asof_pks with all keys in one array (extension 0.4), checked
// once against the scalar form.  Issue 10's targets are printed beside the
// figures.

import type pg from 'pg';

import { Random } from '../test/support/random.js';
import { buildHistory, hasFunction, NOT_IN_EXTENSION, timedQuery } from './history.js';
import { fmt, fmtMs, fmtRatio, median, percentile } from './stats.js';
import { progress } from './support.js';

const NODE = 'asof';
const SLOT = 'asof_agent';
const CHUNK = 1000;
/** Keys given exactly this many versions for the timeline (pgtimewarp_diff_pk). */
const DIFF_VERSIONS = 10;
const DIFF_KEYS = 100;
/** Keys in the one check of pgtimewarp_asof_pks against the scalar form: half of them not in the table. */
const PKS_CHECK_KEYS = 1000;

export interface AsofOptions {
  keys: number;
  rounds: number;
  samples: number;
  repetitions: number;
  periods: boolean;
  seed: number;
}

type Method = 'pgtimewarp' | 'store' | 'periods';
/** Many lookups in one query: each single-lookup method, and pgtimewarp_asof_pks. */
type BatchMethod = Method | 'pks';

interface Latency {
  p50: number;
  p95: number;
  p99: number;
  mean: number;
}

export interface AsofResult {
  keys: number;
  versions: number;
  samples: number;
  repetitions: number;
  seed: number;
  latencyMs: Partial<Record<Method, Latency>>;
  /** lookups per second, every key at one time in one query */
  batchLookupsPerSecond: Partial<Record<BatchMethod, number>>;
  /** Rows found by each batch method, per repetition: the same time for all, so they must agree. */
  batchFound: Partial<Record<BatchMethod, number[]>>;
  /** answers that found a row, per method, in the last repetition (a sanity check: the store's two agree) */
  found: Partial<Record<Method, number>>;
  /** What one pgtimewarp_asof_pk call asks the store (pg_stat_statements in the store, first repetition). */
  remotePerLookup: { statements: number; storeMs: number; statementsByQuery: Array<{ query: string; perLookup: number; meanMs: number }> };
  /** pgtimewarp_asof_pks against pgtimewarp_asof_pk on the same keys at one time; null: the extension has no pgtimewarp_asof_pks. */
  pksCheck: { keys: number; missingKeys: number; wrong: number } | null;
  /** The timeline of a key with DIFF_VERSIONS versions from the start of tracking to the end of the history. */
  diff: {
    keys: number;
    /** Rows pgtimewarp_diff_pk and the direct query returned for each key (all must be DIFF_VERSIONS). */
    versions: { pgtimewarp: number[]; store: number[] };
    samples: number;
    latencyMs: { pgtimewarp: Latency; store: Latency };
  };
}

/**
 * DIFF_KEYS keys spread over the table, each with the versions the rounds
 * give it: its baseline and one for every round r with (id + r) % 3 <> 0.
 */
function diffKeyIds(keys: number, rounds: number): Array<{ id: number; versions: number }> {
  const count = Math.min(DIFF_KEYS, keys);
  return Array.from({ length: count }, (_, i) => {
    const id = Math.max(1, Math.round(((i + 0.5) * keys) / count));
    let versions = 1;
    for (let r = 1; r <= rounds; r++) if ((id + r) % 3 !== 0) versions++;
    return { id, versions };
  });
}

function latency(times: number[]): Latency {
  return { p50: percentile(times, 50), p95: percentile(times, 95), p99: percentile(times, 99), mean: times.reduce((s, t) => s + t, 0) / times.length };
}

/** The median of each figure over repetitions. */
function medianLatency(reps: Latency[]): Latency {
  return { p50: median(reps.map((l) => l.p50)), p95: median(reps.map((l) => l.p95)), p99: median(reps.map((l) => l.p99)), mean: median(reps.map((l) => l.mean)) };
}

export async function asof(opts: AsofOptions): Promise<AsofResult> {
  const section = 'as-of';
  const diffKeys = diffKeyIds(opts.keys, opts.rounds);
  const history = await buildHistory({
    section, nodeId: NODE, slot: SLOT, table: 'lk', periods: opts.periods,
    columns: 'id int PRIMARY KEY, n int NOT NULL, note text NOT NULL',
    fill: 'SELECT g, 0, md5(g::text) FROM generate_series(1, $1) g', rows: opts.keys,
    settings: { shared_preload_libraries: 'pg_stat_statements' },
    write: async (transaction) => {
      progress(section, `${opts.rounds} rounds of updates to two thirds of ${opts.keys.toLocaleString('en-US')} keys, ` +
        `${CHUNK} rows a transaction, both tables in the same transactions; then ${diffKeys.length} keys updated ` +
        `until they have ${DIFF_VERSIONS} versions`);
      for (let round = 1; round <= opts.rounds; round++) {
        for (let lo = 1; lo <= opts.keys; lo += CHUNK) {
          await transaction([[`UPDATE {t} SET n = n + 1, note = md5(note) WHERE id BETWEEN $1 AND $2 AND (id + $3) % 3 <> 0`,
            [lo, lo + CHUNK - 1, round]]]);
        }
      }
      for (let extra = 1; ; extra++) {
        const ids = diffKeys.filter((k) => k.versions + extra <= DIFF_VERSIONS).map((k) => k.id);
        if (ids.length === 0) break;
        await transaction([[`UPDATE {t} SET n = n + 1, note = md5(note) WHERE id = ANY($1::int[])`, [ids]]]);
      }
    },
  });
  try {
    const { source, store, fromTs, toTs, fromLsn, relationId, versions } = history;
    await store.query('CREATE EXTENSION pg_stat_statements');
    progress(section, `${versions.toLocaleString('en-US')} versions of ${opts.keys.toLocaleString('en-US')} keys over ` +
      `${((toTs.getTime() - fromTs.getTime()) / 1000).toFixed(1)} s of history`);

    const lookups: Record<Method, { client: pg.Client; sql: string; args: (id: number, at: string) => unknown[] }> = {
      pgtimewarp: {
        client: source,
        sql: `SELECT pgtimewarp_asof_pk('lk', jsonb_build_object('id', $1::int), $2::timestamptz) AS r`,
        args: (id, at) => [id, at],
      },
      store: {
        client: store,
        sql: `SELECT v.row_data AS r FROM pgtimewarp_store.row_versions v
               WHERE v.relation_id = ${relationId} AND v.pk = ARRAY[$1::int::text]
                 AND v.valid_from_lsn <= greatest($3::pg_lsn,
                       (SELECT m.lsn FROM pgtimewarp_store.lsn_time_map m
                         WHERE m.node_id = '${NODE}' AND m.resolve_ts <= $2::timestamptz
                         ORDER BY m.resolve_ts DESC, m.lsn DESC LIMIT 1))
               ORDER BY v.valid_from_lsn DESC LIMIT 1`,
        args: (id, at) => [id, at, fromLsn],
      },
      periods: {
        client: source,
        sql: `SELECT to_jsonb(h) AS r FROM lk_p__as_of($2::timestamptz) h WHERE h.id = $1::int`,
        args: (id, at) => [id, at],
      },
    };
    const methods: Method[] = opts.periods ? ['pgtimewarp', 'store', 'periods'] : ['pgtimewarp', 'store'];
    const random = new Random(opts.seed);
    // from the next whole millisecond: tracked_from_ts has microseconds, a Date does not, and a time before it is an error
    const first = fromTs.getTime() + 1;
    const randomTime = (): string => new Date(first + random.next() * (toTs.getTime() - first)).toISOString();

    const perRep: Record<Method, Latency[]> = { pgtimewarp: [], store: [], periods: [] };
    const found: Partial<Record<Method, number>> = {};
    let remotePerLookup: AsofResult['remotePerLookup'] = { statements: Number.NaN, storeMs: Number.NaN, statementsByQuery: [] };
    for (let rep = 0; rep < opts.repetitions; rep++) {
      const probes = Array.from({ length: opts.samples }, () => ({ id: random.int(1, opts.keys), at: randomTime() }));
      for (const method of methods) {
        const { client, sql, args } = lookups[method];
        const name = `asof_${method}`;
        for (const p of probes.slice(0, 20)) await client.query({ name, text: sql, values: args(p.id, p.at) }); // warm up
        const times: number[] = [];
        let hits = 0;
        const counting = rep === 0 && method === 'pgtimewarp';
        if (counting) await store.query('SELECT pg_stat_statements_reset()');
        for (const p of probes) {
          const { ms, result } = await timedQuery<{ r: unknown }>(client, { name, text: sql, values: args(p.id, p.at) });
          times.push(ms);
          if (result.rows[0]?.r != null) hits++;
        }
        found[method] = hits;
        if (counting) {
          const res = await store.query<{ query: string; calls: string; ms: number }>(
            `SELECT regexp_replace(left(query, 100), '\\s+', ' ', 'g') AS query, calls, total_exec_time AS ms
               FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
              WHERE d.datname = 'store' AND query !~* 'pg_stat_statements' ORDER BY calls DESC`,
          );
          const n = probes.length;
          remotePerLookup = {
            statements: res.rows.reduce((sum, r) => sum + Number(r.calls), 0) / n,
            storeMs: res.rows.reduce((sum, r) => sum + r.ms, 0) / n,
            statementsByQuery: res.rows.map((r) => ({ query: r.query, perLookup: Number(r.calls) / n, meanMs: r.ms / Number(r.calls) })),
          };
        }
        const lat = latency(times);
        perRep[method].push(lat);
        progress(section, `#${rep + 1} ${method}: p50 ${fmtMs(lat.p50)}, p95 ${fmtMs(lat.p95)}, p99 ${fmtMs(lat.p99)} over ${opts.samples} lookups`);
      }
    }
    const latencyMs: AsofResult['latencyMs'] = {};
    for (const method of methods) latencyMs[method] = medianLatency(perRep[method]);

    const diff = await timelines({
      source, store, relationId, fromLsn, first, keys: diffKeys.map((k) => k.id),
      samples: Math.ceil(opts.samples / 4), repetitions: opts.repetitions, seed: opts.seed + 1, section,
    });

    const hasPks = await hasFunction(source, 'pgtimewarp_asof_pks(regclass, jsonb[], timestamptz)');
    const keyArray = `ARRAY(SELECT jsonb_build_object('id', k) FROM generate_series(1, $2::int) k)`;
    const batch: Record<BatchMethod, { client: pg.Client; sql: string; args: (at: string) => unknown[] }> = {
      pgtimewarp: {
        client: source,
        sql: `SELECT count(pgtimewarp_asof_pk('lk', jsonb_build_object('id', k), $1::timestamptz)) AS n FROM generate_series(1, $2::int) k`,
        args: (at) => [at, opts.keys],
      },
      pks: {
        client: source,
        sql: `SELECT count(p.row_data) AS n FROM pgtimewarp_asof_pks('lk', ${keyArray}, $1::timestamptz) p`,
        args: (at) => [at, opts.keys],
      },
      store: {
        client: store,
        sql: `WITH l AS (SELECT greatest($3::pg_lsn, (SELECT m.lsn FROM pgtimewarp_store.lsn_time_map m
                                   WHERE m.node_id = '${NODE}' AND m.resolve_ts <= $1::timestamptz
                                   ORDER BY m.resolve_ts DESC, m.lsn DESC LIMIT 1)) AS lsn)
              SELECT count(v.row_data) AS n FROM l, generate_series(1, $2::int) k
               CROSS JOIN LATERAL (SELECT row_data FROM pgtimewarp_store.row_versions v
                                    WHERE v.relation_id = ${relationId}
                                      AND v.pk = ARRAY[k::text] AND v.valid_from_lsn <= l.lsn
                                    ORDER BY v.valid_from_lsn DESC LIMIT 1) v`,
        args: (at) => [at, opts.keys, fromLsn],
      },
      periods: {
        client: source,
        sql: `SELECT count(h.id) AS n FROM generate_series(1, $2::int) k
               CROSS JOIN LATERAL (SELECT * FROM lk_p__as_of($1::timestamptz) h WHERE h.id = k) h`,
        args: (at) => [at, opts.keys],
      },
    };
    const batchMethods: BatchMethod[] = [...methods, ...(hasPks ? ['pks' as const] : [])];
    const batchRates: Record<BatchMethod, number[]> = { pgtimewarp: [], pks: [], store: [], periods: [] };
    const batchFound: AsofResult['batchFound'] = {};
    let pksCheck: AsofResult['pksCheck'] = null;
    for (let rep = 0; rep < opts.repetitions; rep++) {
      const at = randomTime();
      for (const method of batchMethods) {
        const { client, sql, args } = batch[method];
        const { ms, result } = await timedQuery<{ n: string }>(client, sql, args(at));
        batchRates[method].push(opts.keys / (ms / 1000));
        (batchFound[method] ??= []).push(Number(result.rows[0]!.n));
        progress(section, `#${rep + 1} ${method}: ${opts.keys.toLocaleString('en-US')} lookups in one query in ${(ms / 1000).toFixed(2)} s`);
      }
      if (rep === 0 && hasPks) pksCheck = await checkPks(source, opts.keys, at);
    }
    if (!hasPks) progress(section, `pgtimewarp_asof_pks: ${NOT_IN_EXTENSION}`);
    else progress(section, `pgtimewarp_asof_pks against pgtimewarp_asof_pk on ${pksCheck!.keys} keys (${pksCheck!.missingKeys} not in the table): ${pksCheck!.wrong} answers differ`);
    const disagree = batchDisagreement(batchFound);
    if (disagree !== undefined) progress(section, `WRONG ANSWERS: the batch methods found different rows at the same time: ${disagree}`);
    const batchLookupsPerSecond: AsofResult['batchLookupsPerSecond'] = {};
    for (const method of batchMethods) batchLookupsPerSecond[method] = median(batchRates[method]);
    return {
      keys: opts.keys, versions, samples: opts.samples, repetitions: opts.repetitions, seed: opts.seed, latencyMs,
      batchLookupsPerSecond, batchFound, found, remotePerLookup, pksCheck, diff,
    };
  } finally {
    await history.stop();
  }
}

/**
 * pgtimewarp_asof_pks on PKS_CHECK_KEYS keys, the upper half of them not
 * in the table, against pgtimewarp_asof_pk on each: one output row per
 * input key, in input order, the same key and the same row (NULL for a key
 * without one).  Returns how many answers differ.
 */
async function checkPks(source: pg.Client, keys: number, at: string): Promise<NonNullable<AsofResult['pksCheck']>> {
  const lowest = Math.max(1, keys - PKS_CHECK_KEYS / 2 + 1);
  const count = keys - lowest + 1 + PKS_CHECK_KEYS / 2;
  // a missing or extra output row is a row of the full join with one side NULL
  const res = await source.query<{ wrong: string }>(
    `WITH k AS (SELECT o, jsonb_build_object('id', $2::int + o - 1) AS pk FROM generate_series(1, $3::int) o)
     SELECT count(*) FILTER (WHERE CASE WHEN k.o IS NULL OR p.ord IS NULL OR p.pk IS DISTINCT FROM k.pk THEN true
                                        ELSE p.row_data IS DISTINCT FROM pgtimewarp_asof_pk('lk', k.pk, $1::timestamptz) END) AS wrong
       FROM k FULL JOIN pgtimewarp_asof_pks('lk', ARRAY(SELECT pk FROM k ORDER BY o), $1::timestamptz)
                        WITH ORDINALITY AS p (pk, row_data, ord) ON p.ord = k.o`,
    [at, lowest, count],
  );
  return { keys: count, missingKeys: count - (keys - lowest + 1), wrong: Number(res.rows[0]!.wrong) };
}

/** undefined when every batch method found the same number of rows in each repetition, else the counts. */
function batchDisagreement(found: AsofResult['batchFound']): string | undefined {
  const methods = Object.keys(found) as BatchMethod[];
  const reps = Math.max(0, ...methods.map((m) => found[m]!.length));
  for (let rep = 0; rep < reps; rep++) {
    const counts = methods.map((m) => found[m]![rep]);
    if (new Set(counts).size > 1) return `repetition ${rep + 1}: ${methods.map((m, i) => `${m} ${counts[i]}`).join(', ')}`;
  }
  return undefined;
}

/**
 * The timeline of each of `keys` (DIFF_VERSIONS versions each) from the
 * start of tracking to the end of the history: pgtimewarp_diff_pk in the
 * source, and the same reads made directly in the store in one statement
 * (both times resolved in lsn_time_map; the version current at the first
 * LSN and the one before it, which the first is compared with for its
 * changed columns; the versions up to the second LSN; the first one after
 * it, where the last one ends).  Random keys, `samples` calls a
 * repetition, prepared statements, timed at the client.
 */
async function timelines(a: {
  source: pg.Client; store: pg.Client; relationId: number; fromLsn: string; first: number;
  keys: number[]; samples: number; repetitions: number; seed: number; section: string;
}): Promise<AsofResult['diff']> {
  const fromTs = new Date(a.first).toISOString();
  // as text: a Date would cut the microseconds and leave out a last commit in them
  const toTs = (await a.store.query<{ ts: string }>(
    `SELECT max(commit_ts)::text AS ts FROM pgtimewarp_store.lsn_time_map WHERE node_id = $1`, [NODE])).rows[0]!.ts;
  const resolve = (param: string): string => `(SELECT m.lsn FROM pgtimewarp_store.lsn_time_map m
                         WHERE m.node_id = '${NODE}' AND m.resolve_ts <= ${param}::timestamptz
                         ORDER BY m.resolve_ts DESC, m.lsn DESC LIMIT 1)`;
  const version = `SELECT v.valid_from_lsn, v.valid_from_ts, v.op, v.row_data FROM pgtimewarp_store.row_versions v
                    WHERE v.relation_id = ${a.relationId} AND v.pk = ARRAY[$1::int::text]`;
  const calls: Record<'pgtimewarp' | 'store', { client: pg.Client; sql: string; args: (id: number) => unknown[] }> = {
    pgtimewarp: {
      client: a.source,
      sql: `SELECT * FROM pgtimewarp_diff_pk('lk', jsonb_build_object('id', $1::int), $2::timestamptz, $3::timestamptz)`,
      args: (id) => [id, fromTs, toTs],
    },
    store: {
      client: a.store,
      sql: `WITH b AS (SELECT greatest($4::pg_lsn, ${resolve('$2')}) AS from_lsn, greatest($4::pg_lsn, ${resolve('$3')}) AS to_lsn),
                 v AS ((SELECT 0 AS part, v.* FROM b CROSS JOIN LATERAL (${version} AND v.valid_from_lsn <= b.from_lsn
                                                                         ORDER BY v.valid_from_lsn DESC LIMIT 2) v)
                       UNION ALL
                       (SELECT 1, v.* FROM b CROSS JOIN LATERAL (${version} AND v.valid_from_lsn > b.from_lsn
                                                                  AND v.valid_from_lsn <= b.to_lsn) v)
                       UNION ALL
                       (SELECT 2, v.* FROM b CROSS JOIN LATERAL (${version} AND v.valid_from_lsn > b.to_lsn
                                                                  ORDER BY v.valid_from_lsn LIMIT 1) v)),
                 w AS (SELECT v.*, lead(v.valid_from_lsn) OVER o AS valid_to_lsn, lead(v.valid_from_ts) OVER o AS valid_to_ts,
                              max(v.valid_from_lsn) FILTER (WHERE v.part = 0) OVER () AS current_at_from
                         FROM v WINDOW o AS (ORDER BY v.valid_from_lsn))
            SELECT valid_from_lsn, valid_to_lsn, valid_from_ts, valid_to_ts, op, row_data FROM w
             WHERE part = 1 OR valid_from_lsn = current_at_from ORDER BY valid_from_lsn`,
      args: (id) => [id, fromTs, toTs, a.fromLsn],
    },
  };
  const versions = { pgtimewarp: [] as number[], store: [] as number[] };
  for (const method of ['pgtimewarp', 'store'] as const) {
    const { client, sql, args } = calls[method];
    for (const id of a.keys) versions[method].push((await client.query({ name: `diff_${method}`, text: sql, values: args(id) })).rowCount ?? 0);
  }
  const counts = [...new Set([...versions.pgtimewarp, ...versions.store])];
  progress(a.section, `timelines of ${a.keys.length} keys: ${counts.length === 1 ? `${counts[0]} versions each, both ways` : `WRONG ANSWERS: versions ${counts.join(', ')}`}`);

  const random = new Random(a.seed);
  const perRep = { pgtimewarp: [] as Latency[], store: [] as Latency[] };
  for (let rep = 0; rep < a.repetitions; rep++) {
    const ids = Array.from({ length: a.samples }, () => random.pick(a.keys));
    for (const method of ['pgtimewarp', 'store'] as const) {
      const { client, sql, args } = calls[method];
      const times: number[] = [];
      for (const id of ids) times.push((await timedQuery(client, { name: `diff_${method}`, text: sql, values: args(id) })).ms);
      const lat = latency(times);
      perRep[method].push(lat);
      progress(a.section, `#${rep + 1} diff ${method}: p50 ${fmtMs(lat.p50)}, p95 ${fmtMs(lat.p95)} over ${a.samples} timelines`);
    }
  }
  return { keys: a.keys.length, versions, samples: a.samples, latencyMs: { pgtimewarp: medianLatency(perRep.pgtimewarp), store: medianLatency(perRep.store) } };
}

export function asofMarkdown(r: AsofResult): string {
  const names: Record<Method, string> = {
    pgtimewarp: '`pgtimewarp_asof_pk` (source, over the extension\'s store connection)',
    store: 'direct index lookup in the store (`lsn_time_map` + `row_versions`)',
    periods: 'periods: `lk_p__as_of(ts) WHERE id = k` (history indexed)',
  };
  const base = r.latencyMs.store?.p50 ?? Number.NaN;
  const rows = (Object.keys(names) as Method[]).map((m) => {
    const l = r.latencyMs[m];
    if (l === undefined) return `| ${names[m]} | not measured (periods not installed) | | | | |`;
    return `| ${names[m]} | ${fmtMs(l.p50)} | ${fmtMs(l.p95)} | ${fmtMs(l.p99)} | ${fmtRatio(l.p50 / base)} | ${fmt(r.batchLookupsPerSecond[m] ?? Number.NaN)} |`;
  });
  const single = r.latencyMs.pgtimewarp;
  const direct = r.latencyMs.store;
  const directBatch = r.batchLookupsPerSecond.store ?? Number.NaN;
  const scalar = r.batchLookupsPerSecond.pgtimewarp ?? Number.NaN;
  const pks = r.batchLookupsPerSecond.pks;
  const d = r.diff.latencyMs;
  const disagree = batchDisagreement(r.batchFound);
  const diffCounts = [...new Set([...r.diff.versions.pgtimewarp, ...r.diff.versions.store])];
  const targets = [
    `| single lookup p50, \`pgtimewarp_asof_pk\` | ${fmtMs(single?.p50 ?? Number.NaN)} | direct store probe: ${fmtMs(direct?.p50 ?? Number.NaN)} | ` +
      `${fmtRatio((single?.p50 ?? Number.NaN) / (direct?.p50 ?? Number.NaN))} | ≤ 4× |`,
    `| batch, scalar form: \`SELECT pgtimewarp_asof_pk('lk', jsonb_build_object('id', k), ts) FROM keys\` | ${fmt(scalar)} lookups/s | ` +
      `direct store, one query: ${fmt(directBatch)} lookups/s | ${fmtRatio(scalar / directBatch)} | ≥ 10,000/s |`,
    pks === undefined
      ? `| batch, \`pgtimewarp_asof_pks('lk', keys, ts)\` | ${NOT_IN_EXTENSION} | | | ≥ 30,000/s |`
      : `| batch, \`pgtimewarp_asof_pks('lk', keys, ts)\` | ${fmt(pks)} lookups/s | direct store, one query: ${fmt(directBatch)} lookups/s | ` +
        `${fmtRatio(pks / directBatch)} | ≥ 30,000/s |`,
    `| \`pgtimewarp_diff_pk\` p50, a key with ${DIFF_VERSIONS} versions | ${fmtMs(d.pgtimewarp.p50)} | direct store query: ${fmtMs(d.store.p50)} | ` +
      `${fmtRatio(d.pgtimewarp.p50 / d.store.p50)} | ≤ 4× |`,
  ];
  const checks = [
    disagree === undefined
      ? `All batch forms found the same ${fmt(r.batchFound.store?.[0] ?? Number.NaN)} rows at each time.`
      : `**Wrong answers:** the batch forms found different rows at one time (${disagree}).`,
    r.pksCheck === null ? '' : r.pksCheck.wrong === 0
      ? `\`pgtimewarp_asof_pks\` on ${fmt(r.pksCheck.keys)} keys (${fmt(r.pksCheck.missingKeys)} not in the table) gave the same keys in the same order and the same rows as \`pgtimewarp_asof_pk\` on each.`
      : `**Wrong answers:** \`pgtimewarp_asof_pks\` differed from \`pgtimewarp_asof_pk\` on ${fmt(r.pksCheck.wrong)} of ${fmt(r.pksCheck.keys)} keys.`,
    diffCounts.length === 1 && diffCounts[0] === DIFF_VERSIONS
      ? `Each timeline had ${DIFF_VERSIONS} versions both ways.`
      : `**Timelines differ from ${DIFF_VERSIONS} versions:** ${diffCounts.join(', ')} rows.`,
  ].filter(Boolean).join(' ');
  return [
    `${fmt(r.keys)} keys, ${fmt(r.versions)} versions; ${fmt(r.samples)} lookups of random keys at random times per repetition, ` +
      `one client, prepared statements, timed at the client; median of ${r.repetitions} repetitions. ` +
      `Batch: all ${fmt(r.keys)} keys at one time in one query.`,
    '',
    '| lookup | p50 | p95 | p99 | p50 ratio to direct | batch lookups/s |',
    '|---|---|---|---|---|---|',
    ...rows,
    '',
    `Each \`pgtimewarp_asof_pk\` call ran ${fmt(r.remotePerLookup.statements, 1)} statements in the store ` +
      `(${fmtMs(r.remotePerLookup.storeMs)} of store execution time per call): ` +
      r.remotePerLookup.statementsByQuery.slice(0, 6).map((q) => `\`${q.query.slice(0, 50)}…\` ×${fmt(q.perLookup, 1)}`).join(', ') + '.',
    '',
    `Issue 10's targets. The timeline: \`pgtimewarp_diff_pk\` from the start of tracking to the end of the history, ` +
      `${fmt(r.diff.samples)} calls per repetition over ${fmt(r.diff.keys)} keys with ${DIFF_VERSIONS} versions each, against one statement in the store ` +
      `that reads the same (both times resolved in \`lsn_time_map\`; from \`row_versions\` the versions in between, the one before and the one after).`,
    '',
    '| figure | measured | baseline | ratio | target |',
    '|---|---|---|---|---|',
    ...targets,
    '',
    checks,
  ].join('\n');
}
