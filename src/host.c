#include "host.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autoprep.h"
#include "cancel.h"
#include "clock.h"
#include "error.h"
#include "tls.h"
#include "trylock.h"
#include "options.h"

int pgg__host_init(pgg_host *h, int index, const char *name,
                   const char *const *keys, const char *const *vals,
                   const pgg_host_limits *limits,
                   const pgg_breaker_config *breaker, const pgg_clock *clock,
                   pgg_error *err)
{
    int rc;

    memset(h, 0, sizeof *h);
    h->index = index;
    pgg__strlcpy(h->name, name, sizeof h->name);
    h->keys = keys;
    h->vals = vals;
    h->max = limits->max;
    h->min_idle = limits->min_idle;
    h->idle_timeout_ns = limits->idle_timeout_ns;
    h->max_lifetime_ns = limits->max_lifetime_ns;
    h->validate_ns = limits->validate_ns;
    h->alive_check_ns = limits->alive_check_ns;
    h->connect_timeout_ns = limits->connect_timeout_ns;
    h->quick_ns = h->alive_check_ns < h->validate_ns ? h->alive_check_ns : h->validate_ns;
    if (h->idle_timeout_ns > 0 && h->idle_timeout_ns < h->quick_ns)
        h->quick_ns = h->idle_timeout_ns;
    h->on_connect = limits->on_connect;
    h->canceller = limits->canceller;
    atomic_init(&h->role, PGG_ROLE_UNKNOWN);
    pgg__hold_init(&h->hold);
    atomic_init(&h->n_busy, 0);
    atomic_init(&h->role_seen_ns, 0);
    atomic_init(&h->seek_primary_until_ns, 0);
    atomic_init(&h->latency_ns, 0);
    atomic_init(&h->suspect_until_ns, 0);
    for (int i = 0; i < PGG_PARK_SLOTS; i++)
        atomic_init(&h->park[i].link, NULL);
    atomic_init(&h->park_block, 0);
    atomic_init(&h->n_kept, 0);
    rc = pgg__breaker_init(&h->breaker, breaker, pgg__clock_now(clock), err);
    if (rc != PGG_OK)
        return rc;
    pthread_mutex_init(&h->mu, NULL);
    pgg__cond_init(&h->back_cv);
    atomic_init(&h->starting, false);
    atomic_init(&h->n_back_waiting, 0);
    atomic_init(&h->n_lost, 0);
    atomic_init(&h->ended_seen, false);
    atomic_init(&h->silent_since_ns, 0);
    atomic_init(&h->handed, NULL);
    atomic_init(&h->asked, NULL);
    atomic_init(&h->closed, false);
    atomic_init(&h->owed_links, NULL);
    atomic_init(&h->owed_slots, 0);
    atomic_init(&h->owed_connects, 0);
    atomic_init(&h->owed_failed, 0);
    atomic_init(&h->owed_spares, 0);
    atomic_init(&h->owed, false);
    return PGG_OK;
}

/* The link's memory (its connection is closed or handed on already). */
static void link_free(pgg_link *l)
{
    /* No loop watches it: async.c forgets its socket before giving it back. */
    if (l->loop_fd > 0)
        close(l->loop_fd);
    pgg__autoprep_free(l->autoprep);
    free(l);
}

/* Closed here, at the pool's end (pgg__host_destroy: the closer is gone). */
static void close_list_now(pgg_link *l)
{
    while (l) {
        pgg_link *next = l->next;
        PQfinish(l->conn);
        link_free(l);
        l = next;
    }
}

static pgg_canceller *closer_of(const pgg_host *h)
{
    return h->canceller ? *h->canceller : NULL;
}

/*
 * l's session dropped: closed by the pool's closer thread, with the loop's
 * descriptor of its socket (link.h, pgg__canceller_close), not by the
 * thread that drops it.  Each close is its socket's teardown, 20-90 us of
 * kernel time, and the thread may be an event loop's: one session the
 * server ended drops every idle sibling of it in one callback.  Its slot
 * may be given back before the close is done: PQfinish never waited for
 * the server to let the session go either.
 */
static void link_close(pgg_host *h, pgg_link *l)
{
    pgg__canceller_close(closer_of(h), l->conn, l->loop_fd);
    l->conn = NULL;
    l->loop_fd = 0;
    link_free(l);
}

static void close_list(pgg_host *h, pgg_link *l)
{
    while (l) {
        pgg_link *next = l->next;
        link_close(h, l);
        l = next;
    }
}

void pgg__host_destroy(pgg_host *h)
{
    if (!h)
        return;
    for (int i = 0; i < PGG_PARK_SLOTS; i++)
        close_list_now(atomic_exchange(&h->park[i].link, NULL));
    close_list_now(h->idle);
    h->idle = NULL;
    /* Given back by a loop that could not take mu, never settled: every
     * context settles what it owes before it is freed, so only a pool
     * freed under a live context's feet leaves any. */
    close_list_now(atomic_exchange(&h->owed_links, NULL));
    /* Asked after the health thread stopped: never made. */
    for (pgg_asked *a = pgg__host_take_asked(h), *next; a; a = next) {
        next = a->next;
        pgg__error_set(&a->err, PGG_ECLOSED, NULL, h->name, "pool closed");
        if (!pgg__asked_done(a))
            PQfinish(a->conn);
        pgg__asked_unref(a);
    }
    /* Handed on after the health thread stopped: never taken. */
    for (pgg_handed *c = pgg__host_take_handed(h), *next; c; c = next) {
        next = c->next;
        PQfinish(c->conn);
        free(c);
    }
    pgg__breaker_destroy(&h->breaker);
    pthread_cond_destroy(&h->back_cv);
    pthread_mutex_destroy(&h->mu);
}

static bool expired(const pgg_host *h, const pgg_link *l, int64_t now)
{
    if (pgg__link_too_old(l, now))
        return true;
    return h->idle_timeout_ns > 0 && now - l->last_used_ns >= h->idle_timeout_ns;
}

/* An empty query: the cheapest round trip that proves the session works. */
static bool validate(pgg_host *h, pgg_link *l, int64_t deadline_ns)
{
    static const pgg_query empty = {.sql = ""};
    PGresult *res = NULL;
    pgg_attempt_end end;
    int rc;

    rc = pgg__link_exec(l->conn, &empty, deadline_ns, h->name, &res, &end, NULL);
    rc = rc == PGG_OK && PQresultStatus(res) == PGRES_EMPTY_QUERY &&
         pgg__link_reusable(l->conn);
    PQclear(res);
    return rc;
}

/* What pool.c's pgg__host_failure says, for a layer below the pool. */
static bool counts_against_host(pgg_class cls)
{
    return cls == PGG_CLASS_CONNECTION || cls == PGG_CLASS_TIMEOUT ||
           cls == PGG_CLASS_UNAVAILABLE;
}

/* The hook's SQL failed: a server error the classifier blames on the host
 * (57P01 on its way down, 53300...), or one it does not (the hook's own
 * mistake: a syntax error, a missing role). */
static int hook_sql_failed(const pgg_host *h, PGresult *res, pgg_attempt_end end,
                           bool *host_fault, pgg_error *err)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    pgg_verdict v = pgg__classify(NULL, end, res ? PQresultStatus(res) : PGRES_FATAL_ERROR,
                                  state, PGG_WRITE, false);
    char msg[256];

    *host_fault = end != PGG_END_RESULT || counts_against_host(v.cls);
    if (end != PGG_END_RESULT) {
        /* link_exec's record says what happened (timeout, lost session);
         * the code comes from the end, for callers passing no record */
        int code = end == PGG_END_DEADLINE ? PGG_ETIMEDOUT : PGG_ECONNECT;

        if (err) {
            pgg__strlcpy(msg, err->message, sizeof msg);
            snprintf(err->message, sizeof err->message, "on_connect: %s", msg);
            err->code = code;
        }
        return code;
    }
    pgg__strlcpy(msg, PQresultErrorMessage(res), sizeof msg);
    msg[strcspn(msg, "\n")] = '\0';
    return pgg__error_set(err, *host_fault ? (v.code ? v.code : PGG_EUNAVAILABLE) : PGG_EONCONNECT,
                          state, h->name, "on_connect: SQL failed: %s", msg);
}

const char *pgg__host_hook_sql(const pgg_host *h, bool *other)
{
    const pgg_on_connect *hook = h->on_connect;

    *other = hook && hook->fn;
    return hook ? hook->sql : NULL;
}

int pgg__host_hook_sql_done(const pgg_host *h, PGresult *res,
                            pgg_attempt_end end, bool *host_fault,
                            pgg_error *err)
{
    *host_fault = false;
    if (end != PGG_END_RESULT || (PQresultStatus(res) != PGRES_COMMAND_OK &&
                                  PQresultStatus(res) != PGRES_TUPLES_OK))
        return hook_sql_failed(h, res, end, host_fault, err);
    return PGG_OK;
}

int pgg__host_hook_usable(const pgg_host *h, PGconn *conn, pgg_error *err)
{
    /* Lent to the next caller as it stands: no transaction, no results
     * waiting. */
    if (!pgg__link_reusable(conn))
        return pgg__error_set(err, PGG_EONCONNECT, NULL, h->name,
                              "on_connect: the hook left the session in a "
                              "transaction or busy");
    return PGG_OK;
}

void pgg__host_close_session(pgg_host *h, PGconn *conn)
{
    pgg__canceller_close(closer_of(h), conn, 0); /* link_close's reason */
}

