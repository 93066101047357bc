// `pgtimewarp asof <table> --at|--lsn` without --key: the whole table as it
// was, from the real CLI as a child process, against a source and store set
// up as the installer sets them up, with the agent streaming (in process).
// The test records what the table held at points in time, with the same
// COPY ... CSV HEADER and to_jsonb(row) the command's output is made of, and
// the command's output must be exactly that: the header, and the same rows
// (in any order), values as PostgreSQL printed them.  Values carry no
// newlines, so a CSV row is a line.

import { Writable } from 'node:stream';

import type pg from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { asofTable } from '../../installer/query.js';
import { cleanEnv, runCli, type CliResult } from '../support/run-cli.js';
import { setupTimewarp, startAgent, type InProcessAgent, type Timewarp } from '../support/timewarp.js';
import { useCluster } from '../support/use-cluster.js';
import { waitFor } from '../support/wait.js';

// frequent keepalives: the agent's heartbeats keep its checkpoint close behind
const cluster = useCluster({ settings: { wal_sender_timeout: '2s' } });

/** A 41-digit numeric: JSON.parse would round it. */
const HUGE = '1234567890123456789012345678901234567890.5';
/** A table whose schema and name need quoting. */
const QUOTED = '"Sales Dept"."Line Items"';

let timewarp: Timewarp;
let agent: InProcessAgent;
// PGTZ: times print in UTC whatever the machine's zone
const env = cleanEnv({ PGTZ: 'UTC' });

function cli(...args: string[]): Promise<CliResult> {
  return runCli([...args, '--source', timewarp.sourceUrl], env);
}

/** What a table held at one moment, as the command must print it. */
interface Snapshot {
  ts: string;
  lsn: string;
  /** COPY (SELECT * FROM table) TO STDOUT WITH (FORMAT csv, HEADER) */
  csv: string;
  /** to_jsonb(row)::text of each row */
  json: string[];
}

async function copyOut(client: pg.Client, sql: string): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of client.query(copyTo(sql))) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** The table's rows now, and the time and WAL position just after the last commit. */
async function snapshot(source: pg.Client, table: string): Promise<Snapshot> {
  const point = (await source.query<{ ts: string; lsn: string }>(
    `SELECT clock_timestamp()::text AS ts, pg_current_wal_lsn()::text AS lsn`)).rows[0]!;
  const csv = await copyOut(source, `COPY (SELECT * FROM ${table}) TO STDOUT WITH (FORMAT csv, HEADER)`);
  const json = (await source.query<{ j: string }>(`SELECT to_jsonb(t)::text AS j FROM ${table} t`)).rows.map((r) => r.j);
  return { ...point, csv, json };
}

/** CSV text as its header and its rows in a fixed order. */
function csvParts(text: string): { header: string; rows: string[] } {
  expect(text.endsWith('\n'), text).toBe(true);
  const [header, ...rows] = text.slice(0, -1).split('\n');
  return { header: header!, rows: rows.sort() };
}

function jsonLines(text: string): string[] {
  expect(text.endsWith('\n'), text).toBe(true);
  const lines = text.slice(0, -1).split('\n');
  for (const line of lines) expect(() => JSON.parse(line), line).not.toThrow();
  return lines.sort();
}

function expectTable(r: CliResult, expected: Snapshot, format: 'csv' | 'json'): void {
  expect(r.code, r.stderr).toBe(0);
  expect(r.stderr).toBe('');
  if (format === 'csv') {
    expect(csvParts(r.stdout)).toEqual(csvParts(expected.csv));
  } else {
    expect(jsonLines(r.stdout)).toEqual([...expected.json].sort());
  }
}

/** No stack trace, no "Error:" prefix from Node: the handler in cli.ts printed it. */
function expectCleanFailure(r: CliResult): void {
  expect(r.code, r.stderr).toBe(1);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  expect(r.stderr.startsWith('pgtimewarp: ')).toBe(true);
}

let afterBaseline: Snapshot;
let afterChanges: Snapshot;
let quotedBefore: Snapshot;
let bigAfterUpdate: Snapshot;
let itemsCsvHeader: string;

