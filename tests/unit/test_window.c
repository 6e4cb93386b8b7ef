#include "unit.h"

#include <stdio.h>

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

/* ------------------------------------------------------------- requests */

/* gobreaker's Counts: requests, successes, failures, exclusions, runs. */
static void gcounts(pgg_window_stats a, uint64_t r, uint64_t ts, uint64_t tf,
                    uint64_t te, uint64_t cs, uint64_t cf)
{
    cr_assert(a.requests == r && a.calls - a.failures == ts && a.failures == tf &&
                  a.ignored == te && a.consecutive_successes == cs &&
                  a.consecutive_failures == cf,
              "Counts{%llu,%llu,%llu,%llu,cs %llu,cf %llu} != {%llu,%llu,%llu,%llu,cs %llu,cf %llu}",
              (unsigned long long)a.requests, (unsigned long long)(a.calls - a.failures),
              (unsigned long long)a.failures, (unsigned long long)a.ignored,
              (unsigned long long)a.consecutive_successes,
              (unsigned long long)a.consecutive_failures, (unsigned long long)r,
              (unsigned long long)ts, (unsigned long long)tf, (unsigned long long)te,
              (unsigned long long)cs, (unsigned long long)cf);
}

#define AGG(w) (*pgg__window_stats(w))

/*
 * Issue 14: requests spanned the whole closed period while the other counts
 * were windowed.  On every window type, requests is now the window's results
 * plus the calls in flight, and leaves with them.
 */
UTest(window, requests_describe_the_same_window_on_every_type)
{
    pgg_window w;
    int64_t m[40];
    int i;

    /* count: 4 calls; 34 admitted, 1 still running. */
    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_COUNT, 4, 0, T0), PGG_OK);
    for (i = 0; i < 34; i++)
        m[i] = pgg__window_admit(&w, T0);
    cr_assert_eq(AGG(&w).requests, 34, "in flight count as requests");
    for (i = 0; i < 33; i++)
        cr_assert(pgg__window_record_admitted(&w, m[i], i % 3 ? S : F, false, T0));
    cr_assert_eq(AGG(&w).calls, 4);
    cr_assert_eq(AGG(&w).requests, 5, "4 results in the window + 1 in flight");
    pgg__window_record_admitted(&w, m[33], I, false, T0);
    cr_assert_eq(AGG(&w).requests, 5, "4 calls + 1 ignored");
    pgg__window_reset(&w, T0);
    cr_assert_eq(AGG(&w).requests, 0);
    /* A result admitted before the reset does not leave the new in-flight count. */
    m[0] = pgg__window_admit(&w, T0);
    pgg__window_record_admitted(&w, m[1], F, false, T0);
    cr_assert_eq(AGG(&w).requests, 2);
    pgg__window_destroy(&w);

    /* time, by completion: results leave with their bucket. */
    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_TIME, 2, MS(100), T0), PGG_OK);
    m[0] = pgg__window_admit(&w, T0);
    m[1] = pgg__window_admit(&w, T0);
    pgg__window_record_admitted(&w, m[0], F, false, T0 + MS(10));
    cr_assert_eq(AGG(&w).requests, 2);
    pgg__window_advance(&w, T0 + MS(200));
    cr_assert_eq(AGG(&w).calls, 0);
    cr_assert_eq(AGG(&w).requests, 1, "the call still in flight");
    pgg__window_record_admitted(&w, m[1], S, false, T0 + MS(250));
    cr_assert_eq(AGG(&w).requests, 1);
    cr_assert_eq(AGG(&w).calls, 1);
    pgg__window_advance(&w, T0 + SEC(10)); /* a gap longer than the window */
    cr_assert_eq(AGG(&w).requests, 0);
    pgg__window_destroy(&w);

    /* fixed */
    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_FIXED, 0, 0, T0), PGG_OK);
    m[0] = pgg__window_admit(&w, T0);
    pgg__window_record(&w, S, false, T0); /* a result with no admission */
    cr_assert_eq(AGG(&w).requests, 2);
    pgg__window_record_admitted(&w, m[0], I, false, T0);
    cr_assert_eq(AGG(&w).requests, 2);
    pgg__window_destroy(&w);

    /* time, by admission: requests are admissions in the window's buckets. */
    cr_assert_eq(pgg__window_init_ex(&w, PGG_WINDOW_TIME, 2, MS(100),
                                     PGG_WINDOW_BY_ADMISSION, T0),
                 PGG_OK);
    m[0] = pgg__window_admit(&w, T0);
    m[1] = pgg__window_admit(&w, T0 + MS(100));
    cr_assert_eq(AGG(&w).requests, 2);
    pgg__window_advance(&w, T0 + MS(200));
    cr_assert_eq(AGG(&w).requests, 1, "the first admission's bucket left");
    pgg__window_destroy(&w);
}

