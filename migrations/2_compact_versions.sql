-- pgtimewarp store schema, version 2: append-only row versions of tracked
-- incarnations, keyed by a compact relation id.
--
-- Why (measured on 2 cores, one backend, fsync on, 1,000,000 versions, see
-- README "Performance"): closing the previous version by UPDATE and then
-- inserting capped the store at about 13,600 versions/s and 785 B/version;
-- appending into a compact layout with one primary key index reached about
-- 67,000 versions/s and 346 B/version.  So:
--   - A version's end is where the key's next version begins.  Nothing is
--     ever updated on the write path, and there is no index of open
--     versions; the as-of probe was already "the latest version of the key
--     at or before L", one descent of the primary key.
--   - Rows name their table by relation_id, an integer, instead of three
--     text columns in every row and in both indexes.
--   - No foreign key is checked per row: the agent's writer resolves
--     relation ids in the transaction that writes the versions.  Deleting
--     a tracked_relations row deletes its versions (a trigger), as the
--     foreign key's cascade did; relation ids are never reused, so versions
--     written for a forgotten incarnation can never show as another's.
--
-- relation_id names one tracked incarnation of a table, not a name: a table
-- dropped and created again under the same name and tracked again gets a new
-- one, so history never passes from one table to another by name.  relid is
-- the source OID the incarnation had when it was tracked: a cache the
-- extension checks, never trusted across dump and restore.
--
-- row_versions is hash-distributable by relation_id (Citus) and
-- partitionable by valid_from_lsn ranges (retention drops or compacts old
-- partitions): its primary key holds both.
--
-- An existing store is converted in place, in this migration's transaction.

-- tracked_relations: the relation id
CREATE SEQUENCE pgtimewarp_store.tracked_relations_relation_id_seq AS integer;
ALTER TABLE pgtimewarp_store.tracked_relations
    ADD COLUMN relation_id integer NOT NULL
        DEFAULT nextval('pgtimewarp_store.tracked_relations_relation_id_seq');
ALTER SEQUENCE pgtimewarp_store.tracked_relations_relation_id_seq
    OWNED BY pgtimewarp_store.tracked_relations.relation_id;

-- postgres_fdw sends every column of a foreign table on INSERT, NULL for
-- those the statement leaves out: pgtimewarp_track gets its relation id
-- from here (INSERT ... RETURNING relation_id).  SECURITY DEFINER: the
-- inserting roles need no privilege on the sequence.
CREATE FUNCTION pgtimewarp_store.tracked_relations_relation_id()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.relation_id IS NULL THEN
        NEW.relation_id := nextval('pgtimewarp_store.tracked_relations_relation_id_seq');
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER tracked_relations_relation_id
    BEFORE INSERT ON pgtimewarp_store.tracked_relations
    FOR EACH ROW EXECUTE FUNCTION pgtimewarp_store.tracked_relations_relation_id();

ALTER TABLE pgtimewarp_store.row_versions
    DROP CONSTRAINT row_versions_node_id_schema_name_table_name_fkey;

-- What the foreign key's ON DELETE CASCADE did: deleting a tracked
-- incarnation deletes its history (pgtimewarp_forget, or by hand).
CREATE FUNCTION pgtimewarp_store.tracked_relations_forget()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM pgtimewarp_store.row_versions WHERE relation_id = OLD.relation_id;
    RETURN OLD;
END;
$$;
CREATE TRIGGER tracked_relations_forget
    AFTER DELETE ON pgtimewarp_store.tracked_relations
    FOR EACH ROW EXECUTE FUNCTION pgtimewarp_store.tracked_relations_forget();
ALTER TABLE pgtimewarp_store.tracked_relations DROP CONSTRAINT tracked_relations_pkey;
ALTER TABLE pgtimewarp_store.tracked_relations ADD PRIMARY KEY (relation_id);
-- one incarnation per name at a time: a name is tracked again only after
-- pgtimewarp_forget deleted the history of the one before
ALTER TABLE pgtimewarp_store.tracked_relations
    ADD CONSTRAINT tracked_relations_name_key UNIQUE (node_id, schema_name, table_name);

-- row_versions: append-only, compact
ALTER TABLE pgtimewarp_store.row_versions RENAME TO row_versions_v1;
ALTER INDEX pgtimewarp_store.row_versions_pkey RENAME TO row_versions_v1_pkey;

-- Columns in an order that packs without alignment padding.
-- op: 'b' baseline, 'i' insert, 'u' update, 'd' delete, 't' truncate.  A
-- delete or truncate is a version without row_data (a tombstone).
CREATE TABLE pgtimewarp_store.row_versions (
    valid_from_lsn pg_lsn NOT NULL,
    valid_from_ts  timestamptz NOT NULL,
    relation_id    integer NOT NULL,
    op             "char" NOT NULL CHECK (op IN ('b', 'i', 'u', 'd', 't')),
    pk             text[] COLLATE "C" NOT NULL,
    row_data       jsonb,
    CHECK ((op IN ('d', 't')) = (row_data IS NULL)),
    -- no two versions of one key at one LSN (a transaction applied twice is
    -- refused); also the as-of probe: "relation_id = $r AND pk = $k AND
    -- valid_from_lsn <= $L ORDER BY valid_from_lsn DESC LIMIT 1"
    PRIMARY KEY (relation_id, pk, valid_from_lsn)
);

INSERT INTO pgtimewarp_store.row_versions (valid_from_lsn, valid_from_ts, relation_id, op, pk, row_data)
SELECT v.valid_from_lsn, v.valid_from_ts, r.relation_id,
       CASE v.op WHEN 'baseline' THEN 'b' WHEN 'insert' THEN 'i' WHEN 'update' THEN 'u'
                 WHEN 'delete' THEN 'd' WHEN 'truncate' THEN 't' END::"char",
       v.pk, v.row_data
  FROM pgtimewarp_store.row_versions_v1 v
  JOIN pgtimewarp_store.tracked_relations r USING (node_id, schema_name, table_name)
 ORDER BY r.relation_id, v.pk, v.valid_from_lsn;

DROP TABLE pgtimewarp_store.row_versions_v1;

-- History as people read it: names, an end for every version (the next
-- version's start; NULL while current) and op spelled out.  Filter it by
-- relation_id and pk where the store is large: only those reach below the
-- window.
CREATE VIEW pgtimewarp_store.row_history AS
SELECT r.node_id, r.schema_name, r.table_name, v.relation_id, v.pk,
       v.valid_from_lsn, lead(v.valid_from_lsn) OVER w AS valid_to_lsn,
       v.valid_from_ts, lead(v.valid_from_ts) OVER w AS valid_to_ts,
       CASE v.op WHEN 'b' THEN 'baseline' WHEN 'i' THEN 'insert' WHEN 'u' THEN 'update'
                 WHEN 'd' THEN 'delete' WHEN 't' THEN 'truncate' END AS op,
       v.row_data
  FROM pgtimewarp_store.row_versions v
  JOIN pgtimewarp_store.tracked_relations r ON r.relation_id = v.relation_id
WINDOW w AS (PARTITION BY v.relation_id, v.pk ORDER BY v.valid_from_lsn);
