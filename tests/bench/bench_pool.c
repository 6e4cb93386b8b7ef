/*
 * bench-pool: what pgguard's call path costs, and what its guards buy.
 *
 * Throughput: the same client loop pointed at the server directly (raw
 * libpq, one persistent connection per thread), through pgguard (one pool
 * shared by every thread, one-shot reads) and, when --pgbouncer names one,
 * through PgBouncer; on SELECT 1 and on a primary-key lookup with one
 * parameter (PQexecParams / pgg_exec_params, so both sides do the same
 * extended-protocol work).  With --churn: a new libpq connection per call
 * against the pooled pgguard call.
 *
 * The machine is shared and noisy, so no number is taken alone: each cell
 * runs in rounds that alternate the clients (AB BA..., ABC CBA BCA ACB...),
 * every slice warmed up before it is measured, and reports medians.  A
 * ratio is the median of the per-round ratios: both sides of a pair ran a
 * second apart, so a burst of load from a neighbour hits them alike.
 *
 * Guards: the latency of a call refused by an open breaker (a host that is
 * down, and a breaker forced open), and how far past its deadline a call
 * returns when the server hangs (SIGSTOP through the harness).
 *
 * Not a meson test: it asserts nothing and reports.  tests/bench/run
 * builds it in release mode and runs it with PgBouncer; `bench-pool --help`
 * lists the knobs for running it alone or under a profiler.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "harness.h"
#include "pgguard.h"

#define BENCH_NAME "bench-pool"
#include "bench_util.h"

/* ------------------------------------------------------------- clients */

enum { CL_RAW, CL_GUARD, CL_GUARD_B, CL_BOUNCER, CL_CHURN, CL__N };
static const char *const client_name[CL__N] = {
    "libpq", "pgguard", "pgguard B", "pgbouncer", "libpq, new conn/call"};

enum { Q_SELECT1, Q_PK, Q__N };
static const char *const query_name[Q__N] = {"SELECT 1", "PK lookup"};
static const char *const query_sql[Q__N] = {
    "SELECT 1", "SELECT val FROM pgg_items WHERE id = $1"};
/* pgg_items holds ids 1..100 (sql/fixture.sql). */
#define PK_ROWS 100

#define MAX_LEVELS 8
#define MAX_ROUNDS 64
#define MAX_THREADS 256
/* How long a slice's last calls may take after it ended. */
#define SLICE_GRACE_S 30

typedef struct opts {
    const char *server;     /* conninfo; NULL: the harness's server */
    const char *bouncer;    /* conninfo of a PgBouncer in front of it */
    const char *serve_file; /* --serve */
    int levels[MAX_LEVELS], nlevels;
    int churn_levels[MAX_LEVELS], nchurn;
    bool clients[CL__N];
    bool queries[Q__N];
    int rounds;
    double seconds, warmup, first_warmup;
    long calls; /* > 0: a fixed number of calls per thread and slice */
    int pool_max;
    const char *settings;   /* extra pgguard settings, key=value ... */
    const char *settings_b; /* a second pool, "pgguard B", with these */
    bool throughput, faults;
    long reject_calls;
    int hang_cycles, hang_calls, hang_threads, hang_timeout_ms;
} opts;

/* ------------------------------------------------------------- helpers */

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* CPU time of the whole process (every thread, user + sys), in ns. */
static int64_t cpu_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_s(double s)
{
    struct timespec ts;

    if (s <= 0)
        return;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n, size);
    if (!p)
        die("out of memory");
    return p;
}

static double loadavg1(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");

    if (f) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1;
        fclose(f);
    }
    return l;
}

