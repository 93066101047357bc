// The streaming replication protocol on a logical slot: START_REPLICATION,
// XLogData in, keepalive replies and standby status updates out.
//
// Owned here rather than taken from a library because acknowledgement is the
// heart of exactly-once (DESIGN.md, hard case 5): the server is told only the
// position the caller confirmed with confirm(), exactly as given, and never
// anything else.  No timer or keepalive reply advances it.
//
// node-pg does the connection, authentication and error parsing; this module
// uses its Connection's protocol events ('replicationStart' for the
// CopyBothResponse, 'copyData', 'copyDone') and writes its own CopyData
// frames to the socket.  START_REPLICATION runs as an ordinary simple query
// whose promise stays pending for the whole stream: it rejects with
// PostgreSQL's error (a pg.DatabaseError, fields intact) if the command
// fails, and resolves when the COPY ends.
//
// Protocol reference: PostgreSQL docs, "Streaming Replication Protocol".

import type { Duplex } from 'node:stream';

import pg from 'pg';

import { lsnToText, type Lsn } from './decode.js';
import { canonicalOptions } from './key.js';
import { pgTimestampNow, pgTimestampToUnixMicros, unixMicrosToDate } from './pgtime.js';

/** The output plugins the agent can read (test_decoding: diagnostics and tests). */
export type OutputPlugin = 'pgoutput' | 'wal2json' | 'test_decoding';

export interface ReplicationStreamOptions {
  /** postgresql:// URL of the source database (a database, not physical, replication connection is made). */
  connectionString: string;
  /** Name of an existing logical replication slot. */
  slot: string;
  /**
   * Where to start.  The server starts at the slot's confirmed_flush_lsn
   * when this is lower (0n: "wherever the slot is"), and skips every
   * transaction whose commit record starts before the start position.
   */
  startLsn: Lsn;
  /** The slot's output plugin; start() fails if the slot uses another one. */
  plugin: OutputPlugin;
  /** Options for the output plugin, name -> value (quoted here). */
  pluginOptions: Record<string, string>;
  /**
   * Send a standby status update (with the confirmed position, unchanged)
   * this often, so that the server does not time the connection out
   * (wal_sender_timeout) while the consumer is slow and the socket paused.
   * Default 10 s; 0 disables.
   */
  statusIntervalMs?: number;
  /**
   * Stop reading from the socket while this many bytes of messages wait
   * for read(); resume below half of it.  Default 1 MiB.  One socket read
   * (up to 64 KiB of wire data) can land on top of a full queue.
   */
  maxBufferedBytes?: number;
  /** How long close() waits for the server to end the COPY. Default 10 s. */
  closeTimeoutMs?: number;
}

/** One XLogData ('w') message: output of the plugin for one WAL position. */
export interface XLogData {
  type: 'xlogdata';
  /**
   * WAL position the message belongs to, as the walsender sets it: for
   * pgoutput, BEGIN carries the transaction's first LSN, a change its own
   * LSN, COMMIT the END of the commit record; messages not tied to a
   * position (pgoutput's RELATION and TYPE) carry 0.
   */
  walStart: Lsn;
  /** Same as walStart for logical replication (the walsender sends it twice). */
  walEnd: Lsn;
  sendTime: Date;
  /** The plugin's bytes, owned by the caller (copied out of node-pg's buffer). */
  payload: Buffer;
}

/**
 * A primary keepalive ('k').  Replies to it are sent automatically.  It is
 * also passed on, in order with the XLogData, because walEnd is how far the
 * server has decoded: once every transaction whose commit arrived before
 * this keepalive is stored, walEnd may be confirmed, which keeps an idle or
 * filtered slot from pinning WAL.  Consecutive keepalives waiting in the
 * queue are merged into the latest.
 */
export interface PrimaryKeepalive {
  type: 'keepalive';
  walEnd: Lsn;
  sendTime: Date;
  replyRequested: boolean;
}

export type ReplicationMessage = XLogData | PrimaryKeepalive;

