/*
 * The breaker's notes (breaker.c, "Notes"): a result, or a closed
 * breaker's admission, made while another thread holds the lock is queued
 * and applied by that holder, and counts exactly as if it had been made in
 * place; pgg__breaker_try_allow answers BUSY where the answer needs the
 * lock; a deliverer of listener events hands delivery to the holder
 * instead of waiting for it.  The event loop's thread must never wait for
 * the lock (issue 13): every test here that holds the lock on another
 * thread would hang (and time out) if a result, an admission or a delivery
 * waited for it.
 *
 * "Holding the lock" is done two ways: the test's own thread takes
 * B.mu directly (trylock from the owner fails as from anyone), then
 * releases it with a plain unlock, so that the next locked operation
 * applies the notes first; or a helper thread sits inside a real section
 * (the trip predicate, which runs under the lock) until told to go, so
 * that its own unlock applies them.
 */
#include "unit.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "breaker.h"

#define S PGG_OUTCOME_SUCCESS
#define F PGG_OUTCOME_FAILURE
#define I PGG_OUTCOME_IGNORED

typedef struct evlog {
    int n;
    pgg_breaker_event ev[64];
    pthread_t by[64];
} evlog;

static void log_event(void *ud, pgg_breaker_state from, pgg_breaker_state to,
                      pgg_breaker_reason reason)
{
    evlog *l = ud;

    if (l->n < 64) {
        l->ev[l->n].from = from;
        l->ev[l->n].to = to;
        l->ev[l->n].reason = reason;
        l->by[l->n] = pthread_self();
    }
    l->n++;
}

/* Count window, consecutive failures 3, no rates, no jitter. */
static pgg_breaker_config cfg_notes(void)
{
    pgg_breaker_config c;

    pgg__breaker_config_defaults(&c);
    c.failure_rate = 0;
    c.slow_call_rate = 0;
    c.consecutive_failures = 3;
    c.open_jitter = 0;
    c.open_ms = 1000;
    c.half_open_probes = 2;
    c.half_open_successes = 2;
    c.slow_call_duration_ms = 100;
    c.seed = 42;
    return c;
}

static void init(pgg_breaker *b, const pgg_breaker_config *c, evlog *log)
{
    pgg_error err;

    memset(log, 0, sizeof *log);
    cr_assert_eq(pgg__breaker_init(b, c, T0, &err), PGG_OK, "%s", err.message);
    cr_assert_eq(pgg__breaker_listen(b, log_event, log), PGG_OK);
}

static bool pending(pgg_breaker *b)
{
    return atomic_load(&b->notes_head) != 0;
}

/* The result recorded while this thread holds the lock: it must be
 * queued, not waited for (a wait here is a self-deadlock), unless the
 * closed fast path took it (a success, no lock). */
static void record_busy(pgg_breaker *b, pgg_ticket t, pgg_outcome o,
                        int64_t duration, int64_t now)
{
    cr_assert_eq(pthread_mutex_lock(&b->mu), 0);
    pgg__breaker_record(b, t, o, duration, now);
    cr_assert(pending(b) || (o == S && duration == 0), "the result was not queued");
    cr_assert_eq(pthread_mutex_unlock(&b->mu), 0);
}

/*
 * One script, run on a breaker whose results are all recorded in place
 * (busy false) and on one whose results are all queued behind a held lock
 * (busy true) and applied by the next locked operation: trips, a stale
 * result, half-open permits given back by an ignored probe, the probes'
 * verdict, and the instants each transition took from its result.
 */
