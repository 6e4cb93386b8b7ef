/*
 * Recovery at the speed of the servers (issue 9): each test reproduces one
 * defect measured against real servers, and fails without its fix.
 * Terminated sessions, a write that met a standby, roles learnt from
 * answers, the health thread's incident mode, a hung replica under a short
 * deadline, startup refusals with their SQLSTATE, a protocol error that is
 * the caller's, one blip that must not open a breaker, and err telling the
 * call's final outcome.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "pgg_config.h"
#include "pool_util.h"
#include "role_util.h"

/* White box: roles set by hand to line up a write with a standby, and the
 * health thread's rounds. */
#include "health.h"
#include "pipeline.h"
#include "pool.h"

static void setup_table(pgh_cluster *c)
{
    make_table(c, "pgg_rec_t", "v", 10);
}

/* The health thread's events are delivered by the events thread (events.h):
 * what a test reads of them before it replaces the listener waits for
 * those raised so far. */
static void events_delivered(pgg_pool *p)
{
    pgg__events_flush(p->events);
}

/* Role and breaker changes, as the pool announced them. */
typedef struct seen {
    pthread_mutex_t mu;
    int unknown_roles; /* a host shown role unknown */
    int opened;        /* a breaker opened */
    int left_open;     /* a breaker left open (for half-open or closed) */
    int open_closed;   /* a breaker went from open straight to closed */
    int half_opened;   /* a breaker went half-open */
} seen;

static void on_event(const pgg_event *ev, void *ud)
{
    seen *s = ud;
    pthread_mutex_lock(&s->mu);
    if (ev->type == PGG_EVENT_ROLE && ev->to == PGG_ROLE_UNKNOWN)
        s->unknown_roles++;
    if (ev->type == PGG_EVENT_BREAKER && ev->to == PGG_BREAKER_OPEN)
        s->opened++;
    if (ev->type == PGG_EVENT_BREAKER && ev->from == PGG_BREAKER_OPEN)
        s->left_open++;
    if (ev->type == PGG_EVENT_BREAKER && ev->from == PGG_BREAKER_OPEN &&
        ev->to == PGG_BREAKER_CLOSED)
        s->open_closed++;
    if (ev->type == PGG_EVENT_BREAKER && ev->to == PGG_BREAKER_HALF_OPEN)
        s->half_opened++;
    pthread_mutex_unlock(&s->mu);
}

/* n idle pooled sessions on every host: leases held at once, released. */
static void hold_sessions(pgg_pool *p, pgg_intent intent, int n)
{
    pgg_lease *l[8];
    pgg_error e;

    for (int i = 0; i < n; i++) {
        l[i] = pgg_acquire(p, intent, 2000, NULL, &e);
        cr_assert_not_null(l[i], "acquire: %s", e.message);
    }
    for (int i = 0; i < n; i++)
        pgg_release(l[i]);
}

/* --------------------------------------------------- terminated sessions */

/*
 * pg_terminate_backend of every session: the idle pooled ones are found
 * dead before a statement is sent on them (one PQconsumeInput reads the
 * FATAL 57P01 as a notice and PQstatus stays OK), so no call fails, no
 * breaker opens, and the health thread, whose own session died too, never
 * shows a host of unknown role.
 */
Test(recovery, terminated_idle_sessions_cost_no_call)
{
    pgh_cluster *c = cluster_or_die(1);
    setup_table(c);
    /* Every idle session is checked before it is lent, whatever the
     * default of alive_check_after_idle_ms. */
    pgg_pool *p = pool_for(c, "alive_check_after_idle_ms=0");
    seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
    int failed = 0;

    hold_sessions(p, PGG_WRITE, 3);
    hold_sessions(p, PGG_READ, 3);
    pgg_pool_on_event(p, on_event, &s);
    for (int round = 0; round < 3; round++) {
        cr_assert_eq(pgh_node_terminate_backends(pgh_cluster_primary(c)), 0);
        cr_assert_eq(pgh_node_terminate_backends(pgh_cluster_replica(c, 0)), 0);
        sleep_ms(20); /* the FATAL and the close have reached our sockets */
        for (int i = 0; i < 6; i++) {
            pgg_call call = {.timeout_ms = 2000};
            pgg_info info;
            pgg_error e;
            PGresult *r = i % 2 ? pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = v WHERE id = 1",
                                           &call, &info, &e)
                                : pgg_exec(p, PGG_READ, "SELECT v FROM pgg_rec_t WHERE id = 1",
                                           &call, &info, &e);
            if (!r) {
                failed++;
                fprintf(stderr, "round %d call %d: %s %s (sent %d)\n", round, i,
                        pgg_err_name(e.code), e.message, info.sent);
            } else {
                cr_expect_eq(e.code, PGG_OK, "a served call's err: %s", pgg_err_name(e.code));
            }
            PQclear(r);
        }
        hold_sessions(p, PGG_WRITE, 3);
        hold_sessions(p, PGG_READ, 3);
    }
    sleep_ms(300); /* the health thread's probes on its dead sessions */
    pgg_pool_on_event(p, NULL, NULL);
    cr_expect_eq(failed, 0, "%d calls failed on terminated sessions", failed);
    cr_expect_eq(s.unknown_roles, 0, "a host was shown role unknown %d times", s.unknown_roles);
    cr_expect_eq(s.opened, 0, "%d breakers opened", s.opened);
    expect_hosts_untouched(p);
    end_test(p, c);
}

/*
 * The blip right behind an answer (the blocking path): the statement's
 * answer and the server's FATAL 57P01 (pg_terminate_backend of the session,
 * idle once it answered) arrive in one read.  libpq hands the FATAL to the
 * notice receiver and PQstatus stays OK, so the session looks reusable, and
 * the next borrow within alive_check_after_idle_ms does not look at it: a
 * write sent on it would fail as sent though the blip came before it.
 *
 * This binary interposes recv and send (libpq resolves them through the
 * executable first; glibc only): armed for the calling thread, the first
 * recv after the statement was sent first waits until the session's backend
 * is idle (its answer is on its way), terminates every session of ours and
 * waits until the server closed this one (its FATAL and end of connection
 * are in the socket behind the answer), then reads.
 */
#if defined(__GLIBC__)
#include <dlfcn.h>
#include <poll.h>
#include <sys/socket.h>

/* 0 off; 1 armed: the statement's send comes; 2 sent: the next recv meets
 * the blip; 3 in the blip (its own libpq calls pass through). */
static _Thread_local int blip_state;
static pgh_node *blip_node;
static int blip_done;
static ssize_t (*real_recv)(int, void *, size_t, int);
static ssize_t (*real_send)(int, const void *, size_t, int);

__attribute__((constructor)) static void blip_resolve(void)
{
    *(void **)&real_recv = dlsym(RTLD_NEXT, "recv");
    *(void **)&real_send = dlsym(RTLD_NEXT, "send");
    if (!real_recv || !real_send)
        abort();
}

static void blip_before_read(int fd)
{
    char v[32] = "";
    struct pollfd pf = {.fd = fd, .events = POLLRDHUP};

    /* The backend idle: it has sent the statement's answer. */
    for (int i = 0; i < 1000; i++) {
        if (pgh_node_query_value(blip_node,
                                 "select count(*) from pg_stat_activity "
                                 "where backend_type = 'client backend' "
                                 "and pid <> pg_backend_pid() and state = 'active'",
                                 v, sizeof v) == 0 &&
            strcmp(v, "0") == 0)
            break;
        sleep_ms(10);
    }
    if (strcmp(v, "0") != 0 || pgh_node_terminate_backends(blip_node) != 0)
        return;
    /* The server's close has reached this socket, behind the answer and
     * the FATAL. */
    for (int i = 0; i < 1000 && !(pf.revents & POLLRDHUP); i++)
        if (poll(&pf, 1, 10) < 0)
            return;
    blip_done = (pf.revents & POLLRDHUP) != 0;
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    if (blip_state == 1)
        blip_state = 2;
    return real_send(fd, buf, len, flags);
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    if (blip_state == 2) {
        blip_state = 3;
        blip_before_read(fd);
        blip_state = 0;
    }
    return real_recv(fd, buf, len, flags);
}

static int counter_value(pgh_cluster *c)
{
    char v[32];

    cr_assert_eq(pgh_node_query_value(pgh_cluster_primary(c),
                                      "select n from pgg_rec_n where id = 1", v, sizeof v),
                 0);
    return atoi(v);
}

/* A counter to write and a pooled session to reuse (its connect's reads
 * are not the blip's); events watched from here on. */
static void blip_setup(pgh_cluster *c, pgg_pool *p, seen *s)
{
    pgg_call call = {.timeout_ms = 10000};
    pgg_error e;
    PGresult *r;

    cr_assert_eq(pgh_node_exec(pgh_cluster_primary(c),
                               "DROP TABLE IF EXISTS pgg_rec_n;"
                               "CREATE TABLE pgg_rec_n (id int PRIMARY KEY, n int);"
                               "INSERT INTO pgg_rec_n VALUES (1, 0);"),
                 0);
    r = pgg_exec(p, PGG_WRITE, "SELECT 1", &call, NULL, &e);
    cr_assert_not_null(r, "warm-up: %s", e.message);
    PQclear(r);
    pgg_pool_on_event(p, on_event, s);
}

/* After the blip's write (the counter's first increment): four more at
 * once, on the same thread, all served and each applied once, and no
 * breaker opened. */
static void blip_after(pgh_cluster *c, pgg_pool *p, seen *s)
{
    const char *inc = "UPDATE pgg_rec_n SET n = n + 1 WHERE id = 1";
    pgg_call call = {.timeout_ms = 10000};
    pgg_info info;
    pgg_error e;
    PGresult *r;
    int failed = 0;

    for (int i = 0; i < 4; i++) {
        r = pgg_exec(p, PGG_WRITE, inc, &call, &info, &e);
        if (!r) {
            failed++;
            fprintf(stderr, "write %d after the blip: %s %s (sent %d)\n", i,
                    pgg_err_name(e.code), e.message, info.sent);
        }
        PQclear(r);
    }
    pgg_pool_on_event(p, NULL, NULL);
    cr_expect_eq(failed, 0, "%d writes failed after the blip", failed);
    cr_expect_eq(counter_value(c), 5 - failed, "each acknowledged write applied once");
    cr_expect_eq(s->opened, 0, "%d breakers opened", s->opened);
    end_test(p, c);
}

Test(recovery, a_session_ended_behind_its_answer_is_not_lent_again)
{
    pgh_cluster *c = cluster_or_die(0);
    /* The next borrow never looks at an idle session (not within the
     * default 100 ms, not ever here, whatever the machine's load): only
     * what the call itself saw can keep the session out. */
    pgg_pool *p = pool_for(c, "pool_max=2 alive_check_after_idle_ms=86400000");
    seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
    const char *inc = "UPDATE pgg_rec_n SET n = n + 1 WHERE id = 1";
    pgg_call call = {.timeout_ms = 10000};
    pgg_info info;
    pgg_error e;
    PGresult *r;

    blip_setup(c, p, &s);

    blip_node = pgh_cluster_primary(c);
    blip_state = 1;
    r = pgg_exec(p, PGG_WRITE, inc, &call, &info, &e);
    blip_state = 0;
    cr_assert(blip_done, "the blip did not come between the answer and its read");
    cr_expect_not_null(r, "the answered write failed: %s %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(info.attempts, 1);
    PQclear(r);
    /* At once, on the same thread: the session it came back on is over. */
    blip_after(c, p, &s);
}

/*
 * The same through a lease: its answer stands, and at release the session
 * is discarded, not pooled (lease_reset=off: no DISCARD ALL on release to
 * find the end first), so the next call does not send on it.
 */
Test(recovery, a_lease_session_ended_behind_its_answer_is_not_pooled_at_release)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "pool_max=2 alive_check_after_idle_ms=86400000 "
                              "lease_reset=off");
    seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
    const char *inc = "UPDATE pgg_rec_n SET n = n + 1 WHERE id = 1";
    pgg_error e;
    pgg_lease *l;
    PGresult *r;

    blip_setup(c, p, &s);

    l = pgg_acquire(p, PGG_WRITE, 10000, NULL, &e);
    cr_assert_not_null(l, "acquire: %s", e.message);
    blip_done = 0;
    blip_node = pgh_cluster_primary(c);
    blip_state = 1;
    r = pgg_lease_exec(l, inc, 10000, &e);
    blip_state = 0;
    cr_assert(blip_done, "the blip did not come between the answer and its read");
    cr_expect_not_null(r, "the lease's answered write failed: %s %s",
                       pgg_err_name(e.code), e.message);
    PQclear(r);
    pgg_release(l);
    blip_after(c, p, &s);
}
#endif

/* One long call on a thread: sql (a pg_sleep) under its deadline (0: 5 s;
 * BLIP_READ's first run ends at the blip). */
typedef struct blip_arg {
    pgg_pool *p;
    pgg_intent intent;
    const char *sql;
    int failed;
    int code;
    int host_index; /* the host that served it (-1: none) */
    int attempts;
    int timeout_ms;
} blip_arg;

static void *slow_call(void *arg)
{
    blip_arg *a = arg;
    pgg_call call = {.timeout_ms = a->timeout_ms ? a->timeout_ms : 5000};
    pgg_info info;
    pgg_error e;
    PGresult *r = pgg_exec(a->p, a->intent, a->sql, &call, &info, &e);

    a->host_index = info.host_index;
    a->attempts = info.attempts;
    if (!r) {
        a->failed = 1;
        a->code = e.code;
    }
    PQclear(r);
    return NULL;
}

/*
 * Eight reads in flight on the replicas when every backend is terminated:
 * each gets 57P01 on a pooled session.  That is one blip, not eight
 * failures: no breaker opens (before, three in a row opened it), and each
 * read runs again on a new connection of its replica and succeeds.  Every
 * read is running when the blip comes (BLIP_READ), and the adaptive
 * attempt bound is off: with it (200 ms at least) each read, then a 0.6 s
 * sleep, was cut at 200 ms, before the blip 250 ms in, as a timeout of its
 * replica; both breakers opened on those timeouts and closed again
 * (host-back) before the test looked at their final state, the reads were
 * served by the primary, and none met the blip.
 */
Test(recovery, one_blip_opens_no_breaker)
{
    pgh_cluster *c = cluster_or_die(2);
    pgh_require_replicas(c, 2);
    pgg_pool *p = pool_for(c, "attempt_timeout_auto=false");
    seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
    pthread_t t[8];
    blip_arg a[8];
    int failed = 0;

    blip_sleep(c, 60);
    hold_sessions(p, PGG_READ, 8);
    pgg_pool_on_event(p, on_event, &s);
    for (int i = 0; i < 8; i++) {
        a[i] = (blip_arg){.p = p, .intent = PGG_READ, .sql = BLIP_READ, .timeout_ms = 30000};
        cr_assert_eq(pthread_create(&t[i], NULL, slow_call, &a[i]), 0);
    }
    while (blip_running(pgh_cluster_replica(c, 0)) + blip_running(pgh_cluster_replica(c, 1)) < 8)
        sleep_ms(10);
    blip_sleep(c, 1);
    cr_assert_eq(pgh_node_terminate_backends(pgh_cluster_replica(c, 0)), 0);
    cr_assert_eq(pgh_node_terminate_backends(pgh_cluster_replica(c, 1)), 0);
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        if (a[i].failed) {
            failed++;
            fprintf(stderr, "read %d failed: %s\n", i, pgg_err_name(a[i].code));
        }
        cr_expect_neq(a[i].host_index, 0, "read %d left its replica for the primary", i);
        cr_expect_eq(a[i].attempts, 2, "read %d: %d attempts", i, a[i].attempts);
    }
    pgg_pool_on_event(p, NULL, NULL);
    cr_expect_eq(failed, 0, "%d of 8 reads in flight failed", failed);
    cr_expect_eq(s.opened, 0, "%d breakers opened on one blip", s.opened);
    for (int i = 0; i < pgg_pool_host_count(p); i++) {
        pgg_host_stats h = host_stats(p, i);
        cr_expect_eq(h.state, PGG_BREAKER_CLOSED, "%s: breaker %s after one blip", h.host,
                     pgg_breaker_state_name(h.state));
    }
    end_test(p, c);
}

/* ------------------------------------------------------------------ roles */

/*
 * A pooled session to a standby, on a host whose role is unknown (its
 * probe failed): the session's own report is current enough to keep a
 * write off it.  Before, the write was sent and came back 25006.
 */
Test(recovery, a_pooled_session_reporting_standby_gets_no_write)
{
    pgh_cluster *c = cluster_or_die(1);
    setup_table(c);
    /* No probe during the test: the roles set below stay as set. */
    pgg_pool *p = pool_for(c, "health_interval_ms=600000 health_incident_min_ms=60000 "
                              "health_incident_max_ms=60000");
    pgg_call call = {.timeout_ms = 2000};
    pgg_info info;
    pgg_error e;

    cr_assert(reads_reach(p, 1, 20)); /* a pooled session on the replica */
    pgg__pool_set_role(p, &p->hosts[0], PGG_ROLE_STANDBY, "test");
    pgg__pool_set_role(p, &p->hosts[1], PGG_ROLE_UNKNOWN, "test");
    PGresult *r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = 'x' WHERE id = 2", &call,
                           &info, &e);
    cr_expect_null(r);
    cr_expect_eq(info.sent, 0, "the write was sent to a standby: %s %s", pgg_err_name(e.code),
                 e.message);
    cr_expect_neq(e.code, PGG_EWRONGROLE, "%s", e.message);
    cr_expect_eq(host_stats(p, 1).role, PGG_ROLE_STANDBY, "the session's report was not used");
    PQclear(r);
    pgg__pool_set_role(p, &p->hosts[0], PGG_ROLE_PRIMARY, "test");
    end_test(p, c);
}

/*
 * A write answered 25006 provably did not apply: the pool re-learns roles
 * and runs it on the primary within the same deadline.
 */
Test(recovery, a_write_refused_as_read_only_runs_on_the_primary)
{
    pgh_cluster *c = cluster_or_die(1);
    setup_table(c);
    /* Calm probes never come during the test; a woken one does. */
    pgg_pool *p = pool_for(c, "health_interval_ms=600000");
    pgg_call call = {.timeout_ms = 3000};
    pgg_info info;
    pgg_error e;

    roles_swapped(p);
    PGresult *r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = 'moved' WHERE id = 3", &call,
                           &info, &e);
    cr_expect_not_null(r, "the write failed: %s %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(e.code, PGG_OK, "%s", pgg_err_name(e.code));
    PQclear(r);
    expect_written_on_the_primary(c, p, info.host_index, "SELECT v FROM pgg_rec_t WHERE id = 3",
                                  "moved");
    end_test(p, c);
}

/*
 * The primary stopped, a replica promoted, and no health probe for a
 * minute: the reads that keep flowing to the promoted server carry
 * in_hot_standby=off, and that alone re-routes writes to it.
 */
