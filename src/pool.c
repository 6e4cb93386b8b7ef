/*
 * The public pool: the path of one call (docs/DESIGN.md), composed from the
 * bulkhead, the router, the breakers, the hosts' connection pools, the
 * bounded link and the classifier.
 */
#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "call.h"
#include "autoprep.h"
#include "cancel.h"
#include "error.h"
#include "health.h"
#include "tls.h"

/* The user and database every host is reached as: the conninfo's, or
 * libpq's defaults (PGUSER, PGDATABASE, the OS user), resolved as libpq
 * resolves them.  They belong in every cache key. */
static int resolve_identity(pgg_pool *pool, pgg_error *err)
{
    const pgg_host_spec *h = &pool->cfg->hosts[0];
    const char *user = NULL, *dbname = NULL;
    PQconninfoOption *defs = NULL;

    for (int i = 0; i < h->nparams; i++) {
        if (strcmp(h->keys[i], "user") == 0 && h->vals[i][0])
            user = h->vals[i];
        else if (strcmp(h->keys[i], "dbname") == 0 && h->vals[i][0])
            dbname = h->vals[i];
    }
    if (!user || !dbname) {
        defs = PQconndefaults();
        for (PQconninfoOption *o = defs; o && o->keyword; o++) {
            if (!user && strcmp(o->keyword, "user") == 0 && o->val)
                user = o->val;
            else if (!dbname && strcmp(o->keyword, "dbname") == 0 && o->val)
                dbname = o->val;
        }
    }
    if (!dbname)
        dbname = user; /* libpq's rule */
    pool->user = strdup(user ? user : "");
    pool->dbname = strdup(dbname ? dbname : "");
    PQconninfoFree(defs);
    if (!pool->user || !pool->dbname)
        return pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
    return PGG_OK;
}

/* ---------------------------------------------------------------- events */

void pgg__pool_emit(pgg_pool *pool, const pgg_event *ev)
{
    pgg_event_fn fn;
    void *ud;

    pthread_mutex_lock(&pool->ev_mu);
    fn = pool->ev_fn;
    ud = pool->ev_ud;
    pthread_mutex_unlock(&pool->ev_mu);
    if (fn)
        fn(ev, ud);
}

void pgg_pool_on_event(pgg_pool *pool, pgg_event_fn fn, void *userdata)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->ev_mu);
    pool->ev_fn = fn;
    pool->ev_ud = userdata;
    pthread_mutex_unlock(&pool->ev_mu);
}

void pgg__pool_set_role(pgg_pool *pool, pgg_host *h, pgg_role role,
                        const char *reason)
{
    int old = atomic_load(&h->role);
    pgg_event ev = {0};

    if (old == (int)role)
        return;
    if (!atomic_compare_exchange_strong(&h->role, &old, (int)role))
        return; /* someone else recorded a change first; theirs is as fresh */
    if (role == PGG_ROLE_PRIMARY)
        atomic_store(&h->lag_bytes, 0);
    ev.type = PGG_EVENT_ROLE;
    ev.host_index = h->index;
    ev.host = h->name;
    ev.from = old;
    ev.to = (int)role;
    ev.reason = reason;
    pgg__pool_emit(pool, &ev);
}

static void breaker_changed(void *ud, pgg_breaker_state from,
                            pgg_breaker_state to, pgg_breaker_reason reason)
{
    pgg_host_ref *ref = ud;
    pgg_host *h = &ref->pool->hosts[ref->index];
    pgg_event ev = {0};

    /* A host that just failed enough to open probably holds dead
     * connections; the next borrow would only rediscover that. */
    if (to == PGG_BREAKER_OPEN || to == PGG_BREAKER_FORCED_OPEN)
        pgg__host_trim(h, 0, true);
    /* An incident: the health thread probes fast until the host answers. */
    if (to == PGG_BREAKER_OPEN)
        pgg__health_wake(ref->pool->health);
    ev.type = PGG_EVENT_BREAKER;
    ev.host_index = h->index;
    ev.host = h->name;
    ev.from = (int)from;
    ev.to = (int)to;
    ev.reason = pgg__breaker_reason_name(reason);
    pgg__pool_emit(ref->pool, &ev);
}

/* --------------------------------------------------------------- create */

static int64_t ms_to_ns(int64_t ms)
{
    return pgg__ms_to_ns(ms);
}



/*
 * Free whatever part of a pool exists: pgg_pool_new's failures stop
 * halfway, pgg_pool_free comes at the end.  Order matters: the health
 * thread first (it uses everything), then hosts and the canceller (their
 * connections), then what only calls used.
 */
