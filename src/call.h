/*
 * Internal: the path of one call as a state machine (docs/DESIGN.md, "The
 * path of one call").  A pgg__call holds what the path needs between its
 * steps: the intent and query, the deadline, the candidates and where the
 * call is among them, the attempts so far, the spare answer and the
 * outcome.  Every step here decides and records; none waits.  The waits
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

#include "pool.h"

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
    pgg_vis_req vr;
    pgg_query qv;
    int cand[PGG_MAX_HOSTS];
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
    /* On an event loop: the path never waits inside a step (no health
     * round awaited on a reroute, no read-your-writes wait). */
    bool on_loop;
    bool served;    /* an answer (success or the caller's error) is the outcome */
    bool final;     /* no further attempt: the outcome is err */
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

/*
 * Check the arguments, the pool and the cancel handle; set the deadline.
 * m: the call's memory part, the driver's, as long-lived as c.
 * Returns false when the call is already over (err says why; the bulkhead
 * was not entered): the driver returns NULL.
 */
bool pgg__call_begin(pgg__call *c, pgg__call_mem *m, pgg_pool *pool,
                     pgg_intent intent, const pgg_query *q,
                     const pgg_call *opts, pgg_info *info, pgg_error *err,
                     pgg_cancel *cancel);

/* The bulkhead refused the call (pgg__pool_enter filled err): the call is
 * over. */
void pgg__call_refused(pgg__call *c);

/* Inside the bulkhead: the candidates, in the order to try them. */
void pgg__call_route(pgg__call *c);

/*
 * The host to try next and the attempt's deadline, or NULL when this pass
 * is over (served, final, or no candidate left).  Reads the cancel handle
 * and the deadline first.
 */
pgg_host *pgg__call_next(pgg__call *c, int64_t *attempt_deadline);

/* The host given by next was skipped without an attempt (its breaker
 * refused, wrong role, no connection free). */
void pgg__call_skipped(pgg__call *c);

/* The host given by next made attempt a (its verdict recorded by
 * pgg__pool_exec_done or by a failed connect): serve it, keep it as the
 * spare, or move on.  Takes a->res. */
void pgg__call_attempted(pgg__call *c, pgg_host *h, pgg__attempt *a);

/* Nothing served this pass: another pass (a read waiting for a replica to
 * replay its position, then the primary)?  Blocking drivers may wait here;
 * on a loop it never waits. */
bool pgg__call_again(pgg__call *c);

/* The outcome: the spare answer, the no-host error, the cache, the
 * bulkhead slot given back, info.  Returns the result (or NULL). */
PGresult *pgg__call_finish(pgg__call *c);

/* The blocking driver: the whole call on this thread. */
PGresult *pgg__call_run(pgg_pool *pool, pgg_intent intent, const pgg_query *q,
                        const pgg_call *opts, pgg_info *info, pgg_error *err,
                        pgg_cancel *cancel);

/* Field by field: the record is ~1 kB and this runs on every call. */
void pgg__info_reset(pgg_info *info);

/* err = PGG_ECANCELED, "call cancelled by the caller". */
void pgg__call_cancelled(pgg_error *err);

#endif
