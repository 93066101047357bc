/*-------------------------------------------------------------------------
 *
 * pgtimewarp.c
 *		Time travel queries over WAL-derived row history.
 *
 * The history of each tracked table lives in a separate store database,
 * written there by the pgtimewarp agent from the WAL.  This module answers
 * questions about it from the source database: it resolves the table by
 * regclass, turns the caller's JSON key into the store's canonical key, and
 * reads the version that was visible at a time, over its own connection to
 * the store (connection.c, remote_xact.c), in one statement per call (store_sql.c).
 * pgtimewarp.h lists the files and what each one does.
 *
 * The caller never sees store credentials: the connection is made with the
 * extension owner's user mapping, after checking that the caller may SELECT
 * the table.
 *
 * Canonical encoding.  The store keeps every value as the text its type's
 * output function produces under fixed settings (canonical_settings_begin),
 * which round-trips every type exactly through its input function.  A key is
 * the text[] of its primary key columns' values in key order.  The agent
 * receives the same text from the walsender, whose session uses the same
 * settings (agent/key.ts), so both sides agree byte for byte.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"

#include "pgtimewarp.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	pgtw_horizon_init();
	pgtw_connection_init();
	pgtw_remote_xact_init();
}
