/*
 * The wait in libpq's recv (link.h, issue 10): a pooled connection that
 * only served one-shot calls has a blocking socket with a receive timeout
 * of one slice, and waits for its answer in PQconsumeInput's recv.  Every
 * other holder of the connection must find it non-blocking, an answer that
 * needs a second read ends the blocking mode for good (libpq's reads past
 * 32 KB would otherwise wait a slice for nothing), a query longer than
 * many slices still gets its answer, and a hung server still costs a call
 * its deadline plus the bound the watchdog's tests allow.
 */
#include "cancel.h"
#include "link_util.h"
#include "pool_util.h"

static PGconn *connect_to(pgh_cluster *c)
{
    PQconninfoOption *opts = PQconninfoParse(pgh_node_conninfo(pgh_cluster_primary(c)), NULL);
    const char *keys[64], *vals[64];
    PGconn *conn = NULL;
    pgg_error e;
    int n = 0, rc;

    cr_assert_not_null(opts);
    for (PQconninfoOption *o = opts; o->keyword && n < 63; o++)
        if (o->val) {
            keys[n] = o->keyword;
            vals[n++] = o->val;
        }
    keys[n] = vals[n] = NULL;
    rc = pgg__link_connect(keys, vals, pgg__now_ns() + 5 * PGG_NS_PER_SEC, "primary", &conn,
                           &e);
    PQconninfoFree(opts);
    cr_assert_eq(rc, PGG_OK, "connect: %s", e.message);
    return conn;
}

static PGresult *exec_query_mode(PGconn *conn, const pgg_query *q, int64_t timeout_ms,
                                 pgg_recv_mode *m, int *rc, pgg_error *e)
{
    PGresult *r = NULL;
    pgg_attempt_end end;

    *rc = pgg__link_exec_mode(NULL, conn, q, pgg__now_ns() + timeout_ms * PGG_NS_PER_MS, 0, m,
                              "primary", &r, &end, e);
    return r;
}

static PGresult *exec_mode(PGconn *conn, const char *sql, int64_t timeout_ms, pgg_recv_mode *m,
                           int *rc, pgg_error *e)
{
    pgg_query q = {.sql = sql};

    return exec_query_mode(conn, &q, timeout_ms, m, rc, e);
}

