// After pg_dump and pg_restore: history belongs to tables by OID, and a
// restore gives every table a new one, so a rerun of install gives the
// history back to the restored tables (pgtimewarp_attach), and only then.
//
// The rule (prereq.ts nodeSource): a database whose pgtimewarp.config names
// the node (it came with the dump; only a superuser can write it) but that
// is not the database the store recorded the node from (another cluster,
// or another database OID) is a restore.  There every live incarnation is
// attached to the table that has its name now, when the primary key is the
// one its history is keyed by; then the store records this database as the
// node's source.  In the recorded database itself nothing is attached: a
// table created under a tracked table's name there was created by someone,
// maybe by anyone with CREATE on the schema.  Those are reported, with the
// SELECT pgtimewarp_attach(...) to run for one the operator knows to be the
// same table.

import type pg from 'pg';

import { quoteLiteral } from './install-sql.js';
import { describeNodeRecord, nodeSource, readNodeRecord, type NodeRecord, type NodeSource, type SourceFacts } from './prereq.js';

/** A live tracked incarnation of the node, and what its name and OID are in the source database now. */
export interface Incarnation {
  relationId: number;
  /** Its schema.table as written in SQL (PostgreSQL's quote_ident, as the extension's messages write it). */
  name: string;
  /** The OID of the table its history was recorded from (after an attach: the one it was attached to). */
  relid: string | null;
  /** The primary key its history is keyed by. */
  pkColumns: string[];
  /** relid names an ordinary table in the source database. */
  relidIsTable: boolean;
  /** The ordinary table that has the incarnation's name now, with its primary key; null when none does. */
  named: { oid: string; pkColumns: string[] } | null;
}

export interface NotAttached {
  /** schema.table as written in SQL. */
  table: string;
  /** Why its history is not attached to the table of its name. */
  reason: string;
  /** What to do about it, ending in the command when there is one. */
  fix: string | null;
  /** What attaches it, once the operator knows it is the same table (and its primary key is right). */
  command: string | null;
}

export interface AttachPlan {
  source: NodeSource;
  /** Incarnations to attach to the table of their name. */
  attach: Array<{ relationId: number; table: string; oid: string }>;
  notAttached: NotAttached[];
  /** The nodes row says another database (or lacks this one's OID): write this one's identity. */
  recordSource: boolean;
}

export function attachCommand(name: string): string {
  return `SELECT pgtimewarp_attach(${quoteLiteral(name)});`;
}

/**
 * What to attach, and what to leave and say.  Pure: unit-tested.  Of the
 * live incarnations under one name, the one pgtimewarp_attach would take is
 * the latest (the extension's fetch_tracking); a name whose table already
 * holds one of them needs nothing.
 */
export function planAttach(source: NodeSource, node: NodeRecord | null, here: Pick<SourceFacts, 'systemIdentifier' | 'database' | 'databaseOid'>, incarnations: Incarnation[]): AttachPlan {
  const plan: AttachPlan = {
    source, attach: [], notAttached: [],
    recordSource: node !== null && (source === 'restored' ||
      (source === 'recorded' && (node.databaseOid !== here.databaseOid || node.databaseName !== here.database))),
  };
  if (source !== 'restored' && source !== 'recorded') return plan;
  const byName = new Map<string, Incarnation[]>();
  for (const i of incarnations) {
    byName.set(i.name, [...(byName.get(i.name) ?? []), i]);
  }
  for (const [name, group] of [...byName].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const named = group[0]!.named;
    if (named !== null && group.some((i) => i.relid === named.oid)) continue; // already that table's
    const latest = group.reduce((a, b) => (b.relationId > a.relationId ? b : a));
    const pkDiffers = named !== null && named.pkColumns.join('\0') !== latest.pkColumns.join('\0');
    const keyedBy = `its history is keyed by (${latest.pkColumns.join(', ')}), the table's primary key is (${named?.pkColumns.join(', ') ?? ''})`;
    const command = attachCommand(name);
    if (source === 'restored') {
      if (named === null) {
        plan.notAttached.push({ table: name, reason: 'no table of that name in this database', fix: null, command: null });
      } else if (pkDiffers) {
        plan.notAttached.push({ table: name, reason: keyedBy, fix: `restore the primary key, then: ${command}`, command });
      } else {
        plan.attach.push({ relationId: latest.relationId, table: name, oid: named.oid });
      }
      continue;
    }
    // the recorded database: a table whose OID is gone, and a table of its name now
    if (named === null || group.some((i) => i.relidIsTable)) continue;
    plan.notAttached.push({
      table: name,
      reason: `its history was recorded from table OID ${latest.relid ?? '(unknown)'}, which no longer exists, ` +
        `and ${name} (OID ${named.oid}) was created under that name since${pkDiffers ? `; ${keyedBy}` : ''}`,
      fix: `if it is that table restored from a dump${pkDiffers ? ', restore the primary key, then' : ''}: ${command}`,
      command,
    });
  }
  return plan;
}

