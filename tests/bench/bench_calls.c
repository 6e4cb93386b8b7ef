/*
 * bench-calls: pgguard's one-shot calls against the same raw libpq calls,
 * call for call, in one process.
 *
 *   bench-calls --conninfo CI count  CLIENT QUERY N   (for callgrind/strace)
 *   bench-calls --conninfo CI interleave [--threads 1,8,32] [--rounds R]
 *               [--round-calls N] [--block B] [--settings 'k=v ...']
 *               [--pipelined 'k=v ...'] [--detail 1] [--pin CPU]
 *               [--only raw|guard]
 *
 * count: warms up, then makes N calls of one client (raw or guard) and one
 * query (exec: SELECT 1 by PQexec / pgg_exec; params: a one-parameter
 * primary-key lookup by PQexecParams / pgg_exec_params; prepared: the same
 * lookup by PQexecPrepared / pgg_exec_prepared) inside measured_calls(),
 * the one function tests/bench/callgrind tells callgrind to count
 * (--toggle-collect); for strace it runs with N and with 0 calls and
 * takes the difference.
 * The pool exists in both cases (its health thread puts glibc on its
 * multi-thread paths for both clients alike); `raw-alone` measures raw
 * libpq in a process with no pool and no second thread.
 *
 * interleave: every client thread owns one raw connection and shares one
 * pool; it alternates blocks of B raw calls and B pgguard calls (which
 * goes first alternates block by block), so that both clients meet the
 * same load, CPU state and server at the same moment.  The machine's CPU
 * flips between a fast and a slow state for seconds at a time: separate
 * runs compare nothing.  Per round it sums each client's wall time and
 * thread CPU time; the CPU of every thread that is neither a client thread
 * nor the main one (the pool's health and watchdog threads, its closer;
 * from /proc/self/task/TID/schedstat) is charged to pgguard.  (Until
 * 2026-12-01 it charged the process CPU outside the clients' blocks, which
 * also counted the benchmark's own loop, clock readings and barriers:
 * 0.1-0.15 us per call, 1-1.5 %, against pgguard.)  --detail 1 prints each
 * round and that CPU by thread, with the times each thread was put on a
 * CPU per second (its wake-ups).  It prints the
 * median and range of the per-round ratios raw/pgguard (calls/s) and
 * pgguard/raw (CPU per call).  When the server runs on this machine, it
 * also reads the server's CPU per call (from /proc/PID/schedstat, in ns):
 * the backends of the raw connections against every other client backend
 * (the pool's sessions, its health thread's included), per round.
 *
 * --pin CPU puts every thread of the process and every client backend of
 * the server (which must run here) on that one CPU, each round.  Unpinned,
 * one thread's figures depend on where the scheduler puts the two
 * backends: a client and its backend on different CPUs cost both of them
 * up to 4x the CPU per call of a pair that shares one (measured
 * 2026-12-01: rounds of 7.4 against 30 us for the client, 10.6 against 34
 * for the server, whichever client had the far backend, for a whole run),
 * and that, not pgguard, then decides the ratio.
 *
 * --pipelined adds a third client, a second pool with pipeline=on (plus
 * the --pipe-settings), and runs the blocks aligned: every thread runs the
 * same client in a block (a barrier between blocks, the order of the three
 * rotating block by block and round by round), because pipelining shares
 * a connection between calls that run at the same moment.  The pools'
 * threads' CPU is split evenly between the two pools.
 *
 * --only raw|guard runs one client alone in every thread (the same calls
 * per thread, no comparison): for counting that client's syscalls, context
 * switches and lock waits per call under strace, perf or a preload, at 8
 * and 32 threads.  It prints its calls/s, its CPU per call and the
 * process's context switches per call.
 *
 * Not a meson test: it reports, asserts nothing.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <dirent.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "pgguard.h"

enum { Q_EXEC, Q_PARAMS, Q_PREPARED, Q__N };
static const char *const qname[Q__N] = {"exec", "params", "prepared"};
#define PK_SQL "SELECT val FROM pgg_items WHERE id = $1"
#define STMT "bench_pk"
#define PK_ROWS 100 /* pgg_items holds ids 1..100 (sql/fixture.sql) */

