// The agent under concurrent writers (issue 3, "Concurrency"), on each plugin.
//
// runAgent() streams in-process while 8 writer connections run seeded random
// small transactions on two tables: `items`, tracked before the writers
// start, and `items_late`, tracked by pgtimewarp_track while the writers are
// hammering it.  Transactions: 1-4 statements of inserts, upserts, updates
// of one or several rows, deletes of one or a range, primary-key changes,
// values stored out of line (TOAST) left untouched by later updates;
// explicit rollbacks, savepoints rolled back or released, and retries after
// unique violations and deadlocks (the key space is small on purpose).
//
// The model.  Each writer records, for every transaction it commits, what
// the transaction left of each key it wrote: RETURNING to_jsonb(t)::text (or
// nothing after a DELETE or as the old key of a key change), the last
// statement winning, statements of a savepoint rolled back forgotten; and
// its xid, read inside the transaction just before COMMIT.
//
// Commit order.  Under concurrency the writers cannot tell it themselves:
// pg_current_wal_insert_lsn() right after COMMIT may already include other
// sessions' later commits, and commit timestamps are taken before the
// commit record is queued for the WAL, so they can disagree with WAL order
// (and need track_commit_timestamp besides).  What the agent goes by is the
// position of the commit record in the WAL, so that is what the model goes
// by: a test_decoding slot, created before the workload, decodes every
// transaction of the source database that has something to decode, in
// commit order, and its COMMIT rows
// carry the END of the commit record (see track-concurrency.test.ts, which
// checks this convention with pg_walinspect).  Its xid column names the
// transaction, which joins it to the writer's record.  The decoded changes
// also cross-check the records: each transaction's keys, per table, as
// decoded must be the keys the writer recorded.
//
// The table after every commit is then the state after the previous one with
// the commit's recorded keys applied.  At the end LSN of commit k exactly
// commits 1..k are visible: that is the position a session reads with
// pg_current_wal_insert_lsn() right after its COMMIT when nothing else was
// written since, and the LSN pgtimewarp_track returns is of the same kind (a
// commit at or before it ends at or before it).  So a version's
// valid_from_lsn must lie in (end of the previous commit, end of its own
// commit].  Checked, for every key of the key space, at a seeded sample of
// commits; and for every commit, each key it changed at its end LSN and at
// the previous commit's (the version appears exactly there).  Compared as
// jsonb text in SQL, as agent.test.ts does.  (Under concurrency a commit
// record often directly follows the previous one, its transaction's changes
// having been written earlier: then its start IS the previous commit's end,
// and a version valid from the start of its commit record shows one commit
// early.  The sequential tests cannot see that.)
//
// items_late: only commits after the LSN B that pgtimewarp_track returned
// count.  The state at B (initial rows plus the commits at or before B)
// must be the baseline; it and the later commits must reproduce every
// answer from B on; before B there is no history.
//
// Versions: the store holds, per key, exactly one version per committed
// transaction that changed the key after tracking began (present before or
// after it; a key born and gone inside one transaction has none), plus the
// baseline if the key existed when tracking began, each valid from the
// right commit, with the op the model gives; none lost, none doubled.
//
// Replay: PGTIMEWARP_SEED=<seed> replays each writer's random choices (not
// the interleaving, which is up to the scheduler); the seed is printed on
// failure.

import type pg from 'pg';
import { afterAll, describe, expect, it, onTestFailed } from 'vitest';

import { lsnFromText } from '../../agent/decode.js';
import { runAgent, type AgentEvent } from '../../agent/run.js';
import { Random, testSeed } from '../support/random.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';

// deadlock_timeout: the workload makes deadlocks on purpose; find them fast.
const cluster = useCluster({ settings: { wal_sender_timeout: '2s', deadlock_timeout: '10ms' } });

const SEED = testSeed();

const WRITERS = 8;
const TRANSACTIONS_PER_WRITER = 200;
/** Keys 1..KEYS: small, so that writers collide (unique violations, deadlocks). */
const KEYS = 50;
/** Track items_late once this many writer transactions have ended. */
const TRACK_LATE_AFTER = Math.floor((WRITERS * TRANSACTIONS_PER_WRITER) / 3);
/** Commits at which every key of the key space is looked up, per table. */
const SAMPLED_COMMITS = 200;
const ROLLBACK_PROBABILITY = 0.08;
const SAVEPOINT_PROBABILITY = 0.12;
const HOT_PAIR_PROBABILITY = 0.1;
/** A transaction failing this often in a row (unique violation, deadlock) is given up. */
const MAX_ATTEMPTS = 20;

