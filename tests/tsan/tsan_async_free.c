/*
 * ThreadSanitizer driver: a loop context freed on another thread while its
 * loop's thread goes on making blocking calls (pgguard_async.h allows it
 * once the loop no longer runs the context).
 *
 * Each round, the loop's thread runs one call on a fresh context, which
 * keeps its connection (pool_max=1: the pool's only one), hands the
 * context over to the freeing thread, and at once makes a blocking call
 * that must wait for that connection: its borrow has the thread's loops
 * give back what they keep (kept_thread_give_back, under kept_mu) while
 * the other thread frees the same context (pgg_async_free: out of the
 * list under kept_mu, then its own give-back).  Whichever comes first,
 * the connection goes back once, the blocking call is served, and nothing
 * of the freed context is touched after the free (every fourth round the
 * free comes late, so that both orders are run).  Odd rounds give back
 * with pgg_async_give_back before the hand-over instead.
 *
 * Besides TSan's verdict: every blocking call served, the pool balanced
 * (nothing busy, nothing counted kept) after each round, no leak.
 */
#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "async.h"
#include "harness.h"
#include "host.h"
#include "pgguard.h"
#include "pgguard/adapters/libevent.h"
#include "pgguard_async.h"
#include "pool.h"
#include "tsan_util.h"

#define ROUNDS 40
#define SETTINGS                                                            \
    "pool_max=1 pool_min_idle=0 breaker.mode=disabled call_timeout_ms=20000 " \
    "connect_timeout_ms=10000"

static pgg_pool *pool;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static pgg_async *handed; /* to the freeing thread */
static int freed;         /* rounds the freeing thread has done */
static bool loop_over;    /* the loop's thread hands nothing more over */

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

    if (pgg_async_exec(ac, PGG_WRITE, "SELECT 1", NULL, on_done, &code, NULL, &e) !=
        PGG_OK)
        return e.code;
    while (code == 1)
        event_base_loop(base, EVLOOP_ONCE);
    return code;
}

static void *freer_main(void *arg)
{
    (void)arg;
    for (int round = 0; round < ROUNDS; round++) {
        pgg_async *ac;

        pthread_mutex_lock(&mu);
        while (!handed && !loop_over)
            pthread_cond_wait(&cv, &mu);
        ac = handed;
        handed = NULL;
        pthread_mutex_unlock(&mu);
        if (!ac)
            break;
        /* Every other even round, late: the loop's thread's borrow gives
         * back first, and the free finds nothing kept. */
        if (round % 4 == 2)
            tsan_sleep_ms(20);
        pgg_async_free(ac);
        pthread_mutex_lock(&mu);
        freed++;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
    }
    return NULL;
}

static void *loop_main(void *arg)
{
    (void)arg;
    for (int round = 0; round < ROUNDS; round++) {
        struct event_base *base = event_base_new();
        pgg_error e;
        pgg_async *ac = base ? pgg_async_new(pool, &e) : NULL;
        pgg_call call = {.timeout_ms = 20000};
        PGresult *r;
        int code;

        if (!ac || pgg_async_libevent_attach(ac, base) != PGG_OK) {
            CHECK(false, "round %d: no context", round);
            break;
        }
        code = loop_call(base, ac);
        CHECK(code == PGG_OK, "round %d: the loop call failed: %s", round, pgg_err_name(code));
        CHECK(pgg__async_kept(ac) == 1, "round %d: %d kept", round, pgg__async_kept(ac));
        if (round % 2)
            pgg_async_give_back(ac);
        /* The loop stops running the context: the other thread frees it. */
        pthread_mutex_lock(&mu);
        handed = ac;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
        /* The pool's only connection is kept (or being given back): this
         * call waits for it. */
        r = pgg_exec(pool, PGG_WRITE, "SELECT 1", &call, NULL, &e);
        CHECK(r != NULL, "round %d: the blocking call: %s %s", round, pgg_err_name(e.code),
              e.message);
        PQclear(r);
        pthread_mutex_lock(&mu);
        while (freed <= round)
            pthread_cond_wait(&cv, &mu);
        pthread_mutex_unlock(&mu);
        {
            pgg_host_stats h;

            pgg_pool_host_stats(pool, 0, &h);
            CHECK(h.conns_busy == 0, "round %d: %d busy after the round", round,
                  h.conns_busy);
            CHECK(atomic_load(&pool->hosts[0].n_kept) == 0, "round %d: still counted kept",
                  round);
        }
        event_base_free(base);
    }
    pthread_mutex_lock(&mu);
    loop_over = true;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    return NULL;
}

int main(void)
{
    char err[2048];
    pgh_cluster *c = pgh_cluster_start(0, err, sizeof err);
    pgg_config *cfg;
    pgg_error e = {0};
    pthread_t lt, ft;
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
    pthread_create(&ft, NULL, freer_main, NULL);
    pthread_create(&lt, NULL, loop_main, NULL);
    pthread_join(lt, NULL);
    pthread_join(ft, NULL);
    printf("tsan_async_free: %d rounds freed on the other thread\n", freed);
    pgg_pool_free(pool);
    pgh_cluster_free(c);
    CHECK(pgh_leak_check() == 0, "memory leaked");
    return tsan_exit("tsan_async_free");
}