Test(recv_wait, a_one_shot_call_waits_in_recv_and_slow_and_large_answers_arrive)
{
    pgh_cluster *c = cluster_or_die(0);
    PGconn *conn = connect_to(c);
    pgg_recv_mode m = PGG_RECV_CLEAN;
    pgg_error e;
    PGresult *r;
    int rc;

    cr_expect_not(socket_blocking(conn), "a new connection is non-blocking");
    r = exec_mode(conn, "SELECT 1", 5000, &m, &rc, &e);
    cr_assert_eq(rc, PGG_OK, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    cr_expect_eq(m, PGG_RECV_ON, "a small answer in one read: the blocking mode stays");
    cr_expect(socket_blocking(conn));

    /* Many slices (20 ms each) without an answer: each ends empty, none
     * ends the blocking mode. */
    r = exec_mode(conn, "SELECT pg_sleep(0.3), 'slow'", 5000, &m, &rc, &e);
    cr_assert_eq(rc, PGG_OK, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 1), "slow");
    PQclear(r);
    cr_expect_eq(m, PGG_RECV_ON, "empty slices left the blocking mode");
    cr_expect(socket_blocking(conn));

    /* A row of 200 kB: more than one read, and libpq's buffer grows. */
    r = exec_mode(conn, "SELECT repeat('x', 200000)", 5000, &m, &rc, &e);
    cr_assert_eq(rc, PGG_OK, "%s", e.message);
    cr_expect_eq(PQgetlength(r, 0, 0), 200000);
    PQclear(r);
    cr_expect_eq(m, PGG_RECV_NEVER, "an answer in several reads ended the blocking mode");
    cr_expect_not(socket_blocking(conn));

    /* Never again blocking, and still correct. */
    r = exec_mode(conn, "SELECT 2", 5000, &m, &rc, &e);
    cr_assert_eq(rc, PGG_OK, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "2");
    PQclear(r);
    cr_expect_eq(m, PGG_RECV_NEVER);
    cr_expect_not(socket_blocking(conn));
    PQfinish(conn);

    /* Many small rows over 32 kB on a connection in the blocking mode. */
    conn = connect_to(c);
    m = PGG_RECV_CLEAN;
    PQclear(exec_mode(conn, "SELECT 1", 5000, &m, &rc, &e));
    cr_assert_eq(m, PGG_RECV_ON);
    r = exec_mode(conn, "SELECT g, 'row ' || g FROM generate_series(1, 20000) g", 5000, &m, &rc,
                  &e);
    cr_assert_eq(rc, PGG_OK, "%s", e.message);
    cr_expect_eq(PQntuples(r), 20000);
    cr_expect_str_eq(PQgetvalue(r, 19999, 1), "row 20000");
    PQclear(r);
    cr_expect_eq(m, PGG_RECV_NEVER);
    cr_expect_not(socket_blocking(conn));
    PQfinish(conn);

    /* A query too large for one send goes out non-blocking, and the next
     * small one waits in recv again. */
    conn = connect_to(c);
    m = PGG_RECV_CLEAN;
    PQclear(exec_mode(conn, "SELECT 1", 5000, &m, &rc, &e));
    cr_assert_eq(m, PGG_RECV_ON);
    {
        size_t n = 100000;
        char *sql = malloc(n + 32);

        cr_assert_not_null(sql);
        strcpy(sql, "SELECT length('");
        memset(sql + strlen(sql), 'y', n);
        strcpy(sql + 15 + n, "')");
        r = exec_mode(conn, sql, 5000, &m, &rc, &e);
        free(sql);
    }
    cr_assert_eq(rc, PGG_OK, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "100000");
    PQclear(r);
    cr_expect_eq(m, PGG_RECV_PAUSED, "a large query left the socket blocking");
    cr_expect_not(socket_blocking(conn));
    PQclear(exec_mode(conn, "SELECT 1", 5000, &m, &rc, &e));
    cr_expect_eq(m, PGG_RECV_ON);
    cr_expect(socket_blocking(conn));
    PQfinish(conn);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

/* A statement run by name with text values (pgg_exec_prepared's and
 * auto_prepare's runs, whose size link.h counts inline): a value too large
 * for one send goes out non-blocking, a small one waits in recv. */
Test(recv_wait, a_statement_by_name_with_a_value_too_large_for_one_send_goes_out_non_blocking)
{
    pgh_cluster *c = cluster_or_die(0);
    PGconn *conn = connect_to(c);
    pgg_recv_mode m = PGG_RECV_CLEAN;
    pgg_query pq = {.sql = "SELECT length($1::text)", .nparams = 1, .stmt_name = "by_name",
                    .prepare = true};
    const char *small[1] = {"yy"}, *large[1];
    pgg_query run = {.sql = pq.sql, .nparams = 1, .stmt_name = "by_name", .values = small};
    size_t n = 100000;
    char *big = malloc(n + 1);
    pgg_error e;
    PGresult *r;
    int rc;

    cr_assert_not_null(big);
    memset(big, 'y', n);
    big[n] = '\0';
    large[0] = big;
    r = exec_query_mode(conn, &pq, 5000, &m, &rc, &e);
    cr_assert_eq(rc, PGG_OK, "%s", e.message);
    PQclear(r);
    r = exec_query_mode(conn, &run, 5000, &m, &rc, &e);
    cr_assert_eq(rc, PGG_OK, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "2");
    PQclear(r);
    cr_assert_eq(m, PGG_RECV_ON);
    cr_expect(socket_blocking(conn));
    run.values = large;
    r = exec_query_mode(conn, &run, 5000, &m, &rc, &e);
    cr_assert_eq(rc, PGG_OK, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "100000");
    PQclear(r);
    cr_expect_eq(m, PGG_RECV_PAUSED, "a large value left the socket blocking");
    cr_expect_not(socket_blocking(conn));
    run.values = small;
    r = exec_query_mode(conn, &run, 5000, &m, &rc, &e);
    cr_assert_eq(rc, PGG_OK, "%s", e.message);
    PQclear(r);
    cr_expect_eq(m, PGG_RECV_ON);
    cr_expect(socket_blocking(conn));
    free(big);
    PQfinish(conn);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

/* A wait with a cancel handle polls (the fire must end it), also when it
 * has no watchdog slot (none here; in a pool, a slot out of memory): a
 * slice in recv would not see the fire.  The handle is fired before the
 * call: the wait ends at once, and the connection's mode never turned to
 * blocking.  Before, without a slot the handle was not looked at: the call
 * waited in slices to 40 ms before its deadline (ON). */
Test(recv_wait, a_wait_with_a_cancel_handle_polls_also_without_a_watchdog)
{
    pgh_cluster *c = cluster_or_die(0);
    PGconn *conn = connect_to(c);
    pgg_recv_mode m = PGG_RECV_CLEAN;
    pgg_cancel *h = pgg_cancel_new();
    pgg_cancel *prev;
    pgg_error e;
    int rc;

    cr_assert_not_null(h);
    pgg_cancel_fire(h);
    prev = pgg__cancel_enter(h, NULL);
    PQclear(exec_mode(conn, "SELECT pg_sleep(5)", 3000, &m, &rc, &e));
    pgg__cancel_leave(h, prev);
    cr_expect_eq(rc, PGG_ETIMEDOUT, "%s: %s", pgg_err_name(rc), e.message);
    cr_expect_eq(m, PGG_RECV_CLEAN, "a wait with a cancel handle waited in recv");
    cr_expect_not(socket_blocking(conn));
    PQfinish(conn);
    pgg_cancel_free(h);
    pgh_cluster_free(c);
}

#define HUNG_TIMEOUT_MS 300
#define HUNG_CALLS 3

/* The deadline holds against a hung server: the slices end before it, the
 * poll under the watchdog takes the last part, as for every wait. */
Test(recv_wait, a_hung_server_costs_a_call_its_deadline_plus_a_tick_at_most)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a hang (SIGSTOP)");
    pgg_pool *p = pool_for(c, "breaker.mode=disabled read_your_writes=off pool_max=" "3");
    pgg_call call = {.timeout_ms = HUNG_TIMEOUT_MS, .flags = PGG_CALL_NO_RETRY};
    uint64_t fired0 = pgg__watchdog_fired(p->watchdog);
    double worst = 0;
    int sent = 0;

    cr_assert_eq(read_ok(p, PGG_WRITE, "SELECT 1", 0), 0);
    cr_assert_eq(pgh_node_hang(pgh_cluster_primary(c)), 0);
    for (int i = 0; i < HUNG_CALLS; i++) {
        pgg_error e;
        pgg_info info;
        double t0 = pgh_now_ms();
        PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT 1", &call, &info, &e);
        double took = pgh_now_ms() - t0;

        cr_expect_null(r);
        cr_expect_eq(e.code, PGG_ETIMEDOUT, "%s: %s", pgg_err_name(e.code), e.message);
        if (info.sent)
            sent++;
        if (took > worst)
            worst = took;
        PQclear(r);
    }
    fprintf(stderr, "recv wait, hung server: worst %.2f ms for a %d ms deadline, %d sent\n",
            worst, HUNG_TIMEOUT_MS, sent);
    /* The first call had the warm connection, in the blocking mode. */
    cr_expect_geq(sent, 1);
    cr_expect_gt(pgg__watchdog_fired(p->watchdog) - fired0 + pgg__link_backstops() +
                     pgg__link_slice_deadlines(),
                 0, "nothing ended a wait");
    cr_expect_leq(worst, HUNG_TIMEOUT_MS + PGG_WATCHDOG_TICK_NS / 1e6 + 50.0,
                  "a call took %.2f ms for a %d ms deadline", worst, HUNG_TIMEOUT_MS);
    cr_assert_eq(pgh_node_resume(pgh_cluster_primary(c)), 0);
    cr_expect_eq(read_ok(p, PGG_WRITE, "SELECT 1", 0), 0, "no call succeeded after the resume");
    end_test(p, c);
}

Test(recv_wait, a_connection_lent_to_a_lease_is_non_blocking_for_good)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "breaker.mode=disabled read_your_writes=off pool_max=1");
    pgg_lease *lease;
    pgg_error e;
    pgg_link *l;
    PGresult *r;

    link_left_blocking(p);

    lease = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(lease, "%s", e.message);
    cr_expect_not(socket_blocking(pgg_lease_conn(lease)), "a lease's PGconn is blocking");
    /* The raw PGconn as a user drives it, non-blocking. */
    cr_assert(PQsendQuery(pgg_lease_conn(lease), "SELECT 7"));
    while ((r = PQgetResult(pgg_lease_conn(lease))) != NULL) {
        if (PQresultStatus(r) == PGRES_TUPLES_OK)
            cr_expect_str_eq(PQgetvalue(r, 0, 0), "7");
        PQclear(r);
    }
    pgg_release(lease);

    cr_assert_eq(read_ok(p, PGG_WRITE, "SELECT 1", 0), 0);
    l = only_link(p);
    cr_assert_not_null(l);
    cr_expect_eq(l->recv_mode, PGG_RECV_NEVER, "the lease's connection blocks again");
    cr_expect_not(socket_blocking(l->conn));
    end_test(p, c);
}
