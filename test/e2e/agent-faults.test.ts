// Fault tests of the agent (DESIGN.md, "Tests": fault tests; hard case 5,
// exactly-once), on each plugin: the real `pgtimewarp agent` command (from
// source, through tsx) runs as a child process while a seeded workload writes
// a tracked table, and
//   1. it is killed with SIGKILL 24 times (20 on wal2json) at random moments (at random
//      offsets, right after it logged "applied", right after "streaming",
//      while it holds a store transaction open) and restarted at once;
//   2. the store's cluster goes down for seconds, twice (clean and crash
//      shutdown), while the workload goes on;
//   3. the source's cluster restarts three times (clean, crash, clean)
//      between bursts of the workload.
// Afterwards history must equal the model exactly: nothing lost, nothing
// doubled, and the slot never confirmed past what the store holds.
//
// The store lives on a cluster of its own, so that each side can fail alone.
//
// The model: the writer is the only one writing the source, and every
// statement returns what it did (RETURNING to_jsonb(row)::text, or the key
// for a delete), so after each commit the test knows every key the
// transaction changed and its new contents, and pg_current_wal_insert_lsn()
// right after the commit bounds the commit's LSN from above (the previous
// recorded LSN bounds it from below).  The workload: single-key and
// multi-statement transactions (inserts, updates, deletes, key changes,
// values stored out of line left untouched or replaced), multi-row and
// whole-table updates, rollbacks, a rare TRUNCATE.  Checked afterwards:
//   - each key's versions in the store, one for one against the model's
//     committed changes of that key: same count, same op, each version
//     starting inside its commit's LSN bounds, the same row data, each valid
//     until the next begins; no two consecutive equal 'update' versions the
//     model does not have (every update bumps n; only a key moved away and
//     back in one transaction comes back unchanged);
//   - every version's commit has its lsn_time_map entry;
//   - pgtimewarp_asof_pk_lsn, compared as text in SQL (so JSON number
//     parsing cannot hide a difference): a sample of the changes at their
//     commit and just before it, and every key at a sample of recorded LSNs
//     (each lookup costs a store round trip: not all of them);
//   - confirmed_flush_lsn of the slot <= the store's checkpoint (after
//     every kill, and at the end);
//   - the agent never stopped on its own, logged retries for outages and
//     restarts, no errors, and stops with exit code 0 on SIGTERM.
//
// Replay a failure with PGTIMEWARP_SEED=<seed printed on failure> (the
// workload replays exactly; the moments of the faults depend on timing).

import pg from 'pg';
import { afterAll, afterEach, describe, expect, it, onTestFailed } from 'vitest';

import { lsnFromText } from '../../agent/decode.js';
import { migrateStore } from '../../installer/store.js';
import type { Cluster } from '../support/cluster.js';
import { Random, testSeed } from '../support/random.js';
import { sleep, waitFor } from '../support/wait.js';
import { useCluster } from '../support/use-cluster.js';
import { AgentChild } from '../support/agent-child.js';


// frequent keepalives, so that heartbeats happen and a dead peer is noticed within a test
const sourceCluster = useCluster({ settings: { wal_sender_timeout: '2s' } });
const storeCluster = useCluster();

const BASE_SEED = testSeed();

/** Keys the workload uses: 1..KEYSPACE; the sentinel is outside. */
const KEYSPACE = 300;
const SENTINEL = 1_000_000;
/** Application name of the agent's store connections, to find them in pg_stat_activity. */
const AGENT_APP = 'pgtimewarp_agent_under_test';

// ---------------------------------------------------------------------------
// Setup: source database on one cluster, store database on the other

interface Setup {
  name: string;
  sourceDb: string;
  storeDb: string;
  nodeId: string;
  slot: string;
  /** The slot's confirmed_flush_lsn when the agent created it: its start, confirmed by nobody. */
  slotStart?: string;
  sourceUrl: string;
  /** With application_name AGENT_APP: the agent's URL. */
  storeUrl: string;
}

/**
 * pgtimewarp as the installer sets it up, but with the store on another
 * cluster: source database with the extension, configured, its foreign
 * server pointing at the store database, migrated.
 */
