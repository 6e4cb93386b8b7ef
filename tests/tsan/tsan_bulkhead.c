/*
 * ThreadSanitizer driver: eight threads entering and leaving one bulkhead,
 * a quarter of them willing to wait, while another thread resizes it
 * (1..4 slots) and another reads its counts.  Besides TSan's verdict: every
 * attempt is accounted for exactly (entered, full, timed out), the counts
 * agree with what the threads saw, and no more threads are ever inside
 * than the largest capacity.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "bulkhead.h"
#include "clock.h"
#include "tsan_util.h"

#define THREADS 8
#define CALLS 50000
#define CAPACITY_MAX 4

static pgg_bulkhead BH;
static atomic_int inside, max_inside, done;

typedef struct tally {
    pthread_t th;
    uint64_t seed;
    uint64_t ok, full, timeout, other;
} tally;

static void *worker(void *arg)
{
    tally *t = arg;

    for (int i = 0; i < CALLS; i++) {
        uint64_t r = tsan_xorshift(&t->seed);
        int64_t now = pgg__now_ns();
        /* A quarter of the callers may wait a little, the others not at all. */
        int rc = pgg__bulkhead_enter(&BH, r % 4 ? now : now + (int64_t)(r % 200) * PGG_NS_PER_US,
                                     now);
        int n, m;

        switch (rc) {
        case PGG_OK:
            n = atomic_fetch_add(&inside, 1) + 1;
            m = atomic_load(&max_inside);
            while (n > m && !atomic_compare_exchange_weak(&max_inside, &m, n))
                ;
            if (r % 64 == 0) /* hold on, so that the slots fill up */
                sched_yield();
            atomic_fetch_sub(&inside, 1);
            pgg__bulkhead_leave(&BH);
            t->ok++;
            break;
        case PGG_EBULKHEAD:
            t->full++;
            break;
        case PGG_ETIMEDOUT:
            t->timeout++;
            break;
        default:
            t->other++;
            break;
        }
    }
    return NULL;
}

static void *resizer(void *arg)
{
    int i = 0;

    (void)arg;
    while (!atomic_load(&done)) {
        pgg_bulkhead_counts c;

        pgg__bulkhead_resize(&BH, 1 + i++ % CAPACITY_MAX);
        pgg__bulkhead_counts(&BH, &c); /* a scrape racing the callers */
        tsan_sleep_ms(1);
    }
    return NULL;
}

int main(void)
{
    tally t[THREADS];
    pgg_bulkhead_counts c;
    pthread_t rs;
    uint64_t ok = 0, full = 0, timeout = 0, other = 0;

    if (pgg__bulkhead_init(&BH, 2, NULL, NULL) != PGG_OK) {
        fprintf(stderr, "bulkhead init failed\n");
        return 1;
    }
    pthread_create(&rs, NULL, resizer, NULL);
    for (int i = 0; i < THREADS; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].seed = 0x2545F4914F6CDD1Du * (uint64_t)(i + 1);
        pthread_create(&t[i].th, NULL, worker, &t[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i].th, NULL);
        ok += t[i].ok;
        full += t[i].full;
        timeout += t[i].timeout;
        other += t[i].other;
    }
    atomic_store(&done, 1);
    pthread_join(rs, NULL);
    pgg__bulkhead_counts(&BH, &c);
    printf("%llu entered (%llu after waiting), %llu full, %llu timed out, max %d inside\n",
           (unsigned long long)ok, (unsigned long long)c.waited, (unsigned long long)full,
           (unsigned long long)timeout, atomic_load(&max_inside));

    CHECK(other == 0, "%llu unexpected answers", (unsigned long long)other);
    CHECK(ok + full + timeout == (uint64_t)THREADS * CALLS, "an attempt went missing");
    CHECK(c.admitted == ok, "admitted %llu, threads saw %llu", (unsigned long long)c.admitted,
          (unsigned long long)ok);
    CHECK(c.rejected_full == full, "rejected %llu, threads saw %llu",
          (unsigned long long)c.rejected_full, (unsigned long long)full);
    CHECK(c.timed_out == timeout, "timed out %llu, threads saw %llu",
          (unsigned long long)c.timed_out, (unsigned long long)timeout);
    CHECK(c.waited <= c.admitted, "more waited than entered");
    CHECK(c.in_use == 0, "%d slots still held", c.in_use);
    CHECK(c.waiting == 0, "%d still waiting", c.waiting);
    CHECK(atomic_load(&max_inside) <= CAPACITY_MAX, "%d holders at once",
          atomic_load(&max_inside));
    CHECK(full > 0, "the bulkhead was never full: the driver tested nothing");
    pgg__bulkhead_destroy(&BH);
    return tsan_exit("tsan_bulkhead");
}
