/*
 * The events thread (events.h): a queue, and one thread started at the
 * first event handed over, which delivers them in order.
 */
#include "events.h"

#include <pthread.h>
#include <stdlib.h>

#include "tls.h"

typedef struct queued {
    pgg_event ev;
    struct queued *next;
} queued;

struct pgg_events {
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* the thread: something queued, or stop */
    pthread_cond_t idle_cv; /* flush: nothing queued or being delivered */
    queued *head, **tail;
    bool delivering, started, stop;
    pthread_t thread;
    pgg_events_deliver_fn deliver;
    void *arg;
};

static PGG_TLS bool hand_over;

pgg_events *pgg__events_new(pgg_events_deliver_fn deliver, void *arg)
{
    pgg_events *q = calloc(1, sizeof *q);

    if (!q)
        return NULL;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    pthread_cond_init(&q->idle_cv, NULL);
    q->tail = &q->head;
    q->deliver = deliver;
    q->arg = arg;
    return q;
}

static void *events_main(void *arg)
{
    pgg_events *q = arg;

    pthread_mutex_lock(&q->mu);
    for (;;) {
        queued *n;

        while (!q->head && !q->stop)
            pthread_cond_wait(&q->cv, &q->mu);
        if (!q->head)
            break;
        n = q->head;
        q->head = n->next;
        if (!q->head)
            q->tail = &q->head;
        q->delivering = true;
        pthread_mutex_unlock(&q->mu);
        q->deliver(q->arg, &n->ev);
        free(n);
        pthread_mutex_lock(&q->mu);
        q->delivering = false;
        if (!q->head)
            pthread_cond_broadcast(&q->idle_cv);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

void pgg__events_hand_over_here(void)
{
    hand_over = true;
}

bool pgg__events_queue(pgg_events *q, const pgg_event *ev)
{
    queued *n;

    if (!q)
        return false;
    pthread_mutex_lock(&q->mu);
    /* Another thread's event goes behind those queued, or after the one
     * being delivered: never before an event raised ahead of it. */
    if (q->stop || (!hand_over && !q->head && !q->delivering) ||
        !(n = malloc(sizeof *n))) {
        pthread_mutex_unlock(&q->mu);
        return false;
    }
    if (!q->started) {
        q->started = pthread_create(&q->thread, NULL, events_main, q) == 0;
        if (!q->started) {
            pthread_mutex_unlock(&q->mu);
            free(n);
            return false;
        }
    }
    n->ev = *ev;
    n->next = NULL;
    *q->tail = n;
    q->tail = &n->next;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return true;
}

void pgg__events_flush(pgg_events *q)
{
    if (!q)
        return;
    pthread_mutex_lock(&q->mu);
    /* From a listener on the events thread: what is queued comes after. */
    while ((q->head || q->delivering) && q->started &&
           !pthread_equal(pthread_self(), q->thread))
        pthread_cond_wait(&q->idle_cv, &q->mu);
    pthread_mutex_unlock(&q->mu);
}

void pgg__events_free(pgg_events *q)
{
    bool started;

    if (!q)
        return;
    pthread_mutex_lock(&q->mu);
    q->stop = true;
    started = q->started;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    /* What is queued is delivered first (events_main stops on an empty
     * queue): after pgg_pool_free no listener runs. */
    if (started)
        pthread_join(q->thread, NULL);
    pthread_cond_destroy(&q->idle_cv);
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    free(q);
}
