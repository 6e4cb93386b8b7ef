/*
 * A lease: one pooled connection borrowed for a transaction or a session,
 * holding a bulkhead slot until it is released.  Every statement through
 * it is bounded and classified like a one-shot call, but never retried
 * elsewhere: the session is the point.
 */
#include "lease.h"

#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "autoprep.h"
#include "error.h"
#include "pool.h"
#include "sample.h"
#include "trace.h"

/* The lease fields took their room from reserved_: the layout is 0.1's. */
_Static_assert(offsetof(pgg_stats, reserved_) + sizeof(((pgg_stats *)0)->reserved_) ==
                   offsetof(pgg_stats, cache_entries) + sizeof(uint64_t) + 64,
               "pgg_stats changed size");

struct pgg_lease {
    pgg_pool *pool;
    pgg_host *h;
    pgg_link *l;
    pgg_intent intent;
    bool broken;
    bool listener;    /* pgg_lease_notify was used: LISTEN registrations */
    bool have_ticket; /* the acquisition's ticket, for the first statement */
    pgg_ticket ticket;
    int64_t ticket_at;
    uint64_t lsn; /* position of its last commit seen; 0 none */

    /* In the pool's registry (guarded by its mu) while out. */
    struct pgg_lease *next, *prev;
    int64_t acquired_ns;
    bool leak_reported;
    /* The pool was freed with this lease out: pool and h are gone, only
     * pgg_release (which frees it) means anything now. */
    atomic_bool orphaned;
    /* A write lease under read_your_writes=pool that did what pgguard
     * could not follow (a COPY, raw use of its PGconn): its position is
     * learnt when it is released. */
    bool unsettled;
};

/* ------------------------------------------------------------ registry */

void pgg__leases_init(pgg_pool *pool)
{
    pthread_mutex_init(&pool->leases.mu, NULL);
    pool->leases.head = NULL;
    pool->leases.count = 0;
    atomic_init(&pool->leases.leaks, 0);
}

void pgg__leases_destroy(pgg_pool *pool)
{
    pthread_mutex_destroy(&pool->leases.mu);
}

static void registry_add(pgg_pool *pool, pgg_lease *lease, int64_t now)
{
    pgg_lease_registry *r = &pool->leases;

    lease->acquired_ns = now;
    lease->leak_reported = false;
    atomic_init(&lease->orphaned, false);
    pthread_mutex_lock(&r->mu);
    lease->prev = NULL;
    lease->next = r->head;
    if (r->head)
        r->head->prev = lease;
    r->head = lease;
    r->count++;
    pthread_mutex_unlock(&r->mu);
}

static void registry_remove(pgg_lease_registry *r, pgg_lease *lease)
{
    if (lease->prev)
        lease->prev->next = lease->next;
    else
        r->head = lease->next;
    if (lease->next)
        lease->next->prev = lease->prev;
    lease->next = lease->prev = NULL;
    r->count--;
}

static int held_ms(const pgg_lease *lease, int64_t now)
{
    int64_t ms = (now - lease->acquired_ns) / PGG_NS_PER_MS;

    return ms > INT_MAX ? INT_MAX : ms < 0 ? 0 : (int)ms;
}

static void emit_leak(pgg_pool *pool, int host_index, const char *host, int held,
                      const char *reason)
{
    pgg_event ev = {0};
    int64_t limit = pool->cfg->lease_leak_ms;

    ev.type = PGG_EVENT_LEASE_LEAK;
    ev.host_index = host_index;
    ev.host = host;
    ev.from = held;
    ev.to = limit > INT_MAX ? INT_MAX : (int)limit;
    ev.reason = reason;
    pgg__pool_emit(pool, &ev);
}

void pgg__leases_check(pgg_pool *pool, int64_t now)
{
    /* Reported outside the lock, a batch per round: a listener may call
     * into the pool, even acquire or release. */
    enum { BATCH = 32 };
    struct {
        int host_index;
        const char *host;
        int held;
    } found[BATCH];
    int n = 0;
    int64_t limit_ns = pgg__ms_to_ns(pool->cfg->lease_leak_ms);
    pgg_lease_registry *r = &pool->leases;

    if (limit_ns <= 0)
        return;
    pthread_mutex_lock(&r->mu);
    for (pgg_lease *l = r->head; l && n < BATCH; l = l->next) {
        if (l->leak_reported || now - l->acquired_ns < limit_ns)
            continue;
        l->leak_reported = true;
        found[n].host_index = l->h->index;
        found[n].host = l->h->name; /* the host outlives every lease */
        found[n].held = held_ms(l, now);
        n++;
    }
    atomic_fetch_add(&r->leaks, (uint_fast64_t)n);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < n; i++)
        emit_leak(pool, found[i].host_index, found[i].host, found[i].held,
                  "a lease was held longer than lease_leak_ms");
}

