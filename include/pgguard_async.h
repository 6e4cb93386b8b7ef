/*
 * pgguard_async.h: guarded calls on an event loop.
 *
 * A pgg_async attaches a pool (pgguard.h) to one event loop.  Its calls go
 * the same path as blocking calls (bulkhead, routing, breakers, borrow or
 * connect, exec, classification, records, retries on the next host, the
 * fallback cache), on the same pool: hosts, breakers, connections, cache and
 * metrics are shared with blocking callers on other threads.  Nothing a
 * pgg_async does blocks the loop: a call's new connection is started on
 * the loop (PQconnectStartParams, non-blocking) and made by the pool's
 * health thread (every PQconnectPoll step there, GSSAPI and TLS included;
 * the loop waits for it on an eventfd, within the call's deadline),
 * queries are sent and read as the loop reports the socket ready, every
 * deadline is a loop timer, a full bulkhead refuses at once, and a query
 * abandoned at its deadline is cancelled on the server from the pool's
 * canceller thread.  Stats read on the loop (pgg_pool_stats,
 * pgg_pool_host_stats, pgg_pool_metrics: a /metrics handler) take the
 * pool's short locks, shared with its other threads (pgguard.h).
 *
 * DNS: libpq resolves a host name inside PQconnectStartParams, which
 * blocks: for a host reached by name (no hostaddr=), the loop hands the
 * whole connect, its start included, to the health thread.  Numeric
 * addresses (hostaddr=, or host=127.0.0.1) spare that hand-off: the loop
 * starts their connects itself and hears a refused local port at once.
 * GSSAPI: with libpq's default gssencmode=prefer, every connect asks the
 * GSSAPI library for credentials (it reads /etc/krb5.conf and the
 * credential cache: about 80% of a connect's client instructions here),
 * on the health thread; set gssencmode=disable in the pool's conninfo
 * unless you use Kerberos.
 *
 * The loop is reached through a table of hooks (pgg_async_ev), filled by an
 * adapter: include <pgguard/adapters/libevent.h>, libev.h or libuv.h and
 * call its pgg_async_<loop>_attach(ac, loop).  Another loop needs the six
 * functions described at pgg_async_ev.
 *
 * Threads: a pgg_async and its calls belong to the loop's thread; every
 * function here must be called on it (the pool itself stays shareable),
 * with one exception: pgg_async_free may run on another thread once the
 * loop no longer runs the context (the loop's thread stopped dispatching
 * it, or ended; the hand-over between the threads ordered, e.g. by a
 * join or a mutex), even while the loop's thread goes on making blocking
 * calls on the pool.  Freeing it on another thread while the loop may
 * still dispatch its events is a use after free.
 *
 *   pgg_async *ac = pgg_async_new(pool, &err);
 *   pgg_async_libevent_attach(ac, base);
 *   pgg_async_exec(ac, PGG_READ, "SELECT 1", NULL, done, ctx, NULL);
 *   ...
 *   static void done(pgg_async *ac, PGresult *res, const pgg_info *info,
 *                    const pgg_error *err, void *ctx)
 *   { ... PQclear(res); }
 */
#ifndef PGGUARD_ASYNC_H
#define PGGUARD_ASYNC_H

#include "pgguard.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pgg_async pgg_async;
/* One call in flight, for pgg_async_cancel.  Valid until its callback
 * starts. */
typedef struct pgg_async_call pgg_async_call;
/* One socket the loop watches for a call (connect or query). */
typedef struct pgg_async_sock pgg_async_sock;

/*
 * A call's completion, on the loop's thread, exactly once for every call
 * pgg_async_exec* accepted (returned PGG_OK), and never from inside the
 * function that started it.  res, info and err are what the blocking call
 * returns: res (NULL on failure) is the callback's, to PQclear; info and
 * err live until the callback returns.  The callback may start new calls
 * and cancel others; it must not free the pgg_async.
 */
typedef void (*pgg_async_fn)(pgg_async *ac, PGresult *res,
                             const pgg_info *info, const pgg_error *err,
                             void *userdata);

