// Server settings the installer may change with --restart: ALTER SYSTEM, then
// a reload or a restart of the source server, done the way this machine
// manages it (Debian's pg_ctlcluster, else pg_ctl as the data directory's
// owner).

import { execa } from 'execa';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { quoteLiteral, withClient } from './install-sql.js';
import type { SettingFix, SourceFacts } from './prereq.js';

export interface RestartCommand {
  /** null: the installer cannot restart this server; `display` says why. */
  command: string[] | null;
  /** What to run, for messages, or why it can't be done. */
  display: string;
  /** pg_ctl only: the data directory (to find the running postmaster's log). */
  dataDirectory?: string;
}

function shellWord(word: string): string {
  return /^[A-Za-z0-9_./=:@%+-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

function userName(uid: number): string | null {
  try {
    return execFileSync('id', ['-nu', String(uid)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() || null;
  } catch {
    return null;
  }
}

/** How this machine restarts the source server. */
export function restartCommand(source: SourceFacts): RestartCommand {
  const dataDir = source.dataDirectory;
  if (dataDir === null || !source.local.ok || source.serverDirs === null) {
    return { command: null, display: 'restart it the way it is managed on its host (the installer cannot: the server is not on this machine or its data directory is unknown)' };
  }
  // Debian and Ubuntu: clusters live in /var/lib/postgresql/<version>/<name>, configured in /etc/postgresql
  const debian = /^\/var\/lib\/postgresql\/(\d+)\/([^/]+)\/?$/.exec(dataDir);
  if (debian !== null && existsSync(`/etc/postgresql/${debian[1]}/${debian[2]}`) && existsSync('/usr/bin/pg_ctlcluster')) {
    const command = ['pg_ctlcluster', debian[1]!, debian[2]!, 'restart'];
    return { command, display: command.join(' ') };
  }
  const pgCtl = [join(source.serverDirs.bindir, 'pg_ctl'), 'restart', '-D', dataDir, '-m', 'fast', '-w', '-t', '300'];
  const ownerUid = statSync(dataDir).uid;
  const owner = userName(ownerUid) ?? String(ownerUid);
  let command: string[] | null;
  if (process.getuid?.() === ownerUid) command = pgCtl;
  else if (process.getuid?.() === 0) command = ['runuser', '-u', owner, '--', ...pgCtl];
  else command = null;
  const display = command === null
    ? `as OS user ${owner}: ${pgCtl.map(shellWord).join(' ')} (the installer runs as neither root nor ${owner}, so it cannot)`
    : command.map(shellWord).join(' ');
  return { command, display, dataDirectory: dataDir };
}

/**
 * ALTER SYSTEM each setting, then reload, or restart when one of them needs
 * it.  Returns what was done, for the task list.
 */
export async function applySettings(sourceUrl: string | undefined, settings: SettingFix[], restart: RestartCommand): Promise<string> {
  const needsRestart = settings.some((s) => s.restart);
  if (needsRestart && restart.command === null) {
    throw new Error(`cannot restart the source server: ${restart.display}`);
  }
  await withClient(sourceUrl, async (c) => {
    for (const s of settings) await c.query(`ALTER SYSTEM SET ${s.name} = ${quoteLiteral(s.value)}`);
    if (!needsRestart) await c.query('SELECT pg_catalog.pg_reload_conf()');
  }, { what: 'the source database' });
  const list = settings.map((s) => `${s.name} = ${s.value}`).join(', ');
  if (!needsRestart) return `set ${list} and reloaded the configuration`;
  await restartServer(restart);
  return `set ${list} and restarted the server (${restart.display})`;
}

async function restartServer(restart: RestartCommand): Promise<void> {
  const command = [...restart.command!];
  let env: NodeJS.ProcessEnv = withoutPgVariables(process.env);
  if (restart.dataDirectory !== undefined) {
    // pg_ctl restart starts the postmaster anew: give it the same environment
    // and the same log file (its stdout) as the running one, where we can see them.
    const postmaster = runningPostmaster(restart.dataDirectory);
    if (postmaster !== null) {
      if (postmaster.env !== null) env = postmaster.env;
      command.push('-l', postmaster.logFile ?? join(restart.dataDirectory, 'pgtimewarp-restart.log'));
    } else {
      command.push('-l', join(restart.dataDirectory, 'pgtimewarp-restart.log'));
    }
  }
  const result = await execa(command[0]!, command.slice(1), { env, extendEnv: false, reject: false, stdin: 'ignore', all: true, timeout: 330_000 });
  if (result.exitCode !== 0) {
    throw new Error(`restarting the source server failed (${command.map(shellWord).join(' ')}): ${String(result.all ?? '').trim().split('\n').slice(-10).join('\n')}`);
  }
}

function withoutPgVariables(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !k.startsWith('PG')));
}

/** The running postmaster's environment and log file (its stdout), read from /proc; null parts when not readable. */
function runningPostmaster(dataDir: string): { env: NodeJS.ProcessEnv | null; logFile: string | null } | null {
  let pid: number;
  try {
    pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return null;
  }
  let env: NodeJS.ProcessEnv | null = null;
  try {
    env = Object.fromEntries(
      readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter(Boolean).map((kv) => {
        const at = kv.indexOf('=');
        return [kv.slice(0, at), kv.slice(at + 1)];
      }),
    );
  } catch {
    env = null;
  }
  let logFile: string | null = null;
  try {
    const target = readlinkSync(`/proc/${pid}/fd/1`);
    if (target.startsWith('/') && statSync(target).isFile()) logFile = target;
  } catch {
    logFile = null;
  }
  return { env, logFile };
}
