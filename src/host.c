#include "host.h"

#include <stdlib.h>
#include <string.h>

#include "cancel.h"
#include "clock.h"
#include "error.h"
#include "tls.h"
#include "options.h"

int pgg__host_init(pgg_host *h, int index, const char *name,
                   const char *const *keys, const char *const *vals,
                   const pgg_host_limits *limits,
                   const pgg_breaker_config *breaker, const pgg_clock *clock,
                   pgg_error *err)
{
    int rc;

    memset(h, 0, sizeof *h);
    h->index = index;
    pgg__strlcpy(h->name, name, sizeof h->name);
    h->keys = keys;
    h->vals = vals;
    h->max = limits->max;
    h->min_idle = limits->min_idle;
    h->idle_timeout_ns = limits->idle_timeout_ns;
    h->max_lifetime_ns = limits->max_lifetime_ns;
    h->validate_ns = limits->validate_ns;
    h->alive_check_ns = limits->alive_check_ns;
    h->connect_timeout_ns = limits->connect_timeout_ns;
    h->on_connect = limits->on_connect;
    h->canceller = limits->canceller;
    atomic_init(&h->role, PGG_ROLE_UNKNOWN);
    atomic_init(&h->lag_bytes, -1);
    atomic_init(&h->n_busy, 0);
    atomic_init(&h->role_seen_ns, 0);
    atomic_init(&h->latency_ns, 0);
    atomic_init(&h->suspect_until_ns, 0);
    rc = pgg__breaker_init(&h->breaker, breaker, pgg__clock_now(clock), err);
    if (rc != PGG_OK)
        return rc;
    pthread_mutex_init(&h->mu, NULL);
    pgg__cond_init(&h->cv);
    pgg__cond_init(&h->back_cv);
    atomic_init(&h->starting, false);
    atomic_init(&h->n_back_waiting, 0);
    return PGG_OK;
}

static void close_list(pgg_link *l)
{
    while (l) {
        pgg_link *next = l->next;
        PQfinish(l->conn);
        free(l);
        l = next;
    }
}

void pgg__host_destroy(pgg_host *h)
{
    if (!h)
        return;
    close_list(h->idle);
    h->idle = NULL;
    pgg__breaker_destroy(&h->breaker);
    pthread_cond_destroy(&h->cv);
    pthread_cond_destroy(&h->back_cv);
    pthread_mutex_destroy(&h->mu);
}

static bool expired(const pgg_host *h, const pgg_link *l, int64_t now)
{
    if (h->max_lifetime_ns > 0 && now - l->created_ns >= h->max_lifetime_ns)
        return true;
    return h->idle_timeout_ns > 0 && now - l->last_used_ns >= h->idle_timeout_ns;
}

/* An empty query: the cheapest round trip that proves the session works. */
static bool validate(pgg_host *h, pgg_link *l, int64_t deadline_ns)
{
    static const pgg_query empty = {.sql = ""};
    PGresult *res = NULL;
    pgg_attempt_end end;
    int rc;

    rc = pgg__link_exec(l->conn, &empty, deadline_ns, h->name, &res, &end, NULL);
    rc = rc == PGG_OK && PQresultStatus(res) == PGRES_EMPTY_QUERY &&
         pgg__link_reusable(l->conn);
    PQclear(res);
    return rc;
}

/* What pool.c's pgg__host_failure says, for a layer below the pool. */
static bool counts_against_host(pgg_class cls)
{
    return cls == PGG_CLASS_CONNECTION || cls == PGG_CLASS_TIMEOUT ||
           cls == PGG_CLASS_UNAVAILABLE;
}

/* The hook's SQL failed: a server error the classifier blames on the host
 * (57P01 on its way down, 53300...), or one it does not (the hook's own
 * mistake: a syntax error, a missing role). */
static int hook_sql_failed(const pgg_host *h, PGresult *res, pgg_attempt_end end,
                           bool *host_fault, pgg_error *err)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    pgg_verdict v = pgg__classify(NULL, end, res ? PQresultStatus(res) : PGRES_FATAL_ERROR,
                                  state, PGG_WRITE, false);
    char msg[256];

    *host_fault = end != PGG_END_RESULT || counts_against_host(v.cls);
    if (end != PGG_END_RESULT) {
        /* link_exec's record says what happened (timeout, lost session);
         * the code comes from the end, for callers passing no record */
        int code = end == PGG_END_DEADLINE ? PGG_ETIMEDOUT : PGG_ECONNECT;

        if (err) {
            pgg__strlcpy(msg, err->message, sizeof msg);
            snprintf(err->message, sizeof err->message, "on_connect: %s", msg);
            err->code = code;
        }
        return code;
    }
    pgg__strlcpy(msg, PQresultErrorMessage(res), sizeof msg);
    msg[strcspn(msg, "\n")] = '\0';
    return pgg__error_set(err, *host_fault ? (v.code ? v.code : PGG_EUNAVAILABLE) : PGG_EONCONNECT,
                          state, h->name, "on_connect: SQL failed: %s", msg);
}

