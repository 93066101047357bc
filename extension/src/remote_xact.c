/*-------------------------------------------------------------------------
 *
 * remote_xact.c
 *		Running statements in the store, in a remote transaction tied to the
 *		local one.  Everything pgtimewarp sends to the store goes through
 *		pgtw_store_run().
 *
 * Round trips.  The connection (connection.c) stays in pipeline mode, so one
 * call sends whatever the moment needs in one go (opening the remote
 * transaction, a savepoint, preparing a statement the first time, the
 * statements themselves) and waits once.  A read-only remote transaction is
 * ended without waiting: its COMMIT's answer is read at the next use.  A
 * warm lookup in its own transaction therefore costs one round trip.
 *
 * Snapshots.  The first store statement of a local transaction opens a
 * REPEATABLE READ remote transaction, ended with the local one (committed
 * before the local commit when it wrote, so a failed store commit fails the
 * local one, as postgres_fdw does).  Every call in one local transaction
 * reads one store snapshot.  Local subtransactions get remote savepoints,
 * made lazily with the first statement at their level, so that ROLLBACK TO
 * SAVEPOINT undoes what they did to the store.
 *
 * Failures.  A connection found broken at the start of a remote
 * transaction (the store restarted since the last call) is opened again
 * and the call retried once: nothing was lost.  One that breaks inside a
 * remote transaction ends that transaction's use of the store: the snapshot
 * (and any writes) are gone, so later calls in the same local transaction
 * fail, and so does its commit if it wrote.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "utils/memutils.h"

#include "pgtimewarp.h"
#include "connection.h"

/* A remote savepoint standing for the local subtransaction at `level`. */
typedef struct RemoteSavepoint
{
	int			level;
	int			id;
} RemoteSavepoint;

#define MAX_SAVEPOINTS 64

/* the remote transaction of the current local one */
static bool xact_open = false;
static bool xact_wrote = false;
static bool xact_lost = false;
static RemoteSavepoint savepoints[MAX_SAVEPOINTS];
static int	nsavepoints = 0;
static int	next_savepoint_id = 0;
/* commands to send before the next statement (ROLLBACK TO SAVEPOINT) */
static List *queued = NIL;

/*
 * Which store snapshot, as this session's own writes leave it, answers
 * now: a new number for each remote transaction, and after each write or
 * rollback to a savepoint in one.  What a statement learned from the store
 * is still true while this is unchanged (asof.c keeps a call site's
 * tracking state on it).
 */
static uint64 store_snapshot = 0;

uint64
pgtw_store_snapshot_id(void)
{
	return xact_open ? store_snapshot : 0;
}

/* results handed out and not yet cleared: cleared at transaction end */
static List *live_results = NIL;

static void
keep_result(PGresult *res)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	live_results = lappend(live_results, res);
	MemoryContextSwitchTo(old);
}

void
pgtw_store_clear(PGresult *res)
{
	if (res == NULL)
		return;
	live_results = list_delete_ptr(live_results, res);
	PQclear(res);
}

static void
clear_live_results(void)
{
	ListCell   *lc;

	foreach(lc, live_results)
		PQclear((PGresult *) lfirst(lc));
	list_free(live_results);
	live_results = NIL;
}

/* What one entry of a sent batch is, to read its answer. */
typedef enum SentKind
{
	SENT_COMMAND,				/* BEGIN, SAVEPOINT, ROLLBACK TO: must succeed */
	SENT_PREPARE,
	SENT_STATEMENT
} SentKind;

typedef struct Sent
{
	SentKind	kind;
	int			statement;		/* index into the batch, for SENT_STATEMENT */
	const char *sql;			/* for error context */
} Sent;

/*
 * Send one batch and read its answers.  Returns false when the connection
 * broke before any answer could be trusted and the batch may be sent again
 * on a new connection (retry_ok), true when done; errors otherwise.
 */
