/*
 * Internal: one server.  Its connection parameters, its role and lag as
 * last learnt, its circuit breaker, and its pool of idle connections.
 *
 * Locking: `mu` guards the connection lists and counts only; it is never
 * held across I/O (connect, validation and close happen outside it).  Role,
 * lag and counters are atomics read lock-free by the router and by stats.
 *
 * Parking (host.c, "Parking"): a connection given back by a thread waits
 * for that thread's next borrow in a slot of `park`, taken and filled with
 * one atomic operation each, without `mu`.  A parked connection is counted
 * as busy under `mu` (so pool_max holds), reported as idle by stats and the
 * router, and taken by any borrower that would otherwise wait, by trim
 * and by close.
 */
#ifndef PGG_HOST_H
#define PGG_HOST_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "breaker.h"
#include "clock.h"
#include "classify.h"
#include "hold.h"
#include "link.h"
#include "pgguard.h"
#include "prepared.h"
#include "tls.h"

struct pgg_on_connect;

/* A pooled connection. */
typedef struct pgg_link {
    PGconn *conn;
    /* When it is past max_lifetime: its start plus max_lifetime, or
     * PGG_TIME_NEVER (no limit); one comparison on every borrow and
     * give-back (pgg__link_expiry). */
    int64_t expires_ns;
    int64_t last_used_ns;
    /* When its connect started (an adopted spare: when it was adopted):
     * a sibling ended by its server when this one did not exist yet says
     * nothing of it (pgg__host_drop_dead). */
    int64_t born_ns;
    unsigned types_gen; /* libpqtypes registrations applied; 0: none */
    /* Just connected for this borrow: what the server reported at startup
     * (in_hot_standby) is current.  An idle connection's report can be
     * older than a promotion, until its next query refreshes it. */
    bool fresh;
    pgg_stmt_set stmts; /* the pool's statements prepared on it */
    /* The thread that gave it back last (an opaque token, compared only):
     * that thread gets it again first. */
    const void *owner;
    unsigned vis_prepared; /* visibility.c's position queries prepared on it */
    struct pgg_autoprep *autoprep; /* auto_prepare's cache; NULL until used */
    /* The event loop's own descriptor of the socket (async.c: a dup of
     * PQsocket, made the first time a loop watches the connection; 0:
     * none, dups are never below 1), closed with the link: libpq may close
     * its descriptor before the loop can stop watching, this one it cannot. */
    int loop_fd;
    /* The server ended the session right behind an answer got on it
     * (pool.c exec_at): the answer stands, the session is never lent again
     * (the one-shot attempt and pgg__host_give_back discard it). */
    bool ended;
    /* Its socket's mode for the wait in recv (link.h): one-shot calls
     * pass it to the exec; every other use makes it PGG_RECV_NEVER. */
    pgg_recv_mode recv_mode;
    struct pgg_link *next;
} pgg_link;

/* A connect its caller gave up on (the call's deadline or cancel) before
 * its own bound, connect_timeout_ms from its start: it goes on as a spare
 * of the health thread (host.c, "Handed connects").  Under the host's mu
 * until the health thread takes it. */
typedef struct pgg_handed {
    PGconn *conn;
    int events;      /* the poll events it waits for (POLLIN / POLLOUT) */
    int64_t started; /* when its connect started */
    struct pgg_handed *next;
} pgg_handed;

/*
 * A connect an event loop's call started (PQconnectStartParams) and asked
 * the health thread to finish (host.c, "Asked connects"): the loop runs
 * none of its PQconnectPoll steps (GSSAPI and TLS negotiation).  Shared
 * by the two threads: `state` says whose it is (ASK_*), `refs` who still
 * holds it (the last one closes efd and frees it).
 */
enum { PGG_ASK_PENDING, PGG_ASK_DONE, PGG_ASK_CUT, PGG_ASK_DROP };

typedef struct pgg_asked {
    /* PENDING: the health thread's, connecting.  DONE: the loop's, the
     * connected session, or NULL with err telling why not. */
    PGconn *conn;
    pgg_error err;
    int64_t started; /* the call's connect_at: its ask's start ("Refused") */
    int events;      /* the health thread's: the poll events it waits for */
    int host;        /* the health thread's: its host's index */
    int efd;         /* an eventfd the loop watches: written on DONE */
    /* PENDING until the health thread ends it (DONE) or the loop gives it
     * up: CUT (its call's deadline or cancel: it goes on as a handed
     * spare, n_spares counted) or DROP (closed). */
    _Atomic int state;
    _Atomic int refs;
    struct pgg_asked *next;
} pgg_asked;

