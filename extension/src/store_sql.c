/*-------------------------------------------------------------------------
 *
 * store_sql.c
 *		The statements pgtimewarp sends to the store, and reading their
 *		results.
 *
 * Every read answers in one statement: the table's tracking state (found
 * by the source table's OID), how the time asked for maps to a position in
 * history, the first recorded gap the answer would cross, and the versions
 * themselves.  Tracking state is therefore never cached across statements,
 * and another session's track, untrack or forget is seen by the next
 * statement that reads the store, with nothing to invalidate.
 *
 * Parameters and results go in binary where their form is fixed and as
 * text where it is the store's own (store_values.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/tupdesc.h"
#include "utils/rel.h"
#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/pg_lsn.h"

#include "pgtimewarp.h"

/* ----------------------------------------------------------------
 * Tracking state and time, in SQL
 * ----------------------------------------------------------------
 */

/*
 * The live incarnation recorded from the table with this OID (the agent
 * follows renames; dropped incarnations belong to dropped tables) and how
 * far its history is complete.  $1 node id, $2 the table's OID, $3 its
 * primary key columns, $4/$5 the fresh point (horizon.c): a checkpoint at
 * or past $4 makes history complete up to $5.
 */
#define TRACKING_CTE \
	"WITH r AS (" \
	" SELECT r.relation_id, r.pk_columns = $3::text[] AS same_key, r.pk_columns::text AS pk_columns," \
	"        r.tracked_from_lsn AS from_lsn, r.tracked_from_ts AS from_ts," \
	"        r.untracked_lsn, r.untracked_ts, nullif(r.column_renames, '[]')::text AS renames," \
	"        nullif(r.column_additions, '[]')::text AS additions," \
	"        greatest(r.tracked_from_lsn, c.confirmed_lsn) AS h_lsn," \
	"        CASE WHEN c.confirmed_lsn > r.tracked_from_lsn" \
	"             THEN greatest(r.tracked_from_ts, c.confirmed_ts) ELSE r.tracked_from_ts END AS h_ts0" \
	"   FROM pgtimewarp_store.tracked_relations r" \
	"   LEFT JOIN pgtimewarp_store.wal_checkpoints c ON c.node_id = r.node_id" \
	"  WHERE r.node_id = $1 AND r.relid = $2 AND r.dropped_lsn IS NULL)," \
	" h AS (" \
	" SELECT r.*, CASE WHEN r.h_lsn >= $4 AND $5 > r.h_ts0 THEN $5 ELSE r.h_ts0 END AS h_ts FROM r) "

/* its columns, as lookup_result() reads them (TRACKING_NCOLS) */
#define TRACKING_COLUMNS \
	"h.relation_id, h.same_key, h.pk_columns, h.from_lsn, h.from_ts, h.untracked_lsn," \
	" h.untracked_ts, h.renames, h.h_lsn, h.h_ts, h.additions"
#define TRACKING_NCOLS 11

/*
 * OFFSET 0 keeps the planner from pulling these subqueries up into the
 * expressions that use their columns, which would evaluate the time lookup
 * once per use.
 *
 * The position a time stands for (resolve_check() in history.c has the
 * same rules and says why): the last commit in LSN order whose time is
 * <= ts (lsn_time_map's resolve_ts makes that one index probe), clamped to
 * where tracking began and stopped, or the horizon for a time beyond it.
 */
#define AT_TIME(ts) \
	" CROSS JOIN LATERAL (" \
	" SELECT q.branch, q.mapped, CASE q.branch WHEN 'b' THEN NULL::pg_lsn" \
	"        WHEN 's' THEN h.untracked_lsn WHEN 'h' THEN h.h_lsn" \
	"        WHEN 'm' THEN CASE WHEN h.untracked_lsn < greatest(h.from_lsn, q.mapped)" \
	"                      THEN h.untracked_lsn ELSE greatest(h.from_lsn, q.mapped) END END AS lsn" \
	"   FROM (SELECT CASE WHEN " ts " < h.from_ts THEN 'b'" \
	"                     WHEN h.untracked_ts IS NOT NULL AND " ts " >= h.untracked_ts THEN 's'" \
	"                     WHEN " ts " > h.h_ts THEN 'h' ELSE 'm' END::\"char\" AS branch," \
	"                (SELECT m.lsn FROM pgtimewarp_store.lsn_time_map m" \
	"                  WHERE m.node_id = $1 AND m.resolve_ts <= " ts \
	"                  ORDER BY m.resolve_ts DESC, m.lsn DESC LIMIT 1) AS mapped OFFSET 0) q" \
	"  OFFSET 0) "

