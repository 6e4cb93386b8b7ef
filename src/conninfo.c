#include "conninfo.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netdb.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <libpq-fe.h>

#include "conninfo_scan.h"
#include "error.h"

/*
 * Only for the display name of a host left to libpq's default: the same
 * header libpq was built with says where that default socket lives.
 */
#if defined(__has_include)
#if __has_include(<pg_config_manual.h>)
#include <pg_config_manual.h>
#endif
#endif
#ifndef DEFAULT_PGSOCKET_DIR
#define DEFAULT_PGSOCKET_DIR "/tmp"
#endif
/* libpq's DEF_PGPORT_STR lives in pg_config.h, which drags in far more. */
#define PGG__DEFAULT_PORT "5432"

/* What a secret's value becomes in a redacted conninfo: a plain token, so
 * that the redacted text still parses where the original did. */
#define PGG__MASK "REDACTED"

/* ------------------------------------------------------------ small buffer */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    /* A conninfo is short: a length this large is a caller's bug, and the
     * bound lets the compiler prove the copy below stays in the buffer. */
    if (b->oom || n > (SIZE_MAX >> 2) - b->len) {
        b->oom = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        char *np;

        while (cap < b->len + n + 1)
            cap *= 2;
        np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

/* The finished string (never NULL unless out of memory); the buffer is
 * handed over. */
static char *sb_take(sbuf *b)
{
    if (!b->oom && !b->p)
        sb_put(b, "", 0);
    if (b->oom) {
        free(b->p);
        b->p = NULL;
    }
    return b->p;
}

/* ----------------------------------------------------------------- secrets */

static bool is_secret_keyword(const char *k)
{
    return strcmp(k, "password") == 0 || strcmp(k, "sslpassword") == 0;
}

/*
 * Replace every occurrence of a secret in msg (in place) by "********".
 * Our messages quote no conninfo text: this is a second line of defence
 * for the host names and numbers they do carry.  Very short secrets are
 * left alone: scrubbing every "a" would ruin the message.
 */
static void scrub(char *msg, size_t size, const char *secret)
{
    static const char stars[] = "********";
    size_t slen = strlen(secret);
    char *hit;
    char *from = msg;

    if (slen < 3)
        return;
    while ((hit = strstr(from, secret)) != NULL) {
        size_t tail = strlen(hit + slen);
        size_t slen2 = sizeof stars - 1;
        size_t room = size - (size_t)(hit - msg) - 1;

        /* The stars may be longer than the secret: cut the tail to fit. */
        if (slen2 > room)
            slen2 = room;
        if (slen2 + tail > room)
            tail = room - slen2;
        memmove(hit + slen2, hit + slen, tail);
        memcpy(hit, stars, slen2);
        hit[slen2 + tail] = '\0';
        from = hit + slen2;
    }
}

/* ---------------------------------------------------------------- redaction */

/* Where the secrets were written, in text order. */
typedef struct spans {
    size_t *start, *end;
    size_t n, cap;
} spans;

static int note_secret_span(void *arg, const pgg__ci_value *v)
{
    spans *sp = arg;

    if (!is_secret_keyword(v->keyword) || v->start == v->end)
        return 0;
    if (sp->n == sp->cap) {
        /* No limit: a text may repeat password= any number of times. */
        size_t cap = sp->cap ? sp->cap * 2 : 4;
        size_t *st = realloc(sp->start, cap * sizeof *st);
        size_t *en;

        if (!st)
            return 1;
        sp->start = st;
        en = realloc(sp->end, cap * sizeof *en);
        if (!en)
            return 1;
        sp->end = en;
        sp->cap = cap;
    }
    sp->start[sp->n] = v->start;
    sp->end[sp->n] = v->end;
    sp->n++;
    return 0;
}

/* Where libpq's look-ahead for "user@" stops: the first '@' or '/' after
 * the scheme. */
static size_t uri_lookahead(const char *uri)
{
    const char *p = strstr(uri, "://");

    p = p ? p + 3 : uri;
    return (size_t)(p - uri) + strcspn(p, "@/");
}

/* What a rejected conninfo becomes: libpq rejects this too ("missing =")
 * and it shows nothing of the original. */
static const char rejected[] = "(conninfo rejected by libpq; not shown)";

char *pgg__conninfo_redact(const char *conninfo)
{
    spans sp = {0};
    sbuf b = {0};
    pgg__ci_result res;
    size_t copied = 0, look;
    pgg__ci_fault f;

    if (!conninfo)
        return NULL;
    f = pgg__conninfo_scan(conninfo, note_secret_span, &sp, &res);
    if (f != PGG__CI_OK) {
        free(sp.start);
        free(sp.end);
        /*
         * Where libpq stops, nothing says where the password was meant to
         * be (inside an unclosed bracket, after a mistyped scheme, ...):
         * show none of it.
         */
        return f == PGG__CI_NOMEM ? NULL : strdup(rejected);
    }
    /*
     * libpq looks for a URI's user info up to the first '@' or '/' of the
     * whole text, query included: when that '/' is inside a masked value
     * ("?sslpassword=a/b&user=u@h"), the copy keeps one, or it would read
     * "...u@" as user info.
     */
    look = res.uri ? uri_lookahead(conninfo) : (size_t)-1;
    for (size_t i = 0; i < sp.n; i++) {
        size_t e = sp.end[i];

        sb_put(&b, conninfo + copied, sp.start[i] - copied);
        sb_puts(&b, PGG__MASK);
        if (look >= sp.start[i] && look < e)
            sb_put(&b, conninfo + look, 1);
        /* A quoted value may run straight into the next keyword
         * ("password='x'host=a"): keep them apart. */
        if (!res.uri && conninfo[e] && !isspace((unsigned char)conninfo[e]))
            sb_puts(&b, " ");
        copied = e;
    }
    sb_puts(&b, conninfo + copied);
    free(sp.start);
    free(sp.end);
    return sb_take(&b);
}

/* ------------------------------------------------------------ parse errors */

static const char unsupported_lb[] =
    "load_balance_hosts is not supported: pgguard chooses hosts itself "
    "(see read_policy)";

static const char *part_name(pgg__ci_part part)
{
    switch (part) {
    case PGG__CI_KEYVALUE:
        return "";
    case PGG__CI_USER:
        return " in the user name";
    case PGG__CI_PASSWORD:
        return " in the password";
    case PGG__CI_HOST:
        return " in the host list";
    case PGG__CI_PORT:
        return " in the port list";
    case PGG__CI_DBNAME:
        return " in the database name";
    case PGG__CI_QUERY_KEY:
        return " in a parameter name";
    case PGG__CI_QUERY_VALUE:
        return " in a parameter value";
    }
    return "";
}

/* A keyword that looks like a mistyped URI scheme ("postgress://",
 * "postgresql:/"): libpq read the whole URI as one keyword. */
static const char *scheme_hint(const pgg__ci_result *res)
{
    if (strchr(res->keyword, ':') || strchr(res->keyword, '/'))
        return " (a URI must begin with \"postgresql://\" or \"postgres://\")";
    return "";
}

/*
 * libpq rejected the conninfo.  Its message quotes the text it stopped at
 * (for a URI, the whole URI), password included, so it is never used: the
 * scanner, which reads the text as libpq does, names the problem and its
 * position instead.  No byte of the conninfo is quoted, except a keyword
 * that is one of libpq's own.
 */
static int parse_error(const char *conninfo, pgg_error *err)
{
    pgg__ci_result res;
    char msg[256];
    const char *sugg;
    size_t at;

    switch (pgg__conninfo_scan(conninfo, NULL, NULL, &res)) {
    case PGG__CI_NOMEM:
        return pgg__error_set(err, PGG_ENOMEM, NULL, NULL,
                              "servers: out of memory");
    case PGG__CI_OK:
        /* The scanner and libpq disagree: say only that it was refused. */
        pgg__strlcpy(msg, "libpq rejected it", sizeof msg);
        break;
    case PGG__CI_MISSING_EQUALS:
        at = res.pos + 1;
        if (!res.keyword_cut && pgg__conninfo_is_keyword(res.keyword))
            snprintf(msg, sizeof msg,
                     "missing \"=\" after \"%s\" at position %zu", res.keyword,
                     at);
        else
            snprintf(msg, sizeof msg,
                     "missing \"=\" after the word at position %zu%s", at,
                     scheme_hint(&res));
        break;
    case PGG__CI_UNTERMINATED_QUOTE:
        snprintf(msg, sizeof msg,
                 "unterminated quoted value (the quote at position %zu)",
                 res.pos + 1);
        break;
    case PGG__CI_UNKNOWN_KEYWORD:
        if (!res.keyword_cut && strcmp(res.keyword, "load_balance_hosts") == 0)
            return pgg__error_set(err, PGG_ECONFIG, NULL, NULL, "servers: %s",
                                  unsupported_lb);
        sugg = res.keyword_cut ? NULL : pgg__conninfo_suggest(res.keyword);
        if (sugg)
            snprintf(msg, sizeof msg,
                     "invalid connection option at position %zu%s (did you "
                     "mean \"%s\"?)",
                     res.pos + 1, part_name(res.part), sugg);
        else
            snprintf(msg, sizeof msg,
                     "invalid connection option at position %zu%s%s",
                     res.pos + 1, part_name(res.part), scheme_hint(&res));
        break;
    case PGG__CI_UNCLOSED_BRACKET:
        snprintf(msg, sizeof msg,
                 "no \"]\" closes the \"[\" at position %zu in the host list",
                 res.pos + 1);
        break;
    case PGG__CI_EMPTY_BRACKETS:
        snprintf(msg, sizeof msg,
                 "empty IPv6 address \"[]\" at position %zu in the host list",
                 res.pos + 1);
        break;
    case PGG__CI_AFTER_BRACKET:
        snprintf(msg, sizeof msg,
                 "unexpected character at position %zu after \"]\" "
                 "(expected \":\", \"/\", \"?\" or \",\")",
                 res.pos + 1);
        break;
    case PGG__CI_EXTRA_EQUALS:
        snprintf(msg, sizeof msg,
                 "a second \"=\" at position %zu in a query parameter",
                 res.pos + 1);
        break;
    case PGG__CI_NO_EQUALS:
        snprintf(msg, sizeof msg,
                 "query parameter without \"=\" at position %zu", res.pos + 1);
        break;
    case PGG__CI_BAD_PERCENT:
        snprintf(msg, sizeof msg,
                 "invalid percent-encoding at position %zu%s (\"%%\" must be "
                 "followed by two hex digits)",
                 res.pos + 1, part_name(res.part));
        break;
    case PGG__CI_PERCENT_00:
        snprintf(msg, sizeof msg,
                 "forbidden %%00 at position %zu%s", res.pos + 1,
                 part_name(res.part));
        break;
    }
    return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                          "servers: invalid conninfo: %s", msg);
}

