/*
 * Internal: the pool's state, as every module that serves calls reads it
 * (hosts, config, bulkhead, the event listener, the modules' own state
 * pointers), and the small functions they share on it: events, roles, the
 * router's view, the breaker's record, the bulkhead's refusal, the error
 * of a call no host took.
 *
 * Why a module of its own: health, lease, visibility, pipeline, types,
 * autoprep and call all read struct pgg_pool, and pool.c (the attempt) and
 * pool_api.c (the public object) call them.  With the struct and these
 * functions here, below all of them, the module graph has no cycle
 * (tests/lint/module_graph.py); what the modules need of higher ones (the
 * health thread's wake) comes as a function pointer.
 */
#ifndef PGG_POOL_STATE_H
#define PGG_POOL_STATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "bulkhead.h"
#include "cache.h"
#include "classify.h"
#include "clock.h"
#include "events.h"
#include "host.h"
#include "link.h"
#include "options.h"
#include "prepared.h"
#include "router.h"

/* The state of the modules above this one, which the pool holds but this
 * module's users reach only through their own headers: pointers here. */
typedef struct pgg_health pgg_health;
typedef struct pgg_vis pgg_vis;
typedef struct pgg_pipes pgg_pipes;
typedef struct pgg_types pgg_types;

/* A listener set with pgg_pool_on_event (struct pgg_pool, listener). */
typedef struct pgg_listener {
    pgg_event_fn fn;
    void *ud;
    struct pgg_listener *next; /* every record of the pool */
} pgg_listener;

/* The health thread's wake-up as the modules below it call it (a failure
 * seen, a role changed): a pointer the pool sets when the thread starts,
 * so that they need not know health.c, which depends on them. */
typedef void (*pgg_wake_fn)(void *arg);

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
    pgg_wake_fn wake_health; /* pgg__health_wake on health (pool_api.c) */
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
    /* max_replica_lag_bytes, or PGG_LAG_NO_LIMIT for 0: a held host's
     * lag (PGG_LAG_HELD) is beyond it either way (hold.h). */
    int64_t max_lag_bytes;

    atomic_bool closed;
    /* read_your_writes=off: a plain read (no min_lsn) needs nothing of the
     * visibility module, not even its begin (call.c). */
    bool ryw_off;

    /* The listener (pgg_pool_on_event), a record published atomically: an
     * event loop's call raising an event takes no lock that the health and
     * events threads take too (a lock there made the loop wait whenever
     * one of them was preempted holding it).  Every record set stays until
     * the pool's end, one per distinct listener and userdata (ev_mu: the
     * setters only). */
    pthread_mutex_t ev_mu;
    _Atomic(pgg_listener *) listener;
    pgg_listener *listeners;
    /* Delivers the health thread's events (events.h); NULL: inline. */
    pgg_events *events;

    atomic_uint_fast64_t calls_failed;

    pgg_lease_registry leases;
};

/* Record a host's role; emits PGG_EVENT_ROLE when it changed. */
void pgg__pool_set_role(pgg_pool *pool, pgg_host *h, pgg_role role,
                        const char *reason);

/* Deliver an event to the listener, outside every lock: now, on this
 * thread, or on the events thread for the health thread's (events.h). */
void pgg__pool_emit(pgg_pool *pool, const pgg_event *ev);
/* The listener's call, now (the events thread's deliver function). */
void pgg__pool_deliver_event(void *arg, const pgg_event *ev);
/* For tests: when set, run by pgg__pool_deliver_event with the listener
 * read, before it calls it (where it used to hold ev_mu). */
typedef void (*pgg__pool_hook)(void);
extern _Atomic(pgg__pool_hook) pgg__pool_listener_read_hook;
/* Free every listener record (the pool's end). */
void pgg__pool_listeners_free(pgg_pool *pool);

/* The router's view of every host, now. */
static inline int pgg__pool_candidates(pgg_pool *pool, pgg_intent intent,
                                       int *out);
/* The same for several hosts (pool_state.c). */
int pgg__pool_candidates_of(pgg_pool *pool, pgg_intent intent, int *out);

/* A standby within max lag, or lag not known yet (-1), and not held back
 * from reads (hold.h): one comparison. */
