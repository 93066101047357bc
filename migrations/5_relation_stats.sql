-- pgtimewarp store schema, version 5: how many versions each tracked
-- incarnation has, kept as they are written.
--
-- pgtimewarp_status() reported each table's version count with count(*)
-- over row_versions: every call read every version of every table, so its
-- cost grew with all of history.  relation_stats keeps the count instead,
-- one row per incarnation, so status reads one row per table.
--
-- Who keeps it right, in the transaction that writes or deletes the versions:
--   - pgtimewarp_track (the extension, through the FDW role) inserts the
--     incarnation's row with the count of its baseline;
--   - the agent (agent/writer.ts) adds the versions of each store
--     transaction, one statement per transaction for all its tables;
--   - deleting a tracked_relations row (pgtimewarp_forget) deletes its row
--     here by the foreign key's cascade, as it deletes the versions.
-- Nothing else writes row_versions.  A row that is missing counts as 0.

CREATE TABLE pgtimewarp_store.relation_stats (
    relation_id integer PRIMARY KEY
        REFERENCES pgtimewarp_store.tracked_relations (relation_id) ON DELETE CASCADE,
    versions    bigint NOT NULL DEFAULT 0 CHECK (versions >= 0)
);

COMMENT ON TABLE pgtimewarp_store.relation_stats IS
    'Versions per tracked incarnation (count of row_versions), kept by pgtimewarp_track (baseline), the agent (each store transaction) and the cascade from tracked_relations (forget)';

-- The counts of the history already stored, read once here.
INSERT INTO pgtimewarp_store.relation_stats (relation_id, versions)
SELECT r.relation_id, count(v.relation_id)
  FROM pgtimewarp_store.tracked_relations r
  LEFT JOIN pgtimewarp_store.row_versions v ON v.relation_id = r.relation_id
 GROUP BY r.relation_id;