#define AT_LSN(lsn) \
	" CROSS JOIN LATERAL (" \
	" SELECT q.branch, " lsn " AS mapped, CASE q.branch WHEN 'b' THEN NULL::pg_lsn" \
	"        WHEN 's' THEN h.untracked_lsn ELSE " lsn " END AS lsn" \
	"   FROM (SELECT CASE WHEN " lsn " < h.from_lsn THEN 'b'" \
	"                     WHEN h.untracked_lsn IS NOT NULL AND " lsn " > h.untracked_lsn THEN 's'" \
	"                     ELSE 'm' END::\"char\" AS branch OFFSET 0) q OFFSET 0) "

#define AT_COLUMNS(a) a ".branch, " a ".mapped, " a ".lsn"
#define AT_NCOLS 3

/* The first gap recorded in [from, to]: a version visible at `from` began before it. */
#define GAP(from, to) \
	" LEFT JOIN LATERAL (" \
	" SELECT g.from_lsn, g.from_ts, g.to_lsn, g.to_ts, g.reason" \
	"   FROM pgtimewarp_store.history_gaps g" \
	"  WHERE g.relation_id = h.relation_id AND g.from_lsn <= " to \
	"    AND (g.to_lsn IS NULL OR g.to_lsn > " from ")" \
	"  ORDER BY g.from_lsn LIMIT 1) g ON true "
#define GAP_COLUMNS "g.from_lsn, g.from_ts, g.to_lsn, g.to_ts, g.reason"
#define GAP_NCOLS 5

/*
 * A version of a key: versions are append-only, and one ends where the
 * key's next one begins (migrations/2_compact_versions.sql).  A long key is
 * indexed by its digest and compared whole (pk_full).
 */
#define VERSION_COLUMNS "v.valid_from_lsn, v.valid_from_ts, v.op, v.row_data"
#define VERSION_NCOLS 4
#define KEY_MATCHES(idx, full) \
	"v.relation_id = h.relation_id AND v.pk = " idx " AND v.pk_full IS NOT DISTINCT FROM " full

/* one key ($7, $8) at the position `at` stands for (AT_TIME or AT_LSN of $6) */
#define LOOKUP_SQL(at) \
	TRACKING_CTE \
	"SELECT " TRACKING_COLUMNS ", " AT_COLUMNS("a") ", " GAP_COLUMNS ", " VERSION_COLUMNS \
	"  FROM h" at " a" GAP("a.lsn", "a.lsn") \
	"  LEFT JOIN LATERAL (SELECT " VERSION_COLUMNS " FROM pgtimewarp_store.row_versions v" \
	"  WHERE " KEY_MATCHES("$7::text[]", "$8::text[]") " AND v.valid_from_lsn <= a.lsn" \
	"  ORDER BY v.valid_from_lsn DESC LIMIT 1) v ON true"

static const char *const lookup_time_sql = LOOKUP_SQL(AT_TIME("$6"));
static const char *const lookup_lsn_sql = LOOKUP_SQL(AT_LSN("$6"));

/* many keys at one time: $7 and $8 are arrays of text[] literals, one per key */
static const char *const lookup_many_sql =
	TRACKING_CTE
	"SELECT " TRACKING_COLUMNS ", " AT_COLUMNS("a") ", " GAP_COLUMNS ", "
	"       kv.valid_from_lsn, kv.valid_from_ts, kv.op, kv.row_data, kv.i"
	"  FROM h" AT_TIME("$6") " a" GAP("a.lsn", "a.lsn")
	"  LEFT JOIN LATERAL (SELECT k.i, " VERSION_COLUMNS
	"  FROM unnest($7::text[], $8::text[]) WITH ORDINALITY AS k(idx, full_key, i)"
	"  LEFT JOIN LATERAL (SELECT " VERSION_COLUMNS " FROM pgtimewarp_store.row_versions v"
	"  WHERE " KEY_MATCHES("k.idx::text[]", "k.full_key::text[]") " AND v.valid_from_lsn <= a.lsn"
	"  ORDER BY v.valid_from_lsn DESC LIMIT 1) v ON true) kv ON true"
	" ORDER BY kv.i";

