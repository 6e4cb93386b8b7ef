/*
 * Step profiler of the loop's calls into pgguard (bench-faults-steps only).
 *
 * What a long callback did: every function listed in async_steps.def
 * (libpq's, libc's allocator and descriptors, pgguard's steps across
 * source files) is wrapped at link time (-Wl,--wrap, against the static
 * library) by a trampoline that, inside a timed callback of a loop thread,
 * times it with the thread's CPU clock and the wall clock.  A callback
 * over the threshold (PGG_BENCH_STEPS_US, default 500 us of thread CPU, or
 * PGG_BENCH_STEPS_WALL_US, default 10 ms of wall) keeps its tree of steps
 * (a step that took 1 ms of wall or more with the address of its caller), the thread's page faults and context switches
 * across it, and the CPU time of a fixed spin run right after it (the
 * VM's speed then: the machine's vCPUs run up to ~6x slower for seconds).
 *
 * It costs two clock reads per step: a diagnostic build, never one whose
 * timings or verdicts are reported.  x86-64 only.
 */
#ifndef PGG_BENCH_ASYNC_STEPS_H
#define PGG_BENCH_ASYNC_STEPS_H

#include <stdint.h>
#include <stdio.h>

/* A timed callback of the calling thread begins (its steps are recorded). */
void steps_begin(void);
/* It ended, having taken cpu_ns of the thread's CPU and wall_ns. */
void steps_end(const char *kind, int64_t cpu_ns, int64_t wall_ns);
/* Print what was kept since the last reset (times from t0_ms, the
 * CLOCK_MONOTONIC ms of the fault), then forget it. */
void steps_report(FILE *out, double t0_ms);
void steps_reset(void);

#endif
