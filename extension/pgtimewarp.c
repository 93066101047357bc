/*-------------------------------------------------------------------------
 *
 * pgtimewarp.c
 *		Time travel queries over WAL-derived row history.
 *
 * The history of each tracked table lives in a separate store database,
 * written there by the pgtimewarp agent from the WAL.  This module answers
 * questions about it from the source database: it resolves the table by
 * regclass to (schema, table), turns the caller's JSON key into the store's
 * canonical key, maps a timestamp to an LSN and reads the version that was
 * visible there, all through foreign tables of postgres_fdw.
 *
 * Store access runs as the extension's owner (the only role with a user
 * mapping for the store), after checking that the caller may SELECT the
 * table; the caller never sees store credentials.
 *
 * Canonical encoding.  The store keeps every value as the text its type's
 * output function produces under fixed settings (canonical_settings_begin),
 * which round-trips every type exactly through its input function.  A key is
 * the text[] of its primary key columns' values in key order.  The agent
 * receives the same text from the walsender, whose session uses the same
 * settings (agent/key.ts), so both sides agree byte for byte.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/indexing.h"
#include "mb/pg_wchar.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_publication.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "commands/dbcommands.h"
#include "nodes/makefuncs.h"
#include "parser/parse_type.h"
#include "replication/message.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rls.h"
#include "utils/syscache.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"

#include "pgtimewarp.h"
#include "pgtimewarp_compat.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	pgtw_horizon_init();
}

#define PGTW_EXTENSION_NAME		"pgtimewarp"
#define PGTW_STORE_SERVER		"pgtimewarp_store"
#define PGTW_PUBLICATION		"pgtimewarp"

/* A source table as the store knows it. */
typedef struct TargetTable
{
	Oid			relid;
	char	   *schema_name;
	char	   *table_name;
	char	   *display_name;	/* schema-qualified, quoted where needed */
	char	   *display_literal;	/* display_name as an SQL literal, for hints */
	int			npk;
	AttrNumber *pk_attnums;		/* primary key columns in index order */
	char	  **pk_names;
	/*
	 * Whether the caller may see stored columns the table no longer has
	 * (dropped or renamed since): only with SELECT on the whole table, as
	 * nobody can grant a column that is gone.
	 */
	bool		show_former_columns;
} TargetTable;

/* A stretch of a table's history the store knows it lacks (history_gaps). */
typedef struct HistoryGap
{
	XLogRecPtr	from_lsn;
	TimestampTz from_ts;
	XLogRecPtr	to_lsn;			/* InvalidXLogRecPtr while open */
	TimestampTz to_ts;
	char	   *reason;
} HistoryGap;

/* What the store says about a tracked table, and how far its history goes. */
typedef struct Tracking
{
	char	   *node_id;
	int32		relation_id;	/* the store's id of this tracked incarnation */
	Oid			relid;			/* the source table's OID it belongs to */
	XLogRecPtr	from_lsn;
	TimestampTz from_ts;
	bool		untracked;
	XLogRecPtr	untracked_lsn;
	TimestampTz untracked_ts;
	/* history is complete up to here: the agent's checkpoint or the baseline */
	XLogRecPtr	horizon_lsn;
	TimestampTz horizon_ts;
	ArrayType  *pk_columns;
	/* [{"lsn", "old", "new"}] in LSN order, or NULL when no column was renamed */
	Jsonb	   *column_renames;
	int			ngaps;
	HistoryGap *gaps;			/* in from_lsn order */
} Tracking;

/* One version of one row, copied out of SPI memory. */
typedef struct RowVersion
{
	XLogRecPtr	from_lsn;
	XLogRecPtr	to_lsn;			/* InvalidXLogRecPtr while open */
	TimestampTz from_ts;
	TimestampTz to_ts;
	const char *op;
	Jsonb	   *row_data;		/* NULL for delete and truncate tombstones */
} RowVersion;

/* Text values to read as their columns' types, and where to put them. */
typedef struct ParseJob
{
	int			n;
	Form_pg_attribute *attrs;
	char	  **texts;
	bool		keep_typmod;	/* apply the column's typmod (asof_row) or not */
	Datum	   *values;
	int			done;			/* values parsed so far: the failing one is next */
} ParseJob;

static ErrorData *parse_job_try(ParseJob *job);

/* State saved while running SPI against the store as the extension owner. */
typedef struct StoreSession
{
	Oid			saved_userid;
	int			saved_sec_context;
	int			guc_level;
	MemoryContext caller_cxt;
} StoreSession;

PG_FUNCTION_INFO_V1(pgtimewarp_track);
PG_FUNCTION_INFO_V1(pgtimewarp_untrack);
PG_FUNCTION_INFO_V1(pgtimewarp_forget);
PG_FUNCTION_INFO_V1(pgtimewarp_asof_pk);
PG_FUNCTION_INFO_V1(pgtimewarp_asof_pk_lsn);
PG_FUNCTION_INFO_V1(pgtimewarp_asof_row);
PG_FUNCTION_INFO_V1(pgtimewarp_diff_pk);
PG_FUNCTION_INFO_V1(pgtimewarp_status);
PG_FUNCTION_INFO_V1(pgtimewarp_pk_key);
PG_FUNCTION_INFO_V1(pgtimewarp_canonical_text);
PG_FUNCTION_INFO_V1(pgtimewarp_canonical_key_text);
PG_FUNCTION_INFO_V1(pgtimewarp_index_key);
PG_FUNCTION_INFO_V1(pgtimewarp_attach);

/* ----------------------------------------------------------------
 * Small helpers
 * ----------------------------------------------------------------
 */

static void
require_argument(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("argument \"%s\" of %s must not be null",
						name, get_func_name(fcinfo->flinfo->fn_oid))));
}

static char *
lsn_to_cstring(XLogRecPtr lsn)
{
	return psprintf("%X/%X", LSN_FORMAT_ARGS(lsn));
}

static char *
timestamptz_to_cstring(TimestampTz ts)
{
	return DatumGetCString(DirectFunctionCall1(timestamptz_out,
											   TimestampTzGetDatum(ts)));
}

static char *
join_names(char **names, int n)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < n; i++)
		appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "", quote_identifier(names[i]));
	return buf.data;
}

/* ----------------------------------------------------------------
 * Canonical output settings
 *
 * Text output of dates, times, intervals, floats and bytea depends on
 * session settings.  The store must hold one spelling per value, so every
 * value pgtimewarp writes or parses goes through these settings.  The agent
 * sets the same ones on its replication connection (agent/key.ts).
 * ----------------------------------------------------------------
 */
static const struct
{
	const char *name;
	const char *value;
}			canonical_settings[] =
{
	{"DateStyle", "ISO, YMD"},
	{"IntervalStyle", "postgres"},
	{"TimeZone", "UTC"},
	{"extra_float_digits", "3"},
	{"bytea_output", "hex"},
	{"xmloption", "content"},
	{"lc_monetary", "C"},
};

static int
canonical_settings_begin(void)
{
	int			level = NewGUCNestLevel();

	for (size_t i = 0; i < lengthof(canonical_settings); i++)
		(void) set_config_option(canonical_settings[i].name,
								 canonical_settings[i].value,
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

static void
canonical_settings_end(int level)
{
	AtEOXact_GUC(true, level);
}

/* ----------------------------------------------------------------
 * Store access
 * ----------------------------------------------------------------
 */

static Oid
extension_owner(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			owner;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum(PGTW_EXTENSION_NAME));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (!HeapTupleIsValid(tuple))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("extension \"%s\" is not installed in this database",
						PGTW_EXTENSION_NAME)));
	owner = ((Form_pg_extension) GETSTRUCT(tuple))->extowner;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return owner;
}

static void
store_error_context(void *arg)
{
	errcontext("reading or writing the pgtimewarp store through foreign server \"%s\"",
			   PGTW_STORE_SERVER);
}

/*
 * Switch to the extension's owner, pin search_path and connect SPI.  Callers
 * have already checked the invoking role's privileges on the source table.
 */
static void
store_session_begin(StoreSession *ss)
{
	ss->caller_cxt = CurrentMemoryContext;
	pgtw_note_store_read();
	GetUserIdAndSecContext(&ss->saved_userid, &ss->saved_sec_context);
	SetUserIdAndSecContext(extension_owner(),
						   ss->saved_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	ss->guc_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);

	/*
	 * Without table statistics the planner sorts remote rows locally;
	 * every store query is written for an ORDER BY the store's indexes
	 * answer, so have the store do it.
	 */
	(void) set_config_option("enable_sort", "off",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

static void
store_session_end(StoreSession *ss)
{
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
	AtEOXact_GUC(true, ss->guc_level);
	SetUserIdAndSecContext(ss->saved_userid, ss->saved_sec_context);
}

/*
 * Counts this session's writing statements through store_execute: what an
 * as-of call site remembers from the store (LookupCache) is good only while
 * this is unchanged.
 */
static uint64 store_generation = 0;

/*
 * Run one statement against the store (or the local config).  A store that
 * cannot be reached is reported with what postgres_fdw said and what to
 * check; any other error passes through with the store context attached.
 */
static void
store_execute(const char *sql, int nargs, Oid *argtypes, Datum *values,
			  const char *nulls, bool read_only, long count, int expected)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ErrorContextCallback errcallback;
	volatile int ret = 0;

	if (!read_only)
		store_generation++;

	errcallback.callback = store_error_context;
	errcallback.arg = NULL;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	PG_TRY();
	{
		ret = SPI_execute_with_args(sql, nargs, argtypes, values, nulls,
									read_only, count);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_CONNECTION_EXCEPTION)
		{
			FreeErrorData(edata);
			PG_RE_THROW();
		}
		FlushErrorState();
		ereport(ERROR,
				(errcode(edata->sqlerrcode),
				 errmsg("could not reach the pgtimewarp store"),
				 errdetail("%s%s%s", edata->message,
						   edata->detail ? ": " : "",
						   edata->detail ? edata->detail : ""),
				 errhint("Check that the store database is running and that foreign server \"%s\" and the user mapping of role \"%s\" point at it; \"pgtimewarp doctor\" checks both.",
						 PGTW_STORE_SERVER,
						 GetUserNameFromId(GetUserId(), false))));
	}
	PG_END_TRY();
	error_context_stack = errcallback.previous;

	if (ret != expected)
		elog(ERROR, "store statement returned %s, expected %s: %s",
			 SPI_result_code_string(ret), SPI_result_code_string(expected), sql);
}

/* Column `col` of row `row` of the last SPI result, copied to `cxt`. */
static Datum
spi_value(int row, int col, bool *isnull, MemoryContext cxt)
{
	Datum		value = SPI_getbinval(SPI_tuptable->vals[row],
									  SPI_tuptable->tupdesc, col, isnull);
	Form_pg_attribute attr = TupleDescAttr(SPI_tuptable->tupdesc, col - 1);
	MemoryContext oldcxt;

	if (*isnull)
		return (Datum) 0;
	oldcxt = MemoryContextSwitchTo(cxt);
	value = datumCopy(value, attr->attbyval, attr->attlen);
	MemoryContextSwitchTo(oldcxt);
	return value;
}

