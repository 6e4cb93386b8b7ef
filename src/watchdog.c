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
 * Slots live in chunks that are only ever added (under mu) and freed with
 * the watchdog, so the watchdog walks them without a lock.  Each slot has
 * its own cache line: a waiter's arm and disarm touch only its line.
 */
enum { FREE, OWNED, ARMED, FIRING, FIRED };

#define CHUNK 64
/* Idle ticks before the watchdog stops ticking (about a second). */
#define LINGER_NS (1000 * 1000000LL)

struct pgg_wd_slot {
    _Alignas(64) atomic_int state;
    /* Written by the waiter before it arms, read by the watchdog after its
     * CAS to FIRING acquired them; atomics (relaxed) only so that a stale
     * early look (see scan) is no data race. */
    atomic_int fd;
    _Atomic int_fast64_t deadline_ns;
    pgg_watchdog *wd;
};

typedef struct chunk {
    pgg_wd_slot slots[CHUNK];
    _Atomic(struct chunk *) next;
} chunk;

struct pgg_watchdog {
    uint64_t id; /* unique per watchdog ever made: the threads' hint key */
    int64_t tick_ns;
    chunk first;
    pthread_mutex_t mu; /* growth, sleep and stop */
    pthread_cond_t cv;
    bool stop;
    atomic_bool sleeping;
    atomic_uint_fast64_t fired;
    pthread_t thread;
};

static atomic_uint_fast64_t next_id = 1;

/* The slot this thread used last, and in which watchdog: it is nearly
 * always free again at the next call and on a line this thread owns. */
static PGG_TLS struct {
    uint64_t wd_id;
    pgg_wd_slot *slot;
} hint;

/* Fire every expired armed slot; returns how many slots were armed. */
static int scan(pgg_watchdog *wd, int64_t now)
{
    int armed = 0;

    for (chunk *c = &wd->first; c; c = atomic_load(&c->next)) {
        for (int i = 0; i < CHUNK; i++) {
            pgg_wd_slot *s = &c->slots[i];
            int st = atomic_load_explicit(&s->state, memory_order_acquire);

            if (st != ARMED)
                continue;
            armed++;
            /* A first look, maybe at an older window of this slot. */
            if (atomic_load_explicit(&s->deadline_ns, memory_order_relaxed) > now)
                continue;
            if (!atomic_compare_exchange_strong(&s->state, &st, FIRING))
                continue;
            /* The window is ours to end; its deadline is read again, now
             * ordered after the waiter's arm: the state may have gone
             * ARMED -> OWNED -> ARMED since the first look (a new window
             * with a later deadline). */
            if (atomic_load_explicit(&s->deadline_ns, memory_order_relaxed) > now) {
                atomic_store_explicit(&s->state, ARMED, memory_order_release);
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
    return armed;
}

static void *watchdog_main(void *arg)
{
    pgg_watchdog *wd = arg;
    int64_t last_busy = pgg__now_ns();

    pthread_mutex_lock(&wd->mu);
    while (!wd->stop) {
        int64_t now;
        struct timespec ts;

        pthread_mutex_unlock(&wd->mu);
        now = pgg__now_ns();
        if (scan(wd, now) > 0)
            last_busy = now;
        pthread_mutex_lock(&wd->mu);
        if (wd->stop)
            break;
        if (now - last_busy < LINGER_NS) {
            ts = pgg__ns_to_timespec(now + wd->tick_ns);
            pthread_cond_timedwait(&wd->cv, &wd->mu, &ts);
            continue;
        }
        /* Nothing to watch for a while: sleep until an arm wakes us.  The
         * flag is set before the last look at the slots, and an arm sets
         * ARMED before it looks at the flag (both sequentially
         * consistent): either that look sees the new window, or the
         * arming thread sees the flag and wakes us. */
        atomic_store(&wd->sleeping, true);
        pthread_mutex_unlock(&wd->mu);
        if (scan(wd, pgg__now_ns()) > 0) {
            pthread_mutex_lock(&wd->mu);
            atomic_store(&wd->sleeping, false);
            last_busy = pgg__now_ns();
            continue;
        }
        pthread_mutex_lock(&wd->mu);
        while (atomic_load(&wd->sleeping) && !wd->stop)
            pthread_cond_wait(&wd->cv, &wd->mu);
        atomic_store(&wd->sleeping, false);
        last_busy = pgg__now_ns();
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
    wd->id = atomic_fetch_add(&next_id, 1);
    wd->tick_ns = tick_ns;
    chunk_init(&wd->first, wd);
    atomic_init(&wd->sleeping, false);
    atomic_init(&wd->fired, 0);
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

static bool try_claim(pgg_wd_slot *s)
{
    int st = FREE;

    return atomic_load_explicit(&s->state, memory_order_relaxed) == FREE &&
           atomic_compare_exchange_strong(&s->state, &st, OWNED);
}

pgg_wd_slot *pgg__watchdog_claim(pgg_watchdog *wd)
{
    chunk *c, *last = NULL, *fresh;

    if (hint.wd_id == wd->id && try_claim(hint.slot))
        return hint.slot;
    for (;;) {
        for (c = &wd->first; c; c = atomic_load(&c->next)) {
            last = c;
            for (int i = 0; i < CHUNK; i++)
                if (try_claim(&c->slots[i])) {
                    hint.wd_id = wd->id;
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

void pgg__watchdog_release(pgg_wd_slot *s)
{
    if (s)
        atomic_store_explicit(&s->state, FREE, memory_order_release);
}

void pgg__watchdog_arm(pgg_wd_slot *s, int fd, int64_t deadline_ns)
{
    pgg_watchdog *wd = s->wd;

    atomic_store_explicit(&s->fd, fd, memory_order_relaxed);
    atomic_store_explicit(&s->deadline_ns, deadline_ns, memory_order_relaxed);
    /* Sequentially consistent with the watchdog's going to sleep (see
     * watchdog_main); also publishes fd and deadline. */
    atomic_store(&s->state, ARMED);
    if (atomic_load(&wd->sleeping)) {
        pthread_mutex_lock(&wd->mu);
        atomic_store(&wd->sleeping, false);
        pthread_cond_signal(&wd->cv);
        pthread_mutex_unlock(&wd->mu);
    }
}

bool pgg__watchdog_disarm(pgg_wd_slot *s)
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
