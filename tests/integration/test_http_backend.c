/*
 * examples/http_backend as its users run it: the built binary, started
 * against a harness cluster, driven with real HTTP requests over sockets
 * while faults hit the servers.  Checks status codes, headers, bodies and
 * the /metrics text, then a clean exit on SIGTERM.
 *
 * The binary's path comes from PGGUARD_HTTP_BACKEND (set by meson); the
 * test skips when the examples were not built.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pool_util.h"
#include "prom_text.h"

/* Fast breakers, so that each fault shows within a second or two. */
#define BACKEND_SETTINGS                                                      \
    "health_interval_ms=100 connect_timeout_ms=500 "                          \
    "breaker.consecutive_failures=3 breaker.open_ms=1000 "                    \
    "breaker.open_max_ms=2000 breaker.open_jitter=0 "                         \
    "breaker.half_open_probes=1 breaker.half_open_successes=1 "               \
    "cache.enabled=true cache.max_age_ms=60000 cancel_timeout_ms=500"

typedef struct backend {
    pid_t pid;
    int port;
} backend;

/* Which build of the service start_backend runs: the variable holding its
 * path (examples/async_http_backend is the same service on one event-loop
 * thread). */
static const char *backend_env = "PGGUARD_HTTP_BACKEND";

/* Start the service on a free port; returns once it listens. */
static backend start_backend(pgh_cluster *c, const char *extra_settings)
{
    const char *exe = getenv(backend_env);
    char settings[1024], line[256];
    int out[2];
    backend b = {0, 0};

    if (!exe || access(exe, X_OK) != 0)
        pgh_skip("examples/http_backend is not built (-Dexamples=true and libmicrohttpd-dev)");
    char *servers = pgh_cluster_conninfo(c);
    cr_assert_not_null(servers);
    snprintf(settings, sizeof settings, "%s %s", BACKEND_SETTINGS,
             extra_settings ? extra_settings : "");
    cr_assert_eq(pipe(out), 0);
    b.pid = fork();
    cr_assert_geq(b.pid, 0);
    if (b.pid == 0) {
        /* A failed assertion ends the test process: take the service
         * down with it rather than leave it listening. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        dup2(out[1], STDOUT_FILENO);
        close(out[0]);
        close(out[1]);
        setenv("PGGUARD_SERVERS", servers, 1);
        setenv("PGGUARD_SETTINGS", settings, 1);
        execl(exe, exe, "--port", "0", (char *)NULL);
        _exit(127);
    }
    free(servers);
    close(out[1]);

    /* "http_backend: listening on http://127.0.0.1:PORT/" */
    size_t n = 0;
    double end = pgh_now_ms() + 30000;
    while (n < sizeof line - 1 && pgh_now_ms() < end) {
        struct pollfd pfd = {out[0], POLLIN, 0};
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        ssize_t k = read(out[0], line + n, 1);
        if (k <= 0)
            break;
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    close(out[0]);
    const char *p = strstr(line, "listening on http://127.0.0.1:");
    cr_assert_not_null(p, "http_backend did not start: \"%s\"", line);
    b.port = atoi(p + strlen("listening on http://127.0.0.1:"));
    cr_assert_gt(b.port, 0);
    return b;
}

/* SIGTERM; the service must exit 0 (it stops serving, then frees the pool:
 * under ASan that exit status includes the leak check). */
static void stop_backend(backend *b)
{
    int st = 0;
    cr_assert_eq(kill(b->pid, SIGTERM), 0);
    double end = pgh_now_ms() + 20000;
    pid_t w;
    while ((w = waitpid(b->pid, &st, WNOHANG)) == 0 && pgh_now_ms() < end)
        sleep_ms(20);
    if (w == 0) {
        kill(b->pid, SIGKILL);
        waitpid(b->pid, &st, 0);
        cr_assert_fail("http_backend did not stop within 20 s of SIGTERM");
    }
    cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "http_backend exited with status %d",
              WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
}

/* ------------------------------------------------------------ a client */

typedef struct response {
    int status;
    char head[8192]; /* status line and headers */
    char *body;      /* NUL-terminated */
    size_t body_len;
    double ms;       /* request to last byte */
} response;

/* One HTTP/1.1 request on its own connection; the status is 0 when the
 * exchange failed or took longer than timeout_ms. */
/* extra: request header lines, each ending in \r\n, or NULL. */
static response http_h(int port, const char *method, const char *path, const char *extra,
                       const char *body, int timeout_ms)
{
    response r;
    char req[1024];
    struct sockaddr_in a;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    double t0 = pgh_now_ms(), end = t0 + timeout_ms;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    memset(&r, 0, sizeof r);
    cr_assert_geq(fd, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return r;
    }
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     "%sContent-Length: %zu\r\n\r\n%s",
                     method, path, extra ? extra : "", body ? strlen(body) : 0,
                     body ? body : "");
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return r;
    }
    for (;;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int wait = (int)(end - pgh_now_ms());
        if (wait <= 0 || poll(&pfd, 1, wait) <= 0)
            break;
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 16384;
            buf = realloc(buf, cap);
            cr_assert_not_null(buf);
        }
        ssize_t k = read(fd, buf + len, cap - len - 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            r.ms = pgh_now_ms() - t0;
            buf[len] = '\0';
            char *sep = strstr(buf, "\r\n\r\n");
            if (sep && sscanf(buf, "HTTP/1.%*d %d", &r.status) == 1) {
                size_t hl = (size_t)(sep - buf);
                snprintf(r.head, sizeof r.head, "%.*s", (int)hl, buf);
                r.body_len = len - hl - 4;
                r.body = strdup(sep + 4);
            }
            break;
        }
        len += (size_t)k;
    }
    free(buf);
    close(fd);
    if (!r.body)
        r.body = strdup("");
    return r;
}

