/*
 * One attempt of a call on one host (pool.h): breaker admission, borrow or
 * connect, role check, exec, and the judgement of its answer, composed
 * from the breakers, the hosts' connection pools, the bounded link and the
 * classifier.  The public object around it is pool_api.c.
 */
#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autoprep.h"
#include "autoprep_exec.h"
#include "cancel.h"
#include "error.h"

/* ------------------------------------------------------------ one call */

/* For tests: run on the blocking path just before a new session's check
 * of its replay position (a test promotes the standby there). */
_Atomic(pgg__pool_hook) pgg__replay_check_hook;

/*
 * A read's new session on a standby that may have gone back behind the
 * replay position it reported (hold.h: suspect), or is held for it: on
 * the blocking path (deadline not 0) the health probe's query (role and
 * position, link.c) is asked on this session in one round trip, which
 * clears the suspicion (or holds the host: it went back); a server that
 * answers as primary was promoted since the session said standby: the
 * pool learns it now (before, only at the next probe), and a primary has
 * every record it wrote: not held, the read runs (a hold set on a host
 * already known as primary is lifted by no probe: pool_state.c lifts
 * holds on a change of role).  On an event loop, which must not wait, a
 * host seen down (PGG_SUSPECT_DOWN) is held until the health probe, woken
 * now, checks it, and sessions ended with no other sign let the read run (a
 * pg_terminate_backend blip looks the same: holding then sent the loop's
 * reads to the primary and delayed the first write after the blip,
 * tests/bench/faults --async --fault terminate).  Returns whether the read
 * may run on it.
 */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static bool replay_checked(pgg_pool *pool, pgg_host *h, const pgg_link *l,
                           int64_t deadline)
{
    pgg_role role = PGG_ROLE_UNKNOWN;
    uint64_t lsn = 0;

    if (!deadline && !pgg__hold_on(&h->hold) &&
        pgg__hold_suspected(&h->hold) < PGG_SUSPECT_DOWN) {
        pgg__pool_wake_health(pool);
        return true;
    }
    if (deadline && !pgg__hold_on(&h->hold)) {
        pgg__pool_hook hook = atomic_load(&pgg__replay_check_hook);

        if (hook)
            hook();
        (void)pgg__link_probe(l->conn, deadline, h->name, &role, &lsn, NULL);
    }
    if (role == PGG_ROLE_PRIMARY) {
        pgg__pool_set_role(pool, h, PGG_ROLE_PRIMARY, "reported by the server");
        (void)pgg__hold_release(&h->hold); /* also when known as primary */
        return true;
    }
    if (role == PGG_ROLE_STANDBY && lsn) {
        (void)pgg__hold_probed(&h->hold, lsn, 0, pgg__now_ns());
        if (!pgg__hold_on(&h->hold))
            return true;
    } else {
        (void)pgg__hold_set(&h->hold, false, "a new session could not be checked");
    }
    pgg__pool_wake_health(pool);
    return false;
}

/*
 * Check the role of a connection before a write or a primary read is sent
 * on it: the server told us (in_hot_standby), no round trip needed.
 * Returns false when the host turned out to be a standby.  A new
 * connection's report is current.  A pooled one's is as old as its last
 * answer, which is no older than what the host's role says when that role
 * is unknown (an unreachable probe, a lost health session): then the
 * session's report decides.  Otherwise the host's role (probes, recent
 * answers) decides, and a write that reaches a standby anyway comes back
 * as 25006 and is retried on the new primary.
 */
static bool role_fits(pgg_pool *pool, pgg_host *h, const pgg_link *l,
                      pgg_intent intent, int64_t deadline)
{
    pgg_role r;

    if (pgg__pool_role_fits_known(h, l, intent))
        return true;
    r = pgg__link_reported_role(l->conn);
    if (r != PGG_ROLE_UNKNOWN)
        pgg__pool_set_role(pool, h, r, "reported by the server");
    /* A standby that may have gone back (hold.h): suspect, held, or a
     * session of it ended by its server within the last second (settle's
     * look_until_ns; the health thread, woken then, marks it suspect when
     * its own session died too). */
    if (intent == PGG_READ && r != PGG_ROLE_PRIMARY &&
        (pgg__hold_on(&h->hold) || pgg__hold_suspected(&h->hold) ||
         (atomic_load(&h->hold.high) &&
          pgg__now_ns() < atomic_load_explicit(&h->look_until_ns,
                                               memory_order_relaxed))))
        return replay_checked(pool, h, l, deadline);
    return intent == PGG_READ || r != PGG_ROLE_STANDBY;
}


