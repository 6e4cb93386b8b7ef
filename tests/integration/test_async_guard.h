/*
 * The loop guard: proof that pgguard never makes the loop thread wait.
 *
 * A wall-clock loop-lag probe cannot show the "never blocked more
 * than 1 ms" on a shared VM (scheduling stalls of 10-65 ms hit raw libpq's
 * loop too), and tests carry no timing thresholds.  What pgguard can be
 * blamed for is a call that waits.  This header interposes the C library's
 * waiting calls in the test binary (pgguard is linked in statically and
 * libpq resolves these symbols through the executable first) and counts
 * every one the loop thread makes while it is inside pgguard or the loop
 * (loop_guard_on / loop_guard_off around event_base_loop and pgg_async_*):
 *
 *   poll, ppoll, select, pselect with a non-zero timeout (libpq's own
 *     waits, pgguard's link waits);
 *   nanosleep, clock_nanosleep, usleep, sleep;
 *   pthread_cond_wait, pthread_cond_timedwait, pthread_cond_clockwait
 *     (pool waits: a connection slot, the bulkhead, a host coming back, a
 *     health round);
 *   connect on a blocking socket;
 *   getaddrinfo of a name that is not a numeric address (DNS);
 *   PQfinish of a session: not a wait, but its socket's teardown, 20-90 us
 *     of kernel time each, and a session the server ended had every idle
 *     sibling of it closed in one callback (0.25-0.45 ms for five, issue
 *     13): the pool's closer thread closes what the pool drops (host.c,
 *     link_close); the loop closes only a connect of its own that it
 *     steps itself (no ask could be made, which these tests do not
 *     cause);
 *   pthread_create: not a wait, but a clone and a stack's mapping under
 *     the memory map's lock, which the pool's threads (closer, cancel
 *     workers) took at their first use, under their start lock, possibly
 *     on the loop: they start with the pool now, the events thread on the
 *     health thread;
 *   libpq's connect steps, PQconnectPoll: not a wait, but CPU the loop
 *     must not spend (GSSAPI's credential lookup, ~290k instructions per
 *     connect with krb5 installed; TLS handshakes): the loop starts a
 *     connect (PQconnectStartParams, ~50k, whose own first step, the
 *     socket and connect(2), is not counted) and the health thread runs
 *     its steps (host.c, "Asked connects"); the loop steps it only when no ask
 *     can be made (no descriptor or memory, which these tests do not
 *     cause).
 *
 * A second count, its own assertion (loop_guard_check_shared, run by
 * loop_guard_check): every pthread_mutex_lock the loop thread makes on a
 * lock that another thread may hold (a shared lock), named by the lock's
 * address (loop_guard_watch_pool registers a pool's, the test calls it for
 * each pool it gives a loop context): each host's mu and its breaker's,
 * the health thread's rounds lock, the process-wide list of contexts that
 * keep connections (async.c, kept_mu), the type registrations', the
 * cache's, each blocking pipe's, the bulkhead's, the prepared
 * statements', the listener setting's, the lease registry's and the two
 * of read your writes.  Short as those sections are, a holder preempted
 * inside one makes the loop sleep for a scheduler slice (the closer's lock
 * did, round 13: 3.9-5.7 ms): on the loop such a lock may only be tried
 * (pthread_mutex_trylock is not counted).  Whether the lock was free at
 * that moment does not matter: the count is of the calls that could wait.
 * Any other pthread_mutex_lock the loop thread makes in the window is
 * listed as unnamed (reported, never failed: libevent's and libpq's own).
 *
 * Public read APIs that take shared locks, when a loop calls them (a
 * /metrics handler on the loop is realistic): pgg_pool_host_stats and
 * pgg_pool_metrics take each host's mu and its breaker's; pgg_pool_stats
 * the bulkhead's, the cache's and the lease registry's (see pgguard.h).
 * Tests that read stats on the loop only to check their own progress do
 * it outside the window (loop_guard_off / loop_guard_on around it).
 *
 * LOOP_GUARD_SHARED_LOCKS_FAIL: 1 (since round 15, when no loop path
 * locked a shared lock any more), loop_guard_check_shared fails the test
 * with each kind's count and first site; 0, the count is only printed
 * (stderr, "loop_guard: test: where: lock locked n time(s) from site",
 * for each site whose count grew since loop_guard_check last ran), for
 * finding where a change makes the loop lock one.
 *
 * The loop's own wait (epoll_wait inside libevent) is not interposed.
 * What it cannot see: a system call made directly (syscall(2)) or from
 * inside the C library without its public symbol, and CPU time spent
 * without waiting (the benches measure that, per callback).
 *
 * glibc on x86_64 only (the condition variables' symbol versions); other
 * platforms build the test without the guard, and loop_guard_check passes.
 */
