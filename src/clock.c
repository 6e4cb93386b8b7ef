#include "clock.h"

#include <errno.h>
#include <stddef.h>
#include <time.h>

/* The external definition of the inline in clock.h (C11 6.7.4). */
extern int64_t pgg__now_ns(void);

int64_t pgg__time_add(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b)
        return INT64_MAX;
    if (b < 0 && a < INT64_MIN - b)
        return INT64_MIN;
    return a + b;
}

int64_t pgg__ms_to_ns(int64_t ms)
{
    if (ms > INT64_MAX / PGG_NS_PER_MS)
        return INT64_MAX;
    if (ms < INT64_MIN / PGG_NS_PER_MS)
        return INT64_MIN;
    return ms * PGG_NS_PER_MS;
}

struct timespec pgg__ns_to_timespec(int64_t ns)
{
    struct timespec ts;

    if (ns < 0)
        ns = 0;
    ts.tv_sec = (time_t)(ns / PGG_NS_PER_SEC);
    ts.tv_nsec = (long)(ns % PGG_NS_PER_SEC);
    return ts;
}

int pgg__cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    int rc;

    rc = pthread_condattr_init(&attr);
    if (rc != 0)
        return rc;
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
    return rc;
}

/* ---------------------------------------------------------- system clock */

static int64_t system_now(const pgg_clock *c)
{
    (void)c;
    return pgg__now_ns();
}

static int system_wait(const pgg_clock *c, pthread_cond_t *cv,
                       pthread_mutex_t *mu, int64_t deadline)
{
    struct timespec ts;

    (void)c;
    if (deadline == PGG_TIME_NEVER)
        return pthread_cond_wait(cv, mu);
    ts = pgg__ns_to_timespec(deadline);
    return pthread_cond_timedwait(cv, mu, &ts);
}

/* Real time needs nobody to announce it. */
static void system_watch(const pgg_clock *c, pgg_clock_watch *w)
{
    (void)c;
    (void)w;
}

static const pgg_clock system_clock = {
    .now = system_now,
    .wait = system_wait,
    .watch = system_watch,
    .unwatch = system_watch,
};

const pgg_clock *pgg__clock_system(void)
{
    return &system_clock;
}

/* ------------------------------------------------------------ fake clock */

/* The module holds a const pointer; the fake clock itself is mutable. */
static pgg_fake_clock *fake_of(const pgg_clock *c)
{
    return (pgg_fake_clock *)((char *)(uintptr_t)c - offsetof(pgg_fake_clock, base));
}

static int64_t fake_now(const pgg_clock *c)
{
    return atomic_load_explicit(&fake_of(c)->now_, memory_order_acquire);
}

static int fake_wait(const pgg_clock *c, pthread_cond_t *cv,
                     pthread_mutex_t *mu, int64_t deadline)
{
    if (fake_now(c) >= deadline)
        return ETIMEDOUT;
    /*
     * No real-time bound: only a signal from the waiter's module, or a
     * set/advance through the module's watch, ends this wait.
     */
    return pthread_cond_wait(cv, mu);
}

static void fake_watch(const pgg_clock *c, pgg_clock_watch *w)
{
    pgg_fake_clock *fc = fake_of(c);

    pthread_mutex_lock(&fc->mu_);
    w->prev_ = NULL;
    w->next_ = fc->watches_;
    if (fc->watches_)
        fc->watches_->prev_ = w;
    fc->watches_ = w;
    pthread_mutex_unlock(&fc->mu_);
}

static void fake_unwatch(const pgg_clock *c, pgg_clock_watch *w)
{
    pgg_fake_clock *fc = fake_of(c);

    pthread_mutex_lock(&fc->mu_);
    if (w->prev_)
        w->prev_->next_ = w->next_;
    else if (fc->watches_ == w)
        fc->watches_ = w->next_;
    if (w->next_)
        w->next_->prev_ = w->prev_;
    w->next_ = w->prev_ = NULL;
    pthread_mutex_unlock(&fc->mu_);
}

void pgg__fake_clock_init(pgg_fake_clock *fc, int64_t start_ns)
{
    fc->base.now = fake_now;
    fc->base.wait = fake_wait;
    fc->base.watch = fake_watch;
    fc->base.unwatch = fake_unwatch;
    atomic_init(&fc->now_, start_ns);
    pthread_mutex_init(&fc->mu_, NULL);
    fc->watches_ = NULL;
}

void pgg__fake_clock_destroy(pgg_fake_clock *fc)
{
    if (!fc)
        return;
    pthread_mutex_destroy(&fc->mu_);
}

static void fake_notify(pgg_fake_clock *fc)
{
    pgg_clock_watch *w;

    /*
     * The watch fn takes its module's mutex while we hold ours: the order
     * is always clock lock, then module lock (see pgg_clock_watch).
     */
    pthread_mutex_lock(&fc->mu_);
    for (w = fc->watches_; w; w = w->next_)
        w->fn(w->ud);
    pthread_mutex_unlock(&fc->mu_);
}

void pgg__fake_clock_set(pgg_fake_clock *fc, int64_t t_ns)
{
    int64_t cur = atomic_load_explicit(&fc->now_, memory_order_relaxed);

    while (cur < t_ns &&
           !atomic_compare_exchange_weak_explicit(&fc->now_, &cur, t_ns,
                                                  memory_order_acq_rel,
                                                  memory_order_relaxed))
        ;
    fake_notify(fc);
}

int64_t pgg__fake_clock_advance(pgg_fake_clock *fc, int64_t delta_ns)
{
    int64_t t;

    if (delta_ns < 0)
        delta_ns = 0;
    t = atomic_fetch_add_explicit(&fc->now_, delta_ns, memory_order_acq_rel) + delta_ns;
    fake_notify(fc);
    return t;
}
