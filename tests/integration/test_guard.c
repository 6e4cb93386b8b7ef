/*
 * Regression tests from a review of the pool's libpq layer: bad input that
 * must never reach a host (nor count against one), no statement sent after
 * its deadline, a typed call bounded by one deadline, and a server's answer
 * handed back when no other host is left to retry on.
 */
#include <pthread.h>

#include "pgg_config.h"
#include "pool_util.h"

/* White box: one test holds a host's lock to line up a race, one counts
 * health rounds. */
#include "health.h"
#include "pool.h"

#if PGG_HAVE_LIBPQTYPES
#include "pgguard_types.h"
#endif

static void setup_guard_table(pgh_cluster *c)
{
    pgh_node *p = pgh_cluster_primary(c);
    cr_assert_eq(pgh_node_exec(p, "DROP TABLE IF EXISTS pgg_guard_t;"
                                  "CREATE TABLE pgg_guard_t (id int);"),
                 0, "%s", pgh_node_error(p));
    for (int i = 0; i < pgh_cluster_replica_count(c); i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), p, 10000), 0);
}

/* ----------------------------------------------------------- bad input */

/*
 * Parameters libpq refuses to send (a binary value without a length, a
 * negative length, more than 65535 of them) are the caller's mistake: they
 * used to count as connection failures of every host tried (opening their
 * breakers), and a cacheable read with a negative length crashed in the
 * cache key.
 */
Test(guard, malformed_parameters_are_refused_before_any_host)
{
    pgh_cluster *c = cluster_or_die(1);
    pgg_pool *p = pool_for(c, "cache.enabled=true");
    pgg_call cacheable = {.timeout_ms = 2000, .flags = PGG_CALL_CACHEABLE};
    const char *vals[] = {"abc"};
    int bin[] = {1};
    int neg[] = {-1};
    pgg_error e;
    pgg_info info;
    PGresult *r;

    for (int i = 0; i < 6; i++) {
        r = pgg_exec_params(p, i % 2 ? PGG_WRITE : PGG_READ, "SELECT $1::bytea", 1, NULL, vals,
                            NULL, bin, NULL, &info, &e);
        cr_expect_null(r);
        cr_expect_eq(e.code, PGG_EINVAL, "binary without length: %s: %s", pgg_err_name(e.code),
                     e.message);
        cr_expect_eq(info.attempts, 0);
        PQclear(r);
    }
    r = pgg_exec_params(p, PGG_READ, "SELECT $1::bytea", 1, NULL, vals, neg, bin, &cacheable,
                        &info, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_EINVAL, "negative length: %s: %s", pgg_err_name(e.code), e.message);
    PQclear(r);

    int many = 70000;
    const char **nulls = calloc((size_t)many, sizeof *nulls);
    cr_assert_not_null(nulls);
    r = pgg_exec_params(p, PGG_READ, "SELECT 1", many, NULL, nulls, NULL, NULL, NULL, &info, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_EINVAL, "70000 parameters: %s: %s", pgg_err_name(e.code), e.message);
    PQclear(r);
    cr_expect_eq(pgg_pool_prepare(p, "too_many", "SELECT 1", many, NULL, &e), PGG_EINVAL);
    cr_assert_eq(pgg_pool_prepare(p, "one_bytea", "SELECT $1::bytea", 1, NULL, &e), PGG_OK);
    r = pgg_exec_prepared(p, PGG_READ, "one_bytea", 1, vals, NULL, bin, NULL, &info, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_EINVAL, "prepared, binary without length: %s: %s",
                 pgg_err_name(e.code), e.message);
    PQclear(r);

    /* Through a lease: refused, and the lease stays usable. */
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    r = pgg_lease_exec_params(l, "SELECT $1::bytea", 1, NULL, vals, NULL, bin, 0, 0, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_EINVAL);
    r = pgg_lease_exec_params(l, "SELECT 1", many, NULL, nulls, NULL, NULL, 0, 0, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_EINVAL);
    r = pgg_lease_exec(l, "SELECT 1", 0, &e);
    cr_expect_not_null(r, "the lease broke on a refused argument: %s", e.message);
    PQclear(r);
    pgg_release(l);
    free(nulls);

    expect_hosts_untouched(p);
    /* Valid binary parameters still work. */
    int three[] = {3};
    r = pgg_exec_params(p, PGG_READ, "SELECT length($1::bytea)", 1, NULL, vals, three, bin, NULL,
                        &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "3");
    PQclear(r);
    end_test(p, c);
}

/*
 * A refused send could leave a half-built message in libpq's output buffer,
 * and the connection went back to the pool: the next caller's statement
 * followed the stray Parse.
 */
