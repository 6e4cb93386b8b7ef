/*
 * Internal: what the tests may ask of a loop context (async.c) beyond
 * pgguard_async.h.
 */
#ifndef PGG_ASYNC_H
#define PGG_ASYNC_H

#include <pthread.h>

#include "pgguard_async.h"

/* Calls of ac waiting for a connection (ST_PARKED): 0 once none waits. */
int pgg__async_parked(const pgg_async *ac);

/* Connections ac keeps idle and watched for its next calls. */
int pgg__async_kept(const pgg_async *ac);

/* For tests: the lock of the process-wide list of contexts that keep
 * connections (the loop guard's count, a test holding it). */
pthread_mutex_t *pgg__async_kept_mutex(void);
/* Entries in that list (those of contexts freed while the lock was busy,
 * not yet freed, included). */
int pgg__async_kept_listed(void);
/* Calls of ac that found a host's lock busy and look again (ST_RELOOK:
 * a borrow; ST_SETTLE: a failed connect's bookkeeping; host.c, "Owed"). */
int pgg__async_relooking(const pgg_async *ac);
/* Calls of ac over without an answer whose fallback found the cache's
 * lock busy and look again (ST_CACHE; cache.c, "Loops"). */
int pgg__async_cache_waits(const pgg_async *ac);

#endif