static void pool_destroy(pgg_pool *pool, int hosts_ready, bool bulkhead_ready)
{
    atomic_store(&pool->closed, true);
    pgg__health_stop(pool->health);
    pool->health = NULL; /* late breaker events wake nothing */
    pgg__leases_orphan(pool);
    for (int i = 0; i < hosts_ready; i++)
        pgg__host_close(&pool->hosts[i]);
    pgg__watchdog_free(pool->watchdog);
    pgg__pipes_free(pool->pipes);
    if (pool->cfg)
        pgg__canceller_free(pool->canceller,
                            ms_to_ns(pool->cfg->cancel_timeout_ms));
    for (int i = 0; i < hosts_ready; i++)
        pgg__host_destroy(&pool->hosts[i]);
    pgg__cache_free(pool->cache);
    pgg__vis_free(pool->vis);
    pgg__types_free(pool->types);
    if (bulkhead_ready) {
        /* No call may be in flight; should one still wait, it wakes with
         * PGG_ECLOSED rather than on freed memory. */
        pgg__bulkhead_close(&pool->bulkhead);
        pgg__bulkhead_destroy(&pool->bulkhead);
    }
    free(pool->user);
    free(pool->dbname);
    free(pool->hosts);
    free(pool->refs);
    pgg_config_free(pool->cfg);
    pgg__prepared_destroy(&pool->prepared);
    pthread_mutex_destroy(&pool->ev_mu);
    pgg__leases_destroy(pool);
    free(pool);
}

pgg_pool *pgg_pool_new(const pgg_config *cfg, pgg_error *err)
{
    pgg_pool *pool;
    pgg_host_limits limits;
    int hosts_ready = 0;
    bool bulkhead_ready = false;

    if (!cfg) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL, "pgg_pool_new: NULL config");
        return NULL;
    }
    if (pgg__config_validate(cfg, err) != PGG_OK)
        return NULL;
    pool = calloc(1, sizeof *pool);
    if (!pool) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&pool->ev_mu, NULL);
    pgg__leases_init(pool);
    pgg__prepared_init(&pool->prepared);
    pool->cfg = pgg__config_copy(cfg, err);
    if (!pool->cfg)
        goto fail;
    cfg = pool->cfg;
    pool->clock = pgg__clock_system();
    pool->nhosts = cfg->nhosts;
    pool->read_policy = cfg->read_policy;
    pool->traced = cfg->trace_start || cfg->trace_end;
    pool->trace_start = cfg->trace_start;
    pool->trace_end = cfg->trace_end;
    pool->trace_ud = cfg->trace_ud;
    pool->max_attempts = cfg->max_attempts;
    pool->attempt_timeout_ns = ms_to_ns(cfg->attempt_timeout_ms);
    pool->attempt_auto = cfg->attempt_timeout_auto;
    pool->call_timeout_ns = ms_to_ns(cfg->call_timeout_ms);
    pool->bulkhead_wait_ns = ms_to_ns(cfg->bulkhead_max_wait_ms);
    pool->max_lag_bytes = cfg->max_replica_lag_bytes;

    pool->hosts = calloc((size_t)pool->nhosts, sizeof *pool->hosts);
    pool->refs = calloc((size_t)pool->nhosts, sizeof *pool->refs);
    if (!pool->hosts || !pool->refs) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        goto fail;
    }
    limits.max = cfg->pool_max;
    limits.min_idle = cfg->pool_min_idle;
    limits.idle_timeout_ns = ms_to_ns(cfg->idle_timeout_ms);
    limits.max_lifetime_ns = ms_to_ns(cfg->max_lifetime_ms);
    limits.validate_ns = ms_to_ns(cfg->validate_after_idle_ms);
    limits.alive_check_ns = ms_to_ns(cfg->alive_check_after_idle_ms);
    limits.connect_timeout_ns = ms_to_ns(cfg->connect_timeout_ms);
    limits.on_connect = &cfg->on_connect;
    limits.canceller = &pool->canceller;
    for (; hosts_ready < pool->nhosts; hosts_ready++) {
        int i = hosts_ready;
        const pgg_host_spec *spec = &cfg->hosts[i];

        if (pgg__host_init(&pool->hosts[i], i, spec->name,
                           (const char *const *)spec->keys,
                           (const char *const *)spec->vals, &limits,
                           &cfg->breaker, pool->clock, err) != PGG_OK)
            goto fail;
        pool->refs[i].pool = pool;
        pool->refs[i].index = i;
        pgg__breaker_listen(&pool->hosts[i].breaker, breaker_changed,
                            &pool->refs[i]);
    }
    if (pgg__bulkhead_init(&pool->bulkhead, cfg->bulkhead_max_concurrent,
                           pool->clock, err) != PGG_OK)
        goto fail;
    bulkhead_ready = true;
    /* cancel_timeout_ms = 0: abandoned queries are not cancelled at all. */
    if (cfg->cancel_timeout_ms > 0) {
        pool->canceller = pgg__canceller_new(
            pool->nhosts, 8, ms_to_ns(cfg->cancel_timeout_ms), err);
        if (!pool->canceller)
            goto fail;
    }
