--
-- pgtimewarp_status(): tracked tables of this node, since when, how many
-- versions, and how far the agent has applied the WAL.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE status_a (id int PRIMARY KEY);
CREATE TABLE status_b (id int PRIMARY KEY);

-- nothing tracked yet
SELECT count(*) FROM pgtimewarp_status();

CALL fixture.track('status_a', '0/60000', '2024-08-01 00:00+00');
CALL fixture.change('status_a', '{1}', '0/60000', 'baseline', '{"id": "1"}');
CALL fixture.change('status_a', '{2}', '0/60000', 'baseline', '{"id": "2"}');
CALL fixture.track('status_b', '0/61000', '2024-08-01 01:00+00');
CALL fixture.commit('0/62000', '2024-08-01 02:00+00');
CALL fixture.change('status_b', '{5}', '0/62000', 'insert', '{"id": "5"}');
CALL fixture.change('status_a', '{2}', '0/62000', 'delete', NULL);
UPDATE pgtimewarp_store.tracked_relations
   SET untracked_lsn = '0/63000', untracked_ts = '2024-08-01 03:00+00'
 WHERE table_name = 'status_b';

-- before the agent has run: no confirmed position
SELECT schema_name, table_name, tracking, tracked_from_lsn, tracked_from_ts, untracked_lsn,
       row_versions, confirmed_lsn, confirmed_ts, lag_bytes
  FROM pgtimewarp_status();

-- another node's history in the same store is not this database's
INSERT INTO pgtimewarp_store.nodes (node_id) VALUES ('elsewhere');
INSERT INTO pgtimewarp_store.tracked_relations (node_id, schema_name, table_name, pk_columns, tracked_from_lsn, tracked_from_ts)
VALUES ('elsewhere', 'public', 'status_a', '{id}', '0/1', '2024-01-01');

-- after the agent confirmed 0/62000: lag is the WAL written since
CALL fixture.checkpoint('0/62000', '2024-08-01 02:00+00');
-- (the WAL position may move while the call runs: a checkpointer's or bgwriter's record)
SELECT pg_current_wal_lsn() AS before_status \gset
SELECT table_name, row_versions, confirmed_lsn, confirmed_ts,
       lag_bytes BETWEEN pg_wal_lsn_diff(:'before_status', '0/62000')
                     AND pg_wal_lsn_diff(pg_current_wal_lsn(), '0/62000') AS lag_is_wal_since
  FROM pgtimewarp_status();

DROP TABLE status_a, status_b;
DELETE FROM pgtimewarp_store.nodes WHERE node_id = 'elsewhere';
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name LIKE 'status_%';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
