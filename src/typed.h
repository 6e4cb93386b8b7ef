/*
 * Internal: typed calls (typed.c) as the event-loop driver builds them
 * (async.c): a cmdspec and its values laid out for pgg_exec_params.
 */
#ifndef PGG_TYPED_H
#define PGG_TYPED_H

#include <stdarg.h>

#include <libpq-fe.h>

#include "pgg_config.h"
#include "pgguard.h"

#if PGG_HAVE_LIBPQTYPES

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

#endif

#endif
