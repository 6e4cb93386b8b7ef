/*
 * The libuv and libev adapters (pgguard/adapters/libuv.h, libev.h) on the
 * scenario that exercises every hook: reads and writes routed and answered
 * (read and write interests, sockets closed and reused), parameters, and a
 * hung primary (SIGSTOP) whose calls end at their deadline by the
 * context's timer.  test_async.c covers the front itself on libevent.
 */
#include <ev.h>
#include <uv.h>

#include "pool.h"
#include "pool_util.h"
#include "chain_util.h"
#include "pgguard/adapters/libev.h"
#include "pgguard/adapters/libuv.h"

#define HUNG_TIMEOUT_MS 300

typedef struct outcome {
    int done, code, host_index;
    double started, ms;
    char value[64];
    char message[512];
} outcome;

static void on_done(pgg_async *ac, PGresult *res, const pgg_info *info,
                    const pgg_error *err, void *ud)
{
    outcome *o = ud;

    (void)ac;
    o->done++;
    o->code = err->code;
    o->host_index = info->host_index;
    o->ms = pgh_now_ms() - o->started;
    snprintf(o->message, sizeof o->message, "%s", err->message);
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0)
        snprintf(o->value, sizeof o->value, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
}

/* One turn of the loop under test. */
typedef void (*turn_fn)(void *loop);

static void wait_all(turn_fn turn, void *loop, outcome *o, int n, int timeout_ms)
{
    double end = pgh_now_ms() + timeout_ms;

    for (;;) {
        int left = 0;

        for (int i = 0; i < n; i++)
            left += o[i].done == 0;
        if (!left || pgh_now_ms() > end)
            break;
        turn(loop);
    }
    for (int i = 0; i < n; i++)
        cr_assert_eq(o[i].done, 1, "call %d: callback ran %d times", i, o[i].done);
}

static void start(pgg_async *ac, pgg_intent intent, const char *sql, int timeout_ms,
                  outcome *o)
{
    pgg_call call = {.timeout_ms = timeout_ms};
    pgg_error e;

    *o = (outcome){.started = pgh_now_ms()};
    cr_assert_eq(pgg_async_exec(ac, intent, sql, &call, on_done, o, NULL, &e), PGG_OK,
                 "%s: %s", sql, e.message);
}

/* The scenario, on a context attached to the loop under test. */
static void scenario(pgh_cluster *c, pgg_pool *p, pgg_async *ac, turn_fn turn,
                     void *loop, const char *name)
{
    outcome o[6];
    const char *v[] = {"6"};
    pgg_error e;
    double worst = 0;

    for (int round = 0; round < 3; round++) {
        start(ac, PGG_READ, "SELECT 'r'", 0, &o[0]);
        start(ac, PGG_WRITE, "SELECT 'w'", 0, &o[1]);
        o[2] = (outcome){.started = pgh_now_ms()};
        cr_assert_eq(pgg_async_exec_params(ac, PGG_READ, "SELECT $1::int * 7", 1, NULL, v,
                                           NULL, NULL, NULL, on_done, &o[2], NULL, &e),
                     PGG_OK, "%s", e.message);
        wait_all(turn, loop, o, 3, 5000);
        cr_expect_str_eq(o[0].value, "r", "%s", o[0].message);
        cr_expect_eq(o[0].host_index, 1);
        cr_expect_str_eq(o[1].value, "w", "%s", o[1].message);
        cr_expect_eq(o[1].host_index, 0);
        cr_expect_str_eq(o[2].value, "42", "%s", o[2].message);
    }

    cr_assert_eq(pgh_node_hang(pgh_cluster_primary(c)), 0);
    for (int i = 0; i < 4; i++)
        start(ac, PGG_WRITE, "SELECT 1", HUNG_TIMEOUT_MS, &o[i]);
    wait_all(turn, loop, o, 4, 10 * HUNG_TIMEOUT_MS);
    cr_assert_eq(pgh_node_resume(pgh_cluster_primary(c)), 0);
    for (int i = 0; i < 4; i++) {
        cr_expect_eq(o[i].code, PGG_ETIMEDOUT, "hung call %d: %s %s", i,
                     pgg_err_name(o[i].code), o[i].message);
        if (o[i].ms > worst)
            worst = o[i].ms;
    }
    fprintf(stderr, "async on %s: hung calls, worst %.2f ms for a %d ms deadline\n", name,
            worst, HUNG_TIMEOUT_MS);
    /* The bound of the blocking hung-server tests (test_watchdog.c), plus
     * the millisecond libuv's timers round up to. */
    cr_expect_leq(worst, HUNG_TIMEOUT_MS + 1.0 + 50.0, "a call took %.2f ms", worst);

    start(ac, PGG_WRITE, "SELECT 1", 0, &o[0]);
    wait_all(turn, loop, o, 1, 5000);
    cr_expect_eq(o[0].code, PGG_OK, "after the resume: %s", o[0].message);
    cr_expect_eq(pgg_async_pending(ac), 0);
    (void)p;
}

