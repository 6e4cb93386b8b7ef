/*
 * The pool's registry of prepared statements (prepared.h): registering a
 * name again with the same statement is a no-op, with another one an
 * error.
 */
#include <criterion/criterion.h>

#include "prepared.h"

Test(prepared, the_same_statement_again_is_a_no_op)
{
    pgg_prepared p;
    pgg_error e;
    const Oid int4 = 23, text = 25;

    pgg__prepared_init(&p);
    cr_assert_eq(pgg__prepared_add(&p, "one", "SELECT 1", 0, NULL, &e), PGG_OK);
    cr_expect_eq(pgg__prepared_add(&p, "one", "SELECT 1", 0, NULL, &e), PGG_OK);
    /* No parameters: a types array, if one is passed, holds nothing. */
    cr_expect_eq(pgg__prepared_add(&p, "one", "SELECT 1", 0, &int4, &e), PGG_OK, "%s",
                 e.message);
    cr_assert_eq(pgg__prepared_add(&p, "none", "SELECT 2", 0, &int4, &e), PGG_OK);
    cr_expect_eq(pgg__prepared_add(&p, "none", "SELECT 2", 0, NULL, &e), PGG_OK, "%s",
                 e.message);
    cr_expect_eq(pgg__prepared_add(&p, "none", "SELECT 2", 0, &int4, &e), PGG_OK, "%s",
                 e.message);

    cr_assert_eq(pgg__prepared_add(&p, "typed", "SELECT $1", 1, &int4, &e), PGG_OK);
    cr_expect_eq(pgg__prepared_add(&p, "typed", "SELECT $1", 1, &int4, &e), PGG_OK);
    /* Another statement under a name already taken. */
    cr_expect_eq(pgg__prepared_add(&p, "typed", "SELECT $1", 1, &text, &e), PGG_EINVAL);
    cr_expect_eq(pgg__prepared_add(&p, "typed", "SELECT $1", 1, NULL, &e), PGG_EINVAL);
    cr_expect_eq(pgg__prepared_add(&p, "one", "SELECT 2", 0, NULL, &e), PGG_EINVAL);
    cr_expect_not_null(pgg__prepared_find(&p, "one"));
    cr_expect_null(pgg__prepared_find(&p, "two"));
    pgg__prepared_destroy(&p);
}
