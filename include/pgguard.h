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

/*
 * libpq's own handle types, declared as libpq-fe.h declares them (C11
 * allows the repetition), so that this header does not pull libpq into
 * every file that includes it.  Include <libpq-fe.h> to use the results.
 */
typedef struct pg_conn PGconn;
typedef struct pg_result PGresult;
typedef struct pgNotify PGnotify;
typedef unsigned int Oid;

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
/* 1 when built with libpqtypes: typed calls (pgguard_types.h) and PQgetf
 * on every pooled result. */
PGG_EXPORT int pgg_have_types(void);

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
    X(ENOTSUP, -16, "not supported by this build")                             \
    X(EONCONNECT, -17, "the on-connect hook refused the connection")          \
    X(ECANCELED, -18, "call cancelled by the caller")

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

/* ---------------------------------------------------------- configuration */

/*
 * Settings for a pool: the servers (a libpq conninfo or URI, multi-host as
 * libpq spells it) and the guard keys ("pool_max", "breaker.failure_rate",
 * ...; the README lists every key with its default).  Not thread-safe: fill
 * it from one thread, then hand it to pgg_pool_new(), which copies it.
 */
typedef struct pgg_config pgg_config;

/* A config holding the defaults and no servers; NULL when out of memory. */
PGG_EXPORT pgg_config *pgg_config_new(void);
/* Accepts NULL. */
PGG_EXPORT void pgg_config_free(pgg_config *cfg);

/*
 * The servers, as "host=a,b port=1,2 user=u dbname=d ..." or
 * "postgresql://u@a:1,b:2/d?...".  Every libpq keyword other than host,
 * hostaddr and port applies to every host.  target_session_attrs and
 * load_balance_hosts are rejected: pgguard routes by role itself.
 * Errors: PGG_ECONFIG (message names the problem, never the password).
 */
PGG_EXPORT int pgg_config_set_servers(pgg_config *cfg, const char *conninfo,
                                      pgg_error *err);

/* Set one guard key from its text form ("250", "true", "replica"). */
PGG_EXPORT int pgg_config_set(pgg_config *cfg, const char *key,
                              const char *value, pgg_error *err);
/* Typed setters over the same keys; a type that does not fit the key is
 * PGG_ECONFIG.  Durations are in the unit the key's name says (_ms). */
PGG_EXPORT int pgg_config_set_int(pgg_config *cfg, const char *key,
                                  long long value, pgg_error *err);
PGG_EXPORT int pgg_config_set_double(pgg_config *cfg, const char *key,
                                     double value, pgg_error *err);
PGG_EXPORT int pgg_config_set_bool(pgg_config *cfg, const char *key,
                                   int value, pgg_error *err);
/*
 * Parse "key=value key=value" (whitespace or newlines between pairs, '#'
 * starts a comment to the end of the line, values may be 'single quoted'),
 * as found in a config file or an environment variable.  The special key
 * "servers" sets the conninfo.  Stops at the first bad pair, whose key is
 * named in the message; pairs before it stay applied.
 */
PGG_EXPORT int pgg_config_parse(pgg_config *cfg, const char *text,
                                pgg_error *err);
/* Write the current value of a key, as text, into buf.  PGG_ECONFIG for
 * an unknown key, PGG_EINVAL when buf is too small. */
PGG_EXPORT int pgg_config_get(const pgg_config *cfg, const char *key,
                              char *buf, size_t buflen, pgg_error *err);

/*
 * Settings from the environment, as libpq reads PG* variables for its
 * connection parameters:
 *   PGGUARD_SERVERS  the servers, as pgg_config_set_servers takes them;
 *   PGGUARD_OPTIONS  guard keys, as pgg_config_parse takes them
 *                    ("pool_max=20 breaker.failure_rate=25").
 * An unset or empty variable leaves cfg as it is, so call it after setting
 * your defaults and the environment wins; PG* variables (PGHOST, PGUSER,
 * PGPASSWORD...) keep applying through libpq as usual.  On an error the
 * message starts with the variable's name and never holds a password;
 * pairs of PGGUARD_OPTIONS before the bad one stay applied.
 * Errors: PGG_EINVAL (NULL cfg), PGG_ECONFIG.  Reads the environment with
 * getenv(): not safe while another thread calls setenv() or putenv().
 */
PGG_EXPORT int pgg_config_from_env(pgg_config *cfg, pgg_error *err);

/*
 * A callback run on every new connection before it is lent (pgx's
 * AfterConnect): the session is connected and idle, in nonblocking mode.
 * Return 0 to accept it; anything else refuses it, with the reason written
 * into errbuf (NUL-terminated, never a password).  It must return within
 * timeout_ms, what is left of the connect bound: libpq calls it makes are
 * not bounded by pgguard, and one that returns later has the connection
 * dropped as a timeout.  It runs on the thread that connects (a caller's,
 * or the health thread warming pool_min_idle), outside every lock.
 */
