#include "unit.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "bulkhead.h"

static pgg_fake_clock FC;
static pgg_bulkhead BH;

static void start(int capacity)
{
    pgg__fake_clock_init(&FC, T0);
    cr_assert_eq(pgg__bulkhead_init(&BH, capacity, pgg__fake_clock_base(&FC), NULL), PGG_OK);
}

static void stop(void)
{
    pgg__bulkhead_destroy(&BH);
    pgg__fake_clock_destroy(&FC);
}

static int64_t now(void)
{
    return pgg__clock_now(pgg__fake_clock_base(&FC));
}

static pgg_bulkhead_counts counts(void)
{
    pgg_bulkhead_counts c;

    pgg__bulkhead_counts(&BH, &c);
    return c;
}

/* Real time passes until the bulkhead has n waiters. */
static void await_waiting(int n)
{
    int i;

    for (i = 0; i < 10000 && counts().waiting != n; i++)
        unit_sleep_ms(1);
    cr_assert_eq(counts().waiting, n, "never saw %d waiters", n);
}

/* A thread that enters, notes its turn, and holds until told to leave. */
typedef struct entrant {
    pthread_t th;
    int id;
    int64_t deadline;
    int rc;
    atomic_int done;
    atomic_int release;
} entrant;

static atomic_int order_next;
static int order[16];

static void *entrant_run(void *arg)
{
    entrant *e = arg;

    e->rc = pgg__bulkhead_enter(&BH, e->deadline, now());
    if (e->rc == PGG_OK) {
        order[atomic_fetch_add(&order_next, 1)] = e->id;
        atomic_store(&e->done, 1);
        while (!atomic_load(&e->release))
            unit_sleep_ms(1);
        pgg__bulkhead_leave(&BH);
    } else {
        atomic_store(&e->done, 1);
    }
    return NULL;
}

static void spawn(entrant *e, int id, int64_t deadline)
{
    memset(e, 0, sizeof *e);
    e->id = id;
    e->deadline = deadline;
    pthread_create(&e->th, NULL, entrant_run, e);
}

static void await_done(entrant *e)
{
    int i;

    for (i = 0; i < 10000 && !atomic_load(&e->done); i++)
        unit_sleep_ms(1);
    cr_assert(atomic_load(&e->done), "entrant %d never got an answer", e->id);
}

UTest(bulkhead, init_and_new)
{
    pgg_bulkhead *bh;
    pgg_error err;

    cr_assert_eq(pgg__bulkhead_init(&BH, -1, NULL, &err), PGG_EINVAL);
    cr_assert_eq(err.code, PGG_EINVAL);
    cr_assert_null(pgg__bulkhead_new(-1, NULL, NULL));
    bh = pgg__bulkhead_new(3, NULL, NULL);
    cr_assert_not_null(bh);
    cr_assert_eq(pgg__bulkhead_capacity(bh), 3);
    pgg__bulkhead_free(bh);
    pgg__bulkhead_free(NULL);
    pgg__bulkhead_destroy(NULL);
}

UTest(bulkhead, full_refuses_at_once_when_the_deadline_has_come)
{
    pgg_bulkhead_counts c;

    start(2);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_OK,
                 "a free slot needs no time");
    cr_assert_eq(pgg__bulkhead_enter(&BH, now() + MS(5), now()), PGG_OK);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_EBULKHEAD);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now() - 1, now()), PGG_EBULKHEAD);
    c = counts();
    cr_assert_eq(c.in_use, 2);
    cr_assert_eq(c.waiting, 0);
    cr_assert_eq(c.admitted, 2);
    cr_assert_eq(c.rejected_full, 2);
    pgg__bulkhead_leave(&BH);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_OK);
    pgg__bulkhead_leave(&BH);
    pgg__bulkhead_leave(&BH);
    cr_assert_eq(counts().in_use, 0);
    stop();
}

UTest(bulkhead, capacity_zero_refuses_everyone)
{
    start(0);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_EBULKHEAD);
    stop();
}

