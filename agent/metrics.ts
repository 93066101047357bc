// Prometheus metrics for the agent: an AgentObserver (agent/run.ts) that
// keeps prom-client metrics in a registry of its own, and serves them as
// GET /metrics over HTTP on an opt-in port (pgtimewarp agent --metrics-port).
//
// Names follow Prometheus' conventions: prefix pgtimewarp_agent_, base units
// (seconds, bytes) as suffixes, _total on counters, _timestamp_seconds on
// Unix times.  The process metrics are prom-client's defaults under their
// standard names (process_*, nodejs_*), as every Node exporter has them.
//
// Lag in seconds is defined by LagTracker below: now minus the commit time
// of the oldest transaction the agent has received but not yet stored.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

import type { Lsn } from './decode.js';
import type { AgentObserver } from './run.js';

/** The error kinds runAgent retries after (retryKind in agent/run.ts); each starts at 0. */
const RETRY_KINDS = ['decode_error', 'store_write_error', 'agent_retry'] as const;

/** Transactions per batch: up to the default maxBatch of 500. */
const BATCH_TRANSACTION_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500];

/** Store write latency, 1 ms to 10 s. */
const WRITE_SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** An LSN as a Prometheus sample value: a float, exact up to 2^53 bytes (8 PiB) of WAL. */
function lsnValue(lsn: Lsn): number {
  return Number(lsn);
}

/**
 * How far the agent is behind, from what the observer hears.  Pure
 * bookkeeping, no clock of its own (tests pass the time).
 *
 * - Lag in bytes: the WAL end the server last reported minus the position
 *   confirmed to the slot (a stored batch or a heartbeat); never negative.
 * - Lag in seconds: now minus the commit time of the oldest transaction
 *   received from the stream but not yet stored; 0 when every received
 *   transaction is stored.  It cannot see transactions still in the slot
 *   that the agent has not received yet (lag in bytes does), and compares
 *   the source's commit clock with the agent's.
 */
export class LagTracker {
  /** Received, not yet stored: end LSN -> commit time (ms), in LSN order. */
  private readonly pending = new Map<Lsn, number>();
  private confirmed: Lsn = 0n;
  private serverSent: Lsn = 0n;

  /** A transaction arrived; after a reconnection the same one may arrive again. */
  received(endLsn: Lsn, commitTime: Date): void {
    if (endLsn <= this.confirmed || this.pending.has(endLsn)) return;
    this.pending.set(endLsn, commitTime.getTime());
  }

  /** Everything up to `lsn` is stored and confirmed (a batch or a heartbeat). */
  stored(lsn: Lsn): void {
    if (lsn > this.confirmed) this.confirmed = lsn;
    // in LSN order, so the stored ones are at the front; but look at all,
    // so an entry can never linger whatever order a reconnection made
    for (const endLsn of this.pending.keys()) {
      if (endLsn <= lsn) this.pending.delete(endLsn);
    }
  }

  serverPosition(lsn: Lsn): void {
    if (lsn > this.serverSent) this.serverSent = lsn;
  }

  get confirmedLsn(): Lsn {
    return this.confirmed;
  }

  get serverSentLsn(): Lsn {
    return this.serverSent;
  }

  /** Transactions received and not yet stored. */
  get pendingTransactions(): number {
    return this.pending.size;
  }

  lagBytes(): number {
    return this.serverSent > this.confirmed ? Number(this.serverSent - this.confirmed) : 0;
  }

  lagSeconds(nowMs: number): number {
    let oldest = Infinity;
    for (const commitMs of this.pending.values()) oldest = Math.min(oldest, commitMs);
    if (oldest === Infinity) return 0;
    return Math.max(0, (nowMs - oldest) / 1000);
  }
}

type AppliedBatch = Parameters<NonNullable<AgentObserver['applied']>>[0];

/**
 * The agent's metrics.  Pass it as runAgent's `observer`; start() serves
 * them.  Its callbacks never throw: a metric must not stop the agent.
 */
export class AgentMetrics implements AgentObserver {
  readonly registry = new Registry();
  private readonly lag = new LagTracker();
  private server: Server | null = null;

