/*
 * bench-ryw: read your writes under real replica lag (issue 11's goal).
 *
 * A primary and two replicas (the harness starts them, or
 * PGGUARD_TEST_PRIMARY / PGGUARD_TEST_REPLICAS name yours: replay pausing
 * then needs superuser).  Part 1: 8 threads run write-then-read pairs
 * (INSERT a row, then read it back) while a chaos thread pauses and resumes
 * WAL replay on a random replica at random (pauses of 20 ms to 1.5 s: a
 * real lag of up to seconds).  For each way of reading it counts reads
 * older than their write (the row missing), reads served by a replica, and
 * time spent waiting for one:
 *
 *   none   a plain PGG_READ, read_your_writes=off: the race, measured;
 *   token  call.min_lsn = the write's info.lsn (read_your_writes=off);
 *   pool   read_your_writes=pool, no token;
 *   sampled  read_your_writes=sampled, no token.
 *
 * Part 2: what learning a write's position costs the writes: INSERTs from
 * 8 threads with read_your_writes=off, =pool and =sampled, in rotating
 * slices (ABC CBA BCA ...), medians and ranges of the per-round ratios.
 * Part 3: a mixed load without faults (--write-pct writes, the rest reads
 * of the thread's latest row): operations/s, read latency, reads on the
 * primary, samples per read, primary CPU per operation, per mode.  The
 * machine is shared: the report prints the load it met.
 *
 *   bench-ryw [--pairs N] [--threads T] [--rounds R] [--slice-ms MS]
 *             [--timeout-ms MS] [--max-wait-ms MS] [--modes none,token,pool]
 *             [--pause-all PCT]   (% of pauses that stop every replica; 30)
 *             [--wide]            (part 2 writes four columns, two indexes)
 *             [--write-pct PCT]   (part 3: % of operations that write; 20)
 *
 * Not a meson test: it reports, asserts nothing, and exits 1 only when a
 * read with a position came back older than its write.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "harness.h"
#include "pgguard.h"

static int opt_pairs = 10000, opt_threads = 8, opt_rounds = 6, opt_slice_ms = 1000;
static int opt_timeout_ms = 3000, opt_max_wait_ms = 1000;
static const char *opt_modes = "none,token,pool,sampled";
static int opt_write_pct = 20; /* part 3: % of operations that write */
static int opt_pause_all = 30; /* % of pauses that stop every replica */
/* Part 2's write: a one-column row, or (--wide) a row of four columns with
 * two secondary indexes, closer to what an application writes. */
static bool opt_wide;
static const char narrow_insert[] = "INSERT INTO bench_ryw (id) VALUES ($1)";
static const char wide_insert[] =
    "INSERT INTO bench_ryw_wide (id, name, n) VALUES ($1::bigint, md5($1::text), $1::bigint % 1000)";

static pgh_cluster *cluster;
static char *conninfo;

