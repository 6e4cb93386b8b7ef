#include "conninfo_scan.h"

#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "error.h"

/*
 * Every rule below is libpq 15's (fe-connect.c: conninfo_parse,
 * conninfo_uri_parse_options, conninfo_uri_parse_params, conninfo_storeval,
 * conninfo_uri_decode), including the order in which it checks things, so
 * that the first fault found here is the one libpq stops at.  The fuzz
 * target tests/fuzz/fuzz_conninfo.c holds the two to agreement.
 */

/* ------------------------------------------------------------- keywords */

/* The linked libpq's keywords, read once from PQconninfoParse(""), which
 * lists them all without reading the environment. */
static char **known;
static int nknown;
static pthread_once_t known_once = PTHREAD_ONCE_INIT;

static void load_known(void)
{
    char *emsg = NULL;
    PQconninfoOption *opts = PQconninfoParse("", &emsg);
    int n = 0;
    char **list;

    PQfreemem(emsg);
    if (!opts)
        return;
    while (opts[n].keyword)
        n++;
    list = calloc((size_t)n + 1, sizeof *list);
    for (int i = 0; list && i < n; i++) {
        list[i] = strdup(opts[i].keyword);
        if (!list[i]) {
            for (int j = 0; j < i; j++)
                free(list[j]);
            free(list);
            list = NULL;
        }
    }
    PQconninfoFree(opts);
    if (list) {
        known = list;
        nknown = n;
    }
}

static bool have_known(void)
{
    pthread_once(&known_once, load_known);
    return known != NULL;
}

bool pgg__conninfo_is_keyword(const char *kw)
{
    if (!have_known())
        return false;
    for (int i = 0; i < nknown; i++) {
        if (strcmp(known[i], kw) == 0)
            return true;
    }
    return false;
}

const char *pgg__conninfo_suggest(const char *kw)
{
    const char *best = NULL;
    int bestd = 3;

    if (!have_known())
        return NULL;
    for (int i = 0; i < nknown; i++) {
        int d = pgg__edit_distance(kw, known[i], bestd - 1);

        if (d < bestd) {
            bestd = d;
            best = known[i];
        }
    }
    return best;
}

/* ---------------------------------------------------------------- state */

typedef struct scan {
    const char *s;
    pgg__ci_visit visit;
    void *arg;
    pgg__ci_result *res;
} scan;

static pgg__ci_fault fail(scan *sc, pgg__ci_fault f, size_t pos,
                          pgg__ci_part part)
{
    sc->res->fault = f;
    sc->res->pos = pos;
    sc->res->part = part;
    return f;
}

static void keep_keyword(scan *sc, const char *kw, size_t n)
{
    size_t cap = sizeof sc->res->keyword - 1;

    sc->res->keyword_cut = n > cap;
    if (n > cap)
        n = cap;
    memcpy(sc->res->keyword, kw, n);
    sc->res->keyword[n] = '\0';
}

/*
 * conninfo_storeval: the requiressl translation, then the keyword check.
 * kpos is where the keyword was written, for the fault.
 */
static pgg__ci_fault store(scan *sc, const char *kw, const char *val,
                           size_t kpos, size_t start, size_t end,
                           pgg__ci_part part)
{
    pgg__ci_value v;

    if (strcmp(kw, "requiressl") == 0) {
        kw = "sslmode";
        val = val[0] == '1' ? "require" : "prefer";
    }
    if (!have_known())
        return fail(sc, PGG__CI_NOMEM, kpos, part);
    if (!pgg__conninfo_is_keyword(kw)) {
        keep_keyword(sc, kw, strlen(kw));
        return fail(sc, PGG__CI_UNKNOWN_KEYWORD, kpos,
                    part == PGG__CI_QUERY_VALUE ? PGG__CI_QUERY_KEY : part);
    }
    v.keyword = kw;
    v.value = val;
    v.start = start;
    v.end = end;
    v.part = part;
    if (sc->visit && sc->visit(sc->arg, &v))
        return fail(sc, PGG__CI_NOMEM, kpos, part);
    return PGG__CI_OK;
}

/* ------------------------------------------------------------ key=value */

static bool space(char c)
{
    /* libpq uses the C library's isspace, in the caller's locale: so do we. */
    return isspace((unsigned char)c) != 0;
}