static void loadavg_text(char *buf, size_t len)
{
    FILE *f = fopen("/proc/loadavg", "r");
    double a = 0, b = 0, c = 0;

    if (!f || fscanf(f, "%lf %lf %lf", &a, &b, &c) != 3)
        snprintf(buf, len, "unknown");
    else
        snprintf(buf, len, "%.2f %.2f %.2f", a, b, c);
    if (f)
        fclose(f);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of n values (n > 0); v is not modified. */
static double median(const double *v, int n)
{
    double s[MAX_ROUNDS];

    if (n <= 0)
        return NAN;
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

static double vmin(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++)
        m = v[i] < m ? v[i] : m;
    return m;
}

static double vmax(const double *v, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

/* ----------------------------------------------------------- histogram */

/*
 * Log-linear latency histogram in ns: exact below 64 ns, then 64 buckets
 * per power of two (under 1.6 % error).  Fixed size, so recording a call
 * allocates nothing and costs the same at 1 call or 10 million.
 */
#define H_SUB_BITS 6
#define H_SUB (1 << H_SUB_BITS)
#define H_BUCKETS ((64 - H_SUB_BITS + 1) * H_SUB)

typedef struct hist {
    uint64_t n;
    uint64_t max;
    uint64_t c[H_BUCKETS];
} hist;

static int h_index(uint64_t v)
{
    int e;

    if (v < H_SUB)
        return (int)v;
    e = 63 - __builtin_clzll(v);
    return (e - H_SUB_BITS + 1) * H_SUB +
           (int)((v >> (e - H_SUB_BITS)) & (H_SUB - 1));
}

static double h_mid(int i)
{
    int k = i / H_SUB, sub = i % H_SUB, shift;

    if (k == 0)
        return i;
    shift = k - 1;
    return (double)((uint64_t)(H_SUB + sub) << shift) +
           ((double)((uint64_t)1 << shift) - 1) / 2;
}

static void h_add(hist *h, uint64_t v)
{
    h->c[h_index(v)]++;
    h->n++;
    if (v > h->max)
        h->max = v;
}

static void h_merge(hist *into, const hist *from)
{
    for (int i = 0; i < H_BUCKETS; i++)
        into->c[i] += from->c[i];
    into->n += from->n;
    if (from->max > into->max)
        into->max = from->max;
}

/* The q-quantile in microseconds; NAN when empty. */
static double h_quantile_us(const hist *h, double q)
{
    uint64_t rank, cum = 0;

    if (!h->n)
        return NAN;
    rank = (uint64_t)ceil(q * (double)h->n);
    if (rank < 1)
        rank = 1;
    for (int i = 0; i < H_BUCKETS; i++) {
        cum += h->c[i];
        if (cum >= rank)
            return h_mid(i) / 1000.0;
    }
    return (double)h->max / 1000.0;
}

/* -------------------------------------------------------------- slices */

enum { PH_WARM, PH_MEASURE, PH_STOP };

typedef struct slice {
    int client, query, nthreads;
    pgg_pool *pool;       /* CL_GUARD, CL_GUARD_B */
    PGconn **conns;       /* CL_RAW, CL_BOUNCER: one per thread */
    const char *conninfo; /* CL_CHURN */
    long fixed_calls;
    atomic_int phase;
} slice;

typedef struct worker {
    slice *s;
    int id;
    pthread_t thread;
    uint64_t calls, errors;
    hist *h;
    char err[256];
} worker;

typedef struct sample {
    double tput, p50_us, p99_us;
    double cpu_us; /* client process CPU (user + sys) per call */
    uint64_t calls, errors;
} sample;

/* Copy, cut to fit: an error message is kept for a look, not in full. */
static void copy_cut(char *dst, size_t len, const char *src)
{
    size_t n = strnlen(src, len - 1);

    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void keep_error(worker *w, const char *msg)
{
    if (!w->err[0] && msg) {
        copy_cut(w->err, sizeof w->err, msg);
        w->err[strcspn(w->err, "\n")] = '\0';
    }
}

static PGresult *libpq_query(PGconn *conn, int query, const char *const *vals)
{
    if (query == Q_PK)
        return PQexecParams(conn, query_sql[Q_PK], 1, NULL, vals, NULL, NULL,
                            0);
    return PQexec(conn, query_sql[query]);
}

/* One call of the slice's client; true when it returned the one row. */
static bool call_once(worker *w, unsigned seq)
{
    slice *s = w->s;
    char id[16];
    const char *vals[1] = {id};
    PGresult *res = NULL;
    PGconn *churn = NULL;
    bool ok;

    if (s->query == Q_PK)
        snprintf(id, sizeof id, "%u", seq % PK_ROWS + 1);
    switch (s->client) {
    case CL_RAW:
    case CL_BOUNCER:
        res = libpq_query(s->conns[w->id], s->query, vals);
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            keep_error(w, PQerrorMessage(s->conns[w->id]));
        break;
    case CL_CHURN:
        churn = PQconnectdb(s->conninfo);
        if (PQstatus(churn) == CONNECTION_OK)
            res = libpq_query(churn, s->query, vals);
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            keep_error(w, PQerrorMessage(churn));
        break;
    case CL_GUARD:
    case CL_GUARD_B: {
        /* As an application calls it: with an error record. */
        pgg_error e;

        if (s->query == Q_PK)
            res = pgg_exec_params(s->pool, PGG_READ, query_sql[Q_PK], 1, NULL,
                                  vals, NULL, NULL, NULL, NULL, &e);
        else
            res = pgg_exec(s->pool, PGG_READ, query_sql[s->query], NULL,
                           NULL, &e);
        if (!res || PQresultStatus(res) != PGRES_TUPLES_OK)
            keep_error(w, e.message);
        break;
    }
    }
    ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    PQclear(res);
    PQfinish(churn);
    return ok;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    slice *s = w->s;
    /* Threads start at different keys so that PK lookups spread. */
    unsigned seq = (unsigned)w->id * 37u;

    for (;; seq++) {
        int ph = atomic_load_explicit(&s->phase, memory_order_relaxed);
        int64_t t0, t1;
        bool ok;

        if (ph == PH_STOP ||
            (ph == PH_MEASURE && s->fixed_calls > 0 &&
             w->calls >= (uint64_t)s->fixed_calls))
            break;
        t0 = now_ns();
        ok = call_once(w, seq);
        t1 = now_ns();
        /* A call counts for the phase it started in: the window then
         * holds exactly the calls started within it. */
        if (ph == PH_MEASURE) {
            w->calls++;
            if (!ok)
                w->errors++;
            h_add(w->h, (uint64_t)(t1 - t0));
        }
    }
    return NULL;
}

/*
 * Run one slice: every thread warms up for `warm` s, then is measured for
 * `secs` s (or for s->fixed_calls calls each).
 */
static void run_slice(slice *s, double warm, double secs, sample *out,
                      char *errbuf, size_t errlen)
{
    worker *ws = xcalloc((size_t)s->nthreads, sizeof *ws);
    hist *all = xcalloc(1, sizeof *all);
    int64_t t0, t1, c0, c1;
    uint64_t calls = 0, errors = 0;

    atomic_store(&s->phase, warm > 0 ? PH_WARM : PH_MEASURE);
    for (int i = 0; i < s->nthreads; i++) {
        ws[i].s = s;
        ws[i].id = i;
        ws[i].h = xcalloc(1, sizeof *ws[i].h);
    }
    t0 = now_ns();
    c0 = cpu_ns();
    for (int i = 0; i < s->nthreads; i++)
        if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]) != 0)
            die("pthread_create failed");
    if (warm > 0) {
        sleep_s(warm);
        t0 = now_ns();
        c0 = cpu_ns();
        atomic_store(&s->phase, PH_MEASURE);
    }
    /* The process's CPU over the window: the client's cost per call,
     * which a neighbour's load disturbs far less than throughput.  (The
     * pool's health thread and our sleeping main thread add next to
     * nothing.) */
    if (s->fixed_calls > 0) {
        for (int i = 0; i < s->nthreads; i++)
            pthread_join(ws[i].thread, NULL);
        t1 = now_ns();
        c1 = cpu_ns();
    } else {
        struct timespec limit;

        sleep_s(secs);
        atomic_store(&s->phase, PH_STOP);
        t1 = now_ns();
        c1 = cpu_ns();
        /* Raw libpq waits forever on a server that stopped answering (and
         * PgBouncer holds a query up to its query_wait_timeout): give up
         * rather than hang the whole run. */
        clock_gettime(CLOCK_REALTIME, &limit);
        limit.tv_sec += SLICE_GRACE_S;
        for (int i = 0; i < s->nthreads; i++)
            if (pthread_timedjoin_np(ws[i].thread, NULL, &limit) != 0)
                die("%s, %d threads: a call has not returned %d s after the "
                    "slice ended: is the server (or PgBouncer) still up?",
                    client_name[s->client], s->nthreads, SLICE_GRACE_S);
    }
    if (errbuf && errlen)
        errbuf[0] = '\0';
    for (int i = 0; i < s->nthreads; i++) {
        calls += ws[i].calls;
        errors += ws[i].errors;
        h_merge(all, ws[i].h);
        if (errbuf && !errbuf[0] && ws[i].err[0])
            snprintf(errbuf, errlen, "%s", ws[i].err);
        free(ws[i].h);
    }
    out->calls = calls;
    out->errors = errors;
    out->tput = (double)calls / ((double)(t1 - t0) / 1e9);
    out->cpu_us = calls ? (double)(c1 - c0) / 1e3 / (double)calls : NAN;
    out->p50_us = h_quantile_us(all, 0.50);
    out->p99_us = h_quantile_us(all, 0.99);
    free(all);
    free(ws);
}

/* ---------------------------------------------------------- the server */

