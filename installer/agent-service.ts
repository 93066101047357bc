// Running the agent for an installation: a systemd unit where systemd runs,
// else a background process with a pid file and a log file, or nothing (the
// operator runs it).  The agent's URLs hold its password, so they reach it
// through its environment (an EnvironmentFile readable by root only, or the
// spawned process's environment), never its command line.

import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync, renameSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { execa } from 'execa';

import type { Plugin } from './config.js';
import { packageRoot } from './paths.js';

export interface AgentSpec {
  nodeId: string;
  slot: string;
  plugin: Plugin;
  /** The agent's own URLs (its role and password). */
  sourceUrl: string;
  storeUrl: string;
}

/** Where an installation's agent files live. */
export interface AgentFiles {
  pidFile: string;
  logFile: string;
  envFile: string;
  unitName: string;
  unitFile: string;
}

/**
 * State files: $PGTIMEWARP_STATE_DIR, else next to $PGTIMEWARP_CONFIG when
 * that is set (a self-contained installation, as the tests make), else
 * /var/lib/pgtimewarp for root, else ~/.local/state/pgtimewarp.  The
 * environment file sits with the config file: both hold passwords.
 */
export function agentFiles(nodeId: string, configFile: string, env: NodeJS.ProcessEnv = process.env): AgentFiles {
  const stateDir = env['PGTIMEWARP_STATE_DIR']
    || (env['PGTIMEWARP_CONFIG'] ? dirname(env['PGTIMEWARP_CONFIG']) : process.getuid?.() === 0
      ? '/var/lib/pgtimewarp'
      : join(env['XDG_STATE_HOME'] || join(homedir(), '.local', 'state'), 'pgtimewarp'));
  const unitName = `pgtimewarp-agent-${nodeId}.service`;
  return {
    pidFile: join(stateDir, `agent-${nodeId}.pid`),
    logFile: join(stateDir, `agent-${nodeId}.log`),
    envFile: join(dirname(configFile), `agent-${nodeId}.env`),
    unitName,
    unitFile: join('/etc/systemd/system', unitName),
  };
}

export function systemdRunning(): boolean {
  return existsSync('/run/systemd/system');
}

/** The agent's arguments after the program: the same for every mode, and how a running agent is recognized. */
export function agentArgs(spec: Pick<AgentSpec, 'nodeId' | 'slot' | 'plugin'>, logFormat: 'text' | 'json'): string[] {
  return ['agent', '--node', spec.nodeId, '--slot', spec.slot, '--plugin', spec.plugin, '--log-format', logFormat];
}

/**
 * The program that runs `pgtimewarp`: node with the compiled CLI, or,
 * when this module itself runs from source (tsx), node with tsx and the
 * source CLI (resolved from the package root, the child's working directory).
 */
export function cliCommand(): string[] {
  if (fileURLToPath(import.meta.url).endsWith('.ts')) {
    return [process.execPath, '--import', 'tsx', join(packageRoot, 'installer', 'cli.ts')];
  }
  const compiled = join(packageRoot, 'dist', 'installer', 'cli.js');
  if (!existsSync(compiled)) {
    throw new Error(`${compiled} is missing: build the package first (npm run build in ${packageRoot})`);
  }
  return [process.execPath, compiled];
}

/** Whether the package lives in npx's cache, which npm may clear: a service must not run from there. */
export function runsFromNpxCache(): boolean {
  return /[\\/]_npx[\\/]/.test(packageRoot);
}

/** KEY='value' lines, read the same by systemd's EnvironmentFile= and by a POSIX shell. */
export function envFileText(vars: Record<string, string>): string {
  const lines = Object.entries(vars).map(([key, value]) => {
    if (/[\n\0]/.test(value)) throw new Error(`${key} holds a line break; it cannot go into an environment file`);
    // inside single quotes both take every character literally except the quote itself;
    // our values are URLs, where %27 means the same as a quote
    return `${key}='${value.replace(/'/g, '%27')}'`;
  });
  return `# pgtimewarp agent environment: its database URLs, with its password. Keep private.\n${lines.join('\n')}\n`;
}

export function agentEnvironment(spec: AgentSpec): Record<string, string> {
  return { PGTIMEWARP_SOURCE_URL: spec.sourceUrl, PGTIMEWARP_STORE_URL: spec.storeUrl };
}

