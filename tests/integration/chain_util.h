/* A worker's loop on an event loop (each callback starts the next call)
 * whose calls end at their start: one callback per turn of the loop, on
 * every adapter (test_async.c, test_async_loops.c). */
#ifndef PGG_TEST_CHAIN_UTIL_H
#define PGG_TEST_CHAIN_UTIL_H

#include "pool_util.h"
#include "pgguard_async.h"

/* Around the test's own setup on the loop's thread (the breaker forced
 * open, reset): a test that watches the loop (test_async_guard.h) defines
 * them to keep that out of the watch. */
#ifndef CHAIN_SETUP_BEGIN
#define CHAIN_SETUP_BEGIN()
#define CHAIN_SETUP_END()
#endif

/* The next call from each callback, up to cap (the test's bound). */
typedef struct restarter {
    int done, cap, first_code;
} restarter;

static void on_restart(pgg_async *ac, PGresult *res, const pgg_info *info, const pgg_error *err,
                       void *ud)
{
    restarter *r = ud;
    pgg_call call = {.timeout_ms = 5000};

    (void)info;
    PQclear(res);
    if (!r->done++)
        r->first_code = err->code;
    if (r->done < r->cap)
        cr_assert_eq(pgg_async_exec(ac, PGG_WRITE, "SELECT 1", &call, on_restart, r, NULL,
                                    NULL),
                     PGG_OK);
}

/*
 * Calls that end at their start (host 0's breaker forced open), each
 * started by the previous one's callback, complete one per turn of the
 * loop (turn(loop): one turn), whatever the loop does with a timer
 * restarted from its own callback with no delay.
 */
static inline void chain_one_per_turn(pgg_pool *p, pgg_async *ac, void (*turn)(void *loop),
                                      void *loop, const char *name, int cap)
{
    pgg_call call = {.timeout_ms = 5000};
    restarter r = {.cap = cap};
    int turns = 0;

    CHAIN_SETUP_BEGIN();
    cr_assert_eq(pgg_pool_force_open(p, 0), PGG_OK);
    CHAIN_SETUP_END();
    cr_assert_eq(pgg_async_exec(ac, PGG_WRITE, "SELECT 1", &call, on_restart, &r, NULL, NULL),
                 PGG_OK);
    cr_assert_eq(r.done, 0, "%s: a callback ran inside pgg_async_exec", name);
    while (r.done < r.cap && turns < 2 * r.cap) {
        int before = r.done;

        turn(loop);
        turns++;
        cr_assert_leq(r.done - before, 1, "%s: %d callbacks of calls started one by one ran in "
                      "one turn of the loop", name, r.done - before);
    }
    cr_expect_eq(r.first_code, PGG_EOPEN, "%s", pgg_err_name(r.first_code));
    cr_expect_eq(r.done, r.cap);
    CHAIN_SETUP_BEGIN();
    cr_assert_eq(pgg_pool_reset_breaker(p, 0), PGG_OK);
    CHAIN_SETUP_END();
}

#endif
