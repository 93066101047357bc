// Live-load test of the agent (DESIGN.md, "Tests": live-load tests), on each
// plugin: pgbench's own built-in TPC-B script (`pgbench -b tpcb-like`, four
// clients, two threads) writes the source while the real `pgtimewarp agent`
// command (from source, through tsx) runs as a child process and is killed
// with SIGKILL three times at seeded random moments, restarted at once each
// time.  pgbench_branches, pgbench_tellers and pgbench_accounts are tracked;
// pgbench_history has no primary key and stays untracked, but it is the
// ground truth: one row per committed TPC-B transaction, naming its teller,
// branch and account.
//
// While pgbench runs, a connection of its own samples pg_current_wal_lsn()
// and clock_timestamp() (as text) every 200 ms.  When pgbench has ended and
// the agent has caught up (the store's checkpoint at or past the source's
// WAL position read after pgbench ended), checked through the extension,
// comparisons in SQL on bigint/numeric values and jsonb:
//   1. TPC-B's invariant as of every sampled LSN (pgtimewarp_asof_pk_lsn)
//      and every sampled time (pgtimewarp_asof_pk): each branch's bbalance
//      equals the sum of the tbalance of its tellers (bid, as of then);
//   2. as of the last sampled LSN, the accounts' abalance sums to the
//      branches' bbalance: summed over the accounts pgbench_history names,
//      since every other one is 0 from pgbench -i on and never changes;
//   3. as of the source's LSN after catch-up, every touched account, every
//      teller and every branch is to_jsonb of the row in the table now;
//   4. exactly once: pgtimewarp_status() counts, per table, its baseline rows
//      plus one version per transaction in pgbench_history, no more, no less.
// Also: the slot is never confirmed past the store's checkpoint (after each
// kill and at the end), the agent logged no error, never stopped on its own,
// and stops with exit code 0 on SIGTERM.
//
// What the invariant can and cannot see: every version carries the row's
// absolute balance, so a lost or misplaced version of a teller shows only
// between the branch's next version and that teller's next one (about ten
// transactions at scale 1), and a sample rarely lands there.  Check 4
// counts a lost or doubled version wherever it is; 2 also sees a lost
// account version (most accounts change once in a run, so a loss does not
// heal); 3 shows the end state; 1 shows that the versions of a transaction
// become visible together, by LSN and by time.  (Losing one whole
// transaction from the store makes 2, 3 and 4 fail; 1 passed.)
//
// The invariant per branch needs scale 1: tpcb-like picks a transaction's
// teller and branch independently (tid among all tellers, bid among all
// branches), so at a larger scale only the totals balance.
//
// The store is on a cluster of its own (test/support/timewarp.ts's
// storeCluster), like agent-faults.test.ts's, though here only the agent
// fails: so that the source's WAL carries only the source's writes.  With the
// store on the source's cluster, the WAL position read after pgbench ended
// includes the agent's own store commits, which the agent deliberately does
// not heartbeat past at once (agent/run.ts, heartbeatDue), and "caught up"
// would then wait for unrelated WAL or the 30 s liveness heartbeat: 10 s in
// one run here, for an agent 110 kB behind.
//
// Replay a failure with PGTIMEWARP_SEED=<seed printed on failure> (the kill
// moments replay; what pgbench does around them depends on timing).

import { spawn } from 'node:child_process';
import { join } from 'node:path';

import pg from 'pg';
import { afterAll, afterEach, describe, expect, it, onTestFailed } from 'vitest';

