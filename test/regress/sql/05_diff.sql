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

-- many versions of small rows (stored under 127 bytes, with a short
-- header): every one is read after the store session ends, so each must
-- have been copied out of SPI's memory, and the sum of their values shows it
CREATE TABLE tiny (id int PRIMARY KEY, n int);
CALL fixture.track('tiny', '1/0', '2024-07-01 00:00+00');
CALL fixture.change('tiny', '{1}', '1/0', 'baseline', '{"id": "1", "n": "0"}');
DO $$
BEGIN
    FOR i IN 1..300 LOOP
        CALL fixture.commit(('1/' || to_hex(i * 16))::pg_lsn, '2024-07-01 00:00+00'::timestamptz + i * interval '1 second');
        CALL fixture.change('tiny', '{1}', ('1/' || to_hex(i * 16))::pg_lsn, 'update', jsonb_build_object('id', '1', 'n', i::text));
    END LOOP;
END;
$$;
CALL fixture.checkpoint('1/2000', '2024-07-01 01:00+00');
SELECT count(*), sum((row_data ->> 'n')::int), count(*) FILTER (WHERE changed_columns = '{n}') AS changed_n
  FROM pgtimewarp_diff_pk('tiny', '{"id": 1}', '2024-07-01 00:00+00', '2024-07-01 00:10+00');
SELECT count(*), sum((row_data ->> 'n')::int)
  FROM generate_series(1, 3), pgtimewarp_diff_pk('tiny', '{"id": 1}', '2024-07-01 00:00+00', '2024-07-01 00:10+00');
DROP TABLE tiny;

DROP TABLE orders;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name IN ('orders', 'tiny');
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
