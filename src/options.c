#include "options.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "autoprep.h"
#include "error.h"

/* ------------------------------------------------------------- key table */

typedef enum opt_kind {
    K_INT,    /* int */
    K_U32,    /* uint32_t */
    K_I64,    /* int64_t */
    K_DOUBLE, /* double */
    K_BOOL,   /* bool */
    K_ENUM    /* an enum, stored as an int-sized integer; value = index */
} opt_kind;

typedef struct opt {
    const char *name;
    opt_kind kind;
    size_t off;
    long long min, max;       /* integers */
    double dmin, dmax;        /* K_DOUBLE */
    bool dmin_open, dmax_open; /* exclusive bounds of a K_DOUBLE */
    const char *const *names; /* K_ENUM, NULL-terminated, index = value */
    const char *def;          /* text default; NULL: pgg__breaker_config_defaults */
    const char *doc;
} opt;

/*
 * Each entry checks at compile time that its field has the C type its kind
 * reads and writes: a negative array size otherwise.
 */
#define PGG__FIELD(f) (((pgg_config *)0)->f)
#define PGG__IS(f, T) (0 * sizeof(char[_Generic(PGG__FIELD(f), T: 1, default: -1)]))
#define PGG__OFF(f, T) (offsetof(pgg_config, f) + PGG__IS(f, T))
#define PGG__ENUM_OFF(f) \
    (offsetof(pgg_config, f) + \
     0 * sizeof(char[sizeof(PGG__FIELD(f)) == sizeof(int) ? 1 : -1]))

#define OPT_INT(k, f, lo, hi, def, doc) \
    {k, K_INT, PGG__OFF(f, int), lo, hi, 0, 0, false, false, NULL, def, doc}
#define OPT_U32(k, f, lo, hi, def, doc) \
    {k, K_U32, PGG__OFF(f, uint32_t), lo, hi, 0, 0, false, false, NULL, def, doc}
#define OPT_I64(k, f, lo, hi, def, doc) \
    {k, K_I64, PGG__OFF(f, int64_t), lo, hi, 0, 0, false, false, NULL, def, doc}
#define OPT_DBL(k, f, lo, lo_open, hi, hi_open, def, doc) \
    {k, K_DOUBLE, PGG__OFF(f, double), 0, 0, lo, hi, lo_open, hi_open, NULL, def, doc}
#define OPT_BOOL(k, f, def, doc) \
    {k, K_BOOL, PGG__OFF(f, bool), 0, 1, 0, 0, false, false, NULL, def, doc}
#define OPT_ENUM(k, f, names, def, doc) \
    {k, K_ENUM, PGG__ENUM_OFF(f), 0, (long long)(sizeof names / sizeof names[0]) - 2, \
     0, 0, false, false, names, def, doc}

#define SEC(n) ((long long)(n) * 1000)
#define MIN_(n) (SEC(n) * 60)
#define HOUR(n) (MIN_(n) * 60)
#define DAY(n) (HOUR(n) * 24)
#define MIB(n) ((long long)(n) << 20)
#define TIB(n) ((long long)(n) << 40)

/* Index = the enum's value (router.h, window.h, breaker.h); a unit test
 * checks these against the owners' own name functions. */
static const char *const read_policy_names[] = {"replica", "replica_only",
                                                "primary", "any", NULL};
/* Index = pgg_ryw_mode (visibility.h). */
static const char *const ryw_mode_names[] = {"off", "pool", "sampled", NULL};
static const char *const window_type_names[] = {"count", "time", "fixed", NULL};
static const char *const mode_names[] = {"normal", "disabled", "metrics-only",
                                         "forced-open", NULL};
static const char *const preset_names[] = {"none", "gobreaker", "resilience4j", NULL};
static const char *const r4j_window_names[] = {"count_based", "time_based", NULL};

/*
 * The one table.  Defaults favour production: a bounded everything, a
 * bulkhead that fails fast, reads kept off replicas that lag.
 */