/*
 * A call got no answer from h before its deadline: its statement, or a
 * connect the host did not complete.  Not the caller's cancel (ignored
 * before this), nor 57014 from statement_timeout, which is an answer.
 * The health thread checks at once whether the host answers anything at
 * all (health.c, "A call that got no answer"); since is when the host went
 * silent as far as this call knows.  The oldest mark not yet taken stands.
 */
void pgg__pool_note_silent(pgg_pool *pool, pgg_host *h, int64_t since)
{
    int_fast64_t none = 0;

    (void)atomic_compare_exchange_strong(&h->silent_since_ns, &none, since);
    pgg__pool_wake_health(pool);
}

pgg_take pgg__pool_take_failed(pgg_pool *pool, pgg_host *h, pgg_ticket ticket,
                               int64_t start, pgg_borrow_fail why,
                               pgg_error *err)
{
    int64_t now = pgg__now_ns();
    pgg_verdict v;

    if (why == PGG_BORROW_CUT && !pgg__cancel_now()) {
        /* The call's deadline came before the connect's own bound: the
         * call's timeout, not the host's failure (its connect goes on for
         * the pool: host.c, "Handed connects").  The host did not answer
         * within it, though: the health thread checks whether it answers
         * anything (since the connect's start at the latest, as below),
         * and the connect, if it completes, is an answer (health.c). */
        int64_t since = now - h->connect_timeout_ns;

        pgg__pool_record(pool, h, ticket, PGG_CLASS_IGNORED, start, now);
        pgg__pool_note_silent(pool, h, since > start ? since : start);
        return PGG_TAKE_SKIPPED;
    }
    if (why != PGG_BORROW_CONNECT && why != PGG_BORROW_CUT) {
        pgg__pool_record(pool, h, ticket, PGG_CLASS_IGNORED, start, now);
        return PGG_TAKE_SKIPPED;
    }
    if (pgg__cancel_now()) {
        /* Our own doing, not the host's. */
        pgg__pool_record(pool, h, ticket, PGG_CLASS_IGNORED, start, now);
        pgg__error_set(err, PGG_ECANCELED, NULL, h->name,
                       "call cancelled by the caller while connecting; "
                       "not sent");
        /* A connect the cancel cut was handed on (host.c, "Handed
         * connects"): the health thread drives it only once woken, and
         * borrowers wait for it meanwhile.  No silence noted: a cancel
         * says nothing of the host. */
        if (why == PGG_BORROW_CUT)
            pgg__pool_wake_health(pool);
        return PGG_TAKE_SKIPPED;
    }
    /* A refusal at startup carries its SQLSTATE: too many clients is the
     * host's, a wrong password the caller's (classify.h). */
    v = pgg__classify_connect(&pool->cfg->classifier,
                              err ? err->sqlstate : NULL);
    if (err && err->sqlstate[0])
        err->code = v.code;
    pgg__pool_record(pool, h, ticket, v.cls, start, now);
    if (v.cls == PGG_CLASS_IGNORED) /* refused at startup: it answered */
        atomic_fetch_add_explicit(&h->ignored_answers, 1,
                                  memory_order_relaxed);
    if (pgg__host_failure(v.cls)) {
        pgg__host_note_error(h, err);
        if (err && err->code == PGG_ETIMEDOUT) {
            /* Silent since the connect's start at the latest: it had
             * connect_timeout_ms at most.  Not the attempt's start, which
             * may come before a wait for a connection, and before answers
             * the host gave meanwhile (the silence would be dropped as
             * answered since). */
            int64_t since = now - h->connect_timeout_ns;

            pgg__pool_note_silent(pool, h, since > start ? since : start);
        } else {
            pgg__pool_wake_health(pool);
        }
    }
    return PGG_TAKE_FAILED;
}

