/*
 * pgguard-demo: a mixed workload through one pool while real faults hit the
 * servers under it.
 *
 *   pgguard-demo [options]                      a throwaway local cluster
 *   pgguard-demo [options] PRIMARY [REPLICA...] servers you name (conninfos)
 *
 * Worker threads read (plain, and cacheable with PGG_CALL_CACHEABLE) and
 * write through one pool while a script injects real faults, each announced:
 * a replica hung (SIGSTOP) then resumed, the primary stopped, a replica
 * promoted, the old primary left for gone, every server stopped (cacheable
 * reads then come from the fallback cache), recovery.  A live view refreshes
 * each second (plain lines when stdout is not a terminal); at the end come a
 * summary, a timeline CSV and, when gnuplot is installed, a PNG plot.
 *
 * Against servers named on the command line, the faults it cannot inject
 * are skipped with a message, and the workload runs all the same.
 *
 * Ground truth: the script knows which servers are up.  "A read failed while
 * a source was healthy" means a read got no answer (live or cached) while at
 * least one server was up for the whole call: the figure pgguard exists to
 * keep at zero.
 */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "pgguard.h"

#define MAX_NODES 9          /* the harness's limit: a primary and 8 replicas */
#define MAX_SECONDS 600      /* the timeline's length */
#define MAX_WRITES (1 << 22) /* ids a run may write */
#define MAX_EVENTS 4096
#define VIEW_SECONDS 10      /* per-second rows in the live view */
#define VIEW_EVENTS 9        /* recent events in the live view */

/* Deadlines per call: a read gives up sooner than a write, as a web
 * backend's would. */
#define READ_TIMEOUT_MS 500
#define WRITE_TIMEOUT_MS 1000

/*
 * Guard settings tuned so that every fault shows within its few seconds:
 * health rounds every 200 ms, three failures in a row open a breaker for
 * 500 ms (doubling up to 2 s), one good probe closes it.  A read attempt
 * that another host could take over gets 150 ms, so a hung replica costs
 * a read part of its deadline, not all of it.  The cache keeps answers two
 * minutes: longer than the run.
 */
static const char demo_settings[] =
    "health_interval_ms=200 connect_timeout_ms=500 call_timeout_ms=1000 "
    "attempt_timeout_ms=150 "
    "cancel_timeout_ms=500 pool_max=4 "
    "bulkhead.max_concurrent=16 bulkhead.max_wait_ms=100 "
    "breaker.consecutive_failures=3 breaker.open_ms=500 breaker.open_max_ms=2000 "
    "breaker.half_open_probes=1 breaker.half_open_successes=1 "
    "cache.enabled=true cache.max_age_ms=120000 "
    /* The workers read pgg_items, which nobody writes, and the verifier
     * reads its writes from the primary (PGG_READ_PRIMARY): no read waits
     * for the workers' inserts, so the replicas' figures stay theirs. */
    "read_your_writes=off";

enum op { OP_READ, OP_CACHED_READ, OP_WRITE, OP__COUNT };
static const char *const op_names[] = {"read", "cacheable read", "write"};

/* What one call came to, as the view counts it. */
enum outcome {
    OUT_OK,       /* a live answer */
    OUT_FAILED,   /* no answer: deadline, lost connection, server error */
    OUT_FALLBACK, /* a stale answer from the fallback cache */
    OUT_REJECTED, /* refused at once: bulkhead full, breakers open, no primary */
    OUT__COUNT
};

/* What became of one write, for the final check against the primary. */
enum wstate {
    W_NONE = 0,
    W_ACKED,     /* COMMAND_OK: the server said committed */
    W_REFUSED,   /* provably never applied: refused before sending, or a
                    server error */
    W_AMBIGUOUS  /* no answer after it may have been sent */
};

/* Why a read failed, kept per phase: codes are 0..-16, SQL errors apart. */
#define NCODES 17

typedef struct host_sample {
    pgg_role role;
    pgg_breaker_state state;
    int64_t lag;
    int open, busy;
    bool up;
} host_sample;

typedef struct second {
    unsigned n[OUT__COUNT];
    unsigned writes_acked;
    unsigned unserved_healthy; /* reads with no answer while a server was up */
    double *lat; /* ms, every call completed in this second */
    size_t nlat, cap;
    double p50, p99;
    bool closed;
    int phase;
    host_sample host[MAX_NODES];
} second;

typedef struct event {
    double t;
    char kind[8];
    char text[224];
} event;

/* One phase of the script: a fault, a repair, or a note. */
typedef struct step {
    double at; /* seconds after the workload starts */
    const char *title;
    const char *detail;
    int (*run)(void);
} step;

/* The whole demo's state: one instance, shared by the threads. */
static struct {
    /* options */
    int workers;
    const char *outdir;
    bool tty, plot;
    const char *settings;

    pgh_cluster *cluster;
    pgg_pool *pool;
    int nhosts;
    char names[MAX_NODES][16]; /* "primary", "replica1", ... */
    bool external;
    long long run_id;
    double t0;      /* pgh_now_ms() when the workload starts */
    double t_end;   /* seconds */

    atomic_bool stop;
    atomic_int up[MAX_NODES]; /* ground truth, written by the script */
    _Atomic double up_at[MAX_NODES]; /* when up last became 1, in s */
    atomic_int phase;
    atomic_int promoted;      /* host index of the promoted replica, or -1 */
    double promote_asked_at;  /* ms: pg_ctl promote started, under mu */
    double promoted_at;       /* ms: the server left recovery, under mu */
    double primary_stopped_at; /* ms, under mu */
    double followed_at;       /* ms: first write acknowledged there, under mu */
    double role_seen_at;      /* ms: the pool reported it primary, under mu */

    pthread_mutex_t mu; /* everything below, and the fields marked so */
    second *secs;
    unsigned calls[OP__COUNT][OUT__COUNT];
    unsigned unserved_healthy[16][NCODES + 1]; /* [phase][code or SQL] */
    unsigned unserved_healthy_total, unserved_down;
    unsigned unserved_detecting; /* failed in the window after a return */
    unsigned cached_down, cached_down_served; /* cacheable reads, no server up */
    unsigned cached_down_unserved[NCODES + 1]; /* ... and why the others failed */
    double max_over_ms;
    int max_over_op, max_over_timeout;
    int64_t max_cache_age_ms;

    unsigned char *wstate; /* by write id */
    atomic_llong next_id;

    pthread_mutex_t ev_mu;
    event *events;
    int nevents;

    pthread_mutex_t out_mu; /* stdout, in plain mode */
} D;

static volatile sig_atomic_t interrupted;

/* ------------------------------------------------------------- helpers */

static double now_ms(void) { return pgh_now_ms(); }
static double now_s(void) { return (now_ms() - D.t0) / 1000.0; }

