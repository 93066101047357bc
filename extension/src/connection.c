/*-------------------------------------------------------------------------
 *
 * connection.c
 *		The extension's own connection to the store.
 *
 * The store's address and credentials live where the installer put them:
 * foreign server "pgtimewarp_store" and the extension owner's user mapping.
 * This file builds a libpq connection from their options, as dblink does
 * (postgres_fdw's connection functions are not an API other modules can
 * use), and keeps it for the backend's life.  Everything pgtimewarp sends
 * to the store goes through pgtw_store_run().
 *
 * Round trips.  The connection stays in libpq's pipeline mode, so one call
 * sends whatever the moment needs in one go (opening the remote
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
#include "commands/defrem.h"
#include "foreign/foreign.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/resowner.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/wait_event.h"

#include "pgtimewarp.h"
#include "compat.h"

/* A remote savepoint standing for the local subtransaction at `level`. */
typedef struct RemoteSavepoint
{
	int			level;
	int			id;
} RemoteSavepoint;

#define MAX_SAVEPOINTS 64

static PGconn *conn = NULL;
/* waits for conn's socket, the latch and postmaster death; made once per connection */
static WaitEventSet *conn_wait = NULL;
static bool conn_invalidated = false;
/* a batch is on the wire and not all its results are read */
static bool conn_busy = false;
/* pipeline syncs sent by ended transactions whose results are still unread */
static int	pending_syncs = 0;
/* names of the statements prepared on conn */
static List *prepared = NIL;

/* the remote transaction of the current local one */
static bool xact_open = false;
static bool xact_wrote = false;
static bool xact_lost = false;
static RemoteSavepoint savepoints[MAX_SAVEPOINTS];
static int	nsavepoints = 0;
static int	next_savepoint_id = 0;
/* commands to send before the next statement (ROLLBACK TO SAVEPOINT) */
static List *queued = NIL;

/* results handed out and not yet cleared: cleared at transaction end */
static List *live_results = NIL;

static void
store_unreachable(const char *message)
{
	char	   *owner;

	/* libpq's messages end in a newline */
	char	   *detail = pstrdup(message ? message : "connection lost");
	int			len = strlen(detail);

	while (len > 0 && (detail[len - 1] == '\n' || detail[len - 1] == '\r'))
		detail[--len] = '\0';
	owner = GetUserNameFromId(extension_owner(), false);
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("could not reach the pgtimewarp store"),
			 errdetail_internal("%s", detail),
			 errhint("Check that the store database is running and that foreign server \"%s\" and the user mapping of role \"%s\" point at it; \"pgtimewarp doctor\" checks both.",
					 PGTW_STORE_SERVER, owner)));
}

static void
close_connection(bool cancel)
{
	if (conn == NULL)
		return;
	if (cancel && PQstatus(conn) == CONNECTION_OK)
	{
		PGcancel   *c = PQgetCancel(conn);
		char		errbuf[256];

		if (c != NULL)
		{
			(void) PQcancel(c, errbuf, sizeof(errbuf));
			PQfreeCancel(c);
		}
	}
	PQfinish(conn);
	conn = NULL;
	if (conn_wait != NULL)
		FreeWaitEventSet(conn_wait);
	conn_wait = NULL;
	conn_busy = false;
	pending_syncs = 0;
	list_free_deep(prepared);
	prepared = NIL;
}

/*
 * The libpq options of the server and user mapping: those libpq knows,
 * less the ones this file sets itself.  postgres_fdw's own options
 * (fetch_size, batch_size, ...) are not libpq's and are left out.
 */
static bool
is_libpq_option(const char *name, PQconninfoOption *known)
{
	if (strcmp(name, "client_encoding") == 0 ||
		strcmp(name, "fallback_application_name") == 0 ||
		strcmp(name, "replication") == 0)
		return false;
	for (PQconninfoOption *o = known; o->keyword != NULL; o++)
		if (strcmp(o->keyword, name) == 0 && strchr(o->dispchar, 'D') == NULL)
			return true;
	return false;
}

/*
 * The statements each new connection runs first: the canonical settings,
 * and generic plans for the prepared statements, whose plan (index probes)
 * is the same for every parameter, so that a lookup is never planned again.
 */
#define SESSION_SETUP \
	"SET search_path = pg_catalog; SET datestyle = ISO; SET intervalstyle = postgres;" \
	" SET extra_float_digits = 3; SET timezone = 'UTC'; SET application_name = 'pgtimewarp';" \
	" SET plan_cache_mode = force_generic_plan"

static PGresult *wait_result(void);

