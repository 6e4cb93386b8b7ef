/*
 * The chaos soak: sixteen threads of reads, writes and lease transactions
 * on one pool over a primary and a synchronous streaming replica, while a
 * fault chosen at random (seeded; the seed is printed) hits the cluster
 * about every two seconds:
 *
 *   kill9      kill -9 of one client backend (the server restarts every
 *              session and runs crash recovery)
 *   hang       SIGSTOP of a server and its children, SIGCONT 0.3-2.5 s later
 *   restart    immediate stop, then start again
 *   terminate  pg_terminate_backend() of every client backend
 *   promote    immediate stop of the primary, promotion of the replica, and
 *              the old primary rebuilt with pg_basebackup as its replica
 *
 * Checks, each printed with its figures:
 *   - no call fails in a way no fault explains, no read returns wrong rows;
 *   - every acknowledged write is on the final primary (synchronous
 *     replication: a promoted replica has every acknowledged commit);
 *   - no call ends more than WL_OVERSHOOT_MS past its deadline;
 *   - the pool's accounting balances at the end, and nothing leaks
 *     (LeakSanitizer, in the sanitizer build);
 *   - breaker refusals (PGG_EOPEN) end within REFUSAL_GRACE_MS of the end
 *     of the fault that caused them: the pool may need one health round to
 *     see a host answer again, no more.
 * A crash of this process fails the test by itself.
 *
 *   soak [seconds]   (default: PGGUARD_SOAK_SECONDS, else 60)
 *   PGGUARD_SOAK_SEED=N repeats a run's choice of faults.
 *   PGGUARD_SOAK_SETTINGS='key=value ...' adds pool settings (after the
 *   soak's own), e.g. to soak a breaker configuration of your own.
 *
 * Loopback only; bounded in time: the faults stop a few seconds before the
 * end so that the tail shows recovery (a promotion's rebuild may push the
 * end by a few seconds), then everything is torn down.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "harness.h"
#include "pgguard.h"
#include "workload.h"

#define THREADS 16
#define CALL_TIMEOUT_MS 1000
#define HEALTH_INTERVAL_MS 200
/* One health round, plus a probe's connect and query on a loaded host. */
#define REFUSAL_GRACE_MS (HEALTH_INTERVAL_MS + 100)
/* The load runs this long after the last fault has ended. */
#define QUIET_TAIL_MS 4000
/* ... and at least this long, when the last fault ran into the tail. */
#define MIN_TAIL_MS 2000
#define FAULT_EVERY_MS 2000
#define HEAL_TIMEOUT_MS 60000

/* Library defaults for the breaker: the soak checks what users get.  Only
 * the health interval is shorter than the default, for a faster soak. */
#define SOAK_SETTINGS                                                        \
    "health_interval_ms=200 connect_timeout_ms=1000 call_timeout_ms=1000 "   \
    "pool_max=8 bulkhead.max_concurrent=16 bulkhead.max_wait_ms=200 "        \
    "cancel_timeout_ms=500"

typedef enum { F_KILL9, F_HANG, F_RESTART, F_TERMINATE, F_PROMOTE, F_REBUILD, F__N } fault_kind;
static const char *const fault_name[F__N] = {"kill9",     "hang",    "restart",
                                             "terminate", "promote", "rebuild"};

typedef struct fault_rec {
    fault_kind kind;
    const char *node;
    double from, to; /* ms on the workload's clock */
} fault_rec;

static int failures;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            failures++;                                                      \
            printf("FAIL: " __VA_ARGS__);                                    \
            printf("\n");                                                    \
        }                                                                    \
    } while (0)

