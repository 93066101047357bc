--
-- The canonical key: text[] of the primary key columns' output text, in key
-- order, under fixed output settings.  JSON keys are converted through the
-- column types, so equal values find the same row however they are written.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE key_ints (id bigint PRIMARY KEY, v text);
CREATE TABLE key_composite (region text, placed_at timestamptz, seq numeric, v text,
                            PRIMARY KEY (region, placed_at, seq));
CREATE TABLE key_uuid (u uuid PRIMARY KEY, v text);
CREATE TABLE key_flags (on_off boolean, day date, PRIMARY KEY (day, on_off));

-- numbers as JSON numbers or strings, leading zeros, above 2^53
SELECT pgtimewarp_pk_key('key_ints', '{"id": 42}');
SELECT pgtimewarp_pk_key('key_ints', '{"id": "42"}');
SELECT pgtimewarp_pk_key('key_ints', '{"id": "0042"}');
SELECT pgtimewarp_pk_key('key_ints', '{"id": 9007199254740993}');
SELECT pgtimewarp_pk_key('key_ints', '{"id": "9007199254740993"}');

-- composite keys in primary key order, whatever the JSON order; timestamps
-- in UTC whatever zone they were written in; numeric without trailing
-- fractional zeros (1.50 = 1.5 for the table's unique index, so for the key)
SELECT pgtimewarp_pk_key('key_composite', '{"seq": 1.50, "placed_at": "2024-05-01 12:00+02", "region": "eu"}');
SET timezone = 'America/New_York';
SELECT pgtimewarp_pk_key('key_composite', '{"region": "eu", "placed_at": "2024-05-01 06:00", "seq": "1.50"}');
SET timezone = 'UTC';

-- other types: uuid spelled in upper case, booleans and dates
SELECT pgtimewarp_pk_key('key_uuid', '{"u": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"}');
SELECT pgtimewarp_pk_key('key_flags', '{"on_off": true, "day": "2024-02-29"}');
SELECT pgtimewarp_pk_key('key_flags', '{"on_off": "yes", "day": "2024-02-29"}');

-- the key the agent writes finds the row, however the caller spells it
CALL fixture.track('key_composite', '0/30000', '2024-05-01 00:00+00');
CALL fixture.change('key_composite', '{eu,"2024-05-01 10:00:00+00",1.5}', '0/30000', 'baseline',
                    '{"region": "eu", "placed_at": "2024-05-01 10:00:00+00", "seq": "1.50", "v": "first"}');
CALL fixture.checkpoint('0/30000', '2024-05-01 00:00+00');
SELECT pgtimewarp_asof_pk_lsn('key_composite', '{"region": "eu", "placed_at": "2024-05-01T12:00:00+02:00", "seq": 1.50}', '0/30000');
SELECT pgtimewarp_asof_pk_lsn('key_composite', '{"region": "eu", "placed_at": "2024-05-01 10:00+00", "seq": "1.500"}', '0/30000') ->> 'v' AS v;
SELECT pgtimewarp_asof_pk_lsn('key_composite', '{"region": "eu", "placed_at": "2024-05-01 10:00+00", "seq": 1.51}', '0/30000') IS NULL AS other_key;

-- float keys: 0 and -0 are one key, as they are one value to the index
CREATE TABLE key_floats (x float8 PRIMARY KEY);
SELECT pgtimewarp_pk_key('key_floats', '{"x": "-0"}') = pgtimewarp_pk_key('key_floats', '{"x": 0}') AS same_key;
SELECT pgtimewarp_pk_key('key_floats', '{"x": 0.1}');
DROP TABLE key_floats;

DROP TABLE key_ints, key_composite, key_uuid, key_flags;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'key_composite';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