static void die(const char *what, const pgg_error *e)
{
    fprintf(stderr, "bench-ryw: %s: %s: %s\n", what, e ? pgg_err_name(e->code) : "",
            e ? e->message : "");
    pgh_cluster_free(cluster);
    exit(2);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static pgg_pool *make_pool(const char *settings)
{
    pgg_config *cfg = pgg_config_new();
    pgg_error e;
    char all[512];

    snprintf(all, sizeof all,
             "pool_max=8 bulkhead.max_concurrent=64 health_interval_ms=200 "
             "connect_timeout_ms=2000 read_your_writes.max_wait_ms=%d %s",
             opt_max_wait_ms, settings);
    if (!cfg || pgg_config_set_servers(cfg, conninfo, &e) != PGG_OK ||
        pgg_config_parse(cfg, all, &e) != PGG_OK)
        die("config", &e);
    pgg_pool *p = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    if (!p)
        die("pool", &e);
    /* Roles known before the clock starts. */
    for (int k = 0; k < 200; k++) {
        int known = 0;
        for (int i = 0; i < pgg_pool_host_count(p); i++) {
            pgg_host_stats s;
            pgg_pool_host_stats(p, i, &s);
            known += s.role != PGG_ROLE_UNKNOWN;
        }
        if (known == pgg_pool_host_count(p))
            break;
        sleep_ms(20);
    }
    return p;
}

/* ------------------------------------------------------------ part 1 */

enum mode { M_NONE, M_TOKEN, M_POOL, M_SAMPLED };
static const char *const mode_name[] = {"none", "token", "pool", "sampled"};
static const char *const mode_setting[] = {"read_your_writes=off", "read_your_writes=off",
                                           "read_your_writes=pool", "read_your_writes=sampled"};

typedef struct pairs_run {
    pgg_pool *pool;
    enum mode mode;
    atomic_int next;
    atomic_long stale, replica, primary, failed, waited, wait_us;
    atomic_long lat_us;
    atomic_bool stop_chaos;
    int paused_ms_total;
    int pauses, all_pauses;
} pairs_run;

static void *pair_worker(void *arg)
{
    pairs_run *run = arg;
    char idbuf[24];
    const char *vals[1] = {idbuf};

    for (;;) {
        int id = atomic_fetch_add(&run->next, 1);
        if (id >= opt_pairs)
            break;
        snprintf(idbuf, sizeof idbuf, "%d", id);
        pgg_call wc = {.timeout_ms = opt_timeout_ms,
                       .flags = run->mode == M_TOKEN ? PGG_CALL_WANT_LSN : 0};
        pgg_info wi, ri;
        pgg_error e;
        PGresult *w = pgg_exec_params(run->pool, PGG_WRITE,
                                      "INSERT INTO bench_ryw (id) VALUES ($1)", 1, NULL, vals,
                                      NULL, NULL, &wc, &wi, &e);
        bool wok = w && PQresultStatus(w) == PGRES_COMMAND_OK;
        PQclear(w);
        if (!wok) {
            atomic_fetch_add(&run->failed, 1);
            continue;
        }
        pgg_call rc = {.timeout_ms = opt_timeout_ms,
                       .min_lsn = run->mode == M_TOKEN ? wi.lsn : 0};
        double t0 = pgh_now_ms();
        PGresult *r = pgg_exec_params(run->pool, PGG_READ,
                                      "SELECT id FROM bench_ryw WHERE id = $1", 1, NULL, vals,
                                      NULL, NULL, &rc, &ri, &e);
        atomic_fetch_add(&run->lat_us, (long)((pgh_now_ms() - t0) * 1000));
        if (!r || PQresultStatus(r) != PGRES_TUPLES_OK) {
            atomic_fetch_add(&run->failed, 1);
        } else {
            if (PQntuples(r) != 1)
                atomic_fetch_add(&run->stale, 1);
            if (ri.host_index == 0)
                atomic_fetch_add(&run->primary, 1);
            else
                atomic_fetch_add(&run->replica, 1);
            if (ri.lsn_wait_us > 0) {
                atomic_fetch_add(&run->waited, 1);
                atomic_fetch_add(&run->wait_us, (long)ri.lsn_wait_us);
            }
        }
        PQclear(r);
    }
    return NULL;
}

/* Pause a random replica's replay (every replica's, opt_pause_all % of
 * the time) for 20..1500 ms, rest 20..500 ms, until the workers finish;
 * every replica resumed at the end. */
static void *chaos(void *arg)
{
    pairs_run *run = arg;
    unsigned seed = 12345;
    int n = pgh_cluster_replica_count(cluster);

    while (!atomic_load(&run->stop_chaos) && n > 0) {
        int pick = (int)(rand_r(&seed) % (unsigned)n);
        bool all = (int)(rand_r(&seed) % 100) < opt_pause_all;
        int pause = 20 + (int)(rand_r(&seed) % 1480);
        int rest = 20 + (int)(rand_r(&seed) % 480);
        int paused = 0;

        for (int i = 0; i < n; i++)
            if ((all || i == pick) && pgh_node_pause_replay(pgh_cluster_replica(cluster, i)) == 0)
                paused++;
        if (paused) {
            run->pauses++;
            run->all_pauses += all;
            run->paused_ms_total += pause;
            for (int t = 0; t < pause && !atomic_load(&run->stop_chaos); t += 10)
                sleep_ms(10);
            for (int i = 0; i < n; i++)
                if (all || i == pick)
                    pgh_node_resume_replay(pgh_cluster_replica(cluster, i));
        }
        for (int t = 0; t < rest && !atomic_load(&run->stop_chaos); t += 10)
            sleep_ms(10);
    }
    for (int i = 0; i < n; i++)
        pgh_node_resume_replay(pgh_cluster_replica(cluster, i));
    return NULL;
}

static bool run_pairs(enum mode m)
{
    pairs_run run = {.mode = m};
    pthread_t th[64], ch;
    pgg_error e;

    PGresult *r = NULL;
    run.pool = make_pool(mode_setting[m]);
    r = pgg_exec(run.pool, PGG_WRITE, "TRUNCATE bench_ryw", NULL, NULL, &e);
    if (!r || PQresultStatus(r) != PGRES_COMMAND_OK)
        die("truncate", &e);
    PQclear(r);
    double t0 = pgh_now_ms();
    pthread_create(&ch, NULL, chaos, &run);
    for (int i = 0; i < opt_threads; i++)
        pthread_create(&th[i], NULL, pair_worker, &run);
    for (int i = 0; i < opt_threads; i++)
        pthread_join(th[i], NULL);
    double secs = (pgh_now_ms() - t0) / 1000;
    atomic_store(&run.stop_chaos, true);
    pthread_join(ch, NULL);
    pgg_stats st;
    pgg_pool_stats(run.pool, &st);
    pgg_pool_free(run.pool);

    long served = run.replica + run.primary;
    printf("%-6s %6d pairs %5.1f s  stale %5ld  replica %5.1f%%  primary %5ld  failed %ld  "
           "waited %5ld (mean %6.1f ms)  read mean %6.2f ms  [%d pauses (%d of every "
           "replica), %.1f s paused]\n",
           mode_name[m], opt_pairs, secs, (long)run.stale,
           served ? 100.0 * (double)run.replica / (double)served : 0.0, (long)run.primary,
           (long)run.failed, (long)run.waited,
           run.waited ? (double)run.wait_us / (double)run.waited / 1000 : 0.0,
           served ? (double)run.lat_us / (double)served / 1000 : 0.0, run.pauses,
           run.all_pauses, run.paused_ms_total / 1000.0);
    printf("       counters: %llu samples, %llu checks, %llu waits, %llu reads on the primary\n",
           (unsigned long long)st.ryw_samples, (unsigned long long)st.ryw_checks,
           (unsigned long long)st.ryw_waits, (unsigned long long)st.ryw_primary);
    fflush(stdout);
    return m == M_NONE || run.stale == 0;
}

/* ------------------------------------------------------------ part 2 */

typedef struct write_slice {
    pgg_pool *pool;
    atomic_bool stop;
    atomic_long done;
    atomic_long id;
} write_slice;

static void *write_worker(void *arg)
{
    write_slice *s = arg;
    char idbuf[24];
    const char *vals[1] = {idbuf};

    while (!atomic_load(&s->stop)) {
        snprintf(idbuf, sizeof idbuf, "%ld", atomic_fetch_add(&s->id, 1));
        PGresult *r = pgg_exec_params(s->pool, PGG_WRITE,
                                      opt_wide ? wide_insert : narrow_insert, 1, NULL, vals,
                                      NULL, NULL, NULL, NULL, NULL);
        if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
            atomic_fetch_add(&s->done, 1);
        } else {
            static atomic_bool said;
            if (!atomic_exchange(&said, true))
                fprintf(stderr, "bench-ryw: a write failed: %s\n",
                        r ? PQresultErrorMessage(r) : "no result");
        }
        PQclear(r);
    }
    return NULL;
}

