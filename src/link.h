/*
 * Internal: one libpq connection, bounded.  Connect and exec wait on the
 * socket against an absolute CLOCK_MONOTONIC deadline (ns), never on
 * libpq's connect_timeout (which has a 2 s minimum) and never in a
 * blocking libpq call.  A connection whose deadline fired is handed to the
 * canceller, which closes it off the caller's thread and sends the cancel
 * request from a worker thread (libpq 15's PQcancel blocks while a
 * postmaster is stopped).
 */
#ifndef PGG_LINK_H
#define PGG_LINK_H

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "cancel.h"
#include "classify.h"
#include "clock.h"
#include "pgguard.h"
#include "tls.h"
#include "watchdog.h"

struct pgg_stmt;

typedef struct pgg_query {
    const char *sql;
    int nparams;               /* 0 and no types: simple protocol (PQexec-like) */
    const Oid *types;
    const char *const *values;
    const int *lengths;
    const int *formats;
    int result_format;
    /* A prepared statement: executed by name (PQsendQueryPrepared), or,
     * with prepare, prepared (PQsendPrepare of sql and types). */
    const struct pgg_stmt *stmt;
    /* At most 63 bytes: a registered statement's name (pgg_pool_prepare
     * refuses longer ones) or auto_prepare's (pgg__link_query_small). */
    const char *stmt_name;
    bool prepare;
    /* Read-your-writes needs of the call (visibility.h); NULL: none. */
    struct pgg_vis_req *vis;
} pgg_query;

/*
 * Connect to one host with PQconnectStartParams + PQconnectPoll + ppoll,
 * giving up at deadline_ns.  On success *out is a CONNECTION_OK connection
 * in nonblocking mode with a silent notice processor.
 * Returns PGG_OK, PGG_ETIMEDOUT or PGG_ECONNECT (message from libpq; host
 * is the display name used in the error record).
 */
int pgg__link_connect(const char *const *keys, const char *const *vals,
                      int64_t deadline_ns, const char *host, PGconn **out,
                      pgg_error *err);
/* The same, but a connect still on its way at deadline_ns (or at the
 * caller's cancel) is not closed when pending is not NULL: PGG_ETIMEDOUT
 * with *out the connection and *pending the poll events it waits for
 * (its caller may hand it on: host.c, "Handed connects"). */
int pgg__link_connect_until(const char *const *keys, const char *const *vals,
                            int64_t deadline_ns, const char *host,
                            PGconn **out, int *pending, pgg_error *err);

/*
 * The same without waiting, for an event loop: start (PGG_OK, *out the new
 * connection, or the error), then step: ready false for the first step,
 * true once the socket (PQsocket, which may change between steps) showed
 * the events the last step asked for.  A step returns the poll events to
 * wait for next (> 0), 0 when connected (set up as pgg__link_connect's), or
 * -1 when it failed (err filled, *conn freed and NULL).  The caller bounds
 * it with its own timer and PQfinish()es it at the deadline.
 */
int pgg__link_connect_start(const char *const *keys, const char *const *vals,
                            const char *host, PGconn **out, pgg_error *err);
int pgg__link_connect_step(PGconn **conn, bool ready, const char *host,
                           pgg_error *err);

/*
 * Send q without waiting.  PGG_OK: sent (queued in libpq; pgg__link_io_step
 * flushes it).  Otherwise pgg__link_exec's failure returns (PGG_END_NOT_SENT
 * or PGG_END_REFUSED in *end).
 */
int pgg__link_send(PGconn *conn, const pgg_query *q, const char *host,
                   PGresult **out, pgg_attempt_end *end, pgg_error *err);

/* A query in flight after pgg__link_send, advanced without blocking. */
typedef struct pgg_link_io {
    PGresult *keep; /* the result kept so far (the last, or the first error) */
    ExecStatusType keep_status; /* PQresultStatus(keep), while keep */
    bool flushed;   /* the whole query has left */
    /* pgg__link_send sent it just now and nothing read since: until it has
     * all left, no answer can be in libpq's buffer, so the step that
     * flushes its last byte waits for the socket without parsing.  false
     * (as zeroed): parse first, as for a query someone else sent. */
    bool sent;
} pgg_link_io;

/*
 * Advance it: revents is what the socket showed since the last step (0 for
 * the first step, -1 for a poll error).  Returns the poll events to wait
 * for (> 0), or 0 when finished: then *rc, *out, *end and err are
 * pgg__link_exec's returns.  Never blocks.  The blocking exec is a loop
 * over this step.
 */
int pgg__link_io_step(PGconn *conn, pgg_link_io *io, int revents,
                      const char *host, PGresult **out, pgg_attempt_end *end,
                      pgg_error *err, int *rc);
