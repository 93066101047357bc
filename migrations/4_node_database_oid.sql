-- pgtimewarp store schema, version 4: which database a node's history was
-- recorded from, exactly.
--
-- A node's row named its source by the cluster's system identifier and the
-- database's name.  A database dropped and restored from a dump under the
-- same name on the same server has both, yet it is another database: its
-- tables have new OIDs, and history belongs to tables by OID.  Its OID tells
-- it apart.  "pgtimewarp install" records it, and when the source database
-- is not the recorded one but says it is the node (pgtimewarp.config came
-- with the dump), attaches the history of the restored tables and records
-- the new database.  NULL for a node registered before this migration or by
-- the agent; install fills it in.

ALTER TABLE pgtimewarp_store.nodes ADD COLUMN database_oid oid;
