#include "link.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "cancel.h"
#include "clock.h"
#include "error.h"
#include "lifo.h"

/* ------------------------------------------------------------- waiting */

/*
 * Wait for events on fd until deadline_ns.  Returns the revents (> 0),
 * 0 when the deadline passed, -1 on a poll error other than EINTR.
 *
 * With a watchdog slot: poll inside an armed window, with only a backstop
 * timeout (PGG_LINK_BACKSTOP_MS past the deadline); at the deadline the
 * watchdog shuts the socket down, which ends the poll, and disarm says so.
 * The window covers the poll only: libpq may close its socket in the calls
 * around it.
 *
 * Without one (connects, whose socket libpq may replace between polls, and
 * callers without a pool): ppoll, not poll: a millisecond timeout would
 * round every wait up and make a hung server cost up to a millisecond more
 * than the deadline.
 */
/* Waits the backstop ended before the watchdog did (pgg__link_backstops). */
_Atomic uint64_t pgg__link_backstop_count;

uint64_t pgg__link_backstops(void)
{
    return atomic_load_explicit(&pgg__link_backstop_count,
                                memory_order_relaxed);
}

int pgg__link_wait_socket(pgg_wd_slot *slot, const pgg_cancel *cancel, int fd,
                          short events, int64_t deadline_ns)
{
    struct pollfd p;

    if (fd < 0)
        return -1;
    if (slot)
        return pgg__link_wait_armed(slot, cancel, fd, events, deadline_ns, 0);
    for (;;) {
        int64_t now = pgg__now_ns();
        int64_t left = pgg__cancel_slice(now, deadline_ns) - now;
        struct timespec ts;
        int r;

        if (left <= 0 || pgg__cancel_now())
            return 0;
        ts.tv_sec = (time_t)(left / 1000000000);
        ts.tv_nsec = (long)(left % 1000000000);
        p.fd = fd;
        p.events = events;
        p.revents = 0;
        r = ppoll(&p, 1, &ts, NULL);
        if (r > 0)
            return p.revents ? p.revents : events;
        if (r == 0)
            continue; /* re-check the clock: ppoll may wake a little early */
        if (errno != EINTR)
            return -1;
    }
}

/* ------------------------------------------------------------- errors */

/* libpq's messages span lines ("...failed: Connection refused\n\tIs the
 * server running..."); an error record is one line. */
static void one_line(char *s)
{
    char *w = s;
    bool space = false;

    for (char *r = s; *r; r++) {
        if (*r == '\n' || *r == '\t' || *r == '\r') {
            space = true;
            continue;
        }
        if (space && w != s)
            *w++ = ' ';
        space = false;
        *w++ = *r;
    }
    *w = '\0';
}

/*
 * A refused startup (libpq 15 keeps no PGresult for it) reads, with
 * PQERRORS_VERBOSE, "...failed: FATAL:  53300: sorry, too many clients
 * already\nLOCATION:  ...".  Copy the SQLSTATE after the severity into
 * code (6 bytes); false when the message carries none.
 */
static bool startup_sqlstate(const char *msg, char code[6])
{
    static const char *const severities[] = {"FATAL:  ", "ERROR:  ",
                                             "PANIC:  "};

    for (size_t k = 0; msg && k < sizeof severities / sizeof severities[0];
         k++) {
        const char *p = strstr(msg, severities[k]);

        if (!p)
            continue;
        p += strlen(severities[k]);
        for (int i = 0; i < 5; i++) {
            if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'A' && p[i] <= 'Z')))
                return false;
        }
        if (p[5] != ':')
            return false;
        memcpy(code, p, 5);
        code[5] = '\0';
        return true;
    }
    return false;
}

/* Drop the "LOCATION:  file.c:123" lines PQERRORS_VERBOSE adds: they name
 * the server's source, not the caller's problem. */
static void drop_location(char *s)
{
    char *p;

    while ((p = strstr(s, "LOCATION:  ")) != NULL) {
        char *eol = strchr(p, '\n');

        if (!eol) {
            *p = '\0';
            break;
        }
        memmove(p, eol + 1, strlen(eol + 1) + 1);
    }
}

