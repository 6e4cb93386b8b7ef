/*
 * The descriptors the event loop watches (async.c, loop_fd and connect_fd)
 * against what libpq does to its own socket: libpq closes it when a query
 * is lost (inside PQconsumeInput) and when a connect fails (inside
 * PQconnectPoll, or PQfinish of the failed attempt), before pgguard can tell
 * the adapter to stop watching it -- and a socket another thread opens
 * meanwhile may get the number; and during a connect it may move to another
 * socket (the host name's next address), usually under the same number.
 * Every hook the adapter gets acts on a descriptor that is still open and
 * still the socket it added (adapter_check.h), and a connect that moved is
 * watched on its new socket.
 *
 * This binary interposes getaddrinfo (pgguard is linked in statically and
 * libpq resolves the symbol through the executable first): the name
 * TWO_ADDRESSES resolves to 127.0.0.2, where no server listens (refused
 * after the connect started: libpq then moves on), then 127.0.0.1.  And
 * PQconsumeInput: armed, the next call on the armed thread reads what the
 * server sent and then reports a failure, once (libpq can read answers
 * into its buffer, inside a PQflush, before its next read fails: a pipe's
 * turn then has answers to hand out on a connection that is lost).
 */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <event2/event.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <unistd.h>

#include "adapter_check.h"
#include "pool.h"
#include "pool_util.h"

#define TWO_ADDRESSES "pgg-two-addresses.invalid"

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    static int (*next)(const char *, const char *, const struct addrinfo *,
                       struct addrinfo **);
    struct addrinfo h, *first, *second, *tail;
    int rc;

    if (!next) {
        *(void **)&next = dlsym(RTLD_NEXT, "getaddrinfo");
        if (!next)
            abort();
    }
    if (!node || strcmp(node, TWO_ADDRESSES) != 0)
        return next(node, service, hints, res);
    /* Two numeric lookups chained: freeaddrinfo frees entry by entry. */
    h = hints ? *hints : (struct addrinfo){0};
    h.ai_family = AF_INET;
    h.ai_flags |= AI_NUMERICHOST;
    rc = next("127.0.0.2", service, &h, &first);
    if (rc != 0)
        return rc;
    rc = next("127.0.0.1", service, &h, &second);
    if (rc != 0) {
        freeaddrinfo(first);
        return rc;
    }
    for (tail = first; tail->ai_next; tail = tail->ai_next)
        ; /* several entries without a socket type in the hints */
    tail->ai_next = second;
    *res = first;
    return 0;
}

static atomic_int consume_fail_armed;
static pthread_t consume_fail_thread;

int PQconsumeInput(PGconn *conn)
{
    static int (*next)(PGconn *);
    int rc;

    if (!next) {
        *(void **)&next = dlsym(RTLD_NEXT, "PQconsumeInput");
        if (!next)
            abort();
    }
    rc = next(conn);
    if (rc && pthread_equal(pthread_self(), consume_fail_thread) &&
        atomic_exchange(&consume_fail_armed, 0))
        return 0;
    return rc;
}

typedef struct outcome {
    int done, code;
    char message[512];
} outcome;

static void on_done(pgg_async *ac, PGresult *res, const pgg_info *info, const pgg_error *err,
                    void *ud)
{
    outcome *o = ud;

    (void)ac;
    (void)info;
    o->done++;
    o->code = err->code;
    snprintf(o->message, sizeof o->message, "%s", err->message);
    PQclear(res);
}

static void start_call(pgg_async *ac, pgg_intent intent, const char *sql, int timeout_ms,
                       outcome *o)
{
    pgg_call call = {.timeout_ms = timeout_ms};
    pgg_error e;

    *o = (outcome){0};
    cr_assert_eq(pgg_async_exec(ac, intent, sql, &call, on_done, o, NULL, &e), PGG_OK, "%s: %s",
                 sql, e.message);
}

