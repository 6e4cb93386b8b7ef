/*
 * http_backend: a small HTTP service that keeps key/value pairs in
 * PostgreSQL through pgguard, on libmicrohttpd.
 *
 *   PGGUARD_SERVERS="host=db1,db2,db3 user=app dbname=app" http_backend [--port N]
 *
 *   PUT    /kv/KEY     store the request body          204
 *   GET    /kv/KEY     the value, from a replica       200, 404
 *   GET    /kv/KEY?consistency=primary                 read from the primary
 *   DELETE /kv/KEY                                      204, 404
 *   GET    /metrics    Prometheus text: the pool's stats and this service's
 *                      latency histograms
 *   GET    /healthz    200 while the process runs (whatever the database does)
 *
 * What the guard changes for the client:
 *   - 503 with Retry-After when pgguard refuses at once: the bulkhead is
 *     full (PGG_EBULKHEAD), every breaker is open (PGG_EOPEN) or there is no
 *     primary (PGG_ENOPRIMARY); 504 when a call hit its deadline.
 *   - a read that no server could answer comes from the fallback cache when
 *     it can, marked: "X-Pgguard-Stale: true", "Age: SECONDS" (RFC 9111), and
 *     "X-Pgguard-Stale-Cause: PGG_E..." (why the live read failed).
 *   - read your writes: every read sees every write this process
 *     acknowledged before it (read_your_writes=pool, set below),
 *     from a replica that has replayed it or from the primary.  Across
 *     processes, a PUT or DELETE answers "X-Pgguard-Lsn: 0/16B3748" (the
 *     write's WAL position); a GET carrying it back as "X-Pgguard-Min-Lsn"
 *     never sees older data, whichever process serves it (400 if malformed).
 *
 * Options: --port N (default 8080; 0 picks a free port), --listen ADDR
 * (default 127.0.0.1).  PGGUARD_SETTINGS adds guard settings ("key=value ...").
 * The bound address is printed as "listening on http://ADDR:PORT/".
 * SIGINT or SIGTERM stops it cleanly.
 *
 * Thread model: libmicrohttpd runs one thread per connection; each request
 * makes blocking pgguard calls, which are thread-safe and bounded by their
 * deadlines, and the bulkhead bounds how many reach the database at once.
 */
#include <arpa/inet.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pgguard.h"

/* libmicrohttpd 0.9.71 turned the handlers' int into enum MHD_Result. */
#if MHD_VERSION >= 0x00097002
typedef enum MHD_Result mhd_result;
#else
typedef int mhd_result;
#endif

#define MAX_BODY (64 * 1024)
#define MAX_KEY 256
#define CALL_TIMEOUT_MS 2000

/* Guard settings unless PGGUARD_SETTINGS says otherwise: the cache is what
 * lets reads outlive the servers. */
static const char default_settings[] =
    "cache.enabled=true cache.max_age_ms=300000 bulkhead.max_wait_ms=50 "
    "read_your_writes=pool";

static pgg_pool *pool;
static int retry_after_s = 1; /* without an open breaker to ask */

/* ------------------------------------------------------ latency histograms */

/*
 * Cumulative histograms, as Prometheus wants them, on atomics: a request
 * thread records without a lock and /metrics reads without stopping anyone.
 * Buckets must never decrease from one le to the next, even mid-update:
 * observe() counts from +Inf down to the smallest bound and a scrape reads
 * from the smallest bound up to +Inf, so whatever the scrape sees in a
 * small bucket it also sees in every larger one.
 */
static const double bounds_s[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                  0.05,   0.1,   0.25,   0.5,   1,    2.5, 5};
#define NBOUNDS (sizeof bounds_s / sizeof bounds_s[0])

typedef struct histogram {
    atomic_uint_fast64_t le[NBOUNDS + 1]; /* the last one is +Inf */
    atomic_uint_fast64_t sum_us;
} histogram;

static void observe(histogram *h, int64_t us)
{
    double s = (double)us / 1e6;
    atomic_fetch_add(&h->sum_us, (uint_fast64_t)(us > 0 ? us : 0));
    atomic_fetch_add(&h->le[NBOUNDS], 1);
    for (size_t i = NBOUNDS; i-- > 0;)
        if (s <= bounds_s[i])
            atomic_fetch_add(&h->le[i], 1);
}