import { lsnFromText } from '../../agent/decode.js';
import { pgBinDir } from '../support/cluster.js';
import { envWithoutPg } from '../support/process.js';
import { Random, testSeed } from '../support/random.js';
import { setupTimewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';
import { AgentChild, killOnExit } from '../support/agent-child.js';
import { sleep, waitFor } from '../support/wait.js';


const cluster = useCluster();
const storeCluster = useCluster();

const BASE_SEED = testSeed();

const SCALE = 1;
const PGBENCH_SECONDS = 20;
const KILLS = 3;
const SAMPLE_EVERY_MS = 200;
const CATCH_UP_TIMEOUT_MS = 120_000;
const TRACKED = ['pgbench_branches', 'pgbench_tellers', 'pgbench_accounts'] as const;


// ---------------------------------------------------------------------------
// The agent as a child process (test/support/agent-child.ts)

const agents: AgentChild[] = [];
afterEach(async () => {
  for (const a of agents.splice(0)) await a.kill('SIGKILL');
});
afterAll(async () => {
  for (const a of agents.splice(0)) await a.kill('SIGKILL');
});

// ---------------------------------------------------------------------------
// pgbench

function pgbenchArgs(db: string, args: string[]): string[] {
  const c = cluster();
  return [...args, '-h', c.host, '-p', String(c.port), '-U', c.superuser, db];
}

interface PgbenchRun {
  /** Resolves when pgbench exits, with what it reported. */
  done: Promise<{ transactions: number; tps: number }>;
  running(): boolean;
  kill(): void;
}

function startPgbench(db: string, args: string[]): PgbenchRun {
  const child = spawn(join(pgBinDir(), 'pgbench'), pgbenchArgs(db, args), { env: envWithoutPg(), stdio: ['ignore', 'pipe', 'pipe'] });
  killOnExit(child);
  let running = true;
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const done = new Promise<{ transactions: number; tps: number }>((resolve, reject) => {
    child.on('error', (err) => {
      running = false;
      reject(new Error(`cannot run pgbench: ${err.message}`));
    });
    child.on('close', (code) => {
      running = false;
      const transactions = /number of transactions actually processed: (\d+)/.exec(stdout);
      const tps = /tps = ([\d.]+) \(without initial connection time\)/.exec(stdout);
      if (code !== 0) {
        reject(new Error(`pgbench ${args.join(' ')} failed (exit ${code}):\n${stderr.trim()}\n${stdout.trim()}`));
        return;
      }
      resolve({ transactions: transactions === null ? Number.NaN : Number(transactions[1]), tps: tps === null ? Number.NaN : Number(tps[1]) });
    });
  });
  return { done, running: () => running, kill: () => child.kill('SIGKILL') };
}

// ---------------------------------------------------------------------------
// Store positions

async function checkpointLsn(store: pg.Client, nodeId: string): Promise<string | null> {
  const res = await store.query<{ lsn: string }>(
    `SELECT confirmed_lsn::text AS lsn FROM pgtimewarp_store.wal_checkpoints WHERE node_id = $1`, [nodeId]);
  return res.rows[0]?.lsn ?? null;
}

/** The slot's confirmed position, then the store's checkpoint (in that order: both only grow): the first must not pass the second. */
async function expectConfirmedWithinCheckpoint(when: string, source: pg.Client, store: pg.Client, slot: string, nodeId: string, slotStart: string): Promise<void> {
  const confirmed = (await source.query<{ lsn: string | null }>(
    `SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1`, [slot])).rows[0]?.lsn ?? null;
  const checkpoint = await checkpointLsn(store, nodeId);
  expect(confirmed, `${when}: slot ${slot}`).not.toBeNull();
  if (checkpoint === null) {
    // killed before its first checkpoint: the slot is where it was created
    expect(confirmed, `${when}: slot confirmed ${confirmed} but the store has no checkpoint`).toBe(slotStart);
    return;
  }
  expect(lsnFromText(confirmed!) <= lsnFromText(checkpoint), `${when}: slot confirmed ${confirmed}, store checkpoint ${checkpoint}`).toBe(true);
}

// ---------------------------------------------------------------------------
// Checks through the extension

interface Sample {
  lsn: string;
  time: string;
}

/**
 * TPC-B's invariant as of each of `points` (pg_lsn or timestamptz text):
 * per point and branch, the branch's bbalance and the sum of the tbalance of
 * the tellers whose bid, as of then, is the branch's.  Rows that fail.
 * (The lookups are in MATERIALIZED CTEs here and below: an inlined one
 * would call the function again for each use of its result.)
 */
async function invariantFailures(source: pg.Client, points: string[], kind: 'lsn' | 'time'): Promise<string[]> {
  const asof = kind === 'lsn' ? 'pgtimewarp_asof_pk_lsn' : 'pgtimewarp_asof_pk';
  const type = kind === 'lsn' ? 'pg_lsn' : 'timestamptz';
  const res = await source.query<{ at: string; bid: number | null; branch: string | null; tellers: string | null; found: number; asked: number; ok: boolean }>(
    `WITH s AS (SELECT u.at::${type} AS at, u.n FROM unnest($1::text[]) WITH ORDINALITY AS u(at, n)),
          b AS MATERIALIZED (SELECT s.n, br.bid, ${asof}('pgbench_branches', jsonb_build_object('bid', br.bid), s.at) AS j
                  FROM s CROSS JOIN pgbench_branches br),
          t AS MATERIALIZED (SELECT s.n, ${asof}('pgbench_tellers', jsonb_build_object('tid', te.tid), s.at) AS j
                  FROM s CROSS JOIN pgbench_tellers te),
          tsum AS (SELECT n, (j->>'bid')::int AS bid, sum((j->>'tbalance')::bigint) AS tellers FROM t WHERE j IS NOT NULL GROUP BY 1, 2),
          tcount AS (SELECT n, count(j)::int AS found, count(*)::int AS asked FROM t GROUP BY 1)
     SELECT s.at::text AS at, b.bid, b.j->>'bbalance' AS branch, tsum.tellers::text AS tellers, tc.found, tc.asked,
            coalesce((b.j->>'bbalance')::bigint = tsum.tellers AND tc.found = tc.asked, false) AS ok
       FROM s JOIN b ON b.n = s.n JOIN tcount tc ON tc.n = s.n LEFT JOIN tsum ON tsum.n = s.n AND tsum.bid = b.bid
      ORDER BY s.n, b.bid`,
    [points],
  );
  // every point answered for every branch (at scale 1: one)
  expect(res.rows.length, `invariant rows (${kind})`).toBe(points.length * SCALE);
  return res.rows.filter((r) => !r.ok).map((r) =>
    `as of ${r.at} (${kind}), branch ${r.bid}: bbalance ${r.branch}, its tellers' tbalance sum to ${r.tellers} (${r.found} of ${r.asked} tellers found)`);
}

/** As of `lsn`: the sum of abalance over the accounts pgbench_history names, and of bbalance over the branches. */
async function accountsVsBranches(source: pg.Client, lsn: string): Promise<{ accounts: string; branches: string; missing: number; ok: boolean }> {
  const res = await source.query<{ accounts: string; branches: string; missing: number; ok: boolean }>(
    `WITH a AS MATERIALIZED (SELECT pgtimewarp_asof_pk_lsn('pgbench_accounts', jsonb_build_object('aid', h.aid), $1::pg_lsn) AS j
                  FROM (SELECT DISTINCT aid FROM pgbench_history) h),
          asum AS (SELECT coalesce(sum((j->>'abalance')::bigint), 0) AS total, count(*) FILTER (WHERE j IS NULL)::int AS missing FROM a),
          bsum AS (SELECT sum((pgtimewarp_asof_pk_lsn('pgbench_branches', jsonb_build_object('bid', bid), $1::pg_lsn)->>'bbalance')::bigint) AS total
                     FROM pgbench_branches)
     SELECT asum.total::text AS accounts, bsum.total::text AS branches, asum.missing, asum.total = bsum.total AND asum.missing = 0 AS ok
       FROM asum, bsum`,
    [lsn],
  );
  return res.rows[0]!;
}

/**
 * Rows of `table` (those whose `keyColumn` pgbench_history names, or all)
 * whose as-of JSON at `lsn` is not to_jsonb of the row now (jsonb equality:
 * the as-of JSON has each column's type, as to_jsonb does).
 */
async function currentRowsDiffering(source: pg.Client, table: string, keyColumn: string, lsn: string, keysFromHistory: boolean): Promise<{ compared: number; differing: string[] }> {
  const rows = keysFromHistory
    ? `(SELECT DISTINCT ${keyColumn} FROM pgbench_history) h JOIN ${table} r USING (${keyColumn})`
    : `${table} r`;
  const res = await source.query<{ key: number; now: string | null; asof: string | null; compared: number }>(
    `WITH c AS MATERIALIZED (SELECT r.${keyColumn} AS key, to_jsonb(r) AS now,
                       pgtimewarp_asof_pk_lsn('${table}', jsonb_build_object('${keyColumn}', r.${keyColumn}), $1::pg_lsn) AS asof
                  FROM ${rows})
     SELECT key, now::text, asof::text, (SELECT count(*)::int FROM c) AS compared
       FROM c WHERE now IS DISTINCT FROM asof
     UNION ALL SELECT NULL, NULL, NULL, (SELECT count(*)::int FROM c)
     ORDER BY key NULLS LAST`,
    [lsn],
  );
  const compared = res.rows.at(-1)!.compared;
  const differing = res.rows.filter((r) => r.key !== null).map((r) => `${table} ${keyColumn}=${r.key} as of ${lsn}:\n  now  ${r.now}\n  asof ${r.asof}`);
  return { compared, differing };
}

/**
 * Exactly once, counted: pgtimewarp_status()'s row_versions of each tracked
 * table against its baseline rows (pgbench -i's) plus one version per
 * transaction in pgbench_history (each TPC-B transaction updates one
 * branch, one teller and one account once).
 */
async function versionCountFailures(source: pg.Client): Promise<string[]> {
  const res = await source.query<{ table_name: string; stored: string; expected: string }>(
    `WITH h AS (SELECT count(*) AS n FROM pgbench_history)
     SELECT s.table_name, s.row_versions::text AS stored,
            (h.n + CASE s.table_name WHEN 'pgbench_branches' THEN $1::bigint WHEN 'pgbench_tellers' THEN $2::bigint ELSE $3::bigint END)::text AS expected
       FROM pgtimewarp_status() s, h
      WHERE s.schema_name = 'public'
      ORDER BY 1`,
    [SCALE, 10 * SCALE, 100_000 * SCALE]);
  expect(res.rows.map((r) => r.table_name), 'tables pgtimewarp_status() lists').toEqual([...TRACKED].sort());
  return res.rows.filter((r) => r.stored !== r.expected).map((r) =>
    `${r.table_name}: ${r.stored} row versions stored, ${r.expected} expected (its baseline rows and one per transaction in pgbench_history)`);
}

// ---------------------------------------------------------------------------

describe.each(['pgoutput', 'wal2json'] as const)('live load on %s', (plugin) => {
  it(`pgbench TPC-B for ${PGBENCH_SECONDS} s, the agent killed ${KILLS} times: the invariant holds as of every sampled LSN and time, history is exact`,
    { timeout: 240_000 }, async () => {
      const seed = BASE_SEED + (plugin === 'pgoutput' ? 1 : 2);
      onTestFailed(() => console.error(`live load (${plugin}): replay with PGTIMEWARP_SEED=${BASE_SEED}\nsource's server log:\n${cluster().logTail(30)}\nstore's server log:\n${storeCluster().logTail(10)}`));
      const rand = new Random(seed);
      const t0 = Date.now();

      const tw = await setupTimewarp(cluster(), { sourceDb: `src_${plugin}`, storeDb: `store_${plugin}`, nodeId: `live_${plugin}`, storeCluster: storeCluster() });
      const source = tw.source;
      const store = await storeCluster().connect(`store_${plugin}`);
      const sampler = await cluster().connect(`src_${plugin}`);
      const slot = `slot_${plugin}`;
      try {
        // pgbench's own initialization: tables, data, vacuum, primary keys
        await startPgbench(`src_${plugin}`, ['-i', '-q', '-s', String(SCALE)]).done;

        const agent = new AgentChild({ sourceUrl: tw.sourceUrl, storeUrl: tw.storeUrl, nodeId: tw.nodeId, slot, plugin });
        agents.push(agent);
        agent.start();
        // the agent first, so that its slot (and publication) exist before tracking starts
        const slotStart = await waitFor(`slot ${slot}\n${agent.describe()}`, async () =>
          (await source.query<{ lsn: string }>(`SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1`, [slot])).rows[0]?.lsn,
        60_000);
        for (const table of TRACKED) await source.query(`SELECT pgtimewarp_track($1)`, [table]);
        const tSetUp = Date.now() - t0;

        // the run: pgbench, the sampler, and the kills at seeded moments
        const bench = startPgbench(`src_${plugin}`, ['-b', 'tpcb-like', '-c', '4', '-j', '2', '-T', String(PGBENCH_SECONDS), '--no-vacuum']);
        const benchStarted = Date.now();
        const samples: Sample[] = [];
        let samplingError: unknown = null;
        const sampling = (async () => {
          while (bench.running()) {
            const started = Date.now();
            const res = await sampler.query<Sample>(`SELECT pg_current_wal_lsn()::text AS lsn, clock_timestamp()::text AS time`);
            if (bench.running()) samples.push(res.rows[0]!); // only moments inside the run
            await sleep(Math.max(0, SAMPLE_EVERY_MS - (Date.now() - started)));
          }
        })().catch((err: unknown) => { samplingError = err; });
        // one kill in each of KILLS equal windows of the run after its first two
        // seconds and before its last two; each cuts a live stream: if the agent
        // has not logged 'streaming' since its last start, the kill waits for it
        const windowMs = (PGBENCH_SECONDS * 1000 - 4000) / KILLS;
        const killAt = Array.from({ length: KILLS }, (_, k) => 2000 + k * windowMs + rand.int(0, Math.floor(windowMs) - 1));
        const kills: Array<{ atMs: number; generation: number; streamed: boolean; benchRunning: boolean }> = [];
        let benchError: unknown = null;
        const benchResult = bench.done.catch((err: unknown) => { benchError = err; return null; });
        try {
          for (const at of killAt) {
            await sleep(Math.max(0, benchStarted + at - Date.now()));
            await waitFor(`generation ${agent.generation} streaming\n${agent.describe()}`, () => agent.logged('streaming') || !agent.running || !bench.running(), 30_000);
            const streamed = agent.logged('streaming');
            const benchRunning = bench.running();
            const generation = agent.generation;
            await agent.kill('SIGKILL');
            kills.push({ atMs: Date.now() - benchStarted, generation, streamed, benchRunning });
            await expectConfirmedWithinCheckpoint(`after kill ${kills.length}`, source, store, slot, tw.nodeId, slotStart);
            agent.start();
            if (agent.unexpectedExits.length > 0 || !benchRunning) break;
          }
        } finally {
          if (bench.running() && (agent.unexpectedExits.length > 0 || kills.length < KILLS)) bench.kill();
        }
        const pgbenchReport = await benchResult;
        await sampling;
        if (benchError !== null) throw benchError;
        if (samplingError !== null) throw samplingError;
        const tRun = Date.now() - benchStarted;

        // caught up: the store's checkpoint at or past the WAL position after the run
        const end = (await source.query<{ lsn: string }>(`SELECT pg_current_wal_lsn()::text AS lsn`)).rows[0]!;
        const lagAtEnd = (await source.query<{ bytes: string | null }>(
          `SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint::text AS bytes`, [end.lsn, (await checkpointLsn(store, tw.nodeId)) ?? '0/0'])).rows[0]!.bytes;
        const catchUpStarted = Date.now();
        await waitFor(`the store's checkpoint at ${end.lsn} (caught up)\n${agent.describe()}`, async () => {
          const lsn = await checkpointLsn(store, tw.nodeId);
          return lsn !== null && lsnFromText(lsn) >= lsnFromText(end.lsn);
        }, CATCH_UP_TIMEOUT_MS);
        const tCatchUp = Date.now() - catchUpStarted;
        const after = (await source.query<{ lsn: string }>(`SELECT pg_current_wal_lsn()::text AS lsn`)).rows[0]!.lsn;

        const history = (await source.query<{ n: number; accounts: number }>(
          `SELECT count(*)::int AS n, count(DISTINCT aid)::int AS accounts FROM pgbench_history`)).rows[0]!;
        console.log(`live load (${plugin}, seed ${BASE_SEED}): pgbench ${pgbenchReport!.transactions} transactions, ${pgbenchReport!.tps} tps ` +
          `(${history.n} in pgbench_history, ${history.accounts} accounts); ${samples.length} samples; ` +
          `kills at ${kills.map((k) => `${(k.atMs / 1000).toFixed(1)} s`).join(', ')}; ` +
          `${agent.events.filter((e) => e.event === 'retry').length} retries; agent behind by ${lagAtEnd} bytes when pgbench ended, caught up in ${tCatchUp} ms`);

        expect(agent.unexpectedExits, agent.describe()).toEqual([]);
        expect(kills.map((k) => k.benchRunning), 'pgbench ran at every kill').toEqual(Array(KILLS).fill(true));
        expect(kills.map((k) => k.streamed), 'every kill cut a live stream').toEqual(Array(KILLS).fill(true));
        expect(agent.generation, 'agent starts').toBe(KILLS + 1);
        expect(history.n, 'TPC-B transactions committed').toBeGreaterThan(200);
        expect(samples.length, 'samples taken during the run').toBeGreaterThanOrEqual(Math.floor((PGBENCH_SECONDS * 1000) / SAMPLE_EVERY_MS / 2));
        expect(agent.events.filter((e) => e.level === 'error'), agent.describe()).toEqual([]);
        expect(agent.otherOutput, 'output that is not a JSON log line').toEqual([]);

        // 1. the invariant as of every sampled LSN and time
        const tv = Date.now();
        const verifyMs: Record<string, number> = {};
        let lapStart = tv;
        const lap = (name: string): void => {
          verifyMs[name] = Date.now() - lapStart;
          lapStart = Date.now();
        };
        expect((await invariantFailures(source, samples.map((s) => s.lsn), 'lsn')).slice(0, 10).join('\n')).toBe('');
        expect((await invariantFailures(source, samples.map((s) => s.time), 'time')).slice(0, 10).join('\n')).toBe('');
        lap('invariant');
        // 2. accounts against branches as of the last sampled LSN
        const last = samples.at(-1)!.lsn;
        const sums = await accountsVsBranches(source, last);
        expect(sums.ok, `as of ${last}: accounts sum to ${sums.accounts} (${sums.missing} missing), branches to ${sums.branches}`).toBe(true);
        lap('accounts sum');
        // 3. every touched account, every teller and branch as of now equals the row now
        let compared = 0;
        for (const [table, key, touched] of [['pgbench_accounts', 'aid', true], ['pgbench_tellers', 'tid', false], ['pgbench_branches', 'bid', false]] as const) {
          const r = await currentRowsDiffering(source, table, key, after, touched);
          expect(r.differing.slice(0, 10).join('\n'), `${r.differing.length} of ${r.compared} ${table} rows differ`).toBe('');
          compared += r.compared;
        }
        expect(compared, 'rows compared with the table now').toBe(history.accounts + 10 * SCALE + SCALE);
        lap('rows now');
        // 4. exactly once: as many versions as baseline rows and transactions
        const counts = await versionCountFailures(source);
        expect(counts.join('\n')).toBe('');
        lap('counts');
        const tVerify = Date.now() - tv;

        await expectConfirmedWithinCheckpoint('at the end', source, store, slot, tw.nodeId, slotStart);
        expect(await agent.stopCleanly(), 'exit code after SIGTERM').toBe(0);
        expect(agent.events.at(-1)?.event).toBe('stopped');
        console.log(`timings (${plugin}): set-up ${tSetUp} ms, run ${tRun} ms, catch-up ${tCatchUp} ms, verified in ${tVerify} ms ${JSON.stringify(verifyMs)}, total ${Date.now() - t0} ms`);
      } finally {
        await sampler.end().catch(() => undefined);
        await store.end().catch(() => undefined);
        await source.end().catch(() => undefined);
      }
    });
});