void pgg__host_hook_failed(pgg_host *h, PGconn *conn, int rc)
{
    if (rc == PGG_ETIMEDOUT) /* its SQL may still run: cancel it */
        pgg__canceller_drop(closer_of(h), h->index, conn);
    else
        pgg__host_close_session(h, conn);
}

int pgg__host_on_connect(pgg_host *h, PGconn *conn, int64_t deadline_ns,
                         bool *host_fault, pgg_error *err)
{
    const pgg_on_connect *hook = h->on_connect;

    *host_fault = false;
    if (!hook || (!hook->sql && !hook->fn))
        return PGG_OK;
    if (hook->sql) {
        pgg_query q = {.sql = hook->sql};
        PGresult *res = NULL;
        pgg_attempt_end end;
        int rc;

        pgg__link_exec(conn, &q, deadline_ns, h->name, &res, &end, err);
        rc = pgg__host_hook_sql_done(h, res, end, host_fault, err);
        PQclear(res);
        if (rc != PGG_OK)
            return rc;
    }
    if (hook->fn) {
        char why[256] = "";
        int64_t left = deadline_ns - pgg__now_ns();
        int rc;

        if (left <= 0) {
            *host_fault = true;
            return pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                                  "on_connect: the connect bound ran out "
                                  "before the callback");
        }
        rc = hook->fn(conn, (int)((left + PGG_NS_PER_MS - 1) / PGG_NS_PER_MS),
                      hook->userdata, why, sizeof why);
        why[sizeof why - 1] = '\0';
        if (pgg__now_ns() > deadline_ns) {
            *host_fault = true;
            return pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                                  "on_connect: the callback returned after "
                                  "the connect bound");
        }
        if (PQstatus(conn) != CONNECTION_OK) {
            *host_fault = true;
            return pgg__error_set(err, PGG_ECONNECT, NULL, h->name,
                                  "on_connect: the session broke in the "
                                  "callback");
        }
        if (rc != 0)
            return pgg__error_set(err, PGG_EONCONNECT, NULL, h->name,
                                  "on_connect: the callback refused the "
                                  "connection: %s",
                                  why[0] ? why : "(no reason given)");
    }
    return pgg__host_hook_usable(h, conn, err);
}

/*
 * A new connection within deadline_ns and connect_timeout_ms.  *cut: the
 * deadline (or the caller's cancel) ended the connect before its own
 * bound, the call's timeout and not the host's failure; the connect goes
 * on as a spare when the host takes it ("Handed connects").
 */
static int connect_new(pgg_host *h, int64_t deadline_ns, pgg_link **out,
                       bool *hook_refused, bool *cut, pgg_error *err)
{
    int64_t now = pgg__now_ns();
    int64_t own = now + h->connect_timeout_ns;
    int64_t bound = own;
    /* Its backend may exist from here on. */
    int64_t born = now;
    PGconn *conn = NULL;
    pgg_link *l;
    bool host_fault;
    int pending = 0;
    int rc;

    *hook_refused = false;
    *cut = false;
    if (bound > deadline_ns)
        bound = deadline_ns;
    atomic_fetch_add(&h->connects, 1);
    rc = pgg__link_connect_until(h->keys, h->vals, bound, h->name, &conn,
                                 &pending, err);
    if (rc == PGG_ETIMEDOUT && (*cut = pgg__now_ns() < own)) {
        bool handed = conn && pgg__host_hand_connect(h, conn, pending, born);

        if (!handed)
            PQfinish(conn);
        if (err)
            snprintf(err->message, sizeof err->message,
                     "connect: the call's deadline came first; %s",
                     handed ? "the connect goes on and its session joins the "
                              "pool"
                            : "connect given up");
        return rc;
    }
    if (rc != PGG_OK) {
        /* Its own bound ran out (closed here), or it failed. */
        PQfinish(conn);
        atomic_fetch_add(&h->connect_failures, 1);
        return rc;
    }
    rc = pgg__host_on_connect(h, conn, bound, &host_fault, err);
    if (rc != PGG_OK) {
        pgg__host_hook_failed(h, conn, rc);
        if (host_fault)
            atomic_fetch_add(&h->connect_failures, 1);
        *hook_refused = !host_fault;
        return rc;
    }
    l = calloc(1, sizeof *l);
    if (!l) {
        PQfinish(conn);
        return pgg__error_set(err, PGG_ENOMEM, NULL, h->name, "out of memory");
    }
    /* The hook read on it as it liked (link.h's recv wait). */
    if (h->on_connect && (h->on_connect->sql || h->on_connect->fn))
        l->recv_mode = PGG_RECV_NEVER;
    now = pgg__now_ns();
    l->conn = conn;
    l->expires_ns = pgg__link_expiry(h, now);
    l->last_used_ns = now;
    l->born_ns = born;
    l->types_gen = 0;
    l->fresh = true;
    l->next = NULL;
    *out = l;
    return PGG_OK;
}

static void release_slot(pgg_host *h, pgg_link *keep);

/* --------------------------------------------------------------- owed */

/*
 * Owed.  An event loop's thread never waits for mu: the other threads
 * that take it (the health thread, blocking callers, other loops) hold it
 * briefly, but one preempted inside it (2 shared vCPUs, busy servers)
 * made the loop sleep a scheduler slice, as the closer's lock did in round
 * 13 (3.9-5.7 ms).  On a loop's thread (pgg__host_loop set by async.c
 * around its host operations) mu is tried PGG_TRYLOCK_TRIES times
 * (trylock.h), and when it stays busy:
 *   - a borrow (pgg__host_try_borrow) takes nothing and says so
 *     (*lock_busy): the call looks again on its timer, as a parked call
 *     does, without counting as a waiter (nothing is short but the lock);
 *   - a slot's release (a give-back that could not park, a discard, a
 *     dead idle or parked connection met by the loop's borrow), a connect
 *     made (the call is lent its link at once: n_busy counted now, with
 *     an atomic add, so busy + connecting over-counts it until settled,
 *     never under-counts), a spare ended, or a failed connect whose call
 *     cannot look again (a cancel, a free) are owed: pushed onto the
 *     host's owed records without mu (a compare-and-swap push, atomic
 *     counts), `owed` set, and the context told (pgg_host_loop.owe), which
 *     settles every host's records on its timer (pgg__host_settle_owed,
 *     tried too) until none is left, and with a wait when it is freed;
 *     the first record since the last application also tells the health
 *     thread (owed_first), which settles with a wait on its next turn: a
 *     loop run on demand may not turn again soon, and a blocking borrower
 *     asleep on the host is woken only by whoever applies the records;
 *   - a failed connect whose call can look again is retried by the call
 *     on its timer (pgg__host_connect_failed: PGG_CONNECT_LATER), its
 *     error and its connection slot kept by the call: the refusal rules
 *     ("Refused") need mu, and say whether the call waits;
 *   - an idle connection's look after a session ended (drop_dead) or
 *     the breaker's trim of an opened host is left to the health thread's
 *     sweep (ended_seen), which looks at every idle session: those born
 *     before the ended one are not closed without a look then, and an
 *     opened host keeps its live ones;
 *   - an ask of a handed spare is refused (the connect is dropped, not
 *     handed on), and the last error's text for stats is not noted.
 * Whoever takes mu to wait or to look (a blocking borrower before and
 * after each wait, the health thread's trim and sweep, close) applies the
 * records too, so a blocking borrower on the loop's own thread, which no
 * loop turn serves while it waits, does not wait for what its loop owes.
 * A record only ever frees or gives back: pool_max holds throughout (what
 * is owed is still counted busy, connecting or on its way), and no link
 * is lent while it is owed.
 */
PGG_TLS pgg_host_loop *pgg__host_loop;

/* mu tried a few times (false: busy, not taken; trylock.h). */
static bool host_trylock(pgg_host *h)
{
    return pgg__trylock_few(&h->mu);
}

/* mu taken: waited for, except on an event loop's thread, where it is
 * only tried (false: busy, not taken). */
static bool host_lock(pgg_host *h)
{
    if (!pgg__host_loop) {
        pthread_mutex_lock(&h->mu);
        return true;
    }
    return host_trylock(h);
}

/* A record was pushed: whoever applies them next finds it, and the loop
 * that owes it settles it (its timer) if nobody did. */
static void owe(pgg_host *h)
{
    /* The first since the last application: an applier that takes owed
     * after this exchange applies every record pushed before it, and a
     * record pushed after it finds owed false again and tells anew. */
    bool first = !atomic_exchange_explicit(&h->owed, true, memory_order_seq_cst);

    if (pgg__host_loop) {
        pgg__host_loop->owe(pgg__host_loop);
        if (first && pgg__host_loop->owed_first)
            pgg__host_loop->owed_first(pgg__host_loop);
    }
}

static void owe_link(pgg_host *h, pgg_link *l)
{
    pgg_link *head = atomic_load_explicit(&h->owed_links, memory_order_relaxed);

    do
        l->next = head;
    while (!atomic_compare_exchange_weak_explicit(&h->owed_links, &head, l,
                                                  memory_order_release,
                                                  memory_order_relaxed));
    owe(h);
}

static void owe_count(pgg_host *h, _Atomic int *count)
{
    atomic_fetch_add_explicit(count, 1, memory_order_relaxed);
    owe(h);
}

/* ------------------------------------------------------------ parking */

