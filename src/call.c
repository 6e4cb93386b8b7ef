/*
 * The blocking driver of the path of one call (call.h, whose inline steps
 * it runs), and the steps' cold parts.  The steps decide; the drivers
 * wait.
 */
#include "call.h"

#include <string.h>

#include "pipeline.h"
#include "tls.h"

/* ----------------------------------------------------------- helpers */

void pgg__call_cancelled(pgg_error *err)
{
    pgg__error_set(err, PGG_ECANCELED, NULL, NULL,
                   "call cancelled by the caller");
}

/* Failures that say "no host could answer", the only ones a stale answer
 * may stand in for: never a user error, never a full bulkhead. */
static bool host_reason(int code)
{
    return code == PGG_EOPEN || code == PGG_ETIMEDOUT ||
           code == PGG_ECONNECT || code == PGG_EUNAVAILABLE ||
           code == PGG_ENOPRIMARY;
}

/* A cacheable read's answer remembered, or a stale one for a failure
 * (call.h).  On a loop (loop) the cache's lock is never waited for: a
 * store is queued if it is busy, a lookup answers PGG__CALL_LATER
 * (cache.c, "Loops"). */
PGresult *pgg__call_cache_step(pgg_pool *pool, const pgg_query *q,
                               const pgg_call *call, const pgg_vis_req *vr,
                               bool served, PGresult *res, pgg_info *info,
                               pgg_error *err, const pgg_host_loop *loop)
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
        if (loop)
            pgg__cache_store_loop(pool->cache, &key, res, now, vr->lsn);
        else
            pgg__cache_store_at(pool->cache, &key, res, now, vr->lsn);
        pgg__cache_key_done(&key);
        return res;
    }
    if (!loop) {
        stale = pgg__cache_lookup_at(pool->cache, &key, now,
                                     pgg__ms_to_ns(call->max_stale_ms), need,
                                     &age, &lsn);
    } else if (pgg__cache_lookup_loop(pool->cache, &key, now,
                                      pgg__ms_to_ns(call->max_stale_ms), need,
                                      &age, &lsn, &stale) == PGG_CACHE_BUSY) {
        pgg__cache_key_done(&key);
        return PGG__CALL_LATER;
    }
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

/* The slot given back the slow way (call.h). */
void pgg__call_leave_slow(pgg_pool *pool, pgg_host_loop *loop)
{
    if (!loop)
        pgg__bulkhead_leave_slow(&pool->bulkhead);
    else if (!pgg__bulkhead_leave_loop_slow(&pool->bulkhead)) {
        /* Settled on the loop's timer (owed_settle), and by the health
         * thread (owed_first): a loop run on demand may not turn again
         * while a blocking caller sleeps in the bulkhead's queue. */
        loop->owe(loop);
        if (loop->owed_first)
            loop->owed_first(loop);
    }
}

/* Suspect hosts last, stable (call.h). */
void pgg__call_suspects_last(pgg_pool *pool, int *cand, int n, int64_t now)
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

/* ---------------------------------------------------- blocking driver */

/*
 * One attempt on one host, waiting on this thread.  Returns false when the
 * host was skipped without an attempt (breaker refused, wrong role, pool
 * exhausted).
 */
PGG__STEP bool attempt_on(pgg__call *c, pgg_host *h, int64_t deadline,
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

    c.loop = NULL;
    if (!pgg__call_begin(&c, &m, pool, intent, q, opts, info, err, cancel))
        return NULL;
    /* Through a local: c's address must go nowhere. */
    entered = c.now;
    if (pgg__pool_enter(pool, &entered, c.deadline, c.err) != PGG_OK) {
        pgg__call_refused(&c);
        return NULL;
    }
    c.now = entered;
    pgg__call_route(&c);
    /* The first candidate apart: when it serves, the call is over with
     * what the compiler knows of the state here (one attempt, no spare,
     * nothing rerouted), and the loop below is not entered.  The same
     * steps in the same order as the loop's first turn. */
    if ((h = pgg__call_next(&c, &dl)) != NULL) {
        if (attempt_on(&c, h, dl, &a)) {
            pgg__call_attempted(&c, h, &a);
            if (c.served)
                return pgg__call_finish(&c);
        } else {
            pgg__call_skipped(&c);
        }
    }
    do {
        while ((h = pgg__call_next(&c, &dl)) != NULL) {
            if (attempt_on(&c, h, dl, &a))
                pgg__call_attempted(&c, h, &a);
            else
                pgg__call_skipped(&c);
        }
    } while (pgg__call_again(&c));
    return pgg__call_finish(&c);
}