static const opt options[] = {
    OPT_INT("pool_min_idle", pool_min_idle, 0, 10000, "0",
            "idle connections kept open per host (<= pool_max)"),
    OPT_INT("pool_max", pool_max, 1, 10000, "10",
            "connections per host, idle and busy"),
    OPT_I64("idle_timeout_ms", idle_timeout_ms, 0, DAY(1), "60000",
            "close an idle connection after this; 0 keeps them"),
    OPT_I64("max_lifetime_ms", max_lifetime_ms, 0, DAY(7), "1800000",
            "close a connection this old when it comes back; 0 no limit"),
    OPT_I64("validate_after_idle_ms", validate_after_idle_ms, 0, DAY(1), "5000",
            "check a connection idle longer than this before lending it; 0 always"),
    OPT_I64("alive_check_after_idle_ms", alive_check_after_idle_ms, 0, DAY(1), "100",
            "poll an idle connection's socket for a close before lending it after this long idle; 0 always"),
    OPT_I64("connect_timeout_ms", connect_timeout_ms, 1, MIN_(10), "2000",
            "bound on one connection attempt (exact, unlike libpq's connect_timeout)"),
    OPT_I64("call_timeout_ms", call_timeout_ms, 1, HOUR(1), "5000",
            "deadline of a call that sets none"),
    OPT_I64("cancel_timeout_ms", cancel_timeout_ms, 0, MIN_(10), "2000",
            "bound on the background cancel of a timed-out query; 0 sends none"),
    OPT_INT("bulkhead.max_concurrent", bulkhead_max_concurrent, 1, 1000000, "64",
            "calls and leases in flight at once, all hosts together"),
    OPT_I64("bulkhead.max_wait_ms", bulkhead_max_wait_ms, 0, MIN_(1), "0",
            "wait for a bulkhead slot (within the call's deadline); 0 rejects at once"),
    OPT_I64("health_interval_ms", health_interval_ms, 10, MIN_(10), "1000",
            "calm cadence of each host's role and lag probe, idle trimming and warm-up"),
    OPT_I64("max_replica_lag_bytes", max_replica_lag_bytes, 0, TIB(1), "16777216",
            "a replica further behind gets no reads; 0 no limit"),
    OPT_ENUM("read_policy", read_policy, read_policy_names, "replica",
             "where reads go: replicas then primary, replicas only, primary, any (least busy)"),
    OPT_INT("max_attempts", max_attempts, 1, PGG_MAX_HOSTS, "3",
            "hosts one read may try"),
    OPT_BOOL("lease_reset", lease_reset, "true",
             "DISCARD ALL when a lease is released, so its session state reaches no one else"),
    OPT_INT("auto_prepare", auto_prepare, 0, PGG_AUTOPREP_MAX, "100",
            "per connection, prepare the SQL of up to this many pgg_exec_params calls (LRU) at their auto_prepare_after-th use; 0 off (set it behind a transaction-mode pooler)"),
    OPT_INT("auto_prepare_after", auto_prepare_after, 1, 1000, "2",
            "uses of the same SQL on a connection before auto_prepare prepares it there"),
    OPT_I64("lease_leak_ms", lease_leak_ms, 0, DAY(1), "0",
            "report a lease held longer than this (a PGG_EVENT_LEASE_LEAK event, checked every health round); 0 off"),
    OPT_I64("attempt_timeout_ms", attempt_timeout_ms, 0, HOUR(1), "0",
            "bound on one read attempt while another host could still serve it; 0: adaptive (attempt_timeout_auto) or none"),
    OPT_BOOL("attempt_timeout_auto", attempt_timeout_auto, "true",
             "with attempt_timeout_ms=0: bound such a read attempt by max(200 ms, 8 x the host's recent latency), at most half the time left"),
    OPT_I64("health_probe_timeout_ms", health_probe_timeout_ms, 1, MIN_(10), "500",
            "bound on one health probe (connect and query); at most connect_timeout_ms"),
    OPT_I64("health_incident_min_ms", health_incident_min_ms, 1, MIN_(1), "20",
            "probe interval when something is wrong (breaker open, no primary, a probe failing)"),
    OPT_I64("health_incident_max_ms", health_incident_max_ms, 1, MIN_(10), "250",
            "incident probe interval doubles up to this (>= health_incident_min_ms)"),
    OPT_ENUM("read_your_writes", ryw_mode, ryw_mode_names, "off",
             "pool: every read sees every write this pool acknowledged before it began, each write learning its position; sampled: the same, writes pay nothing and a read after new writes samples the primary's position once for all such reads; off: only what call->min_lsn asks"),
    OPT_I64("read_your_writes.max_wait_ms", ryw_max_wait_ms, 0, HOUR(1), "1000",
            "a read behind its minimum position waits this long (at most half its time left) for a replica, then goes to the primary"),
    OPT_I64("read_your_writes.poll_ms", ryw_poll_ms, 1, MIN_(1), "10",
            "health rounds run this often while reads wait for a replica to catch up"),
    OPT_BOOL("pipeline", pipeline, "false",
             "concurrent one-shot calls to a host share connections in libpq pipeline mode, a Sync after each statement"),
    OPT_INT("pipeline.connections", pipeline_connections, 1, 64, "2",
            "shared pipelined connections per host (each calling thread keeps to one of them)"),
    OPT_I64("pipeline.stall_ms", pipeline_stall_ms, 0, HOUR(1), "2",
            "a call does not join a shared connection whose oldest statement has been in flight this long (it would wait that statement out); 0 joins always"),
    OPT_BOOL("types.enabled", types_enabled, "false",
             "prepare every connection for libpqtypes (PQgetf on every result); typed calls turn it on"),
    OPT_BOOL("cache.enabled", cache_enabled, "false",
             "keep read results to answer cacheable reads, marked stale, when no host can"),
    OPT_I64("cache.max_bytes", cache_max_bytes, 1024, TIB(1), "67108864",
            "memory the fallback cache may hold"),
    OPT_I64("cache.max_age_ms", cache_max_age_ms, 1, DAY(7), "300000",
            "oldest cached answer served"),

    /* Every pgg_breaker_config key (breaker.h), defaults from there. */
    OPT_DBL("breaker.failure_rate", breaker.failure_rate, 0, false, 100, false, NULL,
            "% of failed calls in the window that opens the breaker; 0 off"),
    OPT_DBL("breaker.slow_call_rate", breaker.slow_call_rate, 0, false, 100, false, NULL,
            "% of slow calls in the window that opens the breaker; 0 off"),
    OPT_I64("breaker.slow_call_duration_ms", breaker.slow_call_duration_ms, 1, HOUR(1),
            NULL, "a call longer than this is slow"),
    OPT_U32("breaker.min_calls", breaker.min_calls, 1, PGG_WINDOW_MAX_SIZE, NULL,
            "calls in the window before a rate counts"),
    OPT_ENUM("breaker.window_type", breaker.window_type, window_type_names, NULL,
             "count: the last window_size calls; time: the last window_size "
             "buckets; fixed: everything since the last interval"),
    OPT_U32("breaker.window_size", breaker.window_size, 1, PGG_WINDOW_MAX_SIZE, NULL,
            "calls (count window) or buckets (time window)"),
    OPT_I64("breaker.window_bucket_ms", breaker.window_bucket_ms, 1, HOUR(1), NULL,
            "bucket width of a time window"),
    OPT_U32("breaker.consecutive_failures", breaker.consecutive_failures, 0, 1000000,
            NULL, "failures in a row that open the breaker; 0 off"),
    OPT_I64("breaker.open_ms", breaker.open_ms, 1, DAY(1), NULL,
            "first open time before probes"),
    OPT_DBL("breaker.open_multiplier", breaker.open_multiplier, 1, false, 100, false,
            NULL, "open time growth per reopening in a row"),
    OPT_I64("breaker.open_max_ms", breaker.open_max_ms, 1, DAY(1), NULL,
            "longest open time (>= breaker.open_ms)"),
    OPT_DBL("breaker.open_jitter", breaker.open_jitter, 0, false, 1, true, NULL,
            "largest random fraction taken off an open time"),
    OPT_U32("breaker.half_open_probes", breaker.half_open_probes, 1, 1000000, NULL,
            "probe calls admitted while half-open"),
    OPT_U32("breaker.half_open_successes", breaker.half_open_successes, 0, 1000000, NULL,
            "good probes that close it (<= probes); 0 judge by rates after all probes"),
    OPT_I64("breaker.half_open_max_ms", breaker.half_open_max_ms, 0, DAY(1), NULL,
            "longest half-open stay before reopening; 0 no limit"),
    OPT_I64("breaker.healthy_decay_ms", breaker.healthy_decay_ms, 0, DAY(7), NULL,
            "closed time that forgives one reopening; 0 closing forgives all"),
    OPT_I64("breaker.interval_ms", breaker.interval_ms, 0, DAY(1), NULL,
            "clear the window this often while closed; 0 never"),
    OPT_ENUM("breaker.mode", breaker.mode, mode_names, NULL,
             "state each breaker starts in"),
    OPT_ENUM("breaker.preset", breaker.preset, preset_names, NULL,
             "reproduce a library's breaker from its own settings (the breaker.gobreaker.* "
             "or breaker.resilience4j.* keys); the other breaker keys but mode are then unused"),
    OPT_U32("breaker.gobreaker.max_requests", breaker.gobreaker.max_requests, 0, 1000000,
            NULL, "gobreaker MaxRequests: probes while half-open, all must succeed; 0 means 1"),
    OPT_I64("breaker.gobreaker.interval_ms", breaker.gobreaker.interval_ms, 0, DAY(1), NULL,
            "gobreaker Interval: clear the counts this often while closed (the rolling "
            "window's span with a bucket period); 0 never"),
    OPT_I64("breaker.gobreaker.bucket_period_ms", breaker.gobreaker.bucket_period_ms, 0,
            DAY(1), NULL, "gobreaker BucketPeriod: bucket width of a rolling window; 0 a fixed window"),
    OPT_I64("breaker.gobreaker.timeout_ms", breaker.gobreaker.timeout_ms, 0, DAY(1), NULL,
            "gobreaker Timeout: open time, half-open strictly after it; 0 means 60 s"),
    OPT_U32("breaker.gobreaker.consecutive_failures", breaker.gobreaker.consecutive_failures,
            0, 1000000, NULL,
            "gobreaker's default ReadyToTrip: open when ConsecutiveFailures exceeds this"),
    OPT_ENUM("breaker.resilience4j.sliding_window_type", breaker.resilience4j.sliding_window_type,
             r4j_window_names, NULL, "resilience4j slidingWindowType: the last N calls or N seconds"),
    OPT_U32("breaker.resilience4j.sliding_window_size", breaker.resilience4j.sliding_window_size,
            1, PGG_WINDOW_MAX_SIZE, NULL, "resilience4j slidingWindowSize: calls or seconds"),
    OPT_U32("breaker.resilience4j.minimum_number_of_calls",
            breaker.resilience4j.minimum_number_of_calls, 1, PGG_WINDOW_MAX_SIZE, NULL,
            "resilience4j minimumNumberOfCalls: calls before a rate counts"),
    OPT_DBL("breaker.resilience4j.failure_rate_threshold",
            breaker.resilience4j.failure_rate_threshold, 0, false, 100, false, NULL,
            "resilience4j failureRateThreshold, % (> 0)"),
    OPT_DBL("breaker.resilience4j.slow_call_rate_threshold",
            breaker.resilience4j.slow_call_rate_threshold, 0, false, 100, false, NULL,
            "resilience4j slowCallRateThreshold, % (> 0)"),
    OPT_I64("breaker.resilience4j.slow_call_duration_threshold_ms",
            breaker.resilience4j.slow_call_duration_threshold_ms, 1, HOUR(1), NULL,
            "resilience4j slowCallDurationThreshold: a call longer than this is slow"),
    OPT_I64("breaker.resilience4j.wait_duration_in_open_state_ms",
            breaker.resilience4j.wait_duration_in_open_state_ms, 1, DAY(1), NULL,
            "resilience4j waitDurationInOpenState"),
    OPT_U32("breaker.resilience4j.permitted_calls_in_half_open_state",
            breaker.resilience4j.permitted_calls_in_half_open_state, 1, 1000000, NULL,
            "resilience4j permittedNumberOfCallsInHalfOpenState"),
    OPT_BOOL("breaker.resilience4j.automatic_transition", breaker.resilience4j.automatic_transition,
             NULL, "resilience4j automaticTransitionFromOpenToHalfOpenEnabled: half-open at the "
             "end of the wait without a call"),
    OPT_I64("breaker.resilience4j.max_wait_duration_in_half_open_state_ms",
            breaker.resilience4j.max_wait_duration_in_half_open_state_ms, 0, DAY(1), NULL,
            "resilience4j maxWaitDurationInHalfOpenState: then open; 0 no limit"),
    OPT_BOOL("breaker.resilience4j.enable_exponential_backoff",
             breaker.resilience4j.enable_exponential_backoff, NULL,
             "resilience4j exponential waitIntervalFunctionInOpenState: each reopening "
             "before closing waits multiplier times longer"),
    OPT_DBL("breaker.resilience4j.exponential_backoff_multiplier",
            breaker.resilience4j.exponential_backoff_multiplier, 1, false, 100, false, NULL,
            "resilience4j exponentialBackoffMultiplier"),
    OPT_I64("breaker.resilience4j.exponential_max_wait_ms",
            breaker.resilience4j.exponential_max_wait_ms, 0, DAY(7), NULL,
            "resilience4j exponentialMaxWaitDurationInOpenState; 0 none"),
};

