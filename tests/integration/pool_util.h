/* Helpers shared by the pool's integration tests. */
#ifndef PGG_TEST_POOL_UTIL_H
#define PGG_TEST_POOL_UTIL_H

#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "pgguard.h"

/*
 * Settings that make faults show within a test's patience: frequent health
 * rounds, short open times, three consecutive failures to trip, one probe
 * to close.  Timeouts stay well above what a loaded 2-core machine needs
 * for a healthy local query.
 */
#define TEST_SETTINGS                                                       \
    "health_interval_ms=100 connect_timeout_ms=1000 call_timeout_ms=3000 "  \
    "pool_max=4 bulkhead.max_concurrent=16 bulkhead.max_wait_ms=100 "       \
    "breaker.consecutive_failures=3 breaker.min_calls=10 "                  \
    "breaker.open_ms=400 breaker.open_max_ms=2000 breaker.open_jitter=0 "   \
    "breaker.half_open_probes=1 breaker.half_open_successes=1 "             \
    "cancel_timeout_ms=500"

static inline pgh_cluster *cluster_or_die(int replicas)
{
    char err[2048];
    pgh_cluster *c = pgh_cluster_start(replicas, err, sizeof err);
    cr_assert_not_null(c, "cluster start: %s", err);
    return c;
}

/*
 * Make n (local) ask role for a password (created with one, pg_hba.conf's
 * first line scram-sha-256 for it over TCP) and write into ci a conninfo
 * for role that gives none (passfile=/dev/null: no ~/.pgpass either);
 * returns once libpq is asked for a password there (the reload is
 * asynchronous).
 */
static inline void ask_password_of(pgh_node *n, const char *role, char *ci, size_t cilen)
{
    char path[1024], sql[256], *old;
    FILE *f;
    long len;

    snprintf(sql, sizeof sql, "DROP ROLE IF EXISTS %s; CREATE ROLE %s LOGIN PASSWORD 'pgg-x'",
             role, role);
    cr_assert_eq(pgh_node_exec(n, sql), 0, "%s", pgh_node_error(n));
    snprintf(path, sizeof path, "%s/pg_hba.conf", pgh_node_datadir(n));
    f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    old = (char *)calloc(1, (size_t)len + 1);
    cr_assert_eq(fread(old, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    f = fopen(path, "w"); /* in place: the file keeps its owner */
    cr_assert_not_null(f, "%s", path);
    fprintf(f, "host all %s 127.0.0.1/32 scram-sha-256\n%s", role, old);
    fclose(f);
    free(old);
    cr_assert_eq(pgh_node_exec(n, "SELECT pg_reload_conf()"), 0, "%s", pgh_node_error(n));
    snprintf(ci, cilen, "host=127.0.0.1 port=%d user=%s dbname=postgres passfile=/dev/null",
             pgh_node_port(n), role);
    for (int i = 0;; i++) {
        PGconn *c = PQconnectdb(ci);
        int asked = PQconnectionNeedsPassword(c);

        PQfinish(c);
        if (asked)
            return;
        cr_assert(i < 500, "the server never asked %s for a password", role);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/*
 * "primary, replica 0 through px" as one multi-host conninfo, with the
 * primary's other settings (user, password, dbname): the fault proxy works
 * in front of any server, external ones included.  malloc'd.
 */
static inline char *conninfo_via_proxy(pgh_cluster *c, pgh_proxy *px)
{
    pgh_node *prim = pgh_cluster_primary(c);
    char hosts[512], ports[32];
    snprintf(hosts, sizeof hosts, "%s,127.0.0.1", pgh_node_host(prim));
    snprintf(ports, sizeof ports, "%d,%d", pgh_node_port(prim), pgh_proxy_port(px));
    char *ci = pgh_conninfo_hosts(pgh_node_conninfo(prim), hosts, ports);
    cr_assert_not_null(ci);
    return ci;
}

static inline void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline pgg_host_stats host_stats(pgg_pool *p, int i)
{
    pgg_host_stats s;
    cr_assert_eq(pgg_pool_host_stats(p, i, &s), PGG_OK);
    return s;
}

/* Poll until host i has this role (health rounds run every 100 ms). */
static inline bool wait_role(pgg_pool *p, int i, pgg_role role, int timeout_ms)
{
    double end = pgh_now_ms() + timeout_ms;
    while (pgh_now_ms() < end) {
        if (host_stats(p, i).role == role)
            return true;
        sleep_ms(20);
    }
    return false;
}

/* Poll until host i has at least n idle connections, or timeout_ms; its
 * stats at the end. */
static inline pgg_host_stats wait_idle(pgg_pool *p, int i, int n, int timeout_ms)
{
    double end = pgh_now_ms() + timeout_ms;
    pgg_host_stats s;
    while ((s = host_stats(p, i)).conns_idle < n && pgh_now_ms() < end)
        sleep_ms(10);
    return s;
}

static inline bool wait_state(pgg_pool *p, int i, pgg_breaker_state st, int timeout_ms)
{
    double end = pgh_now_ms() + timeout_ms;
    while (pgh_now_ms() < end) {
        if (host_stats(p, i).state == st)
            return true;
        sleep_ms(20);
    }
    return false;
}

/*
 * A fresh table `name (id int primary key, v text)` with rows 1..n whose v
 * is prefix || id, created on the primary and replayed by every replica.
 */
static inline void make_table(pgh_cluster *c, const char *name, const char *prefix, int n)
{
    pgh_node *p = pgh_cluster_primary(c);
    char sql[512];

    snprintf(sql, sizeof sql,
             "SET client_min_messages = warning;"
             "DROP TABLE IF EXISTS %s;"
             "CREATE TABLE %s (id int PRIMARY KEY, v text);"
             "INSERT INTO %s SELECT g, '%s' || g FROM generate_series(1, %d) g;",
             name, name, name, prefix, n);
    cr_assert_eq(pgh_node_exec(p, sql), 0, "%s", pgh_node_error(p));
    for (int i = 0; i < pgh_cluster_replica_count(c); i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), p, 10000), 0);
}

/* A pool over the cluster (primary first, then replicas), with the test
 * settings plus `extra`, once every host's role is known. */
static inline pgg_pool *pool_for_conninfo(const char *conninfo, const char *extra)
{
    pgg_config *cfg = pgg_config_new();
    pgg_error e;
    pgg_pool *p;

    cr_assert_not_null(cfg);
    cr_assert_eq(pgg_config_set_servers(cfg, conninfo, &e), PGG_OK, "servers: %s", e.message);
    cr_assert_eq(pgg_config_parse(cfg, TEST_SETTINGS, &e), PGG_OK, "settings: %s", e.message);
    if (extra)
        cr_assert_eq(pgg_config_parse(cfg, extra, &e), PGG_OK, "extra settings: %s", e.message);
    p = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    cr_assert_not_null(p, "pool: %s: %s", pgg_err_name(e.code), e.message);
    return p;
}

static inline pgg_pool *pool_for(pgh_cluster *c, const char *extra)
{
    char *ci = pgh_cluster_conninfo(c);
    pgg_pool *p = pool_for_conninfo(ci, extra);
    free(ci);
    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000), "primary's role never learnt");
    for (int i = 1; i < pgg_pool_host_count(p); i++)
        cr_assert(wait_role(p, i, PGG_ROLE_STANDBY, 10000), "replica %d's role never learnt", i);
    return p;
}

