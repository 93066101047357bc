// History after pg_dump and pg_restore, as `pgtimewarp install` (the real
// CLI) leaves it on a throwaway cluster.  History belongs to tables by OID,
// and a restore gives every table a new one:
//   - in the database the node was recorded from, a tracked table dropped
//     and created again under its name by an ordinary role gets nothing
//     attached when install runs again; install names the table and the
//     SELECT pgtimewarp_attach(...) to run if it is the same table, and
//     lookups still refuse;
//   - that database dumped, the installation retired (history kept), the
//     database dropped and restored from the dump under its own name (only
//     its OID tells it apart), install run again with the same config: the
//     restored table gets its history back (lookups at old times answer as
//     before, and new changes are recorded), the store records the new
//     database, and the re-created table stays without the old history.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';

import { describeFailure, runProgram, serverBinDir, serverEnv } from '../../installer/local-cluster.js';
import type { Cluster } from '../support/cluster.js';
import { alive } from '../support/process.js';
import { cleanEnv, parsedJson, runCli, type CliResult, type InstallStep } from '../support/run-cli.js';
import { useCluster } from '../support/use-cluster.js';
import { waitFor } from '../support/wait.js';

const cluster = useCluster();

interface InstallJson {
  ok: boolean;
  changed: boolean;
  steps: InstallStep[];
  nodeId: string;
  agent: { pid?: number; pidFile?: string };
  restore: { source: string; attached: string[]; notAttached: Array<{ table: string; reason: string; fix: string | null; command: string | null }> };
  next: string[];
}


function step(result: InstallJson, id: string): InstallStep {
  const found = result.steps.find((s) => s.id === id);
  if (found === undefined) throw new Error(`no step ${id} in ${JSON.stringify(result.steps.map((s) => s.id))}`);
  return found;
}

async function value(c: Cluster, sql: string, db: string): Promise<string> {
  return (await c.psql(sql, db)).trim();
}