#define NOPTIONS ((int)(sizeof options / sizeof options[0]))

static const char classify_prefix[] = "classify.";
#define CLASSIFY_PREFIX_LEN (sizeof classify_prefix - 1)

int pgg__config_key_count(void)
{
    return NOPTIONS;
}

const char *pgg__config_key_name(int i)
{
    return i >= 0 && i < NOPTIONS ? options[i].name : NULL;
}

static const opt *find_opt(const char *key)
{
    for (int i = 0; i < NOPTIONS; i++) {
        if (strcmp(options[i].name, key) == 0)
            return &options[i];
    }
    return NULL;
}

static void *field_of(pgg_config *cfg, const opt *o)
{
    return (char *)cfg + o->off;
}

static const void *cfield_of(const pgg_config *cfg, const opt *o)
{
    return (const char *)cfg + o->off;
}

/* ------------------------------------------------------- error messages */

/*
 * Whether a key or value the caller wrote may appear in a message: a word
 * of at most max printable ASCII characters, none of which carries a
 * conninfo's structure (= @ : / ? & %, quotes, backslash), so that no
 * piece of a malformed servers value can be one.  pgg_config_parse also
 * quotes nothing after a servers pair, a quoted value or a comment
 * (quote == false): a password that spilled out of one of them, through a
 * misplaced quote or newline, can stand alone there as a plain word.
 */
