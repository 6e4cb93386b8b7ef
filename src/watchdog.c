#include "watchdog.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "clock.h"
#include "error.h"
#include "tls.h"

/*
 * The protocol.  Each slot's state moves so:
 *
 *   FREE --claim (waiter, CAS)--> OWNED --arm (waiter, store)--> ARMED
 *   ARMED --disarm (waiter, CAS)--> OWNED                      (in time)
 *   ARMED --expiry (watchdog, CAS)--> FIRING --(shutdown; store)--> FIRED
 *   FIRING --(not expired after all; store)--> ARMED
 *   FIRED --disarm (waiter, store)--> OWNED                    (too late)
 *   OWNED --release (waiter, store)--> FREE
 *
 * Why no shutdown can hit an fd its waiter no longer holds:
 *  - the watchdog calls shutdown(fd) only after its CAS ARMED -> FIRING
 *    succeeded, and reads the fd the waiter wrote before its release store
 *    of ARMED (the CAS acquires it), so it is that window's fd;
 *  - a waiter whose disarm CAS ARMED -> OWNED succeeded has won: the
 *    watchdog's CAS for that window can no longer succeed (the state is no
 *    longer ARMED until the waiter arms a new window, with a new fd and
 *    deadline written before it);
 *  - a waiter whose CAS failed found FIRING or FIRED: it retries until it
 *    wins against ARMED or finds FIRED, which the watchdog stores only
 *    after shutdown() returned;
 *  so every shutdown happens inside the window, while the waiter is between
 *  arm and disarm and has not closed the fd (it owns the connection and
 *  calls nothing that could close it inside the window).
 *
 * A caller's cancel (cancel.h) changes only when a window expires, never
 * who may shut it down: a fire sets its handle's flag and kicks the
 * watchdog (cancel_scan), whose next scan takes every armed window that
 * has a handle through the same CAS ARMED -> FIRING, reads the handle only
 * then (the window, and so the call that owns the handle, is still live),
 * and shuts the fd down if it is fired or puts the window back ARMED.  A
 * window armed after that scan looked is the waiter's to check: it reads
 * the flag after its ARMED store and does not poll when it is set.
 *
 * Slots live in chunks that are only ever added (under mu) and freed with
 * the watchdog, so the watchdog walks them without a lock.  Each slot has
 * its own cache line: a waiter's arm and disarm touch only its line.
 */
enum {
    FREE = PGG_WD_FREE,
    OWNED = PGG_WD_OWNED,
    ARMED = PGG_WD_ARMED,
    FIRING = PGG_WD_FIRING,
    FIRED = PGG_WD_FIRED
};

#define CHUNK 64


typedef struct chunk {
    pgg_wd_slot slots[CHUNK];
    _Atomic(struct chunk *) next;
} chunk;

struct pgg_watchdog {
    /* id and next_wake, read by the inline fast path (watchdog.h). */
    pgg_wd_head head;
    int64_t tick_ns;
    chunk first;
    pthread_mutex_t mu; /* growth, sleep and stop */
    pthread_cond_t cv;
    bool stop;
    bool kick;                    /* an arm wants an earlier wake-up */
    atomic_uint_fast64_t fired;
    atomic_uint_fast64_t kicks; /* arms that had to wake the watchdog */
    atomic_uint_fast64_t late_wakes;
    atomic_bool cancel_scan; /* a handle fired: look at windows that have one */
    pthread_t thread;
};

static atomic_uint_fast64_t next_id = 1;

PGG_TLS pgg_wd_hint pgg__wd_hint;
#define hint pgg__wd_hint

/* Fire every expired armed slot; returns the earliest deadline of the
 * windows still armed (PGG_TIME_NEVER when none).  *latest gets the latest
 * deadline any slot was ever armed with (it grows while calls come). */
