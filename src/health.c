#include "health.h"

#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "pool.h"

static const char probe_sql[] =
    "SELECT pg_catalog.pg_is_in_recovery(), CASE WHEN "
    "pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() "
    "ELSE pg_catalog.pg_current_wal_lsn() END";

typedef enum probe_phase {
    PROBE_SKIP = 0,
    PROBE_CONNECTING,
    PROBE_QUERY,
    PROBE_DONE,
    PROBE_FAILED
} probe_phase;

typedef struct probe {
    probe_phase phase;
    PostgresPollingStatusType cst;
    bool ticketed;
    pgg_ticket ticket;
    int64_t started;
    pgg_role role;
    uint64_t lsn;
    bool have_lsn;
    bool got; /* a result arrived */
    pgg_class cls;
    pgg_error err;
} probe;

struct pgg_health {
    pgg_pool *pool;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop, wake;
    /* Readable once stop is asked: a round waiting on probes (up to
     * connect_timeout_ms) ends at once instead of holding pgg_pool_free. */
    int stop_fd;
    atomic_bool stopping;
    unsigned long rounds;
    PGconn **conns; /* the health thread's own connection per host */
    probe *probes;
    struct pollfd *pfds;
    int *pfd_host;
};

/* ------------------------------------------------------------- probing */

static void probe_fail(pgg_health *hl, int i, pgg_class cls, const char *what)
{
    probe *p = &hl->probes[i];
    pgg_host *h = &hl->pool->hosts[i];
    PGconn *c = hl->conns[i];

    p->phase = PROBE_FAILED;
    p->cls = cls;
    pgg__link_error(&p->err, cls == PGG_CLASS_TIMEOUT ? PGG_ETIMEDOUT
                                                       : PGG_ECONNECT,
                    c, NULL, h->name, what);
    /* A probe stuck in a query leaves a backend busy: cancel it, unless
     * the pool is going away (the cancel would only hold it up). */
    if (c && cls == PGG_CLASS_TIMEOUT && !atomic_load(&hl->stopping))
        pgg__canceller_drop(hl->pool->canceller, i, c);
    else
        PQfinish(c);
    hl->conns[i] = NULL;
}

static void probe_send(pgg_health *hl, int i)
{
    probe *p = &hl->probes[i];

    if (!PQsendQuery(hl->conns[i], probe_sql)) {
        probe_fail(hl, i, PGG_CLASS_CONNECTION, "health probe");
        return;
    }
    p->phase = PROBE_QUERY;
}

static void probe_begin(pgg_health *hl, int i)
{
    pgg_host *h = &hl->pool->hosts[i];
    probe *p = &hl->probes[i];
    PGconn *c = hl->conns[i];

    /* The health connection sat idle a whole interval: drain what the
     * server sent meanwhile, and notice a dead one before using it. */
    if (c && !pgg__link_alive(c)) {
        PQfinish(c);
        hl->conns[i] = c = NULL;
    }
    if (c) {
        probe_send(hl, i);
        return;
    }
    c = PQconnectStartParams(h->keys, h->vals, 0);
    hl->conns[i] = c;
    if (!c || PQstatus(c) == CONNECTION_BAD) {
        probe_fail(hl, i, PGG_CLASS_CONNECTION, "health connect");
        return;
    }
    pgg__link_silence(c);
    p->phase = PROBE_CONNECTING;
    p->cst = PGRES_POLLING_WRITING;
}

static void probe_result(pgg_health *hl, int i, PGresult *r)
{
    probe *p = &hl->probes[i];

    if (p->got)
        return; /* one statement, one result; ignore anything after it */
    p->got = true;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        p->role = strcmp(PQgetvalue(r, 0, 0), "t") == 0 ? PGG_ROLE_STANDBY
                                                        : PGG_ROLE_PRIMARY;
        p->have_lsn = !PQgetisnull(r, 0, 1) &&
                      pgg__lsn_parse(PQgetvalue(r, 0, 1), &p->lsn);
        p->cls = PGG_CLASS_SUCCESS;
        return;
    }
    {
        pgg_verdict v = pgg__classify_result(&hl->pool->cfg->classifier,
                                             PGG_END_RESULT, r, PGG_READ,
                                             false);
        p->cls = v.cls;
        pgg__link_error(&p->err, v.code, hl->conns[i], r,
                        hl->pool->hosts[i].name, "health probe");
    }
}

