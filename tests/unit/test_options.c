/*
 * The options module: the key table through every setter and getter, the
 * config text parser, splitting a multi-host conninfo the way libpq does,
 * keeping passwords out of error messages, deep copies and validation.
 */
#include <criterion/criterion.h>

#include <float.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"

/* ------------------------------------------------------------ leak checks */

/*
 * Criterion runs each test in a forked worker whose exit code the leak
 * checkers cannot fail, so every test checks for leaks itself on the way
 * out (see ENVIRONMENT.md).
 */
#if defined(__SANITIZE_ADDRESS__)
#define PGG_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PGG_ASAN 1
#endif
#endif

#if defined(PGG_ASAN)
#include <sanitizer/lsan_interface.h>
#elif defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define PGG_VALGRIND 1
#endif
#endif

static void leak_check(void)
{
#if defined(PGG_ASAN)
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "memory leaked");
#elif defined(PGG_VALGRIND)
    if (RUNNING_ON_VALGRIND) {
        unsigned long leaked = 0, dubious = 0, reachable = 0, suppressed = 0;

        /* Only "definitely lost": Criterion's own worker keeps blocks
         * that valgrind counts as possibly lost. */
        VALGRIND_DO_LEAK_CHECK;
        VALGRIND_COUNT_LEAKS(leaked, dubious, reachable, suppressed);
        (void)dubious;
        (void)reachable;
        (void)suppressed;
        cr_assert_eq(leaked, 0, "memory leaked: %lu bytes", leaked);
    }
#endif
}

/* libpq reads these when the conninfo leaves host or port out. */
static void clean_env(void)
{
    static const char *const vars[] = {"PGHOST", "PGHOSTADDR", "PGPORT",
                                       "PGSERVICE", "PGSERVICEFILE",
                                       "PGTARGETSESSIONATTRS"};

    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
}

TestSuite(options, .init = clean_env);

/* A test whose body is followed by a leak check (a failed assertion in a
 * .fini hook does not fail the test). */
#define OPT_TEST(name)                                                     \
    static void name##_body(void);                                         \
    Test(options, name)                                                    \
    {                                                                      \
        name##_body();                                                     \
        leak_check();                                                      \
    }                                                                      \
    static void name##_body(void)

/* --------------------------------------------------------------- helpers */

static pgg_config *new_cfg(void)
{
    pgg_config *cfg = pgg_config_new();

    cr_assert_not_null(cfg);
    return cfg;
}

static const char *get(const pgg_config *cfg, const char *key)
{
    static char buf[512];
    pgg_error err;
    int rc = pgg_config_get(cfg, key, buf, sizeof buf, &err);

    cr_assert_eq(rc, PGG_OK, "get %s: %s", key, err.message);
    return buf;
}

#define assert_set(cfg, key, val)                                          \
    do {                                                                   \
        pgg_error e_;                                                      \
        int rc_ = pgg_config_set((cfg), (key), (val), &e_);                \
        cr_assert_eq(rc_, PGG_OK, "set %s=%s: %s", (key), (val), e_.message); \
    } while (0)

/* A failed call: its code, and the message names `needle`. */
static void expect_err(int rc, const pgg_error *err, int code,
                       const char *needle)
{
    cr_assert_eq(rc, code, "expected %s, got %s (%s)", pgg_err_name(code),
                 pgg_err_name(rc), err->message);
    cr_assert_eq(err->code, code);
    if (needle)
        cr_assert(strstr(err->message, needle) != NULL,
                  "message \"%s\" does not mention \"%s\"", err->message,
                  needle);
}

static int set_err(pgg_config *cfg, const char *key, const char *val,
                   int code, const char *needle)
{
    pgg_error err;
    int rc = pgg_config_set(cfg, key, val, &err);

    expect_err(rc, &err, code, needle);
    return rc;
}

/* The value of a key in one host's parameters, or NULL. */
static const char *param(const pgg_host_spec *h, const char *key)
{
    const char *found = NULL;

    for (int i = 0; h->keys[i]; i++) {
        cr_assert_not_null(h->vals[i]);
        if (strcmp(h->keys[i], key) == 0) {
            cr_assert_null(found, "%s twice in %s", key, h->name);
            found = h->vals[i];
        }
    }
    return found;
}

static void expect_host(const pgg_config *cfg, int i, const char *name,
                        const char *host, const char *hostaddr,
                        const char *port)
{
    const pgg_host_spec *h;

    cr_assert_lt(i, cfg->nhosts);
    h = &cfg->hosts[i];
    cr_assert_str_eq(h->name, name);
    cr_assert_null(h->keys[h->nparams]);
    cr_assert_null(h->vals[h->nparams]);
#define EXPECT_PARAM(k, v)                                                 \
    do {                                                                   \
        const char *got_ = param(h, k);                                    \
        if (!(v))                                                          \
            cr_assert_null(got_, "%s: %s=%s, expected none", h->name, k, got_); \
        else {                                                             \
            cr_assert_not_null(got_, "%s: no %s", h->name, k);              \
            cr_assert_str_eq(got_, (v), "%s: %s", h->name, k);              \
        }                                                                  \
    } while (0)
    EXPECT_PARAM("host", host);
    EXPECT_PARAM("hostaddr", hostaddr);
    EXPECT_PARAM("port", port);
#undef EXPECT_PARAM
}

static int servers(pgg_config *cfg, const char *conninfo, pgg_error *err)
{
    return pgg_config_set_servers(cfg, conninfo, err);
}

/* ---------------------------------------------------- the expected table */

/*
 * The specification, written out independently of the implementation's
 * table: every key, its kind, bounds and default.  A key added to one and
 * not the other fails `every_key_is_specified`.
 */
enum kind { INT, DBL, BOOL, ENUM };

typedef struct spec {
    const char *key;
    enum kind kind;
    long long min, max;      /* INT */
    double dmin, dmax;       /* DBL */
    bool dmax_open;          /* DBL: max excluded */
    const char *def;
    const char *names[6];    /* ENUM */
} spec;

#define I(k, lo, hi, d) {k, INT, lo, hi, 0, 0, false, d, {NULL}}
#define D(k, lo, hi, open, d) {k, DBL, 0, 0, lo, hi, open, d, {NULL}}
#define B(k, d) {k, BOOL, 0, 0, 0, 0, false, d, {NULL}}
#define E(k, d, ...) {k, ENUM, 0, 0, 0, 0, false, d, {__VA_ARGS__, NULL}}

static const spec specs[] = {
    I("pool_min_idle", 0, 10000, "0"),
    I("pool_max", 1, 10000, "10"),
    I("idle_timeout_ms", 0, 86400000, "60000"),
    I("max_lifetime_ms", 0, 604800000, "1800000"),
    I("validate_after_idle_ms", 0, 86400000, "5000"),
    I("alive_check_after_idle_ms", 0, 86400000, "100"),
    I("connect_timeout_ms", 1, 600000, "2000"),
    I("call_timeout_ms", 1, 3600000, "5000"),
    I("cancel_timeout_ms", 0, 600000, "2000"),
    I("bulkhead.max_concurrent", 1, 1000000, "64"),
    I("bulkhead.max_wait_ms", 0, 60000, "0"),
    I("health_interval_ms", 10, 600000, "1000"),
    I("max_replica_lag_bytes", 0, 1099511627776LL, "16777216"),
    E("read_policy", "replica", "replica", "replica_only", "primary", "any"),
    I("max_attempts", 1, 64, "3"),
    B("lease_reset", "true"),
    I("auto_prepare", 0, 10000, "100"),
    I("auto_prepare_after", 1, 1000, "2"),
    I("lease_leak_ms", 0, 86400000, "0"),
    I("attempt_timeout_ms", 0, 3600000, "0"),
    B("attempt_timeout_auto", "true"),
    I("health_probe_timeout_ms", 1, 600000, "500"),
    I("health_incident_min_ms", 1, 60000, "20"),
    I("health_incident_max_ms", 1, 600000, "250"),
    E("read_your_writes", "off", "off", "pool", "sampled"),
    I("read_your_writes.max_wait_ms", 0, 3600000, "1000"),
    I("read_your_writes.poll_ms", 1, 60000, "10"),
    B("pipeline", "false"),
    I("pipeline.connections", 1, 64, "2"),
    I("pipeline.stall_ms", 0, 3600000, "2"),
    B("types.enabled", "false"),
    B("cache.enabled", "false"),
    I("cache.max_bytes", 1024, 1099511627776LL, "67108864"),
    I("cache.max_age_ms", 1, 604800000, "300000"),
    D("breaker.failure_rate", 0, 100, false, "50"),
    D("breaker.slow_call_rate", 0, 100, false, "100"),
    I("breaker.slow_call_duration_ms", 1, 3600000, "10000"),
    I("breaker.min_calls", 1, 1048576, "20"),
    E("breaker.window_type", "count", "count", "time", "fixed"),
    I("breaker.window_size", 1, 1048576, "100"),
    I("breaker.window_bucket_ms", 1, 3600000, "1000"),
    I("breaker.consecutive_failures", 0, 1000000, "5"),
    I("breaker.open_ms", 1, 86400000, "5000"),
    D("breaker.open_multiplier", 1, 100, false, "2"),
    I("breaker.open_max_ms", 1, 86400000, "60000"),
    D("breaker.open_jitter", 0, 1, true, "0.2"),
    I("breaker.half_open_probes", 1, 1000000, "3"),
    I("breaker.half_open_successes", 0, 1000000, "3"),
    I("breaker.half_open_max_ms", 0, 86400000, "30000"),
    I("breaker.healthy_decay_ms", 0, 604800000, "60000"),
    I("breaker.interval_ms", 0, 86400000, "0"),
    E("breaker.mode", "normal", "normal", "disabled", "metrics-only",
      "forced-open"),
    E("breaker.preset", "none", "none", "gobreaker", "resilience4j"),
    I("breaker.gobreaker.max_requests", 0, 1000000, "0"),
    I("breaker.gobreaker.interval_ms", 0, 86400000, "0"),
    I("breaker.gobreaker.bucket_period_ms", 0, 86400000, "0"),
    I("breaker.gobreaker.timeout_ms", 0, 86400000, "0"),
    I("breaker.gobreaker.consecutive_failures", 0, 1000000, "5"),
    E("breaker.resilience4j.sliding_window_type", "count_based", "count_based",
      "time_based"),
    I("breaker.resilience4j.sliding_window_size", 1, 1048576, "100"),
    I("breaker.resilience4j.minimum_number_of_calls", 1, 1048576, "100"),
    D("breaker.resilience4j.failure_rate_threshold", 0, 100, false, "50"),
    D("breaker.resilience4j.slow_call_rate_threshold", 0, 100, false, "100"),
    I("breaker.resilience4j.slow_call_duration_threshold_ms", 1, 3600000, "60000"),
    I("breaker.resilience4j.wait_duration_in_open_state_ms", 1, 86400000, "60000"),
    I("breaker.resilience4j.permitted_calls_in_half_open_state", 1, 1000000, "10"),
    B("breaker.resilience4j.automatic_transition", "false"),
    I("breaker.resilience4j.max_wait_duration_in_half_open_state_ms", 0, 86400000, "0"),
    B("breaker.resilience4j.enable_exponential_backoff", "false"),
    D("breaker.resilience4j.exponential_backoff_multiplier", 1, 100, false, "1.5"),
    I("breaker.resilience4j.exponential_max_wait_ms", 0, 604800000, "0"),
};

