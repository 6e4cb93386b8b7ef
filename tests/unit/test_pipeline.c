/*
 * Which statements may share a pipelined connection (pipeline.h): one
 * statement that leaves nothing behind its own implicit transaction.
 */
#include <criterion/criterion.h>

#include "pipeline.h"

Test(pipeline_sql, plain_statements_are_pipelined)
{
    static const char *const ok[] = {
        "SELECT 1",
        "select 1;",
        "  \n\t-- a comment\nSELECT 1",
        "/* c */ (SELECT 1) UNION (SELECT 2)",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "VALUES (1), (2)",
        "TABLE t",
        "INSERT INTO t VALUES (1) RETURNING id",
        "UPDATE t SET v = 1",
        "DELETE FROM t",
        "SELECT 1; -- done",
        "SELECT 1;  /* done */  ",
        "/* a /* b */ c */ SELECT 1",
        "SELECT 1; /* a /* b */ c */",
    };

    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        cr_expect(pgg__pipe_sql_ok(ok[i], true), "refused: %s", ok[i]);
}

Test(pipeline_sql, session_and_transaction_statements_are_not)
{
    /* Each would reach the statements queued behind it on the connection,
     * or cannot run in a pipeline at all. */
    static const char *const no[] = {
        "BEGIN", "begin; SELECT 1", "START TRANSACTION", "COMMIT", "ROLLBACK",
        "SAVEPOINT a", "SET search_path = x", "SET LOCAL x = 1", "RESET ALL",
        "COPY t FROM STDIN", "VACUUM", "LISTEN c", "DECLARE c CURSOR FOR SELECT 1",
        "PREPARE p AS SELECT 1", "DISCARD ALL", "LOCK t", "EXPLAIN SELECT 1",
        "CREATE TABLE t (id int)", "selectx", "select_1", "", "   ", "-- only a comment",
        "/* unterminated", NULL,
        /* PostgreSQL's block comments nest: the statement is BEGIN. */
        "/* a /* b */ SELECT */ BEGIN", "/* /* */ SELECT 1 */ COMMIT",
        "/* a /* b */ SELECT 1", /* unterminated at the outer level */
    };

    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        cr_expect(!pgg__pipe_sql_ok(no[i], true), "accepted: %s", no[i] ? no[i] : "(null)");
}

Test(pipeline_sql, several_statements_only_outside_the_simple_protocol)
{
    /* The simple protocol would run both; the pipeline's extended protocol
     * refuses the string at Parse, as pgg_exec_params always has. */
    cr_expect(!pgg__pipe_sql_ok("SELECT 1; SELECT 2", true));
    cr_expect(!pgg__pipe_sql_ok("INSERT INTO t VALUES (1);DELETE FROM t", true));
    cr_expect(!pgg__pipe_sql_ok("SELECT 1;;", true));
    /* A ';' in a literal costs the call the pipeline, never its meaning. */
    cr_expect(!pgg__pipe_sql_ok("SELECT ';'", true));
    cr_expect(pgg__pipe_sql_ok("SELECT 1; SELECT 2", false));
    cr_expect(pgg__pipe_sql_ok("SELECT ';'", false));
    cr_expect(!pgg__pipe_sql_ok("BEGIN", false));
}
