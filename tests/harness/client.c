/* Client calls with a deadline of our own: libpq's connect_timeout cannot go
 * below 2 s, and PQexec waits forever on a hung server. */
#include "harness_int.h"

#include <errno.h>
#include <poll.h>
#include <string.h>

static int wait_socket(PGconn *conn, bool for_write, double deadline)
{
    for (;;) {
        int left = (int)(deadline - pgh_now_ms() + 0.999);
        if (left <= 0)
            return 0;
        struct pollfd pfd = {.fd = PQsocket(conn), .events = for_write ? POLLOUT : POLLIN};
        int r = poll(&pfd, 1, left);
        if (r < 0 && errno == EINTR)
            continue;
        return r < 0 ? -1 : r;
    }
}

static void chomp(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' '))
        s[--n] = '\0';
}

PGconn *pgh_connect(const char *conninfo, int timeout_ms, bool *timed_out, char *errbuf,
                    size_t errlen)
{
    double deadline = pgh_now_ms() + timeout_ms;
    if (timed_out)
        *timed_out = false;
    PGconn *conn = PQconnectStart(conninfo);
    if (!conn) {
        pgh__fmt(errbuf, errlen, "out of memory");
        return NULL;
    }
    /* PQconnectStart behaves as if PQconnectPoll had said WRITING */
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    if (PQstatus(conn) == CONNECTION_BAD)
        st = PGRES_POLLING_FAILED;
    while (st != PGRES_POLLING_OK) {
        if (st == PGRES_POLLING_FAILED) {
            pgh__fmt(errbuf, errlen, "%s", PQerrorMessage(conn));
            chomp(errbuf);
            PQfinish(conn);
            return NULL;
        }
        int r = wait_socket(conn, st == PGRES_POLLING_WRITING, deadline);
        if (r == 0) {
            pgh__fmt(errbuf, errlen, "connect timed out after %d ms", timeout_ms);
            if (timed_out)
                *timed_out = true;
            PQfinish(conn);
            return NULL;
        }
        if (r < 0) {
            pgh__fmt(errbuf, errlen, "poll: %s", strerror(errno));
            PQfinish(conn);
            return NULL;
        }
        st = PQconnectPoll(conn);
    }
    return conn;
}

/* Run sql; keep the last result in *last (if given) for the caller. */
static int conn_query(PGconn *conn, const char *sql, int timeout_ms, PGresult **last,
                      char sqlstate[6], char *errbuf, size_t errlen)
{
    double deadline = pgh_now_ms() + timeout_ms;
    if (last)
        *last = NULL;
    if (sqlstate)
        sqlstate[0] = '\0';
    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (PQsetnonblocking(conn, 1) != 0 || !PQsendQuery(conn, sql)) {
        pgh__fmt(errbuf, errlen, "%s", PQerrorMessage(conn));
        chomp(errbuf);
        return PGH_ERROR;
    }
    int f;
    while ((f = PQflush(conn)) == 1) {
        if (wait_socket(conn, true, deadline) == 0) {
            pgh__fmt(errbuf, errlen, "query timed out after %d ms (sending)", timeout_ms);
            return PGH_ETIMEDOUT;
        }
    }
    if (f < 0) {
        pgh__fmt(errbuf, errlen, "%s", PQerrorMessage(conn));
        chomp(errbuf);
        return PGH_ERROR;
    }
    int rc = 0;
    for (;;) {
        while (PQisBusy(conn)) {
            int r = wait_socket(conn, false, deadline);
            if (r == 0) {
                pgh__fmt(errbuf, errlen, "query timed out after %d ms", timeout_ms);
                return PGH_ETIMEDOUT;
            }
            if (r < 0 || !PQconsumeInput(conn)) {
                pgh__fmt(errbuf, errlen, "%s", PQerrorMessage(conn));
                chomp(errbuf);
                return PGH_ERROR;
            }
        }
        PGresult *res = PQgetResult(conn);
        if (!res)
            break;
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
            if (rc == 0) {
                const char *ss = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                if (sqlstate)
                    pgh__fmt(sqlstate, 6, "%s", ss ? ss : "");
                pgh__fmt(errbuf, errlen, "%s", PQresultErrorMessage(res));
                chomp(errbuf);
                if (!errbuf[0]) {
                    pgh__fmt(errbuf, errlen, "%s", PQerrorMessage(conn));
                    chomp(errbuf);
                }
            }
            rc = PGH_ERROR;
        }
        if (last) {
            PQclear(*last);
            *last = res;
        } else {
            PQclear(res);
        }
    }
    if (rc == 0 && PQstatus(conn) == CONNECTION_BAD) {
        pgh__fmt(errbuf, errlen, "%s", PQerrorMessage(conn));
        chomp(errbuf);
        rc = PGH_ERROR;
    }
    return rc;
}

int pgh__conn_query(PGconn *conn, const char *sql, int timeout_ms, PGresult **last,
                    char sqlstate[6], char *errbuf, size_t errlen)
{
    /* the caller's connection keeps its own blocking mode */
    int was_nonblocking = PQisnonblocking(conn);
    int rc = conn_query(conn, sql, timeout_ms, last, sqlstate, errbuf, errlen);
    if (rc != PGH_ETIMEDOUT)
        PQsetnonblocking(conn, was_nonblocking);
    return rc;
}

int pgh_conn_exec(PGconn *conn, const char *sql, int timeout_ms, char sqlstate[6],
                  char *errbuf, size_t errlen)
{
    return pgh__conn_query(conn, sql, timeout_ms, NULL, sqlstate, errbuf, errlen);
}
