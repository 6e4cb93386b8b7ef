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
 *   pool   read_your_writes=pool, no token.
 *
 * Part 2: what learning a write's position costs the writes: INSERTs from
 * 8 threads with read_your_writes=off and =pool, in alternating slices
 * (AB BA ...), medians of the per-round ratios.  The machine is shared:
 * the report prints the load it met.
 *
 *   bench-ryw [--pairs N] [--threads T] [--rounds R] [--slice-ms MS]
 *             [--timeout-ms MS] [--max-wait-ms MS] [--modes none,token,pool]
 *             [--pause-all PCT]   (% of pauses that stop every replica; 30)
 *             [--wide]            (part 2 writes four columns, two indexes)
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
static const char *opt_modes = "none,token,pool";
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

enum mode { M_NONE, M_TOKEN, M_POOL };
static const char *const mode_name[] = {"none", "token", "pool"};

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
    run.pool = make_pool(m == M_POOL ? "read_your_writes=pool" : "read_your_writes=off");
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

static void write_cost(void)
{
    pgg_pool *off = make_pool("read_your_writes=off");
    pgg_pool *on = make_pool("read_your_writes=pool");
    double ratio[64], a[64], b[64], sa[64], sb[64], ca[64], cb[64];
    int n = opt_rounds < 64 ? opt_rounds : 64;

    for (int k = 0; k < n; k++) {
        slice_cost x, y;
        if (k % 2 == 0) {
            x = write_rate(off);
            y = write_rate(on);
        } else {
            y = write_rate(on);
            x = write_rate(off);
        }
        a[k] = x.rate, b[k] = y.rate, sa[k] = x.server_us, sb[k] = y.server_us;
        ca[k] = x.client_us, cb[k] = y.client_us;
        ratio[k] = b[k] / a[k];
        printf("  round %d: off %7.0f/s (server %5.1f us, client %5.1f us per write)  "
               "pool %7.0f/s (server %5.1f us, client %5.1f us)  ratio %.3f\n",
               k + 1, a[k], sa[k], ca[k], b[k], sb[k], cb[k], ratio[k]);
        fflush(stdout);
    }
    qsort(ratio, (size_t)n, sizeof ratio[0], cmp_double);
    qsort(a, (size_t)n, sizeof a[0], cmp_double);
    qsort(b, (size_t)n, sizeof b[0], cmp_double);
    qsort(sa, (size_t)n, sizeof sa[0], cmp_double);
    qsort(sb, (size_t)n, sizeof sb[0], cmp_double);
    qsort(ca, (size_t)n, sizeof ca[0], cmp_double);
    qsort(cb, (size_t)n, sizeof cb[0], cmp_double);
    printf("writes/s at %d threads, median of %d rounds: off %.0f, pool %.0f; "
           "median per-round ratio pool/off %.3f (cost %.1f%%)\n"
           "CPU per write, medians: server off %.1f us, pool %.1f us (+%.1f%%); "
           "client off %.1f us, pool %.1f us (+%.1f%%)\n",
           opt_threads, n, a[n / 2], b[n / 2], ratio[n / 2], (1 - ratio[n / 2]) * 100,
           sa[n / 2], sb[n / 2], (sb[n / 2] / sa[n / 2] - 1) * 100, ca[n / 2], cb[n / 2],
           (cb[n / 2] / ca[n / 2] - 1) * 100);
    pgg_pool_free(off);
    pgg_pool_free(on);
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
        {NULL, 0, NULL, 0}};
    char err[2048];
    int c;
    bool ok = true;

    while ((c = getopt_long(argc, argv, "p:t:r:s:T:w:m:a:Wh", longopts, NULL)) != -1) {
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
        default:
            fprintf(stderr, "usage: %s [--pairs N] [--threads T] [--rounds R] [--slice-ms MS] "
                            "[--timeout-ms MS] [--max-wait-ms MS] [--modes none,token,pool] "
                            "[--pause-all PCT] [--wide]\n",
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
    for (int m = M_NONE; m <= M_POOL; m++)
        if (strstr(opt_modes, mode_name[m]))
            ok = run_pairs((enum mode)m) && ok;
    print_load("after part 1");
    printf("part 2: INSERT throughput (%s), read_your_writes=off vs pool, %d threads, %d "
           "rounds of %d ms\n",
           opt_wide ? "4 columns, 2 secondary indexes" : "1 column", opt_threads, opt_rounds,
           opt_slice_ms);
    if (opt_rounds > 0 && opt_slice_ms > 0)
        write_cost();
    print_load("at end");
    free(conninfo);
    pgh_cluster_free(cluster);
    return ok ? 0 : 1;
}
