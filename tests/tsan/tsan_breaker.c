/*
 * ThreadSanitizer driver: eight threads on one breaker (on a shared fake
 * clock), with stale results, ticks and a listener.  Besides TSan's own
 * verdict, every admission, refusal and result must be accounted for
 * exactly and the listener must see one unbroken chain of transitions,
 * never two at once (the same workload as tests/unit/test_concurrency.c,
 * which Criterion runs outside TSan).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include "breaker.h"
#include "clock.h"
#include "tsan_util.h"

#define THREADS 8
#define CALLS 50000
#define MS(x) ((int64_t)(x) * PGG_NS_PER_MS)
#define T0 (INT64_C(1000) * PGG_NS_PER_SEC)

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
} chain;
static atomic_int in_listener, overlapped;

static void chain_listener(void *ud, pgg_breaker_state from, pgg_breaker_state to,
                           pgg_breaker_reason reason)
{
    (void)ud;
    (void)reason;
    if (atomic_fetch_add(&in_listener, 1) != 0)
        atomic_store(&overlapped, 1);
    if (from != chain.last)
        chain.broken_chain = true;
    chain.last = to;
    chain.n++;
    atomic_fetch_sub(&in_listener, 1);
}

static void *worker(void *arg)
{
    tally *t = arg;
    pgg_ticket held = {0}, tk;
    bool holding = false;
    pgg_outcome o;

    for (int i = 0; i < CALLS; i++) {
        int64_t now = pgg__fake_clock_advance(&FC, PGG_NS_PER_US);
        uint64_t r = tsan_xorshift(&t->seed);

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
        pgg__breaker_record(&B, tk, o, (int64_t)((r >> 24) % MS(5)) / 4, now);
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

int main(void)
{
    pgg_breaker_config c;
    pgg_breaker_stats s;
    tally t[THREADS];
    uint64_t allowed = 0, rejected = 0, recorded = 0;

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
    if (pgg__breaker_init(&B, &c, T0, NULL) != PGG_OK) {
        fprintf(stderr, "breaker init failed\n");
        return 1;
    }
    chain.last = PGG_BREAKER_CLOSED;
    CHECK(pgg__breaker_listen(&B, chain_listener, NULL) == PGG_OK, "listen");

    for (int i = 0; i < THREADS; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].seed = 0x9E3779B97F4A7C15u * (uint64_t)(i + 1);
        pthread_create(&t[i].th, NULL, worker, &t[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i].th, NULL);
        allowed += t[i].allowed;
        rejected += t[i].rejected;
        recorded += t[i].recorded;
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
    pgg__breaker_destroy(&B);
    pgg__fake_clock_destroy(&FC);
    return tsan_exit("tsan_breaker");
}
