/* The TCP fault proxy in front of a real server. */
#include <stdlib.h>

#include "test_util.h"

static pgh_cluster *cluster;
static pgh_proxy *proxy;
static char *via;

static void setup(void)
{
    cluster = start_cluster(0);
    pgh_node *p = pgh_cluster_primary(cluster);
    char err[256];
    proxy = pgh_proxy_start(pgh_node_host(p), pgh_node_port(p), err, sizeof err);
    cr_assert_not_null(proxy, "%s", err);
    /* the proxy speaks TCP only: the external server's other settings
     * (user, password, dbname) come along */
    via = pgh_conninfo_at(pgh_node_conninfo(p), "127.0.0.1", pgh_proxy_port(proxy));
}

/* Also the .fini, for a test that failed before its end: Criterion does not
 * count assertions made in a .fini, so the leak check is in finish(). */
static void teardown(void)
{
    pgh_proxy_free(proxy);
    pgh_cluster_free(cluster);
    free(via);
    proxy = NULL;
    cluster = NULL;
    via = NULL;
}

static void finish(void)
{
    teardown();
    no_leaks();
}

/* Median of 5 round trips of "select 1", in ms. */
static double round_trip(PGconn *conn)
{
    double t[5];
    char state[6], err[512];
    for (int i = 0; i < 5; i++) {
        double t0 = pgh_now_ms();
        cr_assert_eq(pgh_conn_exec(conn, "select 1", 10000, state, err, sizeof err), 0, "%s",
                     err);
        t[i] = pgh_now_ms() - t0;
    }
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++)
            if (t[j] < t[i]) {
                double x = t[i];
                t[i] = t[j];
                t[j] = x;
            }
    return t[2];
}

Test(proxy, pass, .init = setup, .fini = teardown)
{
    PGconn *a = connect_or_die(via), *b = connect_or_die(via);
    PGresult *res = PQexec(a, "select count(*) from pgg_items");
    cr_expect_str_eq(PQgetvalue(res, 0, 0), "100");
    PQclear(res);
    /* several chunks each way, intact */
    res = PQexec(b, "select md5(repeat('pgguard', 300000)), length(repeat('pgguard', 300000))");
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(b));
    PGresult *direct = NULL;
    PGconn *d = connect_or_die(pgh_node_conninfo(pgh_cluster_primary(cluster)));
    direct = PQexec(d, "select md5(repeat('pgguard', 300000))");
    cr_expect_str_eq(PQgetvalue(res, 0, 0), PQgetvalue(direct, 0, 0));
    cr_expect_str_eq(PQgetvalue(res, 0, 1), "2100000");
    PQclear(res);
    PQclear(direct);
    res = PQexec(b, "select repeat('x', 5000000)");
    cr_expect_eq(PQgetlength(res, 0, 0), 5000000);
    PQclear(res);
    fprintf(stderr, "timing: round trip through the proxy (pass): %.2f ms, direct: %.2f ms\n",
            round_trip(a), round_trip(d));
    PQfinish(a);
    PQfinish(b);
    PQfinish(d);
    finish();
}

Test(proxy, delay, .init = setup, .fini = teardown)
{
    PGconn *conn = connect_or_die(via);
    double pass = round_trip(conn);
    pgh_proxy_set_mode(proxy, PGH_PROXY_DELAY, 100);
    double delayed = round_trip(conn);
    pgh_proxy_set_mode(proxy, PGH_PROXY_PASS, 0);
    double after = round_trip(conn);
    fprintf(stderr,
            "timing: round trip: pass %.2f ms, delay 100 ms each way %.1f ms, pass again %.2f ms\n",
            pass, delayed, after);
    /* each direction holds each chunk at least 100 ms */
    cr_expect_geq(delayed, 200.0);
    cr_expect_lt(pass, delayed);
    cr_expect_lt(after, delayed);
    /* a new connection is delayed too */
    pgh_proxy_set_mode(proxy, PGH_PROXY_DELAY, 50);
    double t0 = pgh_now_ms();
    PGconn *late = connect_or_die(via);
    double took = pgh_now_ms() - t0;
    fprintf(stderr, "timing: connect through a 50 ms delay: %.0f ms\n", took);
    /* the startup exchange is at least one round trip (two with libpq's
     * default SSLRequest) */
    cr_expect_geq(took, 100.0);
    PQfinish(late);
    PQfinish(conn);
    finish();
}