static response http(int port, const char *method, const char *path, const char *body,
                     int timeout_ms)
{
    return http_h(port, method, path, NULL, body, timeout_ms);
}

static void response_free(response *r)
{
    free(r->body);
    r->body = NULL;
}

/* A header's value (case-insensitive name) copied into out; false if absent. */
static bool header(const response *r, const char *name, char *out, size_t len)
{
    size_t n = strlen(name);
    for (const char *p = strstr(r->head, "\r\n"); p; p = strstr(p, "\r\n")) {
        p += 2;
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                v++;
            size_t vl = strcspn(v, "\r");
            snprintf(out, len, "%.*s", (int)vl, v);
            return true;
        }
    }
    return false;
}

static bool has_header(const response *r, const char *name)
{
    char v[256];
    return header(r, name, v, sizeof v);
}

static char *get_metrics(int port)
{
    response r = http(port, "GET", "/metrics", NULL, 5000);
    char type[128], why[256];
    cr_assert_eq(r.status, 200, "/metrics: %d", r.status);
    cr_assert(header(&r, "Content-Type", type, sizeof type));
    cr_expect_str_eq(type, "text/plain; version=0.0.4; charset=utf-8");
    cr_expect_eq(prom_check(r.body, why, sizeof why), 0, "/metrics: %s\n%s", why, r.body);
    return r.body; /* the caller frees */
}

static double metric(const char *text, const char *fmt, int port)
{
    char series[512];
    snprintf(series, sizeof series, fmt, port);
    return prom_value(text, series);
}

static void setup_cluster(pgh_cluster *c)
{
    for (int i = 0; i < pgh_cluster_replica_count(c); i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), pgh_cluster_primary(c), 10000),
                     0);
}

/* Wait until every replica has what the primary has, so that a replica
 * read sees the last write. */
static void replay_all(pgh_cluster *c)
{
    setup_cluster(c);
}

/* --------------------------------------------------------------- tests */