static void probe_step(pgg_health *hl, int i, short revents)
{
    probe *p = &hl->probes[i];
    PGconn *c = hl->conns[i];

    if (p->phase == PROBE_CONNECTING) {
        p->cst = PQconnectPoll(c);
        if (p->cst == PGRES_POLLING_FAILED) {
            probe_fail(hl, i, PGG_CLASS_CONNECTION, "health connect");
        } else if (p->cst == PGRES_POLLING_OK) {
            if (PQsetnonblocking(c, 1) != 0)
                probe_fail(hl, i, PGG_CLASS_CONNECTION, "health connect");
            else
                probe_send(hl, i);
        }
        return;
    }
    if ((revents & POLLOUT) && PQflush(c) < 0) {
        probe_fail(hl, i, PGG_CLASS_CONNECTION, "health probe");
        return;
    }
    /* On failure libpq queues an error result for the lost connection,
     * which the loop below collects and classifies. */
    if (revents & (POLLIN | POLLERR | POLLHUP))
        (void)PQconsumeInput(c);
    while (!PQisBusy(c)) {
        PGresult *r = PQgetResult(c);

        if (r) {
            probe_result(hl, i, r);
            PQclear(r);
            continue;
        }
        if (!p->got) {
            probe_fail(hl, i, PGG_CLASS_CONNECTION, "health probe");
        } else if (p->cls == PGG_CLASS_SUCCESS) {
            p->phase = PROBE_DONE;
        } else {
            p->phase = PROBE_FAILED;
            if (!pgg__link_reusable(c)) {
                PQfinish(c);
                hl->conns[i] = NULL;
            }
        }
        return;
    }
    if (PQstatus(c) == CONNECTION_BAD)
        probe_fail(hl, i, PGG_CLASS_CONNECTION, "health probe");
}

/* Drive every started probe until all finish or the deadline passes. */
static void probe_all(pgg_health *hl, int64_t deadline)
{
    pgg_pool *pool = hl->pool;

    for (;;) {
        int n = 0;
        int64_t left;
        struct timespec ts;
        int r;

        for (int i = 0; i < pool->nhosts; i++) {
            probe *p = &hl->probes[i];
            short ev;

            if (p->phase == PROBE_CONNECTING)
                ev = p->cst == PGRES_POLLING_READING ? POLLIN : POLLOUT;
            else if (p->phase == PROBE_QUERY)
                ev = POLLIN | (PQflush(hl->conns[i]) == 1 ? POLLOUT : 0);
            else
                continue;
            hl->pfds[n].fd = PQsocket(hl->conns[i]);
            hl->pfds[n].events = ev;
            hl->pfds[n].revents = 0;
            hl->pfd_host[n] = i;
            n++;
        }
        if (n == 0)
            return;
        left = deadline - pgg__now_ns();
        if (left <= 0 || atomic_load(&hl->stopping))
            break;
        ts.tv_sec = (time_t)(left / PGG_NS_PER_SEC);
        ts.tv_nsec = (long)(left % PGG_NS_PER_SEC);
        hl->pfds[n].fd = hl->stop_fd;
        hl->pfds[n].events = POLLIN;
        hl->pfds[n].revents = 0;
        r = ppoll(hl->pfds, (nfds_t)n + 1, &ts, NULL);
        if (r < 0 && errno != EINTR)
            break;
        if (hl->pfds[n].revents)
            break;
        for (int k = 0; r > 0 && k < n; k++) {
            if (hl->pfds[k].revents)
                probe_step(hl, hl->pfd_host[k], hl->pfds[k].revents);
        }
    }
    for (int i = 0; i < pool->nhosts; i++) {
        probe *p = &hl->probes[i];
        if (p->phase == PROBE_CONNECTING || p->phase == PROBE_QUERY)
            probe_fail(hl, i, PGG_CLASS_TIMEOUT,
                       p->phase == PROBE_CONNECTING ? "health connect timed out"
                                                    : "health probe timed out");
    }
}

/* --------------------------------------------------------------- rounds */

