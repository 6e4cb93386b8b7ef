/* The mixed load of workload.h. */
#include "workload.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

typedef struct wl_thread {
    wl *w;
    pthread_t th;
    int index;
    uint64_t seed, seq;
    wl_totals t;
    uint64_t *acked;
    size_t nacked, capacked;
    wl_window *ref;
    int nref, capref;
    bool refusing; /* the last answer was PGG_EOPEN */
    wl_window *over; /* [deadline, end] of each call past the bound */
    int nover, capover;
} wl_thread;

struct wl {
    pgg_pool *pool;
    uint64_t id_base; /* ids stay unique across loads in one process */
    wl_options o;
    double t0;
    atomic_int stop;
    atomic_int unexpected_printed;
    int n;
    wl_thread *th;
    /* the canary: a thread that sleeps 1 ms at a time and notes how late it
     * wakes, to tell the machine's stalls from the pool's */
    pthread_t canary;
    bool canary_running;
    double canary_worst_ms;
    uint64_t canary_late;
    wl_window *stalls; /* the canary's late wake-ups (> 5 ms): [due, woke] */
    int nstalls, capstalls;
    wl_window *merged;
    int nmerged;
};

static atomic_int loads_started;

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) {
        fprintf(stderr, "workload: out of memory\n");
        abort();
    }
    return p;
}

static void push_window(wl_window **a, int *n, int *cap, double from, double to)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *a = xrealloc(*a, (size_t)*cap * sizeof **a);
    }
    (*a)[(*n)++] = (wl_window){from, to};
}

static uint64_t next_rand(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void pause_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int wl_setup(pgh_node *primary)
{
    char sql[512];

    snprintf(sql, sizeof sql,
             "SET client_min_messages = warning;"
             "DROP TABLE IF EXISTS wl_r, wl_w;"
             "CREATE TABLE wl_r (id int PRIMARY KEY, v text);"
             "INSERT INTO wl_r SELECT g, 'r' || g FROM generate_series(1, %d) g;"
             "CREATE TABLE wl_w (id bigint PRIMARY KEY, how text NOT NULL);",
             WL_ROWS);
    if (pgh_node_exec(primary, sql) != 0) {
        fprintf(stderr, "workload: setup: %s\n", pgh_node_error(primary));
        return -1;
    }
    return 0;
}

double wl_elapsed_ms(const wl *w)
{
    return pgh_now_ms() - w->t0;
}

/* ------------------------------------------------------------ accounting */

/* A call's duration against its deadline; e says how it ended. */
static void timed(wl_thread *t, const char *what, double started, int deadline_ms,
                  const pgg_error *e)
{
    double over = pgh_now_ms() - started - deadline_ms;

    if (over > t->t.worst_overshoot_ms)
        t->t.worst_overshoot_ms = over;
    if (over > WL_OVERSHOOT_MS) {
        t->t.overshoots++;
        push_window(&t->over, &t->nover, &t->capover, started + deadline_ms - t->w->t0,
                    pgh_now_ms() - t->w->t0);
        fprintf(stderr, "workload: at %.0f ms, %s ended %.1f ms past its %d ms deadline "
                "(%s%s%s)\n", pgh_now_ms() - t->w->t0, what, over, deadline_ms,
                pgg_err_name(e->code), e->message[0] ? ": " : "", e->message);
    }
}

static void succeeded(wl_thread *t)
{
    t->refusing = false;
}

/* What a host fault can cause: anything else is a bug in the pool or here. */
static bool explained(const pgg_error *e)
{
    switch (e->code) {
    case PGG_EBULKHEAD:
    case PGG_EOPEN:
    case PGG_ENOPRIMARY:
    case PGG_ETIMEDOUT:
    case PGG_ECONNECT:
    case PGG_EUNAVAILABLE:
    case PGG_EWRONGROLE:
        return true;
    case PGG_ESERVER:
        /* 57: shutdown, crash, termination; 08: connection; 53: too many
         * connections; 25006: a write reached a standby (just promoted or
         * not yet noticed) */
        return strncmp(e->sqlstate, "57", 2) == 0 || strncmp(e->sqlstate, "08", 2) == 0 ||
               strncmp(e->sqlstate, "53", 2) == 0 || strcmp(e->sqlstate, "25006") == 0;
    default:
        return false;
    }
}

static void failed(wl_thread *t, const char *what, const pgg_error *e)
{
    int idx = -e->code;

    if (idx > 0 && idx < (int)(sizeof t->t.by_code / sizeof t->t.by_code[0]))
        t->t.by_code[idx]++;
    if (!explained(e)) {
        t->t.unexpected++;
        if (atomic_fetch_add(&t->w->unexpected_printed, 1) < 20)
            fprintf(stderr, "workload: %s: unexpected %s [%s] %s\n", what,
                    pgg_err_name(e->code), e->sqlstate, e->message);
    } else {
        t->t.failed++;
    }
    if (e->code == PGG_EOPEN) {
        double now = wl_elapsed_ms(t->w);

        if (t->refusing) {
            t->ref[t->nref - 1].to = now;
        } else {
            push_window(&t->ref, &t->nref, &t->capref, now, now);
            t->refusing = true;
        }
    }
    if (t->w->o.backoff_ms > 0)
        pause_ms(t->w->o.backoff_ms);
}

static void acknowledged(wl_thread *t, uint64_t id)
{
    if (t->nacked == t->capacked) {
        t->capacked = t->capacked ? t->capacked * 2 : 1024;
        t->acked = xrealloc(t->acked, t->capacked * sizeof *t->acked);
    }
    t->acked[t->nacked++] = id;
    t->t.acked++;
}

/* A result that is not the success expected, as a pgg_error. */
static void result_error(PGresult *r, pgg_error *e)
{
    const char *st = PQresultErrorField(r, PG_DIAG_SQLSTATE);

    if (e->code == PGG_OK)
        e->code = PGG_ESERVER;
    if (st)
        snprintf(e->sqlstate, sizeof e->sqlstate, "%s", st);
    snprintf(e->message, sizeof e->message, "%s", PQresultErrorMessage(r));
}

/* ------------------------------------------------------------ operations */

static void do_read(wl_thread *t, uint64_t r)
{
    pgg_call call = {.timeout_ms = t->w->o.timeout_ms};
    int id = 1 + (int)(r % WL_ROWS);
    char v[16], want[16];
    const char *vals[] = {v};
    pgg_error e;
    double t0 = pgh_now_ms();
    PGresult *res;

    snprintf(v, sizeof v, "%d", id);
    snprintf(want, sizeof want, "r%d", id);
    pgg_error_clear(&e);
    res = pgg_exec_params(t->w->pool, PGG_READ, "SELECT v FROM wl_r WHERE id = $1", 1, NULL,
                          vals, NULL, NULL, &call, NULL, &e);
    timed(t, "a read", t0, call.timeout_ms, &e);
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK) {
        if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), want) != 0) {
            t->t.wrong_answers++;
            fprintf(stderr, "workload: read of %d gave %d rows, %s\n", id, PQntuples(res),
                    PQntuples(res) ? PQgetvalue(res, 0, 0) : "-");
        }
        t->t.reads++;
        succeeded(t);
    } else {
        if (res)
            result_error(res, &e);
        failed(t, "read", &e);
    }
    PQclear(res);
}

