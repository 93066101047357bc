// The agent's loop: replication stream -> decoder -> transaction assembly ->
// store writer -> acknowledgement.
//
// Exactly once: every (re)start reads the checkpoint from the store and
// streams from there; transactions that end at or before it are skipped; a
// batch of transactions and the checkpoint commit in one store transaction
// (agent/writer.ts); only then is the source told, and only that position.
// A crash anywhere loses nothing (the slot still holds what was not
// confirmed) and doubles nothing (what was stored is behind the checkpoint).

import pg from 'pg';

import {
  AssemblyError, TRACKING_MESSAGE_PREFIX, TransactionAssembler, type AssembledTransaction, type Catalog, type IdentityChange,
  type TrackedTable,
} from './assemble.js';
import { verifiedDdlEvents, type DdlEvent, type RenameAlias } from './ddl.js';
import { lsnFromText, lsnToText, type DecodedMessage, type Decoder, type Lsn } from './decode.js';
import { PGOUTPUT_PROTO_VERSION, PgoutputDecodeError, PgoutputDecoder } from './pgoutput.js';
import {
  FailureStreak, POISON_ATTEMPTS, SKIP_CHANNEL, Throttle, TransactionFailure, catalogShows, failsEveryTime, gapTables,
  loadSkips, poisonMessage, recordPoison, recordSkip, skippedTransaction, tableList,
} from './poison.js';
import { ReplicationStream, quoteIdentifier, quoteLiteral, type ReplicationMessage } from './replication.js';
import { Wal2jsonDecoder, Wal2jsonError, wal2jsonOptions, type CatalogColumn } from './wal2json.js';
import { StoreWriteError, StoreWriter, type Checkpoint } from './writer.js';

export const PUBLICATION = 'pgtimewarp';

/** The longest a running agent goes without a heartbeat while the source writes WAL, ms. */
export const LIVENESS_HEARTBEAT_MS = 30_000;

export interface AgentOptions {
  sourceUrl: string;
  storeUrl: string;
  nodeId: string;
  /** Logical replication slot on the source; created on first start. */
  slot: string;
  plugin: 'pgoutput' | 'wal2json';
  /** Most transactions written in one store transaction. Default 500. */
  maxBatch?: number;
  /**
   * Most versions held for one store transaction: a batch is written once
   * it has this many, so many mid-sized transactions cannot add up to
   * unbounded memory.  Default 10000: with the store writing one batch
   * while the next fills, two batches are in memory, and larger ones cost
   * RSS (catch-up of the benchmark's backlog: 260-300 MB at 10,000, 320-390
   * MB at 20,000) for no speed.
   */
  maxBatchVersions?: number;
  /** ... or roughly this many bytes of row values (TransactionAssembler's count).  Default 4 MiB. */
  maxBatchBytes?: number;
  /**
   * A transaction holding more key states than this (or than spillBytes of
   * values) is spilled to the store piece by piece, so memory stays bounded
   * (agent/assemble.ts).  Defaults: 5000 keys, 4 MiB.
   */
  spillKeys?: number;
  spillBytes?: number;
  /** Stops the agent: the batch in progress is dropped (it is re-read), nothing is half-written. */
  signal?: AbortSignal;
  log?: (event: AgentEvent) => void;
  /** Waits between reconnection attempts, ms; doubled up to the maximum. Default 1000..30000. */
  backoff?: { initialMs: number; maxMs: number };
  /**
   * Least time between heartbeats, ms, and how often a quiet stream asks
   * the server how far it has sent.  Default 1000: the store knows within
   * about a second how far history is complete.  A heartbeat is one small
   * store transaction, and WAL that is only the agent's own store commits
   * gets one only every LIVENESS_HEARTBEAT_MS (see runSession).
   */
  heartbeatIntervalMs?: number;
  /** How often the health checks run (slot WAL retention, tracked tables), ms.  Default 10 heartbeat intervals. */
  healthIntervalMs?: number;
  /** Figures as the agent goes, for metrics (agent/metrics.ts). */
  observer?: AgentObserver;
}

/**
 * What the agent reports as it goes, for metrics; every callback is
 * optional and must not throw.
 */
export interface AgentObserver {
  /** A transaction was assembled from the stream (not yet stored). */
  received?(endLsn: Lsn, commitTime: Date): void;
  /** A batch committed in the store and was confirmed to the source. */
  applied?(batch: { transactions: number; versions: number; bytes: number; lsn: Lsn; lastCommitTime: Date; writeSeconds: number }): void;
  /** A heartbeat committed: history is complete up to `lsn`, as of `time`. */
  heartbeat?(lsn: Lsn, time: Date, writeSeconds: number): void;
  /** How far the server has sent WAL, from a keepalive or a message. */
  serverPosition?(lsn: Lsn): void;
  /** The agent is about to retry after an error of this kind (retryKind). */
  retry?(kind: string): void;
}

export interface AgentEvent {
  level: 'info' | 'warning' | 'error';
  event: string;
  message: string;
  [field: string]: unknown;
}

/** An error that retrying cannot fix: the agent stops. */
export class AgentFatalError extends Error {}

/**
 * Run until `signal` aborts or a fatal error.  Connection losses on either
 * side are retried with backoff, each time from the store's checkpoint.
 */
