/*
 * The one builder of a parameterized query (pool_state.h,
 * pgg__query_params), used by pgg_exec_params and pgg_async_exec_params:
 * the caller's arguments as they are, its bad ones refused in its own
 * name, and no parameters still on the extended protocol.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "pool_state.h"

Test(query, the_callers_arguments_are_the_query)
{
    const Oid types[2] = {23, 25};
    const char *const values[2] = {"1", "x"};
    const int lengths[2] = {1, 1}, formats[2] = {0, 0};
    pgg_query q;
    pgg_error e;

    memset(&q, 0xa5, sizeof q);
    cr_assert_eq(pgg__query_params(&q, "f", "SELECT $1, $2", 2, types, values, lengths,
                                   formats, 1, &e),
                 PGG_OK);
    cr_expect_str_eq(q.sql, "SELECT $1, $2");
    cr_expect_eq(q.nparams, 2);
    cr_expect_eq(q.types, types);
    cr_expect_eq(q.values, values);
    cr_expect_eq(q.lengths, lengths);
    cr_expect_eq(q.formats, formats);
    cr_expect_eq(q.result_format, 1);
    /* Nothing else of a registered statement or a visibility need. */
    cr_expect_null(q.stmt);
    cr_expect_null(q.stmt_name);
    cr_expect_null(q.vis);
    cr_expect_not(q.prepare);
}

Test(query, no_parameters_still_go_by_the_extended_protocol)
{
    pgg_query q;
    pgg_error e;

    cr_assert_eq(pgg__query_params(&q, "f", "SELECT 1", 0, NULL, NULL, NULL, NULL, 0, &e),
                 PGG_OK);
    /* link.c sends a query with types by PQsendQueryParams. */
    cr_expect_not_null(q.types);
    cr_expect_eq(q.nparams, 0);
}

Test(query, bad_counts_are_refused_in_the_callers_name)
{
    const char *const values[1] = {"1"};
    const Oid types[1] = {23};
    pgg_query q;
    pgg_error e;

    cr_expect_eq(pgg__query_params(&q, "pgg_x_params", "SELECT $1", -1, NULL, values, NULL,
                                   NULL, 0, &e),
                 PGG_EINVAL);
    cr_expect_eq(e.code, PGG_EINVAL);
    cr_expect_str_eq(e.message, "pgg_x_params: -1 parameters but no values");
    cr_expect_eq(pgg__query_params(&q, "pgg_y", "SELECT $1", 1, NULL, NULL, NULL, NULL, 0, &e),
                 PGG_EINVAL);
    cr_expect_str_eq(e.message, "pgg_y: 1 parameters but no values");
    /* Types alone: values all NULL, as libpq allows. */
    cr_expect_eq(pgg__query_params(&q, "f", "SELECT $1", 1, types, NULL, NULL, NULL, 0, &e),
                 PGG_OK);
    /* No error struct: the code alone. */
    cr_expect_eq(pgg__query_params(&q, "f", "SELECT $1", -2, NULL, NULL, NULL, NULL, 0, NULL),
                 PGG_EINVAL);
}
