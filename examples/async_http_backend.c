/*
 * async_http_backend: examples/http_backend's key/value service on one
 * libevent thread (evhttp), every database call through pgguard's
 * asynchronous front (pgguard_async.h): no thread per request, and no
 * request ever blocks the others.
 *
 *   PGGUARD_SERVERS="hostaddr=10.0.0.1,10.0.0.2 user=app dbname=app" \
 *       async_http_backend [--port N] [--listen ADDR]
 *
 *   PUT    /kv/KEY     store the request body          204
 *   GET    /kv/KEY     the value, from a replica       200, 404
 *   GET    /kv/KEY?consistency=primary                 read from the primary
 *   DELETE /kv/KEY                                      204, 404
 *   GET    /metrics    Prometheus text: the pool's stats
 *   GET    /healthz    200 while the process runs
 *
 * What the guard changes for the client, as in http_backend: 503 with
 * Retry-After when pgguard refuses at once (a full bulkhead, every breaker
 * open, no primary), 504 at a deadline, and a read no server could answer
 * served from the fallback cache, marked "X-Pgguard-Stale: true" and "Age";
 * read your writes (read_your_writes=pool): every read sees every write
 * this process acknowledged before it; a PUT or DELETE answers
 * "X-Pgguard-Lsn: POSITION", and a GET carrying it back as
 * "X-Pgguard-Min-Lsn" never sees older data (400 if malformed).
 *
 * Give the pool numeric addresses (hostaddr= or host=127.0.0.1): libpq
 * resolves a host name inside the connect call, which would block the loop.
 *
 * Options: --port N (default 8080; 0 picks a free port), --listen ADDR
 * (default 127.0.0.1).  PGGUARD_SETTINGS adds guard settings.  The bound
 * address is printed as "listening on http://ADDR:PORT/".  SIGINT or
 * SIGTERM stops it cleanly.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgguard.h"
#include "pgguard/adapters/libevent.h"
#include "pgguard_async.h"

#define MAX_BODY (64 * 1024)
#define MAX_KEY 256
#define CALL_TIMEOUT_MS 2000

static const char default_settings[] =
    "cache.enabled=true cache.max_age_ms=300000 read_your_writes=pool";

static pgg_pool *pool;
static pgg_async *ac;

enum op { OP_GET, OP_PUT, OP_DELETE };

/* One request waiting for its database call. */
typedef struct pending {
    struct evhttp_request *req;
    enum op op;
} pending;

static void reply(struct evhttp_request *req, int status, const char *type,
                  const char *body, size_t len)
{
    struct evbuffer *b = evbuffer_new();

    if (type)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
    if (b && len)
        evbuffer_add(b, body, len);
    evhttp_send_reply(req, status, NULL, b);
    if (b)
        evbuffer_free(b);
}

/* Retry-After: with every breaker open, the soonest one lets a probe
 * through; otherwise a second.  Whole seconds, at least one. */
static int retry_after(const pgg_error *e)
{
    long best = -1;

    if (e->code != PGG_EOPEN)
        return 1;
    for (int i = 0; i < pgg_pool_host_count(pool); i++) {
        pgg_host_stats hs;

        if (pgg_pool_host_stats(pool, i, &hs) != PGG_OK || hs.state != PGG_BREAKER_OPEN)
            continue;
        if (best < 0 || hs.open_remaining_ms < best)
            best = (long)hs.open_remaining_ms;
    }
    return best > 0 ? (int)((best + 999) / 1000) : 1;
}

/* The HTTP answer to a failed call (http_backend's mapping). */
static void reply_error(struct evhttp_request *req, const pgg_error *e)
{
    char body[1400], retry[16];
    int status;

    switch (e->code) {
    case PGG_EBULKHEAD:
    case PGG_EOPEN:
    case PGG_ENOPRIMARY:
        status = 503;
        snprintf(retry, sizeof retry, "%d", retry_after(e));
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", retry);
        break;
    case PGG_ETIMEDOUT:
        status = 504;
        break;
    case PGG_ECONNECT:
    case PGG_EUNAVAILABLE:
    case PGG_EWRONGROLE:
        status = 503;
        break;
    case PGG_ESERVER:
        status = strncmp(e->sqlstate, "22", 2) == 0   ? 400
                 : strncmp(e->sqlstate, "23", 2) == 0 ? 409
                                                      : 500;
        break;
    default:
        status = 500;
    }
    /* pgguard's messages never hold a password; quotes become apostrophes
     * to keep the JSON simple. */
    {
        int n = snprintf(body, sizeof body,
                         "{\"error\":\"%s\",\"sqlstate\":\"%s\",\"message\":\"",
                         pgg_err_name(e->code), e->sqlstate);

        for (const char *m = e->message; *m && n < (int)sizeof body - 4; m++)
            body[n++] = *m == '"' || *m == '\\' ? '\'' : *m;
        n += snprintf(body + n, sizeof body - (size_t)n, "\"}\n");
        reply(req, status, "application/json", body, strlen(body));
    }
}

