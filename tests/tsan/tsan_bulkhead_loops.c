/*
 * ThreadSanitizer driver: event loops on one bulkhead with blocking
 * callers that queue on it (bulkhead.c, "Loops").  Three "loop" threads
 * enter and leave with the _loop variants, which never wait for the
 * bulkhead's lock: an enter that finds it busy is refused, a leave that
 * finds it busy is owed, and the loop settles what is owed on its next
 * turn (its timer), as async.c does.  Three blocking threads enter with a
 * short real deadline, so they queue and time out.  Another thread holds
 * the lock on and off as a preempted holder would, releasing it without
 * applying anything (the gap of a waiter asleep in pthread_cond_wait), and
 * reads the counts (a real section, which applies what is owed).
 *
 * Besides TSan's verdict: never more holders than the capacity; every
 * attempt accounted for exactly (the counts agree with what the threads
 * saw); once every thread is done and has settled, nothing is owed, held
 * or waiting; and the loops really met the lock busy (owed leaves and
 * refused enters happened), so the run proved something.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "bulkhead.h"
#include "clock.h"
#include "tsan_util.h"

#define LOOPS 3
#define BLOCKING 3
#define CALLS 20000
#define CAPACITY 2

static pgg_bulkhead BH;
static atomic_int inside, max_inside, done;

typedef struct tally {
    pthread_t th;
    uint64_t ok, refused, full, timeout, other, owed, settled_late;
} tally;

/* Inside a while: long enough for blocking callers to queue behind. */
static void in_and_out(void)
{
    int n = atomic_fetch_add(&inside, 1) + 1;
    int m = atomic_load(&max_inside);

    while (n > m && !atomic_compare_exchange_weak(&max_inside, &m, n))
        ;
    for (int i = 0; i < 3; i++)
        sched_yield();
    atomic_fetch_sub(&inside, 1);
}

static void *loop_main(void *arg)
{
    tally *t = arg;
    bool owes = false;

    for (int i = 0; i < CALLS; i++) {
        /* Its timer: what it owes, settled before its next calls. */
        if (owes && pgg__bulkhead_settle_owed(&BH, false))
            owes = false;
        switch (pgg__bulkhead_enter_loop(&BH)) {
        case PGG_OK:
            t->ok++;
            in_and_out();
            if (!pgg__bulkhead_leave_loop(&BH)) {
                t->owed++;
                owes = true;
            }
            break;
        case PGG_EBULKHEAD:
            t->refused++;
            sched_yield(); /* the loop's next turn */
            break;
        default:
            t->other++;
        }
    }
    /* Its timer keeps looking until nothing is owed (never a wait). */
    while (!pgg__bulkhead_settle_owed(&BH, false)) {
        t->settled_late++;
        sched_yield();
    }
    return NULL;
}

static void *blocking_main(void *arg)
{
    tally *t = arg;

    for (int i = 0; i < CALLS / 4; i++) {
        int64_t now = pgg__now_ns();

        switch (pgg__bulkhead_enter(&BH, now + 2 * PGG_NS_PER_MS, now)) {
        case PGG_OK:
            t->ok++;
            in_and_out();
            pgg__bulkhead_leave(&BH);
            /* Room for the loops: they hold slots the next call queues
             * behind. */
            for (int j = 0; j < 8; j++)
                sched_yield();
            break;
        case PGG_EBULKHEAD:
            t->full++;
            break;
        case PGG_ETIMEDOUT:
            t->timeout++;
            break;
        default:
            t->other++;
        }
    }
    return NULL;
}

/* A holder preempted inside the lock, released without applying anything
 * (as pthread_cond_wait releases it), and real sections. */
static void *holder_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&done)) {
        pgg_bulkhead_counts c;

        pthread_mutex_lock(&BH.mu);
        for (int i = 0; i < 4; i++)
            sched_yield();
        pthread_mutex_unlock(&BH.mu);
        pgg__bulkhead_counts(&BH, &c);
        sched_yield();
    }
    return NULL;
}

int main(void)
{
    tally t[LOOPS + BLOCKING];
    pthread_t holder;
    pgg_bulkhead_counts c;
    uint64_t ok = 0, refused = 0, full = 0, timeout = 0, other = 0, owed = 0, late = 0;
    uint64_t s;

    if (pgg__bulkhead_init(&BH, CAPACITY, NULL, NULL) != PGG_OK) {
        fprintf(stderr, "bulkhead init failed\n");
        return 1;
    }
    pthread_create(&holder, NULL, holder_main, NULL);
    for (int i = 0; i < LOOPS + BLOCKING; i++) {
        memset(&t[i], 0, sizeof t[i]);
        pthread_create(&t[i].th, NULL, i < LOOPS ? loop_main : blocking_main, &t[i]);
    }
    for (int i = 0; i < LOOPS + BLOCKING; i++) {
        pthread_join(t[i].th, NULL);
        ok += t[i].ok;
        refused += t[i].refused;
        full += t[i].full;
        timeout += t[i].timeout;
        other += t[i].other;
        owed += t[i].owed;
        late += t[i].settled_late;
    }
    atomic_store(&done, 1);
    pthread_join(holder, NULL);
    /* Before any other section: settled by the loops themselves. */
    CHECK(pgg__bulkhead_owed(&BH) == 0, "%d leaves still owed", pgg__bulkhead_owed(&BH));
    s = atomic_load(&BH.state);
    pgg__bulkhead_counts(&BH, &c);
    printf("%llu entered (%llu after waiting), loops: %llu refused, %llu leaves owed "
           "(%llu looks after their last call); blocking: %llu full, %llu timed out; "
           "max %d inside\n",
           (unsigned long long)ok, (unsigned long long)c.waited, (unsigned long long)refused,
           (unsigned long long)owed, (unsigned long long)late, (unsigned long long)full,
           (unsigned long long)timeout, atomic_load(&max_inside));

    CHECK(other == 0, "%llu unexpected answers", (unsigned long long)other);
    CHECK(atomic_load(&max_inside) <= CAPACITY, "%d inside a bulkhead of %d",
          atomic_load(&max_inside), CAPACITY);
    CHECK(PGG_BULKHEAD_HOLDERS(s) == 0, "%d slots still held", PGG_BULKHEAD_HOLDERS(s));
    CHECK(c.waiting == 0, "%d still waiting", c.waiting);
    CHECK(c.admitted == ok, "admitted %llu, threads saw %llu", (unsigned long long)c.admitted,
          (unsigned long long)ok);
    CHECK(c.rejected_full == refused + full, "rejected %llu, threads saw %llu",
          (unsigned long long)c.rejected_full, (unsigned long long)(refused + full));
    CHECK(c.timed_out == timeout, "timed out %llu, threads saw %llu",
          (unsigned long long)c.timed_out, (unsigned long long)timeout);
    CHECK(owed > 0, "no loop's leave met the lock busy: nothing proved");
    CHECK(refused > 0, "no loop's enter was refused");
    CHECK(c.waited > 0, "no blocking caller queued: the slow path was never taken");
    pgg__bulkhead_destroy(&BH);
    return tsan_exit("tsan_bulkhead_loops");
}
