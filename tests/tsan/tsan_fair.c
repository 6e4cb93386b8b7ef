/*
 * ThreadSanitizer driver: blocking borrowers waiting in turn (host.c,
 * "Waiting in turn").  Eight threads on a pool of two connections, so that
 * most calls queue: long calls that must all be served, calls whose 3 ms
 * deadline runs out in the queue (often as a give-back wakes them: the
 * wake must go on to the next waiter), and calls whose cancel handle
 * another thread fires while they wait.  A connection woken for a waiter
 * that left must be taken by the next one or stay idle: never lost (the
 * long calls would wait out their 20 s), never lent twice (libpq's "another
 * command is already in progress", or TSan on the PGconn).
 *
 * Besides TSan's verdict: every long call served, the queue empty at the
 * end, parking open again, no connection busy, no more open than pool_max,
 * no leak.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pgguard.h"
#include "pool.h"
#include "tsan_util.h"

#define THREADS 8
#define ROUNDS 120
#define SETTINGS                                                               \
    "pool_max=2 pool_min_idle=0 breaker.mode=disabled bulkhead.max_concurrent=64 " \
    "bulkhead.max_wait_ms=20000 connect_timeout_ms=5000 health_interval_ms=1000 "  \
    "cancel_timeout_ms=500"

static pgg_pool *pool;
static pgg_cancel *handles[THREADS];
static atomic_int served, timed_out, cancelled, callers_left;

static void *caller_main(void *arg)
{
    int me = (int)(intptr_t)arg;

    for (int round = 0; round < ROUNDS; round++) {
        int kind = (round + me) % 4; /* 0: short, 1: cancellable, else long */
        pgg_call call = {.timeout_ms = kind == 0 ? 3 : 20000};
        pgg_error e;
        PGresult *r;

        if (kind == 1) {
            pgg_cancel_reset(handles[me]);
            call.cancel = handles[me];
        }
        r = pgg_exec(pool, PGG_WRITE, "SELECT 1", &call, NULL, &e);
        if (r)
            atomic_fetch_add(&served, 1);
        else if (kind == 0 && e.code == PGG_ETIMEDOUT)
            atomic_fetch_add(&timed_out, 1);
        else if (kind == 1 && e.code == PGG_ECANCELED)
            atomic_fetch_add(&cancelled, 1);
        else
            CHECK(false, "caller %d round %d (kind %d): %s %s", me, round, kind,
                  pgg_err_name(e.code), e.message);
        PQclear(r);
    }
    atomic_fetch_sub(&callers_left, 1);
    return NULL;
}

/* Fires the callers' handles one after another while they run. */
static void *firer_main(void *arg)
{
    (void)arg;
    for (int i = 0; atomic_load(&callers_left) > 0; i++) {
        pgg_cancel_fire(handles[i % THREADS]);
        tsan_sleep_ms(1);
    }
    return NULL;
}

int main(void)
{
    char err[2048];
    pgh_cluster *c = pgh_cluster_start(0, err, sizeof err);
    pgg_config *cfg;
    pgg_error e = {0};
    pthread_t t[THREADS], ft;
    pgg_host_stats h;
    pgg_host *host;
    char *ci;

    if (!c) {
        fprintf(stderr, "cluster start: %s\n", err);
        return 1;
    }
    ci = pgh_cluster_conninfo(c);
    cfg = pgg_config_new();
    if (ci && cfg && pgg_config_set_servers(cfg, ci, &e) == PGG_OK &&
        pgg_config_parse(cfg, SETTINGS, &e) == PGG_OK)
        pool = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    free(ci);
    if (!pool) {
        fprintf(stderr, "pool: %s\n", e.message);
        pgh_cluster_free(c);
        return 1;
    }
    for (int i = 0; i < THREADS; i++)
        handles[i] = pgg_cancel_new();
    atomic_store(&callers_left, THREADS);
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, caller_main, (void *)(intptr_t)i);
    pthread_create(&ft, NULL, firer_main, NULL);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_join(ft, NULL);
    host = &pool->hosts[0];
    pthread_mutex_lock(&host->mu);
    CHECK(host->wait_head == NULL && host->wait_tail == NULL, "the queue is not empty");
    CHECK(atomic_load(&host->park_block) == 0, "parking still blocked (%d)",
          atomic_load(&host->park_block));
    pthread_mutex_unlock(&host->mu);
    pgg_pool_host_stats(pool, 0, &h);
    CHECK(h.conns_busy == 0, "%d busy at the end", h.conns_busy);
    CHECK(h.conns_open <= 2, "%d open for pool_max=2", h.conns_open);
    printf("tsan_fair: %d served, %d timed out, %d cancelled\n", atomic_load(&served),
           atomic_load(&timed_out), atomic_load(&cancelled));
    CHECK(atomic_load(&timed_out) > 0, "no call's deadline ran out");
    pgg_pool_free(pool);
    for (int i = 0; i < THREADS; i++)
        pgg_cancel_free(handles[i]);
    pgh_cluster_free(c);
    CHECK(pgh_leak_check() == 0, "memory leaked");
    return tsan_exit("tsan_fair");
}
