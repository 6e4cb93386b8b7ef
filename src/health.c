#include "health.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "cancel.h"
#include "error.h"
#include "events.h"
#include "lease.h"
#include "pool_state.h"
#include "visibility.h"

/* The probe's answer: role, position, and the WAL layout for read your
 * writes (visibility.h: a 64-bit server's page size and segment size).
 * The promotion watch below answers the same columns. */
#define PROBE_COLUMNS                                                          \
    "pg_catalog.pg_is_in_recovery(), CASE WHEN "                               \
    "pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() " \
    "ELSE pg_catalog.pg_current_wal_lsn() END, "                               \
    "CASE WHEN pg_catalog.version() LIKE '%64-bit' THEN "                      \
    "pg_catalog.current_setting('wal_block_size') || ' ' || "                  \
    "pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size')) " \
    "END"

static const char probe_sql[] = "SELECT " PROBE_COLUMNS;

/*
 * The promotion watch: a standby's probe while writes find no primary
 * (watch_wanted).  The old primary is down or demoted, and a standby may be
 * being promoted: a libpq multi-host client connecting on every call
 * meets the promoted server with a connect in flight across the flip and
 * writes at once, while probes of an answering standby came only every
 * health_incident_min_ms (20 ms), and reads' reports of in_hot_standby
 * only as they happen (tests/bench/faults, promote: pgguard learnt it up
 * to 10 ms after the flip, its writes refused meanwhile).  So the server
 * waits for its own promotion instead: the query looks at
 * pg_is_in_recovery() about every millisecond (pg_sleep(0.0009): its
 * latch wait is whole milliseconds, and a wake a little before the end
 * would sleep a second one) for at most the watch's bound, then answers
 * the probe's columns, taken after the wait (a subquery with an aggregate
 * is run to its end before the outer row is formed).  Promoted: the
 * answer comes within about a millisecond and says primary; still a
 * standby: the answer comes at the bound and the next watch starts at
 * once.  Server cost, measured (PostgreSQL 15, this machine): about 20 us
 * of CPU per wake, 2 % of a CPU per standby watched, and no other work;
 * only while writes are refused for want of a primary
 * (seek_primary_until_ns, 100 ms after the last), on standbys whose
 * breaker is closed.  The watch's bound is at most a quarter of the
 * probe's own (a hung standby answers no watch either, and the probe's
 * bound marks it, as ever), and at most half the session's
 * statement_timeout (a server or role setting), which would cancel it
 * (57014): a failed probe, the standby shown of unknown role.
 */
#define WATCH_SQL_FMT                                                          \
    "SELECT %s FROM (WITH RECURSIVE w(n, u) AS (SELECT 1, "                    \
    "pg_catalog.statement_timestamp() + LEAST(interval '%lld ms', "            \
    "NULLIF(pg_catalog.current_setting('statement_timeout'), '0')::interval "  \
    "/ 2) UNION ALL SELECT n + 1, u FROM w WHERE "                             \
    "pg_catalog.pg_is_in_recovery() AND pg_catalog.clock_timestamp() < u AND " \
    "pg_catalog.pg_sleep(0.0009) IS NOT NULL) SELECT count(*) FROM w) AS waited"

typedef enum probe_phase {
    PROBE_IDLE = 0, /* waiting for its next start */
    PROBE_CONNECTING,
    PROBE_QUERY
} probe_phase;

typedef enum probe_ticket {
    TICKET_NONE = 0,
    TICKET_TRIAL, /* half-open: the probe is one of the trial calls */
    TICKET_WATCH  /* closed: only a timeout is recorded (a hung host) */
} probe_ticket;

/* One host's probe: its own schedule, so a hung host delays nobody. */
typedef struct probe {
    probe_phase phase;
    PostgresPollingStatusType cst;
    probe_ticket ticketed;
    pgg_ticket ticket;
    bool on_old;   /* running on the session kept from an earlier probe */
    /* Its connect reached a standby to check (hold.h): the breaker waits
     * for the query's answer (unchecked_standby). */
    bool checking;
    bool donated;  /* its new session went to the pool: no query ran */
    bool watching; /* a promotion watch (WATCH_SQL_FMT) */
    /* The server refused a watch of this outage (pg_sleep not granted,
     * ...): plain probes until writes find a primary (kept across
     * probes; watch_wanted). */
    bool watch_refused;
    /* The on-connect hook's SQL failed (or hung) on the last warm-up
     * spare: one spare at a time until one passes (kept across probes;
     * warm). */
    bool hook_refused;
    /* It ended refused at connect: by nobody listening (no SQLSTATE), or
     * by the server (53300, 57P03). */
    bool refused_closed, refused_by_server;
    bool prev_refused; /* the probe before it was refused by nobody
                          listening or as starting up (57P03) */
    /* Since when the host has been found starting (mark_starting; 0: it
     * is not), kept across probes: a server that says it is starting up
     * stays so for a probe bound at most (probe_end). */
    int64_t starting_since;
    bool replaced; /* that session died and a new one was started */
    /* A call got no answer from the host (verify_take): this probe decides
     * whether the host answers anything (verifying), or the next one
     * started will (silent_since: since when, kept across starts). */
    bool verifying;
    /* The host's answered calls when verifying began: a call answered
     * there since is an answer of the host too (verify_failed). */
    uint64_t verify_answers;
    int64_t silent_since;
    int64_t answered_at; /* when a probe of the host was last answered */
    int64_t started, deadline;
    int64_t next;    /* IDLE: when the next probe starts */
    int64_t backoff; /* incident interval now; 0 when calm */
    bool in_round;   /* finished since the last round was counted */
    /* A standby's replay position at its last good probe (0: none), kept
     * across probes so that the primary's next probe can update its lag. */
    uint64_t replay_lsn;
    int64_t replay_at;
    /* The highest replay position known of the host when the query was
     * sent (answers included): what it had reported (hold.h). */
    uint64_t seen;
    /* The hold last told in an event (PGG_EVENT_READS_HELD), kept across
     * probes. */
    bool held_told;
    bool got;        /* a result arrived */
    pgg_role role;
    uint64_t lsn;
    bool have_lsn;
    pgg_class cls;
    pgg_error err;
} probe;

/*
 * Connects made ahead of calls to a host coming back (spares_tend): on top
 * of the probe's, one for each call waiting for the host or refused by its
 * breaker over the last health_incident_min_ms (at least SPARES_MIN), at
 * most SPARES per host and pool_max - 1.
 */
#define SPARES 8
#define SPARES_MIN 3

/*
 * Calls a host's breaker refused lately: how many sessions its callers
 * will want the moment it is back.  When the server starts listening, the
 * callers have not come back to wait for it yet (they were refused, and
 * call again at their own pace), and clients that connect on every call
 * queue one connect per thread within that time: the spares must be
 * queued beside the probe's at once, not as the callers come back.
 */
typedef struct refusals {
    uint64_t mark; /* the host's rejections counter at `at` */
    int64_t at;
    int recent;    /* refusals per health_incident_min_ms, at most SPARES */
} refusals;

typedef struct spare {
    PGconn *conn; /* NULL: none pending */
    PostgresPollingStatusType cst;
    int64_t started;
    int64_t end;      /* given up then (spares_expire) */
    int64_t retry_at; /* no new one before this */
    /* A caller's connect cut by its call (host.c, "Handed connects"): its
     * failure, or its own bound running out, is the host's. */
    bool handed;
    /* Connected; the on-connect hook's SQL sent, its answer awaited (a
     * warm-up's spare on a host whose hook is SQL only: spare_hook). */
    bool hooking;
} spare;

struct pgg_health {
    pgg_pool *pool;
    pthread_t thread;
    /* mu and cv are for waiters on rounds only (tests, a write that met a
     * standby, blocking): they sleep on them; the thread itself waits on
     * event_fd.  rounds is written under mu (a waiter cannot miss the
     * broadcast) but atomic, so that an event loop reads it, and asks for
     * a round, without the lock (pgg__health_ask_round,
     * pgg__health_round_done). */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic unsigned long rounds;
    /* Readable when woken or stopping: one poll covers probes and both. */
    int event_fd;
    atomic_bool stopping;
    atomic_bool wake_pending;
    /* An event loop owes a host something (pgg__health_settle_owed): one
     * write per settling this thread has not begun yet. */
    atomic_bool settle_asked;
    atomic_bool restart_round; /* set with wake_pending by await_round */
    bool was_incident;
    bool had_primary; /* some host was primary once */
    int64_t interval, probe_timeout, incident_min, incident_max;
    /* The promotion watch's query, its bound written in (NULL: no memory
     * for it; plain probes then). */
    char *watch_sql;
    atomic_bool watch_off; /* pgg__health_watch_promotions */
    /* The primary's WAL position at its last probe, for replica lag. */
    uint64_t primary_lsn;
    int64_t primary_lsn_at; /* 0: none yet */
    PGconn **conns; /* the health thread's own connection per host */
    probe *probes;
    spare *spares;  /* SPARES per host */
    refusals *refused; /* per host */
    int64_t demand_at; /* when failing calls last woke the thread */
    struct pollfd *pfds;
    int *pfd_host;
    int *pfd_spare; /* -1: the probe's socket; else the spare's index */
    /* Asked connects being made for event loops' calls (host.c, "Asked
     * connects"), each with its host's index: asked_host. */
    pgg_asked *asked;
    int nasked;
    pgg_asked **pfd_asked; /* the ask whose socket it is, or NULL */
    int pfd_cap;           /* room in pfds, pfd_host, pfd_spare, pfd_asked */
};

/* ------------------------------------------------------------- probing */

/* Host i may have gone back behind the replay position it reported (a
 * restart): suspect until a probe (or a read's check) shows it there
 * (hold.h). */
static void hold(pgg_health *hl, int i, int how, const char *why)
{
    pgg_host *h = &hl->pool->hosts[i];

    pgg__hold_suspect(&h->hold, atomic_load(&h->role) == PGG_ROLE_PRIMARY,
                      how, why);
}

/* A new session on h reports a standby whose replay position is to be
 * checked before reads (hold.h): its breaker stays as it is until the
 * probe's answer checks it (probe_answered), so that calls waiting for the
 * host (pgg__host_await_back) find it checked. */
static bool unchecked_standby(pgg_host *h, PGconn *c)
{
    return (pgg__hold_suspected(&h->hold) || pgg__hold_on(&h->hold)) &&
           pgg__link_reported_role(c) == PGG_ROLE_STANDBY;
}

/* Tell the listener when host i was held back from reads or used again
 * since the last event, whoever held it (a probe, or a read's check of a
 * new session).  The reason is a static string (an event may be delivered
 * later, on another thread); the positions are in the host's stats
 * (reads_held_until_lsn, replay_lsn). */
