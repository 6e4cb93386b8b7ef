/*
 * Internal: pipelining concurrent one-shot calls (the `pipeline=on` key).
 *
 * Calls to the same host that run at the same moment share one connection
 * in libpq pipeline mode, each statement followed by its own Sync, so that
 * each stays its own implicit transaction and a failure aborts no
 * neighbour.  A caller enqueues its request and blocks (its query's
 * pointers stay valid); one of the callers is the leader, which sends
 * everything queued, reads the results in order and hands each to its
 * waiter; the others wait on their own condition variable.  When the
 * leader's own answer has come, leadership passes to the oldest caller
 * still waiting; the last one gives the connection back to the host.
 *
 * Every call keeps its own deadline, breaker ticket, classification and
 * retry (on the next host, in run() as today):
 *   - a waiter whose deadline passes leaves with PGG_ETIMEDOUT: not sent
 *     (still queued) or sent (its answer is discarded when it comes);
 *   - the connection is hung when its oldest statement is past that
 *     statement's deadline: it is dropped (and cancelled) and every
 *     statement in flight on it fails as sent (a write's outcome unknown,
 *     never retried), queued ones as not sent;
 *   - a connection that breaks fails its statements the same way.
 *
 * What is not pipelined takes today's path: a call alone on its host (no
 * connection of it busy, no shared link: nothing to share), simple-protocol
 * text that may hold several statements, statements other than SELECT /
 * WITH / VALUES / TABLE / INSERT / UPDATE / DELETE / MERGE (transaction
 * control would reach the neighbours), calls with a cancel handle or
 * read-your-writes
 * needs, hosts whose breaker is open or half-open, and calls arriving
 * while the shared connection is being set up, is full, or has had its
 * oldest statement in flight for pipeline.stall_ms (the server runs a
 * connection's statements in order: a call would wait out a slow one).
 */
#ifndef PGG_PIPELINE_H
#define PGG_PIPELINE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "link.h"
#include "pgguard.h"

struct pgg_pool;
struct pgg_host;
struct pgg_attempt;

typedef struct pgg_pipes pgg_pipes;

/* per_host shared links per host (a thread keeps to one of them); a call
 * does not join one whose oldest statement has been in flight stall_ns
 * (0: it always may).  NULL with err set when out of memory. */
pgg_pipes *pgg__pipes_new(int nhosts, int per_host, int64_t stall_ns,
                          pgg_error *err);
/* Every call has returned, so no link is held any more.  Accepts NULL. */
void pgg__pipes_free(pgg_pipes *ps);
/* For tests (the loop guard): how many pipes, and pipe i's lock. */
int pgg__pipes_count(const pgg_pipes *ps);
pthread_mutex_t *pgg__pipes_mutex(pgg_pipes *ps, int i);

/* What pgg__pipe_attempt did. */
typedef enum pgg_pipe_did {
    PGG_PIPE_BYPASS,    /* nothing: run the attempt the usual way */
    PGG_PIPE_SKIPPED,   /* the host was skipped without an attempt */
    PGG_PIPE_ATTEMPTED  /* *a holds the attempt's outcome, recorded */
} pgg_pipe_did;

/*
 * One attempt of q on host h through its shared pipelined connection:
 * breaker admission, enqueue, wait (or lead) until the answer or deadline,
 * classify and record, as attempt_on() in pool.c does for a connection of
 * its own.
 */
pgg_pipe_did pgg__pipe_attempt(struct pgg_pool *pool, struct pgg_host *h,
                               pgg_intent intent, const pgg_query *q,
                               int64_t deadline, int64_t start,
                               struct pgg_attempt *a, bool *rejected,
                               pgg_error *err);

/*
 * Pure: may this statement share a connection with others?  simple: sent
 * by the simple protocol today (pgg_exec), where a string may hold several
 * statements: then one statement only (a ';' may end it).  The first word
 * must be one of the statements listed above.
 */
bool pgg__pipe_sql_ok(const char *sql, bool simple);

/* May this call's statement share a connection on h now?  Its SQL
 * (pgg__pipe_sql_ok), no read-your-writes needs, not a prepare, no cancel
 * handle current, and h's breaker closed (half-open trials stay one by
 * one).  Both drivers ask it: this file and the loop (async.c). */
bool pgg__pipe_query_ok(struct pgg_host *h, const pgg_query *q);

/* Statements sent through shared connections so far (tests, stats). */
uint64_t pgg__pipes_sent(const pgg_pipes *ps);

#endif