static void do_write(wl_thread *t)
{
    pgg_call call = {.timeout_ms = t->w->o.timeout_ms};
    uint64_t id = t->w->id_base | ((uint64_t)(t->index + 1) << 40) | ++t->seq;
    char v[32];
    const char *vals[] = {v};
    pgg_error e;
    double t0 = pgh_now_ms();
    PGresult *res;

    snprintf(v, sizeof v, "%" PRIu64, id);
    pgg_error_clear(&e);
    res = pgg_exec_params(t->w->pool, PGG_WRITE, "INSERT INTO wl_w VALUES ($1, 'exec')", 1,
                          NULL, vals, NULL, NULL, &call, NULL, &e);
    timed(t, "a write", t0, call.timeout_ms, &e);
    if (res && PQresultStatus(res) == PGRES_COMMAND_OK) {
        acknowledged(t, id);
        t->t.writes++;
        succeeded(t);
    } else {
        if (res)
            result_error(res, &e);
        failed(t, "write", &e);
    }
    PQclear(res);
}

/* One statement on a lease, timed; false (with *e filled) unless it
 * returned `want`. */
static bool lease_step(wl_thread *t, pgg_lease *l, const char *sql, const char *param,
                       ExecStatusType want, pgg_error *e, PGresult **out)
{
    const char *vals[] = {param};
    double t0 = pgh_now_ms();
    PGresult *res;

    pgg_error_clear(e);
    res = pgg_lease_exec_params(l, sql, param ? 1 : 0, NULL, param ? vals : NULL, NULL, NULL, 0,
                                t->w->o.timeout_ms, e);
    timed(t, sql, t0, t->w->o.timeout_ms, e);
    if (res && PQresultStatus(res) == want) {
        if (out)
            *out = res;
        else
            PQclear(res);
        return true;
    }
    if (res)
        result_error(res, e);
    else if (e->code == PGG_OK)
        e->code = PGG_ECONNECT;
    PQclear(res);
    return false;
}

