#include "breaker.h"

#include "clock.h"
#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ names */

const char *pgg_breaker_state_name(pgg_breaker_state state)
{
    switch (state) {
    case PGG_BREAKER_CLOSED:
        return "closed";
    case PGG_BREAKER_OPEN:
        return "open";
    case PGG_BREAKER_HALF_OPEN:
        return "half-open";
    case PGG_BREAKER_FORCED_OPEN:
        return "forced-open";
    case PGG_BREAKER_DISABLED:
        return "disabled";
    case PGG_BREAKER_METRICS_ONLY:
        return "metrics-only";
    }
    return "unknown";
}

const char *pgg__breaker_mode_name(pgg_breaker_mode mode)
{
    switch (mode) {
    case PGG_BREAKER_MODE_NORMAL:
        return "normal";
    case PGG_BREAKER_MODE_DISABLED:
        return "disabled";
    case PGG_BREAKER_MODE_METRICS_ONLY:
        return "metrics-only";
    case PGG_BREAKER_MODE_FORCED_OPEN:
        return "forced-open";
    }
    return "unknown";
}

bool pgg__breaker_mode_parse(const char *s, pgg_breaker_mode *out)
{
    static const pgg_breaker_mode all[] = {
        PGG_BREAKER_MODE_NORMAL, PGG_BREAKER_MODE_DISABLED,
        PGG_BREAKER_MODE_METRICS_ONLY, PGG_BREAKER_MODE_FORCED_OPEN};
    char buf[16];
    size_t i, n;

    if (!s || (n = strlen(s)) >= sizeof buf)
        return false;
    for (i = 0; i <= n; i++)
        buf[i] = s[i] == '_' ? '-' : s[i];
    for (i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(buf, pgg__breaker_mode_name(all[i])) == 0) {
            *out = all[i];
            return true;
        }
    }
    return false;
}

const char *pgg__breaker_reason_name(pgg_breaker_reason reason)
{
    switch (reason) {
    case PGG_BREAKER_REASON_FAILURE_RATE:
        return "failure-rate";
    case PGG_BREAKER_REASON_SLOW_CALL_RATE:
        return "slow-call-rate";
    case PGG_BREAKER_REASON_CONSECUTIVE_FAILURES:
        return "consecutive-failures";
    case PGG_BREAKER_REASON_TRIP_PREDICATE:
        return "trip-predicate";
    case PGG_BREAKER_REASON_OPEN_ELAPSED:
        return "open-elapsed";
    case PGG_BREAKER_REASON_PROBES_PASSED:
        return "probes-passed";
    case PGG_BREAKER_REASON_PROBES_FAILED:
        return "probes-failed";
    case PGG_BREAKER_REASON_HALF_OPEN_TIMEOUT:
        return "half-open-timeout";
    case PGG_BREAKER_REASON_FORCED:
        return "forced";
    case PGG_BREAKER_REASON_RESET:
        return "reset";
    case PGG_BREAKER_REASON_MANUAL:
        return "manual";
    case PGG_BREAKER_REASON_HOST_ANSWERED:
        return "host-answered";
    case PGG_BREAKER_REASON_HOST_BACK:
        return "host-back";
    case PGG_BREAKER_REASON_HOST_SILENT:
        return "host-silent";
    }
    return "unknown";
}

const char *pgg__breaker_preset_name(pgg_breaker_preset preset)
{
    switch (preset) {
    case PGG_BREAKER_PRESET_NONE:
        return "none";
    case PGG_BREAKER_PRESET_GOBREAKER:
        return "gobreaker";
    case PGG_BREAKER_PRESET_RESILIENCE4J:
        return "resilience4j";
    }
    return "unknown";
}

/* ----------------------------------------------------------------- config */

void pgg__breaker_config_defaults(pgg_breaker_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->failure_rate = 50.0;
    cfg->slow_call_rate = 100.0;
    cfg->slow_call_duration_ms = 10000;
    cfg->min_calls = 20;
    cfg->window_type = PGG_WINDOW_COUNT;
    cfg->window_size = 100;
    cfg->window_bucket_ms = 1000;
    cfg->consecutive_failures = 5;
    cfg->open_ms = 5000;
    cfg->open_multiplier = 2.0;
    cfg->open_max_ms = 60000;
    cfg->open_jitter = 0.2;
    cfg->half_open_probes = 3;
    cfg->half_open_successes = 3;
    cfg->half_open_max_ms = 30000;
    cfg->healthy_decay_ms = 60000;
    cfg->interval_ms = 0;
    cfg->mode = PGG_BREAKER_MODE_NORMAL;
    cfg->answer_closes = true;
    cfg->silence_opens = true;
    cfg->preset = PGG_BREAKER_PRESET_NONE;

    /* gobreaker v2's zero Settings and default ReadyToTrip. */
    cfg->gobreaker.consecutive_failures = 5;

    /* resilience4j's CircuitBreakerConfig defaults. */
    cfg->resilience4j.sliding_window_type = PGG_R4J_COUNT_BASED;
    cfg->resilience4j.sliding_window_size = 100;
    cfg->resilience4j.minimum_number_of_calls = 100;
    cfg->resilience4j.failure_rate_threshold = 50;
    cfg->resilience4j.slow_call_rate_threshold = 100;
    cfg->resilience4j.slow_call_duration_threshold_ms = 60000;
    cfg->resilience4j.wait_duration_in_open_state_ms = 60000;
    cfg->resilience4j.permitted_calls_in_half_open_state = 10;
    cfg->resilience4j.automatic_transition = false;
    cfg->resilience4j.max_wait_duration_in_half_open_state_ms = 0;
    cfg->resilience4j.enable_exponential_backoff = false;
    cfg->resilience4j.exponential_backoff_multiplier = 1.5; /* IntervalFunction.DEFAULT_MULTIPLIER */
    cfg->resilience4j.exponential_max_wait_ms = 0;
}

/* gobreaker v2's window: ceil(Interval / BucketPeriod) buckets. */
static int64_t gobreaker_buckets(const pgg_gobreaker_settings *g)
{
    /* Written so that no sum can overflow, whatever the C caller set. */
    return g->interval_ms / g->bucket_period_ms +
           (g->interval_ms % g->bucket_period_ms != 0);
}

static void effective_gobreaker(pgg_breaker_config *c)
{
    const pgg_gobreaker_settings *g = &c->gobreaker;
    uint32_t max = g->max_requests ? g->max_requests : 1;
    int64_t n;

    c->failure_rate = 0;
    c->slow_call_rate = 0;
    c->min_calls = 1;
    /* A custom ReadyToTrip replaces the default one. */
    c->consecutive_failures = c->trip ? 0
                              : g->consecutive_failures == UINT32_MAX
                                  ? UINT32_MAX
                                  : g->consecutive_failures + 1;
    c->open_ms = g->timeout_ms > 0 ? g->timeout_ms : 60000;
    c->open_multiplier = 1.0;
    c->open_max_ms = c->open_ms;
    c->open_jitter = 0;
    c->open_strict = true;
    c->half_open_probes = max;
    c->half_open_successes = max;
    c->half_open_max_ms = 0;
    c->healthy_decay_ms = 0;
    c->window_type = PGG_WINDOW_FIXED;
    c->interval_ms = 0;
    if (g->interval_ms > 0 && g->bucket_period_ms <= 0) {
        c->interval_ms = g->interval_ms;
    } else if (g->interval_ms > 0) {
        n = gobreaker_buckets(g);
        c->window_type = PGG_WINDOW_TIME;
        /* Too many is reported by the check, under gobreaker's keys. */
        c->window_size = n > (int64_t)PGG_WINDOW_MAX_SIZE ? PGG_WINDOW_MAX_SIZE + 1
                                                          : (uint32_t)n;
        c->window_bucket_ms = g->bucket_period_ms;
        c->window_by_admission = true;
    }
}

/* resilience4j's uncapped backoff, capped where a wait stops meaning anything. */
#define R4J_NO_MAX_WAIT_MS ((int64_t)7 * 24 * 3600 * 1000)

