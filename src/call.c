/*
 * The path of one call as a state machine (call.h), and its blocking
 * driver.  The steps decide; the drivers wait.
 */
#include "call.h"

#include <string.h>

#include "cancel.h"
#include "error.h"
#include "health.h"
#include "pipeline.h"
#include "sample.h"
#include "tls.h"

/* The steps are inlined into the blocking driver (the path of every
 * blocking call: measured by tests/bench/callgrind), and exported once
 * more for the loop driver. */
#if defined(__GNUC__)
#define STEP static inline __attribute__((always_inline))
#else
#define STEP static inline
#endif

/* ----------------------------------------------------------- helpers */

void pgg__info_reset(pgg_info *info)
{
    if (!info)
        return;
    info->host[0] = '\0';
    info->host_index = -1;
    info->attempts = 0;
    info->sent = 0;
    info->from_cache = 0;
    info->cache_age_ms = 0;
    pgg__error_reset(&info->cause);
    info->elapsed_us = 0;
    info->lsn = 0;
    info->lsn_wait_us = 0;
}

static void info_served(pgg_info *info, const pgg_host *h)
{
    if (!info)
        return;
    pgg__strlcpy(info->host, h->name, sizeof info->host);
    info->host_index = h->index;
}

void pgg__call_cancelled(pgg_error *err)
{
    pgg__error_set(err, PGG_ECANCELED, NULL, NULL,
                   "call cancelled by the caller");
}

STEP bool may_retry(const pgg__call *c, const pgg__attempt *a)
{
    if (c->opts && (c->opts->flags & PGG_CALL_NO_RETRY))
        return false;
    if (c->intent == PGG_WRITE)
        /* Only what provably did not apply may run again: never sent, or
         * refused as read-only by a server in recovery (25006). */
        return (a->end == PGG_END_CONNECT_FAILED && a->v.retry) ||
               a->end == PGG_END_NOT_SENT ||
               (a->v.cls == PGG_CLASS_WRONG_ROLE &&
                c->attempts < PGG_MAX_HOSTS);
    return a->v.retry && c->attempts < c->pool->max_attempts;
}

/* Failures that say "no host could answer", the only ones a stale answer
 * may stand in for: never a user error, never a full bulkhead. */
static bool host_reason(int code)
{
    return code == PGG_EOPEN || code == PGG_ETIMEDOUT ||
           code == PGG_ECONNECT || code == PGG_EUNAVAILABLE ||
           code == PGG_ENOPRIMARY;
}

/*
 * A cacheable read: remember a good answer, or stand in for a failed one
 * with the freshest copy the caller accepts.
 */
static PGresult *cache_step(pgg_pool *pool, const pgg_query *q,
                            const pgg_call *call, const pgg_vis_req *vr,
                            bool served, PGresult *res, pgg_info *info,
                            pgg_error *err)
{
    pgg_cache_key key;
    PGresult *stale;
    int64_t age = 0, now;
    uint64_t lsn = 0;
    /* An answer older than the read's position is never served, unless
     * the caller says any will do. */
    uint64_t need = call->flags & PGG_CALL_CACHE_ANY_LSN ? 0 : vr->need;

    if (served ? !res || PQresultStatus(res) != PGRES_TUPLES_OK
               : !host_reason(err->code))
        return res;
    if (pgg__cache_key(&key, pool->user, pool->dbname, q) != PGG_OK)
        return res;
    now = pgg__now_ns();
    if (served) {
        /* With the position the data is known to include (0: unknown). */
        pgg__cache_store_at(pool->cache, &key, res, now, vr->lsn);
        pgg__cache_key_done(&key);
        return res;
    }
    stale = pgg__cache_lookup_at(pool->cache, &key, now,
                                 pgg__ms_to_ns(call->max_stale_ms), need,
                                 &age, &lsn);
    pgg__cache_key_done(&key);
    if (!stale)
        return NULL;
    pgg__cache_note_fallback(pool->cache);
    if (info) {
        info->from_cache = 1;
        info->cache_age_ms = age / PGG_NS_PER_MS;
        info->lsn = lsn;
        info->cause = *err;
    }
    pgg_error_clear(err);
    return stale;
}

