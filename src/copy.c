/*
 * COPY through a lease: COPY ... FROM STDIN fed by a source callback,
 * COPY ... TO STDOUT drained into a sink callback, one absolute deadline
 * for the whole transfer.  A one-shot call cannot carry COPY data, so
 * link.c refuses COPY there; a lease can, because the caller holds the
 * session for as long as the transfer takes.
 *
 * Past the deadline the session is in an unknown state (mid-COPY): it is
 * closed and its statement cancelled from the canceller, like a query past
 * its deadline, and the lease is broken.
 */
#include <poll.h>
#include <stdbool.h>

#include "error.h"
#include "lease.h"
#include "pool.h"

typedef enum copy_dir { COPY_IN, COPY_OUT } copy_dir;

typedef struct copy_run {
    pgg_lease *lease;
    PGconn *conn;
    const char *host;
    const char *fn;
    int64_t deadline;
    pgg_error *err;
} copy_run;

/* The deadline fired mid-transfer. */
static PGresult *expired(copy_run *r)
{
    pgg__lease_fail(r->lease, true);
    pgg__error_set(r->err, PGG_ETIMEDOUT, NULL, r->host,
                   "%s: deadline exceeded; connection dropped and the COPY "
                   "cancelled",
                   r->fn);
    return NULL;
}

/* The session broke under us. */
static PGresult *lost(copy_run *r, PGresult *keep)
{
    pgg__lease_fail(r->lease, false);
    pgg__link_error(r->err, PGG_ECONNECT, r->conn, keep, r->host, r->fn);
    PQclear(keep);
    return NULL;
}

/* Flush what libpq holds: 1 done, 0 deadline, -1 lost. */
static int flush_all(copy_run *r)
{
    int f;

    while ((f = PQflush(r->conn)) == 1) {
        int ev = pgg__link_poll(PQsocket(r->conn), POLLIN | POLLOUT, r->deadline);

        if (ev == 0)
            return 0;
        if (ev < 0 || ((ev & POLLIN) && !PQconsumeInput(r->conn)))
            return -1;
    }
    return f == 0 ? 1 : -1;
}

/* The next result, waiting for it within the deadline: 1 with *out (NULL
 * at the end of the results), 0 deadline, -1 lost. */
static int next_result(copy_run *r, PGresult **out)
{
    while (PQisBusy(r->conn)) {
        int ev = pgg__link_poll(PQsocket(r->conn), POLLIN, r->deadline);

        if (ev == 0)
            return 0;
        if (ev < 0)
            return -1;
        /* a failed read becomes libpq's error result: collect it */
        (void)PQconsumeInput(r->conn);
        if (PQstatus(r->conn) == CONNECTION_BAD)
            break;
    }
    *out = PQgetResult(r->conn);
    return 1;
}

/* Every result up to the end of the command, after keep (NULL, or one
 * already read): the first error wins, else the last result.  NULL from
 * expired() or lost(). */
static PGresult *finish(copy_run *r, PGresult *keep)
{
    PGresult *res;

    for (;;) {
        int n = next_result(r, &res);

        if (n == 0) {
            PQclear(keep);
            return expired(r);
        }
        if (n < 0)
            return lost(r, keep);
        if (!res)
            break;
        /* A COPY state here is a COPY that sql held after another
         * statement ("SET ...; COPY ..."), not one COPY statement: bad
         * input, and the session, mid-COPY, is unusable. */
        if (PQresultStatus(res) == PGRES_COPY_IN || PQresultStatus(res) == PGRES_COPY_OUT ||
            PQresultStatus(res) == PGRES_COPY_BOTH) {
            PQclear(res);
            PQclear(keep);
            pgg__lease_fail(r->lease, true);
            pgg__error_set(r->err, PGG_EINVAL, NULL, r->host,
                           "%s: a COPY after another statement (give one COPY "
                           "statement alone); connection dropped",
                           r->fn);
            return NULL;
        }
        if (keep && PQresultStatus(keep) == PGRES_FATAL_ERROR) {
            PQclear(res);
        } else {
            PQclear(keep);
            keep = res;
        }
        if (PQstatus(r->conn) == CONNECTION_BAD)
            break;
    }
    if (!keep || PQstatus(r->conn) == CONNECTION_BAD) {
        if (keep && PQresultErrorField(keep, PG_DIAG_SQLSTATE)) {
            pgg__lease_fail(r->lease, false);
            pgg__link_error(r->err, PGG_ECONNECT, r->conn, keep, r->host, r->fn);
            return keep;
        }
        return lost(r, keep);
    }
    if (PQresultStatus(keep) == PGRES_FATAL_ERROR)
        pgg__link_error(r->err, PGG_ESERVER, r->conn, keep, r->host, NULL);
    return keep;
}