/* The deadline came first: PGG_ETIMEDOUT, *end PGG_END_DEADLINE; drop the
 * connection (its state is unknown). */
int pgg__link_io_deadline(pgg_link_io *io, const char *host, PGresult **out,
                          pgg_attempt_end *end, pgg_error *err);

/*
 * Send q and wait for its results until deadline_ns.  Like PQexec, returns
 * the last result, or the first error result.
 * PGG_OK: *out holds the result (perhaps an error result); *end is
 *   PGG_END_RESULT.
 * PGG_ETIMEDOUT: *end = PGG_END_DEADLINE, *out NULL; the connection is in an
 *   unknown state: drop it (pgg__canceller_drop).
 * PGG_ECONNECT: *end = PGG_END_NOT_SENT (the connection was dead before the
 *   query left) or PGG_END_LOST; *out may hold libpq's error result.
 */
int pgg__link_exec(PGconn *conn, const pgg_query *q, int64_t deadline_ns,
                   const char *host, PGresult **out, pgg_attempt_end *end,
                   pgg_error *err);

/*
 * The same, waiting under the pool's watchdog (poll without a timeout;
 * the watchdog shuts the socket down at the deadline, so the lateness is
 * bounded by its tick).  wd NULL: as pgg__link_exec.
 */
int pgg__link_exec_wd(pgg_watchdog *wd, PGconn *conn, const pgg_query *q,
                      int64_t deadline_ns, const char *host, PGresult **out,
                      pgg_attempt_end *end, pgg_error *err);

/*
 * The second half of pgg__link_exec, for a query something else sent
 * (libpqtypes' registration queries): flush, then collect the results
 * until deadline_ns, with the same returns.
 */
int pgg__link_wait(PGconn *conn, int64_t deadline_ns, const char *host,
                   PGresult **out, pgg_attempt_end *end, pgg_error *err);
int pgg__link_wait_wd(pgg_watchdog *wd, PGconn *conn, int64_t deadline_ns,
                      const char *host, PGresult **out, pgg_attempt_end *end,
                      pgg_error *err);

/*
 * Is an idle pooled connection still usable?  Reads whatever the server sent
 * while it sat idle (a FATAL from a terminated backend, a ParameterStatus
 * after a promotion) without blocking.
 */
bool pgg__link_alive(PGconn *conn);

/*
 * pgg__link_alive without the read: does what libpq already read of an
 * idle connection (parsed here, no syscall) leave it usable?  False when it
 * holds the server's unprompted FATAL or ERROR (pg_terminate_backend's
 * 57P01, read behind the last answer) or the connection is closed.
 */
bool pgg__link_held_ok(PGconn *conn);

/*
 * The notice receiver's note of an error the server sent outside any query,
 * e.g. pg_terminate_backend's FATAL parsed right behind a query's last
 * answer (the answer stands; the session is over).  Armed before one
 * connection's parse and read right after it on the same thread, it
 * speaks for that connection alone (every reader arms it first, so a read
 * need not clear it: pool.c's exec_at does not).
 */
extern PGG_TLS bool pgg__link_unprompted_seen;

static inline void pgg__link_unprompted_arm(void)
{
    pgg__link_unprompted_seen = false;
}

static inline bool pgg__link_unprompted(void)
{
    bool seen = pgg__link_unprompted_seen;

    pgg__link_unprompted_seen = false;
    return seen;
}

/* Before the first PQconnectPoll: a refused startup then reports its
 * SQLSTATE in the message (pgg__link_error parses it into err->sqlstate). */
void pgg__link_verbose_startup(PGconn *conn);
/* Once connected: default error verbosity again, notices silenced. */
void pgg__link_started(PGconn *conn);

/* Discard the server's notices (WARNING on shutdown, NOTICE from user
 * functions) instead of printing them on the application's stderr. */
void pgg__link_silence(PGconn *conn);

/* May this connection go back to the pool: open, idle, no transaction? */
bool pgg__link_reusable(PGconn *conn);
/* Does PQisBusy say more than PQtransactionStatus's IDLE (libpq < 14)?
 * 1 yes, 2 no, 0 not known yet (learn: link.c). */
extern atomic_int pgg__link_busy_says_more;
int pgg__link_busy_learn(void);

/* The same after a one-shot call that did nothing but send and collect on
 * a connection that was reusable when lent: only the session's state can
 * have changed (a transaction left open, a lost connection), not the modes
 * a lease's caller may set (blocking, pipeline), so those are not asked.
 * Inline: every call gives its connection back through it. */