static void uv_turn(void *loop)
{
    uv_run(loop, UV_RUN_ONCE);
}

typedef void (*body_fn)(pgh_cluster *c, pgg_pool *p, pgg_async *ac, turn_fn turn, void *loop,
                        const char *name);

/* body on a context of p attached to a libuv loop of its own. */
static void on_libuv(pgh_cluster *c, pgg_pool *p, body_fn body)
{
    uv_loop_t loop;
    pgg_error e;
    pgg_async *ac;

    cr_assert_eq(uv_loop_init(&loop), 0);
    ac = pgg_async_new(p, &e);
    cr_assert_not_null(ac, "%s", e.message);
    cr_assert_eq(pgg_async_libuv_attach(ac, &loop), PGG_OK);
    body(c, p, ac, uv_turn, &loop, "libuv");
    pgg_async_free(ac);
    uv_run(&loop, UV_RUN_NOWAIT); /* the handles' close callbacks */
    cr_expect_eq(uv_loop_close(&loop), 0, "libuv handles left open");
}

static void ev_turn(void *loop)
{
    ev_run(loop, EVRUN_ONCE);
}

/* The same on a libev loop. */
static void on_libev(pgh_cluster *c, pgg_pool *p, body_fn body)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    pgg_error e;
    pgg_async *ac;

    cr_assert_not_null(loop);
    ac = pgg_async_new(p, &e);
    cr_assert_not_null(ac, "%s", e.message);
    cr_assert_eq(pgg_async_libev_attach(ac, loop), PGG_OK);
    body(c, p, ac, ev_turn, loop, "libev");
    pgg_async_free(ac);
    ev_loop_destroy(loop);
}

Test(async_loops, libuv)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a hang (SIGSTOP)");
    pgg_pool *p = pool_for(c, "breaker.mode=disabled");

    on_libuv(c, p, scenario);
    end_test(p, c);
}

Test(async_loops, libev)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a hang (SIGSTOP)");
    pgg_pool *p = pool_for(c, "breaker.mode=disabled");

    on_libev(c, p, scenario);
    end_test(p, c);
}

/* As async/calls_that_end_at_their_start_complete_on_later_turns on
 * each adapter (chain_util.h). */
static void chain(pgh_cluster *c, pgg_pool *p, pgg_async *ac, turn_fn turn, void *loop,
                  const char *name)
{
    (void)c;
    chain_one_per_turn(p, ac, turn, loop, name, 200);
}

Test(async_loops, libuv_runs_a_chain_of_calls_ended_at_their_start_one_per_turn)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, NULL);

    on_libuv(c, p, chain);
    end_test(p, c);
}

Test(async_loops, libev_runs_a_chain_of_calls_ended_at_their_start_one_per_turn)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, NULL);

    on_libev(c, p, chain);
    end_test(p, c);
}
