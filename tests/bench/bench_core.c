/*
 * bench-core: the cost of the resilience core on the path of every call.
 *
 *   bench-core [millions of ops per thread per case, default 10; fractions
 *              such as 0.1 are fine] [runs, default 3]
 *
 * Prints ns/op for breaker allow+record, rejection while open and bulkhead
 * enter+leave, single-threaded and with 2 threads on one shared object, in
 * wall time and in the threads' own CPU time (which a loaded machine
 * disturbs less: wall time counts other processes' turns),
 * (the best of `runs` runs: noise from other processes only ever adds time)
 * and checks that no case allocates: malloc and friends are counted by
 * wrappers in this executable (glibc), or under AddressSanitizer and
 * ThreadSanitizer, which own malloc, by the sanitizer's allocation hook
 * (wrappers there crash TSan's start-up: its dlsym calls malloc before TSan
 * is ready).  Not a
 * test: numbers depend on the machine; build with --buildtype=release to
 * quote them.  The tsan suite runs it briefly (`bench-core 0.1 1`) as a race
 * test of the breaker and bulkhead under two threads.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "breaker.h"
#include "bulkhead.h"
#include "clock.h"

/* ------------------------------------------------------ allocation count */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define BENCH_SANITIZER_HOOK 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define BENCH_SANITIZER_HOOK 1
#endif
#endif
#if !defined(__GLIBC__) && !defined(BENCH_SANITIZER_HOOK)
#define BENCH_NO_MALLOC_COUNT 1
#endif

static atomic_ulong allocations;

#if defined(BENCH_SANITIZER_HOOK)
/* The sanitizers' common allocator interface (gcc ships no header for it):
 * the hook runs on every allocation, realloc and calloc included. */
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));

static void malloc_hook(const volatile void *p, size_t n)
{
    (void)p;
    (void)n;
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
}

/* The interface refuses a NULL hook. */
static void free_hook(const volatile void *p)
{
    (void)p;
}
#elif !defined(BENCH_NO_MALLOC_COUNT)
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);
extern void __libc_free(void *p);

static void counted(void)
{
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
}

void *malloc(size_t n)
{
    counted();
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    counted();
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    counted();
    return __libc_realloc(p, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    counted();
    return __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    void *p;

    counted();
    p = __libc_memalign(align, n);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}

void free(void *p)
{
    __libc_free(p);
}
#endif

/* ------------------------------------------------------------- the cases */

typedef enum kind {
    ALLOW_RECORD,       /* closed breaker, count window, one success */
    ALLOW_RECORD_TIME,  /* the same with a time window */
    ALLOW_RECORD_CLOCK, /* the same plus one clock read, as the pool does */
    REJECT_OPEN,        /* allow() on an open breaker */
    BULKHEAD            /* enter + leave with room to spare */
} kind;

static const char *const kind_name[] = {
    "breaker allow+record (count window)",
    "breaker allow+record (time window)",
    "breaker allow+record + clock read",
    "breaker rejection while open",
    "bulkhead enter+leave (uncontended)",
};

typedef struct bench {
    kind k;
    long ops; /* per thread */
    pgg_breaker breaker;
    pgg_bulkhead bulkhead;
    pthread_barrier_t ready, start, stop;
} bench;

/* Instants are made up (one microsecond apart) unless the case reads the clock. */
#define BASE_NS (INT64_C(1000) * PGG_NS_PER_SEC)

static void run_ops(bench *b)
{
    pgg_ticket t;
    int64_t now = BASE_NS;
    long i, refused = 0;

    switch (b->k) {
    case ALLOW_RECORD:
    case ALLOW_RECORD_TIME:
        for (i = 0; i < b->ops; i++) {
            now += PGG_NS_PER_US;
            if (pgg__breaker_allow(&b->breaker, now, &t))
                pgg__breaker_record(&b->breaker, t, PGG_OUTCOME_SUCCESS, 1000, now);
            else
                refused++;
        }
        break;
    case ALLOW_RECORD_CLOCK:
        for (i = 0; i < b->ops; i++) {
            now = pgg__now_ns();
            if (pgg__breaker_allow(&b->breaker, now, &t))
                pgg__breaker_record(&b->breaker, t, PGG_OUTCOME_SUCCESS, 1000, now);
            else
                refused++;
        }
        break;
    case REJECT_OPEN:
        for (i = 0; i < b->ops; i++) {
            now += PGG_NS_PER_US;
            if (pgg__breaker_allow(&b->breaker, now, &t))
                refused--; /* an admission here is the surprise */
        }
        break;
    case BULKHEAD:
        for (i = 0; i < b->ops; i++) {
            if (pgg__bulkhead_enter(&b->bulkhead, now, now) == PGG_OK)
                pgg__bulkhead_leave(&b->bulkhead);
            else
                refused++;
        }
        break;
    }
    if (refused != 0) {
        fprintf(stderr, "bench-core: %s: %ld unexpected answers\n", kind_name[b->k],
                refused < 0 ? -refused : refused);
        exit(1);
    }
}

typedef struct worker_arg {
    bench *b;
    pthread_t th;
    int64_t t0, t1; /* timed by the worker: the main thread may be descheduled */
    int64_t c0, c1; /* the worker's own CPU time: on a loaded machine, wall
                       time counts the turns other processes took */
} worker_arg;

static int64_t thread_cpu_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * PGG_NS_PER_SEC + ts.tv_nsec;
}