/* ---------------------------------------- gobreaker v2 rollingCounts */

/*
 * gobreaker v2 counter_test.go TestRollingCountsMethods, on a window of 2
 * buckets that buckets by admission: rc.onRequest() is an admission in the
 * current bucket, onSuccess(age) a result admitted at that age, roll() one
 * bucket of time.
 */
UTest(window, gobreaker_rolling_counts_methods)
{
    pgg_window w;
    int64_t age0;

    cr_assert_eq(pgg__window_init_ex(&w, PGG_WINDOW_TIME, 2, SEC(1),
                                     PGG_WINDOW_BY_ADMISSION, T0),
                 PGG_OK);
    gcounts(AGG(&w), 0, 0, 0, 0, 0, 0);
    age0 = pgg__window_admit(&w, T0);
    gcounts(AGG(&w), 1, 0, 0, 0, 0, 0);
    gcounts(pgg__window_bucket_stats(&w, 0), 1, 0, 0, 0, 0, 0);
    cr_assert(pgg__window_record_admitted(&w, age0, S, false, T0));
    gcounts(AGG(&w), 1, 1, 0, 0, 1, 0);
    pgg__window_admit(&w, T0);
    cr_assert(pgg__window_record_admitted(&w, age0, F, false, T0));
    gcounts(AGG(&w), 2, 1, 1, 0, 0, 1);
    gcounts(pgg__window_bucket_stats(&w, 0), 2, 1, 1, 0, 0, 1);
    pgg__window_admit(&w, T0);
    cr_assert(pgg__window_record_admitted(&w, age0, S, false, T0));
    gcounts(AGG(&w), 3, 2, 1, 0, 1, 0);
    pgg__window_admit(&w, T0);
    gcounts(AGG(&w), 4, 2, 1, 0, 1, 0);
    cr_assert(pgg__window_record_admitted(&w, age0, I, false, T0));
    gcounts(AGG(&w), 4, 2, 1, 1, 1, 0);
    gcounts(pgg__window_bucket_stats(&w, 0), 4, 2, 1, 1, 1, 0);
    gcounts(pgg__window_bucket_stats(&w, 1), 0, 0, 0, 0, 0, 0);

    pgg__window_advance(&w, T0 + SEC(1)); /* roll */
    gcounts(AGG(&w), 4, 2, 1, 1, 1, 0);
    gcounts(pgg__window_bucket_stats(&w, 0), 0, 0, 0, 0, 0, 0);
    gcounts(pgg__window_bucket_stats(&w, 1), 4, 2, 1, 1, 1, 0);
    cr_assert_eq(pgg__window_admit(&w, T0 + SEC(1)), age0 + 1);
    gcounts(AGG(&w), 5, 2, 1, 1, 1, 0);
    gcounts(pgg__window_bucket_stats(&w, 0), 1, 0, 0, 0, 0, 0);
    cr_assert(pgg__window_record_admitted(&w, age0 + 1, S, false, T0 + SEC(1)));
    gcounts(AGG(&w), 5, 3, 1, 1, 2, 0);
    gcounts(pgg__window_bucket_stats(&w, 0), 1, 1, 0, 0, 1, 0);
    gcounts(pgg__window_bucket_stats(&w, 1), 4, 2, 1, 1, 1, 0);

    /* The run of 2 successes reached into the leaving bucket: 1 is left. */
    pgg__window_advance(&w, T0 + SEC(2));
    gcounts(AGG(&w), 1, 1, 0, 0, 1, 0);
    gcounts(pgg__window_bucket_stats(&w, 0), 0, 0, 0, 0, 0, 0);
    gcounts(pgg__window_bucket_stats(&w, 1), 1, 1, 0, 0, 1, 0);

    pgg__window_reset(&w, T0 + SEC(2)); /* clear */
    gcounts(AGG(&w), 0, 0, 0, 0, 0, 0);
    gcounts(pgg__window_bucket_stats(&w, 1), 0, 0, 0, 0, 0, 0);
    pgg__window_destroy(&w);
}

