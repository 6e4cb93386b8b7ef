/*
 * auto_prepare's per-connection cache (src/autoprep.c): when a call is
 * prepared, run by name or left alone, what is pushed out and deallocated.
 * The server side is tested in tests/integration/test_autoprep.c.
 */
#include "unit.h"

#include <stdio.h>
#include <string.h>

#include "autoprep.h"
#include "link.h"

static pgg_query params_query(const char *sql)
{
    static const Oid none[1] = {0};
    pgg_query q = {.sql = sql, .nparams = 0, .types = none};

    return q;
}

/* One use; returns the step, with the names it gave. */
static pgg_autoprep_step use(pgg_autoprep *ap, const pgg_query *q, int after,
                             char *name, char *evict)
{
    const char *n, *e;
    pgg_autoprep_step s = pgg__autoprep_lookup(ap, q, after, &n, &e);

    snprintf(name, 32, "%s", n ? n : "");
    snprintf(evict, 32, "%s", e ? e : "");
    if (s == PGG_AUTOPREP_PREPARE)
        pgg__autoprep_prepared(ap, true);
    return s;
}

UTest(autoprep, prepared_at_the_nth_use_then_run_by_name)
{
    pgg_autoprep *ap = pgg__autoprep_new(4);
    pgg_query q = params_query("SELECT $1::int");
    char name[32], first[32], evict[32];
    int entries, prepared;

    q.nparams = 1;
    q.types = NULL;
    cr_assert_eq(use(ap, &q, 3, name, evict), PGG_AUTOPREP_PLAIN);
    cr_assert_eq(use(ap, &q, 3, name, evict), PGG_AUTOPREP_PLAIN);
    cr_assert_eq(use(ap, &q, 3, first, evict), PGG_AUTOPREP_PREPARE);
    cr_assert_str_eq(evict, "");
    cr_assert_eq(use(ap, &q, 3, name, evict), PGG_AUTOPREP_RUN);
    cr_assert_str_eq(name, first);
    /* Same text in another buffer: the same statement. */
    {
        char copy[64];
        pgg_query q2 = q;

        strcpy(copy, q.sql);
        q2.sql = copy;
        cr_assert_eq(use(ap, &q2, 3, name, evict), PGG_AUTOPREP_RUN);
        cr_assert_str_eq(name, first);
    }
    pgg__autoprep_counts(ap, &entries, &prepared);
    cr_assert_eq(entries, 1);
    cr_assert_eq(prepared, 1);
    pgg__autoprep_free(ap);
}

UTest(autoprep, only_extended_protocol_calls_qualify)
{
    pgg_autoprep *ap = pgg__autoprep_new(4);
    pgg_query simple = {.sql = "SELECT 1"};
    pgg_query named = {.sql = "SELECT 1", .nparams = 0, .stmt_name = "mine"};
    char name[32], evict[32];

    for (int i = 0; i < 5; i++) {
        cr_assert_eq(use(ap, &simple, 1, name, evict), PGG_AUTOPREP_PLAIN);
        cr_assert_eq(use(ap, &named, 1, name, evict), PGG_AUTOPREP_PLAIN);
    }
    pgg__autoprep_free(ap);
}

UTest(autoprep, types_tell_statements_apart)
{
    pgg_autoprep *ap = pgg__autoprep_new(4);
    Oid int4[1] = {23}, text[1] = {25};
    pgg_query a = {.sql = "SELECT $1", .nparams = 1, .types = int4};
    pgg_query b = {.sql = "SELECT $1", .nparams = 1, .types = text};
    pgg_query c = {.sql = "SELECT $1", .nparams = 1, .types = NULL};
    char na[32], nb[32], nc[32], evict[32];

    cr_assert_eq(use(ap, &a, 1, na, evict), PGG_AUTOPREP_PREPARE);
    cr_assert_eq(use(ap, &b, 1, nb, evict), PGG_AUTOPREP_PREPARE);
    cr_assert_eq(use(ap, &c, 1, nc, evict), PGG_AUTOPREP_PREPARE);
    cr_assert_str_neq(na, nb);
    cr_assert_str_neq(na, nc);
    cr_assert_str_neq(nb, nc);
    pgg__autoprep_free(ap);
}