/*
 * The loop's hooks (in the style of hiredis' redisAsyncContext.ev, with
 * one socket per call in flight rather than one per context, and one timer
 * per context as in libcurl's multi interface).
 *
 *   add_read, del_read, add_write, del_write: start or stop watching the
 *     socket pgg_async_sock_fd(s) for readability or writability.  When it
 *     is ready, call pgg_async_handle_read(s) / pgg_async_handle_write(s).
 *     Several interests on one socket may be on at once.  The descriptor
 *     is pgguard's own copy of libpq's socket, not PQsocket(): libpq may
 *     close its socket at any time (a lost connection), but this copy stays
 *     open, and stays the same socket, from the first add until close_sock
 *     returns, so a del is always safe.
 *   close_sock: no event of s is wanted any more (interests are off): free
 *     whatever the adapter attached to it (pgg_async_sock_data).  The fd
 *     may be closed or reused right after this returns, so the adapter must
 *     have stopped watching it synchronously.
 *   schedule_timer: (re)arm the context's one timer to fire once in
 *     timeout_us microseconds (0: as soon as the loop can); < 0: disarm.
 *     When it fires, call pgg_async_handle_timer(ac).
 *   cleanup: the context is being freed; free the adapter's state (data).
 */
typedef struct pgg_async_ev {
    void *data;
    void (*add_read)(void *data, pgg_async_sock *s);
    void (*del_read)(void *data, pgg_async_sock *s);
    void (*add_write)(void *data, pgg_async_sock *s);
    void (*del_write)(void *data, pgg_async_sock *s);
    void (*close_sock)(void *data, pgg_async_sock *s);
    void (*schedule_timer)(void *data, int64_t timeout_us);
    void (*cleanup)(void *data);
} pgg_async_ev;

/* A context for pool on one loop; attach an adapter before the first
 * call.  NULL with err set when out of memory, pool is NULL, or the pool's
 * on-connect hook has a callback (pgg_config_on_connect's fn: user code
 * that may block, run on each new connection: PGG_ENOTSUP).  An SQL-only
 * hook runs on the loop, on each connection the loop opens, before its
 * first query, within the connect bound. */
PGG_EXPORT pgg_async *pgg_async_new(pgg_pool *pool, pgg_error *err);

/* Install the loop's hooks (copied).  Adapters call it.  PGG_ESTATE when
 * hooks are installed already, PGG_EINVAL for a missing hook. */
PGG_EXPORT int pgg_async_attach(pgg_async *ac, const pgg_async_ev *ev);

/* The adapter's data (ev.data), for its own use. */
PGG_EXPORT void *pgg_async_ev_data(const pgg_async *ac);

/*
 * Free the context: every call still in flight completes first, with
 * PGG_ECANCELED (its query dropped and cancelled on the server; a call
 * its callback starts then is refused with PGG_ECLOSED), the
 * connections it keeps idle for its next calls go back to the pool, then
 * the adapter's cleanup runs.  The pool outlives it.  Accepts NULL.  Not
 * from inside a callback.  On the loop's thread, or on another once the
 * loop no longer runs the context (see Threads above): the callbacks of
 * calls still in flight then run on the freeing thread, and the adapter's
 * cleanup too.
 */
PGG_EXPORT void pgg_async_free(pgg_async *ac);

/*
 * Give back to the pool, now, every connection the context keeps idle for
 * its next calls (calls in flight keep theirs).  Kept connections go back
 * by themselves only while the loop runs (its 2 ms look): call this before
 * the loop stops running the context for a while (a server that turns its
 * loop only on demand, UV_RUN_NOWAIT or EVLOOP_ONCE between other work),
 * or blocking callers on other threads wait for them, up to their
 * deadline, while they sit idle.  With no call in flight, the context then
 * leaves the loop nothing to watch or time: a loop run until it has no
 * events (uv_run UV_RUN_DEFAULT, event_base_dispatch) returns at once
 * instead of after the 100 ms idle bound.  On the loop's thread; from a
 * callback too.  Accepts NULL.
 */
PGG_EXPORT void pgg_async_give_back(pgg_async *ac);