static void effective_resilience4j(pgg_breaker_config *c)
{
    const pgg_resilience4j_settings *r = &c->resilience4j;

    c->failure_rate = r->failure_rate_threshold;
    c->slow_call_rate = r->slow_call_rate_threshold;
    c->slow_call_duration_ms = r->slow_call_duration_threshold_ms;
    c->min_calls = r->minimum_number_of_calls;
    c->window_size = r->sliding_window_size;
    if (r->sliding_window_type == PGG_R4J_TIME_BASED) {
        c->window_type = PGG_WINDOW_TIME;
        c->window_bucket_ms = 1000; /* epoch seconds */
        c->window_aligned = true;
    } else {
        c->window_type = PGG_WINDOW_COUNT;
    }
    c->consecutive_failures = 0;
    c->open_ms = r->wait_duration_in_open_state_ms;
    c->open_multiplier = 1.0;
    c->open_max_ms = c->open_ms;
    c->open_jitter = 0;
    if (r->enable_exponential_backoff) {
        /*
         * Its attempts count the openings since the last closed state, the
         * k of pgguard's backoff with closing forgiving all (decay 0):
         * wait * multiplier^(attempts - 1), up to the maximum.
         */
        c->open_multiplier = r->exponential_backoff_multiplier;
        c->open_max_ms = r->exponential_max_wait_ms > 0 ? r->exponential_max_wait_ms
                                                        : R4J_NO_MAX_WAIT_MS;
    }
    if (r->automatic_transition) {
        /* Its scheduler fires at the end of the wait. */
        c->open_strict = false;
        c->half_open_on_call_only = false;
    } else {
        c->open_strict = true;
        c->half_open_on_call_only = true;
    }
    c->half_open_probes = r->permitted_calls_in_half_open_state;
    c->half_open_successes = 0;
    c->half_open_decide_early = true;
    c->half_open_max_ms = r->max_wait_duration_in_half_open_state_ms;
    c->healthy_decay_ms = 0;
    c->interval_ms = 0;
    c->late_results_count = true;
}

void pgg__breaker_config_effective(const pgg_breaker_config *in,
                                   pgg_breaker_config *out)
{
    pgg_breaker_config c;

    if (in->preset != PGG_BREAKER_PRESET_GOBREAKER &&
        in->preset != PGG_BREAKER_PRESET_RESILIENCE4J) {
        if (out != in)
            *out = *in;
        return;
    }
    pgg__breaker_config_defaults(&c);
    c.preset = in->preset;
    c.gobreaker = in->gobreaker;
    c.resilience4j = in->resilience4j;
    c.mode = in->mode;
    c.trip = in->trip;
    c.trip_ud = in->trip_ud;
    c.seed = in->seed;
    if (c.preset == PGG_BREAKER_PRESET_GOBREAKER)
        effective_gobreaker(&c);
    else
        effective_resilience4j(&c);
    *out = c;
}

void pgg__breaker_config_gobreaker(pgg_breaker_config *cfg,
                                   uint32_t max_requests, int64_t interval_ms,
                                   int64_t timeout_ms)
{
    pgg__breaker_config_defaults(cfg);
    cfg->preset = PGG_BREAKER_PRESET_GOBREAKER;
    cfg->gobreaker.max_requests = max_requests;
    cfg->gobreaker.interval_ms = interval_ms;
    cfg->gobreaker.timeout_ms = timeout_ms;
    pgg__breaker_config_effective(cfg, cfg);
}

#define MAX_PROBES 1000000u

/* A preset's own settings, named by their keys. */
static const char *check_preset(const pgg_breaker_config *cfg)
{
    const pgg_gobreaker_settings *g = &cfg->gobreaker;
    const pgg_resilience4j_settings *r = &cfg->resilience4j;

    switch (cfg->preset) {
    case PGG_BREAKER_PRESET_NONE:
        return NULL;
    case PGG_BREAKER_PRESET_GOBREAKER:
        if (g->max_requests > MAX_PROBES)
            return "breaker.gobreaker.max_requests must be at most 1000000";
        if (g->consecutive_failures > 1000000)
            return "breaker.gobreaker.consecutive_failures must be at most 1000000";
        if (g->interval_ms > 0 && g->bucket_period_ms > 0 &&
            gobreaker_buckets(g) > (int64_t)PGG_WINDOW_MAX_SIZE)
            return "breaker.gobreaker.interval_ms / breaker.gobreaker.bucket_period_ms "
                   "must give at most 1048576 buckets";
        return NULL;
    case PGG_BREAKER_PRESET_RESILIENCE4J:
        if (r->sliding_window_type != PGG_R4J_COUNT_BASED &&
            r->sliding_window_type != PGG_R4J_TIME_BASED)
            return "breaker.resilience4j.sliding_window_type must be count_based or time_based";
        if (r->sliding_window_size < 1 || r->sliding_window_size > PGG_WINDOW_MAX_SIZE)
            return "breaker.resilience4j.sliding_window_size must be between 1 and 1048576";
        if (r->minimum_number_of_calls < 1)
            return "breaker.resilience4j.minimum_number_of_calls must be at least 1";
        if (!(r->failure_rate_threshold > 0 && r->failure_rate_threshold <= 100))
            return "breaker.resilience4j.failure_rate_threshold must be > 0 and <= 100";
        if (!(r->slow_call_rate_threshold > 0 && r->slow_call_rate_threshold <= 100))
            return "breaker.resilience4j.slow_call_rate_threshold must be > 0 and <= 100";
        if (r->slow_call_duration_threshold_ms < 1)
            return "breaker.resilience4j.slow_call_duration_threshold_ms must be at least 1";
        if (r->wait_duration_in_open_state_ms < 1)
            return "breaker.resilience4j.wait_duration_in_open_state_ms must be at least 1";
        if (r->permitted_calls_in_half_open_state < 1 ||
            r->permitted_calls_in_half_open_state > MAX_PROBES)
            return "breaker.resilience4j.permitted_calls_in_half_open_state "
                   "must be between 1 and 1000000";
        if (r->enable_exponential_backoff &&
            !(r->exponential_backoff_multiplier >= 1 &&
              r->exponential_backoff_multiplier <= 100))
            return "breaker.resilience4j.exponential_backoff_multiplier must be between 1 and 100";
        if (r->enable_exponential_backoff && r->exponential_max_wait_ms > 0 &&
            r->exponential_max_wait_ms < r->wait_duration_in_open_state_ms)
            return "breaker.resilience4j.exponential_max_wait_ms must be 0 (none) or at least "
                   "breaker.resilience4j.wait_duration_in_open_state_ms";
        if (r->max_wait_duration_in_half_open_state_ms < 0)
            return "breaker.resilience4j.max_wait_duration_in_half_open_state_ms "
                   "must be >= 0 (0: no limit)";
        return NULL;
    }
    return "breaker.preset must be none, gobreaker or resilience4j";
}

static const char *check_effective(const pgg_breaker_config *cfg);

const char *pgg__breaker_config_check(const pgg_breaker_config *cfg)
{
    pgg_breaker_config eff;
    const char *why;

    if (!cfg)
        return "breaker config is NULL";
    why = check_preset(cfg);
    if (why)
        return why;
    pgg__breaker_config_effective(cfg, &eff);
    return check_effective(&eff);
}

