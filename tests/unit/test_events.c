/*
 * The events thread (src/events.c): queueing an event (pgg__pool_emit,
 * which an event loop's callback makes for its breaker's transitions, and
 * which queues behind the health thread's events while any are pending)
 * never waits for the events thread.  The test holds that thread as it
 * wakes, where it used to hold the queue's lock (a thread preempted there
 * made every loop queueing an event sleep, as the closer's lock did),
 * queues more events from another thread, and requires them all to be
 * queued while it is held; then every event is delivered, in order.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "events.h"

#define CALLERS 64

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static bool held, release, handed, queued_first;
static int delivered[1 + CALLERS], ndelivered;
static int callers_queued;

static void hold_events_thread(void)
{
    pthread_mutex_lock(&mu);
    if (!release) {
        held = true;
        pthread_cond_broadcast(&cv);
        while (!release)
            pthread_cond_wait(&cv, &mu);
    }
    pthread_mutex_unlock(&mu);
}

static void record(void *arg, const pgg_event *ev)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    if (ndelivered < 1 + CALLERS)
        delivered[ndelivered] = ev->host_index;
    ndelivered++;
    pthread_mutex_unlock(&mu);
}

/* The health thread's part: it hands its events over. */
static void *health_like(void *arg)
{
    pgg_event ev = {.type = PGG_EVENT_BREAKER, .host_index = 0};

    pgg__events_hand_over_here();
    bool ok = pgg__events_queue(arg, &ev);
    pthread_mutex_lock(&mu);
    queued_first = ok;
    pthread_mutex_unlock(&mu);
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
    pthread_mutex_lock(&mu);
    callers_queued = n;
    handed = true;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    return NULL;
}

/* Wait for *flag under mu, at most 30 s (a hang detector, not a timing). */
static bool wait_for(bool *flag)
{
    struct timespec until;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 30;
    pthread_mutex_lock(&mu);
    while (!*flag)
        if (pthread_cond_timedwait(&cv, &mu, &until) == ETIMEDOUT)
            break;
    bool ok = *flag;
    pthread_mutex_unlock(&mu);
    return ok;
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
    cr_assert(wait_for(&held), "the events thread never woke");
    cr_assert_eq(pthread_create(&t, NULL, caller, q), 0);
    bool done = wait_for(&handed);
    pthread_mutex_lock(&mu);
    release = true;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(t, NULL);
    cr_expect(done, "the callers' events waited for the events thread held as it woke");
    cr_expect_eq(callers_queued, CALLERS, "a caller's event behind a pending one was not queued");
    pgg__events_flush(q);
    pthread_mutex_lock(&mu);
    cr_expect_eq(ndelivered, 1 + CALLERS, "delivered %d of %d", ndelivered, 1 + CALLERS);
    for (int i = 0; i < ndelivered && i < 1 + CALLERS; i++)
        cr_expect_eq(delivered[i], i, "event %d delivered at position %d", delivered[i], i);
    pthread_mutex_unlock(&mu);
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
