--
-- Many lookups in one statement: every row gets its own answer.  A call
-- site reads the table's tracking state and resolves a time once per
-- statement (the store reads the same all transaction long), so a warning
-- about a time comes once per statement, not per row; and this session's
-- own writes to the store (pgtimewarp_forget) are seen at once.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE many_items (id int PRIMARY KEY, label text);
CREATE TABLE other_items (id int PRIMARY KEY, label text);
CALL fixture.track('many_items', '0/70000', '2024-09-01 12:00+00');
CALL fixture.track('other_items', '0/70100', '2024-09-01 12:00:30+00');
CALL fixture.change('many_items', '{1}', '0/70000', 'baseline', '{"id": "1", "label": "a1"}');
CALL fixture.change('many_items', '{2}', '0/70000', 'baseline', '{"id": "2", "label": "a2"}');
CALL fixture.change('many_items', '{3}', '0/70000', 'baseline', '{"id": "3", "label": "a3"}');
CALL fixture.change('many_items', '{4}', '0/70000', 'baseline', '{"id": "4", "label": "a4"}');
CALL fixture.change('other_items', '{1}', '0/70100', 'baseline', '{"id": "1", "label": "o1"}');
CALL fixture.commit('0/71000', '2024-09-01 12:10+00');
CALL fixture.change('many_items', '{2}', '0/71000', 'update', '{"id": "2", "label": "b2"}');
CALL fixture.change('many_items', '{3}', '0/71000', 'delete', NULL);
CALL fixture.commit('0/72000', '2024-09-01 12:20+00');
CALL fixture.change('many_items', '{1}', '0/72000', 'update', '{"id": "1", "label": "c1"}');
CALL fixture.change('many_items', '{5}', '0/72000', 'insert', '{"id": "5", "label": "c5"}');
CALL fixture.checkpoint('0/72000', '2024-09-01 12:20+00');

-- every key at one time
SELECT k, pgtimewarp_asof_pk('many_items', jsonb_build_object('id', k), '2024-09-01 12:15+00') ->> 'label' AS label
  FROM generate_series(1, 5) k ORDER BY k;
SELECT k, (pgtimewarp_asof_row(NULL::many_items, jsonb_build_object('id', k), '2024-09-01 12:05+00')).label
  FROM generate_series(1, 5) k ORDER BY k;

-- a time per row, some repeated, some past the checkpoint: one warning for 12:25
SELECT n, t, pgtimewarp_asof_pk('many_items', '{"id": 1}', t) ->> 'label' AS label
  FROM (VALUES (1, timestamptz '2024-09-01 12:05+00'), (2, '2024-09-01 12:25+00'), (3, '2024-09-01 12:25+00'),
               (4, '2024-09-01 12:05+00'), (5, '2024-09-01 12:20+00')) AS v(n, t)
 ORDER BY n;

-- every key past the checkpoint: one warning for the whole statement
SELECT k, pgtimewarp_asof_pk('many_items', jsonb_build_object('id', k), '2024-09-01 13:00+00') ->> 'label' AS label
  FROM generate_series(1, 5) k ORDER BY k;

-- an LSN per row
SELECT n, l, pgtimewarp_asof_pk_lsn('many_items', '{"id": 2}', l) ->> 'label' AS label
  FROM (VALUES (1, pg_lsn '0/70000'), (2, '0/71000'), (3, '0/70FFF'), (4, '0/72000')) AS v(n, l)
 ORDER BY n;

-- a table per row
SELECT n, r, pgtimewarp_asof_pk(r, '{"id": 1}', '2024-09-01 12:15+00') ->> 'label' AS label
  FROM (VALUES (1, regclass 'many_items'), (2, 'other_items'), (3, 'many_items'), (4, 'other_items')) AS v(n, r)
 ORDER BY n;

-- one call site, and the history forgotten in between, in the same
-- transaction: the second lookup says the table is not tracked, not the
-- row it read before
UPDATE pgtimewarp_store.tracked_relations
   SET untracked_lsn = '0/73000', untracked_ts = '2024-09-01 12:30+00'
 WHERE table_name = 'other_items';
DO $$
DECLARE
    label text;
BEGIN
    FOR i IN 1..2 LOOP
        IF i = 2 THEN
            PERFORM pgtimewarp_forget('other_items');
        END IF;
        label := pgtimewarp_asof_pk('other_items', '{"id": 1}', '2024-09-01 12:15+00') ->> 'label';
        RAISE NOTICE 'lookup %: %', i, label;
    END LOOP;
END;
$$;

DROP TABLE many_items, other_items;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name IN ('many_items', 'other_items');
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
