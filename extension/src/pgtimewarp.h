/*-------------------------------------------------------------------------
 *
 * pgtimewarp.h
 *		What the extension's source files share.
 *
 * Where things live (one concern per file):
 *
 *	pgtimewarp.c	module init
 *	util.c			small helpers, canonical output settings
 *	connection.c	the store connection: built from the foreign server and
 *					user mapping, waiting for answers, errors
 *	remote_xact.c	running statements in a remote transaction tied to the
 *					local one: pipelined batches, savepoints, COPY
 *	store_sql.c		every statement sent to the store, and reading its results
 *	store_values.c	parameters in and values out, binary or text
 *	source.c		the source table: privileges, row security, its key,
 *					the node id and the extension owner
 *	keys.c			canonical keys: JSON key -> text[], long keys' digest
 *	history.c		tracking state: gaps, times before tracking, the horizon
 *	render.c		stored rows back to typed values and JSON
 *	asof.c			asof_pk, asof_pk_lsn, asof_row, asof_pks, asof_table
 *	diff.c			diff_pk
 *	tracking.c		track, untrack, forget, attach
 *	status.c		status, ping, disconnect
 *	horizon.c		how far history is complete "now"
 *
 *-------------------------------------------------------------------------
 */
#ifndef PGTIMEWARP_H
#define PGTIMEWARP_H

#include "access/attnum.h"
#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "libpq-fe.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"

#define PGTW_MESSAGE_PREFIX		"pgtimewarp"
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
	char	   *pk_names_literal;	/* pk_names as a text[] literal, for the store */

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
	bool		same_key;		/* keyed by the table's primary key of now */
	char	   *pk_columns;		/* the key history is keyed by, as text[] text */
	/* [{"lsn", "old", "new"}] in LSN order, or NULL when no column was renamed */
	Jsonb	   *column_renames;
	/* [{"lsn", "attnum"}]: columns added since tracking began, or NULL */
	Jsonb	   *column_additions;
} Tracking;

/*
 * How a time or LSN asked for maps to a position in history.  The store
 * statement computes it (store_sql.c, AT_TIME and AT_LSN), and so does
 * resolve_check() from what the statement returns, for the warnings and
 * errors.
 */
typedef enum AtBranch
{
	AT_BEFORE = 'b',			/* before tracking began: an error */
	AT_STOPPED = 's',			/* at or after tracking stopped */
	AT_HORIZON = 'h',			/* later than the history stored */
	AT_MAP = 'm'				/* resolved through lsn_time_map (or an LSN) */
} AtBranch;

typedef struct Resolved
{
	AtBranch	branch;
	XLogRecPtr	mapped_lsn;		/* lsn_time_map's answer, or the LSN asked */
	bool		mapped_null;
	XLogRecPtr	store_lsn;		/* the position the store statement used */
	XLogRecPtr	lsn;			/* the position the answer is for */
	bool		have_gap;		/* the first recorded gap the answer crosses */
	HistoryGap	gap;
} Resolved;

/* One version of one row. */
typedef struct RowVersion
{
	XLogRecPtr	from_lsn;
	XLogRecPtr	to_lsn;			/* InvalidXLogRecPtr while open */
	TimestampTz from_ts;
	TimestampTz to_ts;
	const char *op;
	Jsonb	   *row_data;		/* NULL for delete and truncate tombstones */
} RowVersion;

/* util.c */
extern void require_argument(FunctionCallInfo fcinfo, int argno, const char *name);
extern char *lsn_to_cstring(XLogRecPtr lsn);
extern char *timestamptz_to_cstring(TimestampTz ts);
extern char *join_names(char **names, int n);
extern int	canonical_settings_begin(void);
extern void canonical_settings_end(int level);

/* remote_xact.c (connection.c: the connection itself) */
typedef struct StoreStatement
{
	const char *name;			/* prepared once per connection; NULL: unnamed */
	const char *sql;
	int			nparams;
	const Oid  *types;			/* parameter types (binary ones need theirs) */
	const char *const *values;	/* text, or binary (formats[i] == 1) */
	const int  *lengths;
	const int  *formats;
	bool		binary_result;
	bool		write;			/* changes the store: commit must be confirmed */
	PGresult   *result;			/* out */
} StoreStatement;

extern void pgtw_store_run(StoreStatement *stmts, int n);
extern uint64 pgtw_store_snapshot_id(void);
extern bool pgtw_store_disconnect(void);
extern void pgtw_store_copy_begin(const char *sql);
extern void pgtw_store_copy_data(const char *data, int len);
extern int64 pgtw_store_copy_end(const char *sql);
extern void pgtw_store_clear(PGresult *res);
extern void pgtw_connection_init(void);
extern void pgtw_remote_xact_init(void);

/* store_sql.c, store_values.c */
#define VERSION_RESULT_COLUMNS 4	/* version_result() reads this many */
typedef struct StoreParams
{
	int			n;
	Oid			types[12];
	const char *values[12];
	int			lengths[12];
	int			formats[12];
} StoreParams;

