/*
 * Internal: libpqtypes on pooled connections.  Each connection gets
 * PQinitTypes once and the pool's type registrations (a generation
 * counter says which it has); the pool keeps a template PGparam, copied
 * from a prepared connection, from which typed calls pack their arguments
 * without holding a connection (so a call that no host can serve still
 * has its cache key).
 *
 * Compiled only with libpqtypes (PGG_HAVE_LIBPQTYPES).
 */
#ifndef PGG_TYPES_H
#define PGG_TYPES_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "pgg_config.h"
#include "pgguard.h"

struct pgg_link;
typedef struct pgg_types pgg_types;

#if PGG_HAVE_LIBPQTYPES

#include <libpqtypes.h>

pgg_types *pgg__types_new(pgg_error *err);
/* Accepts NULL. */
void pgg__types_free(pgg_types *t);
/* For tests (the loop guard): the registrations' lock. */
pthread_mutex_t *pgg__types_mutex(pgg_types *t);

/*
 * Bring l's connection up to date (PQinitTypes, then registrations newer
 * than l->types_gen, each bounded by deadline_ns), and refresh the
 * template from it when the template is missing or stale.
 * PGG_OK, PGG_ETIMEDOUT / PGG_ECONNECT (the connection is unusable),
 * PGG_ETYPES (a registration failed: a type the server does not have).
 */
int pgg__types_prepare(pgg_types *t, struct pgg_link *l, int64_t deadline_ns,
                       const char *host, pgg_error *err);

/* The generation a connection prepared now would reach (l->types_gen):
 * one with less lacks a registration.  Lock-free. */
unsigned pgg__types_gen(pgg_types *t);

/*
 * pgg__types_prepare's steps, for a driver that cannot wait (an event
 * loop): bring l one registration further.  PGG_OK with *sent false: l is
 * up to date (and the template refreshed).  PGG_OK with *sent true: a
 * registration's query is on the wire: collect its result as any query's,
 * hand it to pgg__types_registered, then step again.  Errors as
 * pgg__types_prepare's.
 */
int pgg__types_step(pgg_types *t, struct pgg_link *l, const char *host,
                    bool *sent, pgg_error *err);
int pgg__types_registered(pgg_types *t, struct pgg_link *l, PGresult *res,
                          const char *host, pgg_error *err);

/*
 * pgg_pool_register_types' registration: copy types, apply them on link's
 * connection (bounded by deadline_ns: a type the server lacks is refused
 * here, PGG_ETYPES), then add them for every connection; that one counts
 * as up to date.  Called on a lease's link (typed.c).
 */
int pgg__types_add(pgg_types *t, int which, const PGregisterType *types,
                   int count, struct pgg_link *link, int64_t deadline_ns,
                   const char *host, pgg_error *err);
/* A copy of the template (PQparamDup), or NULL when no connection has been
 * prepared yet. */
PGparam *pgg__types_template(pgg_types *t);

#else

static inline unsigned pgg__types_gen(pgg_types *t)
{
    (void)t;
    return 0;
}

static inline void pgg__types_free(pgg_types *t)
{
    (void)t;
}

static inline pthread_mutex_t *pgg__types_mutex(pgg_types *t)
{
    (void)t;
    return NULL;
}

#endif

#endif