UTest(bulkhead, wait_ends_exactly_at_the_deadline)
{
    entrant e;

    start(1);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_OK);
    spawn(&e, 1, now() + MS(5));
    await_waiting(1);
    pgg__fake_clock_advance(&FC, MS(5) - 1);
    unit_sleep_ms(20);
    cr_assert_eq(atomic_load(&e.done), 0, "gave up before its deadline");
    cr_assert_eq(counts().waiting, 1);
    pgg__fake_clock_advance(&FC, 1);
    pthread_join(e.th, NULL);
    cr_assert_eq(e.rc, PGG_ETIMEDOUT);
    cr_assert_eq(counts().waiting, 0);
    cr_assert_eq(counts().timed_out, 1);
    pgg__bulkhead_leave(&BH);
    stop();
}

UTest(bulkhead, slot_freed_before_the_deadline_is_taken)
{
    entrant e;

    start(1);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_OK);
    spawn(&e, 1, now() + MS(5));
    await_waiting(1);
    pgg__fake_clock_advance(&FC, MS(4));
    pgg__bulkhead_leave(&BH);
    await_done(&e);
    cr_assert_eq(e.rc, PGG_OK);
    cr_assert_eq(counts().waited, 1);
    atomic_store(&e.release, 1);
    pthread_join(e.th, NULL);
    cr_assert_eq(counts().in_use, 0);
    stop();
}

UTest(bulkhead, fifo_and_no_barging)
{
    entrant e[4];
    int i;

    start(1);
    atomic_store(&order_next, 0);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_OK);
    for (i = 0; i < 4; i++) {
        spawn(&e[i], i, PGG_TIME_NEVER);
        await_waiting(i + 1);
    }
    pgg__bulkhead_leave(&BH);
    /* The slot went to the oldest waiter: a newcomer finds it taken. */
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_EBULKHEAD);
    for (i = 0; i < 4; i++) {
        await_done(&e[i]);
        cr_assert_eq(e[i].rc, PGG_OK);
        if (i < 3)
            cr_assert_eq(atomic_load(&e[i + 1].done), 0, "%d entered before %d", i + 1, i);
        atomic_store(&e[i].release, 1);
        pthread_join(e[i].th, NULL);
    }
    for (i = 0; i < 4; i++)
        cr_assert_eq(order[i], i, "turn %d went to %d", i, order[i]);
    cr_assert_eq(counts().in_use, 0);
    stop();
}

UTest(bulkhead, a_timed_out_waiter_leaves_the_queue_in_place)
{
    entrant a, b, c;

    start(1);
    atomic_store(&order_next, 0);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_OK);
    spawn(&a, 0, PGG_TIME_NEVER);
    await_waiting(1);
    spawn(&b, 1, now() + MS(1)); /* the middle one gives up */
    await_waiting(2);
    spawn(&c, 2, PGG_TIME_NEVER);
    await_waiting(3);
    pgg__fake_clock_advance(&FC, MS(1));
    pthread_join(b.th, NULL);
    cr_assert_eq(b.rc, PGG_ETIMEDOUT);
    await_waiting(2);
    pgg__bulkhead_leave(&BH);
    await_done(&a);
    atomic_store(&a.release, 1);
    pthread_join(a.th, NULL);
    await_done(&c);
    atomic_store(&c.release, 1);
    pthread_join(c.th, NULL);
    cr_assert_eq(order[0], 0);
    cr_assert_eq(order[1], 2);
    stop();
}

