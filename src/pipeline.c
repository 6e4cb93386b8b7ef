/*
 * Pipelining concurrent one-shot calls onto a shared connection per host
 * (pipeline.h says what and when).
 *
 * Locking: one mutex per pipe guards the queue of requests not yet sent,
 * the ring of statements in flight (who waits for each: `w`), the link,
 * and the leader flag.  It is a leaf, and never held across I/O: the
 * leader sends and reads with it released, and wakes waiters (each on its
 * own semaphore) after releasing it.  Only the leader touches the
 * PGconn and a segment's results; a waiter that gives up only clears its
 * `w` in the ring (under the mutex), so the leader never writes to a
 * caller's stack after it left.  A request the leader is sending (SENDING)
 * cannot be given up on until it is sent: the leader reads the caller's
 * parameters then.
 *
 * A statement is one or two Sync-terminated segments in the ring: the
 * prepare of a registered statement the connection lacks, then the
 * statement itself.
 */
#include "pipeline.h"

#include <ctype.h>
#include <poll.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cancel.h"
#include "clock.h"
#include "error.h"
#include "pool.h"
#include "tls.h"
#include "types.h"

/* Segments in flight on one connection (a power of two).  A caller that
 * finds no room takes today's path. */
#define RING 128

enum req_state { REQ_PENDING, REQ_SENDING, REQ_SENT, REQ_DONE };

/* How a request ended, beyond its attempt end. */
enum req_why {
    WHY_ANSWER,  /* a result came (maybe an error) */
    WHY_GAVE_UP, /* its own deadline passed */
    WHY_BROKEN,  /* the connection broke under it */
    WHY_HUNG     /* dropped: an older statement on it hung */
};

/*
 * One call waiting on a pipe; lives on the caller's stack.  state and lead
 * change under the pipe's mutex and are read without it by their waiter,
 * which sleeps on its own semaphore.  Whoever changes them counts a post
 * in posts_due under the mutex and makes it after releasing the mutex (a
 * post is a system call: not while others wait for the lock); the waiter
 * takes every post counted before it leaves, so the semaphore outlives
 * them all.  A waiter that wakes needs no lock to read an outcome
 * published with REQ_DONE.
 */
typedef struct pipe_req {
    const pgg_query *q;
    int64_t deadline;
    sem_t sem;
    _Atomic int state;     /* enum req_state */
    atomic_bool lead;      /* it holds the leadership now */
    _Atomic int posts_due; /* posts decided for it (under mu), each of
                              which it takes before it leaves */
    bool want_sent;        /* gave up while SENDING: post it when sent */
    int seg;        /* ring index of its statement's segment; -1: none */
    int prep_seg;   /* ring index of its prepare segment; -1: none */
    /* The outcome, written under the mutex before REQ_DONE. */
    PGresult *res;
    pgg_attempt_end end;
    enum req_why why;
    bool conn_ok;   /* the connection was usable after its answer */
    bool fresh;     /* nothing had been answered on the link before */
    int64_t alive_at; /* the link was known alive then (pgg_pipe.alive_ns) */
    int reported;   /* pgg_role the server reported with the answer */
    char msg[200];  /* the connection's message, for BROKEN */
    struct pipe_req *next;
} pipe_req;

typedef struct pipe_seg {
    pipe_req *w;        /* NULL: nobody wants it any more (under mu) */
    int64_t deadline;   /* its statement's, to tell a hung connection */
    int64_t sent_ns;    /* when the leader sent it */
    PGresult *res;      /* the leader's, while it collects */
    PGresult *override; /* a failed prepare's error stands for the result */
    int prep_stmt;      /* >= 0: a prepare of this statement index */
    int stmt;           /* >= 0: a run of this registered statement */
} pipe_seg;

typedef struct pgg_pipe {
    pthread_mutex_t mu;
    pgg_link *link;        /* NULL: none held */
    _Atomic bool has_link; /* read without mu to choose the join path */
    bool taking;           /* a caller is borrowing a link for it */
    bool leader;           /* some caller leads (or was told to) */
    bool retire;           /* take no new requests: give it back when empty */
    unsigned types_gen;    /* libpqtypes generation of the link when taken
                              (0: not prepared for libpqtypes) */
    bool answered;         /* something was answered on this link */
    /* When the link was last known alive: its last use before the pipe
     * took it, then the sending of the latest statement it answered while
     * staying open.  A session the server ended after that says so of
     * its siblings opened before it only (pool.c, settle). */
    int64_t alive_ns;
    pipe_req *pend, *pend_tail;
    int npend;
    int head, nseg;
    int reserved; /* segments the leader is pushing, not yet in nseg */
    pipe_seg ring[RING];
} pgg_pipe;

struct pgg_pipes {
    int n;        /* pipes: per_host for each host */
    int per_host; /* pipeline.connections */
    int64_t stall_ns; /* pipeline.stall_ms */
    atomic_uint_fast64_t sent;
    pgg_pipe pipe[];
};

/* Posts the leader owes, made once it has released the mutex: at most a
 * want-sent and an outcome per request in the ring or the queue, and a
 * hand-off. */
