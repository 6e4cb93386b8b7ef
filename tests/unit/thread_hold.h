/*
 * Holding a library thread where it used to hold a lock (its test hook),
 * and waiting for flags other threads set: the tests that show a hand-off
 * never waits for the thread it hands to (test_closer, test_events,
 * test_canceller).  One mutex and condition variable for every flag.
 */
#ifndef PGG_TEST_THREAD_HOLD_H
#define PGG_TEST_THREAD_HOLD_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <time.h>

static pthread_mutex_t hold_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hold_cv = PTHREAD_COND_INITIALIZER;

/* Set *flag and wake the waiters. */
static inline void hold_set(bool *flag)
{
    pthread_mutex_lock(&hold_mu);
    *flag = true;
    pthread_cond_broadcast(&hold_cv);
    pthread_mutex_unlock(&hold_mu);
}

/* The hook's body: tell *held, then wait for *release (unless given already). */
static inline void hold_until(bool *held, bool *release)
{
    pthread_mutex_lock(&hold_mu);
    if (!*release) {
        *held = true;
        pthread_cond_broadcast(&hold_cv);
        while (!*release)
            pthread_cond_wait(&hold_cv, &hold_mu);
    }
    pthread_mutex_unlock(&hold_mu);
}

/* Wait until pred(arg) holds (read under hold_mu), at most 30 s: a hang
 * detector, not a timing. */
static inline bool hold_wait(bool (*pred)(void *), void *arg)
{
    struct timespec until;
    bool ok;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 30;
    pthread_mutex_lock(&hold_mu);
    while (!pred(arg))
        if (pthread_cond_timedwait(&hold_cv, &hold_mu, &until) == ETIMEDOUT)
            break;
    ok = pred(arg);
    pthread_mutex_unlock(&hold_mu);
    return ok;
}

static inline bool hold_flag_set(void *flag)
{
    return *(bool *)flag;
}

static inline bool hold_wait_flag(bool *flag)
{
    return hold_wait(hold_flag_set, flag);
}

#endif
