--
-- The extension's own store connection: what a local transaction does to
-- the store commits and rolls back with it, savepoints included; a remote
-- error inside a subtransaction leaves the rest of the transaction usable;
-- pgtimewarp_ping() reaches the store; status reads counts, not history.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE conn_t (id int PRIMARY KEY, v text);
INSERT INTO conn_t VALUES (1, 'a'), (2, 'b');

SELECT pgtimewarp_ping() = current_setting('server_version') AS ping;

-- tracking rolled back to a savepoint leaves nothing in the store ...
BEGIN;
SAVEPOINT s;
SELECT pgtimewarp_track('conn_t') IS NOT NULL AS tracked;
SELECT count(*) AS rows_seen_in_transaction FROM pgtimewarp_status() WHERE table_name = 'conn_t';
ROLLBACK TO s;
SELECT count(*) AS rows_after_rollback_to FROM pgtimewarp_status() WHERE table_name = 'conn_t';
COMMIT;
SELECT count(*) AS tracked_rows FROM pgtimewarp_store.tracked_relations WHERE table_name = 'conn_t';
SELECT count(*) AS versions FROM pgtimewarp_store.row_versions v
  JOIN pgtimewarp_store.tracked_relations r USING (relation_id) WHERE r.table_name = 'conn_t';

-- ... and so does a transaction rolled back as a whole
BEGIN;
SELECT pgtimewarp_track('conn_t') IS NOT NULL AS tracked;
ROLLBACK;
SELECT count(*) AS tracked_rows FROM pgtimewarp_store.tracked_relations WHERE table_name = 'conn_t';

-- committed, it is there, with its baseline counted (status reads the count)
SELECT pgtimewarp_track('conn_t') IS NOT NULL AS tracked;
SELECT table_name, tracking, row_versions FROM pgtimewarp_status() WHERE table_name = 'conn_t';
SELECT count(*) AS versions FROM pgtimewarp_store.row_versions v
  JOIN pgtimewarp_store.tracked_relations r USING (relation_id) WHERE r.table_name = 'conn_t';

-- history complete "forever": lookups at now() do not warn
CALL fixture.checkpoint('FFFFFFFF/0', '2999-01-01 00:00+00');

-- an error in a subtransaction (here: a lookup before tracking began) does
-- not spoil the rest of the transaction's store reads
BEGIN;
SAVEPOINT s;
\set VERBOSITY sqlstate
SELECT pgtimewarp_asof_pk('conn_t', '{"id": 1}', '2000-01-01 00:00+00');
\set VERBOSITY default
ROLLBACK TO s;
SELECT pgtimewarp_asof_pk('conn_t', '{"id": 1}', now()) ->> 'v' AS v;
COMMIT;

-- nor does an error the store raised inside one: the remote savepoint
-- rolls back with it.  A store statement that fails (here the store's
-- schema is not what it should be) is reported with the store's message
-- and the statement it ran.
ALTER TABLE pgtimewarp_store.relation_stats RENAME TO relation_stats_moved;
BEGIN;
SELECT pgtimewarp_asof_pk('conn_t', '{"id": 2}', now()) ->> 'v' AS v;
SAVEPOINT s;
SELECT * FROM pgtimewarp_status() WHERE table_name = 'conn_t';
ROLLBACK TO s;
SELECT pgtimewarp_asof_pk('conn_t', '{"id": 1}', now()) ->> 'v' AS v;
COMMIT;
ALTER TABLE pgtimewarp_store.relation_stats_moved RENAME TO relation_stats;
SELECT table_name, row_versions FROM pgtimewarp_status() WHERE table_name = 'conn_t';

-- a changed foreign server is picked up by the next transaction
ALTER SERVER pgtimewarp_store OPTIONS (SET port '1');
\set VERBOSITY terse
SELECT pgtimewarp_ping();
\set VERBOSITY default
DO $d$
BEGIN
    EXECUTE format('ALTER SERVER pgtimewarp_store OPTIONS (SET port %L)', current_setting('port'));
END;
$d$;
SELECT pgtimewarp_ping() IS NOT NULL AS back;

-- pgtimewarp.store_spin: how long a call polls for the store's answer
-- before sleeping; answers are the same either way
SHOW pgtimewarp.store_spin;
SET pgtimewarp.store_spin = 0;
SELECT k, pgtimewarp_asof_pk('conn_t', jsonb_build_object('id', k), now()) ->> 'v' AS v
  FROM generate_series(1, 3) k ORDER BY k;
SET pgtimewarp.store_spin = 20000;
RESET pgtimewarp.store_spin;

-- closing the connection: not while this transaction uses it; then it is
-- gone, and the next lookup opens one again
BEGIN;
SELECT pgtimewarp_asof_pk('conn_t', '{"id": 1}', now()) ->> 'v' AS v;
SELECT pgtimewarp_disconnect();
ROLLBACK;
SELECT pgtimewarp_disconnect() AS closed;
SELECT pgtimewarp_disconnect() AS closed_again;
SELECT pgtimewarp_asof_pk('conn_t', '{"id": 1}', now()) ->> 'v' AS v;

SELECT pgtimewarp_untrack('conn_t');
SELECT pgtimewarp_forget('conn_t') AS forgotten;
DROP TABLE conn_t;
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