/*
 * The statement run last is found again by its whole text and types, not
 * its hash (lookup's shortcut for a caller that repeats one): a statement
 * of the same length, beginning and end, or the same text with other
 * types, right after it, is another.
 */
UTest(autoprep, the_statement_run_last_is_told_apart_by_its_whole_text)
{
    pgg_autoprep *ap = pgg__autoprep_new(4);
    Oid int4[1] = {23};
    pgg_query a = {.sql = "SELECT $1::int + 1 FROM pgg_items WHERE id > 0 AND true",
                   .nparams = 1};
    pgg_query b = {.sql = "SELECT $1::int + 2 FROM pgg_items WHERE id > 0 AND true",
                   .nparams = 1};
    pgg_query at = a;
    char na[32], nb[32], nt[32], n[32], evict[32];

    at.types = int4;
    cr_assert_eq(use(ap, &a, 1, na, evict), PGG_AUTOPREP_PREPARE);
    cr_assert_eq(use(ap, &a, 1, n, evict), PGG_AUTOPREP_RUN);
    cr_assert_str_eq(n, na);
    cr_assert_eq(use(ap, &b, 1, nb, evict), PGG_AUTOPREP_PREPARE);
    cr_assert_str_neq(nb, na);
    cr_assert_eq(use(ap, &b, 1, n, evict), PGG_AUTOPREP_RUN);
    cr_assert_str_eq(n, nb);
    cr_assert_eq(use(ap, &a, 1, n, evict), PGG_AUTOPREP_RUN);
    cr_assert_str_eq(n, na);
    cr_assert_eq(use(ap, &at, 1, nt, evict), PGG_AUTOPREP_PREPARE);
    cr_assert_str_neq(nt, na);
    cr_assert_str_neq(nt, nb);
    cr_assert_eq(use(ap, &a, 1, n, evict), PGG_AUTOPREP_RUN);
    cr_assert_str_eq(n, na);
    /* The shortcut alone (auto_prepare's exec asks it first): the one run
     * last only, by its text and types; nothing once turned off. */
    cr_assert_str_eq(pgg__autoprep_again(ap, &a), na);
    cr_assert_null(pgg__autoprep_again(ap, &b));
    cr_assert_null(pgg__autoprep_again(ap, &at));
    cr_assert_eq(use(ap, &at, 1, n, evict), PGG_AUTOPREP_RUN);
    cr_assert_str_eq(pgg__autoprep_again(ap, &at), nt);
    cr_assert_null(pgg__autoprep_again(ap, &a));
    pgg__autoprep_stop(ap);
    cr_assert_null(pgg__autoprep_again(ap, &at));
    pgg__autoprep_free(ap);
}

/*
 * At most `capacity` prepared: the next promotion pushes out the least
 * recently used one, named for deallocation.  One-off SQL never does.
 */