static void run_until(struct event_base *base, outcome *o, int n, int timeout_ms)
{
    double end = pgh_now_ms() + timeout_ms;

    for (;;) {
        int left = 0;

        for (int i = 0; i < n; i++)
            left += o[i].done == 0;
        if (!left || pgh_now_ms() > end)
            break;
        event_base_loop(base, EVLOOP_ONCE);
    }
    for (int i = 0; i < n; i++)
        cr_assert_eq(o[i].done, 1, "call %d: callback ran %d times", i, o[i].done);
}

static pgg_async *checked_async(pgg_pool *p, struct event_base *base, adapter_check *chk)
{
    pgg_error e;
    pgg_async *ac = pgg_async_new(p, &e);

    cr_assert_not_null(ac, "pgg_async_new: %s", e.message);
    cr_assert_eq(adapter_check_attach(chk, ac, base), PGG_OK);
    return ac;
}

static void expect_contract_kept(const adapter_check *chk)
{
    cr_expect_gt(chk->hooks, 0, "no hook checked");
    cr_expect_eq(chk->bad, 0, "%d hooks on a descriptor no longer the socket added; first: %s",
                 chk->bad, chk->first);
}

/* Run the loop until the server runs n statements like pattern. */
static void loop_until_running(struct event_base *base, pgh_node *n, const char *pattern,
                               int want)
{
    char sql[256], v[32] = "";
    double end = pgh_now_ms() + 10000;

    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%s' AND state = 'active'",
             pattern);
    while (pgh_now_ms() < end) {
        for (int i = 0; i < 20; i++)
            event_base_loop(base, EVLOOP_NONBLOCK);
        cr_assert_eq(pgh_node_query_value(n, sql, v, sizeof v), 0, "%s", pgh_node_error(n));
        if (atoi(v) >= want)
            return;
    }
    cr_assert_fail("%d statements like %s never ran (%s seen)", want, pattern, v);
}

/* Lost queries (one alone, two sharing a pipe) and a connect the server
 * refuses after the loop watched it (3D000). */
Test(async_fd, lost_queries_and_a_refused_connect_leave_the_adapter_open_descriptors)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_node *n = pgh_cluster_primary(c);
    pgg_pool *p = pool_for(c, NULL);
    pgg_pool *pp = pool_for(c, "pipeline=on");
    pgg_pool *bad;
    struct event_base *base = event_base_new();
    static adapter_check chk;
    pgg_async *ac = checked_async(p, base, &chk);
    pgg_async *acp = checked_async(pp, base, &chk);
    pgg_async *acb;
    outcome o[4];
    char ci[512];

    /* Writes, so that nothing is retried. */
    start_call(ac, PGG_WRITE, "SELECT pg_sleep(30) /* alone */", 20000, &o[0]);
    start_call(acp, PGG_WRITE, "SELECT pg_sleep(30) /* piped */", 20000, &o[1]);
    start_call(acp, PGG_WRITE, "SELECT pg_sleep(30) /* piped */", 20000, &o[2]);
    loop_until_running(base, n, "SELECT pg_sleep(30) /* %", 2);
    /* Until every call has ended: the piped calls may each connect on their
     * own, and two statements running can be "alone" and one of them while
     * the other still connects; one round of terminations then missed it,
     * and it slept to its deadline (3 failures in 10 runs at load 7-10). */
    cr_assert_eq(pgh_node_terminate_backends(n), 0, "%s", pgh_node_error(n));
    for (double end = pgh_now_ms() + 15000; pgh_now_ms() < end;) {
        if (o[0].done && o[1].done && o[2].done)
            break;
        for (int i = 0; i < 20; i++)
            event_base_loop(base, EVLOOP_NONBLOCK);
        usleep(20000);
        /* Only the statements: a connect cut would be retried. */
        cr_assert_eq(pgh_node_exec(n, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                      " WHERE query LIKE 'SELECT pg_sleep(30) /* %'"
                                      " AND state = 'active' AND pid <> pg_backend_pid()"),
                     0, "%s", pgh_node_error(n));
    }
    run_until(base, o, 3, 1000);
    for (int i = 0; i < 3; i++)
        cr_expect(o[i].code == PGG_ECONNECT || o[i].code == PGG_EUNAVAILABLE, "call %d: %s %s",
                  i, pgg_err_name(o[i].code), o[i].message);

    snprintf(ci, sizeof ci, "host=%s port=%d dbname=pgg_no_such_db", pgh_node_host(n),
             pgh_node_port(n));
    bad = pool_for_conninfo(ci, NULL);
    acb = checked_async(bad, base, &chk);
    start_call(acb, PGG_WRITE, "SELECT 1", 3000, &o[3]);
    run_until(base, o + 3, 1, 10000);
    cr_expect_neq(o[3].code, PGG_OK);

    pgg_async_free(ac);
    pgg_async_free(acp);
    pgg_async_free(acb);
    expect_contract_kept(&chk);
    event_base_free(base);
    end_test(bad, NULL);
    end_test(pp, NULL);
    end_test(p, c);
}

