// Values round-trip exactly through the whole pipeline on pgoutput: rows of
// every type DESIGN.md names are inserted and updated AFTER tracking, so
// they reach the store only through the WAL, the decoder, the assembler and
// the writer; pgtimewarp_asof_row must give back exactly the row that was
// there.  Rows are compared with the record image operator *=, which tells
// apart what = would call equal (1.50 and 1.5, -0 and 0, json spacing).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runAgent } from '../../agent/run.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';
import { waitFor } from '../support/wait.js';

const cluster = useCluster({ settings: { wal_sender_timeout: '2s' } });

let timewarp: Timewarp;
const stop = new AbortController();
let running: Promise<void>;

const ROWS = `
  (1, 1234567890123456789012345678901234567890.1234567890, 9007199254740993, 'NaN', 'Infinity', 0.1,
   '2024-02-29 12:34:56.789012+05:30', '\\x00ff0a5c2722', '{1,NULL,3}', '{"a,b","say \\"hi\\"",NULL,"back\\\\slash",""}',
   '{"a": {"b": [1, 2.50, "x", null, true]}, "n": 12345678901234567890.123456789}', '{"z": 1,   "a": [1,  2]}',
   'happy', 5.50, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'emoji 🎉 CJK 日本語 combining é quote '' backslash \\ tab	end',
   '1 year 2 mons -3 days 04:05:06.789', 'abc<b/>'),
  (2, 'NaN', -9223372036854775808, '-Infinity', '-0', 'NaN', 'infinity', '', '{}', '{}',
   'null', '[]', 'sad', 0.01, '00000000-0000-0000-0000-000000000000', '', '-1 day', NULL),
  (3, -0.000, 9223372036854775807, -0.0, 1e-45, 5e-324, '-infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)`;

