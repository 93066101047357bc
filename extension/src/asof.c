/*-------------------------------------------------------------------------
 *
 * asof.c
 *		Rows as they were: one key (asof_pk, asof_pk_lsn, asof_row), many
 *		keys (asof_pks), a whole table (asof_table, asof_table_lsn).
 *
 * Each call reads the store in one statement (store_sql.c), in the local
 * transaction's store snapshot (remote_xact.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"

#include "pgtimewarp.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(pgtimewarp_asof_pk);
PG_FUNCTION_INFO_V1(pgtimewarp_asof_pk_lsn);
PG_FUNCTION_INFO_V1(pgtimewarp_asof_row);
PG_FUNCTION_INFO_V1(pgtimewarp_asof_pks);
PG_FUNCTION_INFO_V1(pgtimewarp_asof_table);
PG_FUNCTION_INFO_V1(pgtimewarp_asof_table_lsn);

/*
 * What one call site remembers for the rest of its statement: the time it
 * last warned about, so that a query asking for many keys at a time beyond
 * the stored history warns once, not once per row; and the tracking state
 * and position that time stands for, with the store snapshot they were read
 * in.  While that snapshot answers (the same remote transaction, and no
 * write of this session since: pgtw_store_snapshot_id), the store would say
 * the same again, so a call for another key at the same time probes only
 * the key's version: the store statement of a direct lookup.
 */
typedef struct LookupCache
{
	Oid			relid;
	bool		by_lsn;
	int64		at;
	uint64		snapshot;		/* 0: no tracking state kept */
	char	   *pk_names_literal;	/* the key it was checked against */
	Tracking   *t;				/* in fn_mcxt */
	XLogRecPtr	lsn;
} LookupCache;

static LookupCache *
lookup_cache(FmgrInfo *flinfo)
{
	if (flinfo->fn_extra == NULL)
		flinfo->fn_extra = MemoryContextAllocZero(flinfo->fn_mcxt, sizeof(LookupCache));
	return (LookupCache *) flinfo->fn_extra;
}

static bool
first_warning(FmgrInfo *flinfo, Oid relid, bool by_lsn, int64 at)
{
	LookupCache *w = lookup_cache(flinfo);

	if (w->relid == relid && w->by_lsn == by_lsn && w->at == at)
		return false;
	w->relid = relid;
	w->by_lsn = by_lsn;
	w->at = at;
	w->snapshot = 0;
	return true;
}

static Jsonb *
copy_jsonb(Jsonb *j, MemoryContext cxt)
{
	Jsonb	   *copy;

	if (j == NULL)
		return NULL;
	copy = MemoryContextAlloc(cxt, VARSIZE(j));
	memcpy(copy, j, VARSIZE(j));
	return copy;
}

/* Keep what a full lookup learned, for the call site's next keys. */
static void
remember_lookup(FmgrInfo *flinfo, TargetTable *target, Tracking *t, XLogRecPtr lsn)
{
	LookupCache *c = lookup_cache(flinfo);
	MemoryContext cxt = flinfo->fn_mcxt;

	if (c->t != NULL)
	{
		if (c->t->column_renames)
			pfree(c->t->column_renames);
		if (c->t->column_additions)
			pfree(c->t->column_additions);
		pfree(c->t);
		pfree(c->pk_names_literal);
	}
	c->t = MemoryContextAlloc(cxt, sizeof(Tracking));
	*c->t = *t;
	c->t->node_id = NULL;
	c->t->pk_columns = NULL;
	c->t->column_renames = copy_jsonb(t->column_renames, cxt);
	c->t->column_additions = copy_jsonb(t->column_additions, cxt);
	c->pk_names_literal = MemoryContextStrdup(cxt, target->pk_names_literal);
	c->lsn = lsn;
	c->snapshot = pgtw_store_snapshot_id();
}

