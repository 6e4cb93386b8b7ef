/*
 * auto_prepare against a real server: parameterised calls are prepared on
 * their connection at the configured use and give the same answers; a
 * connection never holds more than auto_prepare of them (the ones pushed
 * out are deallocated); a statement gone from the server (a lease's
 * DEALLOCATE ALL) or made stale by DDL does not fail the call.
 */
#include "pool_util.h"

/* The auto-prepared statements on the pool's connection (pool_max=1),
 * seen from inside it through a lease. */
static int auto_statements(pgg_pool *p)
{
    pgg_error e;
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 2000, NULL, &e);
    PGresult *r;
    int n;

    cr_assert_not_null(l, "acquire: %s", e.message);
    r = pgg_lease_exec(l, "SELECT count(*) FROM pg_prepared_statements "
                          "WHERE name LIKE 'pgg\\_auto\\_%'", 2000, &e);
    cr_assert_not_null(r, "%s", e.message);
    n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    pgg_release(l);
    return n;
}

static int lookup(pgg_pool *p, const char *sql, int id, const char *want)
{
    char v[16];
    const char *vals[1] = {v};
    pgg_error e;
    PGresult *r;
    int cols;

    snprintf(v, sizeof v, "%d", id);
    r = pgg_exec_params(p, PGG_WRITE, sql, 1, NULL, vals, NULL, NULL, NULL, NULL, &e);
    cr_assert_not_null(r, "%s: %s %s", sql, pgg_err_name(e.code), e.message);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
    cr_assert_eq(PQntuples(r), 1);
    cr_assert_str_eq(PQgetvalue(r, 0, 1), want);
    cols = PQnfields(r);
    PQclear(r);
    return cols;
}

Test(autoprep, repeated_calls_are_prepared_once_and_bounded)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p;
    char sql[128], want[16];

    make_table(c, "pgg_ap_t", "v", 100);
    p = pool_for(c, "pool_max=1 auto_prepare=2 auto_prepare_after=3 lease_reset=false");
    for (int i = 1; i <= 2; i++) {
        snprintf(want, sizeof want, "v%d", i);
        lookup(p, "SELECT id, v FROM pgg_ap_t WHERE id = $1", i, want);
    }
    cr_expect_eq(auto_statements(p), 0, "prepared before its third use");
    for (int i = 3; i <= 20; i++) {
        snprintf(want, sizeof want, "v%d", i);
        lookup(p, "SELECT id, v FROM pgg_ap_t WHERE id = $1", i, want);
    }
    cr_expect_eq(auto_statements(p), 1);
    /* Four more statements, each used enough to be prepared: never more
     * than two on the connection. */
    for (int k = 0; k < 4; k++) {
        snprintf(sql, sizeof sql, "SELECT id, v FROM pgg_ap_t WHERE id = $1 AND %d = %d", k, k);
        for (int i = 1; i <= 4; i++) {
            snprintf(want, sizeof want, "v%d", i);
            lookup(p, sql, i, want);
        }
        cr_expect_leq(auto_statements(p), 2, "statement %d: more than auto_prepare", k);
    }
    cr_expect_eq(auto_statements(p), 2);
    end_test(p, c);
}

Test(autoprep, a_statement_gone_or_stale_runs_plain)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p;
    pgg_lease *l;
    pgg_error e;
    PGresult *r;

    make_table(c, "pgg_ap_t", "v", 10);
    p = pool_for(c, "pool_max=1 auto_prepare=4 auto_prepare_after=1 lease_reset=false");
    lookup(p, "SELECT * FROM pgg_ap_t WHERE id = $1", 1, "v1");
    lookup(p, "SELECT * FROM pgg_ap_t WHERE id = $1", 2, "v2");
    cr_expect_eq(auto_statements(p), 1);

    /* Gone: a lease's own DEALLOCATE ALL (no reset on release). */
    l = pgg_acquire(p, PGG_WRITE, 2000, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    r = pgg_lease_exec(l, "DEALLOCATE ALL", 2000, &e);
    cr_assert_not_null(r, "%s", e.message);
    PQclear(r);
    pgg_release(l);
    cr_expect_eq(auto_statements(p), 0);
    lookup(p, "SELECT * FROM pgg_ap_t WHERE id = $1", 3, "v3");
    lookup(p, "SELECT * FROM pgg_ap_t WHERE id = $1", 4, "v4");
    cr_expect_eq(auto_statements(p), 1, "not prepared again after it was lost");

    /* Stale: a column added under a prepared SELECT * (0A000, "cached
     * plan must not change result type"): the call sees the new column. */
    cr_assert_eq(pgh_node_exec(pgh_cluster_primary(c),
                               "ALTER TABLE pgg_ap_t ADD COLUMN w int"),
                 0);
    cr_expect_eq(lookup(p, "SELECT * FROM pgg_ap_t WHERE id = $1", 5, "v5"), 3);
    cr_expect_eq(lookup(p, "SELECT * FROM pgg_ap_t WHERE id = $1", 6, "v6"), 3);
    cr_expect_eq(auto_statements(p), 1);
    end_test(p, c);
}