/*
 * gobreaker v2 counter_test.go TestRollingCountsBucketAt: late results land
 * in the bucket their call was admitted in, and runs are kept per bucket.
 * (Its bucketAt(2) and bucketAt(-2) wrap around 2 buckets: they are the
 * current one.)
 */
UTest(window, gobreaker_rolling_counts_bucket_at)
{
    pgg_window w;
    int64_t a0, a1;

    cr_assert_eq(pgg__window_init_ex(&w, PGG_WINDOW_TIME, 2, SEC(1),
                                     PGG_WINDOW_BY_ADMISSION, T0),
                 PGG_OK);
    a0 = pgg__window_admit(&w, T0);
    gcounts(pgg__window_bucket_stats(&w, 0), 1, 0, 0, 0, 0, 0);
    pgg__window_record_admitted(&w, a0, F, false, T0);
    gcounts(AGG(&w), 1, 0, 1, 0, 0, 1);
    pgg__window_admit(&w, T0);
    gcounts(pgg__window_bucket_stats(&w, 0), 2, 0, 1, 0, 0, 1);
    pgg__window_record_admitted(&w, a0, S, false, T0);
    gcounts(AGG(&w), 2, 1, 1, 0, 1, 0);
    pgg__window_admit(&w, T0);
    pgg__window_record_admitted(&w, a0, F, false, T0);
    gcounts(AGG(&w), 3, 1, 2, 0, 0, 1);
    gcounts(pgg__window_bucket_stats(&w, 0), 3, 1, 2, 0, 0, 1);

    pgg__window_advance(&w, T0 + SEC(1)); /* roll */
    gcounts(AGG(&w), 3, 1, 2, 0, 0, 1);
    gcounts(pgg__window_bucket_stats(&w, 0), 0, 0, 0, 0, 0, 0);
    gcounts(pgg__window_bucket_stats(&w, 1), 3, 1, 2, 0, 0, 1);
    a1 = pgg__window_admit(&w, T0 + SEC(1));
    gcounts(AGG(&w), 4, 1, 2, 0, 0, 1);
    gcounts(pgg__window_bucket_stats(&w, 0), 1, 0, 0, 0, 0, 0);
    pgg__window_record_admitted(&w, a1, F, false, T0 + SEC(1));
    gcounts(AGG(&w), 4, 1, 3, 0, 0, 2);
    gcounts(pgg__window_bucket_stats(&w, 0), 1, 0, 1, 0, 0, 1);
    pgg__window_admit(&w, T0 + SEC(1));
    gcounts(AGG(&w), 5, 1, 3, 0, 0, 2);
    gcounts(pgg__window_bucket_stats(&w, 0), 2, 0, 1, 0, 0, 1);
    /* An exclusion for a call admitted one bucket ago lands there. */
    cr_assert(pgg__window_record_admitted(&w, a0, I, false, T0 + SEC(1)));
    gcounts(AGG(&w), 5, 1, 3, 1, 0, 2);
    gcounts(pgg__window_bucket_stats(&w, 0), 2, 0, 1, 0, 0, 1);
    gcounts(pgg__window_bucket_stats(&w, 1), 3, 1, 2, 1, 0, 1);

    /* The run of 2 failures reached 1 into the leaving bucket. */
    pgg__window_advance(&w, T0 + SEC(2));
    gcounts(AGG(&w), 2, 0, 1, 0, 0, 1);
    gcounts(pgg__window_bucket_stats(&w, 0), 0, 0, 0, 0, 0, 0);
    gcounts(pgg__window_bucket_stats(&w, 1), 2, 0, 1, 0, 0, 1);
    /* A result admitted two buckets ago is not counted at all. */
    cr_assert_not(pgg__window_record_admitted(&w, a0, F, false, T0 + SEC(2)));
    gcounts(AGG(&w), 2, 0, 1, 0, 0, 1);
    pgg__window_destroy(&w);
}

