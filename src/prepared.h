/*
 * Internal: the pool's prepared statements.  Registered once on the pool
 * (pgg_pool_prepare), prepared on each connection the first time a call
 * needs it there, so a statement costs one extra round trip per connection
 * and none per call after that.
 *
 * Lookups by name take no lock: the table is immutable, and a registration
 * publishes a new one (the old ones are kept until the pool goes, as are
 * the statements, so a pointer a caller holds stays valid).
 */
#ifndef PGG_PREPARED_H
#define PGG_PREPARED_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "pgguard.h"
#include "tls.h"

/* A statement: index is its bit in a connection's "prepared here" set. */
typedef struct pgg_stmt {
    int index;
    char *name;
    char *sql;
    int nparams;
    Oid *types; /* NULL: the server infers them */
} pgg_stmt;

typedef struct pgg_stmt_table pgg_stmt_table;

typedef struct pgg_prepared {
    pthread_mutex_t mu; /* serialises registrations only */
    _Atomic(pgg_stmt_table *) table;
    pgg_stmt_table *retired; /* older tables, freed with the registry */
} pgg_prepared;

/* Parameters of one statement, at most: the protocol's limit (libpq
 * refuses more). */
#define PGG_MAX_PARAMS 65535

/* Statements per pool, at most: a connection's set is a fixed bitmap. */
#define PGG_MAX_STATEMENTS 1024

void pgg__prepared_init(pgg_prepared *p);
void pgg__prepared_destroy(pgg_prepared *p);

/*
 * Register name -> sql.  Registering the same name again with the same
 * text and types is a no-op; with another text it is PGG_EINVAL (a
 * connection may have prepared the first one already).
 */
int pgg__prepared_add(pgg_prepared *p, const char *name, const char *sql,
                      int nparams, const Oid *types, pgg_error *err);

/* A table's first member (prepared.c): its id, unique per table ever
 * made, from 1. */
typedef struct pgg_stmt_table_head {
    uint64_t id;
} pgg_stmt_table_head;

/*
 * This thread's last statement found, and in which table.  A table never
 * changes and no id is given twice, so when the pool's current table has
 * that id, the statement is that table's (alive while it is current): one
 * comparison of the name instead of hashing it and probing, for the
 * common caller that runs the same statement again.  The name is compared
 * whole: the caller's buffer may hold another name at the same address.
 */
typedef struct pgg_prepared_last {
    uint64_t table_id; /* 0: none */
    const pgg_stmt *stmt;
} pgg_prepared_last;
extern PGG_TLS pgg_prepared_last pgg__prepared_last;

/* pgg__prepared_find past its common case (above). */
const pgg_stmt *pgg__prepared_find_slow(pgg_prepared *p, const char *name);

/* The statement called name, or NULL.  Lock-free; the common case inline
 * (in every pgg_exec_prepared). */
static inline const pgg_stmt *pgg__prepared_find(pgg_prepared *p,
                                                 const char *name)
{
    const pgg_stmt_table *t = atomic_load_explicit(&p->table,
                                                   memory_order_acquire);

    if (!t)
        return NULL;
    if (pgg__prepared_last.table_id ==
            ((const pgg_stmt_table_head *)(const void *)t)->id &&
        strcmp(pgg__prepared_last.stmt->name, name) == 0)
        return pgg__prepared_last.stmt;
    return pgg__prepared_find_slow(p, name);
}

/* A connection's set of statements prepared on it. */
typedef struct pgg_stmt_set {
    uint64_t bits[PGG_MAX_STATEMENTS / 64];
} pgg_stmt_set;

static inline bool pgg__stmt_set_has(const pgg_stmt_set *s, int i)
{
    return (s->bits[i >> 6] >> (i & 63)) & 1u;
}

static inline void pgg__stmt_set_add(pgg_stmt_set *s, int i)
{
    s->bits[i >> 6] |= UINT64_C(1) << (i & 63);
}

static inline void pgg__stmt_set_del(pgg_stmt_set *s, int i)
{
    s->bits[i >> 6] &= ~(UINT64_C(1) << (i & 63));
}

#endif