export async function runAgent(opts: AgentOptions): Promise<void> {
  const log = opts.log ?? (() => undefined);
  const backoff = opts.backoff ?? { initialMs: 1000, maxMs: 30_000 };
  let wait = backoff.initialMs;
  // a transaction that fails alike every time is poison: stop there, saying how to skip it
  const streak = new FailureStreak();
  // names tracked tables took in transactions not yet stored (agent/ddl.ts), kept across sessions
  const renames: RenameAlias[] = [];
  while (!opts.signal?.aborted) {
    try {
      const outcome = await runSession(opts, log, () => {
        wait = backoff.initialMs; // progress was made: the next failure starts over
      }, renames);
      if (outcome === 'restart') continue;
      return;
    } catch (caught) {
      if (opts.signal?.aborted) return;
      let err = caught;
      if (err instanceof TransactionFailure) {
        const attempts = streak.note(err);
        if (attempts >= POISON_ATTEMPTS) {
          const message = poisonMessage(err, attempts);
          log({ level: 'error', event: 'poison_transaction', message, endLsn: lsnToText(err.endLsn), xid: err.xid,
            tables: err.tables === null ? null : tableList(err.tables), error: err.reason });
          const failure = err;
          await withStore(opts, (store) => recordPoison(store, opts.nodeId, failure, message)).catch(() => undefined);
          err = new AgentFatalError(message);
        }
      }
      if (err instanceof AgentFatalError) {
        log({ level: 'error', event: 'fatal', message: err.message });
        await recordHealth(opts, 'error', 'agent_stopped', err.message).catch(() => undefined);
        throw err;
      }
      const message = err instanceof Error ? err.message : String(err);
      log({ level: 'warning', event: 'retry', message: `${message}; retrying in ${wait} ms`, waitMs: wait });
      opts.observer?.retry?.(retryKind(err));
      await recordHealth(opts, 'warning', retryKind(err), message).catch(() => undefined);
      await sleep(wait, opts.signal);
      wait = Math.min(wait * 2, backoff.maxMs);
    }
  }
}

/**
 * One connection's worth of work: from the store's checkpoint until abort
 * ('stop'), an error, or a change that needs a new stream ('restart').
 */
