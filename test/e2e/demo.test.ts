// `pgtimewarp demo`, run as the real CLI (from source, through tsx), as a
// newcomer would:
//   - it exits 0 after showing rows as they were (the old values, not the
//     current ones), a deleted row, the SQL diff and the CLI's timeline, and
//     afterwards neither its cluster, nor its agent, nor its temp dir remain,
//     and the config file of the environment was not touched;
//   - Ctrl-C part-way stops its agent and cluster and removes its temp dir;
//   - --keep leaves both running, reachable at the URL it prints, and the
//     commands it prints remove them;
//   - --json prints one JSON document, values exactly as PostgreSQL printed them;
//   - --help says what it does and what it leaves behind.
//
// The demo makes its own cluster; nothing here needs one.  Each run takes
// 10 to 20 s; the first builds the extension when nothing built it yet.

import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';

import { alive } from '../support/process.js';
import { cleanEnv, runCli } from '../support/run-cli.js';
import { waitFor } from '../support/wait.js';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const RUN_TIMEOUT_MS = 80_000;

/** Processes whose command line mentions `text` (the cluster's postmaster names its data directory). */
function processesMentioning(text: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
      if (argv.includes(text)) found.push(`${pid}: ${argv}`);
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

/** What a run says about itself: its temp dir and its agent's pid. */
function demoFacts(output: string): { dir: string; agentPid: number } {
  const dir = /in (\/\S*pgtimewarp-demo-[^\s)]+)/.exec(output)?.[1];
  const pid = /agent pid (\d+)/.exec(output)?.[1];
  if (dir === undefined || pid === undefined) throw new Error(`the demo did not name its temp dir and agent pid:\n${output}`);
  return { dir, agentPid: Number(pid) };
}

// a failed test must not leave an agent or a cluster behind
const agents = new Set<number>();
afterAll(() => {
  for (const pid of agents) if (alive(pid)) process.kill(pid, 'SIGKILL');
});