static void script(pgg_breaker *b, bool busy, pgg_breaker_stats *out)
{
    int64_t now = T0;
    pgg_ticket t[4], old;

#define REC(tk, o, d)                                  \
    do {                                               \
        if (busy)                                      \
            record_busy(b, (tk), (o), (d), now);       \
        else                                           \
            pgg__breaker_record(b, (tk), (o), (d), now); \
    } while (0)

    /* Closed: two failures, a success, three failures trip it. */
    for (int i = 0; i < 2; i++) {
        cr_assert(pgg__breaker_allow(b, now, &t[0]));
        now += MS(1);
        REC(t[0], F, 0);
    }
    cr_assert(pgg__breaker_allow(b, now, &t[0]));
    REC(t[0], S, 0);
    cr_assert(pgg__breaker_allow(b, now, &old)); /* finishes after the trip */
    for (int i = 0; i < 3; i++) {
        cr_assert(pgg__breaker_allow(b, now, &t[0]));
        now += MS(5);
        REC(t[0], F, 0);
    }
    /* Both paths have applied it by now (the queued one at this tick). */
    pgg__breaker_tick(b, now);
    cr_assert_eq(pgg__breaker_state(b), PGG_BREAKER_OPEN);
    now += MS(1);
    REC(old, S, 0); /* stale */

    /* Half-open: two permits; one probe ignored gives its permit back. */
    now += MS(1000);
    cr_assert(pgg__breaker_allow(b, now, &t[0]));
    cr_assert(pgg__breaker_allow(b, now, &t[1]));
    cr_assert(!pgg__breaker_allow(b, now, &t[2]), "a third permit");
    REC(t[1], I, 0);
    cr_assert(pgg__breaker_allow(b, now, &t[2]), "the ignored probe's permit was not given back");
    now += MS(2);
    REC(t[0], S, 0);
    /* A failed probe fails the trial (half_open_successes = probes). */
    REC(t[2], F, 0);
    pgg__breaker_tick(b, now);
    cr_assert_eq(pgg__breaker_state(b), PGG_BREAKER_OPEN);
    pgg__breaker_stats(b, now, out);
#undef REC
}

UTest(breaker_notes, a_queued_result_counts_exactly_as_one_recorded_in_place)
{
    pgg_breaker_config c = cfg_notes();
    pgg_breaker a, q;
    evlog la, lq;
    pgg_breaker_stats sa, sq;

    init(&a, &c, &la);
    init(&q, &c, &lq);
    script(&a, false, &sa);
    script(&q, true, &sq);

    cr_assert_eq(sa.noted, 0);
    cr_assert_geq(sq.noted, 9, "the script's results were not queued (%llu)",
                 (unsigned long long)sq.noted);
    cr_assert_eq(sq.state, sa.state);
    cr_assert_eq(sq.generation, sa.generation);
    cr_assert_eq(sq.state_since_ns, sa.state_since_ns,
                 "a queued result's transition took another instant");
    cr_assert_eq(sq.open_duration_ns, sa.open_duration_ns);
    cr_assert_eq(sq.admitted, sa.admitted);
    cr_assert_eq(sq.rejected, sa.rejected);
    cr_assert_eq(sq.successes, sa.successes);
    cr_assert_eq(sq.failures, sa.failures);
    cr_assert_eq(sq.ignored, sa.ignored);
    cr_assert_eq(sq.stale, sa.stale);
    cr_assert_eq(sa.stale, 1);
    cr_assert_eq(sq.transitions, sa.transitions);
    cr_assert_eq(sq.reopens, sa.reopens);
    cr_assert_eq(lq.n, la.n);
    cr_assert_eq(la.n, 3);
    for (int i = 0; i < la.n; i++) {
        cr_assert_eq(lq.ev[i].from, la.ev[i].from);
        cr_assert_eq(lq.ev[i].to, la.ev[i].to);
        cr_assert_eq(lq.ev[i].reason, la.ev[i].reason, "event %d: %s, in place %s", i,
                     pgg__breaker_reason_name(lq.ev[i].reason),
                     pgg__breaker_reason_name(la.ev[i].reason));
    }
    cr_assert_eq(la.ev[0].reason, PGG_BREAKER_REASON_CONSECUTIVE_FAILURES);
    cr_assert_eq(la.ev[2].reason, PGG_BREAKER_REASON_PROBES_FAILED);
    pgg__breaker_destroy(&a);
    pgg__breaker_destroy(&q);
}

/* Results of one thread, queued, are applied in its order: a success
 * between failures breaks the run of consecutive failures. */