/* Parking slots per host; threads are spread over them round-robin. */
#define PGG_PARK_SLOTS 16

typedef struct pgg_park_slot {
    _Atomic(pgg_link *) link;
    /* One slot per cache line and its prefetch partner: a thread's slot is
     * written on every call. */
    char pad[128 - sizeof(pgg_link *)];
} pgg_park_slot;

typedef struct pgg_host {
    int index;
    char name[128];
    const char *const *keys; /* owned by the pool's config copy */
    const char *const *vals;
    /* Its connect looks a name up (pgg_host_spec.lookup): an event loop's
     * call hands the whole connect to the health thread (async.c). */
    bool lookup;

    int max;
    int min_idle;
    int64_t idle_timeout_ns;
    int64_t max_lifetime_ns; /* 0: no limit */
    int64_t validate_ns;
    int64_t alive_check_ns;
    int64_t connect_timeout_ns;
    /* The least of alive_check_ns, validate_ns and idle_timeout_ns (when
     * set): a connection idle less long needs no look before lending. */
    int64_t quick_ns;
    /* The pool's config copy's; run on each new connection.  NULL: none. */
    const struct pgg_on_connect *on_connect;
    /* Where the pool keeps its canceller (NULL inside only while the pool
     * is made; cancels off when it has no slots): a hook that overran has
     * its statement cancelled like a query's, and the sessions the host
     * drops are closed by its closer thread (link_close). */
    pgg_canceller *const *canceller;

    pthread_mutex_t mu;
    /* Blocking borrowers waiting for a connection, oldest first (host.c,
     * "Waiting in turn"; under mu): they take in that order, each woken on
     * its own condition variable.  n_queued: how many; wait_tickets: the
     * last place given out. */
    struct pgg_host_waiter *wait_head, *wait_tail;
    int n_queued;
    uint64_t wait_tickets;
    pthread_cond_t back_cv; /* `starting` ended (pgg__host_await_back) */
    /* The host's server is starting: its port refused connections, then
     * took the health probe's, which waits for the server to answer.
     * Written by the health thread under mu; read lock-free first. */
    atomic_bool starting;
    _Atomic int n_back_waiting; /* calls in pgg__host_await_back */
    int n_back_writes; /* writes among them, and leaving them (under mu) */
    /* Sessions the server ended, closed with a dead sibling (pool.c's
     * settle) or found dead by the health thread: it starts their
     * replacements and takes the count (health.c, spares_replace). */
    _Atomic int n_lost;
    /* A call found a pooled session here ended by the server (settle):
     * the health thread looks at every host's idle sessions (sweep). */
    atomic_bool ended_seen;
    /* Until then every idle session is looked at before it is lent,
     * however recently it was used: a blip is under way (a session here
     * or elsewhere was found ended by its server), and a sibling kept
     * because nothing had arrived on it yet may have its server's FATAL by
     * now (backends exit when they next run, milliseconds apart).  A
     * write sent on it would fail as sent.  Not on the parked fast path
     * (pgg__host_borrow), for its cost (d2dcc5a, callgrind): the look at
     * the blip moved every parked session to the idle list
     * (pgg__host_drop_dead), and one parked since was answered after the
     * blip was seen; that does not prove the blip spared it while the
     * blip is still under way (backends exit over tens of ms, up to 60
     * seen), so a write sent on such a session may still fail as sent
     * (the fault bench showed no loss from it). */
    _Atomic int64_t look_until_ns;
    /* A call got no answer here before its deadline (a statement, or a
     * connect the host's kernel took): since when the host has been silent
     * as far as that call knows (0: nothing to check).  The health thread
     * takes it and verifies with a probe of its own (health.c, "A call
     * that got no answer"). */
    _Atomic int_fast64_t silent_since_ns;
    pgg_link *idle;    /* most recently used first */
    /* n_waiting: blocking borrowers asleep in their wait (stats, and the
     * one-borrower-per-spare rule). */
    int n_idle, n_connecting, n_waiting;
    /* Connects the health thread has on their way to the idle list
     * (spares, health.c): a borrower waits for one of them rather than
     * queue its own connect behind them. */
    int n_spares;
    /* Handed connects the health thread has not taken yet (newest first;
     * written under mu, read without it as a hint; counted in n_spares). */
    _Atomic(pgg_handed *) handed;
    /* Asked connects the health thread has not taken yet (newest first;
     * written under mu, read without it as a hint). */
    _Atomic(pgg_asked *) asked;
    /* Lent out (calls and leases running on it).  Written under mu; read
     * without it by the router, which wants the least busy host. */
    _Atomic int n_busy;
    /* Written under mu; read without it where a hint will do (an event
     * loop's pgg__host_coming_back, pgg__host_ask_connect). */
    atomic_bool closed;
    /* What event loops could not settle under mu without waiting for it
     * (host.c, "Owed"): links given back (to the idle list, n_busy--, a
     * compare-and-swap push by next), the slots of links closed (n_busy--),
     * connects made (n_connecting-- then n_busy++), connects failed
     * (n_connecting--), and spares ended (n_spares--).  `owed` says some
     * may be there: set after each push, taken by whoever applies them
     * (owed_apply_locked, under mu). */
    _Atomic(pgg_link *) owed_links;
    _Atomic int owed_slots, owed_connects, owed_failed, owed_spares;
    atomic_bool owed;
    /* The server refused a session as full (53300) while ours were busy:
     * no new connect before this, wait for ours instead (under mu). */
    int64_t full_until_ns;
    /* The server refused a session (53300, 57P03) with none of ours
     * there, and no connect has succeeded since (under mu).  Meanwhile
     * every connect on its way is an ask of it (host.c, "Refused"):
     * last_ask_ns, when the latest started; refused_asked_ns, when the
     * latest refused one started. */
    bool refused;
    int64_t last_ask_ns;
    int64_t refused_asked_ns;
    char refused_state[6];
    char refused_msg[200];
    int last_error_code;
    char last_error[256];

    _Atomic int role;              /* pgg_role */
    /* Its lag behind the primary, the router's word (hold.lag), and
     * whether it is held back from reads after going back (hold.h). */
    pgg_hold hold;
    /* Read by every call, so kept off the line every call writes (the
     * signals and the count below, the breaker's fast word): padding, as
     * the pool's array of hosts is not aligned. */
    char pad_read[128];

    /* Passive signals, written with relaxed stores by whichever call saw
     * them (a lost update only delays the next look):
     * role_seen_ns: when an answer's in_hot_standby was last read (the
     *   lookup walks a list, so at most once per host every few ms);
     * latency_ns: moving average of successful attempts, which bounds a
     *   read attempt another host could take over (attempt_timeout_auto);
     * suspect_until_ns: an attempt here just hit its deadline, or its
     *   server is starting (health.c): fresh reads go to other hosts first
     *   until then, or until it answers again;
     * seek_primary_until_ns: a write found no primary lately
     *   (pgg__pool_seek_primary): until then, or until one is found, every
     *   answer's in_hot_standby is read, not one per few ms. */
    _Atomic int_fast64_t role_seen_ns;
    _Atomic int_fast64_t seek_primary_until_ns;
    _Atomic int_fast64_t latency_ns;
    _Atomic int_fast64_t suspect_until_ns;
    /* Counted by every call that succeeds: next to what it writes anyway
     * (the breaker's fast word comes next), not beside park_block, which
     * every borrow and give-back reads. */
    atomic_uint_fast64_t successes;
    /* Connections event loops keep idle and watched for their next calls
     * (async.c, "Kept connections"): lent, so counted in n_busy (pool_max
     * holds), and reported idle by stats and the router, as parked ones
     * are.  Written on the loop's calls, beside what they write anyway. */
    _Atomic int n_kept;

    pgg_breaker breaker;

    /* Parked connections (see the top), and what stops parking: borrowers
     * waiting for a connection, plus PGG_PARK_CLOSED once the host closes. */
    pgg_park_slot park[PGG_PARK_SLOTS];
    _Atomic int park_block;

    /* One counter per outcome (successes above): the total is their sum,
     * so a call pays one atomic add, not two. */
    atomic_uint_fast64_t ignored, rejections;
    /* The ignored outcomes the host answered (a result, a refusal at
     * startup), not those it never spoke in (a cancel, no connection free,
     * nothing sent): with successes, what the silence rule counts as the
     * host answering (health.c, verify_failed). */
    atomic_uint_fast64_t ignored_answers;
    atomic_uint_fast64_t failures[PGG_CLASS__COUNT];
    atomic_uint_fast64_t connects, connect_failures;
} pgg_host;