/* ----------------------------------------------------------------- splitting */

static int count_elems(const char *s)
{
    int n = 1;

    for (; *s; s++)
        n += *s == ',';
    return n;
}

/* The i-th element of a comma list (libpq's parse_comma_separated_list: no
 * escapes, empty elements allowed), malloc'd. */
static char *list_elem(const char *s, int i)
{
    const char *end;
    char *out;

    for (; i > 0; i--) {
        s = strchr(s, ',');
        if (!s)
            return NULL;
        s++;
    }
    end = strchr(s, ',');
    if (!end)
        end = s + strlen(s);
    out = malloc((size_t)(end - s) + 1);
    if (out) {
        memcpy(out, s, (size_t)(end - s));
        out[end - s] = '\0';
    }
    return out;
}

/* libpq's parse_int_param for port: optional blanks around digits. */
static bool valid_port(const char *s)
{
    long v = 0;
    int digits = 0;

    while (isspace((unsigned char)*s))
        s++;
    for (; isdigit((unsigned char)*s); s++, digits++) {
        v = v * 10 + (*s - '0');
        if (v > 65535)
            return false;
    }
    while (isspace((unsigned char)*s))
        s++;
    return *s == '\0' && digits > 0 && v >= 1;
}

static bool is_unix_path(const char *h)
{
    /* libpq's is_unixsock_path: an absolute path, or '@' for Linux's
     * abstract namespace. */
    return h[0] == '/' || h[0] == '@';
}