/* ticket by address: copied only on the way out (a refusal). */
static inline pgg_take taken(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                             pgg_link **l, const pgg_ticket *ticket,
                             int64_t start, int64_t deadline)
{
    if (!role_fits(pool, h, *l, intent, deadline)) {
        int64_t now = pgg__now_ns();

        pgg__host_give_back(h, *l, now);
        *l = NULL;
        pgg__pool_record(pool, h, *ticket, PGG_CLASS_IGNORED, start, now);
        return PGG_TAKE_SKIPPED;
    }
    return PGG_TAKE_OK;
}

pgg_take pgg__pool_taken_check(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                               pgg_link **l, const pgg_ticket *ticket,
                               int64_t start)
{
    /* The event loop's: it reads without blocking (link.h's recv wait). */
    pgg__link_recv_off((*l)->conn, &(*l)->recv_mode, true);
    /* No deadline: nothing that waits on the loop (pool.c, replay_checked). */
    return taken(pool, h, intent, l, ticket, start, 0);
}

/* pgg__host_await_back's wake: host.c knows nothing of the health thread,
 * nor this module (pool_state.h). */
static void wake_health(void *pool)
{
    pgg__pool_wake_health(pool);
}

/* pgg__pool_take, with *now a clock reading in, and one no older than the
 * end of whatever waited (a connect, a busy pool, a starting server) out. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline pgg_take take_at(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                               int64_t deadline, int64_t *now, pgg_link **l,
                               pgg_ticket *ticket, bool *rejected,
                               pgg_error *err)
{
    pgg_borrow_fail why;
    bool admitted;
    int64_t start = *now;

    *l = NULL;
    admitted = pgg__breaker_allow(&h->breaker, start, ticket);
    /* A host whose server is starting is waited for (host.h). */
    if (!admitted && pgg__host_await_back(h, deadline, intent != PGG_READ,
                                          wake_health, pool)) {
        start = *now = pgg__now_ns();
        admitted = pgg__breaker_allow(&h->breaker, start, ticket);
    }
    if (!admitted) {
        atomic_fetch_add(&h->rejections, 1);
        *rejected = true;
        return PGG_TAKE_SKIPPED;
    }
    if (pgg__host_borrow(h, deadline, now, l, &why, err) != PGG_OK)
        return pgg__pool_take_failed(pool, h, *ticket, start, why, err);
    if (taken(pool, h, intent, l, ticket, start, deadline) != PGG_TAKE_OK)
        return PGG_TAKE_SKIPPED;
#if PGG_HAVE_LIBPQTYPES
    if (atomic_load_explicit(&pool->types_on, memory_order_relaxed)) {
        /* A copy: l's address goes no further (the attempt keeps its
         * connection in a register). */
        pgg_link *tl = *l;
        pgg_take t;

        if (pgg__types_prepare(pool->types, tl, deadline, h->name, err) !=
            PGG_OK) {
            t = pgg__pool_types_failed(pool, h, &tl, *ticket, start, err);
        } else {
            *now = pgg__now_ns();
            t = pgg__pool_types_ready(pool, h, &tl, *ticket, start, deadline,
                                      *now, err);
        }
        *l = tl;
        return t;
    }
#endif
    return PGG_TAKE_OK;
}

#if PGG_HAVE_LIBPQTYPES
pgg_take pgg__pool_types_failed(pgg_pool *pool, pgg_host *h, pgg_link **l,
                                pgg_ticket ticket, int64_t start,
                                pgg_error *err)
{
    /* Registration failed: a type the server lacks, or the session died
     * meanwhile (or the caller cancelled: not the host's doing).  Either
     * way this connection is not usable. */
    pgg_class cls = err && (err->code == PGG_ETYPES ||
                            err->code == PGG_ECANCELED)
                        ? PGG_CLASS_IGNORED
                        : PGG_CLASS_CONNECTION;

    pgg__host_discard(h, *l);
    *l = NULL;
    pgg__pool_record(pool, h, ticket, cls, start, pgg__now_ns());
    return cls == PGG_CLASS_IGNORED ? PGG_TAKE_SKIPPED : PGG_TAKE_FAILED;
}

