/*
 * A one-shot call under auto_prepare (autoprep_exec.h): through its
 * connection's statement cache (autoprep.c), plain, by name, or prepared
 * first; the exec between the two halves is the attempt's own (pool.c),
 * inline.  Apart from the cache because it runs on the pool (its watchdog,
 * its config, read-your-writes' exec) while the cache belongs to each
 * connection, below the host that frees it.
 */
#include "autoprep_exec.h"

#include <stdio.h>
#include <string.h>

#include "autoprep.h"
#include "clock.h"
#include "error.h"
#include "link.h"
#include "visibility.h"

static const char *sqlstate_of(const PGresult *res)
{
    if (!res || PQresultStatus(res) != PGRES_FATAL_ERROR)
        return NULL;
    return PQresultErrorField(res, PG_DIAG_SQLSTATE);
}

/* The statement may be gone, or unusable, and the call never started. */
static bool run_again_plain(const PGresult *res, bool *all_gone)
{
    const char *st = sqlstate_of(res), *msg;

    if (!st)
        return false;
    if (strcmp(st, "26000") == 0) {
        *all_gone = true;
        return true;
    }
    msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    return strcmp(st, "0A000") == 0 && msg &&
           strstr(msg, "cached plan must not change result type") != NULL;
}

/* One statement of ours that needs no answer but "done": PREPARE or
 * DEALLOCATE.  Returns true when it was done; else the call's outcome is
 * in *res / *end / *err (a server error as it would have come, a lost
 * connection as not sent). */
static bool side_step(pgg_pool *pool, pgg_host *h, pgg_link *l, const pgg_query *sq,
                      bool any_answer, int64_t deadline, PGresult **res,
                      pgg_attempt_end *end, pgg_error *err)
{
    pgg__link_exec_mode(pool->watchdog, l->conn, sq, deadline, 0, &l->recv_mode,
                        h->name, res, end, err);
    /* any_answer (DEALLOCATE): the server answered; a statement already
     * gone is as good as deallocated. */
    if (*end == PGG_END_RESULT &&
        (any_answer || PQresultStatus(*res) == PGRES_COMMAND_OK)) {
        PQclear(*res);
        *res = NULL;
        if (err)
            pgg__error_reset(err);
        return true;
    }
    /* The call's statement itself never ran. */
    if (*end == PGG_END_LOST)
        *end = PGG_END_NOT_SENT;
    return false;
}

/*
 * The call's statement prepared under its name and run by it in one round
 * trip: Parse, then Bind and Execute, under one Sync (pipeline mode).  A
 * PREPARE of its own (side_step) cost each connection's second call one
 * round trip more than a plain client's, and that call comes when the
 * connections are new: after a fault, on a server still busy with every
 * client's reconnects, where a round trip waits for the backend to be
 * scheduled (tests/bench/faults, max-connections, 72 rounds: the call
 * after each writer's first success was longer than its libpq twin's in 42
 * of 58 pairs, 196 against 134 ms in all, up to 20 ms longer, which in one
 * lost round made the first write 32 ms against libpq's 11; the calls
 * after it were as long as libpq's; in one round trip, 24 of 43).
 * The statement runs only if the Parse succeeded (an error aborts the rest
 * of a pipeline up to its Sync): *prepared says so, and *res holds the
 * statement's answer, or the Parse's error (the statement never started).
 * The waits are the exec's (pgg__link_wait_under: the watchdog, the cancel
 * token, the recv mode's rules), the answers all come at the Sync.  False,
 * with nothing sent, when the connection cannot enter pipeline mode: the
 * caller prepares in a round trip of its own.
 */
static bool prepare_and_run(pgg_pool *pool, pgg_host *h, pgg_link *l,
                            const pgg_query *q, const pgg_query *pq,
                            int64_t deadline, int64_t now, bool *prepared,
                            PGresult **res, pgg_attempt_end *end, pgg_error *err)
{
    PGconn *conn = l->conn;
    PGresult *ran = NULL, *sync = NULL;
    ExecStatusType st;

    *prepared = false;
    *res = NULL;
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF || !PQenterPipelineMode(conn))
        return false;
    /* Sized as q plain (its SQL and values), which is the same messages
     * but for the statement's name twice (pgg_auto_<n>): within the 192
     * bytes between PGG_LINK_QUERY_SMALL and libpq's 8192. */
    pgg__link_mode_for_send(conn, q, &l->recv_mode);
    if (!PQsendPrepare(conn, pq->stmt_name, q->sql, q->nparams, pq->types) ||
        !PQsendQueryPrepared(conn, pq->stmt_name, q->nparams, q->values, q->lengths,
                             q->formats, q->result_format) ||
        !PQpipelineSync(conn)) {
        /* Nothing committed: an extended-protocol statement commits only
         * at its Sync, and a dead connection rolls back what it ran.  A
         * pipeline left open is not pooled again (pgg__link_reusable). */
        (void)PQexitPipelineMode(conn);
        pgg__link_lost(conn, res, NULL, end, PGG_END_NOT_SENT, h->name, err);
        return true;
    }
    if (pgg__link_wait_under(pool->watchdog, conn, deadline, now, true, &l->recv_mode,
                             h->name, res, end, err, &st) != PGG_OK)
        return true; /* lost (the statement may have run) or the deadline */
    *prepared = st == PGRES_COMMAND_OK;
    /* The server closed with a FATAL (shutting down, terminated) for an
     * answer: the statement never ran, and that is the call's outcome, as
     * for a plain exec. */
    if (!*prepared && PQstatus(conn) == CONNECTION_BAD)
        return true;
    /* The statement's answer (PGRES_PIPELINE_ABORTED after a failed
     * Parse), then the Sync's, unless a FATAL closed the session with the
     * statement's. */
    if (pgg__link_wait_under(pool->watchdog, conn, deadline, 0, false, &l->recv_mode,
                             h->name, &ran, end, err, &st) != PGG_OK ||
        (PQstatus(conn) != CONNECTION_BAD &&
         pgg__link_wait_under(pool->watchdog, conn, deadline, 0, false, &l->recv_mode,
                              h->name, &sync, end, err, &st) != PGG_OK)) {
        PQclear(*res);
        *res = NULL;
        PQclear(ran);
        *prepared = false;
        return true;
    }
    PQclear(sync);
    /* Fails only with something still pending: then the connection is
     * not pooled again (pgg__link_reusable). */
    (void)PQexitPipelineMode(conn);
    if (*prepared) {
        PQclear(*res);
        *res = ran;
    } else {
        PQclear(ran);
    }
    return true;
}