typedef struct pgg_host_limits {
    int max, min_idle;
    int64_t idle_timeout_ns, max_lifetime_ns, validate_ns, connect_timeout_ns;
    int64_t alive_check_ns; /* poll an idle connection's socket before lending
                               it when it has been idle this long */
    const struct pgg_on_connect *on_connect; /* outlives the host; may be NULL */
    pgg_canceller *const *canceller;         /* the pool's field; may be NULL */
} pgg_host_limits;

/* keys/vals/name must outlive the host (the pool's config copy). */
int pgg__host_init(pgg_host *h, int index, const char *name,
                   const char *const *keys, const char *const *vals,
                   const pgg_host_limits *limits,
                   const pgg_breaker_config *breaker, const pgg_clock *clock,
                   pgg_error *err);
/* Closes every idle connection.  Busy ones must have come back. */
void pgg__host_destroy(pgg_host *h);

/* How borrowing failed, for the caller's breaker and retry decisions. */
typedef enum pgg_borrow_fail {
    PGG_BORROW_CONNECT = 1, /* a new connection failed: a host failure */
    PGG_BORROW_EXHAUSTED,   /* pool_max busy until the deadline: not the host's fault */
    PGG_BORROW_CLOSED,
    PGG_BORROW_HOOK,        /* the on-connect hook refused a healthy session:
                               PGG_EONCONNECT, not the host's fault */
    PGG_BORROW_REFUSED,     /* the server refused a session (53300, 57P03)
                               moments ago: not asked again yet,
                               PGG_EUNAVAILABLE, not the host's fault */
    PGG_BORROW_CUT          /* the call's deadline (or cancel) came before
                               the connect's own bound: PGG_ETIMEDOUT, the
                               call's timeout, not the host's; the connect
                               goes on for the pool when it could be handed
                               on (pgg__host_hand_connect) */
} pgg_borrow_fail;