static int64_t scan(pgg_watchdog *wd, int64_t now, int64_t *latest)
{
    int64_t earliest = PGG_TIME_NEVER;
    /* Sequentially consistent with pgg__watchdog_kick_cancel's store, and
     * the loads of state below too in that pass, so that a window armed
     * before the fire (in that order) is seen ARMED here. */
    bool cancels = atomic_exchange(&wd->cancel_scan, false);

    for (chunk *c = &wd->first; c; c = atomic_load(&c->next)) {
        for (int i = 0; i < CHUNK; i++) {
            pgg_wd_slot *s = &c->slots[i];
            int st = cancels ? atomic_load(&s->state)
                             : atomic_load_explicit(&s->state,
                                                    memory_order_acquire);
            int64_t d;
            bool by_cancel = false;

            /* A first look, maybe at an older window of this slot. */
            d = atomic_load_explicit(&s->deadline_ns, memory_order_relaxed);
            if (d > *latest)
                *latest = d;
            if (st != ARMED)
                continue;
            if (d > now &&
                !(cancels && atomic_load_explicit(&s->cancel,
                                                  memory_order_relaxed))) {
                if (d < earliest)
                    earliest = d;
                continue;
            }
            if (!atomic_compare_exchange_strong(&s->state, &st, FIRING))
                continue;
            /* The window is ours to end; its deadline is read again, now
             * ordered after the waiter's arm: the state may have gone
             * ARMED -> OWNED -> ARMED since the first look (a new window
             * with a later deadline). */
            d = atomic_load_explicit(&s->deadline_ns, memory_order_relaxed);
            if (d > now) {
                const atomic_int *fired = atomic_load_explicit(
                    &s->cancel, memory_order_relaxed);

                by_cancel = fired && atomic_load(fired) != 0;
            }
            if (d > now && !by_cancel) {
                atomic_store_explicit(&s->state, ARMED, memory_order_release);
                if (d < earliest)
                    earliest = d;
                continue;
            }
            /* The waiter is in its window and waits for FIRED before it
             * can leave it: the fd is its own until then. */
            (void)shutdown(atomic_load_explicit(&s->fd, memory_order_relaxed),
                           SHUT_RDWR);
            atomic_fetch_add_explicit(&wd->fired, 1, memory_order_relaxed);
            atomic_store_explicit(&s->state, FIRED, memory_order_release);
        }
    }
    return earliest;
}

_Atomic int_fast64_t pgg__wd_backstop_until = PGG_TIME_NEVER;

/* One wake-up's sample (now): woken long past the time it meant to wake,
 * waits carry their own backstop for the hold from now on; a first look
 * starts the proof; a proof that ran the hold without a late wake-up ends
 * the backstop (by CAS: another watchdog's late sample meanwhile wins). */
static void note_lateness(pgg_watchdog *wd, int64_t now)
{
    int64_t meant = atomic_load(&wd->head.next_wake);
    int_fast64_t until = atomic_load_explicit(&pgg__wd_backstop_until,
                                              memory_order_relaxed);

    if (meant != PGG_TIME_NEVER && meant > 0 &&
        now - meant > PGG_WATCHDOG_LATE_NS) {
        atomic_fetch_add_explicit(&wd->late_wakes, 1, memory_order_relaxed);
        atomic_store_explicit(&pgg__wd_backstop_until,
                              now + PGG_WATCHDOG_BACKSTOP_HOLD_NS,
                              memory_order_relaxed);
    } else if (until == PGG_TIME_NEVER) {
        atomic_compare_exchange_strong(&pgg__wd_backstop_until, &until,
                                       now + PGG_WATCHDOG_BACKSTOP_HOLD_NS);
    } else if (until != 0 && now >= until) {
        atomic_compare_exchange_strong(&pgg__wd_backstop_until, &until, 0);
    }
}

void pgg__watchdog_set_backstop_until(int64_t until)
{
    atomic_store(&pgg__wd_backstop_until, until);
}

/*
 * Sleep until the earliest deadline (no sooner than a tick from now, which
 * bounds the watchdog's own CPU when deadlines crowd, and so the lateness);
 * an arm whose deadline comes before the published wake-up time kicks the
 * watchdog.  With nothing armed: while calls keep coming (a slot was armed
 * with a later deadline since the last look), until the latest deadline
 * seen, so that the next calls, whose deadlines come later still under
 * uniform timeouts, need not kick it (a call's waits are short: most looks
 * find nothing armed, and a watchdog that then slept without a timeout had
 * every few calls pay a futex wake-up); once no call came since the last
 * look, without a timeout, and the first call after the lull kicks it.  So
 * callers kick it about once per lull and it wakes about once per timeout
 * period while calls come.
 *
 * No window is overlooked: the watchdog publishes next_wake and then looks
 * at the slots again; an arm publishes ARMED and then reads next_wake (all
 * sequentially consistent).  Either that look sees the window and its
 * deadline, or the arm sees the new next_wake and kicks when it is later.
 *
 * At each wake-up it compares the clock with next_wake, the time it meant
 * to wake (a kick lowers it to the arm's deadline): past it by
 * PGG_WATCHDOG_LATE_NS, the scheduler held it up, and waits carry their
 * own backstop for a while (watchdog.h).  Samples come at every timed
 * wake-up (at least every PGG_WATCHDOG_PROBE_NS while calls come) and at
 * every expiry.
 */
