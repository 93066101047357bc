--
-- As-of lookups by time: a timestamp resolves to the last commit (or
-- heartbeat) whose commit time is <= it, and LSN order decides from there.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE clock_items (id int PRIMARY KEY, label text);

CALL fixture.track('clock_items', '0/10000', '2024-03-01 12:00+00');
CALL fixture.change('clock_items', '{1}', '0/10000', 'baseline', '{"id": "1", "label": "v0"}');
CALL fixture.commit('0/11000', '2024-03-01 12:10+00');
CALL fixture.change('clock_items', '{1}', '0/11000', 'update', '{"id": "1", "label": "v1"}');
-- an idle hour: only a heartbeat
CALL fixture.commit('0/11800', '2024-03-01 13:00+00');
CALL fixture.commit('0/12000', '2024-03-01 13:30+00');
CALL fixture.change('clock_items', '{1}', '0/12000', 'update', '{"id": "1", "label": "v2"}');
CALL fixture.checkpoint('0/12000', '2024-03-01 13:30+00');

-- at the tracking time, and between tracking and the first change
SELECT pgtimewarp_asof_pk('clock_items', '{"id": 1}', '2024-03-01 12:00+00') ->> 'label' AS label;
SELECT pgtimewarp_asof_pk('clock_items', '{"id": 1}', '2024-03-01 12:09:59.999999+00') ->> 'label' AS label;
-- exactly at a commit time: that commit is visible
SELECT pgtimewarp_asof_pk('clock_items', '{"id": 1}', '2024-03-01 12:10+00') ->> 'label' AS label;
-- in the idle period, before and after the heartbeat
SELECT pgtimewarp_asof_pk('clock_items', '{"id": 1}', '2024-03-01 12:59+00') ->> 'label' AS label;
SELECT pgtimewarp_asof_pk('clock_items', '{"id": 1}', '2024-03-01 13:15+00') ->> 'label' AS label;
SELECT pgtimewarp_asof_pk('clock_items', '{"id": 1}', '2024-03-01 13:30+00') ->> 'label' AS label;
-- the same instant written in another time zone
SELECT pgtimewarp_asof_pk('clock_items', '{"id": 1}', '2024-03-01 14:10+02') ->> 'label' AS label;

-- the typed variant resolves times the same way
SELECT label FROM pgtimewarp_asof_row(NULL::clock_items, '{"id": 1}', '2024-03-01 12:10+00');

-- commit times out of LSN order: 0/13000 carries an earlier time than
-- 0/12000 (concurrent commits, a clock stepping back).  A time resolves to
-- the last commit in LSN order whose time is <= it, so from 13:20 on both
-- commits are visible, and v3 stays the answer at 13:30.
CALL fixture.commit('0/13000', '2024-03-01 13:20+00');
CALL fixture.change('clock_items', '{1}', '0/13000', 'update', '{"id": "1", "label": "v3"}');
CALL fixture.checkpoint('0/13000', '2024-03-01 13:30+00');
SELECT pgtimewarp_asof_pk('clock_items', '{"id": 1}', '2024-03-01 13:19+00') ->> 'label' AS label;
SELECT pgtimewarp_asof_pk('clock_items', '{"id": 1}', '2024-03-01 13:25+00') ->> 'label' AS label;
SELECT pgtimewarp_asof_pk('clock_items', '{"id": 1}', '2024-03-01 13:30+00') ->> 'label' AS label;
SELECT lsn, commit_ts, resolve_ts FROM pgtimewarp_store.lsn_time_map ORDER BY lsn;

-- before tracking began: an error that says when it began
SELECT pgtimewarp_asof_pk('clock_items', '{"id": 1}', '2024-03-01 11:59:59+00');
SELECT * FROM pgtimewarp_asof_row(NULL::clock_items, '{"id": 1}', '2024-02-01 00:00+00');

-- later than the agent's checkpoint: what is known, with a warning
SELECT pgtimewarp_asof_pk('clock_items', '{"id": 1}', '2024-03-01 14:00+00') ->> 'label' AS label;

DROP TABLE clock_items;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'clock_items';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
