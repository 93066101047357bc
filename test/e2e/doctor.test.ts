// pgtimewarp doctor against real clusters in the states it must tell apart:
// healthy (agent streaming, caught up), the agent stopped, the agent running
// but retrying (in process, and in the background with its pid and log
// files), the slot lagging, the slot's output plugin not allowed, tracked
// tables renamed, dropped, re-keyed, without their key or out of the
// publication, and a half-installed system.  Advice that is followed keeps
// the history that is still valid: only a gap the agent cannot go on across
// leads to pgtimewarp_forget, and that advice says it deletes history.
// Mostly through the plain function; the real CLI for the exit codes and
// the printed report.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runAgent } from '../../agent/run.js';
import { spawnBackgroundAgent, stopBackgroundAgent, type AgentFiles } from '../../installer/agent-service.js';
import { doctor, type DoctorReport, type Finding } from '../../installer/doctor-checks.js';
import { writeConfig } from '../../installer/config.js';
import { startCluster } from '../support/cluster.js';
import { absentConfigPath, cleanEnv, runCli } from '../support/run-cli.js';
import { setupTimewarp, type Timewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';
import { waitFor } from '../support/wait.js';

// frequent keepalives: the agent heartbeats within seconds
const cluster = useCluster({ settings: { wal_sender_timeout: '2s' } });

const SLOT = 'pgtimewarp';
/** No config file: doctor sees only what each test gives it. */
const noConfig = { PGTIMEWARP_CONFIG: absentConfigPath() };

let timewarp: Timewarp;
let agentStop: AbortController | null = null;
let agent: Promise<void> | null = null;

function startAgent(): void {
  agentStop = new AbortController();
  agent = runAgent({
    sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId,
    slot: SLOT, plugin: 'pgoutput', signal: agentStop.signal, backoff: { initialMs: 100, maxMs: 1000 },
  });
}

async function stopAgent(): Promise<void> {
  agentStop?.abort();
  await agent?.catch(() => undefined);
  agent = null;
}

async function slotActive(source: pg.Client): Promise<boolean> {
  const res = await source.query<{ active: boolean }>(`SELECT active FROM pg_replication_slots WHERE slot_name = $1`, [SLOT]);
  return res.rows[0]?.active === true;
}

/** Until the store holds everything the source has written so far. */
async function caughtUp(source: pg.Client): Promise<void> {
  const lsn = (await source.query<{ lsn: string }>(`SELECT pg_current_wal_lsn()::text AS lsn`)).rows[0]!.lsn;
  await waitFor(`the agent to store up to ${lsn}`, async () =>
    (await source.query<{ ok: boolean }>(`SELECT confirmed_lsn >= $1::pg_lsn AS ok FROM pgtimewarp_status() LIMIT 1`, [lsn]))
      .rows[0]?.ok === true, 60_000);
}

function find(report: DoctorReport, check: string): Finding[] {
  return report.findings.filter((f) => f.check === check);
}

function one(report: DoctorReport, check: string): Finding {
  const found = find(report, check);
  expect(found, `${check} in ${JSON.stringify(report.findings, null, 1)}`).toHaveLength(1);
  return found[0]!;
}

function notOk(report: DoctorReport): Finding[] {
  return report.findings.filter((f) => f.status !== 'ok');
}

beforeAll(async () => {
  timewarp = await setupTimewarp(cluster());
  const { source } = timewarp;
  await source.query(`CREATE TABLE accounts (id int PRIMARY KEY, balance numeric NOT NULL)`);
  await source.query(`INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g`);
  startAgent();
  await waitFor('the agent\'s slot', () => slotActive(source), 30_000);
  await source.query(`SELECT pgtimewarp_track('accounts')`);
  await source.query(`UPDATE accounts SET balance = balance + 1 WHERE id <= 3`);
  await caughtUp(source);
});

afterAll(async () => {
  await stopAgent();
  await timewarp?.source.end();
});

describe('pgtimewarp doctor', () => {
  it('healthy: agent streaming and caught up: every check ok, exit 0', async () => {
    const report = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
    expect(notOk(report)).toEqual([]);
    expect(report).toMatchObject({ healthy: true, nodeId: timewarp.nodeId, slot: SLOT });
    for (const check of ['source_connection', 'wal_level', 'output_plugin_libraries', 'extension', 'node', 'store_connection',
      'fdw', 'slot', 'slot_active', 'wal_retention', 'slot_lag', 'heartbeat', 'checkpoint', 'tracked_tables', 'publication', 'health_events']) {
      expect(one(report, check).status).toBe('ok');
    }
    expect(one(report, 'tracked_tables').message).toMatch(/^1 tracked table/);

    // the CLI, as an operator runs it: the config file tells it where everything is
    const config = absentConfigPath();
    writeConfig({ version: 1, sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId, slot: SLOT, plugin: 'pgoutput', agent: 'none' }, config);
    const cli = await runCli(['doctor'], cleanEnv({ PGTIMEWARP_CONFIG: config }));
    expect(cli.code, cli.stdout + cli.stderr).toBe(0);
    expect(cli.stderr).toBe('');
    expect(cli.stdout).toMatch(/^\[ ok \] slot_active: the agent is reading slot "pgtimewarp" \(backend pid \d+\)$/m);
    expect(cli.stdout).not.toMatch(/^\[(warn|FAIL)\]/m);
    expect(cli.stdout.trimEnd().split('\n').at(-1)).toBe('healthy (0 error(s), 0 warning(s))');
  });

  it('the agent stopped: the inactive slot is an error with how to start it, exit 1', async () => {
    await stopAgent();
    const { source } = timewarp;
    await waitFor('the slot to be released', async () => !(await slotActive(source)), 30_000);

    // provisioned as a systemd service: the fix says how to start that
    const config = absentConfigPath();
    writeConfig({
      version: 1, sourceUrl: timewarp.sourceUrl, storeUrl: timewarp.storeUrl, nodeId: timewarp.nodeId, slot: SLOT,
      plugin: 'pgoutput', agent: 'systemd', systemdUnit: 'pgtimewarp-agent.service',
    }, config);
    const report = await doctor({ env: { PGTIMEWARP_CONFIG: config } });
    expect(report.healthy).toBe(false);
    const inactive = one(report, 'slot_active');
    expect(inactive).toMatchObject({ status: 'error', figures: { active: false } });
    expect(inactive.message).toBe('nothing is reading replication slot "pgtimewarp": the agent is not running or not connected');
    expect(inactive.meaning).toMatch(/No history is being recorded/);
    expect(inactive.fix).toBe('Start the agent: systemctl start pgtimewarp-agent.service (why it stopped: journalctl -u pgtimewarp-agent.service -n 50).');

    // no service: the fix is the agent command line for this node and slot
    const bare = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
    expect(one(bare, 'slot_active').fix).toMatch(/^Start the agent: pgtimewarp agent --source <source url> --store <store url> --node e2e --slot pgtimewarp --plugin pgoutput/);

    const cli = await runCli(['doctor', '--source', timewarp.sourceUrl, '--store', timewarp.storeUrl]);
    expect(cli.code, cli.stdout + cli.stderr).toBe(1);
    expect(cli.stderr).toBe(''); // an unhealthy system is a report, not a crash
    expect(cli.stdout).toMatch(/^\[FAIL\] slot_active: nothing is reading replication slot "pgtimewarp".*\n {7}meaning: .+\n {7}fix: Start the agent: pgtimewarp agent /m);
    expect(cli.stdout.trimEnd().split('\n').at(-1)).toMatch(/^NOT healthy: [1-9]\d* error\(s\), \d+ warning\(s\)$/);
  });

  it('a lagging slot: lag in bytes and in time, with figures, beyond the limits is an error, exit 1', async () => {
    const { source } = timewarp;
    // the agent is still stopped; about 40 MB of WAL from an untracked table
    await source.query(`CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 32) AS pad FROM generate_series(1, 40000) g`);
    const current = (await source.query<{ lsn: string }>(`SELECT pg_current_wal_lsn()::text AS lsn`)).rows[0]!.lsn;
    const slotConfirmed = (await source.query<{ lsn: string }>(`SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = $1`, [SLOT])).rows[0]!.lsn;
    const expectedLag = Number((await source.query<{ d: string }>(`SELECT pg_wal_lsn_diff($1, $2)::text AS d`, [current, slotConfirmed])).rows[0]!.d);
    expect(expectedLag).toBeGreaterThan(32 * 1024 ** 2);

    await new Promise((resolve) => setTimeout(resolve, 2_100)); // history now at least 2 s behind
    const report = await doctor({
      source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig,
      thresholds: { lagWarnBytes: 1024 ** 2, lagErrorBytes: 16 * 1024 ** 2, lagWarnSeconds: 1, lagErrorSeconds: 2 },
    });
    const lag = one(report, 'slot_lag');
    expect(lag.status).toBe('error');
    expect(lag.figures).toMatchObject({ slotConfirmedLsn: slotConfirmed, storeConfirmedLsn: expect.any(String), historyCompleteTo: expect.any(String) });
    // at least what was measured; autovacuum may have written a little since
    expect(lag.figures?.['lagBytes']).toBeGreaterThanOrEqual(expectedLag);
    expect(lag.figures?.['lagBytes']).toBeLessThan(expectedLag + 1024 ** 2);
    expect(lag.figures?.['lagSeconds']).toBeGreaterThan(2);
    const said = new RegExp(`^the slot is \\d+ MB behind the source's WAL \\(${slotConfirmed} of ([0-9A-F]+/[0-9A-F]+)\\); history is complete up to .+ \\(\\d+ s ago\\)$`)
      .exec(lag.message);
    expect(said, lag.message).not.toBeNull();
    // the source's position when doctor looked: the one measured, or a little past it (a
    // background writer's running-xacts record, autovacuum) -- never before it
    const seen = (await source.query<{ d: string }>(`SELECT pg_wal_lsn_diff($1, $2)::text AS d`, [said![1], current])).rows[0]!.d;
    expect(Number(seen)).toBeGreaterThanOrEqual(0);
    expect(Number(seen)).toBeLessThan(1024 ** 2);
    expect(lag.meaning).toMatch(/error above 16 MB or 2 s/);
    expect(lag.fix).toMatch(/^Start the agent/);

    // by default 40 MB is no error; --max-lag-bytes makes it one, as the exit code shows
    const byDefault = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
    expect(one(byDefault, 'slot_lag').status).not.toBe('error');
    const cli = await runCli(['doctor', '--source', timewarp.sourceUrl, '--store', timewarp.storeUrl, '--max-lag-bytes', String(16 * 1024 ** 2), '--json']);
    expect(cli.code, cli.stderr).toBe(1);
    const parsed = JSON.parse(cli.stdout) as DoctorReport;
    expect(parsed.healthy).toBe(false);
    expect(parsed.findings.find((f) => f.check === 'slot_lag')).toMatchObject({ status: 'error', figures: { lagBytes: expect.any(Number) } });

    // the agent back and caught up: healthy again
    startAgent();
    await caughtUp(source);
    const after = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
    expect(notOk(after)).toEqual([]);
  });

  it('tracked tables renamed, dropped, re-keyed or without their primary key while the agent was stopped', async () => {
    const { source } = timewarp;
    if (agent === null) startAgent(); // whatever the test before left, the agent must be reading
    for (const t of ['t_renamed', 't_dropped', 't_nokey', 't_rekeyed']) {
      await source.query(`CREATE TABLE ${t} (id int PRIMARY KEY, v text NOT NULL DEFAULT '')`);
      await source.query(`SELECT pgtimewarp_track('${t}')`);
    }
    await caughtUp(source);
    await stopAgent();
    await waitFor('the slot to be released', async () => !(await slotActive(source)), 30_000);
    await source.query(`ALTER TABLE t_renamed RENAME TO t_new_name`);
    await source.query(`DROP TABLE t_dropped`);
    await source.query(`ALTER TABLE t_nokey DROP CONSTRAINT t_nokey_pkey`);
    await source.query(`ALTER TABLE t_rekeyed DROP CONSTRAINT t_rekeyed_pkey, ADD CONSTRAINT "new key" PRIMARY KEY (id, v)`);

    const report = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
    const tables = find(report, 'tracked_tables');
    expect(tables.map((f) => [f.figures?.['table'], f.status])).toEqual([
      ['public.t_dropped', 'warning'],
      ['public.t_nokey', 'error'],
      ['public.t_rekeyed', 'error'],
      ['public.t_renamed', 'warning'],
    ]);
    // the history before the rename, or under the old key, is valid: no advice deletes it
    for (const f of tables) expect(f.fix).not.toMatch(/forget/);
    // a rename the agent has not read yet: it follows it when it does
    const renamed = tables[3]!;
    expect(renamed.message).toBe('tracked table public.t_renamed was renamed to public.t_new_name; the agent has not read that far yet');
    expect(renamed.fix).toBe('Nothing to undo: let the agent catch up (see slot_active and slot_lag).');
    expect(tables[1]!.fix).toBe('Add the primary key back: ALTER TABLE public.t_nokey ADD PRIMARY KEY (id).');
    const rekeyed = tables[2]!;
    expect(rekeyed.fix).toMatch(/^Make \(id\) the primary key again: ALTER TABLE public\.t_rekeyed DROP CONSTRAINT "new key", ADD PRIMARY KEY \(id\); changes made under the other key are missing/);
    expect(report.healthy).toBe(false);

    // the agent started notices too, and doctor shows what it recorded
    startAgent();
    const events = await waitFor('the agent\'s health events', async () => {
      const r = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
      const f = one(r, 'health_events');
      return f.status === 'warning' && /tracked_table_missing/.test(f.message) && /tracked_table_without_pk/.test(f.message) ? f : undefined;
    }, 30_000);
    expect(events.fix).toMatch(/^Read them in the store: SELECT \* FROM pgtimewarp_store\.health_events WHERE node_id = 'e2e'/);

    // caught up, it has followed the rename and ended the dropped table's history; the fixes as given do the rest
    await caughtUp(source);
    const followed = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
    expect(find(followed, 'tracked_tables').map((f) => f.figures?.['table'])).toEqual(['public.t_nokey', 'public.t_rekeyed']);
    await source.query(`ALTER TABLE t_nokey ADD PRIMARY KEY (id)`);
    await source.query(/: (ALTER TABLE [^;]+);/.exec(rekeyed.fix!)![1]!);
    const fixed = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
    expect(find(fixed, 'tracked_tables').map((f) => f.status)).toEqual(['ok']);
  });

  it('a rename the agent cannot follow (not logged): renamed back, keeping the history, which says what it misses', async () => {
    const { source } = timewarp;
    if (agent === null) startAgent();
    await source.query(`CREATE TABLE t_unlogged_rename (id int PRIMARY KEY, v text)`);
    await source.query(`SELECT pgtimewarp_track('t_unlogged_rename')`);
    await caughtUp(source);
    // no DDL log entry, so no message for the agent (as before extension 0.3)
    await source.query(`ALTER EVENT TRIGGER pgtimewarp_table_renamed DISABLE`);
    try {
      await source.query(`ALTER TABLE t_unlogged_rename RENAME TO t_elsewhere`);
      await caughtUp(source);
      const report = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
      const renamed = one(report, 'tracked_tables');
      expect(renamed).toMatchObject({
        status: 'error',
        message: 'tracked table public.t_unlogged_rename was renamed: it is now public.t_elsewhere, and the rename was not logged for the agent ' +
          '(is the event trigger pgtimewarp_table_renamed enabled?)',
      });
      expect(renamed.fix).toMatch(/^Rename it back: ALTER TABLE public\.t_elsewhere RENAME TO t_unlogged_rename; recording goes on from then\. Its history misses the changes made under the new name/);
      expect(renamed.fix).not.toMatch(/forget/);
      await source.query(/^Rename it back: (ALTER TABLE [^;]+);/.exec(renamed.fix!)![1]!);
    } finally {
      await source.query(`ALTER EVENT TRIGGER pgtimewarp_table_renamed ENABLE`);
    }
    await caughtUp(source);
    expect(find(await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig }), 'tracked_tables').map((f) => f.status)).toEqual(['ok']);
  });

  it('a tracked table out of the publication: the fix adds it back, keeping its history, and says what it misses', async () => {
    const { source } = timewarp;
    if (agent === null) startAgent();
    await source.query(`CREATE TABLE t_pub (id int PRIMARY KEY, v text)`);
    await source.query(`INSERT INTO t_pub VALUES (1, 'before')`);
    await source.query(`SELECT pgtimewarp_track('t_pub')`);
    await source.query(`ALTER PUBLICATION pgtimewarp DROP TABLE t_pub`);
    await source.query(`UPDATE t_pub SET v = 'while out' WHERE id = 1`);

    const report = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
    const pub = one(report, 'publication');
    expect(pub).toMatchObject({ status: 'error', message: 'tracked table(s) not in publication pgtimewarp: public.t_pub' });
    expect(pub.fix).toMatch(/^Add them back: ALTER PUBLICATION "pgtimewarp" ADD TABLE public\.t_pub; recording goes on from then\. The changes made while they were out of the publication were not streamed/);
    expect(pub.fix).not.toMatch(/forget/);

    // followed: its history is kept, and what changes from then on is recorded
    await source.query(/^Add them back: ([^;]+);/.exec(pub.fix!)![1]!);
    await source.query(`UPDATE t_pub SET v = 'after' WHERE id = 1`);
    await caughtUp(source);
    const ops = await source.query<{ op: string; v: string | null }>(
      `SELECT op, row_data ->> 'v' AS v FROM pgtimewarp_diff_pk('t_pub', '{"id": 1}', (SELECT tracked_from_ts FROM pgtimewarp_status() WHERE table_name = 't_pub'), now())`,
    );
    expect(ops.rows).toEqual([{ op: 'baseline', v: 'before' }, { op: 'update', v: 'after' }]);
    const fixed = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
    expect(one(fixed, 'publication').status).toBe('ok');
  });

  it('an output plugin the server does not allow: an error whose fix names output_plugin_libraries, and works', async () => {
    const c = cluster();
    const other = await setupTimewarp(c, { sourceDb: 'w2j', storeDb: 'w2j_store', nodeId: 'w2j' });
    try {
      await other.source.query(`SELECT pg_create_logical_replication_slot('w2j_slot', 'wal2json')`);
      await c.psql(`ALTER SYSTEM SET output_plugin_libraries = 'pgoutput'`);
      await c.psql(`SELECT pg_reload_conf()`);
      await waitFor('the reload', async () => (await c.psql(`SHOW output_plugin_libraries`)).trim() === 'pgoutput');

      const report = await doctor({ source: other.sourceUrl, store: other.storeUrl, slot: 'w2j_slot', env: noConfig });
      const plugin = one(report, 'output_plugin_libraries');
      expect(plugin).toMatchObject({ status: 'error', figures: { plugin: 'wal2json', outputPluginLibraries: 'pgoutput' } });
      expect(plugin.message).toBe('output plugin wal2json (of slot "w2j_slot") is not in output_plugin_libraries (pgoutput)');
      expect(plugin.fix).toBe(`ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'wal2json'; SELECT pg_reload_conf();`);
      expect(report.healthy).toBe(false);

      const cli = await runCli(['doctor', '--source', other.sourceUrl, '--store', other.storeUrl, '--slot', 'w2j_slot']);
      expect(cli.code).toBe(1);
      expect(cli.stdout).toMatch(/^\[FAIL\] output_plugin_libraries: .+\n {7}meaning: PostgreSQL refuses to decode WAL with wal2json.+\n {7}fix: ALTER SYSTEM SET output_plugin_libraries = /m);

      // the fix, statement by statement (ALTER SYSTEM refuses a transaction block)
      for (const statement of plugin.fix!.split(/;\s*/).filter(Boolean)) await c.psql(statement);
      await waitFor('the reload', async () => (await c.psql(`SHOW output_plugin_libraries`)).includes('wal2json'));
      const fixed = await doctor({ source: other.sourceUrl, store: other.storeUrl, slot: 'w2j_slot', env: noConfig });
      expect(one(fixed, 'output_plugin_libraries').status).toBe('ok');
      // and PostgreSQL agrees: the slot decodes again
      await other.source.query(`SELECT count(*) FROM pg_logical_slot_peek_changes('w2j_slot', NULL, 1)`);
    } finally {
      await c.psql(`ALTER SYSTEM RESET output_plugin_libraries`);
      await c.psql(`SELECT pg_reload_conf()`);
      await other.source.query(`SELECT pg_drop_replication_slot('w2j_slot')`).catch(() => undefined);
      await other.source.end();
    }
  });
});