beforeAll(async () => {
  timewarp = await setupTimewarp(cluster());
  const { source } = timewarp;
  await source.query(`CREATE TABLE items (id int PRIMARY KEY, name text, price numeric, huge numeric, note text)`);
  await source.query(`CREATE TABLE other (id int PRIMARY KEY)`);
  await source.query(`CREATE SCHEMA "Sales Dept"`);
  await source.query(`CREATE TABLE ${QUOTED} ("Line No" int PRIMARY KEY, "Qty" int)`);
  // NULL and the empty string, a comma and a quote: CSV tells them apart and quotes them
  await source.query(`INSERT INTO items VALUES
    (1, 'one', 1.50, ${HUGE}, NULL), (2, 'two, "2"', 2, NULL, ''), (3, 'three', 3.000, -1, 'x')`);
  await source.query(`INSERT INTO ${QUOTED} VALUES (1, 10), (2, 20)`);
  await source.query(`CREATE TABLE big (id int PRIMARY KEY, payload text)`);
  await source.query(`INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 5000) g`);
  // the agent first: changes are recorded from where its slot starts
  agent = await startAgent(timewarp, 'pgoutput', { heartbeatIntervalMs: 200 });
  await source.query(`SELECT pgtimewarp_track('items')`);
  await source.query(`SELECT pgtimewarp_track($1)`, [QUOTED]);
  await source.query(`SELECT pgtimewarp_track('big')`);
  await source.query(`UPDATE big SET payload = 'updated' WHERE id % 10 = 0`);
  bigAfterUpdate = await snapshot(source, 'big');
  await source.query(`DELETE FROM big WHERE id > 4000`);

  afterBaseline = await snapshot(source, 'items');
  quotedBefore = await snapshot(source, QUOTED);
  await source.query(`UPDATE items SET price = 2.75, note = 'changed' WHERE id = 1`);
  await source.query(`DELETE FROM items WHERE id = 2`);
  await source.query(`INSERT INTO items VALUES (4, 'four', 4, 4, NULL)`);
  await source.query(`UPDATE ${QUOTED} SET "Qty" = 0`);
  afterChanges = await snapshot(source, 'items');
  // later changes, which neither point may show
  await source.query(`UPDATE items SET name = 'later' WHERE id = 3`);
  await source.query(`INSERT INTO items VALUES (5, 'five', 5, 5, 'later')`);
  const end = (await source.query<{ lsn: string }>(`SELECT pg_current_wal_lsn()::text AS lsn`)).rows[0]!.lsn;
  await waitFor('the agent to store the changes', async () =>
    (await source.query<{ ok: boolean }>(`SELECT bool_and(confirmed_lsn >= $1::pg_lsn) AS ok FROM pgtimewarp_status()`, [end]))
      .rows[0]?.ok === true, 30_000);
  itemsCsvHeader = csvParts(afterBaseline.csv).header;
});

afterAll(async () => {
  await agent?.stop();
  await timewarp?.source.end();
});