typedef struct wakes {
    int n;
    pipe_req *w[2 * RING + 2];
} wakes;

static void post_later(wakes *wk, pipe_req *w)
{
    atomic_fetch_add_explicit(&w->posts_due, 1, memory_order_relaxed);
    wk->w[wk->n++] = w;
}

/* mu not held. */
static void post_all(wakes *wk)
{
    for (int i = 0; i < wk->n; i++)
        sem_post(&wk->w[i]->sem);
    wk->n = 0;
}

/* ------------------------------------------------------------ pure part */

static const char *skip_space_and_comments(const char *p)
{
    while (p && *p) {
        if (isspace((unsigned char)*p) || *p == '(') {
            p++;
        } else if (p[0] == '-' && p[1] == '-') {
            const char *eol = strchr(p, '\n');

            p = eol ? eol : p + strlen(p); /* a comment to the end */
        } else if (p[0] == '/' && p[1] == '*') {
            /* Block comments nest in PostgreSQL: "/ * / * * / SELECT * /
             * BEGIN" (without the spaces) is a BEGIN.  Unterminated: the
             * server's error, not ours to guess at. */
            int depth = 1;

            for (p += 2; *p && depth > 0;) {
                if (p[0] == '/' && p[1] == '*')
                    depth++, p += 2;
                else if (p[0] == '*' && p[1] == '/')
                    depth--, p += 2;
                else
                    p++;
            }
            if (depth > 0)
                p = NULL;
        } else {
            break;
        }
    }
    return p;
}

bool pgg__pipe_sql_ok(const char *sql, bool simple)
{
    /* Statements that leave no state behind their own implicit
     * transaction; BEGIN, SET LOCAL, COPY, VACUUM... would reach the
     * neighbours queued behind them or cannot run in a pipeline. */
    static const char *const ok[] = {"select", "with",   "values", "table",
                                     "insert", "update", "delete", "merge",
                                     NULL};
    const char *p = skip_space_and_comments(sql);
    bool first = false;

    if (!p || !*p)
        return false;
    for (const char *const *w = ok; *w; w++) {
        size_t n = strlen(*w);

        if (strncasecmp(p, *w, n) == 0 &&
            !(isalnum((unsigned char)p[n]) || p[n] == '_' || p[n] == '$')) {
            first = true;
            break;
        }
    }
    if (!first)
        return false;
    if (!simple)
        return true; /* the extended protocol refuses several statements */
    /* Several statements in one simple-protocol string cannot be sent in
     * a pipeline: allow a ';' only at the very end (comments and space
     * after it).  A ';' inside a literal is refused too: that costs the
     * call the pipeline, never its meaning. */
    for (const char *s = strchr(p, ';'); s; s = strchr(s + 1, ';')) {
        const char *rest = skip_space_and_comments(s + 1);

        if (!rest || *rest)
            return false;
        return true;
    }
    return true;
}

/* ------------------------------------------------------------- lifecycle */

pgg_pipes *pgg__pipes_new(int nhosts, int per_host, int64_t stall_ns,
                          pgg_error *err)
{
    int n = nhosts * per_host;
    pgg_pipes *ps = calloc(1, sizeof *ps + (size_t)n * sizeof(pgg_pipe));

    if (!ps) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    ps->n = n;
    ps->per_host = per_host;
    ps->stall_ns = stall_ns;
    {
        pthread_mutexattr_t attr;

        /* Held for a few hundred instructions at a time by many threads:
         * a short spin beats sleeping in the kernel and waking again. */
        pthread_mutexattr_init(&attr);
#ifdef PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP
        pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
        for (int i = 0; i < n; i++)
            pthread_mutex_init(&ps->pipe[i].mu, &attr);
        pthread_mutexattr_destroy(&attr);
    }
    return ps;
}

void pgg__pipes_free(pgg_pipes *ps)
{
    if (!ps)
        return;
    for (int i = 0; i < ps->n; i++)
        pthread_mutex_destroy(&ps->pipe[i].mu);
    free(ps);
}

uint64_t pgg__pipes_sent(const pgg_pipes *ps)
{
    return ps ? atomic_load(&ps->sent) : 0;
}

/* ------------------------------------------------------------- the ring */

static pipe_seg *seg_at(pgg_pipe *p, int k)
{
    return &p->ring[(p->head + k) & (RING - 1)];
}

/* Push at position k of the ring (the leader counts its pushes while it
 * sends, unlocked, and publishes them in nseg under the lock). */
static int seg_push(pgg_pipe *p, int k, pipe_req *w, int prep_stmt,
                    int64_t now)
{
    int i = (p->head + k) & (RING - 1);
    pipe_seg *s = &p->ring[i];

    s->w = w;
    s->deadline = w->deadline;
    s->sent_ns = now;
    s->res = NULL;
    s->override = NULL;
    s->prep_stmt = prep_stmt;
    s->stmt = prep_stmt < 0 && w->q->stmt ? w->q->stmt->index : -1;
    return i;
}