int pgg__host_on_connect(pgg_host *h, PGconn *conn, int64_t deadline_ns,
                         bool *host_fault, pgg_error *err)
{
    const pgg_on_connect *hook = h->on_connect;

    *host_fault = false;
    if (!hook || (!hook->sql && !hook->fn))
        return PGG_OK;
    if (hook->sql) {
        pgg_query q = {.sql = hook->sql};
        PGresult *res = NULL;
        pgg_attempt_end end;
        int rc;

        pgg__link_exec(conn, &q, deadline_ns, h->name, &res, &end, err);
        if (end != PGG_END_RESULT || (PQresultStatus(res) != PGRES_COMMAND_OK &&
                                      PQresultStatus(res) != PGRES_TUPLES_OK)) {
            rc = hook_sql_failed(h, res, end, host_fault, err);
            PQclear(res);
            return rc;
        }
        PQclear(res);
    }
    if (hook->fn) {
        char why[256] = "";
        int64_t left = deadline_ns - pgg__now_ns();
        int rc;

        if (left <= 0) {
            *host_fault = true;
            return pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                                  "on_connect: the connect bound ran out "
                                  "before the callback");
        }
        rc = hook->fn(conn, (int)((left + PGG_NS_PER_MS - 1) / PGG_NS_PER_MS),
                      hook->userdata, why, sizeof why);
        why[sizeof why - 1] = '\0';
        if (pgg__now_ns() > deadline_ns) {
            *host_fault = true;
            return pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                                  "on_connect: the callback returned after "
                                  "the connect bound");
        }
        if (PQstatus(conn) != CONNECTION_OK) {
            *host_fault = true;
            return pgg__error_set(err, PGG_ECONNECT, NULL, h->name,
                                  "on_connect: the session broke in the "
                                  "callback");
        }
        if (rc != 0)
            return pgg__error_set(err, PGG_EONCONNECT, NULL, h->name,
                                  "on_connect: the callback refused the "
                                  "connection: %s",
                                  why[0] ? why : "(no reason given)");
    }
    /* Lent to the next caller as it stands: no transaction, no results
     * waiting. */
    if (!pgg__link_reusable(conn))
        return pgg__error_set(err, PGG_EONCONNECT, NULL, h->name,
                              "on_connect: the hook left the session in a "
                              "transaction or busy");
    return PGG_OK;
}

static int connect_new(pgg_host *h, int64_t deadline_ns, pgg_link **out,
                       bool *hook_refused, pgg_error *err)
{
    int64_t now = pgg__now_ns();
    int64_t bound = now + h->connect_timeout_ns;
    PGconn *conn = NULL;
    pgg_link *l;
    bool host_fault;
    int rc;

    *hook_refused = false;
    if (bound > deadline_ns)
        bound = deadline_ns;
    atomic_fetch_add(&h->connects, 1);
    rc = pgg__link_connect(h->keys, h->vals, bound, h->name, &conn, err);
    if (rc != PGG_OK) {
        atomic_fetch_add(&h->connect_failures, 1);
        return rc;
    }
    rc = pgg__host_on_connect(h, conn, bound, &host_fault, err);
    if (rc != PGG_OK) {
        if (rc == PGG_ETIMEDOUT) /* its SQL may still run: cancel it */
            pgg__canceller_drop(h->canceller ? *h->canceller : NULL, h->index, conn);
        else
            PQfinish(conn);
        if (host_fault)
            atomic_fetch_add(&h->connect_failures, 1);
        *hook_refused = !host_fault;
        return rc;
    }
    l = calloc(1, sizeof *l);
    if (!l) {
        PQfinish(conn);
        return pgg__error_set(err, PGG_ENOMEM, NULL, h->name, "out of memory");
    }
    now = pgg__now_ns();
    l->conn = conn;
    l->created_ns = now;
    l->last_used_ns = now;
    l->types_gen = 0;
    l->fresh = true;
    l->next = NULL;
    *out = l;
    return PGG_OK;
}

/* A token per live thread: the address of a thread-local. */
static PGG_TLS char thread_token;

