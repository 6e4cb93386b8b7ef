/*
 * Early cancel (pgg_cancel) and the tracing hook (pgg_config_on_trace)
 * against real servers: a fired call on a hung server ends at the fire, is
 * PGG_ECANCELED, counts no breaker failure and has its query cancelled on
 * the server; a pre-fired handle touches no server; a call waiting in the
 * bulkhead is cancelled; traces of a retried read, a user error, prepared
 * and lease statements; no trace without a tracer.
 */
#include <pthread.h>
#include <stdint.h>

#include "pool.h"
#include "pool_util.h"

/* ----------------------------------------------------------- cancel */

typedef struct firer {
    pgg_cancel *c;
    int delay_ms;
    double fired_at;
    pthread_t t;
} firer;

static void *fire_later(void *arg)
{
    firer *f = arg;

    sleep_ms(f->delay_ms);
    f->fired_at = pgh_now_ms();
    pgg_cancel_fire(f->c);
    return NULL;
}

static void fire_in(firer *f, pgg_cancel *c, int delay_ms)
{
    f->c = c;
    f->delay_ms = delay_ms;
    cr_assert_eq(pthread_create(&f->t, NULL, fire_later, f), 0);
}

static uint64_t failures(pgg_pool *p, int i)
{
    pgg_host_stats h = host_stats(p, i);
    uint64_t n = 0;

    for (int k = 0; k < PGG_CLASS_SLOTS; k++)
        n += h.failures[k];
    return n;
}

Test(cancel, a_fired_call_on_a_hung_server_ends_at_the_fire_and_is_cancelled_there)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a hang (SIGSTOP)");
    pgg_pool *p = pool_for(c, NULL);
    pgg_cancel *h = pgg_cancel_new();
    const int timeout_ms = 10000;
    pgg_call call = {.timeout_ms = timeout_ms, .cancel = h};
    pgg_info info;
    pgg_error e;
    firer f;

    cr_assert_not_null(h);
    read_ok(p, PGG_WRITE, "SELECT 1", 0); /* a pooled session to hang on */
    uint64_t sent0 = pgg__canceller_sent(p->canceller);
    uint64_t ignored0 = host_stats(p, 0).ignored;
    cr_assert_eq(pgh_node_hang(pgh_cluster_primary(c)), 0);
    fire_in(&f, h, 200);
    double t0 = pgh_now_ms();
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT 1 /* pgg-cancel-early */", &call, &info, &e);
    double done = pgh_now_ms();
    pthread_join(f.t, NULL);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_ECANCELED, "%s: %s", pgg_err_name(e.code), e.message);
    fprintf(stderr, "hung server: the call returned %.2f ms after the fire (%.0f ms in all)\n",
            done - f.fired_at, done - t0);
    /* Without the fire the call waits out its 10 s deadline. */
    cr_expect_lt(done - t0, timeout_ms / 2.0, "the fire did not end the wait");
    cr_expect_eq(info.sent, 1, "the statement had left: it may have applied");
    cr_expect_eq(info.attempts, 1);
    cr_expect_eq(info.host_index, 0);
    /* Not the host's failure: the breaker heard an ignored outcome. */
    cr_expect_eq(failures(p, 0), 0);
    cr_expect_eq(host_stats(p, 0).ignored, ignored0 + 1);
    cr_expect_eq(host_stats(p, 0).state, PGG_BREAKER_CLOSED);
    cr_assert_eq(pgh_node_resume(pgh_cluster_primary(c)), 0);
    /* The server-side cancel went out from the canceller once the
     * postmaster could take it. */
    double end = pgh_now_ms() + 10000;
    while (pgg__canceller_sent(p->canceller) == sent0 && pgh_now_ms() < end)
        sleep_ms(20);
    cr_expect_eq(pgg__canceller_sent(p->canceller), sent0 + 1, "no cancel sent");
    /* The pool serves on: the handle is reset for the next request. */
    pgg_cancel_reset(h);
    r = pgg_exec(p, PGG_WRITE, "SELECT 1", &call, &info, &e);
    cr_expect_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    PQclear(r);
    pgg_cancel_free(h);
    end_test(p, c);
}

