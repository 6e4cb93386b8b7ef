/*
 * Internal: monotonic time, and a clock object that tests replace.
 *
 * Time is int64_t nanoseconds of CLOCK_MONOTONIC everywhere, so an NTP step
 * can neither open nor close a breaker; deadlines are absolute instants on
 * that clock.  Hot paths take `now` as a parameter: the pool reads the clock
 * once per call and every layer below reuses that reading.
 *
 * Modules that only compare instants (window, breaker) never read a clock
 * themselves.  Modules that block (bulkhead) hold a `const pgg_clock *` and
 * block through pgg__clock_wait(), which is what lets a fake clock drive
 * their waits in tests: see pgg_fake_clock below.
 */
#ifndef PGG_CLOCK_H
#define PGG_CLOCK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#define PGG_NS_PER_US INT64_C(1000)
#define PGG_NS_PER_MS INT64_C(1000000)
#define PGG_NS_PER_SEC INT64_C(1000000000)
/* A deadline that never comes, and the result of "no timer pending". */
#define PGG_TIME_NEVER INT64_MAX

/* CLOCK_MONOTONIC in nanoseconds.  Thread-safe, never fails.  Inline: a
 * call reads it on its path (clock.c holds the external definition). */
inline int64_t pgg__now_ns(void)
{
    struct timespec ts;

    /* CLOCK_MONOTONIC cannot fail on Linux with a valid pointer. */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * PGG_NS_PER_SEC + ts.tv_nsec;
}

/* a + b, saturating at PGG_TIME_NEVER / INT64_MIN instead of overflowing. */
int64_t pgg__time_add(int64_t a, int64_t b);

/* A millisecond setting as nanoseconds, saturating. */
int64_t pgg__ms_to_ns(int64_t ms);

typedef struct pgg_clock pgg_clock;
typedef struct pgg_clock_watch pgg_clock_watch;

/*
 * Something that must hear about jumps of a clock's time.  Real time moves
 * by itself and timed waits expire on their own, so the system clock never
 * calls a watch.  A fake clock calls every watch after each set/advance,
 * with no lock of the caller's held: a blocking module registers one watch
 * per object (not per waiter) whose fn takes the module's own mutex and
 * wakes its waiters, which then re-read the clock.  Registered and
 * unregistered outside the module's mutex, so the clock's internal lock is
 * always taken before the module's, never after.
 */
struct pgg_clock_watch {
    void (*fn)(void *ud);
    void *ud;
    pgg_clock_watch *next_; /* owned by the clock */
    pgg_clock_watch *prev_;
};

struct pgg_clock {
    int64_t (*now)(const pgg_clock *c);
    /*
     * Block on cv (mu held, as for pthread_cond_wait) until signalled or
     * until the clock reaches deadline.  Returns 0 or ETIMEDOUT; either way
     * the caller re-checks its condition and the clock.  Spurious wakeups
     * are allowed.  cv must come from pgg__cond_init().
     */
    int (*wait)(const pgg_clock *c, pthread_cond_t *cv, pthread_mutex_t *mu,
                int64_t deadline);
    void (*watch)(const pgg_clock *c, pgg_clock_watch *w);
    void (*unwatch)(const pgg_clock *c, pgg_clock_watch *w);
};

/* The process-wide CLOCK_MONOTONIC clock; a static object, never freed. */
const pgg_clock *pgg__clock_system(void);

/* NULL means the system clock, so callers can pass an optional clock on. */
static inline const pgg_clock *pgg__clock_or_system(const pgg_clock *c)
{
    return c ? c : pgg__clock_system();
}

static inline int64_t pgg__clock_now(const pgg_clock *c)
{
    return c->now(c);
}

static inline int pgg__clock_wait(const pgg_clock *c, pthread_cond_t *cv,
                                  pthread_mutex_t *mu, int64_t deadline)
{
    return c->wait(c, cv, mu, deadline);
}

static inline void pgg__clock_watch(const pgg_clock *c, pgg_clock_watch *w)
{
    c->watch(c, w);
}

static inline void pgg__clock_unwatch(const pgg_clock *c, pgg_clock_watch *w)
{
    c->unwatch(c, w);
}

/*
 * Initialise a condition variable whose timed waits measure
 * CLOCK_MONOTONIC (the default, CLOCK_REALTIME, would let a wall-clock step
 * stretch or cut a wait).  Returns 0 or an errno value.
 */
int pgg__cond_init(pthread_cond_t *cv);

/* Absolute monotonic nanoseconds as the timespec that timed waits take. */
struct timespec pgg__ns_to_timespec(int64_t ns);

/*
 * A clock that stands still until a test moves it.  Reading it is one
 * atomic load, so it can be shared by any number of threads.  Embed it,
 * pass pgg__fake_clock_base() wherever a `const pgg_clock *` goes, and
 * move time with set/advance; every watch (every bulkhead built on it) is
 * then woken so its waiters re-check their deadlines.  Waits on a fake
 * clock have no real-time bound: a test that never advances past a
 * deadline blocks until something signals the waiter.
 */
typedef struct pgg_fake_clock {
    pgg_clock base;
    _Atomic int64_t now_;
    pthread_mutex_t mu_; /* guards the watch list */
    pgg_clock_watch *watches_;
} pgg_fake_clock;

void pgg__fake_clock_init(pgg_fake_clock *fc, int64_t start_ns);
/* Every watch must have been removed.  Accepts NULL. */
void pgg__fake_clock_destroy(pgg_fake_clock *fc);
/* Move to t; a fake clock never goes backwards, so an earlier t is ignored. */
void pgg__fake_clock_set(pgg_fake_clock *fc, int64_t t_ns);
/* Move forward by delta_ns (>= 0) and return the new time. */
int64_t pgg__fake_clock_advance(pgg_fake_clock *fc, int64_t delta_ns);

static inline const pgg_clock *pgg__fake_clock_base(pgg_fake_clock *fc)
{
    return &fc->base;
}

#endif
