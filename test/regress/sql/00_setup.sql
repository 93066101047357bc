--
-- Setup for the pgtimewarp regression suite.
--
-- The store lives in this same database (schema pgtimewarp_store, created
-- from the real migration) and is reached through the extension's foreign
-- server pointed back at this database, as postgres_fdw's own tests do.
-- Fixture history is written straight into the store: no agent runs here.
--
\set ECHO none
\i ../migrations/1_create_store.sql
\i ../migrations/2_compact_versions.sql
\i ../migrations/3_safe_history.sql
\i ../migrations/4_node_database_oid.sql
\i ../migrations/5_relation_stats.sql
\i ../migrations/6_column_additions.sql
\set ECHO all

CREATE EXTENSION pgtimewarp CASCADE;

DO $d$
BEGIN
    EXECUTE format('ALTER SERVER pgtimewarp_store OPTIONS (ADD host %L, ADD port %L, ADD dbname %L)',
                   split_part(current_setting('unix_socket_directories'), ',', 1),
                   current_setting('port'), current_database());
END;
$d$;
CREATE USER MAPPING FOR CURRENT_USER SERVER pgtimewarp_store;
SELECT pgtimewarp_configure('regress');
-- stands in for the agent's slot: pgtimewarp_track warns without one
SELECT 'ok' FROM pg_create_logical_replication_slot('regress_agent', 'test_decoding');

-- Fixture helpers: write history into the store as the agent would.
CREATE SCHEMA fixture;

-- Register a table as tracked from a given LSN and time.
CREATE PROCEDURE fixture.track(rel regclass, from_lsn pg_lsn, from_ts timestamptz)
LANGUAGE sql AS $$
    INSERT INTO pgtimewarp_store.nodes (node_id) VALUES ('regress') ON CONFLICT DO NOTHING;
    INSERT INTO pgtimewarp_store.tracked_relations
        (node_id, schema_name, table_name, relid, pk_columns, tracked_from_lsn, tracked_from_ts)
    SELECT 'regress', n.nspname, c.relname, c.oid,
           ARRAY(SELECT a.attname::text
                   FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord), pg_attribute a
                  WHERE i.indrelid = c.oid AND i.indisprimary
                    AND a.attrelid = c.oid AND a.attnum = k.attnum
                  ORDER BY k.ord),
           from_lsn, from_ts
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = rel;
    INSERT INTO pgtimewarp_store.lsn_time_map (node_id, lsn, commit_ts) VALUES ('regress', from_lsn, from_ts);
$$;

-- A commit the agent has seen: its LSN and commit time.
CREATE PROCEDURE fixture.commit(lsn pg_lsn, ts timestamptz)
LANGUAGE sql AS $$
    INSERT INTO pgtimewarp_store.lsn_time_map (node_id, lsn, commit_ts) VALUES ('regress', lsn, ts);
$$;

-- The agent's checkpoint: history is complete up to this commit.
CREATE PROCEDURE fixture.checkpoint(lsn pg_lsn, ts timestamptz)
LANGUAGE sql AS $$
    INSERT INTO pgtimewarp_store.wal_checkpoints (node_id, slot_name, confirmed_lsn, confirmed_ts)
    VALUES ('regress', 'pgtimewarp', lsn, ts)
    ON CONFLICT (node_id) DO UPDATE SET confirmed_lsn = EXCLUDED.confirmed_lsn,
                                        confirmed_ts = EXCLUDED.confirmed_ts;
$$;

-- A change committed at `lsn`: a new version of the key (row_data NULL for
-- delete/truncate), as the agent's writer appends it; the key's previous
-- version ends there.  Commit times come from the lsn_time_map entry of that
-- LSN.
CREATE PROCEDURE fixture.change(rel regclass, pk text[], lsn pg_lsn, op text, row_data jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    id integer;
    ts timestamptz;
BEGIN
    SELECT r.relation_id INTO STRICT id
      FROM pgtimewarp_store.tracked_relations r, pg_class c, pg_namespace n
     WHERE c.oid = rel AND n.oid = c.relnamespace
       AND r.node_id = 'regress' AND r.schema_name = n.nspname AND r.table_name = c.relname;
    SELECT commit_ts INTO STRICT ts FROM pgtimewarp_store.lsn_time_map m
     WHERE m.node_id = 'regress' AND m.lsn = change.lsn;
    -- a long key is indexed by digest and kept whole (migrations/3_safe_history.sql)
    INSERT INTO pgtimewarp_store.row_versions (relation_id, pk, pk_full, valid_from_lsn, valid_from_ts, op, row_data)
    VALUES (id, pgtimewarp_store.index_key(change.pk),
            CASE WHEN (pgtimewarp_store.index_key(change.pk))[1] IS NULL THEN change.pk END,
            change.lsn, ts,
            CASE op WHEN 'baseline' THEN 'b' WHEN 'insert' THEN 'i' WHEN 'update' THEN 'u'
                    WHEN 'delete' THEN 'd' WHEN 'truncate' THEN 't' END, change.row_data);
    -- and counted, as the agent counts what it writes (migrations/5_relation_stats.sql)
    INSERT INTO pgtimewarp_store.relation_stats (relation_id, versions) VALUES (id, 1)
    ON CONFLICT (relation_id) DO UPDATE SET versions = relation_stats.versions + 1;
END;
$$;