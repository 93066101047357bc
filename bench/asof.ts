// As-of latency: one row as of a time, three ways, for random keys at
// random times within the recorded history, each a prepared statement from
// one client connection, timed at the client:
// - pgtimewarp_asof_pk in the source database (through postgres_fdw);
// - the direct lookup in the store: the two index probes the extension
//   makes (time -> LSN in lsn_time_map, then the key's latest version at
//   or before it in row_versions), run in the store database itself;
// - the periods extension's as-of function on a twin table changed in the
//   same transactions (its history table indexed on (id, system_time_start)).
// Then the throughput of many lookups in one query (every key at one time).

import type pg from 'pg';

import { startCluster } from '../test/support/cluster.js';
import { Random } from '../test/support/random.js';
import { setupTimewarp } from '../test/support/timewarp.js';
import { fmt, fmtMs, fmtRatio, median, percentile } from './stats.js';
import { AgentProcess, poll, progress, versionWithPeriods } from './support.js';
import { DURABLE_SETTINGS } from './write-path.js';

const NODE = 'asof';
const SLOT = 'asof_agent';
const CHUNK = 1000;

export interface AsofOptions {
  keys: number;
  rounds: number;
  samples: number;
  repetitions: number;
  periods: boolean;
  seed: number;
}

type Method = 'pgtimewarp' | 'store' | 'periods';

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
  batchLookupsPerSecond: Partial<Record<Method, number>>;
  /** answers that found a row, per method, in the last repetition (a sanity check: the store's two agree) */
  found: Partial<Record<Method, number>>;
  /** What one pgtimewarp_asof_pk call asks the store (pg_stat_statements in the store, first repetition). */
  remotePerLookup: { statements: number; storeMs: number; statementsByQuery: Array<{ query: string; perLookup: number; meanMs: number }> };
}

