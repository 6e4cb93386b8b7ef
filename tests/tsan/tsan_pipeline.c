/*
 * ThreadSanitizer driver for pipeline=on: sixteen threads share a host's
 * pipelined connection, so that leadership passes between them all the
 * time (a leader whose answer came hands the reading to the oldest caller
 * still waiting), while some calls give up at short deadlines in every
 * state (queued, being sent, in flight), some fail on the server, some use
 * a prepared statement, and the backends are terminated and the server
 * hung and resumed in the middle.
 *
 * Besides TSan's verdict: every answer is the caller's own (each call asks
 * for a value of its own and checks it), every failure is one the faults
 * or deadlines explain, statements did go through the shared connection,
 * and the pool's accounting balances at the end with nothing leaked.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pipeline.h"
#include "pool.h"
#include "tsan_util.h"

#define THREADS 16
#define SETTINGS                                                            \
    "pipeline=on pipeline.stall_ms=0 health_interval_ms=50 "                \
    "connect_timeout_ms=1000 call_timeout_ms=3000 pool_max=8 "              \
    "bulkhead.max_concurrent=32 breaker.mode=disabled cancel_timeout_ms=500"

static atomic_int stop;
static atomic_long answers, wrong, unexplained, timeouts, server_errors, lost;

static void *caller(void *arg)
{
    pgg_pool *p = arg;
    unsigned seed = (unsigned)(uintptr_t)&seed;

    for (long i = 0; !atomic_load(&stop); i++) {
        char v[32];
        const char *vals[1] = {v};
        unsigned r = rand_r(&seed);
        /* Mostly generous deadlines; some short enough to expire while
         * queued or in flight. */
        pgg_call call = {.timeout_ms = r % 8 == 0 ? 1 + (int)(r % 3) : 2000};
        pgg_error e;
        PGresult *res;
        bool fail = r % 13 == 0;

        snprintf(v, sizeof v, "%u", r % 1000000);
        if (fail)
            res = pgg_exec_params(p, PGG_READ, "SELECT 1 / ($1::int * 0)", 1, NULL, vals,
                                  NULL, NULL, &call, NULL, &e);
        else if (r % 3 == 0)
            res = pgg_exec_prepared(p, PGG_READ, "echo", 1, vals, NULL, NULL, &call, NULL, &e);
        else
            res = pgg_exec_params(p, r % 2 ? PGG_READ : PGG_WRITE, "SELECT $1::int", 1, NULL,
                                  vals, NULL, NULL, &call, NULL, &e);
        if (res && PQresultStatus(res) == PGRES_TUPLES_OK) {
            atomic_fetch_add(&answers, 1);
            if (fail || PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), v) != 0)
                atomic_fetch_add(&wrong, 1);
        } else if (res && e.code == PGG_ESERVER && fail && strcmp(e.sqlstate, "22012") == 0) {
            /* A user error comes back as the server's error result. */
            atomic_fetch_add(&server_errors, 1);
        } else if (!res && e.code == PGG_ETIMEDOUT) {
            atomic_fetch_add(&timeouts, 1);
        } else if (!res && (e.code == PGG_ECONNECT || e.code == PGG_EUNAVAILABLE)) {
            atomic_fetch_add(&lost, 1); /* the terminate */
        } else {
            if (atomic_fetch_add(&unexplained, 1) < 5)
                fprintf(stderr, "tsan_pipeline: unexplained: %s: %s\n", pgg_err_name(e.code),
                        res ? PQresultErrorMessage(res) : e.message);
        }
        PQclear(res);
    }
    return NULL;
}

int main(void)
{
    char err[2048];
    pgh_cluster *c = pgh_cluster_start(0, err, sizeof err);
    pthread_t t[THREADS];
    pgg_config *cfg;
    pgg_error e;
    pgg_pool *p = NULL;
    pgh_node *primary;
    char *ci;

    if (!c) {
        fprintf(stderr, "cluster start: %s\n", err);
        return 1;
    }
    pgh_require_local(c, "hanging a server");
    primary = pgh_cluster_primary(c);
    ci = pgh_cluster_conninfo(c);
    cfg = pgg_config_new();
    if (cfg && ci && pgg_config_set_servers(cfg, ci, &e) == PGG_OK &&
        pgg_config_parse(cfg, SETTINGS, &e) == PGG_OK)
        p = pgg_pool_new(cfg, &e);
    free(ci);
    pgg_config_free(cfg);
    if (!p || pgg_pool_prepare(p, "echo", "SELECT $1::int", 1, NULL, &e) != PGG_OK) {
        fprintf(stderr, "pool: %s\n", e.message);
        pgh_cluster_free(c);
        return 1;
    }
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, caller, p);
    tsan_sleep_ms(1500);
    CHECK(pgh_node_terminate_backends(primary) == 0, "terminate: %s", pgh_node_error(primary));
    tsan_sleep_ms(1000);
    CHECK(pgh_node_hang(primary) == 0, "hang: %s", pgh_node_error(primary));
    tsan_sleep_ms(300);
    CHECK(pgh_node_resume(primary) == 0, "resume: %s", pgh_node_error(primary));
    tsan_sleep_ms(1500);
    atomic_store(&stop, 1);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);

    printf("tsan_pipeline: %llu pipelined, %ld answers, %ld server errors, %ld timeouts, "
           "%ld lost, %ld wrong, %ld unexplained\n",
           (unsigned long long)pgg__pipes_sent(p->pipes), atomic_load(&answers), atomic_load(&server_errors), atomic_load(&timeouts),
           atomic_load(&lost), atomic_load(&wrong), atomic_load(&unexplained));
    CHECK(atomic_load(&wrong) == 0, "answers went to the wrong caller");
    CHECK(atomic_load(&unexplained) == 0, "failures no fault explains");
    CHECK(atomic_load(&answers) > 0 && atomic_load(&server_errors) > 0,
          "some kind of call never completed");
    CHECK(pgg__pipes_sent(p->pipes) > 0, "nothing went through the shared connection");
    {
        pgg_stats s;
        pgg_host_stats h;

        pgg_pool_stats(p, &s);
        pgg_pool_host_stats(p, 0, &h);
        CHECK(s.bulkhead_in_use == 0 && h.conns_busy == 0,
              "the pool's accounting does not balance: %d slots, %d connections busy",
              s.bulkhead_in_use, h.conns_busy);
    }
    pgg_pool_free(p);
    pgh_cluster_free(c);
    CHECK(pgh_leak_check() == 0, "memory leaked");
    return tsan_exit("tsan_pipeline");
}
