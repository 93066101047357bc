/*-------------------------------------------------------------------------
 *
 * diff.c
 *		A row's timeline: every version current at some moment between two
 *		times, with what each one changed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "pgtimewarp.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(pgtimewarp_diff_pk);

/*
 * pgtimewarp_diff_pk(rel regclass, pk jsonb, from_ts timestamptz, to_ts timestamptz)
 *
 * One store statement returns the versions that matter (store_sql.c,
 * diff_sql), in LSN order: up to two at or before the start (the one
 * current there, and the one before it, to tell what it changed), those
 * that began in the window, and the first after it (where the last one
 * ends).
 */
Datum
pgtimewarp_diff_pk(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TargetTable target;
	Relation	rel;
	ArrayType  *key;
	char	   *node_id;
	PGresult   *res;
	Tracking	t;
	Resolved	from;
	Resolved	to;
	TimestampTz from_ts;
	TimestampTz to_ts;
	int			col;
	int			nrows;
	RowVersion *all;
	int			nall = 0;
	RowVersion *versions;
	int			nversions = 0;
	RowVersion *previous = NULL;
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
	node_id = configured_node_id();

	pgtw_await_fresh_history(to_ts);
	res = store_diff(node_id, &target, from_ts, to_ts, key);
	require_tracked(node_id, &target, res);
	diff_result(res, 0, &t, &from, &to, &col);
	t.node_id = node_id;
	t.relid = target.relid;
	check_history_key(&t, &target);
	if (from_ts < t.from_ts && to_ts >= t.from_ts)
	{
		/* "the last day" of a table tracked an hour ago: that hour */
		ereport(NOTICE,
				(errmsg("history of table %s begins at %s, later than from_ts",
						target.display_name, timestamptz_to_cstring(t.from_ts)),
				 errdetail("The timeline shows the versions from when tracking began; from_ts was %s.",
						   timestamptz_to_cstring(from_ts))));
		from_ts = t.from_ts;
	}
	(void) resolve_check(&target, &t, &from, timestamptz_to_cstring(from_ts), false, true);
	(void) resolve_check(&target, &t, &to, timestamptz_to_cstring(to_ts), false, true);
	if (from.have_gap)
		refuse_gap(&target, &from.gap);

	nrows = PQntuples(res);
	all = palloc(sizeof(RowVersion) * Max(nrows, 1));
	for (int row = 0; row < nrows; row++)
	{
		bool		found;

		version_result(res, row, col, &all[nall], &found);
		if (found)
		{
			all[nall].row_data = rename_columns(all[nall].row_data, &t, all[nall].from_lsn);
			nall++;
		}
	}
	pgtw_store_clear(res);

	/*
	 * Versions current at some LSN in [from, to]: the last one at or before
	 * `from`, and those that began up to `to`.  Each ends where the next
	 * begins.
	 */
	versions = all;
	{
		int			at_or_before = 0;

		while (at_or_before < nall && all[at_or_before].from_lsn <= from.lsn)
			at_or_before++;
		if (at_or_before >= 2)
			previous = &all[at_or_before - 2];
		versions = at_or_before > 0 ? &all[at_or_before - 1] : all;
		nversions = 0;
		while (&versions[nversions] < &all[nall] && versions[nversions].from_lsn <= to.lsn)
			nversions++;
	}
	for (int i = 0; i < nversions; i++)
	{
		RowVersion *next = &versions[i + 1] < &all[nall] ? &versions[i + 1] : NULL;

		if (next != NULL)
		{
			versions[i].to_lsn = next->from_lsn;
			versions[i].to_ts = next->from_ts;
		}
	}

	for (int i = 0; i < nversions; i++)
	{
		RowVersion *v = &versions[i];
		Jsonb	   *prev_data = i > 0 ? versions[i - 1].row_data :
			previous ? previous->row_data : NULL;
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
