// The work behind `pgtimewarp doctor`: look at the source database, its
// replication slot and the store, and say what is wrong, why it matters and
// what to do.  Plain function, no printing (installer/doctor.ts formats).
//
// Never crashes on a half-installed system: every check runs on its own,
// and one that cannot run (no connection, no extension, no privilege) is a
// finding that says why.  A check that cannot run is an error: what was not
// looked at cannot be called healthy.
//
// Healthy means no finding is an error; warnings are allowed (they are
// things to look at, not a stopped history).  Errors are what stops or
// loses history now: the agent not reading the slot, a plugin the server
// refuses, lag beyond the limits, WAL the slot needs about to go or gone,
// a tracked table renamed or without its key, a slot confirmed past the
// store's checkpoint.

import pg from 'pg';

import { walRisk } from '../agent/run.js';
import { backgroundAgentState, logTail, pendingRetry } from './agent-service.js';
import { ConfigError, resolveConnections, type Connections, type InstalledConfig, type Plugin } from './config.js';
import { formatBytes, formatDuration } from './output.js';
import { describeConnection, quoteIdent, quoteLiteral } from './query-connection.js';

export type Status = 'ok' | 'warning' | 'error';
export type Figure = string | number | boolean | null;

export interface Finding {
  /** Stable name of the check, for scripts: "wal_level", "slot_active", ... */
  check: string;
  status: Status;
  /** What was found, in one sentence. */
  message: string;
  /** Why it matters (non-ok findings). */
  meaning?: string;
  /** What to do (non-ok findings). */
  fix?: string;
  /** The measurements behind the finding (bytes, seconds, LSNs). */
  figures?: Record<string, Figure>;
  /** Not checked: the check whose error kept this one from running. */
  blockedBy?: string;
}

export interface DoctorReport {
  /** No finding is an error. */
  healthy: boolean;
  nodeId: string | null;
  slot: string;
  findings: Finding[];
}

/** Limits: above a warn value a finding is a warning, above an error value an error. */
export interface DoctorThresholds {
  lagWarnBytes: number;
  lagErrorBytes: number;
  lagWarnSeconds: number;
  lagErrorSeconds: number;
  /** A running agent stores progress at least every 30 s while there is WAL to confirm (LIVENESS_HEARTBEAT_MS): two missed ones. */
  heartbeatWarnSeconds: number;
  /** As the agent's own wal_at_risk health event. */
  safeWalWarnBytes: number;
  healthEventsHours: number;
}

export const DEFAULT_THRESHOLDS: Readonly<DoctorThresholds> = {
  lagWarnBytes: 64 * 1024 ** 2,
  lagErrorBytes: 1024 ** 3,
  lagWarnSeconds: 60,
  lagErrorSeconds: 600,
  heartbeatWarnSeconds: 60,
  safeWalWarnBytes: 1024 ** 3,
  healthEventsHours: 24,
};

export interface DoctorOptions {
  source?: string;
  store?: string;
  node?: string;
  /** Replication slot; default: the config file's, else the store's checkpoint's, else "pgtimewarp". */
  slot?: string;
  /** Environment to resolve connections from (tests pass their own). */
  env?: NodeJS.ProcessEnv;
  thresholds?: Partial<DoctorThresholds>;
}

const DEFAULT_SLOT = 'pgtimewarp';
const PUBLICATION = 'pgtimewarp';
/** The health event kinds of the errors the agent retries after (retryKind in agent/run.ts). */
const RETRY_KINDS = ['agent_retry', 'store_write_error', 'decode_error'];
/**
 * A retry this recent, not followed by a stop, means the agent still runs
 * and backs off: it waits at most 30 s between tries (its default
 * backoff), and records each retry.
 */
const RETRYING_WITHIN_SECONDS = 60;
const STATEMENT_TIMEOUT_MS = 30_000;
const CONNECT_TIMEOUT_MS = 10_000;

/** Why checks could not run: the check that failed first, and how it failed. */
interface Blocked {
  by: string;
  reason: string;
}

interface SlotRow {
  plugin: string;
  slot_type: string;
  database: string | null;
  active: boolean;
  active_pid: number | null;
  confirmed_flush_lsn: string | null;
  wal_status: string | null;
  safe_wal_size: string | null;
  lag_bytes: string | null;
}

interface Checkpoint {
  slot_name: string;
  confirmed_lsn: string;
  confirmed_ts: string;
  age_seconds: number;
}

interface TrackedRelation {
  schema: string;
  table: string;
  /** schema.table, quoted where SQL needs it. */
  name: string;
  /** The table's name alone, quoted where SQL needs it. */
  table_sql: string;
  relid: string | null;
  pk_columns: string[];
  /** The key columns as SQL: "id", "region, seq". */
  pk_sql: string;
}

/** The store, read directly or through the extension's foreign tables. */
interface StoreReader {
  client: pg.Client;
  /** Schema of the store tables for this reader: pgtimewarp_store, or pgtimewarp (foreign tables). */
  schema: string;
}

/** What probeStore() found: the store's answer, or the error the probe raised. */
type StoreProbe =
  | { ok: true; answer: string; figures: { probe: string; storeServerVersion?: string } }
  | { ok: false; error: unknown; figures: { probe: string } };

/**
 * Whether the extension reaches the store, asked the cheapest way the
 * installed extension offers: pgtimewarp_ping() (0.4 on) asks the store for
 * its version over the extension's own connection.  An older extension has
 * only pgtimewarp_status(), which reads the store's state of every table,
 * so it is the probe only where pgtimewarp_ping() does not exist.
 */