typedef int (*pgg_connect_fn)(PGconn *conn, int timeout_ms, void *userdata,
                              char *errbuf, size_t errlen);

/*
 * Run sql and then fn (either may be NULL; both NULL removes the hook) on
 * every new connection before it is lent (HikariCP's connectionInitSql),
 * and again after the DISCARD ALL that resets a released lease
 * (lease_reset), so the session state it sets (SET search_path, SET ROLE,
 * ...) is always there.  sql may hold several statements; it is copied.
 * Both run within the connect bound (connect_timeout_ms, and never past the
 * call's deadline).  A connection the hook refuses is closed and the call
 * that wanted it fails:
 *   - the SQL fails with a user error (a syntax error, a missing role...),
 *     fn refuses it, or either leaves a transaction open: PGG_EONCONNECT,
 *     with the SQLSTATE and "on_connect: ..." in the message; the host's
 *     breaker does not count it (the host is healthy, the hook is not) and
 *     a read may try the next host;
 *   - the session breaks, the server is shutting down, or the bound runs
 *     out: PGG_ECONNECT / PGG_EUNAVAILABLE / PGG_ETIMEDOUT, counted as a
 *     connection failure of the host, like a failed connect.
 * Errors of this call: PGG_EINVAL (NULL cfg), PGG_ENOMEM.
 */
PGG_EXPORT int pgg_config_on_connect(pgg_config *cfg, const char *sql,
                                     pgg_connect_fn fn, void *userdata,
                                     pgg_error *err);

/* --------------------------------------------------------- classification */

/* What an outcome says about the host it ran on. */
typedef enum pgg_class {
    PGG_CLASS_SUCCESS = 0,    /* the host is healthy (user errors included) */
    PGG_CLASS_IGNORED = 1,    /* says nothing about the host */
    PGG_CLASS_CONNECTION = 2, /* could not connect, or the connection broke */
    PGG_CLASS_TIMEOUT = 3,    /* the deadline or statement_timeout fired */
    PGG_CLASS_UNAVAILABLE = 4, /* shutting down, too many connections, ... */
    PGG_CLASS_WRONG_ROLE = 5, /* a write reached a standby */
    PGG_CLASS__COUNT
} pgg_class;

/* Slots for per-class counters in public structs: room for classes added
 * later without changing a struct's layout (PGG_CLASS__COUNT <= this). */
#define PGG_CLASS_SLOTS 16

/* "success", "ignored", "connection", ...; never NULL. */
PGG_EXPORT const char *pgg_class_name(pgg_class cls);

/*
 * Override how a SQLSTATE (five characters) or a SQLSTATE class (two
 * characters) is classified; exact codes win over classes.  retry: whether
 * a read that failed with it may run again on another host.
 * Same as the config key "classify.<SQLSTATE>=<class>[,retry]".
 */
PGG_EXPORT int pgg_config_classify(pgg_config *cfg, const char *sqlstate,
                                   pgg_class cls, int retry, pgg_error *err);

/* ------------------------------------------------------------------- pool */

typedef struct pgg_pool pgg_pool;
typedef struct pgg_lease pgg_lease;

/* The most servers one pool guards. */
#define PGG_MAX_HOSTS 64

typedef enum pgg_intent {
    PGG_WRITE = 0,        /* the current primary only */
    PGG_READ = 1,         /* healthy replicas first (least busy), then the primary */
    PGG_READ_PRIMARY = 2  /* the primary: read your own writes */
} pgg_intent;

typedef enum pgg_role {
    PGG_ROLE_UNKNOWN = 0,
    PGG_ROLE_PRIMARY = 1,
    PGG_ROLE_STANDBY = 2
} pgg_role;

/* "unknown", "primary", "standby"; never NULL. */
PGG_EXPORT const char *pgg_role_name(pgg_role role);

/*
 * Start a pool over cfg's servers: it copies cfg (free it when you like),
 * starts the health thread and, with pool_min_idle > 0, warms connections
 * in the background (pgg_pool_new never waits on a server).
 * Errors: PGG_ECONFIG (no servers, bad settings, or a connection option
 * libpq would refuse at every connect: sslmode=bogus, a hostaddr that is
 * no numeric address, a service that is not defined; asked of libpq
 * without a network round trip, its message naming the option, and the
 * variable of the environment that set it, if one did),
 * PGG_ENOMEM, PGG_ESYS.
 */
PGG_EXPORT pgg_pool *pgg_pool_new(const pgg_config *cfg, pgg_error *err);