pgg_take pgg__pool_types_ready(pgg_pool *pool, pgg_host *h, pgg_link **l,
                               pgg_ticket ticket, int64_t start,
                               int64_t deadline, int64_t now, pgg_error *err)
{
    /* Registrations may have used the time: send nothing past the
     * deadline. */
    if (now < deadline)
        return PGG_TAKE_OK;
    pgg__host_give_back(h, *l, now);
    *l = NULL;
    pgg__pool_record(pool, h, ticket, PGG_CLASS_IGNORED, start, now);
    pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                   "deadline exceeded while preparing the connection for "
                   "libpqtypes; not sent");
    return PGG_TAKE_SKIPPED;
}
#endif

pgg_take pgg__pool_take(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                        int64_t deadline, int64_t now, pgg_link **l,
                        pgg_ticket *ticket, bool *rejected, pgg_error *err)
{
    pgg_take t = take_at(pool, h, intent, deadline, &now, l, ticket, rejected,
                         err);

    /* A lease's raw PGconn, pipelining, the sampler: they read without
     * blocking (link.h's recv wait). */
    if (*l)
        pgg__link_recv_off((*l)->conn, &(*l)->recv_mode, true);
    return t;
}

/*
 * Prepare stmt on l's connection, the first time a call needs it there.
 * Returns true when done; false with the failure in *res / *end / *err.
 */
static bool prepare_on(pgg_watchdog *wd, pgg_link *l, const pgg_stmt *stmt,
                       int64_t deadline, const char *host, PGresult **res,
                       pgg_attempt_end *end, pgg_error *err)
{
    pgg_query pq = {.sql = stmt->sql,
                    .nparams = stmt->nparams,
                    .types = stmt->types,
                    .stmt = stmt,
                    .stmt_name = stmt->name,
                    .prepare = true};

    pgg__link_exec_mode(wd, l->conn, &pq, deadline, 0, &l->recv_mode, host,
                        res, end, err);
    if (*end != PGG_END_RESULT || PQresultStatus(*res) != PGRES_COMMAND_OK)
        return false;
    PQclear(*res);
    *res = NULL;
    pgg__stmt_set_add(&l->stmts, stmt->index);
    return true;
}

/*
 * A registered statement on l, not prepared there yet: prepared first, then
 * run.  (One prepared there runs as any call, inline in exec_at.)
 */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void exec_registered(pgg_pool *pool, pgg_host *h, pgg_link *l,
                            const pgg_query *q, int64_t deadline,
                            PGresult **res, pgg_attempt_end *end,
                            pgg_error *err)
{
    if (!prepare_on(pool->watchdog, l, q->stmt, deadline, h->name, res, end,
                    err)) {
        /* The prepare's own failure (a syntax error, a lost connection)
         * is the call's outcome; the statement itself never ran, so a
         * lost connection counts as not sent. */
        if (*end == PGG_END_LOST)
            *end = PGG_END_NOT_SENT;
    } else if (pgg__now_ns() >= deadline) {
        /* The prepare used the time: do not send past the deadline. */
        *end = PGG_END_EXPIRED;
        pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                       "deadline exceeded while preparing \"%s\"; not sent",
                       q->stmt->name);
    } else {
        pgg__vis_exec(pool, h, l, q, deadline, res, end, err);
    }
}

/*
 * A session can lose what we prepared on it (DEALLOCATE ALL or DISCARD ALL
 * through a lease kept without reset, or a one-shot call): the server then
 * answers 26000 and runs nothing, so the statement is forgotten here,
 * prepared again and run once more within the deadline; otherwise every
 * later call on that connection would fail the same way.  Asked only of an
 * error answer.
 */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void registered_failed(pgg_pool *pool, pgg_host *h, pgg_link *l,
                              const pgg_query *q, int64_t deadline,
                              PGresult **res, pgg_attempt_end *end,
                              pgg_error *err)
{
    if (!pgg__link_statement_gone(*res))
        return;
    pgg__stmt_set_del(&l->stmts, q->stmt->index);
    PQclear(*res);
    *res = NULL;
    if (err)
        pgg__error_reset(err);
    exec_registered(pool, h, l, q, deadline, res, end, err);
}

/* How long a host whose attempt hit its deadline gets fresh reads last. */
#define SUSPECT_NS (1000 * PGG_NS_PER_MS)

/* The server sent an error with a SQLSTATE and the session is still open
 * and idle: it answered, and its state is intact. */