/* The adaptive bound: never below this, nor above half the time left. */
#define ATTEMPT_FLOOR_NS (200 * PGG_NS_PER_MS)
#define ATTEMPT_LATENCIES 8

/*
 * The deadline of one attempt: the call's, or sooner for a read that
 * another host could still take over, so that a hung host leaves time for
 * the next one.  attempt_timeout_ms fixes that bound; with it 0 and
 * attempt_timeout_auto on, the host's own recent latency sets it:
 * max(200 ms, 8 x its average), and never more than half the time left, so
 * the next host gets at least as long.  A write is never cut short: its
 * outcome would become unknowable.
 */
STEP int64_t attempt_deadline(const pgg__call *c, const pgg_host *h,
                              bool more_hosts)
{
    const pgg_pool *pool = c->pool;
    int64_t cut, deadline = c->deadline, now = c->now;

    if (c->intent == PGG_WRITE || !more_hosts ||
        c->attempts + 1 >= pool->max_attempts ||
        (c->opts && (c->opts->flags & PGG_CALL_NO_RETRY)))
        return deadline;
    if (pool->attempt_timeout_ns > 0) {
        cut = now + pool->attempt_timeout_ns;
    } else if (pool->attempt_auto) {
        int64_t bound = ATTEMPT_LATENCIES *
                        atomic_load_explicit(&h->latency_ns,
                                             memory_order_relaxed);
        int64_t half = (deadline - now) / 2;

        if (bound < ATTEMPT_FLOOR_NS)
            bound = ATTEMPT_FLOOR_NS;
        cut = now + (bound < half ? bound : half);
    } else {
        return deadline;
    }
    return cut < deadline ? cut : deadline;
}

/* Hosts whose last attempt hit its deadline, or whose server is starting,
 * go last (stable), so a fresh read is not sent into the same wait (nor
 * waits for the server, pgg__host_await_back) while another host can
 * answer. */
static void suspects_last(pgg_pool *pool, int *cand, int n, int64_t now)
{
    int keep[PGG_MAX_HOSTS], late[PGG_MAX_HOSTS], nk = 0, nl = 0;

    if (n < 2)
        return; /* nothing to reorder */
    for (int i = 0; i < n; i++) {
        if (atomic_load_explicit(&pool->hosts[cand[i]].suspect_until_ns,
                                 memory_order_relaxed) > now)
            late[nl++] = cand[i];
        else
            keep[nk++] = cand[i];
    }
    if (nl == 0)
        return;
    memcpy(cand, keep, (size_t)nk * sizeof *cand);
    memcpy(cand + nk, late, (size_t)nl * sizeof *cand);
}

/* ------------------------------------------------------------- steps */

STEP bool call_begin(pgg__call *c, pgg__call_mem *m, pgg_pool *pool,
                     pgg_intent intent, const pgg_query *q,
                     const pgg_call *opts, pgg_info *info, pgg_error *err,
                     pgg_cancel *cancel)
{
    if (!err)
        err = &m->local_err;
    c->m = m;
    c->err = err;
    c->info = info;
    pgg__error_reset(err);
    pgg__info_reset(info);
    if (!pool || !q->sql) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                       "pgg_exec: NULL pool or SQL");
        return false;
    }
    if ((unsigned)intent > PGG_READ_PRIMARY) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                       "pgg_exec: unknown intent %d", (int)intent);
        return false;
    }
    if (pgg__query_check(q, "pgg_exec", err) != PGG_OK)
        return false;
    if (atomic_load(&pool->closed)) {
        pgg__error_set(err, PGG_ECLOSED, NULL, NULL, "pool closed");
        return false;
    }
    c->pool = pool;
    c->intent = intent;
    c->opts = opts;
    c->cancel = cancel;
    m->rejected = false;
    c->served = c->final = false;
    c->attempts = 0;
    c->res = c->spare = NULL;
    c->spare_host = NULL;
    c->q = q;
    c->vis = !(pool->ryw_off && intent == PGG_READ &&
               !(opts && opts->min_lsn));
    if (!c->vis) {
        /* What pgg__vis_begin gives such a read: no position to meet,
         * none to learn; the module stays off its path (finish too, which
         * then reads no_vis).  The loop driver reads m->vr itself
         * (async.c): it gets it zeroed. */
        if (c->on_loop)
            memset(&m->vr, 0, sizeof m->vr);
    } else if (pgg__vis_begin(pool->vis, intent, opts, &m->vr)) {
        m->qv = *q;
        m->qv.vis = &m->vr;
        c->q = &m->qv;
        /* The loop cannot wait for a replica: the candidates are the
         * second pass's at once (replicas known to have the position,
         * then the primary). */
        if (c->on_loop)
            m->vr.waited = true;
    }
    c->start = c->now = pgg__now_ns();
    c->deadline = c->start + pgg__pool_timeout_ns(pool, opts ? opts->timeout_ms : 0);
    return true;
}

