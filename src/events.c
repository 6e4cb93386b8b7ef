/*
 * The events thread (events.h): a queue, and one thread started at the
 * first event handed over, which delivers them in order.
 *
 * Queueing takes no lock: an event loop's callback may queue an event
 * (its breaker's, behind the health thread's), and a lock the events thread
 * also took made it wait whenever that thread was preempted holding it,
 * as the closer's hand-off lock did (link.c: 3.9-5.7 ms under restart-all).
 * The queue is one word, `in`:
 *   NULL       idle: nothing queued, nothing being delivered;
 *   IN_HAND    the thread is delivering what it took, nothing new;
 *   a node     the newest event queued, linked to the one queued before it,
 *              down to NULL or IN_HAND.
 * Producers push with a compare-and-swap (a caller's only onto a word that
 * is not NULL: the test and the push are one step, so a caller's event
 * never goes before one queued ahead of it); the thread swaps IN_HAND in,
 * delivers what it took oldest first, and turns IN_HAND back to NULL only
 * when nothing came meanwhile.
 */
#include "events.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "lifo.h"
#include "tls.h"

typedef struct queued {
    pgg_lifo_node node; /* first: the queue (lifo.h) */
    pgg_event ev;
} queued;

/* Left in the queue by the thread while it delivers what it took: the
 * queue is not idle then (a caller's event may go behind). */
static pgg_lifo_node in_hand_mark;
#define IN_HAND (&in_hand_mark)

struct pgg_events {
    pgg_lifo in;
    sem_t wake; /* one post per event queued, and one to stop */
    atomic_bool started, stop;
    pthread_mutex_t start_mu; /* the thread's start (the health thread) and stop */
    pthread_mutex_t idle_mu;  /* flush only: */
    pthread_cond_t idle_cv;   /* `in` went back to NULL */
    pthread_t thread;
    pgg_events_deliver_fn deliver;
    void *arg;
};

static PGG_TLS bool hand_over;

_Atomic(pgg__events_hook) pgg__events_woke_hook;

pgg_events *pgg__events_new(pgg_events_deliver_fn deliver, void *arg)
{
    pgg_events *q = calloc(1, sizeof *q);

    if (!q)
        return NULL;
    if (sem_init(&q->wake, 0, 0) != 0) {
        free(q);
        return NULL;
    }
    atomic_init(&q->in.head, NULL);
    atomic_init(&q->started, false);
    atomic_init(&q->stop, false);
    pthread_mutex_init(&q->start_mu, NULL);
    pthread_mutex_init(&q->idle_mu, NULL);
    pthread_cond_init(&q->idle_cv, NULL);
    q->deliver = deliver;
    q->arg = arg;
    return q;
}

/* Deliver a taken list (newest first, down to NULL or IN_HAND) oldest first. */
static void deliver_taken(pgg_events *q, pgg_lifo_node *got)
{
    pgg_lifo_node *fifo = pgg__lifo_oldest_first(got, IN_HAND);

    while (fifo) {
        queued *e = (queued *)fifo;

        fifo = fifo->next;
        q->deliver(q->arg, &e->ev);
        free(e);
    }
}

static void *events_main(void *arg)
{
    pgg_events *q = arg;

    for (;;) {
        pgg__events_hook hook;

        while (sem_wait(&q->wake) != 0 && errno == EINTR)
            ;
        hook = atomic_load(&pgg__events_woke_hook);
        if (hook)
            hook();
        if (!pgg__lifo_empty(&q->in)) {
            do
                deliver_taken(q, pgg__lifo_take(&q->in, IN_HAND));
            while (!pgg__lifo_unmark(&q->in, IN_HAND));
            pthread_mutex_lock(&q->idle_mu);
            pthread_cond_broadcast(&q->idle_cv);
            pthread_mutex_unlock(&q->idle_mu);
        }
        /* Stop once what was queued is delivered. */
        if (atomic_load(&q->stop) && pgg__lifo_empty(&q->in))
            break;
    }
    return NULL;
}

void pgg__events_hand_over_here(void)
{
    hand_over = true;
}

/* The thread's start: only a thread that hands over (the health thread)
 * starts it; a caller queues only behind events that thread queued. */
static bool start(pgg_events *q)
{
    if (atomic_load_explicit(&q->started, memory_order_acquire))
        return true;
    pthread_mutex_lock(&q->start_mu);
    if (!atomic_load(&q->started) && !atomic_load(&q->stop) &&
        pthread_create(&q->thread, NULL, events_main, q) == 0)
        atomic_store_explicit(&q->started, true, memory_order_release);
    pthread_mutex_unlock(&q->start_mu);
    return atomic_load(&q->started);
}

bool pgg__events_queue(pgg_events *q, const pgg_event *ev)
{
    queued *n;

    if (!q || atomic_load(&q->stop))
        return false;
    if (!hand_over && pgg__lifo_empty(&q->in))
        return false;
    if ((hand_over && !start(q)) || !(n = malloc(sizeof *n)))
        return false;
    n->ev = *ev;
    if (hand_over) {
        (void)pgg__lifo_push(&q->in, &n->node);
    } else if (!pgg__lifo_push_nonempty(&q->in, &n->node)) {
        /* Another thread's event goes behind those queued, or after the
         * one being delivered: never before an event raised ahead of it. */
        free(n);
        return false;
    }
    sem_post(&q->wake);
    return true;
}

void pgg__events_flush(pgg_events *q)
{
    if (!q || !atomic_load_explicit(&q->started, memory_order_acquire))
        return;
    /* From a listener on the events thread: what is queued comes after. */
    if (pthread_equal(pthread_self(), q->thread))
        return;
    pthread_mutex_lock(&q->idle_mu);
    while (!pgg__lifo_empty(&q->in))
        pthread_cond_wait(&q->idle_cv, &q->idle_mu);
    pthread_mutex_unlock(&q->idle_mu);
}

void pgg__events_free(pgg_events *q)
{
    bool started;

    if (!q)
        return;
    pthread_mutex_lock(&q->start_mu);
    atomic_store(&q->stop, true);
    started = atomic_load(&q->started);
    pthread_mutex_unlock(&q->start_mu);
    /* What is queued is delivered first (events_main stops on an empty
     * queue): after pgg_pool_free no listener runs. */
    if (started) {
        sem_post(&q->wake);
        pthread_join(q->thread, NULL);
    }
    deliver_taken(q, pgg__lifo_take(&q->in, NULL));
    pthread_cond_destroy(&q->idle_cv);
    pthread_mutex_destroy(&q->idle_mu);
    pthread_mutex_destroy(&q->start_mu);
    sem_destroy(&q->wake);
    free(q);
}
