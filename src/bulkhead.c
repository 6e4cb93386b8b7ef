#include "bulkhead.h"

#include "cancel.h"
#include "error.h"

#include <stdlib.h>
#include <string.h>

#define PENDING 1 /* not a PGG_* code: still queued */

#define SLOW PGG_BULKHEAD_SLOW
#define HOLDERS(s) PGG_BULKHEAD_HOLDERS(s)

static int holders(const pgg_bulkhead *bh)
{
    return HOLDERS(atomic_load((_Atomic uint64_t *)&bh->state));
}

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

/* Under the lock: the fast path is open again once nobody waits. */
static void slow_if_needed(pgg_bulkhead *bh)
{
    if (!bh->head && !bh->closed)
        atomic_fetch_and(&bh->state, ~SLOW);
}

/* Hand free slots to the oldest waiters; under the lock. */
static void grant(pgg_bulkhead *bh)
{
    pgg_bulkhead_waiter *w;

    while (bh->head && holders(bh) < atomic_load(&bh->capacity)) {
        w = bh->head;
        dequeue(bh, w);
        atomic_fetch_add(&bh->state, 1);
        atomic_fetch_add_explicit(&bh->admitted, 1, memory_order_relaxed);
        bh->waited++;
        w->result = PGG_OK;
        pthread_cond_signal(&w->cv);
    }
    slow_if_needed(bh);
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
    atomic_init(&bh->state, 0);
    atomic_init(&bh->capacity, capacity);
    atomic_init(&bh->admitted, 0);
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
    for (;;) {
        int64_t now = pgg__clock_now(bh->clock);

        if (w.result != PENDING || now >= deadline || pgg__cancel_now())
            break;
        /* Sliced while the call has a cancel handle, so a fire is seen
         * within a slice. */
        pgg__clock_wait(bh->clock, &w.cv, &bh->mu,
                        pgg__cancel_slice(now, deadline));
    }
    rc = w.result;
    if (rc == PENDING) {
        /* Nobody dequeued us, so nobody will signal w.cv again. */
        dequeue(bh, &w);
        bh->timed_out++;
        rc = PGG_ETIMEDOUT;
        slow_if_needed(bh);
    }
    pthread_cond_destroy(&w.cv);
    return rc;
}

int pgg__bulkhead_enter_slow(pgg_bulkhead *bh, int64_t deadline, int64_t now)
{
    uint64_t s;
    int rc;

    pthread_mutex_lock(&bh->mu);
    /* From here every change of state goes through the lock: a holder
     * leaving now sees SLOW and hands its slot over under mu. */
    s = atomic_fetch_or(&bh->state, SLOW) | SLOW;
    if (bh->closed) {
        rc = PGG_ECLOSED;
    } else if (!bh->head && HOLDERS(s) < atomic_load(&bh->capacity)) {
        atomic_fetch_add(&bh->state, 1);
        atomic_fetch_add_explicit(&bh->admitted, 1, memory_order_relaxed);
        rc = PGG_OK;
    } else if (deadline <= now) {
        bh->rejected_full++;
        rc = PGG_EBULKHEAD;
    } else {
        rc = wait_for_slot(bh, deadline);
    }
    slow_if_needed(bh);
    pthread_mutex_unlock(&bh->mu);
    return rc;
}

void pgg__bulkhead_leave_slow(pgg_bulkhead *bh)
{
    pthread_mutex_lock(&bh->mu);
    if (holders(bh) > 0)
        atomic_fetch_sub(&bh->state, 1);
    grant(bh);
    pthread_mutex_unlock(&bh->mu);
}

int pgg__bulkhead_resize(pgg_bulkhead *bh, int capacity)
{
    if (capacity < 0)
        return PGG_EINVAL;
    pthread_mutex_lock(&bh->mu);
    atomic_store(&bh->capacity, capacity);
    grant(bh);
    pthread_mutex_unlock(&bh->mu);
    return PGG_OK;
}

int pgg__bulkhead_capacity(pgg_bulkhead *bh)
{
    return atomic_load(&bh->capacity);
}

void pgg__bulkhead_counts(pgg_bulkhead *bh, pgg_bulkhead_counts *out)
{
    pthread_mutex_lock(&bh->mu);
    out->capacity = atomic_load(&bh->capacity);
    out->in_use = holders(bh);
    out->waiting = bh->waiting;
    out->admitted = atomic_load(&bh->admitted);
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
    atomic_fetch_or(&bh->state, SLOW);
    while ((w = bh->head) != NULL) {
        dequeue(bh, w);
        w->result = PGG_ECLOSED;
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&bh->mu);
}