#define NSPECS (sizeof specs / sizeof specs[0])

static const spec *find_spec(const char *key)
{
    for (size_t i = 0; i < NSPECS; i++) {
        if (strcmp(specs[i].key, key) == 0)
            return &specs[i];
    }
    return NULL;
}

/* ------------------------------------------------------------- the table */

OPT_TEST(every_key_is_specified)
{
    int n = pgg__config_key_count();

    cr_assert_eq((size_t)n, NSPECS, "table has %d keys, spec %zu", n, NSPECS);
    for (int i = 0; i < n; i++)
        cr_assert_not_null(find_spec(pgg__config_key_name(i)),
                           "key %s is not in the test's spec",
                           pgg__config_key_name(i));
    cr_assert_null(pgg__config_key_name(n));
    cr_assert_null(pgg__config_key_name(-1));
}

OPT_TEST(defaults)
{
    pgg_config *cfg = new_cfg();

    for (size_t i = 0; i < NSPECS; i++)
        cr_assert_str_eq(get(cfg, specs[i].key), specs[i].def, "%s",
                         specs[i].key);
    cr_assert_eq(cfg->nhosts, 0);
    cr_assert_null(cfg->hosts);
    cr_assert_eq(cfg->classifier.n, 0);
    pgg_config_free(cfg);
}

OPT_TEST(breaker_defaults_are_the_cores)
{
    pgg_config *cfg = new_cfg();
    pgg_breaker_config want;

    pgg__breaker_config_defaults(&want);
    cr_assert_eq(cfg->breaker.failure_rate, want.failure_rate);
    cr_assert_eq(cfg->breaker.slow_call_rate, want.slow_call_rate);
    cr_assert_eq(cfg->breaker.slow_call_duration_ms, want.slow_call_duration_ms);
    cr_assert_eq(cfg->breaker.min_calls, want.min_calls);
    cr_assert_eq(cfg->breaker.window_type, want.window_type);
    cr_assert_eq(cfg->breaker.window_size, want.window_size);
    cr_assert_eq(cfg->breaker.window_bucket_ms, want.window_bucket_ms);
    cr_assert_eq(cfg->breaker.consecutive_failures, want.consecutive_failures);
    cr_assert_eq(cfg->breaker.open_ms, want.open_ms);
    cr_assert_eq(cfg->breaker.open_multiplier, want.open_multiplier);
    cr_assert_eq(cfg->breaker.open_max_ms, want.open_max_ms);
    cr_assert_eq(cfg->breaker.open_jitter, want.open_jitter);
    cr_assert_eq(cfg->breaker.half_open_probes, want.half_open_probes);
    cr_assert_eq(cfg->breaker.half_open_successes, want.half_open_successes);
    cr_assert_eq(cfg->breaker.half_open_max_ms, want.half_open_max_ms);
    cr_assert_eq(cfg->breaker.healthy_decay_ms, want.healthy_decay_ms);
    cr_assert_eq(cfg->breaker.interval_ms, want.interval_ms);
    cr_assert_eq(cfg->breaker.mode, want.mode);
    cr_assert_null(cfg->breaker.trip);
    cr_assert_null(pgg__breaker_config_check(&cfg->breaker));
    pgg_config_free(cfg);
}

OPT_TEST(keys_reach_their_fields)
{
    pgg_config *cfg = new_cfg();

    assert_set(cfg, "pool_min_idle", "2");
    assert_set(cfg, "pool_max", "7");
    assert_set(cfg, "idle_timeout_ms", "1234");
    assert_set(cfg, "max_lifetime_ms", "0");
    assert_set(cfg, "validate_after_idle_ms", "17");
    assert_set(cfg, "connect_timeout_ms", "250");
    assert_set(cfg, "call_timeout_ms", "750");
    assert_set(cfg, "cancel_timeout_ms", "300");
    assert_set(cfg, "bulkhead.max_concurrent", "5");
    assert_set(cfg, "bulkhead.max_wait_ms", "20");
    assert_set(cfg, "health_interval_ms", "100");
    assert_set(cfg, "max_replica_lag_bytes", "1099511627776");
    assert_set(cfg, "read_policy", "replica_only");
    assert_set(cfg, "max_attempts", "4");
    assert_set(cfg, "cache.enabled", "on");
    assert_set(cfg, "cache.max_bytes", "4096");
    assert_set(cfg, "cache.max_age_ms", "999");
    assert_set(cfg, "breaker.failure_rate", "12.5");
    assert_set(cfg, "breaker.slow_call_rate", "80");
    assert_set(cfg, "breaker.slow_call_duration_ms", "1500");
    assert_set(cfg, "breaker.min_calls", "9");
    assert_set(cfg, "breaker.window_type", "time");
    assert_set(cfg, "breaker.window_size", "30");
    assert_set(cfg, "breaker.window_bucket_ms", "250");
    assert_set(cfg, "breaker.consecutive_failures", "0");
    assert_set(cfg, "breaker.open_ms", "800");
    assert_set(cfg, "breaker.open_multiplier", "1.5");
    assert_set(cfg, "breaker.open_max_ms", "9000");
    assert_set(cfg, "breaker.open_jitter", "0.1");
    assert_set(cfg, "breaker.half_open_probes", "4");
    assert_set(cfg, "breaker.half_open_successes", "2");
    assert_set(cfg, "breaker.half_open_max_ms", "0");
    assert_set(cfg, "breaker.healthy_decay_ms", "123");
    assert_set(cfg, "breaker.interval_ms", "456");
    assert_set(cfg, "breaker.mode", "metrics_only");

    cr_assert_eq(cfg->pool_min_idle, 2);
    cr_assert_eq(cfg->pool_max, 7);
    cr_assert_eq(cfg->idle_timeout_ms, 1234);
    cr_assert_eq(cfg->max_lifetime_ms, 0);
    cr_assert_eq(cfg->validate_after_idle_ms, 17);
    cr_assert_eq(cfg->connect_timeout_ms, 250);
    cr_assert_eq(cfg->call_timeout_ms, 750);
    cr_assert_eq(cfg->cancel_timeout_ms, 300);
    cr_assert_eq(cfg->bulkhead_max_concurrent, 5);
    cr_assert_eq(cfg->bulkhead_max_wait_ms, 20);
    cr_assert_eq(cfg->health_interval_ms, 100);
    cr_assert_eq(cfg->max_replica_lag_bytes, INT64_C(1) << 40);
    cr_assert_eq(cfg->read_policy, PGG_READ_REPLICA_ONLY);
    cr_assert_eq(cfg->max_attempts, 4);
    cr_assert(cfg->cache_enabled);
    cr_assert_eq(cfg->cache_max_bytes, 4096);
    cr_assert_eq(cfg->cache_max_age_ms, 999);
    cr_assert_eq(cfg->breaker.failure_rate, 12.5);
    cr_assert_eq(cfg->breaker.slow_call_rate, 80);
    cr_assert_eq(cfg->breaker.slow_call_duration_ms, 1500);
    cr_assert_eq(cfg->breaker.min_calls, 9);
    cr_assert_eq(cfg->breaker.window_type, PGG_WINDOW_TIME);
    cr_assert_eq(cfg->breaker.window_size, 30);
    cr_assert_eq(cfg->breaker.window_bucket_ms, 250);
    cr_assert_eq(cfg->breaker.consecutive_failures, 0);
    cr_assert_eq(cfg->breaker.open_ms, 800);
    cr_assert_eq(cfg->breaker.open_multiplier, 1.5);
    cr_assert_eq(cfg->breaker.open_max_ms, 9000);
    cr_assert_eq(cfg->breaker.open_jitter, 0.1);
    cr_assert_eq(cfg->breaker.half_open_probes, 4);
    cr_assert_eq(cfg->breaker.half_open_successes, 2);
    cr_assert_eq(cfg->breaker.half_open_max_ms, 0);
    cr_assert_eq(cfg->breaker.healthy_decay_ms, 123);
    cr_assert_eq(cfg->breaker.interval_ms, 456);
    cr_assert_eq(cfg->breaker.mode, PGG_BREAKER_MODE_METRICS_ONLY);
    pgg_config_free(cfg);
}

OPT_TEST(enum_names_match_their_owners)
{
    static const struct {
        const char *name;
        pgg_read_policy v;
    } policies[] = {{"replica", PGG_READ_REPLICA},
                    {"replica_only", PGG_READ_REPLICA_ONLY},
                    {"primary", PGG_READ_PRIMARY_ONLY},
                    {"any", PGG_READ_ANY}};
    pgg_config *cfg = new_cfg();

    for (size_t i = 0; i < sizeof policies / sizeof policies[0]; i++) {
        assert_set(cfg, "read_policy", policies[i].name);
        cr_assert_eq(cfg->read_policy, policies[i].v);
    }
    for (int t = PGG_WINDOW_COUNT; t <= PGG_WINDOW_FIXED; t++) {
        assert_set(cfg, "breaker.window_type",
                   pgg__window_type_name((pgg_window_type)t));
        cr_assert_eq((int)cfg->breaker.window_type, t);
        cr_assert_str_eq(get(cfg, "breaker.window_type"),
                         pgg__window_type_name((pgg_window_type)t));
    }
    for (int p = PGG_BREAKER_PRESET_NONE; p <= PGG_BREAKER_PRESET_RESILIENCE4J; p++) {
        assert_set(cfg, "breaker.preset",
                   pgg__breaker_preset_name((pgg_breaker_preset)p));
        cr_assert_eq((int)cfg->breaker.preset, p);
    }
    for (int m = PGG_BREAKER_MODE_NORMAL; m <= PGG_BREAKER_MODE_FORCED_OPEN; m++) {
        assert_set(cfg, "breaker.mode",
                   pgg__breaker_mode_name((pgg_breaker_mode)m));
        cr_assert_eq((int)cfg->breaker.mode, m);
        cr_assert_str_eq(get(cfg, "breaker.mode"),
                         pgg__breaker_mode_name((pgg_breaker_mode)m));
    }
    pgg_config_free(cfg);
}

/* ------------------------------------------------- round trips and edges */