int pgg__link_error(pgg_error *err, int code, PGconn *conn,
                    const PGresult *res, const char *host, const char *what)
{
    const char *msg = NULL;
    const char *sqlstate = NULL;

    if (!err)
        return code;
    if (res) {
        msg = PQresultErrorMessage(res);
        sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    }
    if ((!msg || !*msg) && conn)
        msg = PQerrorMessage(conn);
    if (!msg || !*msg)
        msg = pgg_strerror(code);
    pgg__error_set(err, code, sqlstate, host, "%s%s%s", what ? what : "",
                   what ? ": " : "", msg);
    if (!res && !err->sqlstate[0] && startup_sqlstate(err->message, err->sqlstate))
        drop_location(err->message);
    /* The server asked for a password and the client had none (no
     * password key, no passfile entry): libpq ends the startup itself,
     * with no SQLSTATE.  It is the caller's configuration, the same on
     * every attempt, as a password the server refuses (28P01): told as
     * that, so that it is classified as that (PGG_ECONFIG, nothing against
     * the host) and not as a connection failure that opens the breaker. */
    if (!res && !err->sqlstate[0] && conn && PQconnectionNeedsPassword(conn))
        memcpy(err->sqlstate, "28P01", 6);
    one_line(err->message);
    return code;
}

/* ------------------------------------------------------------- connect */

void pgg__link_verbose_startup(PGconn *conn)
{
    /* A refusal at startup leaves no PGresult: only the verbose message
     * carries its SQLSTATE, whatever the server's language. */
    PQsetErrorVerbosity(conn, PQERRORS_VERBOSE);
}

void pgg__link_started(PGconn *conn)
{
    /* Results keep the default shape callers expect (no LOCATION lines). */
    PQsetErrorVerbosity(conn, PQERRORS_DEFAULT);
    pgg__link_silence(conn);
}

/* Set by notice_receiver when the server sent an ERROR or FATAL outside
 * any query: pgg__link_alive and pgg__link_held_ok arm and read it around
 * their own parse, the loop around each step of a connection's (libpq
 * calls the receiver on the parsing thread; link.h). */
PGG_TLS bool pgg__link_unprompted_seen;

/*
 * Pooled connections are shared by callers who never asked for the
 * server's notices on stderr.  A receiver rather than a processor: it sees
 * the severity, and an error on an idle session (pg_terminate_backend's
 * FATAL 57P01, which libpq hands over as a notice) means the session is
 * gone, even while PQstatus still says CONNECTION_OK.
 */
static void notice_receiver(void *arg, const PGresult *res)
{
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);

    (void)arg;
    /* Also the WARNING an immediate shutdown sends before it closes
     * (57P02, "because of crash of another server process"). */
    if ((sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "ERROR") == 0 ||
                 strcmp(sev, "PANIC") == 0)) ||
        (code && strncmp(code, "57P", 3) == 0))
        pgg__link_unprompted_seen = true;
}

void pgg__link_silence(PGconn *conn)
{
    PQsetNoticeReceiver(conn, notice_receiver, NULL);
}

int pgg__link_connect_start(const char *const *keys, const char *const *vals,
                            const char *host, PGconn **out, pgg_error *err)
{
    PGconn *conn = PQconnectStartParams(keys, vals, 0);

    *out = NULL;
    if (!conn)
        return pgg__error_set(err, PGG_ENOMEM, NULL, host,
                              "connect: out of memory");
    if (PQstatus(conn) == CONNECTION_BAD) {
        pgg__link_error(err, PGG_ECONNECT, conn, NULL, host, "connect");
        PQfinish(conn);
        return PGG_ECONNECT;
    }
    pgg__link_verbose_startup(conn);
    *out = conn;
    return PGG_OK;
}

int pgg__link_connect_step(PGconn **connp, bool ready, const char *host,
                           pgg_error *err)
{
    PGconn *conn = *connp;
    PostgresPollingStatusType st =
        ready ? PQconnectPoll(conn) : PGRES_POLLING_WRITING;

    if (st == PGRES_POLLING_READING)
        return POLLIN;
    if (st == PGRES_POLLING_WRITING)
        return POLLOUT;
    if (st == PGRES_POLLING_OK && PQsetnonblocking(conn, 1) == 0) {
        pgg__link_started(conn);
        return 0;
    }
    pgg__link_error(err, PGG_ECONNECT, conn, NULL, host, "connect");
    PQfinish(conn);
    *connp = NULL;
    return -1;
}

int pgg__link_connect(const char *const *keys, const char *const *vals,
                      int64_t deadline_ns, const char *host, PGconn **out,
                      pgg_error *err)
{
    return pgg__link_connect_until(keys, vals, deadline_ns, host, out, NULL,
                                   err);
}