static void sleep_ms(double ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {(time_t)(ms / 1000), (long)(fmod(ms, 1000.0) * 1e6)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static bool stopping(void) { return atomic_load(&D.stop) || interrupted; }

/* Sleep until t seconds into the run, waking early to stop. */
static void sleep_until(double t)
{
    while (!stopping() && now_s() < t)
        sleep_ms(fmin(50.0, (t - now_s()) * 1000.0));
}

static const char *node_name(int i)
{
    return i >= 0 && i < D.nhosts ? D.names[i] : "?";
}

static int healthy_sources(void)
{
    int n = 0;
    for (int i = 0; i < D.nhosts; i++)
        n += atomic_load(&D.up[i]);
    return n;
}

/*
 * How long the pool may take to see a server that came back: its health
 * round runs every health_interval_ms and a probe of an open host is what
 * lets traffic back.  Reads that fail in that window are counted apart:
 * they measure detection latency, not a routing mistake.
 */
#define DETECT_WINDOW_S 0.5

static void set_up(int i)
{
    atomic_store(&D.up_at[i], now_s());
    atomic_store(&D.up[i], 1);
}

/* Sources up for longer than the detection window. */
static int settled_sources(void)
{
    double t = now_s();
    int n = 0;
    for (int i = 0; i < D.nhosts; i++)
        n += atomic_load(&D.up[i]) && t - atomic_load(&D.up_at[i]) > DETECT_WINDOW_S;
    return n;
}

/* ------------------------------------------------------------- events */

/*
 * Every announcement and every pool event goes through here: kept for the
 * view and the events CSV, printed at once in plain mode.  Called from any
 * thread, the pool's included (its listener runs outside the pool's locks).
 */
static void log_event(const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void log_event(const char *kind, const char *fmt, ...)
{
    event ev;
    va_list ap;

    ev.t = D.t0 > 0 ? now_s() : 0;
    snprintf(ev.kind, sizeof ev.kind, "%s", kind);
    va_start(ap, fmt);
    vsnprintf(ev.text, sizeof ev.text, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&D.ev_mu);
    if (D.nevents < MAX_EVENTS)
        D.events[D.nevents++] = ev;
    pthread_mutex_unlock(&D.ev_mu);
    if (!D.tty) {
        pthread_mutex_lock(&D.out_mu);
        printf("%6.1fs  %-7s %s\n", ev.t, ev.kind, ev.text);
        fflush(stdout);
        pthread_mutex_unlock(&D.out_mu);
    }
}

static void on_pool_event(const pgg_event *ev, void *ud)
{
    (void)ud;
    if (ev->type == PGG_EVENT_BREAKER) {
        /* An open breaker probes its host every open period: one line per
         * probe ("open again" / "closed"), not two per cycle. */
        if (ev->from == PGG_BREAKER_OPEN && ev->to == PGG_BREAKER_HALF_OPEN)
            return;
        if (ev->from == PGG_BREAKER_HALF_OPEN && ev->to == PGG_BREAKER_OPEN) {
            log_event("breaker", "%s (%s) probed: still failing, open again",
                      node_name(ev->host_index), ev->host);
            return;
        }
        if (ev->from == PGG_BREAKER_HALF_OPEN && ev->to == PGG_BREAKER_CLOSED) {
            log_event("breaker", "%s (%s) probed: healthy, closed", node_name(ev->host_index),
                      ev->host);
            return;
        }
        log_event("breaker", "%s (%s) %s -> %s%s%s", node_name(ev->host_index),
                  ev->host, pgg_breaker_state_name((pgg_breaker_state)ev->from),
                  pgg_breaker_state_name((pgg_breaker_state)ev->to),
                  ev->reason ? ": " : "", ev->reason ? ev->reason : "");
        return;
    }
    log_event("role", "%s (%s) %s -> %s%s%s", node_name(ev->host_index), ev->host,
              pgg_role_name((pgg_role)ev->from), pgg_role_name((pgg_role)ev->to),
              ev->reason ? ": " : "", ev->reason ? ev->reason : "");
    if (ev->to == PGG_ROLE_PRIMARY && ev->host_index == atomic_load(&D.promoted)) {
        pthread_mutex_lock(&D.mu);
        if (D.role_seen_at == 0)
            D.role_seen_at = now_ms();
        pthread_mutex_unlock(&D.mu);
    }
}

/* ---------------------------------------------------------- recording */

static int code_slot(int code, bool sql_error)
{
    if (sql_error)
        return NCODES;
    return code <= 0 && code > -NCODES ? -code : 0;
}

/* One finished call, as a worker reports it. */
typedef struct finished {
    enum op op;
    enum outcome out;
    double start, lat_ms; /* ms */
    int timeout_ms;
    const pgg_info *info;
    const pgg_error *err;
    bool sql_error; /* the server answered with an error */
    bool healthy;   /* a server was up from its start to its end */
    bool settled;   /* ... and had been up longer than DETECT_WINDOW_S */
    bool down;      /* no server was up, neither at its start nor at its end */
} finished;

/* Its second's counters and latency, under D.mu. */
static int record_second(const finished *f)
{
    int s = (int)((f->start + f->lat_ms - D.t0) / 1000.0);

    if (s < 0)
        s = 0;
    /* The view closes a second once it is over; a call that finished just
     * before the boundary but got here after counts in the next one. */
    while (s < MAX_SECONDS - 1 && D.secs[s].closed)
        s++;
    second *sec = &D.secs[s];
    sec->n[f->out]++;
    if (f->op == OP_WRITE && f->out == OUT_OK)
        sec->writes_acked++;
    if (sec->nlat == sec->cap) {
        size_t cap = sec->cap ? sec->cap * 2 : 1024;
        double *p = realloc(sec->lat, cap * sizeof *p);
        if (p) {
            sec->lat = p;
            sec->cap = cap;
        }
    }
    if (sec->nlat < sec->cap)
        sec->lat[sec->nlat++] = f->lat_ms;
    return s;
}

/* Account for one finished call: the second it ends in, and the run's
 * figures for the summary. */
static void record(const finished *f)
{
    double over = f->lat_ms - f->timeout_ms;
    int slot = code_slot(f->err->code, f->sql_error);
    bool unanswered = f->out == OUT_FAILED || f->out == OUT_REJECTED;

    pthread_mutex_lock(&D.mu);
    int s = record_second(f);
    D.calls[f->op][f->out]++;
    if (over > D.max_over_ms) {
        D.max_over_ms = over;
        D.max_over_op = f->op;
        D.max_over_timeout = f->timeout_ms;
    }
    if (f->op != OP_WRITE && unanswered && f->healthy && !f->settled) {
        D.unserved_detecting++;
    } else if (f->op != OP_WRITE && unanswered && f->healthy) {
        int ph = atomic_load(&D.phase);
        D.unserved_healthy[ph < 16 ? ph : 15][slot]++;
        D.unserved_healthy_total++;
        D.secs[s].unserved_healthy++;
    } else if (f->op != OP_WRITE && unanswered && f->down) {
        D.unserved_down++;
    }
    /* Down by the script's clock, yet served live: a server still dying
     * or already back; those are not the cache's to answer. */
    if (f->op == OP_CACHED_READ && f->down && f->out != OUT_OK) {
        D.cached_down++;
        if (f->out == OUT_FALLBACK)
            D.cached_down_served++;
        else if (unanswered)
            D.cached_down_unserved[slot]++;
    }
    if (f->out == OUT_FALLBACK && f->info->cache_age_ms > D.max_cache_age_ms)
        D.max_cache_age_ms = f->info->cache_age_ms;
    if (f->op == OP_WRITE && f->out == OUT_OK && D.promote_asked_at > 0 && D.followed_at == 0 &&
        f->info->host_index == atomic_load(&D.promoted))
        D.followed_at = f->start + f->lat_ms;
    pthread_mutex_unlock(&D.mu);
}

static enum outcome classify(const PGresult *r, const pgg_info *info,
                             const pgg_error *e, bool *sql_error)
{
    *sql_error = false;
    if (r) {
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
            return info->from_cache ? OUT_FALLBACK : OUT_OK;
        *sql_error = true;
        return OUT_FAILED;
    }
    switch (e->code) {
    case PGG_EBULKHEAD:
    case PGG_EOPEN:
    case PGG_ENOPRIMARY:
        return OUT_REJECTED;
    default:
        return OUT_FAILED;
    }
}

/* ------------------------------------------------------------ workers */

static void *worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u ^ (unsigned)getpid();
    int wid = (int)(uintptr_t)arg;
    char idbuf[24], widbuf[16], runbuf[24];

    snprintf(widbuf, sizeof widbuf, "%d", wid);
    snprintf(runbuf, sizeof runbuf, "%lld", D.run_id);
    while (!stopping()) {
        int dice = (int)(rand_r(&seed) % 100);
        enum op op = dice < 45 ? OP_READ : dice < 80 ? OP_CACHED_READ : OP_WRITE;
        pgg_call call = {.timeout_ms = READ_TIMEOUT_MS};
        pgg_info info;
        pgg_error e;
        PGresult *r;
        long long id = 0;
        int healthy0 = healthy_sources();
        int settled0 = settled_sources();
        double t = now_ms();

        if (op == OP_WRITE) {
            id = atomic_fetch_add(&D.next_id, 1);
            if (id >= MAX_WRITES) {
                sleep_ms(1);
                continue;
            }
            snprintf(idbuf, sizeof idbuf, "%lld", id);
            const char *vals[] = {runbuf, idbuf, widbuf};
            call.timeout_ms = WRITE_TIMEOUT_MS;
            r = pgg_exec_params(D.pool, PGG_WRITE,
                                "INSERT INTO pgguard_demo_writes (run, id, worker) "
                                "VALUES ($1, $2, $3)",
                                3, NULL, vals, NULL, NULL, &call, &info, &e);
        } else {
            /* Cacheable reads hit ten hot rows, so that the cache holds
             * every one of them long before the servers go away. */
            snprintf(idbuf, sizeof idbuf, "%d",
                     op == OP_CACHED_READ ? 1 + (int)(rand_r(&seed) % 10)
                                          : 1 + (int)(rand_r(&seed) % 100));
            const char *vals[] = {idbuf};
            if (op == OP_CACHED_READ)
                call.flags = PGG_CALL_CACHEABLE;
            r = pgg_exec_params(D.pool, PGG_READ,
                                "SELECT val FROM pgg_items WHERE id = $1", 1,
                                NULL, vals, NULL, NULL, &call, &info, &e);
        }
        double lat = now_ms() - t;
        int healthy1 = healthy_sources();
        bool sql_error;
        enum outcome out = classify(r, &info, &e, &sql_error);

        if (op == OP_WRITE) {
            unsigned char ws;
            if (out == OUT_OK)
                ws = W_ACKED;
            else if (out == OUT_REJECTED || sql_error)
                ws = W_REFUSED;
            else
                ws = W_AMBIGUOUS;
            D.wstate[id] = ws; /* one writer per id; read after the join */
        }
        finished f = {.op = op, .out = out, .start = t, .lat_ms = lat,
                      .timeout_ms = call.timeout_ms, .info = &info, .err = &e,
                      .sql_error = sql_error, .healthy = healthy0 > 0 && healthy1 > 0,
                      .settled = settled0 > 0 && healthy1 > 0,
                      .down = healthy0 == 0 && healthy1 == 0};
        record(&f);
        PQclear(r);
        /* A little pacing leaves the two cores to the servers. */
        sleep_ms(1);
    }
    return NULL;
}

/* ------------------------------------------------------------- faults */

static pgh_node *node_at(int i)
{
    return i == 0 ? pgh_cluster_primary(D.cluster) : pgh_cluster_replica(D.cluster, i - 1);
}

/* Report a harness result; PGH_ENOTSUP is a skip, not a failure. */
static int done(int rc, int i, const char *what)
{
    if (rc == PGH_ENOTSUP)
        log_event("skip", "%s: not possible on servers the demo did not start", what);
    else if (rc != 0)
        log_event("error", "%s on %s failed: %s", what, node_name(i),
                  pgh_node_error(node_at(i)));
    return rc;
}

static int do_hang(void)
{
    /* Down before the fault, up after the repair: the ground truth never
     * claims a server healthy while it is not. */
    atomic_store(&D.up[1], 0);
    int rc = done(pgh_node_hang(node_at(1)), 1, "hang");
    if (rc == PGH_ENOTSUP)
        set_up(1);
    return rc;
}

static int do_resume(void)
{
    int rc = done(pgh_node_resume(node_at(1)), 1, "resume");
    if (rc != PGH_ERROR)
        set_up(1);
    return rc;
}

static int do_stop_primary(void)
{
    atomic_store(&D.up[0], 0);
    pthread_mutex_lock(&D.mu);
    D.primary_stopped_at = now_ms();
    pthread_mutex_unlock(&D.mu);
    int rc = done(pgh_node_stop(node_at(0), PGH_STOP_IMMEDIATE), 0, "stop");
    if (rc == PGH_ENOTSUP)
        set_up(0);
    return rc;
}

/* WAL received, in bytes; -1 when it cannot be read. */
static double received_lsn(int i)
{
    char v[64];
    if (pgh_node_query_value(node_at(i),
                             "SELECT coalesce(pg_last_wal_receive_lsn() - '0/0', -1)",
                             v, sizeof v) != 0)
        return -1;
    return strtod(v, NULL);
}

/*
 * Promote the replica that received the most WAL, as a failover tool
 * would: with synchronous replication to any one replica (set up at the
 * start), that one holds every acknowledged write.  Then point the other
 * replicas at it; recovery_target_timeline=latest lets them follow.
 */
static int do_promote(void)
{
    int best = -1;
    double best_lsn = -1;

    for (int i = 1; i < D.nhosts; i++) {
        double lsn = atomic_load(&D.up[i]) ? received_lsn(i) : -1;
        if (lsn > best_lsn) {
            best_lsn = lsn;
            best = i;
        }
    }
    if (best < 0) {
        log_event("error", "no replica to promote");
        return PGH_ERROR;
    }
    pthread_mutex_lock(&D.mu);
    D.promote_asked_at = now_ms();
    pthread_mutex_unlock(&D.mu);
    atomic_store(&D.promoted, best);
    int rc = done(pgh_node_promote(node_at(best)), best, "promote");
    if (rc != 0)
        return rc;
    pthread_mutex_lock(&D.mu);
    D.promoted_at = now_ms();
    pthread_mutex_unlock(&D.mu);
    log_event("fault", "%s promoted in %.0f ms (it had received the most WAL)",
              node_name(best), D.promoted_at - D.promote_asked_at);
    for (int i = 1; i < D.nhosts; i++) {
        char sql[256];
        if (i == best || !atomic_load(&D.up[i]))
            continue;
        /* ALTER SYSTEM refuses a transaction block: one statement each.
         * No slot: the new primary has none, and the run is short. */
        snprintf(sql, sizeof sql,
                 "ALTER SYSTEM SET primary_conninfo = 'host=%s port=%d user=postgres "
                 "application_name=%s'",
                 pgh_node_host(node_at(best)), pgh_node_port(node_at(best)), D.names[i]);
        if (pgh_node_exec(node_at(i), sql) != 0 ||
            pgh_node_exec(node_at(i), "ALTER SYSTEM SET primary_slot_name = ''") != 0 ||
            pgh_node_exec(node_at(i), "SELECT pg_reload_conf()") != 0)
            log_event("error", "repointing %s: %s", D.names[i], pgh_node_error(node_at(i)));
        else
            log_event("fault", "%s now follows %s", D.names[i], D.names[best]);
    }
    return 0;
}

static int do_note_gone(void) { return 0; }

static bool stopped_all[MAX_NODES];

static int do_stop_all(void)
{
    int rc = 0;
    for (int i = 0; i < D.nhosts; i++) {
        if (!atomic_load(&D.up[i]))
            continue;
        atomic_store(&D.up[i], 0);
        if (done(pgh_node_stop(node_at(i), PGH_STOP_IMMEDIATE), i, "stop") == 0)
            stopped_all[i] = true;
        else
            rc = PGH_ERROR;
    }
    return rc;
}

static int do_recover(void)
{
    int rc = 0;
    for (int i = 0; i < D.nhosts; i++) {
        if (!stopped_all[i])
            continue;
        if (done(pgh_node_start(node_at(i)), i, "start") == 0)
            set_up(i);
        else
            rc = PGH_ERROR;
    }
    return rc;
}

static int do_end(void) { return 0; }

static const step script[] = {
    {0, "steady state",
     "reads go to the replicas, writes to the primary; cacheable reads fill the cache",
     NULL},
    {5, "replica1 hung (SIGSTOP)",
     "its sockets stay open and answer nothing: reads there hit their deadline "
     "until its breaker opens, then go elsewhere",
     do_hang},
    {11, "replica1 resumed (SIGCONT)",
     "its breaker goes half-open, a probe succeeds, it closes: reads come back",
     do_resume},
    {16, "primary stopped (pg_ctl stop -m immediate)",
     "writes fail until its breaker opens, then fail fast; reads carry on on the replicas",
     do_stop_primary},
    {19, "a replica promoted (pg_ctl promote)",
     "the replica with the most WAL becomes primary; writes follow once the pool sees its role",
     do_promote},
    {21, "old primary: gone",
     "a primary stopped mid-stream cannot rejoin as a replica without pg_rewind "
     "(its WAL may have diverged): it stays down, its breaker stays open, "
     "the pool routes around it",
     do_note_gone},
    {26, "every server stopped",
     "cacheable reads are answered from the fallback cache, marked stale; "
     "other reads and writes fail fast",
     do_stop_all},
    {33, "recovery: servers restarted",
     "breakers go half-open, probes succeed, they close; writes resume on the new primary",
     do_recover},
    {42, "end", "", do_end},
};
#define NSTEPS ((int)(sizeof script / sizeof script[0]))

static void *run_script(void *arg)
{
    (void)arg;
    for (int i = 1; i < NSTEPS && !stopping(); i++) {
        sleep_until(script[i].at);
        if (stopping() || i == NSTEPS - 1)
            break;
        if (D.external) {
            /* Servers the demo did not start are not its to break. */
            log_event("skip", "%s: not injected into servers the demo did not start",
                      script[i].title);
            continue;
        }
        atomic_store(&D.phase, i);
        log_event("FAULT", "%s", script[i].title);
        if (!D.tty)
            log_event("", "  %s", script[i].detail);
        script[i].run();
    }
    atomic_store(&D.stop, true);
    return NULL;
}

/* ---------------------------------------------------------------- view */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, size_t n, double p)
{
    if (n == 0)
        return NAN;
    size_t k = (size_t)ceil(p * (double)n);
    return v[k ? k - 1 : 0];
}

/* Close second s: its latencies become p50/p99, the hosts are sampled. */
static void close_second(int s)
{
    host_sample hs[MAX_NODES];

    for (int i = 0; i < D.nhosts; i++) {
        pgg_host_stats h;
        memset(&hs[i], 0, sizeof hs[i]);
        if (pgg_pool_host_stats(D.pool, i, &h) == PGG_OK) {
            hs[i].role = h.role;
            hs[i].state = h.state;
            hs[i].lag = h.lag_bytes;
            hs[i].open = h.conns_open;
            hs[i].busy = h.conns_busy;
        }
        hs[i].up = atomic_load(&D.up[i]);
    }
    pthread_mutex_lock(&D.mu);
    second *sec = &D.secs[s];
    sec->closed = true;
    sec->phase = atomic_load(&D.phase);
    qsort(sec->lat, sec->nlat, sizeof *sec->lat, cmp_double);
    sec->p50 = pct(sec->lat, sec->nlat, 0.50);
    sec->p99 = pct(sec->lat, sec->nlat, 0.99);
    free(sec->lat);
    sec->lat = NULL;
    sec->nlat = sec->cap = 0;
    memcpy(sec->host, hs, sizeof hs);
    pthread_mutex_unlock(&D.mu);
}

static const char *fmt_bytes(int64_t b, char *buf, size_t len)
{
    if (b < 0)
        snprintf(buf, len, "-");
    else if (b < 10 * 1024)
        snprintf(buf, len, "%" PRId64 " B", b);
    else if (b < 10 * 1024 * 1024)
        snprintf(buf, len, "%" PRId64 " kB", b / 1024);
    else
        snprintf(buf, len, "%" PRId64 " MB", b / (1024 * 1024));
    return buf;
}

static const char *color_of(pgg_breaker_state st)
{
    if (!D.tty)
        return "";
    switch (st) {
    case PGG_BREAKER_CLOSED:
        return "\033[32m";
    case PGG_BREAKER_HALF_OPEN:
        return "\033[33m";
    case PGG_BREAKER_OPEN:
    case PGG_BREAKER_FORCED_OPEN:
        return "\033[31m";
    default:
        return "";
    }
}

static const char *reset_color(void) { return D.tty ? "\033[0m" : ""; }

static const char *server_state(int i, const host_sample *h)
{
    if (h->up)
        return "up";
    if (i == 1 && atomic_load(&D.phase) == 1)
        return "HUNG";
    return "DOWN";
}

static void render_tty(int s)
{
    const step *ph = &script[atomic_load(&D.phase)];
    second *cur = &D.secs[s];

    printf("\033[H\033[2J");
    printf("\033[1mpgguard-demo\033[0m  t=%2ds of %.0fs   %d workers   %s   run %lld\n\n", s + 1,
           D.t_end, D.workers, D.external ? "external servers" : "local cluster", D.run_id);
    printf("\033[1;36m%s\033[0m\n  %s\n\n", ph->title, ph->detail);
    pthread_mutex_lock(&D.mu);
    unsigned unserved = D.unserved_healthy_total, cached = D.cached_down_served;
    unsigned acked = 0;
    for (int k = 0; k <= s; k++)
        acked += D.secs[k].writes_acked;
    pthread_mutex_unlock(&D.mu);
    printf("  so far: %s%u%s reads failed while a server was up (goal 0), %u reads answered "
           "from the cache with every server down, %u writes acknowledged\n\n",
           unserved ? "\033[31m" : "\033[32m", unserved, "\033[0m", cached, acked);
    printf("  %-9s %-21s %-6s %-8s %-11s %9s %11s\n", "node", "host", "server", "role",
           "breaker", "lag", "conns/busy");
    for (int i = 0; i < D.nhosts; i++) {
        host_sample *h = &cur->host[i];
        char lag[32], hostbuf[128] = "";
        pgg_host_stats hs;
        if (pgg_pool_host_stats(D.pool, i, &hs) == PGG_OK)
            snprintf(hostbuf, sizeof hostbuf, "%s", hs.host);
        printf("  %-9s %-21s %-6s %-8s %s%-11s%s %9s %6d/%d\n", D.names[i], hostbuf,
               server_state(i, h), pgg_role_name(h->role), color_of(h->state),
               pgg_breaker_state_name(h->state), reset_color(),
               h->role == PGG_ROLE_STANDBY ? fmt_bytes(h->lag, lag, sizeof lag) : "-",
               h->open, h->busy);
    }
    printf("\n  %5s %7s %7s %9s %9s %9s %9s\n", "sec", "ok", "failed", "fallback",
           "rejected", "p50 ms", "p99 ms");
    for (int k = s - VIEW_SECONDS + 1; k <= s; k++) {
        if (k < 0)
            continue;
        second *sec = &D.secs[k];
        printf("  %5d %7u %s%7u%s %9u %9u %9.2f %9.2f\n", k + 1, sec->n[OUT_OK],
               sec->n[OUT_FAILED] ? "\033[31m" : "", sec->n[OUT_FAILED], "\033[0m",
               sec->n[OUT_FALLBACK], sec->n[OUT_REJECTED], sec->p50, sec->p99);
    }
    printf("\n  events\n");
    pthread_mutex_lock(&D.ev_mu);
    int from = D.nevents > VIEW_EVENTS ? D.nevents - VIEW_EVENTS : 0;
    for (int k = from; k < D.nevents; k++)
        printf("  %6.1fs %-7s %.90s\n", D.events[k].t, D.events[k].kind, D.events[k].text);
    pthread_mutex_unlock(&D.ev_mu);
    fflush(stdout);
}

static void render_plain(int s)
{
    second *sec = &D.secs[s];
    char line[1024];
    size_t n = 0;

    n += (size_t)snprintf(line + n, sizeof line - n,
                          "%6ds  ok %5u  failed %4u  fallback %4u  rejected %4u  "
                          "p50 %6.2f ms  p99 %7.2f ms |",
                          s + 1, sec->n[OUT_OK], sec->n[OUT_FAILED], sec->n[OUT_FALLBACK],
                          sec->n[OUT_REJECTED], sec->p50, sec->p99);
    for (int i = 0; i < D.nhosts && n < sizeof line; i++) {
        host_sample *h = &sec->host[i];
        n += (size_t)snprintf(line + n, sizeof line - n, " %s %s/%s", D.names[i],
                              h->role == PGG_ROLE_PRIMARY   ? "P"
                              : h->role == PGG_ROLE_STANDBY ? "S"
                                                            : "?",
                              pgg_breaker_state_name(h->state));
    }
    pthread_mutex_lock(&D.out_mu);
    puts(line);
    fflush(stdout);
    pthread_mutex_unlock(&D.out_mu);
}

static int last_closed = -1;

static void *run_view(void *arg)
{
    (void)arg;
    for (int s = 0; s < MAX_SECONDS - 1; s++) {
        sleep_until(s + 1);
        if (now_s() < s + 1)
            break; /* stopped mid-second: a partial second would mislead */
        close_second(s);
        last_closed = s;
        if (D.tty)
            render_tty(s);
        else
            render_plain(s);
        if (stopping())
            break;
    }
    return NULL;
}

/* -------------------------------------------------------------- output */

static int mkdir_p(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* A CSV field: quoted, with quotes doubled. */
static void csv_text(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

/* One row per second; t is where the second starts. */
static int write_timeline(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "t,ok,failed,fallback,rejected,p50_ms,p99_ms,writes_acked,"
               "reads_unanswered_while_healthy,phase");
    for (int i = 0; i < D.nhosts; i++)
        fprintf(f, ",%s_server,%s_role,%s_breaker,%s_lag_bytes,%s_conns", D.names[i],
                D.names[i], D.names[i], D.names[i], D.names[i]);
    fputc('\n', f);
    for (int s = 0; s <= last_closed; s++) {
        second *sec = &D.secs[s];
        fprintf(f, "%d,%u,%u,%u,%u,", s, sec->n[OUT_OK], sec->n[OUT_FAILED],
                sec->n[OUT_FALLBACK], sec->n[OUT_REJECTED]);
        /* An empty field, not "nan", for a second with no call. */
        if (isnan(sec->p50))
            fprintf(f, ",,");
        else
            fprintf(f, "%.3f,%.3f,", sec->p50, sec->p99);
        fprintf(f, "%u,%u,", sec->writes_acked, sec->unserved_healthy);
        csv_text(f, script[sec->phase].title);
        for (int i = 0; i < D.nhosts; i++) {
            host_sample *h = &sec->host[i];
            fprintf(f, ",%s,%s,%s,%" PRId64 ",%d", h->up ? "up" : "down",
                    pgg_role_name(h->role), pgg_breaker_state_name(h->state), h->lag,
                    h->open);
        }
        fputc('\n', f);
    }
    return fclose(f);
}

static int write_events(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "t,kind,text\n");
    pthread_mutex_lock(&D.ev_mu);
    for (int k = 0; k < D.nevents; k++) {
        if (!D.events[k].kind[0])
            continue;
        fprintf(f, "%.3f,%s,", D.events[k].t, D.events[k].kind);
        csv_text(f, D.events[k].text);
        fputc('\n', f);
    }
    pthread_mutex_unlock(&D.ev_mu);
    return fclose(f);
}

/* A gnuplot string: single-quoted, where only '' needs care. */
static void gp_string(FILE *f, const char *s)
{
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'')
            fputc('\'', f);
        fputc(*s, f);
    }
    fputc('\'', f);
}