const DEFAULT_STATUS_INTERVAL_MS = 10_000;
// Small on purpose: messages waiting longer than a couple of young-generation
// collections get promoted to V8's old generation, which is collected
// lazily, so a long queue of short-lived messages grows the heap by a hundred
// MB or more (measured by agent-memory.test.ts: 8 MiB gave a 240-290 MB peak
// RSS on a million-change transaction, 1 MiB about 150 MB) without making
// the agent any faster: the consumer is the slower side.
const DEFAULT_MAX_BUFFERED_BYTES = 1024 * 1024;
const DEFAULT_CLOSE_TIMEOUT_MS = 10_000;
/** Bytes a queued message counts for beyond its payload, so tiny messages are bounded too. */
const QUEUED_MESSAGE_OVERHEAD = 64;

const XLOG_DATA = 0x77; // 'w'
const XLOG_DATA_HEADER = 1 + 8 + 8 + 8;
const PRIMARY_KEEPALIVE = 0x6b; // 'k'
const PRIMARY_KEEPALIVE_LENGTH = 1 + 8 + 8 + 1;

type State = 'streaming' | 'closing' | 'ended';

interface QueuedMessage {
  message: ReplicationMessage;
  /** What it counts for in bufferedBytes. */
  size: number;
}

interface Waiter {
  resolve(message: ReplicationMessage | null): void;
  reject(err: Error): void;
}

/** A logical replication stream on one connection; see the module comment. */
export class ReplicationStream implements AsyncIterable<ReplicationMessage> {
  /**
   * Connect with replication=database and the canonical settings (so the
   * walsender prints values canonically), check the slot's plugin, and
   * start streaming.  Rejects with the server's error if the slot does not
   * exist, is active elsewhere, or its plugin may not be used.
   */
  static async start(opts: ReplicationStreamOptions): Promise<ReplicationStream> {
    const client = new pg.Client(clientConfig(opts.connectionString));
    // node-pg also emits a lost connection as an 'error' event, which would
    // crash the process without a listener.  The same error rejects the
    // running START_REPLICATION, and that is how it reaches the caller.
    client.on('error', () => {});
    await client.connect();
    try {
      await checkSlotPlugin(client, opts.slot, opts.plugin);
      const stream = new ReplicationStream(client, opts);
      await stream.run(startReplicationCommand(opts.slot, opts.startLsn, opts.pluginOptions));
      return stream;
    } catch (err) {
      await client.end().catch(() => {});
      throw err;
    }
  }

  private readonly client: pg.Client;
  private readonly statusIntervalMs: number;
  private readonly maxBufferedBytes: number;
  private readonly closeTimeoutMs: number;

  // The queue: items[head..] wait for read().
  private items: (QueuedMessage | undefined)[] = [];
  private head = 0;
  private queuedBytes = 0;
  private paused = false;
  private waiter: Waiter | null = null;

  private state: State = 'streaming';
  private failure: Error | null = null;
  private closeRequested = false;
  private closing: Promise<void> | null = null;
  private copyDoneSent = false;
  private serverCopyDone = false;
  private statusTimer: NodeJS.Timeout | null = null;
  /** Settles (never rejects) when START_REPLICATION ends, however it ends. */
  private commandDone: Promise<void> = Promise.resolve();

  private confirmed: Lsn = 0n;

  private constructor(client: pg.Client, opts: ReplicationStreamOptions) {
    this.client = client;
    this.statusIntervalMs = opts.statusIntervalMs ?? DEFAULT_STATUS_INTERVAL_MS;
    this.maxBufferedBytes = opts.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES;
    this.closeTimeoutMs = opts.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS;
  }

  /** The position last passed to confirm(); 0n before the first. */
  get confirmedLsn(): Lsn {
    return this.confirmed;
  }

  /** Bytes of messages waiting for read() (payloads plus a fixed overhead each). */
  get bufferedBytes(): number {
    return this.queuedBytes;
  }

  /**
   * Record that everything before `lsn` is stored for good.  It is sent with
   * the next status update (sendStatus(), a keepalive reply or the interval)
   * as write, flush and apply position, exactly: to confirm a transaction,
   * pass its commit's end LSN (pgoutput COMMIT's endLsn).  Positions never go
   * back; an earlier one is a bug in the caller and throws.
   */
  confirm(lsn: Lsn): void {
    if (lsn < 0n || lsn > 0xffff_ffff_ffff_ffffn) {
      throw new RangeError(`not an LSN: ${lsn}`);
    }
    if (lsn < this.confirmed) {
      throw new RangeError(
        `confirm(${lsnToText(lsn)}) would move the confirmed position back from ${lsnToText(this.confirmed)}`,
      );
    }
    this.confirmed = lsn;
  }