Test(http_backend, reads_writes_metrics_and_faults)
{
    pgh_cluster *c = cluster_or_die(2);
    pgh_require_local(c, "stopping servers");
    pgh_require_replicas(c, 2);
    setup_cluster(c);
    int pport = pgh_node_port(pgh_cluster_primary(c));
    backend b = start_backend(c, NULL);
    response r;
    char v[256];

    r = http(b.port, "GET", "/healthz", NULL, 5000);
    cr_expect_eq(r.status, 200);
    response_free(&r);

    /* Writes go to the primary, read-your-writes too. */
    r = http(b.port, "PUT", "/kv/alpha", "one", 5000);
    cr_assert_eq(r.status, 204, "PUT: %d %s", r.status, r.body);
    /* The write's position, for a client whose next read may reach
     * another process. */
    char token[64], hdr[128];
    uint64_t lsn = 0;
    cr_expect(header(&r, "X-Pgguard-Lsn", token, sizeof token), "no X-Pgguard-Lsn on a PUT");
    cr_expect_eq(pgg_lsn_parse(token, &lsn), PGG_OK, "X-Pgguard-Lsn: %s", token);
    cr_expect_neq(lsn, 0);
    response_free(&r);
    snprintf(hdr, sizeof hdr, "X-Pgguard-Min-Lsn: %s\r\n", token);
    r = http_h(b.port, "GET", "/kv/alpha", hdr, NULL, 5000);
    cr_expect_eq(r.status, 200, "GET with the write's position: %d %s", r.status, r.body);
    cr_expect_str_eq(r.body, "one");
    response_free(&r);
    r = http_h(b.port, "GET", "/kv/alpha", "X-Pgguard-Min-Lsn: yesterday\r\n", NULL, 5000);
    cr_expect_eq(r.status, 400, "a malformed position: %d", r.status);
    response_free(&r);
    r = http(b.port, "GET", "/kv/alpha?consistency=primary", NULL, 5000);
    cr_expect_eq(r.status, 200);
    cr_expect_str_eq(r.body, "one");
    cr_expect(header(&r, "X-Pgguard-Served-By", v, sizeof v));
    cr_expect_eq(atoi(strchr(v, ':') ? strchr(v, ':') + 1 : "0"), pport, "served by %s", v);
    cr_expect(!has_header(&r, "X-Pgguard-Stale"));
    response_free(&r);

    /* Plain reads go to a replica, and fill the cache. */
    replay_all(c);
    for (int i = 0; i < 4; i++) {
        r = http(b.port, "GET", "/kv/alpha", NULL, 5000);
        cr_expect_eq(r.status, 200);
        cr_expect_str_eq(r.body, "one");
        cr_expect(header(&r, "X-Pgguard-Served-By", v, sizeof v));
        cr_expect_neq(atoi(strchr(v, ':') ? strchr(v, ':') + 1 : "0"), pport,
                      "a read went to the primary");
        cr_expect(!has_header(&r, "X-Pgguard-Stale"), "a live answer marked stale");
        response_free(&r);
    }
    r = http(b.port, "GET", "/kv/nothing-here", NULL, 5000);
    cr_expect_eq(r.status, 404);
    response_free(&r);
    r = http(b.port, "POST", "/kv/alpha", "x", 5000);
    cr_expect_eq(r.status, 405);
    cr_expect(header(&r, "Allow", v, sizeof v));
    response_free(&r);
    r = http(b.port, "GET", "/nowhere", NULL, 5000);
    cr_expect_eq(r.status, 404);
    response_free(&r);

    char *m = get_metrics(b.port);
    cr_expect_eq(metric(m, "pgguard_hosts", 0), 3);
    cr_expect_eq(metric(m, "pgguard_breaker_state{host=\"127.0.0.1:%d\",state=\"closed\"}", pport),
                 1);
    cr_expect_eq(metric(m, "pgguard_host_role{host=\"127.0.0.1:%d\",role=\"primary\"}", pport), 1);
    cr_expect_geq(metric(m, "pgguard_cache_stores_total", 0), 1);
    cr_expect_eq(metric(m, "http_requests_total{route=\"/kv\",method=\"PUT\",code=\"204\"}", 0),
                 1);
    cr_expect_eq(metric(m, "http_requests_total{route=\"/kv\",method=\"GET\",code=\"404\"}", 0),
                 1);
    cr_expect_eq(
        metric(m, "http_request_duration_seconds_count{route=\"/kv\",method=\"PUT\"}", 0), 1);
    cr_expect_eq(metric(m,
                        "http_request_duration_seconds_bucket{route=\"/kv\",method=\"PUT\","
                        "le=\"+Inf\"}",
                        0),
                 1);
    cr_expect_geq(
        metric(m, "pgguard_call_duration_seconds_count{intent=\"read\",outcome=\"ok\"}", 0), 4);
    cr_expect_null(strstr(m, "password"));
    free(m);

    /* The primary stops: writes fail, then are refused at once with 503
     * and Retry-After; replica reads carry on. */
    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    bool refused = false;
    for (int i = 0; i < 30 && !refused; i++) {
        r = http(b.port, "PUT", "/kv/beta", "two", 10000);
        cr_expect(r.status == 503 || r.status == 504, "PUT with the primary down: %d %s",
                  r.status, r.body);
        if (r.status == 503 && header(&r, "Retry-After", v, sizeof v)) {
            refused = true;
            cr_expect_str_eq(v, "1", "Retry-After is breaker.open_ms in seconds");
            cr_expect(strstr(r.body, "\"PGG_EOPEN\"") || strstr(r.body, "\"PGG_ENOPRIMARY\""),
                      "body: %s", r.body);
            /* At once: well inside the 2 s call deadline (the bound is
             * loose for valgrind, where a request alone takes 200 ms). */
            cr_expect_lt(r.ms, 1000.0, "a refusal took %.0f ms", r.ms);
        }
        response_free(&r);
    }
    cr_expect(refused, "no 503 with Retry-After after 30 writes to a stopped primary");
    r = http(b.port, "GET", "/kv/alpha", NULL, 5000);
    cr_expect_eq(r.status, 200, "replica read with the primary down: %d %s", r.status, r.body);
    cr_expect(!has_header(&r, "X-Pgguard-Stale"));
    response_free(&r);
    m = get_metrics(b.port);
    cr_expect_eq(metric(m, "pgguard_breaker_state{host=\"127.0.0.1:%d\",state=\"closed\"}", pport),
                 0);
    cr_expect_gt(metric(m, "pgguard_host_failures_total{host=\"127.0.0.1:%d\",class=\"connection\"}",
                        pport),
                 0);
    cr_expect_geq(metric(m, "http_requests_total{route=\"/kv\",method=\"PUT\",code=\"503\"}", 0),
                  1);
    free(m);

    /* Every server stops: a cached read is answered stale and marked so;
     * what was never cached, and read-your-writes, get 503 or 504. */
    cr_assert_eq(pgh_node_stop(pgh_cluster_replica(c, 0), PGH_STOP_IMMEDIATE), 0);
    cr_assert_eq(pgh_node_stop(pgh_cluster_replica(c, 1), PGH_STOP_IMMEDIATE), 0);
    for (int i = 0; i < 5; i++) {
        r = http(b.port, "GET", "/kv/alpha", NULL, 10000);
        cr_expect_eq(r.status, 200, "cached read with every server down: %d %s", r.status, r.body);
        cr_expect_str_eq(r.body, "one");
        cr_expect(header(&r, "X-Pgguard-Stale", v, sizeof v), "a stale answer not marked");
        cr_expect_str_eq(v, "true");
        cr_expect(header(&r, "Age", v, sizeof v), "no Age header on a stale answer");
        cr_expect(v[0] >= '0' && v[0] <= '9' && atoi(v) < 60, "Age: %s", v);
        cr_expect(header(&r, "X-Pgguard-Stale-Cause", v, sizeof v));
        cr_expect(strncmp(v, "PGG_E", 5) == 0, "cause: %s", v);
        response_free(&r);
    }
    r = http(b.port, "GET", "/kv/never-cached", NULL, 10000);
    cr_expect(r.status == 503 || r.status == 504, "uncached read, servers down: %d", r.status);
    response_free(&r);
    r = http(b.port, "GET", "/kv/alpha?consistency=primary", NULL, 10000);
    cr_expect(r.status == 503 || r.status == 504, "primary read, servers down: %d", r.status);
    cr_expect(!has_header(&r, "X-Pgguard-Stale"), "read-your-writes answered from the cache");
    response_free(&r);
    m = get_metrics(b.port);
    cr_expect_geq(metric(m, "pgguard_cache_fallbacks_total", 0), 5);
    cr_expect_geq(
        metric(m, "pgguard_call_duration_seconds_count{intent=\"read\",outcome=\"stale\"}", 0), 5);
    free(m);

    stop_backend(&b);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "the test leaked");
}

