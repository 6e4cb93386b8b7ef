#include "unit.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>

#include "clock.h"

UTest(clock, system_is_monotonic_and_matches_clock_gettime)
{
    struct timespec ts;
    int64_t a, b, ref;

    a = pgg__now_ns();
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ref = (int64_t)ts.tv_sec * PGG_NS_PER_SEC + ts.tv_nsec;
    b = pgg__clock_now(pgg__clock_system());
    cr_assert_leq(a, ref);
    cr_assert_leq(ref, b);
    cr_assert_lt(b - a, SEC(1));
    cr_assert_eq(pgg__clock_or_system(NULL), pgg__clock_system());
}

UTest(clock, saturating_arithmetic)
{
    cr_assert_eq(pgg__time_add(5, 7), 12);
    cr_assert_eq(pgg__time_add(INT64_MAX - 1, 2), INT64_MAX);
    cr_assert_eq(pgg__time_add(INT64_MIN + 1, -2), INT64_MIN);
    cr_assert_eq(pgg__time_add(PGG_TIME_NEVER, 1), PGG_TIME_NEVER);
    cr_assert_eq(pgg__ms_to_ns(3), 3000000);
    cr_assert_eq(pgg__ms_to_ns(INT64_MAX / 1000), INT64_MAX);
    cr_assert_eq(pgg__ms_to_ns(INT64_MIN / 1000), INT64_MIN);
}

UTest(clock, timespec_conversion)
{
    struct timespec ts = pgg__ns_to_timespec(SEC(3) + 17);

    cr_assert_eq(ts.tv_sec, 3);
    cr_assert_eq(ts.tv_nsec, 17);
    ts = pgg__ns_to_timespec(-5);
    cr_assert_eq(ts.tv_sec, 0);
    cr_assert_eq(ts.tv_nsec, 0);
}

UTest(clock, fake_moves_only_forward)
{
    pgg_fake_clock fc;
    const pgg_clock *c;

    pgg__fake_clock_init(&fc, T0);
    c = pgg__fake_clock_base(&fc);
    cr_assert_eq(pgg__clock_now(c), T0);
    cr_assert_eq(pgg__fake_clock_advance(&fc, MS(5)), T0 + MS(5));
    cr_assert_eq(pgg__clock_now(c), T0 + MS(5));
    pgg__fake_clock_set(&fc, T0); /* backwards: ignored */
    cr_assert_eq(pgg__clock_now(c), T0 + MS(5));
    pgg__fake_clock_set(&fc, T0 + SEC(1));
    cr_assert_eq(pgg__clock_now(c), T0 + SEC(1));
    cr_assert_eq(pgg__fake_clock_advance(&fc, -3), T0 + SEC(1));
    pgg__fake_clock_destroy(&fc);
    pgg__fake_clock_destroy(NULL);
}

static void count_calls(void *ud)
{
    (*(int *)ud)++;
}

UTest(clock, fake_calls_watches_until_unwatched)
{
    pgg_fake_clock fc;
    int a = 0, b = 0;
    pgg_clock_watch wa = {.fn = count_calls, .ud = &a};
    pgg_clock_watch wb = {.fn = count_calls, .ud = &b};
    const pgg_clock *c;

    pgg__fake_clock_init(&fc, T0);
    c = pgg__fake_clock_base(&fc);
    pgg__clock_watch(c, &wa);
    pgg__clock_watch(c, &wb);
    pgg__fake_clock_advance(&fc, 1);
    pgg__fake_clock_set(&fc, T0 + 10);
    cr_assert_eq(a, 2);
    cr_assert_eq(b, 2);
    pgg__clock_unwatch(c, &wa);
    pgg__fake_clock_advance(&fc, 1);
    cr_assert_eq(a, 2);
    cr_assert_eq(b, 3);
    pgg__clock_unwatch(c, &wb);
    pgg__fake_clock_advance(&fc, 1);
    cr_assert_eq(b, 3);
    pgg__fake_clock_destroy(&fc);
}

