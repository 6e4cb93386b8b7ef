/*
 * Read your writes across replicas: positions, the choice of host for a
 * read that needs one, the bounded wait, and the pipelined round trips
 * that learn a write's position and check a standby's (visibility.h).
 */
#include "visibility.h"

#include <ctype.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cancel.h"
#include "clock.h"
#include "error.h"
#include "pool_state.h"

/* pgg_call and pgg_info took their new fields from reserved space: the
 * layout programs were built against must not change (x86-64 and other
 * LP64 sizes; ILP32 gets its own by the same rule). */
_Static_assert(sizeof(void *) != 8 || sizeof(pgg_call) == 80,
               "pgg_call changed size: take new fields from reserved_");
_Static_assert(sizeof(void *) != 8 || sizeof(pgg_info) == 944,
               "pgg_info changed size: take new fields from reserved_");
_Static_assert(sizeof(void *) != 8 || sizeof(pgg_stats) == 160,
               "pgg_stats changed size: take new fields from reserved_");

struct pgg_vis {
    int nhosts;
    int mode;
    int64_t max_wait_ns;
    int64_t poll_ns;
    /* The pool's latest acknowledged write whose position it learnt. */
    _Atomic uint64_t latest;
    /* Last health wake asked by a waiter: one per poll period is enough. */
    _Atomic int64_t last_wake_ns;
    _Atomic int waiters;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* read_your_writes=sampled: writes acknowledged so far, and the
     * latest sample of a primary's position taken after s_epoch of them
     * (s_lsn is raised before s_epoch, so whoever sees the epoch sees a
     * position at least as new). */
    _Atomic uint64_t epoch;
    _Atomic uint64_t s_epoch;
    _Atomic uint64_t s_lsn;
    /* One sample in flight (s_busy, covering s_flight writes); s_seq
     * counts finished ones; s_failed / s_err: the last one failed, and
     * none began since. */
    pthread_mutex_t smu;
    pthread_cond_t scv;
    bool s_busy, s_failed;
    uint64_t s_flight, s_seq;
    pgg_error s_err;
    /* pgg_stats' ryw_* counters. */
    _Atomic uint64_t n_samples, n_checks, n_waits, n_primary;
    /* The servers' WAL layout (pgg__vis_set_layout), once a probe told
     * it: 0 unknown, or a 32-bit server (its headers are not ours). */
    _Atomic uint32_t wal_blk;
    _Atomic uint64_t wal_seg;
    _Atomic uint64_t replayed[]; /* per host; 0: unknown */
};

/* Every record up to it, the commit's included, has been inserted: the
 * write position (pg_current_wal_lsn) can lag behind a commit that did not
 * wait for its flush (synchronous_commit=off), the insert position
 * cannot. */
static const char lsn_sql[] = "SELECT pg_catalog.pg_current_wal_insert_lsn()";
/* Both in one statement: a primary answers f and NULL.  The third column
 * says whether a read after the check in the same transaction takes its
 * own snapshot (see exec_checked). */
static const char check_sql[] =
    "SELECT pg_catalog.pg_is_in_recovery(), "
    "pg_catalog.pg_last_wal_replay_lsn(), "
    "pg_catalog.current_setting('transaction_isolation')";

pgg_vis *pgg__vis_new(int nhosts, int mode, int64_t max_wait_ms,
                      int64_t poll_ms, pgg_error *err)
{
    pgg_vis *v = calloc(1, sizeof *v + (size_t)nhosts * sizeof v->replayed[0]);

    if (!v) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    v->nhosts = nhosts;
    v->mode = mode;
    v->max_wait_ns = pgg__ms_to_ns(max_wait_ms);
    v->poll_ns = pgg__ms_to_ns(poll_ms);
    atomic_init(&v->latest, 0);
    atomic_init(&v->last_wake_ns, 0);
    atomic_init(&v->waiters, 0);
    for (int i = 0; i < nhosts; i++)
        atomic_init(&v->replayed[i], 0);
    atomic_init(&v->epoch, 0);
    atomic_init(&v->s_epoch, 0);
    atomic_init(&v->s_lsn, 0);
    atomic_init(&v->n_samples, 0);
    atomic_init(&v->n_checks, 0);
    atomic_init(&v->n_waits, 0);
    atomic_init(&v->n_primary, 0);
    pthread_mutex_init(&v->mu, NULL);
    pthread_mutex_init(&v->smu, NULL);
    if (pgg__cond_init(&v->cv) != 0) {
        pthread_mutex_destroy(&v->mu);
        pthread_mutex_destroy(&v->smu);
        free(v);
        pgg__error_set(err, PGG_ESYS, NULL, NULL,
                       "could not create a condition variable");
        return NULL;
    }
    if (pgg__cond_init(&v->scv) != 0) {
        pthread_cond_destroy(&v->cv);
        pthread_mutex_destroy(&v->mu);
        pthread_mutex_destroy(&v->smu);
        free(v);
        pgg__error_set(err, PGG_ESYS, NULL, NULL,
                       "could not create a condition variable");
        return NULL;
    }
    return v;
}

void pgg__vis_free(pgg_vis *v)
{
    if (!v)
        return;
    pthread_cond_destroy(&v->cv);
    pthread_cond_destroy(&v->scv);
    pthread_mutex_destroy(&v->mu);
    pthread_mutex_destroy(&v->smu);
    free(v);
}

/* ------------------------------------------------------------ positions */

static void raise_to(_Atomic uint64_t *a, uint64_t lsn)
{
    uint64_t cur = atomic_load(a);

    while (cur < lsn && !atomic_compare_exchange_weak(a, &cur, lsn))
        ;
}

/* Someone may wait for this news.  The waiter counts itself before it
 * looks at the positions, we store before we look at the count: one of us
 * sees the other (both sequentially consistent). */
static void wake_waiters(pgg_vis *v)
{
    if (atomic_load(&v->waiters) == 0)
        return;
    pthread_mutex_lock(&v->mu);
    pthread_cond_broadcast(&v->cv);
    pthread_mutex_unlock(&v->mu);
}

uint64_t pgg__vis_latest(pgg_vis *v)
{
    return v ? atomic_load_explicit(&v->latest, memory_order_acquire) : 0;
}

void pgg__vis_note_write(pgg_vis *v, uint64_t lsn)
{
    if (v && lsn)
        raise_to(&v->latest, lsn);
}

void pgg__vis_note_replayed(pgg_vis *v, int i, uint64_t lsn, bool probe)
{
    if (!v || i < 0 || i >= v->nhosts || !lsn)
        return;
    if (probe)
        atomic_store(&v->replayed[i], lsn);
    else
        raise_to(&v->replayed[i], lsn);
    wake_waiters(v);
}

