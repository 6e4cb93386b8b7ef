/*
 * ThreadSanitizer driver for the breaker's notes (breaker.c, "Notes"):
 * "loop" threads that never wait for the breaker's lock (every admission
 * by pgg__breaker_try_allow, every result by pgg__breaker_record, which
 * queues it when the lock is busy) race a thread that keeps taking and
 * releasing the lock (ticks, scrapes, listener changes, health answers),
 * with a trip predicate that lengthens every section.  Besides TSan's own
 * verdict: no note is left behind once every thread is done (none
 * stranded: checked before anything takes the lock again), and every
 * admission and every result is counted exactly once (none lost, none
 * applied twice).  Twice: a breaker that never trips (every count exact by
 * outcome), and one that trips and probes all the time (stale results,
 * half-open permits, a listener's chain of transitions).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "breaker.h"
#include "clock.h"
#include "tsan_util.h"

#define LOOPS 3
#define CALLS 40000
#define SCENARIO_CALLS CALLS
#include "tests/unit/breaker_scenario.h"

static atomic_bool loops_done;

typedef struct loop_tally {
    pthread_t th;
    uint64_t seed;
    uint64_t admitted, refused, busy, noted;
    uint64_t by_outcome[3];
    uint64_t recorded;
} loop_tally;

/* Sections a little longer than nothing, so that the lock is often busy. */
static bool slow_predicate(void *ud, const pgg_breaker_counts *counts)
{
    volatile unsigned spin = 0;

    (void)ud;
    (void)counts;
    for (int i = 0; i < 200; i++)
        spin++;
    return false;
}

static void quiet_listener(void *ud, pgg_breaker_state from, pgg_breaker_state to,
                           pgg_breaker_reason reason)
{
    (void)ud;
    (void)from;
    (void)to;
    (void)reason;
}

/* Takes and releases the lock until the loops are done. */
static void *holder(void *arg)
{
    pgg_breaker_stats s;
    unsigned n = 0;

    (void)arg;
    while (!atomic_load(&loops_done)) {
        int64_t now = pgg__clock_now(pgg__fake_clock_base(&FC));

        switch (n++ % 4) {
        case 0:
            pgg__breaker_tick(&B, now);
            break;
        case 1:
            pgg__breaker_stats(&B, now, &s);
            break;
        case 2:
            pgg__breaker_listen(&B, quiet_listener, NULL);
            pgg__breaker_unlisten(&B, quiet_listener, NULL);
            break;
        default:
            pgg__breaker_host_silent(&B, now); /* off (silence_opens false) */
            break;
        }
    }
    return NULL;
}

static void *loop_worker(void *arg)
{
    loop_tally *t = arg;
    pgg_ticket held = {0}, tk;
    bool holding = false;
    pgg_outcome o;

    for (int i = 0; i < CALLS; i++) {
        int64_t now = pgg__fake_clock_advance(&FC, PGG_NS_PER_US);
        uint64_t r = scenario_xorshift(&t->seed);
        int a;

        if (((now - SCENARIO_T0) / SCENARIO_MS(20)) % 2)
            o = r % 100 < 70 ? PGG_OUTCOME_FAILURE : PGG_OUTCOME_SUCCESS;
        else
            o = r % 100 < 10 ? PGG_OUTCOME_FAILURE : PGG_OUTCOME_SUCCESS;
        if ((r >> 8) % 10 == 0)
            o = PGG_OUTCOME_IGNORED;
        /* BUSY: the loop's call looks again later (async.c: ST_BACK). */
        while ((a = pgg__breaker_try_allow(&B, now, &tk)) == PGG_BREAKER_BUSY) {
            t->busy++;
            sched_yield();
        }
        if (a == PGG_BREAKER_REFUSED) {
            t->refused++;
            continue;
        }
        t->admitted++;
        if (tk.flags & PGG_TICKET_NOTED)
            t->noted++;
        if (!holding && (r >> 16) % 20 == 0) {
            held = tk; /* finishes later, maybe after a transition */
            holding = true;
            continue;
        }
        pgg__breaker_record(&B, tk, o, (int64_t)((r >> 24) % SCENARIO_MS(5)) / 4, now);
        t->by_outcome[o]++;
        t->recorded++;
        if (holding && (r >> 32) % 100 == 0) {
            pgg__breaker_record(&B, held, PGG_OUTCOME_SUCCESS, 0, now);
            t->by_outcome[PGG_OUTCOME_SUCCESS]++;
            t->recorded++;
            holding = false;
        }
    }
    if (holding) {
        pgg__breaker_record(&B, held, PGG_OUTCOME_FAILURE, 0,
                            pgg__clock_now(pgg__fake_clock_base(&FC)));
        t->by_outcome[PGG_OUTCOME_FAILURE]++;
        t->recorded++;
    }
    return NULL;
}