static long next_id = 100000000;

/* CPU seconds (user + system) used so far by the primary's postmaster and
 * its children (the backends), from /proc: less sensitive to the
 * neighbours' load than a rate.  0 when the server is not ours. */
static double server_cpu(void)
{
    pid_t pm = pgh_node_pid(pgh_cluster_primary(cluster));
    long ticks = sysconf(_SC_CLK_TCK);
    double total = 0;
    DIR *d;
    struct dirent *de;

    if (pm <= 0 || !(d = opendir("/proc")))
        return 0;
    while ((de = readdir(d)) != NULL) {
        char path[300], buf[1024];
        FILE *f;
        size_t n;

        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/stat", de->d_name);
        if (!(f = fopen(path, "r")))
            continue;
        n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        /* pid (comm) state ppid ... utime(14) stime(15) */
        char *rp = strrchr(buf, ')');
        int ppid = 0;
        unsigned long ut = 0, st = 0;
        if (!rp || sscanf(rp + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ppid,
                          &ut, &st) != 3)
            continue;
        if (ppid == pm || atoi(de->d_name) == pm)
            total += (double)(ut + st) / (double)ticks;
    }
    closedir(d);
    return total;
}

static double client_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

typedef struct slice_cost {
    double rate;       /* writes per second */
    double server_us;  /* server CPU per write */
    double client_us;  /* client CPU per write */
} slice_cost;

