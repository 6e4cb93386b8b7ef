/*
 * The caller's cancel handle (src/cancel.c) and its path through the
 * deadline watchdog (src/watchdog.c), on socket pairs whose peer never
 * answers: a fire ends an armed window long before its deadline, through
 * the watchdog's own window protocol; a window whose handle was not fired
 * is left alone by another handle's fire; the handle's flag and reset.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cancel.h"
#include "clock.h"
#include "watchdog.h"
#include "watchdog_race.h"

#define TICK_NS (2 * PGG_NS_PER_MS)

static pgg_watchdog *wd_new(void)
{
    pgg_error e;
    pgg_watchdog *wd = pgg__watchdog_new(TICK_NS, &e);

    cr_assert_not_null(wd, "%s", e.message);
    return wd;
}

static void pair(int sv[2])
{
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0, "socketpair: %d", errno);
}

typedef struct firer {
    pgg_cancel *c;
    int delay_ms;
    pthread_t t;
} firer;

static void *fire_later(void *arg)
{
    firer *f = arg;
    struct timespec ts = {0, (long)f->delay_ms * 1000000L};

    nanosleep(&ts, NULL);
    pgg_cancel_fire(f->c);
    return NULL;
}

Test(cancel, the_flag_fires_and_resets)
{
    pgg_cancel *c = pgg_cancel_new();

    cr_assert_not_null(c);
    cr_expect_eq(pgg_cancel_fired(c), 0);
    pgg_cancel_fire(c);
    pgg_cancel_fire(c); /* idempotent */
    cr_expect_eq(pgg_cancel_fired(c), 1);
    pgg_cancel_reset(c);
    cr_expect_eq(pgg_cancel_fired(c), 0);
    /* NULL is fine everywhere. */
    pgg_cancel_fire(NULL);
    pgg_cancel_reset(NULL);
    cr_expect_eq(pgg_cancel_fired(NULL), 0);
    pgg_cancel_free(NULL);
    pgg_cancel_free(c);
}

Test(cancel, a_slice_is_cut_only_while_a_handle_is_current)
{
    pgg_cancel *c = pgg_cancel_new();
    int64_t far = 10 * PGG_NS_PER_SEC;

    cr_expect_eq(pgg__cancel_slice(0, far), far);
    cr_expect(!pgg__cancel_now());
    pgg_cancel *prev = pgg__cancel_enter(c, NULL);
    cr_expect_eq(pgg__cancel_slice(0, far), PGG_CANCEL_SLICE_NS);
    cr_expect_eq(pgg__cancel_slice(0, 1000), 1000);
    cr_expect(!pgg__cancel_now());
    pgg_cancel_fire(c);
    cr_expect(pgg__cancel_now());
    pgg__cancel_leave(c, prev);
    cr_expect(!pgg__cancel_now());
    cr_expect_eq(pgg__cancel_slice(0, far), far);
    pgg_cancel_free(c);
}

Test(cancel, a_fire_ends_an_armed_window_through_the_watchdog)
{
    pgg_watchdog *wd = wd_new();
    pgg_cancel *c = pgg_cancel_new();
    const int64_t timeout = 60 * PGG_NS_PER_SEC;
    int sv[2], rev = 0;

    pair(sv);
    pgg_cancel *prev = pgg__cancel_enter(c, wd);
    pgg_wd_slot *s = pgg__watchdog_claim(wd);
    cr_assert_not_null(s);
    pgg__watchdog_set_cancel(s, pgg__cancel_flag(c));
    firer f = {.c = c, .delay_ms = 30};
    cr_assert_eq(pthread_create(&f.t, NULL, fire_later, &f), 0);
    int64_t t0 = pgg__now_ns();
    bool fired = wait_fired(s, sv[0], t0 + timeout, &rev);
    int64_t took = pgg__now_ns() - t0;
    pthread_join(f.t, NULL);

    cr_expect(fired, "the wait ended without the watchdog (revents %#x)", rev);
    /* Without the fire it would have lasted the minute. */
    cr_expect_lt(took, timeout / 2, "the fire did not end the wait");
    fprintf(stderr, "fire at 30 ms ended the wait at %.2f ms\n", (double)took / 1e6);
    cr_expect(!intact(sv[0], sv[1]), "the watchdog's shutdown did not end it");
    cr_expect_eq(pgg__watchdog_fired(wd), 1);
    pgg__watchdog_release(s);
    pgg__cancel_leave(c, prev);
    close(sv[0]);
    close(sv[1]);
    pgg_cancel_free(c);
    pgg__watchdog_free(wd);
}

typedef struct waiter {
    pgg_watchdog *wd;
    pgg_cancel *c;
    int fd;
    int64_t deadline;
    bool fired;
    pthread_t t;
} waiter;

static void *wait_in_window(void *arg)
{
    waiter *w = arg;
    int rev = 0;
    pgg_wd_slot *s = pgg__watchdog_claim(w->wd);

    pgg__watchdog_set_cancel(s, pgg__cancel_flag(w->c));
    w->fired = wait_fired(s, w->fd, w->deadline, &rev);
    pgg__watchdog_release(s);
    return NULL;
}

Test(cancel, another_handles_fire_leaves_a_window_alone)
{
    pgg_watchdog *wd = wd_new();
    pgg_cancel *mine = pgg_cancel_new(), *other = pgg_cancel_new();
    int sv[2];

    pair(sv);
    /* The other handle is attached to the same watchdog, so its fire makes
     * the watchdog look at every window that has a handle. */
    pgg_cancel *prev = pgg__cancel_enter(other, wd);
    waiter w = {.wd = wd, .c = mine, .fd = sv[0],
                .deadline = pgg__now_ns() + 300 * PGG_NS_PER_MS};
    cr_assert_eq(pthread_create(&w.t, NULL, wait_in_window, &w), 0);
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
    pgg_cancel_fire(other);
    nanosleep(&ts, NULL);
    /* Still waiting, the socket untouched: only its deadline ends it. */
    cr_expect_eq(pgg__watchdog_fired(wd), 0, "a window with an unfired handle was shut down");
    pthread_join(w.t, NULL);
    cr_expect(w.fired, "the deadline no longer ended the window");
    cr_expect_geq(pgg__now_ns(), w.deadline);
    pgg__cancel_leave(other, prev);
    close(sv[0]);
    close(sv[1]);
    pgg_cancel_free(mine);
    pgg_cancel_free(other);
    pgg__watchdog_free(wd);
}