static void run(bool trips)
{
    pgg_breaker_config c;
    pgg_breaker_stats s;
    loop_tally t[LOOPS];
    pthread_t h;
    uint64_t admitted = 0, refused = 0, busy = 0, noted = 0, recorded = 0;
    uint64_t by[3] = {0, 0, 0};

    pgg__fake_clock_init(&FC, SCENARIO_T0);
    memset(&chain, 0, sizeof chain);
    scenario_breaker_config_count(&c);
    c.trip = slow_predicate;
    c.silence_opens = false;
    if (!trips) {
        c.failure_rate = 0;
        c.slow_call_rate = 0;
        c.consecutive_failures = 0;
    }
    if (pgg__breaker_init(&B, &c, SCENARIO_T0, NULL) != PGG_OK) {
        fprintf(stderr, "breaker init failed\n");
        exit(1);
    }
    chain.last = PGG_BREAKER_CLOSED;
    CHECK(pgg__breaker_listen(&B, chain_listener, NULL) == PGG_OK, "listen");

    atomic_store(&loops_done, false);
    pthread_create(&h, NULL, holder, NULL);
    for (int i = 0; i < LOOPS; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].seed = 0x9E3779B97F4A7C15u * (uint64_t)(i + 3);
        pthread_create(&t[i].th, NULL, loop_worker, &t[i]);
    }
    for (int i = 0; i < LOOPS; i++) {
        pthread_join(t[i].th, NULL);
        admitted += t[i].admitted;
        refused += t[i].refused;
        busy += t[i].busy;
        noted += t[i].noted;
        recorded += t[i].recorded;
        for (int k = 0; k < 3; k++)
            by[k] += t[i].by_outcome[k];
    }
    atomic_store(&loops_done, true);
    pthread_join(h, NULL);

    /* Before anything takes the lock again: nothing stranded. */
    CHECK(atomic_load(&B.notes_head) == 0, "notes left behind with the lock free");
    CHECK(!atomic_load(&B.orphaned), "a delivery left behind");
    CHECK(atomic_load(&B.notes_free) == ~UINT64_C(0), "a note never given back");

    pgg__breaker_stats(&B, pgg__clock_now(pgg__fake_clock_base(&FC)), &s);
    printf("%s: admitted %llu (%llu noted) refused %llu busy %llu; results %llu: "
           "%llu ok %llu failed %llu ignored %llu stale; %llu notes applied, %llu waited; "
           "%llu transitions\n",
           trips ? "tripping" : "never tripping", (unsigned long long)admitted,
           (unsigned long long)noted, (unsigned long long)refused,
           (unsigned long long)busy, (unsigned long long)recorded,
           (unsigned long long)s.successes, (unsigned long long)s.failures,
           (unsigned long long)s.ignored, (unsigned long long)s.stale,
           (unsigned long long)s.noted, (unsigned long long)s.notes_full,
           (unsigned long long)s.transitions);

    CHECK(admitted + refused == (uint64_t)LOOPS * CALLS, "a call went missing");
    CHECK(recorded == admitted, "a ticket was lost by the driver itself");
    CHECK(s.admitted == admitted, "admitted %llu, loops saw %llu",
          (unsigned long long)s.admitted, (unsigned long long)admitted);
    CHECK(s.rejected == refused, "rejected %llu, loops saw %llu",
          (unsigned long long)s.rejected, (unsigned long long)refused);
    CHECK(s.successes + s.failures + s.ignored + s.stale == recorded,
          "results: %llu counted of %llu recorded",
          (unsigned long long)(s.successes + s.failures + s.ignored + s.stale),
          (unsigned long long)recorded);
    CHECK(s.noted > 0, "the lock was never busy for a loop: the race was not run");
    CHECK(atomic_load(&overlapped) == 0, "two listeners ran at once");
    CHECK(chain.n + s.events_dropped == s.transitions, "listener saw %llu of %llu transitions",
          (unsigned long long)chain.n, (unsigned long long)s.transitions);
    if (s.events_dropped == 0) {
        CHECK(!chain.broken_chain, "a transition did not start where the previous one ended");
        CHECK(chain.last == s.state, "the last event is not the current state");
    }
    if (!trips) {
        /* Nothing ever ends a generation: every count exact by outcome. */
        CHECK(s.transitions == 0, "it tripped");
        CHECK(s.stale == 0, "stale results");
        CHECK(s.successes == by[PGG_OUTCOME_SUCCESS], "successes %llu of %llu",
              (unsigned long long)s.successes,
              (unsigned long long)by[PGG_OUTCOME_SUCCESS]);
        CHECK(s.failures == by[PGG_OUTCOME_FAILURE], "failures %llu of %llu",
              (unsigned long long)s.failures, (unsigned long long)by[PGG_OUTCOME_FAILURE]);
        CHECK(s.ignored == by[PGG_OUTCOME_IGNORED], "ignored %llu of %llu",
              (unsigned long long)s.ignored, (unsigned long long)by[PGG_OUTCOME_IGNORED]);
        CHECK(noted > 0, "no admission was noted");
    } else {
        CHECK(s.transitions > 20, "only %llu transitions", (unsigned long long)s.transitions);
        CHECK(s.stale > 0, "no stale result");
    }
    pgg__breaker_destroy(&B);
    pgg__fake_clock_destroy(&FC);
}

int main(void)
{
    run(false);
    run(true);
    return tsan_exit("tsan_breaker_notes");
}
