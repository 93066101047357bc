--
-- Keys of any length the source accepts: a key longer than 512 bytes is
-- indexed in the store by its SHA-256 digest and compared whole, so no key
-- makes the store refuse a version.  The extension, the store (and the
-- agent, test/e2e) make the same digest.
--
SET timezone = 'UTC';

CREATE TABLE long_keys (k text PRIMARY KEY, v int);
-- tracking copies a long key into the baseline
INSERT INTO long_keys VALUES (repeat('x', 3000), 1), (repeat('é', 300), 2), ('short', 3);
SELECT pgtimewarp_track('long_keys') AS tracked_from \gset
SELECT count(*) FILTER (WHERE pk[1] IS NULL) AS by_digest,
       count(*) FILTER (WHERE pk_full IS NULL) AS whole,
       max(octet_length(pk::text)) < 100 AS index_entries_small
  FROM pgtimewarp_store.row_versions v
  JOIN pgtimewarp_store.tracked_relations r USING (relation_id) WHERE r.table_name = 'long_keys';
-- row_history shows each key whole
SELECT length(pk[1]) AS key_length FROM pgtimewarp_store.row_history
 WHERE table_name = 'long_keys' ORDER BY 1;
-- the extension and the store agree on the digest
SELECT pgtimewarp.index_key(ARRAY[repeat('x', 3000)]) = pgtimewarp_store.index_key(ARRAY[repeat('x', 3000)]) AS same,
       pgtimewarp.index_key(ARRAY[repeat('é', 300)]) = pgtimewarp_store.index_key(ARRAY[repeat('é', 300)]) AS same_utf8,
       pgtimewarp.index_key(ARRAY['a', 'b']) AS short_key_is_itself;
-- the digest covers element boundaries: {ab, c} and {a, bc} differ
SELECT pgtimewarp.index_key(ARRAY[repeat('a', 300), repeat('b', 300)])
    <> pgtimewarp.index_key(ARRAY[repeat('a', 301), repeat('b', 299)]) AS boundaries_differ;
-- just over the limit is by digest, at the limit is not
SELECT (pgtimewarp.index_key(ARRAY[repeat('y', 512)]))[1] IS NULL AS at_limit_by_digest,
       (pgtimewarp.index_key(ARRAY[repeat('y', 513)]))[1] IS NULL AS over_limit_by_digest;

-- lookups find long keys, by the whole key
SELECT pgtimewarp_asof_pk_lsn('long_keys', jsonb_build_object('k', repeat('x', 3000)), :'tracked_from') ->> 'v' AS v;
SELECT pgtimewarp_asof_pk_lsn('long_keys', jsonb_build_object('k', repeat('é', 300)), :'tracked_from') ->> 'v' AS v;
SELECT pgtimewarp_asof_pk_lsn('long_keys', jsonb_build_object('k', repeat('x', 2999)), :'tracked_from') AS absent;
SELECT pgtimewarp_asof_pk_lsn('long_keys', '{"k": "short"}', :'tracked_from') ->> 'v' AS v;
SET client_min_messages = error;  -- the notice and warning name the times of this run
SELECT op, row_data ->> 'v' AS v
  FROM pgtimewarp_diff_pk('long_keys', jsonb_build_object('k', repeat('x', 3000)), now() - interval '1 minute', now());
RESET client_min_messages;

-- a stored digest with a different whole key (a collision, which SHA-256
-- makes infeasible) is not taken for the key
UPDATE pgtimewarp_store.row_versions SET pk_full = ARRAY[repeat('z', 3000)]
 WHERE pk_full = ARRAY[repeat('x', 3000)];
SELECT pgtimewarp_asof_pk_lsn('long_keys', jsonb_build_object('k', repeat('x', 3000)), :'tracked_from') AS absent;

-- the store refuses a whole key beside a short one
\set VERBOSITY terse
INSERT INTO pgtimewarp_store.row_versions (relation_id, pk, pk_full, valid_from_lsn, valid_from_ts, op, row_data)
VALUES (1, ARRAY['short'], ARRAY['short'], '0/1', now(), 'd', NULL);
\set VERBOSITY default

SELECT pgtimewarp_untrack('long_keys');
SELECT pgtimewarp_forget('long_keys');
DROP TABLE long_keys;
