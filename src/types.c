#include "pgg_config.h"

#if PGG_HAVE_LIBPQTYPES

#include "types.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <libpqtypes.h>

#include "error.h"
#include "host.h"
#include "link.h"

typedef struct registration {
    int which;
    int count;
    PGregisterType *types; /* typname strings owned here */
} registration;

struct pgg_types {
    pthread_mutex_t mu;
    registration *regs;
    int nregs;
    /* 1 + number of registrations: 1 means "initialised".  Written under
     * mu; read without it by pgg__types_gen. */
    _Atomic unsigned gen;
    PGparam *tmpl;     /* handlers and format info of a prepared connection */
    unsigned tmpl_gen; /* the gen it was taken at */
};

unsigned pgg__types_gen(pgg_types *t)
{
    return atomic_load_explicit(&t->gen, memory_order_acquire);
}

pgg_types *pgg__types_new(pgg_error *err)
{
    pgg_types *t = calloc(1, sizeof *t);

    if (!t) {
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&t->mu, NULL);
    atomic_init(&t->gen, 1);
    return t;
}

static void free_registration(registration *r)
{
    for (int i = 0; i < r->count; i++)
        free((char *)r->types[i].typname); /* strdup()ed here */
    free(r->types);
}

void pgg__types_free(pgg_types *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->nregs; i++)
        free_registration(&t->regs[i]);
    free(t->regs);
    PQparamClear(t->tmpl);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* Send one registration and collect its answer within the deadline:
 * PQregisterTypes(..., async=1) only sends. */
static int apply(PGconn *conn, const registration *r, int64_t deadline_ns,
                 const char *host, pgg_error *err)
{
    PGresult *res = NULL;
    pgg_attempt_end end;
    int rc;

    if (r->which == PQT_SUBCLASS) {
        if (!PQregisterTypes(conn, r->which, r->types, r->count, 0))
            return pgg__error_set(err, PGG_ETYPES, NULL, host,
                                  "register types: %s", PQgeterror());
        return PGG_OK;
    }
    if (!PQregisterTypes(conn, r->which, r->types, r->count, 1))
        return pgg__error_set(err, PGG_ETYPES, NULL, host,
                              "register types: %s", PQgeterror());
    rc = pgg__link_wait(conn, deadline_ns, host, &res, &end, err);
    if (rc != PGG_OK) {
        PQclear(res);
        return rc;
    }
    rc = PQregisterResult(conn, r->which, r->types, r->count, res);
    PQclear(res);
    if (!rc)
        return pgg__error_set(err, PGG_ETYPES, NULL, host,
                              "register types: %s", PQgeterror());
    return PGG_OK;
}

/*
 * Registrations are append-only and never change: a connection at
 * generation g has the first g - 1 of them (0: not even PQinitTypes).  Each
 * step brings l one registration further, so that a driver that cannot
 * wait (an event loop) and one that can (pgg__types_prepare) take the same
 * steps: the blocking one waits for each answer, the loop lets its socket
 * tell it.
 */
int pgg__types_step(pgg_types *t, pgg_link *l, const char *host, bool *sent,
                    pgg_error *err)
{
    registration r;
    unsigned gen;
    bool need_tmpl;
    PGparam *fresh;

    *sent = false;
    if (l->types_gen == 0) {
        if (!PQinitTypes(l->conn))
            return pgg__error_set(err, PGG_ETYPES, NULL, host,
                                  "PQinitTypes failed");
        l->types_gen = 1;
    }
    for (;;) {
        pthread_mutex_lock(&t->mu);
        gen = t->gen;
        need_tmpl = !t->tmpl || t->tmpl_gen != gen;
        if (l->types_gen >= gen) {
            pthread_mutex_unlock(&t->mu);
            break;
        }
        r = t->regs[l->types_gen - 1]; /* its types outlive the pool's */
        pthread_mutex_unlock(&t->mu);
        if (r.which == PQT_SUBCLASS) {
            /* Local: no round trip. */
            if (!PQregisterTypes(l->conn, r.which, r.types, r.count, 0))
                return pgg__error_set(err, PGG_ETYPES, NULL, host,
                                      "register types: %s", PQgeterror());
            l->types_gen++;
            continue;
        }
        /* The asynchronous form only sends; pgg__types_registered reads
         * the answer. */
        if (!PQregisterTypes(l->conn, r.which, r.types, r.count, 1))
            return pgg__error_set(err, PGG_ETYPES, NULL, host,
                                  "register types: %s", PQgeterror());
        *sent = true;
        return PGG_OK;
    }
    if (need_tmpl && (fresh = PQparamCreate(l->conn)) != NULL) {
        pthread_mutex_lock(&t->mu);
        if (gen == t->gen && (!t->tmpl || t->tmpl_gen != gen)) {
            PGparam *old = t->tmpl;
            t->tmpl = fresh;
            t->tmpl_gen = gen;
            fresh = old;
        }
        pthread_mutex_unlock(&t->mu);
        PQparamClear(fresh);
    }
    return PGG_OK;
}

