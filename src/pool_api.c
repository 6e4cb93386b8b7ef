/*
 * The public pool object: create and free it (every module's state, the
 * health thread), the blocking calls' entry points (pgg_exec,
 * pgg_exec_params, pgg_exec_prepared: the cancel handle, the tracer, then
 * the path of one call in call.c) and its stats.  The top of the module
 * graph: it knows every module, none knows it (tests/lint/module_graph.py).
 */
#include "pool_api.h"

#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "call.h"
#include "cancel.h"
#include "error.h"
#include "health.h"
#include "lease.h"
#include "pipeline.h"
#include "trace.h"

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

/* The modules below the health thread wake it through pool->wake_health. */
static void wake_health(void *health)
{
    pgg__health_wake(health);
}

static void breaker_changed(void *ud, pgg_breaker_state from,
                            pgg_breaker_state to, pgg_breaker_reason reason)
{
    pgg_host_ref *ref = ud;
    pgg_host *h = &ref->pool->hosts[ref->index];
    pgg_event ev = {0};

    /* A host that just failed enough to open probably holds dead
     * connections; the next borrow would only rediscover that.  Never
     * waited for: this runs on whichever thread delivers the breaker's
     * events (an event loop's too, which must not wait for the host's
     * lock); when it is busy, the health thread's sweep looks at them. */
    if ((to == PGG_BREAKER_OPEN || to == PGG_BREAKER_FORCED_OPEN) &&
        !pgg__host_trim_opened(h) && to == PGG_BREAKER_FORCED_OPEN)
        pgg__health_ask(ref->pool->health);
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
    /* The health thread's last events delivered; later ones are delivered
     * where raised (the listener's userdata lives until the end). */
    pgg__events_free(pool->events);
    pool->events = NULL;
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
    pgg__pool_listeners_free(pool);
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
    /* Here, not when the servers are set: libpq reads its environment and
     * service file at each connect, and the pool's are the ones it meets. */
    for (int i = 0; i < cfg->nhosts; i++) {
        if (pgg__host_spec_check(&cfg->hosts[i], i, err) != PGG_OK)
            return NULL;
    }
    pool = calloc(1, sizeof *pool);
    if (!pool) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&pool->ev_mu, NULL);
    /* NULL (out of memory): the health thread's events are delivered
     * where raised, as before (events.h). */
    pool->events = pgg__events_new(pgg__pool_deliver_event, pool);
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
    pool->max_lag_bytes = cfg->max_replica_lag_bytes ? cfg->max_replica_lag_bytes
                                                     : PGG_LAG_NO_LIMIT;

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
        pool->hosts[i].lookup = spec->lookup;
        pool->refs[i].pool = pool;
        pool->refs[i].index = i;
        pgg__breaker_listen(&pool->hosts[i].breaker, breaker_changed,
                            &pool->refs[i]);
    }
    if (pgg__bulkhead_init(&pool->bulkhead, cfg->bulkhead_max_concurrent,
                           pool->clock, err) != PGG_OK)
        goto fail;
    bulkhead_ready = true;
    /* cancel_timeout_ms = 0: abandoned queries are not cancelled at all;
     * the closer still closes what the pool drops (link.h). */
    pool->canceller =
        pgg__canceller_new(cfg->cancel_timeout_ms > 0 ? pool->nhosts : 0, 8,
                           ms_to_ns(cfg->cancel_timeout_ms), err);
    if (!pool->canceller)
        goto fail;
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
    /* Modules below the health thread wake it through this pointer
     * (pool_state.h); it reads pool->health, NULL until the start returns,
     * as before. */
    pool->wake_health = wake_health;
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

/* ---------------------------------------------------------------- calls */

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
    pgg_query q;

    if (pgg__query_params(&q, "pgg_exec_params", sql, nparams, types, values,
                          lengths, formats, call ? call->result_format : 0,
                          err) != PGG_OK) {
        pgg__info_reset(info);
        return NULL;
    }
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
    out->lag_bytes = atomic_load(&h->hold.lag_measured);
    out->replay_lsn = atomic_load(&h->hold.replay);
    out->reads_held_until_lsn =
        pgg__hold_on(&h->hold) ? atomic_load(&h->hold.until) : 0;
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
