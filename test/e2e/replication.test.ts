// agent/replication.ts against a real walsender: streaming, acknowledgement,
// restart, errors, backpressure.
//
// The claim that matters most (DESIGN.md hard case 5): the slot's
// confirmed_flush_lsn moves to exactly what the caller confirmed, and
// nowhere else, whatever keepalives and status intervals do.  The cluster
// runs with wal_sender_timeout = 2s, so the walsender asks for a reply about
// once a second when idle; the tests watch several such rounds.

import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { lsnFromText, lsnToText, type DecodedMessage, type Lsn } from '../../agent/decode.js';
import { PgoutputDecoder } from '../../agent/pgoutput.js';
import { ReplicationStream, startReplicationCommand, type ReplicationMessage, type XLogData } from '../../agent/replication.js';
import { waitFor } from '../support/wait.js';
import { useCluster } from '../support/use-cluster.js';

const cluster = useCluster({ settings: { wal_sender_timeout: '2s' } });

const PGOUTPUT_OPTIONS = { proto_version: '1', publication_names: 'p', messages: 'true' };

let admin: pg.Client;

beforeAll(async () => {
  admin = await cluster().connect();
  await admin.query('CREATE TABLE t (id int PRIMARY KEY, v text)');
  await admin.query('CREATE PUBLICATION p FOR TABLE t');
});

afterAll(async () => {
  await admin?.end();
});

// ---------------------------------------------------------------------------
// helpers

async function createSlot(name: string, plugin: string): Promise<Lsn> {
  const { rows } = await admin.query<{ lsn: string }>(
    'SELECT lsn::text FROM pg_create_logical_replication_slot($1, $2)',
    [name, plugin],
  );
  return lsnFromText(rows[0]!.lsn);
}

interface SlotState {
  active: boolean;
  confirmedFlush: Lsn;
}

async function slotState(name: string): Promise<SlotState> {
  const { rows } = await admin.query<{ active: boolean; confirmed_flush_lsn: string }>(
    'SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1',
    [name],
  );
  if (rows[0] === undefined) throw new Error(`no slot ${name}`);
  return { active: rows[0].active, confirmedFlush: lsnFromText(rows[0].confirmed_flush_lsn) };
}


/** Reads a stream continuously in the background, collecting what arrives. */
class Collector {
  readonly messages: ReplicationMessage[] = [];
  readonly decoded: DecodedMessage[] = [];
  error: unknown = undefined;
  readonly done: Promise<void>;

  constructor(stream: ReplicationStream, decoder: PgoutputDecoder | null) {
    this.done = (async () => {
      try {
        for await (const message of stream) {
          this.messages.push(message);
          if (decoder !== null && message.type === 'xlogdata') this.decoded.push(...decoder.decode(message.payload));
        }
      } catch (err) {
        this.error = err;
      }
    })();
  }

  commits(): Extract<DecodedMessage, { type: 'commit' }>[] {
    return this.decoded.filter((m): m is Extract<DecodedMessage, { type: 'commit' }> => m.type === 'commit');
  }

  insertedIds(): string[] {
    return this.decoded.flatMap((m) => (m.type === 'insert' ? [m.newRow.get('id') as string] : []));
  }

  keepaliveRequests(): number {
    return this.messages.filter((m) => m.type === 'keepalive' && m.replyRequested).length;
  }

  /** Wait until the walsender has asked for, and got, `rounds` more replies. */
  async keepaliveRounds(rounds: number): Promise<void> {
    const target = this.keepaliveRequests() + rounds;
    await waitFor(`${rounds} keepalive rounds`, () => (this.keepaliveRequests() >= target ? true : undefined));
  }
}

function startPgoutput(slot: string, startLsn: Lsn, extra: Partial<Parameters<typeof ReplicationStream.start>[0]> = {}) {
  return ReplicationStream.start({
    connectionString: cluster().url(),
    slot,
    startLsn,
    plugin: 'pgoutput',
    pluginOptions: PGOUTPUT_OPTIONS,
    ...extra,
  });
}

// ---------------------------------------------------------------------------

describe('START_REPLICATION command text', () => {
  it('quotes the slot, option names and values', () => {
    expect(startReplicationCommand('we"ird', 0x1_0000_00abn, { publication_names: "it's", 'odd"name': '' })).toBe(
      `START_REPLICATION SLOT "we""ird" LOGICAL 1/AB ("publication_names" 'it''s', "odd""name" '')`,
    );
    expect(startReplicationCommand('s', 0n, {})).toBe('START_REPLICATION SLOT "s" LOGICAL 0/0');
  });
});