static void seg_pop(pgg_pipe *p)
{
    p->head = (p->head + 1) & (RING - 1);
    p->nseg--;
}

static int req_state(const pipe_req *w)
{
    return atomic_load_explicit(&w->state, memory_order_acquire);
}

static int batch_len(const pipe_req *w)
{
    int n = 0;

    for (; w; w = w->next)
        n++;
    return n;
}

/* Hand a request its outcome (mu held); its post goes on wk. */
static void finish(wakes *wk, pipe_req *w, pipe_req *me, PGresult *res,
                   pgg_attempt_end end, enum req_why why)
{
    w->res = res;
    w->end = end;
    w->why = why;
    w->seg = w->prep_seg = -1;
    if (w != me)
        post_later(wk, w);
    atomic_store_explicit(&w->state, REQ_DONE, memory_order_release);
}

/* After a send (mu held): what went out is in flight; what was past its
 * deadline is done, not sent; when the send failed, the rest goes back to
 * the queue for fail_all. */
static void publish_batch(wakes *wk, pgg_pipe *p, pipe_req *me,
                          pipe_req *batch, bool ok)
{
    for (pipe_req *n; batch; batch = n) {
        n = batch->next;
        if (batch->seg >= 0) {
            atomic_store_explicit(&batch->state, REQ_SENT,
                                  memory_order_relaxed);
            if (batch->want_sent && batch != me)
                post_later(wk, batch);
        } else if (!ok) {
            atomic_store_explicit(&batch->state, REQ_PENDING,
                                  memory_order_relaxed);
            batch->next = NULL;
            if (p->pend_tail)
                p->pend_tail->next = batch;
            else
                p->pend = batch;
            p->pend_tail = batch;
            p->npend++;
        } else {
            batch->conn_ok = true;
            finish(wk, batch, me, NULL, PGG_END_EXPIRED, WHY_GAVE_UP);
        }
    }
}

static bool is_error(const PGresult *r)
{
    ExecStatusType s = PQresultStatus(r);
    return s == PGRES_FATAL_ERROR || s == PGRES_BAD_RESPONSE ||
           s == PGRES_NONFATAL_ERROR;
}

/*
 * The connection is gone (broken: the server closed or a send failed;
 * hung: the oldest statement passed its deadline), mu held.  Every
 * statement in flight fails as sent, the oldest one with its server's
 * last words when it has them; queued requests fail as not sent.  Returns
 * the link, detached, for the caller to close outside the lock.
 */
static pgg_link *fail_all(wakes *wk, pgg_pipe *p, pipe_req *me, bool hung,
                          int64_t now, const char *why)
{
    pgg_link *l = p->link;

    while (p->nseg > 0) {
        pipe_seg *s = seg_at(p, 0);
        pipe_req *w = s->w;
        PGresult *keep = s->override ? s->override : s->res;

        if (keep == s->override)
            PQclear(s->res);
        else
            PQclear(s->override);
        if (w && req_state(w) != REQ_DONE && s->prep_stmt < 0) {
            bool last_words = !hung && keep &&
                              PQresultErrorField(keep, PG_DIAG_SQLSTATE);

            pgg__strlcpy(w->msg, why, sizeof w->msg);
            w->conn_ok = false;
            w->fresh = !p->answered;
            w->alive_at = p->alive_ns;
            if (last_words)
                finish(wk, w, me, keep, PGG_END_RESULT, WHY_ANSWER);
            else if (hung && now >= s->deadline)
                finish(wk, w, me, NULL, PGG_END_DEADLINE, WHY_GAVE_UP);
            else
                finish(wk, w, me, NULL, PGG_END_LOST,
                       hung ? WHY_HUNG : WHY_BROKEN);
            if (last_words)
                keep = NULL;
        }
        PQclear(keep);
        seg_pop(p);
    }
    p->head = 0;
    while (p->pend) {
        pipe_req *w = p->pend;

        p->pend = w->next;
        w->conn_ok = false;
        w->fresh = !p->answered;
        w->alive_at = p->alive_ns;
        pgg__strlcpy(w->msg, why, sizeof w->msg);
        finish(wk, w, me, NULL, PGG_END_NOT_SENT, WHY_BROKEN);
    }
    p->pend_tail = NULL;
    p->npend = 0;
    p->link = NULL;
    atomic_store_explicit(&p->has_link, false, memory_order_relaxed);
    p->answered = false;
    p->retire = false;
    return l;
}

/* ------------------------------------------------------------ the leader */

static bool send_one(PGconn *conn, const pgg_query *q)
{
    if (q->stmt_name)
        return PQsendQueryPrepared(conn, q->stmt_name, q->nparams, q->values,
                                   q->lengths, q->formats, q->result_format) &&
               PQpipelineSync(conn);
    return PQsendQueryParams(conn, q->sql, q->nparams, q->types, q->values,
                             q->lengths, q->formats, q->result_format) &&
           PQpipelineSync(conn);
}