static void int_edges(pgg_config *cfg, const spec *s)
{
    char text[32];
    pgg_error err;

    /* Typed: each bound, and one past each. */
    cr_assert_eq(pgg_config_set_int(cfg, s->key, s->min, &err), PGG_OK,
                 "%s=%lld: %s", s->key, s->min, err.message);
    snprintf(text, sizeof text, "%lld", s->min);
    cr_assert_str_eq(get(cfg, s->key), text);
    cr_assert_eq(pgg_config_set_int(cfg, s->key, s->max, &err), PGG_OK,
                 "%s=%lld: %s", s->key, s->max, err.message);
    snprintf(text, sizeof text, "%lld", s->max);
    cr_assert_str_eq(get(cfg, s->key), text);
    expect_err(pgg_config_set_int(cfg, s->key, s->min - 1, &err), &err,
               PGG_ECONFIG, s->key);
    expect_err(pgg_config_set_int(cfg, s->key, s->max + 1, &err), &err,
               PGG_ECONFIG, s->key);
    cr_assert_str_eq(get(cfg, s->key), text, "a rejected value changed %s",
                     s->key);
    /* The range is in the message. */
    snprintf(text, sizeof text, "%lld..%lld", s->min, s->max);
    cr_assert(strstr(err.message, text), "%s", err.message);

    /* Text: the same edges. */
    snprintf(text, sizeof text, "%lld", s->min);
    assert_set(cfg, s->key, text);
    cr_assert_str_eq(get(cfg, s->key), text);
    snprintf(text, sizeof text, "%lld", s->min - 1);
    set_err(cfg, s->key, text, PGG_ECONFIG, s->key);
    snprintf(text, sizeof text, "%lld", s->max + 1);
    set_err(cfg, s->key, text, PGG_ECONFIG, s->key);
    snprintf(text, sizeof text, "%lld", s->max);
    assert_set(cfg, s->key, text);
    cr_assert_str_eq(get(cfg, s->key), text);

    /* Other types do not fit. */
    expect_err(pgg_config_set_double(cfg, s->key, 1.0, &err), &err,
               PGG_ECONFIG, s->key);
    expect_err(pgg_config_set_bool(cfg, s->key, 1, &err), &err, PGG_ECONFIG,
               s->key);
}

static void dbl_edges(pgg_config *cfg, const spec *s)
{
    pgg_error err;
    double over = s->dmax + (s->dmax_open ? 0 : 1e-9);

    cr_assert_eq(pgg_config_set_double(cfg, s->key, s->dmin, &err), PGG_OK,
                 "%s: %s", s->key, err.message);
    expect_err(pgg_config_set_double(cfg, s->key, s->dmin - 1e-9, &err), &err,
               PGG_ECONFIG, s->key);
    expect_err(pgg_config_set_double(cfg, s->key, over, &err), &err,
               PGG_ECONFIG, s->key);
    if (!s->dmax_open) {
        cr_assert_eq(pgg_config_set_double(cfg, s->key, s->dmax, &err), PGG_OK,
                     "%s: %s", s->key, err.message);
        /* A whole number through the integer setter. */
        cr_assert_eq(pgg_config_set_int(cfg, s->key, (long long)s->dmax, &err),
                     PGG_OK, "%s: %s", s->key, err.message);
        cr_assert_eq(*get(cfg, s->key), '1');
    } else {
        cr_assert_eq(pgg_config_set_double(cfg, s->key,
                                           s->dmax - 1e-9, &err),
                     PGG_OK, "%s: %s", s->key, err.message);
    }
    if (s->dmin == 0) {
        cr_assert_eq(pgg_config_set_double(cfg, s->key, -0.0, &err), PGG_OK);
        cr_assert_str_eq(get(cfg, s->key), "0");
    }
    expect_err(pgg_config_set_double(cfg, s->key, NAN, &err), &err,
               PGG_ECONFIG, s->key);
    expect_err(pgg_config_set_double(cfg, s->key, INFINITY, &err), &err,
               PGG_ECONFIG, s->key);
    expect_err(pgg_config_set_bool(cfg, s->key, 1, &err), &err, PGG_ECONFIG,
               s->key);

    /* Text round trips, in the shortest form that reads back exactly. */
    if (s->dmin <= 0.1) {
        assert_set(cfg, s->key, "0.5e0");
        cr_assert_str_eq(get(cfg, s->key), "0.5");
        assert_set(cfg, s->key, "0.1");
        cr_assert_str_eq(get(cfg, s->key), "0.1");
    } else {
        assert_set(cfg, s->key, "15e-1");
        cr_assert_str_eq(get(cfg, s->key), "1.5");
    }
}

OPT_TEST(every_key_edges_and_round_trips)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    for (size_t i = 0; i < NSPECS; i++) {
        const spec *s = &specs[i];

        switch (s->kind) {
        case INT:
            int_edges(cfg, s);
            break;
        case DBL:
            dbl_edges(cfg, s);
            break;
        case BOOL:
            cr_assert_eq(pgg_config_set_bool(cfg, s->key, 1, NULL), PGG_OK);
            cr_assert_str_eq(get(cfg, s->key), "true");
            cr_assert_eq(pgg_config_set_bool(cfg, s->key, 0, NULL), PGG_OK);
            cr_assert_str_eq(get(cfg, s->key), "false");
            cr_assert_eq(pgg_config_set_bool(cfg, s->key, 42, NULL), PGG_OK);
            cr_assert_str_eq(get(cfg, s->key), "true");
            expect_err(pgg_config_set_int(cfg, s->key, 1, &err), &err,
                       PGG_ECONFIG, s->key);
            expect_err(pgg_config_set_double(cfg, s->key, 1, &err), &err,
                       PGG_ECONFIG, s->key);
            break;
        case ENUM:
            for (int j = 0; s->names[j]; j++) {
                assert_set(cfg, s->key, s->names[j]);
                cr_assert_str_eq(get(cfg, s->key), s->names[j]);
            }
            set_err(cfg, s->key, "nope", PGG_ECONFIG, s->names[1]);
            set_err(cfg, s->key, "", PGG_ECONFIG, s->key);
            expect_err(pgg_config_set_int(cfg, s->key, 0, &err), &err,
                       PGG_ECONFIG, s->key);
            expect_err(pgg_config_set_bool(cfg, s->key, 0, &err), &err,
                       PGG_ECONFIG, s->key);
            break;
        }
        /* Back to the default, as text. */
        assert_set(cfg, s->key, s->def);
        cr_assert_str_eq(get(cfg, s->key), s->def);
    }
    pgg_config_free(cfg);
}

OPT_TEST(booleans)
{
    static const char *const yes[] = {"true", "TRUE", "on", "On", "yes", "1"};
    static const char *const no[] = {"false", "False", "off", "OFF", "no", "0"};
    static const char *const bad[] = {"", "2", "y", "n", "truee", "t", " true",
                                      "-1", "enabled"};
    pgg_config *cfg = new_cfg();

    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        assert_set(cfg, "cache.enabled", yes[i]);
        cr_assert_str_eq(get(cfg, "cache.enabled"), "true");
        assert_set(cfg, "cache.enabled", no[i]);
        cr_assert_str_eq(get(cfg, "cache.enabled"), "false");
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        set_err(cfg, "cache.enabled", bad[i], PGG_ECONFIG, "cache.enabled");
    pgg_config_free(cfg);
}

OPT_TEST(bad_integers)
{
    static const char *const bad[] = {
        "", " 5", "5 ", "5x", "x5", "0x10", "1e3", "1.0", "--5", "+-5", "5-",
        "99999999999999999999", "9223372036854775808",
        "-9223372036854775809", "١٢", "1_000",
    };
    pgg_config *cfg = new_cfg();

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        set_err(cfg, "pool_max", bad[i], PGG_ECONFIG, "pool_max");
        set_err(cfg, "max_replica_lag_bytes", bad[i], PGG_ECONFIG,
                "max_replica_lag_bytes");
    }
    /* Not an integer at all: the message says so, with the range. */
    set_err(cfg, "pool_max", "ten", PGG_ECONFIG, "is not an integer");
    set_err(cfg, "pool_max", "ten", PGG_ECONFIG, "1..10000");
    /* Negative where not allowed. */
    set_err(cfg, "pool_min_idle", "-1", PGG_ECONFIG, "out of range");
    set_err(cfg, "breaker.min_calls", "-1", PGG_ECONFIG, "out of range");
    /* Extreme values through the typed setter do not wrap. */
    set_err(cfg, "pool_max", "9223372036854775807", PGG_ECONFIG, "out of range");
    set_err(cfg, "pool_max", "-9223372036854775808", PGG_ECONFIG, "out of range");
    cr_assert_eq(pgg_config_set_int(cfg, "pool_max", LLONG_MIN, NULL), PGG_ECONFIG);
    cr_assert_eq(pgg_config_set_int(cfg, "pool_max", LLONG_MAX, NULL), PGG_ECONFIG);
    cr_assert_eq(pgg_config_set_int(cfg, "breaker.window_size",
                                    (long long)UINT32_MAX + 1, NULL),
                 PGG_ECONFIG);
    cr_assert_eq(pgg_config_set_int(cfg, "pool_max", (long long)INT_MAX + 1, NULL),
                 PGG_ECONFIG);
    /* Leading '+' and zeros are plain decimal. */
    assert_set(cfg, "pool_max", "+0012");
    cr_assert_eq(cfg->pool_max, 12);
    cr_assert_str_eq(get(cfg, "pool_max"), "12");
    pgg_config_free(cfg);
}

OPT_TEST(bad_doubles)
{
    static const char *const bad[] = {"", "nan", "NaN", "inf", "-inf",
                                      "infinity", "1,5", "0x1p3", "5%", ". ",
                                      ".", "e5", "1e", "1e+", " 1", "1 ",
                                      "1e400", "50x"};
    pgg_config *cfg = new_cfg();

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        set_err(cfg, "breaker.failure_rate", bad[i], PGG_ECONFIG,
                "breaker.failure_rate");
    set_err(cfg, "breaker.failure_rate", "abc", PGG_ECONFIG, "is not a number");
    set_err(cfg, "breaker.failure_rate", "100.5", PGG_ECONFIG, "out of range");
    set_err(cfg, "breaker.failure_rate", "-0.5", PGG_ECONFIG, "out of range");
    set_err(cfg, "breaker.open_jitter", "1", PGG_ECONFIG, "0 <= x < 1");
    set_err(cfg, "breaker.open_multiplier", "0.99", PGG_ECONFIG, "out of range");
    assert_set(cfg, "breaker.failure_rate", ".5");
    cr_assert_str_eq(get(cfg, "breaker.failure_rate"), "0.5");
    assert_set(cfg, "breaker.failure_rate", "1e1");
    cr_assert_str_eq(get(cfg, "breaker.failure_rate"), "10");
    assert_set(cfg, "breaker.failure_rate", "33.333333333333336");
    cr_assert_str_eq(get(cfg, "breaker.failure_rate"), "33.333333333333336");
    pgg_config_free(cfg);
}

OPT_TEST(numbers_ignore_the_locale)
{
    pgg_config *cfg = new_cfg();

    /* A locale whose decimal point is a comma, when the machine has one. */
    if (!setlocale(LC_NUMERIC, "de_DE.UTF-8") && !setlocale(LC_NUMERIC, "fr_FR.UTF-8")) {
        pgg_config_free(cfg);
        cr_skip_test("no locale with a decimal comma installed");
    }
    assert_set(cfg, "breaker.failure_rate", "12.5");
    cr_assert_eq(cfg->breaker.failure_rate, 12.5);
    cr_assert_str_eq(get(cfg, "breaker.failure_rate"), "12.5");
    set_err(cfg, "breaker.failure_rate", "12,5", PGG_ECONFIG, "not a number");
    setlocale(LC_NUMERIC, "C");
    pgg_config_free(cfg);
}

