/*
 * Each fault does what it claims, measured.  Bounds are generous: these
 * machines have 2 cores and run other work; what is asserted is ordering
 * ("no earlier than the deadline, well before libpq's 2 s minimum"), never a
 * tight latency.
 */
#include "test_util.h"


Test(faults, hang_bounded_connect)
{
    pgh_cluster *c = start_local_cluster(0, "a hang (SIGSTOP)");
    pgh_node *p = pgh_cluster_primary(c);
    PGconn *before = connect_or_die(pgh_node_conninfo(p));

    double t0 = pgh_now_ms();
    cr_assert_eq(pgh_node_hang(p), 0, "%s", pgh_node_error(p));
    fprintf(stderr, "timing: hang: %.1f ms\n", pgh_now_ms() - t0);

    bool timed_out = false;
    char err[1024], state[6];
    t0 = pgh_now_ms();
    PGconn *conn = pgh_connect(pgh_node_conninfo(p), 300, &timed_out, err, sizeof err);
    double took = pgh_now_ms() - t0;
    fprintf(stderr, "timing: bounded connect (300 ms) to a hung server failed after %.1f ms: %s\n",
            took, err);
    cr_expect_null(conn);
    cr_expect(timed_out, "the connect failed for another reason: %s", err);
    cr_expect_geq(took, 299.0, "gave up before its deadline");
    cr_expect_lt(took, 1500.0, "not bounded by our deadline (libpq's own minimum is 2 s)");
    PQfinish(conn);

    /* the backends are stopped too: an existing session hangs */
    t0 = pgh_now_ms();
    cr_expect_eq(pgh_conn_exec(before, "select 1", 300, state, err, sizeof err), PGH_ETIMEDOUT,
                 "an existing session still answered: %s", err);
    fprintf(stderr, "timing: query (300 ms) on a hung server's session gave up after %.1f ms\n",
                 pgh_now_ms() - t0);
    PQfinish(before);

    t0 = pgh_now_ms();
    cr_assert_eq(pgh_node_resume(p), 0, "%s", pgh_node_error(p));
    conn = pgh_connect(pgh_node_conninfo(p), 10000, NULL, err, sizeof err);
    fprintf(stderr, "timing: resume + connect: %.1f ms\n", pgh_now_ms() - t0);
    cr_expect_not_null(conn, "after resume: %s", err);
    PQfinish(conn);
    pgh_cluster_free(c);
    no_leaks();
}

Test(faults, stop_immediate_refused)
{
    pgh_cluster *c = start_local_cluster(0, "a server stop");
    pgh_node *p = pgh_cluster_primary(c);
    PGconn *before = connect_or_die(pgh_node_conninfo(p));

    double t0 = pgh_now_ms();
    cr_assert_eq(pgh_node_stop(p, PGH_STOP_IMMEDIATE), 0, "%s", pgh_node_error(p));
    fprintf(stderr, "timing: stop immediate: %.0f ms\n", pgh_now_ms() - t0);
    cr_expect_eq(pgh_node_pid(p), 0);

    char err[1024], state[6];
    cr_expect_eq(pgh_conn_exec(before, "select 1", 5000, state, err, sizeof err), PGH_ERROR);
    fprintf(stderr, "existing session saw: %s\n", err);
    PQfinish(before);

    bool timed_out = true;
    t0 = pgh_now_ms();
    PGconn *conn = pgh_connect(pgh_node_conninfo(p), 5000, &timed_out, err, sizeof err);
    double took = pgh_now_ms() - t0;
    fprintf(stderr, "timing: connect to a stopped server failed after %.1f ms: %s\n", took, err);
    cr_expect_null(conn);
    cr_expect_not(timed_out);
    cr_expect(strstr(err, "refused") != NULL, "not refused: %s", err);
    cr_expect_lt(took, 1000.0, "a refused connect should fail at once");
    PQfinish(conn);

    t0 = pgh_now_ms();
    cr_assert_eq(pgh_node_start(p), 0, "%s", pgh_node_error(p));
    fprintf(stderr, "timing: start after immediate stop (crash recovery): %.0f ms\n",
            pgh_now_ms() - t0);
    expect_value(p, "select count(*) from pgg_items", "100");
    pgh_cluster_free(c);
    no_leaks();
}

