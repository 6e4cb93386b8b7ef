/*
 * The pool's deadline watchdog against a hung server (SIGSTOP of the
 * primary): calls blocked in poll without a timeout on pooled connections
 * end at their deadline because the watchdog shuts their sockets down, one
 * shutdown per such call, within the deadline plus a tick (plus the slack
 * for a loaded machine that the pool's hung-server tests allow); the pool
 * stays balanced and serves again after the resume.
 */
#include <inttypes.h>
#include <pthread.h>

#include "pool.h"
#include "pool_util.h"

#define THREADS 4 /* = TEST_SETTINGS' pool_max: each holds a warm connection */
#define CALLS 3
#define TIMEOUT_MS 150

typedef struct waiter {
    pgg_pool *p;
    pthread_t t;
    int timeouts, query_timeouts, other;
    double worst_ms;
    char what[256];
} waiter;

static void *hung_calls(void *arg)
{
    waiter *w = arg;
    pgg_call call = {.timeout_ms = TIMEOUT_MS, .flags = PGG_CALL_NO_RETRY};

    for (int i = 0; i < CALLS; i++) {
        pgg_error e;
        double t0 = pgh_now_ms();
        PGresult *r = pgg_exec(w->p, PGG_WRITE, "SELECT 1", &call, NULL, &e);
        double took = pgh_now_ms() - t0;

        if (took > w->worst_ms)
            w->worst_ms = took;
        if (r || e.code != PGG_ETIMEDOUT) {
            w->other++;
            snprintf(w->what, sizeof w->what, "%s: %.200s", pgg_err_name(e.code), e.message);
        } else {
            w->timeouts++;
            /* Sent on a pooled connection, then the wait in poll(-1):
             * only the watchdog could end it. */
            if (strncmp(e.message, "query:", 6) == 0)
                w->query_timeouts++;
        }
        PQclear(r);
    }
    return NULL;
}

static void *slow_call(void *arg)
{
    pgg_pool *p = arg;
    pgg_error e;
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT pg_sleep(0.3)", NULL, NULL, &e);

    cr_expect_not_null(r, "warm-up: %s", e.message);
    PQclear(r);
    return NULL;
}