/*
 * The idle connection this thread gave back last, else the most recently
 * used one; returns the link to it in the list.  A thread that finds its
 * own connection again reuses a socket and a server backend nobody else
 * touched since: warm caches on both sides, and far less kernel time per
 * call than a connection another core just used (measured in issue 10:
 * client CPU 1.54x raw libpq without, 1.13x with, at 8 threads).  The walk
 * is bounded by pool_max and stays short under load, when few are idle.
 */
static pgg_link **pick_idle(pgg_host *h)
{
    const void *me = &thread_token;

    for (pgg_link **pp = &h->idle; *pp; pp = &(*pp)->next)
        if ((*pp)->owner == me)
            return pp;
    return &h->idle;
}

/* How long a host that refused a session as full (53300) gets no new
 * connect attempt while sessions of ours are out to come back. */
#define FULL_RETRY_NS (100 * PGG_NS_PER_MS)
/* How long a host that refused a session (53300, 57P03) with none of ours
 * there gets no new connect attempt.  Short: the first call after a slot
 * frees up must find it (libpq multi-host asks on every call), yet a full
 * server is asked at most 200 times a second by a pool, however many
 * threads call (each refused startup costs it a backend fork). */
#define REFUSED_RETRY_NS (5 * PGG_NS_PER_MS)

int pgg__host_borrow(pgg_host *h, int64_t deadline_ns, int64_t now,
                     pgg_link **out, pgg_borrow_fail *why, pgg_error *err)
{
    pgg_link *doomed = NULL;
    bool fresh_now = true; /* now is the caller's reading, still good */
    int rc;

    *out = NULL;
    pthread_mutex_lock(&h->mu);
    for (;;) {
        if (h->closed) {
            pthread_mutex_unlock(&h->mu);
            close_list(doomed);
            *why = PGG_BORROW_CLOSED;
            return pgg__error_set(err, PGG_ECLOSED, NULL, h->name,
                                  "pool closed");
        }
        if (!fresh_now)
            now = pgg__now_ns();
        fresh_now = false;
        /* Nothing is lent once the deadline has passed (a waiter whose
         * timeout raced a give-back, a validation that used the time up):
         * a statement sent then would leave after its call gave up. */
        while (h->idle && now < deadline_ns) {
            pgg_link **pp = pick_idle(h);
            pgg_link *l = *pp;

            *pp = l->next;
            h->n_idle--;
            if (expired(h, l, now)) {
                l->next = doomed;
                doomed = l;
                continue;
            }
            h->n_busy++;
            pthread_mutex_unlock(&h->mu);
            close_list(doomed);
            doomed = NULL;
            l->next = NULL;
            if ((now - l->last_used_ns < h->alive_check_ns ||
                 pgg__link_alive(l->conn)) &&
                (now - l->last_used_ns < h->validate_ns ||
                 validate(h, l, deadline_ns))) {
                *out = l;
                return PGG_OK;
            }
            /* Dead or failed validation: try the next idle one. */
            PQfinish(l->conn);
            free(l);
            pthread_mutex_lock(&h->mu);
            h->n_busy--;
            now = pgg__now_ns();
        }
        if (now >= deadline_ns || pgg__cancel_now()) {
            /* A give-back may have signalled us as the deadline came: pass
             * the wakeup on to a waiter that can still use it. */
            if (h->n_waiting > 0 &&
                (h->idle || h->n_busy + h->n_connecting + h->n_idle < h->max))
                pthread_cond_signal(&h->cv);
            pthread_mutex_unlock(&h->mu);
            close_list(doomed);
            *why = PGG_BORROW_EXHAUSTED;
            if (now < h->full_until_ns)
                return pgg__error_set(err, PGG_ETIMEDOUT, "53300", h->name,
                                      "%s has no room for another session "
                                      "(53300) and ours were busy until the "
                                      "deadline",
                                      h->name);
            return pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                                  "all %d connections to %s busy until the "
                                  "deadline (pool_max)",
                                  h->max, h->name);
        }
        if (now < h->refused_until_ns && h->n_busy == 0) {
            int64_t ago = now - (h->refused_until_ns - REFUSED_RETRY_NS);

            pthread_mutex_unlock(&h->mu);
            close_list(doomed);
            *why = PGG_BORROW_REFUSED;
            return pgg__error_set(err, PGG_EUNAVAILABLE, h->refused_state,
                                  h->name,
                                  "%s (%.1f ms ago; not asked again yet)",
                                  h->refused_msg,
                                  (double)ago / (double)PGG_NS_PER_MS);
        }
        if (h->n_busy + h->n_connecting + h->n_idle < h->max &&
            (now >= h->full_until_ns || h->n_busy == 0)) {
            pgg_error cerr;
            bool hook_refused = false;

            pgg__error_reset(&cerr);
            h->n_connecting++;
            pthread_mutex_unlock(&h->mu);
            close_list(doomed);
            doomed = NULL;
            rc = connect_new(h, deadline_ns, out, &hook_refused, &cerr);
            pthread_mutex_lock(&h->mu);
            h->n_connecting--;
            if (rc == PGG_OK) {
                h->n_busy++;
                h->full_until_ns = 0;
                h->refused_until_ns = 0;
            } else {
                pthread_cond_signal(&h->cv); /* the slot is free again */
            }
            /*
             * The server has no room for another session (53300: its
             * max_connections, or the role's limit) but ours are working:
             * the host is healthy and full.  Wait for one of ours to come
             * back, as at pool_max, rather than fail the call and count it
             * against the host; connect again only after FULL_RETRY_NS.
             */
            if (rc != PGG_OK && h->n_busy > 0 &&
                strcmp(cerr.sqlstate, "53300") == 0) {
                h->full_until_ns = pgg__now_ns() + FULL_RETRY_NS;
                fresh_now = false;
                continue;
            }
            /* Refused with none of ours there: nothing to wait for.  The
             * call hears it now; the next ones, for a moment, without
             * asking the server again. */
            if (rc != PGG_OK && pgg__capacity_refusal(cerr.sqlstate)) {
                h->refused_until_ns = pgg__now_ns() + REFUSED_RETRY_NS;
                pgg__strlcpy(h->refused_state, cerr.sqlstate,
                             sizeof h->refused_state);
                pgg__strlcpy(h->refused_msg, cerr.message,
                             sizeof h->refused_msg);
            }
            pthread_mutex_unlock(&h->mu);
            if (rc != PGG_OK) {
                pgg__error_copy(err, &cerr);
                *why = hook_refused ? PGG_BORROW_HOOK : PGG_BORROW_CONNECT;
            }
            return rc;
        }
        {
            struct timespec ts;

            /* Full server: look again when a connect may be let in. */
            ts = pgg__ns_to_timespec(pgg__cancel_slice(
                now, now < h->full_until_ns && h->full_until_ns < deadline_ns
                         ? h->full_until_ns
                         : deadline_ns));
            h->n_waiting++;
            pthread_cond_timedwait(&h->cv, &h->mu, &ts);
            h->n_waiting--;
        }
    }
}

