// What `pgtimewarp install` needs before it changes anything: facts gathered
// from the source server, the store server and this machine (read only), and
// one pure judgement of them, findProblems(), which names every problem with
// its exact fix at once.

import { execa } from 'execa';
import type pg from 'pg';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { lsnFromText } from '../agent/decode.js';
import type { AgentMode, Plugin } from './config.js';
import { connParams, errorMessage, isMissingDatabase, quoteIdent, quoteLiteral, withClient, type ConnParams } from './install-sql.js';

/** The source server and database, as the installing role sees them. */
export interface SourceFacts {
  params: ConnParams;
  currentUser: string;
  isSuperuser: boolean;
  serverVersionNum: number;
  /** e.g. 15 */
  major: number;
  systemIdentifier: string;
  database: string;
  /** The database's OID: with the system identifier, what tells this database from one restored under its name. */
  databaseOid: string;
  /** The server's WAL position now (pg_current_wal_lsn). */
  walLsn: string;
  /** The server's port (current_setting), to tell whether the store is on the same server. */
  port: string;
  /** null when the role may not read it (not a superuser). */
  dataDirectory: string | null;
  walLevel: string;
  /** The allow-list of logical decoding plugins (a GUC of this PostgreSQL build); null where it does not exist. */
  outputPluginLibraries: { value: string[]; context: string } | null;
  maxReplicationSlots: number;
  usedReplicationSlots: number;
  maxWalSenders: number;
  usedWalSenders: number;
  /** The server's own directories (the pg_config view; superuser only): where PGXS must install. */
  serverDirs: { bindir: string; sharedir: string; pkglibdir: string } | null;
  postgresFdwAvailable: boolean;
  postgresFdwInstalled: boolean;
  /** The replication slot of our name, wherever it is. */
  slot: { database: string | null; plugin: string | null; active: boolean; activePid: number | null } | null;
  /** Every logical replication slot on the server, with its database. */
  logicalSlots: Array<{ name: string; databaseOid: string; database: string }>;
  publicationExists: boolean;
  extension: { version: string; owner: string } | null;
  /** Default version of pgtimewarp among the installed extension files; null when not installed on the server. */
  availableVersion: string | null;
  /** pgtimewarp.config's node id, when the extension exists and is configured. */
  configuredNodeId: string | null;
  /** The server runs on this machine: its data directory is here, with the same system identifier. */
  local: { ok: boolean; reason: string };
}