/* Column `col` of row `row` of the last SPI result as a C string in `cxt`. */
static char *
spi_cstring(int row, int col, MemoryContext cxt)
{
	bool		isnull;
	Datum		value = spi_value(row, col, &isnull, cxt);
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	char	   *result = TextDatumGetCString(value);

	MemoryContextSwitchTo(oldcxt);
	return result;
}

/* The node id this database was configured with; needs a store session. */
static char *
configured_node_id(StoreSession *ss)
{
	store_execute("SELECT node_id FROM pgtimewarp.config",
				  0, NULL, NULL, NULL, true, 1, SPI_OK_SELECT);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pgtimewarp is not configured in this database"),
				 errdetail("No node id is set, so pgtimewarp does not know which history in the store belongs to this database."),
				 errhint("Run \"pgtimewarp install\", or as the extension's owner run SELECT pgtimewarp_configure('<node id>').")));
	return spi_cstring(0, 1, ss->caller_cxt);
}

/* ----------------------------------------------------------------
 * The source table
 * ----------------------------------------------------------------
 */

/* Fill `target` from an open relation; errors if it has no primary key. */
static void
describe_target(Relation rel, TargetTable *target)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	Relation	pkrel;

	target->relid = RelationGetRelid(rel);
	target->schema_name = get_namespace_name(RelationGetNamespace(rel));
	target->table_name = pstrdup(RelationGetRelationName(rel));
	target->display_name = quote_qualified_identifier(target->schema_name,
													  target->table_name);
	target->display_literal = quote_literal_cstr(target->display_name);

	if (!OidIsValid(pkoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s has no primary key", target->display_name),
				 errdetail("pgtimewarp identifies the versions of a row by its primary key."),
				 errhint("Add one with ALTER TABLE %s ADD PRIMARY KEY (...), then try again.",
						 target->display_name)));

	pkrel = index_open(pkoid, AccessShareLock);
	target->npk = pkrel->rd_index->indnkeyatts;
	target->pk_attnums = palloc(sizeof(AttrNumber) * target->npk);
	target->pk_names = palloc(sizeof(char *) * target->npk);
	for (int i = 0; i < target->npk; i++)
	{
		AttrNumber	attnum = pkrel->rd_index->indkey.values[i];

		target->pk_attnums[i] = attnum;
		target->pk_names[i] =
			pstrdup(NameStr(TupleDescAttr(RelationGetDescr(rel), attnum - 1)->attname));
	}
	index_close(pkrel, AccessShareLock);
}

/*
 * History is shown only of tables, and columns, the caller may SELECT now:
 * the whole row, like SELECT *, or an error.
 */
static void
check_select_privilege(Oid relid, bool *show_former_columns)
{
	Oid			userid = GetUserId();
	char	   *name;

	*show_former_columns = pg_class_aclcheck(relid, userid, ACL_SELECT) == ACLCHECK_OK;
	if (*show_former_columns)
		return;
	if (pg_attribute_aclcheck_all(relid, userid, ACL_SELECT, ACLMASK_ALL) == ACLCHECK_OK)
		return;
	name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for table %s", name),
			 errdetail("pgtimewarp shows the history of a table only to roles that may SELECT all of its columns now."),
			 errhint("Ask the table's owner for SELECT on %s.", name)));
}

static char *
relation_display_name(Relation rel)
{
	/* pg_temp_N means nothing to the user; a temporary table has one name */
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		return pstrdup(quote_identifier(RelationGetRelationName(rel)));
	return quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									  RelationGetRelationName(rel));
}

/*
 * The relation an OID argument names, or an error a user can act on.  A
 * regclass written as a number (or 0) skips the name lookup, and with it
 * the existence check.
 */
static void
require_relation_exists(Oid relid)
{
	if (!OidIsValid(relid) || !SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid),
				 errhint("Name the table, e.g. 'myschema.mytable'::regclass.")));
}

/*
 * A table given by OID skips the schema's USAGE check that a name would
 * have had to pass: check it here, as reading the table by name would.
 */
static void
check_schema_usage(Oid relid)
{
	Oid			nspid = get_rel_namespace(relid);

	if (pg_namespace_aclcheck(nspid, GetUserId(), ACL_USAGE) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_SCHEMA, get_namespace_name(nspid));
}

/*
 * Row-level security decides which of a table's rows a role may see today;
 * pgtimewarp does not apply policies to past row images (README, "Access"),
 * so a role subject to them sees no history of the table.  Policies are
 * not applied because they would not be exact: a policy reads today's
 * state (current_user's attributes, other tables), and a past image judged
 * by it can show a row that was then someone else's, or hide one.
 */
static void
refuse_row_security(TargetTable *target)
{
	if (check_enable_rls(target->relid, InvalidOid, true) != RLS_ENABLED)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("table %s has row-level security, which pgtimewarp does not apply to history",
					target->display_name),
			 errdetail("Role %s may see only the rows of %s its policies allow, and pgtimewarp cannot tell which past row versions those are.",
					   quote_identifier(GetUserNameFromId(GetUserId(), false)),
					   target->display_name),
			 errhint("Read the history as the table's owner or as a role with BYPASSRLS.")));
}

/*
 * Open a table for a history query: check privileges (before locking, as
 * SELECT would: a role that may not read the table must not queue behind
 * or ahead of its writers), lock, describe.
 */
static Relation
open_for_history(Oid relid, TargetTable *target)
{
	Relation	rel;
	bool		show_former_columns;

	require_relation_exists(relid);
	check_schema_usage(relid);
	check_select_privilege(relid, &show_former_columns);
	rel = table_open(relid, AccessShareLock);

	if (rel->rd_rel->relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s is not a table", relation_display_name(rel)),
				 errdetail("pgtimewarp keeps history of ordinary tables only.")));
	describe_target(rel, target);
	target->show_former_columns = show_former_columns;
	refuse_row_security(target);
	return rel;
}

/* ----------------------------------------------------------------
 * Keys
 * ----------------------------------------------------------------
 */

/*
 * A key value in the one form the store keys by.  Values the type's equality
 * treats as equal but prints differently would otherwise be different keys
 * for the same row: numeric 1.5 and 1.50, float 0 and -0.  The agent applies
 * the same rule to the text it decodes (agent/key.ts).
 */
static Datum
normalize_key_value(Datum value, Oid typid)
{
	switch (getBaseType(typid))
	{
		case NUMERICOID:
			return DirectFunctionCall1(numeric_trim_scale, value);
		case FLOAT8OID:
			return DatumGetFloat8(value) == 0.0 ? Float8GetDatum(0.0) : value;
		case FLOAT4OID:
			return DatumGetFloat4(value) == 0.0f ? Float4GetDatum(0.0f) : value;
		default:
			return value;
	}
}

static void
key_column_error_context(void *arg)
{
	errcontext("converting primary key column \"%s\" of the key given as JSON",
			   (const char *) arg);
}

/* The text a JSON scalar stands for, as the column's input function wants it. */
static char *
json_scalar_text(JsonbValue *v, const char *column, TargetTable *target)
{
	switch (v->type)
	{
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		case jbvNull:
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("primary key column \"%s\" of table %s cannot be null",
							column, target->display_name)));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("value of primary key column \"%s\" must be a JSON string, number or boolean",
							column),
					 errhint("Give the value as its text form, e.g. {\"%s\": \"...\"}.", column)));
	}
	return NULL;				/* keep compiler quiet */
}

/* A key value longer than this is not echoed whole in an error. */
#define KEY_ECHO_LIMIT 256

/*
 * The canonical store key of `pk`, a JSON object naming every primary key
 * column once: text[] of each column's value, converted to the column's type
 * with the caller's settings ({"id": 42} and {"id": "042"} are the same row)
 * and written back out under the canonical settings.
 */
static ArrayType *
encode_pk(Relation rel, TargetTable *target, Jsonb *pk)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	char	   *expected = join_names(target->pk_names, target->npk);
	Datum	   *typed = palloc(sizeof(Datum) * target->npk);
	Datum	   *elems = palloc(sizeof(Datum) * target->npk);
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			level;

	if (JB_ROOT_IS_SCALAR(pk) || !JB_ROOT_IS_OBJECT(pk))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("primary key must be a JSON object"),
				 errdetail("Table %s has primary key (%s).",
						   target->display_name, expected),
				 errhint("Pass the key as {\"column\": value, ...}, e.g. '{\"%s\": ...}'.",
						 target->pk_names[0])));

	/* Every key of the object must be a primary key column. */
	it = JsonbIteratorInit(&pk->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		bool		known = false;

		if (tok != WJB_KEY)
			continue;
		for (int i = 0; i < target->npk && !known; i++)
			known = strlen(target->pk_names[i]) == (size_t) v.val.string.len &&
				strncmp(target->pk_names[i], v.val.string.val, v.val.string.len) == 0;
		if (!known)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("\"%.*s\" is not a primary key column of table %s",
							(int) v.val.string.len, v.val.string.val,
							target->display_name),
					 errdetail("Table %s has primary key (%s).",
							   target->display_name, expected),
					 errhint("Name exactly the primary key columns in the key object.")));
	}

	/* Every primary key column must be given; convert with the caller's settings. */
	for (int i = 0; i < target->npk; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(tupdesc, target->pk_attnums[i] - 1);
		JsonbValue *jv = getKeyJsonValueFromContainer(&pk->root,
													  target->pk_names[i],
													  strlen(target->pk_names[i]),
													  NULL);
		Oid			typinput;
		Oid			typioparam;
		ErrorContextCallback errcallback;
		char	   *text_value;

		if (jv == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("primary key column \"%s\" is missing from the key",
							target->pk_names[i]),
					 errdetail("Table %s has primary key (%s).",
							   target->display_name, expected),
					 errhint("Name every primary key column in the key object.")));
		text_value = json_scalar_text(jv, target->pk_names[i], target);
		if (strlen(text_value) > KEY_ECHO_LIMIT)
		{
			/* its type's error would echo it whole: say it shorter */
			ParseJob	job = {1, &attr, &text_value, true, &typed[i], 0};
			ErrorData  *edata = parse_job_try(&job);

			if (edata != NULL)
				ereport(ERROR,
						(errcode(edata->sqlerrcode),
						 errmsg("invalid value for primary key column \"%s\" of type %s: \"%.*s...\" (%zu characters)",
								target->pk_names[i], format_type_be(attr->atttypid),
								pg_mbcliplen(text_value, strlen(text_value), KEY_ECHO_LIMIT / 4),
								text_value, strlen(text_value)),
						 errdetail("The value is not valid input for type %s.",
								   format_type_be(attr->atttypid))));
			continue;
		}
		errcallback.callback = key_column_error_context;
		errcallback.arg = target->pk_names[i];
		errcallback.previous = error_context_stack;
		error_context_stack = &errcallback;
		getTypeInputInfo(attr->atttypid, &typinput, &typioparam);
		typed[i] = OidInputFunctionCall(typinput, text_value, typioparam, attr->atttypmod);
		error_context_stack = errcallback.previous;
	}

	/* ... and write them out canonically. */
	level = canonical_settings_begin();
	for (int i = 0; i < target->npk; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(tupdesc, target->pk_attnums[i] - 1);
		Oid			typoutput;
		bool		isvarlena;

		getTypeOutputInfo(attr->atttypid, &typoutput, &isvarlena);
		elems[i] = CStringGetTextDatum(OidOutputFunctionCall(typoutput,
															 normalize_key_value(typed[i], attr->atttypid)));
	}
	canonical_settings_end(level);

	return construct_array(elems, target->npk, TEXTOID, -1, false, TYPALIGN_INT);
}