static void *watchdog_main(void *arg)
{
    pgg_watchdog *wd = arg;

    int64_t seen = 0; /* the latest deadline at the previous look */

    pthread_mutex_lock(&wd->mu);
    while (!wd->stop) {
        int64_t now, floor, target, again, latest = seen, ignored = 0;

        wd->kick = false;
        pthread_mutex_unlock(&wd->mu);
        now = pgg__now_ns();
        note_lateness(wd, now);
        floor = now + wd->tick_ns;
        target = scan(wd, now, &latest);
        /* Nothing armed, but calls came since the last look: wake when the
         * latest of them would have expired.  A finite next_wake keeps the
         * protocol as it is: an arm before it kicks, one after it is seen
         * by that look. */
        if (target == PGG_TIME_NEVER && latest > seen && latest > now)
            target = latest;
        /* While calls come, look at least every PGG_WATCHDOG_PROBE_NS: each
         * look samples the watchdog's lateness (note_lateness), so that a
         * machine that holds it up is found before a hung server's
         * deadline depends on it. */
        if (latest > seen && target > now + PGG_WATCHDOG_PROBE_NS)
            target = now + PGG_WATCHDOG_PROBE_NS;
        seen = latest;
        for (;;) {
            if (target < floor)
                target = floor;
            atomic_store(&wd->head.next_wake, target);
            again = scan(wd, now, &ignored);
            if (again >= target || target == floor)
                break;
            target = again;
        }
        pthread_mutex_lock(&wd->mu);
        while (!wd->kick && !wd->stop) {
            struct timespec ts;

            if (target == PGG_TIME_NEVER) {
                pthread_cond_wait(&wd->cv, &wd->mu);
                continue;
            }
            ts = pgg__ns_to_timespec(target);
            if (pthread_cond_timedwait(&wd->cv, &wd->mu, &ts) == ETIMEDOUT)
                break;
        }
    }
    pthread_mutex_unlock(&wd->mu);
    return NULL;
}

static void chunk_init(chunk *c, pgg_watchdog *wd)
{
    for (int i = 0; i < CHUNK; i++) {
        atomic_init(&c->slots[i].state, FREE);
        atomic_init(&c->slots[i].fd, -1);
        atomic_init(&c->slots[i].deadline_ns, 0);
        atomic_init(&c->slots[i].cancel, NULL);
        c->slots[i].wd = wd;
    }
    atomic_init(&c->next, NULL);
}

pgg_watchdog *pgg__watchdog_new(int64_t tick_ns, pgg_error *err)
{
    pgg_watchdog *wd;
    int rc;

    if (tick_ns <= 0) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL, "watchdog: bad tick");
        return NULL;
    }
    wd = aligned_alloc(64, (sizeof *wd + 63) / 64 * 64);
    if (!wd) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "watchdog: out of memory");
        return NULL;
    }
    memset(wd, 0, sizeof *wd);
    wd->head.id = atomic_fetch_add(&next_id, 1);
    wd->tick_ns = tick_ns;
    chunk_init(&wd->first, wd);
    atomic_init(&wd->head.next_wake, 0);
    atomic_init(&wd->late_wakes, 0);
    atomic_init(&wd->fired, 0);
    atomic_init(&wd->kicks, 0);
    atomic_init(&wd->cancel_scan, false);
    pthread_mutex_init(&wd->mu, NULL);
    pgg__cond_init(&wd->cv);
    rc = pthread_create(&wd->thread, NULL, watchdog_main, wd);
    if (rc != 0) {
        pthread_cond_destroy(&wd->cv);
        pthread_mutex_destroy(&wd->mu);
        free(wd);
        pgg__error_set(err, PGG_ESYS, NULL, NULL,
                       "watchdog: cannot start its thread (error %d)", rc);
        return NULL;
    }
    return wd;
}

