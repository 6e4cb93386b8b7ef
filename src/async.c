/*
 * The loop driver of the call path (pgguard_async.h).  call.c decides;
 * this file waits the way a loop waits: it tells the adapter which socket
 * to watch and when to fire the context's one timer, and advances a call
 * when the loop reports readiness, the deadline or a cancel.
 *
 * A call's states:
 *   IDLE     between attempts: the path picks the next host (call.c)
 *   BACK     refused by the breaker of a host whose server is starting:
 *            waits for it within the attempt's deadline (the blocking
 *            path waits in pgg__host_await_back); or its breaker's answer
 *            needed the lock another thread held: asks again shortly
 *            (the blocking path waits for the lock)
 *   ROUND    a write refused as read-only (25006) with no primary known
 *            now: waits for the health round the refusal asked for, within
 *            the deadline, then routes again (the blocking path waits in
 *            pgg__health_await_round)
 *   PARKED   admitted on a host whose connections are all busy: waits for
 *            one (the blocking path waits on the host's condition variable)
 *   RELOOK   its borrow found the host's lock busy (host.c, "Owed"): looks
 *            again on the timer, as PARKED, but counts as no waiter
 *   SETTLE   its connect failed and the host's lock was busy: the failure's
 *            bookkeeping (host.c, "Refused") is tried again on the timer,
 *            its error and connection slot kept
 *   CONNECT  a new connection being made (PQconnectPoll)
 *   HOOK     the pool's on-connect SQL running on it (pgg_config_on_connect
 *            with SQL only: a callback may block, and is refused)
 *   TYPES    the pool's libpqtypes registrations being applied to a
 *            connection that lacks them (typed calls on: types_on)
 *   PREPARE  a registered statement being prepared on its connection
 *   QUERY    the statement on the wire
 *   LSN      a committed write's position asked in a second round trip
 *            (read_your_writes=pool, PGG_CALL_WANT_LSN)
 *   PIPED    pipeline=on: its statement queued, with its own Sync, on the
 *            context's connection to its host in pipeline mode (struct
 *            apipe), behind other calls' statements
 *   CACHE    over without an answer, its fallback wanted from the cache,
 *            whose lock was busy (cache.c, "Loops"): finishes again on the
 *            timer, until the lock is free
 *   DONE     finished, its callback due from the timer (a call never
 *            completes inside the function that started it)
 */
#include "pgguard_async.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "async.h"
#include "call.h"
#include "cancel.h"
#include "error.h"
#include "health.h"
#include "pipeline.h"
#include "pool_api.h"
#include "typed.h"
#include "types.h"

/*
 * The small functions of a call's usual path, each called once per call
 * by the one before it (on_ready, complete, finish; attempt_start, taken,
 * io_sent; drive, attempt_done), inlined into their callers: a function call costs ~14
 * instructions of prologue and epilogue, and the loop driver's calls made
 * ~190 of its ~700 per call (bench-async under callgrind).
 */
#if defined(__GNUC__)
#define HOT static inline __attribute__((always_inline))
#else
#define HOT static inline
#endif

/* The rare branches of the usual path's functions, out of line: their
 * arguments are set up only when taken. */
#if defined(__GNUC__)
#define COLD static __attribute__((noinline, cold))
#else
#define COLD static
#endif

enum {
    ST_IDLE,
    ST_BACK,
    ST_ROUND,
    ST_PARKED,
    ST_RELOOK,
    ST_SETTLE,
    ST_CONNECT,
    ST_HOOK,
    ST_TYPES,
    ST_PREPARE,
    ST_QUERY,
    ST_LSN,
    ST_PIPED,
    ST_CACHE,
    ST_DONE
};

/* How often a call parked on a busy host looks again for a connection
 * another thread gave back (its own context's give-backs wake it at
 * once), and a call waiting for a starting host looks again at it (the
 * health thread cannot wake a loop). */
#define PARK_POLL_NS (1 * PGG_NS_PER_MS)

/* Calls whose SQL and parameters fit in this much room come from the
 * context's free list (up to FREE_MAX kept): no malloc per call once the
 * loop runs. */
#define CALL_ROOM 512
#define FREE_MAX 64

/* Kept connections (struct pgg_async): how often the loop looks whether
 * another borrower waits for one of their hosts, so the bound on that
 * borrower's wait for a connection only this loop holds idle (the
 * context's one timer, armed while it keeps any); and how long one may
 * sit unused before it goes back to the pool. */
#define KEEP_CHECK_NS (2 * PGG_NS_PER_MS)
#define KEEP_IDLE_NS (100 * PGG_NS_PER_MS)

typedef struct apipe apipe;

/* What a call's read, keep and take touch first, in one 64-byte line
 * (sock_new aligns it): a server's calls, each started on a later loop
 * turn, take kept sockets whose lines the turn's other answers evicted. */
struct pgg_async_sock {
    _Alignas(64) pgg_async *ac;
    pgg_async_call *call; /* NULL: a pipe's, a kept one, or free */
    /* Kept (call and pipe NULL): its idle connection, that connection's
     * host, and when its last call ended. */
    pgg_link *kl;
    pgg_host *kh;
    int64_t kept_at;
    pgg_async_sock *next; /* on the free list, or the kept list */
    int fd; /* the loop's own descriptor of it (loop_fd, connect_fd) */
    int on; /* POLLIN / POLLOUT interests the adapter holds */
    int krole; /* its host's role then (pgg_role) */
    apipe *pipe; /* a pipe's socket (then call is NULL) */
    void *data;
};

struct pgg_async_call {
    /* Set by the start (call_new, start) before they are read. */
    pgg_async *ac;
    pgg_async_call *next;
    pgg_async_fn fn;
    void *userdata;
    /* Zeroed by the start (call_new), from prev up to h: no more than 64
     * bytes, which the compiler zeroes with four wide stores (more, with a
     * string instruction of twice the count). */
    pgg_async_call *prev;
    int state;
    /* CONNECT, HOOK: the loop's descriptor of conn's socket (0: none yet)
     * and that socket's inode (connect_fd, set with it); the link's once
     * connected. */
    int conn_fd;
    bool has_opts;
    bool unpark; /* it gave a connection back: wake calls parked on its host */
    bool pooled; /* a CALL_ROOM block, back to the free list when done */
    bool reprepared; /* its registered statement was found gone once */
    bool ended_behind; /* the server's FATAL was read behind an answer of
                          this attempt's: its session is not reused */
    int64_t wait_until; /* the current wait's deadline (DONE: 0) */
    PGconn *conn; /* CONNECT */
    PGresult *res;
    PGresult *written; /* LSN: the write's answer, returned after */
    pgg_async_sock *sock; /* the socket it waits on, or NULL */
    /* From here on, not zeroed per call: the attempt under way, each field
     * set before it is read (h, l, a by attempt_start; ticket by admit;
     * attempt_deadline by drive; connect_at by borrow; role by exec_start
     * or pipe_send; io when a statement is sent), then q, opts by the
     * start, and info, err, c, cm by pgg__call_begin (4 kB).
     *
     * In the order a usual call touches them, the rest behind: 32 calls in
     * flight rotate 32 records through the loop thread's L1 data cache
     * (48 kB here), and a call started on a later loop turn (a server's
     * next request) finds its recycled record's lines evicted by the turn's
     * other answers.  The record is 64-byte aligned (call_new) so that the
     * lines a call touches are the same every time: the head, the attempt,
     * c, q and parked_at (0-447), err's code and message (448, 586), cm's
     * rejected and cand (one line), info's host, counters with its cause's
     * code, cause's message and times (info on a line of its own), the SQL
     * copied behind: 16 lines.  bench-async under callgrind --cache-sim=yes,
     * L1 data misses per call: 67 -> 59 --deferred, 47 -> 43 chained. */
    pgg_host *h;
    pgg_link *l;
    pgg_ticket ticket;
    int role;
    int64_t attempt_deadline;
    pgg_link_io io;
    pgg__attempt a;
    pgg__call c;
    pgg_query q;
    int64_t parked_at; /* when the attempt first parked (0: not yet) */
    pgg_error err;
    pgg__call_mem cm;
    _Alignas(64) pgg_info info;
    pgg_call opts;
    int64_t connect_at; /* CONNECT, HOOK: when its connect started (the
                           reading it was reserved with: its ask's start) */
    /* CONNECT: its connect, whose steps the health thread makes (host.c,
     * "Asked connects"; set with connect_at), or NULL: stepped on the loop. */
    pgg_asked *ask;
    ino_t conn_ino;
    unsigned long round_want; /* ROUND: the health round it waits for */
    pgg_async_call *pnext; /* PIPED: the next statement in flight */
    int64_t sent;          /* PIPED: when it was queued */
    int settle_why;        /* SETTLE: how its connect failed (pgg_borrow_fail) */
    /* The copied SQL and parameters follow. */
};

/*
 * pipeline=on: one connection per host of this context in libpq pipeline
 * mode.  A call that would borrow or connect queues its statement there
 * instead, with its own Sync (its own implicit transaction: an error
 * aborts no neighbour), while fewer than PIPE_DEPTH are in flight and the
 * oldest has been in flight less than pipeline.stall_ms; answers are taken
 * in order as the socket becomes readable, each judged as the call's own
 * attempt (pgg__pool_exec_done).  No thread hand-off: the loop reads for
 * everyone.  When a call's deadline passes (or it is cancelled) with its
 * statement in flight, the connection is dropped and cancelled (pipeline.h's
 * rule): that call ends at its deadline, the other statements in flight are
 * lost, sent (a write's outcome unknown, never retried).  When the server
 * ends the session itself (pg_terminate_backend, a shutdown), its FATAL is
 * its last message and it reads its input in order, a Sync's answer
 * flushed before the next statement is read: every statement behind the
 * one it was at never ran, and goes back to the path as not sent (a
 * reused session: once more on a new connection, writes too).  An empty
 * pipe leaves pipeline mode and goes back to the host before the loop
 * waits again, as the spare does; one whose server's FATAL libpq already
 * read behind the last answer is discarded instead.
 */
#define PIPE_DEPTH 128

/* apipe.over: how the server ended the session, at first's statement. */
enum {
    OVER_NO,
    OVER_ANSWER, /* its FATAL was first's answer (res): first ran at most
                    in part, and was never committed by its Sync */
    OVER_SYNC    /* its FATAL came after first's answer, before its Sync's:
                    first may have committed */
};

struct apipe {
    pgg_async *ac;
    pgg_host *h;
    pgg_link *l; /* NULL: no pipe on this host now */
    pgg_async_sock *sock;
    pgg_async_call *first, *last; /* in flight, oldest first */
    int n;
    bool got;       /* first's result came: its Sync is next */
    PGresult *res;  /* first's result */
    int64_t ended;  /* when the last answer came */
    int over;       /* OVER_*: nothing joins; the close is awaited */
    /* Pipes opened on this host so far: a turn of pipe_io tells the pipe
     * it found broken from one its callbacks opened since. */
    unsigned opened;
    char why[160];  /* over: the server's message */
};

struct pgg_async {
    pgg_pool *pool;
    apipe *pipes; /* one per host; NULL when pipeline=off */
    int64_t stall_ns;
    pgg_async_ev ev;
    bool attached;
    /* Attached and not being freed: a call may start (start's one test).
     * Off from the first step of pgg_async_free: a callback that starts
     * its next call (a worker's loop) would otherwise keep the free's
     * "complete every call in flight" going for ever. */
    bool accepting;
    pgg_async_call *head;
    int pending;
    /* Calls in ST_PARKED: a give-back looks for one to wake only when
     * there is one, instead of walking every call in flight each time. */
    int nparked;
    int64_t timer_at; /* INT64_MAX: disarmed */
    /* pgg_async_handle_timer's clock while it runs (0 otherwise): a call
     * its callbacks start that ends at once is due after it. */
    int64_t timer_now;
    pgg_async_call *free_calls; /* CALL_ROOM blocks, linked by next */
    int nfree;
    /*
     * Kept connections: those of queries that ended, each with its socket
     * still watched for reading, most recently used first.  The next call
     * of this context to the same host takes one, sparing the loop a
     * delete and an add (two epoll_ctl per call) and the pool a give-back
     * and a borrow, whether it starts in a callback or on a later loop
     * turn (a server's next request).  A kept connection is lent (counted
     * busy under the host's mu, so pool_max holds) and reported idle
     * (host.h, n_kept), as a thread's parked one is.  Nobody else can
     * touch it: only this loop reads it, and closes it (its socket
     * forgotten first: tsan6's rule).  It goes back to the pool:
     *   - at once when a blocking borrower on the loop's own thread (a
     *     pgg_exec between loop runs, which no loop turn can serve while
     *     it waits) would wait: pgg__host_loop_give_back, and on
     *     pgg_async_free;
     *   - within KEEP_CHECK_NS when another borrower waits for its host
     *     (a blocking thread, another loop's parked call: park_block), or
     *     the host closed;
     *   - after KEEP_IDLE_NS unused (fewer calls in flight than before),
     *     past max_lifetime, when the host's role changed or its breaker
     *     opened (the same look).
     * No more are kept than calls were in flight at once lately (peak).  If it
     * becomes readable while kept, the server spoke unprompted (the FATAL
     * of pg_terminate_backend, the close, a NOTICE): the loop reads it at
     * once, and a session the server ended is closed, never lent again
     * (kept_read).
     */
    pgg_async_sock *kept;
    int nkept;
    int64_t keep_check_at; /* the next look at the kept (INT64_MAX: none) */
    /* The most calls in flight at once since the last look at the kept
     * (kept_check; from there on at least those in flight plus those
     * kept): no more are kept than that. */
    int peak;
    /* unpark gave the last connection it gave back while outsiders waited
     * at once to its own parked call: the next goes idle. */
    bool gave_own;
    /* While it keeps any (kept_on): its entry (kept_entry) in the list of
     * such contexts (kept_all; kept_on is the context's thread's, or
     * kept_mu's when that thread gives back). */
    bool kept_on;
    struct kept_entry *kept_entry;
    /* Its loop's thread is giving back what it keeps, out of the list and
     * with kept_mu released (kept_thread_give_back; under kept_mu):
     * kept_unregister on another thread waits for the end (kept_cv);
     * kept_back_next: the other contexts of that give-back. */
    bool kept_busy;
    pgg_async *kept_back_next;
    pgg_async_sock *free_socks;
    /* Its host operations' tie to the host (host.h, pgg__host_loop): on
     * its loop's thread a host's mu is only tried, and what could not take
     * it is owed; owed_at: when its timer settles what is owed next
     * (owed_settle; INT64_MAX: nothing owed). */
    pgg_host_loop hl;
    int64_t owed_at;
    /* Fired once for good: made the call's handle when it is cancelled,
     * so that the path's own cancel rules apply (call.c, pool.c). */
    pgg_cancel *fired;
};

/* ------------------------------------------------------------ context */

static struct kept_entry *kept_entry_new(pgg_async *ac);
static void loop_owe(pgg_host_loop *self);
static void loop_owed_first(pgg_host_loop *self);
static void cache_later(pgg_host_loop *self, void *call_mem);

