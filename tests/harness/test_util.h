/* Helpers shared by the harness's own tests. */
#ifndef PGH_TEST_UTIL_H
#define PGH_TEST_UTIL_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"

/* Fail the test when it leaked.  Call it at the end of the test body: an
 * assertion in a .fini does not count. */
static inline void no_leaks(void)
{
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

/* Start a cluster or fail the test with the harness's reason. */
static inline pgh_cluster *start_cluster(int replicas)
{
    char err[2048];
    double t0 = pgh_now_ms();
    pgh_cluster *c = pgh_cluster_start(replicas, err, sizeof err);
    cr_assert_not_null(c, "cluster start: %s", err);
    fprintf(stderr, "timing: cluster start, primary + %d replicas: %.0f ms\n",
            pgh_cluster_replica_count(c), pgh_now_ms() - t0);
    return c;
}

/* A cluster for a fault test: skipped (after freeing it) on external
 * servers, where `what` cannot be injected. */
static inline pgh_cluster *start_local_cluster(int replicas, const char *what)
{
    pgh_cluster *c = start_cluster(replicas);
    if (pgh_cluster_is_external(c)) {
        pgh_cluster_free(c);
        pgh_skip("%s cannot be injected into external servers", what);
    }
    return c;
}

/* One value from a query on a node, or fail the test. */
static inline void query_value(pgh_node *n, const char *sql, char *out, size_t outlen)
{
    cr_assert_eq(pgh_node_query_value(n, sql, out, outlen), 0, "%s: %s: %s",
                 pgh_node_name(n), sql, pgh_node_error(n));
}

static inline void expect_value(pgh_node *n, const char *sql, const char *want)
{
    char v[256];
    query_value(n, sql, v, sizeof v);
    cr_expect_str_eq(v, want, "%s: %s", pgh_node_name(n), sql);
}

static inline PGconn *connect_or_die(const char *conninfo)
{
    char err[1024];
    PGconn *conn = pgh_connect(conninfo, 10000, NULL, err, sizeof err);
    cr_assert_not_null(conn, "connect: %s", err);
    return conn;
}

/* Is the process alive?  A zombie is not: on these machines dead processes
 * can stay unreaped for a while, and kill(pid, 0) succeeds on them. */
static inline bool pid_alive(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

#endif
