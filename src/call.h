/*
 * Internal: the path of one call as a state machine (docs/DESIGN.md, "The
 * path of one call").  A pgg__call holds what the path needs between its
 * steps: the intent and query, the deadline, the candidates and where the
 * call is among them, the attempts so far, the spare answer and the
 * outcome.  Every step (below) decides and records; none waits.  The waits
 * (the bulkhead, a connection, the query on its socket) belong to a
 * driver:
 *
 *   - the blocking driver (pgg__call_run, below): the caller's thread
 *     waits in each, the socket under the pool's watchdog;
 *   - the loop driver (async.c): the application's event loop waits, the
 *     deadline is a loop timer.
 *
 * Both call the same steps in the same order:
 *
 *   begin -> (bulkhead: enter or refused) -> route
 *     -> { next -> attempt (driver: admit, borrow or connect, exec,
 *                           pgg__pool_exec_done) -> attempted | skipped }*
 *     -> again? (a second pass) -> finish
 *
 * A pgg__call lives in its driver's frame (the blocking driver's stack, an
 * async call's allocation); it is touched by one thread at a time.
 */
#ifndef PGG_CALL_H
#define PGG_CALL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "cancel.h"
#include "error.h"
#include "health.h"
#include "pool.h"
#include "sample.h"

/* One attempt on one host, as the path judges it (pool.h). */
typedef pgg_attempt pgg__attempt;

/*
 * The parts of a call whose address goes to other modules (the candidates,
 * the visibility request and the query that carries it, the error records,
 * the breakers' refusal flag).  Kept apart from pgg__call so that the
 * blocking driver's pgg__call never has its address taken: the compiler
 * then keeps its fields in registers (tests/bench/callgrind), and memory
 * is touched only where a step hands one of these to another module.
 */
typedef struct pgg__call_mem {
    bool rejected; /* some breaker refused us */
    int cand[PGG_MAX_HOSTS]; /* beside rejected: both touched per call */
    pgg_vis_req vr;
    pgg_query qv;
    pgg_error spare_err;
    pgg_error local_err; /* err when the caller passed none */
} pgg__call_mem;

typedef struct pgg__call {
    pgg_pool *pool;
    pgg_intent intent;
    const pgg_query *q;  /* the caller's, or m->qv with the visibility needs */
    const pgg_call *opts; /* the caller's per-call options, may be NULL */
    pgg_info *info;       /* may be NULL */
    pgg_error *err;       /* never NULL once begun */
    pgg_cancel *cancel;   /* NULL: none */
    pgg__call_mem *m;     /* the driver's, given to begin */
    /* On an event loop, its context's tie (host.h; NULL: the blocking
     * driver): the path never waits inside a step (no health round
     * awaited on a reroute, no read-your-writes wait; the bulkhead's and
     * the cache's locks only tried: a slot it could not give back owed
     * and settled on the loop's timer, loop->owe; a store queued; a
     * fallback looked up again on the timer, loop->cache_later). */
    pgg_host_loop *loop;
    bool served;    /* an answer (success or the caller's error) is the outcome */
    bool final;     /* no further attempt: the outcome is err */
    /* On a loop: a write refused as read-only (25006) found no primary to
     * run on; the driver waits for the health round the refusal asked
     * for, within the deadline, then routes again (pgg__call_rerouted),
     * as the blocking path waits in pgg__call_attempted.  Beside served
     * and final, which begin clears with it (adjacent stores merge). */
    bool round_wait;
    bool vis;       /* the visibility module is on the path (begin, served) */
    int64_t start, deadline;
    int64_t now;    /* the latest clock reading of the path */
    int ncand, i;   /* the candidates (m->cand), and the one to try next */
    int again;      /* the candidate already given a second connection */
    int reroutes;
    int attempts;
    PGresult *res;
    /* A server's answer that another host may improve on (a recovery
     * conflict): kept, with its record (m->spare_err), in case none does. */
    PGresult *spare;
    const pgg_host *spare_host;
} pgg__call;

/* Field by field: the record is ~1 kB and this runs on every call.
 * Inline: a call of its own cost ~5 instructions more than its stores. */