pgg_async *pgg_async_new(pgg_pool *pool, pgg_error *err)
{
    pgg_async *ac;

    if (!pool) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL, "pgg_async_new: NULL pool");
        return NULL;
    }
    if (pool->nhosts > 0) {
        bool callback;

        (void)pgg__host_hook_sql(&pool->hosts[0], &callback);
        if (callback) {
            pgg__error_set(err, PGG_ENOTSUP, NULL, NULL,
                           "pgg_async_new: the pool's on-connect hook has a "
                           "callback, which may block the loop on each new "
                           "connection (an SQL-only hook runs on the loop)");
            return NULL;
        }
    }
    ac = calloc(1, sizeof *ac);
    if (ac) {
        ac->fired = pgg_cancel_new();
        ac->kept_entry = kept_entry_new(ac);
    }
    if (ac && ac->fired && pool->cfg->pipeline && pool->nhosts > 0) {
        ac->pipes = calloc((size_t)pool->nhosts, sizeof *ac->pipes);
        for (int i = 0; ac->pipes && i < pool->nhosts; i++) {
            ac->pipes[i].ac = ac;
            ac->pipes[i].h = &pool->hosts[i];
        }
        ac->stall_ns = pool->cfg->pipeline_stall_ms * PGG_NS_PER_MS;
    }
    if (!ac || !ac->fired || !ac->kept_entry || (pool->cfg->pipeline && !ac->pipes)) {
        if (ac) {
            pgg_cancel_free(ac->fired);
            free(ac->kept_entry);
            free(ac->pipes);
        }
        free(ac);
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    pgg_cancel_fire(ac->fired);
    ac->pool = pool;
    ac->timer_at = INT64_MAX;
    ac->keep_check_at = INT64_MAX;
    ac->hl.owe = loop_owe;
    ac->hl.owed_first = loop_owed_first;
    ac->hl.cache_later = cache_later;
    ac->owed_at = INT64_MAX;
    return ac;
}

int pgg_async_attach(pgg_async *ac, const pgg_async_ev *ev)
{
    if (!ac || !ev || !ev->add_read || !ev->del_read || !ev->add_write ||
        !ev->del_write || !ev->close_sock || !ev->schedule_timer)
        return PGG_EINVAL;
    if (ac->attached)
        return PGG_ESTATE;
    ac->ev = *ev;
    ac->attached = true;
    ac->accepting = true;
    return PGG_OK;
}

void *pgg_async_ev_data(const pgg_async *ac)
{
    return ac ? ac->ev.data : NULL;
}

int pgg_async_pending(const pgg_async *ac)
{
    return ac ? ac->pending : 0;
}

int pgg__async_parked(const pgg_async *ac)
{
    return ac->nparked;
}

int pgg__async_kept(const pgg_async *ac)
{
    return ac->nkept;
}

int pgg__async_relooking(const pgg_async *ac)
{
    int n = 0;

    for (const pgg_async_call *k = ac->head; k; k = k->next)
        n += k->state == ST_RELOOK || k->state == ST_SETTLE;
    return n;
}

int pgg__async_cache_waits(const pgg_async *ac)
{
    int n = 0;

    for (const pgg_async_call *k = ac->head; k; k = k->next)
        n += k->state == ST_CACHE;
    return n;
}

int pgg_async_sock_fd(const pgg_async_sock *s)
{
    return s->fd;
}

void **pgg_async_sock_data(pgg_async_sock *s)
{
    return &s->data;
}

/*
 * The one timer.  A wait that ends before the timer is due moves it
 * earlier; a wait that ends or moves later leaves it: it then fires early,
 * finds nothing due, and is armed again for the earliest wait.  So a
 * stream of calls with equal timeouts touches the loop's timer about once
 * per timeout, not once per call.
 */
static void want_timer(pgg_async *ac, int64_t at)
{
    int64_t now;

    if (at >= ac->timer_at)
        return;
    ac->timer_at = at;
    now = pgg__now_ns();
    ac->ev.schedule_timer(ac->ev.data,
                          at <= now ? 0 : (at - now + 999) / 1000);
}

/* After the timer fired: armed again for the earliest wait, if any. */
static void rearm(pgg_async *ac)
{
    int64_t at = INT64_MAX;

    for (pgg_async_call *k = ac->head; k; k = k->next)
        if (k->wait_until < at)
            at = k->wait_until;
    if (ac->kept && ac->keep_check_at < at)
        at = ac->keep_check_at;
    if (ac->owed_at < at)
        at = ac->owed_at;
    ac->timer_at = INT64_MAX;
    if (at < INT64_MAX)
        want_timer(ac, at);
}

/* A call's wait: until at (0: due now, a finished call's callback). */
static void wait_until(pgg_async_call *k, int64_t at)
{
    k->wait_until = at;
    want_timer(k->ac, at);
}

/* ------------------------------------------------------ the host's lock */

/*
 * On its loop's thread the context never waits for a host's mu (host.c,
 * "Owed"): its host operations run with pgg__host_loop set to it, saved
 * and restored (a callback may run another context's calls; a blocking
 * call made in a callback still waits for its own borrow, and what it
 * owes, a give-back that found mu busy, is settled here too), and what
 * could not take mu is owed to the host and settled here on the timer.  Set at the entry points
 * whose paths are not the usual call's (the timer, writes, cancels, a
 * read that is not a query's answer, give-back and free) and around each
 * host operation of the usual paths (a borrow, a give-back that is no
 * keep, a judgement past a success): a call served on a kept connection
 * pays nothing for it.
 */
static inline pgg_host_loop *loop_enter(pgg_async *ac)
{
    pgg_host_loop *prev = pgg__host_loop;

    pgg__host_loop = &ac->hl;
    return prev;
}

static inline void loop_leave(pgg_host_loop *prev)
{
    pgg__host_loop = prev;
}

/* A host operation owed something (pgg_host_loop.owe): settled on the
 * timer, a look from now. */
static void loop_owe(pgg_host_loop *self)
{
    pgg_async *ac = (pgg_async *)((char *)self - offsetof(pgg_async, hl));

    if (ac->owed_at != INT64_MAX)
        return;
    ac->owed_at = pgg__now_ns() + PARK_POLL_NS;
    want_timer(ac, ac->owed_at);
}

/* The host had nothing owed before (pgg_host_loop.owed_first): the health
 * thread settles it too, told now (one write until it begins its turn,
 * however many records).  The loop may not turn again soon (run on demand: EVLOOP_ONCE
 * until a callback, pgg_async_give_back before it stops), and a blocking
 * borrower asleep on the host is woken only by whoever applies it. */
static void loop_owed_first(pgg_host_loop *self)
{
    pgg_async *ac = (pgg_async *)((char *)self - offsetof(pgg_async, hl));

    pgg__health_settle_owed(ac->pool->health);
}

/* Every host's owed records applied (tried, or waited for: wait, the
 * free); looked at again a look later while any is left.  Another
 * context's are settled too: a record is the host's, not the context's.
 * So are the bulkhead's owed leaves (a call's end that found its lock
 * busy, pgg__call_leave_slow). */
static void owed_settle(pgg_async *ac, int64_t now, bool wait)
{
    bool left = !pgg__bulkhead_settle_owed(&ac->pool->bulkhead, wait);

    for (int i = 0; i < ac->pool->nhosts; i++)
        left |= !pgg__host_settle_owed(&ac->pool->hosts[i], wait);
    ac->owed_at = left ? now + PARK_POLL_NS : INT64_MAX;
}

/* --------------------------------------------------------------- sockets */

/*
 * The descriptors the adapter watches are the loop's own duplicates of
 * libpq's sockets, never libpq's: libpq closes its descriptor when it gives
 * up (a connection lost inside PQconsumeInput, an address given up inside
 * PQconnectPoll), before this file can tell the adapter to stop watching,
 * and a socket another thread opens meanwhile can get that number: the
 * adapter's del_read/del_write (epoll_ctl, uv_poll_stop, ev_io_stop) would
 * then act on someone else's socket.  A duplicate stays open until the
 * adapter has forgotten it.  A connection's is made once, the first time a
 * loop watches it, and lives on its link (pgg_link.loop_fd, closed with the
 * link): a call on a pooled connection costs no extra syscall.
 */
static int loop_fd(pgg_link *l)
{
    if (!l->loop_fd) {
        /* At 1 or above: 0 means none. */
        int fd = fcntl(PQsocket(l->conn), F_DUPFD_CLOEXEC, 1);

        if (fd < 0)
            return -1;
        l->loop_fd = fd;
    }
    return l->loop_fd;
}

/* A socket could not be watched for want of descriptors (errno, set by
 * loop_fd or connect_fd), not of memory (sock_new). */
static bool out_of_fds(void)
{
    return errno == EMFILE || errno == ENFILE;
}

/* Tell the adapter to forget s, and keep s for reuse. */
static void sock_free(pgg_async *ac, pgg_async_sock *s)
{
    if (s->on & POLLIN)
        ac->ev.del_read(ac->ev.data, s);
    if (s->on & POLLOUT)
        ac->ev.del_write(ac->ev.data, s);
    s->on = 0;
    ac->ev.close_sock(ac->ev.data, s);
    s->data = NULL;
    s->call = NULL;
    s->pipe = NULL;
    s->kl = NULL;
    s->kh = NULL;
    s->next = ac->free_socks;
    ac->free_socks = s;
}

static void sock_close(pgg_async_call *k)
{
    if (!k->sock)
        return;
    sock_free(k->ac, k->sock);
    k->sock = NULL;
}

static void unpark(pgg_async *ac, const pgg_host *h);
static void flush_pipes(pgg_async *ac);

/*
 * The contexts that keep connections, of every thread, each an entry with
 * its loop's thread (kept_entry.thread): a blocking borrower about to wait
 * has its own thread's contexts give everything back first
 * (pgg__host_loop_give_back, set on a thread while it may have one in the
 * list).  One list for all threads, not one per thread, so that a context
 * freed on another thread (its loop stopped, its loop's thread still alive
 * and calling: pgguard_async.h's rule) leaves that thread no pointer to it.
 *
 * A loop's thread never waits for kept_mu, which every thread of the
 * process with a loop or a blocking borrower takes: a holder preempted
 * inside it made the loop sleep for a scheduler slice (the closer's lock
 * did, round 13).  An entry enters the list with a compare-and-swap push
 * (a context's first kept connection); everything else, its walks and the
 * unlinking of entries, is under kept_mu, which the loop only tries: a
 * look that finds none kept and could not take it leaves the entry listed
 * (a walk gives back nothing of it; the next look, give-back or free
 * takes it out), and a context freed on its loop's thread while the lock
 * is busy leaves its entry listed and marked gone (ac NULL), unlinked and
 * freed by the next holder (kept_sweep).  Hence entries apart from their
 * contexts.  A borrower's give-back and a free on another thread wait for
 * the lock: they are blocking calls.
 *
 * The lock is never held across a give-back: that calls the loop's hooks
 * (user code for another loop's adapter) and every host's lock (loop14).
 * A context out of the list being given back is marked kept_busy instead,
 * which only a free on another thread waits for (kept_cv).
 */
typedef struct kept_entry {
    struct kept_entry *next; /* under kept_mu, or before its push */
    _Atomic(pgg_async *) ac; /* NULL: gone (its context freed) */
    uint64_t thread;         /* its loop's thread (this_thread); 0: never listed */
} kept_entry;

static pthread_mutex_t kept_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t kept_cv = PTHREAD_COND_INITIALIZER;
static _Atomic(kept_entry *) kept_all;

/* A number of this thread's own, never another thread's: not a
 * thread-local's address (pgg__thread_token), which a new thread reuses
 * when it gets a dead one's stack, while that thread's unfreed context
 * may still be listed.  Taken when a context enters the list and when a
 * borrower would wait: never per call. */
static _Atomic uint64_t thread_count;
static PGG_TLS uint64_t thread_number;

static uint64_t this_thread(void)
{
    if (!thread_number)
        thread_number = atomic_fetch_add(&thread_count, 1) + 1;
    return thread_number;
}

static void kept_give_back_each(pgg_async *ac);

/* e out of the list, under kept_mu.  Only pushes race with it, and only
 * on the head. */
static void kept_remove(kept_entry *e)
{
    kept_entry *p = e;

    if (atomic_compare_exchange_strong(&kept_all, &p, e->next))
        return;
    /* Behind the head (p, reloaded by the exchange). */
    while (p->next != e)
        p = p->next;
    p->next = e->next;
}

/* The entries of contexts freed while the lock was busy, unlinked and
 * freed; under kept_mu. */
static void kept_sweep(void)
{
    for (kept_entry *e = atomic_load(&kept_all), *next; e; e = next) {
        next = e->next;
        if (!atomic_load_explicit(&e->ac, memory_order_acquire)) {
            kept_remove(e);
            free(e);
        }
    }
}

/* Out of the list, under kept_mu (ac's thread's, or ac no longer used
 * by it). */
static void kept_unlist(pgg_async *ac)
{
    if (!ac->kept_on)
        return;
    ac->kept_on = false;
    kept_remove(ac->kept_entry);
}

/* Has this thread a context in the list?  Under kept_mu. */
static bool kept_mine(void)
{
    uint64_t me = this_thread();

    for (kept_entry *e = atomic_load(&kept_all); e; e = e->next)
        if (e->thread == me && atomic_load_explicit(&e->ac, memory_order_relaxed))
            return true;
    return false;
}

/* pgg__host_loop_give_back: this thread's contexts give back what they
 * keep: taken out of the list under kept_mu, given back without it (a
 * free on another thread waits for kept_busy to end). */
static void kept_thread_give_back(void)
{
    uint64_t me = this_thread();
    pgg_async *mine = NULL;

    pthread_mutex_lock(&kept_mu);
    kept_sweep();
    for (kept_entry *e = atomic_load(&kept_all), *next; e; e = next) {
        pgg_async *ac = atomic_load_explicit(&e->ac, memory_order_relaxed);

        next = e->next;
        if (e->thread != me)
            continue;
        kept_unlist(ac);
        ac->kept_busy = true;
        ac->kept_back_next = mine;
        mine = ac;
    }
    pgg__host_loop_give_back = NULL;
    pthread_mutex_unlock(&kept_mu);
    if (!mine)
        return;
    for (pgg_async *ac = mine; ac; ac = ac->kept_back_next)
        kept_give_back_each(ac);
    pthread_mutex_lock(&kept_mu);
    for (pgg_async *ac = mine, *next; ac; ac = next) {
        next = ac->kept_back_next;
        ac->kept_back_next = NULL;
        ac->kept_busy = false;
    }
    pthread_cond_broadcast(&kept_cv);
    pthread_mutex_unlock(&kept_mu);
}

/* In the list from the first connection kept until a look finds none kept
 * (kept_check) or all are given back: not on every take and keep.  A
 * push: the loop's thread waits for no other. */
static void kept_register(pgg_async *ac)
{
    kept_entry *e = ac->kept_entry;

    ac->kept_on = true;
    e->thread = this_thread();
    e->next = atomic_load_explicit(&kept_all, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&kept_all, &e->next, e,
                                                  memory_order_release,
                                                  memory_order_relaxed))
        ;
    pgg__host_loop_give_back = kept_thread_give_back;
}

/* Out of the list; this thread's hook goes when it has no context left
 * there.  On the context's own thread, only when the lock is free (false:
 * still listed); on another, after a give-back its loop's thread is
 * making (a blocking call there). */
static bool kept_unregister(pgg_async *ac)
{
    kept_entry *e = ac->kept_entry;
    bool mine;

    if (!e->thread)
        return true; /* never listed */
    if (e->thread == this_thread()) {
        /* Never busy here: a thread does not free a context from inside
         * its own give-back. */
        if (!ac->kept_on)
            return true;
        if (pthread_mutex_trylock(&kept_mu) != 0)
            return false;
    } else {
        pthread_mutex_lock(&kept_mu);
        while (ac->kept_busy)
            pthread_cond_wait(&kept_cv, &kept_mu);
    }
    kept_unlist(ac);
    kept_sweep();
    mine = kept_mine();
    pthread_mutex_unlock(&kept_mu);
    if (!mine)
        pgg__host_loop_give_back = NULL;
    return true;
}