/* The database answered (or pgguard refused): finish the request. */
static void on_done(pgg_async *a, PGresult *res, const pgg_info *info,
                    const pgg_error *err, void *ud)
{
    pending *p = ud;
    struct evhttp_request *req = p->req;

    (void)a;
    if (!res || (PQresultStatus(res) != PGRES_TUPLES_OK &&
                 PQresultStatus(res) != PGRES_COMMAND_OK)) {
        reply_error(req, err);
    } else if (p->op == OP_GET) {
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);

        evhttp_add_header(h, "X-Pgguard-Served-By", info->host);
        if (info->from_cache) {
            char age[32];

            snprintf(age, sizeof age, "%lld", (long long)(info->cache_age_ms / 1000));
            evhttp_add_header(h, "X-Pgguard-Stale", "true");
            evhttp_add_header(h, "Age", age);
            evhttp_add_header(h, "X-Pgguard-Stale-Cause", pgg_err_name(info->cause.code));
        }
        if (PQntuples(res) == 0)
            reply(req, 404, "text/plain", "not found\n", 10);
        else
            reply(req, 200, "text/plain; charset=utf-8", PQgetvalue(res, 0, 0),
                  (size_t)PQgetlength(res, 0, 0));
    } else {
        char lsn[32];

        if (info->lsn && pgg_lsn_format(info->lsn, lsn, sizeof lsn) == PGG_OK)
            evhttp_add_header(evhttp_request_get_output_headers(req), "X-Pgguard-Lsn", lsn);
        if (p->op == OP_DELETE && strcmp(PQcmdTuples(res), "0") == 0)
            reply(req, 404, "text/plain", "not found\n", 10);
        else
            reply(req, 204, NULL, "", 0);
    }
    PQclear(res);
    free(p);
}

/* Start the call for a request; a refusal (a full bulkhead) answers now. */
static void start(struct evhttp_request *req, enum op op, pgg_intent intent,
                  const char *sql, int nparams, const char *p1, const char *p2,
                  unsigned flags, uint64_t min_lsn)
{
    const char *vals[] = {p1, p2};
    pgg_call call = {.timeout_ms = CALL_TIMEOUT_MS, .flags = flags, .min_lsn = min_lsn};
    pending *p = malloc(sizeof *p);
    pgg_error e;

    if (!p) {
        reply(req, 500, "text/plain", "out of memory\n", 14);
        return;
    }
    p->req = req;
    p->op = op;
    if (pgg_async_exec_params(ac, intent, sql, nparams, NULL, vals, NULL, NULL, &call,
                              on_done, p, NULL, &e) != PGG_OK) {
        free(p);
        reply_error(req, &e);
    }
}

static void kv(struct evhttp_request *req, const char *key)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);

    if (m == EVHTTP_REQ_GET) {
        const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
        const char *token = evhttp_find_header(evhttp_request_get_input_headers(req),
                                               "X-Pgguard-Min-Lsn");
        bool primary = q && strstr(q, "consistency=primary");
        uint64_t min_lsn = 0;

        if (token && pgg_lsn_parse(token, &min_lsn) != PGG_OK) {
            reply(req, 400, "text/plain", "bad X-Pgguard-Min-Lsn\n", 22);
            return;
        }
        start(req, OP_GET, primary ? PGG_READ_PRIMARY : PGG_READ,
              "SELECT v FROM pgguard_http_kv WHERE k = $1", 1, key, NULL,
              PGG_CALL_CACHEABLE, min_lsn);
    } else if (m == EVHTTP_REQ_PUT) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        char *body;

        if (len > MAX_BODY) {
            reply(req, 413, "text/plain", "body too large\n", 15);
            return;
        }
        body = malloc(len + 1);
        if (!body) {
            reply(req, 500, "text/plain", "out of memory\n", 14);
            return;
        }
        evbuffer_copyout(in, body, len);
        body[len] = '\0';
        if (memchr(body, '\0', len)) {
            free(body);
            reply(req, 400, "text/plain", "binary body\n", 12);
            return;
        }
        /* The call copies its parameters: body may go now. */
        start(req, OP_PUT, PGG_WRITE,
              "INSERT INTO pgguard_http_kv (k, v) VALUES ($1, $2) "
              "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, updated_at = now()",
              2, key, body, PGG_CALL_WANT_LSN, 0);
        free(body);
    } else if (m == EVHTTP_REQ_DELETE) {
        start(req, OP_DELETE, PGG_WRITE, "DELETE FROM pgguard_http_kv WHERE k = $1", 1,
              key, NULL, PGG_CALL_WANT_LSN, 0);
    } else {
        reply(req, 405, "text/plain", "method not allowed\n", 19);
    }
}