Test(recovery, a_promotion_seen_in_an_answer_reroutes_writes)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "stop and promotion");
    setup_table(c);
    pgg_pool *p = pool_for(c, "health_interval_ms=60000 health_incident_min_ms=60000 "
                              "health_incident_max_ms=60000");
    bool wrote = false;

    /* The answers' path alone: the health thread's promotion watch would
     * learn it too. */
    pgg__health_watch_promotions(p->health, false);

    /* A pooled session on the replica: a new one would report the new
     * role at startup; an idle one learns it only from its next answer. */
    cr_assert(reads_reach(p, 1, 20));
    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    cr_assert_eq(pgh_node_promote(pgh_cluster_replica(c, 0)), 0);
    for (int i = 0; i < 20 && !wrote; i++) {
        pgg_call call = {.timeout_ms = 1000};
        pgg_info info;
        pgg_error e;
        PGresult *r;

        read_ok(p, PGG_READ, "SELECT 1", 1000);
        r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = 'promoted' WHERE id = 4", &call,
                     &info, &e);
        if (r) {
            wrote = true;
            cr_expect_eq(info.host_index, 1);
        }
        PQclear(r);
    }
    cr_expect(wrote, "no write reached the promoted server");
    cr_expect_eq(host_stats(p, 1).role, PGG_ROLE_PRIMARY);
    end_test(p, c);
}

/*
 * Reads flow to a replica whose answers are looked at once per few ms; the
 * primary goes, the replica is promoted.  A write that finds no primary has
 * the next answer looked at, however recent the last look: the read right
 * after it re-routes writes to the promoted server.  The last look is set
 * in the future here, so that without that rule no answer would be looked
 * at during the test (the throttle, made deterministic).
 */
Test(recovery, a_write_finding_no_primary_has_the_next_answer_looked_at)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "stop and promotion");
    setup_table(c);
    pgg_pool *p = pool_for(c, "health_interval_ms=60000 health_incident_min_ms=60000 "
                              "health_incident_max_ms=60000");
    pgg_host *replica = &p->hosts[1];
    pgg_call call = {.timeout_ms = 1000};
    pgg_info info;
    pgg_error e;
    PGresult *r;

    /* The answers' path alone: the health thread's promotion watch would
     * learn it too. */
    pgg__health_watch_promotions(p->health, false);
    cr_assert(reads_reach(p, 1, 20));
    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    cr_assert_eq(pgg_pool_force_open(p, 0), 0);
    cr_assert_eq(pgh_node_promote(pgh_cluster_replica(c, 0)), 0);
    atomic_store(&replica->role_seen_ns, pgg__now_ns() + 3600 * PGG_NS_PER_MS * 1000);
    /* The promoted server's answer, not looked at yet. */
    cr_assert_eq(read_ok(p, PGG_READ, "SELECT 1", 1000), 1);
    cr_assert_eq(host_stats(p, 1).role, PGG_ROLE_STANDBY);

    r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = 'sought' WHERE id = 4", &call, &info,
                 &e);
    cr_assert_null(r, "a write went through with no primary known");
    cr_expect(e.code == PGG_EOPEN || e.code == PGG_ENOPRIMARY, "%s: %s", pgg_err_name(e.code),
              e.message);
    cr_assert_eq(read_ok(p, PGG_READ, "SELECT 1", 1000), 1);
    cr_expect_eq(host_stats(p, 1).role, PGG_ROLE_PRIMARY,
                 "the answer after a write found no primary was not looked at");

    r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = 'sought' WHERE id = 4", &call, &info,
                 &e);
    cr_expect_not_null(r, "the write failed: %s %s", pgg_err_name(e.code), e.message);
    if (r)
        cr_expect_eq(info.host_index, 1);
    PQclear(r);
    end_test(p, c);
}

/* ---------------------------------------------------------------- health */

/*
 * The only server restarted after its breaker opened, with a long open time
 * and a calm cadence of 5 s: reads find it again at the incident cadence
 * (probes woken by the refused calls), not after the calm interval or the
 * open time.
 */
Test(recovery, a_restarted_server_serves_before_the_calm_interval)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a restart");
    pgg_pool *p = pool_for(c, "health_interval_ms=5000 breaker.open_ms=20000 "
                              "breaker.open_max_ms=20000");
    pgh_node *n = pgh_cluster_primary(c);
    double started, first = -1;

    read_ok(p, PGG_READ, "SELECT 1", 0);
    cr_assert_eq(pgh_node_stop(n, PGH_STOP_IMMEDIATE), 0);
    for (int i = 0; i < 20 && host_stats(p, 0).state != PGG_BREAKER_OPEN; i++) {
        pgg_call call = {.timeout_ms = 500};
        PQclear(pgg_exec(p, PGG_READ, "SELECT 1", &call, NULL, NULL));
    }
    cr_assert_eq(host_stats(p, 0).state, PGG_BREAKER_OPEN);
    cr_assert_eq(pgh_node_start(n), 0);
    started = pgh_now_ms();
    while (pgh_now_ms() - started < 4000) {
        pgg_call call = {.timeout_ms = 500};
        PGresult *r = pgg_exec(p, PGG_READ, "SELECT 1", &call, NULL, NULL);
        if (r) {
            first = pgh_now_ms() - started;
            PQclear(r);
            break;
        }
        sleep_ms(5);
    }
    fprintf(stderr, "first read %.1f ms after the server accepted\n", first);
    cr_expect_geq(first, 0, "no read within 4 s of the restart (calm cadence 5 s, open 20 s)");
    cr_expect(wait_state(p, 0, PGG_BREAKER_CLOSED, 4000), "breaker %s",
              pgg_breaker_state_name(host_stats(p, 0).state));
    end_test(p, c);
}

/*
 * A hung replica under a 300 ms deadline: an attempt on it is bounded by
 * the host's own latency (attempt_timeout_auto), so the read finishes on
 * another host; fresh reads then avoid the host that timed out.
 */
Test(recovery, a_hung_replica_costs_no_read)
{
    pgh_cluster *c = cluster_or_die(2);
    pgh_require_local(c, "a hang (SIGSTOP)");
    pgh_require_replicas(c, 2);
    setup_table(c);
    pgg_pool *p = pool_for(c, NULL);
    int failed = 0, late = 0;

    for (int i = 0; i < 20; i++)
        read_ok(p, PGG_READ, "SELECT v FROM pgg_rec_t WHERE id = 5", 0);
    cr_assert_eq(pgh_node_hang(pgh_cluster_replica(c, 0)), 0);
    for (int i = 0; i < 40; i++) {
        pgg_call call = {.timeout_ms = 300};
        pgg_info info;
        pgg_error e;
        double t0 = pgh_now_ms();
        PGresult *r = pgg_exec(p, PGG_READ, "SELECT v FROM pgg_rec_t WHERE id = 5", &call,
                               &info, &e);
        double took = pgh_now_ms() - t0;

        if (took > 300 + 50.0)
            late++;
        if (!r) {
            failed++;
            fprintf(stderr, "read %d: %s %s after %.1f ms\n", i, pgg_err_name(e.code),
                    e.message, took);
        } else {
            cr_expect_eq(e.code, PGG_OK);
        }
        PQclear(r);
    }
    cr_assert_eq(pgh_node_resume(pgh_cluster_replica(c, 0)), 0);
    cr_expect_eq(failed, 0, "%d of 40 reads failed with a replica hung", failed);
    cr_expect_eq(late, 0, "%d reads overran their deadline", late);
    end_test(p, c);
}

/* ------------------------------------------------------- startup refusals */

static pgg_pool *pool_as(pgh_cluster *c, const char *user, const char *db)
{
    char ci[512];
    pgh_node *n = pgh_cluster_primary(c);
    snprintf(ci, sizeof ci, "host=%s port=%d user=%s dbname=%s", pgh_node_host(n),
             pgh_node_port(n), user, db);
    return pool_for_conninfo(ci, NULL);
}

/*
 * Refusals at connect time keep their SQLSTATE: "too many connections"
 * (53300) is the host's (unavailable); a role that does not exist (28000)
 * or a database that does not exist (3D000) is the caller's configuration:
 * PGG_ECONFIG, no breaker opens however often it is tried.  The message is
 * one line without the server's LOCATION.
 */
Test(recovery, startup_refusals_keep_their_sqlstate)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_node *n = pgh_cluster_primary(c);
    struct {
        const char *user, *db, *sqlstate;
        int code;
    } cases[] = {
        {"pgg_rec_full", "postgres", "53300", PGG_EUNAVAILABLE},
        {"pgg_rec_nobody", "postgres", "28000", PGG_ECONFIG},
        {"postgres", "pgg_rec_nodb", "3D000", PGG_ECONFIG},
    };

    cr_assert_eq(pgh_node_exec(n, "DROP ROLE IF EXISTS pgg_rec_full;"
                                  "CREATE ROLE pgg_rec_full LOGIN CONNECTION LIMIT 0;"),
                 0, "%s", pgh_node_error(n));
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        pgg_pool *p = pool_as(c, cases[k].user, cases[k].db);
        for (int i = 0; i < 6; i++) {
            pgg_call call = {.timeout_ms = 1000};
            pgg_error e;
            PGresult *r = pgg_exec(p, i % 2 ? PGG_READ : PGG_WRITE, "SELECT 1", &call, NULL, &e);
            cr_expect_null(r);
            PQclear(r);
            cr_expect_eq(e.code, cases[k].code, "%s/%s call %d: %s %s", cases[k].user,
                         cases[k].db, i, pgg_err_name(e.code), e.message);
            cr_expect_str_eq(e.sqlstate, cases[k].sqlstate, "%s", e.message);
            cr_expect_null(strstr(e.message, "LOCATION"), "%s", e.message);
            cr_expect_null(strchr(e.message, '\n'), "%s", e.message);
        }
        /* Neither a configuration error nor a refusal for want of room
         * (the host answered) counts against the host. */
        pgg_host_stats h = host_stats(p, 0);
        cr_expect_eq(h.state, PGG_BREAKER_CLOSED, "%s: the refusal opened %s",
                     cases[k].sqlstate, pgg_breaker_state_name(h.state));
        cr_expect_eq(h.failures[PGG_CLASS_CONNECTION], 0);
        cr_expect_eq(h.failures[PGG_CLASS_UNAVAILABLE], 0);
        pgg_pool_free(p);
    }
    cr_expect_eq(pgh_node_exec(n, "DROP ROLE pgg_rec_full;"), 0);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

/*
 * A server that asks for a password none was given for (pg_hba.conf says
 * scram-sha-256 for the role; no password key, passfile /dev/null): libpq
 * ends the startup itself, "no password supplied", with no SQLSTATE.  The
 * caller's configuration, as a refused password: PGG_ECONFIG with 28P01,
 * the breaker closed, no connection failure counted, however often it is
 * tried (the loop's calls: async_fd's test).  Before, every attempt was a
 * connection failure and the breaker opened (PGG_EOPEN hid the cause).
 */
Test(recovery, a_password_the_server_asks_for_and_none_was_given_is_the_callers)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "pg_hba.conf of a local server");
    char ci[512];

    ask_password_of(pgh_cluster_primary(c), "pgg_pw", ci, sizeof ci);
    pgg_pool *p = pool_for_conninfo(ci, NULL);
    for (int i = 0; i < 8; i++) {
        pgg_call call = {.timeout_ms = 1000};
        pgg_error e;
        PGresult *r = pgg_exec(p, i % 2 ? PGG_READ : PGG_WRITE, "SELECT 1", &call, NULL, &e);

        cr_expect_null(r);
        PQclear(r);
        cr_expect_eq(e.code, PGG_ECONFIG, "call %d: %s %s", i, pgg_err_name(e.code), e.message);
        cr_expect_str_eq(e.sqlstate, "28P01", "%s", e.message);
        cr_expect_not_null(strstr(e.message, "password"), "%s", e.message);
    }
    pgg_host_stats h = host_stats(p, 0);
    cr_expect_eq(h.state, PGG_BREAKER_CLOSED, "the missing password opened the breaker (%s)",
                 pgg_breaker_state_name(h.state));
    cr_expect_eq(h.failures[PGG_CLASS_CONNECTION], 0);
    end_test(p, c);
}

/* ------------------------------------------------------ the caller's errors */

/*
 * A parameter count the statement does not take is answered 08P01 by a
 * healthy server on a session that stays usable: the caller's error, not
 * retried, no host failure (before, six such calls opened every breaker).
 */
Test(recovery, a_protocol_error_on_a_live_session_is_the_callers)
{
    pgh_cluster *c = cluster_or_die(1);
    pgg_pool *p = pool_for(c, NULL);
    const char *vals[] = {"1"};

    for (int i = 0; i < 8; i++) {
        pgg_call call = {.timeout_ms = 2000};
        pgg_info info;
        pgg_error e;
        PGresult *r = pgg_exec_params(p, i % 2 ? PGG_WRITE : PGG_READ, "SELECT $1::int + $2::int",
                                      1, NULL, vals, NULL, NULL, &call, &info, &e);
        cr_expect_eq(e.code, PGG_ESERVER, "%s %s", pgg_err_name(e.code), e.message);
        cr_expect_str_eq(e.sqlstate, "08P01", "%s", e.message);
        cr_expect_eq(info.attempts, 1, "retried %d times", info.attempts);
        PQclear(r);
    }
    expect_hosts_untouched(p);
    read_ok(p, PGG_READ, "SELECT 1", 0);
    end_test(p, c);
}

/* ---------------------------------------------------------- final outcome */

/*
 * A read whose first host is down and second host serves it: err tells the
 * call's outcome (PGG_OK), not the first attempt's connection failure.
 */
Test(recovery, err_tells_the_final_outcome)
{
    pgh_cluster *c = cluster_or_die(2);
    pgh_require_local(c, "a stop");
    pgh_require_replicas(c, 2);
    /* Roles stay as learnt (no probe marks the stopped replica unknown and
     * routes it last), and its breaker stays closed. */
    pgg_pool *p = pool_for(c, "breaker.consecutive_failures=100 health_interval_ms=600000 "
                              "health_incident_min_ms=60000 health_incident_max_ms=60000");
    int retried = 0;

    cr_assert_eq(pgh_node_stop(pgh_cluster_replica(c, 0), PGH_STOP_IMMEDIATE), 0);
    for (int i = 0; i < 20; i++) {
        pgg_call call = {.timeout_ms = 2000};
        pgg_info info;
        pgg_error e;
        PGresult *r = pgg_exec(p, PGG_READ, "SELECT 1", &call, &info, &e);

        cr_expect_not_null(r, "%s %s", pgg_err_name(e.code), e.message);
        if (info.attempts > 1) {
            retried++;
            cr_expect_eq(e.code, PGG_OK, "served on attempt %d, err still %s: %s", info.attempts,
                         pgg_err_name(e.code), e.message);
        }
        PQclear(r);
    }
    cr_expect_geq(retried, 1, "no read met the stopped replica first");
    end_test(p, c);
}

/* ------------------------------------------------------ probe schedules */

/* A two-host pool whose replica is reached through a proxy. */
static pgg_pool *pool_via_proxy(pgh_cluster *c, pgh_proxy **px, const char *extra)
{
    char err[256], ci[512];
    pgh_node *replica = pgh_cluster_replica(c, 0);
    pgg_pool *p;

    *px = pgh_proxy_start(pgh_node_host(replica), pgh_node_port(replica), err, sizeof err);
    cr_assert_not_null(*px, "%s", err);
    snprintf(ci, sizeof ci, "host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres dbname=postgres",
             pgh_node_port(pgh_cluster_primary(c)), pgh_proxy_port(*px));
    p = pool_for_conninfo(ci, extra);
    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000));
    cr_assert(wait_role(p, 1, PGG_ROLE_STANDBY, 10000));
    return p;
}

/*
 * A probe of a hung host ends at health_probe_timeout_ms (500 ms by
 * default), not connect_timeout_ms (5 s here), and the host is marked
 * then: role unknown.  Before, the round waited out the connect bound.
 */
Test(recovery, a_hung_host_is_marked_within_the_probe_bound)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a proxy between pgguard and a local replica");
    pgh_proxy *px;
    pgg_pool *p = pool_via_proxy(c, &px, "connect_timeout_ms=5000");
    double t0;
    bool marked;

    pgh_proxy_set_mode(px, PGH_PROXY_BLACKHOLE, 0);
    t0 = pgh_now_ms();
    marked = wait_role(p, 1, PGG_ROLE_UNKNOWN, 4000);
    fprintf(stderr, "hung host marked after %.0f ms\n", pgh_now_ms() - t0);
    cr_expect(marked, "the hung host was not marked within 4 s (connect_timeout_ms 5 s)");
    pgg_pool_free(p);
    pgh_proxy_free(px);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

/*
 * A host whose breaker is open and that answers slower than the probe
 * bound (here each way through a proxy holding every chunk 400 ms): the
 * probe's connect, taken by the host's kernel and queued for its server,
 * is kept past the bound instead of being dropped and started over at the
 * back of the queue, so the host is found answering, and the session the
 * probe opened goes to the pool for the first call let through (no
 * connect of its own).  Before, every probe was dropped at its bound and
 * the breaker stayed open for its whole open time (60 s here).
 */
Test(recovery, an_open_host_answering_slowly_is_found_and_its_session_kept)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a proxy between pgguard and a local replica");
    pgh_proxy *px;
    pgg_pool *p = pool_via_proxy(c, &px, "breaker.open_ms=60000 breaker.open_max_ms=60000 "
                                         "health_probe_timeout_ms=300");
    seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
    int left, open = 0;

    pgh_proxy_set_mode(px, PGH_PROXY_RESET, 0);
    for (int i = 0; i < 50 && host_stats(p, 1).state != PGG_BREAKER_OPEN; i++) {
        pgg_call call = {.timeout_ms = 1000};
        PQclear(pgg_exec(p, PGG_READ, "SELECT 1", &call, NULL, NULL));
        sleep_ms(5);
    }
    cr_assert_eq(host_stats(p, 1).state, PGG_BREAKER_OPEN);
    cr_assert_eq(host_stats(p, 1).conns_open, 0);
    pgg_pool_on_event(p, on_event, &s);
    pgh_proxy_set_mode(px, PGH_PROXY_DELAY, 400);
    for (int i = 0; i < 800; i++) {
        pthread_mutex_lock(&s.mu);
        left = s.left_open;
        pthread_mutex_unlock(&s.mu);
        open = host_stats(p, 1).conns_open;
        if (left > 0 && open > 0)
            break;
        sleep_ms(10);
    }
    pgg_pool_on_event(p, NULL, NULL);
    cr_expect_gt(left, 0, "the breaker never left open though the host answered (in ~1 s)");
    cr_expect_gt(open, 0, "the session that found the host answering was not kept for calls");
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0);
    end_test(p, NULL);
    pgh_proxy_free(px);
    pgh_cluster_free(c);
}

/*
 * Calls refused by a host's open breaker while its server is about to take
 * sessions (the probe's connect waits in its queue, here behind a proxy
 * holding every chunk 400 ms): the pool queues a few more connects then,
 * so that several sessions are ready when the host is back, not only the
 * probe's, and the first calls let through need no connect of their own
 * (clients that connect on every call have one queued per thread).
 */