enum route { R_KV, R_METRICS, R_HEALTHZ, R_OTHER, R__COUNT };
static const char *const route_names[] = {"/kv", "/metrics", "/healthz", "other"};

enum method { M_GET, M_PUT, M_DELETE, M_OTHER, M__COUNT };
static const char *const method_names[] = {"GET", "PUT", "DELETE", "other"};

static const int codes[] = {200, 204, 400, 404, 405, 409, 413, 500, 503, 504};
#define NCODES (sizeof codes / sizeof codes[0])

/* What the pgguard call came to: a live answer, a stale one, or an error. */
enum call_outcome { C_OK, C_STALE, C_ERROR, C__COUNT };
static const char *const outcome_names[] = {"ok", "stale", "error"};
static const char *const intent_names[] = {"write", "read", "read_primary"};

static histogram http_hist[R__COUNT][M__COUNT];
static atomic_uint_fast64_t http_count[R__COUNT][M__COUNT][NCODES];
static histogram call_hist[3][C__COUNT]; /* [intent][outcome] */

/* ------------------------------------------------------------- requests */

typedef struct request {
    struct timespec start;
    char *body;
    size_t len;
    bool too_big;
} request;

static int64_t since_us(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)(t.tv_sec - t0->tv_sec) * 1000000 + (t.tv_nsec - t0->tv_nsec) / 1000;
}

static enum method method_of(const char *m)
{
    for (int i = 0; i < M_OTHER; i++)
        if (strcmp(m, method_names[i]) == 0)
            return (enum method)i;
    return M_OTHER;
}

static void count_response(enum route r, enum method m, int status, const request *rq)
{
    for (size_t i = 0; i < NCODES; i++)
        if (codes[i] == status)
            atomic_fetch_add(&http_count[r][m][i], 1);
    observe(&http_hist[r][m], since_us(&rq->start));
}

/* Queue a response made of a copy of text, with optional extra headers
 * (name, value pairs, NULL-terminated). */
static mhd_result reply(struct MHD_Connection *c, int status, const char *type,
                        const char *text, size_t len, const char *const *headers)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
    mhd_result rc;

    if (!resp)
        return MHD_NO;
    if (type)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    for (; headers && headers[0]; headers += 2)
        MHD_add_response_header(resp, headers[0], headers[1]);
    rc = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* JSON string contents: the message may hold quotes (an SQL error's). */
static void json_escape(char *out, size_t len, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < len; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[n++] = '\\';
            out[n++] = (char)ch;
        } else if (ch < 0x20) {
            n += (size_t)snprintf(out + n, len - n, "\\u%04x", ch);
        } else {
            out[n++] = (char)ch;
        }
    }
    out[n] = '\0';
}

/*
 * Retry-After for a refusal: with every breaker open, the soonest one lets
 * a probe through is what the pool reports as left of its open time
 * (open_remaining_ms, which a host that answers its health probe cuts
 * short); otherwise a second.  Whole seconds, rounded up, at least one.
 */
static int retry_after(const pgg_error *e)
{
    long best = -1;

    if (e->code != PGG_EOPEN)
        return retry_after_s;
    for (int i = 0; i < pgg_pool_host_count(pool); i++) {
        pgg_host_stats hs;

        if (pgg_pool_host_stats(pool, i, &hs) != PGG_OK || hs.state != PGG_BREAKER_OPEN)
            continue;
        if (best < 0 || hs.open_remaining_ms < best)
            best = (long)hs.open_remaining_ms;
    }
    if (best < 0)
        return retry_after_s;
    return best > 0 ? (int)((best + 999) / 1000) : 1;
}

/*
 * The HTTP answer to a failed call.  Refusals pgguard makes at once mean
 * "not now": 503 with the time after which a breaker lets a probe through.
 * A deadline is a gateway timeout.  Server errors keep their meaning:
 * the client's fault (22xxx data, 23xxx constraint) or ours.
 */