OPT_TEST(unknown_keys)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;
    char buf[32];

    set_err(cfg, "pool_maxx", "1", PGG_ECONFIG, "unknown key \"pool_maxx\"");
    set_err(cfg, "pool_maxx", "1", PGG_ECONFIG, "did you mean \"pool_max\"");
    set_err(cfg, "breaker.failurerate", "1", PGG_ECONFIG, "breaker.failure_rate");
    set_err(cfg, "zzzzzzzzzzzzzzzzzzz", "1", PGG_ECONFIG, "unknown key");
    set_err(cfg, "", "1", PGG_ECONFIG, "unknown key");
    set_err(cfg, "POOL_MAX", "1", PGG_ECONFIG, "unknown key");
    expect_err(pgg_config_set_int(cfg, "nope", 1, &err), &err, PGG_ECONFIG,
               "unknown key \"nope\"");
    expect_err(pgg_config_set_double(cfg, "nope", 1, &err), &err, PGG_ECONFIG,
               "unknown key");
    expect_err(pgg_config_set_bool(cfg, "nope", 1, &err), &err, PGG_ECONFIG,
               "unknown key");
    expect_err(pgg_config_get(cfg, "nope", buf, sizeof buf, &err), &err,
               PGG_ECONFIG, "unknown key");
    /* A very long key is cut in the message, not overflowed. */
    {
        char key[2000];

        memset(key, 'k', sizeof key - 1);
        key[sizeof key - 1] = '\0';
        set_err(cfg, key, "1", PGG_ECONFIG, "unknown key");
    }
    pgg_config_free(cfg);
}

OPT_TEST(null_arguments)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;
    char buf[16];

    pgg_config_free(NULL);
    expect_err(pgg_config_set(NULL, "pool_max", "1", &err), &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_set(cfg, NULL, "1", &err), &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_set(cfg, "pool_max", NULL, &err), &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_set_int(NULL, "pool_max", 1, &err), &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_set_int(cfg, NULL, 1, &err), &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_set_double(NULL, "x", 1, &err), &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_set_double(cfg, NULL, 1, &err), &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_set_bool(NULL, "x", 1, &err), &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_set_bool(cfg, NULL, 1, &err), &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_set_servers(NULL, "host=a", &err), &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_set_servers(cfg, NULL, &err), &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_parse(NULL, "a=1", &err), &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_parse(cfg, NULL, &err), &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_get(NULL, "pool_max", buf, sizeof buf, &err), &err,
               PGG_EINVAL, NULL);
    expect_err(pgg_config_get(cfg, NULL, buf, sizeof buf, &err), &err,
               PGG_EINVAL, NULL);
    expect_err(pgg_config_get(cfg, "pool_max", NULL, 5, &err), &err, PGG_EINVAL,
               NULL);
    expect_err(pgg_config_get(cfg, "pool_max", buf, 0, &err), &err, PGG_EINVAL,
               NULL);
    expect_err(pgg_config_classify(NULL, "57P01", PGG_CLASS_IGNORED, 0, &err),
               &err, PGG_EINVAL, NULL);
    expect_err(pgg_config_classify(cfg, NULL, PGG_CLASS_IGNORED, 0, &err), &err,
               PGG_EINVAL, NULL);
    cr_assert_null(pgg__config_copy(NULL, &err));
    cr_assert_eq(err.code, PGG_EINVAL);
    expect_err(pgg__config_validate(NULL, &err), &err, PGG_EINVAL, NULL);
    /* A NULL error record is fine everywhere. */
    cr_assert_eq(pgg_config_set(cfg, "nope", "1", NULL), PGG_ECONFIG);
    cr_assert_eq(pgg_config_set(NULL, NULL, NULL, NULL), PGG_EINVAL);
    cr_assert_eq(pgg_config_set_servers(cfg, "host=a port=x", NULL), PGG_ECONFIG);
    cr_assert_eq(pgg_config_parse(cfg, "pool_max=0", NULL), PGG_ECONFIG);
    cr_assert_eq(pgg_config_get(cfg, "nope", buf, sizeof buf, NULL), PGG_ECONFIG);
    pgg_config_free(cfg);
}

OPT_TEST(get_buffer_too_small)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;
    char buf[16];

    expect_err(pgg_config_get(cfg, "max_replica_lag_bytes", buf, 8, &err), &err,
               PGG_EINVAL, "too small");
    cr_assert_str_eq(buf, "");
    cr_assert_eq(pgg_config_get(cfg, "max_replica_lag_bytes", buf, 9, &err),
                 PGG_OK);
    cr_assert_str_eq(buf, "16777216");
    cr_assert_eq(pgg_config_get(cfg, "pool_max", buf, 3, &err), PGG_OK);
    expect_err(pgg_config_get(cfg, "pool_max", buf, 2, &err), &err, PGG_EINVAL,
               "pool_max");
    pgg_config_free(cfg);
}

/* ----------------------------------------------------------------- parse */

OPT_TEST(parse_pairs_comments_quotes)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;
    const char *text =
        "# pgguard settings\n"
        "pool_max=20   pool_min_idle = 2\t# two warm connections\n"
        "\n"
        "   read_policy=any#no space before the comment\r\n"
        "breaker.failure_rate='25.5' breaker.mode='metrics-only'\n"
        "cache.enabled=yes\n"
        "classify.57P01=ignored,retry\n"
        "servers='host=a,b port=5432,5433 application_name=\\'my app\\' "
        "password=\\'q\\\\\\'w\\''\n"
        "# the end";

    cr_assert_eq(pgg_config_parse(cfg, text, &err), PGG_OK, "%s", err.message);
    cr_assert_eq(cfg->pool_max, 20);
    cr_assert_eq(cfg->pool_min_idle, 2);
    cr_assert_eq(cfg->read_policy, PGG_READ_ANY);
    cr_assert_eq(cfg->breaker.failure_rate, 25.5);
    cr_assert_eq(cfg->breaker.mode, PGG_BREAKER_MODE_METRICS_ONLY);
    cr_assert(cfg->cache_enabled);
    cr_assert_str_eq(get(cfg, "classify.57P01"), "ignored,retry");
    cr_assert_eq(cfg->nhosts, 2);
    expect_host(cfg, 0, "a:5432", "a", NULL, "5432");
    expect_host(cfg, 1, "b:5433", "b", NULL, "5433");
    /* Two levels of quoting: ours, then libpq's. */
    cr_assert_str_eq(param(&cfg->hosts[1], "application_name"), "my app");
    cr_assert_str_eq(param(&cfg->hosts[1], "password"), "q'w");
    pgg_config_free(cfg);
}

OPT_TEST(parse_escapes_and_empty)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    cr_assert_eq(pgg_config_parse(cfg, "", &err), PGG_OK);
    cr_assert_eq(pgg_config_parse(cfg, "  \n\t# only a comment\n", &err), PGG_OK);
    /* Escapes in quoted and plain values; a quoted value may span lines. */
    cr_assert_eq(pgg_config_parse(cfg, "read_policy='rep\\lica'", &err), PGG_OK,
                 "%s", err.message);
    cr_assert_eq(cfg->read_policy, PGG_READ_REPLICA);
    cr_assert_eq(pgg_config_parse(cfg, "read_policy=pri\\mary", &err), PGG_OK,
                 "%s", err.message);
    cr_assert_eq(cfg->read_policy, PGG_READ_PRIMARY_ONLY);
    cr_assert_eq(pgg_config_parse(cfg,
                                  "servers='host=a\n  port=6000\n  "
                                  "options=\\'-c search_path=x\\\\\\\\y\\''",
                                  &err),
                 PGG_OK, "%s", err.message);
    expect_host(cfg, 0, "a:6000", "a", NULL, "6000");
    /* \\ in ours is one \, and \\ in libpq's is one \ again. */
    cr_assert_str_eq(param(&cfg->hosts[0], "options"), "-c search_path=x\\y");
    /* An empty value is a value: rejected by the key, named. */
    cr_assert_eq(pgg_config_parse(cfg, "pool_max=", &err), PGG_ECONFIG);
    cr_assert(strstr(err.message, "pool_max"), "%s", err.message);
    cr_assert_eq(pgg_config_parse(cfg, "pool_max=''", &err), PGG_ECONFIG);
    pgg_config_free(cfg);
}

OPT_TEST(parse_stops_at_the_first_bad_pair)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    cr_assert_eq(pgg_config_parse(cfg,
                                  "pool_max=30\n"
                                  "pool_min_idle=3\n"
                                  "call_timeout_ms=0\n"
                                  "max_attempts=5\n",
                                  &err),
                 PGG_ECONFIG);
    cr_assert(strstr(err.message, "call_timeout_ms"), "%s", err.message);
    cr_assert(strstr(err.message, "(line 3)"), "%s", err.message);
    cr_assert_eq(cfg->pool_max, 30);
    cr_assert_eq(cfg->pool_min_idle, 3);
    cr_assert_eq(cfg->call_timeout_ms, 5000);
    cr_assert_eq(cfg->max_attempts, 3);
    pgg_config_free(cfg);
}

OPT_TEST(parse_syntax_errors)
{
    static const struct {
        const char *text, *needle;
    } cases[] = {
        {"pool_max", "missing \"=\" after \"pool_max\" (line 1)"},
        {"pool_max 5", "missing \"=\" after \"pool_max\""},
        {"\n\npool_max\n=5", "(line 3)"},
        {"=5", "expected key=value"},
        {"pool_max=1 ='x'", "expected key=value"},
        {"'pool_max'=1", "expected key=value"},
        {"read_policy='any", "read_policy: unterminated quoted value (line 1)"},
        {"read_policy='any'x", "read_policy: text after the closing quote"},
        {"read_policy='an\\'y", "unterminated"},
        {"nope=1", "unknown key \"nope\""},
        {"\n\nnope=1", "(line 3)"},
        {"a\\=b=1", "unknown key"},
    };
    pgg_config *cfg = new_cfg();
    pgg_error err;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = pgg_config_parse(cfg, cases[i].text, &err);

        expect_err(rc, &err, PGG_ECONFIG, cases[i].needle);
    }
    /* "Quoted" keeps '#' and whitespace in the value. */
    cr_assert_eq(pgg_config_parse(cfg, "read_policy='any' # ok", &err), PGG_OK);
    cr_assert_eq(pgg_config_parse(cfg, "read_policy='#any'", &err), PGG_ECONFIG);
    cr_assert(strstr(err.message, "#any"), "%s", err.message);
    pgg_config_free(cfg);
}

/* ---------------------------------------------------------- classify keys */

