/* The cluster itself: ready when started, conninfos, SQL helpers. */
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"


Test(cluster, start_ready)
{
    pgh_cluster *c = start_cluster(2);
    pgh_node *p = pgh_cluster_primary(c);
    expect_value(p, "select pg_is_in_recovery()", "f");
    expect_value(p, "select count(*) from pgg_items", "100");
    for (int i = 0; i < pgh_cluster_replica_count(c); i++) {
        pgh_node *r = pgh_cluster_replica(c, i);
        expect_value(r, "select pg_is_in_recovery()", "t");
        /* ready means replayed: the fixture is there without waiting */
        expect_value(r, "select count(*) from pgg_items", "100");
        cr_expect_neq(pgh_node_port(r), pgh_node_port(p));
    }
    if (!pgh_cluster_is_external(c)) {
        cr_expect_eq(pgh_cluster_replica_count(c), 2);
        expect_value(p,
                     "select string_agg(application_name || ':' || state, ',' "
                     "order by application_name) from pg_stat_replication",
                     "replica1:streaming,replica2:streaming");
        cr_expect_gt(pgh_node_pid(p), 0);
        cr_expect_str_eq(pgh_node_host(p), "127.0.0.1");
        char want[128];
        snprintf(want, sizeof want, "host=127.0.0.1 port=%d user=postgres dbname=postgres",
                 pgh_node_port(p));
        cr_expect_str_eq(pgh_node_conninfo(p), want);
    }
    const char *dir = pgh_cluster_dir(c);
    char dircopy[4096] = "";
    if (dir)
        snprintf(dircopy, sizeof dircopy, "%s", dir);
    double t0 = pgh_now_ms();
    pgh_cluster_free(c);
    fprintf(stderr, "timing: cluster free: %.0f ms\n", pgh_now_ms() - t0);
    struct stat st;
    if (dircopy[0])
        cr_expect_neq(stat(dircopy, &st), 0, "%s still exists after free", dircopy);
    no_leaks();
}

Test(cluster, multi_host_conninfo)
{
    pgh_cluster *c = start_cluster(2);
    char *ci = pgh_cluster_conninfo(c);
    cr_assert_not_null(ci);
    if (!pgh_cluster_is_external(c)) {
        char want[256];
        snprintf(want, sizeof want,
                 "host=127.0.0.1,127.0.0.1,127.0.0.1 port=%d,%d,%d user=postgres dbname=postgres",
                 pgh_node_port(pgh_cluster_primary(c)), pgh_node_port(pgh_cluster_replica(c, 0)),
                 pgh_node_port(pgh_cluster_replica(c, 1)));
        cr_expect_str_eq(ci, want);
    }
    const char *attrs[] = {"read-write", "standby"};
    const char *want[] = {"f", "t"};
    for (int i = 0; i < (pgh_cluster_replica_count(c) > 0 ? 2 : 1); i++) {
        char buf[1024];
        snprintf(buf, sizeof buf, "%s target_session_attrs=%s", ci, attrs[i]);
        PGconn *conn = connect_or_die(buf);
        PGresult *res = PQexec(conn, "select pg_is_in_recovery()");
        cr_expect_eq(PQresultStatus(res), PGRES_TUPLES_OK);
        cr_expect_str_eq(PQgetvalue(res, 0, 0), want[i], "target_session_attrs=%s", attrs[i]);
        PQclear(res);
        PQfinish(conn);
    }
    free(ci);
    pgh_cluster_free(c);
    no_leaks();
}

