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

#define SCENARIO_CALLS CALLS
#include "tests/unit/bulkhead_scenario.h"

static atomic_int done;

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
    bh_tally t[THREADS];
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
        pthread_create(&t[i].th, NULL, bulkhead_worker, &t[i]);
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