Test(guard, a_refused_call_leaves_nothing_for_the_next_one)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "pool_max=1");
    const char *vals[] = {"abc"};
    int bin[] = {1};
    pgg_call call = {.timeout_ms = 1000};
    pgg_error e;
    PGresult *r;

    read_ok(p, PGG_WRITE, "SELECT 1", 0);
    r = pgg_exec_params(p, PGG_WRITE, "SELEC broken $1", 1, NULL, vals, NULL, bin, &call, NULL,
                        &e);
    cr_expect_null(r);
    PQclear(r);
    r = pgg_exec(p, PGG_WRITE, "SELECT 42", &call, NULL, &e);
    cr_assert_not_null(r, "the next call failed: %s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
    PQclear(r);
    expect_hosts_untouched(p);
    end_test(p, c);
}

/* ------------------------------------------------------------ deadlines */

typedef struct {
    pgg_pool *p;
    const char *sql;
    int timeout_ms;
    PGresult *r;
    pgg_error e;
    pgg_info info;
} call_arg;

static void *call_thread(void *arg)
{
    call_arg *a = arg;
    pgg_call call = {.timeout_ms = a->timeout_ms};

    a->r = pgg_exec(a->p, PGG_WRITE, a->sql, &call, &a->info, &a->e);
    return NULL;
}

/*
 * A caller waiting for the host's only connection times out while the
 * connection is on its way back: it must give up, not take the connection
 * after its deadline and send a write whose outcome it then cannot know
 * (and count a timeout against a host that was merely busy).  The host's
 * lock is held across the deadline so that both the waiter's timeout and
 * the give-back queue on it, give-back first.
 */
Test(guard, no_statement_leaves_after_its_deadline)
{
    pgh_cluster *c = cluster_or_die(0);
    setup_guard_table(c);
    pgg_pool *p = pool_for(c, "pool_max=1 validate_after_idle_ms=60000");
    pgg_host *h = &p->hosts[0];
    char n[16];

    read_ok(p, PGG_WRITE, "SELECT 1", 0); /* one idle connection */
    call_arg holder = {.p = p, .sql = "SELECT pg_sleep(0.2)", .timeout_ms = 5000};
    call_arg waiter = {.p = p, .sql = "INSERT INTO pgg_guard_t VALUES (1)", .timeout_ms = 300};
    pthread_t th, tw;

    double t0 = pgh_now_ms();
    cr_assert_eq(pthread_create(&th, NULL, call_thread, &holder), 0);
    sleep_ms(50);
    cr_assert_eq(pthread_create(&tw, NULL, call_thread, &waiter), 0);
    sleep_ms(50);
    /* From 100 ms to 500 ms: the holder finishes (~200 ms) and queues on the
     * lock to give back; the waiter's deadline (~350 ms) passes and it
     * queues behind. */
    pthread_mutex_lock(&h->mu);
    while (pgh_now_ms() - t0 < 500)
        sleep_ms(10);
    pthread_mutex_unlock(&h->mu);
    pthread_join(th, NULL);
    pthread_join(tw, NULL);

    cr_expect_not_null(holder.r, "%s", holder.e.message);
    PQclear(holder.r);
    cr_expect_null(waiter.r);
    cr_expect_eq(waiter.e.code, PGG_ETIMEDOUT, "%s: %s", pgg_err_name(waiter.e.code),
                 waiter.e.message);
    cr_expect_eq(waiter.info.sent, 0, "the write left after its deadline");
    sleep_ms(100);
    cr_assert_eq(pgh_node_query_value(pgh_cluster_primary(c), "SELECT count(*) FROM pgg_guard_t",
                                      n, sizeof n),
                 0);
    cr_expect_str_eq(n, "0", "a write was applied after its call had timed out");
    expect_hosts_untouched(p);
    end_test(p, c);
}

#if PGG_HAVE_LIBPQTYPES
typedef struct {
    pgg_pool *p;
    int timeout_ms;
    PGresult *r;
    pgg_error e;
    double took;
} typed_arg;

static void *typed_thread(void *arg)
{
    typed_arg *a = arg;
    pgg_call call = {.timeout_ms = a->timeout_ms};
    double t0 = pgh_now_ms();

    a->r = pgg_execf(a->p, PGG_WRITE, &call, NULL, &a->e, "SELECT pg_sleep(%float8)", 5.0);
    a->took = pgh_now_ms() - t0;
    return NULL;
}

/*
 * The first typed call of a pool borrows a connection to build the
 * libpqtypes template, then runs: both within the call's one deadline, not
 * one deadline each.
 */
Test(guard, a_typed_call_keeps_one_deadline)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "bulkhead.max_concurrent=1 bulkhead.max_wait_ms=60000");
    pgg_error e;
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    typed_arg a = {.p = p, .timeout_ms = 600};
    pthread_t t;

    cr_assert_eq(pthread_create(&t, NULL, typed_thread, &a), 0);
    sleep_ms(400); /* the typed call waits for the bulkhead meanwhile */
    pgg_release(l);
    pthread_join(t, NULL);
    cr_expect_null(a.r);
    cr_expect_eq(a.e.code, PGG_ETIMEDOUT, "%s: %s", pgg_err_name(a.e.code), a.e.message);
    cr_expect_leq(a.took, 600 + 60.0, "a 600 ms typed call took %.0f ms", a.took);
    PQclear(a.r);
    end_test(p, c);
}
#endif

