/*
 * LISTEN/NOTIFY through a lease against a real server: notifications with a
 * deadline, earlier ones first, none carried to the next borrower, and a
 * terminated listener reported as a broken session.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "pool_util.h"

static void notify(pgg_pool *p, const char *payload)
{
    char sql[128];
    pgg_error e;
    snprintf(sql, sizeof sql, "NOTIFY pgg_chan, '%s'", payload);
    PGresult *r = pgg_exec(p, PGG_WRITE, sql, NULL, NULL, &e);
    cr_assert_not_null(r, "%s", e.message);
    PQclear(r);
}

static void lease_ok(pgg_lease *l, const char *sql)
{
    pgg_error e;
    PGresult *r = pgg_lease_exec(l, sql, 0, &e);
    cr_assert_not_null(r, "%s: %s: %s", sql, pgg_err_name(e.code), e.message);
    PQclear(r);
}

typedef struct later {
    pgg_pool *p;
    int delay_ms;
} later;

static void *notify_later(void *arg)
{
    later *w = arg;
    sleep_ms(w->delay_ms);
    pgg_error e;
    PGresult *r = pgg_exec(w->p, PGG_WRITE, "NOTIFY pgg_chan, 'late'", NULL, NULL, &e);
    PQclear(r);
    return NULL;
}

Test(notify, a_listener_waits_with_a_deadline)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, NULL);
    pgg_error e;

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    lease_ok(l, "LISTEN pgg_chan");
    notify(p, "hello");
    PGnotify *n = pgg_lease_notify(l, 5000, &e);
    cr_assert_not_null(n, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_str_eq(n->relname, "pgg_chan");
    cr_expect_str_eq(n->extra, "hello");
    PQfreemem(n);

    /* None: the deadline, and the lease is as it was. */
    double t0 = pgh_now_ms();
    n = pgg_lease_notify(l, 300, &e);
    double took = pgh_now_ms() - t0;
    cr_expect_null(n);
    cr_expect_eq(e.code, PGG_ETIMEDOUT, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_geq(took, 290.0, "returned after %.0f ms of a 300 ms wait", took);
    cr_expect_lt(took, 300 + 250.0, "waited %.0f ms past a 300 ms deadline", took);
    lease_ok(l, "SELECT 1");

    /* One sent while we wait wakes us. */
    later w = {p, 200};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, notify_later, &w), 0);
    n = pgg_lease_notify(l, 10000, &e);
    pthread_join(t, NULL);
    cr_assert_not_null(n, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_str_eq(n->extra, "late");
    PQfreemem(n);
    pgg_release(l);
    end_test(p, c);
}

Test(notify, notifications_that_came_during_statements_come_first)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, NULL);
    pgg_error e;

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    lease_ok(l, "LISTEN pgg_chan");
    notify(p, "one");
    notify(p, "two");
    notify(p, "three");
    sleep_ms(100);
    lease_ok(l, "SELECT 1"); /* reads them off the socket */
    const char *want[] = {"one", "two", "three"};
    for (int i = 0; i < 3; i++) {
        PGnotify *n = pgg_lease_notify(l, 2000, &e);
        cr_assert_not_null(n, "#%d: %s: %s", i, pgg_err_name(e.code), e.message);
        cr_expect_str_eq(n->extra, want[i]);
        PQfreemem(n);
    }
    pgg_release(l);
    end_test(p, c);
}

Test(notify, a_released_listener_reaches_no_one_else)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "pool_max=1");
    pgg_error e;

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    PGconn *first = pgg_lease_conn(l);
    lease_ok(l, "LISTEN pgg_chan");
    pgg_release(l);
    /* A notification queued on the session but never read... */
    l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    lease_ok(l, "LISTEN pgg_chan");
    /* its own notification, read off the socket with the SELECT */
    lease_ok(l, "NOTIFY pgg_chan, 'unread'; SELECT 1");
    pgg_release(l);

    /* ...and the registration itself: the next borrower hears nothing. */
    l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    cr_expect_eq(pgg_lease_conn(l), first, "not the same pooled session: the test proves nothing");
    PGnotify *n = pgg_lease_notify(l, 300, &e);
    cr_expect_null(n, "a notification reached the next borrower: %s", n ? n->extra : "");
    PQfreemem(n);
    cr_expect_eq(e.code, PGG_ETIMEDOUT);
    pgg_release(l);
    notify(p, "after");
    l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    n = pgg_lease_notify(l, 300, &e);
    cr_expect_null(n, "the LISTEN outlived its lease");
    PQfreemem(n);
    pgg_release(l);
    end_test(p, c);
}

Test(notify, without_lease_reset_a_listener_is_not_pooled)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "lease_reset=false");
    pgg_error e;

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    lease_ok(l, "LISTEN pgg_chan");
    PGnotify *n = pgg_lease_notify(l, 100, &e);
    PQfreemem(n);
    pgg_release(l);
    cr_expect_eq(host_stats(p, 0).conns_open, 0, "a listening session was pooled");
    end_test(p, c);
}

Test(notify, a_terminated_listener_is_a_broken_session)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, NULL);
    pgg_error e;

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    lease_ok(l, "LISTEN pgg_chan");
    cr_assert_eq(pgh_node_terminate_backends(pgh_cluster_primary(c)), 0);
    PGnotify *n = pgg_lease_notify(l, 5000, &e);
    cr_expect_null(n);
    PQfreemem(n);
    cr_expect_eq(e.code, PGG_ECONNECT, "%s: %s", pgg_err_name(e.code), e.message);
    PGresult *r = pgg_lease_exec(l, "SELECT 1", 0, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_ECONNECT);
    pgg_release(l);
    read_ok(p, PGG_WRITE, "SELECT 1", 0);
    end_test(p, c);
}
