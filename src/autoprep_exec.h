/*
 * Internal: a one-shot call under auto_prepare, through its connection's
 * statement cache (autoprep.h); the attempt (pool.c) runs it.
 */
#ifndef PGG_AUTOPREP_EXEC_H
#define PGG_AUTOPREP_EXEC_H

#include <stdint.h>

#include <libpq-fe.h>

#include "classify.h"
#include "pool_state.h"

struct pgg_pool;
struct pgg_host;
struct pgg_link;

/*
 * Run q on l as pgg__vis_exec() does, through l's cache (created on first
 * use): plain, by name, or prepared first.  The outcome in *res, *end and
 * *err is the call's, as if it had run plain: a statement the server
 * refuses to prepare (a syntax error) fails as it would have; a connection
 * lost while preparing or deallocating is PGG_END_NOT_SENT; time used up
 * by them is PGG_END_EXPIRED.  A statement found gone (26000), or whose
 * cached plan may not change its result type (0A000, after DDL), is
 * forgotten and the call runs plain at once: it never started.  now: the
 * path's clock reading, taken after anything that waited (0: none), for
 * the first wait's backstop of an exec sent before any round trip of
 * ours (as pgg__link_exec_at's).
 */
int pgg__autoprep_exec(struct pgg_pool *pool, struct pgg_host *h,
                       struct pgg_link *l, const struct pgg_query *q,
                       int64_t deadline, int64_t now, PGresult **res,
                       pgg_attempt_end *end, pgg_error *err);

#endif