/*
 * Keys longer than this, in UTF-8 bytes of all their values, are indexed in
 * the store by digest (migrations/3_safe_history.sql): a btree entry holds
 * at most about 2,700 bytes, and no key the source accepts may make the
 * store refuse a version.  agent/key.ts LONG_KEY_BYTES is the same.
 */
#define PGTW_LONG_KEY_BYTES 512

/*
 * The form `key` takes in the store's index (row_versions.pk): the key
 * itself, or for a long key ARRAY[NULL, sha256 hex] over each value's UTF-8
 * bytes preceded by their length and a colon.  No key has a NULL element,
 * so none takes the digest form itself.  agent/key.ts indexKey() and the
 * store's pgtimewarp_store.index_key() compute the same.
 */
static ArrayType *
index_key_of(ArrayType *key)
{
	Datum	   *elems;
	bool	   *elem_nulls;
	int			n;
	char	  **utf8;
	int		   *lens;
	size_t		total = 0;
	pgtw_sha256_ctx ctx;
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	char		hex[PG_SHA256_DIGEST_LENGTH * 2 + 1];
	Datum		form[2];
	bool		form_nulls[2] = {true, false};
	int			dims[1] = {2};
	int			lbs[1] = {1};

	deconstruct_array(key, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elem_nulls, &n);
	utf8 = palloc(sizeof(char *) * Max(n, 1));
	lens = palloc(sizeof(int) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		text	   *t = DatumGetTextPP(elems[i]);

		if (elem_nulls[i])
			elog(ERROR, "a pgtimewarp key has a NULL value");
		utf8[i] = pg_server_to_any(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), PG_UTF8);
		lens[i] = utf8[i] == VARDATA_ANY(t) ? VARSIZE_ANY_EXHDR(t) : strlen(utf8[i]);
		total += lens[i];
	}
	if (total <= PGTW_LONG_KEY_BYTES)
		return key;

	ctx = pgtw_sha256_begin();
	for (int i = 0; i < n; i++)
	{
		char		prefix[16];
		int			plen = snprintf(prefix, sizeof(prefix), "%d:", lens[i]);

		pgtw_sha256_update(ctx, (uint8 *) prefix, plen);
		pgtw_sha256_update(ctx, (uint8 *) utf8[i], lens[i]);
	}
	pgtw_sha256_end(ctx, digest);
	for (int i = 0; i < PG_SHA256_DIGEST_LENGTH; i++)
		snprintf(hex + 2 * i, 3, "%02x", digest[i]);

	form[0] = (Datum) 0;
	form[1] = CStringGetTextDatum(hex);
	return construct_md_array(form, form_nulls, 1, dims, lbs, TEXTOID, -1, false, TYPALIGN_INT);
}

/* ----------------------------------------------------------------
 * Tracking state and time resolution
 * ----------------------------------------------------------------
 */

/*
 * What the store says about `target`, or NULL when it was never tracked:
 * the live incarnation recorded from this table (by OID: the agent follows
 * renames), else one live under its name, recorded from another table
 * (the caller's require_same_table says so).  Dropped incarnations belong
 * to dropped tables.
 */
static Tracking *
fetch_tracking(StoreSession *ss, const char *node_id, TargetTable *target)
{
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, OIDOID};
	Datum		args[4];
	Tracking   *t;
	bool		isnull;
	Datum		d;

	args[0] = CStringGetTextDatum(node_id);
	args[1] = CStringGetTextDatum(target->schema_name);
	args[2] = CStringGetTextDatum(target->table_name);
	args[3] = ObjectIdGetDatum(target->relid);
	store_execute("SELECT r.pk_columns, r.tracked_from_lsn, r.tracked_from_ts,"
				  "       r.untracked_lsn, r.untracked_ts,"
				  "       c.confirmed_lsn, c.confirmed_ts, r.relation_id, r.relid,"
				  "       nullif(r.column_renames, '[]')"
				  "  FROM pgtimewarp.tracked_relations r"
				  "  LEFT JOIN pgtimewarp.wal_checkpoints c ON c.node_id = r.node_id"
				  " WHERE r.node_id = $1 AND r.dropped_lsn IS NULL"
				  "   AND (r.relid = $4 OR (r.schema_name = $2 AND r.table_name = $3))"
				  " ORDER BY r.relid IS NOT DISTINCT FROM $4 DESC, r.relation_id DESC",
				  4, argtypes, args, NULL, true, 1, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return NULL;

	t = MemoryContextAllocZero(ss->caller_cxt, sizeof(Tracking));
	t->node_id = MemoryContextStrdup(ss->caller_cxt, node_id);
	{
		/* detoasting (a short header) allocates: in caller_cxt, which outlives SPI */
		MemoryContext oldcxt = MemoryContextSwitchTo(ss->caller_cxt);

		t->pk_columns = DatumGetArrayTypeP(spi_value(0, 1, &isnull, ss->caller_cxt));
		MemoryContextSwitchTo(oldcxt);
	}
	t->relation_id = DatumGetInt32(spi_value(0, 8, &isnull, ss->caller_cxt));
	d = spi_value(0, 9, &isnull, ss->caller_cxt);
	t->relid = isnull ? InvalidOid : DatumGetObjectId(d);
	d = spi_value(0, 10, &isnull, ss->caller_cxt);
	if (!isnull)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(ss->caller_cxt);

		t->column_renames = DatumGetJsonbPCopy(d);
		MemoryContextSwitchTo(oldcxt);
	}
	t->from_lsn = DatumGetLSN(spi_value(0, 2, &isnull, ss->caller_cxt));
	t->from_ts = DatumGetTimestampTz(spi_value(0, 3, &isnull, ss->caller_cxt));
	d = spi_value(0, 4, &isnull, ss->caller_cxt);
	t->untracked = !isnull;
	if (t->untracked)
	{
		t->untracked_lsn = DatumGetLSN(d);
		t->untracked_ts = DatumGetTimestampTz(spi_value(0, 5, &isnull, ss->caller_cxt));
	}

	t->horizon_lsn = t->from_lsn;
	t->horizon_ts = t->from_ts;
	d = spi_value(0, 6, &isnull, ss->caller_cxt);
	if (!isnull && DatumGetLSN(d) > t->horizon_lsn)
	{
		t->horizon_lsn = DatumGetLSN(d);
		t->horizon_ts = Max(t->horizon_ts,
							DatumGetTimestampTz(spi_value(0, 7, &isnull, ss->caller_cxt)));
	}
	pgtw_fresh_horizon(&t->horizon_lsn, &t->horizon_ts);
	return t;
}

static void check_history_key(Tracking *t, TargetTable *target);

/*
 * A tracked table's history belongs to that table, not to its name: a
 * table created later under the name (after a DROP, or by pg_restore) gets
 * a new OID, and reads, extends or deletes none of it until a privileged
 * role says it is the same table (pgtimewarp_attach).
 */
static void
require_same_table(Tracking *t, TargetTable *target)
{
	if (t->relid == target->relid)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the history stored under the name %s belongs to another table",
					target->display_name),
			 errdetail("It was recorded from the table with OID %u, tracked since %s; table %s has OID %u: it was created later under the same name, or restored from a dump.",
					   t->relid, timestamptz_to_cstring(t->from_ts),
					   target->display_name, target->relid),
			 errhint("If %s is that table restored from a dump, a role with the privileges of the pgtimewarp extension's owner can attach the history to it: SELECT pgtimewarp_attach(%s);",
					 target->display_name, target->display_literal)));
}

/* The gaps the store has recorded in the history of t (history_gaps). */
static void
load_gaps(StoreSession *ss, Tracking *t)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1];

	args[0] = Int32GetDatum(t->relation_id);
	store_execute("SELECT from_lsn, from_ts, to_lsn, to_ts, reason"
				  "  FROM pgtimewarp.history_gaps WHERE relation_id = $1"
				  " ORDER BY from_lsn",
				  1, argtypes, args, NULL, true, 0, SPI_OK_SELECT);
	t->ngaps = (int) SPI_processed;
	t->gaps = t->ngaps == 0 ? NULL :
		MemoryContextAllocZero(ss->caller_cxt, sizeof(HistoryGap) * t->ngaps);
	for (int i = 0; i < t->ngaps; i++)
	{
		HistoryGap *g = &t->gaps[i];
		bool		isnull;
		Datum		d;

		g->from_lsn = DatumGetLSN(spi_value(i, 1, &isnull, ss->caller_cxt));
		g->from_ts = DatumGetTimestampTz(spi_value(i, 2, &isnull, ss->caller_cxt));
		d = spi_value(i, 3, &isnull, ss->caller_cxt);
		g->to_lsn = isnull ? InvalidXLogRecPtr : DatumGetLSN(d);
		d = spi_value(i, 4, &isnull, ss->caller_cxt);
		g->to_ts = isnull ? 0 : DatumGetTimestampTz(d);
		g->reason = spi_cstring(i, 5, ss->caller_cxt);
	}
}

/*
 * Tracking state of a table a history query is about.  Errors when the table
 * is not tracked, when the history under its name is another table's, or
 * when its primary key is no longer the one the store's keys were made from.
 */
static Tracking *
require_tracking(StoreSession *ss, TargetTable *target)
{
	char	   *node_id = configured_node_id(ss);
	Tracking   *t = fetch_tracking(ss, node_id, target);

	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table %s is not tracked by pgtimewarp", target->display_name),
				 errdetail("The store has no history of it for node \"%s\".", node_id),
				 errhint("Start recording its history with SELECT pgtimewarp_track(%s).",
						 target->display_literal)));
	require_same_table(t, target);
	check_history_key(t, target);
	load_gaps(ss, t);
	return t;
}

