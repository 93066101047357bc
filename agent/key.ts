// The canonical encoding of values and primary keys in the store.
//
// The store keeps every value as the text its type's output function prints
// under fixed settings, and a row's key as the text[] of its primary key
// columns' values in key order.  The extension computes keys from the JSON a
// caller passes (pgtimewarp_pk_key() in extension/src/keys.c); the agent
// computes them from the text the walsender sends.  Both must agree byte for
// byte, and test/e2e/key-encoding.test.ts checks that they do.
//
// The rule, in full:
//   1. Values are printed under CANONICAL_SETTINGS.  The agent sets them on
//      its replication connection, so the walsender's text already is
//      canonical; the extension sets them around its own output calls.
//   2. A key value is normalized first where its type's equality treats
//      values as equal that print differently, so that both spellings find
//      the same row: numeric drops trailing fractional zeros (1.50 -> 1.5),
//      float4/float8 print negative zero as 0.  Domains follow their base type.
//   3. The key is the array of those texts in primary key column order.
//   4. In the store's index (row_versions.pk) a key longer than
//      LONG_KEY_BYTES in all is replaced by its digest (indexKey), and kept
//      whole beside it (row_versions.pk_full): a btree entry holds at most
//      about 2,700 bytes, and no key the source accepts may be refused.

import { createHash } from 'node:crypto';

/** Session settings under which values are printed, name -> value. */
export const CANONICAL_SETTINGS: Readonly<Record<string, string>> = Object.freeze({
  DateStyle: 'ISO, YMD',
  IntervalStyle: 'postgres',
  TimeZone: 'UTC',
  extra_float_digits: '3',
  bytea_output: 'hex',
  xmloption: 'content',
  lc_monetary: 'C',
});

/**
 * The settings as a libpq `options` string ("-c name=value ..."), for the
 * replication connection.  Spaces inside a value are escaped as libpq wants.
 */
export function canonicalOptions(): string {
  return Object.entries(CANONICAL_SETTINGS)
    .map(([name, value]) => `-c ${name}=${value.replace(/\\/g, '\\\\').replace(/ /g, '\\ ')}`)
    .join(' ');
}

/** Type OIDs whose key values need normalizing (pg_type.oid, stable across versions). */
export const NUMERIC_OID = 1700;
export const FLOAT4_OID = 700;
export const FLOAT8_OID = 701;

/**
 * The canonical key text of one key column's value, given the value's text
 * output under CANONICAL_SETTINGS and the OID of the column's base type
 * (a domain's base type, not the domain).
 */
export function canonicalKeyValue(text: string, baseTypeOid: number): string {
  switch (baseTypeOid) {
    case NUMERIC_OID:
      return trimNumericScale(text);
    case FLOAT4_OID:
    case FLOAT8_OID:
      return text === '-0' ? '0' : text;
    default:
      return text;
  }
}

/**
 * The store key of a row: its primary key columns' values (text output under
 * CANONICAL_SETTINGS, in primary key order) with their base type OIDs.
 */
export function canonicalKey(values: readonly string[], baseTypeOids: readonly number[]): string[] {
  if (values.length !== baseTypeOids.length) {
    throw new Error(`key has ${values.length} values but ${baseTypeOids.length} column types`);
  }
  return values.map((text, i) => canonicalKeyValue(text, baseTypeOids[i] as number));
}

/**
 * numeric's trim_scale() on numeric_out text: "1.50" -> "1.5", "2.000" -> "2".
 * numeric_out never uses exponents and has no negative zero ("-0.00" cannot
 * be printed), and NaN / Infinity have no fraction, so trimming the text is
 * exactly trim_scale().
 */
function trimNumericScale(text: string): string {
  const point = text.indexOf('.');
  if (point < 0) {
    return text;
  }
  let end = text.length;
  while (end > point + 1 && text[end - 1] === '0') {
    end--;
  }
  return end === point + 1 ? text.slice(0, point) : text.slice(0, end);
}

/**
 * Keys longer than this, in UTF-8 bytes of all their values, are indexed by
 * digest (migrations/3_safe_history.sql; PGTW_LONG_KEY_BYTES in the extension).
 */
export const LONG_KEY_BYTES = 512;

/**
 * The form a canonical key takes in row_versions.pk: the key itself, or
 * for a long key [null, SHA-256 hex] of each value's UTF-8 bytes preceded by
 * their length and a colon.  No key has a null element, so no key takes the
 * digest form itself.  The extension's pgtimewarp_index_key() and the
 * store's pgtimewarp_store.index_key() compute the same.
 */
export function indexKey(key: readonly string[]): Array<string | null> {
  // a UTF-16 code unit is at most 3 UTF-8 bytes: most keys are known short without encoding them
  let units = 0;
  for (const e of key) units += e.length;
  if (units * 3 <= LONG_KEY_BYTES) return [...key];
  const bytes = key.map((e) => Buffer.from(e, 'utf8'));
  if (bytes.reduce((n, b) => n + b.length, 0) <= LONG_KEY_BYTES) return [...key];
  const hash = createHash('sha256');
  for (const b of bytes) {
    hash.update(`${b.length}:`);
    hash.update(b);
  }
  return [null, hash.digest('hex')];
}

/** Whether a key is stored by digest, and so kept whole in pk_full. */
export function isLongKey(key: readonly string[]): boolean {
  return indexKey(key)[0] === null;
}
