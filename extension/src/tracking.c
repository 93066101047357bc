/*-------------------------------------------------------------------------
 *
 * tracking.c
 *		Starting and stopping a table's history: track, untrack, forget,
 *		and attach (history to a restored table).
 *
 * Changes to the store are made in the local transaction's remote
 * transaction, committed just before the local one (remote_xact.c): a
 * tracking that rolls back leaves nothing in the store.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_publication.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "replication/message.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "pgtimewarp.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(pgtimewarp_track);
PG_FUNCTION_INFO_V1(pgtimewarp_untrack);
PG_FUNCTION_INFO_V1(pgtimewarp_forget);
PG_FUNCTION_INFO_V1(pgtimewarp_attach);

/* Open a table to start or stop tracking it: the caller must own it. */
static Relation
open_for_tracking(Oid relid, LOCKMODE lockmode, TargetTable *target)
{
	Relation	rel;

	/* before the lock, as LOCK TABLE does: a non-owner must not queue writers */
	require_relation_exists(relid);
	check_schema_usage(relid);
	if (!pgtw_table_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, get_rel_name(relid));
	rel = table_open(relid, lockmode);

	if (rel->rd_rel->relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s is not a table", relation_display_name(rel)),
				 errdetail("pgtimewarp tracks ordinary tables only%s.",
						   rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE ?
						   "; track each partition instead" : "")));
	if (rel->rd_rel->relpersistence != RELPERSISTENCE_PERMANENT)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("table %s is %s", relation_display_name(rel),
						rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP ?
						"temporary" : "unlogged"),
				 errdetail("Changes to temporary and unlogged tables are not written to the WAL, so pgtimewarp cannot see them.")));
	describe_target(rel, target);
	return rel;
}

/*
 * Tell the agent, in the WAL and inside this transaction, that tracking of a
 * table starts or stops.  A transactional message is decoded at this
 * transaction's commit, in commit order, so the agent learns it before any
 * later change to the table and never if the transaction rolls back.
 */
static void
emit_tracking_message(const char *action, const char *node_id,
					  TargetTable *target, XLogRecPtr lsn)
{
	StringInfoData msg;

	initStringInfo(&msg);
	appendStringInfo(&msg, "{\"action\": \"%s\", \"node_id\": ", action);
	escape_json(&msg, node_id);
	appendStringInfoString(&msg, ", \"schema_name\": ");
	escape_json(&msg, target->schema_name);
	appendStringInfoString(&msg, ", \"table_name\": ");
	escape_json(&msg, target->table_name);
	appendStringInfo(&msg, ", \"lsn\": \"%s\"}", lsn_to_cstring(lsn));
	(void) LogLogicalMessage(PGTW_MESSAGE_PREFIX, msg.data, msg.len, true);
}

/*
 * Add or drop the table in publication "pgtimewarp" when it exists (the
 * agent's pgoutput stream reads it), inside this transaction so that the
 * stream starts or stops carrying the table exactly at this commit.
 */
static void
update_publication(TargetTable *target, bool add)
{
	Oid			pubid = get_publication_oid(PGTW_PUBLICATION, true);
	bool		member;

	if (!OidIsValid(pubid))
		return;
	if (GetPublication(pubid)->alltables)
		return;
	member = list_member_oid(GetRelationPublications(target->relid), pubid);
	if (member == add)
		return;
	local_begin();
	local_execute(psprintf("ALTER PUBLICATION %s %s TABLE %s",
						   quote_identifier(PGTW_PUBLICATION),
						   add ? "ADD" : "DROP", target->display_name),
				  SPI_OK_UTILITY);
	local_end();
}

/* Append `value` to a COPY text line, escaped. */
static void
copy_field(StringInfo line, const char *value, bool last)
{
	if (value == NULL)
		appendStringInfoString(line, "\\N");
	else
		for (const char *c = value; *c; c++)
		{
			switch (*c)
			{
				case '\\':
					appendStringInfoString(line, "\\\\");
					break;
				case '\n':
					appendStringInfoString(line, "\\n");
					break;
				case '\r':
					appendStringInfoString(line, "\\r");
					break;
				case '\t':
					appendStringInfoString(line, "\\t");
					break;
				default:
					appendStringInfoChar(line, *c);
			}
		}
	appendStringInfoChar(line, last ? '\n' : '\t');
}

