#include "unit.h"

#include <math.h>
#include <string.h>

#include "breaker.h"

#define S PGG_OUTCOME_SUCCESS
#define F PGG_OUTCOME_FAILURE
#define I PGG_OUTCOME_IGNORED

/* Each test runs in its own process: one breaker and one "now" per test. */
static pgg_breaker B;
static int64_t NOW;

typedef struct evlog {
    int n;
    pgg_breaker_event ev[128];
} evlog;

static evlog LOG;

static void log_event(void *ud, pgg_breaker_state from, pgg_breaker_state to,
                      pgg_breaker_reason reason)
{
    evlog *l = ud;

    if (l->n < 128) {
        l->ev[l->n].from = from;
        l->ev[l->n].to = to;
        l->ev[l->n].reason = reason;
    }
    l->n++;
}

/* The defaults, without jitter, without the rules a test does not study. */
static pgg_breaker_config cfg_plain(void)
{
    pgg_breaker_config c;

    pgg__breaker_config_defaults(&c);
    c.failure_rate = 0;
    c.slow_call_rate = 0;
    c.consecutive_failures = 0;
    c.open_jitter = 0;
    c.seed = 42;
    return c;
}

static void start(const pgg_breaker_config *c)
{
    pgg_error err;

    NOW = T0;
    memset(&LOG, 0, sizeof LOG);
    cr_assert_eq(pgg__breaker_init(&B, c, NOW, &err), PGG_OK, "%s", err.message);
    cr_assert_eq(pgg__breaker_listen(&B, log_event, &LOG), PGG_OK);
}

static void stop(void)
{
    pgg__breaker_destroy(&B);
}

static bool call_d(pgg_outcome o, int64_t duration)
{
    pgg_ticket t;

    if (!pgg__breaker_allow(&B, NOW, &t))
        return false;
    pgg__breaker_record(&B, t, o, duration, NOW);
    return true;
}

static bool call(pgg_outcome o)
{
    return call_d(o, 0);
}

static void calls(pgg_outcome o, int n)
{
    int i;

    for (i = 0; i < n; i++)
        cr_assert(call(o), "call %d of %d refused", i + 1, n);
}

static pgg_breaker_state state(void)
{
    return pgg__breaker_state(&B);
}

static pgg_breaker_stats stats(void)
{
    pgg_breaker_stats s;

    pgg__breaker_stats(&B, NOW, &s);
    return s;
}

static void expect_event(int i, pgg_breaker_state from, pgg_breaker_state to,
                         pgg_breaker_reason reason)
{
    cr_assert_gt(LOG.n, i, "event %d never came (%d events)", i, LOG.n);
    cr_assert_eq(LOG.ev[i].from, from, "event %d from %s", i,
                 pgg_breaker_state_name(LOG.ev[i].from));
    cr_assert_eq(LOG.ev[i].to, to, "event %d to %s", i, pgg_breaker_state_name(LOG.ev[i].to));
    cr_assert_eq(LOG.ev[i].reason, reason, "event %d reason %s", i,
                 pgg__breaker_reason_name(LOG.ev[i].reason));
}

/* Trip with one failure (consecutive_failures must be 1). */
static void trip(void)
{
    cr_assert(call(F));
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
}

/* Let the open time pass and take the breaker to half-open. */
static void to_half_open(void)
{
    NOW += stats().open_remaining_ns;
    pgg__breaker_tick(&B, NOW);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
}

/* ---------------------------------------------------------------- config */

UTest(breaker, defaults_are_valid)
{
    pgg_breaker_config c;

    pgg__breaker_config_defaults(&c);
    cr_assert_null(pgg__breaker_config_check(&c));
    cr_assert_eq(c.failure_rate, 50);
    cr_assert_eq(c.window_type, PGG_WINDOW_COUNT);
    cr_assert_eq(c.half_open_successes, c.half_open_probes);
    cr_assert_eq(c.mode, PGG_BREAKER_MODE_NORMAL);
    cr_assert_null(c.trip);
}

#define BAD(field, value, key)                                                   \
    do {                                                                         \
        pgg_breaker_config c_;                                                   \
        const char *m_;                                                          \
        pgg__breaker_config_defaults(&c_);                                       \
        c_.field = value;                                                        \
        m_ = pgg__breaker_config_check(&c_);                                     \
        cr_assert_not_null(m_, "%s = %s accepted", #field, #value);              \
        cr_assert_eq(strncmp(m_, key, strlen(key)), 0, "%s: \"%s\"", #field, m_); \
    } while (0)

#define GOOD(field, value)                                                   \
    do {                                                                     \
        pgg_breaker_config c_;                                               \
        const char *m_;                                                      \
        pgg__breaker_config_defaults(&c_);                                   \
        c_.field = value;                                                    \
        m_ = pgg__breaker_config_check(&c_);                                 \
        cr_assert_null(m_, "%s = %s refused: %s", #field, #value, m_);       \
    } while (0)

UTest(breaker, config_check_names_the_bad_key)
{
    BAD(failure_rate, -0.001, "breaker.failure_rate");
    BAD(failure_rate, 100.001, "breaker.failure_rate");
    BAD(failure_rate, NAN, "breaker.failure_rate");
    GOOD(failure_rate, 0);
    GOOD(failure_rate, 100);
    BAD(slow_call_rate, 101, "breaker.slow_call_rate");
    GOOD(slow_call_rate, 0);
    BAD(slow_call_duration_ms, 0, "breaker.slow_call_duration_ms");
    GOOD(slow_call_duration_ms, 1);
    BAD(min_calls, 0, "breaker.min_calls");
    GOOD(min_calls, 1);
    BAD(window_type, (pgg_window_type)7, "breaker.window_type");
    BAD(window_size, 0, "breaker.window_size");
    BAD(window_size, PGG_WINDOW_MAX_SIZE + 1, "breaker.window_size");
    GOOD(window_size, PGG_WINDOW_MAX_SIZE);
    GOOD(window_type, PGG_WINDOW_FIXED);
    GOOD(consecutive_failures, 0);
    BAD(open_ms, 0, "breaker.open_ms");
    BAD(open_multiplier, 0.99, "breaker.open_multiplier");
    BAD(open_multiplier, INFINITY, "breaker.open_multiplier");
    GOOD(open_multiplier, 1);
    BAD(open_max_ms, 4999, "breaker.open_max_ms"); /* open_ms is 5000 */
    GOOD(open_max_ms, 5000);
    BAD(open_jitter, 1.0, "breaker.open_jitter");
    BAD(open_jitter, -0.01, "breaker.open_jitter");
    GOOD(open_jitter, 0.999);
    BAD(half_open_probes, 0, "breaker.half_open_probes");
    BAD(half_open_successes, 4, "breaker.half_open_successes"); /* probes is 3 */
    GOOD(half_open_successes, 0);
    GOOD(half_open_successes, 1);
    BAD(half_open_max_ms, -1, "breaker.half_open_max_ms");
    GOOD(half_open_max_ms, 0);
    BAD(healthy_decay_ms, -1, "breaker.healthy_decay_ms");
    BAD(interval_ms, -1, "breaker.interval_ms");
    BAD(mode, (pgg_breaker_mode)9, "breaker.mode");
    cr_assert_not_null(pgg__breaker_config_check(NULL));
}

UTest(breaker, config_check_cross_field_rules)
{
    pgg_breaker_config c;
    const char *m;

    pgg__breaker_config_defaults(&c);
    c.window_type = PGG_WINDOW_TIME;
    c.window_bucket_ms = 0;
    m = pgg__breaker_config_check(&c);
    cr_assert_not_null(m);
    cr_assert_eq(strncmp(m, "breaker.window_bucket_ms", 24), 0, "%s", m);
    /* A count window never looks at the bucket width. */
    c.window_type = PGG_WINDOW_COUNT;
    cr_assert_null(pgg__breaker_config_check(&c));

    /* Judging probes by rate needs a rate. */
    pgg__breaker_config_defaults(&c);
    c.half_open_successes = 0;
    c.failure_rate = 0;
    c.slow_call_rate = 0;
    m = pgg__breaker_config_check(&c);
    cr_assert_not_null(m);
    cr_assert_eq(strncmp(m, "breaker.half_open_successes", 27), 0, "%s", m);
    c.slow_call_rate = 80;
    cr_assert_null(pgg__breaker_config_check(&c));
}

UTest(breaker, init_refuses_a_bad_config)
{
    pgg_breaker_config c;
    pgg_error err;
    pgg_breaker b;

    pgg__breaker_config_defaults(&c);
    c.open_multiplier = 0;
    cr_assert_eq(pgg__breaker_init(&b, &c, T0, &err), PGG_ECONFIG);
    cr_assert_eq(err.code, PGG_ECONFIG);
    cr_assert_eq(strncmp(err.message, "breaker.open_multiplier", 23), 0, "%s", err.message);
    cr_assert_null(pgg__breaker_new(&c, T0, &err));
    cr_assert_null(pgg__breaker_new(&c, T0, NULL));
}

UTest(breaker, new_and_free)
{
    pgg_breaker_config c = cfg_plain();
    pgg_breaker *b = pgg__breaker_new(&c, T0, NULL);
    pgg_ticket t;

    cr_assert_not_null(b);
    cr_assert(pgg__breaker_allow(b, T0, &t));
    pgg__breaker_record(b, t, S, 0, T0);
    pgg__breaker_free(b);
    pgg__breaker_free(NULL);
    pgg__breaker_destroy(NULL);
}

UTest(breaker, names)
{
    pgg_breaker_mode m = PGG_BREAKER_MODE_NORMAL;
    int r;

    cr_assert_str_eq(pgg_breaker_state_name(PGG_BREAKER_HALF_OPEN), "half-open");
    cr_assert_str_eq(pgg_breaker_state_name(PGG_BREAKER_METRICS_ONLY), "metrics-only");
    cr_assert_str_eq(pgg_breaker_state_name((pgg_breaker_state)77), "unknown");
    cr_assert(pgg__breaker_mode_parse("metrics_only", &m));
    cr_assert_eq(m, PGG_BREAKER_MODE_METRICS_ONLY);
    cr_assert(pgg__breaker_mode_parse("forced-open", &m));
    cr_assert_eq(m, PGG_BREAKER_MODE_FORCED_OPEN);
    cr_assert(pgg__breaker_mode_parse("normal", &m));
    cr_assert(pgg__breaker_mode_parse("disabled", &m));
    cr_assert_eq(m, PGG_BREAKER_MODE_DISABLED);
    cr_assert_not(pgg__breaker_mode_parse("closed", &m));
    cr_assert_not(pgg__breaker_mode_parse("a-very-long-mode-name", &m));
    cr_assert_not(pgg__breaker_mode_parse(NULL, &m));
    cr_assert_eq(m, PGG_BREAKER_MODE_DISABLED);
    cr_assert_str_eq(pgg__breaker_mode_name((pgg_breaker_mode)9), "unknown");
    for (r = PGG_BREAKER_REASON_FAILURE_RATE; r <= PGG_BREAKER_REASON_HOST_SILENT; r++)
        cr_assert_str_neq(pgg__breaker_reason_name((pgg_breaker_reason)r), "unknown");
    cr_assert_str_eq(pgg__breaker_reason_name((pgg_breaker_reason)99), "unknown");
}

/* ------------------------------------------------------ closed -> open */

UTest(breaker, failure_rate_below_threshold_stays_closed)
{
    pgg_breaker_config c = cfg_plain();
    pgg_breaker_stats s;

    c.failure_rate = 50;
    c.min_calls = 10;
    c.window_size = 10;
    start(&c);
    calls(S, 6);
    calls(F, 4);
    s = stats();
    cr_assert_eq(s.state, PGG_BREAKER_CLOSED);
    cr_assert_float_eq(s.failure_rate, 40.0, 1e-9);
    cr_assert_eq(LOG.n, 0);
    stop();
}

UTest(breaker, failure_rate_trips_exactly_at_threshold)
{
    pgg_breaker_config c = cfg_plain();

    c.failure_rate = 50;
    c.min_calls = 10;
    c.window_size = 10;
    start(&c);
    calls(S, 5);
    calls(F, 4);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED); /* 9 calls: below min_calls */
    calls(F, 1);                               /* 5/10 = 50% */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_FAILURE_RATE);
    cr_assert_eq(LOG.n, 1);
    stop();
}

UTest(breaker, min_calls_edge)
{
    pgg_breaker_config c = cfg_plain();
    pgg_breaker_stats s;

    c.failure_rate = 100;
    c.min_calls = 10;
    start(&c);
    calls(F, 9);
    s = stats();
    cr_assert_eq(s.state, PGG_BREAKER_CLOSED);
    cr_assert_eq(s.failure_rate, -1.0, "no rate below min_calls");
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    stop();
}

UTest(breaker, min_calls_is_capped_by_a_count_window)
{
    pgg_breaker_config c = cfg_plain();

    c.failure_rate = 100;
    c.min_calls = 20;
    c.window_size = 5;
    start(&c);
    calls(F, 4);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    stop();
}

UTest(breaker, a_success_can_complete_min_calls_and_trip)
{
    pgg_breaker_config c = cfg_plain();

    c.failure_rate = 50;
    c.min_calls = 10;
    start(&c);
    calls(F, 9);
    calls(S, 1); /* 9/10: the rate exists only now */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_FAILURE_RATE);
    stop();
}

UTest(breaker, slow_means_strictly_longer_than_the_threshold)
{
    pgg_breaker_config c = cfg_plain();
    pgg_breaker_stats s;

    c.slow_call_duration_ms = 100;
    start(&c);
    cr_assert(call_d(S, MS(100)));
    cr_assert_eq(stats().window.slow, 0);
    cr_assert(call_d(S, MS(100) + 1));
    cr_assert(call_d(F, MS(500)));
    s = stats();
    cr_assert_eq(s.window.slow, 2);
    cr_assert_eq(s.window.slow_failures, 1);
    cr_assert_eq(s.window.failures, 1);
    stop();
}