#if PGG_HAVE_LIBPQTYPES
    pool->types = pgg__types_new(err);
    if (!pool->types)
        goto fail;
    atomic_init(&pool->types_on, cfg->types_enabled);
#endif
    if (cfg->cache_enabled) {
        if (resolve_identity(pool, err) != PGG_OK)
            goto fail;
        pool->cache = pgg__cache_new(cfg->cache_max_bytes,
                                     ms_to_ns(cfg->cache_max_age_ms), err);
        if (!pool->cache)
            goto fail;
    }
    pool->watchdog = pgg__watchdog_new(PGG_WATCHDOG_TICK_NS, err);
    if (!pool->watchdog)
        goto fail;
    if (cfg->pipeline) {
        pool->pipes = pgg__pipes_new(pool->nhosts, cfg->pipeline_connections,
                                     ms_to_ns(cfg->pipeline_stall_ms), err);
        if (!pool->pipes)
            goto fail;
    }
    pool->ryw_off = cfg->ryw_mode == PGG_RYW_OFF;
    pool->vis = pgg__vis_new(pool->nhosts, cfg->ryw_mode, cfg->ryw_max_wait_ms,
                             cfg->ryw_poll_ms, err);
    if (!pool->vis)
        goto fail;
    pool->health = pgg__health_start(pool, err);
    if (!pool->health)
        goto fail;
    return pool;

fail:
    pool_destroy(pool, hosts_ready, bulkhead_ready);
    return NULL;
}

void pgg_pool_free(pgg_pool *pool)
{
    if (pool)
        pool_destroy(pool, pool->nhosts, true);
}

/* ------------------------------------------------------------- routing */

/* Ties between equally good hosts rotate per thread: a shared counter
 * would bounce one cache line between every core on every call, for no
 * better spread. */
static PGG_TLS unsigned route_rotate;

int pgg__pool_candidates_of(pgg_pool *pool, pgg_intent intent, int *out)
{
    pgg_route_host snap[PGG_MAX_HOSTS];

    for (int i = 0; i < pool->nhosts; i++) {
        pgg_host *h = &pool->hosts[i];

        snap[i].role = (pgg_role)atomic_load(&h->role);
        snap[i].state = pgg__breaker_state(&h->breaker);
        snap[i].lag_ok = pgg__pool_lag_ok(pool, h);
        snap[i].busy = pgg__host_busy(h);
    }
    return pgg__route(intent, pool->read_policy, snap, pool->nhosts,
                      route_rotate++, out);
}

/* pgg__pool_record, inlined into the path of every call. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void record(pgg_host *h, const pgg_ticket *ticket,
                          pgg_class cls, int64_t started_ns, int64_t now)
{
    pgg_outcome o;

    switch (cls) {
    case PGG_CLASS_SUCCESS: {
        int64_t avg = atomic_load_explicit(&h->latency_ns, memory_order_relaxed);

        atomic_fetch_add(&h->successes, 1);
        o = PGG_OUTCOME_SUCCESS;
        /* An average over about eight attempts: cheap, and quick to follow
         * a host that slows down. */
        atomic_store_explicit(&h->latency_ns,
                              avg + (now - started_ns - avg) / 8,
                              memory_order_relaxed);
        if (atomic_load_explicit(&h->suspect_until_ns, memory_order_relaxed))
            atomic_store_explicit(&h->suspect_until_ns, 0,
                                  memory_order_relaxed);
        break;
    }
    case PGG_CLASS_IGNORED:
        atomic_fetch_add(&h->ignored, 1);
        o = PGG_OUTCOME_IGNORED;
        break;
    default:
        atomic_fetch_add(&h->failures[cls], 1);
        o = PGG_OUTCOME_FAILURE;
        break;
    }
    pgg__breaker_record(&h->breaker, *ticket, o, now - started_ns, now);
}

void pgg__pool_record(pgg_pool *pool, pgg_host *h, pgg_ticket ticket,
                      pgg_class cls, int64_t started_ns, int64_t now)
{
    (void)pool;
    record(h, &ticket, cls, started_ns, now);
}

/* ------------------------------------------------------------ one call */

int pgg__query_check_params(const pgg_query *q, const char *fn,
                            pgg_error *err)
{
    if (q->nparams < 0 || q->nparams > PGG_MAX_PARAMS)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "%s: %d parameters (0..%d)", fn, q->nparams,
                              PGG_MAX_PARAMS);
    if (!q->values || !q->formats)
        return PGG_OK;
    for (int i = 0; i < q->nparams; i++) {
        if (q->values[i] && q->formats[i] != 0 &&
            (!q->lengths || q->lengths[i] < 0))
            return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                                  "%s: binary parameter $%d needs a length "
                                  "(lengths[%d] >= 0)",
                                  fn, i + 1, i);
    }
    return PGG_OK;
}