static inline bool pgg__pool_lag_ok(const pgg_pool *pool, pgg_host *h)
{
    return atomic_load(&h->hold.lag) <= pool->max_lag_bytes;
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
    one.lag_ok = one.role == PGG_ROLE_PRIMARY || pgg__pool_lag_ok(pool, h);
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

/* The body of pgg__pool_record, inlined into the path of every call
 * (pool.c) and out of line for the others (pool_state.c). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void pgg__pool_record_at(pgg_host *h, const pgg_ticket *ticket,
                                       pgg_class cls, int64_t started_ns,
                                       int64_t now)
{
    pgg_outcome o;

    switch (cls) {
    case PGG_CLASS_SUCCESS: {
        int64_t avg = atomic_load_explicit(&h->latency_ns, memory_order_relaxed);

        atomic_fetch_add(&h->successes, 1);
        o = PGG_OUTCOME_SUCCESS;
        /* An average over about eight attempts: cheap, and quick to follow
         * a host that slows down. */
        atomic_store_explicit(&h->latency_ns,
                              avg + (now - started_ns - avg) / 8,
                              memory_order_relaxed);
        if (atomic_load_explicit(&h->suspect_until_ns, memory_order_relaxed))
            atomic_store_explicit(&h->suspect_until_ns, 0,
                                  memory_order_relaxed);
        break;
    }
    case PGG_CLASS_IGNORED:
        atomic_fetch_add(&h->ignored, 1);
        o = PGG_OUTCOME_IGNORED;
        break;
    default:
        atomic_fetch_add(&h->failures[cls], 1);
        o = PGG_OUTCOME_FAILURE;
        break;
    }
    pgg__breaker_record_held(&h->breaker, ticket, o, now - started_ns, now);
}

/* The error for a call no host took: PGG_ENOPRIMARY, or PGG_EOPEN when
 * ncand candidates all refused (ncand 0: none was eligible at all). */
int pgg__pool_no_host_error(pgg_pool *pool, pgg_intent intent, int ncand,
                            pgg_error *err);

/* The query of pgg_exec_params and pgg_async_exec_params (fn names the
 * caller in the error): PGG_EINVAL for a negative count, or parameters
 * with neither values nor types.  With no parameters it still goes by the
 * extended protocol, as the caller asked.  Inline: out of line it cost
 * every pgg_exec_params a call of ten arguments and the query's copy
 * through memory (42 instructions, tests/bench/callgrind); the refusal
 * stays out of line. */
int pgg__query_params_refused(const char *fn, int nparams, pgg_error *err);
static inline int pgg__query_params(pgg_query *q, const char *fn,
                                    const char *sql, int nparams,
                                    const Oid *types,
                                    const char *const *values,
                                    const int *lengths, const int *formats,
                                    int result_format, pgg_error *err)
{
    if (nparams < 0 || (nparams > 0 && !values && !types))
        return pgg__query_params_refused(fn, nparams, err);
    *q = (pgg_query){.sql = sql,
                     .nparams = nparams,
                     /* Parameters force the extended protocol even when
                      * there are none: types not NULL (link.c). */
                     .types = nparams == 0 && !types ? (const Oid *)"" : types,
                     .values = values,
                     .lengths = lengths,
                     .formats = formats,
                     .result_format = result_format};
    return PGG_OK;
}

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
    /* Text values only (no formats): nothing but the count to check. */
    if (q->nparams > 0 && q->nparams <= PGG_MAX_PARAMS && !q->formats)
        return PGG_OK;
    return pgg__query_check_params(q, fn, err);
}

/* Take a bulkhead slot for a call or a lease (waiting at most
 * bulkhead.max_wait_ms within the deadline); on refusal count the call as
 * failed and return PGG_EBULKHEAD.  *now: the call's clock reading, read
 * again if the call may have waited for its slot: every later step (the
 * liveness poll of an idle connection, the breaker's clock, an attempt's
 * deadline) must see the time after the wait, not before it. */
int pgg__pool_enter_slow(pgg_pool *pool, int64_t *now, int64_t deadline,
                         pgg_error *err);
static inline int pgg__pool_enter(pgg_pool *pool, int64_t *now,
                                  int64_t deadline, pgg_error *err)
{
    if (pgg__bulkhead_try_enter(&pool->bulkhead))
        return PGG_OK;
    return pgg__pool_enter_slow(pool, now, deadline, err);
}

/* The same on an event loop's thread: never waits for a slot nor for the
 * bulkhead's lock (bulkhead.c, "Loops"); refused at once. */
int pgg__pool_enter_loop_slow(pgg_pool *pool, pgg_error *err);
static inline int pgg__pool_enter_loop(pgg_pool *pool, pgg_error *err)
{
    if (pgg__bulkhead_try_enter(&pool->bulkhead))
        return PGG_OK;
    return pgg__pool_enter_loop_slow(pool, err);
}

/* The call's timeout (call->timeout_ms or the default) in ns. */
static inline int64_t pgg__pool_timeout_ns(const pgg_pool *pool,
                                           int timeout_ms)
{
    return timeout_ms > 0 ? pgg__ms_to_ns(timeout_ms) : pool->call_timeout_ns;
}

/* Wake the health thread (pgg__health_wake) from below it: probe every
 * host now.  Cheap when already woken; nothing before the thread starts or
 * after it stopped. */
static inline void pgg__pool_wake_health(pgg_pool *pool)
{
    if (pool->wake_health)
        pool->wake_health(pool->health);
}

#endif
