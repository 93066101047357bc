--
-- A primary-key change closes the old key's version and opens the new
-- key's; TRUNCATE closes every open version of the table at its commit.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE parts (sku text PRIMARY KEY, qty int);

CALL fixture.track('parts', '0/20000', '2024-04-01 00:00+00');
CALL fixture.change('parts', '{A-1}', '0/20000', 'baseline', '{"sku": "A-1", "qty": "5"}');
CALL fixture.change('parts', '{B-2}', '0/20000', 'baseline', '{"sku": "B-2", "qty": "9"}');
-- UPDATE parts SET sku = 'A-100' WHERE sku = 'A-1'
CALL fixture.commit('0/21000', '2024-04-01 01:00+00');
CALL fixture.change('parts', '{A-1}', '0/21000', 'delete', NULL);
CALL fixture.change('parts', '{A-100}', '0/21000', 'insert', '{"sku": "A-100", "qty": "5"}');
-- TRUNCATE parts
CALL fixture.commit('0/22000', '2024-04-01 02:00+00');
CALL fixture.change('parts', '{A-100}', '0/22000', 'truncate', NULL);
CALL fixture.change('parts', '{B-2}', '0/22000', 'truncate', NULL);
-- INSERT after the truncate
CALL fixture.commit('0/23000', '2024-04-01 03:00+00');
CALL fixture.change('parts', '{B-2}', '0/23000', 'insert', '{"sku": "B-2", "qty": "1"}');
CALL fixture.checkpoint('0/23000', '2024-04-01 03:00+00');

-- before the key change: the old key has the row, the new key none
SELECT pgtimewarp_asof_pk_lsn('parts', '{"sku": "A-1"}', '0/20FFF');
SELECT pgtimewarp_asof_pk_lsn('parts', '{"sku": "A-100"}', '0/20FFF') IS NULL AS absent;
-- after it: the other way round
SELECT pgtimewarp_asof_pk_lsn('parts', '{"sku": "A-1"}', '0/21000') IS NULL AS absent;
SELECT pgtimewarp_asof_pk_lsn('parts', '{"sku": "A-100"}', '0/21000');

-- after the truncate, no row at all
SELECT pgtimewarp_asof_pk_lsn('parts', '{"sku": "A-100"}', '0/22000') IS NULL AS absent;
SELECT pgtimewarp_asof_pk_lsn('parts', '{"sku": "B-2"}', '0/22000') IS NULL AS absent;
SELECT pgtimewarp_asof_pk_lsn('parts', '{"sku": "B-2"}', '0/21FFF');
SELECT pgtimewarp_asof_pk_lsn('parts', '{"sku": "B-2"}', '0/23000');

-- the timelines tell the same story
SELECT valid_from_lsn, valid_to_lsn, op, row_data, changed_columns
  FROM pgtimewarp_diff_pk('parts', '{"sku": "A-1"}', '2024-04-01 00:00+00', '2024-04-01 03:00+00');
SELECT valid_from_lsn, valid_to_lsn, op, row_data, changed_columns
  FROM pgtimewarp_diff_pk('parts', '{"sku": "A-100"}', '2024-04-01 00:00+00', '2024-04-01 03:00+00');
SELECT valid_from_lsn, valid_to_lsn, op, row_data, changed_columns
  FROM pgtimewarp_diff_pk('parts', '{"sku": "B-2"}', '2024-04-01 00:00+00', '2024-04-01 03:00+00');

DROP TABLE parts;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'parts';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