UTest(breaker, slow_call_rate_trips_exactly_at_threshold)
{
    pgg_breaker_config c = cfg_plain();

    c.slow_call_rate = 50;
    c.slow_call_duration_ms = 100;
    c.min_calls = 4;
    start(&c);
    calls(S, 3);
    cr_assert(call_d(S, MS(101)));     /* 1/4 = 25% */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    cr_assert_float_eq(stats().slow_call_rate, 25.0, 1e-9);
    cr_assert(call_d(S, MS(101)));     /* 2/5 = 40% */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    cr_assert(call_d(S, MS(101)));     /* 3/6 = 50% */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_SLOW_CALL_RATE);
    stop();
}

UTest(breaker, consecutive_failures_edge)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 3;
    c.min_calls = 100;
    start(&c);
    calls(F, 2);
    calls(S, 1); /* breaks the run */
    calls(F, 2);
    calls(I, 5); /* does not break it */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    cr_assert_eq(stats().window.consecutive_failures, 2);
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN,
                 PGG_BREAKER_REASON_CONSECUTIVE_FAILURES);
    stop();
}

static int predicate_calls;

/* gobreaker's README example: at least 3 requests, 60% of them failed. */
static bool ratio_trip(void *ud, const pgg_breaker_counts *c)
{
    (void)ud;
    predicate_calls++;
    return c->requests >= 3 &&
           (double)c->window.failures / (double)c->requests >= 0.6;
}

UTest(breaker, trip_predicate_is_asked_after_each_failure)
{
    pgg_breaker_config c = cfg_plain();
    pgg_ticket inflight;

    c.trip = ratio_trip;
    start(&c);
    predicate_calls = 0;
    calls(S, 1);
    cr_assert_eq(predicate_calls, 0, "asked after a success");
    /* A call still in flight counts as a request, as in gobreaker. */
    cr_assert(pgg__breaker_allow(&B, NOW, &inflight));
    calls(F, 1); /* 1 failure / 3 requests */
    cr_assert_eq(predicate_calls, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    calls(F, 1); /* 2 / 4 */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    calls(F, 1); /* 3 / 5 = 0.6 */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_TRIP_PREDICATE);
    pgg__breaker_record(&B, inflight, S, 0, NOW);
    cr_assert_eq(stats().stale, 1);
    stop();
}

UTest(breaker, count_window_forgets_what_it_evicts)
{
    pgg_breaker_config c = cfg_plain();

    c.failure_rate = 50;
    c.min_calls = 4;
    c.window_size = 4;
    start(&c);
    calls(F, 1);
    calls(S, 3); /* F S S S: 25% */
    calls(S, 1); /* S S S S: the failure left */
    cr_assert_float_eq(stats().failure_rate, 0.0, 1e-9);
    calls(F, 1); /* S S S F: 25% (3/6 = 50% had it been remembered... */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    calls(F, 1); /* S S F F: 50% */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    stop();
}

UTest(breaker, time_window_forgets_old_failures)
{
    pgg_breaker_config c = cfg_plain();
    pgg_breaker_stats s;

    c.failure_rate = 50;
    c.min_calls = 4;
    c.window_type = PGG_WINDOW_TIME;
    c.window_size = 10;
    c.window_bucket_ms = 1000;
    start(&c);
    calls(F, 3);
    NOW += SEC(9);
    cr_assert_eq(stats().window.failures, 3);
    NOW += SEC(1); /* the bucket of T0 leaves the 10 s window */
    s = stats();
    cr_assert_eq(s.window.calls, 0);
    calls(F, 1);
    calls(S, 3); /* 1/4 = 25%; with the old failures it would be 4/7 */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    stop();
}

/* --------------------------------------------------------------- open */

UTest(breaker, open_rejects_until_the_exact_instant)
{
    pgg_breaker_config c = cfg_plain();
    pgg_breaker_stats s;
    pgg_ticket t;

    c.consecutive_failures = 1;
    c.open_ms = 1000;
    start(&c);
    trip();
    s = stats();
    cr_assert_eq(s.open_remaining_ns, SEC(1));
    cr_assert_eq(s.open_duration_ns, SEC(1));
    NOW = T0 + SEC(1) - 1;
    cr_assert_not(pgg__breaker_allow(&B, NOW, &t));
    cr_assert_eq(t.state, PGG_BREAKER_OPEN);
    cr_assert_eq(stats().open_remaining_ns, 1);
    NOW = T0 + SEC(1);
    cr_assert(pgg__breaker_allow(&B, NOW, &t));
    cr_assert_eq(t.state, PGG_BREAKER_HALF_OPEN);
    cr_assert_eq(t.flags, PGG_TICKET_PERMIT);
    expect_event(1, PGG_BREAKER_OPEN, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_REASON_OPEN_ELAPSED);
    s = stats();
    cr_assert_eq(s.rejected, 1);
    cr_assert_eq(s.admitted, 2);
    stop();
}

UTest(breaker, tick_moves_it_without_traffic)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    c.open_ms = 1000;
    c.half_open_max_ms = 5000;
    start(&c);
    cr_assert_eq(pgg__breaker_tick(&B, NOW), PGG_TIME_NEVER);
    trip();
    cr_assert_eq(pgg__breaker_tick(&B, T0 + MS(999)), T0 + SEC(1));
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    cr_assert_eq(pgg__breaker_tick(&B, T0 + SEC(1)), T0 + SEC(6));
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    cr_assert_eq(LOG.n, 2, "tick delivers the event");
    cr_assert_eq(pgg__breaker_tick(&B, T0 + SEC(6) - 1), T0 + SEC(6));
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    pgg__breaker_tick(&B, T0 + SEC(6));
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_OPEN,
                 PGG_BREAKER_REASON_HALF_OPEN_TIMEOUT);
    stop();
}

UTest(breaker, backoff_grows_then_caps)
{
    pgg_breaker_config c = cfg_plain();
    const int64_t expect_ms[] = {1000, 2000, 4000, 5000, 5000};
    pgg_breaker_stats s;
    int i;

    c.consecutive_failures = 1;
    c.open_ms = 1000;
    c.open_multiplier = 2;
    c.open_max_ms = 5000;
    c.half_open_probes = 1;
    c.half_open_successes = 1;
    start(&c);
    trip();
    for (i = 0; i < 5; i++) {
        s = stats();
        cr_assert_eq(s.open_duration_ns, MS(expect_ms[i]), "opening %d lasted %lld ms", i + 1,
                     (long long)(s.open_duration_ns / PGG_NS_PER_MS));
        cr_assert_eq(s.reopens, (uint32_t)i + 1);
        to_half_open();
        cr_assert(call(F));
        cr_assert_eq(state(), PGG_BREAKER_OPEN);
    }
    stop();
}

UTest(breaker, backoff_jitter_only_shortens_within_bounds)
{
    pgg_breaker_config c = cfg_plain();
    int64_t lo = INT64_MAX, hi = 0, d;
    int i;

    c.consecutive_failures = 1;
    c.open_ms = 1000;
    c.open_multiplier = 1;
    c.open_max_ms = 1000;
    c.open_jitter = 0.5;
    c.half_open_probes = 1;
    c.half_open_successes = 1;
    start(&c);
    trip();
    for (i = 0; i < 200; i++) {
        d = stats().open_duration_ns;
        cr_assert_geq(d, MS(500));
        cr_assert_leq(d, MS(1000));
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
        to_half_open();
        cr_assert(call(F));
    }
    cr_assert_lt(lo, MS(600), "jitter never went low (%lld)", (long long)lo);
    cr_assert_gt(hi, MS(900), "jitter never stayed high (%lld)", (long long)hi);
    stop();
}

UTest(breaker, backoff_decays_one_step_per_healthy_period)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    c.open_ms = 1000;
    c.open_multiplier = 2;
    c.open_max_ms = 60000;
    c.healthy_decay_ms = 10000;
    c.half_open_probes = 1;
    c.half_open_successes = 1;
    start(&c);
    trip();                           /* 1 s */
    to_half_open();
    cr_assert(call(F));               /* 2 s */
    to_half_open();
    cr_assert(call(S));               /* closed, streak of 2 kept */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    cr_assert_eq(stats().reopens, 2);
    NOW += SEC(10) - 1;
    cr_assert_eq(stats().reopens, 2);
    NOW += 1;
    cr_assert_eq(stats().reopens, 1);
    trip();
    cr_assert_eq(stats().open_duration_ns, SEC(2), "one step forgiven, not all");
    to_half_open();
    cr_assert(call(S));
    NOW += SEC(20);                   /* two periods: everything forgiven */
    cr_assert_eq(stats().reopens, 0);
    trip();
    cr_assert_eq(stats().open_duration_ns, SEC(1));
    stop();
}

UTest(breaker, decay_zero_forgives_on_close)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    c.open_ms = 1000;
    c.open_max_ms = 60000;
    c.healthy_decay_ms = 0;
    c.half_open_probes = 1;
    c.half_open_successes = 1;
    start(&c);
    trip();
    to_half_open();
    cr_assert(call(F));
    cr_assert_eq(stats().open_duration_ns, SEC(2));
    to_half_open();
    cr_assert(call(S));
    trip();
    cr_assert_eq(stats().open_duration_ns, SEC(1));
    stop();
}

/* ------------------------------------------------------------ half-open */

UTest(breaker, half_open_permits_and_ignored_gives_one_back)
{
    pgg_breaker_config c = cfg_plain();
    pgg_ticket t1, t2, t3, t4;
    pgg_breaker_stats s;

    c.consecutive_failures = 1;
    c.half_open_probes = 2;
    c.half_open_successes = 2;
    start(&c);
    trip();
    to_half_open();
    cr_assert(pgg__breaker_allow(&B, NOW, &t1));
    cr_assert(pgg__breaker_allow(&B, NOW, &t2));
    cr_assert_not(pgg__breaker_allow(&B, NOW, &t3), "a third probe at once");
    cr_assert_eq(t3.state, PGG_BREAKER_HALF_OPEN);
    s = stats();
    cr_assert_eq(s.probes_admitted, 2);
    cr_assert_eq(s.probes_in_flight, 2);
    pgg__breaker_record(&B, t1, I, 0, NOW);
    s = stats();
    cr_assert_eq(s.probes_admitted, 1);
    cr_assert_eq(s.probes_in_flight, 1);
    cr_assert_eq(s.ignored, 1);
    cr_assert(pgg__breaker_allow(&B, NOW, &t3), "the ignored probe's permit");
    cr_assert_not(pgg__breaker_allow(&B, NOW, &t4));
    pgg__breaker_record(&B, t2, S, 0, NOW);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    /* A success keeps its permit: still no room. */
    cr_assert_not(pgg__breaker_allow(&B, NOW, &t4));
    pgg__breaker_record(&B, t3, S, 0, NOW);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_CLOSED,
                 PGG_BREAKER_REASON_PROBES_PASSED);
    s = stats();
    cr_assert_eq(s.rejected, 3);
    cr_assert_eq(s.window.calls, 0, "closing starts a fresh window");
    stop();
}

UTest(breaker, half_open_first_bad_probe_reopens_when_all_must_pass)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    c.half_open_probes = 3;
    c.half_open_successes = 3;
    start(&c);
    trip();
    to_half_open();
    calls(S, 2);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_OPEN,
                 PGG_BREAKER_REASON_PROBES_FAILED);
    cr_assert_eq(stats().reopens, 2);
    stop();
}

UTest(breaker, half_open_quorum_of_successes)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    c.half_open_probes = 4;
    c.half_open_successes = 2;
    start(&c);
    trip();
    to_half_open();
    calls(F, 2); /* 2 bad of the 2 the quorum can spare */
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);

    trip();
    to_half_open();
    calls(F, 2);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    calls(F, 1); /* a third bad probe: 2 successes are out of reach */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    stop();
}

UTest(breaker, half_open_rate_mode_waits_for_every_probe)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    c.failure_rate = 50;
    c.half_open_probes = 4;
    c.half_open_successes = 0;
    start(&c);
    trip();
    to_half_open();
    calls(S, 1);
    calls(F, 1);
    calls(I, 1); /* neither: its permit comes back */
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    calls(S, 1); /* 1/4 = 25% < 50% */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_CLOSED,
                 PGG_BREAKER_REASON_PROBES_PASSED);

    trip();
    to_half_open();
    calls(S, 1);
    calls(F, 1);
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    calls(F, 1); /* 2/4 = 50% */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(5, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_OPEN,
                 PGG_BREAKER_REASON_FAILURE_RATE);
    stop();
}

UTest(breaker, half_open_rate_mode_judges_slowness)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    c.failure_rate = 50;
    c.slow_call_rate = 50;
    c.slow_call_duration_ms = 100;
    c.half_open_probes = 2;
    c.half_open_successes = 0;
    start(&c);
    trip();
    to_half_open();
    cr_assert(call_d(S, MS(101)));
    cr_assert(call_d(S, 0));
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_OPEN,
                 PGG_BREAKER_REASON_SLOW_CALL_RATE);
    stop();
}

UTest(breaker, half_open_slow_probe_is_bad_only_when_slowness_trips)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    c.slow_call_rate = 100;
    c.min_calls = 100;
    c.slow_call_duration_ms = 100;
    c.half_open_probes = 1;
    c.half_open_successes = 1;
    start(&c);
    trip();
    to_half_open();
    cr_assert(call_d(S, MS(200)));
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    stop();

    c.slow_call_rate = 0;
    start(&c);
    trip();
    to_half_open();
    cr_assert(call_d(S, MS(200)));
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    stop();
}

UTest(breaker, half_open_max_time_reopens_and_late_probes_are_stale)
{
    pgg_breaker_config c = cfg_plain();
    pgg_ticket lost, t;
    int64_t since;

    c.consecutive_failures = 1;
    c.half_open_probes = 1;
    c.half_open_successes = 1;
    c.half_open_max_ms = 5000;
    start(&c);
    trip();
    to_half_open();
    since = NOW;
    cr_assert(pgg__breaker_allow(&B, NOW, &lost));
    NOW = since + SEC(5) - 1;
    cr_assert_not(pgg__breaker_allow(&B, NOW, &t));
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    NOW = since + SEC(5);
    cr_assert_not(pgg__breaker_allow(&B, NOW, &t));
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_OPEN,
                 PGG_BREAKER_REASON_HALF_OPEN_TIMEOUT);
    cr_assert_eq(stats().reopens, 2);
    /* The probe reports at last, into the next half-open period. */
    to_half_open();
    pgg__breaker_record(&B, lost, S, 0, NOW);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN, "a stale success closed it");
    cr_assert_eq(stats().stale, 1);
    cr_assert(pgg__breaker_allow(&B, NOW, &t), "the stale probe took a permit");
    stop();
}

