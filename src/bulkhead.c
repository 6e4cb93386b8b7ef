#include "bulkhead.h"

#include "cancel.h"
#include "error.h"
#include "trylock.h"

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

/*
 * Loops.  An event loop's thread never waits for mu (docs/DESIGN.md,
 * "Locks"): a holder preempted inside it, a blocking caller queueing or
 * handing a slot on, would make the loop sleep for a scheduler slice.
 * Only the slow halves meet mu, and only while someone waits (SLOW):
 *
 *   - a loop's enter only tries mu (trylock.h).  Taken: the blocking
 *     enter's rules with a deadline of now (admitted if nobody waits and
 *     a slot is free, else refused).  Busy: refused as full.  While SLOW
 *     is set, every change of the holders goes through mu, so a slot free
 *     at that moment is the holder's to hand on (to a waiter, or to the
 *     blocking caller entering) or was freed a moment ago: the loop's
 *     call is refused as one that came a moment earlier would have been,
 *     and a loop may not queue.
 *   - a loop's leave only tries mu.  Busy: the leave is owed: `owed`
 *     counts it (the slot stays in the holders: capacity holds and no
 *     newcomer can take it past the FIFO), then mu is tried once more.
 *     Every holder applies what is owed (drain_owed: the slots go to the
 *     oldest waiters, exactly as a leave under mu) when it takes mu,
 *     before it unlocks, and before a waiter sleeps (a sleep releases
 *     mu); after unlocking it fences and looks at `owed` again, and the
 *     loop that pushed tries mu after its push, so one of the two applies
 *     it (a Dekker pair, as the breaker's notes: breaker.c, "Notes").
 *     The one gap: a waiter going to sleep releases mu inside
 *     pthread_cond_wait, after its last look.  So the loop that owes a
 *     leave also settles it itself on its timer (pgg__bulkhead_settle_owed,
 *     tried every look until none is left; waited for only at its
 *     context's free): a slot is never left for "whoever takes mu next"
 *     while a waiter sleeps on it.
 *
 * Blocking callers still wait for mu, as before.
 */

/* The leaves loops owe, applied as leaves under mu: each frees its slot,
 * then the oldest waiters get what is free (mu held). */
static void drain_owed(pgg_bulkhead *bh)
{
    int n;

    if (atomic_load(&bh->owed) == 0)
        return;
    n = atomic_exchange(&bh->owed, 0);
    for (; n > 0; n--)
        if (holders(bh) > 0)
            atomic_fetch_sub(&bh->state, 1);
    grant(bh);
}

static void bh_lock(pgg_bulkhead *bh)
{
    pthread_mutex_lock(&bh->mu);
    drain_owed(bh);
}

static bool bh_trylock(pgg_bulkhead *bh)
{
    if (!pgg__trylock_few(&bh->mu))
        return false;
    drain_owed(bh);
    return true;
}

/* Unlock, with what is owed applied first; a leave owed as the lock was
 * released is applied here or by its loop's try (see "Loops"). */
void (*pgg__bulkhead_unlock_hook)(pgg_bulkhead *bh);

static void bh_unlock(pgg_bulkhead *bh)
{
    if (pgg__bulkhead_unlock_hook)
        pgg__bulkhead_unlock_hook(bh);
    for (;;) {
        drain_owed(bh);
        pthread_mutex_unlock(&bh->mu);
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load(&bh->owed) == 0 ||
            pthread_mutex_trylock(&bh->mu) != 0)
            return;
    }
}

