/*
 * The deadline watchdog (src/watchdog.c) on socket pairs whose peer never
 * answers (a hung server, as the waiter sees it): a wait in poll(-1) ends
 * at the deadline, reported as the deadline; a window left in time is never
 * shut down later, not even when its fd number is reused at once.
 * Waits poll without a timeout while the watchdog keeps time, and with
 * their own backstop once it has woken late.
 * The race stress under ThreadSanitizer is tests/unit/stress_watchdog.c.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "link.h"
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

Test(watchdog, ends_a_wait_on_a_silent_peer_at_the_deadline)
{
    pgg_watchdog *wd = wd_new();
    const int64_t timeout = 60 * PGG_NS_PER_MS;

    for (int i = 0; i < 3; i++) {
        int sv[2], rev = 0;
        pgg_wd_slot *s = pgg__watchdog_claim(wd);
        int64_t t0 = pgg__now_ns();

        cr_assert_not_null(s);
        pair(sv);
        bool fired = wait_fired(s, sv[0], t0 + timeout, &rev);
        int64_t took = pgg__now_ns() - t0;

        cr_expect(fired, "the wait ended without the watchdog (revents %#x)", rev);
        cr_expect_geq(took, timeout, "woken %.2f ms before the deadline",
                      (double)(timeout - took) / 1e6);
        /* Deadline plus tick, plus the same slack for a loaded machine as
         * the pool's hung-server tests allow. */
        cr_expect_leq(took, timeout + TICK_NS + 50 * PGG_NS_PER_MS,
                      "the wait overran its deadline by %.2f ms",
                      (double)(took - timeout) / 1e6);
        /* The watchdog's shutdown is what ended it: the socket is spent. */
        cr_expect(!intact(sv[0], sv[1]));
        pgg__watchdog_release(s);
        close(sv[0]);
        close(sv[1]);
    }
    cr_expect_eq(pgg__watchdog_fired(wd), 3);
    pgg__watchdog_free(wd);
}

Test(watchdog, a_window_left_in_time_is_never_shut_down)
{
    pgg_watchdog *wd = wd_new();
    pgg_wd_slot *s = pgg__watchdog_claim(wd);
    int sv[2], rev = 0;

    pair(sv);
    /* The answer is there: the wait ends at once, well before the deadline. */
    cr_assert_eq(send(sv[1], "a", 1, MSG_NOSIGNAL), 1);
    cr_expect(!wait_fired(s, sv[0], pgg__now_ns() + 20 * PGG_NS_PER_MS, &rev));
    cr_expect(rev & POLLIN);
    {
        char c;
        cr_assert_eq(recv(sv[0], &c, 1, 0), 1);
    }
    /* Long past that deadline, outside any window: still whole. */
    usleep(60 * 1000);
    cr_expect(intact(sv[0], sv[1]), "a socket was shut down after its window");
    cr_expect_eq(pgg__watchdog_fired(wd), 0);
    pgg__watchdog_release(s);
    close(sv[0]);
    close(sv[1]);
    pgg__watchdog_free(wd);
}

/* Calls in a stream, each wait answered at once, all with the same
 * timeout: the watchdog, finding nothing armed at each look, must not go
 * back to sleeping without a timeout, or every few calls pay a futex call to
 * wake it (issue 10: no more syscalls per call than raw libpq). */
Test(watchdog, a_stream_of_short_calls_does_not_keep_waking_it)
{
    pgg_watchdog *wd = wd_new();
    int sv[2];

    pair(sv);
    for (int i = 0; i < 100; i++) {
        pgg_wd_slot *s = pgg__watchdog_claim(wd);
        int rev = 0;
        char c;

        cr_assert_not_null(s);
        cr_assert_eq(send(sv[1], "a", 1, MSG_NOSIGNAL), 1);
        cr_assert(!wait_fired(s, sv[0], pgg__now_ns() + PGG_NS_PER_SEC, &rev));
        cr_assert_eq(recv(sv[0], &c, 1, 0), 1);
        pgg__watchdog_release(s);
        /* Let the watchdog take its look while nothing is armed, as it
         * does between a client's calls. */
        usleep(2000);
    }
    /* The first call of the stream wakes it; later deadlines come after
     * the one it waits for. */
    cr_expect_leq(pgg__watchdog_kicks(wd), 3, "%llu of 100 calls woke the watchdog",
                  (unsigned long long)pgg__watchdog_kicks(wd));
    cr_expect_eq(pgg__watchdog_fired(wd), 0);
    close(sv[0]);
    close(sv[1]);
    pgg__watchdog_free(wd);
}

