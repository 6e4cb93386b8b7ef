/*
 * The guarded pool against a real cluster (a primary and two streaming
 * replicas from the harness), with real faults.  Each test asserts results,
 * error codes, where calls ran and breaker states, and ends with the pool's
 * accounting balanced.
 */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "pool.h"
#include "pool_util.h"

static void setup_table(pgh_cluster *c)
{
    make_table(c, "pgg_pool_t", "v", 100);
}

/* ------------------------------------------------------------------ basics */

Test(pool, routes_reads_to_replicas_and_writes_to_primary)
{
    pgh_cluster *c = cluster_or_die(2);
    pgh_require_replicas(c, 2);
    setup_table(c);
    pgg_pool *p = pool_for(c, NULL);
    int served[3] = {0, 0, 0};

    for (int i = 0; i < 40; i++)
        served[read_ok(p, PGG_READ, "SELECT v FROM pgg_pool_t WHERE id = 7", 0)]++;
    cr_expect_eq(served[0], 0, "a read went to the primary while replicas were healthy");
    cr_expect_gt(served[1], 0, "replica 1 never served");
    cr_expect_gt(served[2], 0, "replica 2 never served");

    for (int i = 0; i < 10; i++) {
        cr_expect_eq(read_ok(p, PGG_WRITE, "UPDATE pgg_pool_t SET v = 'w' WHERE id = 1", 0), 0);
        cr_expect_eq(read_ok(p, PGG_READ_PRIMARY, "SELECT v FROM pgg_pool_t WHERE id = 1", 0), 0);
    }

    /* Parameters, and the result is an ordinary PGresult. */
    const char *vals[] = {"42"};
    pgg_info info;
    pgg_error e;
    PGresult *r = pgg_exec_params(p, PGG_READ, "SELECT v FROM pgg_pool_t WHERE id = $1", 1,
                                  NULL, vals, NULL, NULL, NULL, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "v42");
    cr_expect_eq(info.attempts, 1);
    cr_expect_neq(info.host_index, 0);
    cr_expect(strchr(info.host, ':') != NULL, "host is host:port: %s", info.host);
    PQclear(r);

    pgg_stats s;
    pgg_pool_stats(p, &s);
    cr_expect_eq(s.calls, 61);
    cr_expect_eq(s.calls_failed, 0);
    end_test(p, c);
}

Test(pool, user_errors_never_open_a_breaker)
{
    pgh_cluster *c = cluster_or_die(2);
    setup_table(c);
    pgg_pool *p = pool_for(c, NULL);
    pgg_error e;
    pgg_info info;

    for (int i = 0; i < 30; i++) {
        PGresult *r = pgg_exec(p, PGG_READ, "SELEC broken", NULL, &info, &e);
        cr_assert_not_null(r, "a user error is a server answer, not a failure");
        cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
        cr_expect_eq(e.code, PGG_ESERVER);
        cr_expect_str_eq(e.sqlstate, "42601");
        cr_expect_eq(info.attempts, 1, "a user error is not retried elsewhere");
        PQclear(r);

        r = pgg_exec(p, PGG_WRITE, "INSERT INTO pgg_pool_t VALUES (1, 'dup')", NULL, &info, &e);
        cr_assert_not_null(r);
        cr_expect_eq(e.code, PGG_ESERVER);
        cr_expect_str_eq(e.sqlstate, "23505");
        cr_expect_eq(info.host_index, 0);
        PQclear(r);

        r = pgg_exec(p, PGG_WRITE, "SELECT 1/0", NULL, &info, &e);
        cr_assert_not_null(r);
        cr_expect_str_eq(e.sqlstate, "22012");
        PQclear(r);
    }
    for (int i = 0; i < pgg_pool_host_count(p); i++) {
        pgg_host_stats h = host_stats(p, i);
        cr_expect_eq(h.state, PGG_BREAKER_CLOSED, "%s opened on user errors", h.host);
        for (int k = PGG_CLASS_CONNECTION; k < PGG_CLASS__COUNT; k++)
            cr_expect_eq(h.failures[k], 0, "%s counted a %s failure", h.host,
                         pgg_class_name((pgg_class)k));
    }
    cr_expect_eq(host_stats(p, 0).successes, 60);
    end_test(p, c);
}

/* ------------------------------------------------------------ primary down */

Test(pool, primary_stopped_writes_fail_fast_reads_continue)
{
    pgh_cluster *c = cluster_or_die(2);
    pgh_require_local(c, "stopping the primary");
    pgh_require_replicas(c, 2);
    setup_table(c);
    pgg_pool *p = pool_for(c, NULL);
    pgg_error e;
    pgg_info info;

    read_ok(p, PGG_WRITE, "UPDATE pgg_pool_t SET v = 'x' WHERE id = 2", 0);
    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);

    /* Writes fail (connection) until the breaker opens, then fail fast
     * without touching the network. */
    int failures_before_open = 0;
    bool open = false;
    for (int i = 0; i < 20 && !open; i++) {
        PGresult *r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_pool_t SET v = 'y' WHERE id = 2",
                               NULL, &info, &e);
        cr_expect_null(r);
        if (e.code == PGG_EOPEN) {
            open = true;
            cr_expect_eq(info.attempts, 0, "an open breaker still let the call through");
            cr_expect(strstr(e.message, "open") != NULL, "message: %s", e.message);
        } else {
            cr_expect(e.code == PGG_ECONNECT || e.code == PGG_EUNAVAILABLE,
                      "write failed with %s: %s", pgg_err_name(e.code), e.message);
            failures_before_open++;
        }
        PQclear(r);
    }
    cr_expect(open, "the primary's breaker never opened");
    /* Three host failures open it.  The one pooled session the stop killed
     * may cost a call of its own: a write sent on it fails, but a dead
     * pooled session says nothing of the host and is not counted. */
    pgg_host_stats hs = host_stats(p, 0);
    uint64_t counted = hs.failures[PGG_CLASS_CONNECTION] + hs.failures[PGG_CLASS_TIMEOUT] +
                       hs.failures[PGG_CLASS_UNAVAILABLE];
    cr_expect_eq(counted, 3, "the breaker counted %llu failures (threshold 3)",
                 (unsigned long long)counted);
    cr_expect_leq(failures_before_open, 3 + 1, "took %d failures to open (threshold 3)",
                  failures_before_open);
    cr_expect_eq(hs.state, PGG_BREAKER_OPEN);

    /* Reads never noticed. */
    for (int i = 0; i < 40; i++) {
        int h = read_ok(p, PGG_READ, "SELECT v FROM pgg_pool_t WHERE id = 3", 0);
        cr_expect(h == 1 || h == 2, "read served by %d", h);
    }
    /* Reading your own writes needs the primary: it is open too. */
    PGresult *r = pgg_exec(p, PGG_READ_PRIMARY, "SELECT 1", NULL, &info, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_EOPEN, "read-primary: %s", pgg_err_name(e.code));
    PQclear(r);

    end_test(p, c);
}

/* --------------------------------------------------------- replica hang */

Test(pool, hung_replica_is_bounded_then_skipped_then_probed_back)
{
    pgh_cluster *c = cluster_or_die(2);
    pgh_require_local(c, "a hang (SIGSTOP)");
    pgh_require_replicas(c, 2);
    setup_table(c);
    pgg_pool *p = pool_for(c, NULL);
    const int timeout_ms = 300;
    double worst_overshoot = -1e9;

    /* Both replicas hold pooled connections before the hang. */
    for (int i = 0; i < 10; i++)
        read_ok(p, PGG_READ, "SELECT 1", 0);

    cr_assert_eq(pgh_node_hang(pgh_cluster_replica(c, 0)), 0);
    int failed = 0, served_by_hung = 0;
    for (int i = 0; i < 30; i++) {
        pgg_call call = {.timeout_ms = timeout_ms};
        pgg_info info;
        pgg_error e;
        double t0 = pgh_now_ms();
        PGresult *r = pgg_exec(p, PGG_READ, "SELECT v FROM pgg_pool_t WHERE id = 5", &call,
                               &info, &e);
        double took = pgh_now_ms() - t0;
        if (took - timeout_ms > worst_overshoot)
            worst_overshoot = took - timeout_ms;
        cr_expect_leq(took, timeout_ms + 50.0, "call %d waited %.1f ms, deadline %d ms", i,
                      took, timeout_ms);
        if (!r) {
            failed++;
            cr_expect_eq(e.code, PGG_ETIMEDOUT, "failed with %s: %s", pgg_err_name(e.code),
                         e.message);
        } else if (info.host_index == 1) {
            served_by_hung++;
        }
        PQclear(r);
    }
    fprintf(stderr, "hung replica: %d of 30 reads timed out; worst overshoot %.2f ms\n", failed,
            worst_overshoot);
    cr_expect_eq(served_by_hung, 0);
    cr_expect_leq(failed, 3, "the breaker should open after 3 timeouts");
    /* Reads now move off the hung host within their deadline (the
     * adaptive attempt bound) and then avoid it, so they alone no longer
     * open its breaker: the health probes, bounded by
     * health_probe_timeout_ms, time out and do. */
    cr_expect(wait_state(p, 1, PGG_BREAKER_OPEN, 5000) ||
                  host_stats(p, 1).state == PGG_BREAKER_HALF_OPEN,
              "hung replica's breaker is %s", pgg_breaker_state_name(host_stats(p, 1).state));
    pgg_host_stats hs = host_stats(p, 1);
    cr_expect_geq(hs.failures[PGG_CLASS_TIMEOUT], 1);

    /* Resume: a half-open probe (the health thread's, or a call's) closes it. */
    cr_assert_eq(pgh_node_resume(pgh_cluster_replica(c, 0)), 0);
    cr_expect(wait_state(p, 1, PGG_BREAKER_CLOSED, 15000), "breaker did not close after resume: %s",
              pgg_breaker_state_name(host_stats(p, 1).state));
    cr_expect(reads_reach(p, 1, 40), "reads never returned to the resumed replica");

    end_test(p, c);
}

