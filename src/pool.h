/*
 * Internal: the pool object shared by pool.c (the path of one call),
 * lease.c, health.c (the background thread) and metrics.c.
 */
#ifndef PGG_POOL_H
#define PGG_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "bulkhead.h"
#include "cache.h"
#include "classify.h"
#include "clock.h"
#include "host.h"
#include "link.h"
#include "options.h"
#include "pipeline.h"
#include "prepared.h"
#include "router.h"
#include "types.h"
#include "visibility.h"

typedef struct pgg_health pgg_health;

/* The leases out (lease.c): their age for stats, leak events, and what
 * pgg_pool_free does with the ones never released.  mu guards the list and
 * each listed lease's registry fields. */
typedef struct pgg_lease_registry {
    pthread_mutex_t mu;
    struct pgg_lease *head;
    int count;
    atomic_uint_fast64_t leaks; /* leases reported held past lease_leak_ms */
} pgg_lease_registry;

/* What a breaker listener needs to find its pool and host. */
typedef struct pgg_host_ref {
    struct pgg_pool *pool;
    int index;
} pgg_host_ref;

struct pgg_pool {
    pgg_config *cfg; /* the pool's own copy */
    const pgg_clock *clock;
    int nhosts;
    pgg_host *hosts;
    pgg_host_ref *refs;
    /* Every call reads the fields above and CASes the bulkhead's state
     * twice: keep them on different lines (pools come from calloc, so
     * padding, not alignment; the bulkhead pads after its own). */
    char pad_bulkhead[128];
    pgg_bulkhead bulkhead;
    pgg_canceller *canceller;
    pgg_watchdog *watchdog; /* the deadlines of calls' socket waits */
    pgg_health *health;
    pgg_cache *cache;
    pgg_vis *vis; /* read your writes: positions known, waiting readers */
    pgg_pipes *pipes; /* pipeline=on: the shared pipelined links; NULL off */
    pgg_prepared prepared;
    pgg_types *types; /* NULL without libpqtypes */
    /* Prepare connections for libpqtypes: types.enabled, or set for good by
     * the first typed call.  Off by default because libpqtypes' result
     * event costs every result it does not serve about a microsecond. */
    atomic_bool types_on;
    char *user, *dbname; /* whose rows the cache holds */

    /* The tracer (pgg_config_on_trace), fixed for the pool's life. */
    bool traced;
    pgg_trace_start_fn trace_start;
    pgg_trace_end_fn trace_end;
    void *trace_ud;

    pgg_read_policy read_policy;
    int max_attempts;
    int64_t attempt_timeout_ns; /* 0: none, or adaptive (attempt_auto) */
    bool attempt_auto;
    int64_t call_timeout_ns;
    int64_t bulkhead_wait_ns;
    int64_t max_lag_bytes; /* 0: no limit */

    atomic_bool closed;
    /* read_your_writes=off: a plain read (no min_lsn) needs nothing of the
     * visibility module, not even its begin (call.c). */
    bool ryw_off;

    pthread_mutex_t ev_mu;
    pgg_event_fn ev_fn;
    void *ev_ud;

    atomic_uint_fast64_t calls_failed;

    pgg_lease_registry leases;
};

/* Record a host's role; emits PGG_EVENT_ROLE when it changed. */
void pgg__pool_set_role(pgg_pool *pool, pgg_host *h, pgg_role role,
                        const char *reason);
/* The tracer's two calls (trace.c): t holds the call's kind, intent and
 * SQL; begin returns the span, finish fills the end fields from info and
 * err and hands the span back. */
void *pgg__trace_begin(pgg_pool *pool, pgg_trace *t);
void pgg__trace_finish(pgg_pool *pool, pgg_trace *t, void *span,
                       const pgg_info *info, const pgg_error *err);

/* Deliver an event to the listener, outside every lock. */
void pgg__pool_emit(pgg_pool *pool, const pgg_event *ev);

/* The router's view of every host, now. */
static inline int pgg__pool_candidates(pgg_pool *pool, pgg_intent intent,
                                       int *out);
