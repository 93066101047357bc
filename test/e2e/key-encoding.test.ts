// The canonical key encoding has two implementations that must agree byte
// for byte: the extension's, from the JSON a caller passes
// (pgtimewarp_pk_key), and the agent's, from the text the walsender sends
// (agent/key.ts).  For keys of many types and awkward values, this test
// computes both and compares them.
//
// The agent's input is the server's text output under the canonical
// settings, read here through a connection with those settings and every
// type parser switched off, which is what a walsender with the same settings
// prints.  The caller's JSON is built in a session with deliberately
// different DateStyle / TimeZone / IntervalStyle, as the value's text in
// that session, to show the key does not depend on the caller's settings.

import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { canonicalKey, canonicalOptions } from '../../agent/key.js';
import { useCluster } from '../support/use-cluster.js';

const cluster = useCluster();

/** Every value as the raw text the server sent. */
const rawText: pg.CustomTypesConfig = { getTypeParser: () => (value: string) => value };

interface KeyCase {
  /** SQL type of the single primary key column. */
  type: string;
  /** SQL literals of values to key by. */
  values: string[];
}

const CASES: KeyCase[] = [
  { type: 'smallint', values: ['0', '-32768', '32767'] },
  { type: 'integer', values: ['42', '-1', '2147483647'] },
  { type: 'bigint', values: ['9007199254740993', '-9223372036854775808'] },
  { type: 'numeric', values: ['1.50', '100', '0.000', '-2.500', '12345678901234567890.123456789012345678900', '1e-20', "'NaN'"] },
  { type: 'real', values: ["'-0'", '0.1', "'Infinity'", "'NaN'", '3.4e38'] },
  { type: 'double precision', values: ["'-0'", '0.1', '1e300', "'-Infinity'", '5e-324'] },
  { type: 'text', values: [`'plain'`, `'with "quotes", commas, {braces}'`, `E'tab\\tnewline\\nbackslash\\\\'`, `'日本語 🎉 é'`, `''`] },
  { type: 'character(5)', values: [`'ab'`, `'abcde'`] },
  { type: 'boolean', values: ['true', 'false'] },
  { type: 'date', values: [`'2024-02-29'`, `'infinity'`, `'0044-03-15 BC'`] },
  { type: 'timestamp', values: [`'2024-05-01 12:34:56.789'`, `'-infinity'`] },
  { type: 'timestamptz', values: [`'2024-05-01 12:00+02'`, `'2024-12-31 23:59:59.999999-11'`] },
  { type: 'time', values: [`'23:59:59.5'`] },
  { type: 'timetz', values: [`'10:00+05:30'`] },
  { type: 'interval', values: [`'1 year 2 months -3 days 04:05:06'`, `'-1 day'`] },
  { type: 'uuid', values: [`'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'`] },
  { type: 'bytea', values: [`'\\x00ff10'`, `''`] },
  { type: 'inet', values: [`'192.168.0.1'`, `'::1/128'`] },
  { type: 'macaddr', values: [`'08:00:2B:01:02:03'`] },
  { type: 'key_mood', values: [`'happy'`] },
  { type: 'key_money', values: ['10.50', '7'] },
  { type: 'integer[]', values: [`'{1,2,3}'`, `'{}'`] },
  { type: 'text[]', values: [`'{"a b",NULL,"c,d"}'`] },
];

/** pg_type.oid of a type's base type (a domain's base type, else itself). */
async function baseTypeOid(client: pg.Client, type: string): Promise<number> {
  const res = await client.query<{ oid: string }>(
    `SELECT coalesce(nullif(t.typbasetype, 0), t.oid)::int AS oid FROM pg_type t WHERE t.oid = $1::regtype`,
    [type],
  );
  return Number(res.rows[0]?.oid);
}

