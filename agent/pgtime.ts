// PostgreSQL's binary timestamps, as the replication protocol and pgoutput
// send them: int64 microseconds since 2000-01-01 00:00:00 UTC.
//
// The agent keeps commit times exact as bigint microseconds since the Unix
// epoch (timestamptz has microsecond precision, a JavaScript Date only
// milliseconds), and uses Date where milliseconds are enough.

/** Microseconds from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch). */
const PG_EPOCH_UNIX_MICROS = 946_684_800_000_000n;

/** A PostgreSQL binary timestamp -> microseconds since the Unix epoch. */
export function pgTimestampToUnixMicros(pgMicros: bigint): bigint {
  return pgMicros + PG_EPOCH_UNIX_MICROS;
}

/** Microseconds since the Unix epoch -> a PostgreSQL binary timestamp. */
export function unixMicrosToPgTimestamp(unixMicros: bigint): bigint {
  return unixMicros - PG_EPOCH_UNIX_MICROS;
}

/** Microseconds since the Unix epoch -> Date, rounded down to the millisecond. */
export function unixMicrosToDate(unixMicros: bigint): Date {
  // BigInt division truncates toward zero; floor keeps pre-1970 times ordered.
  let millis = unixMicros / 1000n;
  if (unixMicros < 0n && unixMicros % 1000n !== 0n) millis -= 1n;
  return new Date(Number(millis));
}

/** The current time as a PostgreSQL binary timestamp (millisecond resolution). */
export function pgTimestampNow(): bigint {
  return unixMicrosToPgTimestamp(BigInt(Date.now()) * 1000n);
}

/** Microseconds since the Unix epoch -> exact ISO 8601 text in UTC, for timestamptz. */
export function unixMicrosToIso(unixMicros: bigint): string {
  const date = unixMicrosToDate(unixMicros);
  let fraction = unixMicros % 1_000_000n;
  if (fraction < 0n) fraction += 1_000_000n;
  return `${date.toISOString().slice(0, 19)}.${fraction.toString().padStart(6, '0')}Z`;
}