Test(recovery, refused_calls_find_sessions_ready_when_the_host_is_back)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a proxy between pgguard and a local replica");
    pgh_proxy *px;
    pgg_pool *p = pool_via_proxy(c, &px, "breaker.open_ms=60000 breaker.open_max_ms=60000 "
                                         "health_probe_timeout_ms=300 "
                                         "read_policy=replica_only");
    int open = 0;

    pgh_proxy_set_mode(px, PGH_PROXY_RESET, 0);
    for (int i = 0; i < 50 && host_stats(p, 1).state != PGG_BREAKER_OPEN; i++) {
        pgg_call call = {.timeout_ms = 1000};
        PQclear(pgg_exec(p, PGG_READ, "SELECT 1", &call, NULL, NULL));
        sleep_ms(5);
    }
    cr_assert_eq(host_stats(p, 1).state, PGG_BREAKER_OPEN);
    pgh_proxy_set_mode(px, PGH_PROXY_DELAY, 400);
    /* Demand: reads refused (PGG_EOPEN) for 100 ms, then none. */
    for (int i = 0; i < 10; i++) {
        pgg_call call = {.timeout_ms = 1000};
        pgg_error e;
        PGresult *r = pgg_exec(p, PGG_READ, "SELECT 1", &call, NULL, &e);
        cr_assert_null(r, "a read served by a host whose breaker is open");
        cr_assert_eq(e.code, PGG_EOPEN, "%s", e.message);
        sleep_ms(10);
    }
    /* (Later probes, slower than their bound, open the breaker again and
     * close the sessions: the most seen at once counts.) */
    for (int i = 0; i < 500 && open < 2; i++) {
        int now = host_stats(p, 1).conns_open;
        open = now > open ? now : open;
        sleep_ms(10);
    }
    cr_expect_geq(open, 2, "at most %d session(s) ready for the first calls to the host back",
                  open);
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0);
    end_test(p, NULL);
    pgh_proxy_free(px);
    pgh_cluster_free(c);
}

/*
 * A host whose server is starting (its port refused connections, then took
 * one that waits for the server to answer; here a proxy that stopped
 * listening, then listens again and holds every chunk 400 ms) is waited
 * for: a read refused by its open breaker then waits within its deadline
 * and is served once the server answers, as a client whose connect waits
 * in the server's queue would be.  Before, it was refused with PGG_EOPEN
 * until the breaker closed.
 */
Test(recovery, a_call_waits_for_a_server_that_is_starting)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a proxy between pgguard and a local replica");
    pgh_proxy *px;
    /* A probe bound above the proxy's connect (about 1.6 s): a probe kept
     * waiting past its bound means a stuck server, not a starting one. */
    pgg_pool *p = pool_via_proxy(c, &px, "breaker.open_ms=60000 breaker.open_max_ms=60000 "
                                         "health_probe_timeout_ms=4000 connect_timeout_ms=5000 "
                                         "read_policy=replica_only");
    bool served_while_open = false;

    pgh_proxy_set_mode(px, PGH_PROXY_REFUSE, 0);
    pgh_proxy_set_mode(px, PGH_PROXY_RESET, 0); /* the pooled sessions too */
    pgh_proxy_set_mode(px, PGH_PROXY_REFUSE, 0);
    for (int i = 0; i < 50 && host_stats(p, 1).state != PGG_BREAKER_OPEN; i++) {
        pgg_call call = {.timeout_ms = 1000};
        PQclear(pgg_exec(p, PGG_READ, "SELECT 1", &call, NULL, NULL));
        sleep_ms(5);
    }
    cr_assert_eq(host_stats(p, 1).state, PGG_BREAKER_OPEN);
    sleep_ms(50); /* a probe or two refused by nobody listening */
    pgh_proxy_set_mode(px, PGH_PROXY_DELAY, 400);
    for (int i = 0; i < 100 && !served_while_open; i++) {
        pgg_call call = {.timeout_ms = 10000};
        pgg_error e;
        PGresult *r;

        if (host_stats(p, 1).state != PGG_BREAKER_OPEN)
            break; /* too late: the host is back */
        r = pgg_exec(p, PGG_READ, "SELECT 1", &call, NULL, &e);
        served_while_open = r != NULL;
        if (!r)
            cr_expect_eq(e.code, PGG_EOPEN, "%s %s", pgg_err_name(e.code), e.message);
        PQclear(r);
        sleep_ms(20);
    }
    cr_expect(served_while_open, "no read made while the breaker was open waited for the "
                                 "starting server");
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0);
    end_test(p, NULL);
    pgh_proxy_free(px);
    pgh_cluster_free(c);
}

/*
 * Each host has its own probe schedule: while the replica's probe hangs
 * (for up to 5 s here), the primary's go on, so its stop is seen at the
 * next of them.  Before, one round waited for every probe.
 */
Test(recovery, a_hung_probe_delays_no_other_host)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a proxy between pgguard and a local replica");
    pgh_proxy *px;
    pgg_pool *p = pool_via_proxy(c, &px, "connect_timeout_ms=5000 health_probe_timeout_ms=5000");
    double t0;
    bool seen;

    pgh_proxy_set_mode(px, PGH_PROXY_BLACKHOLE, 0);
    sleep_ms(300); /* the replica's probe is under way, and hangs */
    t0 = pgh_now_ms();
    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    seen = wait_role(p, 0, PGG_ROLE_UNKNOWN, 3000);
    fprintf(stderr, "stopped primary seen %.0f ms after the stop began\n", pgh_now_ms() - t0);
    cr_expect(seen, "the primary's stop was not seen while the replica's probe hung");
    pgg_pool_free(p);
    pgh_proxy_free(px);
    pgh_cluster_free(c);
    cr_expect_eq(pgh_leak_check(), 0, "memory leaked (report above)");
}

/*
 * The primary stopped, then a replica promoted, writes every few ms and no
 * reads: the writes refused meanwhile wake the health thread, which probes
 * at the incident cadence and finds the new primary long before the calm
 * interval (5 s here).  Prints how long the refusals took and when the
 * first write landed after pg_ctl promote returned.
 */
Test(recovery, writes_find_the_promoted_server_at_the_incident_cadence)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "stop and promotion");
    setup_table(c);
    pgg_pool *p = pool_for(c, "health_interval_ms=5000");
    double worst_refusal = 0, t0, first = -1, times[1000];
    int refused = 0, over_1ms = 0;

    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    t0 = pgh_now_ms();
    while (pgh_now_ms() - t0 < 300) {
        pgg_call call = {.timeout_ms = 1000};
        pgg_error e;
        double w0 = pgh_now_ms();
        PGresult *r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = v WHERE id = 6", &call,
                               NULL, &e);
        double took = pgh_now_ms() - w0;

        cr_expect_null(r, "a write succeeded with no primary");
        PQclear(r);
        if (refused < (int)(sizeof times / sizeof times[0]))
            times[refused] = took;
        refused++;
        if (took > worst_refusal)
            worst_refusal = took;
        sleep_ms(2);
    }
    cr_assert_eq(pgh_node_promote(pgh_cluster_replica(c, 0)), 0);
    t0 = pgh_now_ms();
    while (pgh_now_ms() - t0 < 4000) {
        pgg_call call = {.timeout_ms = 1000};
        PGresult *r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = 'p' WHERE id = 6", &call,
                               NULL, NULL);
        if (r) {
            first = pgh_now_ms() - t0;
            PQclear(r);
            break;
        }
        sleep_ms(2);
    }
    for (int i = 0; i < refused && i < (int)(sizeof times / sizeof times[0]); i++)
        over_1ms += times[i] > 1.0;
    fprintf(stderr, "%d writes refused with no primary (first %.2f ms, %d over 1 ms, slowest "
                    "%.2f ms); first write %.1f ms after the promotion\n",
            refused, times[0], over_1ms, worst_refusal, first);
    cr_expect_geq(first, 0, "no write within 4 s of the promotion (calm interval 5 s)");
    end_test(p, c);
}

/*
 * The primary stopped, writes refused for want of one, then a replica
 * promoted, with no reads and every probe cadence a minute (calm and
 * incident alike): nothing but the health thread's promotion watch
 * (health.c, WATCH_SQL_FMT) can tell the pool of the promotion before a
 * minute.  The writes go on being refused until the pool learns it, and
 * then land on the promoted server, which a health probe reported primary.
 * Fails without the watch: no probe of the standby for a minute, every
 * write refused until the loop gives up.
 */
typedef struct role_log {
    pthread_mutex_t mu;
    int to_primary; /* events for host 1 becoming primary */
    char reason[64];
} role_log;

static void on_role(const pgg_event *ev, void *ud)
{
    role_log *l = ud;

    if (ev->type != PGG_EVENT_ROLE || ev->host_index != 1 || ev->to != PGG_ROLE_PRIMARY)
        return;
    pthread_mutex_lock(&l->mu);
    if (!l->to_primary++)
        snprintf(l->reason, sizeof l->reason, "%s", ev->reason ? ev->reason : "");
    pthread_mutex_unlock(&l->mu);
}

Test(recovery, a_promotion_is_learnt_from_the_watch_while_writes_find_no_primary)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "stop and promotion");
    setup_table(c);
    pgg_pool *p = pool_for(c, "health_interval_ms=60000 health_incident_min_ms=60000 "
                              "health_incident_max_ms=60000");
    static role_log log = {PTHREAD_MUTEX_INITIALIZER, 0, ""};
    pgg_error e;
    PGresult *r = NULL;
    pgg_info info;
    int refused = 0;

    pgg_pool_on_event(p, on_role, &log);
    read_ok(p, PGG_WRITE, "SELECT 1", 0);
    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    /* Until the pool finds no primary at all (the stopped one's breaker
     * open): from then on writes are refused at once. */
    for (int i = 0; i < 100; i++) {
        r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = v WHERE id = 7", NULL, NULL, &e);
        cr_assert_null(r, "a write succeeded with no primary");
        if (e.code == PGG_ENOPRIMARY || e.code == PGG_EOPEN)
            break;
    }
    cr_assert(e.code == PGG_ENOPRIMARY || e.code == PGG_EOPEN, "%s: %s",
              pgg_err_name(e.code), e.message);
    cr_assert_eq(pgh_node_promote(pgh_cluster_replica(c, 0)), 0);
    /* A write every 2 ms, as an application would keep trying: each one
     * refused keeps the pool seeking a primary.  Bounded by 10 s, well
     * before the minute after which any probe could have run. */
    double t0 = pgh_now_ms();
    while (pgh_now_ms() - t0 < 10000) {
        r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = 'watched' WHERE id = 7", NULL,
                     &info, &e);
        if (r)
            break;
        refused++;
        sleep_ms(2);
    }
    cr_assert_not_null(r, "no write landed: the promotion was never learnt (%s: %s)",
                       pgg_err_name(e.code), e.message);
    PQclear(r);
    cr_expect_eq(info.host_index, 1);
    pgg__events_flush(p->events);
    pthread_mutex_lock(&log.mu);
    cr_expect_eq(log.to_primary, 1);
    cr_expect_str_eq(log.reason, "health probe", "learnt from: %s", log.reason);
    pthread_mutex_unlock(&log.mu);
    fprintf(stderr, "%d writes refused after pg_ctl promote returned\n", refused);
    end_test(p, c);
}

/*
 * The same watch on servers whose sessions have a statement_timeout (a
 * role or server setting; 200 ms here) shorter than the watch's own bound
 * (500 ms here: health_incident_min_ms 1 s, a quarter of the probe bound
 * of 2 s): the watch waits half of it at most (100 ms: as much again left
 * for a loaded server to answer), so it is never cancelled (57014), which
 * would be a failed probe and show the standby of unknown role.  Writes
 * are refused for want of a primary through three health rounds, each
 * with a watch of the standby.  Fails when the watch ignores
 * statement_timeout.
 */
typedef struct unknown_log {
    pthread_mutex_t mu;
    int unknown; /* host 1 shown role unknown */
} unknown_log;

static void on_unknown(const pgg_event *ev, void *ud)
{
    unknown_log *l = ud;

    if (ev->type == PGG_EVENT_ROLE && ev->host_index == 1 && ev->to == PGG_ROLE_UNKNOWN) {
        pthread_mutex_lock(&l->mu);
        l->unknown++;
        pthread_mutex_unlock(&l->mu);
    }
}

/*
 * The primary stopped, writes sent until one is refused for want of a
 * primary, then on through three health rounds (each ends with a probe of
 * the standby, a watch while writes are refused): the standby must never
 * be shown of unknown role and must end a standby.  Every write is
 * asserted refused when refused_after says so (after the first refusal).
 */
static void standby_kept_while_writes_refused(pgg_pool *p, pgh_cluster *c, unknown_log *log,
                                              const char *sql, bool refused_after)
{
    pgg_error e;
    PGresult *r;

    pgg_pool_on_event(p, on_unknown, log);
    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    for (int i = 0; i < 100; i++) {
        r = pgg_exec(p, PGG_WRITE, sql, NULL, NULL, &e);
        cr_assert_null(r, "a write succeeded with no primary");
        if (e.code == PGG_ENOPRIMARY || e.code == PGG_EOPEN)
            break;
    }
    cr_assert(e.code == PGG_ENOPRIMARY || e.code == PGG_EOPEN, "%s: %s",
              pgg_err_name(e.code), e.message);
    unsigned long want = pgg__health_rounds(p->health) + 3;
    double t0 = pgh_now_ms();
    while (pgg__health_rounds(p->health) < want && pgh_now_ms() - t0 < 20000) {
        r = pgg_exec(p, PGG_WRITE, sql, NULL, NULL, &e);
        if (refused_after)
            cr_assert_null(r, "a write succeeded with no primary");
        PQclear(r);
        sleep_ms(2);
    }
    cr_assert_geq(pgg__health_rounds(p->health), want, "the health rounds stalled");
    pgg__events_flush(p->events);
    pthread_mutex_lock(&log->mu);
    cr_expect_eq(log->unknown, 0, "the standby was shown of unknown role %d times",
                 log->unknown);
    pthread_mutex_unlock(&log->mu);
    cr_expect_eq(host_stats(p, 1).role, PGG_ROLE_STANDBY);
}

Test(recovery, the_promotion_watch_stays_within_the_sessions_statement_timeout)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "stop");
    setup_table(c);
    char *servers = pgh_cluster_conninfo(c);
    char ci[2048];
    static unknown_log log = {PTHREAD_MUTEX_INITIALIZER, 0};

    cr_assert_not_null(servers);
    snprintf(ci, sizeof ci, "%s options='-c statement_timeout=200'", servers);
    free(servers);
    pgg_pool *p = pool_for_conninfo(ci, "health_incident_min_ms=1000 health_incident_max_ms=1000 "
                                        "health_probe_timeout_ms=2000 connect_timeout_ms=2000");
    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000));
    cr_assert(wait_role(p, 1, PGG_ROLE_STANDBY, 10000));
    standby_kept_while_writes_refused(p, c, &log, "UPDATE pgg_rec_t SET v = v WHERE id = 8",
                                      true);
    end_test(p, c);
}

/*
 * A watch is sent only on a session that answered before this probe.  The
 * standby is reached through a proxy; while writes are refused for want of
 * a primary, its probe session, running a watch, is ended by the server
 * and the proxy then holds every chunk 650 ms each way: the probe replaces
 * its session within its bound (4 s), which takes two of them (1.3 s for
 * the server's FATAL and the new startup's round trip, sslmode and
 * gssencmode off).  The replacement's plain query answers within the
 * bound (another 1.3 s); a watch there (1.3 s and its 1 s wait) would end
 * past it, as a timeout: the standby shown of unknown role in the very
 * outage it is watched in.  Fails when the replacement is watched.
 */
typedef struct refused_writer {
    pgg_pool *p;
    atomic_bool stop;
} refused_writer;

static void *write_until_stopped(void *arg)
{
    refused_writer *w = arg;

    while (!atomic_load(&w->stop)) {
        pgg_call call = {.timeout_ms = 500};

        PQclear(pgg_exec(w->p, PGG_WRITE, "SELECT 1", &call, NULL, NULL));
        sleep_ms(2);
    }
    return NULL;
}

Test(recovery, a_probe_that_replaced_its_session_does_not_watch_on_the_new_one)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "stop, and a proxy before a local replica");
    pgh_node *replica = pgh_cluster_replica(c, 0);
    static unknown_log log = {PTHREAD_MUTEX_INITIALIZER, 0};
    refused_writer w = {0};
    char err[256], ci[512], pid[32] = "";
    pthread_t t;
    pgh_proxy *px = pgh_proxy_start(pgh_node_host(replica), pgh_node_port(replica), err,
                                    sizeof err);

    cr_assert_not_null(px, "%s", err);
    snprintf(ci, sizeof ci,
             "host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres dbname=postgres "
             "sslmode=disable gssencmode=disable",
             pgh_node_port(pgh_cluster_primary(c)), pgh_proxy_port(px));
    pgg_pool *p = pool_for_conninfo(ci, "health_incident_min_ms=1000 health_incident_max_ms=1000 "
                                        "health_probe_timeout_ms=4000 connect_timeout_ms=4000");
    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000));
    cr_assert(wait_role(p, 1, PGG_ROLE_STANDBY, 10000));
    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    w.p = p;
    cr_assert_eq(pthread_create(&t, NULL, write_until_stopped, &w), 0);
    /* The standby's probe session in a watch (it waits up to 1 s there). */
    for (int i = 0; i < 2000 && !pid[0]; i++) {
        if (pgh_node_query_value(replica,
                                 "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
                                 "AND query LIKE '%WITH RECURSIVE w(n, u)%' "
                                 "AND pid <> pg_backend_pid()",
                                 pid, sizeof pid) != 0)
            pid[0] = '\0';
        if (!pid[0])
            sleep_ms(5);
    }
    cr_assert(pid[0], "no promotion watch seen on the standby in 10 s");
    pgh_proxy_set_mode(px, PGH_PROXY_DELAY, 650);
    pgg_pool_on_event(p, on_unknown, &log);
    {
        char sql[128], ok[16];

        snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%s)", pid);
        cr_assert_eq(pgh_node_query_value(replica, sql, ok, sizeof ok), 0);
    }
    /* The probe's bound (4 s from its start) and a margin. */
    sleep_ms(6000);
    atomic_store(&w.stop, true);
    pthread_join(t, NULL);
    pgg__events_flush(p->events);
    pgg_pool_on_event(p, NULL, NULL);
    pthread_mutex_lock(&log.mu);
    cr_expect_eq(log.unknown, 0,
                 "the standby was shown of unknown role %d times (a watch on the probe's "
                 "new session ran past the probe's bound)",
                 log.unknown);
    pthread_mutex_unlock(&log.mu);
    cr_expect_eq(host_stats(p, 1).role, PGG_ROLE_STANDBY);
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0);
    end_test(p, NULL);
    pgh_proxy_free(px);
    pgh_cluster_free(c);
}

/*
 * The same watch on servers that refuse it: the pool's role may not run
 * pg_sleep (EXECUTE revoked from PUBLIC, as hardened servers do), so the
 * server answers the watch with an error (42501) while it answers the
 * probe's plain query.  That says nothing of the standby: it stays a
 * standby through three health rounds of writes refused for want of a
 * primary, never shown of unknown role (which would also send it writes).
 * Fails when a refused watch is taken for the probe's answer: the standby
 * shown of unknown role at each watch.
 */