/* The same for several hosts (pool.c). */
int pgg__pool_candidates_of(pgg_pool *pool, pgg_intent intent, int *out);

/* A standby within max lag, or lag not known yet. */
static inline bool pgg__pool_lag_ok(const pgg_pool *pool, pgg_host *h)
{
    int64_t lag = atomic_load(&h->lag_bytes);

    return pool->max_lag_bytes == 0 || lag < 0 || lag <= pool->max_lag_bytes;
}

static inline int pgg__pool_candidates(pgg_pool *pool, pgg_intent intent,
                                       int *out)
{
    pgg_route_host one;
    pgg_host *h;

    if (pool->nhosts != 1)
        return pgg__pool_candidates_of(pool, intent, out);
    /* Nothing to order: only whether the host may serve (the router's rule
     * for one host), without a snapshot of what orders. */
    h = &pool->hosts[0];
    one.role = (pgg_role)atomic_load_explicit(&h->role, memory_order_relaxed);
    one.lag_ok = one.role != PGG_ROLE_STANDBY || pgg__pool_lag_ok(pool, h);
    if (pgg__route_group(intent, pool->read_policy, &one) < 0)
        return 0;
    out[0] = 0;
    return 1;
}

/* Turn a verdict into a breaker outcome and host counters; the call ran
 * from started_ns to now_ns. */
void pgg__pool_record(pgg_pool *pool, pgg_host *h, pgg_ticket ticket,
                      pgg_class cls, int64_t started_ns, int64_t now_ns);

/* Does this class count against the host (connection, timeout,
 * unavailable)? */
static inline bool pgg__host_failure(pgg_class cls)
{
    return cls == PGG_CLASS_CONNECTION || cls == PGG_CLASS_TIMEOUT ||
           cls == PGG_CLASS_UNAVAILABLE;
}

/* One attempt of a call on one host, as run() weighs it (pool.c's
 * attempt_on, or pipeline.c's for a shared connection). */
typedef struct pgg_attempt {
    PGresult *res;
    pgg_verdict v;
    pgg_attempt_end end;
    int64_t ended; /* clock when it finished; 0 when it never ran */
    bool reused;   /* ran on a pooled connection, not a new one */
    bool lost;     /* ... and that session is gone now */
} pgg_attempt;

typedef enum pgg_take {
    PGG_TAKE_OK,      /* *l and *ticket are held: record the ticket once */
    PGG_TAKE_SKIPPED, /* not an attempt: breaker refused, wrong role, pool busy */
    PGG_TAKE_FAILED   /* connecting failed; recorded against the host */
} pgg_take;

/* Breaker admission, borrow (maybe connect), role check on one host;
 * now is the caller's clock reading. */
pgg_take pgg__pool_take(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                        int64_t deadline, int64_t now, pgg_link **l,
                        pgg_ticket *ticket, bool *rejected, pgg_error *err);

/* The two halves of pgg__pool_take after admission, for a loop driver
 * that borrows and connects without waiting: a failed borrow (why) recorded
 * and classified (SKIPPED or FAILED), and the role check of a borrowed
 * connection (OK, or SKIPPED with the link given back). */
pgg_take pgg__pool_take_failed(pgg_pool *pool, pgg_host *h, pgg_ticket ticket,
                               int64_t start, pgg_borrow_fail why,
                               pgg_error *err);
pgg_take pgg__pool_taken(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                         pgg_link **l, pgg_ticket ticket, int64_t start);

#if PGG_HAVE_LIBPQTYPES
/* The last step of pgg__pool_take when typed calls are on (types_on), for
 * both drivers: the connection's libpqtypes preparation failed (err: why;
 * the link is discarded, recorded as the host's failure or not: SKIPPED or
 * FAILED), or it is done (OK, or SKIPPED with the link given back when
 * now, the clock after it, is past deadline). */
pgg_take pgg__pool_types_failed(pgg_pool *pool, pgg_host *h, pgg_link **l,
                                pgg_ticket ticket, int64_t start,
                                pgg_error *err);