/*
 * Stop the health thread and close every connection.  No call may be in
 * flight, on the pool or on a lease.  A lease still out (never released) is
 * reported with a PGG_EVENT_LEASE_LEAK event (reason "the pool was freed
 * with the lease still out"), its connection is closed and it becomes an
 * orphan: pgg_lease_exec* and the other lease calls fail with PGG_ECLOSED,
 * pgg_lease_conn returns NULL, and pgg_release frees it.  Accepts NULL.
 */
PGG_EXPORT void pgg_pool_free(pgg_pool *pool);

/*
 * Cancel a call early (the HTTP client went away): a handle the caller
 * owns, given to a call in pgg_call.cancel.  pgg_cancel_fire() ends the
 * call's wait at once, wherever it is: the bulkhead queue, a wait for a
 * connection slot, a connect, the query, a read-your-writes wait.  The call
 * then returns NULL with PGG_ECANCELED ("call cancelled by the caller"):
 *   - it is classified like a deadline for the caller, but it is not a
 *     failure of the host: the breaker counts it as ignored, it is never
 *     retried on another host, and no stale answer from the cache stands
 *     in for it;
 *   - a query in flight is ended as at its deadline: the connection is
 *     dropped and the server-side cancel sent (in the background, bounded
 *     by cancel_timeout_ms), so info->sent = 1 says a write may have been
 *     applied (or may still commit before the cancel reaches the server),
 *     and info->sent = 0 that it provably never left;
 *   - a handle already fired when the call starts fails it at once, with
 *     nothing sent and no server touched.
 * A fire that comes after the call returned changes nothing for it.  The
 * lateness is the watchdog's (a query wait ends at the fire itself) or at
 * most 2 ms for the other waits, which look at the handle between slices
 * while a call has one (a call without one pays nothing).
 *
 * Ownership and threads: the caller creates and frees the handle; it must
 * outlive every call it was given to (free it after they returned).  fire,
 * fired and reset may be called from any thread at any time (a server's
 * disconnect callback, a signal-handling thread; not from a signal handler:
 * fire takes a mutex).  One handle may serve several calls, in turn or at
 * once (all of them end on a fire), on one pool at a time.  Reuse a handle
 * for the next request with pgg_cancel_reset(), once no call that should
 * stay cancelled is still running.  Leases take no handle: bound them with
 * their timeouts.
 */
typedef struct pgg_cancel pgg_cancel;

/* A new, unfired handle; NULL when out of memory. */
PGG_EXPORT pgg_cancel *pgg_cancel_new(void);
/* Fire: every call under way with the handle ends with PGG_ECANCELED, and
 * every later one fails at once, until pgg_cancel_reset().  Idempotent;
 * accepts NULL. */
PGG_EXPORT void pgg_cancel_fire(pgg_cancel *c);
/* 1 when fired (and not reset since), else 0; NULL: 0. */
PGG_EXPORT int pgg_cancel_fired(const pgg_cancel *c);
/* Unfire, for reuse by a later call.  Accepts NULL. */
PGG_EXPORT void pgg_cancel_reset(pgg_cancel *c);
/* Accepts NULL.  No call given the handle may still be running. */
PGG_EXPORT void pgg_cancel_free(pgg_cancel *c);

/* Per-call options; pass NULL for the defaults. */
typedef struct pgg_call {
    int timeout_ms;    /* <= 0: the pool's call_timeout_ms */
    unsigned flags;    /* PGG_CALL_* */
    int max_stale_ms;  /* with PGG_CALL_CACHEABLE: oldest answer accepted;
                          <= 0: the pool's cache.max_age_ms */
    int result_format; /* 0 text, 1 binary */
    /* Read your writes: the oldest WAL position (a write's info->lsn, or
     * pgg_pool_lsn()) this read's answer may reflect; 0: none beyond the
     * pool-wide one (read_your_writes=pool or sampled).  The answer then
     * comes from a replica known to have replayed it, or one that proves it
     * in the same round trip, or one that catches up within
     * read_your_writes.max_wait_ms, or the primary; never from older data.
     * Ignored by writes. */
    uint64_t min_lsn;
    /* Early cancel (see pgg_cancel above); NULL: none.  A union so that the
     * struct keeps its size and layout where pointers are 4 bytes. */
    union {
        pgg_cancel *cancel;
        uint64_t cancel_pad_;
    };
    /* Room for options added later without an ABI break: leave zeroed
     * (initialise the struct with = {0} or designated initialisers). */
    uint64_t reserved_[6];
} pgg_call;

/* Attempt only once, even for a read. */
#define PGG_CALL_NO_RETRY 0x1u
/* A read that may be answered from the fallback cache, marked stale,
 * when no host can serve it (needs cache.enabled). */
