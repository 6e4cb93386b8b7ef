/*
 * Read your writes against a real primary and two replicas whose replay the
 * tests pause and resume: a read that asks for a write's position never
 * sees older data, wherever it is served.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

#include "pgg_config.h"
#include "pool_util.h"

#if PGG_HAVE_LIBPQTYPES
#include "pgguard_types.h"
#endif

/* Short waits for a replica, so that tests that expect the primary do not
 * spend seconds; tests that expect the wait set their own. */
#define OFF "read_your_writes=off read_your_writes.max_wait_ms=200"

static void pause_replicas(pgh_cluster *c)
{
    for (int i = 0; i < pgh_cluster_replica_count(c); i++)
        cr_assert_eq(pgh_node_pause_replay(pgh_cluster_replica(c, i)), 0, "%s",
                     pgh_node_error(pgh_cluster_replica(c, i)));
}

static void resume_replicas(pgh_cluster *c)
{
    for (int i = 0; i < pgh_cluster_replica_count(c); i++)
        cr_assert_eq(pgh_node_resume_replay(pgh_cluster_replica(c, i)), 0);
}

/* One row more; returns the write's position (asserted non-zero). */
static uint64_t insert(pgg_pool *p, const pgg_call *call, int id)
{
    char sql[128];
    pgg_info info;
    pgg_error e;

    snprintf(sql, sizeof sql, "INSERT INTO pgg_ryw (id, v) VALUES (%d, 'w%d')", id, id);
    PGresult *r = pgg_exec(p, PGG_WRITE, sql, call, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", e.message);
    PQclear(r);
    cr_assert_eq(info.host_index, 0);
    cr_assert_neq(info.lsn, 0, "a write must say where it becomes visible");
    return info.lsn;
}

static int count_rows(pgg_pool *p, const pgg_call *call, pgg_info *info)
{
    pgg_error e;
    PGresult *r = pgg_exec(p, PGG_READ, "SELECT count(*) FROM pgg_ryw", call, info, &e);
    cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", e.message);
    int n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n;
}

static pgh_cluster *two_replicas(void)
{
    pgh_cluster *c = cluster_or_die(2);
    pgh_require_replicas(c, 2);
    pgh_require_local(c, "pausing replay");
    make_table(c, "pgg_ryw", "r", 0);
    return c;
}

Test(ryw, a_minimum_position_is_never_read_stale_with_replay_paused)
{
    pgh_cluster *c = two_replicas();
    pgg_pool *p = pool_for(c, OFF);
    const pgg_call want = {.flags = PGG_CALL_WANT_LSN};
    pgg_info info;

    pause_replicas(c);
    for (int k = 1; k <= 10; k++) {
        pgg_call read = {.min_lsn = insert(p, &want, k)};

        cr_expect_eq(count_rows(p, &read, &info), k, "a stale read after write %d", k);
        cr_expect_eq(info.host_index, 0, "only the primary has it");
        cr_expect_geq(info.lsn, read.min_lsn);
        /* Without a position the replicas serve, and are behind: the test
         * would not notice staleness if they were not. */
        cr_expect_eq(count_rows(p, NULL, &info), 0);
        cr_expect_neq(info.host_index, 0);
    }
    /* Without WANT_LSN and with the pool-wide mode off, nothing is learnt. */
    PGresult *r = pgg_exec(p, PGG_WRITE, "INSERT INTO pgg_ryw VALUES (100, 'x')", NULL, &info,
                           NULL);
    cr_assert_not_null(r);
    PQclear(r);
    cr_expect_eq(info.lsn, 0);
    resume_replicas(c);
    end_test(p, c);
}

typedef struct resumer {
    pgh_cluster *c;
    int after_ms;
} resumer;

static void *resume_later(void *arg)
{
    resumer *rs = arg;
    sleep_ms(rs->after_ms);
    for (int i = 0; i < pgh_cluster_replica_count(rs->c); i++)
        pgh_node_resume_replay(pgh_cluster_replica(rs->c, i));
    return NULL;
}

Test(ryw, a_replica_that_has_replayed_serves_the_read)
{
    pgh_cluster *c = two_replicas();
    pgg_pool *p = pool_for(c, "read_your_writes=off read_your_writes.max_wait_ms=10000");
    const pgg_call want = {.flags = PGG_CALL_WANT_LSN};
    pgg_info info;

    /* Replayed before the read: a replica serves it. */
    pgg_call read = {.min_lsn = insert(p, &want, 1)};
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), pgh_cluster_primary(c),
                                          10000), 0);
    cr_expect_eq(count_rows(p, &read, &info), 1);
    cr_expect_neq(info.host_index, 0, "a replica that has the write serves it");
    cr_expect_geq(info.lsn, read.min_lsn);

    /* Replayed while the read waits: a replica still serves it, after a
     * wait, within the deadline. */
    pause_replicas(c);
    read.min_lsn = insert(p, &want, 2);
    read.timeout_ms = 8000;
    resumer rs = {c, 400};
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, resume_later, &rs), 0);
    double t0 = pgh_now_ms();
    cr_expect_eq(count_rows(p, &read, &info), 2);
    double took = pgh_now_ms() - t0;
    pthread_join(t, NULL);
    cr_expect_neq(info.host_index, 0, "served by %s after %.0f ms", info.host, took);
    cr_expect_gt(info.lsn_wait_us, 0, "it waited");
    cr_expect_geq(info.lsn, read.min_lsn);
    end_test(p, c);
}

