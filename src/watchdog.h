/*
 * Internal: the pool's deadline watchdog.  One thread per pool holds the
 * deadlines of every socket wait in flight, so that a waiter can block in
 * poll(fd, -1) without arming a kernel timer on every wait (ppoll with a
 * timeout arms and cancels one each time).  When a deadline passes, the
 * watchdog shuts that socket down (shutdown(fd, SHUT_RDWR)), which wakes
 * the waiter's poll; the waiter learns from pgg__watchdog_disarm() that it
 * was the deadline, not the server.  The lateness is bounded by the tick.
 *
 * Safety: the watchdog calls shutdown() on an fd only while that fd's
 * waiter is inside an armed window (between pgg__watchdog_arm() and
 * pgg__watchdog_disarm()), and disarm does not return while a shutdown is
 * in progress (see the protocol in watchdog.c).  A waiter keeps its
 * connection, so its fd cannot be closed or reused inside the window: arm
 * only around the poll itself, never across a libpq call (libpq may close
 * its socket and open another).
 *
 * The watchdog does not tick: it sleeps until the earliest deadline armed
 * (at least a tick at a time), and without a timeout while nothing is
 * armed; an arm with an earlier deadline than its next wake-up wakes it.
 *
 * Waiters poll without a timeout while the watchdog keeps time: a poll
 * timeout arms and cancels a kernel timer on every wait (measured: +0.3 to
 * 0.4 us of a 6-9 us loopback round trip, 4-6 % of the client's CPU).
 * Until the watchdogs have shown they keep time, waits carry their own
 * timeout, a backstop past the deadline: on a machine that delays the
 * watchdog, a hung server's waiter ends on its own wake-up, not on two
 * (the watchdog's, then its own).  The state is the process's (the
 * machine's scheduling, not a pool's): it starts on; a watchdog's first
 * look starts the proof; PGG_WATCHDOG_BACKSTOP_HOLD_NS of wake-ups none
 * of which came PGG_WATCHDOG_LATE_NS late turn it off; a late one turns
 * it on again for as long.  While calls come a watchdog wakes at least
 * every PGG_WATCHDOG_PROBE_NS to sample its lateness.  A wait takes the
 * state when it starts to poll: one that started before a stall was found
 * (already waiting when it began, or in the first such interval of it)
 * has no timeout to its end, whatever its deadline, and is ended by the
 * watchdog alone, as late as the watchdog then is.
 *
 * Thread-safe.  The fast path (claim, arm, disarm, release) takes no lock
 * and makes no system call while the watchdog is ticking.
 */
#ifndef PGG_WATCHDOG_H
#define PGG_WATCHDOG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "pgguard.h"
#include "tls.h"

typedef struct pgg_watchdog pgg_watchdog;
typedef struct pgg_wd_slot pgg_wd_slot;

/* The pool's tick, the shortest sleep of the watchdog: no wait outlives
 * its deadline by more than this plus the scheduler's delay in waking the
 * watchdog (usually far less: it wakes at the deadline itself). */
#define PGG_WATCHDOG_TICK_NS (1 * 1000000)

/* Woken this much past the time it meant to wake, the watchdog counts as
 * late, and waits carry their own backstop timeout for the hold after: the
 * backstop's own margin past the deadline (PGG_LINK_BACKSTOP_MS), so the
 * backstop is on only when it would have ended a wait sooner.  (Measured
 * 2026-12-01 at load 25 on the 2-vCPU VM: of 100 timed waits of 100 ms,
 * 11 woke more than 2 ms late, 4 more than 5 ms, the worst 13.7 ms.) */
#define PGG_WATCHDOG_LATE_NS (5 * 1000000)
#define PGG_WATCHDOG_BACKSTOP_HOLD_NS ((int64_t)10 * 1000000000)
/* While calls come, the watchdog wakes at least this often, to sample its
 * lateness (10 wake-ups per second, a few us of CPU each). */
#define PGG_WATCHDOG_PROBE_NS (100 * 1000000)

/* Starts the thread.  tick_ns > 0.  NULL with err set on failure. */
pgg_watchdog *pgg__watchdog_new(int64_t tick_ns, pgg_error *err);

/* Stops the thread and frees everything.  No slot may be claimed any
 * more.  Accepts NULL. */
void pgg__watchdog_free(pgg_watchdog *wd);

/* A slot for one thread's waits: claim it before the first wait of a
 * call, release it after the last.  NULL only when out of memory (the
 * caller then waits with a kernel timeout instead). */
static inline pgg_wd_slot *pgg__watchdog_claim(pgg_watchdog *wd);
static inline void pgg__watchdog_release(pgg_wd_slot *s);

/* Enter an armed window: from now until disarm, the watchdog may shut fd
 * down once deadline_ns (CLOCK_MONOTONIC) has passed. */
static inline void pgg__watchdog_arm(pgg_wd_slot *s, int fd,
                                     int64_t deadline_ns);

/* Leave the window.  Returns true when the watchdog shut fd down (the
 * deadline passed); then no later shutdown can come from this window. */
static inline bool pgg__watchdog_disarm(pgg_wd_slot *s);

/* The caller's cancel flag (pgg__cancel_flag, or NULL) for the windows of
 * this claim: set it while the slot is claimed and not armed.  A flag that
 * is set ends an armed window as a passed deadline does (disarm returns
 * true).  The flag, not the handle: the watchdog sits below cancel.c,
 * which kicks it. */
void pgg__watchdog_set_cancel(pgg_wd_slot *s, const atomic_int *fired);

/* A handle fired: end every armed window whose handle is fired, now.
 * Safe from any thread while the watchdog exists. */
