--
-- A gap the store has recorded (history_gaps: a transaction the operator
-- skipped) is an error for any lookup inside it, never a stale answer; times
-- before it, and after a closed gap, answer as usual.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE gappy (id int PRIMARY KEY, v text);
CALL fixture.track('gappy', '0/E0000', '2025-05-01 00:00+00');
CALL fixture.change('gappy', '{1}', '0/E0000', 'baseline', '{"id": "1", "v": "before"}');
CALL fixture.commit('0/E1000', '2025-05-01 01:00+00');
CALL fixture.change('gappy', '{1}', '0/E1000', 'update', '{"id": "1", "v": "in the gap"}');
CALL fixture.commit('0/E2000', '2025-05-01 02:00+00');
CALL fixture.change('gappy', '{1}', '0/E2000', 'update', '{"id": "1", "v": "after"}');
CALL fixture.checkpoint('0/E2000', '2025-05-01 02:00+00');
INSERT INTO pgtimewarp_store.history_gaps (relation_id, from_lsn, from_ts, reason)
SELECT relation_id, '0/E1000', '2025-05-01 01:00+00', 'transaction 0/E1000 was skipped by "pgtimewarp skip-transaction"'
  FROM pgtimewarp_store.tracked_relations WHERE table_name = 'gappy';

-- before the gap: as usual
SELECT pgtimewarp_asof_pk('gappy', '{"id": 1}', '2025-05-01 00:30+00') ->> 'v' AS v;
-- inside an open gap, and after it: an error that says why
SELECT pgtimewarp_asof_pk('gappy', '{"id": 1}', '2025-05-01 01:00+00');
SELECT pgtimewarp_asof_pk_lsn('gappy', '{"id": 1}', '0/E2000');
SELECT * FROM pgtimewarp_asof_row(NULL::gappy, '{"id": 1}', '2025-05-01 02:00+00');
SELECT * FROM pgtimewarp_diff_pk('gappy', '{"id": 1}', '2025-05-01 00:00+00', '2025-05-01 02:00+00');
SELECT count(*) FROM pgtimewarp_diff_pk('gappy', '{"id": 1}', '2025-05-01 00:00+00', '2025-05-01 00:30+00');

-- a closed gap: after its end, history is exact again
UPDATE pgtimewarp_store.history_gaps SET to_lsn = '0/E2000', to_ts = '2025-05-01 02:00+00';
SELECT pgtimewarp_asof_pk('gappy', '{"id": 1}', '2025-05-01 01:30+00');
SELECT pgtimewarp_asof_pk('gappy', '{"id": 1}', '2025-05-01 02:00+00') ->> 'v' AS v;

DROP TABLE gappy;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'gappy';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