static inline bool pgg__link_idle_after_call(PGconn *conn)
{
    int x;

    /* PQTRANS_IDLE implies CONNECTION_OK (UNKNOWN otherwise). */
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        return false;
    x = atomic_load_explicit(&pgg__link_busy_says_more, memory_order_relaxed);
    if (!x)
        x = pgg__link_busy_learn();
    return x == 2 || PQisBusy(conn) == 0;
}

/* The role the server reports in in_hot_standby (PostgreSQL 14+), without a
 * round trip; PGG_ROLE_UNKNOWN when the server does not report it. */
pgg_role pgg__link_reported_role(PGconn *conn);

/*
 * One bounded round trip: role (pg_is_in_recovery) and the WAL position
 * that matters for lag: pg_current_wal_lsn on a primary,
 * pg_last_wal_replay_lsn on a standby (*lsn = 0 when unknown).
 */
int pgg__link_probe(PGconn *conn, int64_t deadline_ns, const char *host,
                    pgg_role *role, uint64_t *lsn, pgg_error *err);

/*
 * Wait for events on fd until deadline_ns (the wait of pgg__link_exec, for
 * modules that drive a connection themselves): the revents (> 0), 0 at the
 * deadline, -1 on a poll error.
 */
int pgg__link_poll(int fd, short events, int64_t deadline_ns);

/* "16/B374D848" -> 0x16B374D848; false on junk. */
bool pgg__lsn_parse(const char *text, uint64_t *out);

/* A COPY result reached a path that cannot feed or drain it (a one-shot
 * call, pgg_lease_exec, a pipelined write): PGG_ESTATE naming the lease
 * helper to use instead.  The caller closes the connection (mid-COPY). */
int pgg__link_refuse_copy(const PGresult *res, const char *host,
                          pgg_error *err);
bool pgg__link_is_copy(const PGresult *res);

/* Fill err from a connection's error message (one line, no password). */
int pgg__link_error(pgg_error *err, int code, PGconn *conn,
                    const PGresult *res, const char *host, const char *what);

/* ---------------------------------------------------------- cancellation */

typedef struct pgg_canceller pgg_canceller;

/* One worker per slot (host), started here with the closer thread (no
 * call ever starts a thread: an event loop's callback drops sessions and
 * queues cancels); each slot queues at
 * most `queue_max` cancels and drops the rest (a hung host cannot pile up
 * threads or memory), and a cancel that waited in the queue longer than
 * max_age_ns (behind a PQcancel stuck on a stopped postmaster) is dropped
 * rather than sent.  nslots 0: no cancels, the closer only. */
pgg_canceller *pgg__canceller_new(int nslots, int queue_max,
                                  int64_t max_age_ns, pgg_error *err);

/* Take conn's cancel key, hand conn to the canceller's closer thread (its
 * PQfinish frees whatever answer it holds, off the caller's deadline),
 * queue the cancel for the slot's worker.  Never blocks on the network.
 * conn may be NULL. */
void pgg__canceller_drop(pgg_canceller *c, int slot, PGconn *conn);

/* PQfinish conn (may be NULL) and close fd (> 0: another descriptor of
 * its socket, a loop's) on the closer's thread, off the caller's: the pool
 * drops sessions this way (host.c, link_close), so that an event loop's
 * callback never pays their sockets' teardown.  Inline when the closer
 * cannot be had (c NULL, no memory or thread, stopped).  Never blocks on
 * the network. */
void pgg__canceller_close(pgg_canceller *c, PGconn *conn, int fd);

/* For tests: when set, the closer thread runs it each time it wakes, before
 * it takes what was handed over. */
typedef void (*pgg__closer_hook)(void);
extern _Atomic(pgg__closer_hook) pgg__closer_woke_hook;
/* For tests: when set, a cancel worker runs it each time it wakes, before
 * it takes what was queued. */
extern _Atomic(pgg__closer_hook) pgg__cancel_worker_woke_hook;

/* Cancels sent and dropped so far (for stats). */
uint64_t pgg__canceller_sent(pgg_canceller *c);

/* Dropped connections the closer thread has closed (for tests). */
uint64_t pgg__canceller_closed(pgg_canceller *c);

/* Stop the workers, waiting at most max_wait_ns for them; a worker stuck in
 * PQcancel on a hung server is detached and frees its own state when it
 * returns.  Accepts NULL. */
void pgg__canceller_free(pgg_canceller *c, int64_t max_wait_ns);

/* The server answered 26000 (no such prepared statement): a registered
 * statement the session lost (DEALLOCATE ALL, DISCARD ALL); nothing ran. */
bool pgg__link_statement_gone(const PGresult *res);

/* Socket waits that their own backstop timeout ended because the watchdog
 * had not yet (a late watchdog thread); for tests and diagnosis. */
uint64_t pgg__link_backstops(void);