static bool quotable(const char *s, size_t max, bool quote)
{
    size_t n = 0;

    if (!quote)
        return false;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];

        if (n >= max || c <= 0x20 || c >= 0x7f || strchr("=@:/?&%'\"\\", c))
            return false;
    }
    return n > 0;
}

static int unknown_key(const char *key, bool quote, pgg_error *err)
{
    const char *best = NULL;
    int bestd = 3; /* suggest only close matches */

    for (int i = 0; i < NOPTIONS; i++) {
        int d = pgg__edit_distance(key, options[i].name, bestd - 1);

        if (d < bestd) {
            bestd = d;
            best = options[i].name;
        }
    }
    if (!quotable(key, 64, quote)) {
        if (best)
            return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                                  "unknown key (did you mean \"%s\"?)", best);
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "unknown key (the README lists every key)");
    }
    if (best)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "unknown key \"%s\" (did you mean \"%s\"?)",
                              key, best);
    return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                          "unknown key \"%s\" (the README lists every key)",
                          key);
}

/* A double in the C locale, as short as still reads back exactly, and
 * whole numbers without an exponent ("50", not "5e+01"). */
static void fmt_double(char *buf, size_t size, double v)
{
    locale_t c = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    locale_t old = c ? uselocale(c) : (locale_t)0;

    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, size, "%.0f", v);
    } else {
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(buf, size, "%.*g", prec, v);
            if (strtod(buf, NULL) == v)
                break;
        }
    }
    if (c) {
        uselocale(old);
        freelocale(c);
    }
}

/* The accepted values, for messages and the docs. */
static void accepted(const opt *o, char *buf, size_t size)
{
    char lo[32], hi[32];
    size_t n = 0;

    switch (o->kind) {
    case K_INT:
    case K_U32:
    case K_I64:
        snprintf(buf, size, "%lld..%lld", o->min, o->max);
        return;
    case K_DOUBLE:
        fmt_double(lo, sizeof lo, o->dmin);
        fmt_double(hi, sizeof hi, o->dmax);
        snprintf(buf, size, "%s %s x %s %s", lo, o->dmin_open ? "<" : "<=",
                 o->dmax_open ? "<" : "<=", hi);
        return;
    case K_BOOL:
        snprintf(buf, size, "true/false, on/off, yes/no, 1/0");
        return;
    case K_ENUM:
        buf[0] = '\0';
        for (int i = 0; o->names[i] && n < size; i++)
            n += (size_t)snprintf(buf + n, size - n, "%s%s", i ? ", " : "",
                                  o->names[i]);
        return;
    }
}

static const char *kind_noun(opt_kind k)
{
    switch (k) {
    case K_INT:
    case K_U32:
    case K_I64:
        return "an integer";
    case K_DOUBLE:
        return "a number";
    case K_BOOL:
        return "a boolean";
    case K_ENUM:
        return "a name";
    }
    return "a value";
}

static int bad_value(const opt *o, const char *value, bool quote,
                     pgg_error *err)
{
    char acc[160];

    accepted(o, acc, sizeof acc);
    if (!quotable(value, 40, quote) && o->kind == K_ENUM)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "%s: the value is not one of %s", o->name, acc);
    if (!quotable(value, 40, quote))
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "%s: the value is not %s (expected %s)", o->name,
                              kind_noun(o->kind), acc);
    if (o->kind == K_ENUM)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "%s: \"%.40s\" is not one of %s", o->name, value,
                              acc);
    return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                          "%s: \"%.40s\" is not %s (expected %s)", o->name,
                          value, kind_noun(o->kind), acc);
}

static int wrong_type(const char *key, const char *what, const char *given,
                      pgg_error *err)
{
    return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                          "%s: expects %s, not %s",
                          quotable(key, 64, true) ? key : "this key", what,
                          given);
}

/* ---------------------------------------------------------- typed stores */

static int store_int(pgg_config *cfg, const opt *o, long long v,
                     pgg_error *err)
{
    char acc[64];

    if (v < o->min || v > o->max) {
        accepted(o, acc, sizeof acc);
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "%s: %lld is out of range (%s)", o->name, v, acc);
    }
    switch (o->kind) {
    case K_INT:
        *(int *)field_of(cfg, o) = (int)v;
        break;
    case K_U32:
        *(uint32_t *)field_of(cfg, o) = (uint32_t)v;
        break;
    case K_I64:
        *(int64_t *)field_of(cfg, o) = (int64_t)v;
        break;
    default:
        return wrong_type(o->name, kind_noun(o->kind), "an integer", err);
    }
    return PGG_OK;
}

static int store_double(pgg_config *cfg, const opt *o, double v,
                        pgg_error *err)
{
    char acc[64], got[32];

    if (!isfinite(v) || v < o->dmin || v > o->dmax ||
        (o->dmin_open && v == o->dmin) || (o->dmax_open && v == o->dmax)) {
        accepted(o, acc, sizeof acc);
        fmt_double(got, sizeof got, v);
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "%s: %s is out of range (%s)", o->name, got, acc);
    }
    /* -0 would read back as "-0". */
    *(double *)field_of(cfg, o) = v == 0 ? 0.0 : v;
    return PGG_OK;
}

/* ----------------------------------------------------------- text values */

/* Decimal only: no sign but '-', no blanks, no base prefix, no junk. */
static bool parse_ll(const char *s, long long *out)
{
    bool neg = false;
    unsigned long long v = 0;
    const unsigned long long lim = (unsigned long long)LLONG_MAX + 1;

    if (*s == '-' || *s == '+')
        neg = *s++ == '-';
    if (!isdigit((unsigned char)*s))
        return false;
    for (; isdigit((unsigned char)*s); s++) {
        unsigned d = (unsigned)(*s - '0');

        if (v > (lim - d) / 10)
            return false; /* overflow */
        v = v * 10 + d;
    }
    if (*s || (!neg && v > (unsigned long long)LLONG_MAX))
        return false;
    *out = neg ? (v == lim ? LLONG_MIN : -(long long)v) : (long long)v;
    return true;
}

/* A plain decimal number ("12", "0.5", "1e3"), read in the C locale so a
 * process under de_DE still reads "0.5"; no hex, inf or nan. */