describe('pgtimewarp asof <table> without --key: the whole table as it was', () => {
  it('--at: CSV with a header row, the rows the table held then', async () => {
    expect(itemsCsvHeader).toBe('id,name,price,huge,note');
    expectTable(await cli('asof', 'items', '--at', afterBaseline.ts), afterBaseline, 'csv');
    expectTable(await cli('asof', 'items', '--at', afterChanges.ts), afterChanges, 'csv');
  });

  it('--json: one to_jsonb object per row and line, exactly as PostgreSQL prints it', async () => {
    const r = await cli('asof', 'items', '--at', afterBaseline.ts, '--json');
    expectTable(r, afterBaseline, 'json');
    expect(r.stdout).toContain(HUGE);
    expectTable(await cli('asof', 'items', '--at', afterChanges.ts, '--json'), afterChanges, 'json');
  });

  it('--lsn: the same at a WAL position', async () => {
    expectTable(await cli('asof', 'items', '--lsn', afterBaseline.lsn), afterBaseline, 'csv');
    expectTable(await cli('asof', 'items', '--lsn', afterChanges.lsn, '--json'), afterChanges, 'json');
  });

  it('a table whose name needs quoting, named as in SQL', async () => {
    expectTable(await cli('asof', QUOTED, '--at', quotedBefore.ts), quotedBefore, 'csv');
    expectTable(await cli('asof', QUOTED, '--lsn', quotedBefore.lsn, '--json'), quotedBefore, 'json');
  });

  it('a table of many batches, to a reader slower than the server: every row, streamed', async () => {
    /** A reader that takes its time and holds little: the stream must wait for it. */
    const slowReader = (): { out: Writable; text: () => string; waits: () => number } => {
      const chunks: Buffer[] = [];
      let waits = 0;
      const out = new Writable({
        highWaterMark: 4096,
        write(chunk: Buffer, _encoding, done) {
          chunks.push(Buffer.from(chunk));
          setImmediate(done);
        },
      });
      const write = out.write.bind(out);
      out.write = ((chunk: Buffer | string, ...rest: never[]) => {
        const ok = write(chunk, ...rest);
        if (!ok) waits++;
        return ok;
      }) as typeof out.write;
      return { out, text: () => Buffer.concat(chunks).toString('utf8'), waits: () => waits };
    };
    for (const format of ['csv', 'jsonl'] as const) {
      const reader = slowReader();
      const result = await asofTable({
        table: 'big', lsn: bigAfterUpdate.lsn, format, out: reader.out, batchRows: 250, source: timewarp.sourceUrl, env,
      });
      await new Promise<void>((resolve) => reader.out.end(resolve));
      expect(result.rows).toBe(5000);
      expect(reader.waits(), `${format}: the reader was behind at times`).toBeGreaterThan(0);
      if (format === 'csv') expect(csvParts(reader.text())).toEqual(csvParts(bigAfterUpdate.csv));
      else expect(jsonLines(reader.text())).toEqual([...bigAfterUpdate.json].sort());
    }
  });

  it('a time past what the agent has stored: what is known, and PostgreSQL\'s WARNING on stderr', async () => {
    const now = await snapshot(timewarp.source, 'items');
    const r = await cli('asof', 'items', '--at', 'infinity');
    expect(r.code, r.stderr).toBe(0);
    expect(csvParts(r.stdout)).toEqual(csvParts(now.csv));
    expect(r.stderr).toMatch(/^pgtimewarp: WARNING: history of table public\.items is complete only up to .+\n(DETAIL: .+\n)?(HINT: .+\n)?$/);
  });

  it('a table that does not exist: one clean line, exit 1; under --json, a JSON error object', async () => {
    const r = await cli('asof', 'nope', '--at', afterBaseline.ts);
    expectCleanFailure(r);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(
      'pgtimewarp: table nope does not exist in database "source": name it as in SQL, schema-qualified unless its schema is on the search_path\n',
    );

    const json = await cli('asof', 'nope', '--lsn', afterBaseline.lsn, '--json');
    expectCleanFailure(json);
    expect(JSON.parse(json.stdout)).toEqual({
      ok: false, command: 'asof',
      error: { message: 'table nope does not exist in database "source": name it as in SQL, schema-qualified unless its schema is on the search_path' },
    });
  });

  it('an untracked table: the extension\'s error with its DETAIL and HINT, exit 1', async () => {
    const r = await cli('asof', 'other', '--at', afterBaseline.ts);
    expectCleanFailure(r);
    // COPY may have sent the header before the error
    expect(r.stdout).toMatch(/^(id\n)?$/);
    expect(r.stderr).toMatch(/^pgtimewarp: ERROR: table public\.other is not tracked by pgtimewarp\nDETAIL: .+\nHINT: .*pgtimewarp_track\('public\.other'\).*\n$/);

    const json = await cli('asof', 'other', '--at', afterBaseline.ts, '--json');
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({
      ok: false, command: 'asof',
      error: { message: 'table public.other is not tracked by pgtimewarp', severity: 'ERROR', hint: expect.stringMatching(/pgtimewarp_track/) },
    });
  });

  it('no point in history: says to give one, exit 1', async () => {
    const r = await cli('asof', 'items');
    expectCleanFailure(r);
    expect(r.stderr).toBe('pgtimewarp: asof needs a point in history: pass --at <timestamptz> or --lsn <pg_lsn>\n');
  });

  it('--help explains the whole-table form with examples', async () => {
    const r = await runCli(['asof', '--help']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/--key <json> .+without it, every row of the table/s);
    expect(r.stdout).toContain('Without --key, every row the table had then');
    expect(r.stdout).toContain('$ pgtimewarp asof accounts --at ');
    expect(r.stdout).toContain('$ pgtimewarp asof accounts --lsn 0/1A2B3C4 --json');
  });
});
