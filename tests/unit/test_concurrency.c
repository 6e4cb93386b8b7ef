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

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* ---------------------------------------------------------------- breaker */

static pgg_fake_clock FC;
static pgg_breaker B;

typedef struct tally {
    pthread_t th;
    uint64_t seed;
    uint64_t allowed, rejected, recorded;
} tally;

/* Written only by the listener: listeners never run concurrently. */
static struct {
    uint64_t n;
    pgg_breaker_state last;
    bool broken_chain;
    pgg_breaker_state bad_from, bad_to;
} chain;
static atomic_int in_listener;
static atomic_int overlapped;

static void chain_listener(void *ud, pgg_breaker_state from, pgg_breaker_state to,
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

static void *breaker_worker(void *arg)
{
    tally *t = arg;
    pgg_ticket held = {0}, tk;
    bool holding = false;
    uint64_t r;
    int64_t now;
    pgg_outcome o;
    int i;

    for (i = 0; i < CALLS; i++) {
        /* One microsecond of fake time per call, across all threads. */
        now = pgg__fake_clock_advance(&FC, PGG_NS_PER_US);
        r = xorshift(&t->seed);
        /* Alternate sick and healthy periods of 20 ms. */
        if (((now - T0) / MS(20)) % 2)
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
        /* Some calls finish later, across transitions: stale results. */
        if (!holding && (r >> 16) % 20 == 0) {
            held = tk;
            holding = true;
            continue;
        }
        pgg__breaker_record(&B, tk, o, (int64_t)((r >> 24) % MS(5)) / 4, now); /* 20% slow */
        t->recorded++;
        if (holding && (r >> 32) % 400 == 0) {
            pgg__breaker_record(&B, held, PGG_OUTCOME_SUCCESS, 0, now);
            t->recorded++;
            holding = false;
        }
        if ((r >> 40) % 5000 == 0)
            pgg__breaker_tick(&B, now);
    }
    if (holding) {
        pgg__breaker_record(&B, held, PGG_OUTCOME_FAILURE, 0,
                            pgg__clock_now(pgg__fake_clock_base(&FC)));
        t->recorded++;
    }
    return NULL;
}

UTest(concurrency, breaker_totals_add_up_exactly)
{
    pgg_breaker_config c;
    pgg_breaker_stats s;
    tally t[THREADS];
    uint64_t allowed = 0, rejected = 0, recorded = 0;
    int i;

    pgg__fake_clock_init(&FC, T0);
    pgg__breaker_config_defaults(&c);
    c.failure_rate = 50;
    c.slow_call_rate = 80;
    c.slow_call_duration_ms = 1;
    c.min_calls = 10;
    c.window_type = PGG_WINDOW_TIME;
    c.window_size = 10;
    c.window_bucket_ms = 1;
    c.consecutive_failures = 4;
    c.open_ms = 1;
    c.open_multiplier = 2;
    c.open_max_ms = 8;
    c.open_jitter = 0.3;
    c.half_open_probes = 4;
    c.half_open_successes = 3;
    c.half_open_max_ms = 3;
    c.healthy_decay_ms = 10;
    c.seed = 7;
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
    }
    pgg__breaker_stats(&B, pgg__clock_now(pgg__fake_clock_base(&FC)), &s);

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

/* --------------------------------------------------------------- bulkhead */

#define CAPACITY_MAX 4

static pgg_bulkhead BH;
static atomic_int inside, max_inside;
static atomic_int resizing_done;

typedef struct bh_tally {
    pthread_t th;
    uint64_t seed;
    uint64_t ok, full, timeout, other;
} bh_tally;

static void *bulkhead_worker(void *arg)
{
    bh_tally *t = arg;
    int64_t now;
    int n, m, rc, i;
    uint64_t r;

    for (i = 0; i < CALLS; i++) {
        r = xorshift(&t->seed);
        now = pgg__now_ns();
        /* A quarter of the callers may wait a little, the others not at all. */
        rc = pgg__bulkhead_enter(&BH, r % 4 ? now : now + (int64_t)(r % 200) * PGG_NS_PER_US,
                                 now);
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