uint64_t pgg__vis_replayed(pgg_vis *v, int i)
{
    if (!v || i < 0 || i >= v->nhosts)
        return 0;
    return atomic_load_explicit(&v->replayed[i], memory_order_acquire);
}

int64_t pgg__vis_health_interval(pgg_vis *v, int64_t normal_ns)
{
    if (v && atomic_load(&v->waiters) > 0 && v->poll_ns < normal_ns)
        return v->poll_ns;
    return normal_ns;
}

/* ------------------------------------------------------------ a call */

/* read_your_writes=sampled: the latest sample covers every write
 * acknowledged so far (a read after none pays nothing), or this read
 * needs a newer one. */
/* 64-bit servers' page headers: MAXALIGN(sizeof XLogPageHeaderData) and
 * of XLogLongPageHeaderData, the first page of a segment. */
#define WAL_SHORT_HEADER 24
#define WAL_LONG_HEADER 40

uint64_t pgg__lsn_page_floor(uint64_t lsn, uint32_t blk, uint64_t seg)
{
    uint64_t page;

    if (blk == 0 || seg == 0 || seg % blk != 0)
        return lsn;
    page = lsn - lsn % blk;
    /* The insert position at the start of a page's room for records: the
     * last record ended at the page's start, nothing of any record lies
     * between (a record continued from the page before would put it at
     * least 8 bytes further), and a replica's replay position stops there. */
    if (lsn - page == (page % seg == 0 ? WAL_LONG_HEADER : WAL_SHORT_HEADER))
        return page;
    return lsn;
}

void pgg__vis_set_layout(pgg_vis *v, uint32_t blk, uint64_t seg)
{
    if (!v || atomic_load_explicit(&v->wal_blk, memory_order_relaxed))
        return;
    atomic_store_explicit(&v->wal_seg, seg, memory_order_relaxed);
    atomic_store_explicit(&v->wal_blk, blk, memory_order_release);
}

/* The position a read must see, lowered to a page's start when it points
 * just past that page's header: otherwise, with no WAL after it, no
 * replica would ever be seen to reach it, and every such read would wait
 * read_your_writes.max_wait_ms for nothing, then go to the primary. */
static void floor_need(pgg_vis *v, pgg_vis_req *r)
{
    uint32_t blk = atomic_load_explicit(&v->wal_blk, memory_order_acquire);

    if (blk && r->need && r->need != UINT64_MAX)
        r->need = pgg__lsn_page_floor(
            r->need, blk,
            atomic_load_explicit(&v->wal_seg, memory_order_relaxed));
}

static void use_sample(pgg_vis *v, pgg_vis_req *r)
{
    r->epoch = atomic_load(&v->epoch);
    if (r->epoch == 0)
        return;
    if (atomic_load(&v->s_epoch) >= r->epoch) {
        uint64_t lsn = atomic_load(&v->s_lsn);

        if (lsn > r->need)
            r->need = lsn;
    } else {
        r->sample = true;
    }
}

/* The call's needs; a lease's write learns its position only pool-wide
 * (its statements are never wrapped one by one, pgg_lease_commit asks). */
static bool begin(pgg_vis *v, pgg_intent intent, const pgg_call *call,
                  pgg_vis_req *r, bool lease)
{
    unsigned flags = call ? call->flags : 0;

    memset(r, 0, sizeof *r);
    if (!v)
        return false;
    r->in_lease = lease;
    if (intent == PGG_WRITE) {
        r->want_lsn = v->mode == PGG_RYW_POOL ||
                      (!lease && (flags & PGG_CALL_WANT_LSN));
        if (lease)
            r->latest = pgg__vis_latest(v);
        return r->want_lsn;
    }
    r->latest = pgg__vis_latest(v);
    if (v->mode != PGG_RYW_OFF && !(flags & PGG_CALL_ANY_LSN)) {
        r->need = r->latest;
        if (v->mode == PGG_RYW_SAMPLED && intent == PGG_READ)
            use_sample(v, r);
    }
    if (call && call->min_lsn > r->need)
        r->need = call->min_lsn;
    floor_need(v, r);
    /* The primary has every write it acknowledged. */
    return (r->need != 0 || r->sample) && intent == PGG_READ;
}

bool pgg__vis_begin(pgg_vis *v, pgg_intent intent, const pgg_call *call,
                    pgg_vis_req *r)
{
    return begin(v, intent, call, r, false);
}