/* A server that asks for a password none was given for: on the loop as for
 * blocking calls (recovery's test), PGG_ECONFIG with 28P01 every time, the
 * breaker closed, no connection failure counted. */
Test(async_fd, a_password_the_server_asks_for_and_none_was_given_is_the_callers)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "pg_hba.conf of a local server");
    struct event_base *base = event_base_new();
    static adapter_check chk;
    char ci[512];
    outcome o[6] = {0};

    ask_password_of(pgh_cluster_primary(c), "pgg_pw", ci, sizeof ci);
    pgg_pool *p = pool_for_conninfo(ci, NULL);
    pgg_async *ac = checked_async(p, base, &chk);
    for (int i = 0; i < 6; i++) {
        start_call(ac, i % 2 ? PGG_READ : PGG_WRITE, "SELECT 1", 1000, &o[i]);
        run_until(base, o + i, 1, 5000);
        cr_expect_eq(o[i].code, PGG_ECONFIG, "call %d: %s %s", i, pgg_err_name(o[i].code),
                     o[i].message);
        cr_expect_not_null(strstr(o[i].message, "password"), "%s", o[i].message);
    }
    pgg_host_stats h = host_stats(p, 0);
    cr_expect_eq(h.state, PGG_BREAKER_CLOSED, "the missing password opened the breaker (%s)",
                 pgg_breaker_state_name(h.state));
    cr_expect_eq(h.failures[PGG_CLASS_CONNECTION], 0);
    pgg_async_free(ac);
    expect_contract_kept(&chk);
    event_base_free(base);
    end_test(p, c);
}

/* A connect whose first address refuses: libpq closes that socket and
 * opens the next address's, most often under the same number, inside one
 * PQconnectPoll.  The loop follows it to the new socket (by inode, not by
 * number): the calls succeed on their first attempt, and the adapter
 * never acts on the socket libpq closed. */
Test(async_fd, a_connect_that_moves_to_the_next_address_is_watched_on_its_new_socket)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_node *n = pgh_cluster_primary(c);
    struct event_base *base = event_base_new();
    static adapter_check chk;
    pgg_async *ac;
    pgg_pool *p;
    outcome o[4];
    char *all, *ci;
    struct addrinfo *ai;

    if (strcmp(pgh_node_host(n), "127.0.0.1") != 0)
        cr_skip_test("the server is not on 127.0.0.1, where TWO_ADDRESSES leads");
    /* The interposer is what libpq calls. */
    cr_assert_eq(getaddrinfo(TWO_ADDRESSES, "5432", NULL, &ai), 0);
    cr_assert_not_null(ai->ai_next);
    freeaddrinfo(ai);
    all = pgh_cluster_conninfo(c);
    ci = pgh_conninfo_at(all, TWO_ADDRESSES, pgh_node_port(n));
    cr_assert_not_null(ci);
    p = pool_for_conninfo(ci, "connect_timeout_ms=2000");
    free(all);
    free(ci);
    ac = checked_async(p, base, &chk);
    /* Each makes its own connection: none is idle yet. */
    for (int i = 0; i < 4; i++)
        start_call(ac, PGG_READ_PRIMARY, "SELECT 1", 5000, &o[i]);
    run_until(base, o, 4, 15000);
    for (int i = 0; i < 4; i++)
        cr_expect_eq(o[i].code, PGG_OK, "call %d: %s %s", i, pgg_err_name(o[i].code),
                     o[i].message);
    pgg_async_free(ac);
    expect_contract_kept(&chk);
    event_base_free(base);
    end_test(p, c);
}