/* The call site's tracking state, if it still answers for this lookup. */
static LookupCache *
remembered_lookup(FmgrInfo *flinfo, TargetTable *target, bool by_lsn, int64 at)
{
	LookupCache *c;

	if (flinfo == NULL || flinfo->fn_extra == NULL)
		return NULL;
	c = (LookupCache *) flinfo->fn_extra;
	if (c->snapshot == 0 || c->snapshot != pgtw_store_snapshot_id() ||
		c->relid != target->relid || c->by_lsn != by_lsn || c->at != at ||
		strcmp(c->pk_names_literal, target->pk_names_literal) != 0)
		return NULL;
	return c;
}

static char *
asked_text(bool by_lsn, int64 at)
{
	if (by_lsn)
		return psprintf("LSN %s", lsn_to_cstring((XLogRecPtr) at));
	return timestamptz_to_cstring((TimestampTz) at);
}

/*
 * Read the tracking state of a lookup's first row, check it and where `at`
 * falls in history (errors, warnings), and return it in *t.  Returns the
 * position in history the answer is for.
 */
static XLogRecPtr
check_lookup(FmgrInfo *flinfo, const char *node_id, TargetTable *target, PGresult *res,
			 bool by_lsn, int64 at, Tracking *t, int *version_col)
{
	Resolved	r;
	XLogRecPtr	lsn;

	require_tracked(node_id, target, res);
	lookup_result(res, 0, t, &r, version_col);
	t->node_id = (char *) node_id;
	t->relid = target->relid;
	check_history_key(t, target);
	lsn = resolve_check(target, t, &r, asked_text(by_lsn, at), by_lsn,
						flinfo == NULL || first_warning(flinfo, target->relid, by_lsn, at));
	if (r.have_gap)
		refuse_gap(target, &r.gap);
	return lsn;
}

/*
 * A stored version as it reads at `at_lsn`: columns renamed since, or
 * added (`typed`: for a row of the table's type now).
 */
static Jsonb *
as_read_at(Jsonb *row_data, Relation rel, Tracking *t, XLogRecPtr version_lsn,
		   XLogRecPtr at_lsn, bool typed)
{
	return fill_added_columns(rename_columns(row_data, t, version_lsn), rel, t,
							  version_lsn, at_lsn, typed);
}

/*
 * The stored version of `pk` visible at `at` (a timestamptz, or an LSN when
 * by_lsn) in *v.  Returns false when no row with that key existed then
 * (never stored, or a tombstone).
 */
static bool
lookup_row(FmgrInfo *flinfo, Relation rel, TargetTable *target,
		   Jsonb *pk, Datum at, bool by_lsn, bool typed, RowVersion *v)
{
	ArrayType  *key = encode_pk(rel, target, pk);
	char	   *node_id = configured_node_id();
	int64		at_value = by_lsn ? (int64) DatumGetLSN(at) : DatumGetTimestampTz(at);
	PGresult   *res;
	Tracking	t;
	int			col;
	bool		found;
	XLogRecPtr	at_lsn;
	LookupCache *known = remembered_lookup(flinfo, target, by_lsn, at_value);

	if (known != NULL)
	{
		/* the same snapshot, table and time: only the key's version is new */
		res = store_probe(known->t->relation_id, key, known->lsn);
		version_result(res, 0, 0, v, &found);
		pgtw_store_clear(res);
		if (found)
			v->row_data = as_read_at(v->row_data, rel, known->t, v->from_lsn, known->lsn, typed);
		return found && v->row_data != NULL;
	}
	if (!by_lsn)
		pgtw_await_fresh_history(DatumGetTimestampTz(at));
	res = store_lookup(node_id, target, by_lsn ? LOOKUP_AT_LSN : LOOKUP_AT_TIME,
					   at_value, key);
	at_lsn = check_lookup(flinfo, node_id, target, res, by_lsn, at_value, &t, &col);
	version_result(res, 0, col, v, &found);
	pgtw_store_clear(res);
	if (flinfo != NULL)
		remember_lookup(flinfo, target, &t, at_lsn);
	if (found)
		v->row_data = as_read_at(v->row_data, rel, &t, v->from_lsn, at_lsn, typed);
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
	if (lookup_row(fcinfo->flinfo, rel, &target, PG_GETARG_JSONB_P(1), PG_GETARG_DATUM(2), by_lsn, false, &v))
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
	Oid			relid = table_of_row_type(fcinfo, "pgtimewarp_asof_row",
										  "SELECT * FROM pgtimewarp_asof_row(NULL::my_table, '{\"id\": 1}', now())");
	TargetTable target;
	Relation	rel;
	RowVersion	v;
	TupleDesc	tupdesc;
	Datum	   *values;
	bool	   *nulls;
	HeapTuple	tuple;

	require_argument(fcinfo, 1, "pk");
	require_argument(fcinfo, 2, "at");

	rel = open_for_history(relid, &target);
	if (!lookup_row(fcinfo->flinfo, rel, &target, PG_GETARG_JSONB_P(1), PG_GETARG_DATUM(2), false, true, &v))
	{
		table_close(rel, AccessShareLock);
		PG_RETURN_NULL();
	}

	tupdesc = lookup_rowtype_tupdesc_copy(get_fn_expr_argtype(fcinfo->flinfo, 0), -1);
	values = palloc(sizeof(Datum) * tupdesc->natts);
	nulls = palloc(sizeof(bool) * tupdesc->natts);
	row_data_to_datums(v.row_data, v.from_ts, tupdesc, values, nulls);
	tuple = heap_form_tuple(tupdesc, values, nulls);
	table_close(rel, AccessShareLock);
	PG_RETURN_DATUM(HeapTupleGetDatum(tuple));
}