/* The bench's servers, whichever way they were named. */
typedef struct env {
    pgh_cluster *cluster; /* ours (may wrap external servers), or NULL */
    const char *conninfo; /* the server the throughput runs against */
    char server_version[64];
} env;

/*
 * 32 threads of raw libpq, 32 pooled connections of pgguard and PgBouncer's
 * 32 server connections are all open at once next to the harness's: more
 * than the harness's max_connections of 100 leaves room for.
 */
static void raise_max_connections(pgh_cluster *c)
{
    pgh_node *p;

    if (!c || pgh_cluster_is_external(c))
        return;
    p = pgh_cluster_primary(c);
    if (pgh_node_exec(p, "ALTER SYSTEM SET max_connections = 300") != 0 ||
        pgh_node_restart(p) != 0)
        die("raising max_connections: %s", pgh_node_error(p));
}

static pgh_cluster *start_cluster(void)
{
    char err[2048];
    pgh_cluster *c;

    note("starting a local server through the harness%s",
         getenv("PGGUARD_TEST_PRIMARY") ? " (PGGUARD_TEST_PRIMARY: external)"
                                        : "");
    c = pgh_cluster_start(0, err, sizeof err);
    if (!c)
        die("cluster start: %s", err);
    raise_max_connections(c);
    return c;
}

static PGconn *connect_or_die(const char *conninfo, const char *what)
{
    PGconn *c = PQconnectdb(conninfo);

    if (PQstatus(c) != CONNECTION_OK)
        die("connecting to %s: %s", what, PQerrorMessage(c));
    return c;
}

/* ------------------------------------------------------------ printing */

static void print_machine(const env *e)
{
    char model[256] = "unknown CPU", line[512], load[64];
    struct utsname u;
    FILE *f = fopen("/proc/cpuinfo", "r");

    while (f && fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            snprintf(model, sizeof model, "%s", colon + 2);
            model[strcspn(model, "\n")] = '\0';
            break;
        }
    }
    if (f)
        fclose(f);
    if (uname(&u) != 0)
        snprintf(u.release, sizeof u.release, "unknown");
    loadavg_text(load, sizeof load);
    printf("machine: %s, %ld cores, Linux %s, PostgreSQL %s, libpq %d, "
           "pgguard %s%s\n",
           model, sysconf(_SC_NPROCESSORS_ONLN), u.release, e->server_version,
           PQlibVersion(), pgg_version(),
#ifdef __OPTIMIZE__
           ""
#else
           " (UNOPTIMIZED BUILD: numbers are not meaningful)"
#endif
    );
    printf("load average at start: %s\n", load);
}

/* ----------------------------------------------------------- throughput */

typedef struct cell {
    sample r[CL__N][MAX_ROUNDS];
    bool used[CL__N];
    uint64_t guard_connects;
    char err[CL__N][256];
} cell;

typedef struct results {
    cell tp[MAX_LEVELS][Q__N];   /* throughput section */
    cell churn[MAX_LEVELS];      /* churn section, SELECT 1 */
    double load_min, load_max;
} results;

static pgg_pool *bench_pool_new(const char *conninfo, const char *settings)
{
    pgg_config *cfg = pgg_config_new();
    pgg_error e;
    pgg_pool *p;

    if (!cfg)
        die("out of memory");
    if (pgg_config_set_servers(cfg, conninfo, &e) != PGG_OK ||
        pgg_config_parse(cfg, settings, &e) != PGG_OK)
        die("pgguard config: %s", e.message);
    p = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    if (!p)
        die("pgg_pool_new: %s", e.message);
    return p;
}

/* The client order of round r: every rotation, forwards then backwards, so
 * that over 2n rounds each client runs in each position equally often. */
static void round_order(const int *clients, int n, int r, int *out)
{
    int rot = (r / 2) % n;

    for (int k = 0; k < n; k++)
        out[k] = clients[(rot + k) % n];
    if (r % 2)
        for (int k = 0; k < n / 2; k++) {
            int t = out[k];
            out[k] = out[n - 1 - k];
            out[n - 1 - k] = t;
        }
}

static void track_load(results *res)
{
    double l = loadavg1();

    if (l < 0)
        return;
    if (res->load_min < 0 || l < res->load_min)
        res->load_min = l;
    if (l > res->load_max)
        res->load_max = l;
}

/*
 * One thread count: open what every client needs (raw connections, a
 * pgguard pool), warm each client up, then the interleaved rounds of each
 * query.
 */
static void run_level(const opts *o, const env *e, int nthreads,
                      const int *clients, int nclients, const int *queries,
                      int nqueries, cell *cells, results *res)
{
    PGconn **raw = NULL, **bouncer = NULL;
    pgg_pool *pool = NULL, *pool_b = NULL;
    char settings[1024];

    for (int k = 0; k < nclients; k++) {
        if (clients[k] == CL_RAW || clients[k] == CL_BOUNCER) {
            PGconn ***set = clients[k] == CL_RAW ? &raw : &bouncer;
            const char *ci = clients[k] == CL_RAW ? e->conninfo : o->bouncer;

            *set = xcalloc((size_t)nthreads, sizeof **set);
            for (int i = 0; i < nthreads; i++)
                (*set)[i] = connect_or_die(ci, client_name[clients[k]]);
        }
    }
    /* The pool as an application would size it for PgBouncer's pool:
     * the same cap, defaults for everything else (unless --settings). */
    snprintf(settings, sizeof settings, "pool_max=%d %s", o->pool_max,
             o->settings ? o->settings : "");
    pool = bench_pool_new(e->conninfo, settings);
    for (int k = 0; k < nclients; k++) {
        if (clients[k] == CL_GUARD_B) {
            snprintf(settings, sizeof settings, "pool_max=%d %s", o->pool_max,
                     o->settings_b);
            pool_b = bench_pool_new(e->conninfo, settings);
        }
    }

    for (int qi = 0; qi < nqueries; qi++) {
        int q = queries[qi];
        cell *c = &cells[q];

        for (int k = 0; k < nclients; k++) {
            slice s = {.client = clients[k], .query = q, .nthreads = nthreads,
                       .pool = clients[k] == CL_GUARD_B ? pool_b : pool,
                       .conns = clients[k] == CL_RAW ? raw : bouncer,
                       .conninfo = e->conninfo};
            sample dummy;

            c->used[clients[k]] = true;
            /* First contact: connections opened, plans and caches warm. */
            if (o->first_warmup > 0)
                run_slice(&s, o->first_warmup, 0.05, &dummy, NULL, 0);
        }
        for (int r = 0; r < o->rounds; r++) {
            int order[CL__N];

            track_load(res);
            round_order(clients, nclients, r, order);
            for (int k = 0; k < nclients; k++) {
                slice s = {.client = order[k], .query = q,
                           .nthreads = nthreads,
                           .pool = order[k] == CL_GUARD_B ? pool_b : pool,
                           .conns = order[k] == CL_RAW ? raw : bouncer,
                           .conninfo = e->conninfo,
                           .fixed_calls = o->calls};
                sample *sm = &c->r[order[k]][r];
                char err[256];

                run_slice(&s, o->warmup, o->seconds, sm, err, sizeof err);
                if (sm->errors && !c->err[order[k]][0])
                    snprintf(c->err[order[k]], sizeof c->err[order[k]], "%s",
                             err);
            }
        }
        note("%-9s %2d thread%s: done (load %.2f)", query_name[q], nthreads,
             nthreads == 1 ? " " : "s", loadavg1());
    }
    {
        pgg_host_stats hs;
        if (pgg_pool_host_stats(pool, 0, &hs) == PGG_OK)
            for (int qi = 0; qi < nqueries; qi++)
                cells[queries[qi]].guard_connects = hs.connects;
    }
    pgg_pool_free(pool);
    pgg_pool_free(pool_b);
    for (int i = 0; raw && i < nthreads; i++)
        PQfinish(raw[i]);
    for (int i = 0; bouncer && i < nthreads; i++)
        PQfinish(bouncer[i]);
    free(raw);
    free(bouncer);
}