static inline void pgg__info_reset(pgg_info *info)
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

/* err = PGG_ECANCELED, "call cancelled by the caller". */
void pgg__call_cancelled(pgg_error *err);

/* The steps' cold parts, out of line (call.c). */

/*
 * A cacheable read: remember a good answer, or stand in for a failed one
 * with the freshest copy the caller accepts.
 */
PGresult *pgg__call_cache_step(pgg_pool *pool, const pgg_query *q,
                               const pgg_call *call, const pgg_vis_req *vr,
                               bool served, PGresult *res, pgg_info *info,
                               pgg_error *err, const pgg_host_loop *loop);

/* pgg__call_cache_step's answer on a loop whose lookup found the cache's
 * lock busy: finish again later (never a result to read). */
#define PGG__CALL_LATER ((PGresult *)(uintptr_t)1)

/* The bulkhead's slot given back the slow way (someone waits): on a loop
 * (loop) without waiting for its lock, owed if busy (bulkhead.c,
 * "Loops"). */
void pgg__call_leave_slow(pgg_pool *pool, pgg_host_loop *loop);

/* Hosts whose last attempt hit its deadline, or whose server is starting,
 * go last (stable), so a fresh read is not sent into the same wait (nor
 * waits for the server, pgg__host_await_back) while another host can
 * answer. */
void pgg__call_suspects_last(pgg_pool *pool, int *cand, int n, int64_t now);

/*
 * The steps, inline.  The path exists once, here; each driver compiles
 * the steps into its own code: the blocking driver (pgg__call_run,
 * call.c), whose pgg__call then never has its address taken and stays in
 * registers, and the loop driver (async.c), which then makes no function
 * call per step.  Their cold parts (the cache, suspects last) stay out of
 * line in call.c.  Measured: tests/bench/callgrind (blocking), bench-async
 * under callgrind (loop).
 */
#if defined(__GNUC__)
#define PGG__STEP static inline __attribute__((always_inline))
#else
#define PGG__STEP static inline
#endif

/* ----------------------------------------------------------- helpers */

static inline void pgg__call_info_served(pgg_info *info, const pgg_host *h)
{
    _Static_assert(sizeof info->host == sizeof h->name,
                   "pgg_info.host holds a host's name");

    if (!info)
        return;
    /* The whole buffer, NUL-padded since the host's creation
     * (pgg__host_init): a fixed-size copy costs less per call than
     * measuring the name first. */
    memcpy(info->host, h->name, sizeof info->host);
    info->host_index = h->index;
}

PGG__STEP bool pgg__call_may_retry(const pgg__call *c, const pgg__attempt *a)
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

/* The adaptive bound: never below this, nor above half the time left. */
#define PGG__ATTEMPT_FLOOR_NS (200 * PGG_NS_PER_MS)
#define PGG__ATTEMPT_LATENCIES 8

/*
 * The deadline of one attempt: the call's, or sooner for a read that
 * another host could still take over, so that a hung host leaves time for
 * the next one.  attempt_timeout_ms fixes that bound; with it 0 and
 * attempt_timeout_auto on, the host's own recent latency sets it:
 * max(200 ms, 8 x its average), and never more than half the time left, so
 * the next host gets at least as long.  A write is never cut short: its
 * outcome would become unknowable.
 */
PGG__STEP int64_t pgg__call_attempt_deadline(const pgg__call *c,
                                             const pgg_host *h,
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
        int64_t bound = PGG__ATTEMPT_LATENCIES *
                        atomic_load_explicit(&h->latency_ns,
                                             memory_order_relaxed);
        int64_t half = (deadline - now) / 2;

        if (bound < PGG__ATTEMPT_FLOOR_NS)
            bound = PGG__ATTEMPT_FLOOR_NS;
        cut = now + (bound < half ? bound : half);
    } else {
        return deadline;
    }
    return cut < deadline ? cut : deadline;
}

/* ------------------------------------------------------------- steps */

/*
 * Check the arguments, the pool and the cancel handle; set the deadline.
 * m: the call's memory part, the driver's, as long-lived as c.
 * Returns false when the call is already over (err says why; the bulkhead
 * was not entered): the driver returns NULL.
 */
