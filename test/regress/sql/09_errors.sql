--
-- Every user-facing error of the SQL contract: what was wrong, what was
-- expected, and what to do.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE err_t (id int PRIMARY KEY, label text);
CREATE TABLE err_comp (a int, b date, label text, PRIMARY KEY (a, b));
CREATE TABLE err_untracked (id int PRIMARY KEY);
CREATE TABLE err_nopk (id int, label text);
CREATE VIEW err_view AS SELECT * FROM err_t;
CREATE SEQUENCE err_seq;
CREATE TYPE err_pair AS (x int, y int);
CREATE TABLE err_parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TEMPORARY TABLE err_temp (id int PRIMARY KEY);
CREATE UNLOGGED TABLE err_unlogged (id int PRIMARY KEY);

CALL fixture.track('err_t', '0/90000', '2024-09-01 00:00+00');
CALL fixture.change('err_t', '{1}', '0/90000', 'baseline', '{"id": "1", "label": "one"}');
CALL fixture.track('err_comp', '0/91000', '2024-09-01 01:00+00');
CALL fixture.change('err_comp', '{1,2024-09-01}', '0/91000', 'baseline', '{"a": "1", "b": "2024-09-01", "label": "first"}');
CALL fixture.checkpoint('0/91000', '2024-09-01 01:00+00');

-- the fixture is readable: the errors below are about the arguments
SELECT pgtimewarp_asof_pk('err_t', '{"id": 1}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_comp', '{"a": 1, "b": "2024-09-01"}', '2024-09-01 01:00+00');

-- NULL arguments, for every function
SELECT pgtimewarp_track(NULL);
SELECT pgtimewarp_untrack(NULL);
SELECT pgtimewarp_forget(NULL);
SELECT pgtimewarp_asof_pk(NULL, '{"id": 1}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_t', NULL, '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_t', '{"id": 1}', NULL);
SELECT pgtimewarp_asof_pk_lsn(NULL, '{"id": 1}', '0/91000');
SELECT pgtimewarp_asof_pk_lsn('err_t', NULL, '0/91000');
SELECT pgtimewarp_asof_pk_lsn('err_t', '{"id": 1}', NULL);
SELECT * FROM pgtimewarp_asof_row(NULL::err_t, NULL, '2024-09-01 01:00+00');
SELECT * FROM pgtimewarp_asof_row(NULL::err_t, '{"id": 1}', NULL);
SELECT * FROM pgtimewarp_diff_pk(NULL, '{"id": 1}', '2024-09-01 00:00+00', '2024-09-01 01:00+00');
SELECT * FROM pgtimewarp_diff_pk('err_t', NULL, '2024-09-01 00:00+00', '2024-09-01 01:00+00');
SELECT * FROM pgtimewarp_diff_pk('err_t', '{"id": 1}', NULL, '2024-09-01 01:00+00');
SELECT * FROM pgtimewarp_diff_pk('err_t', '{"id": 1}', '2024-09-01 00:00+00', NULL);
SELECT pgtimewarp_pk_key(NULL, '{"id": 1}');
SELECT pgtimewarp_pk_key('err_t', NULL);

-- the first argument of pgtimewarp_asof_row must be a table's row
SELECT * FROM pgtimewarp_asof_row(NULL::int, '{"id": 1}', '2024-09-01 01:00+00');
SELECT * FROM pgtimewarp_asof_row(NULL::err_pair, '{"id": 1}', '2024-09-01 01:00+00');
SELECT * FROM pgtimewarp_asof_row(NULL::err_view, '{"id": 1}', '2024-09-01 01:00+00');
SELECT * FROM pgtimewarp_asof_row(NULL, '{"id": 1}', '2024-09-01 01:00+00');

-- keys: not an object
SELECT pgtimewarp_asof_pk('err_t', '[1]', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_t', '1', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_t', '"1"', '2024-09-01 01:00+00');
-- missing, extra, misspelt key columns
SELECT pgtimewarp_asof_pk('err_t', '{}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_t', '{"id": 1, "label": "one"}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_t', '{"ID": 1}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_comp', '{"a": 1}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_comp', '{"b": "2024-09-01"}', '2024-09-01 01:00+00');
-- values that are not a key value
SELECT pgtimewarp_asof_pk('err_t', '{"id": null}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_t', '{"id": {"value": 1}}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_t', '{"id": [1]}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_t', '{"id": "one"}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_t', '{"id": 1.5}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_t', '{"id": 12345678901}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_comp', '{"a": 1, "b": "2024-02-30"}', '2024-09-01 01:00+00');
-- the same checks in the other functions
SELECT pgtimewarp_asof_pk_lsn('err_t', '{"id": "one"}', '0/91000');
SELECT * FROM pgtimewarp_asof_row(NULL::err_comp, '{"a": 1}', '2024-09-01 01:00+00');
SELECT * FROM pgtimewarp_diff_pk('err_t', '[1]', '2024-09-01 00:00+00', '2024-09-01 01:00+00');
SELECT pgtimewarp_pk_key('err_t', '{"id": 1, "x": 2}');