void pgg__leases_stats(pgg_pool *pool, pgg_stats *out)
{
    pgg_lease_registry *r = &pool->leases;
    int64_t now = pgg__now_ns(), oldest = now;

    pthread_mutex_lock(&r->mu);
    out->leases_out = r->count;
    for (pgg_lease *l = r->head; l; l = l->next)
        if (l->acquired_ns < oldest)
            oldest = l->acquired_ns;
    pthread_mutex_unlock(&r->mu);
    out->lease_oldest_ms = (now - oldest) / PGG_NS_PER_MS;
    out->lease_leaks = atomic_load(&r->leaks);
}

/*
 * pgg_pool_free with leases out: a defined outcome instead of a lease
 * pointing into freed memory.  Each is reported, its connection closed and
 * its bulkhead slot returned (the hosts and the bulkhead must balance when
 * they are destroyed), and it is marked an orphan for pgg_release to free.
 */
void pgg__leases_orphan(pgg_pool *pool)
{
    pgg_lease_registry *r = &pool->leases;
    int64_t now = pgg__now_ns();

    for (;;) {
        pgg_lease *l;
        int host_index, held;
        const char *host;

        pthread_mutex_lock(&r->mu);
        l = r->head;
        if (l)
            registry_remove(r, l);
        pthread_mutex_unlock(&r->mu);
        if (!l)
            break;
        host_index = l->h->index;
        host = l->h->name;
        held = held_ms(l, now);
        if (l->l)
            pgg__host_discard(l->h, l->l);
        l->l = NULL;
        pgg__bulkhead_leave(&pool->bulkhead);
        l->pool = NULL;
        l->h = NULL;
        atomic_store(&l->orphaned, true);
        emit_leak(pool, host_index, host, held,
                  "the pool was freed with the lease still out");
    }
}

static bool orphaned(const pgg_lease *lease)
{
    return atomic_load(&lease->orphaned);
}

static int orphan_error(pgg_error *err, const char *fn)
{
    return pgg__error_set(err, PGG_ECLOSED, NULL, NULL,
                          "%s: the pool was freed with this lease out; "
                          "release it",
                          fn);
}

pgg_lease *pgg_acquire(pgg_pool *pool, pgg_intent intent, int timeout_ms,
                       pgg_info *info, pgg_error *err)
{
    pgg_call call = {.timeout_ms = timeout_ms};

    return pgg_acquire_call(pool, intent, &call, info, err);
}

pgg_lease *pgg_acquire_call(pgg_pool *pool, pgg_intent intent,
                            const pgg_call *call, pgg_info *info,
                            pgg_error *err)
{
    int timeout_ms = call ? call->timeout_ms : 0;
    pgg_error local;
    int cand[PGG_MAX_HOSTS];
    int ncand, attempts = 0;
    bool rejected = false;
    int64_t start, now, deadline;
    pgg_lease *lease;
    pgg_vis_req vr;

    if (!err)
        err = &local;
    pgg__error_reset(err);
    if (info) {
        memset(info, 0, sizeof *info);
        info->host_index = -1;
    }
    if (!pool || (unsigned)intent > PGG_READ_PRIMARY) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                       "pgg_acquire: NULL pool or unknown intent");
        return NULL;
    }
    if (atomic_load(&pool->closed)) {
        pgg__error_set(err, PGG_ECLOSED, NULL, NULL, "pool closed");
        return NULL;
    }
    lease = calloc(1, sizeof *lease);
    if (!lease) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    start = pgg__now_ns();
    deadline = start + pgg__pool_timeout_ns(pool, timeout_ms);
    now = start; /* the lease's later steps read the clock afresh */
    if (pgg__pool_enter(pool, &now, deadline, err) != PGG_OK) {
        free(lease);
        return NULL;
    }

    ncand = pgg__pool_candidates(pool, intent, cand);
    /* A read lease under read_your_writes=pool: a standby known to have
     * the pool's latest write, or one that gets there in time, or the
     * primary (no statement yet to check a standby's position with). */
    if (pgg__vis_begin_lease(pool->vis, intent, call, &vr) && vr.sample)
        pgg__vis_sample(pool, &vr, deadline, pgg__sample_primary, err);
    if (vr.need)
        ncand = pgg__vis_order(pool, &vr, false, cand, ncand);
