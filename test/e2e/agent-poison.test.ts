// Input an ordinary role can feed the agent, and a transaction the store
// refuses every time (agent/poison.ts), through the real agent on each
// plugin:
//   1. a role with no privileges at all writes "pgtimewarp" logical messages
//      (pg_logical_emit_message is executable by PUBLIC): malformed ones,
//      well-formed ones the store does not bear out, a copy of a real one,
//      floods of them in one transaction and in many, and a flood of horizon
//      requests.  The agent must keep recording the tracked tables within
//      seconds, record what happened as (few) health events, refresh its
//      catalog for nothing it cannot verify, and (wal2json) not restart its
//      stream; the horizon requests coalesce into few heartbeats.
//   2. the store refuses one transaction's versions (a CHECK constraint this
//      test adds to row_versions, rejecting a marker value): the agent must
//      stop after POISON_ATTEMPTS tries with a poison_transaction health event
//      and a message naming the command that skips it; doctor shows it;
//      `pgtimewarp skip-transaction` then lets a restarted agent go on, which
//      records an open gap for the tables the transaction changed (and no
//      other) and stores the transactions after it.

import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { AgentFatalError, runAgent, type AgentEvent } from '../../agent/run.js';
import { POISON_ATTEMPTS } from '../../agent/poison.js';
import { doctor } from '../../installer/doctor-checks.js';
import { absentConfigPath, cleanEnv, runCli } from '../support/run-cli.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';
import { sleep, waitFor } from '../support/wait.js';

// frequent keepalives, so heartbeats and retries happen within a test
const cluster = useCluster({ settings: { wal_sender_timeout: '2s' } });