OPT_TEST(classify_keys)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;
    char buf[64];

    assert_set(cfg, "classify.57P01", "ignored,retry");
    cr_assert_str_eq(get(cfg, "classify.57P01"), "ignored,retry");
    assert_set(cfg, "classify.57P01", "unavailable");
    cr_assert_str_eq(get(cfg, "classify.57P01"), "unavailable");
    assert_set(cfg, "classify.23", "timeout,noretry");
    cr_assert_str_eq(get(cfg, "classify.23"), "timeout");
    assert_set(cfg, "classify.40001", "failure,retry");
    cr_assert_str_eq(get(cfg, "classify.40001"), "unavailable,retry");
    cr_assert_eq(cfg->classifier.n, 3);

    cr_assert_eq(pgg_config_classify(cfg, "53300", PGG_CLASS_CONNECTION, 1, &err),
                 PGG_OK, "%s", err.message);
    cr_assert_str_eq(get(cfg, "classify.53300"), "connection,retry");
    cr_assert_eq(pgg_config_classify(cfg, "53300", PGG_CLASS_SUCCESS, 0, &err),
                 PGG_OK);
    cr_assert_str_eq(get(cfg, "classify.53300"), "success");

    set_err(cfg, "classify.57P01", "sick", PGG_ECONFIG, "classify.57P01");
    set_err(cfg, "classify.57P01", "sick", PGG_ECONFIG, "wrong_role");
    set_err(cfg, "classify.57P01", "ignored,always", PGG_ECONFIG, "<class>[,retry]");
    set_err(cfg, "classify.57P01", "ignored,", PGG_ECONFIG, "classify.57P01");
    set_err(cfg, "classify.57P01", "", PGG_ECONFIG, "classify.57P01");
    set_err(cfg, "classify.5701", "ignored", PGG_ECONFIG, "SQLSTATE");
    set_err(cfg, "classify.57p01", "ignored", PGG_ECONFIG, "SQLSTATE");
    set_err(cfg, "classify.", "ignored", PGG_ECONFIG, "SQLSTATE");
    expect_err(pgg_config_classify(cfg, "123456", PGG_CLASS_SUCCESS, 0, &err),
               &err, PGG_ECONFIG, "SQLSTATE");
    expect_err(pgg_config_classify(cfg, "57P01", (pgg_class)99, 0, &err), &err,
               PGG_ECONFIG, NULL);
    expect_err(pgg_config_set_int(cfg, "classify.57P01", 1, &err), &err,
               PGG_ECONFIG, "classify.57P01");
    expect_err(pgg_config_set_bool(cfg, "classify.57P01", 1, &err), &err,
               PGG_ECONFIG, "classify.57P01");
    expect_err(pgg_config_get(cfg, "classify.08006", buf, sizeof buf, &err),
               &err, PGG_ECONFIG, "no override");
    expect_err(pgg_config_get(cfg, "classify.57P01", buf, 4, &err), &err,
               PGG_EINVAL, "too small");
    pgg_config_free(cfg);
}

/* ---------------------------------------------------- conninfo splitting */

OPT_TEST(kv_multi_host)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    cr_assert_eq(servers(cfg,
                         "host=db1,db2,db3 port=5432,5433,5434 user=app "
                         "dbname=shop password=pw sslmode=disable "
                         "application_name='my service' connect_timeout=3 "
                         "options='-c statement_timeout=5s'",
                         &err),
                 PGG_OK, "%s", err.message);
    cr_assert_eq(cfg->nhosts, 3);
    expect_host(cfg, 0, "db1:5432", "db1", NULL, "5432");
    expect_host(cfg, 1, "db2:5433", "db2", NULL, "5433");
    expect_host(cfg, 2, "db3:5434", "db3", NULL, "5434");
    for (int i = 0; i < 3; i++) {
        const pgg_host_spec *h = &cfg->hosts[i];

        cr_assert_str_eq(param(h, "user"), "app");
        cr_assert_str_eq(param(h, "dbname"), "shop");
        cr_assert_str_eq(param(h, "password"), "pw");
        cr_assert_str_eq(param(h, "sslmode"), "disable");
        cr_assert_str_eq(param(h, "application_name"), "my service");
        /* Kept: pgguard's own connect_timeout_ms bounds the connect. */
        cr_assert_str_eq(param(h, "connect_timeout"), "3");
        cr_assert_str_eq(param(h, "options"), "-c statement_timeout=5s");
        cr_assert_not(h->unix_socket);
        /* Keywords not given are left to libpq's defaults. */
        cr_assert_null(param(h, "sslrootcert"));
        cr_assert_eq(h->nparams, 9);
    }
    cr_assert_str_eq(get(cfg, "servers"), "db1:5432,db2:5433,db3:5434");
    pgg_config_free(cfg);
}

OPT_TEST(params_connect_with_libpq)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    /* The arrays are what PQconnectStartParams takes: check that libpq
     * itself reads one host from them, without connecting. */
    cr_assert_eq(servers(cfg, "host=127.0.0.1,127.0.0.2 port=1,2 dbname=x", &err),
                 PGG_OK);
    for (int i = 0; i < cfg->nhosts; i++) {
        PGconn *c = PQconnectStartParams(cfg->hosts[i].keys,
                                         cfg->hosts[i].vals, 0);

        cr_assert_not_null(c);
        cr_assert_str_eq(PQhost(c), i ? "127.0.0.2" : "127.0.0.1");
        cr_assert_str_eq(PQport(c), i ? "2" : "1");
        cr_assert_str_eq(PQdb(c), "x");
        PQfinish(c);
    }
    pgg_config_free(cfg);
}

OPT_TEST(uri_multi_host)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    cr_assert_eq(servers(cfg,
                         "postgresql://app:s%40cret@db1:5432,db2:5433,db3/shop"
                         "?sslmode=require&application_name=api",
                         &err),
                 PGG_OK, "%s", err.message);
    cr_assert_eq(cfg->nhosts, 3);
    expect_host(cfg, 0, "db1:5432", "db1", NULL, "5432");
    expect_host(cfg, 1, "db2:5433", "db2", NULL, "5433");
    /* No port after db3: libpq's default, as an empty element. */
    expect_host(cfg, 2, "db3:5432", "db3", NULL, "");
    for (int i = 0; i < 3; i++) {
        cr_assert_str_eq(param(&cfg->hosts[i], "user"), "app");
        cr_assert_str_eq(param(&cfg->hosts[i], "password"), "s@cret");
        cr_assert_str_eq(param(&cfg->hosts[i], "dbname"), "shop");
        cr_assert_str_eq(param(&cfg->hosts[i], "sslmode"), "require");
        cr_assert_str_eq(param(&cfg->hosts[i], "application_name"), "api");
    }
    /* IPv6 literals and the short scheme. */
    cr_assert_eq(servers(cfg, "postgres://[::1]:6000,[fe80::2],127.0.0.1:6002/d",
                         &err),
                 PGG_OK, "%s", err.message);
    cr_assert_eq(cfg->nhosts, 3);
    expect_host(cfg, 0, "[::1]:6000", "::1", NULL, "6000");
    expect_host(cfg, 1, "[fe80::2]:5432", "fe80::2", NULL, "");
    expect_host(cfg, 2, "127.0.0.1:6002", "127.0.0.1", NULL, "6002");
    pgg_config_free(cfg);
}

OPT_TEST(one_port_for_all)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    cr_assert_eq(servers(cfg, "host=a,b,c port=6543", &err), PGG_OK, "%s",
                 err.message);
    cr_assert_eq(cfg->nhosts, 3);
    expect_host(cfg, 0, "a:6543", "a", NULL, "6543");
    expect_host(cfg, 1, "b:6543", "b", NULL, "6543");
    expect_host(cfg, 2, "c:6543", "c", NULL, "6543");
    cr_assert_eq(servers(cfg, "postgresql://a,b,c:7000/db", &err), PGG_OK);
    /* In a URI, a port belongs to its host: "a,b,c:7000" is ",,7000". */
    expect_host(cfg, 0, "a:5432", "a", NULL, "");
    expect_host(cfg, 2, "c:7000", "c", NULL, "7000");
    /* No port at all: none is passed, the name shows libpq's default. */
    cr_assert_eq(servers(cfg, "host=a,b", &err), PGG_OK);
    expect_host(cfg, 1, "b:5432", "b", NULL, NULL);
    pgg_config_free(cfg);
}

OPT_TEST(per_host_ports_and_empty_entries)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    cr_assert_eq(servers(cfg, "host=a,b,c port=1,,3", &err), PGG_OK, "%s",
                 err.message);
    expect_host(cfg, 0, "a:1", "a", NULL, "1");
    expect_host(cfg, 1, "b:5432", "b", NULL, "");
    expect_host(cfg, 2, "c:3", "c", NULL, "3");
    /* An empty host element is libpq's default host (its socket
     * directory here), passed as "" so that libpq applies it. */
    cr_assert_eq(servers(cfg, "host=a,,c port=5432", &err), PGG_OK);
    cr_assert_eq(cfg->nhosts, 3);
    cr_assert_str_eq(param(&cfg->hosts[1], "host"), "");
    cr_assert(strstr(cfg->hosts[1].name, ":5432"));
    cr_assert_eq(cfg->hosts[1].name[0], '/');
    cr_assert(cfg->hosts[1].unix_socket);
    pgg_config_free(cfg);
}

OPT_TEST(hostaddr_lists)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    cr_assert_eq(servers(cfg, "host=a,b hostaddr=10.0.0.1,10.0.0.2 port=5432",
                         &err),
                 PGG_OK, "%s", err.message);
    cr_assert_eq(cfg->nhosts, 2);
    expect_host(cfg, 0, "a:5432", "a", "10.0.0.1", "5432");
    expect_host(cfg, 1, "b:5432", "b", "10.0.0.2", "5432");
    /* hostaddr alone; it sets the count. */
    cr_assert_eq(servers(cfg, "hostaddr=127.0.0.1,::1 port=1,2", &err), PGG_OK);
    expect_host(cfg, 0, "127.0.0.1:1", NULL, "127.0.0.1", "1");
    expect_host(cfg, 1, "[::1]:2", NULL, "::1", "2");
    cr_assert_not(cfg->hosts[0].unix_socket);
    /* An empty hostaddr element: that host is reached by name. */
    cr_assert_eq(servers(cfg, "host=a,b hostaddr=,10.0.0.2", &err), PGG_OK);
    expect_host(cfg, 0, "a:5432", "a", "", NULL);
    expect_host(cfg, 1, "b:5432", "b", "10.0.0.2", NULL);
    pgg_config_free(cfg);
}