/* A transaction on a write lease: insert, read it back, commit. */
static void do_lease(wl_thread *t, uint64_t r)
{
    bool writing = r % 4 != 0;
    uint64_t id = t->w->id_base | ((uint64_t)(t->index + 1) << 40) | ++t->seq;
    char v[32], want[40];
    pgg_error e;
    double t0 = pgh_now_ms();
    PGresult *res = NULL;
    pgg_lease *l;
    bool ok;

    pgg_error_clear(&e);
    l = pgg_acquire(t->w->pool, writing ? PGG_WRITE : PGG_READ, t->w->o.timeout_ms, NULL, &e);
    timed(t, "an acquisition", t0, t->w->o.timeout_ms, &e);
    if (!l) {
        failed(t, "acquire", &e);
        return;
    }
    snprintf(v, sizeof v, "%" PRIu64, id);
    if (writing) {
        ok = lease_step(t, l, "BEGIN", NULL, PGRES_COMMAND_OK, &e, NULL) &&
             lease_step(t, l, "INSERT INTO wl_w VALUES ($1, 'lease')", v, PGRES_COMMAND_OK, &e,
                        NULL) &&
             lease_step(t, l, "SELECT count(*) FROM wl_w WHERE id = $1", v, PGRES_TUPLES_OK, &e,
                        &res);
        if (ok) {
            if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "1") != 0) {
                t->t.wrong_answers++;
                fprintf(stderr, "workload: a lease does not see its own insert\n");
            }
            PQclear(res);
            res = NULL;
            ok = lease_step(t, l, "COMMIT", NULL, PGRES_COMMAND_OK, &e, &res);
            if (ok && strcmp(PQcmdStatus(res), "COMMIT") != 0) {
                snprintf(e.message, sizeof e.message, "COMMIT answered %s", PQcmdStatus(res));
                e.code = PGG_ESERVER;
                ok = false;
            }
            PQclear(res);
            if (ok)
                acknowledged(t, id);
        }
    } else {
        snprintf(v, sizeof v, "%d", 1 + (int)((r >> 8) % WL_ROWS));
        snprintf(want, sizeof want, "r%s", v);
        ok = lease_step(t, l, "SELECT v FROM wl_r WHERE id = $1", v, PGRES_TUPLES_OK, &e, &res);
        if (ok) {
            if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), want) != 0) {
                t->t.wrong_answers++;
                fprintf(stderr, "workload: a read lease got the wrong row\n");
            }
            PQclear(res);
        }
    }
    pgg_release(l);
    if (ok) {
        t->t.leases++;
        succeeded(t);
    } else {
        failed(t, "lease", &e);
    }
}

static void *run(void *arg)
{
    wl_thread *t = arg;

    while (!atomic_load(&t->w->stop)) {
        uint64_t r = next_rand(&t->seed);

        switch (r % 4) {
        case 0:
        case 1:
            do_read(t, r >> 2);
            break;
        case 2:
            do_write(t);
            break;
        default:
            do_lease(t, r >> 2);
            break;
        }
    }
    return NULL;
}

static void *canary(void *arg)
{
    wl *w = arg;

    while (!atomic_load(&w->stop)) {
        double t0 = pgh_now_ms(), late;

        pause_ms(1);
        late = pgh_now_ms() - t0 - 1;
        if (late > w->canary_worst_ms)
            w->canary_worst_ms = late;
        if (late > WL_OVERSHOOT_MS)
            w->canary_late++;
        if (late > 5)
            push_window(&w->stalls, &w->nstalls, &w->capstalls, t0 + 1 - w->t0,
                        t0 + 1 + late - w->t0);
    }
    return NULL;
}

wl *wl_start(pgg_pool *pool, const wl_options *o)
{
    wl *w = calloc(1, sizeof *w);

    if (!w)
        return NULL;
    w->pool = pool;
    w->o = *o;
    w->id_base = (uint64_t)(atomic_fetch_add(&loads_started, 1) & 0x7ff) << 52;
    w->n = o->threads;
    w->th = calloc((size_t)w->n, sizeof *w->th);
    if (!w->th) {
        free(w);
        return NULL;
    }
    w->t0 = pgh_now_ms();
    w->canary_running = pthread_create(&w->canary, NULL, canary, w) == 0;
    for (int i = 0; i < w->n; i++) {
        wl_thread *t = &w->th[i];

        t->w = w;
        t->index = i;
        t->t.worst_overshoot_ms = -1e9; /* before any call */
        t->seed = (o->seed + 1) * 0x9E3779B97F4A7C15u ^ (uint64_t)(i + 1) * 0xBF58476D1CE4E5B9u;
        if (!t->seed)
            t->seed = 1;
        if (pthread_create(&t->th, NULL, run, t) != 0) {
            fprintf(stderr, "workload: pthread_create failed\n");
            atomic_store(&w->stop, 1);
            for (int j = 0; j < i; j++)
                pthread_join(w->th[j].th, NULL);
            if (w->canary_running)
                pthread_join(w->canary, NULL);
            free(w->th);
            free(w);
            return NULL;
        }
    }
    return w;
}