static slice_cost write_rate(pgg_pool *p)
{
    write_slice s = {.pool = p};
    pthread_t th[64];
    slice_cost out;

    atomic_store(&s.id, next_id);
    for (int i = 0; i < opt_threads; i++)
        pthread_create(&th[i], NULL, write_worker, &s);
    sleep_ms(200); /* warm up */
    long before = atomic_load(&s.done);
    double t0 = pgh_now_ms(), s0 = server_cpu(), c0 = client_cpu();
    sleep_ms(opt_slice_ms);
    long n = atomic_load(&s.done) - before;
    double secs = (pgh_now_ms() - t0) / 1000;
    out.server_us = n ? (server_cpu() - s0) / (double)n * 1e6 : 0;
    out.client_us = n ? (client_cpu() - c0) / (double)n * 1e6 : 0;
    atomic_store(&s.stop, true);
    for (int i = 0; i < opt_threads; i++)
        pthread_join(th[i], NULL);
    next_id = atomic_load(&s.id) + 1;
    out.rate = (double)n / secs;
    return out;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median and range of v[0..n) (sorted in place). */
static void stats3(double *v, int n, double *med, double *lo, double *hi)
{
    qsort(v, (size_t)n, sizeof v[0], cmp_double);
    *med = v[n / 2];
    *lo = v[0];
    *hi = v[n - 1];
}

/* off, pool and sampled in rotating order each round (ABC, CBA, BCA...),
 * so that a slow moment of the shared machine hits each alike. */
static void write_cost(void)
{
    static const char *const name[3] = {"off", "pool", "sampled"};
    pgg_pool *p[3] = {make_pool("read_your_writes=off"), make_pool("read_your_writes=pool"),
                      make_pool("read_your_writes=sampled")};
    static const int order[6][3] = {{0, 1, 2}, {2, 1, 0}, {1, 2, 0},
                                    {0, 2, 1}, {2, 0, 1}, {1, 0, 2}};
    double rate[3][64], srv[3][64], cli[3][64], ratio[3][64];
    int n = opt_rounds < 64 ? opt_rounds : 64;

    for (int k = 0; k < n; k++) {
        slice_cost x[3];
        for (int j = 0; j < 3; j++) {
            int m = order[k % 6][j];
            x[m] = write_rate(p[m]);
        }
        printf("  round %d:", k + 1);
        for (int m = 0; m < 3; m++) {
            rate[m][k] = x[m].rate, srv[m][k] = x[m].server_us, cli[m][k] = x[m].client_us;
            ratio[m][k] = x[m].rate / x[0].rate;
            printf("  %s %6.0f/s (server %5.1f, client %5.1f us)", name[m], x[m].rate,
                   x[m].server_us, x[m].client_us);
        }
        printf("  ratios %.3f %.3f\n", ratio[1][k], ratio[2][k]);
        fflush(stdout);
    }
    printf("writes/s at %d threads, %d rounds (median, range):\n", opt_threads, n);
    for (int m = 0; m < 3; m++) {
        double r, rl, rh, a, al, ah, sv, sl, sh, c, cl, ch;
        stats3(ratio[m], n, &r, &rl, &rh);
        stats3(rate[m], n, &a, &al, &ah);
        stats3(srv[m], n, &sv, &sl, &sh);
        stats3(cli[m], n, &c, &cl, &ch);
        printf("  %-8s %7.0f/s (%.0f-%.0f)  ratio to off %.3f (%.3f-%.3f)  server CPU per write "
               "%5.1f us (%.1f-%.1f)  client %5.1f us\n",
               name[m], a, al, ah, r, rl, rh, sv, sl, sh, c);
    }
    for (int m = 0; m < 3; m++)
        pgg_pool_free(p[m]);
}

/* ------------------------------------------------------------ part 3 */

/* A mixed load without faults: each operation writes a new row
 * (opt_write_pct %) or reads back this thread's latest row by key.  What
 * the modes cost reads (latency, who serves them, samples) and the whole. */
typedef struct mixed_slice {
    pgg_pool *pool;
    atomic_bool stop;
    atomic_long writes, reads, stale, failed, read_us, on_primary;
    atomic_long id;
} mixed_slice;

static void *mixed_worker(void *arg)
{
    mixed_slice *s = arg;
    unsigned seed = (unsigned)(uintptr_t)&seed;
    char idbuf[24];
    const char *vals[1] = {idbuf};
    long mine = -1;

    while (!atomic_load(&s->stop)) {
        pgg_info info;
        pgg_error e;
        if (mine < 0 || (int)(rand_r(&seed) % 100) < opt_write_pct) {
            long id = atomic_fetch_add(&s->id, 1);
            snprintf(idbuf, sizeof idbuf, "%ld", id);
            PGresult *r = pgg_exec_params(s->pool, PGG_WRITE, narrow_insert, 1, NULL, vals,
                                          NULL, NULL, NULL, &info, &e);
            if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
                atomic_fetch_add(&s->writes, 1);
                mine = id;
            } else {
                atomic_fetch_add(&s->failed, 1);
            }
            PQclear(r);
            continue;
        }
        snprintf(idbuf, sizeof idbuf, "%ld", mine);
        double t0 = pgh_now_ms();
        PGresult *r = pgg_exec_params(s->pool, PGG_READ, "SELECT id FROM bench_ryw WHERE id = $1",
                                      1, NULL, vals, NULL, NULL, NULL, &info, &e);
        long us = (long)((pgh_now_ms() - t0) * 1000);
        if (r && PQresultStatus(r) == PGRES_TUPLES_OK) {
            atomic_fetch_add(&s->reads, 1);
            atomic_fetch_add(&s->read_us, us);
            atomic_fetch_add(&s->stale, PQntuples(r) != 1);
            atomic_fetch_add(&s->on_primary, info.host_index == 0);
        } else {
            atomic_fetch_add(&s->failed, 1);
        }
        PQclear(r);
    }
    return NULL;
}

