/*
 * The events thread (src/events.c): queueing an event (pgg__pool_emit,
 * which an event loop's callback makes for its breaker's transitions, and
 * which queues behind the health thread's events while any are pending)
 * never waits for the events thread.  The test holds that thread as it
 * wakes, where it used to hold the queue's lock (a thread preempted there
 * made every loop queueing an event sleep, as the closer's lock did),
 * queues more events from another thread, and requires them all to be
 * queued while it is held; then every event is delivered, in order.
 * And raising an event never waits for a thread reading the listener (the
 * events thread delivering, the health thread raising one): the listener
 * is read without the lock they took.
 */
#include <criterion/criterion.h>

#include <pthread.h>
#include <stdatomic.h>

#include "events.h"
#include "pool_state.h"
#include "thread_hold.h"

#define CALLERS 64

static bool held, release, handed, queued_first;
static int delivered[1 + CALLERS], ndelivered;
static int callers_queued;

static void hold_events_thread(void)
{
    hold_until(&held, &release);
}

static void record(void *arg, const pgg_event *ev)
{
    (void)arg;
    pthread_mutex_lock(&hold_mu);
    if (ndelivered < 1 + CALLERS)
        delivered[ndelivered] = ev->host_index;
    ndelivered++;
    pthread_mutex_unlock(&hold_mu);
}

/* The health thread's part: it hands its events over. */
static void *health_like(void *arg)
{
    pgg_event ev = {.type = PGG_EVENT_BREAKER, .host_index = 0};

    pgg__events_hand_over_here();
    bool ok = pgg__events_queue(arg, &ev);
    pthread_mutex_lock(&hold_mu);
    queued_first = ok;
    pthread_mutex_unlock(&hold_mu);
    return NULL;
}

/* A caller's (a loop's): its events go behind the pending one. */
static void *caller(void *arg)
{
    int n = 0;

    for (int i = 1; i <= CALLERS; i++) {
        pgg_event ev = {.type = PGG_EVENT_BREAKER, .host_index = i};

        n += pgg__events_queue(arg, &ev);
    }
    pthread_mutex_lock(&hold_mu);
    callers_queued = n;
    pthread_mutex_unlock(&hold_mu);
    hold_set(&handed);
    return NULL;
}

Test(events, queueing_never_waits_for_the_events_thread_and_keeps_the_order)
{
    pgg_events *q = pgg__events_new(record, NULL);
    pthread_t h, t;

    cr_assert_not_null(q);
    atomic_store(&pgg__events_woke_hook, hold_events_thread);
    /* The first event starts and wakes the events thread, which stops in
     * the hook with it not yet delivered. */
    cr_assert_eq(pthread_create(&h, NULL, health_like, q), 0);
    pthread_join(h, NULL);
    cr_assert(queued_first, "the health thread's event was not queued");
    cr_assert(hold_wait_flag(&held), "the events thread never woke");
    cr_assert_eq(pthread_create(&t, NULL, caller, q), 0);
    bool done = hold_wait_flag(&handed);
    hold_set(&release);
    pthread_join(t, NULL);
    cr_expect(done, "the callers' events waited for the events thread held as it woke");
    cr_expect_eq(callers_queued, CALLERS, "a caller's event behind a pending one was not queued");
    pgg__events_flush(q);
    pthread_mutex_lock(&hold_mu);
    cr_expect_eq(ndelivered, 1 + CALLERS, "delivered %d of %d", ndelivered, 1 + CALLERS);
    for (int i = 0; i < ndelivered && i < 1 + CALLERS; i++)
        cr_expect_eq(delivered[i], i, "event %d delivered at position %d", delivered[i], i);
    pthread_mutex_unlock(&hold_mu);
    pgg__events_free(q);
    atomic_store(&pgg__events_woke_hook, NULL);
}

/* A caller's event with nothing pending is delivered where raised. */
Test(events, a_callers_event_with_none_pending_is_delivered_on_its_thread)
{
    pgg_events *q = pgg__events_new(record, NULL);
    pgg_event ev = {.type = PGG_EVENT_BREAKER, .host_index = 7};

    cr_assert_not_null(q);
    cr_expect(!pgg__events_queue(q, &ev), "queued with nothing pending");
    pgg__events_free(q);
}

/* ------------------------------------------------ the listener's reading */

static atomic_int heard_from_caller;
static bool reader_held, reader_release, raised;

static void hold_reader(void)
{
    hold_until(&reader_held, &reader_release);
}

static void listener(const pgg_event *ev, void *ud)
{
    (void)ud;
    if (ev->host_index == 77)
        atomic_fetch_add(&heard_from_caller, 1);
}

/* The events thread's part: it reads the listener and is held there. */
static void *reader(void *arg)
{
    pgg_event ev = {.type = PGG_EVENT_BREAKER, .host_index = 66};

    pgg__pool_deliver_event(arg, &ev);
    return NULL;
}

/* A loop's callback raising its breaker's event (nothing queued: it is
 * delivered on this thread). */
static void *raiser(void *arg)
{
    pgg_event ev = {.type = PGG_EVENT_BREAKER, .host_index = 77};

    pgg__pool_emit(arg, &ev);
    hold_set(&raised);
    return NULL;
}

Test(events, raising_an_event_never_waits_for_a_thread_reading_the_listener)
{
    pgg_config *cfg = pgg_config_new();
    pgg_error e;
    pgg_pool *p;
    pthread_t r, t;

    cr_assert_not_null(cfg);
    /* Nothing listens on port 1; the health thread's rounds are far apart. */
    cr_assert_eq(pgg_config_set_servers(cfg, "host=127.0.0.1 port=1 user=u dbname=x", &e),
                 PGG_OK, "%s", e.message);
    cr_assert_eq(pgg_config_parse(cfg, "health_interval_ms=60000", &e), PGG_OK, "%s", e.message);
    p = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    cr_assert_not_null(p, "%s", e.message);
    pgg_pool_on_event(p, listener, NULL);
    atomic_store(&pgg__pool_listener_read_hook, hold_reader);
    cr_assert_eq(pthread_create(&r, NULL, reader, p), 0);
    cr_assert(hold_wait_flag(&reader_held), "the reader never read the listener");
    /* Only the held reader meets the hook from here on. */
    atomic_store(&pgg__pool_listener_read_hook, NULL);
    cr_assert_eq(pthread_create(&t, NULL, raiser, p), 0);
    bool done = hold_wait_flag(&raised);
    hold_set(&reader_release);
    pthread_join(r, NULL);
    pthread_join(t, NULL);
    cr_expect(done, "raising an event waited for a thread reading the listener");
    cr_expect_eq(atomic_load(&heard_from_caller), 1, "the raised event was not delivered");
    pgg_pool_free(p);
}
