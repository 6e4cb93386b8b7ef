/*
 * A checker for the Prometheus text exposition format (0.0.4), for tests of
 * pgg_pool_metrics() and of examples/http_backend's /metrics.
 *
 * It checks what a Prometheus server would reject or misread: line syntax,
 * metric and label names, label value escapes, values, one TYPE per family
 * before its samples, a family's samples kept together, no duplicate series.
 */
#ifndef PGG_TEST_PROM_TEXT_H
#define PGG_TEST_PROM_TEXT_H

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROM_MAX_FAMILIES 256
#define PROM_MAX_SERIES 4096

static inline bool prom__name_start(int c) { return isalpha(c) || c == '_' || c == ':'; }
static inline bool prom__name_char(int c) { return isalnum(c) || c == '_' || c == ':'; }

/* Length of a metric name at s (0 when there is none). */
static inline size_t prom__name(const char *s)
{
    size_t n = 0;
    if (!prom__name_start((unsigned char)s[0]))
        return 0;
    while (prom__name_char((unsigned char)s[n]))
        n++;
    return n;
}

static inline int prom__fail(char *why, size_t len, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static inline int prom__fail(char *why, size_t len, int line, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(why, len, "line %d: ", line);
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < len)
        vsnprintf(why + n, len - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

/* The family a sample belongs to: histogram and summary samples carry a
 * suffix after their family's name. */
static inline bool prom__in_family(const char *sample, size_t slen, const char *family)
{
    static const char *const suffixes[] = {"", "_bucket", "_sum", "_count"};
    size_t flen = strlen(family);
    if (slen < flen || strncmp(sample, family, flen) != 0)
        return false;
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++)
        if (slen - flen == strlen(suffixes[i]) &&
            strncmp(sample + flen, suffixes[i], slen - flen) == 0)
            return true;
    return false;
}

/*
 * 0 when text is valid; -1 with the first problem in why.  Works on a copy
 * of the text.
 */
static inline int prom_check(const char *text, char *why, size_t why_len)
{
    char *copy = strdup(text), *save = NULL;
    char families[PROM_MAX_FAMILIES][160];
    bool closed[PROM_MAX_FAMILIES];
    char **series = calloc(PROM_MAX_SERIES, sizeof *series);
    int nfam = 0, nseries = 0, current = -1, lineno = 0, rc = 0;

    if (!copy || !series) {
        free(copy);
        free(series);
        return prom__fail(why, why_len, 0, "out of memory");
    }
    if (!*text || text[strlen(text) - 1] != '\n') {
        rc = prom__fail(why, why_len, 0, "the text must end with a newline");
        goto out;
    }
    for (char *line = strtok_r(copy, "\n", &save); line && rc == 0;
         line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        if (line[0] == '#') {
            char kind[8], name[160], type[32];
            if (sscanf(line, "# %7s %159s %31s", kind, name, type) < 2 ||
                (strcmp(kind, "HELP") && strcmp(kind, "TYPE")))
                continue; /* a plain comment */
            if (prom__name(name) != strlen(name)) {
                rc = prom__fail(why, why_len, lineno, "bad metric name in %s", kind);
                break;
            }
            if (strcmp(kind, "HELP") == 0)
                continue;
            if (strcmp(type, "counter") && strcmp(type, "gauge") && strcmp(type, "histogram") &&
                strcmp(type, "summary") && strcmp(type, "untyped")) {
                rc = prom__fail(why, why_len, lineno, "unknown type %s", type);
                break;
            }
            for (int f = 0; f < nfam; f++)
                if (strcmp(families[f], name) == 0) {
                    rc = prom__fail(why, why_len, lineno, "second TYPE for %s", name);
                    break;
                }
            if (rc || nfam == PROM_MAX_FAMILIES) {
                if (!rc)
                    rc = prom__fail(why, why_len, lineno, "too many families");
                break;
            }
            if (current >= 0)
                closed[current] = true;
            snprintf(families[nfam], sizeof families[nfam], "%s", name);
            closed[nfam] = false;
            current = nfam++;
            continue;
        }
        /* name{label="value",...} value [timestamp] */
        size_t nlen = prom__name(line);
        if (nlen == 0) {
            rc = prom__fail(why, why_len, lineno, "no metric name: %.60s", line);
            break;
        }
        int fam = -1;
        for (int f = 0; f < nfam; f++)
            if (prom__in_family(line, nlen, families[f]))
                fam = f;
        if (fam < 0) {
            rc = prom__fail(why, why_len, lineno, "sample before its TYPE: %.60s", line);
            break;
        }
        if (fam != current || closed[fam]) {
            rc = prom__fail(why, why_len, lineno, "family %s is split", families[fam]);
            break;
        }
        const char *p = line + nlen;
        if (*p == '{') {
            p++;
            while (*p != '}') {
                size_t ln = prom__name(p);
                if (ln == 0 || p[ln] != '=' || p[ln + 1] != '"') {
                    rc = prom__fail(why, why_len, lineno, "bad label: %.60s", p);
                    break;
                }
                p += ln + 2;
                while (*p && *p != '"') {
                    if (*p == '\\') {
                        if (p[1] != '\\' && p[1] != '"' && p[1] != 'n') {
                            rc = prom__fail(why, why_len, lineno, "bad escape in a label");
                            break;
                        }
                        p++;
                    }
                    p++;
                }
                if (rc)
                    break;
                if (*p != '"') {
                    rc = prom__fail(why, why_len, lineno, "unterminated label value");
                    break;
                }
                p++;
                if (*p == ',')
                    p++;
                else if (*p != '}') {
                    rc = prom__fail(why, why_len, lineno, "expected , or } after a label");
                    break;
                }
            }
            if (rc)
                break;
            p++;
        }
        if (*p != ' ') {
            rc = prom__fail(why, why_len, lineno, "no space before the value");
            break;
        }
        size_t id_len = (size_t)(p - line);
        p++;
        char *end;
        errno = 0;
        (void)strtod(p, &end);
        if (end == p || (*end && *end != ' ')) {
            rc = prom__fail(why, why_len, lineno, "bad value: %.40s", p);
            break;
        }
        for (int k = 0; k < nseries; k++)
            if (strlen(series[k]) == id_len && strncmp(series[k], line, id_len) == 0) {
                rc = prom__fail(why, why_len, lineno, "duplicate series %.*s", (int)id_len,
                                line);
                break;
            }
        if (rc)
            break;
        if (nseries < PROM_MAX_SERIES)
            series[nseries++] = strndup(line, id_len);
    }
out:
    for (int k = 0; k < nseries; k++)
        free(series[k]);
    free(series);
    free(copy);
    return rc;
}

/* The value of one series ("name" or "name{labels}", spelled exactly as
 * exposed); NAN when it is absent. */
static inline double prom_value(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return NAN;
}

#endif