STEP void call_refused(pgg__call *c)
{
    if (pgg__cancel_fired(c->cancel))
        pgg__call_cancelled(c->err);
    if (c->info)
        c->info->elapsed_us = (pgg__now_ns() - c->start) / 1000;
}

STEP void call_route(pgg__call *c)
{
    pgg_pool *pool = c->pool;
    pgg__call_mem *m = c->m;

    c->ncand = pgg__pool_candidates(pool, c->intent, m->cand);
    if (c->intent == PGG_READ && c->ncand > 1) /* else nothing to reorder */
        suspects_last(pool, m->cand, c->ncand, c->now);
    if (c->q->vis && m->vr.sample) {
        if (c->on_loop)
            pgg__vis_sample_known(pool, &m->vr);
        else
            c->now = pgg__vis_sample(pool, &m->vr, c->deadline,
                                     pgg__sample_primary, c->err);
    }
    if (c->q->vis && m->vr.need)
        c->ncand = pgg__vis_order(pool, &m->vr, !c->on_loop, m->cand,
                                  c->ncand);
    c->i = 0;
    c->again = -1;
    c->reroutes = 0;
}

STEP pgg_host *call_next(pgg__call *c, int64_t *attempt_dl)
{
    pgg_host *h;

    if (c->served || c->final || c->i >= c->ncand)
        return NULL;
    if (c->cancel && pgg__cancel_fired(c->cancel)) {
        pgg__call_cancelled(c->err);
        c->final = true;
        return NULL;
    }
    if (c->now >= c->deadline) {
        if (c->attempts == 0 || !c->err->code)
            pgg__error_set(c->err, PGG_ETIMEDOUT, NULL, NULL,
                           "deadline exceeded before a host could serve");
        c->final = true;
        return NULL;
    }
    h = &c->pool->hosts[c->m->cand[c->i]];
    *attempt_dl = attempt_deadline(c, h, c->i + 1 < c->ncand);
    return h;
}

STEP void call_skipped(pgg__call *c)
{
    /* Skipping a host costs little time, unless it waited for a
     * connection slot; read the clock again either way. */
    c->now = pgg__now_ns();
    c->i++;
}