/* ----------------------------------------------------------- promotion */

Test(pool, writes_follow_a_promotion)
{
    pgh_cluster *c = cluster_or_die(2);
    pgh_require_local(c, "promotion");
    pgh_require_replicas(c, 2);
    setup_table(c);
    pgg_pool *p = pool_for(c, NULL);

    read_ok(p, PGG_WRITE, "UPDATE pgg_pool_t SET v = 'before' WHERE id = 9", 0);
    cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, 0), pgh_cluster_primary(c), 10000), 0);
    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    double t0 = pgh_now_ms();
    cr_assert_eq(pgh_node_promote(pgh_cluster_replica(c, 0)), 0);

    int served = -1;
    double followed = -1;
    while (pgh_now_ms() - t0 < 15000) {
        pgg_info info;
        pgg_error e;
        PGresult *r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_pool_t SET v = 'after' WHERE id = 9",
                               NULL, &info, &e);
        if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
            served = info.host_index;
            followed = pgh_now_ms() - t0;
            PQclear(r);
            break;
        }
        PQclear(r);
        sleep_ms(10);
    }
    fprintf(stderr, "promotion followed by writes after %.0f ms\n", followed);
    cr_expect_eq(served, 1, "writes never reached the promoted replica");
    cr_expect_eq(host_stats(p, 1).role, PGG_ROLE_PRIMARY);
    char v[64];
    cr_expect_eq(pgh_node_query_value(pgh_cluster_replica(c, 0),
                                      "SELECT v FROM pgg_pool_t WHERE id = 9", v, sizeof v), 0);
    cr_expect_str_eq(v, "after");

    end_test(p, c);
}

/* ----------------------------------------------------------------- lag */

Test(pool, lagging_replica_gets_no_reads)
{
    pgh_cluster *c = cluster_or_die(2);
    pgh_require_local(c, "pausing replay");
    pgh_require_replicas(c, 2);
    setup_table(c);
    pgg_pool *p = pool_for(c, "max_replica_lag_bytes=65536");
    pgh_node *lagger = pgh_cluster_replica(c, 0);

    cr_assert_eq(pgh_node_pause_replay(lagger), 0);
    read_ok(p, PGG_WRITE,
            "INSERT INTO pgg_pool_t SELECT g, repeat('x', 500) FROM generate_series(1000, 2000) g",
            0);
    /* The other replica catches up; the paused one cannot. */
    cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, 1), pgh_cluster_primary(c), 10000), 0);
    double end = pgh_now_ms() + 10000;
    while (pgh_now_ms() < end &&
           (host_stats(p, 1).lag_bytes <= 65536 || host_stats(p, 2).lag_bytes > 65536))
        sleep_ms(20);
    fprintf(stderr, "lagging replica: %lld bytes behind\n", (long long)host_stats(p, 1).lag_bytes);
    cr_assert_gt(host_stats(p, 1).lag_bytes, 65536, "the health thread never measured the lag");

    for (int i = 0; i < 30; i++) {
        int h = read_ok(p, PGG_READ, "SELECT count(*) FROM pgg_pool_t", 0);
        cr_expect_eq(h, 2, "a read went to host %d (lag %lld / %lld)", h,
                     (long long)host_stats(p, 1).lag_bytes, (long long)host_stats(p, 2).lag_bytes);
    }

    cr_assert_eq(pgh_node_resume_replay(lagger), 0);
    end = pgh_now_ms() + 10000;
    while (pgh_now_ms() < end && host_stats(p, 1).lag_bytes > 65536)
        sleep_ms(20);
    cr_expect(reads_reach(p, 1, 40), "reads never returned to the replica after it caught up");

    end_test(p, c);
}

/* ------------------------------------------------------- replicas down */

Test(pool, all_replicas_down_reads_go_to_the_primary)
{
    pgh_cluster *c = cluster_or_die(2);
    pgh_require_local(c, "stopping replicas");
    pgh_require_replicas(c, 2);
    setup_table(c);
    pgg_pool *p = pool_for(c, NULL);

    cr_assert_eq(pgh_node_stop(pgh_cluster_replica(c, 0), PGH_STOP_IMMEDIATE), 0);
    cr_assert_eq(pgh_node_stop(pgh_cluster_replica(c, 1), PGH_STOP_IMMEDIATE), 0);
    for (int i = 0; i < 40; i++)
        cr_expect_eq(read_ok(p, PGG_READ, "SELECT v FROM pgg_pool_t WHERE id = 4", 0), 0);
    cr_expect(wait_state(p, 1, PGG_BREAKER_OPEN, 5000) || host_stats(p, 1).state == PGG_BREAKER_HALF_OPEN);
    cr_expect_gt(host_stats(p, 1).failures[PGG_CLASS_CONNECTION] +
                     host_stats(p, 2).failures[PGG_CLASS_CONNECTION], 0);

    end_test(p, c);
}

/* ------------------------------------------------------------ bulkhead */

Test(pool, bulkhead_rejections_are_immediate_counted_and_open_nothing)
{
    pgh_cluster *c = cluster_or_die(1);
    pgg_pool *p = pool_for(c, "bulkhead.max_concurrent=2 bulkhead.max_wait_ms=0");
    pgg_error e;
    pgg_info info;

    pgg_lease *a = pgg_acquire(p, PGG_READ, 0, NULL, &e);
    cr_assert_not_null(a, "%s", e.message);
    pgg_lease *b = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(b, "%s", e.message);

    for (int i = 0; i < 50; i++) {
        double t0 = pgh_now_ms();
        PGresult *r = pgg_exec(p, PGG_READ, "SELECT 1", NULL, &info, &e);
        double took = pgh_now_ms() - t0;
        cr_expect_null(r);
        cr_expect_eq(e.code, PGG_EBULKHEAD);
        cr_expect_eq(info.attempts, 0);
        cr_expect_lt(took, 100.0, "a rejection waited %.1f ms", took);
        PQclear(r);
    }
    pgg_lease *third = pgg_acquire(p, PGG_READ, 0, NULL, &e);
    cr_expect_null(third);
    cr_expect_eq(e.code, PGG_EBULKHEAD);

    pgg_stats s;
    pgg_pool_stats(p, &s);
    cr_expect_eq(s.bulkhead_rejections, 51);
    cr_expect_eq(s.bulkhead_in_use, 2);
    for (int i = 0; i < pgg_pool_host_count(p); i++) {
        pgg_host_stats h = host_stats(p, i);
        cr_expect_eq(h.state, PGG_BREAKER_CLOSED);
        cr_expect_eq(h.failures[PGG_CLASS_CONNECTION] + h.failures[PGG_CLASS_TIMEOUT] +
                         h.failures[PGG_CLASS_UNAVAILABLE],
                     0);
    }
    pgg_release(a);
    pgg_release(b);
    read_ok(p, PGG_READ, "SELECT 1", 0);

    /* Waiting for a slot: the bulkhead admits a waiter when one frees. */
    cr_assert_eq(pgg_pool_resize_bulkhead(p, 1), PGG_OK);
    a = pgg_acquire(p, PGG_READ, 0, NULL, &e);
    cr_assert_not_null(a);
    PGresult *r = pgg_exec(p, PGG_READ, "SELECT 1", NULL, NULL, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_EBULKHEAD);
    pgg_release(a);

    end_test(p, c);
}