Test(watchdog, a_hung_server_costs_each_wait_its_deadline_plus_a_tick_at_most)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a hang (SIGSTOP)");
    /* Every call must meet the hang: no breaker in the way. */
    /* Writes on the plain path (read_your_writes=off): the pool-wide mode
     * pipelines them through pgg__link_poll, which does not use the
     * watchdog. */
    pgg_pool *p = pool_for(c, "breaker.mode=disabled read_your_writes=off");
    pthread_t warm[THREADS];
    waiter ws[THREADS];
    uint64_t fired0, backstops0, slices0;
    int timeouts = 0, query_timeouts = 0;
    double worst = 0;

    /* THREADS pooled connections, all idle when the server stops. */
    for (int i = 0; i < THREADS; i++)
        cr_assert_eq(pthread_create(&warm[i], NULL, slow_call, p), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(warm[i], NULL);
    cr_assert_eq(host_stats(p, 0).conns_idle, THREADS);
    fired0 = pgg__watchdog_fired(p->watchdog);
    backstops0 = pgg__link_backstops();
    slices0 = pgg__link_slice_deadlines();

    cr_assert_eq(pgh_node_hang(pgh_cluster_primary(c)), 0);
    for (int i = 0; i < THREADS; i++) {
        ws[i] = (waiter){.p = p};
        cr_assert_eq(pthread_create(&ws[i].t, NULL, hung_calls, &ws[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(ws[i].t, NULL);
        timeouts += ws[i].timeouts;
        query_timeouts += ws[i].query_timeouts;
        if (ws[i].worst_ms > worst)
            worst = ws[i].worst_ms;
        cr_expect_eq(ws[i].other, 0, "a call did not time out: %s", ws[i].what);
    }
    fprintf(stderr, "watchdog: %d timeouts (%d in a query wait), worst %.2f ms for a %d ms deadline\n",
            timeouts, query_timeouts, worst, TIMEOUT_MS);
    cr_expect_eq(timeouts, THREADS * CALLS);
    /* The first call of each thread took a warm connection. */
    cr_expect_geq(query_timeouts, THREADS);
    /* One shutdown per query wait that met its deadline, no more: connect
     * waits have their own timeout, and no other socket was touched. */
    /* Each query wait was ended by the watchdog, or, when the watchdog
     * thread was held up past the backstop, by the wait's own timeout, or
     * (the wait in recv, link.h) by the clock after a slice the scheduler
     * ended past the deadline. */
    cr_expect_eq(pgg__watchdog_fired(p->watchdog) - fired0 +
                     (pgg__link_backstops() - backstops0) +
                     (pgg__link_slice_deadlines() - slices0),
                 (uint64_t)query_timeouts);
    cr_expect_gt(pgg__watchdog_fired(p->watchdog) - fired0, 0,
                 "the watchdog ended no wait");
    cr_expect_leq(worst, TIMEOUT_MS + PGG_WATCHDOG_TICK_NS / 1e6 + 50.0,
                  "a call took %.2f ms for a %d ms deadline", worst, TIMEOUT_MS);

    cr_assert_eq(pgh_node_resume(pgh_cluster_primary(c)), 0);
    cr_expect_eq(read_ok(p, PGG_WRITE, "SELECT 1", 0), 0, "no call succeeded after the resume");
    end_test(p, c);
}

/* A large answer the client takes more slowly than the server sends finds
 * data at every wait: the watchdog, which ends a wait only while it is in
 * poll, may never catch one armed, so the call must look at the clock
 * between waits.  Each read below would take far longer than its
 * deadline; each must end at it, as a hung server's wait does. */
#define BIG_TIMEOUT_MS 60
#define BIG_CALLS 16

Test(watchdog, a_large_answer_still_ends_at_the_deadline)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "breaker.mode=disabled");
    pgg_call call = {.timeout_ms = BIG_TIMEOUT_MS, .flags = PGG_CALL_NO_RETRY};
    double worst = 0;
    uint64_t closed0 = pgg__canceller_closed(p->canceller);
    int dropped = 0;

    for (int i = 0; i < BIG_CALLS; i++) {
        pgg_error e;
        pgg_info info;
        double t0 = pgh_now_ms();
        /* A read on a pooled connection, with no position to wait for:
         * the watchdog's wait. */
        PGresult *r = pgg_exec(p, PGG_READ,
                               "SELECT repeat('x', 1000000) FROM generate_series(1, 300)",
                               &call, &info, &e);
        double took = pgh_now_ms() - t0;

        cr_expect_null(r, "300 MB arrived within %d ms", BIG_TIMEOUT_MS);
        cr_expect_eq(e.code, PGG_ETIMEDOUT, "%s: %s", pgg_err_name(e.code), e.message);
        /* Cut off mid-answer: its connection was dropped.  (Each call
         * needs a new connection, the last one's having been dropped; under
         * load its connect can take the whole deadline: nothing sent,
         * nothing dropped.) */
        if (info.sent)
            dropped++;
        PQclear(r);
        if (took > worst)
            worst = took;
    }
    cr_expect_gt(dropped, 0, "no call was cut off in its answer");
    fprintf(stderr, "large answers: worst %.2f ms for a %d ms deadline, %d of %d cut off in the answer\n",
            worst, BIG_TIMEOUT_MS, dropped, BIG_CALLS);
    /* Closing a connection cut off in a large answer frees tens of MB
     * (milliseconds, more under load): the closer thread does it, after
     * the call returned, not the caller inside its deadline. */
    for (int i = 0; i < 500 && pgg__canceller_closed(p->canceller) - closed0 < (uint64_t)dropped;
         i++)
        sleep_ms(10);
    cr_expect_eq(pgg__canceller_closed(p->canceller) - closed0, (uint64_t)dropped,
                 "%d dropped connections, %" PRIu64 " closed by the closer thread", dropped,
                 pgg__canceller_closed(p->canceller) - closed0);
    cr_expect_leq(worst, BIG_TIMEOUT_MS + PGG_WATCHDOG_TICK_NS / 1e6 + 50.0,
                  "a call took %.2f ms for a %d ms deadline", worst, BIG_TIMEOUT_MS);
    end_test(p, c);
}