async function setupSplit(name: string): Promise<Setup> {
  const src = sourceCluster();
  const sto = storeCluster();
  const sourceDb = `src_${name}`;
  const storeDb = `store_${name}`;
  await src.psql(`CREATE DATABASE ${sourceDb}`);
  await sto.psql(`CREATE DATABASE ${storeDb}`);
  await migrateStore(sto.url(storeDb));
  await withClient(src, sourceDb, async (c) => {
    await c.query('CREATE EXTENSION pgtimewarp CASCADE');
    await c.query(`ALTER SERVER pgtimewarp_store OPTIONS (ADD host '${sto.host}', ADD port '${sto.port}', ADD dbname '${storeDb}')`);
    await c.query('CREATE USER MAPPING FOR CURRENT_USER SERVER pgtimewarp_store');
    await c.query('SELECT pgtimewarp_configure($1)', [name]);
    await c.query(`CREATE TABLE items (id int PRIMARY KEY, n int NOT NULL, note text, big text)`);
    // out of line and uncompressed: UPDATEs that leave it alone do not send it (unchanged TOAST)
    await c.query(`ALTER TABLE items ALTER big SET STORAGE EXTERNAL`);
  });
  return {
    name, sourceDb, storeDb, nodeId: name, slot: `slot_${name}`,
    sourceUrl: src.url(sourceDb),
    storeUrl: `${sto.url(storeDb)}?application_name=${AGENT_APP}`,
  };
}

async function withClient<T>(cluster: Cluster, db: string, work: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: cluster.url(db) });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------
// The workload and its model

/** One committed change of one key: the key's contents after the commit. */
interface Change {
  id: number;
  /** to_jsonb(row)::text after the commit, null when gone. */
  value: string | null;
  op: 'baseline' | 'insert' | 'update' | 'delete' | 'truncate';
  /** pg_current_wal_insert_lsn() after the previous commit and after this one: lo < commit LSN <= hi. */
  lo: string;
  hi: string;
}

interface Statement {
  sql: string;
  params: unknown[];
  /** What it does to the model, given its result rows. */
  kind: 'upsert' | 'delete' | 'move' | 'truncate';
  /** For 'move': the key moved away. */
  from?: number;
}

const RETURNING = `RETURNING id, to_jsonb(items)::text AS j`;

class Workload {
  /** Committed contents: id -> to_jsonb text. */
  readonly state = new Map<number, string>();
  readonly changes: Change[] = [];
  /** pg_current_wal_insert_lsn() after each commit, in order. */
  readonly recorded: string[] = [];
  committed = 0;
  rolledBack = 0;
  private lastLsn = '0/0';

  constructor(private readonly rand: Random) {}

  /** Fill the table before tracking; the rows become the baseline. */
  async seed(source: pg.Client, rows: number): Promise<void> {
    const ids = Array.from({ length: rows }, (_, i) => i + 1);
    const res = await source.query<{ id: number; j: string }>(
      `INSERT INTO items SELECT g, 0, 'seed ' || g, CASE WHEN g % 3 = 0 THEN repeat(md5(g::text), 70) END
         FROM unnest($1::int[]) g ${RETURNING}`,
      [ids],
    );
    for (const r of res.rows) this.state.set(r.id, r.j);
  }

  /** After pgtimewarp_track: the baseline versions. */
  async tracked(source: pg.Client): Promise<void> {
    const hi = await currentLsn(source);
    for (const [id, value] of this.state) this.changes.push({ id, value, op: 'baseline', lo: '0/0', hi });
    this.recorded.push(hi);
    this.lastLsn = hi;
  }

  /** Run `count` random transactions. */
  async run(source: pg.Client, count: number, between?: () => Promise<void>): Promise<void> {
    for (let i = 0; i < count; i++) {
      await this.transaction(source, this.randomTransaction());
      if (between !== undefined) await between();
    }
  }

  async sentinel(source: pg.Client): Promise<void> {
    await this.transaction(source, {
      statements: [{ sql: `INSERT INTO items VALUES ($1, 0, 'sentinel', NULL) ${RETURNING}`, params: [SENTINEL], kind: 'upsert' }],
      rollback: false,
    });
  }