#ifndef PGG_TEST_ASYNC_GUARD_H
#define PGG_TEST_ASYNC_GUARD_H

#include <criterion/criterion.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "pgguard.h"

#if defined(__GLIBC__) && defined(__x86_64__) && defined(_GNU_SOURCE)
#define LOOP_GUARD 1

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "async.h"
#include "health.h"
#include "pipeline.h"
#include "pool.h"
#include "types.h"
#include "visibility.h"

static _Thread_local int loop_guard_watching; /* nesting depth */
static atomic_int loop_guard_hits;
static char loop_guard_first[256];

static void loop_guard_on(void)
{
    loop_guard_watching++;
}

static void loop_guard_off(void)
{
    loop_guard_watching--;
}

static void loop_guard_hit(const char *what, long arg)
{
    if (loop_guard_watching <= 0)
        return;
    if (atomic_fetch_add(&loop_guard_hits, 1) == 0)
        snprintf(loop_guard_first, sizeof loop_guard_first, "%s (%ld)", what, arg);
}

/* ------------------------------------------------------- shared locks */

#ifndef LOOP_GUARD_SHARED_LOCKS_FAIL
#define LOOP_GUARD_SHARED_LOCKS_FAIL 1
#endif

enum {
    LG_HOST,
    LG_BREAKER,
    LG_HEALTH,
    LG_KEPT,
    LG_TYPES,
    LG_CACHE,
    LG_PIPE,
    LG_BULKHEAD,
    LG_PREPARED,
    LG_LISTENER,
    LG_LEASES,
    LG_VIS,
    LG_OTHER, /* not a named shared lock: reported, never failed */
    LG_KINDS
};

static const char *const loop_guard_kind[LG_KINDS] = {
    "pgg_host.mu",        "pgg_breaker.mu",     "pgg_health.mu",
    "kept_mu (async.c)",  "pgg_types.mu",       "pgg_cache.mu",
    "pgg_pipe.mu",        "pgg_bulkhead.mu",    "pgg_prepared.mu",
    "pgg_pool.ev_mu",     "pgg_lease_registry.mu", "pgg_vis.mu/smu",
    "an unnamed lock",
};

#define LOOP_GUARD_LOCKS 1024
#define LOOP_GUARD_SITES 64

static struct {
    const void *addr;
    int kind;
} loop_guard_locks[LOOP_GUARD_LOCKS];
static atomic_int loop_guard_nlocks;
static atomic_flag loop_guard_locks_busy = ATOMIC_FLAG_INIT;

/* Each distinct (kind, caller) the loop thread locked from, in order. */
static struct {
    int kind;
    void *site;
    int n;
} loop_guard_sites[LOOP_GUARD_SITES];
static int loop_guard_nsites;
static int loop_guard_site_reported[LOOP_GUARD_SITES];
static int loop_guard_lock_hits[LG_KINDS];

static void loop_guard_add_lock(const void *addr, int kind)
{
    int n;

    if (!addr)
        return;
    while (atomic_flag_test_and_set(&loop_guard_locks_busy))
        ;
    n = atomic_load(&loop_guard_nlocks);
    if (n < LOOP_GUARD_LOCKS) {
        loop_guard_locks[n].addr = addr;
        loop_guard_locks[n].kind = kind;
        atomic_store(&loop_guard_nlocks, n + 1);
    }
    atomic_flag_clear(&loop_guard_locks_busy);
}

/* Name every lock of p that a thread other than a loop's may hold
 * (several pools, and the same pool again, are fine). */
