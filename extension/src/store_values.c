/*-------------------------------------------------------------------------
 *
 * store_values.c
 *		Parameters sent to the store and values read from its results.
 *
 * Binary where the form is fixed (OIDs, LSNs, timestamps: network byte
 * order), text where it is the store's own (keys, rows), so nothing depends
 * on either session's settings.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "port/pg_bswap.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"

#include "pgtimewarp.h"

/* ----------------------------------------------------------------
 * Parameters and results
 * ----------------------------------------------------------------
 */

void
param_text(StoreParams *p, Oid type, const char *value)
{
	p->types[p->n] = type;
	p->values[p->n] = value;
	p->lengths[p->n] = 0;
	p->formats[p->n] = 0;
	p->n++;
}

void
param_null(StoreParams *p, Oid type)
{
	param_text(p, type, NULL);
}

static void
param_binary(StoreParams *p, Oid type, const void *data, int len)
{
	char	   *copy = palloc(len);

	memcpy(copy, data, len);
	p->types[p->n] = type;
	p->values[p->n] = copy;
	p->lengths[p->n] = len;
	p->formats[p->n] = 1;
	p->n++;
}

/* A 4- or 8-byte integer parameter in binary: int4, oid, pg_lsn, timestamptz. */
void
param_uint32(StoreParams *p, Oid type, uint32 value)
{
	uint32		v = pg_hton32(value);

	param_binary(p, type, &v, 4);
}

void
param_uint64(StoreParams *p, Oid type, uint64 value)
{
	uint64		v = pg_hton64(value);

	param_binary(p, type, &v, 8);
}

/* A text[] as its literal, the form keys are sent to the store in. */
char *
text_array_literal(ArrayType *a)
{
	return OidOutputFunctionCall(F_ARRAY_OUT, PointerGetDatum(a));
}

bool
result_null(PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col);
}

const char *
result_binary(PGresult *res, int row, int col, int len)
{
	if (PQgetlength(res, row, col) != len)
		elog(ERROR, "pgtimewarp store returned %d bytes for column %d, expected %d",
			 PQgetlength(res, row, col), col + 1, len);
	return PQgetvalue(res, row, col);
}

int32
result_int4(PGresult *res, int row, int col)
{
	uint32		v;

	memcpy(&v, result_binary(res, row, col, 4), 4);
	return (int32) pg_ntoh32(v);
}

int64
result_int8(PGresult *res, int row, int col)
{
	uint64		v;

	memcpy(&v, result_binary(res, row, col, 8), 8);
	return (int64) pg_ntoh64(v);
}

XLogRecPtr
result_lsn(PGresult *res, int row, int col)
{
	return (XLogRecPtr) result_int8(res, row, col);
}

TimestampTz
result_ts(PGresult *res, int row, int col)
{
	return (TimestampTz) result_int8(res, row, col);
}

bool
result_bool(PGresult *res, int row, int col)
{
	return *result_binary(res, row, col, 1) != 0;
}

char *
result_text(PGresult *res, int row, int col)
{
	return pnstrdup(PQgetvalue(res, row, col), PQgetlength(res, row, col));
}

/* A jsonb column in binary: a version byte, then the text. */
Jsonb *
result_jsonb(PGresult *res, int row, int col)
{
	const char *v = PQgetvalue(res, row, col);
	int			len = PQgetlength(res, row, col);

	if (len < 1 || v[0] != 1)
		elog(ERROR, "pgtimewarp store returned jsonb in an unknown format");
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
											  CStringGetDatum(pnstrdup(v + 1, len - 1))));
}

/* The name of a stored op code. */
const char *
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

