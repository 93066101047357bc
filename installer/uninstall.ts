// pgtimewarp uninstall: undo what install did, idempotently, in the order
// that frees each thing before it is dropped: the agent (it holds the slot),
// the slot (a forgotten slot pins WAL forever), the publication, the
// extension (with it go its foreign server, user mappings and foreign
// tables), the roles install created, the config file.  History stays in
// the store unless --drop-store.

import { existsSync, readdirSync, rmSync } from 'node:fs';

import type pg from 'pg';

import { agentFiles, backgroundAgentState, removeSystemdAgent, stopBackgroundAgent, type AgentFiles } from './agent-service.js';
import { configPath, resolveConnections, type InstalledConfig, type Plugin } from './config.js';
import { DEFAULT_SLOT, PUBLICATION, deriveNodeId, sameDatabase } from './install.js';
import { connParams, databaseExists, errorMessage, quoteIdent, redactUrl, sqlState, withClient, withMaintenanceClient } from './install-sql.js';
import { planThenApply, type PlanThenApplyOptions, type Step, type StepResult } from './install-steps.js';
import { migrationsDir } from './paths.js';
import { AGENT_ROLE, FDW_ROLE, STORE_SCHEMA, isOurRole, revokeStoreGrants } from './roles.js';

/** dryRun, renderer and confirm: how the steps run (PlanThenApplyOptions). */
export interface UninstallOptions extends PlanThenApplyOptions {
  source?: string;
  store?: string;
  dropStore?: boolean;
  env?: NodeJS.ProcessEnv;
}

export interface UninstallResult {
  command: 'uninstall';
  dryRun: boolean;
  changed: boolean;
  message: string;
  steps: StepResult[];
  nodeId: string;
  /** Where the history stays, when it does. */
  historyKeptIn: string | null;
}

/** How long a slot may stay busy after its agent was stopped (the WAL sender exits on its own). */
const SLOT_RELEASE_MS = 15_000;

class UninstallRun {
  readonly env: NodeJS.ProcessEnv;
  readonly configFile: string;
  readonly config: InstalledConfig | null;
  readonly sourceUrl: string | undefined;
  readonly storeUrl: string | undefined;
  nodeId = '';
  slot: string;
  plugin: Plugin = 'pgoutput';
  files!: AgentFiles;
  sameCluster = false;

  constructor(readonly opts: UninstallOptions) {
    this.env = opts.env ?? process.env;
    const conns = resolveConnections({ source: opts.source, store: opts.store }, { source: true, store: opts.dropStore ?? false }, this.env);
    this.configFile = configPath(this.env);
    this.sourceUrl = conns.sourceUrl;
    this.storeUrl = conns.storeUrl;
    // a config file of another installation is not ours to use (or delete)
    this.config = conns.config !== null && sameDatabase(conns.config.sourceUrl, this.sourceUrl) ? conns.config : null;
    this.slot = this.config?.slot ?? DEFAULT_SLOT;
    if (this.config !== null) this.plugin = this.config.plugin;
  }

  source$<T>(work: (c: pg.Client) => Promise<T>): Promise<T> {
    return withClient(this.sourceUrl, work, { what: 'the source database' });
  }

  /** The store database, or null when it is not known or does not exist. */
  async store$<T>(work: (c: pg.Client) => Promise<T>): Promise<T | null> {
    if (this.storeUrl === undefined || !(await this.storeDatabaseExists())) return null;
    return withClient(this.storeUrl, work, { what: 'the store database' });
  }

  maintenance$<T>(work: (c: pg.Client) => Promise<T>): Promise<T> {
    return withMaintenanceClient(this.storeUrl, work);
  }

  async storeDatabaseExists(): Promise<boolean> {
    return this.storeUrl !== undefined && databaseExists(this.storeUrl, 'the store database');
  }

  /** The store lives in the source database itself (only its schema may go). */
  get storeIsSourceDatabase(): boolean {
    return this.storeUrl !== undefined && this.sameCluster && connParams(this.storeUrl).database === connParams(this.sourceUrl).database;
  }

