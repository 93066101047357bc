// The agent's metrics (agent/metrics.ts) without an agent: the lag
// bookkeeping, and what the observer's callbacks make of a scripted run.

import { describe, expect, it } from 'vitest';

import { AssemblyError } from '../../agent/assemble.js';
import { AgentMetrics, LagTracker } from '../../agent/metrics.js';
import { retryKind } from '../../agent/run.js';
import { StoreWriteError } from '../../agent/writer.js';

const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);
const at = (ms: number): Date => new Date(T0 + ms);

/** The value of one sample line, e.g. sample(text, 'pgtimewarp_agent_lag_seconds'). */
function sample(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  if (line === undefined) throw new Error(`no sample ${series} in\n${text}`);
  return Number(line.slice(series.length + 1));
}

describe('LagTracker', () => {
  it('lag in seconds: now minus the oldest commit received and not stored, 0 when all are stored', () => {
    const lag = new LagTracker();
    expect(lag.lagSeconds(T0)).toBe(0);
    lag.received(100n, at(0));
    lag.received(200n, at(500));
    lag.received(300n, at(900));
    expect(lag.pendingTransactions).toBe(3);
    expect(lag.lagSeconds(T0 + 2000)).toBe(2);
    lag.stored(200n);
    expect(lag.pendingTransactions).toBe(1);
    expect(lag.lagSeconds(T0 + 2000)).toBeCloseTo(1.1, 9);
    lag.stored(300n);
    expect(lag.lagSeconds(T0 + 60_000)).toBe(0);
  });

  it('commit times out of LSN order: the oldest time counts, not the lowest LSN', () => {
    const lag = new LagTracker();
    lag.received(100n, at(1000));
    lag.received(200n, at(400)); // committed earlier, queued later for the WAL
    expect(lag.lagSeconds(T0 + 3000)).toBeCloseTo(2.6, 9);
    lag.stored(100n);
    expect(lag.lagSeconds(T0 + 3000)).toBeCloseTo(2.6, 9);
  });

  it('a clock behind the commit times reads 0, not a negative lag', () => {
    const lag = new LagTracker();
    lag.received(100n, at(5000));
    expect(lag.lagSeconds(T0)).toBe(0);
  });

  it('after a reconnection: transactions received again count once; those already stored are ignored', () => {
    const lag = new LagTracker();
    lag.received(100n, at(0));
    lag.received(200n, at(100));
    lag.stored(100n);
    // the stream starts again from the checkpoint (100): 200 arrives again, then 300
    lag.received(100n, at(0));
    lag.received(200n, at(100));
    lag.received(300n, at(200));
    expect(lag.pendingTransactions).toBe(2);
    expect(lag.lagSeconds(T0 + 1100)).toBe(1);
    lag.stored(300n);
    expect(lag.pendingTransactions).toBe(0);
  });

  it('a heartbeat stores everything before it', () => {
    const lag = new LagTracker();
    lag.received(100n, at(0));
    lag.stored(150n);
    expect(lag.lagSeconds(T0 + 1000)).toBe(0);
    expect(lag.confirmedLsn).toBe(150n);
  });

  it('lag in bytes: the server position minus the confirmed one, never negative, neither going back', () => {
    const lag = new LagTracker();
    expect(lag.lagBytes()).toBe(0);
    lag.serverPosition(1000n);
    expect(lag.lagBytes()).toBe(1000);
    lag.stored(400n);
    expect(lag.lagBytes()).toBe(600);
    lag.serverPosition(900n); // an older report arriving late
    expect(lag.serverSentLsn).toBe(1000n);
    lag.stored(300n);
    expect(lag.confirmedLsn).toBe(400n);
    lag.stored(1200n); // a heartbeat past the last report
    expect(lag.lagBytes()).toBe(0);
  });
});