static const char *check_effective(const pgg_breaker_config *cfg)
{
    /* Written as !(ok) so that NaN fails too. */
    if (!(cfg->failure_rate >= 0 && cfg->failure_rate <= 100))
        return "breaker.failure_rate must be between 0 and 100 (0 turns it off)";
    if (!(cfg->slow_call_rate >= 0 && cfg->slow_call_rate <= 100))
        return "breaker.slow_call_rate must be between 0 and 100 (0 turns it off)";
    if (cfg->slow_call_duration_ms <= 0)
        return "breaker.slow_call_duration_ms must be greater than 0";
    if (cfg->min_calls < 1)
        return "breaker.min_calls must be at least 1";
    if (cfg->window_type != PGG_WINDOW_COUNT && cfg->window_type != PGG_WINDOW_TIME &&
        cfg->window_type != PGG_WINDOW_FIXED)
        return "breaker.window_type must be count, time or fixed";
    if (cfg->window_type != PGG_WINDOW_FIXED &&
        (cfg->window_size < 1 || cfg->window_size > PGG_WINDOW_MAX_SIZE))
        return "breaker.window_size must be between 1 and 1048576";
    if (cfg->window_type == PGG_WINDOW_TIME && cfg->window_bucket_ms <= 0)
        return "breaker.window_bucket_ms must be greater than 0";
    if (cfg->open_ms <= 0)
        return "breaker.open_ms must be greater than 0";
    if (!(cfg->open_multiplier >= 1 && isfinite(cfg->open_multiplier)))
        return "breaker.open_multiplier must be a finite number >= 1";
    if (cfg->open_max_ms < cfg->open_ms)
        return "breaker.open_max_ms must be at least breaker.open_ms";
    if (!(cfg->open_jitter >= 0 && cfg->open_jitter < 1))
        return "breaker.open_jitter must be >= 0 and < 1";
    if (cfg->half_open_probes < 1 || cfg->half_open_probes > MAX_PROBES)
        return "breaker.half_open_probes must be between 1 and 1000000";
    if (cfg->half_open_successes > cfg->half_open_probes)
        return "breaker.half_open_successes must not exceed breaker.half_open_probes";
    if (cfg->half_open_successes == 0 && cfg->failure_rate == 0 && cfg->slow_call_rate == 0)
        return "breaker.half_open_successes 0 judges probes by rate, but "
               "breaker.failure_rate and breaker.slow_call_rate are both off";
    if (cfg->half_open_max_ms < 0)
        return "breaker.half_open_max_ms must be >= 0 (0: no limit)";
    if (cfg->healthy_decay_ms < 0)
        return "breaker.healthy_decay_ms must be >= 0";
    if (cfg->interval_ms < 0)
        return "breaker.interval_ms must be >= 0 (0: never)";
    if (cfg->mode != PGG_BREAKER_MODE_NORMAL && cfg->mode != PGG_BREAKER_MODE_DISABLED &&
        cfg->mode != PGG_BREAKER_MODE_METRICS_ONLY &&
        cfg->mode != PGG_BREAKER_MODE_FORCED_OPEN)
        return "breaker.mode must be normal, disabled, metrics-only or forced-open";
    return NULL;
}

/* ----------------------------------------------------------- transitions */

