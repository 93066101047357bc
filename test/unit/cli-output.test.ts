// The wording of the query commands and doctor, without a database: JSON
// that keeps PostgreSQL's numbers exact, the diff timeline, and doctor's
// report with the checks that could not run grouped under their cause.

import pg from 'pg';
import { describe, expect, it } from 'vitest';

import { grade, parsePluginList, type DoctorReport } from '../../installer/doctor-checks.js';
import { formatDoctorReport } from '../../installer/doctor.js';
import { errorJson, formatBytes, formatDuration, formatError, formatNotice, RawJson, stringifyJson } from '../../installer/output.js';
import { formatAsof, formatDiff, formatStatus } from '../../installer/query-format.js';
import type { DiffResult, StatusRow } from '../../installer/query.js';

const table = { display: 'public.accounts', schema: 'public', name: 'accounts' };

describe('stringifyJson', () => {
  it('splices PostgreSQL\'s JSON text in verbatim and leaves undefined out', () => {
    const row = '{"id": 9007199254740993, "v": 1234567890123456789012345678901234567890.50}';
    expect(stringifyJson({ row: new RawJson(row), at: undefined, n: [1, null, 'x"y'] }))
      .toBe(`{"row":${row},"n":[1,null,"x\\"y"]}`);
  });
});

describe('a failed command', () => {
  const pgError = Object.assign(new pg.DatabaseError('table "public.t" is not tracked by pgtimewarp', 0, 'error'), {
    severity: 'ERROR', code: '55000', detail: 'Nothing was recorded.', hint: 'Track it first.', file: 'pgtimewarp.c', line: '42',
  });

  it('on stderr: one clean line, PostgreSQL\'s DETAIL and HINT under it', () => {
    expect(formatError(pgError)).toBe('pgtimewarp: ERROR: table "public.t" is not tracked by pgtimewarp\nDETAIL: Nothing was recorded.\nHINT: Track it first.');
    expect(formatError(new Error('no source database'))).toBe('pgtimewarp: no source database');
  });

  it('under --json: one JSON object with PostgreSQL\'s fields (not its source location)', () => {
    expect(JSON.parse(errorJson(pgError, 'asof'))).toEqual({
      ok: false, command: 'asof',
      error: { message: 'table "public.t" is not tracked by pgtimewarp', severity: 'ERROR', code: '55000', detail: 'Nothing was recorded.', hint: 'Track it first.' },
    });
    expect(JSON.parse(errorJson(new Error('no source database'), undefined))).toEqual({ ok: false, error: { message: 'no source database' } });
  });
});

describe('figures', () => {
  it('bytes as pg_size_pretty would, durations without a zero remainder', () => {
    expect(formatBytes(512)).toBe('512 bytes');
    expect(formatBytes(1536)).toBe('1.5 kB');
    expect(formatBytes(40 * 1024 ** 2)).toBe('40 MB');
    expect(formatBytes(1024 ** 3)).toBe('1.0 GB');
    expect(formatDuration(59.6)).toBe('1 min');
    expect(formatDuration(61)).toBe('1 min 1 s');
    expect(formatDuration(7200)).toBe('2 h');
    expect(formatDuration(90_000)).toBe('1 d 1 h');
  });

  it('notices read like the errors cli.ts prints', () => {
    expect(formatNotice({ severity: 'WARNING', message: 'm', detail: 'd.', hint: 'h.' })).toBe('pgtimewarp: WARNING: m\nDETAIL: d.\nHINT: h.');
    expect(formatNotice({ severity: 'NOTICE', message: 'm' })).toBe('pgtimewarp: NOTICE: m');
  });
});