Test(ryw, the_pool_wide_mode_reads_the_pools_own_writes)
{
    pgh_cluster *c = two_replicas();
    /* The pool-wide mode: one key, no token. */
    pgg_pool *p = pool_for(c, "read_your_writes=pool read_your_writes.max_wait_ms=200");
    pgg_info info;

    pause_replicas(c);
    for (int k = 1; k <= 5; k++) {
        uint64_t lsn = insert(p, NULL, k);
        cr_expect_eq(pgg_pool_lsn(p), lsn, "the pool's latest write");
        pgg_stats before, after;
        cr_assert_eq(pgg_pool_stats(p, &before), PGG_OK);
        cr_expect_eq(count_rows(p, NULL, &info), k, "stale read after write %d", k);
        cr_expect_eq(info.host_index, 0);
        /* Each paused replica checked once (read committed: no second
         * check in a transaction of its own). */
        cr_assert_eq(pgg_pool_stats(p, &after), PGG_OK);
        cr_expect_eq(after.ryw_checks - before.ryw_checks, 2);
    }
    /* A read may opt out: then the (paused) replicas serve it. */
    const pgg_call any = {.flags = PGG_CALL_ANY_LSN};
    cr_expect_eq(count_rows(p, &any, &info), 0);
    cr_expect_neq(info.host_index, 0);
    /* Resumed: the replicas catch up and serve the pool-wide reads again. */
    resume_replicas(c);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), pgh_cluster_primary(c),
                                          10000), 0);
    cr_expect_eq(count_rows(p, NULL, &info), 5);
    cr_expect_neq(info.host_index, 0, "caught-up replicas serve again");

    /* Writes that are several statements (simple protocol) report their
     * position too; so do prepared statements. */
    pause_replicas(c);
    PGresult *r = pgg_exec(p, PGG_WRITE,
                           "INSERT INTO pgg_ryw VALUES (6, 'a'); INSERT INTO pgg_ryw VALUES (7, 'b')",
                           NULL, &info, NULL);
    cr_assert_not_null(r);
    PQclear(r);
    cr_expect_neq(info.lsn, 0);
    cr_expect_eq(count_rows(p, NULL, &info), 7);
    pgg_error e;
    cr_assert_eq(pgg_pool_prepare(p, "ins", "INSERT INTO pgg_ryw VALUES ($1, 'p')", 1, NULL, &e),
                 PGG_OK);
    cr_assert_eq(pgg_pool_prepare(p, "cnt", "SELECT count(*) FROM pgg_ryw", 0, NULL, &e), PGG_OK);
    const char *eight[] = {"8"};
    r = pgg_exec_prepared(p, PGG_WRITE, "ins", 1, eight, NULL, NULL, NULL, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    PQclear(r);
    cr_expect_neq(info.lsn, 0);
    r = pgg_exec_prepared(p, PGG_READ, "cnt", 0, NULL, NULL, NULL, NULL, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "8");
    PQclear(r);
    resume_replicas(c);
    end_test(p, c);
}

#if PGG_HAVE_LIBPQTYPES
Test(ryw, typed_calls_honour_a_minimum_position)
{
    pgh_cluster *c = two_replicas();
    pgg_pool *p = pool_for(c, OFF);
    const pgg_call want = {.flags = PGG_CALL_WANT_LSN};
    pgg_info info;
    pgg_error e;

    pause_replicas(c);
    PGresult *r = pgg_execf(p, PGG_WRITE, &want, &info, &e,
                            "INSERT INTO pgg_ryw VALUES (%int4, %text)", 1, "typed");
    cr_assert_not_null(r, "%s", e.message);
    PQclear(r);
    cr_assert_neq(info.lsn, 0);
    pgg_call read = {.min_lsn = info.lsn};
    r = pgg_execf(p, PGG_READ, &read, &info, &e, "SELECT v FROM pgg_ryw WHERE id = %int4", 1);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_eq(PQntuples(r), 1, "a typed read older than its position");
    cr_expect_eq(info.host_index, 0);
    PQclear(r);
    resume_replicas(c);
    end_test(p, c);
}
#endif