export async function inspectSource(url: string | undefined, slot: string): Promise<SourceFacts> {
  return withClient(url, async (c) => {
    const one = async <T>(sql: string, params: unknown[] = []): Promise<T> =>
      (await c.query(sql, params)).rows[0] as T;
    const base = await one<{
      current_user: string; is_super: boolean; version_num: string; sysid: string; db: string; db_oid: string; port: string;
      wal_lsn: string; wal_level: string; max_slots: string; used_slots: string; max_senders: string; used_senders: string;
    }>(
      `SELECT current_user, r.rolsuper AS is_super, current_setting('server_version_num') AS version_num,
              (SELECT system_identifier::text FROM pg_catalog.pg_control_system()) AS sysid,
              current_database() AS db,
              (SELECT oid::text FROM pg_catalog.pg_database WHERE datname = current_database()) AS db_oid,
              pg_catalog.pg_current_wal_lsn()::text AS wal_lsn,
              current_setting('port') AS port, current_setting('wal_level') AS wal_level,
              current_setting('max_replication_slots') AS max_slots,
              (SELECT count(*) FROM pg_catalog.pg_replication_slots)::text AS used_slots,
              current_setting('max_wal_senders') AS max_senders,
              (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'walsender')::text AS used_senders
         FROM pg_catalog.pg_roles r WHERE r.rolname = current_user`,
    );
    const plugins = await one<{ setting: string; context: string } | undefined>(
      `SELECT setting, context FROM pg_catalog.pg_settings WHERE name = 'output_plugin_libraries'`,
    );
    // data_directory and the pg_config view are for superusers (and pg_read_all_settings) only
    let dataDirectory: string | null = null;
    let serverDirs: SourceFacts['serverDirs'] = null;
    if (base.is_super) {
      dataDirectory = (await one<{ d: string }>(`SELECT current_setting('data_directory') AS d`)).d;
      const dirs = await c.query<{ name: string; setting: string }>(
        `SELECT name, setting FROM pg_catalog.pg_config WHERE name IN ('BINDIR', 'SHAREDIR', 'PKGLIBDIR')`,
      );
      const get = (n: string): string => dirs.rows.find((r) => r.name === n)?.setting ?? '';
      serverDirs = { bindir: get('BINDIR'), sharedir: get('SHAREDIR'), pkglibdir: get('PKGLIBDIR') };
    }
    const ext = await c.query<{ name: string; default_version: string | null; installed_version: string | null }>(
      `SELECT name, default_version, installed_version FROM pg_catalog.pg_available_extensions
        WHERE name IN ('postgres_fdw', 'pgtimewarp')`,
    );
    const fdw = ext.rows.find((r) => r.name === 'postgres_fdw');
    const ours = ext.rows.find((r) => r.name === 'pgtimewarp');
    const slotRow = await one<{ database: string | null; plugin: string | null; active: boolean; active_pid: number | null } | undefined>(
      `SELECT database, plugin, active, active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`,
      [slot],
    );
    const logicalSlots = await c.query<{ name: string; database_oid: string; database: string }>(
      `SELECT slot_name AS name, datoid::text AS database_oid, database FROM pg_catalog.pg_replication_slots
        WHERE slot_type = 'logical' ORDER BY slot_name`,
    );
    const pub = await c.query(`SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = 'pgtimewarp'`);
    const extRow = await one<{ version: string; owner: string } | undefined>(
      `SELECT e.extversion AS version, r.rolname AS owner
         FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_roles r ON r.oid = e.extowner
        WHERE e.extname = 'pgtimewarp'`,
    );
    let configuredNodeId: string | null = null;
    if (extRow !== undefined && base.is_super) {
      configuredNodeId = (await one<{ node_id: string } | undefined>(`SELECT node_id FROM pgtimewarp.config`))?.node_id ?? null;
    }
    const versionNum = Number(base.version_num);
    return {
      params: connParams(url),
      currentUser: base.current_user,
      isSuperuser: base.is_super,
      serverVersionNum: versionNum,
      major: Math.floor(versionNum / 10000),
      systemIdentifier: base.sysid,
      database: base.db,
      databaseOid: base.db_oid,
      walLsn: base.wal_lsn,
      port: base.port,
      dataDirectory,
      walLevel: base.wal_level,
      outputPluginLibraries: plugins === undefined ? null : {
        value: plugins.setting.split(',').map((s) => s.trim()).filter(Boolean),
        context: plugins.context,
      },
      maxReplicationSlots: Number(base.max_slots),
      usedReplicationSlots: Number(base.used_slots),
      maxWalSenders: Number(base.max_senders),
      usedWalSenders: Number(base.used_senders),
      serverDirs,
      postgresFdwAvailable: fdw !== undefined,
      postgresFdwInstalled: fdw?.installed_version != null,
      slot: slotRow === undefined ? null : {
        database: slotRow.database, plugin: slotRow.plugin, active: slotRow.active, activePid: slotRow.active_pid,
      },
      logicalSlots: logicalSlots.rows.map((r) => ({ name: r.name, databaseOid: r.database_oid, database: r.database })),
      publicationExists: (pub.rowCount ?? 0) > 0,
      extension: extRow ?? null,
      availableVersion: ours?.default_version ?? null,
      configuredNodeId,
      local: isLocalServer(dataDirectory, base.sysid),
    };
  }, { what: 'the source database' });
}

/**
 * PGXS installs into this machine's PostgreSQL directories, so the source
 * server must run here.  Its data directory must exist here; where we may
 * read its pg_control (as root), the system identifier must match too, so a
 * remote server with the same layout is not mistaken for a local one.
 */