/*
 * gobreaker v2 counter_test.go TestRollingCountsGrow, for the results a
 * breaker can produce (each one admitted in a bucket it reached): growing
 * by less than the window keeps the counts, by the window or more clears
 * them, and results admitted before a clear are not counted.
 */
UTest(window, gobreaker_rolling_counts_grow)
{
    pgg_window w;
    int64_t a0, a2;

    cr_assert_eq(pgg__window_init_ex(&w, PGG_WINDOW_TIME, 2, SEC(1),
                                     PGG_WINDOW_BY_ADMISSION, T0),
                 PGG_OK);
    a0 = pgg__window_admit(&w, T0);
    pgg__window_record_admitted(&w, a0, S, false, T0);
    pgg__window_admit(&w, T0);
    pgg__window_record_admitted(&w, a0, F, false, T0);
    pgg__window_admit(&w, T0);
    pgg__window_record_admitted(&w, a0, I, false, T0);
    pgg__window_advance(&w, T0); /* grow(0): no change */
    gcounts(AGG(&w), 3, 1, 1, 1, 0, 1);
    gcounts(pgg__window_bucket_stats(&w, 0), 3, 1, 1, 1, 0, 1);

    pgg__window_advance(&w, T0 + SEC(1)); /* grow(1) */
    gcounts(AGG(&w), 3, 1, 1, 1, 0, 1);
    gcounts(pgg__window_bucket_stats(&w, 0), 0, 0, 0, 0, 0, 0);
    gcounts(pgg__window_bucket_stats(&w, 1), 3, 1, 1, 1, 0, 1);
    pgg__window_advance(&w, T0); /* grow(0) after grow(1): no change */
    gcounts(AGG(&w), 3, 1, 1, 1, 0, 1);

    pgg__window_advance(&w, T0 + SEC(2)); /* grow(2): the window is clear */
    gcounts(AGG(&w), 0, 0, 0, 0, 0, 0);
    gcounts(pgg__window_bucket_stats(&w, 1), 0, 0, 0, 0, 0, 0);

    /* Three admissions at age 2 whose results carry age 0: not counted. */
    a2 = pgg__window_admit(&w, T0 + SEC(2));
    cr_assert_eq(a2, a0 + 2);
    pgg__window_admit(&w, T0 + SEC(2));
    pgg__window_admit(&w, T0 + SEC(2));
    cr_assert_not(pgg__window_record_admitted(&w, a0, S, false, T0 + SEC(2)));
    cr_assert_not(pgg__window_record_admitted(&w, a0, F, false, T0 + SEC(2)));
    cr_assert_not(pgg__window_record_admitted(&w, a0, I, false, T0 + SEC(2)));
    gcounts(AGG(&w), 3, 0, 0, 0, 0, 0);
    gcounts(pgg__window_bucket_stats(&w, 0), 3, 0, 0, 0, 0, 0);
    /* Results from the future (age 3) are not counted either. */
    cr_assert_not(pgg__window_record_admitted(&w, a0 + 3, S, false, T0 + SEC(2)));
    gcounts(AGG(&w), 3, 0, 0, 0, 0, 0);
    /* Age 2, the current one: counted. */
    pgg__window_record_admitted(&w, a2, S, false, T0 + SEC(2));
    pgg__window_record_admitted(&w, a2, F, false, T0 + SEC(2));
    pgg__window_record_admitted(&w, a2, I, false, T0 + SEC(2));
    gcounts(AGG(&w), 3, 1, 1, 1, 0, 1);

    pgg__window_advance(&w, T0 + SEC(4)); /* grow(4) */
    gcounts(AGG(&w), 0, 0, 0, 0, 0, 0);
    gcounts(pgg__window_bucket_stats(&w, 0), 0, 0, 0, 0, 0, 0);
    gcounts(pgg__window_bucket_stats(&w, 1), 0, 0, 0, 0, 0, 0);
    pgg__window_destroy(&w);
}

/*
 * resilience4j SlidingTimeWindowMetricsTest: buckets are epoch seconds of the
 * clock, not counted from the window's creation; a window of N seconds keeps
 * the current partial second and the N - 1 before it.
 */
