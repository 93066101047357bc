// The installer's pure pieces, without a server: the judgement of the
// prerequisites (what is wrong and its exact fix), the systemd unit and the
// environment file (systemd is not running on the test machines, so the
// unit is checked here, as text, and its start against a stand-in for
// systemctl and journalctl), the wait for a started agent to stream, the
// SCRAM verifiers the roles get, the derived node id and the agent's URLs,
// how URLs are printed without their passwords, and how a database restored
// from a dump is told from one whose table was dropped and created again.

import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';

import {
  envFileText, installSystemdAgent, pendingRetry, startOutcome, systemdUnitText, waitUntilStreaming, type AgentFiles, type CommandRunner,
} from '../../installer/agent-service.js';
import { deriveNodeId } from '../../installer/install.js';
import { redactUrl, urlWithCredentials } from '../../installer/install-sql.js';
import { planAttach, type Incarnation } from '../../installer/install-restore.js';
import {
  findProblems, formatProblems, nodeSource, type BuildTools, type Choices, type NodeRecord, type SourceFacts, type StoreFacts,
} from '../../installer/prereq.js';
import { describeConnection } from '../../installer/query-connection.js';
import { passwordMatches, scramVerifier, storeGrants } from '../../installer/roles.js';

const params = { host: '127.0.0.1', port: 5432, database: 'app', user: 'postgres', password: undefined };

function source(over: Partial<SourceFacts> = {}): SourceFacts {
  return {
    params, currentUser: 'postgres', isSuperuser: true, serverVersionNum: 150020, major: 15,
    systemIdentifier: '7300000000000000001', database: 'app', databaseOid: '16384', walLsn: '0/5000000', port: '5432', dataDirectory: '/var/lib/postgresql/15/main',
    walLevel: 'logical', outputPluginLibraries: null, maxReplicationSlots: 10, usedReplicationSlots: 0,
    maxWalSenders: 10, usedWalSenders: 0,
    serverDirs: { bindir: '/usr/lib/postgresql/15/bin', sharedir: '/usr/share/postgresql/15', pkglibdir: '/usr/lib/postgresql/15/lib' },
    postgresFdwAvailable: true, postgresFdwInstalled: false, slot: null, logicalSlots: [], publicationExists: false, extension: null,
    availableVersion: '0.1', configuredNodeId: null, local: { ok: true, reason: 'here' },
    ...over,
  };
}

function store(over: Partial<StoreFacts> = {}): StoreFacts {
  return {
    params: { ...params, database: 'pgtimewarp' }, unreachable: null, databaseExists: false, isSuperuser: true,
    canCreateRole: true, canCreateDb: true, systemIdentifier: '7300000000000000001', port: '5432',
    schemaExists: false, appliedMigrations: [], node: null, checkpointLsn: null, checkpointSlot: null,
    ...over,
  };
}

const tools: BuildTools = { pgConfig: '/usr/lib/postgresql/15/bin/pg_config', headers: true, make: true, compiler: true, wal2json: true, looked: [] };

function choices(over: Partial<Choices> = {}): Choices {
  return {
    nodeId: 'n1', slot: 'pgtimewarp', plugin: 'pgoutput', agent: 'background',
    systemdRunning: false, installDeps: false, restart: false, aptAvailable: true,
    restartCommand: { command: ['pg_ctlcluster', '15', 'main', 'restart'], display: 'pg_ctlcluster 15 main restart' },
    configConflict: null, installDirsUnwritable: null,
    ...over,
  };
}

