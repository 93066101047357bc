// agent/pgoutput.ts against the bytes PostgreSQL really sends.
//
// A workload covering DESIGN.md's hard cases for the decoder (unchanged
// TOAST, primary key change, key-only DELETE, TRUNCATE, logical messages,
// rollback, every awkward type) is read back with
// pg_logical_slot_get_binary_changes(), one pgoutput message per row, and
// the decoded sequence is compared exactly.  Then the same decoder reads a
// live stream from agent/replication.ts.
//
// Which LSN is which (checked below against pg_walinspect):
//   BEGIN.finalLsn == COMMIT.commitLsn == start of the commit record
//   COMMIT.endLsn  == end of the commit record
//                  == the lsn column of the COMMIT row of
//                     pg_logical_slot_get_binary_changes()
//                  == walStart of the COMMIT's XLogData on a stream
// Other rows' lsn: a change's or message's own record; RELATION and TYPE
// rows carry the lsn of the change they precede.
//
// The database's defaults are deliberately not canonical (TimeZone,
// DateStyle, extra_float_digits, bytea_output): the expected text below is
// only what comes out under agent/key.ts's canonical settings.

import { createHash } from 'node:crypto';

import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  lsnFromText,
  lsnToText,
  UNCHANGED_TOAST,
  type DecodedMessage,
  type Lsn,
  type RowImage,
} from '../../agent/decode.js';
import { canonicalOptions } from '../../agent/key.js';
import { PgoutputDecodeError, PgoutputDecoder } from '../../agent/pgoutput.js';
import { ReplicationStream, type XLogData } from '../../agent/replication.js';
import { waitFor } from '../support/wait.js';
import { useCluster } from '../support/use-cluster.js';

// track_commit_timestamp: to check decoded commit times to the microsecond.
const cluster = useCluster({ settings: { track_commit_timestamp: 'on' } });

const DB = 'app';
const PGOUTPUT_OPTIONS = { proto_version: '1', publication_names: 'pub', messages: 'true' };

/** Over 8 kB and incompressible enough to be stored out of line. */
const DOC = Array.from({ length: 400 }, (_, i) => createHash('md5').update(String(i + 1)).digest('hex')).join('');

/** A client on DB whose session prints values canonically. */
let canonical: pg.Client;
/** A client on DB with the database's (non-canonical) defaults, for the workload. */
let work: pg.Client;
let moodOid: number;

beforeAll(async () => {
  await cluster().psql(`CREATE DATABASE ${DB}`);
  for (const setting of [
    `TimeZone = 'America/New_York'`,
    `DateStyle = 'SQL, DMY'`,
    `extra_float_digits = 0`,
    `bytea_output = 'escape'`,
  ]) {
    await cluster().psql(`ALTER DATABASE ${DB} SET ${setting}`);
  }
  work = await cluster().connect(DB);
  await work.query(`
    CREATE EXTENSION pg_walinspect;
    CREATE TYPE mood AS ENUM ('calm', '😀 glad');
    CREATE TABLE items (
      id bigint PRIMARY KEY, label text, amount numeric, big bigint, f float8,
      raw bytea, tags text[], at timestamptz, m mood, doc text);
    ALTER TABLE items ALTER COLUMN doc SET STORAGE EXTENDED;
    CREATE PUBLICATION pub FOR TABLE items;
    SELECT pg_replication_origin_create('elsewhere');
  `);
  const { rows } = await work.query<{ oid: number }>(`SELECT 'mood'::regtype::oid AS oid`);
  moodOid = rows[0]!.oid;
  canonical = new pg.Client({ connectionString: cluster().url(DB), options: canonicalOptions() });
  await canonical.connect();
});

afterAll(async () => {
  await canonical?.end();
  await work?.end();
});

// ---------------------------------------------------------------------------
// expected values

const ROW_1 = {
  id: '1',
  label: 'Zürich ✓ 😀 日本',
  amount: '1234567890123456789012345678901234.567890',
  big: '9007199254740993',
  f: 'NaN',
  raw: '\\x00ff10',
  tags: '{a,"b c","\\"q\\"",NULL}',
  at: '2024-02-29 07:04:56.789012+00',
  m: '😀 glad',
  doc: DOC,
};
const NULLS = { label: null, amount: null, big: null, f: null, raw: null, tags: null, at: null, m: null, doc: null };
const ROW_2 = { ...NULLS, id: '2', big: '-9223372036854775808', f: 'Infinity' };