describe('pgtimewarp doctor\'s store probe (fdw)', () => {
  /** Whether the installed extension has pgtimewarp_ping() (0.4 on). */
  async function hasPing(source: pg.Client): Promise<boolean> {
    const res = await source.query<{ ok: boolean }>(`SELECT to_regprocedure('pgtimewarp_ping()') IS NOT NULL AS ok`);
    return res.rows[0]!.ok;
  }

  async function fdwFinding(): Promise<Finding> {
    return one(await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig }), 'fdw');
  }

  it('asks pgtimewarp_ping() where the extension has it, else pgtimewarp_status()', async () => {
    const { source } = timewarp;
    const storeVersion = (await cluster().psql('SHOW server_version', 'store')).trim();
    const expectStatusProbe = async (): Promise<void> => {
      expect(await fdwFinding()).toMatchObject({
        status: 'ok', figures: { probe: 'pgtimewarp_status' },
        message: expect.stringMatching(/^the extension reaches the store through postgres_fdw \(pgtimewarp_status\(\) lists \d+ table\(s\) for this role\)$/),
      });
    };
    if (!(await hasPing(source))) {
      await expectStatusProbe();
      return;
    }
    expect(await fdwFinding()).toMatchObject({
      status: 'ok', figures: { probe: 'pgtimewarp_ping', storeServerVersion: storeVersion },
      message: `the extension reaches the store over its own connection (pgtimewarp_ping(): the store runs PostgreSQL ${storeVersion})`,
    });
    // as an extension older than 0.4 is: no pgtimewarp_ping()
    await source.query(`ALTER EXTENSION pgtimewarp DROP FUNCTION pgtimewarp_ping()`);
    await source.query(`ALTER FUNCTION pgtimewarp_ping() RENAME TO pgtimewarp_ping_hidden`);
    try {
      await expectStatusProbe();
    } finally {
      await source.query(`ALTER FUNCTION pgtimewarp_ping_hidden() RENAME TO pgtimewarp_ping`);
      await source.query(`ALTER EXTENSION pgtimewarp ADD FUNCTION pgtimewarp_ping()`);
    }
  });

  it('a store the extension cannot reach: the probe\'s error, with the fix for the foreign server', async () => {
    const { source } = timewarp;
    const ping = await hasPing(source);
    const port = (await source.query<{ port: string }>(
      `SELECT option_value AS port FROM pg_options_to_table((SELECT srvoptions FROM pg_foreign_server WHERE srvname = 'pgtimewarp_store'))
        WHERE option_name = 'port'`)).rows[0]!.port;
    await source.query(`ALTER SERVER pgtimewarp_store OPTIONS (SET port '1')`);
    try {
      const fdw = await fdwFinding();
      expect(fdw).toMatchObject({
        status: 'error', figures: { probe: ping ? 'pgtimewarp_ping' : 'pgtimewarp_status' },
        fix: expect.stringContaining('ALTER SERVER pgtimewarp_store OPTIONS'),
      });
      expect(fdw.message).toMatch(ping ? /^pgtimewarp_ping\(\) fails: could not reach the pgtimewarp store/ : /^pgtimewarp_status\(\) fails: .+/);
    } finally {
      await source.query(`ALTER SERVER pgtimewarp_store OPTIONS (SET port '${port}')`);
    }
    expect((await fdwFinding()).status).toBe('ok');
  });
});

