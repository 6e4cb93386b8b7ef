/*
 * Internal: the caller's early-cancel handle (pgg_cancel, pgguard.h).
 *
 * A call that was given a handle makes it the thread's current one for its
 * duration (pgg__cancel_enter / pgg__cancel_leave), so that the waits deep
 * inside it (the bulkhead, a connection slot, a connect, the query, a
 * read-your-writes wait) can see a fire without a parameter threaded
 * through every layer:
 *   - a socket wait inside a watchdog window is ended by the watchdog,
 *     which the fire kicks (watchdog.c keeps its safety argument: the
 *     shutdown still comes only from its own window protocol);
 *   - every other wait (condition variables, ppoll on a connect) is cut
 *     into slices of PGG_CANCEL_SLICE_NS while a handle is current, and
 *     looks at the flag between slices.
 * A call without a handle pays nothing beyond a NULL test: the current
 * handle stays NULL and no wait is sliced.
 *
 * Pure: no libpq.  Thread-safe: fire from any thread.
 */
#ifndef PGG_CANCEL_H
#define PGG_CANCEL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "pgguard.h"
#include "tls.h"

typedef struct pgg_watchdog pgg_watchdog;

/* The longest a non-watchdog wait goes without looking at the flag. */
#define PGG_CANCEL_SLICE_NS (2 * 1000000)

/* The handle of the call running on this thread, or NULL. */
extern PGG_TLS pgg_cancel *pgg__cancel_cur;

/* Whether c has been fired (c may be NULL: false). */
bool pgg__cancel_fired(const pgg_cancel *c);

/* c's flag, set by a fire (c not NULL): what the watchdog looks at, so
 * that it needs nothing of this module (it sits below it). */
const atomic_int *pgg__cancel_flag(const pgg_cancel *c);

/* Whether the thread's current call was cancelled. */
static inline bool pgg__cancel_now(void)
{
    return pgg__cancel_cur && pgg__cancel_fired(pgg__cancel_cur);
}

/* The end of the next slice of a wait until deadline that began at now:
 * deadline itself when no handle is current. */
static inline int64_t pgg__cancel_slice(int64_t now, int64_t deadline)
{
    if (pgg__cancel_cur && deadline - now > PGG_CANCEL_SLICE_NS)
        return now + PGG_CANCEL_SLICE_NS;
    return deadline;
}

/* Make c the thread's current handle for a call on a pool whose watchdog is
 * wd (may be NULL), which a fire then kicks; returns the previous handle,
 * to hand back to pgg__cancel_leave. */
pgg_cancel *pgg__cancel_enter(pgg_cancel *c, pgg_watchdog *wd);
void pgg__cancel_leave(pgg_cancel *c, pgg_cancel *prev);

#endif