static kept_entry *kept_entry_new(pgg_async *ac)
{
    kept_entry *e = calloc(1, sizeof *e);

    if (e)
        atomic_init(&e->ac, ac);
    return e;
}

/* The free's end: the entry goes, or stays listed and gone for the next
 * holder of kept_mu to free (kept_unregister could not take it out). */
static void kept_entry_free(pgg_async *ac)
{
    if (ac->kept_on)
        atomic_store_explicit(&ac->kept_entry->ac, NULL, memory_order_release);
    else
        free(ac->kept_entry);
}

pthread_mutex_t *pgg__async_kept_mutex(void)
{
    return &kept_mu;
}

int pgg__async_kept_listed(void)
{
    int n = 0;

    pthread_mutex_lock(&kept_mu);
    for (kept_entry *e = atomic_load(&kept_all); e; e = e->next)
        n++;
    pthread_mutex_unlock(&kept_mu);
    return n;
}

/* Out of the kept list (pp: the link to s in it). */
static void kept_unlink(pgg_async *ac, pgg_async_sock **pp)
{
    pgg_async_sock *s = *pp;

    *pp = s->next;
    s->next = NULL;
    pgg__host_kept(s->kh, -1);
    ac->nkept--;
}

/* A kept connection goes back to its host's pool (closed there when it
 * is not reusable or too old), its socket forgotten first.  No call of
 * this context is woken here (the caller may be in the middle of one):
 * one parked on that host finds it when it looks again (unpark).  The
 * give-back judges its age at the time it is given (max_lifetime_ms:
 * closed when it comes back this old): at its last use it was young, so
 * one past its lifetime now is given at now, and closed there; a young
 * one keeps its last use as its idle time. */
static void kept_give_back(pgg_async *ac, pgg_async_sock **pp)
{
    pgg_async_sock *s = *pp;
    pgg_host *h = s->kh;
    pgg_link *l = s->kl;
    int64_t now = pgg__now_ns();
    int64_t at = pgg__link_too_old(l, now) ? now : s->kept_at;

    kept_unlink(ac, pp);
    sock_free(ac, s);
    pgg__host_give_back(h, l, at);
}

/* Every kept connection back to the pool (the context's list entry is
 * the caller's). */
static void kept_give_back_each(pgg_async *ac)
{
    while (ac->kept)
        kept_give_back(ac, &ac->kept);
}

/* Every kept connection back to the pool, and out of the list. */
static void kept_give_back_all(pgg_async *ac)
{
    kept_give_back_each(ac);
    if (ac->kept_on)
        (void)kept_unregister(ac);
}

/* Open by its failures or held open by the operator (pgg_pool_force_open):
 * either way no call is admitted on the host. */
static bool breaker_open(const pgg_breaker *b)
{
    pgg_breaker_state st = pgg__breaker_state(b);

    return st == PGG_BREAKER_OPEN || st == PGG_BREAKER_FORCED_OPEN;
}

/*
 * The look at the kept connections, every KEEP_CHECK_NS while there are
 * any (the context's timer): back to the pool when another borrower waits
 * for their host or the host closed, when unused for KEEP_IDLE_NS, past
 * max_lifetime (closed then), when their host's role changed since (a
 * failover: the pool decides again what its sessions are good for) or its
 * breaker opened (or was forced open).
 */
static void kept_check(pgg_async *ac, int64_t now)
{
    pgg_async_sock **pp = &ac->kept;
    bool gave = false;

    while (*pp) {
        pgg_async_sock *s = *pp;

        if (pgg__host_wanted(s->kh) || now - s->kept_at >= KEEP_IDLE_NS ||
            pgg__link_too_old(s->kl, now) ||
            atomic_load_explicit(&s->kh->role, memory_order_relaxed) != s->krole ||
            breaker_open(&s->kh->breaker)) {
            kept_give_back(ac, pp);
            gave = true;
        } else {
            pp = &s->next;
        }
    }
    ac->keep_check_at = ac->kept ? now + KEEP_CHECK_NS : INT64_MAX;
    /* Left listed when kept_mu is busy: the next look, give-back or free
     * tries again. */
    if (!ac->kept && ac->kept_on)
        (void)kept_unregister(ac);
    /* What is in use or kept now: the kept shrink by idling out, not by
     * a look that came between two calls' ends. */
    ac->peak = ac->pending + ac->nkept;
    /* Once the list is walked: a woken call may take or keep some. */
    for (int i = 0; gave && ac->nparked > 0 && i < ac->pool->nhosts; i++)
        unpark(ac, &ac->pool->hosts[i]);
}

/*
 * A kept connection's socket became readable: its server spoke unprompted
 * (pg_terminate_backend's FATAL, the close, a NOTICE or a parameter's new
 * value).  Read now: the loop is level-triggered, and what is read is
 * parsed here.  A session still open and idle stays kept; one the server
 * ended is closed at once, never lent again, and its pooled idle siblings
 * opened before its last answer go too, those opened since are looked at
 * (pool.c's rule for a session that ended, settle).  Kept siblings stay:
 * this loop sees each one's own end as it comes.
 */
static void kept_read(pgg_async_sock *s)
{
    pgg_async *ac = s->ac;
    pgg_async_sock **pp = &ac->kept;
    pgg_host *h = s->kh;
    pgg_link *l = s->kl;
    int64_t alive_at = s->kept_at;

    if (PQconsumeInput(l->conn) && pgg__link_held_ok(l->conn) &&
        PQtransactionStatus(l->conn) == PQTRANS_IDLE)
        return;
    while (*pp != s)
        pp = &(*pp)->next;
    kept_unlink(ac, pp);
    sock_free(ac, s);
    pgg__host_discard(h, l);
    /* Alive at its last answer: the idle siblings opened since are looked
     * at, not closed (pool.c, settle). */
    pgg__pool_session_ended(ac->pool, h, alive_at, pgg__now_ns());
    unpark(ac, h);
}

/* After a callback or an event: an empty pipe goes back to its host. */
static inline void flush_spare(pgg_async *ac)
{
    if (ac->pipes)
        flush_pipes(ac);
}

/*
 * Before the loop waits again (the end of an event's handling): empty
 * pipes go back, and kept connections get their look (kept_check) armed
 * if it is not.  Armed here, not when a connection is kept: a call started
 * in the callback of the one before takes the connection back at once,
 * and a look armed for that instant would find nothing kept and leave
 * none armed (handle_timer) for those kept when such a stream stops.
 */
static inline void before_wait(pgg_async *ac)
{
    flush_spare(ac);
    if (ac->kept && ac->keep_check_at == INT64_MAX) {
        /* The head is the one kept last. */
        ac->keep_check_at = ac->kept->kept_at + KEEP_CHECK_NS;
        want_timer(ac, ac->keep_check_at);
    }
}

/* May k's connection be lent again after its query?  A pooled one was
 * reusable when lent, and only a read-your-writes exec may change its
 * modes (pipeline) on the loop: then only its session's state is asked
 * (pgg__pool_attempt's rule); a new one's modes are the hook's: all. */
static bool still_reusable(const pgg_async_call *k)
{
    if (k->a.reused && !k->c.q->vis)
        return pgg__link_idle_after_call(k->l->conn);
    return pgg__link_reusable(k->l->conn);
}

/* k's query was answered on a session that stays usable: keep its
 * connection and socket (see struct pgg_async).  False when they do not
 * qualify (the caller gives them back): no more kept than calls were in
 * flight lately (peak), none while another borrower waits for the host. */
HOT bool keep_spare(pgg_async_call *k)
{
    pgg_async *ac = k->ac;
    pgg_async_sock *s = k->sock;

    if (!s || s->on != POLLIN || ac->nkept >= ac->peak || k->l->ended ||
        pgg__host_wanted(k->h) || !still_reusable(k))
        return false;
    s->call = NULL;
    /* As a give-back would leave it: its startup report is no longer
     * current. */
    k->l->fresh = false;
    s->kl = k->l;
    s->kh = k->h;
    s->kept_at = k->a.ended;
    s->krole = atomic_load_explicit(&k->h->role, memory_order_relaxed);
    s->next = ac->kept;
    ac->kept = s;
    ac->nkept++;
    if (!ac->kept_on)
        kept_register(ac);
    pgg__host_kept(k->h, 1);
    /* Its look is armed before the loop waits (before_wait). */
    k->sock = NULL;
    k->l = NULL;
    return true;
}

/* k takes the kept s (out of the list: the caller unlinked it). */
static inline void kept_take(pgg_async_call *k, pgg_async_sock *s)
{
    k->ac->nkept--;
    pgg__host_kept(s->kh, -1);
    k->l = s->kl;
    k->sock = s;
    s->kl = NULL;
    s->kh = NULL;
    s->call = k;
}

/* take_spare past its usual case: a kept connection of h behind others,
 * or one past max_lifetime (given back: a parked call of this context
 * looks again on its own timer). */
static bool take_spare_slow(pgg_async_call *k, pgg_host *h)
{
    pgg_async *ac = k->ac;
    pgg_async_sock **pp = &ac->kept;
    pgg_async_sock *s;

    for (;;) {
        while (*pp && (*pp)->kh != h)
            pp = &(*pp)->next;
        if (!*pp)
            return false;
        if (!pgg__link_too_old((*pp)->kl, k->c.now))
            break;
        {
            pgg_host_loop *prev = loop_enter(ac);

            kept_give_back(ac, pp);
            loop_leave(prev);
        }
    }
    s = *pp;
    *pp = s->next;
    kept_take(k, s);
    return true;
}

/* Take a kept connection of h for an attempt, the most recently used,
 * when the role check needs no report from the session
 * (pgg__pool_taken_ready then passes it).  Inline: the usual case is the
 * list's head. */
static inline bool take_spare(pgg_async_call *k, pgg_host *h)
{
    pgg_async *ac = k->ac;
    pgg_async_sock *s = ac->kept;

    if (!s || (k->c.intent != PGG_READ &&
               atomic_load_explicit(&h->role, memory_order_relaxed) ==
                   PGG_ROLE_UNKNOWN))
        return false;
    if (s->kh != h || pgg__link_too_old(s->kl, k->c.now))
        return take_spare_slow(k, h);
    ac->kept = s->next;
    kept_take(k, s);
    return true;
}

/* A socket to watch on fd (loop_fd, connect_fd).  NULL when out of
 * memory. */
static pgg_async_sock *sock_new(pgg_async *ac, int fd)
{
    pgg_async_sock *s = ac->free_socks;

    if (s)
        ac->free_socks = s->next;
    else if (!(s = aligned_alloc(_Alignof(pgg_async_sock), sizeof *s)))
        return NULL;
    s->ac = ac;
    s->fd = fd;
    s->on = 0;
    s->data = NULL;
    s->call = NULL;
    s->pipe = NULL;
    s->kl = NULL;
    s->kh = NULL;
    return s;
}

/* Tell the adapter s's interests: want (POLLIN / POLLOUT). */
static void sock_interest(pgg_async *ac, pgg_async_sock *s, int want)
{
    if ((want & POLLIN) && !(s->on & POLLIN))
        ac->ev.add_read(ac->ev.data, s);
    else if (!(want & POLLIN) && (s->on & POLLIN))
        ac->ev.del_read(ac->ev.data, s);
    if ((want & POLLOUT) && !(s->on & POLLOUT))
        ac->ev.add_write(ac->ev.data, s);
    else if (!(want & POLLOUT) && (s->on & POLLOUT))
        ac->ev.del_write(ac->ev.data, s);
    s->on = want & (POLLIN | POLLOUT);
}

/* Watch fd (k's connection's, from loop_fd or connect_fd) for want
 * (POLLIN / POLLOUT) until deadline.  False when out of memory. */
static bool sock_want(pgg_async_call *k, int fd, int want, int64_t until)
{
    pgg_async_sock *s = k->sock;

    if (!s) {
        if (!(s = sock_new(k->ac, fd)))
            return false;
        s->call = k;
        k->sock = s;
    }
    sock_interest(k->ac, s, want);
    wait_until(k, until);
    return true;
}

/* ------------------------------------------------------------ attempts */

HOT void drive(pgg_async_call *k, bool hot);
HOT void io_sent(pgg_async_call *k);
static void exec_start(pgg_async_call *k);
static int64_t connect_bound(const pgg_async_call *k);
static int connect_fd(pgg_async_call *k);
static void hook_over(pgg_async_call *k, PGresult *res, pgg_attempt_end end);
#if PGG_HAVE_LIBPQTYPES
static void types_next(pgg_async_call *k);
static void types_failed(pgg_async_call *k);
#endif
static void borrow(pgg_async_call *k);
static void park(pgg_async_call *k, int64_t now);
static void look_again(pgg_async_call *k, int64_t now);
static void settle(pgg_async_call *k);

/* The attempt on k->h is over (its verdict in k->a): back to the path.
 * Inline in the read handler's usual case (exec_end); attempt_over for
 * the others. */
HOT void attempt_done(pgg_async_call *k)
{
    sock_close(k);
    pgg__call_attempted(&k->c, k->h, &k->a);
    k->state = ST_IDLE;
}

static void attempt_over(pgg_async_call *k)
{
    attempt_done(k);
}

/* The attempt's judgement past its usual case (pgg__pool_success_recorded
 * said no), out of line: its eleven arguments are gathered here, not on
 * the usual path.  A cancelled call's fired handle is current, as on a
 * blocking call's thread: the attempt is then ignored and not retried
 * (pool.c); the usual case does not read it. */
COLD void exec_judge(pgg_async_call *k, PGresult *res, ExecStatusType status,
                     pgg_attempt_end end)
{
    pgg_cancel *prev = pgg__cancel_cur;

    pgg_host_loop *loop = loop_enter(k->ac);

    pgg__cancel_cur = k->c.cancel;
    k->a.v = pgg__pool_exec_judge(k->c.pool, k->h, &k->l, k->c.intent,
                                  &k->ticket, k->role, k->c.now, res, status,
                                  end, k->a.ended, k->c.err);
    pgg__cancel_cur = prev;
    loop_leave(loop);
}

/* Answered, then terminated: libpq read the FATAL with the answer and
 * PQstatus still says OK.  Not given back, where the next borrow, within
 * alive_check_after_idle_ms, would not look; its idle siblings opened
 * before the attempt go too, the younger ones are looked at (pool.c's rule
 * for a session that ended: it answered a statement sent after
 * k->c.now). */
COLD void ended_behind(pgg_async_call *k)
{
    pgg_host_loop *prev = loop_enter(k->ac);

    sock_close(k);
    pgg__host_discard(k->h, k->l);
    k->l = NULL;
    pgg__pool_session_ended(k->c.pool, k->h, k->c.now, k->a.ended);
    k->unpark = true;
    loop_leave(prev);
}

/* k's connection, not kept, goes back (on the loop's tie: loop_enter).
 * Out of line: the read handler's usual case keeps it, and pays nothing
 * for the tie. */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void give_back_ended(pgg_async_call *k)
{
    pgg_host_loop *prev = loop_enter(k->ac);

    pgg__host_give_back(k->h, k->l, k->a.ended);
    loop_leave(prev);
}

/* The query or prepare ended (res, its PQresultStatus, end): classify and
 * record as the blocking path does (pgg__pool_exec_done's two halves),
 * give the connection back.  Inline in the read handler's usual case;
 * exec_ended for the others. */