/* splitmix64: jitter needs spread, not cryptographic strength. */
static double next_unit(pgg_breaker *b)
{
    uint64_t z = (b->rng += UINT64_C(0x9E3779B97F4A7C15));

    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

/* Of n openings, those still held against the host after its time
 * closed. */
static uint32_t decayed(const pgg_breaker *b, uint32_t n, int64_t now)
{
    int64_t steps;

    if (n == 0 || b->decay_ns == 0)
        return 0;
    steps = (now - b->closed_since) / b->decay_ns;
    if (steps <= 0)
        return n;
    return steps >= (int64_t)n ? 0 : n - (uint32_t)steps;
}

static uint32_t decayed_reopens(const pgg_breaker *b, int64_t now)
{
    return decayed(b, b->reopens, now);
}

static int64_t open_duration(pgg_breaker *b, uint32_t k)
{
    double d = (double)b->open_ns * pow(b->cfg.open_multiplier, (double)k);
    double cap = (double)b->open_max_ns;

    if (!(d <= cap)) /* also catches inf */
        d = cap;
    if (b->cfg.open_jitter > 0)
        d -= d * b->cfg.open_jitter * next_unit(b);
    if (d < 1)
        d = 1;
    /* cap <= INT64_MAX, and doubles round, so clamp before converting. */
    return d >= 9.2e18 ? INT64_MAX : (int64_t)d;
}

static void publish(pgg_breaker *b)
{
    atomic_store_explicit(&b->pub_open_until, b->open_until, memory_order_relaxed);
    atomic_store_explicit(&b->pub_state, (uint32_t)b->state, memory_order_release);
}

static void push_event(pgg_breaker *b, pgg_breaker_state from,
                       pgg_breaker_state to, pgg_breaker_reason reason)
{
    pgg_breaker_event *ev;

    if (b->ev_count == PGG_BREAKER_EVENT_QUEUE) {
        /* Keep the newest: the last event tells listeners where we are. */
        b->ev_head = (b->ev_head + 1) % PGG_BREAKER_EVENT_QUEUE;
        b->ev_count--;
        b->events_dropped++;
    }
    ev = &b->events[(b->ev_head + b->ev_count) % PGG_BREAKER_EVENT_QUEUE];
    ev->from = from;
    ev->to = to;
    ev->reason = reason;
    b->ev_count++;
}

static void start_closed_period(pgg_breaker *b, int64_t now)
{
    pgg__window_reset(&b->window, now);
    b->requests = 0;
    b->interval_end = b->interval_ns > 0 ? pgg__time_add(now, b->interval_ns)
                                         : PGG_TIME_NEVER;
}

/* Every change of state goes through here, under the lock. */
static void enter_state(pgg_breaker *b, pgg_breaker_state to,
                        pgg_breaker_reason reason, int64_t now)
{
    pgg_breaker_state from = b->state;
    uint32_t k;

    switch (to) {
    case PGG_BREAKER_OPEN:
        k = from == PGG_BREAKER_CLOSED ? decayed_reopens(b, now) : b->reopens;
        b->open_len = open_duration(b, k);
        /*
         * open_until is the first instant a call may end it: with
         * open_strict, one nanosecond after the open time, so that the
         * lock-free refusal in allow() needs no second comparison.
         */
        b->open_until = pgg__time_add(now, b->open_len + (b->cfg.open_strict ? 1 : 0));
        b->reopens = k == UINT32_MAX ? k : k + 1;
        /* A failed trial is a relapse only if the host had come back. */
        if (from != PGG_BREAKER_HALF_OPEN || b->answered) {
            k = from == PGG_BREAKER_CLOSED ? decayed(b, b->relapses, now) : b->relapses;
            b->relapses = k == UINT32_MAX ? k : k + 1;
        }
        b->answered = false;
        break;
    case PGG_BREAKER_CLOSED:
        b->closed_since = now;
        start_closed_period(b, now);
        break;
    case PGG_BREAKER_METRICS_ONLY:
        start_closed_period(b, now);
        break;
    case PGG_BREAKER_HALF_OPEN:
    case PGG_BREAKER_FORCED_OPEN:
    case PGG_BREAKER_DISABLED:
        break;
    }
    if (to != PGG_BREAKER_OPEN)
        b->open_until = 0;
    b->state = to;
    b->since = now;
    b->generation++;
    b->transitions++;
    b->probes_admitted = b->probe_successes = b->probe_failures = 0;
    b->probe_slow = b->probe_good = b->probe_bad = 0;
    if (to != PGG_BREAKER_CLOSED && to != PGG_BREAKER_METRICS_ONLY)
        b->requests = 0;
    publish(b);
    push_event(b, from, to, reason);
}

/*
 * Time-driven transitions; called under the lock by every entry point.
 * by_call: allow() is asking, the only one that may end an open period
 * under half_open_on_call_only.
 */
static void apply_time(pgg_breaker *b, int64_t now, bool by_call)
{
    switch (b->state) {
    case PGG_BREAKER_OPEN:
        if ((by_call || !b->cfg.half_open_on_call_only) && now >= b->open_until)
            enter_state(b, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_REASON_OPEN_ELAPSED, now);
        break;
    case PGG_BREAKER_HALF_OPEN:
        if (b->half_open_max_ns > 0 && now - b->since >= b->half_open_max_ns)
            enter_state(b, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_HALF_OPEN_TIMEOUT, now);
        break;
    case PGG_BREAKER_CLOSED:
    case PGG_BREAKER_METRICS_ONLY:
        /* Strictly after, as gobreaker's expiry.Before(now). */
        if (now > b->interval_end) {
            b->generation++;
            start_closed_period(b, now);
        }
        break;
    case PGG_BREAKER_FORCED_OPEN:
    case PGG_BREAKER_DISABLED:
        break;
    }
}

/* The condition that trips a closed window, or -1. */
static int trip_reason(pgg_breaker *b, bool failure)
{
    const pgg_window_stats *a = pgg__window_stats(&b->window);
    pgg_breaker_counts counts;

    if (a->calls >= b->min_calls && a->calls > 0) {
        if (b->cfg.failure_rate > 0 &&
            (double)a->failures * 100.0 >= b->cfg.failure_rate * (double)a->calls)
            return PGG_BREAKER_REASON_FAILURE_RATE;
        if (b->cfg.slow_call_rate > 0 &&
            (double)a->slow * 100.0 >= b->cfg.slow_call_rate * (double)a->calls)
            return PGG_BREAKER_REASON_SLOW_CALL_RATE;
    }
    if (b->cfg.consecutive_failures > 0 &&
        a->consecutive_failures >= b->cfg.consecutive_failures)
        return PGG_BREAKER_REASON_CONSECUTIVE_FAILURES;
    if (failure && b->cfg.trip) {
        counts.requests = a->requests;
        counts.window = *a;
        if (b->cfg.trip(b->cfg.trip_ud, &counts))
            return PGG_BREAKER_REASON_TRIP_PREDICATE;
    }
    return -1;
}

static void record_closed(pgg_breaker *b, int64_t mark, pgg_outcome outcome,
                          bool slow, int64_t now)
{
    int reason;

    /*
     * A result whose admission bucket has left the window is not counted,
     * yet a failure still asks the trip rules, as gobreaker's onFailure
     * calls ReadyToTrip either way (the window may have rolled meanwhile).
     */
    if (!pgg__window_record_admitted(&b->window, mark, outcome, slow, now))
        b->stale++;
    if (outcome == PGG_OUTCOME_IGNORED)
        return;
    reason = trip_reason(b, outcome == PGG_OUTCOME_FAILURE);
    if (reason < 0)
        return;
    if (b->state == PGG_BREAKER_METRICS_ONLY)
        b->trips_suppressed++;
    else
        enter_state(b, PGG_BREAKER_OPEN, (pgg_breaker_reason)reason, now);
}

static void record_half_open(pgg_breaker *b, uint32_t flags,
                             pgg_outcome outcome, bool slow, int64_t now)
{
    uint32_t probes = b->cfg.half_open_probes;
    uint32_t need = b->cfg.half_open_successes;
    uint32_t done;
    bool failure = outcome == PGG_OUTCOME_FAILURE;

    if (outcome == PGG_OUTCOME_IGNORED) {
        /* The probe told us nothing: let someone else probe. */
        if ((flags & PGG_TICKET_PERMIT) && b->probes_admitted > 0)
            b->probes_admitted--;
        return;
    }
    if (failure)
        b->probe_failures++;
    else
        b->probe_successes++;
    if (slow)
        b->probe_slow++;
    if (need > 0) {
        /* A host that answers slowly is not healthy yet. */
        if (!failure && !(slow && b->cfg.slow_call_rate > 0)) {
            if (++b->probe_good >= need)
                enter_state(b, PGG_BREAKER_CLOSED, PGG_BREAKER_REASON_PROBES_PASSED, now);
        } else if (++b->probe_bad > probes - need) {
            enter_state(b, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_PROBES_FAILED, now);
        }
        return;
    }
    done = b->probe_successes + b->probe_failures;
    if (done < b->half_open_decide)
        return;
    if (b->cfg.failure_rate > 0 &&
        (double)b->probe_failures * 100.0 >= b->cfg.failure_rate * (double)done)
        enter_state(b, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_FAILURE_RATE, now);
    else if (b->cfg.slow_call_rate > 0 &&
             (double)b->probe_slow * 100.0 >= b->cfg.slow_call_rate * (double)done)
        enter_state(b, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_SLOW_CALL_RATE, now);
    else
        enter_state(b, PGG_BREAKER_CLOSED, PGG_BREAKER_REASON_PROBES_PASSED, now);
}

/* ------------------------------------------------------ the closed fast path */

/*
 * A closed breaker spends nearly all its life admitting calls and hearing
 * that they succeeded, and the mutex pair of each (two per call) was most
 * of its cost.  Those two steps take no lock while it is safe to defer
 * them:
 *   - state closed (not metrics-only), a count window, no interval: time
 *     moves nothing, so a result counts the same whenever it is folded in;
 *   - no success can trip it: for each rate on, its count times 100 is
 *     below threshold x max(calls, min_calls).  Successes that are not slow
 *     only lower the failure and slow counts (a count window drops its
 *     oldest call) and raise the calls, so this holds whatever number of
 *     them comes before the next locked operation, which decides afresh.
 *     A success cannot trip on consecutive failures (it ends the run), and
 *     the trip predicate is asked after failures only.
 * Then the word `fast` holds: the low 32 bits of the generation it belongs
 * to, an OK bit, the admissions made (A) and the successes recorded (P)
 * without the lock since the last fold.  allow() adds to A and record()
 * to P with one compare-and-swap each, which fails if anything changed the
 * word meanwhile (another call, or a locked operation).
 *
 * Every locked operation starts with fold(): it swaps in a word with the
 * OK bit clear, so that no call can add to it while the lock is held, and
 * applies A and P to the window and the totals exactly as the locked path
 * would have, admissions first (each success's admission precedes it, in
 * this batch or an earlier one).  A call whose compare-and-swap succeeded
 * is linearised at it: before the fold, so before whatever the locked
 * operation does (a failure after those successes, a transition).  Every
 * locked operation ends with publish(), which sets the word for the
 * generation and state it leaves behind.  A transition therefore always
 * changes the word's generation, and a ticket of an earlier generation
 * never passes the fast record: it takes the locked path, stale or late.
 * A fast admission's ticket carries the full generation (pub_generation,
 * stored before the word it belongs to) and no window mark; the locked
 * record gives it the window's mark when its generation is current (one
 * window per generation: every reset of the window starts a new one).
 */
#define FAST_P_MASK PGG_BREAKER_FAST_P_MASK
#define FAST_A_ONE PGG_BREAKER_FAST_A_ONE
#define FAST_A_MASK PGG_BREAKER_FAST_A_MASK
#define FAST_OK PGG_BREAKER_FAST_OK
#define FAST_P_MAX PGG_BREAKER_FAST_P_MAX

/* A note is waiting: the word may not be reopened (close_fast). */
#define FAST_POISON (UINT64_C(1) << 63)

static uint64_t fast_word(uint64_t generation, bool ok)
{
    return (generation << 32) | (ok ? FAST_OK : 0);
}

static bool fast_safe(const pgg_breaker *b)
{
    const pgg_window_stats *a = pgg__window_stats(&b->window);
    double c;

    if (b->state != PGG_BREAKER_CLOSED || b->cfg.window_type != PGG_WINDOW_COUNT ||
        b->interval_ns != 0)
        return false;
    c = (double)(a->calls > b->min_calls ? a->calls : b->min_calls);
    if (b->cfg.failure_rate > 0 &&
        !((double)a->failures * 100.0 < b->cfg.failure_rate * c))
        return false;
    if (b->cfg.slow_call_rate > 0 &&
        !((double)a->slow * 100.0 < b->cfg.slow_call_rate * c))
        return false;
    return true;
}

/* Under the lock: apply what calls did without it, and close that path. */
static void fold(pgg_breaker *b, int64_t now)
{
    uint64_t closed = fast_word(b->generation, false) & ~FAST_POISON;
    uint64_t w = atomic_exchange_explicit(&b->fast, closed, memory_order_acq_rel);
    uint32_t admits = (uint32_t)((w & FAST_A_MASK) >> 16);
    uint32_t done = (uint32_t)(w & FAST_P_MASK);

    b->fast_closed = closed;
    if (admits == 0 && done == 0)
        return;
    /* The word carried the OK bit only in this generation: whatever it
     * holds belongs to this window. */
    pgg__window_admit_n(&b->window, admits);
    b->admitted += admits;
    b->requests += admits;
    b->successes += done;
    pgg__window_record_successes(&b->window, b->window.serial, done, now);
}

static bool drain_notes(pgg_breaker *b);

/* Take the lock (waiting) and start a section: the fast path's counts and
 * then the queued notes, in that order, before the caller's own work. */
static void lock_and_fold(pgg_breaker *b, int64_t now)
{
    pthread_mutex_lock(&b->mu);
    fold(b, now);
    drain_notes(b);
}

/* Under the lock, last: open the fast path again if it is safe.  Only
 * after a fold() in the same section: the word is open meanwhile, and
 * storing it again would drop what calls added to it.  It reopens only the
 * word its fold closed: a note pushed since then marked the word
 * (push_note), and is applied first. */
static void fast_publish(pgg_breaker *b)
{
    uint64_t expect;

    for (;;) {
        /* Release: a reader of the new generation (try_allow's noted
         * admission) then reads the state published with it, or a later
         * one. */
        atomic_store_explicit(&b->pub_generation, b->generation,
                              memory_order_release);
        expect = b->fast_closed;
        if (atomic_compare_exchange_strong_explicit(
                &b->fast, &expect, fast_word(b->generation, fast_safe(b)),
                memory_order_release, memory_order_relaxed))
            return;
        /* A count window's successes take no time: any instant will do. */
        fold(b, b->since);
        drain_notes(b);
    }
}

/* ------------------------------------------------------------------ notes */

/*
 * An event loop's thread must never wait for another thread (issue 13),
 * and the lock's holder may be preempted inside it (the health thread, a
 * blocking caller, another loop).  So a result (and, in the closed state,
 * an admission: see pgg__breaker_try_allow_slow) that finds the lock busy
 * is not waited for: it is written into a free note and pushed on a
 * lock-free stack, and whoever holds the lock applies it before its own
 * work (lock_and_fold) and again just before it unlocks
 * (unlock_and_dispatch), exactly as the locked path would have at the
 * caller's time: the same generation check (stale or late), the same
 * half-open permit given back, the same trip rules.  The notes pushed by
 * one thread are applied in its order (the stack is taken whole and
 * reversed), and before anything that thread does under the lock later
 * (every section drains first).
 *
 * Nothing is stranded: a pusher pushes and then tries the lock once more;
 * an unlocker unlocks and then, after a full fence, looks at the stack
 * (recheck).  Of the two orders one always sees the other: either the
 * pusher gets the lock (and applies it itself), or the unlocker sees the
 * note (and takes the lock to apply it, if it can; if it cannot, the new
 * holder does the same when it unlocks).  A listener's deliverer hands
 * delivery over the same way (orphaned).
 *
 * Notes are a fixed array: no allocation after init.  When all are taken
 * (PGG_BREAKER_NOTES results pushed behind one holder), a result waits
 * for the lock as before (notes_full counts it) and an admission says
 * BUSY.
 */
enum { NOTE_RECORD = 1, NOTE_ADMIT = 2 };
_Static_assert(PGG_BREAKER_NOTES == 64, "notes_free has one bit per note");

static void record_locked(pgg_breaker *b, pgg_ticket ticket,
                          pgg_outcome outcome, bool slow, int64_t now);

/*
 * After a push: close the fast path until the note is applied.  A result
 * this thread records next on it would be counted at the next fold, before
 * the note (fold() comes first in a section), and order matters (a
 * success ends a run of failures).  The mark (FAST_POISON, never in a
 * folded word) also fails the fast_publish() of a holder that folded
 * before it, which then folds again and applies the note before it
 * reopens the path; a fold after the mark sees the push (release here,
 * acquire in fold), so its section's drain applies the note; a publish
 * before the mark is closed by it, and the note is the recheck's.
 */
static void close_fast(pgg_breaker *b)
{
    uint64_t w = atomic_load_explicit(&b->fast, memory_order_relaxed);
    uint64_t nw;

    do {
        nw = (w & ~FAST_OK) | FAST_POISON;
        if (nw == w)
            return;
    } while (!atomic_compare_exchange_weak_explicit(&b->fast, &w, nw,
                                                    memory_order_seq_cst,
                                                    memory_order_relaxed));
}

/* Claim a free note and push it; false when none is free. */
static bool push_note(pgg_breaker *b, uint8_t kind, const pgg_ticket *ticket,
                      pgg_outcome outcome, bool slow, int64_t now)
{
    uint64_t f = atomic_load_explicit(&b->notes_free, memory_order_relaxed);
    uint32_t i, head;
    pgg_breaker_note *n;

    do {
        if (f == 0)
            return false;
        i = (uint32_t)__builtin_ctzll(f);
    } while (!atomic_compare_exchange_weak_explicit(
        &b->notes_free, &f, f & ~(UINT64_C(1) << i), memory_order_acquire,
        memory_order_relaxed));
    n = &b->notes[i];
    n->ticket = *ticket;
    n->now = now;
    n->kind = kind;
    n->outcome = (uint8_t)outcome;
    n->slow = slow;
    head = atomic_load_explicit(&b->notes_head, memory_order_relaxed);
    do
        n->next = head;
    while (!atomic_compare_exchange_weak_explicit(&b->notes_head, &head, i + 1,
                                                  memory_order_seq_cst,
                                                  memory_order_relaxed));
    close_fast(b);
    return true;
}

/* A queued admission, counted as allow_locked would have counted it in its
 * generation (as the fast path's are: no mark, the window's serial).  One
 * whose generation ended before it was applied counts in the totals only:
 * it was admitted before that transition, which reset the window. */
static void apply_admission(pgg_breaker *b, const pgg_ticket *t)
{
    b->admitted++;
    if (t->generation == b->generation &&
        (b->state == PGG_BREAKER_CLOSED || b->state == PGG_BREAKER_METRICS_ONLY)) {
        pgg__window_admit_n(&b->window, 1);
        b->requests++;
    }
}

/* Under the lock: apply every pushed note, oldest first.  True when it
 * applied any (it folded the fast path's word first: the caller must
 * fast_publish() before unlocking). */
static bool drain_notes(pgg_breaker *b)
{
    uint32_t top, prev = 0, next, i;
    pgg_breaker_note n;

    if (atomic_load_explicit(&b->notes_head, memory_order_relaxed) == 0)
        return false;
    top = atomic_exchange_explicit(&b->notes_head, 0, memory_order_acquire);
    if (top == 0)
        return false;
    /* Reverse the stack: notes are applied in the order pushed. */
    while (top != 0) {
        next = b->notes[top - 1].next;
        b->notes[top - 1].next = prev;
        prev = top;
        top = next;
    }
    fold(b, b->notes[prev - 1].now);
    while (prev != 0) {
        i = prev - 1;
        n = b->notes[i];
        prev = n.next;
        atomic_fetch_or_explicit(&b->notes_free, UINT64_C(1) << i,
                                 memory_order_release);
        b->noted++;
        if (n.kind == NOTE_ADMIT)
            apply_admission(b, &n.ticket);
        else
            record_locked(b, n.ticket, (pgg_outcome)n.outcome, n.slow, n.now);
    }
    return true;
}

/* --------------------------------------------------------------- events */

/*
 * Listener events are delivered with the lock released, by one thread at a
 * time (`dispatching`, under the lock), so listeners never run
 * concurrently and see events in order; events queued meanwhile (by other
 * threads, or by a listener calling back in) are delivered by that same
 * thread before it stops.  The deliverer takes the lock back after each
 * event only by trying: when another thread holds it, delivery is handed
 * to that holder (`orphaned`, the notes' protocol), so an event loop that
 * delivers never waits either.  Listeners then run on the holder's thread.
 */

static void recheck(pgg_breaker *b);

/* Under the lock: may this thread deliver now?  Takes over an orphaned
 * delivery (dispatching stays set: it is ours), or starts one. */
static bool claim_delivery(pgg_breaker *b)
{
    if (atomic_load_explicit(&b->orphaned, memory_order_relaxed) &&
        atomic_exchange(&b->orphaned, false))
        return true;
    if (b->ev_count == 0 || b->dispatching)
        return false;
    b->dispatching = true;
    return true;
}

/* After a listener: the lock again, or false once delivery is handed to
 * its holder. */
static bool relock_delivering(pgg_breaker *b)
{
    if (pthread_mutex_trylock(&b->mu) == 0)
        return true;
    atomic_store(&b->orphaned, true);
    if (pthread_mutex_trylock(&b->mu) != 0)
        return false; /* the holder sees it, in claim_delivery or recheck */
    if (atomic_exchange(&b->orphaned, false))
        return true; /* nobody took it: still ours */
    /* Taken over between the two tries (the caller rechecks: we held
     * the lock meanwhile). */
    pthread_mutex_unlock(&b->mu);
    return false;
}

/* Under the lock, owning delivery: deliver every queued event; returns
 * with the lock released, and the caller calls recheck().  (The recheck
 * before each listener cannot start another delivery: this one owns it,
 * and only its owner hands it over.) */
static void deliver(pgg_breaker *b)
{
    pgg_breaker_event ev;
    struct {
        pgg_breaker_listener fn;
        void *ud;
    } ls[PGG_BREAKER_MAX_LISTENERS];
    int i, n;

    for (;;) {
        if (drain_notes(b))
            fast_publish(b);
        if (b->ev_count == 0) {
            b->dispatching = false;
            pthread_mutex_unlock(&b->mu);
            return;
        }
        ev = b->events[b->ev_head];
        b->ev_head = (b->ev_head + 1) % PGG_BREAKER_EVENT_QUEUE;
        b->ev_count--;
        for (i = n = 0; i < PGG_BREAKER_MAX_LISTENERS; i++) {
            if (b->listeners[i].fn) {
                ls[n].fn = b->listeners[i].fn;
                ls[n].ud = b->listeners[i].ud;
                n++;
            }
        }
        pthread_mutex_unlock(&b->mu);
        recheck(b);
        for (i = 0; i < n; i++)
            ls[i].fn(ls[i].ud, ev.from, ev.to, ev.reason);
        if (!relock_delivering(b))
            return;
    }
}

_Atomic(pgg__breaker_hook) pgg__breaker_unlock_hook;

/* End a section begun with lock_and_fold: the notes pushed meanwhile, the
 * fast path reopened, unlock, then deliver whatever it queued. */
static void unlock_and_dispatch(pgg_breaker *b)
{
    pgg__breaker_hook hook;

    drain_notes(b);
    fast_publish(b);
    hook = atomic_load_explicit(&pgg__breaker_unlock_hook, memory_order_relaxed);
    if (hook)
        hook(b);
    if (claim_delivery(b))
        deliver(b);
    else
        pthread_mutex_unlock(&b->mu);
    recheck(b);
}

/*
 * Just unlocked (or pushed a note): apply the notes pushed while the lock
 * was held, and take over a delivery handed over, if the lock can be had
 * without waiting; if not, its holder does the same when it unlocks.
 */
static void recheck(pgg_breaker *b)
{
    for (;;) {
        atomic_thread_fence(memory_order_seq_cst);
        if (atomic_load_explicit(&b->notes_head, memory_order_relaxed) == 0 &&
            !atomic_load_explicit(&b->orphaned, memory_order_relaxed))
            return;
        if (pthread_mutex_trylock(&b->mu) != 0)
            return;
        if (drain_notes(b))
            fast_publish(b);
        if (claim_delivery(b))
            deliver(b);
        else
            pthread_mutex_unlock(&b->mu);
    }
}

/* ------------------------------------------------------------ lifecycle */

int pgg__breaker_init(pgg_breaker *b, const pgg_breaker_config *cfg,
                      int64_t now, pgg_error *err)
{
    const char *why = pgg__breaker_config_check(cfg);
    int rc;

    if (why)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL, "%s", why);
    memset(b, 0, sizeof *b);
    pgg__breaker_config_effective(cfg, &b->cfg);
    cfg = &b->cfg;
    b->slow_ns = pgg__ms_to_ns(cfg->slow_call_duration_ms);
    b->open_ns = pgg__ms_to_ns(cfg->open_ms);
    b->open_max_ns = pgg__ms_to_ns(cfg->open_max_ms);
    b->half_open_max_ns = pgg__ms_to_ns(cfg->half_open_max_ms);
    b->decay_ns = pgg__ms_to_ns(cfg->healthy_decay_ms);
    b->interval_ns = pgg__ms_to_ns(cfg->interval_ms);
    b->min_calls = cfg->min_calls;
    if (cfg->window_type == PGG_WINDOW_COUNT && b->min_calls > cfg->window_size)
        b->min_calls = cfg->window_size;
    b->half_open_decide = cfg->half_open_probes;
    if (cfg->half_open_decide_early && cfg->min_calls < b->half_open_decide)
        b->half_open_decide = cfg->min_calls;
    rc = pgg__window_init_ex(&b->window, cfg->window_type, cfg->window_size,
                             pgg__ms_to_ns(cfg->window_bucket_ms),
                             (cfg->window_by_admission ? PGG_WINDOW_BY_ADMISSION : 0u) |
                                 (cfg->window_aligned ? PGG_WINDOW_ALIGNED : 0u),
                             now);
    if (rc != PGG_OK)
        return pgg__error_set(err, rc, NULL, NULL, "breaker window: %s",
                              pgg_strerror(rc));

    /*
     * A plain mutex: glibc's adaptive (spinning) kind measured slower here
     * with two threads on one breaker (bench-core), not faster.
     */
    rc = pthread_mutex_init(&b->mu, NULL);
    if (rc != 0) {
        pgg__window_destroy(&b->window);
        return pgg__error_set(err, PGG_ESYS, NULL, NULL, "breaker mutex: error %d", rc);
    }

    b->rng = cfg->seed ? cfg->seed
                       : (uint64_t)(uintptr_t)b ^ (uint64_t)pgg__now_ns();
    b->generation = 1;
    b->since = b->closed_since = now;
    b->interval_end = PGG_TIME_NEVER;
    switch (cfg->mode) {
    case PGG_BREAKER_MODE_NORMAL:
        b->state = PGG_BREAKER_CLOSED;
        start_closed_period(b, now);
        break;
    case PGG_BREAKER_MODE_METRICS_ONLY:
        b->state = PGG_BREAKER_METRICS_ONLY;
        start_closed_period(b, now);
        break;
    case PGG_BREAKER_MODE_DISABLED:
        b->state = PGG_BREAKER_DISABLED;
        break;
    case PGG_BREAKER_MODE_FORCED_OPEN:
        b->state = PGG_BREAKER_FORCED_OPEN;
        break;
    }
    pgg__counter_init(&b->rejected_fast);
    atomic_init(&b->pub_open_until, 0);
    atomic_init(&b->pub_state, (uint32_t)b->state);
    atomic_init(&b->pub_generation, b->generation);
    atomic_init(&b->fast, fast_word(b->generation, fast_safe(b)));
    atomic_init(&b->notes_free, ~UINT64_C(0));
    atomic_init(&b->notes_head, 0);
    atomic_init(&b->orphaned, false);
    return PGG_OK;
}

