/*
 * The pool's state shared by the modules that serve calls (pool_state.h):
 * events, roles, the router's view of the hosts, the breaker's record, the
 * bulkhead's refusal, the error of a call no host took.
 */
#include "pool_state.h"

#include <string.h>

#include "error.h"
#include "tls.h"

void pgg__pool_emit(pgg_pool *pool, const pgg_event *ev)
{
    pgg_event_fn fn;
    void *ud;

    pthread_mutex_lock(&pool->ev_mu);
    fn = pool->ev_fn;
    ud = pool->ev_ud;
    pthread_mutex_unlock(&pool->ev_mu);
    if (fn)
        fn(ev, ud);
}

void pgg_pool_on_event(pgg_pool *pool, pgg_event_fn fn, void *userdata)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->ev_mu);
    pool->ev_fn = fn;
    pool->ev_ud = userdata;
    pthread_mutex_unlock(&pool->ev_mu);
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
    if (role == PGG_ROLE_PRIMARY) {
        atomic_store(&h->lag_bytes, 0);
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

/*
 * A write found no primary to take it: before it is refused, the standbys'
 * idle sessions are asked what their servers are now (an empty query: its
 * answer carries in_hot_standby).  A standby promoted since the pool last
 * looked says so, and the write goes there at once, as a libpq multi-host
 * client's next write does (it checks each server at connect).  Without
 * the ask, the pool learnt a promotion from the next read answered there
 * or the next health probe, a few ms later, and a write in between was
 * refused (the fault bench's promote: a slot lost, one round in two).
 *
 * Bounded: a refusal still comes within LOOK_NS (issue 9's goal: under
 * 1 ms), a host is asked by one write at a time and at most once per
 * LOOK_GAP_NS (a burst of writes during a long outage costs a standby one
 * empty query per LOOK_GAP_NS, not one per write), never on a host whose
 * breaker is open or whose last attempt hit its deadline, never with a
 * new connection.  The blocking driver only: on an event loop a call
 * never waits inside a step (call.h).
 */
#define LOOK_NS (1 * PGG_NS_PER_MS)
#define LOOK_GAP_NS (1 * PGG_NS_PER_MS)

bool pgg__pool_look_for_primary(pgg_pool *pool, int64_t deadline)
{
    int64_t now = pgg__now_ns();
    int64_t until = now + LOOK_NS < deadline ? now + LOOK_NS : deadline;

    for (int i = 0; i < pool->nhosts && now < until; i++) {
        pgg_host *h = &pool->hosts[i];
        pgg_breaker_state st = pgg__breaker_state(&h->breaker);
        int_fast64_t last = atomic_load_explicit(&h->asked_role_ns,
                                                 memory_order_relaxed);
        pgg_role got;

        if (atomic_load(&h->role) != PGG_ROLE_STANDBY ||
            st == PGG_BREAKER_OPEN || st == PGG_BREAKER_FORCED_OPEN ||
            now < atomic_load_explicit(&h->suspect_until_ns,
                                       memory_order_relaxed) ||
            now - last < LOOK_GAP_NS || /* INT64_MAX: one asks now */
            !atomic_compare_exchange_strong(&h->asked_role_ns, &last,
                                            INT64_MAX))
            continue;
        got = pgg__host_ask_role(h, now, until);
        now = pgg__now_ns();
        atomic_store_explicit(&h->asked_role_ns, now, memory_order_relaxed);
        if (got == PGG_ROLE_PRIMARY) {
            pgg__pool_set_role(pool, h, PGG_ROLE_PRIMARY,
                               "reported by the server to a write that "
                               "found no primary");
            /* Another host may still look primary: the health thread
             * confirms every role now. */
            pgg__pool_wake_health(pool);
            return true;
        }
    }
    return false;
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
    atomic_fetch_add(&pool->calls_failed, 1);
    return pgg__error_set(err, PGG_EBULKHEAD, NULL, NULL,
                          "bulkhead full: %d calls in flight",
                          pgg__bulkhead_capacity(&pool->bulkhead));
}
