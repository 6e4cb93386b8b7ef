/*
 * The on-connect hook (pgg_config_on_connect) against a real server: it
 * runs on every new connection before it is lent and again after a lease's
 * DISCARD ALL; a hook that fails is refused clearly (PGG_EONCONNECT) and
 * not blamed on the host; a hook that hangs is bounded by the connect
 * bound and counted as the host's connection failure.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "health.h"
#include "pool.h"
#include "pool_util.h"

/* A pool over one primary with a hook. */
static pgg_pool *hooked_pool(pgh_cluster *c, const char *sql, pgg_connect_fn fn, void *ud,
                             const char *extra)
{
    pgg_config *cfg = pgg_config_new();
    pgg_error e;

    cr_assert_not_null(cfg);
    cr_assert_eq(pgg_config_set_servers(cfg, pgh_node_conninfo(pgh_cluster_primary(c)), &e),
                 PGG_OK, "%s", e.message);
    cr_assert_eq(pgg_config_parse(cfg, TEST_SETTINGS, &e), PGG_OK, "%s", e.message);
    if (extra)
        cr_assert_eq(pgg_config_parse(cfg, extra, &e), PGG_OK, "%s", e.message);
    cr_assert_eq(pgg_config_on_connect(cfg, sql, fn, ud, &e), PGG_OK, "%s", e.message);
    pgg_pool *p = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    cr_assert_not_null(p, "%s", e.message);
    return p;
}

static void expect_setting(pgg_lease *l, const char *name, const char *want)
{
    char sql[128];
    pgg_error e;
    snprintf(sql, sizeof sql, "SELECT current_setting('%s')", name);
    PGresult *r = pgg_lease_exec(l, sql, 0, &e);
    cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), want, "%s", name);
    PQclear(r);
}

Test(on_connect, sql_runs_on_every_new_connection_and_after_a_lease_reset)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = hooked_pool(c,
                              "SET application_name = 'pgg_hooked'; "
                              "SET statement_timeout = '7s'",
                              NULL, NULL, "pool_max=2");
    pgg_error e;

    /* Two connections at once: each was set up before it was lent. */
    pgg_lease *a = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(a, "%s: %s", pgg_err_name(e.code), e.message);
    pgg_lease *b = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(b, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_neq(pgg_lease_conn(a), pgg_lease_conn(b));
    expect_setting(a, "application_name", "pgg_hooked");
    expect_setting(b, "application_name", "pgg_hooked");
    expect_setting(b, "statement_timeout", "7s");
    /* A lease changes the session; its release resets it (DISCARD ALL)
     * and the hook sets it up again before anyone else gets it. */
    PQclear(pgg_lease_exec(a, "SET application_name = 'changed_by_a_lease'", 0, &e));
    cr_expect_eq(e.code, PGG_OK, "%s", e.message);
    pgg_release(a);
    pgg_release(b);
    for (int i = 0; i < 4; i++) {
        PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT current_setting('application_name')",
                               NULL, NULL, &e);
        cr_assert_not_null(r, "%s", e.message);
        cr_expect_str_eq(PQgetvalue(r, 0, 0), "pgg_hooked");
        PQclear(r);
    }
    end_test(p, c);
}

Test(on_connect, failing_sql_is_refused_clearly_and_not_blamed_on_the_host)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = hooked_pool(c, "SET search_path = public; SELEC 1", NULL, NULL, NULL);
    pgg_error e;

    /* More than breaker.consecutive_failures (3) calls, all refused. */
    for (int i = 0; i < 6; i++) {
        PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT 1", NULL, NULL, &e);
        cr_expect_null(r);
        PQclear(r);
        cr_expect_eq(e.code, PGG_EONCONNECT, "%s: %s", pgg_err_name(e.code), e.message);
        cr_expect_str_eq(e.sqlstate, "42601");
        cr_expect_not_null(strstr(e.message, "on_connect"), "%s", e.message);
        cr_expect_not_null(strstr(e.message, "SELEC"), "%s", e.message);
    }
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_expect_null(l);
    cr_expect_eq(e.code, PGG_EONCONNECT, "%s: %s", pgg_err_name(e.code), e.message);
    pgg_host_stats h = host_stats(p, 0);
    cr_expect_eq(h.state, PGG_BREAKER_CLOSED, "the hook's mistake opened the host's breaker");
    for (int k = PGG_CLASS_CONNECTION; k < PGG_CLASS__COUNT; k++)
        cr_expect_eq(h.failures[k], 0, "counted a %s failure", pgg_class_name((pgg_class)k));
    cr_expect_eq(h.conns_open, 0, "a refused connection was pooled");
    cr_expect_str_eq(pgg_strerror(PGG_EONCONNECT), "the on-connect hook refused the connection");
    cr_expect_str_eq(pgg_err_name(PGG_EONCONNECT), "PGG_EONCONNECT");
    end_test(p, c);
}