/* The error for "every candidate refused". */
int pgg__pool_no_host_error(pgg_pool *pool, pgg_intent intent, int ncand,
                            pgg_error *err)
{
    if (ncand == 0 && intent != PGG_READ) {
        /* No primary known: the health thread looks now, not in a second. */
        pgg__health_wake(pool->health);
        return pgg__error_set(err, PGG_ENOPRIMARY, NULL, NULL,
                              "no primary among %d host%s (none reports "
                              "itself primary and none is of unknown role)",
                              pool->nhosts, pool->nhosts == 1 ? "" : "s");
    }
    if (ncand == 0)
        return pgg__error_set(err, PGG_EOPEN, NULL, NULL,
                              "no eligible host for a read among %d (roles, "
                              "lag and read_policy exclude them all)",
                              pool->nhosts);
    /* Every breaker open: demand is waiting, so the health thread probes
     * now; a host that answers lets trial calls in at once. */
    pgg__health_wake(pool->health);
    return pgg__error_set(err, PGG_EOPEN, NULL, NULL,
                          "no eligible host: the circuit breaker of every "
                          "candidate (%d) is open",
                          ncand);
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
                      pgg_intent intent)
{
    pgg_role r;

    if (!l->fresh &&
        (intent == PGG_READ ||
         atomic_load_explicit(&h->role, memory_order_relaxed) !=
             PGG_ROLE_UNKNOWN))
        return true;
    r = pgg__link_reported_role(l->conn);
    if (r != PGG_ROLE_UNKNOWN)
        pgg__pool_set_role(pool, h, r, "reported by the server");
    return intent == PGG_READ || r != PGG_ROLE_STANDBY;
}


pgg_take pgg__pool_take_failed(pgg_pool *pool, pgg_host *h, pgg_ticket ticket,
                               int64_t start, pgg_borrow_fail why,
                               pgg_error *err)
{
    int64_t now = pgg__now_ns();
    pgg_verdict v;

    if (why != PGG_BORROW_CONNECT) {
        pgg__pool_record(pool, h, ticket, PGG_CLASS_IGNORED, start, now);
        return PGG_TAKE_SKIPPED;
    }
    if (pgg__cancel_now()) {
        /* Our own doing, not the host's. */
        pgg__pool_record(pool, h, ticket, PGG_CLASS_IGNORED, start, now);
        pgg__error_set(err, PGG_ECANCELED, NULL, h->name,
                       "call cancelled by the caller while connecting; "
                       "not sent");
        return PGG_TAKE_SKIPPED;
    }
    /* A refusal at startup carries its SQLSTATE: too many clients is the
     * host's, a wrong password the caller's (classify.h). */
    v = pgg__classify_connect(&pool->cfg->classifier,
                              err ? err->sqlstate : NULL);
    if (err && err->sqlstate[0])
        err->code = v.code;
    pgg__pool_record(pool, h, ticket, v.cls, start, now);
    if (pgg__host_failure(v.cls)) {
        pgg__host_note_error(h, err);
        pgg__health_wake(pool->health);
    }
    return PGG_TAKE_FAILED;
}

static inline pgg_take taken(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                             pgg_link **l, pgg_ticket ticket, int64_t start)
{
    if (!role_fits(pool, h, *l, intent)) {
        int64_t now = pgg__now_ns();

        pgg__host_give_back(h, *l, now);
        *l = NULL;
        pgg__pool_record(pool, h, ticket, PGG_CLASS_IGNORED, start, now);
        return PGG_TAKE_SKIPPED;
    }
    return PGG_TAKE_OK;
}

pgg_take pgg__pool_taken(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                         pgg_link **l, pgg_ticket ticket, int64_t start)
{
    return taken(pool, h, intent, l, ticket, start);
}