bool pgg__vis_begin_lease(pgg_vis *v, pgg_intent intent,
                          const pgg_call *call, pgg_vis_req *r)
{
    return begin(v, intent, call, r, true);
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

int pgg__vis_order(pgg_pool *pool, pgg_vis_req *r, bool can_check, int *cand,
                   int ncand)
{
    int known[PGG_MAX_HOSTS], check[PGG_MAX_HOSTS], other[PGG_MAX_HOSTS];
    int unknown[PGG_MAX_HOSTS];
    int nk = 0, nc = 0, no = 0, nu = 0, n = 0;

    /* No position to prove: no standby can serve, no wait can help. */
    if (r->blind)
        r->waited = true;
    for (int k = 0; k < ncand; k++) {
        int i = cand[k];
        int role = atomic_load_explicit(&pool->hosts[i].role,
                                        memory_order_relaxed);

        if (role == PGG_ROLE_STANDBY && !r->blind &&
            pgg__vis_replayed(pool->vis, i) >= r->need)
            known[nk++] = i;
        else if (role == PGG_ROLE_PRIMARY)
            other[no++] = i;
        else if (role == PGG_ROLE_STANDBY || (!r->waited && can_check))
            check[nc++] = i;
        else if (can_check)
            unknown[nu++] = i; /* unknown role after the wait: checked last */
        else
            r->unmet_seen = true; /* maybe a standby behind; a lease cannot ask */
    }
    if (!can_check && nc > 0)
        r->unmet_seen = true; /* behind as far as we know, and no way to ask */
    for (int k = 0; k < nk; k++)
        cand[n++] = known[k];
    if (!r->waited) {
        for (int k = 0; can_check && k < nc; k++)
            cand[n++] = check[k];
        /* A standby may still get there: the primary waits for the wait. */
        if (n > 0 || (nc > 0 && pool->vis->max_wait_ns > 0))
            return n;
        r->waited = true; /* nothing to wait for */
    }
    for (int k = 0; k < no; k++)
        cand[n++] = other[k];
    for (int k = 0; k < nu; k++)
        cand[n++] = unknown[k];
    return n;
}

/*
 * Ask for a health round, at most once per poll_ms for the whole pool: the
 * health thread may be asleep for a whole health_interval_ms, and a round
 * serves every waiter at once.  Never under v->mu.
 */
static void want_round(pgg_pool *pool, int64_t now)
{
    pgg_vis *v = pool->vis;
    int64_t last = atomic_load(&v->last_wake_ns);

    if (now - last >= v->poll_ns &&
        atomic_compare_exchange_strong(&v->last_wake_ns, &last, now))
        pgg__pool_wake_health(pool);
}

static bool some_standby_has(pgg_pool *pool, uint64_t need)
{
    for (int i = 0; i < pool->nhosts; i++)
        if (atomic_load(&pool->vis->replayed[i]) >= need &&
            atomic_load_explicit(&pool->hosts[i].role, memory_order_relaxed) ==
                PGG_ROLE_STANDBY)
            return true;
    return false;
}

/* Wait until some standby is known to have replayed need, or until.  Woken
 * by the news (a probe, another call's check); between news, every
 * poll_ms at most, to ask for a round again. */
static void wait_for(pgg_pool *pool, uint64_t need, int64_t until)
{
    pgg_vis *v = pool->vis;
    int64_t now = pgg__now_ns();

    /* Counted before looking (see wake_waiters). */
    atomic_fetch_add(&v->waiters, 1);
    while (!some_standby_has(pool, need) && now < until &&
           !atomic_load(&pool->closed) && !pgg__cancel_now()) {
        int64_t wake_at = now + v->poll_ns < until ? now + v->poll_ns : until;
        struct timespec ts = pgg__ns_to_timespec(pgg__cancel_slice(now, wake_at));

        want_round(pool, now);
        pthread_mutex_lock(&v->mu);
        if (!some_standby_has(pool, need))
            pthread_cond_timedwait(&v->cv, &v->mu, &ts);
        pthread_mutex_unlock(&v->mu);
        now = pgg__now_ns();
    }
    atomic_fetch_sub(&v->waiters, 1);
}

int pgg__vis_retry(pgg_pool *pool, pgg_vis_req *r, int64_t deadline,
                   pgg_intent intent, bool can_check, int *cand,
                   pgg_error *err)
{
    int64_t now, until;
    int n;

    if (!r->need || r->waited || intent != PGG_READ)
        return 0;
    r->waited = true;
    now = pgg__now_ns();
    /* Half the time left stays for the primary. */
    until = now + (deadline - now) / 2;
    if (now + pool->vis->max_wait_ns < until)
        until = now + pool->vis->max_wait_ns;
    if (r->unmet_seen && until > now) {
        atomic_fetch_add_explicit(&pool->vis->n_waits, 1, memory_order_relaxed);
        wait_for(pool, r->need, until);
        r->wait_ns += pgg__now_ns() - now;
    }
    n = pgg__vis_order(pool, r, can_check,
                       cand, pgg__pool_candidates(pool, intent, cand));
    if (n == 0 && r->unmet_seen && err && err->code == PGG_OK)
        pgg__error_set(err, PGG_ETIMEDOUT, NULL, NULL,
                       "no replica replayed position %X/%X in time, and no "
                       "primary can serve the read",
                       (unsigned)(r->need >> 32), (unsigned)r->need);
    return n;
}

bool pgg__vis_discard(pgg_vis_req *r, PGresult **res)
{
    if (!r || !r->not_met)
        return false;
    r->not_met = false;
    PQclear(*res);
    *res = NULL;
    return true;
}

void pgg__vis_served(pgg_vis *v, pgg_vis_req *r, pgg_intent intent)
{
    if (!v)
        return;
    if (r->on_primary && intent == PGG_READ)
        atomic_fetch_add_explicit(&v->n_primary, 1, memory_order_relaxed);
    /* A primary-only read has every write acknowledged before it began:
     * its answer (and a cached copy of it) holds that position. */
    if (intent == PGG_READ_PRIMARY && !r->lsn)
        r->lsn = max_u64(r->need, r->latest);
    if (intent != PGG_WRITE)
        return;
    if (r->lsn)
        pgg__vis_note_write(v, r->lsn);
    /* Counted after its answer came: a sample that reads the count later
     * is taken after this write committed. */
    if (v->mode == PGG_RYW_SAMPLED)
        atomic_fetch_add(&v->epoch, 1);
}

void pgg__vis_stats(pgg_vis *v, pgg_stats *out)
{
    if (!v)
        return;
    out->ryw_samples = atomic_load_explicit(&v->n_samples, memory_order_relaxed);
    out->ryw_checks = atomic_load_explicit(&v->n_checks, memory_order_relaxed);
    out->ryw_waits = atomic_load_explicit(&v->n_waits, memory_order_relaxed);
    out->ryw_primary = atomic_load_explicit(&v->n_primary, memory_order_relaxed);
}

void pgg__vis_wrote(pgg_vis *v)
{
    if (v && v->mode == PGG_RYW_SAMPLED)
        atomic_fetch_add(&v->epoch, 1);
}

/* ------------------------------------------------------------ samples */

void pgg__vis_sample_known(pgg_pool *pool, pgg_vis_req *r)
{
    pgg_vis *v = pool->vis;

    r->sample = false;
    if (atomic_load(&v->s_epoch) >= r->epoch) {
        r->need = max_u64(r->need, atomic_load(&v->s_lsn));
        floor_need(v, r);
        return;
    }
    /* No sample covers this call's writes and the loop cannot wait for
     * one: only a primary proves the read is not older. */
    r->blind = true;
    r->need = UINT64_MAX;
}

int64_t pgg__vis_sample(pgg_pool *pool, pgg_vis_req *r, int64_t deadline,
                        pgg_sample_fn sample, pgg_error *err)
{
    pgg_vis *v = pool->vis;
    bool failed = false;

    r->sample = false;
    pthread_mutex_lock(&v->smu);
    while (atomic_load(&v->s_epoch) < r->epoch) {
        if (!v->s_busy) {
            /* Lead: whatever was acknowledged before the sample is sent
             * is in the position it reads. */
            uint64_t e = atomic_load(&v->epoch), lsn = 0;
            int rc;

            v->s_busy = true;
            v->s_failed = false;
            v->s_flight = e;
            pthread_mutex_unlock(&v->smu);
            atomic_fetch_add_explicit(&v->n_samples, 1, memory_order_relaxed);
            rc = sample(pool, deadline, &lsn, err);
            pthread_mutex_lock(&v->smu);
            v->s_busy = false;
            v->s_seq++;
            v->s_failed = rc != PGG_OK;
            if (rc == PGG_OK) {
                raise_to(&v->s_lsn, lsn);
                raise_to(&v->s_epoch, e);
            } else {
                v->s_err = *err;
            }
            pthread_cond_broadcast(&v->scv);
            failed = rc != PGG_OK;
            break;
        }
        /* Follow the flight in progress; if it covers fewer writes than
         * this call needs, lead the next one. */
        uint64_t seq = v->s_seq;
        int64_t now = pgg__now_ns();

        while (v->s_busy && v->s_seq == seq && now < deadline &&
               !pgg__cancel_now()) {
            struct timespec ts =
                pgg__ns_to_timespec(pgg__cancel_slice(now, deadline));

            pthread_cond_timedwait(&v->scv, &v->smu, &ts);
            now = pgg__now_ns();
        }
        if (v->s_seq == seq) {
            pgg__error_set(err, PGG_ETIMEDOUT, NULL, NULL,
                           "read your writes: deadline exceeded waiting for "
                           "the primary's position");
            failed = true;
            break;
        }
        if (v->s_failed && v->s_flight >= r->epoch) {
            *err = v->s_err;
            failed = true;
            break;
        }
    }
    pthread_mutex_unlock(&v->smu);
    if (failed) {
        /* Past every position: no standby, no cached answer proves it. */
        r->blind = true;
        r->need = UINT64_MAX;
        return pgg__now_ns();
    }
    r->need = max_u64(r->need, atomic_load(&v->s_lsn));
    floor_need(v, r);
    return pgg__now_ns();
}

/* ------------------------------------------------------- round trips */

static bool is_error(const PGresult *res)
{
    ExecStatusType s = PQresultStatus(res);
    return s == PGRES_FATAL_ERROR || s == PGRES_BAD_RESPONSE ||
           s == PGRES_NONFATAL_ERROR;
}

/* A simple-protocol text (several statements) refused by the extended
 * protocol at Parse: provably nothing ran, the text may go again as a
 * simple query.  Not a syntax error inside one statement: its position is
 * reported, and resending it would only fail again. */
static bool refused_at_parse(const PGresult *res)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *fn = res ? PQresultErrorField(res, PG_DIAG_SOURCE_FUNCTION)
                         : NULL;

    return st && strcmp(st, "42601") == 0 && fn &&
           strcmp(fn, "exec_parse_message") == 0;
}

