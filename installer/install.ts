// pgtimewarp install: from a PostgreSQL host with nothing to working time
// travel, idempotently.  Each step looks before it changes anything, so a
// second run changes nothing and says so, and a run that failed part-way is
// completed by the next.  --dry-run only looks.
//
// Order matters in two places: the publication exists before the slot (a
// pgoutput stream cannot decode from before its publication was created),
// and the slot exists before the extension (no table can be tracked before
// the slot, which the agent would refuse as a gap in history).

import { existsSync, readdirSync, readFileSync } from 'node:fs';

import { execa } from 'execa';
import type pg from 'pg';

import {
  agentArgs, agentEnvironment, agentFiles, backgroundAgentState, envFileText, installSystemdAgent, removeSystemdAgent,
  runsFromNpxCache, startBackgroundAgent, stopBackgroundAgent, systemdAgentUnit, systemdChanges, systemdRunning,
  writeFileIfChanged, type AgentFiles, type AgentSpec,
} from './agent-service.js';
import { configPath, readConfig, resolveConnections, writeConfig, type AgentMode, type InstalledConfig, type Plugin } from './config.js';
import { buildExtension, buildIsUpToDate, differingFiles, installDirsUnwritable, installExtensionFiles } from './install-extension.js';
import { applySettings, restartCommand, type RestartCommand } from './install-server.js';
import {
  buildUrl, connParams, databaseExists, errorMessage, queryUnlogged, quoteIdent, quoteLiteral, redactUrl, urlWithCredentials, withClient,
  withMaintenanceClient,
} from './install-sql.js';
import {
  applyAttachPlan, describeAttachPlan, describeNotAttached, readAttachPlan, type AttachPlan, type NotAttached,
} from './install-restore.js';
import { planThenApply, type PlanThenApplyOptions, type Step, type StepResult } from './install-steps.js';
import { migrationsDir } from './paths.js';
import {
  appliedMigrations, findBuildTools, findProblems, formatProblems, inspectSource, inspectStore,
  type BuildTools, type Judgement, type NodeSource, type SourceFacts, type StoreFacts,
} from './prereq.js';
import {
  AGENT_ROLE, FDW_ROLE, applyGrants, ensureRole, generatePassword, missingGrants, roleChanges, storeGrants, storeTables,
  type Grant, type RoleSpec,
} from './roles.js';
import { migrateStore } from './store.js';

export const DEFAULT_SLOT = 'pgtimewarp';
export const PUBLICATION = 'pgtimewarp';
const NODE_ID = /^[A-Za-z0-9_.-]{1,63}$/;
const SLOT_NAME = /^[a-z0-9_]{1,63}$/;

/** dryRun, renderer and confirm: how the steps run (PlanThenApplyOptions). */
export interface InstallOptions extends PlanThenApplyOptions {
  source?: string;
  store?: string;
  node?: string;
  slot?: string;
  agent?: string;
  plugin?: string;
  installDeps?: boolean;
  restart?: boolean;
  env?: NodeJS.ProcessEnv;
}

export interface InstallResult {
  command: 'install';
  dryRun: boolean;
  /** Something was changed (or, in a dry run, would be). */
  changed: boolean;
  message: string;
  steps: StepResult[];
  nodeId: string;
  slot: string;
  plugin: Plugin;
  source: string;
  store: string;
  configFile: string;
  agent: { mode: AgentMode; pid?: number; pidFile?: string; logFile?: string; unit?: string; envFile?: string; command?: string };
  /**
   * History and the tables it belongs to (install-restore.ts): whether this
   * database is the one the node was recorded from, or restored from a dump
   * of it; the tables whose history was (or, in a dry run, would be)
   * attached; those left as they are, each with why and its attach command.
   */
  restore: { source: NodeSource; attached: string[]; notAttached: NotAttached[] };
  next: string[];
}

/** Check the options, all problems at once. */
function validate(opts: InstallOptions): void {
  const problems: string[] = [];
  if (opts.plugin !== undefined && opts.plugin !== 'pgoutput' && opts.plugin !== 'wal2json') problems.push(`--plugin must be pgoutput or wal2json, not ${opts.plugin}`);
  if (opts.agent !== undefined && !['systemd', 'background', 'none'].includes(opts.agent)) problems.push(`--agent must be systemd, background or none, not ${opts.agent}`);
  if (opts.node !== undefined && !NODE_ID.test(opts.node)) problems.push(`--node ${JSON.stringify(opts.node)}: a node id is 1 to 63 letters, digits, underscores, dots or hyphens`);
  if (opts.slot !== undefined && !SLOT_NAME.test(opts.slot)) problems.push(`--slot ${JSON.stringify(opts.slot)}: a slot name is 1 to 63 lower-case letters, digits or underscores`);
  if (problems.length > 0) throw new Error(problems.join('; '));
}

/** Whether two URLs (undefined: PG* variables) lead to the same database on the same server. */
export function sameDatabase(a: string | undefined, b: string | undefined): boolean {
  const x = connParams(a);
  const y = connParams(b);
  return x.host === y.host && x.port === y.port && x.database === y.database;
}

/** A node id derived from the source: stable (the cluster's system identifier) and readable (the database). */
export function deriveNodeId(systemIdentifier: string, database: string): string {
  return `${systemIdentifier}-${database.replace(/[^A-Za-z0-9_.-]/g, '_')}`.slice(0, 63);
}