/* ----------------------------------------------------------- generations */

UTest(breaker, result_from_before_a_trip_changes_nothing)
{
    pgg_breaker_config c = cfg_plain();
    pgg_ticket old;
    pgg_breaker_stats s;

    c.consecutive_failures = 2;
    start(&c);
    cr_assert(pgg__breaker_allow(&B, NOW, &old));
    calls(F, 2);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    pgg__breaker_record(&B, old, F, 0, NOW);
    s = stats();
    cr_assert_eq(s.stale, 1);
    cr_assert_eq(s.failures, 2);
    cr_assert_eq(s.window.failures, 2, "frozen window changed");
    cr_assert_eq(s.reopens, 1);
    cr_assert_eq(LOG.n, 1);
    stop();
}

UTest(breaker, late_success_does_not_close_a_half_open_breaker)
{
    pgg_breaker_config c = cfg_plain();
    pgg_ticket old;

    c.consecutive_failures = 1;
    c.half_open_probes = 1;
    c.half_open_successes = 1;
    start(&c);
    cr_assert(pgg__breaker_allow(&B, NOW, &old));
    trip();
    to_half_open();
    pgg__breaker_record(&B, old, S, 0, NOW);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    cr_assert_eq(stats().probes_admitted, 0);
    stop();
}

/* --------------------------------------------- fixed interval (gobreaker) */

UTest(breaker, interval_clears_strictly_after_it_expires)
{
    pgg_breaker_config c = cfg_plain();
    pgg_ticket inflight;
    pgg_breaker_stats s;

    c.window_type = PGG_WINDOW_FIXED;
    c.interval_ms = 30000;
    c.failure_rate = 0;
    start(&c);
    calls(F, 3);
    cr_assert(pgg__breaker_allow(&B, NOW, &inflight));
    NOW = T0 + SEC(30);
    cr_assert_eq(pgg__breaker_tick(&B, NOW), T0 + SEC(30) + 1);
    s = stats();
    cr_assert_eq(s.window.failures, 3);
    cr_assert_eq(s.requests, 4);
    NOW += 1;
    calls(S, 1);
    s = stats();
    cr_assert_eq(s.window.calls, 1);
    cr_assert_eq(s.window.failures, 0);
    cr_assert_eq(s.requests, 1);
    cr_assert_eq(s.state, PGG_BREAKER_CLOSED);
    cr_assert_eq(LOG.n, 0, "a roll-over is not a transition");
    pgg__breaker_record(&B, inflight, F, 0, NOW);
    cr_assert_eq(stats().stale, 1, "the previous interval's call counted");
    /* The next interval starts when the roll-over was seen. */
    cr_assert_eq(pgg__breaker_tick(&B, NOW), T0 + SEC(60) + 2);
    stop();
}

/* gobreaker's Counts, read from our stats. */
typedef struct gcounts {
    uint64_t requests, successes, failures, cs, cf;
} gcounts;

static gcounts counts(void)
{
    pgg_breaker_stats s = stats();
    gcounts g;

    if (s.state == PGG_BREAKER_HALF_OPEN) {
        g.requests = s.requests;
        g.successes = s.probe_successes;
        g.failures = s.probe_failures;
        g.cs = s.probe_failures ? 0 : s.probe_successes;
        g.cf = s.probe_failures;
    } else {
        g.requests = s.requests;
        g.successes = s.window.calls - s.window.failures;
        g.failures = s.window.failures;
        g.cs = s.window.consecutive_successes;
        g.cf = s.window.consecutive_failures;
    }
    return g;
}

#define COUNTS(r, ts, tf, cs_, cf_)                                                     \
    do {                                                                                \
        gcounts g_ = counts();                                                          \
        cr_assert(g_.requests == (r) && g_.successes == (ts) && g_.failures == (tf) &&  \
                      g_.cs == (cs_) && g_.cf == (cf_),                                 \
                  "Counts{%llu,%llu,%llu,%llu,%llu} != {%d,%d,%d,%d,%d}",               \
                  (unsigned long long)g_.requests, (unsigned long long)g_.successes,    \
                  (unsigned long long)g_.failures, (unsigned long long)g_.cs,            \
                  (unsigned long long)g_.cf, r, ts, tf, cs_, cf_);                      \
    } while (0)

/* gobreaker v2 TestDefaultCircuitBreaker, step by step, on the fake clock. */
UTest(breaker, gobreaker_default_sequence)
{
    pgg_breaker_config c;

    pgg__breaker_config_gobreaker(&c, 0, 0, 0);
    cr_assert_null(pgg__breaker_config_check(&c));
    start(&c);
    calls(F, 5);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    COUNTS(5, 0, 5, 0, 5);
    calls(S, 1);
    COUNTS(6, 1, 5, 1, 0);
    calls(F, 1);
    COUNTS(7, 1, 6, 0, 1);
    calls(F, 5); /* 6 consecutive failures */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    cr_assert_eq(stats().requests, 0);
    cr_assert_not(call(S));
    cr_assert_not(call(F));
    /* gobreaker half-opens strictly after Timeout (expiry.Before(now)). */
    NOW += SEC(60);
    pgg__breaker_tick(&B, NOW);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    NOW += SEC(1) - MS(1); /* its pseudoSleep(timeout - 1ms), then 1 s */
    pgg__breaker_tick(&B, NOW);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    NOW += SEC(60) + 1; /* timeout + 1 ns */
    pgg__breaker_tick(&B, NOW);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    COUNTS(0, 0, 0, 0, 0);
    stop();
}

static bool gobreaker_custom_trip(void *ud, const pgg_breaker_counts *c)
{
    (void)ud;
    return c->requests >= 3 &&
           (double)c->window.failures / (double)c->requests >= 0.6;
}

/* gobreaker v2 TestCustomCircuitBreaker, step by step, on the fake clock. */
UTest(breaker, gobreaker_custom_sequence)
{
    pgg_breaker_config c;
    pgg_ticket later;
    int i;

    pgg__breaker_config_gobreaker(&c, 3, 30000, 90000);
    c.consecutive_failures = 0;
    c.trip = gobreaker_custom_trip;
    start(&c);
    for (i = 0; i < 5; i++) {
        calls(S, 1);
        calls(F, 1);
    }
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    COUNTS(10, 5, 5, 0, 1);
    NOW += SEC(29);
    calls(S, 1);
    COUNTS(11, 6, 5, 1, 0);
    /* gobreaker's real clock has moved on by a hair when it says "30 s". */
    NOW += SEC(1) + 1;
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    COUNTS(1, 0, 1, 0, 1);
    calls(S, 1);
    calls(F, 1); /* 2/3 >= 0.6 */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_TRIP_PREDICATE);
    NOW += SEC(90) + 1; /* gobreaker: timeout + 1 ns */
    pgg__breaker_tick(&B, NOW);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    expect_event(1, PGG_BREAKER_OPEN, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_REASON_OPEN_ELAPSED);
    calls(S, 2);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    COUNTS(2, 2, 0, 2, 0);
    cr_assert(pgg__breaker_allow(&B, NOW, &later)); /* the third, still running */
    COUNTS(3, 2, 0, 2, 0);
    cr_assert_not(call(S), "over MaxRequests");
    pgg__breaker_record(&B, later, S, 0, NOW);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    COUNTS(0, 0, 0, 0, 0);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_CLOSED,
                 PGG_BREAKER_REASON_PROBES_PASSED);
    stop();
}

UTest(breaker, gobreaker_preset_defaults)
{
    pgg_breaker_config c;

    pgg__breaker_config_gobreaker(&c, 0, -5, -1);
    cr_assert_eq(c.half_open_probes, 1);
    cr_assert_eq(c.half_open_successes, 1);
    cr_assert_eq(c.open_ms, 60000);
    cr_assert_eq(c.interval_ms, 0);
    cr_assert_eq(c.window_type, PGG_WINDOW_FIXED);
    cr_assert_eq(c.consecutive_failures, 6);
    cr_assert_null(pgg__breaker_config_check(&c));
}

/* ------------------------------------------------------------- listeners */

UTest(breaker, listener_hears_every_transition_in_order)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    c.half_open_probes = 1;
    c.half_open_successes = 1;
    start(&c);
    trip();
    to_half_open();
    calls(F, 1);
    to_half_open();
    calls(S, 1);
    pgg__breaker_force_open(&B, NOW);
    pgg__breaker_reset(&B, NOW);
    pgg__breaker_disable(&B, NOW);
    pgg__breaker_metrics_only(&B, NOW);
    cr_assert_eq(pgg__breaker_transition(&B, PGG_BREAKER_HALF_OPEN, NOW), PGG_OK);
    pgg__breaker_reset(&B, NOW);
    pgg__breaker_reset(&B, NOW);
    cr_assert_eq(LOG.n, 12);
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_CONSECUTIVE_FAILURES);
    expect_event(1, PGG_BREAKER_OPEN, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_REASON_OPEN_ELAPSED);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_PROBES_FAILED);
    expect_event(3, PGG_BREAKER_OPEN, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_REASON_OPEN_ELAPSED);
    expect_event(4, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_CLOSED, PGG_BREAKER_REASON_PROBES_PASSED);
    expect_event(5, PGG_BREAKER_CLOSED, PGG_BREAKER_FORCED_OPEN, PGG_BREAKER_REASON_FORCED);
    expect_event(6, PGG_BREAKER_FORCED_OPEN, PGG_BREAKER_CLOSED, PGG_BREAKER_REASON_RESET);
    expect_event(7, PGG_BREAKER_CLOSED, PGG_BREAKER_DISABLED, PGG_BREAKER_REASON_FORCED);
    expect_event(8, PGG_BREAKER_DISABLED, PGG_BREAKER_METRICS_ONLY, PGG_BREAKER_REASON_FORCED);
    expect_event(9, PGG_BREAKER_METRICS_ONLY, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_REASON_MANUAL);
    expect_event(10, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_CLOSED, PGG_BREAKER_REASON_RESET);
    expect_event(11, PGG_BREAKER_CLOSED, PGG_BREAKER_CLOSED, PGG_BREAKER_REASON_RESET);
    cr_assert_eq(stats().transitions, 12);
    stop();
}

static int depth, max_depth;

/* Calls back into the breaker from inside a notification. */
static void reentrant_listener(void *ud, pgg_breaker_state from,
                               pgg_breaker_state to, pgg_breaker_reason reason)
{
    pgg_breaker_stats s;
    pgg_ticket t;

    (void)ud;
    (void)from;
    (void)reason;
    depth++;
    max_depth = depth > max_depth ? depth : max_depth;
    pgg__breaker_stats(&B, NOW, &s);
    cr_assert_eq(s.state, to, "listener sees the state it was told about");
    if (to == PGG_BREAKER_OPEN) {
        cr_assert_not(pgg__breaker_allow(&B, NOW, &t));
        pgg__breaker_force_open(&B, NOW); /* a transition from inside */
        cr_assert_eq(pgg__breaker_state(&B), PGG_BREAKER_FORCED_OPEN);
        cr_assert_eq(LOG.n, 1, "nested event delivered inside the listener");
    }
    depth--;
}

UTest(breaker, listener_may_call_back_in)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    start(&c);
    depth = max_depth = 0;
    cr_assert_eq(pgg__breaker_listen(&B, reentrant_listener, NULL), PGG_OK);
    cr_assert(call(F));
    cr_assert_eq(state(), PGG_BREAKER_FORCED_OPEN);
    cr_assert_eq(LOG.n, 2);
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_CONSECUTIVE_FAILURES);
    expect_event(1, PGG_BREAKER_OPEN, PGG_BREAKER_FORCED_OPEN, PGG_BREAKER_REASON_FORCED);
    cr_assert_eq(max_depth, 1, "listeners were nested");
    stop();
}

static int flood_done;

/* On the first event, causes far more transitions than the queue holds. */
static void flooding_listener(void *ud, pgg_breaker_state from,
                              pgg_breaker_state to, pgg_breaker_reason reason)
{
    int i;

    (void)ud;
    (void)from;
    (void)to;
    (void)reason;
    if (flood_done++)
        return;
    for (i = 0; i < 40; i++) {
        pgg__breaker_force_open(&B, NOW);
        pgg__breaker_reset(&B, NOW);
    }
}

UTest(breaker, event_queue_overflow_keeps_the_newest)
{
    pgg_breaker_config c = cfg_plain();
    pgg_breaker_stats s;

    c.consecutive_failures = 1;
    start(&c);
    flood_done = 0;
    cr_assert_eq(pgg__breaker_listen(&B, flooding_listener, NULL), PGG_OK);
    cr_assert(call(F));
    s = stats();
    cr_assert_eq(s.transitions, 81);
    cr_assert_eq(s.events_dropped, 80 - PGG_BREAKER_EVENT_QUEUE);
    cr_assert_eq(LOG.n, 1 + PGG_BREAKER_EVENT_QUEUE);
    expect_event(LOG.n - 1, PGG_BREAKER_FORCED_OPEN, PGG_BREAKER_CLOSED,
                 PGG_BREAKER_REASON_RESET);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    stop();
}

static void noop_listener(void *ud, pgg_breaker_state from, pgg_breaker_state to,
                          pgg_breaker_reason reason)
{
    (void)ud;
    (void)from;
    (void)to;
    (void)reason;
}

