// pgtimewarp_track under concurrent writers.
//
// The claim (see the comment above pgtimewarp_track in extension/pgtimewarp.c):
// the baseline, valid from the returned LSN B, plus exactly the changes whose
// transactions commit after B reproduce the table; none lost, none doubled.
//
// Method: a logical slot with test_decoding is created before tracking and
// records every committed change.  Writers hammer the table while
// pgtimewarp_track runs.  Afterwards the decoded stream is split at B:
//   initial contents + transactions committed at or before B  == baseline
//   baseline         + transactions committed after B         == final table
// and no transaction touching the table commits between B and the commit of
// track's own transaction (the lock keeps writers out until then).
//
// The first equality carries the weight.  Decoded changes are whole row
// images, so applying a change twice leaves the same final table: a change
// both in the baseline and after B would pass the second equality but not
// the first.  (Checked by mutation: a B read before track takes its lock
// fails the first equality and the gap check, and passes the second.)
// Every writer UPDATE is v = v + 1, so a change misplaced across B shows up
// as an off-by-one v.
//
// Which LSN is "the commit LSN" here: pg_logical_slot_get_changes() reports,
// for a change or a logical message, the start LSN of its WAL record; for
// BEGIN, the first LSN of the transaction; for COMMIT, the END of the commit
// record (test_decoding's commit callback writes at txn->end_lsn), i.e. the
// position just after it.  Checked by experiment with pg_walinspect, and the
// first test re-checks it for track's own transaction.  A transaction that
// committed before track read B has its commit record entirely before B, so
// its end LSN is <= B; every later one has end LSN > B.  Comparing end LSNs
// with B is therefore exact in both directions.

import { readFileSync } from 'node:fs';

import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';

import { lsnFromText, lsnToText } from '../../agent/decode.js';
import { Random, testSeed } from '../support/random.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';

// log_lock_waits reports every lock wait longer than deadlock_timeout in the
// server log: the evidence that writers really were blocked by track's lock.
const cluster = useCluster({ settings: { log_lock_waits: 'on', deadlock_timeout: '5ms' } });

const WRITERS = 8;
const ITERATIONS_PER_WRITER = 400;
const INITIAL_ROWS = 2000;
/** Track once this many writer transactions have committed a change. */
const TRACK_AFTER_COMMITS = 400;
const ROLLBACK_PROBABILITY = 0.15;
/** Inserts that reuse an id below the high-water mark, likely a unique violation. */
const REUSE_ID_PROBABILITY = 0.15;

/** The workload's random choices; PGTIMEWARP_SEED replays them (not the interleaving). */
const seed = testSeed();

let timewarp: Timewarp;
let store: pg.Client;

beforeAll(async () => {
  timewarp = await setupTimewarp(cluster());
  store = await cluster().connect('store');
});

afterAll(async () => {
  await timewarp?.source.end();
  await store?.end();
});

// ---------------------------------------------------------------------------
// LSNs, table states

/** A row of the test tables by id, every value as its text output. */
interface Row {
  v: string;
  pad: string | null;
}
type TableState = Map<string, Row>;

async function readTable(client: pg.Client, table: string): Promise<TableState> {
  const { rows } = await client.query<{ id: string; v: string; pad: string | null }>(
    `SELECT id::text, v::text, pad FROM ${table}`,
  );
  return new Map(rows.map((r) => [r.id, { v: r.v, pad: r.pad }]));
}

/**
 * The baseline pgtimewarp_track wrote for public.`table`, after checking that
 * the store says the table is tracked from `b` and holds nothing but open
 * baseline versions valid from `b` (no agent runs here).
 */
