/*
 * The Prometheus text of src/metrics.c without a server: the formatter on
 * hand-made snapshots (exact lines, escapes, the buffer contract), then
 * pgg_pool_metrics() on a pool whose only host refuses connections.
 */
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "metrics.h"
#include "pgguard.h"
#include "prom_text.h"

static void fake(pgg_stats *s, pgg_host_stats h[2])
{
    memset(s, 0, sizeof *s);
    memset(h, 0, 2 * sizeof *h);
    s->hosts = 2;
    s->bulkhead_capacity = 64;
    s->bulkhead_in_use = 3;
    s->bulkhead_rejections = 7;
    s->calls = 42;
    s->calls_failed = 5;
    s->cache_fallbacks = 2;
    s->cache_bytes = 4096;
    s->ryw_samples = 11;
    s->ryw_checks = 12;
    s->ryw_waits = 13;
    s->ryw_primary = 14;
    snprintf(h[0].host, sizeof h[0].host, "db1:5432");
    h[0].role = PGG_ROLE_PRIMARY;
    h[0].state = PGG_BREAKER_CLOSED;
    h[0].lag_bytes = 0;
    h[0].conns_open = 4;
    h[0].conns_idle = 3;
    h[0].conns_busy = 1;
    h[0].calls = 30;
    h[0].successes = 29;
    h[0].failures[PGG_CLASS_TIMEOUT] = 1;
    h[0].failure_rate = 3.5;
    h[0].open_remaining_ms = 1500;
    h[0].slow_call_rate = -1;
    /* A name that needs every escape the format has. */
    snprintf(h[1].host, sizeof h[1].host, "we\"ird\\ho\nst:1");
    h[1].role = PGG_ROLE_STANDBY;
    h[1].state = PGG_BREAKER_OPEN;
    h[1].lag_bytes = -1;
    h[1].failures[PGG_CLASS_CONNECTION] = 9;
    h[1].rejections = 11;
    h[1].failure_rate = NAN;
    h[1].slow_call_rate = INFINITY;
    h[1].last_error_code = PGG_ECONNECT;
    snprintf(h[1].last_error, sizeof h[1].last_error, "password=leaked? never exported");
}

static char *format_all(const pgg_stats *s, const pgg_host_stats *h, int n)
{
    size_t need = 0;
    cr_assert_eq(pgg__metrics_format(s, h, n, NULL, 0, &need), PGG_EINVAL);
    cr_assert_gt(need, 1);
    char *buf = malloc(need);
    cr_assert_not_null(buf);
    size_t again = 0;
    cr_assert_eq(pgg__metrics_format(s, h, n, buf, need, &again), PGG_OK);
    cr_assert_eq(again, need);
    cr_assert_eq(strlen(buf) + 1, need);
    return buf;
}

static void expect_line(const char *text, const char *line)
{
    char *want = malloc(strlen(line) + 3);
    cr_assert_not_null(want);
    sprintf(want, "\n%s\n", line);
    cr_expect_not_null(strstr(text, want), "missing line: %s", line);
    free(want);
}

Test(metrics, format_is_valid_prometheus_text)
{
    pgg_stats s;
    pgg_host_stats h[2];
    char why[256];

    fake(&s, h);
    char *t = format_all(&s, h, 2);
    cr_expect_eq(prom_check(t, why, sizeof why), 0, "%s\n%s", why, t);
    free(t);
}

Test(metrics, every_field_appears_with_its_value)
{
    pgg_stats s;
    pgg_host_stats h[2];

    fake(&s, h);
    char *t = format_all(&s, h, 2);
    expect_line(t, "# TYPE pgguard_calls_total counter");
    expect_line(t, "pgguard_calls_total 42");
    expect_line(t, "pgguard_calls_failed_total 5");
    expect_line(t, "pgguard_hosts 2");
    expect_line(t, "pgguard_bulkhead_capacity 64");
    expect_line(t, "pgguard_bulkhead_in_use 3");
    expect_line(t, "pgguard_bulkhead_rejections_total 7");
    expect_line(t, "pgguard_cache_fallbacks_total 2");
    expect_line(t, "pgguard_cache_bytes 4096");
    expect_line(t, "pgguard_ryw_samples_total 11");
    expect_line(t, "pgguard_ryw_checks_total 12");
    expect_line(t, "pgguard_ryw_waits_total 13");
    expect_line(t, "pgguard_ryw_primary_reads_total 14");
    expect_line(t, "pgguard_info{version=\"" PGG_VERSION_STRING "\"} 1");
    expect_line(t, "pgguard_host_role{host=\"db1:5432\",role=\"primary\"} 1");
    expect_line(t, "pgguard_host_role{host=\"db1:5432\",role=\"standby\"} 0");
    expect_line(t, "pgguard_breaker_state{host=\"db1:5432\",state=\"closed\"} 1");
    expect_line(t, "pgguard_breaker_state{host=\"db1:5432\",state=\"open\"} 0");
    expect_line(t, "pgguard_breaker_state{host=\"db1:5432\",state=\"half-open\"} 0");
    expect_line(t, "pgguard_host_connections_open{host=\"db1:5432\"} 4");
    expect_line(t, "pgguard_host_connections_idle{host=\"db1:5432\"} 3");
    expect_line(t, "pgguard_host_connections_busy{host=\"db1:5432\"} 1");
    expect_line(t, "pgguard_host_calls_total{host=\"db1:5432\"} 30");
    expect_line(t, "pgguard_host_successes_total{host=\"db1:5432\"} 29");
    expect_line(t, "pgguard_host_failures_total{host=\"db1:5432\",class=\"timeout\"} 1");
    expect_line(t, "pgguard_host_failures_total{host=\"db1:5432\",class=\"connection\"} 0");
    expect_line(t, "pgguard_host_failure_rate_percent{host=\"db1:5432\"} 3.5");
    expect_line(t, "pgguard_host_open_remaining_seconds{host=\"db1:5432\"} 1.5");
    expect_line(t, "pgguard_host_slow_call_rate_percent{host=\"db1:5432\"} -1");
    expect_line(t, "pgguard_host_lag_bytes{host=\"db1:5432\"} 0");
    free(t);
}