describe('findProblems', () => {
  it('finds nothing wrong with a ready server', () => {
    expect(findProblems(source(), store(), tools, choices())).toEqual({ problems: [], settings: [], packages: [] });
  });

  it('wal_level = replica: the ALTER SYSTEM and the restart, or --restart', () => {
    const j = findProblems(source({ walLevel: 'replica' }), store(), tools, choices());
    expect(j.problems).toHaveLength(1);
    expect(j.problems[0]!.what).toBe('wal_level is replica; logical decoding needs wal_level = logical');
    expect(j.problems[0]!.fix).toBe(
      'as a superuser on the source server: ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL ' +
        '(pg_ctlcluster 15 main restart); a reload is not enough. Or rerun with --restart to let the installer do it',
    );
    // with --restart it is a change the installer makes, not a problem
    const restart = findProblems(source({ walLevel: 'replica' }), store(), tools, choices({ restart: true }));
    expect(restart.problems).toEqual([]);
    expect(restart.settings).toEqual([{ name: 'wal_level', value: 'logical', restart: true }]);
    // ... unless it cannot restart this server
    const cannot = findProblems(source({ walLevel: 'replica' }), store(), tools, choices({ restart: true, restartCommand: { command: null, display: 'not here' } }));
    expect(cannot.problems.map((p) => p.what)).toEqual(['--restart: the installer cannot restart this server: not here']);
  });

  it('the plugin allow-list: added to, and a reload is enough when its context allows', () => {
    const j = findProblems(source({ outputPluginLibraries: { value: ['pgoutput', 'test_decoding'], context: 'superuser' } }), store(), tools, choices({ plugin: 'wal2json' }));
    expect(j.settings).toEqual([{ name: 'output_plugin_libraries', value: 'pgoutput, test_decoding, wal2json', restart: false }]);
    expect(j.problems[0]!.fix).toContain("ALTER SYSTEM SET output_plugin_libraries = 'pgoutput, test_decoding, wal2json'; then SELECT pg_reload_conf();");
    // a build without the setting (stock PostgreSQL) allows every plugin
    expect(findProblems(source(), store(), tools, choices({ plugin: 'wal2json' })).problems).toEqual([]);
  });

  it('no free replication slot or WAL sender', () => {
    const j = findProblems(source({ usedReplicationSlots: 10, usedWalSenders: 10 }), store(), tools, choices());
    expect(j.settings.map((s) => `${s.name}=${s.value}`)).toEqual(['max_replication_slots=11', 'max_wal_senders=11']);
    // our own slot, in use by our agent, needs neither
    const ours = source({ usedReplicationSlots: 10, usedWalSenders: 10, slot: { database: 'app', plugin: 'pgoutput', active: true, activePid: 42 } });
    expect(findProblems(ours, store(), tools, choices()).settings).toEqual([]);
  });

  it('missing build tools and wal2json: the apt packages, or --install-deps', () => {
    const bare: BuildTools = { pgConfig: null, headers: false, make: false, compiler: true, wal2json: false, looked: ['/usr/bin/pg_config (PostgreSQL 16, sharedir /usr/share/postgresql/16)'] };
    const j = findProblems(source(), store(), bare, choices({ plugin: 'wal2json' }));
    expect(j.packages).toEqual(['postgresql-server-dev-15', 'make', 'postgresql-15-wal2json']);
    expect(j.problems.map((p) => p.fix)).toEqual([
      'apt-get install postgresql-server-dev-15 (or rerun with --install-deps)',
      'apt-get install make (or rerun with --install-deps)',
      'apt-get install postgresql-15-wal2json (or rerun with --install-deps), or use --plugin pgoutput',
    ]);
    expect(j.problems[0]!.what).toContain('looked at: /usr/bin/pg_config (PostgreSQL 16');
    expect(findProblems(source(), store(), bare, choices({ plugin: 'wal2json', installDeps: true })).problems).toEqual([]);
    expect(findProblems(source(), store(), bare, choices({ installDeps: true, aptAvailable: false })).problems[0]!.what)
      .toMatch(/^--install-deps installs with apt-get, which this machine does not have/);
  });

  it('privileges and locality', () => {
    const notSuper = findProblems(source({ isSuperuser: false, serverDirs: null, dataDirectory: null }), store(), null, choices());
    expect(notSuper.problems.map((p) => p.what)).toEqual([
      'role "postgres" is not a superuser on the source server; the pgtimewarp extension can only be created by one (its control file says superuser = true), and so can a REPLICATION role',
    ]);
    const remote = findProblems(source({ local: { ok: false, reason: 'its data directory /srv/pg does not exist on this machine' } }), store(), tools, choices());
    expect(remote.problems[0]!.fix).toBe('run pgtimewarp install on the database server host itself');
    const weakStore = findProblems(source(), store({ isSuperuser: false, canCreateRole: false, canCreateDb: false, params: { ...params, user: 'app', database: 'pgtimewarp' } }), tools, choices());
    expect(weakStore.problems.map((p) => p.fix)).toEqual([
      'create it first (CREATE DATABASE "pgtimewarp"), or connect to the store as a role with CREATEDB',
      'ALTER ROLE "app" CREATEROLE, or connect to the store as a superuser',
    ]);
    // names as SQL needs them, whatever they hold
    const oddNames = findProblems(source(), store({ isSuperuser: false, canCreateRole: false, canCreateDb: false, params: { ...params, user: `o'brien "ops"`, database: 'his tory' } }), tools, choices());
    expect(oddNames.problems.map((p) => p.fix)).toEqual([
      'create it first (CREATE DATABASE "his tory"), or connect to the store as a role with CREATEDB',
      `ALTER ROLE "o'brien ""ops""" CREATEROLE, or connect to the store as a superuser`,
    ]);
  });

  it('the slot, the node and the history they guard', () => {
    const otherDb = findProblems(source({ slot: { database: 'other', plugin: 'pgoutput', active: false, activePid: null } }), store(), tools, choices());
    expect(otherDb.problems[0]!.fix).toBe('pass --slot <another name> for database "app"');
    const otherPlugin = findProblems(source({ slot: { database: 'app', plugin: 'wal2json', active: false, activePid: null } }), store(), tools, choices());
    expect(otherPlugin.problems[0]!.fix).toBe('pass --plugin wal2json, or "pgtimewarp uninstall" first to start over with pgoutput');
    const gap = findProblems(source(), store({ checkpointLsn: '0/1234' }), tools, choices());
    expect(gap.problems[0]!.what).toMatch(/slot "pgtimewarp" is gone, but the store has history of node "n1" up to 0\/1234/);
    const renamed = findProblems(source({ configuredNodeId: 'old' }), store(), tools, choices({ nodeId: 'new' }));
    expect(renamed.problems[0]!.fix).toBe('pass --node old (or leave --node out)');
    const taken = findProblems(source(), store({ node: { databaseName: 'crm', systemIdentifier: '1', databaseOid: null } }), tools, choices());
    expect(taken.problems[0]!.fix).toBe('pass --node <an id of its own> for this source');
  });

  it('reports every problem at once', () => {
    const j = findProblems(source({ walLevel: 'minimal', postgresFdwAvailable: false }), store({ unreachable: 'connection refused' }), tools, choices({ agent: 'systemd' }));
    const message = formatProblems(j.problems);
    expect(message).toMatch(/^cannot install: 4 problems to fix first \(nothing was changed\):\n/);
    expect(message).toContain('postgres_fdw extension is not available');
    expect(message).toContain('wal_level is minimal');
    expect(message).toContain('cannot reach the store: connection refused');
    expect(message).toContain('use --agent background');
  });
});