  /** Run one transaction and fold what it did into the model. */
  async transaction(source: pg.Client, txn: { statements: Array<(work: Map<number, string>) => Statement | null> | Statement[]; rollback: boolean }): Promise<void> {
    const work = new Map(this.state);
    const touched = new Set<number>();
    let truncated = false;
    await source.query('BEGIN');
    try {
      for (const make of txn.statements) {
        const st = typeof make === 'function' ? make(work) : make;
        if (st === null) continue;
        const res = await source.query<{ id: number; j?: string }>(st.sql, st.params);
        switch (st.kind) {
          case 'upsert':
            for (const r of res.rows) { work.set(r.id, r.j!); touched.add(r.id); }
            break;
          case 'delete':
            for (const r of res.rows) { work.delete(r.id); touched.add(r.id); }
            break;
          case 'move':
            if (res.rows.length > 0) { work.delete(st.from!); touched.add(st.from!); }
            for (const r of res.rows) { work.set(r.id, r.j!); touched.add(r.id); }
            break;
          case 'truncate':
            truncated = true;
            for (const id of work.keys()) touched.add(id);
            work.clear();
            break;
        }
      }
    } catch (err) {
      await source.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
    if (txn.rollback) {
      await source.query('ROLLBACK');
      this.rolledBack++;
      return;
    }
    await source.query('COMMIT');
    const hi = await currentLsn(source);
    const lo = this.lastLsn;
    for (const id of touched) {
      const before = this.state.get(id) ?? null;
      const after = work.get(id) ?? null;
      if (before === null && after === null) continue; // born and gone inside: no version
      const op = before === null ? 'insert' : after !== null ? 'update' : truncated ? 'truncate' : 'delete';
      this.changes.push({ id, value: after, op, lo, hi });
    }
    this.state.clear();
    for (const [id, value] of work) this.state.set(id, value);
    this.recorded.push(hi);
    this.lastLsn = hi;
    this.committed++;
  }

  /** A random transaction, its statements chosen against the contents at their turn. */
  private randomTransaction(): { statements: Array<(work: Map<number, string>) => Statement | null>; rollback: boolean } {
    const r = this.rand;
    const roll = r.next();
    if (roll < 0.004) return { statements: [() => ({ sql: 'TRUNCATE items', params: [], kind: 'truncate' })], rollback: false };
    if (roll < 0.03) return { statements: [(w) => this.bulk(w)], rollback: false };
    if (roll < 0.045) {
      // everything at once: a big transaction, so that kills land while it is applied
      return { statements: [() => ({ sql: `UPDATE items SET n = n + 1 ${RETURNING}`, params: [], kind: 'upsert' })], rollback: false };
    }
    const size = roll < 0.55 ? 1 : 2 + r.int(0, 4);
    const statements = Array.from({ length: size }, () => (w: Map<number, string>) => this.small(w));
    return { statements, rollback: r.chance(0.05) };
  }

  private presentKey(w: Map<number, string>): number | null {
    if (w.size === 0) return null;
    // Map order is insertion order; a random index is fine
    const keys = [...w.keys()].filter((k) => k !== SENTINEL);
    return keys.length === 0 ? null : this.rand.pick(keys);
  }

  private absentKey(w: Map<number, string>): number | null {
    for (let tries = 0; tries < 20; tries++) {
      const k = 1 + this.rand.int(0, KEYSPACE - 1);
      if (!w.has(k)) return k;
    }
    return null;
  }

  private small(w: Map<number, string>): Statement | null {
    const r = this.rand;
    const roll = r.next();
    if (roll < 0.3 || w.size < 20) {
      const id = this.absentKey(w);
      if (id === null) return null;
      const big = r.chance(0.3) ? bigValue(r) : null;
      return { sql: `INSERT INTO items VALUES ($1, 0, $2, $3) ${RETURNING}`, params: [id, `new ${r.int(0, 999_999)}`, big], kind: 'upsert' };
    }
    const id = this.presentKey(w);
    if (id === null) return null;
    if (roll < 0.7) {
      return { sql: `UPDATE items SET n = n + 1, note = $2 WHERE id = $1 ${RETURNING}`, params: [id, `note ${r.int(0, 999_999)}`], kind: 'upsert' };
    }
    if (roll < 0.78) {
      return { sql: `UPDATE items SET n = n + 1, big = $2 WHERE id = $1 ${RETURNING}`, params: [id, bigValue(r)], kind: 'upsert' };
    }
    if (roll < 0.9) return { sql: `DELETE FROM items WHERE id = $1 RETURNING id`, params: [id], kind: 'delete' };
    const to = this.absentKey(w);
    if (to === null) return null;
    // a key change leaving the rest (and the TOASTed value) untouched
    return { sql: `UPDATE items SET id = $2 WHERE id = $1 ${RETURNING}`, params: [id, to], kind: 'move', from: id };
  }

  private bulk(w: Map<number, string>): Statement {
    const r = this.rand;
    const roll = r.next();
    if (roll < 0.4) {
      const m = 2 + r.int(0, 7);
      return { sql: `UPDATE items SET n = n + 1, note = 'bulk' WHERE id % $1 = $2 AND id <> $3 ${RETURNING}`, params: [m, r.int(0, m - 1), SENTINEL], kind: 'upsert' };
    }
    if (roll < 0.7) {
      const ids = new Set<number>();
      for (let i = 0; i < 40; i++) {
        const k = 1 + r.int(0, KEYSPACE - 1);
        if (!w.has(k)) ids.add(k);
      }
      return { sql: `INSERT INTO items SELECT g, 0, 'bulk ' || g, NULL FROM unnest($1::int[]) g ${RETURNING}`, params: [[...ids]], kind: 'upsert' };
    }
    const from = 1 + r.int(0, KEYSPACE - 1);
    return { sql: `DELETE FROM items WHERE id BETWEEN $1 AND $2 RETURNING id`, params: [from, from + 5 + r.int(0, 29)], kind: 'delete' };
  }
}

/** ~2.2 kB: out of line with STORAGE EXTERNAL. */
function bigValue(r: Random): string {
  return `${r.int(0, 999_999_999)}:`.padEnd(2200, String.fromCharCode(97 + r.int(0, 25)));
}

async function currentLsn(c: pg.Client): Promise<string> {
  return (await c.query<{ lsn: string }>(`SELECT pg_current_wal_insert_lsn()::text AS lsn`)).rows[0]!.lsn;
}

// ---------------------------------------------------------------------------
// Checks

/** The slot's confirmed position, then the store's checkpoint (in that order: both only grow). */
async function confirmedVsCheckpoint(setup: Setup): Promise<{ confirmed: string | null; checkpoint: string | null }> {
  const confirmed = await withClient(sourceCluster(), setup.sourceDb, async (c) =>
    (await c.query<{ lsn: string | null }>(
      `SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1`, [setup.slot],
    )).rows[0]?.lsn ?? null);
  const checkpoint = await withClient(storeCluster(), setup.storeDb, async (c) =>
    (await c.query<{ lsn: string }>(
      `SELECT confirmed_lsn::text AS lsn FROM pgtimewarp_store.wal_checkpoints WHERE node_id = $1`, [setup.nodeId],
    )).rows[0]?.lsn ?? null);
  return { confirmed, checkpoint };
}

function expectConfirmedWithinCheckpoint(when: string, p: { confirmed: string | null; checkpoint: string | null }, setup: Setup): void {
  if (p.confirmed === null) return;
  if (p.checkpoint === null) {
    // killed before its first checkpoint: the slot is where it was created
    expect(p.confirmed, `${when}: slot confirmed ${p.confirmed} but the store has no checkpoint`).toBe(setup.slotStart);
    return;
  }
  expect(lsnFromText(p.confirmed) <= lsnFromText(p.checkpoint!),
    `${when}: slot confirmed ${p.confirmed}, store checkpoint ${p.checkpoint}`).toBe(true);
}

async function waitForSentinel(setup: Setup, agent: AgentChild, timeoutMs = 90_000): Promise<void> {
  await waitFor(`the sentinel in the store\n${agent.describe()}`, () =>
    withClient(sourceCluster(), setup.sourceDb, async (c) =>
      (await c.query<{ ok: boolean }>(
        `SELECT pgtimewarp_asof_pk_lsn('items', $1, 'FFFFFFFF/FFFFFFFF') IS NOT NULL AS ok`, [JSON.stringify({ id: SENTINEL })],
      )).rows[0]?.ok === true),
  timeoutMs);
}

/** A to_jsonb(row) text as the store keeps row data: column -> text output (exact for items' int and text columns). */
function canonicalRowData(value: string): string {
  const row = JSON.parse(value) as Record<string, unknown>;
  const out: Record<string, string | null> = {};
  for (const name of Object.keys(row).sort()) {
    const v = row[name];
    out[name] = v === null ? null : typeof v === 'string' ? v : String(v);
  }
  return JSON.stringify(out);
}

function sortedJson(text: string | null): string | null {
  if (text === null) return null;
  const row = JSON.parse(text) as Record<string, unknown>;
  return JSON.stringify(Object.fromEntries(Object.keys(row).sort().map((k) => [k, row[k]])));
}

/** Everything listed in the file comment, against `model`. */
async function verifyHistory(setup: Setup, model: Workload, rand: Random): Promise<void> {
  // 1. the versions of every key, one for one against the model's changes
  const stored = await withClient(storeCluster(), setup.storeDb, async (c) => {
    const res = await c.query<{ id: string; from: string; to: string | null; op: string; data: string | null }>(
      `SELECT pk[1] AS id, valid_from_lsn::text AS from, valid_to_lsn::text AS to, op, row_data::text AS data
         FROM pgtimewarp_store.row_history
        WHERE node_id = $1 AND schema_name = 'public' AND table_name = 'items'
        ORDER BY pk[1]::int, valid_from_lsn`,
      [setup.nodeId],
    );
    const unmapped = await c.query<{ n: string }>(
      `SELECT count(DISTINCT v.valid_from_lsn)::text AS n FROM pgtimewarp_store.row_history v
        WHERE v.node_id = $1 AND v.op <> 'baseline'
          AND NOT EXISTS (SELECT 1 FROM pgtimewarp_store.lsn_time_map m WHERE m.node_id = v.node_id AND m.lsn = v.valid_from_lsn)`,
      [setup.nodeId],
    );
    expect(unmapped.rows[0]!.n, 'commits with versions but no lsn_time_map entry').toBe('0');
    return res.rows;
  });
  const byKey = new Map<number, typeof stored>();
  for (const v of stored) {
    const id = Number(v.id);
    if (!byKey.has(id)) byKey.set(id, []);
    byKey.get(id)!.push(v);
  }
  const modelByKey = new Map<number, Change[]>();
  for (const ch of model.changes) {
    if (!modelByKey.has(ch.id)) modelByKey.set(ch.id, []);
    modelByKey.get(ch.id)!.push(ch);
  }
  const problems: string[] = [];
  for (const id of new Set([...byKey.keys(), ...modelByKey.keys()])) {
    const got = byKey.get(id) ?? [];
    const want = modelByKey.get(id) ?? [];
    // both lists around the first version where they part
    const show = (): string => {
      let at = 0;
      while (at < got.length && at < want.length && got[at]!.op === want[at]!.op &&
        lsnFromText(got[at]!.from) > lsnFromText(want[at]!.lo) && lsnFromText(got[at]!.from) <= lsnFromText(want[at]!.hi)) at++;
      const from = Math.max(0, at - 2);
      const cut = <T>(xs: T[]): T[] => xs.slice(from, at + 4);
      const more = from > 0 ? `(${from} equal before) ` : '';
      return `\n  store: ${more}${cut(got).map((v) => `${v.op}@${v.from}`).join(' ')}` +
        `\n  model: ${more}${cut(want).map((c) => `${c.op}@(${c.lo},${c.hi}]`).join(' ')}`;
    };
    if (got.length !== want.length) {
      problems.push(`key ${id}: ${got.length} version(s) stored, the model has ${want.length} committed change(s)${show()}`);
      continue;
    }
    for (let i = 0; i < got.length; i++) {
      const v = got[i]!;
      const c = want[i]!;
      const from = lsnFromText(v.from);
      const where = `key ${id}, version ${i + 1} of ${got.length}`;
      if (v.op !== c.op || from <= lsnFromText(c.lo) || from > lsnFromText(c.hi)) {
        problems.push(`${where}: stored ${v.op}@${v.from}, the model has ${c.op}@(${c.lo},${c.hi}]${show()}`);
        break;
      }
      const wantData = c.value === null ? null : canonicalRowData(c.value);
      if (sortedJson(v.data) !== wantData) {
        problems.push(`${where} (${v.op}@${v.from}): row_data\n  stored ${v.data}\n  model  ${wantData}`);
        break;
      }
      const next = got[i + 1];
      if ((next === undefined && v.to !== null) || (next !== undefined && v.to !== next.from)) {
        problems.push(`${where}: valid until ${v.to}, the next version begins at ${next?.from ?? '(none)'}${show()}`);
        break;
      }
      // (a key moved away and back in one transaction is an 'update' to the same data: the model has those)
      if (i > 0 && v.op === 'update' && v.data === got[i - 1]!.data && c.value !== want[i - 1]!.value) {
        problems.push(`${where}: an 'update' with the same row_data as the version before (doubled)${show()}`);
        break;
      }
    }
  }
  expect(problems.slice(0, 10).join('\n'), `${problems.length} key(s) whose versions differ from the model`).toBe('');

  // 2. as-of answers through the extension, compared as text: a sample of the
  //    changes at their commit and just before it, and every key at a sample
  //    of recorded LSNs (a store round trip each: not all of them)
  const probes: Array<{ id: number; lsn: string; want: string | null }> = [];
  const sortedChanges = [...model.changes].sort((a, b) => (lsnFromText(a.hi) < lsnFromText(b.hi) ? -1 : lsnFromText(a.hi) > lsnFromText(b.hi) ? 1 : 0));
  const previous = new Map<number, string | null>();
  const keep = Math.min(1, 1000 / sortedChanges.length);
  for (const c of sortedChanges) {
    const before = previous.get(c.id) ?? null;
    previous.set(c.id, c.value);
    if (!rand.chance(keep)) continue;
    probes.push({ id: c.id, lsn: c.hi, want: c.value });
    if (c.op !== 'baseline') probes.push({ id: c.id, lsn: c.lo, want: before });
  }
  const sampleEvery = Math.max(1, Math.floor(model.recorded.length / 6));
  const samples = model.recorded.filter((_, i) => i % sampleEvery === 0 || i === model.recorded.length - 1);
  const allKeys = [...new Set(model.changes.map((c) => c.id))];
  let ci = 0;
  const current = new Map<number, string | null>();
  for (const lsn of samples) {
    while (ci < sortedChanges.length && lsnFromText(sortedChanges[ci]!.hi) <= lsnFromText(lsn)) {
      current.set(sortedChanges[ci]!.id, sortedChanges[ci]!.value);
      ci++;
    }
    for (const id of allKeys) probes.push({ id, lsn, want: current.get(id) ?? null });
  }
  const mismatches: string[] = [];
  await withClient(sourceCluster(), setup.sourceDb, async (c) => {
    for (let i = 0; i < probes.length && mismatches.length < 10; i += 2000) {
      const chunk = probes.slice(i, i + 2000);
      const res = await c.query<{ id: number; lsn: string; want: string | null; got: string | null }>(
        `SELECT x.id, x.lsn::text AS lsn, x.want, g.got
           FROM unnest($1::int[], $2::pg_lsn[], $3::text[]) AS x(id, lsn, want)
           CROSS JOIN LATERAL (SELECT pgtimewarp_asof_pk_lsn('items', jsonb_build_object('id', x.id), x.lsn)::text AS got) g
          WHERE g.got IS DISTINCT FROM x.want
          LIMIT 10`,
        [chunk.map((p) => p.id), chunk.map((p) => p.lsn), chunk.map((p) => p.want)],
      );
      for (const m of res.rows) mismatches.push(`id ${m.id} at ${m.lsn}:\n  want ${m.want}\n  got  ${m.got}`);
    }
  });
  expect(mismatches.join('\n'), `as-of answers that differ from the model (of ${probes.length} compared)`).toBe('');
}

// ---------------------------------------------------------------------------

/** Start the agent, wait for its slot, track the table: the model's baseline. */
async function begin(setup: Setup, plugin: 'pgoutput' | 'wal2json', model: Workload): Promise<{ agent: AgentChild; source: pg.Client }> {
  const source = await sourceCluster().connect(setup.sourceDb);
  await model.seed(source, 150);
  const agent = new AgentChild({ sourceUrl: setup.sourceUrl, storeUrl: setup.storeUrl, nodeId: setup.nodeId, slot: setup.slot, plugin });
  agent.start();
  // the agent first, so that its slot (and publication) exist before tracking starts
  await waitFor(`slot ${setup.slot}\n${agent.describe()}`, async () => {
    const slot = await source.query<{ lsn: string }>(`SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1`, [setup.slot]);
    setup.slotStart = slot.rows[0]?.lsn;
    return setup.slotStart !== undefined;
  }, 30_000);
  await source.query(`SELECT pgtimewarp_track('items')`);
  await model.tracked(source);
  return { agent, source };
}

const agents: AgentChild[] = [];
afterEach(async () => {
  for (const a of agents.splice(0)) await a.kill('SIGKILL');
});
afterAll(async () => {
  for (const a of agents.splice(0)) await a.kill('SIGKILL');
});

describe.each(['pgoutput', 'wal2json'] as const)('agent faults on %s', (plugin) => {
  it('SIGKILL at random moments, restarted at once: history is exact', { timeout: 170_000 }, async () => {
    const seed = BASE_SEED + 1;
    onTestFailed(() => console.error(`agent faults (${plugin}, SIGKILL): replay with PGTIMEWARP_SEED=${BASE_SEED}`));
    const rand = new Random(seed);
    const setup = await setupSplit(`kill_${plugin}`);
    const model = new Workload(new Random(seed ^ 0x5eed));
    const { agent, source } = await begin(setup, plugin, model);
    agents.push(agent);

    const KILLS = plugin === 'pgoutput' ? 24 : 20; // at least 20 each; a few more on the default plugin
    const TXNS = 2000;
    let kills = 0;
    let killedInStoreTxn = 0;
    let writerDone = false;
    let writerError: unknown = null;
    let abandoned = false; // the test failed: the writer stops too
    const killModes: Record<string, number> = {};
    // each way of choosing the moment a quarter of the time, in a seeded order
    const modes = Array.from({ length: KILLS }, (_, i) => (['random', 'applied', 'storeTxn', 'streaming'] as const)[i % 4]!);
    for (let i = modes.length - 1; i > 0; i--) {
      const j = rand.int(0, i);
      [modes[i], modes[j]] = [modes[j]!, modes[i]!];
    }

    // the writer: paced by the kills, so that every kill lands in a stream of work
    const writer = (async () => {
      let written = 0;
      while (written < TXNS && !abandoned) {
        const allowed = kills >= KILLS ? TXNS : Math.floor(((kills + 1) * TXNS) / (KILLS + 1));
        if (written >= allowed) { await sleep(20); continue; }
        await model.run(source, 1);
        written++;
      }
      writerDone = written === TXNS;
    })().catch((err: unknown) => { writerError = err; });

    const store = await storeCluster().connect(setup.storeDb);
    const t0 = Date.now();
    let tKills = 0;
    let tCaughtUp = 0;
    try {
      while (kills < KILLS) {
        if (!agent.running) agent.start();
        const mode = modes[kills]!;
        killModes[mode] = (killModes[mode] ?? 0) + 1;
        if (mode === 'random') {
          await sleep(rand.int(0, 1499));
        } else if (mode === 'applied') {
          // stored, maybe not yet confirmed
          await agent.nextEvent((e) => e.event === 'applied', 5000);
          if (rand.chance(0.5)) await sleep(rand.int(0, 4));
        } else if (mode === 'streaming') {
          await agent.nextEvent((e) => e.event === 'streaming', 5000);
          await sleep(rand.int(0, 199));
        } else {
          // inside a store transaction: between BEGIN and COMMIT of a batch
          const deadline = Date.now() + 5000;
          while (Date.now() < deadline) {
            const res = await store.query(
              `SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND xact_start IS NOT NULL AND pid <> pg_backend_pid()`,
              [AGENT_APP],
            );
            if (res.rowCount! > 0) { killedInStoreTxn++; break; }
          }
        }
        await agent.kill('SIGKILL');
        kills++;
        expectConfirmedWithinCheckpoint(`after kill ${kills} (${mode})`, await confirmedVsCheckpoint(setup), setup);
        if (agent.unexpectedExits.length > 0 || writerError !== null) break;
      }
      tKills = Date.now() - t0;
      if (!agent.running) agent.start();
      await writer;
      if (writerError !== null) throw writerError;
      expect(writerDone).toBe(true);
      await model.sentinel(source);
      await waitForSentinel(setup, agent);
      tCaughtUp = Date.now() - t0;
    } finally {
      abandoned = true;
      await store.end();
    }

    console.log(`SIGKILL (${plugin}, seed ${BASE_SEED}): ${kills} kills ${JSON.stringify(killModes)}, ${killedInStoreTxn} inside a store transaction; ` +
      `${model.committed} commits, ${model.rolledBack} rollbacks, ${model.changes.length} key changes; ` +
      `${agent.events.filter((e) => e.event === 'retry').length} retries`);
    expect(agent.unexpectedExits, agent.describe()).toEqual([]);
    expect(kills).toBe(KILLS);
    expect(killedInStoreTxn, 'kills that hit an open store transaction').toBeGreaterThanOrEqual(1);
    expect(agent.events.filter((e) => e.level === 'error'), agent.describe()).toEqual([]);
    expect(agent.otherOutput, 'output that is not a JSON log line').toEqual([]);
    const tv = Date.now();
    await verifyHistory(setup, model, rand);
    console.log(`timings: kills ${tKills} ms, caught up ${tCaughtUp} ms, verified in ${Date.now() - tv} ms`);
    expectConfirmedWithinCheckpoint('at the end', await confirmedVsCheckpoint(setup), setup);
    expect(await agent.stopCleanly(), 'exit code after SIGTERM').toBe(0);
    expect(agent.events.at(-1)?.event).toBe('stopped');
  });

  it('the store goes down twice mid-workload: the agent retries, history is exact', { timeout: 120_000 }, async () => {
    const seed = BASE_SEED + 2;
    onTestFailed(() => console.error(`agent faults (${plugin}, store outage): replay with PGTIMEWARP_SEED=${BASE_SEED}`));
    const setup = await setupSplit(`outage_${plugin}`);
    const model = new Workload(new Random(seed));
    const { agent, source } = await begin(setup, plugin, model);
    agents.push(agent);
    const t0 = Date.now();

    const outages = [
      { mode: 'fast', downMs: 2500 },
      { mode: 'immediate', downMs: 2000 },
    ] as const;
    for (const [i, o] of outages.entries()) {
      // a burst of work, and the agent at it (so the outage cuts a live session, maybe a batch) ...
      const burst = model.run(source, 300);
      const applying = await agent.nextEvent((e) => e.event === 'applied', 30_000);
      expect(applying, `applying before outage ${i + 1}\n${agent.describe()}`).not.toBeNull();
      const before = agent.events.length;
      // ... and the writer goes on while the store is down
      await Promise.all([
        storeCluster().restart({ mode: o.mode, downMs: o.downMs }),
        burst.then(() => model.run(source, 300)),
      ]);
      expect(agent.events.slice(before).some((e) => e.event === 'retry'), `a retry for outage ${i + 1}\n${agent.describe()}`).toBe(true);
    }
    await model.run(source, 300);
    await model.sentinel(source);
    await waitForSentinel(setup, agent);
    const tCaughtUp = Date.now() - t0;

    const retries = agent.events.filter((e) => e.event === 'retry');
    console.log(`store outage (${plugin}, seed ${BASE_SEED}): ${model.committed} commits, ${model.changes.length} key changes, ` +
      `${retries.length} retries; caught up in ${tCaughtUp} ms`);
    expect(agent.unexpectedExits, agent.describe()).toEqual([]);
    expect(agent.generation, 'the agent was never restarted').toBe(1);
    expect(agent.events.filter((e) => e.level === 'error'), agent.describe()).toEqual([]);
    await verifyHistory(setup, model, new Random(seed + 100));
    expectConfirmedWithinCheckpoint('at the end', await confirmedVsCheckpoint(setup), setup);
    expect(await agent.stopCleanly(), 'exit code after SIGTERM').toBe(0);
  });

  it('the source restarts mid-workload, cleanly and by crash: history is exact', { timeout: 120_000 }, async () => {
    const seed = BASE_SEED + 3;
    onTestFailed(() => console.error(`agent faults (${plugin}, source restart): replay with PGTIMEWARP_SEED=${BASE_SEED}`));
    const setup = await setupSplit(`restart_${plugin}`);
    const model = new Workload(new Random(seed));
    const started = await begin(setup, plugin, model);
    const agent = started.agent;
    let source = started.source;
    agents.push(agent);
    const t0 = Date.now();

    const restarts = ['fast', 'immediate', 'fast'] as const;
    await model.run(source, 400);
    for (const mode of restarts) {
      // the agent streams again after the last restart (so each restart cuts a stream), and
      // right after a burst of commits it is most likely still behind: it loses its stream mid-work
      await waitFor(`slot ${setup.slot} active\n${agent.describe()}`, async () =>
        (await source.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active`, [setup.slot])).rowCount === 1, 60_000);
      await sourceCluster().restart({ mode }); // ends `source`
      source = await sourceCluster().connect(setup.sourceDb);
      await model.run(source, 400);
    }
    await model.sentinel(source);
    await waitForSentinel(setup, agent);
    const tCaughtUp = Date.now() - t0;

    const retries = agent.events.filter((e) => e.event === 'retry');
    console.log(`source restart (${plugin}, seed ${BASE_SEED}): ${model.committed} commits, ${model.changes.length} key changes, ` +
      `${retries.length} retries; caught up in ${tCaughtUp} ms`);
    expect(agent.unexpectedExits, agent.describe()).toEqual([]);
    expect(agent.generation, 'the agent was never restarted').toBe(1);
    expect(retries.length, 'retry events (one restart at least each)').toBeGreaterThanOrEqual(restarts.length);
    expect(agent.events.filter((e) => e.level === 'error'), agent.describe()).toEqual([]);
    const recorded = await withClient(storeCluster(), setup.storeDb, async (c) =>
      (await c.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pgtimewarp_store.health_events WHERE node_id = $1 AND kind = 'agent_retry'`, [setup.nodeId],
      )).rows[0]!.n);
    expect(recorded, 'agent_retry health events').toBeGreaterThanOrEqual(1);
    await verifyHistory(setup, model, new Random(seed + 100));
    expectConfirmedWithinCheckpoint('at the end', await confirmedVsCheckpoint(setup), setup);
    expect(await agent.stopCleanly(), 'exit code after SIGTERM').toBe(0);
  });
});