const dir = mkdtempSync(join(tmpdir(), 'pgtimewarp-restore-'));
const env = cleanEnv({ PGTIMEWARP_CONFIG: join(dir, 'config.json') });
const agentPids = new Set<number>();
afterAll(() => {
  for (const pid of agentPids) if (alive(pid)) process.kill(pid, 'SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

describe('pgtimewarp install after pg_dump and pg_restore', () => {
  const sourceDb = 'app';
  const storeDb = 'history';
  let installArgs: string[] = [];
  let nodeId = '';
  /** Lookups made before the dump, and what they answered. */
  const answers: Array<{ id: number; at: string; row: unknown }> = [];
  let notesRelationId = 0;

  const install = async (...extra: string[]): Promise<CliResult> => runCli([...installArgs, ...extra], env, 180_000);

  async function installJson(...extra: string[]): Promise<InstallJson> {
    const run = await install(...extra, '--json');
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
    const result = parsedJson<InstallJson>(run);
    if (result.agent.pid !== undefined) agentPids.add(result.agent.pid);
    return result;
  }

  async function caughtUp(c: Cluster, source: pg.Client): Promise<void> {
    const end = (await source.query<{ lsn: string }>(`SELECT pg_current_wal_insert_lsn()::text AS lsn`)).rows[0]!.lsn;
    await waitFor('the agent to store everything', async () => (await value(c,
      `SELECT confirmed_lsn >= '${end}' FROM pgtimewarp_store.wal_checkpoints WHERE node_id = '${nodeId}'`, storeDb)) === 't', 30_000);
  }

  async function lookup(source: pg.Client, table: string, id: number, at: string): Promise<unknown> {
    return (await source.query<{ row: unknown }>(`SELECT pgtimewarp_asof_pk($1::regclass, $2, $3::timestamptz) AS row`, [table, JSON.stringify({ id }), at])).rows[0]!.row;
  }

  it('a table dropped and created again in the recorded database: nothing attached, and install says how', async () => {
    const c = cluster();
    await c.psql(`CREATE DATABASE ${sourceDb}`);
    installArgs = ['install', '--source', c.url(sourceDb), '--store', c.url(storeDb), '--agent', 'background', '--yes'];
    const installed = await installJson();
    nodeId = installed.nodeId;
    expect(step(installed, 'restore')).toMatchObject({ status: 'unchanged', detail: expect.stringMatching(/ was recorded from: nothing restored$/) as unknown });

    const source = await c.connect(sourceDb);
    await source.query(`CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL)`);
    await source.query(`INSERT INTO accounts VALUES (1, 'alice', 100.00), (2, 'bob', 50)`);
    await source.query(`CREATE TABLE notes (id int PRIMARY KEY, body text)`);
    await source.query(`INSERT INTO notes VALUES (1, 'kept for years')`);
    await source.query(`SELECT pgtimewarp_track('accounts'), pgtimewarp_track('notes')`);
    const now = async (): Promise<string> => (await source.query<{ t: string }>(`SELECT clock_timestamp()::text AS t`)).rows[0]!.t;
    const tracked = await now();
    await new Promise((resolve) => setTimeout(resolve, 20));
    await source.query(`UPDATE accounts SET balance = balance + 20 WHERE id = 1`);
    await source.query(`DELETE FROM accounts WHERE id = 2`);
    await source.query(`INSERT INTO accounts VALUES (3, 'carol', 7.5)`);
    await caughtUp(c, source);
    const changed = await now();
    for (const at of [tracked, changed]) {
      for (const id of [1, 2, 3]) answers.push({ id, at, row: await lookup(source, 'accounts', id, at) });
    }
    expect(answers.map((a) => a.row)).toEqual([
      { id: 1, owner: 'alice', balance: 100.0 }, { id: 2, owner: 'bob', balance: 50 }, null,
      { id: 1, owner: 'alice', balance: 120.0 }, null, { id: 3, owner: 'carol', balance: 7.5 },
    ]);

    // the agent is down (so the store still has notes as live when install looks), and notes is
    // dropped; an ordinary role creates a table under its name
    process.kill(installed.agent.pid!, 'SIGTERM');
    await waitFor('the agent to exit', () => !alive(installed.agent.pid!), 10_000);
    const notes = (await value(c, `SELECT relation_id || ' ' || relid FROM pgtimewarp_store.tracked_relations WHERE table_name = 'notes'`, storeDb)).split(' ');
    notesRelationId = Number(notes[0]);
    await source.query(`DROP TABLE notes`);
    await source.query(`CREATE ROLE mallory LOGIN`);
    await source.query(`GRANT CREATE ON SCHEMA public TO mallory`);
    await c.psql(`SET ROLE mallory; CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'mine now')`, sourceDb);

    const plan = await installJson('--dry-run');
    const restore = step(plan, 'restore');
    expect(restore.status).toBe('unchanged');
    const newNotes = await value(c, `SELECT 'notes'::regclass::oid`, sourceDb);
    const why = `public.notes: its history was recorded from table OID ${notes[1]}, which no longer exists, and public.notes (OID ${newNotes}) ` +
      `was created under that name since; if it is that table restored from a dump: SELECT pgtimewarp_attach('public.notes');`;
    expect(restore.detail).toMatch(/ was recorded from: nothing restored, nothing attached; /);
    expect(restore.detail.endsWith(`; ${why}`)).toBe(true);
    expect(plan.restore).toEqual({
      source: 'recorded', attached: [],
      notAttached: [{
        table: 'public.notes', reason: expect.stringMatching(/^its history was recorded from table OID/) as unknown,
        fix: expect.stringMatching(/^if it is that table restored from a dump: /) as unknown, command: `SELECT pgtimewarp_attach('public.notes');`,
      }],
    });

    // the rerun a person reads: the step and the next steps name the table and the command
    const text = await install();
    expect(text.code, `${text.stdout}\n${text.stderr}`).toBe(0);
    expect(text.stdout).toContain(`Attach history to tables restored from a dump: unchanged (`);
    expect(text.stdout).toContain(`; ${why})\n`);
    expect(text.stdout).toContain(`\n  history not attached: ${why}\n`);

    // nothing was attached: the history still names the dropped table's OID, and the new table reads none of it
    expect(await value(c, `SELECT relid FROM pgtimewarp_store.tracked_relations WHERE relation_id = ${notesRelationId}`, storeDb)).toBe(notes[1]);
    await expect(lookup(source, 'notes', 1, tracked)).rejects.toThrow(/belongs to another table|is not tracked by pgtimewarp/);
    // the agent, running again, ends the old history at the drop
    await waitFor('the agent to record the drop', async () => (await value(c,
      `SELECT dropped_lsn IS NOT NULL FROM pgtimewarp_store.tracked_relations WHERE relation_id = ${notesRelationId}`, storeDb)) === 't', 30_000);
    await expect(lookup(source, 'notes', 1, tracked)).rejects.toThrow(/table public\.notes is not tracked by pgtimewarp/);
    await caughtUp(c, source);
    await source.end();
  });

  it('restored from a dump into a new database: install attaches the history, and it goes on', async () => {
    const c = cluster();
    const dump = join(dir, 'app.dump');
    const bin = serverBinDir();
    const pgArgs = ['-h', c.host, '-p', String(c.port), '-U', c.superuser];
    const dumped = await runProgram(join(bin, 'pg_dump'), [...pgArgs, '-Fc', '-f', dump, sourceDb], dir, serverEnv());
    expect(dumped.code, describeFailure('pg_dump', dumped)).toBe(0);
    const oldOid = await value(c, `SELECT oid FROM pg_database WHERE datname = '${sourceDb}'`, 'postgres');
    const oldAccounts = await value(c, `SELECT 'accounts'::regclass::oid`, sourceDb);

    // the old installation is retired (its slot would feed the node too); the history stays
    const gone = await runCli(['uninstall', '--yes', '--json'], env, 120_000);
    expect(gone.code, `${gone.stdout}\n${gone.stderr}`).toBe(0);
    await c.psql(`DROP DATABASE ${sourceDb}`);
    await c.psql(`CREATE DATABASE ${sourceDb}`);
    const restored = await runProgram(join(bin, 'pg_restore'), [...pgArgs, '--exit-on-error', '-d', sourceDb, dump], dir, serverEnv());
    expect(restored.code, describeFailure('pg_restore', restored)).toBe(0);
    const newOid = await value(c, `SELECT oid FROM pg_database WHERE datname = '${sourceDb}'`, 'postgres');
    const newAccounts = await value(c, `SELECT 'accounts'::regclass::oid`, sourceDb);
    expect(newOid).not.toBe(oldOid);
    expect(newAccounts).not.toBe(oldAccounts);

    const plan = await installJson('--dry-run');
    expect(step(plan, 'restore').status).toBe('would-change');
    expect(step(plan, 'restore').detail).toMatch(new RegExp(
      `^attach the history of public\\.accounts to the tables restored under those names \\(from a dump of database "app" \\(OID ${oldOid}\\) of system \\d+\\); ` +
        `record database "app" \\(OID ${newOid}\\) as node ${nodeId}'s source$`,
    ));
    expect(plan.restore).toEqual({ source: 'restored', attached: ['public.accounts'], notAttached: [] });

    const result = await installJson();
    expect(result.nodeId).toBe(nodeId); // from pgtimewarp.config, which came with the dump
    expect(step(result, 'slot').status).toBe('changed');
    expect(step(result, 'restore')).toMatchObject({
      status: 'changed',
      detail: `attached the history of public.accounts to the tables restored under those names; database "app" (OID ${newOid}) is node ${nodeId}'s source now`,
    });
    expect(await value(c, `SELECT database_name || ' ' || database_oid FROM pgtimewarp_store.nodes WHERE node_id = '${nodeId}'`, storeDb)).toBe(`app ${newOid}`);
    expect(await value(c, `SELECT relid FROM pgtimewarp_store.tracked_relations WHERE table_name = 'accounts' AND dropped_lsn IS NULL`, storeDb)).toBe(newAccounts);

    // the old history answers as it did before the dump
    const source = await c.connect(sourceDb);
    for (const a of answers) expect(await lookup(source, 'accounts', a.id, a.at), `id ${a.id} at ${a.at}`).toEqual(a.row);
    // and goes on: a change in the restored database is recorded
    await source.query(`UPDATE accounts SET owner = 'alice b.' WHERE id = 1`);
    await waitFor('the agent to record a change in the restored database', async () =>
      ((await lookup(source, 'accounts', 1, (await source.query<{ t: string }>(`SELECT clock_timestamp()::text AS t`)).rows[0]!.t)) as { owner: string } | null)?.owner === 'alice b.', 30_000);
    // the table created under a dropped one's name stays without its history
    await expect(lookup(source, 'notes', 1, answers[0]!.at)).rejects.toThrow(/table public\.notes is not tracked by pgtimewarp/);
    await source.end();

    // and a rerun has nothing to do
    const again = await installJson();
    expect(again.changed).toBe(false);
    expect(step(again, 'restore')).toMatchObject({ status: 'unchanged', detail: `database "app" (OID ${newOid}) is the one node ${nodeId} was recorded from: nothing restored` });
    expect(again.restore).toEqual({ source: 'recorded', attached: [], notAttached: [] });
  });
});