int pgg__link_connect_until(const char *const *keys, const char *const *vals,
                            int64_t deadline_ns, const char *host,
                            PGconn **out, int *pending, pgg_error *err)
{
    PGconn *conn;
    int rc = pgg__link_connect_start(keys, vals, host, &conn, err);
    int events;

    if (rc != PGG_OK)
        return rc;
    events = pgg__link_connect_step(&conn, false, host, err);
    while (events > 0) {
        /* The socket changes when libpq moves to the next address. */
        int r = pgg__link_wait_socket(NULL, NULL, PQsocket(conn),
                                      (short)events, deadline_ns);

        if (r == 0) {
            if (pending) {
                *pending = events;
                *out = conn;
            } else {
                PQfinish(conn);
            }
            return pgg__error_set(err, PGG_ETIMEDOUT, NULL, host,
                                  "connect: deadline exceeded");
        }
        if (r < 0) {
            pgg__link_error(err, PGG_ECONNECT, conn, NULL, host, "connect");
            PQfinish(conn);
            return PGG_ECONNECT;
        }
        events = pgg__link_connect_step(&conn, true, host, err);
    }
    if (events < 0)
        return PGG_ECONNECT;
    *out = conn;
    return PGG_OK;
}

/* ---------------------------------------------------------------- exec */

bool pgg__link_statement_gone(const PGresult *res)
{
    const char *st;

    return res && PQresultStatus(res) == PGRES_FATAL_ERROR &&
           (st = PQresultErrorField(res, PG_DIAG_SQLSTATE)) != NULL &&
           strcmp(st, "26000") == 0;
}

int pgg__link_refuse_copy(const PGresult *res, const char *host,
                          pgg_error *err)
{
    bool in = PQresultStatus(res) == PGRES_COPY_IN;

    return pgg__error_set(err, PGG_ESTATE, NULL, host,
                          "COPY %s cannot run through a one-shot call or "
                          "pgg_lease_exec: use %s on a lease",
                          in ? "FROM STDIN" : "TO STDOUT",
                          in ? "pgg_lease_copy_in" : "pgg_lease_copy_out");
}

bool pgg__link_is_copy(const PGresult *res)
{
    return res && pgg__link_status_copy(PQresultStatus(res));
}

/*
 * A send that failed left nothing the server could execute: the simple
 * Query message is executed only once complete, and an extended-protocol
 * statement commits only at Sync, the last message of the batch.
 */
int pgg__link_lost(PGconn *conn, PGresult **out, PGresult *keep,
                   pgg_attempt_end *end, pgg_attempt_end how, const char *host,
                   pgg_error *err)
{
    *end = how;
    pgg__link_error(err, PGG_ECONNECT, conn, keep, host,
                    how == PGG_END_NOT_SENT ? "send" : "connection lost");
    *out = keep;
    return PGG_ECONNECT;
}

int pgg__link_exec(PGconn *conn, const pgg_query *q, int64_t deadline_ns,
                   const char *host, PGresult **out, pgg_attempt_end *end,
                   pgg_error *err)
{
    return pgg__link_exec_wd(NULL, conn, q, deadline_ns, host, out, end, err);
}

int pgg__link_send(PGconn *conn, const pgg_query *q, const char *host,
                   PGresult **out, pgg_attempt_end *end, pgg_error *err)
{
    return pgg__link_send_checked(conn, q, host, out, end, err);
}

int pgg__link_exec_mode(pgg_watchdog *wd, PGconn *conn, const pgg_query *q,
                        int64_t deadline_ns, int64_t now, pgg_recv_mode *mode,
                        const char *host, PGresult **out, pgg_attempt_end *end,
                        pgg_error *err)
{
    ExecStatusType status;

    return pgg__link_exec_inline(wd, conn, q, deadline_ns, now, mode, host,
                                 out, end, err, &status);
}

int pgg__link_exec_wd(pgg_watchdog *wd, PGconn *conn, const pgg_query *q,
                      int64_t deadline_ns, const char *host, PGresult **out,
                      pgg_attempt_end *end, pgg_error *err)
{
    return pgg__link_exec_mode(wd, conn, q, deadline_ns, 0, NULL, host, out,
                               end, err);
}

int pgg__link_wait(PGconn *conn, int64_t deadline_ns, const char *host,
                   PGresult **out, pgg_attempt_end *end, pgg_error *err)
{
    ExecStatusType status;

    *out = NULL;
    return pgg__link_wait_under(NULL, conn, deadline_ns, 0, false, NULL, host,
                                out, end, err, &status);
}

int pgg__link_wait_wd(pgg_watchdog *wd, PGconn *conn, int64_t deadline_ns,
                      const char *host, PGresult **out, pgg_attempt_end *end,
                      pgg_error *err)
{
    ExecStatusType status;

    *out = NULL;
    return pgg__link_wait_under(wd, conn, deadline_ns, 0, false, NULL, host,
                                out, end, err, &status);
}

int pgg__link_io_deadline(pgg_link_io *io, const char *host, PGresult **out,
                          pgg_attempt_end *end, pgg_error *err)
{
    PQclear(io->keep);
    io->keep = NULL;
    *out = NULL;
    *end = PGG_END_DEADLINE;
    return pgg__error_set(err, PGG_ETIMEDOUT, NULL, host,
                          "query: deadline exceeded; connection dropped and "
                          "the query cancelled");
}