function migrationIds(): number[] {
  return readdirSync(migrationsDir)
    .map((f) => /^(-?\d+)[-_]?.*\.(sql|js)$/i.exec(f))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]));
}

/** Everything one install run knows; the steps read and fill it. */
class InstallRun {
  readonly env: NodeJS.ProcessEnv;
  readonly configFile: string;
  readonly sourceUrl: string | undefined;
  readonly storeUrl: string;
  /** The config of this same installation, when there is one. */
  readonly previous: InstalledConfig | null;
  readonly configConflict: string | null;
  readonly slot: string;
  source!: SourceFacts;
  store!: StoreFacts;
  tools: BuildTools | null = null;
  judgement!: Judgement;
  restart!: RestartCommand;
  nodeId = '';
  plugin: Plugin = 'pgoutput';
  agentMode: AgentMode = 'background';
  files!: AgentFiles;
  readonly agentPassword: string;
  readonly fdwPassword: string;
  /** A role's password was (re)set in this run: a running agent must restart to use it. */
  passwordsChanged = false;
  /** History was attached to restored tables in this run: a running agent reads which table is whose only when it starts. */
  historyAttached = false;
  postgresFdwCreated: boolean;
  agentPid: number | undefined;
  /** The restore step's plan, as last looked at (or applied). */
  attachPlan: AttachPlan | null = null;

  constructor(readonly opts: InstallOptions) {
    this.env = opts.env ?? process.env;
    const conns = resolveConnections({ source: opts.source, store: opts.store, node: opts.node }, {}, this.env);
    const hasPgEnv = Boolean(this.env['PGHOST'] || this.env['PGDATABASE'] || this.env['PGPORT'] || this.env['PGUSER']);
    const missing = [
      conns.sourceUrl === undefined && !hasPgEnv ? 'no source database: pass --source <url> (or set PGTIMEWARP_SOURCE_URL, or PGHOST/PGDATABASE)' : null,
      conns.storeUrl === undefined ? 'no store database: pass --store <url>, created when missing (or set PGTIMEWARP_STORE_URL)' : null,
    ].filter((m): m is string => m !== null);
    if (missing.length > 0) throw new Error(missing.join('; '));
    this.configFile = configPath(this.env);
    this.sourceUrl = conns.sourceUrl;
    this.storeUrl = conns.storeUrl!;
    const existing = readConfig(this.configFile);
    const mine = existing !== null && sameDatabase(existing.sourceUrl, this.sourceUrl);
    this.previous = mine ? existing : null;
    this.configConflict = existing !== null && !mine
      ? `the config file ${this.configFile} belongs to another installation (source ${redactUrl(existing.sourceUrl)})`
      : null;
    this.slot = opts.slot ?? this.previous?.slot ?? DEFAULT_SLOT;
    // reuse the passwords this installation already set: an existing role keeps working
    this.agentPassword = this.previous?.agentPassword ?? generatePassword();
    this.fdwPassword = this.previous?.fdwPassword ?? generatePassword();
    this.postgresFdwCreated = this.previous?.postgresFdwCreatedByInstall ?? false;
  }

  /** Source and store on one server: roles are shared, and created once. */
  get sameCluster(): boolean {
    return this.store.unreachable === null && this.store.systemIdentifier === this.source.systemIdentifier && this.store.port === this.source.port;
  }

  get storeParams(): ReturnType<typeof connParams> {
    return connParams(this.storeUrl);
  }

  /** The URL recorded for the source: as given, or built from the PG* variables. */
  get sourceUrlForConfig(): string {
    return this.sourceUrl ?? buildUrl(connParams(undefined));
  }

  agentSpec(): AgentSpec {
    return {
      nodeId: this.nodeId, slot: this.slot, plugin: this.plugin,
      sourceUrl: urlWithCredentials(this.sourceUrl, AGENT_ROLE, this.agentPassword),
      storeUrl: urlWithCredentials(this.storeUrl, AGENT_ROLE, this.agentPassword),
    };
  }

  desiredConfig(): InstalledConfig {
    const spec = this.agentSpec();
    return {
      version: 1,
      sourceUrl: this.sourceUrlForConfig,
      storeUrl: this.storeUrl,
      nodeId: this.nodeId,
      slot: this.slot,
      plugin: this.plugin,
      agent: this.agentMode,
      agentSourceUrl: spec.sourceUrl,
      agentStoreUrl: spec.storeUrl,
      ...(this.agentMode === 'background' ? { pidFile: this.files.pidFile, logFile: this.files.logFile } : {}),
      ...(this.agentMode === 'systemd' ? { systemdUnit: this.files.unitName } : {}),
      ...(this.agentMode !== 'background' ? { envFile: this.files.envFile } : {}),
      agentRole: AGENT_ROLE,
      agentPassword: this.agentPassword,
      fdwRole: FDW_ROLE,
      fdwPassword: this.fdwPassword,
      ...(this.postgresFdwCreated ? { postgresFdwCreatedByInstall: true } : {}),
    };
  }