/*
 * Start a call; the arguments are those of pgg_exec, pgg_exec_params and
 * pgg_exec_prepared (pgguard.h), copied: the caller's buffers may go once
 * this returns.  PGG_OK: fn will be called once.  Any other return (err
 * filled, fn never called): PGG_EINVAL, PGG_ECLOSED, PGG_ENOMEM,
 * PGG_ESTATE (no adapter attached), PGG_ECANCELED (call->cancel fired
 * already), PGG_EBULKHEAD (the pool's bulkhead is full: refused at once,
 * never queued; also while blocking callers queue on it and another
 * thread is inside its lock, handing slots on: the loop never waits for
 * that lock).  *handle (may be NULL) identifies
 * the call for pgg_async_cancel; NULL when the call is refused.
 *
 * The deadline is call->timeout_ms (or call_timeout_ms) from now, bulkhead
 * included.  On the loop: the bulkhead never waits (bulkhead.max_wait_ms
 * does not apply), a cacheable read's answer is stored without waiting
 * for the cache's lock (queued for its holder when busy), and a failed
 * cacheable read whose fallback finds that lock busy looks again every
 * millisecond until it is free (its callback comes then, served by the
 * same rules as a blocking call, which would have waited for the lock), a call finding every connection of its host busy
 * (pool_max) waits for one on the loop (woken by this context's give-backs,
 * and looking every millisecond for other threads'), a connection a call
 * of this context used stays with the context, watched, for its next calls
 * (while the loop runs: given back within 2 ms when another borrower
 * waits for its host, when the host's role changes or its breaker opens or
 * is forced open, at once when a blocking call on the loop's own thread
 * would wait, after 100 ms unused, past max_lifetime_ms (closed then); and
 * on pgg_async_give_back and pgg_async_free; closed at once if its server
 * ends the session meanwhile), an idle connection is checked for liveness
 * without a round trip
 * (validate_after_idle_ms does not apply; a session found dead when used
 * is retried on a new connection, as for blocking calls), a read that
 * needs a WAL position goes to replicas known to have it and then to the
 * primary without waiting, a write that learns its position
 * (read_your_writes=pool, PGG_CALL_WANT_LSN) asks for it in a second round
 * trip once it committed, and a write refused by a demoted primary is
 * rerouted on what the pool knows without awaiting a health round.
 * call->cancel, when set, is looked at between attempts.  The loop never
 * waits for a lock another thread holds: a call whose borrow finds its
 * host's lock held looks again every millisecond, and one whose breaker
 * must decide under its lock (a half-open probe's permit, the end of the
 * open time) while another thread holds it does too, within its
 * attempt's deadline, refused then if it never got an answer.
 */
PGG_EXPORT int pgg_async_exec(pgg_async *ac, pgg_intent intent,
                              const char *sql, const pgg_call *call,
                              pgg_async_fn fn, void *userdata,
                              pgg_async_call **handle, pgg_error *err);
PGG_EXPORT int pgg_async_exec_params(pgg_async *ac, pgg_intent intent,
                                     const char *sql, int nparams,
                                     const Oid *types,
                                     const char *const *values,
                                     const int *lengths, const int *formats,
                                     const pgg_call *call, pgg_async_fn fn,
                                     void *userdata, pgg_async_call **handle,
                                     pgg_error *err);
PGG_EXPORT int pgg_async_exec_prepared(pgg_async *ac, pgg_intent intent,
                                       const char *name, int nparams,
                                       const char *const *values,
                                       const int *lengths, const int *formats,
                                       const pgg_call *call, pgg_async_fn fn,
                                       void *userdata,
                                       pgg_async_call **handle,
                                       pgg_error *err);

/*
 * A typed call (pgguard_types.h's pgg_execf) on the loop: cmdspec's
 * arguments are put into parameters now (libpqtypes' PQputvf, with the
 * pool's template) and sent in binary; the result is binary unless
 * call->result_format says otherwise: read it with PQgetf.  A connection
 * the call takes first gets what it lacks of PQinitTypes and the pool's
 * registrations (pgg_pool_register_types), on the loop, one round trip per
 * registration.  Returns as pgg_async_exec, and PGG_ETYPES (cmdspec or an
 * argument refused), PGG_ESTATE when no connection of the pool has been
 * prepared for libpqtypes yet (the loop does not wait to make one: call
 * pgg_pool_param once first, as a server does at start), PGG_ENOTSUP when
 * pgguard was built without libpqtypes.
 */
PGG_EXPORT int pgg_async_execf(pgg_async *ac, pgg_intent intent,
                               const pgg_call *call, pgg_async_fn fn,
                               void *userdata, pgg_async_call **handle,
                               pgg_error *err, const char *cmdspec, ...);

/*
 * End a call in flight now: its callback runs before this returns, with
 * PGG_ECANCELED; a query on the wire is dropped with its connection and
 * cancelled on the server from a worker thread; the attempt counts against
 * no host.  c must be a call whose callback has not started.
 */
PGG_EXPORT void pgg_async_cancel(pgg_async_call *c);

/* Calls in flight. */
PGG_EXPORT int pgg_async_pending(const pgg_async *ac);

/* For adapters. */
PGG_EXPORT int pgg_async_sock_fd(const pgg_async_sock *s);
/* A pointer the adapter may set (its watcher for s); NULL at first. */
PGG_EXPORT void **pgg_async_sock_data(pgg_async_sock *s);
PGG_EXPORT void pgg_async_handle_read(pgg_async_sock *s);
PGG_EXPORT void pgg_async_handle_write(pgg_async_sock *s);
PGG_EXPORT void pgg_async_handle_timer(pgg_async *ac);

#ifdef __cplusplus
}
#endif

#endif