static void held_tell(pgg_health *hl, int i)
{
    pgg_host *h = &hl->pool->hosts[i];
    probe *p = &hl->probes[i];
    bool on = pgg__hold_on(&h->hold);
    pgg_event ev = {0};

    if (on == p->held_told)
        return;
    p->held_told = on;
    ev.type = PGG_EVENT_READS_HELD;
    ev.host_index = i;
    ev.host = h->name;
    ev.from = !on;
    ev.to = on;
    ev.reason = on ? atomic_load(&h->hold.why) : "replayed what it had reported again";
    if (!ev.reason)
        ev.reason = "it may have gone back behind what it had reported";
    pgg__pool_emit(hl->pool, &ev);
}

static void probe_fail(pgg_health *hl, int i, pgg_class cls, const char *what)
{
    probe *p = &hl->probes[i];
    pgg_host *h = &hl->pool->hosts[i];
    PGconn *c = hl->conns[i];

    p->refused_closed = p->refused_by_server = false;
    if (p->phase == PROBE_CONNECTING && cls == PGG_CLASS_CONNECTION)
        p->refused_closed = true; /* until the message shows a SQLSTATE */
    p->phase = PROBE_IDLE;
    p->cls = cls;
    pgg__link_error(&p->err, cls == PGG_CLASS_TIMEOUT ? PGG_ETIMEDOUT
                                                       : PGG_ECONNECT,
                    c, NULL, h->name, what);
    if (p->refused_closed && p->err.sqlstate[0]) {
        p->refused_closed = false;
        p->refused_by_server = pgg__capacity_refusal(p->err.sqlstate);
    }
    /* A refused startup carries its SQLSTATE (too many clients, starting
     * up, a wrong password): classify by it, as calls do. */
    if (cls == PGG_CLASS_CONNECTION && p->err.sqlstate[0]) {
        pgg_verdict v = pgg__classify_connect(&hl->pool->cfg->classifier,
                                              p->err.sqlstate);
        p->cls = v.cls;
        p->err.code = v.code;
    }
    /* A probe stuck in a query leaves a backend busy: cancel it, unless
     * the pool is going away (the cancel would only hold it up). */
    if (c && cls == PGG_CLASS_TIMEOUT && !atomic_load(&hl->stopping))
        pgg__canceller_drop(hl->pool->canceller, i, c);
    else
        PQfinish(c);
    hl->conns[i] = NULL;
}

static void probe_send(pgg_health *hl, int i)
{
    probe *p = &hl->probes[i];

    p->seen = pgg__vis_replayed(hl->pool->vis, i);
    /* A watch only on a session that had answered before this probe: on
     * one this probe opened (its first, or the replacement of one the
     * server ended), what is left of the probe's bound may be less than
     * the watch's wait plus a round trip (a slow connect: a busy server,
     * a slow path), and the watch would end as a timeout, a healthy
     * standby shown of unknown role in the outage it watches for.  The
     * plain query answers first; the watch follows at once (WATCH_GAP_NS)
     * on the session it opened. */
    if (!p->on_old)
        p->watching = false;
    if (!PQsendQuery(hl->conns[i], p->watching ? hl->watch_sql : probe_sql)) {
        probe_fail(hl, i, PGG_CLASS_CONNECTION, "health probe");
        return;
    }
    p->phase = PROBE_QUERY;
}

static void probe_connect(pgg_health *hl, int i)
{
    pgg_host *h = &hl->pool->hosts[i];
    probe *p = &hl->probes[i];
    PGconn *c = PQconnectStartParams(h->keys, h->vals, 0);

    hl->conns[i] = c;
    p->on_old = false;
    p->phase = PROBE_CONNECTING;
    if (!c || PQstatus(c) == CONNECTION_BAD) {
        /* Refused on the spot (loopback, nobody listening): still a
         * refused connect, which probe_fail records as such. */
        probe_fail(hl, i, PGG_CLASS_CONNECTION, "health connect");
        return;
    }
    pgg__link_verbose_startup(c);
    p->cst = PGRES_POLLING_WRITING;
}

static void probe_result(pgg_health *hl, int i, PGresult *r)
{
    probe *p = &hl->probes[i];

    if (p->got)
        return; /* one statement, one result; ignore anything after it */
    p->got = true;
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        p->role = strcmp(PQgetvalue(r, 0, 0), "t") == 0 ? PGG_ROLE_STANDBY
                                                        : PGG_ROLE_PRIMARY;
        p->have_lsn = !PQgetisnull(r, 0, 1) &&
                      pgg__lsn_parse(PQgetvalue(r, 0, 1), &p->lsn);
        if (PQnfields(r) > 2 && !PQgetisnull(r, 0, 2)) {
            unsigned blk;
            unsigned long long seg;

            if (sscanf(PQgetvalue(r, 0, 2), "%u %llu", &blk, &seg) == 2)
                pgg__vis_set_layout(hl->pool->vis, blk, seg);
        }
        p->cls = PGG_CLASS_SUCCESS;
        return;
    }
    {
        pgg_verdict v = pgg__classify_result(&hl->pool->cfg->classifier,
                                             PGG_END_RESULT, r, PGG_READ,
                                             false);
        p->cls = v.cls;
        pgg__link_error(&p->err, v.code, hl->conns[i], r,
                        hl->pool->hosts[i].name, "health probe");
    }
}

/*
 * Host i's probe has just connected to a host whose breaker was open or on
 * trial: calls are being refused there, and the first one let through
 * would have to connect too (behind everyone else's connects to a server
 * just back).  Give this session to the pool instead, and let the startup
 * report (in_hot_standby) stand for the probe's answer.  Returns whether
 * it did (not before PostgreSQL 14, which reports no in_hot_standby, nor
 * when the pool has an idle session there, no room, or an on-connect
 * hook).
 */
static bool probe_donate(pgg_health *hl, int i, int64_t now)
{
    probe *p = &hl->probes[i];
    PGconn *c = hl->conns[i];
    pgg_role role = pgg__link_reported_role(c);

    if (role == PGG_ROLE_UNKNOWN ||
        !pgg__host_adopt(&hl->pool->hosts[i], c, now, p->started, 1, false, false))
        return false;
    hl->conns[i] = NULL;
    p->phase = PROBE_IDLE;
    p->got = true;
    p->donated = true;
    p->role = role;
    p->have_lsn = false;
    p->cls = PGG_CLASS_SUCCESS;
    return true;
}

/* Advance host i's probe on socket events.  Returns true when it ended
 * (phase back to IDLE: p->cls says how). */
static bool probe_step(pgg_health *hl, int i, short revents)
{
    probe *p = &hl->probes[i];
    PGconn *c = hl->conns[i];

    if (p->phase == PROBE_CONNECTING) {
        p->cst = PQconnectPoll(c);
        if (p->cst == PGRES_POLLING_FAILED) {
            probe_fail(hl, i, PGG_CLASS_CONNECTION, "health connect");
            return true;
        }
        if (p->cst == PGRES_POLLING_OK) {
            if (PQsetnonblocking(c, 1) != 0) {
                probe_fail(hl, i, PGG_CLASS_CONNECTION, "health connect");
                return true;
            }
            pgg_breaker *b = &hl->pool->hosts[i].breaker;
            pgg_breaker_state was = pgg__breaker_state(b);
            bool check;
            int64_t now = pgg__now_ns();

            pgg__link_started(c);
            check = unchecked_standby(&hl->pool->hosts[i], c);
            if (check && now - p->started > hl->probe_timeout) {
                /* A connect slower than the probe's bound (held, a slow
                 * server): its query would not be answered within the
                 * bound either.  Back as any host, held from reads until
                 * a probe gets its replay position (hold.h). */
                (void)pgg__hold_set(&hl->pool->hosts[i].hold, false,
                                    "reached again, its replay position not "
                                    "checked yet (a slow server)");
                check = false;
            }
            /* A connection accepted is the host answering: an open breaker
             * closes, the first time the host comes back in a streak, or
             * else lets trial calls through now, while the probe's query
             * runs.  Not a standby to check (hold.h): its answer does, and
             * its session stays the probe's, for that query. */
            p->checking = check;
            if (!check && !pgg__breaker_host_back(b, now))
                (void)pgg__breaker_host_answered(b, now);
            if ((was == PGG_BREAKER_OPEN || was == PGG_BREAKER_HALF_OPEN) &&
                !check && probe_donate(hl, i, now))
                return true;
            probe_send(hl, i);
            return p->phase == PROBE_IDLE;
        }
        return false;
    }
    if ((revents & POLLOUT) && PQflush(c) < 0) {
        probe_fail(hl, i, PGG_CLASS_CONNECTION, "health probe");
        return true;
    }
    /* On failure libpq queues an error result for the lost connection,
     * which the loop below collects and classifies. */
    if (revents & (POLLIN | POLLERR | POLLHUP))
        (void)PQconsumeInput(c);
    while (!PQisBusy(c)) {
        PGresult *r = PQgetResult(c);

        if (r) {
            probe_result(hl, i, r);
            PQclear(r);
            continue;
        }
        if (!p->got) {
            probe_fail(hl, i, PGG_CLASS_CONNECTION, "health probe");
            return true;
        }
        p->phase = PROBE_IDLE;
        if (p->cls != PGG_CLASS_SUCCESS && !pgg__link_reusable(c)) {
            PQfinish(c);
            hl->conns[i] = NULL;
        }
        return true;
    }
    if (PQstatus(c) == CONNECTION_BAD) {
        probe_fail(hl, i, PGG_CLASS_CONNECTION, "health probe");
        return true;
    }
    return false;
}

/* ------------------------------------------------------------ schedule */

/* Something is wrong: a breaker open or on trial, or no primary known
 * where there was one (a pool of replicas alone is not an incident; a
 * write that finds no primary wakes the thread anyway). */
static bool incident(pgg_health *hl)
{
    const pgg_pool *pool = hl->pool;
    bool primary = false;

    for (int i = 0; i < pool->nhosts; i++) {
        const pgg_host *h = &pool->hosts[i];
        pgg_breaker_state st = pgg__breaker_state(&h->breaker);

        if (st == PGG_BREAKER_OPEN || st == PGG_BREAKER_HALF_OPEN)
            return true;
        /* Held back from reads, or to be checked: its catching up is seen
         * at the fast pace. */
        if (pgg__hold_on(&h->hold) || pgg__hold_suspected(&h->hold))
            return true;
        if (atomic_load(&h->role) == PGG_ROLE_PRIMARY)
            primary = true;
    }
    if (primary)
        hl->had_primary = true;
    return !primary && hl->had_primary;
}

/*
 * How soon after its last probe a host is probed again while failing calls
 * keep waking the thread.  A probe refused by nobody listening costs the
 * server nothing: ask every 2 ms, so that a server starting up is found
 * about as soon as by clients that connect on every call (libpq
 * multi-host).  One refused by the server itself (too many clients,
 * starting up) costs it a backend fork: every 5 ms, as calls do
 * (host.c).  Anything else (an answer that failed, a timeout) at the
 * incident cadence.
 */