  /** Look at everything (read only) and judge; throws every problem at once. */
  async inspect(): Promise<void> {
    this.source = await inspectSource(this.sourceUrl, this.slot);
    const s = this.source;
    this.nodeId = this.opts.node ?? s.configuredNodeId ?? this.previous?.nodeId ?? deriveNodeId(s.systemIdentifier, s.database);
    const slotPlugin = s.slot !== null && s.slot.database === s.database && (s.slot.plugin === 'pgoutput' || s.slot.plugin === 'wal2json') ? s.slot.plugin : undefined;
    this.plugin = (this.opts.plugin as Plugin | undefined) ?? this.previous?.plugin ?? slotPlugin ?? 'pgoutput';
    const systemd = systemdRunning();
    this.agentMode = (this.opts.agent as AgentMode | undefined) ?? this.previous?.agent ?? (systemd ? 'systemd' : 'background');
    this.files = agentFiles(this.nodeId, this.configFile, this.env);
    this.store = await inspectStore(this.storeUrl, this.nodeId);
    this.tools = s.isSuperuser && s.serverDirs !== null ? await findBuildTools(s.major, s.serverDirs) : null;
    this.restart = restartCommand(s);
    let aptAvailable = false;
    try {
      aptAvailable = (await execa('apt-get', ['--version'], { reject: false, stdin: 'ignore' })).exitCode === 0;
    } catch {
      aptAvailable = false;
    }
    this.judgement = findProblems(s, this.store, this.tools, {
      nodeId: this.nodeId, slot: this.slot, plugin: this.plugin, agent: this.agentMode, systemdRunning: systemd,
      installDeps: this.opts.installDeps ?? false, restart: this.opts.restart ?? false, aptAvailable,
      restartCommand: this.restart, configConflict: this.configConflict,
      installDirsUnwritable: s.serverDirs !== null && s.local.ok ? installDirsUnwritable(s.serverDirs) : null,
    });
    if (this.judgement.problems.length > 0) throw new Error(formatProblems(this.judgement.problems));
  }

  /** A client on the source database. */
  source$<T>(work: (c: pg.Client) => Promise<T>): Promise<T> {
    return withClient(this.sourceUrl, work, { what: 'the source database' });
  }

  /** A client on the store database. */
  store$<T>(work: (c: pg.Client) => Promise<T>): Promise<T> {
    return withClient(this.storeUrl, work, { what: 'the store database' });
  }

  /** Whether the store database exists. */
  storeDatabaseExists(): Promise<boolean> {
    return databaseExists(this.storeUrl, 'the store database');
  }

  /** A client on the store server's maintenance database (to create the store database). */
  maintenance$<T>(work: (c: pg.Client) => Promise<T>): Promise<T> {
    return withMaintenanceClient(this.storeUrl, work);
  }

  async storeSchemaExists(): Promise<boolean> {
    if (!(await this.storeDatabaseExists())) return false;
    return this.store$(async (c) => ((await c.query(`SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'pgtimewarp_store'`)).rowCount ?? 0) > 0);
  }

  async extensionExists(): Promise<boolean> {
    return this.source$(async (c) => ((await c.query(`SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgtimewarp'`)).rowCount ?? 0) > 0);
  }

  /** The role whose user mapping the extension uses: its owner (the installing role when it does not exist yet). */
  async extensionOwner(): Promise<string> {
    return this.source$(async (c) => (await c.query<{ owner: string }>(
      `SELECT coalesce((SELECT r.rolname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_roles r ON r.oid = e.extowner
                         WHERE e.extname = 'pgtimewarp'), current_user) AS owner`,
    )).rows[0]!.owner);
  }

  roleSpecs(): { source: RoleSpec[]; store: RoleSpec[] } {
    const agentOnSource: RoleSpec = { name: AGENT_ROLE, password: this.agentPassword, replication: true };
    const fdw: RoleSpec = { name: FDW_ROLE, password: this.fdwPassword, replication: false };
    if (this.sameCluster) return { source: [agentOnSource, fdw], store: [] };
    return { source: [agentOnSource], store: [{ name: AGENT_ROLE, password: this.agentPassword, replication: false }, fdw] };
  }

  /** The FDW server options the store needs, as the source server will connect (it runs here, as the installer does). */
  fdwOptions(): Record<string, string> {
    const p = this.storeParams;
    return { host: p.host, port: String(p.port), dbname: p.database };
  }
}

// ---------------------------------------------------------------------------
// the steps