UTest(window, aligned_buckets_are_clock_seconds)
{
    pgg_window w;

    /* Created 0.9 s into a second: that second ends 0.1 s later. */
    cr_assert_eq(pgg__window_init_ex(&w, PGG_WINDOW_TIME, 5, SEC(1),
                                     PGG_WINDOW_ALIGNED, T0 + MS(900)),
                 PGG_OK);
    pgg__window_record(&w, F, false, T0 + MS(900));
    pgg__window_record(&w, F, false, T0 + MS(999));
    pgg__window_record(&w, S, false, T0 + SEC(1)); /* the next second */
    expect(&w, 3, 2, 0, 0, 0, 0, 1);
    cr_assert_eq(pgg__window_bucket_stats(&w, 1).failures, 2);
    pgg__window_advance(&w, T0 + SEC(5) - 1); /* still the 5th second: all in */
    cr_assert_eq(AGG(&w).calls, 3);
    pgg__window_advance(&w, T0 + SEC(5)); /* second T0 leaves */
    expect(&w, 1, 0, 0, 0, 0, 0, 1);
    pgg__window_advance(&w, T0 + SEC(6));
    expect(&w, 0, 0, 0, 0, 0, 0, 0);
    /* Unaligned, the same records would all still be in one bucket. */
    pgg__window_destroy(&w);
    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_TIME, 5, SEC(1), T0 + MS(900)), PGG_OK);
    pgg__window_record(&w, F, false, T0 + MS(900));
    pgg__window_record(&w, S, false, T0 + SEC(1));
    cr_assert_eq(pgg__window_bucket_stats(&w, 0).calls, 2);
    pgg__window_destroy(&w);
}

/*
 * Bucketed by admission, results can arrive out of bucket order.  A run
 * then loses a leaving bucket's final run only when it spans every bucket,
 * gobreaker's rollingCounts.subtract rule: here 2 late failures of bucket
 * 0 arrived after bucket 1's success, so the run of 2 reads 0 once bucket
 * 0 leaves (a plain "a run never outlives its calls" would leave 1).
 */
UTest(window, admission_runs_leave_by_gobreaker_rule)
{
    pgg_window w;
    int64_t a0, a1;

    cr_assert_eq(pgg__window_init_ex(&w, PGG_WINDOW_TIME, 2, SEC(1),
                                     PGG_WINDOW_BY_ADMISSION, T0),
                 PGG_OK);
    a0 = pgg__window_admit(&w, T0);
    pgg__window_admit(&w, T0);
    a1 = pgg__window_admit(&w, T0 + SEC(1));
    pgg__window_record_admitted(&w, a1, S, false, T0 + SEC(1));
    pgg__window_record_admitted(&w, a0, F, false, T0 + SEC(1));
    pgg__window_record_admitted(&w, a0, F, false, T0 + SEC(1));
    gcounts(AGG(&w), 3, 1, 2, 0, 0, 2);
    gcounts(pgg__window_bucket_stats(&w, 1), 2, 0, 2, 0, 0, 2);
    pgg__window_advance(&w, T0 + SEC(2));
    gcounts(AGG(&w), 1, 1, 0, 0, 0, 0);
    pgg__window_destroy(&w);
}

/* -------------------------------------- resilience4j sliding windows */

/* calls, successes, failures of a window. */
static void csf(const pgg_window *w, uint64_t calls, uint64_t succ, uint64_t fail)
{
    const pgg_window_stats *a = pgg__window_stats(w);

    cr_assert(a->calls == calls && a->calls - a->failures == succ && a->failures == fail,
              "{%llu,%llu,%llu} != {%llu,%llu,%llu}", (unsigned long long)a->calls,
              (unsigned long long)(a->calls - a->failures), (unsigned long long)a->failures,
              (unsigned long long)calls, (unsigned long long)succ, (unsigned long long)fail);
}