#define DEMAND_CLOSED_NS (2 * PGG_NS_PER_MS)
#define DEMAND_REFUSED_NS (5 * PGG_NS_PER_MS)

/* Host i's next probe is a promotion watch (WATCH_SQL_FMT): writes found
 * no primary lately, and the host is a standby that answers (its breaker
 * closed: a watch's wait is no trial call's latency) and whose reads wait
 * for no probe (hold.h: the answer that checks its replay position comes
 * at once, not after a watch). */
static bool watch_wanted(pgg_health *hl, int i, int64_t now)
{
    pgg_host *h = &hl->pool->hosts[i];

    if (now >= atomic_load_explicit(&h->seek_primary_until_ns, memory_order_relaxed)) {
        hl->probes[i].watch_refused = false; /* the next outage asks again */
        return false;
    }
    return hl->watch_sql && !atomic_load_explicit(&hl->watch_off, memory_order_relaxed) &&
           !hl->probes[i].watch_refused &&
           atomic_load(&h->role) == PGG_ROLE_STANDBY &&
           pgg__breaker_state(&h->breaker) == PGG_BREAKER_CLOSED &&
           !pgg__hold_on(&h->hold) && !pgg__hold_suspected(&h->hold);
}

/* A watch waits on the server: the next one starts as soon as one
 * answers, but not more than once per this (a server answering at once,
 * whatever the reason, is not asked in a loop). */
#define WATCH_GAP_NS PGG_NS_PER_MS

static int64_t demand_gap(pgg_health *hl, int i, int64_t now)
{
    const probe *p = &hl->probes[i];
    int64_t gap = watch_wanted(hl, i, now) ? WATCH_GAP_NS
                  : p->refused_closed      ? DEMAND_CLOSED_NS
                  : p->refused_by_server   ? DEMAND_REFUSED_NS
                                           : hl->incident_min;

    return gap < hl->incident_min ? gap : hl->incident_min;
}

/* Bring every waiting probe forward to the fast cadence.  With restart,
 * the round under way starts over, so the next one counted holds what was
 * learnt since (a caller awaiting it had news: a write refused as
 * read-only); plain wakes, which failing calls send continually, must not
 * keep a round from ever completing. */
static void expedite(pgg_health *hl, int64_t now, bool restart)
{
    for (int i = 0; i < hl->pool->nhosts; i++) {
        probe *p = &hl->probes[i];
        int64_t soon = p->started + demand_gap(hl, i, now);

        if (restart)
            p->in_round = false;
        if (p->phase != PROBE_IDLE)
            continue;
        if (soon < now)
            soon = now;
        if (p->next > soon)
            p->next = soon;
        p->backoff = 0;
    }
}

/*
 * A call that got no answer (pgg__pool_note_silent): its statement, or its
 * connect, reached the call's deadline on the host with nothing from it.
 * That alone proves nothing about the host (a lock wait, a statement
 * longer than its deadline): it is one failure, as ever, toward
 * consecutive_failures.  A host that answers nothing at all is hung, and
 * waiting for those failures costs each caller a deadline apart (with the
 * defaults three rounds of them for two writers).  So the host is probed
 * now (at most once per health_incident_min_ms), and when neither the
 * call nor the probe got an answer for a whole health_probe_timeout_ms
 * counted from the call's silence (the probe itself waiting at least
 * two fifths of it, 200 ms by default: a loaded server answering a probe
 * in 150 ms passes), and no other call got an answer there meanwhile
 * either (verify_failed), the breaker opens (pgg__breaker_host_silent).
 * A probe answered in time changes nothing: a slow statement is the
 * caller's.  A call whose silence began before a probe's answer is not checked (the
 * host answered meanwhile), so a stream of slow statements sends at most
 * one probe per deadline.  Only while the breaker is closed (or
 * metrics-only: counted as the trip it would be).
 *
 * With the probe (on the health thread's session when it has one) goes one
 * spare connect (spares_start): on a host that answers it joins the pool
 * in a few ms; on a hung one it waits in the server's queue from the first
 * evidence on, ahead of every connect made later, and the moment the
 * server takes it the breaker closes (spare_step, pgg__breaker_host_back)
 * and the session serves the first call let through.
 */
static void spares_start(pgg_health *hl, int i, int want, bool warming, int64_t now);
static void warm(pgg_health *hl, int i, int64_t now);

/* Calls the host answered so far (successes, and ignored outcomes that
 * were answers: the host's own counters, whatever the breaker's mode).
 * Not every ignored outcome: a call cancelled by its caller, or one that
 * found no connection free (the usual case on a hung host with more
 * callers than connections), heard nothing from the host. */
static uint64_t host_answers(const pgg_host *h)
{
    return atomic_load(&h->successes) + atomic_load(&h->ignored_answers);
}

static void verify_arm(pgg_health *hl, int i)
{
    probe *p = &hl->probes[i];
    int64_t by = p->silent_since + hl->probe_timeout;
    int64_t least = p->started + hl->probe_timeout * 2 / 5;

    if (by < least)
        by = least;
    if (by < p->deadline)
        p->deadline = by;
    if (!p->verifying)
        p->verify_answers = host_answers(&hl->pool->hosts[i]);
    p->verifying = true;
    p->silent_since = 0;
}

/* A breaker the silence rule applies to: closed, or metrics-only, where
 * the opening it would make is counted (trips_suppressed). */
static bool silence_checked(pgg_breaker_state st)
{
    return st == PGG_BREAKER_CLOSED || st == PGG_BREAKER_METRICS_ONLY;
}

static void verify_take(pgg_health *hl, int i, int64_t now)
{
    pgg_host *h = &hl->pool->hosts[i];
    probe *p = &hl->probes[i];
    int64_t since, soon;

    if (!atomic_load_explicit(&h->silent_since_ns, memory_order_relaxed))
        return;
    since = atomic_exchange(&h->silent_since_ns, 0);
    if (!since || since < p->answered_at || atomic_load(&hl->stopping) ||
        !silence_checked(pgg__breaker_state(&h->breaker)))
        return;
    if (!(h->on_connect && (h->on_connect->sql || h->on_connect->fn)))
        spares_start(hl, i, 1, false, now);
    if (!p->silent_since || since < p->silent_since)
        p->silent_since = since;
    if (p->phase != PROBE_IDLE) {
        verify_arm(hl, i);
        return;
    }
    soon = p->started + hl->incident_min;
    if (soon < now)
        soon = now;
    if (p->next > soon)
        p->next = soon;
}

/* Host i's verifying probe reached its bound unanswered.  Silent only if
 * no call got an answer there meanwhile either: a host that answers calls
 * is slow to answer this probe (a loaded server, its postmaster slow to
 * take a new session), not hung; its timeouts count as ever. */
static void verify_failed(pgg_health *hl, int i, int64_t now)
{
    pgg_host *h = &hl->pool->hosts[i];

    hl->probes[i].verifying = false;
    if (host_answers(h) != hl->probes[i].verify_answers)
        return;
    (void)pgg__breaker_host_silent(&h->breaker, now);
}

/* Host i answered at now outside its probes (a spare's connect
 * completed): a silence a call noted before that is answered (verify_take
 * drops it), and a verification under way ends without opening. */
static void answered(pgg_health *hl, int i, int64_t now)
{
    probe *p = &hl->probes[i];

    if (p->answered_at < now)
        p->answered_at = now;
    p->verifying = false;
}

/* Start host i's probe.  Returns false when none started (forced open). */
static bool probe_start(pgg_health *hl, int i, int64_t now)
{
    pgg_host *h = &hl->pool->hosts[i];
    probe *p = &hl->probes[i];
    PGconn *c = hl->conns[i];
    pgg_breaker_state st = pgg__breaker_state(&h->breaker);
    probe keep = *p;

    memset(p, 0, sizeof *p);
    p->next = keep.next;
    p->backoff = keep.backoff;
    p->in_round = keep.in_round;
    p->replay_lsn = keep.replay_lsn;
    p->replay_at = keep.replay_at;
    p->held_told = keep.held_told;
    p->silent_since = keep.silent_since;
    p->answered_at = keep.answered_at;
    p->starting_since = keep.starting_since;
    p->watch_refused = keep.watch_refused;
    p->hook_refused = keep.hook_refused;
    /* Refused by nobody listening, or by a server starting up (57P03;
     * also said while shutting down, which the next refusal shows). */
    p->prev_refused = keep.refused_closed ||
                      (keep.refused_by_server && strcmp(keep.err.sqlstate, "57P03") == 0);
    p->started = now;
    p->deadline = now + hl->probe_timeout;
    p->watching = watch_wanted(hl, i, now);
    /* Forced open means the operator wants the host left alone. */
    if (st == PGG_BREAKER_FORCED_OPEN) {
        p->next = now + hl->interval;
        p->in_round = true;
        return false;
    }
    if (p->silent_since && silence_checked(st))
        verify_arm(hl, i);
    p->silent_since = 0;
    /* A probe of ours is a call: half-open, one of the trial calls, so a
     * breaker can close with no traffic at all; closed, a watch whose
     * timeout counts (a hung host is found by probes too, not only by the
     * reads it delays).  An open host is probed without one: one probe
     * per cadence tells when it is back long before a backed-off open time
     * ends. */
    if (st != PGG_BREAKER_OPEN &&
        pgg__breaker_allow(&h->breaker, now, &p->ticket))
        p->ticketed = st == PGG_BREAKER_HALF_OPEN ? TICKET_TRIAL : TICKET_WATCH;
    /* The session sat idle since the last probe: drain what the server
     * sent meanwhile and notice a dead one before using it. */
    if (c && !pgg__link_alive(c)) {
        PQfinish(c);
        hl->conns[i] = c = NULL;
        hold(hl, i, PGG_SUSPECT_ENDED,
             "its health session was ended by the server (a restart?)");
    }
    if (c) {
        p->on_old = true;
        probe_send(hl, i);
    } else {
        probe_connect(hl, i);
    }
    return true;
}

static void count_round(pgg_health *hl)
{
    pgg_pool *pool = hl->pool;

    for (int i = 0; i < pool->nhosts; i++) {
        if (!hl->probes[i].in_round)
            return;
    }
    for (int i = 0; i < pool->nhosts; i++)
        hl->probes[i].in_round = false;
    pthread_mutex_lock(&hl->mu);
    atomic_fetch_add(&hl->rounds, 1);
    pthread_cond_broadcast(&hl->cv);
    pthread_mutex_unlock(&hl->mu);
}