/** The origin's commit timestamp given to pg_replication_origin_xact_setup(), in Unix microseconds. */
const ORIGIN_COMMIT_TIME = '2001-02-03 04:05:06.789012+00';
const ORIGIN_COMMIT_MICROS = 981_173_106_789_012n;

function columns(): { name: string; typeOid: number; isKey: boolean }[] {
  const types: [string, number][] = [
    ['id', 20], ['label', 25], ['amount', 1700], ['big', 20], ['f', 701],
    ['raw', 17], ['tags', 1009], ['at', 1184], ['m', moodOid], ['doc', 25],
  ];
  return types.map(([name, typeOid]) => ({ name, typeOid, isKey: name === 'id' }));
}

// ---------------------------------------------------------------------------
// helpers

type Row = Record<string, string | null | typeof UNCHANGED_TOAST>;

function plain(row: RowImage | null): Row | null {
  return row === null ? null : Object.fromEntries(row);
}

/** A decoded message as plain data, for toEqual(). */
function summarize(m: DecodedMessage): Record<string, unknown> {
  switch (m.type) {
    case 'begin':
    case 'commit':
      return { type: m.type };
    case 'relation':
      return { type: m.type, table: `${m.relation.schema}.${m.relation.table}`, columns: m.relation.columns };
    case 'insert':
      return { type: m.type, table: m.relation.table, newRow: plain(m.newRow) };
    case 'update':
      return { type: m.type, table: m.relation.table, oldRow: plain(m.oldRow), newRow: plain(m.newRow) };
    case 'delete':
      return { type: m.type, table: m.relation.table, oldRow: plain(m.oldRow) };
    case 'truncate':
      return { type: m.type, tables: m.relations.map((r) => r.table) };
    case 'message':
      return { type: m.type, transactional: m.transactional, prefix: m.prefix, content: m.content };
  }
}

type Begin = Extract<DecodedMessage, { type: 'begin' }>;
type Commit = Extract<DecodedMessage, { type: 'commit' }>;

interface SlotRow {
  lsn: Lsn;
  xid: string;
  data: Buffer;
}


/** Check one transaction's LSNs and commit time against the WAL and commit_ts. */
async function checkCommit(begin: Begin, commit: Commit, xid: string, expectedMicros?: bigint): Promise<void> {
  expect(begin.finalLsn, 'BEGIN finalLsn == COMMIT commitLsn').toBe(commit.commitLsn);
  expect(String(begin.xid)).toBe(xid);
  const { rows } = await canonical.query<{ end_lsn: string; xid: string; resource_manager: string; record_type: string; micros: string }>(
    `SELECT end_lsn::text, xid::text, resource_manager, record_type,
            (extract(epoch FROM pg_xact_commit_timestamp($2::text::xid)) * 1000000)::bigint::text AS micros
       FROM pg_get_wal_record_info($1::text::pg_lsn)`,
    [lsnToText(commit.commitLsn), xid],
  );
  expect(rows[0], `the WAL record at commitLsn of xid ${xid}`).toMatchObject({
    resource_manager: 'Transaction',
    record_type: 'COMMIT',
    xid,
  });
  expect(lsnFromText(rows[0]!.end_lsn), 'COMMIT endLsn == end of the commit record').toBe(commit.endLsn);
  const micros = BigInt(rows[0]!.micros);
  expect(begin.commitTimeMicros).toBe(micros);
  expect(commit.commitTimeMicros).toBe(micros);
  if (expectedMicros !== undefined) expect(micros).toBe(expectedMicros);
  expect(commit.commitTime.getTime()).toBe(Number(micros / 1000n));
  expect(begin.commitTime.getTime()).toBe(Number(micros / 1000n));
}

// ---------------------------------------------------------------------------

