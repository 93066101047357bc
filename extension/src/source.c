/*-------------------------------------------------------------------------
 *
 * source.c
 *		The source side: the table asked about, who may read its history,
 *		the node id this database is configured with, and local statements.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "parser/parse_type.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "pgtimewarp.h"
#include "compat.h"

/* The extension's owner and node id, read once per transaction. */
static LocalTransactionId cached_lxid = InvalidLocalTransactionId;
static Oid	cached_owner = InvalidOid;
static char *cached_node_id = NULL;

static void
refresh_cache(void)
{
	if (cached_lxid == pgtw_current_lxid())
		return;
	cached_lxid = pgtw_current_lxid();
	cached_owner = InvalidOid;
	if (cached_node_id)
		pfree(cached_node_id);
	cached_node_id = NULL;
}

Oid
extension_owner(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;

	refresh_cache();
	if (OidIsValid(cached_owner))
		return cached_owner;
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
	cached_owner = ((Form_pg_extension) GETSTRUCT(tuple))->extowner;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return cached_owner;
}

/*
 * The node id this database was configured with (pgtimewarp.config, one
 * row), read straight from the table: callers have no privilege on it, and
 * an SPI statement per lookup would cost more than the rest of a lookup.
 */
char *
configured_node_id(void)
{
	Oid			nsp;
	Oid			relid;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;
	char	   *node_id = NULL;

	refresh_cache();
	if (cached_node_id != NULL)
		return pstrdup(cached_node_id);
	nsp = get_namespace_oid("pgtimewarp", false);
	relid = get_relname_relid("config", nsp);
	if (!OidIsValid(relid))
		elog(ERROR, "table pgtimewarp.config is missing");
	rel = table_open(relid, AccessShareLock);
	scan = table_beginscan(rel, GetTransactionSnapshot(), 0, NULL);
	tuple = heap_getnext(scan, ForwardScanDirection);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, get_attnum(relid, "node_id"),
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			node_id = TextDatumGetCString(d);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	if (node_id == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pgtimewarp is not configured in this database"),
				 errdetail("No node id is set, so pgtimewarp does not know which history in the store belongs to this database."),
				 errhint("Run \"pgtimewarp install\", or as the extension's owner run SELECT pgtimewarp_configure('<node id>').")));
	cached_node_id = MemoryContextStrdup(TopMemoryContext, node_id);
	return node_id;
}

/* Fill `target` from an open relation; errors if it has no primary key. */
void
describe_target(Relation rel, TargetTable *target)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	Relation	pkrel;
	Datum	   *names;

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
	names = palloc(sizeof(Datum) * target->npk);
	for (int i = 0; i < target->npk; i++)
	{
		AttrNumber	attnum = pkrel->rd_index->indkey.values[i];

		target->pk_attnums[i] = attnum;
		target->pk_names[i] =
			pstrdup(NameStr(TupleDescAttr(RelationGetDescr(rel), attnum - 1)->attname));
		names[i] = CStringGetTextDatum(target->pk_names[i]);
	}
	index_close(pkrel, AccessShareLock);
	target->pk_names_literal =
		text_array_literal(construct_array(names, target->npk, TEXTOID, -1, false,
										   TYPALIGN_INT));
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

char *
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
void
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
void
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
Relation
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

/*
 * The table whose row type the first argument of a polymorphic function
 * is (asof_row, asof_table), or an error showing how to call it.
 */
Oid
table_of_row_type(FunctionCallInfo fcinfo, const char *fname, const char *example)
{
	Oid			rowtype = get_fn_expr_argtype(fcinfo->flinfo, 0);
	Oid			relid = OidIsValid(rowtype) ? typeidTypeRelid(rowtype) : InvalidOid;

	/* a composite type or a view's row type names a relation too, but no table */
	if (OidIsValid(relid) && get_rel_relkind(relid) != RELKIND_RELATION)
		relid = InvalidOid;
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("first argument of %s must be a table's row type, not %s",
						fname, OidIsValid(rowtype) ? format_type_be(rowtype) : "unknown"),
				 errhint("Pass a typed NULL: %s.", example)));
	return relid;
}

/*
 * Run statements on the source database as the extension's owner, with
 * search_path pinned (the baseline copy, ALTER PUBLICATION, the slot
 * check).  The caller's privileges were checked already.
 */
typedef struct OwnerSession
{
	Oid			saved_userid;
	int			saved_sec_context;
	int			guc_level;
} OwnerSession;

/* not nested; an error's abort restores the user, settings and SPI itself */
static OwnerSession owner_session;

void
local_begin(void)
{
	GetUserIdAndSecContext(&owner_session.saved_userid, &owner_session.saved_sec_context);
	SetUserIdAndSecContext(extension_owner(),
						   owner_session.saved_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	owner_session.guc_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

void
local_end(void)
{
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
	AtEOXact_GUC(true, owner_session.guc_level);
	SetUserIdAndSecContext(owner_session.saved_userid, owner_session.saved_sec_context);
}

/* One local statement, between local_begin() and local_end(). */
void
local_execute(const char *sql, int expected)
{
	int			ret = SPI_execute(sql, false, 0);

	if (ret != expected)
		elog(ERROR, "local statement returned %s, expected %s: %s",
			 SPI_result_code_string(ret), SPI_result_code_string(expected), sql);
}