/* Our statement name already taken on the session (as behind a pooler in
 * transaction mode): the call runs all the same, and the connection stops
 * preparing. */
Test(autoprep, a_name_already_taken_turns_it_off_and_the_call_runs)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p;
    pgg_lease *l;
    pgg_error e;
    PGresult *r;

    make_table(c, "pgg_ap_t", "v", 10);
    p = pool_for(c, "pool_max=1 auto_prepare_after=1 lease_reset=false");
    /* The first name this connection would use, taken by someone else. */
    l = pgg_acquire(p, PGG_WRITE, 2000, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    r = pgg_lease_exec(l, "PREPARE pgg_auto_0 AS SELECT 1", 2000, &e);
    cr_assert_not_null(r, "%s", e.message);
    PQclear(r);
    pgg_release(l);
    for (int i = 1; i <= 5; i++) {
        char want[16];

        snprintf(want, sizeof want, "v%d", i);
        lookup(p, "SELECT id, v FROM pgg_ap_t WHERE id = $1", i, want);
    }
    cr_expect_eq(auto_statements(p), 1, "only the stranger's statement");
    end_test(p, c);
}

static PGresult *lease_ok(pgg_lease *l, const char *sql, const char *param)
{
    const char *vals[1] = {param};
    pgg_error e;
    PGresult *r = pgg_lease_exec_params(l, sql, param ? 1 : 0, NULL, param ? vals : NULL,
                                        NULL, NULL, 0, 2000, &e);

    cr_assert_not_null(r, "%s: %s %s", sql, pgg_err_name(e.code), e.message);
    cr_assert(PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK,
              "%s: %s", sql, PQresultErrorMessage(r));
    return r;
}

/* Inside a lease's transaction a statement the server refuses (0A000 after
 * DDL, 26000) aborts the transaction, so running it again plain cannot
 * help: auto_prepare keeps out of transaction blocks, and a transaction
 * on a connection with a stale statement commits as it would without
 * auto_prepare.  Outside one, a lease's statements are still prepared. */