/*
 * A connection given back waits for its thread's next call in a slot of
 * its own instead of the idle list: a successful call then takes no host
 * lock at all (it took two mutex sections, about 230 instructions, and
 * every thread's calls met on that lock).  Threads are spread over the
 * slots round-robin; two threads that share a slot just find it taken or
 * empty more often and use the idle list.
 *
 * A parked connection stays counted in n_busy, so that every decision made
 * under mu (room for a new connection, pool_max) counts it; it moves only
 * with one atomic exchange or compare-and-swap on its slot, and whoever
 * empties a slot owns what was in it:
 *   - its thread takes it back when it borrows (no count changes);
 *   - a borrower that finds no idle connection takes any parked one before
 *     it connects or waits (no count changes: busy it was, busy it is);
 *   - trim (the health thread, a dead session's siblings) and close move
 *     parked connections to the idle list (n_busy--, n_idle++) first.
 * Lost wake-ups: a borrower that is about to wait joins the queue
 * ("Waiting in turn"), adds one to park_block for as long as it queues,
 * and then moves what is parked to the idle list; a give-back parks and
 * then reads park_block (both sequentially consistent).  So either the
 * borrower sees the parked connection, or the give-back sees the borrower,
 * takes its connection back out of the slot (unless someone already took
 * it) and gives it back under mu, which wakes the queue's head.  Close adds
 * PARK_CLOSED to park_block before it empties the slots, so nothing parks
 * in a closed host for good.  The halves on the path of every call, take
 * back and park, are inline in host.h.
 */
#define PARK_CLOSED PGG_PARK_CLOSED

PGG_TLS unsigned pgg__park_index_plus1;
PGG_TLS void (*pgg__host_loop_give_back)(void);
static atomic_uint park_next;

unsigned pgg__park_assign(void)
{
    unsigned i = atomic_fetch_add_explicit(&park_next, 1,
                                           memory_order_relaxed) %
                     PGG_PARK_SLOTS + 1;

    pgg__park_index_plus1 = i;
    return i;
}

/* Any parked connection, now the caller's (still counted busy). */
static pgg_link *unpark_any(pgg_host *h)
{
    for (int i = 0; i < PGG_PARK_SLOTS; i++) {
        pgg_link *l;

        if (!atomic_load_explicit(&h->park[i].link, memory_order_seq_cst))
            continue;
        l = atomic_exchange_explicit(&h->park[i].link, NULL, memory_order_seq_cst);
        if (l)
            return l;
    }
    return NULL;
}

static int parked_count(pgg_host *h)
{
    int n = 0;

    for (int i = 0; i < PGG_PARK_SLOTS; i++)
        n += atomic_load_explicit(&h->park[i].link, memory_order_relaxed) != NULL;
    return n;
}

/* Under mu: every parked connection goes to the idle list; returns how
 * many did. */
static int unpark_all_locked(pgg_host *h)
{
    int n = 0;

    for (int i = 0; i < PGG_PARK_SLOTS; i++) {
        pgg_link *l;

        /* seq_cst: queue_join's fetch_add on park_block and this look at
         * the slots pair with pgg__host_park's CAS of a slot and its look
         * at park_block (store buffering: each side must see the other's
         * write).  A relaxed load after a seq_cst RMW is not ordered by it
         * on weak memory (ARM64), and both could miss: a connection left
         * parked while a waiter sleeps to its deadline.  A plain load on
         * x86-64 either way (review11). */
        if (!atomic_load_explicit(&h->park[i].link, memory_order_seq_cst))
            continue;
        l = atomic_exchange_explicit(&h->park[i].link, NULL, memory_order_acquire);
        if (!l)
            continue;
        l->next = h->idle;
        h->idle = l;
        h->n_idle++;
        h->n_busy--;
        n++;
    }
    return n;
}

int pgg__host_busy(pgg_host *h)
{
    int n = atomic_load_explicit(&h->n_busy, memory_order_relaxed) -
            parked_count(h) - atomic_load_explicit(&h->n_kept, memory_order_relaxed);

    return n > 0 ? n : 0;
}

/* A token per live thread: the address of a thread-local. */
PGG_TLS char pgg__thread_token;

/*
 * The idle connection this thread gave back last, else the most recently
 * used one; returns the link to it in the list.  A thread that finds its
 * own connection again reuses a socket and a server backend nobody else
 * touched since: warm caches on both sides, and far less kernel time per
 * call than a connection another core just used (measured in issue 10:
 * client CPU 1.54x raw libpq without, 1.13x with, at 8 threads).  The walk
 * is bounded by pool_max and stays short under load, when few are idle.
 */
static pgg_link **pick_idle(pgg_host *h)
{
    const void *me = &pgg__thread_token;

    for (pgg_link **pp = &h->idle; *pp; pp = &(*pp)->next)
        if ((*pp)->owner == me)
            return pp;
    return &h->idle;
}

/* Under mu: the next idle connection within its age, now counted busy, or
 * NULL; the expired ones met on the way go to *doomed, for the caller to
 * close once mu is released. */
static pgg_link *take_idle_locked(pgg_host *h, int64_t now, pgg_link **doomed)
{
    while (h->idle) {
        pgg_link **pp = pick_idle(h);
        pgg_link *l = *pp;

        *pp = l->next;
        h->n_idle--;
        if (expired(h, l, now)) {
            l->next = *doomed;
            *doomed = l;
            continue;
        }
        h->n_busy++;
        l->next = NULL;
        return l;
    }
    return NULL;
}

/* ---------------------------------------------------- waiting in turn */

/*
 * Blocking borrowers that find nothing to take wait in a queue, oldest
 * first, and take in its order: with n connections idle, the first n
 * waiters take them; with room under pool_max for m more, the next m
 * connect.  A borrower that comes while others queue counts them all
 * ahead of it: it takes at once only what is left over for it (more idle
 * than waiters), else it queues behind them, whatever is idle.  Before, a
 * give-back went to the idle list and woke a waiter, and the thread that
 * gave it back, running already, took it again on its next call ahead of
 * the waiter, which woke to find nothing: under saturation (more threads
 * than pool_max) a waiter could wait out its deadline while newcomers
 * were served (the event loop has its own rule: async.c, unpark).
 *
 * Every connection stays on the idle list, not handed to a waiter: a
 * waiter that leaves without taking (its deadline, its cancel, the pool
 * closed) moves those behind it up, and the one that becomes entitled
 * is woken (wake_entitled); nothing is lost or lent twice.  A waiter
 * leaves the queue when it takes something (those behind it keep their
 * entitlement: one fewer ahead, one fewer idle) and, if that fails (a dead
 * session, a full server), comes back to its place (its ticket).  Each
 * waiter sleeps on a condition variable of its own: a give-back wakes the
 * one it entitles, not every waiter; by position, not only the head, so a
 * head slow to be scheduled holds up one connection, not all of them.
 * While anyone queues, park_block counts it and nothing parks: every
 * give-back comes here, under mu.
 *
 * Asks of a refusing server ("Refused") are not queued: each call asks
 * when no ask that started after it came is on its way, as before.  The
 * loop's calls do not queue (pgg__host_try_borrow takes what is idle on
 * their looks; their own rule makes a new loop call wait behind any
 * waiter, pgg__host_awaited_beyond).  The uncontended path does not come
 * here (parking), and a borrow that finds the queue empty takes at once
 * as before.
 */
typedef struct pgg_host_waiter pgg_host_waiter;

struct pgg_host_waiter {
    pthread_cond_t cv;
    uint64_t ticket; /* its place: 0 until it first queues */
    struct pgg_host_waiter *prev, *next;
    bool queued, cv_ready;
};

/* Under mu: connects pool_max still has room for. */
static int room_locked(const pgg_host *h)
{
    int n = h->max - (h->n_busy + h->n_connecting + h->n_idle);

    return n > 0 ? n : 0;
}

/* Under mu: the waiters ahead of w (every one, when w does not queue). */
static int ahead_of(const pgg_host *h, const pgg_host_waiter *w)
{
    int n = 0;

    if (!w->queued)
        return h->n_queued;
    for (const pgg_host_waiter *i = h->wait_head; i != w; i = i->next)
        n++;
    return n;
}

/* Under mu: wake the waiters entitled to what is there (the first n_idle
 * take the idle connections, the next ones connect in the room left);
 * those woken already and not yet running are signalled for nothing. */
static void wake_entitled(pgg_host *h)
{
    int n = h->n_idle + room_locked(h);

    for (pgg_host_waiter *w = h->wait_head; w && n > 0; w = w->next, n--)
        pthread_cond_signal(&w->cv);
}

/* Under mu: every waiter looks again (the pool closed, a refusal). */
static void wake_all(pgg_host *h)
{
    for (pgg_host_waiter *w = h->wait_head; w; w = w->next)
        pthread_cond_signal(&w->cv);
}

/* Under mu: a connection taken (counted busy) was closed instead of lent,
 * having been looked at without mu: its room goes to the waiters it now
 * entitles, who may have queued meanwhile.  The taker, when it is not in
 * the queue itself, counts them all ahead of it and queues behind them:
 * woken by nobody, both slept until their deadlines with the pool empty. */
static void taken_closed_locked(pgg_host *h)
{
    h->n_busy--;
    wake_entitled(h);
}

/*
 * Under mu: w joins the queue at its place (a new ticket the first time;
 * its old one when it comes back after a failed take).  Parking stops and
 * what was parked goes to the idle list, for the waiters in their order
 * (see "Parking": a give-back that parks then sees park_block and backs
 * out).  False when w's condition variable cannot be made.
 */
