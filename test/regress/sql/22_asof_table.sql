--
-- The whole table as it was (pgtimewarp_asof_table, _lsn): at each point of
-- a history with updates, deletes, a primary key change, a TRUNCATE and a
-- re-insert, the rows that existed then, typed as the table's rows; equal,
-- key by key, to what pgtimewarp_asof_pk says.  Columns renamed since read
-- under their new names, dropped ones are gone, added ones NULL.  Then the
-- errors and privileges, which are those of the key lookups.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE shelf (sku text PRIMARY KEY, qty int, note text);
CALL fixture.track('shelf', '0/110000', '2025-08-01 00:00+00');
CALL fixture.change('shelf', '{A}', '0/110000', 'baseline', '{"sku": "A", "qty": "1", "note": "a"}');
CALL fixture.change('shelf', '{B}', '0/110000', 'baseline', '{"sku": "B", "qty": "2", "note": null}');
CALL fixture.change('shelf', '{C}', '0/110000', 'baseline', '{"sku": "C", "qty": "3", "note": "tab\there"}');
-- 01:00 UPDATE shelf SET qty = 10 WHERE sku = 'A'; DELETE FROM shelf WHERE sku = 'B'
CALL fixture.commit('0/111000', '2025-08-01 01:00+00');
CALL fixture.change('shelf', '{A}', '0/111000', 'update', '{"sku": "A", "qty": "10", "note": "a"}');
CALL fixture.change('shelf', '{B}', '0/111000', 'delete', NULL);
-- 02:00 UPDATE shelf SET sku = 'C2' WHERE sku = 'C'
CALL fixture.commit('0/112000', '2025-08-01 02:00+00');
CALL fixture.change('shelf', '{C}', '0/112000', 'delete', NULL);
CALL fixture.change('shelf', '{C2}', '0/112000', 'insert', '{"sku": "C2", "qty": "3", "note": "tab\there"}');
-- 03:00 TRUNCATE shelf
CALL fixture.commit('0/113000', '2025-08-01 03:00+00');
CALL fixture.change('shelf', '{A}', '0/113000', 'truncate', NULL);
CALL fixture.change('shelf', '{C2}', '0/113000', 'truncate', NULL);
-- 04:00 INSERT INTO shelf VALUES ('B', 20, 'back'), ('D', 4, 'new')
CALL fixture.commit('0/114000', '2025-08-01 04:00+00');
CALL fixture.change('shelf', '{B}', '0/114000', 'insert', '{"sku": "B", "qty": "20", "note": "back"}');
CALL fixture.change('shelf', '{D}', '0/114000', 'insert', '{"sku": "D", "qty": "4", "note": "new"}');
CALL fixture.checkpoint('0/114000', '2025-08-01 04:00+00');

-- at every point, by time and by LSN
SELECT t AS at, s.*
  FROM unnest(ARRAY['2025-08-01 00:00+00', '2025-08-01 00:59+00', '2025-08-01 01:00+00',
                    '2025-08-01 02:00+00', '2025-08-01 03:00+00',
                    '2025-08-01 04:00+00']::timestamptz[]) t,
       LATERAL pgtimewarp_asof_table(NULL::shelf, t) s
 ORDER BY t, s.sku;
SELECT l AS at, s.*
  FROM unnest(ARRAY['0/110000', '0/110FFF', '0/111000', '0/112000', '0/113000', '0/114000']::pg_lsn[]) l,
       LATERAL pgtimewarp_asof_table_lsn(NULL::shelf, l) s
 ORDER BY l, s.sku;
-- typed: the columns are the table's
SELECT pg_typeof(qty) AS qty_type, sum(qty) AS total
  FROM pgtimewarp_asof_table(NULL::shelf, '2025-08-01 01:00+00') GROUP BY 1;