const TABLES = ['items', 'items_late'] as const;
type Table = (typeof TABLES)[number];
type Op = 'baseline' | 'insert' | 'update' | 'delete';

// ---------------------------------------------------------------------------
// The writers

const TEXT_PIECES = ["O'Reilly", 'say "hi"', 'back\\slash', 'ünïcødé', '日本語', '😀', 'tab\there', '', 'NULL', '{"j": 1}'];

function noteValue(r: Random, writer: number): string | null {
  if (r.chance(0.1)) return null;
  return `w${writer} ${r.pick(TEXT_PIECES)}${r.int(0, 999)}`;
}

/** bigint, sometimes beyond 2^53 (exactness), far enough below 2^63 for v + 1. */
function bigintValue(r: Random): string {
  return r.chance(0.3) ? `${r.int(1, 9)}${r.digits(17)}` : String(r.int(-1000, 1000));
}

function numericValue(r: Random): string | null {
  return r.weighted<() => string | null>([
    [1, () => null],
    [2, () => `${r.int(0, 99)}.${r.pick(['5', '50', '05'])}`],
    [2, () => `${r.chance(0.5) ? '-' : ''}${r.digits(25)}.${r.digits(12)}`],
  ])();
}

/** Over 2 kB: with STORAGE EXTERNAL stored out of line, so untouched in later updates. */
function bigValue(r: Random): string | null {
  if (!r.chance(0.2)) return null;
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789 \'"\\ßΩ';
  let s = '';
  while (s.length < 2500) s += alphabet[Math.floor(r.next() * alphabet.length)];
  return s;
}

interface Statement {
  table: Table;
  sql: string;
  params: unknown[];
  /** Run inside a savepoint, then rolled back or released. */
  savepoint: 'rollback' | 'release' | null;
}

/** Every statement returns (old_id, id, row): old_id for a key change, row null when the key is gone. */
const RETURNING = `RETURNING NULL::int AS old_id, t.id, to_jsonb(t)::text AS "row"`;

function randomStatement(r: Random, writer: number): Statement {
  const table = r.pick(TABLES);
  const key = (): number => r.int(1, KEYS);
  const [sql, params] = r.weighted<() => [string, unknown[]]>([
    [3, () => [`INSERT INTO ${table} AS t (id, v, n, note, big) VALUES ($1, $2, $3, $4, $5) ${RETURNING}`,
      [key(), bigintValue(r), numericValue(r), noteValue(r, writer), bigValue(r)]]],
    // big untouched when the row exists
    [2, () => [`INSERT INTO ${table} AS t (id, v, note) VALUES ($1, $2, $3)
                ON CONFLICT (id) DO UPDATE SET v = t.v + 1, note = excluded.note ${RETURNING}`,
      [key(), bigintValue(r), noteValue(r, writer)]]],
    [4, () => [`UPDATE ${table} AS t SET v = t.v + 1, note = $2 WHERE t.id = $1 ${RETURNING}`, [key(), noteValue(r, writer)]]],
    // several rows, locked in no particular order: deadlocks
    [2, () => [`UPDATE ${table} AS t SET v = t.v + 1 WHERE t.id = ANY($1::int[]) ${RETURNING}`,
      [Array.from({ length: r.int(2, 4) }, key)]]],
    [1, () => [`UPDATE ${table} AS t SET n = $2, big = $3 WHERE t.id = $1 ${RETURNING}`, [key(), numericValue(r), bigValue(r)]]],
    [2, () => [`DELETE FROM ${table} AS t WHERE t.id = $1 RETURNING NULL::int AS old_id, t.id, NULL::text AS "row"`, [key()]]],
    [1, () => [`DELETE FROM ${table} AS t WHERE t.id BETWEEN $1 AND $1 + 2 RETURNING NULL::int AS old_id, t.id, NULL::text AS "row"`,
      [key()]]],
    // primary-key change, big untouched
    [2, () => {
      const from = key();
      let to = key();
      if (to === from) to = (from % KEYS) + 1;
      return [`UPDATE ${table} AS t SET id = $2, v = t.v + 1 WHERE t.id = $1 RETURNING $1::int AS old_id, t.id, to_jsonb(t)::text AS "row"`,
        [from, to]];
    }],
  ])();
  const savepoint = r.chance(SAVEPOINT_PROBABILITY) ? (r.chance(0.5) ? 'rollback' : 'release') : null;
  return { table, sql, params, savepoint };
}