/** One argument of ExecStart=: quoted when needed, with systemd's specifier and variable characters escaped. */
function systemdWord(word: string): string {
  const escaped = word.replace(/%/g, '%%').replace(/\$/g, '$$$$');
  return /^[A-Za-z0-9_./:=@+-]+$/.test(escaped) ? escaped : `"${escaped.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** The systemd unit that runs the agent. */
export function systemdUnitText(opts: { nodeId: string; command: string[]; envFile: string; workingDirectory: string }): string {
  return [
    '[Unit]',
    `Description=pgtimewarp agent for node ${opts.nodeId}: streams the source's WAL into the store`,
    'After=network-online.target postgresql.service',
    'Wants=network-online.target',
    '',
    '[Service]',
    'Type=simple',
    // the agent's URLs and password: root-readable only, never on the command line
    `EnvironmentFile=${opts.envFile}`,
    `WorkingDirectory=${systemdWord(opts.workingDirectory)}`,
    `ExecStart=${opts.command.map(systemdWord).join(' ')}`,
    // connection losses are retried inside the agent; an exit is an error it could not retry
    'Restart=on-failure',
    'RestartSec=10s',
    'KillSignal=SIGTERM',
    'TimeoutStopSec=30s',
    // the agent writes nothing locally: it needs only the network
    'NoNewPrivileges=yes',
    'ProtectSystem=strict',
    'ProtectHome=read-only',
    'PrivateTmp=yes',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

/** Write `text` to `path` atomically with `mode`, creating the directory; false when it was already so. */
export function writeFileIfChanged(path: string, text: string, mode: number): boolean {
  if (existsSync(path) && readFileSync(path, 'utf8') === text && (statSync(path).mode & 0o777) === mode) return false;
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, text, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, path);
  return true;
}

// ---------------------------------------------------------------------------
// background process