/* Per-round ratios a/b of one cell; returns how many. */
static int ratios(const cell *c, int a, int b, int rounds, double *out)
{
    int n = 0;

    for (int r = 0; r < rounds; r++)
        if (c->r[b][r].tput > 0)
            out[n++] = c->r[a][r].tput / c->r[b][r].tput;
    return n;
}

static double field_median(const cell *c, int cl, int rounds, int which)
{
    double v[MAX_ROUNDS];

    for (int r = 0; r < rounds; r++)
        v[r] = which == 0 ? c->r[cl][r].tput
             : which == 1 ? c->r[cl][r].p50_us
             : which == 2 ? c->r[cl][r].p99_us
                          : c->r[cl][r].cpu_us;
    return median(v, rounds);
}

static void print_row(const char *workload, int threads, const char *client,
                      const cell *c, int cl, int base, int rounds,
                      const char *extra)
{
    double rv[MAX_ROUNDS];
    int n = ratios(c, cl, base, rounds, rv);
    uint64_t errors = 0;
    char ratio[48] = "", range[48] = "";

    for (int r = 0; r < rounds; r++)
        errors += c->r[cl][r].errors;
    if (n > 0) {
        snprintf(ratio, sizeof ratio, "%.3f", median(rv, n));
        if (cl != base)
            snprintf(range, sizeof range, "%.2f-%.2f", vmin(rv, n),
                     vmax(rv, n));
    }
    printf("%-10s %3d  %-22s %9.0f %9.1f %9.1f %8.1f %8s  %-10s %s",
           workload, threads, client, field_median(c, cl, rounds, 0),
           field_median(c, cl, rounds, 1), field_median(c, cl, rounds, 2),
           field_median(c, cl, rounds, 3), ratio, range, extra ? extra : "");
    if (errors)
        printf("  ERRORS %llu (%s)", (unsigned long long)errors, c->err[cl]);
    putchar('\n');
}

static void print_header(void)
{
    printf("%-10s %3s  %-22s %9s %9s %9s %8s %8s  %-10s %s\n", "workload",
           "thr", "client", "calls/s", "p50 us", "p99 us", "cpu us", "ratio",
           "range", "note");
}

/* -------------------------------------------------------------- guards */

typedef struct reject_result {
    bool done;
    long calls, wrong;
    double tput, p50_us, p99_us, max_us;
} reject_result;

/* A loopback port nobody listens on: a host that is down refuses at once. */
static int dead_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    if (port < 0)
        die("finding a free port: %s", strerror(errno));
    return port;
}

/* Time n refused calls on one thread. */
static void measure_rejections(pgg_pool *pool, long n, reject_result *out)
{
    hist *h = xcalloc(1, sizeof *h);
    pgg_error e;
    int64_t t0, start;

    /* Warm the code and the caches; not recorded. */
    for (long i = 0; i < n / 10; i++)
        PQclear(pgg_exec(pool, PGG_READ, "SELECT 1", NULL, NULL, &e));
    start = now_ns();
    for (long i = 0; i < n; i++) {
        PGresult *r;
        int64_t t1;

        t0 = now_ns();
        r = pgg_exec(pool, PGG_READ, "SELECT 1", NULL, NULL, &e);
        t1 = now_ns();
        h_add(h, (uint64_t)(t1 - t0));
        if (r || e.code != PGG_EOPEN)
            out->wrong++;
        PQclear(r);
    }
    out->tput = (double)n / ((double)(now_ns() - start) / 1e9);
    out->calls = n;
    out->p50_us = h_quantile_us(h, 0.50);
    out->p99_us = h_quantile_us(h, 0.99);
    out->max_us = (double)h->max / 1000.0;
    out->done = true;
    free(h);
}

/* An open breaker, as a host that went down leaves it: lock-free refusal
 * in pgg__breaker_allow, after the router still listed the host. */
static void bench_reject_down(const opts *o, reject_result *out)
{
    char conninfo[256];
    pgg_host_stats hs;
    pgg_pool *pool;
    pgg_error e;
    int tries = 0;

    snprintf(conninfo, sizeof conninfo,
             "host=127.0.0.1 port=%d user=postgres dbname=postgres",
             dead_port());
    pool = bench_pool_new(conninfo,
                          "breaker.consecutive_failures=1 "
                          "breaker.open_ms=600000 breaker.open_max_ms=600000 "
                          "breaker.open_jitter=0 health_interval_ms=600000 "
                          "connect_timeout_ms=1000 call_timeout_ms=2000");
    do {
        PQclear(pgg_exec(pool, PGG_READ, "SELECT 1", NULL, NULL, &e));
        if (pgg_pool_host_stats(pool, 0, &hs) != PGG_OK)
            die("host stats");
    } while (hs.state != PGG_BREAKER_OPEN && ++tries < 100);
    if (hs.state != PGG_BREAKER_OPEN) {
        note("the breaker over a dead port did not open (%s); skipped",
             pgg_breaker_state_name(hs.state));
    } else {
        measure_rejections(pool, o->reject_calls, out);
    }
    pgg_pool_free(pool);
}

/* Forced open by the operator: the router drops the host before the
 * breaker is asked. */
static void bench_reject_forced(const opts *o, const env *en,
                                reject_result *out)
{
    pgg_pool *pool = bench_pool_new(en->conninfo, "health_interval_ms=600000");

    if (pgg_pool_force_open(pool, 0) != PGG_OK)
        die("pgg_pool_force_open failed");
    measure_rejections(pool, o->reject_calls, out);
    pgg_pool_free(pool);
}