HOT void exec_end(pgg_async_call *k, PGresult *res, ExecStatusType status,
                  pgg_attempt_end end, bool hot)
{
    /* Only an answered query's connection survives the judgement for
     * sure; the others may be closed in it. */
    if (end != PGG_END_RESULT)
        sock_close(k);
    k->a.res = res;
    k->a.end = end;
    k->a.ended = pgg__now_ns();
    if (pgg__pool_success_recorded(k->h, &k->ticket, k->role, k->c.now,
                                   status, end, false, k->a.ended))
        k->a.v = (pgg_verdict){PGG_CLASS_SUCCESS, false, false, PGG_OK};
    else
        exec_judge(k, res, status, end);
    /* Read only after a failure (pgg__call_attempted reads it then): a
     * success is served whatever it says, and the spare and the give-back
     * check the session themselves. */
    k->a.lost = !k->l || (k->a.v.cls != PGG_CLASS_SUCCESS &&
                          PQstatus(k->l->conn) != CONNECTION_OK);
    if (k->l && k->ended_behind && PQstatus(k->l->conn) == CONNECTION_OK) {
        ended_behind(k);
    } else if (!k->l || k->a.lost || !keep_spare(k)) {
        /* The socket is forgotten before its connection can go. */
        sock_close(k);
        if (k->l) {
            give_back_ended(k);
            k->unpark = true; /* after this call's own next step (settle) */
        }
    }
    k->l = NULL;
    if (hot)
        attempt_done(k);
    else
        attempt_over(k);
}

#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void exec_ended(pgg_async_call *k, PGresult *res, ExecStatusType status,
                       pgg_attempt_end end)
{
    exec_end(k, res, status, end, false);
}

/* exec_ended, the status asked of res. */
static inline void exec_over(pgg_async_call *k, PGresult *res,
                             pgg_attempt_end end)
{
    exec_ended(k, res, PQresultStatus(res), end);
}

/* Send the PREPARE of k's registered statement on its connection
 * (state PREPARE); as pgg__link_send. */
static int send_prepare(pgg_async_call *k, PGresult **res, pgg_attempt_end *end)
{
    const pgg_stmt *stmt = k->c.q->stmt;
    pgg_query pq = {.sql = stmt->sql,
                    .nparams = stmt->nparams,
                    .types = stmt->types,
                    .stmt = stmt,
                    .stmt_name = stmt->name,
                    .prepare = true};

    k->state = ST_PREPARE;
    return pgg__link_send(k->l->conn, &pq, k->h->name, res, end, k->c.err);
}

/* k's connection turned out dead before k's statement was sent on it: the
 * server's FATAL already read (a session terminated behind its last
 * answer, the last answered at alive_at or later).  As borrow does with an
 * idle one found dead: closed, its idle siblings opened before alive_at too,
 * the younger ones looked at (pool.c's rule for a session that ended), and
 * k borrows again within its attempt, taking the slot it gave back. */
static void dead_before_send(pgg_async_call *k, int64_t alive_at)
{
    pgg_host_loop *prev = loop_enter(k->ac);

    sock_close(k); /* forgotten before its connection can go */
    pgg__host_discard(k->h, k->l);
    k->l = NULL;
    k->ended_behind = false;
    pgg__pool_session_ended(k->c.pool, k->h, alive_at, pgg__now_ns());
    borrow(k);
    loop_leave(prev);
}

/* io's step wants the socket again (want): watch it, or end the attempt
 * when the loop cannot (no descriptor, no memory). */
static void io_wait(pgg_async_call *k, int want)
{
    PGresult *res = NULL;
    pgg_attempt_end end;
    int fd = k->state == ST_HOOK ? connect_fd(k) : loop_fd(k->l);
    bool fds;

    if (fd >= 0 && sock_want(k, fd, want,
                             k->state == ST_HOOK ? connect_bound(k)
                                                 : k->attempt_deadline))
        return;
    fds = out_of_fds();
    pgg__link_io_deadline(&k->io, k->h->name, &res, &end, k->c.err);
    pgg__error_set(k->c.err, fds ? PGG_ESYS : PGG_ENOMEM, NULL, k->h->name,
                   "%s; connection dropped",
                   fds ? "too many open files" : "out of memory");
    if (k->state == ST_HOOK)
        hook_over(k, res, end);
    else
        exec_over(k, res, end);
}

/* io's step ended (res, end) in a state other than QUERY. */
static void io_answered(pgg_async_call *k, PGresult *res, pgg_attempt_end end)
{
    if (k->state == ST_HOOK) {
        hook_over(k, res, end);
        return;
    }
#if PGG_HAVE_LIBPQTYPES
    if (k->state == ST_TYPES) {
        int r = end == PGG_END_RESULT
                    ? pgg__types_registered(k->c.pool->types, k->l, res,
                                            k->h->name, k->c.err)
                    : k->c.err->code;

        PQclear(res);
        if (r != PGG_OK)
            types_failed(k);
        else
            types_next(k);
        return;
    }
#endif
    if (k->state == ST_LSN) {
        /* The write committed whatever this says: its answer is the
         * outcome, with the position when the query told it. */
        if (end == PGG_END_RESULT)
            k->cm.vr.lsn = pgg__vis_lsn_of(res);
        PQclear(res);
        res = k->written;
        k->written = NULL;
        pgg__error_reset(k->c.err);
        exec_over(k, res, PGG_END_RESULT);
        return;
    }
    if (k->state == ST_PREPARE) {
        const pgg_stmt *stmt = k->q.stmt;

        if (end != PGG_END_RESULT || PQresultStatus(res) != PGRES_COMMAND_OK) {
            /* The statement itself never ran. */
            if (end == PGG_END_LOST)
                end = PGG_END_NOT_SENT;
            exec_over(k, res, end);
            return;
        }
        PQclear(res);
        if (k->ended_behind) {
            /* Prepared, then terminated: the statement was not sent.  The
             * PREPARE, sent after the attempt began, was answered. */
            dead_before_send(k, k->c.now);
            return;
        }
        pgg__stmt_set_add(&k->l->stmts, stmt->index);
        if (pgg__now_ns() >= k->attempt_deadline) {
            pgg__error_set(k->c.err, PGG_ETIMEDOUT, NULL, k->h->name,
                           "deadline exceeded while preparing \"%s\"; "
                           "not sent",
                           stmt->name);
            exec_over(k, NULL, PGG_END_EXPIRED);
            return;
        }
        k->state = ST_QUERY;
        if (pgg__link_send(k->l->conn, k->c.q, k->h->name, &res, &end,
                           k->c.err) != PGG_OK) {
            exec_over(k, res, end);
            return;
        }
        io_sent(k);
        return;
    }
    exec_over(k, res, end);
}

/* A committed write whose position the call wants (res its answer): ask
 * for it in a second round trip (ST_LSN). */
static void ask_lsn(pgg_async_call *k, PGresult *res)
{
    pgg_attempt_end end;

    k->written = res;
    k->state = ST_LSN;
    res = NULL;
    if (pgg__link_send(k->l->conn, pgg__vis_lsn_query(), k->h->name, &res,
                       &end, k->c.err) != PGG_OK) {
        PQclear(res);
        res = k->written;
        k->written = NULL;
        pgg__error_reset(k->c.err);
        exec_over(k, res, PGG_END_RESULT);
        return;
    }
    io_sent(k);
}

/* The session lost our statement (a DEALLOCATE ALL run on it): nothing
 * ran; forget it here, prepare it again and run it once more, as the
 * blocking path does (pool.c, registered_failed). */
static void reprepare(pgg_async_call *k, PGresult *res)
{
    pgg_attempt_end end;

    k->reprepared = true;
    PQclear(res);
    res = NULL;
    pgg__error_reset(k->c.err);
    pgg__stmt_set_del(&k->l->stmts, k->c.q->stmt->index);
    if (send_prepare(k, &res, &end) != PGG_OK) {
        if (end == PGG_END_LOST)
            end = PGG_END_NOT_SENT;
        exec_over(k, res, end);
        return;
    }
    io_sent(k);
}

/* Advance the statement on the wire by what the socket showed.  Inline in
 * the read handler's usual case (hot: exec_end inline too); io for the
 * other callers. */
HOT void io_step(pgg_async_call *k, int revents, bool hot)
{
    PGresult *res = NULL;
    pgg_attempt_end end;
    int rc;
    /* The hook runs on the connection before it is a link. */
    PGconn *conn = k->state == ST_HOOK ? k->conn : k->l->conn;
    int want;

    pgg__link_unprompted_arm();
    /* The step inlined (pgg__link_io_step's body): twice per call. */
    want = pgg__link_io_advance(conn, &k->io, revents, k->h->name, &res,
                                &end, k->c.err, &rc);
    if (pgg__link_unprompted())
        k->ended_behind = true;
    if (want) {
        io_wait(k, want);
        return;
    }
    if (k->state != ST_QUERY) {
        io_answered(k, res, end);
        return;
    }
    if (end == PGG_END_RESULT && k->c.q->vis && k->cm.vr.want_lsn &&
        pgg__vis_write_learns(k->l->conn, res)) {
        ask_lsn(k, res);
        return;
    }
    if (end == PGG_END_RESULT && k->c.q->stmt && !k->reprepared &&
        pgg__link_statement_gone(res)) {
        reprepare(k, res);
        return;
    }
    /* The step asked an answer's status already (pgg_link_io). */
    if (end != PGG_END_RESULT || !res)
        exec_over(k, res, end);
    else if (hot)
        exec_end(k, res, k->io.keep_status, end, true);
    else
        exec_ended(k, res, k->io.keep_status, end);
}

static void io(pgg_async_call *k, int revents)
{
    io_step(k, revents, false);
}

/* k's statement (or prepare, or hook SQL) was sent just now by
 * pgg__link_send: its first step pushes it out and waits for the socket
 * without parsing first, since no answer can be in libpq's buffer before
 * the server has it all (pgg_link_io.sent). */
HOT void io_sent(pgg_async_call *k)
{
    pgg_async_sock *s = k->sock;

    k->io = (pgg_link_io){.sent = true};
    /* The usual case, io's first step without its detours: a kept
     * connection, its socket watched for reading already, and the whole
     * statement out at the first flush (nothing parsed: no unprompted
     * error to look for).  Otherwise io's own step flushes again. */
    if (s && s->on == POLLIN && k->state != ST_HOOK &&
        PQflush(k->l->conn) == 0) {
        k->io.flushed = true;
        wait_until(k, k->attempt_deadline);
        return;
    }
    io(k, 0);
}

/* -------------------------------------------------------------- pipes */

static apipe *pipe_of(pgg_async *ac, const pgg_host *h)
{
    return ac->pipes ? &ac->pipes[h - ac->pool->hosts] : NULL;
}

/* May k's statement go on a pipe on l's connection?  pipeline.c's rules
 * (pgg__pipe_query_ok), and what the loop would otherwise do first on a
 * connection: a prepare it lacks, libpqtypes registrations, a second
 * round trip for a write's position. */
static bool pipeable(const pgg_async_call *k, const pgg_link *l)
{
    const pgg_query *q = k->c.q;

    if (q->stmt && !pgg__stmt_set_has(&l->stmts, q->stmt->index))
        return false;
#if PGG_HAVE_LIBPQTYPES
    if (atomic_load_explicit(&k->c.pool->types_on, memory_order_relaxed))
        return false;
#endif
    return !(q->vis && k->cm.vr.want_lsn) && pgg__pipe_query_ok(k->h, q);
}

static void pipe_end(apipe *p, pgg_async_call *late);

/* Watch p's socket for want. */
static bool pipe_watch(apipe *p, int want)
{
    if (!p->sock) {
        int fd = loop_fd(p->l);

        if (fd < 0 || !(p->sock = sock_new(p->ac, fd)))
            return false;
        p->sock->pipe = p;
    }
    sock_interest(p->ac, p->sock, want);
    return true;
}

/* Queue k's statement on p with its own Sync: k waits for its answer until
 * its attempt's deadline. */
static void pipe_send(apipe *p, pgg_async_call *k)
{
    PGconn *conn = p->l->conn;
    const pgg_query *q = k->c.q;
    int sent, f;

    k->state = ST_PIPED;
    k->l = NULL;
    k->role = atomic_load_explicit(&k->h->role, memory_order_relaxed);
    k->a.reused = !p->l->fresh;
    k->pnext = NULL;
    k->sent = pgg__now_ns();
    sent = q->stmt_name
               ? PQsendQueryPrepared(conn, q->stmt_name, q->nparams, q->values,
                                     q->lengths, q->formats, q->result_format)
               : PQsendQueryParams(conn, q->sql, q->nparams, q->types,
                                   q->values, q->lengths, q->formats,
                                   q->result_format);
    if (!sent) {
        /* Nothing of it left: the connection is broken for everyone, and
         * k goes back to the path as a connection found dead, judged on
         * that connection (exec_done reads it; a NOT_SENT end leaves it
         * the pipe's), which pipe_end then drops with the others. */
        pgg_link *l = p->l;

        pgg__error_set(k->c.err, PGG_ECONNECT, NULL, k->h->name, "send: %s",
                       PQerrorMessage(conn));
        k->a.res = NULL;
        k->a.end = PGG_END_NOT_SENT;
        k->a.v = pgg__pool_exec_done(k->c.pool, k->h, &l, k->c.intent,
                                     &k->ticket, k->role, k->c.now, NULL,
                                     PGG_END_NOT_SENT, &k->a.ended,
                                     k->c.err);
        k->a.lost = true;
        pipe_end(p, NULL);
        attempt_over(k);
        return;
    }
    if (p->last)
        p->last->pnext = k;
    else
        p->first = k;
    p->last = k;
    p->n++;
    wait_until(k, k->attempt_deadline);
    f = PQpipelineSync(conn) ? PQflush(conn) : -1;
    if (f < 0 || !pipe_watch(p, POLLIN | (f > 0 ? POLLOUT : 0)))
        pipe_end(p, NULL); /* k is lost with the others, sent */
}

/* Join the pipe on k->h instead of borrowing or connecting, when there is
 * one with room and its oldest statement is not stalled. */
static bool pipe_join_on(pgg_async_call *k)
{
    apipe *p = pipe_of(k->ac, k->h);

    if (!p || !p->l || p->over || p->n >= PIPE_DEPTH || !pipeable(k, p->l) ||
        (p->first && k->ac->stall_ns > 0 &&
         k->c.now - p->first->sent >= k->ac->stall_ns))
        return false;
    pipe_send(p, k);
    return true;
}

/* pipe_join, inline for its usual answer: no pipes (pipeline=off). */
static inline bool pipe_join(pgg_async_call *k)
{
    return k->ac->pipes && pipe_join_on(k);
}

/* k was lent its own connection (l): make it the pipe of its host when
 * there is none and k's statement may share it. */
static bool pipe_open_on(pgg_async_call *k)
{
    apipe *p = pipe_of(k->ac, k->h);

    if (!p || p->l || !pipeable(k, k->l))
        return false;
    if (!k->l->fresh && !pgg__link_held_ok(k->l->conn)) {
        /* libpq already read the server's FATAL behind the session's last
         * answer (a spare, or one given back moments ago, which borrow
         * does not poll).  Dated by its last use (a kept one's is older
         * still): a session opened between that answer and its give-back
         * goes too, a window of what one give-back takes. */
        dead_before_send(k, k->l->last_used_ns);
        return true;
    }
    if (!PQenterPipelineMode(k->l->conn))
        return false;
    p->l = k->l;
    p->got = false;
    p->over = OVER_NO;
    p->opened++;
    k->l = NULL;
    if (k->sock) { /* the spare's: its interest is POLLIN already */
        p->sock = k->sock;
        p->sock->call = NULL;
        p->sock->pipe = p;
        k->sock = NULL;
    }
    pipe_send(p, k);
    return true;
}