  /**
   * Send a standby status update now: write = flush = apply = the confirmed
   * position (0/0, meaning "nothing", before the first confirm()).  With
   * `replyRequested` the walsender answers at once with a keepalive whose
   * walEnd is how far it has decoded and sent (walsender.c,
   * ProcessStandbyReplyMessage): how the agent learns, without waiting for
   * the server's own keepalives, that a quiet stream has nothing more to
   * send.  Returns false when the stream no longer takes one (closing or
   * ended).
   */
  sendStatus({ replyRequested = false }: { replyRequested?: boolean } = {}): boolean {
    if (this.state !== 'streaming' || this.copyDoneSent) return false;
    const frame = Buffer.alloc(1 + 4 + 1 + 8 * 4 + 1);
    frame.writeUInt8(0x64, 0); // 'd' CopyData
    frame.writeInt32BE(frame.length - 1, 1);
    frame.writeUInt8(0x72, 5); // 'r' standby status update
    frame.writeBigUInt64BE(this.confirmed, 6); // written
    frame.writeBigUInt64BE(this.confirmed, 14); // flushed: what the slot's confirmed_flush_lsn becomes
    frame.writeBigUInt64BE(this.confirmed, 22); // applied
    frame.writeBigInt64BE(pgTimestampNow(), 30);
    frame.writeUInt8(replyRequested ? 1 : 0, 38);
    return this.write(frame);
  }

