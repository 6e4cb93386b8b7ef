/*
 * ThreadSanitizer driver: eight threads of reads, writes and lease
 * transactions on one pool over a primary and a replica (the soak's load,
 * tests/soak/workload.c), a ninth scraping stats and metrics, an event
 * listener, and faults in the middle: the primary's backends terminated,
 * the replica stopped and started again, then hung and resumed.
 *
 * Besides TSan's verdict: no failure that the faults cannot explain, no
 * wrong rows, every acknowledged write on the primary, and the pool's
 * accounting balanced at the end.  Deadlines are not checked here: TSan
 * slows everything down (the soak checks them).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pgguard.h"
#include "tsan_util.h"
#include "workload.h"

#define SETTINGS                                                            \
    "health_interval_ms=50 connect_timeout_ms=1000 call_timeout_ms=3000 "   \
    "pool_max=4 bulkhead.max_concurrent=8 bulkhead.max_wait_ms=200 "        \
    "breaker.consecutive_failures=3 breaker.open_ms=300 "                   \
    "breaker.open_max_ms=1000 cancel_timeout_ms=500"

static atomic_int events, stop_scraper;

static void on_event(const pgg_event *ev, void *ud)
{
    pgg_pool *p = ud;
    pgg_host_stats h;

    /* a listener may call into the pool */
    pgg_pool_host_stats(p, ev->host_index, &h);
    atomic_fetch_add(&events, 1);
}

static void *scraper(void *arg)
{
    pgg_pool *p = arg;
    char *buf = NULL;
    size_t cap = 0;

    while (!atomic_load(&stop_scraper)) {
        pgg_stats s;
        size_t need = 0;

        pgg_pool_stats(p, &s);
        for (int i = 0; i < pgg_pool_host_count(p); i++) {
            pgg_host_stats h;
            pgg_pool_host_stats(p, i, &h);
        }
        if (pgg_pool_metrics(p, buf, cap, &need) != PGG_OK && need > cap) {
            cap = need + 4096;
            buf = realloc(buf, cap);
            if (!buf)
                abort();
        }
        tsan_sleep_ms(5);
    }
    free(buf);
    return NULL;
}

/* Failed attempts and connects on every host: the pool may hide a fault
 * from its callers (a read retried elsewhere), never from these counters. */
static uint64_t host_failures(pgg_pool *p)
{
    uint64_t n = 0;

    for (int i = 0; i < pgg_pool_host_count(p); i++) {
        pgg_host_stats h;

        pgg_pool_host_stats(p, i, &h);
        n += h.connect_failures;
        for (int k = 0; k < PGG_CLASS_SLOTS; k++)
            n += h.failures[k];
    }
    return n;
}

static pgg_pool *make_pool(pgh_cluster *c)
{
    pgg_config *cfg = pgg_config_new();
    char *ci = pgh_cluster_conninfo(c);
    pgg_error e;
    pgg_pool *p = NULL;

    if (cfg && ci && pgg_config_set_servers(cfg, ci, &e) == PGG_OK &&
        pgg_config_parse(cfg, SETTINGS, &e) == PGG_OK)
        p = pgg_pool_new(cfg, &e);
    if (!p)
        fprintf(stderr, "pool: %s\n", e.message);
    free(ci);
    pgg_config_free(cfg);
    return p;
}

int main(void)
{
    char err[2048];
    pgh_cluster *c = pgh_cluster_start(1, err, sizeof err);
    pgh_node *primary, *replica;
    wl_options o = {.threads = 8, .timeout_ms = 3000, .seed = 42, .backoff_ms = 5};
    pthread_t sc;
    wl_totals t;
    pgg_pool *p;
    wl *w;

    if (!c) {
        fprintf(stderr, "cluster start: %s\n", err);
        return 1;
    }
    pgh_require_local(c, "stopping and hanging a server");
    primary = pgh_cluster_primary(c);
    replica = pgh_cluster_replica(c, 0);
    if (wl_setup(primary) != 0 || pgh_node_wait_replay(replica, primary, 30000) != 0 ||
        !(p = make_pool(c))) {
        pgh_cluster_free(c);
        return 1;
    }
    pgg_pool_on_event(p, on_event, p);
    pthread_create(&sc, NULL, scraper, p);
    w = wl_start(p, &o);
    if (!w)
        return 1;

    tsan_sleep_ms(1500);
    CHECK(pgh_node_terminate_backends(primary) == 0, "terminate: %s", pgh_node_error(primary));
    tsan_sleep_ms(1000);
    CHECK(pgh_node_stop(replica, PGH_STOP_IMMEDIATE) == 0, "stop: %s", pgh_node_error(replica));
    tsan_sleep_ms(500);
    CHECK(pgh_node_start(replica) == 0, "start: %s", pgh_node_error(replica));
    tsan_sleep_ms(1000);
    CHECK(pgh_node_hang(replica) == 0, "hang: %s", pgh_node_error(replica));
    tsan_sleep_ms(800);
    CHECK(pgh_node_resume(replica) == 0, "resume: %s", pgh_node_error(replica));
    tsan_sleep_ms(2500);

    wl_stop(w);
    atomic_store(&stop_scraper, 1);
    pthread_join(sc, NULL);
    wl_print(w, "tsan_pool");
    wl_totals_get(w, &t);
    printf("tsan_pool: %d events, %llu failed attempts or connects on the hosts\n",
           atomic_load(&events), (unsigned long long)host_failures(p));
    CHECK(t.unexpected == 0, "%llu failures no fault explains", (unsigned long long)t.unexpected);
    CHECK(t.wrong_answers == 0, "%llu wrong answers", (unsigned long long)t.wrong_answers);
    CHECK(t.reads > 0 && t.writes > 0 && t.leases > 0, "some kind of call never succeeded");
    CHECK(host_failures(p) > 0, "no attempt failed on any host: the faults missed the pool");
    CHECK(wl_missing_writes(w, primary) == 0, "acknowledged writes are missing");
    CHECK(wl_pool_unbalanced(p) == 0, "the pool's accounting does not balance");
    wl_free(w);
    pgg_pool_free(p);
    pgh_cluster_free(c);
    CHECK(pgh_leak_check() == 0, "memory leaked");
    return tsan_exit("tsan_pool");
}