UTest(breaker_notes, queued_results_keep_their_order)
{
    pgg_breaker_config c = cfg_notes();
    pgg_breaker b;
    evlog log;
    pgg_ticket t[5];
    static const pgg_outcome seq[5] = {F, F, S, F, F};

    init(&b, &c, &log);
    for (int i = 0; i < 5; i++)
        cr_assert(pgg__breaker_allow(&b, T0, &t[i]));
    cr_assert_eq(pthread_mutex_lock(&b.mu), 0);
    for (int i = 0; i < 5; i++)
        pgg__breaker_record(&b, t[i], seq[i], 0, T0 + MS(i));
    cr_assert_eq(pthread_mutex_unlock(&b.mu), 0);
    pgg__breaker_tick(&b, T0 + MS(10));
    cr_assert_eq(pgg__breaker_state(&b), PGG_BREAKER_CLOSED,
                 "applied out of order: the success no longer ends the run");
    pgg__breaker_destroy(&b);
}

/* ---------------------------------------------------- a holder on a thread */

/*
 * A helper thread records a failure; the trip predicate (asked under the
 * lock after every failure) parks it there until the test says go, the
 * first time only.
 */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool inside, go, parked_once;
    bool verdict; /* the parked call's answer */
} gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false, false, false};

static bool parking_trip(void *ud, const pgg_breaker_counts *counts)
{
    bool trip = false;

    (void)ud;
    (void)counts;
    pthread_mutex_lock(&gate.mu);
    if (!gate.parked_once) {
        gate.parked_once = true;
        gate.inside = true;
        pthread_cond_broadcast(&gate.cv);
        while (!gate.go)
            pthread_cond_wait(&gate.cv, &gate.mu);
        trip = gate.verdict;
    }
    pthread_mutex_unlock(&gate.mu);
    return trip;
}

static void gate_wait_inside(void)
{
    pthread_mutex_lock(&gate.mu);
    while (!gate.inside)
        pthread_cond_wait(&gate.cv, &gate.mu);
    pthread_mutex_unlock(&gate.mu);
}

static void gate_open(void)
{
    pthread_mutex_lock(&gate.mu);
    gate.go = true;
    pthread_cond_broadcast(&gate.cv);
    pthread_mutex_unlock(&gate.mu);
}

static pgg_breaker HB;
static evlog HLOG;
static int64_t HNOW;

static void *holder_records_a_failure(void *arg)
{
    pgg_ticket t;

    (void)arg;
    if (pgg__breaker_allow(&HB, HNOW, &t))
        pgg__breaker_record(&HB, t, F, 0, HNOW);
    return NULL;
}

static pthread_t start_holder(pgg_breaker_config *c)
{
    pthread_t th;

    c->trip = parking_trip;
    HNOW = T0;
    init(&HB, c, &HLOG);
    cr_assert_eq(pthread_create(&th, NULL, holder_records_a_failure, NULL), 0);
    gate_wait_inside();
    return th;
}

