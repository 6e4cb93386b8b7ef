/*
 * The libevent adapter (pgguard/adapters/libevent.h) with the adapter
 * contract checked on every hook: whenever pgguard tells the adapter to
 * watch, stop watching or forget a socket (add_read, add_write, del_read,
 * del_write, close_sock), the descriptor pgg_async_sock_fd(s) is open and
 * is the socket it was when first added.  A del on a descriptor that is
 * already closed (or closed and taken by another thread's new socket) is
 * what an epoll_ctl, uv_poll_stop or ev_io_stop on someone else's socket
 * looks like; TSan reports it only when another thread happens to reuse the
 * number in between, this check every time.
 *
 *   static adapter_check chk;               (zeroed)
 *   adapter_check_attach(&chk, ac, base);   (instead of pgg_async_libevent_attach)
 *   ... run the loop ...
 *   chk.bad == 0; else chk.first says the first breach
 *
 * A test may also hold the context's timer back (adapter_check_hold_timer,
 * adapter_check_release_timer) to run a socket's event with no timed look
 * of pgguard's in the same turn.
 *
 * One loop thread per adapter_check (the hooks run there); several
 * contexts on one loop may share one.  Header-only, for test binaries that
 * link libevent.
 */
#ifndef PGG_TEST_ADAPTER_CHECK_H
#define PGG_TEST_ADAPTER_CHECK_H

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "pgguard/adapters/libevent.h"

#define ADAPTER_CHECK_FDS 4096

typedef struct adapter_check {
    /* Per descriptor number: watched now (between the first add and
     * close_sock), and the socket's inode then. */
    bool held[ADAPTER_CHECK_FDS];
    ino_t ino[ADAPTER_CHECK_FDS];
    int bad;
    char first[256];
    long hooks;
    /* While set, no context's timer is armed (adapter_check_hold_timer):
     * the loop runs its sockets' events alone, no timed look between. */
    bool hold_timer;
} adapter_check;

/* One context's hooks: the adapter checked, and the shared record. */
typedef struct adapter_check_ctx {
    adapter_check *chk;
    pgg_libevent *e;
} adapter_check_ctx;

static void adapter_check_fail(adapter_check *chk, const char *hook, int fd, const char *why)
{
    if (chk->bad++ == 0)
        snprintf(chk->first, sizeof chk->first, "%s on descriptor %d: %s", hook, fd, why);
}

/* fd is open and (held) the socket recorded when it was added. */
static void adapter_check_fd(adapter_check *chk, const char *hook, int fd, bool adding)
{
    struct stat st;

    chk->hooks++;
    if (fd < 0 || fd >= ADAPTER_CHECK_FDS) {
        adapter_check_fail(chk, hook, fd, "out of the checked range");
        return;
    }
    if (fcntl(fd, F_GETFD) < 0 || fstat(fd, &st) != 0) {
        adapter_check_fail(chk, hook, fd, errno == EBADF ? "closed" : strerror(errno));
        return;
    }
    if (!chk->held[fd]) {
        if (!adding)
            return; /* close_sock of a socket never added: nothing recorded */
        chk->held[fd] = true;
        chk->ino[fd] = st.st_ino;
        return;
    }
    if (st.st_ino != chk->ino[fd])
        adapter_check_fail(chk, hook, fd, "another socket than the one added (closed, number reused)");
}

static void adapter_check_add_read(void *data, pgg_async_sock *s)
{
    adapter_check_ctx *x = (adapter_check_ctx *)data;

    adapter_check_fd(x->chk, "add_read", pgg_async_sock_fd(s), true);
    pgg_libevent_add_read(x->e, s);
}

static void adapter_check_add_write(void *data, pgg_async_sock *s)
{
    adapter_check_ctx *x = (adapter_check_ctx *)data;

    adapter_check_fd(x->chk, "add_write", pgg_async_sock_fd(s), true);
    pgg_libevent_add_write(x->e, s);
}

static void adapter_check_del_read(void *data, pgg_async_sock *s)
{
    adapter_check_ctx *x = (adapter_check_ctx *)data;

    adapter_check_fd(x->chk, "del_read", pgg_async_sock_fd(s), false);
    pgg_libevent_del_read(x->e, s);
}

static void adapter_check_del_write(void *data, pgg_async_sock *s)
{
    adapter_check_ctx *x = (adapter_check_ctx *)data;

    adapter_check_fd(x->chk, "del_write", pgg_async_sock_fd(s), false);
    pgg_libevent_del_write(x->e, s);
}

static void adapter_check_close_sock(void *data, pgg_async_sock *s)
{
    adapter_check_ctx *x = (adapter_check_ctx *)data;
    int fd = pgg_async_sock_fd(s);

    adapter_check_fd(x->chk, "close_sock", fd, false);
    pgg_libevent_close_sock(x->e, s);
    if (fd >= 0 && fd < ADAPTER_CHECK_FDS)
        x->chk->held[fd] = false; /* its number may be another socket's next */
}

static void adapter_check_schedule_timer(void *data, int64_t timeout_us)
{
    adapter_check_ctx *x = (adapter_check_ctx *)data;

    pgg_libevent_schedule_timer(x->e, x->chk->hold_timer ? -1 : timeout_us);
}

/* ac's timer disarmed, and every arming of it held back (hold_timer),
 * until adapter_check_release_timer, which fires it at once: pgguard then
 * looks at what is due and arms it again (an early firing is harmless). */
static inline void adapter_check_hold_timer(adapter_check *chk, pgg_async *ac)
{
    chk->hold_timer = true;
    pgg_libevent_schedule_timer(((adapter_check_ctx *)pgg_async_ev_data(ac))->e, -1);
}

static inline void adapter_check_release_timer(adapter_check *chk, pgg_async *ac)
{
    chk->hold_timer = false;
    pgg_libevent_schedule_timer(((adapter_check_ctx *)pgg_async_ev_data(ac))->e, 0);
}

static void adapter_check_cleanup(void *data)
{
    adapter_check_ctx *x = (adapter_check_ctx *)data;

    pgg_libevent_cleanup(x->e);
    free(x);
}

/* pgg_async_libevent_attach's, with the checks.  chk must outlive ac's
 * pgg_async_free (several contexts may share it).  PGG_OK, PGG_ENOMEM, or
 * pgg_async_attach's error. */
static int adapter_check_attach(adapter_check *chk, pgg_async *ac, struct event_base *base)
{
    adapter_check_ctx *x = (adapter_check_ctx *)calloc(1, sizeof *x);
    pgg_libevent *e = (pgg_libevent *)calloc(1, sizeof *e);
    pgg_async_ev ev;
    int rc;

    if (e) {
        e->base = base;
        e->ac = ac;
        e->timer = evtimer_new(base, pgg_libevent_on_timer, e);
    }
    if (!x || !e || !e->timer) {
        free(x);
        free(e);
        return PGG_ENOMEM;
    }
    x->chk = chk;
    x->e = e;
    memset(&ev, 0, sizeof ev);
    ev.data = x;
    ev.add_read = adapter_check_add_read;
    ev.del_read = adapter_check_del_read;
    ev.add_write = adapter_check_add_write;
    ev.del_write = adapter_check_del_write;
    ev.close_sock = adapter_check_close_sock;
    ev.schedule_timer = adapter_check_schedule_timer;
    ev.cleanup = adapter_check_cleanup;
    rc = pgg_async_attach(ac, &ev);
    if (rc != PGG_OK)
        adapter_check_cleanup(x);
    return rc;
}

#endif