Test(cancel, a_cancelled_query_stops_running_on_the_server)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, NULL);
    pgg_cancel *h = pgg_cancel_new();
    pgg_call call = {.timeout_ms = 20000, .cancel = h};
    pgg_info info;
    pgg_error e;
    firer f;
    char n[16];

    fire_in(&f, h, 200);
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT pg_sleep(30) /* pgg-cancel-sleep */", &call,
                           &info, &e);
    pthread_join(f.t, NULL);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_ECANCELED, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(info.sent, 1);
    double end = pgh_now_ms() + 10000;
    do {
        sleep_ms(50);
        cr_assert_eq(pgh_node_query_value(pgh_cluster_primary(c),
                                          "SELECT count(*) FROM pg_stat_activity WHERE "
                                          "query LIKE '%pgg-cancel-sleep%' AND state = 'active' "
                                          "AND pid <> pg_backend_pid()",
                                          n, sizeof n),
                     0);
    } while (strcmp(n, "0") != 0 && pgh_now_ms() < end);
    cr_expect_str_eq(n, "0", "the cancelled query still runs on the server");
    cr_expect_eq(failures(p, 0), 0);
    pgg_cancel_free(h);
    end_test(p, c);
}

Test(cancel, a_handle_fired_before_the_call_touches_no_server)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, NULL);
    pgg_cancel *h = pgg_cancel_new();
    pgg_call call = {.cancel = h};
    pgg_info info;
    pgg_error e;
    pgg_stats before, after;

    pgg_cancel_fire(h);
    cr_assert_eq(pgg_pool_stats(p, &before), PGG_OK);
    pgg_host_stats hb = host_stats(p, 0);
    PGresult *r = pgg_exec(p, PGG_WRITE, "INSERT INTO never_created VALUES (1)", &call, &info, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_ECANCELED, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_str_eq(e.message, "call cancelled by the caller");
    cr_expect_eq(info.sent, 0);
    cr_expect_eq(info.attempts, 0);
    cr_assert_eq(pgg_pool_stats(p, &after), PGG_OK);
    pgg_host_stats ha = host_stats(p, 0);
    /* Not even the bulkhead saw it; no host was asked. */
    cr_expect_eq(after.calls, before.calls);
    cr_expect_eq(ha.calls, hb.calls);
    cr_expect_eq(ha.connects, hb.connects);
    cr_expect_eq(after.calls_failed, before.calls_failed + 1);
    pgg_cancel_free(h);
    end_test(p, c);
}

Test(cancel, a_connect_to_a_hung_server_is_cancelled)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "a hang (SIGSTOP)");
    /* No pooled session: the call must connect, and the connect hangs
     * after the TCP handshake.  Its own bound is far away. */
    pgg_pool *p = pool_for(c, "connect_timeout_ms=20000");
    pgg_cancel *h = pgg_cancel_new();
    pgg_call call = {.timeout_ms = 20000, .cancel = h};
    pgg_info info;
    pgg_error e;
    firer f;

    cr_assert_eq(host_stats(p, 0).conns_open, 0, "a session was already pooled");
    cr_assert_eq(pgh_node_hang(pgh_cluster_primary(c)), 0);
    fire_in(&f, h, 100);
    double t0 = pgh_now_ms();
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT 1", &call, &info, &e);
    double done = pgh_now_ms();
    pthread_join(f.t, NULL);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_ECANCELED, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect(strstr(e.message, "connecting") != NULL, "%s", e.message);
    cr_expect_eq(info.sent, 0, "nothing left for the server");
    fprintf(stderr, "hung connect: the call returned %.2f ms after the fire\n", done - f.fired_at);
    /* The connect's bound and the call's deadline are 20 s away. */
    cr_expect_lt(done - t0, 10000.0, "the fire did not end the connect");
    cr_assert_eq(pgh_node_resume(pgh_cluster_primary(c)), 0);
    pgg_cancel_free(h);
    end_test(p, c);
}

typedef struct caller {
    pgg_pool *p;
    pgg_call call;
    pgg_error e;
    PGresult *r;
    double done;
    pthread_t t;
} caller;