/** What a transaction left of each key it wrote: to_jsonb text, or null when gone. */
type Writes = Map<Table, Map<number, string | null>>;

interface WriterCommit {
  writer: number;
  /** 32-bit xid as test_decoding shows it; null if the transaction wrote nothing. */
  xid: string | null;
  writes: Writes;
}

interface Workload {
  commits: WriterCommit[];
  /** Writer transactions ended (committed, rolled back, or given up). */
  ended: number;
  rolledBack: number;
  savepointsRolledBack: number;
  uniqueViolations: number;
  deadlocks: number;
  gaveUp: number;
}

function record(writes: Writes, table: Table, rows: Array<{ old_id: number | null; id: number; row: string | null }>): void {
  let byKey = writes.get(table);
  if (byKey === undefined) writes.set(table, (byKey = new Map()));
  for (const r of rows) {
    if (r.old_id !== null) byKey.set(r.old_id, null);
    byKey.set(r.id, r.row);
  }
}

function copyWrites(writes: Writes): Writes {
  return new Map([...writes].map(([t, m]) => [t, new Map(m)]));
}

function errorCode(err: unknown): string | undefined {
  return (err as { code?: string }).code;
}

/** One writer transaction, retried (with new random statements) after a unique violation or a deadlock. */
async function writerTransaction(client: pg.Client, r: Random, writer: number, work: Workload): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    const statements = Array.from({ length: r.int(1, 4) }, () => randomStatement(r, writer));
    if (r.chance(HOT_PAIR_PROBABILITY)) {
      // two hot rows, one at a time, in either order: other writers take them the other way round
      const table = r.pick(TABLES);
      const [first, second] = r.chance(0.5) ? [1, 2] : [2, 1];
      for (const id of [first, second]) {
        statements.splice(r.int(0, statements.length), 0, {
          table, sql: `UPDATE ${table} AS t SET v = t.v + 1 WHERE t.id = $1 ${RETURNING}`, params: [id], savepoint: null,
        });
      }
    }
    const rollback = r.chance(ROLLBACK_PROBABILITY);
    let writes: Writes = new Map();
    try {
      await client.query('BEGIN');
      for (const s of statements) {
        if (s.savepoint === null) {
          record(writes, s.table, (await client.query(s.sql, s.params)).rows);
          continue;
        }
        const saved = copyWrites(writes);
        await client.query('SAVEPOINT s');
        try {
          record(writes, s.table, (await client.query(s.sql, s.params)).rows);
        } catch (err) {
          if (errorCode(err) !== '23505') throw err;
          work.uniqueViolations++;
          await client.query('ROLLBACK TO SAVEPOINT s');
          writes = saved;
          continue;
        }
        if (s.savepoint === 'rollback') {
          await client.query('ROLLBACK TO SAVEPOINT s');
          writes = saved;
          work.savepointsRolledBack++;
        } else {
          await client.query('RELEASE SAVEPOINT s');
        }
      }
      if (rollback) {
        await client.query('ROLLBACK');
        work.rolledBack++;
        return;
      }
      const { rows } = await client.query<{ xid: string | null }>(`SELECT xid(pg_current_xact_id_if_assigned())::text AS xid`);
      await client.query('COMMIT');
      work.commits.push({ writer, xid: rows[0]!.xid, writes });
      return;
    } catch (err) {
      const code = errorCode(err);
      if (code === '23505') work.uniqueViolations++;
      else if (code === '40P01') work.deadlocks++;
      else throw err;
      await client.query('ROLLBACK');
      if (attempt >= MAX_ATTEMPTS) {
        work.gaveUp++;
        return;
      }
    }
  }
}

async function runWriter(client: pg.Client, writer: number, work: Workload): Promise<void> {
  const r = new Random(SEED + writer * 7919);
  for (let i = 0; i < TRANSACTIONS_PER_WRITER; i++) {
    await writerTransaction(client, r, writer, work);
    work.ended++;
  }
}

// ---------------------------------------------------------------------------
// test_decoding output: commit order, commit LSNs, keys per transaction

interface DecodedTransaction {
  xid: string;
  /** End of the commit record. */
  end: bigint;
  endText: string;
  /** Keys changed per table (old and new key of a key change). */
  keys: Map<Table, Set<number>>;
  /** Tables whose tracking this transaction began (pgtimewarp's logical message). */
  tracks: string[];
}

