/*-------------------------------------------------------------------------
 *
 * history.c
 *		What the store's tracking state says about an answer: whose history
 *		it is, how far it goes, and where it has gaps.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"

#include "pgtimewarp.h"

/*
 * A tracked table's history belongs to that table, not to its name: a
 * table created later under the name (after a DROP, or by pg_restore) gets
 * a new OID, and reads, extends or deletes none of it until a privileged
 * role says it is the same table (pgtimewarp_attach).
 */
void
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

/* Errors when the table's primary key is not the one its history is keyed by. */
void
check_history_key(Tracking *t, TargetTable *target)
{
	ArrayType  *old;
	Datum	   *names;
	int			nnames;
	char	  **old_names;

	if (t->same_key)
		return;
	old = DatumGetArrayTypeP(OidInputFunctionCall(F_ARRAY_IN, t->pk_columns, TEXTOID, -1));
	deconstruct_array(old, TEXTOID, -1, false, TYPALIGN_INT, &names, NULL, &nnames);
	old_names = palloc(sizeof(char *) * Max(nnames, 1));
	for (int i = 0; i < nnames; i++)
		old_names[i] = TextDatumGetCString(names[i]);
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("primary key of table %s changed since tracking began",
					target->display_name),
			 errdetail("History is keyed by (%s); the table's primary key is now (%s).",
					   join_names(old_names, nnames),
					   join_names(target->pk_names, target->npk)),
			 errhint("Restore the original primary key to read this history.")));
}

void
error_not_tracked(const char *node_id, TargetTable *target)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("table %s is not tracked by pgtimewarp", target->display_name),
			 errdetail("The store has no history of it for node \"%s\".", node_id),
			 errhint("Start recording its history with SELECT pgtimewarp_track(%s).",
					 target->display_literal)));
}

/*
 * A lookup found no history recorded from this table: say whether another
 * table's lives under its name, or none at all.  `res` is released.
 */
void
require_tracked(const char *node_id, TargetTable *target, PGresult *res)
{
	Tracking   *other;

	if (PQntuples(res) > 0)
		return;
	pgtw_store_clear(res);
	other = store_tracking_by_name(node_id, target);
	if (other != NULL)
		require_same_table(other, target);
	error_not_tracked(node_id, target);
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

static void
warn_stopped(TargetTable *target, Tracking *t, const char *asked)
{
	ereport(WARNING,
			(errcode(ERRCODE_WARNING),
			 errmsg("tracking of table %s stopped at %s (LSN %s)",
					target->display_name, timestamptz_to_cstring(t->untracked_ts),
					lsn_to_cstring(t->untracked_lsn)),
			 errdetail("The answer for %s is the row as it was when tracking stopped.",
					   asked)));
}

/*
 * The position in history an answer is for, with the errors and warnings
 * the caller must see (`warn` false: already given for this time in this
 * statement).  The store statement applied the same rules to choose the
 * versions it returned (AT_TIME and AT_LSN in store_sql.c); the two must
 * agree, and this checks that they do.
 *
 * For a time: the LSN of the last commit, in LSN order, whose commit time
 * is <= it (lsn_time_map), so that every commit made by then is visible;
 * no earlier than where tracking began (a skewed clock may name a commit
 * before it), and no later than where it stopped.  A time at or after
 * tracking stopped is answered as of the stop; one later than the stored
 * history as of its end, with a warning either way.
 */
XLogRecPtr
resolve_check(TargetTable *target, Tracking *t, Resolved *r, const char *asked,
			  bool by_lsn, bool warn)
{
	XLogRecPtr	lsn = InvalidXLogRecPtr;

	switch (r->branch)
	{
		case AT_BEFORE:
			if (by_lsn)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_EXCEPTION),
						 errmsg("no history of table %s before LSN %s",
								target->display_name, lsn_to_cstring(t->from_lsn)),
						 errdetail("Tracking of table %s began at %s (LSN %s); %s is earlier.",
								   target->display_name, timestamptz_to_cstring(t->from_ts),
								   lsn_to_cstring(t->from_lsn), asked),
						 errhint("Ask for an LSN at or after %s.", lsn_to_cstring(t->from_lsn))));
			error_before_tracking(target, t, asked);
			break;
		case AT_STOPPED:
			if (warn)
				warn_stopped(target, t, asked);
			lsn = t->untracked_lsn;
			if (lsn > t->horizon_lsn && warn)
				warn_beyond_horizon(target, t, asked);
			break;
		case AT_HORIZON:
			if (warn)
				warn_beyond_horizon(target, t, asked);
			lsn = t->horizon_lsn;
			break;
		case AT_MAP:
			lsn = by_lsn ? r->mapped_lsn :
				r->mapped_null ? t->from_lsn : Max(t->from_lsn, r->mapped_lsn);
			if (t->untracked && lsn > t->untracked_lsn)
			{
				if (warn)
					warn_stopped(target, t, asked);
				lsn = t->untracked_lsn;
			}
			if (lsn > t->horizon_lsn && warn)
				warn_beyond_horizon(target, t, asked);
			break;
		default:
			elog(ERROR, "unknown answer \"%c\" from the pgtimewarp store", r->branch);
	}
	if (lsn != r->store_lsn)
		elog(ERROR, "the pgtimewarp store resolved %s to LSN %s, the extension to %s",
			 asked, lsn_to_cstring(r->store_lsn), lsn_to_cstring(lsn));
	r->lsn = lsn;
	return lsn;
}

/*
 * Errors for a gap the store has recorded in the history an answer needs:
 * the answer would miss changes, and nothing may hide that.
 */
void
refuse_gap(TargetTable *target, HistoryGap *g)
{
	bool		open = g->to_lsn == InvalidXLogRecPtr;

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