Test(recovery, a_standby_that_refuses_the_promotion_watch_keeps_its_role)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "roles and stop");
    setup_table(c);
    pgh_node *prim = pgh_cluster_primary(c);
    cr_assert_eq(pgh_node_exec(prim, "CREATE ROLE pgg_nosleep LOGIN"), 0);
    cr_assert_eq(pgh_node_exec(prim, "REVOKE EXECUTE ON FUNCTION "
                                     "pg_catalog.pg_sleep(double precision) FROM PUBLIC"),
                 0);
    cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, 0), prim, 10000), 0);
    char *servers = pgh_cluster_conninfo(c);
    char ci[2048];
    static unknown_log log = {PTHREAD_MUTEX_INITIALIZER, 0};

    cr_assert_not_null(servers);
    snprintf(ci, sizeof ci, "%s user=pgg_nosleep", servers);
    free(servers);
    pgg_pool *p = pool_for_conninfo(ci, "health_incident_min_ms=1000 health_incident_max_ms=1000 "
                                        "health_probe_timeout_ms=2000 connect_timeout_ms=2000");
    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000));
    cr_assert(wait_role(p, 1, PGG_ROLE_STANDBY, 10000));
    standby_kept_while_writes_refused(p, c, &log, "SELECT 1", false);
    end_test(p, c);
}

/*
 * The primary restarted under writes, with the default half-open rule
 * (three good trial calls close): its breaker, open during the outage,
 * closes at the incident cadence once the server accepts, long before the
 * open time (20 s here) would even let a trial through.  Prints when the
 * first write landed and when the breaker closed.
 */
Test(recovery, a_restarted_primary_closes_its_breaker_at_the_incident_cadence)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a restart");
    setup_table(c);
    pgg_pool *p = pool_for(c, "health_interval_ms=5000 breaker.open_ms=20000 "
                              "breaker.open_max_ms=20000 breaker.half_open_probes=3 "
                              "breaker.half_open_successes=3");
    pgh_node *n = pgh_cluster_primary(c);
    double t0, first = -1, closed = -1;

    cr_assert_eq(pgh_node_stop(n, PGH_STOP_IMMEDIATE), 0);
    for (int i = 0; i < 50 && host_stats(p, 0).state != PGG_BREAKER_OPEN; i++) {
        pgg_call call = {.timeout_ms = 500};
        PQclear(pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = v WHERE id = 7", &call, NULL,
                         NULL));
        sleep_ms(2);
    }
    cr_assert_eq(host_stats(p, 0).state, PGG_BREAKER_OPEN);
    cr_assert_eq(pgh_node_start(n), 0);
    t0 = pgh_now_ms();
    while (pgh_now_ms() - t0 < 4000 && (first < 0 || closed < 0)) {
        pgg_call call = {.timeout_ms = 500};
        PGresult *r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = 'r' WHERE id = 7", &call,
                               NULL, NULL);
        if (r && first < 0)
            first = pgh_now_ms() - t0;
        PQclear(r);
        if (closed < 0 && host_stats(p, 0).state == PGG_BREAKER_CLOSED)
            closed = pgh_now_ms() - t0;
        sleep_ms(2);
    }
    fprintf(stderr, "restarted primary: first write %.1f ms, breaker closed %.1f ms after it "
                    "accepted\n",
            first, closed);
    cr_expect_geq(first, 0, "no write within 4 s of the restart (open time 20 s)");
    cr_expect_geq(closed, 0, "breaker not closed within 4 s of the restart (open time 20 s)");
    end_test(p, c);
}

/* Sessions of user on n right now (a server-side count). */
static int sessions_of(pgh_node *n, const char *user)
{
    char ci[512], sql[256];
    PGconn *admin;
    PGresult *r;
    int count = -1;

    snprintf(ci, sizeof ci, "%s connect_timeout=10", pgh_node_conninfo(n));
    admin = PQconnectdb(ci);
    cr_assert_eq(PQstatus(admin), CONNECTION_OK, "%s", PQerrorMessage(admin));
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE usename = '%s'",
             user);
    r = PQexec(admin, sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        count = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(admin);
    return count;
}

/*
 * A primary with no room for another session (53300; here the role's
 * connection limit, as max_connections taken by other clients) and none of
 * the pool's sessions there: the host is alive and answering.  Writes are
 * refused at once with PGG_EUNAVAILABLE and its SQLSTATE, the breaker stays
 * closed however many are refused, each write asks the server itself (a
 * write told an older refusal could miss a slot freed since), and the first
 * write once a slot is free lands (before, three refusals opened the breaker
 * and the first write after the slots freed up met PGG_EOPEN).
 */
Test(recovery, a_full_primary_opens_no_breaker)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_node *n = pgh_cluster_primary(c);
    char ci[512];
    PGconn *held[3];
    int nheld = 0;
    uint64_t before;

    cr_assert_eq(pgh_node_exec(n, "DROP ROLE IF EXISTS pgg_rec_cap;"
                                  "CREATE ROLE pgg_rec_cap LOGIN CONNECTION LIMIT 3;"),
                 0, "%s", pgh_node_error(n));
    snprintf(ci, sizeof ci, "host=%s port=%d user=pgg_rec_cap dbname=postgres",
             pgh_node_host(n), pgh_node_port(n));
    pgg_pool *p = pool_for_conninfo(ci, NULL);
    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000));
    /* The health thread holds one session; other clients take the rest. */
    while (nheld < 3) {
        char why[256];
        PGconn *h = pgh_connect(ci, 5000, NULL, why, sizeof why);
        if (!h)
            break;
        held[nheld++] = h;
    }
    cr_assert_geq(nheld, 1, "no session left for another client");
    before = host_stats(p, 0).connects;
    for (int i = 0; i < 12; i++) {
        pgg_call call = {.timeout_ms = 1000};
        pgg_error e;
        PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT 1", &call, NULL, &e);
        cr_expect_null(r);
        PQclear(r);
        cr_expect_eq(e.code, PGG_EUNAVAILABLE, "write %d: %s %s", i, pgg_err_name(e.code),
                     e.message);
        cr_expect_str_eq(e.sqlstate, "53300", "%s", e.message);
        sleep_ms(2);
    }
    /* Each came after the last ask had ended: each asked for itself
     * (host.c, "Refused"), as a client connecting on every call does. */
    cr_expect_eq(host_stats(p, 0).connects - before, 12, "%llu connects for 12 writes one after another",
                 (unsigned long long)(host_stats(p, 0).connects - before));
    cr_expect_eq(host_stats(p, 0).state, PGG_BREAKER_CLOSED, "a full primary's breaker: %s",
                 pgg_breaker_state_name(host_stats(p, 0).state));
    expect_hosts_untouched(p);
    for (int i = 0; i < nheld; i++)
        PQfinish(held[i]);
    for (int i = 0; i < 500 && sessions_of(n, "pgg_rec_cap") > 1; i++)
        sleep_ms(10);
    sleep_ms(20); /* a backend leaves pg_stat_activity before its slot */
    {
        pgg_call call = {.timeout_ms = 3000};
        pgg_error e;
        PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT 1", &call, NULL, &e);
        cr_expect_not_null(r, "the first write once a slot was free: %s %s",
                           pgg_err_name(e.code), e.message);
        PQclear(r);
    }
    end_test(p, NULL);
    cr_assert_eq(pgh_node_exec(n, "DROP ROLE pgg_rec_cap;"), 0);
    pgh_cluster_free(c);
}

/* Stop the primary, refuse writes until its breaker opens, start it, and
 * wait (no calls) until the breaker is closed again. */
static bool outage(pgg_pool *p, pgh_node *n)
{
    if (pgh_node_stop(n, PGH_STOP_IMMEDIATE) != 0)
        return false;
    for (int i = 0; i < 50 && host_stats(p, 0).state != PGG_BREAKER_OPEN; i++) {
        pgg_call call = {.timeout_ms = 500};
        PQclear(pgg_exec(p, PGG_WRITE, "SELECT 1", &call, NULL, NULL));
        sleep_ms(2);
    }
    if (host_stats(p, 0).state != PGG_BREAKER_OPEN || pgh_node_start(n) != 0)
        return false;
    return wait_state(p, 0, PGG_BREAKER_CLOSED, 4000);
}

/*
 * "A breaker must not stay open while its host answers": the first time a
 * host comes back in a streak, the health probe's session closes its
 * breaker at once (straight from open: no trial calls refused meanwhile
 * with PGG_EOPEN).  A host that fails again right after is left to trial
 * calls (half-open), so that one that answers probes but not calls does
 * not flap.  Before, every return went through three trial calls.
 */
Test(recovery, a_host_back_from_its_first_outage_closes_its_breaker_at_once)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a restart");
    pgg_pool *p = pool_for(c, "health_interval_ms=5000 breaker.open_ms=20000 "
                              "breaker.open_max_ms=20000 breaker.half_open_probes=3 "
                              "breaker.half_open_successes=3 breaker.healthy_decay_ms=600000");
    pgh_node *n = pgh_cluster_primary(c);
    seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};

    pgg_pool_on_event(p, on_event, &s);
    cr_assert(outage(p, n), "no first outage and return (breaker %s)",
              pgg_breaker_state_name(host_stats(p, 0).state));
    events_delivered(p);
    pthread_mutex_lock(&s.mu);
    cr_expect_eq(s.open_closed, 1, "open -> closed %d times", s.open_closed);
    cr_expect_eq(s.half_opened, 0, "half-open %d times", s.half_opened);
    pthread_mutex_unlock(&s.mu);
    cr_assert(outage(p, n), "no second outage and return (breaker %s)",
              pgg_breaker_state_name(host_stats(p, 0).state));
    pgg_pool_on_event(p, NULL, NULL);
    cr_expect_eq(s.open_closed, 1, "a second opening closed without trials");
    cr_expect_geq(s.half_opened, 1, "a second opening was not put on trial");
    end_test(p, c);
}

typedef struct full_arg {
    pgg_pool *p;
    int failed;
    int code;
} full_arg;

static void *sleepy_reads(void *arg)
{
    full_arg *a = arg;
    for (int i = 0; i < 8; i++) {
        pgg_call call = {.timeout_ms = 3000};
        pgg_error e;
        PGresult *r = pgg_exec(a->p, PGG_READ, "SELECT pg_sleep(0.03)", &call, NULL, &e);
        if (!r) {
            a->failed++;
            a->code = e.code;
        }
        PQclear(r);
    }
    return NULL;
}

/*
 * A server with no room for another session (53300: here the role's
 * connection limit, as max_connections taken by other clients) while the
 * pool's own sessions work: the host is full, not sick.  Calls wait for
 * one of the pool's sessions within their deadline, as at pool_max, and
 * nothing counts against the host (before, each refused connect was an
 * "unavailable" failure, and the breaker opened).
 */
Test(recovery, a_full_server_is_waited_for_not_failed)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_node *n = pgh_cluster_primary(c);
    char ci[512];
    pthread_t t[4];
    full_arg a[4];
    int failed = 0;

    /* Three sessions for the role: the health thread's, and two for calls. */
    cr_assert_eq(pgh_node_exec(n, "DROP ROLE IF EXISTS pgg_rec_three;"
                                  "CREATE ROLE pgg_rec_three LOGIN CONNECTION LIMIT 3;"),
                 0, "%s", pgh_node_error(n));
    snprintf(ci, sizeof ci, "host=%s port=%d user=pgg_rec_three dbname=postgres",
             pgh_node_host(n), pgh_node_port(n));
    pgg_pool *p = pool_for_conninfo(ci, "pool_max=4");
    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000));
    for (int i = 0; i < 4; i++) {
        a[i] = (full_arg){.p = p};
        cr_assert_eq(pthread_create(&t[i], NULL, sleepy_reads, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        failed += a[i].failed;
        if (a[i].failed)
            fprintf(stderr, "thread %d: %d failed, last %s\n", i, a[i].failed,
                    pgg_err_name(a[i].code));
    }
    cr_expect_eq(failed, 0, "%d of 32 reads failed against a full server", failed);
    expect_hosts_untouched(p);
    cr_expect_leq(host_stats(p, 0).conns_open, 2);
    end_test(p, NULL);
    cr_assert_eq(pgh_node_exec(n, "DROP ROLE pgg_rec_three;"), 0);
    pgh_cluster_free(c);
}

/* ------------------------------------------------ spares on their way */

typedef struct spare_borrow {
    pgg_host *h;
    pgg_link *l;
    int rc;
    atomic_bool done;
} spare_borrow;

static void *borrow_once(void *arg)
{
    spare_borrow *b = arg;
    pgg_borrow_fail why;
    pgg_error e;
    int64_t now = pgg__now_ns();

    b->rc = pgg__host_borrow(b->h, now + 5 * PGG_NS_PER_SEC, &now, &b->l, &why, &e);
    atomic_store(&b->done, true);
    return NULL;
}

/*
 * A host coming back has spare connects of the health thread on their way
 * (queued at its server before any call's): a call that finds no idle
 * session waits for one of them, and takes it, rather than queue a connect
 * of its own behind them (after a full restart the two writers did, and
 * wrote 20-90 ms after libpq's first write, while the spares completed 5-15
 * ms later and sat idle).  A spare given up lets the waiter connect.
 * White box: the test plays the health thread's part on the host.
 */
Test(recovery, a_call_takes_a_spare_on_its_way_rather_than_connect_behind_it)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "pool_min_idle=0");
    pgg_host *h = &p->hosts[0];
    pgg_link *own;
    spare_borrow b = {.h = h};
    pthread_t t;
    PGconn *spare;
    char *ci = pgh_cluster_conninfo(c);

    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000));
    pgg__host_trim(h, pgg__now_ns(), true);
    /* One spare on its way: the borrower waits for it. */
    pgg__host_spares(h, 1);
    cr_assert_eq(pthread_create(&t, NULL, borrow_once, &b), 0);
    sleep_ms(300);
    cr_expect(!atomic_load(&b.done), "the call connected itself while a spare was on its way");
    spare = PQconnectdb(ci);
    cr_assert_eq(PQstatus(spare), CONNECTION_OK, "%s", PQerrorMessage(spare));
    cr_assert(pgg__host_adopt(h, spare, pgg__now_ns(), pgg__now_ns(), 9, false, false));
    pgg__host_spares(h, -1);
    pthread_join(t, NULL);
    cr_assert_eq(b.rc, PGG_OK);
    cr_expect_eq(b.l->conn, spare, "the waiting call did not get the spare");
    pgg__host_give_back(h, b.l, pgg__now_ns());
    pgg__host_trim(h, pgg__now_ns(), true);

    /* A spare given up: the waiter connects for itself at once. */
    b.l = NULL;
    atomic_store(&b.done, false);
    pgg__host_spares(h, 1);
    cr_assert_eq(pthread_create(&t, NULL, borrow_once, &b), 0);
    sleep_ms(100);
    cr_expect(!atomic_load(&b.done));
    pgg__host_spares(h, -1);
    pthread_join(t, NULL);
    cr_assert_eq(b.rc, PGG_OK);
    own = b.l;
    cr_expect_neq(own->conn, spare);
    pgg__host_give_back(h, own, pgg__now_ns());
    free(ci);
    end_test(p, c);
}

/* A write of "SELECT 1" within timeout_ms: its error code (PGG_OK when
 * answered). */
static int write_code(pgg_pool *p, int timeout_ms, pgg_error *e)
{
    pgg_call call = {.timeout_ms = timeout_ms};
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT 1", &call, NULL, e);
    int code = r ? PGG_OK : e->code;

    PQclear(r);
    return code;
}

/*
 * A server slow to take a session (a proxy holding every chunk 300 ms: a
 * connect takes 600 ms at least) and a write whose deadline (200 ms) comes
 * first.  The call times out, but that is the call's timeout, not the
 * host's failure: no failed connect, no failure counted, the breaker
 * closed; the connect goes on (the health thread) and its session joins
 * the pool, where the next call finds it: no connect of its own (and the
 * silence the cut call noted started no spare beside it).  Before, the
 * connect was closed at the deadline and counted as the host's failed
 * connect (two such opened the primary's breaker in the fault bench at
 * load 30, while libpq's caller kept its 302 ms connect).  Then a connect
 * cut the same way while the pool is freed: closed, nothing leaks.
 */
Test(recovery, a_connect_cut_by_its_calls_deadline_joins_the_pool)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_proxy *px;
    pgg_pool *p;
    pgg_host_stats before, h;
    pgg_error e;
    int code;

    /* Bounds far above the proxy's delays: only the call's deadline cuts. */
    p = pool_through_proxy(c, &px, "pool_min_idle=0 connect_timeout_ms=20000 "
                                   "health_probe_timeout_ms=20000");
    pgg__host_trim(&p->hosts[0], pgg__now_ns(), true);
    before = host_stats(p, 0);
    pgh_proxy_set_mode(px, PGH_PROXY_DELAY, 300);
    code = write_code(p, 200, &e);
    cr_assert_eq(code, PGG_ETIMEDOUT, "the write: %s %s", pgg_err_name(code), e.message);
    expect_no_host_failure(p, 0, &before, "after the cut connect");
    /* Its session, once the server took it, is idle in the pool. */
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0);
    h = wait_idle(p, 0, 1, 20000);
    cr_assert_eq(h.conns_idle, 1, "the cut connect's session never joined the pool");
    cr_expect_eq(h.connects, before.connects + 1, "%llu connects for one cut call",
                 (unsigned long long)(h.connects - before.connects));
    code = write_code(p, 3000, &e);
    cr_assert_eq(code, PGG_OK, "the next write: %s %s", pgg_err_name(code), e.message);
    h = host_stats(p, 0);
    cr_expect_eq(h.connects, before.connects + 1, "the next write connected for itself");
    expect_no_host_failure(p, 0, &before, "after the next write");

    /* Cut again, and the pool freed while that connect waits. */
    pgg__host_trim(&p->hosts[0], pgg__now_ns(), true);
    pgh_proxy_set_mode(px, PGH_PROXY_DELAY, 300);
    code = write_code(p, 200, &e);
    cr_expect_eq(code, PGG_ETIMEDOUT, "the second write: %s %s", pgg_err_name(code), e.message);
    end_test(p, c);
    pgh_proxy_free(px);
}

/*
 * A connect cut by its call's deadline (100 ms) into a host that never
 * answers (a proxy that swallows everything) goes on as a spare; when its
 * own connect_timeout_ms (500) runs out, that is the host's failed
 * connect: counted then, once, and recorded against the breaker as a
 * connection failure, not at the call's deadline.
 */
Test(recovery, a_cut_connect_that_runs_out_of_its_own_bound_is_the_hosts_failure)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_proxy *px;
    pgg_pool *p;
    pgg_host_stats before, h;
    pgg_error e;
    double end;
    int code;

    /* The breaker only counts (the probes into the black hole time out
     * too, which are no failed connects). */
    p = pool_through_proxy(c, &px, "pool_min_idle=0 connect_timeout_ms=500 "
                                   "health_probe_timeout_ms=500 breaker.mode=metrics_only");
    pgg__host_trim(&p->hosts[0], pgg__now_ns(), true);
    before = host_stats(p, 0);
    pgh_proxy_set_mode(px, PGH_PROXY_BLACKHOLE, 0);
    code = write_code(p, 100, &e);
    cr_assert_eq(code, PGG_ETIMEDOUT, "the write: %s %s", pgg_err_name(code), e.message);
    h = host_stats(p, 0);
    cr_expect_eq(h.connect_failures, before.connect_failures,
                 "the call's own deadline was counted as the host's failed connect");
    end = pgh_now_ms() + 10000;
    while ((h = host_stats(p, 0)).connect_failures == before.connect_failures &&
           pgh_now_ms() < end)
        sleep_ms(10);
    cr_expect_eq(h.connect_failures, before.connect_failures + 1,
                 "%llu failed connects counted once its own bound ran out",
                 (unsigned long long)(h.connect_failures - before.connect_failures));
    cr_expect_eq(h.failures[PGG_CLASS_CONNECTION], before.failures[PGG_CLASS_CONNECTION] + 1,
                 "%llu connection failures recorded",
                 (unsigned long long)(h.failures[PGG_CLASS_CONNECTION] -
                                      before.failures[PGG_CLASS_CONNECTION]));
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0);
    end_test(p, c);
    pgh_proxy_free(px);
}