void wl_stop(wl *w)
{
    if (!w || atomic_exchange(&w->stop, 2) == 2)
        return;
    for (int i = 0; i < w->n; i++)
        pthread_join(w->th[i].th, NULL);
    if (w->canary_running)
        pthread_join(w->canary, NULL);
}

/*
 * An overshoot the machine explains: the canary, too, slept through the
 * moment the call was due, and woke up no earlier than WL_OVERSHOOT_MS
 * before the call ended (it stalled over the same stretch).
 */
static bool stalled_through(const wl *w, const wl_window *o)
{
    for (int k = 0; k < w->nstalls; k++)
        if (w->stalls[k].from <= o->from + 1 && w->stalls[k].to >= o->to - WL_OVERSHOOT_MS)
            return true;
    return false;
}

/* The canary's longest stall overlapping [from, to], in ms; 0 for none. */
static double longest_stall(const wl *w, double from, double to)
{
    double worst = 0;

    for (int k = 0; k < w->nstalls; k++)
        if (w->stalls[k].to >= from && w->stalls[k].from <= to &&
            w->stalls[k].to - w->stalls[k].from > worst)
            worst = w->stalls[k].to - w->stalls[k].from;
    return worst;
}

void wl_totals_get(const wl *w, wl_totals *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < w->n; i++) {
        const wl_totals *t = &w->th[i].t;

        out->reads += t->reads;
        out->writes += t->writes;
        out->leases += t->leases;
        out->failed += t->failed;
        for (size_t k = 0; k < sizeof out->by_code / sizeof out->by_code[0]; k++)
            out->by_code[k] += t->by_code[k];
        out->unexpected += t->unexpected;
        out->wrong_answers += t->wrong_answers;
        out->overshoots += t->overshoots;
        if (i == 0 || t->worst_overshoot_ms > out->worst_overshoot_ms)
            out->worst_overshoot_ms = t->worst_overshoot_ms;
        out->acked += t->acked;
    }
    out->stall_worst_ms = w->canary_worst_ms;
    out->stalls = w->canary_late;
    for (int i = 0; i < w->n; i++)
        for (int j = 0; j < w->th[i].nover; j++)
            if (stalled_through(w, &w->th[i].over[j]))
                out->overshoots_in_stalls++;
}

static int cmp_window(const void *a, const void *b)
{
    const wl_window *x = a, *y = b;

    return x->from < y->from ? -1 : x->from > y->from;
}

const wl_window *wl_refusals(wl *w, int *n)
{
    int total = 0, k = 0;

    for (int i = 0; i < w->n; i++)
        total += w->th[i].nref;
    free(w->merged);
    w->merged = xrealloc(NULL, (size_t)(total ? total : 1) * sizeof *w->merged);
    for (int i = 0; i < w->n; i++)
        for (int j = 0; j < w->th[i].nref; j++)
            w->merged[k++] = w->th[i].ref[j];
    qsort(w->merged, (size_t)total, sizeof *w->merged, cmp_window);
    k = 0;
    for (int i = 0; i < total; i++) {
        if (k > 0 && w->merged[i].from <= w->merged[k - 1].to) {
            if (w->merged[i].to > w->merged[k - 1].to)
                w->merged[k - 1].to = w->merged[i].to;
        } else {
            w->merged[k++] = w->merged[i];
        }
    }
    w->nmerged = k;
    *n = k;
    return w->merged;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

long wl_missing_writes(const wl *w, pgh_node *primary)
{
    char err[512];
    PGconn *conn = pgh_connect(pgh_node_conninfo(primary), 10000, NULL, err, sizeof err);
    PGresult *res;
    uint64_t *have;
    long missing = 0;
    int n;

    if (!conn) {
        fprintf(stderr, "workload: connect to %s: %s\n", pgh_node_name(primary), err);
        return -1;
    }
    res = PQexec(conn, "SELECT id FROM wl_w ORDER BY id");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "workload: reading wl_w: %s\n", PQresultErrorMessage(res));
        PQclear(res);
        PQfinish(conn);
        return -1;
    }
    n = PQntuples(res);
    have = xrealloc(NULL, (size_t)(n ? n : 1) * sizeof *have);
    for (int i = 0; i < n; i++)
        have[i] = strtoull(PQgetvalue(res, i, 0), NULL, 10);
    PQclear(res);
    PQfinish(conn);
    for (int i = 0; i < w->n; i++) {
        for (size_t j = 0; j < w->th[i].nacked; j++) {
            uint64_t id = w->th[i].acked[j];

            if (!bsearch(&id, have, (size_t)n, sizeof *have, cmp_u64)) {
                if (missing < 10)
                    fprintf(stderr, "workload: acknowledged write %" PRIu64
                            " (thread %d, #%" PRIu64 ") is missing\n",
                            id, i, id & ((UINT64_C(1) << 40) - 1));
                missing++;
            }
        }
    }
    free(have);
    return missing;
}