/* Take every descriptor the process may still open (up to a lowered
 * limit, so that this is quick); returns how many, in fds. */
static int exhaust_fds(int *fds, int max)
{
    int n = 0;

    while (n < max) {
        int fd = dup(0);

        if (fd < 0) {
            cr_assert(errno == EMFILE || errno == ENFILE, "dup: %s", strerror(errno));
            break;
        }
        fds[n++] = fd;
    }
    cr_assert_lt(n, max, "the descriptor limit was not reached");
    return n;
}

/* A pooled connection the loop has never watched needs the loop's own
 * descriptor of it (loop_fd).  When none can be had (the process is at
 * its descriptor limit), the statement is not sent, the call says why
 * (PGG_ESYS), and the host is not blamed: no failure for its breaker, as
 * for any other want of resources on the client. */
Test(async_fd, no_descriptor_for_the_loop_sends_nothing_and_blames_no_host)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_node *n = pgh_cluster_primary(c);
    pgg_pool *p = pool_for(c, NULL);
    struct event_base *base = event_base_new();
    static adapter_check chk;
    pgg_async *ac = checked_async(p, base, &chk);
    struct rlimit old, low;
    pgg_host_stats hs;
    pgg_error e;
    PGresult *r;
    outcome o[1];
    static int fds[4096];
    int nfds;
    char v[32] = "";
    uint64_t failed = 0;

    cr_assert_eq(pgh_node_exec(n, "DROP TABLE IF EXISTS pgg_async_fd_sent; "
                                  "CREATE TABLE pgg_async_fd_sent (x int)"),
                 0, "%s", pgh_node_error(n));
    /* One pooled connection, made and used by a blocking call: the loop
     * has no descriptor of it yet. */
    r = pgg_exec(p, PGG_WRITE, "SELECT 1", NULL, NULL, &e);
    cr_assert_not_null(r, "%s", e.message);
    PQclear(r);

    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
    low = old;
    low.rlim_cur = 256 < old.rlim_cur ? 256 : old.rlim_cur;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
    nfds = exhaust_fds(fds, (int)(sizeof fds / sizeof fds[0]));
    start_call(ac, PGG_WRITE, "INSERT INTO pgg_async_fd_sent VALUES (1)", 5000, &o[0]);
    run_until(base, o, 1, 10000);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &old), 0);

    cr_expect_eq(o[0].code, PGG_ESYS, "%s %s", pgg_err_name(o[0].code), o[0].message);
    cr_assert_eq(pgg_pool_host_stats(p, 0, &hs), PGG_OK);
    for (int i = 0; i < PGG_CLASS_SLOTS; i++)
        failed += hs.failures[i];
    cr_expect_eq(failed, 0, "the host was blamed: %llu failures, breaker %d",
                 (unsigned long long)failed, (int)hs.state);
    cr_assert_eq(pgh_node_query_value(n, "SELECT count(*) FROM pgg_async_fd_sent", v, sizeof v),
                 0, "%s", pgh_node_error(n));
    cr_expect_str_eq(v, "0", "the statement was sent");
    /* With descriptors again, the loop's calls are served. */
    start_call(ac, PGG_WRITE, "SELECT 1", 5000, &o[0]);
    run_until(base, o, 1, 10000);
    cr_expect_eq(o[0].code, PGG_OK, "%s %s", pgg_err_name(o[0].code), o[0].message);

    pgg_async_free(ac);
    expect_contract_kept(&chk);
    event_base_free(base);
    cr_assert_eq(pgh_node_exec(n, "DROP TABLE pgg_async_fd_sent"), 0, "%s", pgh_node_error(n));
    end_test(p, c);
}