UTest(autoprep, least_recently_used_goes_and_one_offs_push_out_nothing_prepared)
{
    pgg_autoprep *ap = pgg__autoprep_new(3);
    char sql[8][32], name[8][32], n[32], evict[32];
    pgg_query q[8];
    int entries, prepared;

    for (int i = 0; i < 8; i++) {
        snprintf(sql[i], sizeof sql[i], "SELECT %d + $1", i);
        q[i] = (pgg_query){.sql = sql[i], .nparams = 1};
    }
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(use(ap, &q[i], 2, n, evict), PGG_AUTOPREP_PLAIN);
        cr_assert_eq(use(ap, &q[i], 2, name[i], evict), PGG_AUTOPREP_PREPARE);
        cr_assert_str_eq(evict, "");
    }
    /* 0 is used again: 1 is now the least recently used. */
    cr_assert_eq(use(ap, &q[0], 2, n, evict), PGG_AUTOPREP_RUN);
    /* A hundred one-off statements: tracked, none prepared, none evicted. */
    for (int i = 0; i < 100; i++) {
        char once[32];
        pgg_query o = {.sql = once, .nparams = 1};

        snprintf(once, sizeof once, "SELECT %d - $1", i);
        cr_assert_eq(use(ap, &o, 2, n, evict), PGG_AUTOPREP_PLAIN);
        cr_assert_str_eq(evict, "");
    }
    pgg__autoprep_counts(ap, &entries, &prepared);
    cr_assert_eq(prepared, 3);
    cr_assert_leq(entries, 6);
    /* 2, 1 and 0 are still prepared. */
    cr_assert_eq(use(ap, &q[2], 2, n, evict), PGG_AUTOPREP_RUN);
    cr_assert_eq(use(ap, &q[1], 2, n, evict), PGG_AUTOPREP_RUN);
    cr_assert_eq(use(ap, &q[0], 2, n, evict), PGG_AUTOPREP_RUN);
    /* A fourth promoted: the least recently used prepared one (2) goes. */
    cr_assert_eq(use(ap, &q[3], 2, n, evict), PGG_AUTOPREP_PLAIN);
    cr_assert_eq(use(ap, &q[3], 2, name[3], evict), PGG_AUTOPREP_PREPARE);
    cr_assert_str_eq(evict, name[2]);
    pgg__autoprep_counts(ap, &entries, &prepared);
    cr_assert_eq(prepared, 3);
    /* 2 starts over: tracked again, prepared under a new name. */
    cr_assert_eq(use(ap, &q[2], 2, n, evict), PGG_AUTOPREP_PLAIN);
    cr_assert_eq(use(ap, &q[2], 2, n, evict), PGG_AUTOPREP_PREPARE);
    cr_assert_str_neq(n, name[2]);
    pgg__autoprep_free(ap);
}

UTest(autoprep, a_failed_prepare_counts_again_and_clear_forgets_everything)
{
    pgg_autoprep *ap = pgg__autoprep_new(2);
    pgg_query q = {.sql = "SELEC $1", .nparams = 1};
    const char *n, *e;
    char name[32], evict[32];
    int entries, prepared;

    cr_assert_eq(pgg__autoprep_lookup(ap, &q, 1, &n, &e), PGG_AUTOPREP_PREPARE);
    pgg__autoprep_prepared(ap, false);
    pgg__autoprep_counts(ap, &entries, &prepared);
    cr_assert_eq(prepared, 0);
    cr_assert_eq(pgg__autoprep_lookup(ap, &q, 2, &n, &e), PGG_AUTOPREP_PLAIN);
    cr_assert_eq(use(ap, &q, 2, name, evict), PGG_AUTOPREP_PREPARE);
    pgg__autoprep_counts(ap, &entries, &prepared);
    cr_assert_eq(prepared, 1);
    /* RUN, then forgotten (a stale plan): counted from zero again. */
    cr_assert_eq(use(ap, &q, 2, name, evict), PGG_AUTOPREP_RUN);
    pgg__autoprep_forget_last(ap);
    pgg__autoprep_counts(ap, &entries, &prepared);
    cr_assert_eq(entries, 0);
    cr_assert_eq(use(ap, &q, 2, name, evict), PGG_AUTOPREP_PLAIN);
    pgg__autoprep_clear(ap);
    pgg__autoprep_counts(ap, &entries, &prepared);
    cr_assert_eq(entries, 0);
    cr_assert_eq(prepared, 0);
    pgg__autoprep_free(ap);
    pgg__autoprep_free(NULL);
    cr_assert_null(pgg__autoprep_new(0));
}
