// Output helpers shared by the query commands and doctor: PostgreSQL notices
// and errors as the CLI shows them, plain text tables, byte and duration
// figures, and JSON that can carry PostgreSQL's own JSON text unchanged.

import pg from 'pg';

/** A NOTICE or WARNING PostgreSQL sent while a command ran. */
export interface PgNotice {
  severity: string;
  message: string;
  detail?: string;
  hint?: string;
}

/**
 * A notice as the CLI prints it on stderr, in the shape the top-level
 * handler in cli.ts prints errors.
 */
export function formatNotice(notice: PgNotice): string {
  const lines = [`pgtimewarp: ${notice.severity}: ${notice.message}`];
  if (notice.detail) lines.push(`DETAIL: ${notice.detail}`);
  if (notice.hint) lines.push(`HINT: ${notice.hint}`);
  return lines.join('\n');
}

/** An error as the top-level handler in cli.ts prints it on stderr: one clean line, PostgreSQL's DETAIL and HINT under it. */
export function formatError(err: unknown): string {
  if (err instanceof pg.DatabaseError) {
    return formatNotice({ severity: err.severity ?? 'ERROR', message: err.message, detail: err.detail, hint: err.hint });
  }
  return `pgtimewarp: ${err instanceof Error ? err.message : String(err)}`;
}

/** The fields of a PostgreSQL error a script may want; the server's source location is left out. */
const PG_ERROR_FIELDS = ['severity', 'code', 'detail', 'hint', 'position', 'where', 'schema', 'table', 'column', 'dataType', 'constraint'] as const;

/**
 * A failed command's one JSON object, for stdout under --json:
 * {"ok":false,"command":...,"error":{"message":...}}, with PostgreSQL's
 * fields (code is the SQLSTATE) when PostgreSQL raised it.
 */
export function errorJson(err: unknown, command: string | undefined): string {
  const error: Record<string, unknown> = { message: err instanceof Error ? err.message : String(err) };
  if (err instanceof pg.DatabaseError) {
    for (const field of PG_ERROR_FIELDS) error[field] = err[field];
  }
  return stringifyJson({ ok: false, command, error });
}

/**
 * JSON text PostgreSQL printed (a jsonb value cast to text), spliced into
 * our JSON output as it is.  JSON.parse would turn a 40-digit numeric or a
 * bigint above 2^53 into a float; the history must come out exactly as it
 * was stored.
 */
export class RawJson {
  constructor(readonly text: string) {}
}

/**
 * JSON.stringify for our results, with RawJson values spliced in verbatim.
 * Object properties whose value is undefined are left out, as JSON.stringify
 * does.  Compact: one document per line, for scripts.
 */
export function stringifyJson(value: unknown): string {
  if (value instanceof RawJson) return value.text;
  if (value === null || value === undefined) return 'null';
  if (Array.isArray(value)) return `[${value.map((v) => stringifyJson(v)).join(',')}]`;
  if (typeof value === 'object') {
    const members = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${JSON.stringify(k)}:${stringifyJson(v)}`);
    return `{${members.join(',')}}`;
  }
  if (typeof value === 'bigint') return value.toString();
  return JSON.stringify(value);
}

/**
 * Rows as a text table with a header, columns padded to their widest cell.
 * The last column is not padded, so lines carry no trailing blanks.
 */
export function renderTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ');
  return [line(header), ...rows.map(line)].join('\n');
}

const BYTE_UNITS = ['bytes', 'kB', 'MB', 'GB', 'TB', 'PB'] as const;

/** 1536 -> "1.5 kB" (powers of 1024, as pg_size_pretty). */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  if (unit === 0) return `${bytes} bytes`;
  return `${value.toFixed(value < 10 ? 1 : 0)} ${BYTE_UNITS[unit]}`;
}

/** 3725.2 -> "1 h 2 min"; short durations keep their seconds. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const two = (big: number, bigUnit: string, small: number, smallUnit: string): string =>
    small === 0 ? `${big} ${bigUnit}` : `${big} ${bigUnit} ${small} ${smallUnit}`;
  if (s < 3600) return two(Math.floor(s / 60), 'min', s % 60, 's');
  if (s < 86_400) return two(Math.floor(s / 3600), 'h', Math.floor((s % 3600) / 60), 'min');
  return two(Math.floor(s / 86_400), 'd', Math.floor((s % 86_400) / 3600), 'h');
}