/** One line for the step: what is (or would be) done, and what is left with its command. */
export function describeAttachPlan(plan: AttachPlan, node: NodeRecord | null, here: Pick<SourceFacts, 'database' | 'databaseOid'>, nodeId: string, done: boolean): string {
  const thisDb = `database ${JSON.stringify(here.database)} (OID ${here.databaseOid})`;
  const parts: string[] = [];
  if (plan.source === 'restored') {
    const tables = plan.attach.map((a) => a.table).join(', ');
    parts.push(plan.attach.length === 0
      ? `nothing to attach (restored from a dump of ${describeNodeRecord(node!)})`
      : done
        ? `attached the history of ${tables} to the tables restored under those names`
        : `attach the history of ${tables} to the tables restored under those names (from a dump of ${describeNodeRecord(node!)})`);
    parts.push(done ? `${thisDb} is node ${nodeId}'s source now` : `record ${thisDb} as node ${nodeId}'s source`);
  } else {
    parts.push(plan.recordSource
      ? `${done ? 'recorded' : 'record'} ${thisDb} as node ${nodeId}'s source`
      : `${thisDb} is the one node ${nodeId} was recorded from: nothing restored${plan.notAttached.length > 0 ? ', nothing attached' : ''}`);
  }
  for (const n of plan.notAttached) parts.push(describeNotAttached(n));
  return parts.join('; ');
}

/** "public.notes: its history was recorded from ...; if it is that table restored from a dump: SELECT ..." */
export function describeNotAttached(n: NotAttached): string {
  return `${n.table}: ${n.reason}${n.fix !== null ? `; ${n.fix}` : ''}`;
}

/** The node's live incarnations (store), and what their OIDs and names are in the source database. */
export async function readIncarnations(store: pg.Client, source: pg.Client, nodeId: string): Promise<Incarnation[]> {
  const live = await store.query<{ relation_id: number; schema_name: string; table_name: string; relid: string | null; pk_columns: string[] }>(
    `SELECT relation_id, schema_name, table_name, relid::text AS relid, pk_columns
       FROM pgtimewarp_store.tracked_relations
      WHERE node_id = $1 AND dropped_lsn IS NULL
      ORDER BY relation_id`,
    [nodeId],
  );
  if (live.rows.length === 0) return [];
  const seen = await source.query<{ relation_id: number; name: string; relid_is_table: boolean; named_oid: string | null; named_pk: string[] | null }>(
    `SELECT t.relation_id, pg_catalog.quote_ident(t.schema) || '.' || pg_catalog.quote_ident(t."table") AS name,
            EXISTS (SELECT 1 FROM pg_catalog.pg_class r WHERE r.oid = t.relid AND r.relkind = 'r') AS relid_is_table,
            c.oid::text AS named_oid,
            (SELECT array_agg(a.attname::text ORDER BY k.n)
               FROM pg_catalog.pg_index i
              CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = c.oid AND i.indisprimary) AS named_pk
       FROM jsonb_to_recordset($1::jsonb) AS t(relation_id integer, schema text, "table" text, relid oid)
       LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema
       LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t."table" AND c.relkind = 'r'`,
    [JSON.stringify(live.rows.map((r) => ({ relation_id: r.relation_id, schema: r.schema_name, table: r.table_name, relid: r.relid })))],
  );
  const bySource = new Map(seen.rows.map((r) => [r.relation_id, r]));
  return live.rows.map((r) => {
    const s = bySource.get(r.relation_id)!;
    return {
      relationId: r.relation_id, name: s.name, relid: r.relid, pkColumns: r.pk_columns,
      relidIsTable: s.relid_is_table,
      named: s.named_oid === null ? null : { oid: s.named_oid, pkColumns: s.named_pk ?? [] },
    };
  });
}

/** The plan for this run, read fresh from both databases. */
export async function readAttachPlan(
  store: pg.Client,
  source: pg.Client,
  nodeId: string,
  here: Pick<SourceFacts, 'systemIdentifier' | 'database' | 'databaseOid' | 'configuredNodeId'>,
): Promise<{ plan: AttachPlan; node: NodeRecord | null }> {
  const node = await readNodeRecord(store, nodeId);
  const origin = nodeSource(here, node, nodeId);
  const incarnations = origin === 'restored' || origin === 'recorded' ? await readIncarnations(store, source, nodeId) : [];
  return { plan: planAttach(origin, node, here, incarnations), node };
}

/**
 * Attach as planned, then record this database as the node's source.  A
 * restore into another cluster can give a table the OID an incarnation had
 * there (OIDs are per cluster): an attach to that OID would collide with the
 * stale record in the store's one-live-incarnation-per-OID index, so such
 * stale OIDs are cleared first.  Each attach is pgtimewarp_attach itself, in
 * a transaction of its own; the source is recorded last, so a run that fails
 * part-way attaches the rest on the next.
 */
export async function applyAttachPlan(
  store: pg.Client,
  source: pg.Client,
  nodeId: string,
  plan: AttachPlan,
  here: Pick<SourceFacts, 'systemIdentifier' | 'database' | 'databaseOid'>,
): Promise<void> {
  if (plan.attach.length > 0) {
    await store.query(
      `UPDATE pgtimewarp_store.tracked_relations SET relid = NULL
        WHERE node_id = $1 AND dropped_lsn IS NULL AND relid = ANY ($2::oid[])`,
      [nodeId, plan.attach.map((a) => a.oid)],
    );
    for (const a of plan.attach) await source.query(`SELECT pgtimewarp_attach($1::oid::regclass)`, [a.oid]);
  }
  if (plan.recordSource) {
    await store.query(
      `UPDATE pgtimewarp_store.nodes SET database_name = $2, system_identifier = $3, database_oid = $4 WHERE node_id = $1`,
      [nodeId, here.database, here.systemIdentifier, here.databaseOid],
    );
  }
}