describe('ReplicationStream', () => {
  it('streams test_decoding output as XLogData and leaves the slot inactive after close()', async () => {
    await createSlot('text_slot', 'test_decoding');
    const stream = await ReplicationStream.start({
      connectionString: cluster().url(),
      slot: 'text_slot',
      startLsn: 0n,
      plugin: 'test_decoding',
      pluginOptions: { 'include-xids': '0' },
    });
    expect((await slotState('text_slot')).active).toBe(true);
    const collector = new Collector(stream, null);
    const before = Date.now();
    await admin.query(`INSERT INTO t VALUES (1, 'héllo ✓')`);
    const texts = (): string[] =>
      collector.messages.flatMap((m) => (m.type === 'xlogdata' ? [m.payload.toString('utf8')] : []));
    await waitFor('COMMIT', () => (texts().includes('COMMIT') ? true : undefined));
    expect(texts()).toEqual(['BEGIN', `table public.t: INSERT: id[integer]:1 v[text]:'héllo ✓'`, 'COMMIT']);
    const data = collector.messages.filter((m): m is XLogData => m.type === 'xlogdata');
    for (const m of data) {
      expect(m.walEnd).toBe(m.walStart);
      expect(m.sendTime.getTime()).toBeGreaterThanOrEqual(before - 1000);
      expect(m.sendTime.getTime()).toBeLessThanOrEqual(Date.now() + 1000);
    }
    // BEGIN at the transaction's first LSN, COMMIT at the end of its commit record.
    expect(data[0]!.walStart).toBeLessThan(data[2]!.walStart);

    await stream.close();
    await collector.done;
    expect(collector.error).toBeUndefined();
    // The walsender releases the slot before it completes the command, and
    // close() waits for that: no polling needed.
    expect((await slotState('text_slot')).active).toBe(false);
    expect(await stream.read()).toBeNull();
    expect(stream.sendStatus()).toBe(false);
  });

  describe('acknowledgement and restart', () => {
    const slot = 'ack_slot';
    let created: Lsn;
    let firstCommitEnd: Lsn;

    it('never moves confirmed_flush_lsn by itself', async () => {
      created = await createSlot(slot, 'pgoutput');
      const stream = await startPgoutput(slot, 0n);
      const collector = new Collector(stream, new PgoutputDecoder());
      for (const id of [11, 12, 13]) await admin.query('INSERT INTO t VALUES ($1, $2)', [id, `row ${id}`]);
      await waitFor('three commits', () => (collector.commits().length >= 3 ? true : undefined));
      expect(collector.insertedIds()).toEqual(['11', '12', '13']);
      firstCommitEnd = collector.commits()[0]!.endLsn;

      await collector.keepaliveRounds(3);
      expect(stream.sendStatus()).toBe(true); // flush = 0/0: "nothing confirmed"
      await collector.keepaliveRounds(1);
      expect(await slotState(slot)).toEqual({ active: true, confirmedFlush: created });

      // Confirm the first transaction: exactly its end LSN, no +1.
      stream.confirm(firstCommitEnd);
      expect(stream.sendStatus()).toBe(true);
      await waitFor(`confirmed_flush_lsn ${lsnToText(firstCommitEnd)}`, async () =>
        (await slotState(slot)).confirmedFlush === firstCommitEnd ? true : undefined,
      );
      // Keepalive replies and status updates repeat it, never advance it,
      // although the server's position (keepalive walEnd) is further on.
      await collector.keepaliveRounds(3);
      const lastKeepalive = collector.messages.filter((m) => m.type === 'keepalive').at(-1);
      expect(lastKeepalive?.walEnd).toBeGreaterThan(firstCommitEnd);
      expect(await slotState(slot)).toEqual({ active: true, confirmedFlush: firstCommitEnd });
      expect(stream.confirmedLsn).toBe(firstCommitEnd);

      expect(() => stream.confirm(firstCommitEnd - 1n)).toThrow(/back/);
      await stream.close();
      await collector.done;
      expect(collector.error).toBeUndefined();
      expect(await slotState(slot)).toEqual({ active: false, confirmedFlush: firstCommitEnd });
    });

    it('re-delivers exactly the unconfirmed transactions after a restart', async () => {
      for (const startLsn of [firstCommitEnd, 0n]) {
        const stream = await startPgoutput(slot, startLsn);
        const collector = new Collector(stream, new PgoutputDecoder());
        await waitFor('two commits', () => (collector.commits().length >= 2 ? true : undefined));
        // Give a wrongly re-sent transaction the chance to show up.
        await collector.keepaliveRounds(1);
        expect(collector.insertedIds(), `restart at ${lsnToText(startLsn)}`).toEqual(['12', '13']);
        expect(collector.commits()[0]!.commitLsn).toBeGreaterThanOrEqual(firstCommitEnd);
        await stream.close();
        await collector.done;
        expect(collector.error).toBeUndefined();
      }
      expect(await slotState(slot)).toEqual({ active: false, confirmedFlush: firstCommitEnd });
    });
  });

  it('quotes plugin option values', async () => {
    // (Slot names are limited to [a-z0-9_], so only the quoting of values is
    // exercised by the server here.)
    await admin.query(`CREATE PUBLICATION "it's" FOR TABLE t`);
    await createSlot('quote_slot', 'pgoutput');
    const stream = await startPgoutput('quote_slot', 0n, {
      pluginOptions: { ...PGOUTPUT_OPTIONS, publication_names: "it's" },
    });
    const collector = new Collector(stream, new PgoutputDecoder());
    await admin.query(`INSERT INTO t VALUES (21, 'quoted')`);
    await waitFor('a commit', () => (collector.commits().length >= 1 ? true : undefined));
    expect(collector.insertedIds()).toEqual(['21']);
    await stream.close();
    await admin.query(`SELECT pg_drop_replication_slot('quote_slot')`);
  });

  it("rejects with PostgreSQL's error for a slot that does not exist", async () => {
    const err = await startPgoutput('no_such_slot', 0n).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(pg.DatabaseError);
    expect(err).toMatchObject({
      severity: 'ERROR',
      code: '42704',
      message: 'replication slot "no_such_slot" does not exist',
    });
  });

  it('rejects with the code, message and hint when the plugin is not allowed', async () => {
    await createSlot('json_slot', 'wal2json');
    await admin.query(`ALTER SYSTEM SET output_plugin_libraries = pgoutput, test_decoding`);
    await admin.query('SELECT pg_reload_conf()');
    try {
      const err = await waitFor('the reload to take effect', async () => {
        const outcome = await ReplicationStream.start({
          connectionString: cluster().url(),
          slot: 'json_slot',
          startLsn: 0n,
          plugin: 'wal2json',
          pluginOptions: { 'format-version': '2' },
        }).then(
          async (stream) => {
            await stream.close();
            return undefined;
          },
          (e: unknown) => e,
        );
        return outcome;
      });
      expect(err).toBeInstanceOf(pg.DatabaseError);
      expect(err).toMatchObject({
        code: '42501',
        message: 'library "wal2json" may not be used as an output plugin',
        hint: expect.stringContaining('output_plugin_libraries'),
      });
    } finally {
      await admin.query('ALTER SYSTEM RESET output_plugin_libraries');
      await admin.query('SELECT pg_reload_conf()');
    }
  });

  it('refuses a slot that uses another plugin', async () => {
    await expect(
      ReplicationStream.start({
        connectionString: cluster().url(),
        slot: 'ack_slot',
        startLsn: 0n,
        plugin: 'wal2json',
        pluginOptions: {},
      }),
    ).rejects.toThrow('replication slot "ack_slot" uses output plugin "pgoutput", not "wal2json"');
    expect((await slotState('ack_slot')).active).toBe(false);
  });

  it('bounds its buffer while the consumer is slow, and survives a pause longer than wal_sender_timeout', async () => {
    await createSlot('slow_slot', 'pgoutput');
    const maxBufferedBytes = 64 * 1024;
    const stream = await startPgoutput('slow_slot', 0n, { maxBufferedBytes, statusIntervalMs: 500 });
    const rows = 20_000;
    await admin.query(
      `INSERT INTO t SELECT 1000 + i, repeat('x', 100) FROM generate_series(1, $1::int) i`,
      [rows],
    );
    // Read nothing for 3 s (> wal_sender_timeout); watch the buffer.
    let peak = 0;
    for (let i = 0; i < 60; i++) {
      peak = Math.max(peak, stream.bufferedBytes);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(peak).toBeGreaterThan(maxBufferedBytes / 2);
    // At most one socket read (64 KiB of wire data, counted with overhead) beyond the limit.
    expect(peak).toBeLessThanOrEqual(maxBufferedBytes + 192 * 1024);

    const decoder = new PgoutputDecoder();
    /** Ids inserted, up to the next commit. */
    const readTransaction = async (): Promise<number[]> => {
      const ids: number[] = [];
      for (;;) {
        const message = await stream.read();
        if (message === null) throw new Error('stream ended early');
        // Yield to the event loop now and then, as a consumer writing to a
        // store does, so that socket reads interleave with reading the queue.
        if (++reads % 100 === 0) await new Promise((resolve) => setImmediate(resolve));
        if (message.type !== 'xlogdata') continue;
        bytes += message.payload.length;
        const [decoded] = decoder.decode(message.payload);
        if (decoded?.type === 'insert') ids.push(Number(decoded.newRow.get('id')));
        if (decoded?.type === 'commit') return ids;
        peak = Math.max(peak, stream.bufferedBytes);
      }
    };
    let bytes = 0;
    let reads = 0;
    // Every row, in order: a payload overwritten in node-pg's reused receive
    // buffer would show up as a wrong or repeated id.
    const ids = await readTransaction();
    expect(ids.length).toBe(rows);
    expect(ids.every((id, i) => id === 1001 + i)).toBe(true);
    expect(bytes).toBeGreaterThan(20 * maxBufferedBytes); // the bound did bound something
    expect(peak).toBeLessThanOrEqual(maxBufferedBytes + 192 * 1024);
    // Still connected: the status updates kept the walsender from timing out.
    await admin.query(`INSERT INTO t VALUES (999, 'after the pause')`);
    expect(await readTransaction()).toEqual([999]);
    await stream.close();
    expect(await slotState('slow_slot')).toMatchObject({ active: false });
  });
});