static void metrics(struct evhttp_request *req)
{
    size_t need = 0;
    char *buf;

    /* A scrape takes the pool's short stats locks only: no I/O. */
    pgg_pool_metrics(pool, NULL, 0, &need);
    buf = malloc(need + 1);
    if (!buf || pgg_pool_metrics(pool, buf, need + 1, NULL) != PGG_OK) {
        free(buf);
        reply(req, 500, "text/plain", "metrics failed\n", 15);
        return;
    }
    reply(req, 200, "text/plain; version=0.0.4", buf, strlen(buf));
    free(buf);
}

static void route(struct evhttp_request *req, void *arg)
{
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    char *key;

    (void)arg;
    if (!path) {
        reply(req, 404, "text/plain", "not found\n", 10);
    } else if (strncmp(path, "/kv/", 4) == 0) {
        key = evhttp_uridecode(path + 4, 0, NULL);
        if (!key || !*key || strlen(key) > MAX_KEY)
            reply(req, 400, "text/plain", "bad key\n", 8);
        else
            kv(req, key);
        free(key);
    } else if (strcmp(path, "/metrics") == 0) {
        metrics(req);
    } else if (strcmp(path, "/healthz") == 0) {
        reply(req, 200, "text/plain", "ok\n", 3);
    } else {
        reply(req, 404, "text/plain", "not found\n", 10);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopexit(arg, NULL);
}

static pgg_pool *open_pool(const char *servers)
{
    const char *settings = getenv("PGGUARD_SETTINGS");
    pgg_config *cfg = pgg_config_new();
    pgg_pool *p = NULL;
    pgg_error e;

    if (!cfg)
        return NULL;
    if (pgg_config_set_servers(cfg, servers, &e) != PGG_OK ||
        pgg_config_parse(cfg, default_settings, &e) != PGG_OK ||
        (settings && pgg_config_parse(cfg, settings, &e) != PGG_OK))
        fprintf(stderr, "async_http_backend: configuration: %s: %s\n",
                pgg_err_name(e.code), e.message);
    else if (!(p = pgg_pool_new(cfg, &e)))
        fprintf(stderr, "async_http_backend: %s: %s\n", pgg_err_name(e.code), e.message);
    pgg_config_free(cfg);
    return p;
}

int main(int argc, char **argv)
{
    const char *servers = getenv("PGGUARD_SERVERS");
    const char *listen = "127.0.0.1";
    int port = 8080, rc = 1;
    struct event_base *base = NULL;
    struct evhttp *http = NULL;
    struct evhttp_bound_socket *bound;
    struct event *sigint = NULL, *sigterm = NULL;
    pgg_error e;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
            listen = argv[++i];
        else
            servers = NULL;
    }
    if (!servers || !*servers || port < 0 || port > 65535) {
        fprintf(stderr, "usage: PGGUARD_SERVERS=CONNINFO async_http_backend "
                        "[--port N] [--listen ADDR]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    pool = open_pool(servers);
    if (!pool)
        return 1;
    /* Before the loop runs, a blocking call is fine. */
    {
        pgg_call opts = {.timeout_ms = 10000};
        PGresult *r = pgg_exec(pool, PGG_WRITE,
                               "CREATE TABLE IF NOT EXISTS pgguard_http_kv ("
                               " k text PRIMARY KEY, v text NOT NULL,"
                               " updated_at timestamptz NOT NULL DEFAULT now())",
                               &opts, NULL, &e);
        if (!r || PQresultStatus(r) != PGRES_COMMAND_OK)
            fprintf(stderr, "async_http_backend: warning: creating pgguard_http_kv: %s: %s\n",
                    pgg_err_name(e.code), e.message);
        PQclear(r);
    }
    base = event_base_new();
    ac = base ? pgg_async_new(pool, &e) : NULL;
    if (!ac || pgg_async_libevent_attach(ac, base) != PGG_OK) {
        fprintf(stderr, "async_http_backend: loop: %s\n", ac ? "attach failed" : e.message);
        goto out;
    }
    http = evhttp_new(base);
    bound = http ? evhttp_bind_socket_with_handle(http, listen, (unsigned short)port) : NULL;
    if (!bound) {
        fprintf(stderr, "async_http_backend: cannot listen on %s:%d\n", listen, port);
        goto out;
    }
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
    evhttp_set_gencb(http, route, NULL);
    {
        struct sockaddr_storage ss;
        ev_socklen_t sl = sizeof ss;
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

        getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&ss, &sl);
        printf("listening on http://%s:%d/\n", listen, ntohs(sin->sin_port));
        fflush(stdout);
    }
    sigint = evsignal_new(base, SIGINT, on_signal, base);
    sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    event_base_dispatch(base);
    rc = 0;
out:
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    /* Calls still in flight complete first, answering their requests. */
    pgg_async_free(ac);
    if (http)
        evhttp_free(http);
    if (base)
        event_base_free(base);
    pgg_pool_free(pool);
    return rc;
}