/* --------------------------------------------------------- the answer */

/*
 * An answer classified "ignored, may retry elsewhere" (a recovery conflict,
 * or an override) on the last host left is still the server's answer: the
 * caller gets the PGresult with PGG_ESERVER, not NULL.
 */
Test(guard, a_retryable_answer_on_the_last_host_is_returned)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "classify.P0001=ignored,retry");
    pgg_error e;
    pgg_info info;

    /* On a pooled session, as most calls run: a live session's answer is
     * not retried on the same host (only a session found dead is). */
    read_ok(p, PGG_READ, "SELECT 1", 0);
    PGresult *r = pgg_exec(p, PGG_READ, "SELECT pgg_raise('P0001')", NULL, &info, &e);
    cr_expect_not_null(r, "NULL with %s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(e.code, PGG_ESERVER);
    cr_expect_str_eq(e.sqlstate, "P0001");
    /* Every host answers the same (external servers bring replicas):
     * each is tried once, and the last answer is returned. */
    int hosts = pgg_pool_host_count(p);
    cr_expect_eq(info.attempts, hosts < 3 ? hosts : 3);
    cr_expect_geq(info.host_index, 0);
    if (r)
        cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
    PQclear(r);
    pgg_stats s;
    pgg_pool_stats(p, &s);
    cr_expect_eq(s.calls_failed, 0, "a server answer counted as a failed call");
    end_test(p, c);
}

/* ----------------------------------------------------------- accounting */

/* calls counts leases: a lease that could not be had is a failed call,
 * like a one-shot call refused by the bulkhead or left without a host. */
Test(guard, failed_acquisitions_count_as_failed_calls)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "bulkhead.max_concurrent=1 bulkhead.max_wait_ms=0");
    pgg_error e;
    pgg_stats s;

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    cr_expect_null(pgg_acquire(p, PGG_WRITE, 0, NULL, &e));
    cr_expect_eq(e.code, PGG_EBULKHEAD);
    cr_expect_null(pgg_exec(p, PGG_WRITE, "SELECT 1", NULL, NULL, &e));
    cr_expect_eq(e.code, PGG_EBULKHEAD);
    pgg_release(l);
    cr_assert_eq(pgg_pool_force_open(p, 0), PGG_OK);
    cr_expect_null(pgg_acquire(p, PGG_WRITE, 0, NULL, &e));
    cr_expect_eq(e.code, PGG_EOPEN);
    cr_assert_eq(pgg_pool_stats(p, &s), PGG_OK);
    cr_expect_eq(s.calls, 4);
    cr_expect_eq(s.calls_failed, 3, "calls_failed %llu of 4 calls, 3 of which failed",
                 (unsigned long long)s.calls_failed);
    cr_assert_eq(pgg_pool_reset_breaker(p, 0), PGG_OK);
    end_test(p, c);
}

/* ---------------------------------------------------------------- health */

/*
 * A host the health round cannot reach is not warmed in that round: each
 * warm-up connect would wait out connect_timeout_ms, one host after
 * another, and every host's role and lag (and pgg_pool_free) would wait
 * for the round.
 */
Test(guard, an_unreachable_host_is_not_warmed_within_the_round)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_replicas(c, 1);
    char err[256];
    pgh_node *replica = pgh_cluster_replica(c, 0);
    pgh_proxy *px = pgh_proxy_start(pgh_node_host(replica), pgh_node_port(replica), err,
                                    sizeof err);
    cr_assert_not_null(px, "%s", err);
    char *ci = conninfo_via_proxy(c, px);
    /* Hung from the start: no idle connection, breaker closed (no calls). */
    pgh_proxy_set_mode(px, PGH_PROXY_BLACKHOLE, 0);
    pgg_pool *p = pool_for_conninfo(ci, "pool_min_idle=1 connect_timeout_ms=500");
    free(ci);
    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 5000));

    unsigned long rounds = pgg__health_rounds(p->health);
    double t0 = pgh_now_ms();
    sleep_ms(3300);
    unsigned long n = pgg__health_rounds(p->health) - rounds;
    double took = pgh_now_ms() - t0;
    cr_expect_eq(host_stats(p, 1).connects, 0, "the health thread warmed an unreachable host");
    /* Rounds of about connect_timeout_ms (the probe's bound), not twice. */
    cr_expect_geq(n, 4, "%lu health rounds in %.0f ms", n, took);
    cr_expect_eq(host_stats(p, 0).conns_idle, 1, "the reachable host was not warmed");
    t0 = pgh_now_ms();
    pgg_pool_free(p);
    cr_expect_leq(pgh_now_ms() - t0, 500 + 150.0, "pgg_pool_free waited %.0f ms",
                  pgh_now_ms() - t0);
    pgh_proxy_free(px);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}