pass:
    for (int i = 0; i < ncand; i++) {
        pgg_host *h = &pool->hosts[cand[i]];
        pgg_take t;

        if (pgg__now_ns() >= deadline) {
            pgg__error_set(err, PGG_ETIMEDOUT, NULL, NULL,
                           "deadline exceeded before a connection was ready");
            break;
        }
        t = pgg__pool_take(pool, h, intent, deadline, pgg__now_ns(), &lease->l,
                           &lease->ticket, &rejected, err);
        if (t == PGG_TAKE_SKIPPED)
            continue;
        attempts++;
        if (t == PGG_TAKE_FAILED)
            continue; /* nothing was sent: another host may take it */
        lease->pool = pool;
        lease->h = h;
        lease->intent = intent;
        lease->have_ticket = true;
        lease->ticket_at = pgg__now_ns();
        registry_add(pool, lease, lease->ticket_at);
        pgg__error_reset(err);
        if (info) {
            pgg__strlcpy(info->host, h->name, sizeof info->host);
            info->host_index = h->index;
            info->attempts = attempts;
            info->elapsed_us = (pgg__now_ns() - start) / 1000;
            info->lsn_wait_us = vr.wait_ns / 1000;
        }
        return lease;
    }
    if (vr.need && err->code != PGG_ETIMEDOUT) {
        int n2 = pgg__vis_retry(pool, &vr, deadline, intent, false, cand, err);

        if (n2 > 0) {
            ncand = n2;
            goto pass;
        }
    }
    if (attempts == 0 &&
        (err->code == PGG_OK ||
         (rejected && err->code != PGG_ETIMEDOUT && err->code != PGG_ECLOSED)))
        pgg__pool_no_host_error(pool, intent, rejected ? ncand : 0, err);
    pgg__bulkhead_leave(&pool->bulkhead);
    atomic_fetch_add(&pool->calls_failed, 1);
    if (info) {
        info->attempts = attempts;
        info->elapsed_us = (pgg__now_ns() - start) / 1000;
    }
    free(lease);
    return NULL;
}

/* One statement through the lease: bounded, classified, recorded.  info
 * (may be NULL, as for an untraced pool) gets what a tracer is told. */