int pgg__link_io_step(PGconn *conn, pgg_link_io *io, int revents,
                      const char *host, PGresult **out, pgg_attempt_end *end,
                      pgg_error *err, int *rc)
{
    return pgg__link_io_advance(conn, io, revents, host, out, end, err, rc);
}

/* ------------------------------------------------ the wait in recv */

_Atomic uint64_t pgg__link_slice_deadline_count;

uint64_t pgg__link_slice_deadlines(void)
{
    return atomic_load(&pgg__link_slice_deadline_count);
}

bool pgg__link_recv_on(PGconn *conn, pgg_recv_mode *mode)
{
    int fd = PQsocket(conn), fl;

    if (*mode == PGG_RECV_CLEAN) {
        struct timeval tv = {.tv_sec = PGG_LINK_SLICE_MS / 1000,
                             .tv_usec = PGG_LINK_SLICE_MS % 1000 * 1000};

        /* SSL and GSS read through their own layers (SSL_read may want to
         * write, and says "want read" for part of a record): not proven
         * safe blocking, so they keep the poll. */
        if (fd < 0 || PQsslInUse(conn) || PQgssEncInUse(conn) ||
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) {
            *mode = PGG_RECV_NEVER;
            return false;
        }
    }
    fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        *mode = PGG_RECV_NEVER;
        return false;
    }
    *mode = PGG_RECV_ON;
    return true;
}

