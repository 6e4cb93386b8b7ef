/*
 * The pool's state shared by the modules that serve calls (pool_state.h):
 * events, roles, the router's view of the hosts, the breaker's record, the
 * bulkhead's refusal, the error of a call no host took.
 */
#include "pool_state.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "tls.h"

_Atomic(pgg__pool_hook) pgg__pool_listener_read_hook;

void pgg__pool_deliver_event(void *arg, const pgg_event *ev)
{
    pgg_pool *pool = arg;
    pgg_listener *l = atomic_load_explicit(&pool->listener, memory_order_acquire);
    pgg__pool_hook hook = atomic_load_explicit(&pgg__pool_listener_read_hook,
                                               memory_order_relaxed);

    if (hook)
        hook();
    if (l)
        l->fn(ev, l->ud);
}

void pgg__pool_emit(pgg_pool *pool, const pgg_event *ev)
{
    /* The health thread's go to the events thread (events.h). */
    if (atomic_load_explicit(&pool->listener, memory_order_relaxed) &&
        !pgg__events_queue(pool->events, ev))
        pgg__pool_deliver_event(pool, ev);
}

void pgg_pool_on_event(pgg_pool *pool, pgg_event_fn fn, void *userdata)
{
    pgg_listener *l = NULL;

    if (!pool)
        return;
    /* The health thread's events raised before this call go to the
     * listener they were raised under, as when it delivered them. */
    pgg__events_flush(pool->events);
    pthread_mutex_lock(&pool->ev_mu);
    if (fn) {
        /* A record is never changed nor freed while the pool lives (a
         * reader may hold it): one per distinct pair, reused. */
        for (l = pool->listeners; l && (l->fn != fn || l->ud != userdata); l = l->next)
            ;
        if (!l && (l = malloc(sizeof *l))) {
            l->fn = fn;
            l->ud = userdata;
            l->next = pool->listeners;
            pool->listeners = l;
        }
        /* Out of memory: no listener rather than the previous one. */
    }
    atomic_store_explicit(&pool->listener, l, memory_order_release);
    pthread_mutex_unlock(&pool->ev_mu);
}

void pgg__pool_listeners_free(pgg_pool *pool)
{
    while (pool->listeners) {
        pgg_listener *next = pool->listeners->next;

        free(pool->listeners);
        pool->listeners = next;
    }
    atomic_store(&pool->listener, NULL);
}

void pgg__pool_set_role(pgg_pool *pool, pgg_host *h, pgg_role role,
                        const char *reason)
{
    int old = atomic_load(&h->role);
    pgg_event ev = {0};

    if (old == (int)role)
        return;
    if (!atomic_compare_exchange_strong(&h->role, &old, (int)role))
        return; /* someone else recorded a change first; theirs is as fresh */
    if (role == PGG_ROLE_UNKNOWN)
        /* Its lag is not known either; a hold stays (hold.h): a read must
         * not reach a standby that went back through its unknown role. */
        pgg__hold_lag(&h->hold, -1);
    if (role == PGG_ROLE_PRIMARY) {
        /* A primary has every record it wrote: never held. */
        pgg__hold_lag(&h->hold, 0);
        (void)pgg__hold_release(&h->hold);
        /* Found: answers are looked at at the usual pace again. */
        for (int i = 0; i < pool->nhosts; i++)
            atomic_store_explicit(&pool->hosts[i].seek_primary_until_ns, 0,
                                  memory_order_relaxed);
    }
    ev.type = PGG_EVENT_ROLE;
    ev.host_index = h->index;
    ev.host = h->name;
    ev.from = old;
    ev.to = (int)role;
    ev.reason = reason;
    pgg__pool_emit(pool, &ev);
}

/* Ties between equally good hosts rotate per thread: a shared counter
 * would bounce one cache line between every core on every call, for no
 * better spread. */
static PGG_TLS unsigned route_rotate;

int pgg__pool_candidates_of(pgg_pool *pool, pgg_intent intent, int *out)
{
    pgg_route_host snap[PGG_MAX_HOSTS];

    for (int i = 0; i < pool->nhosts; i++) {
        pgg_host *h = &pool->hosts[i];

        snap[i].role = (pgg_role)atomic_load(&h->role);
        snap[i].state = pgg__breaker_state(&h->breaker);
        snap[i].lag_ok = pgg__pool_lag_ok(pool, h);
        snap[i].busy = pgg__host_busy(h);
    }
    return pgg__route(intent, pool->read_policy, snap, pool->nhosts,
                      route_rotate++, out);
}