#define PGG_CALL_CACHEABLE 0x2u
/* A write: report the position that makes it visible in info->lsn (and
 * count it as the pool's latest write) even with read_your_writes=off.
 * Costs no extra round trip: the position is asked for in the same
 * pipeline as the statement. */
#define PGG_CALL_WANT_LSN 0x4u
/* A read that does not wait for the pool's latest write
 * (read_your_writes=pool or sampled); call->min_lsn, if set, still
 * applies. */
#define PGG_CALL_ANY_LSN 0x8u
/* A cacheable read that accepts a fallback answer older than its minimum
 * position.  Without it, a cached answer is served only if the data it
 * holds was known to include that position when it was read. */
#define PGG_CALL_CACHE_ANY_LSN 0x10u

/* What happened to one call; filled when a pgg_info * is passed. */
typedef struct pgg_info {
    char host[128];         /* "host:port" that served it, or "" */
    int host_index;         /* index in the conninfo's host list, or -1 */
    int attempts;           /* hosts tried (a breaker rejection is not one) */
    int sent;               /* 1: the last attempt's statement left for a
                               server, so a failed write may have been
                               applied; 0: it provably never reached one */
    int from_cache;         /* 1: a stale answer from the fallback cache */
    int64_t cache_age_ms;   /* its age, when from_cache */
    pgg_error cause;        /* from_cache: why the live read failed */
    int64_t elapsed_us;     /* time spent in the call */
    /* A write: the WAL position that makes it visible (pass it as a later
     * read's call->min_lsn); 0 when not asked for (PGG_CALL_WANT_LSN or
     * read_your_writes=pool) or the write failed.  A read: a position the
     * answer is known to include (a lower bound), 0 when unknown; for a
     * from_cache answer, the one recorded with it. */
    uint64_t lsn;
    /* A read with a minimum position: time spent waiting for a replica to
     * replay it (0 when none was needed). */
    int64_t lsn_wait_us;
    unsigned char reserved_[48];
} pgg_info;

/*
 * Run one statement under an intent and a deadline: the bulkhead, the
 * router, the breakers, bounded connect and exec, classification and, for
 * reads, retries on the next host while time is left.  Returns a PGresult
 * that the caller PQclear()s: PGRES_COMMAND_OK / TUPLES_OK, or a
 * PGRES_FATAL_ERROR from the server (then *err says PGG_ESERVER with the
 * SQLSTATE).  Returns NULL when nothing reached a server or its answer was
 * lost: *err says why (PGG_EBULKHEAD, PGG_EOPEN, PGG_ENOPRIMARY,
 * PGG_ETIMEDOUT, PGG_ECONNECT, PGG_EUNAVAILABLE, PGG_ECLOSED, ...).
 * A write is retried on another host only when it provably never reached
 * a server.  Never blocks past its deadline.
 *
 * With PGG_CALL_CACHEABLE on a read (and cache.enabled), a successful
 * answer is remembered, and when no host can serve the read for a host
 * reason (PGG_EOPEN, PGG_ETIMEDOUT, PGG_ECONNECT, PGG_EUNAVAILABLE,
 * PGG_ENOPRIMARY) the freshest remembered answer no older than
 * call->max_stale_ms is returned instead: *err is then PGG_OK and *info
 * says from_cache = 1, its age, and in info->cause why the live read
 * failed.  Never for a write, never in place of a user error.
 */
PGG_EXPORT PGresult *pgg_exec(pgg_pool *pool, pgg_intent intent,
                              const char *sql, const pgg_call *call,
                              pgg_info *info, pgg_error *err);
/* The same with parameters, as PQexecParams takes them. */
PGG_EXPORT PGresult *pgg_exec_params(pgg_pool *pool, pgg_intent intent,
                                     const char *sql, int nparams,
                                     const Oid *types,
                                     const char *const *values,
                                     const int *lengths, const int *formats,
                                     const pgg_call *call, pgg_info *info,
                                     pgg_error *err);

/*
 * Prepared statements.  Register one on the pool (name, SQL, parameter
 * types or NULL for the server to infer); each connection prepares it the
 * first time a call runs it there (one extra round trip per connection,
 * none per call after that).  Registering a name again with the same SQL
 * is a no-op; with other SQL it is PGG_EINVAL.  At most 1024 per pool.
 * Through PgBouncer in transaction mode, named statements do not work.
 */
PGG_EXPORT int pgg_pool_prepare(pgg_pool *pool, const char *name,
                                const char *sql, int nparams,
                                const Oid *types, pgg_error *err);
/* Run a registered statement, like pgg_exec_params (PGG_EINVAL for an
 * unknown name). */