/*
 * Send a batch taken from the queue (mu not held), pushing its segments
 * at ring positions k...  Requests past their deadline are skipped (not
 * sent).  Returns false when libpq could not send.
 */
static bool send_batch(pgg_pipe *p, pipe_req *batch, int *k, int64_t now,
                       int *sent)
{
    pgg_link *l = p->link;
    PGconn *conn = l->conn;

    for (pipe_req *w = batch; w; w = w->next) {
        const pgg_query *q = w->q;

        if (now >= w->deadline)
            continue; /* not sent: finished when published */
        if (q->stmt && !pgg__stmt_set_has(&l->stmts, q->stmt->index)) {
            if (!PQsendPrepare(conn, q->stmt_name, q->stmt->sql,
                               q->stmt->nparams, q->stmt->types) ||
                !PQpipelineSync(conn))
                return false;
            w->prep_seg = seg_push(p, (*k)++, w, q->stmt->index, now);
            /* Later requests need not prepare it again; a failed prepare
             * takes the mark back. */
            pgg__stmt_set_add(&l->stmts, q->stmt->index);
        }
        if (!send_one(conn, q))
            return false;
        w->seg = seg_push(p, (*k)++, w, -1, now);
        (*sent)++;
    }
    return true;
}

/*
 * Read the segments libpq can complete without waiting (mu not held): the
 * first *ndone segments from the ring's head have all their results in
 * res / override when it returns.  Returns false when the connection
 * broke (what was read so far stays in the segments).
 */
static bool collect(pgg_pipe *p, int nseg, int *ndone)
{
    PGconn *conn = p->link->conn;
    int nulls = 0;

    while (*ndone < nseg && !PQisBusy(conn)) {
        pipe_seg *s = seg_at(p, *ndone);
        PGresult *r = PQgetResult(conn);

        if (!r) {
            /* One NULL ends a statement's results; two in a row: libpq
             * has nothing ready. */
            if (++nulls > 1)
                break;
            continue;
        }
        nulls = 0;
        if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            if (s->prep_stmt >= 0 && s->res && is_error(s->res)) {
                /* The statement behind it fails for want of it: its
                 * caller gets the prepare's own error. */
                p->link->stmts.bits[s->prep_stmt >> 6] &=
                    ~(UINT64_C(1) << (s->prep_stmt & 63));
                seg_at(p, *ndone + 1)->override = s->res;
                s->res = NULL;
            } else if (s->stmt >= 0 && pgg__link_statement_gone(s->res)) {
                /* The session lost our statement (a DEALLOCATE ALL run
                 * on it): prepare it again at its next use here.  This
                 * call keeps its 26000 (nothing ran). */
                pgg__stmt_set_del(&p->link->stmts, s->stmt);
            }
            (*ndone)++;
            continue;
        }
        /* COPY cannot come from the statements allowed here; should a
         * function start one, the connection is unusable. */
        if (pgg__link_is_copy(r)) {
            PQclear(r);
            return false;
        }
        if (s->res && is_error(s->res)) {
            PQclear(r); /* as PQexec: the first error stands */
        } else {
            PQclear(s->res);
            s->res = r;
        }
        if (PQstatus(conn) == CONNECTION_BAD)
            return false;
    }
    return PQstatus(conn) != CONNECTION_BAD;
}

/* Hand the first ndone segments to their callers and drop them from the
 * ring (mu held). */
static void deliver(wakes *wk, pgg_pipe *p, pipe_req *me, int ndone)
{
    PGconn *conn = p->link->conn;
    bool conn_ok = PQstatus(conn) == CONNECTION_OK;
    int reported = ndone ? (int)pgg__link_reported_role(conn) : 0;

    for (; ndone > 0; ndone--) {
        pipe_seg *s = seg_at(p, 0);
        pipe_req *w = s->w;

        if (s->prep_stmt >= 0) {
            PQclear(s->res);
            /* Its slot is reused once popped: the owner forgets it. */
            if (w)
                w->prep_seg = -1;
        } else {
            PGresult *keep = s->override ? s->override : s->res;

            if (s->override)
                PQclear(s->res);
            if (w) {
                w->conn_ok = conn_ok;
                w->fresh = !p->answered;
                w->alive_at = p->alive_ns;
                w->reported = reported;
                finish(wk, w, me, keep, PGG_END_RESULT, WHY_ANSWER);
            } else {
                PQclear(keep);
            }
            p->answered = true;
            /* It read this statement and answered; still open after. */
            if (conn_ok)
                p->alive_ns = s->sent_ns;
        }
        seg_pop(p);
    }
}

/* Close a link the pipe gave up on, outside the lock: a hung one with a
 * cancel (its statements may still run), a broken one plainly. */
static void drop_link(pgg_pool *pool, pgg_host *h, pgg_link *l, bool hung)
{
    if (!l)
        return;
    if (hung)
        pgg__host_abandon(h, l, pool->canceller);
    else
        pgg__host_discard(h, l);
}

/* me is done (mu held): pass the leadership to the oldest caller still
 * waiting, or, with nobody left, give the link back (or drop it, when
 * statements nobody waits for are still in flight). */
