// The query commands end to end: the real `pgtimewarp` CLI, as a child
// process, against a source and store set up as the installer sets them up,
// with the agent streaming (in process).  track, a few committed changes,
// then asof, diff, status and untrack as a user runs them; the rows they
// print are compared with what the table held, as PostgreSQL's own JSON
// text (to_jsonb(row)::text), so a lost digit or a reordered column fails.
// Errors must come out as PostgreSQL's message with its DETAIL and HINT, or
// as one clean line, and exit 1; under --json, stdout has the error as one
// JSON object as well.

import type pg from 'pg';
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runAgent } from '../../agent/run.js';
import { writeConfig } from '../../installer/config.js';
import { absentConfigPath, cleanEnv, runCli, type CliResult } from '../support/run-cli.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';
import { waitFor } from '../support/wait.js';

// frequent keepalives: the agent's heartbeats keep its checkpoint close behind
const cluster = useCluster({ settings: { wal_sender_timeout: '2s' } });

/** A 41-digit numeric: JSON.parse would round it. */
const HUGE = '1234567890123456789012345678901234567890.5';
const HUGE_PLUS_ONE = '1234567890123456789012345678901234567891.5';

let timewarp: Timewarp;
const stop = new AbortController();
let agent: Promise<void>;
// PGTZ: times print in UTC whatever the machine's zone
const env = cleanEnv({ PGTZ: 'UTC' });

function cli(...args: string[]): Promise<CliResult> {
  return runCli([...args, '--source', timewarp.sourceUrl], env);
}

/** to_jsonb of row `id` now: the text the as-of lookups must print. */
async function rowText(source: pg.Client, id: number): Promise<string> {
  const res = await source.query<{ j: string }>(`SELECT to_jsonb(t)::text AS j FROM items t WHERE id = $1`, [id]);
  return res.rows[0]!.j;
}

async function point(source: pg.Client): Promise<{ ts: string; lsn: string }> {
  const res = await source.query<{ ts: string; lsn: string }>(
    `SELECT clock_timestamp()::text AS ts, pg_current_wal_lsn()::text AS lsn`,
  );
  return res.rows[0]!;
}

/** No stack trace, no "Error:" prefix from Node: the handler in cli.ts printed it. */
function expectCleanFailure(r: CliResult): void {
  expect(r.code, r.stderr).toBe(1);
  expect(r.stdout).toBe('');
  expect(r.stderr).not.toMatch(/^\s+at /m);
  expect(r.stderr.startsWith('pgtimewarp: ')).toBe(true);
}

// What the table held along the way, recorded by the test as it changed it.
let trackedLsn: string;
let baselineRow1: string;
let beforeChanges: { ts: string; lsn: string };
let afterFirstUpdate: { ts: string; lsn: string };