Test(watchdog, an_expired_window_then_a_reused_fd_number)
{
    pgg_watchdog *wd = wd_new();
    pgg_wd_slot *s = pgg__watchdog_claim(wd);
    int a[2], b[2], rev = 0;

    pair(a);
    cr_expect(wait_fired(s, a[0], pgg__now_ns(), &rev));
    close(a[0]);
    close(a[1]);
    /* The same numbers again, in a window of the same slot that ends in
     * time, then unwatched for many ticks. */
    pair(b);
    cr_assert_eq(send(b[1], "a", 1, MSG_NOSIGNAL), 1);
    cr_expect(!wait_fired(s, b[0], pgg__now_ns() + PGG_NS_PER_SEC, &rev));
    {
        char c;
        cr_assert_eq(recv(b[0], &c, 1, 0), 1);
    }
    usleep(20 * 1000);
    cr_expect(intact(b[0], b[1]));
    cr_expect_eq(pgg__watchdog_fired(wd), 1);
    pgg__watchdog_release(s);
    close(b[0]);
    close(b[1]);
    pgg__watchdog_free(wd);
}

Test(watchdog, racing_expiries_never_hit_a_socket_out_of_its_window)
{
    pgg_error e;
    /* A fast tick: many expiries land while windows close. */
    pgg_watchdog *wd = pgg__watchdog_new(50 * PGG_NS_PER_US, &e);
    int won, lost, broken;

    cr_assert_not_null(wd, "%s", e.message);
    race_run(wd, 6, 3000, &won, &lost, &broken);
    cr_log_info("watchdog race: %d windows left in time, %d expired", won, lost);
    cr_expect_eq(broken, 0, "%d sockets were shut down outside their window", broken);
    cr_expect_eq(won + lost, 6 * 3000);
    cr_expect_eq((int)pgg__watchdog_fired(wd), lost);
    pgg__watchdog_free(wd);
}

Test(watchdog, more_waiters_than_a_chunk_of_slots)
{
    pgg_watchdog *wd = wd_new();
    pgg_wd_slot *s[200];

    for (int i = 0; i < 200; i++) {
        s[i] = pgg__watchdog_claim(wd);
        cr_assert_not_null(s[i]);
        for (int j = 0; j < i; j++)
            cr_assert_neq(s[i], s[j], "slot %d handed out twice", j);
    }
    for (int i = 0; i < 200; i++)
        pgg__watchdog_release(s[i]);
    pgg__watchdog_free(wd);
}

typedef struct held_wait {
    pgg_wd_slot *s;
    int fd, rev;
    int64_t deadline;
    bool fired;
} held_wait;

static void *wait_thread(void *arg)
{
    held_wait *h = arg;

    h->fired = wait_fired(h->s, h->fd, h->deadline, &h->rev);
    return NULL;
}

/* Waits carry their own backstop timeout until the watchdogs have shown
 * they keep time (the process starts so); once proven, a waiter's poll
 * carries none (no kernel timer per wait, as PQexec); once a watchdog
 * wakes past the time it meant to (held up, here by its lock), waits
 * carry their backstop again, so that a held-up watchdog does not hold a
 * hung server's caller up with it. */
Test(watchdog, a_late_watchdog_gives_the_waits_their_own_timeout_again)
{
    pgg_watchdog *wd;
    pgg_wd_slot *s;
    held_wait h;
    int sv[2], rev = 0;
    int64_t now = pgg__now_ns();
    pthread_t t;

    /* Before any watchdog looked: unproven, a backstop. */
    cr_expect_eq(pgg__watchdog_backstop_until(), PGG_TIME_NEVER);
    cr_expect_eq(pgg__link_armed_timeout(now + 100 * PGG_NS_PER_MS, now),
                 100 + PGG_LINK_BACKSTOP_MS,
                 "a wait before any proof polls without its backstop");
    wd = wd_new();
    s = pgg__watchdog_claim(wd);
    h = (held_wait){.s = s};
    cr_assert_not_null(s);
    pair(sv);
    /* Its thread has taken its first look (it publishes when it wakes
     * next, which an arm reads); then, as after a hold of punctual
     * wake-ups, proven. */
    while (atomic_load(&((pgg_wd_head *)(void *)wd)->next_wake) == 0)
        usleep(1000);
    cr_expect_neq(pgg__watchdog_backstop_until(), PGG_TIME_NEVER,
                  "the first look did not start the proof");
    pgg__watchdog_set_backstop_until(0);
    /* A window that ends in time: the watchdog looks, on time. */
    cr_assert_eq(send(sv[1], "a", 1, MSG_NOSIGNAL), 1);
    cr_expect(!wait_fired(s, sv[0], now + PGG_NS_PER_SEC, &rev));
    cr_expect_eq(pgg__watchdog_late_wakes(wd), 0);
    cr_expect_eq(pgg__watchdog_backstop_until(), 0);
    cr_expect_eq(pgg__link_armed_timeout(now + 100 * PGG_NS_PER_MS, now), -1,
                 "a wait under a punctual watchdog polls with a timeout");
    {
        char c;
        cr_assert_eq(recv(sv[0], &c, 1, 0), 1);
    }

    /* The watchdog idle first (no look planned: its last window is long
     * gone), so that only the waiter's kick wakes it: a timed look of its
     * own that came due during the hold below would take the lock first
     * when it ends, on time by its own plan, and fire the window without
     * a late wake-up (seen under load in CI). */
    for (int i = 0; i < 10000 && atomic_load(&((pgg_wd_head *)(void *)wd)->next_wake) !=
                                     PGG_TIME_NEVER;
         i++)
        usleep(1000);
    cr_assert_eq(atomic_load(&((pgg_wd_head *)(void *)wd)->next_wake), PGG_TIME_NEVER,
                 "the watchdog still plans a look");
    /* The watchdog cannot wake while the deadline passes. */
    h.fd = sv[0];
    h.deadline = pgg__now_ns() + 2 * PGG_NS_PER_MS;
    pgg__watchdog_hold(wd, true);
    cr_assert_eq(pthread_create(&t, NULL, wait_thread, &h), 0);
    usleep(30 * 1000);
    pgg__watchdog_hold(wd, false);
    pthread_join(t, NULL);
    cr_expect(h.fired, "the watchdog did not end the wait (revents %#x)", h.rev);
    /* It notes its lateness when it looks: the arm's kick that the hold
     * kept waiting may wake it once more after the shutdown. */
    for (int i = 0; i < 5000 && pgg__watchdog_late_wakes(wd) == 0; i++)
        usleep(1000);
    cr_expect_geq(pgg__watchdog_late_wakes(wd), 1);
    now = pgg__now_ns();
    cr_expect_gt(pgg__watchdog_backstop_until(), now);
    cr_expect_eq(pgg__link_armed_timeout(now + 100 * PGG_NS_PER_MS, now),
                 100 + PGG_LINK_BACKSTOP_MS,
                 "a wait under a late watchdog has no backstop");
    pgg__watchdog_release(s);
    close(sv[0]);
    close(sv[1]);
    pgg__watchdog_free(wd);
}