PGG__STEP bool pgg__call_begin(pgg__call *c, pgg__call_mem *m, pgg_pool *pool,
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
    /* The loop's start checked the pool, the SQL and the query already,
     * naming its own function. */
    if (!c->loop && (!pool || !q->sql)) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                       "pgg_exec: NULL pool or SQL");
        return false;
    }
    if ((unsigned)intent > PGG_READ_PRIMARY) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                       "pgg_exec: unknown intent %d", (int)intent);
        return false;
    }
    if (!c->loop && pgg__query_check(q, "pgg_exec", err) != PGG_OK)
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
    c->served = c->final = c->round_wait = false;
    c->attempts = 0;
    c->res = c->spare = NULL;
    c->spare_host = NULL;
    c->q = q;
    c->vis = !(pool->ryw_off && intent == PGG_READ &&
               !(opts && opts->min_lsn));
    /* !c->vis: what pgg__vis_begin gives such a read: no position to
     * meet, none to learn; the module stays off its path (finish too,
     * which then reads no_vis), and m->vr is not read (every driver reads
     * it only for a query that carries it, q->vis). */
    if (c->vis && pgg__vis_begin(pool->vis, intent, opts, &m->vr)) {
        m->qv = *q;
        m->qv.vis = &m->vr;
        c->q = &m->qv;
        /* The loop cannot wait for a replica: the candidates are the
         * second pass's at once (replicas known to have the position,
         * then the primary). */
        if (c->loop)
            m->vr.waited = true;
    }
    c->start = c->now = pgg__now_ns();
    c->deadline = c->start + pgg__pool_timeout_ns(pool, opts ? opts->timeout_ms : 0);
    return true;
}

/* The bulkhead refused the call (pgg__pool_enter filled err): the call is
 * over. */
PGG__STEP void pgg__call_refused(pgg__call *c)
{
    if (pgg__cancel_fired(c->cancel))
        pgg__call_cancelled(c->err);
    if (c->info)
        c->info->elapsed_us = (pgg__now_ns() - c->start) / 1000;
}

/* Inside the bulkhead: the candidates, in the order to try them. */
PGG__STEP void pgg__call_route(pgg__call *c)
{
    pgg_pool *pool = c->pool;
    pgg__call_mem *m = c->m;

    c->ncand = pgg__pool_candidates(pool, c->intent, m->cand);
    if (c->intent == PGG_READ && c->ncand > 1) /* else nothing to reorder */
        pgg__call_suspects_last(pool, m->cand, c->ncand, c->now);
    if (c->q->vis && m->vr.sample) {
        if (c->loop)
            pgg__vis_sample_known(pool, &m->vr);
        else
            c->now = pgg__vis_sample(pool, &m->vr, c->deadline,
                                     pgg__sample_primary, c->err);
    }
    if (c->q->vis && m->vr.need)
        c->ncand = pgg__vis_order(pool, &m->vr, !c->loop, m->cand,
                                  c->ncand);
    c->i = 0;
    c->again = -1;
    c->reroutes = 0;
}

/*
 * The host to try next and the attempt's deadline, or NULL when this pass
 * is over (served, final, or no candidate left).  Reads the cancel handle
 * and the deadline first.
 */
PGG__STEP pgg_host *pgg__call_next(pgg__call *c, int64_t *attempt_dl)
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
    *attempt_dl = pgg__call_attempt_deadline(c, h, c->i + 1 < c->ncand);
    return h;
}

/* The host given by next was skipped without an attempt (its breaker
 * refused, wrong role, no connection free). */
PGG__STEP void pgg__call_skipped(pgg__call *c)
{
    /* Skipping a host costs little time, unless it waited for a
     * connection slot; read the clock again either way. */
    c->now = pgg__now_ns();
    c->i++;
}

/* The host given by next made attempt a (its verdict recorded by
 * pgg__pool_exec_done or by a failed connect): serve it, keep it as the
 * spare, or move on.  Takes a->res. */