/*
 * Three panels over time, the faults as dashed lines named on the top one:
 * answered calls, unanswered calls (log scale: a handful of failures must
 * show next to thousands of rejections), latency.  Per-second counts are
 * drawn as steps over the second they cover.
 */
static int write_plot_script(const char *path, const char *csv, const char *png)
{
    unsigned unanswered_max = 0;
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    for (int s = 0; s <= last_closed; s++) {
        const second *sec = &D.secs[s];
        unsigned m = sec->n[OUT_FAILED] > sec->n[OUT_REJECTED] ? sec->n[OUT_FAILED]
                                                               : sec->n[OUT_REJECTED];
        if (m > unanswered_max)
            unanswered_max = m;
    }
    fprintf(f, "set terminal pngcairo size 1400,1050 font 'Sans,10'\nset output ");
    gp_string(f, png);
    fprintf(f, "\nset datafile separator ','\nset datafile missing ''\n"
               "set xrange [0:%d]\nset grid ytics\nset key outside right top\n"
               "set lmargin 12\nset rmargin 34\n",
            last_closed + 1);
    for (int i = 1; i < NSTEPS - 1 && !D.external; i++)
        fprintf(f, "set arrow from %g, graph 0 to %g, graph 1 nohead dt 2 lc rgb '#888888'\n",
                script[i].at, script[i].at);
    /* an opaque box under each fault's name, so that curves do not cross it */
    fprintf(f, "set style textbox opaque noborder\n");
    fprintf(f, "set multiplot layout 3,1 title 'pgguard-demo: %d workers, %d servers%s'\n",
            D.workers, D.nhosts, D.external ? " (external, no faults)" : ", faults marked");
    for (int i = 1; i < NSTEPS - 1 && !D.external; i++) {
        fprintf(f, "set label %d ", i);
        gp_string(f, script[i].title);
        fprintf(f, " at %g, graph 0.97 rotate by 90 right offset -1,0 font ',8' "
                   "tc rgb '#444444' boxed\n",
                script[i].at);
    }
    fprintf(f, "set ylabel 'answered calls / s'\nset yrange [0:*]\nplot ");
    gp_string(f, csv);
    fprintf(f, " using 1:2 with steps lw 2 lc rgb '#2a9d3a' title 'ok (live)', "
               "'' using 1:4 with steps lw 2 lc rgb '#1f77b4' title 'from the cache (stale)'\n"
               "unset label\n"
               "set ylabel 'unanswered calls / s'\nset logscale y\n");
    /* A fixed range: gnuplot refuses to autoscale an axis with no defined
     * point, as in a run where nothing failed. */
    fprintf(f, "set yrange [0.8:%u]\nplot ", unanswered_max < 5 ? 10 : unanswered_max * 2);
    gp_string(f, csv);
    fprintf(f, " using 1:($5 > 0 ? $5 : 1/0) with steps lw 2 lc rgb '#ff9f1c' "
               "title 'rejected at once', "
               "'' using 1:($3 > 0 ? $3 : 1/0) with impulses lw 4 lc rgb '#d62728' "
               "title 'failed', "
               "'' using 1:($9 > 0 ? $9 : 1/0) with points pt 7 ps 1.2 lc rgb '#000000' "
               "title 'reads unanswered, a server up'\n"
               "set ylabel 'latency ms, all calls'\nset yrange [*:*]\nset xlabel 'seconds'\n"
               "plot ");
    gp_string(f, csv);
    fprintf(f, " using 1:6 with steps lw 2 lc rgb '#444444' title 'p50', "
               "'' using 1:7 with steps lw 2 lc rgb '#9467bd' title 'p99'\n"
               "unset multiplot\n");
    return fclose(f);
}