static void
pks_error_context(void *arg)
{
	errcontext("key %d of pks", *(int *) arg);
}

/*
 * pgtimewarp_asof_pks(rel regclass, pks jsonb[], at timestamptz)
 *		RETURNS TABLE (pk jsonb, row_data jsonb)
 *
 * Many keys at one time in one store statement: a row per key, in the
 * order given, row_data as asof_pk would return it.
 */
Datum
pgtimewarp_asof_pks(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TargetTable target;
	Relation	rel;
	Datum	   *pks;
	bool	   *pk_nulls;
	int			nkeys;
	ArrayType **keys;
	char	   *node_id;
	TimestampTz at;
	PGresult   *res;
	Tracking	t;
	int			col;
	XLogRecPtr	at_lsn;
	MemoryContext row_cxt;
	ErrorContextCallback errcallback;
	int			key_number = 0;

	require_argument(fcinfo, 0, "rel");
	require_argument(fcinfo, 1, "pks");
	require_argument(fcinfo, 2, "at");
	at = PG_GETARG_TIMESTAMPTZ(2);
	pgtw_init_materialized_srf(fcinfo);

	rel = open_for_history(PG_GETARG_OID(0), &target);
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), JSONBOID, -1, false, TYPALIGN_INT,
					  &pks, &pk_nulls, &nkeys);
	keys = palloc(sizeof(ArrayType *) * Max(nkeys, 1));
	errcallback.callback = pks_error_context;
	errcallback.arg = &key_number;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;
	for (int i = 0; i < nkeys; i++)
	{
		key_number = i + 1;
		if (pk_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("element %d of argument \"pks\" of pgtimewarp_asof_pks must not be null",
							i + 1)));
		keys[i] = encode_pk(rel, &target, DatumGetJsonbP(pks[i]));
	}
	error_context_stack = errcallback.previous;

	node_id = configured_node_id();
	pgtw_await_fresh_history(at);
	res = store_lookup_many(node_id, &target, at, nkeys, keys);
	at_lsn = check_lookup(NULL, node_id, &target, res, false, at, &t, &col);
	if (nkeys > 0 && PQntuples(res) != nkeys)
		elog(ERROR, "pgtimewarp store returned %d rows for %d keys", PQntuples(res), nkeys);

	row_cxt = AllocSetContextCreate(CurrentMemoryContext, "pgtimewarp_asof_pks row",
									ALLOCSET_DEFAULT_SIZES);
	for (int i = 0; i < nkeys; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(row_cxt);
		RowVersion	v;
		bool		found;
		Datum		values[2];
		bool		nulls[2] = {false, true};

		if (result_int8(res, i, col + VERSION_RESULT_COLUMNS) != i + 1)
			elog(ERROR, "pgtimewarp store returned keys out of order");
		version_result(res, i, col, &v, &found);
		values[0] = pks[i];
		if (found && v.row_data != NULL)
		{
			values[1] = JsonbPGetDatum(row_data_to_json(as_read_at(v.row_data, rel, &t, v.from_lsn, at_lsn, false),
														RelationGetDescr(rel),
														target.show_former_columns));
			nulls[1] = false;
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_cxt);
	}
	pgtw_store_clear(res);
	table_close(rel, AccessShareLock);
	return (Datum) 0;
}