static void *worker(void *arg)
{
    worker_arg *w = arg;

    pthread_barrier_wait(&w->b->ready);
    pthread_barrier_wait(&w->b->start);
    w->t0 = pgg__now_ns();
    w->c0 = thread_cpu_ns();
    run_ops(w->b);
    w->c1 = thread_cpu_ns();
    w->t1 = pgg__now_ns();
    pthread_barrier_wait(&w->b->stop);
    return NULL;
}

static void setup(bench *b, kind k, long ops)
{
    pgg_breaker_config c;
    pgg_error err;

    memset(b, 0, sizeof *b);
    b->k = k;
    b->ops = ops;
    pgg__breaker_config_defaults(&c);
    c.open_jitter = 0;
    if (k == ALLOW_RECORD_TIME) {
        c.window_type = PGG_WINDOW_TIME;
        c.window_size = 60;
        c.window_bucket_ms = 1000;
    }
    if (k == REJECT_OPEN)
        c.open_ms = c.open_max_ms = INT64_C(86400000);
    if (pgg__breaker_init(&b->breaker, &c, BASE_NS, &err) != PGG_OK ||
        pgg__bulkhead_init(&b->bulkhead, 1000, NULL, &err) != PGG_OK) {
        fprintf(stderr, "bench-core: %s\n", err.message);
        exit(1);
    }
    if (k == REJECT_OPEN)
        pgg__breaker_transition(&b->breaker, PGG_BREAKER_OPEN, BASE_NS);
}

static void teardown(bench *b)
{
    pgg__breaker_destroy(&b->breaker);
    pgg__bulkhead_destroy(&b->bulkhead);
}

typedef struct result {
    double ns_per_op;   /* a thread's loop time / its ops, averaged over threads */
    double cpu_per_op;  /* the same in the threads' CPU time */
    double mops;        /* all threads together */
    unsigned long allocs;
} result;

