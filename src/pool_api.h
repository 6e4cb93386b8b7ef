/*
 * Internal: what the public pool object (pool_api.c) offers the other
 * driver of calls, the event loop (async.c).
 */
#ifndef PGG_POOL_API_H
#define PGG_POOL_API_H

#include "pool_state.h"

/* The query of the statement registered as name (pgg_pool_prepare), for
 * pgg_exec_prepared and pgg_async_exec_prepared (fn names the caller in
 * the error): PGG_EINVAL when there is none. */
int pgg__pool_prepared_query(pgg_pool *pool, const char *fn,
                             const char *name, int nparams,
                             const char *const *values, const int *lengths,
                             const int *formats, const pgg_call *call,
                             pgg_query *q, pgg_error *err);

#endif