#define BASELINE_COPY \
	"COPY pgtimewarp_store.row_versions" \
	" (relation_id, pk, pk_full, valid_from_lsn, valid_from_ts, op, row_data) FROM STDIN"

/*
 * The baseline: every current row as a version valid from `lsn`, read
 * here with a cursor and copied to the store in pieces.  Returns the
 * number of versions written.
 */
static int64
write_baseline(Relation rel, TargetTable *target, int32 relation_id,
			   XLogRecPtr lsn, TimestampTz ts)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	StringInfoData sql;
	StringInfoData names;
	StringInfoData values;
	StringInfoData line;
	char	   *prefix;
	char	   *suffix;
	int			level;
	Portal		portal;

	initStringInfo(&names);
	initStringInfo(&values);
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(tupdesc, i);

		/* generated columns are not in the WAL stream either */
		if (attr->attisdropped || attr->attgenerated)
			continue;
		appendStringInfo(&names, "%s%s", names.len ? ", " : "",
						 quote_literal_cstr(NameStr(attr->attname)));
		appendStringInfo(&values, "%spgtimewarp.canonical_text(t.%s)",
						 values.len ? ", " : "", quote_identifier(NameStr(attr->attname)));
	}

	initStringInfo(&sql);
	appendStringInfoString(&sql,
						   "SELECT pgtimewarp.index_key(k.k)::text,"
						   "       CASE WHEN (pgtimewarp.index_key(k.k))[1] IS NULL THEN k.k END::text,");
	/* jsonb_object(keys, values) takes any number of columns */
	appendStringInfo(&sql,
					 " jsonb_object(ARRAY[%s]::text[], ARRAY[%s]::text[])::text"
					 " FROM ONLY %s AS t CROSS JOIN LATERAL (SELECT ARRAY[",
					 names.data, values.data, target->display_name);
	for (int i = 0; i < target->npk; i++)
		appendStringInfo(&sql, "%spgtimewarp.canonical_key_text(t.%s)", i ? ", " : "",
						 quote_identifier(target->pk_names[i]));
	appendStringInfoString(&sql, "]::text[] AS k) AS k");

	level = canonical_settings_begin();
	prefix = psprintf("%d\t", relation_id);
	suffix = psprintf("%s\t%s\tb\t", lsn_to_cstring(lsn), timestamptz_to_cstring(ts));
	initStringInfo(&line);
	pgtw_store_copy_begin(BASELINE_COPY);
	local_begin();
	portal = SPI_cursor_open_with_args(NULL, sql.data, 0, NULL, NULL, NULL, false, 0);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 1000);
		if (SPI_processed == 0)
			break;
		resetStringInfo(&line);
		for (uint64 row = 0; row < SPI_processed; row++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[row];
			TupleDesc	desc = SPI_tuptable->tupdesc;

			appendStringInfoString(&line, prefix);
			copy_field(&line, SPI_getvalue(tuple, desc, 1), false);
			copy_field(&line, SPI_getvalue(tuple, desc, 2), false);
			appendStringInfoString(&line, suffix);
			copy_field(&line, SPI_getvalue(tuple, desc, 3), true);
		}
		pgtw_store_copy_data(line.data, line.len);
		SPI_freetuptable(SPI_tuptable);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_cursor_close(portal);
	local_end();
	canonical_settings_end(level);
	return pgtw_store_copy_end(BASELINE_COPY);
}

/*
 * The baseline must hold only committed rows.  Changes this transaction has
 * already made to the table would be copied into it as if they had happened
 * before tracking began, and decoded again at this transaction's commit.
 * Every write leaves the transaction holding RowExclusiveLock on the table
 * (TRUNCATE and ALTER TABLE, AccessExclusiveLock), so that tells exactly.
 */
static void
refuse_if_written_here(Oid relid)
{
	LOCKTAG		tag;

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, relid);
	if (LockHeldByMe(&tag, RowExclusiveLock) || LockHeldByMe(&tag, AccessExclusiveLock))
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("pgtimewarp_track must run before this transaction changes table %s",
						quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
												   get_rel_name(relid))),
				 errdetail("This transaction has already modified or locked the table; its uncommitted changes would be recorded as if they had happened before tracking began."),
				 errhint("Commit or roll back those changes, then call pgtimewarp_track in a transaction of its own.")));
}