static PGresult *lease_run_call(pgg_lease *lease, const pgg_query *q,
                                int timeout_ms, pgg_error *err,
                                pgg_info *info)
{
    pgg_vis_req vr;
    pgg_query qv;
    pgg_error local;
    pgg_ticket ticket;
    const pgg_ticket *tp = NULL;
    pgg_attempt_end end;
    pgg_verdict v;
    PGresult *res = NULL;
    int64_t start, deadline, ended;

    if (!err)
        err = &local;
    pgg__error_reset(err);
    if (!lease || !q->sql || q->nparams < 0) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                       "pgg_lease_exec: NULL lease or SQL");
        return NULL;
    }
    if (orphaned(lease)) {
        orphan_error(err, "pgg_lease_exec");
        return NULL;
    }
    if (pgg__query_check(q, "pgg_lease_exec", err) != PGG_OK)
        return NULL;
    if (lease->broken || !lease->l) {
        pgg__error_set(err, PGG_ECONNECT, NULL, lease->h->name,
                       "lease broken by an earlier connection failure or "
                       "timeout; release it");
        return NULL;
    }
    /* A write lease under read_your_writes=pool learns the position of
     * whatever ends a transaction, in the same round trip. */
    if (!q->vis &&
        pgg__vis_begin_lease(lease->pool->vis, lease->intent, NULL, &vr) &&
        vr.want_lsn) {
        if (pgg__vis_is_copy(q->sql)) {
            /* The caller feeds it on the raw connection: no pipeline. */
            lease->unsettled = true;
        } else {
            qv = *q;
            qv.vis = &vr;
            q = &qv;
        }
    }
    start = pgg__now_ns();
    deadline = start + pgg__pool_timeout_ns(lease->pool, timeout_ms);
    if (lease->have_ticket) {
        ticket = lease->ticket;
        tp = &ticket;
        lease->have_ticket = false;
    } else if (pgg__breaker_allow(&lease->h->breaker, start, &ticket)) {
        tp = &ticket;
    }
    /* Refused by an open breaker: the statement still runs (stopping a
     * transaction halfway helps nobody), it just does not count. */

    v = pgg__pool_exec_on(lease->pool, lease->h, &lease->l, lease->intent, q,
                          deadline, tp, start, &res, &end, &ended, err);
    if (info) {
        pgg__strlcpy(info->host, lease->h->name, sizeof info->host);
        info->host_index = lease->h->index;
        info->attempts = 1;
        info->sent = end != PGG_END_NOT_SENT && end != PGG_END_EXPIRED &&
                     end != PGG_END_REFUSED;
        info->elapsed_us = (ended - start) / 1000;
    }
    /* read_your_writes=sampled counts it, whatever it did. */
    if (lease->intent == PGG_WRITE)
        pgg__vis_wrote(lease->pool->vis);
    if (q->vis && q->vis->lsn && end == PGG_END_RESULT) {
        lease->lsn = q->vis->lsn;
        pgg__vis_note_write(lease->pool->vis, q->vis->lsn);
    }
    if (end != PGG_END_RESULT || !lease->l ||
        PQstatus(lease->l->conn) != CONNECTION_OK) {
        lease->broken = true;
        PQclear(res);
        return NULL;
    }
    if (pgg__host_failure(v.cls) || v.cls == PGG_CLASS_WRONG_ROLE) {
        /* The server answered, with a failure of the host (57P01 on its
         * way down, 53300...): hand the caller the error record. */
        PQclear(res);
        return NULL;
    }
    return res;
}

static PGresult *lease_run(pgg_lease *lease, const pgg_query *q,
                           int timeout_ms, pgg_error *err)
{
    pgg_info info;
    pgg_error local;
    pgg_trace t;
    void *span;
    PGresult *res;

    if (!lease || orphaned(lease) || !lease->pool->traced)
        return lease_run_call(lease, q, timeout_ms, err, NULL);
    if (!err)
        err = &local;
    memset(&info, 0, sizeof info);
    t = (pgg_trace){.kind = PGG_TRACE_LEASE,
                    .intent = lease->intent,
                    .sql = q->sql ? q->sql : "",
                    .stmt_name = q->stmt_name};
    span = pgg__trace_begin(lease->pool, &t);
    res = lease_run_call(lease, q, timeout_ms, err, &info);
    pgg__trace_finish(lease->pool, &t, span, &info, err);
    return res;
}

PGresult *pgg_lease_exec_params(pgg_lease *lease, const char *sql, int nparams,
                                const Oid *types, const char *const *values,
                                const int *lengths, const int *formats,
                                int result_format, int timeout_ms,
                                pgg_error *err)
{
    pgg_query q = {.sql = sql,
                   .nparams = nparams,
                   .types = types,
                   .values = values,
                   .lengths = lengths,
                   .formats = formats,
                   .result_format = result_format};

    return lease_run(lease, &q, timeout_ms, err);
}

PGresult *pgg_lease_exec_prepared(pgg_lease *lease, const char *name,
                                  int nparams, const char *const *values,
                                  const int *lengths, const int *formats,
                                  int result_format, int timeout_ms,
                                  pgg_error *err)
{
    const pgg_stmt *stmt;

    if (lease && orphaned(lease)) {
        orphan_error(err, "pgg_lease_exec_prepared");
        return NULL;
    }
    stmt = lease && name ? pgg__prepared_find(&lease->pool->prepared, name) : NULL;
    if (!stmt) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                       "pgg_lease_exec_prepared: no lease, or no statement "
                       "\"%.63s\" (pgg_pool_prepare it first)",
                       name ? name : "");
        return NULL;
    }
    return lease_run(lease,
                     &(pgg_query){.sql = stmt->sql,
                                  .nparams = nparams,
                                  .values = values,
                                  .lengths = lengths,
                                  .formats = formats,
                                  .result_format = result_format,
                                  .stmt = stmt,
                                  .stmt_name = stmt->name},
                     timeout_ms, err);
}

