// Storage: bytes per row version in the store (row_versions with its TOAST
// and indexes) against the periods extension's history table (with the
// index an as-of lookup needs: periods creates none) after the same
// workload.  The store keeps a version per change (inserts and delete
// tombstones too, current versions included); periods' history keeps a row
// per update or delete (the old row), and the current rows stay in the
// table itself.  So both "per version" and the total for the workload.

import type pg from 'pg';

import { INGEST_NODE, INGEST_TABLE_SQL, runIngestWorkload, type Backlog } from './backlog.js';
import { fmt, fmtBytes, fmtRatio } from './stats.js';
import { progress, versionWithPeriods } from './support.js';

export interface StoreSize {
  versions: number;
  /** heap + TOAST + indexes of row_versions */
  totalBytes: number;
  heapBytes: number;
  toastBytes: number;
  indexBytes: number;
  /** lsn_time_map, one row per source transaction, for reference */
  lsnTimeMapBytes: number;
}

/** The store's size now (after a drain: the whole workload's history). */
export async function measureStore(store: pg.Client): Promise<StoreSize> {
  await store.query('VACUUM ANALYZE pgtimewarp_store.row_versions');
  const res = await store.query<{ versions: string; total: string; heap: string; toast: string; indexes: string; map: string }>(
    `SELECT (SELECT count(*) FROM pgtimewarp_store.row_versions v JOIN pgtimewarp_store.tracked_relations r
               ON r.relation_id = v.relation_id WHERE r.node_id = $1) AS versions,
            pg_total_relation_size('pgtimewarp_store.row_versions') AS total,
            pg_relation_size('pgtimewarp_store.row_versions') AS heap,
            coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast,
            pg_indexes_size('pgtimewarp_store.row_versions') AS indexes,
            pg_total_relation_size('pgtimewarp_store.lsn_time_map') AS map
       FROM pg_class c WHERE c.oid = 'pgtimewarp_store.row_versions'::regclass`,
    [INGEST_NODE],
  );
  const r = res.rows[0]!;
  return {
    versions: Number(r.versions), totalBytes: Number(r.total), heapBytes: Number(r.heap),
    toastBytes: Number(r.toast), indexBytes: Number(r.indexes), lsnTimeMapBytes: Number(r.map),
  };
}

export interface PeriodsSize {
  historyRows: number;
  /** history heap + TOAST + its index */
  totalBytes: number;
  indexBytes: number;
}

/** The same workload on a system-versioned twin of `ingest` in a database of its own. */
export async function measurePeriods(backlog: Backlog): Promise<PeriodsSize> {
  const section = 'storage';
  await backlog.cluster.psql('CREATE DATABASE periods');
  const db = await backlog.cluster.connect('periods');
  try {
    for (const sql of INGEST_TABLE_SQL.split(';')) await db.query(sql);
    await versionWithPeriods(db, 'ingest');
    progress(section, `the same workload on a table versioned by periods`);
    await runIngestWorkload(db, backlog.sizes, (m) => progress(section, `periods: ${m}`));
    await db.query('VACUUM ANALYZE ingest_history');
    const res = await db.query<{ rows: string; total: string; indexes: string }>(
      `SELECT (SELECT count(*) FROM ingest_history) AS rows, pg_total_relation_size('ingest_history') AS total,
              pg_indexes_size('ingest_history') AS indexes`,
    );
    const r = res.rows[0]!;
    return { historyRows: Number(r.rows), totalBytes: Number(r.total), indexBytes: Number(r.indexes) };
  } finally {
    await db.end();
  }
}

export interface StorageResult {
  changes: number;
  store: StoreSize;
  periods: PeriodsSize | null;
}

export function storageMarkdown(r: StorageResult): string {
  const s = r.store;
  const p = r.periods;
  const storePer = s.totalBytes / s.versions;
  const periodsPer = p === null ? Number.NaN : p.totalBytes / p.historyRows;
  return [
    `The ingest workload (${fmt(r.changes)} row changes); sizes include TOAST and indexes.`,
    '',
    '| history kept in | row versions | total size | bytes per version | ratio to periods |',
    '|---|---|---|---|---|',
    `| pgtimewarp store \`row_versions\` (heap ${fmtBytes(s.heapBytes)}, TOAST ${fmtBytes(s.toastBytes)}, indexes ${fmtBytes(s.indexBytes)}) | ` +
      `${fmt(s.versions)} | ${fmtBytes(s.totalBytes)} | ${fmt(storePer)} | ${fmtRatio(storePer / periodsPer)} |`,
    p === null
      ? '| periods history table | not measured (periods not installed) | | | |'
      : `| periods \`ingest_history\` (+ index on (id, system_time_start): ${fmtBytes(p.indexBytes)}) | ${fmt(p.historyRows)} | ${fmtBytes(p.totalBytes)} | ${fmt(periodsPer)} | 1.00× |`,
    '',
    `The store also keeps \`lsn_time_map\` (a row per source transaction): ${fmtBytes(s.lsnTimeMapBytes)}.`,
  ].join('\n');
}
