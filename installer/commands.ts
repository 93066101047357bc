// pgtimewarp track, untrack, status, asof, diff: commander wiring only.  The
// work is in installer/query.ts, the wording in installer/query-format.ts;
// errors propagate to the one handler in cli.ts, which prints PostgreSQL's
// DETAIL and HINT and exits 1.

import { Option, type Command } from 'commander';

import { formatNotice, type PgNotice } from './output.js';
import { asof, asofTable, diff, status, track, untrack } from './query.js';
import { formatAsof, formatDiff, formatStatus, formatTrack, formatUntrack } from './query-format.js';

const SOURCE_HELP =
  'source database URL (default: $PGTIMEWARP_SOURCE_URL, then the config file "pgtimewarp install" wrote, then PGHOST, PGDATABASE, ...)';
const KEY_HELP = `the row's primary key as a JSON object naming every key column, e.g. '{"id": 42}' or '{"region": "eu", "seq": 7}'`;
const TIME_HELP = 'a timestamptz; without a zone it is read in the server\'s TimeZone, or $PGTZ when set';

/** Notices go to stderr as they arrive, so they show even when a later statement fails. */
function printNotice(notice: PgNotice): void {
  console.error(formatNotice(notice));
}

interface CommonFlags {
  source?: string;
  json?: boolean;
}

function common(command: Command): Command {
  return command
    .option('--source <url>', SOURCE_HELP)
    .option('--json', 'print the result as one JSON document');
}

export function registerQueryCommands(program: Command): void {
  common(
    program
      .command('track')
      .description('start recording the history of a table (SELECT pgtimewarp_track(table)); prints the LSN from which its history is complete')
      .argument('<table>', 'the table, schema-qualified unless on the search_path; it needs a primary key'),
  )
    .addHelpText('after', `
Existing rows are copied as a baseline, so as-of lookups find them right away.
Writers to the table wait while the baseline is copied. Start the agent first:
changes are recorded only from where its replication slot starts.

Example:
  $ pgtimewarp track public.accounts
  tracking public.accounts: its history is complete from LSN 0/1A2B3C4`)
    .action(async (table: string, flags: CommonFlags) => {
      const result = await track({ table, source: flags.source, onNotice: printNotice });
      console.log(formatTrack(result, flags.json === true));
    });

  common(
    program
      .command('untrack')
      .description('stop recording the history of a table (SELECT pgtimewarp_untrack(table)); what was recorded stays queryable')
      .argument('<table>', 'a tracked table'),
  )
    .addHelpText('after', `
To track the table again later, first delete its old history:
SELECT pgtimewarp_forget('<table>') (history with gaps is not modelled).

Example:
  $ pgtimewarp untrack public.accounts`)
    .action(async (table: string, flags: CommonFlags) => {
      const result = await untrack({ table, source: flags.source, onNotice: printNotice });
      console.log(formatUntrack(result, flags.json === true));
    });

  common(
    program
      .command('status')
      .description('list the tracked tables (SELECT * FROM pgtimewarp_status()): since when, how many versions, and how far the agent has applied the WAL'),
  )
    .addHelpText('after', `
Lists the tables this role may SELECT. --json prints an array with one
object per table. For the health of the agent and the slot: pgtimewarp doctor.

The agent's lag: lagBytes is the source's WAL written since the agent's
confirmed LSN. lagSeconds is 0 when the agent has confirmed all the WAL the
source has written, else the time since confirmedTs (the last stored commit
or heartbeat), on the source's clock: an upper bound, since every change not
yet stored was committed after it.

Example:
  $ pgtimewarp status --source postgresql://admin@db1/app`)
    .action(async (flags: CommonFlags) => {
      const result = await status({ source: flags.source, onNotice: printNotice });
      console.log(formatStatus(result, flags.json === true));
    });

  common(
    program
      .command('asof')
      .description('print a row as it was at a time or WAL position, as JSON (pgtimewarp_asof_pk / _lsn); without --key, the whole table, as CSV or JSON lines (pgtimewarp_asof_table / _lsn)')
      .argument('<table>', 'a tracked (or formerly tracked) table')
      .option('--key <json>', `${KEY_HELP}; without it, every row of the table`)
      .addOption(new Option('--at <timestamptz>', TIME_HELP).conflicts('lsn'))
      .addOption(new Option('--lsn <pg_lsn>', 'a WAL position, e.g. 0/1A2B3C4').conflicts('at')),
  )
    .addHelpText('after', `
Exactly one of --at and --lsn. Exits 0 whether or not a row with that key
existed then (it says which). A time later than what the agent has stored
answers with what is known, and PostgreSQL's WARNING (on stderr) says how
far history is complete.

Without --key, every row the table had then, streamed as it is read: CSV
with a header row (COPY's format: NULL is an empty field, an empty string
is ""), or with --json one JSON object per row and line (to_jsonb of the
row), no array around them. Rows come in no particular order.

Examples:
  $ pgtimewarp asof accounts --key '{"id": 42}' --at '2026-11-20 10:42+01'
  {"id": 42, "owner": "alice", "balance": 120.00}
  $ pgtimewarp asof accounts --key '{"id": 42}' --lsn 0/1A2B3C4 --json
  $ pgtimewarp asof accounts --at '2026-11-20 10:42+01' > accounts-1042.csv
  $ pgtimewarp asof accounts --lsn 0/1A2B3C4 --json
  {"id": 42, "owner": "alice", "balance": 120.00}
  {"id": 43, "owner": "bob", "balance": 7.50}`)
    .action(async (table: string, flags: CommonFlags & { key?: string; at?: string; lsn?: string }) => {
      if (flags.at === undefined && flags.lsn === undefined) {
        throw new Error('asof needs a point in history: pass --at <timestamptz> or --lsn <pg_lsn>');
      }
      const point = { at: flags.at, lsn: flags.lsn, source: flags.source, onNotice: printNotice };
      if (flags.key === undefined) {
        await asofTable({ table, ...point, format: flags.json === true ? 'jsonl' : 'csv', out: process.stdout });
        return;
      }
      const result = await asof({ table, key: flags.key, ...point });
      console.log(formatAsof(result, flags.json === true));
    });

  common(
    program
      .command('diff')
      .description('show how a row changed: every version in a time range, oldest first, with its time, operation, and each changed column old -> new (pgtimewarp_diff_pk)')
      .argument('<table>', 'a tracked (or formerly tracked) table')
      .requiredOption('--key <json>', KEY_HELP)
      .option('--from <timestamptz>', `start of the range (default: when tracking of the table began); ${TIME_HELP}`)
      .option('--to <timestamptz>', 'end of the range (default: now)'),
  )
    .addHelpText('after', `
Values are shown as JSON (strings quoted, null as null). The first version in
the range is compared with the one before it, even when that lies before
--from.

Example:
  $ pgtimewarp diff accounts --key '{"id": 42}' --from '2026-11-20 09:00+01'
  public.accounts {"id": 42} from 2026-11-20 08:00:00+00 to 2026-11-20 12:00:00+00: 2 versions

  2026-11-20 08:00:00.512+00  baseline  (LSN 0/1A2B3C4)
      row as it was when tracking began:
        id: 42
        balance: 100.00

  2026-11-20 09:40:13.07+00  update  (LSN 0/1A2C000)
      balance: 100.00 -> 120.00`)
    .action(async (table: string, flags: CommonFlags & { key: string; from?: string; to?: string }) => {
      const result = await diff({ table, key: flags.key, from: flags.from, to: flags.to, source: flags.source, onNotice: printNotice });
      console.log(formatDiff(result, flags.json === true));
    });
}
