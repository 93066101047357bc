/*-------------------------------------------------------------------------
 *
 * status.c
 *		What is tracked and how far history goes (status), whether the
 *		store can be reached (ping), and closing this backend's connection
 *		to it (disconnect).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/pg_lsn.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "pgtimewarp.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(pgtimewarp_status);
PG_FUNCTION_INFO_V1(pgtimewarp_ping);
PG_FUNCTION_INFO_V1(pgtimewarp_disconnect);

/*
 * Whether pgtimewarp_status() shows a tracked table to `caller`: when it may
 * read the table's history (SELECT on all columns, USAGE on its schema); a
 * table that no longer exists, or whose name another table has now, only to
 * roles with the extension owner's privileges.
 */
static bool
status_visible_to(Oid caller, Oid relid)
{
	if (has_privs_of_role(caller, extension_owner()))
		return true;
	if (!OidIsValid(relid) || !SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		return false;
	if (pg_namespace_aclcheck(get_rel_namespace(relid), caller, ACL_USAGE) != ACLCHECK_OK)
		return false;
	return pg_class_aclcheck(relid, caller, ACL_SELECT) == ACLCHECK_OK ||
		pg_attribute_aclcheck_all(relid, caller, ACL_SELECT, ACLMASK_ALL) == ACLCHECK_OK;
}

/*
 * One row per tracked incarnation, with its version count from
 * relation_stats (kept by the agent and by track, migration 5): the cost is
 * one row per tracked table, however long the history.
 */
Datum
pgtimewarp_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	StoreParams p;
	PGresult   *res;
	bool		have_wal_lsn = !RecoveryInProgress();
	XLogRecPtr	wal_lsn = have_wal_lsn ? GetXLogWriteRecPtr() : InvalidXLogRecPtr;
	Oid			caller = GetUserId();

	pgtw_init_materialized_srf(fcinfo);
	if (rsinfo->setDesc->natts != 10)
		elog(ERROR, "pgtimewarp_status returns %d columns, expected 10", rsinfo->setDesc->natts);

	p.n = 0;
	param_text(&p, TEXTOID, configured_node_id());
	res = store_read("SELECT r.schema_name, r.table_name, r.untracked_lsn IS NULL,"
					 "       r.tracked_from_lsn, r.tracked_from_ts, r.untracked_lsn,"
					 "       coalesce(s.versions, 0), c.confirmed_lsn, c.confirmed_ts, r.relid"
					 "  FROM pgtimewarp_store.tracked_relations r"
					 "  LEFT JOIN pgtimewarp_store.relation_stats s USING (relation_id)"
					 "  LEFT JOIN pgtimewarp_store.wal_checkpoints c ON c.node_id = r.node_id"
					 " WHERE r.node_id = $1"
					 " ORDER BY r.schema_name, r.table_name, r.relation_id", &p);
	for (int row = 0; row < PQntuples(res); row++)
	{
		Datum		values[10];
		bool		nulls[10];
		Oid			relid = result_null(res, row, 9) ? InvalidOid :
			(Oid) result_int4(res, row, 9);

		if (!status_visible_to(caller, relid))
			continue;
		for (int col = 0; col < 10; col++)
			nulls[col] = col < 9 && result_null(res, row, col);
		values[0] = CStringGetTextDatum(result_text(res, row, 0));
		values[1] = CStringGetTextDatum(result_text(res, row, 1));
		values[2] = BoolGetDatum(result_bool(res, row, 2));
		values[3] = LSNGetDatum(result_lsn(res, row, 3));
		values[4] = TimestampTzGetDatum(result_ts(res, row, 4));
		if (!nulls[5])
			values[5] = LSNGetDatum(result_lsn(res, row, 5));
		values[6] = Int64GetDatum(result_int8(res, row, 6));
		if (!nulls[7])
			values[7] = LSNGetDatum(result_lsn(res, row, 7));
		if (!nulls[8])
			values[8] = TimestampTzGetDatum(result_ts(res, row, 8));
		/* how far the source's WAL is ahead of what the agent applied */
		nulls[9] = nulls[7] || !have_wal_lsn;
		if (!nulls[9])
			values[9] = DirectFunctionCall2(pg_lsn_mi, LSNGetDatum(wal_lsn), values[7]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	pgtw_store_clear(res);
	return (Datum) 0;
}

/*
 * pgtimewarp_ping() RETURNS text: the store's server version, read over
 * the connection lookups use (the foreign server's options and the
 * extension owner's user mapping).  What doctor probes: it reads nothing
 * from history.
 */
Datum
pgtimewarp_ping(PG_FUNCTION_ARGS)
{
	PGresult   *res = store_read_text("SELECT pg_catalog.current_setting('server_version')", NULL);
	text	   *version = cstring_to_text(PQgetvalue(res, 0, 0));

	pgtw_store_clear(res);
	PG_RETURN_TEXT_P(version);
}

/*
 * pgtimewarp_disconnect() RETURNS boolean: close this backend's store
 * connection (a later lookup opens a new one); false when there was none.
 * For a store database that must have no sessions (DROP DATABASE, a
 * template), or a pooled session going back to its pool.
 */
Datum
pgtimewarp_disconnect(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(pgtw_store_disconnect());
}