/*
 * Parking's fast halves (host.c, "Parking", tells the protocol), inline on
 * the path of every call: a borrow takes this thread's parked connection
 * back, a give-back parks it, each with one atomic operation and no call.
 */
#define PGG_PARK_CLOSED (1 << 24) /* in park_block once the host closed */

/* This thread's slot index + 1 (0: none yet), and the first assignment. */
extern PGG_TLS unsigned pgg__park_index_plus1;
unsigned pgg__park_assign(void);
/* A token per live thread (its address, compared only): pgg_link.owner. */
extern PGG_TLS char pgg__thread_token;

static inline pgg_park_slot *pgg__park_slot_mine(pgg_host *h)
{
    unsigned i = pgg__park_index_plus1;

    if (!i)
        i = pgg__park_assign();
    return &h->park[i - 1];
}

/* This thread's parked connection, now the caller's (NULL: none). */
static inline pgg_link *pgg__host_unpark_mine(pgg_host *h)
{
    pgg_park_slot *s = pgg__park_slot_mine(h);

    if (!atomic_load_explicit(&s->link, memory_order_relaxed))
        return NULL;
    return atomic_exchange_explicit(&s->link, NULL, memory_order_acquire);
}

/* Park l in this thread's slot; false: give it back under mu instead. */
static inline bool pgg__host_park(pgg_host *h, pgg_link *l)
{
    pgg_park_slot *s = pgg__park_slot_mine(h);
    pgg_link *empty = NULL, *mine = l;

    if (atomic_load_explicit(&h->park_block, memory_order_relaxed) != 0 ||
        !atomic_compare_exchange_strong_explicit(&s->link, &empty, l,
                                                 memory_order_seq_cst,
                                                 memory_order_relaxed))
        return false;
    if (atomic_load_explicit(&h->park_block, memory_order_seq_cst) == 0)
        return true;
    /* A borrower began to wait, or the host closed: back out, unless one
     * of them took it already (then it is theirs). */
    return !atomic_compare_exchange_strong_explicit(&s->link, &mine, NULL,
                                                    memory_order_seq_cst,
                                                    memory_order_relaxed);
}

/* Borrowers wait for a connection of h (blocking ones, or event loops'
 * calls parked on it: pgg__host_want), or h closed: a loop that keeps idle
 * connections of h gives them back (async.c, "Kept connections"). */
static inline bool pgg__host_wanted(const pgg_host *h)
{
    return atomic_load_explicit(&h->park_block, memory_order_relaxed) != 0;
}