const pgg_query *pgg__autoprep_begin_slow(pgg_pool *pool, pgg_host *h,
                                         pgg_link *l, const pgg_query *q,
                                         pgg_query *named, int64_t deadline,
                                         int64_t *now, bool *cached,
                                         PGresult **res, pgg_attempt_end *end,
                                         pgg_error *err)
{
    pgg_autoprep_step step;
    const char *name, *evict;

    *cached = false;
    /* In a transaction block (a lease's), a statement the server refuses
     * by name (26000, 0A000 after DDL) aborts the transaction, and running
     * it again plain would only fail with 25P02: there the call runs as
     * it is, as if auto_prepare were off. */
    if (PQtransactionStatus(l->conn) != PQTRANS_IDLE)
        return q;
    if (!l->autoprep)
        l->autoprep = pgg__autoprep_new(pool->cfg->auto_prepare);
    if (!l->autoprep)
        return q;
    /* The statement run last, again, is lookup's first question too. */
    step = pgg__autoprep_lookup(l->autoprep, q, pool->cfg->auto_prepare_after, &name,
                                &evict);
    if (evict) {
        char sql[64];
        pgg_query dq = {.sql = sql};

        *now = 0; /* a round trip of ours before the exec */
        snprintf(sql, sizeof sql, "DEALLOCATE %s", evict);
        if (!side_step(pool, h, l, &dq, true, deadline, res, end, err)) {
            pgg__autoprep_prepared(l->autoprep, false);
            return NULL;
        }
    }
    if (step == PGG_AUTOPREP_PLAIN)
        return q;
    if (step == PGG_AUTOPREP_PREPARE) {
        pgg_query pq = {.sql = q->sql,
                        .nparams = q->nparams,
                        .types = q->nparams > 0 ? q->types : NULL,
                        .stmt_name = name,
                        .prepare = true};
        bool ok = false, ran;
        const char *st;

        /* In the statement's own round trip; read-your-writes runs its
         * statement in a pipeline of its own (visibility.c), after a
         * PREPARE. */
        ran = !q->vis && prepare_and_run(pool, h, l, q, &pq, deadline, *now, &ok, res,
                                         end, err);
        if (!ran)
            ok = side_step(pool, h, l, &pq, false, deadline, res, end, err);
        st = ok || *end != PGG_END_RESULT ? NULL : sqlstate_of(*res);
        pgg__autoprep_prepared(l->autoprep, ok);
        if (st && strcmp(st, "42P05") == 0) {
            /* Our name exists already on this session: someone else's
             * statements share it (a pooler in transaction mode hands
             * us another server session per transaction).  Stop here on
             * this connection, and run the call as it is: it never
             * started. */
            pgg__autoprep_stop(l->autoprep);
            PQclear(*res);
            *res = NULL;
            if (err)
                pgg__error_reset(err);
            *now = 0;
            return q;
        }
        if (!ok || ran)
            return NULL;
        if ((*now = pgg__now_ns()) >= deadline) {
            *end = PGG_END_EXPIRED;
            pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                           "deadline exceeded while preparing the "
                           "statement (auto_prepare); not sent");
            return NULL;
        }
    }
    *cached = step == PGG_AUTOPREP_RUN;
    *named = *q;
    named->stmt_name = name;
    return named;
}

void pgg__autoprep_failed(pgg_pool *pool, pgg_host *h, pgg_link *l,
                          const pgg_query *q, const char *name, int64_t deadline,
                          PGresult **res, pgg_attempt_end *end, pgg_error *err)
{
    bool all_gone = false;

    if (!run_again_plain(*res, &all_gone))
        return;
    if (all_gone) {
        pgg__autoprep_all_gone(l->autoprep);
    } else {
        /* Only this one: let it be prepared afresh later. */
        char sql[64];
        pgg_query dq = {.sql = sql};

        snprintf(sql, sizeof sql, "DEALLOCATE %s", name);
        pgg__autoprep_forget_last(l->autoprep);
        PQclear(*res);
        *res = NULL;
        if (!side_step(pool, h, l, &dq, true, deadline, res, end, err))
            return;
    }
    PQclear(*res);
    *res = NULL;
    if (err)
        pgg__error_reset(err);
    pgg__vis_exec(pool, h, l, q, deadline, res, end, err);
}
