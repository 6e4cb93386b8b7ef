/*
 * Monotonic reads across a replica's restart (hold.h): a hot standby
 * stopped without a restartpoint and started again takes sessions as soon
 * as it is consistent, which can be behind what it had replayed and
 * served.  pgguard must send it no read until it has replayed what it had
 * reported again.
 */
#include <pthread.h>
#include <stdlib.h>

#include "pool_util.h"

/* White box: the LSN parser of the health probe, its rounds. */
#include "events.h"
#include "health.h"
#include "link.h"
#include "pool.h"

typedef struct held_seen {
    pthread_mutex_t mu;
    int held, released; /* PGG_EVENT_READS_HELD for the watched host */
    int host;
    char reason[256];
} held_seen;

static void on_event(const pgg_event *ev, void *ud)
{
    held_seen *s = ud;

    if (ev->type != PGG_EVENT_READS_HELD || ev->host_index != s->host)
        return;
    pthread_mutex_lock(&s->mu);
    if (ev->to)
        s->held++;
    else
        s->released++;
    snprintf(s->reason, sizeof s->reason, "%s", ev->reason ? ev->reason : "");
    pthread_mutex_unlock(&s->mu);
}

static uint64_t lsn_of(pgh_node *n, const char *sql)
{
    char v[64];
    uint64_t lsn = 0;

    cr_assert_eq(pgh_node_query_value(n, sql, v, sizeof v), 0, "%s", pgh_node_error(n));
    cr_assert(pgg__lsn_parse(v, &lsn), "not an LSN: '%s'", v);
    return lsn;
}

static void set_on(pgh_node *n, const char *sql)
{
    cr_assert_eq(pgh_node_exec(n, sql), 0, "%s: %s", sql, pgh_node_error(n));
    cr_assert_eq(pgh_node_exec(n, "SELECT pg_reload_conf()"), 0, "%s", pgh_node_error(n));
}

/* One read of the table through the pool: it must succeed and see the
 * table's row.  Returns the host that served it. */
static int read_table(pgg_pool *p)
{
    pgg_call call = {.timeout_ms = 3000};
    pgg_info info;
    pgg_error e;
    PGresult *r = pgg_exec(p, PGG_READ, "SELECT count(*) FROM pgg_mono_t", &call, &info, &e);

    cr_assert_not_null(r, "read failed on %s: %s %s (SQLSTATE %s)", info.host,
                       pgg_err_name(e.code), e.message, e.sqlstate);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "on %s (host %d, attempt %d; held until %llx, role %d): %s",
                 info.host, info.host_index, info.attempts,
                 (unsigned long long)host_stats(p, info.host_index).reads_held_until_lsn,
                 host_stats(p, info.host_index).role, PQresultErrorMessage(r));
    cr_assert_str_eq(PQgetvalue(r, 0, 0), "1", "read on %s", info.host);
    PQclear(r);
    return info.host_index;
}

/*
 * Replica 0 goes back behind the position pgguard saw it report; no read
 * may go there until it caught up.  calls_find_it: reads had sessions
 * there and health rounds come only when asked (or woken by a failure), so
 * the reads right after the restart meet its dead sessions first; else no
 * read went there before and the health probes find it (rounds every
 * 100 ms).
 */
