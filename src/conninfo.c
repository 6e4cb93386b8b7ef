#include "conninfo.h"

#include <ctype.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

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

/* Secret texts seen while redacting, to scrub from libpq's messages as a
 * second line of defence. */
#define PGG__MAX_SECRETS 8

typedef struct secrets {
    int n;
    char *text[PGG__MAX_SECRETS];
} secrets;

static void secrets_add(secrets *sec, const char *s, size_t n)
{
    char *copy;

    if (!sec || sec->n >= PGG__MAX_SECRETS || n == 0)
        return;
    copy = malloc(n + 1);
    if (!copy)
        return;
    memcpy(copy, s, n);
    copy[n] = '\0';
    sec->text[sec->n++] = copy;
}

static void secrets_free(secrets *sec)
{
    for (int i = 0; i < sec->n; i++)
        free(sec->text[i]);
    sec->n = 0;
}

static bool is_secret_keyword(const char *k, size_t n)
{
    static const char *const names[] = {"password", "sslpassword"};

    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strlen(names[i]) == n && memcmp(k, names[i], n) == 0)
            return true;
    }
    return false;
}

/*
 * Replace every occurrence of a secret in msg (in place) by "********".
 * Very short secrets are left alone: scrubbing every "a" would ruin the
 * message, and the redacted parse already keeps them out.
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

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode s[0..n) into a malloc'd string; the raw text when it is
 * not valid percent-encoding (libpq will reject it anyway). */
