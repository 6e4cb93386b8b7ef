/*
 * Per-callback time of the loop thread inside pgguard, for bench-async and
 * bench-faults --async.
 *
 * The benches are linked with -Wl,--wrap for pgg_async_handle_read,
 * pgg_async_handle_write and pgg_async_handle_timer: the libevent
 * adapter's calls into pgguard (compiled into the bench) land in the
 * __wrap_ functions below, which time each one with the thread's CPU clock
 * (CLOCK_THREAD_CPUTIME_ID) and the wall clock (CLOCK_MONOTONIC).  A
 * callback's CPU time is what pgguard (and the application's completion
 * callback it runs) costs the loop; its wall time also holds whatever the
 * thread waited or was preempted inside it.  A callback that waited on a
 * server would show a wall time far above its CPU time, every time; a
 * loaded VM's preemption shows the same, now and then: the wall maximum
 * alone cannot tell them apart (the loop guard of the integration tests
 * can: test_async_guard.h).
 *
 * Timing costs two clock_gettime per clock per callback (the thread CPU
 * clock is a system call): on only when asked (async_cpu_on), and never in
 * the rounds whose throughput is reported.
 *
 * Neither clock tells pgguard's work from the VM's: this machine's vCPUs
 * stop for 0.3-40 ms now and then (the host runs something else; the
 * guest's steal time does not show it), and the thread that was running
 * is charged that time as its own CPU; its CPU clock also jumps at times
 * (a callback of 20 us wall read 5 ms of CPU).  tests/bench/faults --steps
 * lists what a long callback ran (async_steps.h); a system-wide
 * `perf record -e cpu-clock` beside it shows the vCPU's stops as gaps in
 * its samples (docs/MEASUREMENTS.md, issue 13).
 */
#ifndef PGG_BENCH_ASYNC_CPU_H
#define PGG_BENCH_ASYNC_CPU_H

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "pgguard_async.h"
#if PGG_BENCH_STEPS
#include "async_steps.h"
#define ASYNC_CPU_STEPS_BEGIN() steps_begin()
#define ASYNC_CPU_STEPS_END(kind, cpu, wall) steps_end(kind, cpu, wall)
#else
#define ASYNC_CPU_STEPS_BEGIN() ((void)0)
#define ASYNC_CPU_STEPS_END(kind, cpu, wall) ((void)0)
#endif

/* 1 us buckets up to 20 ms; longer ones in the last. */
#define ASYNC_CPU_BUCKETS 20001

typedef struct async_cpu_hist {
    atomic_uint_fast64_t n[ASYNC_CPU_BUCKETS];
    atomic_uint_fast64_t count;
    atomic_int_fast64_t max_ns;
} async_cpu_hist;

static async_cpu_hist async_cpu_thread, async_cpu_wall;
/* The application's calls that start a call (pgg_async_exec_params), which
 * a server makes on its loop too: timed apart (async_cpu_api_text). */
static async_cpu_hist async_api_thread, async_api_wall;
/* libpq's calls that read or write the socket in the reference client
 * (bench-faults: PQsendQueryParams, PQconsumeInput), timed alike: what the
 * same sends and reads cost a thread without pgguard, at the same moments. */
static async_cpu_hist async_ref_thread, async_ref_wall;
static atomic_bool async_cpu_enabled;

/*
 * Where a timed call's wall time went besides running (issue 13: "the loop
 * is never blocked"): the thread's wait for a CPU (the scheduler's
 * run_delay, /proc/thread-self/schedstat, exact at every return to the CPU)
 * and its voluntary context switches (getrusage(RUSAGE_THREAD)): a switch
 * the thread asked for, i.e. it slept inside the call: a lock held by
 * another thread, a blocking system call.  Preemption is involuntary and
 * shows in run_delay; a VM stop is charged to the thread CPU clock
 * (above), so a call's wall time less its CPU less its wait for a CPU is
 * the time it slept.  Read outside the CPU and wall readings, so that the
 * figures above do not carry these four system calls.
 */
typedef struct async_sched {
    int64_t run_delay_ns;
    long nvcsw;
} async_sched;

typedef struct async_sleep_stats {
    atomic_uint_fast64_t slept;   /* calls with a voluntary switch inside */
    atomic_uint_fast64_t over_1ms; /* calls asleep for more than 1 ms */
    atomic_int_fast64_t max_asleep_ns;
    atomic_uint_fast64_t waited;  /* calls that waited for a CPU inside */
    atomic_int_fast64_t max_run_delay_ns;
} async_sleep_stats;

static async_sleep_stats async_cpu_sleep, async_api_sleep, async_ref_sleep;

static pthread_key_t async_sched_key;
static pthread_once_t async_sched_once = PTHREAD_ONCE_INIT;
static _Thread_local int async_sched_fd = -1;
static _Thread_local bool async_sched_opened;

static void async_sched_close(void *fd)
{
    close((int)(intptr_t)fd - 1);
}