static bool queue_join(pgg_host *h, pgg_host_waiter *w)
{
    pgg_host_waiter *after;

    if (!w->cv_ready) {
        if (pgg__cond_init(&w->cv) != 0)
            return false;
        w->cv_ready = true;
    }
    if (!w->ticket)
        w->ticket = ++h->wait_tickets;
    for (after = h->wait_tail; after && after->ticket > w->ticket; after = after->prev)
        ;
    w->prev = after;
    w->next = after ? after->next : h->wait_head;
    if (w->next)
        w->next->prev = w;
    else
        h->wait_tail = w;
    if (after)
        after->next = w;
    else
        h->wait_head = w;
    w->queued = true;
    h->n_queued++;
    atomic_fetch_add_explicit(&h->park_block, 1, memory_order_seq_cst);
    if (unpark_all_locked(h) > 0)
        wake_entitled(h);
    return true;
}

/* Under mu: w leaves the queue (it took something, or gives up); those
 * behind it move up, and one may be entitled now. */
static void queue_leave(pgg_host *h, pgg_host_waiter *w)
{
    if (!w->queued)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        h->wait_head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        h->wait_tail = w->prev;
    w->prev = w->next = NULL;
    w->queued = false;
    h->n_queued--;
    atomic_fetch_sub_explicit(&h->park_block, 1, memory_order_relaxed);
    wake_entitled(h);
}

/* Under mu: sessions of ours on the host, busy, idle or being opened.  A
 * refusal for want of room (53300) while one is on its way is waited for
 * like one while ours are busy: a connect that raced its siblings' must not
 * fail the call as if the pool had no session there.  Idle ones count too:
 * those given back while this connect was on its way (it started when none
 * was idle) are what filled the server, and the caller takes one. */
static int ours(const pgg_host *h)
{
    return h->n_busy + h->n_connecting + h->n_idle;
}

/* How long a host that refused a session as full (53300) gets no new
 * connect attempt while sessions of ours are out to come back. */
#define FULL_RETRY_NS (100 * PGG_NS_PER_MS)

/*
 * Refused.  A server that refused a session (53300: max_connections or the
 * role's limit taken by other clients; 57P03: starting up or shutting
 * down) while none of ours is there has nothing of ours to wait for.  Until
 * a connect succeeds, every connect is an ask of it, and a call:
 *   - hears the refusal of an ask that started after it came (at the same
 *     reading or later) without a connect of its own (PGG_EUNAVAILABLE with
 *     its SQLSTATE);
 *   - waits for such an ask while it is on its way, or for room under
 *     pool_max, within its deadline;
 *   - else asks itself, at once.
 * So no call hears an answer older than itself, as with a client that
 * connects on every call (libpq multi-host): the first call after a slot
 * frees finds it.  No call makes more than one ask (so the server forks no
 * more backends than for such a client), and calls that came before an ask
 * started share it (an event loop's parked calls).  Measured and left
 * (tests/bench/faults, max-connections): a pause between asks (5 ms,
 * before) told calls an older refusal, asked a full server half as often
 * as libpq's two writers, and wrote first a call period after libpq after
 * the slots freed; one ask at a time made a call wait for a slow ask that
 * started before it came (at load 10, where an ask took up to 113 ms, the
 * first write came up to 31 ms after libpq's); sharing asks that started
 * up to 1 ms before a call came, at load 30, kept the two writers in step
 * (both late, both calling at once, both told one refusal): the pool asked
 * 40-50 % less often than libpq again.  Any other outcome ends this: a
 * success, or a failure that is not a capacity refusal (the host's own
 * rules then).
 * Until a first refusal nobody knows the server refuses: calls connect
 * side by side, as a pool grows.
 */

/*
 * Under mu, after a connect of ours failed (cerr: why; asked_ns: when it
 * started): what the refusal means for the next borrows,
 * decided once for the blocking borrow and the loop's.  Refused (53300,
 * 57P03) with none of ours there, or while the other connects on their way
 * are asks of a refusing server: "Refused" above; the caller hears it.  The
 * server has no room for another session (53300: its max_connections, or
 * the role's limit) but ours are working: the host is healthy and full; no
 * new connect for FULL_RETRY_NS, and true: the caller waits for one of ours
 * to come back, as at pool_max, rather than fail and count it against the
 * host.  Anything else ends the refusing state.
 */
static bool refusal_locked(pgg_host *h, const pgg_error *cerr, int64_t asked_ns)
{
    bool capacity = pgg__capacity_refusal(cerr->sqlstate);

    if (capacity && (h->refused || ours(h) == 0)) {
        if (!h->refused || asked_ns > h->refused_asked_ns)
            h->refused_asked_ns = asked_ns;
        h->refused = true;
        pgg__strlcpy(h->refused_state, cerr->sqlstate, sizeof h->refused_state);
        pgg__strlcpy(h->refused_msg, cerr->message, sizeof h->refused_msg);
    } else if (ours(h) > 0 && strcmp(cerr->sqlstate, "53300") == 0) {
        h->full_until_ns = pgg__now_ns() + FULL_RETRY_NS;
        return true;
    } else {
        h->refused = false;
    }
    /* Borrowers waiting for an ask, or for the sibling connects that raced
     * this one (may_connect_locked), hear the outcome now. */
    wake_all(h);
    return false;
}

/* Under mu: a connect of ours succeeded, its link counted busy already;
 * the server is not refusing. */
static void connect_counted_locked(pgg_host *h)
{
    h->full_until_ns = 0;
    if (h->refused) {
        h->refused = false;
        /* Waiters for an ask connect for themselves now. */
        wake_all(h);
    }
}

/* Under mu: a connect of ours succeeded; the server is not refusing. */
static void connected_locked(pgg_host *h)
{
    h->n_busy++;
    connect_counted_locked(h);
}

/* Under mu: what event loops owe ("Owed") applied; the links given back
 * to a closed host go to *doomed, for the caller to close once mu is
 * released. */
static void owed_apply_locked(pgg_host *h, pgg_link **doomed)
{
    pgg_link *l;
    int n;

    if (!atomic_load_explicit(&h->owed, memory_order_relaxed) ||
        !atomic_exchange_explicit(&h->owed, false, memory_order_seq_cst))
        return;
    l = atomic_exchange_explicit(&h->owed_links, NULL, memory_order_acquire);
    while (l) {
        pgg_link *next = l->next;

        h->n_busy--;
        if (h->closed) {
            l->next = *doomed;
            *doomed = l;
        } else {
            l->next = h->idle;
            h->idle = l;
            h->n_idle++;
        }
        l = next;
    }
    h->n_busy -= atomic_exchange_explicit(&h->owed_slots, 0, memory_order_relaxed);
    h->n_connecting -= atomic_exchange_explicit(&h->owed_failed, 0,
                                                memory_order_relaxed);
    n = atomic_exchange_explicit(&h->owed_connects, 0, memory_order_relaxed);
    h->n_connecting -= n;
    if (n > 0)
        connect_counted_locked(h);
    h->n_spares -= atomic_exchange_explicit(&h->owed_spares, 0, memory_order_relaxed);
    /* What is free again goes to the waiters it entitles. */
    wake_entitled(h);
}

bool pgg__host_settle_owed(pgg_host *h, bool wait)
{
    pgg_link *doomed = NULL;

    if (!atomic_load_explicit(&h->owed, memory_order_relaxed))
        return true;
    if (wait)
        pthread_mutex_lock(&h->mu);
    else if (!host_trylock(h))
        return false;
    owed_apply_locked(h, &doomed);
    pthread_mutex_unlock(&h->mu);
    close_list(h, doomed);
    return !atomic_load_explicit(&h->owed, memory_order_relaxed);
}

/* The refusal told to a call that did not ask itself ("Refused"). */
static int refusal_error_locked(const pgg_host *h, int64_t now, pgg_error *err)
{
    return pgg__error_set(err, PGG_EUNAVAILABLE, h->refused_state, h->name,
                          "%s (asked %.1f ms ago, after this call came)",
                          h->refused_msg,
                          (double)(now - h->refused_asked_ns) /
                              (double)PGG_NS_PER_MS);
}

/*
 * Under mu: a new connect may start: room under pool_max, and the server
 * not found full (refusal_locked) moments ago while sessions of ours, busy
 * or still connecting, are out: those are waited for first.  (A refusal
 * that raced sibling connects must not connect again while they run: the
 * last of them to be refused tells every waiter.)
 */
static bool may_connect_locked(const pgg_host *h, int64_t now)
{
    /* Full (53300) with a session or a connect of ours there: wait for it
     * (it comes back, or fails and signals), not connect again (two
     * callers whose connects raced refused each other into a connect every
     * few ms until their deadline).  A spare on its way (queued at the
     * server before this connect would be) is waited for, one borrower per
     * spare (an event loop's parked calls wait for every spare). */
    return h->n_busy + h->n_connecting + h->n_idle < h->max &&
           (now >= h->full_until_ns || ours(h) == 0) &&
           h->n_spares <= h->n_waiting;
}

/* What a borrow that found nothing idle does next (both borrows). */
typedef enum connect_verdict {
    CONNECT_WAIT,    /* wait: busy, full, or an ask on its way */
    CONNECT_NEW,     /* connect (an ask, when the server is refusing) */
    CONNECT_REFUSED  /* fail with the refusal of an ask made for it */
} connect_verdict;

