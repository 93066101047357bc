--
-- As-of lookups by LSN: exactly at a commit, between commits, before
-- tracking, after a delete, re-insert after delete, beyond the agent.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric);

CALL fixture.track('accounts', '0/1000', '2024-01-01 00:00+00');
CALL fixture.change('accounts', '{1}', '0/1000', 'baseline', '{"id": "1", "owner": "alice", "balance": "100"}');
CALL fixture.change('accounts', '{2}', '0/1000', 'baseline', '{"id": "2", "owner": "bob", "balance": "50"}');
CALL fixture.commit('0/2000', '2024-01-01 01:00+00');
CALL fixture.change('accounts', '{1}', '0/2000', 'update', '{"id": "1", "owner": "alice", "balance": "120"}');
CALL fixture.commit('0/3000', '2024-01-01 02:00+00');
CALL fixture.change('accounts', '{2}', '0/3000', 'delete', NULL);
CALL fixture.commit('0/4000', '2024-01-01 03:00+00');
CALL fixture.change('accounts', '{2}', '0/4000', 'insert', '{"id": "2", "owner": "bob", "balance": "0"}');
CALL fixture.commit('0/5000', '2024-01-01 04:00+00');
CALL fixture.change('accounts', '{3}', '0/5000', 'insert', '{"id": "3", "owner": "carol", "balance": "7"}');
CALL fixture.checkpoint('0/5000', '2024-01-01 04:00+00');

-- the baseline is visible from the tracking LSN on
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 1}', '0/1000');
-- between commits: the earlier version
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 1}', '0/1FFF');
-- exactly at the commit LSN: the new version
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 1}', '0/2000');
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 1}', '0/5000');

-- deleted at 0/3000, inserted again at 0/4000
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 2}', '0/2FFF');
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 2}', '0/3000') IS NULL AS deleted;
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 2}', '0/3FFF') IS NULL AS deleted;
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 2}', '0/4000');

-- a key that did not exist yet, and one that never existed
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 3}', '0/4FFF') IS NULL AS not_yet;
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 3}', '0/5000');
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 99}', '0/5000') IS NULL AS never;

-- before tracking began: an error naming when it began
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 1}', '0/FFF');

-- beyond what the agent has stored: what is known, and a warning
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 1}', '0/6000');
CALL fixture.checkpoint('0/7000', '2024-01-01 06:00+00');
SELECT pgtimewarp_asof_pk_lsn('accounts', '{"id": 1}', '0/6000');

DROP TABLE accounts;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'accounts';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
