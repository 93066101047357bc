-- pgtimewarp store schema, version 3: no key the source accepts is refused,
-- and a part of history known to be missing is said, not hidden.
--
-- Long keys.  The primary key index of row_versions holds each version's key,
-- and a btree entry can hold at most about 2,700 bytes: one row whose key
-- was longer (a 2,688-character text key is enough) made the store refuse
-- the batch, and the agent retried it forever while history stopped for
-- every table.  Now a key whose canonical text is longer than 512 bytes in
-- all is indexed by its SHA-256 digest, ARRAY[NULL, '<hex>']: no key can
-- take that form itself, as a primary key column is never NULL.  pk_full
-- keeps such a key whole, for the probe to compare and for people to read
-- (row_history shows it); it is NULL for every other key and costs those
-- rows nothing (the row header has room for the null bitmap).  The
-- extension (pgtimewarp_index_key), the agent (agent/key.ts indexKey) and
-- the store (pgtimewarp_store.index_key, for keys merged in the store) make
-- the index form the same way, byte for byte.
--
-- Identity.  A tracked incarnation's history belongs to the source table it
-- was recorded from (relid), not to its name: the agent follows renames
-- (the extension logs them, agent/ddl.ts) and marks an incarnation dropped
-- with its table; the extension finds history by relid.  So a name may be
-- shared by a dropped incarnation and a live one, and only one live
-- incarnation may record a table.
--
-- Gaps.  Where the store knows it lacks changes of a table (a transaction
-- the operator chose to skip, see "pgtimewarp skip-transaction"), a row of
-- history_gaps says from where, to where (NULL: still open) and why; a
-- lookup inside a gap is an error that says so, never a silently stale row.

ALTER TABLE pgtimewarp_store.tracked_relations DROP CONSTRAINT tracked_relations_name_key;
ALTER TABLE pgtimewarp_store.tracked_relations
    ADD COLUMN dropped_lsn pg_lsn,
    ADD COLUMN dropped_ts timestamptz;
-- Column names: what the table's columns were called (attnum -> name) as
-- of the last DDL the agent followed, and every column rename since
-- tracking began ([{"lsn", "old", "new"}] in LSN order; NULL: none; postgres_fdw
-- inserts NULL for a column it is not given): a version written
-- before a rename is read with the column's new name.
ALTER TABLE pgtimewarp_store.tracked_relations
    ADD COLUMN columns jsonb,
    ADD COLUMN column_renames jsonb;
CREATE UNIQUE INDEX tracked_relations_relid_key
    ON pgtimewarp_store.tracked_relations (node_id, relid) WHERE dropped_lsn IS NULL;
CREATE INDEX tracked_relations_name_idx
    ON pgtimewarp_store.tracked_relations (node_id, schema_name, table_name);

-- The names an incarnation had: the name it was renamed to at each LSN.
CREATE TABLE pgtimewarp_store.relation_renames (
    relation_id integer NOT NULL
        REFERENCES pgtimewarp_store.tracked_relations (relation_id) ON DELETE CASCADE,
    lsn         pg_lsn NOT NULL,
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    PRIMARY KEY (relation_id, lsn)
);

ALTER TABLE pgtimewarp_store.row_versions ADD COLUMN pk_full text[] COLLATE "C";
ALTER TABLE pgtimewarp_store.row_versions
    ADD CONSTRAINT row_versions_pk_full_check
    CHECK (pk_full IS NULL OR (pk[1] IS NULL AND cardinality(pk) = 2));

-- The digest of a key: SHA-256 over each element's UTF-8 bytes, each
-- preceded by its length in bytes and a colon, so that no two keys share
-- the input ({"ab","c"} is 2:ab1:c, {"a","bc"} 1:a2:bc).
CREATE FUNCTION pgtimewarp_store.index_key(key text[])
RETURNS text[]
LANGUAGE sql
IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN sum(octet_length(convert_to(e, 'UTF8'))) > 512
        THEN ARRAY[NULL, encode(sha256(string_agg(
                 convert_to(octet_length(convert_to(e, 'UTF8'))::text || ':', 'UTF8')
                 || convert_to(e, 'UTF8'), '' ORDER BY n)), 'hex')]::text[]
        ELSE key
    END
    FROM unnest(key) WITH ORDINALITY AS k(e, n)
$$;
COMMENT ON FUNCTION pgtimewarp_store.index_key(text[]) IS
    'The form a canonical key takes in row_versions.pk: itself, or ARRAY[NULL, sha256 hex] when longer than 512 bytes';

CREATE OR REPLACE VIEW pgtimewarp_store.row_history AS
SELECT r.node_id, r.schema_name, r.table_name, v.relation_id,
       coalesce(v.pk_full, v.pk) AS pk,
       v.valid_from_lsn, lead(v.valid_from_lsn) OVER w AS valid_to_lsn,
       v.valid_from_ts, lead(v.valid_from_ts) OVER w AS valid_to_ts,
       CASE v.op WHEN 'b' THEN 'baseline' WHEN 'i' THEN 'insert' WHEN 'u' THEN 'update'
                 WHEN 'd' THEN 'delete' WHEN 't' THEN 'truncate' END AS op,
       v.row_data
  FROM pgtimewarp_store.row_versions v
  JOIN pgtimewarp_store.tracked_relations r ON r.relation_id = v.relation_id
WINDOW w AS (PARTITION BY v.relation_id, v.pk ORDER BY v.valid_from_lsn);

CREATE TABLE pgtimewarp_store.history_gaps (
    relation_id integer NOT NULL
        REFERENCES pgtimewarp_store.tracked_relations (relation_id) ON DELETE CASCADE,
    from_lsn    pg_lsn NOT NULL,
    from_ts     timestamptz NOT NULL,
    -- NULL while open: history is missing from from_lsn on
    to_lsn      pg_lsn,
    to_ts       timestamptz,
    reason      text NOT NULL,
    PRIMARY KEY (relation_id, from_lsn),
    CHECK (to_lsn IS NULL OR to_lsn >= from_lsn)
);

-- Transactions the operator told the agent to skip, by the LSN of their
-- commit record's end (what the agent's messages and doctor report).
CREATE TABLE pgtimewarp_store.skipped_transactions (
    node_id      text NOT NULL REFERENCES pgtimewarp_store.nodes (node_id) ON DELETE CASCADE,
    end_lsn      pg_lsn NOT NULL,
    reason       text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    requested_by text NOT NULL DEFAULT current_user,
    -- when the agent reached it and skipped it
    skipped_at   timestamptz,
    PRIMARY KEY (node_id, end_lsn)
);