typedef struct mixed_cost {
    double ops, reads, read_us, server_us, primary_pct, stale, samples_per_read;
} mixed_cost;

static mixed_cost mixed_rate(pgg_pool *p)
{
    mixed_slice s = {.pool = p};
    pthread_t th[64];
    mixed_cost out;
    pgg_stats st0, st1;

    atomic_store(&s.id, next_id);
    for (int i = 0; i < opt_threads; i++)
        pthread_create(&th[i], NULL, mixed_worker, &s);
    sleep_ms(200);
    long w0 = atomic_load(&s.writes), r0 = atomic_load(&s.reads), l0 = atomic_load(&s.read_us);
    long p0 = atomic_load(&s.on_primary), x0 = atomic_load(&s.stale);
    pgg_pool_stats(p, &st0);
    double t0 = pgh_now_ms(), c0 = server_cpu();
    sleep_ms(opt_slice_ms);
    double secs = (pgh_now_ms() - t0) / 1000, c1 = server_cpu();
    pgg_pool_stats(p, &st1);
    long w = atomic_load(&s.writes) - w0, r = atomic_load(&s.reads) - r0;
    long l = atomic_load(&s.read_us) - l0, pr = atomic_load(&s.on_primary) - p0;
    long x = atomic_load(&s.stale) - x0;
    atomic_store(&s.stop, true);
    for (int i = 0; i < opt_threads; i++)
        pthread_join(th[i], NULL);
    next_id = atomic_load(&s.id) + 1;
    out.ops = (double)(w + r) / secs;
    out.reads = (double)r / secs;
    out.read_us = r ? (double)l / (double)r : 0;
    out.server_us = w + r ? (c1 - c0) / (double)(w + r) * 1e6 : 0;
    out.primary_pct = r ? 100.0 * (double)pr / (double)r : 0;
    out.stale = (double)x;
    out.samples_per_read = r ? (double)(st1.ryw_samples - st0.ryw_samples) / (double)r : 0;
    return out;
}