/* ------------------------------------------------------------ the proxy */

Test(pool, blackhole_times_out_at_the_deadline_and_opens)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_replicas(c, 1);
    char err[512];
    pgh_node *replica = pgh_cluster_replica(c, 0);
    pgh_proxy *px = pgh_proxy_start(pgh_node_host(replica), pgh_node_port(replica), err, sizeof err);
    cr_assert_not_null(px, "%s", err);
    char *ci = conninfo_via_proxy(c, px);
    pgg_pool *p = pool_for_conninfo(ci, NULL);
    free(ci);
    cr_assert(wait_role(p, 1, PGG_ROLE_STANDBY, 10000));

    cr_expect_eq(read_ok(p, PGG_READ, "SELECT 1", 0), 1);
    pgh_proxy_set_mode(px, PGH_PROXY_BLACKHOLE, 0);
    int timeouts = 0;
    for (int i = 0; i < 10; i++) {
        pgg_call call = {.timeout_ms = 250};
        pgg_info info;
        pgg_error e;
        double t0 = pgh_now_ms();
        PGresult *r = pgg_exec(p, PGG_READ, "SELECT 1", &call, &info, &e);
        double took = pgh_now_ms() - t0;
        cr_expect_leq(took, 250 + 50.0, "waited %.1f ms past a 250 ms deadline", took);
        if (!r) {
            cr_expect_eq(e.code, PGG_ETIMEDOUT, "%s: %s", pgg_err_name(e.code), e.message);
            timeouts++;
        } else {
            cr_expect_eq(info.host_index, 0, "served through the blackhole?");
        }
        PQclear(r);
    }
    /* A read attempt on the blackholed replica is cut by its adaptive
     * bound and the read served by the primary (before: it timed out);
     * the cut attempt counts as a timeout, and the probes that time out
     * open the breaker. */
    cr_expect_leq(timeouts, 3);
    cr_expect_geq(host_stats(p, 1).failures[PGG_CLASS_TIMEOUT], 1);
    cr_expect(wait_state(p, 1, PGG_BREAKER_OPEN, 5000) ||
                  host_stats(p, 1).state != PGG_BREAKER_CLOSED,
              "blackholed replica still closed");

    /* RST on everything: connection failures, retried on the primary. */
    pgh_proxy_set_mode(px, PGH_PROXY_RESET, 0);
    pgg_pool_reset_breaker(p, 1);
    for (int i = 0; i < 10; i++)
        cr_expect_eq(read_ok(p, PGG_READ, "SELECT 1", 0), 0);

    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0);
    cr_expect(wait_state(p, 1, PGG_BREAKER_CLOSED, 15000), "did not close after PASS: %s",
              pgg_breaker_state_name(host_stats(p, 1).state));

    pgh_proxy_free(px);
    end_test(p, c);
}

/* --------------------------------------------------------------- leases */

Test(pool, lease_on_a_host_that_dies_mid_transaction)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "stopping the primary");
    setup_table(c);
    pgg_pool *p = pool_for(c, NULL);
    pgg_error e;
    pgg_info info;

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, &info, &e);
    cr_assert_not_null(l, "%s", e.message);
    cr_expect_eq(info.host_index, 0);
    cr_expect_not_null(pgg_lease_conn(l));
    PGresult *r = pgg_lease_exec(l, "BEGIN", 0, &e);
    cr_assert_not_null(r, "%s", e.message);
    PQclear(r);
    r = pgg_lease_exec(l, "INSERT INTO pgg_pool_t VALUES (5000, 'lost')", 0, &e);
    cr_assert_not_null(r, "%s", e.message);
    PQclear(r);
    cr_expect_eq(host_stats(p, 0).conns_busy, 1);

    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    r = pgg_lease_exec(l, "COMMIT", 1000, &e);
    cr_expect_null(r, "a commit on a dead server succeeded?");
    cr_expect(e.code == PGG_ECONNECT || e.code == PGG_EUNAVAILABLE, "%s: %s",
              pgg_err_name(e.code), e.message);
    r = pgg_lease_exec(l, "SELECT 1", 1000, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_ECONNECT, "a broken lease keeps failing");
    pgg_release(l);

    pgg_host_stats hs = host_stats(p, 0);
    cr_expect_eq(hs.conns_busy, 0);
    cr_expect_eq(hs.conns_open, hs.conns_idle);

    cr_assert_eq(pgh_node_start(pgh_cluster_primary(c)), 0);
    char v[16];
    cr_assert_eq(pgh_node_query_value(pgh_cluster_primary(c),
                                      "SELECT count(*) FROM pgg_pool_t WHERE id = 5000", v, sizeof v), 0);
    cr_expect_str_eq(v, "0", "the uncommitted row survived");

    end_test(p, c);
}

Test(pool, lease_transaction_commits_and_connection_returns)
{
    pgh_cluster *c = cluster_or_die(1);
    setup_table(c);
    pgg_pool *p = pool_for(c, NULL);
    pgg_error e;

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    const char *vals[] = {"6000", "kept"};
    PQclear(pgg_lease_exec(l, "BEGIN", 0, &e));
    PGresult *r = pgg_lease_exec_params(l, "INSERT INTO pgg_pool_t VALUES ($1, $2)", 2, NULL,
                                        vals, NULL, NULL, 0, 0, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    /* A user error inside the transaction: the lease is not broken. */
    r = pgg_lease_exec(l, "SELECT nonsense_column FROM pgg_pool_t", 0, &e);
    cr_assert_not_null(r);
    cr_expect_eq(e.code, PGG_ESERVER);
    PQclear(r);
    PQclear(pgg_lease_exec(l, "ROLLBACK", 0, &e));
    PQclear(pgg_lease_exec(l, "BEGIN", 0, &e));
    PQclear(pgg_lease_exec_params(l, "INSERT INTO pgg_pool_t VALUES ($1, $2)", 2, NULL, vals,
                                  NULL, NULL, 0, 0, &e));
    PQclear(pgg_lease_exec(l, "COMMIT", 0, &e));
    cr_expect_eq(e.code, PGG_OK, "%s", e.message);
    pgg_release(l);
    cr_expect_eq(host_stats(p, 0).conns_idle, 1, "the clean connection went back to the pool");

    /* Released mid-transaction: closed, never pooled. */
    l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l);
    PQclear(pgg_lease_exec(l, "BEGIN", 0, &e));
    pgg_release(l);
    pgg_host_stats hs = host_stats(p, 0);
    cr_expect_eq(hs.conns_open, 0, "a connection in a transaction was pooled");

    char v[16];
    pgh_node_query_value(pgh_cluster_primary(c),
                         "SELECT count(*) FROM pgg_pool_t WHERE id = 6000", v, sizeof v);
    cr_expect_str_eq(v, "1");
    end_test(p, c);
}

/* ------------------------------------------------------- bad input */