Test(ryw, a_cached_answer_older_than_the_position_is_not_served)
{
    pgh_cluster *c = two_replicas();
    pgg_pool *p = pool_for(c, OFF " cache.enabled=true cache.max_age_ms=60000");
    const pgg_call want = {.flags = PGG_CALL_WANT_LSN};
    pgg_call cacheable = {.timeout_ms = 2000, .flags = PGG_CALL_CACHEABLE};
    pgg_info info;
    pgg_error e;

    /* Cached before the write: its data's position is below the write's. */
    cr_expect_eq(count_rows(p, &cacheable, &info), 0);
    uint64_t lsn = insert(p, &want, 1);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), pgh_cluster_primary(c),
                                          10000), 0);
    /* Cached after it, by a read that asked for it. */
    pgg_call after = cacheable;
    after.min_lsn = lsn;
    PGresult *r = pgg_exec(p, PGG_READ, "SELECT max(id) FROM pgg_ryw", &after, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "1");
    PQclear(r);

    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pgh_node_stop(pgh_cluster_replica(c, i), PGH_STOP_IMMEDIATE), 0);

    /* The old answer for a read that needs the write: refused. */
    r = pgg_exec(p, PGG_READ, "SELECT count(*) FROM pgg_ryw", &after, &info, &e);
    cr_expect_null(r, "a cached answer older than the read's position was served");
    PQclear(r);
    cr_expect_eq(info.from_cache, 0);
    cr_expect_neq(e.code, PGG_OK);
    /* ... unless the caller allows it explicitly, or asks for no position. */
    pgg_call any = after;
    any.flags |= PGG_CALL_CACHE_ANY_LSN;
    r = pgg_exec(p, PGG_READ, "SELECT count(*) FROM pgg_ryw", &any, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_eq(info.from_cache, 1);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "0");
    PQclear(r);
    r = pgg_exec(p, PGG_READ, "SELECT count(*) FROM pgg_ryw", &cacheable, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_eq(info.from_cache, 1);
    PQclear(r);
    /* The answer read at the position is good for it. */
    r = pgg_exec(p, PGG_READ, "SELECT max(id) FROM pgg_ryw", &after, &info, &e);
    cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(info.from_cache, 1);
    cr_expect_geq(info.lsn, lsn, "the position recorded with the answer");
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    end_test(p, c);
}

/* A primary-only read holds every write acknowledged before it: the copy it
 * caches must say so, or it would hide the position a PGG_READ of the same
 * SQL cached before it (found through http_backend's ?consistency=primary). */
Test(ryw, a_primary_read_caches_its_answer_with_the_pools_position)
{
    pgh_cluster *c = two_replicas();
    pgg_pool *p = pool_for(c, "read_your_writes=pool cache.enabled=true "
                              "cache.max_age_ms=60000");
    pgg_call cacheable = {.timeout_ms = 2000, .flags = PGG_CALL_CACHEABLE};
    pgg_info info;
    pgg_error e;

    uint64_t lsn = insert(p, NULL, 1);
    PGresult *r = pgg_exec(p, PGG_READ_PRIMARY, "SELECT max(id) FROM pgg_ryw",
                           &cacheable, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_geq(info.lsn, lsn, "a primary's answer holds the pool's writes");
    PQclear(r);

    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pgh_node_stop(pgh_cluster_replica(c, i), PGH_STOP_IMMEDIATE), 0);

    /* A read that needs the pool's write may stand on that copy. */
    r = pgg_exec(p, PGG_READ, "SELECT max(id) FROM pgg_ryw", &cacheable, &info, &e);
    cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(info.from_cache, 1);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    end_test(p, c);
}

Test(ryw, a_lease_commit_reports_its_position)
{
    pgh_cluster *c = two_replicas();
    pgg_pool *p = pool_for(c, OFF);
    pgg_error e;
    pgg_info info;
    uint64_t lsn = 1;

    pause_replicas(c);
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 2000, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    cr_expect_eq(pgg_lease_commit(l, 2000, &lsn, &e), PGG_ESTATE, "no transaction to commit");
    cr_expect_eq(lsn, 0);
    PQclear(pgg_lease_exec(l, "BEGIN", 2000, &e));
    PQclear(pgg_lease_exec(l, "INSERT INTO pgg_ryw VALUES (1, 'lease')", 2000, &e));
    cr_assert_eq(pgg_lease_commit(l, 2000, &lsn, &e), PGG_OK, "%s", e.message);
    cr_expect_neq(lsn, 0);
    cr_expect_eq(pgg_lease_lsn(l), lsn);
    cr_expect_eq(pgg_pool_lsn(p), lsn, "the pool's latest write");
    /* A failed transaction does not commit: no position. */
    PQclear(pgg_lease_exec(l, "BEGIN", 2000, &e));
    PQclear(pgg_lease_exec(l, "SELECT 1/0", 2000, &e));
    uint64_t none = 1;
    cr_expect_eq(pgg_lease_commit(l, 2000, &none, &e), PGG_ESTATE);
    cr_expect_eq(none, 0);
    /* A session that lost pgguard's prepared position query (the
     * caller's DEALLOCATE ALL) still reports the commit's position. */
    PQclear(pgg_lease_exec(l, "DEALLOCATE ALL", 2000, &e));
    PQclear(pgg_lease_exec(l, "BEGIN", 2000, &e));
    PQclear(pgg_lease_exec(l, "INSERT INTO pgg_ryw VALUES (2, 'lease')", 2000, &e));
    uint64_t second = 0;
    cr_assert_eq(pgg_lease_commit(l, 2000, &second, &e), PGG_OK, "%s", e.message);
    cr_expect_gt(second, lsn);
    PQclear(pgg_lease_exec(l, "BEGIN", 2000, &e));
    PQclear(pgg_lease_exec(l, "INSERT INTO pgg_ryw VALUES (3, 'lease')", 2000, &e));
    uint64_t third = 0;
    cr_assert_eq(pgg_lease_commit(l, 2000, &third, &e), PGG_OK, "%s", e.message);
    cr_expect_gt(third, second, "prepared again after it was lost");
    lsn = third;
    pgg_release(l);

    pgg_call read = {.min_lsn = lsn};
    cr_expect_eq(count_rows(p, &read, &info), 3, "the lease's commits, read stale");
    cr_expect_eq(info.host_index, 0);
    resume_replicas(c);
    end_test(p, c);
}