PGG_EXPORT PGresult *pgg_exec_prepared(pgg_pool *pool, pgg_intent intent,
                                       const char *name, int nparams,
                                       const char *const *values,
                                       const int *lengths, const int *formats,
                                       const pgg_call *call, pgg_info *info,
                                       pgg_error *err);

/*
 * Borrow one connection under an intent, for a transaction or several
 * statements.  The timeout bounds the acquisition; each pgg_lease_exec
 * has its own.  The lease holds a bulkhead slot until released.
 */
PGG_EXPORT pgg_lease *pgg_acquire(pgg_pool *pool, pgg_intent intent,
                                  int timeout_ms, pgg_info *info,
                                  pgg_error *err);
/*
 * pgg_acquire with per-call options: call->timeout_ms bounds the
 * acquisition, and a read lease honours call->min_lsn (and
 * PGG_CALL_ANY_LSN against the pool-wide mode): it lands on a replica
 * known to have replayed the position, or one that does within
 * read_your_writes.max_wait_ms, or the primary; never on one behind it.
 * call may be NULL.
 */
PGG_EXPORT pgg_lease *pgg_acquire_call(pgg_pool *pool, pgg_intent intent,
                                       const pgg_call *call, pgg_info *info,
                                       pgg_error *err);
/* Run a statement on the lease's connection, bounded and classified like
 * pgg_exec (no retry: the session is the point).  After a connection
 * failure or a timeout, the lease is broken: later calls fail with
 * PGG_ECONNECT and its connection is discarded on release. */
PGG_EXPORT PGresult *pgg_lease_exec(pgg_lease *lease, const char *sql,
                                    int timeout_ms, pgg_error *err);
PGG_EXPORT PGresult *pgg_lease_exec_params(pgg_lease *lease, const char *sql,
                                           int nparams, const Oid *types,
                                           const char *const *values,
                                           const int *lengths,
                                           const int *formats,
                                           int result_format, int timeout_ms,
                                           pgg_error *err);
/* A registered statement through the lease (see pgg_pool_prepare). */
PGG_EXPORT PGresult *pgg_lease_exec_prepared(pgg_lease *lease,
                                             const char *name, int nparams,
                                             const char *const *values,
                                             const int *lengths,
                                             const int *formats,
                                             int result_format, int timeout_ms,
                                             pgg_error *err);
/*
 * COMMIT the lease's transaction and learn the WAL position that makes it
 * visible, in one round trip (pipelined: COMMIT, then the position).
 * *lsn (may be NULL) gets the position, or 0 when nothing committed:
 * a transaction that had failed is rolled back by COMMIT (PGG_ESTATE,
 * "rolled back"), and no transaction open is PGG_ESTATE too.  The
 * position also becomes the pool's latest write.  Other errors as
 * pgg_lease_exec.
 */
PGG_EXPORT int pgg_lease_commit(pgg_lease *lease, int timeout_ms,
                                uint64_t *lsn, pgg_error *err);
/* The position of the lease's last commit seen by pgguard (through
 * pgg_lease_commit, or any statement on a write lease that ended a
 * transaction with read_your_writes=pool); 0 when none. */
PGG_EXPORT uint64_t pgg_lease_lsn(const pgg_lease *lease);
/* The raw connection, for what pgguard does not wrap.  Never PQfinish it;
 * calls made on it directly are not bounded by pgguard. */
PGG_EXPORT PGconn *pgg_lease_conn(pgg_lease *lease);
/* "host:port" of the lease's server. */
PGG_EXPORT const char *pgg_lease_host(const pgg_lease *lease);
/* Give the connection back: pooled again only if idle (no open
 * transaction) and healthy, else closed.  Accepts NULL. */
PGG_EXPORT void pgg_release(pgg_lease *lease);

/* COPY data for pgg_lease_copy_in: up to cap bytes into buf; returns how
 * many, 0 at the end, -1 to abort the COPY. */
typedef long (*pgg_copy_source_fn)(void *userdata, char *buf, size_t cap);
/* One COPY data row from pgg_lease_copy_out; non-zero stops the transfer. */
typedef int (*pgg_copy_sink_fn)(void *userdata, const char *data, size_t len);