static bool session_survived(PGconn *conn, const PGresult *res)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    return st && st[0] && PQstatus(conn) == CONNECTION_OK &&
           PQtransactionStatus(conn) != PQTRANS_UNKNOWN;
}

/* The server ended the session: lost, found dead before sending, or
 * answered with a FATAL that closed it (57P01 from pg_terminate_backend or
 * a shutdown, 57P02 after a crash).  cls first: a successful call pays one
 * comparison. */
static inline bool session_ended(PGconn *conn, pgg_attempt_end end,
                          const PGresult *res, pgg_class cls)
{
    const char *st;

    if (cls != PGG_CLASS_CONNECTION && cls != PGG_CLASS_UNAVAILABLE)
        return false;
    if (end == PGG_END_LOST || end == PGG_END_NOT_SENT)
        return true;
    if (end != PGG_END_RESULT || !res)
        return false;
    st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return st && (strcmp(st, "57P01") == 0 || strcmp(st, "57P02") == 0) &&
           PQstatus(conn) != CONNECTION_OK;
}

void pgg__verdict_callers(pgg_verdict *v)
{
    v->cls = PGG_CLASS_SUCCESS;
    v->retry = false;
    v->reprobe_role = false;
    v->code = PGG_ESERVER;
}

void pgg__pool_reported_role(pgg_pool *pool, pgg_host *h, int role,
                             pgg_role reported, pgg_verdict *v)
{
    /* 25006 from a server that still says it is a primary: a read-only
     * transaction or setting of the caller's, not a demotion. */
    if (v->cls == PGG_CLASS_WRONG_ROLE && reported == PGG_ROLE_PRIMARY)
        pgg__verdict_callers(v);
    if (reported != PGG_ROLE_UNKNOWN && reported != (pgg_role)role) {
        pgg__pool_set_role(pool, h, reported, "reported by the server");
        /* Another host may still look primary: let the health thread
         * confirm every role now. */
        if (reported == PGG_ROLE_PRIMARY)
            pgg__pool_wake_health(pool);
    }
}

void pgg__pool_reprobe(pgg_pool *pool, pgg_host *h, const pgg_verdict *v)
{
    if (v->reprobe_role) {
        pgg__pool_set_role(pool, h, PGG_ROLE_STANDBY,
                           "a write was refused as read-only (25006)");
        pgg__pool_wake_health(pool);
    }
}

#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void settle(pgg_pool *pool, pgg_host *h,
                          const pgg_ticket *ticket, pgg_class rec,
                          bool ended_by_server, int64_t alive_at, int own,
                          int64_t started, int64_t ended)
{
    if (ticket)
        pgg__pool_record_at(h, ticket, rec, started, ended);
    /* A pooled session that died on us rarely died alone (a restart, a
     * failover, pg_terminate_backend of many): the server ended it after
     * alive_at (its last use, or its connect), and ended with it every
     * session there then.  Its idle siblings opened before alive_at go now,
     * before another call finds each of them dead the hard way; younger
     * ones only if their server says so already: a caller that reconnected
     * after the blip keeps its new session (closing it made that caller
     * wait for a replacement, 14 ms in the fault bench, while libpq's
     * wrote).  The health thread replaces those closed, and `own` more
     * (the ended session, when its caller does not take a new one at
     * once), before their callers come back, and looks at the other
     * hosts' idle sessions. */
    if (ended_by_server) {
        int wanted = pgg__host_drop_dead(h, ended, PGG_LOST_RECENT_NS,
                                         alive_at) + own;

        if (wanted > 0)
            atomic_fetch_add(&h->n_lost, wanted);
        pgg__host_look_until(h, ended + PGG_LOST_RECENT_NS);
        atomic_store(&h->ended_seen, true);
        pgg__pool_wake_health(pool);
    }
}

void pgg__pool_settle(pgg_pool *pool, pgg_host *h, const pgg_ticket *ticket,
                      pgg_class rec, bool ended_by_server, int64_t alive_at,
                      int64_t started, int64_t ended)
{
    settle(pool, h, ticket, rec, ended_by_server, alive_at, 0, started, ended);
}

void pgg__pool_session_ended(pgg_pool *pool, pgg_host *h, int64_t alive_at,
                             int64_t now)
{
    settle(pool, h, NULL, PGG_CLASS_IGNORED, true, alive_at, 0, now, now);
}