function steps(run: InstallRun): Step[] {
  const list: Step[] = [];
  const add = (step: Step): void => void list.push(step);

  add({
    id: 'prerequisites',
    title: 'Check prerequisites',
    checkOnly: true,
    async check() {
      await run.inspect();
      const s = run.source;
      return {
        change: false,
        detail: `PostgreSQL ${Math.floor(s.serverVersionNum / 10000)}.${s.serverVersionNum % 10000}, node ${run.nodeId}, plugin ${run.plugin}, agent ${run.agentMode}`,
      };
    },
    async apply() {},
  });

  add({
    id: 'packages',
    title: 'Install build dependencies',
    async check() {
      const pkgs = run.judgement.packages;
      if (pkgs.length === 0) return { change: false, detail: 'pg_config, server headers, make and a compiler are present' };
      return { change: true, detail: `apt-get install ${pkgs.join(' ')}` };
    },
    async apply() {
      const pkgs = run.judgement.packages;
      const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
      const aptInstall = (): ReturnType<typeof execa> => execa('apt-get', ['install', '-y', '--no-install-recommends', ...pkgs], { env, reject: false, stdin: 'ignore', all: true });
      const tail = (out: unknown): string => String(out ?? '').trim().split('\n').slice(-10).join('\n');
      let r = await aptInstall();
      // A fresh machine (a container image, say) often has empty package lists: read them once, try again
      let hint = '; run apt-get update first if the packages are unknown';
      if (r.exitCode !== 0 && /Unable to locate package|has no installation candidate/.test(String(r.all ?? ''))) {
        const update = await execa('apt-get', ['update'], { env, reject: false, stdin: 'ignore', all: true });
        if (update.exitCode !== 0) {
          throw new Error(`apt-get does not know ${pkgs.join(' ')}, and apt-get update failed (exit code ${update.exitCode}); check the machine's package sources and network:\n${tail(update.all)}`);
        }
        r = await aptInstall();
        hint = ' even after apt-get update';
      }
      if (r.exitCode !== 0) {
        throw new Error(`apt-get install ${pkgs.join(' ')} failed (exit code ${r.exitCode})${hint}:\n${tail(r.all)}`);
      }
      run.tools = await findBuildTools(run.source.major, run.source.serverDirs!);
      return `installed ${pkgs.join(', ')}`;
    },
  });

  add({
    id: 'settings',
    title: 'Configure the source server',
    async check() {
      const settings = run.judgement.settings;
      if (settings.length === 0) {
        return { change: false, detail: `wal_level = logical${run.source.outputPluginLibraries !== null ? `, ${run.plugin} allowed` : ''}, a free slot and WAL sender` };
      }
      const restart = settings.some((x) => x.restart);
      return {
        change: true,
        detail: `set ${settings.map((x) => `${x.name} = ${x.value}`).join(', ')} with ALTER SYSTEM and ${restart ? `restart the server (${run.restart.display})` : 'reload'}`,
      };
    },
    async apply() {
      const done = await applySettings(run.sourceUrl, run.judgement.settings, run.restart);
      run.source = await inspectSource(run.sourceUrl, run.slot);
      if (run.source.walLevel !== 'logical') {
        throw new Error(`wal_level is still ${run.source.walLevel} after the restart: check postgresql.auto.conf and the server's other configuration files`);
      }
      return done;
    },
  });

  add({
    id: 'config',
    title: 'Write the config file',
    async check() {
      const desired = run.desiredConfig();
      const current = readConfig(run.configFile);
      if (current !== null && JSON.stringify(current) === JSON.stringify(desired)) return { change: false, detail: run.configFile };
      return { change: true, detail: `write ${run.configFile} (mode 0600: it holds the roles' passwords)` };
    },
    async apply() {
      writeConfig(run.desiredConfig(), run.configFile);
      return `wrote ${run.configFile}`;
    },
  });

  add({
    id: 'build',
    title: 'Build the extension (PGXS)',
    async check() {
      const pgConfig = run.tools?.pgConfig ?? null;
      if (pgConfig === null) return { change: true, detail: 'build it with make once the build dependencies are installed' };
      if (await buildIsUpToDate(pgConfig)) return { change: false, detail: 'up to date' };
      return { change: true, detail: `build it (make -C extension PG_CONFIG=${pgConfig})` };
    },
    async apply() {
      const pgConfig = run.tools?.pgConfig ?? null;
      if (pgConfig === null) throw new Error('no pg_config matching the server: install the build dependencies (--install-deps)');
      await buildExtension(pgConfig);
      return 'built';
    },
  });

  add({
    id: 'files',
    title: "Install the extension's files",
    async check() {
      const differing = differingFiles(run.source.serverDirs!);
      if (differing.length === 0) return { change: false, detail: `identical in ${run.source.serverDirs!.sharedir} and ${run.source.serverDirs!.pkglibdir}` };
      return { change: true, detail: `install ${differing.length} file(s) with make install: ${differing.join(', ')}` };
    },
    async apply() {
      await installExtensionFiles(run.tools!.pgConfig!);
      const still = differingFiles(run.source.serverDirs!);
      if (still.length > 0) throw new Error(`make install left these files different from the built ones: ${still.join(', ')}`);
      return 'installed with make install';
    },
  });

  add({
    id: 'store-database',
    title: 'Create the store database',
    async check() {
      const name = run.storeParams.database;
      if (await run.storeDatabaseExists()) return { change: false, detail: `${quoteIdent(name)} exists` };
      return { change: true, detail: `create database ${quoteIdent(name)}` };
    },
    async apply() {
      const name = run.storeParams.database;
      await run.maintenance$((c) => c.query(`CREATE DATABASE ${quoteIdent(name)}`));
      return `created database ${quoteIdent(name)}`;
    },
  });

  add({
    id: 'store-schema',
    title: 'Migrate the store schema',
    async check() {
      const applied = (await run.storeDatabaseExists()) ? await run.store$(appliedMigrations) : [];
      const pending = migrationIds().filter((id) => !applied.includes(id));
      if (pending.length === 0) return { change: false, detail: 'up to date' };
      return { change: true, detail: `apply ${pending.length} migration(s)` };
    },
    async apply() {
      const applied = await migrateStore(run.storeUrl);
      return `applied ${applied.join(', ') || 'nothing'}`;
    },
  });

  add({
    id: 'roles',
    title: 'Create the least-privilege roles',
    async check() {
      const specs = run.roleSpecs();
      const changes = [
        ...(await run.source$(async (c) => (await Promise.all(specs.source.map((s) => roleChanges(c, s)))).flat())),
        ...(specs.store.length === 0 ? [] : await run.maintenance$(async (c) => (await Promise.all(specs.store.map((s) => roleChanges(c, s)))).flat())),
      ];
      if (changes.length === 0) return { change: false, detail: `${AGENT_ROLE}, ${FDW_ROLE}` };
      return { change: true, detail: [...new Set(changes)].join(', ') };
    },
    async apply() {
      const specs = run.roleSpecs();
      const done: string[] = [];
      await run.source$(async (c) => {
        for (const s of specs.source) done.push(...(await ensureRole(c, s)));
      });
      if (specs.store.length > 0) {
        await run.maintenance$(async (c) => {
          for (const s of specs.store) done.push(...(await ensureRole(c, s)));
        });
      }
      if (done.some((d) => d.includes('password') || d.startsWith('create role'))) run.passwordsChanged = true;
      return [...new Set(done)].join(', ');
    },
  });

  add({
    id: 'grants',
    title: 'Grant the roles their store privileges',
    async check() {
      if (!(await run.storeSchemaExists())) return { change: true, detail: `grant ${AGENT_ROLE} and ${FDW_ROLE} their privileges on the store tables` };
      const missing = await run.store$(async (c) => missingGrants(c, storeGrants(await storeTables(c), { agent: AGENT_ROLE, fdw: FDW_ROLE })));
      if (missing.usage.length === 0 && missing.grants.length === 0) return { change: false, detail: 'all granted' };
      return { change: true, detail: `grant ${describeGrants(missing)}` };
    },
    async apply() {
      const granted = await run.store$(async (c) => {
        const missing = await missingGrants(c, storeGrants(await storeTables(c), { agent: AGENT_ROLE, fdw: FDW_ROLE }));
        await applyGrants(c, missing);
        return missing;
      });
      return `granted ${describeGrants(granted)}`;
    },
  });

  add({
    id: 'publication',
    title: `Create the publication ${PUBLICATION}`,
    async check() {
      if (run.plugin !== 'pgoutput') return { change: false, skip: true, detail: `${run.plugin} needs no publication` };
      const exists = await run.source$(async (c) => ((await c.query(`SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1`, [PUBLICATION])).rowCount ?? 0) > 0);
      return exists ? { change: false, detail: 'exists' } : { change: true, detail: `create publication ${PUBLICATION} (pgtimewarp_track adds tables to it)` };
    },
    async apply() {
      await run.source$((c) => c.query(`CREATE PUBLICATION ${quoteIdent(PUBLICATION)}`));
      return `created publication ${PUBLICATION}`;
    },
  });

  add({
    id: 'slot',
    title: 'Create the replication slot',
    async check() {
      const slot = await run.source$(async (c) => (await c.query<{ plugin: string }>(
        `SELECT plugin FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND database = current_database()`, [run.slot],
      )).rows[0]);
      if (slot !== undefined) return { change: false, detail: `${run.slot} (${slot.plugin})` };
      return { change: true, detail: `create logical slot ${run.slot} (${run.plugin}), before any table is tracked` };
    },
    async apply() {
      await run.source$((c) => c.query(`SELECT pg_catalog.pg_create_logical_replication_slot($1, $2)`, [run.slot, run.plugin]));
      return `created slot ${run.slot} (${run.plugin})`;
    },
  });

  add({
    id: 'extension',
    title: 'Create the extension in the source database',
    async check() {
      const state = await run.source$(async (c) => (await c.query<{ installed: string | null; available: string | null }>(
        `SELECT (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pgtimewarp') AS installed,
                (SELECT default_version FROM pg_catalog.pg_available_extensions WHERE name = 'pgtimewarp') AS available`,
      )).rows[0]!);
      if (state.installed === null) return { change: true, detail: 'CREATE EXTENSION pgtimewarp CASCADE' };
      if (state.available !== null && state.installed !== state.available) return { change: true, detail: `ALTER EXTENSION pgtimewarp UPDATE (${state.installed} -> ${state.available})` };
      return { change: false, detail: `version ${state.installed}` };
    },
    async apply(found) {
      await run.source$(async (c) => {
        if (found.detail.startsWith('ALTER')) {
          await c.query('ALTER EXTENSION pgtimewarp UPDATE');
          return;
        }
        const fdwBefore = ((await c.query(`SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'postgres_fdw'`)).rowCount ?? 0) > 0;
        await c.query('CREATE EXTENSION pgtimewarp CASCADE');
        if (!fdwBefore) {
          run.postgresFdwCreated = true;
          writeConfig(run.desiredConfig(), run.configFile); // so that uninstall knows to drop it again
        }
      });
      return found.detail.startsWith('ALTER') ? 'updated' : `created${run.postgresFdwCreated ? ' (with postgres_fdw)' : ''}`;
    },
  });

  add({
    id: 'fdw-server',
    title: 'Point the foreign server pgtimewarp_store at the store',
    async check() {
      const want = run.fdwOptions();
      const describe = Object.entries(want).map(([k, v]) => `${k} ${quoteLiteral(v)}`).join(', ');
      if (!(await run.extensionExists())) return { change: true, detail: `set ${describe}` };
      const have = await serverOptions(run);
      const differ = Object.keys(want).filter((k) => have[k] !== want[k]);
      if (differ.length === 0) return { change: false, detail: describe };
      return { change: true, detail: `set ${differ.map((k) => `${k} ${quoteLiteral(want[k]!)}`).join(', ')}` };
    },
    async apply() {
      const want = run.fdwOptions();
      const have = await serverOptions(run);
      const actions = Object.entries(want).filter(([k, v]) => have[k] !== v)
        .map(([k, v]) => `${k in have ? 'SET' : 'ADD'} ${k} ${quoteLiteral(v)}`);
      await run.source$((c) => c.query(`ALTER SERVER pgtimewarp_store OPTIONS (${actions.join(', ')})`));
      return `set ${Object.entries(want).map(([k, v]) => `${k} ${quoteLiteral(v)}`).join(', ')}`;
    },
  });

  add({
    id: 'user-mapping',
    title: "Map the extension's owner to the store role",
    async check() {
      const owner = await run.extensionOwner();
      if (!(await run.extensionExists())) return { change: true, detail: `create the user mapping for ${owner} (as ${FDW_ROLE})` };
      const have = await mappingOptions(run, owner);
      if (have === null) return { change: true, detail: `create the user mapping for ${owner} (as ${FDW_ROLE})` };
      if (have['user'] === FDW_ROLE && have['password'] === run.fdwPassword) return { change: false, detail: `${owner} -> ${FDW_ROLE}` };
      return { change: true, detail: `make ${owner}'s user mapping use ${FDW_ROLE} and its password` };
    },
    async apply() {
      const owner = await run.extensionOwner();
      const have = await mappingOptions(run, owner);
      const want: Record<string, string> = { user: FDW_ROLE, password: run.fdwPassword };
      // the statement holds the password in clear: kept out of the server's log
      await run.source$(async (c) => {
        if (have === null) {
          await queryUnlogged(c, `CREATE USER MAPPING FOR ${quoteIdent(owner)} SERVER pgtimewarp_store OPTIONS (user ${quoteLiteral(FDW_ROLE)}, password ${quoteLiteral(run.fdwPassword)})`);
        } else {
          const actions = Object.entries(want).filter(([k, v]) => have[k] !== v).map(([k, v]) => `${k in have ? 'SET' : 'ADD'} ${k} ${quoteLiteral(v)}`);
          await queryUnlogged(c, `ALTER USER MAPPING FOR ${quoteIdent(owner)} SERVER pgtimewarp_store OPTIONS (${actions.join(', ')})`);
        }
      });
      return `${owner} -> ${FDW_ROLE}`;
    },
  });

  add({
    id: 'node',
    title: 'Register the node',
    async check() {
      const todo: string[] = [];
      const configured = (await run.extensionExists())
        ? await run.source$(async (c) => (await c.query<{ node_id: string }>(`SELECT node_id FROM pgtimewarp.config`)).rows[0]?.node_id ?? null)
        : null;
      if (configured !== run.nodeId) todo.push(`SELECT pgtimewarp_configure(${quoteLiteral(run.nodeId)}) in the source`);
      const registered = (await run.storeSchemaExists())
        ? await run.store$(async (c) => ((await c.query(`SELECT 1 FROM pgtimewarp_store.nodes WHERE node_id = $1`, [run.nodeId])).rowCount ?? 0) > 0)
        : false;
      if (!registered) todo.push(`add node ${run.nodeId} to the store`);
      return todo.length === 0 ? { change: false, detail: run.nodeId } : { change: true, detail: todo.join(', ') };
    },
    async apply() {
      await run.source$((c) => c.query(`SELECT pgtimewarp_configure($1)`, [run.nodeId]));
      await run.store$((c) => c.query(
        `INSERT INTO pgtimewarp_store.nodes (node_id, database_name, system_identifier, database_oid) VALUES ($1, $2, $3, $4)
         ON CONFLICT (node_id) DO NOTHING`,
        [run.nodeId, run.source.database, run.source.systemIdentifier, run.source.databaseOid],
      ));
      return `node ${run.nodeId}`;
    },
  });

  add({
    id: 'verify',
    title: 'Check the connections the installation uses',
    checkOnly: true,
    async check() {
      if (!(await run.extensionExists()) || !(await run.storeSchemaExists())) {
        return { change: false, skip: true, detail: 'checked once the extension and the store exist' };
      }
      // a dry run on a restored database: the extension came with the dump, its server's options and mapping did not
      const want = run.fdwOptions();
      const server = await serverOptions(run);
      if ((await mappingOptions(run, await run.extensionOwner())) === null || Object.keys(want).some((k) => server[k] !== want[k])) {
        return { change: false, skip: true, detail: 'checked once the foreign server and the user mapping are set' };
      }
      await verifyConnections(run);
      return { change: false, detail: `the source reaches the store through postgres_fdw as ${FDW_ROLE}; ${AGENT_ROLE} connects to both` };
    },
    async apply() {},
  });

  add({
    id: 'restore',
    title: 'Attach history to tables restored from a dump',
    async check() {
      if (!(await run.extensionExists()) || !(await run.storeSchemaExists())) {
        return { change: false, skip: true, detail: 'a new node: no history to attach' };
      }
      const { plan, node } = await readPlan(run);
      if (plan.source === 'unregistered') return { change: false, skip: true, detail: 'a new node: no history to attach' };
      return { change: plan.recordSource || plan.attach.length > 0, detail: describeAttachPlan(plan, node, run.source, run.nodeId, false) };
    },
    async apply() {
      const { plan, node } = await readPlan(run);
      await run.store$((store) => run.source$((source) => applyAttachPlan(store, source, run.nodeId, plan, run.source)));
      run.attachPlan = plan;
      if (plan.attach.length > 0) run.historyAttached = true;
      return describeAttachPlan(plan, node, run.source, run.nodeId, true);
    },
  });

  add({
    id: 'agent',
    title: 'Provision the agent',
    async check() {
      return agentCheck(run);
    },
    async apply() {
      return agentApply(run);
    },
  });
  return list;
}

