// Run the real `pgtimewarp` command line (from source, through tsx) as a
// child process, as a user would, in an environment that cannot reach
// anything by accident: no PG* or PGTIMEWARP_* variables of ours, and a
// config file path that does not exist unless the test writes one.

import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** A config path in a fresh temp dir, nothing written there: "no config file". */
export function absentConfigPath(): string {
  return join(mkdtempSync(join(tmpdir(), 'pgtimewarp-config-')), 'config.json');
}

/** Our environment minus anything that would point the CLI at a database or config file. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('PG')) env[key] = value; // PG* and PGTIMEWARP_*
  }
  return { ...env, PGTIMEWARP_CONFIG: absentConfigPath(), ...extra };
}

/** `pgtimewarp <args>`; resolves when it exits, whatever the exit code. */
export function runCli(args: string[], env: NodeJS.ProcessEnv = cleanEnv(), timeoutMs = 60_000): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'installer/cli.ts', ...args], {
      cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`pgtimewarp ${args.join(' ')} did not exit within ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** The JSON a --json run printed; fails with the run's output when it is not. */
export function parsedJson<T>(run: CliResult): T {
  try {
    return JSON.parse(run.stdout) as T;
  } catch {
    throw new Error(`not JSON (exit code ${run.code}):\n${run.stdout}\n${run.stderr}`);
  }
}

/** One step of `pgtimewarp install --json`'s output. */
export interface InstallStep {
  id: string;
  status: 'changed' | 'unchanged' | 'skipped' | 'would-change';
  detail: string;
}
