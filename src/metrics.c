/*
 * The Prometheus text exposition (format 0.0.4) of a pool's stats.
 *
 * Built on the public snapshots (pgg_pool_stats, pgg_pool_host_stats), so it
 * needs no lock of its own and sees exactly what a caller of those sees.
 * The format wants every sample of a family together, after its HELP and
 * TYPE lines: hence the loops are family first, host second.
 */
#include "metrics.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* An snprintf-like accumulator: counts what the whole text needs even when
 * buf is too small, so one pass gives both the text and its size. */
typedef struct out {
    char *buf;
    size_t len; /* capacity of buf, NUL included */
    size_t pos; /* bytes the text needs so far, NUL excluded */
} out;

static void put(out *o, const char *fmt, ...) PGG__PRINTF(2, 3);

static void put(out *o, const char *fmt, ...)
{
    va_list ap;
    size_t room = o->pos < o->len ? o->len - o->pos : 0;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(room ? o->buf + o->pos : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->pos += (size_t)n;
}

/* A label value: backslash, double quote and newline are escaped, as the
 * format requires; a host name could in principle hold any of them. */
static void put_label(out *o, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\')
            put(o, "\\\\");
        else if (*v == '"')
            put(o, "\\\"");
        else if (*v == '\n')
            put(o, "\\n");
        else
            put(o, "%c", *v);
    }
}

static void family(out *o, const char *name, const char *type,
                   const char *help)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void put_double(out *o, double v)
{
    /* printf spells them "nan" and "inf"; the format wants these. */
    if (isnan(v))
        put(o, "NaN");
    else if (isinf(v))
        put(o, v > 0 ? "+Inf" : "-Inf");
    else
        put(o, "%.10g", v);
}

/* A pool-wide sample with no labels. */
static void scalar(out *o, const char *name, const char *type,
                   const char *help, uint64_t v)
{
    family(o, name, type, help);
    put(o, "%s %" PRIu64 "\n", name, v);
}

/* name{host="...",extra_key="extra_val"} */
static void host_sample_start(out *o, const char *name, const char *host,
                              const char *extra_key, const char *extra_val)
{
    put(o, "%s{host=\"", name);
    put_label(o, host);
    if (extra_key) {
        put(o, "\",%s=\"", extra_key);
        put_label(o, extra_val);
    }
    put(o, "\"} ");
}

/* Per-host integer samples: the value is read through an accessor so that
 * one helper serves every field. */
typedef int64_t (*host_field)(const pgg_host_stats *h);

static void per_host(out *o, const pgg_host_stats *h, int n, const char *name,
                     const char *type, const char *help, host_field f)
{
    family(o, name, type, help);
    for (int i = 0; i < n; i++) {
        host_sample_start(o, name, h[i].host, NULL, NULL);
        put(o, "%" PRId64 "\n", f(&h[i]));
    }
}

/* The same for a real-valued field (rates, seconds). */
typedef double (*host_real)(const pgg_host_stats *h);

static void per_host_real(out *o, const pgg_host_stats *h, int n,
                          const char *name, const char *help, host_real f)
{
    family(o, name, "gauge", help);
    for (int i = 0; i < n; i++) {
        host_sample_start(o, name, h[i].host, NULL, NULL);
        put_double(o, f(&h[i]));
        put(o, "\n");
    }
}

static double r_failure_rate(const pgg_host_stats *h)
{
    return h->failure_rate;
}

static double r_slow_call_rate(const pgg_host_stats *h)
{
    return h->slow_call_rate;
}

static double r_open_remaining_s(const pgg_host_stats *h)
{
    return (double)h->open_remaining_ms / 1000.0;
}

#define FIELD(fn, expr)                                                        \
    static int64_t fn(const pgg_host_stats *h) { return (int64_t)(expr); }
FIELD(f_lag, h->lag_bytes)
FIELD(f_held, h->reads_held_until_lsn != 0)
FIELD(f_replay, h->replay_lsn)
FIELD(f_open, h->conns_open)
FIELD(f_idle, h->conns_idle)
FIELD(f_busy, h->conns_busy)
FIELD(f_calls, h->calls)
FIELD(f_successes, h->successes)
FIELD(f_ignored, h->ignored)
FIELD(f_rejections, h->rejections)
FIELD(f_connects, h->connects)
FIELD(f_connect_failures, h->connect_failures)
FIELD(f_last_error, h->last_error_code)
#undef FIELD