static void *call_now(void *arg)
{
    caller *k = arg;

    k->r = pgg_exec(k->p, PGG_WRITE, "SELECT 1", &k->call, NULL, &k->e);
    k->done = pgh_now_ms();
    return NULL;
}

Test(cancel, a_call_waiting_in_the_bulkhead_is_cancelled)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "bulkhead.max_concurrent=1 bulkhead.max_wait_ms=20000");
    pgg_cancel *h = pgg_cancel_new();
    pgg_error e;
    pgg_stats st;

    /* The lease holds the only slot. */
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    caller k = {.p = p, .call = {.timeout_ms = 20000, .cancel = h}};
    cr_assert_eq(pthread_create(&k.t, NULL, call_now, &k), 0);
    double end = pgh_now_ms() + 10000;
    do {
        sleep_ms(10);
        cr_assert_eq(pgg_pool_stats(p, &st), PGG_OK);
    } while (st.bulkhead_waiting == 0 && pgh_now_ms() < end);
    cr_assert_eq(st.bulkhead_waiting, 1, "the call never queued");
    double fired_at = pgh_now_ms();
    pgg_cancel_fire(h);
    pthread_join(k.t, NULL);
    cr_expect_null(k.r);
    cr_expect_eq(k.e.code, PGG_ECANCELED, "%s: %s", pgg_err_name(k.e.code), k.e.message);
    fprintf(stderr, "bulkhead wait: the call returned %.2f ms after the fire\n",
            k.done - fired_at);
    /* Its 20 s wait would still be running. */
    cr_expect_lt(k.done - fired_at, 10000.0, "the fire did not end the wait");
    cr_assert_eq(pgg_pool_stats(p, &st), PGG_OK);
    cr_expect_eq(st.bulkhead_waiting, 0);
    cr_expect_eq(st.bulkhead_in_use, 1); /* the lease's, still */
    pgg_release(l);
    pgg_cancel_free(h);
    end_test(p, c);
}

/* ----------------------------------------------------------- tracing */

#define MAX_TRACES 64

typedef struct rec {
    pgg_trace start, end;
    char sql[128], host[128];
    bool ended;
    void *span_back; /* what end received */
} rec;

typedef struct tracer {
    pthread_mutex_t mu;
    int n;
    rec r[MAX_TRACES];
} tracer;

static void *on_start(const pgg_trace *t, void *ud)
{
    tracer *tr = ud;
    void *span = NULL;

    pthread_mutex_lock(&tr->mu);
    if (tr->n < MAX_TRACES) {
        rec *r = &tr->r[tr->n];
        r->start = *t;
        snprintf(r->sql, sizeof r->sql, "%s", t->sql ? t->sql : "");
        span = r;
        tr->n++;
    }
    pthread_mutex_unlock(&tr->mu);
    return span;
}

static void on_end(const pgg_trace *t, void *span, void *ud)
{
    tracer *tr = ud;
    rec *r = span;

    pthread_mutex_lock(&tr->mu);
    if (r) {
        r->end = *t;
        r->end.sql = NULL;
        r->end.host = NULL;
        snprintf(r->host, sizeof r->host, "%s", t->host ? t->host : "");
        r->ended = true;
        r->span_back = span;
    }
    pthread_mutex_unlock(&tr->mu);
}

static pgg_pool *traced_pool(pgh_cluster *c, const char *extra, tracer *tr)
{
    char *ci = pgh_cluster_conninfo(c);
    pgg_config *cfg = pgg_config_new();
    pgg_error e;

    cr_assert_not_null(cfg);
    cr_assert_eq(pgg_config_set_servers(cfg, ci, &e), PGG_OK, "%s", e.message);
    free(ci);
    cr_assert_eq(pgg_config_parse(cfg, TEST_SETTINGS, &e), PGG_OK, "%s", e.message);
    if (extra)
        cr_assert_eq(pgg_config_parse(cfg, extra, &e), PGG_OK, "%s", e.message);
    if (tr) {
        pthread_mutex_init(&tr->mu, NULL);
        cr_assert_eq(pgg_config_on_trace(cfg, on_start, on_end, tr, &e), PGG_OK);
    }
    pgg_pool *p = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    cr_assert_not_null(p, "%s", e.message);
    cr_assert(wait_role(p, 0, PGG_ROLE_PRIMARY, 10000));
    for (int i = 1; i < pgg_pool_host_count(p); i++)
        cr_assert(wait_role(p, i, PGG_ROLE_STANDBY, 10000));
    return p;
}