OPT_TEST(unix_socket_directories)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    cr_assert_eq(servers(cfg, "host=/tmp,/var/run/postgresql,db port=5432,5433,5434",
                         &err),
                 PGG_OK, "%s", err.message);
    expect_host(cfg, 0, "/tmp:5432", "/tmp", NULL, "5432");
    expect_host(cfg, 1, "/var/run/postgresql:5433", "/var/run/postgresql", NULL,
                "5433");
    cr_assert(cfg->hosts[0].unix_socket);
    cr_assert(cfg->hosts[1].unix_socket);
    cr_assert_not(cfg->hosts[2].unix_socket);
    /* In a URI, percent-encoded, or as a query parameter. */
    cr_assert_eq(servers(cfg, "postgresql://%2Ftmp%2Fpg:6000/db", &err), PGG_OK,
                 "%s", err.message);
    expect_host(cfg, 0, "/tmp/pg:6000", "/tmp/pg", NULL, "6000");
    cr_assert_eq(servers(cfg, "postgresql:///db?host=/s1,/s2&port=7000", &err),
                 PGG_OK, "%s", err.message);
    cr_assert_eq(cfg->nhosts, 2);
    expect_host(cfg, 1, "/s2:7000", "/s2", NULL, "7000");
    /* No host at all: one host, libpq's default socket directory. */
    cr_assert_eq(servers(cfg, "dbname=x", &err), PGG_OK);
    cr_assert_eq(cfg->nhosts, 1);
    expect_host(cfg, 0, cfg->hosts[0].name, NULL, NULL, NULL);
    cr_assert(cfg->hosts[0].unix_socket);
    cr_assert(strstr(cfg->hosts[0].name, ":5432"));
    pgg_config_free(cfg);
}

/* Which hosts' connects look a name up (getaddrinfo blocks: an event
 * loop hands their whole connect to the health thread). */
OPT_TEST(hosts_reached_by_name_are_marked_for_a_lookup)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    cr_assert_eq(servers(cfg, "host=127.0.0.1,::1,localhost,/tmp,@abs,db.example port=5432",
                         &err),
                 PGG_OK, "%s", err.message);
    cr_assert_eq(cfg->nhosts, 6);
    cr_assert_not(cfg->hosts[0].lookup);
    cr_assert_not(cfg->hosts[1].lookup);
    cr_assert(cfg->hosts[2].lookup);
    cr_assert_not(cfg->hosts[3].lookup);
    cr_assert_not(cfg->hosts[4].lookup);
    cr_assert(cfg->hosts[5].lookup);
    /* hostaddr spares the lookup; an empty element of it does not. */
    cr_assert_eq(servers(cfg, "host=a,b hostaddr=10.0.0.1, port=5432", &err), PGG_OK);
    cr_assert_not(cfg->hosts[0].lookup);
    cr_assert(cfg->hosts[1].lookup);
    /* No host: the socket directory; a service file may name any host. */
    cr_assert_eq(servers(cfg, "dbname=x", &err), PGG_OK);
    cr_assert(cfg->hosts[0].lookup == !cfg->hosts[0].unix_socket);
    cr_assert_eq(servers(cfg, "service=nosuch", &err), PGG_OK, "%s", err.message);
    cr_assert(cfg->hosts[0].lookup);
    /* Copies keep it. */
    {
        pgg_config *copy;

        cr_assert_eq(servers(cfg, "host=db.example,10.0.0.3", &err), PGG_OK);
        copy = pgg__config_copy(cfg, &err);
        cr_assert_not_null(copy);
        cr_assert(copy->hosts[0].lookup);
        cr_assert_not(copy->hosts[1].lookup);
        pgg_config_free(copy);
    }
    pgg_config_free(cfg);
}

OPT_TEST(environment_lists_split_too)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    setenv("PGHOST", "e1,e2", 1);
    setenv("PGPORT", "7001,7002", 1);
    cr_assert_eq(servers(cfg, "dbname=x", &err), PGG_OK, "%s", err.message);
    cr_assert_eq(cfg->nhosts, 2);
    expect_host(cfg, 0, "e1:7001", "e1", NULL, "7001");
    expect_host(cfg, 1, "e2:7002", "e2", NULL, "7002");
    /* The conninfo wins over the environment. */
    cr_assert_eq(servers(cfg, "host=c port=1", &err), PGG_OK);
    expect_host(cfg, 0, "c:1", "c", NULL, "1");
    /* With a service, libpq resolves host and port when it connects. */
    cr_assert_eq(servers(cfg, "service=orders dbname=x", &err), PGG_OK);
    cr_assert_eq(cfg->nhosts, 1);
    expect_host(cfg, 0, "(service orders)", NULL, NULL, NULL);
    cr_assert_str_eq(param(&cfg->hosts[0], "service"), "orders");
    pgg_config_free(cfg);
}

OPT_TEST(count_mismatches)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    expect_err(servers(cfg, "host=a,b port=1,2,3", &err), &err, PGG_ECONFIG,
               "could not match 3 port numbers to 2 hosts");
    expect_err(servers(cfg, "host=a,b,c port=1,2", &err), &err, PGG_ECONFIG,
               "could not match 2 port numbers to 3 hosts");
    expect_err(servers(cfg, "host=a,b,c hostaddr=10.0.0.1,10.0.0.2", &err), &err,
               PGG_ECONFIG, "could not match 3 host names to 2 hostaddr values");
    expect_err(servers(cfg, "postgresql://a:1,b:2/db?port=1,2,3", &err), &err,
               PGG_ECONFIG, "port numbers");
    expect_err(servers(cfg, "hostaddr=10.0.0.1,10.0.0.2 port=1,2,3", &err),
               &err, PGG_ECONFIG, "could not match 3 port numbers to 2 hosts");
    pgg_config_free(cfg);
}

OPT_TEST(bad_ports)
{
    static const char *const bad[] = {"host=a port=x", "host=a port=0",
                                      "host=a port=65536", "host=a,b port=1,-2",
                                      "host=a port=1x", "host=a port=99999999999999"};
    pgg_config *cfg = new_cfg();
    pgg_error err;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_err(servers(cfg, bad[i], &err), &err, PGG_ECONFIG,
                   "invalid port number");
    cr_assert_eq(servers(cfg, "host=a port=65535", &err), PGG_OK);
    cr_assert_eq(servers(cfg, "host=a port=' 1 '", &err), PGG_OK);
    pgg_config_free(cfg);
}

OPT_TEST(rejected_routing_keywords)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    expect_err(servers(cfg, "host=a,b target_session_attrs=read-write", &err),
               &err, PGG_ECONFIG, "target_session_attrs=read-write is not supported");
    expect_err(servers(cfg, "host=a,b target_session_attrs=primary", &err), &err,
               PGG_ECONFIG, "pgguard");
    expect_err(servers(cfg, "postgresql://a,b/db?target_session_attrs=standby",
                       &err),
               &err, PGG_ECONFIG, "target_session_attrs");
    expect_err(servers(cfg, "host=a,b load_balance_hosts=random", &err), &err,
               PGG_ECONFIG, "load_balance_hosts is not supported");
    expect_err(servers(cfg, "postgresql://a,b/db?load_balance_hosts=random", &err),
               &err, PGG_ECONFIG, "load_balance_hosts is not supported");
    /* The defaults are fine. */
    cr_assert_eq(servers(cfg, "host=a,b target_session_attrs=any", &err), PGG_OK,
                 "%s", err.message);
    pgg_config_free(cfg);
}

OPT_TEST(host_limit)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;
    char list[1024] = "host=";

    for (int i = 0; i < PGG_MAX_HOSTS; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%sh%d",
                 i ? "," : "", i);
    cr_assert_eq(servers(cfg, list, &err), PGG_OK, "%s", err.message);
    cr_assert_eq(cfg->nhosts, PGG_MAX_HOSTS);
    expect_host(cfg, 63, "h63:5432", "h63", NULL, NULL);
    strcat(list, ",h64");
    expect_err(servers(cfg, list, &err), &err, PGG_ECONFIG, "at most 64");
    /* The failure kept the previous servers. */
    cr_assert_eq(cfg->nhosts, PGG_MAX_HOSTS);
    cr_assert_str_eq(cfg->hosts[63].name, "h63:5432");
    pgg_config_free(cfg);
}

OPT_TEST(libpq_parse_errors)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    /* The keyword is not quoted (it may be a piece of a password written
     * without quotes): its position is given instead. */
    expect_err(servers(cfg, "host=a bogus=1", &err), &err, PGG_ECONFIG,
               "invalid connection option at position 8");
    expect_err(servers(cfg, "host=a user", &err), &err, PGG_ECONFIG,
               "missing \"=\"");
    expect_err(servers(cfg, "host='a", &err), &err, PGG_ECONFIG, "unterminated");
    expect_err(servers(cfg, "postgresql://a/db?bogus=1", &err), &err, PGG_ECONFIG,
               "invalid connection option at position 19 in a parameter name");
    cr_assert_eq(err.message[strlen(err.message) - 1] != '\n', 1);
    pgg_config_free(cfg);
}

/* ------------------------------------------------------------- passwords */

static void no_secret(pgg_config *cfg, const char *conninfo, const char *secret)
{
    pgg_error err;
    int rc = servers(cfg, conninfo, &err);

    cr_assert_eq(rc, PGG_ECONFIG, "%s accepted", conninfo);
    cr_assert_not(strstr(err.message, secret), "password leaked: %s",
                  err.message);
    cr_assert_not(strstr(err.host, secret));
    cr_assert_not(strstr(err.message, conninfo), "conninfo quoted: %s",
                  err.message);
    cr_assert(strncmp(err.message, "servers: ", 9) == 0, "%s", err.message);
}

OPT_TEST(passwords_never_in_messages)
{
    static const char *const cases[] = {
        /* key=value: our own checks */
        "host=a,b port=1,2,3 password=Sup3rSecr3t",
        "password=Sup3rSecr3t host=a port=nope",
        "host=a target_session_attrs=read-write password=Sup3rSecr3t",
        "host=a load_balance_hosts=random password=Sup3rSecr3t",
        "sslpassword=Sup3rSecr3t host=a,b,c hostaddr=1.1.1.1",
        /* key=value: libpq's parser */
        "password=Sup3rSecr3t bogus=1",
        "password='Sup3rSecr3t",
        "password=Sup3rSecr3t user",
        "password = 'Sup3r\\'Secr3t' host=a 'x",
        /* URIs: libpq quotes the URI, or a token of it */
        "postgresql://u:Sup3rSecr3t@[::1/db",
        "postgresql://u:Sup3rSecr3t@[]/db",
        "postgresql://u:Sup3rSecr3t@h/db?bogus=1",
        "postgresql://u:Sup3rSecr3t@h/db?sslmode",
        "postgresql://u:Sup3rSecr3t@h/db?a=b=c",
        "postgresql://u:Sup3rSecr3t@h:x/db",
        "postgresql://u:Sup3rSecr3t@h/d%zzb",
        "postgresql://u:Sup3rSecr3t%zz@h/db",
        "postgresql://u:Sup3rSecr3t%00@h/db",
        "postgresql://u@h/db?password=Sup3rSecr3t%zz",
        "postgresql://u@h/db?password=Sup3rSecr3t&bogus=1",
        "postgresql://u@h/db?pass%77ord=Sup3rSecr3t&x",
        "postgresql://u@h/db?sslpassword=Sup3rSecr3t&port=1,2",
        "postgresql://u:Sup3rSecr3t@a,b/db?port=1,2,3",
        "postgresql://u:Sup3rSecr3t@a:1,b:0/db",
        "postgresql://u:Sup3rSecr3t@h/db?target_session_attrs=read-only",
    };
    pgg_config *cfg = new_cfg();
    pgg_error err;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        no_secret(cfg, cases[i], "Sup3rSecr3t");
    /* Through the parser as well. */
    cr_assert_eq(pgg_config_parse(cfg,
                                  "servers='postgresql://u:Sup3rSecr3t@[::1/db'",
                                  &err),
                 PGG_ECONFIG);
    cr_assert_not(strstr(err.message, "Sup3rSecr3t"), "%s", err.message);
    cr_assert(strstr(err.message, "(line 1)"), "%s", err.message);
    /* The password is decoded in the parameters, as libpq would. */
    cr_assert_eq(servers(cfg, "postgresql://u:Sup3r%53ecr3t@h/db", &err), PGG_OK);
    cr_assert_str_eq(param(&cfg->hosts[0], "password"), "Sup3rSecr3t");
    cr_assert_not(strstr(cfg->hosts[0].name, "Sup3r"));
    cr_assert_str_eq(get(cfg, "servers"), "h:5432");
    pgg_config_free(cfg);
}