  private readonly appliedLsn: Gauge;
  private readonly confirmedLsn: Gauge;
  private readonly serverSentLsn: Gauge;
  private readonly appliedTransactions: Counter;
  private readonly appliedVersions: Counter;
  private readonly appliedBytes: Counter;
  private readonly batchTransactions: Histogram;
  private readonly writeSeconds: Histogram<'kind'>;
  private readonly heartbeats: Counter;
  private readonly retries: Counter<'kind'>;
  private readonly lastHeartbeat: Gauge;
  private readonly lastAppliedCommit: Gauge;

  constructor(private readonly now: () => number = Date.now) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    const lag = this.lag;
    const clock = this.now;

    this.appliedLsn = new Gauge({
      name: 'pgtimewarp_agent_applied_lsn_bytes', registers,
      help: 'End LSN of the last transaction stored, as a byte position in the WAL (a float: exact up to 2^53).',
    });
    this.confirmedLsn = new Gauge({
      name: 'pgtimewarp_agent_confirmed_lsn_bytes', registers,
      help: 'LSN confirmed to the replication slot after a store commit (a batch or a heartbeat): history is complete up to it. A byte position (a float: exact up to 2^53).',
    });
    this.serverSentLsn = new Gauge({
      name: 'pgtimewarp_agent_server_sent_lsn_bytes', registers,
      help: 'End of WAL the source server last reported sending, as a byte position (a float: exact up to 2^53).',
    });
    new Gauge({
      name: 'pgtimewarp_agent_lag_bytes', registers,
      help: 'pgtimewarp_agent_server_sent_lsn_bytes minus pgtimewarp_agent_confirmed_lsn_bytes: WAL the server has sent that is not yet stored.',
      collect() {
        this.set(lag.lagBytes());
      },
    });
    new Gauge({
      name: 'pgtimewarp_agent_lag_seconds', registers,
      help: 'Now minus the commit time of the oldest transaction received but not yet stored; 0 when every received transaction is stored. Does not see transactions still in the slot (see pgtimewarp_agent_lag_bytes).',
      collect() {
        this.set(lag.lagSeconds(clock()));
      },
    });
    new Gauge({
      name: 'pgtimewarp_agent_pending_transactions', registers,
      help: 'Transactions received from the stream and not yet stored.',
      collect() {
        this.set(lag.pendingTransactions);
      },
    });
    this.appliedTransactions = new Counter({
      name: 'pgtimewarp_agent_applied_transactions_total', registers,
      help: 'Transactions stored (each with its versions, in a batch).',
    });
    this.appliedVersions = new Counter({
      name: 'pgtimewarp_agent_applied_versions_total', registers,
      help: 'Row versions stored.',
    });
    this.appliedBytes = new Counter({
      name: 'pgtimewarp_agent_applied_bytes_total', registers,
      help: 'Bytes of row values stored (the text of the values, as the batch limit counts them).',
    });
    this.batchTransactions = new Histogram({
      name: 'pgtimewarp_agent_batch_transactions', registers, buckets: BATCH_TRANSACTION_BUCKETS,
      help: 'Transactions per batch (one store transaction).',
    });
    this.writeSeconds = new Histogram({
      name: 'pgtimewarp_agent_store_write_duration_seconds', registers, buckets: WRITE_SECONDS_BUCKETS, labelNames: ['kind'],
      help: 'Time to write and commit one store transaction, by kind: batch or heartbeat.',
    });
    this.heartbeats = new Counter({
      name: 'pgtimewarp_agent_heartbeats_total', registers,
      help: 'Heartbeats stored: checkpoints that advance the history horizon without a transaction to store.',
    });
    this.retries = new Counter({
      name: 'pgtimewarp_agent_retries_total', registers, labelNames: ['kind'],
      help: 'Times the agent reconnected after an error, by kind (as its health events name them).',
    });
    this.lastHeartbeat = new Gauge({
      name: 'pgtimewarp_agent_last_heartbeat_timestamp_seconds', registers,
      help: 'Source server time of the last stored heartbeat, seconds since the Unix epoch.',
    });
    this.lastAppliedCommit = new Gauge({
      name: 'pgtimewarp_agent_last_applied_commit_timestamp_seconds', registers,
      help: 'Commit time of the last stored transaction, seconds since the Unix epoch.',
    });
    for (const kind of RETRY_KINDS) this.retries.inc({ kind }, 0);
    for (const kind of ['batch', 'heartbeat']) this.writeSeconds.zero({ kind });
  }

  received(endLsn: Lsn, commitTime: Date): void {
    safely(() => this.lag.received(endLsn, commitTime));
  }

  applied(batch: AppliedBatch): void {
    safely(() => {
      this.lag.stored(batch.lsn);
      this.appliedLsn.set(lsnValue(batch.lsn));
      this.confirmedLsn.set(lsnValue(this.lag.confirmedLsn));
      this.appliedTransactions.inc(batch.transactions);
      this.appliedVersions.inc(batch.versions);
      this.appliedBytes.inc(batch.bytes);
      this.batchTransactions.observe(batch.transactions);
      this.writeSeconds.observe({ kind: 'batch' }, batch.writeSeconds);
      this.lastAppliedCommit.set(batch.lastCommitTime.getTime() / 1000);
    });
  }

  heartbeat(lsn: Lsn, time: Date, writeSeconds: number): void {
    safely(() => {
      this.lag.stored(lsn);
      this.confirmedLsn.set(lsnValue(this.lag.confirmedLsn));
      this.heartbeats.inc();
      this.writeSeconds.observe({ kind: 'heartbeat' }, writeSeconds);
      this.lastHeartbeat.set(time.getTime() / 1000);
    });
  }

  serverPosition(lsn: Lsn): void {
    safely(() => {
      this.lag.serverPosition(lsn);
      this.serverSentLsn.set(lsnValue(this.lag.serverSentLsn));
    });
  }

  retry(kind: string): void {
    safely(() => this.retries.inc({ kind }));
  }

  /** The metrics in Prometheus' text format. */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  /**
   * Serve GET /metrics on host:port (port 0: any free one); resolves with
   * the address once listening, rejects with a one-line reason when it
   * cannot listen.
   */
  async start(port: number, host = '127.0.0.1'): Promise<{ host: string; port: number; url: string }> {
    if (this.server !== null) throw new Error('metrics are already being served');
    const server = createServer((req, res) => void this.respond(req, res));
    await new Promise<void>((resolve, reject) => {
      const failed = (err: NodeJS.ErrnoException): void => {
        const reason = err.code === 'EADDRINUSE' ? 'the address is already in use'
          : err.code === 'EACCES' ? 'permission denied'
            : err.code === 'EADDRNOTAVAIL' || err.code === 'ENOTFOUND' ? 'no such address on this host'
              : err.message;
        reject(new Error(`cannot serve metrics on ${hostPort(host, port)}: ${reason}`));
      };
      server.once('error', failed);
      server.listen(port, host, () => {
        server.off('error', failed);
        resolve();
      });
    });
    server.on('error', () => undefined); // after listening: per-connection errors only
    this.server = server;
    const bound = (server.address() as AddressInfo).port;
    return { host, port: bound, url: `http://${hostPort(host, bound)}/metrics` };
  }

  /** Stop serving (open connections are closed); idempotent. */
  async close(): Promise<void> {
    const server = this.server;
    this.server = null;
    if (server === null) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }

  private async respond(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const path = (req.url ?? '/').split('?')[0];
      if (path !== '/metrics') {
        res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end('not found: metrics are at /metrics\n');
        return;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain; charset=utf-8' }).end('method not allowed\n');
        return;
      }
      const body = await this.registry.metrics();
      res.writeHead(200, { 'Content-Type': this.registry.contentType });
      res.end(req.method === 'HEAD' ? undefined : body);
    } catch (err) {
      if (!res.headersSent) res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' });
      res.end(`cannot collect metrics: ${err instanceof Error ? err.message : String(err)}\n`);
    }
  }
}

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A metric's bookkeeping must never stop the agent. */
function safely(update: () => void): void {
  try {
    update();
  } catch {
    // a metric left unchanged is the lesser harm
  }
}