PGresult *pgg_lease_exec(pgg_lease *lease, const char *sql, int timeout_ms,
                         pgg_error *err)
{
    return pgg_lease_exec_params(lease, sql, 0, NULL, NULL, NULL, NULL, 0,
                                 timeout_ms, err);
}

int pgg_lease_commit(pgg_lease *lease, int timeout_ms, uint64_t *lsn,
                     pgg_error *err)
{
    pgg_vis_req vr = {.want_lsn = true, .in_lease = true};
    pgg_query q = {.sql = "COMMIT", .vis = &vr};
    pgg_error local;
    PGresult *res;
    int rc = PGG_OK;

    if (!err)
        err = &local;
    if (lsn)
        *lsn = 0;
    if (!lease)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_lease_commit: NULL lease");
    if (lease->l && !lease->broken &&
        PQtransactionStatus(lease->l->conn) == PQTRANS_IDLE)
        return pgg__error_set(err, PGG_ESTATE, NULL, lease->h->name,
                              "pgg_lease_commit: no transaction open");
    res = lease_run(lease, &q, timeout_ms, err);
    if (!res)
        return err->code ? err->code : PGG_ECONNECT;
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = err->code ? err->code : PGG_ESERVER;
    else if (strcmp(PQcmdStatus(res), "COMMIT") != 0)
        rc = pgg__error_set(err, PGG_ESTATE, NULL, lease->h->name,
                            "pgg_lease_commit: the transaction had failed "
                            "and was rolled back");
    else if (lsn)
        *lsn = vr.lsn;
    PQclear(res);
    return rc;
}

uint64_t pgg_lease_lsn(const pgg_lease *lease)
{
    return lease ? lease->lsn : 0;
}

pgg_link *pgg__lease_link(pgg_lease *lease)
{
    return lease ? lease->l : NULL;
}

int pgg__lease_use(pgg_lease *lease, const char *fn, int timeout_ms, PGconn **conn,
                   const char **host, int64_t *deadline, pgg_error *err)
{
    pgg__error_reset(err);
    if (!lease)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL, "%s: NULL lease", fn);
    if (orphaned(lease))
        return orphan_error(err, fn);
    if (lease->broken || !lease->l)
        return pgg__error_set(err, PGG_ECONNECT, NULL, lease->h->name,
                              "%s: lease broken by an earlier connection "
                              "failure or timeout; release it",
                              fn);
    /* In a transaction is fine (BEGIN; COPY ...; COMMIT); a command still
     * running, or a mode pgguard did not leave it in, is not. */
    if (PQstatus(lease->l->conn) != CONNECTION_OK) {
        lease->broken = true;
        return pgg__error_set(err, PGG_ECONNECT, NULL, lease->h->name,
                              "%s: the lease's session is gone", fn);
    }
    if (PQisBusy(lease->l->conn) ||
        PQtransactionStatus(lease->l->conn) == PQTRANS_ACTIVE ||
        !PQisnonblocking(lease->l->conn) ||
        PQpipelineStatus(lease->l->conn) != PQ_PIPELINE_OFF)
        return pgg__error_set(err, PGG_ESTATE, NULL, lease->h->name,
                              "%s: the lease's connection is busy (a raw "
                              "use of pgg_lease_conn left a command "
                              "running)",
                              fn);
    *conn = lease->l->conn;
    *host = lease->h->name;
    *deadline = pgg__now_ns() + pgg__pool_timeout_ns(lease->pool, timeout_ms);
    return PGG_OK;
}

void pgg__lease_mark_listener(pgg_lease *lease)
{
    lease->listener = true;
}

void pgg__lease_mark_unsettled(pgg_lease *lease)
{
    lease->unsettled = lease->unsettled || lease->intent == PGG_WRITE;
}

void pgg__lease_fail(pgg_lease *lease, bool abandon)
{
    lease->broken = true;
    if (abandon && lease->l) {
        pgg__host_abandon(lease->h, lease->l, lease->pool->canceller);
        lease->l = NULL;
    }
}