int pgg__types_registered(pgg_types *t, pgg_link *l, PGresult *res,
                          const char *host, pgg_error *err)
{
    registration r;

    pthread_mutex_lock(&t->mu);
    r = t->regs[l->types_gen - 1];
    pthread_mutex_unlock(&t->mu);
    if (!PQregisterResult(l->conn, r.which, r.types, r.count, res))
        return pgg__error_set(err, PGG_ETYPES, NULL, host,
                              "register types: %s", PQgeterror());
    l->types_gen++;
    return PGG_OK;
}

int pgg__types_prepare(pgg_types *t, pgg_link *l, int64_t deadline_ns,
                       const char *host, pgg_error *err)
{
    pgg_attempt_end end;
    PGresult *res;
    bool sent;
    int rc;

    pthread_mutex_lock(&t->mu);
    rc = l->types_gen == t->gen && t->tmpl && t->tmpl_gen == t->gen;
    pthread_mutex_unlock(&t->mu);
    if (rc)
        return PGG_OK; /* up to date: no lock taken again */
    /* libpqtypes reads through libpq itself (link.h's recv wait). */
    pgg__link_recv_off(l->conn, &l->recv_mode, true);
    for (;;) {
        rc = pgg__types_step(t, l, host, &sent, err);
        if (rc != PGG_OK || !sent)
            return rc;
        res = NULL;
        rc = pgg__link_wait(l->conn, deadline_ns, host, &res, &end, err);
        if (rc == PGG_OK)
            rc = pgg__types_registered(t, l, res, host, err);
        PQclear(res);
        if (rc != PGG_OK)
            return rc;
    }
}

/* ------------------------------------------------------ registrations */

int pgg__types_add(pgg_types *t, int which, const PGregisterType *types,
                   int count, pgg_link *link, int64_t deadline_ns,
                   const char *host, pgg_error *err)
{
    registration r;
    registration *grown;
    int rc;

    r.which = which;
    r.count = count;
    r.types = calloc((size_t)count, sizeof *r.types);
    if (!r.types)
        return pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
    for (int i = 0; i < count; i++) {
        if (!types[i].typname ||
            !(r.types[i].typname = strdup(types[i].typname))) {
            free_registration(&r);
            return pgg__error_set(err, types[i].typname ? PGG_ENOMEM : PGG_EINVAL,
                                  NULL, NULL, "pgg_pool_register_types: type %d",
                                  i);
        }
        r.types[i].typput = types[i].typput;
        r.types[i].typget = types[i].typget;
    }
    rc = apply(link->conn, &r, deadline_ns, host, err);
    if (rc != PGG_OK) {
        free_registration(&r);
        return rc;
    }

    pthread_mutex_lock(&t->mu);
    grown = realloc(t->regs, (size_t)(t->nregs + 1) * sizeof *grown);
    if (!grown) {
        pthread_mutex_unlock(&t->mu);
        free_registration(&r);
        return pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
    }
    t->regs = grown;
    t->regs[t->nregs++] = r;
    /* That connection has everything up to this one: no second copy. */
    if (link->types_gen == t->gen)
        link->types_gen = t->gen + 1;
    t->gen++;
    pthread_mutex_unlock(&t->mu);
    return PGG_OK;
}

PGparam *pgg__types_template(pgg_types *t)
{
    PGparam *p = NULL;

    pthread_mutex_lock(&t->mu);
    if (t->tmpl)
        p = PQparamDup(t->tmpl);
    pthread_mutex_unlock(&t->mu);
    return p;
}

#endif /* PGG_HAVE_LIBPQTYPES */

pthread_mutex_t *pgg__types_mutex(pgg_types *t)
{
    return &t->mu;
}
