/*
 * The closer thread (src/link.c): a hand-off (pgg__canceller_close, which
 * the pool makes from an event loop's callback when it drops a session)
 * never waits for the closer thread.  The test holds the closer as it
 * wakes, where the earlier closer held its lock (a preempted closer there
 * made every loop handing a close over sleep), hands over more closes from
 * another thread, and requires them all to return while it is held; then
 * everything handed over is closed.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "link.h"
#include "thread_hold.h"

#define HANDOFFS 64

static bool held, release, handed;

static void hold_closer(void)
{
    hold_until(&held, &release);
}

typedef struct handoff {
    pgg_canceller *c;
    int fds[HANDOFFS];
} handoff;

static void *hand_over(void *arg)
{
    handoff *h = arg;

    for (int i = 0; i < HANDOFFS; i++)
        pgg__canceller_close(h->c, NULL, h->fds[i]);
    hold_set(&handed);
    return NULL;
}

Test(closer, a_hand_off_never_waits_for_the_closer_thread)
{
    pgg_error e;
    pgg_canceller *c = pgg__canceller_new(0, 1, 0, &e);
    handoff h = {.c = c};
    int first;
    pthread_t t;

    cr_assert_not_null(c, "%s", e.message);
    atomic_store(&pgg__closer_woke_hook, hold_closer);
    first = open("/dev/null", O_RDONLY | O_CLOEXEC);
    cr_assert_geq(first, 0);
    for (int i = 0; i < HANDOFFS; i++) {
        h.fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
        cr_assert_geq(h.fds[i], 0);
    }
    /* The first hand-off wakes the closer, which stops in the hook. */
    pgg__canceller_close(c, NULL, first);
    cr_assert(hold_wait_flag(&held), "the closer thread never woke");
    cr_assert_eq(pthread_create(&t, NULL, hand_over, &h), 0);
    bool done = hold_wait_flag(&handed);
    hold_set(&release);
    pthread_join(t, NULL);
    cr_expect(done, "the hand-offs waited for the closer thread held as it woke");
    pgg__canceller_free(c, 0);
    atomic_store(&pgg__closer_woke_hook, NULL);
    /* Everything handed over is closed by the end (nothing else opens
     * descriptors in this process meanwhile). */
    cr_expect(fcntl(first, F_GETFD) == -1 && errno == EBADF, "the first descriptor is open");
    for (int i = 0; i < HANDOFFS; i++)
        cr_expect(fcntl(h.fds[i], F_GETFD) == -1 && errno == EBADF, "descriptor %d of %d is open",
                  i + 1, HANDOFFS);
}
