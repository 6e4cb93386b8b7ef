/*
 * The primary's WAL position for read_your_writes=sampled (sample.h): a
 * short call of its own, one attempt per primary the router offers.  Apart
 * from visibility.c, which leads and shares the samples, because it runs
 * attempts (pool.c), and the attempt runs visibility's exec.
 */
#include "sample.h"

#include "error.h"
#include "pool.h"

/* One sample on a primary the router offers: returns PGG_OK with *lsn,
 * or the failure in err.  A pooled session found dead is tried once more
 * on a new connection, as a call would. */
int pgg__sample_primary(pgg_pool *pool, int64_t deadline, uint64_t *lsn,
                        pgg_error *err)
{
    int cand[PGG_MAX_HOSTS];
    int n = pgg__pool_candidates(pool, PGG_WRITE, cand);
    bool rejected = false;
    int again = -1;

    for (int k = 0; k < n; k++) {
        pgg_host *h = &pool->hosts[cand[k]];
        pgg_vis_req sr = {.is_sample = true};
        pgg_query sq = {.sql = pgg__vis_lsn_query()->sql, .vis = &sr};
        int64_t now = pgg__now_ns(), ended;
        PGresult *res = NULL;
        pgg_attempt_end end;
        pgg_ticket ticket;
        pgg_link *l;
        bool reused;

        if (now >= deadline)
            return pgg__error_set(err, PGG_ETIMEDOUT, NULL, NULL,
                                  "read your writes: deadline exceeded "
                                  "before the primary's position was known");
        if (pgg__pool_take(pool, h, PGG_WRITE, deadline, now, &l, &ticket,
                           &rejected, err) != PGG_TAKE_OK)
            continue;
        reused = !l->fresh;
        pgg__pool_exec_on(pool, h, &l, PGG_WRITE, &sq, deadline, &ticket, now,
                          &res, &end, &ended, err);
        PQclear(res);
        if (l)
            pgg__host_give_back(h, l, ended);
        if (end == PGG_END_RESULT && sr.lsn) {
            *lsn = sr.lsn;
            pgg__error_reset(err);
            return PGG_OK;
        }
        if (reused && (end == PGG_END_LOST || end == PGG_END_NOT_SENT) &&
            again != k) {
            again = k;
            k--;
        }
    }
    if (err->code == PGG_OK)
        pgg__pool_no_host_error(pool, PGG_WRITE, rejected ? n : 0, err);
    return err->code;
}
