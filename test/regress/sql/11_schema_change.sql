--
-- Schema changes on a tracked table: row_data follows the table's columns
-- at each version.  Stored values are typed by the table's current columns
-- of the same name; a column the table no longer has keeps its stored text.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

-- The table as it is now: "legacy" was dropped, "added" added, "amount"
-- widened from int to numeric, "label" renamed from "title".
CREATE TABLE evolving (id int PRIMARY KEY, amount numeric, label text, added date);

CALL fixture.track('evolving', '0/70000', '2024-09-01 00:00+00');
CALL fixture.change('evolving', '{1}', '0/70000', 'baseline',
                    '{"id": "1", "amount": "5", "title": "first", "legacy": "old"}');
-- ALTER TABLE ... DROP COLUMN legacy, then an update
CALL fixture.commit('0/71000', '2024-09-01 01:00+00');
CALL fixture.change('evolving', '{1}', '0/71000', 'update',
                    '{"id": "1", "amount": "6", "title": "first"}');
-- RENAME title TO label, ADD COLUMN added, ALTER amount TYPE numeric, update
CALL fixture.commit('0/72000', '2024-09-01 02:00+00');
CALL fixture.change('evolving', '{1}', '0/72000', 'update',
                    '{"id": "1", "amount": "6.25", "label": "first", "added": "2024-09-01"}');
CALL fixture.checkpoint('0/72000', '2024-09-01 02:00+00');

-- each version shows the columns it had
SELECT pgtimewarp_asof_pk_lsn('evolving', '{"id": 1}', '0/70000');
SELECT pgtimewarp_asof_pk_lsn('evolving', '{"id": 1}', '0/71000');
SELECT pgtimewarp_asof_pk_lsn('evolving', '{"id": 1}', '0/72000');

-- typed: the table's current columns; ones the version lacked are NULL
SELECT * FROM pgtimewarp_asof_row(NULL::evolving, '{"id": 1}', '2024-09-01 00:30+00');
SELECT * FROM pgtimewarp_asof_row(NULL::evolving, '{"id": 1}', '2024-09-01 02:00+00');

-- what each version changed, dropped and added columns included
SELECT valid_from_lsn, op, changed_columns
  FROM pgtimewarp_diff_pk('evolving', '{"id": 1}', '2024-09-01 00:00+00', '2024-09-01 02:00+00');

-- a stored value that no longer fits its column's current type names the column
ALTER TABLE evolving ALTER COLUMN label TYPE int USING NULL;
SELECT * FROM pgtimewarp_asof_row(NULL::evolving, '{"id": 1}', '2024-09-01 02:00+00');
-- the stored text is intact: with a compatible type again, it reads again
ALTER TABLE evolving ALTER COLUMN label TYPE text;
SELECT pgtimewarp_asof_pk('evolving', '{"id": 1}', '2024-09-01 02:00+00') ->> 'label' AS label;

DROP TABLE evolving;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'evolving';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