/*
 * A spare the health thread adopts is dated from its connect's start, when
 * its backend may already exist (here a call's connect, cut at the call's
 * 200 ms deadline and finished as a spare: a proxy holds each chunk
 * 300 ms, so at t_mid, when the call has returned, it is still on its
 * way).  A sibling the server ended after t_mid says the server ended
 * every session there then: this one goes without a look.  Before, an
 * adopted spare was dated from its adoption and kept as younger.  White
 * box: the host's rule for ended siblings (pgg__host_drop_dead).
 */
Test(recovery, an_adopted_spare_is_dated_from_its_connects_start)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_proxy *px;
    pgg_pool *p;
    pgg_host_stats h;
    pgg_error e;
    int64_t t_mid;
    int code;

    p = pool_through_proxy(c, &px, "pool_min_idle=0 connect_timeout_ms=20000 "
                                   "health_probe_timeout_ms=20000 alive_check_after_idle_ms=600000 "
                                   "validate_after_idle_ms=600000 idle_timeout_ms=600000");
    pgg__host_trim(&p->hosts[0], pgg__now_ns(), true);
    pgh_proxy_set_mode(px, PGH_PROXY_DELAY, 300);
    code = write_code(p, 200, &e);
    cr_assert_eq(code, PGG_ETIMEDOUT, "the write: %s %s", pgg_err_name(code), e.message);
    t_mid = pgg__now_ns();
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0);
    h = wait_idle(p, 0, 1, 20000);
    cr_assert_eq(h.conns_idle, 1, "the cut connect's session never joined the pool");
    pgg__host_drop_dead(&p->hosts[0], pgg__now_ns(), 0, t_mid);
    cr_expect_eq(host_stats(p, 0).conns_idle, 0,
                 "a spare whose connect was on its way at t_mid was kept as younger");
    end_test(p, c);
    pgh_proxy_free(px);
}

/*
 * A connect its caller cancels on the way (a proxy holds every chunk
 * 300 ms) goes on as a spare, as one its call's deadline cuts does, and
 * its session joins the pool; the cancel is not the host's failure.  The
 * health thread drives it only once told: before, a cancel's hand-off
 * woke nobody (only a deadline's silence did), so the connect waited
 * undriven until the next health round (10 min here: never within the
 * test), and meanwhile every borrower waited for it as a spare on its way.
 */
Test(recovery, a_connect_cut_by_its_callers_cancel_joins_the_pool)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_proxy *px;
    pgg_pool *p;
    pgg_host_stats before, h;
    thread_call w;
    pthread_t t;
    double end;

    p = pool_through_proxy(c, &px, "pool_min_idle=0 connect_timeout_ms=20000 "
                                   "health_probe_timeout_ms=20000 health_interval_ms=600000");
    pgg__host_trim(&p->hosts[0], pgg__now_ns(), true);
    before = host_stats(p, 0);
    w = (thread_call){.p = p, .intent = PGG_WRITE, .timeout_ms = 20000, .cancel = pgg_cancel_new()};
    cr_assert_not_null(w.cancel);
    pgh_proxy_set_mode(px, PGH_PROXY_DELAY, 300);
    cr_assert_eq(pthread_create(&t, NULL, exec_in_thread, &w), 0);
    /* Its connect started (counted before it begins); 600 ms at least. */
    end = pgh_now_ms() + 10000;
    while (host_stats(p, 0).connects == before.connects && pgh_now_ms() < end)
        sleep_ms(1);
    pgg_cancel_fire(w.cancel);
    pthread_join(t, NULL);
    cr_assert_eq(host_stats(p, 0).connects, before.connects + 1, "the write never connected");
    cr_assert_eq(w.code, PGG_ECANCELED, "the write: %s", pgg_err_name(w.code));
    expect_no_host_failure(p, 0, &before, "after the cancelled connect");
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0);
    h = wait_idle(p, 0, 1, 20000);
    cr_assert_eq(h.conns_idle, 1, "the cancelled connect's session never joined the pool");
    expect_no_host_failure(p, 0, &before, "after its session joined");
    pgg_cancel_free(w.cancel);
    end_test(p, c);
    pgh_proxy_free(px);
}

/*
 * A handed connect the server refuses at startup (here a database that
 * does not exist: 3D000, the caller's configuration, not the host's
 * failure) was answered by the host: it counts as an answer for the
 * silence rule (ignored_answers), as a caller's own refused connect does
 * (pgg__pool_take_failed).  Before, the health thread dropped it
 * uncounted: a silence its cut caller had noted (say a full server slow to
 * refuse with 53300) could open the breaker as host-silent though the
 * host had answered.  White box: the connect handed on by hand, the host's
 * counter.
 */
Test(recovery, a_handed_connect_the_server_refuses_is_the_hosts_answer)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "pool_min_idle=0 health_interval_ms=600000");
    pgg_host *h = &p->hosts[0];
    pgg_host_stats before = host_stats(p, 0);
    uint64_t answers = atomic_load(&h->ignored_answers);
    char ci[1024];
    PGconn *conn;
    double end;
    int spares;

    snprintf(ci, sizeof ci, "%s dbname=pgg_no_such_database",
             pgh_node_conninfo(pgh_cluster_primary(c)));
    conn = PQconnectStart(ci);
    cr_assert(conn && PQstatus(conn) != CONNECTION_BAD, "connect start: %s",
              conn ? PQerrorMessage(conn) : "out of memory");
    pgg__link_verbose_startup(conn); /* as every connect of ours (its SQLSTATE) */
    cr_assert(pgg__host_hand_connect(h, conn, POLLOUT, pgg__now_ns()), "not handed on");
    pgg__pool_wake_health(p);
    end = pgh_now_ms() + 10000;
    do {
        sleep_ms(5);
        pthread_mutex_lock(&h->mu);
        spares = h->n_spares;
        pthread_mutex_unlock(&h->mu);
    } while (spares > 0 && pgh_now_ms() < end);
    cr_assert_eq(spares, 0, "the health thread never ended the handed connect");
    cr_expect_eq(atomic_load(&h->ignored_answers), answers + 1,
                 "the server's refusal was not counted as its answer (%llu answers)",
                 (unsigned long long)(atomic_load(&h->ignored_answers) - answers));
    expect_no_host_failure(p, 0, &before, "after the refused handed connect");
    end_test(p, c);
}

/*
 * A caller whose session was ended comes back within its period, often
 * before the health thread has started the replacement it was promised
 * (n_lost): its own connect is that replacement, not one more.  Both
 * forked a backend on a server busy with every client's reconnects (5 of
 * 6 such connects in the fault bench's trace).  Here one replacement is
 * due, a call connects, and a health round later one session was opened
 * in all, none on its way.
 */
Test(recovery, a_caller_s_own_connect_is_the_replacement_not_started_yet)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "pool_min_idle=0");
    pgg_host *h = &p->hosts[0];
    spare_borrow b = {.h = h};
    uint64_t before;
    int spares;

    pgg__host_trim(h, pgg__now_ns(), true);
    before = host_stats(p, 0).connects;
    atomic_store(&h->n_lost, 1);
    borrow_once(&b);
    cr_assert_eq(b.rc, PGG_OK);
    pgg__host_give_back(h, b.l, pgg__now_ns());
    cr_assert(pgg__health_await_round(p->health, pgg__now_ns() + 10 * PGG_NS_PER_SEC));
    pthread_mutex_lock(&h->mu);
    spares = h->n_spares;
    pthread_mutex_unlock(&h->mu);
    cr_expect_eq(host_stats(p, 0).connects - before + (uint64_t)spares, 1,
                 "%llu connects and %d spares on their way for one session to replace",
                 (unsigned long long)(host_stats(p, 0).connects - before), spares);
    end_test(p, c);
}

typedef struct full_writer {
    pgg_pool *p;
    int writes, unavailable, other;
    char last[sizeof(pgg_error){0}.message + 32];
} full_writer;

static void *writes_to_a_full_primary(void *arg)
{
    full_writer *w = arg;

    for (int i = 0; i < 15; i++) {
        pgg_call call = {.timeout_ms = 1000};
        pgg_error e;
        PGresult *r = pgg_exec(w->p, PGG_WRITE, "SELECT 1", &call, NULL, &e);

        w->writes++;
        if (!r && e.code == PGG_EUNAVAILABLE && strcmp(e.sqlstate, "53300") == 0) {
            w->unavailable++;
        } else {
            w->other++;
            snprintf(w->last, sizeof w->last, "%s %s", pgg_err_name(e.code), e.message);
        }
        PQclear(r);
        sleep_ms(3);
    }
    return NULL;
}

/*
 * Two callers writing to a primary with no room for a session (53300)
 * while none of the pool's sessions is there: each refusal, seen while the
 * other caller's connect was on its way, counted that connect as "one of
 * ours" to wait for, yet connected again at once: the two refused each
 * other into a connect every few ms until their deadline, which ended with
 * PGG_ETIMEDOUT, counted as a connection failure, and opened the breaker
 * (the bench's max-connections fault: the first write after the slots
 * freed up then waited for the breaker).  Now each write is refused with
 * PGG_EUNAVAILABLE/53300 and the breaker stays closed.
 */
Test(recovery, two_callers_on_a_full_primary_are_refused_not_timed_out)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_node *n = pgh_cluster_primary(c);
    char ci[512];
    PGconn *held[3];
    int nheld = 0;
    pthread_t t[2];
    full_writer w[2];

    cr_assert_eq(pgh_node_exec(n, "DROP ROLE IF EXISTS pgg_rec_cap2;"
                                  "CREATE ROLE pgg_rec_cap2 LOGIN CONNECTION LIMIT 3;"),
                 0, "%s", pgh_node_error(n));
    snprintf(ci, sizeof ci, "host=%s port=%d user=pgg_rec_cap2 dbname=postgres",
             pgh_node_host(n), pgh_node_port(n));
    pgg_pool *p = pool_for_conninfo(ci, NULL);
    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000));
    while (nheld < 3) {
        char why[256];
        PGconn *h = pgh_connect(ci, 5000, NULL, why, sizeof why);
        if (!h)
            break;
        held[nheld++] = h;
    }
    cr_assert_geq(nheld, 1, "no session left for another client");
    for (int i = 0; i < 2; i++) {
        w[i] = (full_writer){.p = p};
        cr_assert_eq(pthread_create(&t[i], NULL, writes_to_a_full_primary, &w[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        cr_expect_eq(w[i].other, 0, "writer %d: %d of %d writes not refused with 53300, last: %s",
                     i, w[i].other, w[i].writes, w[i].last);
    }
    cr_expect_eq(host_stats(p, 0).state, PGG_BREAKER_CLOSED, "a full primary's breaker: %s",
                 pgg_breaker_state_name(host_stats(p, 0).state));
    expect_hosts_untouched(p);
    for (int i = 0; i < nheld; i++)
        PQfinish(held[i]);
    end_test(p, NULL);
    cr_assert_eq(pgh_node_exec(n, "DROP ROLE pgg_rec_cap2;"), 0);
    pgh_cluster_free(c);
}

typedef struct asker {
    pgg_host *h;
    int64_t since; /* when the call came, as told to the host (0: now) */
    int rc;
    char sqlstate[6];
    char message[sizeof(pgg_error){0}.message];
    atomic_bool done;
} asker;

/* One borrow of a->h, given back at once if it got a session. */
static void *ask_once(void *arg)
{
    asker *a = arg;
    pgg_borrow_fail why;
    pgg_error e = {0};
    pgg_link *l = NULL;
    int64_t now = a->since ? a->since : pgg__now_ns();

    a->rc = pgg__host_borrow(a->h, pgg__now_ns() + 30 * PGG_NS_PER_SEC, &now, &l, &why, &e);
    if (l)
        pgg__host_give_back(a->h, l, pgg__now_ns());
    snprintf(a->sqlstate, sizeof a->sqlstate, "%s", e.sqlstate);
    snprintf(a->message, sizeof a->message, "%s", e.message);
    atomic_store(&a->done, true);
    return NULL;
}

/* Under the host's lock: connects on their way. */
static int host_connecting(pgg_host *h)
{
    int n;

    pthread_mutex_lock(&h->mu);
    n = h->n_connecting;
    pthread_mutex_unlock(&h->mu);
    return n;
}

/* Until h has started its n-th connect (10 s at most): exactly n. */
static void await_host_connects(pgg_host *h, uint64_t n)
{
    for (int i = 0; i < 10000 && atomic_load(&h->connects) < n; i++)
        sleep_ms(1);
    cr_assert_eq(atomic_load(&h->connects), n, "%llu connects, not %llu",
                 (unsigned long long)atomic_load(&h->connects), (unsigned long long)n);
}

/*
 * A server that refused a session (53300) with none of the pool's there
 * (host.c, "Refused"): a caller that came before an ask started (at the
 * same reading or earlier) waits for that ask and hears its refusal; a
 * caller that came after the last ask started asks itself at once, beside
 * the ask on its way.  Here each ask takes a while (a proxy holds every
 * chunk 250 ms).  A asks; B, who came when A did, waits for A's ask; C,
 * who came 1 ns after A's ask started, asks; D, who came when C did, waits
 * for C's.  2 connects, A's and C's, at once; B and D are told the refusal
 * (PGG_EUNAVAILABLE at this level), A and C hear it from the server.
 * Before, nobody was asked for 5 ms after a refusal, and calls in that
 * window were told it.  White box: borrows of the host itself, each
 * telling when its call came.
 */
Test(recovery, a_refusing_server_is_asked_by_calls_that_came_after_the_last_ask)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a proxy between pgguard and a local primary");
    pgh_node *n = pgh_cluster_primary(c);
    char err[256], ci[512], direct[512];
    pgh_proxy *px = pgh_proxy_start(pgh_node_host(n), pgh_node_port(n), err, sizeof err);
    PGconn *held[2];
    int nheld = 0, most = 0;
    asker a[4];
    pthread_t t[4];
    uint64_t before;
    pgg_host *h;
    bool all_done = false;

    cr_assert_not_null(px, "%s", err);
    cr_assert_eq(pgh_node_exec(n, "DROP ROLE IF EXISTS pgg_rec_asked;"
                                  "CREATE ROLE pgg_rec_asked LOGIN CONNECTION LIMIT 2;"),
                 0, "%s", pgh_node_error(n));
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d user=pgg_rec_asked dbname=postgres",
             pgh_proxy_port(px));
    snprintf(direct, sizeof direct, "host=%s port=%d user=pgg_rec_asked dbname=postgres",
             pgh_node_host(n), pgh_node_port(n));
    /* Bounds above the proxy's delays (the health probe's session stays). */
    pgg_pool *p = pool_for_conninfo(ci, "pool_min_idle=0 connect_timeout_ms=20000 "
                                        "health_probe_timeout_ms=20000");
    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000));
    h = &p->hosts[0];
    /* The health thread holds one session; another client the rest. */
    while (nheld < 2) {
        char why[256];
        PGconn *hc = pgh_connect(direct, 5000, NULL, why, sizeof why);
        if (!hc)
            break;
        held[nheld++] = hc;
    }
    cr_assert_geq(nheld, 1, "no session left for another client");
    pgg__host_trim(h, pgg__now_ns(), true);
    /* A first refusal: the pool learns the server is refusing. */
    a[0] = (asker){.h = h};
    ask_once(&a[0]);
    cr_assert_str_eq(a[0].sqlstate, "53300", "%s %s", pgg_err_name(a[0].rc), a[0].message);
    pgh_proxy_set_mode(px, PGH_PROXY_DELAY, 250);
    before = atomic_load(&h->connects);
    for (int i = 0; i < 4; i++)
        a[i] = (asker){.h = h};
    /* A's borrow starts its ask with the reading it was given. */
    a[0].since = a[1].since = pgg__now_ns();
    a[2].since = a[3].since = a[0].since + 1;
    cr_assert_eq(pthread_create(&t[0], NULL, ask_once, &a[0]), 0);
    await_host_connects(h, before + 1);
    cr_assert_eq(pthread_create(&t[1], NULL, ask_once, &a[1]), 0);
    cr_assert_eq(pthread_create(&t[2], NULL, ask_once, &a[2]), 0);
    await_host_connects(h, before + 2);
    cr_assert_eq(pthread_create(&t[3], NULL, ask_once, &a[3]), 0);
    while (!all_done) {
        int connecting = host_connecting(h);

        if (connecting > most)
            most = connecting;
        all_done = true;
        for (int i = 0; i < 4; i++)
            all_done &= atomic_load(&a[i].done);
        sleep_ms(1);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0);
    for (int i = 0; i < 4; i++) {
        /* A and C asked (the server's refusal: PGG_ECONNECT at this level,
         * the pool makes it PGG_EUNAVAILABLE); B and D were told. */
        cr_expect_eq(a[i].rc, i % 2 ? PGG_EUNAVAILABLE : PGG_ECONNECT, "caller %c: %s %s",
                     "ABCD"[i], pgg_err_name(a[i].rc), a[i].message);
        cr_expect_str_eq(a[i].sqlstate, "53300", "caller %c: %s", "ABCD"[i], a[i].message);
    }
    cr_expect_eq(atomic_load(&h->connects) - before, 2, "%llu connects for A, B, C and D",
                 (unsigned long long)(atomic_load(&h->connects) - before));
    cr_expect_leq(most, 2, "%d connects at once", most);
    /* Slots free (a backend leaves pg_stat_activity before its slot):
     * each caller asks, and one gets a session. */
    for (int i = 0; i < nheld; i++)
        PQfinish(held[i]);
    for (int i = 0; i < 500; i++) {
        uint64_t asked = atomic_load(&h->connects);

        a[0] = (asker){.h = h};
        ask_once(&a[0]);
        cr_assert_eq(atomic_load(&h->connects) - asked, 1, "a caller did not ask: %s",
                     a[0].message);
        if (a[0].rc == PGG_OK || strcmp(a[0].sqlstate, "53300") != 0)
            break;
        sleep_ms(10);
    }
    cr_expect_eq(a[0].rc, PGG_OK, "no caller got a session once slots were free: %s",
                 a[0].message);
    end_test(p, NULL);
    pgh_proxy_free(px);
    cr_assert_eq(pgh_node_exec(n, "DROP ROLE pgg_rec_asked;"), 0);
    pgh_cluster_free(c);
}

