--
-- pgtimewarp_diff_pk: every version current at some moment in
-- [from_ts, to_ts], oldest first, with the columns each one changed.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric, note text);

CALL fixture.track('orders', '0/40000', '2024-06-01 09:00+00');
CALL fixture.change('orders', '{7}', '0/40000', 'baseline',
                    '{"id": "7", "status": "new", "total": "10.00", "note": null}');
CALL fixture.commit('0/41000', '2024-06-01 10:00+00');
CALL fixture.change('orders', '{7}', '0/41000', 'update',
                    '{"id": "7", "status": "paid", "total": "10.00", "note": null}');
CALL fixture.commit('0/42000', '2024-06-01 11:00+00');
CALL fixture.change('orders', '{7}', '0/42000', 'update',
                    '{"id": "7", "status": "paid", "total": "12.50", "note": "price fix"}');
CALL fixture.commit('0/43000', '2024-06-01 12:00+00');
CALL fixture.change('orders', '{7}', '0/43000', 'delete', NULL);
CALL fixture.commit('0/44000', '2024-06-01 13:00+00');
CALL fixture.change('orders', '{7}', '0/44000', 'insert',
                    '{"id": "7", "status": "new", "total": "1", "note": null}');
CALL fixture.checkpoint('0/44000', '2024-06-01 13:00+00');

-- the whole history
SELECT * FROM pgtimewarp_diff_pk('orders', '{"id": 7}', '2024-06-01 09:00+00', '2024-06-01 13:00+00');

-- a window inside one version: just that version, and what it changed
-- relative to the version before the window
SELECT valid_from_lsn, valid_to_lsn, op, changed_columns
  FROM pgtimewarp_diff_pk('orders', '{"id": 7}', '2024-06-01 11:10+00', '2024-06-01 11:50+00');

-- a window that starts on a commit: the version before it ends exactly
-- there and is not current in the window
SELECT valid_from_lsn, op, changed_columns
  FROM pgtimewarp_diff_pk('orders', '{"id": 7}', '2024-06-01 10:00+00', '2024-06-01 11:00+00');

-- a window that ends just before a commit: that commit is not in it
SELECT valid_from_lsn, op
  FROM pgtimewarp_diff_pk('orders', '{"id": 7}', '2024-06-01 09:30+00', '2024-06-01 10:59:59+00');

-- a single instant
SELECT valid_from_lsn, op
  FROM pgtimewarp_diff_pk('orders', '{"id": 7}', '2024-06-01 12:30+00', '2024-06-01 12:30+00');

-- a key with no history: no rows
SELECT count(*) FROM pgtimewarp_diff_pk('orders', '{"id": 8}', '2024-06-01 09:00+00', '2024-06-01 13:00+00');

-- from_ts after to_ts, and a window that starts before tracking
SELECT * FROM pgtimewarp_diff_pk('orders', '{"id": 7}', '2024-06-01 12:00+00', '2024-06-01 11:00+00');
SELECT * FROM pgtimewarp_diff_pk('orders', '{"id": 7}', '2024-06-01 08:00+00', '2024-06-01 11:00+00');

-- a window reaching past the agent's checkpoint: what is known, and a warning
SELECT valid_from_lsn, op
  FROM pgtimewarp_diff_pk('orders', '{"id": 7}', '2024-06-01 12:30+00', '2024-06-01 14:00+00');

-- the timeline is ordered and contiguous: each version ends where the next begins
SELECT bool_and(valid_to_lsn = next_from) AS contiguous
  FROM (SELECT valid_to_lsn, lead(valid_from_lsn) OVER (ORDER BY valid_from_lsn) AS next_from
          FROM pgtimewarp_diff_pk('orders', '{"id": 7}', '2024-06-01 09:00+00', '2024-06-01 13:00+00')) d
 WHERE next_from IS NOT NULL;

DROP TABLE orders;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'orders';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