/* A request that holds the only bulkhead slot on a hung replica. */
static void *slow_get(void *arg)
{
    int port = *(int *)arg;
    response r = http(port, "GET", "/kv/gamma?consistency=primary", NULL, 15000);
    response_free(&r);
    return NULL;
}

Test(http_backend, full_bulkhead_is_503_at_once)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a hang (SIGSTOP)");
    backend b = start_backend(c, "bulkhead.max_concurrent=1 bulkhead.max_wait_ms=0");
    response r;
    char v[64];
    pthread_t t;

    r = http(b.port, "PUT", "/kv/gamma", "three", 5000);
    cr_assert_eq(r.status, 204, "PUT: %d %s", r.status, r.body);
    response_free(&r);

    /* The primary hangs: the next read holds the slot until its deadline
     * (2 s in the example), and every other request is refused at once. */
    cr_assert_eq(pgh_node_hang(pgh_cluster_primary(c)), 0);
    pthread_create(&t, NULL, slow_get, &b.port);
    bool held = false;
    for (double end = pgh_now_ms() + 5000; !held && pgh_now_ms() < end;) {
        char *m = get_metrics(b.port);
        held = metric(m, "pgguard_bulkhead_in_use", 0) == 1;
        free(m);
        if (!held)
            sleep_ms(20);
    }
    cr_expect(held, "the slow read never took the bulkhead's slot");
    for (int i = 0; i < 5; i++) {
        const char *method = i % 2 ? "PUT" : "GET";
        r = http(b.port, method, "/kv/gamma", i % 2 ? "x" : NULL, 5000);
        cr_expect_eq(r.status, 503, "%s with the bulkhead full: %d %s", method, r.status, r.body);
        cr_expect(header(&r, "Retry-After", v, sizeof v), "no Retry-After");
        cr_expect_not_null(strstr(r.body, "\"PGG_EBULKHEAD\""), "body: %s", r.body);
        /* The slot's holder keeps it 2 s: a request that waited for it
         * would take over 1.5 s (the bound is loose for valgrind). */
        cr_expect_lt(r.ms, 1000.0, "a bulkhead refusal took %.0f ms", r.ms);
        response_free(&r);
    }
    pthread_join(t, NULL);
    cr_assert_eq(pgh_node_resume(pgh_cluster_primary(c)), 0);

    char *m = get_metrics(b.port);
    cr_expect_geq(metric(m, "pgguard_bulkhead_rejections_total", 0), 5);
    cr_expect_eq(metric(m, "pgguard_bulkhead_capacity", 0), 1);
    cr_expect_eq(metric(m, "pgguard_bulkhead_in_use", 0), 0);
    free(m);
    stop_backend(&b);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "the test leaked");
}