export function isLocalServer(dataDirectory: string | null, systemIdentifier: string): { ok: boolean; reason: string } {
  if (dataDirectory === null) return { ok: false, reason: 'its data directory is unknown (not a superuser)' };
  if (!existsSync(dataDirectory)) {
    return { ok: false, reason: `its data directory ${dataDirectory} does not exist on this machine` };
  }
  let control: Buffer;
  try {
    control = readFileSync(join(dataDirectory, 'global', 'pg_control'));
  } catch {
    return { ok: true, reason: `its data directory ${dataDirectory} is here` }; // not ours to read: existence will do
  }
  // ControlFileData begins with the system identifier, a uint64 in the machine's byte order
  const here = control.length >= 8 ? control.readBigUInt64LE(0).toString() : '';
  if (here !== systemIdentifier) {
    return { ok: false, reason: `${dataDirectory} here belongs to another cluster (system identifier ${here}, the server says ${systemIdentifier})` };
  }
  return { ok: true, reason: `its data directory ${dataDirectory} is here` };
}

/** The store server, as the installing role sees it. */
export interface StoreFacts {
  params: ConnParams;
  /** null: the server could not be reached at all. */
  unreachable: string | null;
  databaseExists: boolean;
  isSuperuser: boolean;
  canCreateRole: boolean;
  canCreateDb: boolean;
  systemIdentifier: string;
  port: string;
  schemaExists: boolean;
  /** Ids of the migrations already applied (postgres-migrations' table). */
  appliedMigrations: number[];
  /** The store's row for our node, when there is one: the source database its history was recorded from. */
  node: NodeRecord | null;
  /** The agent's checkpoint for our node: history exists up to this LSN. */
  checkpointLsn: string | null;
  /** The slot the agent that wrote the checkpoint read. */
  checkpointSlot: string | null;
}

/** The database a node's history was recorded from, as the store's nodes row says. */
export interface NodeRecord {
  databaseName: string | null;
  systemIdentifier: string | null;
  /** null for a node registered before store migration 4, or by the agent or the extension. */
  databaseOid: string | null;
}

/**
 * How the source database stands to the one the node's history was
 * recorded from:
 * - 'unregistered': the store has no such node yet;
 * - 'recorded': it is that database (the same cluster and database OID;
 *   the same name when no OID was recorded);
 * - 'restored': another database that says it is the node: its
 *   pgtimewarp.config, which only a superuser can write, came with a dump of
 *   the node's database.  Its tables have new OIDs: install attaches their
 *   history to them (install-restore.ts);
 * - 'other': another database that does not say so; giving it the node
 *   would mix two databases' histories.
 * A database whose table was merely dropped and created again is 'recorded':
 * nothing is attached by name there.
 */
export type NodeSource = 'unregistered' | 'recorded' | 'restored' | 'other';

export function nodeSource(
  source: Pick<SourceFacts, 'systemIdentifier' | 'database' | 'databaseOid' | 'configuredNodeId'>,
  node: NodeRecord | null,
  nodeId: string,
): NodeSource {
  if (node === null) return 'unregistered';
  const same = node.systemIdentifier === source.systemIdentifier &&
    (node.databaseOid !== null ? node.databaseOid === source.databaseOid : node.databaseName === source.database);
  if (same) return 'recorded';
  return source.configuredNodeId === nodeId ? 'restored' : 'other';
}

/** "database "app" (OID 16384) of system 7300..." */
export function describeNodeRecord(node: NodeRecord): string {
  return `database ${JSON.stringify(node.databaseName ?? '?')}${node.databaseOid !== null ? ` (OID ${node.databaseOid})` : ''} of system ${node.systemIdentifier ?? '?'}`;
}

/** Maintenance databases to create the store database from, in order of preference. */
const MAINTENANCE_DBS = ['postgres', 'template1'];

