--
-- A column's type changed (ALTER COLUMN ... TYPE): older versions keep the
-- text they were stored with.  The jsonb functions show every version, a
-- value the new type cannot read as the text it was stored as; asof_row
-- fails only for such a value, naming the column and the version's time.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE prices (id int PRIMARY KEY, amount numeric(10,2), code varchar(10));
CALL fixture.track('prices', '0/C0000', '2025-03-01 00:00+00');
CALL fixture.change('prices', '{1}', '0/C0000', 'baseline', '{"id": "1", "amount": "1.50", "code": "abcdefghij"}');
CALL fixture.change('prices', '{2}', '0/C0000', 'baseline', '{"id": "2", "amount": "3", "code": "abcdefghij"}');
ALTER TABLE prices ALTER COLUMN amount TYPE integer, ALTER COLUMN code TYPE varchar(3) USING left(code, 3);
CALL fixture.commit('0/C1000', '2025-03-01 01:00+00');
CALL fixture.change('prices', '{1}', '0/C1000', 'update', '{"id": "1", "amount": "2", "code": "abc"}');
CALL fixture.checkpoint('0/C1000', '2025-03-01 01:00+00');

-- the jsonb functions answer for the old versions: "1.50" as it was stored
-- (not valid integer input), "3" read as the column's type now, the
-- 10-character codes whole (the typmod is not applied to old values)
SELECT pgtimewarp_asof_pk('prices', '{"id": 1}', '2025-03-01 00:00+00');
SELECT pgtimewarp_asof_pk('prices', '{"id": 2}', '2025-03-01 00:00+00');
SELECT pgtimewarp_asof_pk_lsn('prices', '{"id": 1}', '0/C1000');
SELECT valid_from_lsn, op, row_data, changed_columns
  FROM pgtimewarp_diff_pk('prices', '{"id": 1}', '2025-03-01 00:00+00', '2025-03-01 01:00+00');
-- asof_row: the new version reads; the old one fails, saying which column and version
SELECT * FROM pgtimewarp_asof_row(NULL::prices, '{"id": 1}', '2025-03-01 01:00+00');
SELECT * FROM pgtimewarp_asof_row(NULL::prices, '{"id": 1}', '2025-03-01 00:00+00');
-- a value the new type reads but its typmod refuses
SELECT * FROM pgtimewarp_asof_row(NULL::prices, '{"id": 2}', '2025-03-01 00:00+00');

DROP TABLE prices;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'prices';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
