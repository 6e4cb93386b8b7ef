#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *pgg_strerror(int code)
{
    switch (code) {
    case PGG_OK:
        return "success";
#define PGG__ERRNO_MSG(name, value, msg) \
    case PGG_##name:                     \
        return msg;
        PGG_ERRNO_MAP(PGG__ERRNO_MSG)
#undef PGG__ERRNO_MSG
    default:
        return "unknown error";
    }
}

const char *pgg_err_name(int code)
{
    switch (code) {
    case PGG_OK:
        return "PGG_OK";
#define PGG__ERRNO_NAME(name, value, msg) \
    case PGG_##name:                      \
        return "PGG_" #name;
        PGG_ERRNO_MAP(PGG__ERRNO_NAME)
#undef PGG__ERRNO_NAME
    default:
        return "PGG_UNKNOWN";
    }
}

void pgg_error_clear(pgg_error *err)
{
    if (err)
        memset(err, 0, sizeof *err);
}

void pgg__strlcpy(char *dst, const char *src, size_t dstlen)
{
    size_t n;

    if (dstlen == 0)
        return;
    if (!src)
        src = "";
    n = strnlen(src, dstlen - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int pgg__error_set(pgg_error *err, int code, const char *sqlstate,
                   const char *host, const char *fmt, ...)
{
    va_list ap;
    size_t n;

    if (!err)
        return code;
    memset(err, 0, sizeof *err);
    err->code = code;
    pgg__strlcpy(err->sqlstate, sqlstate, sizeof err->sqlstate);
    pgg__strlcpy(err->host, host, sizeof err->host);
    if (fmt) {
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    } else {
        pgg__strlcpy(err->message, pgg_strerror(code), sizeof err->message);
    }
    /* libpq messages end in a newline; a record is one line. */
    n = strlen(err->message);
    while (n > 0 && (err->message[n - 1] == '\n' || err->message[n - 1] == ' '))
        err->message[--n] = '\0';
    return code;
}

int pgg__error_copy(pgg_error *dst, const pgg_error *src)
{
    if (!src) {
        pgg_error_clear(dst);
        return PGG_OK;
    }
    if (dst && dst != src)
        memcpy(dst, src, sizeof *dst);
    return src->code;
}

int pgg__edit_distance(const char *a, const char *b, int limit)
{
    enum { MAXL = 48 };
    int prev[MAXL + 1], cur[MAXL + 1];
    size_t la = strlen(a), lb = strlen(b);

    /* Every length difference costs one edit: most names are out of reach
     * without the table (this runs on every unknown key). */
    if (la > MAXL || lb > MAXL ||
        (la > lb ? la - lb : lb - la) > (size_t)limit)
        return limit + 1;
    for (size_t j = 0; j <= lb; j++)
        prev[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int best;

        cur[0] = (int)i;
        best = cur[0];
        for (size_t j = 1; j <= lb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1;
            int ins = cur[j - 1] + 1;

            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
            if (cur[j] < best)
                best = cur[j];
        }
        /* A row's minimum never shrinks further down. */
        if (best > limit)
            return limit + 1;
        memcpy(prev, cur, sizeof prev);
    }
    return prev[lb] > limit ? limit + 1 : prev[lb];
}