STEP void call_attempted(pgg__call *c, pgg_host *h, pgg__attempt *a)
{
    pgg_pool *pool = c->pool;
    pgg_info *info = c->info;
    pgg_error *err = c->err;

    /* A standby behind the read's position: not an answer. */
    if (c->q->vis && pgg__vis_discard(c->q->vis, &a->res)) {
        c->now = a->ended ? a->ended : pgg__now_ns();
        c->i++;
        return;
    }
    c->attempts++;
    c->now = a->ended ? a->ended : pgg__now_ns();
    if (info)
        info->sent = a->end != PGG_END_CONNECT_FAILED &&
                     a->end != PGG_END_NOT_SENT &&
                     a->end != PGG_END_EXPIRED && a->end != PGG_END_REFUSED;
    if (a->v.code == PGG_ECANCELED) {
        info_served(info, h);
        PQclear(a->res);
        c->final = true;
        return;
    }
    if (!pgg__host_failure(a->v.cls) && a->v.cls != PGG_CLASS_WRONG_ROLE &&
        !(a->v.cls == PGG_CLASS_IGNORED && a->v.retry && may_retry(c, a))) {
        c->served = true;
        c->res = a->res;
        info_served(info, h);
        /* err tells the call's outcome, not an earlier attempt's. */
        if (a->v.code == PGG_OK && err->code != PGG_OK)
            pgg__error_reset(err);
        return;
    }
    if (!may_retry(c, a)) {
        info_served(info, h);
        PQclear(a->res);
        c->final = true;
        return;
    }
    if (a->res && a->v.cls == PGG_CLASS_IGNORED) {
        PQclear(c->spare);
        c->spare = a->res;
        c->m->spare_err = *err;
        c->spare_host = h;
    } else {
        PQclear(a->res);
    }
    a->res = NULL;
    /* A pooled session that was dead when we used it (a restart, a
     * failover, terminated backends) says little about the host: its idle
     * siblings are gone now (exec_on), so try the same host once more on a
     * new connection before moving on. */
    if (a->reused && a->lost && a->end != PGG_END_DEADLINE &&
        c->again != c->i) {
        c->again = c->i;
        return;
    }
    if (a->v.cls == PGG_CLASS_WRONG_ROLE && c->reroutes++ < 2) {
        /* The write did not apply and this host is a standby now: route
         * again on what the pool knows, or, knowing no primary, on what the
         * health thread (woken by the 25006) finds within the deadline (on
         * a loop, on what it knows now). */
        c->ncand = pgg__pool_candidates(pool, c->intent, c->m->cand);
        if (c->ncand == 0 && !c->on_loop &&
            pgg__health_await_round(pool->health, c->deadline))
            c->ncand = pgg__pool_candidates(pool, c->intent, c->m->cand);
        c->i = 0;
        c->again = -1;
        c->now = pgg__now_ns();
        return;
    }
    c->i++;
}

STEP bool call_again(pgg__call *c)
{
    int n;

    /* A read that needs a position: wait for a standby, then the primary. */
    if (c->served || c->final || c->spare || !c->q->vis || !c->m->vr.need)
        return false;
    n = pgg__vis_retry(c->pool, &c->m->vr, c->deadline, c->intent,
                       !c->on_loop, c->m->cand, c->err);
    if (n <= 0)
        return false;
    c->ncand = n;
    c->now = pgg__now_ns();
    c->i = 0;
    c->again = -1;
    c->reroutes = 0;
    return true;
}

STEP PGresult *call_finish(pgg__call *c)
{
    pgg_pool *pool = c->pool;
    /* The request of a call without the visibility module: all zero. */
    static const pgg_vis_req no_vis;
    const pgg_vis_req *vr = c->vis ? &c->m->vr : &no_vis;
    pgg_info *info = c->info;
    pgg_error *err = c->err;
    const pgg_call *call = c->opts;
    PGresult *res = c->res;
    bool served = c->served;

    if (!served && c->spare) {
        /* No other host answered: the server's answer is the outcome. */
        served = true;
        res = c->spare;
        *err = c->m->spare_err;
        info_served(info, c->spare_host);
        if (info)
            info->sent = 1;
    } else if (c->spare) {
        PQclear(c->spare);
    }
    c->spare = NULL;
    if (c->cancel && !served && err->code != PGG_ECANCELED &&
        pgg__cancel_fired(c->cancel))
        pgg__call_cancelled(err); /* a read-your-writes wait the fire ended */
    else if (!served && c->attempts == 0 &&
             (err->code == PGG_OK ||
              (c->m->rejected && err->code != PGG_ETIMEDOUT &&
               err->code != PGG_ECLOSED)))
        pgg__pool_no_host_error(pool, c->intent,
                                c->m->rejected ? c->ncand : 0, err);

    if (served) {
        if (c->vis)
            pgg__vis_served(pool->vis, &c->m->vr, c->intent);
        if (info)
            info->lsn = vr->lsn;
    }
    if (info)
        info->lsn_wait_us = vr->wait_ns / 1000;
    if (pool->cache && call && (call->flags & PGG_CALL_CACHEABLE) &&
        c->intent != PGG_WRITE)
        res = cache_step(pool, c->q, call, vr, served, res, info, err);

    pgg__bulkhead_leave(&pool->bulkhead);
    if (!res)
        atomic_fetch_add(&pool->calls_failed, 1);
    if (info) {
        info->attempts = c->attempts;
        /* The attempt's end is close enough: no clock reading for it. */
        info->elapsed_us = ((served ? c->now : pgg__now_ns()) - c->start) / 1000;
    }
    c->res = NULL;
    return res;
}

