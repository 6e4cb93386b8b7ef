/*
 * Internal: one attempt of a call on one host (pool.c): breaker admission,
 * borrow or connect, role check, exec, and the one judgement of an answer
 * every driver uses.  The pool's state is pool_state.h, below it; the
 * modules that run attempts (lease, pipeline, sample, call, async) sit
 * above it, and the public object (pgg_pool_new, pgg_exec, stats,
 * controls) is pool_api.c, at the top.
 */
#ifndef PGG_POOL_H
#define PGG_POOL_H

#include "pool_state.h"
#include "types.h"
#include "visibility.h"

/* One attempt of a call on one host, as run() weighs it (pool.c's
 * attempt_on, or pipeline.c's for a shared connection). */
typedef struct pgg_attempt {
    PGresult *res;
    pgg_verdict v;
    pgg_attempt_end end;
    int64_t ended; /* clock when it finished; 0 when it never ran */
    bool reused;   /* ran on a pooled connection, not a new one */
    bool lost;     /* ... and that session is gone now */
} pgg_attempt;

typedef enum pgg_take {
    PGG_TAKE_OK,      /* *l and *ticket are held: record the ticket once */
    PGG_TAKE_SKIPPED, /* not an attempt: breaker refused, wrong role, pool busy */
    PGG_TAKE_FAILED   /* connecting failed; recorded against the host */
} pgg_take;

/* Breaker admission, borrow (maybe connect), role check on one host;
 * now is the caller's clock reading. */
pgg_take pgg__pool_take(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                        int64_t deadline, int64_t now, pgg_link **l,
                        pgg_ticket *ticket, bool *rejected, pgg_error *err);

/* The two halves of pgg__pool_take after admission, for a loop driver
 * that borrows and connects without waiting: a failed borrow (why) recorded
 * and classified (SKIPPED or FAILED), and the role check of a borrowed
 * connection (OK, or SKIPPED with the link given back). */
pgg_take pgg__pool_take_failed(pgg_pool *pool, pgg_host *h, pgg_ticket ticket,
                               int64_t start, pgg_borrow_fail why,
                               pgg_error *err);
pgg_take pgg__pool_taken_check(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                               pgg_link **l, const pgg_ticket *ticket,
                               int64_t start);

/*
 * The role check of pool.c (role_fits) when it needs no report from the
 * session: a pooled connection (its report no newer than the host's role)
 * for a read, or on a host whose role is known.
 */
/* For tests (pool.c, replay_checked): run on the blocking path before a
 * read's new session checks its replay position. */
typedef void (*pgg__pool_hook)(void);
extern _Atomic(pgg__pool_hook) pgg__replay_check_hook;

static inline bool pgg__pool_role_fits_known(pgg_host *h, const pgg_link *l,
                                             pgg_intent intent)
{
    return !l->fresh &&
           (intent == PGG_READ ||
            atomic_load_explicit(&h->role, memory_order_relaxed) !=
                PGG_ROLE_UNKNOWN);
}

/*
 * The usual case of the loop's take, inline: a connection the loop had
 * already made non-blocking (recv_mode NEVER: a kept one, or one a loop
 * used before) whose role needs no look: nothing to do (bench-async: ~45
 * instructions per call less than pgg__pool_taken_check).  False:
 * pgg__pool_taken_check decides.
 */
static inline bool pgg__pool_taken_ready(pgg_host *h, const pgg_link *l,
                                         pgg_intent intent)
{
    return l->recv_mode == PGG_RECV_NEVER &&
           pgg__pool_role_fits_known(h, l, intent);
}

#if PGG_HAVE_LIBPQTYPES
/* The last step of pgg__pool_take when typed calls are on (types_on), for
 * both drivers: the connection's libpqtypes preparation failed (err: why;
 * the link is discarded, recorded as the host's failure or not: SKIPPED or
 * FAILED), or it is done (OK, or SKIPPED with the link given back when
 * now, the clock after it, is past deadline). */
pgg_take pgg__pool_types_failed(pgg_pool *pool, pgg_host *h, pgg_link **l,
                                pgg_ticket ticket, int64_t start,
                                pgg_error *err);
pgg_take pgg__pool_types_ready(pgg_pool *pool, pgg_host *h, pgg_link **l,
                               pgg_ticket ticket, int64_t start,
                               int64_t deadline, int64_t now, pgg_error *err);
#endif

/*
 * Run q on a taken connection, classify, record the ticket (when not NULL).
 * When the deadline fired the link is abandoned and *lp set to NULL;
 * otherwise the caller still holds it.  *ended is the clock when it
 * finished (one reading serves the breaker, the pool and the caller).
 */
pgg_verdict pgg__pool_exec_on(pgg_pool *pool, pgg_host *h, pgg_link **lp,
                              pgg_intent intent, const pgg_query *q,
                              int64_t deadline, const pgg_ticket *ticket,
                              int64_t started, PGresult **res,
                              pgg_attempt_end *end, int64_t *ended,
                              pgg_error *err);

/* What pgg__pool_attempt did. */
typedef enum pgg_attempt_made {
    PGG_ATTEMPT_SKIPPED, /* no attempt: wrong role, pool exhausted, ... */
    PGG_ATTEMPT_MADE,    /* *a is the attempt (its verdict recorded) */
    PGG_ATTEMPT_REFUSED  /* no attempt: the host's breaker refused it */
} pgg_attempt_made;

/*
 * One attempt of the blocking driver on a connection of its own: admit
 * (breaker), take (pgg__pool_take), exec (pgg__pool_exec_on), give back.
 * now: the path's latest clock reading, the attempt's start.  The
 * breaker's refusal is a return, not a flag through a pointer: one
 * argument fewer on the stack of every call.
 */
