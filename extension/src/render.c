/*-------------------------------------------------------------------------
 *
 * render.c
 *		Stored rows back to typed values: a row, its JSON, what changed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "access/tupdesc_details.h"
#include "access/xact.h"
#include "nodes/makefuncs.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"
#include "utils/resowner.h"

#include "pgtimewarp.h"
#include "compat.h"

/* ----------------------------------------------------------------
 * Stored rows back to typed values
 * ----------------------------------------------------------------
 */

int
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
ErrorData *
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
void
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
Jsonb *
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
Datum
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
Jsonb *
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


/*
 * Columns added after tracking began (tracked_relations.column_additions,
 * which the agent records from the DDL log).  ALTER TABLE ... ADD COLUMN c
 * ... DEFAULT d gives the rows already there c = d without writing them
 * (PostgreSQL keeps d as c's "missing value"), so a version stored before
 * the addition has no c, yet read at a time from the addition on the row
 * had c = d.  Before the addition the column did not exist: NULL.
 */

/* Whether column `attnum` was added since tracking began, and where. */
bool
column_addition(Tracking *t, AttrNumber attnum, XLogRecPtr *added_lsn)
{
	int			n;

	if (t->column_additions == NULL || !JB_ROOT_IS_ARRAY(t->column_additions))
		return false;
	n = JB_ROOT_COUNT(t->column_additions);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(&t->column_additions->root, i);
		JsonbValue *lsn;
		JsonbValue *num;

		if (e == NULL || e->type != jbvBinary ||
			(lsn = getKeyJsonValueFromContainer(e->val.binary.data, "lsn", 3, NULL)) == NULL ||
			(num = getKeyJsonValueFromContainer(e->val.binary.data, "attnum", 6, NULL)) == NULL ||
			lsn->type != jbvString || num->type != jbvNumeric)
			elog(ERROR, "malformed column addition in the pgtimewarp store");
		if (DatumGetInt32(DirectFunctionCall1(numeric_int4, NumericGetDatum(num->val.numeric))) != attnum)
			continue;
		*added_lsn = DatumGetLSN(DirectFunctionCall1(pg_lsn_in,
													 CStringGetDatum(pnstrdup(lsn->val.string.val,
																			  lsn->val.string.len))));
		return true;
	}
	return false;
}

/* The missing value of column `attnum` as the store would keep its text, if it has one. */
bool
column_missing_text(Relation rel, AttrNumber attnum, char **text)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	Form_pg_attribute attr = TupleDescAttr(tupdesc, attnum - 1);
	AttrMissing *missing;
	Oid			typoutput;
	bool		isvarlena;
	int			level;

	if (!attr->atthasmissing || tupdesc->constr == NULL || tupdesc->constr->missing == NULL)
		return false;
	missing = &tupdesc->constr->missing[attnum - 1];
	if (!missing->am_present)
		return false;
	getTypeOutputInfo(attr->atttypid, &typoutput, &isvarlena);
	level = canonical_settings_begin();
	*text = OidOutputFunctionCall(typoutput, missing->am_value);
	canonical_settings_end(level);
	return true;
}

/*
 * `row_data`, a version from `version_lsn` read as of `at_lsn`, for each
 * column added after the version was written: read from the addition on,
 * the column's missing value (JSON null for one added without a default,
 * as to_jsonb of the row shows it); read before it, the column did not
 * exist, so when `typed` (a row of the table's type now) it is NULL.  A
 * value the version has under the column's name then belonged to another
 * column, dropped before this one was added under its name: it stays in
 * the JSON, for what the row was then, but is never read as this column.
 */
Jsonb *
fill_added_columns(Jsonb *row_data, Relation rel, Tracking *t, XLogRecPtr version_lsn,
				   XLogRecPtr at_lsn, bool typed)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	JsonbParseState *state = NULL;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	  **names;
	char	  **texts;
	bool	   *put;
	int			nfill = 0;
	bool		skip_value = false;

	if (row_data == NULL || t->column_additions == NULL)
		return row_data;
	names = palloc(sizeof(char *) * Max(tupdesc->natts, 1));
	texts = palloc(sizeof(char *) * Max(tupdesc->natts, 1));
	put = palloc(sizeof(bool) * Max(tupdesc->natts, 1));
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(tupdesc, i);
		XLogRecPtr	added;

		if (attr->attisdropped || !column_addition(t, attr->attnum, &added) ||
			version_lsn >= added)
			continue;
		if (at_lsn >= added)
		{
			/* no missing value: the column was NULL in the rows already there */
			if (!column_missing_text(rel, attr->attnum, &texts[nfill]))
				texts[nfill] = NULL;
			put[nfill] = true;
		}
		else if (typed)
			put[nfill] = false;
		else
			continue;
		names[nfill++] = NameStr(attr->attname);
	}
	if (nfill == 0)
		return row_data;

	it = JsonbIteratorInit(&row_data->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			skip_value = false;
			for (int i = 0; i < nfill && !skip_value; i++)
				skip_value = strlen(names[i]) == (size_t) v.val.string.len &&
					strncmp(names[i], v.val.string.val, v.val.string.len) == 0;
			if (skip_value)
				continue;
		}
		else if (tok == WJB_VALUE && skip_value)
			continue;
		if (tok == WJB_END_OBJECT)
			break;
		(void) pushJsonbValue(&state, tok, tok < WJB_BEGIN_ARRAY ? &v : NULL);
	}
	for (int i = 0; i < nfill; i++)
	{
		JsonbValue	key;
		JsonbValue	value;

		if (!put[i])
			continue;
		key.type = jbvString;
		key.val.string.val = names[i];
		key.val.string.len = strlen(names[i]);
		value.type = texts[i] ? jbvString : jbvNull;
		if (texts[i])
		{
			value.val.string.val = texts[i];
			value.val.string.len = strlen(texts[i]);
		}
		(void) pushJsonbValue(&state, WJB_KEY, &key);
		(void) pushJsonbValue(&state, WJB_VALUE, &value);
	}
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}