async function runSession(
  opts: AgentOptions,
  log: (e: AgentEvent) => void,
  onProgress: () => void,
  renames: RenameAlias[],
): Promise<'stop' | 'restart'> {
  const store = new pg.Client({ connectionString: opts.storeUrl });
  const source = new pg.Client({ connectionString: opts.sourceUrl });
  store.on('error', () => undefined); // surfaces through the failing query
  source.on('error', () => undefined);
  let stream: ReplicationStream | undefined;
  try {
    await store.connect();
    await source.connect();
    const writer = new StoreWriter(store, opts.nodeId, opts.slot);
    // transactions the operator chose to skip (pgtimewarp skip-transaction), read again when it says so
    await store.query(`LISTEN ${SKIP_CHANNEL}`);
    let skipsChanged = false;
    store.on('notification', (n) => {
      if (n.channel === SKIP_CHANNEL && n.payload === opts.nodeId) skipsChanged = true;
    });
    let skips = await loadSkips(store, opts.nodeId);
    const identity = await source.query<{ db: string; sysid: string }>(
      `SELECT current_database() AS db, system_identifier::text AS sysid FROM pg_catalog.pg_control_system()`,
    );
    await writer.registerNode(identity.rows[0]!.db, identity.rows[0]!.sysid);
    const catalog = new SourceCatalog(source, writer, renames);
    await catalog.refresh();
    const checkpoint = await writer.checkpoint();
    await ensureSlot(source, opts, checkpoint, log);
    if (checkpoint === null) await refuseHistoryGaps(source, opts, catalog.recording());
    const health = new HealthCheck(source, writer, opts.slot, log);
    await health.run(catalog.recording());

    let decoder: Decoder;
    let pluginOptions: Record<string, string>;
    if (opts.plugin === 'pgoutput') {
      decoder = new PgoutputDecoder();
      pluginOptions = { proto_version: PGOUTPUT_PROTO_VERSION, publication_names: PUBLICATION, messages: 'true' };
    } else {
      const wal2json = new Wal2jsonDecoder();
      for (const t of catalog.streamedNames()) wal2json.knowRelation(t.schema, t.table, await catalog.columns(t));
      decoder = wal2json;
      pluginOptions = Object.fromEntries(wal2jsonOptions(catalog.streamedNames()));
    }

    const startLsn = checkpoint?.lsn ?? 0n;
    stream = await ReplicationStream.start({
      connectionString: opts.sourceUrl, slot: opts.slot, startLsn, plugin: opts.plugin, pluginOptions,
    });
    log({ level: 'info', event: 'streaming', message: `streaming slot ${opts.slot} from ${lsnToText(startLsn)}`, lsn: lsnToText(startLsn) });

    const assembler = new TransactionAssembler(catalog, { spillKeys: opts.spillKeys, spillBytes: opts.spillBytes });
    const observe = opts.observer ?? {};
    let applied: Lsn = checkpoint?.lsn ?? 0n;
    const heartbeatInterval = opts.heartbeatIntervalMs ?? 1000;
    const healthInterval = opts.healthIntervalMs ?? 10 * heartbeatInterval;
    let lastHeartbeat = 0;
    let lastHealth = Date.now();
    let batch: AssembledTransaction[] = [];
    const maxBatch = opts.maxBatch ?? 500;
    const maxBatchVersions = opts.maxBatchVersions ?? 10_000;
    let batchVersions = 0;
    const maxBatchBytes = opts.maxBatchBytes ?? 4 << 20;
    let batchBytes = 0;
    // A store on the source's cluster writes WAL the source's walsender
    // reports too: its own commits must not call for more heartbeats.
    const sameCluster = (await writer.systemIdentifier()) === identity.rows[0]!.sysid;
    let ownWalEnd: Lsn = 0n;

    // The apply pipeline.  The store writes one batch (or heartbeat) while
    // the agent decodes the next: `writing` is the one store transaction in
    // flight, and everything else that uses the store waits for it first
    // (settle).  A batch is handed to the store as soon as the store is
    // free, so under load batches grow to whatever arrived during the
    // previous write, and decoding never waits for a commit unless a batch
    // is full.  The source is confirmed only in a write's completion, after
    // its store commit, and only with what that commit stored.
    // (typed by assertion: TypeScript would narrow it to null, not seeing the closures assign it)
    let writing = null as Promise<void> | null;
    /** `writing` resolving to 'written': made once per write, not once per message raced against it. */
    let written = null as Promise<'written'> | null;
    const settle = async (): Promise<void> => {
      const w = writing;
      writing = null;
      written = null;
      await w;
    };
    const launch = (work: Promise<void>): void => {
      writing = work;
      written = work.then(() => 'written' as const);
      written.catch(() => undefined); // handled by whoever awaits it: settle() or the loop's race
    };
    const stored = (transactions: AssembledTransaction[], held: number, bytes: number, saved: Checkpoint, started: number): void => {
      const writeSeconds = (performance.now() - started) / 1000;
      const versions = held + writer.spilledVersions;
      log({ level: 'info', event: 'applied', message: `applied ${transactions.length} transaction(s), ${versions} version(s) up to ${lsnToText(saved.lsn)}`,
        transactions: transactions.length, versions, bytes, lsn: lsnToText(saved.lsn), writeMs: Math.round(writeSeconds * 1000) });
      applied = saved.lsn;
      stream!.confirm(saved.lsn);
      stream!.sendStatus();
      observe.applied?.({ transactions: transactions.length, versions, bytes, lsn: saved.lsn, lastCommitTime: saved.time, writeSeconds });
      onProgress();
    };
    /**
     * Store a batch.  When the store refuses it for its data, one of its
     * transactions is to blame: they are stored one by one, and the one
     * refused is a TransactionFailure (a spilled transaction, whose pieces
     * went with the rollback, is always a batch of its own).
     */
    const writeBatch = async (transactions: AssembledTransaction[], held: number, bytes: number): Promise<void> => {
      let started = performance.now();
      try {
        stored(transactions, held, bytes, await writer.apply(transactions), started);
        return;
      } catch (err) {
        if (!failsEveryTime(err)) throw err;
        if (transactions.length === 1) throw TransactionFailure.of(transactions[0]!, 'store', err);
      }
      for (const txn of transactions) {
        started = performance.now();
        let saved: Checkpoint;
        try {
          saved = await writer.apply([txn]);
        } catch (err) {
          throw failsEveryTime(err) ? TransactionFailure.of(txn, 'store', err) : err;
        }
        stored([txn], txn.versions.length, txn.bytes, saved, started);
      }
    };
    const startWrite = (): void => {
      const transactions = batch;
      const held = batchVersions;
      const bytes = batchBytes;
      batch = [];
      batchVersions = 0;
      batchBytes = 0;
      launch(writeBatch(transactions, held, bytes));
    };

    // Health events found while streaming (forged tracking messages), each
    // kind at most once a minute: written when the store is free, never
    // inside a batch's store transaction, whose rollback would take them.
    const pendingHealth: Array<{ kind: string; message: string; detail: object }> = [];
    const throttle = new Throttle();
    const report = (kind: string, message: string, detail: object): void => {
      const held = throttle.take(kind);
      if (held === null) return;
      const text = held > 0 ? `${message} (and ${held} more like it since the last report)` : message;
      log({ level: 'warning', event: kind, message: text, ...detail });
      pendingHealth.push({ kind, message: text, detail });
    };

    /**
     * The tracking messages a transaction carried, checked against the
     * store (agent/poison.ts).  Returns whether the tracked tables changed,
     * which needs the batch stored and, for wal2json, a new stream.
     */
    const checkTracking = async (txn: AssembledTransaction): Promise<boolean> => {
      const where = `the transaction ending at ${lsnToText(txn.endLsn)} (xid ${txn.xid})`;
      if (txn.malformedTrackingCount > 0) {
        report('tracking_message_malformed',
          `${txn.malformedTrackingCount} "${TRACKING_MESSAGE_PREFIX}" logical message(s) in ${where} are not tracking events, ignored ` +
            `(pg_logical_emit_message is executable by every role: something other than pgtimewarp_track/_untrack wrote them): ` +
            txn.malformedTracking.map((m) => `at ${lsnToText(m.messageLsn)}: ${m.reason}`).join('; '),
          { endLsn: lsnToText(txn.endLsn), xid: txn.xid, count: txn.malformedTrackingCount });
      }
      const unknown = txn.tracking.filter((e) => !catalogShows(e, opts.nodeId, catalog.all()));
      if (unknown.length === 0 && !txn.trackingOverflow) return false; // already known: nothing to do
      const before = catalog.fingerprint();
      try {
        await catalog.refresh();
      } catch (err) {
        await settle(); // a failed store write is the error to report
        throw err;
      }
      const unverified = unknown.filter((e) => !catalogShows(e, opts.nodeId, catalog.all()));
      if (unverified.length > 0) {
        report('tracking_message_unverified',
          `${unverified.length} tracking message(s) in ${where} claim what the store does not show, ignored: ` +
            unverified.slice(0, 3).map((e) => `${e.action} ${e.schema}.${e.table} at ${lsnToText(e.lsn)}${e.nodeId === opts.nodeId ? '' : ` for node ${e.nodeId}`}`).join(', ') +
            `${unverified.length > 3 ? ', ...' : ''}. Either a role wrote them with pg_logical_emit_message (executable by every role), ` +
            `or the table's history has since been forgotten.`,
          { endLsn: lsnToText(txn.endLsn), xid: txn.xid, count: unverified.length });
      }
      return catalog.fingerprint() !== before;
    };

    // The horizon: a position before which the server has sent everything,
    // with no transaction open at it (from a keepalive, or the extension's
    // horizon request, see below).  Once everything received before it is
    // stored, history is complete up to it, and a heartbeat records that:
    // a checkpoint at that position with the server's time, so that a
    // quiet source's slot does not pin WAL and a time just past the last
    // commit resolves without a warning.  Heartbeats are at most one per
    // heartbeatIntervalMs, and for WAL that is only the agent's own store
    // commits (a store on the source's cluster would otherwise feed itself)
    // only every LIVENESS_HEARTBEAT_MS.  A horizon request (pgtimewarp's
    // non-transactional message, from the extension) is answered at once.
    let horizon = null as { lsn: Lsn; time: Date; requested: boolean } | null;
    const heartbeatDue = (h: { lsn: Lsn; requested: boolean }): boolean => {
      const since = Date.now() - lastHeartbeat;
      // Even WAL that is only our own gets a heartbeat now and then, so that
      // the checkpoint's age tells that the agent is alive (doctor).
      return h.requested || since >= LIVENESS_HEARTBEAT_MS ||
        (since >= heartbeatInterval && !(sameCluster && h.lsn <= ownWalEnd));
    };
    const startHeartbeat = (h: { lsn: Lsn; time: Date }): void => {
      horizon = null;
      const started = performance.now();
      launch((async () => {
        await writer.heartbeat({ lsn: h.lsn, time: h.time });
        const writeSeconds = (performance.now() - started) / 1000;
        applied = h.lsn;
        stream!.confirm(h.lsn);
        stream!.sendStatus();
        lastHeartbeat = Date.now();
        observe.heartbeat?.(h.lsn, h.time, writeSeconds);
        onProgress();
        if (sameCluster) ownWalEnd = await writer.walInsertLsn();
      })());
    };

    /** Start the store's next piece of work if it is free: a batch, a heartbeat, the periodic health check. */
    const pump = (): void => {
      if (writing !== null) return;
      if (pendingHealth.length > 0 && !writer.spilling) {
        const events = pendingHealth.splice(0);
        launch((async () => {
          for (const e of events) await writer.recordHealth('warning', e.kind, e.message, e.detail);
        })());
        return;
      }
      if (batch.length > 0) {
        startWrite();
        return;
      }
      if (horizon !== null && horizon.lsn <= applied) horizon = null; // stored past it already
      if (horizon !== null && !assembler.inTransaction && heartbeatDue(horizon)) {
        startHeartbeat(horizon);
        return;
      }
      if (Date.now() - lastHealth >= healthInterval && !assembler.inTransaction && !writer.spilling) {
        lastHealth = Date.now();
        launch(health.run(catalog.recording()));
      }
    };

    // A quiet stream: ask the server every heartbeat interval how far it
    // has sent (its answer is a keepalive, handled below).
    const ask = setInterval(() => {
      if (writing === null && batch.length === 0 && !assembler.inTransaction) stream?.sendStatus({ replyRequested: true });
    }, heartbeatInterval);

    const abort = (): void => void stream?.close();
    opts.signal?.addEventListener('abort', abort, { once: true });
    try {
      /** Store everything before `txn` (and drop its spilled pieces): it is to be read again, or fails. */
      const storeBefore = async (txn: AssembledTransaction): Promise<void> => {
        await settle();
        if (txn.spilled) await writer.abandonSpill();
        if (batch.length > 0) startWrite();
        await settle();
      };
      /** What the DDL log rows its "pgtimewarp" DDL messages name mean for the tracked tables; only rows it wrote count. */
      const identityChangesOf = async (txn: AssembledTransaction): Promise<IdentityChange[]> => {
        const claimed = (await Promise.all(txn.ddl.map((c) => verifiedDdlEvents(source, c.first, c.last, txn.xid)))).flat();
        if (claimed.length === 0) {
          log({ level: 'warning', event: 'unverified_ddl_message',
            message: `transaction ${lsnToText(txn.endLsn)} (xid ${txn.xid}) carried a "pgtimewarp" DDL message naming no DDL log rows it wrote: ignored` });
        }
        return catalog.identityChanges(claimed, txn.commitLsn);
      };
      let reading: Promise<ReplicationMessage | null> | null = null;
      for (;;) {
        reading ??= stream.read();
        const next = written === null ? await reading : await Promise.race([reading, written]);
        if (next === 'written') {
          writing = null;
          written = null;
          pump();
          continue;
        }
        reading = null;
        const message = next;
        if (message === null || opts.signal?.aborted) return 'stop'; // the unflushed batch is re-read next time
        if (message.type === 'keepalive') {
          observe.serverPosition?.(message.walEnd);
          if (!assembler.inTransaction && message.walEnd > applied) {
            horizon = { lsn: message.walEnd, time: message.sendTime, requested: horizon?.requested ?? false };
          }
          pump();
          continue;
        }
        let messages: DecodedMessage[];
        try {
          messages = decoder.decode(message.payload);
        } catch (err) {
          if (!assembler.inTransaction) throw err;
          // it fails its transaction, which COMMIT names (see below)
          assembler.fail(err instanceof Error ? err : new Error(String(err)));
          messages = [];
        }
        for (const decoded of messages) {
          if (decoded.type === 'relation') await catalog.learnTypes(decoded.relation.columns.map((c) => c.typeOid));
          if (decoded.type === 'message' && !decoded.transactional && decoded.prefix === TRACKING_MESSAGE_PREFIX && !assembler.inTransaction) {
            // the extension waits for history to be stored up to here (a horizon request)
            horizon = { lsn: decoded.lsn, time: message.sendTime, requested: true };
          }
          const committed = assembler.push(decoded);
          for (const op of assembler.takeSpill()) {
            await settle(); // a batch being written may be the one that ends the last spilled transaction
            if (!writer.spilling) {
              // the transactions before it commit on their own
              if (batch.length > 0) startWrite();
              await settle();
              log({ level: 'info', event: 'spilling', message: 'a transaction too big to hold in memory: merging it in the store piece by piece until its COMMIT' });
            }
            try {
              await writer.spill(op);
            } catch (err) {
              if (!failsEveryTime(err)) throw err;
              // the store refuses this transaction's data (and rolled its pieces back): it fails, as above
              const failure = err instanceof Error ? err : new Error(String(err));
              if (committed !== null) committed.failure = failure; // its last piece, taken at its COMMIT
              else assembler.fail(failure);
              break;
            }
          }
          let txn = committed;
          if (txn === null) continue;
          if (txn.endLsn <= applied) {
            // stored before the restart
            if (txn.spilled) {
              await settle();
              await writer.abandonSpill();
            }
            continue;
          }
          if (skipsChanged) {
            skipsChanged = false;
            await settle();
            skips = await loadSkips(store, opts.nodeId);
          }
          const skip = skips.get(txn.endLsn);
          if (skip !== undefined) {
            // the operator's decision (pgtimewarp skip-transaction): none of its versions, a gap from it on
            await settle();
            if (txn.spilled) await writer.abandonSpill();
            const tables = gapTables(txn, catalog.all());
            const reason = await recordSkip(store, opts.nodeId, txn, tables, skip);
            log({ level: 'warning', event: 'transaction_skipped',
              message: `${reason}; ${tables.length === 0 ? 'it changed no tracked table' : `history gap recorded from ${lsnToText(txn.endLsn)} on for ${tableList(tables)}`}`,
              endLsn: lsnToText(txn.endLsn), xid: txn.xid, tables: tableList(tables) });
            txn = skippedTransaction(txn);
          }
          // renames and drops of tracked tables (agent/ddl.ts)
          const changes = txn.ddl.length === 0 ? [] : await identityChangesOf(txn);
          const unknown = changes.filter((c) => !catalog.knowsChange(c, txn.commitLsn));
          if (unknown.length > 0) {
            // Its changes after the rename came under a name not known to be
            // this table's, and were passed over (with wal2json, not even
            // sent), or failed for want of a key column's new name: store
            // what came before it, then read it again knowing the names.
            await storeBefore(txn);
            for (const c of unknown) {
              renames.push({ relationId: c.relationId, schema: c.schema, table: c.table, fromLsn: txn.commitLsn, renamedColumns: c.renamedColumns });
            }
            log({ level: 'info', event: 'rename_seen',
              message: `${unknown.map(describeChange).join(', ')} at ${lsnToText(txn.endLsn)}: reading from there again under the new names` });
            return 'restart';
          }
          if (txn.failure !== null) {
            // what came before it is stored, so that history stops right at it
            await storeBefore(txn);
            throw TransactionFailure.of(txn, failsEveryTime(txn.failure) ? 'store' : 'decode', txn.failure);
          }
          let restartAfterWrite = false;
          if (changes.length > 0) {
            txn.identity = changes;
            catalog.apply(changes, txn.endLsn);
            log({ level: 'info', event: 'renamed_or_dropped', message: changes.map(describeChange).join(', '), lsn: lsnToText(txn.endLsn) });
            // add-tables is fixed for a stream: the new names from here on
            restartAfterWrite = opts.plugin === 'wal2json' && changes.some((c) => c.kind === 'renamed');
          }
          observe.received?.(txn.endLsn, txn.commitTime);
          batch.push(txn);
          batchVersions += txn.versions.length;
          batchBytes += txn.bytes;
          if (txn.spilled) {
            // its pieces are in the store transaction already open: it commits alone
            await settle();
            startWrite();
          }
          if (restartAfterWrite) {
            await settle();
            if (batch.length > 0) startWrite();
            await settle();
            return 'restart';
          }
          if (txn.tracking.length > 0 || txn.malformedTrackingCount > 0 || txn.trackingOverflow) {
            if (await checkTracking(txn)) {
              await settle();
              if (batch.length > 0) startWrite();
              await settle();
              const confirmed = txn.tracking.filter((e) => catalogShows(e, opts.nodeId, catalog.all()));
              log({ level: 'info', event: 'tracking',
                message: confirmed.length > 0 ? confirmed.map((e) => `${e.action} ${e.schema}.${e.table}`).join(', ') : 'the tracked tables changed in the store' });
              // wal2json's add-tables is fixed for a stream: start again with the new list from here
              if (opts.plugin === 'wal2json') return 'restart';
            }
          }
        }
        if (message.walEnd > 0n) observe.serverPosition?.(message.walEnd);
        const full = batch.length >= maxBatch || batchVersions >= maxBatchVersions || batchBytes >= maxBatchBytes;
        if (full && writing !== null) await settle(); // the store is the slower side: wait for it
        pump();
      }
    } finally {
      clearInterval(ask);
      opts.signal?.removeEventListener('abort', abort);
      // a batch being written commits or rolls back whole; let it finish before the connections go
      await settle().catch(() => undefined);
    }
  } finally {
    await stream?.close().catch(() => undefined);
    await store.end().catch(() => undefined);
    await source.end().catch(() => undefined);
  }
}