UTest(breaker, listener_slots)
{
    pgg_breaker_config c = cfg_plain();
    int a, b2, d;

    c.consecutive_failures = 1;
    start(&c); /* LOG takes the first slot */
    cr_assert_eq(pgg__breaker_listen(&B, NULL, NULL), PGG_EINVAL);
    cr_assert_eq(pgg__breaker_listen(&B, noop_listener, &a), PGG_OK);
    cr_assert_eq(pgg__breaker_listen(&B, noop_listener, &b2), PGG_OK);
    cr_assert_eq(pgg__breaker_listen(&B, noop_listener, &d), PGG_OK);
    cr_assert_eq(pgg__breaker_listen(&B, noop_listener, NULL), PGG_ENOMEM);
    pgg__breaker_unlisten(&B, noop_listener, &b2);
    cr_assert_eq(pgg__breaker_listen(&B, noop_listener, NULL), PGG_OK);
    pgg__breaker_unlisten(&B, log_event, &LOG);
    trip();
    cr_assert_eq(LOG.n, 0, "an unlistened listener was called");
    stop();
}

/* -------------------------------------------------------- operator modes */

UTest(breaker, forced_open_holds_until_reset)
{
    pgg_breaker_config c = cfg_plain();
    pgg_ticket t, before;

    start(&c);
    cr_assert(pgg__breaker_allow(&B, NOW, &before));
    pgg__breaker_force_open(&B, NOW);
    pgg__breaker_force_open(&B, NOW); /* no second event */
    cr_assert_eq(LOG.n, 1);
    cr_assert_not(pgg__breaker_allow(&B, NOW, &t));
    cr_assert_eq(t.state, PGG_BREAKER_FORCED_OPEN);
    cr_assert_eq(pgg__breaker_tick(&B, NOW + SEC(86400)), PGG_TIME_NEVER);
    NOW += SEC(86400);
    cr_assert_not(pgg__breaker_allow(&B, NOW, &t));
    pgg__breaker_record(&B, before, F, 0, NOW);
    cr_assert_eq(stats().stale, 1);
    cr_assert_eq(stats().rejected, 2);
    pgg__breaker_reset(&B, NOW);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    cr_assert(call(S));
    stop();
}

UTest(breaker, disabled_admits_everything_and_records_nothing)
{
    pgg_breaker_config c = cfg_plain();
    pgg_breaker_stats before, after;
    pgg_ticket t;

    c.consecutive_failures = 1;
    start(&c);
    pgg__breaker_disable(&B, NOW);
    before = stats();
    calls(F, 100);
    cr_assert(pgg__breaker_allow(&B, NOW, &t));
    cr_assert_eq(t.flags, PGG_TICKET_UNTRACKED);
    after = stats();
    cr_assert_eq(after.state, PGG_BREAKER_DISABLED);
    cr_assert_eq(after.admitted, before.admitted);
    cr_assert_eq(after.failures, 0);
    cr_assert_eq(after.window.calls, 0);
    pgg__breaker_reset(&B, NOW);
    pgg__breaker_record(&B, t, F, 0, NOW); /* from the disabled period */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    cr_assert_eq(stats().failures, 0);
    stop();
}

UTest(breaker, metrics_only_records_but_never_trips)
{
    pgg_breaker_config c = cfg_plain();
    pgg_breaker_stats s;

    c.consecutive_failures = 2;
    c.failure_rate = 50;
    c.min_calls = 1;
    c.mode = PGG_BREAKER_MODE_METRICS_ONLY;
    start(&c);
    cr_assert_eq(state(), PGG_BREAKER_METRICS_ONLY);
    calls(F, 10);
    s = stats();
    cr_assert_eq(s.state, PGG_BREAKER_METRICS_ONLY);
    cr_assert_eq(s.window.failures, 10);
    cr_assert_eq(s.failures, 10);
    cr_assert_eq(s.trips_suppressed, 10);
    cr_assert_float_eq(s.failure_rate, 100.0, 1e-9);
    cr_assert_eq(LOG.n, 0);
    stop();
}

UTest(breaker, modes_set_the_initial_state)
{
    pgg_breaker_config c = cfg_plain();
    pgg_ticket t;

    c.mode = PGG_BREAKER_MODE_FORCED_OPEN;
    start(&c);
    cr_assert_eq(state(), PGG_BREAKER_FORCED_OPEN);
    cr_assert_not(pgg__breaker_allow(&B, NOW, &t));
    stop();
    c.mode = PGG_BREAKER_MODE_DISABLED;
    start(&c);
    cr_assert_eq(state(), PGG_BREAKER_DISABLED);
    cr_assert(pgg__breaker_allow(&B, NOW, &t));
    stop();
    c.mode = PGG_BREAKER_MODE_NORMAL;
    start(&c);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    stop();
}

UTest(breaker, transition_by_hand)
{
    pgg_breaker_config c = cfg_plain();
    pgg_breaker_stats s;

    c.open_ms = 2000;
    start(&c);
    cr_assert_eq(pgg__breaker_transition(&B, PGG_BREAKER_DISABLED, NOW), PGG_EINVAL);
    cr_assert_eq(pgg__breaker_transition(&B, PGG_BREAKER_CLOSED, NOW), PGG_OK);
    cr_assert_eq(LOG.n, 0, "closed to closed is no transition");
    cr_assert_eq(pgg__breaker_transition(&B, PGG_BREAKER_OPEN, NOW), PGG_OK);
    s = stats();
    cr_assert_eq(s.state, PGG_BREAKER_OPEN);
    cr_assert_eq(s.open_remaining_ns, SEC(2));
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_MANUAL);
    cr_assert_eq(pgg__breaker_transition(&B, PGG_BREAKER_HALF_OPEN, NOW), PGG_OK);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    cr_assert_eq(pgg__breaker_transition(&B, PGG_BREAKER_CLOSED, NOW), PGG_OK);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    cr_assert_eq(LOG.n, 3);
    stop();
}

UTest(breaker, host_answered_cuts_only_an_open_period_short)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    c.open_ms = 60000;
    c.open_max_ms = 60000;
    start(&c);
    cr_assert_not(pgg__breaker_host_answered(&B, NOW), "moved a closed breaker");
    trip();
    NOW += SEC(1);
    cr_assert(pgg__breaker_host_answered(&B, NOW));
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    expect_event(1, PGG_BREAKER_OPEN, PGG_BREAKER_HALF_OPEN,
                 PGG_BREAKER_REASON_HOST_ANSWERED);
    cr_assert_not(pgg__breaker_host_answered(&B, NOW), "moved a half-open breaker");
    pgg__breaker_force_open(&B, NOW);
    cr_assert_not(pgg__breaker_host_answered(&B, NOW), "overrode the operator");
    cr_assert_eq(state(), PGG_BREAKER_FORCED_OPEN);
    stop();
}

/*
 * An open time that runs out while the host is still down, and the trial
 * that fails then (a restart longer than open_ms), are the same outage:
 * the host's first session still closes the breaker at once.  Before, the
 * failed trial counted as a second opening, and the returning host was
 * only put on trial (tests/bench/faults, restart-all at load 28: 65 ms of
 * refused calls while the server took sessions).  A trial that fails once
 * the host has answered a health check is a relapse: trials from then on.
 */
UTest(breaker, an_outage_longer_than_the_open_time_is_still_a_first_opening)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    c.open_ms = 1000;
    c.open_max_ms = 60000;
    c.half_open_probes = 1;
    c.half_open_successes = 1;
    start(&c);
    trip();
    for (int i = 0; i < 3; i++) {
        to_half_open();
        cr_assert(call(F), "the trial was refused");
        cr_assert_eq(state(), PGG_BREAKER_OPEN);
    }
    cr_assert_eq(stats().reopens, 4);
    cr_assert(pgg__breaker_host_back(&B, NOW), "the host's return after a long outage did "
                                               "not close the breaker");
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    stop();
    /* The host answered, then its trial failed: a relapse. */
    start(&c);
    trip();
    to_half_open();
    cr_assert_not(pgg__breaker_host_answered(&B, NOW)); /* half-open already */
    cr_assert(call(F));
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    cr_assert_not(pgg__breaker_host_back(&B, NOW), "closed after a relapse");
    cr_assert(pgg__breaker_host_answered(&B, NOW));
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    stop();
}

/*
 * A host back from its first outage of a streak closes the breaker at
 * once; one that failed again after coming back is left to trial calls.
 */
UTest(breaker, host_back_closes_only_the_first_opening_of_a_streak)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    c.open_ms = 60000;
    c.open_max_ms = 60000;
    c.half_open_probes = 1;
    c.half_open_successes = 1;
    start(&c);
    cr_assert_not(pgg__breaker_host_back(&B, NOW), "moved a closed breaker");
    trip();
    NOW += SEC(1);
    cr_assert(pgg__breaker_host_back(&B, NOW));
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    expect_event(1, PGG_BREAKER_OPEN, PGG_BREAKER_CLOSED, PGG_BREAKER_REASON_HOST_BACK);
    /* Failed again right after: it answers, but not calls. */
    NOW += SEC(1);
    trip();
    cr_assert_eq(stats().reopens, 2);
    cr_assert_not(pgg__breaker_host_back(&B, NOW), "closed a second opening");
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    cr_assert(pgg__breaker_host_answered(&B, NOW));
    cr_assert_not(pgg__breaker_host_back(&B, NOW), "closed a second opening on trial");
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    /* A healthy stretch forgives it: the next outage is a first one again. */
    cr_assert(call(S));
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    NOW += SEC(60) * 3;
    trip();
    cr_assert_eq(stats().reopens, 1);
    cr_assert(pgg__breaker_host_back(&B, NOW));
    stop();
    /* Half-open after its open time, the first opening closes too. */
    start(&c);
    trip();
    to_half_open();
    cr_assert(pgg__breaker_host_back(&B, NOW));
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    pgg__breaker_force_open(&B, NOW);
    cr_assert_not(pgg__breaker_host_back(&B, NOW), "overrode the operator");
    cr_assert_eq(state(), PGG_BREAKER_FORCED_OPEN);
    stop();
    /* Off: only trial calls close it. */
    c.answer_closes = false;
    start(&c);
    trip();
    cr_assert_not(pgg__breaker_host_back(&B, NOW));
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    stop();
}

/*
 * A host found silent (health.c: a call and then a probe got no answer for
 * a whole probe bound) opens a closed breaker at once, whatever the
 * failures counted so far: an opening like a trip (open time, streak), so
 * the host's return closes it as for any first outage.  Nothing else moves:
 * open, half-open, the operator's states, a preset's breaker, or with
 * silence_opens off; metrics-only counts a suppressed trip.
 */
UTest(breaker, host_silent_opens_only_a_closed_breaker)
{
    pgg_breaker_config c = cfg_plain();
    pgg_breaker_stats st;

    c.consecutive_failures = 5;
    c.open_ms = 5000;
    c.open_max_ms = 60000;
    c.half_open_probes = 1;
    c.half_open_successes = 1;
    start(&c);
    calls(F, 2); /* two timeouts: far from consecutive_failures */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    cr_assert(pgg__breaker_host_silent(&B, NOW));
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_HOST_SILENT);
    st = stats();
    cr_assert_eq(st.reopens, 1);
    cr_assert_eq(st.open_remaining_ns, SEC(5));
    cr_assert_not(call(S), "an open breaker admitted a call");
    /* Already open, then on trial: nothing moves. */
    cr_assert_not(pgg__breaker_host_silent(&B, NOW));
    cr_assert_eq(LOG.n, 1);
    cr_assert(pgg__breaker_host_answered(&B, NOW));
    cr_assert_not(pgg__breaker_host_silent(&B, NOW), "moved a half-open breaker");
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    /* The host's return closes it as any first opening of a streak. */
    cr_assert(pgg__breaker_host_back(&B, NOW));
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    pgg__breaker_force_open(&B, NOW);
    cr_assert_not(pgg__breaker_host_silent(&B, NOW), "overrode the operator");
    cr_assert_eq(state(), PGG_BREAKER_FORCED_OPEN);
    pgg__breaker_disable(&B, NOW);
    cr_assert_not(pgg__breaker_host_silent(&B, NOW));
    cr_assert_eq(state(), PGG_BREAKER_DISABLED);
    pgg__breaker_metrics_only(&B, NOW);
    cr_assert_not(pgg__breaker_host_silent(&B, NOW));
    cr_assert_eq(state(), PGG_BREAKER_METRICS_ONLY);
    cr_assert_eq(stats().trips_suppressed, 1);
    stop();
    /* Off: only the failures decide. */
    c.silence_opens = false;
    start(&c);
    cr_assert_not(pgg__breaker_host_silent(&B, NOW));
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    cr_assert_eq(LOG.n, 0);
    stop();
    /* A preset's breaker is its library's: no active checks there. */
    pgg__breaker_config_gobreaker(&c, 1, 0, 60000);
    start(&c);
    cr_assert_not(pgg__breaker_host_silent(&B, NOW));
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    stop();
}

UTest(breaker, reset_forgives_the_streak)
{
    pgg_breaker_config c = cfg_plain();

    c.consecutive_failures = 1;
    c.open_ms = 1000;
    c.open_max_ms = 60000;
    c.half_open_probes = 1;
    c.half_open_successes = 1;
    start(&c);
    trip();
    to_half_open();
    calls(F, 1);
    cr_assert_eq(stats().reopens, 2);
    pgg__breaker_reset(&B, NOW);
    cr_assert_eq(stats().reopens, 0);
    trip();
    cr_assert_eq(stats().open_duration_ns, SEC(1));
    stop();
}

UTest(breaker, stats_totals_add_up)
{
    pgg_breaker_config c = cfg_plain();
    pgg_breaker_stats s;
    pgg_ticket t;

    c.consecutive_failures = 3;
    start(&c);
    calls(S, 4);
    calls(I, 2);
    calls(F, 3); /* trips */
    cr_assert_not(pgg__breaker_allow(&B, NOW, &t));
    s = stats();
    cr_assert_eq(s.admitted, 9);
    cr_assert_eq(s.rejected, 1);
    cr_assert_eq(s.successes, 4);
    cr_assert_eq(s.ignored, 2);
    cr_assert_eq(s.failures, 3);
    cr_assert_eq(s.stale, 0);
    cr_assert_eq(s.transitions, 1);
    cr_assert_eq(s.state_since_ns, T0);
    cr_assert_eq(s.window.ignored, 2);
    stop();
}

/* ============================================= presets: gobreaker v2 */

