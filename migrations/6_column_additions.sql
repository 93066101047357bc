-- pgtimewarp store schema, version 6: when each column of a tracked table
-- was added.
--
-- ALTER TABLE ... ADD COLUMN c ... DEFAULT d gives every existing row c = d
-- without writing them (PostgreSQL keeps d as the column's "missing value"),
-- so no change of those rows reaches the WAL.  A version stored before the
-- column was added has no c, yet from the addition on the row had c = d.
-- The extension needs the addition's LSN to tell the two apart: before it
-- the column did not exist, from it on the row read d.
--
-- column_additions: [{"lsn": "X/Y", "attnum": n}, ...] in LSN order, NULL
-- when no column was added since tracking began.  The agent appends to it
-- from the extension's DDL log (agent/run.ts, identityChanges), with the
-- commit LSN of the ALTER TABLE.  Columns are named by attnum, which a
-- rename keeps.

ALTER TABLE pgtimewarp_store.tracked_relations ADD COLUMN column_additions jsonb;

COMMENT ON COLUMN pgtimewarp_store.tracked_relations.column_additions IS
    'columns added since tracking began, by attnum, with the LSN of the ALTER TABLE that added them: [{"lsn", "attnum"}]';