/*
 * A key's timeline between two times: the two versions at or before the
 * start (the one current there, and the one before it, to tell what it
 * changed), those that began in the window, and the first after it (where
 * the last one ends).  A start before tracking is clamped to its beginning
 * when the end is not.
 */
static const char *const diff_sql =
	TRACKING_CTE
	"SELECT " TRACKING_COLUMNS ", " AT_COLUMNS("f") ", " AT_COLUMNS("t") ", " GAP_COLUMNS ", "
	VERSION_COLUMNS
	"  FROM h CROSS JOIN LATERAL (SELECT CASE WHEN $6 < h.from_ts AND $7 >= h.from_ts"
	"                                    THEN h.from_ts ELSE $6 END AS ts) fts"
	AT_TIME("fts.ts") " f" AT_TIME("$7") " t" GAP("f.lsn", "t.lsn")
	"  LEFT JOIN LATERAL ("
	"  (SELECT " VERSION_COLUMNS " FROM pgtimewarp_store.row_versions v"
	"    WHERE " KEY_MATCHES("$8::text[]", "$9::text[]") " AND v.valid_from_lsn <= f.lsn"
	"    ORDER BY v.valid_from_lsn DESC LIMIT 2)"
	"  UNION ALL"
	"  (SELECT " VERSION_COLUMNS " FROM pgtimewarp_store.row_versions v"
	"    WHERE " KEY_MATCHES("$8::text[]", "$9::text[]")
	"      AND v.valid_from_lsn > f.lsn AND v.valid_from_lsn <= t.lsn)"
	"  UNION ALL"
	"  (SELECT " VERSION_COLUMNS " FROM pgtimewarp_store.row_versions v"
	"    WHERE " KEY_MATCHES("$8::text[]", "$9::text[]") " AND v.valid_from_lsn > t.lsn"
	"    ORDER BY v.valid_from_lsn LIMIT 1)) v ON true"
	" ORDER BY v.valid_from_lsn";

/* the first five parameters of every statement above */
static void
tracking_params(StoreParams *p, const char *node_id, TargetTable *target)
{
	XLogRecPtr	fresh_lsn;
	TimestampTz fresh_ts;

	pgtw_fresh_point(&fresh_lsn, &fresh_ts);
	p->n = 0;
	param_text(p, TEXTOID, node_id);
	param_oid(p, target->relid);
	param_text(p, TEXTARRAYOID, target->pk_names_literal);
	param_lsn(p, fresh_lsn);
	param_ts(p, fresh_ts);
}

static void
key_params(StoreParams *p, ArrayType *key)
{
	ArrayType  *index;

	if (key == NULL)
	{
		param_null(p, TEXTARRAYOID);
		param_null(p, TEXTARRAYOID);
		return;
	}
	index = index_key_of(key);
	param_text(p, TEXTARRAYOID, text_array_literal(index));
	if (index == key)
		param_null(p, TEXTARRAYOID);
	else
		param_text(p, TEXTARRAYOID, text_array_literal(key));
}

/* `s` with the parameters `p` (none when NULL). */
void
statement_params(StoreStatement *s, StoreParams *p)
{
	s->nparams = p ? p->n : 0;
	s->types = p ? p->types : NULL;
	s->values = p ? p->values : NULL;
	s->lengths = p ? p->lengths : NULL;
	s->formats = p ? p->formats : NULL;
}

/* Run one statement (prepared once per connection when named); returns its result. */
static PGresult *
run_one(const char *name, const char *sql, StoreParams *p, bool binary, bool write)
{
	StoreStatement s = {0};

	s.name = name;
	s.sql = sql;
	statement_params(&s, p);
	s.binary_result = binary;
	s.write = write;
	pgtw_store_run(&s, 1);
	return s.result;
}

static PGresult *
run_read(const char *name, const char *sql, StoreParams *p)
{
	return run_one(name, sql, p, true, false);
}