/* Under mu, for a call that came at since ("Refused"). */
static connect_verdict connect_verdict_locked(const pgg_host *h, int64_t since,
                                              int64_t now)
{
    if (h->refused) {
        /* While refusing, every connect on its way is an ask. */
        if (h->refused_asked_ns >= since)
            return CONNECT_REFUSED;
        return (h->n_connecting > 0 && h->last_ask_ns >= since) ||
                       h->n_connecting >= h->max
                   ? CONNECT_WAIT
                   : CONNECT_NEW;
    }
    return may_connect_locked(h, now) ? CONNECT_NEW : CONNECT_WAIT;
}

/* Under mu: a connect starts now. */
static void connect_begin_locked(pgg_host *h, int64_t now)
{
    h->n_connecting++;
    if (h->refused)
        h->last_ask_ns = now;
}

/*
 * A connect of a caller's own is about to start: if the health thread has
 * a replacement of an ended session still to start (n_lost), this connect
 * is that replacement.  A caller whose write failed on an ended session
 * comes back within its period, often before the health thread has run:
 * its connect and the spare for the same session both forked a backend on
 * a server already busy with every client's reconnects (5 of 6 such
 * connects in the fault bench's trace).
 */
static void claim_lost(pgg_host *h)
{
    int lost = atomic_load_explicit(&h->n_lost, memory_order_relaxed);

    while (lost > 0 && !atomic_compare_exchange_weak(&h->n_lost, &lost, lost - 1))
        ;
}

/* Under mu: every connection busy (pool_max, or a full server while ours
 * are out) when the caller's wait ends: the error both borrows give. */
static int busy_error_locked(const pgg_host *h, int64_t now, pgg_error *err)
{
    if (h->refused)
        return pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                              "%s refused a session (%s); asked again, it "
                              "had not answered by the deadline",
                              h->name, h->refused_state);
    if (now < h->full_until_ns)
        return pgg__error_set(err, PGG_ETIMEDOUT, "53300", h->name,
                              "%s has no room for another session "
                              "(53300) and ours were busy until the "
                              "deadline",
                              h->name);
    if (h->n_spares > 0 && h->n_busy + h->n_connecting + h->n_idle < h->max)
        return pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                              "a connect to %s on its way (a spare, or one "
                              "an earlier call's deadline cut) had not "
                              "completed by the deadline",
                              h->name);
    return pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                          "all %d connections to %s busy until the "
                          "deadline (pool_max)",
                          h->max, h->name);
}

/* Idle too briefly to need a look before it is lent (and no blip under
 * way, look_until_ns), or alive by what its server sent. */
static bool alive_enough(pgg_host *h, pgg_link *l, int64_t now)
{
    if ((now - l->last_used_ns < h->alive_check_ns &&
         now >= atomic_load_explicit(&h->look_until_ns, memory_order_relaxed)) ||
        pgg__link_alive(l->conn))
        return true;
    /* Ended: its server may have restarted and come back behind what it
     * had replayed.  No read on a new session there before its replay
     * position is checked (hold.h; pool.c's role_fits). */
    pgg__hold_suspect(&h->hold, atomic_load(&h->role) == PGG_ROLE_PRIMARY,
                      PGG_SUSPECT_ENDED,
                      "an idle session was found ended (a restart?)");
    return false;
}

/* Alive, and validated when it sat idle long enough: may be lent. */
static bool lendable(pgg_host *h, pgg_link *l, int64_t now, int64_t deadline_ns)
{
    return alive_enough(h, l, now) &&
           (now - l->last_used_ns < h->validate_ns || validate(h, l, deadline_ns));
}

/*
 * Under mu, with l taken from a parking slot (counted busy): lend it, with
 * mu released, and return true; or close it and return false with mu held
 * again and the count given back.
 */
static bool lend_unparked(pgg_host *h, pgg_link *l, int64_t now,
                          int64_t deadline_ns, pgg_link **doomed, pgg_link **out)
{
    bool old = expired(h, l, now);

    pthread_mutex_unlock(&h->mu);
    close_list(h, *doomed);
    *doomed = NULL;
    l->next = NULL;
    if (!old && lendable(h, l, now, deadline_ns)) {
        *out = l;
        return true;
    }
    link_close(h, l);
    pthread_mutex_lock(&h->mu);
    taken_closed_locked(h);
    return false;
}

static int borrow_locked(pgg_host *h, int64_t deadline_ns, int64_t now,
                         pgg_link **out, pgg_borrow_fail *why, pgg_error *err);

/*
 * pgg__host_borrow (host.h) when this thread's parked connection was not
 * lent at once (l: it, out of its slot, or NULL).
 */
int pgg__host_borrow_slow(pgg_host *h, int64_t deadline_ns, int64_t *nowp,
                          pgg_link *l, pgg_link **out, pgg_borrow_fail *why,
                          pgg_error *err)
{
    int64_t now = *nowp;
    int rc;

    *out = NULL;
    if (l) {
        if (!expired(h, l, now) && lendable(h, l, now, deadline_ns)) {
            *out = l;
            *nowp = pgg__now_ns(); /* a validation may have waited */
            return PGG_OK;
        }
        link_close(h, l);
        release_slot(h, NULL);
        now = pgg__now_ns();
    }
    rc = borrow_locked(h, deadline_ns, now, out, why, err);
    /* It may have waited (a connect, a busy pool, a validation). */
    *nowp = pgg__now_ns();
    return rc;
}

/* borrow_locked's end, mu held: w out of the queue (waking the waiter
 * that moves up into what w was entitled to), mu released, the doomed
 * closed, w's cv destroyed. */
static int borrow_end(pgg_host *h, pgg_host_waiter *w, pgg_link *doomed, int rc)
{
    queue_leave(h, w);
    pthread_mutex_unlock(&h->mu);
    close_list(h, doomed);
    if (w->cv_ready)
        pthread_cond_destroy(&w->cv);
    return rc;
}

/* borrow_end for a borrow that found nothing by its deadline (or its
 * cancel), or could not wait at all. */
static int borrow_exhausted(pgg_host *h, pgg_host_waiter *w, pgg_link *doomed,
                            int64_t now, pgg_borrow_fail *why, pgg_error *err)
{
    *why = PGG_BORROW_EXHAUSTED;
    /* Read under mu: a connect on another thread writes it. */
    return borrow_end(h, w, doomed, busy_error_locked(h, now, err));
}

/* borrow_locked took l (or a connect slot), mu released: w's cv is done. */
static void borrow_done(pgg_host_waiter *w)
{
    if (w->cv_ready)
        pthread_cond_destroy(&w->cv);
    w->cv_ready = false;
}