static void hand_off(wakes *wk, pgg_pool *pool, pgg_host *h, pgg_pipe *p,
                     pipe_req *me)
{
    pipe_req *next = NULL;
    pgg_link *l;
    bool orphans;

    atomic_store_explicit(&me->lead, false, memory_order_relaxed);
    for (int k = 0; k < p->nseg && !next; k++) {
        pipe_req *w = seg_at(p, k)->w;

        if (w && w != me && req_state(w) != REQ_DONE)
            next = w;
    }
    if (!next)
        next = p->pend;
    if (next) {
        atomic_store_explicit(&next->lead, true, memory_order_relaxed);
        post_later(wk, next);
        return;
    }
    p->leader = false;
    l = p->link;
    if (!l)
        return;
    orphans = p->nseg > 0;
    if (orphans) {
        /* Answers nobody will read: closing is cheaper than waiting. */
        l = fail_all(wk, p, me, true, 0, "connection dropped");
    } else {
        p->link = NULL;
        atomic_store_explicit(&p->has_link, false, memory_order_relaxed);
        p->answered = false;
        p->retire = false;
    }
    pthread_mutex_unlock(&p->mu);
    if (orphans) {
        drop_link(pool, h, l, true);
    } else {
        /* Nothing pending: leaving pipeline mode succeeds, and a link that
         * would not is closed by give_back (pgg__link_reusable). */
        (void)PQexitPipelineMode(l->conn);
        pgg__host_give_back(h, l, pgg__now_ns());
    }
    pthread_mutex_lock(&p->mu);
}

/* w gives up at its deadline (mu held). */
static void give_up(wakes *wk, pgg_pipe *p, pipe_req *me, pipe_req *w)
{
    if (req_state(w) == REQ_PENDING) {
        pipe_req **pp = &p->pend, *prev = NULL;

        for (; *pp && *pp != w; prev = *pp, pp = &(*pp)->next)
            ;
        if (*pp) {
            *pp = w->next;
            if (p->pend_tail == w)
                p->pend_tail = prev;
            p->npend--;
        }
        w->conn_ok = true;
        finish(wk, w, me, NULL, PGG_END_EXPIRED, WHY_GAVE_UP);
        return;
    }
    /* SENT: the answer, when it comes, goes nowhere. */
    if (w->seg >= 0)
        p->ring[w->seg].w = NULL;
    if (w->prep_seg >= 0)
        p->ring[w->prep_seg].w = NULL;
    w->conn_ok = true;
    finish(wk, w, me, NULL, PGG_END_DEADLINE, WHY_GAVE_UP);
}

/*
 * Lead until me has its outcome (mu held on entry and return).  Each turn
 * takes the queue, sends it, reads what has come, then takes the lock once
 * to publish both; then waits on the socket until the oldest statement's
 * deadline or me's, whichever is first.
 */
static void lead(pgg_pool *pool, pgg_host *h, pgg_pipe *p, pipe_req *me)
{
    pgg_pipes *ps = pool->pipes;
    bool polled = false;
    wakes wk;

    wk.n = 0;
    while (req_state(me) != REQ_DONE) {
        int64_t now = pgg__now_ns(), until;
        PGconn *conn = p->link->conn;
        pipe_req *batch = p->pend;
        int k = p->nseg, sent = 0, ndone = 0, flush, r;
        pgg_link *dead;
        bool ok, hung = false;
        const char *why;

        p->pend = p->pend_tail = NULL;
        p->npend = 0;
        for (pipe_req *w = batch; w; w = w->next)
            atomic_store_explicit(&w->state, REQ_SENDING, memory_order_relaxed);
        p->reserved = 2 * batch_len(batch);
        pthread_mutex_unlock(&p->mu);
        post_all(&wk);

        ok = send_batch(p, batch, &k, now, &sent);
        flush = ok ? PQflush(conn) : -1;
        if (polled)
            (void)PQconsumeInput(conn); /* a failure shows in collect */
        polled = false;
        ok = ok && flush >= 0 && collect(p, k, &ndone);

        pthread_mutex_lock(&p->mu);
        p->nseg = k;
        p->reserved = 0;
        atomic_fetch_add_explicit(&ps->sent, (uint64_t)sent,
                                  memory_order_relaxed);
        publish_batch(&wk, p, me, batch, ok);
        deliver(&wk, p, me, ndone);
        if (!ok) {
            why = PQerrorMessage(conn);
            goto failed;
        }
        if (req_state(me) == REQ_DONE || p->pend)
            continue;
        until = me->deadline;
        if (p->nseg > 0 && seg_at(p, 0)->deadline < until)
            until = seg_at(p, 0)->deadline;
        pthread_mutex_unlock(&p->mu);
        post_all(&wk);
        r = pgg__link_poll(PQsocket(conn),
                           flush == 1 ? POLLIN | POLLOUT : POLLIN, until);
        pthread_mutex_lock(&p->mu);
        polled = r > 0;
        if (r > 0)
            continue;
        if (r == 0) {
            now = pgg__now_ns();
            if (p->nseg == 0 || now < seg_at(p, 0)->deadline) {
                /* me's own deadline, the connection still fine. */
                if (req_state(me) != REQ_DONE)
                    give_up(&wk, p, me, me);
                continue;
            }
            hung = true;
            why = "connection dropped: a statement ahead of this one on the "
                  "shared connection passed its deadline";
        } else {
            why = "poll failed";
        }
    failed:
        dead = fail_all(&wk, p, me, hung, now, why);
        pthread_mutex_unlock(&p->mu);
        post_all(&wk);
        drop_link(pool, h, dead, hung);
        pthread_mutex_lock(&p->mu);
    }
    hand_off(&wk, pool, h, p, me);
    /* Posted with mu held, as the caller expects it back; the waiters are
     * behind the lock for a moment only. */
    post_all(&wk);
}