PGconn *pgg_lease_conn(pgg_lease *lease)
{
    if (!lease || !lease->l)
        return NULL;
    lease->unsettled = lease->unsettled || lease->intent == PGG_WRITE;
    return lease->l->conn;
}

const char *pgg_lease_host(const pgg_lease *lease)
{
    return lease && !orphaned(lease) && lease->h ? lease->h->name : "";
}

/*
 * What a lease did to its session (SET ROLE, search_path, temporary
 * tables, its own prepared statements, a DISCARD ALL of its own) must not
 * reach the next borrower: DISCARD ALL before the connection is pooled
 * again (lease_reset), bounded like a connect.  Returns false when the
 * connection must not be pooled.  A connection in a transaction is not
 * pooled anyway.
 */
static bool reset_session(pgg_lease *lease)
{
    static const pgg_query discard = {.sql = "DISCARD ALL"};
    pgg_link *l = lease->l;
    PGresult *res = NULL;
    pgg_attempt_end end;
    bool ok;

    if (!lease->pool->cfg->lease_reset || !pgg__link_reusable(l->conn))
        return true; /* give_back decides on its own checks */
    pgg__link_exec(l->conn, &discard,
                   pgg__now_ns() + lease->h->connect_timeout_ns, lease->h->name,
                   &res, &end, NULL);
    ok = end == PGG_END_RESULT && PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (end == PGG_END_DEADLINE) {
        pgg__host_abandon(lease->h, l, lease->pool->canceller);
        lease->l = NULL;
        return true;
    }
    /* DISCARD ALL deallocated every prepared statement, the pool's too;
     * the caller may have replaced the notice processor. */
    memset(&l->stmts, 0, sizeof l->stmts);
    l->vis_prepared = 0;
    pgg__autoprep_clear(l->autoprep);
    pgg__link_silence(l->conn);
    /* DISCARD ALL ran UNLISTEN *; what libpq already queued for this
     * lease is not the next borrower's. */
    for (PGnotify *n; (n = PQnotifies(l->conn)) != NULL;)
        PQfreemem(n);
    /* ... and what the on-connect hook set up: set it up again, or the
     * connection is not pooled. */
    if (ok) {
        bool host_fault;
        int rc = pgg__host_on_connect(lease->h, l->conn,
                                      pgg__now_ns() + lease->h->connect_timeout_ns,
                                      &host_fault, NULL);

        if (rc == PGG_ETIMEDOUT) {
            /* its statement may still run: closed and cancelled */
            pgg__host_abandon(lease->h, l, lease->pool->canceller);
            lease->l = NULL;
            return true;
        }
        ok = rc == PGG_OK;
    }
    return ok;
}

void pgg_release(pgg_lease *lease)
{
    if (!lease)
        return;
    if (orphaned(lease)) {
        free(lease);
        return;
    }
    pthread_mutex_lock(&lease->pool->leases.mu);
    registry_remove(&lease->pool->leases, lease);
    pthread_mutex_unlock(&lease->pool->leases.mu);
    if (lease->have_ticket)
        pgg__pool_record(lease->pool, lease->h, lease->ticket,
                         PGG_CLASS_IGNORED, lease->ticket_at, pgg__now_ns());
    if (lease->l && lease->unsettled && !lease->broken) {
        pgg_vis_req vr;

        if (pgg__vis_begin_lease(lease->pool->vis, lease->intent, NULL, &vr) &&
            vr.want_lsn) {
            uint64_t lsn = pgg__vis_learn(
                lease->pool->vis, lease->l->conn,
                pgg__now_ns() + lease->h->connect_timeout_ns, lease->h->name);
            if (lsn)
                lease->lsn = lsn;
        }
    }
    /* Raw use of its PGconn too. */
    if (lease->intent == PGG_WRITE)
        pgg__vis_wrote(lease->pool->vis);
    if (lease->l) {
        /* Without lease_reset nothing runs UNLISTEN *: a listener's session
         * would send its notifications to whoever borrows it next. */
        if (lease->broken || (lease->listener && !lease->pool->cfg->lease_reset) ||
            !reset_session(lease))
            pgg__host_discard(lease->h, lease->l);
        else
            /* checks idle + healthy */
            pgg__host_give_back(lease->h, lease->l, pgg__now_ns());
    }
    pgg__bulkhead_leave(&lease->pool->bulkhead);
    free(lease);
}