/*
 * The version of `key` (NULL: none, for the tracking state alone) visible
 * at `at`, a timestamptz or an LSN, with the tracking state: no rows when
 * the table is not tracked, else one.
 */
PGresult *
store_lookup(const char *node_id, TargetTable *target, LookupKind kind, int64 at,
			 ArrayType *key)
{
	StoreParams p;

	tracking_params(&p, node_id, target);
	if (kind == LOOKUP_AT_TIME)
		param_ts(&p, (TimestampTz) at);
	else
		param_lsn(&p, (XLogRecPtr) at);
	key_params(&p, key);
	if (kind == LOOKUP_AT_TIME)
		return run_read("pgtw_lookup_time", lookup_time_sql, &p);
	return run_read("pgtw_lookup_lsn", lookup_lsn_sql, &p);
}

/*
 * The version of `key` visible at `lsn` in the tracked incarnation
 * relation_id: for a call that knows the tracking state already, in this
 * store snapshot (asof.c).  VERSION_RESULT_COLUMNS columns, no row when
 * there is none.
 */
PGresult *
store_probe(int32 relation_id, ArrayType *key, XLogRecPtr lsn)
{
	StoreParams p;

	p.n = 0;
	param_int4(&p, relation_id);
	key_params(&p, key);
	param_lsn(&p, lsn);
	return run_read("pgtw_probe",
					"SELECT " VERSION_COLUMNS " FROM pgtimewarp_store.row_versions v"
					" WHERE v.relation_id = $1 AND v.pk = $2::text[]"
					"   AND v.pk_full IS NOT DISTINCT FROM $3::text[] AND v.valid_from_lsn <= $4"
					" ORDER BY v.valid_from_lsn DESC LIMIT 1", &p);
}

/* Many keys at one time: a row per key, in order (the last column) */
PGresult *
store_lookup_many(const char *node_id, TargetTable *target, TimestampTz at,
				  int nkeys, ArrayType **keys)
{
	StoreParams p;
	Datum	   *idx = palloc(sizeof(Datum) * Max(nkeys, 1));
	Datum	   *full = palloc(sizeof(Datum) * Max(nkeys, 1));
	bool	   *full_nulls = palloc(sizeof(bool) * Max(nkeys, 1));
	int			dims[1] = {nkeys};
	int			lbs[1] = {1};

	for (int i = 0; i < nkeys; i++)
	{
		ArrayType  *index = index_key_of(keys[i]);

		idx[i] = CStringGetTextDatum(text_array_literal(index));
		full_nulls[i] = index == keys[i];
		full[i] = full_nulls[i] ? (Datum) 0 : CStringGetTextDatum(text_array_literal(keys[i]));
	}
	tracking_params(&p, node_id, target);
	param_ts(&p, at);
	param_text(&p, TEXTARRAYOID,
			   text_array_literal(construct_md_array(idx, NULL, 1, dims, lbs,
													 TEXTOID, -1, false, TYPALIGN_INT)));
	param_text(&p, TEXTARRAYOID,
			   text_array_literal(construct_md_array(full, full_nulls, 1, dims, lbs,
													 TEXTOID, -1, false, TYPALIGN_INT)));
	return run_read("pgtw_lookup_many", lookup_many_sql, &p);
}

PGresult *
store_diff(const char *node_id, TargetTable *target, TimestampTz from_ts,
		   TimestampTz to_ts, ArrayType *key)
{
	StoreParams p;

	tracking_params(&p, node_id, target);
	param_ts(&p, from_ts);
	param_ts(&p, to_ts);
	key_params(&p, key);
	return run_read("pgtw_diff", diff_sql, &p);
}

/* The tracking state in row `row` of a lookup's result, and the columns after it. */
static void
tracking_result(PGresult *res, int row, Tracking *t)
{
	memset(t, 0, sizeof(Tracking));
	t->relation_id = result_int4(res, row, 0);
	t->same_key = result_bool(res, row, 1);
	t->pk_columns = result_text(res, row, 2);
	t->from_lsn = result_lsn(res, row, 3);
	t->from_ts = result_ts(res, row, 4);
	t->untracked = !result_null(res, row, 5);
	if (t->untracked)
	{
		t->untracked_lsn = result_lsn(res, row, 5);
		t->untracked_ts = result_ts(res, row, 6);
	}
	if (!result_null(res, row, 7))
		t->column_renames = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
															   CStringGetDatum(result_text(res, row, 7))));
	t->horizon_lsn = result_lsn(res, row, 8);
	t->horizon_ts = result_ts(res, row, 9);
	if (!result_null(res, row, 10))
		t->column_additions = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
																 CStringGetDatum(result_text(res, row, 10))));
	pgtw_saw_horizon(t->horizon_ts);
}