Test(proxy, blackhole, .init = setup, .fini = teardown)
{
    PGconn *conn = connect_or_die(via);
    pgh_proxy_set_mode(proxy, PGH_PROXY_BLACKHOLE, 0);
    char state[6], err[512];
    double t0 = pgh_now_ms();
    int rc = pgh_conn_exec(conn, "select 1", 300, state, err, sizeof err);
    double took = pgh_now_ms() - t0;
    fprintf(stderr, "timing: query (300 ms) into a blackhole ended after %.1f ms: %s\n", took, err);
    cr_expect_eq(rc, PGH_ETIMEDOUT, "%s", err);
    cr_expect_geq(took, 299.0);
    cr_expect_lt(took, 1500.0);
    PQfinish(conn);

    bool timed_out = false;
    t0 = pgh_now_ms();
    PGconn *c2 = pgh_connect(via, 300, &timed_out, err, sizeof err);
    took = pgh_now_ms() - t0;
    fprintf(stderr, "timing: connect (300 ms) into a blackhole ended after %.1f ms\n", took);
    cr_expect_null(c2);
    cr_expect(timed_out, "%s", err);
    cr_expect_geq(took, 299.0);
    cr_expect_lt(took, 1500.0);

    pgh_proxy_set_mode(proxy, PGH_PROXY_PASS, 0);
    PGconn *c3 = connect_or_die(via);
    PQfinish(c3);
    finish();
}

Test(proxy, reset, .init = setup, .fini = teardown)
{
    PGconn *conn = connect_or_die(via);
    pgh_proxy_set_mode(proxy, PGH_PROXY_RESET, 0);
    char state[6], err[512];
    double t0 = pgh_now_ms();
    int rc = pgh_conn_exec(conn, "select 1", 5000, state, err, sizeof err);
    double took = pgh_now_ms() - t0;
    fprintf(stderr, "timing: query on a reset connection failed after %.2f ms: %s\n", took, err);
    cr_expect_eq(rc, PGH_ERROR);
    cr_expect_lt(took, 1000.0);
    PQfinish(conn);

    bool timed_out = true;
    t0 = pgh_now_ms();
    PGconn *c2 = pgh_connect(via, 5000, &timed_out, err, sizeof err);
    took = pgh_now_ms() - t0;
    fprintf(stderr, "timing: connect through reset failed after %.2f ms: %s\n", took, err);
    cr_expect_null(c2);
    cr_expect_not(timed_out);
    cr_expect_lt(took, 1000.0);

    pgh_proxy_set_mode(proxy, PGH_PROXY_PASS, 0);
    PGconn *c3 = connect_or_die(via);
    PQfinish(c3);
    finish();
}

Test(proxy, refuse, .init = setup, .fini = teardown)
{
    PGconn *conn = connect_or_die(via);
    pgh_proxy_set_mode(proxy, PGH_PROXY_REFUSE, 0);
    char state[6], err[512];
    bool timed_out = true;
    double t0 = pgh_now_ms();
    PGconn *c2 = pgh_connect(via, 5000, &timed_out, err, sizeof err);
    double took = pgh_now_ms() - t0;
    fprintf(stderr, "timing: connect to a refusing proxy failed after %.2f ms: %s\n", took, err);
    cr_expect_null(c2);
    cr_expect_not(timed_out);
    cr_expect(strstr(err, "refused") != NULL, "%s", err);
    cr_expect_lt(took, 1000.0);
    /* existing connections keep working */
    cr_expect_eq(pgh_conn_exec(conn, "select 1", 5000, state, err, sizeof err), 0, "%s", err);
    PQfinish(conn);

    pgh_proxy_set_mode(proxy, PGH_PROXY_PASS, 0);
    PGconn *c3 = connect_or_die(via);
    PQfinish(c3);
    finish();
}