/*
 * Errors when history over [from_lsn, to_lsn] crosses a gap the store has
 * recorded: the answer would miss changes, and nothing may hide that.  A
 * version visible at from_lsn began before it, so a gap that began before
 * from_lsn and is still open at it counts too.
 */
static void
refuse_gaps(TargetTable *target, Tracking *t, XLogRecPtr from_lsn, XLogRecPtr to_lsn)
{
	for (int i = 0; i < t->ngaps; i++)
	{
		HistoryGap *g = &t->gaps[i];
		bool		open = g->to_lsn == InvalidXLogRecPtr;

		if (g->from_lsn > to_lsn || (!open && g->to_lsn <= from_lsn))
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("history of table %s has a gap from %s (LSN %s)%s%s",
						target->display_name, timestamptz_to_cstring(g->from_ts),
						lsn_to_cstring(g->from_lsn),
						open ? "" : " to ", open ? "" : timestamptz_to_cstring(g->to_ts)),
				 errdetail("The store lacks changes of the table %s: %s.",
						   open ? "from then on" : "in that time", g->reason),
				 open ? errhint("Ask for a time before %s.", timestamptz_to_cstring(g->from_ts)) :
				 errhint("Ask for a time before %s or from %s on.",
						 timestamptz_to_cstring(g->from_ts), timestamptz_to_cstring(g->to_ts))));
	}
}

/* Errors when the table's primary key is not the one its history is keyed by. */
static void
check_history_key(Tracking *t, TargetTable *target)
{
	Datum	   *names;
	int			nnames;
	bool		same;

	deconstruct_array(t->pk_columns, TEXTOID, -1, false, TYPALIGN_INT,
					  &names, NULL, &nnames);
	same = nnames == target->npk;
	for (int i = 0; same && i < nnames; i++)
		same = strcmp(TextDatumGetCString(names[i]), target->pk_names[i]) == 0;
	if (!same)
	{
		char	  **old = palloc(sizeof(char *) * nnames);

		for (int i = 0; i < nnames; i++)
			old[i] = TextDatumGetCString(names[i]);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("primary key of table %s changed since tracking began",
						target->display_name),
				 errdetail("History is keyed by (%s); the table's primary key is now (%s).",
						   join_names(old, nnames),
						   join_names(target->pk_names, target->npk)),
				 errhint("Restore the original primary key to read this history.")));
	}
}

static void
error_before_tracking(TargetTable *target, Tracking *t, const char *asked)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg("no history of table %s before %s",
					target->display_name, timestamptz_to_cstring(t->from_ts)),
			 errdetail("Tracking of table %s began at %s (LSN %s); %s is earlier.",
					   target->display_name, timestamptz_to_cstring(t->from_ts),
					   lsn_to_cstring(t->from_lsn), asked),
			 errhint("Ask for a time at or after %s.", timestamptz_to_cstring(t->from_ts))));
}

static void
warn_beyond_horizon(TargetTable *target, Tracking *t, const char *asked)
{
	ereport(WARNING,
			(errcode(ERRCODE_WARNING),
			 errmsg("history of table %s is complete only up to %s (LSN %s)",
					target->display_name, timestamptz_to_cstring(t->horizon_ts),
					lsn_to_cstring(t->horizon_lsn)),
			 errdetail("%s is later than the last change the pgtimewarp agent has stored; later changes may be missing from the answer.",
					   asked),
			 errhint("Check that the agent is running and keeping up: \"pgtimewarp status\", \"pgtimewarp doctor\".")));
}

/*
 * Clamp `lsn` to the history that exists, warning when the answer may miss
 * changes: after tracking stopped, or beyond what the agent has stored.
 */
static XLogRecPtr
clamp_to_known_history(TargetTable *target, Tracking *t, XLogRecPtr lsn,
					   const char *asked)
{
	if (t->untracked && lsn > t->untracked_lsn)
	{
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("tracking of table %s stopped at %s (LSN %s)",
						target->display_name, timestamptz_to_cstring(t->untracked_ts),
						lsn_to_cstring(t->untracked_lsn)),
				 errdetail("The answer for %s is the row as it was when tracking stopped.",
						   asked)));
		lsn = t->untracked_lsn;
	}
	if (lsn > t->horizon_lsn)
		warn_beyond_horizon(target, t, asked);
	return lsn;
}

static XLogRecPtr
check_lsn(TargetTable *target, Tracking *t, XLogRecPtr lsn)
{
	char	   *asked = psprintf("LSN %s", lsn_to_cstring(lsn));

	if (lsn < t->from_lsn)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("no history of table %s before LSN %s",
						target->display_name, lsn_to_cstring(t->from_lsn)),
				 errdetail("Tracking of table %s began at %s (LSN %s); %s is earlier.",
						   target->display_name, timestamptz_to_cstring(t->from_ts),
						   lsn_to_cstring(t->from_lsn), asked),
				 errhint("Ask for an LSN at or after %s.", lsn_to_cstring(t->from_lsn))));
	return clamp_to_known_history(target, t, lsn, asked);
}

/*
 * The LSN a timestamp stands for: that of the last commit (or heartbeat), in
 * LSN order, whose commit time is <= ts, so that every commit made by ts is
 * visible.  The store's resolve_ts makes that one index probe even when
 * commit times are out of LSN order (migrations/1_create_store.sql).
 */
static XLogRecPtr
resolve_time(StoreSession *ss, TargetTable *target, Tracking *t, TimestampTz ts)
{
	char	   *asked = timestamptz_to_cstring(ts);
	Oid			argtypes[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum		args[2];
	XLogRecPtr	lsn = t->from_lsn;
	bool		isnull;

	if (ts < t->from_ts)
		error_before_tracking(target, t, asked);
	if (t->untracked && ts >= t->untracked_ts)
		return clamp_to_known_history(target, t, PG_UINT64_MAX, asked);
	if (ts > t->horizon_ts)
	{
		warn_beyond_horizon(target, t, asked);
		return t->horizon_lsn;
	}

	args[0] = CStringGetTextDatum(t->node_id);
	args[1] = TimestampTzGetDatum(ts);
	store_execute("SELECT lsn FROM pgtimewarp.lsn_time_map"
				  " WHERE node_id = $1 AND resolve_ts <= $2"
				  " ORDER BY resolve_ts DESC, lsn DESC LIMIT 1",
				  2, argtypes, args, NULL, true, 1, SPI_OK_SELECT);
	if (SPI_processed > 0)
	{
		Datum		d = spi_value(0, 1, &isnull, ss->caller_cxt);

		/* a skewed clock may name a commit before tracking; history starts at from_lsn */
		lsn = Max(lsn, DatumGetLSN(d));
	}
	return clamp_to_known_history(target, t, lsn, asked);
}

/* ----------------------------------------------------------------
 * Versions
 * ----------------------------------------------------------------
 */

/*
 * The store keeps versions append-only (migrations/2_compact_versions.sql):
 * a version ends where the key's next version begins.
 */
#define VERSION_COLUMNS "valid_from_lsn, valid_from_ts, op, row_data"
#define VERSION_KEY_MATCHES \
	"relation_id = $1 AND pk = $2 AND pk_full IS NOT DISTINCT FROM $3"

/* The name of a stored op code. */
static const char *
op_name(char code)
{
	switch (code)
	{
		case 'b':
			return "baseline";
		case 'i':
			return "insert";
		case 'u':
			return "update";
		case 'd':
			return "delete";
		case 't':
			return "truncate";
	}
	elog(ERROR, "unknown op code \"%c\" in the pgtimewarp store", code);
	return NULL;				/* keep compiler quiet */
}

static void
version_from_spi(int row, RowVersion *v, MemoryContext cxt)
{
	bool		isnull;
	Datum		d;

	v->from_lsn = DatumGetLSN(spi_value(row, 1, &isnull, cxt));
	v->from_ts = DatumGetTimestampTz(spi_value(row, 2, &isnull, cxt));
	v->op = op_name(DatumGetChar(spi_value(row, 3, &isnull, cxt)));
	d = spi_value(row, 4, &isnull, cxt);
	if (isnull)
		v->row_data = NULL;
	else
	{
		/*
		 * A stored row under 127 bytes comes with a short header, and
		 * DatumGetJsonbP copies it to a regular one: in cxt, for the copy
		 * to outlive SPI_finish.
		 */
		MemoryContext oldcxt = MemoryContextSwitchTo(cxt);

		v->row_data = DatumGetJsonbP(d);
		MemoryContextSwitchTo(oldcxt);
	}
	/* the caller knows the end, if it needs it, from the next version */
	v->to_lsn = InvalidXLogRecPtr;
	v->to_ts = 0;
}

static void
version_query_args(Tracking *t, TargetTable *target, ArrayType *key,
				   Oid *argtypes, Datum *args, char *nulls)
{
	ArrayType  *index = index_key_of(key);

	argtypes[0] = INT4OID;
	argtypes[1] = TEXTARRAYOID;
	argtypes[2] = TEXTARRAYOID;
	args[0] = Int32GetDatum(t->relation_id);
	args[1] = PointerGetDatum(index);
	/* a long key is indexed by its digest and compared whole (pk_full) */
	args[2] = PointerGetDatum(key);
	nulls[2] = index == key ? 'n' : ' ';
}

/*
 * One probe of the store's primary key for `key`: the latest version that
 * began at or before `lsn` (the one visible there), or with `after` the
 * first that began after it (where the visible one ends).  False when there
 * is none.
 */
static bool
probe_version(StoreSession *ss, Tracking *t, TargetTable *target,
			  ArrayType *key, XLogRecPtr lsn, bool after, RowVersion *v)
{
	Oid			argtypes[4];
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};

	version_query_args(t, target, key, argtypes, args, nulls);
	argtypes[3] = LSNOID;
	args[3] = LSNGetDatum(lsn);
	store_execute(after
				  ? "SELECT " VERSION_COLUMNS " FROM pgtimewarp.row_version_probe"
				  " WHERE " VERSION_KEY_MATCHES " AND valid_from_lsn > $4"
				  " ORDER BY valid_from_lsn LIMIT 1"
				  : "SELECT " VERSION_COLUMNS " FROM pgtimewarp.row_version_probe"
				  " WHERE " VERSION_KEY_MATCHES " AND valid_from_lsn <= $4"
				  " ORDER BY valid_from_lsn DESC LIMIT 1",
				  4, argtypes, args, nulls, true, 1, SPI_OK_SELECT);
	if (SPI_processed == 0)
		return false;
	version_from_spi(0, v, ss->caller_cxt);
	return true;
}

/* The version of `key` visible at `lsn`. */
static bool
fetch_version_at(StoreSession *ss, Tracking *t, TargetTable *target,
				 ArrayType *key, XLogRecPtr lsn, RowVersion *v)
{
	return probe_version(ss, t, target, key, lsn, false, v);
}