/* pgg__host_await_back's wake: host.c knows nothing of the health thread. */
static void wake_health(void *health)
{
    pgg__health_wake(health);
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
                                          wake_health, pool->health)) {
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
    if (taken(pool, h, intent, l, *ticket, start) != PGG_TAKE_OK)
        return PGG_TAKE_SKIPPED;
#if PGG_HAVE_LIBPQTYPES
    if (atomic_load_explicit(&pool->types_on, memory_order_relaxed)) {
        if (pgg__types_prepare(pool->types, *l, deadline, h->name, err) != PGG_OK)
            return pgg__pool_types_failed(pool, h, l, *ticket, start, err);
        *now = pgg__now_ns();
        return pgg__pool_types_ready(pool, h, l, *ticket, start, deadline,
                                     *now, err);
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
    return take_at(pool, h, intent, deadline, &now, l, ticket, rejected, err);
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

    pgg__link_exec_wd(wd, l->conn, &pq, deadline, host, res, end, err);
    if (*end != PGG_END_RESULT || PQresultStatus(*res) != PGRES_COMMAND_OK)
        return false;
    PQclear(*res);
    *res = NULL;
    pgg__stmt_set_add(&l->stmts, stmt->index);
    return true;
}

/*
 * A registered statement on l: prepared there first if it is not yet.  A
 * session can lose what we prepared on it (DEALLOCATE ALL or DISCARD ALL
 * through a lease kept without reset, or a one-shot call): the server then
 * answers 26000 and runs nothing, so the statement is forgotten here,
 * prepared again and run once more within the deadline; otherwise every
 * later call on that connection would fail the same way.
 */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void exec_registered(pgg_pool *pool, pgg_host *h, pgg_link *l,
                            const pgg_query *q, int64_t deadline,
                            PGresult **res, pgg_attempt_end *end,
                            pgg_error *err)
{
    bool again = pgg__stmt_set_has(&l->stmts, q->stmt->index);

    if (again) {
        pgg__vis_exec(pool, h, l, q, deadline, res, end, err);
        if (*end != PGG_END_RESULT || !pgg__link_statement_gone(*res))
            return;
        pgg__stmt_set_del(&l->stmts, q->stmt->index);
        PQclear(*res);
        *res = NULL;
        if (err)
            pgg__error_reset(err);
    }
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

/* How often an answer's in_hot_standby is looked up per host. */
#define ROLE_SEEN_NS (5 * PGG_NS_PER_MS)
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
            pgg__health_wake(pool->health);
    }
}

void pgg__pool_reprobe(pgg_pool *pool, pgg_host *h, const pgg_verdict *v)
{
    if (v->reprobe_role) {
        pgg__pool_set_role(pool, h, PGG_ROLE_STANDBY,
                           "a write was refused as read-only (25006)");
        pgg__health_wake(pool->health);
    }
}

#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void settle(pgg_pool *pool, pgg_host *h,
                          const pgg_ticket *ticket, pgg_class rec,
                          bool ended_by_server, int64_t started,
                          int64_t ended)
{
    if (ticket)
        record(h, ticket, rec, started, ended);
    /* A pooled session that died on us rarely died alone (a restart, a
     * failover, pg_terminate_backend of many): its idle siblings go now,
     * before another call finds each of them dead the hard way, and the
     * health thread replaces them before their callers come back (and
     * looks at the other hosts' idle sessions). */
    if (ended_by_server) {
        int wanted = pgg__host_drop_idle(h, ended, PGG_LOST_RECENT_NS);

        if (wanted > 0)
            atomic_fetch_add(&h->n_lost, wanted);
        atomic_store(&h->ended_seen, true);
        pgg__health_wake(pool->health);
    }
}

void pgg__pool_settle(pgg_pool *pool, pgg_host *h, const pgg_ticket *ticket,
                      pgg_class rec, bool ended_by_server, int64_t started,
                      int64_t ended)
{
    settle(pool, h, ticket, rec, ended_by_server, started, ended);
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

/* A result that is no error (classify.c: always a success).  NULL (a lost
 * connection) reads as PGRES_FATAL_ERROR. */
static inline bool ok_status(ExecStatusType s)
{
    return s != PGRES_FATAL_ERROR && s != PGRES_BAD_RESPONSE &&
           s != PGRES_NONFATAL_ERROR;
}

#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline pgg_verdict exec_done(pgg_pool *pool, pgg_host *h,
                                    pgg_link **lp, pgg_intent intent,
                                    const pgg_ticket *ticket, int role,
                                    int64_t started, PGresult *res,
                                    pgg_attempt_end end, int64_t *ended,
                                    pgg_error *err)
{
    pgg_link *l = *lp;
    pgg_verdict v;
    bool ended_by_server, dead;

    *ended = pgg__now_ns();
    if (end == PGG_END_RESULT && ok_status(PQresultStatus(res)))
        /* The common case, as the classifier judges it: no lookup. */
        v = (pgg_verdict){PGG_CLASS_SUCCESS, false, false, PGG_OK};
    else
        v = pgg__classify_result(&pool->cfg->classifier, end, res, intent,
                                 role == PGG_ROLE_STANDBY);
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
     * every ROLE_SEEN_NS otherwise, so that a promotion seen on any session
     * re-routes writes at once, without waiting for a health probe. */
    if (end == PGG_END_RESULT &&
        (v.cls == PGG_CLASS_WRONG_ROLE || role == PGG_ROLE_UNKNOWN ||
         *ended - atomic_load_explicit(&h->role_seen_ns,
                                       memory_order_relaxed) >= ROLE_SEEN_NS)) {
        atomic_store_explicit(&h->role_seen_ns, *ended, memory_order_relaxed);
        pgg__pool_reported_role(pool, h, role,
                                pgg__link_reported_role(l->conn), &v);
    }
    pgg__pool_reprobe(pool, h, &v);
    ended_by_server = session_ended(l->conn, end, res, v.cls);
    /* A pooled session found dead says nothing of the host (a terminated
     * backend, a restart since): ignored here, and the call tries a new
     * connection to the same host, whose outcome the breaker does hear.
     * A new one that dies does speak for the host. */
    dead = ended_by_server && !l->fresh;
    settle(pool, h, ticket, dead ? PGG_CLASS_IGNORED : v.cls,
           ended_by_server, started, *ended);
    if (end == PGG_END_DEADLINE) {
        /* Fresh reads go elsewhere first for a while (or until this host
         * answers one), rather than into the same wait again; not after a
         * cancel, which says nothing of the host. */
        if (v.code != PGG_ECANCELED)
            atomic_store_explicit(&h->suspect_until_ns, *ended + SUSPECT_NS,
                                  memory_order_relaxed);
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

/* pgg__pool_exec_on, with now a clock reading taken after the connection
 * was taken (take_at's), for the first wait's backstop (0: none). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline pgg_verdict exec_at(pgg_pool *pool, pgg_host *h, pgg_link **lp,
                                  pgg_intent intent, const pgg_query *q,
                                  int64_t deadline, const pgg_ticket *ticket,
                                  int64_t started, int64_t now,
                                  PGresult **res, pgg_attempt_end *end,
                                  int64_t *ended, pgg_error *err)
{
    pgg_link *l = *lp;
    int role = atomic_load_explicit(&h->role, memory_order_relaxed);

    if (q->stmt) {
        exec_registered(pool, h, l, q, deadline, res, end, err);
    } else if (pgg__autoprep_wants(q) && pool->cfg->auto_prepare > 0) {
        pgg__autoprep_exec(pool, h, l, q, deadline, res, end, err);
    } else if (!q->vis) {
        /* Nothing to learn or check about positions: the plain exec,
         * whose first wait takes our reading of the clock. */
        pgg__link_exec_at(pool->watchdog, l->conn, q, deadline, now, h->name,
                          res, end, err);
    } else {
        pgg__vis_exec(pool, h, l, q, deadline, res, end, err);
    }
    return exec_done(pool, h, lp, intent, ticket, role, started, *res, *end,
                     ended, err);
}