/** An identifier as SQL wants it: as it is when it needs no quotes, else quoted. */
function sqlIdentifier(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : quoteIdentifier(name);
}

function describeChange(c: IdentityChange): string {
  if (c.kind === 'renamed') return `${c.oldSchema}.${c.oldTable} renamed to ${c.schema}.${c.table}`;
  if (c.kind === 'dropped') return `${c.schema}.${c.table} dropped`;
  const renamed = c.renamedColumns ?? [];
  return renamed.length === 0 ? `columns of ${c.schema}.${c.table} known` : `${c.schema}.${c.table} columns renamed: ${renamed.map((r) => `${r.old} to ${r.new}`).join(', ')}`;
}

/** The names a column had or took, following renames in order. */
function aliasesOf(name: string, renamed: Array<{ old: string; new: string }>): string[] {
  const names = [name];
  for (const r of renamed) if (names.includes(r.old) && !names.includes(r.new)) names.push(r.new);
  return names.slice(1);
}

/** Tracked tables from the store, column types from the source catalog. */
class SourceCatalog implements Catalog {
  private tables: TrackedTable[] = [];
  private readonly baseTypes = new Map<number, number>();

  constructor(private readonly source: pg.Client, private readonly writer: StoreWriter, private readonly renames: RenameAlias[]) {}