static int send_stmt(PGconn *conn, const pgg_query *q)
{
    if (q->stmt_name)
        return PQsendQueryPrepared(conn, q->stmt_name, q->nparams, q->values,
                                   q->lengths, q->formats, q->result_format);
    return PQsendQueryParams(conn, q->sql, q->nparams, q->types, q->values,
                             q->lengths, q->formats, q->result_format);
}

static int pipe_lost(PGconn *conn, PGresult **res, int n, pgg_attempt_end *end,
                     pgg_attempt_end how, const char *host, pgg_error *err)
{
    for (int k = 0; k < n; k++) {
        PQclear(res[k]);
        res[k] = NULL;
    }
    *end = how;
    return pgg__link_error(err, PGG_ECONNECT, conn, NULL, host,
                           how == PGG_END_NOT_SENT ? "send"
                                                   : "connection lost");
}

/*
 * Collect the answers of n queries sent in pipeline mode, each followed by
 * its own sync (per_query false), or all under one final sync (per_query
 * true): res[k] gets query k's result as PQexec keeps it (the first error,
 * else the last).  Then leave pipeline mode.  Returns like pgg__link_wait;
 * on failure every res[k] is NULL.
 */
static int pipe_collect(PGconn *conn, int n, PGresult **res, bool per_query,
                        int64_t deadline, const char *host,
                        pgg_attempt_end *end, pgg_error *err)
{
    int k = 0, nulls = 0, rc;

    for (int j = 0; j < n; j++)
        res[j] = NULL;
    while ((rc = PQflush(conn)) == 1) {
        int ev = pgg__link_poll(PQsocket(conn), POLLIN | POLLOUT, deadline);

        if (ev == 0)
            goto deadline;
        if (ev < 0 || ((ev & POLLIN) && !PQconsumeInput(conn)))
            return pipe_lost(conn, res, n, end, PGG_END_LOST, host, err);
    }
    if (rc < 0)
        return pipe_lost(conn, res, n, end, PGG_END_LOST, host, err);
    for (;;) {
        int ev;

        while (!PQisBusy(conn)) {
            PGresult *r = PQgetResult(conn);

            if (!r) {
                /* One NULL ends a query's results; two in a row mean
                 * libpq has nothing more coming. */
                if (++nulls > 1)
                    return pipe_lost(conn, res, n, end, PGG_END_LOST, host,
                                     err);
                if (per_query)
                    k++;
                continue;
            }
            nulls = 0;
            /* libpq hands out a COPY result again on every call while the
             * server waits for data that no one here can give: refuse it
             * now, or this loop would spin past the deadline.  The
             * connection is mid-COPY and is closed by the caller. */
            if (pgg__link_is_copy(r)) {
                rc = pgg__link_refuse_copy(r, host, err);
                PQclear(r);
                for (int j = 0; j < n; j++) {
                    PQclear(res[j]);
                    res[j] = NULL;
                }
                *end = PGG_END_REFUSED;
                return rc;
            }
            if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
                PQclear(r);
                if (per_query || ++k == n)
                    goto done;
                continue;
            }
            if (k >= n || (res[k] && is_error(res[k]))) {
                PQclear(r);
            } else {
                PQclear(res[k]);
                res[k] = r;
            }
        }
        if (PQstatus(conn) == CONNECTION_BAD)
            return pipe_lost(conn, res, n, end, PGG_END_LOST, host, err);
        ev = pgg__link_poll(PQsocket(conn), POLLIN, deadline);
        if (ev == 0)
            goto deadline;
        if (ev < 0 || !PQconsumeInput(conn)) {
            if (PQstatus(conn) == CONNECTION_BAD)
                return pipe_lost(conn, res, n, end, PGG_END_LOST, host, err);
        }
    }
done:
    /* Only fails when something is still pending: then the connection is
     * not reusable (pgg__link_reusable) and will not be pooled. */
    (void)PQexitPipelineMode(conn);
    *end = PGG_END_RESULT;
    return PGG_OK;
deadline:
    for (int j = 0; j < n; j++)
        PQclear(res[j]);
    *end = PGG_END_DEADLINE;
    return pgg__error_set(err, PGG_ETIMEDOUT, NULL, host,
                          "query: deadline exceeded; connection dropped and "
                          "the query cancelled");
}

/* A position query, prepared once per connection (a named statement:
 * no parse and plan per write), in the same pipeline as its first use. */
typedef struct posq {
    const char *name;
    const char *sql;
    unsigned bit; /* in pgg_link.vis_prepared */
} posq;