static void round_once(pgg_health *hl)
{
    pgg_pool *pool = hl->pool;
    int64_t now = pgg__now_ns();
    /* A probe gets what a connection attempt gets, not the (short) interval:
     * a loaded server that answers in 150 ms is alive, and calling it
     * unreachable would move reads off it.  A hung host stretches its
     * round to this bound; the next round starts an interval later. */
    int64_t timeout = pgg__ms_to_ns(pool->cfg->connect_timeout_ms);
    int64_t deadline = now + timeout;
    uint64_t primary_lsn = 0;
    bool have_primary_lsn = false;

    pgg__leases_check(pool, now);
    for (int i = 0; i < pool->nhosts; i++) {
        pgg_host *h = &pool->hosts[i];
        probe *p = &hl->probes[i];
        pgg_breaker_state st;

        pgg__breaker_tick(&h->breaker, now);
        pgg__host_trim(h, now, false);
        memset(p, 0, sizeof *p);
        st = pgg__breaker_state(&h->breaker);
        /* An open host is still checked: one probe per round costs little
         * (a refused connect, or this round's bounded wait), tells when it
         * is back long before a backed-off open time ends, and keeps its
         * role honest.  Forced open means the operator wants it left alone. */
        if (st == PGG_BREAKER_FORCED_OPEN)
            continue;
        if (st == PGG_BREAKER_HALF_OPEN) {
            /* A probe of ours counts as one of the half-open trial calls,
             * so a breaker can close with no traffic at all. */
            if (!pgg__breaker_allow(&h->breaker, now, &p->ticket))
                continue;
            p->ticketed = true;
        }
        p->started = now;
        probe_begin(hl, i);
    }
    probe_all(hl, deadline);

    now = pgg__now_ns();
    for (int i = 0; i < pool->nhosts; i++) {
        probe *p = &hl->probes[i];
        pgg_host *h = &pool->hosts[i];

        if (p->phase == PROBE_SKIP)
            continue;
        if (p->ticketed)
            pgg__pool_record(pool, h, p->ticket, p->cls, p->started, now);
        if (p->phase == PROBE_DONE && p->role != PGG_ROLE_UNKNOWN) {
            pgg__pool_set_role(pool, h, p->role, "health probe");
            /* An open host answered: half-open now, and this probe, a real
             * round trip that just succeeded, is its first trial call. */
            if (!p->ticketed && pgg__breaker_host_answered(&h->breaker, now)) {
                pgg_ticket t;
                if (pgg__breaker_allow(&h->breaker, now, &t))
                    pgg__pool_record(pool, h, t, PGG_CLASS_SUCCESS,
                                     p->started, now);
            }
            if (p->role == PGG_ROLE_PRIMARY && p->have_lsn &&
                (!have_primary_lsn || p->lsn > primary_lsn)) {
                primary_lsn = p->lsn;
                have_primary_lsn = true;
            }
        } else if (p->phase == PROBE_FAILED) {
            pgg__host_note_error(h, &p->err);
            /* A host we cannot reach has no role we can vouch for: a dead
             * old primary must not go on looking like a second primary. */
            pgg__pool_set_role(pool, h, PGG_ROLE_UNKNOWN, "unreachable");
        }
    }
    /* Lag is measured against the primary's position in the same round;
     * without a primary this round, the last measurement stands. */
    for (int i = 0; have_primary_lsn && i < pool->nhosts; i++) {
        probe *p = &hl->probes[i];
        pgg_host *h = &pool->hosts[i];

        if (p->phase != PROBE_DONE || p->role != PGG_ROLE_STANDBY)
            continue;
        if (!p->have_lsn)
            atomic_store(&h->lag_bytes, -1);
        else
            atomic_store(&h->lag_bytes,
                         p->lsn >= primary_lsn ? 0
                                               : (int64_t)(primary_lsn - p->lsn));
    }
    for (int i = 0; i < pool->nhosts && !atomic_load(&hl->stopping); i++) {
        pgg_host *h = &pool->hosts[i];
        pgg_breaker_state st = pgg__breaker_state(&h->breaker);

        /* Not into a host that is open or on trial: the breaker decides
         * when it gets connections again.  Disabled and metrics-only are
         * as good as closed.  Nor into one this round could not reach
         * (a probe refused by the server for its own reasons, a
         * permission say, does not count): each attempt would wait out its
         * connect bound, one host after another, stretching the round
         * (every host's role and lag, and pgg_pool_free, wait for it). */
        if (hl->probes[i].phase == PROBE_FAILED &&
            pgg__host_failure(hl->probes[i].cls))
            continue;
        if (h->min_idle > 0 && st != PGG_BREAKER_OPEN &&
            st != PGG_BREAKER_FORCED_OPEN && st != PGG_BREAKER_HALF_OPEN)
            pgg__host_warm(h, pgg__now_ns() + timeout);
    }
}