static bool parse_double(const char *s, double *out)
{
    const char *p = s;
    int digits = 0;
    locale_t c;
    locale_t old = (locale_t)0;
    char *end;
    double v;

    if (*p == '-' || *p == '+')
        p++;
    for (; isdigit((unsigned char)*p); p++)
        digits++;
    if (*p == '.')
        for (p++; isdigit((unsigned char)*p); p++)
            digits++;
    if (!digits)
        return false;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '-' || *p == '+')
            p++;
        if (!isdigit((unsigned char)*p))
            return false;
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (*p)
        return false;
    c = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (c)
        old = uselocale(c);
    errno = 0;
    v = strtod(s, &end);
    if (c) {
        uselocale(old);
        freelocale(c);
    }
    if (*end || errno == ERANGE || !isfinite(v))
        return false;
    *out = v;
    return true;
}

static bool eq_nocase(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b))
            return false;
    }
    return *a == *b;
}

static bool parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "on", "yes", "1"};
    static const char *const no[] = {"false", "off", "no", "0"};

    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (eq_nocase(s, yes[i])) {
            *out = true;
            return true;
        }
        if (eq_nocase(s, no[i])) {
            *out = false;
            return true;
        }
    }
    return false;
}

/* Enum names: case-insensitive, '-' and '_' alike ("metrics_only"). */
static bool same_name(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        int ca = tolower((unsigned char)*a), cb = tolower((unsigned char)*b);

        if (ca == '_')
            ca = '-';
        if (cb == '_')
            cb = '-';
        if (ca != cb)
            return false;
    }
    return *a == *b;
}

static int set_text(pgg_config *cfg, const opt *o, const char *value,
                    bool quote, pgg_error *err)
{
    long long ll;
    double d;
    bool b;

    switch (o->kind) {
    case K_INT:
    case K_U32:
    case K_I64:
        if (!parse_ll(value, &ll))
            return bad_value(o, value, quote, err);
        return store_int(cfg, o, ll, err);
    case K_DOUBLE:
        if (!parse_double(value, &d))
            return bad_value(o, value, quote, err);
        return store_double(cfg, o, d, err);
    case K_BOOL:
        if (!parse_bool(value, &b))
            return bad_value(o, value, quote, err);
        *(bool *)field_of(cfg, o) = b;
        return PGG_OK;
    case K_ENUM:
        for (int i = 0; o->names[i]; i++) {
            if (same_name(value, o->names[i])) {
                *(int *)field_of(cfg, o) = i;
                return PGG_OK;
            }
        }
        return bad_value(o, value, quote, err);
    }
    return bad_value(o, value, quote, err);
}

/* -------------------------------------------------------------- classify */

static bool is_classify_key(const char *key)
{
    return strncmp(key, classify_prefix, CLASSIFY_PREFIX_LEN) == 0;
}

/* classify.c's rule for a SQLSTATE or class: 5 or 2 of 0-9, A-Z. */
static bool sqlstate_shaped(const char *s)
{
    size_t n = strlen(s);

    if (n != 5 && n != 2)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]) && !isupper((unsigned char)s[i]))
            return false;
    }
    return true;
}

/* "classify.<SQLSTATE>" = "<class>[,retry|,noretry]" */
static int set_classify(pgg_config *cfg, const char *key, const char *value,
                        bool quote, pgg_error *err)
{
    const char *comma = strchr(value, ',');
    size_t n = comma ? (size_t)(comma - value) : strlen(value);
    char name[32], acc[128];
    size_t len = 0;
    bool retry = false;
    bool ok = n < sizeof name;
    pgg_class cls = PGG_CLASS_SUCCESS;
    const char *sqlstate = key + CLASSIFY_PREFIX_LEN;

    /* The key first: a value is shown only under a real key (the fuzzer
     * wrote "classify.xpassword='secret'"). */
    if (!sqlstate_shaped(sqlstate)) {
        if (quotable(sqlstate, 16, quote))
            return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                                  "classify: \"%s\" is not a SQLSTATE (five "
                                  "characters 0-9/A-Z) or a SQLSTATE class "
                                  "(two)",
                                  sqlstate);
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "classify: the key does not name a SQLSTATE "
                              "(five characters 0-9/A-Z) or a SQLSTATE class "
                              "(two)");
    }
    if (ok) {
        memcpy(name, value, n);
        name[n] = '\0';
        ok = pgg__class_from_name(name, &cls) == PGG_OK;
    }
    if (ok && comma) {
        retry = strcmp(comma + 1, "retry") == 0;
        ok = retry || strcmp(comma + 1, "noretry") == 0;
    }
    if (ok)
        return pgg__classifier_override(&cfg->classifier, sqlstate, cls, retry,
                                        err);
    acc[0] = '\0';
    for (int i = 0; i < PGG_CLASS__COUNT && len < sizeof acc; i++)
        len += (size_t)snprintf(acc + len, sizeof acc - len, "%s%s",
                                i ? ", " : "", pgg_class_name((pgg_class)i));
    if (!quotable(key, 64, quote) || !quotable(value, 40, quote))
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "%s: the value is not <class>[,retry] (class: %s)",
                              quotable(key, 64, quote) ? key : "classify",
                              acc);
    return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                          "%s: \"%s\" is not <class>[,retry] (class: %s)",
                          key, value, acc);
}

static int get_classify(const pgg_config *cfg, const char *key, char *buf,
                        size_t buflen, pgg_error *err)
{
    const char *sqlstate = key + CLASSIFY_PREFIX_LEN;

    for (int i = 0; i < cfg->classifier.n; i++) {
        const pgg_class_rule *r = &cfg->classifier.rules[i];

        if (strcmp(r->sqlstate, sqlstate) == 0) {
            int n = snprintf(buf, buflen, "%s%s", pgg_class_name(r->cls),
                             r->retry ? ",retry" : "");

            if (n < 0 || (size_t)n >= buflen)
                return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                                      "%s: buffer too small", key);
            return PGG_OK;
        }
    }
    return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                          "%s: no override set (the built-in table applies)",
                          quotable(key, 64, true) ? key : "classify");
}

/* ----------------------------------------------------------- public API */

static int apply_defaults(pgg_config *cfg)
{
    pgg__breaker_config_defaults(&cfg->breaker);
    pgg__classifier_init(&cfg->classifier);
    for (int i = 0; i < NOPTIONS; i++) {
        if (options[i].def &&
            set_text(cfg, &options[i], options[i].def, true, NULL))
            return PGG_ECONFIG; /* a bad table: the unit tests catch it */
    }
    return PGG_OK;
}

