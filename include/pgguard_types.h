/*
 * pgguard + libpqtypes: typed calls.  Available when pgguard was built with
 * libpqtypes (pgg_have_types() returns 1); include this header instead of
 * pgguard.h in code that uses them, and link libpqtypes.
 *
 * Connections are prepared for libpqtypes (PQinitTypes, then the pool's
 * registered types) as they are borrowed, once the pool has types.enabled
 * or has been asked for anything in this header: from then on every result
 * the pool returns, plain calls and fallback copies from the cache
 * included, can be read with PQgetf.  (Off until then because libpqtypes'
 * result event costs every result about a microsecond.)  Thread-safe like
 * the rest of the pool.
 */
#ifndef PGGUARD_TYPES_H
#define PGGUARD_TYPES_H

#include <stdarg.h>

#include <libpqtypes.h>

#include "pgguard.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Register types (PQT_SUBCLASS, PQT_COMPOSITE or PQT_USERDEFINED, as
 * PQregisterTypes takes them) on the pool: tried at once on one connection
 * (within call_timeout_ms), then applied by every other connection once,
 * before its next call, within that call's deadline.  The array is copied.
 * Errors: PGG_EINVAL, PGG_ENOMEM, PGG_ETYPES (the server lacks a type:
 * nothing is registered), or why no connection could be had (PGG_EOPEN,
 * PGG_ECONNECT, ...: retry when a host is back).
 */
PGG_EXPORT int pgg_pool_register_types(pgg_pool *pool, int which,
                                       const PGregisterType *types, int count,
                                       pgg_error *err);

/*
 * A typed one-shot call, PQexecf-style: cmdspec holds the SQL with
 * libpqtypes specifiers ("SELECT * FROM t WHERE id = %int4 AND n = %text")
 * and the arguments follow.  The same routing, bounds, classification,
 * retries and cached fallback as pgg_exec_params (the cache key holds the
 * packed parameters).  Results are binary unless call->result_format says
 * otherwise; read them with PQgetf.  A bad specifier or argument is
 * PGG_ETYPES with libpqtypes' message.
 */
PGG_EXPORT PGresult *pgg_execf(pgg_pool *pool, pgg_intent intent,
                               const pgg_call *call, pgg_info *info,
                               pgg_error *err, const char *cmdspec, ...);
PGG_EXPORT PGresult *pgg_execvf(pgg_pool *pool, pgg_intent intent,
                                const pgg_call *call, pgg_info *info,
                                pgg_error *err, const char *cmdspec,
                                va_list ap);

/*
 * A PGparam with the pool's type handlers, for what a specifier takes as a
 * PGparam (arrays, composites).  The caller PQparamClear()s it.  May
 * connect once (within timeout_ms) when no connection was made yet.
 */
PGG_EXPORT PGparam *pgg_pool_param(pgg_pool *pool, int timeout_ms,
                                   pgg_error *err);

#ifdef __cplusplus
}
#endif

#endif /* PGGUARD_TYPES_H */