Test(faults, stop_fast_57P01)
{
    pgh_cluster *c = start_local_cluster(0, "a server stop");
    pgh_node *p = pgh_cluster_primary(c);
    PGconn *busy = connect_or_die(pgh_node_conninfo(p));
    cr_assert(PQsendQuery(busy, "select pgg_sleep(30)"));
    /* the query must be running when the stop comes */
    char v[16];
    for (int i = 0; i < 500; i++) {
        query_value(p,
                    "select count(*) from pg_stat_activity "
                    "where query = 'select pgg_sleep(30)' and state = 'active'",
                    v, sizeof v);
        if (strcmp(v, "1") == 0)
            break;
    }
    cr_assert_str_eq(v, "1");

    double t0 = pgh_now_ms();
    cr_assert_eq(pgh_node_stop(p, PGH_STOP_FAST), 0, "%s", pgh_node_error(p));
    fprintf(stderr, "timing: stop fast with a running query: %.0f ms\n", pgh_now_ms() - t0);

    /* the answer is already in the socket: read it */
    const char *sqlstate = NULL;
    PGresult *res;
    char got[8] = "";
    while ((res = PQgetResult(busy))) {
        sqlstate = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (sqlstate && !got[0])
            snprintf(got, sizeof got, "%s", sqlstate);
        PQclear(res);
    }
    cr_expect_str_eq(got, "57P01", "the running query got [%s]: %s", got, PQerrorMessage(busy));
    PQfinish(busy);
    cr_assert_eq(pgh_node_start(p), 0, "%s", pgh_node_error(p));
    expect_value(p, "select 1", "1");
    pgh_cluster_free(c);
    no_leaks();
}

Test(faults, restart_replicas_follow)
{
    pgh_cluster *c = start_local_cluster(1, "a restart");
    pgh_node *p = pgh_cluster_primary(c), *r = pgh_cluster_replica(c, 0);
    double t0 = pgh_now_ms();
    cr_assert_eq(pgh_node_restart(p), 0, "%s", pgh_node_error(p));
    fprintf(stderr, "timing: restart: %.0f ms\n", pgh_now_ms() - t0);
    cr_assert_eq(pgh_node_exec(p, "insert into pgg_kv(k, v) values ('after_restart', 'x')"), 0,
                 "%s", pgh_node_error(p));
    t0 = pgh_now_ms();
    cr_assert_eq(pgh_node_wait_replay(r, p, 20000), 0, "%s", pgh_node_error(r));
    fprintf(stderr, "timing: replica caught up after the primary's restart: %.0f ms\n",
            pgh_now_ms() - t0);
    expect_value(r, "select v from pgg_kv where k = 'after_restart'", "x");
    pgh_cluster_free(c);
    no_leaks();
}

Test(faults, promote)
{
    pgh_cluster *c = start_local_cluster(1, "a promotion");
    pgh_node *r = pgh_cluster_replica(c, 0);
    char state[6], err[1024];
    PGconn *conn = connect_or_die(pgh_node_conninfo(r));
    cr_expect_eq(pgh_conn_exec(conn, "insert into pgg_kv(k, v) values ('x', 'y')", 5000, state,
                               err, sizeof err),
                 PGH_ERROR);
    cr_expect_str_eq(state, "25006", "a write on a replica: %s", err);
    PQfinish(conn);

    double t0 = pgh_now_ms();
    cr_assert_eq(pgh_node_promote(r), 0, "%s", pgh_node_error(r));
    fprintf(stderr, "timing: promote: %.0f ms\n", pgh_now_ms() - t0);
    expect_value(r, "select pg_is_in_recovery()", "f");
    cr_expect_eq(pgh_node_exec(r, "insert into pgg_kv(k, v) values ('promoted', 'y')"), 0, "%s",
                 pgh_node_error(r));
    /* the old primary is still a primary: two of them now, as in a split */
    expect_value(pgh_cluster_primary(c), "select pg_is_in_recovery()", "f");
    pgh_cluster_free(c);
    no_leaks();
}