pgg_take pgg__pool_types_ready(pgg_pool *pool, pgg_host *h, pgg_link **l,
                               pgg_ticket ticket, int64_t start,
                               int64_t deadline, int64_t now, pgg_error *err);
#endif

/*
 * Run q on a taken connection, classify, record the ticket (when not NULL).
 * When the deadline fired the link is abandoned and *lp set to NULL;
 * otherwise the caller still holds it.  *ended is the clock when it
 * finished (one reading serves the breaker, the pool and the caller).
 */
pgg_verdict pgg__pool_exec_on(pgg_pool *pool, pgg_host *h, pgg_link **lp,
                              pgg_intent intent, const pgg_query *q,
                              int64_t deadline, const pgg_ticket *ticket,
                              int64_t started, PGresult **res,
                              pgg_attempt_end *end, int64_t *ended,
                              pgg_error *err);

/*
 * One attempt of the blocking driver on a connection of its own: admit
 * (breaker), take (pgg__pool_take), exec (pgg__pool_exec_on), give back.
 * now: the path's latest clock reading, the attempt's start.  Returns false
 * when the host was skipped without an attempt (breaker refused, wrong
 * role, pool exhausted); otherwise *a is the attempt (its verdict
 * recorded).
 */
bool pgg__pool_attempt(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                       const pgg_query *q, int64_t deadline, int64_t now,
                       bool *rejected, pgg_error *err, pgg_attempt *a);

/*
 * The second half of pgg__pool_exec_on, for drivers that ran the query
 * themselves (an event loop): res and end are the attempt's (res stays the
 * caller's), role the host's role read before it was sent.  Classify,
 * learn the role, record the ticket, drop the link when its state is
 * unknown (*lp NULL), exactly as after a blocking exec.
 */
/*
 * The judgement of an attempt's answer, one copy for every driver (a
 * connection of its own, a shared pipelined one, the event loop):
 * - pgg__verdict_callers: an error the server answered on a session that
 *   stays usable (08P01 for a bad parameter count, 25006 from a server
 *   that is still primary) is the caller's: not the host's, not retried.
 * - pgg__pool_reported_role: what the server reports after a query
 *   (in_hot_standby) re-routes at once, and clears a 25006 from a primary.
 * - pgg__pool_reprobe: a write refused as read-only marks the host standby
 *   and wakes the health round.
 * - pgg__pool_settle: the breaker's record (rec: PGG_CLASS_IGNORED for a
 *   pooled session found dead or a statement never sent) and, when the
 *   server ended a session, the host's idle siblings trimmed.
 * - pgg__pool_settle_error: err's code from the verdict, and the host's
 *   last error unless the attempt was ignored.
 */
void pgg__verdict_callers(pgg_verdict *v);
void pgg__pool_reported_role(pgg_pool *pool, pgg_host *h, int role,
                             pgg_role reported, pgg_verdict *v);
void pgg__pool_reprobe(pgg_pool *pool, pgg_host *h, const pgg_verdict *v);
void pgg__pool_settle(pgg_pool *pool, pgg_host *h, const pgg_ticket *ticket,
                      pgg_class rec, bool ended_by_server, int64_t started,
                      int64_t ended);
void pgg__pool_settle_error(pgg_host *h, pgg_verdict v, bool ignored,
                            pgg_error *err);

pgg_verdict pgg__pool_exec_done(pgg_pool *pool, pgg_host *h, pgg_link **lp,
                                pgg_intent intent, const pgg_ticket *ticket,
                                int role, int64_t started, PGresult *res,
                                pgg_attempt_end end, int64_t *ended,
                                pgg_error *err);

/* The error for a call no host took: PGG_ENOPRIMARY, or PGG_EOPEN when
 * ncand candidates all refused (ncand 0: none was eligible at all). */
/* The query of the statement registered as name (pgg_pool_prepare), for
 * pgg_exec_prepared and pgg_async_exec_prepared (fn names the caller in
 * the error): PGG_EINVAL when there is none. */