#if defined(__GNUC__)
__attribute__((noinline))
#endif
static int borrow_locked(pgg_host *h, int64_t deadline_ns, int64_t now,
                         pgg_link **out, pgg_borrow_fail *why, pgg_error *err)
{
    pgg_link *doomed = NULL, *l;
    bool fresh_now = true; /* now is the caller's reading, still good */
    const int64_t since = now; /* when the call came ("Refused") */
    pgg_host_waiter w = {.ticket = 0};
    connect_verdict verdict;
    int ahead, rc;

    pthread_mutex_lock(&h->mu);
    for (;;) {
        /* What loops owe first: a borrower on a loop's own thread waits
         * for nothing its loop owes, and none waits for a loop's timer. */
        owed_apply_locked(h, &doomed);
        if (h->closed) {
            *why = PGG_BORROW_CLOSED;
            return borrow_end(h, &w, doomed,
                              pgg__error_set(err, PGG_ECLOSED, NULL, h->name,
                                             "pool closed"));
        }
        if (!fresh_now)
            now = pgg__now_ns();
        fresh_now = false;
        /* Back in its place after a take that failed ("Waiting in turn"). */
        if (w.ticket && !w.queued && !queue_join(h, &w))
            return borrow_exhausted(h, &w, doomed, now, why, err);
        ahead = ahead_of(h, &w);
        /* Nothing is lent once the deadline has passed (a waiter whose
         * timeout raced a give-back, a validation that used the time up):
         * a statement sent then would leave after its call gave up.  An
         * idle connection is w's when those ahead have one each. */
        while (ahead < h->n_idle && now < deadline_ns &&
               (l = take_idle_locked(h, now, &doomed)) != NULL) {
            queue_leave(h, &w);
            pthread_mutex_unlock(&h->mu);
            close_list(h, doomed);
            doomed = NULL;
            if (lendable(h, l, now, deadline_ns)) {
                borrow_done(&w);
                *out = l;
                return PGG_OK;
            }
            /* Dead or failed validation: try the next idle one. */
            link_close(h, l);
            pthread_mutex_lock(&h->mu);
            taken_closed_locked(h);
            now = pgg__now_ns();
            if (w.ticket && !queue_join(h, &w))
                return borrow_exhausted(h, &w, doomed, now, why, err);
            ahead = ahead_of(h, &w);
        }
        /* Another thread's parked connection, rather than a new one (none
         * is parked while anyone queues: queue_join). */
        if (h->n_queued == 0 && now < deadline_ns && (l = unpark_any(h)) != NULL) {
            queue_leave(h, &w);
            if (lend_unparked(h, l, now, deadline_ns, &doomed, out)) {
                borrow_done(&w);
                return PGG_OK;
            }
            continue;
        }
        if (now >= deadline_ns || pgg__cancel_now())
            return borrow_exhausted(h, &w, doomed, now, why, err);
        verdict = connect_verdict_locked(h, since, now);
        if (verdict == CONNECT_REFUSED) {
            *why = PGG_BORROW_REFUSED;
            return borrow_end(h, &w, doomed, refusal_error_locked(h, now, err));
        }
        /* A connect under pool_max is w's when those ahead have an idle
         * connection or a connect each; an ask of a refusing server is
         * every call's own ("Waiting in turn"). */
        if (verdict != CONNECT_WAIT &&
            (ahead < h->n_idle + room_locked(h) || h->refused)) {
            pgg_error cerr;
            bool hook_refused = false, cut = false;
            int64_t began;

            pgg__error_reset(&cerr);
            connect_begin_locked(h, now);
            claim_lost(h);
            began = now;
            queue_leave(h, &w);
            pthread_mutex_unlock(&h->mu);
            close_list(h, doomed);
            doomed = NULL;
            rc = connect_new(h, deadline_ns, out, &hook_refused, &cut, &cerr);
            pthread_mutex_lock(&h->mu);
            h->n_connecting--;
            if (rc == PGG_OK)
                connected_locked(h);
            else
                wake_entitled(h); /* the slot is free again */
            /* Full while ours work: wait for one of ours (no error). */
            if (rc != PGG_OK && refusal_locked(h, &cerr, began)) {
                fresh_now = false;
                continue;
            }
            pthread_mutex_unlock(&h->mu);
            borrow_done(&w);
            if (rc != PGG_OK) {
                pgg__error_copy(err, &cerr);
                *why = hook_refused ? PGG_BORROW_HOOK
                       : cut        ? PGG_BORROW_CUT
                                    : PGG_BORROW_CONNECT;
            }
            return rc;
        }
        if (pgg__host_loop_give_back) {
            /* This thread's loop keeps connections idle: back to their
             * pools (this one's wakes the waiters it entitles, maybe us:
             * we look again under mu before any wait), then look again. */
            pthread_mutex_unlock(&h->mu);
            pgg__host_loop_give_back();
            pthread_mutex_lock(&h->mu);
            fresh_now = false;
            continue;
        }
        if (!w.queued) {
            /* In line, then a last look: what was parked is idle now, and
             * ahead_of counts w's place. */
            if (!queue_join(h, &w))
                return borrow_exhausted(h, &w, doomed, now, why, err);
            fresh_now = true;
            continue;
        }
        {
            /* Full server: look again when a connect may be let in. */
            struct timespec ts = pgg__ns_to_timespec(pgg__cancel_slice(
                now, now < h->full_until_ns && h->full_until_ns < deadline_ns
                         ? h->full_until_ns
                         : deadline_ns));

            h->n_waiting++;
            pthread_cond_timedwait(&w.cv, &h->mu, &ts);
            h->n_waiting--;
        }
    }
}

/* A connection the loop took (counted busy) was closed instead of lent:
 * its slot given back under mu, or owed when mu is busy ("Owed"). */
static void taken_closed(pgg_host *h)
{
    if (!host_lock(h)) {
        owe_count(h, &h->owed_slots);
        return;
    }
    taken_closed_locked(h);
    pthread_mutex_unlock(&h->mu);
}

int pgg__host_try_borrow(pgg_host *h, int64_t since, int64_t now,
                         int64_t deadline_ns, pgg_link **out, bool *connect,
                         bool *lock_busy, pgg_error *err)
{
    pgg_link *doomed = NULL, *l;
    connect_verdict verdict;

    *out = NULL;
    *connect = false;
    *lock_busy = false;
    if (now >= deadline_ns) {
        /* Nothing is lent past the deadline (as pgg__host_borrow). */
        int rc;

        if (!host_lock(h))
            return pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                                  "no connection to %s free by the "
                                  "deadline",
                                  h->name);
        rc = busy_error_locked(h, now, err);
        pthread_mutex_unlock(&h->mu);
        return rc;
    }
    /* A parked connection first (the loop's own give-back parks in its
     * thread's slot, see "Parking"): still counted busy, it is the
     * caller's as it is, or closed here when it is too old or dead. */
    while ((l = pgg__host_unpark_mine(h)) || (l = unpark_any(h))) {
        if (!expired(h, l, now) && alive_enough(h, l, now)) {
            l->next = NULL;
            *out = l;
            return PGG_OK;
        }
        link_close(h, l);
        taken_closed(h);
    }
    if (!host_lock(h))
        goto busy;
    owed_apply_locked(h, &doomed);
    while (!h->closed && (l = take_idle_locked(h, now, &doomed)) != NULL) {
        pthread_mutex_unlock(&h->mu);
        close_list(h, doomed);
        doomed = NULL;
        /* The liveness check reads only what is already there; a session
         * that died since is found dead when sent to, and the call tries
         * a new connection (the path's rule for a reused session). */
        if (alive_enough(h, l, now)) {
            *out = l;
            return PGG_OK;
        }
        link_close(h, l);
        if (!host_lock(h)) {
            owe_count(h, &h->owed_slots);
            goto busy;
        }
        taken_closed_locked(h);
    }
    if (h->closed) {
        pthread_mutex_unlock(&h->mu);
        close_list(h, doomed);
        return pgg__error_set(err, PGG_ECLOSED, NULL, h->name, "pool closed");
    }
    verdict = connect_verdict_locked(h, since, now);
    if (verdict == CONNECT_REFUSED) {
        int rc = refusal_error_locked(h, now, err);

        pthread_mutex_unlock(&h->mu);
        close_list(h, doomed);
        return rc;
    }
    if (verdict != CONNECT_WAIT) {
        connect_begin_locked(h, now);
        claim_lost(h);
        pthread_mutex_unlock(&h->mu);
        close_list(h, doomed);
        *connect = true;
        atomic_fetch_add(&h->connects, 1);
        return PGG_OK;
    }
    {
        int rc = busy_error_locked(h, now, err);

        pthread_mutex_unlock(&h->mu);
        close_list(h, doomed);
        return rc;
    }
busy:
    /* mu busy ("Owed"): nothing taken; the call looks again. */
    *lock_busy = true;
    return pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                          "the lock of %s was busy", h->name);
}

int pgg__host_connected(pgg_host *h, PGconn *conn, int64_t born_ns,
                        pgg_link **out, pgg_error *err)
{
    pgg_link *l = calloc(1, sizeof *l);
    int64_t now = pgg__now_ns();

    *out = NULL;
    if (l) {
        l->conn = conn;
        l->expires_ns = pgg__link_expiry(h, now);
        l->last_used_ns = now;
        /* Its backend may exist from its connect's start on. */
        l->born_ns = born_ns;
        l->fresh = true;
    }
    if (!host_lock(h)) {
        /* Owed: counted busy now (over-counted with its connect until
         * settled), lent at once. */
        if (l)
            atomic_fetch_add(&h->n_busy, 1);
        owe_count(h, l ? &h->owed_connects : &h->owed_failed);
    } else {
        h->n_connecting--;
        if (l)
            connected_locked(h);
        else
            wake_entitled(h);
        pthread_mutex_unlock(&h->mu);
    }
    if (!l) {
        PQfinish(conn);
        return pgg__error_set(err, PGG_ENOMEM, NULL, h->name, "out of memory");
    }
    *out = l;
    return PGG_OK;
}

int pgg__host_connect_failed(pgg_host *h, const pgg_error *err,
                             bool host_fault, int64_t asked_ns, bool later)
{
    bool wait;

    if (!host_lock(h)) {
        if (later)
            return PGG_CONNECT_LATER;
        /* Owed: its slot only; what the failure says of the server
         * ("Refused") is not learnt from it. */
        if (host_fault)
            atomic_fetch_add(&h->connect_failures, 1);
        owe_count(h, &h->owed_failed);
        return PGG_CONNECT_LOST;
    }
    if (host_fault)
        atomic_fetch_add(&h->connect_failures, 1);
    h->n_connecting--;
    wait = refusal_locked(h, err, asked_ns);
    wake_entitled(h); /* the slot is free again */
    pthread_mutex_unlock(&h->mu);
    return wait ? PGG_CONNECT_WAIT : PGG_CONNECT_LOST;
}

static void release_slot(pgg_host *h, pgg_link *keep)
{
    if (keep)
        keep->fresh = false;
    if (!host_lock(h)) {
        /* Owed: still counted busy, lent to nobody until settled. */
        if (keep)
            owe_link(h, keep);
        else
            owe_count(h, &h->owed_slots);
        return;
    }
    h->n_busy--;
    if (keep && !h->closed) {
        keep->next = h->idle;
        h->idle = keep;
        h->n_idle++;
        keep = NULL;
    }
    /* The waiter it entitles takes it ("Waiting in turn"). */
    wake_entitled(h);
    pthread_mutex_unlock(&h->mu);
    if (keep) {
        link_close(h, keep);
    }
}

void pgg__host_give_back_unparked(pgg_host *h, pgg_link *l)
{
    release_slot(h, l);
}

void pgg__host_give_back(pgg_host *h, pgg_link *l, int64_t now)
{
    if (!l)
        return;
    if (l->ended)
        pgg__host_discard(h, l);
    else
        pgg__host_give_back_judged(h, l, now, pgg__link_reusable(l->conn));
}

void pgg__host_discard(pgg_host *h, pgg_link *l)
{
    if (!l)
        return;
    /* Handed to the closer before the slot is given back (link_close). */
    link_close(h, l);
    release_slot(h, NULL);
}

