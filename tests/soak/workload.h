/*
 * A mixed load on one pool, shared by the soak (tests/soak) and the pool's
 * ThreadSanitizer driver (tests/tsan): threads of reads, writes and
 * transactions on leases, each call timed against its own deadline, every
 * acknowledged write remembered by its unique id, and every refusal by an
 * open breaker (PGG_EOPEN) remembered as a time window.
 *
 * Tables (wl_setup makes them on the primary): wl_r (id int primary key,
 * v text) holding rows 1..WL_ROWS with v = 'r' || id, read by the readers;
 * wl_w (id bigint primary key, how text), one row per write.
 *
 * Thread safety: wl_start, wl_stop and the getters are called from one
 * thread (the driver's); the load runs on its own threads between them.
 */
#ifndef PGG_TESTS_WORKLOAD_H
#define PGG_TESTS_WORKLOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "harness.h"
#include "pgguard.h"

#define WL_ROWS 100
/* A call may end this long after its deadline (the bound). */
#define WL_OVERSHOOT_MS 20.0

typedef struct wl wl;

typedef struct wl_options {
    int threads;
    int timeout_ms;  /* each call's deadline; the lease's acquisition too */
    uint64_t seed;
    /* Pause after a failed call (ms), as a client backing off would; 0: none. */
    int backoff_ms;
} wl_options;

typedef struct wl_totals {
    uint64_t reads, writes, leases;      /* that succeeded */
    uint64_t failed;                     /* failures a host fault explains */
    uint64_t by_code[17];                /* failures by -code (PGG_E*) */
    uint64_t unexpected;                 /* failures no fault explains */
    uint64_t wrong_answers;              /* a read returned other rows */
    uint64_t overshoots;                 /* calls past deadline + WL_OVERSHOOT_MS */
    double worst_overshoot_ms;           /* the largest (elapsed - deadline) seen */
    uint64_t acked;                      /* acknowledged writes */
    /* The machine's own stalls, for reading overshoots: a thread sleeping
     * 1 ms at a time woke up this late at worst, and this many times more
     * than WL_OVERSHOOT_MS late. */
    double stall_worst_ms;
    uint64_t stalls;
    /* Calls past the bound that were due while the canary was stalled too
     * (it slept through their deadline and woke at most WL_OVERSHOOT_MS
     * before they ended): the machine, not the pool, is the likely cause.
     * Reported only; such calls still fail the soak. */
    uint64_t overshoots_in_stalls;
} wl_totals;

/* A time window, in ms since wl_start (pgh_now_ms based). */
typedef struct wl_window {
    double from, to;
} wl_window;

/* Create wl_r and wl_w on the primary (dropping old ones).  0 or -1. */
int wl_setup(pgh_node *primary);

/* Start the threads.  NULL on failure (printed). */
wl *wl_start(pgg_pool *pool, const wl_options *o);
/* Stop the threads and wait for them. */
void wl_stop(wl *w);
/* Milliseconds since wl_start, on the clock of the windows. */
double wl_elapsed_ms(const wl *w);
/* After wl_stop. */
void wl_totals_get(const wl *w, wl_totals *out);
/*
 * The refusal windows: per thread, a run of PGG_EOPEN answers with no
 * success between them spans [first, last]; runs of all threads are merged
 * where they overlap.  *n gets the count; the array belongs to w.
 */
const wl_window *wl_refusals(wl *w, int *n);
/*
 * Count the acknowledged writes missing on `primary` (read directly, not
 * through the pool).  -1 when the table cannot be read (printed).  Prints
 * up to ten missing ids.
 */
long wl_missing_writes(const wl *w, pgh_node *primary);
/*
 * Pool accounting balances once the load has stopped: nothing busy, the
 * bulkhead empty, and every open connection idle (waiting up to 3 s for the
 * health thread's own work to settle).  Returns the number of problems,
 * each printed.
 */
int wl_pool_unbalanced(pgg_pool *pool);
/* Print the totals on one line each, prefixed by `who`. */
void wl_print(const wl *w, const char *who);
void wl_free(wl *w);

#endif