/* An IPv4 or IPv6 address, which libpq connects to without a lookup. */
static bool is_numeric_host(const char *h)
{
    unsigned char addr[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, h, addr) == 1 || inet_pton(AF_INET6, h, addr) == 1;
}

static bool default_is_socket(void)
{
    static const char dir[] = DEFAULT_PGSOCKET_DIR;

    return dir[0] != '\0';
}

static const char *opt_val(const PQconninfoOption *opts, const char *kw)
{
    for (; opts->keyword; opts++) {
        if (strcmp(opts->keyword, kw) == 0)
            return opts->val;
    }
    return NULL;
}

static bool is_slot_keyword(const char *kw)
{
    return strcmp(kw, "host") == 0 || strcmp(kw, "hostaddr") == 0 ||
           strcmp(kw, "port") == 0;
}

static void spec_clear(pgg_host_spec *h)
{
    if (h->keys) {
        for (int i = 0; i < h->nparams; i++)
            free((void *)h->keys[i]);
    }
    if (h->vals) {
        for (int i = 0; i < h->nparams; i++)
            free((void *)h->vals[i]);
    }
    free(h->keys);
    free(h->vals);
    free(h->name);
    memset(h, 0, sizeof *h);
}

void pgg__host_specs_free(pgg_host_spec *specs, int n)
{
    if (!specs)
        return;
    for (int i = 0; i < n; i++)
        spec_clear(&specs[i]);
    free(specs);
}