/* ------------------------------------------------------------ the caller */

bool pgg__pipe_query_ok(pgg_host *h, const pgg_query *q)
{
    pgg_breaker_state st;

    if (q->vis || q->prepare || pgg__cancel_cur)
        return false;
    /* Half-open trial calls (and the refusals while open) stay one by
     * one, as the breaker counts them. */
    st = pgg__breaker_state(&h->breaker);
    if (st != PGG_BREAKER_CLOSED && st != PGG_BREAKER_DISABLED &&
        st != PGG_BREAKER_METRICS_ONLY)
        return false;
    if (q->stmt)
        return pgg__pipe_sql_ok(q->stmt->sql, false);
    return pgg__pipe_sql_ok(q->sql, q->nparams == 0 && !q->types &&
                                        q->result_format == 0);
}

/* May a request join p's link now (mu held)?  now: the caller's clock. */
static bool joinable(pgg_pool *pool, pgg_pipe *p, int64_t now)
{
    if (!p->link || p->retire)
        return false;
    if (p->nseg + p->reserved + 2 * (p->npend + 1) > RING)
        return false;
    /* The server runs them in order: behind a slow statement a call would
     * wait it out.  It takes a connection of its own instead. */
    if (p->nseg > 0 && pool->pipes->stall_ns > 0 &&
        now - seg_at(p, 0)->sent_ns >= pool->pipes->stall_ns)
        return false;
    if (atomic_load_explicit(&pool->types_on, memory_order_relaxed) &&
        p->types_gen < pgg__types_gen(pool->types)) {
        /* Typed calls began, or types were registered, after the link was
         * prepared: its results could not read them.  A fresh one will
         * carry every registration. */
        p->retire = true;
        return false;
    }
    return true;
}

/* Borrow a link for the pipe (the caller won `taking`).  Returns what
 * pgg__pool_take said; on PGG_TAKE_OK the link is the pipe's. */
static pgg_take take_link(pgg_pool *pool, pgg_host *h, pgg_pipe *p,
                          pgg_intent intent, int64_t deadline, int64_t start,
                          pgg_ticket *ticket, bool *rejected, pgg_error *err)
{
    pgg_link *l;
    pgg_take t = pgg__pool_take(pool, h, intent, deadline, start, &l, ticket,
                                rejected, err);

    if (t == PGG_TAKE_OK && !PQenterPipelineMode(l->conn)) {
        int64_t now = pgg__now_ns();

        pgg__host_give_back(h, l, now);
        pgg__pool_record(pool, h, *ticket, PGG_CLASS_IGNORED, start, now);
        t = PGG_TAKE_SKIPPED;
        l = NULL;
    }
    pthread_mutex_lock(&p->mu);
    p->taking = false;
    if (t == PGG_TAKE_OK) {
        p->link = l;
        p->types_gen =
            atomic_load_explicit(&pool->types_on, memory_order_relaxed)
                ? l->types_gen
                : 0;
        p->answered = !l->fresh;
        p->alive_ns = l->last_used_ns;
        atomic_store_explicit(&p->has_link, true, memory_order_relaxed);
    }
    return t;
}

/* The attempt's verdict and bookkeeping, as pgg__pool_exec_on does for a
 * connection of the caller's own. */
