--
-- Privileges: history is shown only of tables, and all of their columns, the
-- caller may SELECT now; the store, its foreign tables and the configuration
-- are the extension owner's alone; only a table's owner starts or stops
-- tracking it.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE ROLE regress_priv_nobody;
CREATE ROLE regress_priv_reader;
CREATE ROLE regress_priv_member IN ROLE regress_priv_reader;
CREATE ROLE regress_priv_columns;
CREATE ROLE regress_priv_partial;
CREATE ROLE regress_priv_owner;
-- somewhere regress_priv_reader may create objects
CREATE SCHEMA priv_sandbox AUTHORIZATION regress_priv_reader;

CREATE TABLE priv_accounts (id int PRIMARY KEY, owner text, balance numeric);
INSERT INTO priv_accounts VALUES (1, 'alice', 120);
GRANT SELECT ON priv_accounts TO regress_priv_reader;
GRANT SELECT (id, owner, balance) ON priv_accounts TO regress_priv_columns;
GRANT SELECT (id, owner) ON priv_accounts TO regress_priv_partial;
-- a table nobody but its owner may read, and that is not tracked
CREATE TABLE priv_untracked (id int PRIMARY KEY);
INSERT INTO priv_untracked VALUES (1);

CALL fixture.track('priv_accounts', '0/80000', '2024-08-01 00:00+00');
CALL fixture.change('priv_accounts', '{1}', '0/80000', 'baseline', '{"id": "1", "owner": "alice", "balance": "100"}');
CALL fixture.commit('0/81000', '2024-08-01 01:00+00');
CALL fixture.change('priv_accounts', '{1}', '0/81000', 'update', '{"id": "1", "owner": "alice", "balance": "120"}');
CALL fixture.checkpoint('0/81000', '2024-08-01 01:00+00');

-- (a) without SELECT on the table: no history, by any function
SET ROLE regress_priv_nobody;
SELECT pgtimewarp_asof_pk('priv_accounts', '{"id": 1}', '2024-08-01 01:00+00');
SELECT pgtimewarp_asof_pk_lsn('priv_accounts', '{"id": 1}', '0/81000');
SELECT * FROM pgtimewarp_asof_row(NULL::priv_accounts, '{"id": 1}', '2024-08-01 01:00+00');
SELECT * FROM pgtimewarp_diff_pk('priv_accounts', '{"id": 1}', '2024-08-01 00:00+00', '2024-08-01 01:00+00');
SELECT pgtimewarp_pk_key('priv_accounts', '{"id": 1}');
-- the privilege check comes first: whether a table is tracked is not revealed
SELECT pgtimewarp_asof_pk('priv_untracked', '{"id": 1}', '2024-08-01 01:00+00');
RESET ROLE;

-- (b) with SELECT on the table, directly, through a role it is a member of,
-- or on every one of its columns: the history
SET ROLE regress_priv_reader;
SELECT pgtimewarp_asof_pk('priv_accounts', '{"id": 1}', '2024-08-01 00:30+00');
SELECT pgtimewarp_asof_pk_lsn('priv_accounts', '{"id": 1}', '0/81000');
SELECT * FROM pgtimewarp_asof_row(NULL::priv_accounts, '{"id": 1}', '2024-08-01 01:00+00');
SELECT valid_from_lsn, valid_to_lsn, op, row_data, changed_columns
  FROM pgtimewarp_diff_pk('priv_accounts', '{"id": 1}', '2024-08-01 00:00+00', '2024-08-01 01:00+00');
RESET ROLE;
SET ROLE regress_priv_member;
SELECT pgtimewarp_asof_pk('priv_accounts', '{"id": 1}', '2024-08-01 01:00+00');
RESET ROLE;
SET ROLE regress_priv_columns;
SELECT pgtimewarp_asof_pk('priv_accounts', '{"id": 1}', '2024-08-01 01:00+00');
RESET ROLE;

-- privileges are those of now: revoked, the history is gone too
REVOKE SELECT ON priv_accounts FROM regress_priv_reader;
SET ROLE regress_priv_member;
SELECT pgtimewarp_asof_pk('priv_accounts', '{"id": 1}', '2024-08-01 01:00+00');
RESET ROLE;
GRANT SELECT ON priv_accounts TO regress_priv_reader;

-- (c) SELECT on only some of the columns: an error, not a partial row
SET ROLE regress_priv_partial;
SELECT id, owner FROM priv_accounts;
SELECT pgtimewarp_asof_pk('priv_accounts', '{"id": 1}', '2024-08-01 01:00+00');
SELECT * FROM pgtimewarp_asof_row(NULL::priv_accounts, '{"id": 1}', '2024-08-01 01:00+00');
SELECT op FROM pgtimewarp_diff_pk('priv_accounts', '{"id": 1}', '2024-08-01 00:00+00', '2024-08-01 01:00+00');
RESET ROLE;
-- a column added later is one more the caller must be allowed to read
ALTER TABLE priv_accounts ADD COLUMN note text;
SET ROLE regress_priv_columns;
SELECT pgtimewarp_asof_pk('priv_accounts', '{"id": 1}', '2024-08-01 01:00+00');
RESET ROLE;
ALTER TABLE priv_accounts DROP COLUMN note;

-- (d) the store is the extension owner's: no role but it may read the
-- foreign tables or the configuration, use the foreign server, or configure
SELECT c.relname, c.relkind,
       has_table_privilege('regress_priv_reader', c.oid, 'SELECT') AS reader_may_select
  FROM pg_class c
 WHERE c.relnamespace = 'pgtimewarp'::regnamespace AND c.relkind IN ('r', 'f', 'v')
 ORDER BY c.relname;