describe('pgtimewarp demo', () => {
  it('shows rows as they were and the timeline, exits 0, and leaves nothing behind', async () => {
    const env = cleanEnv();
    const run = await runCli(['demo'], env, RUN_TIMEOUT_MS);
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
    const out = run.stdout;
    const { dir, agentPid } = demoFacts(out);
    agents.add(agentPid);

    // the remembered times, and account 1 as of t0: the balance before any change
    const t0 = /^-- t0 = '([^']+)'/m.exec(out)?.[1];
    const t1 = /^-- t1 = '([^']+)'/m.exec(out)?.[1];
    expect(t0, out).toBeDefined();
    expect(t1, out).toBeDefined();
    const asofRow = (at: string): string | undefined => {
      const statement = `demo=# SELECT pgtimewarp_asof_pk('accounts', '{"id": 1}', '${at}');\n`;
      const after = out.slice(out.indexOf(statement) + statement.length);
      return out.includes(statement) ? /^-+\n (\{.*\})\n\(1 row\)/m.exec(after)?.[1] : undefined;
    };
    expect(asofRow(t0!)).toMatch(/^\{"id": 1, "owner": "alice", "balance": 100\.00, "updated_at": "[^"]+"\}$/);
    expect(asofRow(t1!)).toMatch(/"balance": 70\.00/);
    // ... while the table itself now says otherwise
    expect(out).toMatch(/^ {2}1 \| alice {2}\| {2}190\.00 \| /m);
    // a deleted row, typed, as it was before the delete
    expect(out).toMatch(/pgtimewarp_asof_row\(NULL::accounts, '\{"id": 3\}'.*\n.*\n.*\n {2}3 \| carol \| {3}75\.50 \| .*\n\(1 row\)/);
    // pgtimewarp_diff_pk's rows, and the CLI's readable timeline
    expect(out).toMatch(/\| baseline \| \{id,owner,balance,updated_at\} \| \{"id": 1, "owner": "alice", "balance": 100\.00/);
    expect(out).toMatch(/\| update {3}\| \{balance,updated_at\} {10}\| \{"id": 1, "owner": "alice", "balance": 190\.00/);
    expect(out).toMatch(/public\.accounts \{"id": 1\} from .*: 3 versions/);
    expect(out).toContain('    balance: 100.00 -> 70.00');
    expect(out).toContain('    balance: 70.00 -> 190.00');
    expect(out).toMatch(/^healthy \(0 error\(s\)/m);
    // every question lies within the history the agent has confirmed: no "complete only up to" warning
    expect(out).not.toMatch(/^WARNING:/m);
    expect(out).toMatch(/Clean up: .* removed /);

    // nothing remains: no temp dir, no server running from it, no agent, and no config file written where the environment points
    expect(existsSync(dir)).toBe(false);
    expect(processesMentioning(dir)).toEqual([]);
    expect(alive(agentPid)).toBe(false);
    expect(existsSync(env['PGTIMEWARP_CONFIG']!)).toBe(false);
  });

  it('Ctrl-C part-way stops its agent and cluster and removes its temp dir', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'installer/cli.ts', 'demo'], { cwd: REPO_ROOT, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));

    // once it is changing the table, the agent and the cluster both run
    await waitFor('the demo to start changing the table', () => stdout.includes('demo=# UPDATE accounts'), RUN_TIMEOUT_MS);
    const { dir, agentPid } = demoFacts(stdout);
    agents.add(agentPid);
    expect(alive(agentPid)).toBe(true);
    expect(processesMentioning(dir)).not.toEqual([]);

    child.kill('SIGINT');
    const end = await exited;
    expect(end.signal, `${stdout}\n${stderr}`).toBe('SIGINT');
    expect(stderr).toContain(`stopped part-way: its agent and cluster were stopped and ${dir} removed`);
    expect(existsSync(dir)).toBe(false);
    expect(processesMentioning(dir)).toEqual([]);
    await waitFor('the agent to be gone', () => !alive(agentPid), 5_000);
  });

  it('--keep leaves the cluster and the agent running, and the commands it prints remove them', async () => {
    const run = await runCli(['demo', '--keep'], cleanEnv(), RUN_TIMEOUT_MS);
    expect(run.code, `${run.stdout}\n${run.stderr}`).toBe(0);
    const { dir, agentPid } = demoFacts(run.stdout);
    agents.add(agentPid);
    const url = /^connect: +psql '([^']+)'/m.exec(run.stdout)?.[1];
    const removal = /^remove it: ([^\n]+(?:\n {11}[^\n]+)*)/m.exec(run.stdout)?.[1]?.split('\n').map((l) => l.trim());
    expect(url, run.stdout).toBeDefined();
    expect(removal, run.stdout).toHaveLength(3);
    try {
      expect(alive(agentPid)).toBe(true);
      // the URL works (with the password it holds), and the history is there
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        const rows = await client.query<{ n: string }>(
          `SELECT count(*) AS n FROM pgtimewarp_status() s, pgtimewarp_diff_pk('accounts', '{"id": 1}', s.tracked_from_ts, now()) WHERE s.table_name = 'accounts'`,
        );
        expect(Number(rows.rows[0]!.n)).toBe(3);
      } finally {
        await client.end();
      }
      // without the password, TCP refuses: the kept cluster is not open to everyone on this machine
      await expect(new pg.Client({ connectionString: url!.replace(/:[^:@/]+@/, '@') }).connect()).rejects.toThrow(/password/);
    } finally {
      for (const command of removal ?? []) {
        const r = await new Promise<number | null>((resolve) => spawn('bash', ['-c', command], { stdio: 'ignore' }).on('close', resolve));
        expect(r, command).toBe(0);
      }
    }
    await waitFor('the agent to stop', () => !alive(agentPid), 20_000);
    expect(existsSync(dir)).toBe(false);
    expect(processesMentioning(join(dir, 'data'))).toEqual([]);
  });

  it('--json prints one JSON document with the rows as they were, exactly as PostgreSQL printed them', async () => {
    const run = await runCli(['demo', '--json'], cleanEnv(), RUN_TIMEOUT_MS);
    expect(run.code, run.stderr).toBe(0);
    const result = JSON.parse(run.stdout) as {
      ok: boolean; kept: boolean; dir: string; agent: { pid: number };
      moments: Array<{ name: string; at: string }>; timeline: { versions: Array<{ op: string }> };
    };
    agents.add(result.agent.pid);
    expect(result).toMatchObject({ ok: true, kept: false });
    expect(result.moments.map((m) => m.name)).toEqual(['t0', 't1', 't2', 't3']);
    // spliced in as PostgreSQL printed them: 100.00 keeps its scale
    expect(run.stdout).toContain('"accountBefore":{"id": 1, "owner": "alice", "balance": 100.00,');
    expect(run.stdout).toContain('"accountNow":{"id": 1, "owner": "alice", "balance": 190.00,');
    expect(result.timeline.versions.map((v) => v.op)).toEqual(['baseline', 'update', 'update']);
    // the walk-through is not on stdout, the progress is on stderr
    expect(run.stdout).not.toContain('demo=#');
    expect(run.stderr).toMatch(/\[7\/7\] Clean up/);
    expect(existsSync(result.dir)).toBe(false);
  });

  it('--help says what it does and what it leaves behind', async () => {
    const run = await runCli(['demo', '--help']);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/--keep/);
    expect(run.stdout).toMatch(/--install-deps/);
    expect(run.stdout).toMatch(/What it leaves behind: the extension's files/);
  });
});
