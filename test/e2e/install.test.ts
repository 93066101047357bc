// `pgtimewarp install` and `pgtimewarp uninstall`, run as the real CLI (from
// source, through tsx) against throwaway clusters (the source database and
// the store on one server, then on two):
//   - --dry-run on a fresh cluster prints the plan and touches nothing;
//   - install sets everything up, with least-privilege roles and a background
//     agent, and time travel then works end to end;
//   - a second install changes nothing and says so, and one after an agent
//     crash and lost privileges puts back just those (history goes on);
//   - uninstall leaves no agent, slot, publication, foreign server, extension,
//     role or config file, and keeps the history; a second uninstall is a no-op;
//   - against wal_level=replica, install fails with the fix (ALTER SYSTEM and
//     a restart) and changes nothing; with --restart it makes the change and
//     restarts the server itself (here with wal2json, no agent, and the store
//     on another server, so each server gets only the roles it needs);
//     uninstall --drop-store then clears both servers;
//   - under log_statement = all, neither install nor a rerun that repairs
//     drifted passwords leaves a generated password in the server log, and
//     a failing statement that carries one is not echoed there either.
//
// Each install writes its config (and the agent's pid and log files) into a
// temp dir through PGTIMEWARP_CONFIG, never /etc.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { queryUnlogged } from '../../installer/install-sql.js';
import { startCluster, type Cluster } from '../support/cluster.js';
import { alive } from '../support/process.js';
import { parsedJson, type InstallStep } from '../support/run-cli.js';
import { useCluster } from '../support/use-cluster.js';
import { waitFor } from '../support/wait.js';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const cluster = useCluster();

interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run `pgtimewarp <args>` with its config in `configDir`, and no PG* or PGTIMEWARP_* settings of ours leaking in. */
function cli(args: string[], configDir: string): Promise<CliRun> {
  const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PG')));
  env['PGTIMEWARP_CONFIG'] = join(configDir, 'config.json');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'installer/cli.ts', ...args], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

interface InstallJson {
  ok: boolean;
  changed: boolean;
  dryRun: boolean;
  message: string;
  steps: InstallStep[];
  nodeId: string;
  agent: { mode: string; pid?: number; pidFile?: string; logFile?: string; envFile?: string };
}


function statusOf(result: { steps: InstallStep[] }, id: string): string | undefined {
  return result.steps.find((s) => s.id === id)?.status;
}

/** One value from the cluster, as text ('' for NULL or no row). */
async function value(c: Cluster, sql: string, db = 'postgres'): Promise<string> {
  return (await c.psql(sql, db)).trim();
}

/** What install creates, as seen on a cluster: empty strings / zeros when nothing is there. */
async function footprint(c: Cluster, sourceDb: string, storeDb: string): Promise<Record<string, string>> {
  return {
    storeDatabase: await value(c, `SELECT count(*) FROM pg_database WHERE datname = '${storeDb}'`),
    roles: await value(c, `SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'pgtimewarp%'`),
    slots: await value(c, `SELECT count(*) FROM pg_replication_slots`),
    publications: await value(c, `SELECT count(*) FROM pg_publication`, sourceDb),
    extensions: await value(c, `SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension WHERE extname <> 'plpgsql'`, sourceDb),
    foreignServers: await value(c, `SELECT count(*) FROM pg_foreign_server`, sourceDb),
  };
}

const NOTHING: Record<string, string> = { storeDatabase: '0', roles: '', slots: '0', publications: '0', extensions: '', foreignServers: '0' };

