--
-- Drop what the suite created.
--
SELECT pg_drop_replication_slot('regress_agent');
DROP SCHEMA fixture CASCADE;
DROP USER MAPPING FOR CURRENT_USER SERVER pgtimewarp_store;
DROP EXTENSION pgtimewarp;
DROP EXTENSION postgres_fdw;
DROP SCHEMA pgtimewarp_store CASCADE;
