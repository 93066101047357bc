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

#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "pgtimewarp.h"
#include "compat.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	pgtw_horizon_init();
	pgtw_connection_init();
	pgtw_remote_xact_init();
}

/* ----------------------------------------------------------------
 * Small helpers
 * ----------------------------------------------------------------
 */

void
require_argument(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("argument \"%s\" of %s must not be null",
						name, get_func_name(fcinfo->flinfo->fn_oid))));
}

char *
lsn_to_cstring(XLogRecPtr lsn)
{
	return psprintf("%X/%X", LSN_FORMAT_ARGS(lsn));
}

char *
timestamptz_to_cstring(TimestampTz ts)
{
	return DatumGetCString(DirectFunctionCall1(timestamptz_out,
											   TimestampTzGetDatum(ts)));
}

char *
join_names(char **names, int n)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < n; i++)
		appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "", quote_identifier(names[i]));
	return buf.data;
}

/* ----------------------------------------------------------------
 * Canonical output settings
 *
 * Text output of dates, times, intervals, floats and bytea depends on
 * session settings.  The store must hold one spelling per value, so every
 * value pgtimewarp writes or parses goes through these settings.  The agent
 * sets the same ones on its replication connection (agent/key.ts).
 * ----------------------------------------------------------------
 */
static const struct
{
	const char *name;
	const char *value;
}			canonical_settings[] =
{
	{"DateStyle", "ISO, YMD"},
	{"IntervalStyle", "postgres"},
	{"TimeZone", "UTC"},
	{"extra_float_digits", "3"},
	{"bytea_output", "hex"},
	{"xmloption", "content"},
	{"lc_monetary", "C"},
};

int
canonical_settings_begin(void)
{
	int			level = NewGUCNestLevel();

	for (size_t i = 0; i < lengthof(canonical_settings); i++)
		(void) set_config_option(canonical_settings[i].name,
								 canonical_settings[i].value,
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

void
canonical_settings_end(int level)
{
	AtEOXact_GUC(true, level);
}

