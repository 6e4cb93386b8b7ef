/*
 * pgguard/adapters/libuv.h: attach a pgg_async to a libuv loop.
 * Header-only: compiled into the application, which links libuv itself.
 *
 *   pgg_async *ac = pgg_async_new(pool, &err);
 *   pgg_async_libuv_attach(ac, uv_default_loop());
 *
 * One uv_poll_t per socket a call waits on, and per context one uv_timer_t
 * (millisecond resolution: a deadline may fire up to 1 ms late) and, for
 * what is due at once, a uv_check_t with a uv_idle_t (libuv runs a timer
 * restarted with no delay from its own callback again at once, in the
 * same turn: a chain of calls each started by the previous one's callback
 * and ended at its start would then run whole inside one turn).  libuv
 * closes handles asynchronously: after pgg_async_free, let the loop run
 * once more (uv_run(loop, UV_RUN_NOWAIT)) so that their memory is freed.
 * uv.h needs the POSIX declarations: under -std=c11, define
 * _POSIX_C_SOURCE=200809L (or use -std=gnu11).
 */
#ifndef PGGUARD_ADAPTERS_LIBUV_H
#define PGGUARD_ADAPTERS_LIBUV_H

#include <stdlib.h>

#include <uv.h>

#include "../../pgguard_async.h"

typedef struct pgg_libuv {
    uv_loop_t *loop;
    uv_timer_t timer;
    /* Due at once: run after the turn's I/O (check), the turn's poll not
     * waiting meanwhile (an active idle handle). */
    uv_check_t check;
    uv_idle_t idle;
    int handles; /* not closed yet: the last close frees this */
    pgg_async *ac;
} pgg_libuv;

typedef struct pgg_libuv_sock {
    uv_poll_t poll;
    int events; /* UV_READABLE | UV_WRITABLE */
    pgg_async_sock *s;
} pgg_libuv_sock;

static void pgg_libuv_on_poll(uv_poll_t *handle, int status, int events)
{
    pgg_libuv_sock *w = (pgg_libuv_sock *)handle->data;

    /* An error on the socket: let libpq read it and report. */
    if (status < 0 || (events & UV_READABLE))
        pgg_async_handle_read(w->s);
    else if (events & UV_WRITABLE)
        pgg_async_handle_write(w->s);
}

static void pgg_libuv_update(void *data, pgg_async_sock *s, int add, int del)
{
    pgg_libuv *u = (pgg_libuv *)data;
    void **slot = pgg_async_sock_data(s);
    pgg_libuv_sock *w = (pgg_libuv_sock *)*slot;
    int events;

    if (!w) {
        w = (pgg_libuv_sock *)calloc(1, sizeof *w);
        if (!w || uv_poll_init(u->loop, &w->poll, pgg_async_sock_fd(s)) != 0)
            abort(); /* no way to report it from a hook */
        w->poll.data = w;
        w->s = s;
        *slot = w;
    }
    events = (w->events | add) & ~del;
    if (events == w->events)
        return;
    w->events = events;
    if (events)
        uv_poll_start(&w->poll, events, pgg_libuv_on_poll);
    else
        uv_poll_stop(&w->poll);
}

static void pgg_libuv_add_read(void *data, pgg_async_sock *s)
{
    pgg_libuv_update(data, s, UV_READABLE, 0);
}

static void pgg_libuv_del_read(void *data, pgg_async_sock *s)
{
    pgg_libuv_update(data, s, 0, UV_READABLE);
}

static void pgg_libuv_add_write(void *data, pgg_async_sock *s)
{
    pgg_libuv_update(data, s, UV_WRITABLE, 0);
}

static void pgg_libuv_del_write(void *data, pgg_async_sock *s)
{
    pgg_libuv_update(data, s, 0, UV_WRITABLE);
}

static void pgg_libuv_free_handle(uv_handle_t *handle)
{
    free(handle->data);
}

