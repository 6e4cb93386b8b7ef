/*
 * The pool's registry of prepared statements (prepared.h): registering a
 * name again with the same statement is a no-op, with another one an
 * error.
 */
#include <criterion/criterion.h>
#include <string.h>

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

/* A thread remembers the statement it found last (prepared.c): that memo
 * must never answer for another registry, for a name it does not carry,
 * or for a registry whose table a registration replaced, nor outlive a
 * registry freed and another made in its place. */
Test(prepared, the_last_statement_found_answers_only_for_its_own_table)
{
    pgg_prepared a, b;
    pgg_error e;
    const pgg_stmt *sa, *sb;
    char name[8] = "same";

    pgg__prepared_init(&a);
    pgg__prepared_init(&b);
    cr_assert_eq(pgg__prepared_add(&a, "same", "SELECT 'a'", 0, NULL, &e), PGG_OK);
    cr_assert_eq(pgg__prepared_add(&b, "same", "SELECT 'b'", 0, NULL, &e), PGG_OK);

    sa = pgg__prepared_find(&a, name);
    cr_assert_not_null(sa);
    cr_expect_str_eq(sa->sql, "SELECT 'a'");
    /* The same name, just found in a: b's own statement. */
    sb = pgg__prepared_find(&b, name);
    cr_assert_not_null(sb);
    cr_expect_str_eq(sb->sql, "SELECT 'b'");
    cr_expect_eq(pgg__prepared_find(&a, name), sa);

    /* The same buffer, another name: not the statement found last. */
    cr_assert_eq(pgg__prepared_add(&a, "other", "SELECT 'o'", 0, NULL, &e), PGG_OK);
    strcpy(name, "other");
    cr_expect_str_eq(pgg__prepared_find(&a, name)->sql, "SELECT 'o'");
    strcpy(name, "nope");
    cr_expect_null(pgg__prepared_find(&a, name));
    strcpy(name, "same");
    cr_expect_eq(pgg__prepared_find(&a, name), sa); /* after a registration */

    /* A registry freed and another made in the same place: its own
     * statements only. */
    pgg__prepared_destroy(&b);
    pgg__prepared_init(&b);
    cr_expect_null(pgg__prepared_find(&b, name));
    cr_assert_eq(pgg__prepared_add(&b, "same", "SELECT 'c'", 0, NULL, &e), PGG_OK);
    cr_expect_str_eq(pgg__prepared_find(&b, name)->sql, "SELECT 'c'");
    cr_expect_str_eq(pgg__prepared_find(&a, name)->sql, "SELECT 'a'");

    pgg__prepared_destroy(&a);
    pgg__prepared_destroy(&b);
}