/*
 * A replica whose server is starting (as in
 * a_call_waits_for_a_server_that_is_starting, a proxy that refused
 * connections, then takes them and holds every chunk 400 ms) is waited
 * for only by a read that no other host can serve.  While the primary can
 * serve, reads go to it and never meet the replica's open breaker (whose
 * refusal made each of them wait up to its attempt bound, 150 ms of a 300
 * ms deadline in the fault bench's restart); with the primary out too, a
 * read still waits for the starting replica and is served by it.
 */
Test(recovery, a_read_waits_for_a_starting_replica_only_when_no_other_host_can_serve)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a proxy between pgguard and a local replica");
    pgh_proxy *px;
    pgg_pool *p = pool_via_proxy(c, &px, "breaker.open_ms=60000 breaker.open_max_ms=60000 "
                                         "health_probe_timeout_ms=4000 connect_timeout_ms=5000");
    pgg_host *replica = &p->hosts[1];
    pgg_host_stats before, after;
    int reads = 0;

    pgh_proxy_set_mode(px, PGH_PROXY_REFUSE, 0);
    pgh_proxy_set_mode(px, PGH_PROXY_RESET, 0); /* the pooled sessions too */
    pgh_proxy_set_mode(px, PGH_PROXY_REFUSE, 0);
    /* Reads refused by the replica are served by the primary meanwhile. */
    for (int i = 0; i < 50 && host_stats(p, 1).state != PGG_BREAKER_OPEN; i++) {
        read_ok(p, PGG_READ, "SELECT 1", 2000);
        sleep_ms(5);
    }
    cr_assert_eq(host_stats(p, 1).state, PGG_BREAKER_OPEN);
    sleep_ms(50); /* a probe or two refused by nobody listening */
    pgh_proxy_set_mode(px, PGH_PROXY_DELAY, 400);
    for (int i = 0; i < 1000 && !atomic_load(&replica->starting); i++)
        sleep_ms(5);
    cr_assert(atomic_load(&replica->starting), "the replica was never seen starting");

    before = host_stats(p, 1);
    for (int i = 0; i < 5 && atomic_load(&replica->starting); i++, reads++)
        cr_expect_eq(read_ok(p, PGG_READ, "SELECT 1", 10000), 0,
                     "a read was not served by the primary");
    after = host_stats(p, 1);
    cr_assert_gt(reads, 0, "the replica stopped starting before any read");
    cr_expect_eq(after.rejections, before.rejections,
                 "%llu of %d reads met the starting replica's breaker first (and waited "
                 "for it) while the primary could serve them",
                 (unsigned long long)(after.rejections - before.rejections), reads);

    /* The primary out as well: the starting replica is the read's last
     * candidate, waited for within the deadline. */
    cr_assert_eq(pgg_pool_force_open(p, 0), PGG_OK);
    if (atomic_load(&replica->starting))
        cr_expect_eq(read_ok(p, PGG_READ, "SELECT 1", 10000), 1,
                     "a read with the primary out was not served by the starting replica");
    cr_assert_eq(pgg_pool_reset_breaker(p, 0), PGG_OK);
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0);
    end_test(p, NULL);
    pgh_proxy_free(px);
    pgh_cluster_free(c);
}

/* Pooled sessions are lent without a look: a call finds its own session
 * dead by using it. */
#define LENT_WITHOUT_A_LOOK                                                                   \
    "alive_check_after_idle_ms=600000 validate_after_idle_ms=600000 idle_timeout_ms=600000 "  \
    "pool_min_idle=0"

/* Host i's stats once it has made n connects more than `before` (the
 * health thread's replacements, no call asking), or after 10 s. */
static pgg_host_stats await_connects(pgg_pool *p, int i, pgg_host_stats before, uint64_t n)
{
    pgg_host_stats after = host_stats(p, i);

    for (int k = 0; k < 1000 && after.connects - before.connects < n; k++) {
        sleep_ms(10);
        after = host_stats(p, i);
    }
    return after;
}

/* A write served at its first attempt on a session ready for it: no
 * connect of its own beyond the `connects` the primary had made. */
static void write_finds_a_session_ready(pgg_pool *p, uint64_t connects)
{
    pgg_call call = {.timeout_ms = 5000};
    pgg_info info;
    pgg_error e;
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT 1", &call, &info, &e);

    cr_expect_not_null(r, "the write after the blip failed: %s %s", pgg_err_name(e.code),
                       e.message);
    cr_expect_eq(info.attempts, 1);
    PQclear(r);
    cr_expect_eq(host_stats(p, 0).connects, connects,
                 "the write found no replacement ready and connected");
}

/*
 * pg_terminate_backend of every session: the call that finds its pooled
 * session dead closes the host's idle ones with it (they died too), and
 * the health thread connects their replacements at once, before their
 * callers come back (a write that failed on a dead session is not
 * retried; its next call, and the callers of the other sessions, would
 * each have connected then, up to a period later, behind every other
 * client's reconnects: the fault bench's first write after the blip came
 * 23-45 ms after it against libpq's 9-23).  No breaker opens.  Pooled
 * sessions are lent without a look here, so the call finds its own dead by
 * using it.
 */
Test(recovery, sessions_the_server_ended_are_replaced_before_their_callers_return)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, LENT_WITHOUT_A_LOOK);
    pgg_host_stats before, after;

    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000));
    hold_sessions(p, PGG_WRITE, 3);
    before = host_stats(p, 0);
    cr_assert_eq(before.conns_open, 3);
    /* Returns once every backend is gone: our sockets hold the FATAL. */
    cr_assert_eq(pgh_node_terminate_backends(pgh_cluster_primary(c)), 0);

    /* Served on a new connection (its own, or a replacement already on
     * its way); on the primary, whatever replicas the cluster has
     * (external mode brings two). */
    read_ok(p, PGG_READ_PRIMARY, "SELECT 1", 5000);
    after = host_stats(p, 0);
    for (int i = 0; i < 1000 && after.conns_open < 2; i++) {
        sleep_ms(10);
        after = host_stats(p, 0);
    }
    cr_expect_geq(after.conns_open, 2,
                  "%d session(s) open after the blip and one call: the two closed with the "
                  "dead one were not replaced",
                  after.conns_open);
    cr_expect_geq(after.connects - before.connects, 2);
    expect_hosts_untouched(p);
    end_test(p, c);
}

/*
 * pg_terminate_backend of every session on every server: once a call finds
 * one pooled session ended by its server, the health thread looks at every
 * host's idle sessions (reading what their servers sent, no round trip),
 * closes the dead ones and replaces those in recent use, before any call
 * meets them.  Here a read finds its replica session dead; the primary's
 * idle sessions, which no call touches, are replaced, and the next write
 * lands on a live session (a write sent on a dead one fails: it cannot be
 * known not to have run).  Pooled sessions are lent without a look here.
 */
Test(recovery, a_blip_found_on_one_host_replaces_the_dead_sessions_of_the_others)
{
    pgh_cluster *c = cluster_or_die(1);
    pgg_pool *p = pool_for(c, LENT_WITHOUT_A_LOOK);
    pgg_host_stats before, after;
    int on_replicas = 0;

    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000));
    cr_assert(wait_role(p, 1, PGG_ROLE_STANDBY, 10000));
    hold_sessions(p, PGG_WRITE, 2);
    hold_sessions(p, PGG_READ, 2);
    before = host_stats(p, 0);
    cr_assert_eq(before.conns_open, 2);
    /* On the replica, or spread over both in external mode (two). */
    for (int i = 1; i < pgg_pool_host_count(p); i++)
        on_replicas += host_stats(p, i).conns_open;
    cr_assert_eq(on_replicas, 2);
    cr_assert_eq(pgh_node_terminate_backends(pgh_cluster_primary(c)), 0);
    for (int i = 1; i < pgg_pool_host_count(p); i++)
        cr_assert_eq(pgh_node_terminate_backends(pgh_cluster_replica(c, i - 1)), 0);

    cr_expect_eq(read_ok(p, PGG_READ, "SELECT 1", 5000), 1);
    after = await_connects(p, 0, before, 2);
    cr_expect_eq(after.connects - before.connects, 2,
                 "the primary's 2 dead idle sessions were not replaced (%llu connects)",
                 (unsigned long long)(after.connects - before.connects));
    write_finds_a_session_ready(p, after.connects);
    expect_hosts_untouched(p);
    end_test(p, c);
}

/* The backend pid of a lease's session. */
static int lease_pid(pgg_lease *l)
{
    return PQbackendPID(pgg_lease_conn(l));
}

/*
 * A session the server ended closes its idle siblings that were there
 * before it (a blip ends them all), not one opened after it: a caller that
 * reconnected after the blip and gave its new session back keeps it.  In
 * the fault bench, a writer's session ended 30 ms after the other writer's
 * had (the server's backends exit when they next run), and closed the
 * other writer's new session with it: that writer waited 14 ms for a
 * replacement while libpq's wrote.  Here N is opened after S's last use
 * and pooled, S's backend alone is terminated, a statement on S finds it
 * ended, and the next call is served on N.  Pooled sessions are lent
 * without a look here.  (S, used once on its connect, is a new session:
 * its end is counted against the host, one failure, as ever.)
 */
/* An older session S, leased (its last use: its connect), and a younger
 * N opened after it and given back; their backend pids told. */
static pgg_lease *older_and_younger(pgg_pool *p, int *s_pid, int *n_pid)
{
    pgg_lease *s_lease, *n_lease;
    pgg_error e;

    /* Writes: both on the primary, whose backends terminate_pid ends (in
     * external mode the pool has the replicas too). */
    s_lease = pgg_acquire(p, PGG_WRITE, 5000, NULL, &e);
    cr_assert_not_null(s_lease, "acquire: %s", e.message);
    n_lease = pgg_acquire(p, PGG_WRITE, 5000, NULL, &e);
    cr_assert_not_null(n_lease, "acquire: %s", e.message);
    *s_pid = lease_pid(s_lease);
    *n_pid = lease_pid(n_lease);
    pgg_release(n_lease);
    return s_lease;
}

/* Terminate one backend of the primary; returns once it is gone (its
 * socket holds the FATAL and the close). */
static void terminate_pid(pgh_cluster *c, int pid)
{
    char sql[96];

    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%d, 10000)", pid);
    cr_assert_eq(pgh_node_exec(pgh_cluster_primary(c), sql), 0, "%s",
                 pgh_node_error(pgh_cluster_primary(c)));
}

/* A pool whose older session S was found ended by a statement on it
 * (its backend alone terminated), with the younger N given back before;
 * N's backend pid told, and *before: a time before S was found ended. */
static pgg_pool *older_found_ended(pgh_cluster *c, int *n_pid, double *before)
{
    pgg_pool *p = pool_for(c, LENT_WITHOUT_A_LOOK);
    pgg_lease *s_lease;
    pgg_error e;
    PGresult *r;
    int s_pid;

    s_lease = older_and_younger(p, &s_pid, n_pid);
    terminate_pid(c, s_pid);
    *before = pgh_now_ms();
    r = pgg_lease_exec(s_lease, "SELECT 1", 5000, &e);
    cr_assert_null(r, "a statement on the ended session was served");
    pgg_release(s_lease);
    return p;
}

Test(recovery, a_session_opened_after_the_ended_one_is_kept)
{
    pgh_cluster *c = cluster_or_die(0);
    int n_pid;
    double found;
    pgg_pool *p = older_found_ended(c, &n_pid, &found);
    pgg_call call = {.timeout_ms = 5000};
    pgg_info info;
    pgg_error e;
    PGresult *r;

    r = pgg_exec(p, PGG_WRITE, "SELECT pg_backend_pid()", &call, &info, &e);
    cr_assert_not_null(r, "the call after the blip failed: %s %s", pgg_err_name(e.code),
                       e.message);
    cr_expect_eq(atoi(PQgetvalue(r, 0, 0)), n_pid,
                 "the younger idle session, alive, was closed with the ended one");
    cr_expect_eq(info.attempts, 1);
    PQclear(r);
    end_test(p, c);
}

/*
 * The sibling kept above because nothing had arrived on it may be ended
 * moments later (a server's backends exit when they next run, milliseconds
 * apart under load; a pg_terminate_backend of every session reaches them
 * in turn).  For a while after a session was found ended, every idle one
 * is looked at before it is lent, however recently it was used: here N is
 * ended after S was found ended, and the next write, which would have
 * been sent on N and failed as sent, is served on a new session.  Pooled
 * sessions are lent without a look here otherwise.
 */
Test(recovery, during_a_blip_a_session_is_looked_at_before_it_is_lent)
{
    pgh_cluster *c = cluster_or_die(0);
    int n_pid;
    double found;
    pgg_pool *p = older_found_ended(c, &n_pid, &found);
    pgg_call call = {.timeout_ms = 5000};
    pgg_info info;
    pgg_error e;
    PGresult *r;

    terminate_pid(c, n_pid);
    r = pgg_exec(p, PGG_WRITE, "SELECT pg_backend_pid()", &call, &info, &e);
    /* The look lasts PGG_LOST_RECENT_NS from when S was found ended: a
     * machine too slow to end N and write within it shows nothing. */
    if (pgh_now_ms() - found >= PGG_LOST_RECENT_NS / PGG_NS_PER_MS) {
        PQclear(r);
        end_test(p, c);
        cr_skip_test("N was ended %.0f ms after the blip was seen: past the look's window",
                     pgh_now_ms() - found);
    }
    cr_expect_not_null(r, "the write was sent on the ended session: %s %s (sent %d)",
                       pgg_err_name(e.code), e.message, info.sent);
    if (r)
        cr_expect_neq(atoi(PQgetvalue(r, 0, 0)), n_pid);
    cr_expect_eq(info.attempts, 1);
    PQclear(r);
    end_test(p, c);
}

/*
 * A write sent on a session its server had ended fails (it cannot be
 * known not to have run) and is not retried; its caller comes back for a
 * session within its period.  The ended session is replaced at once, as
 * its idle siblings are, so that the caller finds the replacement ready or
 * on its way: it connected then (in the fault bench, 22-27 ms behind every
 * other client's reconnect, when both writers' sessions ended in flight
 * and no idle sibling was there to replace).  Here the pool's only session
 * is ended, the write fails, and a new session is opened with no call
 * asking for it; the next write takes it.
 */
Test(recovery, a_failed_write_s_ended_session_is_replaced_before_its_caller_returns)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, LENT_WITHOUT_A_LOOK);
    pgg_host_stats before, after;
    pgg_call call = {.timeout_ms = 5000};
    pgg_info info;
    pgg_error e;
    PGresult *r;

    hold_sessions(p, PGG_WRITE, 1);
    before = host_stats(p, 0);
    cr_assert_eq(before.conns_open, 1);
    /* Returns once every backend is gone: our socket holds the FATAL. */
    cr_assert_eq(pgh_node_terminate_backends(pgh_cluster_primary(c)), 0);

    r = pgg_exec(p, PGG_WRITE, "SELECT 1", &call, &info, &e);
    cr_assert_null(r, "the write on the ended session was served");
    cr_assert_eq(info.sent, 1, "the write was not sent (%s): nothing to replace",
                 pgg_err_name(e.code));
    after = await_connects(p, 0, before, 1);
    cr_expect_eq(after.connects - before.connects, 1,
                 "the ended session was not replaced before its caller came back "
                 "(%llu connects)",
                 (unsigned long long)(after.connects - before.connects));
    write_finds_a_session_ready(p, after.connects);
    expect_hosts_untouched(p);
    end_test(p, c);
}

/*
 * The replica behind px (host 1) made to come back as a starting server:
 * refused until its breaker opened (its pooled sessions reset, new
 * connects refused), a probe or two refused by nobody listening, then px
 * in mode (delay_ms) until the host is seen starting.
 */
static void open_until_starting(pgg_pool *p, pgh_proxy *px, pgh_proxy_mode mode, int delay_ms)
{
    pgh_proxy_set_mode(px, PGH_PROXY_REFUSE, 0);
    pgh_proxy_set_mode(px, PGH_PROXY_RESET, 0); /* the pooled sessions too */
    pgh_proxy_set_mode(px, PGH_PROXY_REFUSE, 0);
    for (int i = 0; i < 50 && host_stats(p, 1).state != PGG_BREAKER_OPEN; i++) {
        pgg_call call = {.timeout_ms = 1000};
        PQclear(pgg_exec(p, PGG_READ, "SELECT 1", &call, NULL, NULL));
        sleep_ms(5);
    }
    cr_assert_eq(host_stats(p, 1).state, PGG_BREAKER_OPEN);
    sleep_ms(50); /* a probe or two refused by nobody listening */
    pgh_proxy_set_mode(px, mode, delay_ms);
    for (int i = 0; i < 1000 && !atomic_load(&p->hosts[1].starting); i++)
        sleep_ms(5);
    cr_assert(atomic_load(&p->hosts[1].starting), "the host was never seen starting");
}

typedef struct back_wait {
    pgg_host *h;
    atomic_bool done;
    bool back;
} back_wait;

static void *read_awaits_back(void *arg)
{
    back_wait *b = arg;

    b->back = pgg__host_await_back(b->h, pgg__now_ns() + 20 * PGG_NS_PER_SEC, false, NULL,
                                   NULL);
    atomic_store(&b->done, true);
    return NULL;
}

/*
 * Every server restarted, the replicas still down: reads and writes wait
 * together for the primary's server to start, and its first sessions come
 * one at a time.  The writes, which have no other host, take them first: a
 * read that waited leaves its wait only once the writes that waited with it
 * have left theirs (in the fault bench the readers, arriving first, took
 * the first sessions and the first write came 20 ms after libpq's).  White
 * box: a write waiting is counted by hand; the host starts through a proxy
 * as in a_call_waits_for_a_server_that_is_starting.
 */
Test(recovery, reads_that_waited_for_a_starting_host_let_the_writes_go_first)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a proxy between pgguard and a local replica");
    pgh_proxy *px;
    pgg_pool *p = pool_via_proxy(c, &px, "breaker.open_ms=60000 breaker.open_max_ms=60000 "
                                         "health_probe_timeout_ms=4000 connect_timeout_ms=5000 "
                                         "read_policy=replica_only");
    pgg_host *h = &p->hosts[1];
    back_wait b = {.h = h};
    pthread_t t;

    open_until_starting(p, px, PGH_PROXY_DELAY, 400);

    pthread_mutex_lock(&h->mu);
    h->n_back_writes++; /* a write waiting with the read */
    pthread_mutex_unlock(&h->mu);
    cr_assert_eq(pthread_create(&t, NULL, read_awaits_back, &b), 0);
    for (int i = 0; i < 1000 && atomic_load(&h->n_back_waiting) == 0 && !atomic_load(&b.done);
         i++)
        sleep_ms(1);
    cr_assert(!atomic_load(&b.done), "the read did not wait for the starting host");
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0); /* the host answers now */
    for (int i = 0; i < 2000 && (atomic_load(&h->starting) ||
                                 host_stats(p, 1).state == PGG_BREAKER_OPEN);
         i++)
        sleep_ms(5);
    cr_assert(!atomic_load(&h->starting) && host_stats(p, 1).state != PGG_BREAKER_OPEN,
              "the host never came back");
    sleep_ms(200); /* room for a read that does not wait for the write */
    cr_expect(!atomic_load(&b.done), "the read left before the write that waited with it");
    pthread_mutex_lock(&h->mu);
    h->n_back_writes--; /* the write leaves (pgg__host_await_back) */
    pthread_cond_broadcast(&h->back_cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(t, NULL);
    cr_expect(b.back, "the read was not told the host is back");
    end_test(p, NULL);
    pgh_proxy_free(px);
    pgh_cluster_free(c);
}

