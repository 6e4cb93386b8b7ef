/*
 * ThreadSanitizer driver: connects cut by their call's deadline and handed
 * to the health thread (host.c, "Handed connects"), from blocking callers
 * and an event loop at once, the health thread taking them, driving them
 * as spares and adopting their sessions while callers borrow and wait for
 * them, and the pool freed while some are still on their way.
 *
 * A proxy holds each chunk 30 ms, so a connect takes 60 ms at least: calls
 * with a 20 ms deadline cut theirs, calls with 10 s are served (on an
 * adopted spare or a connect of their own).  A loop call is also cancelled
 * at a later moment each round, its connect still on its way on the health
 * thread or ended by it already.  Besides TSan's verdict: every
 * long call served, no failed connect counted (every cut one completes
 * within its 5 s bound), no leak.
 */
#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pool.h"
#include "pgguard.h"
#include "pgguard/adapters/libevent.h"
#include "pgguard_async.h"
#include "tsan_util.h"

#define THREADS 3
#define ROUNDS 12
#define SETTINGS                                                            \
    "pool_max=8 pool_min_idle=0 breaker.mode=disabled connect_timeout_ms=5000 " \
    "health_probe_timeout_ms=5000 idle_timeout_ms=100"

static pgg_pool *pool;
static atomic_int served, cut;

static void one_call(int timeout_ms, const char *who, int round)
{
    pgg_call call = {.timeout_ms = timeout_ms};
    pgg_error e;
    PGresult *r = pgg_exec(pool, PGG_WRITE, "SELECT 1", &call, NULL, &e);

    if (r)
        atomic_fetch_add(&served, 1);
    else if (e.code == PGG_ETIMEDOUT)
        atomic_fetch_add(&cut, 1);
    CHECK(r || timeout_ms < 1000, "%s round %d: %s %s", who, round, pgg_err_name(e.code),
          e.message);
    PQclear(r);
}

static void *caller_main(void *arg)
{
    (void)arg;
    for (int round = 0; round < ROUNDS; round++) {
        one_call(20, "caller", round);
        one_call(20, "caller", round);
        one_call(10000, "caller", round);
    }
    return NULL;
}

static void on_done(pgg_async *ac, PGresult *res, const pgg_info *info,
                    const pgg_error *err, void *ud)
{
    int *code = ud;

    (void)ac;
    (void)info;
    *code = res ? PGG_OK : err->code;
    PQclear(res);
}

static int loop_call(struct event_base *base, pgg_async *ac, int timeout_ms)
{
    pgg_call call = {.timeout_ms = timeout_ms};
    int code = 1;
    pgg_error e;

    if (pgg_async_exec(ac, PGG_WRITE, "SELECT 1", &call, on_done, &code, NULL, &e) != PGG_OK)
        return e.code;
    while (code == 1)
        event_base_loop(base, EVLOOP_ONCE);
    return code;
}

/* A loop call cancelled after ms with the loop not turning: its connect,
 * asked of the health thread (host.c, "Asked connects"), is still on its
 * way (handed on as a spare) or was ended by the health thread meanwhile
 * (async.c, connect_ask_end: its session joins the pool). */
static int loop_cancel(pgg_async *ac, int ms)
{
    pgg_call call = {.timeout_ms = 10000};
    pgg_async_call *k;
    int code = 1;
    pgg_error e;

    /* No idle session to take: the call connects (white box). */
    pgg__host_trim(&pool->hosts[0], pgg__now_ns(), true);
    if (pgg_async_exec(ac, PGG_WRITE, "SELECT 1", &call, on_done, &code, &k, &e) != PGG_OK)
        return e.code;
    tsan_sleep_ms(ms);
    pgg_async_cancel(k);
    return code;
}

static void *loop_main(void *arg)
{
    struct event_base *base = event_base_new();
    pgg_error e;
    pgg_async *ac = base ? pgg_async_new(pool, &e) : NULL;

    (void)arg;
    if (!ac || pgg_async_libevent_attach(ac, base) != PGG_OK) {
        CHECK(false, "no loop context");
        return NULL;
    }
    for (int round = 0; round < ROUNDS; round++) {
        int code = loop_call(base, ac, 20);

        CHECK(code == PGG_OK || code == PGG_ETIMEDOUT, "loop round %d: %s", round,
              pgg_err_name(code));
        code = loop_call(base, ac, 10000);
        CHECK(code == PGG_OK, "loop round %d: %s", round, pgg_err_name(code));
        pgg_async_give_back(ac);
        code = loop_cancel(ac, 20 * round);
        CHECK(code != 1, "loop round %d: no callback at the cancel", round);
        /* What it keeps goes back: the next short call connects. */
        pgg_async_give_back(ac);
    }
    pgg_async_free(ac);
    event_base_free(base);
    return NULL;
}

int main(void)
{
    char err[2048];
    pgh_cluster *c = pgh_cluster_start(0, err, sizeof err);
    pgh_proxy *px = NULL;
    pgg_config *cfg;
    pgg_error e = {0};
    pthread_t t[THREADS], lt;
    pgg_host_stats h;
    char *ci = NULL;

    if (!c) {
        fprintf(stderr, "cluster start: %s\n", err);
        return 1;
    }
    px = pgh_proxy_start(pgh_node_host(pgh_cluster_primary(c)),
                         pgh_node_port(pgh_cluster_primary(c)), err, sizeof err);
    if (px)
        ci = pgh_conninfo_at(pgh_node_conninfo(pgh_cluster_primary(c)), "127.0.0.1",
                             pgh_proxy_port(px));
    cfg = pgg_config_new();
    if (ci && cfg && pgg_config_set_servers(cfg, ci, &e) == PGG_OK &&
        pgg_config_parse(cfg, SETTINGS, &e) == PGG_OK)
        pool = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    free(ci);
    if (!pool) {
        fprintf(stderr, "pool: %s %s\n", e.message, px ? "" : err);
        pgh_proxy_free(px);
        pgh_cluster_free(c);
        return 1;
    }
    pgh_proxy_set_mode(px, PGH_PROXY_DELAY, 30);
    pthread_create(&lt, NULL, loop_main, NULL);
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, caller_main, NULL);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_join(lt, NULL);
    pgg_pool_host_stats(pool, 0, &h);
    CHECK(h.connect_failures == 0, "%llu failed connects counted",
          (unsigned long long)h.connect_failures);
    CHECK(h.conns_busy == 0, "%d busy at the end", h.conns_busy);
    /* A last burst of cut connects, still on their way at the free. */
    for (int i = 0; i < 4; i++)
        one_call(20, "last", i);
    printf("tsan_handed: %d served, %d cut\n", atomic_load(&served), atomic_load(&cut));
    CHECK(atomic_load(&cut) > 0, "no call's connect was cut");
    pgg_pool_free(pool);
    pgh_proxy_free(px);
    pgh_cluster_free(c);
    CHECK(pgh_leak_check() == 0, "memory leaked");
    return tsan_exit("tsan_handed");
}