OPT_TEST(redaction)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"host=a password=pw user=u", "host=a password=REDACTED user=u"},
        {"password = 'p w\\'x' host=a", "password = REDACTED host=a"},
        {"sslpassword=k\\ ey", "sslpassword=REDACTED"},
        {"postgresql://u:pw@h/db", "postgresql://u:REDACTED@h/db"},
        {"postgres://u:p/w@h", "postgres://u:p/w@h"}, /* '/' ends the userinfo */
        {"postgresql://u@h/db?password=pw&sslmode=x",
         "postgresql://u@h/db?password=REDACTED&sslmode=x"},
        {"postgresql://u:a@h/db?pass%77ord=b",
         "postgresql://u:REDACTED@h/db?pass%77ord=REDACTED"},
        {"host=a", "host=a"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *r = pgg__conninfo_redact(cases[i].in);

        cr_assert_not_null(r);
        cr_assert_str_eq(r, cases[i].out);
        free(r);
    }
    cr_assert_null(pgg__conninfo_redact(NULL));
}

/* Found by fuzz_conninfo: more password= than a fixed table held made the
 * redaction give up on a text libpq accepts. */
OPT_TEST(redaction_of_many_passwords)
{
    char text[4096] = "";
    char *r;

    for (int i = 0; i < 150; i++) /* 3300 bytes */
        strcat(text, "password='Sup3rSecr3t'");
    r = pgg__conninfo_redact(text);
    cr_assert_not_null(r);
    cr_assert_not(strstr(r, "Sup3r"), "%.80s", r);
    cr_assert(strncmp(r, "password=REDACTED password=REDACTED", 35) == 0, "%.80s", r);
    free(r);
}

/*
 * Issue 14's findings: a '?' inside a bracketed host, a mistyped scheme,
 * an unclosed bracket, a bad value with a newline.  libpq's message quotes
 * the whole text; ours quotes none of it, names the problem and where it
 * is, and is one line.
 */
static void no_quote(pgg_config *cfg, const char *conninfo, const char *secret,
                     const char *needle)
{
    pgg_error err;
    int rc = servers(cfg, conninfo, &err);

    cr_assert_eq(rc, PGG_ECONFIG, "%s accepted", conninfo);
    cr_assert_not(strstr(err.message, secret), "password leaked: %s",
                  err.message);
    cr_assert_not(strchr(err.message, '\n'), "not one line: %s", err.message);
    cr_assert(strncmp(err.message, "servers: invalid conninfo: ", 27) == 0,
              "%s", err.message);
    cr_assert(strstr(err.message, needle), "\"%s\" does not say \"%s\"",
              err.message, needle);
}

OPT_TEST(issue14_messages_quote_nothing)
{
    pgg_config *cfg = new_cfg();

    no_quote(cfg, "postgresql://[a?b]x/db?password=Sup3rSecr3t", "Sup3rSecr3t",
             "unexpected character at position 19 after \"]\"");
    no_quote(cfg, "postgresql://[::1?x]:5432/db?password=Sup3rSecr3t%zz",
             "Sup3rSecr3t",
             "invalid percent-encoding at position 50 in a parameter value");
    no_quote(cfg, "postgresql://[a?b?password=Sup3rSecr3t", "Sup3rSecr3t",
             "no \"]\" closes the \"[\" at position 14");
    no_quote(cfg, "postgress://u:Sup3rSecr3t@h/db", "Sup3rSecr3t",
             "missing \"=\" after the word at position 1 (a URI must begin");
    no_quote(cfg, "postgresql:/u:Sup3rSecr3t@h/db", "Sup3rSecr3t",
             "missing \"=\" after the word at position 1 (a URI must begin");
    no_quote(cfg, "postgress://u:Sup3rSecr3t@h/db?sslmode=x", "Sup3rSecr3t",
             "invalid connection option at position 1");
    /* A bad value with a newline: libpq's message would span two lines. */
    no_quote(cfg, "host=a port=5432 bogus='x\nSup3rSecr3t'", "Sup3rSecr3t",
             "invalid connection option at position 18");
    no_quote(cfg, "postgresql://h/db?password=Sup3r%0aSecr3t&bo%0Ags=1",
             "Secr3t", "invalid connection option at position 43");
    no_quote(cfg, "password='Sup3rSecr3t\n", "Sup3rSecr3t",
             "unterminated quoted value (the quote at position 10)");
    /* The other faults libpq knows, each with its position. */
    no_quote(cfg, "postgresql://u:Sup3rSecr3t@[]/db", "Sup3rSecr3t",
             "empty IPv6 address \"[]\" at position 28");
    no_quote(cfg, "postgresql://u:Sup3rSecr3t%00@h/db", "Sup3rSecr3t",
             "forbidden %00 at position 27 in the password");
    no_quote(cfg, "postgresql://u:Sup3rSecr3t@h/db?a=b=c", "Sup3rSecr3t",
             "a second \"=\" at position 36");
    no_quote(cfg, "postgresql://u:Sup3rSecr3t@h/db?sslmode", "Sup3rSecr3t",
             "query parameter without \"=\" at position 33");
    no_quote(cfg, "postgresql://u:Sup3rSecr3t@h/db?passwrd=x", "Sup3rSecr3t",
             "(did you mean \"password\"?)");
    no_quote(cfg, "Sup3rSecr3t host=a", "Sup3rSecr3t",
             "missing \"=\" after the word at position 1");
    /* A keyword of libpq's own is named. */
    no_quote(cfg, "host=a password Sup3rSecr3t", "Sup3rSecr3t",
             "missing \"=\" after \"password\" at position 8");
    pgg_config_free(cfg);
}

/* Through the options text too, with the line. */
OPT_TEST(issue14_through_the_parser)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    cr_assert_eq(pgg_config_parse(cfg,
                                  "pool_max=4\n"
                                  "servers='postgresql://[a?b?password=Sup3rSecr3t'",
                                  &err),
                 PGG_ECONFIG);
    cr_assert_not(strstr(err.message, "Sup3rSecr3t"), "%s", err.message);
    cr_assert(strstr(err.message, "(line 2)"), "%s", err.message);
    cr_assert_not(strchr(err.message, '\n'), "%s", err.message);
    pgg_config_free(cfg);
}

/*
 * A badly quoted servers value spills its password into the options text,
 * where it can become a key or a value of its own: no message shows it.
 */
OPT_TEST(options_text_never_quotes_a_spilled_password)
{
    static const char *const texts[] = {
        "servers='host=a password = ' Sup3rSecr3t'",
        "servers='host=a password=' Sup3rSecr3t=1",
        "servers='host=a' Sup3rSecr3t",
        "servers=host=a password=Sup3rSecr3t",
        "read_policy='replica servers=host=a password=Sup3rSecr3t'",
        "pool_max=u:Sup3rSecr3t@h",
        "pool_max=password=Sup3rSecr3t",
        "classify.57P01='password=Sup3rSecr3t'",
        "classify.u:Sup3rSecr3t@h=error",
        "read_policy=postgresql://u:Sup3rSecr3t@h/db",
        "read_policy='x' :Sup3rSecr3t@h='x",
        "servers='host=a' read_policy=Sup3rSecr3t",
        "servers='host=a' read_policy='Sup3rSecr3t",
        "servers='host=a' classify.Sup3rSecr3t=error",
        /* Found by fuzz_options: the value under a key that is none. */
        "classify.Lplication_napassword='Sup3rSecr3t'",
        /* Found by fuzz_options: a newline in a commented-out password. */
        "# password='x\nSup3rSecr3t' pool_max=1",
        "# password='x\nSup3rSecr3t=1",
        "pool_max='1' Sup3rSecr3t",
    };
    pgg_config *cfg = new_cfg();
    pgg_error err;

    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        cr_assert_eq(pgg_config_parse(cfg, texts[i], &err), PGG_ECONFIG, "%s",
                     texts[i]);
        cr_assert_not(strstr(err.message, "Sup3rSecr3t"), "%s -> %s", texts[i],
                      err.message);
        cr_assert(strstr(err.message, "(line "), "%s", err.message);
    }
    /* What is not conninfo-shaped, before any servers pair, is still named. */
    cr_assert_eq(pgg_config_parse(cfg, "read_policy=replca", &err), PGG_ECONFIG);
    cr_assert(strstr(err.message, "\"replca\""), "%s", err.message);
    cr_assert_eq(pgg_config_parse(cfg, "servers='host=a' pool_maxx=1", &err),
                 PGG_ECONFIG);
    cr_assert(strstr(err.message, "unknown key (did you mean \"pool_max\"?)"),
              "%s", err.message);
    cr_assert_eq(pgg_config_parse(cfg, "servers='host=a' Sup3rSecr3t='x", &err),
                 PGG_ECONFIG);
    cr_assert_str_eq(err.message,
                     "(key not shown): unterminated quoted value (line 1)");
    pgg_config_free(cfg);
}

/* The redaction finds the password where libpq does: past a '?' inside
 * brackets, in a percent-encoded keyword, after a quoted value. */
OPT_TEST(redaction_parses_as_libpq)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"postgresql://[a?b]:5432/db?password=Sup3rSecr3t",
         "postgresql://[a?b]:5432/db?password=REDACTED"},
        {"postgresql://[::1?x]:5432/db?sslmode=disable&password=S",
         "postgresql://[::1?x]:5432/db?sslmode=disable&password=REDACTED"},
        {"postgresql://u:pw@[a?b],[c]/db?pass%77ord=x&x%3d=y"
         /* (rejected: x= is no keyword) */,
         "(conninfo rejected by libpq; not shown)"},
        {"postgresql://u:p%40w@h/?pass%77ord=x",
         "postgresql://u:REDACTED@h/?pass%77ord=REDACTED"},
        {"password='a b'host=h", "password=REDACTED host=h"},
        {"password= host=h", "password= REDACTED"},
        {"host=h password", "(conninfo rejected by libpq; not shown)"},
        {"postgress://u:Sup3rSecr3t@h/db",
         "(conninfo rejected by libpq; not shown)"},
        {"postgresql://[a?b?password=S", "(conninfo rejected by libpq; not shown)"},
        {"postgresql://u:@h?password=", "postgresql://u:@h?password="},
        /* Found by fuzz_conninfo: libpq's look-ahead for user info stops
         * at the '/' inside the value; the copy must keep it. */
        {"postgresql://h?sslpassword=a/b&user=u@x",
         "postgresql://h?sslpassword=REDACTED/&user=u@x"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *r = pgg__conninfo_redact(cases[i].in);

        cr_assert_not_null(r);
        cr_assert_str_eq(r, cases[i].out, "%s", cases[i].in);
        free(r);
    }
}

