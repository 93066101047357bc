-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION pgtimewarp" to load this file. \quit

-- Internal objects live in schema pgtimewarp, which only the extension's
-- owner may use.  The contract functions live in the extension's schema.
CREATE SCHEMA pgtimewarp;
REVOKE ALL ON SCHEMA pgtimewarp FROM PUBLIC;

-- Which node of the store this database is.  One row; set by
-- pgtimewarp_configure() (the installer calls it).  Dumped with the database.
CREATE TABLE pgtimewarp.config (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    node_id   text NOT NULL CHECK (node_id ~ '^[A-Za-z0-9_.-]{1,63}$')
);
SELECT pg_catalog.pg_extension_config_dump('pgtimewarp.config', '');

-- The store.  The installer sets host, port and dbname with ALTER SERVER and
-- creates a user mapping for the extension's owner only.
CREATE SERVER pgtimewarp_store FOREIGN DATA WRAPPER postgres_fdw
    OPTIONS (batch_size '1000', fetch_size '1000');
REVOKE ALL ON FOREIGN SERVER pgtimewarp_store FROM PUBLIC;

-- Foreign tables mirroring the store (migrations/ defines the real ones).
CREATE FOREIGN TABLE pgtimewarp.nodes (
    node_id text NOT NULL,
    database_name text,
    system_identifier text,
    created_at timestamptz DEFAULT now()
) SERVER pgtimewarp_store OPTIONS (schema_name 'pgtimewarp_store', table_name 'nodes');

CREATE FOREIGN TABLE pgtimewarp.tracked_relations (
    node_id text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    relid oid,
    pk_columns text[] NOT NULL,
    tracked_from_lsn pg_lsn NOT NULL,
    tracked_from_ts timestamptz NOT NULL,
    untracked_lsn pg_lsn,
    untracked_ts timestamptz
) SERVER pgtimewarp_store OPTIONS (schema_name 'pgtimewarp_store', table_name 'tracked_relations');

CREATE FOREIGN TABLE pgtimewarp.row_versions (
    node_id text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    pk text[] COLLATE "C" NOT NULL,
    valid_from_lsn pg_lsn NOT NULL,
    valid_to_lsn pg_lsn,
    valid_from_ts timestamptz NOT NULL,
    valid_to_ts timestamptz,
    op text NOT NULL,
    row_data jsonb
) SERVER pgtimewarp_store OPTIONS (schema_name 'pgtimewarp_store', table_name 'row_versions');

CREATE FOREIGN TABLE pgtimewarp.lsn_time_map (
    node_id text NOT NULL,
    lsn pg_lsn NOT NULL,
    commit_ts timestamptz NOT NULL,
    resolve_ts timestamptz,         -- set by the store's trigger
    is_heartbeat boolean NOT NULL DEFAULT false
) SERVER pgtimewarp_store OPTIONS (schema_name 'pgtimewarp_store', table_name 'lsn_time_map');

CREATE FOREIGN TABLE pgtimewarp.wal_checkpoints (
    node_id text NOT NULL,
    slot_name text NOT NULL,
    confirmed_lsn pg_lsn NOT NULL,
    confirmed_ts timestamptz NOT NULL,
    updated_at timestamptz DEFAULT now()
) SERVER pgtimewarp_store OPTIONS (schema_name 'pgtimewarp_store', table_name 'wal_checkpoints');

-- event_id is left out: the store generates it, and postgres_fdw would send
-- an explicit NULL for it on INSERT.
CREATE FOREIGN TABLE pgtimewarp.health_events (
    node_id text NOT NULL,
    occurred_at timestamptz DEFAULT now(),
    severity text NOT NULL,
    kind text NOT NULL,
    message text NOT NULL,
    detail jsonb
) SERVER pgtimewarp_store OPTIONS (schema_name 'pgtimewarp_store', table_name 'health_events');

-- The as-of probe reads the first row of a remote backward index scan
-- ("... ORDER BY valid_from_lsn DESC" with the LIMIT applied locally).  A
-- remote cursor runs only as far as the rows fetched, so fetching one row at a
-- time makes the probe one index descent however many versions the key has.
CREATE FOREIGN TABLE pgtimewarp.row_version_probe (
    node_id text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    pk text[] COLLATE "C" NOT NULL,
    valid_from_lsn pg_lsn NOT NULL,
    valid_to_lsn pg_lsn,
    valid_from_ts timestamptz NOT NULL,
    valid_to_ts timestamptz,
    op text NOT NULL,
    row_data jsonb
) SERVER pgtimewarp_store
  OPTIONS (schema_name 'pgtimewarp_store', table_name 'row_versions', fetch_size '1');

REVOKE ALL ON ALL TABLES IN SCHEMA pgtimewarp FROM PUBLIC;

-- Configuration ----------------------------------------------------------