static pgg__ci_fault scan_keyvalue(scan *sc)
{
    const char *s = sc->s;
    size_t i = 0;
    size_t cap = strlen(s) + 1;
    char *key = malloc(cap);
    char *val = malloc(cap);
    pgg__ci_fault f = PGG__CI_OK;

    if (!key || !val) {
        free(key);
        free(val);
        return fail(sc, PGG__CI_NOMEM, 0, PGG__CI_KEYVALUE);
    }
    while (s[i] && !f) {
        size_t k0, klen, v0, vlen = 0;

        if (space(s[i])) {
            i++;
            continue;
        }
        k0 = i;
        while (s[i] && s[i] != '=' && !space(s[i]))
            i++;
        klen = i - k0;
        /* One blank ends the keyword; libpq then skips the others. */
        if (space(s[i]))
            while (space(s[i]))
                i++;
        if (s[i] != '=') {
            keep_keyword(sc, s + k0, klen);
            f = fail(sc, PGG__CI_MISSING_EQUALS, k0, PGG__CI_KEYVALUE);
            break;
        }
        i++;
        while (space(s[i]))
            i++;
        v0 = i;
        if (s[i] != '\'') {
            while (s[i] && !space(s[i])) {
                if (s[i] == '\\') {
                    i++;
                    if (s[i])
                        val[vlen++] = s[i++];
                } else {
                    val[vlen++] = s[i++];
                }
            }
        } else {
            for (i++;;) {
                if (!s[i]) {
                    f = fail(sc, PGG__CI_UNTERMINATED_QUOTE, v0,
                             PGG__CI_KEYVALUE);
                    break;
                }
                if (s[i] == '\\') {
                    i++;
                    if (s[i])
                        val[vlen++] = s[i++];
                    continue;
                }
                if (s[i] == '\'') {
                    i++;
                    break;
                }
                val[vlen++] = s[i++];
            }
            if (f)
                break;
        }
        memcpy(key, s + k0, klen);
        key[klen] = '\0';
        val[vlen] = '\0';
        f = store(sc, key, val, k0, v0, i, PGG__CI_KEYVALUE);
        /* The blank that ended an unquoted value is libpq's too. */
        if (s[i] && space(s[i]))
            i++;
    }
    /* The value may be a password, and with a misplaced quote so may the
     * keyword: leave neither in the heap. */
    memset(key, 0, cap);
    memset(val, 0, cap);
    free(key);
    free(val);
    return f;
}

/* ------------------------------------------------------------------ URI */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * A piece of the text joined into one value, the way libpq joins the
 * host and port lists with commas: raw[i] came from the text at map[i].
 */
typedef struct joined {
    char *raw;
    size_t *map;
    size_t len, cap;
} joined;

static bool join_put(joined *j, char c, size_t at)
{
    if (j->len + 2 > j->cap) {
        size_t cap = j->cap ? j->cap * 2 : 64;
        char *r = realloc(j->raw, cap);
        size_t *m;

        if (!r)
            return false;
        j->raw = r;
        m = realloc(j->map, cap * sizeof *m);
        if (!m)
            return false;
        j->map = m;
        j->cap = cap;
    }
    j->raw[j->len] = c;
    j->map[j->len] = at;
    j->len++;
    j->raw[j->len] = '\0';
    return true;
}

static bool join_span(joined *j, const char *s, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++) {
        if (!join_put(j, s[i], i))
            return false;
    }
    return true;
}

static void join_free(joined *j)
{
    if (j->raw)
        memset(j->raw, 0, j->cap);
    free(j->raw);
    free(j->map);
    memset(j, 0, sizeof *j);
}

/*
 * conninfo_uri_decode of j->raw into a malloc'd *out.  On a fault, its
 * position in the text.
 */