pgg_config *pgg_config_new(void)
{
    pgg_config *cfg = calloc(1, sizeof *cfg);

    if (cfg && apply_defaults(cfg) != PGG_OK) {
        free(cfg);
        cfg = NULL;
    }
    return cfg;
}

void pgg_config_free(pgg_config *cfg)
{
    if (!cfg)
        return;
    pgg__host_specs_free(cfg->hosts, cfg->nhosts);
    free(cfg->on_connect.sql);
    free(cfg);
}

pgg_config *pgg__config_copy(const pgg_config *src, pgg_error *err)
{
    pgg_config *dst;

    if (!src) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL, "config copy: NULL config");
        return NULL;
    }
    dst = malloc(sizeof *dst);
    if (!dst) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    /* Everything but the hosts is plain data. */
    memcpy(dst, src, sizeof *dst);
    dst->hosts = NULL;
    dst->nhosts = 0;
    if (pgg__host_specs_copy(src->hosts, src->nhosts, &dst->hosts) != PGG_OK) {
        free(dst);
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    dst->nhosts = src->hosts ? src->nhosts : 0;
    dst->on_connect.sql = NULL;
    if (src->on_connect.sql && !(dst->on_connect.sql = strdup(src->on_connect.sql))) {
        pgg_config_free(dst);
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    return dst;
}

int pgg_config_set_servers(pgg_config *cfg, const char *conninfo,
                           pgg_error *err)
{
    pgg_host_spec *hosts;
    int n, rc;

    if (!cfg || !conninfo)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "servers: NULL argument");
    rc = pgg__conninfo_split(conninfo, &hosts, &n, err);
    if (rc != PGG_OK)
        return rc; /* the previous servers stay */
    pgg__host_specs_free(cfg->hosts, cfg->nhosts);
    cfg->hosts = hosts;
    cfg->nhosts = n;
    return PGG_OK;
}

/* pgg_config_set; quote: whether messages may show the key or value. */
static int config_set(pgg_config *cfg, const char *key, const char *value,
                      bool quote, pgg_error *err)
{
    const opt *o;

    if (!cfg || !key || !value)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "config set: NULL argument");
    if (strcmp(key, "servers") == 0)
        return pgg_config_set_servers(cfg, value, err);
    if (is_classify_key(key))
        return set_classify(cfg, key, value, quote, err);
    o = find_opt(key);
    if (!o)
        return unknown_key(key, quote, err);
    return set_text(cfg, o, value, quote, err);
}

int pgg_config_set(pgg_config *cfg, const char *key, const char *value,
                   pgg_error *err)
{
    return config_set(cfg, key, value, true, err);
}

/* The key for a typed setter, or an error already filled. */
static int typed_lookup(pgg_config *cfg, const char *key, const char *given,
                        const opt **out, pgg_error *err)
{
    if (!cfg || !key)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "config set: NULL argument");
    if (strcmp(key, "servers") == 0)
        return wrong_type(key, "a conninfo string", given, err);
    if (is_classify_key(key))
        return wrong_type(key, "\"<class>[,retry]\" text", given, err);
    *out = find_opt(key);
    return *out ? PGG_OK : unknown_key(key, true, err);
}

int pgg_config_set_int(pgg_config *cfg, const char *key, long long value,
                       pgg_error *err)
{
    const opt *o;
    int rc = typed_lookup(cfg, key, "an integer", &o, err);

    if (rc)
        return rc;
    switch (o->kind) {
    case K_INT:
    case K_U32:
    case K_I64:
        return store_int(cfg, o, value, err);
    case K_DOUBLE:
        /* A whole percentage is a natural way to write a rate. */
        return store_double(cfg, o, (double)value, err);
    default:
        return wrong_type(key, kind_noun(o->kind), "an integer", err);
    }
}

int pgg_config_set_double(pgg_config *cfg, const char *key, double value,
                          pgg_error *err)
{
    const opt *o;
    int rc = typed_lookup(cfg, key, "a number", &o, err);

    if (rc)
        return rc;
    if (o->kind != K_DOUBLE)
        return wrong_type(key, kind_noun(o->kind), "a number", err);
    return store_double(cfg, o, value, err);
}

int pgg_config_set_bool(pgg_config *cfg, const char *key, int value,
                        pgg_error *err)
{
    const opt *o;
    int rc = typed_lookup(cfg, key, "a boolean", &o, err);

    if (rc)
        return rc;
    if (o->kind != K_BOOL)
        return wrong_type(key, kind_noun(o->kind), "a boolean", err);
    *(bool *)field_of(cfg, o) = value != 0;
    return PGG_OK;
}

int pgg_config_classify(pgg_config *cfg, const char *sqlstate, pgg_class cls,
                        int retry, pgg_error *err)
{
    if (!cfg || !sqlstate)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "classify: NULL argument");
    return pgg__classifier_override(&cfg->classifier, sqlstate, cls, retry != 0,
                                    err);
}

/* The value of one table key as text. */
static void format_value(const pgg_config *cfg, const opt *o, char *buf,
                         size_t size)
{
    const void *f = cfield_of(cfg, o);
    int e;

    switch (o->kind) {
    case K_INT:
        snprintf(buf, size, "%d", *(const int *)f);
        return;
    case K_U32:
        snprintf(buf, size, "%lu", (unsigned long)*(const uint32_t *)f);
        return;
    case K_I64:
        snprintf(buf, size, "%lld", (long long)*(const int64_t *)f);
        return;
    case K_DOUBLE:
        fmt_double(buf, size, *(const double *)f);
        return;
    case K_BOOL:
        snprintf(buf, size, "%s", *(const bool *)f ? "true" : "false");
        return;
    case K_ENUM:
        e = *(const int *)f;
        snprintf(buf, size, "%s",
                 e >= 0 && e <= o->max ? o->names[e] : "(invalid)");
        return;
    }
}

/* "a:5432,b:5433": the hosts as split, never the conninfo itself. */
static int get_servers(const pgg_config *cfg, char *buf, size_t buflen,
                       pgg_error *err)
{
    size_t len = 0;

    buf[0] = '\0';
    for (int i = 0; i < cfg->nhosts; i++) {
        int n = snprintf(buf + len, buflen - len, "%s%s", i ? "," : "",
                         cfg->hosts[i].name);

        if (n < 0 || (size_t)n >= buflen - len) {
            buf[0] = '\0';
            return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                                  "servers: buffer too small");
        }
        len += (size_t)n;
    }
    return PGG_OK;
}