/* resilience4j FixedSizeSlidingWindowMetricsTest.testSlidingWindowMetrics (size 4). */
UTest(window, resilience4j_fixed_size_sliding_window)
{
    pgg_window w;

    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_COUNT, 4, 0, T0), PGG_OK);
    pgg__window_record(&w, F, false, T0);
    csf(&w, 1, 0, 1);
    pgg__window_record(&w, S, false, T0);
    csf(&w, 2, 1, 1);
    pgg__window_record(&w, S, false, T0);
    csf(&w, 3, 2, 1);
    pgg__window_record(&w, S, false, T0);
    csf(&w, 4, 3, 1);
    pgg__window_record(&w, S, false, T0);
    csf(&w, 4, 4, 0);
    pgg__window_destroy(&w);
}

/* ... .testSlidingWindowMetricsWithSlowCalls (size 2). */
UTest(window, resilience4j_fixed_size_sliding_window_with_slow_calls)
{
    pgg_window w;

    cr_assert_eq(pgg__window_init(&w, PGG_WINDOW_COUNT, 2, 0, T0), PGG_OK);
    pgg__window_record(&w, F, true, T0);
    csf(&w, 1, 0, 1);
    cr_assert_eq(AGG(&w).slow_failures, 1);
    pgg__window_record(&w, S, true, T0);
    csf(&w, 2, 1, 1);
    cr_assert_eq(AGG(&w).slow - AGG(&w).slow_failures, 1);
    cr_assert_eq(AGG(&w).slow_failures, 1);
    pgg__window_record(&w, S, false, T0);
    csf(&w, 2, 2, 0);
    cr_assert_eq(AGG(&w).slow - AGG(&w).slow_failures, 1);
    cr_assert_eq(AGG(&w).slow_failures, 0);
    pgg__window_destroy(&w);
}

/*
 * resilience4j SlidingTimeWindowMetricsTest.testSlidingTimeWindowMetrics:
 * 5 one-second buckets on the clock's seconds (its MockClock starts on a
 * whole second, as T0 is).
 */
UTest(window, resilience4j_sliding_time_window)
{
    static const struct {
        int64_t advance;
        pgg_outcome o;
        uint64_t calls, succ, fail;
    } steps[] = {
        {0, F, 1, 0, 1},         {MS(100), S, 2, 1, 1},   {MS(100), S, 3, 2, 1},
        {SEC(1), S, 4, 3, 1},    {SEC(1), S, 5, 4, 1},    {SEC(1), F, 6, 4, 2},
        {SEC(1), S, 7, 5, 2},    {SEC(1), S, 5, 4, 1},    {SEC(1), S, 5, 4, 1},
        {SEC(5), S, 1, 1, 0},
    };
    pgg_window w;
    int64_t now = T0;
    size_t i;

    cr_assert_eq(pgg__window_init_ex(&w, PGG_WINDOW_TIME, 5, SEC(1), PGG_WINDOW_ALIGNED, now),
                 PGG_OK);
    for (i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        now += steps[i].advance;
        pgg__window_record(&w, steps[i].o, false, now);
        csf(&w, steps[i].calls, steps[i].succ, steps[i].fail);
    }
    pgg__window_destroy(&w);
}

/* ... .shouldClearSlidingTimeWindowMetrics */
UTest(window, resilience4j_clear_sliding_time_window)
{
    pgg_window w;
    int64_t now = T0;

    cr_assert_eq(pgg__window_init_ex(&w, PGG_WINDOW_TIME, 5, SEC(1), PGG_WINDOW_ALIGNED, now),
                 PGG_OK);
    pgg__window_record(&w, F, false, now);
    csf(&w, 1, 0, 1);
    now += MS(100);
    pgg__window_record(&w, S, false, now);
    csf(&w, 2, 1, 1);
    now += MS(700);
    pgg__window_record(&w, F, true, now);
    csf(&w, 3, 1, 2);
    cr_assert_eq(AGG(&w).slow_failures, 1);
    now += SEC(4);
    pgg__window_advance(&w, now);
    csf(&w, 3, 1, 2);
    now += SEC(1);
    pgg__window_advance(&w, now);
    csf(&w, 0, 0, 0);
    cr_assert_eq(AGG(&w).slow_failures, 0);
    now += MS(100);
    pgg__window_record(&w, S, false, now);
    csf(&w, 1, 1, 0);
    now += SEC(5);
    pgg__window_record(&w, S, false, now);
    csf(&w, 1, 1, 0);
    pgg__window_destroy(&w);
}