Test(metrics, labels_are_escaped_and_special_values_spelled_right)
{
    pgg_stats s;
    pgg_host_stats h[2];

    fake(&s, h);
    char *t = format_all(&s, h, 2);
    const char *esc = "we\\\"ird\\\\ho\\nst:1";
    char line[256];
    snprintf(line, sizeof line, "pgguard_breaker_state{host=\"%s\",state=\"open\"} 1", esc);
    expect_line(t, line);
    snprintf(line, sizeof line, "pgguard_host_lag_bytes{host=\"%s\"} -1", esc);
    expect_line(t, line);
    snprintf(line, sizeof line, "pgguard_host_failure_rate_percent{host=\"%s\"} NaN", esc);
    expect_line(t, line);
    snprintf(line, sizeof line, "pgguard_host_slow_call_rate_percent{host=\"%s\"} +Inf", esc);
    expect_line(t, line);
    snprintf(line, sizeof line, "pgguard_host_last_error_code{host=\"%s\"} %d", esc,
             PGG_ECONNECT);
    expect_line(t, line);
    /* The message is never exported: only its code. */
    cr_expect_null(strstr(t, "password"), "a last_error message leaked into the metrics");
    free(t);
}

Test(metrics, buffer_contract)
{
    pgg_stats s;
    pgg_host_stats h[2];
    size_t need = 0, got = 0;

    fake(&s, h);
    cr_assert_eq(pgg__metrics_format(&s, h, 2, NULL, 0, &need), PGG_EINVAL);
    char *buf = malloc(need);
    cr_assert_not_null(buf);

    /* One byte short: a terminated prefix, and the same size asked. */
    memset(buf, 'x', need);
    cr_expect_eq(pgg__metrics_format(&s, h, 2, buf, need - 1, &got), PGG_EINVAL);
    cr_expect_eq(got, need);
    cr_expect_eq(buf[need - 2], '\0');
    cr_expect_eq(strlen(buf), need - 2);

    /* Tiny: still terminated. */
    cr_expect_eq(pgg__metrics_format(&s, h, 2, buf, 1, &got), PGG_EINVAL);
    cr_expect_eq(buf[0], '\0');

    /* Exactly the size: fits. */
    cr_expect_eq(pgg__metrics_format(&s, h, 2, buf, need, NULL), PGG_OK);
    cr_expect_eq(strlen(buf) + 1, need);

    /* No hosts is a valid pool-only text. */
    char small[8192];
    cr_expect_eq(pgg__metrics_format(&s, NULL, 0, small, sizeof small, NULL), PGG_OK);
    cr_expect_null(strstr(small, "host="));
    cr_expect_eq(pgg__metrics_format(NULL, h, 2, small, sizeof small, NULL), PGG_EINVAL);
    free(buf);
}

Test(metrics, pool_metrics_of_an_unreachable_host)
{
    pgg_error e;
    pgg_config *cfg = pgg_config_new();
    char why[256], line[256];
    size_t need = 0;

    cr_assert_not_null(cfg);
    /* Nothing listens on port 1: every connect is refused at once. */
    cr_assert_eq(pgg_config_set_servers(
                     cfg, "host=127.0.0.1 port=1 user=metrics_user password=topsecret dbname=x",
                     &e),
                 PGG_OK, "%s", e.message);
    cr_assert_eq(pgg_config_parse(cfg, "breaker.consecutive_failures=2 health_interval_ms=60000",
                                  &e),
                 PGG_OK, "%s", e.message);
    pgg_pool *p = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    cr_assert_not_null(p, "%s", e.message);
    for (int i = 0; i < 5; i++)
        PQclear(pgg_exec(p, PGG_READ, "SELECT 1", NULL, NULL, &e));

    cr_assert_eq(pgg_pool_metrics(NULL, NULL, 0, &need), PGG_EINVAL);
    cr_assert_eq(pgg_pool_metrics(p, NULL, 16, &need), PGG_EINVAL, "NULL buf with a length");
    cr_assert_eq(pgg_pool_metrics(p, NULL, 0, &need), PGG_EINVAL);
    cr_assert_gt(need, 1);
    char *buf = malloc(need + 1024);
    cr_assert_not_null(buf);
    cr_assert_eq(pgg_pool_metrics(p, buf, need + 1024, &need), PGG_OK);
    cr_expect_eq(prom_check(buf, why, sizeof why), 0, "%s\n%s", why, buf);
    expect_line(buf, "pgguard_hosts 1");
    expect_line(buf, "pgguard_calls_total 5");
    expect_line(buf, "pgguard_calls_failed_total 5");
    expect_line(buf, "pgguard_breaker_state{host=\"127.0.0.1:1\",state=\"closed\"} 0");
    cr_expect_gt(prom_value(buf, "pgguard_host_failures_total{host=\"127.0.0.1:1\","
                                 "class=\"connection\"}"),
                 0);
    snprintf(line, sizeof line, "pgguard_host_last_error_code{host=\"127.0.0.1:1\"} %d",
             PGG_ECONNECT);
    expect_line(buf, line);
    cr_expect_null(strstr(buf, "topsecret"), "the password is in the metrics");
    cr_expect_null(strstr(buf, "metrics_user"), "the user is in the metrics");
    free(buf);
    pgg_pool_free(p);
    cr_expect_eq(pgh_leak_check(), 0, "leaked");
}
