/*
 * pgguard/adapters/libev.h: attach a pgg_async to a libev loop.
 * Header-only: compiled into the application, which links libev itself.
 *
 *   pgg_async *ac = pgg_async_new(pool, &err);
 *   pgg_async_libev_attach(ac, EV_DEFAULT);
 *
 * One ev_io per socket a call waits on and one ev_timer per context.
 */
#ifndef PGGUARD_ADAPTERS_LIBEV_H
#define PGGUARD_ADAPTERS_LIBEV_H

#include <stdlib.h>

#include <ev.h>

#include "../../pgguard_async.h"

typedef struct pgg_libev {
    struct ev_loop *loop;
    ev_timer timer;
    pgg_async *ac;
} pgg_libev;

typedef struct pgg_libev_sock {
    ev_io io;
    int events; /* EV_READ | EV_WRITE */
    pgg_async_sock *s;
} pgg_libev_sock;

static void pgg_libev_on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    pgg_libev_sock *ws = (pgg_libev_sock *)w->data;

    (void)loop;
    /* One call per wake-up: the first may end the wait and close s. */
    if (revents & EV_READ)
        pgg_async_handle_read(ws->s);
    else if (revents & EV_WRITE)
        pgg_async_handle_write(ws->s);
}

static void pgg_libev_update(void *data, pgg_async_sock *s, int add, int del)
{
    pgg_libev *e = (pgg_libev *)data;
    void **slot = pgg_async_sock_data(s);
    pgg_libev_sock *w = (pgg_libev_sock *)*slot;
    int events;

    if (!w) {
        w = (pgg_libev_sock *)calloc(1, sizeof *w);
        if (!w)
            abort(); /* no way to report it from a hook */
        w->s = s;
        *slot = w;
    }
    events = (w->events | add) & ~del;
    if (events == w->events)
        return;
    if (w->events)
        ev_io_stop(e->loop, &w->io);
    w->events = events;
    if (!events)
        return;
    ev_io_init(&w->io, pgg_libev_on_io, pgg_async_sock_fd(s), events);
    w->io.data = w;
    ev_io_start(e->loop, &w->io);
}

static void pgg_libev_add_read(void *data, pgg_async_sock *s)
{
    pgg_libev_update(data, s, EV_READ, 0);
}

static void pgg_libev_del_read(void *data, pgg_async_sock *s)
{
    pgg_libev_update(data, s, 0, EV_READ);
}

static void pgg_libev_add_write(void *data, pgg_async_sock *s)
{
    pgg_libev_update(data, s, EV_WRITE, 0);
}

static void pgg_libev_del_write(void *data, pgg_async_sock *s)
{
    pgg_libev_update(data, s, 0, EV_WRITE);
}

static void pgg_libev_close_sock(void *data, pgg_async_sock *s)
{
    pgg_libev *e = (pgg_libev *)data;
    void **slot = pgg_async_sock_data(s);
    pgg_libev_sock *w = (pgg_libev_sock *)*slot;

    if (!w)
        return;
    if (w->events)
        ev_io_stop(e->loop, &w->io);
    free(w);
    *slot = NULL;
}

static void pgg_libev_on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    pgg_async_handle_timer(((pgg_libev *)t->data)->ac);
}

static void pgg_libev_schedule_timer(void *data, int64_t timeout_us)
{
    pgg_libev *e = (pgg_libev *)data;

    ev_timer_stop(e->loop, &e->timer);
    if (timeout_us < 0)
        return;
    ev_timer_set(&e->timer, (ev_tstamp)timeout_us / 1e6, 0.);
    ev_timer_start(e->loop, &e->timer);
}

static void pgg_libev_cleanup(void *data)
{
    pgg_libev *e = (pgg_libev *)data;

    ev_timer_stop(e->loop, &e->timer);
    free(e);
}

/* Attach ac to loop.  PGG_OK, PGG_ENOMEM, or pgg_async_attach's error. */
static inline int pgg_async_libev_attach(pgg_async *ac, struct ev_loop *loop)
{
    pgg_async_ev ev;
    pgg_libev *e = (pgg_libev *)calloc(1, sizeof *e);
    int rc;

    if (!e)
        return PGG_ENOMEM;
    e->loop = loop;
    e->ac = ac;
    ev_timer_init(&e->timer, pgg_libev_on_timer, 0., 0.);
    e->timer.data = e;
    ev.data = e;
    ev.add_read = pgg_libev_add_read;
    ev.del_read = pgg_libev_del_read;
    ev.add_write = pgg_libev_add_write;
    ev.del_write = pgg_libev_del_write;
    ev.close_sock = pgg_libev_close_sock;
    ev.schedule_timer = pgg_libev_schedule_timer;
    ev.cleanup = pgg_libev_cleanup;
    rc = pgg_async_attach(ac, &ev);
    if (rc != PGG_OK)
        pgg_libev_cleanup(e);
    return rc;
}

#endif
