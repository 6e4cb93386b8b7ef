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

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "pgg_config.h"
#include "pgguard.h"

struct pgg_link;
typedef struct pgg_types pgg_types;

#if PGG_HAVE_LIBPQTYPES

pgg_types *pgg__types_new(pgg_error *err);
/* Accepts NULL. */
void pgg__types_free(pgg_types *t);

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

/* A typed call's statement and parameters (pgg_execf's cmdspec, put into
 * the pool's template), laid out for pgg_exec_params. */
typedef struct pgg__typed {
    char *stmt;
    int n;
    Oid *oids;
    const char **vals;
    int *lens, *fmts;
    void *arrays;
    void *param; /* the PGparam the values live in */
} pgg__typed;

/* Build one without waiting: PGG_ESTATE when the pool has no template yet
 * (no connection prepared for libpqtypes).  pgg__typed_done frees it,
 * whatever this returned. */
int pgg__typed_build(pgg_pool *pool, pgg__typed *tc, pgg_error *err,
                     const char *cmdspec, va_list ap);
void pgg__typed_done(pgg__typed *tc);

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

#endif

#endif