/* How a call against the hung server ended, read from its message. */
enum { HK_QUERY, HK_CONNECT, HK_POOL, HK_OTHER, HK__N };
static const char *const hang_kind_name[HK__N] = {
    "query sent, no answer", "connect, no answer", "waiting for a pool slot",
    "other"};

typedef struct hang_sample {
    double over_ms; /* elapsed - timeout */
    int kind;
} hang_sample;

typedef struct hang_worker {
    pgg_pool *pool;
    int calls, timeout_ms;
    hang_sample *out;
    int n, succeeded;
    pthread_t thread;
} hang_worker;

static int hang_kind(const pgg_error *e)
{
    if (strncmp(e->message, "query:", 6) == 0)
        return HK_QUERY;
    if (strncmp(e->message, "connect:", 8) == 0)
        return HK_CONNECT;
    if (strstr(e->message, "busy until the deadline"))
        return HK_POOL;
    return HK_OTHER;
}

static void *hang_main(void *arg)
{
    hang_worker *w = arg;
    pgg_call call = {.timeout_ms = w->timeout_ms};

    for (int i = 0; i < w->calls; i++) {
        pgg_error e;
        int64_t t0 = now_ns();
        PGresult *r = pgg_exec(w->pool, PGG_READ, "SELECT 1", &call, NULL, &e);
        int64_t t1 = now_ns();

        if (r) {
            w->succeeded++; /* cannot happen while the server is stopped */
            PQclear(r);
            continue;
        }
        w->out[w->n].over_ms = (double)(t1 - t0) / 1e6 - w->timeout_ms;
        w->out[w->n].kind = hang_kind(&e);
        w->n++;
    }
    return NULL;
}

static int cmp_hang(const void *a, const void *b)
{
    double x = ((const hang_sample *)a)->over_ms;
    double y = ((const hang_sample *)b)->over_ms;
    return (x > y) - (x < y);
}

typedef struct hang_result {
    bool done;
    char skipped[256];
    hang_sample *s;
    int n, succeeded, warm_failures;
} hang_result;

/*
 * Leave `want` idle connections in the pool: hold that many leases at once,
 * then give them back.  (The health thread's warm-up to pool_min_idle
 * would do it too, but only while the breaker is closed, and ours is
 * disabled.)  After a hang the server may need a moment: retry.
 */
static bool warm_pool(pgg_pool *pool, int want, double timeout_s)
{
    int64_t end = now_ns() + (int64_t)(timeout_s * 1e9);
    pgg_lease **ls = xcalloc((size_t)want, sizeof *ls);
    pgg_host_stats hs;
    bool ok = false;

    while (!ok && now_ns() < end) {
        for (int i = 0; i < want; i++)
            ls[i] = pgg_acquire(pool, PGG_READ, 2000, NULL, NULL);
        for (int i = 0; i < want; i++) {
            pgg_release(ls[i]);
            ls[i] = NULL;
        }
        ok = pgg_pool_host_stats(pool, 0, &hs) == PGG_OK &&
             hs.conns_idle >= want;
        if (!ok)
            sleep_s(0.05);
    }
    free(ls);
    return ok;
}

/*
 * Cycles of: resume, warm pool_max idle connections, SIGSTOP the server,
 * then hang_threads threads each make hang_calls calls with a short
 * timeout.  The first call of a thread finds a pooled connection and
 * waits on a query; later ones connect and wait on the startup; a thread
 * that finds every slot taken waits for one.  The breaker is disabled so
 * that every call meets the hung server instead of being refused at once.
 */
static void bench_hang(const opts *o, env *en, hang_result *out)
{
    pgh_cluster *own = NULL, *c = en->cluster;
    pgh_node *node;
    pgg_pool *pool;
    hang_worker *ws;
    char settings[256];
    int cap = o->hang_cycles * o->hang_threads * o->hang_calls;

    if (!c) /* --server: the hang needs a server of our own */
        c = own = start_cluster();
    if (pgh_cluster_is_external(c)) {
        snprintf(out->skipped, sizeof out->skipped,
                 "skipped: needs a local server (PGGUARD_TEST_PRIMARY is "
                 "set)");
        pgh_cluster_free(own);
        return;
    }
    node = pgh_cluster_primary(c);
    snprintf(settings, sizeof settings,
             "pool_max=%d health_interval_ms=100 cancel_timeout_ms=500 "
             "connect_timeout_ms=2000",
             o->hang_threads);
    pool = bench_pool_new(pgh_node_conninfo(node), settings);
    pgg_pool_disable_breaker(pool, 0);
    out->s = xcalloc((size_t)cap, sizeof *out->s);
    ws = xcalloc((size_t)o->hang_threads, sizeof *ws);

    for (int cy = 0; cy < o->hang_cycles; cy++) {
        if (!warm_pool(pool, o->hang_threads, 20))
            out->warm_failures++;
        if (pgh_node_hang(node) != 0)
            die("hang: %s", pgh_node_error(node));
        for (int i = 0; i < o->hang_threads; i++) {
            ws[i].pool = pool;
            ws[i].calls = o->hang_calls;
            ws[i].timeout_ms = o->hang_timeout_ms;
            ws[i].out = out->s + out->n + i * o->hang_calls;
            ws[i].n = 0;
            if (pthread_create(&ws[i].thread, NULL, hang_main, &ws[i]) != 0)
                die("pthread_create failed");
        }
        for (int i = 0; i < o->hang_threads; i++) {
            pthread_join(ws[i].thread, NULL);
            out->succeeded += ws[i].succeeded;
        }
        /* Compact: a thread may have fewer samples than calls. */
        {
            int w = out->n;
            for (int i = 0; i < o->hang_threads; i++) {
                memmove(out->s + w, ws[i].out, (size_t)ws[i].n * sizeof *out->s);
                w += ws[i].n;
            }
            out->n = w;
        }
        if (pgh_node_resume(node) != 0)
            die("resume: %s", pgh_node_error(node));
        note("hang cycle %d/%d done", cy + 1, o->hang_cycles);
    }
    pgg_pool_free(pool);
    free(ws);
    pgh_cluster_free(own);
    out->done = true;
}

static double hang_quantile(const hang_sample *s, int n, double q)
{
    int i = (int)ceil(q * n) - 1;
    return n ? s[i < 0 ? 0 : i].over_ms : NAN;
}

/* ------------------------------------------------------------- serving */

static volatile sig_atomic_t stop_serving;

static void on_stop(int sig)
{
    (void)sig;
    stop_serving = 1;
}