-- tables that are not tracked, or not tables
SELECT pgtimewarp_asof_pk('err_untracked', '{"id": 1}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk_lsn('err_untracked', '{"id": 1}', '0/91000');
SELECT * FROM pgtimewarp_asof_row(NULL::err_untracked, '{"id": 1}', '2024-09-01 01:00+00');
SELECT * FROM pgtimewarp_diff_pk('err_untracked', '{"id": 1}', '2024-09-01 00:00+00', '2024-09-01 01:00+00');
SELECT pgtimewarp_untrack('err_untracked');
SELECT pgtimewarp_forget('err_untracked');
SELECT pgtimewarp_asof_pk('err_view', '{"id": 1}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_seq', '{"id": 1}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_t_pkey', '{"id": 1}', '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_nopk', '{"id": 1}', '2024-09-01 01:00+00');
SELECT pgtimewarp_track('err_view');
SELECT pgtimewarp_track('err_seq');
SELECT pgtimewarp_track('err_parted');

-- tables pgtimewarp_track cannot take
SELECT pgtimewarp_track('err_nopk');
SELECT pgtimewarp_track('err_temp');
SELECT pgtimewarp_track('err_unlogged');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT pgtimewarp_track('err_untracked');
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT pgtimewarp_track('err_untracked');
ROLLBACK;
-- tracked already: a notice, and the LSN history is complete from
SELECT pgtimewarp_track('err_t');
-- still tracked: its history cannot be forgotten
SELECT pgtimewarp_forget('err_t');
-- tracked before and stopped: an error (the store cannot record a gap)
UPDATE pgtimewarp_store.tracked_relations
   SET untracked_lsn = '0/92000', untracked_ts = '2024-09-01 02:00+00'
 WHERE table_name = 'err_comp';
SELECT pgtimewarp_track('err_comp');
SELECT pgtimewarp_untrack('err_comp');
UPDATE pgtimewarp_store.tracked_relations
   SET untracked_lsn = NULL, untracked_ts = NULL
 WHERE table_name = 'err_comp';

-- a primary key that is no longer the one the history is keyed by
BEGIN;
ALTER TABLE err_t DROP CONSTRAINT err_t_pkey, ADD PRIMARY KEY (id, label);
SELECT pgtimewarp_asof_pk('err_t', '{"id": 1, "label": "one"}', '2024-09-01 01:00+00');
ROLLBACK;

-- times
SELECT * FROM pgtimewarp_diff_pk('err_t', '{"id": 1}', '2024-09-01 01:00+00', '2024-09-01 00:00+00');
SELECT pgtimewarp_asof_pk('err_t', '{"id": 1}', '2024-08-31 23:59:59.999999+00');
SELECT pgtimewarp_asof_pk_lsn('err_t', '{"id": 1}', '0/8FFFF');
SELECT * FROM pgtimewarp_asof_row(NULL::err_t, '{"id": 1}', '2024-08-31 00:00+00');
SELECT * FROM pgtimewarp_diff_pk('err_t', '{"id": 1}', '2024-08-31 00:00+00', '2024-09-01 01:00+00');
SELECT * FROM pgtimewarp_diff_pk('err_t', '{"id": 1}', '-infinity', '2024-08-31 00:00+00');

-- a node id the store could not hold
SELECT pgtimewarp_configure('bad id!');
SELECT pgtimewarp_configure(NULL);

-- not configured
BEGIN;
DELETE FROM pgtimewarp.config;
SAVEPOINT s;
SELECT pgtimewarp_asof_pk('err_t', '{"id": 1}', '2024-09-01 01:00+00');
ROLLBACK TO s;
SELECT pgtimewarp_track('err_untracked');
ROLLBACK TO s;
SELECT * FROM pgtimewarp_status();
ROLLBACK;

-- the store cannot be reached (nothing listens on port 1)
BEGIN;
ALTER SERVER pgtimewarp_store OPTIONS (SET host '127.0.0.1', SET port '1');
SAVEPOINT s;
SELECT pgtimewarp_asof_pk('err_t', '{"id": 1}', '2024-09-01 01:00+00');
ROLLBACK TO s;
SELECT pgtimewarp_track('err_untracked');
ROLLBACK;
-- and once it is back, all is well
SELECT pgtimewarp_asof_pk('err_t', '{"id": 1}', '2024-09-01 01:00+00');

-- names that need quoting are quoted once, and hints quote them as literals
CREATE SCHEMA "Err Schema";
CREATE TABLE "Err Schema"."Tab;le'x" (id int PRIMARY KEY);
SELECT pgtimewarp_asof_pk('"Err Schema"."Tab;le''x"', '{"id": 1}', now());
SELECT pgtimewarp_untrack('"Err Schema"."Tab;le''x"');
DROP SCHEMA "Err Schema" CASCADE;

-- a huge key value is not echoed back whole
SELECT pgtimewarp_asof_pk('err_t', jsonb_build_object('id', repeat('9', 100000)), '2024-09-01 01:00+00');
SELECT pgtimewarp_asof_pk('err_t', jsonb_build_object('id', repeat('x', 300)), '2024-09-01 01:00+00');

DROP VIEW err_view;
DROP TABLE err_t, err_comp, err_untracked, err_nopk, err_parted, err_temp, err_unlogged;
DROP SEQUENCE err_seq;
DROP TYPE err_pair;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name LIKE 'err_%';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