void pgg__pool_settle_error(pgg_host *h, pgg_verdict v, bool ignored,
                            pgg_error *err)
{
    if (err && v.code != PGG_OK)
        err->code = v.code;
    if (!ignored &&
        (pgg__host_failure(v.cls) || v.cls == PGG_CLASS_WRONG_ROLE))
        pgg__host_note_error(h, err);
}

/* exec_done past its usual case (pgg__pool_success_recorded said no):
 * ended is the attempt's end. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline pgg_verdict exec_judged(pgg_pool *pool, pgg_host *h,
                                      pgg_link **lp, pgg_intent intent,
                                      const pgg_ticket *ticket, int role,
                                      int64_t started, PGresult *res,
                                      ExecStatusType status,
                                      pgg_attempt_end end, bool over,
                                      int64_t ended, pgg_error *err)
{
    pgg_link *l = *lp;
    pgg_verdict v;
    bool ended_by_server, dead;

    if (end == PGG_END_RESULT && pgg__pool_status_ok(status)) {
        /* The common case, as the classifier judges it: no lookup. */
        v = (pgg_verdict){PGG_CLASS_SUCCESS, false, false, PGG_OK};
    } else {
        v = pgg__classify_result(&pool->cfg->classifier, end, res, intent,
                                 role == PGG_ROLE_STANDBY);
    }
    if (v.cls != PGG_CLASS_SUCCESS && pgg__cancel_now()) {
        /* The caller cancelled: the wait ended by its fire (or failed
         * after it), which says nothing of the host and is not retried.
         * A query in flight is abandoned below as at a deadline, with the
         * server-side cancel. */
        v.cls = PGG_CLASS_IGNORED;
        v.retry = false;
        v.reprobe_role = false;
        v.code = PGG_ECANCELED;
        pgg__error_set(err, PGG_ECANCELED, NULL, h->name,
                       end == PGG_END_DEADLINE
                           ? "call cancelled by the caller; connection "
                             "dropped and the query cancelled"
                           : "call cancelled by the caller");
    }
    if (v.cls == PGG_CLASS_CONNECTION && end == PGG_END_RESULT &&
        session_survived(l->conn, res))
        pgg__verdict_callers(&v);
    /* What the server reports after a query is current, but looking it up
     * walks a list: do it when it decides something (a refused write),
     * teaches something (a host of unknown role), or at most once per host
     * every PGG__ROLE_SEEN_NS otherwise, so that a promotion seen on any
     * session re-routes writes at once, without waiting for a health
     * probe; every answer while writes find no primary (pool_state.c,
     * seek_primary: the look is not marked done). */
    if (end == PGG_END_RESULT &&
        (v.cls == PGG_CLASS_WRONG_ROLE || role == PGG_ROLE_UNKNOWN ||
         ended - atomic_load_explicit(&h->role_seen_ns,
                                       memory_order_relaxed) >= PGG__ROLE_SEEN_NS)) {
        atomic_store_explicit(
            &h->role_seen_ns,
            ended < atomic_load_explicit(&h->seek_primary_until_ns,
                                         memory_order_relaxed)
                ? 0
                : ended,
            memory_order_relaxed);
        pgg__pool_reported_role(pool, h, role,
                                pgg__link_reported_role(l->conn), &v);
    }
    pgg__pool_reprobe(pool, h, &v);
    /* over: the server ended the session right behind its answer (the
     * answer stands, a success is one), as if it had ended it instead. */
    ended_by_server = over || session_ended(l->conn, end, res, v.cls);
    /* A pooled session found dead says nothing of the host (a terminated
     * backend, a restart since): ignored here, and the call tries a new
     * connection to the same host, whose outcome the breaker does hear.
     * A new one that dies does speak for the host. */
    dead = ended_by_server && !l->fresh && v.cls != PGG_CLASS_SUCCESS;
    /* The call tries a new session of this host itself only after a
     * pooled one found dead with its statement provably not run (call.c,
     * may_retry); a write that was sent is not retried, an answer stands:
     * their callers come back for a session within a period, and find its
     * replacement on its way (the fault bench's writers connected then,
     * behind every other client's reconnects). */
    settle(pool, h, ticket, dead ? PGG_CLASS_IGNORED : v.cls,
           ended_by_server, l->last_used_ns,
           !(dead && (intent != PGG_WRITE || end == PGG_END_NOT_SENT)),
           started, ended);
    /* An ignored outcome that is an answer of the host (health.c, the
     * silence rule); not one it never spoke in (a cancel, a deadline). */
    if (end == PGG_END_RESULT && (dead || v.cls == PGG_CLASS_IGNORED))
        atomic_fetch_add_explicit(&h->ignored_answers, 1,
                                  memory_order_relaxed);
    if (end == PGG_END_DEADLINE) {
        /* Fresh reads go elsewhere first for a while (or until this host
         * answers one), rather than into the same wait again; not after a
         * cancel, which says nothing of the host. */
        if (v.code != PGG_ECANCELED) {
            atomic_store_explicit(&h->suspect_until_ns, ended + SUSPECT_NS,
                                  memory_order_relaxed);
            /* A new session's connect was answered: the silence began
             * after it, somewhere inside the attempt. */
            pgg__pool_note_silent(pool, h, l->fresh ? ended : started);
        }
        /* The session is in an unknown state: it never comes back. */
        pgg__host_abandon(h, l, pool->canceller);
        *lp = NULL;
    } else if (end == PGG_END_REFUSED) {
        pgg__host_discard(h, l);
        *lp = NULL;
    }
    pgg__pool_settle_error(h, v, dead, err);
    return v;
}