/*
 * Changes are recorded only from where the agent's slot starts.  Without a
 * logical slot in this database yet, changes made before the agent creates
 * one are lost to history, and the agent will refuse the table: say so now.
 */
static void
warn_if_no_slot(TargetTable *target)
{
	bool		found;

	local_begin();
	local_execute("SELECT 1 FROM pg_catalog.pg_replication_slots"
				  " WHERE slot_type = 'logical' AND database = pg_catalog.current_database()",
				  SPI_OK_SELECT);
	found = SPI_processed > 0;
	local_end();
	if (found)
		return;
	ereport(WARNING,
			(errcode(ERRCODE_WARNING),
			 errmsg("no logical replication slot exists in this database yet"),
			 errdetail("Changes to table %s are recorded only from where the pgtimewarp agent's slot starts; changes made before the agent creates it are not, and the agent will refuse the table.",
					   target->display_name),
			 errhint("Start the agent first, then track the table again: SELECT pgtimewarp_untrack(%s); SELECT pgtimewarp_forget(%s); SELECT pgtimewarp_track(%s);",
					 target->display_literal, target->display_literal, target->display_literal)));
}

/*
 * The table's columns as the DDL log writes them, attnum -> name: the
 * agent tells a column rename from them (agent/ddl.ts).
 */
static char *
column_names_json(TupleDesc tupdesc)
{
	StringInfoData buf;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(tupdesc, i);

		if (attr->attisdropped)
			continue;
		appendStringInfo(&buf, "%s\"%d\": ", first ? "" : ", ", (int) attr->attnum);
		escape_json(&buf, NameStr(attr->attname));
		first = false;
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/*
 * pgtimewarp_track(rel regclass) RETURNS pg_lsn
 *
 * Concurrency: the table is locked in SHARE ROW EXCLUSIVE mode, which waits
 * for every transaction writing it to finish and keeps new writers out until
 * this transaction ends.  Under the lock, with a snapshot taken after it, the
 * baseline sees every committed change; the current WAL insert position B is
 * later than all of their commit records, and every later write commits after
 * this transaction, so after B.  The table does not change in between, so
 * the baseline is valid from B and the agent records exactly the changes
 * whose commit LSN is > B: none lost, none doubled.  Writers wait while the
 * baseline is copied.
 */
Datum
pgtimewarp_track(PG_FUNCTION_ARGS)
{
	TargetTable target;
	Relation	rel;
	char	   *node_id;
	Tracking   *existing;
	XLogRecPtr	start_lsn;
	TimestampTz start_ts;
	StoreParams p;
	PGresult   *res;
	char		sysid[32];
	int32		relation_id;
	int64		versions;

	require_argument(fcinfo, 0, "rel");
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("pgtimewarp_track must run in a READ COMMITTED transaction"),
				 errdetail("The baseline copy must see every change committed before the table is locked, and a REPEATABLE READ or SERIALIZABLE snapshot may be older than the lock."),
				 errhint("Run it outside the REPEATABLE READ or SERIALIZABLE transaction.")));

	refuse_if_written_here(PG_GETARG_OID(0));
	rel = open_for_tracking(PG_GETARG_OID(0), ShareRowExclusiveLock, &target);

	node_id = configured_node_id();
	existing = store_fetch_tracking(node_id, &target);
	if (existing)
		require_same_table(existing, &target);
	if (existing && !existing->untracked)
	{
		table_close(rel, NoLock);
		ereport(NOTICE,
				(errmsg("table %s is already tracked since %s (LSN %s)",
						target.display_name, timestamptz_to_cstring(existing->from_ts),
						lsn_to_cstring(existing->from_lsn))));
		PG_RETURN_LSN(existing->from_lsn);
	}
	if (existing)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s was tracked before, until %s",
						target.display_name, timestamptz_to_cstring(existing->untracked_ts)),
				 errdetail("Its history from %s to %s is still in the store, and pgtimewarp cannot yet record a gap in a table's history.",
						   timestamptz_to_cstring(existing->from_ts),
						   timestamptz_to_cstring(existing->untracked_ts)),
				 errhint("To start over, delete the old history with SELECT pgtimewarp_forget(%s), then track the table again.",
						 target.display_literal)));

	start_lsn = GetXLogInsertRecPtr();
	start_ts = GetCurrentTimestamp();
	snprintf(sysid, sizeof(sysid), UINT64_FORMAT, GetSystemIdentifier());

	p.n = 0;
	param_text(&p, TEXTOID, node_id);
	param_text(&p, TEXTOID, get_database_name(MyDatabaseId));
	param_text(&p, TEXTOID, sysid);
	pgtw_store_clear(store_write("INSERT INTO pgtimewarp_store.nodes (node_id, database_name, system_identifier)"
								 " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", &p));

	p.n = 0;
	param_text(&p, TEXTOID, node_id);
	param_text(&p, TEXTOID, target.schema_name);
	param_text(&p, TEXTOID, target.table_name);
	param_oid(&p, target.relid);
	param_text(&p, TEXTARRAYOID, target.pk_names_literal);
	param_lsn(&p, start_lsn);
	param_ts(&p, start_ts);
	param_text(&p, TEXTOID, column_names_json(RelationGetDescr(rel)));
	/*
	 * The store numbers each tracked incarnation: relation_id given as NULL
	 * is set by its SECURITY DEFINER trigger (migrations/2_compact_versions.sql);
	 * the column's default would need USAGE on the sequence.
	 */
	res = store_write("INSERT INTO pgtimewarp_store.tracked_relations"
					  " (relation_id, node_id, schema_name, table_name, relid, pk_columns,"
					  "  tracked_from_lsn, tracked_from_ts, columns)"
					  " VALUES (NULL, $1, $2, $3, $4, $5, $6, $7, $8::jsonb) RETURNING relation_id", &p);
	if (PQntuples(res) != 1)
		elog(ERROR, "registering table %s in the pgtimewarp store returned no relation id",
			 target.display_name);
	relation_id = result_int4(res, 0, 0);
	pgtw_store_clear(res);

	/*
	 * No lsn_time_map entry for B: the store's time resolution already
	 * takes any time from tracked_from_ts on to at least B, and
	 * lsn_time_map belongs to the agent, whose concurrent heartbeats would
	 * make this REPEATABLE READ remote transaction fail to serialize.
	 */
	versions = write_baseline(rel, &target, relation_id, start_lsn, start_ts);
	p.n = 0;
	param_int4(&p, relation_id);
	param_text(&p, INT8OID, psprintf(INT64_FORMAT, versions));
	pgtw_store_clear(store_write("INSERT INTO pgtimewarp_store.relation_stats (relation_id, versions)"
								 " VALUES ($1, $2)", &p));
	update_publication(&target, true);
	warn_if_no_slot(&target);

	emit_tracking_message("track", node_id, &target, start_lsn);
	table_close(rel, NoLock);
	PG_RETURN_LSN(start_lsn);
}