describe('pgtimewarp doctor after the slot is lost', () => {
  it('says history has a gap, and its fix, followed step by step, records history again', async () => {
    const c = cluster();
    const gap = await setupTimewarp(c, { sourceDb: 'gap', storeDb: 'gap_store', nodeId: 'gap' });
    const slot = 'gap_slot';
    let stop = new AbortController();
    const run = (): Promise<void> => runAgent({
      sourceUrl: gap.sourceUrl, storeUrl: gap.storeUrl, nodeId: gap.nodeId, slot, plugin: 'pgoutput',
      signal: stop.signal, backoff: { initialMs: 100, maxMs: 1000 },
    });
    let running = run();
    const store = await c.connect('gap_store');
    try {
      const { source } = gap;
      const active = async (): Promise<boolean> =>
        (await source.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active`, [slot])).rowCount === 1;
      await waitFor('the agent\'s slot', active, 30_000);
      await source.query(`CREATE TABLE ledger (id int PRIMARY KEY, amount int)`);
      await source.query(`SELECT pgtimewarp_track('ledger')`);
      await source.query(`INSERT INTO ledger VALUES (1, 10)`);
      await caughtUp(source);
      stop.abort();
      await running;
      await waitFor('the slot to be released', async () => !(await active()), 30_000);
      await source.query(`SELECT pg_drop_replication_slot($1)`, [slot]);

      const report = await doctor({ source: gap.sourceUrl, store: gap.storeUrl, slot, env: noConfig });
      const lost = one(report, 'slot');
      expect(lost.status).toBe('error');
      expect(lost.message).toMatch(/^replication slot "gap_slot" does not exist, but the store has history up to [0-9A-F]+\/[0-9A-F]+$/);
      expect(lost.meaning).toMatch(/history has a gap/);
      const steps = [
        `SELECT pgtimewarp_untrack('public.ledger');`,
        `SELECT pgtimewarp_forget('public.ledger');`,
        `DELETE FROM pgtimewarp_store.wal_checkpoints WHERE node_id = 'gap';`,
        `SELECT pgtimewarp_track('public.ledger')`,
      ];
      for (const step of steps) expect(lost.fix).toContain(step);
      // forgetting is the only way on across this gap, and the fix says what it deletes, and how to keep a copy first
      expect(lost.fix).toMatch(/pgtimewarp_forget deletes all of a table's recorded history, so first keep a copy/);
      expect(lost.fix).toContain(`\\copy (SELECT * FROM pgtimewarp_store.row_history WHERE node_id = 'gap') TO`);
      expect(lost.fix!.indexOf('keep a copy')).toBeLessThan(lost.fix!.indexOf(steps[1]!));
      expect(lost.fix!.indexOf(steps[2]!)).toBeLessThan(lost.fix!.indexOf('start the agent'));
      expect(lost.fix!.indexOf('start the agent')).toBeLessThan(lost.fix!.indexOf(steps[3]!));

      // follow it: the agent (still stopped) would refuse to go on without it
      await source.query(steps[0]!);
      await source.query(steps[1]!);
      await store.query(steps[2]!);
      stop = new AbortController();
      running = run();
      await waitFor('the new slot', active, 30_000);
      await source.query(steps[3]!);
      await source.query(`UPDATE ledger SET amount = 20 WHERE id = 1`);
      await caughtUp(source);
      const after = await doctor({ source: gap.sourceUrl, store: gap.storeUrl, slot, env: noConfig });
      expect(notOk(after)).toEqual([]);
      const versions = await source.query<{ op: string }>(
        `SELECT op FROM pgtimewarp_diff_pk('ledger', '{"id": 1}', (SELECT tracked_from_ts FROM pgtimewarp_status()), now())`,
      );
      expect(versions.rows.map((r) => r.op)).toEqual(['baseline', 'update']);
    } finally {
      stop.abort();
      await running.catch(() => undefined);
      await store.end();
      await gap.source.end();
    }
  });
});

describe('pgtimewarp doctor while the agent retries', () => {
  let retry: Timewarp;
  const slot = 'retry_slot';
  const tempDirs: string[] = [];
  afterAll(async () => {
    await retry?.source.end();
    for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  });

  async function slotInactive(): Promise<boolean> {
    return (await retry.source.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND NOT active`, [slot])).rowCount === 1;
  }

  beforeAll(async () => {
    retry = await setupTimewarp(cluster(), { sourceDb: 'retry', storeDb: 'retry_store', nodeId: 'retry' });
    // a first run makes the slot and a checkpoint
    const stop = new AbortController();
    const running = runAgent({ sourceUrl: retry.sourceUrl, storeUrl: retry.storeUrl, nodeId: 'retry', slot, plugin: 'pgoutput', signal: stop.signal });
    await waitFor('the agent\'s slot', async () =>
      (await retry.source.query(`SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active`, [slot])).rowCount === 1, 30_000);
    await retry.source.query(`CREATE TABLE r (id int PRIMARY KEY)`);
    await retry.source.query(`SELECT pgtimewarp_track('r')`);
    await caughtUp(retry.source);
    stop.abort();
    await running;
    await waitFor('the slot to be released', slotInactive, 30_000);
  });

  it('that cannot reach the source: running and retrying, with the reason it recorded; not "not running"', async () => {
    const stop = new AbortController();
    const running = runAgent({
      sourceUrl: 'postgresql://postgres@127.0.0.1:1/retry', storeUrl: retry.storeUrl, nodeId: 'retry', slot, plugin: 'pgoutput',
      signal: stop.signal, backoff: { initialMs: 200, maxMs: 1000 },
    });
    try {
      const store = await cluster().connect('retry_store');
      await waitFor('a retry in the health events', async () =>
        (await store.query(`SELECT 1 FROM pgtimewarp_store.health_events WHERE node_id = 'retry' AND kind = 'agent_retry'`)).rowCount! > 0, 30_000);
      await store.end();

      const report = await doctor({ source: retry.sourceUrl, store: retry.storeUrl, slot, env: noConfig });
      const slotActive = one(report, 'slot_active');
      expect(slotActive).toMatchObject({ status: 'error', figures: { active: false, retrying: true } });
      expect(slotActive.message).toMatch(
        /^the agent is running but not reading replication slot "retry_slot": it is retrying after an error \(last at .+, health event agent_retry\): .*ECONNREFUSED 127\.0\.0\.1:1/,
      );
      expect(slotActive.fix).toMatch(/^Remove the cause the error names .*; the agent tries again by itself/);
      expect(JSON.stringify(report)).not.toMatch(/the agent is not running|Start the agent/);
    } finally {
      stop.abort();
      await running.catch(() => undefined);
    }
  });

  it('in the background, unable to reach the store: running (its pid) and retrying, from its log; once stopped, not running', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pgtimewarp-doctor-'));
    tempDirs.push(dir);
    const files: AgentFiles = {
      pidFile: join(dir, 'agent.pid'), logFile: join(dir, 'agent.log'), envFile: join(dir, 'agent.env'),
      unitName: 'pgtimewarp-agent-retry.service', unitFile: join(dir, 'agent.service'),
    };
    const spec = { nodeId: 'retry', slot, plugin: 'pgoutput' as const, sourceUrl: retry.sourceUrl, storeUrl: 'postgresql://postgres@127.0.0.1:1/retry_store' };
    const config = join(dir, 'config.json');
    writeConfig({
      version: 1, sourceUrl: retry.sourceUrl, storeUrl: retry.storeUrl, nodeId: 'retry', slot, plugin: 'pgoutput',
      agent: 'background', pidFile: files.pidFile, logFile: files.logFile,
    }, config);
    const agentProcess = spawnBackgroundAgent(spec, files);
    try {
      await waitFor('the agent to retry', async () => /"event":"retry"/.test(await agentProcess.output()), 30_000);
      const report = await doctor({ env: { PGTIMEWARP_CONFIG: config } });
      const slotActive = one(report, 'slot_active');
      expect(slotActive).toMatchObject({ status: 'error', figures: { active: false, retrying: true, agentPid: agentProcess.pid } });
      expect(slotActive.message).toMatch(new RegExp(
        `^the agent is running \\(pid ${agentProcess.pid}\\) but not reading replication slot "retry_slot": it is retrying after an error ` +
          `\\(last at \\S+, its log ${files.logFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\): .*ECONNREFUSED 127\\.0\\.0\\.1:1`,
      ));
    } finally {
      await stopBackgroundAgent(files, spec);
    }
    // its process gone: not running, whatever its log and the health events said last
    const report = await doctor({ env: { PGTIMEWARP_CONFIG: config } });
    expect(one(report, 'slot_active').message).toBe('nothing is reading replication slot "retry_slot": the agent is not running or not connected');
    expect(one(report, 'slot_active').fix).toMatch(/^See why the agent stopped in /);
  });
});

