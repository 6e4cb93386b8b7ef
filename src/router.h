/*
 * Internal, pure: an intent plus a snapshot of every host -> the hosts to
 * try, best first.  The router only orders and excludes by role, lag and
 * breaker state as last seen; the breaker itself decides admission when
 * the pool walks the list.
 */
#ifndef PGG_ROUTER_H
#define PGG_ROUTER_H

#include <stdbool.h>

#include "pgguard.h"

typedef enum pgg_read_policy {
    PGG_READ_REPLICA = 0,      /* replicas, then hosts of unknown role, then the primary */
    PGG_READ_REPLICA_ONLY = 1, /* replicas, then unknown; never the primary */
    PGG_READ_PRIMARY_ONLY = 2, /* reads go to the primary, like PGG_READ_PRIMARY */
    PGG_READ_ANY = 3           /* every host that can serve, least busy first */
} pgg_read_policy;

typedef struct pgg_route_host {
    pgg_role role;
    pgg_breaker_state state;
    bool lag_ok; /* within max lag (or lag not known yet), and not held
                    back from reads (hold.h) */
    int busy;    /* calls in flight on it */
} pgg_route_host;

/*
 * Write up to n indices into out (sized for n), best first; returns how
 * many.  rotate spreads ties between equally busy hosts (pass a counter
 * that changes per call).
 * - write, read-primary, and reads under PGG_READ_PRIMARY_ONLY: primaries,
 *   then hosts of unknown role (connecting tells their role);
 * - read: standbys within lag, then unknown, then primaries (policy
 *   permitting); standbys beyond max lag are never candidates.
 * Within a group: closed before half-open before open (forced-open
 * included: its breaker refuses it, and the caller learns that the host
 * is there but open, PGG_EOPEN, rather than missing), then least busy.
 */
int pgg__route(pgg_intent intent, pgg_read_policy policy,
               const pgg_route_host *hosts, int n, unsigned rotate, int *out);

/* A host's group for the intent: lower is better; -1 excludes the host.
 * Inline: a pool of one host asks only this, on every call. */
static inline int pgg__route_group(pgg_intent intent, pgg_read_policy policy,
                                   const pgg_route_host *h)
{
    bool primary_only = intent != PGG_READ || policy == PGG_READ_PRIMARY_ONLY;

    if (primary_only) {
        switch (h->role) {
        case PGG_ROLE_PRIMARY:
            return 0;
        case PGG_ROLE_UNKNOWN:
            return 1;
        case PGG_ROLE_STANDBY:
            return -1;
        }
        return -1;
    }
    switch (h->role) {
    case PGG_ROLE_STANDBY:
        return h->lag_ok ? 0 : -1;
    case PGG_ROLE_UNKNOWN:
        /* Its lag is unknown (-1) unless it is held: a standby that went
         * back, whatever its role shows while it is unreachable. */
        if (!h->lag_ok)
            return -1;
        return policy == PGG_READ_ANY ? 0 : 1;
    case PGG_ROLE_PRIMARY:
        if (policy == PGG_READ_REPLICA_ONLY)
            return -1;
        return policy == PGG_READ_ANY ? 0 : 2;
    }
    return -1;
}

#endif
