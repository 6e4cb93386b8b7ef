/*
 * pgguard/adapters/libevent.h: attach a pgg_async to a libevent 2 loop.
 * Header-only: the library links no event library; this file is compiled
 * into the application, which links libevent itself.
 *
 *   struct event_base *base = event_base_new();
 *   pgg_async *ac = pgg_async_new(pool, &err);
 *   pgg_async_libevent_attach(ac, base);
 *
 * One struct event per socket a call waits on (read and write interests
 * share it) and one timer per context.  Everything runs on the thread of
 * event_base_dispatch.
 */
#ifndef PGGUARD_ADAPTERS_LIBEVENT_H
#define PGGUARD_ADAPTERS_LIBEVENT_H

#include <stdlib.h>

#include <event2/event.h>

#include "../../pgguard_async.h"

typedef struct pgg_libevent_sock {
    struct event *ev;
    short want; /* EV_READ | EV_WRITE */
    struct pgg_libevent_sock *next; /* on the free list */
} pgg_libevent_sock;

/* Watchers are kept for reuse (up to 64): a call per query would
 * otherwise cost an event_new and an event_free. */
typedef struct pgg_libevent {
    struct event_base *base;
    struct event *timer;
    pgg_async *ac;
    pgg_libevent_sock *free_socks;
    int nfree;
} pgg_libevent;

static void pgg_libevent_on_sock(evutil_socket_t fd, short what, void *arg)
{
    pgg_async_sock *s = (pgg_async_sock *)arg;

    (void)fd;
    /* One call per wake-up: the first may end the wait and close s. */
    if (what & EV_READ)
        pgg_async_handle_read(s);
    else if (what & EV_WRITE)
        pgg_async_handle_write(s);
}

static void pgg_libevent_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pgg_async_handle_timer(((pgg_libevent *)arg)->ac);
}

static void pgg_libevent_update(void *data, pgg_async_sock *s, short add,
                                short del)
{
    pgg_libevent *e = (pgg_libevent *)data;
    void **slot = pgg_async_sock_data(s);
    pgg_libevent_sock *w = (pgg_libevent_sock *)*slot;
    short want;

    if (!w) {
        if (e->free_socks) {
            w = e->free_socks;
            e->free_socks = w->next;
            e->nfree--;
        } else {
            w = (pgg_libevent_sock *)calloc(1, sizeof *w);
            if (!w)
                abort(); /* no way to report it from a hook */
        }
        w->want = 0;
        w->next = NULL;
        *slot = w;
    }
    want = (short)((w->want | add) & ~del);
    if (want == w->want)
        return;
    if (w->ev)
        event_del(w->ev);
    if (!want) {
        w->want = 0;
        return;
    }
    if (!w->ev)
        w->ev = event_new(e->base, pgg_async_sock_fd(s), want | EV_PERSIST,
                          pgg_libevent_on_sock, s);
    else /* not pending: deleted above, or never added since reuse */
        event_assign(w->ev, e->base, pgg_async_sock_fd(s), want | EV_PERSIST,
                     pgg_libevent_on_sock, s);
    if (!w->ev)
        abort();
    event_add(w->ev, NULL);
    w->want = want;
}

static void pgg_libevent_add_read(void *data, pgg_async_sock *s)
{
    pgg_libevent_update(data, s, EV_READ, 0);
}

static void pgg_libevent_del_read(void *data, pgg_async_sock *s)
{
    pgg_libevent_update(data, s, 0, EV_READ);
}

static void pgg_libevent_add_write(void *data, pgg_async_sock *s)
{
    pgg_libevent_update(data, s, EV_WRITE, 0);
}

static void pgg_libevent_del_write(void *data, pgg_async_sock *s)
{
    pgg_libevent_update(data, s, 0, EV_WRITE);
}

static void pgg_libevent_close_sock(void *data, pgg_async_sock *s)
{
    pgg_libevent *e = (pgg_libevent *)data;
    void **slot = pgg_async_sock_data(s);
    pgg_libevent_sock *w = (pgg_libevent_sock *)*slot;

    if (!w)
        return;
    *slot = NULL;
    if (w->ev && w->want)
        event_del(w->ev); /* synchronous: the fd may close next */
    if (e->nfree < 64) {
        w->next = e->free_socks;
        e->free_socks = w;
        e->nfree++;
        return;
    }
    if (w->ev)
        event_free(w->ev);
    free(w);
}

static void pgg_libevent_schedule_timer(void *data, int64_t timeout_us)
{
    pgg_libevent *e = (pgg_libevent *)data;
    struct timeval tv;

    if (timeout_us < 0) {
        event_del(e->timer);
        return;
    }
    tv.tv_sec = (long)(timeout_us / 1000000);
    tv.tv_usec = (long)(timeout_us % 1000000);
    event_add(e->timer, &tv);
}

static void pgg_libevent_cleanup(void *data)
{
    pgg_libevent *e = (pgg_libevent *)data;

    while (e->free_socks) {
        pgg_libevent_sock *w = e->free_socks;

        e->free_socks = w->next;
        if (w->ev)
            event_free(w->ev);
        free(w);
    }
    event_free(e->timer);
    free(e);
}

/* Attach ac to base.  PGG_OK, PGG_ENOMEM, or pgg_async_attach's error. */
static inline int pgg_async_libevent_attach(pgg_async *ac,
                                            struct event_base *base)
{
    pgg_async_ev ev;
    pgg_libevent *e = (pgg_libevent *)calloc(1, sizeof *e);
    int rc;

    if (!e)
        return PGG_ENOMEM;
    e->base = base;
    e->ac = ac;
    e->timer = evtimer_new(base, pgg_libevent_on_timer, e);
    if (!e->timer) {
        free(e);
        return PGG_ENOMEM;
    }
    ev.data = e;
    ev.add_read = pgg_libevent_add_read;
    ev.del_read = pgg_libevent_del_read;
    ev.add_write = pgg_libevent_add_write;
    ev.del_write = pgg_libevent_del_write;
    ev.close_sock = pgg_libevent_close_sock;
    ev.schedule_timer = pgg_libevent_schedule_timer;
    ev.cleanup = pgg_libevent_cleanup;
    rc = pgg_async_attach(ac, &ev);
    if (rc != PGG_OK)
        pgg_libevent_cleanup(e);
    return rc;
}

#endif