/*
 * The tests below reproduce sony/gobreaker v2's own tests (v2/gobreaker_test.go)
 * scenario by scenario, on the fake clock: its pseudoSleep(d) is NOW += d,
 * succeed/fail/exclude are one allow() and one record() each.  Where its test
 * relies on the real clock having moved on a hair (a sleep of exactly the
 * interval), we add the nanosecond it needs and say so.
 */

/* gobreaker's Counts{Requests, TotalSuccesses, TotalFailures,
 * TotalExclusions, ConsecutiveSuccesses, ConsecutiveFailures}. */
static void gb_counts(uint64_t r, uint64_t ts, uint64_t tf, uint64_t te,
                      uint64_t cs, uint64_t cf)
{
    pgg_breaker_stats s = stats();
    uint64_t g[6];

    g[0] = s.requests;
    if (s.state == PGG_BREAKER_HALF_OPEN) {
        /* An excluded probe gives its permit back; it still was a request. */
        g[1] = s.probe_successes;
        g[2] = s.probe_failures;
        g[3] = s.requests - s.probes_admitted;
        g[4] = s.probe_failures ? 0 : s.probe_successes;
        g[5] = s.probe_failures;
    } else {
        g[1] = s.window.calls - s.window.failures;
        g[2] = s.window.failures;
        g[3] = s.window.ignored;
        g[4] = s.window.consecutive_successes;
        g[5] = s.window.consecutive_failures;
    }
    cr_assert(g[0] == r && g[1] == ts && g[2] == tf && g[3] == te && g[4] == cs &&
                  g[5] == cf,
              "Counts{%llu,%llu,%llu,%llu,cs %llu,cf %llu} != {%llu,%llu,%llu,%llu,cs %llu,cf %llu}",
              (unsigned long long)g[0], (unsigned long long)g[1], (unsigned long long)g[2],
              (unsigned long long)g[3], (unsigned long long)g[4], (unsigned long long)g[5],
              (unsigned long long)r, (unsigned long long)ts, (unsigned long long)tf,
              (unsigned long long)te, (unsigned long long)cs, (unsigned long long)cf);
}

/* One bucket of the rolling window, back buckets before the current one. */
static void gb_bucket(uint32_t back, uint64_t r, uint64_t ts, uint64_t tf,
                      uint64_t te, uint64_t cs, uint64_t cf)
{
    pgg_window_stats b = pgg__window_bucket_stats(&B.window, back);

    cr_assert(b.requests == r && b.calls - b.failures == ts && b.failures == tf &&
                  b.ignored == te && b.consecutive_successes == cs &&
                  b.consecutive_failures == cf,
              "bucket -%u {%llu,%llu,%llu,%llu,cs %llu,cf %llu}", back,
              (unsigned long long)b.requests, (unsigned long long)(b.calls - b.failures),
              (unsigned long long)b.failures, (unsigned long long)b.ignored,
              (unsigned long long)b.consecutive_successes,
              (unsigned long long)b.consecutive_failures);
}

/* newCustom's and newRollingWindow's ReadyToTrip. */
static bool gb_ratio_trip(void *ud, const pgg_breaker_counts *c)
{
    uint64_t valid = c->requests - c->window.ignored;

    (void)ud;
    return valid >= 3 && (double)c->window.failures / (double)valid >= 0.6;
}

/* newCustom: MaxRequests 3, Interval 30 s, Timeout 90 s, that ReadyToTrip. */
static pgg_breaker_config gb_custom(int64_t bucket_period_ms)
{
    pgg_breaker_config c;

    pgg__breaker_config_defaults(&c);
    c.preset = PGG_BREAKER_PRESET_GOBREAKER;
    c.gobreaker.max_requests = 3;
    c.gobreaker.interval_ms = 30000;
    c.gobreaker.bucket_period_ms = bucket_period_ms;
    c.gobreaker.timeout_ms = 90000;
    c.trip = gb_ratio_trip;
    return c;
}

/* gobreaker v2 TestNewCircuitBreaker: the settings each Settings gives. */
UTest(breaker, gobreaker_v2_new_circuit_breaker)
{
    pgg_breaker_config c, e;

    /* Settings{}: MaxRequests 1, no interval, Timeout 60 s, ReadyToTrip > 5. */
    pgg__breaker_config_defaults(&c);
    c.preset = PGG_BREAKER_PRESET_GOBREAKER;
    cr_assert_null(pgg__breaker_config_check(&c));
    pgg__breaker_config_effective(&c, &e);
    cr_assert_eq(e.half_open_probes, 1);
    cr_assert_eq(e.half_open_successes, 1);
    cr_assert_eq(e.interval_ms, 0);
    cr_assert_eq(e.window_type, PGG_WINDOW_FIXED);
    cr_assert_eq(e.open_ms, 60000);
    cr_assert_eq(e.consecutive_failures, 6);
    cr_assert(e.open_strict);
    cr_assert_eq(e.failure_rate, 0);
    cr_assert_eq(e.slow_call_rate, 0);

    /* newCustom: a fixed window cleared every 30 s, Timeout 90 s. */
    c = gb_custom(0);
    pgg__breaker_config_effective(&c, &e);
    cr_assert_eq(e.half_open_probes, 3);
    cr_assert_eq(e.window_type, PGG_WINDOW_FIXED);
    cr_assert_eq(e.interval_ms, 30000);
    cr_assert_eq(e.open_ms, 90000);
    cr_assert_eq(e.consecutive_failures, 0, "a custom ReadyToTrip replaces the default");
    cr_assert_eq(e.trip, gb_ratio_trip);

    /* newRollingWindow: 30 s in 3 s buckets is 10 buckets, no interval. */
    c = gb_custom(3000);
    pgg__breaker_config_effective(&c, &e);
    cr_assert_eq(e.window_type, PGG_WINDOW_TIME);
    cr_assert_eq(e.window_size, 10);
    cr_assert_eq(e.window_bucket_ms, 3000);
    cr_assert(e.window_by_admission);
    cr_assert_eq(e.interval_ms, 0);
    /* Interval is rounded up to a multiple of BucketPeriod. */
    c.gobreaker.interval_ms = 31000;
    pgg__breaker_config_effective(&c, &e);
    cr_assert_eq(e.window_size, 11);

    /* newNegativeDurationCB: negative Interval and Timeout are defaults. */
    pgg__breaker_config_defaults(&c);
    c.preset = PGG_BREAKER_PRESET_GOBREAKER;
    c.gobreaker.interval_ms = -30000;
    c.gobreaker.timeout_ms = -90000;
    pgg__breaker_config_effective(&c, &e);
    cr_assert_eq(e.interval_ms, 0);
    cr_assert_eq(e.open_ms, 60000);
    cr_assert_eq(e.half_open_probes, 1);
    cr_assert_null(pgg__breaker_config_check(&c));

    /* A BucketPeriod without an Interval is a fixed window, as gobreaker's. */
    c.gobreaker.interval_ms = 0;
    c.gobreaker.bucket_period_ms = 1000;
    pgg__breaker_config_effective(&c, &e);
    cr_assert_eq(e.window_type, PGG_WINDOW_FIXED);
    cr_assert_eq(e.interval_ms, 0);

    /* Too many buckets is a configuration error naming gobreaker's keys. */
    c.gobreaker.interval_ms = 86400000;
    c.gobreaker.bucket_period_ms = 1;
    cr_assert_not_null(strstr(pgg__breaker_config_check(&c), "breaker.gobreaker.interval_ms"));
    c.gobreaker.interval_ms = INT64_MAX; /* through the C API: no overflow */
    c.gobreaker.bucket_period_ms = 2;
    cr_assert_not_null(strstr(pgg__breaker_config_check(&c), "breaker.gobreaker.interval_ms"));
}

/* gobreaker v2 TestDefaultCircuitBreaker, with its Counts at every step. */
UTest(breaker, gobreaker_v2_default_circuit_breaker)
{
    pgg_breaker_config c;

    pgg__breaker_config_defaults(&c);
    c.preset = PGG_BREAKER_PRESET_GOBREAKER;
    start(&c);
    calls(F, 5);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(5, 0, 5, 0, 0, 5);
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(6, 1, 5, 0, 1, 0);
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(7, 1, 6, 0, 0, 1);

    calls(F, 5); /* 6 consecutive failures */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    cr_assert_eq(stats().requests, 0);
    cr_assert_not(call(S));
    cr_assert_not(call(F));
    cr_assert_eq(stats().requests, 0);

    NOW += SEC(60) - MS(1);
    cr_assert_eq(stats().state, PGG_BREAKER_OPEN);
    NOW += SEC(1); /* over Timeout */
    cr_assert_eq(stats().state, PGG_BREAKER_HALF_OPEN);

    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    cr_assert_eq(stats().requests, 0);

    NOW += SEC(60) + 1; /* timeout + 1 ns */
    cr_assert_eq(stats().state, PGG_BREAKER_HALF_OPEN);
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(0, 0, 0, 0, 0, 0);
    cr_assert_eq(pgg__breaker_tick(&B, NOW), PGG_TIME_NEVER, "no interval: no expiry");
    stop();
}

/* Half-open comes strictly after Timeout: at exactly Timeout it is open. */
UTest(breaker, gobreaker_v2_half_open_strictly_after_timeout)
{
    pgg_breaker_config c;

    pgg__breaker_config_defaults(&c);
    c.preset = PGG_BREAKER_PRESET_GOBREAKER;
    c.gobreaker.timeout_ms = 1000;
    start(&c);
    calls(F, 6);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    NOW += SEC(1);
    cr_assert_not(call(S), "admitted at exactly Timeout");
    cr_assert_eq(stats().state, PGG_BREAKER_OPEN);
    NOW += 1;
    cr_assert(call(S));
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    stop();
}

/* gobreaker v2 TestCustomCircuitBreaker, exclusions included. */
UTest(breaker, gobreaker_v2_custom_circuit_breaker)
{
    pgg_breaker_config c = gb_custom(0);
    pgg_ticket later;
    int i;

    start(&c);
    for (i = 0; i < 5; i++) {
        cr_assert(call(S));
        cr_assert(call(F));
        cr_assert(call(I));
    }
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(15, 5, 5, 5, 0, 1);

    NOW += SEC(30) - MS(1);
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(16, 6, 5, 5, 1, 0);

    NOW += SEC(1); /* over Interval */
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(1, 0, 1, 0, 0, 1);

    calls(S, 1);
    calls(F, 1); /* failure ratio 2/3 >= 0.6 */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    cr_assert_eq(stats().requests, 0);
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_TRIP_PREDICATE);

    NOW += SEC(90) + 1;
    cr_assert_eq(stats().state, PGG_BREAKER_HALF_OPEN);
    expect_event(1, PGG_BREAKER_OPEN, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_REASON_OPEN_ELAPSED);

    /* Excluded requests are neutral in half-open: more than MaxRequests pass. */
    calls(I, 4);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    /* The first real failure reopens it. */
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_PROBES_FAILED);

    NOW += SEC(90) + 1;
    cr_assert_eq(stats().state, PGG_BREAKER_HALF_OPEN);
    calls(S, 2);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    gb_counts(2, 2, 0, 0, 2, 0);

    cr_assert(pgg__breaker_allow(&B, NOW, &later)); /* succeedLater */
    gb_counts(3, 2, 0, 0, 2, 0);
    cr_assert_not(call(S), "over MaxRequests");
    NOW += MS(100);
    pgg__breaker_record(&B, later, S, MS(100), NOW);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(0, 0, 0, 0, 0, 0);
    expect_event(4, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_CLOSED, PGG_BREAKER_REASON_PROBES_PASSED);
    /* expiry is set again: the next clear is one Interval away. */
    cr_assert_eq(pgg__breaker_tick(&B, NOW), NOW + SEC(30) + 1);
    stop();
}

/*
 * gobreaker v2 TestRollingWindowCircuitBreaker: Interval 30 s in 3 s buckets,
 * results counted in the bucket their request was admitted in.
 */
UTest(breaker, gobreaker_v2_rolling_window_circuit_breaker)
{
    pgg_breaker_config c = gb_custom(3000);
    pgg_ticket later;
    int i;

    start(&c);
    for (i = 0; i < 5; i++) {
        cr_assert(call(S));
        cr_assert(call(F));
        cr_assert(call(I));
    }
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(15, 5, 5, 5, 0, 1);
    gb_bucket(0, 15, 5, 5, 5, 0, 1);

    NOW += SEC(3);
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(16, 6, 5, 5, 1, 0);
    gb_bucket(1, 15, 5, 5, 5, 0, 1);
    gb_bucket(0, 1, 1, 0, 0, 1, 0);

    NOW += SEC(2);
    calls(S, 1);
    calls(I, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(18, 7, 5, 6, 2, 0);
    gb_bucket(1, 15, 5, 5, 5, 0, 1);
    gb_bucket(0, 3, 2, 0, 1, 2, 0);

    NOW += SEC(2);
    calls(I, 1); /* the request that moves the window on a bucket */
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(20, 8, 5, 7, 3, 0);
    gb_bucket(2, 15, 5, 5, 5, 0, 1);
    gb_bucket(1, 3, 2, 0, 1, 2, 0);
    gb_bucket(0, 2, 1, 0, 1, 1, 0);

    NOW += SEC(2);
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(21, 8, 6, 7, 0, 1);
    gb_bucket(3, 15, 5, 5, 5, 0, 1);
    gb_bucket(2, 3, 2, 0, 1, 2, 0);
    gb_bucket(1, 2, 1, 0, 1, 1, 0);
    gb_bucket(0, 1, 0, 1, 0, 0, 1);

    /* Fill all the buckets. */
    for (i = 0; i < 6; i++) {
        NOW += SEC(3);
        calls(S, 1);
        calls(F, 1);
        gb_counts(23 + 2 * (uint64_t)i, 9 + (uint64_t)i, 7 + (uint64_t)i, 7, 0, 1);
    }

    /* The first bucket is discarded. */
    NOW += SEC(3);
    calls(F, 1);
    gb_counts(19, 9, 8, 2, 0, 2);
    for (i = 0; i < 5; i++) {
        calls(F, 1);
        gb_counts(20 + (uint64_t)i, 9, 9 + (uint64_t)i, 2, 0, 3 + (uint64_t)i);
    }
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    calls(F, 1); /* failure rate 14/23 > 0.6 */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_TRIP_PREDICATE);

    NOW += SEC(90) + 1;
    cr_assert_eq(stats().state, PGG_BREAKER_HALF_OPEN);
    expect_event(1, PGG_BREAKER_OPEN, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_REASON_OPEN_ELAPSED);
    calls(S, 2);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    gb_counts(2, 2, 0, 0, 2, 0);
    cr_assert(pgg__breaker_allow(&B, NOW, &later));
    gb_counts(3, 2, 0, 0, 2, 0);
    cr_assert_not(call(S), "over MaxRequests");
    NOW += MS(100);
    pgg__breaker_record(&B, later, S, MS(100), NOW);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(0, 0, 0, 0, 0, 0);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_CLOSED, PGG_BREAKER_REASON_PROBES_PASSED);
    /* A rolling window has no expiry. */
    cr_assert_eq(pgg__breaker_tick(&B, NOW), PGG_TIME_NEVER);
    stop();
}