/*
 * Pool accounting balances: nothing busy, the bulkhead empty (calls are
 * synchronous, so this holds the moment they have all returned), and every
 * open connection idle once the health thread's own work settles (it may be
 * opening one to keep pool_min_idle, for a moment).
 */
static inline void assert_balanced(pgg_pool *p)
{
    pgg_stats s;

    cr_assert_eq(pgg_pool_stats(p, &s), PGG_OK);
    cr_expect_eq(s.bulkhead_in_use, 0, "bulkhead slots still held: %d", s.bulkhead_in_use);
    cr_expect_eq(s.bulkhead_waiting, 0);
    for (int i = 0; i < pgg_pool_host_count(p); i++) {
        pgg_host_stats h = host_stats(p, i);
        double end = pgh_now_ms() + 3000;

        cr_expect_eq(h.conns_busy, 0, "%s: %d connections still busy", h.host, h.conns_busy);
        while (h.conns_open != h.conns_idle + h.conns_busy && pgh_now_ms() < end) {
            sleep_ms(10);
            h = host_stats(p, i);
        }
        cr_expect_eq(h.conns_open, h.conns_idle, "%s: open %d != idle %d", h.host,
                     h.conns_open, h.conns_idle);
    }
}

/*
 * The end of every test: accounting balanced, everything freed, and then
 * no memory leaked (LeakSanitizer or valgrind, when present), checked in
 * the test body because Criterion ignores a leak checker's exit code in
 * its workers.  c may be NULL.
 */
