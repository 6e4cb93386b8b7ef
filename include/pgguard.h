/*
 * pgguard: a guard for a C backend's access to PostgreSQL.
 *
 * A pool wrapper around libpq that pairs a bulkhead (bounded concurrent
 * calls, bounded wait) with a circuit breaker per host, classifies every
 * outcome, routes writes to the primary and reads to healthy replicas, and
 * never blocks a caller past its deadline.
 *
 * Thread safety: every function in this header is thread-safe unless its
 * comment says otherwise.  A pgg_config is owned by one thread until it is
 * handed to pgg_pool_new(); a pgg_lease is used by one thread at a time.
 *
 * Errors: every fallible function returns 0 (PGG_OK) or a negative PGG_E*
 * code, and fills an optional caller-owned pgg_error with the details.
 * Codes are only ever added at the end of the table, never renumbered or
 * removed.
 */
#ifndef PGGUARD_H
#define PGGUARD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(PGG_BUILDING) && defined(__GNUC__)
#define PGG_EXPORT __attribute__((visibility("default")))
#else
#define PGG_EXPORT
#endif

/* ---------------------------------------------------------------- version */

#define PGG_VERSION_MAJOR 0
#define PGG_VERSION_MINOR 1
#define PGG_VERSION_PATCH 0
#define PGG_VERSION_STRING "0.1.0"
/* 0xMMmmpp: compare with PGG_VERSION_NUMBER at compile time. */
#define PGG_VERSION_NUMBER \
    ((PGG_VERSION_MAJOR << 16) | (PGG_VERSION_MINOR << 8) | PGG_VERSION_PATCH)

/* The version of the library linked at run time, as "MAJOR.MINOR.PATCH". */
PGG_EXPORT const char *pgg_version(void);
/* The same as a number, built like PGG_VERSION_NUMBER. */
PGG_EXPORT unsigned pgg_version_number(void);

/* ------------------------------------------------------------------ errors */

/*
 * X(NAME, value, message).  Add new codes last.  Never renumber or remove.
 */
#define PGG_ERRNO_MAP(X)                                                       \
    X(EINVAL, -1, "invalid argument")                                          \
    X(ENOMEM, -2, "out of memory")                                             \
    X(ECONFIG, -3, "bad configuration")                                        \
    X(EBULKHEAD, -4, "bulkhead full: too many concurrent calls")               \
    X(EOPEN, -5, "no eligible host: every candidate's circuit breaker is open") \
    X(ENOPRIMARY, -6, "no primary available")                                  \
    X(ETIMEDOUT, -7, "deadline exceeded")                                      \
    X(ECONNECT, -8, "connection failure")                                      \
    X(ESERVER, -9, "server error")                                             \
    X(ECLOSED, -10, "pool closed")                                             \
    X(EUNAVAILABLE, -11, "server unavailable")                                 \
    X(EWRONGROLE, -12, "host has the wrong role (a write reached a standby)")  \
    X(ESTATE, -13, "operation not valid in the current state")                 \
    X(ESYS, -14, "system error")                                               \
    X(ETYPES, -15, "libpqtypes error")                                         \
    X(ENOTSUP, -16, "not supported by this build")

typedef enum pgg_errno {
    PGG_OK = 0,
#define PGG__ERRNO_ENUM(name, value, msg) PGG_##name = value,
    PGG_ERRNO_MAP(PGG__ERRNO_ENUM)
#undef PGG__ERRNO_ENUM
} pgg_errno;

/* A static, human-readable message for a code; never NULL. */
PGG_EXPORT const char *pgg_strerror(int code);
/* The code's name ("PGG_ETIMEDOUT"); "PGG_UNKNOWN" for an unknown code. */
PGG_EXPORT const char *pgg_err_name(int code);

/*
 * The caller-owned record of what went wrong.  A pool is shared between
 * threads, so it keeps no "last error": pass one of these (or NULL) to any
 * fallible call.  Strings are always NUL-terminated, truncated if needed,
 * and never contain a password.
 */
typedef struct pgg_error {
    int code;               /* PGG_OK or a PGG_E* code */
    char sqlstate[6];       /* "" when there was none */
    char host[128];         /* "host:port" the error came from, or "" */
    char message[512];
    unsigned char reserved_[64]; /* room to grow without an ABI break */
} pgg_error;

/* Reset a record to "no error".  Accepts NULL. */
PGG_EXPORT void pgg_error_clear(pgg_error *err);

/* ------------------------------------------------------------- breakers */

/* The state of one host's circuit breaker, as reported in stats and events. */
typedef enum pgg_breaker_state {
    PGG_BREAKER_CLOSED = 0,       /* traffic flows, outcomes are recorded */
    PGG_BREAKER_OPEN = 1,         /* no traffic until the open time elapses */
    PGG_BREAKER_HALF_OPEN = 2,    /* a bounded number of probe calls */
    PGG_BREAKER_FORCED_OPEN = 3,  /* held open by the operator */
    PGG_BREAKER_DISABLED = 4,     /* always admits, records nothing */
    PGG_BREAKER_METRICS_ONLY = 5  /* always admits, records, never trips */
} pgg_breaker_state;

/* "closed", "open", "half-open", ...; never NULL. */
PGG_EXPORT const char *pgg_breaker_state_name(pgg_breaker_state state);

#ifdef __cplusplus
}
#endif

#endif /* PGGUARD_H */