export async function asof(opts: AsofOptions): Promise<AsofResult> {
  const section = 'as-of';
  const cluster = await startCluster({ settings: { ...DURABLE_SETTINGS, shared_preload_libraries: 'pg_stat_statements' } });
  try {
    const timewarp = await setupTimewarp(cluster, { nodeId: NODE });
    const { source, sourceUrl, storeUrl } = timewarp;
    const store = await cluster.connect('store');
    await store.query('CREATE EXTENSION pg_stat_statements');
    const tables = opts.periods ? ['lk', 'lk_p'] : ['lk'];
    for (const t of tables) {
      await source.query(`CREATE TABLE ${t} (id int PRIMARY KEY, n int NOT NULL, note text NOT NULL)`);
      await source.query(`INSERT INTO ${t} SELECT g, 0, md5(g::text) FROM generate_series(1, $1) g`, [opts.keys]);
    }
    if (opts.periods) {
      await versionWithPeriods(source, 'lk_p');
    }
    const agent = new AgentProcess({ sourceUrl, storeUrl, nodeId: NODE, slot: SLOT, plugin: 'pgoutput' });
    try {
      await agent.waitForEvent('streaming');
      await source.query(`SELECT pgtimewarp_track('lk')`);
      progress(section, `${opts.rounds} rounds of updates to two thirds of ${opts.keys.toLocaleString('en-US')} keys, ` +
        `${CHUNK} rows a transaction, both tables in the same transactions`);
      await source.query('SET synchronous_commit = off');
      for (let round = 1; round <= opts.rounds; round++) {
        for (let lo = 1; lo <= opts.keys; lo += CHUNK) {
          await source.query('BEGIN');
          for (const t of tables) {
            await source.query(`UPDATE ${t} SET n = n + 1, note = md5(note) WHERE id BETWEEN $1 AND $2 AND (id + $3) % 3 <> 0`,
              [lo, lo + CHUNK - 1, round]);
          }
          await source.query('COMMIT');
        }
      }
      await source.query('RESET synchronous_commit');
      await source.query(`UPDATE lk SET note = 'end' WHERE id = 1`);
      await poll('the agent to store the updates', async () => {
        agent.check();
        const res = await source.query<{ note: string | undefined }>(
          `SELECT pgtimewarp_asof_pk_lsn('lk', '{"id": 1}', pg_current_wal_lsn())->>'note' AS note`,
        );
        return res.rows[0]?.note === 'end';
      }, 600_000, 100);
    } finally {
      await agent.stop();
    }
    await store.query('VACUUM ANALYZE');
    await source.query('VACUUM ANALYZE');

    const span = await store.query<{ from_ts: Date; to_ts: Date; from_lsn: string; versions: string; relation_id: number }>(
      `SELECT r.tracked_from_ts AS from_ts, (SELECT max(commit_ts) FROM pgtimewarp_store.lsn_time_map WHERE node_id = $1) AS to_ts,
              r.tracked_from_lsn::text AS from_lsn, r.relation_id,
              (SELECT count(*) FROM pgtimewarp_store.row_versions v WHERE v.relation_id = r.relation_id) AS versions
         FROM pgtimewarp_store.tracked_relations r WHERE r.node_id = $1 AND r.table_name = 'lk'`,
      [NODE],
    );
    const { from_ts: fromTs, to_ts: toTs, from_lsn: fromLsn, relation_id: relationId } = span.rows[0]!;
    const versions = Number(span.rows[0]!.versions);
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
          const started = process.hrtime.bigint();
          const res = await client.query<{ r: unknown }>({ name, text: sql, values: args(p.id, p.at) });
          times.push(Number(process.hrtime.bigint() - started) / 1e6);
          if (res.rows[0]?.r != null) hits++;
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
        const lat = { p50: percentile(times, 50), p95: percentile(times, 95), p99: percentile(times, 99), mean: times.reduce((s, t) => s + t, 0) / times.length };
        perRep[method].push(lat);
        progress(section, `#${rep + 1} ${method}: p50 ${fmtMs(lat.p50)}, p95 ${fmtMs(lat.p95)}, p99 ${fmtMs(lat.p99)} over ${opts.samples} lookups`);
      }
    }
    const latencyMs: AsofResult['latencyMs'] = {};
    for (const method of methods) {
      const reps = perRep[method];
      latencyMs[method] = { p50: median(reps.map((l) => l.p50)), p95: median(reps.map((l) => l.p95)), p99: median(reps.map((l) => l.p99)), mean: median(reps.map((l) => l.mean)) };
    }

    const batch: Record<Method, { client: pg.Client; sql: string; args: (at: string) => unknown[] }> = {
      pgtimewarp: {
        client: source,
        sql: `SELECT count(pgtimewarp_asof_pk('lk', jsonb_build_object('id', k), $1::timestamptz)) AS n FROM generate_series(1, $2::int) k`,
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
    const batchRates: Record<Method, number[]> = { pgtimewarp: [], store: [], periods: [] };
    for (let rep = 0; rep < opts.repetitions; rep++) {
      const at = randomTime();
      for (const method of methods) {
        const { client, sql, args } = batch[method];
        const started = process.hrtime.bigint();
        await client.query(sql, args(at));
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        batchRates[method].push(opts.keys / seconds);
        progress(section, `#${rep + 1} ${method}: ${opts.keys.toLocaleString('en-US')} lookups in one query in ${seconds.toFixed(2)} s`);
      }
    }
    const batchLookupsPerSecond: AsofResult['batchLookupsPerSecond'] = {};
    for (const method of methods) batchLookupsPerSecond[method] = median(batchRates[method]);
    await store.end();
    await source.end();
    return { keys: opts.keys, versions, samples: opts.samples, repetitions: opts.repetitions, seed: opts.seed, latencyMs, batchLookupsPerSecond, found, remotePerLookup };
  } finally {
    await cluster.stop();
  }
}

export function asofMarkdown(r: AsofResult): string {
  const names: Record<Method, string> = {
    pgtimewarp: '`pgtimewarp_asof_pk` (source, through postgres_fdw)',
    store: 'direct index lookup in the store (`lsn_time_map` + `row_versions`)',
    periods: 'periods: `lk_p__as_of(ts) WHERE id = k` (history indexed)',
  };
  const base = r.latencyMs.store?.p50 ?? Number.NaN;
  const rows = (Object.keys(names) as Method[]).map((m) => {
    const l = r.latencyMs[m];
    if (l === undefined) return `| ${names[m]} | not measured (periods not installed) | | | | |`;
    return `| ${names[m]} | ${fmtMs(l.p50)} | ${fmtMs(l.p95)} | ${fmtMs(l.p99)} | ${fmtRatio(l.p50 / base)} | ${fmt(r.batchLookupsPerSecond[m] ?? Number.NaN)} |`;
  });
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
  ].join('\n');
}