Test(pool, bad_input_gets_clear_errors)
{
    pgg_error e;
    pgg_config *cfg = pgg_config_new();

    cr_expect_null(pgg_pool_new(NULL, &e));
    cr_expect_eq(e.code, PGG_EINVAL);
    cr_expect_null(pgg_pool_new(cfg, &e), "a pool without servers");
    cr_expect_eq(e.code, PGG_ECONFIG);
    cr_expect_neq(pgg_config_set_servers(cfg, "host=a port=1,2,3 password=sekrit", &e), PGG_OK);
    cr_expect_null(strstr(e.message, "sekrit"), "password in: %s", e.message);
    pgg_config_free(cfg);

    cr_expect_null(pgg_exec(NULL, PGG_READ, "SELECT 1", NULL, NULL, &e));
    cr_expect_eq(e.code, PGG_EINVAL);
    cr_expect_null(pgg_acquire(NULL, PGG_READ, 0, NULL, &e));
    cr_expect_eq(e.code, PGG_EINVAL);
    cr_expect_null(pgg_lease_exec(NULL, "SELECT 1", 0, &e));
    cr_expect_eq(e.code, PGG_EINVAL);
    pgg_release(NULL);
    pgg_pool_free(NULL);
    cr_expect_eq(pgg_pool_host_stats(NULL, 0, NULL), PGG_EINVAL);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

/*
 * An option libpq rejects at every connect (a bad sslmode, a hostaddr that
 * is no address, a service that is not defined) is the caller's
 * configuration: refused when the pool is made, PGG_ECONFIG, the message
 * naming the option and never the password.  Before, the pool was made and
 * each connect failed as a connection failure of the host: its breaker
 * opened on a configuration error.
 */
Test(pool, options_libpq_rejects_are_refused_when_the_pool_is_made)
{
    static const struct {
        const char *conninfo, *names;
    } cases[] = {
        {"host=127.0.0.1 port=1 password=hunter2pw sslmode=bogus", "sslmode"},
        {"hostaddr=not-an-ip port=1 password=hunter2pw", "hostaddr"},
        {"host=a,b hostaddr=127.0.0.1,not-an-ip port=1 password=hunter2pw", "host 2"},
        {"host=127.0.0.1 port=1 password=hunter2pw gssencmode=bogus", "gssencmode"},
        {"host=127.0.0.1 port=1 password=hunter2pw channel_binding=bogus", "channel_binding"},
        {"host=127.0.0.1 port=1 password=hunter2pw ssl_min_protocol_version=TLSv9",
         "ssl_min_protocol_version"},
        {"host=127.0.0.1 port=1 password=hunter2pw service=pgg_no_such_service", "service"},
        /* A password that is also the bad value: the value is scrubbed. */
        {"host=127.0.0.1 port=1 password=hunter2pw sslmode=hunter2pw", "sslmode"},
    };

    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        pgg_error e;
        pgg_config *cfg = pgg_config_new();

        cr_assert_eq(pgg_config_set_servers(cfg, cases[k].conninfo, &e), PGG_OK, "%s",
                     e.message);
        pgg_pool *p = pgg_pool_new(cfg, &e);
        cr_expect_null(p, "case %zu: a pool made with an option libpq rejects", k);
        if (p) {
            pgg_pool_free(p);
        } else {
            cr_expect_eq(e.code, PGG_ECONFIG, "case %zu: %s %s", k, pgg_err_name(e.code),
                         e.message);
            cr_expect_not_null(strstr(e.message, cases[k].names), "case %zu: %s", k,
                               e.message);
            cr_expect_null(strstr(e.message, "hunter2pw"), "password in: %s", e.message);
            cr_expect_null(strchr(e.message, '\n'), "%s", e.message);
        }
        pgg_config_free(cfg);
    }
    /* The check sends nothing: a host nothing listens on still makes a pool. */
    pgg_error e;
    pgg_config *cfg = pgg_config_new();
    cr_assert_eq(pgg_config_set_servers(cfg,
                                        "host=127.0.0.1 hostaddr=127.0.0.1 port=1 "
                                        "sslmode=disable gssencmode=disable",
                                        &e),
                 PGG_OK);
    pgg_pool *p = pgg_pool_new(cfg, &e);
    cr_expect_not_null(p, "%s", e.message);
    pgg_pool_free(p);
    pgg_config_free(cfg);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

/*
 * Lists libpq reads at each connect from the environment or a service
 * file, valid there (PGHOSTADDR with one address per host of the list;
 * a service's host=a,b with port=1,2 or hostaddr=a,b), and a single
 * hostaddr there: none is a configuration error, and the pool is made.
 * Before (the check's one socket path as the host), libpq read them
 * anyway and judged them against it: "could not match 1 host names to 2
 * hostaddr values", "could not match 2 port numbers to 1 hosts":
 * PGG_ECONFIG for pools whose every connect libpq accepts (cases 0, 2, 3;
 * 1 and 4 passed, the check starting a TCP connect to the address).
 */
Test(pool, lists_libpq_reads_from_the_environment_or_a_service_make_a_pool)
{
    static const struct {
        const char *env_hostaddr, *service, *conninfo;
    } cases[] = {
        {"127.0.0.1,127.0.0.1", NULL, "host=a,b port=1"},
        {"127.0.0.1", NULL, "host=localhost port=1"},
        {NULL, "host=127.0.0.1,127.0.0.1\nport=1,2\n", "service=pggsvc"},
        {NULL, "hostaddr=127.0.0.1,127.0.0.1\nport=1\n", "service=pggsvc"},
        {NULL, "hostaddr=127.0.0.1\nport=1\n", "service=pggsvc"},
    };
    char path[] = "/tmp/pgg-service-XXXXXX";
    int fd = mkstemp(path);

    cr_assert_geq(fd, 0);
    close(fd);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        pgg_error e;
        pgg_config *cfg = pgg_config_new();

        unsetenv("PGHOSTADDR");
        unsetenv("PGSERVICEFILE");
        unsetenv("PGSERVICE");
        if (cases[k].env_hostaddr)
            setenv("PGHOSTADDR", cases[k].env_hostaddr, 1);
        if (cases[k].service) {
            FILE *f = fopen(path, "w");

            cr_assert_not_null(f);
            fprintf(f, "[pggsvc]\n%s", cases[k].service);
            fclose(f);
            setenv("PGSERVICEFILE", path, 1);
        }
        cr_assert_eq(pgg_config_set_servers(cfg, cases[k].conninfo, &e), PGG_OK, "case %zu: %s",
                     k, e.message);
        pgg_pool *p = pgg_pool_new(cfg, &e);
        cr_expect_not_null(p, "case %zu: %s %s", k, pgg_err_name(e.code), e.message);
        pgg_pool_free(p);
        pgg_config_free(cfg);
    }
    /* The check still judges every other option read there. */
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "[pggsvc]\nhost=127.0.0.1,127.0.0.1\nport=1,2\nsslmode=bogus\n");
    fclose(f);
    unsetenv("PGHOSTADDR");
    setenv("PGSERVICEFILE", path, 1);
    pgg_error e;
    pgg_config *cfg = pgg_config_new();
    cr_assert_eq(pgg_config_set_servers(cfg, "service=pggsvc", &e), PGG_OK, "%s", e.message);
    pgg_pool *p = pgg_pool_new(cfg, &e);
    cr_expect_null(p, "a pool made with the service's sslmode=bogus");
    if (p)
        pgg_pool_free(p);
    else
        cr_expect_not_null(strstr(e.message, "sslmode"), "%s", e.message);
    pgg_config_free(cfg);
    unsetenv("PGSERVICEFILE");
    unlink(path);
    /* A value from the environment is refused naming its variable: the
     * conninfo does not show it. */
    setenv("PGSSLMODE", "bogus", 1);
    cfg = pgg_config_new();
    cr_assert_eq(pgg_config_set_servers(cfg, "host=127.0.0.1 port=1", &e), PGG_OK, "%s",
                 e.message);
    p = pgg_pool_new(cfg, &e);
    cr_expect_null(p, "a pool made with PGSSLMODE=bogus");
    if (p) {
        pgg_pool_free(p);
    } else {
        cr_expect_eq(e.code, PGG_ECONFIG, "%s", pgg_err_name(e.code));
        cr_expect_not_null(strstr(e.message, "sslmode"), "%s", e.message);
        cr_expect_not_null(strstr(e.message, "PGSSLMODE"), "the variable not named: %s",
                           e.message);
    }
    pgg_config_free(cfg);
    unsetenv("PGSSLMODE");
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

Test(pool, unreachable_hosts_fail_within_the_deadline_without_a_password_leak)
{
    /* Nothing listens on port 1: connects are refused at once. */
    pgg_pool *p = pool_for_conninfo(
        "host=127.0.0.1 port=1 user=postgres password=topsecret dbname=postgres", NULL);
    pgg_error e;
    pgg_info info;

    for (int i = 0; i < 6; i++) {
        PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT 1", NULL, &info, &e);
        cr_expect_null(r);
        cr_expect(e.code == PGG_ECONNECT || e.code == PGG_EOPEN || e.code == PGG_ENOPRIMARY,
                  "%s", pgg_err_name(e.code));
        cr_expect_null(strstr(e.message, "topsecret"), "password in: %s", e.message);
        PQclear(r);
    }
    pgg_host_stats hs = host_stats(p, 0);
    cr_expect_null(strstr(hs.last_error, "topsecret"));
    cr_expect_neq(hs.state, PGG_BREAKER_CLOSED);
    end_test(p, NULL);
}

/* ------------------------------------------------------------- threads */

typedef struct {
    pgg_pool *p;
    int ok, failed;
} worker_arg;

static void *worker(void *arg)
{
    worker_arg *w = arg;
    for (int i = 0; i < 300; i++) {
        pgg_error e;
        PGresult *r = pgg_exec(w->p, i % 5 ? PGG_READ : PGG_WRITE,
                               i % 5 ? "SELECT v FROM pgg_pool_t WHERE id = 3"
                                     : "UPDATE pgg_pool_t SET v = 'm' WHERE id = 3",
                               NULL, NULL, &e);
        if (r && (PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK))
            w->ok++;
        else
            w->failed++;
        PQclear(r);
    }
    return NULL;
}

