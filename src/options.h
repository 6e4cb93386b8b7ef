/*
 * Internal: the pool's settings.  One key table (options.c) drives the
 * text and typed setters, pgg_config_get, pgg_config_parse and the
 * generated documentation, so a key cannot exist in one and not the other.
 * The pool reads the fields below directly, after pgg__config_validate().
 */
#ifndef PGG_OPTIONS_H
#define PGG_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "pgguard.h"
#include "breaker.h"
#include "classify.h"
#include "conninfo.h"
#include "router.h"

/* pgg_config_on_connect: what runs on each new connection (host.c). */
typedef struct pgg_on_connect {
    char *sql;         /* owned; NULL: none */
    pgg_connect_fn fn; /* NULL: none */
    void *userdata;
} pgg_on_connect;

struct pgg_config {
    /* The servers, split one per host, in conninfo order (see conninfo.h).
     * nhosts == 0 until pgg_config_set_servers() succeeds. */
    int nhosts;
    pgg_host_spec *hosts;

    /* Connections, per host. */
    int pool_min_idle;
    int pool_max;
    int64_t idle_timeout_ms;        /* 0: idle connections are kept */
    int64_t max_lifetime_ms;        /* 0: no limit */
    int64_t validate_after_idle_ms; /* 0: check every idle connection */
    int64_t alive_check_after_idle_ms; /* 0: poll every idle socket */
    /* Bounds the whole connect (libpq's connect_timeout, when given, stays
     * in the host's parameters but has a 2 s floor: this one is exact). */
    int64_t connect_timeout_ms;

    /* Calls. */
    int64_t call_timeout_ms;   /* when a call gives no timeout */
    int64_t cancel_timeout_ms; /* a background cancel's own bound; 0: none */
    int bulkhead_max_concurrent;
    int64_t bulkhead_max_wait_ms; /* 0: reject at once when full */

    /* Routing and health. */
    int64_t health_interval_ms;
    int64_t max_replica_lag_bytes; /* 0: no limit */
    pgg_read_policy read_policy;
    int max_attempts; /* hosts tried by one read */
    bool lease_reset; /* DISCARD ALL when a lease comes back */
    /* Automatic prepared statements (autoprep.h): per connection, the SQL
     * of this many parameterised calls (0: off), prepared at its
     * auto_prepare_after-th use there. */
    int auto_prepare;
    int auto_prepare_after;
    pgg_on_connect on_connect; /* run on each new connection */
    /* pgg_config_on_trace: called at each call's start and end. */
    pgg_trace_start_fn trace_start;
    pgg_trace_end_fn trace_end;
    void *trace_ud;
    int64_t lease_leak_ms; /* report a lease held longer; 0: never */
    /* A read attempt that another candidate could still take over ends at
     * this (Envoy's per_try_timeout): a hung host then costs a read part of
     * its deadline, not all of it.  0: an attempt may use the whole
     * deadline. */
    int64_t attempt_timeout_ms;
    /* With attempt_timeout_ms = 0: bound such an attempt by the host's own
     * recent latency instead (pool.c, attempt_deadline). */
    bool attempt_timeout_auto;
    /* One health probe (connect and query) ends at this, so a hung host is
     * marked before connect_timeout_ms; each host has its own schedule. */
    int64_t health_probe_timeout_ms;
    /* Incident mode (a breaker open, no primary known, a probe failing):
     * probes every incident_min, doubling to incident_max. */
    int64_t health_incident_min_ms;
    int64_t health_incident_max_ms;

    /* Read your writes (visibility.h): 0 off, 1 pool-wide. */
    int ryw_mode;
    int64_t ryw_max_wait_ms; /* a read waits this long for a replica */
    int64_t ryw_poll_ms;     /* health rounds this often while reads wait */

    /* Concurrent one-shot calls to a host share connections in libpq
     * pipeline mode (pipeline.h). */
    bool pipeline;
    int pipeline_connections;  /* shared links per host */
    int64_t pipeline_stall_ms; /* no joining behind a statement this old */

    /* libpqtypes on every pooled connection (PQgetf on every result). */
    bool types_enabled;

    /* Fallback cache. */
    bool cache_enabled;
    int64_t cache_max_bytes;
    int64_t cache_max_age_ms;

    /* Every host's circuit breaker ("breaker.*" keys). */
    pgg_breaker_config breaker;

    /* SQLSTATE overrides ("classify.<SQLSTATE>" keys). */
    pgg_classifier classifier;
};

/* A deep copy (the pool keeps its own); NULL and *err on failure. */
pgg_config *pgg__config_copy(const pgg_config *src, pgg_error *err);

/*
 * What a single key cannot check: servers present, pool_min_idle <=
 * pool_max, the breaker's settings taken together, ...  PGG_ECONFIG with a
 * message naming the keys involved.
 */
int pgg__config_validate(const pgg_config *cfg, pgg_error *err);

/*
 * The key table as a Markdown table (key, type, default, accepted values,
 * meaning), malloc'd; NULL when out of memory.  README.md holds it between
 * <!-- config-keys:begin --> and <!-- config-keys:end -->.
 */
char *pgg__config_doc_markdown(void);

/* Number of keys in the table and the i-th one's name (NULL past the end),
 * for tests and tools. */
int pgg__config_key_count(void);
const char *pgg__config_key_name(int i);

#endif