static void
open_connection(void)
{
	ForeignServer *server = GetForeignServerByName(PGTW_STORE_SERVER, false);
	Oid			owner = extension_owner();
	UserMapping *um = GetUserMapping(owner, server->serverid);
	PQconninfoOption *known = PQconndefaults();
	List	   *options = list_concat(list_copy(server->options), um->options);
	const char **keywords = palloc(sizeof(char *) * (list_length(options) + 4));
	const char **values = palloc(sizeof(char *) * (list_length(options) + 4));
	int			n = 0;
	bool		has_password = false;
	bool		password_required = true;
	bool		has_timeout = false;
	ListCell   *lc;
	PGresult   *res;

	if (known == NULL)
		elog(ERROR, "out of memory reading libpq's connection options");
	foreach(lc, options)
	{
		DefElem    *d = (DefElem *) lfirst(lc);

		if (strcmp(d->defname, "password_required") == 0)
			password_required = defGetBoolean(d);
		if (!is_libpq_option(d->defname, known))
			continue;
		has_password |= strcmp(d->defname, "password") == 0;
		has_timeout |= strcmp(d->defname, "connect_timeout") == 0;
		keywords[n] = d->defname;
		values[n] = defGetString(d);
		n++;
	}
	PQconninfoFree(known);
	keywords[n] = "fallback_application_name";
	values[n++] = "pgtimewarp";
	keywords[n] = "client_encoding";
	values[n++] = GetDatabaseEncodingName();
	if (!has_timeout)
	{
		/* a store host that does not answer must not hang lookups forever */
		keywords[n] = "connect_timeout";
		values[n++] = "10";
	}
	keywords[n] = NULL;
	values[n] = NULL;

	/*
	 * postgres_fdw's rule: a role that is not a superuser connects only with
	 * a password, so that it cannot borrow the server's own identity
	 * (peer or trust authentication as the server's OS user).
	 */
	if (!superuser_arg(owner) && password_required && !has_password)
		ereport(ERROR,
				(errcode(ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED),
				 errmsg("password is required to reach the pgtimewarp store"),
				 errdetail("The extension's owner is not a superuser, and its user mapping for foreign server \"%s\" has no password.",
						   PGTW_STORE_SERVER),
				 errhint("Add a password to the user mapping (\"pgtimewarp install\" creates one).")));

	conn = PQconnectdbParams(keywords, values, false);
	if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
	{
		char	   *message = conn ? pstrdup(PQerrorMessage(conn)) : "out of memory";

		close_connection(false);
		store_unreachable(message);
	}
	if (!superuser_arg(owner) && password_required && !PQconnectionUsedPassword(conn))
	{
		close_connection(false);
		ereport(ERROR,
				(errcode(ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED),
				 errmsg("password is required to reach the pgtimewarp store"),
				 errdetail("The store accepted the connection without using the user mapping's password."),
				 errhint("Have the store authenticate role pgtimewarp's store user by password.")));
	}

	if (!PQsendQuery(conn, SESSION_SETUP))
	{
		char	   *message = pstrdup(PQerrorMessage(conn));

		close_connection(false);
		store_unreachable(message);
	}
	conn_busy = true;
	while ((res = wait_result()) != NULL)
	{
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
		{
			char	   *message = pstrdup(PQresultErrorMessage(res));

			PQclear(res);
			close_connection(false);
			store_unreachable(message);
		}
		PQclear(res);
	}
	conn_busy = false;
	if (!PQenterPipelineMode(conn))
		elog(ERROR, "could not enter pipeline mode on the pgtimewarp store connection: %s",
			 PQerrorMessage(conn));
	conn_invalidated = false;
}

/*
 * The next result, waiting for the store without blocking interrupts.  An
 * error (a cancel) thrown while waiting leaves conn_busy set: the
 * transaction's end closes the connection.
 */
