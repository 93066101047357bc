--
-- A tracked table's history belongs to that table, not to its name: a
-- table created later under the name reads, extends and deletes none of
-- it; a role with the extension owner's privileges can attach it (after
-- pg_restore, the same table has a new OID).
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE ROLE regress_id_victim;
CREATE ROLE regress_id_intruder;
CREATE SCHEMA shared;
GRANT CREATE, USAGE ON SCHEMA shared TO regress_id_victim, regress_id_intruder;

SET ROLE regress_id_victim;
CREATE TABLE shared.payroll (id int PRIMARY KEY, salary numeric);
RESET ROLE;
CALL fixture.track('shared.payroll', '0/B0000', '2025-02-01 00:00+00');
CALL fixture.change('shared.payroll', '{1}', '0/B0000', 'baseline', '{"id": "1", "salary": "9000"}');
CALL fixture.checkpoint('0/B0000', '2025-02-01 00:00+00');
SET ROLE regress_id_victim;
SELECT pgtimewarp_asof_pk('shared.payroll', '{"id": 1}', '2025-02-01 00:00+00') ->> 'salary' AS salary;
DROP TABLE shared.payroll;
RESET ROLE;

-- another role creates a table by the same name (terse: OIDs vary by run)
\set VERBOSITY terse
SET ROLE regress_id_intruder;
CREATE TABLE shared.payroll (id int PRIMARY KEY, salary numeric);
-- reads none of the old history ...
SELECT pgtimewarp_asof_pk('shared.payroll', '{"id": 1}', '2025-02-01 00:00+00');
SELECT * FROM pgtimewarp_diff_pk('shared.payroll', '{"id": 1}', '2025-02-01 00:00+00', '2025-02-01 00:00+00');
-- ... does not see it listed ...
SELECT count(*) FROM pgtimewarp_status() WHERE table_name = 'payroll';
-- ... cannot take it over by tracking, stop it or delete it
SELECT pgtimewarp_track('shared.payroll');
SELECT pgtimewarp_untrack('shared.payroll');
SELECT pgtimewarp_forget('shared.payroll');
-- ... and may not attach it
SELECT pgtimewarp_attach('shared.payroll');
RESET ROLE;
-- the history is intact
SELECT count(*) AS versions FROM pgtimewarp_store.row_versions v
  JOIN pgtimewarp_store.tracked_relations r USING (relation_id) WHERE r.table_name = 'payroll';
-- the extension owner sees it listed
SELECT table_name FROM pgtimewarp_status() WHERE table_name = 'payroll';

-- a superuser who knows it is the same table (restored from a dump) attaches it
-- (the notice names the table's OID, which differs from run to run)
\set VERBOSITY terse
SET client_min_messages = warning;
SELECT pgtimewarp_attach('shared.payroll');
RESET client_min_messages;
\set VERBOSITY default
\set VERBOSITY default
SELECT pgtimewarp_attach('shared.payroll');
SELECT pgtimewarp_asof_pk('shared.payroll', '{"id": 1}', '2025-02-01 00:00+00') ->> 'salary' AS salary;

-- history follows the table, not its name: renamed, moved to another
-- schema, its history reads under the new name at once (the extension
-- finds it by OID; the agent renames it in the store when it gets there)
ALTER TABLE shared.payroll RENAME TO wages;
SELECT pgtimewarp_asof_pk('shared.wages', '{"id": 1}', '2025-02-01 00:00+00') ->> 'salary' AS salary;
CREATE SCHEMA moved;
ALTER TABLE shared.wages SET SCHEMA moved;
SELECT pgtimewarp_asof_pk('moved.wages', '{"id": 1}', '2025-02-01 00:00+00') ->> 'salary' AS salary;
ALTER TABLE moved.wages SET SCHEMA shared;
ALTER TABLE shared.wages RENAME TO payroll;
DROP SCHEMA moved;

-- attaching needs the same primary key
CREATE TABLE shared.ledger (id int PRIMARY KEY);
CALL fixture.track('shared.ledger', '0/B1000', '2025-02-02 00:00+00');
DROP TABLE shared.ledger;
CREATE TABLE shared.ledger (code text PRIMARY KEY);
SELECT pgtimewarp_attach('shared.ledger');
SELECT pgtimewarp_attach('shared.nothing_here');
CREATE TABLE shared.never_tracked (id int PRIMARY KEY);
SELECT pgtimewarp_attach('shared.never_tracked');

DROP SCHEMA shared CASCADE;
DROP ROLE regress_id_victim, regress_id_intruder;
DELETE FROM pgtimewarp_store.tracked_relations WHERE schema_name = 'shared';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
