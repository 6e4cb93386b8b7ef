#include <criterion/criterion.h>

#include "router.h"

#define H(role, state, lag_ok, busy) {PGG_ROLE_##role, PGG_BREAKER_##state, lag_ok, busy}

static int route(pgg_intent intent, pgg_read_policy policy,
                 const pgg_route_host *h, int n, int *out)
{
    return pgg__route(intent, policy, h, n, 0, out);
}

Test(router, write_goes_to_primary_only)
{
    pgg_route_host h[] = {H(STANDBY, CLOSED, true, 0), H(PRIMARY, CLOSED, true, 5),
                          H(STANDBY, CLOSED, true, 0)};
    int out[3];
    cr_assert_eq(route(PGG_WRITE, PGG_READ_REPLICA, h, 3, out), 1);
    cr_assert_eq(out[0], 1);
}

Test(router, write_tries_unknown_roles_after_primary)
{
    pgg_route_host h[] = {H(UNKNOWN, CLOSED, true, 0), H(PRIMARY, CLOSED, true, 0),
                          H(STANDBY, CLOSED, true, 0)};
    int out[3];
    cr_assert_eq(route(PGG_WRITE, PGG_READ_REPLICA, h, 3, out), 2);
    cr_assert_eq(out[0], 1);
    cr_assert_eq(out[1], 0);
}

Test(router, no_primary_no_unknown_means_no_write_candidate)
{
    pgg_route_host h[] = {H(STANDBY, CLOSED, true, 0), H(STANDBY, CLOSED, true, 0)};
    int out[2];
    cr_assert_eq(route(PGG_WRITE, PGG_READ_REPLICA, h, 2, out), 0);
    cr_assert_eq(route(PGG_READ_PRIMARY, PGG_READ_REPLICA, h, 2, out), 0);
}

Test(router, read_prefers_replicas_then_primary)
{
    pgg_route_host h[] = {H(PRIMARY, CLOSED, true, 0), H(STANDBY, CLOSED, true, 3),
                          H(STANDBY, CLOSED, true, 1)};
    int out[3];
    cr_assert_eq(route(PGG_READ, PGG_READ_REPLICA, h, 3, out), 3);
    cr_assert_eq(out[0], 2, "least busy replica first");
    cr_assert_eq(out[1], 1);
    cr_assert_eq(out[2], 0, "primary last");
}

Test(router, lagging_replica_gets_no_reads)
{
    pgg_route_host h[] = {H(PRIMARY, CLOSED, true, 0), H(STANDBY, CLOSED, false, 0),
                          H(STANDBY, CLOSED, true, 9)};
    int out[3];
    int n = route(PGG_READ, PGG_READ_REPLICA, h, 3, out);
    cr_assert_eq(n, 2);
    cr_assert_eq(out[0], 2);
    cr_assert_eq(out[1], 0);
}

Test(router, a_held_host_of_unknown_role_gets_no_reads_but_writes)
{
    /* A standby held back from reads (hold.h: lag_ok false) stays so while
     * its role shows unknown (unreachable), under every read policy; a
     * write may still learn its role by connecting. */
    pgg_route_host h[] = {H(PRIMARY, CLOSED, true, 0), H(UNKNOWN, CLOSED, false, 0)};
    const pgg_read_policy policies[] = {PGG_READ_REPLICA, PGG_READ_REPLICA_ONLY, PGG_READ_ANY};
    int out[2];

    for (size_t k = 0; k < sizeof policies / sizeof policies[0]; k++) {
        int n = route(PGG_READ, policies[k], h, 2, out);
        for (int j = 0; j < n; j++)
            cr_assert_neq(out[j], 1, "policy %d read the held host", (int)policies[k]);
        cr_assert_eq(route(PGG_READ, policies[k], &h[1], 1, out), 0, "one host, policy %d",
                     (int)policies[k]);
    }
    cr_assert_eq(route(PGG_WRITE, PGG_READ_REPLICA, h, 2, out), 2);
    cr_assert_eq(out[1], 1, "a write may connect to learn its role");
}

