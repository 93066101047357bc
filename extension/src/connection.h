/*
 * connection.h
 *		What connection.c shares with remote_xact.c, and nothing else does:
 *		the store connection's state and the primitives over it.
 */
#ifndef PGTW_CONNECTION_H
#define PGTW_CONNECTION_H

#include "libpq-fe.h"
#include "nodes/pg_list.h"
#include "storage/latch.h"

extern PGconn *pgtw_conn;
extern WaitEventSet *pgtw_conn_wait;
extern int	pgtw_spin_us;
extern bool pgtw_conn_invalidated;
extern bool pgtw_conn_busy;
extern int	pgtw_pending_syncs;
extern List *pgtw_prepared;

extern void pgtw_open_connection(void);
extern void pgtw_close_connection(bool cancel);
extern bool pgtw_connection_broken(void);
extern PGresult *pgtw_wait_result(void);
extern void pgtw_drain_pending(void);
extern bool pgtw_is_prepared(const char *name);
extern void pgtw_store_unreachable(const char *message) pg_attribute_noreturn();
extern void pgtw_report_remote_error(PGresult *res, const char *sql) pg_attribute_noreturn();

#endif							/* PGTW_CONNECTION_H */
