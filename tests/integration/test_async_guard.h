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
 *     health round); a contended pthread_mutex_lock (the pool's short
 *     locks) is allowed;
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

/* No waiting call on the loop thread so far (where: for the message). */
static void loop_guard_check(const char *where)
{
    int n = atomic_load(&loop_guard_hits);

    cr_expect_eq(n, 0,
                 "%s: the loop thread made %d waiting or forbidden call(s) inside pgguard; "
                 "the first: %s",
                 where, n, loop_guard_first);
}

#else
#define LOOP_GUARD 0
static void loop_guard_on(void) {}
static void loop_guard_off(void) {}
static void loop_guard_check(const char *where)
{
    (void)where;
}
#endif

#endif