/* Fail over and back: each time the old primary is rebuilt as a replica of
 * the new one, streams from it, and keeps its port; the second rebuild
 * copies a data directory that was itself a copy (stale socket locks). */
Test(faults, rebuild_after_promotion)
{
    pgh_cluster *c = start_local_cluster(1, "a rebuild");
    pgh_node *a = pgh_cluster_primary(c), *b = pgh_cluster_replica(c, 0);
    int port_a = pgh_node_port(a), port_b = pgh_node_port(b);

    for (int round = 0; round < 2; round++) {
        pgh_node *old = round ? b : a, *new = round ? a : b;
        char sql[128];

        cr_assert_eq(pgh_node_stop(old, PGH_STOP_IMMEDIATE), 0, "%s", pgh_node_error(old));
        cr_assert_eq(pgh_node_promote(new), 0, "%s", pgh_node_error(new));
        double t0 = pgh_now_ms();
        cr_assert_eq(pgh_node_rebuild_replica(old, new), 0, "%s", pgh_node_error(old));
        fprintf(stderr, "timing: rebuild: %.0f ms\n", pgh_now_ms() - t0);
        expect_value(old, "select pg_is_in_recovery()", "t");
        snprintf(sql, sizeof sql, "insert into pgg_kv(k, v) values ('round%d', 'y')", round);
        cr_assert_eq(pgh_node_exec(new, sql), 0, "%s", pgh_node_error(new));
        cr_assert_eq(pgh_node_wait_replay(old, new, 20000), 0, "%s", pgh_node_error(old));
        snprintf(sql, sizeof sql, "select count(*) from pgg_kv where k = 'round%d'", round);
        expect_value(old, sql, "1");
        expect_value(new, "select application_name from pg_stat_replication",
                     pgh_node_name(old));
    }
    cr_expect_eq(pgh_node_port(a), port_a);
    cr_expect_eq(pgh_node_port(b), port_b);
    pgh_cluster_free(c);
    no_leaks();
}

Test(faults, replay_pause)
{
    pgh_cluster *c = start_local_cluster(1, "a replay pause");
    pgh_node *p = pgh_cluster_primary(c), *r = pgh_cluster_replica(c, 0);
    cr_assert_eq(pgh_node_pause_replay(r), 0, "%s", pgh_node_error(r));
    cr_assert_eq(pgh_node_exec(p, "insert into pgg_kv(k, v) values ('lagging', 'x')"), 0, "%s",
                 pgh_node_error(p));
    double t0 = pgh_now_ms();
    cr_expect_eq(pgh_node_wait_replay(r, p, 300), PGH_ETIMEDOUT);
    fprintf(stderr, "timing: wait_replay (300 ms) on a paused replica gave up after %.0f ms\n",
            pgh_now_ms() - t0);
    expect_value(r, "select count(*) from pgg_kv where k = 'lagging'", "0");
    cr_assert_eq(pgh_node_resume_replay(r), 0, "%s", pgh_node_error(r));
    t0 = pgh_now_ms();
    cr_assert_eq(pgh_node_wait_replay(r, p, 20000), 0, "%s", pgh_node_error(r));
    fprintf(stderr, "timing: resume replay + wait: %.1f ms\n", pgh_now_ms() - t0);
    expect_value(r, "select count(*) from pgg_kv where k = 'lagging'", "1");
    pgh_cluster_free(c);
    no_leaks();
}