Test(pool, many_threads_share_one_pool)
{
    pgh_cluster *c = cluster_or_die(2);
    setup_table(c);
    pgg_pool *p = pool_for(c, "pool_max=3 bulkhead.max_concurrent=8 bulkhead.max_wait_ms=2000");
    pthread_t t[8];
    worker_arg w[8];

    for (int i = 0; i < 8; i++) {
        w[i] = (worker_arg){p, 0, 0};
        pthread_create(&t[i], NULL, worker, &w[i]);
    }
    int ok = 0, failed = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        ok += w[i].ok;
        failed += w[i].failed;
    }
    cr_expect_eq(failed, 0);
    cr_expect_eq(ok, 2400);
    for (int i = 0; i < pgg_pool_host_count(p); i++)
        cr_expect_leq(host_stats(p, i).conns_open, 3, "pool_max exceeded");
    end_test(p, c);
}

/* A thread's connection is kept for it (parked, without the host lock),
 * yet serves another thread rather than make it connect or wait. */
static void *one_read(void *arg)
{
    pgg_pool *p = arg;
    pgg_error e;
    PGresult *r = pgg_exec(p, PGG_READ_PRIMARY, "SELECT 1", NULL, NULL, &e);
    bool ok = r && PQresultStatus(r) == PGRES_TUPLES_OK;

    PQclear(r);
    return ok ? p : NULL;
}

Test(pool, a_parked_connection_serves_other_threads)
{
    pgh_cluster *c = cluster_or_die(0);
    /* The primary's reads: external servers may have replicas. */
    pgg_pool *p = pool_for(c, "pool_max=1 call_timeout_ms=3000 health_interval_ms=60000");
    pthread_t t;
    void *ok;
    double t0;

    read_ok(p, PGG_READ_PRIMARY, "SELECT 1", 0);
    /* Parked in this thread's slot, and counted idle. */
    cr_expect_eq(host_stats(p, 0).conns_idle, 1);
    cr_expect_eq(host_stats(p, 0).conns_busy, 0);
    /* Other threads, one after another: each takes the one connection
     * from wherever the last one left it, at once (pool_max=1: a thread
     * that could not would wait out its 3 s deadline and fail). */
    t0 = pgh_now_ms();
    for (int i = 0; i < 20; i++) {
        pthread_create(&t, NULL, one_read, p);
        pthread_join(t, &ok);
        cr_assert_not_null(ok, "call %d failed", i);
        read_ok(p, PGG_READ_PRIMARY, "SELECT 1", 0);
    }
    cr_expect_lt(pgh_now_ms() - t0, 2500, "the calls waited for the connection");
    cr_expect_eq(host_stats(p, 0).connects, 1, "a new connection was opened");
    /* Eight threads at once on the one connection: waiters are woken by
     * the give-backs, none fails. */
    {
        pthread_t ts[8];

        for (int i = 0; i < 8; i++)
            pthread_create(&ts[i], NULL, one_read, p);
        for (int i = 0; i < 8; i++) {
            pthread_join(ts[i], &ok);
            cr_expect_not_null(ok, "thread %d failed", i);
        }
    }
    cr_expect_eq(host_stats(p, 0).connects, 1);
    end_test(p, c);
}

/* The next value of the test's sequence, by a call that must succeed (no
 * Criterion assert here: also run on other threads); -1 on failure. */
static long next_value(pgg_pool *p, int timeout_ms)
{
    pgg_call call = {.timeout_ms = timeout_ms};
    pgg_error e;
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT nextval('pgg_fair_seq')", &call, NULL, &e);
    long v = r && PQresultStatus(r) == PGRES_TUPLES_OK ? atol(PQgetvalue(r, 0, 0)) : -1;

    if (v < 0)
        fprintf(stderr, "nextval: %s %s\n", pgg_err_name(e.code), e.message);
    PQclear(r);
    return v;
}

typedef struct fair_waiter {
    pgg_pool *p;
    long value; /* its place in the order of service */
} fair_waiter;

static void *fair_waiter_main(void *arg)
{
    fair_waiter *w = arg;

    w->value = next_value(w->p, 30000);
    return NULL;
}

/* Blocking borrowers waiting for host 0 (under its lock, as stats read). */
static int host_waiting(pgg_pool *p)
{
    pgg_host_counts hc;

    pgg__host_counts(&p->hosts[0], &hc);
    return hc.waiting;
}

/*
 * Blocking borrowers are served in the order they came: pool_max=n (1, then
 * 2), n leases hold every connection, n calls on other threads wait for one
 * (long deadlines), then the leases' thread gives the connections back and
 * at once makes a stream of calls of its own.  Before, a give-back went to
 * the idle list and woke a waiter, and the thread that gave it back,
 * running already, took it again on its next call (and on every call
 * after: a waiter woke to find nothing, under saturation until its
 * deadline).  Now each connection given back is the next waiter's, and the
 * stream's first call waits until a waiter has been served and given its
 * connection back: a waiter's nextval is below every one of the stream's.
 * With one connection that is the one waiter's; with two, a waiter woken
 * for its connection but not yet running keeps it, while the stream may be
 * served on the other once it comes back (so only the first service is in
 * order).  Several rounds: one that a waiter won before proved nothing.
 */
#define FAIR_MAX 2

Test(pool, a_waiting_borrower_is_served_before_newcomers)
{
    pgh_cluster *c = cluster_or_die(0);
    const int rounds = 6, stream = 5;
    int barged = 0;

    cr_assert_eq(pgh_node_exec(pgh_cluster_primary(c),
                               "DROP SEQUENCE IF EXISTS pgg_fair_seq;"
                               "CREATE SEQUENCE pgg_fair_seq"),
                 0, "%s", pgh_node_error(pgh_cluster_primary(c)));
    for (int n = 1; n <= FAIR_MAX; n++) {
        char settings[128];
        pgg_pool *p;

        snprintf(settings, sizeof settings,
                 "pool_max=%d pool_min_idle=0 breaker.mode=disabled health_interval_ms=60000",
                 n);
        p = pool_for(c, settings);
        for (int round = 0; round < rounds; round++) {
            fair_waiter w[FAIR_MAX];
            pgg_lease *lease[FAIR_MAX];
            pthread_t t[FAIR_MAX];
            long first = -1;
            double end = pgh_now_ms() + 10000;
            pgg_error e;

            for (int i = 0; i < n; i++) {
                lease[i] = pgg_acquire(p, PGG_WRITE, 3000, NULL, &e);
                cr_assert_not_null(lease[i], "pool_max=%d round %d: acquire: %s", n, round,
                                   e.message);
            }
            for (int i = 0; i < n; i++) {
                w[i] = (fair_waiter){.p = p, .value = -1};
                cr_assert_eq(pthread_create(&t[i], NULL, fair_waiter_main, &w[i]), 0);
            }
            while (host_waiting(p) < n && pgh_now_ms() < end)
                sleep_ms(1);
            cr_assert_eq(host_waiting(p), n, "pool_max=%d round %d: the calls never waited", n,
                         round);
            for (int i = 0; i < n; i++)
                pgg_release(lease[i]);
            for (int i = 0; i < stream; i++) {
                long v = next_value(p, 30000);

                cr_assert_gt(v, 0, "pool_max=%d round %d: a newcomer's call failed", n, round);
                if (i == 0)
                    first = v;
            }
            long served_first = LONG_MAX;

            for (int i = 0; i < n; i++) {
                pthread_join(t[i], NULL);
                cr_assert_gt(w[i].value, 0, "pool_max=%d round %d: a waiter's call failed", n,
                             round);
                if (w[i].value < served_first)
                    served_first = w[i].value;
            }
            barged += first < served_first;
            cr_expect_lt(served_first, first,
                         "pool_max=%d round %d: a newcomer was served (%ld) before every "
                         "waiter (first %ld)",
                         n, round, first, served_first);
        }
        assert_balanced(p);
        pgg_pool_free(p);
    }
    cr_expect_eq(barged, 0, "a newcomer was served first in %d rounds", barged);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

/*
 * A waiter that gives up leaves the queue ("Waiting in turn"): pool_max=1,
 * a lease holds the connection, three calls wait for it in this order: one
 * the test cancels, one whose 200 ms deadline runs out, one with a long
 * deadline.  Once the first two have ended, the lease goes back: the third
 * is now first in line and must be served.  A waiter left in the queue
 * when it ended would count ahead of it for good: the third would wait out
 * its deadline.
 */
Test(pool, a_waiter_that_gives_up_leaves_its_place_to_the_next)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "pool_max=1 pool_min_idle=0 breaker.mode=disabled "
                              "health_interval_ms=60000");
    pgg_cancel *cancel = pgg_cancel_new();
    thread_call w[3] = {{.p = p, .intent = PGG_WRITE, .timeout_ms = 30000, .cancel = cancel},
                          {.p = p, .intent = PGG_WRITE, .timeout_ms = 200},
                          {.p = p, .intent = PGG_WRITE, .timeout_ms = 10000}};
    pthread_t t[3];
    pgg_error e;
    pgg_lease *lease = pgg_acquire(p, PGG_WRITE, 3000, NULL, &e);
    double end = pgh_now_ms() + 10000;

    cr_assert_not_null(cancel);
    cr_assert_not_null(lease, "acquire: %s", e.message);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(pthread_create(&t[i], NULL, exec_in_thread, &w[i]), 0);
        while (host_waiting(p) < i + 1 && pgh_now_ms() < end)
            sleep_ms(1);
        cr_assert_eq(host_waiting(p), i + 1, "call %d never waited", i);
    }
    pgg_cancel_fire(cancel);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    cr_expect_eq(w[0].code, PGG_ECANCELED, "the cancelled call: %s", pgg_err_name(w[0].code));
    cr_expect_eq(w[1].code, PGG_ETIMEDOUT, "the short call: %s", pgg_err_name(w[1].code));
    pgg_release(lease);
    pthread_join(t[2], NULL);
    cr_expect_eq(w[2].code, PGG_OK, "the last waiter: %s", pgg_err_name(w[2].code));
    pthread_mutex_lock(&p->hosts[0].mu);
    cr_expect_eq(p->hosts[0].n_queued, 0, "%d still queued", p->hosts[0].n_queued);
    pthread_mutex_unlock(&p->hosts[0].mu);
    pgg_cancel_free(cancel);
    end_test(p, c);
}