/* The first 503 with a Retry-After for a PUT, or 0 when none came. */
static int refused_retry_after(int port)
{
    char v[64];

    for (int i = 0; i < 40; i++) {
        response r = http(port, "PUT", "/kv/delta", "four", 5000);
        int s = 0;

        if (r.status == 503 && header(&r, "Retry-After", v, sizeof v) &&
            strstr(r.body, "\"PGG_EOPEN\""))
            s = atoi(v);
        response_free(&r);
        if (s > 0)
            return s;
        sleep_ms(20);
    }
    return 0;
}

/*
 * Retry-After tells the time the breaker actually has left open, not its
 * configured open time: asked again 3 s later, it is smaller.
 */
Test(http_backend, retry_after_is_the_time_left_open)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a stop");
    backend b = start_backend(c, "breaker.open_ms=10000 breaker.open_max_ms=10000");
    int first, later;

    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    first = refused_retry_after(b.port);
    cr_assert_gt(first, 0, "no 503 with Retry-After for a PUT with the primary down");
    cr_expect_leq(first, 10, "Retry-After %d s, the open time is 10 s", first);
    sleep_ms(3000);
    later = refused_retry_after(b.port);
    cr_expect_gt(later, 0, "no Retry-After 3 s later");
    cr_expect_leq(later, first - 2, "Retry-After %d s, then %d s 3 s later", first, later);
    stop_backend(&b);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "the test leaked");
}

