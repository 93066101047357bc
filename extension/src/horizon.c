/*-------------------------------------------------------------------------
 *
 * horizon.c
 *		How far history is complete "now".
 *
 * The store's checkpoint says up to which LSN history is complete, and the
 * commit time (or heartbeat time) that goes with it.  A time later than that
 * is answered with a warning, because a change after the checkpoint may be
 * missing.  That alone would make every "as of now()" warn: the agent
 * stores a commit some milliseconds after it happens, and a store on the
 * source's own cluster even writes WAL of its own after every checkpoint.
 *
 * So the extension also knows where the source's WAL was when this
 * transaction first read the store: at time T it reads the WAL insert
 * position W (pgtw_note_store_read).  Every commit made before T ends at or
 * before W.  When the store's checkpoint, read in the store snapshot, is at
 * or past W, every such commit is in that snapshot, and history is complete
 * up to T, whatever the checkpoint's own time (pgtw_fresh_point, used in
 * the store statement itself: store_sql.c TRACKING_CTE).  This
 * holds whichever came first, the snapshot or the reading of W.  "Now", for
 * pgtimewarp, is therefore the moment a transaction first reads history:
 * now() and any earlier time are answered without a warning once the agent
 * has stored what the source had written by then.
 *
 * To make that so, a call about a time later than any history this backend
 * has seen waits for the agent before it opens the store snapshot
 * (pgtw_await_fresh_history): it writes a non-transactional logical message
 * with prefix "pgtimewarp" (the horizon request; the agent answers it with
 * a heartbeat at once, see agent/run.ts), flushes it, and waits up to
 * pgtimewarp.horizon_wait milliseconds until a logical slot of this
 * database that the agent can own (pgoutput or wal2json) has confirmed
 * position W.  The agent confirms a position only after its store commit,
 * so the snapshot opened afterwards holds everything up to W.  The wait is
 * an optimization only: the answer is judged by the checkpoint in the
 * snapshot, so a slot of some other consumer that confirms early costs at
 * most a warning, never a wrong answer.
 *
 * Commit times are taken just before the commit record is written, so a
 * commit timestamped a few microseconds before T can still end after W: the
 * same best-effort wall-clock caveat as every time-to-LSN mapping (DESIGN.md:
 * LSN order decides).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "replication/message.h"
#include "replication/slot.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/spin.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "pgtimewarp.h"
#include "compat.h"

/* pgtimewarp.horizon_wait: ms; 0 neither asks the agent nor waits */
static int	horizon_wait_ms = 1000;

/* How often the wait looks at the slots again, ms. */
#define HORIZON_POLL_MS 2

/* Where the source's WAL was at this transaction's first store read, and when. */
static LocalTransactionId fresh_lxid = InvalidLocalTransactionId;
static XLogRecPtr fresh_lsn = InvalidXLogRecPtr;
static TimestampTz fresh_ts = 0;

/* The latest horizon time this backend has read from the store. */
static TimestampTz known_horizon_ts = DT_NOBEGIN;

void
pgtw_horizon_init(void)
{
	DefineCustomIntVariable("pgtimewarp.horizon_wait",
							"How long a history lookup about a recent time waits for the agent to store what the source has written.",
							"An as-of or diff call about a time later than any history this session has seen asks the agent to "
							"confirm the source's current WAL position and waits up to this long, so that a time up to the call's "
							"start is answered without a warning. 0 never asks and never waits.",
							&horizon_wait_ms,
							1000, 0, 60000,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
}

static bool
fresh_point_taken(void)
{
	return fresh_lxid == pgtw_current_lxid();
}

/*
 * At every store session: the first in a transaction notes the time, then
 * the WAL insert position (in that order: a commit made before the time
 * ended before the position).
 */
void
pgtw_note_store_read(void)
{
	if (fresh_point_taken())
		return;
	fresh_ts = GetCurrentTimestamp();
	fresh_lsn = GetXLogInsertRecPtr();
	fresh_lxid = pgtw_current_lxid();
}

/*
 * The highest position confirmed by a logical slot of this database whose
 * plugin the agent uses; InvalidXLogRecPtr and *found = false when there is
 * none (the regression suite's test_decoding slot is no agent's).
 */
static XLogRecPtr
agent_slots_confirmed(bool *found)
{
	XLogRecPtr	confirmed = InvalidXLogRecPtr;

	*found = false;
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (int i = 0; i < max_replication_slots; i++)
	{
		ReplicationSlot *s = &ReplicationSlotCtl->replication_slots[i];

		if (!s->in_use)
			continue;
		SpinLockAcquire(&s->mutex);
		if (s->data.database == MyDatabaseId &&
			(strcmp(NameStr(s->data.plugin), "pgoutput") == 0 ||
			 strcmp(NameStr(s->data.plugin), "wal2json") == 0))
		{
			*found = true;
			confirmed = Max(confirmed, s->data.confirmed_flush);
		}
		SpinLockRelease(&s->mutex);
	}
	LWLockRelease(ReplicationSlotControlLock);
	return confirmed;
}

/*
 * Before a lookup at time `at` opens the store snapshot: note the fresh
 * point, and when `at` is later than any history seen yet but not in the
 * future, have the agent store the source's WAL up to the fresh point
 * first (see the file comment).  Does nothing once the transaction has read
 * the store: its snapshot may be open already.
 */
void
pgtw_await_fresh_history(TimestampTz at)
{
	bool		found;
	XLogRecPtr	request_end;
	TimestampTz deadline;

	if (fresh_point_taken())
		return;
	pgtw_note_store_read();
	if (horizon_wait_ms <= 0 || at > fresh_ts || at <= known_horizon_ts)
		return;
	/* no WAL can be written on a standby or from a parallel worker */
	if (RecoveryInProgress() || IsInParallelMode() || !XLogLogicalInfoActive())
		return;
	if (agent_slots_confirmed(&found) >= fresh_lsn || !found)
		return;

	request_end = pgtw_log_logical_message(PGTW_MESSAGE_PREFIX, "horizon", strlen("horizon"));
	XLogFlush(request_end);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), horizon_wait_ms);
	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (agent_slots_confirmed(&found) >= fresh_lsn)
			break;
		if (GetCurrentTimestamp() >= deadline)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 HORIZON_POLL_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * The fresh point of this transaction (taken now if it was not yet): the
 * store statement extends the horizon's time to it when the store's
 * checkpoint is at or past its position (store_sql.c, TRACKING_CTE).
 */
void
pgtw_fresh_point(XLogRecPtr *lsn, TimestampTz *ts)
{
	pgtw_note_store_read();
	*lsn = fresh_lsn;
	*ts = fresh_ts;
}

/* A horizon read from the store: later lookups up to it need not wait. */
void
pgtw_saw_horizon(TimestampTz horizon_ts)
{
	known_horizon_ts = Max(known_horizon_ts, horizon_ts);
}