static uint64_t rnd(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void print_load(const char *when)
{
    char buf[128] = "";
    FILE *f = fopen("/proc/loadavg", "r");

    if (f) {
        if (!fgets(buf, sizeof buf, f))
            buf[0] = '\0';
        fclose(f);
    }
    buf[strcspn(buf, "\n")] = '\0';
    printf("soak: load average %s: %s (%ld CPUs)\n", when, buf, sysconf(_SC_NPROCESSORS_ONLN));
}

/* ---------------------------------------------------------------- cluster */

static pgh_cluster *cluster;
static pgh_node *primary, *replica; /* current roles */
static bool sync_on;

static bool accepting(pgh_node *n)
{
    char err[256];
    PGconn *conn;

    if (!pgh_node_pid(n))
        return false;
    conn = pgh_connect(pgh_node_conninfo(n), 1000, NULL, err, sizeof err);
    if (!conn)
        return false;
    PQfinish(conn);
    return true;
}

static int set_sync(pgh_node *n, bool on)
{
    if (pgh_node_exec(n, on ? "ALTER SYSTEM SET synchronous_standby_names = '*'"
                            : "ALTER SYSTEM SET synchronous_standby_names = ''") != 0 ||
        pgh_node_exec(n, "SELECT pg_reload_conf()") != 0)
        return -1;
    sync_on = on;
    return 0;
}

/*
 * Wait until the fault is over: both servers accept connections, and with
 * synchronous replication on, the replica streams as the primary's
 * synchronous standby and has replayed everything.  Returns false when that
 * never happened (the cluster is broken: the soak cannot go on).
 */
static bool wait_healed(void)
{
    double end = pgh_now_ms() + HEAL_TIMEOUT_MS;
    char v[32];

    while (pgh_now_ms() < end) {
        if (!accepting(primary) || !accepting(replica)) {
            sleep_ms(20);
            continue;
        }
        if (sync_on &&
            (pgh_node_query_value(primary,
                                  "SELECT count(*) FROM pg_stat_replication "
                                  "WHERE sync_state = 'sync' AND state = 'streaming'",
                                  v, sizeof v) != 0 ||
             strcmp(v, "1") != 0)) {
            sleep_ms(20);
            continue;
        }
        if (pgh_node_wait_replay(replica, primary, 5000) != 0)
            continue;
        return true;
    }
    printf("soak: the cluster did not heal within %d ms (%s: %s; %s: %s)\n", HEAL_TIMEOUT_MS,
           pgh_node_name(primary), pgh_node_error(primary), pgh_node_name(replica),
           pgh_node_error(replica));
    return false;
}

static int kills_missed; /* kill9 faults that found no session to kill */

/* kill -9 of one client backend of n (a no-op, counted, when n has none). */
static void kill_a_backend(pgh_node *n)
{
    char pid[32];

    if (pgh_node_query_value(n,
                             "SELECT pid FROM pg_stat_activity "
                             "WHERE backend_type = 'client backend' "
                             "AND pid <> pg_backend_pid() ORDER BY random() LIMIT 1",
                             pid, sizeof pid) != 0 || !pid[0]) {
        kills_missed++;
        return;
    }
    if (kill((pid_t)atol(pid), SIGKILL) != 0)
        printf("soak: kill -9 %s: %s\n", pid, strerror(errno));
    /* the postmaster notices its child's death and resets every session */
    sleep_ms(50);
}

/* Run one fault, appending its window(s) to f.  false: the cluster broke. */
static bool inject(fault_kind k, uint64_t r, wl *w, fault_rec *f, int *nf)
{
    pgh_node *n = (r >> 8) % 2 ? primary : replica;
    fault_rec *rec = &f[(*nf)++];

    rec->kind = k;
    rec->node = pgh_node_name(n);
    rec->from = wl_elapsed_ms(w);
    switch (k) {
    case F_KILL9:
        kill_a_backend(n);
        break;
    case F_HANG:
        if (pgh_node_hang(n) != 0)
            return false;
        sleep_ms(300 + (int)((r >> 16) % 2200)); /* often past a call's deadline */
        if (pgh_node_resume(n) != 0)
            return false;
        break;
    case F_RESTART:
        if (pgh_node_stop(n, PGH_STOP_IMMEDIATE) != 0)
            return false;
        sleep_ms(100 + (int)((r >> 16) % 400));
        if (pgh_node_start(n) != 0)
            return false;
        break;
    case F_TERMINATE:
        if (pgh_node_terminate_backends(n) != 0)
            return false;
        break;
    case F_PROMOTE: {
        pgh_node *old = primary;

        rec->node = pgh_node_name(replica);
        if (pgh_node_stop(old, PGH_STOP_IMMEDIATE) != 0 || pgh_node_promote(replica) != 0)
            return false;
        primary = replica;
        replica = old;
        /* no standby until the rebuild: commits must not wait for one */
        if (set_sync(primary, false) != 0)
            return false;
        rec->to = wl_elapsed_ms(w);
        rec = &f[(*nf)++];
        rec->kind = F_REBUILD;
        rec->node = pgh_node_name(old);
        rec->from = f[*nf - 2].to;
        if (pgh_node_rebuild_replica(old, primary) != 0 || set_sync(primary, true) != 0)
            return false;
        break;
    }
    default:
        break;
    }
    if (!wait_healed())
        return false;
    rec->to = wl_elapsed_ms(w);
    return true;
}

/* ---------------------------------------------------------------- checks */

/*
 * Refusal windows against fault windows.  The faults run one after another,
 * so the time line splits at each fault's start: a refusal between the
 * start of fault j and the start of fault j+1 is j's doing, and must come
 * at most REFUSAL_GRACE_MS after j's end; a refusal before the first fault
 * has no cause at all.  A refusal that runs on from one fault into the next
 * is judged in both parts.  Prints one line per fault that caused
 * refusals; returns how many faults' refusals went past the grace, plus
 * one when some refusal had no cause.
 */
static int check_refusals(wl *w, const fault_rec *f, int nf)
{
    int n, bad = 0, *count = calloc((size_t)nf + 1, sizeof *count);
    const wl_window *rw = wl_refusals(w, &n);
    double *last = calloc((size_t)nf + 1, sizeof *last);
    double *total = calloc((size_t)nf + 1, sizeof *total);
    double all = 0, worst = 0, uncaused = 0;

    if (!count || !last || !total) {
        printf("soak: out of memory\n");
        exit(1);
    }
    for (int i = 0; i < n; i++) {
        all += rw[i].to - rw[i].from;
        if (nf == 0 || rw[i].from < f[0].from)
            uncaused += (nf == 0 || rw[i].to < f[0].from ? rw[i].to : f[0].from) - rw[i].from +
                        1e-3;
        for (int j = 0; j < nf; j++) {
            double s0 = f[j].from, s1 = j + 1 < nf ? f[j + 1].from : 1e18;
            double x = rw[i].from > s0 ? rw[i].from : s0;
            double y = rw[i].to < s1 ? rw[i].to : s1;

            if (rw[i].from >= s1 || rw[i].to < s0)
                continue;
            count[j]++;
            total[j] += y - x;
            if (y > last[j])
                last[j] = y;
        }
    }
    printf("soak: refusals (PGG_EOPEN) by the fault that caused them; grace %d ms after its "
           "end:\n", REFUSAL_GRACE_MS);
    if (uncaused > 0) {
        printf("soak:   refusals before any fault: %.0f ms  <-- no cause\n", uncaused);
        bad++;
    }
    for (int j = 0; j < nf; j++) {
        double late;

        if (!count[j])
            continue;
        late = last[j] > f[j].to ? last[j] - f[j].to : 0;
        if (late > worst)
            worst = late;
        printf("soak:   %-9s %-8s %8.0f .. %8.0f ms (%5.0f ms): %3d refusal windows, %5.0f ms "
               "in all, the last ending %6.0f ms past the fault%s\n",
               fault_name[f[j].kind], f[j].node, f[j].from, f[j].to, f[j].to - f[j].from,
               count[j], total[j], late, late > REFUSAL_GRACE_MS ? "  <-- too long" : "");
        if (late > REFUSAL_GRACE_MS)
            bad++;
    }
    printf("soak: refusals: %d windows, %.0f ms in all, the latest %.0f ms past its fault's "
           "end; %d fault(s) past the grace\n", n, all, worst, bad);
    free(count);
    free(last);
    free(total);
    return bad;
}

static long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    char *end;
    long x;

    if (!v || !*v)
        return dflt;
    x = strtol(v, &end, 10);
    return *end || x <= 0 ? dflt : x;
}