static bool spec_alloc(pgg_host_spec *h, int cap)
{
    h->keys = calloc((size_t)cap + 1, sizeof *h->keys);
    h->vals = calloc((size_t)cap + 1, sizeof *h->vals);
    return h->keys && h->vals;
}

/* Append a pair (copies both); false when out of memory. */
static bool spec_add(pgg_host_spec *h, const char *key, const char *val)
{
    char *k = strdup(key);
    char *v = strdup(val);

    if (!k || !v) {
        free(k);
        free(v);
        return false;
    }
    h->keys[h->nparams] = k;
    h->vals[h->nparams] = v;
    h->nparams++;
    return true;
}

/* "host:port", "[v6]:port" or "/dir:port". */
static char *display_name(const char *host, const char *hostaddr,
                          const char *port, const char *service)
{
    const char *h;
    const char *p = port && port[0] ? port : PGG__DEFAULT_PORT;
    size_t len;
    char *out;
    bool v6;

    if (host && host[0])
        h = host;
    else if (hostaddr && hostaddr[0])
        h = hostaddr;
    else if (!host && service) {
        /* libpq takes host and port from the service file at connect. */
        len = strlen(service) + sizeof "(service )";
        out = malloc(len);
        if (out)
            snprintf(out, len, "(service %s)", service);
        return out;
    } else
        h = DEFAULT_PGSOCKET_DIR[0] ? DEFAULT_PGSOCKET_DIR : "localhost";
    while (isspace((unsigned char)*p))
        p++;
    v6 = strchr(h, ':') && !is_unix_path(h);
    len = strlen(h) + strlen(p) + 4;
    out = malloc(len);
    if (out)
        snprintf(out, len, v6 ? "[%s]:%s" : "%s:%s", h, p);
    return out;
}

/* The servers' host, hostaddr and port lists, after the environment. */
typedef struct slot_lists {
    const char *host, *hostaddr, *port;
    const char *service;
    int n;
} slot_lists;

/* A target_session_attrs value for a message: libpq's own words only,
 * never text of the conninfo. */
static const char *known_tsa(const char *v)
{
    static const char *const names[] = {"read-write", "read-only", "primary",
                                        "standby", "prefer-standby"};

    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(v, names[i]) == 0)
            return names[i];
    }
    return "(this value)";
}