/*
 * A server starting up takes connections before it takes sessions, and
 * says so to each meanwhile (57P03, "the database system is starting
 * up"; here a proxy that refused connections, then answers each one so
 * 150 ms after it came, until it passes them on).  A read waiting for the
 * starting host (as in a_call_waits_for_a_server_that_is_starting) keeps
 * waiting through those answers, within its deadline, and is served once
 * the server takes sessions.  Before, the first probe to hear "starting
 * up" ended the wait and the read failed with PGG_EOPEN (the fault bench's
 * restart-all: the waiting call of every thread, tens of ms before the
 * server was up).
 */
Test(recovery, a_call_waiting_for_a_starting_server_outlasts_its_starting_up_answers)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a proxy between pgguard and a local replica");
    pgh_proxy *px;
    pgg_pool *p = pool_via_proxy(c, &px, "breaker.open_ms=60000 breaker.open_max_ms=60000 "
                                         "health_probe_timeout_ms=4000 connect_timeout_ms=5000 "
                                         "read_policy=replica_only");
    pgg_host *h = &p->hosts[1];
    thread_call r = {.p = p, .intent = PGG_READ, .timeout_ms = 10000};
    pthread_t t;
    bool heard = false;

    open_until_starting(p, px, PGH_PROXY_STARTING, 150);

    cr_assert_eq(pthread_create(&t, NULL, exec_in_thread, &r), 0);
    for (int i = 0; i < 1000 && atomic_load(&h->n_back_waiting) == 0 && !atomic_load(&r.done);
         i++)
        sleep_ms(1);
    cr_assert(!atomic_load(&r.done), "the read did not wait for the starting host: %s %s",
              pgg_err_name(r.code), r.message);
    /* A probe hears "starting up" while the read waits. */
    for (int i = 0; i < 1000 && !heard; i++) {
        heard = strstr(host_stats(p, 1).last_error, "starting up") != NULL;
        if (!heard)
            sleep_ms(5);
    }
    cr_assert(heard, "no probe heard the server starting up: %s", host_stats(p, 1).last_error);
    sleep_ms(100); /* room for a wait that this answer ended to return */
    cr_expect(!atomic_load(&r.done), "the server's \"starting up\" ended the read's wait: %s %s",
              pgg_err_name(r.code), r.message);
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0); /* the server takes sessions now */
    pthread_join(t, NULL);
    cr_expect(r.code == PGG_OK, "the read that waited for the starting server failed: %s %s",
              pgg_err_name(r.code), r.message);
    end_test(p, NULL);
    pgh_proxy_free(px);
    pgh_cluster_free(c);
}

/*
 * The proxy answers "starting up" answer_ms after each connect, for ever,
 * with a probe bound of 300 ms: the host is found starting, then not, and
 * must stay so for `looks` looks every look_ms.
 */
static void starting_longer_than_a_probe_bound(int answer_ms, int looks, int look_ms)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a proxy between pgguard and a local replica");
    pgh_proxy *px;
    pgg_pool *p = pool_via_proxy(c, &px, "breaker.open_ms=60000 breaker.open_max_ms=60000 "
                                         "health_probe_timeout_ms=300 connect_timeout_ms=5000 "
                                         "read_policy=replica_only");
    pgg_host *h = &p->hosts[1];
    int seen = 0;

    open_until_starting(p, px, PGH_PROXY_STARTING, answer_ms);
    for (int i = 0; i < 2000 && atomic_load(&h->starting); i++)
        sleep_ms(5);
    cr_assert(!atomic_load(&h->starting), "the host stayed starting");
    for (int i = 0; i < looks; i++) {
        seen += atomic_load(&h->starting);
        sleep_ms(look_ms);
    }
    cr_expect_eq(seen, 0, "the host was found starting again (%d of %d looks) though its "
                          "server has said it is starting up for longer than a probe bound",
                 seen, looks);
    cr_expect(strstr(host_stats(p, 1).last_error, "starting up") != NULL,
              "the probes did not hear the server starting up: %s", host_stats(p, 1).last_error);
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0);
    end_test(p, NULL);
    pgh_proxy_free(px);
    pgh_cluster_free(c);
}

/*
 * A server that says it is starting up for longer than a probe bound is in
 * a long recovery (or stuck in its start): calls no longer wait for it
 * (each would wait out its deadline) but are refused at once, as for a
 * connect held past its bound, until the server answers otherwise.  Here
 * the proxy answers "starting up" 100 ms after each connect for ever, with
 * a probe bound of 300 ms: the host is found starting, then not, and stays
 * so through the answers that follow.  Before, each probe that the server
 * kept waiting marked the host starting again, for the length of that
 * wait.
 */
Test(recovery, a_server_starting_up_longer_than_a_probe_bound_is_not_waited_for)
{
    /* Five answers of "starting up" more, about. */
    starting_longer_than_a_probe_bound(100, 100, 5);
}

/*
 * The same long recovery, with a server slow to say so: each "starting up"
 * comes 400 ms after its connect, past the probe bound (300 ms).  The
 * first probe marks the host starting; held past its bound (probe_hold),
 * it ends the waits; its answer, "starting up", comes later.  The host
 * must not be found starting again until the server answers otherwise:
 * it has been starting for longer than a probe bound.  Before, the hold
 * forgot since when (starting_since), and every probe that followed marked
 * the host starting again for its bound: calls waited out most of every
 * cycle for a server that was not going to take them (found in this file's
 * test above under valgrind, 56 of 100 looks).
 */
Test(recovery, a_server_slow_to_say_it_is_starting_up_is_not_waited_for_again)
{
    /* Three answers of "starting up" more, about. */
    starting_longer_than_a_probe_bound(400, 150, 10);
}

/* Host i's breaker's openings in its current streak (white box). */
static uint32_t reopens_of(pgg_pool *p, int i)
{
    pgg_breaker_stats s;

    pgg__breaker_stats(&p->hosts[i].breaker, pgg__now_ns(), &s);
    return s.reopens;
}

/* Host 1's breaker's moves (pgg_pool_on_event), up to its first into
 * CLOSED. */
typedef struct breaker_moves {
    pthread_mutex_t mu;
    int n;
    bool closed;
    struct {
        int from, to;
        char reason[32];
    } m[16];
} breaker_moves;

static void note_move(const pgg_event *ev, void *ud)
{
    breaker_moves *b = ud;

    pthread_mutex_lock(&b->mu);
    if (ev->type == PGG_EVENT_BREAKER && ev->host_index == 1 && !b->closed &&
        b->n < (int)(sizeof b->m / sizeof b->m[0])) {
        b->m[b->n].from = ev->from;
        b->m[b->n].to = ev->to;
        snprintf(b->m[b->n].reason, sizeof b->m[b->n].reason, "%s",
                 ev->reason ? ev->reason : "");
        b->closed = ev->to == PGG_BREAKER_CLOSED;
        b->n++;
    }
    pthread_mutex_unlock(&b->mu);
}

/*
 * A server down for longer than its breaker's open time (here 100 ms): the
 * open time runs out, the trial (a probe refused by nobody listening)
 * fails, the breaker opens again, maybe several times.  Still one outage:
 * when the server takes a session again its breaker closes at once
 * (host-back), as after a short one.  Before, the reopenings counted as a
 * host that failed again after coming back, and its return only put it on
 * trial (half-open, host-answered): calls were refused with PGG_EOPEN until
 * trial probes passed (the fault bench's restart-all, when the stop took
 * longer than open_ms under load).  The open time may also run out once
 * more before the server's first session is made (half-open,
 * open-elapsed: under valgrind, the session came 130-230 ms after the
 * server was back); the clock's move is not the return's, and the session
 * closes the breaker from there alike.
 */
Test(recovery, a_server_down_longer_than_the_open_time_closes_its_breaker_when_back)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a proxy between pgguard and a local replica");
    pgh_proxy *px;
    pgg_pool *p = pool_via_proxy(c, &px, "breaker.open_ms=100 breaker.open_max_ms=100 "
                                         "read_policy=replica_only");
    breaker_moves b = {.mu = PTHREAD_MUTEX_INITIALIZER};
    bool closed = false;
    int n;

    pgh_proxy_set_mode(px, PGH_PROXY_REFUSE, 0);
    pgh_proxy_set_mode(px, PGH_PROXY_RESET, 0); /* the pooled sessions too */
    pgh_proxy_set_mode(px, PGH_PROXY_REFUSE, 0);
    for (int i = 0; i < 50 && host_stats(p, 1).state != PGG_BREAKER_OPEN; i++) {
        pgg_call call = {.timeout_ms = 1000};
        PQclear(pgg_exec(p, PGG_READ, "SELECT 1", &call, NULL, NULL));
        sleep_ms(5);
    }
    cr_assert_eq(host_stats(p, 1).state, PGG_BREAKER_OPEN);
    /* Open times run out and their trials fail while nobody listens. */
    for (int i = 0; i < 400 && reopens_of(p, 1) < 3; i++)
        sleep_ms(5);
    cr_assert_geq(reopens_of(p, 1), 3, "the breaker did not reopen");
    for (int i = 0; i < 400 && host_stats(p, 1).state != PGG_BREAKER_OPEN; i++)
        sleep_ms(1);
    cr_assert_eq(host_stats(p, 1).state, PGG_BREAKER_OPEN);
    pgg_pool_on_event(p, note_move, &b);
    pgh_proxy_set_mode(px, PGH_PROXY_PASS, 0); /* the server is back */
    for (int i = 0; i < 1000 && !closed; i++) {
        pthread_mutex_lock(&b.mu);
        closed = b.closed;
        pthread_mutex_unlock(&b.mu);
        if (!closed)
            sleep_ms(5);
    }
    pgg_pool_on_event(p, NULL, NULL);
    n = b.n;
    cr_assert(closed, "the breaker never closed (%d moves)", n);
    for (int i = 0; i < n; i++)
        fprintf(stderr, "breaker move %d: %s -> %s (%s)\n", i,
                pgg_breaker_state_name((pgg_breaker_state)b.m[i].from),
                pgg_breaker_state_name((pgg_breaker_state)b.m[i].to), b.m[i].reason);
    cr_expect_str_eq(b.m[n - 1].reason, "host-back",
                     "the breaker of a server back from a long outage closed by %s, not by "
                     "the server's return",
                     b.m[n - 1].reason);
    for (int i = 0; i < n - 1; i++)
        cr_expect_str_eq(b.m[i].reason, "open-elapsed",
                         "move %d before the breaker closed: %s -> %s (%s), not the open time "
                         "running out",
                         i, pgg_breaker_state_name((pgg_breaker_state)b.m[i].from),
                         pgg_breaker_state_name((pgg_breaker_state)b.m[i].to), b.m[i].reason);
    end_test(p, NULL);
    pgh_proxy_free(px);
    pgh_cluster_free(c);
}

/* ------------------------------------------- a call that waited for a slot */

/*
 * A call that waited for its bulkhead slot longer than
 * alive_check_after_idle_ms: its idle session (here the thread's own,
 * ended by the server while the call waited) is polled before it is lent.
 * Before, the call judged the session's idle time by its clock reading from
 * before the wait, saw it used moments ago, and sent the write on a dead
 * session: it failed as sent.
 */
Test(recovery, a_call_that_waited_for_its_slot_checks_its_idle_session)
{
    pgh_cluster *c = cluster_or_die(0);
    setup_table(c);
    pgg_pool *p = pool_for(c, "bulkhead.max_concurrent=1 bulkhead.max_wait_ms=4000 "
                              "alive_check_after_idle_ms=300 pool_min_idle=2");
    pgh_node *primary = pgh_cluster_primary(c);
    blip_arg sa = {.p = p, .intent = PGG_WRITE, .sql = "SELECT pg_sleep(0.8)"};
    char pid[32], sql[160], out[32];
    pthread_t t;
    pgg_call call = {.timeout_ms = 5000};
    pgg_info info;
    pgg_error e;
    PGresult *r;

    /* Two sessions: one for each thread (the one slot admits one call
     * at a time, so calls cannot open them). */
    for (double end = pgh_now_ms() + 10000; host_stats(p, 0).conns_idle < 2;) {
        cr_assert_lt(pgh_now_ms(), end, "pool_min_idle=2 never warmed");
        sleep_ms(10);
    }
    /* The session this thread parks, and its server process. */
    r = pgg_exec(p, PGG_WRITE, "SELECT pg_backend_pid()", &call, NULL, &e);
    cr_assert_not_null(r, "%s", e.message);
    snprintf(pid, sizeof pid, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);

    /* Another thread takes the only slot for 0.8 s on another session. */
    cr_assert_eq(pthread_create(&t, NULL, slow_call, &sa), 0);
    for (int i = 0;; i++) {
        cr_assert_eq(pgh_node_query_value(primary,
                                          "SELECT count(*) FROM pg_stat_activity "
                                          "WHERE query = 'SELECT pg_sleep(0.8)' AND state = 'active'",
                                          out, sizeof out), 0);
        if (strcmp(out, "1") == 0)
            break;
        cr_assert_lt(i, 500, "the long write never started");
        sleep_ms(2);
    }
    /* The server ends this thread's idle session, and it is gone. */
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%s)", pid);
    cr_assert_eq(pgh_node_exec(primary, sql), 0);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", pid);
    for (int i = 0;; i++) {
        cr_assert_eq(pgh_node_query_value(primary, sql, out, sizeof out), 0);
        if (strcmp(out, "0") == 0)
            break;
        cr_assert_lt(i, 500, "the terminated session never ended");
        sleep_ms(2);
    }

    /* The write waits for the slot (the long write still holds it), then
     * must find its session dead and take another. */
    r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = v WHERE id = 1", &call, &info, &e);
    cr_expect_not_null(r, "the write after the wait failed: %s %s (sent %d)",
                       pgg_err_name(e.code), e.message, info.sent);
    PQclear(r);
    pthread_join(t, NULL);
    cr_expect_eq(sa.failed, 0, "the long write: %s", pgg_err_name(sa.code));
    end_test(p, c);
}

/* ----------------------------------------------------- a host found silent */

/* Breaker openings of host 0, and the reason of the first. */
typedef struct opened_by {
    pthread_mutex_t mu;
    int opened;
    char reason[64];
} opened_by;

static void on_open(const pgg_event *ev, void *ud)
{
    opened_by *o = ud;

    if (ev->type != PGG_EVENT_BREAKER || ev->host_index != 0 || ev->to != PGG_BREAKER_OPEN)
        return;
    pthread_mutex_lock(&o->mu);
    if (o->opened++ == 0)
        snprintf(o->reason, sizeof o->reason, "%s", ev->reason ? ev->reason : "");
    pthread_mutex_unlock(&o->mu);
}

/* The breaker's event is told after its state changes, on the thread that
 * changed it (which first closes the host's connections): a test that saw
 * the state must wait for the event, up to ms. */
static void wait_opened(opened_by *o, int ms)
{
    for (int i = 0; i < ms; i++) {
        int n;

        pthread_mutex_lock(&o->mu);
        n = o->opened;
        pthread_mutex_unlock(&o->mu);
        if (n > 0)
            return;
        sleep_ms(1);
    }
}

/* Two writers at once, each one statement under a 300 ms deadline. */
typedef struct writer {
    pgg_pool *p;
    const char *sql;
    int code;
    bool sent;
} writer;

static void *write_once(void *arg)
{
    writer *w = arg;
    pgg_call call = {.timeout_ms = 300};
    pgg_info info = {0};
    pgg_error e;
    PGresult *r = pgg_exec(w->p, PGG_WRITE, w->sql, &call, &info, &e);

    w->code = r ? PGG_OK : e.code;
    w->sent = info.sent;
    PQclear(r);
    return NULL;
}

