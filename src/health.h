/*
 * Internal: the pool's background thread.  Every health_interval_ms (or at
 * once when woken) it moves breakers on time (tick), probes every host's
 * role and WAL position in one multiplexed round (a hung host costs the
 * round its probe timeout, not one timeout per host), computes replica lag,
 * sends half-open probes, closes idle connections past their time and
 * warms hosts up to pool_min_idle.  It never holds a lock across I/O.
 */
#ifndef PGG_HEALTH_H
#define PGG_HEALTH_H

#include "pgguard.h"

struct pgg_pool;
typedef struct pgg_health pgg_health;

/* Start the thread; the first round runs at once. */
pgg_health *pgg__health_start(struct pgg_pool *pool, pgg_error *err);
/* Stop and join the thread, close its connections.  Accepts NULL. */
void pgg__health_stop(pgg_health *hl);
/* Run a round now (a write met a demoted primary, say).  Accepts NULL. */
void pgg__health_wake(pgg_health *hl);
/* Rounds completed so far (tests wait on this instead of sleeping). */
unsigned long pgg__health_rounds(pgg_health *hl);

#endif