void pgg__pool_record(pgg_pool *pool, pgg_host *h, pgg_ticket ticket,
                      pgg_class cls, int64_t started_ns, int64_t now)
{
    (void)pool;
    pgg__pool_record_at(h, &ticket, cls, started_ns, now);
}

int pgg__query_params_refused(const char *fn, int nparams, pgg_error *err)
{
    return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                          "%s: %d parameters but no values", fn, nparams);
}

int pgg__query_check_params(const pgg_query *q, const char *fn,
                            pgg_error *err)
{
    if (q->nparams < 0 || q->nparams > PGG_MAX_PARAMS)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "%s: %d parameters (0..%d)", fn, q->nparams,
                              PGG_MAX_PARAMS);
    if (!q->values || !q->formats)
        return PGG_OK;
    for (int i = 0; i < q->nparams; i++) {
        if (q->values[i] && q->formats[i] != 0 &&
            (!q->lengths || q->lengths[i] < 0))
            return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                                  "%s: binary parameter $%d needs a length "
                                  "(lengths[%d] >= 0)",
                                  fn, i + 1, i);
    }
    return PGG_OK;
}

/* How long a write that found no primary has every answer looked at
 * (each such write extends it; a primary found ends it). */
#define SEEK_PRIMARY_NS (100 * PGG_NS_PER_MS)

/*
 * A write (or a read of the primary) found no primary to take it: the old
 * one is down or demoted, and a standby may be being promoted.  A session
 * on the promoted server says so with its next answer (in_hot_standby),
 * which is read at most once per host every PGG__ROLE_SEEN_NS: between
 * two looks the reads that keep flowing to it re-routed nothing, and a
 * libpq multi-host client, which checks each server at connect, wrote up
 * to that much sooner.  So, until a primary is found, every answer is
 * looked at (pool.c), at the cost of a list walk per answer during the
 * outage only.
 */
static void seek_primary(pgg_pool *pool)
{
    int64_t until = pgg__now_ns() + SEEK_PRIMARY_NS;

    for (int i = 0; i < pool->nhosts; i++) {
        pgg_host *h = &pool->hosts[i];

        atomic_store_explicit(&h->seek_primary_until_ns, until,
                              memory_order_relaxed);
        atomic_store_explicit(&h->role_seen_ns, 0, memory_order_relaxed);
    }
}

/* The error for "every candidate refused". */
int pgg__pool_no_host_error(pgg_pool *pool, pgg_intent intent, int ncand,
                            pgg_error *err)
{
    if (intent != PGG_READ)
        seek_primary(pool);
    if (ncand == 0 && intent != PGG_READ) {
        /* No primary known: the health thread looks now, not in a second. */
        pgg__pool_wake_health(pool);
        return pgg__error_set(err, PGG_ENOPRIMARY, NULL, NULL,
                              "no primary among %d host%s (none reports "
                              "itself primary and none is of unknown role)",
                              pool->nhosts, pool->nhosts == 1 ? "" : "s");
    }
    if (ncand == 0)
        return pgg__error_set(err, PGG_EOPEN, NULL, NULL,
                              "no eligible host for a read among %d (roles, "
                              "lag and read_policy exclude them all)",
                              pool->nhosts);
    /* Every breaker open: demand is waiting, so the health thread probes
     * now; a host that answers lets trial calls in at once. */
    pgg__pool_wake_health(pool);
    return pgg__error_set(err, PGG_EOPEN, NULL, NULL,
                          "no eligible host: the circuit breaker of every "
                          "candidate (%d) is open",
                          ncand);
}

/* A call refused by the bulkhead: counted failed. */
static int bulkhead_refused(pgg_pool *pool, pgg_error *err)
{
    atomic_fetch_add(&pool->calls_failed, 1);
    return pgg__error_set(err, PGG_EBULKHEAD, NULL, NULL,
                          "bulkhead full: %d calls in flight",
                          pgg__bulkhead_capacity(&pool->bulkhead));
}

int pgg__pool_enter_slow(pgg_pool *pool, int64_t *now, int64_t deadline,
                         pgg_error *err)
{
    int64_t wait_until = *now + pool->bulkhead_wait_ns;

    if (pgg__bulkhead_enter_slow(&pool->bulkhead,
                                 wait_until < deadline ? wait_until : deadline,
                                 *now) == PGG_OK) {
        *now = pgg__now_ns();
        return PGG_OK;
    }
    return bulkhead_refused(pool, err);
}

int pgg__pool_enter_loop_slow(pgg_pool *pool, pgg_error *err)
{
    int rc = pgg__bulkhead_enter_loop_slow(&pool->bulkhead);

    if (rc == PGG_OK)
        return PGG_OK;
    return bulkhead_refused(pool, err);
}