static const posq lsn_q = {"_pgguard_lsn", lsn_sql, 0x1u};
static const posq check_q = {"_pgguard_replay", check_sql, 0x2u};
/* Not a statement: the session's reads run at an isolation level whose
 * snapshot is the transaction's, so a check must end its own transaction
 * before the read (two Syncs).  Cleared with the rest by DISCARD ALL,
 * and learnt again from the next check. */
#define VIS_TXN_SNAPSHOT 0x10u
static const posq begin_q = {"_pgguard_begin", "BEGIN", 0x4u};
static const posq commit_q = {"_pgguard_commit", "COMMIT", 0x8u};

/* Execute a statement of ours that the pipeline prepared already. */
static int send_named(PGconn *conn, const posq *pq)
{
    return PQsendQueryPrepared(conn, pq->name, 0, NULL, NULL, NULL, 0);
}

static bool send_posq(PGconn *conn, pgg_link *l, const posq *pq)
{
    if (!(l->vis_prepared & pq->bit)) {
        if (!PQsendPrepare(conn, pq->name, pq->sql, 0, NULL))
            return false;
        l->vis_prepared |= pq->bit;
    }
    return PQsendQueryPrepared(conn, pq->name, 0, NULL, NULL, NULL, 0) != 0;
}

/* What the position query's answer says about its statement: a session
 * that lost it (DISCARD ALL, DEALLOCATE on a lease's raw connection)
 * prepares it again next time; one that has it already keeps it. */
static void posq_answered(pgg_link *l, const posq *pq, const PGresult *res)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    if (st && strcmp(st, "26000") == 0)
        l->vis_prepared &= ~pq->bit;
    else if (st && strcmp(st, "42P05") == 0)
        l->vis_prepared |= pq->bit;
}

/* A Parse of ours that failed (aborted by an earlier error in its
 * pipeline) did not prepare it: prepare it again next time.  42P05 says
 * the session had it already. */
static void parse_answered(pgg_link *l, const posq *pq, const PGresult *res)
{
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    if (!res || (PQresultStatus(res) != PGRES_COMMAND_OK &&
                 !(st && strcmp(st, "42P05") == 0)))
        l->vis_prepared &= ~pq->bit;
}

/* Enter pipeline mode and send the write then its position (position
 * false), or the position then the read (true), each with its own sync,
 * or (one_sync) the position and the read under one final sync.
 * Returns false when nothing could be sent that way (*end says whether the
 * connection is usable: PGG_END_RESULT to fall back, NOT_SENT when dead). */
static bool pipe_send(pgg_link *l, const pgg_query *q, const posq *pq,
                      bool position_first, bool one_sync,
                      pgg_attempt_end *end)
{
    PGconn *conn = l->conn;
    bool ok;

    *end = PGG_END_RESULT;
    if (PQstatus(conn) != CONNECTION_OK) {
        *end = PGG_END_NOT_SENT;
        return false;
    }
    if (!PQenterPipelineMode(conn))
        return false; /* busy or already in pipeline mode: the slow way */
    if (position_first)
        ok = send_posq(conn, l, pq) && (one_sync || PQpipelineSync(conn)) &&
             send_stmt(conn, q) && PQpipelineSync(conn);
    else
        ok = send_stmt(conn, q) && PQpipelineSync(conn) &&
             send_posq(conn, l, pq) && PQpipelineSync(conn);
    if (ok)
        return true;
    /* Nothing was committed: an extended-protocol statement commits only
     * at its Sync, and a dead connection rolls back what it ran. */
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
        (void)PQexitPipelineMode(conn);
    *end = PGG_END_NOT_SENT;
    return false;
}

static uint64_t lsn_of(const PGresult *res, int col)
{
    uint64_t lsn = 0;

    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
        PQnfields(res) > col && !PQgetisnull(res, 0, col))
        pgg__lsn_parse(PQgetvalue(res, 0, col), &lsn);
    return lsn;
}

static bool succeeded(const PGresult *res)
{
    ExecStatusType s = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
}

/* A committed write's position in a round trip of its own.  The write's
 * answer is in hand: a failure here only leaves the position unknown (a
 * timed-out session is busy, so it is closed rather than pooled). */
static uint64_t query_lsn(PGconn *conn, int64_t deadline, const char *host)
{
    static const pgg_query lq = {.sql = lsn_sql};
    PGresult *lres = NULL;
    pgg_attempt_end lend;
    uint64_t lsn = 0;

    if (pgg__link_exec(conn, &lq, deadline, host, &lres, &lend, NULL) == PGG_OK)
        lsn = lsn_of(lres, 0);
    PQclear(lres);
    return lsn;
}

static void learn_lsn(PGconn *conn, const pgg_query *q, int64_t deadline,
                      const char *host)
{
    q->vis->lsn = query_lsn(conn, deadline, host);
}

uint64_t pgg__vis_learn(pgg_vis *v, PGconn *conn, int64_t deadline_ns,
                        const char *host)
{
    uint64_t lsn;

    if (!conn || PQtransactionStatus(conn) != PQTRANS_IDLE)
        return 0;
    lsn = query_lsn(conn, deadline_ns, host);
    pgg__vis_note_write(v, lsn);
    return lsn;
}

/* Is the first keyword of sql (past blanks, parentheses and comments)
 * one of words (NULL-terminated, lower case)? */
static bool first_word_in(const char *sql, const char *const *words)
{
    const char *p = sql;

    while (p && *p) {
        if (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '(') {
            p++;
        } else if (p[0] == '-' && p[1] == '-') {
            p = strchr(p, '\n');
        } else if (p[0] == '/' && p[1] == '*') {
            p = strstr(p + 2, "*/");
            p = p ? p + 2 : NULL;
        } else {
            break;
        }
    }
    for (; p && *words; words++) {
        size_t n = strlen(*words);

        if (strncasecmp(p, *words, n) == 0 &&
            !(isalnum((unsigned char)p[n]) || p[n] == '_'))
            return true;
    }
    return false;
}

bool pgg__vis_is_copy(const char *sql)
{
    static const char *const copy[] = {"copy", NULL};
    return first_word_in(sql, copy);
}

/* Statements that must not be wrapped in BEGIN ... COMMIT: transaction
 * control (it would end or nest ours), COPY (pipeline mode cannot carry
 * it), and those that refuse a transaction block outright.  Others refused
 * there (CREATE DATABASE, CREATE INDEX CONCURRENTLY...) come back as 25001
 * before doing anything, and go the two-sync way then.  CALL and DO may
 * commit inside (a procedure's COMMIT): in a block the server refuses
 * that only when it gets there, as 2D000 after running part of the body,
 * so they never go in one. */
