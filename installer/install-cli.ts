// pgtimewarp install and uninstall: the commands' options, the confirmation
// prompt and the printed summary.  The work is in install.ts and
// uninstall.ts.

import { createInterface } from 'node:readline/promises';

import type { Command } from 'commander';

import { runInstall, type InstallOptions, type InstallResult } from './install.js';
import type { Renderer, StepResult } from './install-steps.js';
import { runUninstall, type UninstallOptions, type UninstallResult } from './uninstall.js';

// The flags as commander parses them: the options' own fields, as they are
// (agent and plugin stay strings: runInstall checks them), plus what only
// the command line has.
interface CommonFlags extends Pick<InstallOptions & UninstallOptions, 'source' | 'store' | 'dryRun'> {
  yes?: boolean;
  json?: boolean;
}

interface InstallFlags extends CommonFlags, Pick<InstallOptions, 'node' | 'slot' | 'agent' | 'plugin' | 'installDeps' | 'restart'> {}

interface UninstallFlags extends CommonFlags, Pick<UninstallOptions, 'dropStore'> {}

/** A task list that redraws on a terminal, one line per event elsewhere, nothing under --json (stdout is the JSON). */
function rendererFor(flags: CommonFlags): Renderer {
  if (flags.json) return 'silent';
  return process.stdout.isTTY ? 'default' : 'simple';
}

/** Ask before changing anything: only a person at a terminal can answer, and only when they did not already say --yes. */
function confirmer(flags: CommonFlags, question: string): ((plan: StepResult[]) => Promise<boolean>) | undefined {
  if (!process.stdin.isTTY || flags.yes || flags.dryRun || flags.json) return undefined;
  return async (plan) => {
    const changes = plan.filter((s) => s.status === 'would-change');
    console.log(`\n${changes.length} step(s) will change something:`);
    for (const s of changes) console.log(`  - ${s.title}: ${s.detail}`);
    const rl = createInterface({ input: process.stdin, output: process.stdout });
    try {
      const answer = await rl.question(`${question} [y/N] `);
      return /^y(es)?$/i.test(answer.trim());
    } finally {
      rl.close();
    }
  };
}

function printInstall(result: InstallResult): void {
  console.log(`\n${result.message}`);
  if (result.dryRun) return;
  const a = result.agent;
  if (a.mode === 'background') console.log(`agent: background process${a.pid !== undefined ? ` ${a.pid}` : ''}, log ${a.logFile}, pid file ${a.pidFile}`);
  if (a.mode === 'systemd') console.log(`agent: systemd unit ${a.unit} (journalctl -u ${a.unit})`);
  if (a.mode === 'none') console.log(`agent: not started (--agent none); its URLs are in ${a.envFile}`);
  console.log(`config: ${result.configFile}`);
  console.log('next:');
  for (const line of result.next) console.log(`  ${line}`);
}

function printUninstall(result: UninstallResult): void {
  console.log(`\n${result.message}`);
}

const CONNECTIONS_HELP = `
Connections: each URL comes from its flag, else PGTIMEWARP_SOURCE_URL /
PGTIMEWARP_STORE_URL, else the config file install writes ($PGTIMEWARP_CONFIG,
/etc/pgtimewarp/config.json as root, ~/.config/pgtimewarp/config.json
otherwise), else libpq's PG* variables (source only).`;

