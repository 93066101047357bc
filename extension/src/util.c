/*-------------------------------------------------------------------------
 *
 * util.c
 *		Small helpers every file uses, and the canonical output settings.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "pgtimewarp.h"

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