/* Single-quote for sh: ' becomes '\''. */
static void put_shell(FILE *f, const char *key, const char *val)
{
    fprintf(f, "%s='", key);
    for (const char *p = val ? val : ""; *p; p++) {
        if (*p == '\'')
            fputs("'\\''", f);
        else
            fputc(*p, f);
    }
    fputs("'\n", f);
}

/*
 * --serve FILE: start the server, write how to reach it to FILE (sh
 * syntax, mode 0600: it may hold a password), and keep it until stdin
 * reaches EOF or a signal comes.  tests/bench/run points PgBouncer at it
 * and holds our stdin open; when the script ends in any way, the pipe
 * closes and the server goes (the harness's reaper covers our own death).
 */
static int serve(const char *file)
{
    pgh_cluster *c = start_cluster();
    const char *ci = pgh_node_conninfo(pgh_cluster_primary(c));
    PGconn *conn = connect_or_die(ci, "the server");
    char tmp[4096];
    struct sigaction sa;
    FILE *f;
    int fd;

    snprintf(tmp, sizeof tmp, "%s.tmp", file);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || !(f = fdopen(fd, "w")))
        die("%s: %s", tmp, strerror(errno));
    put_shell(f, "PGG_BENCH_CONNINFO", ci);
    put_shell(f, "PGG_BENCH_HOST", PQhost(conn));
    put_shell(f, "PGG_BENCH_PORT", PQport(conn));
    put_shell(f, "PGG_BENCH_USER", PQuser(conn));
    put_shell(f, "PGG_BENCH_DBNAME", PQdb(conn));
    put_shell(f, "PGG_BENCH_PASSWORD", PQpass(conn));
    put_shell(f, "PGG_BENCH_SERVER_VERSION",
              PQparameterStatus(conn, "server_version"));
    PQfinish(conn);
    if (fclose(f) != 0 || rename(tmp, file) != 0)
        die("%s: %s", file, strerror(errno));

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop; /* no SA_RESTART: read() must return */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    while (!stop_serving) {
        char buf[64];
        ssize_t r = read(0, buf, sizeof buf);
        if (r == 0 || (r < 0 && errno != EINTR))
            break;
    }
    pgh_cluster_free(c);
    return 0;
}

/* ---------------------------------------------------------------- main */

static int parse_list(const char *s, int *out, int max)
{
    int n = 0;
    char *end;

    while (*s && n < max) {
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > MAX_THREADS)
            die("bad thread list near '%s' (1..%d, comma-separated)", s,
                MAX_THREADS);
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            die("bad thread list near '%s'", end);
    }
    return n;
}

static void parse_names(const char *s, bool *out, int n,
                        const char *const *names, const char *const *alias,
                        const char *what)
{
    char buf[256], *save = NULL;

    for (int i = 0; i < n; i++)
        out[i] = false;
    snprintf(buf, sizeof buf, "%s", s);
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int i;
        for (i = 0; i < n; i++)
            if (strcmp(t, names[i]) == 0 || (alias[i] && strcmp(t, alias[i]) == 0))
                break;
        if (i == n)
            die("unknown %s '%s'", what, t);
        out[i] = true;
    }
}

static void usage(FILE *f)
{
    fputs(
        "usage: bench-pool [options]\n"
        "  Against a local server it starts through the test harness (or\n"
        "  PGGUARD_TEST_PRIMARY): raw libpq vs pgguard, then the guards.\n"
        "  --server CONNINFO      benchmark this server instead\n"
        "  --pgbouncer CONNINFO   also run the libpq client through this PgBouncer\n"
        "  --threads LIST         client threads per level (default 1,8)\n"
        "  --clients LIST         libpq,pgguard,pgbouncer (default: all given)\n"
        "  --queries LIST         select1,pk (default both)\n"
        "  --churn[=LIST]         new connection per call vs pgguard, at LIST\n"
        "                         threads (default 1,8)\n"
        "  --rounds N             interleaved rounds per cell (default 6)\n"
        "  --seconds S            measured seconds per slice (default 1)\n"
        "  --warmup S             warm-up before each slice (default 0.2)\n"
        "  --first-warmup S       warm-up of each client per cell (default 1)\n"
        "  --calls N              N calls per thread per slice, not timed slices\n"
        "                         (for callgrind: instruction counts per call)\n"
        "  --pool-max N           pgguard pool_max (default 32, as PgBouncer's pool)\n"
        "  --settings 'K=V ...'   more pgguard settings for the throughput pools\n"
        "  --settings-b 'K=V ...' add a client \"pgguard B\": a second pool with\n"
        "                         these settings, interleaved with the others\n"
        "                         (an A/B test of settings or of two builds' ideas)\n"
        "  --no-faults            skip the breaker and hung-host measurements\n"
        "  --only-faults          only those\n"
        "  --reject-calls N       refused calls timed (default 200000)\n"
        "  --hang-cycles N, --hang-threads N, --hang-calls N, --hang-timeout-ms N\n"
        "                         (default 6, 8, 10, 50)\n"
        "  --serve FILE           start the server, write its address to FILE,\n"
        "                         keep it until stdin closes (for tests/bench/run)\n",
        f);
}

