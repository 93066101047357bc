/*
 * pgtimewarp.h
 *		What the extension's source files share.
 *
 * pgtimewarp.c holds the SQL functions; horizon.c knows how far history is
 * complete "now".
 */
#ifndef PGTIMEWARP_H
#define PGTIMEWARP_H

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"

#define PGTW_MESSAGE_PREFIX		"pgtimewarp"

/* horizon.c */
extern void pgtw_horizon_init(void);
extern void pgtw_note_store_read(void);
extern void pgtw_await_fresh_history(TimestampTz at);
extern void pgtw_fresh_horizon(XLogRecPtr *horizon_lsn, TimestampTz *horizon_ts);

#endif							/* PGTIMEWARP_H */