/*
 * COPY through a lease, bounded by one deadline for the whole transfer
 * (timeout_ms; <= 0: call_timeout_ms).  A one-shot call or pgg_lease_exec
 * refuses COPY ... FROM STDIN / TO STDOUT with PGG_ESTATE: only a lease can
 * carry the data.
 *
 * pgg_lease_copy_in runs sql, a COPY ... FROM STDIN, and sends what source
 * gives: source writes up to cap bytes of COPY data (in the statement's
 * format: text, csv or binary) into buf and returns how many, 0 at the end,
 * or -1 to abort the COPY (the server then answers with an error, SQLSTATE
 * 57014, and rolls the COPY back).
 * pgg_lease_copy_out runs sql, a COPY ... TO STDOUT, and hands each data
 * row to sink; a non-zero return stops the transfer: the connection is
 * dropped (a COPY TO STDOUT cannot be stopped otherwise), PGG_EINVAL.
 *
 * Both return the server's final result, which the caller PQclear()s:
 * PGRES_COMMAND_OK (PQcmdTuples: the rows copied) or PGRES_FATAL_ERROR
 * (*err PGG_ESERVER with the SQLSTATE; a bad row, say).  NULL when there
 * is none: PGG_ETIMEDOUT (the deadline fired: the connection is dropped,
 * the statement cancelled, the lease broken), PGG_ECONNECT (the session
 * broke; the lease is broken), PGG_EINVAL (sql is not that kind of COPY;
 * a COPY of the other direction drops the connection), PGG_ESTATE (the
 * lease's connection is busy), PGG_ECLOSED (an orphaned lease).
 * The callbacks run on the caller's thread and their time counts against
 * the deadline.  One thread at a time per lease, as for pgg_lease_exec.
 */
PGG_EXPORT PGresult *pgg_lease_copy_in(pgg_lease *lease, const char *sql,
                                       pgg_copy_source_fn source,
                                       void *userdata, int timeout_ms,
                                       pgg_error *err);
PGG_EXPORT PGresult *pgg_lease_copy_out(pgg_lease *lease, const char *sql,
                                        pgg_copy_sink_fn sink, void *userdata,
                                        int timeout_ms, pgg_error *err);

/*
 * LISTEN/NOTIFY through a lease: LISTEN (one or more channels) with
 * pgg_lease_exec, keep the lease, and wait here for notifications.  Returns
 * the next one, which the caller frees with PQfreemem: those that arrived
 * during earlier statements on the lease first, then waiting until
 * timeout_ms (<= 0: call_timeout_ms) for a new one.  NULL with PGG_ETIMEDOUT
 * when none came in time: not a failure, the lease is as it was.  NULL with
 * PGG_ECONNECT when the session broke (the server went down, the backend
 * was terminated): the lease is broken; LISTEN again on a new one.  Also
 * PGG_ESTATE (the connection is busy), PGG_ECLOSED (an orphaned lease).
 * On pgg_release the registrations end with the session reset (lease_reset
 * runs DISCARD ALL, which is UNLISTEN *) and unread notifications are
 * dropped; with lease_reset=false a lease that waited here is closed, not
 * pooled.  One thread at a time per lease.
 */
PGG_EXPORT PGnotify *pgg_lease_notify(pgg_lease *lease, int timeout_ms,
                                      pgg_error *err);

/* ------------------------------------------------------- stats and events */

typedef struct pgg_host_stats {
    char host[128];               /* "host:port" */
    pgg_role role;
    pgg_breaker_state state;
    int64_t lag_bytes;            /* replay lag behind the primary; -1 unknown */
    int conns_open, conns_idle, conns_busy;
    uint64_t calls;               /* attempts that reached the breaker */
    uint64_t successes;
    uint64_t ignored;
    uint64_t failures[PGG_CLASS_SLOTS]; /* by pgg_class (CONNECTION, TIMEOUT,
                                           ...); slots past PGG_CLASS__COUNT
                                           stay 0 */
    uint64_t rejections;          /* refused by the breaker */
    uint64_t connects, connect_failures;
    double failure_rate;          /* in the breaker's window, percent; -1 too few */
    double slow_call_rate;
    int64_t open_remaining_ms;    /* open: until probes are let through
                                     (a Retry-After); else 0 */
    int last_error_code;
    char last_error[256];         /* may miss an error met on an event loop
                                     while another thread held the host's
                                     lock (counted all the same) */
    /* A standby's replay position at its last health probe (0: unknown). */
    uint64_t replay_lsn;
    /* Held back from reads until it has replayed this far again (0: not
     * held): it may have gone back behind what it had reported (its
     * sessions ended, a probe failed: a restart?) or a probe found it
     * there.  Reads go to other hosts meanwhile (PGG_EVENT_READS_HELD). */
    uint64_t reads_held_until_lsn;
    unsigned char reserved_[48];
} pgg_host_stats;

