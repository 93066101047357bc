#!/usr/bin/env node
// pgtimewarp's command line: this module only wires commands to the plain
// functions that do the work, and owns the one error handler that prints a
// clean message and sets the exit code.

import { Command, CommanderError } from 'commander';
import pg from 'pg';

import { AgentMetrics } from '../agent/metrics.js';
import { runAgent, type AgentEvent } from '../agent/run.js';
import { registerQueryCommands } from './commands.js';
import { configPath, readConfig, type Plugin } from './config.js';
import { registerDemoCommand } from './demo.js';
import { registerDoctorCommand } from './doctor.js';
import { registerInstallCommands } from './install-cli.js';
import { registerSkipCommand } from './skip.js';
import { errorJson, formatError } from './output.js';
import { migrateStore } from './store.js';

/** The command whose action runs, and whether it was asked for --json; null until its action starts. */
let running: { name: string; json: boolean } | null = null;

/**
 * Print an error as one clean line (PostgreSQL's fields kept) and exit
 * non-zero.  Under --json, stdout gets the error as one JSON object too,
 * so a script reading stdout always gets JSON.  Usage errors commander
 * found before any action ran were already printed by commander.
 */
function fail(err: unknown): never {
  const argv = process.argv.slice(2);
  const end = argv.indexOf('--');
  const json = running?.json ?? (end < 0 ? argv : argv.slice(0, end)).includes('--json');
  const first = argv.find((a) => !a.startsWith('-'));
  const command = running?.name ?? program.commands.find((c) => c.name() === first)?.name();
  if (err instanceof CommanderError) {
    // help and --version end this way too, successfully
    if (err.exitCode !== 0 && json) console.log(errorJson(err, command));
    process.exit(err.exitCode);
  }
  if (json) console.log(errorJson(err, command));
  console.error(formatError(err));
  process.exit(1);
}

const program = new Command()
  .name('pgtimewarp')
  .description('Time travel for PostgreSQL tables, from WAL-derived history kept in a separate store.')
  .showHelpAfterError()
  // usage errors come to fail() too (commander prints them first), for --json's sake
  .exitOverride()
  .hook('preAction', (_program, action) => {
    running = { name: action.name(), json: action.opts()['json'] === true };
  });

program
  .command('migrate')
  .description('create or upgrade the store schema (schema pgtimewarp_store) in the store database')
  .option('--store <url>', 'store database connection URL (default: $PGTIMEWARP_STORE_URL)')
  .option('--json', 'print the result as JSON')
  .action(async (opts: { store?: string; json?: boolean }) => {
    const url = opts.store ?? process.env['PGTIMEWARP_STORE_URL'];
    if (!url) {
      throw new Error('no store database given: pass --store <url> or set PGTIMEWARP_STORE_URL');
    }
    const applied = await migrateStore(url);
    if (opts.json) {
      console.log(JSON.stringify({ applied }));
    } else if (applied.length === 0) {
      console.log('store schema is up to date; nothing to apply');
    } else {
      console.log(`applied ${applied.length} migration(s): ${applied.join(', ')}`);
    }
  });