SELECT has_schema_privilege('regress_priv_reader', 'pgtimewarp', 'USAGE') AS schema_usage,
       has_server_privilege('regress_priv_reader', 'pgtimewarp_store', 'USAGE') AS server_usage,
       has_function_privilege('regress_priv_reader', 'pgtimewarp_configure(text)', 'EXECUTE') AS may_configure;
SET ROLE regress_priv_reader;
SELECT count(*) FROM pgtimewarp.row_versions;
SELECT count(*) FROM pgtimewarp.row_version_probe;
SELECT count(*) FROM pgtimewarp.config;
CREATE FOREIGN TABLE priv_sandbox.peek (node_id text) SERVER pgtimewarp_store
    OPTIONS (schema_name 'pgtimewarp_store', table_name 'nodes');
CREATE USER MAPPING FOR CURRENT_USER SERVER pgtimewarp_store;
SELECT pgtimewarp_configure('evil');
RESET ROLE;
SELECT node_id FROM pgtimewarp.config;

-- (e) only the table's owner starts or stops tracking it, or forgets its history
SET ROLE regress_priv_reader;
SELECT pgtimewarp_track('priv_untracked');
SELECT pgtimewarp_untrack('priv_accounts');
RESET ROLE;
ALTER TABLE priv_untracked OWNER TO regress_priv_owner;
SET ROLE regress_priv_owner;
SELECT pgtimewarp_track('priv_untracked') IS NOT NULL AS tracked;
RESET ROLE;
SELECT schema_name, table_name, untracked_lsn IS NULL AS tracking
  FROM pgtimewarp_store.tracked_relations WHERE table_name = 'priv_untracked';
SET ROLE regress_priv_reader;
SELECT pgtimewarp_untrack('priv_untracked');
RESET ROLE;
SET ROLE regress_priv_owner;
SELECT pgtimewarp_untrack('priv_untracked');
RESET ROLE;
SELECT schema_name, table_name, untracked_lsn IS NULL AS tracking
  FROM pgtimewarp_store.tracked_relations WHERE table_name = 'priv_untracked';
-- and only the owner deletes the history kept of it
SET ROLE regress_priv_reader;
SELECT pgtimewarp_forget('priv_untracked');
RESET ROLE;
SET ROLE regress_priv_owner;
SELECT pgtimewarp_forget('priv_untracked') AS versions_deleted;
RESET ROLE;
SELECT count(*) FROM pgtimewarp_store.tracked_relations WHERE table_name = 'priv_untracked';

-- (f) columns the table no longer has: nobody can be granted them, so only
-- a role with SELECT on the whole table sees their stored values
CREATE TABLE priv_dropped (id int PRIMARY KEY, name text, ssn text);
CALL fixture.track('priv_dropped', '0/8A000', '2024-10-01 00:00+00');
CALL fixture.change('priv_dropped', '{1}', '0/8A000', 'baseline',
                    '{"id": "1", "name": "alice", "ssn": "123-45-6789"}');
CALL fixture.commit('0/8B000', '2024-10-01 01:00+00');
CALL fixture.change('priv_dropped', '{1}', '0/8B000', 'update',
                    '{"id": "1", "name": "alicia"}');
CALL fixture.checkpoint('0/8B000', '2024-10-01 01:00+00');
ALTER TABLE priv_dropped DROP COLUMN ssn;
GRANT SELECT (id, name) ON priv_dropped TO regress_priv_columns;
GRANT SELECT ON priv_dropped TO regress_priv_reader;
SET ROLE regress_priv_columns;
SELECT pgtimewarp_asof_pk_lsn('priv_dropped', '{"id": 1}', '0/8A000');
SELECT valid_from_lsn, row_data, changed_columns
  FROM pgtimewarp_diff_pk('priv_dropped', '{"id": 1}', '2024-10-01 00:00+00', '2024-10-01 01:00+00');
RESET ROLE;
SET ROLE regress_priv_reader;
SELECT pgtimewarp_asof_pk_lsn('priv_dropped', '{"id": 1}', '0/8A000');
SELECT valid_from_lsn, row_data, changed_columns
  FROM pgtimewarp_diff_pk('priv_dropped', '{"id": 1}', '2024-10-01 00:00+00', '2024-10-01 01:00+00');
RESET ROLE;

-- (g) pgtimewarp_status lists only tables the caller may read, and a
-- tracked table that no longer exists only to the extension's owner
CREATE TABLE priv_gone (id int PRIMARY KEY);
CALL fixture.track('priv_gone', '0/8C000', '2024-10-01 02:00+00');
DROP TABLE priv_gone;
SELECT table_name FROM pgtimewarp_status() WHERE table_name LIKE 'priv_%' ORDER BY 1;
SET ROLE regress_priv_reader;
SELECT table_name FROM pgtimewarp_status() WHERE table_name LIKE 'priv_%' ORDER BY 1;
RESET ROLE;
SET ROLE regress_priv_nobody;
SELECT count(*) FROM pgtimewarp_status();
RESET ROLE;

DROP TABLE priv_dropped;
DROP TABLE priv_accounts, priv_untracked;
DROP SCHEMA priv_sandbox;
DROP ROLE regress_priv_nobody, regress_priv_member, regress_priv_reader,
          regress_priv_columns, regress_priv_partial, regress_priv_owner;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name LIKE 'priv_%';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