/* What an error while reading a row of asof_table is about. */
typedef struct TableRowContext
{
	TargetTable *target;
	Form_pg_attribute attr;
	TimestampTz version_ts;
} TableRowContext;

static void
table_row_error_context(void *arg)
{
	TableRowContext *c = (TableRowContext *) arg;

	if (c->attr == NULL)
		return;
	errcontext("reading column \"%s\" of table %s as type %s from the row version of %s (its type may have changed since)",
			   NameStr(c->attr->attname), c->target->display_name,
			   format_type_with_typemod(c->attr->atttypid, c->attr->atttypmod),
			   timestamptz_to_cstring(c->version_ts));
}

/* Rows fetched from the store per round trip. */
#define TABLE_FETCH_ROWS 5000

static uint32 cursor_number = 0;

/*
 * The whole table as it was: rows streamed from a store cursor in batches
 * into the function's tuplestore (which spills to disk past work_mem), so
 * the table need not fit in memory.  Values are read as asof_row reads
 * them: columns added since are NULL, renamed ones under their new name,
 * dropped ones gone, and a value the column's current type cannot read is
 * an error naming the column and the version.
 */
static Datum
asof_table_common(FunctionCallInfo fcinfo, bool by_lsn)
{
	const char *fname = by_lsn ? "pgtimewarp_asof_table_lsn" : "pgtimewarp_asof_table";
	Oid			relid = table_of_row_type(fcinfo, fname,
										  by_lsn ? "SELECT * FROM pgtimewarp_asof_table_lsn(NULL::my_table, '0/1234ABCD')"
										  : "SELECT * FROM pgtimewarp_asof_table(NULL::my_table, now() - interval '1 hour')");
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TargetTable target;
	Relation	rel;
	TupleDesc	tupdesc;
	char	   *node_id;
	int64		at;
	PGresult   *res;
	Tracking	t;
	Resolved	r;
	int			col;
	char	   *cursor;
	char	   *declare;
	char	   *fetch;
	StoreParams p;
	StoreStatement stmts[2];
	FmgrInfo   *inputs;
	Oid		   *ioparams;
	Datum	   *values;
	bool	   *nulls;
	MemoryContext batch_cxt;
	TableRowContext ctx;
	ErrorContextCallback errcallback;
	bool		more = true;
	bool		first = true;

	require_argument(fcinfo, 1, "at");
	at = by_lsn ? (int64) PG_GETARG_LSN(1) : PG_GETARG_TIMESTAMPTZ(1);
	pgtw_init_materialized_srf(fcinfo);
	tupdesc = rsinfo->setDesc;

	rel = open_for_history(relid, &target);
	node_id = configured_node_id();
	if (!by_lsn)
		pgtw_await_fresh_history((TimestampTz) at);

	/* the tracking state and where `at` falls, checked before any row */
	res = store_lookup(node_id, &target, by_lsn ? LOOKUP_AT_LSN : LOOKUP_AT_TIME, at, NULL);
	require_tracked(node_id, &target, res);
	lookup_result(res, 0, &t, &r, &col);
	pgtw_store_clear(res);
	t.node_id = node_id;
	t.relid = target.relid;
	check_history_key(&t, &target);
	(void) resolve_check(&target, &t, &r, asked_text(by_lsn, at), by_lsn, true);
	if (r.have_gap)
		refuse_gap(&target, &r.gap);

	inputs = palloc(sizeof(FmgrInfo) * Max(tupdesc->natts, 1));
	ioparams = palloc(sizeof(Oid) * Max(tupdesc->natts, 1));
	values = palloc(sizeof(Datum) * Max(tupdesc->natts, 1));
	nulls = palloc(sizeof(bool) * Max(tupdesc->natts, 1));
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(tupdesc, i);
		Oid			typinput;

		if (attr->attisdropped)
			continue;
		getTypeInputInfo(attr->atttypid, &typinput, &ioparams[i]);
		fmgr_info(typinput, &inputs[i]);
	}

	cursor = psprintf("pgtw_table_%u", ++cursor_number);
	declare = table_cursor_sql(cursor, &t, rel, r.lsn);
	fetch = psprintf("FETCH %d FROM %s", TABLE_FETCH_ROWS, cursor);
	p.n = 0;
	param_int4(&p, t.relation_id);
	param_lsn(&p, r.lsn);

	batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "pgtimewarp_asof_table batch",
									  ALLOCSET_DEFAULT_SIZES);
	ctx.target = &target;
	ctx.attr = NULL;
	errcallback.callback = table_row_error_context;
	errcallback.arg = &ctx;
	errcallback.previous = error_context_stack;

	while (more)
	{
		int			nrows;
		int			level;

		memset(stmts, 0, sizeof(stmts));
		if (first)
		{
			/* the cursor and its first rows in one round trip */
			stmts[0].sql = declare;
			statement_params(&stmts[0], &p);
		}
		stmts[first ? 1 : 0].sql = fetch;
		stmts[first ? 1 : 0].binary_result = true;
		pgtw_store_run(stmts, first ? 2 : 1);
		if (first)
			pgtw_store_clear(stmts[0].result);
		res = stmts[first ? 1 : 0].result;
		first = false;
		nrows = PQntuples(res);
		more = nrows == TABLE_FETCH_ROWS;

		/* parse under the canonical settings the text was written with */
		level = canonical_settings_begin();
		error_context_stack = &errcallback;
		for (int row = 0; row < nrows; row++)
		{
			MemoryContext old = MemoryContextSwitchTo(batch_cxt);

			ctx.version_ts = result_ts(res, row, 0);
			for (int i = 0; i < tupdesc->natts; i++)
			{
				Form_pg_attribute attr = TupleDescAttr(tupdesc, i);

				nulls[i] = attr->attisdropped || PQgetisnull(res, row, i + 1);
				values[i] = (Datum) 0;
				if (nulls[i])
					continue;
				ctx.attr = attr;
				values[i] = InputFunctionCall(&inputs[i],
											  pnstrdup(PQgetvalue(res, row, i + 1),
													   PQgetlength(res, row, i + 1)),
											  ioparams[i], attr->atttypmod);
				ctx.attr = NULL;
			}
			tuplestore_putvalues(rsinfo->setResult, tupdesc, values, nulls);
			MemoryContextSwitchTo(old);
			if ((row & 255) == 255)
				MemoryContextReset(batch_cxt);
		}
		error_context_stack = errcallback.previous;
		canonical_settings_end(level);
		MemoryContextReset(batch_cxt);
		pgtw_store_clear(res);
		CHECK_FOR_INTERRUPTS();
	}
	{
		StoreStatement close = {0};

		close.sql = psprintf("CLOSE %s", cursor);
		pgtw_store_run(&close, 1);
		pgtw_store_clear(close.result);
	}
	table_close(rel, AccessShareLock);
	return (Datum) 0;
}

Datum
pgtimewarp_asof_table(PG_FUNCTION_ARGS)
{
	return asof_table_common(fcinfo, false);
}

Datum
pgtimewarp_asof_table_lsn(PG_FUNCTION_ARGS)
{
	return asof_table_common(fcinfo, true);
}