static void mixed_cost_run(void)
{
    static const char *const name[3] = {"off", "pool", "sampled"};
    pgg_pool *p[3] = {make_pool("read_your_writes=off"), make_pool("read_your_writes=pool"),
                      make_pool("read_your_writes=sampled")};
    static const int order[6][3] = {{0, 1, 2}, {2, 1, 0}, {1, 2, 0},
                                    {0, 2, 1}, {2, 0, 1}, {1, 0, 2}};
    double ops[3][64], rd[3][64], lat[3][64], srv[3][64], prim[3][64], spr[3][64], ratio[3][64];
    double stale[3] = {0};
    int n = opt_rounds < 64 ? opt_rounds : 64;

    for (int k = 0; k < n; k++) {
        mixed_cost x[3];
        for (int j = 0; j < 3; j++) {
            int m = order[k % 6][j];
            x[m] = mixed_rate(p[m]);
        }
        printf("  round %d:", k + 1);
        for (int m = 0; m < 3; m++) {
            ops[m][k] = x[m].ops, rd[m][k] = x[m].reads, lat[m][k] = x[m].read_us;
            srv[m][k] = x[m].server_us, prim[m][k] = x[m].primary_pct;
            spr[m][k] = x[m].samples_per_read, ratio[m][k] = x[m].ops / x[0].ops;
            stale[m] += x[m].stale;
            printf("  %s %6.0f ops/s read %6.0f us (primary %4.1f%%)", name[m], x[m].ops,
                   x[m].read_us, x[m].primary_pct);
        }
        printf("\n");
        fflush(stdout);
    }
    printf("operations/s at %d threads, %d%% writes, %d rounds (median, range):\n", opt_threads,
           opt_write_pct, n);
    for (int m = 0; m < 3; m++) {
        double a, al, ah, r, rl, rh, l, ll, lh, sv, sl, sh, pm, pl, ph, sp, spl, sph, rr, rrl, rrh;
        stats3(ops[m], n, &a, &al, &ah);
        stats3(ratio[m], n, &r, &rl, &rh);
        stats3(lat[m], n, &l, &ll, &lh);
        stats3(srv[m], n, &sv, &sl, &sh);
        stats3(prim[m], n, &pm, &pl, &ph);
        stats3(spr[m], n, &sp, &spl, &sph);
        stats3(rd[m], n, &rr, &rrl, &rrh);
        printf("  %-8s %7.0f ops/s (%.0f-%.0f), ratio to off %.3f (%.3f-%.3f); reads %6.0f/s, "
               "mean read %5.0f us (%.0f-%.0f), on the primary %4.1f%% (%.1f-%.1f), "
               "samples per read %.2f (%.2f-%.2f); primary CPU per op %5.1f us (%.1f-%.1f); "
               "stale reads %.0f\n",
               name[m], a, al, ah, r, rl, rh, rr, l, ll, lh, pm, pl, ph, sp, spl, sph, sv, sl, sh,
               stale[m]);
    }
    for (int m = 0; m < 3; m++)
        pgg_pool_free(p[m]);
}

/* ------------------------------------------------------------- main */