UTest(bulkhead, growing_admits_waiters_oldest_first)
{
    entrant e[3];
    int i;

    start(1);
    atomic_store(&order_next, 0);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_OK);
    for (i = 0; i < 3; i++) {
        spawn(&e[i], i, PGG_TIME_NEVER);
        await_waiting(i + 1);
    }
    cr_assert_eq(pgg__bulkhead_resize(&BH, 3), PGG_OK);
    await_done(&e[0]);
    await_done(&e[1]);
    cr_assert_eq(counts().in_use, 3);
    cr_assert_eq(counts().waiting, 1);
    /* Both grants happen at once, so only who got in is ordered, not when. */
    cr_assert_eq(atomic_load(&e[2].done), 0, "the newest waiter went first");
    pgg__bulkhead_leave(&BH);
    await_done(&e[2]);
    for (i = 0; i < 3; i++) {
        atomic_store(&e[i].release, 1);
        pthread_join(e[i].th, NULL);
    }
    cr_assert_eq(pgg__bulkhead_resize(&BH, -1), PGG_EINVAL);
    cr_assert_eq(pgg__bulkhead_capacity(&BH), 3);
    stop();
}

UTest(bulkhead, shrinking_waits_for_holders_to_drain)
{
    pgg_bulkhead_counts c;

    start(3);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_OK);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_OK);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_OK);
    cr_assert_eq(pgg__bulkhead_resize(&BH, 1), PGG_OK);
    c = counts();
    cr_assert_eq(c.in_use, 3, "holders are not interrupted");
    cr_assert_eq(c.capacity, 1);
    pgg__bulkhead_leave(&BH);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_EBULKHEAD, "2 held, 1 allowed");
    pgg__bulkhead_leave(&BH);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_EBULKHEAD, "1 held, 1 allowed");
    pgg__bulkhead_leave(&BH);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_OK);
    pgg__bulkhead_leave(&BH);
    stop();
}

UTest(bulkhead, close_wakes_every_waiter)
{
    entrant e[2];
    int i;

    start(1);
    cr_assert_eq(pgg__bulkhead_enter(&BH, now(), now()), PGG_OK);
    for (i = 0; i < 2; i++) {
        spawn(&e[i], i, PGG_TIME_NEVER);
        await_waiting(i + 1);
    }
    pgg__bulkhead_close(&BH);
    for (i = 0; i < 2; i++) {
        pthread_join(e[i].th, NULL);
        cr_assert_eq(e[i].rc, PGG_ECLOSED);
    }
    cr_assert_eq(pgg__bulkhead_enter(&BH, now() + SEC(1), now()), PGG_ECLOSED);
    pgg__bulkhead_leave(&BH);
    cr_assert_eq(counts().in_use, 0);
    cr_assert_eq(counts().waiting, 0);
    stop();
}

UTest(bulkhead, real_clock_wait_is_bounded_by_its_deadline)
{
    pgg_bulkhead *bh = pgg__bulkhead_new(1, NULL, NULL);
    int64_t t0, deadline;

    cr_assert_not_null(bh);
    t0 = pgg__now_ns();
    cr_assert_eq(pgg__bulkhead_enter(bh, t0, t0), PGG_OK);
    deadline = t0 + MS(30);
    cr_assert_eq(pgg__bulkhead_enter(bh, deadline, t0), PGG_ETIMEDOUT);
    cr_assert_geq(pgg__now_ns(), deadline);
    cr_assert_lt(pgg__now_ns(), deadline + SEC(2), "overslept");
    pgg__bulkhead_leave(bh);
    pgg__bulkhead_free(bh);
}

/* ------------------------------------------------- an event loop's thread
 * (bulkhead.c, "Loops").  The test thread holds mu itself where another
 * thread would be preempted inside it: a trylock by the owner of a
 * (non-recursive) mutex fails as it would for anyone else, so the loop
 * variants meet a busy lock without a second thread, and a variant that
 * waited for it would deadlock the test rather than pass. */