static void pgg_libuv_close_sock(void *data, pgg_async_sock *s)
{
    void **slot = pgg_async_sock_data(s);
    pgg_libuv_sock *w = (pgg_libuv_sock *)*slot;

    (void)data;
    if (!w)
        return;
    /* Stopped now (the fd may close right after); freed when libuv has
     * closed the handle. */
    uv_poll_stop(&w->poll);
    uv_close((uv_handle_t *)&w->poll, pgg_libuv_free_handle);
    *slot = NULL;
}

static void pgg_libuv_on_timer(uv_timer_t *t)
{
    pgg_async_handle_timer(((pgg_libuv *)t->data)->ac);
}

static void pgg_libuv_on_idle(uv_idle_t *i)
{
    (void)i; /* only keeps the turn's poll from waiting */
}

static void pgg_libuv_on_check(uv_check_t *c)
{
    pgg_libuv *u = (pgg_libuv *)c->data;

    uv_check_stop(&u->check);
    uv_idle_stop(&u->idle);
    pgg_async_handle_timer(u->ac);
}

static void pgg_libuv_schedule_timer(void *data, int64_t timeout_us)
{
    pgg_libuv *u = (pgg_libuv *)data;

    if (timeout_us != 0) {
        uv_check_stop(&u->check);
        uv_idle_stop(&u->idle);
    }
    if (timeout_us <= 0)
        uv_timer_stop(&u->timer);
    if (timeout_us < 0)
        return;
    if (timeout_us == 0) {
        uv_idle_start(&u->idle, pgg_libuv_on_idle);
        uv_check_start(&u->check, pgg_libuv_on_check);
        return;
    }
    uv_timer_start(&u->timer, pgg_libuv_on_timer,
                   (uint64_t)((timeout_us + 999) / 1000), 0);
}

static void pgg_libuv_closed(uv_handle_t *handle)
{
    pgg_libuv *u = (pgg_libuv *)handle->data;

    if (--u->handles == 0)
        free(u);
}

static void pgg_libuv_cleanup(void *data)
{
    pgg_libuv *u = (pgg_libuv *)data;

    u->handles = 3;
    u->timer.data = u;
    u->check.data = u;
    u->idle.data = u;
    uv_close((uv_handle_t *)&u->timer, pgg_libuv_closed);
    uv_close((uv_handle_t *)&u->check, pgg_libuv_closed);
    uv_close((uv_handle_t *)&u->idle, pgg_libuv_closed);
}

/* Attach ac to loop.  PGG_OK, PGG_ENOMEM, or pgg_async_attach's error. */
static inline int pgg_async_libuv_attach(pgg_async *ac, uv_loop_t *loop)
{
    pgg_async_ev ev;
    pgg_libuv *u = (pgg_libuv *)calloc(1, sizeof *u);
    int rc;

    if (!u)
        return PGG_ENOMEM;
    u->loop = loop;
    u->ac = ac;
    if (uv_timer_init(loop, &u->timer) != 0) {
        free(u);
        return PGG_ENOMEM;
    }
    /* Without the others (libuv's own init never fails today): the ones
     * made are closed, u freed by the last close. */
    u->handles = 1;
    if (uv_check_init(loop, &u->check) == 0)
        u->handles++;
    if (u->handles == 2 && uv_idle_init(loop, &u->idle) == 0)
        u->handles++;
    u->timer.data = u;
    u->check.data = u;
    u->idle.data = u;
    if (u->handles < 3) {
        uv_close((uv_handle_t *)&u->timer, pgg_libuv_closed);
        if (u->handles == 2)
            uv_close((uv_handle_t *)&u->check, pgg_libuv_closed);
        return PGG_ENOMEM;
    }
    ev.data = u;
    ev.add_read = pgg_libuv_add_read;
    ev.del_read = pgg_libuv_del_read;
    ev.add_write = pgg_libuv_add_write;
    ev.del_write = pgg_libuv_del_write;
    ev.close_sock = pgg_libuv_close_sock;
    ev.schedule_timer = pgg_libuv_schedule_timer;
    ev.cleanup = pgg_libuv_cleanup;
    rc = pgg_async_attach(ac, &ev);
    if (rc != PGG_OK)
        pgg_libuv_cleanup(u);
    return rc;
}

#endif