void pgg__host_abandon(pgg_host *h, pgg_link *l, pgg_canceller *c)
{
    if (!l)
        return;
    pgg__canceller_drop(c, h->index, l->conn);
    l->conn = NULL;
    /* The loop's descriptor too: the last close is the socket's teardown. */
    pgg__canceller_close(closer_of(h), NULL, l->loop_fd);
    l->loop_fd = 0;
    link_free(l);
    release_slot(h, NULL);
}

bool pgg__host_adopt(pgg_host *h, PGconn *conn, int64_t now_ns,
                     int64_t born_ns, int max_idle, bool counted, bool hooked)
{
    pgg_link *l;

    if (h->on_connect && (h->on_connect->sql || h->on_connect->fn) &&
        !(hooked && !h->on_connect->fn))
        return false;
    l = calloc(1, sizeof *l);
    if (!l)
        return false;
    l->conn = conn;
    l->expires_ns = pgg__link_expiry(h, now_ns);
    l->last_used_ns = now_ns;
    l->born_ns = born_ns;
    /* Its server may have gone back behind what it reported (hold.h): its
     * first read checks the replay position first, as a new session's
     * does (pool.c, role_fits); its startup report is as current. */
    l->fresh = pgg__hold_suspected(&h->hold);
    pthread_mutex_lock(&h->mu);
    if (h->closed || h->n_idle >= max_idle ||
        h->n_busy + h->n_connecting + h->n_idle >= h->max) {
        pthread_mutex_unlock(&h->mu);
        free(l);
        return false;
    }
    l->next = h->idle;
    h->idle = l;
    h->n_idle++;
    if (h->refused) {
        h->refused = false; /* the server took a session */
        wake_all(h);
    }
    if (!counted)
        atomic_fetch_add(&h->connects, 1);
    wake_entitled(h);
    pthread_mutex_unlock(&h->mu);
    return true;
}

/*
 * Handed connects.  A call's connect ends at the call's deadline, and a
 * server slow to take sessions (a loaded one, one whose slots just freed)
 * may need longer than a call has: cut there, it was closed and counted as
 * the host's failure, two such opened a breaker (the fault bench, at load
 * 30: connects of 280-600 ms, 143 slots lost against libpq, whose caller's
 * blocking connect of 302 ms completed and was kept for its next call).
 * So a connect its caller gives up on before connect_timeout_ms goes on:
 * the health thread drives it as a spare (health.c, spares_handed) until
 * it completes, adopted as an idle session, or its own bound runs out or
 * it fails, the host's failure then.  The caller's timeout is the call's
 * (PGG_BORROW_CUT).  Nothing waits for it on the caller's side; a spare
 * never taken is closed with the health thread or the host.
 */
bool pgg__host_hand_connect(pgg_host *h, PGconn *conn, int events,
                            int64_t started_ns)
{
    pgg_handed *c;

    if (h->on_connect && (h->on_connect->sql || h->on_connect->fn))
        return false;
    if (!(c = malloc(sizeof *c)))
        return false;
    c->conn = conn;
    c->events = events;
    c->started = started_ns;
    /* On a loop's thread with mu busy: not handed ("Owed"). */
    if (!host_lock(h)) {
        free(c);
        return false;
    }
    if (h->closed) {
        pthread_mutex_unlock(&h->mu);
        free(c);
        return false;
    }
    c->next = atomic_load_explicit(&h->handed, memory_order_relaxed);
    atomic_store_explicit(&h->handed, c, memory_order_relaxed);
    h->n_spares++;
    pthread_mutex_unlock(&h->mu);
    return true;
}

pgg_handed *pgg__host_take_handed(pgg_host *h)
{
    pgg_handed *c;

    if (!atomic_load_explicit(&h->handed, memory_order_relaxed))
        return NULL;
    pthread_mutex_lock(&h->mu);
    c = atomic_load_explicit(&h->handed, memory_order_relaxed);
    atomic_store_explicit(&h->handed, NULL, memory_order_relaxed);
    pthread_mutex_unlock(&h->mu);
    return c;
}

/*
 * Asked connects.  The steps of a new connection for an event loop's call
 * run on the health thread, not on the loop: GSSAPI's credential lookup
 * (gssencmode=prefer with krb5 installed: ~290k of a connect's ~360k
 * instructions on this machine) and TLS handshakes happen in
 * PQconnectPoll, up to 1.4 ms of the loop's CPU in one callback under the
 * fault bench.  The loop starts the connect (PQconnectStartParams: ~50k
 * instructions, conninfo and the pgpass file; a refused local port fails
 * there at once, and the call hears it in the same callback, as before,
 * not two thread hand-offs later) and hands it over.  The loop's borrow
 * reserves the slot (pgg__host_try_borrow) and settles it as before
 * (pgg__host_connected, pgg__host_connect_failed with the ask's start:
 * every rule of "Refused" is the loop's call's, unchanged); the health
 * thread only runs libpq (health.c, asked_*) and tells the loop through
 * the ask's eventfd.
 */
/*
 * The queue takes no lock (an event loop pushes): a compare-and-swap push
 * onto a list the health thread takes whole, as the closer's (link.c).
 * An ask pushed as the host closes is not lost: the health thread takes
 * and ends it while it runs (its connect fails or is closed with the
 * pool), and pgg__host_destroy, after it stopped, ends what is left
 * (PGG_ECLOSED); the loop's call hears either as any ask's end.
 */
bool pgg__host_ask_connect(pgg_host *h, pgg_asked *a)
{
    pgg_asked *head;

    if (atomic_load(&h->closed))
        return false;
    head = atomic_load_explicit(&h->asked, memory_order_relaxed);
    do
        a->next = head;
    while (!atomic_compare_exchange_weak_explicit(&h->asked, &head, a,
                                                  memory_order_release,
                                                  memory_order_relaxed));
    return true;
}

pgg_asked *pgg__host_take_asked(pgg_host *h)
{
    if (!atomic_load_explicit(&h->asked, memory_order_relaxed))
        return NULL;
    return atomic_exchange_explicit(&h->asked, NULL, memory_order_acquire);
}

void pgg__asked_unref(pgg_asked *a)
{
    if (atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) != 1)
        return;
    close(a->efd);
    free(a);
}

bool pgg__asked_done(pgg_asked *a)
{
    int pending = PGG_ASK_PENDING;
    uint64_t one = 1;

    if (!atomic_compare_exchange_strong_explicit(&a->state, &pending,
                                                 PGG_ASK_DONE,
                                                 memory_order_acq_rel,
                                                 memory_order_acquire))
        return false;
    /* The loop holds its reference until it forgot the descriptor. */
    if (write(a->efd, &one, sizeof one) < 0) {
        /* A counter already readable: nothing to add. */
    }
    return true;
}

bool pgg__host_ask_handed(pgg_host *h)
{
    bool ok;

    if (h->on_connect && (h->on_connect->sql || h->on_connect->fn))
        return false;
    /* On a loop's thread with mu busy: dropped, not handed ("Owed"). */
    if (!host_lock(h))
        return false;
    ok = !h->closed;
    if (ok)
        h->n_spares++;
    pthread_mutex_unlock(&h->mu);
    return ok;
}

static int trim_locked(pgg_host *h, int64_t now_ns, bool all, pgg_link **out);

/* Close the idle connections past their age (all of them when `all`). */
int pgg__host_trim(pgg_host *h, int64_t now_ns, bool all)
{
    pgg_link *doomed = NULL;
    int n;

    if (!host_lock(h)) {
        /* A loop's breaker opened the host, mu busy ("Owed"): the health
         * thread's sweep looks at every idle session instead. */
        atomic_store(&h->ended_seen, true);
        return 0;
    }
    n = trim_locked(h, now_ns, all, &doomed);
    pthread_mutex_unlock(&h->mu);
    close_list(h, doomed);
    return n;
}

bool pgg__host_trim_opened(pgg_host *h)
{
    pgg_link *doomed = NULL;

    /* Run by whichever thread delivers the breaker's events: an event
     * loop's too, outside any host operation of its own (pgg__host_loop
     * unset: a call's admission, a result's record that applied another
     * thread's queued result or took over a delivery; breaker.h). */
    if (!host_trylock(h)) {
        atomic_store(&h->ended_seen, true);
        return false;
    }
    (void)trim_locked(h, 0, true, &doomed);
    pthread_mutex_unlock(&h->mu);
    close_list(h, doomed);
    return true;
}

/* Under mu: pgg__host_trim's work; what goes is added to *out, for the
 * caller to close once mu is released. */
static int trim_locked(pgg_host *h, int64_t now_ns, bool all, pgg_link **out)
{
    pgg_link *doomed = *out, **pp;
    int n = 0;

    owed_apply_locked(h, &doomed);
    unpark_all_locked(h);
    pp = &h->idle;
    while (*pp) {
        pgg_link *l = *pp;
        if (all || expired(h, l, now_ns)) {
            *pp = l->next;
            l->next = doomed;
            doomed = l;
            h->n_idle--;
            n++;
        } else {
            pp = &l->next;
        }
    }
    if (n)
        wake_all(h);
    *out = doomed;
    return n;
}