static void print_load(const char *when)
{
    double l[3] = {0};
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf %lf %lf", &l[0], &l[1], &l[2]) != 3)
            l[0] = l[1] = l[2] = -1;
        fclose(f);
    }
    printf("load average %s: %.2f %.2f %.2f\n", when, l[0], l[1], l[2]);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"pairs", required_argument, NULL, 'p'},   {"threads", required_argument, NULL, 't'},
        {"rounds", required_argument, NULL, 'r'},  {"slice-ms", required_argument, NULL, 's'},
        {"timeout-ms", required_argument, NULL, 'T'},
        {"max-wait-ms", required_argument, NULL, 'w'},
        {"modes", required_argument, NULL, 'm'},   {"help", no_argument, NULL, 'h'},
        {"pause-all", required_argument, NULL, 'a'}, {"wide", no_argument, NULL, 'W'},
        {"write-pct", required_argument, NULL, 'P'},
        {NULL, 0, NULL, 0}};
    char err[2048];
    int c;
    bool ok = true;

    while ((c = getopt_long(argc, argv, "p:t:r:s:T:w:m:a:WP:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'p': opt_pairs = atoi(optarg); break;
        case 't': opt_threads = atoi(optarg); break;
        case 'r': opt_rounds = atoi(optarg); break;
        case 's': opt_slice_ms = atoi(optarg); break;
        case 'T': opt_timeout_ms = atoi(optarg); break;
        case 'w': opt_max_wait_ms = atoi(optarg); break;
        case 'm': opt_modes = optarg; break;
        case 'a': opt_pause_all = atoi(optarg); break;
        case 'W': opt_wide = true; break;
        case 'P': opt_write_pct = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s [--pairs N] [--threads T] [--rounds R] [--slice-ms MS] "
                            "[--timeout-ms MS] [--max-wait-ms MS] [--modes none,token,pool] "
                            "[--pause-all PCT] [--wide] [--write-pct PCT]\n",
                    argv[0]);
            return c == 'h' ? 0 : 2;
        }
    }
    if (opt_threads < 1 || opt_threads > 64 || opt_pairs < 1 || opt_rounds < 0) {
        fprintf(stderr, "bench-ryw: bad option value\n");
        return 2;
    }
    cluster = pgh_cluster_start(2, err, sizeof err);
    if (!cluster) {
        fprintf(stderr, "bench-ryw: cluster: %s\n", err);
        return 2;
    }
    conninfo = pgh_cluster_conninfo(cluster);
    if (pgh_node_exec(pgh_cluster_primary(cluster),
                      "DROP TABLE IF EXISTS bench_ryw;"
                      "CREATE TABLE bench_ryw (id bigint PRIMARY KEY);"
                      "DROP TABLE IF EXISTS bench_ryw_wide;"
                      "CREATE TABLE bench_ryw_wide (id bigint PRIMARY KEY, name text, n bigint,"
                      " at timestamptz DEFAULT now());"
                      "CREATE INDEX ON bench_ryw_wide (name); CREATE INDEX ON bench_ryw_wide (n)") != 0)
        die("create table", NULL);
    for (int i = 0; i < pgh_cluster_replica_count(cluster); i++)
        pgh_node_wait_replay(pgh_cluster_replica(cluster, i), pgh_cluster_primary(cluster),
                             10000);
    print_load("at start");
    printf("part 1: %d write-then-read pairs, %d threads, primary + %d replicas, "
           "replay paused at random (%d%% of pauses on every replica); call timeout %d ms, "
           "max wait %d ms\n",
           opt_pairs, opt_threads, pgh_cluster_replica_count(cluster), opt_pause_all,
           opt_timeout_ms, opt_max_wait_ms);
    for (int m = M_NONE; m <= M_SAMPLED; m++)
        if (strstr(opt_modes, mode_name[m]))
            ok = run_pairs((enum mode)m) && ok;
    print_load("after part 1");
    printf("part 2: INSERT throughput (%s), read_your_writes=off vs pool vs sampled, %d threads, %d "
           "rounds of %d ms\n",
           opt_wide ? "4 columns, 2 secondary indexes" : "1 column", opt_threads, opt_rounds,
           opt_slice_ms);
    if (opt_rounds > 0 && opt_slice_ms > 0)
        write_cost();
    print_load("after part 2");
    printf("part 3: mixed load, %d%% writes (INSERT a row) and reads of this thread's latest "
           "row, replicas replaying, off vs pool vs sampled, %d threads, %d rounds of %d ms\n",
           opt_write_pct, opt_threads, opt_rounds, opt_slice_ms);
    if (opt_rounds > 0 && opt_slice_ms > 0 && opt_write_pct >= 0)
        mixed_cost_run();
    print_load("at end");
    free(conninfo);
    pgh_cluster_free(cluster);
    return ok ? 0 : 1;
}