/* pipe_open, inline for its usual answer: no pipes (pipeline=off). */
static inline bool pipe_open(pgg_async_call *k)
{
    return k->ac->pipes && pipe_open_on(k);
}

static void pipe_pop(apipe *p)
{
    p->first = p->first->pnext;
    if (!p->first)
        p->last = NULL;
    p->n--;
}

/* The oldest statement's answer came (res): judged as k's own attempt. */
static void pipe_answered(apipe *p, PGresult *res)
{
    pgg_async_call *k = p->first;
    pgg_cancel *prev = pgg__cancel_cur;

    pipe_pop(p);
    pgg__cancel_cur = k->c.cancel;
    k->a.res = res;
    k->a.end = PGG_END_RESULT;
    /* As the loop's own query step and pgg__link_io_step leave it: the
     * server's error, with its SQLSTATE, is the call's. */
    if (res && (PQresultStatus(res) == PGRES_FATAL_ERROR ||
                PQresultStatus(res) == PGRES_NONFATAL_ERROR ||
                PQresultStatus(res) == PGRES_BAD_RESPONSE))
        pgg__link_error(k->c.err, PGG_ESERVER, p->l->conn, res, k->h->name,
                        NULL);
    k->a.v = pgg__pool_exec_done(k->c.pool, k->h, &p->l, k->c.intent,
                                 &k->ticket, k->role, k->c.now, res,
                                 PGG_END_RESULT, &k->a.ended, k->c.err);
    pgg__cancel_cur = prev;
    k->a.lost = PQstatus(p->l->conn) != CONNECTION_OK;
    p->ended = k->a.ended;
    p->l->fresh = false; /* as a give-back would leave it */
    attempt_over(k);
    settle(k);
}

/*
 * The connection is dropped with statements in flight: late's deadline
 * passed (or it was cancelled), or (late NULL) the connection broke.  late
 * ends as a query at its deadline; every other statement in flight was
 * sent and is lost (a write's outcome unknown: never retried), unless the
 * server ended the session (p->over): then the first is judged by the FATAL
 * that was its answer (OVER_ANSWER, once libpq saw the close, as the loop's
 * own query step judges it) or is lost (OVER_SYNC), and those behind it
 * were never read by the server: not sent.  The others go on from the
 * timer (due now), not inside this call's step.
 */
static void pipe_end_on(apipe *p, pgg_async_call *late);

/* Its host operations as the loop's (loop_enter): a pipe ends from a
 * call's start too (pipe_send). */
static void pipe_end(apipe *p, pgg_async_call *late)
{
    pgg_host_loop *prev = loop_enter(p->ac);

    pipe_end_on(p, late);
    loop_leave(prev);
}

static void pipe_end_on(apipe *p, pgg_async_call *late)
{
    pgg_async *ac = p->ac;
    pgg_host *h = p->h;
    pgg_link *l = p->l;
    pgg_async_call *first = p->first, *k = first;
    pgg_cancel *prev = pgg__cancel_cur;
    int over = p->over;
    PGresult *answer = NULL;

    if (over == OVER_ANSWER && PQstatus(l->conn) != CONNECTION_OK) {
        answer = p->res;
        p->res = NULL;
    }
    p->l = NULL;
    p->first = p->last = NULL;
    p->n = 0;
    p->got = false;
    p->over = OVER_NO;
    PQclear(p->res);
    p->res = NULL;
    if (p->sock) { /* forgotten before its connection can go */
        sock_free(ac, p->sock);
        p->sock = NULL;
    }
    for (pgg_async_call *next; k; k = next) {
        PGresult *res = NULL;
        pgg_attempt_end end = PGG_END_LOST;

        next = k->pnext;
        if (k == late)
            continue;
        if (k == first && answer) {
            res = answer;
            end = PGG_END_RESULT;
            pgg__link_error(k->c.err, PGG_ESERVER, l->conn, res, h->name,
                            NULL);
        } else if (over && k != first) {
            end = PGG_END_NOT_SENT;
            pgg__error_set(k->c.err, PGG_ECONNECT, NULL, h->name,
                           "connection lost: the server ended the session "
                           "before it read this statement (%s); not run",
                           p->why);
        } else if (late) {
            pgg__error_set(k->c.err, PGG_ECONNECT, NULL, h->name,
                           "connection lost: another statement on the shared "
                           "connection passed its deadline; sent, outcome "
                           "unknown");
        } else {
            pgg__error_set(k->c.err, PGG_ECONNECT, NULL, h->name,
                           "connection lost: %s",
                           over ? p->why : PQerrorMessage(l->conn));
        }
        pgg__cancel_cur = k->c.cancel;
        k->a.res = res;
        k->a.end = end;
        k->a.v = pgg__pool_exec_done(ac->pool, h, &l, k->c.intent, &k->ticket,
                                     k->role, k->c.now, res, end,
                                     &k->a.ended, k->c.err);
        pgg__cancel_cur = prev;
        k->a.lost = true;
        attempt_over(k);
        k->wait_until = 0;
        want_timer(ac, 0);
    }
    if (late) {
        pgg__error_set(late->c.err, PGG_ETIMEDOUT, NULL, h->name,
                       "query: deadline exceeded on a shared connection; "
                       "connection dropped and its statements cancelled");
        pgg__cancel_cur = late->c.cancel;
        late->a.res = NULL;
        late->a.end = PGG_END_DEADLINE;
        /* Abandons the connection (dropped, the server's work cancelled). */
        late->a.v = pgg__pool_exec_done(ac->pool, h, &l, late->c.intent,
                                        &late->ticket, late->role,
                                        late->c.now, NULL, PGG_END_DEADLINE,
                                        &late->a.ended, late->c.err);
        pgg__cancel_cur = prev;
        late->a.lost = true;
        attempt_over(late);
    }
    if (l)
        pgg__host_discard(h, l);
    unpark(ac, h);
}

/* A server's FATAL (or PANIC) error: the last message of its session.
 * libpq's own errors (a lost connection) carry no severity field. */
static bool server_fatal(const PGresult *r)
{
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);

    return sev && PQresultErrorField(r, PG_DIAG_SQLSTATE) &&
           (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
}

/* The server ended p's session at first's statement (how: OVER_*). */
static void pipe_over(apipe *p, int how, const PGresult *r)
{
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);

    p->over = how;
    snprintf(p->why, sizeof p->why, "%s: %s",
             PQresultErrorField(r, PG_DIAG_SQLSTATE), msg ? msg : "");
}

/* p's socket is ready: send what waits, take every answer there is. */
static void pipe_io(apipe *p, int revents)
{
    PGconn *conn = p->l->conn;
    bool broken = false;
    /* Which pipe broken is about: the answers below run callbacks, which
     * may end this pipe and open another (a cancel of a piped sibling,
     * then a new call); a failed read before them is not the new one's. */
    unsigned broken_pipe = p->opened;

    if (revents & POLLOUT) {
        int f = PQflush(conn);

        if (f < 0)
            broken = true;
        else if (f == 0 && !pipe_watch(p, POLLIN))
            broken = true;
    }
    if (!broken && (revents & POLLIN) && !PQconsumeInput(conn))
        broken = true;
    /* Each answer runs its call's next steps, which may queue more here,
     * or end the pipe (a cancel, a deadline): looked at again each time. */
    while (p->l && p->first && !PQisBusy(p->l->conn)) {
        PGresult *r = PQgetResult(p->l->conn);

        if (!p->got) {
            if (r && PQresultStatus(r) != PGRES_PIPELINE_SYNC) {
                if (p->over) {
                    PQclear(r); /* the server's FATAL stays the answer */
                    continue;
                }
                if (server_fatal(r))
                    pipe_over(p, OVER_ANSWER, r);
                PQclear(p->res); /* one statement: one result, the last */
                p->res = r;
                continue;
            }
            if (!r && p->res) {
                p->got = true; /* its Sync is next */
                continue;
            }
            if (!r)
                break; /* nothing parsed for it yet */
            PQclear(r);
            broken = true; /* a Sync before any result: out of step */
            broken_pipe = p->opened;
            break;
        }
        if (r && PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
            PGresult *res = p->res;

            PQclear(r);
            p->res = NULL;
            p->got = false;
            pipe_answered(p, res);
            continue;
        }
        if (r && !p->over && server_fatal(r))
            pipe_over(p, OVER_SYNC, r);
        PQclear(r);
        if (!r)
            break; /* nothing more parsed yet */
        broken = true;
        broken_pipe = p->opened;
        break;
    }
    /* Empty, a broken pipe is discarded when flushed (flush_pipes).  One
     * whose server sent its FATAL waits for the close (the session's end,
     * seen by libpq) unless broken already. */
    if (p->l && p->first &&
        ((broken && broken_pipe == p->opened) ||
         PQstatus(p->l->conn) != CONNECTION_OK))
        pipe_end(p, NULL);
}

/* Empty pipes leave pipeline mode and go back before the loop waits. */
static void flush_pipes(pgg_async *ac)
{
    for (int i = 0; ac->pipes && i < ac->pool->nhosts; i++) {
        apipe *p = &ac->pipes[i];
        pgg_link *l = p->l;
        pgg_host_loop *prev;

        if (!l || p->first)
            continue;
        prev = loop_enter(ac);
        p->l = NULL;
        if (p->sock) {
            sock_free(ac, p->sock);
            p->sock = NULL;
        }
        if (PQstatus(l->conn) != CONNECTION_OK ||
            !PQexitPipelineMode(l->conn)) {
            pgg__host_discard(p->h, l);
        } else if (!pgg__link_held_ok(l->conn)) {
            /* The server's FATAL, read behind the last answer (a
             * terminated backend): the next borrow, within
             * alive_check_after_idle_ms, would not look.  Its idle
             * siblings rarely died alone: those opened before the pipe
             * took it go too, the younger ones are looked at (pool.c's
             * rule for a session that ended; it answered statements sent
             * after its last use). */
            int64_t alive_at = l->last_used_ns;

            pgg__host_discard(p->h, l);
            pgg__pool_session_ended(ac->pool, p->h, alive_at, pgg__now_ns());
        } else {
            pgg__host_give_back(p->h, l, p->ended);
        }
        unpark(ac, p->h);
        loop_leave(prev);
    }
}

/* A connection is taken: prepare if needed, then send.  Inline in
 * pgg_async_exec's first attempt; exec_start for the others. */
HOT void exec_step(pgg_async_call *k)
{
    PGresult *res = NULL;
    pgg_attempt_end end;
    const pgg_query *q = k->c.q;
    int rc;

    if (pipe_open(k))
        return;
    k->a.reused = !k->l->fresh;
    k->role = atomic_load_explicit(&k->h->role, memory_order_relaxed);
    /* A read whose position this host is not known to have is not sent
     * (the loop does not check it in the same round trip): a blocking call
     * would not use its answer either.  A write that wants its position
     * asks for it after it committed (ST_LSN).  A query without a
     * visibility request is plain (pgg__vis_plain's first test). */
    if (q->vis && !pgg__vis_plain(k->c.pool, k->h, q) &&
        !k->cm.vr.want_lsn) {
        int64_t now = pgg__now_ns();

        pgg_host_loop *prev = loop_enter(k->ac);

        k->cm.vr.unmet_seen = true;
        sock_close(k); /* a spare's, taken with the connection */
        pgg__host_give_back(k->h, k->l, now);
        loop_leave(prev);
        k->l = NULL;
        pgg__pool_record(k->c.pool, k->h, k->ticket, PGG_CLASS_IGNORED,
                         k->c.now, now);
        pgg__call_skipped(&k->c);
        k->state = ST_IDLE;
        return;
    }
    if (q->stmt && !pgg__stmt_set_has(&k->l->stmts, q->stmt->index)) {
        rc = send_prepare(k, &res, &end);
    } else {
        k->state = ST_QUERY;
        rc = pgg__link_send_checked(k->l->conn, q, k->h->name, &res, &end,
                                    k->c.err);
    }
    if (rc != PGG_OK) {
        if (k->state == ST_PREPARE && end == PGG_END_LOST)
            end = PGG_END_NOT_SENT;
        exec_over(k, res, end);
        return;
    }
    io_sent(k);
}

static void exec_start(pgg_async_call *k)
{
    exec_step(k);
}

/* A connection failed before its query was sent (err says why): the
 * attempt is over as a failed borrow of the blocking path is
 * (pgg__pool_take's PGG_TAKE_FAILED, in attempt_on). */
static void attempt_failed(pgg_async_call *k)
{
    k->a.res = NULL;
    k->a.ended = 0;
    k->a.reused = false;
    k->a.lost = false;
    k->a.end = PGG_END_CONNECT_FAILED;
    k->a.v = pgg__classify_connect(&k->c.pool->cfg->classifier,
                                   k->c.err->sqlstate);
    attempt_over(k);
}

#if PGG_HAVE_LIBPQTYPES
/* Typed calls are on: the connection gets what it lacks of PQinitTypes and
 * the pool's registrations (pgg__types_step, one round trip per
 * registration, ST_TYPES), then pgg__pool_take's last step. */
static void types_next(pgg_async_call *k)
{
    int64_t now;
    bool sent;

    k->state = ST_IDLE;
    if (pgg__types_step(k->c.pool->types, k->l, k->h->name, &sent,
                        k->c.err) != PGG_OK) {
        types_failed(k);
        return;
    }
    if (sent) {
        k->state = ST_TYPES;
        k->io = (pgg_link_io){0};
        io(k, 0);
        return;
    }
    now = pgg__now_ns();
    if (now >= k->attempt_deadline)
        sock_close(k); /* a spare's, before its connection is given back */
    if (pgg__pool_types_ready(k->c.pool, k->h, &k->l, k->ticket, k->c.now,
                              k->attempt_deadline, now,
                              k->c.err) != PGG_TAKE_OK) {
        pgg__call_skipped(&k->c);
        return;
    }
    exec_start(k);
}

static void types_failed(pgg_async_call *k)
{
    k->state = ST_IDLE;
    sock_close(k);
    if (pgg__pool_types_failed(k->c.pool, k->h, &k->l, k->ticket, k->c.now,
                               k->c.err) == PGG_TAKE_SKIPPED) {
        pgg__call_skipped(&k->c);
        return;
    }
    attempt_failed(k);
}
#endif

/*
 * The connection k took has no loop descriptor and none can be had (the
 * process is at its descriptor limit): nothing was sent on it, so the
 * call is told why and the host is not blamed, as when the blocking path
 * lacks resources of its own.  Found only after sending, the statement
 * would have run (a write applied) and the wait failed as a deadline
 * against the host.
 */
static void no_loop_fd(pgg_async_call *k)
{
    int e = errno;
    int64_t now = pgg__now_ns();
    pgg_host_loop *prev = loop_enter(k->ac);

    sock_close(k);
    pgg__host_give_back(k->h, k->l, now);
    loop_leave(prev);
    k->l = NULL;
    pgg__pool_record(k->c.pool, k->h, k->ticket, PGG_CLASS_IGNORED, k->c.now,
                     now);
    pgg__error_set(k->c.err, PGG_ESYS, NULL, k->h->name,
                   "no descriptor for the event loop (%s); not sent",
                   strerror(e));
    pgg__call_skipped(&k->c);
    k->state = ST_IDLE;
}

/* The take's check past its usual case (pgg__pool_taken_ready), out of
 * line.  False: not an attempt (the link given back). */
COLD bool taken_check(pgg_async_call *k)
{
    if (pgg__pool_taken_check(k->c.pool, k->h, k->c.intent, &k->l,
                              &k->ticket, k->c.now) == PGG_TAKE_OK)
        return true;
    pgg__call_skipped(&k->c);
    k->state = ST_IDLE;
    return false;
}

