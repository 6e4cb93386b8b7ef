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
 * Thread-safe.  The fast path (claim, arm, disarm, release) takes no lock
 * and makes no system call while the watchdog is ticking.
 */
#ifndef PGG_WATCHDOG_H
#define PGG_WATCHDOG_H

#include <stdbool.h>
#include <stdint.h>

#include "pgguard.h"

typedef struct pgg_watchdog pgg_watchdog;
typedef struct pgg_wd_slot pgg_wd_slot;

/* The pool's tick, the shortest sleep of the watchdog: no wait outlives
 * its deadline by more than this plus the scheduler's delay in waking the
 * watchdog (usually far less: it wakes at the deadline itself). */
#define PGG_WATCHDOG_TICK_NS (1 * 1000000)

/* Starts the thread.  tick_ns > 0.  NULL with err set on failure. */
pgg_watchdog *pgg__watchdog_new(int64_t tick_ns, pgg_error *err);

/* Stops the thread and frees everything.  No slot may be claimed any
 * more.  Accepts NULL. */
void pgg__watchdog_free(pgg_watchdog *wd);

/* A slot for one thread's waits: claim it before the first wait of a
 * call, release it after the last.  NULL only when out of memory (the
 * caller then waits with a kernel timeout instead). */
pgg_wd_slot *pgg__watchdog_claim(pgg_watchdog *wd);
void pgg__watchdog_release(pgg_wd_slot *s);

/* Enter an armed window: from now until disarm, the watchdog may shut fd
 * down once deadline_ns (CLOCK_MONOTONIC) has passed. */
void pgg__watchdog_arm(pgg_wd_slot *s, int fd, int64_t deadline_ns);

/* Leave the window.  Returns true when the watchdog shut fd down (the
 * deadline passed); then no later shutdown can come from this window. */
bool pgg__watchdog_disarm(pgg_wd_slot *s);

/* The caller's cancel handle (or NULL) for the windows of this claim: set
 * it while the slot is claimed and not armed.  A fired handle ends an armed
 * window as a passed deadline does (disarm returns true). */
void pgg__watchdog_set_cancel(pgg_wd_slot *s, pgg_cancel *c);

/* A handle fired: end every armed window whose handle is fired, now.
 * Safe from any thread while the watchdog exists. */
void pgg__watchdog_kick_cancel(pgg_watchdog *wd);

/* Sockets shut down so far (for tests and stats). */
uint64_t pgg__watchdog_fired(const pgg_watchdog *wd);
/* Arms that had to wake the watchdog (a futex call on the caller's path). */
uint64_t pgg__watchdog_kicks(const pgg_watchdog *wd);

#endif