static void judge(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                  pipe_req *w, pgg_ticket ticket, int64_t start,
                  pgg_attempt *a, pgg_error *err)
{
    const pgg_classifier *c = &pool->cfg->classifier;
    int role = atomic_load_explicit(&h->role, memory_order_relaxed);
    pgg_verdict v;
    pgg_class rec;
    bool ended_by_server = false;

    if (w->end == PGG_END_RESULT && !w->res) {
        /* Nothing came for it (libpq lost track): as a broken link. */
        w->end = PGG_END_LOST;
        w->why = WHY_BROKEN;
        pgg__strlcpy(w->msg, "no result", sizeof w->msg);
    }
    a->res = w->res;
    a->end = w->end;
    a->ended = pgg__now_ns();
    a->lost = !w->conn_ok;
    /* The same host once more, on a new connection, as for a pooled
     * session found dead: what was never sent, and what a session that
     * had answered before lost; not what a hung neighbour took down. */
    a->reused = w->end == PGG_END_NOT_SENT ||
                (!w->fresh && w->why != WHY_HUNG);
    v = pgg__classify_result(c, w->end, w->res, intent,
                             role == PGG_ROLE_STANDBY);
    switch (w->end) {
    case PGG_END_RESULT: {
        const char *st = w->res ? PQresultErrorField(w->res, PG_DIAG_SQLSTATE)
                                : NULL;

        if (w->res && is_error(w->res))
            pgg__link_error(err, PGG_ESERVER, NULL, w->res, h->name, NULL);
        if (v.cls == PGG_CLASS_CONNECTION && st && st[0] && w->conn_ok)
            pgg__verdict_callers(&v); /* the session stays usable */
        pgg__pool_reported_role(pool, h, role, (pgg_role)w->reported, &v);
        ended_by_server =
            (v.cls == PGG_CLASS_CONNECTION || v.cls == PGG_CLASS_UNAVAILABLE) &&
            st && (strcmp(st, "57P01") == 0 || strcmp(st, "57P02") == 0) &&
            !w->conn_ok;
        break;
    }
    case PGG_END_DEADLINE:
        pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                       "query: deadline exceeded on a shared connection; "
                       "its answer is discarded");
        atomic_store_explicit(&h->suspect_until_ns,
                              a->ended + 1000 * PGG_NS_PER_MS,
                              memory_order_relaxed);
        /* No answer: the host may be hung, as for a statement on a
         * connection of its own (pool.c, exec_done); a host served only
         * through pipes was never checked.  A new link's connect was
         * answered: the silence began after it. */
        pgg__pool_note_silent(pool, h, w->fresh ? a->ended : start);
        break;
    case PGG_END_EXPIRED:
        pgg__error_set(err, PGG_ETIMEDOUT, NULL, h->name,
                       "deadline exceeded while queued for a shared "
                       "connection; not sent");
        break;
    case PGG_END_LOST:
        pgg__error_set(err, PGG_ECONNECT, NULL, h->name, "connection lost: %s",
                       w->msg);
        if (w->why == WHY_HUNG) {
            /* The host hung under an older statement: as good as a
             * timeout of this one, and the next host may do better. */
            v.cls = PGG_CLASS_TIMEOUT;
            atomic_store_explicit(&h->suspect_until_ns,
                                  a->ended + 1000 * PGG_NS_PER_MS,
                                  memory_order_relaxed);
        } else {
            ended_by_server = true;
        }
        break;
    default: /* NOT_SENT */
        pgg__error_set(err, PGG_ECONNECT, NULL, h->name, "send: %s", w->msg);
        ended_by_server = true;
        a->lost = true;
        break;
    }
    pgg__pool_reprobe(pool, h, &v);
    rec = ended_by_server && !w->fresh ? PGG_CLASS_IGNORED : v.cls;
    if (w->end == PGG_END_NOT_SENT)
        rec = PGG_CLASS_IGNORED; /* it never reached the host */
    pgg__pool_settle(pool, h, &ticket, rec, ended_by_server, w->alive_at,
                     start, a->ended);
    /* An ignored outcome the host answered is an answer to the silence
     * rule (health.c), as exec_done counts it for a statement on a
     * connection of its own: a pipe's deadline marks the host silent. */
    if (w->end == PGG_END_RESULT && rec == PGG_CLASS_IGNORED)
        atomic_fetch_add_explicit(&h->ignored_answers, 1,
                                  memory_order_relaxed);
    pgg__pool_settle_error(h, v, rec == PGG_CLASS_IGNORED, err);
    a->v = v;
}

/* A thread keeps to one of a host's pipes: its calls meet the same
 * neighbours, and spreading threads over the pipes uses several server
 * processes (one backend runs a connection's statements one by one). */
static PGG_TLS unsigned thread_pipe;
static atomic_uint next_thread_pipe;

static pgg_pipe *pick(pgg_pipes *ps, int host)
{
    if (thread_pipe == 0)
        thread_pipe = atomic_fetch_add_explicit(&next_thread_pipe, 1,
                                                memory_order_relaxed) +
                      1;
    return &ps->pipe[host * ps->per_host +
                     (int)(thread_pipe % (unsigned)ps->per_host)];
}

