// pgtimewarp doctor against real clusters in the states it must tell apart:
// healthy (agent streaming, caught up), the agent stopped, the slot lagging,
// the slot's output plugin not allowed, tracked tables renamed, dropped or
// without their key, and a half-installed system.  Mostly through the plain
// function; the real CLI for the exit codes and the printed report.

import { writeFileSync } from 'node:fs';

import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { runAgent } from '../../agent/run.js';
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

  it('tracked tables renamed, dropped or without their primary key', async () => {
    const { source } = timewarp;
    if (agent === null) startAgent(); // whatever the test before left, the agent must be reading
    for (const t of ['t_renamed', 't_dropped', 't_nokey']) {
      await source.query(`CREATE TABLE ${t} (id int PRIMARY KEY, v text)`);
      await source.query(`SELECT pgtimewarp_track('${t}')`);
    }
    await source.query(`ALTER TABLE t_renamed RENAME TO t_new_name`);
    await source.query(`DROP TABLE t_dropped`);
    await source.query(`ALTER TABLE t_nokey DROP CONSTRAINT t_nokey_pkey`);

    const report = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
    const tables = find(report, 'tracked_tables');
    expect(tables.map((f) => [f.figures?.['table'], f.status])).toEqual([
      ['public.t_dropped', 'warning'],
      ['public.t_nokey', 'error'],
      ['public.t_renamed', 'error'],
    ]);
    const renamed = tables[2]!;
    expect(renamed.message).toBe('tracked table public.t_renamed was renamed: it is now public.t_new_name');
    expect(renamed.fix).toMatch(/^Rename it back now: ALTER TABLE public\.t_new_name RENAME TO t_renamed\./);
    expect(tables[1]!.fix).toBe('Add the primary key back: ALTER TABLE public.t_nokey ADD PRIMARY KEY (id).');
    expect(report.healthy).toBe(false);

    // the agent notices too, and doctor shows what it recorded
    const events = await waitFor('the agent\'s health events', async () => {
      const r = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
      const f = one(r, 'health_events');
      return f.status === 'warning' && /tracked_table_missing/.test(f.message) && /tracked_table_without_pk/.test(f.message) ? f : undefined;
    }, 30_000);
    expect(events.fix).toMatch(/^Read them in the store: SELECT \* FROM pgtimewarp_store\.health_events WHERE node_id = 'e2e'/);

    // the fixes: the key back, the name back, the dropped one untracked in the store
    await source.query(`ALTER TABLE t_nokey ADD PRIMARY KEY (id)`);
    await source.query(`ALTER TABLE t_new_name RENAME TO t_renamed`);
    const fixed = await doctor({ source: timewarp.sourceUrl, store: timewarp.storeUrl, env: noConfig });
    expect(find(fixed, 'tracked_tables').map((f) => f.status)).toEqual(['warning']);
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