/* ----------------------------------------------------------------
 * Stored rows back to typed values
 * ----------------------------------------------------------------
 */

static int
find_column(TupleDesc tupdesc, const char *name, int len)
{
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(tupdesc, i);

		if (!attr->attisdropped &&
			strlen(NameStr(attr->attname)) == (size_t) len &&
			strncmp(NameStr(attr->attname), name, len) == 0)
			return i;
	}
	return -1;
}

/*
 * Stored values are canonical text of the type each column had when the
 * version was written.  A column's type may have changed since (ALTER
 * COLUMN ... TYPE), and old text need not be valid input for the new type
 * ("1.50" for integer).  Such a value is still history: the jsonb functions
 * show it as the text it was stored as, and only asof_row, which must
 * return the table's row type, fails, naming the column and the version.
 */

static void
parse_job_run(ParseJob *job)
{
	for (; job->done < job->n; job->done++)
	{
		Form_pg_attribute attr = job->attrs[job->done];
		Oid			typinput;
		Oid			typioparam;

		getTypeInputInfo(attr->atttypid, &typinput, &typioparam);
		job->values[job->done] =
			OidInputFunctionCall(typinput, job->texts[job->done], typioparam,
								 job->keep_typmod ? attr->atttypmod : -1);
	}
}

/*
 * Run a ParseJob in a subtransaction.  Returns NULL when every value parsed,
 * else the error (a data exception; anything else, a cancel say, is thrown).
 * One subtransaction per row, not per value: a row that fails is parsed
 * again value by value by the caller.
 */
static ErrorData *
parse_job_try(ParseJob *job)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		parse_job_run(job);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	CurrentResourceOwner = oldowner;
	if (edata != NULL && ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_DATA_EXCEPTION &&
		edata->sqlerrcode != ERRCODE_INVALID_TEXT_REPRESENTATION &&
		edata->sqlerrcode != ERRCODE_INVALID_BINARY_REPRESENTATION)
		ReThrowError(edata);
	return edata;
}

/*
 * The columns of `tupdesc` from a stored row (column -> canonical text),
 * for asof_row.  Columns the version did not have (added later) are NULL.
 * A value the column's current type cannot take is an error naming the
 * column and the version's time.
 */
static void
row_data_to_datums(Jsonb *row_data, TimestampTz version_ts, TupleDesc tupdesc,
				   Datum *values, bool *nulls)
{
	int			level = canonical_settings_begin();
	ParseJob	job;
	int		   *column = palloc(sizeof(int) * Max(tupdesc->natts, 1));
	ErrorData  *edata;

	job.n = 0;
	job.attrs = palloc(sizeof(Form_pg_attribute) * Max(tupdesc->natts, 1));
	job.texts = palloc(sizeof(char *) * Max(tupdesc->natts, 1));
	job.values = palloc(sizeof(Datum) * Max(tupdesc->natts, 1));
	job.keep_typmod = true;
	job.done = 0;
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(tupdesc, i);
		JsonbValue *jv;

		nulls[i] = true;
		values[i] = (Datum) 0;
		if (attr->attisdropped)
			continue;
		jv = getKeyJsonValueFromContainer(&row_data->root, NameStr(attr->attname),
										  strlen(NameStr(attr->attname)), NULL);
		if (jv == NULL || jv->type != jbvString)
			continue;
		column[job.n] = i;
		job.attrs[job.n] = attr;
		job.texts[job.n] = pnstrdup(jv->val.string.val, jv->val.string.len);
		job.n++;
	}
	edata = parse_job_try(&job);
	canonical_settings_end(level);
	if (edata != NULL)
	{
		Form_pg_attribute attr = job.attrs[job.done];

		ereport(ERROR,
				(errcode(edata->sqlerrcode),
				 errmsg("column \"%s\" of the row version from %s cannot be read as type %s",
						NameStr(attr->attname), timestamptz_to_cstring(version_ts),
						format_type_with_typemod(attr->atttypid, attr->atttypmod)),
				 errdetail("The column's type changed after the version was written: %s.",
						   edata->message),
				 errhint("pgtimewarp_asof_pk returns the row as it was stored, whatever the column's type now.")));
	}
	for (int j = 0; j < job.n; j++)
	{
		values[column[j]] = job.values[j];
		nulls[column[j]] = false;
	}
}

/* Append a Jsonb document as the value of the current key. */
static void
push_jsonb_value(JsonbParseState **state, Jsonb *doc)
{
	JsonbValue	v;

	if (JB_ROOT_IS_SCALAR(doc))
		JsonbExtractScalar(&doc->root, &v);
	else
	{
		v.type = jbvBinary;
		v.val.binary.data = &doc->root;
		v.val.binary.len = VARSIZE(doc) - VARHDRSZ;
	}
	(void) pushJsonbValue(state, WJB_VALUE, &v);
}

/* to_jsonb(value) for a value of type typid, as SQL would compute it. */
static Jsonb *
value_to_jsonb(Datum value, Oid typid, int32 typmod)
{
	FmgrInfo	flinfo;

	/* to_jsonb looks at its call expression for the argument type */
	fmgr_info(F_TO_JSONB, &flinfo);
	flinfo.fn_expr = (Node *) makeFuncExpr(F_TO_JSONB, JSONBOID,
										   list_make1(makeNullConst(typid, typmod, InvalidOid)),
										   InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
	return DatumGetJsonbP(FunctionCall1(&flinfo, value));
}

/*
 * A stored row as the caller sees it: each value typed by the table's current
 * column of that name, exactly as to_jsonb(row) would show it (numbers as
 * numbers, json as json, timestamps in the session's time zone).  Columns the
 * table no longer has keep their stored text, and are shown only when
 * show_former_columns.  So does a value the column's current type cannot
 * read (its type changed since); values are read without the column's
 * typmod, which would round or refuse what was stored under another.
 */
static Jsonb *
row_data_to_json(Jsonb *row_data, TupleDesc tupdesc, bool show_former_columns)
{
	int			n = JsonContainerSize(&row_data->root);
	JsonbValue *keys = palloc(sizeof(JsonbValue) * n);
	JsonbValue *raw = palloc(sizeof(JsonbValue) * n);
	int		   *column = palloc(sizeof(int) * n);
	Datum	   *typed = palloc(sizeof(Datum) * n);
	int		   *job_of = palloc(sizeof(int) * n);
	bool	   *unreadable = palloc0(sizeof(bool) * Max(n, 1));
	ParseJob	job;
	JsonbParseState *state = NULL;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			count = 0;
	int			level;

	it = JsonbIteratorInit(&row_data->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			keys[count] = v;
		else if (tok == WJB_VALUE)
			raw[count++] = v;
	}

	/* parse under the canonical settings the text was written with ... */
	job.n = 0;
	job.attrs = palloc(sizeof(Form_pg_attribute) * Max(n, 1));
	job.texts = palloc(sizeof(char *) * Max(n, 1));
	job.values = palloc(sizeof(Datum) * Max(n, 1));
	job.keep_typmod = false;
	job.done = 0;
	for (int i = 0; i < count; i++)
	{
		column[i] = find_column(tupdesc, keys[i].val.string.val, keys[i].val.string.len);
		job_of[i] = -1;
		if (column[i] >= 0 && raw[i].type == jbvString)
		{
			job_of[i] = job.n;
			job.attrs[job.n] = TupleDescAttr(tupdesc, column[i]);
			job.texts[job.n] = pnstrdup(raw[i].val.string.val, raw[i].val.string.len);
			job.n++;
		}
	}
	level = canonical_settings_begin();
	if (parse_job_try(&job) != NULL)
	{
		/* some value is not valid input for its column's type now: which? */
		for (int j = 0; j < job.n; j++)
		{
			ParseJob	one = job;

			one.n = 1;
			one.attrs = &job.attrs[j];
			one.texts = &job.texts[j];
			one.values = &job.values[j];
			one.done = 0;
			if (parse_job_try(&one) != NULL)
				unreadable[j] = true;
		}
	}
	canonical_settings_end(level);
	for (int i = 0; i < count; i++)
		if (job_of[i] >= 0)
			typed[i] = job.values[job_of[i]];

	/* ... and render with the caller's */
	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < count; i++)
	{
		if (column[i] < 0 && !show_former_columns)
			continue;
		(void) pushJsonbValue(&state, WJB_KEY, &keys[i]);
		if (job_of[i] >= 0 && !unreadable[job_of[i]])
		{
			Form_pg_attribute attr = TupleDescAttr(tupdesc, column[i]);

			push_jsonb_value(&state, value_to_jsonb(typed[i], attr->atttypid,
													attr->atttypmod));
		}
		else
			(void) pushJsonbValue(&state, WJB_VALUE, &raw[i]);
	}
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

/* Whether column `name` differs between two stored rows (NULL: no row). */
static bool
column_differs(Jsonb *prev, Jsonb *cur, const char *name, int len)
{
	JsonbValue *a = prev ? getKeyJsonValueFromContainer(&prev->root, name, len, NULL) : NULL;
	JsonbValue *b = cur ? getKeyJsonValueFromContainer(&cur->root, name, len, NULL) : NULL;

	if (a == NULL || b == NULL)
		return (a == NULL) != (b == NULL);
	if (a->type != b->type)
		return true;
	if (a->type == jbvString)
		return a->val.string.len != b->val.string.len ||
			memcmp(a->val.string.val, b->val.string.val, a->val.string.len) != 0;
	return false;				/* both JSON null */
}

static void
add_if_changed(ArrayBuildState **acc, Jsonb *prev, Jsonb *cur,
			   const char *name, int len)
{
	if (column_differs(prev, cur, name, len))
		*acc = accumArrayResult(*acc, PointerGetDatum(cstring_to_text_with_len(name, len)),
								false, TEXTOID, CurrentMemoryContext);
}

/*
 * Columns whose value differs from the previous version, in the table's
 * column order, then columns the table no longer has (if the caller may see
 * them, as in row_data_to_json).  All columns of the
 * row after an insert, a baseline, or a re-insert after a delete.
 */
static Datum
changed_columns(TupleDesc tupdesc, Jsonb *prev, Jsonb *cur, bool show_former_columns)
{
	ArrayBuildState *acc = initArrayResult(TEXTOID, CurrentMemoryContext, false);
	Jsonb	   *sides[2] = {cur, prev};

	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(tupdesc, i);

		if (!attr->attisdropped)
			add_if_changed(&acc, prev, cur, NameStr(attr->attname),
						   strlen(NameStr(attr->attname)));
	}
	for (int s = 0; s < 2 && show_former_columns; s++)
	{
		JsonbIterator *it;
		JsonbValue	v;
		JsonbIteratorToken tok;

		if (sides[s] == NULL)
			continue;
		it = JsonbIteratorInit(&sides[s]->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (tok != WJB_KEY ||
				find_column(tupdesc, v.val.string.val, v.val.string.len) >= 0)
				continue;
			/* a column only prev has is reported once, from the prev side */
			if (s == 1 && cur != NULL &&
				getKeyJsonValueFromContainer(&cur->root, v.val.string.val,
											 v.val.string.len, NULL) != NULL)
				continue;
			add_if_changed(&acc, prev, cur, v.val.string.val, v.val.string.len);
		}
	}
	return makeArrayResult(acc, CurrentMemoryContext);
}

