/*
 * Internal: the Prometheus text exposition of a pool's stats.
 *
 * Split in two so that the format can be tested without a pool: the pure
 * formatter below turns snapshots into text; pgg_pool_metrics() (public)
 * takes the snapshots and calls it.
 */
#ifndef PGG_METRICS_H
#define PGG_METRICS_H

#include <stddef.h>

#include "pgguard.h"

/*
 * Format the pool-wide snapshot s and the nhosts host snapshots h (in
 * conninfo order) as Prometheus text (version 0.0.4), with the same
 * contract as pgg_pool_metrics(): at most len bytes, NUL included, go to
 * buf; *needed (when not NULL) receives the size of the whole text, NUL
 * included; PGG_EINVAL when it did not fit.
 */
int pgg__metrics_format(const pgg_stats *s, const pgg_host_stats *h,
                        int nhosts, char *buf, size_t len, size_t *needed);

#endif