/* ------------------------------------------------ the wait in recv
 *
 * A pooled connection that only ever served one-shot calls waits for its
 * answer in libpq's own recv (issue 10): its socket is blocking, with
 * SO_RCVTIMEO and SO_SNDTIMEO of one slice, so after the send
 * PQconsumeInput sleeps in recv until the answer comes (send + recv: one
 * syscall fewer than PQexec's send + poll + recv, and the slice is a
 * timer-wheel timer, not poll's high-resolution one: tests/bench/bench-poll)
 * or until the slice ends (recv fails with EAGAIN, which libpq takes for
 * "nothing yet").  The clock is read only after an empty slice.  A slice
 * starts only while more than a slice and its lateness are left before the
 * deadline; the rest of the wait is the poll under the watchdog as before,
 * so the deadline, the watchdog and its cancel stay as they were, and the
 * watchdog never covers libpq's recv (libpq may close its socket there:
 * the watchdog could then shut down a reused descriptor).
 *
 * Blocking is safe only while every libpq read on the socket either waits
 * for us (a slice) or finds data that is there: libpq's pqReadData reads
 * again without a poll once it holds more than 32 KB (its buffer must have
 * grown past 40 KB for that), which would wait a whole slice for bytes
 * that never come.  libpq's input buffer starts at 16 KB and grows only
 * for a message that one read did not bring whole.  So the blocking mode
 * lasts only while every answer came in one read: the first answer that
 * needed a second read (or a query that did not all leave at once), and
 * any use of the connection other than a one-shot call (a lease's raw
 * PGconn, the event loop, pipelining, read-your-writes pipelines,
 * libpqtypes' registrations), make it non-blocking for good
 * (PGG_RECV_NEVER).  Waits with a cancel token poll (the token's fire
 * shuts the socket down under the watchdog), and SSL or GSS connections
 * never block (their reads are not libpq's plain recv).  Idle connections
 * read only what poll shows (pgg__link_alive), which never blocks.
 */
typedef signed char pgg_recv_mode;
enum {
    /* Non-blocking, and never to block again. */
    PGG_RECV_NEVER = -1,
    /* Non-blocking, no timeouts set yet; every answer so far came in one
     * read (a new connection: calloc's 0). */
    PGG_RECV_CLEAN = 0,
    /* Blocking, with the slice's timeouts. */
    PGG_RECV_ON = 1,
    /* Non-blocking since a call whose query may not leave in one send
     * (pgg__link_query_small), until the next whose query does; timeouts
     * set, every answer in one read. */
    PGG_RECV_PAUSED = 2,
};

/* The slice, and how late its timer-wheel timer may end it (a jiffy of
 * rounding and one of expiry at HZ=100; bench-poll measured 3-8 ms at
 * HZ=250 under load 28). */
#define PGG_LINK_SLICE_MS 20
#define PGG_LINK_SLICE_LATE_MS 20
#define PGG_LINK_SLICE_NS                                                     \
    ((int64_t)(PGG_LINK_SLICE_MS + PGG_LINK_SLICE_LATE_MS) * PGG_NS_PER_MS)

/* CLEAN or PAUSED -> ON (the socket blocking, the timeouts set once);
 * false (and NEVER) for an SSL or GSS connection or a failed syscall. */
bool pgg__link_recv_on(PGconn *conn, pgg_recv_mode *mode);
/* ON -> non-blocking again: PAUSED, or NEVER when never; CLEAN -> NEVER
 * when never.  A NULL mode does nothing. */
void pgg__link_recv_off(PGconn *conn, pgg_recv_mode *mode, bool never);
/* Does q leave in one send of at most 8000 bytes (libpq flushes its
 * output only at 8192, and a send that small into the empty send buffer
 * of an idle connection does not block)?  Counted as the message's
 * 64 bytes, its SQL text or statement name, and per parameter 14 bytes
 * (its length word, a format, a type) and its value.  Inline for a plain
 * SQL text, and for a statement run by name with text values (the calls
 * of pgg_exec_prepared and auto_prepare's runs), whose name is at most 63
 * bytes (pgg_query.stmt_name). */
bool pgg__link_query_small_params(const pgg_query *q);
#define PGG_LINK_QUERY_SMALL 8000
static inline bool pgg__link_query_small(const pgg_query *q)
{
    if (q->nparams == 0 && !q->stmt_name)
        return strnlen(q->sql, PGG_LINK_QUERY_SMALL) <
               PGG_LINK_QUERY_SMALL - 64;
    if (q->stmt_name && !q->prepare && q->values && !q->formats) {
        size_t n = 64 + 64;

        for (int i = 0; i < q->nparams && n <= PGG_LINK_QUERY_SMALL; i++)
            n += 14 + (q->values[i] ? strnlen(q->values[i],
                                              PGG_LINK_QUERY_SMALL)
                                    : 0);
        return n <= PGG_LINK_QUERY_SMALL;
    }
    return pgg__link_query_small_params(q);
}