static int check_lists(const PQconninfoOption *opts, slot_lists *l,
                       pgg_error *err)
{
    const char *tsa = opt_val(opts, "target_session_attrs");
    const char *lb = opt_val(opts, "load_balance_hosts");
    int nh, np;

    if (tsa && tsa[0] && strcmp(tsa, "any") != 0)
        return pgg__error_set(
            err, PGG_ECONFIG, NULL, NULL,
            "servers: target_session_attrs=%s is not supported: pgguard "
            "finds each host's role itself and routes by intent (write, "
            "read, read-primary) and read_policy",
            known_tsa(tsa));
    if (lb && lb[0] && strcmp(lb, "disable") != 0)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL, "servers: %s",
                              unsupported_lb);

    l->service = opt_val(opts, "service");
    if (!l->service || !l->service[0])
        l->service = getenv("PGSERVICE");
    if (l->service && !l->service[0])
        l->service = NULL;
    l->host = opt_val(opts, "host");
    l->hostaddr = opt_val(opts, "hostaddr");
    l->port = opt_val(opts, "port");
    /* Without a service, libpq would read these from the environment at
     * connect time, for the whole list; read them now so they split. */
    if (!l->service) {
        if (!l->host)
            l->host = getenv("PGHOST");
        if (!l->hostaddr)
            l->hostaddr = getenv("PGHOSTADDR");
        if (!l->port)
            l->port = getenv("PGPORT");
    }

    /* libpq's connectOptions2: hostaddr, when given, sets the count. */
    if (l->hostaddr && l->hostaddr[0])
        l->n = count_elems(l->hostaddr);
    else if (l->host && l->host[0])
        l->n = count_elems(l->host);
    else
        l->n = 1;
    if (l->n > PGG_MAX_HOSTS)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "servers: %d hosts given; at most %d are "
                              "supported",
                              l->n, PGG_MAX_HOSTS);
    if (l->host && l->host[0] && (nh = count_elems(l->host)) != l->n)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "servers: could not match %d host names to %d "
                              "hostaddr values",
                              nh, l->n);
    if (l->port && l->port[0] && (np = count_elems(l->port)) != 1 &&
        np != l->n)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                              "servers: could not match %d port numbers to "
                              "%d hosts",
                              np, l->n);
    return PGG_OK;
}

/*
 * The i-th value of a list keyword for one host: NULL when the keyword is
 * absent (libpq's default applies), "" when empty (so that libpq, seeing a
 * value, does not reach for the environment: an empty element of a list
 * means the compiled-in default).  A single port serves every host.
 */
static int slot_value(const char *list, int i, char **out)
{
    *out = NULL;
    if (!list)
        return PGG_OK;
    if (!list[0] || (i > 0 && !strchr(list, ',')))
        i = 0;
    *out = list_elem(list, i);
    return *out ? PGG_OK : PGG_ENOMEM;
}

static int build_spec(const PQconninfoOption *opts, const slot_lists *l,
                      int i, pgg_host_spec *h, pgg_error *err)
{
    char *host = NULL, *hostaddr = NULL, *port = NULL;
    int others = 0;
    int rc = PGG_ENOMEM;

    for (const PQconninfoOption *o = opts; o->keyword; o++)
        others += o->val && !is_slot_keyword(o->keyword);
    if (slot_value(l->host, i, &host) || slot_value(l->hostaddr, i, &hostaddr) ||
        slot_value(l->port, i, &port) || !spec_alloc(h, others + 3))
        goto out;
    if (port && port[0] && !valid_port(port)) {
        rc = pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                            "servers: invalid port number for host %d "
                            "(expected 1..65535)",
                            i + 1);
        goto out;
    }
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        if (o->val && !is_slot_keyword(o->keyword) &&
            !spec_add(h, o->keyword, o->val))
            goto out;
    }
    if ((host && !spec_add(h, "host", host)) ||
        (hostaddr && !spec_add(h, "hostaddr", hostaddr)) ||
        (port && !spec_add(h, "port", port)))
        goto out;
    h->name = display_name(host, hostaddr, port, l->service);
    if (!h->name)
        goto out;
    h->unix_socket = !(hostaddr && hostaddr[0]) &&
                     (host && host[0] ? is_unix_path(host)
                                      : !l->service && default_is_socket());
    /* Without a host, libpq's default is the socket directory, or
     * "localhost" when built without one; a service file may name any. */
    h->lookup = !(hostaddr && hostaddr[0]) &&
                (host && host[0] ? !is_unix_path(host) && !is_numeric_host(host)
                                 : l->service || !default_is_socket());
    rc = PGG_OK;
out:
    if (rc == PGG_ENOMEM)
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "servers: out of memory");
    free(host);
    free(hostaddr);
    free(port);
    return rc;
}