static void async_sched_init(void)
{
    pthread_key_create(&async_sched_key, async_sched_close);
}

static void async_sched_read(async_sched *s)
{
    char buf[128];
    struct rusage ru;

    if (!async_sched_opened) {
        async_sched_opened = true;
        async_sched_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
        pthread_once(&async_sched_once, async_sched_init);
        if (async_sched_fd >= 0)
            pthread_setspecific(async_sched_key, (void *)(intptr_t)(async_sched_fd + 1));
    }
    s->run_delay_ns = 0;
    if (async_sched_fd >= 0) {
        ssize_t n = pread(async_sched_fd, buf, sizeof buf - 1, 0);
        unsigned long long cpu, delay;

        if (n > 0) {
            buf[n] = '\0';
            if (sscanf(buf, "%llu %llu", &cpu, &delay) == 2)
                s->run_delay_ns = (int64_t)delay;
        }
    }
    s->nvcsw = getrusage(RUSAGE_THREAD, &ru) == 0 ? ru.ru_nvcsw : 0;
}

static void async_max_store(atomic_int_fast64_t *m, int64_t v)
{
    int64_t cur = atomic_load_explicit(m, memory_order_relaxed);

    while (v > cur && !atomic_compare_exchange_weak(m, &cur, v))
        ;
}

static void async_sleep_add(async_sleep_stats *st, const async_sched *a, const async_sched *b,
                            int64_t cpu_ns, int64_t wall_ns)
{
    int64_t delay = b->run_delay_ns - a->run_delay_ns;
    int64_t asleep = wall_ns - cpu_ns - delay;

    if (delay > 0) {
        atomic_fetch_add_explicit(&st->waited, 1, memory_order_relaxed);
        async_max_store(&st->max_run_delay_ns, delay);
    }
    if (b->nvcsw > a->nvcsw) {
        atomic_fetch_add_explicit(&st->slept, 1, memory_order_relaxed);
        if (asleep > 1000000)
            atomic_fetch_add_explicit(&st->over_1ms, 1, memory_order_relaxed);
        async_max_store(&st->max_asleep_ns, asleep > 0 ? asleep : 0);
    }
}

static void async_sleep_reset(async_sleep_stats *st)
{
    atomic_store(&st->slept, 0);
    atomic_store(&st->over_1ms, 0);
    atomic_store(&st->max_asleep_ns, 0);
    atomic_store(&st->waited, 0);
    atomic_store(&st->max_run_delay_ns, 0);
}

/* "slept inside N (asleep over 1 ms N, longest X ms); waited for a CPU
 * inside N (longest Y ms)" */
static inline void async_sleep_text(async_sleep_stats *st, char *buf, size_t len)
{
    snprintf(buf, len,
             "slept inside %llu (asleep over 1 ms %llu, longest %.3f ms); waited for a CPU "
             "inside %llu (longest %.3f ms)",
             (unsigned long long)atomic_load(&st->slept),
             (unsigned long long)atomic_load(&st->over_1ms),
             atomic_load(&st->max_asleep_ns) / 1e6,
             (unsigned long long)atomic_load(&st->waited),
             atomic_load(&st->max_run_delay_ns) / 1e6);
}

static void async_cpu_on(bool on)
{
    atomic_store(&async_cpu_enabled, on);
}

static void async_cpu_reset(void)
{
    async_cpu_hist *h[6] = {&async_cpu_thread, &async_cpu_wall, &async_api_thread,
                            &async_api_wall,   &async_ref_thread, &async_ref_wall};

    for (int k = 0; k < 6; k++) {
        for (int i = 0; i < ASYNC_CPU_BUCKETS; i++)
            atomic_store_explicit(&h[k]->n[i], 0, memory_order_relaxed);
        atomic_store(&h[k]->count, 0);
        atomic_store(&h[k]->max_ns, 0);
    }
    async_sleep_reset(&async_cpu_sleep);
    async_sleep_reset(&async_api_sleep);
    async_sleep_reset(&async_ref_sleep);
}