/* A pool over both servers with the soak's settings (and extra), once the
 * health thread knows both roles.  NULL on failure (printed). */
static pgg_pool *start_pool(const char *extra)
{
    pgg_config *cfg = pgg_config_new();
    char *ci = pgh_cluster_conninfo(cluster);
    pgg_pool *pool = NULL;
    pgg_error e;

    pgg_error_clear(&e);
    if (cfg && ci && pgg_config_set_servers(cfg, ci, &e) == PGG_OK &&
        pgg_config_parse(cfg, SOAK_SETTINGS, &e) == PGG_OK &&
        (!extra || pgg_config_parse(cfg, extra, &e) == PGG_OK))
        pool = pgg_pool_new(cfg, &e);
    free(ci);
    pgg_config_free(cfg);
    if (!pool) {
        printf("FAIL: pool: %s\n", e.message);
        return NULL;
    }
    for (double end = pgh_now_ms() + 10000; pgh_now_ms() < end; sleep_ms(20)) {
        pgg_host_stats a, b;

        pgg_pool_host_stats(pool, 0, &a);
        pgg_pool_host_stats(pool, 1, &b);
        if (a.role == PGG_ROLE_PRIMARY && b.role == PGG_ROLE_STANDBY)
            return pool;
    }
    printf("FAIL: the pool did not learn the servers' roles within 10 s\n");
    pgg_pool_free(pool);
    return NULL;
}