static uint64_t wrand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void same_stats(const pgg_window *a, const pgg_window *b, const char *when)
{
    const pgg_window_stats *x = pgg__window_stats(a), *y = pgg__window_stats(b);

    cr_assert_eq(x->calls, y->calls, "%s: calls %llu != %llu", when,
                 (unsigned long long)x->calls, (unsigned long long)y->calls);
    cr_assert_eq(x->failures, y->failures, "%s: failures", when);
    cr_assert_eq(x->slow, y->slow, "%s: slow", when);
    cr_assert_eq(x->slow_failures, y->slow_failures, "%s: slow failures", when);
    cr_assert_eq(x->ignored, y->ignored, "%s: ignored", when);
    cr_assert_eq(x->consecutive_failures, y->consecutive_failures, "%s: cf", when);
    cr_assert_eq(x->consecutive_successes, y->consecutive_successes, "%s: cs", when);
    cr_assert_eq(x->requests, y->requests, "%s: requests %llu != %llu", when,
                 (unsigned long long)x->requests, (unsigned long long)y->requests);
    cr_assert_eq(a->in_flight, b->in_flight, "%s: in flight", when);
    cr_assert_eq(a->pos, b->pos, "%s: pos", when);
}

/*
 * The breaker's fold applies a batch of successes at once: it must leave a
 * window exactly as the same successes recorded one by one, whatever came
 * before (failures, slow calls, ignored outcomes, calls in flight, marks
 * of an earlier window) and however many they are (the batch skips what a
 * long run only pushes through); and the window must go on the same.
 */
UTest(window, a_batch_of_successes_equals_them_one_by_one)
{
    static const uint32_t sizes[] = {1, 2, 7, 100};
    uint64_t seed = 88172645463325252u;

    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        for (int round = 0; round < 300; round++) {
            pgg_window one, batch;
            int64_t mark;
            uint32_t n;
            char when[64];

            cr_assert_eq(pgg__window_init(&one, PGG_WINDOW_COUNT, sizes[si], 0, T0), PGG_OK);
            cr_assert_eq(pgg__window_init(&batch, PGG_WINDOW_COUNT, sizes[si], 0, T0), PGG_OK);
            /* A random past, the same for both. */
            for (int k = (int)(wrand(&seed) % 250); k > 0; k--) {
                uint64_t r = wrand(&seed);
                pgg_outcome o = r % 3 == 0 ? F : r % 3 == 1 ? S : I;
                bool slow = (r >> 8) % 4 == 0;

                if ((r >> 12) % 5 == 0) {
                    pgg__window_admit(&one, T0);
                    pgg__window_admit(&batch, T0);
                } else {
                    pgg__window_record_admitted(&one, one.serial - (int64_t)((r >> 16) % 2),
                                                o, slow, T0);
                    pgg__window_record_admitted(&batch, batch.serial - (int64_t)((r >> 16) % 2),
                                                o, slow, T0);
                }
            }
            /* Calls in flight for the batch to take out, sometimes more
             * than the batch, sometimes none. */
            for (int k = (int)(wrand(&seed) % 40); k > 0; k--) {
                pgg__window_admit(&one, T0);
                pgg__window_admit(&batch, T0);
            }
            n = (uint32_t)(wrand(&seed) % (3 * sizes[si] + 20));
            mark = wrand(&seed) % 4 == 0 ? one.serial - 1 : one.serial;
            for (uint32_t k = 0; k < n; k++)
                pgg__window_record_admitted(&one, mark, S, false, T0);
            pgg__window_record_successes(&batch, mark, n, T0);
            snprintf(when, sizeof when, "size %u, round %d, %u successes", sizes[si],
                     round, n);
            same_stats(&one, &batch, when);
            /* And what follows pushes the same calls out of both. */
            for (uint32_t k = 0; k < 2 * sizes[si] + 3; k++) {
                uint64_t r = wrand(&seed);
                pgg_outcome o = r % 2 ? F : I;

                pgg__window_record_admitted(&one, one.serial, o, (r >> 4) % 2, T0);
                pgg__window_record_admitted(&batch, batch.serial, o, (r >> 4) % 2, T0);
                same_stats(&one, &batch, when);
            }
            pgg__window_destroy(&one);
            pgg__window_destroy(&batch);
        }
    }
}
