--
-- A table named by OID skips the schema USAGE check a name passes: the
-- functions check it themselves.  Also: an OID that names nothing.
--
SET timezone = 'UTC';

CREATE ROLE regress_usage_reader;
CREATE SCHEMA hidden;
CREATE TABLE hidden.t (id int PRIMARY KEY, secret text);
GRANT SELECT ON hidden.t TO regress_usage_reader;
CALL fixture.track('hidden.t', '0/D0000', '2025-04-01 00:00+00');
CALL fixture.change('hidden.t', '{1}', '0/D0000', 'baseline', '{"id": "1", "secret": "s3cr3t"}');
CALL fixture.checkpoint('0/D0000', '2025-04-01 00:00+00');
SELECT 'hidden.t'::regclass::oid AS hidden_oid \gset

SET ROLE regress_usage_reader;
-- by name: the schema lookup refuses
SELECT pgtimewarp_asof_pk('hidden.t', '{"id": 1}', '2025-04-01 00:00+00');
-- by OID: refused the same way, by every function
\set VERBOSITY terse
SELECT pgtimewarp_asof_pk(:hidden_oid, '{"id": 1}', '2025-04-01 00:00+00');
SELECT pgtimewarp_asof_pk_lsn(:hidden_oid, '{"id": 1}', '0/D0000');
SELECT * FROM pgtimewarp_diff_pk(:hidden_oid, '{"id": 1}', '2025-04-01 00:00+00', '2025-04-01 00:00+00');
SELECT count(*) FROM pgtimewarp_status() WHERE schema_name = 'hidden';
\set VERBOSITY default
RESET ROLE;
-- with USAGE, by OID and by name alike
GRANT USAGE ON SCHEMA hidden TO regress_usage_reader;
SET ROLE regress_usage_reader;
SELECT pgtimewarp_asof_pk(:hidden_oid, '{"id": 1}', '2025-04-01 00:00+00') ->> 'secret' AS secret;
SELECT count(*) FROM pgtimewarp_status() WHERE schema_name = 'hidden';
RESET ROLE;

-- an OID that names no table
SELECT pgtimewarp_track(0);
SELECT pgtimewarp_asof_pk(0, '{"id": 1}', now());
SELECT pgtimewarp_asof_pk(4294967295, '{"id": 1}', now());

DROP SCHEMA hidden CASCADE;
DROP ROLE regress_usage_reader;
DELETE FROM pgtimewarp_store.tracked_relations WHERE schema_name = 'hidden';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