/*
 * A stored row with its columns under the names they have now: a column
 * renamed after the version was written (tracked_relations.column_renames,
 * which the agent records from the extension's DDL log) is read under its
 * new name, so that a version from before ALTER TABLE ... RENAME COLUMN a
 * TO b shows b.
 */
static Jsonb *
rename_columns(Jsonb *row_data, Tracking *t, XLogRecPtr version_lsn)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			n;
	char	  **olds;
	char	  **news;
	int			napply = 0;
	JsonbParseState *state = NULL;
	JsonbValue *result = NULL;
	char	   *pending_key = NULL;

	if (row_data == NULL || t->column_renames == NULL ||
		!JB_ROOT_IS_ARRAY(t->column_renames))
		return row_data;
	n = JB_ROOT_COUNT(t->column_renames);
	olds = palloc(sizeof(char *) * Max(n, 1));
	news = palloc(sizeof(char *) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(&t->column_renames->root, i);
		JsonbValue *lsn;
		JsonbValue *old;
		JsonbValue *new;

		if (e == NULL || e->type != jbvBinary)
			continue;
		lsn = getKeyJsonValueFromContainer(e->val.binary.data, "lsn", 3, NULL);
		old = getKeyJsonValueFromContainer(e->val.binary.data, "old", 3, NULL);
		new = getKeyJsonValueFromContainer(e->val.binary.data, "new", 3, NULL);
		if (lsn == NULL || old == NULL || new == NULL || lsn->type != jbvString ||
			old->type != jbvString || new->type != jbvString)
			elog(ERROR, "malformed column rename in the pgtimewarp store");
		/*
		 * Renamed before the version: its row has the new name.  A version
		 * of the renaming transaction itself may have either (a row last
		 * changed before the rename in it has the old one): renamed too.
		 */
		if (DatumGetLSN(DirectFunctionCall1(pg_lsn_in,
											CStringGetDatum(pnstrdup(lsn->val.string.val,
																	 lsn->val.string.len)))) < version_lsn)
			continue;
		olds[napply] = pnstrdup(old->val.string.val, old->val.string.len);
		news[napply] = pnstrdup(new->val.string.val, new->val.string.len);
		napply++;
	}
	if (napply == 0)
		return row_data;

	it = JsonbIteratorInit(&row_data->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			pending_key = pnstrdup(v.val.string.val, v.val.string.len);
			/* in LSN order: b -> c, then a -> b */
			for (int i = 0; i < napply; i++)
				if (strcmp(pending_key, olds[i]) == 0)
					pending_key = news[i];
			v.val.string.val = pending_key;
			v.val.string.len = strlen(pending_key);
		}
		result = pushJsonbValue(&state, tok, tok < WJB_BEGIN_ARRAY ? &v : NULL);
	}
	return JsonbValueToJsonb(result);
}

/* ----------------------------------------------------------------
 * As-of lookups
 * ----------------------------------------------------------------
 */

/*
 * What one call site of an as-of function learned from the store, kept in
 * fn_extra for the rest of the statement, so that a query asking for many
 * keys costs one store probe per key, not three.  Reusing it changes no
 * answer: postgres_fdw reads the store in one REPEATABLE READ remote
 * transaction for the whole local transaction, so the store says the same
 * thing all statement long, unless this session writes to it
 * (store_generation).  A warning about the time asked for is given once per
 * statement, not once per row.
 */
typedef struct LookupCache
{
	Oid			relid;			/* whose tracking state this is */
	uint64		generation;		/* store_generation when it was read */
	Tracking   *tracking;		/* in fn_mcxt */
	bool		have_at;
	bool		by_lsn;
	int64		at;				/* the time or LSN asked for last ... */
	XLogRecPtr	lsn;			/* ... and the history position it stands for */
} LookupCache;

static void
free_tracking(Tracking *t)
{
	for (int i = 0; i < t->ngaps; i++)
		pfree(t->gaps[i].reason);
	if (t->gaps)
		pfree(t->gaps);
	if (t->column_renames)
		pfree(t->column_renames);
	pfree(t->node_id);
	pfree(t->pk_columns);
	pfree(t);
}

static Tracking *
copy_tracking(Tracking *t, MemoryContext cxt)
{
	Tracking   *copy = MemoryContextAlloc(cxt, sizeof(Tracking));

	*copy = *t;
	copy->node_id = MemoryContextStrdup(cxt, t->node_id);
	copy->pk_columns = MemoryContextAlloc(cxt, VARSIZE(t->pk_columns));
	memcpy(copy->pk_columns, t->pk_columns, VARSIZE(t->pk_columns));
	if (t->column_renames)
	{
		copy->column_renames = MemoryContextAlloc(cxt, VARSIZE(t->column_renames));
		memcpy(copy->column_renames, t->column_renames, VARSIZE(t->column_renames));
	}
	if (t->ngaps > 0)
	{
		copy->gaps = MemoryContextAlloc(cxt, sizeof(HistoryGap) * t->ngaps);
		for (int i = 0; i < t->ngaps; i++)
		{
			copy->gaps[i] = t->gaps[i];
			copy->gaps[i].reason = MemoryContextStrdup(cxt, t->gaps[i].reason);
		}
	}
	return copy;
}

/*
 * The stored version of `pk` visible at `at` (a timestamptz, or an LSN when
 * by_lsn) in *v.  Returns false when no row with that key existed then
 * (never stored, or a tombstone).  `flinfo` (may be NULL) keeps the
 * LookupCache.
 */
static bool
lookup_row(FmgrInfo *flinfo, Relation rel, TargetTable *target,
		   Jsonb *pk, Datum at, bool by_lsn, RowVersion *v)
{
	StoreSession ss;
	ArrayType  *key = encode_pk(rel, target, pk);
	LookupCache *cache = flinfo ? (LookupCache *) flinfo->fn_extra : NULL;
	int64		at_value = by_lsn ? (int64) DatumGetLSN(at) : DatumGetTimestampTz(at);
	Tracking   *t;
	XLogRecPtr	lsn;
	bool		found;

	if (flinfo != NULL && cache == NULL)
	{
		cache = MemoryContextAllocZero(flinfo->fn_mcxt, sizeof(LookupCache));
		flinfo->fn_extra = cache;
	}
	if (cache != NULL &&
		(cache->relid != target->relid || cache->generation != store_generation))
	{
		/*
		 * another table (the argument is a column), or written since: start
		 * over, freeing the old state (a statement may switch every row)
		 */
		if (cache->tracking != NULL)
			free_tracking(cache->tracking);
		cache->relid = InvalidOid;
		cache->tracking = NULL;
		cache->have_at = false;
	}

	if (!by_lsn)
		pgtw_await_fresh_history(DatumGetTimestampTz(at));
	store_session_begin(&ss);
	if (cache != NULL && cache->tracking != NULL)
	{
		t = cache->tracking;
		/* the table may have changed since */
		require_same_table(t, target);
		check_history_key(t, target);
	}
	else
	{
		t = require_tracking(&ss, target);
		if (cache != NULL)
		{
			cache->tracking = copy_tracking(t, flinfo->fn_mcxt);
			cache->relid = target->relid;
			cache->generation = store_generation;
		}
	}

	if (cache != NULL && cache->have_at && cache->by_lsn == by_lsn && cache->at == at_value)
		lsn = cache->lsn;
	else
	{
		if (by_lsn)
			lsn = check_lsn(target, t, DatumGetLSN(at));
		else
			lsn = resolve_time(&ss, target, t, DatumGetTimestampTz(at));
		if (cache != NULL)
		{
			cache->have_at = true;
			cache->by_lsn = by_lsn;
			cache->at = at_value;
			cache->lsn = lsn;
		}
	}
	refuse_gaps(target, t, lsn, lsn);
	/* the latest version at or before lsn is the one visible there */
	found = fetch_version_at(&ss, t, target, key, lsn, v);
	store_session_end(&ss);
	if (found)
		v->row_data = rename_columns(v->row_data, t, v->from_lsn);
	return found && v->row_data != NULL;
}

static Datum
asof_pk_common(FunctionCallInfo fcinfo, bool by_lsn)
{
	TargetTable target;
	Relation	rel;
	RowVersion	v;
	Jsonb	   *result = NULL;

	require_argument(fcinfo, 0, "rel");
	require_argument(fcinfo, 1, "pk");
	require_argument(fcinfo, 2, "at");

	rel = open_for_history(PG_GETARG_OID(0), &target);
	if (lookup_row(fcinfo->flinfo, rel, &target, PG_GETARG_JSONB_P(1), PG_GETARG_DATUM(2), by_lsn, &v))
		result = row_data_to_json(v.row_data, RelationGetDescr(rel), target.show_former_columns);
	table_close(rel, AccessShareLock);

	if (result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(result);
}

Datum
pgtimewarp_asof_pk(PG_FUNCTION_ARGS)
{
	return asof_pk_common(fcinfo, false);
}

Datum
pgtimewarp_asof_pk_lsn(PG_FUNCTION_ARGS)
{
	return asof_pk_common(fcinfo, true);
}

Datum
pgtimewarp_asof_row(PG_FUNCTION_ARGS)
{
	Oid			rowtype = get_fn_expr_argtype(fcinfo->flinfo, 0);
	Oid			relid = OidIsValid(rowtype) ? typeidTypeRelid(rowtype) : InvalidOid;
	TargetTable target;
	Relation	rel;
	RowVersion	v;
	TupleDesc	tupdesc;
	Datum	   *values;
	bool	   *nulls;
	HeapTuple	tuple;

	/* a composite type or a view's row type names a relation too, but no table */
	if (OidIsValid(relid) && get_rel_relkind(relid) != RELKIND_RELATION)
		relid = InvalidOid;
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("first argument of pgtimewarp_asof_row must be a table's row type, not %s",
						OidIsValid(rowtype) ? format_type_be(rowtype) : "unknown"),
				 errhint("Pass a typed NULL: SELECT * FROM pgtimewarp_asof_row(NULL::my_table, '{\"id\": 1}', now()).")));
	require_argument(fcinfo, 1, "pk");
	require_argument(fcinfo, 2, "at");

	rel = open_for_history(relid, &target);
	if (!lookup_row(fcinfo->flinfo, rel, &target, PG_GETARG_JSONB_P(1), PG_GETARG_DATUM(2), false, &v))
	{
		table_close(rel, AccessShareLock);
		PG_RETURN_NULL();
	}

	tupdesc = lookup_rowtype_tupdesc_copy(rowtype, -1);
	values = palloc(sizeof(Datum) * tupdesc->natts);
	nulls = palloc(sizeof(bool) * tupdesc->natts);
	row_data_to_datums(v.row_data, v.from_ts, tupdesc, values, nulls);
	tuple = heap_form_tuple(tupdesc, values, nulls);
	table_close(rel, AccessShareLock);
	PG_RETURN_DATUM(HeapTupleGetDatum(tuple));
}