void pgg__breaker_destroy(pgg_breaker *b)
{
    if (!b)
        return;
    pgg__window_destroy(&b->window);
    pthread_mutex_destroy(&b->mu);
}

pgg_breaker *pgg__breaker_new(const pgg_breaker_config *cfg, int64_t now,
                              pgg_error *err)
{
    pgg_breaker *b = malloc(sizeof *b);

    if (!b) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, NULL);
        return NULL;
    }
    if (pgg__breaker_init(b, cfg, now, err) != PGG_OK) {
        free(b);
        return NULL;
    }
    return b;
}

void pgg__breaker_free(pgg_breaker *b)
{
    if (!b)
        return;
    pgg__breaker_destroy(b);
    free(b);
}

/* ------------------------------------------------------------- the path */

static void count_outcome(pgg_breaker *b, pgg_outcome outcome)
{
    switch (outcome) {
    case PGG_OUTCOME_SUCCESS:
        b->successes++;
        break;
    case PGG_OUTCOME_FAILURE:
        b->failures++;
        break;
    case PGG_OUTCOME_IGNORED:
        b->ignored++;
        break;
    }
}

/*
 * The locked part of allow(), kept out of line: inlined, its calls made
 * the compiler save more registers on every lock-free refusal too.
 */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static bool allow_locked(pgg_breaker *b, int64_t now, pgg_ticket *ticket)
{
    bool ok;

    apply_time(b, now, true);
    ticket->flags = 0;
    ticket->mark = 0;
    switch (b->state) {
    case PGG_BREAKER_CLOSED:
    case PGG_BREAKER_METRICS_ONLY:
        ok = true;
        ticket->mark = pgg__window_admit(&b->window, now);
        break;
    case PGG_BREAKER_HALF_OPEN:
        ok = b->probes_admitted < b->cfg.half_open_probes;
        if (ok) {
            b->probes_admitted++;
            ticket->flags = PGG_TICKET_PERMIT;
        }
        break;
    case PGG_BREAKER_DISABLED:
        ok = true;
        ticket->flags = PGG_TICKET_UNTRACKED;
        break;
    case PGG_BREAKER_OPEN:
    case PGG_BREAKER_FORCED_OPEN:
    default:
        ok = false;
        break;
    }
    if (ok && b->state != PGG_BREAKER_DISABLED) {
        b->admitted++;
        b->requests++;
    } else if (!ok) {
        b->rejected_locked++;
    }
    ticket->generation = b->generation;
    ticket->state = b->state;
    unlock_and_dispatch(b);
    return ok;
}