/* Run examples/basic (its path in PGGUARD_BASIC) against the cluster;
 * returns its exit status, its stdout in out. */
static int run_basic(pgh_cluster *c, char *out, size_t outlen)
{
    const char *exe = getenv("PGGUARD_BASIC");
    char *ci = pgh_cluster_conninfo(c);
    int fds[2];

    if (!exe || access(exe, X_OK) != 0)
        pgh_skip("examples/basic is not built (-Dexamples=true)");
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        execl(exe, exe, ci, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t k;
    while (n + 1 < outlen && (k = read(fds[0], out + n, outlen - n - 1)) > 0)
        n += (size_t)k;
    out[n] = '\0';
    close(fds[0]);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    free(ci);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(ryw, the_basic_example_passes_against_paused_replicas)
{
    pgh_cluster *c = two_replicas();
    char out[4096];

    /* A fresh database: no table yet, and replicas that will not replay
     * the CREATE before the example reads. */
    cr_assert_eq(pgh_node_exec(pgh_cluster_primary(c), "DROP TABLE IF EXISTS pgguard_basic"), 0);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), pgh_cluster_primary(c),
                                          10000), 0);
    pause_replicas(c);
    for (int run = 1; run <= 3; run++) {
        char want[64];
        cr_expect_eq(run_basic(c, out, sizeof out), 0, "run %d failed: %s", run, out);
        snprintf(want, sizeof want, "read %d rows", run);
        cr_expect(strstr(out, want) != NULL, "run %d: expected \"%s\" in: %s", run, want, out);
    }
    resume_replicas(c);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), pgh_cluster_primary(c),
                                          10000), 0);
    cr_expect_eq(run_basic(c, out, sizeof out), 0, "%s", out);
    cr_expect(strstr(out, "read 4 rows") != NULL, "%s", out);
    pgh_cluster_free(c);
}

/* What a pipeline cannot carry still works in the pool-wide mode, within
 * its deadline: COPY (refused plainly, as without read your writes: only a
 * lease's COPY helpers can carry its data), VACUUM (refused inside a
 * transaction block, not inside a pipeline's first segment), a string of
 * several statements (a second round trip). */