/*
 * Issue 14: in gobreaker's rolling window a result counts in the bucket its
 * request was admitted in, and not at all once that bucket has left the
 * window.
 */
UTest(breaker, gobreaker_v2_rolling_window_counts_results_by_admission)
{
    pgg_breaker_config c = gb_custom(3000);
    pgg_ticket early, old;

    start(&c);
    cr_assert(pgg__breaker_allow(&B, NOW, &early));
    cr_assert(pgg__breaker_allow(&B, NOW, &old));
    NOW += SEC(3);
    calls(S, 1);
    pgg__breaker_record(&B, early, F, SEC(3), NOW);
    gb_bucket(1, 2, 0, 1, 0, 0, 1);
    gb_bucket(0, 1, 1, 0, 0, 1, 0);
    gb_counts(3, 1, 1, 0, 0, 1);
    /*
     * 30 s later the admission bucket has left: the result is not counted.
     * The success's run reads 0, not 1: the late failure came after it, and
     * gobreaker's subtract only shortens a run that spans every bucket.
     */
    NOW += SEC(27);
    gb_counts(1, 1, 0, 0, 0, 0);
    pgg__breaker_record(&B, old, F, SEC(30), NOW);
    gb_counts(1, 1, 0, 0, 0, 0);
    cr_assert_eq(stats().stale, 1);
    stop();
}

/* gobreaker v2 TestGeneration: a request from an ended interval has no effect. */
UTest(breaker, gobreaker_v2_generation)
{
    pgg_breaker_config c = gb_custom(0);
    pgg_ticket later;

    start(&c);
    NOW += SEC(29);
    calls(S, 1);
    cr_assert(pgg__breaker_allow(&B, NOW, &later)); /* succeedLater 1.5 s */
    NOW += MS(500);
    gb_counts(2, 1, 0, 0, 1, 0);
    NOW += MS(500) + 1; /* over Interval (its real clock passes 30 s by a hair) */
    cr_assert_eq(stats().state, PGG_BREAKER_CLOSED);
    gb_counts(0, 0, 0, 0, 0, 0);
    NOW += MS(500);
    pgg__breaker_record(&B, later, S, MS(1500), NOW);
    gb_counts(0, 0, 0, 0, 0, 0);
    cr_assert_eq(stats().stale, 1);
    stop();
}

/*
 * gobreaker v2 TestCustomIsSuccessful: IsSuccessful is pgguard's classifier,
 * which hands the breaker an outcome; failures judged successes never trip.
 */
UTest(breaker, gobreaker_v2_custom_is_successful)
{
    pgg_breaker_config c;

    pgg__breaker_config_defaults(&c);
    c.preset = PGG_BREAKER_PRESET_GOBREAKER;
    start(&c);
    calls(S, 5); /* five errors the classifier called successes */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    gb_counts(5, 5, 0, 0, 5, 0);
    pgg__breaker_reset(&B, NOW); /* cb.counts.clear() */
    calls(F, 6);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    stop();
}

/* gobreaker v2 TestIsExcludedAndIsSuccessfulCombination. */
UTest(breaker, gobreaker_v2_is_excluded_and_is_successful)
{
    pgg_breaker_config c;

    pgg__breaker_config_defaults(&c);
    c.preset = PGG_BREAKER_PRESET_GOBREAKER;
    start(&c);
    calls(I, 3);
    gb_counts(3, 0, 0, 3, 0, 0);
    calls(S, 3);
    gb_counts(6, 3, 0, 3, 3, 0);
    calls(F, 2);
    gb_counts(8, 3, 2, 3, 0, 2);
    stop();
}

#include <pthread.h>

enum { GB_THREADS = 4, GB_REQS = 5000 };

static void *gb_parallel_worker(void *arg)
{
    pgg_ticket t;
    int i;

    (void)arg;
    for (i = 0; i < GB_REQS; i++) {
        if (!pgg__breaker_allow(&B, NOW, &t))
            return (void *)1;
        pgg__breaker_record(&B, t, i % 2 ? I : S, 0, NOW);
    }
    return NULL;
}

/*
 * gobreaker v2 TestCircuitBreakerInParallel (and its rolling twin): threads
 * alternating successes and exclusions leave exact Counts.
 */
UTest(breaker, gobreaker_v2_circuit_breaker_in_parallel)
{
    pgg_breaker_config c = gb_custom(0);
    pthread_t th[GB_THREADS];
    void *rv;
    uint64_t total = (uint64_t)GB_THREADS * GB_REQS;
    int i, rolling;

    for (rolling = 0; rolling < 2; rolling++) {
        c = gb_custom(rolling ? 3000 : 0);
        start(&c);
        for (i = 0; i < GB_THREADS; i++)
            cr_assert_eq(pthread_create(&th[i], NULL, gb_parallel_worker, NULL), 0);
        for (i = 0; i < GB_THREADS; i++) {
            cr_assert_eq(pthread_join(th[i], &rv), 0);
            cr_assert_null(rv, "a request was refused");
        }
        gb_counts(total, total / 2, 0, total / 2, total / 2, 0);
        stop();
    }
}

/* ========================================== presets: resilience4j */

/*
 * The tests below reproduce resilience4j's CircuitBreakerStateMachineTest
 * (resilience4j-circuitbreaker, internal/) and its automatic-transition
 * test on the fake clock.  Its tryAcquirePermission() is allow(); onSuccess
 * / onError(duration) is record() with that duration; an ignored exception
 * is an IGNORED outcome; transitionTo*State() are pgguard's operator calls.
 * Its MockClock advanceBySeconds(n) is NOW += SEC(n).
 */

/* Its setUp(): TIME_BASED window of 20 s, minimumNumberOfCalls 5, failure
 * and slow-call thresholds 50 %, slow above 4 s, 4 permitted calls in
 * half-open for at most 1 s, 5 s in open. */
static pgg_breaker_config r4j_setup(void)
{
    pgg_breaker_config c;

    pgg__breaker_config_defaults(&c);
    c.preset = PGG_BREAKER_PRESET_RESILIENCE4J;
    c.resilience4j.sliding_window_type = PGG_R4J_TIME_BASED;
    c.resilience4j.sliding_window_size = 20;
    c.resilience4j.minimum_number_of_calls = 5;
    c.resilience4j.failure_rate_threshold = 50;
    c.resilience4j.slow_call_rate_threshold = 50;
    c.resilience4j.slow_call_duration_threshold_ms = 4000;
    c.resilience4j.permitted_calls_in_half_open_state = 4;
    c.resilience4j.max_wait_duration_in_half_open_state_ms = 1000;
    c.resilience4j.wait_duration_in_open_state_ms = 5000;
    return c;
}

/* Rejections since the last r4j_mark(): resilience4j counts them per state. */
static uint64_t r4j_rejected_base;

static void r4j_mark(void)
{
    r4j_rejected_base = stats().rejected;
}

/*
 * assertCircuitBreakerMetricsEqualTo(failureRate, successfulCalls,
 * bufferedCalls, failedCalls, notPermittedCalls): the closed window in
 * closed and open, the probes in half-open (resilience4j's half-open
 * metrics, whose minimum is min(minimumNumberOfCalls, permitted)).
 */
static void r4j_metrics(double rate, uint64_t succ, uint64_t buffered, uint64_t failed,
                        uint64_t not_permitted)
{
    pgg_breaker_stats s = stats();
    uint64_t g_succ, g_buf, g_fail;
    double g_rate;

    if (s.state == PGG_BREAKER_HALF_OPEN) {
        g_succ = s.probe_successes;
        g_fail = s.probe_failures;
        g_buf = g_succ + g_fail;
        g_rate = g_buf == 0 || g_buf < B.half_open_decide ? -1.0
                                                          : (double)g_fail * 100.0 / (double)g_buf;
    } else {
        g_buf = s.window.calls;
        g_fail = s.window.failures;
        g_succ = g_buf - g_fail;
        g_rate = s.failure_rate;
    }
    cr_assert(fabs(g_rate - rate) < 1e-9 && g_succ == succ && g_buf == buffered &&
                  g_fail == failed && s.rejected - r4j_rejected_base == not_permitted,
              "metrics {%g,%llu,%llu,%llu,%llu} != {%g,%llu,%llu,%llu,%llu}", g_rate,
              (unsigned long long)g_succ, (unsigned long long)g_buf,
              (unsigned long long)g_fail,
              (unsigned long long)(s.rejected - r4j_rejected_base), rate,
              (unsigned long long)succ, (unsigned long long)buffered,
              (unsigned long long)failed, (unsigned long long)not_permitted);
}

static void r4j_open_then_half_open(void)
{
    cr_assert_eq(pgg__breaker_transition(&B, PGG_BREAKER_OPEN, NOW), PGG_OK);
    cr_assert_eq(pgg__breaker_transition(&B, PGG_BREAKER_HALF_OPEN, NOW), PGG_OK);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    r4j_mark();
}

UTest(breaker, resilience4j_preset_settings)
{
    pgg_breaker_config c, e;

    /* CircuitBreakerConfig.ofDefaults(). */
    pgg__breaker_config_defaults(&c);
    c.preset = PGG_BREAKER_PRESET_RESILIENCE4J;
    cr_assert_null(pgg__breaker_config_check(&c));
    pgg__breaker_config_effective(&c, &e);
    cr_assert_eq(e.window_type, PGG_WINDOW_COUNT);
    cr_assert_eq(e.window_size, 100);
    cr_assert_eq(e.min_calls, 100);
    cr_assert_eq(e.failure_rate, 50);
    cr_assert_eq(e.slow_call_rate, 100);
    cr_assert_eq(e.slow_call_duration_ms, 60000);
    cr_assert_eq(e.open_ms, 60000);
    cr_assert_eq(e.open_multiplier, 1);
    cr_assert_eq(e.open_jitter, 0);
    cr_assert_eq(e.half_open_probes, 10);
    cr_assert_eq(e.half_open_successes, 0);
    cr_assert_eq(e.half_open_max_ms, 0);
    cr_assert_eq(e.consecutive_failures, 0);
    cr_assert(e.open_strict);
    cr_assert(e.half_open_on_call_only);
    cr_assert(e.late_results_count);

    c = r4j_setup();
    pgg__breaker_config_effective(&c, &e);
    cr_assert_eq(e.window_type, PGG_WINDOW_TIME);
    cr_assert_eq(e.window_size, 20);
    cr_assert_eq(e.window_bucket_ms, 1000);
    cr_assert(e.window_aligned);
    cr_assert_not(e.window_by_admission);
    c.resilience4j.automatic_transition = true;
    pgg__breaker_config_effective(&c, &e);
    cr_assert_not(e.half_open_on_call_only);
    cr_assert_not(e.open_strict, "its scheduler fires at the end of the wait");

    /* resilience4j rejects a threshold of 0; pgguard's "0 is off" does not apply. */
    c.resilience4j.failure_rate_threshold = 0;
    cr_assert_not_null(strstr(pgg__breaker_config_check(&c),
                              "breaker.resilience4j.failure_rate_threshold"));
    c = r4j_setup();
    c.resilience4j.slow_call_rate_threshold = 0;
    cr_assert_not_null(strstr(pgg__breaker_config_check(&c),
                              "breaker.resilience4j.slow_call_rate_threshold"));
    c = r4j_setup();
    c.resilience4j.permitted_calls_in_half_open_state = 0;
    cr_assert_not_null(strstr(pgg__breaker_config_check(&c),
                              "breaker.resilience4j.permitted_calls_in_half_open_state"));
}

/* shouldOpenAfterFailureRateThresholdExceeded */
UTest(breaker, resilience4j_open_after_failure_rate_threshold_exceeded)
{
    pgg_breaker_config c = r4j_setup();

    start(&c);
    r4j_mark();
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    r4j_metrics(-1, 0, 0, 0, 0);
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    r4j_metrics(-1, 0, 1, 1, 0);
    calls(F, 1);
    r4j_metrics(-1, 0, 2, 2, 0);
    calls(F, 1);
    r4j_metrics(-1, 0, 3, 3, 0);
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    r4j_metrics(-1, 1, 4, 3, 0);
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_FAILURE_RATE);
    r4j_metrics(60, 2, 5, 3, 0);
    cr_assert_not(call(S));
    r4j_metrics(60, 2, 5, 3, 1);
    stop();
}

/* shouldOpenAfterFailureRateThresholdExceeded2: one call a second. */
UTest(breaker, resilience4j_open_after_failure_rate_threshold_exceeded_2)
{
    pgg_breaker_config c = r4j_setup();

    start(&c);
    calls(S, 1);
    NOW += SEC(1);
    calls(S, 1);
    NOW += SEC(1);
    calls(S, 1);
    NOW += SEC(1);
    calls(F, 1);
    NOW += SEC(1);
    calls(F, 1); /* 2 of 5: 40 % */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    NOW += SEC(1);
    cr_assert_eq(stats().state, PGG_BREAKER_CLOSED);
    calls(F, 1); /* 3 of 6: 50 % */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    stop();
}