/* Run gnuplot on the script; false (with a message) when it is missing. */
static bool run_gnuplot(const char *script_path)
{
    extern char **environ;
    char *argv[] = {"gnuplot", (char *)script_path, NULL};
    pid_t pid;
    int st;

    if (posix_spawnp(&pid, "gnuplot", NULL, NULL, argv, environ) != 0)
        return false;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* ------------------------------------------------------------- summary */

typedef struct write_check {
    long long acked, acked_present, refused, refused_present, ambiguous,
        ambiguous_present;
    bool checked;
    char why[640];
} write_check;

/* Every write the workers tried, against what the final primary holds. */
static void check_writes(write_check *wc)
{
    char runbuf[24];
    const char *vals[] = {runbuf};
    pgg_call call = {.timeout_ms = 5000};
    PGresult *r = NULL;
    pgg_error e;
    unsigned char *present;
    long long n = atomic_load(&D.next_id);

    memset(wc, 0, sizeof *wc);
    snprintf(runbuf, sizeof runbuf, "%lld", D.run_id);
    /* The breakers may still be open from the outage: give them time. */
    for (double end = now_ms() + 15000; now_ms() < end;) {
        r = pgg_exec_params(D.pool, PGG_READ_PRIMARY,
                            "SELECT id FROM pgguard_demo_writes WHERE run = $1", 1, NULL, vals,
                            NULL, NULL, &call, NULL, &e);
        if (r && PQresultStatus(r) == PGRES_TUPLES_OK)
            break;
        PQclear(r);
        r = NULL;
        sleep_ms(200);
    }
    if (!r) {
        snprintf(wc->why, sizeof wc->why, "%s: %s", pgg_err_name(e.code), e.message);
        return;
    }
    if (n > MAX_WRITES)
        n = MAX_WRITES;
    present = calloc((size_t)n + 1, 1);
    if (!present) {
        PQclear(r);
        snprintf(wc->why, sizeof wc->why, "out of memory");
        return;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        long long id = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        if (id > 0 && id < n)
            present[id] = 1;
    }
    PQclear(r);
    for (long long id = 1; id < n; id++) {
        switch (D.wstate[id]) {
        case W_ACKED:
            wc->acked++;
            wc->acked_present += present[id];
            break;
        case W_REFUSED:
            wc->refused++;
            wc->refused_present += present[id];
            break;
        case W_AMBIGUOUS:
            wc->ambiguous++;
            wc->ambiguous_present += present[id];
            break;
        default:
            break;
        }
    }
    free(present);
    wc->checked = true;
}

static const char *code_label(int slot)
{
    return slot == NCODES ? "SQL error" : slot == 0 ? "other" : pgg_err_name(-slot);
}

/* Why a read with a server up could still go unanswered, per error code. */
static const char *code_hint(int slot)
{
    if (slot == -PGG_ETIMEDOUT)
        return "a hung server used the whole deadline: no time left for another";
    if (slot == -PGG_EOPEN)
        return "breakers still open (backed off) when the servers came back";
    if (slot == -PGG_EBULKHEAD)
        return "the bulkhead was full";
    return "";
}

static void print_summary(const write_check *wc, const char *csv, const char *events,
                          const char *png, bool plotted)
{
    unsigned tot[OUT__COUNT] = {0};
    unsigned reads = 0;
    const char *bold = D.tty ? "\033[1m" : "", *plain = D.tty ? "\033[0m" : "";
    const char *promoted = node_name(atomic_load(&D.promoted));

    for (int o = 0; o < OUT__COUNT; o++)
        for (int op = 0; op < OP__COUNT; op++) {
            tot[o] += D.calls[op][o];
            if (op != OP_WRITE)
                reads += D.calls[op][o];
        }
    printf("\n%spgguard-demo summary%s: %.0f s, %d workers, %s, %d servers\n", bold, plain,
           (now_ms() - D.t0) / 1000.0, D.workers,
           D.external ? "external servers (no faults injected)" : "a local cluster",
           D.nhosts);
    printf("  calls: %u answered live, %u from the cache, %u failed, %u rejected at once\n\n",
           tot[OUT_OK], tot[OUT_FALLBACK], tot[OUT_FAILED], tot[OUT_REJECTED]);

    printf("  %-44s %u of %u reads  (goal 0)\n", "failed reads while a source was healthy",
           D.unserved_healthy_total, reads);
    if (D.unserved_detecting)
        printf("      and %u within %.1f s of a server's return, before a health round "
               "could see it (detection latency, not counted above)\n",
               D.unserved_detecting, DETECT_WINDOW_S);
    for (int ph = 0; ph < 16; ph++)
        for (int c = 0; c <= NCODES; c++)
            if (D.unserved_healthy[ph][c])
                printf("      %u x %s during \"%s\"%s%s\n", D.unserved_healthy[ph][c],
                       code_label(c), script[ph < NSTEPS ? ph : 0].title,
                       *code_hint(c) ? ": " : "", code_hint(c));
    if (D.max_over_ms > 0)
        printf("  %-44s %.1f ms  (a %s with a %d ms deadline)\n", "longest wait past a deadline",
               D.max_over_ms, op_names[D.max_over_op], D.max_over_timeout);
    else
        printf("  %-44s none: every call returned before its deadline\n",
               "longest wait past a deadline");
    printf("  %-44s %u; %u of %u cacheable reads while every server was down",
           "reads served from the cache (stale)", tot[OUT_FALLBACK], D.cached_down_served,
           D.cached_down);
    if (tot[OUT_FALLBACK])
        printf(" (oldest %.1f s)", (double)D.max_cache_age_ms / 1000.0);
    printf("\n");
    for (int c = 0; c <= NCODES; c++)
        if (D.cached_down_unserved[c])
            printf("      %u cacheable reads unanswered with every server down: %s\n",
                   D.cached_down_unserved[c], code_label(c));
    if (D.unserved_down)
        printf("      %u plain reads while every server was down: nothing could answer them\n",
               D.unserved_down);

    if (D.promote_asked_at > 0 && D.followed_at > 0) {
        printf("  %-44s %.0f ms  (pg_ctl promote -> first write acknowledged by %s)\n",
               "time to follow the promotion", D.followed_at - D.promote_asked_at, promoted);
        if (D.promoted_at > 0)
            printf("      the server left recovery after %.0f ms", D.promoted_at - D.promote_asked_at);
        if (D.role_seen_at > 0)
            printf("; the pool reported it primary after %.0f ms",
                   D.role_seen_at - D.promote_asked_at);
        printf("\n");
        if (D.primary_stopped_at > 0)
            printf("      writes had no primary for %.1f s (stop -> first write on %s; the "
                   "script waits %.0f s before promoting)\n",
                   (D.followed_at - D.primary_stopped_at) / 1000.0, promoted,
                   script[4].at - script[3].at);
    } else if (D.promote_asked_at > 0) {
        printf("  %-44s never: no write reached %s\n", "time to follow the promotion", promoted);
    } else {
        printf("  %-44s no promotion in this run\n", "time to follow the promotion");
    }

    if (wc->checked) {
        printf("  %-44s %lld acknowledged, %lld present, %lld missing  (goal 0 missing)\n",
               "writes acknowledged vs on the final primary", wc->acked, wc->acked_present,
               wc->acked - wc->acked_present);
        printf("      %lld got no answer (deadline, connection lost): %lld of them committed\n",
               wc->ambiguous, wc->ambiguous_present);
        printf("      %lld refused before reaching a server or by it: %lld of them present%s\n",
               wc->refused, wc->refused_present, wc->refused_present ? "  (!)" : "");
    } else {
        printf("  writes: could not read the final primary: %s\n", wc->why);
    }
    printf("\n  timeline  %s\n  events    %s\n", csv, events);
    if (plotted)
        printf("  plot      %s\n", png);
    else if (D.plot)
        printf("  plot      none: gnuplot failed or is not installed (apt-get install gnuplot-nox)\n");
}

/* --------------------------------------------------------------- setup */

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [options] [PRIMARY_CONNINFO [REPLICA_CONNINFO...]]\n"
            "  Without servers, starts a throwaway primary and two replicas on 127.0.0.1.\n"
            "  With servers (libpq conninfos, primary first), runs the workload against\n"
            "  them and skips the faults it cannot inject.  The demo creates the table\n"
            "  pgguard_demo_writes on the primary and the harness's fixture tables.\n"
            "options:\n"
            "  -w N          worker threads (default 4)\n"
            "  -o DIR        where the timeline, events and plot go (default pgguard-demo-out)\n"
            "  --plain       plain lines even on a terminal\n"
            "  --no-plot     no PNG\n"
            "  --settings S  extra guard settings, 'key=value ...'\n",
            argv0);
}