const tempDirs: string[] = [];
const agentPids = new Set<number>();
afterAll(() => {
  // an agent left behind by a failed test must not outlive the run
  for (const pid of agentPids) if (alive(pid)) process.kill(pid, 'SIGKILL');
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgtimewarp-install-'));
  tempDirs.push(dir);
  return dir;
}

describe('pgtimewarp install and uninstall on a fresh cluster', () => {
  const configDir = tempDir();
  const sourceDb = 'app';
  const storeDb = 'history';
  let sourceUrl = '';
  let storeUrl = '';
  let installed: InstallJson;

  it('--dry-run prints the plan and touches nothing', async () => {
    const c = cluster();
    await c.psql(`CREATE DATABASE ${sourceDb}`);
    sourceUrl = c.url(sourceDb);
    storeUrl = c.url(storeDb);

    const run = await cli(['install', '--source', sourceUrl, '--store', storeUrl, '--agent', 'background', '--dry-run', '--json'], configDir);
    expect(run.code, run.stderr).toBe(0);
    const plan = parsedJson<InstallJson>(run);
    expect(plan.dryRun).toBe(true);
    expect(plan.changed).toBe(true);
    for (const id of ['config', 'store-database', 'store-schema', 'roles', 'grants', 'publication', 'slot', 'extension', 'fdw-server', 'user-mapping', 'node', 'agent']) {
      expect(statusOf(plan, id), id).toBe('would-change');
    }
    expect(plan.message).toMatch(/nothing was changed/);

    expect(await footprint(c, sourceDb, storeDb)).toEqual(NOTHING);
    expect(existsSync(join(configDir, 'config.json'))).toBe(false);
    expect(existsSync(plan.agent.pidFile!)).toBe(false);
  });

  it('installs everything, with least-privilege roles and a background agent', async () => {
    const c = cluster();
    const run = await cli(['install', '--source', sourceUrl, '--store', storeUrl, '--agent', 'background', '--yes', '--json'], configDir);
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
    installed = parsedJson<InstallJson>(run);
    expect(installed.changed).toBe(true);
    for (const id of ['config', 'store-database', 'store-schema', 'roles', 'grants', 'publication', 'slot', 'extension', 'fdw-server', 'user-mapping', 'node', 'agent']) {
      expect(statusOf(installed, id), id).toBe('changed');
    }
    expect(statusOf(installed, 'verify')).toBe('unchanged');
    const pid = installed.agent.pid!;
    agentPids.add(pid);
    expect(alive(pid)).toBe(true);
    expect(readFileSync(installed.agent.pidFile!, 'utf8').trim()).toBe(String(pid));

    const footprintNow = await footprint(c, sourceDb, storeDb);
    expect(footprintNow).toEqual({
      storeDatabase: '1', roles: 'pgtimewarp_agent,pgtimewarp_fdw', slots: '1', publications: '1',
      extensions: 'pgtimewarp,postgres_fdw', foreignServers: '1',
    });
    // the config file holds passwords: its owner's only
    const configFile = join(configDir, 'config.json');
    expect(statSync(configFile).mode & 0o777).toBe(0o600);
    const config = JSON.parse(readFileSync(configFile, 'utf8')) as Record<string, string>;
    expect(config['nodeId']).toBe(installed.nodeId);
    expect(config['agentSourceUrl']).toContain('pgtimewarp_agent:');

    // roles: the agent may replicate and nothing more on the source; neither is a superuser
    expect(await value(c, `SELECT string_agg(format('%s:%s:%s:%s', rolname, rolsuper, rolreplication, rolcanlogin), ' ' ORDER BY rolname)
                             FROM pg_roles WHERE rolname LIKE 'pgtimewarp%'`))
      .toBe('pgtimewarp_agent:f:t:t pgtimewarp_fdw:f:f:t');
    // the extension reaches the store as pgtimewarp_fdw only, through its owner's mapping, at the store's address
    expect(await value(c, `SELECT string_agg(usename || ' ' || array_to_string(umoptions, ','), ';') FROM pg_user_mappings WHERE srvname = 'pgtimewarp_store'`, sourceDb))
      .toMatch(/^postgres user=pgtimewarp_fdw,password=[0-9a-f]{48}$/);
    expect(await value(c, `SELECT array_to_string(srvoptions, ',') FROM pg_foreign_server WHERE srvname = 'pgtimewarp_store'`, sourceDb))
      .toContain(`host=${c.host},port=${c.port},dbname=${storeDb}`);
    // pgtimewarp_fdw writes what track/untrack/forget write, and no more
    const privileges = await value(c, `SELECT string_agg(format('%s.%s', t, p), ' ' ORDER BY t, p) FROM
        unnest(ARRAY['nodes','tracked_relations','row_versions','relation_stats','lsn_time_map','wal_checkpoints','health_events']) t,
        unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE']) p
       WHERE has_table_privilege('pgtimewarp_fdw', 'pgtimewarp_store.' || t, p)`, storeDb);
    expect(privileges).toBe(
      'health_events.SELECT lsn_time_map.SELECT nodes.INSERT nodes.SELECT ' +
        'relation_stats.DELETE relation_stats.INSERT relation_stats.SELECT relation_stats.UPDATE ' +
        'row_versions.DELETE row_versions.INSERT row_versions.SELECT ' +
        'tracked_relations.DELETE tracked_relations.INSERT tracked_relations.SELECT tracked_relations.UPDATE wal_checkpoints.SELECT',
    );
    expect(await value(c, `SELECT node_id FROM pgtimewarp.config`, sourceDb)).toBe(installed.nodeId);
    expect(await value(c, `SELECT count(*) FROM pgtimewarp_store.nodes WHERE node_id = '${installed.nodeId}'`, storeDb)).toBe('1');
    // the agent streams as its own role
    await waitFor('the agent to stream', async () => (await value(c, `SELECT usename FROM pg_stat_replication`)) === 'pgtimewarp_agent');
  });

  it('time travel works end to end', async () => {
    const c = cluster();
    const app = await c.connect(sourceDb);
    await app.query(`CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL)`);
    await app.query(`INSERT INTO accounts VALUES (1, 'alice', 100.00), (2, 'bob', 50)`);
    await app.query(`SELECT pgtimewarp_track('accounts')`);
    const before = (await app.query<{ t: string }>(`SELECT clock_timestamp()::text AS t`)).rows[0]!.t;
    await new Promise((resolve) => setTimeout(resolve, 20)); // the changes commit strictly later
    await app.query(`UPDATE accounts SET balance = balance + 20 WHERE id = 1`);
    await app.query(`DELETE FROM accounts WHERE id = 2`);
    const end = (await app.query<{ lsn: string }>(`SELECT pg_current_wal_insert_lsn()::text AS lsn`)).rows[0]!.lsn;

    await waitFor('the agent to store the changes', async () => (await value(c,
      `SELECT confirmed_lsn >= '${end}' FROM pgtimewarp_store.wal_checkpoints WHERE node_id = '${installed.nodeId}'`, storeDb)) === 't', 20_000);

    const asof = async (id: number, at: string): Promise<unknown> =>
      (await app.query<{ row: unknown }>(`SELECT pgtimewarp_asof_pk('accounts', $1, $2::timestamptz) AS row`, [JSON.stringify({ id }), at])).rows[0]!.row;
    const now = (await app.query<{ t: string }>(`SELECT clock_timestamp()::text AS t`)).rows[0]!.t;
    expect(await asof(1, before)).toEqual({ id: 1, owner: 'alice', balance: 100.0 });
    expect(await asof(2, before)).toEqual({ id: 2, owner: 'bob', balance: 50 });
    expect(await asof(1, now)).toEqual({ id: 1, owner: 'alice', balance: 120.0 });
    expect(await asof(2, now)).toBeNull();
    await app.end();
  });

  it('a second install changes nothing and says so', async () => {
    const c = cluster();
    const passwords = await value(c, `SELECT string_agg(rolpassword, ' ' ORDER BY rolname) FROM pg_authid WHERE rolname LIKE 'pgtimewarp%'`);
    const slot = await value(c, `SELECT slot_name || ' ' || restart_lsn FROM pg_replication_slots`);

    // connections from the config file this time, and the text output a person reads
    const text = await cli(['install', '--yes'], configDir);
    expect(text.code, `${text.stdout}\n${text.stderr}`).toBe(0);
    expect(text.stdout).toContain('nothing to do: pgtimewarp is installed and up to date');
    expect(text.stdout).not.toMatch(/: (created|wrote|started|set |granted|applied)/);

    const run = await cli(['install', '--json'], configDir);
    expect(run.code, run.stderr).toBe(0);
    const again = parsedJson<InstallJson>(run);
    expect(again.changed).toBe(false);
    expect(again.steps.filter((s) => s.status !== 'unchanged' && s.status !== 'skipped')).toEqual([]);
    expect(again.nodeId).toBe(installed.nodeId);
    expect(again.agent.pid).toBe(installed.agent.pid); // the same agent process, left alone

    expect(await value(c, `SELECT string_agg(rolpassword, ' ' ORDER BY rolname) FROM pg_authid WHERE rolname LIKE 'pgtimewarp%'`)).toBe(passwords);
    expect(await value(c, `SELECT slot_name FROM pg_replication_slots`)).toBe(slot.split(' ')[0]);
    expect(await value(c, `SELECT count(*) FROM pg_replication_slots`)).toBe('1');
    // the version the control file names (extension/pgtimewarp.control), the one place it lives
    expect(await value(c, `SELECT extversion FROM pg_extension WHERE extname = 'pgtimewarp'`, sourceDb))
      .toBe(await value(c, `SELECT default_version FROM pg_available_extensions WHERE name = 'pgtimewarp'`, sourceDb));
  });

  it('a rerun puts back exactly what went missing', async () => {
    const c = cluster();
    // the agent dies, the user mapping and one of the FDW role's privileges are lost
    process.kill(installed.agent.pid!, 'SIGKILL');
    await waitFor('the agent to die', () => !alive(installed.agent.pid!), 5_000);
    await c.psql('DROP USER MAPPING FOR postgres SERVER pgtimewarp_store', sourceDb);
    await c.psql('REVOKE INSERT ON pgtimewarp_store.nodes FROM pgtimewarp_fdw', storeDb);

    const run = await cli(['install', '--json'], configDir);
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
    const repaired = parsedJson<InstallJson>(run);
    expect(repaired.steps.filter((s) => s.status === 'changed').map((s) => s.id)).toEqual(['grants', 'user-mapping', 'agent']);
    expect(repaired.steps.find((s) => s.id === 'grants')!.detail).toContain('INSERT on nodes to pgtimewarp_fdw');
    expect(repaired.agent.pid).not.toBe(installed.agent.pid);
    agentPids.add(repaired.agent.pid!);
    installed = repaired;

    // and history goes on from the checkpoint: a change made while nothing ran is recorded
    const app = await c.connect(sourceDb);
    await app.query(`UPDATE accounts SET owner = 'alice b.' WHERE id = 1`);
    await waitFor('the agent to record the change', async () =>
      ((await app.query<{ row: { owner: string } | null }>(`SELECT pgtimewarp_asof_pk('accounts', '{"id": 1}', clock_timestamp()) AS row`)).rows[0]!.row?.owner) === 'alice b.', 20_000);
    await app.end();
  });

  it('uninstall removes the agent, slot, publication, foreign server, extension, roles and config; the history stays', async () => {
    const c = cluster();
    const run = await cli(['uninstall', '--yes', '--json'], configDir);
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
    const result = parsedJson<{ changed: boolean; steps: InstallStep[]; message: string }>(run);
    expect(result.changed).toBe(true);
    expect(statusOf(result, 'store')).toBe('skipped');
    expect(result.message).toMatch(/history stays in the store/);

    await waitFor('the agent to exit', () => !alive(installed.agent.pid!), 5_000);
    expect(existsSync(installed.agent.pidFile!)).toBe(false);
    expect(existsSync(join(configDir, 'config.json'))).toBe(false);
    // only the store database is left, with the history in it
    expect(await footprint(c, sourceDb, storeDb)).toEqual({ ...NOTHING, storeDatabase: '1' });
    expect(await value(c, `SELECT count(*) FROM pgtimewarp_store.row_history WHERE table_name = 'accounts'`, storeDb)).toBe('5');

    // nothing left to do, however often it runs (the config file is gone: flags now)
    const again = await cli(['uninstall', '--source', sourceUrl, '--store', storeUrl, '--json'], configDir);
    expect(again.code, again.stderr).toBe(0);
    const second = parsedJson<{ changed: boolean; steps: InstallStep[]; message: string }>(again);
    expect(second.changed).toBe(false);
    expect(second.message).toMatch(/^nothing to do/);
  });
});

describe('pgtimewarp install against wal_level = replica, with the store on another server', () => {
  let replica: Cluster | undefined;
  afterAll(async () => {
    await replica?.stop();
  });

  it('fails with the fix and changes nothing; --restart makes the change itself', async () => {
    replica = await startCluster({ settings: { wal_level: 'replica' } });
    const c = replica;
    const storeServer = cluster(); // its pgtimewarp roles are gone: the first describe uninstalled
    const configDir = tempDir();
    await c.psql('CREATE DATABASE app');
    const args = ['install', '--source', c.url('app'), '--store', storeServer.url('elsewhere'), '--yes'];

    const refused = await cli(args, configDir);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('wal_level is replica');
    expect(refused.stderr).toContain('ALTER SYSTEM SET wal_level = logical');
    expect(refused.stderr).toMatch(/restart PostgreSQL \(.*pg_ctl restart -D .*\); a reload is not enough/);
    expect(refused.stderr).toContain('--restart');
    // one clean error from the command (the task list above it shows only its first line)
    expect(refused.stderr.match(/^pgtimewarp: .*/gm)).toEqual(['pgtimewarp: cannot install: 1 problem to fix first (nothing was changed):']);
    expect(await footprint(c, 'app', 'elsewhere')).toEqual(NOTHING);
    expect(await footprint(storeServer, 'postgres', 'elsewhere')).toEqual({ ...NOTHING, storeDatabase: '0' });
    expect(await value(c, 'SHOW wal_level')).toBe('replica');
    expect(existsSync(join(configDir, 'config.json'))).toBe(false);

    const run = await cli([...args, '--restart', '--plugin', 'wal2json', '--agent', 'none', '--json'], configDir);
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
    const result = parsedJson<InstallJson>(run);
    expect(statusOf(result, 'settings')).toBe('changed');
    expect(statusOf(result, 'publication')).toBe('skipped'); // wal2json needs none
    expect(statusOf(result, 'verify')).toBe('unchanged'); // postgres_fdw and the agent's role reach the other server
    expect(statusOf(result, 'agent')).toBe('changed'); // its environment file, for the agent you run
    expect(await value(c, 'SHOW wal_level')).toBe('logical');
    expect(await value(c, `SELECT plugin FROM pg_replication_slots`)).toBe('wal2json');
    expect(statSync(result.agent.envFile!).mode & 0o777).toBe(0o600);
    expect(readFileSync(result.agent.envFile!, 'utf8')).toMatch(/^PGTIMEWARP_SOURCE_URL='postgresql:\/\/pgtimewarp_agent:[0-9a-f]+@/m);
    // each server has the roles it needs: the agent may replicate only from the source
    const roles = `SELECT string_agg(rolname || ':' || rolreplication, ' ' ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'pgtimewarp%'`;
    expect(await value(c, roles)).toBe('pgtimewarp_agent:true');
    expect(await value(storeServer, roles)).toBe('pgtimewarp_agent:false pgtimewarp_fdw:false');

    // and uninstall --drop-store clears both servers
    const gone = await cli(['uninstall', '--drop-store', '--yes', '--json'], configDir);
    expect(gone.code, `${gone.stdout}\n${gone.stderr}`).toBe(0);
    expect(statusOf(parsedJson<{ steps: InstallStep[] }>(gone), 'store')).toBe('changed');
    expect(await footprint(c, 'app', 'elsewhere')).toEqual(NOTHING);
    expect(await footprint(storeServer, 'postgres', 'elsewhere')).toEqual({ ...NOTHING, storeDatabase: '0' });
    expect(existsSync(result.agent.envFile!)).toBe(false);
  });
});

describe('passwords never reach the server log', () => {
  let logged: Cluster | undefined;
  afterAll(async () => {
    await logged?.stop();
  });

  it('install, and reruns that repair drifted passwords, log their statements but no password', async () => {
    // every statement logged; one that is not logged as a statement gets its text logged with its
    // duration; a failing one is echoed
    logged = await startCluster({ settings: { log_statement: 'all', log_min_duration_statement: '0', log_min_error_statement: 'error' } });
    const c = logged;
    const configDir = tempDir();
    await c.psql('CREATE DATABASE app');
    const args = ['install', '--source', c.url('app'), '--store', c.url('history'), '--agent', 'none', '--yes', '--json'];
    const first = await cli(args, configDir);
    expect(first.code, `${first.stdout}\n${first.stderr}`).toBe(0);
    const config = JSON.parse(readFileSync(join(configDir, 'config.json'), 'utf8')) as { agentPassword: string; fdwPassword: string };
    const passwords = [config.agentPassword, config.fdwPassword];
    expect(passwords.every((p) => /^[0-9a-f]{48}$/.test(p))).toBe(true);

    // the user mapping's and the roles' passwords changed behind install's back: the rerun sets them again
    await c.psql(`ALTER USER MAPPING FOR postgres SERVER pgtimewarp_store OPTIONS (SET password 'drifted')`, 'app');
    await c.psql(`ALTER ROLE pgtimewarp_agent PASSWORD 'drifted'`);
    await c.psql(`ALTER ROLE pgtimewarp_fdw PASSWORD 'drifted'`);
    const repair = await cli(args, configDir);
    expect(repair.code, `${repair.stdout}\n${repair.stderr}`).toBe(0);
    expect(parsedJson<InstallJson>(repair).steps.filter((s) => s.status === 'changed').map((s) => s.id)).toEqual(['roles', 'user-mapping']);
    expect(await value(c, `SELECT array_to_string(umoptions, ',') FROM pg_user_mappings WHERE srvname = 'pgtimewarp_store'`, 'app'))
      .toBe(`user=pgtimewarp_fdw,password=${config.fdwPassword}`);
    // and the mapping gone altogether: made again
    await c.psql('DROP USER MAPPING FOR postgres SERVER pgtimewarp_store', 'app');
    const remake = await cli(args, configDir);
    expect(remake.code, `${remake.stdout}\n${remake.stderr}`).toBe(0);
    expect(statusOf(parsedJson<InstallJson>(remake), 'user-mapping')).toBe('changed');

    // a statement carrying a password that fails: the error says why, and neither it nor the log repeats the password
    const client = await c.connect('app');
    const failed = await queryUnlogged(client, `ALTER USER MAPPING FOR postgres SERVER no_such_server OPTIONS (SET password 'failing-${passwords[0]}')`)
      .then(() => null, (err: unknown) => err);
    expect(String(failed)).toMatch(/server "no_such_server" does not exist/);
    expect(String(failed)).not.toContain(passwords[0]);
    // the session's settings are as they were
    expect((await client.query<{ s: string }>(`SELECT current_setting('log_statement') AS s`)).rows[0]!.s).toBe('all');
    await client.query(`SELECT 'after the secret' AS marker`);

    // lookups connect to the store with the user mapping's password (extension 0.4's own
    // connection): it is in no log line, nor in pg_stat_activity, where the connection shows
    // as application pgtimewarp
    await client.query('CREATE TABLE secrets_kept (id int PRIMARY KEY, v text)');
    await client.query(`INSERT INTO secrets_kept VALUES (1, 'x')`);
    await client.query(`SELECT pgtimewarp_track('secrets_kept')`);
    expect((await client.query<{ v: string }>(`SELECT pgtimewarp_asof_pk('secrets_kept', '{"id": 1}', now()) ->> 'v' AS v`)).rows[0]!.v).toBe('x');
    expect((await client.query('SELECT * FROM pgtimewarp_asof_table(NULL::secrets_kept, now())')).rows).toEqual([{ id: 1, v: 'x' }]);
    const activity = await c.connect('app');
    const storeSessions = async (): Promise<string[]> =>
      (await activity.query<{ row: string }>(`SELECT a::text AS row FROM pg_stat_activity a WHERE application_name = 'pgtimewarp'`)).rows.map((r) => r.row);
    const sessions = await storeSessions();
    expect(sessions).toHaveLength(1);
    for (const row of sessions) for (const password of passwords) expect(row).not.toContain(password);
    // a changed user mapping: the next transaction connects again with it
    await queryUnlogged(activity, `ALTER USER MAPPING FOR postgres SERVER pgtimewarp_store OPTIONS (SET password '${config.fdwPassword}')`);
    expect((await client.query<{ v: string }>(`SELECT pgtimewarp_asof_pk('secrets_kept', '{"id": 1}', now()) ->> 'v' AS v`)).rows[0]!.v).toBe('x');
    const after = await storeSessions();
    expect(after).toHaveLength(1);
    expect(after[0]!.split(',')[2]).not.toBe(sessions[0]!.split(',')[2]);
    await activity.end();
    await client.end();

    const log = readFileSync(c.logFile, 'utf8');
    // statements are logged, install's own and the failing one's error
    expect(log).toContain(`statement: ALTER USER MAPPING FOR postgres SERVER pgtimewarp_store OPTIONS (SET password 'drifted')`);
    expect(log).toMatch(/statement: CREATE EXTENSION pgtimewarp CASCADE/);
    expect(log).toMatch(/duration: [0-9.]+ ms$/m);
    expect(log).toContain('ERROR:  server "no_such_server" does not exist');
    expect(log).toContain(`statement: SELECT 'after the secret' AS marker`);
    for (const password of passwords) expect(log).not.toContain(password);
  });
});