/*
 * A pool warming to pool_min_idle (4) over a hook whose SQL fails on every
 * session (here after counting itself in a sequence, which the error does
 * not roll back), probed every 50 ms: the warm-up (health.c, warm) starts
 * one spare at a time once a hook has failed, at most one per probe, as
 * the blocking warm-up stopped at its first failure.  Fails when each
 * probe starts pool_min_idle spares, each a backend forked and refused:
 * about four hook runs per health round.
 */
Test(on_connect, a_failing_hook_warms_one_spare_at_a_time)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_node *prim = pgh_cluster_primary(c);
    cr_assert_eq(pgh_node_exec(prim, "CREATE SEQUENCE pgg_hook_runs"), 0);
    pgg_pool *p = hooked_pool(c, "SELECT 1 / (pg_catalog.nextval('pgg_hook_runs') * 0)", NULL,
                              NULL, "pool_min_idle=4 pool_max=8 health_interval_ms=50");
    char v[32];
    long runs0 = 0, runs1;

    /* The first hook run: the warm-up is under way. */
    for (int i = 0; i < 1000 && runs0 == 0; i++) {
        cr_assert_eq(pgh_node_query_value(prim,
                                          "SELECT CASE WHEN is_called THEN last_value "
                                          "ELSE 0 END FROM pgg_hook_runs",
                                          v, sizeof v),
                     0);
        runs0 = atol(v);
        if (runs0 == 0)
            sleep_ms(10);
    }
    cr_assert_gt(runs0, 0, "the warm-up never ran the hook");
    unsigned long r0 = pgg__health_rounds(p->health);
    for (int i = 0; i < 2000 && pgg__health_rounds(p->health) < r0 + 10; i++)
        sleep_ms(10);
    unsigned long rounds = pgg__health_rounds(p->health) - r0;
    cr_assert_geq(rounds, 10, "the health rounds stalled");
    cr_assert_eq(pgh_node_query_value(prim, "SELECT last_value FROM pgg_hook_runs", v, sizeof v),
                 0);
    runs1 = atol(v);
    /* One spare per round, and those on their way when counting began
     * and ended. */
    cr_expect_leq(runs1 - runs0, (long)rounds + 2, "%ld hook runs in %lu health rounds",
                  runs1 - runs0, rounds);
    cr_expect_eq(host_stats(p, 0).conns_open, 0, "a refused session was pooled");
    end_test(p, c);
}

typedef struct hook_state {
    atomic_int calls;
    atomic_int min_timeout_ms;
    atomic_bool refuse;
} hook_state;

static int callback(PGconn *conn, int timeout_ms, void *ud, char *errbuf, size_t errlen)
{
    hook_state *s = ud;
    atomic_fetch_add(&s->calls, 1);
    int seen = atomic_load(&s->min_timeout_ms);
    if (seen == 0 || timeout_ms < seen)
        atomic_store(&s->min_timeout_ms, timeout_ms);
    if (atomic_load(&s->refuse)) {
        snprintf(errbuf, errlen, "tenant unknown");
        return 1;
    }
    PGresult *r = PQexec(conn, "SET application_name = 'pgg_callback'");
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok)
        snprintf(errbuf, errlen, "SET failed");
    return ok ? 0 : 1;
}

