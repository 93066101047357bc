// Processes the e2e tests start or expect gone (agents, servers).

import { readFileSync } from 'node:fs';

/** Whether `pid` runs: it exists and is not a zombie (an exited child not yet reaped counts as gone). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !/ Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\)/, ''));
  } catch {
    return false;
  }
}
