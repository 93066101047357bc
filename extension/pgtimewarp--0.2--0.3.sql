-- pgtimewarp 0.2 -> 0.3: long keys, recorded gaps, and history that belongs
-- to a table rather than to its name (store migration 3_safe_history.sql).
-- Run the store migration first ("pgtimewarp migrate", or the installer,
-- which does both).

\echo Use "ALTER EXTENSION pgtimewarp UPDATE TO '0.3'" to load this file. \quit

-- A key longer than 512 bytes is indexed by digest and kept whole in pk_full.
ALTER FOREIGN TABLE pgtimewarp.row_versions ADD COLUMN pk_full text[] COLLATE "C";
ALTER FOREIGN TABLE pgtimewarp.row_version_probe ADD COLUMN pk_full text[] COLLATE "C";

CREATE FOREIGN TABLE pgtimewarp.history_gaps (
    relation_id integer NOT NULL,
    from_lsn pg_lsn NOT NULL,
    from_ts timestamptz NOT NULL,
    to_lsn pg_lsn,
    to_ts timestamptz,
    reason text NOT NULL
) SERVER pgtimewarp_store OPTIONS (schema_name 'pgtimewarp_store', table_name 'history_gaps');
REVOKE ALL ON pgtimewarp.history_gaps FROM PUBLIC;

CREATE FUNCTION pgtimewarp.index_key(text[])
RETURNS text[]
AS 'MODULE_PATHNAME', 'pgtimewarp_index_key'
LANGUAGE C STRICT IMMUTABLE;
COMMENT ON FUNCTION pgtimewarp.index_key(text[]) IS
    'the form a canonical key takes in the store''s index: itself, or ARRAY[NULL, sha256 hex] when longer than 512 bytes';

-- Attaching is a statement that two tables are one: only for roles with
-- the extension owner's privileges (checked inside), and not for PUBLIC.
CREATE FUNCTION pgtimewarp_attach(rel regclass)
RETURNS void
AS 'MODULE_PATHNAME', 'pgtimewarp_attach'
LANGUAGE C STRICT VOLATILE;
COMMENT ON FUNCTION pgtimewarp_attach(regclass) IS
    'give the history stored under a table''s name to the table that has the name now (after pg_restore); only for the extension owner''s roles';
REVOKE ALL ON FUNCTION pgtimewarp_attach(regclass) FROM PUBLIC;
