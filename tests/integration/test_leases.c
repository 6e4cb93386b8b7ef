/*
 * Lease leak detection against a real server: a lease held past
 * lease_leak_ms is reported once (event, stats, metrics), its age shows in
 * the stats, and pgg_pool_free with a lease still out is a defined outcome
 * (reported, connection closed, lease orphaned) instead of a dangling
 * pointer.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "pool_util.h"

#define MAX_EVENTS 64

typedef struct leak_log {
    pthread_mutex_t mu;
    int n;
    pgg_event ev[MAX_EVENTS];
    char host[MAX_EVENTS][128];
    char reason[MAX_EVENTS][128];
} leak_log;

static void on_event(const pgg_event *ev, void *ud)
{
    leak_log *log = ud;

    if (ev->type != PGG_EVENT_LEASE_LEAK)
        return;
    pthread_mutex_lock(&log->mu);
    if (log->n < MAX_EVENTS) {
        log->ev[log->n] = *ev;
        snprintf(log->host[log->n], sizeof log->host[0], "%s", ev->host ? ev->host : "");
        snprintf(log->reason[log->n], sizeof log->reason[0], "%s", ev->reason ? ev->reason : "");
        log->n++;
    }
    pthread_mutex_unlock(&log->mu);
}

static int leak_count(leak_log *log)
{
    pthread_mutex_lock(&log->mu);
    int n = log->n;
    pthread_mutex_unlock(&log->mu);
    return n;
}

static pgg_stats pool_stats(pgg_pool *p)
{
    pgg_stats s;
    cr_assert_eq(pgg_pool_stats(p, &s), PGG_OK);
    return s;
}

static bool metrics_have(pgg_pool *p, const char *line)
{
    size_t need = 0;
    pgg_pool_metrics(p, NULL, 0, &need);
    char *buf = malloc(need + 4096);
    cr_assert_not_null(buf);
    cr_assert_eq(pgg_pool_metrics(p, buf, need + 4096, NULL), PGG_OK);
    char *want = malloc(strlen(line) + 3);
    cr_assert_not_null(want);
    sprintf(want, "\n%s\n", line);
    bool found = strstr(buf, want) != NULL;
    free(want);
    free(buf);
    return found;
}

Test(leases, a_lease_held_too_long_is_reported_once_with_its_age)
{
    static leak_log log = {.mu = PTHREAD_MUTEX_INITIALIZER};
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "lease_leak_ms=300");
    pgg_pool_on_event(p, on_event, &log);
    pgg_error e;

    /* Released in time: nothing to report. */
    pgg_lease *quick = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(quick, "%s", e.message);
    cr_expect_eq(pool_stats(p).leases_out, 1);
    pgg_release(quick);
    cr_expect_eq(pool_stats(p).leases_out, 0);
    cr_expect_eq(pool_stats(p).lease_oldest_ms, 0);

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    PGresult *r = pgg_lease_exec(l, "SELECT 1", 0, &e);
    cr_assert_not_null(r, "%s", e.message);
    PQclear(r);
    /* Health rounds every 100 ms: the report comes within a few rounds of
     * the threshold, and only once however long the lease stays out. */
    double end = pgh_now_ms() + 5000;
    while (leak_count(&log) == 0 && pgh_now_ms() < end)
        sleep_ms(20);
    cr_assert_eq(leak_count(&log), 1, "no leak event within 5 s of a 300 ms threshold");
    sleep_ms(500);
    cr_expect_eq(leak_count(&log), 1, "a leak was reported more than once");

    pgg_event ev = log.ev[0];
    cr_expect_eq(ev.type, PGG_EVENT_LEASE_LEAK);
    cr_expect_geq(ev.from, 300, "reported after %d ms held", ev.from);
    cr_expect_eq(ev.to, 300);
    cr_expect_eq(ev.host_index, 0);
    cr_expect_str_eq(log.host[0], pgg_lease_host(l));
    cr_expect_not_null(strstr(log.reason[0], "lease_leak_ms"), "%s", log.reason[0]);

    pgg_stats s = pool_stats(p);
    cr_expect_eq(s.leases_out, 1);
    cr_expect_geq(s.lease_oldest_ms, 800, "oldest lease %lld ms", (long long)s.lease_oldest_ms);
    cr_expect_eq(s.lease_leaks, 1);
    cr_expect(metrics_have(p, "pgguard_leases_out 1"));
    cr_expect(metrics_have(p, "pgguard_lease_leaks_total 1"));

    /* Still a working lease: detection reports, it does not take it away. */
    r = pgg_lease_exec(l, "SELECT 2", 0, &e);
    cr_expect_not_null(r, "%s", e.message);
    PQclear(r);
    pgg_release(l);
    s = pool_stats(p);
    cr_expect_eq(s.leases_out, 0);
    cr_expect_eq(s.lease_leaks, 1);
    cr_expect(metrics_have(p, "pgguard_leases_out 0"));
    pgg_pool_on_event(p, NULL, NULL);
    end_test(p, c);
}

Test(leases, detection_is_off_by_default)
{
    static leak_log log = {.mu = PTHREAD_MUTEX_INITIALIZER};
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, NULL);
    pgg_pool_on_event(p, on_event, &log);
    pgg_error e;

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    sleep_ms(600);
    cr_expect_eq(leak_count(&log), 0);
    pgg_stats s = pool_stats(p);
    cr_expect_eq(s.leases_out, 1);
    cr_expect_geq(s.lease_oldest_ms, 600);
    cr_expect_eq(s.lease_leaks, 0);
    pgg_release(l);
    pgg_pool_on_event(p, NULL, NULL);
    end_test(p, c);
}

Test(leases, freeing_the_pool_with_a_lease_out_reports_it_and_orphans_the_lease)
{
    static leak_log log = {.mu = PTHREAD_MUTEX_INITIALIZER};
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, NULL);
    pgg_pool_on_event(p, on_event, &log);
    pgg_error e;
    char pid[32], sql[128], n[32];

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    PGresult *r = pgg_lease_exec(l, "SELECT pg_backend_pid()", 0, &e);
    cr_assert_not_null(r, "%s", e.message);
    snprintf(pid, sizeof pid, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    char host[128];
    snprintf(host, sizeof host, "%s", pgg_lease_host(l));

    pgg_pool_free(p); /* the lease is still out */

    cr_assert_eq(leak_count(&log), 1, "pgg_pool_free did not report the lease");
    cr_expect_eq(log.ev[0].type, PGG_EVENT_LEASE_LEAK);
    cr_expect_str_eq(log.host[0], host);
    cr_expect_not_null(strstr(log.reason[0], "freed"), "%s", log.reason[0]);
    /* The orphan: every call refused plainly, nothing touches freed memory. */
    r = pgg_lease_exec(l, "SELECT 1", 0, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_ECLOSED, "%s: %s", pgg_err_name(e.code), e.message);
    r = pgg_lease_exec_prepared(l, "x", 0, NULL, NULL, NULL, 0, 0, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_ECLOSED);
    cr_expect_null(pgg_lease_conn(l));
    cr_expect_str_eq(pgg_lease_host(l), "");
    /* Its session was closed with the pool. */
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", pid);
    double end = pgh_now_ms() + 5000;
    do {
        cr_assert_eq(pgh_node_query_value(pgh_cluster_primary(c), sql, n, sizeof n), 0);
        if (strcmp(n, "0") == 0)
            break;
        sleep_ms(20);
    } while (pgh_now_ms() < end);
    cr_expect_str_eq(n, "0", "the orphaned lease's session is still open");
    pgg_release(l); /* frees the orphan */
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}