/* The steps for the loop driver (async.c). */

bool pgg__call_begin(pgg__call *c, pgg__call_mem *m, pgg_pool *pool,
                     pgg_intent intent, const pgg_query *q,
                     const pgg_call *opts, pgg_info *info, pgg_error *err,
                     pgg_cancel *cancel)
{
    return call_begin(c, m, pool, intent, q, opts, info, err, cancel);
}

void pgg__call_refused(pgg__call *c)
{
    call_refused(c);
}

void pgg__call_route(pgg__call *c)
{
    call_route(c);
}

pgg_host *pgg__call_next(pgg__call *c, int64_t *attempt_dl)
{
    return call_next(c, attempt_dl);
}

void pgg__call_skipped(pgg__call *c)
{
    call_skipped(c);
}

void pgg__call_attempted(pgg__call *c, pgg_host *h, pgg__attempt *a)
{
    call_attempted(c, h, a);
}

bool pgg__call_again(pgg__call *c)
{
    return call_again(c);
}

PGresult *pgg__call_finish(pgg__call *c)
{
    return call_finish(c);
}

/* ---------------------------------------------------- blocking driver */

/*
 * One attempt on one host, waiting on this thread.  Returns false when the
 * host was skipped without an attempt (breaker refused, wrong role, pool
 * exhausted).
 */
STEP bool attempt_on(pgg__call *c, pgg_host *h, int64_t deadline,
                     pgg__attempt *a)
{
    pgg_pool *pool = c->pool;

    if (pool->pipes) {
        switch (pgg__pipe_attempt(pool, h, c->intent, c->q, deadline, c->now,
                                  a, &c->m->rejected, c->err)) {
        case PGG_PIPE_BYPASS:
            break;
        case PGG_PIPE_SKIPPED:
            return false;
        case PGG_PIPE_ATTEMPTED:
            return true;
        }
    }
    switch (pgg__pool_attempt(pool, h, c->intent, c->q, deadline, c->now,
                              c->err, a)) {
    case PGG_ATTEMPT_MADE:
        return true;
    case PGG_ATTEMPT_REFUSED:
        c->m->rejected = true;
        return false;
    case PGG_ATTEMPT_SKIPPED:
        break;
    }
    return false;
}

PGresult *pgg__call_run(pgg_pool *pool, pgg_intent intent, const pgg_query *q,
                        const pgg_call *opts, pgg_info *info, pgg_error *err,
                        pgg_cancel *cancel)
{
    /* c's address goes nowhere (every step is inlined here): its fields
     * stay in registers; what other modules are handed lives in m. */
    pgg__call c;
    pgg__call_mem m;
    pgg__attempt a;
    pgg_host *h;
    int64_t dl, entered;

    c.on_loop = false;
    if (!call_begin(&c, &m, pool, intent, q, opts, info, err, cancel))
        return NULL;
    /* Through a local: c's address must go nowhere. */
    entered = c.now;
    if (pgg__pool_enter(pool, &entered, c.deadline, c.err) != PGG_OK) {
        call_refused(&c);
        return NULL;
    }
    c.now = entered;
    call_route(&c);
    /* The first candidate apart: when it serves, the call is over with
     * what the compiler knows of the state here (one attempt, no spare,
     * nothing rerouted), and the loop below is not entered.  The same
     * steps in the same order as the loop's first turn. */
    if ((h = call_next(&c, &dl)) != NULL) {
        if (attempt_on(&c, h, dl, &a)) {
            call_attempted(&c, h, &a);
            if (c.served)
                return call_finish(&c);
        } else {
            call_skipped(&c);
        }
    }
    do {
        while ((h = call_next(&c, &dl)) != NULL) {
            if (attempt_on(&c, h, dl, &a))
                call_attempted(&c, h, &a);
            else
                call_skipped(&c);
        }
    } while (call_again(&c));
    return call_finish(&c);
}