/** The restore step's plan, read fresh from the store and the source, kept for the summary. */
async function readPlan(run: InstallRun): Promise<Awaited<ReturnType<typeof readAttachPlan>>> {
  const read = await run.store$((store) => run.source$((source) =>
    readAttachPlan(store, source, run.nodeId, run.source)));
  run.attachPlan = read.plan;
  return read;
}

/** "SELECT/INSERT on nodes to r, ..." — in full when a few are missing, by role when many (a fresh store). */
function describeGrants(missing: { usage: string[]; grants: Grant[] }): string {
  if (missing.grants.length > 4) {
    return `${AGENT_ROLE} read and write on the store tables, ${FDW_ROLE} read and what track/untrack/forget write`;
  }
  const parts = missing.grants.map((g) => `${g.privileges.join('/')} on ${g.table} to ${g.role}`);
  if (missing.usage.length > 0) parts.push(`USAGE on schema pgtimewarp_store to ${missing.usage.join(', ')}`);
  return parts.join(', ');
}

async function serverOptions(run: InstallRun): Promise<Record<string, string>> {
  return run.source$(async (c) => optionsRecord((await c.query<{ o: string[] | null }>(
    `SELECT srvoptions AS o FROM pg_catalog.pg_foreign_server WHERE srvname = 'pgtimewarp_store'`,
  )).rows[0]?.o ?? null));
}