/* More than `mine` borrowers wait for a connection of h (as
 * pgg__host_wanted, but not merely because h closed): others than the
 * caller's own `mine`. */
static inline bool pgg__host_awaited_beyond(const pgg_host *h, int mine)
{
    int n = atomic_load_explicit(&h->park_block, memory_order_relaxed);

    return n > mine && n < PGG_PARK_CLOSED;
}

/* An event loop's call begins (+1) or ends (-1) to wait for a connection
 * of h: as a blocking borrower's wait, it stops parking and makes loops
 * give back what they keep of h, since the loop's call cannot be woken
 * by a give-back on another thread (it looks again on a timer). */
static inline void pgg__host_want(pgg_host *h, int delta)
{
    atomic_fetch_add_explicit(&h->park_block, delta, memory_order_seq_cst);
}

/* Set by an event loop's context on its thread while it keeps idle
 * connections (async.c): gives every one of them back.  A borrower about
 * to wait calls it first (not under mu): a blocking call made on the
 * loop's own thread, which no loop turn can serve while it waits, must
 * not wait for what that loop keeps. */
extern PGG_TLS void (*pgg__host_loop_give_back)(void);

/*
 * An event loop's context, making host operations on its loop's thread
 * (host.c, "Owed"): there mu is only tried, a few times, never waited
 * for, and what cannot take it is owed to the host and settled later.
 * async.c sets pgg__host_loop around each such operation (never on the
 * path of a call served on a kept connection, which takes no lock) and
 * restores it after; NULL (any other thread, a blocking call on the
 * loop's thread): mu is waited for as ever.  owe(self) is called when
 * something was owed: the context settles every host's owed records on
 * its timer (pgg__host_settle_owed) until none is left, so nothing owed
 * waits for whoever takes mu next.  owed_first(self) (may be NULL) is
 * called besides when the host had nothing owed before: the context tells
 * a thread that may wait for mu (the health thread), which settles it
 * even if the loop does not turn again soon.  The call path uses the same
 * tie for the pool's bulkhead (pgg__call.loop): a slot whose give-back
 * found the bulkhead's lock busy is owed, and settled on the same timer
 * (pgg__bulkhead_settle_owed).
 */
typedef struct pgg_host_loop {
    void (*owe)(struct pgg_host_loop *self);
    void (*owed_first)(struct pgg_host_loop *self);
    /* The call path's (call.h, pgg__call_finish): the call whose memory
     * part is call_mem wanted a fallback from the cache and found its lock
     * busy: it finishes again on the loop's timer (cache.c, "Loops"). */
    void (*cache_later)(struct pgg_host_loop *self, void *call_mem);
} pgg_host_loop;

extern PGG_TLS pgg_host_loop *pgg__host_loop;

/* Apply what event loops owe to h (host.c, "Owed"), under mu: waited
 * for when wait, else only tried.  True when nothing is left owed (as
 * far as this call saw). */
bool pgg__host_settle_owed(pgg_host *h, bool wait);

/* An event loop keeps one more (+1) or one fewer (-1) connection of h
 * idle (n_kept). */
static inline void pgg__host_kept(pgg_host *h, int delta)
{
    atomic_fetch_add_explicit(&h->n_kept, delta, memory_order_relaxed);
}

/* pgg_link.expires_ns of a connection made at now. */
static inline int64_t pgg__link_expiry(const pgg_host *h, int64_t now)
{
    return h->max_lifetime_ns > 0 ? pgg__time_add(now, h->max_lifetime_ns)
                                  : PGG_TIME_NEVER;
}

/* Past max_lifetime. */
static inline bool pgg__link_too_old(const pgg_link *l, int64_t now)
{
    return now >= l->expires_ns;
}

/* pgg__host_borrow past its fast path; mine: this thread's parked
 * connection, taken out of its slot but not lent at once (or NULL). */
int pgg__host_borrow_slow(pgg_host *h, int64_t deadline_ns, int64_t *now_ns,
                          pgg_link *mine, pgg_link **out, pgg_borrow_fail *why,
                          pgg_error *err);

/*
 * A usable connection: a live idle one (checked with a round trip when it
 * sat idle past validate_after_idle), or a new one if the host has room,
 * or the first one given back before deadline_ns.  On failure returns the
 * error code, fills err and *why.  *now_ns: a clock reading in; out, one
 * taken after anything the borrow waited for (unchanged when it did not
 * wait: the parked connection of this thread, lent at once).
 */