static void async_cpu_add(async_cpu_hist *h, int64_t ns)
{
    int64_t b = ns / 1000;

    if (b >= ASYNC_CPU_BUCKETS)
        b = ASYNC_CPU_BUCKETS - 1;
    atomic_fetch_add_explicit(&h->n[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    async_max_store(&h->max_ns, ns);
}

/* The q-quantile (0..1), in us: the upper edge of its bucket. */
static double async_cpu_quantile(async_cpu_hist *h, double q)
{
    uint64_t total = atomic_load(&h->count), seen = 0;
    uint64_t want = (uint64_t)(q * (double)total);

    if (total == 0)
        return 0;
    if (want >= total)
        want = total - 1;
    for (int i = 0; i < ASYNC_CPU_BUCKETS; i++) {
        seen += atomic_load_explicit(&h->n[i], memory_order_relaxed);
        if (seen > want)
            return i + 1.0;
    }
    return ASYNC_CPU_BUCKETS;
}

static int64_t async_cpu_ns(clockid_t clk)
{
    struct timespec ts;

    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* "callbacks N; CPU p50/p99/max ...; wall p50/p99/max ..." */
static void async_cpu_text(char *buf, size_t len)
{
    snprintf(buf, len,
             "%llu callbacks; thread CPU per callback p50 %.0f us, p99 %.0f us, "
             "max %.3f ms; wall p50 %.0f us, p99 %.0f us, max %.3f ms",
             (unsigned long long)atomic_load(&async_cpu_thread.count),
             async_cpu_quantile(&async_cpu_thread, 0.5),
             async_cpu_quantile(&async_cpu_thread, 0.99),
             atomic_load(&async_cpu_thread.max_ns) / 1e6,
             async_cpu_quantile(&async_cpu_wall, 0.5), async_cpu_quantile(&async_cpu_wall, 0.99),
             atomic_load(&async_cpu_wall.max_ns) / 1e6);
}

/* "calls N; CPU p50/p99/max ...; wall p50/p99/max ..." of cpu and wall. */
static inline void async_cpu_calls_text(async_cpu_hist *cpu, async_cpu_hist *wall, char *buf,
                                        size_t len)
{
    snprintf(buf, len,
             "%llu calls; thread CPU per call p50 %.0f us, p99 %.0f us, max %.3f ms; "
             "wall p50 %.0f us, p99 %.0f us, max %.3f ms",
             (unsigned long long)atomic_load(&cpu->count), async_cpu_quantile(cpu, 0.5),
             async_cpu_quantile(cpu, 0.99), atomic_load(&cpu->max_ns) / 1e6,
             async_cpu_quantile(wall, 0.5), async_cpu_quantile(wall, 0.99),
             atomic_load(&wall->max_ns) / 1e6);
}

/* call, timed into the histograms cpu and wall, and its sleeps and waits
 * for a CPU into st (kind: the step profiler's name for it,
 * async_steps.h). */
#define ASYNC_CPU_TIMED_INTO(cpu, wall, st, kind, call)                        \
    do {                                                                        \
        int64_t c0, w0, c1, w1;                                                 \
        async_sched s0, s1;                                                     \
        if (!atomic_load_explicit(&async_cpu_enabled, memory_order_relaxed)) { \
            call;                                                               \
            break;                                                              \
        }                                                                       \
        async_sched_read(&s0);                                                  \
        c0 = async_cpu_ns(CLOCK_THREAD_CPUTIME_ID);                             \
        w0 = async_cpu_ns(CLOCK_MONOTONIC);                                     \
        ASYNC_CPU_STEPS_BEGIN();                                                \
        call;                                                                   \
        w1 = async_cpu_ns(CLOCK_MONOTONIC);                                     \
        c1 = async_cpu_ns(CLOCK_THREAD_CPUTIME_ID);                             \
        async_sched_read(&s1);                                                  \
        async_cpu_add(wall, w1 - w0);                                           \
        async_cpu_add(cpu, c1 - c0);                                            \
        async_sleep_add(st, &s0, &s1, c1 - c0, w1 - w0);                        \
        ASYNC_CPU_STEPS_END(kind, c1 - c0, w1 - w0);                            \
    } while (0)

#define ASYNC_CPU_TIMED(kind, call)                                             \
    ASYNC_CPU_TIMED_INTO(&async_cpu_thread, &async_cpu_wall, &async_cpu_sleep, kind, call)
#define ASYNC_CPU_API_TIMED(kind, call)                                         \
    ASYNC_CPU_TIMED_INTO(&async_api_thread, &async_api_wall, &async_api_sleep, kind, call)
#define ASYNC_CPU_REF_TIMED(kind, call)                                         \
    ASYNC_CPU_TIMED_INTO(&async_ref_thread, &async_ref_wall, &async_ref_sleep, kind, call)

void __real_pgg_async_handle_read(pgg_async_sock *s);
void __real_pgg_async_handle_write(pgg_async_sock *s);
void __real_pgg_async_handle_timer(pgg_async *ac);
void __wrap_pgg_async_handle_read(pgg_async_sock *s);
void __wrap_pgg_async_handle_write(pgg_async_sock *s);
void __wrap_pgg_async_handle_timer(pgg_async *ac);

void __wrap_pgg_async_handle_read(pgg_async_sock *s)
{
    ASYNC_CPU_TIMED("read", __real_pgg_async_handle_read(s));
}

void __wrap_pgg_async_handle_write(pgg_async_sock *s)
{
    ASYNC_CPU_TIMED("write", __real_pgg_async_handle_write(s));
}

void __wrap_pgg_async_handle_timer(pgg_async *ac)
{
    ASYNC_CPU_TIMED("timer", __real_pgg_async_handle_timer(ac));
}

#endif
