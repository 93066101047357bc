// pgtimewarp doctor: commander wiring and the report's wording.  The checks
// are in installer/doctor-checks.ts.
//
// Exit status: 0 when no finding is an error (warnings allowed), 1 when one
// is.  An unhealthy system is an answer, not a failure of doctor, so the
// report is printed in full and process.exitCode set: no error message, no
// stack trace.

import { InvalidArgumentError, type Command } from 'commander';

import { DEFAULT_THRESHOLDS, doctor, type DoctorReport, type DoctorThresholds, type Status } from './doctor-checks.js';
import { formatBytes, stringifyJson } from './output.js';

const MARK: Record<Status, string> = { ok: '[ ok ]', warning: '[warn]', error: '[FAIL]' };

/**
 * The report as people read it: one line per check, meaning and fix under
 * the ones that are not ok.  Checks that could not run are listed together
 * under the one whose failure kept them from running, rather than each
 * repeating it.
 */
export function formatDoctorReport(report: DoctorReport): string {
  const lines = [`pgtimewarp doctor: node ${report.nodeId ?? '(unknown)'}, slot ${report.slot}`, ''];
  const blocked = new Map<string, string[]>();
  for (const f of report.findings) {
    if (f.blockedBy !== undefined) {
      blocked.set(f.blockedBy, [...(blocked.get(f.blockedBy) ?? []), f.check]);
      continue;
    }
    lines.push(`${MARK[f.status]} ${f.check}: ${f.message}`);
    if (f.status !== 'ok') {
      if (f.meaning) lines.push(`       meaning: ${f.meaning}`);
      if (f.fix) lines.push(`       fix: ${f.fix}`);
    }
  }
  for (const [by, checks] of blocked) {
    lines.push(`${MARK.error} not checked until ${by} is fixed: ${checks.join(', ')}`);
  }
  const errors = report.findings.filter((f) => f.status === 'error').length;
  const warnings = report.findings.filter((f) => f.status === 'warning').length;
  const counts = `${errors} error(s), ${warnings} warning(s)`;
  lines.push('', report.healthy ? `healthy (${counts})` : `NOT healthy: ${counts}`);
  return lines.join('\n');
}

function positiveNumber(what: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${what} must be a positive number.`);
    return n;
  };
}

export function registerDoctorCommand(program: Command): void {
  program
    .command('doctor')
    .description('check that history is being recorded: the source\'s settings, the slot, the agent, the store and the tracked tables; each finding says what it means and how to fix it')
    .option('--source <url>', 'source database URL (default: $PGTIMEWARP_SOURCE_URL, the config file, then PGHOST, PGDATABASE, ...)')
    .option('--store <url>', 'store database URL (default: $PGTIMEWARP_STORE_URL, the config file; else read through the source\'s foreign tables, as the extension\'s owner)')
    .option('--node <id>', 'node id (default: $PGTIMEWARP_NODE_ID, the config file, then the source\'s pgtimewarp_configure() setting)')
    .option('--slot <name>', 'replication slot (default: the config file\'s, then the one in the store\'s checkpoint, then "pgtimewarp")')
    .option('--max-lag-bytes <bytes>', `slot lag above this is an error (default ${formatBytes(DEFAULT_THRESHOLDS.lagErrorBytes)})`, positiveNumber('--max-lag-bytes'))
    .option('--max-lag-seconds <seconds>', `history older than this (while the source has written more) is an error (default ${DEFAULT_THRESHOLDS.lagErrorSeconds})`, positiveNumber('--max-lag-seconds'))
    .option('--json', 'print the report as one JSON object: {healthy, nodeId, slot, findings: [{check, status, message, meaning?, fix?, figures?}]}')
    .addHelpText('after', `
Checks: wal_level; output_plugin_libraries allows the slot's plugin; the
pgtimewarp extension and its node id; the store; the extension reaches the
store (postgres_fdw); the slot exists and the agent reads it (else: does the
agent run and retry, and why); WAL retention
(wal_status, safe_wal_size); slot lag in bytes and in time; the agent's
heartbeat (at least every 30 s while the source writes WAL; a warning after ${DEFAULT_THRESHOLDS.heartbeatWarnSeconds} s, an error when
the slot is inactive too); the store's checkpoint against the slot and the
WAL; tracked tables dropped, renamed or without their primary key; the
publication (pgoutput); the agent's health events of the last ${DEFAULT_THRESHOLDS.healthEventsHours} h.

Lag: a warning above ${formatBytes(DEFAULT_THRESHOLDS.lagWarnBytes)} or ${DEFAULT_THRESHOLDS.lagWarnSeconds} s, an error above --max-lag-bytes or
--max-lag-seconds.

Exit status: 0 when no check finds an error (warnings allowed), 1 otherwise.

Example:
  $ pgtimewarp doctor
  pgtimewarp doctor: node db1, slot pgtimewarp

  [ ok ] source_connection: connected to database "app" as postgres (PostgreSQL 15.20), ...
  [FAIL] slot_active: nothing is reading replication slot "pgtimewarp": the agent is not running or not connected
         meaning: No history is being recorded, and the slot holds back WAL on the source, ...
         fix: Start the agent: systemctl start pgtimewarp-agent (why it stopped: journalctl -u pgtimewarp-agent -n 50).
  ...
  NOT healthy: 1 error(s), 0 warning(s)`)
    .action(async (flags: { source?: string; store?: string; node?: string; slot?: string; maxLagBytes?: number; maxLagSeconds?: number; json?: boolean }) => {
      const thresholds: Partial<DoctorThresholds> = {};
      if (flags.maxLagBytes !== undefined) {
        thresholds.lagErrorBytes = flags.maxLagBytes;
        thresholds.lagWarnBytes = Math.min(DEFAULT_THRESHOLDS.lagWarnBytes, flags.maxLagBytes);
      }
      if (flags.maxLagSeconds !== undefined) {
        thresholds.lagErrorSeconds = flags.maxLagSeconds;
        thresholds.lagWarnSeconds = Math.min(DEFAULT_THRESHOLDS.lagWarnSeconds, flags.maxLagSeconds);
      }
      const report = await doctor({ source: flags.source, store: flags.store, node: flags.node, slot: flags.slot, thresholds });
      console.log(flags.json ? stringifyJson(report) : formatDoctorReport(report));
      if (!report.healthy) process.exitCode = 1;
    });
}