static bool
run_batch(StoreStatement *stmts, int n, bool retry_ok)
{
	Sent	   *sent = palloc(sizeof(Sent) * (n * 2 + list_length(queued) + 3));
	int			nsent = 0;
	int			level = GetCurrentTransactionNestLevel();
	bool		began = false;
	PGresult   *error = NULL;
	const char *error_sql = NULL;
	bool		ok = true;
	ListCell   *lc;

	pgtw_conn_busy = true;
#define SEND_COMMAND(text) \
	do { \
		ok = ok && PQsendQueryParams(pgtw_conn, (text), 0, NULL, NULL, NULL, NULL, 0); \
		sent[nsent].kind = SENT_COMMAND; sent[nsent].statement = -1; \
		sent[nsent++].sql = (text); \
	} while (0)

	if (!xact_open)
	{
		SEND_COMMAND("START TRANSACTION ISOLATION LEVEL REPEATABLE READ");
		xact_open = true;
		store_snapshot++;
		began = true;
	}
	foreach(lc, queued)
		SEND_COMMAND((char *) lfirst(lc));
	if (level > 1 && (nsavepoints == 0 || savepoints[nsavepoints - 1].level < level))
	{
		char	   *sp;

		if (nsavepoints >= MAX_SAVEPOINTS)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("too many nested subtransactions use the pgtimewarp store"),
					 errdetail("At most %d may.", MAX_SAVEPOINTS)));
		sp = psprintf("SAVEPOINT pgtw_%d", next_savepoint_id);
		savepoints[nsavepoints].level = level;
		savepoints[nsavepoints++].id = next_savepoint_id++;
		SEND_COMMAND(sp);
	}
	for (int i = 0; i < n; i++)
	{
		StoreStatement *s = &stmts[i];

		s->result = NULL;
		if (s->name != NULL && !pgtw_is_prepared(s->name))
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			ok = ok && PQsendPrepare(pgtw_conn, s->name, s->sql, s->nparams, s->types);
			pgtw_prepared = lappend(pgtw_prepared, pstrdup(s->name));
			MemoryContextSwitchTo(old);
			sent[nsent].kind = SENT_PREPARE;
			sent[nsent].statement = i;
			sent[nsent++].sql = s->sql;
		}
		if (s->name != NULL)
			ok = ok && PQsendQueryPrepared(pgtw_conn, s->name, s->nparams, s->values,
										   s->lengths, s->formats, s->binary_result ? 1 : 0);
		else
			ok = ok && PQsendQueryParams(pgtw_conn, s->sql, s->nparams, s->types, s->values,
										 s->lengths, s->formats, s->binary_result ? 1 : 0);
		sent[nsent].kind = SENT_STATEMENT;
		sent[nsent].statement = i;
		sent[nsent++].sql = s->sql;
		xact_wrote |= s->write;
		if (s->write)
			store_snapshot++;
	}
	ok = ok && PQpipelineSync(pgtw_conn);
#undef SEND_COMMAND

	if (!ok && pgtw_connection_broken())
		goto broken;
	if (!ok)
		elog(ERROR, "could not send to the pgtimewarp store: %s", PQerrorMessage(pgtw_conn));
	list_free_deep(queued);
	queued = NIL;

	for (int k = 0; k < nsent; k++)
	{
		PGresult   *res = pgtw_wait_result();
		PGresult   *extra;

		if (res == NULL)
			goto broken;
		switch (PQresultStatus(res))
		{
			case PGRES_TUPLES_OK:
			case PGRES_COMMAND_OK:
				if (sent[k].kind == SENT_STATEMENT)
				{
					keep_result(res);
					stmts[sent[k].statement].result = res;
					res = NULL;
				}
				break;
			case PGRES_PIPELINE_ABORTED:
				break;
			default:
				if (pgtw_connection_broken())
				{
					PQclear(res);
					goto broken;
				}
				if (error == NULL)
				{
					error = res;
					error_sql = sent[k].sql;
					res = NULL;
				}
				if (sent[k].kind == SENT_PREPARE)
				{
					char	   *name = NULL;

					foreach(lc, pgtw_prepared)
						if (strcmp((char *) lfirst(lc), stmts[sent[k].statement].name) == 0)
							name = lfirst(lc);
					pgtw_prepared = list_delete_ptr(pgtw_prepared, name);
				}
				break;
		}
		if (res != NULL)
			PQclear(res);
		/* each entry's answers end with a NULL */
		while ((extra = pgtw_wait_result()) != NULL)
		{
			if (PQresultStatus(extra) == PGRES_PIPELINE_SYNC)
				elog(ERROR, "unexpected end of a pgtimewarp store batch");
			PQclear(extra);
		}
	}
	{
		PGresult   *sync = pgtw_wait_result();

		if (sync == NULL || PQresultStatus(sync) != PGRES_PIPELINE_SYNC)
		{
			if (sync)
				PQclear(sync);
			goto broken;
		}
		PQclear(sync);
	}
	pgtw_conn_busy = false;

	if (error != NULL)
	{
		for (int i = 0; i < n; i++)
		{
			pgtw_store_clear(stmts[i].result);
			stmts[i].result = NULL;
		}
		pgtw_report_remote_error(error, error_sql);
	}
	return true;