const CHANGE = /^table public\.(\w+): (?:INSERT|UPDATE|DELETE): (?:old-key: id\[integer\]:(-?\d+) new-tuple: )?id\[integer\]:(-?\d+)/;

async function decodeSlot(client: pg.Client, slot: string): Promise<DecodedTransaction[]> {
  // not skip-empty-xacts: a transaction whose only output is a logical message (track's) shows too
  const { rows } = await client.query<{ lsn: string; xid: string; data: string }>(
    `SELECT lsn::text, xid::text, data FROM pg_logical_slot_get_changes($1, NULL, NULL, 'include-xids', '0')`,
    [slot],
  );
  const out: DecodedTransaction[] = [];
  let current: DecodedTransaction | undefined;
  for (const { lsn: at, xid, data } of rows) {
    if (data === 'BEGIN') {
      current = { xid, end: 0n, endText: '', keys: new Map(), tracks: [] };
    } else if (data === 'COMMIT') {
      if (current === undefined) throw new Error(`COMMIT without BEGIN at ${at}`);
      current.end = lsnFromText(at);
      current.endText = at;
      out.push(current);
      current = undefined;
    } else if (data.startsWith('message: transactional: 1 prefix: pgtimewarp,')) {
      const content = /content:(.*)$/s.exec(data)?.[1] ?? '';
      const message = JSON.parse(content) as { action?: string; table_name?: string };
      if (message.action === 'track' && message.table_name !== undefined) current?.tracks.push(message.table_name);
    } else if (data.startsWith('table ')) {
      if (current === undefined) throw new Error(`change outside a transaction: ${data.slice(0, 200)}`);
      const m = CHANGE.exec(data);
      if (m === null) throw new Error(`unexpected test_decoding change: ${data.slice(0, 200)}`);
      const table = m[1] as Table;
      if (!TABLES.includes(table)) throw new Error(`change of an unexpected table: ${data.slice(0, 200)}`);
      let keys = current.keys.get(table);
      if (keys === undefined) current.keys.set(table, (keys = new Set()));
      if (m[2] !== undefined) keys.add(Number(m[2]));
      keys.add(Number(m[3]));
    } else {
      throw new Error(`unexpected test_decoding row: ${data.slice(0, 200)}`);
    }
  }
  if (current !== undefined) throw new Error('the last decoded transaction has no COMMIT');
  return out;
}

// ---------------------------------------------------------------------------
// The model of one table

interface Point {
  lsn: string;
  value: bigint;
  /** What the table looks like here: 'track' for B, else the commit's xid. */
  label: string;
}

interface VersionModel {
  point: number;
  op: Op;
  row: string | null;
}

interface TableModel {
  table: Table;
  /** points[0]: the LSN track returned (the baseline); then every decoded commit after it, in order. */
  points: Point[];
  /** Per key, its versions in order; a key never present since tracking has none. */
  versions: Map<number, VersionModel[]>;
  /** The last decoded commit before tracking began, if any: no history there. */
  beforeTracking: string | null;
}

/**
 * The table's history from `trackLsn` on: `initial` (its contents before any
 * decoded commit) plus every decoded commit's recorded writes, in commit order.
 */
function tableModel(table: Table, trackLsn: string, initial: Map<number, string>, decoded: DecodedTransaction[],
  byXid: Map<string, WriterCommit>): TableModel {
  const b = lsnFromText(trackLsn);
  const state = new Map(initial);
  const points: Point[] = [{ lsn: trackLsn, value: b, label: 'track' }];
  const versions = new Map<number, VersionModel[]>();
  let beforeTracking: string | null = null;
  let baselineTaken = false;
  const takeBaseline = (): void => {
    for (const [id, row] of state) versions.set(id, [{ point: 0, op: 'baseline', row }]);
    baselineTaken = true;
  };
  for (const txn of decoded) {
    if (txn.end > b && !baselineTaken) takeBaseline();
    if (txn.end > b) points.push({ lsn: txn.endText, value: txn.end, label: `xid ${txn.xid}` });
    else beforeTracking = txn.endText;
    const writes = byXid.get(txn.xid)?.writes.get(table);
    if (writes === undefined) continue;
    for (const [id, row] of writes) {
      const before = state.get(id);
      if (row === null) state.delete(id);
      else state.set(id, row);
      if (txn.end <= b || (before === undefined && row === null)) continue;
      const op: Op = before === undefined ? 'insert' : row === null ? 'delete' : 'update';
      const list = versions.get(id) ?? [];
      list.push({ point: points.length - 1, op, row });
      versions.set(id, list);
    }
  }
  if (!baselineTaken) takeBaseline();
  return { table, points, versions, beforeTracking };
}

