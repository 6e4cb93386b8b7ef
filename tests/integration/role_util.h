/* Issue 9's write refused as read-only (25006), set up by hand (white box:
 * the roles the pool believes), for the blocking and the loop's tests. */
#ifndef PGG_TEST_ROLE_UTIL_H
#define PGG_TEST_ROLE_UTIL_H

#include "pool.h"
#include "pool_util.h"

/* A pooled session on the replica (host 1), then the roles swapped: the
 * pool takes the replica for the primary and the primary for a standby,
 * and its next write goes to the replica, which answers 25006 (a
 * switchover the pool has not seen yet). */
static inline void roles_swapped(pgg_pool *p)
{
    cr_assert(reads_reach(p, 1, 20));
    pgg__pool_set_role(p, &p->hosts[1], PGG_ROLE_PRIMARY, "test");
    pgg__pool_set_role(p, &p->hosts[0], PGG_ROLE_STANDBY, "test");
}

/* After such a write: served by the primary, whose role (and the
 * replica's) the pool knows again, and select reads want there. */
static inline void expect_written_on_the_primary(pgh_cluster *c, pgg_pool *p, int host_index,
                                                 const char *select, const char *want)
{
    char v[64];

    cr_expect_eq(host_index, 0, "served by host %d", host_index);
    cr_expect_eq(host_stats(p, 0).role, PGG_ROLE_PRIMARY);
    cr_expect_eq(host_stats(p, 1).role, PGG_ROLE_STANDBY);
    cr_assert_eq(pgh_node_query_value(pgh_cluster_primary(c), select, v, sizeof v), 0);
    cr_expect_str_eq(v, want);
}

#endif
