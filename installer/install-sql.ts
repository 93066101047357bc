// Connection and quoting helpers shared by install and uninstall: how a URL
// (or libpq's PG* variables) becomes a client, another database on the same
// server, or the same server under another role.

import pg from 'pg';
import { parse as parseConnectionString, toClientConfig } from 'pg-connection-string';

/** Quote an identifier for SQL. */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** Quote a string literal for SQL (for the few statements that take no parameters: DDL, ALTER SERVER). */
export function quoteLiteral(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

/** Where a URL (or, when undefined, the PG* variables) leads, as node-postgres resolves it. */
export interface ConnParams {
  host: string;
  port: number;
  database: string;
  user: string;
  password: string | undefined;
}

export function connParams(url: string | undefined): ConnParams {
  const client = new pg.Client(clientConfig(url));
  const password = typeof client.password === 'string' ? client.password : undefined;
  const user = client.user ?? '';
  return { host: client.host, port: client.port, database: client.database ?? user, user, password };
}

/** Client settings for `url`, optionally in another database of the same server. */
export function clientConfig(url: string | undefined, database?: string): pg.ClientConfig {
  if (url === undefined) return database === undefined ? {} : { database };
  if (database === undefined) return { connectionString: url };
  // A connectionString wins over every other field, so parse it and replace the database.
  return { ...toClientConfig(parseConnectionString(url)), database };
}

/** Run `work` with a connected client; always ends it. */
export async function withClient<T>(
  url: string | undefined,
  work: (client: pg.Client) => Promise<T>,
  opts: { database?: string; what?: string } = {},
): Promise<T> {
  const client = new pg.Client(clientConfig(url, opts.database));
  client.on('error', () => undefined); // surfaces through the failing query
  try {
    await client.connect();
  } catch (err) {
    const where = describeTarget(url, opts.database);
    throw new Error(`cannot connect to ${opts.what ?? 'the database'} ${where}: ${errorMessage(err)}`);
  }
  try {
    return await work(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** "db on host:port as user", for messages: never the password. */
export function describeTarget(url: string | undefined, database?: string): string {
  const p = connParams(url);
  return `"${database ?? p.database}" on ${p.host}:${p.port} as ${p.user}`;
}

/**
 * The URL of the same database under other credentials: the agent's URLs
 * are the installer's with the agent role's name and password.  Every other
 * setting (host, port, sslmode, ...) is kept.
 */
export function urlWithCredentials(url: string | undefined, user: string, password: string): string {
  if (url !== undefined && /^postgres(ql)?:\/\//i.test(url)) {
    const u = new URL(url);
    u.searchParams.delete('user');
    u.searchParams.delete('password');
    if (u.host !== '') {
      u.username = encodeURIComponent(user);
      u.password = encodeURIComponent(password);
    } else {
      // postgresql:///db?host=/socket: a URL without a host cannot carry credentials
      u.searchParams.set('user', user);
      u.searchParams.set('password', password);
    }
    return u.toString();
  }
  const p = connParams(url);
  return buildUrl({ ...p, user, password });
}

/** A postgresql:// URL for explicit parameters (unix socket directories as ?host=). */
export function buildUrl(p: ConnParams): string {
  const auth = `${encodeURIComponent(p.user)}${p.password !== undefined ? `:${encodeURIComponent(p.password)}` : ''}`;
  const db = encodeURIComponent(p.database);
  if (p.host.startsWith('/')) {
    return `postgresql://${auth}@/${db}?host=${encodeURIComponent(p.host)}&port=${p.port}`;
  }
  const host = p.host.includes(':') ? `[${p.host}]` : p.host;
  return `postgresql://${auth}@${host}:${p.port}/${db}`;
}

/**
 * A connection string safe to print: every password replaced by "***".
 * URLs carry one as user:password@ or as a password= parameter (what
 * urlWithCredentials writes for a socket host), in any case and maybe
 * percent-encoded; key/value strings as password=.  A URL that cannot be
 * parsed is not printed at all.
 */
export function redactUrl(connectionString: string): string {
  if (!/^postgres(ql)?:\/\//i.test(connectionString)) {
    // libpq's key = value form: a value is a word, or quoted with backslash escapes
    return connectionString.replace(/(^|\s)(password)\s*=\s*('(?:[^'\\]|\\.)*(?:'|$)|\S+)/gi, '$1$2=***');
  }
  try {
    const u = new URL(connectionString);
    if (u.password) u.password = '***';
    const params = [...u.searchParams];
    if (params.some(([key]) => key.toLowerCase() === 'password')) {
      u.search = new URLSearchParams(params.map(([key, value]): [string, string] => [key, key.toLowerCase() === 'password' ? '***' : value])).toString();
    }
    return u.toString();
  } catch {
    return '(unparsable connection string)';
  }
}

/**
 * What makes the server write a statement's text somewhere, and the value
 * that stops it: the statement log, the duration logs (which add the
 * text), the STATEMENT line of a failing one, and pg_stat_statements'
 * query texts (kept verbatim for utility statements such as ALTER USER
 * MAPPING).  Each is for superusers to change (the installer is one on the
 * source).  The ones this server does not have (an older version, no
 * pg_stat_statements) are left out.
 */
const STATEMENT_TEXT_SINKS: Readonly<Record<string, string>> = {
  log_statement: 'none',
  log_min_duration_statement: '-1',
  log_min_duration_sample: '-1',
  log_min_error_statement: 'panic',
  'pg_stat_statements.track_utility': 'off',
};

/**
 * Run one statement that carries a secret (a user mapping's password)
 * without its text reaching the server's log: in a transaction of its own
 * with STATEMENT_TEXT_SINKS off (SET LOCAL), each sent as a query of its
 * own, since a multi-statement query is logged whole before any of it
 * runs.  log_transaction_sample_rate logs every statement of a sampled
 * transaction, and the sample is drawn when the transaction starts: it is
 * off for the session from before BEGIN until after COMMIT.  A failure
 * rolls back; its error (message, detail, hint) does not repeat the
 * statement.
 */
export async function queryUnlogged(c: pg.Client, sql: string): Promise<void> {
  const names = [...Object.keys(STATEMENT_TEXT_SINKS), 'log_transaction_sample_rate'];
  const present = new Set((await c.query<{ name: string }>(
    `SELECT name FROM pg_catalog.pg_settings WHERE name = ANY($1)`, [names],
  )).rows.map((r) => r.name));
  const sampled = present.has('log_transaction_sample_rate');
  if (sampled) await c.query('SET log_transaction_sample_rate = 0');
  try {
    await c.query('BEGIN');
    try {
      for (const [name, value] of Object.entries(STATEMENT_TEXT_SINKS)) {
        if (present.has(name)) await c.query(`SET LOCAL ${name} = ${quoteLiteral(value)}`);
      }
      await c.query(sql);
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
  } finally {
    if (sampled) await c.query('RESET log_transaction_sample_rate').catch(() => undefined);
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof pg.DatabaseError) {
    return [err.message, err.detail ? `DETAIL: ${err.detail}` : '', err.hint ? `HINT: ${err.hint}` : '']
      .filter(Boolean)
      .join(' ');
  }
  return err instanceof Error ? err.message : String(err);
}

/** The SQLSTATE of a PostgreSQL error, or undefined. */
export function sqlState(err: unknown): string | undefined {
  return err instanceof pg.DatabaseError ? err.code : undefined;
}

/** Whether the database at `url` exists: it does when it lets us in (the maintenance databases may not). */
export async function databaseExists(url: string, what: string): Promise<boolean> {
  try {
    await withClient(url, async () => undefined, { what });
    return true;
  } catch (err) {
    if (isMissingDatabase(err)) return false;
    throw err;
  }
}

/**
 * A client on the maintenance database of the server `url` points at (to
 * create or drop a database there): postgres, else template1.
 */
export async function withMaintenanceClient<T>(url: string | undefined, work: (c: pg.Client) => Promise<T>): Promise<T> {
  try {
    return await withClient(url, work, { database: 'postgres', what: 'the store server' });
  } catch (err) {
    if (!/cannot connect/.test(errorMessage(err))) throw err;
    return withClient(url, work, { database: 'template1', what: 'the store server' });
  }
}

/** The error of connecting to a database that does not exist. */
export function isMissingDatabase(err: unknown): boolean {
  if (sqlState(err) === '3D000') return true;
  // withClient wraps connection errors; the server's message survives
  return /database ".*" does not exist/.test(errorMessage(err));
}