void pgg__link_recv_off(PGconn *conn, pgg_recv_mode *mode, bool never)
{
    if (!mode)
        return;
    if (*mode == PGG_RECV_ON) {
        int fd = PQsocket(conn), fl = fd < 0 ? -1 : fcntl(fd, F_GETFL);

        /* A socket we cannot make non-blocking again is one libpq no
         * longer has (closed): nothing more reads it. */
        if (fl >= 0)
            (void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        *mode = never ? PGG_RECV_NEVER : PGG_RECV_PAUSED;
    } else if (never) {
        *mode = PGG_RECV_NEVER;
    }
}

/* The bytes a query's messages take, roughly from above (lengths, types,
 * formats and the fixed parts). */
#define QUERY_SMALL_MAX PGG_LINK_QUERY_SMALL

bool pgg__link_query_small_params(const pgg_query *q)
{
    size_t n = 64;

    if (q->sql && !q->stmt_name)
        n += strnlen(q->sql, QUERY_SMALL_MAX);
    else if (q->sql && q->prepare)
        n += strnlen(q->sql, QUERY_SMALL_MAX) + 4 * (size_t)q->nparams;
    if (q->stmt_name)
        n += strnlen(q->stmt_name, QUERY_SMALL_MAX);
    for (int i = 0; i < q->nparams && n <= QUERY_SMALL_MAX && q->values &&
                    !q->prepare;
         i++) {
        n += 10 + 4; /* its length word, a format, a type */
        if (!q->values[i])
            continue;
        if (q->formats && q->formats[i] && q->lengths)
            n += q->lengths[i] > 0 ? (size_t)q->lengths[i] : 0;
        else
            n += strnlen(q->values[i], QUERY_SMALL_MAX);
    }
    return n <= QUERY_SMALL_MAX;
}

/* ----------------------------------------------------------- liveness */

/* Parse what libpq already read of an idle session (no syscall), with
 * pgg__link_unprompted_seen armed by the caller: does it hold the server's
 * unprompted error?  Ours is told to the receiver (libpq hands an error on
 * an idle session over as a notice); one another receiver hides may still
 * be queued as a result. */
static bool held_bad(PGconn *conn)
{
    bool bad = false;

    while (!PQisBusy(conn)) {
        PGresult *res = PQgetResult(conn);
        if (!res)
            break;
        if (PQresultStatus(res) == PGRES_FATAL_ERROR)
            bad = true;
        PQclear(res);
    }
    bad = bad || pgg__link_unprompted_seen;
    pgg__link_unprompted_seen = false;
    return bad;
}

bool pgg__link_held_ok(PGconn *conn)
{
    if (!conn || PQstatus(conn) != CONNECTION_OK)
        return false;
    pgg__link_unprompted_seen = false;
    return !held_bad(conn) && PQstatus(conn) == CONNECTION_OK;
}

bool pgg__link_alive(PGconn *conn)
{
    struct pollfd p;

    if (!conn || PQstatus(conn) != CONNECTION_OK)
        return false;
    p.fd = PQsocket(conn);
    p.events = POLLIN;
    p.revents = 0;
    if (p.fd < 0)
        return false;
    /* Anything readable on an idle connection is a message the server sent
     * unprompted, or EOF: let libpq process it.  A terminated backend sends
     * FATAL then closes; one PQconsumeInput reads the FATAL (as a notice)
     * and leaves PQstatus OK, so the error itself is the verdict, and a
     * second read looks for the close when the receiver is not ours (a
     * lease's caller replaced it). */
    if (poll(&p, 1, 0) > 0) {
        pgg__link_unprompted_seen = false;
        if (!PQconsumeInput(conn) || held_bad(conn))
            return false;
        p.revents = 0;
        if (PQstatus(conn) == CONNECTION_OK && poll(&p, 1, 0) > 0 &&
            !PQconsumeInput(conn))
            return false;
    }
    return PQstatus(conn) == CONNECTION_OK &&
           PQtransactionStatus(conn) == PQTRANS_IDLE;
}

/*
 * libpq 14 and later: PQisBusy is "a query is running" (asyncStatus BUSY on
 * a live connection), which PQtransactionStatus's IDLE already rules out
 * (it says ACTIVE while any query runs); asking it again parses whatever
 * input is buffered, about a sixth of this check's cost.  Before 14 it
 * was also true after a failed write, which transaction status does not
 * show: ask it there.
 */
atomic_int pgg__link_busy_says_more; /* 0 unknown, 1 yes, 2 no */

int pgg__link_busy_learn(void)
{
    int x = PQlibVersion() < 140000 ? 1 : 2;

    atomic_store_explicit(&pgg__link_busy_says_more, x, memory_order_relaxed);
    return x;
}

static bool busy_says_more(void)
{
    int x = atomic_load_explicit(&pgg__link_busy_says_more,
                                 memory_order_relaxed);

    return (x ? x : pgg__link_busy_learn()) == 1;
}

bool pgg__link_reusable(PGconn *conn)
{
    /* Also as we lent it: a lease's caller may have switched the raw
     * connection to blocking or pipeline mode, which would make the next
     * borrower block or hang. */
    /* PQTRANS_IDLE implies CONNECTION_OK (UNKNOWN otherwise, and for
     * NULL). */
    return PQtransactionStatus(conn) == PQTRANS_IDLE &&
           (!busy_says_more() || PQisBusy(conn) == 0) && PQisnonblocking(conn) &&
           PQpipelineStatus(conn) == PQ_PIPELINE_OFF;
}

pgg_role pgg__link_reported_role(PGconn *conn)
{
    const char *v = conn ? PQparameterStatus(conn, "in_hot_standby") : NULL;

    if (!v)
        return PGG_ROLE_UNKNOWN;
    return strcmp(v, "on") == 0 ? PGG_ROLE_STANDBY : PGG_ROLE_PRIMARY;
}

/* -------------------------------------------------------------- probes */

bool pgg__lsn_parse(const char *text, uint64_t *out)
{
    unsigned long hi, lo;
    char *end;

    if (!text || !*text)
        return false;
    errno = 0;
    hi = strtoul(text, &end, 16);
    if (errno || end == text || *end != '/' || hi > 0xFFFFFFFFul)
        return false;
    text = end + 1;
    lo = strtoul(text, &end, 16);
    if (errno || end == text || *end != '\0' || lo > 0xFFFFFFFFul)
        return false;
    *out = ((uint64_t)hi << 32) | (uint64_t)lo;
    return true;
}

int pgg__link_probe(PGconn *conn, int64_t deadline_ns, const char *host,
                    pgg_role *role, uint64_t *lsn, pgg_error *err)
{
    static const pgg_query q = {
        .sql = "SELECT pg_catalog.pg_is_in_recovery(), CASE WHEN "
               "pg_catalog.pg_is_in_recovery() THEN "
               "pg_catalog.pg_last_wal_replay_lsn() ELSE "
               "pg_catalog.pg_current_wal_lsn() END"};
    PGresult *res = NULL;
    pgg_attempt_end end;
    int rc;

    *role = PGG_ROLE_UNKNOWN;
    *lsn = 0;
    rc = pgg__link_exec(conn, &q, deadline_ns, host, &res, &end, err);
    if (rc != PGG_OK) {
        PQclear(res);
        return rc;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        rc = pgg__link_error(err, PGG_ESERVER, conn, res, host, "probe");
        PQclear(res);
        return rc;
    }
    *role = strcmp(PQgetvalue(res, 0, 0), "t") == 0 ? PGG_ROLE_STANDBY
                                                     : PGG_ROLE_PRIMARY;
    if (!PQgetisnull(res, 0, 1))
        pgg__lsn_parse(PQgetvalue(res, 0, 1), lsn);
    PQclear(res);
    return PGG_OK;
}

/* ---------------------------------------------------------- canceller */

/*
 * One worker per slot.  A slot is reference-counted between the canceller
 * and its worker, so that a worker stuck in PQcancel against a stopped
 * postmaster can outlive the pool and clean up after itself.
 *
 * Queueing a cancel takes no lock, as the closer's hand-off (below): an
 * event loop's callback queues one when a call's deadline drops its
 * session, and a lock the worker also took (it took the old queue's as it
 * woke) made that loop wait whenever the worker was preempted holding it.
 * The queue is a list pushed with one compare-and-swap and taken whole by
 * the worker; `count` (pushed, not yet being sent) bounds it.
 */
typedef struct queued_cancel {
    pgg_lifo_node node; /* first: the slot's list (lifo.h) */
    PGcancel *cancel;
    int64_t queued_ns;
} queued_cancel;

typedef struct cancel_slot {
    pgg_lifo list; /* newest first */
    atomic_int count;
    int cap;
    int64_t max_age_ns; /* a cancel older than this is dropped, not sent */
    sem_t wake;         /* one post per cancel queued, and one to stop */
    atomic_bool started, stop;
    atomic_int refs;
    /* The worker and the canceller's end only (never a caller): */
    pthread_mutex_t mu;
    pthread_cond_t cv; /* done */
    bool done;
    atomic_uint_fast64_t *sent; /* points into the canceller; NULL once detached */
} cancel_slot;

/*
 * The closer: one thread per canceller that only PQfinish-es dropped
 * connections.  Closing one can take milliseconds (a large answer cut off
 * at its deadline leaves tens of MB of rows to free: measured 1-8 ms, 48 ms
 * at load 8), and it came after the caller's deadline.  PQfinish on a
 * nonblocking connection never waits on the network, so this thread never
 * sticks the way a cancel worker can.  It also closes the sessions the
 * pool drops (pgg__canceller_close): even an idle one costs its socket's
 * teardown, 20-90 us of kernel time, and one callback of an event loop
 * dropped every idle sibling of a session the server ended, 0.25-0.45 ms
 * for five (issue 13, lag13).
 */
typedef struct closing {
    pgg_lifo_node node; /* first: the closer's list (lifo.h) */
    PGconn *conn;
    int fd; /* another descriptor of its socket (a loop's), > 0, or 0 */
    bool dropped; /* pgg__canceller_drop's: counted (closed) */
} closing;

typedef struct closer {
    /* Pushed by any thread with one compare-and-swap, taken whole by the
     * closer: a hand-off never waits for a lock.  A lock here was taken
     * by the closer thread as it woke, and when that thread (SCHED_BATCH,
     * below) was preempted holding it, every event loop handing a close
     * over slept until it ran again: 3.9 and 5.7 ms in two reads' callbacks
     * under restart-all (bench-faults --async --steps, 2026-12-02 04:37
     * UTC, 14 ms in another run). */
    pgg_lifo list;
    sem_t wake; /* one post per hand-off, and one to stop */
    atomic_bool started, stop;
    pthread_t thread;
    atomic_uint_fast64_t closed;
} closer;

struct pgg_canceller {
    int nslots;
    int queue_max;
    atomic_uint_fast64_t sent;
    closer closer;
    cancel_slot *slots[];
};

static void close_now(PGconn *conn, int fd)
{
    PQfinish(conn);
    if (fd > 0)
        close(fd);
}

/* Close a taken list (newest first: the order of closes does not matter). */
static void close_batch(closer *k, pgg_lifo_node *taken)
{
    while (taken) {
        closing *batch = (closing *)taken;
        pgg_lifo_node *next = taken->next;

        if (batch->dropped)
            atomic_fetch_add_explicit(&k->closed, 1, memory_order_relaxed);
        close_now(batch->conn, batch->fd);
        free(batch);
        taken = next;
    }
}

/* For tests: run by the closer thread each time it wakes, before it takes
 * what was handed over (a test holds the closer there to show that a
 * hand-off never waits for it). */
_Atomic(pgg__closer_hook) pgg__closer_woke_hook;

static void *closer_main(void *arg)
{
    closer *k = arg;

    /* SCHED_BATCH: waking it (each hand-off) never preempts the thread that
     * handed the close over, an event loop in the middle of a callback,
     * which would then wait for the CPU behind whatever else is runnable;
     * it still gets its fair share of the CPU, so closes are not starved.
     * Not all systems have it: then it stays as it is. */
#ifdef SCHED_BATCH
    {
        struct sched_param sp = {.sched_priority = 0};

        (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
    }
#endif

    for (;;) {
        pgg__closer_hook hook;

        while (sem_wait(&k->wake) != 0 && errno == EINTR)
            ;
        hook = atomic_load(&pgg__closer_woke_hook);
        if (hook)
            hook();
        close_batch(k, pgg__lifo_take(&k->list, NULL));
        if (atomic_load(&k->stop))
            break;
    }
    return NULL;
}

/* PQfinish conn and close fd on the closer's thread; inline when that
 * cannot be had (no canceller, out of memory, no thread). */
static void close_later(pgg_canceller *c, PGconn *conn, int fd, bool dropped)
{
    closer *k = c ? &c->closer : NULL;
    closing *n = k && (conn || fd > 0) ? malloc(sizeof *n) : NULL;

    if (!n) {
        close_now(conn, fd);
        return;
    }
    n->conn = conn;
    n->fd = fd;
    n->dropped = dropped;
    if (!atomic_load(&k->started) || atomic_load(&k->stop)) {
        free(n);
        close_now(conn, fd);
        return;
    }
    (void)pgg__lifo_push(&k->list, &n->node);
    sem_post(&k->wake);
}

/* The closer starts with the canceller (the pool), never at a hand-off:
 * a thread's start (a clone, its stack mapped under the memory map's lock)
 * is no work for an event loop's callback, and it took a lock there.
 * Without a thread, closes are made inline, as before. */
static void closer_start(closer *k)
{
    pthread_attr_t attr;

    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    if (pthread_create(&k->thread, &attr, closer_main, k) == 0)
        atomic_store(&k->started, true);
    pthread_attr_destroy(&attr);
}

/* Close what is queued and stop the closer (it never waits on the
 * network, so this is quick).  No hand-off comes after: the pool's end. */
static void closer_stop(closer *k)
{
    atomic_store(&k->stop, true);
    if (atomic_load(&k->started)) {
        sem_post(&k->wake);
        pthread_join(k->thread, NULL);
    }
    close_batch(k, pgg__lifo_take(&k->list, NULL));
    sem_destroy(&k->wake);
}

static void free_cancels(pgg_lifo_node *taken)
{
    while (taken) {
        queued_cancel *q = (queued_cancel *)taken;

        taken = taken->next;
        PQfreeCancel(q->cancel);
        free(q);
    }
}

static void slot_unref(cancel_slot *s)
{
    if (atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    free_cancels(pgg__lifo_take(&s->list, NULL));
    sem_destroy(&s->wake);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* For tests: run by a cancel worker each time it wakes, before it takes
 * what was queued (a test holds it there to show that queueing a cancel
 * never waits for it). */
_Atomic(pgg__closer_hook) pgg__cancel_worker_woke_hook;

static void *cancel_worker(void *arg)
{
    cancel_slot *s = arg;
    char errbuf[256];

    for (;;) {
        pgg__closer_hook hook;
        pgg_lifo_node *fifo;

        while (sem_wait(&s->wake) != 0 && errno == EINTR)
            ;
        hook = atomic_load(&pgg__cancel_worker_woke_hook);
        if (hook)
            hook();
        /* Oldest first.  On stop, what is queued still goes out: each
         * cancel ends a query that would otherwise run on with nobody
         * waiting for it. */
        fifo = pgg__lifo_oldest_first(pgg__lifo_take(&s->list, NULL), NULL);
        while (fifo) {
            queued_cancel *q = (queued_cancel *)fifo;
            /* Queued behind a PQcancel stuck on a stopped postmaster for
             * longer than the bound: its query has had all that time to
             * end alone. */
            bool fresh = pgg__now_ns() - q->queued_ns <= s->max_age_ns;

            fifo = fifo->next;
            atomic_fetch_sub(&s->count, 1);
            /* May block for as long as the server is stopped; only this
             * slot's worker waits. */
            if (fresh)
                (void)PQcancel(q->cancel, errbuf, (int)sizeof errbuf);
            PQfreeCancel(q->cancel);
            free(q);
            if (fresh) {
                pthread_mutex_lock(&s->mu);
                if (s->sent)
                    atomic_fetch_add(s->sent, 1);
                pthread_mutex_unlock(&s->mu);
            }
        }
        if (atomic_load(&s->stop) && pgg__lifo_empty(&s->list))
            break;
    }
    pthread_mutex_lock(&s->mu);
    s->done = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    slot_unref(s);
    return NULL;
}

/* Each slot's worker starts with the canceller (the pool), never at a
 * drop: see closer_start.  Without one, that host's cancels are dropped. */
static void slot_start(cancel_slot *s)
{
    pthread_t t;
    pthread_attr_t attr;

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* PQcancel needs little stack. */
    pthread_attr_setstacksize(&attr, 256 * 1024);
    atomic_fetch_add(&s->refs, 1);
    if (pthread_create(&t, &attr, cancel_worker, s) == 0)
        atomic_store(&s->started, true);
    else
        atomic_fetch_sub(&s->refs, 1);
    pthread_attr_destroy(&attr);
}

pgg_canceller *pgg__canceller_new(int nslots, int queue_max,
                                  int64_t max_age_ns, pgg_error *err)
{
    pgg_canceller *c;

    if (nslots < 0 || queue_max <= 0) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL, "canceller: bad size");
        return NULL;
    }
    c = calloc(1, sizeof *c + (size_t)nslots * sizeof c->slots[0]);
    if (!c) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "canceller: out of memory");
        return NULL;
    }
    c->nslots = nslots;
    c->queue_max = queue_max;
    atomic_init(&c->sent, 0);
    atomic_init(&c->closer.list.head, NULL);
    sem_init(&c->closer.wake, 0, 0);
    atomic_init(&c->closer.started, false);
    atomic_init(&c->closer.stop, false);
    atomic_init(&c->closer.closed, 0);
    for (int i = 0; i < nslots; i++) {
        cancel_slot *s = calloc(1, sizeof *s);
        if (!s || sem_init(&s->wake, 0, 0) != 0) {
            free(s);
            pgg__canceller_free(c, 0);
            pgg__error_set(err, PGG_ENOMEM, NULL, NULL,
                           "canceller: out of memory");
            return NULL;
        }
        atomic_init(&s->list.head, NULL);
        atomic_init(&s->count, 0);
        atomic_init(&s->started, false);
        atomic_init(&s->stop, false);
        atomic_init(&s->refs, 1);
        pthread_mutex_init(&s->mu, NULL);
        pgg__cond_init(&s->cv);
        s->cap = queue_max;
        s->max_age_ns = max_age_ns;
        s->sent = &c->sent;
        c->slots[i] = s;
        slot_start(s);
    }
    closer_start(&c->closer);
    return c;
}

