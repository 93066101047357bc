// Many sessions reading history while one session changes what is tracked
// (issue 10): no backend ever answers from tracking state, or history, that
// a commit it could see has replaced.
//
// The cast, all on one cluster with the agent on pgoutput:
// - the controller (one session) runs epochs k = 1..EPOCHS over table alpha:
//   set every row to 'e<k>' while untracked, pgtimewarp_track, update some
//   rows to 'e<k>-u<j>' (stored by the agent), pgtimewarp_untrack,
//   pgtimewarp_forget.  Twice it drops table beta and creates it again
//   under the same name (rows 'b<i>', incarnation i), waits until the agent
//   has seen the drop, and tracks the new table;
// - READERS long-lived sessions loop over pgtimewarp_asof_pk (alpha at
//   now() and at a time inside an earlier epoch, beta at now()) and
//   pgtimewarp_status(), in autocommit and in explicit transactions (READ
//   COMMITTED and REPEATABLE READ, each lookup in a savepoint), with simple
//   and named prepared statements, many transactions each;
// - after every change the controller makes, PROBES long-lived sessions
//   (one of them inside an explicit transaction, one with prepared
//   statements) look up every key and must give exactly the new state.
//
// What "not stale" means for the readers, which race the controller.  Every
// controller change is a state (alpha: not tracked | tracked in epoch k |
// untracked after epoch k; beta: incarnation i, tracked or not yet) with the
// times its statement was sent and its commit acknowledged.  A reader's
// transaction that began (BEGIN or its one statement sent) after a change
// was acknowledged must see that change or a later one; one that ended
// before a change was sent cannot see it.  So each answer must fit one of
// the states current at some moment of [transaction begin, answer
// received], where "fit" is:
//   alpha not tracked: the error "... is not tracked by pgtimewarp";
//   alpha in epoch k:  a row with value e<k>... (never an earlier epoch's:
//                      that history was forgotten), or "no history ...
//                      before" when the time asked for precedes epoch k's
//                      tracking (an older epoch's time, or now() of a
//                      transaction begun before the track was acknowledged);
//   beta incarnation i tracked: a row 'b<i>' (never an older incarnation's);
//   beta i not tracked yet: "not tracked" or "belongs to another table";
//   status: alpha's row and beta's rows exactly as that state has them.
// Lookups of a dropped table's OID that race the DROP may fail with
// "relation with OID ... does not exist".
//
// The snapshot guarantee checked (here and in the second test): within one
// local transaction every pgtimewarp call reads the store in one snapshot,
// taken at the transaction's first store access, READ COMMITTED or not, and
// kept across savepoints rolled back; so the same lookup (key and time)
// answers the same, and pgtimewarp_status() the same, however the store
// changes meanwhile (the agent storing changes, another session's track,
// untrack or forget).  A new transaction sees the changes.

import { performance } from 'node:perf_hooks';

import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';

import { Random, testSeed } from '../support/random.js';
import { setupTimewarp, startAgent, type InProcessAgent, type Timewarp } from '../support/timewarp.js';
import { sleep, waitFor } from '../support/wait.js';
import { useCluster } from '../support/use-cluster.js';

const cluster = useCluster();

const SEED = testSeed();
const KEYS = 6;
const EPOCHS = 4;
/** Epochs in which beta is dropped and created again (its incarnation becomes the epoch). */
const BETA_REBORN = new Set([2, 3]);
/** Pause between the controller's changes, so that readers see every state. */
const PAUSE_MS = 200;
const NODE = 'conn';

type Outcome =
  | { kind: 'row'; text: string }
  | { kind: 'null' }
  | { kind: 'error'; message: string; code: string | undefined };

/** The time an alpha lookup asks about: now(), or one taken in epoch k while it was tracked. */
type At = 'now' | { epoch: number; ts: string };

type Op =
  | { table: 'alpha'; key: number; at: At }
  | { table: 'beta'; key: number }
  | { table: 'status' };

interface State {
  alpha: { phase: 'none' } | { phase: 'tracked' | 'untracked'; epoch: number };
  beta: { inc: number; tracked: boolean };
}