describe.each(['pgoutput', 'wal2json'] as const)('hostile input on %s', (plugin) => {
  let timewarp: Timewarp;
  let store: pg.Client;
  const slot = `poison_${plugin}`;
  const nobody = `nobody_${plugin}`;
  let events: AgentEvent[] = [];
  let stop = new AbortController();
  let running: Promise<void>;

  function startAgent(spillKeys?: number): void {
    events = [];
    stop = new AbortController();
    running = runAgent({
      sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId,
      slot, plugin, signal: stop.signal, log: (e) => events.push(e),
      backoff: { initialMs: 100, maxMs: 400 }, spillKeys,
    });
    running.catch(() => undefined); // awaited by the tests
  }

  /** The latest version's note of a key, straight from the store (a lookup in a gap is an error). */
  async function storedNote(table: string, id: number): Promise<string | null | undefined> {
    const res = await store.query<{ note: string | null }>(
      `SELECT row_data ->> 'note' AS note FROM pgtimewarp_store.row_history
        WHERE node_id = $1 AND table_name = $2 AND pk = ARRAY[$3]::text[] ORDER BY valid_from_lsn DESC LIMIT 1`,
      [timewarp.nodeId, table, String(id)],
    );
    return res.rows.length === 0 ? undefined : res.rows[0]!.note;
  }

  async function health(kind: string): Promise<Array<{ severity: string; message: string; detail: Record<string, unknown> | null }>> {
    const res = await store.query(
      `SELECT severity, message, detail FROM pgtimewarp_store.health_events WHERE node_id = $1 AND kind = $2 ORDER BY event_id`,
      [timewarp.nodeId, kind],
    );
    return res.rows;
  }

  beforeAll(async () => {
    timewarp = await setupTimewarp(cluster(), { sourceDb: `src_${plugin}`, storeDb: `store_${plugin}`, nodeId: `n_${plugin}` });
    store = new pg.Client({ connectionString: timewarp.storeUrl });
    await store.connect();
    const { source } = timewarp;
    for (const t of ['items', 'other', 'bystander']) {
      await source.query(`CREATE TABLE ${t} (id int PRIMARY KEY, note text)`);
      await source.query(`INSERT INTO ${t} VALUES (1, 'seed')`);
    }
    await source.query(`CREATE ROLE ${nobody} LOGIN`); // no privileges: PUBLIC's only
    startAgent();
    await waitFor('the agent\'s slot', async () => (await source.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $1`, [slot])).rowCount === 1, 30_000);
    for (const t of ['items', 'other', 'bystander']) await source.query(`SELECT pgtimewarp_track($1)`, [t]);
    await source.query(`UPDATE bystander SET note = 'tracked' WHERE id = 1`);
    await waitFor('the agent to record the tracked tables', async () => (await storedNote('bystander', 1)) === 'tracked', 30_000);
  });

  afterAll(async () => {
    stop.abort();
    await running?.catch(() => undefined);
    await store?.end();
    await timewarp?.source.query(`DROP ROLE IF EXISTS ${nobody}`).catch(() => undefined);
    await timewarp?.source.end();
  });

  it('ignores forged tracking messages, records them, and keeps recording within seconds', async () => {
    const { source } = timewarp;
    const url = new URL(timewarp.sourceUrl);
    url.username = nobody;
    const forger = new pg.Client({ connectionString: url.toString() });
    await forger.connect();
    const streamsBefore = events.filter((e) => e.event === 'streaming').length;
    const eventsBefore = events.length;
    const heartbeatsBefore = await heartbeats();
    const real = (await store.query<{ lsn: string }>(
      `SELECT tracked_from_lsn::text AS lsn FROM pgtimewarp_store.tracked_relations WHERE node_id = $1 AND table_name = 'items'`,
      [timewarp.nodeId],
    )).rows[0]!.lsn;
    const claim = (action: string, table: string, lsn: string): string =>
      JSON.stringify({ action, node_id: timewarp.nodeId, schema_name: 'public', table_name: table, lsn });
    try {
      const emit = (content: string): Promise<unknown> => forger.query(`SELECT pg_logical_emit_message(true, 'pgtimewarp', $1)`, [content]);
      await emit('x'); // the message that stopped all history
      await emit('null');
      // bytes that are not UTF-8, in a transaction and outside one
      await forger.query(`SELECT pg_logical_emit_message(true, 'pgtimewarp', '\\xff00fe'::bytea)`);
      await forger.query(`SELECT pg_logical_emit_message(false, 'pgtimewarp', '\\xc328'::bytea)`);
      await emit(claim('track', 'nonesuch', '0/1'));
      await emit(claim('untrack', 'items', '0/2'));
      await emit(claim('track', 'items', real)); // a copy of the real one: already known, no work at all
      for (let i = 0; i < 100; i++) await emit(claim('track', `forged_${i}`, '0/10'));
      // one transaction with more claims than the agent keeps
      await forger.query(`DO $$ BEGIN FOR i IN 1..3000 LOOP
        PERFORM pg_logical_emit_message(true, 'pgtimewarp', json_build_object('action', 'track', 'node_id', '${timewarp.nodeId}',
          'schema_name', 'public', 'table_name', 'flood_' || i, 'lsn', '0/10')::text);
        PERFORM pg_logical_emit_message(true, 'pgtimewarp', 'not json ' || i);
      END LOOP; END $$`);
      // horizon requests (non-transactional): each asks for a heartbeat at once
      await forger.query(`DO $$ BEGIN FOR i IN 1..3000 LOOP PERFORM pg_logical_emit_message(false, 'pgtimewarp', 'x'); END LOOP; END $$`);
    } finally {
      await forger.end();
    }
    await source.query(`UPDATE other SET note = 'after forgeries' WHERE id = 1`);
    await source.query(`INSERT INTO items VALUES (2, 'after forgeries')`);
    const started = Date.now();
    await waitFor('the agent to record past the forgeries', async () =>
      (await storedNote('other', 1)) === 'after forgeries' && (await storedNote('items', 2)) === 'after forgeries', 10_000);
    const tookMs = Date.now() - started;

    const since = events.slice(eventsBefore);
    expect(since.filter((e) => e.level === 'error' || e.event === 'retry' || e.event === 'fatal'), `took ${tookMs} ms`).toEqual([]);
    // nothing the store does not bear out refreshes the catalog, flushes, or restarts the stream
    expect(since.filter((e) => e.event === 'tracking')).toEqual([]);
    expect(events.filter((e) => e.event === 'streaming').length).toBe(streamsBefore);

    const malformed = await health('tracking_message_malformed');
    const unverified = await health('tracking_message_unverified');
    // at most one a minute each, however many arrived
    expect(malformed).toHaveLength(1);
    expect(unverified).toHaveLength(1);
    expect(malformed[0]).toMatchObject({ severity: 'warning' });
    expect(malformed[0]!.message).toMatch(/1 "pgtimewarp" logical message\(s\) in the transaction ending at [0-9A-F]+\/[0-9A-F]+ \(xid \d+\) are not tracking events, ignored/);
    expect(malformed[0]!.message).toContain('pgtimewarp message is not JSON: "x"');
    expect(unverified[0]!.message).toContain('claim what the store does not show, ignored: track public.nonesuch at 0/1');
    expect(since.filter((e) => e.event === 'tracking_message_unverified' || e.event === 'tracking_message_malformed')).toHaveLength(2);
    // the store still tracks what it tracked: items was not untracked by the forged claim
    const stillTracked = await store.query(
      `SELECT table_name FROM pgtimewarp_store.tracked_relations WHERE node_id = $1 AND untracked_lsn IS NULL ORDER BY 1`, [timewarp.nodeId]);
    expect(stillTracked.rows.map((r) => r.table_name)).toEqual(['bystander', 'items', 'other']);
    // 3,000 horizon requests while the agent worked: they coalesce, one heartbeat in flight at a time
    expect(await heartbeats() - heartbeatsBefore).toBeLessThan(300);
  });

  it('stops at a transaction the store refuses every time, and goes on past it once skipped, recording the gap', async () => {
    const { source } = timewarp;
    await store.query(`ALTER TABLE pgtimewarp_store.row_versions
      ADD CONSTRAINT e2e_no_poison CHECK (row_data ->> 'note' IS DISTINCT FROM 'poison') NOT VALID`);
    try {
      await source.query(`INSERT INTO items VALUES (9, 'before the poison')`);
      await waitFor('the agent to record up to the poison', async () => (await storedNote('items', 9)) === 'before the poison', 10_000);
      await source.query('BEGIN');
      await source.query(`INSERT INTO items VALUES (10, 'poison')`);
      await source.query(`UPDATE other SET note = 'in the poison transaction' WHERE id = 1`);
      await source.query('COMMIT');
      await source.query(`INSERT INTO bystander VALUES (2, 'after the poison')`);
      await source.query(`UPDATE other SET note = 'after the poison' WHERE id = 1`);
      await source.query(`INSERT INTO items VALUES (11, 'after the poison')`);

      const stopped = await Promise.race([running.then(() => 'returned', (err: unknown) => err), sleep(30_000).then(() => 'still retrying after 30 s')]);
      expect(stopped).toBeInstanceOf(AgentFatalError);
      const poison = await health('poison_transaction');
      expect(poison).toHaveLength(1);
      const endLsn = poison[0]!.detail!['end_lsn'] as string;
      expect(poison[0]).toMatchObject({ severity: 'error' });
      expect(poison[0]!.detail).toMatchObject({ stage: 'store', tables: ['public.items', 'public.other'] });
      expect(poison[0]!.detail!['error']).toMatch(/violates check constraint "e2e_no_poison" \(SQLSTATE 23514\)/);
      const message = (stopped as Error).message;
      expect(message).toContain(`history has stopped: the transaction ending at ${endLsn} (xid `);
      expect(message).toContain(`pgtimewarp skip-transaction ${endLsn} --reason '<why>', then start the agent again`);
      expect(events.filter((e) => e.event === 'retry')).toHaveLength(POISON_ATTEMPTS - 1);
      expect(events.filter((e) => e.event === 'poison_transaction')).toHaveLength(1);
      // history stopped right at it: what came before is stored, nothing after
      expect(await storedNote('items', 9)).toBe('before the poison');
      expect(await storedNote('bystander', 2)).toBeUndefined();

      const report = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, node: timewarp.nodeId, slot, env: { PGTIMEWARP_CONFIG: absentConfigPath() } });
      const finding = report.findings.find((f) => f.check === 'poison_transaction');
      expect(finding).toMatchObject({ status: 'error' });
      expect(finding?.message).toContain(`the agent stopped at the transaction ending at ${endLsn} (public.items, public.other)`);
      expect(finding?.fix).toContain(`pgtimewarp skip-transaction ${endLsn} --reason '<why>'`);

      const skip = await runCli(['skip-transaction', endLsn, '--reason', 'e2e: the store refuses it', '--store', timewarp.storeUrl, '--node', timewarp.nodeId], cleanEnv());
      expect(skip.stderr).toBe('');
      expect(skip.code).toBe(0);
      expect(skip.stdout).toContain(`listed the transaction ending at ${endLsn} of node "${timewarp.nodeId}" to be skipped`);
      expect(skip.stdout).toContain('public.items, public.other get a history gap');

      startAgent();
      await waitFor('the agent to store what came after the skipped transaction', async () =>
        (await storedNote('bystander', 2)) === 'after the poison' && (await storedNote('items', 11)) === 'after the poison', 15_000);
      expect(await storedNote('items', 10)).toBeUndefined();
      expect(await storedNote('other', 1)).toBe('after the poison');
      const gaps = await store.query<{ table_name: string; from_lsn: string; to_lsn: string | null; reason: string }>(
        `SELECT r.table_name, g.from_lsn::text, g.to_lsn::text, g.reason
           FROM pgtimewarp_store.history_gaps g JOIN pgtimewarp_store.tracked_relations r USING (relation_id)
          WHERE r.node_id = $1 ORDER BY 1`,
        [timewarp.nodeId],
      );
      expect(gaps.rows.map((g) => [g.table_name, g.from_lsn, g.to_lsn])).toEqual([['items', endLsn, null], ['other', endLsn, null]]);
      expect(gaps.rows[0]!.reason).toMatch(new RegExp(`^transaction ending at ${endLsn} \\(xid \\d+\\) skipped by .*pgtimewarp skip-transaction.*: e2e: the store refuses it$`));
      const listed = await store.query(`SELECT skipped_at IS NOT NULL AS done FROM pgtimewarp_store.skipped_transactions WHERE node_id = $1`, [timewarp.nodeId]);
      expect(listed.rows).toEqual([{ done: true }]);
      expect(await health('transaction_skipped')).toHaveLength(1);
      expect(events.filter((e) => e.event === 'transaction_skipped')).toHaveLength(1);
      expect(events.filter((e) => e.level === 'error' || e.event === 'retry')).toEqual([]);

      const after = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, node: timewarp.nodeId, slot, env: { PGTIMEWARP_CONFIG: absentConfigPath() } });
      expect(after.findings.find((f) => f.check === 'poison_transaction')).toMatchObject({ status: 'ok' });
    } finally {
      await store.query(`ALTER TABLE pgtimewarp_store.row_versions DROP CONSTRAINT IF EXISTS e2e_no_poison`);
    }
  });

  it('stops at a refused transaction too big to hold, and skips it', async () => {
    const { source } = timewarp;
    stop.abort();
    await running.catch(() => undefined);
    startAgent(3); // a transaction of more than 3 keys is merged in the store piece by piece
    await store.query(`ALTER TABLE pgtimewarp_store.row_versions
      ADD CONSTRAINT e2e_no_poison CHECK (row_data ->> 'note' IS DISTINCT FROM 'big poison') NOT VALID`);
    try {
      await source.query(`INSERT INTO bystander SELECT g, CASE g WHEN 105 THEN 'big poison' ELSE 'big' END FROM generate_series(100, 109) g`);
      await source.query(`INSERT INTO other VALUES (3, 'after the big poison')`);
      const stopped = await Promise.race([running.then(() => 'returned', (err: unknown) => err), sleep(30_000).then(() => 'still retrying after 30 s')]);
      expect(stopped).toBeInstanceOf(AgentFatalError);
      expect(events.some((e) => e.event === 'spilling')).toBe(true);
      const poison = (await health('poison_transaction')).at(-1)!;
      expect(poison.detail).toMatchObject({ stage: 'store', tables: ['public.bystander'] });
      const endLsn = poison.detail!['end_lsn'] as string;
      expect((stopped as Error).message).toContain(`pgtimewarp skip-transaction ${endLsn} --reason`);

      const skipped = await runCli(['skip-transaction', endLsn, '--store', timewarp.storeUrl, '--node', timewarp.nodeId, '--json'], cleanEnv());
      expect(skipped.code).toBe(0);
      expect(JSON.parse(skipped.stdout)).toMatchObject({ endLsn, added: true, reason: 'skipped with pgtimewarp skip-transaction' });
      startAgent(3);
      await waitFor('the agent past the big skipped transaction', async () => (await storedNote('other', 3)) === 'after the big poison', 15_000);
      expect(await storedNote('bystander', 100)).toBeUndefined();
      const gaps = await store.query(
        `SELECT r.table_name FROM pgtimewarp_store.history_gaps g JOIN pgtimewarp_store.tracked_relations r USING (relation_id)
          WHERE r.node_id = $1 AND g.from_lsn = $2::pg_lsn`, [timewarp.nodeId, endLsn]);
      expect(gaps.rows).toEqual([{ table_name: 'bystander' }]);
      expect(events.filter((e) => e.level === 'error' || e.event === 'retry')).toEqual([]);
    } finally {
      await store.query(`ALTER TABLE pgtimewarp_store.row_versions DROP CONSTRAINT IF EXISTS e2e_no_poison`);
    }
  });

  async function heartbeats(): Promise<number> {
    const res = await store.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pgtimewarp_store.lsn_time_map WHERE node_id = $1 AND is_heartbeat`, [timewarp.nodeId]);
    return res.rows[0]!.n;
  }
});