static void release_slot(pgg_host *h, pgg_link *keep)
{
    if (keep)
        keep->fresh = false;
    pthread_mutex_lock(&h->mu);
    h->n_busy--;
    if (keep && !h->closed) {
        keep->next = h->idle;
        h->idle = keep;
        h->n_idle++;
        keep = NULL;
    }
    /* Only borrowers wait on cv, and they count themselves under mu. */
    if (h->n_waiting > 0)
        pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
    if (keep) {
        PQfinish(keep->conn);
        free(keep);
    }
}

void pgg__host_give_back(pgg_host *h, pgg_link *l, int64_t now)
{
    if (!l)
        return;
    if (!pgg__link_reusable(l->conn) ||
        (h->max_lifetime_ns > 0 && now - l->created_ns >= h->max_lifetime_ns)) {
        pgg__host_discard(h, l);
        return;
    }
    l->last_used_ns = now;
    l->owner = &thread_token;
    release_slot(h, l);
}

void pgg__host_discard(pgg_host *h, pgg_link *l)
{
    if (!l)
        return;
    /* Close before giving the slot back, so open never exceeds max. */
    PQfinish(l->conn);
    l->conn = NULL;
    free(l);
    release_slot(h, NULL);
}

void pgg__host_abandon(pgg_host *h, pgg_link *l, pgg_canceller *c)
{
    if (!l)
        return;
    pgg__canceller_drop(c, h->index, l->conn);
    l->conn = NULL;
    free(l);
    release_slot(h, NULL);
}

bool pgg__host_adopt(pgg_host *h, PGconn *conn, int64_t now_ns, int max_idle)
{
    pgg_link *l;

    if (h->on_connect && (h->on_connect->sql || h->on_connect->fn))
        return false;
    l = calloc(1, sizeof *l);
    if (!l)
        return false;
    l->conn = conn;
    l->created_ns = now_ns;
    l->last_used_ns = now_ns;
    pthread_mutex_lock(&h->mu);
    if (h->closed || h->n_idle >= max_idle ||
        h->n_busy + h->n_connecting + h->n_idle >= h->max) {
        pthread_mutex_unlock(&h->mu);
        free(l);
        return false;
    }
    l->next = h->idle;
    h->idle = l;
    h->n_idle++;
    h->refused_until_ns = 0;
    atomic_fetch_add(&h->connects, 1);
    if (h->n_waiting > 0)
        pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
    return true;
}

