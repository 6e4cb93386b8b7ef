/*
 * bench-async: one libevent loop thread keeping N calls in flight (32 by
 * default) on SELECT 1, through pgguard's asynchronous front
 * (pgguard_async.h, libevent adapter) and through raw libpq's own
 * asynchronous API (PQsendQuery + PQconsumeInput on N connections, each
 * with a persistent read event), in the same process, round by round, the
 * order alternated every round (the machine's CPU speed flips: see
 * /work/shared/ENVIRONMENT.md).  Reports calls/s and CPU time per call of
 * each, per round and as medians, and the per-round ratio.  Then one more
 * round of each with every callback timed (async_cpu.h: the loop thread's
 * CPU and wall time per call into pgguard, and per call of raw libpq's own
 * read callback), kept out of the throughput rounds.
 *
 *   bench-async [--conninfo CI] [--inflight N] [--rounds R] [--round-ms MS]
 *               [--only pgguard|raw] [--deferred] [--settings 'key=value ...']
 *
 * --deferred starts each next call from a zero timeout on the loop instead
 * of inside the callback of the call before (for pgguard: the connection
 * just used goes back to the pool before the loop waits, and the next call
 * borrows one).
 *
 * --settings adds pool keys to pgguard's (e.g. 'pipeline=on': the loop's
 * calls share connections in pipeline mode, src/async.c).
 *
 * --only runs one client's rounds (no ratio), warms that client alone and
 * skips the timed round: for strace -c -f and callgrind, which want one
 * client's costs alone.  It prints the number of calls of the measured
 * rounds and of the warm-up (strace counts both);
 * `valgrind --tool=callgrind --toggle-collect=measured_round` counts
 * exactly the measured rounds (the 1 ms loop-lag probe is off with --only).
 *
 * Without --conninfo (or PGG_BENCH_CONNINFO) it starts a local server
 * through the test harness.
 */
#define BENCH_NAME "bench-async"

#include <event2/event.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench_util.h"
#include "harness.h"
#include "pgguard.h"
#include "pgguard/adapters/libevent.h"
#if PGG_BENCH_CALLBACK_CPU
#include "async_cpu.h"
#else
#define ASYNC_CPU_TIMED(kind, call) call
#endif

#define MAX_INFLIGHT 256
#define SQL "SELECT 1"

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

typedef struct round_state {
    struct event_base *base;
    pgg_async *ac;
    double end; /* stop issuing new calls after this */
    long done;
    long failed;
    int inflight;
} round_state;

/* The loop-lag probe: the longest gap between ticks of a 1 ms timer, the
 * same for both clients (the machine's own stalls show in both). */
typedef struct probe {
    double last, worst;
} probe;

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    probe *p = arg;
    double t = now_s();

    (void)fd;
    (void)what;
    if (p->last > 0 && t - p->last > p->worst)
        p->worst = t - p->last;
    p->last = t;
}

/* --deferred: each client's next call starts from a zero timeout on the
 * loop, not inside the callback of the call before (a server whose next
 * request arrives after the answer went out); the call is counted in
 * flight meanwhile. */
static bool deferred;
static const struct timeval zero_tv = {0, 0};

/* ------------------------------------------------------------- raw libpq */

typedef struct raw_conn {
    PGconn *conn;
    struct event *ev;
    round_state *rs;
    bool busy;
} raw_conn;

static void raw_send(raw_conn *c)
{
    if (!PQsendQuery(c->conn, SQL) || PQflush(c->conn) < 0)
        die("raw send: %s", PQerrorMessage(c->conn));
    c->busy = true;
    c->rs->inflight++;
}

static void raw_later(evutil_socket_t fd, short what, void *arg)
{
    raw_conn *c = arg;

    (void)fd;
    (void)what;
    c->rs->inflight--;
    raw_send(c);
}

static void raw_read(raw_conn *c)
{
    round_state *rs = c->rs;
    bool more;

    if (!PQconsumeInput(c->conn))
        die("raw read: %s", PQerrorMessage(c->conn));
    while (!PQisBusy(c->conn)) {
        PGresult *r = PQgetResult(c->conn);

        if (!r) {
            c->busy = false;
            rs->inflight--;
            rs->done++;
            more = now_s() < rs->end;
            if (more && deferred) {
                rs->inflight++;
                event_base_once(rs->base, -1, EV_TIMEOUT, raw_later, c, &zero_tv);
            } else if (more)
                raw_send(c);
            else if (rs->inflight == 0)
                event_base_loopbreak(rs->base);
            return;
        }
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            rs->failed++;
        PQclear(r);
    }
}

