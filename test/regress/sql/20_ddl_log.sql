--
-- The DDL log the agent follows renames and drops by: written by event
-- triggers as the extension's owner in the transaction that ran the DDL,
-- with a "pgtimewarp" message naming the rows.  pgtimewarp_ddl_events()
-- gives the agent only rows the message's own transaction wrote.
--
CREATE ROLE regress_ddl_user;
CREATE SCHEMA ddl_s AUTHORIZATION regress_ddl_user;
SET ROLE regress_ddl_user;
CREATE TABLE ddl_s.t (id int PRIMARY KEY);
CREATE TEMPORARY TABLE ddl_temp (id int);
CREATE UNLOGGED TABLE ddl_s.unlogged (id int);
RESET ROLE;
TRUNCATE pgtimewarp.ddl_log;
-- the slot standing in for the agent's: skip what came before
SELECT count(*) >= 0 AS skipped FROM pg_logical_slot_get_changes('regress_agent', NULL, NULL);

SET ROLE regress_ddl_user;
BEGIN;
ALTER TABLE ddl_s.t RENAME TO t2;
SELECT pg_current_xact_id()::text::numeric % 4294967296 AS renaming_xid \gset
COMMIT;
ALTER TABLE ddl_s.t2 ADD COLUMN v text;        -- altered, same name: logged all the same
ALTER TABLE ddl_temp ADD COLUMN v text;        -- temporary: not logged
ALTER TABLE ddl_s.unlogged ADD COLUMN v text;  -- unlogged: not logged
RESET ROLE;
ALTER SCHEMA ddl_s RENAME TO ddl_s2;           -- every table of the schema
-- also under session_replication_role = replica
SET session_replication_role = replica;
ALTER TABLE ddl_s2.t2 ADD COLUMN w int;
RESET session_replication_role;
SET ROLE regress_ddl_user;
DROP TABLE ddl_s2.t2, ddl_s2.unlogged;
DROP TABLE ddl_temp;
-- an ordinary role can neither write the log nor read it directly
INSERT INTO pgtimewarp.ddl_log (relid, event, schema_name, table_name) VALUES (1, 'dropped', 'x', 'y');
SELECT count(*) FROM pgtimewarp.ddl_log;
RESET ROLE;

SELECT id - (SELECT min(id) FROM pgtimewarp.ddl_log) AS n, event, schema_name, table_name, columns
  FROM pgtimewarp.ddl_log ORDER BY id;

-- each DDL transaction's message names its rows
SELECT regexp_replace(data, '[0-9]+', 'N', 'g') AS message
  FROM pg_logical_slot_get_changes('regress_agent', NULL, NULL)
 WHERE data LIKE 'message:%';

-- the agent believes the rows of a message only from the transaction that wrote them
SELECT min(id) AS first_id FROM pgtimewarp.ddl_log \gset
SELECT event, schema_name, table_name FROM pgtimewarp_ddl_events(:first_id, :first_id, :renaming_xid);
SELECT count(*) AS forged FROM pgtimewarp_ddl_events(:first_id, :first_id, :renaming_xid + 1000000);
SELECT count(*) AS forged_range FROM pgtimewarp_ddl_events(0, 1000000000, :renaming_xid + 1000000);

DROP SCHEMA ddl_s2;
DROP ROLE regress_ddl_user;
TRUNCATE pgtimewarp.ddl_log;
