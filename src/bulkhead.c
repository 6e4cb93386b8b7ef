#include "bulkhead.h"

#include "error.h"

#include <stdlib.h>
#include <string.h>

#define PENDING 1 /* not a PGG_* code: still queued */

/* Lives on the waiting thread's stack, linked into the FIFO. */
struct pgg_bulkhead_waiter {
    pthread_cond_t cv; /* its own, so a grant wakes exactly one thread */
    pgg_bulkhead_waiter *next;
    pgg_bulkhead_waiter *prev;
    int result; /* PENDING, PGG_OK or PGG_ECLOSED; set by whoever dequeues it */
};

static void enqueue(pgg_bulkhead *bh, pgg_bulkhead_waiter *w)
{
    w->next = NULL;
    w->prev = bh->tail;
    if (bh->tail)
        bh->tail->next = w;
    else
        bh->head = w;
    bh->tail = w;
    bh->waiting++;
}

static void dequeue(pgg_bulkhead *bh, pgg_bulkhead_waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        bh->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        bh->tail = w->prev;
    w->next = w->prev = NULL;
    bh->waiting--;
}

/* Hand free slots to the oldest waiters; under the lock. */
static void grant(pgg_bulkhead *bh)
{
    pgg_bulkhead_waiter *w;

    while (bh->head && bh->in_use < bh->capacity) {
        w = bh->head;
        dequeue(bh, w);
        bh->in_use++;
        bh->admitted++;
        bh->waited++;
        w->result = PGG_OK;
        pthread_cond_signal(&w->cv);
    }
}

/* The fake clock moved: every waiter re-checks its deadline. */
static void wake_waiters(void *ud)
{
    pgg_bulkhead *bh = ud;
    pgg_bulkhead_waiter *w;

    pthread_mutex_lock(&bh->mu);
    for (w = bh->head; w; w = w->next)
        pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&bh->mu);
}

int pgg__bulkhead_init(pgg_bulkhead *bh, int capacity, const pgg_clock *clock,
                       pgg_error *err)
{
    int rc;

    if (capacity < 0)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "bulkhead capacity must be >= 0");
    memset(bh, 0, sizeof *bh);
    rc = pthread_mutex_init(&bh->mu, NULL);
    if (rc != 0)
        return pgg__error_set(err, PGG_ESYS, NULL, NULL, "bulkhead mutex: error %d", rc);
    bh->capacity = capacity;
    bh->clock = pgg__clock_or_system(clock);
    bh->watch.fn = wake_waiters;
    bh->watch.ud = bh;
    pgg__clock_watch(bh->clock, &bh->watch);
    return PGG_OK;
}

void pgg__bulkhead_destroy(pgg_bulkhead *bh)
{
    if (!bh)
        return;
    pgg__clock_unwatch(bh->clock, &bh->watch);
    pthread_mutex_destroy(&bh->mu);
}

pgg_bulkhead *pgg__bulkhead_new(int capacity, const pgg_clock *clock,
                                pgg_error *err)
{
    pgg_bulkhead *bh = malloc(sizeof *bh);

    if (!bh) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, NULL);
        return NULL;
    }
    if (pgg__bulkhead_init(bh, capacity, clock, err) != PGG_OK) {
        free(bh);
        return NULL;
    }
    return bh;
}

void pgg__bulkhead_free(pgg_bulkhead *bh)
{
    if (!bh)
        return;
    pgg__bulkhead_destroy(bh);
    free(bh);
}

static int wait_for_slot(pgg_bulkhead *bh, int64_t deadline)
{
    pgg_bulkhead_waiter w;
    int rc;

    if (pgg__cond_init(&w.cv) != 0) {
        bh->rejected_full++;
        return PGG_EBULKHEAD;
    }
    w.result = PENDING;
    enqueue(bh, &w);
    while (w.result == PENDING && pgg__clock_now(bh->clock) < deadline)
        pgg__clock_wait(bh->clock, &w.cv, &bh->mu, deadline);
    rc = w.result;
    if (rc == PENDING) {
        /* Nobody dequeued us, so nobody will signal w.cv again. */
        dequeue(bh, &w);
        bh->timed_out++;
        rc = PGG_ETIMEDOUT;
    }
    pthread_cond_destroy(&w.cv);
    return rc;
}

int pgg__bulkhead_enter(pgg_bulkhead *bh, int64_t deadline, int64_t now)
{
    int rc;

    pthread_mutex_lock(&bh->mu);
    if (bh->closed) {
        rc = PGG_ECLOSED;
    } else if (!bh->head && bh->in_use < bh->capacity) {
        bh->in_use++;
        bh->admitted++;
        rc = PGG_OK;
    } else if (deadline <= now) {
        bh->rejected_full++;
        rc = PGG_EBULKHEAD;
    } else {
        rc = wait_for_slot(bh, deadline);
    }
    pthread_mutex_unlock(&bh->mu);
    return rc;
}

void pgg__bulkhead_leave(pgg_bulkhead *bh)
{
    pthread_mutex_lock(&bh->mu);
    if (bh->in_use > 0)
        bh->in_use--;
    grant(bh);
    pthread_mutex_unlock(&bh->mu);
}

int pgg__bulkhead_resize(pgg_bulkhead *bh, int capacity)
{
    if (capacity < 0)
        return PGG_EINVAL;
    pthread_mutex_lock(&bh->mu);
    bh->capacity = capacity;
    grant(bh);
    pthread_mutex_unlock(&bh->mu);
    return PGG_OK;
}

int pgg__bulkhead_capacity(pgg_bulkhead *bh)
{
    int c;

    pthread_mutex_lock(&bh->mu);
    c = bh->capacity;
    pthread_mutex_unlock(&bh->mu);
    return c;
}

void pgg__bulkhead_counts(pgg_bulkhead *bh, pgg_bulkhead_counts *out)
{
    pthread_mutex_lock(&bh->mu);
    out->capacity = bh->capacity;
    out->in_use = bh->in_use;
    out->waiting = bh->waiting;
    out->admitted = bh->admitted;
    out->waited = bh->waited;
    out->rejected_full = bh->rejected_full;
    out->timed_out = bh->timed_out;
    pthread_mutex_unlock(&bh->mu);
}

void pgg__bulkhead_close(pgg_bulkhead *bh)
{
    pgg_bulkhead_waiter *w;

    pthread_mutex_lock(&bh->mu);
    bh->closed = true;
    while ((w = bh->head) != NULL) {
        dequeue(bh, w);
        w->result = PGG_ECLOSED;
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&bh->mu);
}
