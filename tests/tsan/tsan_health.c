/*
 * ThreadSanitizer driver: the health thread against everything else.
 *
 * Several rounds, each a new pool with a 10 ms health interval and
 * pool_min_idle (so the health thread probes, warms and reaps all the
 * time) while four threads run calls, an operator thread forces breakers
 * open, resets them, resizes the bulkhead and swaps the event listener,
 * and the main thread reads stats.  Then the load stops and pgg_pool_free
 * races the health thread mid-round; every other round, the replica is
 * hung first, so that the free meets a probe stuck on a hung host.
 *
 * Besides TSan's verdict: no failure that this cannot explain (an operator
 * forcing a breaker open explains PGG_EOPEN), no wrong rows, and the pool's
 * accounting balanced before each free.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pgguard.h"
#include "tsan_util.h"
#include "workload.h"

#define ROUNDS 4
#define SETTINGS                                                            \
    "health_interval_ms=10 pool_min_idle=2 pool_max=4 connect_timeout_ms=500 " \
    "call_timeout_ms=2000 bulkhead.max_concurrent=8 bulkhead.max_wait_ms=100 " \
    "breaker.open_ms=50 breaker.open_max_ms=200 cancel_timeout_ms=200 "     \
    "idle_timeout_ms=30 validate_after_idle_ms=5"

static atomic_int events_a, events_b, stop_operator;

static void listener_a(const pgg_event *ev, void *ud)
{
    pgg_stats s;

    (void)ev;
    pgg_pool_stats(ud, &s);
    atomic_fetch_add(&events_a, 1);
}

static void listener_b(const pgg_event *ev, void *ud)
{
    (void)ev;
    (void)ud;
    atomic_fetch_add(&events_b, 1);
}

static void *operator_thread(void *arg)
{
    pgg_pool *p = arg;
    int i = 0;

    while (!atomic_load(&stop_operator)) {
        int host = i % pgg_pool_host_count(p);

        switch (i++ % 5) {
        case 0:
            pgg_pool_on_event(p, listener_b, p);
            break;
        case 1:
            pgg_pool_force_open(p, host);
            break;
        case 2:
            pgg_pool_reset_breaker(p, host);
            pgg_pool_on_event(p, listener_a, p);
            break;
        case 3:
            pgg_pool_resize_bulkhead(p, 4 + i % 5);
            break;
        default:
            pgg_pool_reset_breaker(p, host);
            break;
        }
        tsan_sleep_ms(20);
    }
    for (int h = 0; h < pgg_pool_host_count(p); h++)
        pgg_pool_reset_breaker(p, h);
    return NULL;
}

int main(void)
{
    char err[2048];
    pgh_cluster *c = pgh_cluster_start(1, err, sizeof err);
    pgh_node *primary, *replica;
    uint64_t reads = 0;

    if (!c) {
        fprintf(stderr, "cluster start: %s\n", err);
        return 1;
    }
    pgh_require_local(c, "hanging a server");
    primary = pgh_cluster_primary(c);
    replica = pgh_cluster_replica(c, 0);
    if (wl_setup(primary) != 0 || pgh_node_wait_replay(replica, primary, 30000) != 0) {
        pgh_cluster_free(c);
        return 1;
    }
    for (int round = 0; round < ROUNDS; round++) {
        wl_options o = {.threads = 4, .timeout_ms = 2000, .seed = (uint64_t)round + 1,
                        .backoff_ms = 2};
        pgg_config *cfg = pgg_config_new();
        char *ci = pgh_cluster_conninfo(c);
        pgg_pool *p = NULL;
        pgg_error e;
        pthread_t op;
        wl_totals t;
        wl *w;

        if (cfg && ci && pgg_config_set_servers(cfg, ci, &e) == PGG_OK &&
            pgg_config_parse(cfg, SETTINGS, &e) == PGG_OK)
            p = pgg_pool_new(cfg, &e);
        free(ci);
        pgg_config_free(cfg);
        if (!p) {
            fprintf(stderr, "pool: %s\n", e.message);
            pgh_cluster_free(c);
            return 1;
        }
        pgg_pool_on_event(p, listener_a, p);
        atomic_store(&stop_operator, 0);
        pthread_create(&op, NULL, operator_thread, p);
        w = wl_start(p, &o);
        if (!w)
            return 1;
        for (int i = 0; i < 40; i++) {
            pgg_stats s;

            pgg_pool_stats(p, &s);
            tsan_sleep_ms(20);
        }
        wl_stop(w);
        atomic_store(&stop_operator, 1);
        pthread_join(op, NULL);
        wl_totals_get(w, &t);
        printf("round %d: %llu reads, %llu writes, %llu leases, %llu failed\n", round,
               (unsigned long long)t.reads, (unsigned long long)t.writes,
               (unsigned long long)t.leases, (unsigned long long)t.failed);
        reads += t.reads;
        CHECK(t.unexpected == 0, "round %d: %llu failures nothing explains", round,
              (unsigned long long)t.unexpected);
        CHECK(t.wrong_answers == 0, "round %d: wrong answers", round);
        CHECK(wl_pool_unbalanced(p) == 0, "round %d: accounting does not balance", round);
        wl_free(w);
        if (round % 2)
            CHECK(pgh_node_hang(replica) == 0, "hang: %s", pgh_node_error(replica));
        else
            tsan_sleep_ms(round * 7); /* land the free at different points of a round */
        pgg_pool_free(p);
        if (round % 2)
            CHECK(pgh_node_resume(replica) == 0, "resume: %s", pgh_node_error(replica));
    }
    printf("tsan_health: events %d + %d\n", atomic_load(&events_a), atomic_load(&events_b));
    CHECK(reads > 0, "no read ever succeeded");
    CHECK(atomic_load(&events_a) + atomic_load(&events_b) > 0, "no listener ever ran");
    pgh_cluster_free(c);
    CHECK(pgh_leak_check() == 0, "memory leaked");
    return tsan_exit("tsan_health");
}