UTest(bulkhead, a_loops_enter_and_leave_never_wait_for_the_lock)
{
    entrant w;
    uint64_t s;

    start(1);
    cr_assert_eq(pgg__bulkhead_enter_loop(&BH), PGG_OK, "a free slot, lock-free");
    spawn(&w, 1, PGG_TIME_NEVER);
    await_waiting(1);
    s = atomic_load(&BH.state);
    cr_assert(s & PGG_BULKHEAD_SLOW, "a waiter makes every enter and leave slow");

    pthread_mutex_lock(&BH.mu);
    /* Someone waits: a loop may not queue, nor wait for the lock. */
    cr_assert_eq(pgg__bulkhead_enter_loop(&BH), PGG_EBULKHEAD);
    /* Its leave is owed: the slot stays held, nobody takes it. */
    cr_assert_not(pgg__bulkhead_leave_loop(&BH), "the leave was not owed");
    cr_assert_eq(pgg__bulkhead_owed(&BH), 1);
    cr_assert_eq(PGG_BULKHEAD_HOLDERS(atomic_load(&BH.state)), 1);
    /* Released as a holder preempted there would be, with nothing applied
     * (a waiter asleep releases mu inside pthread_cond_wait, after its
     * last look at what is owed). */
    pthread_mutex_unlock(&BH.mu);
    unit_sleep_ms(20);
    cr_assert_eq(atomic_load(&w.done), 0, "the owed slot was handed on by nobody");
    /* The loop settles it itself (its timer): the waiter gets the slot. */
    cr_assert(pgg__bulkhead_settle_owed(&BH, false), "something is still owed");
    await_done(&w);
    cr_assert_eq(w.rc, PGG_OK);
    cr_assert_eq(pgg__bulkhead_owed(&BH), 0);
    cr_assert_eq(counts().in_use, 1, "the owed slot went to the waiter, not away");
    cr_assert_eq(counts().rejected_full, 1, "the loop's refusal is counted");
    atomic_store(&w.release, 1);
    pthread_join(w.th, NULL);
    cr_assert_eq(counts().in_use, 0);
    cr_assert_eq(atomic_load(&BH.state) & PGG_BULKHEAD_SLOW, 0,
                 "the fast path is open again once nobody waits");
    stop();
}

/* Owed by the hook: a loop's leave made while the test thread is inside
 * a real section (counts()), just before it unlocks. */
static void leave_as_a_loop(pgg_bulkhead *bh)
{
    pgg__bulkhead_unlock_hook = NULL;
    cr_assert_not(pgg__bulkhead_leave_loop(bh), "the leave was not owed");
    cr_assert_eq(pgg__bulkhead_owed(bh), 1);
}

UTest(bulkhead, the_holder_hands_an_owed_slot_to_the_oldest_waiter_before_it_unlocks)
{
    entrant w[2];

    start(1);
    atomic_store(&order_next, 0);
    cr_assert_eq(pgg__bulkhead_enter_loop(&BH), PGG_OK);
    for (int i = 0; i < 2; i++) {
        spawn(&w[i], i, PGG_TIME_NEVER);
        await_waiting(i + 1);
    }
    pgg__bulkhead_unlock_hook = leave_as_a_loop;
    (void)counts(); /* a section: the hook owes the loop's leave inside it */
    cr_assert_null(pgg__bulkhead_unlock_hook, "the hook did not run");
    /* Applied by that holder as it left: nobody settled anything. */
    cr_assert_eq(pgg__bulkhead_owed(&BH), 0);
    await_done(&w[0]);
    cr_assert_eq(w[0].rc, PGG_OK);
    unit_sleep_ms(20);
    cr_assert_eq(atomic_load(&w[1].done), 0, "the younger waiter got it too");
    cr_assert_eq(counts().in_use, 1);
    /* No barging past the FIFO: a loop is refused while w[1] waits. */
    cr_assert_eq(pgg__bulkhead_enter_loop(&BH), PGG_EBULKHEAD);
    atomic_store(&w[0].release, 1);
    await_done(&w[1]);
    cr_assert_eq(w[1].rc, PGG_OK);
    atomic_store(&w[1].release, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(w[i].th, NULL);
    cr_assert_eq(order[0], 0);
    cr_assert_eq(order[1], 1);
    cr_assert_eq(counts().in_use, 0);
    stop();
}
