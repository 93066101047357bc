// What the agent does with input it must not trust and transactions it
// cannot store (agent/poison.ts), without a database: which errors count as
// a transaction's own, when failures alike make a poison transaction, what
// the agent then says, and how tracking claims are held against the catalog.

import pg from 'pg';
import { describe, expect, it } from 'vitest';

import type { AssembledTransaction, TrackedTable, TrackingEvent } from '../../agent/assemble.js';
import {
  FailureStreak, Throttle, TransactionFailure, catalogShows, failsEveryTime, gapTables, poisonMessage, skipCommand,
} from '../../agent/poison.js';
import { retryKind } from '../../agent/run.js';
import { StoreWriteError } from '../../agent/writer.js';

function dbError(code: string, message = 'refused'): pg.DatabaseError {
  const err = new pg.DatabaseError(message, 0, 'error');
  err.code = code;
  return err;
}

const tracked: TrackedTable[] = [
  { relationId: 1, relid: 16384, schema: 'public', table: 'items', pkColumns: ['id'], trackedFromLsn: 100n, untrackedLsn: null },
  { relationId: 2, relid: 16390, schema: 'public', table: 'old', pkColumns: ['id'], trackedFromLsn: 100n, untrackedLsn: 500n },
  { relationId: 3, relid: 16396, schema: 'public', table: 'later', pkColumns: ['id'], trackedFromLsn: 2000n, untrackedLsn: null },
];

function txn(over: Partial<AssembledTransaction>): AssembledTransaction {
  const when = new Date('2024-01-01T00:00:00Z');
  return {
    spilled: false, xid: 42, commitLsn: 1000n, endLsn: 0x1_0000_0030n, commitTime: when, commitTimeMicros: BigInt(when.getTime()) * 1000n,
    truncated: [], versions: [], tracking: [], ddl: [], trackingOverflow: false, malformedTracking: [], malformedTrackingCount: 0,
    tables: [], failure: null, bytes: 0, ...over,
  };
}

describe('failsEveryTime', () => {
  it('is true of errors the data causes, false of the connection, the server or the set-up', () => {
    expect(failsEveryTime(new StoreWriteError('cannot carry'))).toBe(true);
    for (const code of ['23514', '23505', '22P02', '22003', '54000', 'P0001']) expect(failsEveryTime(dbError(code)), code).toBe(true);
    for (const code of ['08006', '57P01', '57014', '53100', '40001', '40P01', '55P03', '42501', '42P01', '25P02', 'XX000']) {
      expect(failsEveryTime(dbError(code)), code).toBe(false);
    }
    expect(failsEveryTime(new Error('Connection terminated unexpectedly'))).toBe(false);
  });
});

describe('a poison transaction', () => {
  const refused = (lsn = 0x1_0000_0030n, message = 'new row violates check constraint "no_poison" (SQLSTATE 23514)') =>
    new TransactionFailure(lsn, 42, [{ relationId: 1, schema: 'public', table: 'items' }], 'store', message);

  it('is the same failure of the same transaction, POISON_ATTEMPTS times in a row', () => {
    const streak = new FailureStreak();
    expect(streak.note(refused())).toBe(1);
    expect(streak.note(refused())).toBe(2);
    expect(streak.note(refused(0x1_0000_0030n, 'another error'))).toBe(1);
    expect(streak.note(refused(0x1_0000_0031n, 'another error'))).toBe(1);
    expect(streak.note(refused(0x1_0000_0031n, 'another error'))).toBe(2);
  });

  it('is named by its end LSN, its tables and its error, and the agent says exactly how to skip it', () => {
    const failure = TransactionFailure.of(txn({ tables: [{ relationId: 1, schema: 'public', table: 'items' }] }), 'store', dbError('23514', 'no'));
    expect(failure.message).toBe('the transaction ending at 1/30 (xid 42, public.items) cannot be stored: no (SQLSTATE 23514)');
    expect(retryKind(failure)).toBe('store_write_error');
    const message = poisonMessage(failure, 3);
    expect(message).toContain('history has stopped: the transaction ending at 1/30');
    expect(message).toContain(`${skipCommand(0x1_0000_0030n)}, then start the agent again`);
    expect(skipCommand(0x1_0000_0030n)).toBe(`pgtimewarp skip-transaction 1/30 --reason '<why>'`);
    expect(message).toContain('the tables it changed (public.items)');
  });

  it('that could not be decoded leaves its tables unknown: a gap for every table recording at its commit', () => {
    const undecoded = txn({ failure: new Error('bad payload'), tables: [{ relationId: 1, schema: 'public', table: 'items' }] });
    const failure = TransactionFailure.of(undecoded, 'decode', undecoded.failure);
    expect(failure.tables).toBeNull();
    expect(retryKind(failure)).toBe('decode_error');
    expect(poisonMessage(failure, 3)).toContain('every tracked table');
    // not "old" (untracked by then), not "later" (tracked after it)
    expect(gapTables(undecoded, tracked)).toEqual([{ relationId: 1, schema: 'public', table: 'items' }]);
    const old = [{ relationId: 2, schema: 'public', table: 'old' }];
    expect(gapTables(txn({ tables: old }), tracked)).toEqual(old);
  });
});

describe('tracking claims', () => {
  const claim = (over: Partial<TrackingEvent>): TrackingEvent => ({ action: 'track', nodeId: 'n1', schema: 'public', table: 'items', lsn: 100n, ...over });
  // a name may have had several incarnations: the claim may be about any
  const lookup = [...tracked, { ...tracked[0]!, trackedFromLsn: 50n, untrackedLsn: 60n }];

  it('hold only when the catalog shows the very same tracking', () => {
    expect(catalogShows(claim({}), 'n1', lookup)).toBe(true);
    expect(catalogShows(claim({ action: 'untrack', table: 'old', lsn: 500n }), 'n1', lookup)).toBe(true);
    expect(catalogShows(claim({ action: 'untrack', lsn: 60n }), 'n1', lookup)).toBe(true);
    expect(catalogShows(claim({ lsn: 101n }), 'n1', lookup)).toBe(false);
    expect(catalogShows(claim({ action: 'untrack' }), 'n1', lookup)).toBe(false);
    expect(catalogShows(claim({ table: 'nonesuch' }), 'n1', lookup)).toBe(false);
    expect(catalogShows(claim({ nodeId: 'n2' }), 'n1', lookup)).toBe(false);
  });

  it('that fail are reported at most once an interval, the next report counting those held back', () => {
    const throttle = new Throttle(60_000);
    expect(throttle.take('forged', 0)).toBe(0);
    expect(throttle.take('forged', 1_000)).toBeNull();
    expect(throttle.take('forged', 2_000)).toBeNull();
    expect(throttle.take('other', 2_000)).toBe(0);
    expect(throttle.take('forged', 61_000)).toBe(2);
    expect(throttle.take('forged', 62_000)).toBeNull();
  });
});