UTest(clock, system_watch_is_inert)
{
    int n = 0;
    pgg_clock_watch w = {.fn = count_calls, .ud = &n};

    pgg__clock_watch(pgg__clock_system(), &w);
    pgg__clock_unwatch(pgg__clock_system(), &w);
    cr_assert_eq(n, 0);
}

/* A minimal blocking module, as the bulkhead is, to drive a fake wait. */
struct sleeper {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const pgg_clock *clock;
    pgg_clock_watch watch;
    int64_t deadline;
    atomic_int waiting;
    atomic_int done;
};

static void sleeper_wake(void *ud)
{
    struct sleeper *s = ud;

    pthread_mutex_lock(&s->mu);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void *sleeper_run(void *arg)
{
    struct sleeper *s = arg;

    pthread_mutex_lock(&s->mu);
    atomic_store(&s->waiting, 1);
    while (pgg__clock_now(s->clock) < s->deadline)
        pgg__clock_wait(s->clock, &s->cv, &s->mu, s->deadline);
    atomic_store(&s->done, 1);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

UTest(clock, fake_advance_ends_a_wait_exactly_at_its_deadline)
{
    pgg_fake_clock fc;
    struct sleeper s;
    pthread_t th;

    pgg__fake_clock_init(&fc, T0);
    pthread_mutex_init(&s.mu, NULL);
    cr_assert_eq(pgg__cond_init(&s.cv), 0);
    s.clock = pgg__fake_clock_base(&fc);
    s.watch.fn = sleeper_wake;
    s.watch.ud = &s;
    s.deadline = T0 + MS(10);
    atomic_init(&s.waiting, 0);
    atomic_init(&s.done, 0);
    pgg__clock_watch(s.clock, &s.watch);
    pthread_create(&th, NULL, sleeper_run, &s);
    while (!atomic_load(&s.waiting))
        unit_sleep_ms(1);

    pgg__fake_clock_advance(&fc, MS(10) - 1);
    unit_sleep_ms(20);
    cr_assert_eq(atomic_load(&s.done), 0, "woke before its deadline");
    pgg__fake_clock_advance(&fc, 1);
    pthread_join(th, NULL);
    cr_assert_eq(atomic_load(&s.done), 1);

    pgg__clock_unwatch(s.clock, &s.watch);
    pthread_cond_destroy(&s.cv);
    pthread_mutex_destroy(&s.mu);
    pgg__fake_clock_destroy(&fc);
}

UTest(clock, fake_wait_past_deadline_returns_at_once)
{
    pgg_fake_clock fc;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv;

    pgg__fake_clock_init(&fc, T0);
    cr_assert_eq(pgg__cond_init(&cv), 0);
    pthread_mutex_lock(&mu);
    cr_assert_eq(pgg__clock_wait(pgg__fake_clock_base(&fc), &cv, &mu, T0), ETIMEDOUT);
    pthread_mutex_unlock(&mu);
    pthread_cond_destroy(&cv);
    pgg__fake_clock_destroy(&fc);
}

UTest(clock, system_wait_times_out_on_the_monotonic_clock)
{
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv;
    const pgg_clock *c = pgg__clock_system();
    int64_t start, deadline;
    int rc;

    cr_assert_eq(pgg__cond_init(&cv), 0);
    pthread_mutex_lock(&mu);
    start = pgg__now_ns();
    deadline = start + MS(30);
    do
        rc = pgg__clock_wait(c, &cv, &mu, deadline);
    while (rc == 0 && pgg__now_ns() < deadline);
    cr_assert_eq(rc, ETIMEDOUT);
    cr_assert_geq(pgg__now_ns(), deadline);
    /* A deadline in the past returns at once. */
    cr_assert_eq(pgg__clock_wait(c, &cv, &mu, start), ETIMEDOUT);
    pthread_mutex_unlock(&mu);
    pthread_cond_destroy(&cv);
}