/** The row of `id` at point p: its latest version at or before p. */
function rowAt(model: TableModel, id: number, p: number): string | null {
  let row: string | null = null;
  for (const v of model.versions.get(id) ?? []) {
    if (v.point > p) break;
    row = v.row;
  }
  return row;
}

/** The point a version valid from `from` belongs to: 0 for B itself, else k with end(k-1) < from <= end(k); -1 if none. */
function pointOf(model: TableModel, from: bigint): number {
  const points = model.points;
  if (from === points[0]!.value) return 0;
  let lo = 1;
  let hi = points.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (points[mid]!.value >= from) hi = mid;
    else lo = mid + 1;
  }
  return lo < points.length && points[lo]!.value >= from && points[lo - 1]!.value < from ? lo : -1;
}

// ---------------------------------------------------------------------------

async function waitFor(check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`condition not met within ${timeoutMs} ms`);
}

async function readTable(client: pg.Client, table: Table): Promise<Map<number, string>> {
  const { rows } = await client.query<{ id: number; row: string }>(`SELECT id, to_jsonb(t)::text AS "row" FROM ${table} t`);
  return new Map(rows.map((r) => [r.id, r.row]));
}

describe.each(['pgoutput', 'wal2json'] as const)('the agent on %s under 8 concurrent writers', (plugin) => {
  const replay = `agent concurrency (${plugin}): workload seed ${SEED}; replay the writers' choices with PGTIMEWARP_SEED=${SEED}`;
  const reportSeed = (): void => onTestFailed(() => console.error(replay));
  let timewarp: Timewarp | undefined;
  const events: AgentEvent[] = [];
  const stop = new AbortController();
  let running: Promise<void> | undefined;
  let agentError: unknown;
  const models = new Map<Table, TableModel>();

  afterAll(async () => {
    stop.abort();
    await running?.catch(() => undefined);
    await timewarp?.source.end();
  });

  it('streams the workload while items_late is tracked mid-way', { timeout: 120_000 }, async () => {
    reportSeed();
    const started = Date.now();
    timewarp = await setupTimewarp(cluster(), {
      sourceDb: `conc_src_${plugin}`, storeDb: `conc_store_${plugin}`, nodeId: `conc_${plugin}`,
    });
    const { source } = timewarp;
    const initial = new Map<Table, Map<number, string>>();
    for (const table of TABLES) {
      await source.query(`CREATE TABLE ${table} (id int PRIMARY KEY, v bigint NOT NULL, n numeric, note text, big text)`);
      await source.query(`ALTER TABLE ${table} ALTER big SET STORAGE EXTERNAL`);
      await source.query(
        `INSERT INTO ${table} SELECT g, g, g * 1.5, 'initial ' || g, CASE WHEN g % 5 = 1 THEN repeat(md5(g::text), 80) END
           FROM generate_series(1, ${KEYS}, 2) g`,
      );
      initial.set(table, await readTable(source, table));
    }

    // the agent first: its slot must exist before pgtimewarp_track
    const slot = `conc_${plugin}`;
    running = runAgent({
      sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId,
      slot, plugin, signal: stop.signal, log: (e) => events.push(e),
      backoff: { initialMs: 100, maxMs: 1000 }, heartbeatIntervalMs: 200,
    });
    running.catch((err: unknown) => { agentError = err; });
    await waitFor(async () => (await source.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $1`, [slot])).rowCount === 1);
    // the model's commit order (see the top of the file), before anything it must see
    const check = `check_${plugin}`;
    await source.query(`SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, [check]);
    let decoded: DecodedTransaction[];
    const trackLsn = new Map<Table, string>();
    const work: Workload = { commits: [], ended: 0, rolledBack: 0, savepointsRolledBack: 0, uniqueViolations: 0, deadlocks: 0, gaveUp: 0 };
    let trackDeadlocks = 0;
    let workloadMs: number;
    try {
      const tracked = await source.query<{ b: string }>(`SELECT pgtimewarp_track('items')::text AS b`);
      trackLsn.set('items', tracked.rows[0]!.b);

      const writers = await Promise.all(Array.from({ length: WRITERS }, () => cluster().connect(`conc_src_${plugin}`)));
      const tracker = await cluster().connect(`conc_src_${plugin}`);
      const workloadStarted = Date.now();
      try {
        const allDone = Promise.all(writers.map((client, i) => runWriter(client, i, work)));
        const tracking = (async () => {
          while (work.ended < TRACK_LATE_AFTER) {
            await Promise.race([new Promise((resolve) => setTimeout(resolve, 2)), allDone]);
            if (work.ended === WRITERS * TRANSACTIONS_PER_WRITER) throw new Error('the writers finished before items_late was tracked');
          }
          for (;;) {
            try {
              const { rows } = await tracker.query<{ b: string }>(`SELECT pgtimewarp_track('items_late')::text AS b`);
              trackLsn.set('items_late', rows[0]!.b);
              return;
            } catch (err) {
              // its lock queues writers that hold row locks others wait for: a deadlock may pick track
              if (errorCode(err) !== '40P01') throw err;
              trackDeadlocks++;
            }
          }
        })();
        await Promise.all([allDone, tracking]);
      } finally {
        await Promise.all([...writers, tracker].map((c) => c.end()));
      }
      workloadMs = Date.now() - workloadStarted;
      decoded = await decodeSlot(source, check);
    } finally {
      await source.query('SELECT pg_drop_replication_slot($1)', [check]);
    }

    // Commit order is LSN order, and the model joins the decoded stream exactly.
    const ends = decoded.map((t) => t.end);
    expect(ends, 'decoded commits in LSN order').toEqual([...ends].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0)));
    const byXid = new Map<string, WriterCommit>();
    for (const c of work.commits) {
      if (c.xid === null) {
        expect([...c.writes.values()].every((m) => m.size === 0), `writer ${c.writer}: wrote rows without an xid`).toBe(true);
        continue;
      }
      expect(byXid.has(c.xid), `xid ${c.xid} committed twice`).toBe(false);
      byXid.set(c.xid, c);
    }
    const decodedXids = new Set(decoded.map((t) => t.xid));
    // A transaction with nothing to decode (it wrote only in a savepoint rolled back) never reaches the plugin.
    const changing = [...byXid.values()].filter((c) => [...c.writes.values()].some((m) => m.size > 0));
    expect(changing.filter((c) => !decodedXids.has(c.xid!)).map((c) => c.xid),
      'committed writer transactions that wrote rows, missing from the decoded stream').toEqual([]);
    const modelProblems: string[] = [];
    for (const txn of decoded) {
      const recorded = byXid.get(txn.xid);
      for (const table of TABLES) {
        const got = [...(txn.keys.get(table) ?? [])].sort((x, y) => x - y);
        const want = [...(recorded?.writes.get(table)?.keys() ?? [])].sort((x, y) => x - y);
        if (JSON.stringify(got) !== JSON.stringify(want)) {
          modelProblems.push(`xid ${txn.xid} ${table}: decoded keys ${JSON.stringify(got)}, recorded ${JSON.stringify(want)}`);
        }
      }
    }
    expect(modelProblems.slice(0, 10), 'MODEL: the keys each transaction wrote, decoded vs recorded').toEqual([]);

    // items_late: track's own transaction commits after B, and no writer commits in between
    const b = lsnFromText(trackLsn.get('items_late')!);
    const trackTxns = decoded.filter((t) => t.tracks.includes('items_late'));
    expect(trackTxns, 'one decoded transaction tracks items_late').toHaveLength(1);
    const trackEnd = trackTxns[0]!.end;
    expect(trackEnd > b, 'track commits after the LSN it returned').toBe(true);
    expect(decoded.filter((t) => t.end > b && t.end < trackEnd && t.keys.has('items_late')).map((t) => t.xid),
      'transactions changing items_late that commit between B and track').toEqual([]);
    const lateBefore = decoded.filter((t) => t.end <= b && t.keys.has('items_late')).length;
    const lateAfter = decoded.filter((t) => t.end > b && t.keys.has('items_late')).length;
    expect(lateBefore, 'commits changing items_late before B').toBeGreaterThan(50);
    expect(lateAfter, 'commits changing items_late after B').toBeGreaterThan(50);

    for (const table of TABLES) {
      models.set(table, tableModel(table, trackLsn.get(table)!, initial.get(table)!, decoded, byXid));
    }

    // everything decoded is stored: the agent's checkpoint has passed the last commit
    const last = decoded[decoded.length - 1]!;
    const store = await cluster().connect(`conc_store_${plugin}`);
    try {
      await waitFor(async () => {
        if (agentError !== undefined) throw new Error(`the agent stopped: ${String(agentError)}; ${replay}`);
        const trouble = events.filter((e) => e.level !== 'info');
        if (trouble.length > 0) throw new Error(`the agent ${trouble[0]!.event}: ${trouble[0]!.message}; ${replay}`);
        const { rows } = await store.query<{ done: boolean }>(
          `SELECT confirmed_lsn >= $2::pg_lsn AS done FROM pgtimewarp_store.wal_checkpoints WHERE node_id = $1`,
          [timewarp!.nodeId, last.endText],
        );
        return rows[0]?.done === true;
      });
    } finally {
      await store.end();
    }
    const storedMs = Date.now() - started;
    // history is complete: stop the agent, so the comparisons have the machine to themselves
    stop.abort();
    await running;
    expect(events.filter((e) => e.level !== 'info'), replay).toEqual([]);
    expect(events.some((e) => e.event === 'tracking'), 'the agent saw items_late tracked').toBe(true);

    const committedChanging = work.commits.filter((c) => [...c.writes.values()].some((m) => m.size > 0)).length;
    console.log(
      `agent concurrency (${plugin}, seed ${SEED}): ${work.commits.length} commits (${committedChanging} changing rows), ` +
        `${work.rolledBack} rollbacks, ${work.savepointsRolledBack} savepoints rolled back, ` +
        `${work.uniqueViolations} unique violations, ${work.deadlocks} deadlocks, ${work.gaveUp} given up, ` +
        `${trackDeadlocks} track deadlocks; items_late: ${lateBefore} commits before B, ${lateAfter} after; ` +
        `workload ${workloadMs} ms, all stored after ${storedMs} ms`,
    );
    expect(work.rolledBack).toBeGreaterThan(0);
    expect(work.uniqueViolations).toBeGreaterThan(0);
  });

  it.for(TABLES)('answers every key as the model has it, in commit order: %s', { timeout: 120_000 }, async (table, ctx) => {
    const model = models.get(table);
    if (model === undefined || timewarp === undefined) return ctx.skip(); // the workload failed
    reportSeed();
    const started = Date.now();
    const { source } = timewarp;
    const r = new Random(SEED ^ 0x5eed);
    const commits = model.points.length - 1;
    const sampled = new Set<number>([0]);
    while (sampled.size < Math.min(SAMPLED_COMMITS, commits) + 1) sampled.add(r.int(1, commits));
    for (const id of model.versions.keys()) expect(id >= 1 && id <= KEYS, `key ${id} in the key space`).toBe(true);

    const failures: string[] = [];
    let compared = 0;
    const compareKey = async (client: pg.Client, id: number): Promise<void> => {
      // the sample, and around every version: where it appears and just before
      const at = new Set(sampled);
      for (const v of model.versions.get(id) ?? []) {
        at.add(v.point);
        if (v.point > 0) at.add(v.point - 1);
      }
      const points = [...at].sort((x, y) => x - y);
      const texts: string[] = [];
      const want = points.map((p) => {
        const row = rowAt(model, id, p);
        if (row === null) return null;
        let i = texts.indexOf(row);
        if (i < 0) i = texts.push(row) - 1;
        return i + 1;
      });
      const res = await client.query<{ n: string; bad: Array<{ i: number; got: string | null; want: string | null }> | null }>(
        `SELECT count(*) AS n,
                json_agg(json_build_object('i', x.i, 'got', a.got, 'want', ($4::text[])[x.w]) ORDER BY x.i)
                  FILTER (WHERE a.got IS DISTINCT FROM ($4::text[])[x.w]) AS bad
           FROM unnest($2::pg_lsn[], $3::int[]) WITH ORDINALITY AS x(lsn, w, i)
          CROSS JOIN LATERAL (SELECT pgtimewarp_asof_pk_lsn($5::regclass, $1::jsonb, x.lsn)::text AS got) a`,
        [JSON.stringify({ id }), points.map((p) => model.points[p]!.lsn), want, texts, table],
      );
      compared += Number(res.rows[0]!.n);
      for (const bad of res.rows[0]!.bad ?? []) {
        const p = points[bad.i - 1]!;
        const point = model.points[p]!;
        const versions = (model.versions.get(id) ?? []).filter((v) => Math.abs(v.point - p) <= 5).map((v) => `${v.op}@${v.point}`).join(' ');
        const early = p + 1 < model.points.length && bad.got === rowAt(model, id, p + 1) ? ' (the row as of the NEXT commit)' : '';
        failures.push(`${table} id ${id} at ${point.lsn} (point ${p}, ${point.label}; model versions near it ${versions || 'none'}): ` +
          `got ${bad.got?.slice(0, 120) ?? 'NULL'}${early}, want ${bad.want?.slice(0, 120) ?? 'NULL'}`);
      }
    };
    // two sessions: each lookup waits on the store, the other keeps the second core busy
    const second = await cluster().connect(`conc_src_${plugin}`);
    try {
      let next = 1;
      await Promise.all([source, second].map(async (client) => {
        while (next <= KEYS) await compareKey(client, next++);
      }));
    } finally {
      await second.end();
    }

    // no history before tracking began
    if (model.beforeTracking !== null) {
      await expect(source.query(`SELECT pgtimewarp_asof_pk_lsn($1::regclass, '{"id": 1}', $2)`, [table, model.beforeTracking]))
        .rejects.toThrow(new RegExp(`no history of table (public\\.)?${table} before LSN`));
    }

    console.log(`agent concurrency (${plugin}, seed ${SEED}) ${table}: ${compared} as-of lookups at ${sampled.size} sampled ` +
      `and every version's points of ${commits} commits, in ${Date.now() - started} ms`);
    expect(compared).toBeGreaterThan(KEYS * Math.min(SAMPLED_COMMITS, commits));
    expect(failures.slice(0, 12), `${failures.length} mismatches; ${replay}`).toEqual([]);
  });

  it.for(TABLES)('stores one version per committed change of each key, none lost, none doubled: %s', { timeout: 60_000 }, async (table, ctx) => {
    const model = models.get(table);
    if (model === undefined || timewarp === undefined) return ctx.skip(); // the workload failed
    reportSeed();
    const store = await cluster().connect(`conc_store_${plugin}`);
    let rows: Array<{ id: string; from_lsn: string; to_lsn: string | null; op: string }>;
    try {
      rows = (await store.query<{ id: string; from_lsn: string; to_lsn: string | null; op: string }>(
        `SELECT pk[1] AS id, valid_from_lsn::text AS from_lsn, valid_to_lsn::text AS to_lsn, op
           FROM pgtimewarp_store.row_history
          WHERE node_id = $1 AND schema_name = 'public' AND table_name = $2
          ORDER BY pk[1]::int, valid_from_lsn`,
        [timewarp.nodeId, table],
      )).rows;
    } finally {
      await store.end();
    }
    const got = new Map<number, typeof rows>();
    for (const row of rows) {
      const list = got.get(Number(row.id)) ?? [];
      list.push(row);
      got.set(Number(row.id), list);
    }
    const problems: string[] = [];
    let expected = 0;
    for (const id of new Set([...got.keys(), ...model.versions.keys()])) {
      const want = (model.versions.get(id) ?? []).map((v) => `${v.op}@${v.point}`);
      const have = got.get(id) ?? [];
      const haveText = have.map((v) => `${v.op}@${pointOf(model, lsnFromText(v.from_lsn))}`);
      expected += want.length;
      if (JSON.stringify(haveText) !== JSON.stringify(want)) {
        let i = 0;
        while (i < want.length && haveText[i] === want[i]) i++;
        const around = (list: string[]): string => `${i > 2 ? '… ' : ''}${list.slice(Math.max(0, i - 2), i + 3).join(' ') || 'nothing'}`;
        problems.push(`${table} id ${id}: ${have.length} stored versions, model ${want.length}; from version ${i} on ` +
          `stored ${around(haveText)}, model ${around(want)} (op@point; point -1: no commit's record holds valid_from_lsn)`);
      }
      have.forEach((v, i) => {
        const next = have[i + 1]?.from_lsn ?? null;
        if (v.to_lsn !== next) problems.push(`${table} id ${id}: version from ${v.from_lsn} valid to ${v.to_lsn}, next from ${next}`);
      });
    }
    console.log(`agent concurrency (${plugin}, seed ${SEED}) ${table}: ${rows.length} stored versions of ${got.size} keys, model ${expected}`);
    expect(problems.slice(0, 12), `${problems.length} problems; ${replay}`).toEqual([]);
    expect(rows.length).toBe(expected);
  });
});
