/*
 * Internal: the pool's events (pgg_pool_on_event) raised on the health
 * thread, delivered by a thread of their own.
 *
 * Why: the health thread runs the connect steps of every event loop's new
 * connections (host.c, "Asked connects"), the spares, the probes.  A
 * listener is user code, which may wait (a log sink, a lock of its own):
 * run there, it stalled every loop's connects for as long as it ran
 * (loop14).  The health thread hands its events over instead; other
 * threads still deliver theirs at once, on their own thread, unless events
 * are queued or being delivered, when theirs queue behind (each breaker's
 * events stay in order: breaker.c has one thread dispatch them at a time).
 */
#ifndef PGG_EVENTS_H
#define PGG_EVENTS_H

#include <stdbool.h>

#include "pgguard.h"

typedef struct pgg_events pgg_events;

/* How the events thread delivers one: the pool's listener, now. */
typedef void (*pgg_events_deliver_fn)(void *arg, const pgg_event *ev);

/* NULL when out of memory (events are then delivered where raised). */
pgg_events *pgg__events_new(pgg_events_deliver_fn deliver, void *arg);
/* Deliver what is queued, stop the thread.  Accepts NULL. */
void pgg__events_free(pgg_events *q);

/* This thread hands its events over (the health thread, at its start). */
void pgg__events_hand_over_here(void);

/* True: ev was queued for the events thread (copied; its strings must
 * outlive the pool: host names, static reasons).  False: deliver it now,
 * on this thread. */
bool pgg__events_queue(pgg_events *q, const pgg_event *ev);

/* Wait until nothing is queued or being delivered (pgg_pool_on_event;
 * tests: what the health thread raised has been delivered).  On the
 * events thread itself (a listener) it returns at once. */
void pgg__events_flush(pgg_events *q);

/* For tests: when set, the events thread runs it each time it wakes, before
 * it takes what was queued (a test holds the thread there to show that
 * queueing never waits for it). */
typedef void (*pgg__events_hook)(void);
extern _Atomic(pgg__events_hook) pgg__events_woke_hook;

#endif