typedef struct pgg_stats {
    int hosts;
    int bulkhead_capacity, bulkhead_in_use, bulkhead_waiting;
    uint64_t bulkhead_rejections;
    uint64_t calls;               /* one-shot calls and leases, bulkhead included */
    uint64_t calls_failed;        /* calls that returned no result */
    uint64_t cache_hits, cache_misses, cache_stores, cache_evictions;
    uint64_t cache_fallbacks;     /* stale answers served */
    uint64_t cache_bytes, cache_entries;
    int leases_out;               /* leases acquired and not yet released */
    int64_t lease_oldest_ms;      /* how long the oldest of them is held; 0 none */
    uint64_t lease_leaks;         /* leases reported held past lease_leak_ms */
    /* Read your writes (reads that needed a position): */
    uint64_t ryw_samples;         /* read_your_writes=sampled: primary positions sampled */
    uint64_t ryw_checks;          /* standbys checked in the read's round trip */
    uint64_t ryw_waits;           /* reads that waited for a standby to catch up */
    uint64_t ryw_primary;         /* reads the primary served */
    unsigned char reserved_[8];   /* 64 bytes in all with the seven above */
} pgg_stats;

/* Pool-wide counters.  Thread-safe: takes the bulkhead's, the cache's and
 * the lease registry's short locks, which the pool's other threads take
 * too (never held across I/O; on an event loop's thread, a holder
 * preempted inside one holds the loop up for a scheduler slice). */
PGG_EXPORT int pgg_pool_stats(pgg_pool *pool, pgg_stats *out);
/* The number of hosts, in conninfo order. */
PGG_EXPORT int pgg_pool_host_count(const pgg_pool *pool);
/* One host's snapshot; PGG_EINVAL for a bad index.  Thread-safe: takes
 * the host's and its breaker's short locks, as pgg_pool_stats its own. */
PGG_EXPORT int pgg_pool_host_stats(pgg_pool *pool, int index,
                                   pgg_host_stats *out);

/*
 * The same stats in the Prometheus text exposition format (version 0.0.4),
 * ready to serve as a /metrics body: every field of pgg_stats and, per
 * host (label host="host:port"), of pgg_host_stats, with the role and the
 * breaker state as 0/1 gauges, one per possible value.  Names start with
 * "pgguard_".  No label ever holds a user, a database or a password.
 *
 * Writes at most len bytes, NUL included, into buf and sets *needed (when
 * not NULL) to what the whole text takes, NUL included.  PGG_OK when it
 * fit; PGG_EINVAL when it did not (buf then holds a NUL-terminated
 * prefix), so pass buf NULL and len 0 to learn the size.  Counters grow
 * between two calls: allocate a little more than *needed, or loop.
 * Errors: PGG_EINVAL, PGG_ENOMEM.  Thread-safe: it takes the snapshots of
 * pgg_pool_stats() and pgg_pool_host_stats(), whose locks are short and
 * never held across I/O, so a scrape never waits on a server.
 */
PGG_EXPORT int pgg_pool_metrics(pgg_pool *pool, char *buf, size_t len,
                                size_t *needed);

typedef enum pgg_event_type {
    PGG_EVENT_BREAKER = 0, /* from/to are pgg_breaker_state */
    PGG_EVENT_ROLE = 1,    /* from/to are pgg_role */
    /* A lease held past lease_leak_ms (once per lease), or still out when
     * the pool was freed: from is how long it has been held, in ms
     * (INT_MAX at most), to the lease_leak_ms setting; host is the lease's
     * server. */
    PGG_EVENT_LEASE_LEAK = 2,
    /* A standby held back from reads (to 1) or used again (to 0; from the
     * other): it may have gone back behind the replay position it had
     * reported (a restart), and takes no reads until it has replayed that
     * far again (pgg_host_stats.reads_held_until_lsn, replay_lsn); reason
     * says why. */
    PGG_EVENT_READS_HELD = 3
} pgg_event_type;

typedef struct pgg_event {
    pgg_event_type type;
    int host_index;
    const char *host;
    int from, to;
    const char *reason;
    /* Room for fields added later; zero today.  An event is only valid for
     * the duration of the listener's call. */
    uint64_t reserved_[8];
} pgg_event;

typedef void (*pgg_event_fn)(const pgg_event *ev, void *userdata);

/*
 * Call fn on every breaker state change and role change, outside any lock
 * of the pool: on the caller's thread that caused it, or, for what the
 * health thread finds, on the pool's events thread (the health thread
 * makes event loops' connections: a listener that waits must not hold
 * them up), one event at a time, in order; a caller's event raised while
 * that thread has events to deliver goes behind them, on that thread.  A
 * breaker's change may also come on another caller's thread, an event
 * loop's included: a call's result that finds another thread inside the
 * host's breaker is queued, and that thread applies it and delivers what
 * it causes; a thread delivering hands what is left to such a thread
 * rather than wait for it.  fn
 * may call into the pool.  Replaces the previous listener; NULL removes
 * it.  Before this returns, the events thread's events raised before it
 * have been delivered (to the previous listener), unless it is called
 * from a listener on that thread.  A call of the previous listener on
 * another thread already under way when this returns may still finish
 * afterwards: keep its userdata alive until pgg_pool_free(), after which
 * no listener runs.  The pool keeps a few bytes for each distinct fn and
 * userdata set until pgg_pool_free(); out of memory, no listener is set.
 */
