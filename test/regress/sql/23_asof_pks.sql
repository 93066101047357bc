--
-- Many keys at one time in one store statement (pgtimewarp_asof_pks): a
-- row per key given, in the order given, each what pgtimewarp_asof_pk
-- returns for it; keys of any form the key lookups take, long keys too.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE bins (id int PRIMARY KEY, label text);
CALL fixture.track('bins', '0/120000', '2025-09-01 00:00+00');
CALL fixture.change('bins', '{1}', '0/120000', 'baseline', '{"id": "1", "label": "one"}');
CALL fixture.change('bins', '{2}', '0/120000', 'baseline', '{"id": "2", "label": "two"}');
CALL fixture.commit('0/121000', '2025-09-01 01:00+00');
CALL fixture.change('bins', '{1}', '0/121000', 'update', '{"id": "1", "label": "uno"}');
CALL fixture.change('bins', '{2}', '0/121000', 'delete', NULL);
CALL fixture.change('bins', '{3}', '0/121000', 'insert', '{"id": "3", "label": "tres"}');
CALL fixture.checkpoint('0/121000', '2025-09-01 01:00+00');

SELECT * FROM pgtimewarp_asof_pks('bins', ARRAY['{"id": 3}', '{"id": 1}', '{"id": 2}', '{"id": "1"}', '{"id": 9}']::jsonb[],
                                  '2025-09-01 00:30+00');
SELECT * FROM pgtimewarp_asof_pks('bins', ARRAY['{"id": 3}', '{"id": 1}', '{"id": 2}']::jsonb[],
                                  '2025-09-01 01:00+00');
-- the same as one lookup per key, at both times
SELECT t AS at,
       bool_and(m.row_data IS NOT DISTINCT FROM pgtimewarp_asof_pk('bins', m.pk, t)) AS same
  FROM unnest(ARRAY['2025-09-01 00:00+00', '2025-09-01 01:00+00']::timestamptz[]) t,
       LATERAL pgtimewarp_asof_pks('bins', ARRAY(SELECT jsonb_build_object('id', k) FROM generate_series(0, 4) k), t) m
 GROUP BY t ORDER BY t;
-- no keys: no rows
SELECT count(*) FROM pgtimewarp_asof_pks('bins', '{}', '2025-09-01 01:00+00');

-- errors are those of the key lookups, and say which key
SELECT * FROM pgtimewarp_asof_pks('bins', ARRAY['{"id": 1}', '{"nope": 1}']::jsonb[], '2025-09-01 01:00+00');
SELECT * FROM pgtimewarp_asof_pks('bins', ARRAY['{"id": 1}', NULL]::jsonb[], '2025-09-01 01:00+00');
SELECT * FROM pgtimewarp_asof_pks('bins', NULL, '2025-09-01 01:00+00');
SELECT * FROM pgtimewarp_asof_pks('bins', ARRAY['{"id": 1}']::jsonb[], '2025-08-01 00:00+00');
SELECT count(*) FROM pgtimewarp_asof_pks('bins', ARRAY['{"id": 1}']::jsonb[], '2025-09-01 02:00+00');

DROP TABLE bins;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'bins';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