void pgg__canceller_drop(pgg_canceller *c, int slot, PGconn *conn)
{
    PGcancel *cn;
    cancel_slot *s;
    queued_cancel *n;

    if (!conn)
        return;
    cn = c && c->nslots > 0 && PQstatus(conn) == CONNECTION_OK
             ? PQgetCancel(conn)
             : NULL;
    /* Nonblocking mode: PQfinish's Terminate message cannot block; it is
     * still not free (see closer). */
    close_later(c, conn, 0, true);
    if (!cn)
        return;
    if (!c || slot < 0 || slot >= c->nslots) {
        PQfreeCancel(cn);
        return;
    }
    s = c->slots[slot];
    /* A full queue: the worker is stuck on this host; drop it. */
    if (atomic_load(&s->stop) || atomic_fetch_add(&s->count, 1) >= s->cap) {
        atomic_fetch_sub(&s->count, 1);
        PQfreeCancel(cn);
        return;
    }
    if (!atomic_load(&s->started) || !(n = malloc(sizeof *n))) {
        atomic_fetch_sub(&s->count, 1);
        PQfreeCancel(cn);
        return;
    }
    n->cancel = cn;
    n->queued_ns = pgg__now_ns();
    (void)pgg__lifo_push(&s->list, &n->node);
    sem_post(&s->wake);
}