static pgg__ci_fault decode(scan *sc, const joined *j, pgg__ci_part part,
                            char **out)
{
    char *buf = malloc(j->len + 1);
    size_t o = 0;

    *out = NULL;
    if (!buf)
        return fail(sc, PGG__CI_NOMEM, j->len ? j->map[0] : 0, part);
    for (size_t i = 0; i < j->len; i++) {
        int hi, lo;

        if (j->raw[i] != '%') {
            buf[o++] = j->raw[i];
            continue;
        }
        hi = i + 1 < j->len ? hexval(j->raw[i + 1]) : -1;
        lo = hi >= 0 && i + 2 < j->len ? hexval(j->raw[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            memset(buf, 0, j->len + 1);
            free(buf);
            return fail(sc, hi < 0 || lo < 0 ? PGG__CI_BAD_PERCENT
                                             : PGG__CI_PERCENT_00,
                        j->map[i], part);
        }
        buf[o++] = (char)(hi << 4 | lo);
        i += 2;
    }
    buf[o] = '\0';
    *out = buf;
    return PGG__CI_OK;
}

static void free_secret(char *p)
{
    if (p) {
        memset(p, 0, strlen(p));
        free(p);
    }
}

/* Decode j and store it under kw (storeval with uri_decode: the keyword is
 * checked before the value is decoded). */
static pgg__ci_fault store_decoded(scan *sc, const char *kw, const joined *j,
                                   size_t kpos, size_t start, size_t end,
                                   pgg__ci_part part)
{
    char *val;
    pgg__ci_fault f;

    if (!pgg__conninfo_is_keyword(kw))
        return fail(sc, have_known() ? PGG__CI_UNKNOWN_KEYWORD : PGG__CI_NOMEM,
                    kpos, part);
    f = decode(sc, j, part, &val);
    if (f)
        return f;
    f = store(sc, kw, val, kpos, start, end, part);
    free_secret(val);
    return f;
}

static pgg__ci_fault store_span(scan *sc, const char *kw, size_t from,
                                size_t to, pgg__ci_part part)
{
    joined j = {0};
    pgg__ci_fault f;

    if (!join_span(&j, sc->s, from, to)) {
        join_free(&j);
        return fail(sc, PGG__CI_NOMEM, from, part);
    }
    f = store_decoded(sc, kw, &j, from, from, to, part);
    join_free(&j);
    return f;
}

static bool one_of(char c, const char *set)
{
    return c != '\0' && strchr(set, c) != NULL;
}

/* The query: key=value pairs separated by '&'. */
static pgg__ci_fault scan_params(scan *sc, size_t p)
{
    const char *s = sc->s;

    while (s[p]) {
        size_t k0 = p, eq = 0, end, next;
        bool have_eq = false;
        joined jk = {0}, jv = {0};
        char *kw = NULL, *val = NULL;
        const char *skw, *sval;
        pgg__ci_fault f;

        for (;;) {
            if (s[p] == '=') {
                if (have_eq)
                    return fail(sc, PGG__CI_EXTRA_EQUALS, p,
                                PGG__CI_QUERY_KEY);
                have_eq = true;
                eq = p++;
            } else if (s[p] == '&' || !s[p]) {
                end = p;
                next = s[p] ? p + 1 : p;
                if (!have_eq)
                    return fail(sc, PGG__CI_NO_EQUALS, k0, PGG__CI_QUERY_KEY);
                break;
            } else {
                p++;
            }
        }
        if (!join_span(&jk, s, k0, eq) || !join_span(&jv, s, eq + 1, end)) {
            join_free(&jk);
            join_free(&jv);
            return fail(sc, PGG__CI_NOMEM, k0, PGG__CI_QUERY_KEY);
        }
        f = decode(sc, &jk, PGG__CI_QUERY_KEY, &kw);
        if (!f)
            f = decode(sc, &jv, PGG__CI_QUERY_VALUE, &val);
        join_free(&jk);
        join_free(&jv);
        if (!f) {
            /* libpq's JDBC compatibility: ssl=true is sslmode=require. */
            skw = kw;
            sval = val;
            if (strcmp(kw, "ssl") == 0 && strcmp(val, "true") == 0) {
                skw = "sslmode";
                sval = "require";
            }
            f = store(sc, skw, sval, k0, eq + 1, end, PGG__CI_QUERY_VALUE);
        }
        free(kw);
        free_secret(val);
        if (f)
            return f;
        p = next;
    }
    return PGG__CI_OK;
}

static pgg__ci_fault scan_uri(scan *sc, size_t prefix)
{
    const char *s = sc->s;
    size_t start = prefix, p = start;
    size_t hosts0 = 0, hosts1 = 0, ports0 = 0, ports1 = 0;
    bool any_port = false;
    joined hosts = {0}, ports = {0};
    pgg__ci_fault f = PGG__CI_OK;
    char prev;

    /* libpq looks for '@' before the first '/' only, brackets or not. */
    while (s[p] && s[p] != '@' && s[p] != '/')
        p++;
    if (s[p] == '@') {
        size_t at = p, q = start;

        while (s[q] != ':' && s[q] != '@')
            q++;
        if (q > start) {
            f = store_span(sc, "user", start, q, PGG__CI_USER);
            if (f)
                return f;
        }
        if (s[q] == ':' && at > q + 1) {
            f = store_span(sc, "password", q + 1, at, PGG__CI_PASSWORD);
            if (f)
                return f;
        }
        p = at + 1;
    } else {
        p = start;
    }

    /* host[:port] pieces separated by commas */
    hosts0 = p;
    for (;;) {
        size_t h0, h1;

        if (s[p] == '[') {
            h0 = ++p;
            while (s[p] && s[p] != ']')
                p++;
            if (!s[p]) {
                f = fail(sc, PGG__CI_UNCLOSED_BRACKET, h0 - 1, PGG__CI_HOST);
                goto out;
            }
            if (p == h0) {
                f = fail(sc, PGG__CI_EMPTY_BRACKETS, h0 - 1, PGG__CI_HOST);
                goto out;
            }
            h1 = p++;
            if (s[p] && !one_of(s[p], ":/?,")) {
                f = fail(sc, PGG__CI_AFTER_BRACKET, p, PGG__CI_HOST);
                goto out;
            }
        } else {
            h0 = p;
            while (s[p] && !one_of(s[p], ":/?,"))
                p++;
            h1 = p;
        }
        prev = s[p];
        hosts1 = p;
        if (!join_span(&hosts, s, h0, h1))
            goto oom;
        if (prev == ':') {
            size_t p0 = ++p;

            while (s[p] && !one_of(s[p], "/?,"))
                p++;
            prev = s[p];
            if (!any_port)
                ports0 = p0;
            any_port = true;
            ports1 = p;
            if (!join_span(&ports, s, p0, p))
                goto oom;
        }
        if (prev != ',')
            break;
        if (!join_put(&hosts, ',', p) || !join_put(&ports, ',', p))
            goto oom;
        p++;
    }
    if (hosts.len) {
        f = store_decoded(sc, "host", &hosts, hosts0, hosts0, hosts1,
                          PGG__CI_HOST);
        if (f)
            goto out;
    }
    if (ports.len) {
        f = store_decoded(sc, "port", &ports, any_port ? ports0 : hosts0,
                          any_port ? ports0 : hosts0, any_port ? ports1 : hosts1,
                          PGG__CI_PORT);
        if (f)
            goto out;
    }
    if (prev && prev != '?') {
        size_t d0 = ++p;

        while (s[p] && s[p] != '?')
            p++;
        prev = s[p];
        if (p > d0) {
            f = store_span(sc, "dbname", d0, p, PGG__CI_DBNAME);
            if (f)
                goto out;
        }
    }
    if (prev)
        f = scan_params(sc, p + 1);
out:
    join_free(&hosts);
    join_free(&ports);
    return f;
oom:
    f = fail(sc, PGG__CI_NOMEM, p, PGG__CI_HOST);
    goto out;
}

/* -------------------------------------------------------------- public */

static size_t uri_prefix(const char *s)
{
    /* libpq's uri_prefix_length: these two, case-sensitive. */
    if (strncmp(s, "postgresql://", 13) == 0)
        return 13;
    if (strncmp(s, "postgres://", 11) == 0)
        return 11;
    return 0;
}

pgg__ci_fault pgg__conninfo_scan(const char *text, pgg__ci_visit visit,
                                 void *arg, pgg__ci_result *res)
{
    pgg__ci_result local;
    scan sc;
    size_t prefix;

    if (!res)
        res = &local;
    memset(res, 0, sizeof *res);
    sc.s = text;
    sc.visit = visit;
    sc.arg = arg;
    sc.res = res;
    prefix = uri_prefix(text);
    res->uri = prefix != 0;
    if (!have_known())
        return fail(&sc, PGG__CI_NOMEM, 0, PGG__CI_KEYVALUE);
    return prefix ? scan_uri(&sc, prefix) : scan_keyvalue(&sc);
}