/* ------------------------------------------------- copy, free, validation */

OPT_TEST(copy_is_deep)
{
    pgg_config *cfg = new_cfg();
    pgg_config *copy;
    pgg_error err;

    cr_assert_eq(pgg_config_parse(cfg,
                                  "servers='host=a,b port=1,2 user=u password=pw' "
                                  "pool_max=3 breaker.failure_rate=10 "
                                  "classify.57P01=ignored,retry",
                                  &err),
                 PGG_OK, "%s", err.message);
    copy = pgg__config_copy(cfg, &err);
    cr_assert_not_null(copy, "%s", err.message);
    cr_assert_neq(copy->hosts, cfg->hosts);
    cr_assert_neq(copy->hosts[0].keys, cfg->hosts[0].keys);
    cr_assert_neq(copy->hosts[0].name, cfg->hosts[0].name);
    pgg_config_free(cfg);

    cr_assert_eq(copy->nhosts, 2);
    expect_host(copy, 0, "a:1", "a", NULL, "1");
    expect_host(copy, 1, "b:2", "b", NULL, "2");
    cr_assert_str_eq(param(&copy->hosts[1], "password"), "pw");
    cr_assert_str_eq(param(&copy->hosts[1], "user"), "u");
    cr_assert_eq(copy->pool_max, 3);
    cr_assert_eq(copy->breaker.failure_rate, 10);
    cr_assert_str_eq(get(copy, "classify.57P01"), "ignored,retry");
    /* The copy is a config like any other. */
    assert_set(copy, "servers", "host=c");
    cr_assert_eq(copy->nhosts, 1);
    cr_assert_eq(pgg__config_validate(copy, &err), PGG_OK, "%s", err.message);
    pgg_config_free(copy);

    /* A config without servers copies too. */
    cfg = new_cfg();
    copy = pgg__config_copy(cfg, &err);
    cr_assert_not_null(copy);
    cr_assert_eq(copy->nhosts, 0);
    cr_assert_null(copy->hosts);
    pgg_config_free(copy);
    pgg_config_free(cfg);
}

OPT_TEST(replacing_servers_frees_the_old)
{
    pgg_config *cfg = new_cfg();

    for (int i = 0; i < 5; i++)
        cr_assert_eq(pgg_config_set_servers(cfg, "host=a,b,c password=x", NULL),
                     PGG_OK);
    cr_assert_eq(cfg->nhosts, 3);
    pgg_config_free(cfg);
}

OPT_TEST(validate)
{
    pgg_config *cfg = new_cfg();
    pgg_error err;

    expect_err(pgg__config_validate(cfg, &err), &err, PGG_ECONFIG, "no servers");
    assert_set(cfg, "servers", "host=a");
    cr_assert_eq(pgg__config_validate(cfg, &err), PGG_OK, "%s", err.message);

    assert_set(cfg, "pool_min_idle", "11");
    expect_err(pgg__config_validate(cfg, &err), &err, PGG_ECONFIG, "pool_min_idle");
    cr_assert(strstr(err.message, "pool_max"), "%s", err.message);
    assert_set(cfg, "pool_max", "11");
    cr_assert_eq(pgg__config_validate(cfg, &err), PGG_OK, "%s", err.message);

    /* Cross-field breaker checks come from the breaker's own validator. */
    assert_set(cfg, "breaker.open_ms", "10000");
    assert_set(cfg, "breaker.open_max_ms", "5000");
    expect_err(pgg__config_validate(cfg, &err), &err, PGG_ECONFIG,
               "breaker.open_max_ms");
    assert_set(cfg, "breaker.open_max_ms", "10000");
    assert_set(cfg, "breaker.half_open_successes", "4");
    expect_err(pgg__config_validate(cfg, &err), &err, PGG_ECONFIG,
               "breaker.half_open_successes");
    assert_set(cfg, "breaker.half_open_successes", "3");
    cr_assert_eq(pgg__config_validate(cfg, &err), PGG_OK, "%s", err.message);

    /* Fields written directly, past the setters, are checked too. */
    cfg->call_timeout_ms = 0;
    expect_err(pgg__config_validate(cfg, &err), &err, PGG_ECONFIG,
               "call_timeout_ms");
    cfg->call_timeout_ms = 5000;
    cfg->read_policy = (pgg_read_policy)7;
    expect_err(pgg__config_validate(cfg, &err), &err, PGG_ECONFIG, "read_policy");
    cfg->read_policy = PGG_READ_ANY;
    cfg->breaker.failure_rate = NAN;
    expect_err(pgg__config_validate(cfg, &err), &err, PGG_ECONFIG,
               "breaker.failure_rate");
    cfg->breaker.failure_rate = 50;
    cr_assert_eq(pgg__config_validate(cfg, &err), PGG_OK, "%s", err.message);
    pgg_config_free(cfg);
}

/* ------------------------------------------------------------------ docs */

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    cr_assert_not_null(buf);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

OPT_TEST(doc_lists_every_key)
{
    char *doc = pgg__config_doc_markdown();

    cr_assert_not_null(doc);
    for (int i = 0; i < pgg__config_key_count(); i++) {
        char cell[80];

        snprintf(cell, sizeof cell, "| `%s` |", pgg__config_key_name(i));
        cr_assert(strstr(doc, cell), "%s missing from the doc", cell);
    }
    cr_assert(strstr(doc, "| `servers` |"));
    cr_assert(strstr(doc, "| `classify.<SQLSTATE>` |"));
    cr_assert(strstr(doc, "| `pool_max` | integer | `10` | 1..10000 |"), "%s", doc);
    free(doc);
}

#ifndef PGG_SOURCE_ROOT
#define PGG_SOURCE_ROOT "."
#endif

OPT_TEST(readme_config_section_is_current)
{
    static const char begin[] = "<!-- config-keys:begin -->\n";
    static const char end[] = "<!-- config-keys:end -->";
    char *readme = read_file(PGG_SOURCE_ROOT "/README.md");
    char *doc, *b, *e;

    if (!readme)
        cr_skip_test("no README.md in " PGG_SOURCE_ROOT);
    b = strstr(readme, begin);
    e = b ? strstr(b, end) : NULL;
    if (!b || !e) {
        free(readme);
        cr_skip_test("README.md has no <!-- config-keys:begin --> ... "
                     "<!-- config-keys:end --> section; add the markers and run "
                     "build/tests/unit/gen_config_doc --update README.md");
    }
    b += sizeof begin - 1;
    *e = '\0';
    doc = pgg__config_doc_markdown();
    cr_assert_not_null(doc);
    cr_expect_str_eq(b, doc,
                     "README.md's key table is stale: run "
                     "build/tests/unit/gen_config_doc --update README.md");
    free(doc);
    free(readme);
}

/* breaker.preset and its libraries' keys reach the breaker's settings. */
OPT_TEST(breaker_preset_keys)
{
    pgg_config *cfg = new_cfg();
    pgg_breaker_config e;
    pgg_error err;

    assert_set(cfg, "servers", "host=a");
    cr_assert_eq(pgg_config_parse(cfg,
                                  "breaker.preset=gobreaker breaker.gobreaker.max_requests=3 "
                                  "breaker.gobreaker.interval_ms=30000 "
                                  "breaker.gobreaker.bucket_period_ms=3000 "
                                  "breaker.gobreaker.timeout_ms=90000 "
                                  "breaker.gobreaker.consecutive_failures=2",
                                  &err),
                 PGG_OK, "%s", err.message);
    cr_assert_eq(pgg__config_validate(cfg, &err), PGG_OK, "%s", err.message);
    cr_assert_eq(cfg->breaker.preset, PGG_BREAKER_PRESET_GOBREAKER);
    pgg__breaker_config_effective(&cfg->breaker, &e);
    cr_assert_eq(e.half_open_probes, 3);
    cr_assert_eq(e.window_type, PGG_WINDOW_TIME);
    cr_assert_eq(e.window_size, 10);
    cr_assert_eq(e.open_ms, 90000);
    cr_assert_eq(e.consecutive_failures, 3);
    assert_set(cfg, "breaker.gobreaker.bucket_period_ms", "1");
    assert_set(cfg, "breaker.gobreaker.interval_ms", "86400000");
    expect_err(pgg__config_validate(cfg, &err), &err, PGG_ECONFIG,
               "breaker.gobreaker.bucket_period_ms");

    cr_assert_eq(pgg_config_parse(cfg,
                                  "breaker.preset=resilience4j "
                                  "breaker.resilience4j.sliding_window_type=time_based "
                                  "breaker.resilience4j.sliding_window_size=20 "
                                  "breaker.resilience4j.minimum_number_of_calls=5 "
                                  "breaker.resilience4j.failure_rate_threshold=40 "
                                  "breaker.resilience4j.slow_call_rate_threshold=60 "
                                  "breaker.resilience4j.slow_call_duration_threshold_ms=4000 "
                                  "breaker.resilience4j.wait_duration_in_open_state_ms=5000 "
                                  "breaker.resilience4j.permitted_calls_in_half_open_state=4 "
                                  "breaker.resilience4j.automatic_transition=true "
                                  "breaker.resilience4j.max_wait_duration_in_half_open_state_ms=1000",
                                  &err),
                 PGG_OK, "%s", err.message);
    cr_assert_eq(pgg__config_validate(cfg, &err), PGG_OK, "%s", err.message);
    pgg__breaker_config_effective(&cfg->breaker, &e);
    cr_assert_eq(e.window_type, PGG_WINDOW_TIME);
    cr_assert_eq(e.window_size, 20);
    cr_assert_eq(e.min_calls, 5);
    cr_assert_eq(e.failure_rate, 40);
    cr_assert_eq(e.slow_call_rate, 60);
    cr_assert_eq(e.slow_call_duration_ms, 4000);
    cr_assert_eq(e.open_ms, 5000);
    cr_assert_eq(e.half_open_probes, 4);
    cr_assert_not(e.half_open_on_call_only);
    cr_assert_eq(e.half_open_max_ms, 1000);
    cr_assert_str_eq(get(cfg, "breaker.preset"), "resilience4j");
    assert_set(cfg, "breaker.resilience4j.failure_rate_threshold", "0");
    expect_err(pgg__config_validate(cfg, &err), &err, PGG_ECONFIG,
               "breaker.resilience4j.failure_rate_threshold");
    pgg_config_free(cfg);
}
