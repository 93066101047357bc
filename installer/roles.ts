// The least-privilege roles install creates, and what they may do.
//
//   pgtimewarp_agent  the agent.  On the source server: LOGIN REPLICATION and
//                     nothing else (it streams the slot and reads catalogs,
//                     which PUBLIC may; the installer creates the slot and the
//                     publication).  On the store: reads and writes the store
//                     tables (row versions, the LSN-time map and its trigger's
//                     updates, checkpoints, health events, node registration).
//   pgtimewarp_fdw    the extension's way into the store, used only through
//                     the user mapping of the extension's owner: reads every
//                     store table, and writes just what pgtimewarp_track,
//                     _untrack and _forget write (node registration, tracked
//                     relations, baseline row versions and their count in
//                     relation_stats, forgetting history).
//
// Passwords are random, kept in the config file (0600) and the user mapping,
// and sent to the server only as SCRAM verifiers, so no statement log ever
// holds them.  A role install created carries a comment saying so: that is
// how uninstall knows which roles are its own to drop.

import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';

import type pg from 'pg';

import { quoteIdent, quoteLiteral } from './install-sql.js';

export const AGENT_ROLE = 'pgtimewarp_agent';
export const FDW_ROLE = 'pgtimewarp_fdw';
export const ROLE_MARKER = 'created by pgtimewarp install';
export const STORE_SCHEMA = 'pgtimewarp_store';

export function generatePassword(): string {
  return randomBytes(24).toString('hex');
}

const SCRAM_ITERATIONS = 4096;