Test(ryw, copy_vacuum_and_several_statements_still_work)
{
    pgh_cluster *c = two_replicas();
    pgg_pool *p = pool_for(c, "read_your_writes=pool");
    const pgg_call call = {.timeout_ms = 3000};
    pgg_info info;
    pgg_error e;

    insert(p, NULL, 1); /* a position for the reads below to wait for */
    double t0 = pgh_now_ms();
    PGresult *r = pgg_exec(p, PGG_WRITE, "COPY pgg_ryw FROM STDIN", &call, &info, &e);
    cr_expect_null(r);
    PQclear(r);
    cr_expect_eq(e.code, PGG_ESTATE, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(info.lsn, 0, "nothing committed");
    r = pgg_exec(p, PGG_READ, "COPY pgg_ryw TO STDOUT", &call, &info, &e);
    cr_expect_null(r);
    PQclear(r);
    cr_expect_eq(e.code, PGG_ESTATE, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_lt(pgh_now_ms() - t0, 6000, "COPY held a call past its deadline");

    r = pgg_exec(p, PGG_WRITE, "VACUUM pgg_ryw", &call, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", e.message);
    PQclear(r);
    r = pgg_exec(p, PGG_WRITE,
                 "INSERT INTO pgg_ryw VALUES (2, 'a'); UPDATE pgg_ryw SET v = 'b' WHERE id = 2",
                 &call, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", e.message);
    cr_expect_neq(info.lsn, 0);
    PQclear(r);
    cr_expect_eq(count_rows(p, NULL, &info), 2);

    /* Refused inside a transaction block: done the two-sync way. */
    r = pgg_exec(p, PGG_WRITE, "CREATE INDEX CONCURRENTLY pgg_ryw_v ON pgg_ryw (v)", &call,
                 &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", e.message);
    cr_expect_neq(info.lsn, 0);
    PQclear(r);
    /* A failed write: its error, no position, and the session is usable
     * again (not left in a failed transaction block). */
    uint64_t connects = host_stats(p, 0).connects;
    for (int i = 0; i < 3; i++) {
        r = pgg_exec(p, PGG_WRITE, "INSERT INTO pgg_ryw VALUES (1, 'dup')", &call, &info, &e);
        cr_assert_not_null(r, "%s", e.message);
        cr_expect_str_eq(e.sqlstate, "23505");
        cr_expect_eq(info.lsn, 0);
        PQclear(r);
        insert(p, NULL, 10 + i);
    }
    cr_expect_leq(host_stats(p, 0).connects, connects + 1, "failed writes cost connections");
    /* A constraint checked at COMMIT: the write's outcome is its error. */
    cr_assert_eq(pgh_node_exec(pgh_cluster_primary(c),
                               "CREATE TABLE pgg_ryw_child (id int PRIMARY KEY, parent int "
                               "REFERENCES pgg_ryw (id) DEFERRABLE INITIALLY DEFERRED)"),
                 0);
    r = pgg_exec(p, PGG_WRITE, "INSERT INTO pgg_ryw_child VALUES (1, 999)", &call, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
    cr_expect_str_eq(e.sqlstate, "23503");
    cr_expect_eq(info.lsn, 0);
    PQclear(r);
    r = pgg_exec(p, PGG_READ_PRIMARY, "SELECT count(*) FROM pgg_ryw_child", &call, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "0", "the failed write was committed");
    PQclear(r);
    end_test(p, c);
}

/* A write lease in the pool-wide mode: a COPY through the lease's helper
 * works (no pipeline around it), and its rows count as the pool's latest
 * write from the lease's release on. */
static long two_rows(void *ud, char *buf, size_t cap)
{
    static const char rows[] = "1\tcopied\n2\tcopied\n";
    int *sent = ud;

    if (*sent || cap < sizeof rows - 1)
        return 0;
    memcpy(buf, rows, sizeof rows - 1);
    *sent = 1;
    return (long)(sizeof rows - 1);
}

Test(ryw, a_leases_copy_works_and_is_read_after_release)
{
    pgh_cluster *c = two_replicas();
    pgg_pool *p = pool_for(c, "read_your_writes=pool read_your_writes.max_wait_ms=200");
    pgg_error e;
    pgg_info info;
    int sent = 0;

    pause_replicas(c);
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 2000, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    PGresult *r = pgg_lease_copy_in(l, "COPY pgg_ryw FROM STDIN", two_rows, &sent, 2000, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
    PQclear(r);
    uint64_t before = pgg_pool_lsn(p);
    pgg_release(l);
    cr_expect_gt(pgg_pool_lsn(p), before, "the COPY's position was not learnt at release");
    cr_expect_eq(count_rows(p, NULL, &info), 2, "the lease's COPY, read stale");
    cr_expect_eq(info.host_index, 0);
    resume_replicas(c);
    end_test(p, c);
}

/* A read lease with a minimum position (read_your_writes=off, so only the
 * call asks): on the primary while the replicas are behind, on a replica
 * once one has it. */
Test(ryw, a_read_lease_lands_where_its_position_is)
{
    pgh_cluster *c = two_replicas();
    pgg_pool *p = pool_for(c, OFF);
    const pgg_call want = {.flags = PGG_CALL_WANT_LSN};
    pgg_info info;
    pgg_error e;

    pause_replicas(c);
    pgg_call at = {.timeout_ms = 3000, .min_lsn = insert(p, &want, 1)};
    pgg_lease *l = pgg_acquire_call(p, PGG_READ, &at, &info, &e);
    cr_assert_not_null(l, "%s", e.message);
    cr_expect_eq(info.host_index, 0, "a lease on a replica behind its position");
    PGresult *r = pgg_lease_exec(l, "SELECT count(*) FROM pgg_ryw", 2000, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    pgg_release(l);
    /* Without a position the paused replicas take it. */
    l = pgg_acquire_call(p, PGG_READ, NULL, &info, &e);
    cr_assert_not_null(l, "%s", e.message);
    cr_expect_neq(info.host_index, 0);
    pgg_release(l);

    resume_replicas(c);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), pgh_cluster_primary(c),
                                          10000), 0);
    /* Known once a health round (every 100 ms here) has seen it. */
    double end = pgh_now_ms() + 5000;
    bool on_replica = false;
    while (!on_replica && pgh_now_ms() < end) {
        l = pgg_acquire_call(p, PGG_READ, &at, &info, &e);
        cr_assert_not_null(l, "%s", e.message);
        on_replica = info.host_index != 0;
        pgg_release(l);
        if (!on_replica)
            sleep_ms(50);
    }
    cr_expect(on_replica, "a replica that has the position never got the lease");
    end_test(p, c);
}

/* The same COPY fed on the lease's raw connection (pgg_lease_exec refuses
 * it, the caller sends it itself): learnt at release too. */
Test(ryw, a_raw_copy_on_a_lease_is_read_after_release)
{
    pgh_cluster *c = two_replicas();
    pgg_pool *p = pool_for(c, "read_your_writes=pool read_your_writes.max_wait_ms=200");
    pgg_error e;
    pgg_info info;
    PGresult *r;

    pause_replicas(c);
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 2000, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    PGconn *conn = pgg_lease_conn(l);
    cr_assert_eq(PQsetnonblocking(conn, 0), 0);
    r = PQexec(conn, "COPY pgg_ryw FROM STDIN");
    cr_assert_eq(PQresultStatus(r), PGRES_COPY_IN, "%s", PQresultErrorMessage(r));
    PQclear(r);
    cr_assert_eq(PQputCopyData(conn, "1\tcopied\n2\tcopied\n", 18), 1);
    cr_assert_eq(PQputCopyEnd(conn, NULL), 1);
    while ((r = PQgetResult(conn)) != NULL) {
        cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
        PQclear(r);
    }
    cr_assert_eq(PQsetnonblocking(conn, 1), 0);
    uint64_t before = pgg_pool_lsn(p);
    pgg_release(l);
    cr_expect_gt(pgg_pool_lsn(p), before, "the COPY's position was not learnt at release");
    cr_expect_eq(count_rows(p, NULL, &info), 2, "the lease's COPY, read stale");
    cr_expect_eq(info.host_index, 0);
    resume_replicas(c);
    end_test(p, c);
}

static pgg_stats stats_of(pgg_pool *p)
{
    pgg_stats s;
    cr_assert_eq(pgg_pool_stats(p, &s), PGG_OK);
    return s;
}

/* A statement on a lease's raw connection (pgguard's are non-blocking). */
static void raw_exec(pgg_lease *l, const char *sql)
{
    PGconn *conn = pgg_lease_conn(l);
    cr_assert_eq(PQsetnonblocking(conn, 0), 0);
    PGresult *r = PQexec(conn, sql);
    cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
    PQclear(r);
    cr_assert_eq(PQsetnonblocking(conn, 1), 0);
}

/* A write that must succeed; returns its pgg_info.lsn (0 when not learnt). */
static uint64_t write_row(pgg_pool *p, int id)
{
    char sql[128];
    pgg_info info;
    pgg_error e;

    snprintf(sql, sizeof sql, "INSERT INTO pgg_ryw (id, v) VALUES (%d, 'w%d')", id, id);
    PGresult *r = pgg_exec(p, PGG_WRITE, sql, NULL, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", e.message);
    PQclear(r);
    return info.lsn;
}

/* Resume replay, and pause it again once a replica serves the pool's
 * reads (it has replayed the pool's last sample): n rows by then. */
static void catch_up_then_pause(pgg_pool *p, pgh_cluster *c, int n)
{
    pgg_info info;

    resume_replicas(c);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), pgh_cluster_primary(c),
                                          10000), 0);
    double end = pgh_now_ms() + 5000;
    bool on_replica = false;
    while (!on_replica && pgh_now_ms() < end) {
        cr_expect_eq(count_rows(p, NULL, &info), n);
        on_replica = info.host_index != 0;
        if (!on_replica)
            sleep_ms(50);
    }
    cr_assert(on_replica, "caught-up replicas never served again");
    pause_replicas(c);
}

typedef struct together {
    pgg_pool *p;
    pthread_barrier_t go;
    atomic_int right;
} together;

/* One read of row 100, started with the others. */
static void *read_together(void *arg)
{
    together *t = arg;
    pgg_error e;

    pthread_barrier_wait(&t->go);
    PGresult *r = pgg_exec(t->p, PGG_READ, "SELECT 1 FROM pgg_ryw WHERE id = 100", NULL, NULL, &e);
    if (r && PQntuples(r) == 1)
        atomic_fetch_add(&t->right, 1);
    PQclear(r);
    return NULL;
}

/* read_your_writes=sampled: writes learn nothing (they pay nothing), and
 * every read still sees every write the pool acknowledged before it: the
 * first read after new writes samples the primary's position, the reads
 * after it share that sample while no write comes. */
Test(ryw, the_sampled_mode_reads_the_pools_own_writes)
{
    pgh_cluster *c = two_replicas();
    pgg_pool *p = pool_for(c, "read_your_writes=sampled read_your_writes.max_wait_ms=200");
    pgg_info info;
    pgg_error e;

    pause_replicas(c);
    /* No write yet: nothing to wait for, the (paused) replicas serve. */
    cr_expect_eq(count_rows(p, NULL, &info), 0);
    cr_expect_neq(info.host_index, 0);
    cr_expect_eq(stats_of(p).ryw_samples, 0, "a sample with no write to cover");
    for (int k = 1; k <= 5; k++) {
        cr_expect_eq(write_row(p, k), 0, "a write learnt its position: it paid for it");
        uint64_t before = stats_of(p).ryw_samples;
        for (int j = 0; j < 3; j++) {
            cr_expect_eq(count_rows(p, NULL, &info), k, "stale read after write %d", k);
            cr_expect_eq(info.host_index, 0);
        }
        cr_expect_eq(stats_of(p).ryw_samples, before + 1,
                     "one sample for the reads after a write, not one each");
    }
    cr_expect_geq(stats_of(p).ryw_primary, 15);
    /* Reads that come together after a write share one sample. */
    write_row(p, 100);
    uint64_t before = stats_of(p).ryw_samples;
    together t = {.p = p};
    pthread_t th[8];
    pthread_barrier_init(&t.go, NULL, 8);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, read_together, &t), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&t.go);
    cr_expect_eq(atomic_load(&t.right), 8, "a stale or failed read among them");
    cr_expect_eq(stats_of(p).ryw_samples, before + 1, "%llu samples for 8 reads together",
                 (unsigned long long)(stats_of(p).ryw_samples - before));
    PQclear(pgg_exec(p, PGG_WRITE, "DELETE FROM pgg_ryw WHERE id = 100", NULL, NULL, NULL));
    /* A read may opt out: then the paused replicas serve it. */
    const pgg_call any = {.flags = PGG_CALL_ANY_LSN};
    cr_expect_eq(count_rows(p, &any, &info), 0);
    cr_expect_neq(info.host_index, 0);

    /* A write lease's statement counts at once, before its release, and
     * raw use of its connection at release; a read lease honours the mode
     * too.  Each time the replicas have the pool's last sample first, so
     * that only a new sample keeps the read off them. */
    catch_up_then_pause(p, c, 5);
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 2000, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    PQclear(pgg_lease_exec(l, "INSERT INTO pgg_ryw VALUES (6, 'lease')", 2000, &e));
    cr_expect_eq(count_rows(p, NULL, &info), 6, "a lease's committed write, read stale");
    cr_expect_eq(info.host_index, 0);
    pgg_release(l);
    catch_up_then_pause(p, c, 6);
    l = pgg_acquire(p, PGG_WRITE, 2000, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    raw_exec(l, "INSERT INTO pgg_ryw VALUES (7, 'raw')");
    pgg_release(l);
    l = pgg_acquire(p, PGG_READ, 2000, &info, &e);
    cr_assert_not_null(l, "%s", e.message);
    cr_expect_eq(info.host_index, 0, "a read lease on a replica behind the pool's writes");
    PGresult *r = pgg_lease_exec(l, "SELECT count(*) FROM pgg_ryw", 2000, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "7", "raw use of a write lease, read stale");
    PQclear(r);
    pgg_release(l);
    resume_replicas(c);
    end_test(p, c);
}

/* read_your_writes=sampled with the primary gone after a write: no sample
 * can be taken, and no replica may serve the read (it might be older than
 * the write); the read fails rather than return old data. */
Test(ryw, a_sampled_read_fails_rather_than_read_stale_without_a_primary)
{
    pgh_cluster *c = two_replicas();
    pgg_pool *p = pool_for(c, "read_your_writes=sampled read_your_writes.max_wait_ms=200 "
                              "cache.enabled=true cache.max_age_ms=60000");
    pgg_call cacheable = {.timeout_ms = 1500, .flags = PGG_CALL_CACHEABLE};
    pgg_info info;
    pgg_error e;

    pause_replicas(c);
    /* Cached before the write. */
    cr_expect_eq(count_rows(p, &cacheable, &info), 0);
    write_row(p, 1);
    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    /* Nor may the cache stand in with its older answer, unless allowed. */
    PGresult *cr = pgg_exec(p, PGG_READ, "SELECT count(*) FROM pgg_ryw", &cacheable, &info, &e);
    cr_expect_null(cr, "a cached answer older than the write was served");
    PQclear(cr);
    pgg_call any_cached = cacheable;
    any_cached.flags |= PGG_CALL_CACHE_ANY_LSN | PGG_CALL_ANY_LSN;
    any_cached.timeout_ms = 300;
    cr = pgg_exec(p, PGG_READ, "SELECT count(*) FROM pgg_ryw", &any_cached, &info, &e);
    cr_assert_not_null(cr, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(cr, 0, 0), "0");
    PQclear(cr);
    for (int k = 0; k < 3; k++) {
        pgg_call call = {.timeout_ms = 1500};
        PGresult *r = pgg_exec(p, PGG_READ, "SELECT count(*) FROM pgg_ryw", &call, &info, &e);
        if (r)
            cr_expect_str_eq(PQgetvalue(r, 0, 0), "1", "a read older than its write");
        cr_expect_null(r, "served by %s without a position", info.host);
        cr_expect_neq(e.code, PGG_OK);
        PQclear(r);
    }
    /* Opting out, the replicas still serve (old data, knowingly). */
    const pgg_call any = {.flags = PGG_CALL_ANY_LSN, .timeout_ms = 1500};
    cr_expect_eq(count_rows(p, &any, &info), 0);
    cr_expect_neq(info.host_index, 0);
    /* Back: the next read samples it and is served. */
    cr_assert_eq(pgh_node_start(pgh_cluster_primary(c)), 0);
    double end = pgh_now_ms() + 8000;
    PGresult *r = NULL;
    while (!r && pgh_now_ms() < end) {
        r = pgg_exec(p, PGG_READ, "SELECT count(*) FROM pgg_ryw", NULL, &info, &e);
        if (!r)
            sleep_ms(100);
    }
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    resume_replicas(c);
    end_test(p, c);
}

/* The pool-wide mode's one-Sync write uses BEGIN and COMMIT prepared once
 * per connection: a session that lost them (a lease's DEALLOCATE ALL, no
 * lease_reset) still writes once, and learns the position. */
Test(ryw, a_write_on_a_session_that_lost_its_statements_still_commits_once)
{
    pgh_cluster *c = two_replicas();
    pgg_pool *p = pool_for(c, "read_your_writes=pool read_your_writes.max_wait_ms=200 "
                              "pool_max=1 lease_reset=false");
    pgg_info info;
    pgg_error e;

    pause_replicas(c);
    cr_expect_neq(write_row(p, 1), 0);
    for (int k = 2; k <= 3; k++) {
        pgg_lease *l = pgg_acquire(p, PGG_WRITE, 2000, NULL, &e);
        cr_assert_not_null(l, "%s", e.message);
        raw_exec(l, "DEALLOCATE ALL");
        pgg_release(l);
        /* Run twice it would fail on the primary key. */
        cr_expect_neq(write_row(p, k), 0, "no position after the session lost our statements");
        cr_expect_eq(count_rows(p, NULL, &info), k);
        cr_expect_eq(info.host_index, 0);
    }
    resume_replicas(c);
    end_test(p, c);
}

/* A read's snapshot shared with its transaction (repeatable read by
 * default): a check in the read's own transaction would be older than the
 * position it reads, so the check reports the isolation level, and such a
 * session checks in a transaction of its own (once found, every time).
 * Replicas still serve, never stale. */
Test(ryw, a_replica_check_holds_at_repeatable_read)
{
    pgh_cluster *c = two_replicas();
    pgh_node *pr = pgh_cluster_primary(c);
    cr_assert_eq(pgh_node_exec(pr, "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET "
                                   "default_transaction_isolation = ''repeatable read''', "
                                   "current_database()); END$$"),
                 0, "%s", pgh_node_error(pr));
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), pr, 10000), 0);
    pgg_pool *p = pool_for(c, "read_your_writes=pool read_your_writes.max_wait_ms=200 pool_max=1");
    pgg_info info;
    pgg_error e;
    const pgg_call any = {.flags = PGG_CALL_ANY_LSN};
    PGresult *r = pgg_exec(p, PGG_READ, "SHOW transaction_isolation", &any, &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "repeatable read", "the setup did not take");
    PQclear(r);

    pause_replicas(c);
    insert(p, NULL, 1);
    for (int k = 0; k < 2; k++) {
        pgg_stats before, after;
        cr_assert_eq(pgg_pool_stats(p, &before), PGG_OK);
        cr_expect_eq(count_rows(p, NULL, &info), 1, "a stale read");
        cr_expect_eq(info.host_index, 0);
        cr_assert_eq(pgg_pool_stats(p, &after), PGG_OK);
        /* First on each replica's session: one Sync, which the check's
         * answer refuses, then two; after that two at once. */
        cr_expect_eq(after.ryw_checks - before.ryw_checks, k == 0 ? 4 : 2,
                     "read %d: %llu checks", k,
                     (unsigned long long)(after.ryw_checks - before.ryw_checks));
    }
    resume_replicas(c);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), pr, 10000), 0);
    insert(p, NULL, 2);
    double end = pgh_now_ms() + 5000;
    bool on_replica = false;
    while (!on_replica && pgh_now_ms() < end) {
        cr_expect_eq(count_rows(p, NULL, &info), 2);
        on_replica = info.host_index != 0;
    }
    cr_expect(on_replica, "replicas never served a read at repeatable read");
    pgh_node_exec(pr, "DO $$BEGIN EXECUTE format('ALTER DATABASE %I RESET "
                      "default_transaction_isolation', current_database()); END$$");
    end_test(p, c);
}