  async refresh(): Promise<void> {
    this.tables = await this.writer.trackedTables();
    // renames stored since they were seen need no alias any more
    for (let i = this.renames.length - 1; i >= 0; i--) {
      const r = this.renames[i]!;
      const t = this.tables.find((x) => x.relationId === r.relationId);
      const names = Object.values(t?.columns ?? {});
      const stored = t !== undefined && t.schema === r.schema && t.table === r.table &&
        (r.renamedColumns ?? []).every((c) => names.includes(c.new) && !names.includes(c.old));
      if (t === undefined || stored) this.renames.splice(i, 1);
    }
  }

  /** Every table tracked, or once tracked, on this node. */
  all(): TrackedTable[] {
    return this.tables;
  }

  /** Tells whether two refreshes read the same tables, tracked over the same LSNs. */
  fingerprint(): string {
    return JSON.stringify(this.tables.map((t) => [t.schema, t.table, t.pkColumns, t.trackedFromLsn.toString(), t.untrackedLsn?.toString() ?? null]).sort());
  }

  /** Tables whose changes are recorded now (tracked, not untracked). */
  recording(): TrackedTable[] {
    return this.tables.filter((t) => t.untrackedLsn === null);
  }

  /**
   * The latest incarnation tracked before `commitLsn` known by this name:
   * its name, or one it was renamed to in a transaction not yet stored (at
   * or after the rename's commit).  Several incarnations can share a name:
   * a dropped table's and a later one's, or a renamed one's (until the
   * rename is stored) and the one tracked under its old name since.
   */
  tracked(schema: string, table: string, commitLsn: Lsn): TrackedTable | undefined {
    let best: TrackedTable | undefined;
    for (const t of this.tables) {
      const named = (t.schema === schema && t.table === table) ||
        this.renames.some((r) => r.relationId === t.relationId && r.schema === schema && r.table === table && r.fromLsn <= commitLsn);
      if (named && t.trackedFromLsn < commitLsn && (best === undefined || t.trackedFromLsn > best.trackedFromLsn)) best = t;
    }
    if (best === undefined) return undefined;
    // primary key columns renamed in this transaction: their new names too
    const renamed = this.renames.filter((r) => r.relationId === best!.relationId && r.fromLsn <= commitLsn)
      .flatMap((r) => r.renamedColumns ?? []);
    if (renamed.length === 0) return best;
    return { ...best, pkAliases: best.pkColumns.map((name) => aliasesOf(name, renamed)) };
  }