export function registerInstallCommands(program: Command): void {
  program
    .command('install')
    .description('install pgtimewarp for one source database, on the machine its PostgreSQL server runs on')
    .option('--source <url>', 'source database (the one whose tables are tracked), connecting as a superuser')
    .option('--store <url>', 'store database that keeps the history; created when missing, its server may be another')
    .option('--node <id>', "this source's node id in the store (default: the one it already has, else <system identifier>-<database>)")
    .option('--slot <name>', 'logical replication slot (default: pgtimewarp)')
    .option('--agent <mode>', 'how the agent runs: systemd (a unit; the default where systemd runs), background (a process with a pid file and a log file; the default elsewhere) or none (you run it)')
    .option('--plugin <name>', 'output plugin: pgoutput (default; built in) or wal2json')
    .option('--install-deps', 'install missing build dependencies with apt-get (postgresql-server-dev-<major>, make, gcc; postgresql-<major>-wal2json for --plugin wal2json)')
    .option('--restart', 'change server settings that are in the way (wal_level, output_plugin_libraries, max_replication_slots, max_wal_senders) with ALTER SYSTEM and restart or reload the server')
    .option('--dry-run', 'print the plan (each step and whether it would change something) and change nothing')
    .option('--yes', 'do not ask before changing things (asked only on a terminal)')
    .option('--json', 'print the outcome as one JSON object (steps with status changed, unchanged, skipped or would-change; restore: the tables whose history was attached after a restore, and those left, with why)')
    .addHelpText('after', `
Runs on the source database server's host: the extension is built with PGXS and
installed into that server's directories, so install fails when the source
server is not on this machine.  It needs a superuser on the source server, and
on the store server a superuser or a role with CREATEROLE (and CREATEDB when
the store database is missing).

Idempotent: every step first looks, and changes only what is not yet right; a
second run changes nothing and says so, and a run that failed part-way is
completed by the next one.  Passwords of the roles it creates are kept in the
config file (mode 0600) and reused.

After pg_dump and pg_restore, run it again against the restored database:
its tables have new OIDs, and history belongs to tables by OID.  When the
source is another database than the one the store recorded the node from
(cluster and database OID) and its pgtimewarp.config, which came with the
dump, names the node, install attaches each tracked table's history to the
table restored under its name (same primary key) and records the new
database.  In the recorded database it attaches nothing, and lists tables
created under a tracked name with the SELECT pgtimewarp_attach(...) to run.

A background agent's pid and log files go to $PGTIMEWARP_STATE_DIR, else next
to $PGTIMEWARP_CONFIG when that is set, else /var/lib/pgtimewarp (root) or
~/.local/state/pgtimewarp.
${CONNECTIONS_HELP}

Example:
  pgtimewarp install --source postgresql://postgres@localhost/app \\
                     --store postgresql://postgres@localhost/pgtimewarp`)
    .action(async (flags: InstallFlags) => {
      const result = await runInstall({
        source: flags.source, store: flags.store, node: flags.node, slot: flags.slot, agent: flags.agent, plugin: flags.plugin,
        installDeps: flags.installDeps, restart: flags.restart, dryRun: flags.dryRun,
        renderer: rendererFor(flags), confirm: confirmer(flags, 'Install?'),
      });
      if (flags.json) console.log(JSON.stringify({ ok: true, ...result }, null, 2));
      else printInstall(result);
    });

  program
    .command('uninstall')
    .description('remove pgtimewarp from a source database: the agent, the slot and publication, the extension, the roles install created, the config file')
    .option('--source <url>', 'source database, as a superuser')
    .option('--store <url>', 'store database (needed for --drop-store, and to drop the roles cleanly)')
    .option('--drop-store', 'also delete the history: drop the store database (only the pgtimewarp_store schema when the store is the source database)')
    .option('--dry-run', 'print the plan and change nothing')
    .option('--yes', 'do not ask before changing things (asked only on a terminal)')
    .option('--json', 'print the outcome as one JSON object')
    .addHelpText('after', `
The replication slot is always dropped: a slot nobody reads keeps every WAL
file from then on, until the disk fills.  The history stays in the store
unless --drop-store.  Roles are dropped only when install created them and
nothing else depends on them.  Idempotent, like install.
${CONNECTIONS_HELP}`)
    .action(async (flags: UninstallFlags) => {
      const result = await runUninstall({
        source: flags.source, store: flags.store, dropStore: flags.dropStore, dryRun: flags.dryRun,
        renderer: rendererFor(flags), confirm: confirmer(flags, 'Uninstall?'),
      });
      if (flags.json) console.log(JSON.stringify({ ok: true, ...result }, null, 2));
      else printUninstall(result);
    });
}