static int parse_args(int argc, char **argv, int *first_server)
{
    D.workers = 4;
    D.outdir = "pgguard-demo-out";
    D.tty = isatty(STDOUT_FILENO);
    D.plot = true;
    D.settings = getenv("PGGUARD_SETTINGS");
    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-w") == 0 && i + 1 < argc)
            D.workers = atoi(argv[++i]);
        else if (strcmp(a, "-o") == 0 && i + 1 < argc)
            D.outdir = argv[++i];
        else if (strcmp(a, "--plain") == 0)
            D.tty = false;
        else if (strcmp(a, "--no-plot") == 0)
            D.plot = false;
        else if (strcmp(a, "--settings") == 0 && i + 1 < argc)
            D.settings = argv[++i];
        else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(argv[0]);
            exit(0);
        } else if (a[0] == '-') {
            usage(argv[0]);
            return -1;
        } else
            break;
    }
    if (D.workers < 1 || D.workers > 256) {
        fprintf(stderr, "-w: between 1 and 256 workers\n");
        return -1;
    }
    *first_server = i;
    return 0;
}

/*
 * Servers on the command line reach the harness through its environment
 * variables: it then wraps them (checks roles, loads its fixture) and
 * answers every fault with PGH_ENOTSUP.
 */
static int use_external(int argc, char **argv, int first)
{
    size_t len = 1;
    char *replicas;

    if (first >= argc)
        return 0;
    for (int i = first + 1; i < argc; i++) {
        if (strchr(argv[i], ',')) {
            fprintf(stderr, "a replica's conninfo may not contain a comma\n");
            return -1;
        }
        len += strlen(argv[i]) + 1;
    }
    replicas = calloc(len, 1);
    if (!replicas)
        return -1;
    for (int i = first + 1; i < argc; i++) {
        if (i > first + 1)
            strcat(replicas, ",");
        strcat(replicas, argv[i]);
    }
    setenv("PGGUARD_TEST_PRIMARY", argv[first], 1);
    setenv("PGGUARD_TEST_REPLICAS", replicas, 1);
    free(replicas);
    return 0;
}

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static pgg_pool *make_pool(char *errbuf, size_t len)
{
    char *ci = pgh_cluster_conninfo(D.cluster);
    pgg_config *cfg = pgg_config_new();
    pgg_pool *pool = NULL;
    pgg_error e;

    if (!ci || !cfg) {
        snprintf(errbuf, len, "out of memory");
        goto out;
    }
    if (pgg_config_set_servers(cfg, ci, &e) != PGG_OK ||
        pgg_config_parse(cfg, demo_settings, &e) != PGG_OK ||
        (D.settings && pgg_config_parse(cfg, D.settings, &e) != PGG_OK)) {
        snprintf(errbuf, len, "configuration: %s", e.message);
        goto out;
    }
    pool = pgg_pool_new(cfg, &e);
    if (!pool)
        snprintf(errbuf, len, "pgg_pool_new: %s: %s", pgg_err_name(e.code), e.message);
out:
    free(ci); /* it may hold a password: never printed */
    pgg_config_free(cfg);
    return pool;
}

