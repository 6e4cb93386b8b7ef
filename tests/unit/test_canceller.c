/*
 * The canceller's workers (src/link.c): queueing a cancel
 * (pgg__canceller_drop, which an event loop's callback makes when a call's
 * deadline drops its session) never waits for the slot's worker.  The test
 * holds the worker as it wakes, where it used to hold the slot's lock (a
 * worker preempted there made every loop dropping a session on that host
 * sleep, as the closer's lock did), drops more sessions from another
 * thread, and requires every drop to return while it is held; then every
 * cancel is sent.
 *
 * No server: a fake one on 127.0.0.1 answers each startup with
 * authentication ok, a cancel key and ready-for-query (enough for libpq's
 * PQgetCancel), and counts the cancel requests it receives.
 */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "link.h"
#include "thread_hold.h"

#define DROPS 16

static bool held, release, handed;
static int cancels_received;

/* ------------------------------------------------------------ fake server */

typedef struct fake {
    int lfd, port;
    atomic_bool stop;
    int sessions[DROPS + 2], nsessions;
    pthread_t thread;
} fake;

static bool read_all(int fd, void *buf, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, (char *)buf + got, n - got);

        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}

static void put32(unsigned char *p, uint32_t v)
{
    v = htonl(v);
    memcpy(p, &v, 4);
}

/* AuthenticationOk, BackendKeyData, ReadyForQuery (idle). */
static void answer_startup(int fd, int n)
{
    unsigned char m[9 + 13 + 6], *p = m;

    *p++ = 'R', put32(p, 8), put32(p + 4, 0), p += 8;
    *p++ = 'K', put32(p, 12), put32(p + 4, 1000 + (uint32_t)n), put32(p + 8, 42), p += 12;
    *p++ = 'Z', put32(p, 5), p[4] = 'I', p += 5;
    (void)!write(fd, m, (size_t)(p - m));
}

static void *fake_main(void *arg)
{
    fake *f = arg;

    while (!atomic_load(&f->stop)) {
        struct pollfd pfd = {.fd = f->lfd, .events = POLLIN};
        unsigned char len[4], body[512];
        uint32_t n, code;
        int fd;

        if (poll(&pfd, 1, 100) <= 0)
            continue;
        fd = accept(f->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        if (!read_all(fd, len, 4) || (n = ntohl(*(uint32_t *)len)) < 8 || n > sizeof body + 4 ||
            !read_all(fd, body, n - 4)) {
            close(fd);
            continue;
        }
        code = ntohl(*(uint32_t *)body);
        if (code == 80877102) { /* CancelRequest */
            pthread_mutex_lock(&hold_mu);
            cancels_received++;
            pthread_cond_broadcast(&hold_cv);
            pthread_mutex_unlock(&hold_mu);
            close(fd);
        } else if (code == 196608 && f->nsessions < (int)(sizeof f->sessions / sizeof f->sessions[0])) {
            answer_startup(fd, f->nsessions);
            f->sessions[f->nsessions++] = fd; /* kept open until the end */
        } else {
            close(fd);
        }
    }
    return NULL;
}

static void fake_start(fake *f)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;

    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(f->lfd, 0);
    cr_assert_eq(bind(f->lfd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(f->lfd, 64), 0);
    cr_assert_eq(getsockname(f->lfd, (struct sockaddr *)&a, &al), 0);
    f->port = ntohs(a.sin_port);
    atomic_init(&f->stop, false);
    cr_assert_eq(pthread_create(&f->thread, NULL, fake_main, f), 0);
}

static void fake_stop(fake *f)
{
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    for (int i = 0; i < f->nsessions; i++)
        close(f->sessions[i]);
    close(f->lfd);
}

static PGconn *fake_session(const fake *f)
{
    char ci[160];
    PGconn *conn;

    snprintf(ci, sizeof ci,
             "host=127.0.0.1 port=%d user=u dbname=d sslmode=disable gssencmode=disable "
             "connect_timeout=10",
             f->port);
    conn = PQconnectdb(ci);
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "fake session: %s", PQerrorMessage(conn));
    /* As the pool's sessions are: a drop's PQfinish must not block. */
    PQsetnonblocking(conn, 1);
    return conn;
}

/* ------------------------------------------------------------------ test */

static void hold_worker(void)
{
    hold_until(&held, &release);
}

typedef struct drops {
    pgg_canceller *c;
    PGconn *conns[DROPS];
} drops;

static void *drop_all(void *arg)
{
    drops *d = arg;

    for (int i = 0; i < DROPS; i++)
        pgg__canceller_drop(d->c, 0, d->conns[i]);
    hold_set(&handed);
    return NULL;
}

static bool all_received(void *arg)
{
    (void)arg;
    return cancels_received == 1 + DROPS;
}

Test(canceller, queueing_a_cancel_never_waits_for_the_slots_worker)
{
    pgg_error e;
    fake f = {0};
    drops d;
    PGconn *first;
    pthread_t t;

    fake_start(&f);
    d.c = pgg__canceller_new(1, DROPS + 1, 60LL * 1000000000, &e);
    cr_assert_not_null(d.c, "%s", e.message);
    first = fake_session(&f);
    for (int i = 0; i < DROPS; i++)
        d.conns[i] = fake_session(&f);
    atomic_store(&pgg__cancel_worker_woke_hook, hold_worker);
    /* The first drop wakes the worker, which stops in the hook. */
    pgg__canceller_drop(d.c, 0, first);
    cr_assert(hold_wait_flag(&held), "the cancel worker never woke");
    cr_assert_eq(pthread_create(&t, NULL, drop_all, &d), 0);
    bool done = hold_wait_flag(&handed);
    hold_set(&release);
    pthread_join(t, NULL);
    cr_expect(done, "the drops waited for the cancel worker held as it woke");
    cr_expect(hold_wait(all_received, NULL), "the fake server received %d cancels of %d",
              cancels_received, 1 + DROPS);
    pgg__canceller_free(d.c, 10LL * 1000000000);
    atomic_store(&pgg__cancel_worker_woke_hook, NULL);
    fake_stop(&f);
}
