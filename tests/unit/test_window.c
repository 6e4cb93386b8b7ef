#include "unit.h"

#include "pgguard.h"
#include "window.h"

#define S PGG_OUTCOME_SUCCESS
#define F PGG_OUTCOME_FAILURE
#define I PGG_OUTCOME_IGNORED

static void expect(const pgg_window *w, uint64_t calls, uint64_t failures,
                   uint64_t slow, uint64_t slow_failures, uint64_t ignored,
                   uint64_t cf, uint64_t cs)
{
    const pgg_window_stats *a = pgg__window_stats(w);

    cr_assert_eq(a->calls, calls, "calls %llu != %llu", (unsigned long long)a->calls,
                 (unsigned long long)calls);
    cr_assert_eq(a->failures, failures, "failures %llu != %llu",
                 (unsigned long long)a->failures, (unsigned long long)failures);
    cr_assert_eq(a->slow, slow, "slow %llu != %llu", (unsigned long long)a->slow,
                 (unsigned long long)slow);
    cr_assert_eq(a->slow_failures, slow_failures);
    cr_assert_eq(a->ignored, ignored, "ignored %llu != %llu",
                 (unsigned long long)a->ignored, (unsigned long long)ignored);
    cr_assert_eq(a->consecutive_failures, cf, "cf %llu != %llu",
                 (unsigned long long)a->consecutive_failures, (unsigned long long)cf);
    cr_assert_eq(a->consecutive_successes, cs, "cs %llu != %llu",
                 (unsigned long long)a->consecutive_successes, (unsigned long long)cs);
}

UTest(window, names_round_trip)
{
    pgg_window_type t = PGG_WINDOW_FIXED;

    cr_assert(pgg__window_type_parse("count", &t));
    cr_assert_eq(t, PGG_WINDOW_COUNT);
    cr_assert(pgg__window_type_parse("time", &t));
    cr_assert_eq(t, PGG_WINDOW_TIME);
    cr_assert(pgg__window_type_parse("fixed", &t));
    cr_assert_eq(t, PGG_WINDOW_FIXED);
    cr_assert_not(pgg__window_type_parse("sliding", &t));
    cr_assert_not(pgg__window_type_parse(NULL, &t));
    cr_assert_eq(t, PGG_WINDOW_FIXED);
    cr_assert_str_eq(pgg__window_type_name(PGG_WINDOW_TIME), "time");
    cr_assert_str_eq(pgg__window_type_name((pgg_window_type)42), "unknown");
}

UTest(window, init_rejects_bad_shapes)
{
    pgg_window w;

    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_COUNT, 0, 0, T0), PGG_EINVAL);
    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_COUNT, PGG_WINDOW_MAX_SIZE + 1, 0, T0),
                 PGG_EINVAL);
    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_TIME, 10, 0, T0), PGG_EINVAL);
    cr_assert_eq(pgg__window_init(&w, (pgg_window_type)9, 10, 1, T0), PGG_EINVAL);
    /* A fixed window has no size. */
    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_FIXED, 0, 0, T0), PGG_OK);
    pgg__window_destroy(&w);
    pgg__window_destroy(NULL);
}

UTest(window, count_evicts_the_oldest_call)
{
    pgg_window w;

    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_COUNT, 3, 0, T0), PGG_OK);
    pgg__window_record(&w, S, false, T0);
    pgg__window_record(&w, F, true, T0);
    pgg__window_record(&w, S, false, T0);
    expect(&w, 3, 1, 1, 1, 0, 0, 1);
    pgg__window_record(&w, F, false, T0); /* evicts S */
    expect(&w, 3, 2, 1, 1, 0, 1, 0);
    pgg__window_record(&w, F, false, T0); /* evicts the slow F */
    expect(&w, 3, 2, 0, 0, 0, 2, 0);
    pgg__window_record(&w, F, false, T0); /* evicts S: all failures */
    expect(&w, 3, 3, 0, 0, 0, 3, 0);
    pgg__window_record(&w, F, false, T0); /* a run never exceeds the window */
    expect(&w, 3, 3, 0, 0, 0, 3, 0);
    pgg__window_record(&w, S, true, T0);
    expect(&w, 3, 2, 1, 0, 0, 0, 1);
    pgg__window_destroy(&w);
}