/*
 * Inject faults until QUIET_TAIL_MS before the end, then let the load run
 * on (at least MIN_TAIL_MS past the last fault).  Fills f (room for cap
 * records) and per_kind.  false when the cluster broke.
 */
static bool run_faults(wl *w, long seconds, uint64_t *rs, fault_rec *f, int cap, int *nf,
                       int per_kind[F__N])
{
    double stop_faults = (double)seconds * 1000 - QUIET_TAIL_MS, until;

    for (;;) {
        uint64_t r = rnd(rs);
        int wait = FAULT_EVERY_MS / 2 + (int)(r % FAULT_EVERY_MS); /* 1..3 s */
        fault_kind k = (fault_kind)((r >> 32) % (F_PROMOTE + 1));

        if (wl_elapsed_ms(w) + wait >= stop_faults || *nf + 2 > cap)
            break;
        sleep_ms(wait);
        printf("soak: %8.0f ms: %s\n", wl_elapsed_ms(w), fault_name[k]);
        per_kind[k]++;
        if (!inject(k, r >> 12, w, f, nf))
            return false;
        printf("soak: %8.0f ms: %s over (%s, %.0f ms)\n", wl_elapsed_ms(w), fault_name[k],
               f[*nf - 1].node, f[*nf - 1].to - f[*nf - 1].from);
    }
    /* a fault that ran long (a rebuild) still gets a tail to show recovery */
    until = (double)seconds * 1000;
    if (*nf > 0 && f[*nf - 1].to + MIN_TAIL_MS > until)
        until = f[*nf - 1].to + MIN_TAIL_MS;
    while (wl_elapsed_ms(w) < until)
        sleep_ms(50);
    return true;
}

/* Every check of the header comment but the leak check, which comes after
 * everything is freed. */