static bool wrappable(const char *sql)
{
    static const char *const no[] = {
        "begin",   "start",   "commit",  "end",      "rollback", "abort",
        "savepoint", "release", "prepare", "copy",   "vacuum",   "discard",
        "reindex", "cluster", "checkpoint", "lock", "call", "do", NULL};
    return !first_word_in(sql, no);
}

/* The write, then (only if it committed: the session is idle again) its
 * position, each a round trip: for what pipeline mode cannot carry. */
static int write_slow(PGconn *conn, const pgg_query *q, int64_t deadline,
                      const char *host, PGresult **out, pgg_attempt_end *end,
                      pgg_error *err)
{
    int rc = pgg__link_exec(conn, q, deadline, host, out, end, err);

    if (rc == PGG_OK && succeeded(*out) &&
        PQtransactionStatus(conn) == PQTRANS_IDLE)
        learn_lsn(conn, q, deadline, host);
    return rc;
}

/* ROLLBACK what the wrap left open (a failed statement, a refused one),
 * so that the session is idle again; false when it is not. */
static bool unwrap(PGconn *conn, int64_t deadline, const char *host)
{
    static const pgg_query rq = {.sql = "ROLLBACK"};
    PGresult *res = NULL;
    pgg_attempt_end e;

    if (PQtransactionStatus(conn) == PQTRANS_IDLE)
        return true;
    pgg__link_exec(conn, &rq, deadline, host, &res, &e, NULL);
    PQclear(res);
    return e == PGG_END_RESULT && PQtransactionStatus(conn) == PQTRANS_IDLE;
}

static int exec_write_two_syncs(pgg_link *l, const pgg_query *q,
                                int64_t deadline, const char *host,
                                PGresult **out, pgg_attempt_end *end,
                                pgg_error *err);

/*
 * A one-shot write in one Sync: BEGIN, the statement, COMMIT, then the
 * position (outside the committed transaction).  One ReadyForQuery, so
 * one flush each way, against two for statement-Sync-position-Sync.
 * BEGIN and COMMIT are named statements prepared once per connection, as
 * the position query is: the server binds them without parsing (measured:
 * about a third of the wrap's server CPU).  What a transaction block
 * refuses (25001), several statements in one string (refused at Parse),
 * or a session that lost one of our statements is rolled back, having
 * committed nothing, and goes the other way; a failed statement is rolled
 * back and its error returned.
 */
static int exec_write_wrapped(pgg_link *l, const pgg_query *q,
                              int64_t deadline, const char *host,
                              PGresult **out, pgg_attempt_end *end,
                              pgg_error *err)
{
    static const posq *const wrap[] = {&begin_q, &commit_q, &lsn_q};
    PGconn *conn = l->conn;
    /* The Parses of what this connection lacks, then BEGIN, statement,
     * COMMIT, position. */
    PGresult *res[7];
    const posq *parsed[3];
    int np = 0, nq, b;
    bool ok;
    int rc;
    const char *st, *cst;

    *out = NULL;
    *end = PGG_END_RESULT;
    if (PQstatus(conn) != CONNECTION_OK) {
        *end = PGG_END_NOT_SENT;
        return pgg__link_error(err, PGG_ECONNECT, conn, NULL, host, "send");
    }
    if (!PQenterPipelineMode(conn))
        return write_slow(conn, q, deadline, host, out, end, err);
    ok = true;
    for (int k = 0; k < 3 && ok; k++)
        if (!(l->vis_prepared & wrap[k]->bit)) {
            ok = PQsendPrepare(conn, wrap[k]->name, wrap[k]->sql, 0, NULL);
            l->vis_prepared |= wrap[k]->bit;
            parsed[np++] = wrap[k];
        }
    ok = ok && send_named(conn, &begin_q) && send_stmt(conn, q) &&
         send_named(conn, &commit_q) && send_named(conn, &lsn_q) &&
         PQpipelineSync(conn);
    if (!ok) {
        /* Nothing committed: the COMMIT never arrived, and a dead
         * connection rolls back what it ran. */
        if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
            (void)PQexitPipelineMode(conn);
        *end = PGG_END_NOT_SENT;
        return pgg__link_error(err, PGG_ECONNECT, conn, NULL, host, "send");
    }
    nq = np + 4;
    b = np; /* res[b] BEGIN, [b + 1] statement, [b + 2] COMMIT, [b + 3] position */
    rc = pipe_collect(conn, nq, res, true, deadline, host, end, err);
    if (rc != PGG_OK)
        return rc;
    for (int k = 0; k < np; k++)
        parse_answered(l, parsed[k], res[k]);
    posq_answered(l, &begin_q, res[b]);
    posq_answered(l, &commit_q, res[b + 2]);
    posq_answered(l, &lsn_q, res[b + 3]);
    st = res[b + 1] ? PQresultErrorField(res[b + 1], PG_DIAG_SQLSTATE) : NULL;
    cst = res[b + 2] ? PQresultErrorField(res[b + 2], PG_DIAG_SQLSTATE) : NULL;
    if (!succeeded(res[b]) || refused_at_parse(res[b + 1]) ||
        (st && strcmp(st, "25001") == 0) ||
        (succeeded(res[b + 1]) && cst && strcmp(cst, "26000") == 0)) {
        /* Nothing of the statement committed: it did not run, or our
         * COMMIT was gone and the block failed around it. */
        for (int k = 0; k < nq; k++)
            PQclear(res[k]);
        if (!unwrap(conn, deadline, host)) {
            *end = PGG_END_NOT_SENT;
            return pgg__link_error(err, PGG_ECONNECT, conn, NULL, host,
                                   "rollback");
        }
        return exec_write_two_syncs(l, q, deadline, host, out, end, err);
    }
    if (succeeded(res[b + 1]) && !succeeded(res[b + 2])) {
        /* COMMIT failed (a deferred constraint, a serialization failure):
         * that is the write's outcome, as it would have been at a Sync. */
        PQclear(res[b + 1]);
        res[b + 1] = res[b + 2];
        res[b + 2] = NULL;
    }
    if (succeeded(res[b + 1]) && PQtransactionStatus(conn) == PQTRANS_IDLE) {
        q->vis->lsn = lsn_of(res[b + 3], 0);
        if (!q->vis->lsn)
            learn_lsn(conn, q, deadline, host);
    }
    *out = res[b + 1];
    res[b + 1] = NULL;
    for (int k = 0; k < nq; k++)
        PQclear(res[k]);
    if (is_error(*out)) {
        pgg__link_error(err, PGG_ESERVER, conn, *out, host, NULL);
        /* A connection left in the failed block is not pooled again. */
        (void)unwrap(conn, deadline, host);
    }
    return PGG_OK;
}

