-- pgtimewarp 0.1 -> 0.2: the store's row versions are append-only and keyed
-- by relation id (store migration 2_compact_versions.sql).  Run the store
-- migration first ("pgtimewarp migrate", or the installer, which does both).

\echo Use "ALTER EXTENSION pgtimewarp UPDATE TO '0.2'" to load this file. \quit

ALTER FOREIGN TABLE pgtimewarp.tracked_relations ADD COLUMN relation_id integer;

DROP FOREIGN TABLE pgtimewarp.row_versions;
DROP FOREIGN TABLE pgtimewarp.row_version_probe;

-- op: 'b' baseline, 'i' insert, 'u' update, 'd' delete, 't' truncate.  A
-- version ends where the key's next version begins.
CREATE FOREIGN TABLE pgtimewarp.row_versions (
    valid_from_lsn pg_lsn NOT NULL,
    valid_from_ts timestamptz NOT NULL,
    relation_id integer NOT NULL,
    op "char" NOT NULL,
    pk text[] COLLATE "C" NOT NULL,
    row_data jsonb
) SERVER pgtimewarp_store OPTIONS (schema_name 'pgtimewarp_store', table_name 'row_versions');

-- The as-of probe reads the first row of a remote index scan ("... ORDER BY
-- valid_from_lsn DESC" with the LIMIT applied locally).  A remote cursor runs
-- only as far as the rows fetched, so fetching one row at a time makes the
-- probe one index descent however many versions the key has.
CREATE FOREIGN TABLE pgtimewarp.row_version_probe (
    valid_from_lsn pg_lsn NOT NULL,
    valid_from_ts timestamptz NOT NULL,
    relation_id integer NOT NULL,
    op "char" NOT NULL,
    pk text[] COLLATE "C" NOT NULL,
    row_data jsonb
) SERVER pgtimewarp_store
  OPTIONS (schema_name 'pgtimewarp_store', table_name 'row_versions', fetch_size '1');

REVOKE ALL ON pgtimewarp.row_versions, pgtimewarp.row_version_probe FROM PUBLIC;