Test(autoprep, a_transaction_on_a_lease_is_not_aborted_by_a_stale_statement)
{
    pgh_cluster *c = cluster_or_die(0);
    const char *sql = "SELECT * FROM pgg_ap_t WHERE id = $1";
    pgg_pool *p;
    pgg_lease *l;
    pgg_error e;
    PGresult *r;

    make_table(c, "pgg_ap_t", "v", 10);
    /* No reset: the lease gets the session with the statement. */
    p = pool_for(c, "pool_max=1 auto_prepare=4 auto_prepare_after=1 lease_reset=false");
    lookup(p, sql, 1, "v1");
    lookup(p, sql, 2, "v2");
    cr_expect_eq(auto_statements(p), 1);
    /* Another session's migration makes the prepared SELECT * stale. */
    cr_assert_eq(pgh_node_exec(pgh_cluster_primary(c), "ALTER TABLE pgg_ap_t ADD COLUMN w int"),
                 0);
    l = pgg_acquire(p, PGG_WRITE, 2000, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    PQclear(lease_ok(l, "BEGIN", NULL));
    r = lease_ok(l, sql, "3");
    cr_expect_eq(PQnfields(r), 3);
    cr_expect_str_eq(PQgetvalue(r, 0, 1), "v3");
    PQclear(r);
    PQclear(lease_ok(l, "UPDATE pgg_ap_t SET w = 7 WHERE id = $1", "3"));
    PQclear(lease_ok(l, "UPDATE pgg_ap_t SET w = 7 WHERE id = $1", "4"));
    r = lease_ok(l, "COMMIT", NULL);
    cr_expect_str_eq(PQcmdStatus(r), "COMMIT", "the transaction was rolled back");
    PQclear(r);
    /* Outside a transaction block the lease's statements are prepared. */
    for (int i = 0; i < 2; i++)
        PQclear(lease_ok(l, "SELECT id FROM pgg_ap_t WHERE w = $1", "7"));
    r = lease_ok(l, "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE "
                    "'%WHERE w = $1%'",
                 NULL);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    pgg_release(l);
    cr_expect_eq(lookup(p, sql, 5, "v5"), 3);
    end_test(p, c);
}

/* libpq's trace of the first connection the pool makes, into ud (a FILE). */
static int trace_first(PGconn *conn, int timeout_ms, void *ud, char *errbuf, size_t errlen)
{
    static atomic_flag traced = ATOMIC_FLAG_INIT;

    (void)timeout_ms;
    (void)errbuf;
    (void)errlen;
    if (!atomic_flag_test_and_set(&traced)) {
        PQtrace(conn, ud);
        PQsetTraceFlags(conn, PQTRACE_SUPPRESS_TIMESTAMPS);
    }
    return 0;
}

/*
 * The call that prepares its statement (the second use of its SQL on the
 * connection) sends the statement with the PREPARE: nothing comes from the
 * server between our Parse under the statement's name and its Execute.
 * A PREPARE of its own cost that call a round trip more than a plain
 * client's, on the connections that are new after a fault, when the
 * server is busiest (tests/bench/faults, max-connections).  The write runs
 * once per call, and the next calls run it by name.
 */
Test(autoprep, the_call_that_prepares_its_statement_sends_both_in_one_round_trip)
{
    pgh_cluster *c = cluster_or_die(0);
    FILE *trace = tmpfile();
    pgg_config *cfg = pgg_config_new();
    pgg_error e;
    pgg_pool *p;
    char line[1024], count[16];
    int parse = 0, execute = 0, answers_between = 0, n = 0;

    cr_assert_not_null(trace);
    cr_assert_not_null(cfg);
    cr_assert_eq(pgh_node_exec(pgh_cluster_primary(c),
                               "CREATE TABLE pgg_ap_w (id int PRIMARY KEY)"),
                 0);
    cr_assert_eq(pgg_config_set_servers(cfg, pgh_node_conninfo(pgh_cluster_primary(c)), &e),
                 PGG_OK, "%s", e.message);
    cr_assert_eq(pgg_config_parse(cfg, TEST_SETTINGS " pool_max=1 pool_min_idle=0", &e),
                 PGG_OK, "%s", e.message);
    cr_assert_eq(pgg_config_on_connect(cfg, NULL, trace_first, trace, &e), PGG_OK, "%s",
                 e.message);
    p = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    cr_assert_not_null(p, "%s", e.message);
    for (int i = 1; i <= 4; i++) {
        char v[16];
        const char *vals[1] = {v};
        PGresult *r;

        snprintf(v, sizeof v, "%d", i);
        r = pgg_exec_params(p, PGG_WRITE, "INSERT INTO pgg_ap_w (id) VALUES ($1)", 1, NULL,
                            vals, NULL, NULL, NULL, NULL, &e);
        cr_assert_not_null(r, "call %d: %s %s", i, pgg_err_name(e.code), e.message);
        cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "call %d: %s", i,
                     PQresultErrorMessage(r));
        PQclear(r);
    }
    cr_assert_eq(pgh_node_query_value(pgh_cluster_primary(c), "SELECT count(*) FROM pgg_ap_w",
                                      count, sizeof count),
                 0);
    cr_expect_str_eq(count, "4", "each write runs once");
    end_test(p, c);

    /* "F\t<len>\tParse\t \"pgg_auto_0\" ...", then Bind, Describe,
     * Execute, Sync; the server's messages are "B\t...". */
    rewind(trace);
    while (fgets(line, sizeof line, trace)) {
        n++;
        if (!parse && strncmp(line, "F\t", 2) == 0 && strstr(line, "\tParse\t") &&
            strstr(line, "\"pgg_auto_")) {
            parse = n;
        } else if (parse && !execute) {
            if (strncmp(line, "B\t", 2) == 0)
                answers_between++;
            else if (strncmp(line, "F\t", 2) == 0 && strstr(line, "\tExecute\t"))
                execute = n;
        }
    }
    fclose(trace);
    cr_assert(parse, "no Parse under an auto_prepare name in the trace (%d lines)", n);
    cr_assert(execute, "no Execute after the Parse in the trace");
    cr_expect_eq(answers_between, 0,
                 "%d messages from the server between the Parse (line %d) and the "
                 "statement's Execute (line %d): a round trip of its own",
                 answers_between, parse, execute);
}

/* The PREPARE sent with its statement fails (the table went between the
 * SQL's two uses): the call fails as it would have plain, the statement
 * never ran, and the connection, out of the pipeline, serves the next
 * calls. */
Test(autoprep, a_statement_that_fails_to_prepare_fails_as_plain_and_the_connection_goes_on)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p;
    pgg_error e;
    PGresult *r;
    const char *vals[1] = {"1"};
    static const char sql[] = "SELECT id, v FROM pgg_ap_t WHERE id = $1";

    make_table(c, "pgg_ap_t", "v", 10);
    p = pool_for(c, "pool_max=1 lease_reset=false");
    lookup(p, sql, 1, "v1");
    cr_assert_eq(pgh_node_exec(pgh_cluster_primary(c), "DROP TABLE pgg_ap_t"), 0);
    r = pgg_exec_params(p, PGG_WRITE, sql, 1, NULL, vals, NULL, NULL, NULL, NULL, &e);
    cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
    cr_expect_eq(e.code, PGG_ESERVER, "%s %s", pgg_err_name(e.code), e.message);
    cr_expect_str_eq(e.sqlstate, "42P01", "%s", e.message);
    PQclear(r);
    make_table(c, "pgg_ap_t", "v", 10);
    for (int i = 2; i <= 4; i++) {
        char want[16];

        snprintf(want, sizeof want, "v%d", i);
        lookup(p, sql, i, want);
    }
    cr_expect_eq(auto_statements(p), 1);
    cr_expect_eq(host_stats(p, 0).connects, 1, "the connection was not kept");
    end_test(p, c);
}