/*
 * A borrow that took the only connection and found it dead frees its room
 * for the borrower that queued meanwhile.  pool_max=1, validate every lend,
 * a proxy that delays each chunk by 500 ms: the first call takes the
 * connection and validates it (a slow round trip); a second call queues;
 * the session is terminated before the check reaches the server.  The
 * check fails, the first call closes the session (room for one connect
 * again) and, as another queues, queues behind it.  Before, nobody was
 * woken: both slept until their deadlines with the pool empty ("all 1
 * connections busy", PGG_ETIMEDOUT).  The connection is taken from its
 * parking slot (idle_list false) or from the idle list, where the health
 * thread's trim moves parked ones (true): two paths of host.c.
 */
static void dead_session_while_another_queues(bool idle_list)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_proxy *px;
    pgg_pool *p = pool_through_proxy(c, &px,
                                     idle_list
                                         ? "pool_max=1 pool_min_idle=0 breaker.mode=disabled "
                                           "health_interval_ms=50 validate_after_idle_ms=0 "
                                           "connect_timeout_ms=20000"
                                         : "pool_max=1 pool_min_idle=0 breaker.mode=disabled "
                                           "health_interval_ms=60000 validate_after_idle_ms=0 "
                                           "connect_timeout_ms=20000");
    thread_call a = {.p = p, .intent = PGG_WRITE, .timeout_ms = 30000};
    thread_call b = {.p = p, .intent = PGG_WRITE, .timeout_ms = 30000};
    pgg_call call = {.timeout_ms = 10000};
    pthread_t ta, tb;
    pgg_error e;
    char pid[16], sql[64], v[16];
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT pg_backend_pid()", &call, NULL, &e);
    double end = pgh_now_ms() + 10000;
    int idle = 0;

    cr_assert_not_null(r, "%s", e.message);
    snprintf(pid, sizeof pid, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    while (idle_list && idle < 1 && pgh_now_ms() < end) {
        sleep_ms(1);
        pthread_mutex_lock(&p->hosts[0].mu);
        idle = p->hosts[0].n_idle;
        pthread_mutex_unlock(&p->hosts[0].mu);
    }
    cr_assert(!idle_list || idle == 1, "the connection never went to the idle list");
    pgh_proxy_set_mode(px, PGH_PROXY_DELAY, 500);
    cr_assert_eq(pthread_create(&ta, NULL, exec_in_thread, &a), 0);
    while (host_stats(p, 0).conns_busy < 1 && pgh_now_ms() < end)
        sleep_ms(1);
    cr_assert_eq(host_stats(p, 0).conns_busy, 1, "the first call never took the connection");
    cr_assert_eq(pthread_create(&tb, NULL, exec_in_thread, &b), 0);
    while (host_waiting(p) < 1 && pgh_now_ms() < end)
        sleep_ms(1);
    cr_assert_eq(host_waiting(p), 1, "the second call never waited");
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%s)", pid);
    cr_assert_eq(pgh_node_query_value(pgh_cluster_primary(c), sql, v, sizeof v), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    cr_expect_eq(a.code, PGG_OK, "the call that found the session dead: %s %s",
                 pgg_err_name(a.code), a.message);
    cr_expect_eq(b.code, PGG_OK, "the waiter: %s %s", pgg_err_name(b.code), b.message);
    end_test(p, c);
    pgh_proxy_free(px);
}

Test(pool, a_dead_parked_session_found_while_another_queues_frees_its_room)
{
    dead_session_while_another_queues(false);
}

Test(pool, a_dead_idle_session_found_while_another_queues_frees_its_room)
{
    dead_session_while_another_queues(true);
}

/* ----------------------------------------------------- cancel and events */

Test(pool, a_query_past_its_deadline_is_cancelled_on_the_server)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, NULL);
    pgg_call call = {.timeout_ms = 200};
    pgg_error e;
    char n[16];

    double t0 = pgh_now_ms();
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT pg_sleep(30) /* pgg-cancel-me */", &call, NULL, &e);
    double took = pgh_now_ms() - t0;
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_ETIMEDOUT, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_leq(took, 200 + 50.0, "waited %.1f ms", took);
    /* The connection was dropped, not pooled, and the cancel went out from
     * the worker: the server stops the sleep long before its 30 s. */
    double end = pgh_now_ms() + 10000;
    do {
        sleep_ms(50);
        cr_assert_eq(pgh_node_query_value(pgh_cluster_primary(c),
                                          "SELECT count(*) FROM pg_stat_activity WHERE "
                                          "query LIKE '%pgg-cancel-me%' AND state = 'active' "
                                          "AND pid <> pg_backend_pid()",
                                          n, sizeof n),
                     0);
    } while (strcmp(n, "0") != 0 && pgh_now_ms() < end);
    cr_expect_str_eq(n, "0", "the timed-out query still runs on the server");
    pgg_host_stats h = host_stats(p, 0);
    cr_expect_eq(h.failures[PGG_CLASS_TIMEOUT], 1);
    end_test(p, c);
}

typedef struct {
    pthread_mutex_t mu;
    int n;
    pgg_event ev[64];
    char reasons[64][64];
} event_log;

static void on_event(const pgg_event *ev, void *ud)
{
    event_log *log = ud;
    pthread_mutex_lock(&log->mu);
    if (log->n < 64) {
        log->ev[log->n] = *ev;
        snprintf(log->reasons[log->n], sizeof log->reasons[0], "%s", ev->reason ? ev->reason : "");
        log->n++;
    }
    pthread_mutex_unlock(&log->mu);
}

static bool saw(event_log *log, pgg_event_type type, int host, int from, int to)
{
    bool found = false;
    pthread_mutex_lock(&log->mu);
    for (int i = 0; i < log->n && !found; i++)
        found = log->ev[i].type == type && log->ev[i].host_index == host &&
                (from < 0 || log->ev[i].from == from) && log->ev[i].to == to;
    pthread_mutex_unlock(&log->mu);
    return found;
}