static void back_behind(bool calls_find_it)
{
    pgh_cluster *c = cluster_or_die(2);
    pgh_require_replicas(c, 2);
    pgh_require_local(c, "an immediate stop of a replica");
    pgh_node *prim = pgh_cluster_primary(c), *r0 = pgh_cluster_replica(c, 0);
    held_seen seen = {.mu = PTHREAD_MUTEX_INITIALIZER, .host = 1};
    uint64_t created, reported, after;
    double end;
    int on_r0;
    char v[16];

    /* On replica 0 nothing writes a buffer from here on (no background
     * writer LRU writes, no timed restartpoint): its minRecoveryPoint stays
     * before the table's creation, so after an immediate stop it is
     * consistent, and takes sessions, before replaying it. */
    set_on(r0, "ALTER SYSTEM SET bgwriter_lru_maxpages = 0");
    set_on(r0, "ALTER SYSTEM SET checkpoint_timeout = '1d'");
    pgg_pool *p = pool_for(c, calls_find_it ? "health_interval_ms=60000" : NULL);
    pgg_pool_on_event(p, on_event, &seen);

    cr_assert_eq(pgh_node_exec(prim, "SET client_min_messages = warning;"
                                     "DROP TABLE IF EXISTS pgg_mono_t;"
                                     "CREATE TABLE pgg_mono_t (v int);"
                                     "INSERT INTO pgg_mono_t VALUES (1)"),
                 0, "%s", pgh_node_error(prim));
    created = lsn_of(prim, "SELECT pg_current_wal_lsn()");
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pgh_node_wait_replay(pgh_cluster_replica(c, i), prim, 10000), 0);
    /* pgguard has seen replica 0 replay past the table's creation. */
    cr_assert(pgg__health_await_round(p->health, pgg__now_ns() + 10 * PGG_NS_PER_SEC));
    reported = host_stats(p, 1).replay_lsn;
    cr_assert_geq(reported, created, "the probes never reported replica 0 past the table");
    if (calls_find_it) {
        /* Sessions on replica 0 (reads rotate between the replicas). */
        on_r0 = 0;
        for (int i = 0; i < 200 && on_r0 < 3; i++)
            on_r0 += read_table(p) == 1;
        cr_assert_geq(on_r0, 3, "no read reached replica 0 before the stop");
    } else {
        cr_assert_eq(host_stats(p, 1).conns_open, 0, "sessions on replica 0");
    }

    /* The commit is not applied again after the restart for an hour. */
    set_on(r0, "ALTER SYSTEM SET recovery_min_apply_delay = '1h'");
    cr_assert_eq(pgh_node_stop(r0, PGH_STOP_IMMEDIATE), 0);
    cr_assert_eq(pgh_node_start(r0), 0);

    /* The precondition, checked: replica 0 is back, behind what it
     * reported, without the table. */
    after = lsn_of(r0, "SELECT pg_last_wal_replay_lsn()");
    cr_assert_lt(after, reported, "replica 0 came back at %X/%X, not behind %X/%X: "
                 "the setup did not make it go back",
                 (unsigned)(after >> 32), (unsigned)after,
                 (unsigned)(reported >> 32), (unsigned)reported);
    cr_assert_eq(pgh_node_query_value(r0, "SELECT to_regclass('pgg_mono_t') IS NULL",
                                      v, sizeof v), 0);
    cr_assert_str_eq(v, "t", "replica 0 came back with the table");

    /* At once (its pooled sessions are dead, no probe has run since the
     * restart) or after health rounds: every read succeeds elsewhere and
     * sees the table. */
    for (int i = 0; i < 200 && calls_find_it; i++)
        cr_assert_neq(read_table(p), 1, "read %d went to replica 0, back behind itself", i);
    cr_assert(pgg__health_await_round(p->health, pgg__now_ns() + 10 * PGG_NS_PER_SEC));
    cr_assert(pgg__health_await_round(p->health, pgg__now_ns() + 10 * PGG_NS_PER_SEC));
    for (int i = 0; i < 200; i++)
        cr_assert_neq(read_table(p), 1, "read %d went to replica 0, back behind itself", i);
    pgg_host_stats hs = host_stats(p, 1);
    cr_assert_eq(hs.role, PGG_ROLE_STANDBY);
    cr_assert_eq(hs.state, PGG_BREAKER_CLOSED, "its breaker is not what keeps reads away");
    cr_assert_geq(hs.reads_held_until_lsn, reported, "held until %X/%X",
                  (unsigned)(hs.reads_held_until_lsn >> 32), (unsigned)hs.reads_held_until_lsn);
    cr_assert_lt(hs.replay_lsn, reported);
    pgg__events_flush(p->events); /* the health thread's: events.h */
    pthread_mutex_lock(&seen.mu);
    cr_assert_eq(seen.held, 1, "PGG_EVENT_READS_HELD (to 1) events: %d", seen.held);
    cr_assert_eq(seen.released, 0);
    fprintf(stderr, "held: %s\n", seen.reason);
    pthread_mutex_unlock(&seen.mu);

    /* Caught up: used again. */
    set_on(r0, "ALTER SYSTEM RESET recovery_min_apply_delay");
    cr_assert_eq(pgh_node_wait_replay(r0, prim, 10000), 0);
    end = pgh_now_ms() + 10000;
    while (host_stats(p, 1).reads_held_until_lsn && pgh_now_ms() < end)
        (void)pgg__health_await_round(p->health, pgg__now_ns() + PGG_NS_PER_SEC);
    cr_assert_eq(host_stats(p, 1).reads_held_until_lsn, 0, "still held after catching up");
    on_r0 = 0;
    for (int i = 0; i < 200 && !on_r0; i++)
        on_r0 = read_table(p) == 1;
    cr_assert(on_r0, "no read went to replica 0 after it caught up");
    pgg__events_flush(p->events); /* the health thread's: events.h */
    pthread_mutex_lock(&seen.mu);
    cr_assert_eq(seen.released, 1, "PGG_EVENT_READS_HELD (to 0) events: %d", seen.released);
    fprintf(stderr, "released: %s\n", seen.reason);
    pthread_mutex_unlock(&seen.mu);

    pgg_pool_on_event(p, NULL, NULL);
    end_test(p, c);
}

