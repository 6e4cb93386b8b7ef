/*
 * Shared by tests/unit/test_watchdog.c (Criterion) and
 * tests/unit/stress_watchdog.c (a plain main() for ThreadSanitizer, which
 * Criterion cannot run under): waiting as the link waits, and the race of
 * short windows against their own expiry.
 */
#ifndef PGG_TEST_WATCHDOG_RACE_H
#define PGG_TEST_WATCHDOG_RACE_H

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"
#include "watchdog.h"

/* Does this end still work both ways with its peer? */
static inline bool intact(int fd, int peer)
{
    char c = 0;

    if (send(fd, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1)
        return false;
    if (recv(peer, &c, 1, MSG_DONTWAIT) != 1 || c != 'x')
        return false;
    if (send(peer, "y", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1)
        return false;
    return recv(fd, &c, 1, MSG_DONTWAIT) == 1 && c == 'y';
}

/* Wait as the link does: arm, poll without a timeout, disarm. */
static inline bool wait_linger(pgg_wd_slot *s, int fd, int64_t deadline,
                               int64_t linger_ns, int *revents)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int64_t until;
    int r;

    pgg__watchdog_arm(s, fd, deadline);
    do
        r = poll(&p, 1, -1);
    while (r < 0 && errno == EINTR);
    *revents = p.revents;
    /* Stay in the window a little (the work between a wake and the
     * disarm), so that expiries land on open windows. */
    for (until = pgg__now_ns() + linger_ns; pgg__now_ns() < until;)
        ;
    return pgg__watchdog_disarm(s);
}

static inline bool wait_fired(pgg_wd_slot *s, int fd, int64_t deadline, int *revents)
{
    return wait_linger(s, fd, deadline, 0, revents);
}

/* Many threads in short windows that race their own expiry, on fd numbers
 * the kernel hands round between them: no socket is ever shut down outside
 * its window (checked after every window the waiter won and on sockets
 * never armed at all). */
typedef struct racer {
    pgg_watchdog *wd;
    int rounds, won, lost, broken;
    pthread_t t;
} racer;

static inline void *race(void *arg)
{
    racer *r = arg;

    for (int i = 0; i < r->rounds; i++) {
        pgg_wd_slot *s = pgg__watchdog_claim(r->wd);
        int sv[2], spare[2], rev = 0;

        if (!s || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 ||
            socketpair(AF_UNIX, SOCK_STREAM, 0, spare) != 0) {
            r->broken++;
            break;
        }
        /* Data is waiting and the deadline is now: the poll returns at
         * once and disarm races the watchdog's expiry. */
        (void)send(sv[1], "a", 1, MSG_NOSIGNAL);
        if (wait_linger(s, sv[0], pgg__now_ns() + (i % 3) * 20000,
                        (i % 4) * 25000, &rev)) {
            r->lost++;
        } else {
            char c;
            r->won++;
            if (recv(sv[0], &c, 1, 0) != 1 || !intact(sv[0], sv[1]))
                r->broken++;
        }
        pgg__watchdog_release(s);
        if (!intact(spare[0], spare[1]))
            r->broken++;
        close(sv[0]);
        close(sv[1]);
        close(spare[0]);
        close(spare[1]);
    }
    return NULL;
}

/* n threads of `rounds` windows each on wd; totals into *won, *lost,
 * *broken (sockets found shut down outside their window). */
static inline void race_run(pgg_watchdog *wd, int n, int rounds, int *won,
                            int *lost, int *broken)
{
    racer rs[16];

    *won = *lost = *broken = 0;
    if (n > 16)
        n = 16;
    for (int i = 0; i < n; i++) {
        rs[i] = (racer){.wd = wd, .rounds = rounds};
        if (pthread_create(&rs[i].t, NULL, race, &rs[i]) != 0) {
            (*broken)++;
            n = i;
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        pthread_join(rs[i].t, NULL);
        *won += rs[i].won;
        *lost += rs[i].lost;
        *broken += rs[i].broken;
    }
}

#endif