/* Waits that ended at the deadline on the clock read after a slice (a
 * slice the scheduler ended late), not in the poll: for tests, as
 * pgg__link_backstops. */
extern _Atomic uint64_t pgg__link_slice_deadline_count;
uint64_t pgg__link_slice_deadlines(void);


/* pgg__link_exec_wd with now, a clock reading the caller took since its
 * last wait (0: none), which spares the first wait under the watchdog its
 * own reading for the backstop (a reading earlier than the true time only
 * makes the backstop later by as much; the watchdog still ends the wait at
 * the deadline), and the connection's recv mode (NULL: none, poll). */
int pgg__link_exec_mode(pgg_watchdog *wd, PGconn *conn, const pgg_query *q,
                        int64_t deadline_ns, int64_t now, pgg_recv_mode *mode,
                        const char *host, PGresult **out, pgg_attempt_end *end,
                        pgg_error *err);

/* ------------------------------------------- the blocking exec, inline
 *
 * pgg__link_exec_mode and its waits, inline so that the attempt of every
 * blocking call (pool.c's exec_at) runs the exec without a call of nine
 * arguments and its prologue, and takes the result's status the exec
 * asked (tests/bench/callgrind).  link.c's exported execs and waits are
 * these too. */

/* The wait without a watchdog slot (connects, callers without a pool):
 * ppoll until deadline_ns; the revents (> 0), 0 at the deadline, -1 on a
 * poll error.  With a slot: pgg__link_wait_armed with no clock reading. */
int pgg__link_wait_socket(pgg_wd_slot *slot, const pgg_cancel *cancel, int fd,
                          short events, int64_t deadline_ns);
/* A send or a connection failed: *end = how, err from the connection,
 * *out = keep; returns PGG_ECONNECT. */
int pgg__link_lost(PGconn *conn, PGresult **out, PGresult *keep,
                   pgg_attempt_end *end, pgg_attempt_end how, const char *host,
                   pgg_error *err);
/* Waits the backstop ended before the watchdog did (pgg__link_backstops). */
extern _Atomic uint64_t pgg__link_backstop_count;

/*
 * A wait under the watchdog carries its own timeout, this long past the
 * deadline, while the watchdog has lately been woken late (watchdog.h): it
 * ends the wait at the deadline, but it is one more thread to be
 * scheduled, and under load it was seen releasing a batch of waits 30-40
 * ms late (the soak, load ~30, while a thread sleeping 1 ms was at most 13
 * ms late).  The backstop bounds that by the waiter's own wake-up.  While
 * the watchdog keeps time, waits poll without a timeout, as PQexec does:
 * a timeout costs a kernel timer armed and cancelled on every wait.
 */
#define PGG_LINK_BACKSTOP_MS 5

/* now: a clock reading taken just before (0: read it here). */
static inline int pgg__link_backstop_ms(int64_t deadline_ns, int64_t now)
{
    int64_t left;
    uint64_t ms;

    if (deadline_ns == PGG_TIME_NEVER)
        return -1;
    left = deadline_ns - (now ? now : pgg__now_ns());
    if (left < 0) {
        /* Already past (a wait at its deadline): rare, signed. */
        left = left / PGG_NS_PER_MS + PGG_LINK_BACKSTOP_MS;
        return left < 0 ? 0 : (int)left;
    }
    /* Unsigned: the division by a constant needs no sign fix-up. */
    ms = (uint64_t)left / PGG_NS_PER_MS + PGG_LINK_BACKSTOP_MS;
    return ms > INT32_MAX ? -1 : (int)ms;
}

/* The poll timeout of a wait under a watchdog: none while the watchdogs
 * keep time, else the backstop.  now as for pgg__link_backstop_ms.
 * Until a watchdog's look ends it (until 0), not until the time it names:
 * the hold is of punctual wake-ups, and a hold that ran out with no look
 * since (an idle process, or a watchdog held up right then) proved
 * nothing; the first look after it ends the backstop. */
static inline int pgg__link_armed_timeout(int64_t deadline_ns, int64_t now)
{
    if (pgg__watchdog_backstop_until() == 0)
        return -1;
    return pgg__link_backstop_ms(deadline_ns, now);
}