int pgg__conninfo_split(const char *conninfo, pgg_host_spec **out, int *n,
                        pgg_error *err)
{
    PQconninfoOption *opts;
    char *emsg = NULL;
    pgg_host_spec *specs = NULL;
    slot_lists lists = {0};
    int rc;

    if (out)
        *out = NULL;
    if (n)
        *n = 0;
    if (!conninfo || !out || !n)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "servers: NULL argument");
    opts = PQconninfoParse(conninfo, &emsg);
    if (!opts) {
        if (!emsg)
            return pgg__error_set(err, PGG_ENOMEM, NULL, NULL,
                                  "servers: out of memory");
        PQfreemem(emsg); /* may quote the password: never shown */
        return parse_error(conninfo, err);
    }
    rc = check_lists(opts, &lists, err);
    if (rc)
        goto fail;
    specs = calloc((size_t)lists.n, sizeof *specs);
    if (!specs) {
        rc = pgg__error_set(err, PGG_ENOMEM, NULL, NULL,
                            "servers: out of memory");
        goto fail;
    }
    for (int i = 0; i < lists.n; i++) {
        rc = build_spec(opts, &lists, i, &specs[i], err);
        if (rc)
            goto fail;
    }
    PQconninfoFree(opts);
    *out = specs;
    *n = lists.n;
    return PGG_OK;
fail:
    /* Our own messages quote only host, port and option values that are
     * not secrets; scrub anyway in case one equals the password. */
    if (err) {
        const char *pw[] = {opt_val(opts, "password"),
                            opt_val(opts, "sslpassword")};

        for (size_t i = 0; i < sizeof pw / sizeof pw[0]; i++) {
            if (pw[i])
                scrub(err->message, sizeof err->message, pw[i]);
        }
    }
    pgg__host_specs_free(specs, lists.n);
    PQconninfoFree(opts);
    return rc;
}

/* The socket directory a check connects to: a path under a file, where
 * nothing can listen, so the connect fails at once on this host. */
#define CHECK_SOCKET_DIR "/dev/null/pgguard-option-check"
/*
 * The check's host list, hostaddr and port, all three given, so that libpq
 * takes none of them from the environment (PGHOSTADDR, PGPORT) or a
 * service file, which may hold lists (hostaddr=a,b or port=1,2 for
 * host=x,y: valid at each connect): against the check's own host they
 * failed as "could not match" (the pool refused as misconfigured), and a
 * hostaddr read there made the check start a TCP connect to it.  Two
 * socket paths: a hostaddr of one empty
 * element would be "", which libpq takes as not given; "," is two empty
 * elements, which send each connect to its host, the path.  The port is
 * only in the path's name.
 */
#define CHECK_HOSTS CHECK_SOCKET_DIR "," CHECK_SOCKET_DIR
#define CHECK_HOSTADDRS ","
#define CHECK_PORT "5432"

static int check_hostaddr(const char *addr, int index, pgg_error *err)
{
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;

    if (!addr || !addr[0])
        return PGG_OK;
    /* libpq's own parse of hostaddr: no lookup, only a numeric address. */
    if (getaddrinfo(addr, NULL, &hints, &res) == 0) {
        freeaddrinfo(res);
        return PGG_OK;
    }
    return pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                          "servers: hostaddr of host %d is not a numeric "
                          "IP address (libpq never looks hostaddr up; give "
                          "a name as host)",
                          index + 1);
}

/* Whether msg names word as a word ("port", not the one in "support"). */
static bool names_word(const char *msg, size_t len, const char *word)
{
    size_t wlen = strlen(word);

    for (const char *hit = msg; (hit = strstr(hit, word)) && (size_t)(hit - msg) + wlen <= len;
         hit++) {
        char before = hit > msg ? hit[-1] : ' ';
        char after = hit[wlen];

        if (!isalnum((unsigned char)before) && before != '_' &&
            !isalnum((unsigned char)after) && after != '_')
            return true;
    }
    return false;
}

/*
 * The variable of the environment that set an option libpq's message
 * (msg, len bytes) names and the spec does not give (PGSSLMODE for
 * "invalid sslmode value"), or NULL: the caller's conninfo does not show
 * the value refused, and without this the message points nowhere.  Only
 * names of variables set, never their values (PGPASSWORD's).
 */