static mhd_result reply_error(struct MHD_Connection *c, const pgg_error *e, int *status)
{
    char msg[1024], body[1400], retry[16];
    const char *headers[] = {NULL, NULL, NULL};

    switch (e->code) {
    case PGG_EBULKHEAD:
    case PGG_EOPEN:
    case PGG_ENOPRIMARY:
        *status = 503;
        snprintf(retry, sizeof retry, "%d", retry_after(e));
        headers[0] = MHD_HTTP_HEADER_RETRY_AFTER;
        headers[1] = retry;
        break;
    case PGG_ETIMEDOUT:
        *status = 504;
        break;
    case PGG_ECONNECT:
    case PGG_EUNAVAILABLE:
    case PGG_EWRONGROLE:
        *status = 503; /* the next attempt may find another server */
        break;
    case PGG_ESERVER:
        if (strncmp(e->sqlstate, "22", 2) == 0)
            *status = 400;
        else if (strncmp(e->sqlstate, "23", 2) == 0 || strncmp(e->sqlstate, "40", 2) == 0)
            *status = 409;
        else
            *status = 500;
        break;
    default:
        *status = 500;
    }
    /* pgguard's messages never hold a password: safe to return. */
    json_escape(msg, sizeof msg, e->message);
    int n = snprintf(body, sizeof body, "{\"error\":\"%s\",\"sqlstate\":\"%s\",\"message\":\"%s\"}\n",
                     pgg_err_name(e->code), e->sqlstate, msg);
    return reply(c, *status, "application/json", body,
                 n > 0 && (size_t)n < sizeof body ? (size_t)n : strlen(body), headers);
}

/* Run one statement with one text parameter or two; records its latency. */
static PGresult *call(pgg_intent intent, const char *sql, int nparams, const char *p1,
                      const char *p2, int flags, uint64_t min_lsn, pgg_info *info,
                      pgg_error *e)
{
    const char *vals[] = {p1, p2};
    pgg_call opts = {.timeout_ms = CALL_TIMEOUT_MS, .flags = (unsigned)flags,
                     .min_lsn = min_lsn};
    PGresult *r = pgg_exec_params(pool, intent, sql, nparams, NULL, vals, NULL, NULL, &opts,
                                  info, e);
    bool ok = r && (PQresultStatus(r) == PGRES_TUPLES_OK ||
                    PQresultStatus(r) == PGRES_COMMAND_OK);
    enum call_outcome o = !ok ? C_ERROR : info->from_cache ? C_STALE : C_OK;

    observe(&call_hist[intent][o], info->elapsed_us);
    if (r && !ok) { /* a server error: e says which */
        PQclear(r);
        r = NULL;
    }
    return r;
}

/* "X-Pgguard-Lsn: POSITION" for a write's reply (NULL-terminated header
 * list), or no header when the position is unknown. */
static const char *const *lsn_header(const pgg_info *info, char buf[32],
                                     const char *headers[3])
{
    if (!info->lsn || pgg_lsn_format(info->lsn, buf, 32) != PGG_OK)
        return NULL;
    headers[0] = "X-Pgguard-Lsn";
    headers[1] = buf;
    headers[2] = NULL;
    return headers;
}

static mhd_result kv_get(struct MHD_Connection *c, const char *key, int *status)
{
    const char *consistency =
        MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "consistency");
    bool primary = consistency && strcmp(consistency, "primary") == 0;
    const char *token = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Pgguard-Min-Lsn");
    uint64_t min_lsn = 0;
    pgg_info info;
    pgg_error e;

    if (token && pgg_lsn_parse(token, &min_lsn) != PGG_OK) {
        *status = 400;
        return reply(c, 400, "text/plain", "bad X-Pgguard-Min-Lsn\n", 22, NULL);
    }
    /* Only replica reads may fall back to the cache: a client that asked
     * for the primary must not get an older answer.  With a position, the
     * cache serves only an answer known to include it. */
    PGresult *r = call(primary ? PGG_READ_PRIMARY : PGG_READ,
                       "SELECT v FROM pgguard_http_kv WHERE k = $1", 1, key, NULL,
                       primary ? 0 : PGG_CALL_CACHEABLE, min_lsn, &info, &e);
    char age[32], cause[40];
    const char *headers[9] = {"X-Pgguard-Served-By", info.host, NULL};
    mhd_result rc;

    if (!r)
        return reply_error(c, &e, status);
    if (info.from_cache) {
        /* Age is in whole seconds; the header below keeps the milliseconds. */
        snprintf(age, sizeof age, "%" PRId64, info.cache_age_ms / 1000);
        snprintf(cause, sizeof cause, "%s", pgg_err_name(info.cause.code));
        headers[0] = "X-Pgguard-Stale";
        headers[1] = "true";
        headers[2] = MHD_HTTP_HEADER_AGE;
        headers[3] = age;
        headers[4] = "X-Pgguard-Stale-Cause";
        headers[5] = cause;
    }
    if (PQntuples(r) == 0) {
        *status = 404;
        rc = reply(c, 404, "text/plain; charset=utf-8", "not found\n", 10, headers);
    } else {
        *status = 200;
        rc = reply(c, 200, "text/plain; charset=utf-8", PQgetvalue(r, 0, 0),
                   (size_t)PQgetlength(r, 0, 0), headers);
    }
    PQclear(r);
    return rc;
}