/* Wait until libpq takes the message put() tries to queue: 1 queued, 0
 * deadline, -1 lost. */
static int queue(copy_run *r, int (*put)(copy_run *, const char *, int), const char *data,
                 int len)
{
    int q;

    while ((q = put(r, data, len)) == 0) {
        int f = flush_all(r);
        if (f <= 0)
            return f;
    }
    return q > 0 ? 1 : -1;
}

static int put_data(copy_run *r, const char *data, int len)
{
    return PQputCopyData(r->conn, data, len);
}

/* data: NULL to end the COPY, else the reason to abort it. */
static int put_end(copy_run *r, const char *why, int len)
{
    (void)len;
    return PQputCopyEnd(r->conn, why);
}

/* Feed the source's data until it ends (or fails: the COPY is then
 * aborted and the server answers with an error).  True when the COPY
 * ended; false with *fail from expired() or lost(). */
static bool feed(copy_run *r, pgg_copy_source_fn source, void *ud, PGresult **fail)
{
    char buf[16 * 1024];

    *fail = NULL;
    for (;;) {
        long n = source(ud, buf, sizeof buf);
        int q;

        if (pgg__now_ns() >= r->deadline) {
            *fail = expired(r);
            return false;
        }
        if (n <= 0)
            q = queue(r, put_end, n < 0 ? "pgguard: the COPY source failed" : NULL, 0);
        else
            q = queue(r, put_data, buf, n > (long)sizeof buf ? (int)sizeof buf : (int)n);
        if (q <= 0) {
            *fail = q == 0 ? expired(r) : lost(r, NULL);
            return false;
        }
        if (n <= 0)
            break;
    }
    switch (flush_all(r)) {
    case 0:
        *fail = expired(r);
        return false;
    case -1:
        *fail = lost(r, NULL);
        return false;
    }
    return true;
}

/* Drain the rows into the sink: true when the server sent them all; false
 * after expired(), lost() or the sink's stop (*fail NULL then). */
static bool drain(copy_run *r, pgg_copy_sink_fn sink, void *ud)
{
    for (;;) {
        char *row = NULL;
        int n = PQgetCopyData(r->conn, &row, 1);

        if (n > 0) {
            int stop = sink(ud, row, (size_t)n);

            PQfreemem(row);
            if (stop) {
                /* A COPY TO STDOUT cannot be stopped on the wire: drop the
                 * session and cancel the statement. */
                pgg__lease_fail(r->lease, true);
                pgg__error_set(r->err, PGG_EINVAL, NULL, r->host,
                               "%s: the sink stopped the COPY (returned %d); "
                               "connection dropped",
                               r->fn, stop);
                return false;
            }
            if (pgg__now_ns() >= r->deadline) {
                expired(r);
                return false;
            }
            continue;
        }
        if (n == -1)
            return true; /* the final result follows */
        if (n == -2) {
            lost(r, NULL);
            return false;
        }
        n = pgg__link_poll(PQsocket(r->conn), POLLIN, r->deadline);
        if (n == 0) {
            expired(r);
            return false;
        }
        if (n < 0 || !PQconsumeInput(r->conn)) {
            lost(r, NULL);
            return false;
        }
    }
}