static void record_ticket(pgg_health *hl, pgg_host *h, probe *p, int64_t now)
{
    switch (p->ticketed) {
    case TICKET_TRIAL:
        pgg__pool_record(hl->pool, h, p->ticket, p->cls, p->started, now);
        break;
    case TICKET_WATCH:
        /* Only what a call would have met too: a host that does not answer
         * in time.  A refused connect is found by calls at once. */
        pgg__breaker_record(&h->breaker, p->ticket,
                            p->cls == PGG_CLASS_TIMEOUT ? PGG_OUTCOME_FAILURE
                                                        : PGG_OUTCOME_IGNORED,
                            now - p->started, now);
        break;
    case TICKET_NONE:
        break;
    }
}

/* A standby's lag against the primary's position, both as last probed. */
static void set_lag(pgg_health *hl, int i, int64_t now)
{
    probe *p = &hl->probes[i];
    pgg_host *h = &hl->pool->hosts[i];

    /* Both positions at most an interval or two old; without them the
     * last figure stands. */
    if (!hl->primary_lsn_at || !p->replay_at ||
        now - hl->primary_lsn_at > 2 * hl->interval + hl->probe_timeout ||
        now - p->replay_at > 2 * hl->interval + hl->probe_timeout)
        return;
    pgg__hold_lag(&h->hold, p->replay_lsn >= hl->primary_lsn
                                ? 0
                                : (int64_t)(hl->primary_lsn - p->replay_lsn));
}

static void probe_answered(pgg_health *hl, int i, int64_t now)
{
    pgg_pool *pool = hl->pool;
    pgg_host *h = &pool->hosts[i];
    probe *p = &hl->probes[i];

    p->answered_at = now;
    pgg__pool_set_role(pool, h, p->role, "health probe");
    /* An open host answered: closed now the first time it comes back in a
     * streak; else half-open now, and this probe, a real round trip that
     * just succeeded, is its first trial call. */
    (void)pgg__breaker_host_back(&h->breaker, now);
    if (p->ticketed == TICKET_NONE &&
        (pgg__breaker_host_answered(&h->breaker, now) ||
         pgg__breaker_state(&h->breaker) == PGG_BREAKER_HALF_OPEN)) {
        pgg_ticket t;
        if (pgg__breaker_allow(&h->breaker, now, &t))
            pgg__pool_record(pool, h, t, PGG_CLASS_SUCCESS, p->started, now);
    }
    /* A donated session ran no query: the positions (and the lag they
     * give) wait for the next probe, which comes at the incident pace. */
    if (p->donated)
        goto reached;
    /* Probes no longer run in lockstep: whichever of a standby and the
     * primary answers last measures the standby's lag, each against the
     * other's latest position. */
    if (p->role == PGG_ROLE_STANDBY && p->have_lsn) {
        /* Behind what it reported before (a restart): held back from
         * reads; caught up: used again (hold.h). */
        (void)pgg__hold_probed(&h->hold, p->lsn, p->seen, now);
        pgg__vis_note_replayed(pool->vis, i, p->lsn, true);
    }
    if (p->role == PGG_ROLE_PRIMARY && p->have_lsn) {
        hl->primary_lsn = p->lsn;
        hl->primary_lsn_at = now;
        for (int k = 0; k < pool->nhosts; k++) {
            if (k != i)
                (void)pgg__hold_primary_at(&pool->hosts[k].hold, p->lsn,
                                           p->started);
            if (atomic_load(&pool->hosts[k].role) == PGG_ROLE_STANDBY)
                set_lag(hl, k, now);
        }
    } else if (p->role == PGG_ROLE_STANDBY) {
        p->replay_lsn = p->have_lsn ? p->lsn : 0;
        p->replay_at = p->have_lsn ? now : 0;
        if (!p->have_lsn)
            pgg__hold_lag(&h->hold, -1);
        else
            set_lag(hl, i, now);
    }
reached:
    if (p->role != PGG_ROLE_UNKNOWN &&
        atomic_load_explicit(&h->suspect_until_ns, memory_order_relaxed))
        atomic_store_explicit(&h->suspect_until_ns, 0, memory_order_relaxed);
}

/*
 * Starting, and still so.  A server starting up takes connections on its
 * port before it takes sessions, and says so to each one meanwhile
 * (57P03, "the database system is starting up"): a fast restart for tens
 * of ms, longer under load.  A probe that hears it while the host is
 * found starting (mark_starting) leaves it starting: the calls waiting for
 * the server keep waiting, within their deadlines, and are served when it
 * takes sessions; the next probe asks at once.  Before, that answer ended
 * their wait and they failed with PGG_EOPEN just before the server was up
 * (tests/bench/faults, restart-all: the waiting call of every thread, in
 * most rounds).  For a probe bound at most since the host was found
 * starting: a server that says it is starting up longer is in a long
 * recovery, and calls are refused at once again until it answers
 * otherwise (as a connect held past its bound means a stuck server,
 * probe_hold).
 */
static bool starting_too_long(const pgg_health *hl, const probe *p, int64_t now)
{
    return p->starting_since && now - p->starting_since >= hl->probe_timeout;
}

static bool still_starting(const pgg_health *hl, int i, int64_t now)
{
    const probe *p = &hl->probes[i];

    return p->refused_by_server && strcmp(p->err.sqlstate, "57P03") == 0 &&
           atomic_load(&hl->pool->hosts[i].starting) &&
           !starting_too_long(hl, p, now) && !atomic_load(&hl->stopping);
}

/*
 * Host i's probe reached its deadline while connecting.  When the host's
 * breaker is open (the host is marked: nothing more to learn from a
 * timeout) and its kernel accepted the connection (the startup packet
 * waits in the server's queue: a stopped or overloaded postmaster), keep
 * waiting: a new connect would queue behind every connection the server
 * will get to first, among them this one, abandoned.  It completes the
 * moment the server takes it, and the host answers then.  For at most
 * HOLD_BOUNDS probe bounds: a connection something between us dropped
 * silently would never complete.  Returns whether it was kept (counted as
 * a probe for the rounds).
 */
#define HOLD_BOUNDS 10

static bool probe_hold(pgg_health *hl, int i, int64_t now)
{
    probe *p = &hl->probes[i];
    ConnStatusType st;

    if (p->phase != PROBE_CONNECTING || atomic_load(&hl->stopping) ||
        now - p->started >= HOLD_BOUNDS * hl->probe_timeout ||
        pgg__breaker_state(&hl->pool->hosts[i].breaker) != PGG_BREAKER_OPEN)
        return false;
    st = PQstatus(hl->conns[i]);
    if (st == CONNECTION_STARTED || st == CONNECTION_MADE || st == CONNECTION_BAD)
        return false; /* no answer from its kernel: the network; start over */
    p->deadline = now + hl->probe_timeout;
    p->prev_refused = false; /* waiting that long: stuck, not starting */
    /* starting_since stays: a "starting up" that comes after the hold is
     * the same start, past its bound already, not a new one (mark_starting
     * would otherwise mark the host again at every probe, each held in
     * turn, for as long as the server is slower than the bound to say it
     * is starting up). */
    pgg__host_set_starting(&hl->pool->hosts[i], false);
    p->in_round = true;
    count_round(hl);
    return true;
}

/* Host i's probe ended: learn from it and schedule the next one. */
static void probe_end(pgg_health *hl, int i, int64_t now)
{
    pgg_pool *pool = hl->pool;
    pgg_host *h = &pool->hosts[i];
    probe *p = &hl->probes[i];
    bool ok = p->cls == PGG_CLASS_SUCCESS && p->role != PGG_ROLE_UNKNOWN;
    bool starting;
    pgg_breaker_state st;

    /* The health session itself died (terminated, a restart since): that
     * says nothing of the host.  A new connection, within this probe's
     * bound, does. */
    if (!ok && p->on_old && !p->replaced && pgg__host_failure(p->cls) &&
        p->cls != PGG_CLASS_TIMEOUT && now < p->deadline &&
        !atomic_load(&hl->stopping)) {
        PQfinish(hl->conns[i]);
        hl->conns[i] = NULL;
        p->replaced = true;
        hold(hl, i, PGG_SUSPECT_ENDED,
             "its health session was ended by the server (a restart?)");
        p->got = false;
        pgg__error_reset(&p->err);
        probe_connect(hl, i);
        if (p->phase != PROBE_IDLE)
            return;
    }
    /* The server answered the promotion watch with an error of its own
     * (pg_sleep not granted to the role, a recovery conflict, ...): that
     * says nothing of the host, whose role the probe's plain query asks
     * now, on the same session, within this probe's bound.  Taken for the
     * probe's answer, the standby was shown of unknown role and, as such,
     * sent writes, then watched and refused again: once per cadence for
     * as long as writes found no primary. */
    if (!ok && p->watching && p->got && hl->conns[i] && !pgg__host_failure(p->cls) &&
        now < p->deadline && !atomic_load(&hl->stopping)) {
        p->watching = false;
        p->watch_refused = true;
        p->got = false;
        pgg__error_reset(&p->err);
        probe_send(hl, i);
        if (p->phase != PROBE_IDLE)
            return;
    }
    record_ticket(hl, h, p, now);
    starting = still_starting(hl, i, now);
    /* A standby whose replay position was to be checked (hold.h) has its
     * breaker closed by this answer, not by its connect, and the calls
     * waiting for it must find it so: answered first. */
    if (ok && p->checking)
        probe_answered(hl, i, now);
    if (!starting) {
        /* Answered (the breaker closed or on trial) or not: waiting calls
         * learn which.  Said "starting up" past the bound: not again
         * until the server answers otherwise. */
        if (ok || !p->refused_by_server || strcmp(p->err.sqlstate, "57P03") != 0)
            p->starting_since = 0;
        pgg__host_set_starting(h, false);
    }
    if (ok && !p->checking) {
        probe_answered(hl, i, now);
    } else if (!ok) {
        pgg__host_note_error(h, &p->err);
        /* A host we cannot reach has no role we can vouch for: a dead
         * old primary must not go on looking like a second primary.  One
         * that answered "too many clients" is reached, and running: what
         * it was it still is, as far as anyone can tell. */
        if (strcmp(p->err.sqlstate, "53300") != 0)
            pgg__pool_set_role(pool, h, PGG_ROLE_UNKNOWN, "unreachable");
        /* Refused or lost, or starting up: it may come back behind what
         * it reported.  Not a timeout (a slow or hung server keeps what it
         * replayed; a restart after it ends its sessions, or shows in the
         * next probe's answer), nor "too many clients" (running). */
        if ((p->cls == PGG_CLASS_CONNECTION ||
             p->cls == PGG_CLASS_UNAVAILABLE) &&
            strcmp(p->err.sqlstate, "53300") != 0)
            hold(hl, i, PGG_SUSPECT_DOWN, "unreachable or starting up (a restart?)");
    }
    held_tell(hl, i);
    pgg__host_trim(h, now, false);
    st = pgg__breaker_state(&h->breaker);
    if (!ok || incident(hl)) {
        /* Fast while something is wrong, backing off, but a breaker on
         * trial is judged at the fast pace: its probes are trial calls. */
        p->backoff = !p->backoff || st == PGG_BREAKER_HALF_OPEN
                         ? hl->incident_min
                         : p->backoff * 2;
        if (p->backoff > hl->incident_max)
            p->backoff = hl->incident_max;
        p->next = p->started + p->backoff;
    } else {
        p->backoff = 0;
        /* Faster while reads wait for a replica to replay their position. */
        p->next = p->started + pgg__vis_health_interval(pool->vis, hl->interval);
    }
    /* Still starting: the waiting calls' server is asked again at once
     * (its answer costs it a backend fork, as a call's would). */
    if (starting && p->next > p->started + DEMAND_REFUSED_NS)
        p->next = p->started + DEMAND_REFUSED_NS;
    /* A standby while writes find no primary: watched again at once (the
     * watch waits on the server; WATCH_SQL_FMT). */
    if (ok && watch_wanted(hl, i, now) && p->next > p->started + WATCH_GAP_NS)
        p->next = p->started + WATCH_GAP_NS;
    if (p->next < now)
        p->next = now;
    p->in_round = true;
    /* Warm only a host this probe reached and whose breaker lets traffic
     * in (disabled and metrics-only count as closed): a host we cannot
     * reach would make each attempt wait out its bound. */
    if (ok && h->min_idle > 0 && st != PGG_BREAKER_OPEN &&
        st != PGG_BREAKER_FORCED_OPEN && st != PGG_BREAKER_HALF_OPEN &&
        !atomic_load(&hl->stopping))
        warm(hl, i, now);
    count_round(hl);
}