static void *health_main(void *arg)
{
    pgg_health *hl = arg;
    int64_t interval = pgg__ms_to_ns(hl->pool->cfg->health_interval_ms);

    pthread_mutex_lock(&hl->mu);
    while (!hl->stop) {
        int64_t next;

        hl->wake = false;
        pthread_mutex_unlock(&hl->mu);
        round_once(hl);
        pthread_mutex_lock(&hl->mu);
        hl->rounds++;
        pthread_cond_broadcast(&hl->cv);
        next = pgg__now_ns() + interval;
        while (!hl->stop && !hl->wake && pgg__now_ns() < next) {
            struct timespec ts = pgg__ns_to_timespec(next);
            pthread_cond_timedwait(&hl->cv, &hl->mu, &ts);
        }
    }
    pthread_mutex_unlock(&hl->mu);
    return NULL;
}

/* Release what start allocated; the thread is not running. */
static void health_free(pgg_health *hl)
{
    if (hl->conns)
        for (int i = 0; i < hl->pool->nhosts; i++)
            PQfinish(hl->conns[i]);
    free(hl->conns);
    free(hl->probes);
    free(hl->pfds);
    free(hl->pfd_host);
    if (hl->stop_fd >= 0)
        close(hl->stop_fd);
    free(hl);
}

pgg_health *pgg__health_start(pgg_pool *pool, pgg_error *err)
{
    pgg_health *hl = calloc(1, sizeof *hl);
    size_t n = (size_t)pool->nhosts;

    if (!hl) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    hl->pool = pool;
    hl->stop_fd = -1;
    if (!(hl->conns = calloc(n, sizeof *hl->conns)) ||
        !(hl->probes = calloc(n, sizeof *hl->probes)) ||
        !(hl->pfds = calloc(n + 1, sizeof *hl->pfds)) ||
        !(hl->pfd_host = calloc(n, sizeof *hl->pfd_host))) {
        health_free(hl);
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    hl->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (hl->stop_fd < 0) {
        health_free(hl);
        pgg__error_set(err, PGG_ESYS, NULL, NULL,
                       "could not create the health thread's eventfd");
        return NULL;
    }
    atomic_init(&hl->stopping, false);
    pthread_mutex_init(&hl->mu, NULL);
    pgg__cond_init(&hl->cv);
    if (pthread_create(&hl->thread, NULL, health_main, hl) != 0) {
        pthread_cond_destroy(&hl->cv);
        pthread_mutex_destroy(&hl->mu);
        health_free(hl);
        pgg__error_set(err, PGG_ESYS, NULL, NULL,
                       "could not start the health thread");
        return NULL;
    }
    return hl;
}

void pgg__health_stop(pgg_health *hl)
{
    if (!hl)
        return;
    pthread_mutex_lock(&hl->mu);
    hl->stop = true;
    pthread_cond_broadcast(&hl->cv);
    pthread_mutex_unlock(&hl->mu);
    atomic_store(&hl->stopping, true);
    {
        uint64_t one = 1;
        ssize_t w = write(hl->stop_fd, &one, sizeof one);
        (void)w; /* a full counter is already "readable" */
    }
    pthread_join(hl->thread, NULL);
    pthread_cond_destroy(&hl->cv);
    pthread_mutex_destroy(&hl->mu);
    health_free(hl);
}

void pgg__health_wake(pgg_health *hl)
{
    if (!hl)
        return;
    pthread_mutex_lock(&hl->mu);
    hl->wake = true;
    pthread_cond_broadcast(&hl->cv);
    pthread_mutex_unlock(&hl->mu);
}

unsigned long pgg__health_rounds(pgg_health *hl)
{
    unsigned long n;

    if (!hl)
        return 0;
    pthread_mutex_lock(&hl->mu);
    n = hl->rounds;
    pthread_mutex_unlock(&hl->mu);
    return n;
}