static PGresult *copy(pgg_lease *lease, const char *fn, copy_dir dir, const char *sql,
                      pgg_copy_source_fn source, pgg_copy_sink_fn sink, void *ud,
                      int timeout_ms, pgg_error *err)
{
    pgg_error local;
    copy_run r = {.lease = lease, .fn = fn, .err = err ? err : &local};
    PGresult *first = NULL, *fail = NULL;
    ExecStatusType want = dir == COPY_IN ? PGRES_COPY_IN : PGRES_COPY_OUT;
    int n;

    if (pgg__lease_use(lease, fn, timeout_ms, &r.conn, &r.host, &r.deadline, r.err) != PGG_OK)
        return NULL;
    if (!sql || (dir == COPY_IN ? !source : !sink)) {
        pgg__error_set(r.err, PGG_EINVAL, NULL, NULL, "%s: NULL SQL or %s", fn,
                       dir == COPY_IN ? "source" : "sink");
        return NULL;
    }
    /* Its commit (a COPY FROM, or a COPY of a data-modifying query) comes
     * outside any pipeline: pgg_release learns the position, or reads
     * after the release could miss the rows. */
    pgg__lease_mark_unsettled(lease);
    if (!PQsendQuery(r.conn, sql))
        return lost(&r, NULL);
    switch (flush_all(&r)) {
    case 0:
        return expired(&r);
    case -1:
        return lost(&r, NULL);
    }
    n = next_result(&r, &first);
    if (n == 0)
        return expired(&r);
    if (n < 0 || !first)
        return lost(&r, first);
    if (PQresultStatus(first) != want) {
        ExecStatusType got = PQresultStatus(first);

        if (got == PGRES_COPY_IN || got == PGRES_COPY_OUT || got == PGRES_COPY_BOTH) {
            /* The other direction: the session is mid-COPY, drop it. */
            PQclear(first);
            pgg__lease_fail(lease, true);
            pgg__error_set(r.err, PGG_EINVAL, NULL, r.host,
                           "%s: the statement is a COPY %s; connection dropped",
                           fn, got == PGRES_COPY_IN ? "FROM STDIN (pgg_lease_copy_in)"
                               : got == PGRES_COPY_OUT ? "TO STDOUT (pgg_lease_copy_out)"
                                                       : "BOTH (not supported)");
            return NULL;
        }
        /* Not a COPY at all, or its error: the session is fine once the
         * command's results are read. */
        first = finish(&r, first);
        if (!first)
            return NULL;
        if (PQresultStatus(first) == PGRES_FATAL_ERROR)
            return first; /* *err: PGG_ESERVER, the SQLSTATE */
        PQclear(first);
        pgg__error_set(r.err, PGG_EINVAL, NULL, r.host, "%s: not a COPY %s statement",
                       fn, dir == COPY_IN ? "FROM STDIN" : "TO STDOUT");
        return NULL;
    }
    PQclear(first);
    if (dir == COPY_IN ? !feed(&r, source, ud, &fail) : !drain(&r, sink, ud))
        return fail;
    return finish(&r, NULL);
}

PGresult *pgg_lease_copy_in(pgg_lease *lease, const char *sql, pgg_copy_source_fn source,
                            void *userdata, int timeout_ms, pgg_error *err)
{
    return copy(lease, "pgg_lease_copy_in", COPY_IN, sql, source, NULL, userdata,
                timeout_ms, err);
}

PGresult *pgg_lease_copy_out(pgg_lease *lease, const char *sql, pgg_copy_sink_fn sink,
                             void *userdata, int timeout_ms, pgg_error *err)
{
    return copy(lease, "pgg_lease_copy_out", COPY_OUT, sql, NULL, sink, userdata,
                timeout_ms, err);
}
