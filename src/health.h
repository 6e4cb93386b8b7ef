/*
 * Internal: the pool's background thread.  Each host has its own probe
 * schedule (a hung host delays no other host's probe): a probe is one
 * connect-if-needed plus one query for role and WAL position, bounded by
 * health_probe_timeout_ms.  Calm, a host is probed every
 * health_interval_ms; in an incident (a breaker open or half-open, no
 * primary known, the host's own probe failing) every
 * health_incident_min_ms, doubling up to health_incident_max_ms.  Calls
 * wake it at once on a failure.  It also moves breakers on time (tick),
 * computes replica lag, sends half-open trial probes, closes idle
 * connections past their time and warms hosts up to pool_min_idle.  It
 * never holds a lock across I/O.
 *
 * While a host's breaker is open it makes the host's return cheap to see
 * and cheap to use: failing calls bring its probes to 2 ms apart when
 * nobody listens there (5 ms when the server refuses sessions); a probe
 * connect the server's kernel took and queued is kept past the probe
 * bound (a new one would queue behind it); the session a probe opens goes
 * to the pool, and while calls wait a few more connects are queued beside
 * it (spares); a host reached again closes its breaker at once the first
 * time in a streak (pgg__breaker_host_back), else goes half-open; and a
 * server seen starting (refused, then queued) makes refused calls wait for
 * it within their deadline (pgg__host_await_back).
 *
 * A call that got no answer before its deadline (pool.c marks the host
 * silent) has the host probed at once, with one spare connect queued
 * beside the probe: no answer to either call or probe for a whole
 * health_probe_timeout_ms opens the breaker (host-silent), the spare
 * waiting in the server's queue for its return (health.c, "A call that
 * got no answer").
 */
#ifndef PGG_HEALTH_H
#define PGG_HEALTH_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "pgguard.h"

struct pgg_pool;
typedef struct pgg_health pgg_health;

/* Start the thread; the first round runs at once. */
pgg_health *pgg__health_start(struct pgg_pool *pool, pgg_error *err);
/* Stop and join the thread, close its connections.  Accepts NULL. */
void pgg__health_stop(pgg_health *hl);
/* Something failed (a breaker opened, a connect failed, no primary, a
 * session died): probe every host now at the fast cadence.  Lock-free and
 * cheap when already woken.  Accepts NULL. */
void pgg__health_wake(pgg_health *hl);
/* An event loop queued an asked connect (host.c, "Asked connects") or
 * gave one up: the thread takes it now.  No probe is brought forward.
 * Accepts NULL. */
void pgg__health_ask(pgg_health *hl);
/* An event loop owes a host something it could not settle without
 * waiting for the host's lock (host.c, "Owed"): the thread settles every
 * host's owed records on its next turn.  One wake-up until it has begun
 * that turn, however many ask.  Never waits.  Accepts NULL. */
void pgg__health_settle_owed(pgg_health *hl);
/* Wake the thread and wait until a round that started after this call has
 * probed every host, or deadline_ns.  Returns whether it did. */
bool pgg__health_await_round(pgg_health *hl, int64_t deadline_ns);
/* The same without the wait, for an event loop: wake the thread for a
 * round that starts after this call and return the count of rounds that
 * says it ended (pgg__health_round_done); 0 without a health thread. */
unsigned long pgg__health_ask_round(pgg_health *hl);
/* Has the round pgg__health_ask_round returned want for ended (or the
 * thread stopped: none will)?  True without a health thread. */
bool pgg__health_round_done(pgg_health *hl, unsigned long want);
/* Rounds completed so far: a round ends when every host has finished a
 * probe since the last one ended (tests wait on this instead of sleeping). */
unsigned long pgg__health_rounds(pgg_health *hl);

/* The promotion watch (health.c): on by default.  White-box tests of the
 * other ways a promotion is learnt (a read's answer) turn it off, so that
 * the watch cannot learn it first. */
void pgg__health_watch_promotions(pgg_health *hl, bool on);

/* For tests (the loop guard): the lock of rounds, which the health thread
 * and every waiter for a round take. */
pthread_mutex_t *pgg__health_mutex(pgg_health *hl);

#endif
