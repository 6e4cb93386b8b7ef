/*
 * Internal: the bulkhead, a counting semaphore on concurrent calls.
 *
 * At most `capacity` holders at once.  A caller that finds it full waits
 * until its absolute deadline at the latest, in FIFO order: a slot freed
 * while anyone waits is handed to the oldest waiter directly, so a newcomer
 * never overtakes a waiter (no barging), and only that waiter is woken.
 * A caller whose deadline has already passed (the pool passes
 * min(now + bulkhead.max_wait_ms, call deadline), so a max wait of 0 means
 * "now") is refused at once without queueing.
 *
 * Refusals are the bulkhead's own outcomes (PGG_EBULKHEAD, PGG_ETIMEDOUT),
 * never a host failure: nothing here touches a breaker.
 *
 * Waits go through the bulkhead's clock (see clock.h): with the system
 * clock they are pthread_cond_timedwait on CLOCK_MONOTONIC; with a fake
 * clock, each set/advance wakes every waiter of every bulkhead built on it
 * (through one clock watch per bulkhead) to re-check its deadline, so tests
 * drive deadline expiry by moving the fake clock.
 *
 * Thread-safe.  While nobody waits, enter and leave are one compare-and-
 * swap each on one cache line, no lock; once someone waits (or after
 * close), both go through the mutex so that freed slots go to waiters in
 * order.  No allocation after init (a waiter lives on its own stack).
 *
 * An event loop's thread never waits for the mutex (the _loop variants;
 * bulkhead.c, "Loops"): its enter only tries it and refuses when it stays
 * busy (a loop never queues), and its leave, when the mutex stays busy,
 * is owed: counted in `owed` (the slot still held, so capacity holds and
 * nobody barges), applied in FIFO order by whoever holds the mutex next
 * before it unlocks, and settled by the loop itself
 * (pgg__bulkhead_settle_owed) if nobody did.
 */
#ifndef PGG_BULKHEAD_H
#define PGG_BULKHEAD_H

#include "clock.h"
#include "pgguard.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct pgg_bulkhead_waiter pgg_bulkhead_waiter;

typedef struct pgg_bulkhead {
    /* The hot line: holders (low 32 bits) and the SLOW flag, which a
     * waiter or close sets so that every enter and leave takes mu (FIFO
     * hand-off); while it is clear, enter and leave are one CAS each. */
    _Atomic uint64_t state;
    _Atomic int capacity;
    atomic_uint_fast64_t admitted;
    /* The lock and the waiters' fields on other lines (no alignment is
     * required of the embedding struct: padding, not _Alignas). */
    char pad[128];
    pthread_mutex_t mu;
    const pgg_clock *clock;
    pgg_clock_watch watch;
    int waiting;
    bool closed;
    /* Leaves of event loops that found mu busy: their slots, still
     * counted in state, handed on by the next holder (bulkhead.c,
     * "Loops"). */
    atomic_int owed;
    /* Loop enters refused because mu stayed busy (rejected_full counts
     * them too, in counts()). */
    atomic_uint_fast64_t rejected_busy;
    pgg_bulkhead_waiter *head; /* oldest waiter */
    pgg_bulkhead_waiter *tail;
    uint64_t rejected_full, timed_out, waited;
} pgg_bulkhead;

typedef struct pgg_bulkhead_counts {
    int capacity;
    int in_use;  /* may exceed capacity for a while after a shrink */
    int waiting;
    uint64_t admitted;      /* entries, at once or after a wait */
    uint64_t waited;        /* entries that had to queue first */
    uint64_t rejected_full; /* refused at once (PGG_EBULKHEAD) */
    uint64_t timed_out;     /* queued, then the deadline came (PGG_ETIMEDOUT) */
} pgg_bulkhead_counts;

/*
 * capacity >= 0 (0 refuses everyone until resized).  clock NULL means the
 * system clock.  Returns PGG_OK, PGG_EINVAL or PGG_ESYS.
 */
int pgg__bulkhead_init(pgg_bulkhead *bh, int capacity, const pgg_clock *clock,
                       pgg_error *err);
/* Nobody may hold, wait or call any more (see close).  Accepts NULL. */
void pgg__bulkhead_destroy(pgg_bulkhead *bh);

pgg_bulkhead *pgg__bulkhead_new(int capacity, const pgg_clock *clock,
                                pgg_error *err);
void pgg__bulkhead_free(pgg_bulkhead *bh);

/*
 * Take a slot, waiting until deadline at most.  now is the caller's reading
 * of the bulkhead's clock (the pool reads it once per call).  Returns
 *   PGG_OK        a slot is held: call pgg__bulkhead_leave() once;
 *   PGG_EBULKHEAD full and deadline <= now: refused without waiting;
 *   PGG_ETIMEDOUT queued, and the deadline came first;
 *   PGG_ECLOSED   the bulkhead was closed.
 */
static inline int pgg__bulkhead_enter(pgg_bulkhead *bh, int64_t deadline,
                                      int64_t now);

