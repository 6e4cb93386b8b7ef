/*
 * How far pipelining can go on this machine, before any hand-off between
 * threads: the ceiling of issue 10's pipelining goal (>= 1.5x raw libpq
 * with one blocking connection per thread).
 *
 *   bench-pipe-ceiling --conninfo CI [--threads T] [--batch B] [--conns C]
 *                      [--rounds R] [--prepared 1]
 *
 * Raw: T threads, each with its own connection, `SELECT 1` by PQexec (or
 * PQexecPrepared with --prepared 1), one at a time.  Ceiling: ONE thread
 * drives C connections in pipeline mode, B statements per connection per
 * batch, each statement followed by its own Sync (so each is its own
 * implicit transaction, as pgguard's pipeline=on sends them); sent twice,
 * plain and with the socket under TCP_CORK while a batch is queued (libpq
 * 15 flushes at every Sync: without the cork each statement is its own
 * segment and wakes the server).  No thread waits for another: a pool of
 * blocking callers sharing connections pays a wake-up per call on top.
 * The three run in blocks of T x 500 statements, the order rotated each
 * round; the report is the median and range of per-round ratios to raw
 * (throughput, and the process's CPU per statement).
 */
#define BENCH_NAME "bench-pipe-ceiling"

#include <libpq-fe.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "bench_util.h"

#define PER_THREAD 500
#define MAX_THREADS 64
#define MAX_CONNS 16
#define MAX_ROUNDS 64

static int nthreads = 8, batch = 8, nconns = 1, rounds = 9;
static bool prepared;

static double clock_s(clockid_t id)
{
    struct timespec t;

    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static PGconn *connect_or_die(const char *ci)
{
    PGconn *c = PQconnectdb(ci);

    if (PQstatus(c) != CONNECTION_OK)
        die("connect: %s", PQerrorMessage(c));
    if (prepared) {
        PGresult *r = PQprepare(c, "s1", "SELECT 1", 0, NULL);

        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            die("prepare: %s", PQerrorMessage(c));
        PQclear(r);
    }
    return c;
}

/* ------------------------------------------------------------- raw */

static PGconn *raw_conn[MAX_THREADS];
static pthread_barrier_t go, done;

static void *raw_thread(void *arg)
{
    PGconn *c = raw_conn[(long)arg];

    for (;;) {
        pthread_barrier_wait(&go);
        for (int k = 0; k < PER_THREAD; k++) {
            PGresult *r = prepared
                              ? PQexecPrepared(c, "s1", 0, NULL, NULL, NULL, 0)
                              : PQexec(c, "SELECT 1");

            if (PQresultStatus(r) != PGRES_TUPLES_OK)
                die("raw: %s", PQerrorMessage(c));
            PQclear(r);
        }
        pthread_barrier_wait(&done);
    }
    return NULL;
}

/* -------------------------------------------------------- pipelined */

static PGconn *pipe_conn[MAX_CONNS];

static void set_cork(PGconn *c, int on)
{
    /* Fails harmlessly on a Unix socket (no TCP_CORK there). */
    (void)setsockopt(PQsocket(c), IPPROTO_TCP, TCP_CORK, &on, sizeof on);
}

static void send_batch(PGconn *c, bool cork)
{
    if (cork)
        set_cork(c, 1);
    for (int k = 0; k < batch; k++) {
        int ok = prepared ? PQsendQueryPrepared(c, "s1", 0, NULL, NULL, NULL, 0)
                          : PQsendQueryParams(c, "SELECT 1", 0, NULL, NULL,
                                              NULL, NULL, 0);

        if (!ok || !PQpipelineSync(c))
            die("pipeline send: %s", PQerrorMessage(c));
    }
    if (cork)
        set_cork(c, 0);
}

static void collect_batch(PGconn *c)
{
    for (int syncs = 0; syncs < batch;) {
        PGresult *r = PQgetResult(c);
        ExecStatusType st;

        if (!r)
            continue; /* between one statement's results and the next */
        st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC)
            syncs++;
        else if (st != PGRES_TUPLES_OK)
            die("pipeline: %s", PQresultErrorMessage(r));
        PQclear(r);
    }
}