/* Wait until the pool knows every server's role, as it would in a service
 * that has been up for a while. */
static bool wait_roles(int timeout_ms)
{
    for (double end = now_ms() + timeout_ms; now_ms() < end;) {
        bool all = true;
        for (int i = 0; i < D.nhosts; i++) {
            pgg_host_stats h;
            if (pgg_pool_host_stats(D.pool, i, &h) != PGG_OK || h.role == PGG_ROLE_UNKNOWN)
                all = false;
        }
        if (all)
            return true;
        sleep_ms(20);
    }
    return false;
}

static int setup_schema(void)
{
    pgg_error e;
    pgg_call call = {.timeout_ms = 10000};
    PGresult *r = pgg_exec(D.pool, PGG_WRITE,
                           "CREATE TABLE IF NOT EXISTS pgguard_demo_writes ("
                           " run bigint NOT NULL, id bigint NOT NULL, worker int NOT NULL,"
                           " at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run, id))",
                           &call, NULL, &e);
    int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "creating pgguard_demo_writes: %s: %s\n", pgg_err_name(e.code),
                e.message);
    PQclear(r);
    if (!ok || D.external || D.nhosts < 2)
        return ok ? 0 : -1;
    /*
     * Synchronous replication to any one replica: a write is acknowledged
     * once a replica has it, so promoting the most advanced replica loses
     * none.  Asynchronous replication would lose the last commits before
     * a crash, whatever the client library does.
     */
    char sql[512];
    size_t n = (size_t)snprintf(sql, sizeof sql,
                                "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (");
    for (int i = 1; i < D.nhosts; i++)
        n += (size_t)snprintf(sql + n, sizeof sql - n, "%s%s", i > 1 ? ", " : "", D.names[i]);
    snprintf(sql + n, sizeof sql - n, ")'");
    if (pgh_node_exec(node_at(0), sql) != 0 ||
        pgh_node_exec(node_at(0), "SELECT pg_reload_conf()") != 0) {
        fprintf(stderr, "synchronous replication: %s\n", pgh_node_error(node_at(0)));
        return -1;
    }
    return 0;
}