/* Give a slot back; the oldest waiter, if any, gets it. */
static inline void pgg__bulkhead_leave(pgg_bulkhead *bh);

/* The lock-free halves are inline (every call enters and leaves); the
 * rest, under mu, is in bulkhead.c. */
#define PGG_BULKHEAD_SLOW ((uint64_t)1 << 32)
#define PGG_BULKHEAD_HOLDERS(s) ((int)(uint32_t)(s))
int pgg__bulkhead_enter_slow(pgg_bulkhead *bh, int64_t deadline, int64_t now);
void pgg__bulkhead_leave_slow(pgg_bulkhead *bh);

/* The lock-free half of pgg__bulkhead_enter: true if a slot was taken
 * (nobody waits and one is free); false: go the slow way. */
static inline bool pgg__bulkhead_try_enter(pgg_bulkhead *bh)
{
    uint64_t s = atomic_load_explicit(&bh->state, memory_order_relaxed);

    while (!(s & PGG_BULKHEAD_SLOW) &&
           PGG_BULKHEAD_HOLDERS(s) <
               atomic_load_explicit(&bh->capacity, memory_order_relaxed)) {
        if (atomic_compare_exchange_weak_explicit(&bh->state, &s, s + 1,
                                                  memory_order_acquire,
                                                  memory_order_relaxed)) {
            atomic_fetch_add_explicit(&bh->admitted, 1, memory_order_relaxed);
            return true;
        }
    }
    return false;
}

static inline int pgg__bulkhead_enter(pgg_bulkhead *bh, int64_t deadline,
                                      int64_t now)
{
    if (pgg__bulkhead_try_enter(bh))
        return PGG_OK;
    return pgg__bulkhead_enter_slow(bh, deadline, now);
}

/* The lock-free half of a leave: true if done (nobody waits); false: go
 * the slow way. */
static inline bool pgg__bulkhead_leave_fast(pgg_bulkhead *bh)
{
    uint64_t s = atomic_load_explicit(&bh->state, memory_order_relaxed);

    while (!(s & PGG_BULKHEAD_SLOW)) {
        if (PGG_BULKHEAD_HOLDERS(s) == 0)
            return true;
        if (atomic_compare_exchange_weak_explicit(&bh->state, &s, s - 1,
                                                  memory_order_release,
                                                  memory_order_relaxed))
            return true;
    }
    return false;
}

static inline void pgg__bulkhead_leave(pgg_bulkhead *bh)
{
    if (!pgg__bulkhead_leave_fast(bh))
        pgg__bulkhead_leave_slow(bh);
}

/*
 * On an event loop's thread (bulkhead.c, "Loops"): never waits, never
 * queues.  Enter: PGG_OK (a slot: leave it with pgg__bulkhead_leave_loop),
 * PGG_EBULKHEAD (full, someone waits, or the mutex stayed busy while
 * slots are being handed over), PGG_ECLOSED.
 */
int pgg__bulkhead_enter_loop_slow(pgg_bulkhead *bh);
static inline int pgg__bulkhead_enter_loop(pgg_bulkhead *bh)
{
    if (pgg__bulkhead_try_enter(bh))
        return PGG_OK;
    return pgg__bulkhead_enter_loop_slow(bh);
}

/* Leave: true when done; false when the slot is owed (the mutex stayed
 * busy): the loop calls pgg__bulkhead_settle_owed later until it says
 * none is left.  The lock-free half is pgg__bulkhead_leave's. */
bool pgg__bulkhead_leave_loop_slow(pgg_bulkhead *bh);
static inline bool pgg__bulkhead_leave_loop(pgg_bulkhead *bh)
{
    return pgg__bulkhead_leave_fast(bh) || pgg__bulkhead_leave_loop_slow(bh);
}

/* The owed leaves handed on, under mu: waited for when wait (a context's
 * free), else only tried.  True when none is left owed. */
bool pgg__bulkhead_settle_owed(pgg_bulkhead *bh, bool wait);

/* For tests: leaves owed now. */
int pgg__bulkhead_owed(pgg_bulkhead *bh);

/* For tests: called by every holder of mu just before it applies what is
 * owed and unlocks (a test's stand-in for a holder preempted there). */
extern void (*pgg__bulkhead_unlock_hook)(pgg_bulkhead *bh);

/*
 * Change the capacity (>= 0) at run time.  Growing admits waiters at once,
 * oldest first; shrinking never interrupts a holder: newcomers wait until
 * enough holders have left.  PGG_EINVAL for a negative capacity.
 */
int pgg__bulkhead_resize(pgg_bulkhead *bh, int capacity);

int pgg__bulkhead_capacity(pgg_bulkhead *bh);

/* A snapshot: each field exact, read one after another (the lock-free
 * path may admit or release in between). */
void pgg__bulkhead_counts(pgg_bulkhead *bh, pgg_bulkhead_counts *out);

/*
 * Refuse every later enter with PGG_ECLOSED and wake every waiter with it
 * (a pool being freed must not leave threads parked here).  Holders may
 * still leave.
 */
void pgg__bulkhead_close(pgg_bulkhead *bh);

#endif