UTest(window, count_of_one)
{
    pgg_window w;

    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_COUNT, 1, 0, T0), PGG_OK);
    pgg__window_record(&w, F, false, T0);
    expect(&w, 1, 1, 0, 0, 0, 1, 0);
    pgg__window_record(&w, S, false, T0);
    expect(&w, 1, 0, 0, 0, 0, 0, 1);
    pgg__window_destroy(&w);
}

UTest(window, ignored_is_no_call_and_leaves_with_the_next_call)
{
    pgg_window w;

    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_COUNT, 2, 0, T0), PGG_OK);
    pgg__window_record(&w, I, true, T0); /* slow is meaningless for ignored */
    pgg__window_record(&w, F, false, T0);
    pgg__window_record(&w, I, false, T0);
    pgg__window_record(&w, I, false, T0);
    pgg__window_record(&w, F, false, T0);
    /* Ignored outcomes neither break the run nor displace a call. */
    expect(&w, 2, 2, 0, 0, 3, 2, 0);
    pgg__window_record(&w, S, false, T0); /* evicts the first F and the I before it */
    expect(&w, 2, 1, 0, 0, 2, 0, 1);
    pgg__window_record(&w, S, false, T0); /* evicts the second F and the two I */
    expect(&w, 2, 0, 0, 0, 0, 0, 2);
    pgg__window_destroy(&w);
}

UTest(window, count_reset_forgets_everything)
{
    pgg_window w;
    int i;

    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_COUNT, 4, 0, T0), PGG_OK);
    for (i = 0; i < 6; i++)
        pgg__window_record(&w, F, true, T0);
    pgg__window_record(&w, I, false, T0);
    pgg__window_reset(&w, T0);
    expect(&w, 0, 0, 0, 0, 0, 0, 0);
    for (i = 0; i < 4; i++)
        pgg__window_record(&w, S, false, T0);
    expect(&w, 4, 0, 0, 0, 0, 0, 4);
    pgg__window_record(&w, S, false, T0);
    expect(&w, 4, 0, 0, 0, 0, 0, 4);
    pgg__window_destroy(&w);
}

UTest(window, time_bucket_leaves_exactly_at_the_window_edge)
{
    pgg_window w;

    /* 3 buckets of 100 ns, bucket 0 = [T0, T0+100). */
    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_TIME, 3, 100, T0), PGG_OK);
    pgg__window_record(&w, F, false, T0 + 99);   /* bucket 0 */
    pgg__window_record(&w, S, false, T0 + 100);  /* bucket 1 */
    pgg__window_record(&w, I, false, T0 + 250);  /* bucket 2 */
    expect(&w, 2, 1, 0, 0, 1, 0, 1);
    pgg__window_advance(&w, T0 + 299); /* still bucket 2 */
    expect(&w, 2, 1, 0, 0, 1, 0, 1);
    pgg__window_advance(&w, T0 + 300); /* bucket 3: bucket 0 is out */
    expect(&w, 1, 0, 0, 0, 1, 0, 1);
    pgg__window_advance(&w, T0 + 399);
    expect(&w, 1, 0, 0, 0, 1, 0, 1);
    pgg__window_advance(&w, T0 + 400); /* bucket 1 is out */
    expect(&w, 0, 0, 0, 0, 1, 0, 0);
    pgg__window_advance(&w, T0 + 500); /* bucket 2 is out */
    expect(&w, 0, 0, 0, 0, 0, 0, 0);
    pgg__window_destroy(&w);
}

UTest(window, time_runs_are_cut_when_their_calls_leave)
{
    pgg_window w;

    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_TIME, 2, MS(1), T0), PGG_OK);
    pgg__window_record(&w, F, false, T0);
    pgg__window_record(&w, F, false, T0 + MS(1));
    pgg__window_record(&w, F, false, T0 + MS(1));
    expect(&w, 3, 3, 0, 0, 0, 3, 0);
    pgg__window_advance(&w, T0 + MS(2)); /* the first failure leaves */
    expect(&w, 2, 2, 0, 0, 0, 2, 0);
    pgg__window_record(&w, F, false, T0 + MS(2));
    expect(&w, 3, 3, 0, 0, 0, 3, 0);
    pgg__window_destroy(&w);
}