/* ------------------------------------------------------------- spares */

/* The connect reached the server's queue: its kernel took it, and the
 * server has not answered yet (stopped, starting, busy). */
static bool queued(PGconn *c)
{
    ConnStatusType st = PQstatus(c);

    return st != CONNECTION_OK && st != CONNECTION_BAD &&
           st != CONNECTION_STARTED && st != CONNECTION_MADE;
}

/* Host i's spare slots with a connect on its way, or refused moments ago
 * (retry_at). */
static int spares_taken(const pgg_health *hl, int i, int64_t now)
{
    const spare *sps = &hl->spares[i * SPARES];
    int taken = 0;

    for (int s = 0; s < SPARES; s++)
        taken += sps[s].conn != NULL || now < sps[s].retry_at;
    return taken;
}

/*
 * Warm-up to pool_min_idle, after a probe that reached host i.  As spare
 * connects, stepped by this thread's poll with everything else and
 * adopted as they complete: a blocking connect here (pgg__host_warm) held
 * up every other thing this thread does for as long as it took (up to
 * health_probe_timeout_ms each), among them the connects event loops'
 * calls wait for (host.c, "Asked connects": loop14).  A host whose
 * on-connect hook is SQL only runs it on each spare before adoption
 * (spare_hook, non-blocking).  One with a hook callback still warms
 * blocking: the callback gets a connection it may use as it likes (event
 * loops cannot use such a pool: async.c refuses it).
 */
static void warm(pgg_health *hl, int i, int64_t now)
{
    pgg_host *h = &hl->pool->hosts[i];
    int want;

    if (h->on_connect && h->on_connect->fn) {
        pgg__host_warm(h, pgg__now_ns() + hl->probe_timeout);
        return;
    }
    want = pgg__host_warm_wanted(h);
    /* A hook that failed on the last spare fails on each (its SQL, the
     * role's rights): started pool_min_idle at a time, up to SPARES
     * sessions forked and refused at every probe, every incident_min_ms
     * while any host is in an incident, where the blocking warm-up
     * stopped at its first failure.  One at a time until one passes. */
    if (want > 0 && hl->probes[i].hook_refused) {
        if (spares_taken(hl, i, now) > 0)
            return;
        want = 1;
    }
    if (want > 0)
        spares_start(hl, i, spares_taken(hl, i, now) + want, true, now);
}

/*
 * Spare connects of host i on their way, up to `want` of them (at most
 * SPARES and pool_max - 1; pool_max for a warm-up to pool_min_idle, which
 * pgg__host_warm_wanted bounds by the room left).  A slot whose connect
 * was refused moments ago counts as taken until its retry time: a
 * refusing server is not asked again at once from another slot.
 */
static void spares_start(pgg_health *hl, int i, int want, bool warming, int64_t now)
{
    pgg_host *h = &hl->pool->hosts[i];
    spare *sps = &hl->spares[i * SPARES];
    int taken = spares_taken(hl, i, now);

    if (want > SPARES)
        want = SPARES;
    if (want > h->max - !warming)
        want = h->max - !warming;
    for (int s = 0; s < SPARES && taken < want; s++) {
        spare *sp = &sps[s];
        PGconn *c;

        if (sp->conn || now < sp->retry_at)
            continue;
        taken++;
        c = PQconnectStartParams(h->keys, h->vals, 0);
        if (!c || PQstatus(c) == CONNECTION_BAD) {
            PQfinish(c);
            sp->retry_at = now + DEMAND_REFUSED_NS;
            continue;
        }
        pgg__link_verbose_startup(c);
        pgg__host_spares(h, 1);
        sp->conn = c;
        sp->cst = PGRES_POLLING_WRITING;
        sp->started = now;
        /* Given up after as long as a held probe: a connection dropped
         * silently on the way would never complete. */
        sp->end = now + HOLD_BOUNDS * hl->probe_timeout;
        sp->handed = false;
        sp->hooking = false;
    }
}

/*
 * Connects callers handed on to host i (host.c, "Handed connects") become
 * spares, each bounded by its own connect_timeout_ms.  Taken before the
 * silence their callers noted (verify_take), whose one spare they are.
 * With every slot taken, one is closed: at most SPARES connects of ours
 * wait at a host that slow.
 */
static void spares_handed(pgg_health *hl, int i)
{
    pgg_host *h = &hl->pool->hosts[i];
    spare *sps = &hl->spares[i * SPARES];
    pgg_handed *c = pgg__host_take_handed(h);

    while (c) {
        pgg_handed *next = c->next;
        int s = 0;

        while (s < SPARES && sps[s].conn)
            s++;
        if (s == SPARES || atomic_load(&hl->stopping)) {
            PQfinish(c->conn);
            pgg__host_spares(h, -1);
        } else {
            sps[s].conn = c->conn;
            sps[s].cst = c->events == POLLIN ? PGRES_POLLING_READING
                                             : PGRES_POLLING_WRITING;
            sps[s].started = c->started;
            sps[s].end = c->started + h->connect_timeout_ns;
            sps[s].retry_at = 0;
            sps[s].handed = true;
        }
        free(c);
        c = next;
    }
}

/* A handed connect of host i, started at `started`, ended without a
 * session (e: why): a connect that failed, the host's failure as a
 * caller's would have been, unless the server refused it for a reason of
 * its own (too many clients, starting: an answer, classify.h). */
static void handed_failed(pgg_health *hl, int i, int64_t started,
                          const pgg_error *e, int64_t now)
{
    pgg_host *h = &hl->pool->hosts[i];
    pgg_verdict v;
    pgg_ticket t;

    v = pgg__classify_connect(&hl->pool->cfg->classifier,
                              e->sqlstate[0] ? e->sqlstate : NULL);
    /* Refused at startup: the host answered (the silence rule), as
     * pgg__pool_take_failed counts a caller's refused connect. */
    if (v.cls == PGG_CLASS_IGNORED)
        atomic_fetch_add_explicit(&h->ignored_answers, 1,
                                  memory_order_relaxed);
    if (!pgg__host_failure(v.cls))
        return;
    atomic_fetch_add(&h->connect_failures, 1);
    pgg__host_note_error(h, e);
    if (pgg__breaker_allow(&h->breaker, now, &t))
        pgg__pool_record(hl->pool, h, t, v.cls, started, now);
}

/* Handed spare sp of host i failed (libpq said why) or ran out its own
 * bound (timed_out). */
static void handed_spare_failed(pgg_health *hl, int i, const spare *sp,
                                bool timed_out, int64_t now)
{
    pgg_error e;

    pgg__error_reset(&e);
    if (timed_out)
        pgg__error_set(&e, PGG_ETIMEDOUT, NULL, hl->pool->hosts[i].name,
                       "connect: deadline exceeded (connect_timeout_ms, "
                       "finished for a call that gave up)");
    else
        pgg__link_error(&e, PGG_ECONNECT, sp->conn, NULL,
                        hl->pool->hosts[i].name, "connect");
    handed_failed(hl, i, sp->started, &e, now);
}

/*
 * Calls are being refused for host i (its breaker open or on trial, failing
 * calls waking this thread) and the probe's connect waits in the server's
 * queue: the server is about to take sessions.  Queue a few more now, so
 * that the first calls let through find sessions ready, instead of each
 * connecting then, behind every connect other clients queued meanwhile
 * (clients that connect on every call have one queued per thread).  Each
 * goes to the pool when it completes.
 */
static void spares_tend(pgg_health *hl, int i, int64_t now)
{
    pgg_host *h = &hl->pool->hosts[i];
    probe *p = &hl->probes[i];
    pgg_breaker_state st = pgg__breaker_state(&h->breaker);
    int want = atomic_load_explicit(&h->n_back_waiting, memory_order_relaxed);
    int refused = hl->refused[i].recent;

    /* Demand: calls refused lately (they wake this thread), or waiting. */
    if ((st != PGG_BREAKER_OPEN && st != PGG_BREAKER_HALF_OPEN) ||
        p->phase != PROBE_CONNECTING || !queued(hl->conns[i]) ||
        (now - hl->demand_at > hl->incident_max && want == 0) ||
        atomic_load(&hl->stopping) ||
        (h->on_connect && (h->on_connect->sql || h->on_connect->fn)))
        return;
    if (want < refused)
        want = refused;
    if (want < SPARES_MIN)
        want = SPARES_MIN;
    spares_start(hl, i, want, false, now);
}

/*
 * A call found a pooled session ended by its server (pool.c's settle sets
 * the host's ended_seen, and closes that host's idle sessions): the
 * servers may have ended more of them (pg_terminate_backend of every
 * session, here or on the other servers).  Every host's idle sessions are
 * looked at now, without a round trip; those found dead are closed, and
 * those in recent use replaced (spares_replace), before a call sends a
 * statement on one (a write that meets a dead session fails: it cannot be
 * known not to have run).
 */