  /** The names the stream may give recording tables: theirs, and those they took in transactions not yet stored. */
  streamedNames(): Array<{ schema: string; table: string; relid: number | null }> {
    const names = this.recording().map((t) => ({ schema: t.schema, table: t.table, relid: t.relid }));
    for (const r of this.renames) {
      const t = this.tables.find((x) => x.relationId === r.relationId);
      if (t !== undefined && t.untrackedLsn === null) names.push({ schema: r.schema, table: r.table, relid: t.relid });
    }
    return names;
  }

  /**
   * What DDL log rows mean for the live incarnations: renames (of a table
   * now named otherwise), column renames (by attnum), drops.
   */
  identityChanges(events: DdlEvent[], commitLsn: Lsn): IdentityChange[] {
    const changes: IdentityChange[] = [];
    for (const e of events) {
      const t = this.tables.find((x) => x.relid === e.relid && x.untrackedLsn === null && x.trackedFromLsn < commitLsn);
      if (t === undefined) continue;
      const names = { relationId: t.relationId, schema: t.schema, table: t.table, oldSchema: t.schema, oldTable: t.table };
      if (e.event === 'dropped') {
        changes.push({ kind: 'dropped', ...names });
        continue;
      }
      if (e.schema !== t.schema || e.table !== t.table) {
        changes.push({ kind: 'renamed', ...names, schema: e.schema, table: e.table });
      }
      if (e.columns !== null && JSON.stringify(e.columns) !== JSON.stringify(t.columns ?? null)) {
        const renamedColumns = Object.entries(e.columns)
          .filter(([attnum, name]) => t.columns?.[attnum] !== undefined && t.columns[attnum] !== name)
          .map(([attnum, name]) => ({ old: t.columns![attnum]!, new: name }));
        const pkColumns = t.pkColumns.map((p) => renamedColumns.find((r) => r.old === p)?.new ?? p);
        // added: a version stored before reads the column's missing value from here on (the extension)
        const addedColumns = t.columns === null || t.columns === undefined ? [] : Object.keys(e.columns)
          .filter((attnum) => t.columns![attnum] === undefined).map(Number);
        changes.push({ kind: 'columns', ...names, schema: e.schema, table: e.table, columns: e.columns, renamedColumns, pkColumns, addedColumns });
      }
    }
    return changes;
  }

  /**
   * Whether the stream was read knowing this change where it matters: a
   * table's new name (its changes after the rename come under it), a key
   * column's new name (the key is read from it).
   */
  knowsChange(c: IdentityChange, commitLsn: Lsn): boolean {
    const seen = this.renames.filter((r) => r.relationId === c.relationId && r.fromLsn <= commitLsn);
    if (c.kind === 'renamed') return seen.some((r) => r.schema === c.schema && r.table === c.table);
    if (c.kind !== 'columns') return true;
    const t = this.tables.find((x) => x.relationId === c.relationId);
    const keyRenames = (c.renamedColumns ?? []).filter((r) => t?.pkColumns.includes(r.old));
    return keyRenames.every((k) => seen.some((r) => (r.renamedColumns ?? []).some((x) => x.old === k.old && x.new === k.new)));
  }

