// Where a command finds its databases: flags first, then PGTIMEWARP_* environment
// variables, then the config file `pgtimewarp install` writes, then libpq's own
// PG* variables (node-postgres reads PGHOST, PGPORT, PGDATABASE, PGUSER,
// PGPASSWORD when no URL is given).  Resolved and validated in one place, which
// reports every problem at once.

import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

export type Plugin = 'pgoutput' | 'wal2json';
export type AgentMode = 'systemd' | 'background' | 'none';

/** What `pgtimewarp install` records, so later commands need no flags. */
export interface InstalledConfig {
  version: 1;
  /** Source database URL, as the installing (administrative) role connects. */
  sourceUrl: string;
  /** Store database URL, as the installing role connects. */
  storeUrl: string;
  nodeId: string;
  slot: string;
  plugin: Plugin;
  agent: AgentMode;
  /** URLs the agent runs with (its own least-privilege role); absent when not provisioned. */
  agentSourceUrl?: string;
  agentStoreUrl?: string;
  /** background agent: its pid file and log file. */
  pidFile?: string;
  logFile?: string;
  /** systemd agent: the unit's name. */
  systemdUnit?: string;
  /** systemd and none: the file with the agent's environment (its URLs). */
  envFile?: string;
  /**
   * The roles install created and their passwords: this file is the one
   * place that keeps them, so a rerun reuses them instead of rotating.
   */
  agentRole?: string;
  agentPassword?: string;
  fdwRole?: string;
  fdwPassword?: string;
  /** install created postgres_fdw (CREATE EXTENSION pgtimewarp CASCADE), so uninstall may drop it. */
  postgresFdwCreatedByInstall?: boolean;
}

export class ConfigError extends Error {}

/**
 * The config file: $PGTIMEWARP_CONFIG, else /etc/pgtimewarp/config.json for
 * root, else ~/.config/pgtimewarp/config.json.
 */
export function configPath(env: NodeJS.ProcessEnv = process.env): string {
  const explicit = env['PGTIMEWARP_CONFIG'];
  if (explicit) return explicit;
  if (process.getuid?.() === 0) return '/etc/pgtimewarp/config.json';
  return join(env['XDG_CONFIG_HOME'] || join(homedir(), '.config'), 'pgtimewarp', 'config.json');
}

/** The installed config, or null when there is no file. */
export function readConfig(path: string = configPath()): InstalledConfig | null {
  if (!existsSync(path)) return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(`config file ${path} is not valid JSON (${err instanceof Error ? err.message : String(err)}); fix or delete it`);
  }
  const c = parsed as Partial<InstalledConfig>;
  if (c.version !== 1 || typeof c.sourceUrl !== 'string' || typeof c.storeUrl !== 'string' || typeof c.nodeId !== 'string') {
    throw new ConfigError(`config file ${path} is not a pgtimewarp config (version 1 with sourceUrl, storeUrl, nodeId); fix or delete it`);
  }
  return c as InstalledConfig;
}

/**
 * Write the config atomically, readable by its owner only: the URLs may
 * hold passwords.
 */
export function writeConfig(config: InstalledConfig, path: string = configPath()): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, JSON.stringify(config, null, 2) + '\n', { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

export interface ConnectionFlags {
  source?: string;
  store?: string;
  node?: string;
}

export interface Connections {
  /** undefined: connect with libpq's PG* variables. */
  sourceUrl: string | undefined;
  storeUrl: string | undefined;
  nodeId: string | undefined;
  /** The config file, when one was found. */
  config: InstalledConfig | null;
}

/**
 * Flags, then PGTIMEWARP_SOURCE_URL / PGTIMEWARP_STORE_URL / PGTIMEWARP_NODE_ID,
 * then the config file, then (for the URLs) undefined, meaning PG* variables.
 * `need` names what the command cannot do without; every missing one is
 * reported in a single error.
 */
export function resolveConnections(
  flags: ConnectionFlags,
  need: { source?: boolean; store?: boolean } = {},
  env: NodeJS.ProcessEnv = process.env,
): Connections {
  const config = readConfig(configPath(env));
  const sourceUrl = flags.source ?? env['PGTIMEWARP_SOURCE_URL'] ?? config?.sourceUrl;
  const storeUrl = flags.store ?? env['PGTIMEWARP_STORE_URL'] ?? config?.storeUrl;
  const nodeId = flags.node ?? env['PGTIMEWARP_NODE_ID'] ?? config?.nodeId;
  const hasPgEnv = Boolean(env['PGHOST'] || env['PGDATABASE'] || env['PGPORT'] || env['PGUSER']);
  const problems: string[] = [];
  if (need.source && sourceUrl === undefined && !hasPgEnv) {
    problems.push('no source database: pass --source <url>, set PGTIMEWARP_SOURCE_URL, run "pgtimewarp install", or set PGHOST/PGDATABASE');
  }
  if (need.store && storeUrl === undefined) {
    problems.push('no store database: pass --store <url>, set PGTIMEWARP_STORE_URL, or run "pgtimewarp install"');
  }
  if (problems.length > 0) throw new ConfigError(problems.join('; '));
  return { sourceUrl, storeUrl, nodeId, config };
}