async function mappingOptions(run: InstallRun, owner: string): Promise<Record<string, string> | null> {
  return run.source$(async (c) => {
    const row = (await c.query<{ o: string[] | null }>(
      `SELECT umoptions AS o FROM pg_catalog.pg_user_mappings WHERE srvname = 'pgtimewarp_store' AND usename = $1`, [owner],
    )).rows[0];
    return row === undefined ? null : optionsRecord(row.o);
  });
}

function optionsRecord(options: string[] | null): Record<string, string> {
  const out: Record<string, string> = {};
  for (const o of options ?? []) {
    const at = o.indexOf('=');
    out[o.slice(0, at)] = o.slice(at + 1);
  }
  return out;
}

/** The store through postgres_fdw, and the agent's role on both sides: each failure says what to allow. */
async function verifyConnections(run: InstallRun): Promise<void> {
  try {
    await run.source$((c) => c.query(`SELECT count(*) FROM pgtimewarp.nodes`));
  } catch (err) {
    const p = run.fdwOptions();
    throw new Error(
      `the source server cannot reach the store through postgres_fdw as ${FDW_ROLE} (host ${p['host']}, port ${p['port']}, dbname ${p['dbname']}): ${errorMessage(err)}. ` +
        `Let ${FDW_ROLE} connect from the source server with a password (pg_hba.conf on the store server, e.g. "host ${p['dbname']} ${FDW_ROLE} 127.0.0.1/32 scram-sha-256", then reload), then run install again`,
    );
  }
  const spec = run.agentSpec();
  for (const [url, what] of [[spec.sourceUrl, 'source'], [spec.storeUrl, 'store']] as const) {
    try {
      await withClient(url, (c) => c.query('SELECT 1'));
    } catch (err) {
      throw new Error(
        `the agent's role ${AGENT_ROLE} cannot connect to the ${what} database: ${errorMessage(err)}. ` +
          `Allow it in the ${what} server's pg_hba.conf (with a password), reload, then run install again`,
      );
    }
  }
}

