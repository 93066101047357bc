/*
 * pgtimewarp_compat.h
 *		The few places where PostgreSQL's internal API differs between the
 *		major versions pgtimewarp aims to compile against (13 to 17).
 *
 * PostgreSQL 15 is what the project builds and tests on; the other branches
 * are kept compiling in principle, so every version test lives here.
 */
#ifndef PGTIMEWARP_COMPAT_H
#define PGTIMEWARP_COMPAT_H

#include "access/xlogdefs.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"

#if PG_VERSION_NUM < 130000
#error "pgtimewarp needs PostgreSQL 13 or later"
#endif

/* LSN_FORMAT_ARGS appeared in 14. */
#ifndef LSN_FORMAT_ARGS
#define LSN_FORMAT_ARGS(lsn) ((uint32) ((lsn) >> 32)), ((uint32) (lsn))
#endif

/* 16 folded the per-object owner checks into object_ownercheck(). */
#if PG_VERSION_NUM >= 160000
#define pgtw_table_ownercheck(relid, roleid) \
	object_ownercheck(RelationRelationId, (relid), (roleid))
#else
#define pgtw_table_ownercheck(relid, roleid) pg_class_ownercheck((relid), (roleid))
#endif

/* 15 named the materialize-mode SRF helper; 13 and 14 had SetSingleFuncCall's ancestor inline. */
#if PG_VERSION_NUM >= 150000
#define pgtw_init_materialized_srf(fcinfo) InitMaterializedSRF((fcinfo), 0)
#else
extern void pgtw_init_materialized_srf(FunctionCallInfo fcinfo);
#define PGTW_NEED_MATERIALIZED_SRF 1
#endif

/* 17 moved the local transaction id into PGPROC's vxid. */
#if PG_VERSION_NUM >= 170000
#define pgtw_current_lxid() (MyProc->vxid.lxid)
#else
#define pgtw_current_lxid() (MyProc->lxid)
#endif

/* 17 gave LogLogicalMessage a flush argument; callers here flush themselves. */
#if PG_VERSION_NUM >= 170000
#define pgtw_log_logical_message(prefix, message, size) \
	LogLogicalMessage((prefix), (message), (size), false, false)
#else
#define pgtw_log_logical_message(prefix, message, size) \
	LogLogicalMessage((prefix), (message), (size), false)
#endif

/* 17 made wait event sets belong to a resource owner, not a memory context. */
#if PG_VERSION_NUM >= 170000
#define pgtw_create_wait_event_set(n) CreateWaitEventSet(NULL, (n))
#else
#define pgtw_create_wait_event_set(n) CreateWaitEventSet(TopMemoryContext, (n))
#endif

/* SHA-256 in pieces: pg_cryptohash from 14 on, the sha2 functions before. */
#include "common/sha2.h"
#if PG_VERSION_NUM >= 140000
#include "common/cryptohash.h"
typedef pg_cryptohash_ctx *pgtw_sha256_ctx;
static inline pgtw_sha256_ctx
pgtw_sha256_begin(void)
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (ctx == NULL || pg_cryptohash_init(ctx) < 0)
		elog(ERROR, "could not initialize SHA-256");
	return ctx;
}
#define pgtw_sha256_update(ctx, data, len) \
	do { if (pg_cryptohash_update((ctx), (data), (len)) < 0) \
			elog(ERROR, "could not compute SHA-256"); } while (0)
#define pgtw_sha256_end(ctx, digest) \
	do { if (pg_cryptohash_final((ctx), (digest), PG_SHA256_DIGEST_LENGTH) < 0) \
			elog(ERROR, "could not compute SHA-256"); \
		 pg_cryptohash_free(ctx); } while (0)
#else
typedef pg_sha256_ctx *pgtw_sha256_ctx;
static inline pgtw_sha256_ctx
pgtw_sha256_begin(void)
{
	pg_sha256_ctx *ctx = palloc(sizeof(pg_sha256_ctx));

	pg_sha256_init(ctx);
	return ctx;
}
#define pgtw_sha256_update(ctx, data, len) pg_sha256_update((ctx), (data), (len))
#define pgtw_sha256_end(ctx, digest) pg_sha256_final((ctx), (digest))
#endif

#endif							/* PGTIMEWARP_COMPAT_H */