static void run_pipelined(int total, bool cork)
{
    for (int sent = 0; sent < total; sent += nconns * batch) {
        for (int i = 0; i < nconns; i++)
            send_batch(pipe_conn[i], cork);
        for (int i = 0; i < nconns; i++)
            collect_batch(pipe_conn[i]);
    }
}

/* ----------------------------------------------------------- report */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static void report(const char *what, double *v)
{
    qsort(v, (size_t)rounds, sizeof *v, cmp_double);
    printf("  %-34s %5.2f  (%4.2f-%4.2f)\n", what, v[rounds / 2], v[0],
           v[rounds - 1]);
}

int main(int argc, char **argv)
{
    const char *ci = getenv("PGG_BENCH_CONNINFO");
    double tput[2][MAX_ROUNDS], cpu[2][MAX_ROUNDS];
    int total;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--conninfo") == 0)
            ci = argv[i + 1];
        else if (strcmp(argv[i], "--threads") == 0)
            nthreads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--batch") == 0)
            batch = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--conns") == 0)
            nconns = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--prepared") == 0)
            prepared = atoi(argv[i + 1]) != 0;
        else
            die("unknown option %s (see the comment at the top of "
                "bench_pipe_ceiling.c)", argv[i]);
    }
    if (!ci)
        die("no server: --conninfo or PGG_BENCH_CONNINFO");
    if (nthreads < 1 || nthreads > MAX_THREADS || batch < 1 || nconns < 1 ||
        nconns > MAX_CONNS || rounds < 1 || rounds > MAX_ROUNDS)
        die("bad --threads (1..%d), --batch, --conns (1..%d) or --rounds "
            "(1..%d)", MAX_THREADS, MAX_CONNS, MAX_ROUNDS);
    total = nthreads * PER_THREAD;

    pthread_barrier_init(&go, NULL, (unsigned)nthreads + 1);
    pthread_barrier_init(&done, NULL, (unsigned)nthreads + 1);
    for (long i = 0; i < nthreads; i++) {
        pthread_t t;

        raw_conn[i] = connect_or_die(ci);
        if (pthread_create(&t, NULL, raw_thread, (void *)i) != 0)
            die("pthread_create failed");
        pthread_detach(t);
    }
    for (int i = 0; i < nconns; i++) {
        pipe_conn[i] = connect_or_die(ci);
        if (!PQenterPipelineMode(pipe_conn[i]))
            die("pipeline mode: %s", PQerrorMessage(pipe_conn[i]));
    }

    printf("%s: %s SELECT 1; raw: %d threads, a connection each; pipelined: "
           "1 thread, %d connection(s), batches of %d, a Sync each; %d "
           "rounds of %d statements per client\n",
           BENCH_NAME, prepared ? "prepared" : "simple/unnamed", nthreads,
           nconns, batch, rounds, total);
    for (int r = 0; r < rounds; r++) {
        double wall[3], used[3];

        for (int o = 0; o < 3; o++) {
            int which = (o + r) % 3;
            double t0 = clock_s(CLOCK_MONOTONIC),
                   c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);

            if (which == 0) {
                pthread_barrier_wait(&go);
                pthread_barrier_wait(&done);
            } else {
                run_pipelined(total, which == 2);
            }
            wall[which] = clock_s(CLOCK_MONOTONIC) - t0;
            used[which] = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
        }
        for (int m = 0; m < 2; m++) {
            tput[m][r] = wall[0] / wall[m + 1];
            cpu[m][r] = used[m + 1] / used[0];
        }
        note("round %d: raw %.0f/s, pipelined x%.2f, corked x%.2f", r,
             total / wall[0], tput[0][r], tput[1][r]);
    }
    printf("throughput x raw, median (range):\n");
    report("pipelined", tput[0]);
    report("pipelined, TCP_CORK per batch", tput[1]);
    printf("client CPU per statement x raw, median (range):\n");
    report("pipelined", cpu[0]);
    report("pipelined, TCP_CORK per batch", cpu[1]);
    return 0;
}