async function agentCheck(run: InstallRun): Promise<{ change: boolean; detail: string; skip?: boolean }> {
  const spec = run.agentSpec();
  const files = run.files;
  const restart = run.passwordsChanged ? 'with the new password' : run.historyAttached ? 'to read whose history is whose after the restore' : null;
  const leftovers: string[] = [];
  if (run.agentMode !== 'background' && backgroundAgentState(files.pidFile, spec).state !== 'stopped') leftovers.push('stop the background agent');
  if (run.agentMode !== 'systemd' && existsSync(files.unitFile)) leftovers.push(`remove ${files.unitName}`);
  if (run.agentMode === 'background' && existsSync(files.envFile)) leftovers.push(`remove ${files.envFile}, which only --agent systemd and none use`);
  switch (run.agentMode) {
    case 'background': {
      const state = backgroundAgentState(files.pidFile, spec);
      if (state.state === 'running' && restart === null && leftovers.length === 0) {
        run.agentPid = state.pid;
        return { change: false, detail: `running in the background (pid ${state.pid})` };
      }
      const what = state.state === 'running' ? `restart it (pid ${state.pid}) ${restart ?? ''}`.trimEnd() : state.state === 'different' ? `restart it (pid ${state.pid}) with the new settings` : `start it in the background (log ${files.logFile})`;
      return { change: true, detail: [...leftovers, what].join(', ') };
    }
    case 'systemd': {
      const unit = systemdAgentUnit(spec, files);
      const changes = [...leftovers, ...(await systemdChanges(files, unit, envFileText(agentEnvironment(spec))))];
      if (changes.length === 0 && restart === null) return { change: false, detail: `${files.unitName} enabled and running` };
      return { change: true, detail: changes.length > 0 ? changes.join(', ') : `restart ${files.unitName} ${restart}` };
    }
    case 'none': {
      const envText = envFileText(agentEnvironment(spec));
      const envSame = existsSync(files.envFile) && readFileSync(files.envFile, 'utf8') === envText;
      if (!envSame) leftovers.push(`write ${files.envFile} for the agent you run`);
      if (leftovers.length === 0) return { change: false, detail: 'not run by the installer (--agent none)' };
      return { change: true, detail: leftovers.join(', ') };
    }
  }
}