function processArgv(pid: number): string[] | null {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a) => a !== '');
  } catch {
    return null;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function readPid(pidFile: string): number | null {
  try {
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

export type BackgroundState =
  | { state: 'running'; pid: number }
  /** Our agent for this node, run with other arguments (another slot or plugin): restart it. */
  | { state: 'different'; pid: number }
  | { state: 'stopped' };

/** What the pid file says, checked against the process it names (a pid may have been reused). */
export function backgroundAgentState(pidFile: string, spec: Pick<AgentSpec, 'nodeId' | 'slot' | 'plugin'>): BackgroundState {
  const pid = readPid(pidFile);
  if (pid === null || !alive(pid)) return { state: 'stopped' };
  const argv = processArgv(pid);
  if (argv === null) return { state: 'stopped' };
  const expected = agentArgs(spec, 'json');
  const isCli = argv.some((a) => /installer[\\/]cli\.(js|ts)$/.test(a));
  const nodeAt = argv.indexOf('--node');
  if (!isCli || !argv.includes('agent') || nodeAt < 0 || argv[nodeAt + 1] !== spec.nodeId) return { state: 'stopped' };
  const tail = argv.slice(-expected.length);
  return tail.length === expected.length && tail.every((a, i) => a === expected[i]) ? { state: 'running', pid } : { state: 'different', pid };
}

/** The last lines of a log file, for messages. */
export function logTail(logFile: string, lines = 8, fromOffset = 0): string {
  try {
    const text = readFileSync(logFile).subarray(fromOffset).toString('utf8').trimEnd();
    return text.split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** A background agent just spawned: its pid, and what waitUntilStreaming watches (its log from its start). */
export interface SpawnedAgent extends StartingAgent {
  pid: number;
  /** Where in the log file its output begins. */
  logOffset: number;
}

/**
 * Spawn the agent detached, its output appended to the log file, and
 * write the pid file.  It is on its own from then on (startBackgroundAgent
 * waits until it streams).
 */
export function spawnBackgroundAgent(spec: AgentSpec, files: AgentFiles): SpawnedAgent {
  mkdirSync(dirname(files.pidFile), { recursive: true, mode: 0o700 });
  mkdirSync(dirname(files.logFile), { recursive: true, mode: 0o700 });
  const logOffset = existsSync(files.logFile) ? statSync(files.logFile).size : 0;
  const log = openSync(files.logFile, 'a', 0o600);
  const [program, ...prefix] = cliCommand();
  const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PG')));
  Object.assign(env, agentEnvironment(spec));
  let child;
  try {
    child = spawn(program!, [...prefix, ...agentArgs(spec, 'json')], {
      cwd: packageRoot, detached: true, stdio: ['ignore', log, log], env,
    });
  } finally {
    closeSync(log);
  }
  const pid = child.pid;
  if (pid === undefined) throw new Error(`cannot start the agent (${program})`);
  let exited: string | null = null;
  child.on('exit', (code, signal) => { exited = signal !== null ? `signal ${signal}` : `exit code ${code}`; });
  child.unref();
  writeFileSync(files.pidFile, `${pid}\n`, { mode: 0o600 });
  return { pid, logOffset, output: () => readFrom(files.logFile, logOffset), exited: () => exited };
}

/**
 * Start the agent in the background and wait until it streams.  An agent
 * that stops, or has to retry, before that is stopped and reported: at
 * install time every connection must work.
 */
export async function startBackgroundAgent(spec: AgentSpec, files: AgentFiles, timeoutMs = 30_000): Promise<number> {
  const agent = spawnBackgroundAgent(spec, files);
  const failed = await waitUntilStreaming(agent, timeoutMs);
  if (failed !== null) {
    await stopPid(agent.pid);
    rmSync(files.pidFile, { force: true });
    throw new Error(`the agent did not start: ${failed}. Its log (${files.logFile}) says:\n${logTail(files.logFile, 8, agent.logOffset)}`);
  }
  return agent.pid;
}

/** A file's text from `offset` on; empty while it does not exist. */
function readFrom(file: string, offset: number): string {
  try {
    return readFileSync(file).subarray(offset).toString('utf8');
  } catch {
    return '';
  }
}

// ---------------------------------------------------------------------------
// what an agent's JSON log says: has it started streaming, is it retrying

/** A just-started agent, as waitUntilStreaming watches it. */
export interface StartingAgent {
  /** Its output since it started: JSON log lines (--log-format json). */
  output(): string | Promise<string>;
  /** Why it no longer runs ("exit code 1"), or null while it runs. */
  exited(): string | null | Promise<string | null>;
}

/**
 * What a just-started agent's JSON log lines say so far: it streams, it
 * failed first (a retry or a fatal error, with its message), or nothing
 * decisive yet.  Lines that are not its JSON events are passed over.
 */
export function startOutcome(jsonLines: string): 'streaming' | { failed: string } | null {
  for (const line of jsonLines.split('\n')) {
    const event = agentEvent(line);
    if (event?.event === 'streaming') return 'streaming';
    if (event?.event === 'retry' || event?.event === 'fatal') return { failed: typeof event.message === 'string' ? event.message : String(event.event) };
  }
  return null;
}

/** One event of an agent's JSON log (--log-format json), or null for any other line. */
function agentEvent(line: string): { time?: unknown; event?: unknown; message?: unknown } | null {
  try {
    const event = JSON.parse(line) as unknown;
    return event !== null && typeof event === 'object' ? event as { time?: unknown; event?: unknown; message?: unknown } : null;
  } catch {
    return null;
  }
}

/**
 * The retry a running agent is backing off from, as its JSON log lines
 * say: its last retry, unless it streamed again after it.  Null when there
 * is none.
 */
export function pendingRetry(jsonLines: string): { time: string | null; message: string } | null {
  let pending: { time: string | null; message: string } | null = null;
  for (const line of jsonLines.split('\n')) {
    const event = agentEvent(line);
    if (event?.event === 'streaming') pending = null;
    if (event?.event === 'retry') {
      pending = { time: typeof event.time === 'string' ? event.time : null, message: typeof event.message === 'string' ? event.message : 'retry' };
    }
  }
  return pending;
}

/**
 * Wait until a just-started agent streams (its 'streaming' event), the same
 * way however it runs.  Resolves to null then, else to why not: it retried
 * or failed first, it exited, or `timeoutMs` passed.  At install time every
 * connection must work, so a retry is a failure here.
 */
export async function waitUntilStreaming(agent: StartingAgent, timeoutMs: number, pollMs = 100): Promise<string | null> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const outcome = startOutcome(await agent.output());
    if (outcome === 'streaming') return null;
    if (outcome !== null) return `it could not connect or stream: ${outcome.failed}`;
    const exited = await agent.exited();
    if (exited !== null) return `it exited (${exited})`;
    if (Date.now() > deadline) return `it did not start streaming within ${timeoutMs / 1000} s`;
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
async function stopPid(pid: number, graceMs = 15_000): Promise<void> {
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (alive(pid) && !isZombie(pid)) {
    if (Date.now() > deadline) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        return;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function isZombie(pid: number): boolean {
  try {
    return / Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\)/, ''));
  } catch {
    return false;
  }
}

/** Stop the background agent the pid file names, if it is ours and alive; removes the pid file. */
export async function stopBackgroundAgent(files: AgentFiles, spec: Pick<AgentSpec, 'nodeId' | 'slot' | 'plugin'>): Promise<number | null> {
  const state = backgroundAgentState(files.pidFile, spec);
  let stopped: number | null = null;
  if (state.state !== 'stopped') {
    await stopPid(state.pid);
    stopped = state.pid;
  }
  rmSync(files.pidFile, { force: true });
  return stopped;
}

// ---------------------------------------------------------------------------
// systemd

/** Runs systemctl or journalctl; installSystemdAgent takes another in tests, where systemd does not run. */
export type CommandRunner = (program: 'systemctl' | 'journalctl', args: string[]) => Promise<{ ok: boolean; out: string }>;

const runCommand: CommandRunner = async (program, args) => {
  const r = await execa(program, args, { reject: false, stdin: 'ignore', all: true });
  return { ok: r.exitCode === 0, out: String(r.all ?? '').trim() };
};

function systemctl(args: string[]): Promise<{ ok: boolean; out: string }> {
  return runCommand('systemctl', args);
}

/**
 * The systemd unit that runs the agent for `spec`.  It logs JSON lines
 * (to the journal), as the background agent does to its log file: that is
 * how install sees it stream.
 */
export function systemdAgentUnit(spec: AgentSpec, files: AgentFiles): string {
  return systemdUnitText({ nodeId: spec.nodeId, command: [...cliCommand(), ...agentArgs(spec, 'json')], envFile: files.envFile, workingDirectory: packageRoot });
}

/** What is not yet as it should be for the systemd agent; empty when nothing. */
export async function systemdChanges(files: AgentFiles, unitText: string, envText: string): Promise<string[]> {
  const changes: string[] = [];
  const same = (path: string, text: string): boolean => existsSync(path) && readFileSync(path, 'utf8') === text;
  if (!same(files.unitFile, unitText)) changes.push(`write ${files.unitFile}`);
  if (!same(files.envFile, envText)) changes.push(`write ${files.envFile}`);
  if (!(await systemctl(['is-enabled', '--quiet', files.unitName])).ok) changes.push(`enable ${files.unitName}`);
  if (!(await systemctl(['is-active', '--quiet', files.unitName])).ok) changes.push(`start ${files.unitName}`);
  return changes;
}

/** `systemctl show` output (Key=Value lines) as a record. */
function unitProperties(out: string): Record<string, string> {
  return Object.fromEntries(out.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

/**
 * Write the unit and its environment file, enable the unit and (re)start
 * it, then wait until that run of the agent streams, as read from its
 * journal (the run's own entries, by its invocation id).  A restart every
 * time: it is what makes the agent read a new unit or environment (or a
 * role's password set again), and its fresh output is all that is read.
 * When it does not stream, the unit stays enabled and systemd keeps
 * restarting it after failures; the error says where to look.
 */
export async function installSystemdAgent(
  files: AgentFiles, unitText: string, envText: string, opts: { timeoutMs?: number; run?: CommandRunner } = {},
): Promise<void> {
  const run = opts.run ?? runCommand;
  writeFileIfChanged(files.envFile, envText, 0o600);
  const unitChanged = writeFileIfChanged(files.unitFile, unitText, 0o644);
  const must = async (args: string[]): Promise<string> => {
    const r = await run('systemctl', args);
    if (!r.ok) throw new Error(`systemctl ${args.join(' ')} failed: ${r.out}; see journalctl -u ${files.unitName}`);
    return r.out;
  };
  if (unitChanged) await must(['daemon-reload']);
  await must(['enable', files.unitName]);
  await must(['restart', files.unitName]);
  const invocation = unitProperties(await must(['show', '--property=InvocationID', files.unitName]))['InvocationID'] ?? '';
  if (!/^[0-9a-f]{32}$/.test(invocation)) throw new Error(`systemd names no run of ${files.unitName} (InvocationID ${JSON.stringify(invocation)}); see journalctl -u ${files.unitName}`);
  const failed = await waitUntilStreaming({
    async output() {
      const r = await run('journalctl', [`_SYSTEMD_INVOCATION_ID=${invocation}`, '--output=cat', '--no-pager', '--quiet']);
      if (!r.ok) throw new Error(`cannot read ${files.unitName}'s journal to see it start: ${r.out}`);
      return r.out;
    },
    async exited() {
      const p = unitProperties(await must(['show', '--property=ActiveState', '--property=SubState', '--property=Result', '--property=InvocationID', files.unitName]));
      if (p['InvocationID'] !== invocation) return 'systemd has restarted it since';
      return p['ActiveState'] === 'active' ? null : `${p['ActiveState']}/${p['SubState']}, result ${p['Result']}`;
    },
  }, opts.timeoutMs ?? 30_000);
  if (failed !== null) {
    throw new Error(`${files.unitName} did not start: ${failed}. It stays enabled, and systemd restarts it after a failure; see journalctl -u ${files.unitName}`);
  }
}

/**
 * Stop, disable and delete the unit and its environment file (kept for
 * --agent none, which uses it too); returns what was removed.
 */
export async function removeSystemdAgent(files: AgentFiles, opts: { keepEnvFile?: boolean } = {}): Promise<string[]> {
  const done: string[] = [];
  if (existsSync(files.unitFile)) {
    if (systemdRunning()) await systemctl(['disable', '--now', files.unitName]); // fails harmlessly when it was never enabled
    rmSync(files.unitFile, { force: true });
    if (systemdRunning()) await systemctl(['daemon-reload']);
    done.push(`removed ${files.unitName}`);
  }
  if (!opts.keepEnvFile && existsSync(files.envFile)) {
    rmSync(files.envFile, { force: true });
    done.push(`removed ${files.envFile}`);
  }
  return done;
}