static rec *last(tracer *tr)
{
    cr_assert_gt(tr->n, 0, "nothing traced");
    return &tr->r[tr->n - 1];
}

Test(trace, a_retried_read_is_traced_with_both_attempts_and_the_second_host)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "a hang (SIGSTOP)");
    make_table(c, "pgg_trace_t", "v", 10);
    tracer tr = {0};
    pgg_pool *p = traced_pool(c, "attempt_timeout_ms=100", &tr);

    for (int i = 0; i < 5; i++)
        read_ok(p, PGG_READ, "SELECT 1", 0);
    cr_assert_eq(pgh_node_hang(pgh_cluster_replica(c, 0)), 0);
    bool retried = false;
    for (int i = 0; i < 10 && !retried; i++) {
        pgg_call call = {.timeout_ms = 3000};
        pgg_info info;
        pgg_error e;
        PGresult *r = pgg_exec(p, PGG_READ, "SELECT v FROM pgg_trace_t WHERE id = 3", &call,
                               &info, &e);
        cr_expect_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
        PQclear(r);
        rec *t = last(&tr);
        cr_assert(t->ended);
        cr_expect_eq(t->span_back, t, "the end did not get the start's span");
        cr_expect_str_eq(t->sql, "SELECT v FROM pgg_trace_t WHERE id = 3");
        cr_expect_eq(t->start.kind, PGG_TRACE_EXEC);
        cr_expect_eq(t->start.intent, PGG_READ);
        cr_expect_eq(t->start.attempts, 0);
        /* The end tells what info does. */
        cr_expect_eq(t->end.attempts, info.attempts);
        cr_expect_eq(t->end.host_index, info.host_index);
        cr_expect_str_eq(t->host, info.host);
        cr_expect_eq(t->end.code, PGG_OK);
        cr_expect_eq(t->end.elapsed_us, info.elapsed_us);
        if (info.attempts == 2) {
            retried = true;
            cr_expect_eq(t->end.host_index, 0, "the second attempt was the primary's");
        }
    }
    cr_expect(retried, "no read met the hung replica");
    cr_assert_eq(pgh_node_resume(pgh_cluster_replica(c, 0)), 0);
    end_test(p, c);
}

Test(trace, user_errors_prepared_and_lease_statements_are_traced)
{
    pgh_cluster *c = cluster_or_die(0);
    tracer tr = {0};
    pgg_pool *p = traced_pool(c, NULL, &tr);
    pgg_error e;

    /* A user error: served, with its SQLSTATE. */
    PGresult *r = pgg_exec(p, PGG_WRITE, "SELECT * FROM no_such_table", NULL, NULL, &e);
    PQclear(r);
    rec *t = last(&tr);
    cr_expect(t->ended);
    cr_expect_eq(t->end.code, PGG_ESERVER);
    cr_expect_str_eq(t->end.sqlstate, "42P01");
    cr_expect_eq(t->end.attempts, 1);
    cr_expect_eq(t->end.sent, 1);
    cr_expect_eq(t->end.host_index, 0);
    cr_expect_eq(t->end.from_cache, 0);

    /* A prepared statement. */
    cr_assert_eq(pgg_pool_prepare(p, "trace_one", "SELECT $1::int", 1, NULL, &e), PGG_OK);
    const char *v[] = {"7"};
    int n0 = tr.n;
    r = pgg_exec_prepared(p, PGG_READ, "trace_one", 1, v, NULL, NULL, NULL, NULL, &e);
    cr_expect_not_null(r, "%s", e.message);
    PQclear(r);
    cr_expect_eq(tr.n, n0 + 1);
    t = last(&tr);
    cr_expect_eq(t->start.kind, PGG_TRACE_PREPARED);
    cr_expect_str_eq(t->start.stmt_name, "trace_one");
    cr_expect_str_eq(t->sql, "SELECT $1::int");
    cr_expect_eq(t->end.code, PGG_OK);

    /* Lease statements. */
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    n0 = tr.n;
    r = pgg_lease_exec(l, "SELECT 1/0", 0, &e);
    PQclear(r);
    cr_expect_eq(tr.n, n0 + 1);
    t = last(&tr);
    cr_expect_eq(t->start.kind, PGG_TRACE_LEASE);
    cr_expect_str_eq(t->sql, "SELECT 1/0");
    cr_expect_eq(t->end.code, PGG_ESERVER);
    cr_expect_str_eq(t->end.sqlstate, "22012");
    cr_expect_eq(t->end.attempts, 1);
    cr_expect_eq(t->end.host_index, 0);
    cr_expect_eq(t->end.sent, 1);
    pgg_release(l);
    end_test(p, c);
}