Test(on_connect, a_callback_sets_up_each_connection_or_refuses_it)
{
    static hook_state st;
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = hooked_pool(c, "SET statement_timeout = '9s'", callback, &st,
                              "connect_timeout_ms=1500");
    pgg_error e;

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s: %s", pgg_err_name(e.code), e.message);
    expect_setting(l, "application_name", "pgg_callback");
    expect_setting(l, "statement_timeout", "9s"); /* the SQL ran first */
    pgg_release(l);
    cr_expect_geq(atomic_load(&st.calls), 2, "once on connect, once after the lease's reset");
    cr_expect_gt(atomic_load(&st.min_timeout_ms), 0);
    cr_expect_leq(atomic_load(&st.min_timeout_ms), 1500);

    /* Refused: the idle connection is dropped at the next reset; force a
     * new connection by holding the pooled one in a lease. */
    atomic_store(&st.refuse, true);
    pgg_lease *held = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(held, "%s", e.message);
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT 1", NULL, NULL, &e);
    cr_expect_null(r);
    PQclear(r);
    cr_expect_eq(e.code, PGG_EONCONNECT, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_not_null(strstr(e.message, "tenant unknown"), "%s", e.message);
    /* Released, its reset runs the (now refusing) hook: not pooled. */
    pgg_release(held);
    cr_expect_eq(host_stats(p, 0).conns_open, 0);
    cr_expect_eq(host_stats(p, 0).state, PGG_BREAKER_CLOSED);
    atomic_store(&st.refuse, false);
    read_ok(p, PGG_WRITE, "SELECT 1", 0);
    end_test(p, c);
}

Test(on_connect, a_hanging_hook_is_bounded_and_counted_against_the_host)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = hooked_pool(c, "SELECT pg_sleep(5)", NULL, NULL,
                              "connect_timeout_ms=500 breaker.consecutive_failures=100");
    pgg_call call = {.timeout_ms = 3000};
    pgg_error e;

    double t0 = pgh_now_ms();
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT 1", &call, NULL, &e);
    double took = pgh_now_ms() - t0;
    cr_expect_null(r);
    PQclear(r);
    cr_expect_eq(e.code, PGG_ETIMEDOUT, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_not_null(strstr(e.message, "on_connect"), "%s", e.message);
    /* the call's own deadline was never overrun */
    cr_expect_lt(took, 3000 + 250.0, "waited %.0f ms", took);
    pgg_host_stats h = host_stats(p, 0);
    cr_expect_geq(h.failures[PGG_CLASS_CONNECTION], 1, "a hung hook was not the host's failure");
    cr_expect_geq(h.connect_failures, 1);
    cr_expect_eq(h.conns_open, 0);
    /* The hook's statement was cancelled on the server, as a query past its
     * deadline is, well before its own 5 s. */
    char n[32];
    double end = pgh_now_ms() + 4000;
    do {
        sleep_ms(50);
        cr_assert_eq(pgh_node_query_value(pgh_cluster_primary(c),
                                          "SELECT count(*) FROM pg_stat_activity WHERE "
                                          "query = 'SELECT pg_sleep(5)' AND pid <> pg_backend_pid()",
                                          n, sizeof n),
                     0);
    } while (strcmp(n, "0") != 0 && pgh_now_ms() < end);
    cr_expect_str_eq(n, "0", "the hook's statement still runs on the server");
    pgg_pool_free(p);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

Test(on_connect, a_hook_that_hangs_after_a_lease_reset_is_cut_and_cancelled)
{
    pgh_cluster *c = cluster_or_die(0);
    /* A sequence survives DISCARD ALL: the hook hangs from its second run,
     * the one after the lease's reset, on. */
    cr_assert_eq(pgh_node_exec(pgh_cluster_primary(c), "DROP SEQUENCE IF EXISTS pgg_hook_seq;"
                                                       "CREATE SEQUENCE pgg_hook_seq"),
                 0);
    pgg_pool *p = hooked_pool(c,
                              "SELECT pg_sleep(CASE WHEN nextval('pgg_hook_seq') > 1 "
                              "THEN 5 ELSE 0 END) /* pgg-hook-reset */",
                              NULL, NULL, "connect_timeout_ms=500");
    pgg_error e;

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s: %s", pgg_err_name(e.code), e.message);
    double t0 = pgh_now_ms();
    pgg_release(l);
    double took = pgh_now_ms() - t0;
    /* the reset's own bound (connect_timeout_ms), not the hook's 5 s */
    cr_expect_lt(took, 500 + 250.0, "pgg_release waited %.0f ms", took);
    cr_expect_eq(host_stats(p, 0).conns_open, 0, "a session whose hook hung was pooled");
    char n[32];
    double end = pgh_now_ms() + 4000;
    do {
        sleep_ms(50);
        cr_assert_eq(pgh_node_query_value(pgh_cluster_primary(c),
                                          "SELECT count(*) FROM pg_stat_activity WHERE "
                                          "query LIKE '%pgg-hook-reset%' AND "
                                          "pid <> pg_backend_pid()",
                                          n, sizeof n),
                     0);
    } while (strcmp(n, "0") != 0 && pgh_now_ms() < end);
    cr_expect_str_eq(n, "0", "the hook's statement still runs on the server");
    pgg_pool_free(p);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}