export async function inspectStore(url: string, nodeId: string): Promise<StoreFacts> {
  const params = connParams(url);
  const facts: StoreFacts = {
    params, unreachable: null, databaseExists: false, isSuperuser: false, canCreateRole: false, canCreateDb: false,
    systemIdentifier: '', port: '', schemaExists: false, appliedMigrations: [], node: null, checkpointLsn: null, checkpointSlot: null,
  };
  let inStore = true;
  try {
    await readStore(url, undefined, nodeId, facts);
    facts.databaseExists = true;
  } catch (err) {
    if (!isMissingDatabase(err)) {
      facts.unreachable = errorMessage(err);
      return facts;
    }
    inStore = false;
  }
  if (!inStore) {
    const errors: string[] = [];
    for (const db of MAINTENANCE_DBS) {
      try {
        await readStore(url, db, nodeId, facts);
        return facts;
      } catch (err) {
        errors.push(errorMessage(err));
      }
    }
    facts.unreachable = `the store database "${params.database}" does not exist, and its server's maintenance databases ` +
      `(${MAINTENANCE_DBS.join(', ')}) refused a connection to create it: ${errors.join('; ')}`;
  }
  return facts;
}


async function readStore(url: string, maintenanceDb: string | undefined, nodeId: string, facts: StoreFacts): Promise<void> {
  await withClient(url, async (c) => {
    const who = (await c.query<{ sup: boolean; crr: boolean; crd: boolean; sysid: string; port: string }>(
      `SELECT rolsuper AS sup, rolcreaterole AS crr, rolcreatedb AS crd,
              (SELECT system_identifier::text FROM pg_catalog.pg_control_system()) AS sysid,
              current_setting('port') AS port
         FROM pg_catalog.pg_roles WHERE rolname = current_user`,
    )).rows[0]!;
    facts.isSuperuser = who.sup;
    facts.canCreateRole = who.crr || who.sup;
    facts.canCreateDb = who.crd || who.sup;
    facts.systemIdentifier = who.sysid;
    facts.port = who.port;
    if (maintenanceDb !== undefined) return;
    const schema = await c.query(`SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'pgtimewarp_store'`);
    facts.schemaExists = (schema.rowCount ?? 0) > 0;
    facts.appliedMigrations = await appliedMigrations(c);
    if (facts.schemaExists) {
      facts.node = await readNodeRecord(c, nodeId);
      const cp = (await c.query<{ lsn: string; slot: string }>(
        `SELECT confirmed_lsn::text AS lsn, slot_name AS slot FROM pgtimewarp_store.wal_checkpoints WHERE node_id = $1`, [nodeId],
      )).rows[0];
      facts.checkpointLsn = cp?.lsn ?? null;
      facts.checkpointSlot = cp?.slot ?? null;
    }
  }, { database: maintenanceDb, what: 'the store server' });
}

/** The store's nodes row of `nodeId`; database_oid read so that a store not yet migrated to 4 reads as NULL. */
export async function readNodeRecord(c: pg.Client, nodeId: string): Promise<NodeRecord | null> {
  const row = (await c.query<{ database_name: string | null; system_identifier: string | null; database_oid: string | null }>(
    `SELECT n.database_name, n.system_identifier, pg_catalog.to_jsonb(n) ->> 'database_oid' AS database_oid
       FROM pgtimewarp_store.nodes n WHERE n.node_id = $1`, [nodeId],
  )).rows[0];
  return row === undefined ? null : { databaseName: row.database_name, systemIdentifier: row.system_identifier, databaseOid: row.database_oid };
}

/** Ids of the migrations postgres-migrations recorded as applied (its own bookkeeping one is 0); none when it never ran. */
export async function appliedMigrations(c: pg.Client): Promise<number[]> {
  const table = await c.query<{ present: boolean }>(`SELECT to_regclass('migrations') IS NOT NULL AS present`);
  if (!table.rows[0]!.present) return [];
  const rows = await c.query<{ id: number }>(`SELECT id FROM migrations ORDER BY id`);
  return rows.rows.map((r) => r.id);
}