static void
at_result(PGresult *res, int row, int col, Resolved *r)
{
	r->branch = (AtBranch) *result_binary(res, row, col, 1);
	r->mapped_null = result_null(res, row, col + 1);
	r->mapped_lsn = r->mapped_null ? InvalidXLogRecPtr : result_lsn(res, row, col + 1);
	r->store_lsn = result_null(res, row, col + 2) ? InvalidXLogRecPtr :
		result_lsn(res, row, col + 2);
	r->have_gap = false;
}

static void
gap_result(PGresult *res, int row, int col, Resolved *r)
{
	r->have_gap = !result_null(res, row, col);
	if (!r->have_gap)
		return;
	r->gap.from_lsn = result_lsn(res, row, col);
	r->gap.from_ts = result_ts(res, row, col + 1);
	r->gap.to_lsn = result_null(res, row, col + 2) ? InvalidXLogRecPtr :
		result_lsn(res, row, col + 2);
	r->gap.to_ts = result_null(res, row, col + 3) ? 0 : result_ts(res, row, col + 3);
	r->gap.reason = result_text(res, row, col + 4);
}

/*
 * Row `row` of a lookup (store_lookup, store_lookup_many): the tracking
 * state, the position asked for and the gap it crosses; *next_col is where
 * the version's columns begin.
 */
void
lookup_result(PGresult *res, int row, Tracking *t, Resolved *at, int *next_col)
{
	tracking_result(res, row, t);
	at_result(res, row, TRACKING_NCOLS, at);
	gap_result(res, row, TRACKING_NCOLS + AT_NCOLS, at);
	*next_col = TRACKING_NCOLS + AT_NCOLS + GAP_NCOLS;
}

/* Row `row` of store_diff: the tracking state, both ends, the gap between. */
void
diff_result(PGresult *res, int row, Tracking *t, Resolved *from, Resolved *to,
			int *next_col)
{
	tracking_result(res, row, t);
	at_result(res, row, TRACKING_NCOLS, from);
	at_result(res, row, TRACKING_NCOLS + AT_NCOLS, to);
	gap_result(res, row, TRACKING_NCOLS + 2 * AT_NCOLS, from);
	*next_col = TRACKING_NCOLS + 2 * AT_NCOLS + GAP_NCOLS;
}

/* The version in columns col.. of row `row`; *found false when there is none. */
void
version_result(PGresult *res, int row, int col, RowVersion *v, bool *found)
{
	*found = !result_null(res, row, col);
	if (!*found)
		return;
	v->from_lsn = result_lsn(res, row, col);
	v->from_ts = result_ts(res, row, col + 1);
	v->op = op_name(*result_binary(res, row, col + 2, 1));
	v->row_data = result_null(res, row, col + 3) ? NULL : result_jsonb(res, row, col + 3);
	/* the caller knows the end, if it needs it, from the next version */
	v->to_lsn = InvalidXLogRecPtr;
	v->to_ts = 0;
}

/* ----------------------------------------------------------------
 * Tracking state for track, untrack, forget and attach
 * ----------------------------------------------------------------
 */

/*
 * The live incarnation recorded from `target` (by OID), else one live
 * under its name recorded from another table (require_same_table() says
 * so), else NULL.
 */