/* shouldOpenAfterSlowCallRateThresholdExceeded */
UTest(breaker, resilience4j_open_after_slow_call_rate_threshold_exceeded)
{
    pgg_breaker_config c = r4j_setup();

    start(&c);
    cr_assert(call_d(F, SEC(5)));
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    cr_assert(call_d(S, SEC(5)));
    cr_assert(call_d(F, MS(100)));
    cr_assert(call_d(S, MS(100)));
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    cr_assert(call_d(S, SEC(5))); /* 3 of 5 slow: 60 %; failures 40 % */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(0, PGG_BREAKER_CLOSED, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_SLOW_CALL_RATE);
    cr_assert_eq(stats().window.calls, 5);
    cr_assert_eq(stats().window.slow, 3);
    cr_assert_eq(stats().slow_call_rate, 60);
    stop();
}

/*
 * shouldOpenAfterSlowCallRateThresholdExceededUsingMockClock: the clock
 * moves while each call runs (decorateConsumer(advanceBySeconds)), so each
 * result lands in the second it completes in.
 */
UTest(breaker, resilience4j_open_after_slow_call_rate_using_mock_clock)
{
    static const int secs[] = {5, 5, 1, 1, 5};
    static const uint64_t slow[] = {1, 2, 2, 2, 3};
    pgg_breaker_config c = r4j_setup();
    pgg_ticket t;
    int i;

    start(&c);
    for (i = 0; i < 5; i++) {
        cr_assert(pgg__breaker_allow(&B, NOW, &t));
        NOW += SEC(secs[i]);
        pgg__breaker_record(&B, t, S, SEC(secs[i]), NOW);
        cr_assert_eq(stats().window.calls, (uint64_t)i + 1);
        cr_assert_eq(stats().window.slow, slow[i]);
        cr_assert_eq(state(), i < 4 ? PGG_BREAKER_CLOSED : PGG_BREAKER_OPEN);
    }
    cr_assert_eq(stats().slow_call_rate, 60);
    stop();
}

/*
 * shouldTransitionToHalfOpenAfterWaitDuration: without the automatic
 * transition only a call ends the wait, strictly after it; reading the
 * state (tick, stats) leaves it open.
 */
UTest(breaker, resilience4j_half_open_after_wait_duration)
{
    pgg_breaker_config c = r4j_setup();

    start(&c);
    pgg__breaker_transition(&B, PGG_BREAKER_OPEN, NOW);
    r4j_mark();
    r4j_metrics(-1, 0, 0, 0, 0);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    cr_assert_not(call(S));
    NOW += SEC(3);
    cr_assert_eq(stats().state, PGG_BREAKER_OPEN);
    cr_assert_not(call(S));
    r4j_metrics(-1, 0, 0, 0, 2);
    NOW += SEC(2); /* exactly the wait: clock.instant().isAfter() is false */
    cr_assert_eq(pgg__breaker_tick(&B, NOW), PGG_TIME_NEVER, "nothing but a call ends it");
    cr_assert_not(call(S));
    NOW += SEC(1);
    cr_assert_eq(stats().state, PGG_BREAKER_OPEN, "a state read does not end the wait");
    r4j_mark();
    cr_assert(pgg__breaker_allow(&B, NOW, &(pgg_ticket){0}));
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    expect_event(1, PGG_BREAKER_OPEN, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_REASON_OPEN_ELAPSED);
    r4j_metrics(-1, 0, 0, 0, 0);
    stop();
}

/*
 * CircuitBreakerAutoTransitionStateMachineTest.testAutoTransition: with
 * automaticTransitionFromOpenToHalfOpenEnabled the scheduler moves it to
 * half-open at the end of the wait (2 s), no call needed: tick() does.
 */
UTest(breaker, resilience4j_auto_transition)
{
    pgg_breaker_config c;

    pgg__breaker_config_defaults(&c);
    c.preset = PGG_BREAKER_PRESET_RESILIENCE4J;
    c.resilience4j.failure_rate_threshold = 50;
    c.resilience4j.sliding_window_size = 5;
    c.resilience4j.minimum_number_of_calls = 5;
    c.resilience4j.permitted_calls_in_half_open_state = 3;
    c.resilience4j.automatic_transition = true;
    c.resilience4j.wait_duration_in_open_state_ms = 2000;
    start(&c);
    pgg__breaker_transition(&B, PGG_BREAKER_OPEN, NOW);
    cr_assert_eq(pgg__breaker_tick(&B, NOW), NOW + SEC(2), "scheduled after 2000 ms");
    NOW += SEC(2);
    pgg__breaker_tick(&B, NOW);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    /* transitionToForcedOpenState cancels it: forced-open never half-opens. */
    pgg__breaker_transition(&B, PGG_BREAKER_OPEN, NOW);
    pgg__breaker_force_open(&B, NOW);
    NOW += SEC(10);
    pgg__breaker_tick(&B, NOW);
    cr_assert_eq(state(), PGG_BREAKER_FORCED_OPEN);
    stop();
}

/* shouldOnlyPermitFourCallsInHalfOpenState and
 * shouldThrowCallNotPermittedExceptionWhenNotFurtherTestCallsArePermitted */
UTest(breaker, resilience4j_only_permit_four_calls_in_half_open)
{
    pgg_breaker_config c = r4j_setup();
    pgg_ticket t;
    int round, i;

    start(&c);
    for (round = 0; round < 2; round++) {
        r4j_open_then_half_open();
        for (i = 0; i < 4; i++)
            cr_assert(pgg__breaker_allow(&B, NOW, &t));
        cr_assert_not(pgg__breaker_allow(&B, NOW, &t));
        cr_assert_not(pgg__breaker_allow(&B, NOW, &t));
        cr_assert_eq(stats().rejected - r4j_rejected_base, 2);
    }
    stop();
}

/* shouldIncreaseCounterOnReleasePermission: an ignored result gives the
 * permit back (releasePermission). */
UTest(breaker, resilience4j_release_permission)
{
    pgg_breaker_config c = r4j_setup();
    pgg_ticket t[4], u;
    int i;

    start(&c);
    r4j_open_then_half_open();
    for (i = 0; i < 4; i++)
        cr_assert(pgg__breaker_allow(&B, NOW, &t[i]));
    cr_assert_not(pgg__breaker_allow(&B, NOW, &u));
    cr_assert_not(pgg__breaker_allow(&B, NOW, &u));
    pgg__breaker_record(&B, t[0], I, 0, NOW);
    cr_assert(pgg__breaker_allow(&B, NOW, &u));
    stop();
}

/* shouldTransitionBackToOpenStateWhenFailureRateIsAboveThreshold */
UTest(breaker, resilience4j_back_to_open_when_failure_rate_above_threshold)
{
    pgg_breaker_config c = r4j_setup();

    start(&c);
    r4j_open_then_half_open();
    r4j_metrics(-1, 0, 0, 0, 0);
    calls(F, 2);
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    r4j_metrics(-1, 1, 3, 2, 0);
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_FAILURE_RATE);
    stop();
}

/* shouldTransitionBackToOpenStateWhenSlowCallRateIsAboveThreshold */
UTest(breaker, resilience4j_back_to_open_when_slow_call_rate_above_threshold)
{
    pgg_breaker_config c = r4j_setup();

    start(&c);
    r4j_open_then_half_open();
    cr_assert(call_d(S, SEC(5)));
    cr_assert(call_d(S, SEC(5)));
    cr_assert(call_d(S, SEC(5)));
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    cr_assert(call_d(S, SEC(1)));
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_SLOW_CALL_RATE);
    stop();
}

/* shouldTransitionBackToClosedStateWhenFailureIsBelowThreshold */
UTest(breaker, resilience4j_back_to_closed_when_failure_rate_below_threshold)
{
    pgg_breaker_config c = r4j_setup();

    start(&c);
    r4j_open_then_half_open();
    r4j_metrics(-1, 0, 0, 0, 0);
    calls(F, 1);
    calls(S, 3); /* 25 % */
    cr_assert(call(S));
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_CLOSED, PGG_BREAKER_REASON_PROBES_PASSED);
    r4j_metrics(-1, 1, 1, 0, 0);
    stop();
}

/* shouldReleasePermissionWhenExceptionIgnored */
UTest(breaker, resilience4j_release_permission_when_exception_ignored)
{
    pgg_breaker_config c = r4j_setup();

    start(&c);
    r4j_open_then_half_open();
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    r4j_metrics(-1, 1, 1, 0, 0);
    calls(S, 1);
    r4j_metrics(-1, 2, 2, 0, 0);
    calls(S, 1);
    r4j_metrics(-1, 3, 3, 0, 0);
    calls(I, 1); /* NumberFormatException: ignored, permission released */
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    r4j_metrics(-1, 3, 3, 0, 0);
    calls(F, 1); /* 1 of 4: 25 % */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    r4j_metrics(-1, 0, 0, 0, 0);
    stop();
}

/* shouldIgnoreExceptionsAndThenTransitionToClosed */
UTest(breaker, resilience4j_ignore_exceptions_then_closed)
{
    pgg_breaker_config c = r4j_setup();
    int i;

    start(&c);
    r4j_open_then_half_open();
    for (i = 0; i < 4; i++) {
        calls(I, 1);
        cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    }
    r4j_metrics(-1, 0, 0, 0, 0);
    calls(S, 3);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    r4j_metrics(-1, 3, 3, 0, 0);
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    r4j_metrics(-1, 0, 0, 0, 0);
    stop();
}

/* shouldForceOpenCircuitBreaker */
UTest(breaker, resilience4j_force_open)
{
    pgg_breaker_config c = r4j_setup();

    start(&c);
    r4j_mark();
    pgg__breaker_force_open(&B, NOW);
    cr_assert_eq(state(), PGG_BREAKER_FORCED_OPEN);
    cr_assert_not(call(S));
    NOW += SEC(6);
    cr_assert_not(call(S));
    cr_assert_eq(stats().state, PGG_BREAKER_FORCED_OPEN);
    r4j_metrics(-1, 0, 0, 0, 2);
    stop();
}

/* shouldResetMetrics, shouldResetClosedState, shouldResetToClosedState */
UTest(breaker, resilience4j_reset)
{
    pgg_breaker_config c = r4j_setup();

    start(&c);
    r4j_mark();
    calls(S, 1);
    calls(F, 1);
    r4j_metrics(-1, 1, 2, 1, 0);
    pgg__breaker_reset(&B, NOW);
    r4j_metrics(-1, 0, 0, 0, 0);
    pgg__breaker_transition(&B, PGG_BREAKER_OPEN, NOW);
    pgg__breaker_reset(&B, NOW);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    stop();
}

/* shouldRecordMetricsInMetricsOnlyState */
UTest(breaker, resilience4j_metrics_only_records_never_trips)
{
    pgg_breaker_config c = r4j_setup();

    start(&c);
    pgg__breaker_metrics_only(&B, NOW);
    r4j_mark();
    r4j_metrics(-1, 0, 0, 0, 0);
    calls(F, 3);
    r4j_metrics(-1, 0, 3, 3, 0);
    calls(S, 2);
    cr_assert_eq(state(), PGG_BREAKER_METRICS_ONLY);
    r4j_metrics(60, 2, 5, 3, 0);
    cr_assert_eq(stats().trips_suppressed, 1);
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_METRICS_ONLY);
    stop();
}

/* shouldDisableCircuitBreaker */
UTest(breaker, resilience4j_disable)
{
    pgg_breaker_config c = r4j_setup();

    start(&c);
    pgg__breaker_disable(&B, NOW);
    r4j_mark();
    calls(S, 1);
    calls(F, 4);
    cr_assert_eq(state(), PGG_BREAKER_DISABLED);
    r4j_metrics(-1, 0, 0, 0, 0);
    stop();
}

/* circuitBreakerTransitionsToOpenAfterWaitDurationInHalfOpenState (1 s). */
UTest(breaker, resilience4j_open_after_max_wait_in_half_open)
{
    pgg_breaker_config c = r4j_setup();

    start(&c);
    r4j_open_then_half_open();
    NOW += MS(999);
    pgg__breaker_tick(&B, NOW);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    NOW += MS(1);
    pgg__breaker_tick(&B, NOW);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    expect_event(2, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_HALF_OPEN_TIMEOUT);
    stop();
}

/*
 * CircuitBreakerMetrics.forHalfOpen: a COUNT_BASED window of the permitted
 * calls whose minimum is min(minimumNumberOfCalls, permitted): with a
 * minimum of 2 and 3 permitted calls, 2 results decide.
 */
UTest(breaker, resilience4j_half_open_decides_at_the_minimum)
{
    pgg_breaker_config c = r4j_setup();

    c.resilience4j.minimum_number_of_calls = 2;
    c.resilience4j.permitted_calls_in_half_open_state = 3;
    start(&c);
    r4j_open_then_half_open();
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    calls(F, 1); /* 1 of 2: 50 % >= 50 */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    NOW += SEC(5) + 1;
    cr_assert(call(S));
    cr_assert(call(S)); /* 0 of 2 */
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    stop();
}

/*
 * resilience4j's OpenState.onError/onSuccess: "the onError event should
 * still be recorded, even if it happened after the state transition".  A
 * call admitted while closed that finishes while open counts in the window
 * the breaker tripped on; one that finishes in half-open counts as a probe.
 */
UTest(breaker, resilience4j_late_results_count_in_the_current_state)
{
    pgg_breaker_config c = r4j_setup();
    pgg_ticket slow_one, later;

    c.resilience4j.minimum_number_of_calls = 2;
    c.resilience4j.permitted_calls_in_half_open_state = 2;
    start(&c);
    cr_assert(pgg__breaker_allow(&B, NOW, &slow_one));
    cr_assert(pgg__breaker_allow(&B, NOW, &later));
    calls(F, 2);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    pgg__breaker_record(&B, slow_one, S, 0, NOW);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    cr_assert_eq(stats().window.calls, 3);
    cr_assert_eq(stats().stale, 0);
    NOW += SEC(5) + 1;
    calls(S, 1);
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);
    pgg__breaker_record(&B, later, F, 0, NOW); /* 1 of 2 failed: 50 % */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    stop();
}

/* A time window's seconds are the clock's seconds: resilience4j's epoch
 * seconds.  Calls 0.9 s into a second and 19.1 s later leave together. */