/* The wait under a watchdog slot: see above.  now is a clock reading
 * taken just before, for the backstop (0: read it here). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int pgg__link_wait_armed(pgg_wd_slot *slot,
                                       const pgg_cancel *cancel, int fd,
                                       short events, int64_t deadline_ns,
                                       int64_t now)
{
    struct pollfd p;
    int r;
    bool fired;

    p.fd = fd;
    p.events = events;
    p.revents = 0;
    pgg__watchdog_arm(slot, fd, deadline_ns);
    /* A fire the watchdog may have missed (watchdog.c): look after
     * arming, before sleeping. */
    fired = cancel && pgg__cancel_fired(cancel);
    if (fired)
        r = 0;
    else
        do
            r = poll(&p, 1, pgg__link_armed_timeout(deadline_ns, now));
        while (r < 0 && errno == EINTR);
    if (pgg__watchdog_disarm(slot))
        return 0;
    if (r == 0) {
        /* The poll's own timeout, not a cancel seen before it. */
        if (!fired)
            atomic_fetch_add_explicit(&pgg__link_backstop_count, 1,
                                      memory_order_relaxed);
        return 0;
    }
    if (r > 0)
        return p.revents ? p.revents : events;
    return -1;
}

static inline bool pgg__link_status_error(ExecStatusType s)
{
    return s == PGRES_FATAL_ERROR || s == PGRES_BAD_RESPONSE ||
           s == PGRES_NONFATAL_ERROR;
}

static inline bool pgg__link_status_copy(ExecStatusType s)
{
    return s == PGRES_COPY_IN || s == PGRES_COPY_OUT || s == PGRES_COPY_BOTH;
}

static inline int pgg__link_send_query(PGconn *conn, const pgg_query *q)
{
    if (q->prepare)
        return PQsendPrepare(conn, q->stmt_name, q->sql, q->nparams, q->types);
    if (q->stmt_name)
        return PQsendQueryPrepared(conn, q->stmt_name, q->nparams, q->values,
                                   q->lengths, q->formats, q->result_format);
    if (q->nparams == 0 && !q->types && q->result_format == 0)
        return PQsendQuery(conn, q->sql);
    return PQsendQueryParams(conn, q->sql, q->nparams, q->types, q->values,
                             q->lengths, q->formats, q->result_format);
}

static inline int pgg__link_send_checked(PGconn *conn, const pgg_query *q,
                                         const char *host, PGresult **out,
                                         pgg_attempt_end *end, pgg_error *err)
{
    *out = NULL;
    /* No status look first: libpq sends nothing on a connection it knows
     * is closed, and the look after a refusal tells that case (its
     * message then is libpq's, "no connection to the server", as for
     * PQexec; the cause went with the call that found the close). */
    if (!pgg__link_send_query(conn, q)) {
        if (PQstatus(conn) != CONNECTION_OK)
            return pgg__link_lost(conn, out, NULL, end, PGG_END_NOT_SENT,
                                  host, err);
        /* The connection is fine; libpq would not send on it (another
         * command in progress, left by a raw use of a lease's PGconn).
         * Not the host's fault, and the connection may hold a partial
         * message: the caller closes it. */
        *end = PGG_END_REFUSED;
        return pgg__link_error(err, PGG_ESTATE, conn, NULL, host,
                               "libpq refused to send");
    }
    return PGG_OK;
}

/*
 * pgg__link_wait_socket for pgg__link_collect, whose waits follow one
 * another within a call.  The watchdog ends a wait only while it is in
 * poll: a large answer that the client is slower to take than the server
 * to send finds data at once at every wait, and the watchdog may not catch
 * one armed for the whole transfer (measured: 180 ms past a 60 ms deadline
 * for 1 MB rows).  So from the second wait of a call on, the clock decides
 * first; the first wait, all that a small answer needs, still reads no
 * clock.
 */
static inline int pgg__link_wait_next(pgg_wd_slot *slot,
                                      const pgg_cancel *cancel, int fd,
                                      short events, int64_t deadline_ns,
                                      int64_t *now, int *waits)
{
    if (fd < 0)
        return -1;
    if (!slot)
        return pgg__link_wait_socket(NULL, cancel, fd, events, deadline_ns);
    if ((*waits)++ > 0 && (*now = pgg__now_ns()) >= deadline_ns)
        return 0;
    /* The backstop's reading: the caller's for the first wait, this one's
     * own for the next; a reading serves one wait only. */
    events = (short)pgg__link_wait_armed(slot, cancel, fd, events,
                                         deadline_ns, *now);
    *now = 0;
    return events;
}