static void write_twice_at_once(pgg_pool *p, const char *sql, writer w[2])
{
    pthread_t t[2];

    for (int i = 0; i < 2; i++) {
        w[i] = (writer){.p = p, .sql = sql};
        cr_assert_eq(pthread_create(&t[i], NULL, write_once, &w[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
}

/*
 * Settings for the two tests below: the default breaker (five consecutive
 * failures to trip), an open time longer than the test, and no calm probe
 * of its own during it (a round is asked for): two timeouts alone cannot
 * open it, nor can the one probe of that round.
 */
#define SILENT_SETTINGS                                                   \
    "breaker.consecutive_failures=5 breaker.min_calls=20 "                \
    "breaker.open_ms=60000 breaker.open_max_ms=60000 "                    \
    "health_interval_ms=60000 health_probe_timeout_ms=500"

/*
 * A hung primary (SIGSTOP) hit by two writes at once: both time out, and
 * the health thread's probe, sent at once, gets no answer either: the
 * breaker opens on that evidence (host-silent), within one health round,
 * with two failures counted, not five (three rounds of 300 ms timeouts for
 * two writers with the defaults).  Later writes are refused at once
 * (PGG_EOPEN), not sent.  Before, the round ended with the breaker closed
 * and the next writes were sent into the hung server.
 */
Test(recovery, a_hung_primary_opens_its_breaker_on_one_deadline_of_silence)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a hang (SIGSTOP)");
    setup_table(c);
    pgg_pool *p = pool_for(c, SILENT_SETTINGS);
    opened_by o = {.mu = PTHREAD_MUTEX_INITIALIZER};
    writer w[2];
    pgg_host_stats h;
    int refused = 0;

    hold_sessions(p, PGG_WRITE, 2); /* the writes go on pooled sessions */
    pgg_pool_on_event(p, on_open, &o);
    cr_assert_eq(pgh_node_hang(pgh_cluster_primary(c)), 0);
    write_twice_at_once(p, "UPDATE pgg_rec_t SET v = v WHERE id = 1", w);
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(w[i].code, PGG_ETIMEDOUT, "write %d: %s", i, pgg_err_name(w[i].code));
        cr_expect(w[i].sent, "write %d was not sent", i);
    }
    cr_assert(pgg__health_await_round(p->health, pgg__now_ns() + 10 * PGG_NS_PER_SEC),
              "no health round completed");
    h = host_stats(p, 0);
    cr_expect_eq(h.state, PGG_BREAKER_OPEN, "breaker %s after the round",
                 pgg_breaker_state_name(h.state));
    events_delivered(p); /* not under o.mu: the listener takes it */
    pthread_mutex_lock(&o.mu);
    cr_expect_eq(o.opened, 1);
    cr_expect_str_eq(o.reason, "host-silent");
    pthread_mutex_unlock(&o.mu);
    cr_expect_lt(h.failures[PGG_CLASS_TIMEOUT], 5, "%llu timeouts counted",
                 (unsigned long long)h.failures[PGG_CLASS_TIMEOUT]);
    for (int i = 0; i < 10; i++) {
        pgg_call call = {.timeout_ms = 300};
        pgg_info info = {0};
        pgg_error e;
        PGresult *r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = v WHERE id = 1",
                               &call, &info, &e);
        if (!r && e.code == PGG_EOPEN && !info.sent)
            refused++;
        else
            fprintf(stderr, "write %d: %s sent %d\n", i, r ? "ok" : pgg_err_name(e.code),
                    info.sent);
        PQclear(r);
    }
    cr_expect_eq(refused, 10, "%d of 10 writes refused unsent by the open breaker", refused);
    cr_assert_eq(pgh_node_resume(pgh_cluster_primary(c)), 0);
    /* The host's return closes it (its first outage of a streak). */
    cr_expect(wait_state(p, 0, PGG_BREAKER_CLOSED, 5000), "breaker %s after the resume",
              pgg_breaker_state_name(host_stats(p, 0).state));
    pgg_pool_on_event(p, NULL, NULL);
    end_test(p, c);
}

/*
 * A hung primary (SIGSTOP) met by a pipelined statement (pipeline=on; a
 * lease keeps a session busy, so the read shares a pipe instead of taking
 * a connection of its own): its deadline is silence, as a statement's on
 * a connection of its own is.  The health thread probes at once and, the
 * probe unanswered within its bound, the breaker opens (host-silent).
 * Before, a pipelined deadline only marked the host suspect: with the calm
 * probe a minute away and one timeout of five, the breaker stayed closed
 * and later calls were sent into the hung server.
 */
Test(recovery, a_hung_primary_met_by_a_pipelined_statement_is_silent)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a hang (SIGSTOP)");
    pgg_pool *p = pool_for(c, "pipeline=on pipeline.connections=1 " SILENT_SETTINGS);
    opened_by o = {.mu = PTHREAD_MUTEX_INITIALIZER};
    pgg_call call = {.timeout_ms = 300};
    pgg_info info = {0};
    pgg_lease *hold;
    pgg_error e;
    PGresult *r;
    uint64_t piped0;

    hold_sessions(p, PGG_READ_PRIMARY, 2); /* the pipe's session is pooled */
    hold = pgg_acquire(p, PGG_READ_PRIMARY, 2000, NULL, &e);
    cr_assert_not_null(hold, "acquire: %s", e.message);
    pgg_pool_on_event(p, on_open, &o);
    piped0 = pgg__pipes_sent(p->pipes);
    cr_assert_eq(pgh_node_hang(pgh_cluster_primary(c)), 0);
    r = pgg_exec(p, PGG_READ_PRIMARY, "SELECT 1", &call, &info, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_ETIMEDOUT, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect(info.sent, "the read was not sent");
    PQclear(r);
    cr_assert_gt(pgg__pipes_sent(p->pipes), piped0, "the read was not pipelined");
    cr_expect(wait_state(p, 0, PGG_BREAKER_OPEN, 5000), "breaker %s after the probe's bound",
              pgg_breaker_state_name(host_stats(p, 0).state));
    wait_opened(&o, 5000);
    events_delivered(p); /* not under o.mu: the listener takes it */
    pthread_mutex_lock(&o.mu);
    cr_expect_eq(o.opened, 1);
    cr_expect_str_eq(o.reason, "host-silent");
    pthread_mutex_unlock(&o.mu);
    cr_assert_eq(pgh_node_resume(pgh_cluster_primary(c)), 0);
    pgg_pool_on_event(p, NULL, NULL);
    pgg_release(hold);
    end_test(p, c);
}

/* Borrowers waiting for a connection of host 0. */
static int host_waiting(pgg_pool *p)
{
    pgg_host_counts n;

    pgg__host_counts(&p->hosts[0], &n);
    return n.waiting;
}

/*
 * A call waits for the pool's one connection (pool_max=1, held by a lease)
 * while the health thread's probes are answered; the primary hangs
 * (SIGSTOP), the lease's connection is dropped, and the call's own connect
 * runs into the hang until connect_timeout_ms.  Its silence dates from the
 * connect, not from the call's start: the host is probed and, silent
 * within the probe's bound, its breaker opens (host-silent).  Before, the
 * silence was dated from before the probes' answers, and the health thread
 * dropped it as answered meanwhile: the breaker stayed closed.
 */
Test(recovery, a_connect_into_a_hang_after_a_wait_for_a_connection_is_silence)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a hang (SIGSTOP)");
    pgg_pool *p = pool_for(c, "pool_max=1 pool_min_idle=0 connect_timeout_ms=500 "
                              "breaker.consecutive_failures=100 breaker.min_calls=100 "
                              "breaker.open_ms=60000 breaker.open_max_ms=60000 "
                              "health_interval_ms=50 health_probe_timeout_ms=1000");
    opened_by o = {.mu = PTHREAD_MUTEX_INITIALIZER};
    thread_call w = {.p = p, .intent = PGG_READ_PRIMARY, .timeout_ms = 3000};
    pgg_lease *hold;
    pgg_error e;
    pthread_t t;

    hold = pgg_acquire(p, PGG_READ_PRIMARY, 2000, NULL, &e);
    cr_assert_not_null(hold, "acquire: %s", e.message);
    pgg_pool_on_event(p, on_open, &o);
    cr_assert_eq(pthread_create(&t, NULL, exec_in_thread, &w), 0);
    for (int i = 0; i < 2000 && host_waiting(p) == 0; i++)
        sleep_ms(1);
    cr_assert_eq(host_waiting(p), 1, "the call does not wait for the connection");
    /* Probes answered while it waits (every 50 ms). */
    sleep_ms(300);
    cr_assert_eq(pgh_node_hang(pgh_cluster_primary(c)), 0);
    /* The lease's connection left busy by raw use: dropped at release,
     * without a round trip; the waiting call connects. */
    cr_assert(PQsendQuery(pgg_lease_conn(hold), "SELECT 1"));
    pgg_release(hold);
    pthread_join(t, NULL);
    cr_expect_eq(w.code, PGG_ETIMEDOUT, "the call: %s (%s)", pgg_err_name(w.code), w.message);
    cr_expect(wait_state(p, 0, PGG_BREAKER_OPEN, 5000), "breaker %s after the probe's bound",
              pgg_breaker_state_name(host_stats(p, 0).state));
    wait_opened(&o, 5000);
    events_delivered(p); /* not under o.mu: the listener takes it */
    pthread_mutex_lock(&o.mu);
    cr_expect_eq(o.opened, 1);
    cr_expect_str_eq(o.reason, "host-silent");
    pthread_mutex_unlock(&o.mu);
    cr_assert_eq(pgh_node_resume(pgh_cluster_primary(c)), 0);
    pgg_pool_on_event(p, NULL, NULL);
    end_test(p, c);
}

/*
 * A primary that is slow but answers: statements longer than their
 * deadline (pg_sleep, two writers at once, twice) and statements ended by
 * the session's own statement_timeout (57014, the caller's setting) count
 * as failures, as ever, but the probe each timeout sends is answered: no
 * breaker opens, and the next write succeeds.
 */
Test(recovery, a_slow_primary_that_answers_opens_no_breaker)
{
    pgh_cluster *c = cluster_or_die(0);
    setup_table(c);
    pgg_pool *p = pool_for(c, SILENT_SETTINGS);
    opened_by o = {.mu = PTHREAD_MUTEX_INITIALIZER};
    writer w[2];
    pgg_host_stats h;

    hold_sessions(p, PGG_WRITE, 2);
    pgg_pool_on_event(p, on_open, &o);
    for (int round = 0; round < 2; round++) {
        write_twice_at_once(p, "SELECT pg_catalog.pg_sleep(1)", w);
        for (int i = 0; i < 2; i++)
            cr_expect_eq(w[i].code, PGG_ETIMEDOUT, "round %d write %d: %s", round, i,
                         pgg_err_name(w[i].code));
        cr_assert(pgg__health_await_round(p->health, pgg__now_ns() + 10 * PGG_NS_PER_SEC),
                  "no health round completed");
        h = host_stats(p, 0);
        cr_expect_eq(h.state, PGG_BREAKER_CLOSED, "round %d: breaker %s", round,
                     pgg_breaker_state_name(h.state));
        /* The next write is answered (and ends the run of failures). */
        read_ok(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = v WHERE id = 2", 3000);
    }
    /* statement_timeout's 57014: an answer of the server, the caller's. */
    for (int i = 0; i < 4; i++) {
        pgg_call call = {.timeout_ms = 3000};
        pgg_error e;
        PGresult *r = pgg_exec(p, PGG_WRITE,
                               "SET statement_timeout = 50; SELECT pg_catalog.pg_sleep(1)",
                               &call, NULL, &e);
        cr_expect_null(r);
        cr_expect_str_eq(e.sqlstate, "57014", "%s: %s", pgg_err_name(e.code), e.message);
        PQclear(r);
    }
    cr_assert(pgg__health_await_round(p->health, pgg__now_ns() + 10 * PGG_NS_PER_SEC),
              "no health round completed");
    h = host_stats(p, 0);
    cr_expect_eq(h.state, PGG_BREAKER_CLOSED, "after 57014: breaker %s",
                 pgg_breaker_state_name(h.state));
    cr_expect_geq(h.failures[PGG_CLASS_TIMEOUT], 8, "the timeouts were not counted (%llu)",
                  (unsigned long long)h.failures[PGG_CLASS_TIMEOUT]);
    pthread_mutex_lock(&o.mu);
    cr_expect_eq(o.opened, 0, "the breaker opened (%s)", o.reason);
    pthread_mutex_unlock(&o.mu);
    pgg_pool_on_event(p, NULL, NULL);
    end_test(p, c);
}

/* Reads on the pool until told to stop, counting the answered ones. */
typedef struct reader {
    pgg_pool *p;
    atomic_bool stop;
    atomic_int answered;
} reader;

static void *read_until_stopped(void *arg)
{
    reader *rd = arg;

    while (!atomic_load(&rd->stop)) {
        pgg_call call = {.timeout_ms = 3000};
        pgg_error e;
        PGresult *r = pgg_exec(rd->p, PGG_WRITE, "SELECT 1", &call, NULL, &e);

        if (r)
            atomic_fetch_add(&rd->answered, 1);
        PQclear(r);
    }
    return NULL;
}

/*
 * The health thread's own session is stopped (SIGSTOP of its backend
 * alone): a statement longer than its deadline has the host probed, and
 * that probe gets no answer, but every other call there is answered
 * meanwhile.  The host is not silent: no breaker opens (a host that
 * answers calls is slow to answer the probe, a loaded server, not hung).
 * Before, the probe alone decided and the breaker opened (host-silent),
 * refusing every caller of a host that answered them all.
 */
Test(recovery, a_host_answering_calls_is_not_silent_when_only_its_probe_is)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a stopped backend (SIGSTOP)");
    setup_table(c);
    pgg_pool *p = pool_for(c, SILENT_SETTINGS);
    opened_by o = {.mu = PTHREAD_MUTEX_INITIALIZER};
    reader rd = {.p = p};
    pthread_t t;
    pgg_host_stats h;
    PGconn *admin;
    PGresult *r;
    int pid;

    /* The health thread's session exists and ran its probe. */
    cr_assert(pgg__health_await_round(p->health, pgg__now_ns() + 10 * PGG_NS_PER_SEC),
              "no health round completed");
    admin = PQconnectdb(pgh_node_conninfo(pgh_cluster_primary(c)));
    cr_assert_eq(PQstatus(admin), CONNECTION_OK, "%s", PQerrorMessage(admin));
    r = PQexec(admin, "SELECT pid FROM pg_catalog.pg_stat_activity "
                      "WHERE query LIKE 'SELECT pg\\_catalog.pg\\_is\\_in\\_recovery(), CASE%' "
                      "AND pid <> pg_catalog.pg_backend_pid()");
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(admin));
    cr_assert_eq(PQntuples(r), 1, "%d health sessions found", PQntuples(r));
    pid = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    cr_assert_gt(pid, 0);

    pgg_pool_on_event(p, on_open, &o);
    cr_assert_eq(kill(pid, SIGSTOP), 0);
    cr_assert_eq(pthread_create(&t, NULL, read_until_stopped, &rd), 0);
    {
        pgg_call call = {.timeout_ms = 300};
        pgg_error e;
        PGresult *slow = pgg_exec(p, PGG_WRITE, "SELECT pg_catalog.pg_sleep(1)", &call,
                                  NULL, &e);
        cr_expect_null(slow);
        cr_expect_eq(e.code, PGG_ETIMEDOUT, "%s", pgg_err_name(e.code));
        PQclear(slow);
    }
    /* The probe that timeout sent ends at its bound, unanswered. */
    cr_expect(pgg__health_await_round(p->health, pgg__now_ns() + 10 * PGG_NS_PER_SEC),
              "no health round completed");
    cr_expect(pgg__health_await_round(p->health, pgg__now_ns() + 10 * PGG_NS_PER_SEC),
              "no health round completed");
    atomic_store(&rd.stop, true);
    pthread_join(t, NULL);
    kill(pid, SIGCONT);
    h = host_stats(p, 0);
    cr_expect_gt(atomic_load(&rd.answered), 0, "no call was answered");
    cr_expect_geq(h.failures[PGG_CLASS_TIMEOUT], 1, "the call's timeout was not counted");
    cr_expect(strstr(h.last_error, "health probe timed out"),
              "the probe was answered: %s", h.last_error);
    pthread_mutex_lock(&o.mu);
    cr_expect_eq(o.opened, 0, "the breaker opened (%s)", o.reason);
    pthread_mutex_unlock(&o.mu);
    cr_expect_eq(h.state, PGG_BREAKER_CLOSED, "breaker %s",
                 pgg_breaker_state_name(h.state));
    pgg_pool_on_event(p, NULL, NULL);
    PQfinish(admin);
    end_test(p, c);
}

/*
 * breaker.mode=metrics-only: the breaker trips nothing, and counts each
 * trip it would have made (trips_suppressed).  A hung primary found
 * silent (a write's timeout, then its probe unanswered) is such a trip:
 * counted, nothing refused.  Before, the health thread checked silence
 * only for a closed breaker, so metrics-only never saw it.
 */
Test(recovery, a_hung_primary_in_metrics_only_mode_counts_the_trip_it_would_make)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a hang (SIGSTOP)");
    setup_table(c);
    pgg_pool *p = pool_for(c, SILENT_SETTINGS " breaker.mode=metrics-only");
    pgg_breaker_stats bs;
    writer w[2];

    hold_sessions(p, PGG_WRITE, 2);
    cr_assert_eq(pgh_node_hang(pgh_cluster_primary(c)), 0);
    write_twice_at_once(p, "UPDATE pgg_rec_t SET v = v WHERE id = 1", w);
    for (int i = 0; i < 2; i++)
        cr_expect_eq(w[i].code, PGG_ETIMEDOUT, "write %d: %s", i, pgg_err_name(w[i].code));
    cr_expect(pgg__health_await_round(p->health, pgg__now_ns() + 10 * PGG_NS_PER_SEC),
              "no health round completed");
    pgg__breaker_stats(&p->hosts[0].breaker, pgg__now_ns(), &bs);
    cr_assert_eq(pgh_node_resume(pgh_cluster_primary(c)), 0);
    cr_expect_eq(bs.state, PGG_BREAKER_METRICS_ONLY, "breaker %s",
                 pgg_breaker_state_name(bs.state));
    /* Two timeouts and one probe's: short of consecutive_failures (5). */
    cr_expect_geq(bs.trips_suppressed, 1, "the silence was not counted as a trip");
    end_test(p, c);
}

/* A write under a 2 s deadline that its cancel handle ends. */
typedef struct cancelled_writer {
    pgg_pool *p;
    pgg_cancel *cancel;
    int code;
} cancelled_writer;

static void *write_cancelled(void *arg)
{
    cancelled_writer *w = arg;
    pgg_call call = {.timeout_ms = 2000, .cancel = w->cancel};
    pgg_error e;
    PGresult *r = pgg_exec(w->p, PGG_WRITE, "UPDATE pgg_rec_t SET v = v WHERE id = 1",
                           &call, NULL, &e);

    w->code = r ? PGG_OK : e.code;
    PQclear(r);
    return NULL;
}

/*
 * A hung primary (SIGSTOP): a write's timeout has it probed, and while the
 * probe waits its bound (3 s here) other calls there end without any
 * answer from the host: one its caller cancels (while it connects or
 * waits for the connection), one that finds no connection free
 * (pool_max 1).  Those outcomes are ignored ones, but not answers: the
 * host stays silent, and the breaker opens (host-silent).
 * Before, every ignored outcome counted as an answer of the host, so a
 * cancel or an exhausted pool (the usual case on a hung host with more
 * callers than connections) kept the breaker closed.
 */
Test(recovery, a_hung_primary_is_silent_though_calls_there_were_cancelled_or_found_no_connection)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a hang (SIGSTOP)");
    setup_table(c);
    /* No opening but the silence's (failures never reach the count). */
    pgg_pool *p = pool_for(c, "breaker.consecutive_failures=100 breaker.min_calls=100 "
                              "breaker.open_ms=60000 breaker.open_max_ms=60000 "
                              "health_interval_ms=60000 health_probe_timeout_ms=3000 "
                              "connect_timeout_ms=5000 pool_max=1");
    opened_by o = {.mu = PTHREAD_MUTEX_INITIALIZER};
    cancelled_writer cw = {.p = p, .cancel = pgg_cancel_new()};
    pthread_t t;
    pgg_host_stats before, h;

    cr_assert_not_null(cw.cancel);
    hold_sessions(p, PGG_WRITE, 1);
    pgg_pool_on_event(p, on_open, &o);
    cr_assert_eq(pgh_node_hang(pgh_cluster_primary(c)), 0);
    {
        pgg_call call = {.timeout_ms = 300};
        pgg_error e;
        PGresult *r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = v WHERE id = 1",
                               &call, NULL, &e);
        cr_expect_null(r);
        cr_expect_eq(e.code, PGG_ETIMEDOUT, "%s", pgg_err_name(e.code));
        PQclear(r);
    }
    /* The probe that timeout sent is on its way (the health thread is
     * woken at once); the ignored outcomes below come while it waits. */
    sleep_ms(300);
    before = host_stats(p, 0);
    cr_assert_eq(pthread_create(&t, NULL, write_cancelled, &cw), 0);
    sleep_ms(200);
    {
        pgg_call call = {.timeout_ms = 200};
        pgg_error e;
        PGresult *r = pgg_exec(p, PGG_WRITE, "UPDATE pgg_rec_t SET v = v WHERE id = 1",
                               &call, NULL, &e);
        cr_expect_null(r);
        PQclear(r);
    }
    pgg_cancel_fire(cw.cancel);
    pthread_join(t, NULL);
    cr_expect_eq(cw.code, PGG_ECANCELED, "%s", pgg_err_name(cw.code));
    h = host_stats(p, 0);
    cr_expect_gt(h.ignored, before.ignored, "no ignored outcome during the probe");
    cr_expect(wait_state(p, 0, PGG_BREAKER_OPEN, 8000), "breaker %s after the probe's bound",
              pgg_breaker_state_name(host_stats(p, 0).state));
    wait_opened(&o, 5000);
    events_delivered(p); /* not under o.mu: the listener takes it */
    pthread_mutex_lock(&o.mu);
    cr_expect_eq(o.opened, 1);
    cr_expect_str_eq(o.reason, "host-silent");
    pthread_mutex_unlock(&o.mu);
    cr_assert_eq(pgh_node_resume(pgh_cluster_primary(c)), 0);
    pgg_pool_on_event(p, NULL, NULL);
    pgg_cancel_free(cw.cancel);
    end_test(p, c);
}
