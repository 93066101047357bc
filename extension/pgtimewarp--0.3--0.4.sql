-- pgtimewarp 0.3 -> 0.4: the whole table as it was, many keys at once, and
-- a cheap probe of the store.  Lookups read the store over the extension's
-- own connection (built from foreign server pgtimewarp_store and the
-- owner's user mapping), one statement per call; the foreign tables stay
-- for people reading the store by hand.

\echo Use "ALTER EXTENSION pgtimewarp UPDATE TO '0.4'" to load this file. \quit

CREATE FUNCTION pgtimewarp_asof_pks(rel regclass, pks jsonb[], at timestamptz)
RETURNS TABLE (pk jsonb, row_data jsonb)
AS 'MODULE_PATHNAME', 'pgtimewarp_asof_pks'
LANGUAGE C STABLE ROWS 1000;
COMMENT ON FUNCTION pgtimewarp_asof_pks(regclass, jsonb[], timestamptz) IS
    'the rows with primary keys pks as committed at time at, in one store statement: a row per key, in order, row_data NULL where none existed';

CREATE FUNCTION pgtimewarp_asof_table(rel anyelement, at timestamptz)
RETURNS SETOF anyelement
AS 'MODULE_PATHNAME', 'pgtimewarp_asof_table'
LANGUAGE C STABLE ROWS 10000;
COMMENT ON FUNCTION pgtimewarp_asof_table(anyelement, timestamptz) IS
    'the whole table as committed at time at: SELECT * FROM pgtimewarp_asof_table(NULL::t, ts)';

CREATE FUNCTION pgtimewarp_asof_table_lsn(rel anyelement, at pg_lsn)
RETURNS SETOF anyelement
AS 'MODULE_PATHNAME', 'pgtimewarp_asof_table_lsn'
LANGUAGE C STABLE ROWS 10000;
COMMENT ON FUNCTION pgtimewarp_asof_table_lsn(anyelement, pg_lsn) IS
    'the whole table as committed at WAL position at: SELECT * FROM pgtimewarp_asof_table_lsn(NULL::t, lsn)';

CREATE FUNCTION pgtimewarp_ping()
RETURNS text
AS 'MODULE_PATHNAME', 'pgtimewarp_ping'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION pgtimewarp_ping() IS
    'the store''s server version, read over the connection lookups use; an error says why the store cannot be reached';

CREATE FUNCTION pgtimewarp_disconnect()
RETURNS boolean
AS 'MODULE_PATHNAME', 'pgtimewarp_disconnect'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION pgtimewarp_disconnect() IS
    'closes this session''s connection to the store (a later lookup opens one again); false when there was none';

-- The DDL log rows of a transaction whose commit the agent has just decoded.
-- The walsender can decode a commit before the committing backend leaves the
-- proc array, so the snapshot's xmax (the next xid it knows of) may still be
-- the transaction's own xid, or below it: the 32-bit xid names the full xid
-- nearest to xmax, on either side, not the one below it (0.3 took the one
-- below, skipped to the previous epoch, and found no rows: the agent then
-- ignored a real rename).
CREATE OR REPLACE FUNCTION pgtimewarp_ddl_events(first_id bigint, last_id bigint, xid bigint)
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
    IF full_xid > next + 2147483648 THEN
        full_xid := full_xid - 4294967296;  -- from the epoch before
    ELSIF full_xid < next - 2147483648 THEN
        full_xid := full_xid + 4294967296;  -- from the next epoch
    END IF;
    IF full_xid < 3 THEN
        RETURN;
    END IF;
    -- committed in the WAL, perhaps not yet visible: wait until it is
    BEGIN
        FOR i IN 1..1000 LOOP
            EXIT WHEN pg_xact_status(full_xid::text::xid8) IS DISTINCT FROM 'in progress';
            PERFORM pg_sleep(0.001);
        END LOOP;
    EXCEPTION WHEN invalid_parameter_value THEN
        RETURN;  -- "in the future": no transaction has it, a forged claim
    END;
    RETURN QUERY
    SELECT l.id, l.relid, l.event, l.schema_name, l.table_name, l.columns
      FROM pgtimewarp.ddl_log l
     WHERE l.id BETWEEN first_id AND last_id
       AND l.xid = full_xid::text::xid8
     ORDER BY l.id;
END;
$$;