static void *get_primary(void *arg)
{
    int port = *(int *)arg;
    response r = http(port, "GET", "/kv/alpha?consistency=primary", NULL, 15000);
    int *status = malloc(sizeof *status);

    *status = r.status;
    response_free(&r);
    return status;
}

/* The event-loop build: one thread serves every request, so a request
 * that waits on a hung primary must not hold up the others. */
Test(http_backend, the_async_build_serves_and_stays_responsive_while_the_primary_hangs)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a hang (SIGSTOP)");
    backend_env = "PGGUARD_ASYNC_HTTP_BACKEND";
    /* Without the pool-wide mode: the health thread's reading of the
     * primary's position would make every cached answer too old. */
    backend b = start_backend(c, "read_your_writes=off");
    response r;
    pthread_t t;
    void *st;
    char v[64];

    /* First: a write after the reads below would raise the position they
     * need above what the cache holds for them (read your writes). */
    r = http(b.port, "DELETE", "/kv/nothing", NULL, 5000);
    cr_expect_eq(r.status, 404, "DELETE of a missing key: %d %s", r.status, r.body);
    response_free(&r);
    r = http(b.port, "PUT", "/kv/alpha", "one", 5000);
    cr_assert_eq(r.status, 204, "PUT: %d %s", r.status, r.body);
    cr_expect(header(&r, "X-Pgguard-Lsn", v, sizeof v), "no X-Pgguard-Lsn on a write");
    response_free(&r);
    r = http(b.port, "GET", "/kv/alpha", NULL, 5000);
    cr_assert_eq(r.status, 200, "GET: %d %s", r.status, r.body);
    cr_expect_str_eq(r.body, "one");
    response_free(&r);
    r = http(b.port, "GET", "/kv/alpha?consistency=primary", NULL, 5000);
    cr_assert_eq(r.status, 200, "GET: %d %s", r.status, r.body);
    cr_expect_str_eq(r.body, "one");
    response_free(&r);

    cr_assert_eq(pgh_node_hang(pgh_cluster_primary(c)), 0);
    pthread_create(&t, NULL, get_primary, &b.port);
    sleep_ms(200); /* the read is on the hung server now */
    for (int i = 0; i < 5; i++) {
        r = http(b.port, "GET", "/healthz", NULL, 5000);
        cr_expect_eq(r.status, 200);
        /* The read in flight holds its call 2 s: a loop it blocked would
         * answer after it (the bound of full_bulkhead_is_503_at_once). */
        cr_expect_lt(r.ms, 1000.0, "/healthz took %.0f ms", r.ms);
        response_free(&r);
    }
    pthread_join(t, &st);
    /* The cache answers for the hung primary: marked stale. */
    cr_expect_eq(*(int *)st, 200, "the read on the hung primary: %d", *(int *)st);
    free(st);
    r = http(b.port, "GET", "/kv/alpha?consistency=primary", NULL, 15000);
    cr_expect_eq(r.status, 200, "a stale read: %d %s", r.status, r.body);
    cr_expect(header(&r, "X-Pgguard-Stale", v, sizeof v), "no X-Pgguard-Stale");
    response_free(&r);
    r = http(b.port, "PUT", "/kv/beta", "two", 15000);
    cr_expect(r.status == 504 || r.status == 503, "PUT on a hung primary: %d %s", r.status,
              r.body);
    response_free(&r);
    cr_assert_eq(pgh_node_resume(pgh_cluster_primary(c)), 0);
    stop_backend(&b);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "the test leaked");
}