Test(monotonic, a_replica_back_behind_itself_takes_no_read_until_it_caught_up)
{
    back_behind(true);
}

Test(monotonic, a_replica_probed_back_behind_itself_takes_no_read_until_it_caught_up)
{
    back_behind(false);
}

/* The replica the hook below promotes, and whether it ran. */
static pgh_node *promote_in_check;
static atomic_int promoted_in_check;

static void promote_now(void)
{
    atomic_store(&pgg__replay_check_hook, NULL);
    cr_assert_eq(pgh_node_promote(promote_in_check), 0);
    atomic_store(&promoted_in_check, 1);
}

/*
 * A read's new session on a suspect standby checks it with the health
 * probe's query (role and position): a server promoted between the
 * session's start (it said standby) and that check answers as primary.
 * The pool learns the promotion from that answer, and the read runs
 * there, not held, though the server's replay position is behind what it
 * reported as a standby.  Before, the check asked the replay position
 * only: behind, the host was held, the read went elsewhere, and the hold
 * lasted until a probe saw the new role.
 */
Test(monotonic, a_new_sessions_check_learns_a_promotion)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "promotion");
    pgh_require_replicas(c, 1);
    pgg_pool *p = pool_for(c, "health_interval_ms=60000");
    pgg_call call = {.timeout_ms = 10000};
    pgg_info info;
    pgg_error e;

    cr_assert(pgg__health_await_round(p->health, pgg__now_ns() + 10 * PGG_NS_PER_SEC));
    cr_assert_gt(host_stats(p, 1).replay_lsn, 0, "no replay position reported yet");
    cr_assert_eq(host_stats(p, 1).conns_open, 0, "sessions on the replica");
    cr_assert_eq(host_stats(p, 1).role, PGG_ROLE_STANDBY);
    /* It came back behind what it reported (white box: as if it had
     * reported a position far ahead, then restarted), and a sign of it
     * (as its sessions ending gives); then it is promoted before it
     * caught up.  A primary has every record it wrote (hold.h): the read
     * runs there. */
    atomic_store(&p->hosts[1].hold.high, host_stats(p, 1).replay_lsn + (UINT64_C(1) << 40));
    atomic_store(&p->hosts[1].hold.high_at, pgg__now_ns());
    pgg__hold_suspect(&p->hosts[1].hold, false, PGG_SUSPECT_ENDED, "test: sessions ended");
    promote_in_check = pgh_cluster_replica(c, 0);
    atomic_store(&pgg__replay_check_hook, promote_now);

    PGresult *r = pgg_exec(p, PGG_READ, "SELECT pg_catalog.pg_is_in_recovery()", &call, &info, &e);
    atomic_store(&pgg__replay_check_hook, NULL);
    cr_assert(atomic_load(&promoted_in_check), "the read made no new session's check");
    cr_assert_not_null(r, "%s %s", pgg_err_name(e.code), e.message);
    cr_assert_eq(info.host_index, 1, "served by host %d", info.host_index);
    cr_assert_str_eq(PQgetvalue(r, 0, 0), "f");
    PQclear(r);
    pgg_host_stats hs = host_stats(p, 1);
    cr_assert_eq(hs.role, PGG_ROLE_PRIMARY, "the check's answer did not tell the promotion");
    cr_assert_eq(hs.reads_held_until_lsn, 0, "a primary held from reads");
    end_test(p, c);
}
