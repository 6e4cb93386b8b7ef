/*
 * Many threads on one breaker and one bulkhead: every admission, refusal
 * and result must be accounted for exactly, and listeners must see one
 * unbroken, ordered chain of transitions.
 */
#include "unit.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "breaker.h"
#include "bulkhead.h"

TestSuite(concurrency, .timeout = 600);

#define THREADS 8
#define CALLS 100000

#define SCENARIO_CALLS CALLS
#include "breaker_scenario.h"

static void breaker_scenario(bool count_window)
{
    pgg_breaker_config c;
    pgg_breaker_stats s;
    tally t[THREADS];
    uint64_t allowed = 0, rejected = 0, recorded = 0, fast = 0;
    int i;

    pgg__fake_clock_init(&FC, T0);
    if (count_window)
        scenario_breaker_config_count(&c);
    else
        scenario_breaker_config(&c);
    cr_assert_eq(pgg__breaker_init(&B, &c, T0, NULL), PGG_OK);
    memset(&chain, 0, sizeof chain);
    chain.last = PGG_BREAKER_CLOSED;
    cr_assert_eq(pgg__breaker_listen(&B, chain_listener, NULL), PGG_OK);

    for (i = 0; i < THREADS; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].seed = 0x9E3779B97F4A7C15u * (uint64_t)(i + 1);
        pthread_create(&t[i].th, NULL, breaker_worker, &t[i]);
    }
    for (i = 0; i < THREADS; i++) {
        pthread_join(t[i].th, NULL);
        allowed += t[i].allowed;
        rejected += t[i].rejected;
        recorded += t[i].recorded;
        fast += t[i].fast;
    }
    pgg__breaker_stats(&B, pgg__clock_now(pgg__fake_clock_base(&FC)), &s);
    /* The lock-free admissions really raced the rest. */
    if (count_window)
        cr_assert_gt(fast, allowed / 10, "%llu of %llu admitted by the fast path",
                     (unsigned long long)fast, (unsigned long long)allowed);

    cr_log_info("allowed %llu rejected %llu: %llu ok %llu failed %llu ignored %llu stale; "
                "%llu transitions, %llu events dropped",
                (unsigned long long)allowed, (unsigned long long)rejected,
                (unsigned long long)s.successes, (unsigned long long)s.failures,
                (unsigned long long)s.ignored, (unsigned long long)s.stale,
                (unsigned long long)s.transitions, (unsigned long long)s.events_dropped);
    cr_assert_eq(allowed + rejected, (uint64_t)THREADS * CALLS);
    cr_assert_eq(recorded, allowed, "a ticket was lost by the test itself");
    cr_assert_eq(s.admitted, allowed, "admitted %llu, threads saw %llu",
                 (unsigned long long)s.admitted, (unsigned long long)allowed);
    cr_assert_eq(s.rejected, rejected, "rejected %llu, threads saw %llu",
                 (unsigned long long)s.rejected, (unsigned long long)rejected);
    cr_assert_eq(s.successes + s.failures + s.ignored + s.stale, allowed,
                 "%llu + %llu + %llu + %llu != %llu", (unsigned long long)s.successes,
                 (unsigned long long)s.failures, (unsigned long long)s.ignored,
                 (unsigned long long)s.stale, (unsigned long long)allowed);
    /* The workload must actually have exercised the machine. */
    cr_assert_gt(s.transitions, 20, "only %llu transitions", (unsigned long long)s.transitions);
    cr_assert_gt(s.stale, 0);
    cr_assert_gt(rejected, 0);

    cr_assert_eq(atomic_load(&overlapped), 0, "two listeners ran at once");
    cr_assert_eq(chain.n + s.events_dropped, s.transitions);
    if (s.events_dropped == 0) {
        cr_assert_not(chain.broken_chain, "event %s -> ? after one ending in %s",
                      pgg_breaker_state_name(chain.bad_to),
                      pgg_breaker_state_name(chain.bad_from));
        cr_assert_eq(chain.last, s.state);
    }
    pgg__breaker_destroy(&B);
    pgg__fake_clock_destroy(&FC);
}

UTest(concurrency, breaker_totals_add_up_exactly)
{
    breaker_scenario(false);
}

UTest(concurrency, breaker_totals_add_up_exactly_with_the_lock_free_closed_path)
{
    breaker_scenario(true);
}

/* --------------------------------------------------------------- bulkhead */

#define CAPACITY_MAX 4

#include "bulkhead_scenario.h"

static atomic_int resizing_done;

static void *resizer(void *arg)
{
    int i = 0;

    (void)arg;
    while (!atomic_load(&resizing_done)) {
        pgg__bulkhead_resize(&BH, 1 + i++ % CAPACITY_MAX);
        unit_sleep_ms(1);
    }
    return NULL;
}

UTest(concurrency, bulkhead_totals_add_up_exactly)
{
    bh_tally t[THREADS];
    pgg_bulkhead_counts c;
    pthread_t rs;
    uint64_t ok = 0, full = 0, timeout = 0, other = 0;
    int i;

    cr_assert_eq(pgg__bulkhead_init(&BH, 2, NULL, NULL), PGG_OK);
    atomic_store(&inside, 0);
    atomic_store(&max_inside, 0);
    atomic_store(&resizing_done, 0);
    pthread_create(&rs, NULL, resizer, NULL);
    for (i = 0; i < THREADS; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].seed = 0x2545F4914F6CDD1Du * (uint64_t)(i + 1);
        pthread_create(&t[i].th, NULL, bulkhead_worker, &t[i]);
    }
    for (i = 0; i < THREADS; i++) {
        pthread_join(t[i].th, NULL);
        ok += t[i].ok;
        full += t[i].full;
        timeout += t[i].timeout;
        other += t[i].other;
    }
    atomic_store(&resizing_done, 1);
    pthread_join(rs, NULL);
    pgg__bulkhead_counts(&BH, &c);

    cr_log_info("%llu entered (%llu after waiting), %llu full, %llu timed out, max %d inside",
                (unsigned long long)ok, (unsigned long long)c.waited,
                (unsigned long long)full, (unsigned long long)timeout,
                atomic_load(&max_inside));
    cr_assert_eq(other, 0);
    cr_assert_eq(ok + full + timeout, (uint64_t)THREADS * CALLS);
    cr_assert_eq(c.admitted, ok);
    cr_assert_eq(c.rejected_full, full);
    cr_assert_eq(c.timed_out, timeout);
    cr_assert_leq(c.waited, c.admitted);
    cr_assert_eq(c.in_use, 0);
    cr_assert_eq(c.waiting, 0);
    cr_assert_leq(atomic_load(&max_inside), CAPACITY_MAX, "%d holders at once",
                  atomic_load(&max_inside));
    pgg__bulkhead_destroy(&BH);
}