describe('asof and diff wording', () => {
  it('asof: the row as printed, or which key did not exist when', () => {
    const base = { table, key: '{"id": 42}', at: '2026-11-20 09:42:00+00', notices: [] };
    expect(formatAsof({ ...base, row: '{"id": 42, "v": 1.50}' }, false)).toBe('{"id": 42, "v": 1.50}');
    expect(formatAsof({ ...base, row: null }, false)).toBe('no row with key {"id": 42} existed in public.accounts at 2026-11-20 09:42:00+00');
    expect(formatAsof({ ...base, row: '{"id": 42, "v": 1.50}' }, true))
      .toBe('{"table":"public.accounts","key":{"id": 42},"at":"2026-11-20 09:42:00+00","found":true,"row":{"id": 42, "v": 1.50},"notices":[]}');
  });

  it('diff: values for a baseline, old -> new for an update, what a delete or a key move did', () => {
    const v = { validToLsn: null, validToTs: null, hasPrevious: true };
    const result: DiffResult = {
      table, key: '{"id": 42}', from: 'F', to: 'T', notices: [],
      versions: [
        { ...v, op: 'baseline', validFromLsn: '0/10', validFromTs: 't1', row: '{}', hasPrevious: false,
          changes: [{ column: 'id', new: '42' }, { column: 'note', new: 'null' }] },
        { ...v, op: 'update', validFromLsn: '0/20', validFromTs: 't2', row: '{}',
          changes: [{ column: 'note', old: 'null', new: '"x"' }, { column: 'added', new: '1' }] },
        { ...v, op: 'delete', validFromLsn: '0/30', validFromTs: 't3', row: null, changes: [] },
        { ...v, op: 'update', validFromLsn: '0/40', validFromTs: 't4', row: '{}', hasPrevious: false,
          changes: [{ column: 'id', new: '42' }] },
      ],
    };
    expect(formatDiff(result, false)).toBe([
      'public.accounts {"id": 42} from F to T: 4 versions',
      '',
      't1  baseline  (LSN 0/10)',
      '    row as it was when tracking began:',
      '      id: 42',
      '      note: null',
      '',
      't2  update  (LSN 0/20)',
      '    note: null -> "x"',
      '    added: (absent) -> 1',
      '',
      't3  delete  (LSN 0/30)',
      '    row deleted',
      '',
      't4  update  (LSN 0/40)',
      '    row (no earlier version of this key):',
      '      id: 42',
    ].join('\n'));
    expect(formatDiff({ ...result, versions: [] }, false)).toBe('public.accounts {"id": 42} from F to T: no version of this row in that time');
  });
});

describe('status wording', () => {
  const row: StatusRow = {
    schema: 'public', table: 'accounts', tracking: true, trackedFromLsn: '0/1A2B3C4', trackedFromTs: '2026-11-20 08:00:00+00',
    untrackedLsn: null, rowVersions: 42, confirmedLsn: '0/2000000', confirmedTs: '2026-11-20 09:00:00+00', lagBytes: 1536, lagSeconds: 3.24,
  };

  it('the lag in seconds and in bytes, "caught up" at 0; minutes past a minute', () => {
    expect(formatStatus({ tables: [row], notices: [] }, false).split('\n').at(-1)).toBe(
      'agent: history is complete up to 2026-11-20 09:00:00+00 (LSN 0/2000000); lag at most 3.2 s; the source has written 1.5 kB of WAL since',
    );
    expect(formatStatus({ tables: [{ ...row, lagBytes: 0, lagSeconds: 0 }], notices: [] }, false)).toMatch(
      /; lag 0 s \(caught up\); the source has written 0 bytes of WAL since$/,
    );
    expect(formatStatus({ tables: [{ ...row, lagSeconds: 75 }], notices: [] }, false)).toMatch(/; lag at most 1 min 15 s; /);
  });

  it('--json carries lagSeconds with lagBytes', () => {
    expect(JSON.parse(formatStatus({ tables: [row], notices: [] }, true))).toEqual([expect.objectContaining({ lagBytes: 1536, lagSeconds: 3.24 })]);
  });
});

describe('doctor', () => {
  it('reads output_plugin_libraries as the list PostgreSQL does', () => {
    expect(parsePluginList('pgoutput, test_decoding,"wal2json"')).toEqual(['pgoutput', 'test_decoding', 'wal2json']);
    expect(parsePluginList('')).toEqual([]);
  });

  it('grades a figure against its limits; unknown is not a finding', () => {
    expect([grade(10, 10, 20), grade(11, 10, 20), grade(21, 10, 20), grade(null, 10, 20)]).toEqual(['ok', 'warning', 'error', 'ok']);
  });

  it('prints one line per check, meaning and fix under the others, and groups what could not run', () => {
    const report: DoctorReport = {
      healthy: false, nodeId: null, slot: 'pgtimewarp',
      findings: [
        { check: 'source_connection', status: 'error', message: 'could not connect', meaning: 'M.', fix: 'F.' },
        { check: 'store_connection', status: 'ok', message: 'connected' },
        { check: 'health_events', status: 'warning', message: '2 events', meaning: 'M2.', fix: 'F2.' },
        { check: 'wal_level', status: 'error', message: 'not checked: x', blockedBy: 'source_connection', meaning: 'm', fix: 'f' },
        { check: 'slot', status: 'error', message: 'not checked: x', blockedBy: 'source_connection', meaning: 'm', fix: 'f' },
      ],
    };
    expect(formatDoctorReport(report)).toBe([
      'pgtimewarp doctor: node (unknown), slot pgtimewarp',
      '',
      '[FAIL] source_connection: could not connect',
      '       meaning: M.',
      '       fix: F.',
      '[ ok ] store_connection: connected',
      '[warn] health_events: 2 events',
      '       meaning: M2.',
      '       fix: F2.',
      '[FAIL] not checked until source_connection is fixed: wal_level, slot',
      '',
      'NOT healthy: 3 error(s), 1 warning(s)',
    ].join('\n'));
  });
});