#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int pgg__link_io_advance(PGconn *conn, pgg_link_io *io,
                                       int revents, const char *host,
                                       PGresult **out, pgg_attempt_end *end,
                                       pgg_error *err, int *rc)
{
    int r;

    if (!io->flushed) {
        /* Push the query out; a hung server may stop reading our bytes. */
        if (revents < 0 ||
            ((revents & POLLIN) && !PQconsumeInput(conn))) {
            *rc = pgg__link_lost(conn, out, NULL, end, PGG_END_LOST, host,
                                 err);
            return 0;
        }
        r = PQflush(conn);
        if (r == 1)
            return POLLIN | POLLOUT;
        if (r < 0) {
            *rc = pgg__link_lost(conn, out, NULL, end, PGG_END_LOST, host,
                                 err);
            return 0;
        }
        io->flushed = true;
        /* Just sent by us: no answer can be in libpq's buffer yet.  The
         * server answers (and ends, with ReadyForQuery) only after our
         * last byte, and libpq reads between writes only while part of
         * the query is still to go; so the answer is on the socket, and
         * the poll sees it. */
        if (io->sent)
            return POLLIN;
    } else if (revents > 0) {
        /* A failure here becomes libpq's error result; collect it. */
        (void)PQconsumeInput(conn);
    }
    while (!PQisBusy(conn)) {
        PGresult *res = PQgetResult(conn);

        if (!res)
            goto done;
        if (io->keep && pgg__link_status_error(io->keep_status)) {
            PQclear(res); /* PQexec keeps the first error */
        } else {
            if (io->keep) /* the first result, usually: no call for nothing */
                PQclear(io->keep);
            io->keep = res;
            /* Asked once per result kept, for the tests here and below. */
            io->keep_status = PQresultStatus(res);
        }
        /* COPY needs the caller's data, and nobody can give it through a
         * one-shot call: refuse it plainly.  The connection is mid-COPY;
         * the caller closes it (PGG_END_REFUSED), and the server aborts
         * the COPY when it goes. */
        if (pgg__link_status_copy(io->keep_status)) {
            *end = PGG_END_REFUSED;
            *rc = pgg__link_refuse_copy(io->keep, host, err);
            PQclear(io->keep);
            io->keep = NULL;
            *out = NULL;
            return 0;
        }
        if (PQstatus(conn) == CONNECTION_BAD)
            break;
    }
    if (PQstatus(conn) == CONNECTION_BAD) {
        /* The server closed: a FATAL with a SQLSTATE (shutdown,
         * terminated) is a result to classify; otherwise it is lost. */
        if (io->keep && PQresultErrorField(io->keep, PG_DIAG_SQLSTATE))
            goto done;
        *rc = pgg__link_lost(conn, out, io->keep, end, PGG_END_LOST, host,
                             err);
        io->keep = NULL;
        return 0;
    }
    return POLLIN;

done:
    *end = PGG_END_RESULT;
    *out = io->keep;
    if (io->keep && pgg__link_status_error(io->keep_status))
        pgg__link_error(err, PGG_ESERVER, conn, io->keep, host, NULL);
    io->keep = NULL;
    *rc = PGG_OK;
    return 0;
}

/* Inline: the blocking exec of every call is this loop. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int pgg__link_collect(pgg_watchdog *wd, pgg_wd_slot **slot,
                                    const pgg_cancel *cancel, PGconn *conn,
                                    int64_t deadline_ns, int64_t now,
                                    bool sent, pgg_recv_mode *mode,
                                    const char *host, PGresult **out,
                                    pgg_attempt_end *end, pgg_error *err,
                                    ExecStatusType *status)
{
    pgg_link_io io = {.keep = NULL, .flushed = false, .sent = sent};
    int rc = PGG_OK, waits = 0, ev = 0, want;
    bool slice = false;

    /* *out is NULL already (the send's, or the callers' below). */
    while ((want = pgg__link_io_advance(conn, &io, ev, host, out, end, err,
                                        &rc)) != 0) {
        if (mode && *mode != PGG_RECV_NEVER) {
            /* The answer is not whole after a read that brought data (a
             * slice that ended empty left errno EAGAIN: libpq's recv
             * wrapper sets errno, 0 after data), or the query has not
             * all left: libpq's buffer may grow from here (see above). */
            if (want != POLLIN || (ev > 0 && !(slice && errno == EAGAIN)))
                pgg__link_recv_off(conn, mode, true);
            else if (!cancel && *mode != PGG_RECV_PAUSED) {
                if (slice || !now)
                    now = pgg__now_ns();
                if (slice && now >= deadline_ns) {
                    atomic_fetch_add_explicit(&pgg__link_slice_deadline_count,
                                              1, memory_order_relaxed);
                    goto deadline;
                }
                if (deadline_ns - now > PGG_LINK_SLICE_NS &&
                    (*mode == PGG_RECV_ON || pgg__link_recv_on(conn, mode))) {
                    /* The next advance's PQconsumeInput waits in recv. */
                    slice = true;
                    ev = POLLIN;
                    errno = 0;
                    continue;
                }
            }
        }
        if (slice) {
            /* From slices to the poll: the clock decides first (as for a
             * second wait). */
            slice = false;
            waits = 1;
        }
        if (wd) {
            /* The first wait that polls: its watchdog slot now (see
             * pgg__link_wait_under). */
            *slot = pgg__watchdog_claim(wd);
            wd = NULL;
        }
        ev = pgg__link_wait_next(*slot, cancel, PQsocket(conn), (short)want,
                                 deadline_ns, &now, &waits);
        if (ev == 0)
            goto deadline;
    }
    /* The result's status as io_advance asked it, for the caller's verdict
     * (keep_status stays that of the result handed out in *out). */
    *status = *out ? io.keep_status : PGRES_FATAL_ERROR;
    return rc;

