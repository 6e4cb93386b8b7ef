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

/*
 * Connections are prepared on event loops' threads too (pgg__types_step,
 * pgg__types_registered, pgg__types_template), which must never wait for a
 * lock another thread holds: what they read is published whole with one
 * atomic store and never changed after, as prepared.c's table.  A new
 * registration publishes a new table (a copy plus itself), a newer
 * template replaces the older; the ones replaced stay until the pool's end
 * (a reader may still hold them), a few per registration, and
 * registrations are rare.
 */
typedef struct reg_table {
    int n;
    struct reg_table *older;
    registration regs[]; /* each's types are the newest table's to free */
} reg_table;

/* The handlers and format info of a connection prepared up to gen. */
typedef struct tmpl_rec {
    PGparam *param;
    unsigned gen;
    struct tmpl_rec *older;
} tmpl_rec;

struct pgg_types {
    pthread_mutex_t mu;          /* registrations only (writers) */
    _Atomic(reg_table *) table;  /* NULL: none yet */
    /* 1 + number of registrations: 1 means "initialised".  Stored after
     * its table, under mu; read without it. */
    _Atomic unsigned gen;
    _Atomic(tmpl_rec *) tmpl;    /* the newest; NULL: none yet */
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
    reg_table *tb;
    tmpl_rec *tr;

    if (!t)
        return;
    tb = atomic_load(&t->table);
    for (int i = 0; tb && i < tb->n; i++)
        free_registration(&tb->regs[i]);
    while (tb) {
        reg_table *older = tb->older;

        free(tb);
        tb = older;
    }
    for (tr = atomic_load(&t->tmpl); tr;) {
        tmpl_rec *older = tr->older;

        PQparamClear(tr->param);
        free(tr);
        tr = older;
    }
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* Registration i (< gen - 1 of a gen read before). */
static registration registration_at(pgg_types *t, unsigned i)
{
    return atomic_load_explicit(&t->table, memory_order_acquire)->regs[i];
}

/* param, from a connection prepared up to gen, becomes the template unless
 * one as new is there (then it is cleared). */
static void publish_template(pgg_types *t, PGparam *param, unsigned gen)
{
    tmpl_rec *rec = malloc(sizeof *rec);
    tmpl_rec *cur = atomic_load_explicit(&t->tmpl, memory_order_acquire);

    if (!rec) {
        PQparamClear(param);
        return;
    }
    rec->param = param;
    rec->gen = gen;
    do {
        if (cur && cur->gen >= gen) {
            PQparamClear(param);
            free(rec);
            return;
        }
        rec->older = cur;
    } while (!atomic_compare_exchange_weak_explicit(&t->tmpl, &cur, rec, memory_order_release,
                                                    memory_order_acquire));
}

/* Is the template taken at gen? */
static bool template_at(pgg_types *t, unsigned gen)
{
    tmpl_rec *cur = atomic_load_explicit(&t->tmpl, memory_order_acquire);

    return cur && cur->gen == gen;
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
    PGparam *fresh;

    *sent = false;
    if (l->types_gen == 0) {
        if (!PQinitTypes(l->conn))
            return pgg__error_set(err, PGG_ETYPES, NULL, host,
                                  "PQinitTypes failed");
        l->types_gen = 1;
    }
    for (;;) {
        gen = atomic_load_explicit(&t->gen, memory_order_acquire);
        if (l->types_gen >= gen)
            break;
        r = registration_at(t, l->types_gen - 1);
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
    if (!template_at(t, gen) && (fresh = PQparamCreate(l->conn)) != NULL)
        publish_template(t, fresh, gen);
    return PGG_OK;
}

int pgg__types_registered(pgg_types *t, pgg_link *l, PGresult *res,
                          const char *host, pgg_error *err)
{
    registration r = registration_at(t, l->types_gen - 1);

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

    if (l->types_gen == pgg__types_gen(t) && template_at(t, l->types_gen))
        return PGG_OK; /* up to date */
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
    reg_table *old, *grown;
    unsigned gen;
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
    old = atomic_load_explicit(&t->table, memory_order_relaxed);
    grown = malloc(sizeof *grown + (size_t)((old ? old->n : 0) + 1) * sizeof grown->regs[0]);
    if (!grown) {
        pthread_mutex_unlock(&t->mu);
        free_registration(&r);
        return pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
    }
    grown->n = old ? old->n : 0;
    if (old)
        memcpy(grown->regs, old->regs, (size_t)old->n * sizeof grown->regs[0]);
    grown->regs[grown->n++] = r;
    grown->older = old;
    atomic_store_explicit(&t->table, grown, memory_order_release);
    gen = atomic_load_explicit(&t->gen, memory_order_relaxed);
    /* That connection has everything up to this one: no second copy. */
    if (link->types_gen == gen)
        link->types_gen = gen + 1;
    atomic_store_explicit(&t->gen, gen + 1, memory_order_release);
    pthread_mutex_unlock(&t->mu);
    return PGG_OK;
}

/* PQparamDup only reads the template. */
PGparam *pgg__types_template(pgg_types *t)
{
    tmpl_rec *cur = atomic_load_explicit(&t->tmpl, memory_order_acquire);

    return cur ? PQparamDup(cur->param) : NULL;
}

pthread_mutex_t *pgg__types_mutex(pgg_types *t)
{
    return &t->mu;
}

#endif /* PGG_HAVE_LIBPQTYPES */