int pgg__host_drop_dead(pgg_host *h, int64_t now_ns, int64_t used_within_ns,
                        int64_t born_before)
{
    pgg_link *look, *keep = NULL, **tail = &keep, *dead = NULL;
    int n, kept = 0, recent = 0;

    if (!host_lock(h)) {
        /* On a loop's thread, mu busy ("Owed"): the health thread's sweep
         * looks at every idle session (a look, not a close, for those
         * born before born_before) and counts those it closes. */
        atomic_store(&h->ended_seen, true);
        return 0;
    }
    owed_apply_locked(h, &dead);
    if (h->closed) {
        pthread_mutex_unlock(&h->mu);
        close_list(h, dead);
        return 0;
    }
    unpark_all_locked(h);
    look = h->idle;
    n = h->n_idle;
    h->idle = NULL;
    h->n_idle = 0;
    h->n_busy += n; /* out for a look: still counted against pool_max */
    pthread_mutex_unlock(&h->mu);
    /* Only what the server sent meanwhile is read: no round trip. */
    while (look) {
        pgg_link *l = look;

        look = l->next;
        l->next = NULL;
        if (l->born_ns >= born_before && pgg__link_alive(l->conn)) {
            *tail = l; /* in their order: most recently used first */
            tail = &l->next;
            kept++;
        } else {
            l->next = dead;
            dead = l;
            recent += now_ns - l->last_used_ns < used_within_ns;
        }
    }
    if (!host_lock(h)) {
        /* Owed: the live ones given back, the slots of the dead. */
        while (keep) {
            pgg_link *l = keep;

            keep = l->next;
            owe_link(h, l);
        }
        for (pgg_link *l = dead; l; l = l->next)
            owe_count(h, &h->owed_slots);
        close_list(h, dead);
        return recent;
    }
    h->n_busy -= n;
    if (h->closed) {
        *tail = dead;
        dead = keep;
    } else if (keep) {
        /* After any given back meanwhile: those were used since. */
        pgg_link **end = &h->idle;

        while (*end)
            end = &(*end)->next;
        *end = keep;
        h->n_idle += kept;
    }
    if (n)
        wake_all(h);
    pthread_mutex_unlock(&h->mu);
    close_list(h, dead);
    return recent;
}

int pgg__host_warm(pgg_host *h, int64_t deadline_ns)
{
    int opened = 0;

    for (;;) {
        pgg_link *l = NULL;
        int rc;

        pthread_mutex_lock(&h->mu);
        /* A refusing server is asked by the calls ("Refused"), not also
         * for sessions nobody waits for. */
        if (h->closed || h->refused ||
            h->n_idle + parked_count(h) + h->n_kept + h->n_connecting >=
                h->min_idle ||
            h->n_busy + h->n_connecting + h->n_idle >= h->max) {
            pthread_mutex_unlock(&h->mu);
            return opened;
        }
        h->n_connecting++;
        pthread_mutex_unlock(&h->mu);

        bool hook_refused, cut;

        rc = connect_new(h, deadline_ns, &l, &hook_refused, &cut, NULL);

        pthread_mutex_lock(&h->mu);
        h->n_connecting--;
        /* A success here has no refusing state to end (connected_locked
         * ends it for the calls' connects): none when it started (above,
         * under mu), and none can begin while it is on its way, since
         * refusal_locked begins one only with no session of ours there and
         * ours() counts this connect (review9's finding 3). */
        if (rc == PGG_OK && !h->closed) {
            l->fresh = false;
            l->next = h->idle;
            h->idle = l;
            h->n_idle++;
            l = NULL;
            opened++;
        }
        wake_entitled(h);
        pthread_mutex_unlock(&h->mu);
        if (l)
            link_close(h, l);
        if (rc != PGG_OK)
            return opened;
    }
}

int pgg__host_warm_wanted(pgg_host *h)
{
    int want;

    pthread_mutex_lock(&h->mu);
    /* As pgg__host_warm counts, with the spares on their way. */
    want = h->closed || h->refused
               ? 0
               : h->min_idle - (h->n_idle + parked_count(h) + h->n_kept +
                                h->n_connecting + h->n_spares);
    if (want > h->max - (h->n_busy + h->n_connecting + h->n_idle + h->n_spares))
        want = h->max - (h->n_busy + h->n_connecting + h->n_idle + h->n_spares);
    pthread_mutex_unlock(&h->mu);
    return want > 0 ? want : 0;
}

/* Under mu for a waiter (or not: pgg__host_coming_back): a call its
 * breaker refused may still wait for the host (the one rule of
 * pgg__host_await_back and pgg__host_coming_back). */
static bool coming_back_locked(pgg_host *h)
{
    return atomic_load(&h->starting) && !h->closed &&
           pgg__breaker_state(&h->breaker) == PGG_BREAKER_OPEN;
}

/* The same rule without mu: its three words are atomics, and the loop's
 * call looks again every PARK_POLL_NS (async.c), where a blocking waiter
 * needs mu for its condition variable. */
bool pgg__host_coming_back(pgg_host *h)
{
    return coming_back_locked(h);
}

bool pgg__host_await_back(pgg_host *h, int64_t deadline_ns, bool write,
                          void (*wake)(void *), void *wake_arg)
{
    bool back, counted = false;

    /* A read waits for no host held back from reads (hold.h): a server
     * coming back may serve an older state than it did. */
    if (!atomic_load_explicit(&h->starting, memory_order_relaxed) ||
        (!write && pgg__hold_on(&h->hold)))
        return false;
    pthread_mutex_lock(&h->mu);
    h->n_back_writes += write;
    while (coming_back_locked(h)) {
        int64_t now = pgg__now_ns();
        struct timespec ts;

        if (now >= deadline_ns || pgg__cancel_now())
            break;
        ts = pgg__ns_to_timespec(pgg__cancel_slice(now, deadline_ns));
        atomic_fetch_add(&h->n_back_waiting, 1);
        if (!counted) {
            /* Lock-free, and coalesced with the other waiters' wakes. */
            counted = true;
            if (wake)
                wake(wake_arg);
        }
        pthread_cond_timedwait(&h->back_cv, &h->mu, &ts);
        atomic_fetch_sub(&h->n_back_waiting, 1);
    }
    back = !h->closed && pgg__breaker_state(&h->breaker) != PGG_BREAKER_OPEN &&
           (write || !pgg__hold_on(&h->hold));
    if (write) {
        if (--h->n_back_writes == 0)
            pthread_cond_broadcast(&h->back_cv);
    } else {
        /* Back: the writes that waited with this read go to its first
         * sessions first (they have no other host; a read may, and the
         * first sessions of a server just back come one at a time). */
        while (back && h->n_back_writes > 0 && !h->closed) {
            int64_t now = pgg__now_ns();
            struct timespec ts;

            if (now >= deadline_ns || pgg__cancel_now())
                break;
            ts = pgg__ns_to_timespec(pgg__cancel_slice(now, deadline_ns));
            pthread_cond_timedwait(&h->back_cv, &h->mu, &ts);
        }
    }
    pthread_mutex_unlock(&h->mu);
    return back;
}

void pgg__host_set_starting(pgg_host *h, bool on)
{
    if (atomic_load_explicit(&h->starting, memory_order_relaxed) == on)
        return;
    pthread_mutex_lock(&h->mu);
    atomic_store(&h->starting, on);
    if (!on)
        pthread_cond_broadcast(&h->back_cv);
    pthread_mutex_unlock(&h->mu);
}

void pgg__host_spares(pgg_host *h, int delta)
{
    if (delta > 0)
        pthread_mutex_lock(&h->mu);
    else if (!host_lock(h)) {
        /* A loop's, mu busy ("Owed"): one fewer to wait for, later. */
        for (; delta < 0; delta++)
            owe_count(h, &h->owed_spares);
        return;
    }
    h->n_spares += delta;
    /* One fewer to wait for: a waiter may connect itself now (an adopted
     * one has signalled already). */
    if (delta < 0)
        wake_entitled(h);
    pthread_mutex_unlock(&h->mu);
}

void pgg__host_close(pgg_host *h)
{
    pgg_link *doomed = NULL;

    pthread_mutex_lock(&h->mu);
    owed_apply_locked(h, &doomed);
    atomic_store(&h->closed, true);
    /* Before trim empties the slots: nothing parks for good after. */
    atomic_fetch_add_explicit(&h->park_block, PARK_CLOSED, memory_order_seq_cst);
    wake_all(h);
    pthread_cond_broadcast(&h->back_cv);
    pthread_mutex_unlock(&h->mu);
    close_list(h, doomed);
    pgg__host_trim(h, 0, true);
}

void pgg__host_note_error(pgg_host *h, const pgg_error *err)
{
    if (!err)
        return;
    /* On a loop's thread with mu busy: not noted (stats text only; the
     * failure is counted, and the next one is noted). */
    if (!host_lock(h))
        return;
    h->last_error_code = err->code;
    pgg__strlcpy(h->last_error, err->message, sizeof h->last_error);
    pthread_mutex_unlock(&h->mu);
}

void pgg__host_counts(pgg_host *h, pgg_host_counts *out)
{
    int parked;

    pthread_mutex_lock(&h->mu);
    /* Kept by event loops: idle, as parked ones (host.h, n_kept). */
    parked = parked_count(h) + atomic_load_explicit(&h->n_kept, memory_order_relaxed);
    out->idle = h->n_idle + parked;
    out->busy = h->n_busy - parked;
    out->connecting = h->n_connecting;
    out->waiting = h->n_waiting;
    out->open = h->n_idle + h->n_busy + h->n_connecting;
    pthread_mutex_unlock(&h->mu);
}