-- the same rows as the key lookups, at every point, for every key ever stored
SELECT l AS at,
       (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.sku), '[]')
          FROM pgtimewarp_asof_table_lsn(NULL::shelf, l) s)
     = (SELECT coalesce(jsonb_agg(r ORDER BY r ->> 'sku'), '[]')
          FROM unnest(ARRAY['A', 'B', 'C', 'C2', 'D']) k,
               LATERAL pgtimewarp_asof_pk_lsn('shelf', jsonb_build_object('sku', k), l) r
         WHERE r IS NOT NULL) AS same_as_asof_pk
  FROM unnest(ARRAY['0/110000', '0/111000', '0/112000', '0/113000', '0/114000']::pg_lsn[]) l
 ORDER BY l;

-- beyond the stored history: a warning, and the rows as far as it goes
SELECT count(*) FROM pgtimewarp_asof_table(NULL::shelf, '2025-08-01 05:00+00');

-- columns changed since: qty renamed to amount (recorded by the agent at
-- 0/114000), note dropped, added a column that old versions did not have
ALTER TABLE shelf RENAME qty TO amount;
ALTER TABLE shelf DROP COLUMN note;
ALTER TABLE shelf ADD COLUMN added date;
UPDATE pgtimewarp_store.tracked_relations
   SET column_renames = '[{"lsn": "0/114000", "old": "qty", "new": "amount"}]'
 WHERE table_name = 'shelf';
SELECT * FROM pgtimewarp_asof_table(NULL::shelf, '2025-08-01 01:00+00') ORDER BY sku;
SELECT * FROM pgtimewarp_asof_table_lsn(NULL::shelf, '0/114000') ORDER BY sku;

-- a value the column's type cannot read any more: an error naming the
-- column and the version
ALTER TABLE shelf ALTER COLUMN sku TYPE varchar(1);
SELECT * FROM pgtimewarp_asof_table(NULL::shelf, '2025-08-01 02:00+00');
ALTER TABLE shelf ALTER COLUMN sku TYPE text;

-- errors: not a table's row type, a NULL time, before tracking, untracked
SELECT * FROM pgtimewarp_asof_table(NULL::int, now());
SELECT * FROM pgtimewarp_asof_table('x'::text, now());
CREATE VIEW shelf_view AS SELECT * FROM shelf;
SELECT * FROM pgtimewarp_asof_table(NULL::shelf_view, now());
SELECT * FROM pgtimewarp_asof_table(NULL::shelf, NULL);
SELECT * FROM pgtimewarp_asof_table(NULL::shelf, '2025-07-31 23:59+00');
SELECT * FROM pgtimewarp_asof_table_lsn(NULL::shelf, '0/10FFFF');
CREATE TABLE shelf_untracked (id int PRIMARY KEY);
SELECT * FROM pgtimewarp_asof_table(NULL::shelf_untracked, now());

-- privileges: those of SELECT * on the table, and no row-level security
CREATE ROLE shelf_reader;
SET ROLE shelf_reader;
SELECT * FROM pgtimewarp_asof_table(NULL::shelf, '2025-08-01 01:00+00');
RESET ROLE;
GRANT SELECT (sku) ON shelf TO shelf_reader;
SET ROLE shelf_reader;
SELECT * FROM pgtimewarp_asof_table(NULL::shelf, '2025-08-01 01:00+00');
RESET ROLE;
GRANT SELECT ON shelf TO shelf_reader;
SET ROLE shelf_reader;
SELECT count(*) FROM pgtimewarp_asof_table(NULL::shelf, '2025-08-01 01:00+00');
RESET ROLE;
ALTER TABLE shelf ENABLE ROW LEVEL SECURITY;
CREATE POLICY shelf_some ON shelf USING (sku = 'A');
SET ROLE shelf_reader;
SELECT count(*) FROM pgtimewarp_asof_table(NULL::shelf, '2025-08-01 01:00+00');
RESET ROLE;

DROP VIEW shelf_view;
DROP TABLE shelf, shelf_untracked;
DROP ROLE shelf_reader;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'shelf';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