int pgg_config_get(const pgg_config *cfg, const char *key, char *buf,
                   size_t buflen, pgg_error *err)
{
    const opt *o;
    char tmp[64];

    if (!cfg || !key || !buf || buflen == 0)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "config get: NULL argument or empty buffer");
    buf[0] = '\0';
    if (strcmp(key, "servers") == 0)
        return get_servers(cfg, buf, buflen, err);
    if (is_classify_key(key))
        return get_classify(cfg, key, buf, buflen, err);
    o = find_opt(key);
    if (!o)
        return unknown_key(key, true, err);
    format_value(cfg, o, tmp, sizeof tmp);
    if (strlen(tmp) >= buflen)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "%s: buffer too small (%zu bytes needed)",
                              o->name, strlen(tmp) + 1);
    memcpy(buf, tmp, strlen(tmp) + 1);
    return PGG_OK;
}

/* ----------------------------------------------------------------- parse */

/* Append " (line N)" to the message of a failed pair. */
static int at_line(pgg_error *err, int rc, int line)
{
    if (err) {
        size_t n = strlen(err->message);

        snprintf(err->message + n, sizeof err->message - n, " (line %d)", line);
    }
    return rc;
}

/* A key for a message: itself when it may be quoted, else a word. */
static const char *key_label(const char *key, bool quote)
{
    return quotable(key, 64, quote) ? key : "(key not shown)";
}

static bool blank(int c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

int pgg_config_parse(pgg_config *cfg, const char *text, pgg_error *err)
{
    const char *p = text;
    int line = 1;
    int rc = PGG_OK;
    /*
     * Quote no key or value after a servers pair, a quoted value or a
     * comment: a password can spill out of any of them when a quote or a
     * newline is misplaced ("# password='x\nsecret'"), as a word of its
     * own.  See quotable().
     */
    bool quote = true;

    if (!cfg || !text)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "config parse: NULL argument");
    for (;;) {
        const char *k0;
        size_t klen, cap;
        char *key, *val;
        size_t vlen = 0;
        int kline;
        bool quoted;

        /* Blanks, newlines and comments between pairs. */
        while (*p && (isspace((unsigned char)*p) || *p == '#')) {
            if (*p == '#') {
                quote = false;
                while (*p && *p != '\n')
                    p++;
                continue;
            }
            line += *p == '\n';
            p++;
        }
        if (!*p)
            break;
        kline = line;
        k0 = p;
        while (*p && *p != '=' && *p != '#' && *p != '\'' &&
               !isspace((unsigned char)*p))
            p++;
        klen = (size_t)(p - k0);
        while (blank((unsigned char)*p))
            p++;
        if (klen == 0)
            return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                                  "config parse: expected key=value, found "
                                  "\"%c\" (line %d)",
                                  *p, kline);
        if (*p != '=') {
            char word[65];

            pgg__strlcpy(word, k0, klen < sizeof word ? klen + 1 : 1);
            if (klen >= sizeof word || !quotable(word, 64, quote))
                return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                                      "config parse: missing \"=\" after a "
                                      "key (line %d)",
                                      kline);
            return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                                  "config parse: missing \"=\" after \"%s\" "
                                  "(line %d)",
                                  word, kline);
        }
        p++;
        while (blank((unsigned char)*p))
            p++;

        /* The value can be no longer than the rest of the text. */
        cap = strlen(p) + 1;
        key = malloc(klen + 1);
        val = malloc(cap);
        if (!key || !val) {
            free(key);
            free(val);
            return pgg__error_set(err, PGG_ENOMEM, NULL, NULL,
                                  "out of memory");
        }
        memcpy(key, k0, klen);
        key[klen] = '\0';
        quoted = *p == '\'';
        if (quoted) {
            /* libpq's quoting: \' and \\ (any \x is x), newlines kept. */
            for (p++;; p++) {
                if (!*p) {
                    rc = pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                                        "%s: unterminated quoted value "
                                        "(line %d)",
                                        key_label(key, quote), kline);
                    break;
                }
                if (*p == '\\' && p[1]) {
                    line += p[1] == '\n';
                    val[vlen++] = *++p;
                    continue;
                }
                if (*p == '\'') {
                    p++;
                    break;
                }
                line += *p == '\n';
                val[vlen++] = *p;
            }
            if (!rc && *p && *p != '#' && !isspace((unsigned char)*p))
                rc = pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                                    "%s: text after the closing quote "
                                    "(line %d)",
                                    key_label(key, quote), line);
        } else {
            while (*p && *p != '#' && !isspace((unsigned char)*p)) {
                if (*p == '\\' && p[1] && p[1] != '\n')
                    p++;
                val[vlen++] = *p++;
            }
        }
        val[vlen] = '\0';
        if (!rc) {
            rc = config_set(cfg, key, val, quote, err);
            if (rc)
                at_line(err, rc, kline);
            if (quoted || strcmp(key, "servers") == 0)
                quote = false;
        }
        /* The value may hold a password: do not leave it in the heap. */
        memset(val, 0, cap);
        free(key);
        free(val);
        if (rc)
            return rc;
    }
    return PGG_OK;
}

/* -------------------------------------------------------------- validate */

/* Whether a field holds a value its key would accept: the pool and tests
 * may write fields directly, past the setters. */
static bool in_range(const pgg_config *cfg, const opt *o)
{
    const void *f = cfield_of(cfg, o);
    long long v;
    double d;

    switch (o->kind) {
    case K_INT:
    case K_ENUM:
        v = *(const int *)f;
        break;
    case K_U32:
        v = *(const uint32_t *)f;
        break;
    case K_I64:
        v = *(const int64_t *)f;
        break;
    case K_DOUBLE:
        d = *(const double *)f;
        return isfinite(d) && d >= o->dmin && d <= o->dmax &&
               !(o->dmin_open && d == o->dmin) && !(o->dmax_open && d == o->dmax);
    case K_BOOL:
    default:
        return true;
    }
    return v >= o->min && v <= o->max;
}

