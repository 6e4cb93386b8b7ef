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

#include <stdint.h>

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