static int init_state(void)
{
    pthread_mutex_init(&D.mu, NULL);
    pthread_mutex_init(&D.ev_mu, NULL);
    pthread_mutex_init(&D.out_mu, NULL);
    atomic_store(&D.promoted, -1);
    atomic_store(&D.next_id, 1);
    D.run_id = (long long)time(NULL) * 100000 + getpid() % 100000;
    D.t_end = script[NSTEPS - 1].at;
    D.secs = calloc(MAX_SECONDS, sizeof *D.secs);
    D.events = calloc(MAX_EVENTS, sizeof *D.events);
    D.wstate = calloc(MAX_WRITES, 1);
    if (!D.secs || !D.events || !D.wstate) {
        fprintf(stderr, "out of memory\n");
        return -1;
    }
    return 0;
}

static void free_state(void)
{
    /* The pool first: its health thread may still be in our listener. */
    pgg_pool_free(D.pool);
    pgh_cluster_free(D.cluster);
    for (int s = 0; D.secs && s < MAX_SECONDS; s++)
        free(D.secs[s].lat);
    free(D.secs);
    free(D.events);
    free(D.wstate);
    pthread_mutex_destroy(&D.mu);
    pthread_mutex_destroy(&D.ev_mu);
    pthread_mutex_destroy(&D.out_mu);
}