Test(pool, events_report_breaker_and_role_changes)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "stopping and promoting");
    pgg_pool *p = pool_for(c, NULL);
    static event_log log = {PTHREAD_MUTEX_INITIALIZER, 0, {{0}}, {{0}}};
    pgg_error e;

    pgg_pool_on_event(p, on_event, &log);
    read_ok(p, PGG_WRITE, "SELECT 1", 0);
    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    for (int i = 0; i < 5; i++)
        PQclear(pgg_exec(p, PGG_WRITE, "SELECT 1", NULL, NULL, &e));
    pgg__events_flush(p->events); /* the health thread's: events.h */
    cr_expect(saw(&log, PGG_EVENT_BREAKER, 0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN),
              "no closed -> open event for the stopped primary");
    cr_assert_eq(pgh_node_promote(pgh_cluster_replica(c, 0)), 0);
    cr_expect(wait_role(p, 1, PGG_ROLE_PRIMARY, 10000));
    pgg__events_flush(p->events); /* the health thread's: events.h */
    cr_expect(saw(&log, PGG_EVENT_ROLE, 1, PGG_ROLE_STANDBY, PGG_ROLE_PRIMARY),
              "no standby -> primary event for the promoted replica");
    /* Forced open by the operator, then reset. */
    cr_expect_eq(pgg_pool_force_open(p, 1), PGG_OK);
    pgg__events_flush(p->events); /* the health thread's: events.h */
    cr_expect(saw(&log, PGG_EVENT_BREAKER, 1, -1, PGG_BREAKER_FORCED_OPEN));
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT 1", NULL, NULL, &e);
    cr_expect_null(r, "a forced-open primary took a write");
    cr_expect_eq(e.code, PGG_EOPEN, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(pgg_pool_reset_breaker(p, 1), PGG_OK);
    cr_expect_eq(read_ok(p, PGG_WRITE, "SELECT 1", 0), 1);
    cr_expect_eq(pgg_pool_force_open(p, 7), PGG_EINVAL);
    pgg_pool_on_event(p, NULL, NULL);
    end_test(p, c);
}

/* --------------------------------------------- recovery and per-try bounds */

Test(pool, attempt_timeout_moves_a_read_off_a_hung_replica)
{
    pgh_cluster *c = cluster_or_die(2);
    pgh_require_local(c, "a hang (SIGSTOP)");
    pgh_require_replicas(c, 2);
    setup_table(c);
    pgg_pool *p = pool_for(c, "attempt_timeout_ms=100");
    const int timeout_ms = 1000;

    for (int i = 0; i < 10; i++)
        read_ok(p, PGG_READ, "SELECT 1", 0);
    cr_assert_eq(pgh_node_hang(pgh_cluster_replica(c, 0)), 0);
    int retried = 0;
    for (int i = 0; i < 30; i++) {
        pgg_call call = {.timeout_ms = timeout_ms};
        pgg_info info;
        pgg_error e;
        double t0 = pgh_now_ms();
        PGresult *r = pgg_exec(p, PGG_READ, "SELECT v FROM pgg_pool_t WHERE id = 5", &call,
                               &info, &e);
        double took = pgh_now_ms() - t0;
        /* A healthy replica was there all along: no read may fail. */
        cr_expect_not_null(r, "read %d failed after %.0f ms: %s %s", i, took,
                           pgg_err_name(e.code), e.message);
        cr_expect_neq(info.host_index, 1);
        cr_expect_leq(took, timeout_ms + 50.0);
        if (info.attempts > 1)
            retried++;
        PQclear(r);
    }
    fprintf(stderr, "hung replica with attempt_timeout_ms=100: %d of 30 reads moved on\n", retried);
    cr_expect_geq(retried, 1, "no read ever met the hung replica");
    cr_assert_eq(pgh_node_resume(pgh_cluster_replica(c, 0)), 0);
    end_test(p, c);
}

Test(pool, a_host_that_answers_again_is_probed_back_before_its_open_time)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "stopping a replica");
    setup_table(c);
    /* An open time far beyond the test's patience: only the health
     * thread's check can bring the replica back this soon. */
    pgg_pool *p = pool_for(c, "breaker.open_ms=120000 breaker.open_max_ms=120000");

    cr_assert_eq(pgh_node_stop(pgh_cluster_replica(c, 0), PGH_STOP_IMMEDIATE), 0);
    for (int i = 0; i < 10; i++)
        cr_expect_eq(read_ok(p, PGG_READ, "SELECT 1", 0), 0);
    cr_expect(wait_state(p, 1, PGG_BREAKER_OPEN, 5000));
    /* An unreachable host has no role to show. */
    cr_expect(wait_role(p, 1, PGG_ROLE_UNKNOWN, 5000), "a dead replica kept its role: %s",
              pgg_role_name(host_stats(p, 1).role));
    cr_expect_gt(host_stats(p, 1).open_remaining_ms, 60000);

    double t0 = pgh_now_ms();
    cr_assert_eq(pgh_node_start(pgh_cluster_replica(c, 0)), 0);
    cr_expect(wait_state(p, 1, PGG_BREAKER_CLOSED, 20000), "still %s",
              pgg_breaker_state_name(host_stats(p, 1).state));
    fprintf(stderr, "replica back: breaker closed %.0f ms after the server started\n",
            pgh_now_ms() - t0);
    cr_expect(wait_role(p, 1, PGG_ROLE_STANDBY, 5000));
    cr_expect(reads_reach(p, 1, 40));
    end_test(p, c);
}

Test(pool, min_idle_connections_are_warmed_also_with_the_breaker_disabled)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "pool_min_idle=3 breaker.mode=disabled");

    double end = pgh_now_ms() + 10000;
    while (pgh_now_ms() < end && host_stats(p, 0).conns_idle < 3)
        sleep_ms(20);
    pgg_host_stats h = host_stats(p, 0);
    cr_expect_eq(h.conns_idle, 3, "warmed %d of 3", h.conns_idle);
    cr_expect_eq(h.state, PGG_BREAKER_DISABLED);
    /* The warm connections serve calls: no connect per call (the health
     * thread may top the idle ones up once while a call holds one). */
    uint64_t connects = h.connects;
    for (int i = 0; i < 10; i++)
        read_ok(p, PGG_READ, "SELECT 1", 0);
    cr_expect_leq(host_stats(p, 0).connects, connects + 1);
    end_test(p, c);
}

/* ------------------------------------------------------------ prepared */

static int prepared_here(PGconn *conn, const char *name)
{
    const char *vals[] = {name};
    PGresult *r = PQexecParams(conn, "SELECT count(*) FROM pg_prepared_statements WHERE name = $1",
                               1, NULL, vals, NULL, NULL, 0);
    int n = PQresultStatus(r) == PGRES_TUPLES_OK ? atoi(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return n;
}

Test(pool, prepared_statements_are_prepared_once_per_connection)
{
    pgh_cluster *c = cluster_or_die(1);
    setup_table(c);
    pgg_pool *p = pool_for(c, "pool_max=2");
    pgg_error e;
    pgg_info info;
    Oid int4 = 23;

    cr_assert_eq(pgg_pool_prepare(p, "get_v", "SELECT v FROM pgg_pool_t WHERE id = $1", 1, &int4, &e),
                 PGG_OK, "%s", e.message);
    cr_expect_eq(pgg_pool_prepare(p, "get_v", "SELECT v FROM pgg_pool_t WHERE id = $1", 1, &int4, &e),
                 PGG_OK, "registering the same statement again is a no-op");
    cr_expect_eq(pgg_pool_prepare(p, "get_v", "SELECT 2", 0, NULL, &e), PGG_EINVAL);
    cr_expect(strstr(e.message, "get_v") != NULL, "%s", e.message);
    cr_expect_eq(pgg_pool_prepare(p, "", "SELECT 1", 0, NULL, &e), PGG_EINVAL);
    cr_expect_eq(pgg_pool_prepare(p, "bad_sql", "SELEC nope", 0, NULL, &e), PGG_OK,
                 "the server judges the SQL, on first use");

    for (int i = 1; i <= 40; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", i);
        const char *vals[] = {id};
        PGresult *r = pgg_exec_prepared(p, i % 2 ? PGG_READ : PGG_WRITE, "get_v", 1, vals, NULL,
                                        NULL, NULL, &info, &e);
        cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
        cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
        char want[16];
        snprintf(want, sizeof want, "v%d", i);
        cr_expect_str_eq(PQgetvalue(r, 0, 0), want);
        PQclear(r);
    }
    /* Prepared on the connection a lease gets, once, not once per call. */
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    const char *one[] = {"1"};
    PGresult *r = pgg_lease_exec_prepared(l, "get_v", 1, one, NULL, NULL, 0, 0, &e);
    cr_assert_not_null(r, "%s", e.message);
    PQclear(r);
    cr_expect_eq(prepared_here(pgg_lease_conn(l), "get_v"), 1);
    r = pgg_lease_exec_prepared(l, "nope", 0, NULL, NULL, NULL, 0, 0, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_EINVAL);
    pgg_release(l);

    /* A statement the server refuses is the caller's error, like any SQL. */
    r = pgg_exec_prepared(p, PGG_READ, "bad_sql", 0, NULL, NULL, NULL, NULL, &info, &e);
    cr_assert_not_null(r);
    cr_expect_eq(e.code, PGG_ESERVER);
    cr_expect_str_eq(e.sqlstate, "42601");
    PQclear(r);
    r = pgg_exec_prepared(p, PGG_READ, "missing", 0, NULL, NULL, NULL, NULL, &info, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_EINVAL);
    for (int i = 0; i < pgg_pool_host_count(p); i++)
        cr_expect_eq(host_stats(p, i).state, PGG_BREAKER_CLOSED);

    /* New connections (the old ones terminated) prepare it again. */
    cr_assert_eq(pgh_node_terminate_backends(pgh_cluster_primary(c)), 0);
    cr_assert_eq(pgh_node_terminate_backends(pgh_cluster_replica(c, 0)), 0);
    for (int i = 0; i < 10; i++) {
        const char *vals[] = {"7"};
        r = pgg_exec_prepared(p, PGG_READ, "get_v", 1, vals, NULL, NULL, NULL, &info, &e);
        cr_expect_not_null(r, "after terminate: %s: %s", pgg_err_name(e.code), e.message);
        PQclear(r);
    }
    end_test(p, c);
}

Test(pool, a_leases_session_state_reaches_no_one_else)
{
    pgh_cluster *c = cluster_or_die(0);
    setup_table(c);
    /* One connection, so every call below reuses the lease's session. */
    pgg_pool *p = pool_for(c, "pool_max=1");
    pgg_error e;
    Oid int4 = 23;

    cr_assert_eq(pgg_pool_prepare(p, "get_v", "SELECT v FROM pgg_pool_t WHERE id = $1", 1, &int4, &e),
                 PGG_OK);
    const char *one[] = {"1"};
    PQclear(pgg_exec_prepared(p, PGG_WRITE, "get_v", 1, one, NULL, NULL, NULL, NULL, &e));
    cr_assert_eq(e.code, PGG_OK, "%s", e.message);

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    PQclear(pgg_lease_exec(l, "SET search_path = nowhere", 0, &e));
    PQclear(pgg_lease_exec(l, "SET application_name = 'leaky'", 0, &e));
    PQclear(pgg_lease_exec(l, "DEALLOCATE ALL", 0, &e));
    pgg_release(l);

    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT current_setting('search_path'), "
                                         "current_setting('application_name')",
                           NULL, NULL, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "\"$user\", public", "search_path leaked");
    cr_expect_str_neq(PQgetvalue(r, 0, 1), "leaky", "application_name leaked");
    PQclear(r);
    /* The lease deallocated the pool's statement: it is prepared again. */
    r = pgg_exec_prepared(p, PGG_WRITE, "get_v", 1, one, NULL, NULL, NULL, NULL, &e);
    cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
    PQclear(r);

    /* A raw connection switched to blocking mode is not pooled again. */
    l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l);
    PQsetnonblocking(pgg_lease_conn(l), 0);
    pgg_release(l);
    cr_expect_eq(host_stats(p, 0).conns_open, 0, "a blocking-mode connection was pooled");
    end_test(p, c);
}