int pgg__pool_prepared_query(pgg_pool *pool, const char *fn,
                             const char *name, int nparams,
                             const char *const *values, const int *lengths,
                             const int *formats, const pgg_call *call,
                             pgg_query *q, pgg_error *err);

int pgg__pool_no_host_error(pgg_pool *pool, pgg_intent intent, int ncand,
                            pgg_error *err);

/* Arguments libpq would refuse to send (a parameter count out of
 * 0..65535, a binary value without a length or with a negative one):
 * PGG_EINVAL before any host is touched, so a caller's mistake never
 * counts against a host.  fn names the public function in the message. */
int pgg__query_check_params(const pgg_query *q, const char *fn,
                            pgg_error *err);
static inline int pgg__query_check(const pgg_query *q, const char *fn,
                                   pgg_error *err)
{
    if (q->nparams == 0)
        return PGG_OK; /* nothing to check: the call of every pgg_exec */
    return pgg__query_check_params(q, fn, err);
}

/* The connection a lease holds (NULL once broken by a timeout). */
pgg_link *pgg__lease_link(pgg_lease *lease);

/* For helpers running their own protocol on a lease (copy.c, notify.c):
 * its live, idle connection, server name and the deadline timeout_ms gives
 * (<= 0: call_timeout_ms), or the error (orphan, broken, busy), fn naming
 * the public function. */
int pgg__lease_use(pgg_lease *lease, const char *fn, int timeout_ms, PGconn **conn,
                   const char **host, int64_t *deadline, pgg_error *err);
/* The helper's session broke (abandon false: discarded at release) or is
 * in an unknown state (abandon true: closed now, its query cancelled from
 * the canceller); later calls on the lease fail with PGG_ECONNECT. */
void pgg__lease_fail(pgg_lease *lease, bool abandon);
/* The lease waited for notifications: its session may hold LISTEN
 * registrations, so without lease_reset it is not pooled again. */
void pgg__lease_mark_listener(pgg_lease *lease);
/* The lease ran what pgguard cannot follow (a COPY): under
 * read_your_writes=pool a write lease learns the pool's position when it
 * is released. */
void pgg__lease_mark_unsettled(pgg_lease *lease);

/* Take a bulkhead slot for a call or a lease (waiting at most
 * bulkhead.max_wait_ms within the deadline); on refusal count the call as
 * failed and return PGG_EBULKHEAD. */
int pgg__pool_enter_refused(pgg_pool *pool, pgg_error *err);
static inline int pgg__pool_enter(pgg_pool *pool, int64_t start,
                                  int64_t deadline, pgg_error *err)
{
    int64_t wait_until = start + pool->bulkhead_wait_ns;

    if (pgg__bulkhead_enter(&pool->bulkhead,
                            wait_until < deadline ? wait_until : deadline,
                            start) == PGG_OK)
        return PGG_OK;
    return pgg__pool_enter_refused(pool, err);
}

/* The call's timeout (call->timeout_ms or the default) in ns. */
static inline int64_t pgg__pool_timeout_ns(const pgg_pool *pool,
                                           int timeout_ms)
{
    return timeout_ms > 0 ? pgg__ms_to_ns(timeout_ms) : pool->call_timeout_ns;
}

/* Lease registry (lease.c).  init: first thing in pgg_pool_new;
 * orphan: pgg_pool_free, after the health thread stopped and before the
 * hosts close (each lease still out is reported, its connection closed, its
 * bulkhead slot returned; pgg_release later frees it); destroy: last. */
void pgg__leases_init(pgg_pool *pool);
void pgg__leases_orphan(pgg_pool *pool);
void pgg__leases_destroy(pgg_pool *pool);
/* Report (PGG_EVENT_LEASE_LEAK, once each) leases held past lease_leak_ms;
 * the health thread calls it every round. */
void pgg__leases_check(pgg_pool *pool, int64_t now_ns);
/* leases_out, lease_oldest_ms and lease_leaks of pgg_stats. */
void pgg__leases_stats(pgg_pool *pool, pgg_stats *out);

#endif