/* A procedure or DO block that commits inside (transaction control) runs
 * as it does without read_your_writes: it must not be wrapped in our
 * BEGIN ... COMMIT, where the server refuses its COMMIT (2D000, "invalid
 * transaction termination") and rolls everything back.  Each way of
 * asking for a write's position: the pool-wide mode, and
 * PGG_CALL_WANT_LSN with it off. */
Test(ryw, a_procedure_that_commits_runs_and_learns_its_position)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_node *pr = pgh_cluster_primary(c);
    const char *modes[] = {"read_your_writes=pool", "read_your_writes=off"};

    make_table(c, "pgg_ryw", "r", 0);
    cr_assert_eq(pgh_node_exec(pr, "CREATE OR REPLACE PROCEDURE pgg_ryw_two(a int) "
                                   "LANGUAGE plpgsql AS $$BEGIN "
                                   "INSERT INTO pgg_ryw VALUES (a, 'p'); COMMIT; "
                                   "INSERT INTO pgg_ryw VALUES (a + 1, 'p'); END$$"),
                 0, "%s", pgh_node_error(pr));
    for (int m = 0; m < 2; m++) {
        pgg_pool *p = pool_for(c, modes[m]);
        const pgg_call call = {.timeout_ms = 3000, .flags = m ? PGG_CALL_WANT_LSN : 0};
        char sql[160];
        pgg_info info;
        pgg_error e;

        snprintf(sql, sizeof sql, "CALL pgg_ryw_two(%d)", 10 * m + 1);
        PGresult *r = pgg_exec(p, PGG_WRITE, sql, &call, &info, &e);
        cr_assert_not_null(r, "%s: %s: %s", modes[m], pgg_err_name(e.code), e.message);
        cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s: %s", modes[m], sql,
                     PQresultErrorMessage(r));
        cr_expect_neq(info.lsn, 0, "%s: no position for a committed CALL", modes[m]);
        PQclear(r);
        snprintf(sql, sizeof sql,
                 "DO $$BEGIN INSERT INTO pgg_ryw VALUES (%d, 'd'); COMMIT; "
                 "INSERT INTO pgg_ryw VALUES (%d, 'd'); END$$",
                 10 * m + 3, 10 * m + 4);
        r = pgg_exec(p, PGG_WRITE, sql, &call, &info, &e);
        cr_assert_not_null(r, "%s: %s: %s", modes[m], pgg_err_name(e.code), e.message);
        cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: DO: %s", modes[m],
                     PQresultErrorMessage(r));
        cr_expect_neq(info.lsn, 0, "%s: no position for a committed DO", modes[m]);
        PQclear(r);
        r = pgg_exec(p, PGG_READ_PRIMARY, "SELECT count(*) FROM pgg_ryw", &call, &info, &e);
        cr_assert_not_null(r, "%s", e.message);
        cr_expect_str_eq(PQgetvalue(r, 0, 0), m ? "8" : "4", "%s", modes[m]);
        PQclear(r);
        if (m == 1)
            end_test(p, c);
        else
            pgg_pool_free(p);
    }
}