broken:
	{
		char	   *message = pstrdup(pgtw_conn ? PQerrorMessage(pgtw_conn) : "connection lost");

		if (error)
			PQclear(error);
		for (int i = 0; i < n; i++)
		{
			pgtw_store_clear(stmts[i].result);
			stmts[i].result = NULL;
		}
		pgtw_close_connection(false);
		if (began && retry_ok)
		{
			/*
			 * A connection the store closed since the last call (a restart):
			 * the remote transaction began in this batch, so nothing was
			 * read or written in it yet, and the batch can go again.
			 */
			xact_open = false;
			xact_wrote = false;
			nsavepoints = 0;
			return false;
		}
		xact_lost = true;
		pgtw_store_unreachable(message);
	}
	return true;				/* keep compiler quiet */
}

static void
check_usable(void)
{
	if (xact_lost)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("the connection to the pgtimewarp store was lost during this transaction"),
				 errdetail("The store snapshot this transaction read, and anything it wrote to the store, are gone."),
				 errhint("Roll back, then run the statements again in a new transaction.")));
}

/*
 * Run statements against the store, in one round trip, in this local
 * transaction's store snapshot.  Each statement's result is left in its
 * `result` (binary or text as asked), to be released with
 * pgtw_store_clear(); whatever is left is released at transaction end.
 */
void
pgtw_store_run(StoreStatement *stmts, int n)
{
	check_usable();
	pgtw_note_store_read();
	if (pgtw_conn != NULL && pgtw_conn_busy)
	{
		/* an error left answers unread: the connection cannot be trusted */
		pgtw_close_connection(true);
		if (xact_open)
		{
			xact_lost = true;
			check_usable();
		}
	}
	if (pgtw_conn != NULL && pgtw_pending_syncs > 0)
		pgtw_drain_pending();
	if (pgtw_conn != NULL && !xact_open && (pgtw_conn_invalidated || pgtw_connection_broken()))
		pgtw_close_connection(false);
	if (pgtw_conn == NULL)
	{
		if (xact_open)
		{
			xact_lost = true;
			check_usable();
		}
		pgtw_open_connection();
	}
	if (!run_batch(stmts, n, true))
	{
		pgtw_open_connection();
		(void) run_batch(stmts, n, false);
	}
}

/*
 * COPY ... FROM STDIN into the store, in this transaction: begin, then
 * send data in pieces, then end (returns the rows copied).  COPY cannot
 * run in pipeline mode, so the connection leaves it meanwhile.
 */
void
pgtw_store_copy_begin(const char *sql)
{
	PGresult   *res;

	pgtw_store_run(NULL, 0);	/* the remote transaction and savepoint */
	xact_wrote = true;
	if (!PQexitPipelineMode(pgtw_conn))
		elog(ERROR, "could not leave pipeline mode: %s", PQerrorMessage(pgtw_conn));
	pgtw_conn_busy = true;
	if (!PQsendQuery(pgtw_conn, sql))
	{
		xact_lost = true;
		pgtw_store_unreachable(PQerrorMessage(pgtw_conn));
	}
	res = pgtw_wait_result();
	if (res == NULL || PQresultStatus(res) != PGRES_COPY_IN)
	{
		if (res == NULL || pgtw_connection_broken())
		{
			xact_lost = true;
			pgtw_store_unreachable(PQerrorMessage(pgtw_conn));
		}
		/* the error's NULL follows; the transaction's end tidies up */
		pgtw_report_remote_error(res, sql);
	}
	PQclear(res);
}

void
pgtw_store_copy_data(const char *data, int len)
{
	if (PQputCopyData(pgtw_conn, data, len) != 1)
	{
		xact_lost = true;
		pgtw_store_unreachable(PQerrorMessage(pgtw_conn));
	}
}