Test(breaker_notes, the_holder_applies_what_was_queued_before_it_unlocks, .timeout = 30)
{
    pgg_breaker_config c = cfg_notes();
    pgg_ticket t, t2, t3;
    pgg_breaker_stats s;
    pthread_t th = start_holder(&c);

    /* The helper is inside the lock: none of this may wait for it. */
    cr_assert_eq(pgg__breaker_try_allow(&HB, T0 + MS(1), &t), PGG_BREAKER_ADMITTED,
                 "a closed breaker refused a loop's admission for a busy lock");
    cr_assert(t.flags & PGG_TICKET_NOTED, "admitted without a note");
    cr_assert(pgg__breaker_try_allow(&HB, T0 + MS(1), &t2) == PGG_BREAKER_ADMITTED);
    cr_assert(pgg__breaker_try_allow(&HB, T0 + MS(1), &t3) == PGG_BREAKER_ADMITTED);
    pgg__breaker_record(&HB, t2, F, 0, T0 + MS(2));
    pgg__breaker_record(&HB, t3, F, 0, T0 + MS(3));
    cr_assert(pending(&HB));
    cr_assert_eq(pgg__breaker_state(&HB), PGG_BREAKER_CLOSED);

    gate_open();
    cr_assert_eq(pthread_join(th, NULL), 0);
    /* Nothing else took the lock: the helper applied them as it left. */
    cr_assert(!pending(&HB), "notes left behind after the holder unlocked");
    cr_assert_eq(pgg__breaker_state(&HB), PGG_BREAKER_OPEN,
                 "three failures in a row (one in place, two queued) did not trip it");
    cr_assert_eq(HLOG.n, 1);
    cr_assert_eq(HLOG.ev[0].reason, PGG_BREAKER_REASON_CONSECUTIVE_FAILURES);

    /* Admitted before the trip: its result is stale now. */
    pgg__breaker_record(&HB, t, S, 0, T0 + MS(4));
    pgg__breaker_stats(&HB, T0 + MS(4), &s);
    cr_assert_eq(s.admitted, 4, "the queued admissions were not counted");
    cr_assert_eq(s.failures, 3);
    cr_assert_eq(s.stale, 1);
    cr_assert_eq(s.noted, 5);
    cr_assert_eq(s.state_since_ns, T0 + MS(3), "the trip took the holder's time, "
                 "not the queued result's");
    pgg__breaker_destroy(&HB);
}

/* A noted admission's success never takes the fast path (it could be
 * counted before its admission): it is queued too while the lock is busy,
 * and the window counts one call, admitted and then finished. */
Test(breaker_notes, a_noted_admissions_success_follows_its_admission, .timeout = 30)
{
    pgg_breaker_config c = cfg_notes();
    pgg_ticket t;
    pgg_breaker_stats s;
    pthread_t th = start_holder(&c);

    cr_assert_eq(pgg__breaker_try_allow(&HB, T0, &t), PGG_BREAKER_ADMITTED);
    pgg__breaker_record(&HB, t, S, 0, T0);
    gate_open();
    cr_assert_eq(pthread_join(th, NULL), 0);
    pgg__breaker_stats(&HB, T0, &s);
    cr_assert_eq(s.window.calls, 2);
    cr_assert_eq(s.window.requests, 2, "an admission counted after its own result");
    cr_assert_eq(s.successes, 1);
    cr_assert_eq(s.stale, 0);
    pgg__breaker_destroy(&HB);
}

/*
 * The other half of the handshake: a note pushed after the holder's last
 * drain, just before it unlocks (the unlock hook parks it there), is not
 * left behind: the holder's recheck after unlocking applies it, with
 * nothing else taking the lock.
 */
static pthread_t hook_thread;
static _Thread_local bool parks_at_unlock;

static void parking_unlock_hook(pgg_breaker *b)
{
    (void)b;
    if (!parks_at_unlock)
        return;
    atomic_store(&pgg__breaker_unlock_hook, NULL);
    pthread_mutex_lock(&gate.mu);
    gate.inside = true;
    pthread_cond_broadcast(&gate.cv);
    while (!gate.go)
        pthread_cond_wait(&gate.cv, &gate.mu);
    pthread_mutex_unlock(&gate.mu);
}

static void *holder_ticks(void *arg)
{
    (void)arg;
    parks_at_unlock = true;
    pgg__breaker_tick(&HB, T0);
    return NULL;
}

Test(breaker_notes, a_note_pushed_as_the_holder_unlocks_is_applied_by_its_recheck,
     .timeout = 30)
{
    pgg_breaker_config c = cfg_notes();
    pgg_ticket t;
    pgg_breaker_stats s;

    init(&HB, &c, &HLOG);
    cr_assert(pgg__breaker_allow(&HB, T0, &t));
    atomic_store(&pgg__breaker_unlock_hook, parking_unlock_hook);
    cr_assert_eq(pthread_create(&hook_thread, NULL, holder_ticks, NULL), 0);
    gate_wait_inside();
    pgg__breaker_record(&HB, t, F, 0, T0 + MS(1));
    cr_assert(pending(&HB), "recorded in place while another thread held the lock");
    gate_open();
    cr_assert_eq(pthread_join(hook_thread, NULL), 0);
    cr_assert(!pending(&HB), "the note was left behind after the holder unlocked");
    pgg__breaker_stats(&HB, T0 + MS(1), &s);
    cr_assert_eq(s.failures, 1);
    cr_assert_eq(s.noted, 1);
    pgg__breaker_destroy(&HB);
}