Test(pool, freeing_a_pool_does_not_wait_out_a_probe_of_a_hung_host)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_replicas(c, 1);
    /* The hang: SIGSTOP of a local replica; in front of an external one,
     * the fault proxy swallowing everything, which the pool sees the same
     * way (probes that never answer). */
    bool proxied = pgh_cluster_is_external(c);
    pgh_proxy *px = NULL;
    pgg_pool *p;
    /* A probe of the hung replica may wait 5 s; freeing must not. */
    if (proxied) {
        char err[256];
        pgh_node *replica = pgh_cluster_replica(c, 0);
        px = pgh_proxy_start(pgh_node_host(replica), pgh_node_port(replica), err, sizeof err);
        cr_assert_not_null(px, "%s", err);
        char *ci = conninfo_via_proxy(c, px);
        p = pool_for_conninfo(ci, "connect_timeout_ms=5000 health_interval_ms=50");
        free(ci);
        cr_assert(wait_role(p, 1, PGG_ROLE_STANDBY, 10000), "the replica's role never learnt");
    } else {
        p = pool_for(c, "connect_timeout_ms=5000 health_interval_ms=50");
    }

    read_ok(p, PGG_READ, "SELECT 1", 0);
    if (proxied)
        pgh_proxy_set_mode(px, PGH_PROXY_BLACKHOLE, 0);
    else
        cr_assert_eq(pgh_node_hang(pgh_cluster_replica(c, 0)), 0);
    sleep_ms(300); /* a round is now waiting on the hung replica */
    assert_balanced(p);
    double t0 = pgh_now_ms();
    pgg_pool_free(p);
    double took = pgh_now_ms() - t0;
    fprintf(stderr, "pgg_pool_free with a probe in flight to a hung host: %.1f ms\n", took);
    cr_expect_lt(took, 2500.0, "pgg_pool_free waited %.0f ms for a health round", took);
    if (proxied)
        pgh_proxy_free(px);
    else
        cr_assert_eq(pgh_node_resume(pgh_cluster_replica(c, 0)), 0);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

Test(pool, a_lease_left_busy_by_raw_use_is_refused_not_blamed_on_the_host)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, NULL);
    pgg_error e;

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    /* The caller sends on the raw connection and walks away. */
    cr_assert(PQsendQuery(pgg_lease_conn(l), "SELECT pg_sleep(0.1)"));
    PGresult *r = pgg_lease_exec(l, "SELECT 1", 0, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_ESTATE, "%s: %s", pgg_err_name(e.code), e.message);
    pgg_release(l);
    pgg_host_stats h = host_stats(p, 0);
    for (int k = PGG_CLASS_CONNECTION; k < PGG_CLASS__COUNT; k++)
        cr_expect_eq(h.failures[k], 0, "counted a %s failure", pgg_class_name((pgg_class)k));
    cr_expect_eq(h.state, PGG_BREAKER_CLOSED);
    cr_expect_eq(h.conns_open, 0, "the half-used connection was pooled");
    read_ok(p, PGG_WRITE, "SELECT 1", 0);
    end_test(p, c);
}

/* A session can lose what pgguard prepared on it (DEALLOCATE ALL through a
 * lease kept without reset): the next call of the statement there is
 * answered 26000 with nothing run; it must be prepared again, not fail on
 * that connection for good. */
Test(pool, a_session_that_lost_a_registered_statement_prepares_it_again)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "pool_max=1 lease_reset=false");
    pgg_error e;

    cr_assert_eq(pgg_pool_prepare(p, "one", "SELECT 1", 0, NULL, &e), PGG_OK);
    for (int i = 0; i < 4; i++) {
        if (i == 2) {
            pgg_lease *l = pgg_acquire(p, PGG_WRITE, 2000, NULL, &e);
            cr_assert_not_null(l, "%s", e.message);
            PQclear(pgg_lease_exec(l, "DEALLOCATE ALL", 2000, &e));
            pgg_release(l);
        }
        PGresult *r = pgg_exec_prepared(p, PGG_WRITE, "one", 0, NULL, NULL, NULL, NULL, NULL, &e);
        cr_expect(r && PQresultStatus(r) == PGRES_TUPLES_OK, "call %d: %s", i, e.message);
        cr_expect_eq(e.code, PGG_OK, "call %d: %s", i, pgg_err_name(e.code));
        PQclear(r);
    }
    end_test(p, c);
}

/* The backend serving a write on p (pool_max=1: the pool's one session). */
static int write_backend(pgg_pool *p)
{
    pgg_call call = {.timeout_ms = 3000};
    pgg_error e;
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT pg_catalog.pg_backend_pid()", &call, NULL, &e);
    int pid;

    cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    pid = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return pid;
}

/*
 * max_lifetime_ms: a session is lent again within its lifetime, and never
 * past it (a new session serves instead); 0 sets no limit.  The lifetime
 * is kept as an expiry set when the session is made (host.h,
 * pgg__link_expiry): this fails if that expiry is wrong either way.
 */
Test(pool, a_session_is_lent_within_its_max_lifetime_and_never_past_it)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "pool_max=1 max_lifetime_ms=1500 health_interval_ms=60000");
    int first = write_backend(p);

    cr_expect_eq(write_backend(p), first, "a session within its lifetime was not lent again");
    sleep_ms(1700);
    cr_expect_neq(write_backend(p), first, "a session past its lifetime was lent again");
    assert_balanced(p);
    pgg_pool_free(p);

    p = pool_for(c, "pool_max=1 max_lifetime_ms=0 health_interval_ms=60000");
    first = write_backend(p);
    sleep_ms(600);
    cr_expect_eq(write_backend(p), first, "with no lifetime limit the session was replaced");
    end_test(p, c);
}
