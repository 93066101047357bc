/*-------------------------------------------------------------------------
 *
 * connection.c
 *		The extension's own connection to the store: opening it, waiting
 *		for its answers, and the errors it reports.
 *
 * The store's address and credentials live where the installer put them:
 * foreign server "pgtimewarp_store" and the extension owner's user mapping.
 * This file builds a libpq connection from their options, as dblink does
 * (postgres_fdw's connection functions are not an API other modules can
 * use), and keeps it for the backend's life, in libpq's pipeline mode.
 * What is sent over it, and how its remote transaction follows the local
 * one, is remote_xact.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/defrem.h"
#include "foreign/foreign.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/resowner.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/wait_event.h"

#include "portability/instr_time.h"
#include "storage/s_lock.h"
#include "pgtimewarp.h"
#include "connection.h"
#include "compat.h"

PGconn *pgtw_conn = NULL;
/* waits for the socket, the latch and postmaster death; made once per connection */
WaitEventSet *pgtw_conn_wait = NULL;
/*
 * pgtimewarp.store_spin: microseconds a call polls for the store's answer
 * before it sleeps.  A lookup answered from the store's cache comes back in
 * tens of microseconds, less than waking a sleeping backend costs on a
 * virtual machine (the scheduler's cross-CPU wake-up): polling that long
 * roughly halves the time of many lookups in one query.
 */
int			pgtw_spin_us = 100;
bool		pgtw_conn_invalidated = false;
/* a batch is on the wire and not all its results are read */
bool		pgtw_conn_busy = false;
/* pipeline syncs sent by ended transactions whose results are still unread */
int			pgtw_pending_syncs = 0;
/* names of the statements prepared on the connection */
List	   *pgtw_prepared = NIL;

void
pgtw_store_unreachable(const char *message)
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

void
pgtw_close_connection(bool cancel)
{
	if (pgtw_conn == NULL)
		return;
	if (cancel && PQstatus(pgtw_conn) == CONNECTION_OK)
	{
		PGcancel   *c = PQgetCancel(pgtw_conn);
		char		errbuf[256];

		if (c != NULL)
		{
			(void) PQcancel(c, errbuf, sizeof(errbuf));
			PQfreeCancel(c);
		}
	}
	PQfinish(pgtw_conn);
	pgtw_conn = NULL;
	if (pgtw_conn_wait != NULL)
		FreeWaitEventSet(pgtw_conn_wait);
	pgtw_conn_wait = NULL;
	pgtw_conn_busy = false;
	pgtw_pending_syncs = 0;
	list_free_deep(pgtw_prepared);
	pgtw_prepared = NIL;
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
 * and generic plans for the pgtw_prepared statements, whose plan (index probes)
 * is the same for every parameter, so that a lookup is never planned again.
 */
#define SESSION_SETUP \
	"SET search_path = pg_catalog; SET datestyle = ISO; SET intervalstyle = postgres;" \
	" SET extra_float_digits = 3; SET timezone = 'UTC'; SET application_name = 'pgtimewarp';" \
	" SET plan_cache_mode = force_generic_plan"

void
pgtw_open_connection(void)
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

	pgtw_conn = PQconnectdbParams(keywords, values, false);
	if (pgtw_conn == NULL || PQstatus(pgtw_conn) != CONNECTION_OK)
	{
		char	   *message = pgtw_conn ? pstrdup(PQerrorMessage(pgtw_conn)) : "out of memory";

		pgtw_close_connection(false);
		pgtw_store_unreachable(message);
	}
	if (!superuser_arg(owner) && password_required && !PQconnectionUsedPassword(pgtw_conn))
	{
		pgtw_close_connection(false);
		ereport(ERROR,
				(errcode(ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED),
				 errmsg("password is required to reach the pgtimewarp store"),
				 errdetail("The store accepted the connection without using the user mapping's password."),
				 errhint("Have the store authenticate role pgtimewarp's store user by password.")));
	}

	if (!PQsendQuery(pgtw_conn, SESSION_SETUP))
	{
		char	   *message = pstrdup(PQerrorMessage(pgtw_conn));

		pgtw_close_connection(false);
		pgtw_store_unreachable(message);
	}
	pgtw_conn_busy = true;
	while ((res = pgtw_wait_result()) != NULL)
	{
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
		{
			char	   *message = pstrdup(PQresultErrorMessage(res));

			PQclear(res);
			pgtw_close_connection(false);
			pgtw_store_unreachable(message);
		}
		PQclear(res);
	}
	pgtw_conn_busy = false;
	if (!PQenterPipelineMode(pgtw_conn))
		elog(ERROR, "could not enter pipeline mode on the pgtimewarp store connection: %s",
			 PQerrorMessage(pgtw_conn));
	pgtw_conn_invalidated = false;
}