beforeAll(async () => {
  timewarp = await setupTimewarp(cluster());
  const { source } = timewarp;
  await source.query(`CREATE TYPE mood AS ENUM ('sad', 'happy')`);
  await source.query(`CREATE DOMAIN price AS numeric(12,2) CHECK (VALUE > 0)`);
  await source.query(`CREATE TABLE typed (
    id int PRIMARY KEY, n numeric, big bigint, f8 float8, f4 float4, f8b float8, ts timestamptz, b bytea,
    arr int[], tarr text[], j jsonb, js json, m mood, p price, u uuid, t text, iv interval, x xml)`);
  running = runAgent({
    sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId,
    slot: 'types', plugin: 'pgoutput', signal: stop.signal, heartbeatIntervalMs: 200,
  });
  // the slot first: changes are recorded only from where the slot starts
  await waitFor('the agent\'s slot', async () =>
    (await source.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = 'types'`)).rowCount === 1, 30_000);
  await source.query(`SELECT pgtimewarp_track('typed')`);
  await source.query(`INSERT INTO typed VALUES ${ROWS}`);
  // an update leaving the other columns alone: they reach the store through the update path
  await source.query(`UPDATE typed SET t = t || '!' WHERE id = 1`);
  // wait until history is complete past these changes (a heartbeat after them)
  const { rows } = await source.query<{ lsn: string }>(`SELECT pg_current_wal_insert_lsn()::text AS lsn`);
  await waitFor('the agent to store the changes', async () =>
    (await source.query<{ ok: boolean }>(
      `SELECT coalesce(confirmed_lsn >= $1::pg_lsn, false) AS ok FROM pgtimewarp_status() WHERE table_name = 'typed'`,
      [rows[0]!.lsn],
    )).rows[0]?.ok === true, 30_000);
});

afterAll(async () => {
  stop.abort();
  await running?.catch(() => undefined);
  await timewarp?.source.end();
});

describe('values through the agent on pgoutput', () => {
  it('come back from pgtimewarp_asof_row exactly as the rows are', async () => {
    const { source } = timewarp;
    // under settings unlike the canonical ones, to show they do not matter
    await source.query(`SET DateStyle = 'SQL, DMY'; SET TimeZone = 'America/New_York'; SET IntervalStyle = 'sql_standard'; SET extra_float_digits = 0; SET bytea_output = 'escape'; SET xmloption = document`);
    const res = await source.query<{ id: number; exact: boolean; same_text: boolean }>(
      `SELECT cur.id,
              pgtimewarp_asof_row(NULL::typed, jsonb_build_object('id', cur.id), now()) *= cur AS exact,
              pgtimewarp_asof_row(NULL::typed, jsonb_build_object('id', cur.id), now())::text = cur::text AS same_text
         FROM typed cur ORDER BY cur.id`,
    );
    expect(res.rows).toEqual([
      { id: 1, exact: true, same_text: true },
      { id: 2, exact: true, same_text: true },
      { id: 3, exact: true, same_text: true },
    ]);
  });

});

describe('health events', () => {
  it('records a tracked table that was dropped, once, and ends its history there', async () => {
    const { source } = timewarp;
    await source.query(`CREATE TABLE gone_soon (id int PRIMARY KEY)`);
    await source.query(`SELECT pgtimewarp_track('gone_soon')`);
    await source.query(`DROP TABLE gone_soon`);
    const store = await cluster().connect('store');
    try {
      const events = async (): Promise<Array<{ severity: string; kind: string; message: string }>> =>
        (await store.query<{ severity: string; kind: string; message: string }>(
          `SELECT severity, kind, message FROM pgtimewarp_store.health_events
            WHERE node_id = $1 AND kind IN ('tracked_table_dropped', 'tracked_table_missing')`,
          [timewarp.nodeId],
        )).rows;
      await waitFor('a tracked_table_dropped event', async () => (await events()).length > 0, 30_000);
      // several heartbeats and health checks later, still one event: the agent
      // saw the drop in the extension's DDL log, so the table is not missing
      await new Promise((r) => setTimeout(r, 1000));
      expect(await events()).toEqual([{
        severity: 'info', kind: 'tracked_table_dropped',
        message: expect.stringMatching(/^tracked table public\.gone_soon was dropped at [0-9A-F]+\/[0-9A-F]+; its history up to then stays in the store$/),
      }]);
      const incarnation = await store.query<{ ended: boolean }>(
        `SELECT dropped_lsn IS NOT NULL AND untracked_lsn = dropped_lsn AS ended
           FROM pgtimewarp_store.tracked_relations WHERE node_id = $1 AND table_name = 'gone_soon'`, [timewarp.nodeId]);
      expect(incarnation.rows).toEqual([{ ended: true }]);
    } finally {
      await store.end();
    }
  });
});

describe('a table tracked before the slot existed', () => {
  it('stops the agent with the fix, and the fix works', async () => {
    const early = await setupTimewarp(cluster(), { sourceDb: 'early_src', storeDb: 'early_store', nodeId: 'early' });
    const { source } = early;
    try {
      await source.query(`CREATE TABLE early (id int PRIMARY KEY, v text)`);
      await source.query(`INSERT INTO early VALUES (1, 'before the slot')`);
      await source.query(`SELECT pgtimewarp_track('early')`);
      await source.query(`UPDATE early SET v = 'never streamed' WHERE id = 1`);
      const opts = {
        sourceUrl: early.sourceUrl, storeUrl: early.storeUrl, nodeId: early.nodeId,
        slot: 'early', plugin: 'pgoutput' as const, heartbeatIntervalMs: 200,
      };
      await expect(runAgent(opts)).rejects.toThrow(
        /public\.early began tracking before replication slot "early" existed.*pgtimewarp_untrack\('public\.early'\); SELECT pgtimewarp_forget\('public\.early'\); SELECT pgtimewarp_track\('public\.early'\)/,
      );
      // and again on the next start: nothing was stored in between
      await expect(runAgent(opts)).rejects.toThrow(/began tracking before replication slot/);

      await source.query(`SELECT pgtimewarp_untrack('early')`);
      await source.query(`SELECT pgtimewarp_forget('early')`);
      await source.query(`SELECT pgtimewarp_track('early')`);
      const stopEarly = new AbortController();
      const agent = runAgent({ ...opts, signal: stopEarly.signal });
      await source.query(`UPDATE early SET v = 'streamed' WHERE id = 1`);
      const seen = await waitFor('the update after tracking again', async () => {
        const res = await source.query<{ v: string | null }>(
          `SELECT pgtimewarp_asof_pk_lsn('early', '{"id": 1}', 'FFFFFFFF/FFFFFFFF') ->> 'v' AS v`,
        ).catch(() => ({ rows: [{ v: null }] }));
        return res.rows[0]?.v === 'streamed' ? res.rows[0].v : undefined;
      }, 30_000);
      stopEarly.abort();
      await agent;
      expect(seen).toBe('streamed');
    } finally {
      await source.end();
    }
  });
});