PGG_EXPORT void pgg_pool_on_event(pgg_pool *pool, pgg_event_fn fn,
                                  void *userdata);

/* ---------------------------------------------------------------- tracing */

/* What a traced call is. */
typedef enum pgg_trace_kind {
    PGG_TRACE_EXEC = 0,     /* pgg_exec, pgg_exec_params, pgg_execf */
    PGG_TRACE_PREPARED = 1, /* pgg_exec_prepared */
    PGG_TRACE_LEASE = 2     /* pgg_lease_exec, _params, _prepared */
} pgg_trace_kind;

/*
 * One call, as a tracer sees it (pgx's QueryTracer).  Valid only during
 * the callback; the strings too (copy what you keep).  At the start, the
 * fields marked "end" are zero / NULL / "".
 */
typedef struct pgg_trace {
    pgg_trace_kind kind;
    pgg_intent intent;      /* a lease's: the intent it was acquired with */
    const char *sql;        /* the SQL text (a prepared statement's too;
                               "" for a call refused for having none) */
    const char *stmt_name;  /* PGG_TRACE_PREPARED (or a lease's): the name */
    /* end: */
    int code;               /* PGG_OK or the PGG_E* code the call returned */
    char sqlstate[6];       /* the server's SQLSTATE, or "" */
    const char *host;       /* "host:port" that served it (the last tried),
                               or NULL when none */
    int host_index;         /* its index, or -1 */
    int attempts;           /* hosts tried (1 for a lease) */
    int sent;               /* as pgg_info.sent */
    int from_cache;         /* as pgg_info.from_cache */
    int64_t elapsed_us;     /* time spent in the call */
    /* Room for fields added later; zero today. */
    uint64_t reserved_[8];
} pgg_trace;

/* Called when a call starts; its return value (a span, a timestamp, NULL)
 * is handed to the end callback of the same call. */
typedef void *(*pgg_trace_start_fn)(const pgg_trace *t, void *userdata);
/* Called when the same call ends, on the same thread, before it returns. */
typedef void (*pgg_trace_end_fn)(const pgg_trace *t, void *span,
                                 void *userdata);

/*
 * Trace every one-shot call (plain, with parameters, typed, prepared) and
 * every lease statement: start is called as the call starts, end as it
 * ends (either may be NULL; both NULL removes the tracer).  Set on the
 * config, so fixed for the pool's life: a pool without one pays one load
 * and a branch per call.  Callbacks run on the caller's thread, outside
 * every lock of the pool, and their time counts against the call's
 * deadline: keep them short.  They must not call into the same pool with
 * the same lease.  userdata must outlive the pool.
 * Errors: PGG_EINVAL (NULL cfg).
 */
PGG_EXPORT int pgg_config_on_trace(pgg_config *cfg, pgg_trace_start_fn start,
                                   pgg_trace_end_fn end, void *userdata,
                                   pgg_error *err);

/* ------------------------------------------------------- read your writes */

/*
 * The WAL position of the pool's latest acknowledged write whose position
 * it learnt (read_your_writes=pool, PGG_CALL_WANT_LSN, pgg_lease_commit);
 * 0 when none.  Hand it to another process as a token (pgg_lsn_format).
 */
PGG_EXPORT uint64_t pgg_pool_lsn(pgg_pool *pool);
/* Write lsn as PostgreSQL spells it ("16/B374D848") into buf.  PGG_EINVAL
 * when buf is NULL or shorter than 18 bytes. */
PGG_EXPORT int pgg_lsn_format(uint64_t lsn, char *buf, size_t len);
/* Parse "16/B374D848" into *out.  PGG_EINVAL on anything else. */
PGG_EXPORT int pgg_lsn_parse(const char *text, uint64_t *out);

/* Operator control of one host's breaker. */
PGG_EXPORT int pgg_pool_force_open(pgg_pool *pool, int index);
PGG_EXPORT int pgg_pool_disable_breaker(pgg_pool *pool, int index);
PGG_EXPORT int pgg_pool_reset_breaker(pgg_pool *pool, int index);
/* Change the bulkhead's capacity at run time (waiters are admitted in
 * order as room appears). */
PGG_EXPORT int pgg_pool_resize_bulkhead(pgg_pool *pool, int capacity);

#ifdef __cplusplus
}
#endif

#endif /* PGGUARD_H */
