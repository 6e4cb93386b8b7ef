/*
 * Step profiler of the loop's calls into pgguard: see async_steps.h.
 *
 * Each wrapped function F gets a trampoline __wrap_F that saves the
 * argument registers, calls steps_enter, restores them and jumps to
 * __real_F with the caller's stack untouched (any signature, variadic or
 * with stack arguments).  Inside a timed callback steps_enter swaps F's
 * return address for steps_after, which times the step's end and returns
 * to the saved address; elsewhere (the health thread, libpq's reference
 * client in the same process) F runs as if unwrapped, but for the
 * trampoline's few instructions.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "async_steps.h"

#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#if !defined(__x86_64__)
#error "the step profiler's trampolines are x86-64 assembly"
#endif

#define TRAMPOLINE(n)                                                     \
    __asm__(".section .rodata\n"                                          \
            "steps_name_" #n ": .asciz \"" #n "\"\n"                      \
            ".text\n"                                                     \
            ".globl __wrap_" #n "\n"                                      \
            ".type __wrap_" #n ", @function\n"                            \
            "__wrap_" #n ":\n"                                            \
            "  push %rdi\n  push %rsi\n  push %rdx\n  push %rcx\n"        \
            "  push %r8\n  push %r9\n  push %rax\n"                       \
            "  sub $128, %rsp\n"                                          \
            "  movdqu %xmm0, 0(%rsp)\n  movdqu %xmm1, 16(%rsp)\n"         \
            "  movdqu %xmm2, 32(%rsp)\n  movdqu %xmm3, 48(%rsp)\n"        \
            "  movdqu %xmm4, 64(%rsp)\n  movdqu %xmm5, 80(%rsp)\n"        \
            "  movdqu %xmm6, 96(%rsp)\n  movdqu %xmm7, 112(%rsp)\n"       \
            "  lea steps_name_" #n "(%rip), %rdi\n"                       \
            "  lea 184(%rsp), %rsi\n"                                     \
            "  call steps_enter@PLT\n"                                    \
            "  movdqu 0(%rsp), %xmm0\n  movdqu 16(%rsp), %xmm1\n"         \
            "  movdqu 32(%rsp), %xmm2\n  movdqu 48(%rsp), %xmm3\n"        \
            "  movdqu 64(%rsp), %xmm4\n  movdqu 80(%rsp), %xmm5\n"        \
            "  movdqu 96(%rsp), %xmm6\n  movdqu 112(%rsp), %xmm7\n"       \
            "  add $128, %rsp\n"                                          \
            "  pop %rax\n  pop %r9\n  pop %r8\n  pop %rcx\n"              \
            "  pop %rdx\n  pop %rsi\n  pop %rdi\n"                        \
            "  jmp __real_" #n "@PLT\n"                                   \
            ".size __wrap_" #n ", .-__wrap_" #n "\n");

/* Where a timed step returns: rax/rdx and xmm0/xmm1 (its return value)
 * kept across steps_leave, which gives the caller's return address. */
__asm__(".text\n"
        ".globl steps_after\n"
        ".type steps_after, @function\n"
        "steps_after:\n"
        "  push %rax\n  push %rdx\n"
        "  sub $32, %rsp\n"
        "  movdqu %xmm0, 0(%rsp)\n  movdqu %xmm1, 16(%rsp)\n"
        "  call steps_leave@PLT\n"
        "  mov %rax, %r11\n"
        "  movdqu 0(%rsp), %xmm0\n  movdqu 16(%rsp), %xmm1\n"
        "  add $32, %rsp\n"
        "  pop %rdx\n  pop %rax\n"
        "  jmp *%r11\n"
        ".size steps_after, .-steps_after\n");

/* An object, as far as C is told: its address replaces return addresses. */
extern char steps_after[];
void steps_enter(const char *name, void **ret);
void *steps_leave(void);

#define STEP(n) TRAMPOLINE(n)
#include "async_steps.def"
#undef STEP

#define FRAMES 64
#define LOG 256
#define SLOW_MAX 256
#define NAMES 256

typedef struct step_ev {
    const char *name;
    void *caller; /* the return address: who called it */
    int depth;
    int64_t cpu, wall;
} step_ev;

