#include <criterion/criterion.h>
#include <string.h>

#include "classify.h"

static pgg_verdict err(const char *sqlstate, pgg_intent intent, bool standby)
{
    return pgg__classify(NULL, PGG_END_RESULT, PGRES_FATAL_ERROR, sqlstate,
                         intent, standby);
}

Test(classify, success_results)
{
    pgg_verdict v = pgg__classify(NULL, PGG_END_RESULT, PGRES_TUPLES_OK, NULL,
                                  PGG_READ, false);
    cr_assert_eq(v.cls, PGG_CLASS_SUCCESS);
    cr_assert_eq(v.code, PGG_OK);
    v = pgg__classify(NULL, PGG_END_RESULT, PGRES_COMMAND_OK, NULL, PGG_WRITE, false);
    cr_assert_eq(v.cls, PGG_CLASS_SUCCESS);
    cr_assert_eq(v.code, PGG_OK);
}

Test(classify, connection_ends)
{
    pgg_attempt_end ends[] = {PGG_END_CONNECT_FAILED, PGG_END_NOT_SENT, PGG_END_LOST};
    for (size_t i = 0; i < sizeof ends / sizeof ends[0]; i++) {
        pgg_verdict v = pgg__classify(NULL, ends[i], PGRES_FATAL_ERROR, NULL,
                                      PGG_READ, false);
        cr_assert_eq(v.cls, PGG_CLASS_CONNECTION);
        cr_assert(v.retry);
        cr_assert_eq(v.code, PGG_ECONNECT);
    }
}

Test(classify, deadline_is_timeout)
{
    pgg_verdict v = pgg__classify(NULL, PGG_END_DEADLINE, PGRES_FATAL_ERROR,
                                  NULL, PGG_READ, false);
    cr_assert_eq(v.cls, PGG_CLASS_TIMEOUT);
    cr_assert_eq(v.code, PGG_ETIMEDOUT);
}

Test(classify, error_without_sqlstate_is_connection)
{
    pgg_verdict v = err(NULL, PGG_READ, false);
    cr_assert_eq(v.cls, PGG_CLASS_CONNECTION);
    v = err("", PGG_READ, false);
    cr_assert_eq(v.cls, PGG_CLASS_CONNECTION);
}

Test(classify, design_table)
{
    struct {
        const char *s;
        pgg_class cls;
        bool retry;
        int code;
    } rows[] = {
        {"08006", PGG_CLASS_CONNECTION, true, PGG_ECONNECT},
        {"08001", PGG_CLASS_CONNECTION, true, PGG_ECONNECT},
        {"57014", PGG_CLASS_TIMEOUT, true, PGG_ETIMEDOUT},
        {"57P01", PGG_CLASS_UNAVAILABLE, true, PGG_EUNAVAILABLE},
        {"57P02", PGG_CLASS_UNAVAILABLE, true, PGG_EUNAVAILABLE},
        {"57P03", PGG_CLASS_UNAVAILABLE, true, PGG_EUNAVAILABLE},
        {"53300", PGG_CLASS_UNAVAILABLE, true, PGG_EUNAVAILABLE},
        {"53100", PGG_CLASS_UNAVAILABLE, true, PGG_EUNAVAILABLE},
        {"58030", PGG_CLASS_UNAVAILABLE, true, PGG_EUNAVAILABLE},
        {"XX000", PGG_CLASS_UNAVAILABLE, true, PGG_EUNAVAILABLE},
        {"40001", PGG_CLASS_IGNORED, false, PGG_ESERVER},
        {"40P01", PGG_CLASS_IGNORED, false, PGG_ESERVER},
        {"22012", PGG_CLASS_SUCCESS, false, PGG_ESERVER},
        {"23505", PGG_CLASS_SUCCESS, false, PGG_ESERVER},
        {"42601", PGG_CLASS_SUCCESS, false, PGG_ESERVER},
        {"42P01", PGG_CLASS_SUCCESS, false, PGG_ESERVER},
        {"P0001", PGG_CLASS_SUCCESS, false, PGG_ESERVER},
        {"25006", PGG_CLASS_SUCCESS, false, PGG_ESERVER}, /* on a read */
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        pgg_verdict v = err(rows[i].s, PGG_READ, false);
        cr_assert_eq(v.cls, rows[i].cls, "%s: class %s", rows[i].s, pgg_class_name(v.cls));
        cr_assert_eq(v.retry, rows[i].retry, "%s: retry", rows[i].s);
        cr_assert_eq(v.code, rows[i].code, "%s: code %s", rows[i].s, pgg_err_name(v.code));
        cr_assert_not(v.reprobe_role);
    }
}

