#include "cancel.h"

#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>

#include "watchdog.h"

struct pgg_cancel {
    atomic_int fired;
    pthread_mutex_t mu; /* wd and users: who a fire must wake */
    pgg_watchdog *wd;   /* the watchdog of the pool the calls run on */
    int users;          /* calls under way with this handle */
};

PGG_TLS pgg_cancel *pgg__cancel_cur;

pgg_cancel *pgg_cancel_new(void)
{
    pgg_cancel *c = calloc(1, sizeof *c);

    if (!c)
        return NULL;
    atomic_init(&c->fired, 0);
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

void pgg_cancel_free(pgg_cancel *c)
{
    if (!c)
        return;
    pthread_mutex_destroy(&c->mu);
    free(c);
}

void pgg_cancel_fire(pgg_cancel *c)
{
    if (!c)
        return;
    /* Sequentially consistent, paired with a waiter's look after it armed
     * its window (link.c): either the waiter sees the flag, or the kick
     * below comes after its window is published and the watchdog ends it. */
    atomic_store(&c->fired, 1);
    pthread_mutex_lock(&c->mu);
    if (c->wd)
        pgg__watchdog_kick_cancel(c->wd);
    pthread_mutex_unlock(&c->mu);
}

int pgg_cancel_fired(const pgg_cancel *c)
{
    return pgg__cancel_fired(c) ? 1 : 0;
}

void pgg_cancel_reset(pgg_cancel *c)
{
    if (c)
        atomic_store(&c->fired, 0);
}

bool pgg__cancel_fired(const pgg_cancel *c)
{
    return c && atomic_load((atomic_int *)&c->fired) != 0;
}

const atomic_int *pgg__cancel_flag(const pgg_cancel *c)
{
    return &c->fired;
}

pgg_cancel *pgg__cancel_enter(pgg_cancel *c, pgg_watchdog *wd)
{
    pgg_cancel *prev = pgg__cancel_cur;

    pthread_mutex_lock(&c->mu);
    c->users++;
    if (wd)
        c->wd = wd;
    pthread_mutex_unlock(&c->mu);
    pgg__cancel_cur = c;
    return prev;
}

void pgg__cancel_leave(pgg_cancel *c, pgg_cancel *prev)
{
    pthread_mutex_lock(&c->mu);
    /* The pool may be freed once its last call returned: forget its
     * watchdog then, so that a late fire touches nothing of it. */
    if (--c->users == 0)
        c->wd = NULL;
    pthread_mutex_unlock(&c->mu);
    pgg__cancel_cur = prev;
}

/* The handle took its room from pgg_call.reserved_: 0.1's size, and the
 * fields before it where they were. */
_Static_assert(offsetof(pgg_call, cancel) == 24 && sizeof(pgg_call) == 80,
               "pgg_call changed layout: take new fields from reserved_");
