/* Helpers for integration tests that look at a pooled connection itself
 * (white box: the pool's internal headers). */
#ifndef PGG_TEST_LINK_UTIL_H
#define PGG_TEST_LINK_UTIL_H

#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdatomic.h>

#include "host.h"
#include "link.h"
#include "pool.h"
#include "pool_util.h"

/* Is the connection's socket in blocking mode (the wait in recv, link.h)? */
static inline bool socket_blocking(PGconn *conn)
{
    int fl = fcntl(PQsocket(conn), F_GETFL);

    cr_assert_geq(fl, 0);
    return !(fl & O_NONBLOCK);
}

/* The one connection of host 0 of a pool_max=1 pool, idle (parked or
 * listed); NULL when it is not idle. */
static inline pgg_link *only_link(pgg_pool *p)
{
    pgg_host *h = &p->hosts[0];

    for (int i = 0; i < PGG_PARK_SLOTS; i++) {
        pgg_link *l = atomic_load(&h->park[i].link);

        if (l)
            return l;
    }
    return h->idle;
}

/* Three one-shot calls on a pool_max=1 pool: its one connection is left
 * waiting in recv (blocking).  Returns it, idle. */
static inline pgg_link *link_left_blocking(pgg_pool *p)
{
    pgg_link *l;

    for (int i = 0; i < 3; i++)
        cr_assert_eq(read_ok(p, PGG_WRITE, "SELECT 1", 0), 0);
    l = only_link(p);
    cr_assert_not_null(l);
    cr_expect_eq(l->recv_mode, PGG_RECV_ON, "one-shot calls did not wait in recv");
    cr_expect(socket_blocking(l->conn));
    return l;
}

#endif
