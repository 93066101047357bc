--
-- Renamed columns: a version written before ALTER TABLE ... RENAME COLUMN
-- shows the column under its new name (the agent records each rename in
-- tracked_relations.column_renames from the extension's DDL log), in every
-- function; renames chain, and a key column's rename keeps the history
-- readable once the store's key columns follow it.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE renamed_cols (id int PRIMARY KEY, title text, body text);
CALL fixture.track('renamed_cols', '0/F0000', '2025-06-01 00:00+00');
CALL fixture.change('renamed_cols', '{1}', '0/F0000', 'baseline', '{"id": "1", "title": "first", "body": "b"}');
-- at 0/F1000: RENAME title TO label (and an update written with the new name)
CALL fixture.commit('0/F1000', '2025-06-01 01:00+00');
CALL fixture.change('renamed_cols', '{1}', '0/F1000', 'update', '{"id": "1", "label": "second", "body": "b"}');
-- at 0/F2000: RENAME body TO text, RENAME label TO heading
CALL fixture.commit('0/F2000', '2025-06-01 02:00+00');
CALL fixture.change('renamed_cols', '{1}', '0/F2000', 'update', '{"id": "1", "heading": "third", "text": "b2"}');
CALL fixture.checkpoint('0/F2000', '2025-06-01 02:00+00');
ALTER TABLE renamed_cols RENAME title TO label;
ALTER TABLE renamed_cols RENAME body TO text;
ALTER TABLE renamed_cols RENAME label TO heading;

-- before the agent recorded the renames: old versions show their old names
SELECT pgtimewarp_asof_pk_lsn('renamed_cols', '{"id": 1}', '0/F0000');
SELECT * FROM pgtimewarp_asof_row(NULL::renamed_cols, '{"id": 1}', '2025-06-01 00:00+00');

UPDATE pgtimewarp_store.tracked_relations
   SET column_renames = '[{"lsn": "0/F1000", "old": "title", "new": "label"},
                          {"lsn": "0/F2000", "old": "body", "new": "text"},
                          {"lsn": "0/F2000", "old": "label", "new": "heading"}]'
 WHERE table_name = 'renamed_cols';
-- now every version reads under the names the columns have today
SELECT pgtimewarp_asof_pk_lsn('renamed_cols', '{"id": 1}', '0/F0000');
SELECT pgtimewarp_asof_pk_lsn('renamed_cols', '{"id": 1}', '0/F1000');
SELECT pgtimewarp_asof_pk_lsn('renamed_cols', '{"id": 1}', '0/F2000');
SELECT * FROM pgtimewarp_asof_row(NULL::renamed_cols, '{"id": 1}', '2025-06-01 00:00+00');
SELECT valid_from_lsn, op, row_data, changed_columns
  FROM pgtimewarp_diff_pk('renamed_cols', '{"id": 1}', '2025-06-01 00:00+00', '2025-06-01 02:00+00');

-- a key column renamed: readable once the store's key columns follow it
ALTER TABLE renamed_cols RENAME id TO ident;
SELECT pgtimewarp_asof_pk('renamed_cols', '{"ident": 1}', '2025-06-01 00:00+00');
UPDATE pgtimewarp_store.tracked_relations
   SET pk_columns = '{ident}',
       column_renames = column_renames || '[{"lsn": "0/F3000", "old": "id", "new": "ident"}]'
 WHERE table_name = 'renamed_cols';
SELECT pgtimewarp_asof_pk('renamed_cols', '{"ident": 1}', '2025-06-01 00:00+00');

DROP TABLE renamed_cols;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'renamed_cols';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