  async inspect(): Promise<void> {
    const facts = await this.source$(async (c) => {
      const row = (await c.query<{ super: boolean; sysid: string; db: string; port: string; plugin: string | null; configured: boolean }>(
        `SELECT r.rolsuper AS super, (SELECT system_identifier::text FROM pg_catalog.pg_control_system()) AS sysid,
                current_database() AS db, current_setting('port') AS port,
                (SELECT plugin FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND database = current_database()) AS plugin,
                to_regclass('pgtimewarp.config') IS NOT NULL AS configured
           FROM pg_catalog.pg_roles r WHERE r.rolname = current_user`,
        [this.slot],
      )).rows[0]!;
      // a separate statement: one naming pgtimewarp.config fails to parse once the extension is gone
      const node = row.configured && row.super
        ? (await c.query<{ node_id: string }>(`SELECT node_id FROM pgtimewarp.config`)).rows[0]?.node_id ?? null
        : null;
      return { ...row, node };
    });
    if (!facts.super) {
      throw new Error(`role "${connParams(this.sourceUrl).user}" is not a superuser on the source server; uninstall drops the extension, the slot and roles: connect as a superuser`);
    }
    this.nodeId = this.config?.nodeId ?? facts.node ?? deriveNodeId(facts.sysid, facts.db);
    if (facts.plugin === 'pgoutput' || facts.plugin === 'wal2json') this.plugin = facts.plugin;
    this.files = agentFiles(this.nodeId, this.configFile, this.env);
    if (this.storeUrl !== undefined) {
      const store = await this.maintenance$(async (c) => (await c.query<{ sysid: string; port: string }>(
        `SELECT (SELECT system_identifier::text FROM pg_catalog.pg_control_system()) AS sysid, current_setting('port') AS port`,
      )).rows[0]!).catch(() => null);
      this.sameCluster = store !== null && store.sysid === facts.sysid && store.port === facts.port;
    }
  }

  agentSpec(): { nodeId: string; slot: string; plugin: Plugin } {
    return { nodeId: this.nodeId, slot: this.slot, plugin: this.plugin };
  }
}