int wl_pool_unbalanced(pgg_pool *pool)
{
    pgg_stats s;
    int problems = 0;

    if (pgg_pool_stats(pool, &s) != PGG_OK) {
        fprintf(stderr, "workload: pgg_pool_stats failed\n");
        return 1;
    }
    if (s.bulkhead_in_use != 0 || s.bulkhead_waiting != 0) {
        fprintf(stderr, "workload: bulkhead still holds %d and has %d waiting\n",
                s.bulkhead_in_use, s.bulkhead_waiting);
        problems++;
    }
    for (int i = 0; i < pgg_pool_host_count(pool); i++) {
        pgg_host_stats h;
        double end = pgh_now_ms() + 3000;

        pgg_pool_host_stats(pool, i, &h);
        while (h.conns_open != h.conns_idle && pgh_now_ms() < end) {
            pause_ms(10);
            pgg_pool_host_stats(pool, i, &h);
        }
        if (h.conns_busy != 0 || h.conns_open != h.conns_idle) {
            fprintf(stderr, "workload: %s: %d open, %d idle, %d busy after the load\n", h.host,
                    h.conns_open, h.conns_idle, h.conns_busy);
            problems++;
        }
    }
    return problems;
}

void wl_print(const wl *w, const char *who)
{
    wl_totals t;

    wl_totals_get(w, &t);
    printf("%s: %" PRIu64 " reads, %" PRIu64 " writes, %" PRIu64 " leases succeeded; "
           "%" PRIu64 " acknowledged writes\n",
           who, t.reads, t.writes, t.leases, t.acked);
    printf("%s: %" PRIu64 " failures explained by faults, %" PRIu64 " unexplained, %" PRIu64
           " wrong answers\n", who, t.failed, t.unexpected, t.wrong_answers);
    printf("%s: failures by code:", who);
    for (size_t k = 1; k < sizeof t.by_code / sizeof t.by_code[0]; k++)
        if (t.by_code[k])
            printf(" %s %" PRIu64, pgg_err_name(-(int)k), t.by_code[k]);
    printf("\n%s: the call closest to its deadline ended %.1f ms %s it (bound: %.0f ms past); "
           "%" PRIu64 " past the bound\n", who,
           t.worst_overshoot_ms < 0 ? -t.worst_overshoot_ms : t.worst_overshoot_ms,
           t.worst_overshoot_ms < 0 ? "before" : "past", WL_OVERSHOOT_MS, t.overshoots);
    printf("%s: the machine: a thread sleeping 1 ms woke up to %.1f ms late, %" PRIu64
           " times more than %.0f ms late; %" PRIu64 " of the %" PRIu64 " calls past the bound "
           "were due while that thread, too, was stalled\n", who, t.stall_worst_ms, t.stalls,
           WL_OVERSHOOT_MS, t.overshoots_in_stalls, t.overshoots);
    for (int i = 0; i < w->n; i++) {
        for (int j = 0; j < w->th[i].nover; j++) {
            const wl_window *o = &w->th[i].over[j];

            printf("%s:   due at %.0f ms, ended %.1f ms later: %s (its longest stall then: "
                   "%.0f ms)\n", who, o->from, o->to - o->from,
                   stalled_through(w, o) ? "the canary was stalled too"
                                         : "the canary was not stalled through it",
                   longest_stall(w, o->from - 50, o->to));
        }
    }
}

void wl_free(wl *w)
{
    if (!w)
        return;
    wl_stop(w);
    for (int i = 0; i < w->n; i++) {
        free(w->th[i].acked);
        free(w->th[i].ref);
        free(w->th[i].over);
    }
    free(w->stalls);
    free(w->th);
    free(w->merged);
    free(w);
}