CREATE FUNCTION pgtimewarp_configure(node_id text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF node_id IS NULL OR node_id !~ '^[A-Za-z0-9_.-]{1,63}$' THEN
        RAISE EXCEPTION 'invalid pgtimewarp node id %', coalesce(quote_literal(node_id), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A node id is 1 to 63 letters, digits, underscores, dots or hyphens.',
                  HINT = 'Use the node id the store knows this database by, e.g. the one "pgtimewarp install" printed.';
    END IF;
    INSERT INTO pgtimewarp.config (node_id) VALUES (node_id)
    ON CONFLICT (singleton) DO UPDATE SET node_id = EXCLUDED.node_id;
END;
$$;
REVOKE ALL ON FUNCTION pgtimewarp_configure(text) FROM PUBLIC;
COMMENT ON FUNCTION pgtimewarp_configure(text) IS
    'sets the node id under which this database''s history is kept in the store';

-- The SQL contract -------------------------------------------------------

CREATE FUNCTION pgtimewarp_track(rel regclass)
RETURNS pg_lsn
AS 'MODULE_PATHNAME', 'pgtimewarp_track'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION pgtimewarp_track(regclass) IS
    'starts recording the history of a table; returns the LSN from which its history is complete';

CREATE FUNCTION pgtimewarp_untrack(rel regclass)
RETURNS void
AS 'MODULE_PATHNAME', 'pgtimewarp_untrack'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION pgtimewarp_untrack(regclass) IS
    'stops recording the history of a table; what was recorded stays queryable';

CREATE FUNCTION pgtimewarp_asof_pk(rel regclass, pk jsonb, at timestamptz)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'pgtimewarp_asof_pk'
LANGUAGE C STABLE;
COMMENT ON FUNCTION pgtimewarp_asof_pk(regclass, jsonb, timestamptz) IS
    'the row with primary key pk as committed at time at, as a JSON object, or NULL if it did not exist then';

CREATE FUNCTION pgtimewarp_asof_pk_lsn(rel regclass, pk jsonb, at pg_lsn)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'pgtimewarp_asof_pk_lsn'
LANGUAGE C STABLE;
COMMENT ON FUNCTION pgtimewarp_asof_pk_lsn(regclass, jsonb, pg_lsn) IS
    'the row with primary key pk as committed at WAL position at, as a JSON object, or NULL if it did not exist then';

CREATE FUNCTION pgtimewarp_asof_row(rel anyelement, pk jsonb, at timestamptz)
RETURNS anyelement
AS 'MODULE_PATHNAME', 'pgtimewarp_asof_row'
LANGUAGE C STABLE;
COMMENT ON FUNCTION pgtimewarp_asof_row(anyelement, jsonb, timestamptz) IS
    'the row with primary key pk as committed at time at, typed as the table''s row: SELECT * FROM pgtimewarp_asof_row(NULL::t, ''{"id":1}'', ts)';

CREATE FUNCTION pgtimewarp_diff_pk(rel regclass, pk jsonb, from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (
    valid_from_lsn pg_lsn,
    valid_to_lsn pg_lsn,
    valid_from_ts timestamptz,
    valid_to_ts timestamptz,
    op text,
    row_data jsonb,
    changed_columns text[]
)
AS 'MODULE_PATHNAME', 'pgtimewarp_diff_pk'
LANGUAGE C STABLE ROWS 10;
COMMENT ON FUNCTION pgtimewarp_diff_pk(regclass, jsonb, timestamptz, timestamptz) IS
    'every version of the row with primary key pk that was current at some moment in [from_ts, to_ts], oldest first';

CREATE FUNCTION pgtimewarp_status()
RETURNS TABLE (
    schema_name text,
    table_name text,
    tracking boolean,
    tracked_from_lsn pg_lsn,
    tracked_from_ts timestamptz,
    untracked_lsn pg_lsn,
    row_versions bigint,
    confirmed_lsn pg_lsn,
    confirmed_ts timestamptz,
    lag_bytes numeric
)
AS 'MODULE_PATHNAME', 'pgtimewarp_status'
LANGUAGE C STABLE;
COMMENT ON FUNCTION pgtimewarp_status() IS
    'tracked tables of this database: since when, how many row versions, and how far the agent has applied the WAL';

-- Helpers ---------------------------------------------------------------

CREATE FUNCTION pgtimewarp_forget(rel regclass)
RETURNS bigint
AS 'MODULE_PATHNAME', 'pgtimewarp_forget'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION pgtimewarp_forget(regclass) IS
    'deletes the kept history of a table no longer tracked, so it can be tracked afresh; returns the number of row versions deleted';

CREATE FUNCTION pgtimewarp_pk_key(rel regclass, pk jsonb)
RETURNS text[]
AS 'MODULE_PATHNAME', 'pgtimewarp_pk_key'
LANGUAGE C STABLE;
COMMENT ON FUNCTION pgtimewarp_pk_key(regclass, jsonb) IS
    'the canonical store key of a primary key given as JSON (the form the agent writes)';

-- The text output of any value under pgtimewarp's canonical output settings,
-- used by pgtimewarp_track to write the baseline.
CREATE FUNCTION pgtimewarp.canonical_text(anyelement)
RETURNS text
AS 'MODULE_PATHNAME', 'pgtimewarp_canonical_text'
LANGUAGE C STRICT STABLE;
COMMENT ON FUNCTION pgtimewarp.canonical_text(anyelement) IS
    'text output of a value as the store keeps it';

CREATE FUNCTION pgtimewarp.canonical_key_text(anyelement)
RETURNS text
AS 'MODULE_PATHNAME', 'pgtimewarp_canonical_key_text'
LANGUAGE C STRICT STABLE;
COMMENT ON FUNCTION pgtimewarp.canonical_key_text(anyelement) IS
    'text of a primary key value as the store keys by it (numeric scale trimmed, float -0 as 0)';