static void sweep(pgg_health *hl, int64_t now)
{
    pgg_pool *pool = hl->pool;
    bool seen = false;

    for (int i = 0; i < pool->nhosts; i++)
        if (atomic_load_explicit(&pool->hosts[i].ended_seen, memory_order_relaxed))
            seen |= atomic_exchange(&pool->hosts[i].ended_seen, false);
    if (!seen || atomic_load(&hl->stopping))
        return;
    for (int i = 0; i < pool->nhosts; i++) {
        pgg_host *h = &pool->hosts[i];
        int lost = pgg__host_drop_dead(h, now, PGG_LOST_RECENT_NS, INT64_MIN);

        /* Its server may be ending sessions too, milliseconds apart: those
         * kept here are looked at again when lent. */
        pgg__host_look_until(h, now + PGG_LOST_RECENT_NS);
        if (lost > 0)
            atomic_fetch_add(&h->n_lost, lost);
    }
}

/*
 * Sessions of host i that its server ended (pool.c's settle: a pooled
 * session found closed by the server, pg_terminate_backend of many, and
 * its idle siblings closed with it) while its breaker lets calls in: their
 * callers come back for them at their own pace (a write that failed on one
 * is not retried; a caller between two calls does not know yet), and would
 * each connect then.  Their replacements start now, so that the first of
 * them find a session ready or on its way (a borrower waits for a spare
 * rather than queue a connect behind it).  A server going down refuses
 * them (no record: a spare is not a call).
 */
static void spares_replace(pgg_health *hl, int i, int64_t now)
{
    pgg_host *h = &hl->pool->hosts[i];
    pgg_breaker_state st;
    int lost;

    if (!atomic_load_explicit(&h->n_lost, memory_order_relaxed))
        return;
    lost = atomic_exchange(&h->n_lost, 0);
    st = pgg__breaker_state(&h->breaker);
    if (st == PGG_BREAKER_OPEN || st == PGG_BREAKER_FORCED_OPEN ||
        st == PGG_BREAKER_HALF_OPEN || atomic_load(&hl->stopping) ||
        (h->on_connect && (h->on_connect->sql || h->on_connect->fn)))
        return;
    spares_start(hl, i, spares_taken(hl, i, now) + lost, false, now);
}

/*
 * Host i's port refused the last probe (nobody listening, or the server
 * said it was starting up) and now took this one, which waits for the
 * server: the server is starting.  Calls refused
 * by its open breaker wait for it meanwhile (pgg__host_await_back), until
 * this probe ends one way or the other.  A probe kept waiting past its
 * bound (probe_hold) means a stuck server instead: calls are refused at
 * once again.
 */
static void mark_starting(pgg_health *hl, int i, int64_t now)
{
    probe *p = &hl->probes[i];
    pgg_host *h = &hl->pool->hosts[i];

    if (p->phase == PROBE_CONNECTING && p->prev_refused && queued(hl->conns[i]) &&
        pgg__breaker_state(&h->breaker) == PGG_BREAKER_OPEN &&
        !starting_too_long(hl, p, now)) {
        if (!p->starting_since)
            p->starting_since = now;
        pgg__host_set_starting(h, true);
        /* Waiting for it is for a read no other host can serve: fresh
         * reads try the others first (call.c, suspects_last), until the
         * probe's bound, when this loop looks again (the host answering
         * ends it sooner). */
        atomic_store_explicit(&h->suspect_until_ns, p->deadline,
                              memory_order_relaxed);
    }
}

static void spare_drop(pgg_host *h, spare *sp, int64_t retry_at)
{
    /* Its hook's statement may still run: cancelled from a worker. */
    if (sp->hooking)
        pgg__host_hook_failed(h, sp->conn, PGG_ETIMEDOUT);
    else
        PQfinish(sp->conn);
    sp->hooking = false;
    sp->conn = NULL;
    sp->retry_at = retry_at;
    pgg__host_spares(h, -1);
}

/* Connect c of host i (started then) completed, set up as a pooled
 * session (non-blocking, pgg__link_started): the host answered; into the
 * idle list with its role.  False: not taken, c still the caller's. */
static bool spare_adopt(pgg_health *hl, int i, PGconn *c, int64_t started,
                        bool handed, bool hooked, int64_t now)
{
    pgg_host *h = &hl->pool->hosts[i];
    pgg_role role;

    /* The host took a session: an answer, which a silence noted since
     * the connect's start (a call cut while it waited) must not outlast
     * (verify_take, verify_failed). */
    answered(hl, i, now);
    /* Not a standby to check (hold.h): the probe's answer closes it. */
    if (!unchecked_standby(h, c) && !pgg__breaker_host_back(&h->breaker, now))
        (void)pgg__breaker_host_answered(&h->breaker, now);
    role = pgg__link_reported_role(c);
    if (role == PGG_ROLE_UNKNOWN ||
        !pgg__host_adopt(h, c, now, started,
                         h->min_idle > SPARES + 1 ? h->min_idle : SPARES + 1, handed,
                         hooked))
        return false;
    pgg__pool_set_role(hl->pool, h, role, "reported by the server");
    return true;
}

/* Spare sp of host i went into the pool. */
static void spare_adopted(pgg_health *hl, int i, spare *sp)
{
    pgg_host *h = &hl->pool->hosts[i];

    sp->conn = NULL;
    pgg__host_spares(h, -1);
    /* The breaker let traffic in again: calls waiting for the starting
     * server go now, to this session, not when the probe ends; fresh
     * reads no longer go elsewhere first. */
    if (pgg__breaker_state(&h->breaker) != PGG_BREAKER_OPEN) {
        hl->probes[i].starting_since = 0;
        pgg__host_set_starting(h, false);
        atomic_store_explicit(&h->suspect_until_ns, 0, memory_order_relaxed);
    }
}

/*
 * The on-connect hook's SQL on a warm-up's spare (a hook with a callback
 * warms blocking: warm), sent and answered without waiting, as the loop
 * runs it (async.c): a blocking hook here held up every event loop's
 * connects, which this thread steps.  Returns whether the spare is still
 * on its way; false: adopted or dropped.
 */
static bool spare_hook(pgg_health *hl, int i, spare *sp, int64_t now)
{
    pgg_host *h = &hl->pool->hosts[i];
    PGconn *c = sp->conn;
    int flushed;

    if (!sp->hooking) {
        bool other;
        const char *sql = pgg__host_hook_sql(h, &other);

        if (!sql || other || !PQsendQuery(c, sql)) {
            spare_drop(h, sp, now + DEMAND_REFUSED_NS);
            return false;
        }
        sp->hooking = true;
    } else if (!PQconsumeInput(c)) {
        spare_drop(h, sp, now + DEMAND_REFUSED_NS);
        return false;
    }
    flushed = PQflush(c);
    if (flushed < 0) {
        spare_drop(h, sp, now + DEMAND_REFUSED_NS);
        return false;
    }
    sp->cst = flushed ? PGRES_POLLING_WRITING : PGRES_POLLING_READING;
    while (!PQisBusy(c)) {
        PGresult *res = PQgetResult(c);
        bool host_fault;
        int rc;

        if (!res)
            break;
        rc = pgg__host_hook_sql_done(h, res, PGG_END_RESULT, &host_fault, NULL);
        PQclear(res);
        if (rc != PGG_OK) {
            /* Refused by a healthy server or not: this session is not
             * lent; the next warm-up tries again later, with one spare. */
            hl->probes[i].hook_refused = true;
            sp->hooking = false;
            pgg__host_hook_failed(h, c, rc);
            sp->conn = NULL;
            sp->retry_at = now + DEMAND_REFUSED_NS;
            pgg__host_spares(h, -1);
            return false;
        }
    }
    if (PQisBusy(c) || flushed)
        return true;
    sp->hooking = false;
    if (pgg__host_hook_usable(h, c, NULL) != PGG_OK) {
        hl->probes[i].hook_refused = true;
        spare_drop(h, sp, now);
        return false;
    }
    hl->probes[i].hook_refused = false;
    if (!spare_adopt(hl, i, c, sp->started, sp->handed, true, now)) {
        spare_drop(h, sp, now);
        return false;
    }
    spare_adopted(hl, i, sp);
    return false;
}

/* Advance spare k (host i) on socket events. */
static void spare_step(pgg_health *hl, int i, int k)
{
    spare *sp = &hl->spares[k];
    pgg_host *h = &hl->pool->hosts[i];
    PGconn *c = sp->conn;
    int64_t now;

    if (sp->hooking) {
        (void)spare_hook(hl, i, sp, pgg__now_ns());
        return;
    }
    sp->cst = PQconnectPoll(c);
    if (sp->cst == PGRES_POLLING_FAILED) {
        now = pgg__now_ns();
        if (sp->handed)
            handed_spare_failed(hl, i, sp, false, now);
        spare_drop(h, sp, now + DEMAND_REFUSED_NS);
        return;
    }
    if (sp->cst != PGRES_POLLING_OK)
        return;
    now = pgg__now_ns();
    if (PQsetnonblocking(c, 1) != 0) {
        answered(hl, i, now);
        spare_drop(h, sp, now);
        return;
    }
    pgg__link_started(c);
    if (h->on_connect && h->on_connect->sql) {
        (void)spare_hook(hl, i, sp, now);
        return;
    }
    if (!spare_adopt(hl, i, c, sp->started, sp->handed, false, now)) {
        spare_drop(h, sp, now);
        return;
    }
    spare_adopted(hl, i, sp);
}

/* ------------------------------------------------------ asked connects */

/* Ask a of host i ended here: the loop told (DONE), or, when its call
 * gave it up meanwhile, disposed of as a handed connect (CUT: adopted, or
 * the host's failure) or closed (DROP).  a->conn: the session, or NULL
 * with a->err set.  The health thread's reference is dropped. */
static void asked_end(pgg_health *hl, int i, pgg_asked *a, int64_t now)
{
    pgg_host *h = &hl->pool->hosts[i];

    /* A session made is the host's answer, whoever takes it (as a spare's,
     * spare_adopt): a call whose deadline came as it was made notes a
     * silence since its start (async.c, connect_ask_done; pool.c,
     * pgg__pool_take_failed), which must not have the host verified
     * (verify_take): a spare started, a probe on a shortened bound, and
     * the breaker opened (host-silent) when that probe is slow. */
    if (a->conn)
        answered(hl, i, now);
    if (pgg__asked_done(a)) {
        pgg__asked_unref(a);
        return;
    }
    if (atomic_load_explicit(&a->state, memory_order_acquire) == PGG_ASK_CUT) {
        if (a->conn && spare_adopt(hl, i, a->conn, a->started, true, false, now))
            a->conn = NULL;
        else if (!a->conn && !atomic_load(&hl->stopping))
            handed_failed(hl, i, a->started, &a->err, now);
        pgg__host_spares(h, -1);
    }
    PQfinish(a->conn);
    a->conn = NULL;
    pgg__asked_unref(a);
}