static const char *env_source(const pgg_host_spec *h, const char *msg, size_t len,
                              char *out, size_t outlen)
{
    PQconninfoOption *defs = PQconndefaults();
    const char *found = NULL;

    for (PQconninfoOption *o = defs; o && o->keyword && !found; o++) {
        bool given = false;

        if (!o->envvar || !getenv(o->envvar) || !getenv(o->envvar)[0] ||
            !names_word(msg, len, o->keyword))
            continue;
        for (int i = 0; i < h->nparams && !given; i++)
            given = strcmp(h->keys[i], o->keyword) == 0;
        if (!given) {
            snprintf(out, outlen, "%s", o->envvar);
            found = out;
        }
    }
    PQconninfoFree(defs);
    return found;
}

int pgg__host_spec_check(const pgg_host_spec *h, int index, pgg_error *err)
{
    const char **keys = calloc((size_t)h->nparams + 4, sizeof *keys);
    const char **vals = calloc((size_t)h->nparams + 4, sizeof *vals);
    const char *hostaddr = NULL, *port = NULL;
    PGconn *conn = NULL;
    int n = 0, rc = PGG_OK;

    if (!keys || !vals)
        goto out;
    for (int i = 0; i < h->nparams; i++) {
        if (strcmp(h->keys[i], "hostaddr") == 0) {
            hostaddr = h->vals[i];
        } else if (strcmp(h->keys[i], "port") == 0) {
            port = h->vals[i]; /* one, checked when split */
        } else if (strcmp(h->keys[i], "host") != 0) {
            keys[n] = h->keys[i];
            vals[n++] = h->vals[i];
        }
    }
    rc = check_hostaddr(hostaddr, index, err);
    if (rc != PGG_OK)
        goto out;
    keys[n] = "host";
    vals[n++] = CHECK_HOSTS;
    keys[n] = "hostaddr";
    vals[n++] = CHECK_HOSTADDRS;
    keys[n] = "port";
    vals[n] = port && port[0] ? port : CHECK_PORT;
    conn = PQconnectStartParams(keys, vals, 0);
    if (!conn)
        goto out;
    /* Failing on the check's path means every option before it passed. */
    if (PQstatus(conn) == CONNECTION_BAD &&
        !strstr(PQerrorMessage(conn), CHECK_SOCKET_DIR)) {
        const char *msg = PQerrorMessage(conn);
        int len = (int)strcspn(msg, "\n");
        char var[64];
        const char *from = env_source(h, msg, (size_t)len, var, sizeof var);

        rc = pgg__error_set(err, PGG_ECONFIG, NULL, NULL,
                            "servers: host %d (%s): %.*s%s%s%s", index + 1, h->name,
                            len, msg, from ? " (" : "", from ? from : "",
                            from ? " is set in the environment)" : "");
        for (int i = 0; err && i < h->nparams; i++) {
            if (is_secret_keyword(h->keys[i]))
                scrub(err->message, sizeof err->message, h->vals[i]);
        }
    }
out:
    PQfinish(conn);
    free(keys);
    free(vals);
    if (rc == PGG_OK && (!keys || !vals || !conn))
        rc = pgg__error_set(err, PGG_ENOMEM, NULL, NULL,
                            "servers: out of memory");
    return rc;
}

int pgg__host_specs_copy(const pgg_host_spec *src, int n, pgg_host_spec **out)
{
    pgg_host_spec *dst;

    *out = NULL;
    if (n <= 0 || !src)
        return PGG_OK;
    dst = calloc((size_t)n, sizeof *dst);
    if (!dst)
        return PGG_ENOMEM;
    for (int i = 0; i < n; i++) {
        const pgg_host_spec *s = &src[i];
        pgg_host_spec *d = &dst[i];

        d->unix_socket = s->unix_socket;
        d->lookup = s->lookup;
        d->name = strdup(s->name);
        if (!d->name || !spec_alloc(d, s->nparams))
            goto oom;
        for (int j = 0; j < s->nparams; j++) {
            if (!spec_add(d, s->keys[j], s->vals[j]))
                goto oom;
        }
    }
    *out = dst;
    return PGG_OK;
oom:
    pgg__host_specs_free(dst, n);
    return PGG_ENOMEM;
}