static void pool_families(out *o, const pgg_stats *s)
{
    family(o, "pgguard_info", "gauge", "The pgguard library version, as a label.");
    put(o, "pgguard_info{version=\"%s\"} 1\n", pgg_version());
    scalar(o, "pgguard_hosts", "gauge", "Servers the pool guards.",
           (uint64_t)s->hosts);
    scalar(o, "pgguard_bulkhead_capacity", "gauge",
           "Concurrent calls the bulkhead admits.",
           (uint64_t)s->bulkhead_capacity);
    scalar(o, "pgguard_bulkhead_in_use", "gauge",
           "Calls and leases holding a bulkhead slot now.",
           (uint64_t)s->bulkhead_in_use);
    scalar(o, "pgguard_bulkhead_waiting", "gauge",
           "Calls waiting for a bulkhead slot now.",
           (uint64_t)s->bulkhead_waiting);
    scalar(o, "pgguard_bulkhead_rejections_total", "counter",
           "Calls refused because the bulkhead was full.",
           s->bulkhead_rejections);
    scalar(o, "pgguard_calls_total", "counter", "Calls made through the pool.",
           s->calls);
    scalar(o, "pgguard_calls_failed_total", "counter",
           "Calls that returned no result.", s->calls_failed);
    scalar(o, "pgguard_cache_hits_total", "counter",
           "Fallback cache lookups that found an answer.", s->cache_hits);
    scalar(o, "pgguard_cache_misses_total", "counter",
           "Fallback cache lookups that found nothing.", s->cache_misses);
    scalar(o, "pgguard_cache_stores_total", "counter",
           "Results stored in the fallback cache.", s->cache_stores);
    scalar(o, "pgguard_cache_evictions_total", "counter",
           "Results evicted from the fallback cache.", s->cache_evictions);
    scalar(o, "pgguard_cache_fallbacks_total", "counter",
           "Stale answers served from the fallback cache.", s->cache_fallbacks);
    scalar(o, "pgguard_cache_bytes", "gauge",
           "Bytes held by the fallback cache.", s->cache_bytes);
    scalar(o, "pgguard_cache_entries", "gauge",
           "Results held by the fallback cache.", s->cache_entries);
    scalar(o, "pgguard_leases_out", "gauge",
           "Leases acquired and not yet released.", (uint64_t)s->leases_out);
    family(o, "pgguard_lease_oldest_seconds", "gauge",
           "How long the oldest lease out has been held.");
    put(o, "pgguard_lease_oldest_seconds ");
    put_double(o, (double)s->lease_oldest_ms / 1000.0);
    put(o, "\n");
    scalar(o, "pgguard_lease_leaks_total", "counter",
           "Leases reported held longer than lease_leak_ms.", s->lease_leaks);
    scalar(o, "pgguard_ryw_samples_total", "counter",
           "Read your writes: samples of the primary's WAL position (read_your_writes=sampled).",
           s->ryw_samples);
    scalar(o, "pgguard_ryw_checks_total", "counter",
           "Read your writes: replicas' replay positions checked in a read's round trip.",
           s->ryw_checks);
    scalar(o, "pgguard_ryw_waits_total", "counter",
           "Read your writes: reads that waited for a replica to catch up.", s->ryw_waits);
    scalar(o, "pgguard_ryw_primary_reads_total", "counter",
           "Read your writes: reads with a position that the primary served.",
           s->ryw_primary);
}

/* An enumeration as a state set: one 0/1 sample per possible value, the
 * Prometheus idiom that keeps every series present and alerting simple. */
static void state_set(out *o, const pgg_host_stats *h, int n,
                      const char *name, const char *help, const char *label,
                      int nvalues, const char *(*value_name)(int),
                      int (*current)(const pgg_host_stats *))
{
    family(o, name, "gauge", help);
    for (int i = 0; i < n; i++)
        for (int v = 0; v < nvalues; v++) {
            host_sample_start(o, name, h[i].host, label, value_name(v));
            put(o, "%d\n", current(&h[i]) == v);
        }
}

static const char *role_name(int v) { return pgg_role_name((pgg_role)v); }
static const char *state_name(int v)
{
    return pgg_breaker_state_name((pgg_breaker_state)v);
}
static int cur_role(const pgg_host_stats *h) { return (int)h->role; }
static int cur_state(const pgg_host_stats *h) { return (int)h->state; }