static void check_results(wl *w, pgg_pool *pool, const fault_rec *f, int nf, bool broken,
                          long seconds)
{
    wl_totals t;
    long missing;
    int too_long;

    wl_print(w, "soak");
    wl_totals_get(w, &t);
    CHECK(!broken, "the cluster broke under the faults (see above)");
    CHECK(t.unexpected == 0, "%" PRIu64 " failures no fault explains", t.unexpected);
    CHECK(t.wrong_answers == 0, "%" PRIu64 " wrong answers", t.wrong_answers);
    CHECK(t.overshoots == 0, "%" PRIu64 " calls ended more than %.0f ms past their deadline "
          "(worst %.1f ms)", t.overshoots, WL_OVERSHOOT_MS, t.worst_overshoot_ms);
    CHECK(t.reads > 0 && t.writes > 0 && t.leases > 0, "some kind of call never succeeded");
    CHECK(nf > 0 || seconds * 1000 <= QUIET_TAIL_MS + FAULT_EVERY_MS, "no fault was injected");
    if (!broken || accepting(primary)) {
        missing = wl_missing_writes(w, primary);
        printf("soak: acknowledged writes missing on the final primary: %ld of %" PRIu64 "\n",
               missing, t.acked);
        CHECK(missing == 0, "%ld acknowledged writes missing", missing);
    }
    CHECK(wl_pool_unbalanced(pool) == 0, "the pool's accounting does not balance");
    too_long = check_refusals(w, f, nf);
    CHECK(too_long == 0, "%d fault(s) caused refusals that outlasted them by more than %d ms "
          "(or had no cause)", too_long, REFUSAL_GRACE_MS);
}

int main(int argc, char **argv)
{
    long seconds = argc > 1 ? atol(argv[1]) : env_long("PGGUARD_SOAK_SECONDS", 60);
    uint64_t seed = (uint64_t)env_long("PGGUARD_SOAK_SEED", 0), rs;
    const char *extra = getenv("PGGUARD_SOAK_SETTINGS");
    wl_options o = {.threads = THREADS, .timeout_ms = CALL_TIMEOUT_MS, .backoff_ms = 5};
    int nfaults = 0, cap, per_kind[F__N] = {0};
    fault_rec *faults;
    char err[2048];
    pgg_pool *pool;
    bool broken;
    wl *w;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (seconds <= 0)
        seconds = 60;
    if (!seed)
        seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
    rs = o.seed = seed;
    printf("soak: %ld s, %d threads, a fault every ~%d ms, seed %" PRIu64
           " (PGGUARD_SOAK_SEED=%" PRIu64 " repeats it)\n",
           seconds, THREADS, FAULT_EVERY_MS, seed, seed);
    print_load("at the start");
    if (extra && *extra)
        printf("soak: extra settings: %s\n", extra);
    if (getenv("PGGUARD_TEST_PRIMARY") && *getenv("PGGUARD_TEST_PRIMARY"))
        pgh_skip("the soak injects faults: it needs servers of its own");

    cluster = pgh_cluster_start(1, err, sizeof err);
    if (!cluster) {
        printf("FAIL: cluster start: %s\n", err);
        return 1;
    }
    primary = pgh_cluster_primary(cluster);
    replica = pgh_cluster_replica(cluster, 0);
    if (set_sync(primary, true) != 0 || wl_setup(primary) != 0 || !wait_healed()) {
        printf("FAIL: setting up synchronous replication and the tables\n");
        pgh_cluster_free(cluster);
        return 1;
    }
    if (!(pool = start_pool(extra))) {
        pgh_cluster_free(cluster);
        return 1;
    }
    /* a promotion takes two records (promote, rebuild) */
    cap = (int)(seconds * 1000 / (FAULT_EVERY_MS / 2) + 2) * 2;
    faults = calloc((size_t)cap, sizeof *faults);
    w = faults ? wl_start(pool, &o) : NULL;
    if (!w) {
        printf("FAIL: starting the load\n");
        free(faults);
        pgg_pool_free(pool);
        pgh_cluster_free(cluster);
        return 1;
    }

    broken = !run_faults(w, seconds, &rs, faults, cap, &nfaults, per_kind);
    wl_stop(w);
    printf("soak: faults:");
    for (int k = 0; k <= F_PROMOTE; k++)
        printf(" %s %d", fault_name[k], per_kind[k]);
    printf(" (final primary: %s); %d kill9 found no session to kill\n", pgh_node_name(primary),
           kills_missed);
    check_results(w, pool, faults, nfaults, broken, seconds);

    wl_free(w);
    free(faults);
    pgg_pool_free(pool);
    pgh_cluster_free(cluster);
    CHECK(pgh_leak_check() == 0, "memory leaked (report above)");
    print_load("at the end");
    printf(failures ? "soak: FAILED (%d checks)\n" : "soak: passed\n", failures);
    return failures ? 1 : 0;
}