/* The answers that need no lock: refusal while open (before its time) or
 * forced-open, admission while disabled.  -1: the lock is needed. */
static int allow_unlocked(pgg_breaker *b, uint32_t st, int64_t now,
                          pgg_ticket *ticket)
{
    if ((st == PGG_BREAKER_OPEN &&
         now < atomic_load_explicit(&b->pub_open_until, memory_order_relaxed)) ||
        st == PGG_BREAKER_FORCED_OPEN) {
        pgg__counter_add(&b->rejected_fast, 1);
        ticket->generation = 0;
        ticket->mark = 0;
        ticket->state = (pgg_breaker_state)st;
        ticket->flags = 0;
        return 0;
    }
    if (st == PGG_BREAKER_DISABLED) {
        ticket->generation = 0;
        ticket->mark = 0;
        ticket->state = PGG_BREAKER_DISABLED;
        ticket->flags = PGG_TICKET_UNTRACKED;
        return 1;
    }
    return -1;
}

bool pgg__breaker_allow_slow(pgg_breaker *b, int64_t now, pgg_ticket *ticket)
{
    uint32_t st = atomic_load_explicit(&b->pub_state, memory_order_acquire);
    int r = allow_unlocked(b, st, now, ticket);

    if (r >= 0)
        return r;
    lock_and_fold(b, now);
    return allow_locked(b, now, ticket);
}