  /** Renames and drops, as the store will have them once the transaction ending at endLsn is stored. */
  apply(changes: IdentityChange[], endLsn: Lsn): void {
    for (const c of changes) {
      const i = this.tables.findIndex((x) => x.relationId === c.relationId);
      if (i < 0) continue;
      const t = this.tables[i]!;
      this.tables[i] = c.kind === 'renamed' ? { ...t, schema: c.schema, table: c.table }
        : c.kind === 'columns' ? { ...t, columns: c.columns ?? null, pkColumns: c.pkColumns ?? t.pkColumns }
          : { ...t, untrackedLsn: endLsn };
    }
  }

  baseType(typeOid: number): number {
    const base = this.baseTypes.get(typeOid);
    if (base === undefined) throw new AgentFatalError(`type ${typeOid} was not looked up before use`);
    return base;
  }

  /** Look up the base types (domains resolved) of types not seen yet. */
  async learnTypes(typeOids: number[]): Promise<void> {
    const unknown = [...new Set(typeOids)].filter((oid) => !this.baseTypes.has(oid));
    if (unknown.length === 0) return;
    const res = await this.source.query<{ oid: number; base: number }>(
      `WITH RECURSIVE d(oid, base) AS (
         SELECT t.oid, t.oid FROM pg_catalog.pg_type t WHERE t.oid = ANY($1::oid[])
         UNION ALL
         SELECT d.oid, t.typbasetype FROM d JOIN pg_catalog.pg_type t ON t.oid = d.base WHERE t.typtype = 'd')
       SELECT oid::int, base::int FROM d
        WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type t WHERE t.oid = d.base AND t.typtype = 'd')`,
      [unknown],
    );
    for (const r of res.rows) this.baseTypes.set(r.oid, r.base);
    for (const oid of unknown) if (!this.baseTypes.has(oid)) this.baseTypes.set(oid, oid);
  }

  /** A table's columns now, for wal2json (which sends no relation messages): by OID, whatever it is named now. */
  async columns(t: { schema: string; table: string; relid: number | null }): Promise<CatalogColumn[]> {
    const res = await this.source.query<{ name: string; type_oid: number; attnum: number; is_key: boolean }>(
      `SELECT a.attname AS name, a.atttypid::int AS type_oid, a.attnum::int AS attnum,
              coalesce(a.attnum = ANY(i.indkey), false) AS is_key
         FROM pg_catalog.pg_attribute a
         LEFT JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
        WHERE a.attrelid = coalesce($3::oid, (SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                                              WHERE n.nspname = $1 AND c.relname = $2))
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum`,
      [t.schema, t.table, t.relid],
    );
    await this.learnTypes(res.rows.map((r) => r.type_oid));
    return res.rows.map((r) => ({ name: r.name, typeOid: r.type_oid, attnum: r.attnum, isKey: r.is_key }));
  }
}

/**
 * The slot (and, for pgoutput, the publication) exist.  A slot missing
 * after the agent has stored history was lost: the WAL since is gone, and
 * so would be history; that is fatal, never silently papered over.
 */
async function ensureSlot(source: pg.Client, opts: AgentOptions, checkpoint: Checkpoint | null, log: (e: AgentEvent) => void): Promise<void> {
  if (opts.plugin === 'pgoutput') {
    const pub = await source.query(`SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1`, [PUBLICATION]);
    if (pub.rowCount === 0) {
      await source.query(`CREATE PUBLICATION ${PUBLICATION}`);
      log({ level: 'info', event: 'publication_created', message: `created publication ${PUBLICATION}` });
    }
  }
  const slot = await source.query<{ plugin: string; wal_status: string | null }>(
    `SELECT plugin, wal_status FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND database = current_database()`,
    [opts.slot],
  );
  const found = slot.rows[0];
  if (found === undefined) {
    if (checkpoint !== null) {
      throw new AgentFatalError(
        `replication slot "${opts.slot}" is gone, but the store has history up to ${lsnToText(checkpoint.lsn)}: ` +
          `changes since then are lost. Run "pgtimewarp doctor" for how to recover.`,
      );
    }
    await source.query(`SELECT pg_catalog.pg_create_logical_replication_slot($1, $2)`, [opts.slot, opts.plugin]);
    log({ level: 'info', event: 'slot_created', message: `created replication slot ${opts.slot} (${opts.plugin})` });
    return;
  }
  if (found.wal_status === 'lost') {
    throw new AgentFatalError(`replication slot "${opts.slot}" has lost WAL it needs (wal_status = lost): history has a gap. Run "pgtimewarp doctor".`);
  }
  if (found.wal_status === 'unreserved') {
    log({ level: 'warning', event: 'wal_at_risk', message: `replication slot "${opts.slot}" is about to lose WAL (wal_status = unreserved)` });
  }
}

/** The health event kind of an error the agent retries after. */
export function retryKind(err: unknown): string {
  if (err instanceof TransactionFailure) return err.stage === 'decode' ? 'decode_error' : 'store_write_error';
  if (err instanceof PgoutputDecodeError || err instanceof Wal2jsonError) return 'decode_error';
  if (err instanceof AssemblyError) return 'decode_error';
  if (err instanceof StoreWriteError) return 'store_write_error';
  return 'agent_retry';
}