/* The servers, the pool over them, the table, the output directory. */
static int start(bool given)
{
    char err[2048];

    printf("pgguard-demo %s: %s\n", pgg_version(),
           given ? "using the servers given" : "starting a primary and two replicas on 127.0.0.1");
    fflush(stdout);
    D.cluster = pgh_cluster_start(2, err, sizeof err);
    if (!D.cluster) {
        fprintf(stderr, "cluster: %s\n", err);
        return -1;
    }
    D.external = pgh_cluster_is_external(D.cluster);
    D.nhosts = 1 + pgh_cluster_replica_count(D.cluster);
    for (int i = 0; i < D.nhosts; i++) {
        snprintf(D.names[i], sizeof D.names[i], "%s", pgh_node_name(node_at(i)));
        set_up(i);
    }
    D.pool = make_pool(err, sizeof err);
    if (!D.pool) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    pgg_pool_on_event(D.pool, on_pool_event, NULL);
    if (!wait_roles(10000))
        fprintf(stderr, "warning: the pool did not learn every role within 10 s\n");
    if (setup_schema() != 0)
        return -1;
    if (mkdir_p(D.outdir) != 0) {
        fprintf(stderr, "%s: %s\n", D.outdir, strerror(errno));
        return -1;
    }
    printf("%d servers ready; %d workers for %.0f s; output in %s/\n", D.nhosts, D.workers,
           D.t_end, D.outdir);
    fflush(stdout);
    return 0;
}

/* The workers, the view and the script, until the script's end or ^C. */
static int run(void)
{
    pthread_t *workers = calloc((size_t)D.workers, sizeof *workers), script_t, view_t;

    if (!workers) {
        fprintf(stderr, "out of memory\n");
        return -1;
    }
    if (D.tty)
        printf("\033[?25l"); /* no cursor blinking over the view */
    D.t0 = now_ms();
    log_event("FAULT", "%s", script[0].title);
    for (int i = 0; i < D.workers; i++)
        pthread_create(&workers[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    pthread_create(&view_t, NULL, run_view, NULL);
    pthread_create(&script_t, NULL, run_script, NULL);
    pthread_join(script_t, NULL);
    atomic_store(&D.stop, true);
    for (int i = 0; i < D.workers; i++)
        pthread_join(workers[i], NULL);
    pthread_join(view_t, NULL);
    if (D.tty)
        printf("\033[?25h");
    free(workers);
    return 0;
}

/* The files and the summary; 3 when an acknowledged write went missing. */
static int report(void)
{
    char csv[4200], evs[4200], gp[4200], png[4200];
    write_check wc;
    bool plotted = false;

    snprintf(csv, sizeof csv, "%s/timeline.csv", D.outdir);
    snprintf(evs, sizeof evs, "%s/events.csv", D.outdir);
    snprintf(gp, sizeof gp, "%s/timeline.gp", D.outdir);
    snprintf(png, sizeof png, "%s/timeline.png", D.outdir);
    printf("\nchecking every write against the final primary...\n");
    fflush(stdout);
    check_writes(&wc);
    if (write_timeline(csv) != 0 || write_events(evs) != 0)
        fprintf(stderr, "writing %s: %s\n", D.outdir, strerror(errno));
    if (D.plot && write_plot_script(gp, csv, png) == 0)
        plotted = run_gnuplot(gp);
    print_summary(&wc, csv, evs, png, plotted);
    return wc.checked && wc.acked != wc.acked_present ? 3 : 0;
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    int first, status = 1;

    if (parse_args(argc, argv, &first) != 0 || use_external(argc, argv, first) != 0)
        return 2;
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (init_state() == 0 && start(first < argc) == 0 && run() == 0)
        status = report();
    fflush(stdout);
    free_state();
    return status;
}