static inline void end_test(pgg_pool *p, pgh_cluster *c)
{
    assert_balanced(p);
    pgg_pool_free(p);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

/* No breaker opened, no failure counted against any host. */
static inline void expect_hosts_untouched(pgg_pool *p)
{
    for (int i = 0; i < pgg_pool_host_count(p); i++) {
        pgg_host_stats h = host_stats(p, i);
        cr_expect_eq(h.state, PGG_BREAKER_CLOSED, "%s: breaker %s", h.host,
                     pgg_breaker_state_name(h.state));
        for (int k = PGG_CLASS_CONNECTION; k < PGG_CLASS__COUNT; k++)
            cr_expect_eq(h.failures[k], 0, "%s counted %llu %s failures", h.host,
                         (unsigned long long)h.failures[k], pgg_class_name((pgg_class)k));
    }
}

/* No failure counted against host i since `before`, its breaker closed. */
static inline void expect_no_host_failure(pgg_pool *p, int i, const pgg_host_stats *before,
                                   const char *when)
{
    pgg_host_stats h = host_stats(p, i);

    cr_expect_eq(h.state, PGG_BREAKER_CLOSED, "%s: breaker %s", when,
                 pgg_breaker_state_name(h.state));
    cr_expect_eq(h.connect_failures, before->connect_failures,
                 "%s: %llu failed connects counted", when,
                 (unsigned long long)(h.connect_failures - before->connect_failures));
    for (int k = PGG_CLASS_CONNECTION; k < PGG_CLASS__COUNT; k++)
        cr_expect_eq(h.failures[k], before->failures[k], "%s: %llu %s failures counted", when,
                     (unsigned long long)(h.failures[k] - before->failures[k]),
                     pgg_class_name((pgg_class)k));
}

/*
 * A proxy in front of c's primary (*px, for the test to set its modes and
 * free) and a pool of that server alone through it, with the test settings
 * plus extra, once its role is known.
 */
static inline pgg_pool *pool_through_proxy(pgh_cluster *c, pgh_proxy **px, const char *extra)
{
    pgh_node *n = pgh_cluster_primary(c);
    char err[256], *ci;
    pgg_pool *p;

    *px = pgh_proxy_start(pgh_node_host(n), pgh_node_port(n), err, sizeof err);
    cr_assert_not_null(*px, "%s", err);
    ci = pgh_conninfo_at(pgh_node_conninfo(n), "127.0.0.1", pgh_proxy_port(*px));
    cr_assert_not_null(ci);
    p = pool_for_conninfo(ci, extra);
    free(ci);
    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000), "the primary's role never learnt");
    return p;
}

/* A "SELECT 1" call in a thread of its own
 * (pthread_create(&t, NULL, exec_in_thread, &w)): its intent, deadline and
 * cancel handle (may be NULL) as set; how it ended in code and message
 * ("" when served), then done. */
typedef struct thread_call {
    pgg_pool *p;
    pgg_intent intent;
    int timeout_ms;
    pgg_cancel *cancel;
    int code;
    char message[512];
    atomic_bool done;
} thread_call;

static inline void *exec_in_thread(void *arg)
{
    thread_call *w = arg;
    pgg_call call = {.timeout_ms = w->timeout_ms, .cancel = w->cancel};
    pgg_error e;
    PGresult *r = pgg_exec(w->p, w->intent, "SELECT 1", &call, NULL, &e);

    w->code = r ? PGG_OK : e.code;
    snprintf(w->message, sizeof w->message, "%s", r ? "" : e.message);
    PQclear(r);
    atomic_store(&w->done, true);
    return NULL;
}

/* A read that must succeed; returns the host index that served it. */
static inline int read_ok(pgg_pool *p, pgg_intent intent, const char *sql, int timeout_ms)
{
    pgg_call call = {.timeout_ms = timeout_ms};
    pgg_info info;
    pgg_error e;
    PGresult *r = pgg_exec(p, intent, sql, &call, &info, &e);

    cr_assert_not_null(r, "%s failed: %s %s", sql, pgg_err_name(e.code), e.message);
    cr_assert(PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK,
              "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    return info.host_index;
}

/* Does some read among `tries` land on host `index` (reads spread over
 * equally good replicas, so one may take a few)? */
static inline bool reads_reach(pgg_pool *p, int index, int tries)
{
    for (int i = 0; i < tries; i++)
        if (read_ok(p, PGG_READ, "SELECT 1", 0) == index)
            return true;
    return false;
}

/*
 * Issue 9's blip, made deterministic: BLIP_READ sleeps as long as the
 * table pgg_blip_flag says.  Reads sent while it says a minute sleep until
 * the blip ends them (blip_running tells when they all run); it says a
 * second before the blip (blip_sleep, replayed), so that their runs after
 * it end soon, but not before every 57P01 of the blip has been judged
 * (a run after it ending at once would put a success between them).
 */
#define BLIP_READ "SELECT pg_sleep((SELECT s FROM pgg_blip_flag))"

static inline void blip_sleep(pgh_cluster *c, int seconds)
{
    pgh_node *p = pgh_cluster_primary(c);
    char sql[256];

    snprintf(sql, sizeof sql,
             "CREATE TABLE IF NOT EXISTS pgg_blip_flag (s int);"
             "DELETE FROM pgg_blip_flag; INSERT INTO pgg_blip_flag VALUES (%d);",
             seconds);
    cr_assert_eq(pgh_node_exec(p, sql), 0, "%s", pgh_node_error(p));
    for (int i = 0; i < pgh_cluster_replica_count(c); i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), p, 10000), 0);
}

/* BLIP_READs running on node n now. */
static inline int blip_running(pgh_node *n)
{
    char v[32];

    cr_assert_eq(pgh_node_query_value(n,
                                      "SELECT count(*) FROM pg_stat_activity WHERE state = "
                                      "'active' AND query = '" BLIP_READ "'",
                                      v, sizeof v),
                 0, "%s", pgh_node_error(n));
    return atoi(v);
}

#endif