void pgg__watchdog_free(pgg_watchdog *wd)
{
    chunk *c;

    if (!wd)
        return;
    pthread_mutex_lock(&wd->mu);
    wd->stop = true;
    pthread_cond_signal(&wd->cv);
    pthread_mutex_unlock(&wd->mu);
    pthread_join(wd->thread, NULL);
    c = atomic_load(&wd->first.next);
    while (c) {
        chunk *next = atomic_load(&c->next);
        free(c);
        c = next;
    }
    pthread_cond_destroy(&wd->cv);
    pthread_mutex_destroy(&wd->mu);
    free(wd);
}

pgg_wd_slot *pgg__watchdog_claim_slow(pgg_watchdog *wd)
{
    chunk *c, *last = NULL, *fresh;

    for (;;) {
        for (c = &wd->first; c; c = atomic_load(&c->next)) {
            last = c;
            for (int i = 0; i < CHUNK; i++)
                if (pgg__wd_try_claim(&c->slots[i])) {
                    hint.wd_id = wd->head.id;
                    hint.slot = &c->slots[i];
                    return hint.slot;
                }
        }
        /* Every slot busy: more threads wait than ever before.  Grow by a
         * chunk (rare, and never shrunk: the watchdog walks without a
         * lock). */
        fresh = aligned_alloc(64, (sizeof *fresh + 63) / 64 * 64);
        if (!fresh)
            return NULL;
        chunk_init(fresh, wd);
        pthread_mutex_lock(&wd->mu);
        while ((c = atomic_load(&last->next)) != NULL)
            last = c;
        atomic_store(&last->next, fresh);
        pthread_mutex_unlock(&wd->mu);
    }
}

void pgg__watchdog_set_cancel(pgg_wd_slot *s, const atomic_int *fired)
{
    atomic_store_explicit(&s->cancel, fired, memory_order_relaxed);
}

void pgg__watchdog_kick_cancel(pgg_watchdog *wd)
{
    atomic_store(&wd->cancel_scan, true);
    pthread_mutex_lock(&wd->mu);
    wd->kick = true;
    pthread_cond_signal(&wd->cv);
    pthread_mutex_unlock(&wd->mu);
}

void pgg__watchdog_kick(pgg_wd_slot *s, int64_t deadline_ns)
{
    pgg_watchdog *wd = s->wd;

    pthread_mutex_lock(&wd->mu);
    /* Later arms need not kick again before the watchdog looks. */
    if (deadline_ns < atomic_load(&wd->head.next_wake))
        atomic_store(&wd->head.next_wake, deadline_ns);
    wd->kick = true;
    pthread_cond_signal(&wd->cv);
    pthread_mutex_unlock(&wd->mu);
    atomic_fetch_add_explicit(&wd->kicks, 1, memory_order_relaxed);
}

bool pgg__watchdog_disarm_slow(pgg_wd_slot *s)
{
    for (;;) {
        int st = ARMED;

        if (atomic_compare_exchange_strong(&s->state, &st, OWNED))
            return false;
        if (st == FIRED) {
            atomic_store_explicit(&s->state, OWNED, memory_order_relaxed);
            return true;
        }
        /* FIRING: the watchdog holds the window for one shutdown() or a
         * second look at the deadline; either ends at once. */
        sched_yield();
    }
}

uint64_t pgg__watchdog_fired(const pgg_watchdog *wd)
{
    return wd ? (uint64_t)atomic_load(&wd->fired) : 0;
}

uint64_t pgg__watchdog_kicks(const pgg_watchdog *wd)
{
    return wd ? (uint64_t)atomic_load(&wd->kicks) : 0;
}

uint64_t pgg__watchdog_late_wakes(const pgg_watchdog *wd)
{
    return wd ? (uint64_t)atomic_load(&wd->late_wakes) : 0;
}

void pgg__watchdog_hold(pgg_watchdog *wd, bool hold)
{
    if (hold)
        pthread_mutex_lock(&wd->mu);
    else
        pthread_mutex_unlock(&wd->mu);
}