/*
 * The event loop's admission (breaker.h).  With the lock busy, a closed
 * (or metrics-only) breaker admits as its fast path does: the ticket
 * carries the published generation and no mark, and the admission is a
 * note the holder counts (apply_admission).  That needs the admission to
 * change nothing but counts: no interval to roll over at now (the ticket's
 * generation would be the ended one) and a window that does not bucket by
 * admission (the mark is the bucket at now).  Every other state that
 * needs the lock has a decision to make under it (a half-open permit, the
 * end of the open time): BUSY, and the caller asks again shortly rather
 * than take a refusal from a lock race.
 */
int pgg__breaker_try_allow_slow(pgg_breaker *b, int64_t now, pgg_ticket *ticket)
{
    uint64_t g = atomic_load_explicit(&b->pub_generation, memory_order_acquire);
    uint32_t st = atomic_load_explicit(&b->pub_state, memory_order_acquire);
    int r = allow_unlocked(b, st, now, ticket);

    if (r >= 0)
        return r;
    if (pthread_mutex_trylock(&b->mu) == 0) {
        fold(b, now);
        drain_notes(b);
        return allow_locked(b, now, ticket) ? PGG_BREAKER_ADMITTED
                                            : PGG_BREAKER_REFUSED;
    }
    if ((st != PGG_BREAKER_CLOSED && st != PGG_BREAKER_METRICS_ONLY) ||
        b->interval_ns != 0 || b->window.by_admission)
        return PGG_BREAKER_BUSY;
    /* g was read before st: a state published with a later generation
     * than g is never paired with g (fast_publish stores the generation
     * after the state, with release), so g's state was closed, or g is
     * stale by the time the note is applied. */
    ticket->generation = g;
    ticket->mark = 0;
    ticket->state = (pgg_breaker_state)st;
    ticket->flags = PGG_TICKET_NOTED;
    if (!push_note(b, NOTE_ADMIT, ticket, PGG_OUTCOME_IGNORED, false, now))
        return PGG_BREAKER_BUSY;
    recheck(b);
    return PGG_BREAKER_ADMITTED;
}

void pgg__breaker_record_slow(pgg_breaker *b, const pgg_ticket *ticket,
                              pgg_outcome outcome, bool slow, int64_t now)
{
    if (pthread_mutex_trylock(&b->mu) == 0) {
        fold(b, now);
        drain_notes(b);
    } else if (push_note(b, NOTE_RECORD, ticket, outcome, slow, now)) {
        /* The other half of the handshake (see "Notes"). */
        recheck(b);
        return;
    } else {
        lock_and_fold(b, now);
        b->notes_full++;
    }
    record_locked(b, *ticket, outcome, slow, now);
    unlock_and_dispatch(b);
}

/* A result, under the lock: pgg__breaker_record's work, at the caller's
 * now (its own call, or a note's). */
static void record_locked(pgg_breaker *b, pgg_ticket ticket,
                          pgg_outcome outcome, bool slow, int64_t now)
{
    apply_time(b, now, false);
    /* A fast or noted admission's mark: this generation's window (see
     * fold()). */
    if ((ticket.flags & (PGG_TICKET_FAST | PGG_TICKET_NOTED)) &&
        ticket.generation == b->generation)
        ticket.mark = b->window.serial;
    if (ticket.generation != b->generation) {
        /*
         * Admitted before the last transition.  Dropped as stale, or with
         * late_results_count (resilience4j) counted in the current state:
         * closed, in the window, which it may trip; open, in the window
         * the breaker tripped on (resilience4j's OpenState keeps recording
         * into the closed state's metrics), with no transition; half-open,
         * as a probe result, though it held no permit.
         */
        if (!b->cfg.late_results_count || b->state == PGG_BREAKER_FORCED_OPEN ||
            b->state == PGG_BREAKER_DISABLED) {
            b->stale++;
            return;
        }
        ticket.flags &= ~PGG_TICKET_PERMIT;
    }
    count_outcome(b, outcome);
    switch (b->state) {
    case PGG_BREAKER_CLOSED:
    case PGG_BREAKER_METRICS_ONLY:
        record_closed(b, ticket.mark, outcome, slow, now);
        break;
    case PGG_BREAKER_HALF_OPEN:
        record_half_open(b, ticket.flags, outcome, slow, now);
        break;
    case PGG_BREAKER_OPEN:
        /* Only a late result gets here (a live one would need admission). */
        pgg__window_record_admitted(&b->window, ticket.mark, outcome, slow, now);
        break;
    case PGG_BREAKER_FORCED_OPEN:
    case PGG_BREAKER_DISABLED:
        break;
    }
}

static int64_t next_due(const pgg_breaker *b)
{
    switch (b->state) {
    case PGG_BREAKER_OPEN:
        return b->cfg.half_open_on_call_only ? PGG_TIME_NEVER : b->open_until;
    case PGG_BREAKER_HALF_OPEN:
        return b->half_open_max_ns > 0 ? pgg__time_add(b->since, b->half_open_max_ns)
                                       : PGG_TIME_NEVER;
    case PGG_BREAKER_CLOSED:
    case PGG_BREAKER_METRICS_ONLY:
        return b->interval_end == PGG_TIME_NEVER ? PGG_TIME_NEVER
                                                 : pgg__time_add(b->interval_end, 1);
    case PGG_BREAKER_FORCED_OPEN:
    case PGG_BREAKER_DISABLED:
        break;
    }
    return PGG_TIME_NEVER;
}

