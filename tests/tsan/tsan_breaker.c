/*
 * ThreadSanitizer driver: eight threads on one breaker (on a shared fake
 * clock), with stale results, ticks and a listener.  Besides TSan's own
 * verdict, every admission, refusal and result must be accounted for
 * exactly and the listener must see one unbroken chain of transitions,
 * never two at once; once with a time window, once with a count window
 * whose closed state admits and records successes without the lock (the same workload as tests/unit/test_concurrency.c,
 * which Criterion runs outside TSan).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "breaker.h"
#include "clock.h"
#include "tsan_util.h"

#define THREADS 8
#define CALLS 50000
#define SCENARIO_CALLS CALLS
#include "tests/unit/breaker_scenario.h"

static void run(bool count_window)
{
    pgg_breaker_config c;
    pgg_breaker_stats s;
    tally t[THREADS];
    uint64_t allowed = 0, rejected = 0, recorded = 0, fast = 0;

    pgg__fake_clock_init(&FC, SCENARIO_T0);
    memset(&chain, 0, sizeof chain);
    if (count_window)
        scenario_breaker_config_count(&c);
    else
        scenario_breaker_config(&c);
    if (pgg__breaker_init(&B, &c, SCENARIO_T0, NULL) != PGG_OK) {
        fprintf(stderr, "breaker init failed\n");
        exit(1);
    }
    chain.last = PGG_BREAKER_CLOSED;
    CHECK(pgg__breaker_listen(&B, chain_listener, NULL) == PGG_OK, "listen");

    for (int i = 0; i < THREADS; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].seed = 0x9E3779B97F4A7C15u * (uint64_t)(i + 1);
        pthread_create(&t[i].th, NULL, breaker_worker, &t[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i].th, NULL);
        allowed += t[i].allowed;
        rejected += t[i].rejected;
        recorded += t[i].recorded;
        fast += t[i].fast;
    }
    pgg__breaker_stats(&B, pgg__clock_now(pgg__fake_clock_base(&FC)), &s);
    printf("allowed %llu rejected %llu: %llu ok %llu failed %llu ignored %llu stale; "
           "%llu transitions, %llu events dropped\n",
           (unsigned long long)allowed, (unsigned long long)rejected,
           (unsigned long long)s.successes, (unsigned long long)s.failures,
           (unsigned long long)s.ignored, (unsigned long long)s.stale,
           (unsigned long long)s.transitions, (unsigned long long)s.events_dropped);

    CHECK(allowed + rejected == (uint64_t)THREADS * CALLS, "a call went missing");
    CHECK(recorded == allowed, "a ticket was lost by the driver itself");
    CHECK(s.admitted == allowed, "admitted %llu, threads saw %llu",
          (unsigned long long)s.admitted, (unsigned long long)allowed);
    CHECK(s.rejected == rejected, "rejected %llu, threads saw %llu",
          (unsigned long long)s.rejected, (unsigned long long)rejected);
    CHECK(s.successes + s.failures + s.ignored + s.stale == allowed, "results do not add up");
    /* The workload must actually have exercised the machine. */
    CHECK(s.transitions > 20, "only %llu transitions", (unsigned long long)s.transitions);
    CHECK(s.stale > 0, "no stale result");
    CHECK(rejected > 0, "no rejection");
    CHECK(atomic_load(&overlapped) == 0, "two listeners ran at once");
    CHECK(chain.n + s.events_dropped == s.transitions, "listener saw %llu of %llu transitions",
          (unsigned long long)chain.n, (unsigned long long)s.transitions);
    if (s.events_dropped == 0) {
        CHECK(!chain.broken_chain, "a transition did not start where the previous one ended");
        CHECK(chain.last == s.state, "the last event is not the current state");
    }
    if (count_window)
        CHECK(fast > allowed / 10, "only %llu of %llu admitted by the lock-free path",
              (unsigned long long)fast, (unsigned long long)allowed);
    pgg__breaker_destroy(&B);
    pgg__fake_clock_destroy(&FC);
}

int main(void)
{
    run(false);
    run(true);
    return tsan_exit("tsan_breaker");
}