/*
 * The next result, waiting for the store without blocking interrupts.  An
 * error (a cancel) thrown while waiting leaves pgtw_conn_busy set: the
 * transaction's end closes the connection.
 */
PGresult *
pgtw_wait_result(void)
{
	if (PQisBusy(pgtw_conn) && pgtw_spin_us > 0)
	{
		instr_time	start;
		instr_time	now;

		INSTR_TIME_SET_CURRENT(start);
		for (;;)
		{
			if (!PQconsumeInput(pgtw_conn) || !PQisBusy(pgtw_conn))
				break;
			INSTR_TIME_SET_CURRENT(now);
			INSTR_TIME_SUBTRACT(now, start);
			if ((int64) INSTR_TIME_GET_MICROSEC(now) >= (int64) pgtw_spin_us)
				break;
			pg_spin_delay();
		}
	}
	while (PQisBusy(pgtw_conn))
	{
		WaitEvent	event;

		if (PQsocket(pgtw_conn) < 0)
			break;
		if (pgtw_conn_wait == NULL)
		{
			/* one epoll set for the connection's life, not one per wait */
			pgtw_conn_wait = pgtw_create_wait_event_set(3);
			AddWaitEventToSet(pgtw_conn_wait, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
			AddWaitEventToSet(pgtw_conn_wait, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
			AddWaitEventToSet(pgtw_conn_wait, WL_SOCKET_READABLE, PQsocket(pgtw_conn), NULL, NULL);
		}
		if (WaitEventSetWait(pgtw_conn_wait, -1L, &event, 1, PG_WAIT_EXTENSION) < 1)
			continue;
		if (event.events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		if ((event.events & WL_SOCKET_READABLE) && !PQconsumeInput(pgtw_conn))
			break;
	}
	return PQgetResult(pgtw_conn);
}

bool
pgtw_connection_broken(void)
{
	return pgtw_conn == NULL || PQstatus(pgtw_conn) != CONNECTION_OK;
}

/*
 * Read the answers to transactions ended without waiting.  Their errors do
 * not matter (they were read-only); a connection that broke meanwhile is
 * closed, to be opened again.
 */
void
pgtw_drain_pending(void)
{
	pgtw_conn_busy = true;
	while (pgtw_pending_syncs > 0)
	{
		PGresult   *res = pgtw_wait_result();

		if (res == NULL)
		{
			if (pgtw_connection_broken())
			{
				pgtw_close_connection(false);
				return;
			}
			continue;
		}
		if (PQresultStatus(res) == PGRES_PIPELINE_SYNC)
			pgtw_pending_syncs--;
		else if (PQresultStatus(res) == PGRES_FATAL_ERROR && pgtw_connection_broken())
		{
			PQclear(res);
			pgtw_close_connection(false);
			return;
		}
		PQclear(res);
	}
	pgtw_conn_busy = false;
}

bool
pgtw_is_prepared(const char *name)
{
	ListCell   *lc;

	foreach(lc, pgtw_prepared)
		if (strcmp((char *) lfirst(lc), name) == 0)
			return true;
	return false;
}

/* An error the store returned, as postgres_fdw reports it. */
void
pgtw_report_remote_error(PGresult *res, const char *sql)
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

/* A changed server or user mapping: open a new connection at the next use. */
static void
invalidate_connection(Datum arg, int cacheid, uint32 hashvalue)
{
	pgtw_conn_invalidated = true;
}

void
pgtw_connection_init(void)
{
	DefineCustomIntVariable("pgtimewarp.store_spin",
							"How long a history lookup polls for the store's answer before it sleeps, in microseconds.",
							"Polling briefly saves the wake-up of a sleeping backend, which can cost more than a fast store "
							"answer; it uses the CPU meanwhile. 0 always sleeps.",
							&pgtw_spin_us,
							100, 0, 10000,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
	CacheRegisterSyscacheCallback(FOREIGNSERVEROID, invalidate_connection, (Datum) 0);
	CacheRegisterSyscacheCallback(USERMAPPINGOID, invalidate_connection, (Datum) 0);
}
