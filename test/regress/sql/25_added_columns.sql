--
-- A column added with a default (ALTER TABLE ... ADD COLUMN c ... DEFAULT d)
-- gives the rows already there c = d without writing them, so no change of
-- theirs reaches the WAL.  Read at a time from the addition on, a version
-- stored before it has c = d (the column's missing value); read before the
-- addition, the column did not exist: absent from the JSON, NULL in rows.
-- The agent records each addition's LSN (column_additions).
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE widened (id int PRIMARY KEY, v text);
INSERT INTO widened VALUES (1, 'one'), (2, 'two'), (3, 'three');
CALL fixture.track('widened', '0/130000', '2025-10-01 00:00+00');
CALL fixture.change('widened', '{1}', '0/130000', 'baseline', '{"id": "1", "v": "one"}');
CALL fixture.change('widened', '{2}', '0/130000', 'baseline', '{"id": "2", "v": "two"}');
CALL fixture.change('widened', '{3}', '0/130000', 'baseline', '{"id": "3", "v": "three"}');
-- 01:00 ALTER TABLE widened ADD COLUMN qty int DEFAULT 7, ADD COLUMN note text, ADD COLUMN at date DEFAULT '2025-10-01'
ALTER TABLE widened ADD COLUMN qty int DEFAULT 7, ADD COLUMN note text, ADD COLUMN at date DEFAULT '2025-10-01';
CALL fixture.commit('0/131000', '2025-10-01 01:00+00');
UPDATE pgtimewarp_store.tracked_relations
   SET column_additions = '[{"lsn": "0/131000", "attnum": 3}, {"lsn": "0/131000", "attnum": 4}, {"lsn": "0/131000", "attnum": 5}]'
 WHERE table_name = 'widened';
-- 02:00 UPDATE widened SET qty = 8 WHERE id = 2; UPDATE widened SET qty = NULL WHERE id = 3
UPDATE widened SET qty = 8 WHERE id = 2;
UPDATE widened SET qty = NULL WHERE id = 3;
CALL fixture.commit('0/132000', '2025-10-01 02:00+00');
CALL fixture.change('widened', '{2}', '0/132000', 'update', '{"id": "2", "v": "two", "qty": "8", "note": null, "at": "2025-10-01"}');
CALL fixture.change('widened', '{3}', '0/132000', 'update', '{"id": "3", "v": "three", "qty": null, "note": null, "at": "2025-10-01"}');
CALL fixture.checkpoint('0/132000', '2025-10-01 02:00+00');

-- before the addition: the columns did not exist
SELECT pgtimewarp_asof_pk('widened', '{"id": 1}', '2025-10-01 00:30+00');
SELECT * FROM pgtimewarp_asof_row(NULL::widened, '{"id": 1}', '2025-10-01 00:30+00');
SELECT * FROM pgtimewarp_asof_table(NULL::widened, '2025-10-01 00:30+00') ORDER BY id;
-- from the addition on: the rows had the defaults
SELECT pgtimewarp_asof_pk('widened', '{"id": 1}', '2025-10-01 01:00+00');
SELECT * FROM pgtimewarp_asof_row(NULL::widened, '{"id": 1}', '2025-10-01 01:30+00');
SELECT * FROM pgtimewarp_asof_table(NULL::widened, '2025-10-01 01:00+00') ORDER BY id;
SELECT * FROM pgtimewarp_asof_pks('widened', ARRAY['{"id": 1}', '{"id": 3}']::jsonb[], '2025-10-01 01:00+00');
-- later versions keep what they stored, a NULL too
SELECT * FROM pgtimewarp_asof_table_lsn(NULL::widened, '0/132000') ORDER BY id;
-- and now: exactly the table
SELECT (SELECT jsonb_agg(to_jsonb(a) ORDER BY id) FROM pgtimewarp_asof_table(NULL::widened, '2025-10-01 02:00+00') a)
     = (SELECT jsonb_agg(to_jsonb(w) ORDER BY id) FROM widened w) AS table_as_now,
       (SELECT bool_and(pgtimewarp_asof_pk('widened', jsonb_build_object('id', w.id), '2025-10-01 02:00+00') = to_jsonb(w))
          FROM widened w) AS rows_as_now;

DROP TABLE widened;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'widened';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