async function probeStore(src: pg.Client, fn: string): Promise<StoreProbe> {
  try {
    const res = await src.query<{ version: string }>(`SELECT ${fn}.pgtimewarp_ping() AS version`);
    const version = res.rows[0]!.version;
    return { ok: true, answer: `pgtimewarp_ping(): the store runs PostgreSQL ${version}`, figures: { probe: 'pgtimewarp_ping', storeServerVersion: version } };
  } catch (err) {
    if (!(err instanceof pg.DatabaseError && err.code === UNDEFINED_FUNCTION)) return { ok: false, error: err, figures: { probe: 'pgtimewarp_ping' } };
  }
  try {
    const res = await src.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${fn}.pgtimewarp_status()`);
    return { ok: true, answer: `pgtimewarp_status() lists ${res.rows[0]!.n} table(s) for this role`, figures: { probe: 'pgtimewarp_status' } };
  } catch (err) {
    return { ok: false, error: err, figures: { probe: 'pgtimewarp_status' } };
  }
}

/** SQLSTATE 42883: no function of that name and arguments (an extension older than 0.4 has no pgtimewarp_ping). */
const UNDEFINED_FUNCTION = '42883';

function message(err: unknown): string {
  if (err instanceof pg.DatabaseError) {
    return [err.message, err.detail, err.hint].filter(Boolean).join(' ');
  }
  return err instanceof Error ? err.message : String(err);
}

async function connect(url: string | undefined, app: string): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: url,
    application_name: app,
    statement_timeout: STATEMENT_TIMEOUT_MS,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
  });
  client.on('error', () => undefined); // a lost connection surfaces through the failing query
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw err;
  }
  return client;
}

/** output_plugin_libraries' value as a list of names (a list GUC: commas, optional double quotes). */
export function parsePluginList(setting: string): string[] {
  return setting
    .split(',')
    .map((s) => s.trim().replace(/^"(.*)"$/, '$1'))
    .filter((s) => s.length > 0);
}

/** ok / warning / error for a figure against its two limits. */
export function grade(value: number | null, warnAbove: number, errorAbove: number): Status {
  if (value === null) return 'ok';
  if (value > errorAbove) return 'error';
  if (value > warnAbove) return 'warning';
  return 'ok';
}

function worst(...statuses: Status[]): Status {
  if (statuses.includes('error')) return 'error';
  if (statuses.includes('warning')) return 'warning';
  return 'ok';
}

/**
 * What to run to get history recorded again after a gap the agent cannot
 * go on across (slot lost, WAL lost, slot confirmed past the store, a
 * restored source): each table starts over, which deletes its history.
 * The fix says so, and how to keep a copy first.
 */
function restartHistoryFix(nodeId: string, slot: string, tables: TrackedRelation[]): string {
  const names = tables.length > 0 ? tables.map((t) => t.name) : ['<table>'];
  const each = (fn: string): string => names.map((n) => `SELECT ${fn}(${quoteLiteral(n)});`).join(' ');
  const copy = `\\copy (SELECT * FROM pgtimewarp_store.row_history WHERE node_id = ${quoteLiteral(nodeId)}) TO 'pgtimewarp-history.csv' CSV HEADER`;
  return `History cannot continue across the gap: the agent refuses to. What was recorded before it stays queryable until you delete it. ` +
    `Recording afresh from now deletes it: pgtimewarp_forget deletes all of a table's recorded history, so first keep a copy if you need it ` +
    `(in psql on the store database: ${copy}). Then: ` +
    `stop the agent; in the source database run ${each('pgtimewarp_untrack')} ${each('pgtimewarp_forget')} ` +
    `and, if the slot still exists, SELECT pg_drop_replication_slot(${quoteLiteral(slot)}); ` +
    `in the store database run DELETE FROM pgtimewarp_store.wal_checkpoints WHERE node_id = ${quoteLiteral(nodeId)}; ` +
    `start the agent (it creates a new slot); then in the source run ${each('pgtimewarp_track')}`;
}

/** How to get the agent running again, as it was provisioned. */
function startAgentFix(config: InstalledConfig | null, nodeId: string | null, slot: string, plugin: string): string {
  if (config?.agent === 'systemd' && config.systemdUnit) {
    const unit = config.systemdUnit;
    return `Start the agent: systemctl start ${unit} (why it stopped: journalctl -u ${unit} -n 50).`;
  }
  if (config?.agent === 'background') {
    return `See why the agent stopped in ${config.logFile ?? 'its log file'}, then run "pgtimewarp install" again, which starts it.`;
  }
  const args = `--node ${nodeId ?? '<node id>'} --slot ${slot} --plugin ${plugin}`;
  // --agent none: install left the agent's URLs in an environment file (read without depending on the field's declaration)
  const envFile = config !== null && 'envFile' in config && typeof config.envFile === 'string' ? config.envFile : null;
  if (envFile !== null) return `Start the agent: set -a; . ${envFile}; set +a; pgtimewarp agent ${args}`;
  return `Start the agent: pgtimewarp agent --source <source url> --store <store url> ${args} ` +
    `(or provision it as a service with "pgtimewarp install").`;
}

/**
 * A transaction the agent stopped at because it fails alike on every try
 * (agent/poison.ts): reported by a poison_transaction health event, and
 * unresolved while the store's checkpoint is still before its end.  History
 * has stopped for every table until it is skipped or its cause removed.
 */
async function poisonTransactionFinding(store: StoreReader, nodeId: string, agentFix: string): Promise<Finding> {
  const s = store.schema;
  const res = await store.client.query<{ at: string; end_lsn: string; message: string; tables: string | null; error: string | null }>(
    `SELECT e.occurred_at::text AS at, e.detail ->> 'end_lsn' AS end_lsn, e.message,
            (SELECT string_agg(t, ', ') FROM jsonb_array_elements_text(CASE jsonb_typeof(e.detail -> 'tables')
                                               WHEN 'array' THEN e.detail -> 'tables' END) AS t) AS tables,
            e.detail ->> 'error' AS error
       FROM ${s}.health_events e
      WHERE e.node_id = $1 AND e.kind = 'poison_transaction'
        AND NOT EXISTS (SELECT 1 FROM ${s}.wal_checkpoints c
                         WHERE c.node_id = e.node_id AND c.confirmed_lsn >= (e.detail ->> 'end_lsn')::pg_lsn)
      ORDER BY e.occurred_at DESC LIMIT 1`,
    [nodeId],
  );
  const poison = res.rows[0];
  if (poison === undefined) {
    return { check: 'poison_transaction', status: 'ok', message: 'the agent is not stopped at a transaction it cannot store' };
  }
  // a skip already asked for (read directly: the extension's foreign tables may not include the list)
  const requested = s !== 'pgtimewarp_store' ? false : (await store.client.query(
    `SELECT 1 FROM pgtimewarp_store.skipped_transactions WHERE node_id = $1 AND end_lsn = $2::pg_lsn`,
    [nodeId, poison.end_lsn],
  )).rowCount === 1;
  const skip = `pgtimewarp skip-transaction ${poison.end_lsn} --reason '<why>'`;
  return {
    check: 'poison_transaction', status: 'error',
    message: `the agent stopped at the transaction ending at ${poison.end_lsn}${poison.tables === null ? '' : ` (${poison.tables})`}, ` +
      `which fails the same way on every try: ${poison.error ?? poison.message} (reported at ${poison.at})`,
    figures: { endLsn: poison.end_lsn, tables: poison.tables, skipRequested: requested },
    meaning: 'History has stopped for every tracked table at that transaction, and the slot holds back WAL from there on.',
    fix: requested
      ? `Skipping it is already requested (pgtimewarp_store.skipped_transactions): start the agent, and it goes past it. ${agentFix}`
      : `Remove the cause (the error names it) and start the agent again; or skip the transaction, losing its changes ` +
        `(a history gap is recorded from ${poison.end_lsn} on for ${poison.tables ?? 'every tracked table'}): ${skip}, then start the agent again. ${agentFix}`,
  };
}

/** An agent that runs though it does not read the slot: its pid when known, and the retry it backs off from. */
interface NotReading {
  pid: number | null;
  retry: { at: string; message: string; from: string } | null;
}

/**
 * Whether the agent runs while nothing reads the slot: it is backing off
 * between retries (or just starting).  A background agent's pid file
 * decides whether it runs, and its log says why it retries; otherwise a
 * recent retry in the store's health events, not followed by a stop, says
 * it runs.  Null: not running, as far as can be seen.
 */
async function agentNotReading(
  config: InstalledConfig | null, nodeId: string | null, slot: string, plugin: string, store: StoreReader | null,
): Promise<NotReading | null> {
  let pid: number | null = null;
  let retry: NotReading['retry'] = null;
  if (config?.agent === 'background' && config.pidFile !== undefined && nodeId !== null) {
    const state = backgroundAgentState(config.pidFile, { nodeId, slot, plugin: plugin as Plugin });
    if (state.state === 'stopped') return null; // gone, whatever it last said
    pid = state.pid;
    const logged = config.logFile === undefined ? null : pendingRetry(logTail(config.logFile, 200));
    if (logged !== null) retry = { at: logged.time ?? 'an unknown time', message: logged.message, from: `its log ${config.logFile}` };
  }
  if (retry === null && store !== null && nodeId !== null) {
    const s = store.schema;
    const event = (await store.client.query<{ at: string; kind: string; message: string }>(
      `SELECT occurred_at::text AS at, kind, message FROM ${s}.health_events
        WHERE node_id = $1 AND kind = ANY($2) AND occurred_at > now() - make_interval(secs => $3)
          AND occurred_at > coalesce((SELECT max(occurred_at) FROM ${s}.health_events WHERE node_id = $1 AND kind = 'agent_stopped'), '-infinity')
        ORDER BY occurred_at DESC LIMIT 1`,
      [nodeId, RETRY_KINDS, RETRYING_WITHIN_SECONDS],
    )).rows[0];
    if (event !== undefined) retry = { at: event.at, message: event.message, from: `health event ${event.kind}` };
  }
  return pid === null && retry === null ? null : { pid, retry };
}

/**
 * Run every check.  Resolves to the report; rejects only on a bug, never
 * because something is broken or missing.
 */
export async function doctor(opts: DoctorOptions = {}): Promise<DoctorReport> {
  const env = opts.env ?? process.env;
  const limits: DoctorThresholds = { ...DEFAULT_THRESHOLDS, ...opts.thresholds };
  const findings: Finding[] = [];
  const add = (f: Finding): void => {
    findings.push(f);
  };
  const blocked = (check: string, why: Blocked): void =>
    add({
      check, status: 'error', message: `not checked: ${why.reason}`, blockedBy: why.by,
      meaning: 'This check could not run, so its part of the system is not known to be healthy.',
      fix: `Fix ${why.by} first, then run doctor again.`,
    });
  /** Run a check; an unexpected failure becomes its finding rather than ending doctor. */
  const guard = async (check: string, work: () => Promise<void>): Promise<void> => {
    try {
      await work();
    } catch (err) {
      add({
        check, status: 'error', message: `the check failed: ${message(err)}`,
        meaning: 'This check could not run, so its part of the system is not known to be healthy.',
        fix: 'Fix what the message names (often: run doctor as a superuser or the extension\'s owner), then run doctor again.',
      });
    }
  };

  // --- configuration ------------------------------------------------------
  let conn: Connections;
  try {
    conn = resolveConnections({ source: opts.source, store: opts.store, node: opts.node }, {}, env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    add({ check: 'config', status: 'error', message: err.message, meaning: 'Settings from the config file are not used.', fix: 'Fix or delete the config file, or pass --source, --store and --node.' });
    conn = resolveConnections({ source: opts.source, store: opts.store, node: opts.node }, {}, { ...env, PGTIMEWARP_CONFIG: '/nonexistent/pgtimewarp-config.json' });
  }
  const config = conn.config;

  let source: pg.Client | null = null;
  let storeClient: pg.Client | null = null;
  try {
    // --- source connection ------------------------------------------------
    const hasPgEnv = Boolean(env['PGHOST'] || env['PGDATABASE'] || env['PGPORT'] || env['PGUSER']);
    let noSource: Blocked | null = null;
    if (conn.sourceUrl === undefined && !hasPgEnv) {
      add({
        check: 'source_connection', status: 'error', message: 'no source database given',
        meaning: 'Nothing about the source database, its slot or the agent can be checked.',
        fix: 'Pass --source <url>, set PGTIMEWARP_SOURCE_URL, run "pgtimewarp install" (it writes the config file), or set PGHOST/PGDATABASE.',
      });
      noSource = { by: 'source_connection', reason: 'no source database given' };
    } else {
      const where = describeConnection('source', opts.source, env, config);
      try {
        source = await connect(conn.sourceUrl, 'pgtimewarp doctor');
        const who = await source.query<{ db: string; usr: string; version: string }>(
          `SELECT current_database() AS db, current_user AS usr, current_setting('server_version') AS version`,
        );
        const w = who.rows[0]!;
        add({ check: 'source_connection', status: 'ok', message: `connected to database "${w.db}" as ${w.usr} (PostgreSQL ${w.version}), source ${where}` });
      } catch (err) {
        add({
          check: 'source_connection', status: 'error', message: `could not connect to the source database ${where}: ${message(err)}`,
          meaning: 'Nothing about the source database, its slot or the agent can be checked.',
          fix: 'Check that the server runs and the URL, user and password are right; pass --source <url> or set PGTIMEWARP_SOURCE_URL to override.',
        });
        noSource = { by: 'source_connection', reason: 'no connection to the source database' };
      }
    }

    // --- what the source knows about pgtimewarp ----------------------------
    let extSchema: string | null = null;
    let configuredNode: string | null = null;
    if (source !== null) {
      const src = source;
      await guard('wal_level', async () => {
        const level = (await src.query<{ v: string }>(`SELECT current_setting('wal_level') AS v`)).rows[0]!.v;
        if (level === 'logical') {
          add({ check: 'wal_level', status: 'ok', message: 'wal_level is logical' });
        } else {
          add({
            check: 'wal_level', status: 'error', message: `wal_level is ${level}, not logical`, figures: { walLevel: level },
            meaning: 'Without logical WAL nothing can be decoded: no slot, no history.',
            fix: 'ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL (a reload is not enough).',
          });
        }
      });
      await guard('extension', async () => {
        const ext = await src.query<{ schema: string; version: string }>(
          `SELECT n.nspname AS schema, e.extversion AS version FROM pg_catalog.pg_extension e
             JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pgtimewarp'`,
        );
        const row = ext.rows[0];
        if (row === undefined) {
          add({
            check: 'extension', status: 'error', message: 'the pgtimewarp extension is not installed in this database',
            meaning: 'Tables cannot be tracked and history cannot be queried here.',
            fix: 'Run "pgtimewarp install" (or, if this is the wrong database, point --source at the one whose tables you track).',
          });
          return;
        }
        extSchema = row.schema;
        try {
          configuredNode = (await src.query<{ node_id: string }>(`SELECT node_id FROM pgtimewarp.config`)).rows[0]?.node_id ?? null;
        } catch (err) {
          add({
            check: 'extension', status: 'warning', message: `pgtimewarp ${row.version} is installed in schema ${row.schema}, but its node id cannot be read: ${message(err)}`,
            meaning: 'Doctor cannot tell which node of the store this database is.',
            fix: 'Run doctor as a superuser or the extension\'s owner, or pass --node.',
          });
          return;
        }
        if (configuredNode === null) {
          add({
            check: 'extension', status: 'error', message: `pgtimewarp ${row.version} is installed in schema ${row.schema}, but no node id is configured`,
            meaning: 'The extension does not know which node of the store this database is: tracking and queries fail.',
            fix: `Run "pgtimewarp install", or SELECT ${quoteIdent(row.schema)}.pgtimewarp_configure('<node id>').`,
          });
          return;
        }
        add({ check: 'extension', status: 'ok', message: `pgtimewarp ${row.version} is installed in schema ${row.schema}, configured as node "${configuredNode}"` });
      });
    } else {
      blocked('wal_level', noSource!);
      blocked('extension', noSource!);
    }

    // --- node ----------------------------------------------------------------
    const nodeId = conn.nodeId ?? configuredNode;
    const nodeOrigin = opts.node !== undefined ? '--node' : env['PGTIMEWARP_NODE_ID'] !== undefined ? 'PGTIMEWARP_NODE_ID'
      : config !== null ? 'the config file' : 'the source\'s pgtimewarp.config';
    if (nodeId === null) {
      add({
        check: 'node', status: 'error', message: 'no node id: not given, and not readable from the source database',
        meaning: 'The store keeps history per node; without its id nothing in the store can be checked.',
        fix: 'Pass --node <id>, set PGTIMEWARP_NODE_ID, or run "pgtimewarp install".',
      });
    } else if (configuredNode !== null && configuredNode !== nodeId) {
      add({
        check: 'node', status: 'error', message: `the source database is configured as node "${configuredNode}", but node "${nodeId}" (from ${nodeOrigin}) is being checked`,
        figures: { nodeId, configuredNode },
        meaning: 'The agent, the extension and doctor must agree on the node, or history is written where queries do not look.',
        fix: `Use --node ${configuredNode}, or fix the setting in ${nodeOrigin}.`,
      });
    }

    // --- store -----------------------------------------------------------------
    let store: StoreReader | null = null;
    let noStore: Blocked | null = null;
    if (conn.storeUrl !== undefined) {
      const where = describeConnection('store', opts.store, env, config);
      try {
        storeClient = await connect(conn.storeUrl, 'pgtimewarp doctor');
        const schema = await storeClient.query<{ ok: boolean }>(`SELECT to_regclass('pgtimewarp_store.wal_checkpoints') IS NOT NULL AS ok`);
        if (schema.rows[0]?.ok) {
          store = { client: storeClient, schema: 'pgtimewarp_store' };
          add({ check: 'store_connection', status: 'ok', message: `connected to the store ${where}` });
        } else {
          add({
            check: 'store_connection', status: 'error', message: `the store database ${where} has no pgtimewarp_store schema`,
            meaning: 'History has nowhere to go.', fix: 'Run "pgtimewarp install" (or "pgtimewarp migrate --store <url>"), or point --store at the right database.',
          });
          noStore = { by: 'store_connection', reason: 'the store has no pgtimewarp_store schema' };
        }
      } catch (err) {
        add({
          check: 'store_connection', status: 'error', message: `could not connect to the store database ${where}: ${message(err)}`,
          meaning: 'The agent cannot write history while the store is unreachable, and doctor cannot check it.',
          fix: 'Check that the store\'s server runs and the URL, user and password are right; pass --store <url> or set PGTIMEWARP_STORE_URL to override.',
        });
        noStore = { by: 'store_connection', reason: 'no connection to the store database' };
      }
    } else if (source !== null && extSchema !== null) {
      // no store URL: the extension's foreign tables reach it, for its owner
      try {
        await source.query(`SELECT 1 FROM pgtimewarp.wal_checkpoints LIMIT 1`);
        store = { client: source, schema: 'pgtimewarp' };
        add({ check: 'store_connection', status: 'ok', message: 'reading the store through the source\'s foreign tables (no store URL given)' });
      } catch (err) {
        add({
          check: 'store_connection', status: 'error', message: `no store URL given, and the store cannot be read through the source's foreign tables: ${message(err)}`,
          meaning: 'Doctor cannot check the agent\'s checkpoint, the tracked tables or the health events.',
          fix: 'Pass --store <url> or set PGTIMEWARP_STORE_URL, or run doctor as the extension\'s owner.',
        });
        noStore = { by: 'store_connection', reason: 'no way to read the store' };
      }
    } else {
      add({
        check: 'store_connection', status: 'error', message: 'no store database given',
        meaning: 'Doctor cannot check the agent\'s checkpoint, the tracked tables or the health events.',
        fix: 'Pass --store <url>, set PGTIMEWARP_STORE_URL, or run "pgtimewarp install" (it writes the config file).',
      });
      noStore = { by: 'store_connection', reason: 'no store database given' };
    }
    if (store !== null && nodeId === null) noStore = { by: 'node', reason: 'no node id' };
    const storeReady = store !== null && nodeId !== null ? store : null;

    // --- what the store knows ------------------------------------------------------
    let checkpoint: Checkpoint | null = null;
    let tracked: TrackedRelation[] = [];
    let storeRead = false;
    let lastStop: { at: string; message: string } | null = null;
    if (storeReady !== null) {
      const s = storeReady.schema;
      await guard('node', async () => {
        const node = await storeReady.client.query(`SELECT 1 FROM ${s}.nodes WHERE node_id = $1`, [nodeId]);
        const cp = await storeReady.client.query<Checkpoint>(
          `SELECT slot_name, confirmed_lsn::text, confirmed_ts::text,
                  extract(epoch FROM now() - updated_at)::float8 AS age_seconds
             FROM ${s}.wal_checkpoints WHERE node_id = $1`,
          [nodeId],
        );
        checkpoint = cp.rows[0] ?? null;
        const rel = await storeReady.client.query<TrackedRelation>(
          `SELECT schema_name AS schema, table_name AS table, pg_catalog.format('%I.%I', schema_name, table_name) AS name,
                  quote_ident(table_name) AS table_sql, relid::text, pk_columns,
                  array_to_string(ARRAY(SELECT quote_ident(c) FROM unnest(pk_columns) WITH ORDINALITY AS k(c, i) ORDER BY i), ', ') AS pk_sql
             FROM ${s}.tracked_relations WHERE node_id = $1 AND untracked_lsn IS NULL ORDER BY 1, 2`,
          [nodeId],
        );
        tracked = rel.rows;
        const stop = await storeReady.client.query<{ at: string; message: string }>(
          `SELECT occurred_at::text AS at, message FROM ${s}.health_events
            WHERE node_id = $1 AND kind = 'agent_stopped' AND occurred_at > now() - make_interval(hours => $2)
            ORDER BY occurred_at DESC LIMIT 1`,
          [nodeId, limits.healthEventsHours],
        );
        lastStop = stop.rows[0] ?? null;
        storeRead = true;
        if (node.rowCount === 0) {
          add({
            check: 'node', status: 'warning', message: `the store has no node "${nodeId}": the agent has not run for it yet`,
            meaning: 'Nothing has been recorded for this database yet.',
            fix: 'Start the agent (see slot_active); it registers the node on its first start.',
          });
        } else if (!findings.some((f) => f.check === 'node')) {
          add({ check: 'node', status: 'ok', message: `node "${nodeId}" (from ${nodeOrigin}) is registered in the store` });
        }
      });
    }

    if (nodeId !== null && !findings.some((f) => f.check === 'node')) {
      add({ check: 'node', status: 'ok', message: `checking node "${nodeId}" (from ${nodeOrigin}); the store could not confirm it` });
    }

    // --- slot ----------------------------------------------------------------------------
    const slot = opts.slot ?? config?.slot ?? (checkpoint as Checkpoint | null)?.slot_name ?? DEFAULT_SLOT;
    let slotRow: SlotRow | null = null;
    const plugin = (): string => slotRow?.plugin ?? config?.plugin ?? 'pgoutput';
    if (source !== null) {
      const src = source;
      await guard('slot', async () => {
        const res = await src.query<SlotRow>(
          `SELECT plugin, slot_type, database, active, active_pid, confirmed_flush_lsn::text, wal_status,
                  safe_wal_size::text,
                  pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::text AS lag_bytes
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`,
          [slot],
        );
        const row = res.rows[0];
        const db = (await src.query<{ db: string }>(`SELECT current_database() AS db`)).rows[0]!.db;
        if (row === undefined) {
          const cp = checkpoint as Checkpoint | null;
          if (cp !== null) {
            add({
              check: 'slot', status: 'error', message: `replication slot "${slot}" does not exist, but the store has history up to ${cp.confirmed_lsn}`,
              figures: { slot, storeConfirmedLsn: cp.confirmed_lsn },
              meaning: 'The slot was dropped or lost: the WAL since the store\'s checkpoint is gone, so history has a gap and the agent refuses to go on.',
              fix: restartHistoryFix(nodeId ?? '<node id>', slot, tracked),
            });
          } else {
            add({
              check: 'slot', status: 'error', message: `replication slot "${slot}" does not exist`,
              figures: { slot },
              meaning: 'No changes are being kept for the agent: nothing is recorded.',
              fix: 'Start the agent; it creates the slot on its first start (or run "pgtimewarp install"). Then track tables: changes are recorded only from where the slot starts.',
            });
          }
          return;
        }
        if (row.slot_type !== 'logical' || row.database !== db) {
          add({
            check: 'slot', status: 'error',
            message: `replication slot "${slot}" is a ${row.slot_type} slot of database ${row.database ?? '(none)'}, not a logical slot of "${db}"`,
            figures: { slot, slotType: row.slot_type, database: row.database },
            meaning: 'The agent cannot decode this database\'s changes from it.',
            fix: 'Use another slot name (--slot for doctor and the agent), or drop this slot if it is not in use.',
          });
          return;
        }
        slotRow = row;
        add({ check: 'slot', status: 'ok', message: `logical replication slot "${slot}" exists (plugin ${row.plugin})`, figures: { slot, plugin: row.plugin } });
      });
    } else {
      blocked('slot', noSource!);
    }

    // --- plugin allow-list (needs the slot's plugin) ------------------------------------------
    if (source !== null) {
      const src = source;
      await guard('output_plugin_libraries', async () => {
        const res = await src.query<{ setting: string; context: string }>(
          `SELECT setting, context FROM pg_catalog.pg_settings WHERE name = 'output_plugin_libraries'`,
        );
        const row = res.rows[0];
        const p = plugin();
        if (row === undefined) {
          add({ check: 'output_plugin_libraries', status: 'ok', message: `this PostgreSQL build has no output plugin allow-list; ${p} can be used` });
          return;
        }
        const allowed = parsePluginList(row.setting);
        if (allowed.includes(p)) {
          add({ check: 'output_plugin_libraries', status: 'ok', message: `output plugin ${p} is allowed (output_plugin_libraries = ${row.setting})` });
          return;
        }
        const apply = row.context === 'postmaster' ? 'then restart PostgreSQL' : 'SELECT pg_reload_conf();';
        add({
          check: 'output_plugin_libraries', status: 'error',
          message: `output plugin ${p}${slotRow !== null ? ` (of slot "${slot}")` : ''} is not in output_plugin_libraries (${row.setting || 'empty'})`,
          figures: { plugin: p, outputPluginLibraries: row.setting },
          meaning: `PostgreSQL refuses to decode WAL with ${p}: the agent cannot stream, and no history is recorded while the WAL piles up.`,
          fix: `ALTER SYSTEM SET output_plugin_libraries = ${[...allowed, p].map(quoteLiteral).join(', ')}; ${apply}`,
        });
      });
    } else {
      blocked('output_plugin_libraries', noSource!);
    }

    // --- FDW: the extension reaches the store -------------------------------------------------
    if (source !== null && extSchema !== null) {
      const src = source;
      const fn = quoteIdent(extSchema);
      await guard('fdw', async () => {
        const probe = await probeStore(src, fn);
        if (probe.ok) {
          // 0.4 on reads the store over its own connection, made from the foreign server and user mapping
          const route = probe.figures.probe === 'pgtimewarp_ping' ? 'over its own connection' : 'through postgres_fdw';
          add({ check: 'fdw', status: 'ok', message: `the extension reaches the store ${route} (${probe.answer})`, figures: probe.figures });
        } else {
          add({
            check: 'fdw', status: 'error', message: `${probe.figures.probe}() fails: ${message(probe.error)}`, figures: probe.figures,
            meaning: 'Tracking and every history query in this database fail while the extension cannot reach the store.',
            fix: 'Check the foreign server\'s options (ALTER SERVER pgtimewarp_store OPTIONS (SET host \'...\', SET port \'...\', SET dbname \'...\')) and the user mapping of the extension\'s owner; "pgtimewarp install" sets both.',
          });
        }
      });
    } else {
      blocked('fdw', noSource ?? { by: 'extension', reason: 'the pgtimewarp extension is not usable' });
    }

    // --- slot checks ------------------------------------------------------------------------------
    const sr = slotRow as SlotRow | null;
    const noSlot: Blocked = noSource ?? { by: 'slot', reason: `replication slot "${slot}" is not usable` };
    let agentFix = startAgentFix(config, nodeId, slot, plugin());
    let notReading: NotReading | null = null;
    if (sr !== null && !sr.active) {
      await guard('slot_active', async () => {
        notReading = await agentNotReading(config, nodeId, slot, plugin(), storeReady);
      });
    }
    const running = notReading as NotReading | null;
    if (running !== null) {
      agentFix = running.retry !== null
        ? `Remove the cause the error names (${running.retry.from} has more); the agent tries again by itself, at least every 30 s, and goes on from its checkpoint.`
        : 'Wait a few seconds and run doctor again; if it persists, see the agent\'s log.';
    }
    if (sr !== null && source !== null) {
      const src = source;
      const cp = checkpoint as Checkpoint | null;
      const stop = lastStop as { at: string; message: string } | null;
      if (sr.active) {
        add({ check: 'slot_active', status: 'ok', message: `the agent is reading slot "${slot}" (backend pid ${sr.active_pid})`, figures: { activePid: sr.active_pid } });
      } else if (running !== null) {
        const who = `the agent is running${running.pid !== null ? ` (pid ${running.pid})` : ''}`;
        add({
          check: 'slot_active', status: 'error',
          message: running.retry !== null
            ? `${who} but not reading replication slot "${slot}": it is retrying after an error (last at ${running.retry.at}, ${running.retry.from}): ${running.retry.message}`
            : `${who} but not reading replication slot "${slot}" yet: it is starting or connecting`,
          figures: { active: false, retrying: running.retry !== null, agentPid: running.pid },
          meaning: 'No history is being recorded until it connects, and the slot holds back WAL on the source meanwhile.',
          fix: agentFix,
        });
      } else {
        add({
          check: 'slot_active', status: 'error', message: `nothing is reading replication slot "${slot}": the agent is not running or not connected`,
          figures: { active: false },
          meaning: 'No history is being recorded, and the slot holds back WAL on the source, which grows until the agent returns (or the slot is invalidated and history gets a gap).' +
            (stop !== null ? ` The agent last stopped at ${stop.at}: ${stop.message}` : ''),
          fix: agentFix,
        });
      }

      // WAL retention
      const safe = sr.safe_wal_size === null ? null : BigInt(sr.safe_wal_size);
      const risk = walRisk(sr.wal_status, safe, BigInt(limits.safeWalWarnBytes));
      const walFigures = { walStatus: sr.wal_status, safeWalSizeBytes: safe === null ? null : Number(safe) };
      if (sr.wal_status === 'lost') {
        add({
          check: 'wal_retention', status: 'error', message: `replication slot "${slot}": ${risk}`, figures: walFigures,
          meaning: 'WAL the slot needed was removed (max_slot_wal_keep_size): the changes in it are lost to history, and the slot cannot be used again.',
          fix: restartHistoryFix(nodeId ?? '<node id>', slot, tracked),
        });
      } else if (risk !== null) {
        add({
          check: 'wal_retention', status: sr.wal_status === 'unreserved' ? 'error' : 'warning', message: `replication slot "${slot}": ${risk}`, figures: walFigures,
          meaning: 'When the slot falls further behind, PostgreSQL removes WAL it still needs (max_slot_wal_keep_size) and history gets a gap.',
          fix: 'Get the agent caught up (see slot_active and slot_lag), or raise max_slot_wal_keep_size (ALTER SYSTEM SET max_slot_wal_keep_size = \'...\'; SELECT pg_reload_conf();) if the disk has room.',
        });
      } else {
        add({
          check: 'wal_retention', status: 'ok', figures: walFigures,
          message: safe === null ? `WAL the slot needs is kept (wal_status ${sr.wal_status}, no max_slot_wal_keep_size limit)`
            : `WAL the slot needs is kept (wal_status ${sr.wal_status}; ${formatBytes(Number(safe))} more can be written before it is at risk)`,
        });
      }

      // lag in bytes (the slot) and in time (what the store holds)
      await guard('slot_lag', async () => {
        const lagBytes = sr.lag_bytes === null ? null : Number(sr.lag_bytes);
        let lagSeconds: number | null = null;
        let currentLsn: string;
        let caughtUp = false;
        if (cp !== null) {
          const res = await src.query<{ current: string; caught_up: boolean; age: number }>(
            `SELECT pg_current_wal_lsn()::text AS current, $1::pg_lsn >= pg_current_wal_lsn() AS caught_up,
                    extract(epoch FROM now() - $2::timestamptz)::float8 AS age`,
            [cp.confirmed_lsn, cp.confirmed_ts],
          );
          currentLsn = res.rows[0]!.current;
          caughtUp = res.rows[0]!.caught_up;
          // caught up: history is complete to now, however long ago the last commit was
          lagSeconds = caughtUp ? 0 : Math.max(0, res.rows[0]!.age);
        } else {
          currentLsn = (await src.query<{ current: string }>(`SELECT pg_current_wal_lsn()::text AS current`)).rows[0]!.current;
        }
        const figures = {
          lagBytes, lagSeconds, currentLsn, slotConfirmedLsn: sr.confirmed_flush_lsn,
          storeConfirmedLsn: cp?.confirmed_lsn ?? null, historyCompleteTo: cp?.confirmed_ts ?? null,
        };
        const status = worst(grade(lagBytes, limits.lagWarnBytes, limits.lagErrorBytes), grade(lagSeconds, limits.lagWarnSeconds, limits.lagErrorSeconds));
        const bytesText = lagBytes === null ? 'the slot has confirmed nothing yet' : `the slot is ${formatBytes(lagBytes)} behind the source's WAL (${sr.confirmed_flush_lsn} of ${currentLsn})`;
        const timeText = cp === null ? 'the store has no checkpoint yet'
          : caughtUp ? 'history is complete up to now'
            : `history is complete up to ${cp.confirmed_ts} (${formatDuration(lagSeconds ?? 0)} ago)`;
        if (status === 'ok') {
          add({ check: 'slot_lag', status, message: `${bytesText}; ${timeText}`, figures });
          return;
        }
        add({
          check: 'slot_lag', status, message: `${bytesText}; ${timeText}`, figures,
          meaning: `History lags the source: as-of queries for recent times answer with older data (and warn), and the source keeps the WAL since ${sr.confirmed_flush_lsn} on disk. ` +
            `Limits: warning above ${formatBytes(limits.lagWarnBytes)} or ${formatDuration(limits.lagWarnSeconds)}, error above ${formatBytes(limits.lagErrorBytes)} or ${formatDuration(limits.lagErrorSeconds)}.`,
          fix: sr.active
            ? 'The agent is connected but behind: see its log for errors or slow store writes (health_events below), and check the store\'s load and disk.'
            : agentFix,
        });
      });
    } else {
      for (const check of ['slot_active', 'wal_retention', 'slot_lag']) blocked(check, noSlot);
    }

    // --- the agent's heartbeat and checkpoint (store and slot) ---------------------------------------
    if (storeRead && source !== null) {
      const src = source;
      const cp = checkpoint as Checkpoint | null;
      const active = sr?.active === true;
      if (cp === null) {
        add({
          check: 'heartbeat', status: active ? 'warning' : 'error', message: `the store holds no checkpoint for node "${nodeId}": the agent has never stored progress`,
          meaning: active ? 'The agent has just started, or cannot write to the store.' : 'No agent has recorded anything for this database.',
          fix: active ? 'Wait a few seconds and run doctor again; if it persists, see the agent\'s log.' : agentFix,
        });
      } else {
        await guard('heartbeat', async () => {
          const behind = (await src.query<{ behind: boolean }>(`SELECT $1::pg_lsn < pg_current_wal_lsn() AS behind`, [cp.confirmed_lsn])).rows[0]!.behind;
          const age = cp.age_seconds;
          const figures = { heartbeatAgeSeconds: Math.round(age), storeConfirmedLsn: cp.confirmed_lsn };
          if (age <= limits.heartbeatWarnSeconds || !behind) {
            add({
              check: 'heartbeat', status: 'ok', figures,
              message: behind ? `the agent last stored progress ${formatDuration(age)} ago` : `the agent has stored everything the source has written (last progress ${formatDuration(age)} ago)`,
            });
            return;
          }
          add({
            check: 'heartbeat', status: active ? 'warning' : 'error', figures,
            message: `the agent last stored progress ${formatDuration(age)} ago, while the source has written WAL since (a running agent stores progress at least every 30 s while the source writes WAL)`,
            meaning: active ? 'The agent is connected but not storing progress: it may be stuck on a large transaction, retrying a store error, or blocked on the store.'
              : running !== null ? 'The agent runs but is not connected (see slot_active): nothing is recorded.' : 'The agent is not running: nothing is recorded.',
            fix: active ? 'See the agent\'s log and the health events below.' : agentFix,
          });
        });
        await guard('checkpoint', async () => {
          const res = await src.query<{ current: string; slot_ahead: boolean | null; store_ahead: boolean }>(
            `SELECT pg_current_wal_lsn()::text AS current, $2::pg_lsn > $1::pg_lsn AS slot_ahead,
                    $1::pg_lsn > pg_current_wal_lsn() AS store_ahead`,
            [cp.confirmed_lsn, sr?.confirmed_flush_lsn ?? null],
          );
          const r = res.rows[0]!;
          const figures = { storeConfirmedLsn: cp.confirmed_lsn, slotConfirmedLsn: sr?.confirmed_flush_lsn ?? null, currentLsn: r.current, checkpointSlot: cp.slot_name };
          if (r.store_ahead) {
            add({
              check: 'checkpoint', status: 'error', figures,
              message: `the store's checkpoint ${cp.confirmed_lsn} is ahead of the source's WAL (${r.current})`,
              meaning: 'The store\'s history for this node did not come from this database as it is now: another database uses the same node id, or the source was restored from a backup. New changes would be skipped as already stored.',
              fix: `Make sure node "${nodeId}" is this database's own id (see node). After a restore of the source, history since the backup is not this database's: ` + restartHistoryFix(nodeId ?? '<node id>', slot, tracked),
            });
          } else if (r.slot_ahead) {
            add({
              check: 'checkpoint', status: 'error', figures,
              message: `slot "${slot}" was confirmed up to ${sr?.confirmed_flush_lsn}, past the store's checkpoint ${cp.confirmed_lsn}`,
              meaning: 'The agent confirms only what the store holds, so the slot was advanced by hand or the store was restored from an older backup: the changes in between are missing from history.',
              fix: restartHistoryFix(nodeId ?? '<node id>', slot, tracked),
            });
          } else if (cp.slot_name !== slot) {
            add({
              check: 'checkpoint', status: 'warning', figures,
              message: `the store's checkpoint was written through slot "${cp.slot_name}", but slot "${slot}" is being checked`,
              meaning: 'Two slots for one node: the other one pins WAL, or doctor looks at the wrong one.',
              fix: `Run doctor with --slot ${cp.slot_name}, the slot the agent stores progress through; if slot "${slot}" is one no agent uses, drop it: ` +
                `SELECT pg_drop_replication_slot(${quoteLiteral(slot)});`,
            });
          } else {
            add({
              check: 'checkpoint', status: 'ok', figures,
              message: `the store holds history up to ${cp.confirmed_lsn}; the slot is confirmed up to ${sr?.confirmed_flush_lsn ?? '(no slot)'}, no further; the source's WAL is at ${r.current}`,
            });
          }
        });
      }
    } else {
      const why = noSource ?? noStore ?? { by: 'node', reason: 'the store could not be read for this node' };
      blocked('heartbeat', why);
      blocked('checkpoint', why);
    }

    // --- tracked tables and the publication -----------------------------------------------------
    if (storeRead && source !== null) {
      const src = source;
      await guard('tracked_tables', async () => {
        if (tracked.length === 0) {
          add({ check: 'tracked_tables', status: 'ok', message: 'no tables are tracked yet (pgtimewarp track <table> starts one)' });
          return;
        }
        const res = await src.query<{ schema: string; table: string; exists: boolean; pk: string[] | null; pk_constraint: string | null; now_named: string | null }>(
          `SELECT t.schema, t."table", c.oid IS NOT NULL AS exists,
                  (SELECT quote_ident(k.conname) FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p') AS pk_constraint,
                  (SELECT array_agg(a.attname::text ORDER BY k.ord)
                     FROM pg_catalog.pg_index i
                     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                    WHERE i.indrelid = c.oid AND i.indisprimary) AS pk,
                  (SELECT pg_catalog.format('%I.%I', n2.nspname, c2.relname)
                     FROM pg_catalog.pg_class c2 JOIN pg_catalog.pg_namespace n2 ON n2.oid = c2.relnamespace
                    WHERE c.oid IS NULL AND c2.oid = t.relid AND c2.relkind = 'r') AS now_named
             FROM jsonb_to_recordset($1::jsonb) AS t(schema text, "table" text, relid oid)
             LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema
             LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t."table" AND c.relkind = 'r'`,
          [JSON.stringify(tracked.map((t) => ({ schema: t.schema, table: t.table, relid: t.relid })))],
        );
        // The agent follows the renames the extension logs (pgtimewarp.ddl_log, 0.3 on) as it reads
        // past them.  Whether it has: its checkpoint's time against the rename's (the time its
        // transaction began, so a rename in a transaction still open at a checkpoint looks read).
        const ddlLog = (await src.query<{ exists: boolean; readable: boolean }>(
          `SELECT to_regclass('pgtimewarp.ddl_log') IS NOT NULL AS exists,
                  CASE WHEN to_regclass('pgtimewarp.ddl_log') IS NULL THEN false
                       ELSE has_table_privilege(to_regclass('pgtimewarp.ddl_log'), 'SELECT') END AS readable`,
        )).rows[0]!;
        const confirmedTs = (checkpoint as Checkpoint | null)?.confirmed_ts ?? null;
        const renameState = async (relid: string | null): Promise<'pending' | 'missed' | 'unlogged' | 'unknown'> => {
          if (!ddlLog.readable || relid === null) return 'unknown';
          const r = (await src.query<{ logged: boolean; pending: boolean }>(
            `SELECT l.at IS NOT NULL AS logged, l.at IS NOT NULL AND ($2::timestamptz IS NULL OR $2::timestamptz < l.at) AS pending
               FROM (SELECT max(logged_at) AS at FROM pgtimewarp.ddl_log WHERE relid = $1::oid AND event = 'altered') l`,
            [relid, confirmedTs],
          )).rows[0]!;
          return r.pending ? 'pending' : r.logged ? 'missed' : 'unlogged';
        };
        let problems = 0;
        for (const t of res.rows) {
          const rel = tracked.find((x) => x.schema === t.schema && x.table === t.table)!;
          const name = rel.name;
          const want = rel.pk_columns;
          if (!t.exists && t.now_named !== null) {
            problems++;
            const figures = { table: name, nowNamed: t.now_named };
            const state = await renameState(rel.relid);
            if (state === 'pending') {
              add({
                check: 'tracked_tables', status: 'warning', message: `tracked table ${name} was renamed to ${t.now_named}; the agent has not read that far yet`, figures,
                meaning: 'The agent follows renames: when it reads past this one it records the table under its new name, and its history goes on without a gap. ' +
                  'Lookups find the history under the new name already.',
                fix: 'Nothing to undo: let the agent catch up (see slot_active and slot_lag).',
              });
            } else {
              const why: Record<typeof state, string> = {
                missed: ', and the agent has stored progress past the rename without following it',
                unlogged: ', and the rename was not logged for the agent (is the event trigger pgtimewarp_table_renamed enabled?)',
                unknown: '',
              };
              add({
                check: 'tracked_tables', status: 'error', figures,
                message: `tracked table ${name} was renamed: it is now ${t.now_named}${why[state]}`,
                meaning: 'The store has it under its old name, so changes made under the new name are not recorded: its history has a gap from the rename on, ' +
                  'which lookups do not know of. What was recorded before the rename is valid.',
                fix: `Rename it back: ALTER TABLE ${t.now_named} RENAME TO ${rel.table_sql}; recording goes on from then. ` +
                  'Its history misses the changes made under the new name (from the rename until it is renamed back): a lookup at a time in between may find a row as it was before the rename.' +
                  (!ddlLog.exists ? ' With extension 0.3 or later ("pgtimewarp install" updates it), the agent follows renames.' : ''),
              });
            }
          } else if (!t.exists) {
            problems++;
            add({
              check: 'tracked_tables', status: 'warning', message: `tracked table ${name} no longer exists in the source (dropped)`, figures: { table: name },
              meaning: 'Nothing more is recorded for it; what was recorded stays in the store (pgtimewarp_store.row_versions).',
              fix: 'If it was dropped on purpose, nothing is at risk. If by mistake, restore it from a backup.',
            });
          } else if (t.pk === null) {
            problems++;
            add({
              check: 'tracked_tables', status: 'error', message: `tracked table ${name} has no primary key any more (history is keyed by ${want.join(', ')})`, figures: { table: name },
              meaning: 'Its changes cannot be keyed: the agent cannot record them.',
              fix: `Add the primary key back: ALTER TABLE ${name} ADD PRIMARY KEY (${rel.pk_sql}).`,
            });
          } else if (t.pk.join('\u0000') !== want.join('\u0000')) {
            problems++;
            add({
              check: 'tracked_tables', status: 'error', message: `the primary key of tracked table ${name} is now (${t.pk.join(', ')}); its history is keyed by (${want.join(', ')})`,
              figures: { table: name },
              meaning: 'History queries on the table fail, and new changes cannot be matched to the old keys. The history recorded so far is valid, keyed by the old columns.',
              fix: `Make (${rel.pk_sql}) the primary key again: ALTER TABLE ${name} ${t.pk_constraint !== null ? `DROP CONSTRAINT ${t.pk_constraint}, ` : ''}ADD PRIMARY KEY (${rel.pk_sql}); ` +
                'changes made under the other key are missing from its history. (A history cannot be carried over to another key.)',
            });
          }
        }
        if (problems === 0) {
          add({ check: 'tracked_tables', status: 'ok', message: `${tracked.length} tracked table(s), each present with the primary key its history is keyed by` });
        }
      });
      if (plugin() === 'pgoutput') {
        await guard('publication', async () => {
          const pub = await src.query<{ schema: string; table: string }>(
            `SELECT schemaname AS schema, tablename AS table FROM pg_catalog.pg_publication_tables WHERE pubname = $1`, [PUBLICATION],
          );
          const exists = (await src.query(`SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1`, [PUBLICATION])).rowCount === 1;
          const present = new Set(pub.rows.map((r) => `${r.schema}.${r.table}`));
          // a tracked table dropped or renamed is tracked_tables' finding: it cannot be added under its tracked name
          const found = new Set((await src.query<{ name: string }>(
            `SELECT t.name FROM jsonb_to_recordset($1::jsonb) AS t(name text, schema text, "table" text)
               JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema
               JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t."table" AND c.relkind IN ('r', 'p')`,
            [JSON.stringify(tracked.map((t) => ({ name: t.name, schema: t.schema, table: t.table })))],
          )).rows.map((r) => r.name));
          const missing = tracked.filter((t) => found.has(t.name) && !present.has(`${t.schema}.${t.table}`));
          if (!exists) {
            add({
              check: 'publication', status: tracked.length > 0 ? 'error' : 'warning', message: `publication ${PUBLICATION} does not exist`,
              meaning: 'With pgoutput the agent streams only the tables in this publication: no changes reach it.',
              fix: tracked.length === 0 ? 'Start the agent: it creates the publication.'
                : `Create it with the tracked tables: CREATE PUBLICATION ${quoteIdent(PUBLICATION)}${found.size > 0 ? ` FOR TABLE ${[...found].join(', ')}` : ''}; ` +
                  'their changes made while it was missing were not streamed, so their history misses them: a lookup at a time in between may find a row as it was before. ' +
                  'What was recorded before stays valid.',
            });
          } else if (missing.length > 0) {
            const names = missing.map((t) => t.name);
            add({
              check: 'publication', status: 'error', message: `tracked table(s) not in publication ${PUBLICATION}: ${names.join(', ')}`,
              figures: { tables: names.join(', ') },
              meaning: 'Their changes are not streamed to the agent, so they are missing from history (pgtimewarp_track adds a table inside its own transaction; if that transaction failed after the store had committed, the store lists a table the publication does not have).',
              fix: `Add them back: ALTER PUBLICATION ${quoteIdent(PUBLICATION)} ADD TABLE ${names.join(', ')}; recording goes on from then. ` +
                'The changes made while they were out of the publication were not streamed and cannot be recovered: their history misses them ' +
                '(since they left it, or since tracking began if they were never in it), and a lookup at a time in between may find a row as it was before. ' +
                'What was recorded before they left stays valid.',
            });
          } else {
            add({ check: 'publication', status: 'ok', message: `publication ${PUBLICATION} has every tracked table` });
          }
        });
      }
    } else {
      blocked('tracked_tables', noSource ?? noStore ?? { by: 'node', reason: 'the store could not be read for this node' });
    }

    // --- a transaction the agent stopped at -------------------------------------------------------
    if (storeReady !== null && storeRead && nodeId !== null) {
      const reader = storeReady;
      const node = nodeId;
      await guard('poison_transaction', async () => add(await poisonTransactionFinding(reader, node, agentFix)));
    } else {
      blocked('poison_transaction', noStore ?? { by: 'node', reason: 'the store could not be read for this node' });
    }

    // --- recent health events -----------------------------------------------------------------------
    if (storeReady !== null && storeRead) {
      const s = storeReady.schema;
      await guard('health_events', async () => {
        const res = await storeReady.client.query<{ severity: string; kind: string; n: string; last_at: string; last_message: string }>(
          `SELECT severity, kind, count(*)::text AS n, max(occurred_at)::text AS last_at,
                  (array_agg(message ORDER BY occurred_at DESC))[1] AS last_message
             FROM ${s}.health_events
            WHERE node_id = $1 AND severity IN ('warning', 'error') AND occurred_at > now() - make_interval(hours => $2)
            GROUP BY severity, kind ORDER BY max(occurred_at) DESC`,
          [nodeId, limits.healthEventsHours],
        );
        if (res.rows.length === 0) {
          add({ check: 'health_events', status: 'ok', message: `no warnings or errors recorded by the agent in the last ${limits.healthEventsHours} h` });
          return;
        }
        const summary = res.rows.map((r) => `${r.kind} (${r.severity}) x${r.n}, last at ${r.last_at}: ${r.last_message}`);
        add({
          check: 'health_events', status: 'warning',
          message: `the agent recorded ${res.rows.reduce((n, r) => n + Number(r.n), 0)} warning(s)/error(s) in the last ${limits.healthEventsHours} h: ${summary.join('; ')}`,
          figures: Object.fromEntries(res.rows.map((r) => [r.kind, Number(r.n)])),
          meaning: 'These happened; the checks above say whether they still matter.',
          fix: `Read them in the store: SELECT * FROM pgtimewarp_store.health_events WHERE node_id = ${quoteLiteral(nodeId ?? '')} ORDER BY occurred_at DESC;`,
        });
      });
    } else {
      blocked('health_events', noStore ?? { by: 'node', reason: 'the store could not be read for this node' });
    }

    return { healthy: !findings.some((f) => f.status === 'error'), nodeId, slot, findings };
  } finally {
    await source?.end().catch(() => undefined);
    await storeClient?.end().catch(() => undefined);
  }
}