int pgg__host_trim(pgg_host *h, int64_t now_ns, bool all)
{
    pgg_link *doomed = NULL, **pp;
    int n = 0;

    pthread_mutex_lock(&h->mu);
    pp = &h->idle;
    while (*pp) {
        pgg_link *l = *pp;
        if (all || expired(h, l, now_ns)) {
            *pp = l->next;
            l->next = doomed;
            doomed = l;
            h->n_idle--;
            n++;
        } else {
            pp = &l->next;
        }
    }
    if (n)
        pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    close_list(doomed);
    return n;
}

int pgg__host_warm(pgg_host *h, int64_t deadline_ns)
{
    int opened = 0;

    for (;;) {
        pgg_link *l = NULL;
        int rc;

        pthread_mutex_lock(&h->mu);
        if (h->closed || h->n_idle + h->n_connecting >= h->min_idle ||
            h->n_busy + h->n_connecting + h->n_idle >= h->max) {
            pthread_mutex_unlock(&h->mu);
            return opened;
        }
        h->n_connecting++;
        pthread_mutex_unlock(&h->mu);

        bool hook_refused;

        rc = connect_new(h, deadline_ns, &l, &hook_refused, NULL);

        pthread_mutex_lock(&h->mu);
        h->n_connecting--;
        if (rc == PGG_OK && !h->closed) {
            l->fresh = false;
            l->next = h->idle;
            h->idle = l;
            h->n_idle++;
            l = NULL;
            opened++;
        }
        pthread_cond_signal(&h->cv);
        pthread_mutex_unlock(&h->mu);
        if (l) {
            PQfinish(l->conn);
            free(l);
        }
        if (rc != PGG_OK)
            return opened;
    }
}

bool pgg__host_await_back(pgg_host *h, int64_t deadline_ns)
{
    bool back;

    if (!atomic_load_explicit(&h->starting, memory_order_relaxed))
        return false;
    pthread_mutex_lock(&h->mu);
    while (atomic_load(&h->starting) && !h->closed &&
           pgg__breaker_state(&h->breaker) == PGG_BREAKER_OPEN) {
        int64_t now = pgg__now_ns();
        struct timespec ts;

        if (now >= deadline_ns || pgg__cancel_now())
            break;
        ts = pgg__ns_to_timespec(pgg__cancel_slice(now, deadline_ns));
        atomic_fetch_add(&h->n_back_waiting, 1);
        pthread_cond_timedwait(&h->back_cv, &h->mu, &ts);
        atomic_fetch_sub(&h->n_back_waiting, 1);
    }
    back = !h->closed && pgg__breaker_state(&h->breaker) != PGG_BREAKER_OPEN;
    pthread_mutex_unlock(&h->mu);
    return back;
}

void pgg__host_set_starting(pgg_host *h, bool on)
{
    if (atomic_load_explicit(&h->starting, memory_order_relaxed) == on)
        return;
    pthread_mutex_lock(&h->mu);
    atomic_store(&h->starting, on);
    if (!on)
        pthread_cond_broadcast(&h->back_cv);
    pthread_mutex_unlock(&h->mu);
}

void pgg__host_close(pgg_host *h)
{
    pthread_mutex_lock(&h->mu);
    h->closed = true;
    pthread_cond_broadcast(&h->cv);
    pthread_cond_broadcast(&h->back_cv);
    pthread_mutex_unlock(&h->mu);
    pgg__host_trim(h, 0, true);
}

void pgg__host_note_error(pgg_host *h, const pgg_error *err)
{
    if (!err)
        return;
    pthread_mutex_lock(&h->mu);
    h->last_error_code = err->code;
    pgg__strlcpy(h->last_error, err->message, sizeof h->last_error);
    pthread_mutex_unlock(&h->mu);
}

void pgg__host_counts(pgg_host *h, pgg_host_counts *out)
{
    pthread_mutex_lock(&h->mu);
    out->idle = h->n_idle;
    out->busy = h->n_busy;
    out->connecting = h->n_connecting;
    out->waiting = h->n_waiting;
    out->open = h->n_idle + h->n_busy + h->n_connecting;
    pthread_mutex_unlock(&h->mu);
}