typedef struct frame {
    void *ret;
    int log;
    const char *name;
    int64_t c0, w0;
} frame;

typedef struct tstate {
    bool on;
    int sp;
    frame stk[FRAMES];
    int nlog;
    int lost;
    step_ev log[LOG];
    struct rusage ru0;
    int cpu0;
    int64_t at;
} tstate;

static __thread tstate T;

typedef struct slow {
    const char *kind;
    double at_ms;
    int64_t cpu, wall, spin;
    long minflt, majflt, nvcsw, nivcsw;
    int cpu0, cpu1, tid, nlog, lost;
    step_ev log[LOG];
} slow;

static pthread_mutex_t slow_mu = PTHREAD_MUTEX_INITIALIZER;
static slow slows[SLOW_MAX];
static int nslow, slow_dropped;
static atomic_long ncallbacks;

/* Every wrapped function's totals inside timed callbacks. */
typedef struct agg {
    _Atomic(const char *) name;
    atomic_long n, cpu, max_cpu, max_wall;
} agg;
static agg aggs[NAMES];

/* The spin's CPU time, every ~20 ms on some loop thread: the VM's speed. */
#define SPINS_MAX 4096
static pthread_mutex_t spin_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t spins[SPINS_MAX];
static int nspins;
static atomic_long spin_next_at;