deadline:
    *status = PGRES_FATAL_ERROR;
    return pgg__link_io_deadline(&io, host, out, end, err);
}

/* sent: the query was sent just now, by us (see pgg_link_io.sent). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int pgg__link_wait_under(pgg_watchdog *wd, PGconn *conn,
                                       int64_t deadline_ns, int64_t now,
                                       bool sent, pgg_recv_mode *mode,
                                       const char *host, PGresult **out,
                                       pgg_attempt_end *end, pgg_error *err,
                                       ExecStatusType *status)
{
    /* Without a slot too: a wait with a handle polls (no slice in recv,
     * which would not see the fire; the slotless poll looks at it).  It
     * takes its slot first, with the handle's flag.  A wait without one
     * takes its slot at its first poll (pgg__link_collect): an answer
     * that comes within the slices in recv, which the watchdog never
     * covers, needs none; a claim and its release cost every call two
     * atomic writes and, at 8 threads, a cache miss on the slot's line
     * after the sleep in recv (issue 10: 13 % of the CPU samples in
     * pgguard's own code, about 50 ns a call). */
    pgg_cancel *cancel = pgg__cancel_cur;
    pgg_wd_slot *slot = wd && cancel ? pgg__watchdog_claim(wd) : NULL;
    int rc;

    if (slot)
        pgg__watchdog_set_cancel(slot, pgg__cancel_flag(cancel));
    rc = pgg__link_collect(cancel ? NULL : wd, &slot, cancel, conn,
                           deadline_ns, now, sent, mode, host, out, end, err,
                           status);
    pgg__watchdog_release(slot);
    return rc;
}

/*
 * Before a send of what q sizes: a blocking send must not wait.  A query
 * that may not leave at once goes out non-blocking (and its wait polls);
 * the next that does blocks again.  A small one cannot find the send
 * buffer full (which would cost up to a slice of SO_SNDTIMEO, then a
 * slice of libpq's read, past the deadline: review9's finding 2): the
 * link is ON only after an answer, which the server sends once it has
 * read every byte we sent (and its ACK comes with it), and nothing else
 * writes to the socket in between (cancels use their own connection); so
 * the buffer is empty, and at most 8000 bytes fit in it (16 KB at least by
 * default for TCP, tcp_wmem, far more for a Unix socket) and in the
 * server's kernel's empty receive buffer, even when the server itself
 * hangs.
 */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void pgg__link_mode_for_send(PGconn *conn, const pgg_query *q,
                                           pgg_recv_mode *mode)
{
    if (mode && *mode > PGG_RECV_CLEAN) {
        bool small = pgg__link_query_small(q);

        if (*mode == PGG_RECV_ON && !small)
            pgg__link_recv_off(conn, mode, false);
        else if (*mode == PGG_RECV_PAUSED && small)
            (void)pgg__link_recv_on(conn, mode);
    }
}

/* pgg__link_exec_mode, and *status: PQresultStatus(*out) when *end is
 * PGG_END_RESULT (PGRES_FATAL_ERROR for no result, as PQresultStatus of
 * NULL; the same for any other end): asked once already, and the
 * attempt's verdict needs it. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline int pgg__link_exec_inline(pgg_watchdog *wd, PGconn *conn,
                                        const pgg_query *q,
                                        int64_t deadline_ns, int64_t now,
                                        pgg_recv_mode *mode,
                                        const char *host, PGresult **out,
                                        pgg_attempt_end *end, pgg_error *err,
                                        ExecStatusType *status)
{
    int rc;

    pgg__link_mode_for_send(conn, q, mode);
    rc = pgg__link_send_checked(conn, q, host, out, end, err);

    if (rc != PGG_OK) {
        *status = PGRES_FATAL_ERROR;
        return rc;
    }
    return pgg__link_wait_under(wd, conn, deadline_ns, now, true, mode, host,
                                out, end, err, status);
}

#endif