/** Build tools on this machine that match the server. */
export interface BuildTools {
  /** A pg_config of the server's major version that installs where the server loads from. */
  pgConfig: string | null;
  headers: boolean;
  make: boolean;
  compiler: boolean;
  /** wal2json.so in the server's library directory. */
  wal2json: boolean;
  /** Candidates looked at, for the message when none fits. */
  looked: string[];
}

async function runs(command: string, args: string[]): Promise<string | null> {
  const r = await execa(command, args, { reject: false, stdin: 'ignore' });
  return r.exitCode === 0 && typeof r.stdout === 'string' ? r.stdout.trim() : null;
}

async function onPath(command: string): Promise<string | null> {
  for (const dir of (process.env['PATH'] ?? '').split(':')) {
    if (dir && existsSync(join(dir, command))) return join(dir, command);
  }
  return null;
}

export async function findBuildTools(major: number, serverDirs: NonNullable<SourceFacts['serverDirs']>): Promise<BuildTools> {
  const candidates = [join(serverDirs.bindir, 'pg_config'), await onPath('pg_config'), `/usr/lib/postgresql/${major}/bin/pg_config`]
    .filter((p): p is string => p !== null && existsSync(p));
  const looked: string[] = [];
  let pgConfig: string | null = null;
  let includeDir: string | null = null;
  let pgxs: string | null = null;
  let cc: string | null = null;
  for (const candidate of [...new Set(candidates)]) {
    const out = await runs(candidate, ['--version', '--sharedir', '--pkglibdir', '--includedir-server', '--pgxs', '--cc']);
    if (out === null) {
      looked.push(`${candidate} (does not run)`);
      continue;
    }
    const [version = '', sharedir, pkglibdir, include, pgxsPath, ccLine] = out.split('\n').map((s) => s.trim());
    const m = /PostgreSQL (\d+)/.exec(version);
    if (m === null || Number(m[1]) !== major || sharedir !== serverDirs.sharedir || pkglibdir !== serverDirs.pkglibdir) {
      looked.push(`${candidate} (${version}, sharedir ${sharedir})`);
      continue;
    }
    pgConfig = candidate;
    includeDir = include ?? null;
    pgxs = pgxsPath ?? null;
    cc = (ccLine ?? '').split(/\s+/)[0] || null;
    break;
  }
  const headers = includeDir !== null && pgxs !== null && existsSync(join(includeDir, 'postgres.h')) && existsSync(pgxs);
  return {
    pgConfig,
    headers,
    make: (await runs('make', ['--version'])) !== null,
    compiler: cc !== null && (await runs(cc, ['--version'])) !== null,
    wal2json: existsSync(join(serverDirs.pkglibdir, 'wal2json.so')),
    looked,
  };
}

/** One thing in the way, and the exact fix. */
export interface Problem {
  what: string;
  fix: string;
}

/** A server setting that must change (ALTER SYSTEM), and whether that takes a restart. */
export interface SettingFix {
  name: string;
  value: string;
  restart: boolean;
}

export interface Choices {
  nodeId: string;
  slot: string;
  plugin: Plugin;
  agent: AgentMode;
  systemdRunning: boolean;
  installDeps: boolean;
  restart: boolean;
  aptAvailable: boolean;
  /** How the installer would restart the server, or why it can't. */
  restartCommand: { command: string[] | null; display: string };
  /** A config file of another installation is in the way. */
  configConflict: string | null;
  /** PGXS would have to copy files into the server's directories and may not write there. */
  installDirsUnwritable: string | null;
}

export interface Judgement {
  problems: Problem[];
  /** Settings to change: problems unless --restart, when the installer changes them. */
  settings: SettingFix[];
  /** Debian packages to install: problems unless --install-deps. */
  packages: string[];
}

