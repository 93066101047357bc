// Renames and drops of tracked tables, as the extension's DDL log tells them.
//
// History belongs to a table, not to its name (migrations/3_safe_history.sql).
// The stream names tables as they were named at each change, so when a
// tracked table is renamed (ALTER TABLE ... RENAME / SET SCHEMA, ALTER SCHEMA
// ... RENAME), the agent must learn the new name exactly where the stream
// starts using it, and when it is dropped, that a later table of the same
// name is another table.  The extension's event triggers log every such
// command in pgtimewarp.ddl_log, as the extension's owner, in the command's
// transaction, and emit a "pgtimewarp" message {"action": "ddl", "first",
// "last"} there.  The message only says where to look: anyone may emit one,
// so the agent reads the rows through pgtimewarp_ddl_events(), which returns
// only those written by the transaction the message came in.

import type pg from 'pg';

import type { Lsn } from './decode.js';
import { quoteIdentifier } from './replication.js';

/**
 * A name a tracked incarnation took in a transaction the store does not
 * have yet: changes under it, in transactions committing at or after
 * fromLsn, are that incarnation's.
 */
export interface RenameAlias {
  relationId: number;
  schema: string;
  table: string;
  fromLsn: Lsn;
  /** Columns renamed there, for a renamed primary key column's values to be found. */
  renamedColumns?: Array<{ old: string; new: string }>;
}

/** What the DDL log says happened to one table, in the transaction being decoded. */
export interface DdlEvent {
  /** The table's OID. */
  relid: number;
  /** 'altered': the table is named schema.table after the command; 'dropped': it is gone. */
  event: 'altered' | 'dropped';
  schema: string;
  table: string;
  /** attnum -> name after the command ('altered'). */
  columns: Record<string, string> | null;
}

/**
 * The DDL log rows first..last written by transaction `xid` (the stream's
 * 32-bit xid).  None when the message was not the extension's: a forged
 * message names rows of another transaction, or none.
 */
export async function verifiedDdlEvents(source: pg.Client, first: number, last: number, xid: number): Promise<DdlEvent[]> {
  const schema = await extensionSchema(source);
  if (schema === null) return [];
  const res = await source.query<{ relid: number; event: 'altered' | 'dropped'; schema_name: string; table_name: string; columns: Record<string, string> | null }>(
    `SELECT relid::bigint AS relid, event, schema_name, table_name, columns
       FROM ${quoteIdentifier(schema)}.pgtimewarp_ddl_events($1, $2, $3)`,
    [first, last, xid],
  );
  return res.rows.map((r) => ({ relid: Number(r.relid), event: r.event, schema: r.schema_name, table: r.table_name, columns: r.columns }));
}

const schemas = new WeakMap<pg.Client, string | null>();

/** The schema the extension's functions are in, or null without the extension (or before 0.3). */
async function extensionSchema(source: pg.Client): Promise<string | null> {
  if (schemas.has(source)) return schemas.get(source)!;
  const res = await source.query<{ nspname: string }>(
    `SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
      WHERE e.extname = 'pgtimewarp'
        AND EXISTS (SELECT 1 FROM pg_catalog.pg_proc p WHERE p.proname = 'pgtimewarp_ddl_events' AND p.pronamespace = n.oid)`,
  );
  const schema = res.rows[0]?.nspname ?? null;
  schemas.set(source, schema);
  return schema;
}