int64
pgtw_store_copy_end(const char *sql)
{
	PGresult   *res;
	PGresult   *error = NULL;
	int64		rows = 0;

	if (PQputCopyEnd(pgtw_conn, NULL) != 1)
	{
		xact_lost = true;
		pgtw_store_unreachable(PQerrorMessage(pgtw_conn));
	}
	while ((res = pgtw_wait_result()) != NULL)
	{
		if (PQresultStatus(res) == PGRES_COMMAND_OK)
			rows = (int64) strtoll(PQcmdTuples(res), NULL, 10);
		else if (error == NULL)
		{
			error = res;
			continue;
		}
		PQclear(res);
	}
	if (error != NULL && pgtw_connection_broken())
	{
		PQclear(error);
		xact_lost = true;
		pgtw_store_unreachable(PQerrorMessage(pgtw_conn));
	}
	pgtw_conn_busy = false;
	if (!PQenterPipelineMode(pgtw_conn))
		elog(ERROR, "could not enter pipeline mode: %s", PQerrorMessage(pgtw_conn));
	if (error != NULL)
		pgtw_report_remote_error(error, sql);
	return rows;
}

static void
reset_xact_state(void)
{
	xact_open = false;
	xact_wrote = false;
	xact_lost = false;
	nsavepoints = 0;
	list_free_deep(queued);
	queued = NIL;
	clear_live_results();
}

/* End the remote transaction without waiting for the answer. */
static void
end_remote_without_waiting(const char *command)
{
	if (!PQsendQueryParams(pgtw_conn, command, 0, NULL, NULL, NULL, NULL, 0) ||
		!PQpipelineSync(pgtw_conn))
	{
		pgtw_close_connection(false);
		return;
	}
	pgtw_pending_syncs++;
}

static void
xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
			if (xact_lost && xact_wrote)
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("the changes this transaction made in the pgtimewarp store were lost"),
						 errdetail("The connection to the store broke before they were committed."),
						 errhint("Run the transaction again.")));
			if (!xact_open || pgtw_conn == NULL)
				return;
			if (xact_wrote)
			{
				StoreStatement commit = {0};

				/* wait: a store that cannot commit must fail the local commit */
				commit.sql = "COMMIT";
				check_usable();
				if (!run_batch(&commit, 1, false))
					return;
				if (strcmp(PQcmdStatus(commit.result), "COMMIT") != 0)
					ereport(ERROR,
							(errcode(ERRCODE_TRANSACTION_ROLLBACK),
							 errmsg("the pgtimewarp store rolled back this transaction's changes"),
							 errhint("Run the transaction again.")));
				pgtw_store_clear(commit.result);
				xact_open = false;
			}
			else
			{
				/* only read: nothing to confirm; the answer is read next time */
				end_remote_without_waiting("COMMIT");
				xact_open = false;
			}
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (xact_open)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has used the pgtimewarp store")));
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			if (pgtw_conn != NULL && (pgtw_conn_busy || pgtw_connection_broken()))
				pgtw_close_connection(true);
			else if (pgtw_conn != NULL && xact_open)
				end_remote_without_waiting("ROLLBACK");
			reset_xact_state();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			reset_xact_state();
			break;
	}
}

static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		/* its savepoint now stands for the parent, unless the parent has one */
		if (nsavepoints > 0 && savepoints[nsavepoints - 1].level == level)
		{
			if (nsavepoints > 1 && savepoints[nsavepoints - 2].level == level - 1)
				nsavepoints--;
			else
				savepoints[nsavepoints - 1].level = level - 1;
		}
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		int			first = nsavepoints;

		if (pgtw_conn != NULL && (pgtw_conn_busy || pgtw_connection_broken()))
		{
			pgtw_close_connection(true);
			xact_lost |= xact_open;
			return;
		}
		if (!xact_open || pgtw_conn == NULL)
			return;
		while (first > 0 && savepoints[first - 1].level >= level)
			first--;
		if (first < nsavepoints)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			store_snapshot++;
			queued = lappend(queued, psprintf("ROLLBACK TO SAVEPOINT pgtw_%d",
											  savepoints[first].id));
			MemoryContextSwitchTo(old);
			nsavepoints = first;
		}
	}
}

/*
 * Close this backend's store connection, as postgres_fdw_disconnect() does
 * for its own: false when there was none.  Not while this transaction has
 * used it: its snapshot, and any writes, belong to the transaction.
 */
bool
pgtw_store_disconnect(void)
{
	if (pgtw_conn == NULL)
		return false;
	if (xact_open)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("cannot close the pgtimewarp store connection while this transaction uses it"),
				 errhint("Call pgtimewarp_disconnect() in a transaction that has not read history.")));
	pgtw_close_connection(false);
	return true;
}

void
pgtw_remote_xact_init(void)
{
	RegisterXactCallback(xact_callback, NULL);
	RegisterSubXactCallback(subxact_callback, NULL);
}