static void host_families(out *o, const pgg_host_stats *h, int n)
{
    state_set(o, h, n, "pgguard_host_role",
              "The role the server last reported (1 for the current one).",
              "role", PGG_ROLE_STANDBY + 1, role_name, cur_role);
    state_set(o, h, n, "pgguard_breaker_state",
              "The host's circuit breaker state (1 for the current one).",
              "state", PGG_BREAKER_METRICS_ONLY + 1, state_name, cur_state);
    per_host(o, h, n, "pgguard_host_lag_bytes", "gauge",
             "Replay lag behind the primary in bytes; -1 when unknown.", f_lag);
    per_host(o, h, n, "pgguard_host_replay_lsn", "gauge",
             "A standby's replay position at its last health probe, as a "
             "byte position; 0 when unknown.", f_replay);
    per_host(o, h, n, "pgguard_host_reads_held", "gauge",
             "1 while the host is held back from reads: it may have gone "
             "back behind the replay position it had reported (a restart).",
             f_held);
    per_host(o, h, n, "pgguard_host_connections_open", "gauge",
             "Connections open to the host.", f_open);
    per_host(o, h, n, "pgguard_host_connections_idle", "gauge",
             "Open connections idle in the pool.", f_idle);
    per_host(o, h, n, "pgguard_host_connections_busy", "gauge",
             "Open connections lent to a call or a lease.", f_busy);
    per_host(o, h, n, "pgguard_host_calls_total", "counter",
             "Attempts on the host that reached its breaker.", f_calls);
    per_host(o, h, n, "pgguard_host_successes_total", "counter",
             "Attempts that found the host healthy (user errors included).",
             f_successes);
    per_host(o, h, n, "pgguard_host_ignored_total", "counter",
             "Attempts whose outcome says nothing about the host.", f_ignored);

    family(o, "pgguard_host_failures_total", "counter",
           "Attempts that count against the host, by class.");
    for (int i = 0; i < n; i++)
        for (int c = PGG_CLASS_CONNECTION; c < PGG_CLASS__COUNT; c++) {
            host_sample_start(o, "pgguard_host_failures_total", h[i].host,
                              "class", pgg_class_name((pgg_class)c));
            put(o, "%" PRIu64 "\n", h[i].failures[c]);
        }

    per_host(o, h, n, "pgguard_host_rejections_total", "counter",
             "Attempts refused by the host's open breaker.", f_rejections);
    per_host(o, h, n, "pgguard_host_connects_total", "counter",
             "Connections opened to the host.", f_connects);
    per_host(o, h, n, "pgguard_host_connect_failures_total", "counter",
             "Connection attempts that failed.", f_connect_failures);

    per_host_real(o, h, n, "pgguard_host_failure_rate_percent",
                  "Failure rate in the breaker's window; -1 with too few calls.",
                  r_failure_rate);
    per_host_real(o, h, n, "pgguard_host_slow_call_rate_percent",
                  "Slow call rate in the breaker's window; -1 with too few calls.",
                  r_slow_call_rate);
    per_host_real(o, h, n, "pgguard_host_open_remaining_seconds",
                  "Open breaker: time until probes are let through (a Retry-After).",
                  r_open_remaining_s);
    /* The code only: the message is free text, unfit for a label. */
    per_host(o, h, n, "pgguard_host_last_error_code", "gauge",
             "The PGG_E* code of the host's last failure; 0 for none.",
             f_last_error);
}

int pgg__metrics_format(const pgg_stats *s, const pgg_host_stats *h,
                        int nhosts, char *buf, size_t len, size_t *needed)
{
    out o = {buf, buf ? len : 0, 0};

    if (!s || (nhosts > 0 && !h) || nhosts < 0)
        return PGG_EINVAL;
    pool_families(&o, s);
    host_families(&o, h, nhosts);
    if (needed)
        *needed = o.pos + 1;
    if (o.len == 0)
        return PGG_EINVAL;
    if (o.pos >= o.len) {
        o.buf[o.len - 1] = '\0'; /* vsnprintf did, but only when room > 0 */
        return PGG_EINVAL;
    }
    return PGG_OK;
}

int pgg_pool_metrics(pgg_pool *pool, char *buf, size_t len, size_t *needed)
{
    pgg_host_stats *hosts;
    pgg_stats s;
    int n, rc = PGG_OK;

    if (needed)
        *needed = 0;
    if (!pool || (!buf && len > 0))
        return PGG_EINVAL;
    n = pgg_pool_host_count(pool);
    if (n < 0 || n > PGG_MAX_HOSTS)
        return PGG_EINVAL;
    /* On the heap: 64 snapshots would be ~40 KiB of a caller's stack, and
     * HTTP servers often run handlers on small ones. */
    hosts = calloc((size_t)(n ? n : 1), sizeof *hosts);
    if (!hosts)
        return PGG_ENOMEM;
    if (pgg_pool_stats(pool, &s) != PGG_OK)
        rc = PGG_EINVAL;
    for (int i = 0; i < n && rc == PGG_OK; i++)
        rc = pgg_pool_host_stats(pool, i, &hosts[i]);
    if (rc == PGG_OK)
        rc = pgg__metrics_format(&s, hosts, n, buf, len, needed);
    free(hosts);
    return rc;
}