/** How much WAL headroom a slot has left before it is at risk, as pg_replication_slots says. */
export function walRisk(walStatus: string | null, safeWalSize: bigint | null, warnBelowBytes: bigint): string | null {
  if (walStatus === 'lost') return 'the slot has lost WAL it needs: history has a gap';
  if (walStatus === 'unreserved') return 'the slot is about to lose WAL it needs (wal_status = unreserved)';
  if (safeWalSize !== null && safeWalSize < warnBelowBytes) {
    return `only ${safeWalSize} bytes of WAL can still be written before the slot loses WAL it needs (safe_wal_size)`;
  }
  return null;
}

/**
 * Conditions an operator must hear about, each recorded as a health event
 * when it appears (not again while it lasts): WAL retention at risk, a
 * tracked table dropped or without a primary key.
 */
class HealthCheck {
  private readonly reported = new Set<string>();
  /** Warn when the slot can lose WAL within this much more WAL: 1 GiB. */
  private static readonly SAFE_WAL_WARN_BYTES = 1n << 30n;

  constructor(
    private readonly source: pg.Client,
    private readonly writer: StoreWriter,
    private readonly slot: string,
    private readonly log: (e: AgentEvent) => void,
  ) {}

  async run(tables: TrackedTable[]): Promise<void> {
    const found = new Map<string, { severity: 'warning' | 'error'; kind: string; message: string }>();
    const slot = await this.source.query<{ wal_status: string | null; safe_wal_size: string | null }>(
      `SELECT wal_status, safe_wal_size::text FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`,
      [this.slot],
    );
    const row = slot.rows[0];
    if (row !== undefined) {
      const risk = walRisk(row.wal_status, row.safe_wal_size === null ? null : BigInt(row.safe_wal_size), HealthCheck.SAFE_WAL_WARN_BYTES);
      if (risk !== null) {
        found.set('wal', { severity: row.wal_status === 'lost' ? 'error' : 'warning', kind: 'wal_at_risk', message: `replication slot "${this.slot}": ${risk}` });
      }
    }
    if (tables.length > 0) {
      // by OID: a renamed table is the same table (the agent follows it)
      const res = await this.source.query<{ schema: string; table: string; exists: boolean; has_pk: boolean }>(
        `SELECT t.schema, t.table, c.oid IS NOT NULL AS exists,
                EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS has_pk
           FROM jsonb_to_recordset($1::jsonb) AS t(schema text, "table" text, relid oid)
           LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = t.schema AND t.relid IS NULL
           LEFT JOIN pg_catalog.pg_class c
             ON CASE WHEN t.relid IS NULL THEN c.relnamespace = n.oid AND c.relname = t."table" ELSE c.oid = t.relid END`,
        [JSON.stringify(tables.map((t) => ({ schema: t.schema, table: t.table, relid: t.relid })))],
      );
      for (const t of res.rows) {
        const name = `${t.schema}.${t.table}`;
        if (!t.exists) {
          found.set(`gone:${name}`, { severity: 'warning', kind: 'tracked_table_missing',
            message: `tracked table ${name} no longer exists in the source (dropped); its history stays in the store` });
        } else if (!t.has_pk) {
          found.set(`nopk:${name}`, { severity: 'error', kind: 'tracked_table_without_pk',
            message: `tracked table ${name} has no primary key any more; its changes cannot be keyed` });
        }
      }
    }
    for (const [key, event] of found) {
      if (this.reported.has(key)) continue;
      this.log({ level: event.severity, event: event.kind, message: event.message });
      await this.writer.recordHealth(event.severity, event.kind, event.message);
      this.reported.add(key);
    }
    for (const key of [...this.reported]) if (!found.has(key)) this.reported.delete(key);
  }
}

/**
 * Before the agent's first checkpoint: a table tracked before the slot
 * existed has changes the slot never saw (between its tracked_from_lsn and
 * the slot's start), and heartbeats would then call its history complete.
 * Refuse, until it is tracked again from a point the slot covers.  Checked
 * on every start until the first checkpoint, which this refusal prevents.
 */
async function refuseHistoryGaps(source: pg.Client, opts: AgentOptions, tables: TrackedTable[]): Promise<void> {
  const slot = await source.query<{ lsn: string }>(
    `SELECT confirmed_flush_lsn::text AS lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`,
    [opts.slot],
  );
  const start = slot.rows[0] === undefined ? null : lsnFromText(slot.rows[0].lsn);
  if (start === null) return;
  const gaps = tables.filter((t) => t.trackedFromLsn < start);
  if (gaps.length === 0) return;
  const names = gaps.map((t) => `${t.schema}.${t.table}`);
  // as regclass literals: a name with capitals, spaces or quotes must still work pasted into psql
  const literals = gaps.map((t) => quoteLiteral(`${sqlIdentifier(t.schema)}.${sqlIdentifier(t.table)}`));
  throw new AgentFatalError(
    `${names.join(', ')} began tracking before replication slot "${opts.slot}" existed (the slot starts at ` +
      `${lsnToText(start)}), so changes made in between were never streamed and history would have a gap. ` +
      `Track again now that the slot exists: ` +
      literals.map((n) => `SELECT pgtimewarp_untrack(${n}); SELECT pgtimewarp_forget(${n}); SELECT pgtimewarp_track(${n});`).join(' '),
  );
}

/** A health event on a connection of its own: the session's may be what failed. */
async function recordHealth(opts: AgentOptions, severity: 'info' | 'warning' | 'error', kind: string, message: string): Promise<void> {
  await withStore(opts, (store) => new StoreWriter(store, opts.nodeId, opts.slot).recordHealth(severity, kind, message));
}

/** `work` on a store connection of its own. */
async function withStore(opts: AgentOptions, work: (store: pg.Client) => Promise<void>): Promise<void> {
  const store = new pg.Client({ connectionString: opts.storeUrl });
  store.on('error', () => undefined);
  await store.connect();
  try {
    await work(store);
  } finally {
    await store.end();
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