/** A controller change: the state it made, when it was sent and when acknowledged (performance.now()). */
interface Change {
  label: string;
  sentAt: number;
  ackAt: number;
  state: State;
}

interface Lookup {
  session: string;
  /** Lookups of one transaction share it. */
  tx: number;
  txBegin: number;
  statementBegin: number;
  end: number;
  op: Op;
  outcome: Outcome;
}

function outcomeText(o: Outcome): string {
  return o.kind === 'row' ? o.text : o.kind === 'null' ? 'NULL' : `ERROR ${o.code}: ${o.message}`;
}

function opText(op: Op): string {
  if (op.table === 'status') return 'pgtimewarp_status()';
  if (op.table === 'beta') return `beta ${op.key} at now()`;
  return `alpha ${op.key} at ${op.at === 'now' ? 'now()' : `${op.at.ts} (epoch ${op.at.epoch})`}`;
}

function stateText(s: State): string {
  const a = s.alpha.phase === 'none' ? 'alpha not tracked' : `alpha ${s.alpha.phase} in epoch ${s.alpha.epoch}`;
  return `${a}, beta incarnation ${s.beta.inc}${s.beta.tracked ? ' tracked' : ' not tracked yet'}`;
}

describe('store connection: many sessions', () => {
  let timewarp: Timewarp;
  let agent: InProcessAgent;
  let store: pg.Client;
  const random = new Random(SEED);
  const replay = `store connection: replay the random choices with PGTIMEWARP_SEED=${SEED}`;

  // what the controller did
  const changes: Change[] = [];
  const alphaTrack = new Map<number, { lsn: string; ackAt: number }>();
  const betaTrack = new Map<number, { lsn: string; ackAt: number }>();
  const betaDropAck = new Map<number, number>();
  /** Times taken in epoch k while alpha was tracked, known to readers from then on. */
  const epochTimes: Array<{ epoch: number; ts: string }> = [];
  /** alpha's rows now, id -> v */
  const alphaRows = new Map<number, string>();

  beforeAll(async () => {
    timewarp = await setupTimewarp(cluster(), { nodeId: NODE });
    const { source } = timewarp;
    store = await cluster().connect('store');
    await source.query(`CREATE TABLE alpha (id int PRIMARY KEY, v text)`);
    await source.query(`CREATE TABLE beta (id int PRIMARY KEY, v text)`);
    await source.query(`INSERT INTO alpha SELECT g, 'e0' FROM generate_series(1, ${KEYS}) g`);
    await source.query(`INSERT INTO beta SELECT g, 'b1' FROM generate_series(1, ${KEYS}) g`);
    for (let id = 1; id <= KEYS; id++) alphaRows.set(id, 'e0');
    agent = await startAgent(timewarp, 'pgoutput');
    const lsn = await source.query<{ lsn: string }>(`SELECT pgtimewarp_track('beta')::text AS lsn`);
    betaTrack.set(1, { lsn: lsn.rows[0]!.lsn, ackAt: performance.now() });
    changes.push({ label: 'start', sentAt: -Infinity, ackAt: -Infinity, state: { alpha: { phase: 'none' }, beta: { inc: 1, tracked: true } } });
  });

  afterAll(async () => {
    await agent?.stop();
    await store?.end();
    await timewarp?.source.end();
  });

  // -------------------------------------------------------------------------
  // Running one lookup

  const SQL = {
    alphaNow: `SELECT pgtimewarp_asof_pk($1::text::regclass, jsonb_build_object('id', $2::int), now())::text AS r`,
    alphaAt: `SELECT pgtimewarp_asof_pk($1::text::regclass, jsonb_build_object('id', $2::int), $3::timestamptz)::text AS r`,
    status: `SELECT coalesce(json_agg(json_build_array(table_name, tracking, tracked_from_lsn::text) ORDER BY table_name, tracked_from_lsn)::text, '[]') AS r
               FROM pgtimewarp_status() WHERE table_name IN ('alpha', 'beta')`,
  };

  async function run(client: pg.Client, op: Op, prepared: boolean): Promise<Outcome> {
    let name: string;
    let text: string;
    let values: Array<string | number>;
    if (op.table === 'status') {
      [name, text, values] = ['status', SQL.status, []];
    } else if (op.table === 'beta' || op.at === 'now') {
      [name, text, values] = ['now', SQL.alphaNow, [op.table, op.key]];
    } else {
      [name, text, values] = ['at', SQL.alphaAt, ['alpha', op.key, op.at.ts]];
    }
    try {
      const res = await client.query<{ r: string | null }>(prepared ? { name, text, values } : { text, values });
      const r = res.rows[0]?.r ?? null;
      return r === null ? { kind: 'null' } : { kind: 'row', text: r };
    } catch (err) {
      const e = err as pg.DatabaseError;
      return { kind: 'error', message: e.message, code: e.code };
    }
  }

  // -------------------------------------------------------------------------
  // Whether an answer fits a state (see the header)

  function fits(s: State, l: Lookup): boolean {
    const { op, outcome: o } = l;
    const error = (re: RegExp): boolean => o.kind === 'error' && re.test(o.message);
    const rowValue = (): string | undefined => (o.kind === 'row' ? (JSON.parse(o.text) as { v: string }).v : undefined);
    if (op.table === 'status') {
      if (o.kind !== 'row') return false;
      const want: Array<[string, boolean, string]> = [];
      if (s.alpha.phase !== 'none') want.push(['alpha', s.alpha.phase === 'tracked', alphaTrack.get(s.alpha.epoch)!.lsn]);
      // every incarnation of beta ever tracked stays listed (dropped ones to the owner)
      const betaLsns = [...betaTrack.entries()]
        .filter(([inc]) => inc < s.beta.inc || (inc === s.beta.inc && s.beta.tracked))
        .map(([, t]) => t.lsn);
      const got = JSON.parse(o.text) as Array<[string, boolean, string]>;
      const gotAlpha = got.filter((r) => r[0] === 'alpha');
      const gotBeta = got.filter((r) => r[0] === 'beta').map((r) => r[2]).sort();
      return JSON.stringify(gotAlpha) === JSON.stringify(want) && JSON.stringify(gotBeta) === JSON.stringify(betaLsns.sort());
    }
    if (op.table === 'beta') {
      const { inc, tracked } = s.beta;
      // resolved to the table a DROP then removed
      if (error(/relation with OID \d+ does not exist|could not open relation with OID/)) {
        return !tracked && l.statementBegin < betaDropAck.get(inc)!;
      }
      if (!tracked) return error(/^table (public\.)?beta is not tracked by pgtimewarp$|^the history stored under the name (public\.)?beta belongs to another table$/);
      if (error(/^no history of table (public\.)?beta before /)) return l.txBegin < betaTrack.get(inc)!.ackAt;
      return rowValue() === `b${inc}`;
    }
    if (s.alpha.phase === 'none') return error(/^table (public\.)?alpha is not tracked by pgtimewarp$/);
    const k = s.alpha.epoch;
    if (error(/^no history of table (public\.)?alpha before /)) {
      return op.at === 'now' ? l.txBegin < alphaTrack.get(k)!.ackAt : op.at.epoch < k;
    }
    const v = rowValue();
    if (v === undefined || (op.at !== 'now' && op.at.epoch !== k)) return false;
    return new RegExp(`^e${k}(-u\\d+)?$`).test(v);
  }

  /** The states current at some moment from the lookup's transaction's begin to its answer. */
  function statesDuring(l: Lookup): State[] {
    return changes
      .filter((c, i) => c.sentAt <= l.end && (i + 1 === changes.length || changes[i + 1]!.ackAt >= l.txBegin))
      .map((c) => c.state);
  }

  // -------------------------------------------------------------------------
  // Readers

  let stopReaders = false;
  let txSeq = 0;

  interface Reader {
    name: string;
    explicit: 'never' | 'always' | 'sometimes';
    prepared: boolean;
  }

  const READERS: Reader[] = [
    { name: 'reader autocommit', explicit: 'never', prepared: false },
    { name: 'reader autocommit prepared', explicit: 'never', prepared: true },
    { name: 'reader in transactions', explicit: 'always', prepared: false },
    { name: 'reader mixed prepared', explicit: 'sometimes', prepared: true },
  ];

  function randomOp(r: Random): Op {
    const key = r.int(1, KEYS);
    return r.weighted<() => Op>([
      [4, () => ({ table: 'alpha', key, at: 'now' })],
      [2, () => (epochTimes.length === 0 ? { table: 'alpha', key, at: 'now' } : { table: 'alpha', key, at: r.pick(epochTimes) })],
      [3, () => ({ table: 'beta', key })],
      [1, () => ({ table: 'status' })],
    ])();
  }

  async function readerLoop(client: pg.Client, reader: Reader, r: Random, out: Lookup[]): Promise<void> {
    while (!stopReaders) {
      const explicit = reader.explicit === 'always' || (reader.explicit === 'sometimes' && r.chance(0.5));
      const tx = ++txSeq;
      const txBegin = performance.now();
      if (explicit) await client.query(r.chance(0.3) ? 'BEGIN ISOLATION LEVEL REPEATABLE READ' : 'BEGIN');
      const n = explicit ? r.int(2, 7) : 1;
      // an explicit transaction asks some things twice: the same answer is due
      const ops: Op[] = [];
      for (let i = 0; i < n; i++) ops.push(i > 0 && r.chance(0.4) ? r.pick(ops) : randomOp(r));
      for (const op of ops) {
        if (explicit) await client.query('SAVEPOINT lookup');
        const statementBegin = performance.now();
        const outcome = await run(client, op, reader.prepared);
        const end = performance.now();
        if (explicit) await client.query(outcome.kind === 'error' ? 'ROLLBACK TO SAVEPOINT lookup' : 'RELEASE SAVEPOINT lookup');
        out.push({ session: reader.name, tx, txBegin, statementBegin, end, op, outcome });
      }
      if (explicit) await client.query('COMMIT');
    }
  }

  // -------------------------------------------------------------------------
  // Probes: right after each change, every probe session must give exactly the new state

  const PROBES = [
    { name: 'probe autocommit', prepared: false, explicit: false },
    { name: 'probe prepared', prepared: true, explicit: false },
    { name: 'probe in a transaction', prepared: false, explicit: true },
  ];
  const probeProblems: string[] = [];
  let probeLookups = 0;

  async function probeRound(clients: pg.Client[], label: string): Promise<void> {
    const state = changes[changes.length - 1]!.state;
    const ops: Op[] = [];
    for (let key = 1; key <= KEYS; key++) {
      ops.push({ table: 'alpha', key, at: 'now' }, { table: 'beta', key });
      if (epochTimes.length > 0) ops.push({ table: 'alpha', key, at: epochTimes[epochTimes.length - 1]! });
    }
    // last: a transaction's first store access decides its snapshot, and only an
    // as-of call at a recent time first waits for the agent to store what came before
    ops.push({ table: 'status' });
    await Promise.all(PROBES.map(async (probe, i) => {
      const client = clients[i]!;
      const txBegin = performance.now();
      if (probe.explicit) await client.query('BEGIN');
      for (const op of ops) {
        if (probe.explicit) await client.query('SAVEPOINT probe');
        const statementBegin = performance.now();
        const outcome = await run(client, op, probe.prepared);
        if (probe.explicit) await client.query(outcome.kind === 'error' ? 'ROLLBACK TO SAVEPOINT probe' : 'RELEASE SAVEPOINT probe');
        const l: Lookup = { session: probe.name, tx: 0, txBegin, statementBegin, end: performance.now(), op, outcome };
        probeLookups++;
        let ok = fits(state, l);
        // and exactly the row the table has (alpha changes only while tracked)
        if (ok && op.table === 'alpha' && op.at === 'now' && outcome.kind === 'row') {
          ok = (JSON.parse(outcome.text) as { v: string }).v === alphaRows.get(op.key);
        }
        if (!ok) probeProblems.push(`after ${label} (${stateText(state)}): ${probe.name}: ${opText(op)} gave ${outcomeText(outcome)}`);
      }
      if (probe.explicit) await client.query('COMMIT');
    }));
  }

  it('never serves a state or history that a commit the backend could see has replaced', { timeout: 90_000 }, async () => {
    onTestFailed(() => console.error(replay));
    const { source } = timewarp;
    const readerClients = await Promise.all(READERS.map(() => cluster().connect('source')));
    const probeClients = await Promise.all(PROBES.map(() => cluster().connect('source')));
    const lookups: Lookup[][] = READERS.map(() => []);
    const readerSeeds = READERS.map(() => random.int(0, 2 ** 30));
    const readers = READERS.map((reader, i) => readerLoop(readerClients[i]!, reader, new Random(readerSeeds[i]!), lookups[i]!));
    // a reader that fails ends the test at once, not after the controller
    const readersFailed = Promise.all(readers).then(() => undefined);
    readersFailed.catch(() => { stopReaders = true; });

    let state = changes[0]!.state;
    /** Make a change, record it (onAck: what else the checks need), probe it. */
    const change = async <T>(label: string, next: State | undefined, action: () => Promise<T>,
      onAck?: (result: T, ackAt: number) => void): Promise<void> => {
      const sentAt = performance.now();
      const result = await action();
      const ackAt = performance.now();
      if (next !== undefined) {
        state = next;
        changes.push({ label, sentAt, ackAt, state });
      }
      onAck?.(result, ackAt);
      await probeRound(probeClients, label);
    };
    const track = async (table: string): Promise<string> =>
      (await source.query<{ lsn: string }>(`SELECT pgtimewarp_track($1)::text AS lsn`, [table])).rows[0]!.lsn;
    const setAlpha = async (label: string, value: (id: number) => string, ids: number[]): Promise<void> => {
      await change(label, undefined, () => source.query(`UPDATE alpha SET v = u.v FROM unnest($1::int[], $2::text[]) u(id, v) WHERE alpha.id = u.id`,
        [ids, ids.map(value)]), () => { for (const id of ids) alphaRows.set(id, value(id)); });
    };
    const someKeys = (): number[] => [...Array(KEYS).keys()].map((i) => i + 1).filter(() => random.chance(0.5));

    const controller = (async () => {
      // the readers warm up on the starting state
      await sleep(PAUSE_MS);
      for (let k = 1; k <= EPOCHS && !stopReaders; k++) {
        // untracked: not recorded, the coming baseline
        await source.query(`UPDATE alpha SET v = $1`, [`e${k}`]);
        for (const id of alphaRows.keys()) alphaRows.set(id, `e${k}`);
        await change(`track(alpha) in epoch ${k}`, { ...state, alpha: { phase: 'tracked', epoch: k } },
          () => track('alpha'), (lsn, ackAt) => alphaTrack.set(k, { lsn, ackAt }));
        await sleep(PAUSE_MS);
        await setAlpha(`update 1 in epoch ${k}`, () => `e${k}-u1`, someKeys());
        epochTimes.push({ epoch: k, ts: (await source.query<{ ts: string }>(`SELECT clock_timestamp()::text AS ts`)).rows[0]!.ts });
        await sleep(PAUSE_MS);

        if (BETA_REBORN.has(k)) {
          // one transaction: no moment without a table named beta
          await change(`drop and create beta (incarnation ${k})`, { ...state, beta: { inc: k, tracked: false } }, async () => {
            await source.query('BEGIN');
            await source.query(`DROP TABLE beta`);
            await source.query(`CREATE TABLE beta (id int PRIMARY KEY, v text)`);
            await source.query(`INSERT INTO beta SELECT g, $1 FROM generate_series(1, ${KEYS}) g`, [`b${k}`]);
            await source.query('COMMIT');
          }, (_, ackAt) => betaDropAck.set(k, ackAt));
          // the agent ends the old incarnation at the drop; only then can the new table be tracked
          await waitFor('the agent to record the drop of beta', async () =>
            (await store.query(`SELECT 1 FROM pgtimewarp_store.tracked_relations WHERE node_id = $1 AND table_name = 'beta' AND dropped_lsn IS NULL`, [NODE])).rowCount === 0,
          20_000);
          await change(`the agent recorded the drop of beta`, undefined, async () => undefined);
          await sleep(PAUSE_MS);
          await change(`track(beta) incarnation ${k}`, { ...state, beta: { inc: k, tracked: true } },
            () => track('beta'), (lsn, ackAt) => betaTrack.set(k, { lsn, ackAt }));
          await sleep(PAUSE_MS);
        }

        await setAlpha(`update 2 in epoch ${k}`, () => `e${k}-u2`, someKeys());
        await sleep(PAUSE_MS);
        await change(`untrack(alpha) in epoch ${k}`, { ...state, alpha: { phase: 'untracked', epoch: k } },
          () => source.query(`SELECT pgtimewarp_untrack('alpha')`));
        await sleep(PAUSE_MS);
        await change(`forget(alpha) after epoch ${k}`, { ...state, alpha: { phase: 'none' } },
          () => source.query(`SELECT pgtimewarp_forget('alpha')`));
        await sleep(PAUSE_MS);
      }
    })();
    try {
      await Promise.race([controller, readersFailed]);
      await controller;
    } finally {
      stopReaders = true;
      await Promise.allSettled(readers);
    }
    await readersFailed;

    // the readers against the states they may have seen
    const problems: string[] = [];
    const all = lookups.flat();
    for (const l of all) {
      const possible = statesDuring(l);
      if (!possible.some((s) => fits(s, l))) {
        problems.push(`${l.session}: ${opText(l.op)} gave ${outcomeText(l.outcome)}; the states it may see: ${possible.map(stateText).join(' | ')}`);
      }
    }
    // one store snapshot per transaction: the same question, the same answer
    const answers = new Map<string, Lookup>();
    for (const l of all) {
      if (l.op.table === 'beta') continue; // beta's OID may change under a transaction (a savepoint rolled back releases its lock)
      const first = answers.get(`${l.tx} ${opText(l.op)}`);
      if (first === undefined) answers.set(`${l.tx} ${opText(l.op)}`, l);
      else if (outcomeText(first.outcome) !== outcomeText(l.outcome)) {
        problems.push(`${l.session}: in one transaction ${opText(l.op)} gave ${outcomeText(first.outcome)}, then ${outcomeText(l.outcome)}`);
      }
    }

    const count = (pred: (l: Lookup) => boolean): number => all.filter(pred).length;
    const seen = {
      lookups: all.length,
      transactions: new Set(all.map((l) => l.tx)).size,
      repeatedInTransaction: all.length - answers.size - count((l) => l.op.table === 'beta'),
      alphaNotTracked: count((l) => l.op.table === 'alpha' && l.outcome.kind === 'error' && /is not tracked/.test(l.outcome.message)),
      alphaEpochs: new Set(all.flatMap((l) => (l.op.table === 'alpha' && l.outcome.kind === 'row' ? [(JSON.parse(l.outcome.text) as { v: string }).v.split('-')[0]] : []))).size,
      alphaBeforeTracking: count((l) => l.op.table === 'alpha' && l.outcome.kind === 'error' && /no history/.test(l.outcome.message)),
      betaIncarnations: new Set(all.flatMap((l) => (l.op.table === 'beta' && l.outcome.kind === 'row' ? [(JSON.parse(l.outcome.text) as { v: string }).v] : []))).size,
      probeLookups,
    };
    console.log(`store connection (seed ${SEED}): ${JSON.stringify(seen)}`);
    expect(probeProblems.slice(0, 10), `${probeProblems.length} probe answers wrong; ${replay}`).toEqual([]);
    expect(problems.slice(0, 10), `${problems.length} reader answers wrong; ${replay}`).toEqual([]);
    // the test saw what it is about
    expect(seen.alphaNotTracked).toBeGreaterThan(0);
    expect(seen.alphaEpochs).toBe(EPOCHS);
    expect(seen.alphaBeforeTracking).toBeGreaterThan(0);
    expect(seen.betaIncarnations).toBe(1 + BETA_REBORN.size);
    expect(seen.repeatedInTransaction).toBeGreaterThan(20);
    expect(agent.events.filter((e) => e.level === 'error')).toEqual([]);
    await Promise.all([...readerClients, ...probeClients].map((c) => c.end()));
  });

  it('reads the store in one snapshot per transaction, while the agent stores changes', { timeout: 60_000 }, async () => {
    const { source } = timewarp;
    await source.query(`CREATE TABLE gamma (id int PRIMARY KEY, v text)`);
    await source.query(`CREATE TABLE delta (id int PRIMARY KEY)`);
    await source.query(`CREATE TABLE never_tracked (id int PRIMARY KEY)`);
    await source.query(`INSERT INTO gamma VALUES (1, 'g0'), (2, 'g0')`);
    await source.query(`SELECT pgtimewarp_track('gamma')`);
    const reader = await cluster().connect('source');
    const checker = await cluster().connect('source');
    // a time later than any stored change: answered with what the store knows (and a warning)
    const LATEST = {
      asofPk: `SELECT pgtimewarp_asof_pk('gamma', '{"id": 1}', now() + interval '1 hour') ->> 'v' AS v`,
      asofPkLsn: `SELECT pgtimewarp_asof_pk_lsn('gamma', '{"id": 1}', 'FFFFFFFF/FFFFFFFF') ->> 'v' AS v`,
      asofRow: `SELECT v FROM pgtimewarp_asof_row(NULL::gamma, '{"id": 1}', now() + interval '1 hour')`,
      diff: `SELECT string_agg(row_data ->> 'v', ',' ORDER BY valid_from_lsn) AS v
               FROM pgtimewarp_diff_pk('gamma', '{"id": 1}', now() - interval '1 hour', now() + interval '1 hour')`,
      versions: `SELECT row_versions::text AS v FROM pgtimewarp_status() WHERE table_name = 'gamma'`,
    };
    const read = async (client: pg.Client): Promise<Record<string, string | null>> => {
      const out: Record<string, string | null> = {};
      for (const [name, sql] of Object.entries(LATEST)) out[name] = (await client.query<{ v: string | null }>(sql)).rows[0]?.v ?? null;
      return out;
    };
    try {
      let value = 'g0';
      for (const begin of ['BEGIN', 'BEGIN ISOLATION LEVEL REPEATABLE READ', 'BEGIN ISOLATION LEVEL SERIALIZABLE']) {
        await reader.query(begin);
        const before = await read(reader);
        expect(before.asofPk, begin).toBe(value);
        // the agent stores a change; a new transaction elsewhere sees it
        const next = `${value}+`;
        await source.query(`UPDATE gamma SET v = $1 WHERE id = 1`, [next]);
        await waitFor('the agent to store the change', async () => (await checker.query<{ v: string }>(LATEST.asofPk)).rows[0]?.v === next);
        // another session tracks a table meanwhile: the store changes under the transaction
        await source.query(`SELECT pgtimewarp_track('delta')`);
        expect(await read(reader), `${begin}: the second reading`).toEqual(before);
        // an error rolled back to a savepoint keeps the snapshot
        await reader.query('SAVEPOINT s');
        await expect(reader.query(`SELECT pgtimewarp_asof_pk('never_tracked', '{"id": 1}', now())`)).rejects.toThrow(/is not tracked/);
        await reader.query('ROLLBACK TO SAVEPOINT s');
        expect(await read(reader), `${begin}: after a savepoint rolled back`).toEqual(before);
        await reader.query('COMMIT');
        const after = await read(reader);
        expect(after.asofPk, `${begin}: a new transaction`).toBe(next);
        expect(Number(after.versions)).toBe(Number(before.versions) + 1);
        await source.query(`SELECT pgtimewarp_untrack('delta')`);
        await source.query(`SELECT pgtimewarp_forget('delta')`);
        value = next;
      }
    } finally {
      await reader.end();
      await checker.end();
    }
  });
});