static inline int pgg__host_borrow(pgg_host *h, int64_t deadline_ns,
                                   int64_t *now_ns, pgg_link **out,
                                   pgg_borrow_fail *why, pgg_error *err)
{
    int64_t now = *now_ns;
    pgg_link *l = NULL;

    if (now < deadline_ns &&
        atomic_load_explicit(&h->park_block, memory_order_relaxed) <
            PGG_PARK_CLOSED &&
        (l = pgg__host_unpark_mine(h)) != NULL &&
        /* Used moments ago: no check is due (quick_ns, the shortest of
         * them), unless it is past its lifetime. */
        now - l->last_used_ns < h->quick_ns && !pgg__link_too_old(l, now)) {
        *out = l;
        return PGG_OK;
    }
    {
        /* The slow path writes its own copies: the caller's reading and
         * connection, whose addresses go no further, can stay in
         * registers on the fast path. */
        int64_t n = now;
        pgg_link *got = NULL;
        int rc = pgg__host_borrow_slow(h, deadline_ns, &n, l, &got, why, err);

        *now_ns = n;
        *out = got;
        return rc;
    }
}

/*
 * For an event loop: never waits, never connects, never validates with a
 * round trip.  PGG_OK with *out: an idle connection (liveness checked
 * without blocking).  PGG_OK with *connect: a connection slot is reserved
 * for a connect the caller makes without blocking; it ends with
 * pgg__host_connected or pgg__host_connect_failed.  PGG_ETIMEDOUT: every
 * connection is busy (pool_max, a full server while ours are out, or an
 * ask of a refusing server on its way that started after since, when the
 * call came), or deadline_ns has passed: nothing is lent then;
 * PGG_ECLOSED; PGG_EUNAVAILABLE: the server refused a session it was asked
 * for after since (host.c, "Refused").  On a loop's thread (pgg__host_loop)
 * mu is only tried: PGG_ETIMEDOUT with *lock_busy when it stayed busy
 * (host.c, "Owed"): nothing taken, look again.
 */
int pgg__host_try_borrow(pgg_host *h, int64_t since, int64_t now,
                         int64_t deadline_ns, pgg_link **out, bool *connect,
                         bool *lock_busy, pgg_error *err);
/* The reserved connect, started at born_ns, succeeded: conn becomes a
 * lent link (NULL and PGG_ENOMEM: closed).  On a loop's thread with mu
 * busy, its bookkeeping is owed (host.c, "Owed") and the link lent all
 * the same. */
int pgg__host_connected(pgg_host *h, PGconn *conn, int64_t born_ns,
                        pgg_link **out, pgg_error *err);
/* The reserved connect failed (err: why; host_fault: counted as a
 * failed connect, not when its on-connect hook refused a healthy
 * session; asked_ns: the now it was reserved with).  PGG_CONNECT_WAIT:
 * the server is full (53300) while sessions of ours are out: the caller
 * waits for one of them to come back (pgg__host_try_borrow again), as
 * pgg__host_borrow does, instead of failing the attempt.
 * PGG_CONNECT_LATER (only with later, on a loop's thread, host.c "Owed"):
 * mu was busy and nothing was done: the caller keeps its error and calls
 * again on its next look.  Without later, the slot is owed then and the
 * refusal not learnt from (PGG_CONNECT_LOST). */
enum { PGG_CONNECT_LOST, PGG_CONNECT_WAIT, PGG_CONNECT_LATER };
int pgg__host_connect_failed(pgg_host *h, const pgg_error *err,
                             bool host_fault, int64_t asked_ns, bool later);

/* Back to the pool if reusable (idle, healthy, young enough), else closed. */
void pgg__host_give_back(pgg_host *h, pgg_link *l, int64_t now_ns);
/* Closed without a thought: broken or mid-transaction. */
void pgg__host_discard(pgg_host *h, pgg_link *l);
/* l, judged reusable and stamped, could not park: pooled under mu. */
void pgg__host_give_back_unparked(pgg_host *h, pgg_link *l);

/* l was judged reusable (or not): stamped and parked, or pooled under mu,
 * or closed. */