static void loop_guard_watch_pool(pgg_pool *p)
{
    loop_guard_add_lock(pgg__async_kept_mutex(), LG_KEPT);
    for (int i = 0; i < p->nhosts; i++) {
        loop_guard_add_lock(&p->hosts[i].mu, LG_HOST);
        loop_guard_add_lock(&p->hosts[i].breaker.mu, LG_BREAKER);
    }
    if (p->health)
        loop_guard_add_lock(pgg__health_mutex(p->health), LG_HEALTH);
    if (p->types)
        loop_guard_add_lock(pgg__types_mutex(p->types), LG_TYPES);
    if (p->cache)
        loop_guard_add_lock(pgg__cache_mutex(p->cache), LG_CACHE);
    for (int i = 0; p->pipes && i < pgg__pipes_count(p->pipes); i++)
        loop_guard_add_lock(pgg__pipes_mutex(p->pipes, i), LG_PIPE);
    loop_guard_add_lock(&p->bulkhead.mu, LG_BULKHEAD);
    loop_guard_add_lock(&p->prepared.mu, LG_PREPARED);
    loop_guard_add_lock(&p->ev_mu, LG_LISTENER);
    loop_guard_add_lock(&p->leases.mu, LG_LEASES);
    if (p->vis) {
        loop_guard_add_lock(pgg__vis_mutex(p->vis, false), LG_VIS);
        loop_guard_add_lock(pgg__vis_mutex(p->vis, true), LG_VIS);
    }
}

/* The loop thread locks mu (called from site), watched. */
static void loop_guard_lock_hit(const void *mu, void *site)
{
    int n = atomic_load(&loop_guard_nlocks);
    int kind = LG_OTHER;
    int i;

    for (i = 0; i < n; i++)
        if (loop_guard_locks[i].addr == mu) {
            kind = loop_guard_locks[i].kind;
            break;
        }
    loop_guard_lock_hits[kind]++;
    for (i = 0; i < loop_guard_nsites; i++)
        if (loop_guard_sites[i].kind == kind && loop_guard_sites[i].site == site)
            break;
    if (i == loop_guard_nsites && i < LOOP_GUARD_SITES) {
        loop_guard_sites[i].kind = kind;
        loop_guard_sites[i].site = site;
        loop_guard_nsites++;
    }
    if (i < LOOP_GUARD_SITES)
        loop_guard_sites[i].n++;
}

/* A caller's address as function (file:line), inlined frames joined by
 * " in ", through addr2line; the module and offset if that fails. */
static void loop_guard_site_name(void *site, char *out, size_t len)
{
    Dl_info info;
    char cmd[512], line[256], exe[256] = "";
    size_t used = 0;
    uintptr_t off;
    FILE *f;

    if (!dladdr(site, &info) || !info.dli_fname) {
        snprintf(out, len, "%p", site);
        return;
    }
    /* The return address is the instruction after the call. */
    off = (uintptr_t)site - (uintptr_t)info.dli_fbase - 1;
    snprintf(out, len, "%s+0x%lx", info.dli_fname, (unsigned long)off);
    /* The executable's own name is criterion's worker's (argv[0]). */
    if (!strchr(info.dli_fname, '/')) {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);

        exe[n > 0 ? n : 0] = 0;
    }
    snprintf(cmd, sizeof cmd, "addr2line -f -i -s -e '%s' 0x%lx 2>/dev/null",
             strchr(info.dli_fname, '/') ? info.dli_fname : exe, (unsigned long)off);
    f = popen(cmd, "r");
    if (!f)
        return;
    for (int k = 0; fgets(line, sizeof line, f); k++) {
        line[strcspn(line, "\n")] = 0;
        if (k % 2 == 0 && line[0] == '?')
            break;
        if (k == 0)
            used = 0;
        used += (size_t)snprintf(out + used, used < len ? len - used : 0,
                                 k % 2 ? " (%s)" : k ? " in %s" : "%s", line);
        if (used >= len)
            break;
    }
    pclose(f);
}

/* The sites the loop thread locked a lock from since the last report,
 * each with its count so far (the last line of a site is its total), to
 * stderr. */
static void loop_guard_report_shared(const char *where)
{
    char name[384];

    for (int i = 0; i < loop_guard_nsites; i++) {
        if (loop_guard_site_reported[i] == loop_guard_sites[i].n)
            continue;
        loop_guard_site_reported[i] = loop_guard_sites[i].n;
        loop_guard_site_name(loop_guard_sites[i].site, name, sizeof name);
        fprintf(stderr, "loop_guard: %s: %s: %s locked %d time(s) from %s\n",
                criterion_current_test ? criterion_current_test->name : "?", where,
                loop_guard_kind[loop_guard_sites[i].kind], loop_guard_sites[i].n, name);
    }
}

/* No shared lock locked (waited for, possibly) on the loop thread so far;
 * with LOOP_GUARD_SHARED_LOCKS_FAIL 0, only reported. */