#define MAX_ROUNDS 64
#define MAX_LEVELS 8

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("bench-calls: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static int64_t clock_ns(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static pgg_pool *pool_new(const char *conninfo, const char *settings)
{
    pgg_config *cfg = pgg_config_new();
    pgg_error e;
    pgg_pool *p;

    if (!cfg)
        die("out of memory");
    if (pgg_config_set_servers(cfg, conninfo, &e) != PGG_OK ||
        pgg_config_parse(cfg, settings ? settings : "", &e) != PGG_OK)
        die("pgguard config: %s", e.message);
    p = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    if (!p)
        die("pgg_pool_new: %s", e.message);
    if (pgg_pool_prepare(p, STMT, PK_SQL, 1, NULL, &e) != PGG_OK)
        die("pgg_pool_prepare: %s", e.message);
    return p;
}

static PGconn *raw_new(const char *conninfo)
{
    PGconn *c = PQconnectdb(conninfo);
    PGresult *r;

    if (PQstatus(c) != CONNECTION_OK)
        die("connect: %s", PQerrorMessage(c));
    r = PQprepare(c, STMT, PK_SQL, 1, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        die("prepare: %s", PQerrorMessage(c));
    PQclear(r);
    return c;
}

/* One call; false unless it returned the one row.  Both clients' calls
 * are inlined into the loop callgrind counts, not left to gcc's taste:
 * it inlined call_raw and not call_guard, which charged call_guard's own
 * frame (~16 instructions a call) to pgguard. */
#define CALL_INLINE static inline __attribute__((always_inline))

CALL_INLINE bool call_raw(PGconn *c, int q, unsigned seq)
{
    char id[16];
    const char *vals[1] = {id};
    PGresult *r;
    bool ok;

    if (q == Q_EXEC) {
        r = PQexec(c, "SELECT 1");
    } else {
        snprintf(id, sizeof id, "%u", seq % PK_ROWS + 1);
        r = q == Q_PARAMS ? PQexecParams(c, PK_SQL, 1, NULL, vals, NULL, NULL, 0)
                          : PQexecPrepared(c, STMT, 1, vals, NULL, NULL, 0);
    }
    ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    PQclear(r);
    return ok;
}

CALL_INLINE bool call_guard(pgg_pool *p, int q, unsigned seq, pgg_error *e)
{
    char id[16];
    const char *vals[1] = {id};
    PGresult *r;
    bool ok;

    if (q == Q_EXEC) {
        r = pgg_exec(p, PGG_READ, "SELECT 1", NULL, NULL, e);
    } else {
        snprintf(id, sizeof id, "%u", seq % PK_ROWS + 1);
        r = q == Q_PARAMS
                ? pgg_exec_params(p, PGG_READ, PK_SQL, 1, NULL, vals, NULL,
                                  NULL, NULL, NULL, e)
                : pgg_exec_prepared(p, PGG_READ, STMT, 1, vals, NULL, NULL,
                                    NULL, NULL, e);
    }
    ok = r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    PQclear(r);
    return ok;
}

/* ---------------------------------------------------------------- count */

static inline __attribute__((always_inline)) long
calls_loop(PGconn *c, pgg_pool *p, int q, long n)
{
    long bad = 0;
    pgg_error e;

    for (long i = 0; i < n; i++)
        bad += c ? !call_raw(c, q, (unsigned)i)
                 : !call_guard(p, q, (unsigned)i, &e);
    return bad;
}

/* The window callgrind counts (--toggle-collect=measured_calls): out of
 * line, its name stable, and nothing else calls it. */
__attribute__((noinline)) long measured_calls(PGconn *c, pgg_pool *p, int q,
                                              long n);
__attribute__((noinline)) long measured_calls(PGconn *c, pgg_pool *p, int q,
                                              long n)
{
    return calls_loop(c, p, q, n);
}

static int count(const char *conninfo, const char *settings, const char *client,
                 const char *query, long n)
{
    int q = -1;
    bool raw = strcmp(client, "raw") == 0, alone = strcmp(client, "raw-alone") == 0;
    pgg_pool *p = NULL;
    PGconn *c = NULL;
    long bad;

    for (int i = 0; i < Q__N; i++)
        if (strcmp(query, qname[i]) == 0)
            q = i;
    if (q < 0 || (!raw && !alone && strcmp(client, "guard") != 0))
        die("count CLIENT QUERY N: CLIENT raw, raw-alone or guard; QUERY "
            "exec, params or prepared");
    if (!alone)
        p = pool_new(conninfo, settings);
    if (raw || alone)
        c = raw_new(conninfo);
    /* Warm: the connection open, the statement prepared, plans cached. */
    if (calls_loop(c, p, q, 200) != 0)
        die("warm-up calls failed");
    bad = measured_calls(c, p, q, n);
    PQfinish(c);
    pgg_pool_free(p);
    if (bad)
        die("%ld of %ld calls failed", bad, n);
    return 0;
}

/* ----------------------------------------------------------- interleave */

typedef struct acc {
    int64_t wall, cpu;
    long calls, bad;
} acc;

enum { C_RAW, C_GUARD, C_PIPE, C__N };

typedef struct shared {
    const char *conninfo;
    pgg_pool *pool, *pipe_pool;
    int q, nthreads, rounds, block, nclients;
    long round_calls;
    pthread_barrier_t bar, block_bar;
    acc (*per)[MAX_ROUNDS][C__N]; /* [thread][round][raw, guard, pipe] */
} shared;

typedef struct worker {
    shared *s;
    int id;
    _Atomic int tid; /* the thread's id, to tell its CPU in /proc */
    PGconn *conn;
    pthread_t t;
} worker;

static void run_block(worker *w, int client, unsigned *seq, acc *a)
{
    shared *s = w->s;
    int64_t t0 = clock_ns(CLOCK_MONOTONIC), c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    pgg_error e;

    for (int i = 0; i < s->block; i++, (*seq)++) {
        bool ok = client == C_RAW ? call_raw(w->conn, s->q, *seq)
                  : call_guard(client == C_GUARD ? s->pool : s->pipe_pool,
                               s->q, *seq, &e);
        if (!ok)
            a->bad++;
    }
    a->cpu += clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
    a->wall += clock_ns(CLOCK_MONOTONIC) - t0;
    a->calls += s->block;
}

/* --only raw|guard: every thread runs that client alone (no comparison;
 * for counting its syscalls, context switches and lock waits per call
 * under strace or perf).  -1: both, interleaved. */
static int only = -1;

static void *worker_main(void *arg)
{
    worker *w = arg;
    shared *s = w->s;
    unsigned seq = (unsigned)w->id * 37u;

    w->tid = (int)syscall(SYS_gettid);
    for (int r = -1; r < s->rounds; r++) {
        acc scratch[C__N] = {{0}};
        acc *a = r < 0 ? scratch : s->per[w->id][r];

        pthread_barrier_wait(&s->bar);
        for (long b = 0; b * s->block < s->round_calls; b++) {
            if (s->nclients == C__N) {
                /* Aligned: all threads in one client at a time. */
                for (int k = 0; k < C__N; k++) {
                    int client = (int)((b + r + 3 + k) % C__N);

                    pthread_barrier_wait(&s->block_bar);
                    run_block(w, client, &seq, &a[client]);
                }
                continue;
            }
            if (only >= 0) {
                /* --only: the same calls per thread, one client. */
                run_block(w, only, &seq, &a[only]);
                run_block(w, only, &seq, &a[only]);
                continue;
            }
            bool guard_first = ((b + w->id + r) & 1) != 0;

            run_block(w, guard_first, &seq, &a[guard_first]);
            run_block(w, !guard_first, &seq, &a[!guard_first]);
        }
        pthread_barrier_wait(&s->bar);
    }
    /* Alive until the main thread has read the last round's CPU. */
    pthread_barrier_wait(&s->bar);
    return NULL;
}

/* ------------------------------------------------------ server CPU */

#define MAX_PIDS 256

typedef struct srv_sample {
    int n;
    int pid[MAX_PIDS];
    int64_t ns[MAX_PIDS];
} srv_sample;

/* A backend's CPU time so far (ns), or -1 when it cannot be read. */
static int64_t pid_cpu_ns(int pid)
{
    char path[64];
    long long run = -1;
    FILE *f;

    snprintf(path, sizeof path, "/proc/%d/schedstat", pid);
    if (!(f = fopen(path, "r")))
        return -1;
    if (fscanf(f, "%lld", &run) != 1)
        run = -1;
    fclose(f);
    return run;
}

/* Every client backend but the monitor's own, with its CPU so far. */
static void srv_sample_take(PGconn *mon, srv_sample *out)
{
    PGresult *r = PQexec(mon, "SELECT pid FROM pg_stat_activity WHERE backend_type = "
                              "'client backend' AND pid <> pg_backend_pid()");

    out->n = 0;
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        for (int i = 0; i < PQntuples(r) && out->n < MAX_PIDS; i++) {
            int pid = atoi(PQgetvalue(r, i, 0));
            int64_t ns = pid_cpu_ns(pid);

            if (ns >= 0) {
                out->pid[out->n] = pid;
                out->ns[out->n++] = ns;
            }
        }
    PQclear(r);
}

static bool is_raw(int pid, const int *raw, int nraw)
{
    for (int i = 0; i < nraw; i++)
        if (raw[i] == pid)
            return true;
    return false;
}

/* CPU used between two samples by raw backends and by the others (a
 * backend that started in between counts from 0). */
static void srv_delta(const srv_sample *a, const srv_sample *b, const int *raw,
                      int nraw, int64_t *raw_ns, int64_t *other_ns)
{
    *raw_ns = *other_ns = 0;
    for (int j = 0; j < b->n; j++) {
        int64_t before = 0;

        for (int i = 0; i < a->n; i++)
            if (a->pid[i] == b->pid[j])
                before = a->ns[i];
        if (is_raw(b->pid[j], raw, nraw))
            *raw_ns += b->ns[j] - before;
        else
            *other_ns += b->ns[j] - before;
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void summary(double *v, int n, double *med, double *lo, double *hi)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    *med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    *lo = v[0];
    *hi = v[n - 1];
}

/* ------------------------------------------- the process's own threads */

#define MAX_TASKS 512

/* Every thread of this process: its CPU so far and how many times it was
 * put on a CPU (/proc/self/task/TID/schedstat: run ns, wait ns, slices). */
typedef struct task_sample {
    int n;
    int tid[MAX_TASKS];
    int64_t run_ns[MAX_TASKS], slices[MAX_TASKS];
} task_sample;

static void task_sample_take(task_sample *out)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;

    out->n = 0;
    if (!d)
        return;
    while ((e = readdir(d)) && out->n < MAX_TASKS) {
        char path[300];
        long long run, wait, slices;
        FILE *f;

        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/schedstat", e->d_name);
        if (!(f = fopen(path, "r")))
            continue;
        if (fscanf(f, "%lld %lld %lld", &run, &wait, &slices) == 3) {
            out->tid[out->n] = atoi(e->d_name);
            out->run_ns[out->n] = run;
            out->slices[out->n++] = slices;
        }
        fclose(f);
    }
    closedir(d);
}

/* tid's run ns and slices between two samples (0 when in neither). */
static void task_delta(const task_sample *a, const task_sample *b, int tid,
                       int64_t *run_ns, int64_t *slices)
{
    int64_t r0 = 0, s0 = 0;

    *run_ns = *slices = 0;
    for (int i = 0; i < a->n; i++)
        if (a->tid[i] == tid) {
            r0 = a->run_ns[i];
            s0 = a->slices[i];
        }
    for (int i = 0; i < b->n; i++)
        if (b->tid[i] == tid) {
            *run_ns = b->run_ns[i] - r0;
            *slices = b->slices[i] - s0;
        }
}

/* --detail: per round, and the CPU no client's blocks used, by thread. */
static bool detail;
/* --pin CPU: this process's threads and the server's client backends on
 * one CPU (-1: where the scheduler puts them). */
static int pin_cpu = -1;

/* Every thread of this process and every client backend the monitor sees
 * (the raw ones, the pool's) onto pin_cpu; again each round, for
 * connections opened since. */
static void pin_all(PGconn *mon)
{
    cpu_set_t set;
    srv_sample *all = calloc(1, sizeof *all);
    task_sample *tasks = calloc(1, sizeof *tasks);

    if (!all || !tasks)
        die("out of memory");
    CPU_ZERO(&set);
    CPU_SET(pin_cpu, &set);
    task_sample_take(tasks);
    for (int i = 0; i < tasks->n; i++)
        if (sched_setaffinity(tasks->tid[i], sizeof set, &set) != 0)
            die("--pin: thread %d: %s", tasks->tid[i], strerror(errno));
    srv_sample_take(mon, all);
    for (int i = 0; i < all->n; i++)
        if (sched_setaffinity(all->pid[i], sizeof set, &set) != 0)
            die("--pin: backend %d: %s (the server must run on this machine)",
                all->pid[i], strerror(errno));
    free(all);
    free(tasks);
}

/* --only: one client's calls/s, CPU per call (with the pool's threads for
 * pgguard) and the process's context switches per call. */
static void only_report(const shared *s, int q, int nthreads,
                        const int64_t *pool_cpu, const struct rusage *ru0,
                        const struct rusage *ru1, int64_t wall_total)
{
    int64_t cpu = 0, calls = 0, extra = 0;
    long bad = 0;

    for (int i = 0; i < nthreads; i++)
        for (int r = 0; r < s->rounds; r++) {
            cpu += s->per[i][r][only].cpu;
            calls += s->per[i][r][only].calls;
            bad += s->per[i][r][only].bad;
        }
    for (int r = 0; r < s->rounds; r++)
        extra += pool_cpu[r];
    printf("%-9s %3d  %s only: %8.0f calls/s  cpu us/call %.2f (pool threads "
           "%.3f)  voluntary switches/call %.3f  involuntary %.3f%s\n",
           qname[q], nthreads, only == C_RAW ? "raw" : "pgguard",
           (double)calls * 1e9 / (double)wall_total,
           (double)(cpu + extra) / (double)calls / 1e3,
           (double)extra / (double)calls / 1e3,
           (double)(ru1->ru_nvcsw - ru0->ru_nvcsw) / (double)calls,
           (double)(ru1->ru_nivcsw - ru0->ru_nivcsw) / (double)calls,
           bad ? "  ERRORS" : "");
}

static void interleave_level(const char *conninfo, const char *settings,
                             const char *pipe_settings, int q, int nthreads,
                             int rounds, long round_calls, int block)
{
    task_sample *tsm = calloc(2, sizeof *tsm);
    int64_t pool_cpu[MAX_ROUNDS] = {0};
    int other_tid[16], nother = 0;
    int64_t other_run[16] = {0}, other_slices[16] = {0}, main_run = 0,
            workers_run = 0, wall_total = 0, wall0 = 0;
    shared s = {.conninfo = conninfo, .q = q, .nthreads = nthreads,
                .rounds = rounds, .block = block, .round_calls = round_calls,
                .nclients = pipe_settings ? C__N : 2};
    double ptput[MAX_ROUNDS], pcpu[MAX_ROUNDS], pipe_us = 0, pipe_cpu = 0;
    double pmed = 0, plo = 0, phi = 0, pcmed = 0, pclo = 0, pchi = 0;
    worker *ws = calloc((size_t)nthreads, sizeof *ws);
    int64_t proc[MAX_ROUNDS + 1];
    int64_t srv_raw[MAX_ROUNDS], srv_guard[MAX_ROUNDS];
    srv_sample *smp = calloc(2, sizeof *smp);
    int *raw_pids = calloc((size_t)nthreads, sizeof *raw_pids);
    PGconn *mon = PQconnectdb(conninfo);
    bool srv = PQstatus(mon) == CONNECTION_OK && smp && raw_pids;
    double srv_ratio[MAX_ROUNDS], srv_raw_us = 0, srv_guard_us = 0, smed = 0, slo = 0, shi = 0;
    double tput[MAX_ROUNDS], cpu[MAX_ROUNDS];
    double raw_us = 0, guard_us = 0, raw_cpu = 0, guard_cpu = 0;
    long bad[C__N] = {0, 0, 0};
    double med, lo, hi, cmed, clo, chi;
    char ls[64] = "?";
    FILE *lf;
    struct rusage ru0, ru1;

    s.per = calloc((size_t)nthreads, sizeof *s.per);
    if (!ws || !s.per)
        die("out of memory");
    s.pool = pool_new(conninfo, settings);
    if (pipe_settings) {
        char ps[512];

        snprintf(ps, sizeof ps, "%s pipeline=on %s", settings, pipe_settings);
        s.pipe_pool = pool_new(conninfo, ps);
    }
    pthread_barrier_init(&s.bar, NULL, (unsigned)nthreads + 1);
    pthread_barrier_init(&s.block_bar, NULL, (unsigned)nthreads);
    for (int i = 0; i < nthreads; i++) {
        ws[i].s = &s;
        ws[i].id = i;
        ws[i].conn = raw_new(conninfo);
        if (raw_pids)
            raw_pids[i] = PQbackendPID(ws[i].conn);
        if (pthread_create(&ws[i].t, NULL, worker_main, &ws[i]) != 0)
            die("pthread_create");
    }
    /* The warm-up round, unmeasured. */
    pthread_barrier_wait(&s.bar);
    pthread_barrier_wait(&s.bar);
    getrusage(RUSAGE_SELF, &ru0);
    for (int r = 0; r < rounds; r++) {
        if (pin_cpu >= 0)
            pin_all(mon);
        if (srv)
            srv_sample_take(mon, &smp[0]);
        if (tsm)
            task_sample_take(&tsm[0]);
        pthread_barrier_wait(&s.bar);
        proc[r] = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        wall0 = clock_ns(CLOCK_MONOTONIC);
        pthread_barrier_wait(&s.bar);
        proc[r + 1] = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        wall_total += clock_ns(CLOCK_MONOTONIC) - wall0;
        proc[r] = proc[r + 1] - proc[r];
        if (tsm) {
            task_sample_take(&tsm[1]);
            for (int i = 0; i < tsm[1].n; i++) {
                int tid = tsm[1].tid[i], k;
                bool is_worker = false;
                int64_t run, sl;

                task_delta(&tsm[0], &tsm[1], tid, &run, &sl);
                for (k = 0; k < nthreads; k++)
                    is_worker |= ws[k].tid == tid;
                if (is_worker) {
                    workers_run += run;
                    continue;
                }
                if (tid == (int)getpid()) {
                    main_run += run;
                    continue;
                }
                for (k = 0; k < nother && other_tid[k] != tid; k++)
                    ;
                if (k == nother) {
                    if (nother == 16)
                        continue;
                    other_tid[nother++] = tid;
                }
                other_run[k] += run;
                other_slices[k] += sl;
                pool_cpu[r] += run;
            }
        }
        if (srv) {
            srv_sample_take(mon, &smp[1]);
            srv_delta(&smp[0], &smp[1], raw_pids, nthreads, &srv_raw[r], &srv_guard[r]);
            /* Nothing read (another machine's server): no server column. */
            if (srv_raw[r] <= 0)
                srv = false;
        }
    }
    getrusage(RUSAGE_SELF, &ru1);
    pthread_barrier_wait(&s.bar);
    PQfinish(mon);
    for (int i = 0; i < nthreads; i++) {
        pthread_join(ws[i].t, NULL);
        PQfinish(ws[i].conn);
    }
    if (only >= 0) {
        only_report(&s, q, nthreads, pool_cpu, &ru0, &ru1, wall_total);
        goto out;
    }
    for (int r = 0; r < rounds; r++) {
        acc t[C__N] = {{0}};
        double rw, gw, rc, gc, extra;

        for (int i = 0; i < nthreads; i++)
            for (int k = 0; k < s.nclients; k++) {
                t[k].wall += s.per[i][r][k].wall;
                t[k].cpu += s.per[i][r][k].cpu;
                t[k].calls += s.per[i][r][k].calls;
                bad[k] += s.per[i][r][k].bad;
            }
        /* Threads run side by side: a client's calls/s is its calls over
         * its wall time per thread. */
        rw = (double)t[0].wall / (double)t[0].calls;
        gw = (double)t[1].wall / (double)t[1].calls;
        /* The pool's own threads (neither this main thread nor a client
         * thread), from their schedstat; without /proc, the process CPU
         * that no client's blocks used (which also counts the benchmark's
         * own loop, clock readings and barriers). */
        if (tsm) {
            extra = (double)pool_cpu[r];
        } else {
            extra = (double)(proc[r] - t[0].cpu - t[1].cpu - t[2].cpu);
            if (extra < 0)
                extra = 0;
        }
        if (s.nclients == C__N)
            extra /= 2; /* two pools' background threads */
        rc = (double)t[0].cpu / (double)t[0].calls;
        gc = ((double)t[1].cpu + extra) / (double)t[1].calls;
        if (s.nclients == C__N) {
            double pw = (double)t[2].wall / (double)t[2].calls;
            double pc = ((double)t[2].cpu + extra) / (double)t[2].calls;

            ptput[r] = rw / pw;
            pcpu[r] = pc / rc;
            pipe_us += pw / 1e3 / rounds;
            pipe_cpu += pc / 1e3 / rounds;
            bad[1] += t[2].bad;
        }
        tput[r] = rw / gw;
        cpu[r] = gc / rc;
        if (detail)
            printf("  round %d: wall us/call raw %.1f pgg %.1f  cpu us/call "
                   "raw %.1f pgg %.1f (of which the pool's threads %.3f; "
                   "process CPU outside the blocks %.3f)  x %.3f\n",
                   r, rw / 1e3, gw / 1e3, rc / 1e3, gc / 1e3,
                   extra / (double)t[1].calls / 1e3,
                   (double)(proc[r] - t[0].cpu - t[1].cpu - t[2].cpu) /
                       (double)t[1].calls / 1e3,
                   cpu[r]);
        raw_us += rw / 1e3 / rounds;
        guard_us += gw / 1e3 / rounds;
        raw_cpu += rc / 1e3 / rounds;
        guard_cpu += gc / 1e3 / rounds;
        if (srv) {
            double sr = (double)srv_raw[r] / (double)t[0].calls;
            double sg = (double)srv_guard[r] / (double)t[1].calls;

            srv_ratio[r] = sg / sr;
            srv_raw_us += sr / 1e3 / rounds;
            srv_guard_us += sg / 1e3 / rounds;
        }
    }
    if (srv)
        summary(srv_ratio, rounds, &smed, &slo, &shi);
    summary(tput, rounds, &med, &lo, &hi);
    summary(cpu, rounds, &cmed, &clo, &chi);
    if (s.nclients == C__N) {
        summary(ptput, rounds, &pmed, &plo, &phi);
        summary(pcpu, rounds, &pcmed, &pclo, &pchi);
    }
    if ((lf = fopen("/proc/loadavg", "r"))) {
        if (!fgets(ls, sizeof ls, lf))
            snprintf(ls, sizeof ls, "?");
        ls[strcspn(ls, " ")] = '\0';
        fclose(lf);
    }
    printf("%-9s %3d  %8.0f %8.0f  %5.3f %4.2f-%4.2f  %6.1f %6.1f  %5.3f "
           "%4.2f-%4.2f  %5s",
           qname[q], nthreads, nthreads * 1e6 / raw_us,
           nthreads * 1e6 / guard_us, med, lo, hi, raw_cpu, guard_cpu, cmed,
           clo, chi, ls);
    if (srv)
        printf("  %6.1f %6.1f  %5.3f %4.2f-%4.2f", srv_raw_us, srv_guard_us, smed, slo, shi);
    printf("%s\n", bad[0] || bad[1] ? "  ERRORS" : "");
    if (tsm && detail) {
        long calls = round_calls / block * block * nthreads * rounds;
        int64_t blocks_cpu = 0;

        for (int i = 0; i < nthreads; i++)
            for (int r = 0; r < rounds; r++)
                for (int k = 0; k < s.nclients; k++)
                    blocks_cpu += s.per[i][r][k].cpu;
        printf("  not in a client's blocks, ns per pgguard call: main %.0f, "
               "client threads outside their blocks %.0f",
               (double)main_run / (double)calls,
               (double)(workers_run - blocks_cpu) / (double)calls);
        for (int k = 0; k < nother; k++)
            printf("; thread %d %.0f (%.0f on-CPU slices/s)", other_tid[k],
                   (double)other_run[k] / (double)calls,
                   (double)other_slices[k] * 1e9 / (double)wall_total);
        printf("\n");
    }
    if (s.nclients == C__N)
        printf("%-9s %3s  %8s %8.0f  %5.3f %4.2f-%4.2f  %6s %6.1f  %5.3f "
               "%4.2f-%4.2f  (pipelined)\n",
               "", "", "", nthreads * 1e6 / pipe_us, pmed, plo, phi, "",
               pipe_cpu, pcmed, pclo, pchi);
out:
    free(tsm);
    fflush(stdout);
    pthread_barrier_destroy(&s.bar);
    pthread_barrier_destroy(&s.block_bar);
    pgg_pool_free(s.pool);
    pgg_pool_free(s.pipe_pool);
    free(s.per);
    free(ws);
    free(smp);
    free(raw_pids);
}

static int parse_list(const char *s, int *out, int max)
{
    int n = 0;

    while (*s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v <= 0 || v > 1024)
            die("bad list: %s", s);
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *conninfo = getenv("PGG_BENCH_CONNINFO");
    const char *settings = "pool_max=32";
    const char *queries = "exec,params,prepared";
    const char *pipe_settings = NULL;
    int levels[MAX_LEVELS] = {1, 8, 32}, nlevels = 3;
    int rounds = 9, block = 20;
    long round_calls = 2000;
    int i = 1;

    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
        if (i + 1 >= argc)
            die("%s needs a value", argv[i]);
        if (strcmp(argv[i], "--conninfo") == 0)
            conninfo = argv[i + 1];
        else if (strcmp(argv[i], "--settings") == 0)
            settings = argv[i + 1];
        else if (strcmp(argv[i], "--threads") == 0)
            nlevels = parse_list(argv[i + 1], levels, MAX_LEVELS);
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--round-calls") == 0)
            round_calls = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--block") == 0)
            block = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--queries") == 0)
            queries = argv[i + 1];
        else if (strcmp(argv[i], "--pipelined") == 0)
            pipe_settings = argv[i + 1];
        else if (strcmp(argv[i], "--detail") == 0)
            detail = atoi(argv[i + 1]) != 0;
        else if (strcmp(argv[i], "--pin") == 0)
            pin_cpu = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--only") == 0) {
            if (strcmp(argv[i + 1], "raw") == 0)
                only = C_RAW;
            else if (strcmp(argv[i + 1], "guard") == 0)
                only = C_GUARD;
            else
                die("--only raw or guard");
        }
        else
            die("unknown option %s", argv[i]);
    }
    if (!conninfo)
        die("no server: --conninfo or PGG_BENCH_CONNINFO");
    if (rounds < 1 || rounds > MAX_ROUNDS || block < 1 || round_calls < block)
        die("bad --rounds, --block or --round-calls");
    if (i < argc && strcmp(argv[i], "count") == 0 && i + 3 < argc)
        return count(conninfo, settings, argv[i + 1], argv[i + 2],
                     atol(argv[i + 3]));
    if (i < argc && strcmp(argv[i], "interleave") == 0) {
        printf("in-process interleaved, blocks of %d calls, %ld calls per "
               "client per thread per round, %d rounds; settings '%s'%s\n",
               block, round_calls, rounds, settings,
               pin_cpu >= 0 ? "; every thread and backend on one CPU" : "");
        printf("%-9s %3s  %8s %8s  %5s %9s  %6s %6s  %5s %9s  %5s  %6s %6s  %5s %9s\n",
               "query", "thr", "raw/s", "pgg/s", "x raw", "range", "cpu", "cpu",
               "cpu x", "range", "load", "srv", "srv", "srv x", "range");
        printf("%-9s %3s  %8s %8s  %5s %9s  %6s %6s  %5s %9s  %5s  %6s %6s\n", "", "", "",
               "", "", "", "raw us", "pgg us", "", "", "", "raw us", "pgg us");
        for (int qi = 0; qi < Q__N; qi++) {
            if (!strstr(queries, qname[qi]))
                continue;
            for (int l = 0; l < nlevels; l++)
                interleave_level(conninfo, settings, pipe_settings, qi,
                                 levels[l], rounds, round_calls, block);
        }
        return 0;
    }
    fprintf(stderr,
            "usage: bench-calls [--conninfo CI] [--settings S] count "
            "raw|raw-alone|guard exec|params|prepared N\n"
            "       bench-calls [--conninfo CI] [--settings S] [--threads "
            "1,8,32] [--rounds R] [--round-calls N] [--block B] [--queries "
            "exec,params,prepared] [--pipelined 'extra settings'] [--detail 1] [--pin CPU] "
            "[--only raw|guard] interleave\n");
    return 2;
}