static inline void pgg__host_give_back_judged(pgg_host *h, pgg_link *l,
                                              int64_t now, bool reusable)
{
    if (!reusable || pgg__link_too_old(l, now)) {
        pgg__host_discard(h, l);
        return;
    }
    l->last_used_ns = now;
    l->owner = &pgg__thread_token;
    l->fresh = false;
    l->next = NULL;
    if (!pgg__host_park(h, l))
        pgg__host_give_back_unparked(h, l);
}

/* The same as pgg__host_give_back for l (not NULL) after a one-shot call
 * that only sent and collected on it (pgg__link_idle_after_call): its
 * modes are as lent.  Inline: the give-back of every call. */
static inline void pgg__host_give_back_call(pgg_host *h, pgg_link *l,
                                            int64_t now_ns)
{
    pgg__host_give_back_judged(h, l, now_ns,
                               pgg__link_idle_after_call(l->conn));
}
/* The deadline fired mid-query: close now, cancel from a worker. */
void pgg__host_abandon(pgg_host *h, pgg_link *l, pgg_canceller *c);

/*
 * Take conn, connected with this host's parameters elsewhere (the health
 * thread) from born_ns on, as an idle connection, when the host has fewer
 * than max_idle idle, room for it, and no on-connect hook, unless hooked:
 * the hook ran on conn (its SQL only: pgg__host_hook_sql, and the hook has
 * no callback).  counted: its connect is in `connects` already (a handed
 * one).  Returns whether it did; if not, conn stays the caller's.
 */
bool pgg__host_adopt(pgg_host *h, PGconn *conn, int64_t now_ns,
                     int64_t born_ns, int max_idle, bool counted, bool hooked);

/*
 * Handed connects (host.c): conn, a connect started at started_ns that its
 * caller gave up on before connect_timeout_ms ran out, still waiting for
 * events, goes on as a spare of the health thread (the caller wakes it),
 * and its session joins the pool when it completes.  Counted in n_spares
 * from now: a borrower waits for it rather than queue a connect behind it.
 * False when the host cannot take it (closed, an on-connect hook that
 * would not run on it, no memory): conn stays the caller's to close.
 */
bool pgg__host_hand_connect(pgg_host *h, PGconn *conn, int events,
                            int64_t started_ns);
/* The handed connects not taken yet, now the caller's (the health
 * thread's; still counted in n_spares: pgg__host_spares(h, -1) for each
 * that ends), or NULL. */
pgg_handed *pgg__host_take_handed(pgg_host *h);

/*
 * Asked connects (host.c): a, its conn started, PENDING with one
 * reference for the caller (an event loop's call, whose borrow reserved
 * the connect slot) and one for the health thread, is queued for the
 * health thread (the caller wakes it: pgg__health_ask).  False when the
 * host is closed: a stays the caller's.
 */
bool pgg__host_ask_connect(pgg_host *h, pgg_asked *a);
/* The asked connects not taken yet, now the health thread's, or NULL. */
pgg_asked *pgg__host_take_asked(pgg_host *h);
/* A holder of a lets go of it: the last one closes its eventfd and
 * frees it (its conn, if any, is no longer in it). */
void pgg__asked_unref(pgg_asked *a);
/* The health thread ended a (its conn and err set): DONE, and the loop
 * told, unless the loop gave it up first (false: a is still the caller's
 * to dispose of, by its state). */
bool pgg__asked_done(pgg_asked *a);
/* An asked connect whose call gave it up before its own bound may go on
 * as a handed spare (pgg__host_hand_connect's rule): counted in n_spares
 * when it may (true). */
bool pgg__host_ask_handed(pgg_host *h);

/* Idle sessions used this recently are replaced when their server ends
 * them: their callers are about to come back for them. */
#define PGG_LOST_RECENT_NS (1000 * PGG_NS_PER_MS)

/* A blip is under way: every idle session of h is looked at before it is
 * lent until then (look_until_ns). */
static inline void pgg__host_look_until(pgg_host *h, int64_t until_ns)
{
    atomic_store_explicit(&h->look_until_ns, until_ns, memory_order_relaxed);
}

/* Close idle connections past idle_timeout or max_lifetime (all of them
 * when `all`).  Returns how many were closed. */
int pgg__host_trim(pgg_host *h, int64_t now_ns, bool all);
/* Its breaker opened: close every idle connection, if mu is free; false
 * when it was busy (the health thread's sweep looks at them: ended_seen
 * is set, and the caller wakes that thread).  Never waits: the breaker's
 * listener runs on whichever thread delivers its events, an event loop's
 * included (breaker.h). */