static mhd_result kv_put(struct MHD_Connection *c, const char *key, const request *rq,
                         int *status)
{
    pgg_info info;
    pgg_error e;
    PGresult *r;
    char lsn[32];
    const char *hdrs[3];

    if (rq->too_big) {
        *status = 413;
        return reply(c, 413, "text/plain", "body too large\n", 15, NULL);
    }
    if (memchr(rq->body ? rq->body : "", '\0', rq->len)) {
        *status = 400; /* a text parameter ends at the first NUL */
        return reply(c, 400, "text/plain", "binary body\n", 12, NULL);
    }
    r = call(PGG_WRITE,
             "INSERT INTO pgguard_http_kv (k, v) VALUES ($1, $2) "
             "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, updated_at = now()",
             2, key, rq->body ? rq->body : "", PGG_CALL_WANT_LSN, 0, &info, &e);
    if (!r)
        return reply_error(c, &e, status);
    PQclear(r);
    *status = 204;
    return reply(c, 204, NULL, "", 0, lsn_header(&info, lsn, hdrs));
}

static mhd_result kv_delete(struct MHD_Connection *c, const char *key, int *status)
{
    pgg_info info;
    pgg_error e;
    char lsn[32];
    const char *hdrs[3];
    PGresult *r = call(PGG_WRITE, "DELETE FROM pgguard_http_kv WHERE k = $1", 1, key, NULL,
                       PGG_CALL_WANT_LSN, 0, &info, &e);
    if (!r)
        return reply_error(c, &e, status);
    *status = strcmp(PQcmdTuples(r), "0") == 0 ? 404 : 204;
    PQclear(r);
    return reply(c, *status, "text/plain", *status == 404 ? "not found\n" : "",
                 *status == 404 ? 10 : 0, lsn_header(&info, lsn, hdrs));
}

/* ---------------------------------------------------------------- metrics */

typedef struct text {
    char *buf;
    size_t len, cap;
    bool failed;
} text;