/* A connection of k->h is taken (k->l): check it, then send (hot: inline,
 * exec_step). */
HOT void taken_step(pgg_async_call *k, bool hot)
{
    if (!pgg__pool_taken_ready(k->h, k->l, k->c.intent) && !taken_check(k))
        return;
    /* Before anything is sent on it (no_loop_fd). */
    if (loop_fd(k->l) < 0) {
        no_loop_fd(k);
        return;
    }
#if PGG_HAVE_LIBPQTYPES
    if (atomic_load_explicit(&k->c.pool->types_on, memory_order_relaxed)) {
        types_next(k);
        return;
    }
#endif
    if (hot)
        exec_step(k);
    else
        exec_start(k);
}

HOT void taken(pgg_async_call *k)
{
    taken_step(k, false);
}

/* The connect's socket is no longer watched: forgotten by the adapter,
 * then its descriptor closed. */
static void connect_fd_close(pgg_async_call *k)
{
    sock_close(k);
    if (k->conn_fd) {
        close(k->conn_fd);
        k->conn_fd = 0;
    }
}

/*
 * The loop's descriptor of the socket a connect (or its hook) uses now
 * (loop_fd's reason), -1 with errno when none can be had.  libpq may move
 * to another socket between two steps (the host's next address, a retry
 * without SSL), usually under the same number since it closed the old one
 * just before: the socket is known by its inode, one fstat per step of a
 * connect.  The old one is forgotten by the adapter before its descriptor
 * closes.
 */
static int connect_fd(pgg_async_call *k)
{
    struct stat st;
    int fd;

    if (fstat(PQsocket(k->conn), &st) != 0)
        return -1;
    if (k->conn_fd && st.st_ino == k->conn_ino)
        return k->conn_fd;
    connect_fd_close(k);
    fd = fcntl(PQsocket(k->conn), F_DUPFD_CLOEXEC, 1);
    if (fd < 0)
        return -1;
    k->conn_fd = fd;
    k->conn_ino = st.st_ino;
    return fd;
}

/* The connect failed (err says why): recorded and classified as a failed
 * borrow of the blocking path. */
static void connect_lost(pgg_async_call *k, pgg_borrow_fail why);

static void connect_failed_as(pgg_async_call *k, pgg_borrow_fail why)
{
    int64_t now = pgg__now_ns();
    bool fired = pgg__cancel_fired(k->c.cancel);
    int r;

    connect_fd_close(k);
    /* The host's lock busy: tried again on the next look, unless the call
     * cannot look again (a cancel, its deadline: its slot owed then). */
    r = pgg__host_connect_failed(k->h, k->c.err, why == PGG_BORROW_CONNECT,
                                 k->connect_at,
                                 !fired && now < k->attempt_deadline);
    if (r == PGG_CONNECT_LATER) {
        k->state = ST_SETTLE;
        k->settle_why = why;
        look_again(k, now);
        return;
    }
    /* A cancelled call waits for nothing: a cancel that finds its ask
     * refused as full (connect_ask_done) ends the call, as any cancel. */
    if (r == PGG_CONNECT_WAIT && !fired) {
        /* Full (53300) while ours work: wait for one of them, no error
         * and no record yet (pgg__host_borrow's rule). */
        pgg__error_reset(k->c.err);
        park(k, now);
        return;
    }
    connect_lost(k, why);
}

/* k's connect ended without a connection (err says why; the slot settled):
 * the failed borrow recorded and classified as on the blocking path. */
static void connect_lost(pgg_async_call *k, pgg_borrow_fail why)
{
    pgg_cancel *prev = pgg__cancel_cur;
    pgg_take t;

    pgg__cancel_cur = k->c.cancel;
    t = pgg__pool_take_failed(k->c.pool, k->h, k->ticket, k->c.now, why,
                              k->c.err);
    pgg__cancel_cur = prev;
    if (t == PGG_TAKE_SKIPPED) {
        pgg__call_skipped(&k->c);
        k->state = ST_IDLE;
        return;
    }
    attempt_failed(k);
}

static void connect_failed(pgg_async_call *k)
{
    connect_failed_as(k, PGG_BORROW_CONNECT);
}

/* A connect given up on our side (its deadline, no memory or descriptor
 * to watch it): closed, and failed as a connect that failed.  Its socket
 * is forgotten first, as everywhere: the adapter never watches a socket
 * whose connection is gone (connect_failed closes the loop's descriptor of
 * it, connect_fd). */
static void connect_abort(pgg_async_call *k, int code, const char *msg)
{
    sock_close(k);
    PQfinish(k->conn);
    k->conn = NULL;
    pgg__error_set(k->c.err, code, NULL, k->h->name, "%s", msg);
    connect_failed(k);
}

/* The attempt's deadline (or a cancel) ended k's connect before its own
 * bound: the call's timeout, not the host's failure (PGG_BORROW_CUT); the
 * connect goes on as a spare of the health thread, its session for the
 * pool (host.c, "Handed connects"), or is closed when the host cannot
 * take it.  Its socket is forgotten by the adapter first. */
static void connect_cut(pgg_async_call *k)
{
    int events = k->sock ? k->sock->on : 0;
    bool handed;

    connect_fd_close(k);
    handed = events && pgg__host_hand_connect(k->h, k->conn, events,
                                              k->connect_at);
    if (!handed)
        PQfinish(k->conn);
    k->conn = NULL;
    pgg__error_set(k->c.err, PGG_ETIMEDOUT, NULL, k->h->name,
                   "connect: the call's deadline came first; %s",
                   handed ? "the connect goes on and its session joins the "
                            "pool"
                          : "connect given up");
    connect_failed_as(k, PGG_BORROW_CUT);
}

/* A new connection's bound, its hook included (pgg__host_borrow's):
 * connect_timeout_ms from the connect's start. */
static int64_t connect_bound(const pgg_async_call *k)
{
    int64_t bound = k->connect_at + k->h->connect_timeout_ns;

    return bound < k->attempt_deadline ? bound : k->attempt_deadline;
}

/* The connection is made and its hook, if any, has run: lent to k, with
 * the descriptor the loop watched it by (its link's loop_fd from now on). */
static void connected(pgg_async_call *k)
{
    int fd = k->conn_fd;

    sock_close(k);
    k->conn_fd = 0;
    if (pgg__host_connected(k->h, k->conn, k->connect_at, &k->l,
                            k->c.err) != PGG_OK) {
        if (fd)
            close(fd);
        k->conn = NULL;
        pgg__pool_take_failed(k->c.pool, k->h, k->ticket, k->c.now,
                              PGG_BORROW_CLOSED, k->c.err);
        pgg__call_skipped(&k->c);
        k->state = ST_IDLE;
        return;
    }
    k->l->loop_fd = fd;
    k->conn = NULL;
    taken(k);
}

/* The hook's SQL ended (res, end): the connection is lent, or dropped as
 * pgg__host_borrow drops it (a host fault, or the hook's own failure). */
static void hook_over(pgg_async_call *k, PGresult *res, pgg_attempt_end end)
{
    bool host_fault;
    int rc = pgg__host_hook_sql_done(k->h, res, end, &host_fault, k->c.err);

    PQclear(res);
    if (rc == PGG_OK)
        rc = pgg__host_hook_usable(k->h, k->conn, k->c.err);
    if (rc == PGG_OK) {
        connected(k);
        return;
    }
    sock_close(k);
    pgg__host_hook_failed(k->h, k->conn, rc);
    k->conn = NULL;
    connect_failed_as(k, host_fault ? PGG_BORROW_CONNECT : PGG_BORROW_HOOK);
}

static void connect_made(pgg_async_call *k);
static void connect_answered(pgg_async_call *k);

static void connect_step(pgg_async_call *k, bool ready)
{
    int want;

    if (k->ask) {
        connect_answered(k);
        return;
    }
    want = pgg__link_connect_step(&k->conn, ready, k->h->name, k->c.err);
    if (want > 0) {
        int fd = connect_fd(k);

        if (fd < 0 || !sock_want(k, fd, want, connect_bound(k))) {
            bool fds = out_of_fds();

            connect_abort(k, fds ? PGG_ESYS : PGG_ENOMEM,
                          fds ? "connect: too many open files"
                              : "connect: out of memory");
        }
        return;
    }
    if (want < 0) {
        connect_failed(k);
        return;
    }
    connect_made(k);
}

/* k->conn connected: its hook's SQL, if any, then lent to k. */
static void connect_made(pgg_async_call *k)
{
    bool callback;
    const char *sql = pgg__host_hook_sql(k->h, &callback);

    if (sql) {
        pgg_query q = {.sql = sql};
        PGresult *res = NULL;
        pgg_attempt_end end;

        k->state = ST_HOOK;
        if (pgg__link_send(k->conn, &q, k->h->name, &res, &end, k->c.err) !=
            PGG_OK) {
            hook_over(k, res, end);
            return;
        }
        io_sent(k);
        return;
    }
    connected(k);
}

/*
 * Asked connects (host.c): k's connect, started on the loop
 * (PQconnectStartParams, whose immediate failure, a refused local port,
 * the call hears in this callback), goes on on the health thread, which
 * runs every PQconnectPoll step (GSSAPI's credential lookup, TLS: up to
 * 1.4 ms of the loop's CPU in one callback before); k waits in CONNECT on
 * the ask's eventfd, within the same bound (connect_bound), and settles
 * the connect slot its borrow reserved as before.  False when no ask can
 * be made (no memory or descriptor): k's connect stays on the loop.
 */
static bool connect_ask(pgg_async_call *k)
{
    pgg_asked *a = calloc(1, sizeof *a);

    if (!a)
        return false;
    a->conn = k->conn;
    a->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (a->efd < 0) {
        free(a);
        return false;
    }
    a->started = k->connect_at;
    atomic_init(&a->state, PGG_ASK_PENDING);
    atomic_init(&a->refs, 2);
    if (!sock_want(k, a->efd, POLLIN, connect_bound(k))) {
        close(a->efd);
        free(a);
        return false;
    }
    if (!pgg__host_ask_connect(k->h, a)) {
        sock_close(k);
        close(a->efd);
        free(a);
        return false;
    }
    k->ask = a;
    k->conn = NULL; /* the health thread's until the ask ends */
    pgg__health_ask(k->c.pool->health);
    return true;
}

/* k's ask is DONE (its eventfd said so, or k's wait ended meanwhile):
 * the connection is k's, or the connect failed (the health thread's err). */
static void connect_take(pgg_async_call *k)
{
    pgg_asked *a = k->ask;

    sock_close(k); /* forgotten before the eventfd can close */
    k->ask = NULL;
    k->conn = a->conn;
    if (!k->conn)
        pgg__error_copy(k->c.err, &a->err);
    pgg__asked_unref(a);
    if (k->conn)
        connect_made(k);
    else
        connect_failed(k);
}

static void connect_answered(pgg_async_call *k)
{
    if (atomic_load_explicit(&k->ask->state, memory_order_acquire) ==
        PGG_ASK_DONE)
        connect_take(k);
}

/*
 * k's ask was ended by the health thread (DONE) before k's wait for it
 * ended (connect_ask_end).  Taken as it ended when k may still send on it:
 * its connect's own bound ran out (cut false), not its attempt's deadline,
 * and no cancel.  Else nothing is sent (taken, the statement went out
 * after its caller gave the call up, and a cancel returned with the call
 * still in flight): the session joins the pool, as a cut connect's does,
 * and k's attempt ends as cut.  Closed instead when the host has an
 * on-connect hook, which the loop runs (connect_made) and which has not
 * run on it: the next caller would be lent a session without its settings
 * (pgg__host_ask_handed's rule for a cut connect).
 */
static void connect_ask_done(pgg_async_call *k, bool cut)
{
    pgg_asked *a = k->ask;
    bool callback;
    pgg_link *l;

    if (!a->conn || (!cut && !pgg__cancel_fired(k->c.cancel) &&
                     pgg__now_ns() < k->attempt_deadline)) {
        connect_take(k);
        return;
    }
    sock_close(k);
    k->ask = NULL;
    if (pgg__host_hook_sql(k->h, &callback) || callback) {
        pgg__host_close_session(k->h, a->conn);
        a->conn = NULL;
        pgg__asked_unref(a);
        pgg__error_set(k->c.err, PGG_ETIMEDOUT, NULL, k->h->name,
                       "connect: the call's deadline came first; connect "
                       "given up");
        connect_failed_as(k, PGG_BORROW_CUT);
        return;
    }
    if (pgg__host_connected(k->h, a->conn, k->connect_at, &l, k->c.err) ==
        PGG_OK)
        pgg__host_give_back(k->h, l, pgg__now_ns());
    pgg__asked_unref(a);
    pgg__error_set(k->c.err, PGG_ETIMEDOUT, NULL, k->h->name,
                   "connect: the call's deadline came first; the "
                   "connection was made and joins the pool");
    connect_lost(k, PGG_BORROW_CUT);
}

/*
 * k's wait for its ask ended first (expire): its attempt's deadline or a
 * cancel before the connect's own bound (cut: the connect goes on as a
 * handed spare, connect_cut's rule), or that bound (closed).  An ask the
 * health thread ended meanwhile: connect_ask_done.
 */
static void connect_ask_end(pgg_async_call *k, bool cut)
{
    pgg_asked *a = k->ask;
    int pending = PGG_ASK_PENDING;
    bool handed = cut && pgg__host_ask_handed(k->h);

    if (!atomic_compare_exchange_strong_explicit(
            &a->state, &pending, handed ? PGG_ASK_CUT : PGG_ASK_DROP,
            memory_order_acq_rel, memory_order_acquire)) {
        /* DONE: the health thread ended it first. */
        if (handed)
            pgg__host_spares(k->h, -1);
        connect_ask_done(k, cut);
        return;
    }
    sock_close(k);
    k->ask = NULL;
    pgg__asked_unref(a);
    pgg__health_ask(k->c.pool->health); /* it lets go of the socket now */
    if (cut) {
        pgg__error_set(k->c.err, PGG_ETIMEDOUT, NULL, k->h->name,
                       "connect: the call's deadline came first; %s",
                       handed ? "the connect goes on and its session joins "
                                "the pool"
                              : "connect given up");
        connect_failed_as(k, PGG_BORROW_CUT);
    } else {
        pgg__error_set(k->c.err, PGG_ETIMEDOUT, NULL, k->h->name,
                       "connect: deadline exceeded");
        connect_failed(k);
    }
}

/* Wait for a connection of k->h (look_again: the next look, or the
 * deadline): looks again on this context's
 * give-backs (unpark) and every PARK_POLL_NS, until the attempt's
 * deadline. */
static void look_again(pgg_async_call *k, int64_t now)
{
    wait_until(k, now + PARK_POLL_NS < k->attempt_deadline
                      ? now + PARK_POLL_NS
                      : k->attempt_deadline);
}

/* A parked call counts as a borrower waiting on its host (pgg__host_want):
 * loops give back what they keep of it, threads stop parking theirs, so
 * its looks find them. */
static void park(pgg_async_call *k, int64_t now)
{
    if (k->parked_at == 0)
        k->parked_at = now;
    if (k->state != ST_PARKED) {
        k->ac->nparked++;
        pgg__host_want(k->h, 1);
    }
    k->state = ST_PARKED;
    look_again(k, now);
}

/* k leaves ST_PARKED (it looks again, or is cancelled). */
static void unparked(pgg_async_call *k)
{
    k->ac->nparked--;
    pgg__host_want(k->h, -1);
    k->state = ST_IDLE;
}

