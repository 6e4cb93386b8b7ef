/*
 * ThreadSanitizer driver: the events queue (src/events.c), which producers
 * push with a compare-and-swap and its thread swaps out whole.  One thread
 * hands its events over (the health thread's part) and four raise theirs
 * (callers', an event loop's): each queues behind pending events or, with
 * none, delivers on its own thread.  Besides TSan's verdict, every event
 * is delivered exactly once and each producer's events in the order it
 * raised them; a flush from another thread meanwhile returns.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include "events.h"
#include "tsan_util.h"

#define PRODUCERS 5 /* producer 0 hands over */
#define EVENTS 20000

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int last[PRODUCERS];
static long delivered;
static int out_of_order;

static void deliver(void *arg, const pgg_event *ev)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    if (ev->from != last[ev->host_index] + 1)
        out_of_order++;
    last[ev->host_index] = ev->from;
    delivered++;
    pthread_mutex_unlock(&mu);
}

typedef struct producer {
    pgg_events *q;
    int id;
} producer;

static void *produce(void *arg)
{
    producer *p = arg;

    if (p->id == 0)
        pgg__events_hand_over_here();
    for (int k = 1; k <= EVENTS; k++) {
        pgg_event ev = {.type = PGG_EVENT_BREAKER, .host_index = p->id, .from = k};

        if (!pgg__events_queue(p->q, &ev))
            deliver(NULL, &ev);
    }
    return NULL;
}

static void *flusher(void *arg)
{
    for (int k = 0; k < 200; k++)
        pgg__events_flush(arg);
    return NULL;
}

int main(void)
{
    pgg_events *q = pgg__events_new(deliver, NULL);
    producer ps[PRODUCERS];
    pthread_t t[PRODUCERS], f;

    CHECK(q != NULL, "out of memory");
    if (!q)
        return tsan_exit("tsan_events");
    for (int i = 0; i < PRODUCERS; i++) {
        ps[i] = (producer){q, i};
        pthread_create(&t[i], NULL, produce, &ps[i]);
    }
    pthread_create(&f, NULL, flusher, q);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(t[i], NULL);
    pthread_join(f, NULL);
    pgg__events_flush(q);
    pthread_mutex_lock(&mu);
    CHECK(delivered == (long)PRODUCERS * EVENTS, "%ld delivered of %ld", delivered,
          (long)PRODUCERS * EVENTS);
    CHECK(out_of_order == 0, "%d events out of their producer's order", out_of_order);
    pthread_mutex_unlock(&mu);
    pgg__events_free(q);
    return tsan_exit("tsan_events");
}
