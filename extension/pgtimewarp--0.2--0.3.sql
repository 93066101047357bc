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

-- An incarnation is dropped with its table (the agent marks it, from the
-- DDL log below); lookups find history by the table's OID among live ones.
ALTER FOREIGN TABLE pgtimewarp.tracked_relations
    ADD COLUMN dropped_lsn pg_lsn,
    ADD COLUMN dropped_ts timestamptz,
    ADD COLUMN columns jsonb,
    ADD COLUMN column_renames jsonb;

-- The DDL log: what the agent must know to follow a table's history across
-- renames (ALTER TABLE ... RENAME / SET SCHEMA, ALTER SCHEMA ... RENAME) and
-- drops.  The event triggers below write it, as the extension's owner, in
-- the transaction that ran the DDL, and emit a transactional "pgtimewarp"
-- message {"action": "ddl", "first": id, "last": id} that reaches the agent
-- in WAL order with the transaction's changes.  Anybody can emit such a
-- message (pg_logical_emit_message is PUBLIC), so the agent believes only
-- the rows, which only the owner can write, and only those written by the
-- transaction the message came in (xid).
CREATE TABLE pgtimewarp.ddl_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    relid oid NOT NULL,
    event text NOT NULL CHECK (event IN ('altered', 'dropped')),
    schema_name text NOT NULL,
    table_name text NOT NULL,
    -- attnum -> name of the table's columns after the command ('altered')
    columns jsonb,
    logged_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
REVOKE ALL ON pgtimewarp.ddl_log FROM PUBLIC;
COMMENT ON TABLE pgtimewarp.ddl_log IS
    'renames and drops of tables, for the pgtimewarp agent; written by event triggers';

CREATE FUNCTION pgtimewarp.log_table_ddl()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    first_id bigint;
    last_id bigint;
BEGIN
    IF TG_EVENT = 'sql_drop' THEN
        WITH logged AS (
            INSERT INTO pgtimewarp.ddl_log (relid, event, schema_name, table_name)
            SELECT d.objid, 'dropped', d.schema_name, d.object_name
              FROM pg_event_trigger_dropped_objects() d
             WHERE d.object_type = 'table' AND NOT d.is_temporary AND d.objsubid = 0
            RETURNING id)
        SELECT min(id), max(id) INTO first_id, last_id FROM logged;
    ELSE
        -- every ordinary table a command touched, named as it is now: the
        -- agent compares with the name it knows (a renamed schema renames
        -- all of its tables)
        WITH touched AS (
            SELECT c.oid FROM pg_event_trigger_ddl_commands() d
              JOIN pg_class c ON c.oid = d.objid
             WHERE d.classid = 'pg_catalog.pg_class'::regclass
            UNION
            SELECT c.oid FROM pg_event_trigger_ddl_commands() d
              JOIN pg_class c ON c.relnamespace = d.objid
             WHERE d.classid = 'pg_catalog.pg_namespace'::regclass),
        logged AS (
            INSERT INTO pgtimewarp.ddl_log (relid, event, schema_name, table_name, columns)
            SELECT c.oid, 'altered', n.nspname, c.relname,
                   (SELECT jsonb_object_agg(a.attnum::text, a.attname)
                      FROM pg_attribute a
                     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
              FROM touched t
              JOIN pg_class c ON c.oid = t.oid
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND c.relpersistence = 'p'
            RETURNING id)
        SELECT min(id), max(id) INTO first_id, last_id FROM logged;
    END IF;
    IF first_id IS NOT NULL THEN
        PERFORM pg_logical_emit_message(true, 'pgtimewarp',
            json_build_object('action', 'ddl', 'first', first_id, 'last', last_id)::text);
    END IF;
END;
$$;
COMMENT ON FUNCTION pgtimewarp.log_table_ddl() IS
    'event trigger: logs renames and drops of tables for the pgtimewarp agent';
REVOKE ALL ON FUNCTION pgtimewarp.log_table_ddl() FROM PUBLIC;

CREATE EVENT TRIGGER pgtimewarp_table_renamed ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER SCHEMA')
    EXECUTE FUNCTION pgtimewarp.log_table_ddl();
CREATE EVENT TRIGGER pgtimewarp_table_dropped ON sql_drop
    EXECUTE FUNCTION pgtimewarp.log_table_ddl();
-- also under session_replication_role = replica (logical replication
-- appliers, some migration tools): a rename nobody logs is a gap
ALTER EVENT TRIGGER pgtimewarp_table_renamed ENABLE ALWAYS;
ALTER EVENT TRIGGER pgtimewarp_table_dropped ENABLE ALWAYS;

-- What the agent reads of the log: the rows of one message, written by the
-- transaction `xid` (its 32-bit xid, as the stream gives it).  SECURITY
-- DEFINER: the agent's role needs no privilege in schema pgtimewarp; the
-- rows hold table names and OIDs, which pg_class shows everybody.  The
-- walsender can send a transaction a moment before its commit is visible to
-- other sessions: while it is still in progress, wait (its commit record is
-- written, so not for long); a forged message's transaction has committed.
CREATE FUNCTION pgtimewarp_ddl_events(first_id bigint, last_id bigint, xid bigint)
RETURNS TABLE (id bigint, relid oid, event text, schema_name text, table_name text, columns jsonb)
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    next numeric := pg_snapshot_xmax(pg_current_snapshot())::text::numeric;
    full_xid numeric := next - (next % 4294967296) + pgtimewarp_ddl_events.xid;
BEGIN
    IF full_xid >= next THEN
        full_xid := full_xid - 4294967296;  -- from the epoch before
    END IF;
    IF full_xid < 3 THEN
        RETURN;
    END IF;
    FOR i IN 1..1000 LOOP
        EXIT WHEN pg_xact_status(full_xid::text::xid8) IS DISTINCT FROM 'in progress';
        PERFORM pg_sleep(0.001);
    END LOOP;
    RETURN QUERY
    SELECT l.id, l.relid, l.event, l.schema_name, l.table_name, l.columns
      FROM pgtimewarp.ddl_log l
     WHERE l.id BETWEEN first_id AND last_id
       AND l.xid = full_xid::text::xid8
     ORDER BY l.id;
END;
$$;
COMMENT ON FUNCTION pgtimewarp_ddl_events(bigint, bigint, bigint) IS
    'the DDL log rows a "pgtimewarp" ddl message names, if transaction xid wrote them: what the agent believes';