/* The rest of admission, out of line: the breaker's half that is not its
 * closed fast path, and what a refusal or a busy lock does.  True:
 * admitted.  back: a refused call may wait for the host's server to start
 * (not when it has just looked). */
COLD bool admit_slow(pgg_async_call *k, int64_t now, bool back)
{
    pgg_host *h = k->h;
    int allowed = pgg__breaker_try_allow_slow(&h->breaker, now, &k->ticket);

    if (allowed == PGG_BREAKER_ADMITTED)
        return true;
    if (now < k->attempt_deadline &&
        (allowed == PGG_BREAKER_BUSY || (back && pgg__host_coming_back(h)))) {
        k->state = ST_BACK;
        look_again(k, now);
        return false;
    }
    atomic_fetch_add(&h->rejections, 1);
    k->cm.rejected = true;
    pgg__call_skipped(&k->c);
    return false;
}

/* Admission on k->h, then a connection or a connect.  A call the breaker
 * refuses waits while the host's server is starting (the rule of
 * pgg__host_await_back, pgg__host_coming_back here), looking again every
 * PARK_POLL_NS within the attempt's deadline, then asks the breaker once
 * more, as pgg__pool_take does after the wait.  The loop never waits for
 * the breaker's lock (pgg__breaker_try_allow): when its answer needs the
 * lock and another thread holds it (half-open's permits, the end of the
 * open time), the call looks again the same way (ST_BACK) rather than be
 * refused by a lock race; one still busy at its attempt's deadline is
 * refused then, as a breaker that never answered yes. */
HOT void admit_step(pgg_async_call *k, bool hot)
{
    pgg_host *h = k->h;

    if (k->state == ST_BACK) {
        int64_t now = pgg__now_ns();

        if (now < k->attempt_deadline && pgg__host_coming_back(h)) {
            look_again(k, now);
            return;
        }
        k->state = ST_IDLE;
        k->c.now = now;
        if (!pgg__breaker_allow_fast(&h->breaker, &k->ticket) &&
            !admit_slow(k, now, false))
            return;
    } else if (!pgg__breaker_allow_fast(&h->breaker, &k->ticket) &&
               !admit_slow(k, k->c.now, true)) {
        return;
    }
    if (pipe_join(k))
        return;
    if (take_spare(k, h)) {
        taken_step(k, hot);
        return;
    }
    borrow(k);
}

static void admit(pgg_async_call *k)
{
    admit_step(k, false);
}

/* Start an attempt on h (hot: admit inline, admit_step). */
HOT void attempt_start(pgg_async_call *k, pgg_host *h, bool hot)
{
    k->h = h;
    k->l = NULL;
    k->a.res = NULL;
    k->a.ended = 0;
    k->a.reused = false;
    k->a.lost = false;
    k->ended_behind = false;
    k->parked_at = 0;
    if (hot)
        admit_step(k, true);
    else
        admit(k);
}

static void borrow_on(pgg_async_call *k);

/* Admitted on k->h: a connection, a connect, or a wait for one; the
 * host's lock only tried (loop_enter). */
static void borrow(pgg_async_call *k)
{
    pgg_host_loop *prev = loop_enter(k->ac);

    borrow_on(k);
    loop_leave(prev);
}

static void borrow_on(pgg_async_call *k)
{
    pgg_pool *pool = k->c.pool;
    pgg_host *h = k->h;
    int64_t now = k->c.now;
    bool connect, lock_busy;

    if (k->state == ST_RELOOK) {
        now = pgg__now_ns();
        k->state = ST_IDLE;
    } else if (k->state == ST_PARKED) {
        now = pgg__now_ns();
        unparked(k); /* park() again below if still busy */
        /* One this context kept meanwhile (kept_check gives them back
         * while a call waits, this takes it first). */
        if (now < k->attempt_deadline && take_spare(k, h)) {
            taken(k);
            return;
        }
    } else if (pgg__host_awaited_beyond(h, 0) && now < k->attempt_deadline) {
        /* Others already wait for a connection of h (a blocking borrower,
         * another loop's parked call): a call that comes now waits its
         * turn, one look (PARK_POLL_NS), rather than take what is given
         * back for them.  Else a loop whose calls follow each other takes
         * its connection back every time, and a waiter that looks on a
         * timer (a parked call) or is still waking up (a blocking one)
         * may wait out its deadline. */
        park(k, now);
        return;
    }
    if (pgg__host_try_borrow(h, k->c.now, now, k->attempt_deadline, &k->l,
                             &connect, &lock_busy, k->c.err) != PGG_OK) {
        int code = k->c.err->code;

        if (lock_busy && now < k->attempt_deadline) {
            /* The host's lock was busy: look again, as a parked call, but
             * waiting for no connection (host.c, "Owed"). */
            pgg__error_reset(k->c.err);
            k->state = ST_RELOOK;
            look_again(k, now);
            return;
        }
        if (code != PGG_ECLOSED && code != PGG_EUNAVAILABLE &&
            now < k->attempt_deadline) {
            /* Busy until one comes back: park (no error for now). */
            pgg__error_reset(k->c.err);
            park(k, now);
            return;
        }
        k->state = ST_IDLE;
        /* A refusal moments ago (53300, 57P03) is told as it is: the next
         * host, and the error if none serves. */
        pgg__pool_take_failed(pool, h, k->ticket, k->c.now,
                              code == PGG_ECLOSED       ? PGG_BORROW_CLOSED
                              : code == PGG_EUNAVAILABLE ? PGG_BORROW_REFUSED
                                                         : PGG_BORROW_EXHAUSTED,
                              k->c.err);
        pgg__call_skipped(&k->c);
        return;
    }
    k->state = ST_IDLE;
    if (!connect) {
        taken(k);
        return;
    }
    /* Its bound runs from here (connect_bound), not from the attempt's
     * start: a call parked for a connection may have waited longer than
     * connect_timeout_ms.  It is also the start of its ask of a refusing
     * server (host.c). */
    k->connect_at = now;
    k->ask = NULL;
    /* A name to look up (getaddrinfo blocks): the whole connect on the
     * health thread, PQconnectStartParams too (health.c, asked_take);
     * the loop starts it only when no ask can be made. */
    if (h->lookup) {
        k->state = ST_CONNECT;
        if (connect_ask(k))
            return;
        k->state = ST_IDLE;
    }
    if (pgg__link_connect_start(h->keys, h->vals, h->name, &k->conn,
                                k->c.err) != PGG_OK) {
        connect_failed(k);
        return;
    }
    k->state = ST_CONNECT;
    if (!connect_ask(k))
        connect_step(k, false);
}

/* ----------------------------------------------------------- the path */

static void call_free(pgg_async *ac, pgg_async_call *k)
{
    if (k->pooled && ac->nfree < FREE_MAX) {
        k->next = ac->free_calls;
        ac->free_calls = k;
        ac->nfree++;
        return;
    }
    free(k);
}

static void unlink_call(pgg_async_call *k)
{
    pgg_async *ac = k->ac;

    if (k->prev)
        k->prev->next = k->next;
    else
        ac->head = k->next;
    if (k->next)
        k->next->prev = k->prev;
    ac->pending--;
}

/* Run the callback and free the call. */
HOT void complete(pgg_async_call *k)
{
    pgg_async *ac = k->ac;
    PGresult *res = k->res;

    unlink_call(k);
    k->fn(ac, res, &k->info, &k->err, k->userdata);
    call_free(ac, k);
}

/* The path is over for k: its outcome, its callback due.  The state
 * first: a fallback the cache's lock kept from the call sets it back
 * from inside (cache_later). */
HOT void finish(pgg_async_call *k)
{
    k->state = ST_DONE;
    k->wait_until = 0; /* complete() runs it, or the timer */
    k->res = pgg__call_finish(&k->c);
}

/* pgg_host_loop.cache_later: the call finishes again a look later
 * (ST_CACHE, the timer's expire), its bulkhead slot still held. */
static void cache_later(pgg_host_loop *self, void *call_mem)
{
    pgg_async_call *k =
        (pgg_async_call *)((char *)call_mem - offsetof(pgg_async_call, cm));

    (void)self;
    k->state = ST_CACHE;
    wait_until(k, pgg__now_ns() + PARK_POLL_NS);
}

/* finish, out of line where a call seldom ends: in drive (no host served
 * it, or none was tried), whose usual end is a wait. */
COLD void finish_out(pgg_async_call *k)
{
    finish(k);
}

/* A write refused as read-only found no primary (round_wait): it waits
 * for the health round the refusal asked for, looking every
 * PARK_POLL_NS (the health thread cannot wake a loop) within the call's
 * deadline; then, done or not, it routes again (pgg__call_rerouted). */
COLD void round_look(pgg_async_call *k, bool first)
{
    int64_t now = pgg__now_ns();

    if (first)
        k->round_want = pgg__health_ask_round(k->c.pool->health);
    if (now < k->c.deadline &&
        !pgg__health_round_done(k->c.pool->health, k->round_want)) {
        k->state = ST_ROUND;
        wait_until(k, now + PARK_POLL_NS < k->c.deadline
                          ? now + PARK_POLL_NS
                          : k->c.deadline);
        return;
    }
    k->state = ST_IDLE;
    pgg__call_rerouted(&k->c);
}

/* Advance k through the steps that need no wait, until it waits or ends.
 * Inline in its two callers (start, settle). */
HOT void drive(pgg_async_call *k, bool hot)
{
    pgg_host *h;
    int64_t dl;

    while (k->state == ST_IDLE) {
        /* Served: next and again would each say so first (call.c). */
        h = k->c.served ? NULL : pgg__call_next(&k->c, &dl);
        if (!h) {
            if (k->c.round_wait && !k->c.served && !k->c.final) {
                round_look(k, true);
                continue;
            }
            if (!k->c.served && pgg__call_again(&k->c))
                continue;
            finish_out(k);
            return;
        }
        k->attempt_deadline = dl;
        attempt_start(k, h, hot);
    }
}

/* Something happened to k: advance it, then complete it when it ended. */
static void settle(pgg_async_call *k)
{
    pgg_async *ac = k->ac;
    const pgg_host *gave = k->unpark ? k->h : NULL;

    k->unpark = false;
    /* The usual end of a call (served), without drive's loop. */
    if (k->state == ST_IDLE && k->c.served)
        finish(k);
    else
        drive(k, false);
    if (k->state == ST_DONE)
        complete(k);
    if (gave)
        unpark(ac, gave);
}

/* A connection to h came back: the oldest call parked on h (the list's
 * tail: calls are added at the head) looks again, unless borrowers other
 * than this context's wait for h too (a blocking one, another loop's
 * parked call) and that call parked less than a look (PARK_POLL_NS) ago,
 * or the last such give-back went to our own call: then what came back is
 * theirs as much as ours, and it goes idle for their next look, ours
 * coming a look later.  Taken at once every time, a loop that gives back
 * and parks a call it starts right then, or always has one parked a while
 * (two in flight), would keep it from them until their deadlines; left
 * idle every time, a host whose connections all have loops' calls waiting
 * would stand idle up to a look per hand-off. */
static void unpark(pgg_async *ac, const pgg_host *h)
{
    pgg_async_call *k = NULL;
    int mine = 0;

    if (ac->nparked == 0)
        return;
    for (pgg_async_call *i = ac->head; i; i = i->next)
        if (i->state == ST_PARKED && i->h == h) {
            k = i;
            mine++;
        }
    if (!k)
        return;
    if (pgg__host_awaited_beyond(h, mine)) {
        int64_t now = pgg__now_ns();

        /* Outsiders wait: at once to our own call only if it has waited a
         * look, and not twice in a row; otherwise it goes idle, and our
         * parked calls look a whole look from now, after the outsiders'
         * next look.  Else a context that always has a call parked that
         * long (two calls in flight, statements over a look) took every
         * give-back, or its looks came first, and the outsider waited out
         * its deadline. */
        if (ac->gave_own || now - k->parked_at < PARK_POLL_NS) {
            ac->gave_own = false;
            for (pgg_async_call *i = ac->head; i; i = i->next)
                if (i->state == ST_PARKED && i->h == h)
                    look_again(i, now);
            return;
        }
        ac->gave_own = true;
    }
    borrow(k);
    settle(k);
}

static void on_ready(pgg_async_sock *s, int revents)
{
    pgg_async_call *k = s->call;

    if (s->pipe) {
        pipe_io(s->pipe, revents);
        return;
    }
    if (!k) {
        if (s->kl)
            kept_read(s);
        return;
    }
    switch (k->state) {
    case ST_CONNECT:
        connect_step(k, true);
        break;
    case ST_HOOK:
    case ST_TYPES:
    case ST_PREPARE:
    case ST_QUERY:
    case ST_LSN:
        io(k, revents);
        break;
    default:
        return;
    }
    settle(k);
}

/* settle and on_ready on the loop's tie (loop_enter), out of line: the
 * read handler's usual case pays nothing for it. */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void settle_on_loop(pgg_async_call *k)
{
    pgg_host_loop *prev = loop_enter(k->ac);

    settle(k);
    loop_leave(prev);
}

#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void ready_on_loop(pgg_async_sock *s, int revents)
{
    pgg_host_loop *prev = loop_enter(s->ac);

    on_ready(s, revents);
    loop_leave(prev);
}

void pgg_async_handle_read(pgg_async_sock *s)
{
    pgg_async *ac = s->ac;
    pgg_async_call *k = s->call;

    if (k && k->state == ST_QUERY) {
        /* The usual read, inline: a call's statement answered, then
         * settle's usual case (served, nothing given back: the
         * connection kept). */
        io_step(k, POLLIN, true);
        if (k->state == ST_IDLE && k->c.served && !k->unpark) {
            finish(k);
            complete(k);
        } else {
            settle_on_loop(k);
        }
    } else {
        ready_on_loop(s, POLLIN);
    }
    before_wait(ac);
}

void pgg_async_handle_write(pgg_async_sock *s)
{
    pgg_async *ac = s->ac;

    ready_on_loop(s, POLLOUT);
    before_wait(ac);
}

/* The wait of k ended without the socket (its deadline, or a cancel):
 * end the attempt the way the blocking path ends it at a deadline. */