Test(classify, read_only_write_is_wrong_role)
{
    pgg_verdict v = err("25006", PGG_WRITE, false);
    cr_assert_eq(v.cls, PGG_CLASS_WRONG_ROLE);
    cr_assert(v.reprobe_role);
    cr_assert_not(v.retry);
    cr_assert_eq(v.code, PGG_EWRONGROLE);
}

Test(classify, standby_conflict_is_ignored_and_retried)
{
    pgg_verdict v = err("40001", PGG_READ, true);
    cr_assert_eq(v.cls, PGG_CLASS_IGNORED);
    cr_assert(v.retry);
    v = err("40001", PGG_WRITE, true);
    cr_assert_not(v.retry);
}

Test(classify, overrides_win_exact_over_class)
{
    pgg_classifier c;
    pgg_verdict v;

    pgg__classifier_init(&c);
    cr_assert_eq(pgg__classifier_override(&c, "23", PGG_CLASS_UNAVAILABLE, false, NULL), PGG_OK);
    cr_assert_eq(pgg__classifier_override(&c, "23505", PGG_CLASS_IGNORED, true, NULL), PGG_OK);
    v = pgg__classify(&c, PGG_END_RESULT, PGRES_FATAL_ERROR, "23505", PGG_READ, false);
    cr_assert_eq(v.cls, PGG_CLASS_IGNORED);
    cr_assert(v.retry);
    v = pgg__classify(&c, PGG_END_RESULT, PGRES_FATAL_ERROR, "23503", PGG_READ, false);
    cr_assert_eq(v.cls, PGG_CLASS_UNAVAILABLE);
    /* Replacing a rule keeps one entry. */
    cr_assert_eq(pgg__classifier_override(&c, "23505", PGG_CLASS_SUCCESS, false, NULL), PGG_OK);
    cr_assert_eq(c.n, 2);
    /* An override beats the built-in table, 25006 special case included. */
    cr_assert_eq(pgg__classifier_override(&c, "25006", PGG_CLASS_SUCCESS, false, NULL), PGG_OK);
    v = pgg__classify(&c, PGG_END_RESULT, PGRES_FATAL_ERROR, "25006", PGG_WRITE, false);
    cr_assert_eq(v.cls, PGG_CLASS_SUCCESS);
}

Test(classify, override_rejects_bad_input)
{
    pgg_classifier c;
    pgg_error e;

    pgg__classifier_init(&c);
    cr_assert_eq(pgg__classifier_override(&c, "2350", PGG_CLASS_SUCCESS, false, &e), PGG_ECONFIG);
    cr_assert(strstr(e.message, "2350"));
    cr_assert_eq(pgg__classifier_override(&c, "2350x", PGG_CLASS_SUCCESS, false, &e), PGG_ECONFIG);
    cr_assert_eq(pgg__classifier_override(&c, "23505", (pgg_class)99, false, &e), PGG_ECONFIG);
    cr_assert_eq(pgg__classifier_override(&c, NULL, PGG_CLASS_SUCCESS, false, &e), PGG_EINVAL);
    cr_assert_eq(pgg__classifier_override(NULL, "23505", PGG_CLASS_SUCCESS, false, &e), PGG_EINVAL);
}

Test(classify, override_table_is_bounded)
{
    pgg_classifier c;
    char code[6];

    pgg__classifier_init(&c);
    for (int i = 0; i < PGG_CLASSIFY_MAX_OVERRIDES; i++) {
        snprintf(code, sizeof code, "9%04d", i);
        cr_assert_eq(pgg__classifier_override(&c, code, PGG_CLASS_SUCCESS, false, NULL), PGG_OK);
    }
    cr_assert_eq(pgg__classifier_override(&c, "99999", PGG_CLASS_SUCCESS, false, NULL), PGG_ECONFIG);
}

Test(classify, class_names_round_trip)
{
    for (int i = 0; i < PGG_CLASS__COUNT; i++) {
        pgg_class c;
        cr_assert_eq(pgg__class_from_name(pgg_class_name((pgg_class)i), &c), PGG_OK);
        cr_assert_eq((int)c, i);
    }
    pgg_class c;
    cr_assert_eq(pgg__class_from_name("nonsense", &c), PGG_ECONFIG);
    cr_assert_str_eq(pgg_class_name((pgg_class)42), "unknown");
}