async function agentApply(run: InstallRun): Promise<string> {
  const spec = run.agentSpec();
  const files = run.files;
  const done: string[] = [];
  if (run.agentMode !== 'systemd') done.push(...(await removeSystemdAgent(files, { keepEnvFile: run.agentMode === 'none' })));
  if (run.agentMode !== 'background' || backgroundAgentState(files.pidFile, spec).state !== 'stopped') {
    const stopped = await stopBackgroundAgent(files, spec);
    if (stopped !== null) done.push(`stopped the agent (pid ${stopped})`);
  }
  switch (run.agentMode) {
    case 'background': {
      run.agentPid = await startBackgroundAgent(spec, files);
      done.push(`started in the background (pid ${run.agentPid}, log ${files.logFile})`);
      break;
    }
    case 'systemd': {
      await installSystemdAgent(files, systemdAgentUnit(spec, files), envFileText(agentEnvironment(spec)));
      done.push(`${files.unitName} enabled and streaming`);
      break;
    }
    case 'none': {
      if (writeFileIfChanged(files.envFile, envFileText(agentEnvironment(spec)), 0o600)) done.push(`wrote ${files.envFile}`);
      break;
    }
  }
  return done.join(', ');
}

/** The command that runs the agent by hand (--agent none): its URLs come from the environment file. */
function manualAgentCommand(run: InstallRun): string {
  return `set -a; . ${run.files.envFile}; set +a; pgtimewarp ${agentArgs(run.agentSpec(), 'text').join(' ')}`;
}

/** Install pgtimewarp; see the module comment.  Throws with every problem found, changing nothing, when a prerequisite is missing. */
export async function runInstall(opts: InstallOptions = {}): Promise<InstallResult> {
  validate(opts);
  const run = new InstallRun(opts);
  // filled as the steps finish: on a failure, what was changed before it
  const results: StepResult[] = [];
  try {
    await planThenApply(() => steps(run), opts, results);
  } catch (err) {
    if (err instanceof Error && results.some((r) => r.status === 'changed')) {
      const done = results.filter((r) => r.status === 'changed').map((r) => r.id).join(', ');
      err.message += `\n(what was done before this stays: ${done}. Run install again once this is fixed: it goes on from here. ` +
        'Or run "pgtimewarp uninstall" to remove it: a replication slot left unread keeps WAL forever.)';
    }
    throw err;
  }
  return summarize(run, results, opts.dryRun ?? false);
}

function summarize(run: InstallRun, steps: StepResult[], dryRun: boolean): InstallResult {
  const changed = steps.some((s) => s.status === 'changed' || s.status === 'would-change');
  const agent: InstallResult['agent'] = { mode: run.agentMode };
  if (run.agentMode === 'background') Object.assign(agent, { pidFile: run.files.pidFile, logFile: run.files.logFile, ...(run.agentPid !== undefined ? { pid: run.agentPid } : {}) });
  if (run.agentMode === 'systemd') Object.assign(agent, { unit: run.files.unitName, envFile: run.files.envFile });
  if (run.agentMode === 'none') Object.assign(agent, { envFile: run.files.envFile, command: manualAgentCommand(run) });
  const next = [
    `track a table:   pgtimewarp track <schema.table>   (in SQL: SELECT pgtimewarp_track('<schema.table>');)`,
    `check health:    pgtimewarp doctor`,
  ];
  const plan = run.attachPlan;
  for (const n of plan?.notAttached ?? []) next.push(`history not attached: ${describeNotAttached(n)}`);
  if (run.agentMode === 'none') {
    next.unshift(`${run.historyAttached ? 'run the agent (restart it if it runs: it reads whose history is whose when it starts)' : 'run the agent'}:   ${manualAgentCommand(run)}`);
  }
  if (run.agentMode === 'systemd' && runsFromNpxCache()) {
    next.unshift(`the agent's unit runs pgtimewarp from npx's cache, which npm may clear: install it for good (npm install -g pgtimewarp) and run install again`);
  }
  const what = `node ${run.nodeId}, slot ${run.slot} (${run.plugin}), store ${redactUrl(run.storeUrl)}`;
  let message: string;
  if (dryRun) {
    const n = steps.filter((s) => s.status === 'would-change').length;
    message = n === 0 ? `dry run: nothing to do: pgtimewarp is installed and up to date (${what})` : `dry run: ${n} step(s) would change something; nothing was changed`;
  } else {
    message = changed ? `pgtimewarp is installed: ${what}` : `nothing to do: pgtimewarp is installed and up to date (${what})`;
  }
  return {
    command: 'install', dryRun, changed, message, steps,
    nodeId: run.nodeId, slot: run.slot, plugin: run.plugin,
    source: redactUrl(run.sourceUrlForConfig), store: redactUrl(run.storeUrl), configFile: run.configFile,
    agent,
    restore: {
      source: plan?.source ?? 'unregistered',
      attached: plan?.attach.map((a) => a.table) ?? [],
      notAttached: plan?.notAttached ?? [],
    },
    next,
  };
}