pgg_attempt_made pgg__pool_attempt(pgg_pool *pool, pgg_host *h,
                                   pgg_intent intent, const pgg_query *q,
                                   int64_t deadline, int64_t now,
                                   pgg_error *err, pgg_attempt *a);

/*
 * The judgement of an attempt's answer, one copy for every driver (a
 * connection of its own, a shared pipelined one, the event loop):
 * - pgg__verdict_callers: an error the server answered on a session that
 *   stays usable (08P01 for a bad parameter count, 25006 from a server
 *   that is still primary) is the caller's: not the host's, not retried.
 * - pgg__pool_reported_role: what the server reports after a query
 *   (in_hot_standby) re-routes at once, and clears a 25006 from a primary.
 * - pgg__pool_reprobe: a write refused as read-only marks the host standby
 *   and wakes the health round.
 * - pgg__pool_settle: the breaker's record (rec: PGG_CLASS_IGNORED for a
 *   pooled session found dead or a statement never sent) and, when the
 *   server ended a session (alive at alive_at: a time it answered after,
 *   or its last use), the host's idle siblings opened before alive_at
 *   closed and the others looked at.
 * - pgg__pool_settle_error: err's code from the verdict, and the host's
 *   last error unless the attempt was ignored.
 */
void pgg__verdict_callers(pgg_verdict *v);
void pgg__pool_reported_role(pgg_pool *pool, pgg_host *h, int role,
                             pgg_role reported, pgg_verdict *v);
void pgg__pool_reprobe(pgg_pool *pool, pgg_host *h, const pgg_verdict *v);
void pgg__pool_settle(pgg_pool *pool, pgg_host *h, const pgg_ticket *ticket,
                      pgg_class rec, bool ended_by_server, int64_t alive_at,
                      int64_t started, int64_t ended);
/* A session of h found ended by its server, alive at alive_at (its last
 * answer, or a time it answered after), with no record to make:
 * pgg__pool_settle's rule for its idle siblings. */
void pgg__pool_session_ended(pgg_pool *pool, pgg_host *h, int64_t alive_at,
                             int64_t now);
void pgg__pool_settle_error(pgg_host *h, pgg_verdict v, bool ignored,
                            pgg_error *err);
/* A call got no answer from h before its deadline, since then at the
 * latest: the health thread checks whether h answers at all (pool.c). */
void pgg__pool_note_silent(pgg_pool *pool, pgg_host *h, int64_t since);

/* How often an answer's in_hot_standby is looked up per host. */
#define PGG__ROLE_SEEN_NS (5 * PGG_NS_PER_MS)

/* A result that is no error (classify.c: always a success).  NULL (a lost
 * connection) reads as PGRES_FATAL_ERROR. */
static inline bool pgg__pool_status_ok(ExecStatusType s)
{
    return s != PGRES_FATAL_ERROR && s != PGRES_BAD_RESPONSE &&
           s != PGRES_NONFATAL_ERROR;
}

/*
 * The usual end of an attempt, for every driver: an answer that is no
 * error, on a host whose role is known and whose sessions' report was
 * looked up within PGG__ROLE_SEEN_NS, and no end of the session read
 * behind it (over).  Nothing else of the judgement applies to it (no
 * cancel, no role to learn, no session ended, no error to note): the
 * ticket's record (when not NULL) at ended, and true.  False, nothing
 * done: the whole judgement (pool.c's exec_judged).
 */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline bool pgg__pool_success_recorded(pgg_host *h,
                                              const pgg_ticket *ticket,
                                              int role, int64_t started,
                                              ExecStatusType status,
                                              pgg_attempt_end end, bool over,
                                              int64_t ended)
{
    if (end != PGG_END_RESULT || !pgg__pool_status_ok(status) || over ||
        role == PGG_ROLE_UNKNOWN ||
        ended - atomic_load_explicit(&h->role_seen_ns, memory_order_relaxed) >=
            PGG__ROLE_SEEN_NS)
        return false;
    if (ticket)
        pgg__pool_record_at(h, ticket, PGG_CLASS_SUCCESS, started, ended);
    return true;
}

/* pgg__pool_exec_done past pgg__pool_success_recorded: the whole
 * judgement, the attempt's end read already (ended). */
pgg_verdict pgg__pool_exec_judge(pgg_pool *pool, pgg_host *h, pgg_link **lp,
                                 pgg_intent intent, const pgg_ticket *ticket,
                                 int role, int64_t started, PGresult *res,
                                 ExecStatusType status, pgg_attempt_end end,
                                 int64_t ended, pgg_error *err);

/*
 * The second half of pgg__pool_exec_on, for drivers that ran the query
 * themselves (an event loop): res and end are the attempt's (res stays the
 * caller's), role the host's role read before it was sent.  Classify,
 * learn the role, record the ticket, drop the link when its state is
 * unknown (*lp NULL), exactly as after a blocking exec.  Inline for its
 * usual case (pgg__pool_success_recorded): bench-async, ~35 instructions
 * per call less than a call of ten arguments.
 */
static inline pgg_verdict pgg__pool_exec_done(pgg_pool *pool, pgg_host *h,
                                              pgg_link **lp, pgg_intent intent,
                                              const pgg_ticket *ticket,
                                              int role, int64_t started,
                                              PGresult *res,
                                              pgg_attempt_end end,
                                              int64_t *ended, pgg_error *err)
{
    ExecStatusType status = PQresultStatus(res);

    *ended = pgg__now_ns();
    if (pgg__pool_success_recorded(h, ticket, role, started, status, end,
                                   false, *ended))
        return (pgg_verdict){PGG_CLASS_SUCCESS, false, false, PGG_OK};
    return pgg__pool_exec_judge(pool, h, lp, intent, ticket, role, started,
                                res, status, end, *ended, err);
}

#endif