/* Two reads on a pipe; the first one's callback cancels the second (the
 * pipe ends, its connection dropped) and starts a write, which opens a new
 * pipe on the pool's other idle connection. */
typedef struct replaced_pipe {
    pgg_async_call *second;
    outcome first, next;
    int attempts;
} replaced_pipe;

static void on_next(pgg_async *ac, PGresult *res, const pgg_info *info, const pgg_error *err,
                    void *ud)
{
    replaced_pipe *rp = ud;

    rp->attempts = info->attempts;
    on_done(ac, res, info, err, &rp->next);
}

static void on_first_replace_the_pipe(pgg_async *ac, PGresult *res, const pgg_info *info,
                                      const pgg_error *err, void *ud)
{
    replaced_pipe *rp = ud;
    pgg_call call = {.timeout_ms = 5000};
    pgg_error e;

    on_done(ac, res, info, err, &rp->first);
    pgg_async_cancel(rp->second);
    cr_assert_eq(pgg_async_exec(ac, PGG_WRITE, "SELECT 3", &call, on_next, rp, NULL, &e), PGG_OK,
                 "%s", e.message);
}

/*
 * A pipe's turn whose read failed (the connection lost) still hands out
 * the answers libpq had read; their callbacks may end that pipe and open a
 * new one on another connection (a cancel of the piped sibling, a new
 * call).  The turn's end must not take the new pipe for the lost one:
 * before, it ended it, and the new call, a write, failed as "connection
 * lost" (sent, outcome unknown) on a healthy connection.
 */
Test(async_fd, a_pipe_opened_by_callbacks_is_not_ended_for_the_lost_one)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "pipeline=on pipeline.stall_ms=1000 pool_max=2 pool_min_idle=2 "
                              "breaker.mode=disabled");
    struct event_base *base = event_base_new();
    static adapter_check chk;
    pgg_async *ac = checked_async(p, base, &chk);
    replaced_pipe rp = {0};
    outcome second;
    pgg_call call = {.timeout_ms = 5000};
    pgg_error e;

    /* Two idle connections, warmed by the pool. */
    for (double end = pgh_now_ms() + 10000;
         host_stats(p, 0).conns_idle < 2 && pgh_now_ms() < end;)
        usleep(10000);
    cr_assert_eq(host_stats(p, 0).conns_idle, 2, "the pool did not warm two sessions");
    cr_assert_eq(pgg_async_exec(ac, PGG_READ_PRIMARY, "SELECT 1", &call,
                                on_first_replace_the_pipe, &rp, NULL, &e),
                 PGG_OK, "%s", e.message);
    second = (outcome){0};
    cr_assert_eq(pgg_async_exec(ac, PGG_READ_PRIMARY, "SELECT 2 FROM pg_sleep(0.2)", &call,
                                on_done, &second, &rp.second, &e),
                 PGG_OK, "%s", e.message);
    cr_assert_eq(host_stats(p, 0).conns_idle, 1, "the two reads do not share one session");
    consume_fail_thread = pthread_self();
    atomic_store(&consume_fail_armed, 1);
    run_until(base, &rp.first, 1, 10000);
    cr_assert_eq(atomic_load(&consume_fail_armed), 0, "no read failed on the loop");
    cr_assert_eq(rp.first.code, PGG_OK, "%s", rp.first.message);
    run_until(base, &second, 1, 10000);
    cr_expect_eq(second.code, PGG_ECANCELED, "%s %s", pgg_err_name(second.code), second.message);
    run_until(base, &rp.next, 1, 10000);
    cr_expect_eq(rp.next.code, PGG_OK, "the new pipe's write: %s %s", pgg_err_name(rp.next.code),
                 rp.next.message);
    cr_expect_eq(rp.attempts, 1, "the new pipe's write took %d attempts", rp.attempts);
    pgg_async_free(ac);
    expect_contract_kept(&chk);
    event_base_free(base);
    end_test(p, c);
}