static void add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add(text *t, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        size_t room = t->cap - t->len;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if ((size_t)n < room) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->failed = true;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

static void add_histogram(text *t, const char *name, const char *labels, histogram *h)
{
    for (size_t i = 0; i < NBOUNDS; i++)
        add(t, "%s_bucket{%s,le=\"%g\"} %" PRIu64 "\n", name, labels, bounds_s[i],
            (uint64_t)atomic_load(&h->le[i]));
    uint64_t total = atomic_load(&h->le[NBOUNDS]); /* last: see observe() */
    add(t, "%s_bucket{%s,le=\"+Inf\"} %" PRIu64 "\n", name, labels, total);
    add(t, "%s_sum{%s} %.6f\n", name, labels, (double)atomic_load(&h->sum_us) / 1e6);
    add(t, "%s_count{%s} %" PRIu64 "\n", name, labels, total);
}

/* This service's own series, after the pool's. */
static void own_metrics(text *t)
{
    char labels[128];

    add(t, "# HELP http_requests_total HTTP requests answered, by route, method and status.\n"
           "# TYPE http_requests_total counter\n");
    for (int r = 0; r < R__COUNT; r++)
        for (int m = 0; m < M__COUNT; m++)
            for (size_t k = 0; k < NCODES; k++) {
                uint64_t n = atomic_load(&http_count[r][m][k]);
                if (n) /* only the combinations that happened */
                    add(t, "http_requests_total{route=\"%s\",method=\"%s\",code=\"%d\"} %" PRIu64
                           "\n",
                        route_names[r], method_names[m], codes[k], n);
            }
    add(t, "# HELP http_request_duration_seconds Time to answer a request, by route and method.\n"
           "# TYPE http_request_duration_seconds histogram\n");
    for (int r = 0; r < R__COUNT; r++)
        for (int m = 0; m < M__COUNT; m++) {
            if (!atomic_load(&http_hist[r][m].le[NBOUNDS]))
                continue;
            snprintf(labels, sizeof labels, "route=\"%s\",method=\"%s\"", route_names[r],
                     method_names[m]);
            add_histogram(t, "http_request_duration_seconds", labels, &http_hist[r][m]);
        }
    add(t, "# HELP pgguard_call_duration_seconds Time spent in pgguard calls (pgg_info.elapsed_us), "
           "by intent and outcome.\n"
           "# TYPE pgguard_call_duration_seconds histogram\n");
    for (int i = 0; i < 3; i++)
        for (int o = 0; o < C__COUNT; o++) {
            snprintf(labels, sizeof labels, "intent=\"%s\",outcome=\"%s\"", intent_names[i],
                     outcome_names[o]);
            add_histogram(t, "pgguard_call_duration_seconds", labels, &call_hist[i][o]);
        }
}

static mhd_result metrics(struct MHD_Connection *c, int *status)
{
    text t = {NULL, 0, 0, false};
    size_t need = 0;

    /* Ask the size, then leave room: counters grow between two calls. */
    pgg_pool_metrics(pool, NULL, 0, &need);
    for (int tries = 0; tries < 4; tries++) {
        t.cap = need + 1024 + t.cap;
        free(t.buf);
        t.buf = malloc(t.cap);
        if (!t.buf)
            break;
        if (pgg_pool_metrics(pool, t.buf, t.cap, &need) == PGG_OK) {
            t.len = need - 1;
            break;
        }
    }
    if (!t.buf || t.len == 0) {
        free(t.buf);
        *status = 500;
        return reply(c, 500, "text/plain", "metrics unavailable\n", 20, NULL);
    }
    own_metrics(&t);
    if (t.failed) {
        free(t.buf);
        *status = 500;
        return reply(c, 500, "text/plain", "metrics unavailable\n", 20, NULL);
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(t.len, t.buf, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(t.buf);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8");
    mhd_result rc = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    *status = 200;
    return rc;
}

/* ---------------------------------------------------------------- routing */

static mhd_result handle(void *cls, struct MHD_Connection *c, const char *url,
                         const char *method, const char *version, const char *upload,
                         size_t *upload_size, void **con_cls)
{
    request *rq = *con_cls;
    enum method m = method_of(method);
    enum route route = R_OTHER;
    int status = 500;
    mhd_result rc;

    (void)cls;
    (void)version;
    /* libmicrohttpd calls once at the headers, once per body chunk, and
     * once at the end: only the last call answers. */
    if (!rq) {
        rq = calloc(1, sizeof *rq);
        if (!rq)
            return MHD_NO;
        clock_gettime(CLOCK_MONOTONIC, &rq->start);
        *con_cls = rq;
        return MHD_YES;
    }
    if (*upload_size) {
        if (rq->len + *upload_size > MAX_BODY) {
            rq->too_big = true;
        } else {
            char *b = realloc(rq->body, rq->len + *upload_size + 1);
            if (!b)
                return MHD_NO;
            memcpy(b + rq->len, upload, *upload_size);
            rq->body = b;
            rq->len += *upload_size;
            rq->body[rq->len] = '\0';
        }
        *upload_size = 0;
        return MHD_YES;
    }

    if (strncmp(url, "/kv/", 4) == 0) {
        const char *key = url + 4;
        route = R_KV;
        if (!*key || strlen(key) > MAX_KEY) {
            status = 400;
            rc = reply(c, 400, "text/plain", "bad key\n", 8, NULL);
        } else if (m == M_GET) {
            rc = kv_get(c, key, &status);
        } else if (m == M_PUT) {
            rc = kv_put(c, key, rq, &status);
        } else if (m == M_DELETE) {
            rc = kv_delete(c, key, &status);
        } else {
            const char *allow[] = {MHD_HTTP_HEADER_ALLOW, "GET, PUT, DELETE", NULL};
            status = 405;
            rc = reply(c, 405, "text/plain", "method not allowed\n", 19, allow);
        }
    } else if (strcmp(url, "/metrics") == 0 && m == M_GET) {
        route = R_METRICS;
        rc = metrics(c, &status);
    } else if (strcmp(url, "/healthz") == 0 && m == M_GET) {
        route = R_HEALTHZ;
        status = 200;
        rc = reply(c, 200, "text/plain", "ok\n", 3, NULL);
    } else {
        status = 404;
        rc = reply(c, 404, "text/plain", "not found\n", 10, NULL);
    }
    count_response(route, m, status, rq);
    return rc;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode why)
{
    request *rq = *con_cls;
    (void)cls;
    (void)c;
    (void)why;
    if (rq) {
        free(rq->body);
        free(rq);
        *con_cls = NULL;
    }
}

/* ------------------------------------------------------------------ setup */

static pgg_pool *open_pool(const char *servers)
{
    const char *settings = getenv("PGGUARD_SETTINGS");
    pgg_config *cfg = pgg_config_new();
    pgg_pool *p = NULL;
    pgg_error e;

    if (!cfg) {
        fprintf(stderr, "http_backend: out of memory\n");
        return NULL;
    }
    if (pgg_config_set_servers(cfg, servers, &e) != PGG_OK ||
        pgg_config_parse(cfg, default_settings, &e) != PGG_OK ||
        (settings && pgg_config_parse(cfg, settings, &e) != PGG_OK)) {
        fprintf(stderr, "http_backend: configuration: %s: %s\n", pgg_err_name(e.code),
                e.message);
        goto out;
    }
    p = pgg_pool_new(cfg, &e);
    if (!p)
        fprintf(stderr, "http_backend: %s: %s\n", pgg_err_name(e.code), e.message);
out:
    pgg_config_free(cfg);
    return p;
}

/* The table, created by the first instance that starts while a primary
 * is up; later starts find it. */
static void create_table(void)
{
    pgg_call opts = {.timeout_ms = 10000};
    pgg_error e;
    PGresult *r = pgg_exec(pool, PGG_WRITE,
                           "CREATE TABLE IF NOT EXISTS pgguard_http_kv ("
                           " k text PRIMARY KEY, v text NOT NULL,"
                           " updated_at timestamptz NOT NULL DEFAULT now())",
                           &opts, NULL, &e);
    if (!r || PQresultStatus(r) != PGRES_COMMAND_OK)
        fprintf(stderr, "http_backend: warning: creating pgguard_http_kv: %s: %s\n",
                pgg_err_name(e.code), e.message);
    PQclear(r);
}

static void usage(void)
{
    fprintf(stderr, "usage: PGGUARD_SERVERS=CONNINFO http_backend [--port N] [--listen ADDR]\n");
}

int main(int argc, char **argv)
{
    const char *servers = getenv("PGGUARD_SERVERS");
    const char *listen = "127.0.0.1";
    int port = 8080, sig;
    struct sockaddr_in addr;
    struct MHD_Daemon *d;
    sigset_t stop;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
            listen = argv[++i];
        else {
            usage();
            return 2;
        }
    }
    if (!servers || !*servers || port < 0 || port > 65535) {
        usage();
        return 2;
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, listen, &addr.sin_addr) != 1) {
        fprintf(stderr, "http_backend: --listen wants an IPv4 address\n");
        return 2;
    }

    /* Blocked here, so in every thread started from now on: sigwait()
     * below is the only place they are received. */
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client that hangs up is not our death */

    pool = open_pool(servers);
    if (!pool)
        return 1;
    create_table();

    d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                             MHD_USE_ERROR_LOG,
                         (uint16_t)port, NULL, NULL, handle, NULL,
                         MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                         MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
                         MHD_OPTION_CONNECTION_LIMIT, (unsigned)512, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "http_backend: cannot listen on %s:%d\n", listen, port);
        pgg_pool_free(pool);
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("http_backend: listening on http://%s:%u/\n", listen,
           info ? (unsigned)info->port : (unsigned)port);
    fflush(stdout);

    sigwait(&stop, &sig);
    fprintf(stderr, "http_backend: %s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    /* Stops accepting, waits for the connection threads, so that no call
     * is in flight when the pool goes. */
    MHD_stop_daemon(d);
    pgg_pool_free(pool);
    return 0;
}