program
  .command('agent')
  .description('run the agent: stream the source WAL into the store until stopped (SIGTERM/SIGINT stop it cleanly)')
  .option('--source <url>', 'source database URL (default: $PGTIMEWARP_SOURCE_URL, else the agent URL of the config file install wrote)')
  .option('--store <url>', 'store database URL (default: $PGTIMEWARP_STORE_URL, else the config file)')
  .option('--node <id>', "this source's node id in the store (default: $PGTIMEWARP_NODE_ID, the config file, else the source's pgtimewarp_configure() setting)")
  .option('--slot <name>', 'logical replication slot, created on first start (default: the config file, else pgtimewarp)')
  .option('--plugin <name>', 'output plugin: pgoutput or wal2json (default: the config file, else pgoutput)')
  .option('--log-format <format>', 'text or json (one object per line)', 'text')
  .option('--metrics-port <port>', 'serve Prometheus metrics at http://<host>:<port>/metrics (default: none served)')
  .option('--metrics-host <host>', 'address the metrics are served on (default: 127.0.0.1; 0.0.0.0 for every interface)')
  .addHelpText('after', `
The agent keeps no state of its own: where it left off is in the store, so
it can be stopped, killed or moved at any time and resumes exactly there.

Metrics (pgtimewarp_agent_*, plus the process_* and nodejs_* process metrics):
lag in bytes and in seconds, LSNs, transactions and versions applied, batch
sizes, store write latency, heartbeats, retries. README.md, "Metrics", lists
them. A Prometheus scrape config for --metrics-port 9648:
  scrape_configs: [{job_name: pgtimewarp, static_configs: [{targets: ['127.0.0.1:9648']}]}]

Example:
  pgtimewarp agent --source postgres://pgtimewarp_agent@db/app --store postgres://pgtimewarp_agent@store/pgtimewarp --metrics-port 9648`)
  .action(async (opts: {
    source?: string; store?: string; node?: string; slot?: string; plugin?: string; logFormat: string;
    metricsPort?: string; metricsHost?: string;
  }) => {
    // the config file's agent URLs are the least-privileged ones install made
    const config = readConfig(configPath());
    const sourceUrl = opts.source ?? process.env['PGTIMEWARP_SOURCE_URL'] ?? config?.agentSourceUrl ?? config?.sourceUrl;
    const storeUrl = opts.store ?? process.env['PGTIMEWARP_STORE_URL'] ?? config?.agentStoreUrl ?? config?.storeUrl;
    const slot = opts.slot ?? config?.slot ?? 'pgtimewarp';
    const plugin: string = opts.plugin ?? config?.plugin ?? 'pgoutput';
    const problems: string[] = [];
    if (!sourceUrl) problems.push('no source database: pass --source <url>, set PGTIMEWARP_SOURCE_URL, or run "pgtimewarp install"');
    if (!storeUrl) problems.push('no store database: pass --store <url>, set PGTIMEWARP_STORE_URL, or run "pgtimewarp install"');
    if (plugin !== 'pgoutput' && plugin !== 'wal2json') problems.push(`--plugin must be pgoutput or wal2json, not ${plugin}`);
    if (opts.logFormat !== 'text' && opts.logFormat !== 'json') problems.push(`--log-format must be text or json, not ${opts.logFormat}`);
    const metricsPort = opts.metricsPort === undefined ? undefined : portNumber(opts.metricsPort);
    if (metricsPort === null) problems.push(`--metrics-port must be a port number from 1 to 65535, not ${opts.metricsPort}`);
    if (opts.metricsHost !== undefined && opts.metricsPort === undefined) problems.push('--metrics-host needs --metrics-port');
    if (problems.length > 0 || !sourceUrl || !storeUrl) throw new Error(problems.join('; '));
    const nodeId = opts.node ?? process.env['PGTIMEWARP_NODE_ID'] ?? config?.nodeId ?? (await configuredNodeId(sourceUrl));

    const stop = new AbortController();
    for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => stop.abort());
    const log = (e: AgentEvent): void => {
      const line = opts.logFormat === 'json'
        ? JSON.stringify({ time: new Date().toISOString(), ...e })
        : `${new Date().toISOString()} ${e.level.toUpperCase()} ${e.message}`;
      (e.level === 'info' ? console.log : console.error)(line);
    };
    let metrics: AgentMetrics | undefined;
    if (metricsPort !== undefined && metricsPort !== null) {
      metrics = new AgentMetrics();
      const served = await metrics.start(metricsPort, opts.metricsHost ?? '127.0.0.1');
      log({ level: 'info', event: 'metrics', message: `serving Prometheus metrics at ${served.url}`, url: served.url });
    }
    try {
      await runAgent({ sourceUrl, storeUrl, nodeId, slot, plugin: plugin as Plugin, signal: stop.signal, log, observer: metrics });
    } finally {
      await metrics?.close();
    }
    log({ level: 'info', event: 'stopped', message: 'agent stopped' });
  });

/** A TCP port given on the command line, or null when it is not one (1-65535). */
function portNumber(text: string): number | null {
  if (!/^[0-9]+$/.test(text)) return null;
  const port = Number(text);
  return port >= 1 && port <= 65_535 ? port : null;
}

// Each group of commands lives in a module of its own.
registerInstallCommands(program); // install, uninstall
registerQueryCommands(program); // track, untrack, status, asof, diff
registerDoctorCommand(program); // doctor
registerSkipCommand(program); // skip-transaction
registerDemoCommand(program); // demo

/** The node id the source database was configured with (pgtimewarp.config). */
async function configuredNodeId(sourceUrl: string): Promise<string> {
  const client = new pg.Client({ connectionString: sourceUrl });
  await client.connect();
  try {
    const res = await client.query<{ node_id: string }>(`SELECT node_id FROM pgtimewarp.config`).catch(() => ({ rows: [] }));
    const nodeId = res.rows[0]?.node_id;
    if (nodeId === undefined) {
      throw new Error('no node id: pass --node <id>, set PGTIMEWARP_NODE_ID, or run pgtimewarp_configure() in the source database');
    }
    return nodeId;
  } finally {
    await client.end();
  }
}

program.parseAsync(process.argv).catch(fail);