/* ------------------------------------------------------------ try_allow */

UTest(breaker_notes, try_allow_says_busy_where_the_answer_needs_the_lock)
{
    pgg_breaker_config c = cfg_notes();
    pgg_breaker b;
    evlog log;
    pgg_ticket t;
    pgg_breaker_stats s;
    int64_t now = T0;

    init(&b, &c, &log);
    /* Open, before its time: refused without the lock. */
    pgg__breaker_transition(&b, PGG_BREAKER_OPEN, now);
    cr_assert_eq(pthread_mutex_lock(&b.mu), 0);
    cr_assert_eq(pgg__breaker_try_allow(&b, now, &t), PGG_BREAKER_REFUSED);
    /* Past its time: moving to half-open needs the lock. */
    cr_assert_eq(pgg__breaker_try_allow(&b, now + SEC(5), &t), PGG_BREAKER_BUSY);
    cr_assert_eq(pthread_mutex_unlock(&b.mu), 0);
    cr_assert_eq(pgg__breaker_try_allow(&b, now + SEC(5), &t), PGG_BREAKER_ADMITTED);
    cr_assert_eq(pgg__breaker_state(&b), PGG_BREAKER_HALF_OPEN);
    cr_assert(t.flags & PGG_TICKET_PERMIT);
    /* Half-open: a permit is the lock's to give. */
    cr_assert_eq(pthread_mutex_lock(&b.mu), 0);
    cr_assert_eq(pgg__breaker_try_allow(&b, now + SEC(5), &t), PGG_BREAKER_BUSY);
    cr_assert_eq(pthread_mutex_unlock(&b.mu), 0);
    pgg__breaker_stats(&b, now + SEC(5), &s);
    cr_assert_eq(s.probes_admitted, 1, "a BUSY answer took a permit");
    cr_assert_eq(s.admitted, 1);
    cr_assert_eq(s.noted, 0);
    pgg__breaker_destroy(&b);

    /* Closed with an interval (the roll-over is the lock's): BUSY. */
    c.interval_ms = 1000;
    init(&b, &c, &log);
    cr_assert_eq(pthread_mutex_lock(&b.mu), 0);
    cr_assert_eq(pgg__breaker_try_allow(&b, now, &t), PGG_BREAKER_BUSY);
    cr_assert_eq(pthread_mutex_unlock(&b.mu), 0);
    pgg__breaker_destroy(&b);

    /* Closed, a time window bucketing by admission (gobreaker's rolling
     * window): the mark is the bucket, BUSY. */
    pgg__breaker_config_gobreaker(&c, 1, 10000, 1000);
    c.gobreaker.bucket_period_ms = 1000;
    pgg__breaker_config_effective(&c, &c);
    init(&b, &c, &log);
    cr_assert(b.window.by_admission);
    cr_assert_eq(pthread_mutex_lock(&b.mu), 0);
    cr_assert_eq(pgg__breaker_try_allow(&b, now, &t), PGG_BREAKER_BUSY);
    cr_assert_eq(pthread_mutex_unlock(&b.mu), 0);
    pgg__breaker_destroy(&b);

    /* Closed, a time window by completion: admitted, noted. */
    c = cfg_notes();
    c.window_type = PGG_WINDOW_TIME;
    c.window_size = 10;
    init(&b, &c, &log);
    cr_assert_eq(pthread_mutex_lock(&b.mu), 0);
    cr_assert_eq(pgg__breaker_try_allow(&b, now, &t), PGG_BREAKER_ADMITTED);
    cr_assert_eq(pthread_mutex_unlock(&b.mu), 0);
    pgg__breaker_record(&b, t, F, 0, now);
    pgg__breaker_stats(&b, now, &s);
    cr_assert_eq(s.admitted, 1);
    cr_assert_eq(s.window.calls, 1);
    cr_assert_eq(s.window.failures, 1);
    cr_assert_eq(s.window.requests, 1);
    cr_assert_eq(s.noted, 1);
    pgg__breaker_destroy(&b);
}

