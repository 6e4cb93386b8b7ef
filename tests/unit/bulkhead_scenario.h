/*
 * The bulkhead stress scenario shared by tests/unit/test_concurrency.c
 * (Criterion) and tests/tsan/tsan_bulkhead.c (a plain main(), because
 * Criterion does not start under ThreadSanitizer): callers that refuse to
 * wait or wait a little, holders that yield so the slots fill up, and a
 * count of the most holders ever inside at once.  The includer defines
 * SCENARIO_CALLS (calls per thread) and resizes or checks as it likes.
 */
#ifndef PGG_TESTS_BULKHEAD_SCENARIO_H
#define PGG_TESTS_BULKHEAD_SCENARIO_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#include "bulkhead.h"
#include "clock.h"
#include "scenario_rand.h"

static pgg_bulkhead BH;
static atomic_int inside, max_inside;

typedef struct bh_tally {
    pthread_t th;
    uint64_t seed;
    uint64_t ok, full, timeout, other;
} bh_tally;

static inline void *bulkhead_worker(void *arg)
{
    bh_tally *t = arg;

    for (int i = 0; i < SCENARIO_CALLS; i++) {
        uint64_t r = scenario_xorshift(&t->seed);
        int64_t now = pgg__now_ns();
        /* A quarter of the callers may wait a little, the others not at all. */
        int rc = pgg__bulkhead_enter(&BH, r % 4 ? now : now + (int64_t)(r % 200) * PGG_NS_PER_US,
                                     now);
        int n, m;

        switch (rc) {
        case PGG_OK:
            n = atomic_fetch_add(&inside, 1) + 1;
            m = atomic_load(&max_inside);
            while (n > m && !atomic_compare_exchange_weak(&max_inside, &m, n))
                ;
            if (r % 64 == 0) /* hold on, so that the slots fill up */
                sched_yield();
            atomic_fetch_sub(&inside, 1);
            pgg__bulkhead_leave(&BH);
            t->ok++;
            break;
        case PGG_EBULKHEAD:
            t->full++;
            break;
        case PGG_ETIMEDOUT:
            t->timeout++;
            break;
        default:
            t->other++;
            break;
        }
    }
    return NULL;
}

#endif