pgg_pipe_did pgg__pipe_attempt(pgg_pool *pool, pgg_host *h, pgg_intent intent,
                               const pgg_query *q, int64_t deadline,
                               int64_t start, pgg_attempt *a, bool *rejected,
                               pgg_error *err)
{
    pgg_pipe *p = pick(pool->pipes, h->index);
    pgg_ticket ticket;
    pipe_req w;
    int taken = 0, due;

    bool has_link = atomic_load_explicit(&p->has_link, memory_order_relaxed);

    /* Nobody else is on this host: nothing to share, and a link of its own
     * would cost the call the borrow and give-back of a pipelined
     * connection (about 3,700 instructions) for nothing.  Looked at first:
     * it is the cheapest test. */
    if (!has_link &&
        atomic_load_explicit(&h->n_busy, memory_order_relaxed) == 0)
        return PGG_PIPE_BYPASS;
    if (!pgg__pipe_query_ok(h, q))
        return PGG_PIPE_BYPASS;
    if (has_link) {
        /* Admission first: the breaker's lock is not taken under ours. */
        if (!pgg__breaker_allow(&h->breaker, start, &ticket)) {
            atomic_fetch_add(&h->rejections, 1);
            *rejected = true;
            return PGG_PIPE_SKIPPED;
        }
        pthread_mutex_lock(&p->mu);
        if (!joinable(pool, p, start)) {
            pthread_mutex_unlock(&p->mu);
            pgg__pool_record(pool, h, ticket, PGG_CLASS_IGNORED, start, start);
            return PGG_PIPE_BYPASS;
        }
    } else {
        pthread_mutex_lock(&p->mu);
        if (p->link || p->taking) {
            /* Being set up (or just set up): this call goes its own way
             * rather than wait for a connect. */
            pthread_mutex_unlock(&p->mu);
            return PGG_PIPE_BYPASS;
        }
        p->taking = true;
        pthread_mutex_unlock(&p->mu);
        switch (take_link(pool, h, p, intent, deadline, start, &ticket,
                          rejected, err)) {
        case PGG_TAKE_OK:
            break;
        case PGG_TAKE_SKIPPED:
            pthread_mutex_unlock(&p->mu);
            return PGG_PIPE_SKIPPED;
        case PGG_TAKE_FAILED:
            pthread_mutex_unlock(&p->mu);
            a->res = NULL;
            a->ended = 0;
            a->reused = false;
            a->lost = false;
            a->end = PGG_END_CONNECT_FAILED;
            a->v = pgg__classify_connect(&pool->cfg->classifier,
                                         err ? err->sqlstate : NULL);
            return PGG_PIPE_ATTEMPTED;
        }
    }

    /* Joined (mu held). */
    w.q = q;
    w.deadline = deadline;
    w.seg = w.prep_seg = -1;
    w.want_sent = false;
    w.res = NULL;
    w.fresh = false;
    w.alive_at = INT64_MAX; /* set with every outcome that can end it */
    w.conn_ok = false;
    w.reported = PGG_ROLE_UNKNOWN;
    w.msg[0] = '\0';
    w.next = NULL;
    atomic_init(&w.state, REQ_PENDING);
    atomic_init(&w.lead, false);
    atomic_init(&w.posts_due, 0);
    sem_init(&w.sem, 0, 0);
    if (p->pend_tail)
        p->pend_tail->next = &w;
    else
        p->pend = &w;
    p->pend_tail = &w;
    p->npend++;
    if (!p->leader) {
        p->leader = true;
        atomic_store_explicit(&w.lead, true, memory_order_relaxed);
    }
    while (req_state(&w) != REQ_DONE) {
        struct timespec ts;
        int r;

        if (atomic_load_explicit(&w.lead, memory_order_relaxed)) {
            lead(pool, h, p, &w);
            continue;
        }
        pthread_mutex_unlock(&p->mu);
        ts = pgg__ns_to_timespec(w.deadline);
        while ((r = sem_clockwait(&w.sem, CLOCK_MONOTONIC, &ts)) != 0 &&
               errno == EINTR)
            ;
        if (r == 0)
            taken++;
        /* Our outcome, and every post counted for us taken: go without
         * the lock. */
        if (req_state(&w) == REQ_DONE &&
            !atomic_load_explicit(&w.lead, memory_order_relaxed) &&
            atomic_load_explicit(&w.posts_due, memory_order_relaxed) == taken)
            goto done;
        pthread_mutex_lock(&p->mu);
        if (req_state(&w) == REQ_DONE ||
            atomic_load_explicit(&w.lead, memory_order_relaxed) ||
            pgg__now_ns() < w.deadline)
            continue;
        if (req_state(&w) == REQ_SENDING) {
            /* The leader is reading our parameters: wait for it. */
            w.want_sent = true;
            pthread_mutex_unlock(&p->mu);
            while (sem_wait(&w.sem) != 0 && errno == EINTR)
                ;
            taken++;
            pthread_mutex_lock(&p->mu);
            continue;
        }
        give_up(NULL, p, &w, &w); /* our own: nothing to post */
    }
    due = atomic_load_explicit(&w.posts_due, memory_order_relaxed);
    pthread_mutex_unlock(&p->mu);
    /* Posts counted for us may still be on their way (a leader makes them
     * after releasing the lock): the semaphore must outlive them. */
    for (; taken < due; taken++)
        while (sem_wait(&w.sem) != 0 && errno == EINTR)
            ;
done:
    sem_destroy(&w.sem);
    judge(pool, h, intent, &w, ticket, start, a, err);
    return PGG_PIPE_ATTEMPTED;
}

int pgg__pipes_count(const pgg_pipes *ps)
{
    return ps->n;
}

pthread_mutex_t *pgg__pipes_mutex(pgg_pipes *ps, int i)
{
    return &ps->pipe[i].mu;
}