int main(int argc, char **argv)
{
    static const char *const qnames[Q__N] = {"select1", "pk"};
    static const char *const qalias[Q__N] = {"SELECT 1", "pk-lookup"};
    static const char *const cnames[CL__N] = {"libpq", "pgguard", "pgguard-b",
                                              "pgbouncer",
                                              "churn"};
    static const char *const calias[CL__N] = {"raw", "guard", "b", "bouncer",
                                              NULL};
    static const struct option longopts[] = {
        {"server", required_argument, NULL, 's'},
        {"pgbouncer", required_argument, NULL, 'b'},
        {"threads", required_argument, NULL, 't'},
        {"clients", required_argument, NULL, 'c'},
        {"queries", required_argument, NULL, 'q'},
        {"churn", optional_argument, NULL, 'C'},
        {"rounds", required_argument, NULL, 'r'},
        {"seconds", required_argument, NULL, 'S'},
        {"warmup", required_argument, NULL, 'w'},
        {"first-warmup", required_argument, NULL, 'W'},
        {"calls", required_argument, NULL, 'n'},
        {"pool-max", required_argument, NULL, 'p'},
        {"settings", required_argument, NULL, 'x'},
        {"settings-b", required_argument, NULL, 'y'},
        {"no-faults", no_argument, NULL, 'F'},
        {"only-faults", no_argument, NULL, 'O'},
        {"reject-calls", required_argument, NULL, 'R'},
        {"hang-cycles", required_argument, NULL, 1},
        {"hang-threads", required_argument, NULL, 2},
        {"hang-calls", required_argument, NULL, 3},
        {"hang-timeout-ms", required_argument, NULL, 4},
        {"serve", required_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    opts o = {.rounds = 6, .seconds = 1.0, .warmup = 0.2, .first_warmup = 1.0,
              .pool_max = 32, .throughput = true, .faults = true,
              .reject_calls = 200000, .hang_cycles = 6, .hang_calls = 10,
              .hang_threads = 8, .hang_timeout_ms = 50,
              .queries = {true, true}};
    bool clients_given = false;
    static results res;
    env en = {0};
    int clients[CL__N], nclients = 0, queries[Q__N], nqueries = 0, ch;
    reject_result rej_down = {0}, rej_forced = {0};
    hang_result hang = {0};
    char load[64];

    o.nlevels = parse_list("1,8", o.levels, MAX_LEVELS);
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case 's': o.server = optarg; break;
        case 'b': o.bouncer = optarg; break;
        case 't': o.nlevels = parse_list(optarg, o.levels, MAX_LEVELS); break;
        case 'c':
            parse_names(optarg, o.clients, CL__N, cnames, calias, "client");
            clients_given = true;
            break;
        case 'q':
            parse_names(optarg, o.queries, Q__N, qnames, qalias, "query");
            break;
        case 'C':
            o.nchurn = parse_list(optarg ? optarg : "1,8", o.churn_levels,
                                  MAX_LEVELS);
            break;
        case 'r': o.rounds = atoi(optarg); break;
        case 'S': o.seconds = atof(optarg); break;
        case 'w': o.warmup = atof(optarg); break;
        case 'W': o.first_warmup = atof(optarg); break;
        case 'n': o.calls = atol(optarg); break;
        case 'p': o.pool_max = atoi(optarg); break;
        case 'x': o.settings = optarg; break;
        case 'y': o.settings_b = optarg; break;
        case 'F': o.faults = false; break;
        case 'O': o.throughput = false; break;
        case 'R': o.reject_calls = atol(optarg); break;
        case 1: o.hang_cycles = atoi(optarg); break;
        case 2: o.hang_threads = atoi(optarg); break;
        case 3: o.hang_calls = atoi(optarg); break;
        case 4: o.hang_timeout_ms = atoi(optarg); break;
        case 'V': o.serve_file = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    if (o.serve_file)
        return serve(o.serve_file);
    if (o.rounds < 1 || o.rounds > MAX_ROUNDS || o.seconds <= 0 ||
        o.pool_max < 1 || o.reject_calls < 1 || o.hang_cycles < 1 ||
        o.hang_threads < 1 || o.hang_calls < 1 || o.hang_timeout_ms < 1)
        die("a count or a duration is out of range (see --help)");
    if (!clients_given) {
        o.clients[CL_RAW] = o.clients[CL_GUARD] = true;
        o.clients[CL_GUARD_B] = o.settings_b != NULL;
        o.clients[CL_BOUNCER] = o.bouncer != NULL;
    }
    if (o.clients[CL_BOUNCER] && !o.bouncer)
        die("--clients pgbouncer needs --pgbouncer CONNINFO");
    if (o.clients[CL_GUARD_B] && !o.settings_b)
        die("--clients pgguard-b needs --settings-b 'K=V ...'");
    for (int i = 0; i < CL_CHURN; i++)
        if (o.clients[i])
            clients[nclients++] = i;
    for (int i = 0; i < Q__N; i++)
        if (o.queries[i])
            queries[nqueries++] = i;

    /* Our own stdout is a pipe under tests/bench/run: line-buffer it so
     * the report comes out as it is printed. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (o.server) {
        en.conninfo = o.server;
    } else {
        en.cluster = start_cluster();
        en.conninfo = pgh_node_conninfo(pgh_cluster_primary(en.cluster));
    }
    {
        PGconn *c = connect_or_die(en.conninfo, "the server");
        snprintf(en.server_version, sizeof en.server_version, "%s",
                 PQparameterStatus(c, "server_version"));
        PQfinish(c);
    }
    print_machine(&en);
    res.load_min = -1;

    if (o.throughput && nclients > 0) {
        printf("method: %d rounds per cell, clients alternated (AB BA, ABC CBA "
               "BCA ...), %s after %.1f s warm-up each;\n"
               "        medians of the rounds; ratio: median of the "
               "per-round ratios to %s, range: their min-max;\n"
               "        cpu us: the client process's CPU time (user + sys) "
               "per call, a cost that load on the machine blurs far less\n",
               o.rounds, o.calls ? "fixed calls" : "timed slices",
               o.warmup, client_name[clients[0]]);
        printf("pgguard: one pool shared by all threads, pool_max=%d, one-shot "
               "reads (PGG_READ), %s%s\n",
               o.pool_max, o.settings ? "settings: " : "every other setting default",
               o.settings ? o.settings : "");
        if (o.clients[CL_GUARD_B])
            printf("pgguard B: a second pool like it, with settings: %s\n",
                   o.settings_b);
        if (o.bouncer)
            printf("pgbouncer: transaction pooling, default_pool_size as set "
                   "by its runner; the same libpq client as raw\n");
        for (int li = 0; li < o.nlevels; li++)
            run_level(&o, &en, o.levels[li], clients, nclients, queries,
                      nqueries, res.tp[li], &res);
    }
    if (o.throughput && o.nchurn > 0) {
        int cc[2] = {CL_CHURN, CL_GUARD}, q1 = Q_SELECT1;
        for (int li = 0; li < o.nchurn; li++) {
            cell cells[Q__N];
            memset(cells, 0, sizeof cells);
            run_level(&o, &en, o.churn_levels[li], cc, 2, &q1, 1, cells, &res);
            res.churn[li] = cells[Q_SELECT1];
        }
    }
    if (o.faults) {
        note("guards: refused calls");
        bench_reject_down(&o, &rej_down);
        bench_reject_forced(&o, &en, &rej_forced);
        note("guards: hung server");
        bench_hang(&o, &en, &hang);
    }
    loadavg_text(load, sizeof load);

    /* ---------------------------------------------------- the report */
    if (o.throughput && nclients > 0) {
        putchar('\n');
        print_header();
        for (int qi = 0; qi < nqueries; qi++) {
            int q = queries[qi];
            for (int li = 0; li < o.nlevels; li++) {
                const cell *c = &res.tp[li][q];
                for (int k = 0; k < nclients; k++) {
                    int cl = clients[k];
                    char extra[96] = "";
                    if (cl == CL_GUARD) {
                        int n = 0;
                        double rv[MAX_ROUNDS];
                        if (c->used[CL_BOUNCER])
                            n = ratios(c, CL_GUARD, CL_BOUNCER, o.rounds, rv);
                        if (n)
                            snprintf(extra, sizeof extra,
                                     "x%.2f pgbouncer [%.2f-%.2f]",
                                     median(rv, n), vmin(rv, n), vmax(rv, n));
                    } else if (cl == CL_GUARD_B && c->used[CL_GUARD]) {
                        double rv[MAX_ROUNDS];
                        int n = ratios(c, CL_GUARD_B, CL_GUARD, o.rounds, rv);
                        if (n)
                            snprintf(extra, sizeof extra,
                                     "x%.3f pgguard [%.2f-%.2f]",
                                     median(rv, n), vmin(rv, n), vmax(rv, n));
                    }
                    print_row(query_name[q], o.levels[li], client_name[cl], c,
                              cl, clients[0], o.rounds, extra);
                }
            }
        }
    }
    if (o.throughput && o.nchurn > 0) {
        printf("connection churn (ratio to a new libpq connection per call):\n");
        for (int li = 0; li < o.nchurn; li++) {
            print_row("SELECT 1", o.churn_levels[li], client_name[CL_CHURN],
                      &res.churn[li], CL_CHURN, CL_CHURN, o.rounds, NULL);
            print_row("SELECT 1", o.churn_levels[li], "pgguard (pooled)",
                      &res.churn[li], CL_GUARD, CL_CHURN, o.rounds, NULL);
        }
    }
    if (o.faults) {
        printf("\nguards (1 thread; latency of the whole pgg_exec call, error "
               "record filled):\n");
        if (rej_down.done)
            printf("  refused, breaker open after its host went down: %.2f M "
                   "calls/s, p50 %.2f us, p99 %.2f us, max %.1f us "
                   "(n=%ld%s)\n",
                   rej_down.tput / 1e6, rej_down.p50_us, rej_down.p99_us,
                   rej_down.max_us, rej_down.calls,
                   rej_down.wrong ? ", SOME NOT PGG_EOPEN" : "");
        if (rej_forced.done)
            printf("  refused, breaker forced open (pgg_pool_force_open): "
                   "%.2f M calls/s, p50 %.2f us, p99 %.2f us, max %.1f us "
                   "(n=%ld%s)\n",
                   rej_forced.tput / 1e6, rej_forced.p50_us,
                   rej_forced.p99_us, rej_forced.max_us, rej_forced.calls,
                   rej_forced.wrong ? ", SOME NOT PGG_EOPEN" : "");
        if (hang.done && hang.n > 0) {
            qsort(hang.s, (size_t)hang.n, sizeof *hang.s, cmp_hang);
            printf("  hung server (SIGSTOP), %d threads x %d calls x %d "
                   "cycles, timeout %d ms, breaker disabled:\n"
                   "    past the deadline: n=%d min %.2f ms, p50 %.2f ms, "
                   "p90 %.2f ms, p99 %.2f ms, max %.2f ms%s\n",
                   o.hang_threads, o.hang_calls, o.hang_cycles,
                   o.hang_timeout_ms, hang.n, hang.s[0].over_ms,
                   hang_quantile(hang.s, hang.n, 0.5),
                   hang_quantile(hang.s, hang.n, 0.9),
                   hang_quantile(hang.s, hang.n, 0.99),
                   hang.s[hang.n - 1].over_ms,
                   hang.succeeded ? " (SOME CALLS SUCCEEDED)" : "");
            for (int k = 0; k < HK__N; k++) {
                int n = 0;
                double mx = 0, sum = 0;
                for (int i = 0; i < hang.n; i++)
                    if (hang.s[i].kind == k) {
                        n++;
                        sum += hang.s[i].over_ms;
                        mx = hang.s[i].over_ms > mx ? hang.s[i].over_ms : mx;
                    }
                if (n)
                    printf("    %-24s n=%-4d mean %.2f ms, max %.2f ms\n",
                           hang_kind_name[k], n, sum / n, mx);
            }
            if (hang.warm_failures)
                printf("    (%d cycles started with fewer warm connections "
                       "than threads)\n", hang.warm_failures);
        } else if (hang.skipped[0]) {
            printf("  hung server: %s\n", hang.skipped);
        }
    }

    printf("\ntargets:\n");
    if (o.throughput && nclients > 0) {
        for (int li = 0; li < o.nlevels; li++) {
            if (o.levels[li] != 8)
                continue;
            for (int qi = 0; qi < nqueries; qi++) {
                const cell *c = &res.tp[li][queries[qi]];
                double rv[MAX_ROUNDS];
                int n;
                if (c->used[CL_RAW] && c->used[CL_GUARD] &&
                    (n = ratios(c, CL_GUARD, CL_RAW, o.rounds, rv)) > 0)
                    printf("  pgguard >= 0.97 x libpq, 8 threads, %-9s: "
                           "%.3f  %s\n",
                           query_name[queries[qi]], median(rv, n),
                           median(rv, n) >= 0.97 ? "met" : "NOT MET");
                if (c->used[CL_BOUNCER] && c->used[CL_GUARD] &&
                    (n = ratios(c, CL_GUARD, CL_BOUNCER, o.rounds, rv)) > 0)
                    printf("  pgguard >= 1.4 x pgbouncer, 8 threads, %-9s: "
                           "%.2f   %s\n",
                           query_name[queries[qi]], median(rv, n),
                           median(rv, n) >= 1.4 ? "met" : "NOT MET");
                if (c->used[CL_RAW] && c->used[CL_GUARD_B] &&
                    (n = ratios(c, CL_GUARD_B, CL_RAW, o.rounds, rv)) > 0)
                    printf("  (pgguard B: %.3f x libpq", median(rv, n));
                if (c->used[CL_BOUNCER] && c->used[CL_GUARD_B] &&
                    (n = ratios(c, CL_GUARD_B, CL_BOUNCER, o.rounds, rv)) > 0)
                    printf(", %.2f x pgbouncer", median(rv, n));
                if (c->used[CL_RAW] && c->used[CL_GUARD_B])
                    printf(")\n");
            }
        }
    }
    if (rej_down.done)
        printf("  open-breaker refusal p99 <= 2 us: %.2f us  %s\n",
               rej_down.p99_us, rej_down.p99_us <= 2 ? "met" : "NOT MET");
    if (hang.done && hang.n > 0)
        printf("  hung-host overshoot <= 20 ms (worst of %d calls): %.2f ms  "
               "%s\n",
               hang.n, hang.s[hang.n - 1].over_ms,
               hang.s[hang.n - 1].over_ms <= 20 ? "met" : "NOT MET");
    printf("load average: %s at end", load);
    if (res.load_min >= 0)
        printf("; 1-min load %.2f..%.2f at the starts of the rounds",
               res.load_min, res.load_max);
    putchar('\n');

    free(hang.s);
    pgh_cluster_free(en.cluster);
    return 0;
}
