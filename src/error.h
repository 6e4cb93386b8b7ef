/* Internal: filling caller-owned pgg_error records. */
#ifndef PGG_ERROR_H
#define PGG_ERROR_H

#include "pgguard.h"

#if defined(__GNUC__)
#define PGG__PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define PGG__PRINTF(f, a)
/* Edit distance between two names when it is at most limit, else
 * limit + 1: for "did you mean" suggestions after a typo. */
int pgg__edit_distance(const char *a, const char *b, int limit);

#endif

/*
 * Fill *err (when not NULL) and return code, so callers can write
 * `return pgg__error_set(err, PGG_EINVAL, NULL, NULL, "...")`.
 * sqlstate and host may be NULL.  The message is truncated to fit.
 * Callers must never format a password or a full conninfo into it.
 */
int pgg__error_set(pgg_error *err, int code, const char *sqlstate,
                   const char *host, const char *fmt, ...) PGG__PRINTF(5, 6);

/* "No error", cheaply: the fields a reader looks at, not the whole ~700
 * bytes (this runs on every call).  err must not be NULL. */
static inline void pgg__error_reset(pgg_error *err)
{
    err->code = PGG_OK;
    err->sqlstate[0] = '\0';
    err->host[0] = '\0';
    err->message[0] = '\0';
}

/* Copy src into dst (both may be NULL); returns src->code or PGG_OK. */
int pgg__error_copy(pgg_error *dst, const pgg_error *src);

/* Bounded string copy that always terminates (dstlen > 0). */
void pgg__strlcpy(char *dst, const char *src, size_t dstlen);

/* Edit distance between two names when it is at most limit, else
 * limit + 1: for "did you mean" suggestions after a typo. */
int pgg__edit_distance(const char *a, const char *b, int limit);

#endif