bool pgg__host_trim_opened(pgg_host *h);
/* Close the idle connections opened before born_before without a look
 * (their server ended a sibling after that: a blip ends every session),
 * and the others found dead by what their server sent meanwhile (a FATAL,
 * the close; read without a round trip); the rest are kept.
 * born_before INT64_MIN: look at all; INT64_MAX: close all.  Returns how
 * many of those closed were used within used_within_ns before now_ns: the
 * ones their callers will want back soon. */
int pgg__host_drop_dead(pgg_host *h, int64_t now_ns, int64_t used_within_ns,
                        int64_t born_before);
/* Open connections until min_idle are idle, within deadline_ns. */
int pgg__host_warm(pgg_host *h, int64_t deadline_ns);
/* How many more connections a warm-up to min_idle wants now (spares and
 * connects on their way count as had), within pool_max: 0 while the
 * host is closed or refusing. */
int pgg__host_warm_wanted(pgg_host *h);
/*
 * Run the on-connect hook (pgg_config_on_connect) on conn within
 * deadline_ns: after a new connection's connect, and after a lease's
 * DISCARD ALL.  PGG_OK, or the error with *host_fault telling whether it
 * counts against the host (a broken session, a shutdown, the bound) or not
 * (PGG_EONCONNECT: the hook's SQL or callback refused a healthy session).
 */
int pgg__host_on_connect(pgg_host *h, PGconn *conn, int64_t deadline_ns,
                         bool *host_fault, pgg_error *err);

/*
 * pgg__host_on_connect's steps, for an event loop, which runs the hook's
 * SQL on its own socket: the SQL (NULL: none; *other: the hook also has a
 * callback, which may block, and the loop does not run), the verdict on
 * its result (end: how the exec ended), the check that it left the
 * session idle, and a failed hook's connection dropped (or, after a
 * timeout, its statement cancelled from a worker).
 */
const char *pgg__host_hook_sql(const pgg_host *h, bool *other);
int pgg__host_hook_sql_done(const pgg_host *h, PGresult *res,
                            pgg_attempt_end end, bool *host_fault,
                            pgg_error *err);
int pgg__host_hook_usable(const pgg_host *h, PGconn *conn, pgg_error *err);
void pgg__host_hook_failed(pgg_host *h, PGconn *conn, int rc);
/* A session of h that joins nothing (no link): closed by the pool's closer
 * thread, as the sessions the host drops (host.c, link_close). */
void pgg__host_close_session(pgg_host *h, PGconn *conn);

/*
 * The host's breaker refused a call.  While its server is starting
 * (`starting`), wait until the health thread finds it answering (the
 * breaker is no longer open) or finds otherwise, or deadline_ns: a server
 * about to take sessions is as good as one taking them, as for a client
 * whose connect waits in its queue.  A read (write false) that waited
 * leaves only once the writes that waited with it have left (within its
 * deadline): they take the first sessions.  The waiter calls
 * wake(wake_arg) (the pool's health thread) once it counts in
 * n_back_waiting, which queues a
 * spare connect for it then, not at its next event.  Returns whether the breaker is no longer
 * open; false at once when the host is not starting.
 */
bool pgg__host_await_back(pgg_host *h, int64_t deadline_ns, bool write,
                          void (*wake)(void *), void *wake_arg);
/* For an event loop, which cannot wait in pgg__host_await_back: whether a
 * call refused by the breaker should still wait for the host (look again
 * later, within its deadline). */
bool pgg__host_coming_back(pgg_host *h);
/* The health thread's view of `starting`; clearing it wakes the waiters. */
void pgg__host_set_starting(pgg_host *h, bool on);
/* The health thread started a spare connect to the host (delta 1), or one
 * ended, adopted or not (-1): borrowers wait for it, see n_spares. */
void pgg__host_spares(pgg_host *h, int delta);

/* Refuse new borrows, wake waiters (pool shutdown). */
void pgg__host_close(pgg_host *h);

/* Remember the last host failure for stats (one line, no password). */
void pgg__host_note_error(pgg_host *h, const pgg_error *err);

typedef struct pgg_host_counts {
    int open, idle, busy, connecting, waiting;
} pgg_host_counts;
/* Parked connections count as idle. */
void pgg__host_counts(pgg_host *h, pgg_host_counts *out);

/* Calls in flight on the host (lent connections, not parked ones), read
 * without the lock for the router. */
int pgg__host_busy(pgg_host *h);

#endif