extern void param_text(StoreParams *p, Oid type, const char *value);
extern void param_uint32(StoreParams *p, Oid type, uint32 value);
extern void param_uint64(StoreParams *p, Oid type, uint64 value);
#define param_int4(p, v) param_uint32((p), INT4OID, (uint32) (v))
#define param_oid(p, v) param_uint32((p), OIDOID, (uint32) (v))
#define param_lsn(p, v) param_uint64((p), LSNOID, (uint64) (v))
#define param_ts(p, v) param_uint64((p), TIMESTAMPTZOID, (uint64) (v))
extern void param_null(StoreParams *p, Oid type);
extern bool result_null(PGresult *res, int row, int col);
extern const char *result_binary(PGresult *res, int row, int col, int len);
extern char *text_array_literal(ArrayType *a);
extern int32 result_int4(PGresult *res, int row, int col);
extern int64 result_int8(PGresult *res, int row, int col);
extern XLogRecPtr result_lsn(PGresult *res, int row, int col);
extern TimestampTz result_ts(PGresult *res, int row, int col);
extern bool result_bool(PGresult *res, int row, int col);
extern char *result_text(PGresult *res, int row, int col);
extern Jsonb *result_jsonb(PGresult *res, int row, int col);
extern const char *op_name(char code);

typedef enum LookupKind
{
	LOOKUP_AT_TIME,
	LOOKUP_AT_LSN
} LookupKind;

extern PGresult *store_lookup(const char *node_id, TargetTable *target, LookupKind kind,
							  int64 at, ArrayType *key);
extern PGresult *store_probe(int32 relation_id, ArrayType *key, XLogRecPtr lsn);
extern PGresult *store_lookup_many(const char *node_id, TargetTable *target,
								   TimestampTz at, int nkeys, ArrayType **keys);
extern PGresult *store_diff(const char *node_id, TargetTable *target, TimestampTz from_ts,
							TimestampTz to_ts, ArrayType *key);
extern void lookup_result(PGresult *res, int row, Tracking *t, Resolved *at, int *next_col);
extern void diff_result(PGresult *res, int row, Tracking *t, Resolved *from, Resolved *to,
						int *next_col);
extern void statement_params(StoreStatement *s, StoreParams *p);
extern PGresult *store_write(const char *sql, StoreParams *p);
extern PGresult *store_read(const char *sql, StoreParams *p);
extern PGresult *store_read_text(const char *sql, StoreParams *p);
extern char *table_cursor_sql(const char *cursor, Tracking *t, Relation rel, XLogRecPtr at_lsn);
extern void version_result(PGresult *res, int row, int col, RowVersion *v, bool *found);
extern Tracking *store_fetch_tracking(const char *node_id, TargetTable *target);
extern Tracking *store_tracking_by_name(const char *node_id, TargetTable *target);

/* source.c */
extern Oid	extension_owner(void);
extern char *configured_node_id(void);
extern void describe_target(Relation rel, TargetTable *target);
extern char *relation_display_name(Relation rel);
extern void require_relation_exists(Oid relid);
extern void check_schema_usage(Oid relid);
extern Relation open_for_history(Oid relid, TargetTable *target);
extern Oid	table_of_row_type(FunctionCallInfo fcinfo, const char *fname, const char *example);
extern void local_begin(void);
extern void local_end(void);
extern void local_execute(const char *sql, int expected);

/* keys.c */
extern ArrayType *encode_pk(Relation rel, TargetTable *target, Jsonb *pk);
extern ArrayType *index_key_of(ArrayType *key);
extern Datum normalize_key_value(Datum value, Oid typid);

/* history.c */
extern void require_same_table(Tracking *t, TargetTable *target);
extern void check_history_key(Tracking *t, TargetTable *target);
extern void error_not_tracked(const char *node_id, TargetTable *target);
extern void require_tracked(const char *node_id, TargetTable *target, PGresult *res);
extern XLogRecPtr resolve_check(TargetTable *target, Tracking *t, Resolved *r,
								const char *asked, bool by_lsn, bool warn);
extern void refuse_gap(TargetTable *target, HistoryGap *g);

/* render.c */
typedef struct ParseJob
{
	int			n;
	Form_pg_attribute *attrs;
	char	  **texts;
	bool		keep_typmod;	/* apply the column's typmod (asof_row) or not */
	Datum	   *values;
	int			done;			/* values parsed so far: the failing one is next */
} ParseJob;

extern ErrorData *parse_job_try(ParseJob *job);
extern int	find_column(TupleDesc tupdesc, const char *name, int len);
extern void row_data_to_datums(Jsonb *row_data, TimestampTz version_ts, TupleDesc tupdesc,
							   Datum *values, bool *nulls);
extern Jsonb *row_data_to_json(Jsonb *row_data, TupleDesc tupdesc, bool show_former_columns);
extern Datum changed_columns(TupleDesc tupdesc, Jsonb *prev, Jsonb *cur, bool show_former_columns);
extern Jsonb *rename_columns(Jsonb *row_data, Tracking *t, XLogRecPtr version_lsn);
extern bool column_addition(Tracking *t, AttrNumber attnum, XLogRecPtr *added_lsn);
extern bool column_missing_text(Relation rel, AttrNumber attnum, char **text);
extern Jsonb *fill_added_columns(Jsonb *row_data, Relation rel, Tracking *t,
								 XLogRecPtr version_lsn, XLogRecPtr at_lsn, bool typed);

/* horizon.c */
extern void pgtw_horizon_init(void);
extern void pgtw_note_store_read(void);
extern void pgtw_fresh_point(XLogRecPtr *lsn, TimestampTz *ts);
extern void pgtw_await_fresh_history(TimestampTz at);
extern void pgtw_saw_horizon(TimestampTz horizon_ts);

#endif							/* PGTIMEWARP_H */