/* A noted admission whose generation ended before it was applied (the
 * holder tripped the breaker in its own section) counts in the totals, not
 * in the new window, and its result is stale. */
Test(breaker_notes, a_noted_admission_of_an_ended_generation_is_not_in_the_new_window,
      .timeout = 30)
{
    pgg_breaker_config c = cfg_notes();
    pgg_ticket t;
    pgg_breaker_stats s;
    pthread_t th;

    gate.verdict = true; /* the holder's failure trips it */
    th = start_holder(&c);
    cr_assert_eq(pgg__breaker_try_allow(&HB, T0, &t), PGG_BREAKER_ADMITTED);
    gate_open();
    cr_assert_eq(pthread_join(th, NULL), 0);
    cr_assert_eq(pgg__breaker_state(&HB), PGG_BREAKER_OPEN);
    cr_assert_eq(HLOG.ev[0].reason, PGG_BREAKER_REASON_TRIP_PREDICATE);
    pgg__breaker_record(&HB, t, F, 0, T0);
    pgg__breaker_stats(&HB, T0, &s);
    cr_assert_eq(s.admitted, 2);
    cr_assert_eq(s.window.requests, 1, "the late admission went into the frozen window");
    cr_assert_eq(s.failures, 1);
    cr_assert_eq(s.stale, 1);
    pgg__breaker_destroy(&HB);
}

/* ----------------------------------------------------------- delivery */

static pgg_breaker DB;
static evlog DLOG;
static pthread_t dhelper;
static bool dspawned;

static void *dhelper_main(void *arg)
{
    pgg_ticket t;

    (void)arg;
    /* A second event, queued while the test's thread delivers the first. */
    pgg__breaker_transition(&DB, PGG_BREAKER_CLOSED, T0);
    /* Then into the lock, parked in the trip predicate. */
    if (pgg__breaker_allow(&DB, T0, &t))
        pgg__breaker_record(&DB, t, F, 0, T0);
    return NULL;
}

static void spawning_listener(void *ud, pgg_breaker_state from, pgg_breaker_state to,
                              pgg_breaker_reason reason)
{
    log_event(ud, from, to, reason);
    if (!dspawned) {
        dspawned = true;
        cr_assert_eq(pthread_create(&dhelper, NULL, dhelper_main, NULL), 0);
        gate_wait_inside();
    }
}

Test(breaker_notes, a_deliverer_hands_delivery_to_the_holder_instead_of_waiting,
      .timeout = 30)
{
    pgg_breaker_config c = cfg_notes();
    pgg_error err;

    c.trip = parking_trip;
    memset(&DLOG, 0, sizeof DLOG);
    cr_assert_eq(pgg__breaker_init(&DB, &c, T0, &err), PGG_OK, "%s", err.message);
    cr_assert_eq(pgg__breaker_listen(&DB, spawning_listener, &DLOG), PGG_OK);

    /* This thread delivers the first event; its listener returns with the
     * helper inside the lock and a second event queued: taking the lock
     * back to deliver it would wait for the helper, which waits for us. */
    pgg__breaker_transition(&DB, PGG_BREAKER_OPEN, T0);
    cr_assert_eq(DLOG.n, 1, "the second event was delivered while the lock was held");
    cr_assert(pthread_equal(DLOG.by[0], pthread_self()));

    gate_open();
    cr_assert_eq(pthread_join(dhelper, NULL), 0);
    cr_assert_eq(DLOG.n, 2, "the holder did not deliver the handed-over event");
    cr_assert(pthread_equal(DLOG.by[1], dhelper), "delivered by another thread");
    cr_assert_eq(DLOG.ev[1].from, PGG_BREAKER_OPEN);
    cr_assert_eq(DLOG.ev[1].to, PGG_BREAKER_CLOSED);
    cr_assert(!atomic_load(&DB.orphaned));
    pgg__breaker_destroy(&DB);
}