describe('PgoutputDecoder', () => {
  let slotRows: SlotRow[] = [];

  it('decodes a workload from pg_logical_slot_get_binary_changes exactly', async () => {
    await work.query(`SELECT pg_create_logical_replication_slot('decode', 'pgoutput')`);

    await work.query(
      `INSERT INTO items VALUES
         (1, 'Zürich ✓ 😀 日本', 1234567890123456789012345678901234.567890, 9007199254740993, 'NaN',
          '\\x00ff10', ARRAY['a', 'b c', '"q"', NULL], '2024-02-29 12:34:56.789012+05:30', '😀 glad', $1),
         (2, NULL, NULL, -9223372036854775808, 'Infinity', NULL, NULL, NULL, NULL, NULL)`,
      [DOC],
    );
    await work.query(`UPDATE items SET label = 'two' WHERE id = 2`); // non-key column, no TOAST
    await work.query(`UPDATE items SET label = 'renamed' WHERE id = 1`); // doc stays TOASTed and unchanged
    await work.query(`UPDATE items SET id = 10 WHERE id = 1`); // key change
    await work.query(`DELETE FROM items WHERE id = 2`); // REPLICA IDENTITY DEFAULT: key only
    await work.query(`BEGIN`);
    await work.query(`SELECT pg_logical_emit_message(true, 'pgtimewarp', '{"track": "public.items"}')`);
    await work.query(`INSERT INTO items (id, f) VALUES (3, '-Infinity')`);
    await work.query(`COMMIT`);
    await work.query(`SELECT pg_logical_emit_message(false, 'pgtimewarp', 'hello ✓')`);
    await work.query(`BEGIN`);
    await work.query(`INSERT INTO items (id, label) VALUES (99, 'rolled back')`);
    await work.query(`ROLLBACK`);
    const origin = await cluster().connect(DB);
    try {
      await origin.query(`SELECT pg_replication_origin_session_setup('elsewhere')`);
      await origin.query(`BEGIN`);
      await origin.query(`SELECT pg_replication_origin_xact_setup('0/12345', $1)`, [ORIGIN_COMMIT_TIME]);
      await origin.query(`INSERT INTO items (id, f) VALUES (4, 0.1::float8 + 0.2::float8)`);
      await origin.query(`COMMIT`);
    } finally {
      await origin.end();
    }
    await work.query(`TRUNCATE items`);

    const { rows } = await canonical.query<{ lsn: string; xid: string; data: Buffer }>(
      `SELECT lsn::text, xid::text, data FROM pg_logical_slot_get_binary_changes('decode', NULL, NULL,
         'proto_version', '1', 'publication_names', 'pub', 'messages', 'true')`,
    );
    slotRows = rows.map((r) => ({ lsn: lsnFromText(r.lsn), xid: r.xid, data: r.data }));

    // One pgoutput message per row: its type byte, and decode() consumes
    // every byte of it (it throws on trailing bytes).
    expect(slotRows.map((r) => String.fromCharCode(r.data[0]!)).join(' ')).toBe(
      [
        'B Y R I I C', // insert two rows; TYPE for the enum, then RELATION
        'B U C', // update a non-key column
        'B U C', // update with the TOASTed column unchanged
        'B U C', // key change
        'B D C', // delete
        'B M I C', // transactional message
        'M', // non-transactional message; the rollback left nothing
        'B O I C', // from a replication origin
        'B Y R T C', // truncate; its relcache invalidation re-sends TYPE and RELATION
      ].join(' '),
    );

    const decoder = new PgoutputDecoder();
    const decoded = slotRows.map((r) => decoder.decode(r.data));
    slotRows.forEach((r, i) => {
      const type = String.fromCharCode(r.data[0]!);
      expect(decoded[i]!.length, `messages decoded from row ${i} (${type})`).toBe(type === 'Y' || type === 'O' ? 0 : 1);
    });

    const relation = { type: 'relation', table: 'public.items', columns: columns() };
    const renamed = { ...ROW_1, label: 'renamed', doc: UNCHANGED_TOAST };
    expect(decoded.flat().map(summarize)).toEqual([
      { type: 'begin' },
      relation,
      { type: 'insert', table: 'items', newRow: ROW_1 },
      { type: 'insert', table: 'items', newRow: ROW_2 },
      { type: 'commit' },

      { type: 'begin' },
      { type: 'update', table: 'items', oldRow: null, newRow: { ...ROW_2, label: 'two' } },
      { type: 'commit' },

      { type: 'begin' },
      { type: 'update', table: 'items', oldRow: null, newRow: renamed },
      { type: 'commit' },

      { type: 'begin' },
      { type: 'update', table: 'items', oldRow: { id: '1' }, newRow: { ...renamed, id: '10' } },
      { type: 'commit' },

      { type: 'begin' },
      { type: 'delete', table: 'items', oldRow: { id: '2' } },
      { type: 'commit' },

      { type: 'begin' },
      { type: 'message', transactional: true, prefix: 'pgtimewarp', content: '{"track": "public.items"}' },
      { type: 'insert', table: 'items', newRow: { ...NULLS, id: '3', f: '-Infinity' } },
      { type: 'commit' },

      { type: 'message', transactional: false, prefix: 'pgtimewarp', content: 'hello ✓' },

      { type: 'begin' },
      { type: 'insert', table: 'items', newRow: { ...NULLS, id: '4', f: '0.30000000000000004' } },
      { type: 'commit' },

      { type: 'begin' },
      relation,
      { type: 'truncate', tables: ['items'] },
      { type: 'commit' },
    ]);

    // LSNs, xids and commit times, transaction by transaction.
    let begin: { message: Begin; row: SlotRow } | null = null;
    let fromOrigin = false;
    let commits = 0;
    for (const [i, row] of slotRows.entries()) {
      const message = decoded[i]![0];
      if (row.data[0] === 0x4f /* O */) fromOrigin = true;
      if (message?.type === 'begin') {
        expect(begin, 'BEGIN inside a transaction').toBeNull();
        begin = { message, row };
      } else if (message?.type === 'commit') {
        expect(begin, 'COMMIT without BEGIN').not.toBeNull();
        expect(row.lsn, 'COMMIT row lsn == endLsn').toBe(message.endLsn);
        expect(message.commitLsn).toBeLessThan(message.endLsn);
        // A transaction from a replication origin carries the origin's commit time.
        await checkCommit(begin!.message, message, row.xid, fromOrigin ? ORIGIN_COMMIT_MICROS : undefined);
        begin = null;
        fromOrigin = false;
        commits++;
      } else if (begin !== null) {
        expect(row.xid, `row ${i} belongs to the transaction`).toBe(begin.row.xid);
        expect(row.lsn).toBeGreaterThanOrEqual(begin.row.lsn);
        expect(row.lsn).toBeLessThan(begin.message.finalLsn);
      } else {
        expect(message?.type, `row ${i} outside a transaction`).toBe('message');
      }
      if (message?.type === 'message') expect(message.lsn, 'MESSAGE lsn == row lsn').toBe(row.lsn);
    }
    expect(commits).toBe(8);
    expect(begin).toBeNull();
    const originBegin = decoded[slotRows.findIndex((r) => r.data[0] === 0x4f /* O */) - 1]![0] as Begin;
    expect(originBegin.commitTimeMicros).toBe(ORIGIN_COMMIT_MICROS);
    expect(originBegin.commitTime.toISOString()).toBe('2001-02-03T04:05:06.789Z');
  });

  it('names the message type and byte offset when a buffer is truncated or malformed', () => {
    expect(slotRows.length).toBeGreaterThan(0);
    const decoder = new PgoutputDecoder();
    for (const row of slotRows) decoder.decode(row.data); // learn the relations

    const failure = (payload: Buffer, d = decoder): PgoutputDecodeError => {
      try {
        d.decode(payload);
      } catch (err) {
        if (err instanceof PgoutputDecodeError) return err;
        throw err;
      }
      throw new Error(`decoded ${payload.toString('hex')} without an error`);
    };

    // Every proper prefix of every real message is an error naming its type.
    for (const row of slotRows) {
      const type = String.fromCharCode(row.data[0]!);
      const step = row.data.length > 400 ? 97 : 1;
      for (let cut = 1; cut < row.data.length; cut += step) {
        const err = failure(row.data.subarray(0, cut));
        expect(err.messageType).toBe(type);
        expect(err.message).toMatch(/truncated/);
        expect(err.message).toContain(`(type '${type}' 0x`);
        expect(err.offset).toBeLessThanOrEqual(cut);
        expect(err.message).toContain(`at byte offset ${err.offset} of ${cut}`);
      }
      const trailing = failure(Buffer.concat([row.data, Buffer.from([0])]));
      expect(trailing.message).toContain(`1 unexpected trailing bytes at byte offset ${row.data.length}`);
    }

    const insert = slotRows.find((r) => r.data[0] === 0x49)!.data;
    expect(failure(insert.subarray(0, 3)).message).toBe(
      "pgoutput INSERT message (type 'I' 0x49): truncated: relation OID needs 4 bytes, 2 left at byte offset 1 of 3",
    );
    expect(failure(Buffer.from('Zxyz')).message).toBe(
      "pgoutput unknown message (type 'Z' 0x5a): unsupported message type; this decoder reads pgoutput protocol version 1 at byte offset 0 of 4",
    );
    expect(failure(Buffer.from('S\0\0\0\x01\x01')).message).toContain('STREAM START (protocol version 2)');
    expect(failure(Buffer.alloc(0)).message).toBe('pgoutput message: empty payload at byte offset 0 of 0');
    // A change for a relation the stream has not described.
    expect(failure(insert, new PgoutputDecoder()).message).toMatch(
      /^pgoutput INSERT message \(type 'I' 0x49\): relation OID \d+ was not announced by a RELATION message at byte offset 1 of/,
    );
    // A binary value (the binary option is not used).
    const binary = Buffer.from(insert);
    const firstKind = 1 + 4 + 1 + 2;
    expect(String.fromCharCode(binary[firstKind]!)).toBe('t');
    binary[firstKind] = 0x62; // 'b'
    expect(failure(binary).message).toContain(`binary value for column "id"`);
  });

  it('decodes a live stream from ReplicationStream, printed under the canonical settings', async () => {
    await work.query(`SELECT pg_create_logical_replication_slot('live', 'pgoutput')`);
    // The URL's own parameters are kept, but the canonical settings win
    // over its options.
    const url = new URL(cluster().url(DB));
    url.searchParams.set('options', '-c TimeZone=Asia/Tokyo');
    url.searchParams.set('application_name', 'live_test');
    const stream = await ReplicationStream.start({
      connectionString: url.toString(),
      slot: 'live',
      startLsn: 0n,
      plugin: 'pgoutput',
      pluginOptions: PGOUTPUT_OPTIONS,
    });
    try {
      await work.query('BEGIN');
      await work.query(`SELECT pg_logical_emit_message(true, 'pgtimewarp', '{"live": true}')`);
      await work.query(
        `INSERT INTO items (id, label, amount, f, raw, at, m, tags)
         VALUES (7, 'live ✓', 0.1, 0.1::float8 + 0.2::float8, '\\xdeadbeef', '2024-06-30 23:59:59.999999-07', 'calm', '{}')`,
      );
      const { rows } = await work.query<{ xid: string }>('SELECT pg_current_xact_id()::text AS xid');
      await work.query('COMMIT');

      const decoder = new PgoutputDecoder();
      const received: { data: XLogData; messages: DecodedMessage[] }[] = [];
      for (;;) {
        const message = await stream.read();
        if (message === null) throw new Error('stream ended');
        if (message.type !== 'xlogdata') continue;
        const messages = decoder.decode(message.payload);
        received.push({ data: message, messages });
        if (messages[0]?.type === 'commit') break;
      }
      const decoded = received.flatMap((r) => r.messages);
      expect(decoded.map(summarize)).toEqual([
        { type: 'begin' },
        { type: 'message', transactional: true, prefix: 'pgtimewarp', content: '{"live": true}' },
        { type: 'relation', table: 'public.items', columns: columns() },
        {
          type: 'insert',
          table: 'items',
          newRow: {
            ...NULLS,
            id: '7',
            label: 'live ✓',
            amount: '0.1',
            f: '0.30000000000000004', // extra_float_digits 3, not the database's 0
            raw: '\\xdeadbeef', // bytea_output hex, not escape
            at: '2024-07-01 06:59:59.999999+00', // ISO in UTC, not SQL in New York
            m: 'calm',
            tags: '{}',
          },
        },
        { type: 'commit' },
      ]);
      const begin = decoded[0] as Begin;
      const commit = decoded.at(-1) as Commit;
      await checkCommit(begin, commit, rows[0]!.xid);
      // XLogData positions: BEGIN at the transaction's first record (here
      // the message), a change or message at its record, TYPE and RELATION
      // at 0, COMMIT at the end of the commit record.
      const message = decoded[1] as Extract<DecodedMessage, { type: 'message' }>;
      expect(received.map((r) => [String.fromCharCode(r.data.payload[0]!), r.data.walStart])).toEqual([
        ['B', message.lsn],
        ['M', message.lsn],
        ['Y', 0n],
        ['R', 0n],
        ['I', expect.any(BigInt)],
        ['C', commit.endLsn],
      ]);
      const { rows: senders } = await work.query<{ application_name: string }>(
        `SELECT application_name FROM pg_stat_replication`,
      );
      expect(senders).toEqual([{ application_name: 'live_test' }]);

      stream.confirm(commit.endLsn);
      stream.sendStatus();
      await waitFor('confirmed_flush_lsn at the commit end', async () => {
        const { rows: slot } = await work.query<{ lsn: string }>(
          `SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = 'live'`,
        );
        return lsnFromText(slot[0]!.lsn) === commit.endLsn ? true : undefined;
      });
    } finally {
      await stream.close();
    }
    const { rows: after } = await work.query<{ active: boolean }>(
      `SELECT active FROM pg_replication_slots WHERE slot_name = 'live'`,
    );
    expect(after[0]!.active).toBe(false);
  });
});
