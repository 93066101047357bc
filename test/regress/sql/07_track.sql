--
-- pgtimewarp_track and pgtimewarp_untrack for real: the baseline, the LSN
-- returned, the message that tells the agent, the publication, rollback,
-- and tracking twice.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE track_t (id int PRIMARY KEY, v text, big text,
                      twice int GENERATED ALWAYS AS (id * 2) STORED);
INSERT INTO track_t (id, v, big) VALUES
    (1, 'one', NULL), (2, NULL, repeat('x', 200000)), (3, 'три', 'é');

-- the agent's view of the WAL, opened before tracking starts
SELECT 'ok' FROM pg_create_logical_replication_slot('regress_track', 'test_decoding');
CREATE PUBLICATION pgtimewarp;

SELECT pgtimewarp_track('track_t') AS start_lsn \gset

-- the store knows the table from the returned LSN on
SELECT schema_name, table_name, pk_columns, tracked_from_lsn = :'start_lsn' AS from_returned_lsn,
       untracked_lsn IS NULL AS tracking
  FROM pgtimewarp_store.tracked_relations WHERE table_name = 'track_t';

-- the baseline: every row, valid from that LSN, with every stored column
-- (generated columns are not in the WAL either, so not in history)
SELECT pk, op, valid_from_lsn = :'start_lsn' AS from_start, valid_to_lsn,
       row_data - 'big' AS row_data, length(row_data ->> 'big') AS big_length
  FROM pgtimewarp_store.row_history WHERE table_name = 'track_t' ORDER BY pk;

-- an as-of lookup right after tracking finds rows that have not changed
SELECT pgtimewarp_asof_pk_lsn('track_t', '{"id": 3}', :'start_lsn');
SELECT md5(big) = md5(repeat('x', 200000)) AS big_value_intact
  FROM pgtimewarp_asof_row(NULL::track_t, '{"id": 2}', (SELECT tracked_from_ts FROM pgtimewarp_store.tracked_relations WHERE table_name = 'track_t'));

-- the table joined the publication in the same transaction
SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'pgtimewarp';

-- tracking again changes nothing and returns the same LSN
SET client_min_messages = warning;
SELECT pgtimewarp_track('track_t') = :'start_lsn' AS same_lsn;
RESET client_min_messages;
SELECT count(*) FROM pgtimewarp_store.row_history WHERE table_name = 'track_t';

-- a rolled-back track leaves nothing behind, in the store or in the WAL
CREATE TABLE track_rolled_back (id int PRIMARY KEY);
BEGIN;
SELECT pgtimewarp_track('track_rolled_back') IS NOT NULL AS tracked;
ROLLBACK;
SELECT count(*) FROM pgtimewarp_store.tracked_relations WHERE table_name = 'track_rolled_back';
SELECT count(*) FROM pg_publication_tables WHERE tablename = 'track_rolled_back';

-- a transaction that already changed the table cannot track it: its
-- uncommitted changes would land in the baseline, dated before they happen
BEGIN;
INSERT INTO track_rolled_back VALUES (1);
SELECT pgtimewarp_track('track_rolled_back');
ROLLBACK;
BEGIN;
TRUNCATE track_rolled_back;
SELECT pgtimewarp_track('track_rolled_back');
ROLLBACK;
-- reading it first is fine, and so is a change rolled back to a savepoint
BEGIN;
SELECT count(*) FROM track_rolled_back;
SAVEPOINT before_insert;
INSERT INTO track_rolled_back VALUES (1);
ROLLBACK TO before_insert;
SELECT pgtimewarp_track('track_rolled_back') IS NOT NULL AS tracked;
ROLLBACK;

-- untrack: history stays, the table leaves the publication
SELECT pgtimewarp_untrack('track_t');
SELECT untracked_lsn >= tracked_from_lsn AS stopped_after_start
  FROM pgtimewarp_store.tracked_relations WHERE table_name = 'track_t';
SELECT count(*) FROM pg_publication_tables WHERE pubname = 'pgtimewarp';
SELECT pgtimewarp_asof_pk_lsn('track_t', '{"id": 1}', :'start_lsn') ->> 'v' AS v;
-- later than the end of tracking: the last known row, with a warning
\set VERBOSITY sqlstate
SELECT pgtimewarp_asof_pk_lsn('track_t', '{"id": 1}', 'FFFFFFFF/FFFFFFFF') ->> 'v' AS v;
SELECT pgtimewarp_untrack('track_t');
SELECT pgtimewarp_track('track_t');
\set VERBOSITY default

-- what the agent reads: one transactional message per track and untrack,
-- decoded at those transactions' commits, none for the rolled-back one
SELECT regexp_replace(regexp_replace(data, '"lsn": "[0-9A-F/]+"', '"lsn": "…"'), 'sz: [0-9]+', 'sz: …') AS message
  FROM pg_logical_slot_get_changes('regress_track', NULL, NULL)
 WHERE data LIKE 'message:%';
SELECT pg_drop_replication_slot('regress_track');

-- a table tracked before and untracked: tracking it again is refused until
-- its old history is deleted with pgtimewarp_forget (fixture history, for
-- fixed times)
CREATE TABLE track_again (id int PRIMARY KEY);
CALL fixture.track('track_again', '0/50000', '2024-07-01 00:00+00');
UPDATE pgtimewarp_store.tracked_relations
   SET untracked_lsn = '0/51000', untracked_ts = '2024-07-02 00:00+00'
 WHERE table_name = 'track_again';
CALL fixture.change('track_again', '{1}', '0/50000', 'baseline', '{"id": "1"}');
SELECT pgtimewarp_track('track_again');
SELECT pgtimewarp_untrack('track_again');
SELECT pgtimewarp_forget('track_again');
SELECT pgtimewarp_forget('track_again');
SELECT pgtimewarp_track('track_again') IS NOT NULL AS tracked_afresh;
SELECT pgtimewarp_forget('track_again');

-- with no logical slot in the database, changes made before the agent
-- creates one would be missing: track warns, and says how to start over
SELECT pg_drop_replication_slot('regress_agent');
CREATE TABLE track_early (id int PRIMARY KEY);
SELECT pgtimewarp_track('track_early') IS NOT NULL AS tracked;
SELECT 'ok' FROM pg_create_logical_replication_slot('regress_agent', 'test_decoding');

DROP PUBLICATION pgtimewarp;
DROP TABLE track_t, track_rolled_back, track_again, track_early;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name IN ('track_t', 'track_again', 'track_early');
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.nodes;