describe('a database restored from a dump of the node\'s', () => {
  const recorded: NodeRecord = { databaseName: 'app', systemIdentifier: '7300000000000000001', databaseOid: '16384' };
  // pg_restore into a database of the same name on the same server: only the OID differs
  const restoredHere = source({ databaseOid: '24576', configuredNodeId: 'n1' });

  it('is the one whose pgtimewarp.config names the node, and whose cluster or database OID is not the recorded one', () => {
    expect(nodeSource(source(), null, 'n1')).toBe('unregistered');
    expect(nodeSource(source({ configuredNodeId: 'n1' }), recorded, 'n1')).toBe('recorded');
    expect(nodeSource(source({ database: 'renamed' }), recorded, 'n1')).toBe('recorded'); // ALTER DATABASE RENAME
    expect(nodeSource(source(), { ...recorded, databaseOid: null }, 'n1')).toBe('recorded'); // a node from before the OID was kept
    expect(nodeSource(source({ database: 'other' }), { ...recorded, databaseOid: null }, 'n1')).toBe('other');
    expect(nodeSource(restoredHere, recorded, 'n1')).toBe('restored');
    expect(nodeSource(source({ systemIdentifier: '7399999999999999999', configuredNodeId: 'n1' }), recorded, 'n1')).toBe('restored');
    // another database that does not say it is the node
    expect(nodeSource(source({ databaseOid: '24576' }), recorded, 'n1')).toBe('other');
  });

  it('needs no slot of its own yet, but a WAL past the history and the old database retired', () => {
    const history = store({ node: recorded, checkpointLsn: '0/4000000', checkpointSlot: 'pgtimewarp' });
    expect(findProblems(restoredHere, history, tools, choices()).problems).toEqual([]);
    // the same database, slot lost: still the gap it always was
    expect(findProblems(source({ configuredNodeId: 'n1' }), history, tools, choices()).problems[0]!.what).toMatch(/slot "pgtimewarp" is gone/);
    expect(findProblems(source({ databaseOid: '24576' }), history, tools, choices()).problems.map((p) => p.fix)).toContain('pass --node <an id of its own> for this source');

    const behind = findProblems({ ...restoredHere, walLsn: '0/3000000' }, history, tools, choices()).problems;
    expect(behind).toHaveLength(1);
    expect(behind[0]!.what).toMatch(/history goes up to LSN 0\/4000000, but this server's WAL is only at 0\/3000000/);
    expect(behind[0]!.fix).toMatch(/SELECT pgtimewarp_configure\('<a new node id>'\)/);

    const oldStillThere = findProblems(
      { ...restoredHere, database: 'app_copy', logicalSlots: [{ name: 'pgtimewarp', databaseOid: '16384', database: 'app' }] }, history, tools, choices(),
    ).problems;
    expect(oldStillThere).toHaveLength(1);
    expect(oldStillThere[0]!.what).toMatch(/"app", still has its replication slot "pgtimewarp"/);
    expect(oldStillThere[0]!.fix).toMatch(/^retire the old installation first: pgtimewarp uninstall/);
  });

  const incarnation = (over: Partial<Incarnation>): Incarnation => ({
    relationId: 1, name: 'public.accounts', relid: '16390', pkColumns: ['id'], relidIsTable: false,
    named: { oid: '24600', pkColumns: ['id'] }, ...over,
  });

  it('gets the history of each table of its name attached, with the same primary key', () => {
    const plan = planAttach('restored', recorded, restoredHere, [
      incarnation({}),
      incarnation({ relationId: 2, name: 'public.orders', relid: '16400', named: { oid: '24610', pkColumns: ['region', 'id'] }, pkColumns: ['id'] }),
      incarnation({ relationId: 3, name: 'public.gone', relid: '16410', named: null }),
      incarnation({ relationId: 4, name: 'public.same', relid: '24620', relidIsTable: true, named: { oid: '24620', pkColumns: ['id'] } }),
      // two live incarnations of one name: pgtimewarp_attach takes the latest
      incarnation({ relationId: 5, name: 'public.twice', relid: '16420', named: { oid: '24630', pkColumns: ['id'] } }),
      incarnation({ relationId: 6, name: 'public.twice', relid: '16430', named: { oid: '24630', pkColumns: ['id'] } }),
    ]);
    expect(plan.recordSource).toBe(true);
    expect(plan.attach).toEqual([
      { relationId: 1, table: 'public.accounts', oid: '24600' },
      { relationId: 6, table: 'public.twice', oid: '24630' },
    ]);
    expect(plan.notAttached).toEqual([
      { table: 'public.gone', reason: 'no table of that name in this database', fix: null, command: null },
      {
        table: 'public.orders',
        reason: "its history is keyed by (id), the table's primary key is (region, id)",
        fix: "restore the primary key, then: SELECT pgtimewarp_attach('public.orders');",
        command: "SELECT pgtimewarp_attach('public.orders');",
      },
    ]);
  });

  it('in the database the history was recorded from, attaches nothing and says what would', () => {
    const here = source({ configuredNodeId: 'n1' });
    const plan = planAttach('recorded', recorded, here, [
      incarnation({}), // dropped, and a table created under its name (the agent has not seen the drop yet)
      incarnation({ relationId: 2, name: 'public.kept', relid: '16400', relidIsTable: true, named: { oid: '16400', pkColumns: ['id'] } }),
      incarnation({ relationId: 3, name: 'public.dropped', relid: '16410', named: null }),
    ]);
    expect(plan.attach).toEqual([]);
    expect(plan.recordSource).toBe(false);
    expect(plan.notAttached).toHaveLength(1);
    expect(plan.notAttached[0]!.table).toBe('public.accounts');
    expect(plan.notAttached[0]).toEqual({
      table: 'public.accounts',
      reason: 'its history was recorded from table OID 16390, which no longer exists, and public.accounts (OID 24600) was created under that name since',
      fix: "if it is that table restored from a dump: SELECT pgtimewarp_attach('public.accounts');",
      command: "SELECT pgtimewarp_attach('public.accounts');",
    });
    // a node registered without the database's OID gets it
    expect(planAttach('recorded', { ...recorded, databaseOid: null }, here, []).recordSource).toBe(true);
  });
});

describe('the agent service files', () => {
  it('a systemd unit with the environment file, quoted arguments and no secret', () => {
    const unit = systemdUnitText({
      nodeId: 'n1',
      command: ['/usr/bin/node', '/opt/pg time/warp 100%/cli.js', 'agent', '--node', 'n1'],
      envFile: '/etc/pgtimewarp/agent-n1.env',
      workingDirectory: '/opt/pg time',
    });
    expect(unit).toContain('\nEnvironmentFile=/etc/pgtimewarp/agent-n1.env\n');
    expect(unit).toContain('\nExecStart=/usr/bin/node "/opt/pg time/warp 100%%/cli.js" agent --node n1\n');
    expect(unit).toContain('\nWorkingDirectory="/opt/pg time"\n');
    expect(unit).toContain('\nRestart=on-failure\n');
    expect(unit).toContain('\nWantedBy=multi-user.target\n');
    expect(unit).not.toMatch(/postgresql:\/\//);
  });

  it('an environment file both systemd and sh read literally', () => {
    const text = envFileText({ PGTIMEWARP_SOURCE_URL: "postgresql://a:b$c@h/d?x=1&y='2'" });
    expect(text.split('\n')[1]).toBe("PGTIMEWARP_SOURCE_URL='postgresql://a:b$c@h/d?x=1&y=%272%27'");
    expect(() => envFileText({ X: 'a\nb' })).toThrow(/line break/);
  });
});

describe('waiting for a started agent to stream', () => {
  const line = (event: string, message: string): string => JSON.stringify({ time: '2026-01-01T00:00:00Z', level: 'info', event, message });
  const streaming = line('streaming', 'streaming slot pgtimewarp from 0/0');
  const retry = line('retry', 'connect ECONNREFUSED 127.0.0.1:5432; retrying in 1000 ms');

  it('reads the outcome from its JSON log lines, whatever else is there', () => {
    expect(startOutcome('')).toBeNull();
    expect(startOutcome(`node: a warning\n${line('slot_created', 'created replication slot')}\n`)).toBeNull();
    expect(startOutcome(`not json\n${streaming}\n${retry}`)).toBe('streaming');
    expect(startOutcome(`${retry}\n${streaming}`)).toEqual({ failed: 'connect ECONNREFUSED 127.0.0.1:5432; retrying in 1000 ms' });
    expect(startOutcome('null\n42\n')).toBeNull();
  });

  it('a running agent backs off from its last retry, unless it streamed after it', () => {
    expect(pendingRetry('')).toBeNull();
    expect(pendingRetry(`${streaming}\n${retry}\nnot json`)).toEqual({ time: '2026-01-01T00:00:00Z', message: 'connect ECONNREFUSED 127.0.0.1:5432; retrying in 1000 ms' });
    expect(pendingRetry(`${retry}\n${streaming}\n${line('applied', 'applied 1 transaction(s)')}`)).toBeNull();
  });

  it('until it streams; a retry, an exit or the time running out is why not', async () => {
    let output = '';
    setTimeout(() => (output = `${streaming}\n`), 150);
    expect(await waitUntilStreaming({ output: () => output, exited: () => null }, 5_000, 10)).toBeNull();
    expect(await waitUntilStreaming({ output: () => retry, exited: () => null }, 5_000, 10)).toBe('it could not connect or stream: connect ECONNREFUSED 127.0.0.1:5432; retrying in 1000 ms');
    expect(await waitUntilStreaming({ output: () => '', exited: () => 'exit code 1' }, 5_000, 10)).toBe('it exited (exit code 1)');
    expect(await waitUntilStreaming({ output: () => '', exited: () => null }, 200, 10)).toBe('it did not start streaming within 0.2 s');
  });

  describe('the systemd agent (systemctl and journalctl stood in for)', () => {
    const invocation = '0123456789abcdef0123456789abcdef';
    const dirs: string[] = [];
    afterAll(() => {
      for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
    });
    function files(): AgentFiles {
      const dir = mkdtempSync(join(tmpdir(), 'pgtimewarp-unit-'));
      dirs.push(dir);
      return { pidFile: join(dir, 'a.pid'), logFile: join(dir, 'a.log'), envFile: join(dir, 'a.env'), unitName: 'pgtimewarp-agent-n1.service', unitFile: join(dir, 'a.service') };
    }
    /** A systemd whose unit runs (or not: `state`) and whose journal for this run holds `journal`. */
    function systemd(journal: string, state = 'active/running/success'): { run: CommandRunner; calls: string[] } {
      const calls: string[] = [];
      const [active, sub, result] = state.split('/');
      const run: CommandRunner = async (program, args) => {
        calls.push(`${program} ${args.join(' ')}`);
        if (program === 'journalctl') return { ok: args[0] === `_SYSTEMD_INVOCATION_ID=${invocation}`, out: journal };
        if (args[0] === 'show') return { ok: true, out: `ActiveState=${active}\nSubState=${sub}\nResult=${result}\nInvocationID=${invocation}` };
        return { ok: true, out: '' };
      };
      return { run, calls };
    }

    it('enabled, restarted, and done once that run streams', async () => {
      const f = files();
      const { run, calls } = systemd(`${line('publication_created', 'created publication pgtimewarp')}\n${streaming}`);
      await installSystemdAgent(f, '[Unit]\n', 'A=1\n', { run, timeoutMs: 2_000 });
      expect(readFileSync(f.unitFile, 'utf8')).toBe('[Unit]\n');
      expect(calls.slice(0, 3)).toEqual(['systemctl daemon-reload', `systemctl enable ${f.unitName}`, `systemctl restart ${f.unitName}`]);
      expect(calls).toContain(`journalctl _SYSTEMD_INVOCATION_ID=${invocation} --output=cat --no-pager --quiet`);
    });

    it('running but retrying is no success: the error says why and where to look', async () => {
      const { run } = systemd(retry);
      await expect(installSystemdAgent(files(), '[Unit]\n', 'A=1\n', { run, timeoutMs: 2_000 })).rejects.toThrow(
        'pgtimewarp-agent-n1.service did not start: it could not connect or stream: connect ECONNREFUSED 127.0.0.1:5432; retrying in 1000 ms. ' +
          'It stays enabled, and systemd restarts it after a failure; see journalctl -u pgtimewarp-agent-n1.service',
      );
    });

    it('exited, or silent until the time runs out: an error', async () => {
      await expect(installSystemdAgent(files(), '[Unit]\n', 'A=1\n', { run: systemd('', 'activating/auto-restart/exit-code').run, timeoutMs: 2_000 }))
        .rejects.toThrow(/did not start: it exited \(activating\/auto-restart, result exit-code\)/);
      await expect(installSystemdAgent(files(), '[Unit]\n', 'A=1\n', { run: systemd('').run, timeoutMs: 300 }))
        .rejects.toThrow(/did not start: it did not start streaming within 0\.3 s/);
    });
  });
});

describe('roles', () => {
  it('SCRAM verifiers PostgreSQL accepts, and recognizing a stored password', () => {
    const v = scramVerifier('s3cret');
    expect(v).toMatch(/^SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}$/);
    expect(passwordMatches(v, 'r', 's3cret')).toBe(true);
    expect(passwordMatches(v, 'r', 'other')).toBe(false);
    // one PostgreSQL 15 computed for 'x' (CREATE ROLE ... PASSWORD 'x')
    const fromServer = 'SCRAM-SHA-256$4096:DpTnZUubRuXkSCPoTz+oXg==$QbF3Js+9uEQ7NlXM/K2+GtnFA2oxT2CLeoIXZfjAMSU=:w8Ifhm4QiKNEqOtfyKBYVhudW+sxPEOpvzS8dzrHUQ8=';
    expect(passwordMatches(fromServer, 'a', 'x')).toBe(true);
    expect(passwordMatches(`md5${createHash('md5').update('pwrole').digest('hex')}`, 'role', 'pw')).toBe(true);
    expect(passwordMatches(null, 'role', 'pw')).toBe(false);
  });

  it('the FDW role writes only what track, untrack and forget write', () => {
    const grants = storeGrants(['nodes', 'lsn_time_map', 'relation_stats'], { agent: 'a', fdw: 'f' });
    expect(grants).toEqual([
      { role: 'a', table: 'nodes', privileges: ['SELECT', 'INSERT', 'UPDATE', 'DELETE'] },
      { role: 'f', table: 'nodes', privileges: ['SELECT', 'INSERT'] },
      { role: 'a', table: 'lsn_time_map', privileges: ['SELECT', 'INSERT', 'UPDATE', 'DELETE'] },
      { role: 'f', table: 'lsn_time_map', privileges: ['SELECT'] },
      // track writes the baseline's count; forget's cascade deletes it
      { role: 'a', table: 'relation_stats', privileges: ['SELECT', 'INSERT', 'UPDATE', 'DELETE'] },
      { role: 'f', table: 'relation_stats', privileges: ['SELECT', 'INSERT', 'UPDATE', 'DELETE'] },
    ]);
  });
});

describe('names and URLs', () => {
  it('a node id from the system identifier and the database, valid whatever the name', () => {
    expect(deriveNodeId('7300000000000000001', 'app')).toBe('7300000000000000001-app');
    expect(deriveNodeId('7300000000000000001', 'my db/ü')).toBe('7300000000000000001-my_db__');
    expect(deriveNodeId('7300000000000000001', 'x'.repeat(80))).toHaveLength(63);
  });

  it("the agent's URL is the installer's with the agent's credentials", () => {
    const parse = (url: string): { user?: string; password?: string; host: string; database?: string; port: number } => {
      const c = new pg.Client({ connectionString: url });
      return { user: c.user, password: c.password as string | undefined, host: c.host, database: c.database, port: c.port };
    };
    expect(parse(urlWithCredentials('postgresql://postgres:pw@db.internal:5433/app?sslmode=disable', 'pgtimewarp_agent', 'p@ss')))
      .toEqual({ user: 'pgtimewarp_agent', password: 'p@ss', host: 'db.internal', database: 'app', port: 5433 });
    expect(parse(urlWithCredentials('postgresql:///app?host=/var/run/postgresql&port=5432&user=postgres', 'pgtimewarp_agent', 'pw')))
      .toEqual({ user: 'pgtimewarp_agent', password: 'pw', host: '/var/run/postgresql', database: 'app', port: 5432 });
  });
});

describe('redactUrl: a connection string safe to print', () => {
  it('hides the password of user:password@', () => {
    expect(redactUrl('postgresql://postgres:s3cret@db:5432/app?sslmode=require')).toBe('postgresql://postgres:***@db:5432/app?sslmode=require');
    expect(redactUrl('postgres://u:p%40ss%2Fw@db/app')).toBe('postgres://u:***@db/app');
    expect(redactUrl('postgresql://postgres@db/app')).toBe('postgresql://postgres@db/app');
  });

  it('hides password= query parameters, in any case and url-encoded, and leaves the others', () => {
    for (const [url, secret] of [
      ['postgresql:///app?host=%2Fvar%2Frun%2Fpostgresql&user=u&password=s3cret', 's3cret'],
      ['postgresql:///app?host=/tmp&PassWord=s3cret', 's3cret'],
      ['postgresql://db/app?%70assword=s3cret&sslmode=require', 's3cret'],
      ['postgresql://u:one@db/app?password=two&password=three', 'two'],
    ] as const) {
      const redacted = redactUrl(url);
      expect(redacted, url).not.toContain(secret);
      expect(redacted, url).not.toMatch(/three|one@/);
      expect(redacted, url).toMatch(/assword=\*\*\*/i);
    }
    expect(redactUrl('postgresql:///app?host=%2Ftmp&user=u&password=s3cret')).toBe('postgresql:///app?host=%2Ftmp&user=u&password=***');
  });

  it('hides the password of the URLs install writes for the agent, socket hosts too', () => {
    for (const url of ['postgresql://postgres@db:5432/app', 'postgresql:///app?host=/var/run/postgresql&port=5432']) {
      const agentUrl = urlWithCredentials(url, 'pgtimewarp_agent', 'pw-0123456789abcdef');
      expect(agentUrl).toContain('pw-0123456789abcdef');
      expect(redactUrl(agentUrl)).not.toContain('pw-0123456789abcdef');
    }
  });

  it('hides password= in a key/value connection string; one it cannot read is not printed', () => {
    expect(redactUrl("host=db dbname=app password=s3cret user=u")).toBe('host=db dbname=app password=*** user=u');
    expect(redactUrl("host=db PASSWORD = 'a \\'quoted\\' secret' user=u")).toBe('host=db PASSWORD=*** user=u');
    expect(redactUrl("host=db password='never closed")).toBe('host=db password=***');
    expect(redactUrl('postgresql://u:s3cret@[::1')).toBe('(unparsable connection string)');
  });

  it('is what the commands use to say where a connection came from', () => {
    const socketUrl = 'postgresql:///app?host=/var/run/postgresql&user=pgtimewarp_agent&password=s3cret';
    expect(describeConnection('source', socketUrl, {}, null)).not.toContain('s3cret');
    expect(describeConnection('store', undefined, { PGTIMEWARP_STORE_URL: socketUrl }, null)).not.toContain('s3cret');
  });
});