describe('AgentMetrics', () => {
  it('turns the observer callbacks into the metric families', async () => {
    let now = T0;
    const metrics = new AgentMetrics(() => now);
    metrics.serverPosition(0x1_0000_0000n);
    metrics.received(0xFFFF_F000n, at(0));
    metrics.received(0xFFFF_F800n, at(200));
    now = T0 + 1500;
    let text = await metrics.metrics();
    expect(sample(text, 'pgtimewarp_agent_lag_seconds')).toBe(1.5);
    expect(sample(text, 'pgtimewarp_agent_lag_bytes')).toBe(0x1_0000_0000);
    expect(sample(text, 'pgtimewarp_agent_pending_transactions')).toBe(2);

    metrics.applied({ transactions: 2, versions: 7, bytes: 300, lsn: 0xFFFF_F800n, lastCommitTime: at(200), writeSeconds: 0.02 });
    metrics.heartbeat(0x1_0000_0000n, at(1400), 0.003);
    metrics.retry('store_write_error');
    metrics.retry('store_write_error');
    text = await metrics.metrics();
    expect(sample(text, 'pgtimewarp_agent_lag_seconds')).toBe(0);
    expect(sample(text, 'pgtimewarp_agent_lag_bytes')).toBe(0);
    expect(sample(text, 'pgtimewarp_agent_applied_lsn_bytes')).toBe(0xFFFF_F800);
    expect(sample(text, 'pgtimewarp_agent_confirmed_lsn_bytes')).toBe(0x1_0000_0000);
    expect(sample(text, 'pgtimewarp_agent_server_sent_lsn_bytes')).toBe(0x1_0000_0000);
    expect(sample(text, 'pgtimewarp_agent_applied_transactions_total')).toBe(2);
    expect(sample(text, 'pgtimewarp_agent_applied_versions_total')).toBe(7);
    expect(sample(text, 'pgtimewarp_agent_applied_bytes_total')).toBe(300);
    expect(sample(text, 'pgtimewarp_agent_batch_transactions_bucket{le="1"}')).toBe(0);
    expect(sample(text, 'pgtimewarp_agent_batch_transactions_bucket{le="2"}')).toBe(1);
    expect(sample(text, 'pgtimewarp_agent_store_write_duration_seconds_count{kind="batch"}')).toBe(1);
    expect(sample(text, 'pgtimewarp_agent_store_write_duration_seconds_bucket{le="0.025",kind="batch"}')).toBe(1);
    expect(sample(text, 'pgtimewarp_agent_store_write_duration_seconds_bucket{le="0.01",kind="batch"}')).toBe(0);
    expect(sample(text, 'pgtimewarp_agent_store_write_duration_seconds_count{kind="heartbeat"}')).toBe(1);
    expect(sample(text, 'pgtimewarp_agent_heartbeats_total')).toBe(1);
    expect(sample(text, 'pgtimewarp_agent_retries_total{kind="store_write_error"}')).toBe(2);
    expect(sample(text, 'pgtimewarp_agent_last_heartbeat_timestamp_seconds')).toBe((T0 + 1400) / 1000);
    expect(sample(text, 'pgtimewarp_agent_last_applied_commit_timestamp_seconds')).toBe((T0 + 200) / 1000);
  });

  it('every kind runAgent retries after is exported from the start, at 0', async () => {
    const text = await new AgentMetrics().metrics();
    for (const err of [new AssemblyError('x'), new StoreWriteError('x'), new Error('connection lost')]) {
      expect(sample(text, `pgtimewarp_agent_retries_total{kind="${retryKind(err)}"}`)).toBe(0);
    }
  });

  it('a callback given nonsense does not throw', () => {
    const metrics = new AgentMetrics();
    expect(() => metrics.applied({ transactions: -1, versions: -5, bytes: Number.NaN, lsn: -1n, lastCommitTime: new Date(Number.NaN), writeSeconds: -1 })).not.toThrow();
    expect(() => metrics.retry('')).not.toThrow();
    expect(() => metrics.heartbeat(0n, new Date(Number.NaN), Number.NaN)).not.toThrow();
  });
});
