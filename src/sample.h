/*
 * Internal: one sample of the primary's WAL position (read_your_writes=
 * sampled), the pgg_sample_fn that call.c and lease.c hand to
 * pgg__vis_sample.
 */
#ifndef PGG_SAMPLE_H
#define PGG_SAMPLE_H

#include <stdint.h>

#include "pool_state.h"

/* One sample on a primary the router offers: PGG_OK with *lsn, or the
 * failure in err.  A pooled session found dead is tried once more on a new
 * connection, as a call would. */
int pgg__sample_primary(pgg_pool *pool, int64_t deadline, uint64_t *lsn,
                        pgg_error *err);

#endif