function steps(run: UninstallRun): Step[] {
  const list: Step[] = [];
  const add = (step: Step): void => void list.push(step);

  add({
    id: 'inspect',
    title: 'Look at the installation',
    checkOnly: true,
    async check() {
      await run.inspect();
      return { change: false, detail: `node ${run.nodeId}, slot ${run.slot}${run.config === null ? ', no config file of this installation' : ''}` };
    },
    async apply() {},
  });

  add({
    id: 'agent',
    title: 'Stop and remove the agent',
    async check() {
      const f = run.files;
      const todo: string[] = [];
      const state = backgroundAgentState(f.pidFile, run.agentSpec());
      if (state.state !== 'stopped') todo.push(`stop the background agent (pid ${state.pid})`);
      else if (existsSync(f.pidFile)) todo.push(`remove the stale ${f.pidFile}`);
      if (existsSync(f.unitFile)) todo.push(`stop and remove ${f.unitName}`);
      if (existsSync(f.envFile)) todo.push(`remove ${f.envFile}`);
      return todo.length === 0 ? { change: false, detail: 'none installed' } : { change: true, detail: todo.join(', ') };
    },
    async apply() {
      const done: string[] = [];
      done.push(...(await removeSystemdAgent(run.files)));
      const pid = await stopBackgroundAgent(run.files, run.agentSpec());
      if (pid !== null) done.push(`stopped the agent (pid ${pid})`);
      if (existsSync(run.files.pidFile)) rmSync(run.files.pidFile, { force: true });
      return done.join(', ') || `removed the stale ${run.files.pidFile}`;
    },
  });

  add({
    id: 'slot',
    title: 'Drop the replication slot (a forgotten slot pins WAL forever)',
    async check() {
      const exists = await run.source$(async (c) => ((await c.query(
        `SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND database = current_database()`, [run.slot],
      )).rowCount ?? 0) > 0);
      return exists ? { change: true, detail: `drop slot ${run.slot}` } : { change: false, detail: `no slot ${run.slot}` };
    },
    async apply() {
      await run.source$(async (c) => {
        const deadline = Date.now() + SLOT_RELEASE_MS;
        for (;;) {
          const row = (await c.query<{ active_pid: number | null }>(
            `SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, [run.slot],
          )).rows[0];
          if (row === undefined) return;
          if (row.active_pid === null) break;
          if (Date.now() > deadline) {
            throw new Error(
              `replication slot ${run.slot} is still in use by process ${row.active_pid} (an agent not started by the installer?): ` +
                'stop that agent, then run uninstall again',
            );
          }
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
        await c.query(`SELECT pg_catalog.pg_drop_replication_slot($1)`, [run.slot]);
      });
      return `dropped slot ${run.slot}`;
    },
  });

  add({
    id: 'publication',
    title: `Drop the publication ${PUBLICATION}`,
    async check() {
      const exists = await run.source$(async (c) => ((await c.query(`SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1`, [PUBLICATION])).rowCount ?? 0) > 0);
      return exists ? { change: true, detail: `drop publication ${PUBLICATION}` } : { change: false, detail: 'none' };
    },
    async apply() {
      await run.source$((c) => c.query(`DROP PUBLICATION IF EXISTS ${quoteIdent(PUBLICATION)}`));
      return `dropped publication ${PUBLICATION}`;
    },
  });

  add({
    id: 'extension',
    title: 'Drop the extension, its foreign server, user mappings and foreign tables',
    async check() {
      const exists = await run.source$(async (c) => ((await c.query(`SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgtimewarp'`)).rowCount ?? 0) > 0);
      return exists ? { change: true, detail: 'DROP EXTENSION pgtimewarp' } : { change: false, detail: 'not installed' };
    },
    async apply() {
      await run.source$(async (c) => {
        // user mappings are not members of the extension, but exist only for its server
        const mappings = await c.query<{ usename: string }>(`SELECT usename FROM pg_catalog.pg_user_mappings WHERE srvname = 'pgtimewarp_store'`);
        for (const m of mappings.rows) {
          await c.query(`DROP USER MAPPING IF EXISTS FOR ${m.usename === 'public' ? 'PUBLIC' : quoteIdent(m.usename)} SERVER pgtimewarp_store`);
        }
        try {
          // no CASCADE: objects of the user's that use pgtimewarp (a view, say) are not ours to drop
          await c.query('DROP EXTENSION pgtimewarp');
        } catch (err) {
          if (sqlState(err) !== '2BP01') throw err;
          throw new Error(`cannot drop the extension pgtimewarp: ${errorMessage(err)}. Drop those objects first, then run uninstall again`);
        }
      });
      return 'dropped the extension (and with it server pgtimewarp_store and its foreign tables)';
    },
  });

  add({
    id: 'postgres_fdw',
    title: 'Drop postgres_fdw if install created it',
    async check() {
      if (!(run.config?.postgresFdwCreatedByInstall ?? false)) return { change: false, skip: true, detail: 'install did not create it' };
      const state = await run.source$(async (c) => (await c.query<{ installed: boolean; servers: string }>(
        `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'postgres_fdw') AS installed,
                (SELECT count(*) FROM pg_catalog.pg_foreign_server s JOIN pg_catalog.pg_foreign_data_wrapper w ON w.oid = s.srvfdw
                  WHERE w.fdwname = 'postgres_fdw' AND s.srvname <> 'pgtimewarp_store')::text AS servers`,
      )).rows[0]!);
      if (!state.installed) return { change: false, detail: 'not installed' };
      if (state.servers !== '0') return { change: false, skip: true, detail: `kept: ${state.servers} other foreign server(s) use it` };
      return { change: true, detail: 'DROP EXTENSION postgres_fdw' };
    },
    async apply() {
      await run.source$((c) => c.query('DROP EXTENSION IF EXISTS postgres_fdw'));
      return 'dropped postgres_fdw';
    },
  });

  add({
    id: 'store',
    title: 'Drop the store (--drop-store)',
    async check() {
      if (run.storeUrl === undefined) return { change: false, skip: true, detail: 'no store database given' };
      const name = connParams(run.storeUrl).database;
      if (!run.opts.dropStore) return { change: false, skip: true, detail: `the history stays in database "${name}"; --drop-store deletes it` };
      if (run.storeIsSourceDatabase) {
        const schema = await run.store$(async (c) => ((await c.query(`SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1`, [STORE_SCHEMA])).rowCount ?? 0) > 0);
        return schema ? { change: true, detail: `drop schema ${STORE_SCHEMA} (the store shares the source database)` } : { change: false, detail: 'no store schema' };
      }
      return (await run.storeDatabaseExists()) ? { change: true, detail: `drop database "${name}"` } : { change: false, detail: `no database "${name}"` };
    },
    async apply() {
      const name = connParams(run.storeUrl).database;
      if (run.storeIsSourceDatabase) {
        await run.store$(async (c) => {
          await c.query(`DROP SCHEMA ${quoteIdent(STORE_SCHEMA)} CASCADE`);
          await dropMigrationsTableIfOurs(c);
        });
        return `dropped schema ${STORE_SCHEMA}`;
      }
      await run.maintenance$(async (c) => {
        // sessions of our own roles (the agent, postgres_fdw connections of source sessions) may go
        await c.query(
          `SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND usename = ANY($2)`,
          [name, [AGENT_ROLE, FDW_ROLE]],
        );
        try {
          await c.query(`DROP DATABASE ${quoteIdent(name)}`);
        } catch (err) {
          if (sqlState(err) !== '55006') throw err;
          throw new Error(`cannot drop the store database "${name}": ${errorMessage(err)}. Close those sessions, then run uninstall again`);
        }
      });
      return `dropped database "${name}"`;
    },
  });

  add({
    id: 'roles',
    title: 'Drop the roles install created',
    async check() {
      const ours = await ourRoles(run);
      if (ours.length === 0) return { change: false, detail: 'none left' };
      return { change: true, detail: `drop ${ours.map((r) => r.role).join(', ')}` };
    },
    async apply() {
      const done: string[] = [];
      const kept: string[] = [];
      for (const { role, where } of await ourRoles(run)) {
        // privileges in the store database would keep the role alive: take them back first
        await run.store$(async (c) => {
          if (((await c.query(`SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1`, [STORE_SCHEMA])).rowCount ?? 0) > 0) {
            await revokeStoreGrants(c, role);
          }
        });
        const drop = async (c: pg.Client): Promise<void> => {
          await c.query(`SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = $1`, [role]);
          await c.query(`DROP ROLE ${quoteIdent(role)}`);
        };
        try {
          if (where === 'source') await run.source$(drop);
          else await run.maintenance$(drop);
          done.push(role);
        } catch (err) {
          if (sqlState(err) !== '2BP01') throw err;
          kept.push(`kept ${role} on the ${where} server: ${errorMessage(err)}`);
        }
      }
      return [done.length > 0 ? `dropped ${[...new Set(done)].join(', ')}` : '', ...kept].filter(Boolean).join('; ');
    },
  });

  add({
    id: 'config',
    title: 'Remove the config file',
    async check() {
      if (run.config === null) return { change: false, detail: existsSync(run.configFile) ? `${run.configFile} belongs to another installation` : 'none' };
      return { change: true, detail: `remove ${run.configFile}` };
    },
    async apply() {
      rmSync(run.configFile, { force: true });
      return `removed ${run.configFile}${existsSync(run.files.logFile) ? ` (the agent's log stays: ${run.files.logFile})` : ''}`;
    },
  });
  return list;
}

/** Roles install created (by their comment) that still exist, on the source server and, if it is another, the store server. */
async function ourRoles(run: UninstallRun): Promise<Array<{ role: string; where: 'source' | 'store' }>> {
  const found: Array<{ role: string; where: 'source' | 'store' }> = [];
  for (const role of [AGENT_ROLE, FDW_ROLE]) {
    if (await run.source$((c) => isOurRole(c, role))) found.push({ role, where: 'source' });
    if (run.storeUrl !== undefined && !run.sameCluster && (await run.maintenance$((c) => isOurRole(c, role)))) found.push({ role, where: 'store' });
  }
  return found;
}

/**
 * postgres-migrations' bookkeeping table, when only our migrations are in
 * it: in a shared database it may be someone else's too.
 */
async function dropMigrationsTableIfOurs(c: pg.Client): Promise<void> {
  const exists = (await c.query<{ present: boolean }>(`SELECT to_regclass('migrations') IS NOT NULL AS present`)).rows[0]!.present;
  if (!exists) return;
  const ours = new Set([0, ...readdirSync(migrationsDir).map((f) => /^(\d+)[-_]/.exec(f)).filter((m) => m !== null).map((m) => Number(m[1]))]);
  const ids = (await c.query<{ id: number }>(`SELECT id FROM migrations`)).rows.map((r) => r.id);
  if (ids.every((id) => ours.has(id))) await c.query('DROP TABLE migrations');
}

export async function runUninstall(opts: UninstallOptions = {}): Promise<UninstallResult> {
  const run = new UninstallRun(opts);
  const results = await planThenApply(() => steps(run), opts);
  const changed = results.some((r) => r.status === 'changed' || r.status === 'would-change');
  const keptIn = run.storeUrl !== undefined && !opts.dropStore ? redactUrl(run.storeUrl) : null;
  let message: string;
  if (opts.dryRun) {
    const n = results.filter((r) => r.status === 'would-change').length;
    message = n === 0 ? 'dry run: nothing to do: pgtimewarp is not installed here' : `dry run: ${n} step(s) would change something; nothing was changed`;
  } else {
    message = changed ? 'pgtimewarp is uninstalled' : 'nothing to do: pgtimewarp is not installed here';
    if (keptIn !== null) message += `; the history stays in the store (${keptIn}): uninstall --drop-store deletes it`;
  }
  return { command: 'uninstall', dryRun: opts.dryRun ?? false, changed, message, steps: results, nodeId: run.nodeId, historyKeptIn: keptIn };
}