async function readBaseline(table: string, b: string): Promise<TableState> {
  const { rows: tracked } = await store.query<{ tracked_from_lsn: string }>(
    `SELECT tracked_from_lsn::text FROM pgtimewarp_store.tracked_relations
      WHERE node_id = $1 AND schema_name = 'public' AND table_name = $2`,
    [timewarp.nodeId, table],
  );
  expect(tracked.map((r) => r.tracked_from_lsn), 'tracked_relations.tracked_from_lsn').toEqual([b]);
  const { rows: versions } = await store.query<{
    pk: string[]; valid_from_lsn: string; valid_to_lsn: string | null; op: string;
    same_ts: boolean; row_data: Record<string, string | null>;
  }>(
    `SELECT v.pk, v.valid_from_lsn::text, v.valid_to_lsn::text, v.op,
            v.valid_from_ts = r.tracked_from_ts AS same_ts, v.row_data
       FROM pgtimewarp_store.row_history v JOIN pgtimewarp_store.tracked_relations r USING (node_id, schema_name, table_name)
      WHERE v.node_id = $1 AND v.schema_name = 'public' AND v.table_name = $2`,
    [timewarp.nodeId, table],
  );
  const wrong = versions.filter(
    (r) => r.op !== 'baseline' || r.valid_from_lsn !== b || r.valid_to_lsn !== null || !r.same_ts,
  );
  expect(wrong.slice(0, 5), 'every stored version is an open baseline version valid from B').toEqual([]);
  const baseline: TableState = new Map();
  for (const r of versions) {
    expect(Object.keys(r.row_data).sort()).toEqual(['id', 'pad', 'v']);
    expect(r.pk).toEqual([r.row_data['id']]);
    baseline.set(r.row_data['id']!, { v: r.row_data['v']!, pad: r.row_data['pad'] ?? null });
  }
  expect(baseline.size, 'one baseline version per key').toBe(versions.length);
  return baseline;
}