static void loop_guard_check_shared(const char *where)
{
    char name[384];

    loop_guard_report_shared(where);
    if (!LOOP_GUARD_SHARED_LOCKS_FAIL)
        return;
    for (int k = 0; k < LG_OTHER; k++) {
        int first = 0;

        if (!loop_guard_lock_hits[k])
            continue;
        while (loop_guard_sites[first].kind != k)
            first++;
        loop_guard_site_name(loop_guard_sites[first].site, name, sizeof name);
        cr_expect_eq(loop_guard_lock_hits[k], 0,
                     "%s: the loop thread locked %s, which other threads hold too, "
                     "%d time(s) inside pgguard; the first from %s",
                     where, loop_guard_kind[k], loop_guard_lock_hits[k], name);
    }
}

static void *loop_guard_next(const char *name, const char *version)
{
    void *f = version ? dlvsym(RTLD_NEXT, name, version) : dlsym(RTLD_NEXT, name);

    if (!f)
        abort();
    return f;
}

int poll(struct pollfd *fds, nfds_t n, int timeout)
{
    static int (*next)(struct pollfd *, nfds_t, int);

    if (timeout != 0)
        loop_guard_hit("poll with a timeout, ms", timeout);
    if (!next)
        *(void **)&next = loop_guard_next("poll", NULL);
    return next(fds, n, timeout);
}

int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask)
{
    static int (*next)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);

    if (!ts || ts->tv_sec || ts->tv_nsec)
        loop_guard_hit("ppoll with a timeout, ns", ts ? ts->tv_sec * 1000000000L + ts->tv_nsec : -1);
    if (!next)
        *(void **)&next = loop_guard_next("ppoll", NULL);
    return next(fds, n, ts, mask);
}

int select(int n, fd_set *r, fd_set *w, fd_set *e, struct timeval *tv)
{
    static int (*next)(int, fd_set *, fd_set *, fd_set *, struct timeval *);

    if (!tv || tv->tv_sec || tv->tv_usec)
        loop_guard_hit("select with a timeout, us", tv ? tv->tv_sec * 1000000L + tv->tv_usec : -1);
    if (!next)
        *(void **)&next = loop_guard_next("select", NULL);
    return next(n, r, w, e, tv);
}

int pselect(int n, fd_set *r, fd_set *w, fd_set *e, const struct timespec *ts,
            const sigset_t *mask)
{
    static int (*next)(int, fd_set *, fd_set *, fd_set *, const struct timespec *,
                       const sigset_t *);

    if (!ts || ts->tv_sec || ts->tv_nsec)
        loop_guard_hit("pselect with a timeout", 0);
    if (!next)
        *(void **)&next = loop_guard_next("pselect", NULL);
    return next(n, r, w, e, ts, mask);
}

int nanosleep(const struct timespec *req, struct timespec *rem)
{
    static int (*next)(const struct timespec *, struct timespec *);

    loop_guard_hit("nanosleep, ns", req->tv_sec * 1000000000L + req->tv_nsec);
    if (!next)
        *(void **)&next = loop_guard_next("nanosleep", NULL);
    return next(req, rem);
}

int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req, struct timespec *rem)
{
    static int (*next)(clockid_t, int, const struct timespec *, struct timespec *);

    loop_guard_hit("clock_nanosleep", flags);
    if (!next)
        *(void **)&next = loop_guard_next("clock_nanosleep", NULL);
    return next(clk, flags, req, rem);
}

int usleep(useconds_t us)
{
    static int (*next)(useconds_t);

    loop_guard_hit("usleep, us", (long)us);
    if (!next)
        *(void **)&next = loop_guard_next("usleep", NULL);
    return next(us);
}

unsigned int sleep(unsigned int s)
{
    static unsigned int (*next)(unsigned int);

    loop_guard_hit("sleep, s", (long)s);
    if (!next)
        *(void **)&next = loop_guard_next("sleep", NULL);
    return next(s);
}

int pthread_cond_wait(pthread_cond_t *cv, pthread_mutex_t *mu)
{
    static int (*next)(pthread_cond_t *, pthread_mutex_t *);

    loop_guard_hit("pthread_cond_wait", 0);
    if (!next)
        *(void **)&next = loop_guard_next("pthread_cond_wait", "GLIBC_2.3.2");
    return next(cv, mu);
}

int pthread_cond_timedwait(pthread_cond_t *cv, pthread_mutex_t *mu, const struct timespec *at)
{
    static int (*next)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);

    loop_guard_hit("pthread_cond_timedwait", 0);
    if (!next)
        *(void **)&next = loop_guard_next("pthread_cond_timedwait", "GLIBC_2.3.2");
    return next(cv, mu, at);
}