static PGresult *
wait_result(void)
{
	while (PQisBusy(conn))
	{
		WaitEvent	event;

		if (PQsocket(conn) < 0)
			break;
		if (conn_wait == NULL)
		{
			/* one epoll set for the connection's life, not one per wait */
			conn_wait = pgtw_create_wait_event_set(3);
			AddWaitEventToSet(conn_wait, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
			AddWaitEventToSet(conn_wait, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
			AddWaitEventToSet(conn_wait, WL_SOCKET_READABLE, PQsocket(conn), NULL, NULL);
		}
		if (WaitEventSetWait(conn_wait, -1L, &event, 1, PG_WAIT_EXTENSION) < 1)
			continue;
		if (event.events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		if ((event.events & WL_SOCKET_READABLE) && !PQconsumeInput(conn))
			break;
	}
	return PQgetResult(conn);
}

static bool
connection_broken(void)
{
	return conn == NULL || PQstatus(conn) != CONNECTION_OK;
}

/*
 * Read the answers to transactions ended without waiting.  Their errors do
 * not matter (they were read-only); a connection that broke meanwhile is
 * closed, to be opened again.
 */
static void
drain_pending(void)
{
	conn_busy = true;
	while (pending_syncs > 0)
	{
		PGresult   *res = wait_result();

		if (res == NULL)
		{
			if (connection_broken())
			{
				close_connection(false);
				return;
			}
			continue;
		}
		if (PQresultStatus(res) == PGRES_PIPELINE_SYNC)
			pending_syncs--;
		else if (PQresultStatus(res) == PGRES_FATAL_ERROR && connection_broken())
		{
			PQclear(res);
			close_connection(false);
			return;
		}
		PQclear(res);
	}
	conn_busy = false;
}

static bool
is_prepared(const char *name)
{
	ListCell   *lc;

	foreach(lc, prepared)
		if (strcmp((char *) lfirst(lc), name) == 0)
			return true;
	return false;
}

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

/* An error the store returned, as postgres_fdw reports it. */
static void
report_remote_error(PGresult *res, const char *sql)
{
	const char *sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	char	   *primary = pstrdup(PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) ?
								  PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) :
								  PQresultErrorMessage(res));
	const char *d = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
	const char *h = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
	char	   *detail = d ? pstrdup(d) : NULL;
	char	   *hint = h ? pstrdup(h) : NULL;
	int			code = ERRCODE_CONNECTION_FAILURE;
	char	   *first_line = pstrdup(sql);

	if (sqlstate && strlen(sqlstate) == 5)
		code = MAKE_SQLSTATE(sqlstate[0], sqlstate[1], sqlstate[2], sqlstate[3], sqlstate[4]);
	first_line[strcspn(first_line, "\n")] = '\0';
	if (strlen(first_line) > 120)
		strcpy(first_line + 117, "...");
	PQclear(res);
	ereport(ERROR,
			(errcode(code),
			 errmsg_internal("%s", primary),
			 detail ? errdetail_internal("%s", detail) : 0,
			 hint ? errhint("%s", hint) :
			 errhint("Check that the store's schema is up to date (\"pgtimewarp install\" migrates it) and that foreign server \"%s\" points at the store; \"pgtimewarp doctor\" checks both.",
					 PGTW_STORE_SERVER),
			 errcontext("statement sent to the pgtimewarp store: %s", first_line)));
}

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

	conn_busy = true;
#define SEND_COMMAND(text) \
	do { \
		ok = ok && PQsendQueryParams(conn, (text), 0, NULL, NULL, NULL, NULL, 0); \
		sent[nsent].kind = SENT_COMMAND; sent[nsent].statement = -1; \
		sent[nsent++].sql = (text); \
	} while (0)

	if (!xact_open)
	{
		SEND_COMMAND("START TRANSACTION ISOLATION LEVEL REPEATABLE READ");
		xact_open = true;
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
		if (s->name != NULL && !is_prepared(s->name))
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			ok = ok && PQsendPrepare(conn, s->name, s->sql, s->nparams, s->types);
			prepared = lappend(prepared, pstrdup(s->name));
			MemoryContextSwitchTo(old);
			sent[nsent].kind = SENT_PREPARE;
			sent[nsent].statement = i;
			sent[nsent++].sql = s->sql;
		}
		if (s->name != NULL)
			ok = ok && PQsendQueryPrepared(conn, s->name, s->nparams, s->values,
										   s->lengths, s->formats, s->binary_result ? 1 : 0);
		else
			ok = ok && PQsendQueryParams(conn, s->sql, s->nparams, s->types, s->values,
										 s->lengths, s->formats, s->binary_result ? 1 : 0);
		sent[nsent].kind = SENT_STATEMENT;
		sent[nsent].statement = i;
		sent[nsent++].sql = s->sql;
		xact_wrote |= s->write;
	}
	ok = ok && PQpipelineSync(conn);
#undef SEND_COMMAND

	if (!ok && connection_broken())
		goto broken;
	if (!ok)
		elog(ERROR, "could not send to the pgtimewarp store: %s", PQerrorMessage(conn));
	list_free_deep(queued);
	queued = NIL;

	for (int k = 0; k < nsent; k++)
	{
		PGresult   *res = wait_result();
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
				if (connection_broken())
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

					foreach(lc, prepared)
						if (strcmp((char *) lfirst(lc), stmts[sent[k].statement].name) == 0)
							name = lfirst(lc);
					prepared = list_delete_ptr(prepared, name);
				}
				break;
		}
		if (res != NULL)
			PQclear(res);
		/* each entry's answers end with a NULL */
		while ((extra = wait_result()) != NULL)
		{
			if (PQresultStatus(extra) == PGRES_PIPELINE_SYNC)
				elog(ERROR, "unexpected end of a pgtimewarp store batch");
			PQclear(extra);
		}
	}
	{
		PGresult   *sync = wait_result();

		if (sync == NULL || PQresultStatus(sync) != PGRES_PIPELINE_SYNC)
		{
			if (sync)
				PQclear(sync);
			goto broken;
		}
		PQclear(sync);
	}
	conn_busy = false;

	if (error != NULL)
	{
		for (int i = 0; i < n; i++)
		{
			pgtw_store_clear(stmts[i].result);
			stmts[i].result = NULL;
		}
		report_remote_error(error, error_sql);
	}
	return true;