/* Ask a of host i failed: e's code and libpq's message (or msg). */
static void asked_failed(pgg_health *hl, int i, pgg_asked *a, int code,
                         const char *msg, int64_t now)
{
    const char *name = hl->pool->hosts[i].name;

    if (msg)
        pgg__error_set(&a->err, code, NULL, name, "%s", msg);
    else
        pgg__link_error(&a->err, code, a->conn, NULL, name, "connect");
    PQfinish(a->conn);
    a->conn = NULL;
    asked_end(hl, i, a, now);
}

/* The asks queued for host i, their connects started by their loops
 * (PQconnectStartParams): their PQconnectPoll steps are this thread's
 * from now on (host.c, "Asked connects").  A host whose connect looks a
 * name up (pgg_host.lookup) has its connect started here too: the lookup
 * blocks, and not the loop. */
static void asked_take(pgg_health *hl, int i, int64_t now)
{
    pgg_host *h = &hl->pool->hosts[i];
    pgg_asked *a = pgg__host_take_asked(h);

    while (a) {
        pgg_asked *next = a->next;

        if (atomic_load(&hl->stopping)) {
            asked_failed(hl, i, a, PGG_ECLOSED, "pool closed", now);
        } else if (!a->conn && pgg__link_connect_start(h->keys, h->vals, h->name,
                                                       &a->conn, &a->err) != PGG_OK) {
            asked_end(hl, i, a, now); /* a->err says why */
        } else {
            a->events = POLLOUT;
            a->host = i;
            a->next = hl->asked;
            hl->asked = a;
            hl->nasked++;
        }
        a = next;
    }
}

/* Ask a of host i given up by its call while it connects: a handed spare
 * now (CUT), with a slot free, or closed. */
static void asked_handed(pgg_health *hl, int i, pgg_asked *a)
{
    pgg_host *h = &hl->pool->hosts[i];
    spare *sps = &hl->spares[i * SPARES];
    int s = 0;

    while (s < SPARES && sps[s].conn)
        s++;
    if (s == SPARES || atomic_load(&hl->stopping)) {
        PQfinish(a->conn);
        pgg__host_spares(h, -1);
    } else {
        sps[s].conn = a->conn;
        sps[s].cst = a->events == POLLIN ? PGRES_POLLING_READING
                                         : PGRES_POLLING_WRITING;
        sps[s].started = a->started;
        sps[s].end = a->started + h->connect_timeout_ns;
        sps[s].retry_at = 0;
        sps[s].handed = true;
    }
    a->conn = NULL;
    pgg__asked_unref(a);
}

/* The asks on their way: those their calls gave up leave (handed on or
 * closed); one past its own bound (connect_timeout_ms from its start: the
 * loop's timer usually ends it first) fails.  *wait_until: the nearest
 * bound. */
static void asked_tend(pgg_health *hl, int64_t now, int64_t *wait_until)
{
    pgg_asked **pp = &hl->asked;

    while (*pp) {
        pgg_asked *a = *pp;
        pgg_host *h = &hl->pool->hosts[a->host];
        int st = atomic_load_explicit(&a->state, memory_order_acquire);
        int64_t end = a->started + h->connect_timeout_ns;

        if (st == PGG_ASK_PENDING && now < end &&
            !atomic_load(&hl->stopping)) {
            if (end < *wait_until)
                *wait_until = end;
            pp = &a->next;
            continue;
        }
        *pp = a->next;
        hl->nasked--;
        if (st == PGG_ASK_CUT)
            asked_handed(hl, a->host, a);
        else if (st == PGG_ASK_DROP)
            asked_end(hl, a->host, a, now);
        else
            asked_failed(hl, a->host, a,
                         atomic_load(&hl->stopping) ? PGG_ECLOSED
                                                    : PGG_ETIMEDOUT,
                         atomic_load(&hl->stopping)
                             ? "pool closed"
                             : "connect: deadline exceeded",
                         now);
    }
}

/* Advance ask a on socket events (PQconnectPoll's CPU, here). */
static void asked_step(pgg_health *hl, pgg_asked *a)
{
    PostgresPollingStatusType st = PQconnectPoll(a->conn);
    pgg_asked **pp;

    if (st == PGRES_POLLING_READING || st == PGRES_POLLING_WRITING) {
        a->events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT;
        return;
    }
    for (pp = &hl->asked; *pp != a; pp = &(*pp)->next)
        ;
    *pp = a->next;
    hl->nasked--;
    if (st == PGRES_POLLING_OK && PQsetnonblocking(a->conn, 1) == 0) {
        pgg__link_started(a->conn);
        asked_end(hl, a->host, a, pgg__now_ns());
        return;
    }
    asked_failed(hl, a->host, a, PGG_ECONNECT, NULL, pgg__now_ns());
}

/* Room in the poll arrays for n sockets and the eventfd. */
static bool pfds_room(pgg_health *hl, int n)
{
    struct pollfd *p;
    int *ph, *ps;
    pgg_asked **pa;

    if (n + 1 <= hl->pfd_cap)
        return true;
    n = n * 2 + 1;
    p = realloc(hl->pfds, (size_t)n * sizeof *p);
    if (p)
        hl->pfds = p;
    ph = realloc(hl->pfd_host, (size_t)n * sizeof *ph);
    if (ph)
        hl->pfd_host = ph;
    ps = realloc(hl->pfd_spare, (size_t)n * sizeof *ps);
    if (ps)
        hl->pfd_spare = ps;
    pa = realloc(hl->pfd_asked, (size_t)n * sizeof *pa);
    if (pa)
        hl->pfd_asked = pa;
    if (!p || !ph || !ps || !pa)
        return false;
    hl->pfd_cap = n;
    return true;
}

/* Host i's refusals over the last window of at least incident_min. */
static void refusals_count(pgg_health *hl, int i, int64_t now)
{
    refusals *r = &hl->refused[i];
    uint64_t n = atomic_load_explicit(&hl->pool->hosts[i].rejections,
                                      memory_order_relaxed);
    int64_t span = now - r->at;
    uint64_t per;

    if (span < hl->incident_min)
        return;
    /* Scaled to one incident_min: the loop may have slept a calm interval. */
    per = (n - r->mark) * (uint64_t)hl->incident_min / (uint64_t)span;
    r->recent = per > SPARES ? SPARES : (int)per;
    r->mark = n;
    r->at = now;
}

/* A spare the server never took is given up at its end (a held probe's
 * bounds; a handed one's own connect_timeout_ms). */
static void spares_expire(pgg_health *hl, int i, int64_t now, int64_t *wait_until)
{
    for (int s = 0; s < SPARES; s++) {
        spare *sp = &hl->spares[i * SPARES + s];

        if (!sp->conn)
            continue;
        if (now >= sp->end || atomic_load(&hl->stopping)) {
            if (sp->handed && now >= sp->end && !atomic_load(&hl->stopping))
                handed_spare_failed(hl, i, sp, true, now);
            if (sp->hooking) /* its hook hung */
                hl->probes[i].hook_refused = true;
            spare_drop(&hl->pool->hosts[i], sp, now);
        } else if (sp->end < *wait_until) {
            *wait_until = sp->end;
        }
    }
}

static void drain_events(pgg_health *hl)
{
    uint64_t n;
    ssize_t r = read(hl->event_fd, &n, sizeof n);

    (void)r; /* EAGAIN: nothing pending */
}

static void *health_main(void *arg)
{
    pgg_health *hl = arg;
    pgg_pool *pool = hl->pool;

    /* A listener (user code) never runs here: it would stall the loops'
     * connects, which this thread steps (events.h). */
    pgg__events_hand_over_here();

    while (!atomic_load(&hl->stopping)) {
        int64_t now = pgg__now_ns();
        int64_t wait_until = now + hl->interval;
        bool now_incident;
        struct timespec ts;
        int n = 0, r;

        /* What event loops owe a host (host.c, "Owed"), applied here
         * too: the loop that owes it tells this thread
         * (pgg__health_settle_owed), which may wait for mu, so that
         * nothing owed waits for that loop to turn again (a loop run only
         * on demand stops after its last callback or pgg_async_give_back,
         * while a blocking borrower sleeps on the host).  The ask is taken
         * before the hosts are looked at: a record whose ask found it
         * still set is seen by the looks that follow.  One load per host
         * when nothing is owed. */
        atomic_exchange(&hl->settle_asked, false);
        for (int i = 0; i < pool->nhosts; i++) {
            pgg__breaker_tick(&pool->hosts[i].breaker, now);
            (void)pgg__host_settle_owed(&pool->hosts[i], true);
        }
        /* And the bulkhead's slots a loop's leave owes (bulkhead.c,
         * "Loops"), for the same reason: a blocking caller asleep in its
         * queue is woken only by whoever applies them. */
        (void)pgg__bulkhead_settle_owed(&pool->bulkhead, true);
        pgg__leases_check(pool, now);
        now_incident = incident(hl);
        if (atomic_exchange(&hl->wake_pending, false)) {
            hl->demand_at = now;
            expedite(hl, now, atomic_exchange(&hl->restart_round, false));
        } else if (now_incident && !hl->was_incident) {
            expedite(hl, now, atomic_exchange(&hl->restart_round, false));
        }
        hl->was_incident = now_incident;
        for (int i = 0; i < pool->nhosts; i++) {
            spares_handed(hl, i);
            asked_take(hl, i, now);
        }
        /* Asks their calls gave up become handed spares here, before the
         * silence those calls noted is verified (verify_take: they are its
         * spare). */
        asked_tend(hl, now, &wait_until);
        for (int i = 0; i < pool->nhosts; i++)
            verify_take(hl, i, now);

        for (int i = 0; i < pool->nhosts; i++) {
            probe *p = &hl->probes[i];

            if (p->phase == PROBE_IDLE && p->next <= now) {
                if (!probe_start(hl, i, now))
                    count_round(hl); /* forced open: nothing to learn */
                else if (p->phase == PROBE_IDLE)
                    probe_end(hl, i, pgg__now_ns()); /* failed at once */
            } else if (p->phase != PROBE_IDLE && p->deadline <= now) {
                /* Opened first: a connect the host queued is then kept. */
                if (p->verifying)
                    verify_failed(hl, i, now);
                if (probe_hold(hl, i, now))
                    continue;
                probe_fail(hl, i, PGG_CLASS_TIMEOUT,
                           p->phase == PROBE_CONNECTING
                               ? "health connect timed out"
                               : "health probe timed out");
                probe_end(hl, i, now);
            }
        }
        for (int i = 0; i < pool->nhosts; i++) {
            probe *p = &hl->probes[i];
            short ev;

            if (p->phase == PROBE_IDLE) {
                if (p->next < wait_until)
                    wait_until = p->next;
                continue;
            }
            if (p->phase == PROBE_CONNECTING)
                ev = p->cst == PGRES_POLLING_READING ? POLLIN : POLLOUT;
            else
                ev = POLLIN | (PQflush(hl->conns[i]) == 1 ? POLLOUT : 0);
            if (p->deadline < wait_until)
                wait_until = p->deadline;
            hl->pfds[n].fd = PQsocket(hl->conns[i]);
            hl->pfds[n].events = ev;
            hl->pfds[n].revents = 0;
            hl->pfd_host[n] = i;
            hl->pfd_spare[n] = -1;
            hl->pfd_asked[n] = NULL;
            n++;
        }
        sweep(hl, now);
        for (int i = 0; i < pool->nhosts; i++) {
            refusals_count(hl, i, now);
            mark_starting(hl, i, now);
            spares_tend(hl, i, now);
            spares_replace(hl, i, now);
            spares_expire(hl, i, now, &wait_until);
            for (int s = 0; s < SPARES; s++) {
                spare *sp = &hl->spares[i * SPARES + s];

                if (!sp->conn)
                    continue;
                hl->pfds[n].fd = PQsocket(sp->conn);
                hl->pfds[n].events =
                    sp->cst == PGRES_POLLING_READING ? POLLIN : POLLOUT;
                hl->pfds[n].revents = 0;
                hl->pfd_host[n] = i;
                hl->pfd_spare[n] = i * SPARES + s;
                hl->pfd_asked[n] = NULL;
                n++;
            }
        }
        /* Without room (no memory), an ask is polled in a later round. */
        (void)pfds_room(hl, n + hl->nasked);
        for (pgg_asked *a = hl->asked; a && n + 1 < hl->pfd_cap; a = a->next) {
            hl->pfds[n].fd = PQsocket(a->conn);
            hl->pfds[n].events = (short)a->events;
            hl->pfds[n].revents = 0;
            hl->pfd_host[n] = a->host;
            hl->pfd_spare[n] = -1;
            hl->pfd_asked[n] = a;
            n++;
        }
        hl->pfds[n].fd = hl->event_fd;
        hl->pfds[n].events = POLLIN;
        hl->pfds[n].revents = 0;
        now = pgg__now_ns();
        if (wait_until < now)
            wait_until = now;
        ts.tv_sec = (time_t)((wait_until - now) / PGG_NS_PER_SEC);
        ts.tv_nsec = (long)((wait_until - now) % PGG_NS_PER_SEC);
        r = ppoll(hl->pfds, (nfds_t)n + 1, &ts, NULL);
        if (r < 0 && errno != EINTR)
            break;
        if (r <= 0)
            continue;
        if (hl->pfds[n].revents)
            drain_events(hl);
        for (int k = 0; k < n; k++) {
            int i = hl->pfd_host[k];

            if (!hl->pfds[k].revents)
                continue;
            if (hl->pfd_asked[k])
                asked_step(hl, hl->pfd_asked[k]);
            else if (hl->pfd_spare[k] >= 0)
                spare_step(hl, i, hl->pfd_spare[k]);
            else if (probe_step(hl, i, hl->pfds[k].revents))
                probe_end(hl, i, pgg__now_ns());
        }
    }
    return NULL;
}