/** Human-readable differences, at most `limit` of them; empty when equal. */
function differences(actual: TableState, expected: TableState, limit = 20): string[] {
  const out: string[] = [];
  const describeRow = (row: Row | undefined): string => (row === undefined ? 'absent' : JSON.stringify(row));
  for (const id of new Set([...actual.keys(), ...expected.keys()])) {
    const a = actual.get(id);
    const e = expected.get(id);
    if (a?.v !== e?.v || a?.pad !== e?.pad || (a === undefined) !== (e === undefined)) {
      out.push(`id ${id}: got ${describeRow(a)}, expected ${describeRow(e)}`);
      if (out.length >= limit) break;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// test_decoding output

interface Change {
  table: string;
  op: 'INSERT' | 'UPDATE' | 'DELETE';
  id: string;
  /** New row for INSERT and UPDATE. */
  row?: Row;
}

interface DecodedTransaction {
  xid: string;
  /** End LSN of the commit record (see the top of this file). */
  commitLsn: bigint;
  changes: Change[];
  /** Transactional logical messages: prefix and content. */
  messages: { prefix: string; content: string; lsn: bigint }[];
}

/**
 * Parse test_decoding's column list, e.g.
 *   id[integer]:5 v[integer]:1 pad[text]:'it''s' other[text]:null
 */
function parseColumns(text: string): Map<string, string | null> {
  const columns = new Map<string, string | null>();
  let pos = 0;
  while (pos < text.length) {
    const head = /^([^[\s]+)\[[^\]]+\]:/.exec(text.slice(pos));
    if (head === null) throw new Error(`cannot parse test_decoding columns at ${JSON.stringify(text.slice(pos))}`);
    pos += head[0].length;
    let value: string | null;
    if (text[pos] === "'") {
      value = '';
      pos++;
      for (;;) {
        const quote = text.indexOf("'", pos);
        if (quote < 0) throw new Error(`unterminated quoted value in ${JSON.stringify(text)}`);
        value += text.slice(pos, quote);
        pos = quote + 1;
        if (text[pos] !== "'") break;
        value += "'";
        pos++;
      }
    } else {
      const end = text.indexOf(' ', pos);
      const token = text.slice(pos, end < 0 ? text.length : end);
      value = token === 'null' ? null : token;
      pos += token.length;
    }
    columns.set(head[1]!, value);
    if (text[pos] === ' ') pos++;
  }
  return columns;
}

function parseChange(data: string): Change {
  const match = /^table ([^:]+): (INSERT|UPDATE|DELETE): (.*)$/.exec(data);
  if (match === null) throw new Error(`unexpected test_decoding change: ${data}`);
  const [, table, op, rest] = match as unknown as [string, string, Change['op'], string];
  if (rest.startsWith('old-key:')) throw new Error(`the workload never changes keys, yet: ${data}`);
  const columns = parseColumns(rest);
  const id = columns.get('id');
  if (id === undefined || id === null) throw new Error(`change without id: ${data}`);
  if (op === 'DELETE') return { table, op, id };
  const v = columns.get('v');
  if (v === undefined || v === null || !columns.has('pad')) throw new Error(`incomplete row: ${data}`);
  return { table, op, id, row: { v, pad: columns.get('pad') ?? null } };
}

/**
 * Consume everything the slot holds, as committed transactions in commit order.
 * Not 'skip-empty-xacts': test_decoding (PG 15) then drops BEGIN and COMMIT of
 * a transaction whose only output is a logical message, such as track's own.
 */
async function decodeSlot(client: pg.Client, slot: string): Promise<DecodedTransaction[]> {
  const { rows } = await client.query<{ lsn: string; xid: string; data: string }>(
    `SELECT lsn::text, xid::text, data
       FROM pg_logical_slot_get_changes($1, NULL, NULL, 'include-xids', '0')`,
    [slot],
  );
  const transactions: DecodedTransaction[] = [];
  let current: DecodedTransaction | undefined;
  for (const { lsn: at, xid, data } of rows) {
    if (data === 'BEGIN') {
      current = { xid, commitLsn: 0n, changes: [], messages: [] };
    } else if (data === 'COMMIT') {
      if (current === undefined) throw new Error(`COMMIT without BEGIN at ${at}`);
      current.commitLsn = lsnFromText(at);
      transactions.push(current);
      current = undefined;
    } else if (data.startsWith('message: transactional: 1 ')) {
      const message = /^message: transactional: 1 prefix: ([^,]*), sz: \d+ content:(.*)$/s.exec(data);
      if (message === null || current === undefined) throw new Error(`unexpected message row: ${data}`);
      current.messages.push({ prefix: message[1]!, content: message[2]!, lsn: lsnFromText(at) });
    } else if (data.startsWith('message:')) {
      throw new Error(`unexpected non-transactional message: ${data}`);
    } else {
      if (current === undefined) throw new Error(`change outside a transaction: ${data}`);
      current.changes.push(parseChange(data));
    }
  }
  if (current !== undefined) throw new Error('the last decoded transaction has no COMMIT');
  return transactions;
}

/**
 * Apply the changes of `transactions` to `table` (schema-qualified, as
 * test_decoding names it), in order, onto a copy of `state`.
 */
function replay(state: TableState, transactions: DecodedTransaction[], table: string): TableState {
  const result = new Map(state);
  for (const txn of transactions) {
    for (const change of txn.changes) {
      if (change.table !== table) continue;
      if (change.op === 'DELETE') result.delete(change.id);
      else result.set(change.id, change.row!);
    }
  }
  return result;
}

// ---------------------------------------------------------------------------
// The workload

interface Workload {
  table: string;
  /** Next never-used id; shared by all writers. */
  nextId: number;
  committed: number;
  /** Committed transactions that changed at least one row (the rest decode to nothing). */
  committedChanging: number;
  rolledBack: number;
  uniqueViolations: number;
  deadlocks: number;
  /** performance.now() of every writer transaction's end (commit, rollback or error). */
  finishedAt: number[];
}

async function runWriter(client: pg.Client, writer: number, work: Workload): Promise<void> {
  const random = new Random(seed + writer * 7919);
  const pick = (lo: number, hi: number): number => random.int(lo, hi);
  for (let i = 0; i < ITERATIONS_PER_WRITER; i++) {
    const statements: [string, unknown[]][] = [];
    for (let n = pick(1, 3); n > 0; n--) {
      const r = random.next();
      if (r < 0.3) {
        const id = random.next() < REUSE_ID_PROBABILITY ? pick(1, work.nextId - 1) : work.nextId++;
        // NULLs, spaces and quotes exercise the decoder as well as the baseline
        const pad = random.next() < 0.1 ? null : `w${writer} i${i} it's`;
        statements.push([`INSERT INTO ${work.table} (id, v, pad) VALUES ($1, $2, $3)`, [id, pick(0, 999), pad]]);
      } else if (r < 0.75) {
        statements.push([`UPDATE ${work.table} SET v = v + 1 WHERE id = $1`, [pick(1, work.nextId - 1)]]);
      } else {
        statements.push([`DELETE FROM ${work.table} WHERE id = $1`, [pick(1, work.nextId - 1)]]);
      }
    }
    const rollback = random.next() < ROLLBACK_PROBABILITY;
    try {
      let changed = 0;
      await client.query('BEGIN');
      for (const [sql, params] of statements) changed += (await client.query(sql, params)).rowCount ?? 0;
      await client.query(rollback ? 'ROLLBACK' : 'COMMIT');
      if (rollback) {
        work.rolledBack++;
      } else {
        work.committed++;
        if (changed > 0) work.committedChanging++;
      }
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === '23505') work.uniqueViolations++;
      else if (code === '40P01') work.deadlocks++;
      else throw err;
      await client.query('ROLLBACK');
    }
    work.finishedAt.push(performance.now());
  }
}

/** Lock waits of `pids` on relation `relid` that the server logged (log_lock_waits). */
function loggedLockWaits(relid: number, pids: Set<number>): { pid: number; event: string; ms: number }[] {
  const text = readFileSync(cluster().logFile, 'utf8');
  const pattern = /process (\d+) (still waiting for|acquired) (\w+) on relation (\d+) of database \d+ after ([\d.]+) ms/g;
  const waits: { pid: number; event: string; ms: number }[] = [];
  for (const m of text.matchAll(pattern)) {
    if (Number(m[4]) === relid && pids.has(Number(m[1]))) {
      waits.push({ pid: Number(m[1]), event: `${m[2]} ${m[3]}`, ms: Number(m[5]) });
    }
  }
  return waits;
}

interface TrackCall {
  /** What pgtimewarp_track returned. */
  b: string;
  /** performance.now() when track returned, and when its transaction's COMMIT was sent. */
  returnedAt: number;
  commitSentAt: number;
}

interface ScenarioResult {
  work: Workload;
  b: bigint;
  call: TrackCall;
  trackCommitLsn: bigint;
  trackXid: string;
  /** Transactions changing the table, by where their commit falls. */
  before: DecodedTransaction[];
  after: DecodedTransaction[];
  writerPids: Set<number>;
  relid: number;
}

/**
 * Create `table` with INITIAL_ROWS rows and a test_decoding slot, run the
 * writers, call `track` once TRACK_AFTER_COMMITS writer transactions have
 * committed, and check the claim once every writer is done.
 */
async function trackUnderLoad(
  table: string,
  track: (client: pg.Client) => Promise<TrackCall>,
): Promise<ScenarioResult> {
  const source = timewarp.source;
  await source.query(`CREATE TABLE ${table} (id int PRIMARY KEY, v int NOT NULL, pad text)`);
  await source.query(
    `INSERT INTO ${table} SELECT g, g % 97, CASE WHEN g % 50 = 0 THEN NULL ELSE 'initial ' || g END
       FROM generate_series(1, ${INITIAL_ROWS}) AS g`,
  );
  const initial = await readTable(source, table);
  const decodedName = `public.${table}`;
  const { rows: relRows } = await source.query<{ relid: number }>(`SELECT $1::regclass::oid::int AS relid`, [table]);
  const relid = relRows[0]!.relid;

  const slot = `check_${table}`;
  await source.query(`SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, [slot]);
  try {
    const work: Workload = {
      table, nextId: INITIAL_ROWS + 1, committed: 0, committedChanging: 0, rolledBack: 0, uniqueViolations: 0, deadlocks: 0, finishedAt: [],
    };
    const writers = await Promise.all(Array.from({ length: WRITERS }, () => cluster().connect('source')));
    const tracker = await cluster().connect('source');
    let call: TrackCall;
    const writerPids = new Set<number>();
    try {
      for (const w of writers) {
        const { rows } = await w.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
        writerPids.add(rows[0]!.pid);
      }
      const running = writers.map((client, i) => runWriter(client, i, work));
      // A writer that fails ends the scenario at once rather than after the rest.
      const allDone = Promise.all(running);
      const tracked = (async () => {
        while (work.committedChanging < TRACK_AFTER_COMMITS) {
          await Promise.race([new Promise((resolve) => setTimeout(resolve, 2)), allDone]);
          if (work.finishedAt.length === WRITERS * ITERATIONS_PER_WRITER) {
            throw new Error(`the writers finished before ${TRACK_AFTER_COMMITS} commits; nothing ran concurrently`);
          }
        }
        return track(tracker);
      })();
      [call] = await Promise.all([tracked, allDone]);
    } finally {
      await Promise.all([...writers, tracker].map((c) => c.end()));
    }

    const b = lsnFromText(call.b);
    const transactions = await decodeSlot(source, slot);

    // Track's own transaction: the one carrying its pgtimewarp message.
    const trackTxns = transactions.filter((t) =>
      t.messages.some((m) => m.prefix === 'pgtimewarp' && (JSON.parse(m.content) as { table_name?: unknown }).table_name === table),
    );
    expect(trackTxns, 'exactly one decoded transaction carries the track message').toHaveLength(1);
    const trackTxn = trackTxns[0]!;
    const message = JSON.parse(trackTxn.messages[0]!.content) as Record<string, unknown>;
    expect(message).toEqual({ action: 'track', node_id: timewarp.nodeId, schema_name: 'public', table_name: table, lsn: call.b });
    expect(trackTxn.changes.filter((c) => c.table === decodedName), 'track itself does not change the table').toEqual([]);
    expect(trackTxn.commitLsn > b, 'track commits after the LSN it returns').toBe(true);

    const touching = transactions.filter((t) => t.changes.some((c) => c.table === decodedName));
    const before = touching.filter((t) => t.commitLsn <= b);
    const after = touching.filter((t) => t.commitLsn > b);
    const inGap = after.filter((t) => t.commitLsn < trackTxn.commitLsn);
    // Commit order is LSN order; the decoder delivers in that order.
    const commitLsns = transactions.map((t) => t.commitLsn);
    expect(commitLsns).toEqual([...commitLsns].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0)));

    const baseline = await readBaseline(table, call.b);

    // The claim, in both directions.
    expect(
      differences(baseline, replay(initial, before, decodedName)),
      'baseline == initial contents + transactions committed at or before B (none missing, none from later)',
    ).toEqual([]);
    const final = await readTable(source, table);
    expect(
      differences(replay(baseline, after, decodedName), final),
      'baseline + transactions committed after B == final table (none lost, none doubled)',
    ).toEqual([]);
    expect(
      inGap.map((t) => t.xid),
      'no transaction changing the table commits between B and the commit of track',
    ).toEqual([]);
    // Not vacuous: the final table differs from the baseline in many rows.
    expect(differences(baseline, final, Infinity).length).toBeGreaterThan(50);

    // lsn_time_map is the agent's alone: track writes none (it would race the agent's heartbeats)
    const { rows: lsnTime } = await store.query(
      `SELECT 1 FROM pgtimewarp_store.lsn_time_map WHERE node_id = $1 AND lsn = $2`,
      [timewarp.nodeId, call.b],
    );
    expect(lsnTime, 'track writes no lsn_time_map entry').toHaveLength(0);

    // The workload really ran on both sides of B.
    const total = WRITERS * ITERATIONS_PER_WRITER;
    expect(work.finishedAt).toHaveLength(total);
    expect(before.length, 'writer transactions committed before B').toBeGreaterThanOrEqual(TRACK_AFTER_COMMITS);
    expect(after.length, 'writer transactions committed after B').toBeGreaterThan(total / 4);
    expect(before.length + after.length, 'every committed writer transaction was decoded').toBe(work.committedChanging);
    expect(work.rolledBack).toBeGreaterThan(0);

    return {
      work, b, call, trackCommitLsn: trackTxn.commitLsn, trackXid: trackTxn.xid,
      before, after, writerPids, relid,
    };
  } finally {
    await source.query('SELECT pg_drop_replication_slot($1)', [slot]);
  }
}

function reportSeedOnFailure(): void {
  onTestFailed(() => {
    console.error(`track-concurrency: workload seed ${seed}; replay the same choices with PGTIMEWARP_SEED=${seed} (the interleaving is up to the scheduler)`);
  });
}

describe('pgtimewarp_track under concurrent writers', () => {
  it('baseline + changes committed after the returned LSN reproduce the table', async () => {
    reportSeedOnFailure();
    const result = await trackUnderLoad('items', async (client) => {
      const { rows } = await client.query<{ b: string }>(`SELECT pgtimewarp_track('items')::text AS b`);
      const now = performance.now();
      return { b: rows[0]!.b, returnedAt: now, commitSentAt: now };
    });

    // Writers were blocked by track's lock: only track takes a lock that
    // conflicts with their ROW EXCLUSIVE one, and the server logged their waits.
    const waits = loggedLockWaits(result.relid, result.writerPids);
    expect(waits.filter((w) => w.event === 'still waiting for RowExclusiveLock').length,
      'some writer waited for its ROW EXCLUSIVE lock on the table').toBeGreaterThan(0);

    // The LSN convention this file relies on: a COMMIT row's lsn is the end
    // of the commit record.
    await timewarp.source.query('CREATE EXTENSION IF NOT EXISTS pg_walinspect');
    const { rows: commits } = await timewarp.source.query<{ start_lsn: string; end_lsn: string }>(
      `SELECT start_lsn::text, end_lsn::text FROM pg_get_wal_records_info($1, $2)
        WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT' AND xid = $3::xid`,
      [result.call.b, lsnToText(result.trackCommitLsn), result.trackXid],
    );
    expect(commits, 'the commit record of track, read with pg_walinspect').toHaveLength(1);
    expect(lsnFromText(commits[0]!.end_lsn)).toBe(result.trackCommitLsn);
    expect(lsnFromText(commits[0]!.start_lsn) < result.trackCommitLsn).toBe(true);

    console.log(
      `items: seed ${seed}; ${result.before.length} commits before B, ${result.after.length} after B; ` +
        `${result.work.rolledBack} rollbacks, ${result.work.uniqueViolations} unique violations, ` +
        `${result.work.deadlocks} deadlocks; ${waits.length} logged lock waits on the table`,
    );
  });

  it('holds when track runs in an explicit transaction that commits 1 s later', async () => {
    reportSeedOnFailure();
    const sleep = 1000;
    const result = await trackUnderLoad('items_slow', async (client) => {
      await client.query('BEGIN ISOLATION LEVEL READ COMMITTED');
      const { rows } = await client.query<{ b: string }>(`SELECT pgtimewarp_track('items_slow')::text AS b`);
      const returnedAt = performance.now();
      await client.query('SELECT pg_sleep($1)', [sleep / 1000]);
      const commitSentAt = performance.now();
      await client.query('COMMIT');
      return { b: rows[0]!.b, returnedAt, commitSentAt };
    });

    // While track's transaction sleeps, every writer is stuck on the lock: no
    // writer transaction ends (the margin absorbs replies already in flight
    // when track returned).
    const margin = 100;
    const endedWhileSleeping = result.work.finishedAt.filter(
      (t) => t > result.call.returnedAt + margin && t < result.call.commitSentAt,
    );
    expect(endedWhileSleeping, 'writer transactions that ended while track slept').toEqual([]);
    // ... and the server saw them wait about as long as the sleep.
    const waits = loggedLockWaits(result.relid, result.writerPids);
    const longest = Math.max(0, ...waits.filter((w) => w.event === 'acquired RowExclusiveLock').map((w) => w.ms));
    expect(longest, 'longest logged wait of a writer for its ROW EXCLUSIVE lock (ms)').toBeGreaterThan(sleep * 0.9);
    console.log(
      `items_slow: seed ${seed}; ${result.before.length} commits before B, ${result.after.length} after B; ` +
        `longest writer lock wait ${longest} ms`,
    );
  });

  it('waits for a writer already in progress and holds back one that comes later', async () => {
    // The two halves of the lock argument, one step at a time.
    const source = timewarp.source;
    await source.query(`CREATE TABLE items3 (id int PRIMARY KEY, v int NOT NULL, pad text)`);
    await source.query(`INSERT INTO items3 SELECT g, 0, NULL FROM generate_series(1, 10) AS g`);
    const slot = 'check_items3';
    await source.query(`SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, [slot]);
    const connect = (): Promise<pg.Client> => cluster().connect('source');
    const [early, late, tracker] = await Promise.all([connect(), connect(), connect()]);
    try {
      const pid = async (c: pg.Client): Promise<number> =>
        (await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
      /** Wait until backend `who` queues for `mode` on items3. */
      const waitsFor = async (who: number, mode: string): Promise<void> => {
        for (let tries = 0; ; tries++) {
          const { rowCount } = await source.query(
            `SELECT 1 FROM pg_locks WHERE relation = 'items3'::regclass AND pid = $1 AND mode = $2 AND NOT granted`,
            [who, mode],
          );
          if (rowCount === 1) return;
          if (tries > 1000) throw new Error(`backend ${who} never queued for ${mode} on items3`);
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
      };
      const [trackerPid, latePid] = [await pid(tracker), await pid(late)];

      await early.query('BEGIN');
      await early.query('UPDATE items3 SET v = v + 1 WHERE id = 1');
      const tracking = tracker.query<{ b: string }>(`SELECT pgtimewarp_track('items3')::text AS b`);
      tracking.catch(() => {}); // awaited below; a failure surfaces there
      await waitsFor(trackerPid, 'ShareRowExclusiveLock');
      await late.query('BEGIN');
      const lateUpdate = late.query('UPDATE items3 SET v = v + 1 WHERE id = 2');
      lateUpdate.catch(() => {});
      // queued behind track, although it does not conflict with `early`
      await waitsFor(latePid, 'RowExclusiveLock');
      await early.query('COMMIT');
      const b = (await tracking).rows[0]!.b;
      await lateUpdate;
      await late.query('COMMIT');

      const baseline = await readBaseline('items3', b);
      expect(baseline.get('1'), 'the early writer committed before B').toEqual({ v: '1', pad: null });
      expect(baseline.get('2'), 'the late writer committed after B').toEqual({ v: '0', pad: null });

      const transactions = await decodeSlot(source, slot);
      const trackCommit = transactions.find((t) => t.messages.some((m) => m.prefix === 'pgtimewarp'))!.commitLsn;
      const touching = transactions.filter((t) => t.changes.length > 0);
      expect(touching.map((t) => t.changes.map((c) => c.id))).toEqual([['1'], ['2']]);
      expect(touching[0]!.commitLsn <= lsnFromText(b), 'early commit <= B').toBe(true);
      expect(touching[1]!.commitLsn > trackCommit, 'late commit > track commit').toBe(true);
    } finally {
      await Promise.all([early, late, tracker].map((c) => c.end()));
      await source.query('SELECT pg_drop_replication_slot($1)', [slot]);
    }
  });

  it('leaves nothing behind when the tracking transaction rolls back', async () => {
    const source = timewarp.source;
    await source.query(`CREATE TABLE items2 (id int PRIMARY KEY, v int NOT NULL, pad text)`);
    await source.query(`INSERT INTO items2 SELECT g, g, 'x' FROM generate_series(1, 100) AS g`);
    const slot = 'check_items2';
    await source.query(`SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, [slot]);
    try {
      await source.query('BEGIN');
      const { rows } = await source.query<{ b: string }>(`SELECT pgtimewarp_track('items2')::text AS b`);
      await source.query('ROLLBACK');
      const b = rows[0]!.b;

      const count = async (sql: string, params: unknown[]): Promise<number> =>
        (await store.query<{ n: number }>(sql, params)).rows[0]!.n;
      const where = `node_id = $1 AND schema_name = 'public' AND table_name = 'items2'`;
      expect(await count(`SELECT count(*)::int AS n FROM pgtimewarp_store.tracked_relations WHERE ${where}`,
        [timewarp.nodeId])).toBe(0);
      expect(await count(`SELECT count(*)::int AS n FROM pgtimewarp_store.row_history WHERE ${where}`,
        [timewarp.nodeId])).toBe(0);
      expect(await count(`SELECT count(*)::int AS n FROM pgtimewarp_store.lsn_time_map WHERE node_id = $1 AND lsn = $2`,
        [timewarp.nodeId, b])).toBe(0);

      // Something after the rollback, so the decoded stream is known to reach past it.
      await source.query(`INSERT INTO items2 VALUES (101, 101, 'after')`);
      const transactions = await decodeSlot(source, slot);
      expect(transactions.flatMap((t) => t.messages).filter((m) => m.prefix === 'pgtimewarp')).toEqual([]);
      expect(transactions.flatMap((t) => t.changes)).toEqual([
        { table: 'public.items2', op: 'INSERT', id: '101', row: { v: '101', pad: 'after' } },
      ]);

      // Nothing stale blocks a real track afterwards.
      const { rows: again } = await source.query<{ b: string }>(`SELECT pgtimewarp_track('items2')::text AS b`);
      expect(lsnFromText(again[0]!.b) > lsnFromText(b)).toBe(true);
      expect(await count(`SELECT count(*)::int AS n FROM pgtimewarp_store.row_history WHERE ${where}`,
        [timewarp.nodeId])).toBe(101);
    } finally {
      await source.query('SELECT pg_drop_replication_slot($1)', [slot]);
    }
  });
});

describe('who may take the lock', () => {
  it('refuses a non-owner before locking, so it never queues writers behind it', async () => {
    const owner = await cluster().connect('source');
    const intruder = await cluster().connect('source');
    try {
      await owner.query(`CREATE TABLE lock_probe (id int PRIMARY KEY)`);
      await owner.query(`CREATE ROLE regress_intruder LOGIN`);
      await owner.query(`BEGIN`);
      await owner.query(`INSERT INTO lock_probe VALUES (1)`); // holds RowExclusiveLock

      await intruder.query(`SET ROLE regress_intruder`);
      await intruder.query(`SET lock_timeout = '2s'`);
      const started = Date.now();
      // Had it locked first, it would wait on the owner's transaction until
      // lock_timeout ("canceling statement due to lock timeout").
      await expect(intruder.query(`SELECT pgtimewarp_track('lock_probe')`)).rejects.toThrow(
        'must be owner of table lock_probe',
      );
      expect(Date.now() - started).toBeLessThan(1500);
      await owner.query(`ROLLBACK`);
    } finally {
      await intruder.end();
      await owner.query(`DROP TABLE IF EXISTS lock_probe`);
      await owner.query(`DROP ROLE IF EXISTS regress_intruder`);
      await owner.end();
    }
  });
});
