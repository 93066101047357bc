// Naming a database connection in messages, for the query commands and
// doctor: a user who reads "could not connect" needs to know which setting
// to fix, so the message says where the URL came from (never its password).

import { configPath, type InstalledConfig } from './config.js';
import { redactUrl } from './install-sql.js';

/**
 * The source or store URL as the user gave it, redacted, and which of
 * flag, PGTIMEWARP_* variable, config file or PG* variables it came from,
 * in the order resolveConnections() looks.
 */
export function describeConnection(
  kind: 'source' | 'store',
  flag: string | undefined,
  env: NodeJS.ProcessEnv,
  config: InstalledConfig | null,
): string {
  const variable = kind === 'source' ? 'PGTIMEWARP_SOURCE_URL' : 'PGTIMEWARP_STORE_URL';
  if (flag !== undefined) return `${redactUrl(flag)} (from --${kind})`;
  const fromEnv = env[variable];
  if (fromEnv !== undefined) return `${redactUrl(fromEnv)} (from ${variable})`;
  if (config !== null) {
    const url = kind === 'source' ? config.sourceUrl : config.storeUrl;
    return `${redactUrl(url)} (from the config file ${configPath(env)})`;
  }
  const pgVars = ['PGHOST', 'PGPORT', 'PGDATABASE', 'PGUSER'].filter((v) => env[v]).map((v) => `${v}=${env[v]}`);
  return `named by the PG* environment variables (${pgVars.join(', ') || 'none set: libpq defaults'})`;
}

// quoting for SQL printed as a fix: the installer's own, one way for all
export { quoteIdent, quoteLiteral } from './install-sql.js';