/* Release what start allocated; the thread is not running. */
static void health_free(pgg_health *hl)
{
    /* Asks on their way or queued: their loops hear the pool closed. */
    if (hl->pfd_asked) {
        int64_t ignored = INT64_MAX;

        atomic_store(&hl->stopping, true);
        for (int i = 0; i < hl->pool->nhosts; i++)
            asked_take(hl, i, 0);
        asked_tend(hl, 0, &ignored);
    }
    if (hl->conns)
        for (int i = 0; i < hl->pool->nhosts; i++)
            PQfinish(hl->conns[i]);
    if (hl->spares)
        for (int k = 0; k < hl->pool->nhosts * SPARES; k++)
            if (hl->spares[k].conn)
                spare_drop(&hl->pool->hosts[k / SPARES], &hl->spares[k], 0);
    free(hl->conns);
    free(hl->probes);
    free(hl->spares);
    free(hl->refused);
    free(hl->pfds);
    free(hl->pfd_host);
    free(hl->pfd_spare);
    free(hl->pfd_asked);
    free(hl->watch_sql);
    if (hl->event_fd >= 0)
        close(hl->event_fd);
    free(hl);
}

pgg_health *pgg__health_start(pgg_pool *pool, pgg_error *err)
{
    pgg_health *hl = calloc(1, sizeof *hl);
    size_t n = (size_t)pool->nhosts;
    const pgg_config *cfg = pool->cfg;

    if (!hl) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    hl->pool = pool;
    hl->event_fd = -1;
    if (!(hl->conns = calloc(n, sizeof *hl->conns)) ||
        !(hl->probes = calloc(n, sizeof *hl->probes)) ||
        !(hl->spares = calloc(n * SPARES, sizeof *hl->spares)) ||
        !(hl->refused = calloc(n, sizeof *hl->refused)) ||
        !(hl->pfds = calloc(n * (1 + SPARES) + 1, sizeof *hl->pfds)) ||
        !(hl->pfd_host = calloc(n * (1 + SPARES) + 1, sizeof *hl->pfd_host)) ||
        !(hl->pfd_spare = calloc(n * (1 + SPARES) + 1, sizeof *hl->pfd_spare)) ||
        !(hl->pfd_asked = calloc(n * (1 + SPARES) + 1, sizeof *hl->pfd_asked))) {
        health_free(hl);
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    hl->pfd_cap = (int)(n * (1 + SPARES) + 1);
    hl->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (hl->event_fd < 0) {
        health_free(hl);
        pgg__error_set(err, PGG_ESYS, NULL, NULL,
                       "could not create the health thread's eventfd");
        return NULL;
    }
    hl->interval = pgg__ms_to_ns(cfg->health_interval_ms);
    /* A probe gets its own bound, not connect_timeout_ms: a hung host is
     * marked within it, and a loaded server answering in 150 ms still
     * passes. */
    hl->probe_timeout = pgg__ms_to_ns(
        cfg->health_probe_timeout_ms < cfg->connect_timeout_ms
            ? cfg->health_probe_timeout_ms
            : cfg->connect_timeout_ms);
    hl->incident_min = pgg__ms_to_ns(cfg->health_incident_min_ms);
    hl->incident_max = pgg__ms_to_ns(cfg->health_incident_max_ms);
    {
        /* The watch's bound: the incident cadence it stands in for, and
         * well inside the probe's own bound. */
        long long ms = cfg->health_incident_min_ms;
        long long most = (long long)(hl->probe_timeout / PGG_NS_PER_MS / 4);

        if (ms > most)
            ms = most;
        if (ms < 1)
            ms = 1;
        if (asprintf(&hl->watch_sql, WATCH_SQL_FMT, PROBE_COLUMNS, ms) < 0)
            hl->watch_sql = NULL;
    }
    atomic_init(&hl->stopping, false);
    atomic_init(&hl->wake_pending, false);
    atomic_init(&hl->settle_asked, false);
    atomic_init(&hl->restart_round, false);
    atomic_init(&hl->watch_off, false);
    pthread_mutex_init(&hl->mu, NULL);
    pgg__cond_init(&hl->cv);
    if (pthread_create(&hl->thread, NULL, health_main, hl) != 0) {
        pthread_cond_destroy(&hl->cv);
        pthread_mutex_destroy(&hl->mu);
        health_free(hl);
        pgg__error_set(err, PGG_ESYS, NULL, NULL,
                       "could not start the health thread");
        return NULL;
    }
    return hl;
}

static void signal_event(pgg_health *hl)
{
    uint64_t one = 1;
    ssize_t w = write(hl->event_fd, &one, sizeof one);

    (void)w; /* a full counter is already "readable" */
}

void pgg__health_stop(pgg_health *hl)
{
    if (!hl)
        return;
    atomic_store(&hl->stopping, true);
    signal_event(hl);
    pthread_join(hl->thread, NULL);
    /* Wake anyone waiting for a round that will not come. */
    pthread_mutex_lock(&hl->mu);
    pthread_cond_broadcast(&hl->cv);
    pthread_mutex_unlock(&hl->mu);
    pthread_cond_destroy(&hl->cv);
    pthread_mutex_destroy(&hl->mu);
    health_free(hl);
}

void pgg__health_wake(pgg_health *hl)
{
    if (!hl)
        return;
    /* Called on failure paths, maybe by many threads at once: one write
     * per wakeup the thread has not taken yet, no lock. */
    if (atomic_load_explicit(&hl->wake_pending, memory_order_relaxed) ||
        atomic_exchange(&hl->wake_pending, true))
        return;
    signal_event(hl);
}

void pgg__health_settle_owed(pgg_health *hl)
{
    if (!hl || atomic_load_explicit(&hl->settle_asked, memory_order_relaxed) ||
        atomic_exchange(&hl->settle_asked, true))
        return;
    signal_event(hl);
}

void pgg__health_ask(pgg_health *hl)
{
    /* One write per ask or give-up: connects are rare next to calls. */
    if (hl)
        signal_event(hl);
}

unsigned long pgg__health_ask_round(pgg_health *hl)
{
    unsigned long want;

    if (!hl)
        return 0;
    /* The round starts over (expedite): the next one counted is made of
     * probes that ended after this call.  No lock: an event loop asks. */
    want = atomic_load(&hl->rounds) + 1;
    atomic_store(&hl->restart_round, true);
    atomic_store(&hl->wake_pending, true);
    signal_event(hl);
    return want;
}

bool pgg__health_round_done(pgg_health *hl, unsigned long want)
{
    if (!hl)
        return true;
    /* No lock: an event loop looks (async.c's round_look). */
    return atomic_load(&hl->rounds) >= want || atomic_load(&hl->stopping);
}

bool pgg__health_await_round(pgg_health *hl, int64_t deadline_ns)
{
    unsigned long want;
    bool done;

    if (!hl)
        return false;
    want = pgg__health_ask_round(hl);
    pthread_mutex_lock(&hl->mu);
    for (;;) {
        int64_t now = pgg__now_ns();
        struct timespec ts;

        if (atomic_load(&hl->rounds) >= want || atomic_load(&hl->stopping) ||
            now >= deadline_ns || pgg__cancel_now())
            break;
        /* Sliced while the caller's call has a cancel handle. */
        ts = pgg__ns_to_timespec(pgg__cancel_slice(now, deadline_ns));
        pthread_cond_timedwait(&hl->cv, &hl->mu, &ts);
    }
    done = atomic_load(&hl->rounds) >= want;
    pthread_mutex_unlock(&hl->mu);
    return done;
}

unsigned long pgg__health_rounds(pgg_health *hl)
{
    unsigned long n;

    if (!hl)
        return 0;
    n = atomic_load(&hl->rounds);
    return n;
}

void pgg__health_watch_promotions(pgg_health *hl, bool on)
{
    atomic_store(&hl->watch_off, !on);
}

pthread_mutex_t *pgg__health_mutex(pgg_health *hl)
{
    return &hl->mu;
}