/*
 * pgtimewarp_untrack(rel regclass) RETURNS void
 *
 * History is complete up to the WAL insert position read here: the agent
 * stops at this transaction's commit, which is later.
 */
Datum
pgtimewarp_untrack(PG_FUNCTION_ARGS)
{
	TargetTable target;
	Relation	rel;
	char	   *node_id;
	Tracking   *existing;
	XLogRecPtr	stop_lsn;
	TimestampTz stop_ts;
	StoreParams p;

	require_argument(fcinfo, 0, "rel");
	rel = open_for_tracking(PG_GETARG_OID(0), AccessShareLock, &target);

	node_id = configured_node_id();
	existing = store_fetch_tracking(node_id, &target);
	if (existing)
		require_same_table(existing, &target);
	if (existing == NULL || existing->untracked)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is not tracked by pgtimewarp", target.display_name),
				 existing ? errdetail("Tracking stopped at %s.",
									  timestamptz_to_cstring(existing->untracked_ts)) : 0,
				 errhint("pgtimewarp_status() lists the tracked tables.")));

	stop_lsn = GetXLogInsertRecPtr();
	stop_ts = GetCurrentTimestamp();
	p.n = 0;
	param_int4(&p, existing->relation_id);
	param_lsn(&p, stop_lsn);
	param_ts(&p, stop_ts);
	pgtw_store_clear(store_write("UPDATE pgtimewarp_store.tracked_relations"
								 "   SET untracked_lsn = $2, untracked_ts = $3"
								 " WHERE relation_id = $1", &p));
	update_publication(&target, false);

	emit_tracking_message("untrack", node_id, &target, stop_lsn);
	table_close(rel, NoLock);
	PG_RETURN_VOID();
}

