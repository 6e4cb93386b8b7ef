/*
 * Internal: a one-shot call under auto_prepare, through its connection's
 * statement cache (autoprep.h); the attempt (pool.c) runs it.
 */
#ifndef PGG_AUTOPREP_EXEC_H
#define PGG_AUTOPREP_EXEC_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "autoprep.h"
#include "classify.h"
#include "pool_state.h"

struct pgg_pool;
struct pgg_host;
struct pgg_link;

/*
 * A call under auto_prepare on l, in two halves around its exec, which the
 * attempt runs inline (pool.c).  The first consults l's cache (created on
 * first use) and returns the query to run: q itself (plain), or *named,
 * q by name (*cached: the cache said so; else prepared just now); or NULL
 * when the call is over already, its outcome in *res, *end and *err as if
 * it had run plain: the call that prepares its statement ran it in the
 * same round trip (but under read-your-writes); a statement the server
 * refuses to prepare (a syntax error) fails as it would have; a connection
 * lost while deallocating (or preparing alone) is PGG_END_NOT_SENT; time
 * used up by them is PGG_END_EXPIRED.  *now: the path's clock reading, taken after anything
 * that waited (0: none), for the first wait's backstop of an exec sent
 * before any round trip of ours (as pgg__link_exec_mode's); updated, or 0,
 * after a round trip of ours.
 */
const pgg_query *pgg__autoprep_begin_slow(struct pgg_pool *pool,
                                         struct pgg_host *h,
                                         struct pgg_link *l,
                                         const struct pgg_query *q,
                                         struct pgg_query *named,
                                         int64_t deadline, int64_t *now,
                                         bool *cached, PGresult **res,
                                         pgg_attempt_end *end, pgg_error *err);
/* The common case inline (the statement run last on an idle session, run
 * again: no round trip of ours); the rest in pgg__autoprep_begin_slow.
 * one_shot: l was just taken for a one-shot call, so its session is idle
 * outside a transaction block (a pooled session is lent only so,
 * pgg__link_reusable at its give-back, and a new one too, whose on_connect
 * hook may not leave a transaction open: pgg__host_hook_usable), and
 * libpq need not be asked; a lease's statement asks. */
static inline const pgg_query *
pgg__autoprep_begin(struct pgg_pool *pool, struct pgg_host *h,
                    struct pgg_link *l, const struct pgg_query *q,
                    struct pgg_query *named, int64_t deadline, int64_t *now,
                    bool one_shot, bool *cached, PGresult **res,
                    pgg_attempt_end *end, pgg_error *err)
{
    const char *name;

    /* In a transaction block the slow half runs the call as it is. */
    if (l->autoprep &&
        (one_shot || PQtransactionStatus(l->conn) == PQTRANS_IDLE) &&
        (name = pgg__autoprep_again(l->autoprep, q)) != NULL) {
        *cached = true;
        *named = *q;
        named->stmt_name = name;
        return named;
    }
    return pgg__autoprep_begin_slow(pool, h, l, q, named, deadline, now,
                                    cached, res, end, err);
}

/*
 * The second half, only when a run by name the cache said (*cached) came
 * back with an error (*end PGG_END_RESULT): a statement found gone
 * (26000), or whose cached plan may not change its result type (0A000,
 * after DDL), is forgotten (name: the one it ran by) and q runs plain at
 * once, its outcome replacing *res, *end and *err: it never started.  Any
 * other error stands.
 */
void pgg__autoprep_failed(struct pgg_pool *pool, struct pgg_host *h,
                          struct pgg_link *l, const struct pgg_query *q,
                          const char *name, int64_t deadline, PGresult **res,
                          pgg_attempt_end *end, pgg_error *err);

#endif