/* pgguard.h: sql is "the SQL text": a tracer may take it as a string. */
static size_t sql_bytes;

static void *strlen_start(const pgg_trace *t, void *ud)
{
    (void)ud;
    sql_bytes += strlen(t->sql);
    return NULL;
}

Test(trace, a_call_refused_for_no_sql_gives_the_tracer_a_string)
{
    pgh_cluster *c = cluster_or_die(0);
    char *ci = pgh_cluster_conninfo(c);
    pgg_config *cfg = pgg_config_new();
    pgg_error e;

    cr_assert_eq(pgg_config_set_servers(cfg, ci, &e), PGG_OK, "%s", e.message);
    free(ci);
    cr_assert_eq(pgg_config_parse(cfg, TEST_SETTINGS, &e), PGG_OK, "%s", e.message);
    cr_assert_eq(pgg_config_on_trace(cfg, strlen_start, NULL, NULL, &e), PGG_OK);
    pgg_pool *p = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    cr_assert_not_null(p, "%s", e.message);

    cr_expect_null(pgg_exec(p, PGG_READ, NULL, NULL, NULL, &e));
    cr_expect_eq(e.code, PGG_EINVAL, "%s", pgg_err_name(e.code));
    cr_expect_null(pgg_exec_params(p, PGG_READ, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, &e));
    cr_expect_eq(e.code, PGG_EINVAL, "%s", pgg_err_name(e.code));
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 2000, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    cr_expect_null(pgg_lease_exec(l, NULL, 0, &e));
    cr_expect_eq(e.code, PGG_EINVAL, "%s", pgg_err_name(e.code));
    pgg_release(l);
    end_test(p, c);
}

static int untraced_calls;

static void *count_start(const pgg_trace *t, void *ud)
{
    (void)t;
    (void)ud;
    untraced_calls++;
    return NULL;
}

Test(trace, no_tracer_no_trace)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_config *cfg = pgg_config_new();
    char *ci = pgh_cluster_conninfo(c);
    pgg_error e;

    cr_assert_eq(pgg_config_set_servers(cfg, ci, &e), PGG_OK);
    free(ci);
    cr_assert_eq(pgg_config_parse(cfg, TEST_SETTINGS, &e), PGG_OK);
    /* Set, then removed: the pool has none. */
    cr_assert_eq(pgg_config_on_trace(cfg, count_start, NULL, NULL, &e), PGG_OK);
    cr_assert_eq(pgg_config_on_trace(cfg, NULL, NULL, NULL, &e), PGG_OK);
    cr_expect_eq(pgg_config_on_trace(NULL, NULL, NULL, NULL, &e), PGG_EINVAL);
    pgg_pool *p = pgg_pool_new(cfg, &e);
    pgg_config_free(cfg);
    cr_assert_not_null(p, "%s", e.message);
    cr_expect(!p->traced);
    read_ok(p, PGG_WRITE, "SELECT 1", 0);
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l);
    PQclear(pgg_lease_exec(l, "SELECT 1", 0, &e));
    pgg_release(l);
    cr_expect_eq(untraced_calls, 0);
    end_test(p, c);
}