/* A wait whose caller's cancel fired already ends at once, without a poll
 * (pgg__link_wait_armed's look after arming): its own timeout did not end
 * it, and pgg__link_backstops, the waits the backstop ended before the
 * watchdog did, does not count it.  (The watchdog is not told of the
 * cancel here, so that the window is still armed when the waiter leaves
 * it.) */
Test(watchdog, a_fired_cancel_is_not_counted_as_a_backstop)
{
    pgg_watchdog *wd = wd_new();
    pgg_wd_slot *s = pgg__watchdog_claim(wd);
    pgg_cancel *cancel = pgg_cancel_new();
    uint64_t before = pgg__link_backstops();
    int sv[2];

    cr_assert_not_null(s);
    cr_assert_not_null(cancel);
    pair(sv);
    pgg_cancel_fire(cancel);
    cr_expect_eq(pgg__link_wait_armed(s, cancel, sv[0], POLLIN,
                                      pgg__now_ns() + PGG_NS_PER_SEC, 0),
                 0, "a wait whose cancel fired did not end at once");
    cr_expect_eq(pgg__link_backstops(), before,
                 "a fired cancel was counted as a backstop");
    cr_expect(intact(sv[0], sv[1]), "the socket was shut down");
    pgg__watchdog_release(s);
    pgg_cancel_free(cancel);
    close(sv[0]);
    close(sv[1]);
    pgg__watchdog_free(wd);
}

/* The backstop lasts until a watchdog's look ends it, not until the time
 * the last late wake-up named: a hold that ran out with no look since (an
 * idle process, or a watchdog held up right then) proved nothing, and a
 * wait then still carries its own timeout.  The first punctual look after
 * the hold ends it.  (Before, a wait compared the time itself: past the
 * hold it polled without a timeout whether or not any watchdog had woken
 * on time meanwhile.) */
Test(watchdog, the_backstop_lasts_until_a_look_past_its_hold_ends_it)
{
    pgg_watchdog *wd;
    int64_t now = pgg__now_ns();

    /* A late wake-up's hold ran out just now; nothing looked since. */
    pgg__watchdog_set_backstop_until(now - 1);
    cr_expect_eq(pgg__link_armed_timeout(now + 100 * PGG_NS_PER_MS, now),
                 100 + PGG_LINK_BACKSTOP_MS,
                 "a wait past the hold, before any look, has no backstop");
    /* A watchdog's first look, on time: the backstop ends. */
    wd = wd_new();
    while (atomic_load(&((pgg_wd_head *)(void *)wd)->next_wake) == 0)
        usleep(1000);
    cr_expect_eq(pgg__watchdog_backstop_until(), 0,
                 "a punctual look past the hold did not end the backstop");
    now = pgg__now_ns();
    cr_expect_eq(pgg__link_armed_timeout(now + 100 * PGG_NS_PER_MS, now), -1);
    pgg__watchdog_free(wd);
}