int64_t pgg__breaker_tick(pgg_breaker *b, int64_t now)
{
    int64_t due;

    lock_and_fold(b, now);
    apply_time(b, now, false);
    if (b->state == PGG_BREAKER_CLOSED || b->state == PGG_BREAKER_METRICS_ONLY)
        pgg__window_advance(&b->window, now);
    due = next_due(b);
    unlock_and_dispatch(b);
    return due;
}

pgg_breaker_state pgg__breaker_state(const pgg_breaker *b)
{
    /* The atomic is only read; casting const away is safe for a load. */
    return (pgg_breaker_state)atomic_load_explicit(
        &((pgg_breaker *)(uintptr_t)b)->pub_state, memory_order_acquire);
}

static double rate(uint64_t part, uint64_t calls, uint32_t min_calls)
{
    if (calls == 0 || calls < min_calls)
        return -1.0;
    return (double)part * 100.0 / (double)calls;
}

void pgg__breaker_stats(pgg_breaker *b, int64_t now, pgg_breaker_stats *out)
{
    const pgg_window_stats *w;
    uint32_t done;

    memset(out, 0, sizeof *out);
    lock_and_fold(b, now);
    apply_time(b, now, false);
    if (b->state == PGG_BREAKER_CLOSED || b->state == PGG_BREAKER_METRICS_ONLY)
        pgg__window_advance(&b->window, now);
    w = pgg__window_stats(&b->window);
    out->state = b->state;
    out->generation = b->generation;
    out->state_since_ns = b->since;
    if (b->state == PGG_BREAKER_OPEN)
        out->open_remaining_ns = b->open_until > now ? b->open_until - now : 0;
    out->open_duration_ns = b->open_len;
    out->reopens = b->state == PGG_BREAKER_CLOSED ? decayed_reopens(b, now) : b->reopens;
    out->window = *w;
    out->failure_rate = rate(w->failures, w->calls, b->min_calls);
    out->slow_call_rate = rate(w->slow, w->calls, b->min_calls);
    out->requests = b->state == PGG_BREAKER_CLOSED || b->state == PGG_BREAKER_METRICS_ONLY
                        ? w->requests
                        : b->requests;
    done = b->probe_successes + b->probe_failures;
    out->probes_admitted = b->probes_admitted;
    out->probes_in_flight = b->probes_admitted > done ? b->probes_admitted - done : 0;
    out->probe_successes = b->probe_successes;
    out->probe_failures = b->probe_failures;
    out->probe_slow = b->probe_slow;
    out->admitted = b->admitted;
    out->rejected = b->rejected_locked +
                    pgg__counter_sum(&b->rejected_fast);
    out->successes = b->successes;
    out->failures = b->failures;
    out->ignored = b->ignored;
    out->stale = b->stale;
    out->transitions = b->transitions;
    out->trips_suppressed = b->trips_suppressed;
    out->events_dropped = b->events_dropped;
    out->noted = b->noted;
    out->notes_full = b->notes_full;
    unlock_and_dispatch(b);
}

/* ------------------------------------------------------------- listeners */

int pgg__breaker_listen(pgg_breaker *b, pgg_breaker_listener fn, void *ud)
{
    int i, rc = PGG_ENOMEM;

    if (!fn)
        return PGG_EINVAL;
    pthread_mutex_lock(&b->mu);
    for (i = 0; i < PGG_BREAKER_MAX_LISTENERS; i++) {
        if (!b->listeners[i].fn) {
            b->listeners[i].fn = fn;
            b->listeners[i].ud = ud;
            rc = PGG_OK;
            break;
        }
    }
    pthread_mutex_unlock(&b->mu);
    recheck(b); /* notes pushed meanwhile */
    return rc;
}

void pgg__breaker_unlisten(pgg_breaker *b, pgg_breaker_listener fn, void *ud)
{
    int i;

    pthread_mutex_lock(&b->mu);
    for (i = 0; i < PGG_BREAKER_MAX_LISTENERS; i++) {
        if (b->listeners[i].fn == fn && b->listeners[i].ud == ud) {
            b->listeners[i].fn = NULL;
            b->listeners[i].ud = NULL;
            break;
        }
    }
    pthread_mutex_unlock(&b->mu);
    recheck(b);
}

/* --------------------------------------------------------------- control */

static void manual(pgg_breaker *b, pgg_breaker_state to,
                   pgg_breaker_reason reason, int64_t now)
{
    lock_and_fold(b, now);
    if (b->state != to)
        enter_state(b, to, reason, now);
    unlock_and_dispatch(b);
}

void pgg__breaker_force_open(pgg_breaker *b, int64_t now)
{
    manual(b, PGG_BREAKER_FORCED_OPEN, PGG_BREAKER_REASON_FORCED, now);
}

void pgg__breaker_disable(pgg_breaker *b, int64_t now)
{
    manual(b, PGG_BREAKER_DISABLED, PGG_BREAKER_REASON_FORCED, now);
}

void pgg__breaker_metrics_only(pgg_breaker *b, int64_t now)
{
    manual(b, PGG_BREAKER_METRICS_ONLY, PGG_BREAKER_REASON_FORCED, now);
}

void pgg__breaker_reset(pgg_breaker *b, int64_t now)
{
    lock_and_fold(b, now);
    b->reopens = 0;
    b->relapses = 0;
    enter_state(b, PGG_BREAKER_CLOSED, PGG_BREAKER_REASON_RESET, now);
    unlock_and_dispatch(b);
}

bool pgg__breaker_host_answered(pgg_breaker *b, int64_t now)
{
    bool moved = false;

    lock_and_fold(b, now);
    if (b->state == PGG_BREAKER_OPEN || b->state == PGG_BREAKER_HALF_OPEN)
        b->answered = true;
    /* Neither preset's library has active health checks to end it early. */
    if (b->state == PGG_BREAKER_OPEN && b->cfg.preset == PGG_BREAKER_PRESET_NONE) {
        enter_state(b, PGG_BREAKER_HALF_OPEN, PGG_BREAKER_REASON_HOST_ANSWERED,
                    now);
        moved = true;
    }
    unlock_and_dispatch(b);
    return moved;
}

bool pgg__breaker_host_back(pgg_breaker *b, int64_t now)
{
    bool moved = false;

    /* Folded as every section that ends with fast_publish() must be. */
    lock_and_fold(b, now);
    if (b->state == PGG_BREAKER_OPEN || b->state == PGG_BREAKER_HALF_OPEN)
        b->answered = true;
    if ((b->state == PGG_BREAKER_OPEN || b->state == PGG_BREAKER_HALF_OPEN) &&
        b->cfg.preset == PGG_BREAKER_PRESET_NONE && b->cfg.answer_closes &&
        b->relapses <= 1) {
        enter_state(b, PGG_BREAKER_CLOSED, PGG_BREAKER_REASON_HOST_BACK, now);
        moved = true;
    }
    unlock_and_dispatch(b);
    return moved;
}

bool pgg__breaker_host_silent(pgg_breaker *b, int64_t now)
{
    bool opened = false;

    lock_and_fold(b, now);
    if (b->cfg.preset == PGG_BREAKER_PRESET_NONE && b->cfg.silence_opens) {
        if (b->state == PGG_BREAKER_CLOSED) {
            enter_state(b, PGG_BREAKER_OPEN, PGG_BREAKER_REASON_HOST_SILENT, now);
            opened = true;
        } else if (b->state == PGG_BREAKER_METRICS_ONLY) {
            b->trips_suppressed++;
        }
    }
    unlock_and_dispatch(b);
    return opened;
}

int pgg__breaker_transition(pgg_breaker *b, pgg_breaker_state to, int64_t now)
{
    if (to != PGG_BREAKER_CLOSED && to != PGG_BREAKER_OPEN && to != PGG_BREAKER_HALF_OPEN)
        return PGG_EINVAL;
    manual(b, to, PGG_BREAKER_REASON_MANUAL, now);
    return PGG_OK;
}