  /**
   * The next message, or null once the stream was closed.  Rejects with the
   * error that ended the stream (after the messages received before it).
   * One read at a time.
   */
  read(): Promise<ReplicationMessage | null> {
    if (this.waiter !== null) {
      return Promise.reject(new Error('ReplicationStream.read() called while another read is pending'));
    }
    const next = this.dequeue();
    if (next !== null) return Promise.resolve(next);
    if (this.state !== 'streaming') {
      return this.failure !== null ? Promise.reject(this.failure) : Promise.resolve(null);
    }
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  /**
   * Messages until the stream is closed; throws the error that ended it.
   * Leaving the loop early does not close the stream (call close()), and a
   * later loop continues where this one stopped.
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<ReplicationMessage, void, undefined> {
    for (;;) {
      const message = await this.read();
      if (message === null) return;
      yield message;
    }
  }

  /**
   * End the stream cleanly: CopyDone, wait for the server to finish the
   * command (the walsender releases the slot before it does), disconnect.
   * Messages not yet read are dropped; nothing is confirmed.  Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  private async shutDown(): Promise<void> {
    this.closeRequested = true;
    if (this.state === 'streaming') {
      this.state = 'closing';
      this.stopStatusTimer();
      this.dropQueue();
      this.settleWaiter();
      // The server may have more to send before it sees our CopyDone; keep
      // reading (and dropping) so that it can.
      this.resumeSocket();
      this.sendCopyDone();
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        this.commandDone.then(() => false),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(true), this.closeTimeoutMs);
        }),
      ]);
      clearTimeout(timer);
      if (timedOut) this.socket().destroy();
    }
    await this.client.end().catch(() => {});
  }

  // -------------------------------------------------------------------------

  /** Send START_REPLICATION; resolve once the server switched to CopyBoth. */
  private run(command: string): Promise<void> {
    const connection = this.client.connection;
    return new Promise((resolve, reject) => {
      let started = false;
      connection.once('replicationStart', () => {
        started = true;
        this.startStatusTimer();
        resolve();
      });
      connection.on('copyData', (message: { chunk?: unknown }) => this.onCopyData(message.chunk));
      connection.on('copyDone', () => this.onServerCopyDone());
      this.commandDone = this.client.query(command).then(
        () => {
          if (!started) reject(new Error(`${command} ended without starting to stream`));
          this.finish(
            this.closeRequested ? null : new Error('the server ended the replication stream (START_REPLICATION completed)'),
          );
        },
        (err: unknown) => {
          const error = err instanceof Error ? err : new Error(String(err));
          if (!started) reject(error);
          this.finish(error);
        },
      );
    });
  }

  private onCopyData(chunk: unknown): void {
    // The walsender can send a keepalive after its own CopyDone; ignore it.
    if (this.state === 'ended' || this.serverCopyDone) return;
    if (!Buffer.isBuffer(chunk) || chunk.length === 0) {
      this.protocolError('empty CopyData message');
      return;
    }
    const kind = chunk[0];
    if (kind === XLOG_DATA) {
      if (chunk.length < XLOG_DATA_HEADER) {
        this.protocolError(`XLogData message of ${chunk.length} bytes, shorter than its ${XLOG_DATA_HEADER}-byte header`);
        return;
      }
      if (this.state !== 'streaming') return; // closing: dropped
      // node-pg hands out a view of its receive buffer, which it reuses for
      // later socket reads: copy the payload before queueing it.
      const payload = Buffer.from(chunk.subarray(XLOG_DATA_HEADER));
      this.enqueue(
        {
          type: 'xlogdata',
          walStart: chunk.readBigUInt64BE(1),
          walEnd: chunk.readBigUInt64BE(9),
          sendTime: unixMicrosToDate(pgTimestampToUnixMicros(chunk.readBigInt64BE(17))),
          payload,
        },
        payload.length + QUEUED_MESSAGE_OVERHEAD,
      );
    } else if (kind === PRIMARY_KEEPALIVE) {
      if (chunk.length < PRIMARY_KEEPALIVE_LENGTH) {
        this.protocolError(`keepalive message of ${chunk.length} bytes, expected ${PRIMARY_KEEPALIVE_LENGTH}`);
        return;
      }
      const replyRequested = chunk[17] !== 0;
      if (replyRequested) this.sendStatus();
      if (this.state !== 'streaming') return;
      this.enqueueKeepalive({
        type: 'keepalive',
        walEnd: chunk.readBigUInt64BE(1),
        sendTime: unixMicrosToDate(pgTimestampToUnixMicros(chunk.readBigInt64BE(9))),
        replyRequested,
      });
    } else {
      this.protocolError(`unknown replication message type 0x${(kind ?? 0).toString(16)}`);
    }
  }

  private onServerCopyDone(): void {
    this.serverCopyDone = true;
    // Both sides must send CopyDone before the server completes the command.
    this.sendCopyDone();
  }

  /** The server broke the protocol: fail the stream with this, drop the connection. */
  private protocolError(message: string): void {
    this.failure ??= new Error(`replication protocol error: ${message}`);
    this.socket().destroy();
  }

  private finish(err: Error | null): void {
    // After close(), how the connection ends is no news to the caller.
    if (err !== null && !this.closeRequested) this.failure ??= err;
    this.state = 'ended';
    this.stopStatusTimer();
    this.resumeSocket();
    if (this.head >= this.items.length) this.settleWaiter();
  }

  /** Wake a pending read() with end-of-stream or the failure. */
  private settleWaiter(): void {
    const waiter = this.waiter;
    if (waiter === null) return;
    this.waiter = null;
    if (this.failure !== null) waiter.reject(this.failure);
    else waiter.resolve(null);
  }

  private enqueue(message: ReplicationMessage, size: number): void {
    const waiter = this.waiter;
    if (waiter !== null) {
      this.waiter = null;
      waiter.resolve(message);
      return;
    }
    this.items.push({ message, size });
    this.queuedBytes += size;
    if (!this.paused && this.queuedBytes > this.maxBufferedBytes) {
      this.paused = true;
      this.socket().pause();
    }
  }

  private enqueueKeepalive(keepalive: PrimaryKeepalive): void {
    const last = this.items.length > this.head ? this.items[this.items.length - 1] : undefined;
    if (last !== undefined && last.message.type === 'keepalive') {
      last.message = { ...keepalive, replyRequested: keepalive.replyRequested || last.message.replyRequested };
      return;
    }
    this.enqueue(keepalive, QUEUED_MESSAGE_OVERHEAD);
  }

  private dequeue(): ReplicationMessage | null {
    const item = this.items[this.head];
    if (item === undefined) return null;
    this.items[this.head] = undefined; // let the payload be collected
    this.head++;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    this.queuedBytes -= item.size;
    if (this.paused && this.queuedBytes <= this.maxBufferedBytes / 2) this.resumeSocket();
    return item.message;
  }

  private dropQueue(): void {
    this.items = [];
    this.head = 0;
    this.queuedBytes = 0;
  }

  private resumeSocket(): void {
    if (!this.paused) return;
    this.paused = false;
    this.socket().resume();
  }

  private startStatusTimer(): void {
    if (this.statusIntervalMs <= 0) return;
    this.statusTimer = setInterval(() => this.sendStatus(), this.statusIntervalMs);
    this.statusTimer.unref();
  }

  private stopStatusTimer(): void {
    if (this.statusTimer !== null) clearInterval(this.statusTimer);
    this.statusTimer = null;
  }

  private sendCopyDone(): void {
    if (this.copyDoneSent || this.state === 'ended') return;
    this.copyDoneSent = true;
    this.write(Buffer.from([0x63, 0, 0, 0, 4])); // 'c' CopyDone
  }

  private write(frame: Buffer): boolean {
    const socket = this.socket();
    if (!socket.writable) return false;
    socket.write(frame);
    return true;
  }

  /** The socket node-pg reads from and writes to (replaced by a TLS socket after SSL upgrade). */
  private socket(): Duplex {
    return this.client.connection.stream;
  }
}

/** START_REPLICATION for a logical slot, every name and value quoted. */
export function startReplicationCommand(slot: string, startLsn: Lsn, pluginOptions: Record<string, string>): string {
  const options = Object.entries(pluginOptions).map(([name, value]) => `${quoteIdentifier(name)} ${quoteLiteral(value)}`);
  return (
    `START_REPLICATION SLOT ${quoteIdentifier(slot)} LOGICAL ${lsnToText(startLsn)}` +
    (options.length > 0 ? ` (${options.join(', ')})` : '')
  );
}

// The replication command scanner (repl_scanner.l) knows "" inside quoted
// identifiers and '' inside string literals, and no backslash escapes; so
// does SQL (agent/ddl.ts).
export function quoteIdentifier(name: string): string {
  if (name.length === 0 || name.includes('\0')) throw new Error(`invalid identifier ${JSON.stringify(name)}`);
  return `"${name.replace(/"/g, '""')}"`;
}

export function quoteLiteral(value: string): string {
  if (value.includes('\0')) throw new Error(`invalid option value ${JSON.stringify(value)}`);
  return `'${value.replace(/'/g, "''")}'`;
}

/**
 * Connection settings: a database replication connection, UTF8, and the
 * canonical settings.  node-pg lets the parameters of a URL override the
 * config object, so for a URL they are merged into the URL itself, the
 * canonical -c settings after the URL's own (the last one of a name wins).
 * The application name defaults to "pgtimewarp"; set application_name as a
 * URL parameter, not in options (the startup parameter overrides -c).
 */
function clientConfig(connectionString: string): pg.ClientConfig & { replication: 'database' } {
  const base = {
    replication: 'database' as const,
    client_encoding: 'UTF8',
    fallback_application_name: 'pgtimewarp',
  };
  let url: URL;
  try {
    url = new URL(connectionString);
  } catch {
    return { ...base, connectionString, options: canonicalOptions() };
  }
  const own = url.searchParams.get('options');
  url.searchParams.set('options', own ? `${own} ${canonicalOptions()}` : canonicalOptions());
  url.searchParams.set('replication', 'database');
  url.searchParams.set('client_encoding', 'UTF8');
  return { ...base, connectionString: url.toString() };
}

/** Fail early and clearly when the slot exists but belongs to another plugin. */
async function checkSlotPlugin(client: pg.Client, slot: string, plugin: OutputPlugin): Promise<void> {
  // A replication connection speaks only the simple query protocol: no parameters.
  const result = await client.query<{ plugin: string | null }>(
    `SELECT plugin FROM pg_catalog.pg_replication_slots WHERE slot_name = ${client.escapeLiteral(slot)}`,
  );
  const found = result.rows[0]?.plugin;
  // No such slot, or a physical one: START_REPLICATION reports it in PostgreSQL's words.
  if (found === undefined || found === null) return;
  if (found !== plugin) {
    throw new Error(`replication slot "${slot}" uses output plugin "${found}", not "${plugin}"`);
  }
}
