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