void pgg__canceller_close(pgg_canceller *c, PGconn *conn, int fd)
{
    close_later(c, conn, fd, false);
}

uint64_t pgg__canceller_sent(pgg_canceller *c)
{
    return c ? (uint64_t)atomic_load(&c->sent) : 0;
}

uint64_t pgg__canceller_closed(pgg_canceller *c)
{
    return c ? (uint64_t)atomic_load(&c->closer.closed) : 0;
}

void pgg__canceller_free(pgg_canceller *c, int64_t max_wait_ns)
{
    int64_t deadline = pgg__now_ns() + (max_wait_ns > 0 ? max_wait_ns : 0);

    if (!c)
        return;
    for (int i = 0; i < c->nslots; i++) {
        cancel_slot *s = c->slots[i];

        if (!s)
            continue;
        atomic_store(&s->stop, true);
        sem_post(&s->wake);
        pthread_mutex_lock(&s->mu);
        /* Give queued cancels their chance, within the bound. */
        while (atomic_load(&s->started) && !s->done) {
            struct timespec ts;

            if (pgg__now_ns() >= deadline)
                break;
            ts = pgg__ns_to_timespec(deadline);
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        }
        s->sent = NULL;
        pthread_mutex_unlock(&s->mu);
        slot_unref(s);
    }
    closer_stop(&c->closer);
    free(c);
}

/* ------------------------------------------------------------ for others */

int pgg__link_poll(int fd, short events, int64_t deadline_ns)
{
    return pgg__link_wait_socket(NULL, NULL, fd, events, deadline_ns);
}