static result measure(kind k, int threads, long ops)
{
    bench b;
    worker_arg w[8];
    result r;
    int64_t first = INT64_MAX, last = 0, busy = 0, cpu = 0;
    unsigned long a0, a1;
    int i;

    setup(&b, k, ops);
    pthread_barrier_init(&b.ready, NULL, (unsigned)threads + 1);
    pthread_barrier_init(&b.start, NULL, (unsigned)threads + 1);
    pthread_barrier_init(&b.stop, NULL, (unsigned)threads + 1);
    for (i = 0; i < threads; i++) {
        w[i].b = &b;
        pthread_create(&w[i].th, NULL, worker, &w[i]);
    }
    /* Thread creation and start-up may allocate (in the new thread too,
     * under the sanitizers): only the loops are counted. */
    pthread_barrier_wait(&b.ready);
    a0 = atomic_load(&allocations);
    pthread_barrier_wait(&b.start);
    pthread_barrier_wait(&b.stop);
    a1 = atomic_load(&allocations);
    for (i = 0; i < threads; i++) {
        pthread_join(w[i].th, NULL);
        busy += w[i].t1 - w[i].t0;
        cpu += w[i].c1 - w[i].c0;
        first = w[i].t0 < first ? w[i].t0 : first;
        last = w[i].t1 > last ? w[i].t1 : last;
    }
    pthread_barrier_destroy(&b.ready);
    pthread_barrier_destroy(&b.start);
    pthread_barrier_destroy(&b.stop);
    teardown(&b);
    r.ns_per_op = (double)busy / threads / (double)ops;
    r.cpu_per_op = (double)cpu / threads / (double)ops;
    r.mops = (double)ops * threads / ((double)(last - first) / 1e3);
    r.allocs = a1 - a0;
    return r;
}

/* The best of a few runs: the machine's noise only ever adds time. */
static result best_of(kind k, int threads, long ops, int runs)
{
    result best = {0, 0, 0, 0}, r;
    unsigned long allocs = 0;
    int i;

    for (i = 0; i < runs; i++) {
        r = measure(k, threads, ops);
        allocs += r.allocs;
        if (i == 0 || r.ns_per_op < best.ns_per_op)
            best = r;
        if (r.cpu_per_op < best.cpu_per_op)
            best.cpu_per_op = r.cpu_per_op;
    }
    best.allocs = allocs; /* every run must be clean, not just the fastest */
    return best;
}

int main(int argc, char **argv)
{
    double millions = argc > 1 ? atof(argv[1]) : 10;
    int runs = argc > 2 ? atoi(argv[2]) : 3;
    long ops;
    int k, bad = 0;
    bool counting = false;
    result one, two;

    if (!(millions > 0))
        millions = 1;
    if (runs <= 0)
        runs = 1;
    ops = (long)(millions * 1e6);
    if (ops < 1000)
        ops = 1000;
    printf("bench-core: %g M ops per thread per case, best of %d runs, %ld CPUs online\n",
           (double)ops / 1e6, runs, sysconf(_SC_NPROCESSORS_ONLN));
#ifdef BENCH_NO_MALLOC_COUNT
    printf("(allocation counting unavailable in this build)\n");
#else
#ifdef BENCH_SANITIZER_HOOK
    if (!__sanitizer_install_malloc_and_free_hooks(malloc_hook, free_hook))
        printf("(allocation counting unavailable: the sanitizer refused the hook)\n");
#endif
    {
        /* Prove the counter counts before trusting its zeros. */
        unsigned long a0 = atomic_load(&allocations);
        void *volatile p = malloc(16);

        free(p);
        counting = atomic_load(&allocations) != a0;
        if (!counting)
            printf("(allocation counting unavailable: malloc is replaced, valgrind?)\n");
    }
#endif
    printf("%-38s %12s %18s %12s %10s %12s %12s\n", "case", "1 thread", "2 threads",
           "2 threads", "allocs", "1 thread", "2 threads");
    printf("%-38s %12s %18s %12s %10s %12s %12s\n", "", "ns/op", "ns/op per thread", "Mops/s",
           "in loops", "cpu ns/op", "cpu ns/op");
    measure(ALLOW_RECORD, 1, ops / 10); /* warm up caches and frequency */
    for (k = ALLOW_RECORD; k <= BULKHEAD; k++) {
        one = best_of((kind)k, 1, ops, runs);
        two = best_of((kind)k, 2, ops, runs);
        printf("%-38s %12.1f %18.1f %12.1f %10lu %12.1f %12.1f\n", kind_name[k],
               one.ns_per_op, two.ns_per_op, two.mops, one.allocs + two.allocs,
               one.cpu_per_op, two.cpu_per_op);
        if (one.allocs || two.allocs)
            bad = 1;
    }
    if (!counting)
        return 0;
    printf(bad ? "FAIL: some case allocated memory\n"
               : "zero allocations in every case (malloc/calloc/realloc counted)\n");
    return bad;
}