PGG__STEP void pgg__call_attempted(pgg__call *c, pgg_host *h, pgg__attempt *a)
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
        pgg__call_info_served(info, h);
        PQclear(a->res);
        c->final = true;
        return;
    }
    if (!pgg__host_failure(a->v.cls) && a->v.cls != PGG_CLASS_WRONG_ROLE &&
        !(a->v.cls == PGG_CLASS_IGNORED && a->v.retry && pgg__call_may_retry(c, a))) {
        c->served = true;
        c->res = a->res;
        pgg__call_info_served(info, h);
        /* err tells the call's outcome, not an earlier attempt's. */
        if (a->v.code == PGG_OK && err->code != PGG_OK)
            pgg__error_reset(err);
        return;
    }
    if (!pgg__call_may_retry(c, a)) {
        pgg__call_info_served(info, h);
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
         * health thread (woken by the 25006) finds within the deadline (a
         * loop's driver waits for that round on its timer: round_wait). */
        c->ncand = pgg__pool_candidates(pool, c->intent, c->m->cand);
        if (c->ncand == 0 && c->loop)
            c->round_wait = true;
        else if (c->ncand == 0 &&
                 pgg__health_await_round(pool->health, c->deadline))
            c->ncand = pgg__pool_candidates(pool, c->intent, c->m->cand);
        c->i = 0;
        c->again = -1;
        c->now = pgg__now_ns();
        return;
    }
    c->i++;
}

/* The loop's wait for the round (round_wait) is over, done or not (its
 * deadline, a cancel): the candidates the pool knows now. */
PGG__STEP void pgg__call_rerouted(pgg__call *c)
{
    c->round_wait = false;
    c->ncand = pgg__pool_candidates(c->pool, c->intent, c->m->cand);
    c->i = 0;
    c->again = -1;
    c->now = pgg__now_ns();
}

/* Nothing served this pass: another pass (a read waiting for a replica to
 * replay its position, then the primary)?  Blocking drivers may wait here;
 * on a loop it never waits. */
PGG__STEP bool pgg__call_again(pgg__call *c)
{
    int n;

    /* A read that needs a position: wait for a standby, then the primary. */
    if (c->served || c->final || c->spare || !c->q->vis || !c->m->vr.need)
        return false;
    n = pgg__vis_retry(c->pool, &c->m->vr, c->deadline, c->intent,
                       !c->loop, c->m->cand, c->err);
    if (n <= 0)
        return false;
    c->ncand = n;
    c->now = pgg__now_ns();
    c->i = 0;
    c->again = -1;
    c->reroutes = 0;
    return true;
}

/* The outcome: the spare answer, the no-host error, the cache, the
 * bulkhead slot given back, info.  Returns the result (or NULL). */
PGG__STEP PGresult *pgg__call_finish(pgg__call *c)
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
        pgg__call_info_served(info, c->spare_host);
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

    /* Without the module, both stay the reset's 0. */
    if (c->vis) {
        if (served) {
            pgg__vis_served(pool->vis, &c->m->vr, c->intent);
            if (info)
                info->lsn = vr->lsn;
        }
        if (info)
            info->lsn_wait_us = vr->wait_ns / 1000;
    }
    if (pool->cache && call && (call->flags & PGG_CALL_CACHEABLE) &&
        c->intent != PGG_WRITE) {
        res = pgg__call_cache_step(pool, c->q, call, vr, served, res, info,
                                   err, c->loop);
        /* On a loop, a fallback the cache's lock kept from it: the call
         * finishes again, from the top, on the loop's timer (what runs
         * above twice sets the same again: the no-host error, the
         * position's wait; the bulkhead slot is still held). */
        if (c->loop && res == PGG__CALL_LATER) {
            c->loop->cache_later(c->loop, c->m);
            return NULL;
        }
    }

    if (!pgg__bulkhead_leave_fast(&pool->bulkhead))
        pgg__call_leave_slow(pool, c->loop);
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

/* The blocking driver: the whole call on this thread. */
PGresult *pgg__call_run(pgg_pool *pool, pgg_intent intent, const pgg_query *q,
                        const pgg_call *opts, pgg_info *info, pgg_error *err,
                        pgg_cancel *cancel);

#endif