function scramKeys(password: string, salt: Buffer, iterations: number): { storedKey: Buffer; serverKey: Buffer } {
  // SASLprep leaves the passwords we generate (hex) unchanged; others are used as given
  const salted = pbkdf2Sync(password, salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  return {
    storedKey: createHash('sha256').update(clientKey).digest(),
    serverKey: createHmac('sha256', salted).update('Server Key').digest(),
  };
}

/** A SCRAM-SHA-256 verifier, as PostgreSQL stores it (CREATE ROLE ... PASSWORD accepts it as is). */
export function scramVerifier(password: string, salt: Buffer = randomBytes(16), iterations = SCRAM_ITERATIONS): string {
  const { storedKey, serverKey } = scramKeys(password, salt, iterations);
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

/** Whether pg_authid.rolpassword (SCRAM or md5) is that of `password`. */
export function passwordMatches(stored: string | null, role: string, password: string): boolean {
  if (stored === null) return false;
  const scram = /^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$/.exec(stored);
  if (scram !== null) {
    const { storedKey, serverKey } = scramKeys(password, Buffer.from(scram[2]!, 'base64'), Number(scram[1]));
    const wantStored = Buffer.from(scram[3]!, 'base64');
    const wantServer = Buffer.from(scram[4]!, 'base64');
    return wantStored.length === storedKey.length && timingSafeEqual(wantStored, storedKey) &&
      wantServer.length === serverKey.length && timingSafeEqual(wantServer, serverKey);
  }
  if (stored.startsWith('md5')) {
    return stored === `md5${createHash('md5').update(password + role).digest('hex')}`;
  }
  return false;
}

export interface RoleSpec {
  name: string;
  password: string;
  replication: boolean;
}

/** What must change for a role to match its spec; empty when nothing. */
export async function roleChanges(c: pg.Client, spec: RoleSpec): Promise<string[]> {
  const row = (await c.query<{ login: boolean; replication: boolean; comment: string | null }>(
    `SELECT rolcanlogin AS login, rolreplication AS replication, pg_catalog.shobj_description(oid, 'pg_authid') AS comment
       FROM pg_catalog.pg_roles WHERE rolname = $1`,
    [spec.name],
  )).rows[0];
  if (row === undefined) return [`create role ${spec.name}`];
  const changes: string[] = [];
  if (!row.login) changes.push(`let ${spec.name} log in`);
  if (spec.replication && !row.replication) changes.push(`give ${spec.name} REPLICATION`);
  if (row.comment !== ROLE_MARKER) changes.push(`mark ${spec.name} as pgtimewarp's`);
  // pg_authid is for superusers; a store admin with only CREATEROLE cannot check, and trusts the config file
  const stored = await c.query<{ rolpassword: string | null }>(`SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1`, [spec.name])
    .then((r) => r.rows[0]?.rolpassword ?? null, () => undefined);
  if (stored !== undefined && !passwordMatches(stored, spec.name, spec.password)) changes.push(`set ${spec.name}'s password`);
  return changes;
}

/** Make the role match its spec; returns what changed. */
export async function ensureRole(c: pg.Client, spec: RoleSpec): Promise<string[]> {
  const changes = await roleChanges(c, spec);
  if (changes.length === 0) return changes;
  const role = quoteIdent(spec.name);
  const verifier = quoteLiteral(scramVerifier(spec.password));
  const exists = !changes[0]!.startsWith('create role');
  const attributes = `LOGIN${spec.replication ? ' REPLICATION' : ''}`;
  if (!exists) {
    await c.query(`CREATE ROLE ${role} ${attributes} PASSWORD ${verifier}`);
  } else {
    await c.query(`ALTER ROLE ${role} ${attributes}${changes.some((x) => x.startsWith('set ')) ? ` PASSWORD ${verifier}` : ''}`);
  }
  await c.query(`COMMENT ON ROLE ${role} IS ${quoteLiteral(ROLE_MARKER)}`);
  return changes;
}

/** Whether a role exists and install created it (so uninstall may drop it). */
export async function isOurRole(c: pg.Client, name: string): Promise<boolean> {
  const r = await c.query<{ comment: string | null }>(
    `SELECT pg_catalog.shobj_description(oid, 'pg_authid') AS comment FROM pg_catalog.pg_roles WHERE rolname = $1`, [name],
  );
  return r.rows[0]?.comment === ROLE_MARKER;
}

export type Privilege = 'SELECT' | 'INSERT' | 'UPDATE' | 'DELETE';

export interface Grant {
  role: string;
  table: string;
  privileges: Privilege[];
}

/**
 * The privileges on the store tables.  The agent writes every table.  The
 * extension (through the FDW role) reads them all and writes what its
 * functions write: pgtimewarp_track registers the node, the table, its
 * baseline and the baseline's count (relation_stats); _untrack closes the
 * table's tracking; _forget deletes the table's history.
 */
export function storeGrants(tables: string[], roles: { agent: string; fdw: string }): Grant[] {
  const fdwWrites: Record<string, Privilege[]> = {
    nodes: ['INSERT'],
    tracked_relations: ['INSERT', 'UPDATE', 'DELETE'],
    row_versions: ['INSERT', 'DELETE'],
    relation_stats: ['INSERT', 'UPDATE', 'DELETE'],
  };
  return tables.flatMap((table) => [
    { role: roles.agent, table, privileges: ['SELECT', 'INSERT', 'UPDATE', 'DELETE'] as Privilege[] },
    { role: roles.fdw, table, privileges: ['SELECT', ...(fdwWrites[table] ?? [])] as Privilege[] },
  ]);
}

/** The tables of the store schema (what migrations created). */
export async function storeTables(c: pg.Client): Promise<string[]> {
  const r = await c.query<{ relname: string }>(
    `SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname`,
    [STORE_SCHEMA],
  );
  return r.rows.map((x) => x.relname);
}

/** The grants (and schema USAGE) still missing; roles that do not exist yet miss everything. */
export async function missingGrants(c: pg.Client, grants: Grant[]): Promise<{ usage: string[]; grants: Grant[] }> {
  const roles = [...new Set(grants.map((g) => g.role))];
  const existing = new Set((await c.query<{ rolname: string }>(
    `SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY($1)`, [roles],
  )).rows.map((r) => r.rolname));
  const usage: string[] = [];
  for (const role of roles) {
    if (!existing.has(role)) {
      usage.push(role);
      continue;
    }
    const r = await c.query<{ ok: boolean }>(`SELECT pg_catalog.has_schema_privilege($1, $2, 'USAGE') AS ok`, [role, STORE_SCHEMA]);
    if (!r.rows[0]!.ok) usage.push(role);
  }
  const missing: Grant[] = [];
  for (const g of grants) {
    if (!existing.has(g.role)) {
      missing.push(g);
      continue;
    }
    const lacking: Privilege[] = [];
    for (const p of g.privileges) {
      const r = await c.query<{ ok: boolean }>(
        `SELECT pg_catalog.has_table_privilege($1, $2, $3) AS ok`, [g.role, `${quoteIdent(STORE_SCHEMA)}.${quoteIdent(g.table)}`, p],
      );
      if (!r.rows[0]!.ok) lacking.push(p);
    }
    if (lacking.length > 0) missing.push({ ...g, privileges: lacking });
  }
  return { usage, grants: missing };
}

export async function applyGrants(c: pg.Client, missing: { usage: string[]; grants: Grant[] }): Promise<void> {
  for (const role of missing.usage) await c.query(`GRANT USAGE ON SCHEMA ${quoteIdent(STORE_SCHEMA)} TO ${quoteIdent(role)}`);
  for (const g of missing.grants) {
    await c.query(`GRANT ${g.privileges.join(', ')} ON ${quoteIdent(STORE_SCHEMA)}.${quoteIdent(g.table)} TO ${quoteIdent(g.role)}`);
  }
}

/** Take back everything granted to `role` in the store schema, so the role can be dropped. */
export async function revokeStoreGrants(c: pg.Client, role: string): Promise<void> {
  await c.query(`REVOKE ALL ON ALL TABLES IN SCHEMA ${quoteIdent(STORE_SCHEMA)} FROM ${quoteIdent(role)}`);
  await c.query(`REVOKE ALL ON SCHEMA ${quoteIdent(STORE_SCHEMA)} FROM ${quoteIdent(role)}`);
}