static void expire(pgg_async_call *k)
{
    PGresult *res = NULL;
    pgg_attempt_end end;

    switch (k->state) {
    case ST_CONNECT:
        if (k->ask)
            connect_ask_end(k, pgg__now_ns() < k->connect_at +
                                                   k->h->connect_timeout_ns);
        else if (pgg__now_ns() < k->connect_at + k->h->connect_timeout_ns)
            connect_cut(k);
        else
            connect_abort(k, PGG_ETIMEDOUT, "connect: deadline exceeded");
        break;
    case ST_HOOK:
        /* Its SQL may still run: hook_over has it cancelled. */
        pgg__link_io_deadline(&k->io, k->h->name, &res, &end, k->c.err);
        hook_over(k, res, end);
        break;
#if PGG_HAVE_LIBPQTYPES
    case ST_TYPES:
        /* The session is mid-query: dropped.  A cancel is not the host's
         * failure (pgg__pool_types_failed). */
        pgg__link_io_deadline(&k->io, k->h->name, &res, &end, k->c.err);
        if (pgg__cancel_fired(k->c.cancel))
            pgg__call_cancelled(k->c.err);
        types_failed(k);
        break;
#endif
    case ST_PREPARE:
    case ST_QUERY:
        pgg__link_io_deadline(&k->io, k->h->name, &res, &end, k->c.err);
        exec_over(k, res, end);
        break;
    case ST_PIPED:
        pipe_end(pipe_of(k->ac, k->h), k);
        break;
    case ST_LSN:
        /* The write committed: its answer stands, its position unknown;
         * the session, busy, is not pooled again. */
        PQclear(k->io.keep);
        k->io.keep = NULL;
        res = k->written;
        k->written = NULL;
        exec_over(k, res, PGG_END_RESULT);
        break;
    case ST_BACK:
        /* A cancel: refused by the breaker, as pgg__pool_take after a
         * wait the cancel ended. */
        k->state = ST_IDLE;
        atomic_fetch_add(&k->h->rejections, 1);
        k->cm.rejected = true;
        pgg__call_skipped(&k->c);
        break;
    case ST_ROUND:
        /* A cancel: the path sees the fired handle (pgg__call_next, or
         * finish with no candidate). */
        k->state = ST_IDLE;
        pgg__call_rerouted(&k->c);
        break;
    case ST_PARKED:
    case ST_RELOOK:
        /* A cancel: the wait for a connection ends as the blocking one
         * does (not the host's failure). */
        if (k->state == ST_PARKED)
            unparked(k);
        k->state = ST_IDLE;
        pgg__pool_take_failed(k->c.pool, k->h, k->ticket, k->c.now,
                              PGG_BORROW_EXHAUSTED, k->c.err);
        pgg__call_skipped(&k->c);
        break;
    case ST_SETTLE:
        /* A cancel: its slot owed, the call ends (connect_failed_as). */
        connect_failed_as(k, (pgg_borrow_fail)k->settle_why);
        break;
    case ST_CACHE:
        /* Its look for the cache's lock (cache_later), or a cancel, which
         * the path sees first (no fallback then). */
        finish(k);
        break;
    default:
        break;
    }
}

void pgg_async_handle_timer(pgg_async *ac)
{
    int64_t now = pgg__now_ns();
    pgg_host_loop *prev = loop_enter(ac);

    ac->timer_at = INT64_MAX; /* it fired */
    ac->timer_now = now;
    /* What is owed first: the calls' looks may find what it gives back. */
    if (now >= ac->owed_at)
        owed_settle(ac, now, false);
    /* Callbacks may start and cancel calls: look again from the head
     * after each one. */
    for (;;) {
        pgg_async_call *k = ac->head;

        while (k && k->wait_until > now)
            k = k->next;
        if (!k)
            break;
        if (k->state == ST_PARKED || k->state == ST_RELOOK)
            borrow(k); /* looks again; fails past the attempt's deadline */
        else if (k->state == ST_SETTLE)
            connect_failed_as(k, (pgg_borrow_fail)k->settle_why);
        else if (k->state == ST_BACK)
            admit(k); /* looks again; refused past the attempt's deadline */
        else if (k->state == ST_ROUND)
            round_look(k, false); /* routes again once done or past the deadline */
        else if (k->state != ST_DONE)
            expire(k);
        settle(k);
    }
    ac->timer_now = 0;
    if (ac->kept && now >= ac->keep_check_at)
        kept_check(ac, now);
    else if (!ac->kept)
        ac->keep_check_at = INT64_MAX; /* armed by the next keep (before_wait) */
    else if (ac->keep_check_at == INT64_MAX)
        ac->keep_check_at = now + KEEP_CHECK_NS; /* kept by this firing's calls */
    flush_spare(ac);
    rearm(ac);
    loop_leave(prev);
}

void pgg_async_cancel(pgg_async_call *k)
{
    pgg_async *ac;
    pgg_host_loop *prev;

    if (!k)
        return;
    ac = k->ac;
    prev = loop_enter(ac);
    k->c.cancel = ac->fired;
    if (k->state != ST_DONE)
        expire(k);
    settle(k); /* ends it: the path sees the fired handle */
    before_wait(ac);
    loop_leave(prev);
}

/* --------------------------------------------------------------- start */

static size_t values_size(int n, const char *const *values, const int *lengths,
                          const int *formats)
{
    size_t z = 0;

    for (int i = 0; values && i < n; i++) {
        if (!values[i])
            continue;
        if (formats && formats[i] && lengths)
            z += (size_t)lengths[i];
        else
            z += strlen(values[i]) + 1;
    }
    return z;
}

/* Copy q's SQL and parameters behind the call: the caller's buffers may
 * go once pgg_async_exec* returns. */
HOT pgg_async_call *call_new(pgg_async *ac, const pgg_query *q)
{
    size_t n = (size_t)(q->nparams > 0 ? q->nparams : 0);
    size_t sql = strlen(q->sql) + 1;
    size_t z = sizeof(pgg_async_call) + sql + n * sizeof(char *) +
               3 * n * sizeof(int) + n * sizeof(Oid) +
               values_size(q->nparams, q->values, q->lengths, q->formats) + 16;
    bool pooled = z <= sizeof(pgg_async_call) + CALL_ROOM;
    pgg_async_call *k;
    char *p;

    if (pooled && ac->free_calls) {
        k = ac->free_calls;
        ac->free_calls = k->next;
        ac->nfree--;
    } else {
        /* Line-aligned (struct pgg_async_call); C11 wants a size that is
         * a multiple of the alignment. */
        size_t a = _Alignof(pgg_async_call);

        k = aligned_alloc(a, pooled ? sizeof(pgg_async_call) + CALL_ROOM
                                    : (z + a - 1) / a * a);
        if (!k)
            return NULL;
    }
    _Static_assert(offsetof(pgg_async_call, h) -
                           offsetof(pgg_async_call, prev) <= 64,
                   "a call's zeroed fields fit four wide stores");
    memset(&k->prev, 0,
           offsetof(pgg_async_call, h) - offsetof(pgg_async_call, prev));
    k->pooled = pooled;
    k->q = *q;
    p = (char *)(k + 1);
    if (n && q->values) {
        const char **v = (const char **)(void *)p;

        p += n * sizeof(char *);
        for (size_t i = 0; i < n; i++)
            v[i] = NULL;
        k->q.values = v;
    }
    if (n && q->lengths) {
        memcpy(p, q->lengths, n * sizeof(int));
        k->q.lengths = (const int *)(void *)p;
        p += n * sizeof(int);
    }
    if (n && q->formats) {
        memcpy(p, q->formats, n * sizeof(int));
        k->q.formats = (const int *)(void *)p;
        p += n * sizeof(int);
    }
    if (n && q->types) {
        memcpy(p, q->types, n * sizeof(Oid));
        k->q.types = (const Oid *)(void *)p;
        p += n * sizeof(Oid);
    }
    for (size_t i = 0; n && q->values && i < n; i++) {
        size_t len;

        if (!q->values[i])
            continue;
        len = q->formats && q->formats[i] && q->lengths
                  ? (size_t)q->lengths[i]
                  : strlen(q->values[i]) + 1;
        memcpy(p, q->values[i], len);
        ((const char **)k->q.values)[i] = p;
        p += len;
    }
    memcpy(p, q->sql, sql);
    k->q.sql = p;
    return k;
}

/* Not accepting calls: which of the two reasons. */
COLD int start_refused(const pgg_async *ac, pgg_error *err)
{
    if (!ac->attached)
        return pgg__error_set(err, PGG_ESTATE, NULL, NULL,
                              "pgg_async_exec: no loop adapter attached");
    return pgg__error_set(err, PGG_ECLOSED, NULL, NULL,
                          "pgg_async_exec: the context is being freed");
}

/* A call's start, inline in pgg_async_exec (the usual call: no
 * parameters to copy, and no call of eight arguments); start_out for the
 * others. */
HOT int start(pgg_async *ac, pgg_intent intent, const pgg_query *q,
              const pgg_call *call, pgg_async_fn fn, void *userdata,
              pgg_async_call **handle, pgg_error *err, bool hot)
{
    pgg_async_call *k;
    pgg_error local;

    if (handle)
        *handle = NULL;
    if (!err)
        err = &local;
    if (!ac || !fn || !q->sql)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_async_exec: NULL context, callback or SQL");
    if (!ac->accepting)
        return start_refused(ac, err);
    if (pgg__query_check(q, "pgg_async_exec", err) != PGG_OK)
        return err->code;
    k = call_new(ac, q);
    if (!k)
        return pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
    k->ac = ac;
    k->fn = fn;
    k->userdata = userdata;
    if (call) {
        k->opts = *call;
        k->has_opts = true;
    }
    k->c.loop = &ac->hl;
    if (!pgg__call_begin(&k->c, &k->cm, ac->pool, intent, &k->q,
                         k->has_opts ? &k->opts : NULL, &k->info, &k->err,
                         call ? call->cancel : NULL)) {
        *err = k->err;
        call_free(ac, k);
        return err->code;
    }
    if (call && call->cancel && pgg__cancel_fired(call->cancel)) {
        call_free(ac, k);
        atomic_fetch_add(&ac->pool->calls_failed, 1);
        pgg__call_cancelled(err);
        return PGG_ECANCELED;
    }
    /* The loop never waits for a slot, nor for the bulkhead's lock:
     * refused at once (bulkhead.c, "Loops"). */
    if (pgg__pool_enter_loop(ac->pool, k->c.err) != PGG_OK) {
        *err = k->err;
        call_free(ac, k);
        return err->code;
    }
    k->next = ac->head;
    if (ac->head)
        ac->head->prev = k;
    ac->head = k;
    if (++ac->pending > ac->peak)
        ac->peak = ac->pending;
    pgg__call_route(&k->c);
    drive(k, hot);
    /* It completes from the timer, never in here.  Started by a callback
     * the timer's handler runs: on the timer's next firing, so that a
     * callback starting its next call at once (a worker retrying while a
     * breaker is open) does not keep that handler, and the loop, going
     * (it looks again from the head after each callback). */
    if (k->state == ST_DONE)
        wait_until(k, ac->timer_now ? ac->timer_now + 1 : 0);
    if (handle)
        *handle = k;
    return PGG_OK;
}

static int start_out(pgg_async *ac, pgg_intent intent, const pgg_query *q,
                     const pgg_call *call, pgg_async_fn fn, void *userdata,
                     pgg_async_call **handle, pgg_error *err)
{
    return start(ac, intent, q, call, fn, userdata, handle, err, false);
}

int pgg_async_exec(pgg_async *ac, pgg_intent intent, const char *sql,
                   const pgg_call *call, pgg_async_fn fn, void *userdata,
                   pgg_async_call **handle, pgg_error *err)
{
    pgg_query q = {.sql = sql, .result_format = call ? call->result_format : 0};

    return start(ac, intent, &q, call, fn, userdata, handle, err, true);
}

int pgg_async_exec_params(pgg_async *ac, pgg_intent intent, const char *sql,
                          int nparams, const Oid *types,
                          const char *const *values, const int *lengths,
                          const int *formats, const pgg_call *call,
                          pgg_async_fn fn, void *userdata,
                          pgg_async_call **handle, pgg_error *err)
{
    pgg_query q;
    int rc;

    /* Refused here, as by start(): no handle. */
    if (handle)
        *handle = NULL;
    rc = pgg__query_params(&q, "pgg_async_exec_params", sql, nparams, types,
                           values, lengths, formats,
                           call ? call->result_format : 0, err);
    if (rc != PGG_OK)
        return rc;
    return start_out(ac, intent, &q, call, fn, userdata, handle, err);
}

int pgg_async_exec_prepared(pgg_async *ac, pgg_intent intent,
                            const char *name, int nparams,
                            const char *const *values, const int *lengths,
                            const int *formats, const pgg_call *call,
                            pgg_async_fn fn, void *userdata,
                            pgg_async_call **handle, pgg_error *err)
{
    pgg_query q;
    int rc;

    /* Refused here, as by start(): no handle. */
    if (handle)
        *handle = NULL;
    if (!ac || !name || nparams < 0)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_async_exec_prepared: NULL context or name");
    rc = pgg__pool_prepared_query(ac->pool, "pgg_async_exec_prepared", name,
                                  nparams, values, lengths, formats, call, &q,
                                  err);
    if (rc != PGG_OK)
        return rc;
    return start_out(ac, intent, &q, call, fn, userdata, handle, err);
}

int pgg_async_execf(pgg_async *ac, pgg_intent intent, const pgg_call *call,
                    pgg_async_fn fn, void *userdata, pgg_async_call **handle,
                    pgg_error *err, const char *cmdspec, ...)
{
    pgg_error local;

    if (handle)
        *handle = NULL;
    if (!err)
        err = &local;
    if (!ac)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_async_execf: NULL context");
#if PGG_HAVE_LIBPQTYPES
    {
        pgg__typed tc;
        va_list ap;
        int rc;

        va_start(ap, cmdspec);
        rc = pgg__typed_build(ac->pool, &tc, err, cmdspec, ap);
        va_end(ap);
        if (rc == PGG_OK) {
            /* As pgg_execf: binary parameters, binary results unless the
             * call says otherwise. */
            pgg_query q = {.sql = tc.stmt,
                           .nparams = tc.n,
                           .types = tc.oids,
                           .values = tc.vals,
                           .lengths = tc.lens,
                           .formats = tc.fmts,
                           .result_format = call ? call->result_format : 1};

            rc = start_out(ac, intent, &q, call, fn, userdata, handle, err);
        }
        pgg__typed_done(&tc);
        return rc;
    }
#else
    (void)intent;
    (void)call;
    (void)fn;
    (void)userdata;
    (void)cmdspec;
    return pgg__error_set(err, PGG_ENOTSUP, NULL, NULL,
                          "pgg_async_execf: built without libpqtypes");
#endif
}

void pgg_async_give_back(pgg_async *ac)
{
    pgg_host_loop *prev;

    if (!ac)
        return;
    prev = loop_enter(ac);
    flush_spare(ac);
    kept_give_back_all(ac);
    loop_leave(prev);
    ac->keep_check_at = INT64_MAX;
    /* Nothing in flight and nothing owed (owed_settle is on the timer):
     * the timer goes too, so that the loop has nothing left of this
     * context (a run until empty returns).  Else the next firing arms it
     * again for the calls' own waits (rearm). */
    if (!ac->head && ac->owed_at == INT64_MAX && ac->attached &&
        ac->timer_at != INT64_MAX) {
        ac->timer_at = INT64_MAX;
        ac->ev.schedule_timer(ac->ev.data, -1);
    }
}

void pgg_async_free(pgg_async *ac)
{
    pgg_host_loop *prev;

    if (!ac)
        return;
    /* First out of the list of contexts that keep connections, waiting
     * for a give-back its loop's thread may be making from a blocking call
     * (kept_thread_give_back): from here on no other thread reaches ac.  On
     * the loop's thread it may stay listed: no other thread reaches ac
     * there (a walk of another thread's looks at its own), and its entry
     * is left gone at the end (kept_entry_free). */
    (void)kept_unregister(ac);
    ac->accepting = false;
    prev = loop_enter(ac);
    while (ac->head)
        pgg_async_cancel(ac->head);
    flush_spare(ac);
    kept_give_back_all(ac);
    loop_leave(prev);
    /* What its loop owes, settled now (the one wait on a host's lock a
     * loop makes, at its context's end): no give-back is left behind. */
    if (ac->owed_at != INT64_MAX)
        owed_settle(ac, pgg__now_ns(), true);
    if (ac->attached) {
        ac->ev.schedule_timer(ac->ev.data, -1);
        if (ac->ev.cleanup)
            ac->ev.cleanup(ac->ev.data);
    }
    while (ac->free_socks) {
        pgg_async_sock *s = ac->free_socks;

        ac->free_socks = s->next;
        free(s);
    }
    while (ac->free_calls) {
        pgg_async_call *k = ac->free_calls;

        ac->free_calls = k->next;
        free(k);
    }
    pgg_cancel_free(ac->fired);
    free(ac->pipes);
    kept_entry_free(ac);
    free(ac);
}
