/*
 * LISTEN/NOTIFY through a lease: the caller LISTENs with pgg_lease_exec and
 * waits here for the next notification, bounded by a deadline.  A pooled
 * connection must not carry a listener to its next borrower: the lease's
 * DISCARD ALL (lease_reset) runs UNLISTEN *, and lease.c drops whatever
 * libpq had already queued (see pgg_release).
 */
#include <poll.h>

#include "error.h"
#include "lease.h"
#include "pool.h"

PGnotify *pgg_lease_notify(pgg_lease *lease, int timeout_ms, pgg_error *err)
{
    static const char fn[] = "pgg_lease_notify";
    pgg_error local;
    PGconn *conn;
    const char *host;
    int64_t deadline;

    if (!err)
        err = &local;
    if (pgg__lease_use(lease, fn, timeout_ms, &conn, &host, &deadline, err) != PGG_OK)
        return NULL;
    pgg__lease_mark_listener(lease);
    for (;;) {
        PGnotify *n;
        int ev;

        /* What earlier statements brought in comes first, then what the
         * socket holds now, without waiting. */
        if (!PQconsumeInput(conn) || PQstatus(conn) != CONNECTION_OK) {
            pgg__lease_fail(lease, false);
            pgg__link_error(err, PGG_ECONNECT, conn, NULL, host, fn);
            return NULL;
        }
        n = PQnotifies(conn);
        if (n)
            return n;
        ev = pgg__link_poll(PQsocket(conn), POLLIN, deadline);
        if (ev == 0) {
            pgg__error_set(err, PGG_ETIMEDOUT, NULL, host,
                           "%s: no notification before the deadline", fn);
            return NULL;
        }
        if (ev < 0) {
            pgg__lease_fail(lease, false);
            pgg__error_set(err, PGG_ECONNECT, NULL, host, "%s: poll failed", fn);
            return NULL;
        }
    }
}