/*
 * pgtimewarp_forget(rel regclass) RETURNS bigint
 *
 * Deletes the store's history of a table that is no longer tracked, so that
 * it can be tracked afresh.  Returns the number of row versions deleted.
 */
Datum
pgtimewarp_forget(PG_FUNCTION_ARGS)
{
	TargetTable target;
	Relation	rel;
	char	   *node_id;
	Tracking   *existing;
	StoreParams p;
	StoreStatement stmts[2];
	int64		versions;

	require_argument(fcinfo, 0, "rel");
	rel = open_for_tracking(PG_GETARG_OID(0), AccessShareLock, &target);

	node_id = configured_node_id();
	existing = store_fetch_tracking(node_id, &target);
	if (existing == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the store has no history of table %s", target.display_name),
				 errdetail("It was never tracked for node \"%s\", or its history was already deleted.",
						   node_id)));
	require_same_table(existing, &target);
	if (!existing->untracked)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is still tracked", target.display_name),
				 errdetail("pgtimewarp_forget deletes only the history of tables no longer tracked."),
				 errhint("Stop tracking it first with SELECT pgtimewarp_untrack(%s).",
						 target.display_literal)));

	/*
	 * By relation id: versions the agent may still be writing for this
	 * incarnation keep an id no other table will ever get.
	 */
	p.n = 0;
	param_int4(&p, existing->relation_id);
	memset(stmts, 0, sizeof(stmts));
	for (int i = 0; i < 2; i++)
	{
		statement_params(&stmts[i], &p);
		stmts[i].write = true;
	}
	stmts[0].sql = "DELETE FROM pgtimewarp_store.row_versions WHERE relation_id = $1";
	stmts[1].sql = "DELETE FROM pgtimewarp_store.tracked_relations WHERE relation_id = $1";
	pgtw_store_run(stmts, 2);
	versions = (int64) strtoll(PQcmdTuples(stmts[0].result), NULL, 10);
	pgtw_store_clear(stmts[0].result);
	pgtw_store_clear(stmts[1].result);
	table_close(rel, NoLock);
	PG_RETURN_INT64(versions);
}

/*
 * pgtimewarp_attach(rel regclass) RETURNS void
 *
 * Gives the history stored under a table's name to the table that has the
 * name now: after pg_dump and pg_restore the same table has a new OID, and
 * history follows OIDs (require_same_table).  Only a role with the
 * privileges of the extension's owner may say that two tables are one;
 * the table owner alone could be anyone who re-created the name.
 */
Datum
pgtimewarp_attach(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	TargetTable target;
	Relation	rel;
	Tracking   *existing;
	StoreParams p;

	if (!has_privs_of_role(GetUserId(), extension_owner()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to attach history"),
				 errdetail("Attaching gives the history stored under a name to the table that has the name now; only roles with the privileges of the pgtimewarp extension's owner, %s, may.",
						   quote_identifier(GetUserNameFromId(extension_owner(), false))),
				 errhint("Ask a superuser to run it.")));
	require_relation_exists(relid);
	rel = table_open(relid, ShareRowExclusiveLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s is not a table", relation_display_name(rel))));
	describe_target(rel, &target);

	existing = store_fetch_tracking(configured_node_id(), &target);
	if (existing == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the store has no history under the name %s", target.display_name),
				 errhint("pgtimewarp_status() lists the names with history.")));
	if (existing->relid == target.relid)
	{
		table_close(rel, NoLock);
		ereport(NOTICE,
				(errmsg("the history stored under the name %s already belongs to it",
						target.display_name)));
		PG_RETURN_VOID();
	}
	check_history_key(existing, &target);
	p.n = 0;
	param_int4(&p, existing->relation_id);
	param_oid(&p, target.relid);
	pgtw_store_clear(store_write("UPDATE pgtimewarp_store.tracked_relations SET relid = $2"
								 " WHERE relation_id = $1", &p));
	if (!existing->untracked)
		update_publication(&target, true);
	table_close(rel, NoLock);
	ereport(NOTICE,
			(errmsg("the history of %s since %s now belongs to table %s (OID %u)",
					target.display_name, timestamptz_to_cstring(existing->from_ts),
					target.display_name, target.relid),
			 errdetail("It was recorded from the table with OID %u.", existing->relid),
			 errhint("Restart the pgtimewarp agent, which knows tables by OID from when it started (\"pgtimewarp install\" does).")));
	PG_RETURN_VOID();
}
