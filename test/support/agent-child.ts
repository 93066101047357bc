// The real agent as a child process (`pgtimewarp agent --log-format json`,
// from source through tsx), for tests that kill and restart it: its JSON log
// events by generation (one per start), what else it printed, the exits the
// test did not cause.  Children still running when the test process exits
// are killed with it, and so is anything else registered with
// killOnExit (pgbench runs, say).

import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));

const liveChildren = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of liveChildren) child.kill('SIGKILL');
});

/** Kill `child` with this process if it is still running then. */
export function killOnExit(child: ChildProcess): void {
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
}

export interface LoggedEvent {
  /** Which start of the agent logged it (1 for the first). */
  generation: number;
  event: string;
  level: string;
  message: string;
  [field: string]: unknown;
}

export interface AgentStart {
  sourceUrl: string;
  storeUrl: string;
  nodeId: string;
  slot: string;
  plugin: 'pgoutput' | 'wal2json';
}

export class AgentChild {
  readonly events: LoggedEvent[] = [];
  /** Lines that were not JSON log events (a crash's stack trace, say). */
  readonly otherOutput: string[] = [];
  /** Exits we did not cause. */
  readonly unexpectedExits: string[] = [];
  generation = 0;
  private child: ChildProcess | null = null;
  /** The running child is being stopped by us. */
  private stopping = false;
  private exited: Promise<void> = Promise.resolve();
  private listeners = new Set<(e: LoggedEvent) => void>();

  constructor(private readonly opts: AgentStart) {}

  start(): void {
    if (this.child !== null) throw new Error('agent already running');
    const generation = ++this.generation;
    const o = this.opts;
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', 'installer/cli.ts', 'agent', '--source', o.sourceUrl, '--store', o.storeUrl,
        '--node', o.nodeId, '--slot', o.slot, '--plugin', o.plugin, '--log-format', 'json'],
      { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child = child;
    this.stopping = false;
    killOnExit(child);
    for (const out of [child.stdout!, child.stderr!]) {
      createInterface({ input: out }).on('line', (line) => this.onLine(generation, line));
    }
    this.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        if (!this.stopping) this.unexpectedExits.push(`generation ${generation}: exit code ${code}, signal ${signal}`);
        if (this.child === child) this.child = null;
        resolve();
      });
    });
  }

  private onLine(generation: number, line: string): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      this.otherOutput.push(`[${generation}] ${line}`);
      return;
    }
    const event = { ...(parsed as Omit<LoggedEvent, 'generation'>), generation } as LoggedEvent;
    this.events.push(event);
    for (const listener of this.listeners) listener(event);
  }

  get running(): boolean {
    return this.child !== null;
  }

  /** Whether the running generation has logged `event`. */
  logged(event: string): boolean {
    return this.events.some((e) => e.generation === this.generation && e.event === event);
  }

  /** The next event of the current generation matching `match` (after now), or null after `timeoutMs`. */
  nextEvent(match: (e: LoggedEvent) => boolean, timeoutMs: number): Promise<LoggedEvent | null> {
    const generation = this.generation;
    return new Promise((resolve) => {
      const listener = (e: LoggedEvent): void => {
        if (e.generation !== generation || !match(e)) return;
        done(e);
      };
      const timer = setTimeout(() => done(null), timeoutMs);
      const done = (e: LoggedEvent | null): void => {
        clearTimeout(timer);
        this.listeners.delete(listener);
        resolve(e);
      };
      this.listeners.add(listener);
    });
  }

  /** Send `signal` and wait for the exit (SIGKILL after `timeoutMs`). */
  async kill(signal: 'SIGKILL' | 'SIGTERM', timeoutMs = 20_000): Promise<void> {
    const child = this.child;
    if (child === null) return;
    this.stopping = true;
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(timer);
  }

  /** Stop with SIGTERM; resolves to the exit code. */
  async stopCleanly(timeoutMs = 20_000): Promise<number | null> {
    const child = this.child;
    if (child === null) return null;
    let code: number | null = null;
    child.once('exit', (c) => { code = c; });
    await this.kill('SIGTERM', timeoutMs);
    return code;
  }

  /** The exits, warnings and errors, and other output, for a failure message. */
  describe(): string {
    return [
      ...this.unexpectedExits,
      ...this.events.filter((e) => e.level !== 'info').slice(-10).map((e) => `[${e.generation}] ${e.level} ${e.event}: ${e.message}`),
      ...this.otherOutput.slice(-20),
    ].join('\n');
  }
}