pgg_verdict pgg__pool_exec_on(pgg_pool *pool, pgg_host *h, pgg_link **lp,
                              pgg_intent intent, const pgg_query *q,
                              int64_t deadline, const pgg_ticket *ticket,
                              int64_t started, PGresult **res,
                              pgg_attempt_end *end, int64_t *ended,
                              pgg_error *err)
{
    return exec_at(pool, h, lp, intent, q, deadline, ticket, started, 0, res,
                   end, ended, err);
}

bool pgg__pool_attempt(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                       const pgg_query *q, int64_t deadline, int64_t now,
                       bool *rejected, pgg_error *err, pgg_attempt *a)
{
    int64_t started = now;
    pgg_ticket ticket;
    pgg_link *l;

    a->res = NULL;
    a->ended = 0;
    a->reused = false;
    a->lost = false;
    switch (take_at(pool, h, intent, deadline, &now, &l, &ticket, rejected,
                    err)) {
    case PGG_TAKE_SKIPPED:
        return false;
    case PGG_TAKE_FAILED:
        a->end = PGG_END_CONNECT_FAILED;
        a->v = pgg__classify_connect(&pool->cfg->classifier, err->sqlstate);
        return true;
    case PGG_TAKE_OK:
        break;
    }
    a->reused = !l->fresh;
    a->v = exec_at(pool, h, &l, intent, q, deadline, &ticket, started, now,
                   &a->res, &a->end, &a->ended, err);
    /* Read only after a failure: a success is served whatever it says. */
    a->lost = !l || (a->v.cls != PGG_CLASS_SUCCESS &&
                     PQstatus(l->conn) != CONNECTION_OK);
    if (!l)
        return true;
    /* A pooled connection was reusable when it came back last, and only
     * the read-your-writes exec may change its modes (pipeline) during a
     * call; a new one's modes are the on_connect hook's: ask them all. */
    if (q->vis || !a->reused)
        pgg__host_give_back(h, l, a->ended);
    else
        pgg__host_give_back_call(h, l, a->ended);
    return true;
}

pgg_verdict pgg__pool_exec_done(pgg_pool *pool, pgg_host *h, pgg_link **lp,
                                pgg_intent intent, const pgg_ticket *ticket,
                                int role, int64_t started, PGresult *res,
                                pgg_attempt_end end, int64_t *ended,
                                pgg_error *err)
{
    return exec_done(pool, h, lp, intent, ticket, role, started, res, end,
                     ended, err);
}

int pgg__pool_enter_refused(pgg_pool *pool, pgg_error *err)
{
    atomic_fetch_add(&pool->calls_failed, 1);
    return pgg__error_set(err, PGG_EBULKHEAD, NULL, NULL,
                          "bulkhead full: %d calls in flight",
                          pgg__bulkhead_capacity(&pool->bulkhead));
}