static Tracking *
fetch_tracking(const char *node_id, TargetTable *target, bool by_oid)
{
	StoreParams p;
	PGresult   *res;
	Tracking   *t;

	p.n = 0;
	param_text(&p, TEXTOID, node_id);
	param_text(&p, TEXTOID, target->schema_name);
	param_text(&p, TEXTOID, target->table_name);
	param_oid(&p, by_oid ? target->relid : InvalidOid);
	param_text(&p, TEXTARRAYOID, target->pk_names_literal);
	res = run_read("pgtw_tracking",
				   "SELECT r.relation_id, r.pk_columns = $5::text[], r.pk_columns::text,"
				   "       r.tracked_from_lsn, r.tracked_from_ts, r.untracked_lsn, r.untracked_ts,"
				   "       r.relid"
				   "  FROM pgtimewarp_store.tracked_relations r"
				   " WHERE r.node_id = $1 AND r.dropped_lsn IS NULL"
				   "   AND (r.relid = $4 OR (r.schema_name = $2 AND r.table_name = $3))"
				   " ORDER BY r.relid IS NOT DISTINCT FROM $4 DESC, r.relation_id DESC LIMIT 1",
				   &p);
	if (PQntuples(res) == 0)
	{
		pgtw_store_clear(res);
		return NULL;
	}
	t = palloc0(sizeof(Tracking));
	t->node_id = pstrdup(node_id);
	t->relation_id = result_int4(res, 0, 0);
	t->same_key = result_bool(res, 0, 1);
	t->pk_columns = result_text(res, 0, 2);
	t->from_lsn = result_lsn(res, 0, 3);
	t->from_ts = result_ts(res, 0, 4);
	t->untracked = !result_null(res, 0, 5);
	if (t->untracked)
	{
		t->untracked_lsn = result_lsn(res, 0, 5);
		t->untracked_ts = result_ts(res, 0, 6);
	}
	t->relid = result_null(res, 0, 7) ? InvalidOid : (Oid) result_int4(res, 0, 7);
	pgtw_store_clear(res);
	return t;
}

Tracking *
store_fetch_tracking(const char *node_id, TargetTable *target)
{
	return fetch_tracking(node_id, target, true);
}

/* For a lookup that found nothing by OID: what lives under the name, if anything. */
Tracking *
store_tracking_by_name(const char *node_id, TargetTable *target)
{
	return fetch_tracking(node_id, target, false);
}

/* ----------------------------------------------------------------
 * Writes
 * ----------------------------------------------------------------
 */

/* Run one writing statement; returns its result (to clear). */
PGresult *
store_write(const char *sql, StoreParams *p)
{
	return run_one(NULL, sql, p, true, true);
}

/* Run one statement whose text result the caller reads (status, ping). */
PGresult *
store_read_text(const char *sql, StoreParams *p)
{
	return run_one(NULL, sql, p, false, false);
}

/* Run one reading statement with binary results. */
PGresult *
store_read(const char *sql, StoreParams *p)
{
	return run_read(NULL, sql, p);
}

/* ----------------------------------------------------------------
 * A whole table
 * ----------------------------------------------------------------
 */

/* The i-th column rename of t: its LSN, old and new names. */
static void
column_rename(Tracking *t, int i, char **lsn, char **old, char **new)
{
	JsonbValue *e = getIthJsonbValueFromContainer(&t->column_renames->root, i);
	JsonbValue *v[3];
	const char *keys[3] = {"lsn", "old", "new"};
	char	  **out[3] = {lsn, old, new};

	for (int k = 0; k < 3; k++)
	{
		v[k] = e && e->type == jbvBinary ?
			getKeyJsonValueFromContainer(e->val.binary.data, keys[k], 3, NULL) : NULL;
		if (v[k] == NULL || v[k]->type != jbvString)
			elog(ERROR, "malformed column rename in the pgtimewarp store");
		*out[k] = pnstrdup(v[k]->val.string.val, v[k]->val.string.len);
	}
}

/*
 * The text a version stored for the column called `name` now.  A version
 * written at LSN v reads each key through the renames at LSNs >= v, in
 * order (render.c rename_columns() does it for one row): so between two
 * renames' LSNs, the stored keys that read as `name` are those whose walk
 * through the renames still ahead ends at `name` (a version of the renaming
 * transaction itself may have the old name or the new).
 */