/** Every problem at once, each with its fix.  Pure: unit-tested without a server. */
export function findProblems(source: SourceFacts, store: StoreFacts, tools: BuildTools | null, choices: Choices): Judgement {
  const problems: Problem[] = [];
  const settings: SettingFix[] = [];
  const packages: string[] = [];
  const major = source.major;

  if (choices.configConflict !== null) {
    problems.push({ what: choices.configConflict, fix: 'set PGTIMEWARP_CONFIG to another file for a second installation, or run "pgtimewarp uninstall" for the first' });
  }
  if (major < 13) {
    problems.push({ what: `the source server runs PostgreSQL ${major}; pgtimewarp needs 13 or later`, fix: 'upgrade PostgreSQL' });
  }
  if (!source.isSuperuser) {
    problems.push({
      what: `role "${source.currentUser}" is not a superuser on the source server; the pgtimewarp extension can only be created by one (its control file says superuser = true), and so can a REPLICATION role`,
      fix: 'connect as a superuser, e.g. --source postgresql://postgres@host/db',
    });
  } else if (!source.local.ok) {
    problems.push({
      what: `the source server does not run on this machine: ${source.local.reason}; PGXS installs the extension into the server's own directories`,
      fix: 'run pgtimewarp install on the database server host itself',
    });
  }

  // build tools and packages
  if (source.isSuperuser && source.serverDirs !== null && tools !== null) {
    const devPackage = `postgresql-server-dev-${major}`;
    if (tools.pgConfig === null || !tools.headers) {
      packages.push(devPackage);
      if (!choices.installDeps) {
        problems.push({
          what: tools.pgConfig === null
            ? `no pg_config for PostgreSQL ${major} that installs into ${source.serverDirs.sharedir} (looked at: ${tools.looked.join(', ') || 'none found'})`
            : `the PostgreSQL ${major} server headers or PGXS are missing`,
          fix: `apt-get install ${devPackage} (or rerun with --install-deps)`,
        });
      }
    }
    if (!tools.make || !tools.compiler) {
      const missing = [!tools.make ? 'make' : null, !tools.compiler ? 'gcc' : null].filter((p): p is string => p !== null);
      packages.push(...missing);
      if (!choices.installDeps) {
        problems.push({ what: `building the extension needs ${missing.join(' and ')}, not found`, fix: `apt-get install ${missing.join(' ')} (or rerun with --install-deps)` });
      }
    }
    if (choices.plugin === 'wal2json' && !tools.wal2json) {
      packages.push(`postgresql-${major}-wal2json`);
      if (!choices.installDeps) {
        problems.push({
          what: `the wal2json output plugin is not installed (no wal2json.so in ${source.serverDirs.pkglibdir})`,
          fix: `apt-get install postgresql-${major}-wal2json (or rerun with --install-deps), or use --plugin pgoutput`,
        });
      }
    }
    if (choices.installDeps && packages.length > 0 && !choices.aptAvailable) {
      problems.push({ what: `--install-deps installs with apt-get, which this machine does not have (needed: ${packages.join(', ')})`, fix: "install those with the system's package manager" });
    }
  }
  if (choices.installDirsUnwritable !== null) {
    problems.push({ what: choices.installDirsUnwritable, fix: 'run pgtimewarp install as root (sudo)' });
  }
  if (!source.postgresFdwAvailable) {
    problems.push({
      what: 'the postgres_fdw extension is not available on the source server (pgtimewarp reads the store through it)',
      fix: `install PostgreSQL's contrib modules for ${major} (Debian and Ubuntu ship postgres_fdw in postgresql-${major}; RHEL: postgresql${major}-contrib)`,
    });
  }

  // server settings
  if (source.walLevel !== 'logical') {
    settings.push({ name: 'wal_level', value: 'logical', restart: true });
  }
  const allowList = source.outputPluginLibraries;
  if (allowList !== null && !allowList.value.includes(choices.plugin)) {
    const value = [...allowList.value, choices.plugin].join(', ');
    settings.push({ name: 'output_plugin_libraries', value, restart: allowList.context === 'postmaster' });
  }
  const slotExists = source.slot !== null;
  if (!slotExists && source.usedReplicationSlots >= source.maxReplicationSlots) {
    settings.push({ name: 'max_replication_slots', value: String(source.usedReplicationSlots + 1), restart: true });
  }
  if (!(source.slot?.active ?? false) && source.usedWalSenders >= source.maxWalSenders) {
    settings.push({ name: 'max_wal_senders', value: String(source.usedWalSenders + 1), restart: true });
  }
  if (settings.length > 0 && !choices.restart) {
    for (const s of settings) {
      const then = s.restart
        ? `then restart PostgreSQL (${choices.restartCommand.display}); a reload is not enough`
        : 'then SELECT pg_reload_conf();';
      problems.push({
        what: describeSetting(s, source),
        fix: `as a superuser on the source server: ALTER SYSTEM SET ${s.name} = ${settingLiteral(s)}; ${then}. Or rerun with --restart to let the installer do it`,
      });
    }
  } else if (settings.some((s) => s.restart) && choices.restart && choices.restartCommand.command === null) {
    problems.push({ what: `--restart: the installer cannot restart this server: ${choices.restartCommand.display}`, fix: 'change the settings and restart PostgreSQL yourself, then run install again' });
  }

  // the slot, the node and the history they guard
  const origin = nodeSource(source, store.node, choices.nodeId);
  if (source.slot !== null) {
    if (source.slot.database !== source.database) {
      problems.push({
        what: `replication slot "${choices.slot}" already exists for ${source.slot.database === null ? 'physical replication' : `database "${source.slot.database}"`}; slot names are per server`,
        fix: `pass --slot <another name> for database "${source.database}"`,
      });
    } else if (source.slot.plugin !== choices.plugin) {
      problems.push({
        what: `replication slot "${choices.slot}" uses the ${source.slot.plugin} plugin, not ${choices.plugin}`,
        fix: `pass --plugin ${source.slot.plugin}, or "pgtimewarp uninstall" first to start over with ${choices.plugin}`,
      });
    }
  } else if (store.checkpointLsn !== null && origin !== 'restored') {
    // (a restored database has no slot yet: its history goes on from the
    // store's, with a slot of its own; see the restore problems below)
    problems.push({
      what: `replication slot "${choices.slot}" is gone, but the store has history of node "${choices.nodeId}" up to ${store.checkpointLsn} (an earlier installation, or a lost slot): changes since then were never recorded, and a new slot under the same node would hide that gap`,
      fix: 'pass --node <a new id> to start a new history next to the old one, or delete the old one with "pgtimewarp uninstall --drop-store"; "pgtimewarp doctor" explains a lost slot',
    });
  }
  if (source.configuredNodeId !== null && source.configuredNodeId !== choices.nodeId) {
    problems.push({
      what: `the source database is already configured as node "${source.configuredNodeId}" (pgtimewarp.config), not "${choices.nodeId}"; a new node id would start a second, separate history`,
      fix: `pass --node ${source.configuredNodeId} (or leave --node out)`,
    });
  }
  if (origin === 'other') {
    problems.push({
      what: `node "${choices.nodeId}" in the store belongs to ${describeNodeRecord(store.node!)}, not to this source ("${source.database}" of system ${source.systemIdentifier})`,
      fix: 'pass --node <an id of its own> for this source',
    });
  }
  if (origin === 'restored') problems.push(...restoreProblems(source, store, choices.nodeId));

  // the store
  if (store.unreachable !== null) {
    problems.push({ what: `cannot reach the store: ${store.unreachable}`, fix: 'check --store (host, port, user, password) and that the store server accepts connections from this host' });
  } else if (!store.isSuperuser) {
    if (!store.databaseExists && !store.canCreateDb) {
      problems.push({ what: `role "${store.params.user}" may not create the store database "${store.params.database}"`, fix: `create it first (CREATE DATABASE ${quoteIdent(store.params.database)}), or connect to the store as a role with CREATEDB` });
    }
    if (!store.canCreateRole) {
      problems.push({ what: `role "${store.params.user}" may not create the agent's and the extension's roles on the store server`, fix: `ALTER ROLE ${quoteIdent(store.params.user)} CREATEROLE, or connect to the store as a superuser` });
    }
  }

  if (choices.agent === 'systemd' && !choices.systemdRunning) {
    problems.push({ what: '--agent systemd: systemd is not running on this machine (no /run/systemd/system)', fix: 'use --agent background (a managed background process) or --agent none (run the agent yourself)' });
  }
  return { problems, settings, packages: [...new Set(packages)] };
}