int pgg__config_validate(const pgg_config *cfg, pgg_error *err)
{
    const char *msg;

    if (!cfg)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "config: NULL config");
    for (int i = 0; i < NOPTIONS; i++) {
        if (!in_range(cfg, &options[i])) {
            char acc[160];

            accepted(&options[i], acc, sizeof acc);
            return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                                  "%s: value out of range (expected %s)",
                                  options[i].name, acc);
        }
    }
    if (cfg->nhosts <= 0 || !cfg->hosts)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "servers: no servers configured (set a conninfo "
                              "with pgg_config_set_servers or servers=...)");
    if (cfg->pool_min_idle > cfg->pool_max)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "pool_min_idle (%d) must not exceed pool_max (%d)",
                              cfg->pool_min_idle, cfg->pool_max);
    if (cfg->health_incident_min_ms > cfg->health_incident_max_ms)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "health_incident_min_ms (%lld) must not exceed "
                              "health_incident_max_ms (%lld)",
                              (long long)cfg->health_incident_min_ms,
                              (long long)cfg->health_incident_max_ms);
    msg = pgg__breaker_config_check(&cfg->breaker);
    if (msg)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL, "%s", msg);
    return PGG_OK;
}

/* ------------------------------------------------------------------ docs */

static const char *kind_name(const opt *o)
{
    switch (o->kind) {
    case K_INT:
    case K_U32:
    case K_I64:
        return "integer";
    case K_DOUBLE:
        return "number";
    case K_BOOL:
        return "boolean";
    case K_ENUM:
        return "name";
    }
    return "";
}

char *pgg__config_doc_markdown(void)
{
    pgg_config *def = pgg_config_new();
    size_t cap = 16384, len = 0;
    char *out = def ? malloc(cap) : NULL;
    char acc[160], val[64], classes[128];
    size_t cl = 0;

    if (!out) {
        pgg_config_free(def);
        return NULL;
    }
    classes[0] = '\0';
    for (int i = 0; i < PGG_CLASS__COUNT && cl < sizeof classes; i++)
        cl += (size_t)snprintf(classes + cl, sizeof classes - cl, "%s%s",
                               i ? ", " : "", pgg_class_name((pgg_class)i));

#define EMIT(...)                                                          \
    do {                                                                   \
        int n_ = snprintf(out + len, cap - len, __VA_ARGS__);              \
        if (n_ < 0)                                                        \
            goto fail;                                                     \
        if ((size_t)n_ >= cap - len) {                                     \
            char *np_ = realloc(out, cap * 2 + (size_t)n_);                 \
            if (!np_)                                                      \
                goto fail;                                                 \
            out = np_;                                                     \
            cap = cap * 2 + (size_t)n_;                                    \
            snprintf(out + len, cap - len, __VA_ARGS__);                   \
        }                                                                  \
        len += (size_t)n_;                                                 \
    } while (0)

    EMIT("| Key | Type | Default | Accepted | Meaning |\n");
    EMIT("| --- | --- | --- | --- | --- |\n");
    EMIT("| `servers` | conninfo | (none) | libpq key=value or URI, 1..%d hosts | "
         "the servers; host, hostaddr and port lists split as libpq does |\n",
         PGG_MAX_HOSTS);
    for (int i = 0; i < NOPTIONS; i++) {
        const opt *o = &options[i];

        accepted(o, acc, sizeof acc);
        format_value(def, o, val, sizeof val);
        EMIT("| `%s` | %s | `%s` | %s | %s |\n", o->name, kind_name(o), val,
             acc, o->doc);
    }
    EMIT("| `classify.<SQLSTATE>` | class[,retry] | (built-in table) | %s | "
         "how a SQLSTATE (5 characters) or class (2) counts for the breaker; "
         "retry: a read may run again elsewhere |\n",
         classes);
#undef EMIT
    pgg_config_free(def);
    return out;
fail:
    pgg_config_free(def);
    free(out);
    return NULL;
}

/* ---------------------------------------------------------- environment */

/* The error of a setter, told as coming from variable `var`: the message
 * keeps its own text (never a password) behind the variable's name. */
static int from_var(const char *var, int rc, pgg_error *err)
{
    char msg[sizeof err->message];
    size_t n;

    if (rc == PGG_OK || !err)
        return rc;
    pgg__strlcpy(msg, err->message, sizeof msg);
    /* "VAR: message", the message cut to what is left of the room */
    pgg__strlcpy(err->message, var, sizeof err->message);
    n = strlen(err->message);
    pgg__strlcpy(err->message + n, ": ", sizeof err->message - n);
    n = strlen(err->message);
    pgg__strlcpy(err->message + n, msg, sizeof err->message - n);
    return rc;
}

int pgg_config_from_env(pgg_config *cfg, pgg_error *err)
{
    const char *servers, *options;
    int rc;

    pgg__error_reset(err);
    if (!cfg)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_config_from_env: NULL config");
    servers = getenv("PGGUARD_SERVERS");
    options = getenv("PGGUARD_OPTIONS");
    if (servers && *servers) {
        rc = pgg_config_set_servers(cfg, servers, err);
        if (rc != PGG_OK)
            return from_var("PGGUARD_SERVERS", rc, err);
    }
    if (options && *options) {
        rc = pgg_config_parse(cfg, options, err);
        if (rc != PGG_OK)
            return from_var("PGGUARD_OPTIONS", rc, err);
    }
    return PGG_OK;
}

/* ------------------------------------------------------ on-connect hook */

int pgg_config_on_connect(pgg_config *cfg, const char *sql, pgg_connect_fn fn,
                          void *userdata, pgg_error *err)
{
    char *copy = NULL;

    pgg__error_reset(err);
    if (!cfg)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_config_on_connect: NULL config");
    if (sql && !(copy = strdup(sql)))
        return pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
    free(cfg->on_connect.sql);
    cfg->on_connect.sql = copy;
    cfg->on_connect.fn = fn;
    cfg->on_connect.userdata = userdata;
    return PGG_OK;
}

int pgg_config_on_trace(pgg_config *cfg, pgg_trace_start_fn start,
                        pgg_trace_end_fn end, void *userdata, pgg_error *err)
{
    pgg__error_reset(err);
    if (!cfg)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_config_on_trace: NULL config");
    cfg->trace_start = start;
    cfg->trace_end = end;
    cfg->trace_ud = start || end ? userdata : NULL;
    return PGG_OK;
}