broken:
	{
		char	   *message = pstrdup(conn ? PQerrorMessage(conn) : "connection lost");

		if (error)
			PQclear(error);
		for (int i = 0; i < n; i++)
		{
			pgtw_store_clear(stmts[i].result);
			stmts[i].result = NULL;
		}
		close_connection(false);
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
		store_unreachable(message);
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
	if (conn != NULL && conn_busy)
	{
		/* an error left answers unread: the connection cannot be trusted */
		close_connection(true);
		if (xact_open)
		{
			xact_lost = true;
			check_usable();
		}
	}
	if (conn != NULL && pending_syncs > 0)
		drain_pending();
	if (conn != NULL && !xact_open && (conn_invalidated || connection_broken()))
		close_connection(false);
	if (conn == NULL)
	{
		if (xact_open)
		{
			xact_lost = true;
			check_usable();
		}
		open_connection();
	}
	if (!run_batch(stmts, n, true))
	{
		open_connection();
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
	if (!PQexitPipelineMode(conn))
		elog(ERROR, "could not leave pipeline mode: %s", PQerrorMessage(conn));
	conn_busy = true;
	if (!PQsendQuery(conn, sql))
	{
		xact_lost = true;
		store_unreachable(PQerrorMessage(conn));
	}
	res = wait_result();
	if (res == NULL || PQresultStatus(res) != PGRES_COPY_IN)
	{
		if (res == NULL || connection_broken())
		{
			xact_lost = true;
			store_unreachable(PQerrorMessage(conn));
		}
		/* the error's NULL follows; the transaction's end tidies up */
		report_remote_error(res, sql);
	}
	PQclear(res);
}

void
pgtw_store_copy_data(const char *data, int len)
{
	if (PQputCopyData(conn, data, len) != 1)
	{
		xact_lost = true;
		store_unreachable(PQerrorMessage(conn));
	}
}

int64
pgtw_store_copy_end(const char *sql)
{
	PGresult   *res;
	PGresult   *error = NULL;
	int64		rows = 0;

	if (PQputCopyEnd(conn, NULL) != 1)
	{
		xact_lost = true;
		store_unreachable(PQerrorMessage(conn));
	}
	while ((res = wait_result()) != NULL)
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
	if (error != NULL && connection_broken())
	{
		PQclear(error);
		xact_lost = true;
		store_unreachable(PQerrorMessage(conn));
	}
	conn_busy = false;
	if (!PQenterPipelineMode(conn))
		elog(ERROR, "could not enter pipeline mode: %s", PQerrorMessage(conn));
	if (error != NULL)
		report_remote_error(error, sql);
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
	if (!PQsendQueryParams(conn, command, 0, NULL, NULL, NULL, NULL, 0) ||
		!PQpipelineSync(conn))
	{
		close_connection(false);
		return;
	}
	pending_syncs++;
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
			if (!xact_open || conn == NULL)
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
			if (conn != NULL && (conn_busy || connection_broken()))
				close_connection(true);
			else if (conn != NULL && xact_open)
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

		if (conn != NULL && (conn_busy || connection_broken()))
		{
			close_connection(true);
			xact_lost |= xact_open;
			return;
		}
		if (!xact_open || conn == NULL)
			return;
		while (first > 0 && savepoints[first - 1].level >= level)
			first--;
		if (first < nsavepoints)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			queued = lappend(queued, psprintf("ROLLBACK TO SAVEPOINT pgtw_%d",
											  savepoints[first].id));
			MemoryContextSwitchTo(old);
			nsavepoints = first;
		}
	}
}

/* A changed server or user mapping: open a new connection at the next use. */
static void
invalidate_connection(Datum arg, int cacheid, uint32 hashvalue)
{
	conn_invalidated = true;
}

void
pgtw_connection_init(void)
{
	RegisterXactCallback(xact_callback, NULL);
	RegisterSubXactCallback(subxact_callback, NULL);
	CacheRegisterSyscacheCallback(FOREIGNSERVEROID, invalidate_connection, (Datum) 0);
	CacheRegisterSyscacheCallback(USERMAPPINGOID, invalidate_connection, (Datum) 0);
}