/**
 * What stands in the way of going on with a node's history in a database
 * restored from a dump of the node's database.  History is ordered by LSN,
 * so this server's WAL must be past the node's history (a new cluster's WAL
 * starts far behind an old one's).  And the old database must be done: its
 * agent, reading its own slot, would go on writing the same node.  Only a
 * slot on this server can be seen; one elsewhere is the operator's to retire.
 */
function restoreProblems(source: SourceFacts, store: StoreFacts, nodeId: string): Problem[] {
  const problems: Problem[] = [];
  const node = store.node!;
  const from = describeNodeRecord(node);
  if (store.checkpointLsn !== null && lsnFromText(source.walLsn) <= lsnFromText(store.checkpointLsn)) {
    problems.push({
      what: `this database says it is node "${nodeId}" (pgtimewarp.config, restored from a dump of ${from}), whose history goes up to LSN ${store.checkpointLsn}, ` +
        `but this server's WAL is only at ${source.walLsn}: history is ordered by LSN, and this server's changes would sort before the history they follow`,
      fix: `restore into a server whose WAL is past ${store.checkpointLsn}, or start a new history here: SELECT pgtimewarp_configure('<a new node id>'); in this database, ` +
        `run install again and track its tables again (node "${nodeId}"'s history stays in the store)`,
    });
  }
  if (node.systemIdentifier === source.systemIdentifier) {
    const oldSlot = source.logicalSlots.find((s) =>
      (node.databaseOid !== null ? s.databaseOid === node.databaseOid : s.database === node.databaseName) &&
      s.databaseOid !== source.databaseOid && (store.checkpointSlot === null || s.name === store.checkpointSlot));
    if (oldSlot !== undefined) {
      problems.push({
        what: `this database says it is node "${nodeId}" (pgtimewarp.config, restored from a dump), but the database the node's history comes from, "${oldSlot.database}", ` +
          `still has its replication slot "${oldSlot.name}" on this server: its agent would go on writing the node's history alongside this database's`,
        fix: `retire the old installation first: pgtimewarp uninstall --source <the URL of database "${oldSlot.database}"> (the history stays in the store); ` +
          `or, to keep both, give this database a node of its own: SELECT pgtimewarp_configure('<a new node id>'); in it, then run install again`,
      });
    }
  }
  return problems;
}

function settingLiteral(s: SettingFix): string {
  return s.name === 'output_plugin_libraries' ? quoteLiteral(s.value) : s.value;
}

function describeSetting(s: SettingFix, source: SourceFacts): string {
  switch (s.name) {
    case 'wal_level':
      return `wal_level is ${source.walLevel}; logical decoding needs wal_level = logical`;
    case 'output_plugin_libraries':
      return `output_plugin_libraries (${source.outputPluginLibraries?.value.join(', ') || 'empty'}) does not allow the ${s.value.split(', ').pop()} output plugin`;
    case 'max_replication_slots':
      return `all ${source.maxReplicationSlots} replication slots (max_replication_slots) are in use; pgtimewarp needs one more`;
    case 'max_wal_senders':
      return `all ${source.maxWalSenders} WAL senders (max_wal_senders) are in use; the agent needs one`;
    default:
      return `${s.name} must be ${s.value}`;
  }
}

/** Format problems as the one error message install fails with. */
export function formatProblems(problems: Problem[]): string {
  const lines = problems.map((p) => `  - ${p.what}\n    fix: ${p.fix}`);
  return `cannot install: ${problems.length} problem${problems.length === 1 ? '' : 's'} to fix first (nothing was changed):\n${lines.join('\n')}`;
}