#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline pgg_verdict exec_done(pgg_pool *pool, pgg_host *h,
                                    pgg_link **lp, pgg_intent intent,
                                    const pgg_ticket *ticket, int role,
                                    int64_t started, PGresult *res,
                                    ExecStatusType status,
                                    pgg_attempt_end end, bool over,
                                    int64_t *ended, pgg_error *err)
{
    *ended = pgg__now_ns();
    if (pgg__pool_success_recorded(h, ticket, role, started, status, end,
                                   over, *ended))
        return (pgg_verdict){PGG_CLASS_SUCCESS, false, false, PGG_OK};
    return exec_judged(pool, h, lp, intent, ticket, role, started, res,
                       status, end, over, *ended, err);
}

/* pgg__pool_exec_on, with now a clock reading taken after the connection
 * was taken (take_at's), for the first wait's backstop (0: none), and one_shot
 * for a one-shot call's attempt (pgg__autoprep_begin). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline pgg_verdict exec_at(pgg_pool *pool, pgg_host *h, pgg_link **lp,
                                  pgg_intent intent, const pgg_query *q,
                                  int64_t deadline, const pgg_ticket *ticket,
                                  int64_t started, int64_t now, bool one_shot,
                                  PGresult **res, pgg_attempt_end *end,
                                  int64_t *ended, pgg_error *err)
{
    pgg_link *l = *lp;
    int role = atomic_load_explicit(&h->role, memory_order_relaxed);
    bool over;
    pgg_verdict v;
    ExecStatusType status;

    /* The notice receiver notes a FATAL parsed behind the answer (a
     * terminated backend, idle once it answered): PQstatus stays OK, and
     * the next borrow may not look at the session before sending on it. */
    pgg__link_unprompted_arm();
    if (q->stmt && !pgg__stmt_set_has(&l->stmts, q->stmt->index)) {
        exec_registered(pool, h, l, q, deadline, res, end, err);
        status = PQresultStatus(*res); /* read for a result only */
    } else {
        /* What runs: q, or q by the name auto_prepare gave it (named);
         * NULL when auto_prepare's own round trips ended the call. */
        const pgg_query *run = q;
        pgg_query named;
        bool cached = false;

        if (!q->stmt && pgg__autoprep_wants(q) && pool->cfg->auto_prepare > 0)
            run = pgg__autoprep_begin(pool, h, l, q, &named, deadline, &now,
                                      one_shot, &cached, res, end, err);
        if (!run) {
            status = PQresultStatus(*res); /* read for a result only */
        } else if (!q->vis) {
            /* Nothing to learn or check about positions: the plain exec,
             * whose first wait takes our reading of the clock, and which
             * asked the result's status already. */
            pgg__link_exec_inline(pool->watchdog, l->conn, run, deadline,
                                  now, &l->recv_mode, h->name, res, end, err,
                                  &status);
        } else {
            pgg__vis_exec(pool, h, l, run, deadline, res, end, err);
            status = PQresultStatus(*res); /* read for a result only */
        }
        /* A statement by name may be gone from the session: an error
         * answer only (the status, as asked already, tells it). */
        if (status == PGRES_FATAL_ERROR && *end == PGG_END_RESULT &&
            (q->stmt || cached)) {
            if (q->stmt)
                registered_failed(pool, h, l, q, deadline, res, end, err);
            else
                pgg__autoprep_failed(pool, h, l, q, run->stmt_name, deadline,
                                     res, end, err);
            status = PQresultStatus(*res); /* read for a result only */
        }
    }
    /* Read, not cleared: every reader arms it first (link.h). */
    over = pgg__link_unprompted_seen;
    v = exec_done(pool, h, lp, intent, ticket, role, started, *res, status,
                  *end, over, ended, err);
    /* The answer stands; the session is never lent again (its give-back
     * discards it), its idle siblings went in exec_done. */
    if (over && *lp)
        (*lp)->ended = true;
    return v;
}