Test(router, open_breakers_go_last_half_open_before_them)
{
    pgg_route_host h[] = {H(PRIMARY, CLOSED, true, 0), H(STANDBY, OPEN, true, 0),
                          H(STANDBY, HALF_OPEN, true, 0), H(STANDBY, CLOSED, true, 4)};
    int out[4];
    cr_assert_eq(route(PGG_READ, PGG_READ_REPLICA, h, 4, out), 4);
    cr_assert_eq(out[0], 3);
    cr_assert_eq(out[1], 2);
    cr_assert_eq(out[2], 1);
    cr_assert_eq(out[3], 0);
}

Test(router, forced_open_goes_last_like_open)
{
    pgg_route_host h[] = {H(PRIMARY, FORCED_OPEN, true, 0), H(STANDBY, FORCED_OPEN, true, 0),
                          H(STANDBY, CLOSED, true, 5)};
    int out[3];
    /* The forced-open primary is still the write candidate: its breaker
     * refuses it and the caller hears "open", not "no primary". */
    cr_assert_eq(route(PGG_WRITE, PGG_READ_REPLICA, h, 3, out), 1);
    cr_assert_eq(out[0], 0);
    cr_assert_eq(route(PGG_READ, PGG_READ_REPLICA, h, 3, out), 3);
    cr_assert_eq(out[0], 2);
    cr_assert_eq(out[1], 1);
    cr_assert_eq(out[2], 0);
}

Test(router, disabled_and_metrics_only_count_as_closed)
{
    pgg_route_host h[] = {H(STANDBY, HALF_OPEN, true, 0), H(STANDBY, DISABLED, true, 2),
                          H(STANDBY, METRICS_ONLY, true, 1)};
    int out[3];
    cr_assert_eq(route(PGG_READ, PGG_READ_REPLICA, h, 3, out), 3);
    cr_assert_eq(out[0], 2);
    cr_assert_eq(out[1], 1);
    cr_assert_eq(out[2], 0);
}

Test(router, policies)
{
    pgg_route_host h[] = {H(PRIMARY, CLOSED, true, 0), H(STANDBY, CLOSED, true, 1),
                          H(UNKNOWN, CLOSED, true, 0)};
    int out[3];

    cr_assert_eq(route(PGG_READ, PGG_READ_REPLICA_ONLY, h, 3, out), 2);
    cr_assert_eq(out[0], 1);
    cr_assert_eq(out[1], 2);

    cr_assert_eq(route(PGG_READ, PGG_READ_PRIMARY_ONLY, h, 3, out), 2);
    cr_assert_eq(out[0], 0);
    cr_assert_eq(out[1], 2);

    cr_assert_eq(route(PGG_READ, PGG_READ_ANY, h, 3, out), 3);
    cr_assert_eq(out[2], 1, "the busy replica comes last under 'any'");

    cr_assert_eq(route(PGG_READ, PGG_READ_REPLICA, h, 3, out), 3);
    cr_assert_eq(out[0], 1);
    cr_assert_eq(out[1], 2);
    cr_assert_eq(out[2], 0);
}

Test(router, rotate_spreads_ties)
{
    pgg_route_host h[] = {H(STANDBY, CLOSED, true, 0), H(STANDBY, CLOSED, true, 0),
                          H(STANDBY, CLOSED, true, 0)};
    int out[3];
    int firsts[3] = {0, 0, 0};

    for (unsigned r = 0; r < 30; r++) {
        cr_assert_eq(pgg__route(PGG_READ, PGG_READ_REPLICA, h, 3, r, out), 3);
        firsts[out[0]]++;
    }
    cr_assert_eq(firsts[0], 10);
    cr_assert_eq(firsts[1], 10);
    cr_assert_eq(firsts[2], 10);
}

Test(router, empty_and_oversized_inputs)
{
    int out[PGG_MAX_HOSTS];
    pgg_route_host h[PGG_MAX_HOSTS + 5] = {0};

    cr_assert_eq(pgg__route(PGG_READ, PGG_READ_REPLICA, h, 0, 7, out), 0);
    for (int i = 0; i < PGG_MAX_HOSTS + 5; i++)
        h[i] = (pgg_route_host)H(STANDBY, CLOSED, true, i);
    cr_assert_eq(pgg__route(PGG_READ, PGG_READ_REPLICA, h, PGG_MAX_HOSTS + 5, 3, out),
                 PGG_MAX_HOSTS);
    cr_assert_eq(out[0], 0);
}
