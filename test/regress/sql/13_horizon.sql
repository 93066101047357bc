--
-- How far history is complete "now" (extension/src/horizon.c).  A time later
-- than the agent's checkpoint is answered with a warning, unless the
-- checkpoint in the store snapshot is at or past the source's WAL position
-- at the transaction's first store read: then every commit made before that
-- moment is stored, and any time up to it is answered without one.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE fresh_items (id int PRIMARY KEY, label text);

CALL fixture.track('fresh_items', '0/10000', '2024-03-01 12:00+00');
CALL fixture.change('fresh_items', '{1}', '0/10000', 'baseline', '{"id": "1", "label": "v0"}');
CALL fixture.commit('0/11000', '2024-03-01 12:10+00');
CALL fixture.change('fresh_items', '{1}', '0/11000', 'update', '{"id": "1", "label": "v1"}');

-- the checkpoint is behind the source's WAL: now() is past what is known
CALL fixture.checkpoint('0/11000', '2024-03-01 12:10+00');
\set VERBOSITY terse
SELECT pgtimewarp_asof_pk('fresh_items', '{"id": 1}', now()) ->> 'label' AS label;
\set VERBOSITY default

-- the checkpoint is past the source's WAL (an agent that has stored
-- everything the source wrote), though its own time is old: now() and
-- clock_timestamp() taken before the call are complete
CALL fixture.checkpoint('FFFFFFFF/0', '2024-03-01 12:10+00');
SELECT pgtimewarp_asof_pk('fresh_items', '{"id": 1}', now()) ->> 'label' AS label;
SELECT label FROM pgtimewarp_asof_row(NULL::fresh_items, '{"id": 1}', clock_timestamp());
SELECT op, row_data ->> 'label' AS label
  FROM pgtimewarp_diff_pk('fresh_items', '{"id": 1}', '2024-03-01 12:00+00', now());

-- "now" is the moment a transaction first reads history: a later time in
-- the same transaction, or a time in the future, may miss changes (the
-- warning names that moment, so only its SQLSTATE is shown here)
\set VERBOSITY sqlstate
BEGIN;
SELECT pgtimewarp_asof_pk('fresh_items', '{"id": 1}', now()) ->> 'label' AS label;
SELECT pg_sleep(0.01);
SELECT pgtimewarp_asof_pk('fresh_items', '{"id": 1}', clock_timestamp()) ->> 'label' AS label;
COMMIT;
SELECT pgtimewarp_asof_pk('fresh_items', '{"id": 1}', now() + interval '1 hour') ->> 'label' AS label;
\set VERBOSITY default

-- the wait for the agent is a setting: milliseconds, 0 to never ask
SHOW pgtimewarp.horizon_wait;
SET pgtimewarp.horizon_wait = 0;
SELECT pgtimewarp_asof_pk('fresh_items', '{"id": 1}', now()) ->> 'label' AS label;
SET pgtimewarp.horizon_wait = -1;
RESET pgtimewarp.horizon_wait;

DROP TABLE fresh_items;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'fresh_items';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