static char *
stored_column_sql(Tracking *t, const char *name)
{
	StringInfoData sql;
	int			n;
	char	  **lsns;
	char	  **olds;
	char	  **news;

	if (t->column_renames == NULL || !JB_ROOT_IS_ARRAY(t->column_renames) ||
		(n = JB_ROOT_COUNT(t->column_renames)) == 0)
		return psprintf("v.row_data ->> %s", quote_literal_cstr(name));

	lsns = palloc(sizeof(char *) * n);
	olds = palloc(sizeof(char *) * n);
	news = palloc(sizeof(char *) * n);
	for (int i = 0; i < n; i++)
		column_rename(t, i, &lsns[i], &olds[i], &news[i]);

	initStringInfo(&sql);
	appendStringInfoString(&sql, "CASE");
	for (int from = 0; from < n; from++)
	{
		/* candidates: the name itself and every name a rename mentions */
		int			ncand = 2 * n + 1;
		bool		first = true;

		if (from > 0 && strcmp(lsns[from], lsns[from - 1]) == 0)
			continue;			/* same LSN: the interval was written already */
		appendStringInfo(&sql, " WHEN v.valid_from_lsn <= %s::pg_lsn THEN coalesce(",
						 quote_literal_cstr(lsns[from]));
		for (int c = 0; c < ncand; c++)
		{
			const char *cand = c == 0 ? name : c <= n ? olds[c - 1] : news[c - n - 1];
			const char *walked = cand;
			bool		seen = false;

			for (int d = 0; d < c && !seen; d++)
				seen = strcmp(d == 0 ? name : d <= n ? olds[d - 1] : news[d - n - 1], cand) == 0;
			if (seen)
				continue;
			for (int i = from; i < n; i++)
				if (strcmp(walked, olds[i]) == 0)
					walked = news[i];
			if (strcmp(walked, name) != 0)
				continue;
			appendStringInfo(&sql, "%sv.row_data ->> %s", first ? "" : ", ",
							 quote_literal_cstr(cand));
			first = false;
		}
		if (first)
			appendStringInfoString(&sql, "NULL");
		appendStringInfoChar(&sql, ')');
	}
	appendStringInfo(&sql, " ELSE v.row_data ->> %s END", quote_literal_cstr(name));
	return sql.data;
}

/*
 * DECLARE a cursor over the rows of a table as they were at LSN $2 (=
 * at_lsn): each key's latest version at or before it, unless that is a
 * tombstone.  The columns are the commit time of each row's version, then
 * one text per column of the table (NULL for dropped ones), as stored, or
 * the column's missing value for a version from before it was added.  $1 is the
 * tracked incarnation.  The store walks its primary key index backwards,
 * so each key's latest version comes first.
 */
char *
table_cursor_sql(const char *cursor, Tracking *t, Relation rel, XLogRecPtr at_lsn)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfo(&sql, "DECLARE %s NO SCROLL CURSOR FOR SELECT v.valid_from_ts", cursor);
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(tupdesc, i);
		XLogRecPtr	added_lsn;
		char	   *missing;

		if (attr->attisdropped)
			appendStringInfoString(&sql, ", NULL::text");
		else if (column_addition(t, attr->attnum, &added_lsn))
		{
			/*
			 * render.c fill_added_columns(), for a whole table: a version from
			 * before the column was added reads its missing value from the
			 * addition on, and has no value for it before
			 */
			if (at_lsn < added_lsn || !column_missing_text(rel, attr->attnum, &missing))
				missing = NULL;
			if (at_lsn < added_lsn)
				appendStringInfoString(&sql, ", NULL::text");
			else
				appendStringInfo(&sql, ", CASE WHEN v.valid_from_lsn < %s::pg_lsn THEN %s ELSE %s END",
								 quote_literal_cstr(lsn_to_cstring(added_lsn)),
								 missing ? quote_literal_cstr(missing) : "NULL",
								 stored_column_sql(t, NameStr(attr->attname)));
		}
		else
			appendStringInfo(&sql, ", %s", stored_column_sql(t, NameStr(attr->attname)));
	}
	appendStringInfoString(&sql,
						   " FROM (SELECT DISTINCT ON (v.pk) v.valid_from_lsn, v.valid_from_ts, v.op, v.row_data"
						   "         FROM pgtimewarp_store.row_versions v"
						   "        WHERE v.relation_id = $1 AND v.valid_from_lsn <= $2"
						   "        ORDER BY v.pk DESC, v.valid_from_lsn DESC) v"
						   " WHERE v.op NOT IN ('d', 't')");
	return sql.data;
}