/* ----------------------------------------------------------------
 * Timelines
 * ----------------------------------------------------------------
 */

Datum
pgtimewarp_diff_pk(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TargetTable target;
	Relation	rel;
	StoreSession ss;
	ArrayType  *key;
	Tracking   *t;
	TimestampTz from_ts;
	TimestampTz to_ts;
	XLogRecPtr	from_lsn;
	XLogRecPtr	to_lsn;
	Oid			argtypes[5];
	Datum		args[5];
	char		knulls[5] = {' ', ' ', ' ', ' ', ' '};
	RowVersion *versions;
	RowVersion	first;
	RowVersion	previous;
	RowVersion	after;
	bool		have_first;
	bool		have_previous;
	bool		have_after;
	int			nversions;
	TupleDesc	tupdesc;

	require_argument(fcinfo, 0, "rel");
	require_argument(fcinfo, 1, "pk");
	require_argument(fcinfo, 2, "from_ts");
	require_argument(fcinfo, 3, "to_ts");
	from_ts = PG_GETARG_TIMESTAMPTZ(2);
	to_ts = PG_GETARG_TIMESTAMPTZ(3);
	if (from_ts > to_ts)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_ts must not be later than to_ts"),
				 errdetail("from_ts is %s, to_ts is %s.",
						   timestamptz_to_cstring(from_ts), timestamptz_to_cstring(to_ts)),
				 errhint("Swap the two arguments.")));

	pgtw_init_materialized_srf(fcinfo);
	rel = open_for_history(PG_GETARG_OID(0), &target);
	tupdesc = RelationGetDescr(rel);
	key = encode_pk(rel, &target, PG_GETARG_JSONB_P(1));

	pgtw_await_fresh_history(to_ts);
	store_session_begin(&ss);
	t = require_tracking(&ss, &target);
	if (from_ts < t->from_ts && to_ts >= t->from_ts)
	{
		/* "the last day" of a table tracked an hour ago: that hour */
		ereport(NOTICE,
				(errmsg("history of table %s begins at %s, later than from_ts",
						target.display_name, timestamptz_to_cstring(t->from_ts)),
				 errdetail("The timeline shows the versions from when tracking began; from_ts was %s.",
						   timestamptz_to_cstring(from_ts))));
		from_ts = t->from_ts;
	}
	from_lsn = resolve_time(&ss, &target, t, from_ts);
	to_lsn = resolve_time(&ss, &target, t, to_ts);
	refuse_gaps(&target, t, from_lsn, to_lsn);

	/*
	 * Every version that was current at some LSN in [from_lsn, to_lsn]: the
	 * one current at from_lsn, and those that began after it up to to_lsn.
	 * Each ends where the next begins; the last where the first version
	 * after to_lsn begins, if there is one.
	 */
	have_first = fetch_version_at(&ss, t, &target, key, from_lsn, &first);
	version_query_args(t, &target, key, argtypes, args, knulls);
	argtypes[3] = LSNOID;
	args[3] = LSNGetDatum(from_lsn);
	argtypes[4] = LSNOID;
	args[4] = LSNGetDatum(to_lsn);
	store_execute("SELECT " VERSION_COLUMNS " FROM pgtimewarp.row_versions"
				  " WHERE " VERSION_KEY_MATCHES " AND valid_from_lsn > $4"
				  "   AND valid_from_lsn <= $5"
				  " ORDER BY valid_from_lsn",
				  5, argtypes, args, knulls, true, 0, SPI_OK_SELECT);
	nversions = (int) SPI_processed + (have_first ? 1 : 0);
	/* read after the store session ends: not in SPI's memory */
	versions = MemoryContextAlloc(ss.caller_cxt, sizeof(RowVersion) * Max(nversions, 1));
	if (have_first)
		versions[0] = first;
	for (uint64 row = 0; row < SPI_processed; row++)
		version_from_spi(row, &versions[row + (have_first ? 1 : 0)], ss.caller_cxt);
	have_after = nversions > 0 &&
		probe_version(&ss, t, &target, key, to_lsn, true, &after);
	for (int i = 0; i < nversions; i++)
	{
		RowVersion *next = i + 1 < nversions ? &versions[i + 1] : have_after ? &after : NULL;

		if (next != NULL)
		{
			versions[i].to_lsn = next->from_lsn;
			versions[i].to_ts = next->from_ts;
		}
	}

	/* the version before the first one, to tell what the first one changed */
	have_previous = nversions > 0 && versions[0].from_lsn > 0 &&
		fetch_version_at(&ss, t, &target, key, versions[0].from_lsn - 1, &previous);
	store_session_end(&ss);
	for (int i = 0; i < nversions; i++)
		versions[i].row_data = rename_columns(versions[i].row_data, t, versions[i].from_lsn);
	if (have_previous)
		previous.row_data = rename_columns(previous.row_data, t, previous.from_lsn);

	for (int i = 0; i < nversions; i++)
	{
		RowVersion *v = &versions[i];
		Jsonb	   *prev_data = i > 0 ? versions[i - 1].row_data :
			have_previous ? previous.row_data : NULL;
		Datum		values[7];
		bool		nulls[7] = {false, false, false, false, false, false, false};

		values[0] = LSNGetDatum(v->from_lsn);
		values[1] = LSNGetDatum(v->to_lsn);
		nulls[1] = v->to_lsn == InvalidXLogRecPtr;
		values[2] = TimestampTzGetDatum(v->from_ts);
		values[3] = TimestampTzGetDatum(v->to_ts);
		nulls[3] = nulls[1];
		values[4] = CStringGetTextDatum(v->op);
		/* delete and truncate tombstones: the store keeps no row data for them */
		if (v->row_data == NULL)
		{
			nulls[5] = true;
			nulls[6] = true;
		}
		else
		{
			values[5] = JsonbPGetDatum(row_data_to_json(v->row_data, tupdesc,
														target.show_former_columns));
			values[6] = changed_columns(tupdesc, prev_data, v->row_data,
										target.show_former_columns);
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	table_close(rel, AccessShareLock);
	return (Datum) 0;
}

/* ----------------------------------------------------------------
 * Tracking
 * ----------------------------------------------------------------
 */

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
	store_execute(psprintf("ALTER PUBLICATION %s %s TABLE %s",
						   quote_identifier(PGTW_PUBLICATION),
						   add ? "ADD" : "DROP", target->display_name),
				  0, NULL, NULL, NULL, false, 0, SPI_OK_UTILITY);
}