describe('pgtimewarp doctor on a half-installed system', () => {
  it('wal_level=replica and no extension: errors with their fixes; the rest reported as not checked', async () => {
    const bare = await startCluster({ settings: { wal_level: 'replica' } });
    try {
      const report = await doctor({ source: bare.url('postgres'), env: noConfig });
      expect(report.healthy).toBe(false);
      expect(one(report, 'wal_level')).toMatchObject({
        status: 'error', message: 'wal_level is replica, not logical',
        fix: 'ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL (a reload is not enough).',
      });
      expect(one(report, 'extension')).toMatchObject({ status: 'error', fix: expect.stringMatching(/^Run "pgtimewarp install"/) });
      expect(one(report, 'store_connection')).toMatchObject({ status: 'error', message: 'no store database given' });
      expect(one(report, 'fdw')).toMatchObject({ status: 'error', blockedBy: 'extension' });
      expect(one(report, 'health_events')).toMatchObject({ status: 'error', blockedBy: 'store_connection' });
      // every check is reported, none crashed
      expect(report.findings.filter((f) => /the check failed/.test(f.message))).toEqual([]);
    } finally {
      await bare.stop();
    }
  });

  it('nothing reachable: one finding per check, exit 1, no stack trace', async () => {
    const report = await doctor({ source: 'postgresql://nobody:secret@127.0.0.1:1/none', store: 'postgresql://nobody@127.0.0.1:1/none', env: noConfig });
    expect(one(report, 'source_connection').message).toMatch(/^could not connect to the source database postgresql:\/\/nobody:\*\*\*@127\.0\.0\.1:1\/none \(from --source\): .*ECONNREFUSED/);
    expect(one(report, 'slot')).toMatchObject({ status: 'error', blockedBy: 'source_connection' });
    expect(JSON.stringify(report)).not.toContain('secret');

    const config = absentConfigPath();
    writeFileSync(config, 'not json');
    const cli = await runCli(['doctor', '--source', 'postgresql://nobody@127.0.0.1:1/none'], cleanEnv({ PGTIMEWARP_CONFIG: config }));
    expect(cli.code).toBe(1);
    expect(cli.stderr).toBe('');
    expect(cli.stdout).toMatch(/^\[FAIL\] config: config file .+ is not valid JSON/m);
    expect(cli.stdout).toMatch(/^\[FAIL\] not checked until source_connection is fixed: wal_level, extension, slot, /m);
  });
});