describe('canonical key encoding', () => {
  let agentSide: pg.Client;
  let callerSide: pg.Client;

  beforeAll(async () => {
    const setup = await cluster().connect();
    await setup.query(`CREATE DATABASE keys`);
    await setup.end();

    agentSide = new pg.Client({ connectionString: cluster().url('keys'), options: canonicalOptions(), types: rawText });
    callerSide = new pg.Client({ connectionString: cluster().url('keys'), types: rawText });
    await agentSide.connect();
    await callerSide.connect();
    await callerSide.query(`CREATE EXTENSION pgtimewarp CASCADE`);
    await callerSide.query(`CREATE TYPE key_mood AS ENUM ('sad', 'happy')`);
    await callerSide.query(`CREATE DOMAIN key_money AS numeric CHECK (VALUE >= 0)`);
    // a caller whose settings differ from the canonical ones in every way that matters
    await callerSide.query(`SET DateStyle = 'SQL, DMY'`);
    // (not a zone printed as an ambiguous abbreviation: SQL style prints
    // Asia/Kolkata as "IST", which PostgreSQL reads back as Israel time)
    await callerSide.query(`SET TimeZone = 'America/New_York'`);
    await callerSide.query(`SET IntervalStyle = 'sql_standard'`);
    await callerSide.query(`SET extra_float_digits = 0`);
    await callerSide.query(`SET bytea_output = 'escape'`);
  });

  afterAll(async () => {
    await agentSide?.end();
    await callerSide?.end();
  });

  it('uses the settings it names on the agent connection', async () => {
    const res = await agentSide.query<{ s: string }>(
      `SELECT string_agg(name || '=' || setting, ';' ORDER BY name) AS s FROM pg_settings
        WHERE name IN ('DateStyle', 'IntervalStyle', 'TimeZone', 'extra_float_digits', 'bytea_output',
                       'xmloption', 'lc_monetary')`,
    );
    expect(res.rows[0]?.s).toBe(
      'DateStyle=ISO, YMD;IntervalStyle=postgres;TimeZone=UTC;bytea_output=hex;extra_float_digits=3;lc_monetary=C;xmloption=content',
    );
  });

  for (const [index, { type, values }] of CASES.entries()) {
    it(`agrees with the extension for ${type} keys`, async () => {
      const table = `key_case_${index}`;
      await callerSide.query(`CREATE TABLE ${table} (k ${type} PRIMARY KEY)`);
      const oid = await baseTypeOid(callerSide, type);

      for (const literal of values) {
        const agentText = (await agentSide.query<{ v: string }>(`SELECT (${literal})::${type} AS v`)).rows[0]?.v;
        const callerText = (await callerSide.query<{ v: string }>(`SELECT (${literal})::${type} AS v`)).rows[0]?.v;
        expect(agentText, `${type} ${literal}`).toBeTypeOf('string');

        const fromJson = await callerSide.query<{ key: string[] }>(
          `SELECT pgtimewarp_pk_key($1::regclass, jsonb_build_object('k', $2::text))::text[] AS key`,
          [table, callerText],
        );
        const extensionKey = fromJson.rows[0]?.key;
        // node-pg leaves text[] unparsed with rawText; compare the array text
        const agentKey = (
          await agentSide.query<{ key: string }>(`SELECT $1::text[] AS key`, [canonicalKey([agentText as string], [oid])])
        ).rows[0]?.key;
        expect(extensionKey, `${type} ${literal}: caller wrote ${callerText}`).toBe(agentKey);
      }
    });
  }

  it('finds one key for values the type treats as equal', async () => {
    const res = await callerSide.query<{ same: string }>(
      `SELECT (pgtimewarp_pk_key('key_case_3', '{"k": 1.5}') = pgtimewarp_pk_key('key_case_3', '{"k": "1.500"}')
           AND pgtimewarp_pk_key('key_case_5', '{"k": "-0"}') = pgtimewarp_pk_key('key_case_5', '{"k": 0}'))::text AS same`,
    );
    expect(res.rows[0]?.same).toBe('true');
    expect(canonicalKey(['1.500', '-0', '-0'], [1700, 701, 700])).toEqual(['1.5', '0', '0']);
  });
});