static int exec_write(pgg_link *l, const pgg_query *q, int64_t deadline,
                      const char *host, PGresult **out, pgg_attempt_end *end,
                      pgg_error *err)
{
    if (!q->vis->in_lease && PQtransactionStatus(l->conn) == PQTRANS_IDLE &&
        wrappable(q->sql))
        return exec_write_wrapped(l, q, deadline, host, out, end, err);
    return exec_write_two_syncs(l, q, deadline, host, out, end, err);
}

static int exec_write_two_syncs(pgg_link *l, const pgg_query *q,
                                int64_t deadline, const char *host,
                                PGresult **out, pgg_attempt_end *end,
                                pgg_error *err)
{
    PGconn *conn = l->conn;
    PGresult *res[2];
    int rc;

    *out = NULL;
    if (!pipe_send(l, q, &lsn_q, false, false, end)) {
        if (*end == PGG_END_NOT_SENT)
            return pgg__link_error(err, PGG_ECONNECT, conn, NULL, host, "send");
        return write_slow(conn, q, deadline, host, out, end, err);
    }
    rc = pipe_collect(conn, 2, res, false, deadline, host, end, err);
    if (rc != PGG_OK)
        return rc;
    posq_answered(l, &lsn_q, res[1]);
    if (refused_at_parse(res[0])) {
        PQclear(res[0]);
        PQclear(res[1]);
        return write_slow(conn, q, deadline, host, out, end, err);
    }
    if (succeeded(res[0]) && PQtransactionStatus(conn) == PQTRANS_IDLE) {
        q->vis->lsn = lsn_of(res[1], 0);
        /* The prepared position query was gone (a lease's DEALLOCATE):
         * a committed write must not go without its position. */
        if (!q->vis->lsn)
            learn_lsn(conn, q, deadline, host);
    }
    PQclear(res[1]);
    *out = res[0];
    if (is_error(res[0]))
        pgg__link_error(err, PGG_ESERVER, conn, res[0], host, NULL);
    return PGG_OK;
}

/* The sample's query: the primary's insert position, prepared once per
 * connection.  Its answer goes back as the call's result for
 * pgg__pool_exec_on to classify; the position in q->vis->lsn. */
static int exec_sample(pgg_link *l, const pgg_query *q, int64_t deadline,
                       const char *host, PGresult **out, pgg_attempt_end *end,
                       pgg_error *err)
{
    PGconn *conn = l->conn;
    PGresult *res[2];
    int n = l->vis_prepared & lsn_q.bit ? 1 : 2;
    int rc;

    *out = NULL;
    *end = PGG_END_RESULT;
    if (PQstatus(conn) != CONNECTION_OK || !PQenterPipelineMode(conn)) {
        if (PQstatus(conn) != CONNECTION_OK) {
            *end = PGG_END_NOT_SENT;
            return pgg__link_error(err, PGG_ECONNECT, conn, NULL, host,
                                   "send");
        }
        rc = pgg__link_exec(conn, q, deadline, host, out, end, err);
        if (rc == PGG_OK)
            q->vis->lsn = lsn_of(*out, 0);
        return rc;
    }
    if (!send_posq(conn, l, &lsn_q) || !PQpipelineSync(conn)) {
        if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF)
            (void)PQexitPipelineMode(conn);
        *end = PGG_END_NOT_SENT;
        return pgg__link_error(err, PGG_ECONNECT, conn, NULL, host, "send");
    }
    rc = pipe_collect(conn, n, res, true, deadline, host, end, err);
    if (rc != PGG_OK)
        return rc;
    if (n == 2)
        parse_answered(l, &lsn_q, res[0]);
    posq_answered(l, &lsn_q, res[n - 1]);
    q->vis->lsn = lsn_of(res[n - 1], 0);
    if (n == 2)
        PQclear(res[0]);
    *out = res[n - 1];
    if (!q->vis->lsn && !is_error(*out)) {
        /* Our prepared query was gone: ask without it. */
        PQclear(*out);
        *out = NULL;
        rc = pgg__link_exec(conn, q, deadline, host, out, end, err);
        if (rc == PGG_OK)
            q->vis->lsn = lsn_of(*out, 0);
        return rc;
    }
    if (is_error(*out))
        pgg__link_error(err, PGG_ESERVER, conn, *out, host, NULL);
    return PGG_OK;
}

/* What a primary's answer is known to include. */
static uint64_t primary_lsn(pgg_vis_req *r)
{
    r->on_primary = true;
    return r->blind ? r->latest : max_u64(r->need, r->latest);
}

/* Is the check's answer good for need?  Notes what it learnt. */
static bool check_met(pgg_pool *pool, pgg_host *h, pgg_vis_req *r,
                      const PGresult *res)
{
    uint64_t lsn;

    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 ||
        PQnfields(res) < 2)
        return false;
    if (strcmp(PQgetvalue(res, 0, 0), "f") == 0) {
        /* A primary: it has every write it acknowledged. */
        r->lsn = primary_lsn(r);
        return true;
    }
    lsn = lsn_of(res, 1);
    pgg__vis_note_replayed(pool->vis, h->index, lsn, false);
    r->lsn = lsn;
    return lsn >= r->need;
}

/* The check, then the read, each a round trip. */
static int read_slow(pgg_pool *pool, pgg_host *h, PGconn *conn,
                     const pgg_query *q, int64_t deadline, PGresult **out,
                     pgg_attempt_end *end, pgg_error *err)
{
    static const pgg_query cq = {.sql = check_sql};
    PGresult *cres = NULL;
    int rc = pgg__link_exec(conn, &cq, deadline, h->name, &cres, end, err);
    bool met = rc == PGG_OK && check_met(pool, h, q->vis, cres);

    PQclear(cres);
    if (rc != PGG_OK)
        return rc;
    rc = pgg__link_exec(conn, q, deadline, h->name, out, end, err);
    if (rc == PGG_OK && !met)
        q->vis->not_met = q->vis->unmet_seen = true;
    return rc;
}

/* Did the check run at an isolation level where each statement takes its
 * own snapshot?  Then a read after it in the same transaction sees all the
 * check saw replayed.  (PostgreSQL runs read uncommitted as read
 * committed.) */
static bool own_snapshots(const PGresult *res)
{
    const char *iso;

    if (PQnfields(res) < 3 || PQgetisnull(res, 0, 2))
        return false;
    iso = PQgetvalue(res, 0, 2);
    return strcmp(iso, "read committed") == 0 ||
           strcmp(iso, "read uncommitted") == 0;
}

