/*
 * The breaker stress scenario shared by tests/unit/test_concurrency.c
 * (Criterion) and tests/tsan/tsan_breaker.c (a plain main(), because
 * Criterion does not start under ThreadSanitizer): eight threads on one
 * breaker and a shared fake clock, alternating sick and healthy periods,
 * stale results held across transitions, ticks, scrapes and a listener
 * that checks the chain of transitions; with a time window
 * (scenario_breaker_config) or a count window, whose closed state takes no
 * lock for successes (scenario_breaker_config_count).  The includer defines
 * SCENARIO_CALLS (calls per thread) and checks the totals its own way.
 */
#ifndef PGG_TESTS_BREAKER_SCENARIO_H
#define PGG_TESTS_BREAKER_SCENARIO_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "breaker.h"
#include "clock.h"
#include "scenario_rand.h"

#define SCENARIO_MS(x) ((int64_t)(x) * PGG_NS_PER_MS)
#define SCENARIO_T0 (INT64_C(1000) * PGG_NS_PER_SEC)

static pgg_fake_clock FC;
static pgg_breaker B;

typedef struct tally {
    pthread_t th;
    uint64_t seed;
    uint64_t allowed, rejected, recorded;
    uint64_t fast; /* admitted by the closed fast path (lock-free) */
} tally;

/* Written only by the listener: listeners never run concurrently. */
static struct {
    uint64_t n;
    pgg_breaker_state last;
    bool broken_chain;
    pgg_breaker_state bad_from, bad_to;
} chain;
static atomic_int in_listener, overlapped;

static inline void chain_listener(void *ud, pgg_breaker_state from,
                                  pgg_breaker_state to,
                                  pgg_breaker_reason reason)
{
    (void)ud;
    (void)reason;
    if (atomic_fetch_add(&in_listener, 1) != 0)
        atomic_store(&overlapped, 1);
    if (from != chain.last && !chain.broken_chain) {
        chain.broken_chain = true;
        chain.bad_from = chain.last;
        chain.bad_to = from;
    }
    chain.last = to;
    chain.n++;
    atomic_fetch_sub(&in_listener, 1);
}

/* Thresholds small enough that every transition happens many times. */
static inline void scenario_breaker_config(pgg_breaker_config *c)
{
    pgg__breaker_config_defaults(c);
    c->failure_rate = 50;
    c->slow_call_rate = 80;
    c->slow_call_duration_ms = 1;
    c->min_calls = 10;
    c->window_type = PGG_WINDOW_TIME;
    c->window_size = 10;
    c->window_bucket_ms = 1;
    c->consecutive_failures = 4;
    c->open_ms = 1;
    c->open_multiplier = 2;
    c->open_max_ms = 8;
    c->open_jitter = 0.3;
    c->half_open_probes = 4;
    c->half_open_successes = 3;
    c->half_open_max_ms = 3;
    c->healthy_decay_ms = 10;
    c->seed = 7;
}

/*
 * The same with a count window, whose closed state admits and records
 * successes without the lock (breaker.c, "The closed fast path"): those
 * race the locked operations that fold them in.
 */
static inline void scenario_breaker_config_count(pgg_breaker_config *c)
{
    scenario_breaker_config(c);
    c->window_type = PGG_WINDOW_COUNT;
    c->window_size = 20;
}

static inline void *breaker_worker(void *arg)
{
    tally *t = arg;
    pgg_ticket held = {0}, tk;
    bool holding = false;
    pgg_outcome o;

    for (int i = 0; i < SCENARIO_CALLS; i++) {
        /* One microsecond of fake time per call, across all threads. */
        int64_t now = pgg__fake_clock_advance(&FC, PGG_NS_PER_US);
        uint64_t r = scenario_xorshift(&t->seed);

        /* Alternate sick and healthy periods of 20 ms. */
        if (((now - SCENARIO_T0) / SCENARIO_MS(20)) % 2)
            o = r % 100 < 70 ? PGG_OUTCOME_FAILURE : PGG_OUTCOME_SUCCESS;
        else
            o = r % 100 < 3 ? PGG_OUTCOME_FAILURE : PGG_OUTCOME_SUCCESS;
        if ((r >> 8) % 10 == 0)
            o = PGG_OUTCOME_IGNORED;
        if (!pgg__breaker_allow(&B, now, &tk)) {
            t->rejected++;
            continue;
        }
        t->allowed++;
        if (tk.flags & PGG_TICKET_FAST)
            t->fast++;
        /* Some calls finish later, across transitions: stale results. */
        if (!holding && (r >> 16) % 20 == 0) {
            held = tk;
            holding = true;
            continue;
        }
        /* 20 % of them slow */
        pgg__breaker_record(&B, tk, o, (int64_t)((r >> 24) % SCENARIO_MS(5)) / 4, now);
        t->recorded++;
        if (holding && (r >> 32) % 400 == 0) {
            pgg__breaker_record(&B, held, PGG_OUTCOME_SUCCESS, 0, now);
            t->recorded++;
            holding = false;
        }
        if ((r >> 40) % 5000 == 0)
            pgg__breaker_tick(&B, now);
        if ((r >> 48) % 1000 == 0) {
            pgg_breaker_stats s;
            pgg__breaker_stats(&B, now, &s); /* a scrape racing the calls */
        }
    }
    if (holding) {
        pgg__breaker_record(&B, held, PGG_OUTCOME_FAILURE, 0,
                            pgg__clock_now(pgg__fake_clock_base(&FC)));
        t->recorded++;
    }
    return NULL;
}

#endif