static void raw_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ASYNC_CPU_TIMED("raw read", raw_read(arg));
}

static void raw_round(raw_conn *cs, int n, round_state *rs)
{
    for (int i = 0; i < n; i++) {
        cs[i].rs = rs;
        raw_send(&cs[i]);
    }
    event_base_dispatch(rs->base);
}

/* --------------------------------------------------------------- pgguard */

static void pgg_on_done(pgg_async *ac, PGresult *res, const pgg_info *info,
                        const pgg_error *err, void *ud);

static void pgg_issue(pgg_async *ac, round_state *rs)
{
    pgg_error e;

    if (pgg_async_exec(ac, PGG_READ, SQL, NULL, pgg_on_done, rs, NULL, &e) != PGG_OK)
        die("pgg_async_exec: %s", e.message);
    rs->inflight++;
}

static void pgg_later(evutil_socket_t fd, short what, void *arg)
{
    round_state *rs = arg;

    (void)fd;
    (void)what;
    rs->inflight--;
    pgg_issue(rs->ac, rs);
}

static void pgg_on_done(pgg_async *ac, PGresult *res, const pgg_info *info,
                        const pgg_error *err, void *ud)
{
    round_state *rs = ud;
    bool more;

    (void)info;
    rs->inflight--;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        rs->failed++;
        if (rs->failed == 1)
            note("pgguard call failed: %s", err->message);
    }
    rs->done++;
    PQclear(res);
    more = now_s() < rs->end;
    if (more && deferred) {
        rs->inflight++;
        event_base_once(rs->base, -1, EV_TIMEOUT, pgg_later, rs, &zero_tv);
    } else if (more)
        pgg_issue(ac, rs);
    else if (rs->inflight == 0)
        event_base_loopbreak(rs->base);
}

static void pgg_round(pgg_async *ac, int n, round_state *rs)
{
    rs->ac = ac;
    for (int i = 0; i < n; i++)
        pgg_issue(ac, rs);
    event_base_dispatch(rs->base);
}

/* One measured round: the window callgrind counts
 * (--toggle-collect=measured_round): out of line, its name stable, and
 * nothing else calls it. */
__attribute__((noinline)) void measured_round(bool raw, raw_conn *cs, pgg_async *ac, int n,
                                              round_state *rs);
__attribute__((noinline)) void measured_round(bool raw, raw_conn *cs, pgg_async *ac, int n,
                                              round_state *rs)
{
    if (raw)
        raw_round(cs, n, rs);
    else
        pgg_round(ac, n, rs);
}