UTest(window, time_late_arrival_counts_in_the_newest_bucket)
{
    pgg_window w;

    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_TIME, 2, 100, T0), PGG_OK);
    pgg__window_record(&w, S, false, T0 + 150);
    pgg__window_record(&w, F, false, T0 + 20); /* another thread read the clock earlier */
    pgg__window_record(&w, F, false, T0 - 1000);
    expect(&w, 3, 2, 0, 0, 0, 2, 0);
    pgg__window_advance(&w, T0 + 299);
    expect(&w, 3, 2, 0, 0, 0, 2, 0);
    pgg__window_advance(&w, T0 + 300); /* all three were in bucket 1 */
    expect(&w, 0, 0, 0, 0, 0, 0, 0);
    pgg__window_destroy(&w);
}

UTest(window, time_gap_longer_than_the_window_is_a_reset)
{
    pgg_window w;

    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_TIME, 10, MS(100), T0), PGG_OK);
    pgg__window_record(&w, F, true, T0);
    pgg__window_record(&w, F, true, T0 + MS(900));
    expect(&w, 2, 2, 2, 2, 0, 2, 0);
    pgg__window_record(&w, S, false, T0 + SEC(3600) + 7);
    expect(&w, 1, 0, 0, 0, 0, 0, 1);
    /* The slot that held bucket 0 is reused without leftovers. */
    pgg__window_record(&w, S, false, T0 + SEC(7200));
    expect(&w, 1, 0, 0, 0, 0, 0, 1);
    pgg__window_destroy(&w);
}

UTest(window, time_gaps_cost_nothing_per_missed_bucket)
{
    pgg_window w;
    const uint32_t size = PGG_WINDOW_MAX_SIZE;
    int64_t t = T0;
    int i;

    /*
     * Each record lands size-1 buckets after the previous one: a window
     * that walked the missed buckets would do 2^20 steps per record (about
     * 10^11 in all) and never finish; this one evicts one bucket each time.
     */
    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_TIME, size, 1, t), PGG_OK);
    for (i = 0; i < 100000; i++) {
        pgg__window_record(&w, i % 2 ? F : S, false, t);
        cr_assert_eq(pgg__window_stats(&w)->calls, i == 0 ? 1u : 2u);
        t += size - 1;
    }
    pgg__window_destroy(&w);
}

UTest(window, time_reset_ignores_stale_buckets)
{
    pgg_window w;
    int i;

    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_TIME, 4, 100, T0), PGG_OK);
    for (i = 0; i < 4; i++) /* a failure in every slot */
        pgg__window_record(&w, F, false, T0 + 100 * i);
    expect(&w, 4, 4, 0, 0, 0, 4, 0);
    pgg__window_reset(&w, T0 + 400);
    expect(&w, 0, 0, 0, 0, 0, 0, 0);
    for (i = 0; i < 4; i++) { /* the new buckets reuse every slot */
        pgg__window_record(&w, S, false, T0 + 400 + 100 * i);
        expect(&w, (uint64_t)i + 1, 0, 0, 0, 0, 0, (uint64_t)i + 1);
    }
    pgg__window_advance(&w, T0 + 800); /* the new epoch's first bucket leaves */
    expect(&w, 3, 0, 0, 0, 0, 0, 3);
    pgg__window_destroy(&w);
}

UTest(window, fixed_never_forgets_until_reset)
{
    pgg_window w;
    int i;

    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_FIXED, 0, 0, T0), PGG_OK);
    for (i = 0; i < 1000; i++)
        pgg__window_record(&w, i < 990 ? S : F, i == 0, T0 + SEC(i));
    pgg__window_record(&w, I, false, T0);
    pgg__window_advance(&w, T0 + SEC(100000));
    expect(&w, 1000, 10, 1, 0, 1, 10, 0);
    pgg__window_reset(&w, T0);
    expect(&w, 0, 0, 0, 0, 0, 0, 0);
    pgg__window_destroy(&w);
}