UTest(breaker, resilience4j_time_window_slides_by_clock_seconds)
{
    pgg_breaker_config c = r4j_setup();

    NOW = T0;
    start(&c);
    NOW = T0 + MS(900);
    calls(F, 4);
    NOW = T0 + SEC(19) + MS(999);
    cr_assert_eq(stats().window.calls, 4);
    NOW = T0 + SEC(20); /* second T0 has left the 20 s window */
    cr_assert_eq(stats().window.calls, 0);
    calls(F, 4);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED, "4 calls are under the minimum of 5");
    stop();
}

/* COUNT_BASED: the last sliding_window_size calls, minimum capped at it. */
UTest(breaker, resilience4j_count_based_window)
{
    pgg_breaker_config c = r4j_setup();

    c.resilience4j.sliding_window_type = PGG_R4J_COUNT_BASED;
    c.resilience4j.sliding_window_size = 5;
    c.resilience4j.minimum_number_of_calls = 10; /* min(10, 5) = 5 */
    start(&c);
    calls(S, 3);
    calls(F, 1);
    cr_assert_eq(state(), PGG_BREAKER_CLOSED);
    calls(F, 1); /* 2 of 5 */
    calls(F, 1); /* the first S leaves: 3 of 5 = 60 % */
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    stop();
}

/* ============================== the trip predicate's counts (issue 14) */

static uint64_t seen_requests, seen_calls;

/* A ReadyToTrip written as gobreaker's README: failures / requests. */
static bool window_ratio_trip(void *ud, const pgg_breaker_counts *c)
{
    (void)ud;
    seen_requests = c->requests;
    seen_calls = c->window.calls;
    return c->requests >= 3 && (double)c->window.failures / (double)c->requests >= 0.6;
}

/*
 * requests used to count the whole closed period, so after a long healthy
 * spell the ratio could not reach 0.6 however sick the host was.  Now it
 * describes the window the failures are counted in, on every window type.
 */
UTest(breaker, trip_predicate_counts_describe_one_window)
{
    static const pgg_window_type types[] = {PGG_WINDOW_COUNT, PGG_WINDOW_TIME};
    pgg_breaker_config c;
    size_t k;
    int i;

    for (k = 0; k < sizeof types / sizeof types[0]; k++) {
        c = cfg_plain();
        c.window_type = types[k];
        c.window_size = 10;
        c.window_bucket_ms = 1000;
        c.trip = window_ratio_trip;
        start(&c);
        for (i = 0; i < 24; i++) {
            calls(S, 1);
            NOW += types[k] == PGG_WINDOW_TIME ? SEC(1) : 0;
        }
        for (i = 0; i < 5; i++) {
            calls(F, 1);
            NOW += types[k] == PGG_WINDOW_TIME ? SEC(1) : 0;
            cr_assert_eq(state(), PGG_BREAKER_CLOSED, "%s: tripped at failure %d",
                         pgg__window_type_name(types[k]), i + 1);
            cr_assert_eq(seen_requests, seen_calls, "%s: %llu requests, window of %llu",
                         pgg__window_type_name(types[k]),
                         (unsigned long long)seen_requests, (unsigned long long)seen_calls);
        }
        calls(F, 1); /* 6 of the 10 calls in the window */
        cr_assert_eq(state(), PGG_BREAKER_OPEN, "%s: 6 of 10 failed", pgg__window_type_name(types[k]));
        cr_assert_eq(seen_requests, 10);
        stop();
    }
}

/* A preset's open time is its library's: a health check does not end it. */
UTest(breaker, presets_ignore_host_answered)
{
    pgg_breaker_config c;
    int k;

    for (k = 0; k < 2; k++) {
        c = k ? r4j_setup() : gb_custom(0);
        start(&c);
        pgg__breaker_transition(&B, PGG_BREAKER_OPEN, NOW);
        cr_assert_not(pgg__breaker_host_answered(&B, NOW));
        cr_assert_not(pgg__breaker_host_back(&B, NOW));
        cr_assert_eq(state(), PGG_BREAKER_OPEN);
        stop();
    }
}

/*
 * resilience4j shouldTransitionToHalfOpenAfterWaitInterval:
 * waitIntervalFunctionInOpenState(IntervalFunction.ofExponentialBackoff(5000L))
 * waits 5 s, then 7.5 s after reopening from half-open (its default
 * multiplier 1.5); closing starts the attempts again.
 */
UTest(breaker, resilience4j_half_open_after_wait_interval)
{
    pgg_breaker_config c;

    pgg__breaker_config_defaults(&c);
    c.preset = PGG_BREAKER_PRESET_RESILIENCE4J;
    c.resilience4j.failure_rate_threshold = 50;
    c.resilience4j.sliding_window_size = 5;
    c.resilience4j.permitted_calls_in_half_open_state = 4;
    c.resilience4j.wait_duration_in_open_state_ms = 5000;
    c.resilience4j.enable_exponential_backoff = true;
    cr_assert_null(pgg__breaker_config_check(&c));
    start(&c);
    pgg__breaker_transition(&B, PGG_BREAKER_OPEN, NOW);
    r4j_mark();
    cr_assert_not(call(S));
    NOW += SEC(3);
    cr_assert_eq(stats().state, PGG_BREAKER_OPEN);
    cr_assert_not(call(S));
    r4j_metrics(-1, 0, 0, 0, 2);
    NOW += SEC(3);
    cr_assert(pgg__breaker_allow(&B, NOW, &(pgg_ticket){0}));
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);

    pgg__breaker_transition(&B, PGG_BREAKER_OPEN, NOW);
    NOW += SEC(6); /* the new wait is 7.5 s */
    cr_assert_eq(stats().state, PGG_BREAKER_OPEN);
    cr_assert_not(call(S));
    NOW += SEC(5);
    cr_assert(call(S));
    cr_assert_eq(state(), PGG_BREAKER_HALF_OPEN);

    /* Closed again: the next opening waits the first interval. */
    pgg__breaker_transition(&B, PGG_BREAKER_CLOSED, NOW);
    pgg__breaker_transition(&B, PGG_BREAKER_OPEN, NOW);
    cr_assert_eq(stats().open_duration_ns, SEC(5));

    /* A maximum caps it. */
    c.resilience4j.exponential_max_wait_ms = 6000;
    c.resilience4j.exponential_backoff_multiplier = 2;
    stop();
    start(&c);
    pgg__breaker_transition(&B, PGG_BREAKER_OPEN, NOW);
    pgg__breaker_transition(&B, PGG_BREAKER_HALF_OPEN, NOW);
    pgg__breaker_transition(&B, PGG_BREAKER_OPEN, NOW);
    cr_assert_eq(stats().open_duration_ns, SEC(6));
    c.resilience4j.exponential_max_wait_ms = 4000;
    cr_assert_not_null(strstr(pgg__breaker_config_check(&c),
                              "breaker.resilience4j.exponential_max_wait_ms"));
    stop();
}

/* ------------------------------------------------- the closed fast path */

static uint64_t wrand64(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void same_breaker_stats(pgg_breaker *a, pgg_breaker *b, int64_t now,
                               int step)
{
    pgg_breaker_stats x, y;

    pgg__breaker_stats(a, now, &x);
    pgg__breaker_stats(b, now, &y);
    cr_assert_eq(x.state, y.state, "step %d: state %s != %s", step,
                 pgg_breaker_state_name(x.state), pgg_breaker_state_name(y.state));
    cr_assert_eq(x.generation, y.generation, "step %d: generation", step);
    cr_assert_eq(x.open_duration_ns, y.open_duration_ns, "step %d: open time", step);
    cr_assert_eq(x.window.calls, y.window.calls, "step %d: calls %llu != %llu", step,
                 (unsigned long long)x.window.calls, (unsigned long long)y.window.calls);
    cr_assert_eq(x.window.failures, y.window.failures, "step %d: failures", step);
    cr_assert_eq(x.window.slow, y.window.slow, "step %d: slow", step);
    cr_assert_eq(x.window.ignored, y.window.ignored, "step %d: ignored", step);
    cr_assert_eq(x.window.consecutive_failures, y.window.consecutive_failures,
                 "step %d: cf", step);
    cr_assert_eq(x.window.consecutive_successes, y.window.consecutive_successes,
                 "step %d: cs", step);
    cr_assert_eq(x.window.requests, y.window.requests, "step %d: window requests %llu != %llu",
                 step, (unsigned long long)x.window.requests,
                 (unsigned long long)y.window.requests);
    cr_assert_eq(x.requests, y.requests, "step %d: requests", step);
    cr_assert_eq(x.admitted, y.admitted, "step %d: admitted %llu != %llu", step,
                 (unsigned long long)x.admitted, (unsigned long long)y.admitted);
    cr_assert_eq(x.rejected, y.rejected, "step %d: rejected", step);
    cr_assert_eq(x.successes, y.successes, "step %d: successes", step);
    cr_assert_eq(x.failures, y.failures, "step %d: failures", step);
    cr_assert_eq(x.ignored, y.ignored, "step %d: ignored", step);
    cr_assert_eq(x.stale, y.stale, "step %d: stale", step);
    cr_assert_eq(x.transitions, y.transitions, "step %d: transitions", step);
    cr_assert_eq(x.probes_admitted, y.probes_admitted, "step %d: probes", step);
}

/*
 * Differential: a count-window breaker, whose closed state admits and
 * records successes without its lock, against the same breaker with an
 * interval too long to ever end (which keeps every call on the locked
 * path and changes nothing else).  The same random calls, results held
 * across transitions, slow and ignored outcomes, ticks and the passing of
 * time give the same breaker, transitions included, at every step.
 */
UTest(breaker, the_closed_fast_path_counts_exactly_as_the_locked_path)
{
    pgg_breaker_config c = cfg_plain();
    pgg_breaker fast, locked;
    pgg_ticket held_f[8], held_l[8];
    int nheld = 0, fast_steps = 0;
    uint64_t seed = 0x2545F4914F6CDD1Du;
    int64_t now = T0;

    c.failure_rate = 50;
    c.slow_call_rate = 60;
    c.slow_call_duration_ms = 100;
    c.min_calls = 10;
    c.window_size = 20;
    c.consecutive_failures = 6;
    c.open_ms = 50;
    c.open_multiplier = 1;
    c.half_open_probes = 3;
    c.half_open_successes = 2;
    cr_assert_eq(pgg__breaker_init(&fast, &c, now, NULL), PGG_OK);
    c.interval_ms = INT64_C(1000000000000);
    cr_assert_eq(pgg__breaker_init(&locked, &c, now, NULL), PGG_OK);

    for (int step = 0; step < 60000; step++) {
        uint64_t r = wrand64(&seed);
        /* Sick phases of 500 steps among healthy ones of 1500. */
        bool sick = step % 2000 >= 1500;
        pgg_outcome o = r % 100 < (sick ? 60u : 2u) ? F : (r >> 8) % 50 == 0 ? I : S;
        int64_t d = (r >> 16) % 100 == 0 ? MS(200) : MS(1);
        pgg_ticket tf, tl;
        bool af, al;
        uint64_t before = atomic_load(&fast.fast) & 0xFFFF;

        now += MS(1) / 4;
        af = pgg__breaker_allow(&fast, now, &tf);
        al = pgg__breaker_allow(&locked, now, &tl);
        cr_assert_eq(af, al, "step %d: admitted by one only", step);
        if (af) {
            if (nheld < 8 && (r >> 24) % 50 == 0) {
                held_f[nheld] = tf;
                held_l[nheld++] = tl;
            } else {
                pgg__breaker_record(&fast, tf, o, d, now);
                pgg__breaker_record(&locked, tl, o, d, now);
                if ((atomic_load(&fast.fast) & 0xFFFF) == before + 1)
                    fast_steps++;
            }
        }
        if (nheld > 0 && (r >> 32) % 40 == 0) {
            nheld--;
            pgg__breaker_record(&fast, held_f[nheld], (r >> 40) % 2 ? S : F, MS(1), now);
            pgg__breaker_record(&locked, held_l[nheld], (r >> 40) % 2 ? S : F, MS(1), now);
        }
        if ((r >> 48) % 500 == 0) {
            pgg__breaker_tick(&fast, now);
            pgg__breaker_tick(&locked, now);
        }
        if (step % 97 == 0 || (r >> 56) % 64 == 0)
            same_breaker_stats(&fast, &locked, now, step);
    }
    same_breaker_stats(&fast, &locked, now, -1);
    /* The comparison meant something: both paths ran, and it tripped. */
    cr_assert_gt(fast_steps, 10000, "only %d results took the fast path", fast_steps);
    cr_assert_eq(atomic_load(&locked.fast) & UINT64_C(0x7FFFFFFF), 0,
                 "the locked breaker took the fast path");
    {
        pgg_breaker_stats s;

        pgg__breaker_stats(&fast, now, &s);
        cr_assert_gt(s.transitions, 20);
        cr_assert_gt(s.stale, 0);
    }
    pgg__breaker_destroy(&fast);
    pgg__breaker_destroy(&locked);
}

/*
 * Admitted without the lock, finished after the breaker opened and closed
 * again: the result belongs to a generation that ended, and counts as
 * stale, not in the new window.
 */
UTest(breaker, a_fast_ticket_across_a_transition_is_stale)
{
    pgg_breaker_config c = cfg_plain();
    pgg_ticket t;
    pgg_breaker_stats s;

    c.consecutive_failures = 2;
    start(&c);
    cr_assert(pgg__breaker_allow(&B, NOW, &t));
    cr_assert(t.flags & PGG_TICKET_FAST, "not admitted by the fast path");
    calls(F, 2);
    cr_assert_eq(state(), PGG_BREAKER_OPEN);
    pgg__breaker_reset(&B, NOW);
    pgg__breaker_record(&B, t, S, 0, NOW);
    pgg__breaker_stats(&B, NOW, &s);
    cr_assert_eq(s.stale, 1);
    cr_assert_eq(s.window.calls, 0);
    cr_assert_eq(s.window.requests, 0);
    cr_assert_eq(s.admitted, 3);
    cr_assert_eq(s.successes, 0);
    stop();
}
