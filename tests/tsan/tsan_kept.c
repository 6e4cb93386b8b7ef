/*
 * ThreadSanitizer driver: the process-wide list of contexts that keep
 * connections (async.c, kept_all) under loops that enter and leave it at
 * once, with the lock the loops only try held by other threads.
 *
 * LOOPS loop threads, each ROUNDS rounds: a fresh context, a call that
 * keeps the connection (the context enters the list: a compare-and-swap
 * push, racing the other loops' pushes and the holders' unlinks), a
 * give-back (it leaves the list if kept_mu is free, else stays listed), a
 * call that keeps one again, a blocking call that waits for it (pool_max
 * is LOOPS: every connection is kept; its borrow has this thread give
 * back what it keeps, walking the list under kept_mu), another kept, and
 * a free on the loop's thread (out of the list, or its entry left gone for
 * the next holder to free).  Meanwhile a holder thread takes kept_mu over
 * and over and walks the list (pgg__async_kept_listed), so that the loops'
 * tries fail often.
 *
 * Besides TSan's verdict: every call served, the pool balanced at the end,
 * every gone entry freed by a later holder (the list empty once a last
 * context left it), no leak.
 */
#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#include "async.h"
#include "harness.h"
#include "host.h"
#include "pgguard.h"
#include "pgguard/adapters/libevent.h"
#include "pgguard_async.h"
#include "pool.h"
#include "tsan_util.h"

#define LOOPS 3
#define ROUNDS 25
#define SETTINGS                                                               \
    "pool_max=3 pool_min_idle=0 breaker.mode=disabled call_timeout_ms=20000 " \
    "connect_timeout_ms=10000"

static pgg_pool *pool;
static atomic_bool loops_over;
static atomic_int holds;

static void on_done(pgg_async *ac, PGresult *res, const pgg_info *info,
                    const pgg_error *err, void *ud)
{
    int *code = ud;

    (void)ac;
    (void)info;
    *code = res ? PGG_OK : err->code;
    PQclear(res);
}

/* One call on the loop, run to its end. */
static int loop_call(struct event_base *base, pgg_async *ac)
{
    int code = 1;
    pgg_error e;

    if (pgg_async_exec(ac, PGG_WRITE, "SELECT 1", NULL, on_done, &code, NULL, &e) != PGG_OK)
        return e.code;
    while (code == 1)
        event_base_loop(base, EVLOOP_ONCE);
    return code;
}

static void *loop_main(void *arg)
{
    int id = (int)(intptr_t)arg;

    for (int round = 0; round < ROUNDS; round++) {
        struct event_base *base = event_base_new();
        pgg_error e;
        pgg_async *ac = base ? pgg_async_new(pool, &e) : NULL;
        pgg_call call = {.timeout_ms = 20000};
        PGresult *r;
        int code;

        if (!ac || pgg_async_libevent_attach(ac, base) != PGG_OK) {
            CHECK(false, "loop %d round %d: no context", id, round);
            break;
        }
        code = loop_call(base, ac);
        CHECK(code == PGG_OK, "loop %d round %d: %s", id, round, pgg_err_name(code));
        pgg_async_give_back(ac);
        code = loop_call(base, ac);
        CHECK(code == PGG_OK, "loop %d round %d: %s", id, round, pgg_err_name(code));
        /* Every connection may be kept by a loop now: a blocking borrow
         * on this thread has this thread's context give back first. */
        r = pgg_exec(pool, PGG_WRITE, "SELECT 1", &call, NULL, &e);
        CHECK(r != NULL, "loop %d round %d: the blocking call: %s %s", id, round,
              pgg_err_name(e.code), e.message);
        PQclear(r);
        code = loop_call(base, ac);
        CHECK(code == PGG_OK, "loop %d round %d: %s", id, round, pgg_err_name(code));
        pgg_async_free(ac);
        event_base_free(base);
    }
    return NULL;
}

/* kept_mu held over and over, the list walked under it. */
static void *holder_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&loops_over)) {
        pthread_mutex_lock(pgg__async_kept_mutex());
        tsan_sleep_ms(1);
        pthread_mutex_unlock(pgg__async_kept_mutex());
        (void)pgg__async_kept_listed();
        atomic_fetch_add(&holds, 1);
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
    pthread_t lt[LOOPS], ht;
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
    pthread_create(&ht, NULL, holder_main, NULL);
    for (int i = 0; i < LOOPS; i++)
        pthread_create(&lt[i], NULL, loop_main, (void *)(intptr_t)i);
    for (int i = 0; i < LOOPS; i++)
        pthread_join(lt[i], NULL);
    atomic_store(&loops_over, true);
    pthread_join(ht, NULL);
    printf("tsan_kept: %d loops x %d rounds, kept_mu held %d times meanwhile, %d entries "
           "listed at the end\n",
           LOOPS, ROUNDS, atomic_load(&holds), pgg__async_kept_listed());
    {
        /* A last context leaves the list with the lock free: it frees the
         * gone entries left. */
        struct event_base *base = event_base_new();
        pgg_async *ac = pgg_async_new(pool, &e);

        CHECK(ac && pgg_async_libevent_attach(ac, base) == PGG_OK, "no last context");
        CHECK(loop_call(base, ac) == PGG_OK, "the last call failed");
        pgg_async_free(ac);
        event_base_free(base);
        CHECK(pgg__async_kept_listed() == 0, "%d entries left in the list",
              pgg__async_kept_listed());
    }
    for (int i = 0; i < pool->nhosts; i++) {
        pgg_host_stats h;

        pgg_pool_host_stats(pool, i, &h);
        CHECK(h.conns_busy == 0, "host %d: %d busy at the end", i, h.conns_busy);
        CHECK(atomic_load(&pool->hosts[i].n_kept) == 0, "host %d: still counted kept", i);
    }
    pgg_pool_free(pool);
    pgh_cluster_free(c);
    CHECK(pgh_leak_check() == 0, "memory leaked");
    return tsan_exit("tsan_kept");
}
