/*-------------------------------------------------------------------------
 *
 * keys.c
 *		Canonical keys: a primary key given as JSON, as the store keys by it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "access/table.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/typcache.h"

#include "pgtimewarp.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(pgtimewarp_pk_key);
PG_FUNCTION_INFO_V1(pgtimewarp_canonical_text);
PG_FUNCTION_INFO_V1(pgtimewarp_canonical_key_text);
PG_FUNCTION_INFO_V1(pgtimewarp_index_key);


/*
 * A key value in the one form the store keys by.  Values the type's equality
 * treats as equal but prints differently would otherwise be different keys
 * for the same row: numeric 1.5 and 1.50, float 0 and -0.  The agent applies
 * the same rule to the text it decodes (agent/key.ts).
 */
Datum
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
ArrayType *
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
ArrayType *
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