Test(cluster, sql_helpers)
{
    pgh_cluster *c = start_cluster(0);
    pgh_node *p = pgh_cluster_primary(c);
    PGconn *conn = connect_or_die(pgh_node_conninfo(p));
    char state[6], err[1024];

    /* an error with the SQLSTATE we ask for, whatever its class */
    const char *codes[] = {"57P01", "23505", "40001", "53300", "XX000"};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "select pgg_raise('%s', 'raised %s')", codes[i], codes[i]);
        cr_expect_eq(pgh_conn_exec(conn, sql, 5000, state, err, sizeof err), PGH_ERROR);
        cr_expect_str_eq(state, codes[i]);
        cr_expect(strstr(err, "raised") != NULL, "message: %s", err);
    }
    /* the connection survives a raised error */
    cr_expect_eq(pgh_conn_exec(conn, "select 1", 5000, state, err, sizeof err), 0, "%s", err);

    double t0 = pgh_now_ms();
    cr_expect_eq(pgh_conn_exec(conn, "select pgg_sleep(0.2)", 5000, state, err, sizeof err), 0,
                 "%s", err);
    double slept = pgh_now_ms() - t0;
    cr_expect_geq(slept, 200.0, "pgg_sleep(0.2) returned after %.0f ms", slept);

    /* pgg_terminate_others: another session of ours dies, the caller lives */
    PGconn *victim = connect_or_die(pgh_node_conninfo(p));
    PGresult *res = PQexec(conn, "select pgg_terminate_others()");
    cr_expect_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
    cr_expect_geq(atoi(PQgetvalue(res, 0, 0)), 1);
    PQclear(res);
    cr_expect_neq(pgh_conn_exec(victim, "select 1", 5000, state, err, sizeof err), 0,
                  "the other session survived pgg_terminate_others()");
    fprintf(stderr, "terminated session saw: [%s] %s\n", state, err);
    cr_expect_eq(pgh_conn_exec(conn, "select 1", 5000, state, err, sizeof err), 0, "%s", err);

    /* the kv table takes writes */
    cr_expect_eq(pgh_conn_exec(conn,
                               "insert into pgg_kv(k, v) values ('sql_helpers', 'x') "
                               "on conflict (k) do update set v = excluded.v",
                               5000, state, err, sizeof err),
                 0, "%s", err);
    PQfinish(victim);
    PQfinish(conn);
    pgh_cluster_free(c);
    no_leaks();
}

Test(cluster, terminate_backends)
{
    pgh_cluster *c = start_cluster(0);
    pgh_node *p = pgh_cluster_primary(c);
    PGconn *a = connect_or_die(pgh_node_conninfo(p));
    PGconn *b = connect_or_die(pgh_node_conninfo(p));
    double t0 = pgh_now_ms();
    cr_assert_eq(pgh_node_terminate_backends(p), 0, "%s", pgh_node_error(p));
    fprintf(stderr, "timing: terminate_backends: %.0f ms\n", pgh_now_ms() - t0);
    char state[6], err[1024];
    cr_expect_neq(pgh_conn_exec(a, "select 1", 5000, state, err, sizeof err), 0);
    fprintf(stderr, "terminated session saw: [%s] %s\n", state, err);
    cr_expect_neq(pgh_conn_exec(b, "select 1", 5000, state, err, sizeof err), 0);
    /* the server itself is fine */
    expect_value(p, "select count(*) from pgg_items", "100");
    PQfinish(a);
    PQfinish(b);
    pgh_cluster_free(c);
    no_leaks();
}

Test(cluster, external_faults_unsupported)
{
    pgh_cluster *c = start_cluster(0);
    if (!pgh_cluster_is_external(c)) {
        pgh_cluster_free(c);
        pgh_skip("checks external mode: set PGGUARD_TEST_PRIMARY");
    }
    pgh_node *p = pgh_cluster_primary(c);
    cr_expect_eq(pgh_node_stop(p, PGH_STOP_FAST), PGH_ENOTSUP);
    cr_expect_eq(pgh_node_stop(p, PGH_STOP_IMMEDIATE), PGH_ENOTSUP);
    cr_expect_eq(pgh_node_start(p), PGH_ENOTSUP);
    cr_expect_eq(pgh_node_restart(p), PGH_ENOTSUP);
    cr_expect_eq(pgh_node_hang(p), PGH_ENOTSUP);
    cr_expect_eq(pgh_node_resume(p), PGH_ENOTSUP);
    cr_expect_eq(pgh_node_promote(p), PGH_ENOTSUP);
    cr_expect_eq(pgh_node_pause_replay(p), PGH_ENOTSUP);
    cr_expect_eq(pgh_node_resume_replay(p), PGH_ENOTSUP);
    cr_expect_eq(pgh_node_pid(p), 0);
    cr_expect_null(pgh_cluster_dir(c));
    /* and the server is untouched */
    expect_value(p, "select pg_is_in_recovery()", "f");
    pgh_cluster_free(c);
    no_leaks();
}
