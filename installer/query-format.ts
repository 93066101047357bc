// How the query commands' results read: text for people, one JSON document
// for scripts.  No database work here (that is installer/query.ts).
//
// JSON output: the result objects as they are (camelCase fields), with the
// rows and values PostgreSQL printed spliced in verbatim (RawJson), so a
// numeric with 40 digits comes out with 40 digits.  Notices go to stderr
// as they arrive, and are also listed under "notices".

import { quoteLiteral } from './install-sql.js';
import { formatBytes, formatDuration, RawJson, renderTable, stringifyJson } from './output.js';
import type { AsofResult, DiffResult, DiffVersion, StatusResult, TrackResult, UntrackResult } from './query.js';

export function formatTrack(r: TrackResult, json: boolean): string {
  if (json) return stringifyJson({ table: r.table.display, lsn: r.lsn, notices: r.notices });
  return `tracking ${r.table.display}: its history is complete from LSN ${r.lsn}`;
}

export function formatUntrack(r: UntrackResult, json: boolean): string {
  if (json) return stringifyJson({ table: r.table.display, tracking: false, notices: r.notices });
  return `stopped tracking ${r.table.display}; its history stays queryable ` +
    `(SELECT pgtimewarp_forget(${quoteLiteral(r.table.display)}) deletes it)`;
}

export function formatStatus(r: StatusResult, json: boolean): string {
  if (json) return stringifyJson(r.tables);
  if (r.tables.length === 0) {
    return 'no tracked tables visible to this role; start with: pgtimewarp track <table>';
  }
  const rows = r.tables.map((t) => [
    `${t.schema}.${t.table}`,
    t.tracking ? 'tracking' : `stopped at LSN ${t.untrackedLsn}`,
    `${t.trackedFromTs} (LSN ${t.trackedFromLsn})`,
    String(t.rowVersions),
  ]);
  const lines = [renderTable(['table', 'state', 'tracked since', 'versions'], rows), ''];
  // every row carries the node's one checkpoint
  const first = r.tables[0]!;
  if (first.confirmedLsn === null) {
    lines.push('agent: no checkpoint stored yet, so history is complete only up to where tracking began; ' +
      'is the agent running? (pgtimewarp doctor)');
  } else {
    const lag: string[] = [];
    if (first.lagSeconds !== null) lag.push(first.lagSeconds === 0 ? 'lag 0 s (caught up)' : `lag at most ${formatLagSeconds(first.lagSeconds)}`);
    if (first.lagBytes !== null) lag.push(`the source has written ${formatBytes(first.lagBytes)} of WAL since`);
    lines.push(`agent: history is complete up to ${first.confirmedTs} (LSN ${first.confirmedLsn})${lag.map((l) => `; ${l}`).join('')}`);
  }
  return lines.join('\n');
}

/** 0.42 -> "0.4 s", 75 -> "1 min 15 s": tenths while it is under a minute. */
function formatLagSeconds(seconds: number): string {
  return seconds < 59.95 ? `${seconds.toFixed(1)} s` : formatDuration(seconds);
}

export function formatAsof(r: AsofResult, json: boolean): string {
  const when = r.at !== undefined ? `at ${r.at}` : `at LSN ${r.lsn}`;
  if (json) {
    return stringifyJson({
      table: r.table.display, key: new RawJson(r.key), at: r.at, lsn: r.lsn,
      found: r.row !== null, row: r.row === null ? null : new RawJson(r.row), notices: r.notices,
    });
  }
  if (r.row === null) return `no row with key ${r.key} existed in ${r.table.display} ${when}`;
  return r.row;
}

/** What a version did, and its values: per changed column "old -> new". */
function describeVersion(v: DiffVersion): string[] {
  switch (v.op) {
    case 'delete':
      return ['row deleted'];
    case 'truncate':
      return ['table truncated: row removed'];
    case 'baseline':
    case 'insert': {
      const head = v.op === 'baseline' ? 'row as it was when tracking began:' : 'row inserted:';
      return [head, ...v.changes.map((c) => `  ${c.column}: ${c.new ?? '(absent)'}`)];
    }
    case 'update': {
      if (v.changes.length === 0) return ['updated; no column changed'];
      // no previous version (the key moved here from another): show the values
      if (!v.hasPrevious) {
        return ['row (no earlier version of this key):', ...v.changes.map((c) => `  ${c.column}: ${c.new ?? '(absent)'}`)];
      }
      return v.changes.map((c) => `${c.column}: ${c.old ?? '(absent)'} -> ${c.new ?? '(absent)'}`);
    }
  }
}

export function formatDiff(r: DiffResult, json: boolean): string {
  if (json) {
    return stringifyJson({
      table: r.table.display, key: new RawJson(r.key), from: r.from, to: r.to,
      versions: r.versions.map((v) => ({
        ...v,
        row: v.row === null ? null : new RawJson(v.row),
        changes: v.changes.map((c) => ({
          column: c.column,
          old: c.old === undefined ? undefined : new RawJson(c.old),
          new: c.new === undefined ? undefined : new RawJson(c.new),
        })),
      })),
      notices: r.notices,
    });
  }
  const header = `${r.table.display} ${r.key} from ${r.from} to ${r.to}`;
  if (r.versions.length === 0) return `${header}: no version of this row in that time`;
  const lines = [`${header}: ${r.versions.length} version${r.versions.length === 1 ? '' : 's'}`];
  for (const v of r.versions) {
    lines.push('', `${v.validFromTs}  ${v.op}  (LSN ${v.validFromLsn})`);
    for (const line of describeVersion(v)) lines.push(`    ${line}`);
  }
  return lines.join('\n');
}
