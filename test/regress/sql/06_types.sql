--
-- Values round-trip exactly: a baseline written by a real pgtimewarp_track
-- comes back from pgtimewarp_asof_row as exactly the row that is there, for
-- numeric with 40 digits, bigint above 2^53, float specials, timestamptz,
-- bytea, arrays, json/jsonb, enums, domains, uuid, unicode text, intervals.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
SET intervalstyle = 'postgres';

CREATE TYPE types_mood AS ENUM ('sad', 'ok', 'très "bien"');
CREATE DOMAIN types_price AS numeric(12,2) CHECK (VALUE > 0);

CREATE TABLE types_t (
    id    int PRIMARY KEY,
    n     numeric,
    big   bigint,
    f8    float8,
    f4    float4,
    ts    timestamptz,
    b     bytea,
    arr   int[],
    tarr  text[],
    j     jsonb,
    js    json,
    mood  types_mood,
    price types_price,
    u     uuid,
    t     text,
    iv    interval
);

INSERT INTO types_t VALUES
    (1, 1234567890123456789012345678901234567890.123, 9007199254740993,
     'NaN', 'NaN', '2024-02-29 12:34:56.789012+05:30', '\x00ff0a5c2722',
     '{1,NULL,3}', ARRAY['a,b', 'say "hi"', NULL, 'back\slash', '{}', 'NULL', ''],
     '{"a": {"b": [1, 2.50, "x", null, true]}, "n": 12345678901234567890.123456789}',
     '{"z": 1,   "a": [1,  2],  "z": "dup"}',
     'très "bien"', 5.5, 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
     E'🐘 時間旅行 e\u0301 ''q'' "dq" back\\slash tab\there\nnewline 👩‍💻',
     '1 year 2 months 3 days 04:05:06.789'),
    (2, 'NaN', -9223372036854775808,
     'Infinity', '-Infinity', 'infinity', '\x',
     '[0:1]={7,8}', '{{"x","y"},{"z",NULL}}',
     '[]', '"scalar"',
     'sad', 0.01, '00000000-0000-0000-0000-000000000000',
     '', '-1 days +02:00:00.000001'),
    (3, -0.000000000000000000000000000000000000000100, 9223372036854775807,
     '-Infinity', 'Infinity', '0044-03-15 12:00:00+00 BC', '\xff',
     '{}', '{}',
     '{"k": "\u00e9 \ud83d\udc18", "small": 1e-7}', '[ ]',
     'ok', 99999.99, 'ffffffff-ffff-ffff-ffff-ffffffffffff',
     'plain', '-178000000 years'),
    (4, 0.1, 0, 0.1, 0.1, '2000-01-01 00:00:00+00', NULL,
     NULL, NULL, 'null', 'null', NULL, NULL, NULL, NULL, '0'),
    (5, -0.0, -1, '-0', '-0', '-infinity', NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
    (6, 1.10, 9007199254740993, 0.30000000000000004, 3.4028235e38, '1999-12-31 23:59:59.999999-12', NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
INSERT INTO types_t (id) VALUES (7);

-- Track it for real, under settings that are far from the canonical ones: the
-- baseline must still be written in the canonical spelling.
BEGIN;
SET LOCAL timezone = 'America/New_York';
SET LOCAL datestyle = 'SQL, DMY';
SET LOCAL intervalstyle = 'sql_standard';
SET LOCAL extra_float_digits = -15;
SET LOCAL bytea_output = 'escape';
SELECT pgtimewarp_track('types_t') IS NOT NULL AS tracked;
COMMIT;

-- History is complete "forever", so as-of now() raises no warning (the
-- warning would name the real tracking time).
CALL fixture.checkpoint('FFFFFFFF/0', '2999-01-01 00:00+00');

-- What the store holds for one row: the canonical text of every value.
SELECT jsonb_pretty(row_data)
  FROM pgtimewarp_store.row_history
 WHERE table_name = 'types_t' AND pk = '{1}';
SELECT pk, row_data
  FROM pgtimewarp_store.row_history
 WHERE table_name = 'types_t' AND pk <> '{1}'
 ORDER BY pk;

-- The round trip.  "=" is too weak a proof: 1.10 = 1.1 for numeric, -0 = 0
-- for float8, '24 hours' = '1 day' for interval, and json has no "=" at
-- all.  The record image operator *= compares the two rows' stored bytes
-- column by column (nulls equal to nulls), so it is true only when every
-- value came back bit for bit, scale, sign of zero and json whitespace
-- included.  First, that it tells apart what "=" does not:
SELECT ROW(1.10::numeric) = ROW(1.1::numeric) AS eq,
       ROW(1.10::numeric)::record *= ROW(1.1::numeric)::record AS image_eq,
       ROW('-0'::float8)::record *= ROW('0'::float8)::record AS zero_image_eq,
       ROW('{"a":1}'::json)::record *= ROW('{"a": 1}'::json)::record AS json_image_eq,
       ROW('24 hours'::interval)::record *= ROW('1 day'::interval)::record AS iv_image_eq,
       ROW(NULL::int)::record *= ROW(NULL::int)::record AS nulls_image_eq;

SELECT cur.id,
       pgtimewarp_asof_row(NULL::types_t, jsonb_build_object('id', cur.id), now()) *= cur AS exact,
       pgtimewarp_asof_row(NULL::types_t, jsonb_build_object('id', cur.id), now())::text = cur::text AS same_text
  FROM types_t cur
 ORDER BY cur.id;

-- ... whatever the reading session's settings: stored text is parsed under
-- the canonical ones
BEGIN;
SET LOCAL timezone = 'Pacific/Chatham';
SET LOCAL datestyle = 'German, DMY';
SET LOCAL intervalstyle = 'iso_8601';
SET LOCAL extra_float_digits = 0;
SET LOCAL bytea_output = 'escape';
SELECT count(*) AS rows,
       bool_and(pgtimewarp_asof_row(NULL::types_t, jsonb_build_object('id', cur.id), now()) *= cur) AS all_exact
  FROM types_t cur;
SELECT count(*) AS rows, bool_and(a *= cur) AS all_exact_table
  FROM types_t cur JOIN pgtimewarp_asof_table(NULL::types_t, now()) a ON a.id = cur.id;
COMMIT;

-- The whole table comes back the same way, row for row (pgtimewarp_asof_table)
SELECT (SELECT count(*) FROM pgtimewarp_asof_table(NULL::types_t, now())) AS rows,
       bool_and(a *= cur) AS all_exact
  FROM types_t cur JOIN pgtimewarp_asof_table(NULL::types_t, now()) a ON a.id = cur.id;

-- The same, column by column, through SELECT * FROM pgtimewarp_asof_row(...)
SELECT a.n::text, a.big, a.f8, a.f4, a.ts, encode(a.b, 'hex') AS b,
       a.arr, a.tarr, a.mood, a.price, a.u, a.iv
  FROM pgtimewarp_asof_row(NULL::types_t, '{"id": 1}', now()) a;
SELECT a.j, a.js, a.t = (SELECT t FROM types_t WHERE id = 1) AS t_same,
       a.js::text = (SELECT js::text FROM types_t WHERE id = 1) AS js_same,
       octet_length(a.t) AS t_bytes
  FROM pgtimewarp_asof_row(NULL::types_t, '{"id": 1}', now()) a;

-- The untyped form: numbers as JSON numbers with all their digits, float
-- specials as strings, nested jsonb as JSON, json parsed (as to_jsonb does),
-- timestamps in the caller's time zone.
SELECT jsonb_pretty(pgtimewarp_asof_pk('types_t', '{"id": 1}', now()));
SELECT pgtimewarp_asof_pk('types_t', '{"id": 2}', now());
SELECT pgtimewarp_asof_pk('types_t', '{"id": 7}', now());
SELECT cur.id,
       pgtimewarp_asof_pk('types_t', jsonb_build_object('id', cur.id), now())::text
       = to_jsonb(cur)::text AS like_to_jsonb
  FROM types_t cur
 ORDER BY cur.id;
SET timezone = 'Asia/Kolkata';
SELECT pgtimewarp_asof_pk('types_t', '{"id": 6}', now()) -> 'ts' AS ts_in_kolkata;
SET timezone = 'UTC';

-- xml reads back under xmloption content whatever the caller's setting, so
-- a fragment that is not a document still reads
CREATE TABLE types_xml (id int PRIMARY KEY, x xml);
INSERT INTO types_xml VALUES (1, 'abc<b/>');
SELECT pgtimewarp_track('types_xml') IS NOT NULL AS tracked;
SET xmloption = document;
SELECT x::text FROM pgtimewarp_asof_row(NULL::types_xml, '{"id": 1}', now());
SELECT pgtimewarp_asof_pk('types_xml', '{"id": 1}', now());
RESET xmloption;

DROP TABLE types_t, types_xml;
DROP DOMAIN types_price;
DROP TYPE types_mood;
DELETE FROM pgtimewarp_store.lsn_time_map m
 USING pgtimewarp_store.tracked_relations r
 WHERE r.table_name LIKE 'types_%' AND m.node_id = r.node_id AND m.lsn = r.tracked_from_lsn;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name LIKE 'types_%';
DELETE FROM pgtimewarp_store.wal_checkpoints;