/* A call with a cancel handle: refused at once when it is already fired,
 * else run with the handle current on this thread (cancel.h).  Kept out of
 * line so that a call without one reaches pgg__call_run by a tail call. */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static PGresult *run_cancellable(pgg_pool *pool, pgg_intent intent,
                                 const pgg_query *q, const pgg_call *call,
                                 pgg_info *info, pgg_error *err)
{
    pgg_cancel *c = call->cancel, *prev;
    PGresult *res;

    if (pgg__cancel_fired(c)) {
        pgg__info_reset(info);
        pgg__call_cancelled(err);
        atomic_fetch_add(&pool->calls_failed, 1);
        return NULL;
    }
    prev = pgg__cancel_enter(c, pool->watchdog);
    res = pgg__call_run(pool, intent, q, call, info, err, c);
    pgg__cancel_leave(c, prev);
    return res;
}

static PGresult *run_guarded(pgg_pool *pool, pgg_intent intent,
                             const pgg_query *q, const pgg_call *call,
                             pgg_info *info, pgg_error *err)
{
    if (call && call->cancel && pool)
        return run_cancellable(pool, intent, q, call, info, err);
    return pgg__call_run(pool, intent, q, call, info, err, NULL);
}

#if defined(__GNUC__)
__attribute__((noinline))
#endif
static PGresult *run_traced(pgg_pool *pool, pgg_intent intent,
                            const pgg_query *q, const pgg_call *call,
                            pgg_info *info, pgg_error *err)
{
    pgg_info local_info;
    pgg_error local_err;
    pgg_trace t = {.kind = q->stmt ? PGG_TRACE_PREPARED : PGG_TRACE_EXEC,
                   .intent = intent,
                   .sql = q->sql ? q->sql : "",
                   .stmt_name = q->stmt ? q->stmt->name : NULL};
    void *span;
    PGresult *res;

    if (!info)
        info = &local_info;
    if (!err)
        err = &local_err;
    span = pgg__trace_begin(pool, &t);
    res = run_guarded(pool, intent, q, call, info, err);
    pgg__trace_finish(pool, &t, span, info, err);
    return res;
}

static PGresult *run(pgg_pool *pool, pgg_intent intent, const pgg_query *q,
                     const pgg_call *call, pgg_info *info, pgg_error *err)
{
    if (pool && pool->traced)
        return run_traced(pool, intent, q, call, info, err);
    return run_guarded(pool, intent, q, call, info, err);
}

PGresult *pgg_exec(pgg_pool *pool, pgg_intent intent, const char *sql,
                   const pgg_call *call, pgg_info *info, pgg_error *err)
{
    pgg_query q = {.sql = sql, .result_format = call ? call->result_format : 0};
    return run(pool, intent, &q, call, info, err);
}

PGresult *pgg_exec_params(pgg_pool *pool, pgg_intent intent, const char *sql,
                          int nparams, const Oid *types,
                          const char *const *values, const int *lengths,
                          const int *formats, const pgg_call *call,
                          pgg_info *info, pgg_error *err)
{
    pgg_query q = {.sql = sql,
                   .nparams = nparams,
                   .types = types,
                   .values = values,
                   .lengths = lengths,
                   .formats = formats,
                   .result_format = call ? call->result_format : 0};

    if (nparams < 0 || (nparams > 0 && !values && !types)) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                       "pgg_exec_params: %d parameters but no values",
                       nparams);
        pgg__info_reset(info);
        return NULL;
    }
    /* Parameters force the extended protocol even when there are none. */
    if (q.nparams == 0 && !q.types)
        q.types = (const Oid *)"";
    return run(pool, intent, &q, call, info, err);
}

int pgg_pool_prepare(pgg_pool *pool, const char *name, const char *sql,
                     int nparams, const Oid *types, pgg_error *err)
{
    if (!pool)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_pool_prepare: NULL pool");
    return pgg__prepared_add(&pool->prepared, name, sql, nparams, types, err);
}

int pgg__pool_prepared_query(pgg_pool *pool, const char *fn,
                             const char *name, int nparams,
                             const char *const *values, const int *lengths,
                             const int *formats, const pgg_call *call,
                             pgg_query *q, pgg_error *err)
{
    const pgg_stmt *stmt = pgg__prepared_find(&pool->prepared, name);

    if (!stmt)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "%s: no statement \"%.63s\" "
                              "(pgg_pool_prepare it first)",
                              fn, name);
    *q = (pgg_query){.sql = stmt->sql,
                     .nparams = nparams,
                     .values = values,
                     .lengths = lengths,
                     .formats = formats,
                     .result_format = call ? call->result_format : 0,
                     .stmt = stmt,
                     .stmt_name = stmt->name};
    return PGG_OK;
}