/*
 * The check, then the read, in one round trip.  Under read committed (the
 * default) both go under one Sync, one implicit transaction: the read
 * takes its snapshot after the check has read the replay position, and
 * the check itself reports the isolation level that makes that so.  A
 * session whose reads share the transaction's snapshot (repeatable read
 * by default, say) gets each in its own transaction, a Sync between them
 * (server CPU of a checked read, measured: x1.14 of a plain one in one
 * Sync, x1.39 in two).
 */
static int exec_checked(pgg_pool *pool, pgg_host *h, pgg_link *l,
                        const pgg_query *q, int64_t deadline, PGresult **out,
                        pgg_attempt_end *end, pgg_error *err)
{
    PGconn *conn = l->conn;
    pgg_vis_req *r = q->vis;
    bool one_sync = !(l->vis_prepared & VIS_TXN_SNAPSHOT);
    /* one_sync: a Parse of the check first the first time */
    int np = one_sync && !(l->vis_prepared & check_q.bit) ? 1 : 0;
    int n = np + 2;
    PGresult *res[3];
    PGresult *check;
    bool met;
    int rc;

    *out = NULL;
    r->checked = true;
    atomic_fetch_add_explicit(&pool->vis->n_checks, 1, memory_order_relaxed);
    if (!pipe_send(l, q, &check_q, true, one_sync, end)) {
        if (*end == PGG_END_NOT_SENT)
            return pgg__link_error(err, PGG_ECONNECT, conn, NULL, h->name,
                                   "send");
        return read_slow(pool, h, conn, q, deadline, out, end, err);
    }
    if (!one_sync) {
        /* Two Syncs: the Parse, if any, counts with the check. */
        n = 2;
        np = 0;
    }
    rc = pipe_collect(conn, n, res, one_sync, deadline, h->name, end, err);
    if (rc != PGG_OK)
        return rc;
    if (np)
        parse_answered(l, &check_q, res[0]);
    check = res[np];
    posq_answered(l, &check_q, check);
    if (one_sync && (!check || PQresultStatus(check) != PGRES_TUPLES_OK ||
                     !own_snapshots(check))) {
        /* The check failed (its read was aborted with it), or the read
         * shared its snapshot: neither answer tells anything.  Again,
         * the check in its own transaction: the slow way after a failure,
         * two Syncs from now on for a session whose reads share one. */
        bool failed = !check || PQresultStatus(check) != PGRES_TUPLES_OK;

        for (int k = 0; k < n; k++)
            PQclear(res[k]);
        if (failed)
            return read_slow(pool, h, conn, q, deadline, out, end, err);
        l->vis_prepared |= VIS_TXN_SNAPSHOT;
        return exec_checked(pool, h, l, q, deadline, out, end, err);
    }
    /* The read's snapshot was taken after the check: its own statement's
     * (read committed), or a new transaction's after a Sync. */
    met = check_met(pool, h, r, check);
    for (int k = 0; k <= np; k++)
        PQclear(res[k]);
    if (met && refused_at_parse(res[np + 1])) {
        PQclear(res[np + 1]);
        return pgg__link_exec_wd(pool->watchdog, conn, q, deadline, h->name,
                                 out, end, err);
    }
    if (!met)
        r->not_met = r->unmet_seen = true;
    *out = res[np + 1];
    if (is_error(*out))
        pgg__link_error(err, PGG_ESERVER, conn, *out, h->name, NULL);
    return PGG_OK;
}

bool pgg__vis_plain(pgg_pool *pool, pgg_host *h, const pgg_query *q)
{
    pgg_vis_req *r = q->vis;
    uint64_t known;
    int role;

    if (r && r->is_sample)
        return false; /* the sample's own query: pgg__vis_exec runs it */
    if (!r || q->prepare || (!r->want_lsn && !r->need))
        return true;
    r->not_met = false;
    r->on_primary = false;
    r->lsn = 0;
    if (r->want_lsn)
        return false;
    role = atomic_load_explicit(&h->role, memory_order_relaxed);
    if (role == PGG_ROLE_PRIMARY) {
        r->lsn = primary_lsn(r);
        return true;
    }
    /* Read before sending: the answer's snapshot comes later, so it holds
     * at least this. */
    known = pgg__vis_replayed(pool->vis, h->index);
    if (role == PGG_ROLE_STANDBY && known >= r->need) {
        r->lsn = known;
        return true;
    }
    return false;
}

bool pgg__vis_write_learns(PGconn *conn, const PGresult *res)
{
    return succeeded(res) && PQtransactionStatus(conn) == PQTRANS_IDLE;
}

const pgg_query *pgg__vis_lsn_query(void)
{
    static const pgg_query lq = {.sql = lsn_sql};

    return &lq;
}

uint64_t pgg__vis_lsn_of(const PGresult *res)
{
    return lsn_of(res, 0);
}

int pgg__vis_exec(pgg_pool *pool, pgg_host *h, pgg_link *l,
                  const pgg_query *q, int64_t deadline, PGresult **out,
                  pgg_attempt_end *end, pgg_error *err)
{
    if (!q->vis || (!q->vis->is_sample && pgg__vis_plain(pool, h, q)))
        return pgg__link_exec_mode(pool->watchdog, l->conn, q, deadline, 0,
                                   &l->recv_mode, h->name, out, end, err);
    /* Pipelines read without blocking (link.h's recv wait). */
    pgg__link_recv_off(l->conn, &l->recv_mode, true);
    if (q->vis->is_sample)
        return exec_sample(l, q, deadline, h->name, out, end, err);
    if (q->vis->want_lsn)
        return exec_write(l, q, deadline, h->name, out, end, err);
    return exec_checked(pool, h, l, q, deadline, out, end, err);
}

/* ------------------------------------------------------------- public */

uint64_t pgg_pool_lsn(pgg_pool *pool)
{
    return pool ? pgg__vis_latest(pool->vis) : 0;
}

int pgg_lsn_format(uint64_t lsn, char *buf, size_t len)
{
    if (!buf || len < 18)
        return PGG_EINVAL;
    snprintf(buf, len, "%" PRIX32 "/%" PRIX32, (uint32_t)(lsn >> 32),
             (uint32_t)lsn);
    return PGG_OK;
}

int pgg_lsn_parse(const char *text, uint64_t *out)
{
    uint64_t v;

    /* What PostgreSQL prints and nothing else: strtoul alone would take
     * leading blanks and signs. */
    if (!out || !text || strspn(text, "0123456789abcdefABCDEF/") != strlen(text) ||
        !pgg__lsn_parse(text, &v))
        return PGG_EINVAL;
    *out = v;
    return PGG_OK;
}

pthread_mutex_t *pgg__vis_mutex(pgg_vis *v, bool sample)
{
    return sample ? &v->smu : &v->mu;
}