static char *pct_decode(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    size_t j = 0;

    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 &&
            hexval(s[i + 2]) >= 0) {
            out[j++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = '\0';
    return out;
}

static size_t uri_prefix_len(const char *s)
{
    /* The two prefixes libpq recognizes (uri_prefix_length). */
    if (strncmp(s, "postgresql://", 13) == 0)
        return 13;
    if (strncmp(s, "postgres://", 11) == 0)
        return 11;
    return 0;
}

/* Record a secret value both raw and as libpq will see it. */
static void note_secret(secrets *sec, const char *raw, size_t n, bool uri)
{
    char *dec;

    if (!sec)
        return;
    secrets_add(sec, raw, n);
    if (uri) {
        dec = pct_decode(raw, n);
    } else {
        /* Unquote and unescape the way conninfo_parse does. */
        size_t i = 0, j = 0;

        dec = malloc(n + 1);
        if (dec) {
            if (n > 0 && raw[0] == '\'')
                i = 1;
            for (; i < n; i++) {
                if (raw[i] == '\\' && i + 1 < n) {
                    dec[j++] = raw[++i];
                    continue;
                }
                if (raw[i] == '\'')
                    break;
                dec[j++] = raw[i];
            }
            dec[j] = '\0';
        }
    }
    if (dec) {
        if (strcmp(dec, "") != 0)
            secrets_add(sec, dec, strlen(dec));
        free(dec);
    }
}

/* key=value form: walk it as libpq's conninfo_parse does. */
static void redact_kv(sbuf *b, const char *s, secrets *sec)
{
    size_t i = 0, copied = 0;

    while (s[i]) {
        size_t k0, k1, v0;

        if (isspace((unsigned char)s[i])) {
            i++;
            continue;
        }
        k0 = i;
        while (s[i] && s[i] != '=' && !isspace((unsigned char)s[i]))
            i++;
        k1 = i;
        while (isspace((unsigned char)s[i]))
            i++;
        if (s[i] != '=')
            break; /* libpq stops here too, quoting only the keyword */
        i++;
        while (isspace((unsigned char)s[i]))
            i++;
        v0 = i;
        if (s[i] != '\'') {
            while (s[i] && !isspace((unsigned char)s[i])) {
                if (s[i] == '\\' && s[i + 1])
                    i++;
                i++;
            }
        } else {
            i++;
            while (s[i]) {
                if (s[i] == '\\') {
                    i++;
                    if (s[i])
                        i++;
                    continue;
                }
                if (s[i++] == '\'')
                    break;
            }
        }
        if (is_secret_keyword(s + k0, k1 - k0)) {
            note_secret(sec, s + v0, i - v0, false);
            sb_put(b, s + copied, v0 - copied);
            sb_puts(b, PGG__MASK);
            copied = i;
        }
    }
    sb_puts(b, s + copied);
}

/* URI form: the password of user:password@ and ?password= parameters. */
static void redact_uri(sbuf *b, const char *s, size_t prefix, secrets *sec)
{
    const char *p = s + prefix;
    const char *q = p;
    const char *query;
    size_t copied = 0;

    /* libpq looks ahead for '@' up to the first '/' only. */
    while (*q && *q != '@' && *q != '/')
        q++;
    if (*q == '@') {
        const char *colon = memchr(p, ':', (size_t)(q - p));

        if (colon) {
            note_secret(sec, colon + 1, (size_t)(q - colon - 1), true);
            sb_put(b, s, (size_t)(colon + 1 - s));
            sb_puts(b, PGG__MASK);
            copied = (size_t)(q - s);
        }
        p = q + 1;
    }
    query = strchr(p, '?');
    if (query) {
        const char *kw = query + 1;

        while (*kw) {
            const char *end = kw + strcspn(kw, "&");
            const char *eq = memchr(kw, '=', (size_t)(end - kw));

            if (eq) {
                char *name = pct_decode(kw, (size_t)(eq - kw));

                if (name && is_secret_keyword(name, strlen(name))) {
                    note_secret(sec, eq + 1, (size_t)(end - eq - 1), true);
                    sb_put(b, s + copied, (size_t)(eq + 1 - s) - copied);
                    sb_puts(b, PGG__MASK);
                    copied = (size_t)(end - s);
                }
                free(name);
            }
            kw = *end ? end + 1 : end;
        }
    }
    sb_puts(b, s + copied);
}

static char *redact(const char *conninfo, secrets *sec)
{
    sbuf b = {0};
    size_t prefix = uri_prefix_len(conninfo);

    if (prefix)
        redact_uri(&b, conninfo, prefix, sec);
    else
        redact_kv(&b, conninfo, sec);
    return sb_take(&b);
}

char *pgg__conninfo_redact(const char *conninfo)
{
    if (!conninfo)
        return NULL;
    return redact(conninfo, NULL);
}

/* ------------------------------------------------------------ parse errors */

/* libpq's message as one line, without the trailing newline. */
static void one_line(char *dst, size_t size, const char *src)
{
    size_t j = 0;

    for (size_t i = 0; src[i] && j + 1 < size; i++) {
        if (src[i] == '\n') {
            if (src[i + 1] == '\0')
                break;
            if (j + 2 < size) {
                dst[j++] = ';';
                dst[j++] = ' ';
            }
            continue;
        }
        dst[j++] = src[i];
    }
    dst[j] = '\0';
}

static const char unsupported_lb[] =
    "load_balance_hosts is not supported: pgguard chooses hosts itself "
    "(see read_policy)";

/*
 * PQconninfoParse failed on the original.  Its message may quote the
 * password (a URI error quotes the whole URI), so never use it: parse the
 * redacted copy instead and report that message, which differs from the
 * original's only where the original quoted a secret.
 */
static int parse_error(const char *conninfo, pgg_error *err)
{
    secrets sec = {0};
    char msg[400];
    char *red = redact(conninfo, &sec);
    char *emsg = NULL;
    PQconninfoOption *opts;

    if (!red) {
        secrets_free(&sec);
        return pgg__error_set(err, PGG_ENOMEM, NULL, NULL,
                              "servers: out of memory");
    }
    opts = PQconninfoParse(red, &emsg);
    free(red);
    if (opts) {
        /* The redacted copy parses: the fault is inside a secret. */
        PQconninfoFree(opts);
        pgg__strlcpy(msg, "malformed password (or sslpassword) value",
                     sizeof msg);
    } else if (!emsg) {
        secrets_free(&sec);
        return pgg__error_set(err, PGG_ENOMEM, NULL, NULL,
                              "servers: out of memory");
    } else {
        one_line(msg, sizeof msg, emsg);
        PQfreemem(emsg);
        /* libpq < 16 does not know the keyword: say why it is not wanted. */
        if (strstr(msg, "\"load_balance_hosts\""))
            pgg__strlcpy(msg, unsupported_lb, sizeof msg);
    }
    for (int i = 0; i < sec.n; i++)
        scrub(msg, sizeof msg, sec.text[i]);
    secrets_free(&sec);
    if (strcmp(msg, unsupported_lb) == 0)
        return pgg__error_set(err, PGG_ECONFIG, NULL, NULL, "servers: %s", msg);
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

static int check_lists(const PQconninfoOption *opts, slot_lists *l,
                       pgg_error *err)
{
    const char *tsa = opt_val(opts, "target_session_attrs");
    const char *lb = opt_val(opts, "load_balance_hosts");
    int nh, np;

    if (tsa && tsa[0] && strcmp(tsa, "any") != 0)
        return pgg__error_set(
            err, PGG_ECONFIG, NULL, NULL,
            "servers: target_session_attrs=%.32s is not supported: pgguard "
            "finds each host's role itself and routes by intent (write, "
            "read, read-primary) and read_policy",
            tsa);
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
                            "servers: invalid port number \"%.16s\" for "
                            "host %d",
                            port, i + 1);
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