PGresult *pgg_exec_prepared(pgg_pool *pool, pgg_intent intent,
                            const char *name, int nparams,
                            const char *const *values, const int *lengths,
                            const int *formats, const pgg_call *call,
                            pgg_info *info, pgg_error *err)
{
    pgg_query q;

    if (!pool || !name || nparams < 0) {
        pgg__info_reset(info);
        pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                       "pgg_exec_prepared: NULL pool or name");
        return NULL;
    }
    if (pgg__pool_prepared_query(pool, "pgg_exec_prepared", name, nparams,
                                 values, lengths, formats, call, &q,
                                 err) != PGG_OK) {
        pgg__info_reset(info);
        return NULL;
    }
    return run(pool, intent, &q, call, info, err);
}

/* ----------------------------------------------------------- control */

static pgg_host *host_at(pgg_pool *pool, int index)
{
    if (!pool || index < 0 || index >= pool->nhosts)
        return NULL;
    return &pool->hosts[index];
}

/* Operator control: one breaker verb on one host. */
static int control(pgg_pool *pool, int index,
                   void (*verb)(pgg_breaker *b, int64_t now))
{
    pgg_host *h = host_at(pool, index);

    if (!h)
        return PGG_EINVAL;
    verb(&h->breaker, pgg__now_ns());
    return PGG_OK;
}

int pgg_pool_force_open(pgg_pool *pool, int index)
{
    return control(pool, index, pgg__breaker_force_open);
}

int pgg_pool_disable_breaker(pgg_pool *pool, int index)
{
    return control(pool, index, pgg__breaker_disable);
}

int pgg_pool_reset_breaker(pgg_pool *pool, int index)
{
    return control(pool, index, pgg__breaker_reset);
}

int pgg_pool_resize_bulkhead(pgg_pool *pool, int capacity)
{
    if (!pool || capacity < 1)
        return PGG_EINVAL;
    return pgg__bulkhead_resize(&pool->bulkhead, capacity);
}

/* ------------------------------------------------------------- stats */

int pgg_pool_host_count(const pgg_pool *pool)
{
    return pool ? pool->nhosts : 0;
}

int pgg_pool_host_stats(pgg_pool *pool, int index, pgg_host_stats *out)
{
    pgg_host *h = host_at(pool, index);
    pgg_host_counts c;
    pgg_breaker_stats bs;

    if (!h || !out)
        return PGG_EINVAL;
    memset(out, 0, sizeof *out);
    pgg__strlcpy(out->host, h->name, sizeof out->host);
    out->role = (pgg_role)atomic_load(&h->role);
    out->lag_bytes = atomic_load(&h->lag_bytes);
    pgg__host_counts(h, &c);
    out->conns_open = c.open;
    out->conns_idle = c.idle;
    out->conns_busy = c.busy;
    out->successes = atomic_load(&h->successes);
    out->ignored = atomic_load(&h->ignored);
    out->calls = out->successes + out->ignored;
    for (int i = 0; i < PGG_CLASS__COUNT; i++) {
        out->failures[i] = atomic_load(&h->failures[i]);
        out->calls += out->failures[i];
    }
    out->rejections = atomic_load(&h->rejections);
    out->connects = atomic_load(&h->connects);
    out->connect_failures = atomic_load(&h->connect_failures);
    pgg__breaker_stats(&h->breaker, pgg__now_ns(), &bs);
    out->state = bs.state;
    out->failure_rate = bs.failure_rate;
    out->open_remaining_ms = bs.open_remaining_ns / PGG_NS_PER_MS;
    out->slow_call_rate = bs.slow_call_rate;
    pthread_mutex_lock(&h->mu);
    out->last_error_code = h->last_error_code;
    pgg__strlcpy(out->last_error, h->last_error, sizeof out->last_error);
    pthread_mutex_unlock(&h->mu);
    return PGG_OK;
}

int pgg_pool_stats(pgg_pool *pool, pgg_stats *out)
{
    pgg_bulkhead_counts bc;

    if (!pool || !out)
        return PGG_EINVAL;
    memset(out, 0, sizeof *out);
    out->hosts = pool->nhosts;
    pgg__bulkhead_counts(&pool->bulkhead, &bc);
    out->bulkhead_capacity = bc.capacity;
    out->bulkhead_in_use = bc.in_use;
    out->bulkhead_waiting = bc.waiting;
    out->bulkhead_rejections = bc.rejected_full + bc.timed_out;
    /* Every call and lease passes the bulkhead, in or refused. */
    out->calls = bc.admitted + out->bulkhead_rejections;
    out->calls_failed = atomic_load(&pool->calls_failed);
    pgg__cache_stats(pool->cache, out);
    pgg__leases_stats(pool, out);
    pgg__vis_stats(pool->vis, out);
    return PGG_OK;
}

const char *pgg_role_name(pgg_role role)
{
    switch (role) {
    case PGG_ROLE_PRIMARY:
        return "primary";
    case PGG_ROLE_STANDBY:
        return "standby";
    case PGG_ROLE_UNKNOWN:
        break;
    }
    return "unknown";
}