int pthread_cond_clockwait(pthread_cond_t *cv, pthread_mutex_t *mu, clockid_t clk,
                           const struct timespec *at)
{
    static int (*next)(pthread_cond_t *, pthread_mutex_t *, clockid_t,
                       const struct timespec *);

    loop_guard_hit("pthread_cond_clockwait", 0);
    if (!next)
        *(void **)&next = loop_guard_next("pthread_cond_clockwait", "GLIBC_2.30");
    return next(cv, mu, clk, at);
}

/* glibc declares the address as a transparent union under _GNU_SOURCE. */
int connect(int fd, __CONST_SOCKADDR_ARG addr, socklen_t len)
{
    static int (*next)(int, __CONST_SOCKADDR_ARG, socklen_t);
    int fl = fcntl(fd, F_GETFL);

    if (fl >= 0 && !(fl & O_NONBLOCK))
        loop_guard_hit("connect on a blocking socket, fd", fd);
    if (!next)
        *(void **)&next = loop_guard_next("connect", NULL);
    return next(fd, addr, len);
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    static int (*next)(const char *, const char *, const struct addrinfo *,
                       struct addrinfo **);
    unsigned char buf[sizeof(struct in6_addr)];

    if (node && inet_pton(AF_INET, node, buf) != 1 && inet_pton(AF_INET6, node, buf) != 1 &&
        node[0] != '/')
        loop_guard_hit("getaddrinfo of a host name", 0);
    if (!next)
        *(void **)&next = loop_guard_next("getaddrinfo", NULL);
    return next(node, service, hints, res);
}

/* PQconnectStartParams makes the connect's first step itself (its
 * socket and connect(2)), through PQconnectPoll: not counted. */
static _Thread_local int loop_guard_starting;

PGconn *PQconnectStartParams(const char *const *keys, const char *const *vals, int expand)
{
    static PGconn *(*next)(const char *const *, const char *const *, int);
    PGconn *conn;

    if (!next)
        *(void **)&next = loop_guard_next("PQconnectStartParams", NULL);
    loop_guard_starting++;
    conn = next(keys, vals, expand);
    loop_guard_starting--;
    return conn;
}

PostgresPollingStatusType PQconnectPoll(PGconn *conn)
{
    static PostgresPollingStatusType (*next)(PGconn *);

    if (!loop_guard_starting)
        loop_guard_hit("PQconnectPoll (a connect step on the loop thread)", 0);
    if (!next)
        *(void **)&next = loop_guard_next("PQconnectPoll", NULL);
    return next(conn);
}

void PQfinish(PGconn *conn)
{
    static void (*next)(PGconn *);

    if (conn)
        loop_guard_hit("PQfinish (a session closed on the loop thread)", 0);
    if (!next)
        *(void **)&next = loop_guard_next("PQfinish", NULL);
    next(conn);
}

int pthread_create(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
    static int (*next)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

    loop_guard_hit("pthread_create (a thread started on the loop thread)", 0);
    if (!next)
        *(void **)&next = loop_guard_next("pthread_create", NULL);
    return next(t, attr, fn, arg);
}

/* Every pthread_mutex_lock the loop thread makes in the window: named
 * when the lock is a shared one (loop_guard_check_shared). */
int pthread_mutex_lock(pthread_mutex_t *mu)
{
    static int (*next)(pthread_mutex_t *);

    if (loop_guard_watching > 0)
        loop_guard_lock_hit(mu, __builtin_return_address(0));
    if (!next)
        *(void **)&next = loop_guard_next("pthread_mutex_lock", NULL);
    return next(mu);
}

/* No waiting call on the loop thread so far (where: for the message), and
 * no shared lock locked there (its own assertion, or only reported:
 * LOOP_GUARD_SHARED_LOCKS_FAIL). */
static void loop_guard_check(const char *where)
{
    int n = atomic_load(&loop_guard_hits);

    cr_expect_eq(n, 0,
                 "%s: the loop thread made %d waiting or forbidden call(s) inside pgguard; "
                 "the first: %s",
                 where, n, loop_guard_first);
    loop_guard_check_shared(where);
}

#else
#define LOOP_GUARD 0
static void loop_guard_on(void) {}
static void loop_guard_off(void) {}
static void loop_guard_watch_pool(pgg_pool *p)
{
    (void)p;
}
static void loop_guard_check_shared(const char *where)
{
    (void)where;
}
static void loop_guard_check(const char *where)
{
    (void)where;
}
#endif

#endif