/* ------------------------------------------------------------------ main */

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    const char *conninfo = getenv("PGG_BENCH_CONNINFO");
    const char *extra = "";
    int inflight = 32, rounds = 10, round_ms = 1000;
    int only = -1; /* 0: pgguard, 1: raw */
    pgh_cluster *cluster = NULL;
    struct event_base *base;
    raw_conn cs[MAX_INFLIGHT];
    pgg_config *cfg;
    pgg_pool *pool;
    pgg_async *ac;
    pgg_error e;
    char settings[512], errbuf[2048];
    double raw_rate[64], pgg_rate[64], raw_cpu[64], pgg_cpu[64], ratio[64];
    double load[3] = {0};
    long total_done = 0, warm_done = 0;
    double raw_gap[64], pgg_gap[64];
    struct event *tick;
    probe pr;
    struct timeval ms1 = {0, 1000};
    FILE *f;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--conninfo") == 0 && i + 1 < argc)
            conninfo = argv[++i];
        else if (strcmp(argv[i], "--inflight") == 0 && i + 1 < argc)
            inflight = atoi(argv[++i]);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (strcmp(argv[i], "--round-ms") == 0 && i + 1 < argc)
            round_ms = atoi(argv[++i]);
        else if (strcmp(argv[i], "--deferred") == 0)
            deferred = true;
        else if (strcmp(argv[i], "--settings") == 0 && i + 1 < argc)
            extra = argv[++i];
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            i++;
            only = strcmp(argv[i], "pgguard") == 0 ? 0 : strcmp(argv[i], "raw") == 0 ? 1 : -2;
            if (only == -2)
                die("--only pgguard|raw");
        } else
            die("usage: bench-async [--conninfo CI] [--inflight N] [--rounds R] [--round-ms MS] "
                "[--only pgguard|raw] [--deferred] [--settings 'key=value ...']");
    }
    if (inflight < 1 || inflight > MAX_INFLIGHT || rounds < 1 || rounds > 64 || round_ms < 10)
        die("--inflight 1..%d, --rounds 1..64, --round-ms >= 10", MAX_INFLIGHT);
    if (!conninfo || !*conninfo) {
        cluster = pgh_cluster_start(0, errbuf, sizeof errbuf);
        if (!cluster)
            die("server: %s", errbuf);
        conninfo = pgh_node_conninfo(pgh_cluster_primary(cluster));
    }

    base = event_base_new();
    if (!base)
        die("event_base_new failed");
    for (int i = 0; i < inflight; i++) {
        cs[i].conn = PQconnectdb(conninfo);
        if (PQstatus(cs[i].conn) != CONNECTION_OK)
            die("raw connect: %s", PQerrorMessage(cs[i].conn));
        PQsetnonblocking(cs[i].conn, 1);
        cs[i].ev = event_new(base, PQsocket(cs[i].conn), EV_READ | EV_PERSIST,
                             raw_on_read, &cs[i]);
        event_add(cs[i].ev, NULL);
    }
    cfg = pgg_config_new();
    snprintf(settings, sizeof settings,
             "pool_max=%d pool_min_idle=%d bulkhead.max_concurrent=%d %s",
             inflight, inflight, inflight, extra);
    if (!cfg || pgg_config_set_servers(cfg, conninfo, &e) != PGG_OK ||
        pgg_config_parse(cfg, settings, &e) != PGG_OK)
        die("config: %s", e.message);
    pool = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    if (!pool)
        die("pool: %s", e.message);
    ac = pgg_async_new(pool, &e);
    if (!ac || pgg_async_libevent_attach(ac, base) != PGG_OK)
        die("async: %s", e.message);

    /* Warm both (with --only, that one): every connection open, caches hot. */
    for (int w = 0; w < 2; w++) {
        round_state rs = {.base = base, .end = now_s() + 0.2};

        if (only != 0)
            raw_round(cs, inflight, &rs);
        warm_done += rs.done;
        rs = (round_state){.base = base, .end = now_s() + 0.2};
        if (only != 1)
            pgg_round(ac, inflight, &rs);
        warm_done += rs.done;
    }
    /* pgguard's connections open in the background (pool_min_idle): on a
     * loaded machine, or under valgrind, they take longer than the warm-up,
     * and rounds with calls parked for want of one measure the connects,
     * not the calls.  Warm until every one is open (at most 60 s).  A
     * server whose max_connections another client (another run of this
     * bench) has nearly used up never lets them all open: said, since the
     * rounds then measure calls waiting for connections. */
    for (int w = 0; only != 1; w++) {
        pgg_host_stats hs;
        round_state rs = {.base = base, .end = now_s() + 0.2};

        if (pgg_pool_host_stats(pool, 0, &hs) == PGG_OK && hs.conns_open >= inflight)
            break;
        if (w == 300) {
            note("pgguard has %d of its %d connections open after 60 s (the server's "
                 "max_connections?): its calls will wait for connections",
                 hs.conns_open, inflight);
            break;
        }
        pgg_round(ac, inflight, &rs);
        warm_done += rs.done;
    }

    tick = event_new(base, -1, EV_PERSIST, on_tick, &pr);
    printf("bench-async: SELECT 1, one libevent loop thread, %d calls in flight, "
           "%d rounds of %d ms each, order alternated%s\n",
           inflight, rounds, round_ms,
           deferred ? ", each next call from a zero timeout" : "");
    printf("round  raw calls/s  pgguard calls/s  ratio  raw CPU us/call  pgguard CPU us/call"
           "  raw worst gap ms  pgguard worst gap ms\n");
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < 2; k++) {
            bool raw = (k == 0) == (r % 2 == 0);
            round_state rs = {.base = base};
            double t0, c0, t, c;

            if (only >= 0 && raw != (only == 1)) {
                /* One client only: the other's figures are copies, so the
                 * ratio reads 1. */
                continue;
            }

            pr = (probe){0};
            if (only < 0)
                event_add(tick, &ms1);
            t0 = now_s();
            c0 = cpu_s();
            rs.end = t0 + round_ms / 1000.0;
            measured_round(raw, cs, ac, inflight, &rs);
            t = now_s() - t0;
            c = cpu_s() - c0;
            event_del(tick);
            if (rs.failed)
                die("%ld calls failed in a %s round", rs.failed, raw ? "raw" : "pgguard");
            total_done += rs.done;
            if (raw) {
                raw_rate[r] = rs.done / t;
                raw_cpu[r] = c * 1e6 / rs.done;
                raw_gap[r] = pr.worst * 1e3;
            } else {
                pgg_gap[r] = pr.worst * 1e3;
                pgg_rate[r] = rs.done / t;
                pgg_cpu[r] = c * 1e6 / rs.done;
            }
        }
        if (only == 0) {
            raw_rate[r] = pgg_rate[r];
            raw_cpu[r] = pgg_cpu[r];
            raw_gap[r] = pgg_gap[r];
        } else if (only == 1) {
            pgg_rate[r] = raw_rate[r];
            pgg_cpu[r] = raw_cpu[r];
            pgg_gap[r] = raw_gap[r];
        }
        ratio[r] = pgg_rate[r] / raw_rate[r];
        printf("%5d  %11.0f  %15.0f  %5.2f  %15.2f  %19.2f  %16.2f  %20.2f\n", r + 1,
               raw_rate[r], pgg_rate[r], ratio[r], raw_cpu[r], pgg_cpu[r], raw_gap[r],
               pgg_gap[r]);
    }
    f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
            load[0] = load[1] = load[2] = 0;
        fclose(f);
    }
    {
        double rr[64], pr[64], q[64];

        memcpy(q, ratio, sizeof(double) * (size_t)rounds);
        qsort(q, (size_t)rounds, sizeof *q, cmp_d);
        memcpy(rr, raw_rate, sizeof rr);
        memcpy(pr, pgg_rate, sizeof pr);
        printf("median: raw %.0f calls/s, pgguard %.0f calls/s, ratio %.2f (range %.2f-%.2f); "
               "CPU per call raw %.2f us, pgguard %.2f us; worst loop gap median raw %.2f ms, "
               "pgguard %.2f ms; load average %.2f %.2f %.2f\n",
               median(rr, rounds), median(pr, rounds), median(ratio, rounds), q[0],
               q[rounds - 1], median(raw_cpu, rounds), median(pgg_cpu, rounds),
               median(raw_gap, rounds), median(pgg_gap, rounds), load[0],
               load[1], load[2]);
    }

    if (only >= 0)
        printf("calls in the measured rounds: %ld (and %ld warming up)\n", total_done,
               warm_done);

#if PGG_BENCH_CALLBACK_CPU
    /* Every callback timed: one round of each, not in the figures above
     * (nor with --only: strace and callgrind count the rounds alone). */
    for (int k = 0; k < 2 && only < 0; k++) {
        round_state rs = {.base = base, .end = now_s() + round_ms / 1000.0};
        char text[512];

        if (only >= 0 && k != only)
            continue;
        async_cpu_reset();
        async_cpu_on(true);
        if (k == 0)
            pgg_round(ac, inflight, &rs);
        else
            raw_round(cs, inflight, &rs);
        async_cpu_on(false);
        async_cpu_text(text, sizeof text);
        printf("callbacks timed, %s: %ld calls; %s\n", k == 0 ? "pgguard" : "raw libpq",
               rs.done, text);
    }
#endif

    event_free(tick);
    pgg_async_free(ac);
    pgg_pool_free(pool);
    for (int i = 0; i < inflight; i++) {
        event_free(cs[i].ev);
        PQfinish(cs[i].conn);
    }
    event_base_free(base);
    pgh_cluster_free(cluster);
    return 0;
}