/* The baseline: every current row as a version valid from `lsn`. */
static void
write_baseline(Relation rel, TargetTable *target, int32 relation_id,
			   XLogRecPtr lsn, TimestampTz ts)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	StringInfoData sql;
	StringInfoData names;
	StringInfoData values;
	Oid			argtypes[3] = {INT4OID, LSNOID, TIMESTAMPTZOID};
	Datum		args[3];
	int			level;

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
						   "INSERT INTO pgtimewarp.row_versions"
						   " (relation_id, pk, pk_full, valid_from_lsn, valid_from_ts, op, row_data)"
						   " SELECT $1, pgtimewarp.index_key(k.k),"
						   "        CASE WHEN (pgtimewarp.index_key(k.k))[1] IS NULL THEN k.k END,"
						   "        $2, $3, 'b',");
	/* jsonb_object(keys, values) takes any number of columns */
	appendStringInfo(&sql,
					 " jsonb_object(ARRAY[%s]::text[], ARRAY[%s]::text[])"
					 " FROM ONLY %s AS t CROSS JOIN LATERAL (SELECT ARRAY[",
					 names.data, values.data, target->display_name);
	for (int i = 0; i < target->npk; i++)
		appendStringInfo(&sql, "%spgtimewarp.canonical_key_text(t.%s)", i ? ", " : "",
						 quote_identifier(target->pk_names[i]));
	appendStringInfoString(&sql, "]::text[] AS k) AS k");

	args[0] = Int32GetDatum(relation_id);
	args[1] = LSNGetDatum(lsn);
	args[2] = TimestampTzGetDatum(ts);
	level = canonical_settings_begin();
	store_execute(sql.data, 3, argtypes, args, NULL, false, 0, SPI_OK_INSERT);
	canonical_settings_end(level);
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
	store_execute("SELECT 1 FROM pg_catalog.pg_replication_slots"
				  " WHERE slot_type = 'logical' AND database = pg_catalog.current_database()",
				  0, NULL, NULL, NULL, true, 1, SPI_OK_SELECT);
	if (SPI_processed > 0)
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
	StoreSession ss;
	char	   *node_id;
	Tracking   *existing;
	XLogRecPtr	start_lsn;
	TimestampTz start_ts;
	Oid			argtypes[9];
	Datum		args[9];
	char		sysid[32];
	int32		relation_id;
	bool		isnull;

	require_argument(fcinfo, 0, "rel");
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("pgtimewarp_track must run in a READ COMMITTED transaction"),
				 errdetail("The baseline copy must see every change committed before the table is locked, and a REPEATABLE READ or SERIALIZABLE snapshot may be older than the lock."),
				 errhint("Run it outside the REPEATABLE READ or SERIALIZABLE transaction.")));

	refuse_if_written_here(PG_GETARG_OID(0));
	rel = open_for_tracking(PG_GETARG_OID(0), ShareRowExclusiveLock, &target);

	store_session_begin(&ss);
	node_id = configured_node_id(&ss);
	existing = fetch_tracking(&ss, node_id, &target);
	if (existing)
		require_same_table(existing, &target);
	if (existing && !existing->untracked)
	{
		store_session_end(&ss);
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

	argtypes[0] = TEXTOID;
	args[0] = CStringGetTextDatum(node_id);
	argtypes[1] = TEXTOID;
	args[1] = CStringGetTextDatum(get_database_name(MyDatabaseId));
	argtypes[2] = TEXTOID;
	args[2] = CStringGetTextDatum(sysid);
	store_execute("INSERT INTO pgtimewarp.nodes (node_id, database_name, system_identifier)"
				  " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
				  3, argtypes, args, NULL, false, 0, SPI_OK_INSERT);

	{
		Datum	   *names = palloc(sizeof(Datum) * target.npk);

		for (int i = 0; i < target.npk; i++)
			names[i] = CStringGetTextDatum(target.pk_names[i]);
		argtypes[1] = TEXTOID;
		args[1] = CStringGetTextDatum(target.schema_name);
		argtypes[2] = TEXTOID;
		args[2] = CStringGetTextDatum(target.table_name);
		argtypes[3] = OIDOID;
		args[3] = ObjectIdGetDatum(target.relid);
		argtypes[4] = TEXTARRAYOID;
		args[4] = PointerGetDatum(construct_array(names, target.npk, TEXTOID,
												  -1, false, TYPALIGN_INT));
		argtypes[5] = LSNOID;
		args[5] = LSNGetDatum(start_lsn);
		argtypes[6] = TIMESTAMPTZOID;
		args[6] = TimestampTzGetDatum(start_ts);
		argtypes[7] = TEXTOID;
		args[7] = CStringGetTextDatum(column_names_json(RelationGetDescr(rel)));
		/* the store numbers each tracked incarnation (relation_id) */
		store_execute("INSERT INTO pgtimewarp.tracked_relations"
					  " (node_id, schema_name, table_name, relid, pk_columns,"
					  "  tracked_from_lsn, tracked_from_ts, columns)"
					  " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) RETURNING relation_id",
					  8, argtypes, args, NULL, false, 0, SPI_OK_INSERT_RETURNING);
		if (SPI_processed != 1)
			elog(ERROR, "registering table %s in the pgtimewarp store returned no relation id",
				 target.display_name);
		relation_id = DatumGetInt32(spi_value(0, 1, &isnull, ss.caller_cxt));
	}

	/*
	 * No lsn_time_map entry for B: resolve_time() already takes any time
	 * from tracked_from_ts on to at least B, and lsn_time_map belongs to the
	 * agent, whose concurrent heartbeats would make this REPEATABLE READ
	 * remote transaction fail to serialize.
	 */
	write_baseline(rel, &target, relation_id, start_lsn, start_ts);
	update_publication(&target, true);
	warn_if_no_slot(&target);
	store_session_end(&ss);

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
	StoreSession ss;
	char	   *node_id;
	Tracking   *existing;
	XLogRecPtr	stop_lsn;
	TimestampTz stop_ts;
	Oid			argtypes[3] = {INT4OID, LSNOID, TIMESTAMPTZOID};
	Datum		args[3];

	require_argument(fcinfo, 0, "rel");
	rel = open_for_tracking(PG_GETARG_OID(0), AccessShareLock, &target);

	store_session_begin(&ss);
	node_id = configured_node_id(&ss);
	existing = fetch_tracking(&ss, node_id, &target);
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
	args[0] = Int32GetDatum(existing->relation_id);
	args[1] = LSNGetDatum(stop_lsn);
	args[2] = TimestampTzGetDatum(stop_ts);
	store_execute("UPDATE pgtimewarp.tracked_relations"
				  "   SET untracked_lsn = $2, untracked_ts = $3"
				  " WHERE relation_id = $1",
				  3, argtypes, args, NULL, false, 0, SPI_OK_UPDATE);
	update_publication(&target, false);
	store_session_end(&ss);

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
	StoreSession ss;
	char	   *node_id;
	Tracking   *existing;
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1];
	int64		versions;

	require_argument(fcinfo, 0, "rel");
	rel = open_for_tracking(PG_GETARG_OID(0), AccessShareLock, &target);

	store_session_begin(&ss);
	node_id = configured_node_id(&ss);
	existing = fetch_tracking(&ss, node_id, &target);
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
	args[0] = Int32GetDatum(existing->relation_id);
	store_execute("DELETE FROM pgtimewarp.row_versions WHERE relation_id = $1",
				  1, argtypes, args, NULL, false, 0, SPI_OK_DELETE);
	versions = (int64) SPI_processed;
	store_execute("DELETE FROM pgtimewarp.tracked_relations WHERE relation_id = $1",
				  1, argtypes, args, NULL, false, 0, SPI_OK_DELETE);
	store_session_end(&ss);
	table_close(rel, NoLock);
	PG_RETURN_INT64(versions);
}

/* ----------------------------------------------------------------
 * Status and helpers
 * ----------------------------------------------------------------
 */

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

Datum
pgtimewarp_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	StoreSession ss;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	int			ncols;

	pgtw_init_materialized_srf(fcinfo);
	ncols = rsinfo->setDesc->natts;

	store_session_begin(&ss);
	args[0] = CStringGetTextDatum(configured_node_id(&ss));
	store_execute("WITH counts AS ("
				  "  SELECT v.relation_id, count(*) AS n"
				  "    FROM pgtimewarp.row_versions v"
				  "    JOIN pgtimewarp.tracked_relations t ON t.relation_id = v.relation_id"
				  "   WHERE t.node_id = $1"
				  "   GROUP BY v.relation_id)"
				  " SELECT r.schema_name, r.table_name, r.untracked_lsn IS NULL,"
				  "        r.tracked_from_lsn, r.tracked_from_ts, r.untracked_lsn,"
				  "        coalesce(n.n, 0), c.confirmed_lsn, c.confirmed_ts,"
				  "        pg_wal_lsn_diff(pg_current_wal_lsn(), c.confirmed_lsn), r.relid"
				  "   FROM pgtimewarp.tracked_relations r"
				  "   LEFT JOIN counts n USING (relation_id)"
				  "   LEFT JOIN pgtimewarp.wal_checkpoints c ON c.node_id = r.node_id"
				  "  WHERE r.node_id = $1"
				  "  ORDER BY r.schema_name, r.table_name",
				  1, argtypes, args, NULL, true, 0, SPI_OK_SELECT);
	/* the result's columns, then the relid it was recorded from */
	if (SPI_tuptable->tupdesc->natts != ncols + 1)
		elog(ERROR, "pgtimewarp_status query returned %d columns, expected %d",
			 SPI_tuptable->tupdesc->natts, ncols + 1);
	for (uint64 row = 0; row < SPI_processed; row++)
	{
		Datum	   *values = palloc(sizeof(Datum) * ncols);
		bool	   *nulls = palloc(sizeof(bool) * ncols);

		bool		relid_null;
		Datum		relid;

		for (int col = 0; col < ncols; col++)
			values[col] = spi_value(row, col + 1, &nulls[col], ss.caller_cxt);
		relid = spi_value(row, ncols + 1, &relid_null, ss.caller_cxt);
		if (!status_visible_to(ss.saved_userid, relid_null ? InvalidOid : DatumGetObjectId(relid)))
			continue;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	store_session_end(&ss);
	return (Datum) 0;
}

/* pgtimewarp_pk_key(rel regclass, pk jsonb) RETURNS text[] */
Datum
pgtimewarp_pk_key(PG_FUNCTION_ARGS)
{
	TargetTable target;
	Relation	rel;
	ArrayType  *key;

	require_argument(fcinfo, 0, "rel");
	require_argument(fcinfo, 1, "pk");
	rel = open_for_history(PG_GETARG_OID(0), &target);
	key = encode_pk(rel, &target, PG_GETARG_JSONB_P(1));
	table_close(rel, AccessShareLock);
	PG_RETURN_ARRAYTYPE_P(key);
}

/* Output function of a polymorphic function's first argument, cached. */
static FmgrInfo *
argument_output_function(FunctionCallInfo fcinfo)
{
	FmgrInfo   *out = (FmgrInfo *) fcinfo->flinfo->fn_extra;

	if (out == NULL)
	{
		Oid			typoutput;
		bool		isvarlena;

		getTypeOutputInfo(get_fn_expr_argtype(fcinfo->flinfo, 0), &typoutput, &isvarlena);
		out = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(FmgrInfo));
		fmgr_info_cxt(typoutput, out, fcinfo->flinfo->fn_mcxt);
		fcinfo->flinfo->fn_extra = out;
	}
	return out;
}

/*
 * pgtimewarp.canonical_text(anyelement) RETURNS text: a value's text output,
 * as the store keeps column values.  pgtimewarp.canonical_key_text() is the
 * same for key columns, normalized as encode_pk() does.  Callers set the
 * canonical settings around the statement, once, rather than per value.
 */
Datum
pgtimewarp_canonical_text(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(OutputFunctionCall(argument_output_function(fcinfo),
														PG_GETARG_DATUM(0))));
}

Datum
pgtimewarp_canonical_key_text(PG_FUNCTION_ARGS)
{
	Datum		value = normalize_key_value(PG_GETARG_DATUM(0),
											get_fn_expr_argtype(fcinfo->flinfo, 0));

	PG_RETURN_TEXT_P(cstring_to_text(OutputFunctionCall(argument_output_function(fcinfo),
														value)));
}

/* pgtimewarp.index_key(key text[]) RETURNS text[]: see index_key_of() */
Datum
pgtimewarp_index_key(PG_FUNCTION_ARGS)
{
	PG_RETURN_ARRAYTYPE_P(index_key_of(PG_GETARG_ARRAYTYPE_P(0)));
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
	StoreSession ss;
	Tracking   *existing;
	Oid			argtypes[2] = {INT4OID, OIDOID};
	Datum		args[2];

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

	store_session_begin(&ss);
	existing = fetch_tracking(&ss, configured_node_id(&ss), &target);
	if (existing == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the store has no history under the name %s", target.display_name),
				 errhint("pgtimewarp_status() lists the names with history.")));
	if (existing->relid == target.relid)
	{
		store_session_end(&ss);
		table_close(rel, NoLock);
		ereport(NOTICE,
				(errmsg("the history stored under the name %s already belongs to it",
						target.display_name)));
		PG_RETURN_VOID();
	}
	check_history_key(existing, &target);
	args[0] = Int32GetDatum(existing->relation_id);
	args[1] = ObjectIdGetDatum(target.relid);
	store_execute("UPDATE pgtimewarp.tracked_relations SET relid = $2 WHERE relation_id = $1",
				  2, argtypes, args, NULL, false, 0, SPI_OK_UPDATE);
	if (!existing->untracked)
		update_publication(&target, true);
	store_session_end(&ss);
	table_close(rel, NoLock);
	ereport(NOTICE,
			(errmsg("the history of %s since %s now belongs to table %s (OID %u)",
					target.display_name, timestamptz_to_cstring(existing->from_ts),
					target.display_name, target.relid),
			 errdetail("It was recorded from the table with OID %u.", existing->relid),
			 errhint("Restart the pgtimewarp agent, which knows tables by OID from when it started (\"pgtimewarp install\" does).")));
	PG_RETURN_VOID();
}

#ifdef PGTW_NEED_MATERIALIZED_SRF
void
pgtw_init_materialized_srf(FunctionCallInfo fcinfo)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext oldcxt;
	TupleDesc	tupdesc;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	oldcxt = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->setDesc = CreateTupleDescCopy(tupdesc);
	MemoryContextSwitchTo(oldcxt);
}
#endif
