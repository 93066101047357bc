#!/usr/bin/env node
// pgtimewarp's command line: this module only wires commands to the plain
// functions that do the work, and owns the one error handler that prints a
// clean message and sets the exit code.

import { Command } from 'commander';
import pg from 'pg';

import { migrateStore } from './store.js';

/** Print an error as one clean line (PostgreSQL's fields kept), exit non-zero. */
function fail(err: unknown): never {
  if (err instanceof pg.DatabaseError) {
    const lines = [`pgtimewarp: ${err.severity ?? 'ERROR'}: ${err.message}`];
    if (err.detail) lines.push(`DETAIL: ${err.detail}`);
    if (err.hint) lines.push(`HINT: ${err.hint}`);
    console.error(lines.join('\n'));
  } else {
    console.error(`pgtimewarp: ${err instanceof Error ? err.message : String(err)}`);
  }
  process.exit(1);
}

const program = new Command()
  .name('pgtimewarp')
  .description('Time travel for PostgreSQL tables, from WAL-derived history kept in a separate store.')
  .showHelpAfterError();

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

program.parseAsync(process.argv).catch(fail);