beforeAll(async () => {
  timewarp = await setupTimewarp(cluster());
  const { source } = timewarp;
  await source.query(`CREATE TABLE items (id int PRIMARY KEY, name text, price numeric, huge numeric)`);
  await source.query(`CREATE TABLE other (id int PRIMARY KEY)`);
  await source.query(`INSERT INTO items VALUES (1, 'one', 1.50, ${HUGE}), (2, 'two', 2, NULL)`);
  // the agent first: changes are recorded from where its slot starts
  agent = runAgent({
    sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId,
    slot: 'pgtimewarp', plugin: 'pgoutput', signal: stop.signal, backoff: { initialMs: 100, maxMs: 1000 },
  });
  await waitFor('the agent\'s slot', async () =>
    (await source.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = 'pgtimewarp'`)).rowCount === 1, 30_000);
});

afterAll(async () => {
  stop.abort();
  await agent?.catch(() => undefined);
  await timewarp?.source.end();
});

describe('pgtimewarp track, asof, diff, status, untrack', () => {
  it('track prints the LSN from which history is complete; again, says it already is', async () => {
    const { source } = timewarp;
    const first = await cli('track', 'items');
    expect(first.code, first.stderr).toBe(0);
    const match = /^tracking public\.items: its history is complete from LSN ([0-9A-F]+\/[0-9A-F]+)\n$/.exec(first.stdout);
    expect(match, first.stdout).not.toBeNull();
    trackedLsn = match![1]!;
    const stored = await source.query<{ lsn: string }>(
      `SELECT tracked_from_lsn::text AS lsn FROM pgtimewarp_status() WHERE table_name = 'items'`,
    );
    expect(stored.rows[0]?.lsn).toBe(trackedLsn);

    const again = await cli('track', 'items', '--json');
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ table: 'public.items', lsn: trackedLsn });
    expect(again.stderr).toMatch(/^pgtimewarp: NOTICE: table public\.items is already tracked since .* \(LSN (.*)\)$/m);

    // the workload: each statement its own transaction
    baselineRow1 = await rowText(source, 1);
    beforeChanges = await point(source);
    await source.query(`UPDATE items SET price = 2.75 WHERE id = 1`);
    afterFirstUpdate = await point(source);
    await source.query(`UPDATE items SET name = 'uno', huge = huge + 1 WHERE id = 1`);
    await source.query(`DELETE FROM items WHERE id = 2`);
    await source.query(`INSERT INTO items VALUES (3, 'three', 3, 3)`);
    const end = await point(source);
    await waitFor('the agent to store the changes', async () =>
      (await source.query<{ ok: boolean }>(`SELECT confirmed_lsn >= $1::pg_lsn AS ok FROM pgtimewarp_status()`, [end.lsn]))
        .rows[0]?.ok === true, 30_000);
  });

  it('asof --at and --lsn print the row as it was, exactly', async () => {
    const byTime = await cli('asof', 'items', '--key', '{"id": 1}', '--at', beforeChanges.ts);
    expect(byTime.code, byTime.stderr).toBe(0);
    expect(byTime.stdout).toBe(`${baselineRow1}\n`);
    expect(byTime.stdout).toContain(HUGE);
    expect(byTime.stderr).toBe('');

    const byLsn = await cli('asof', 'items', '--key', '{"id": "1"}', '--lsn', beforeChanges.lsn, '--json');
    expect(byLsn.code, byLsn.stderr).toBe(0);
    // the row spliced in as PostgreSQL printed it: 41 digits, price 1.50 not 1.5
    expect(byLsn.stdout).toContain(`"row":${baselineRow1}`);
    expect(JSON.parse(byLsn.stdout)).toMatchObject({
      table: 'public.items', key: { id: '1' }, lsn: beforeChanges.lsn, found: true, notices: [],
    });

    const later = await cli('asof', 'items', '--key', '{"id": 1}', '--at', afterFirstUpdate.ts);
    expect(JSON.parse(later.stdout)).toMatchObject({ id: 1, name: 'one', price: 2.75 });
  });

  it('asof says when no row with that key existed then, and exits 0', async () => {
    const r = await cli('asof', 'items', '--key', '{"id": 3}', '--at', beforeChanges.ts);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`no row with key {"id": 3} existed in public.items at ${beforeChanges.ts}\n`);

    const json = await cli('asof', 'items', '--key', '{"id": 2}', '--at', 'infinity', '--json');
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ found: false, row: null });
  });

  it('asof beyond what the agent has stored answers, with PostgreSQL\'s WARNING on stderr', async () => {
    const { source } = timewarp;
    const r = await cli('asof', 'items', '--key', '{"id": 1}', '--at', 'infinity');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`${await rowText(source, 1)}\n`);
    expect(r.stdout).toContain(HUGE_PLUS_ONE);
    expect(r.stderr).toMatch(
      /^pgtimewarp: WARNING: history of table public\.items is complete only up to .+\nDETAIL: infinity is later than .+\nHINT: .+pgtimewarp doctor.+\n$/,
    );
  });

  it('diff shows the timeline, each changed column old -> new', async () => {
    const r = await cli('diff', 'items', '--key', '{"id": 1}');
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stdout.split('\n');
    expect(lines[0]).toMatch(/^public\.items \{"id": 1\} from .+ to .+: 3 versions$/);
    const at = (pattern: RegExp): number => {
      const i = lines.findIndex((l) => pattern.test(l));
      expect(i, `${pattern} in\n${r.stdout}`).toBeGreaterThan(0);
      return i;
    };
    const baseline = at(new RegExp(`^\\S+ \\S+  baseline  \\(LSN ${trackedLsn}\\)$`));
    const price = at(/^ {4}price: 1\.50 -> 2\.75$/);
    const name = at(/^ {4}name: "one" -> "uno"$/);
    const huge = at(new RegExp(`^ {4}huge: ${HUGE.replace('.', '\\.')} -> ${HUGE_PLUS_ONE.replace('.', '\\.')}$`));
    expect(lines.slice(baseline + 1, price).join('\n')).toContain(`      huge: ${HUGE}`);
    expect(baseline).toBeLessThan(price);
    expect(price).toBeLessThan(name);
    expect(name).toBeLessThan(huge);

    const deleted = await cli('diff', 'items', '--key', '{"id": 2}', '--json');
    expect(deleted.code, deleted.stderr).toBe(0);
    const parsed = JSON.parse(deleted.stdout) as { versions: { op: string; row: unknown; changes: unknown[] }[] };
    expect(parsed.versions.map((v) => v.op)).toEqual(['baseline', 'delete']);
    expect(parsed.versions[1]).toMatchObject({ row: null, changes: [] });
    expect((await cli('diff', 'items', '--key', '{"id": 2}')).stdout).toMatch(/ {2}delete {2}\(LSN .+\)\n {4}row deleted\n$/);
  });

  it('diff from a time after a change compares its first version with the one before', async () => {
    const r = await cli('diff', 'items', '--key', '{"id": 1}', '--from', afterFirstUpdate.ts, '--json');
    expect(r.code, r.stderr).toBe(0);
    const parsed = JSON.parse(r.stdout) as { from: string; versions: { op: string }[] };
    expect(parsed.from).toBe(afterFirstUpdate.ts);
    expect(parsed.versions.map((v) => v.op)).toEqual(['update', 'update']);
    // values as PostgreSQL printed them: 1.50 keeps its scale
    expect(r.stdout).toContain('"changes":[{"column":"price","old":1.50,"new":2.75}]');
    expect(r.stdout).toContain(`{"column":"huge","old":${HUGE},"new":${HUGE_PLUS_ONE}}`);
  });

  it('status lists the tracked table, as a table and as JSON', async () => {
    const text = await cli('status');
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^table +state +tracked since +versions$/m);
    expect(text.stdout).toMatch(new RegExp(`^public\\.items +tracking +.+\\(LSN ${trackedLsn}\\) +6$`, 'm'));
    expect(text.stdout).toMatch(/^agent: history is complete up to .+ \(LSN [0-9A-F]+\/[0-9A-F]+\)/m);

    expect(text.stdout).toMatch(/^agent: .+; lag (0 s \(caught up\)|at most [0-9.]+ s); the source has written .+ of WAL since$/m);

    const before = Date.now();
    const json = await cli('status', '--json');
    const after = Date.now();
    expect(json.code, json.stderr).toBe(0);
    // baseline of 1 and 2, two updates of 1, the delete of 2, the insert of 3
    const rows = JSON.parse(json.stdout) as { confirmedTs: string; lagBytes: number; lagSeconds: number }[];
    expect(rows).toEqual([expect.objectContaining({
      schema: 'public', table: 'items', tracking: true, trackedFromLsn: trackedLsn, untrackedLsn: null, rowVersions: 6,
      lagBytes: expect.any(Number), lagSeconds: expect.any(Number),
    })]);
    // the agent is caught up (0), or the lag is the age of confirmedTs at the call (same clock here)
    const { confirmedTs, lagSeconds } = rows[0]!;
    if (lagSeconds !== 0) {
      const confirmedMs = Date.parse(confirmedTs.replace(' ', 'T').replace(/\+00$/, 'Z'));
      expect(lagSeconds).toBeGreaterThanOrEqual((before - confirmedMs) / 1000 - 0.05);
      expect(lagSeconds).toBeLessThanOrEqual((after - confirmedMs) / 1000 + 0.05);
    }
    // the workload was stored a while ago and heartbeats follow: at most a few seconds behind
    expect(lagSeconds).toBeLessThan(30);
  });

  it('a wrong key or an untracked table: PostgreSQL\'s error with DETAIL and HINT, exit 1', async () => {
    const wrongKey = await cli('asof', 'items', '--key', '{"nope": 1}', '--at', 'now');
    expectCleanFailure(wrongKey);
    expect(wrongKey.stderr).toBe(
      'pgtimewarp: ERROR: "nope" is not a primary key column of table public.items\n' +
        'DETAIL: Table public.items has primary key (id).\n' +
        'HINT: Name exactly the primary key columns in the key object.\n',
    );

    const untracked = await cli('diff', 'other', '--key', '{"id": 1}');
    expectCleanFailure(untracked);
    expect(untracked.stderr).toMatch(
      /^pgtimewarp: ERROR: table public\.other is not tracked by pgtimewarp\nDETAIL: .+\nHINT: .*pgtimewarp_track\('public\.other'\).*\n$/,
    );

    const beforeTracking = await cli('asof', 'items', '--key', '{"id": 1}', '--at', '2000-01-01 00:00+00');
    expectCleanFailure(beforeTracking);
    expect(beforeTracking.stderr).toMatch(/^pgtimewarp: ERROR: no history of table public\.items before .+\nDETAIL: .+\nHINT: Ask for a time at or after .+\n$/);

    const badJson = await cli('asof', 'items', '--key', '{id: 1}', '--at', 'now');
    expectCleanFailure(badJson);
    expect(badJson.stderr).toMatch(/^pgtimewarp: the key is not valid JSON \(.+\): give a JSON object naming the primary key columns, e\.g\. '\{"id": 42\}'\n$/);

    const noPoint = await cli('asof', 'items', '--key', '{"id": 1}');
    expectCleanFailure(noPoint);
    expect(noPoint.stderr).toBe('pgtimewarp: asof needs a point in history: pass --at <timestamptz> or --lsn <pg_lsn>\n');
  });

  it('untrack stops tracking; the history stays queryable', async () => {
    const r = await cli('untrack', 'items');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^stopped tracking public\.items; its history stays queryable/);
    const json = await cli('status', '--json');
    const [row] = JSON.parse(json.stdout) as { tracking: boolean; untrackedLsn: string | null }[];
    expect(row).toMatchObject({ tracking: false, untrackedLsn: expect.stringMatching(/^[0-9A-F]+\/[0-9A-F]+$/) });
    const old = await cli('asof', 'items', '--key', '{"id": 1}', '--lsn', beforeChanges.lsn);
    expect(old.stdout).toBe(`${baselineRow1}\n`);
    const again = await cli('untrack', 'items');
    expectCleanFailure(again);
    expect(again.stderr).toMatch(/^pgtimewarp: ERROR: table public\.items is not tracked by pgtimewarp\nDETAIL: Tracking stopped at .+\nHINT: .+\n$/);
  });
});

describe('where the CLI finds the source database', () => {
  it('without any: one clean line naming every way to give it, exit 1', async () => {
    const r = await runCli(['status'], cleanEnv());
    expectCleanFailure(r);
    expect(r.stderr).toBe(
      'pgtimewarp: no source database: pass --source <url>, set PGTIMEWARP_SOURCE_URL, run "pgtimewarp install", or set PGHOST/PGDATABASE\n',
    );
  });

  it('an unreachable one: one line saying which and where the setting came from, exit 1', async () => {
    const r = await runCli(['status', '--source', 'postgresql://someone:secret@127.0.0.1:1/app'], cleanEnv());
    expectCleanFailure(r);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^pgtimewarp: could not connect to the source database postgresql:\/\/someone:\*\*\*@127\.0\.0\.1:1\/app \(from --source\): .*ECONNREFUSED/);
    expect(r.stderr).not.toContain('secret');
  });

  it('one without the extension: says so and what to do, exit 1', async () => {
    const r = await runCli(['status', '--source', cluster().url('postgres')], cleanEnv());
    expectCleanFailure(r);
    expect(r.stderr).toMatch(/^pgtimewarp: the pgtimewarp extension is not installed in database "postgres" .+ "pgtimewarp install"\n$/);
  });

  it('PGTIMEWARP_SOURCE_URL, then the config file, then PG* variables', async () => {
    const fromEnv = await runCli(['status', '--json'], cleanEnv({ PGTIMEWARP_SOURCE_URL: timewarp.sourceUrl }));
    expect(fromEnv.code, fromEnv.stderr).toBe(0);
    expect(JSON.parse(fromEnv.stdout)).toHaveLength(1);

    const config = absentConfigPath();
    writeConfig({
      version: 1, sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId,
      slot: 'pgtimewarp', plugin: 'pgoutput', agent: 'none',
    }, config);
    const fromConfig = await runCli(['status', '--json'], cleanEnv({ PGTIMEWARP_CONFIG: config }));
    expect(fromConfig.code, fromConfig.stderr).toBe(0);
    expect(JSON.parse(fromConfig.stdout)).toHaveLength(1);

    const c = cluster();
    const fromPg = await runCli(['status', '--json'], cleanEnv({
      PGHOST: c.host, PGPORT: String(c.port), PGUSER: c.superuser, PGDATABASE: 'source',
    }));
    expect(fromPg.code, fromPg.stderr).toBe(0);
    expect(JSON.parse(fromPg.stdout)).toHaveLength(1);

    writeFileSync(config, '{ not json');
    const broken = await runCli(['status'], cleanEnv({ PGTIMEWARP_CONFIG: config }));
    expectCleanFailure(broken);
    expect(broken.stderr).toMatch(/^pgtimewarp: config file .+ is not valid JSON .+; fix or delete it\n$/);
  });
});

describe('--json when a command fails', () => {
  it('PostgreSQL\'s error: one JSON object on stdout with its fields, the clean message on stderr, exit 1', async () => {
    const r = await cli('diff', 'other', '--key', '{"id": 1}', '--json');
    expect(r.code, r.stderr).toBe(1);
    const out = JSON.parse(r.stdout) as { ok: boolean; command: string; error: Record<string, string> };
    expect(out).toMatchObject({
      ok: false, command: 'diff',
      error: { message: expect.stringMatching(/public\.other.* is not tracked by pgtimewarp$/), severity: 'ERROR', code: expect.stringMatching(/^[0-9A-Z]{5}$/) },
    });
    expect(out.error['detail']).toEqual(expect.any(String));
    expect(out.error['hint']).toMatch(/pgtimewarp_track/);
    expect(r.stdout.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toBe(`pgtimewarp: ERROR: ${out.error['message']}\nDETAIL: ${out.error['detail']}\nHINT: ${out.error['hint']}\n`);
  });

  it('any other failure, and a usage error: a JSON object too, exit 1', async () => {
    const unreachable = await runCli(['status', '--json', '--source', 'postgresql://someone:secret@127.0.0.1:1/app'], cleanEnv());
    expect(unreachable.code).toBe(1);
    expect(JSON.parse(unreachable.stdout)).toEqual({
      ok: false, command: 'status', error: { message: expect.stringMatching(/^could not connect to the source database postgresql:\/\/someone:\*\*\*@127\.0\.0\.1:1\/app \(from --source\): .*ECONNREFUSED/) },
    });
    expect(unreachable.stderr).toMatch(/^pgtimewarp: could not connect to the source database .+\n$/);
    expect(unreachable.stdout + unreachable.stderr).not.toContain('secret');

    const usage = await runCli(['asof', 'items', '--key', '{"id": 1}', '--at', 'now', '--json', '--bogus'], cleanEnv());
    expect(usage.code).toBe(1);
    expect(JSON.parse(usage.stdout)).toEqual({ ok: false, command: 'asof', error: { message: "error: unknown option '--bogus'" } });
    expect(usage.stderr).toMatch(/^error: unknown option '--bogus'\n/);
  });
});

describe('--help', () => {
  it.each(['track', 'untrack', 'status', 'asof', 'diff'])('%s --help explains the command with an example', async (command) => {
    const r = await runCli([command, '--help']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^Usage: pgtimewarp ${command} `));
    expect(r.stdout).toContain('--json');
    expect(r.stdout).toContain('--source <url>');
    expect(r.stdout).toMatch(/Examples?:\n {2}\$ pgtimewarp /);
  });
});
