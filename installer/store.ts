// The store database's schema: migrations/ applied with postgres-migrations.

import pg from 'pg';
import { migrate } from 'postgres-migrations';

import { redactUrl } from './install-sql.js';
import { migrationsDir } from './paths.js';

/**
 * postgres-migrations applies its own bookkeeping migration (id 0, which
 * creates the `migrations` table) before ours; it is not part of the store
 * schema, so it is left out of what migrateStore() reports.
 */
const BOOKKEEPING_MIGRATION_ID = 0;

/**
 * Bring the store database at `connectionString` up to the current schema.
 * Safe to run repeatedly: migrations already applied are skipped (and a
 * changed migration file is an error, never silently re-run).
 *
 * @returns the file names of the migrations applied by this call, oldest
 *   first, e.g. ["1_create_store.sql"]; empty when the store was current.
 */
export async function migrateStore(connectionString: string): Promise<string[]> {
  const client = new pg.Client({ connectionString });
  try {
    await client.connect();
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`could not connect to the store database ${redactUrl(connectionString)}: ${reason}`);
  }
  try {
    const applied = await migrate({ client }, migrationsDir);
    return applied
      .filter((migration) => migration.id !== BOOKKEEPING_MIGRATION_ID)
      .map((migration) => migration.fileName);
  } finally {
    await client.end();
  }
}