Test(classify, from_result)
{
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    pgg_verdict v = pgg__classify_result(NULL, PGG_END_RESULT, r, PGG_READ, false);
    cr_assert_eq(v.cls, PGG_CLASS_SUCCESS);
    PQclear(r);
    v = pgg__classify_result(NULL, PGG_END_LOST, NULL, PGG_READ, false);
    cr_assert_eq(v.cls, PGG_CLASS_CONNECTION);
}

Test(classify, our_own_expiry_and_refusals_are_not_the_hosts)
{
    pgg_verdict v = pgg__classify(NULL, PGG_END_EXPIRED, PGRES_FATAL_ERROR, NULL, PGG_WRITE, false);
    cr_assert_eq(v.cls, PGG_CLASS_IGNORED);
    cr_assert_eq(v.code, PGG_ETIMEDOUT);
    cr_assert_not(v.retry);
    v = pgg__classify(NULL, PGG_END_REFUSED, PGRES_FATAL_ERROR, NULL, PGG_READ, false);
    cr_assert_eq(v.cls, PGG_CLASS_IGNORED);
    cr_assert_eq(v.code, PGG_ESTATE);
    cr_assert_not(v.retry);
}

/* A refused startup, by the SQLSTATE its verbose message carried. */
Test(classify, startup_refusals)
{
    pgg_classifier c;
    pgg_error e;
    pgg_verdict v = pgg__classify_connect(NULL, NULL);

    cr_assert_eq(v.cls, PGG_CLASS_CONNECTION); /* refused TCP, a timeout */
    cr_assert(v.retry);
    v = pgg__classify_connect(NULL, "");
    cr_assert_eq(v.cls, PGG_CLASS_CONNECTION);
    /* A live server with no session for us now: unavailable to the
     * caller, retried elsewhere, nothing against the host's breaker. */
    const char *capacity[] = {"53300", "57P03"};
    for (size_t i = 0; i < sizeof capacity / sizeof capacity[0]; i++) {
        v = pgg__classify_connect(NULL, capacity[i]);
        cr_assert_eq(v.cls, PGG_CLASS_IGNORED, "%s", capacity[i]);
        cr_assert_eq(v.code, PGG_EUNAVAILABLE, "%s", capacity[i]);
        cr_assert(v.retry, "%s", capacity[i]);
    }
    cr_assert(pgg__capacity_refusal("53300"));
    cr_assert(pgg__capacity_refusal("57P03"));
    cr_assert_not(pgg__capacity_refusal("53200"));
    cr_assert_not(pgg__capacity_refusal(""));
    cr_assert_not(pgg__capacity_refusal(NULL));
    /* Other shortages and a shutdown under way count against the host. */
    v = pgg__classify_connect(NULL, "53200");
    cr_assert_eq(v.cls, PGG_CLASS_UNAVAILABLE);
    cr_assert_eq(v.code, PGG_EUNAVAILABLE);
    cr_assert(v.retry);
    v = pgg__classify_connect(NULL, "57P01");
    cr_assert_eq(v.cls, PGG_CLASS_UNAVAILABLE);
    const char *config[] = {"28P01", "28000", "3D000", "42501"};
    for (size_t i = 0; i < sizeof config / sizeof config[0]; i++) {
        v = pgg__classify_connect(NULL, config[i]);
        cr_assert_eq(v.cls, PGG_CLASS_IGNORED, "%s", config[i]);
        cr_assert_eq(v.code, PGG_ECONFIG, "%s", config[i]);
        cr_assert_not(v.retry, "%s", config[i]);
    }
    /* Anything else the server refused with counts as a connection failure. */
    v = pgg__classify_connect(NULL, "0A000");
    cr_assert_eq(v.cls, PGG_CLASS_CONNECTION);
    /* Overrides come first. */
    pgg__classifier_init(&c);
    cr_assert_eq(pgg__classifier_override(&c, "28P01", PGG_CLASS_CONNECTION, true, &e), PGG_OK);
    v = pgg__classify_connect(&c, "28P01");
    cr_assert_eq(v.cls, PGG_CLASS_CONNECTION);
    cr_assert(v.retry);
    cr_assert_eq(pgg__classifier_override(&c, "53300", PGG_CLASS_UNAVAILABLE, true, &e), PGG_OK);
    v = pgg__classify_connect(&c, "53300");
    cr_assert_eq(v.cls, PGG_CLASS_UNAVAILABLE);
}