pgg_verdict pgg__pool_exec_on(pgg_pool *pool, pgg_host *h, pgg_link **lp,
                              pgg_intent intent, const pgg_query *q,
                              int64_t deadline, const pgg_ticket *ticket,
                              int64_t started, PGresult **res,
                              pgg_attempt_end *end, int64_t *ended,
                              pgg_error *err)
{
    /* A session over behind its answer stays the caller's until its
     * give-back (a lease's next statement finds the end). */
    return exec_at(pool, h, lp, intent, q, deadline, ticket, started, 0,
                   false, res, end, ended, err);
}

pgg_attempt_made pgg__pool_attempt(pgg_pool *pool, pgg_host *h,
                                   pgg_intent intent, const pgg_query *q,
                                   int64_t deadline, int64_t now,
                                   pgg_error *err, pgg_attempt *a)
{
    int64_t started = now;
    pgg_ticket ticket;
    pgg_link *l;
    bool rejected = false;

    a->res = NULL;
    switch (take_at(pool, h, intent, deadline, &now, &l, &ticket, &rejected,
                    err)) {
    case PGG_TAKE_SKIPPED: /* *a is not read */
        return rejected ? PGG_ATTEMPT_REFUSED : PGG_ATTEMPT_SKIPPED;
    case PGG_TAKE_FAILED:
        a->ended = 0;
        a->reused = false;
        a->lost = false;
        a->end = PGG_END_CONNECT_FAILED;
        a->v = pgg__classify_connect(&pool->cfg->classifier, err->sqlstate);
        return PGG_ATTEMPT_MADE;
    case PGG_TAKE_OK:
        break;
    }
    a->reused = !l->fresh;
    a->v = exec_at(pool, h, &l, intent, q, deadline, &ticket, started, now,
                   true, &a->res, &a->end, &a->ended, err);
    /* Read only after a failure: a success is served whatever it says. */
    a->lost = !l || (a->v.cls != PGG_CLASS_SUCCESS &&
                     PQstatus(l->conn) != CONNECTION_OK);
    if (!l)
        return PGG_ATTEMPT_MADE;
    if (l->ended) {
        /* Its answer came with the server's end of the session right
         * behind it: not lent again. */
        pgg__host_discard(h, l);
        return PGG_ATTEMPT_MADE;
    }
    /* A pooled connection was reusable when it came back last, and only
     * the read-your-writes exec may change its modes (pipeline) during a
     * call; a new one's modes are the on_connect hook's: ask them all. */
    if (q->vis || !a->reused)
        pgg__host_give_back(h, l, a->ended);
    else
        pgg__host_give_back_call(h, l, a->ended);
    return PGG_ATTEMPT_MADE;
}

pgg_verdict pgg__pool_exec_judge(pgg_pool *pool, pgg_host *h, pgg_link **lp,
                                 pgg_intent intent, const pgg_ticket *ticket,
                                 int role, int64_t started, PGresult *res,
                                 ExecStatusType status, pgg_attempt_end end,
                                 int64_t ended, pgg_error *err)
{
    /* The loop reads the notice receiver's note itself (async.c). */
    return exec_judged(pool, h, lp, intent, ticket, role, started, res,
                       status, end, false, ended, err);
}