/* The fake clock moved: every waiter re-checks its deadline. */
static void wake_waiters(void *ud)
{
    pgg_bulkhead *bh = ud;
    pgg_bulkhead_waiter *w;

    bh_lock(bh);
    for (w = bh->head; w; w = w->next)
        pthread_cond_signal(&w->cv);
    bh_unlock(bh);
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
    atomic_init(&bh->owed, 0);
    atomic_init(&bh->rejected_busy, 0);
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
        int64_t now;

        /* What loops owe, before the sleep releases mu (see "Loops"):
         * maybe this very slot. */
        drain_owed(bh);
        now = pgg__clock_now(bh->clock);
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

/* An enter under mu: admitted if nobody waits and a slot is free, else
 * refused (deadline <= now) or queued. */
static int enter_locked(pgg_bulkhead *bh, int64_t deadline, int64_t now)
{
    uint64_t s;
    int rc;

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
    return rc;
}

int pgg__bulkhead_enter_slow(pgg_bulkhead *bh, int64_t deadline, int64_t now)
{
    int rc;

    bh_lock(bh);
    rc = enter_locked(bh, deadline, now);
    bh_unlock(bh);
    return rc;
}

int pgg__bulkhead_enter_loop_slow(pgg_bulkhead *bh)
{
    int rc;

    if (!bh_trylock(bh)) {
        /* Someone waits or slots are being handed on (SLOW): see
         * "Loops". */
        atomic_fetch_add_explicit(&bh->rejected_busy, 1, memory_order_relaxed);
        return PGG_EBULKHEAD;
    }
    rc = enter_locked(bh, 0, 0);
    bh_unlock(bh);
    return rc;
}

static void leave_locked(pgg_bulkhead *bh)
{
    if (holders(bh) > 0)
        atomic_fetch_sub(&bh->state, 1);
    grant(bh);
}

void pgg__bulkhead_leave_slow(pgg_bulkhead *bh)
{
    bh_lock(bh);
    leave_locked(bh);
    bh_unlock(bh);
}

bool pgg__bulkhead_leave_loop_slow(pgg_bulkhead *bh)
{
    if (bh_trylock(bh)) {
        leave_locked(bh);
        bh_unlock(bh);
        return true;
    }
    /* Owed: the slot stays held until a holder hands it on. */
    atomic_fetch_add(&bh->owed, 1);
    return pgg__bulkhead_settle_owed(bh, false);
}

bool pgg__bulkhead_settle_owed(pgg_bulkhead *bh, bool wait)
{
    if (atomic_load(&bh->owed) == 0)
        return true;
    if (wait)
        bh_lock(bh);
    else if (pthread_mutex_trylock(&bh->mu) != 0)
        return atomic_load(&bh->owed) == 0; /* the holder's, maybe */
    bh_unlock(bh); /* applies them */
    return atomic_load(&bh->owed) == 0;
}

int pgg__bulkhead_owed(pgg_bulkhead *bh)
{
    return atomic_load(&bh->owed);
}

int pgg__bulkhead_resize(pgg_bulkhead *bh, int capacity)
{
    if (capacity < 0)
        return PGG_EINVAL;
    bh_lock(bh);
    atomic_store(&bh->capacity, capacity);
    grant(bh);
    bh_unlock(bh);
    return PGG_OK;
}

int pgg__bulkhead_capacity(pgg_bulkhead *bh)
{
    return atomic_load(&bh->capacity);
}

void pgg__bulkhead_counts(pgg_bulkhead *bh, pgg_bulkhead_counts *out)
{
    bh_lock(bh);
    out->capacity = atomic_load(&bh->capacity);
    out->in_use = holders(bh);
    out->waiting = bh->waiting;
    out->admitted = atomic_load(&bh->admitted);
    out->waited = bh->waited;
    out->rejected_full = bh->rejected_full +
                         atomic_load_explicit(&bh->rejected_busy,
                                              memory_order_relaxed);
    out->timed_out = bh->timed_out;
    bh_unlock(bh);
}

void pgg__bulkhead_close(pgg_bulkhead *bh)
{
    pgg_bulkhead_waiter *w;

    bh_lock(bh);
    bh->closed = true;
    atomic_fetch_or(&bh->state, SLOW);
    while ((w = bh->head) != NULL) {
        dequeue(bh, w);
        w->result = PGG_ECLOSED;
        pthread_cond_signal(&w->cv);
    }
    bh_unlock(bh);
}