void pgg__watchdog_kick_cancel(pgg_watchdog *wd);

/* Sockets shut down so far (for tests and stats). */
uint64_t pgg__watchdog_fired(const pgg_watchdog *wd);
/* Arms that had to wake the watchdog (a futex call on the caller's path). */
uint64_t pgg__watchdog_kicks(const pgg_watchdog *wd);
/* Times the watchdog woke late (PGG_WATCHDOG_LATE_NS past its target). */
uint64_t pgg__watchdog_late_wakes(const pgg_watchdog *wd);
/* Tests: take the watchdog's lock (hold) so that it cannot wake up, as a
 * scheduler that holds it up; false lets it go.  An arm that must wake it
 * waits meanwhile. */
void pgg__watchdog_hold(pgg_watchdog *wd, bool hold);

/* From when (CLOCK_MONOTONIC ns) a watchdog's punctual look ends the
 * backstop: 0 once one has (waits carry their backstop until then, also
 * past that time), PGG_TIME_NEVER before any watchdog looked. */
static inline int64_t pgg__watchdog_backstop_until(void);
/* Tests: set that state (0: proven punctual; PGG_TIME_NEVER: unproven). */
void pgg__watchdog_set_backstop_until(int64_t until);

/* ------------------------------------------------- the inline fast path
 *
 * Claim, arm, disarm and release run around every wait of every call:
 * their lock-free common case is here; the protocol (the states, and why
 * no shutdown can hit an fd its waiter no longer holds) and the rest are
 * in watchdog.c. */

enum {
    PGG_WD_FREE,
    PGG_WD_OWNED,
    PGG_WD_ARMED,
    PGG_WD_FIRING,
    PGG_WD_FIRED
};

struct pgg_wd_slot {
    _Alignas(64) atomic_int state;
    /* Written by the waiter before it arms, read by the watchdog after its
     * CAS to FIRING acquired them; atomics (relaxed) only so that a stale
     * early look (see scan) is no data race. */
    atomic_int fd;
    _Atomic int_fast64_t deadline_ns;
    /* The caller's cancel flag for the slot's windows (set while OWNED,
     * so published by the ARMED store like fd): a set flag ends a
     * window as its deadline would.  Dereferenced only after the CAS to
     * FIRING, while the waiter is inside the window and its call (which
     * keeps the handle alive) under way. */
    _Atomic(const atomic_int *) cancel;
    pgg_watchdog *wd;
};

/* The head of struct pgg_watchdog (its first member). */
typedef struct pgg_wd_head {
    uint64_t id; /* unique per watchdog ever made: the threads' hint key */
    _Atomic int_fast64_t next_wake; /* when the watchdog looks next */
} pgg_wd_head;

/* Waits carry a backstop timeout until a look at or after then sets it
 * to 0 (watchdog.c, note_lateness): written by the watchdogs at most once
 * per look, read by every wait. */
extern _Atomic int_fast64_t pgg__wd_backstop_until;

/* The slot this thread used last, and in which watchdog: it is nearly
 * always free again at the next call and on a line this thread owns. */
typedef struct pgg_wd_hint {
    uint64_t wd_id;
    pgg_wd_slot *slot;
} pgg_wd_hint;
extern PGG_TLS pgg_wd_hint pgg__wd_hint;

pgg_wd_slot *pgg__watchdog_claim_slow(pgg_watchdog *wd);
void pgg__watchdog_kick(pgg_wd_slot *s, int64_t deadline_ns);
bool pgg__watchdog_disarm_slow(pgg_wd_slot *s);

static inline bool pgg__wd_try_claim(pgg_wd_slot *s)
{
    int st = PGG_WD_FREE;

    return atomic_load_explicit(&s->state, memory_order_relaxed) ==
               PGG_WD_FREE &&
           atomic_compare_exchange_strong(&s->state, &st, PGG_WD_OWNED);
}

static inline pgg_wd_slot *pgg__watchdog_claim(pgg_watchdog *wd)
{
    if (pgg__wd_hint.wd_id == ((const pgg_wd_head *)(void *)wd)->id &&
        pgg__wd_try_claim(pgg__wd_hint.slot))
        return pgg__wd_hint.slot;
    return pgg__watchdog_claim_slow(wd);
}

static inline void pgg__watchdog_release(pgg_wd_slot *s)
{
    if (s) {
        if (atomic_load_explicit(&s->cancel, memory_order_relaxed))
            atomic_store_explicit(&s->cancel, NULL, memory_order_relaxed);
        atomic_store_explicit(&s->state, PGG_WD_FREE, memory_order_release);
    }
}

static inline void pgg__watchdog_arm(pgg_wd_slot *s, int fd,
                                     int64_t deadline_ns)
{
    atomic_store_explicit(&s->fd, fd, memory_order_relaxed);
    atomic_store_explicit(&s->deadline_ns, deadline_ns, memory_order_relaxed);
    /* Sequentially consistent with the watchdog's publishing next_wake
     * (see watchdog_main); also publishes fd and deadline. */
    atomic_store(&s->state, PGG_WD_ARMED);
    if (deadline_ns < atomic_load(&((pgg_wd_head *)(void *)s->wd)->next_wake))
        pgg__watchdog_kick(s, deadline_ns);
}

static inline int64_t pgg__watchdog_backstop_until(void)
{
    return atomic_load_explicit(&pgg__wd_backstop_until, memory_order_relaxed);
}

static inline bool pgg__watchdog_disarm(pgg_wd_slot *s)
{
    int st = PGG_WD_ARMED;

    if (atomic_compare_exchange_strong(&s->state, &st, PGG_WD_OWNED))
        return false;
    return pgg__watchdog_disarm_slow(s);
}

#endif
