/* A standby held back from reads until it replays what it reported
 * (src/hold.h), and the router's one comparison on its lag word. */
#include <criterion/criterion.h>

#include "hold.h"

static bool lag_ok(pgg_hold *hd, int64_t limit)
{
    return atomic_load(&hd->lag) <= limit; /* pool_state.h's rule */
}

Test(hold, nothing_to_go_back_from_is_never_held)
{
    pgg_hold hd;

    pgg__hold_init(&hd);
    cr_assert_not(pgg__hold_set(&hd, false, "x"), "no position reported yet");
    cr_assert_not(pgg__hold_on(&hd));
    cr_assert(lag_ok(&hd, PGG_LAG_NO_LIMIT), "lag unknown: eligible");
    cr_assert_eq(pgg__hold_probed(&hd, 100, 0, 1), 0);
    cr_assert_not(pgg__hold_set(&hd, true, "x"), "a primary is never held");
    cr_assert_not(pgg__hold_on(&hd));
}

Test(hold, held_on_a_sign_until_a_probe_shows_the_position_again)
{
    pgg_hold hd;

    pgg__hold_init(&hd);
    pgg__hold_lag(&hd, 10);
    cr_assert_eq(pgg__hold_probed(&hd, 100, 0, 1), 0);
    cr_assert(pgg__hold_set(&hd, false, "sessions ended"));
    cr_assert_not(pgg__hold_set(&hd, false, "again"), "held already");
    cr_assert(pgg__hold_on(&hd));
    cr_assert_eq(atomic_load(&hd.until), 100);
    cr_assert_str_eq(atomic_load(&hd.why), "sessions ended");
    cr_assert_not(lag_ok(&hd, PGG_LAG_NO_LIMIT), "held: beyond any limit, none included");
    /* A measured lag does not end it. */
    pgg__hold_lag(&hd, 0);
    cr_assert(pgg__hold_on(&hd));
    cr_assert_eq(atomic_load(&hd.lag_measured), 0);
    /* Behind: still held; there: released, with the measured lag. */
    cr_assert_eq(pgg__hold_probed(&hd, 90, 0, 2), 0);
    cr_assert(pgg__hold_on(&hd));
    cr_assert_eq(pgg__hold_probed(&hd, 100, 0, 3), 1);
    cr_assert_not(pgg__hold_on(&hd));
    cr_assert_eq(atomic_load(&hd.lag), 0);
    cr_assert_eq(atomic_load(&hd.until), 0);
    cr_assert(lag_ok(&hd, 5));
}

Test(hold, a_probe_behind_what_was_reported_holds)
{
    pgg_hold hd;

    pgg__hold_init(&hd);
    cr_assert_eq(pgg__hold_probed(&hd, 100, 0, 1), 0);
    cr_assert_eq(pgg__hold_probed(&hd, 80, 0, 2), -1, "went back: newly held");
    cr_assert_eq(atomic_load(&hd.until), 100);
    cr_assert_eq(atomic_load(&hd.replay), 80);
    cr_assert_eq(pgg__hold_probed(&hd, 90, 0, 3), 0);
    cr_assert_eq(pgg__hold_probed(&hd, 101, 0, 4), 1);
    cr_assert_eq(atomic_load(&hd.high), 101);
}

Test(hold, what_answers_reported_before_the_probe_counts)
{
    pgg_hold hd;

    pgg__hold_init(&hd);
    cr_assert_eq(pgg__hold_probed(&hd, 100, 0, 1), 0);
    /* An answer saw 150 before the probe was sent; the probe says 120. */
    cr_assert_eq(pgg__hold_probed(&hd, 120, 150, 2), -1);
    cr_assert_eq(atomic_load(&hd.until), 150);
    cr_assert_eq(pgg__hold_probed(&hd, 150, 150, 3), 1);
}

Test(hold, a_primary_below_the_position_later_is_another_history)
{
    pgg_hold hd;

    pgg__hold_init(&hd);
    cr_assert_eq(pgg__hold_probed(&hd, 100, 0, 10), 0);
    cr_assert(pgg__hold_set(&hd, false, "x"));
    /* Probed before the standby's report: says nothing. */
    cr_assert_not(pgg__hold_primary_at(&hd, 50, 5));
    cr_assert(pgg__hold_on(&hd));
    /* Beyond it: the same history. */
    cr_assert_not(pgg__hold_primary_at(&hd, 200, 20));
    cr_assert(pgg__hold_on(&hd));
    /* Below it, later: forgotten and released. */
    cr_assert(pgg__hold_primary_at(&hd, 50, 20));
    cr_assert_not(pgg__hold_on(&hd));
    cr_assert_eq(atomic_load(&hd.high), 0);
    cr_assert_not(pgg__hold_set(&hd, false, "x"), "nothing reported in this history yet");
}

Test(hold, a_suspect_host_is_not_held_until_a_check_finds_it_behind)
{
    pgg_hold hd;

    pgg__hold_init(&hd);
    pgg__hold_suspect(&hd, false, PGG_SUSPECT_ENDED, "x");
    cr_assert_not(pgg__hold_suspected(&hd), "nothing reported yet: nothing to go back from");
    cr_assert_eq(pgg__hold_probed(&hd, 100, 0, 1), 0);
    pgg__hold_suspect(&hd, true, PGG_SUSPECT_DOWN, "x");
    cr_assert_not(pgg__hold_suspected(&hd), "a primary");
    pgg__hold_suspect(&hd, false, PGG_SUSPECT_ENDED, "sessions ended");
    cr_assert_eq(pgg__hold_suspected(&hd), PGG_SUSPECT_ENDED);
    pgg__hold_suspect(&hd, false, PGG_SUSPECT_DOWN, "unreachable");
    pgg__hold_suspect(&hd, false, PGG_SUSPECT_ENDED, "sessions ended");
    cr_assert_eq(pgg__hold_suspected(&hd), PGG_SUSPECT_DOWN, "the stronger sign stays");
    cr_assert_not(pgg__hold_on(&hd), "suspect: the router still sees it");
    cr_assert(lag_ok(&hd, PGG_LAG_NO_LIMIT));
    /* Checked and there: no longer suspect. */
    cr_assert_eq(pgg__hold_probed(&hd, 100, 0, 2), 0);
    cr_assert_not(pgg__hold_suspected(&hd));
    /* Checked and behind: held, no longer merely suspect. */
    pgg__hold_suspect(&hd, false, PGG_SUSPECT_ENDED, "sessions ended");
    cr_assert_eq(pgg__hold_probed(&hd, 60, 0, 3), -1);
    cr_assert(pgg__hold_on(&hd));
    cr_assert_eq(pgg__hold_probed(&hd, 100, 0, 4), 1);
    cr_assert_not(pgg__hold_suspected(&hd));
    cr_assert_not(pgg__hold_on(&hd));
}
