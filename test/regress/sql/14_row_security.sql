--
-- Row-level security: a role that sees only some rows of a table today sees
-- none of its history (pgtimewarp does not apply policies to past rows);
-- the owner and BYPASSRLS roles see all of it, as SELECT would show them.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE ROLE regress_rls_tenant_a;
CREATE ROLE regress_rls_tenant_b;
CREATE ROLE regress_rls_bypass BYPASSRLS;
CREATE ROLE regress_rls_owner;

CREATE TABLE rls_docs (id int PRIMARY KEY, tenant text, body text);
INSERT INTO rls_docs VALUES (1, 'regress_rls_tenant_a', 'a''s'), (2, 'regress_rls_tenant_b', 'b''s');
ALTER TABLE rls_docs OWNER TO regress_rls_owner;
ALTER TABLE rls_docs ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON rls_docs USING (tenant = current_user);
GRANT SELECT ON rls_docs TO regress_rls_tenant_a, regress_rls_tenant_b, regress_rls_bypass;

CALL fixture.track('rls_docs', '0/A0000', '2025-01-01 00:00+00');
CALL fixture.change('rls_docs', '{1}', '0/A0000', 'baseline', '{"id": "1", "tenant": "regress_rls_tenant_a", "body": "a''s"}');
CALL fixture.change('rls_docs', '{2}', '0/A0000', 'baseline', '{"id": "2", "tenant": "regress_rls_tenant_b", "body": "b''s"}');
CALL fixture.checkpoint('0/A0000', '2025-01-01 00:00+00');

-- a tenant sees its own row only, with plain SELECT ...
SET ROLE regress_rls_tenant_a;
SELECT id, body FROM rls_docs ORDER BY id;
-- ... and no history at all, by any function: not tenant_b's row, not its own
SELECT pgtimewarp_asof_pk('rls_docs', '{"id": 2}', '2025-01-01 00:00+00');
SELECT pgtimewarp_asof_pk('rls_docs', '{"id": 1}', '2025-01-01 00:00+00');
SELECT pgtimewarp_asof_pk_lsn('rls_docs', '{"id": 2}', '0/A0000');
SELECT * FROM pgtimewarp_asof_row(NULL::rls_docs, '{"id": 2}', '2025-01-01 00:00+00');
SELECT * FROM pgtimewarp_diff_pk('rls_docs', '{"id": 2}', '2025-01-01 00:00+00', '2025-01-01 00:00+00');
RESET ROLE;

-- the owner is not subject to its table's policies (unless FORCE), nor a
-- BYPASSRLS role: both read the whole history
SET ROLE regress_rls_owner;
SELECT pgtimewarp_asof_pk('rls_docs', '{"id": 2}', '2025-01-01 00:00+00') ->> 'body' AS body;
RESET ROLE;
SET ROLE regress_rls_bypass;
SELECT pgtimewarp_asof_pk('rls_docs', '{"id": 2}', '2025-01-01 00:00+00') ->> 'body' AS body;
RESET ROLE;

-- FORCE ROW LEVEL SECURITY subjects the owner too
ALTER TABLE rls_docs FORCE ROW LEVEL SECURITY;
SET ROLE regress_rls_owner;
SELECT pgtimewarp_asof_pk('rls_docs', '{"id": 2}', '2025-01-01 00:00+00');
RESET ROLE;

-- row_security = off makes a role subject to policies fail, never see more
SET row_security = off;
SET ROLE regress_rls_tenant_b;
SELECT pgtimewarp_asof_pk('rls_docs', '{"id": 1}', '2025-01-01 00:00+00');
RESET ROLE;
RESET row_security;

-- with row-level security disabled, SELECT shows every row, and so does history
ALTER TABLE rls_docs DISABLE ROW LEVEL SECURITY;
SET ROLE regress_rls_tenant_a;
SELECT pgtimewarp_asof_pk('rls_docs', '{"id": 2}', '2025-01-01 00:00+00') ->> 'body' AS body;
RESET ROLE;

DROP TABLE rls_docs;
DROP ROLE regress_rls_tenant_a, regress_rls_tenant_b, regress_rls_bypass, regress_rls_owner;
DELETE FROM pgtimewarp_store.tracked_relations WHERE table_name = 'rls_docs';
DELETE FROM pgtimewarp_store.lsn_time_map;
DELETE FROM pgtimewarp_store.wal_checkpoints;