static int64_t clk(clockid_t c)
{
    struct timespec ts;

    clock_gettime(c, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A bound in microseconds from the environment (def when unset), as ns,
 * read once into *cache. */
static int64_t env_us_ns(const char *var, long def, atomic_long *cache)
{
    long t = atomic_load(cache);

    if (t < 0) {
        const char *e = getenv(var);

        t = (e && *e ? atol(e) : def) * 1000L;
        atomic_store(cache, t);
    }
    return t;
}

/* A callback over PGG_BENCH_STEPS_US (default 500 us) of CPU is kept; also
 * one over PGG_BENCH_STEPS_WALL_US (default 10 ms) of wall time, whatever
 * its CPU (a lock it waited for, or a preemption). */
static atomic_long cpu_thr = -1, wall_thr = -1;

static int64_t threshold_ns(void)
{
    return env_us_ns("PGG_BENCH_STEPS_US", 500, &cpu_thr);
}

static int64_t wall_threshold_ns(void)
{
    return env_us_ns("PGG_BENCH_STEPS_WALL_US", 10000, &wall_thr);
}

/* A fixed piece of user-mode work: ~20 us at the machine's full speed. */
static int64_t spin(void)
{
    volatile uint64_t x = 1;
    int64_t c0 = clk(CLOCK_THREAD_CPUTIME_ID);

    for (int i = 0; i < 20000; i++)
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    return clk(CLOCK_THREAD_CPUTIME_ID) - c0;
}

static void agg_add(const char *name, int64_t cpu, int64_t wall)
{
    size_t i = ((uintptr_t)name >> 3) % NAMES;

    for (int probe = 0; probe < NAMES; probe++, i = (i + 1) % NAMES) {
        const char *cur = atomic_load(&aggs[i].name);

        if (!cur) {
            const char *none = NULL;

            if (!atomic_compare_exchange_strong(&aggs[i].name, &none, name) &&
                none != name)
                continue;
        } else if (cur != name) {
            continue;
        }
        atomic_fetch_add(&aggs[i].n, 1);
        atomic_fetch_add(&aggs[i].cpu, cpu);
        long m = atomic_load(&aggs[i].max_cpu);
        while (cpu > m && !atomic_compare_exchange_weak(&aggs[i].max_cpu, &m, cpu))
            ;
        m = atomic_load(&aggs[i].max_wall);
        while (wall > m && !atomic_compare_exchange_weak(&aggs[i].max_wall, &m, wall))
            ;
        return;
    }
}

void steps_enter(const char *name, void **ret)
{
    tstate *t = &T;
    frame *f;

    if (!t->on || t->sp >= FRAMES)
        return;
    f = &t->stk[t->sp++];
    f->ret = *ret;
    *ret = steps_after;
    f->name = name;
    if (t->nlog < LOG) {
        f->log = t->nlog++;
        t->log[f->log] = (step_ev){.name = name, .caller = f->ret, .depth = t->sp - 1};
    } else {
        f->log = -1;
        t->lost++;
    }
    f->w0 = clk(CLOCK_MONOTONIC);
    f->c0 = clk(CLOCK_THREAD_CPUTIME_ID);
}

void *steps_leave(void)
{
    int64_t c = clk(CLOCK_THREAD_CPUTIME_ID), w = clk(CLOCK_MONOTONIC);
    tstate *t = &T;
    frame *f = &t->stk[--t->sp];

    if (f->log >= 0) {
        t->log[f->log].cpu = c - f->c0;
        t->log[f->log].wall = w - f->w0;
    }
    agg_add(f->name, c - f->c0, w - f->w0);
    return f->ret;
}

void steps_begin(void)
{
    tstate *t = &T;

    t->nlog = 0;
    t->lost = 0;
    t->sp = 0;
    t->at = clk(CLOCK_MONOTONIC);
    t->cpu0 = sched_getcpu();
    getrusage(RUSAGE_THREAD, &t->ru0);
    t->on = true;
}

void steps_end(const char *kind, int64_t cpu_ns, int64_t wall_ns)
{
    tstate *t = &T;
    struct rusage ru;
    int64_t now;

    t->on = false;
    atomic_fetch_add(&ncallbacks, 1);
    now = clk(CLOCK_MONOTONIC);
    if (now >= atomic_load(&spin_next_at)) {
        atomic_store(&spin_next_at, now + 20000000);
        int64_t s = spin();
        pthread_mutex_lock(&spin_mu);
        if (nspins < SPINS_MAX)
            spins[nspins++] = s;
        pthread_mutex_unlock(&spin_mu);
    }
    if (cpu_ns < threshold_ns() && wall_ns < wall_threshold_ns())
        return;
    getrusage(RUSAGE_THREAD, &ru);
    int cpu1 = sched_getcpu();
    int64_t s = spin();

    pthread_mutex_lock(&slow_mu);
    if (nslow < SLOW_MAX) {
        slow *o = &slows[nslow++];

        o->kind = kind;
        o->at_ms = t->at / 1e6;
        o->cpu = cpu_ns;
        o->wall = wall_ns;
        o->spin = s;
        o->minflt = ru.ru_minflt - t->ru0.ru_minflt;
        o->majflt = ru.ru_majflt - t->ru0.ru_majflt;
        o->nvcsw = ru.ru_nvcsw - t->ru0.ru_nvcsw;
        o->nivcsw = ru.ru_nivcsw - t->ru0.ru_nivcsw;
        o->cpu0 = t->cpu0;
        o->cpu1 = cpu1;
        o->tid = gettid();
        o->nlog = t->nlog;
        o->lost = t->lost;
        memcpy(o->log, t->log, sizeof(step_ev) * (size_t)t->nlog);
    } else {
        slow_dropped++;
    }
    pthread_mutex_unlock(&slow_mu);
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

static int cmp_agg(const void *a, const void *b)
{
    const agg *x = a, *y = b;
    long mx = atomic_load(&x->max_cpu), my = atomic_load(&y->max_cpu);

    return (mx < my) - (mx > my);
}

void steps_reset(void)
{
    pthread_mutex_lock(&slow_mu);
    nslow = 0;
    slow_dropped = 0;
    pthread_mutex_unlock(&slow_mu);
    pthread_mutex_lock(&spin_mu);
    nspins = 0;
    pthread_mutex_unlock(&spin_mu);
    for (int i = 0; i < NAMES; i++) {
        atomic_store(&aggs[i].name, NULL);
        atomic_store(&aggs[i].n, 0);
        atomic_store(&aggs[i].cpu, 0);
        atomic_store(&aggs[i].max_cpu, 0);
        atomic_store(&aggs[i].max_wall, 0);
    }
    atomic_store(&ncallbacks, 0);
}

void steps_report(FILE *out, double t0_ms)
{
    static agg sorted[NAMES];
    int64_t sp[SPINS_MAX];
    int ns;

    pthread_mutex_lock(&spin_mu);
    ns = nspins;
    memcpy(sp, spins, sizeof(int64_t) * (size_t)ns);
    pthread_mutex_unlock(&spin_mu);
    qsort(sp, (size_t)ns, sizeof *sp, cmp64);
    if (ns)
        fprintf(out,
                "   steps: %ld callbacks timed; the spin's CPU (%d samples, ~every 20 ms): "
                "min %.0f us, p10 %.0f, p50 %.0f, p90 %.0f, max %.0f us\n",
                atomic_load(&ncallbacks), ns, sp[0] / 1e3, sp[ns / 10] / 1e3,
                sp[ns / 2] / 1e3, sp[ns * 9 / 10] / 1e3, sp[ns - 1] / 1e3);
    memcpy(sorted, aggs, sizeof sorted);
    qsort(sorted, NAMES, sizeof *sorted, cmp_agg);
    fprintf(out, "   steps by their longest CPU (count, mean us, max CPU us, max wall us):");
    for (int i = 0, shown = 0; i < NAMES && shown < 14; i++) {
        const char *n = atomic_load(&sorted[i].name);
        long c = atomic_load(&sorted[i].n);

        if (!n || !c)
            continue;
        fprintf(out, "%s %s %ld %.1f %.0f %.0f", shown % 4 ? ";" : "\n     ", n, c,
                atomic_load(&sorted[i].cpu) / 1e3 / (double)c,
                atomic_load(&sorted[i].max_cpu) / 1e3, atomic_load(&sorted[i].max_wall) / 1e3);
        shown++;
    }
    fprintf(out, "\n");
    pthread_mutex_lock(&slow_mu);
    fprintf(out, "   steps: %d callbacks over %.0f us of CPU or %.0f ms of wall%s\n",
            nslow + slow_dropped, threshold_ns() / 1e3, wall_threshold_ns() / 1e6,
            nslow ? ":" : "");
    for (int i = 0; i < nslow; i++) {
        slow *o = &slows[i];
        int64_t top = 0;

        for (int j = 0; j < o->nlog; j++)
            if (o->log[j].depth == 0)
                top += o->log[j].cpu;
        fprintf(out,
                "   - %s at %+.1f ms (mono %.6f s, tid %d, cpu %d->%d): CPU %.3f ms, wall %.3f ms; "
                "spin after %.0f us; minflt %ld majflt %ld vcsw %ld ivcsw %ld; "
                "%d steps%s, their CPU %.3f ms, between them %.3f ms\n",
                o->kind, o->at_ms - t0_ms, o->at_ms / 1e3, o->tid, o->cpu0, o->cpu1, o->cpu / 1e6,
                o->wall / 1e6, o->spin / 1e3, o->minflt, o->majflt, o->nvcsw, o->nivcsw,
                o->nlog, o->lost ? " (some lost)" : "", top / 1e6, (o->cpu - top) / 1e6);
        /* The steps of >= 20 us (their callers kept for the tree's sake),
         * others summed. */
        int small = 0;
        int64_t small_cpu = 0;
        for (int j = 0; j < o->nlog; j++) {
            const step_ev *e = &o->log[j];
            bool big = e->cpu >= 20000 || e->wall >= 200000;

            if (!big) {
                for (int k = j + 1; k < o->nlog && o->log[k].depth > e->depth; k++)
                    if (o->log[k].cpu >= 20000 || o->log[k].wall >= 200000) {
                        big = true;
                        break;
                    }
            }
            if (!big) {
                if (e->depth == 0) {
                    small++;
                    small_cpu += e->cpu;
                }
                continue;
            }
            fprintf(out, "       %*s%s cpu %.0f us wall %.0f us", 2 * e->depth, "", e->name,
                    e->cpu / 1e3, e->wall / 1e3);
            if (e->wall >= 1000000) {
                /* Who waited that long: `addr2line -f -e BINARY OFFSET`. */
                Dl_info di;

                if (dladdr(e->caller, &di) && di.dli_fbase)
                    fprintf(out, " (called from %s+0x%lx)", di.dli_fname,
                            (unsigned long)((char *)e->caller - (char *)di.dli_fbase));
            }
            fprintf(out, "\n");
        }
        if (small)
            fprintf(out, "       + %d small top-level steps, %.0f us\n", small, small_cpu / 1e3);
    }
    pthread_mutex_unlock(&slow_mu);
}
