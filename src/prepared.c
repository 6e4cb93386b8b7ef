#include "prepared.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"

struct pgg_stmt_table {
    pgg_stmt_table_head head; /* first: prepared.h reads it */
    int n;
    unsigned mask;            /* buckets - 1, a power of two minus one */
    pgg_stmt **stmts;         /* by index */
    int *buckets;             /* open addressing: index + 1, 0 empty */
    pgg_stmt_table *next_retired;
};

static atomic_uint_fast64_t table_ids;

static uint64_t hash_name(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

static void table_free(pgg_stmt_table *t)
{
    if (!t)
        return;
    free(t->stmts);
    free(t->buckets);
    free(t);
}

static void stmt_free(pgg_stmt *s)
{
    if (!s)
        return;
    free(s->name);
    free(s->sql);
    free(s->types);
    free(s);
}

void pgg__prepared_init(pgg_prepared *p)
{
    pthread_mutex_init(&p->mu, NULL);
    atomic_init(&p->table, NULL);
    p->retired = NULL;
}

void pgg__prepared_destroy(pgg_prepared *p)
{
    pgg_stmt_table *t = atomic_load(&p->table);

    if (t)
        for (int i = 0; i < t->n; i++)
            stmt_free(t->stmts[i]);
    table_free(t);
    while (p->retired) {
        pgg_stmt_table *next = p->retired->next_retired;
        table_free(p->retired);
        p->retired = next;
    }
    pthread_mutex_destroy(&p->mu);
}

static const pgg_stmt *lookup(const pgg_stmt_table *t, const char *name)
{
    if (!t)
        return NULL;
    for (unsigned b = (unsigned)hash_name(name) & t->mask;; b = (b + 1) & t->mask) {
        int slot = t->buckets[b];
        if (slot == 0)
            return NULL;
        if (strcmp(t->stmts[slot - 1]->name, name) == 0)
            return t->stmts[slot - 1];
    }
}

PGG_TLS pgg_prepared_last pgg__prepared_last;

const pgg_stmt *pgg__prepared_find_slow(pgg_prepared *p, const char *name)
{
    const pgg_stmt_table *t = atomic_load_explicit(&p->table,
                                                   memory_order_acquire);
    const pgg_stmt *s = lookup(t, name);

    if (s) {
        pgg__prepared_last.table_id = t->head.id;
        pgg__prepared_last.stmt = s;
    }
    return s;
}

static bool same_types(const pgg_stmt *s, int nparams, const Oid *types)
{
    /* With no parameters a types array holds nothing (and none is kept). */
    if (nparams == 0)
        types = NULL;
    if (s->nparams != nparams || (!s->types) != (!types))
        return false;
    return !types || memcmp(s->types, types, (size_t)nparams * sizeof *types) == 0;
}

int pgg__prepared_add(pgg_prepared *p, const char *name, const char *sql,
                      int nparams, const Oid *types, pgg_error *err)
{
    pgg_stmt_table *old, *t = NULL;
    pgg_stmt *s = NULL;
    const pgg_stmt *have;
    unsigned nb;
    int n;

    if (!name || !*name || !sql || nparams < 0)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_pool_prepare: empty name or NULL SQL");
    if (nparams > PGG_MAX_PARAMS)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_pool_prepare: %d parameters (0..%d)",
                              nparams, PGG_MAX_PARAMS);
    if (strlen(name) >= 64)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_pool_prepare: name longer than 63 bytes");
    pthread_mutex_lock(&p->mu);
    old = atomic_load_explicit(&p->table, memory_order_relaxed);
    have = lookup(old, name);
    if (have) {
        bool same = strcmp(have->sql, sql) == 0 && same_types(have, nparams, types);
        pthread_mutex_unlock(&p->mu);
        return same ? PGG_OK
                    : pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                                     "pgg_pool_prepare: \"%s\" is already "
                                     "prepared with another statement",
                                     name);
    }
    n = old ? old->n : 0;
    if (n >= PGG_MAX_STATEMENTS) {
        pthread_mutex_unlock(&p->mu);
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_pool_prepare: at most %d statements",
                              PGG_MAX_STATEMENTS);
    }
    for (nb = 16; nb < (unsigned)(n + 1) * 2; nb *= 2)
        ;
    s = calloc(1, sizeof *s);
    t = calloc(1, sizeof *t);
    if (!s || !t || !(s->name = strdup(name)) || !(s->sql = strdup(sql)) ||
        (types && nparams > 0 && !(s->types = malloc((size_t)nparams * sizeof *types))) ||
        !(t->stmts = malloc((size_t)(n + 1) * sizeof *t->stmts)) ||
        !(t->buckets = calloc(nb, sizeof *t->buckets)))
        goto oom;
    if (s->types)
        memcpy(s->types, types, (size_t)nparams * sizeof *types);
    s->nparams = nparams;
    s->index = n;
    if (n)
        memcpy(t->stmts, old->stmts, (size_t)n * sizeof *t->stmts);
    t->stmts[n] = s;
    t->n = n + 1;
    t->mask = nb - 1;
    t->head.id = atomic_fetch_add_explicit(&table_ids, 1, memory_order_relaxed) + 1;
    for (int i = 0; i <= n; i++) {
        unsigned b = (unsigned)hash_name(t->stmts[i]->name) & t->mask;
        while (t->buckets[b])
            b = (b + 1) & t->mask;
        t->buckets[b] = i + 1;
    }
    /* Readers may still walk the old table: retire it, do not free it. */
    if (old) {
        old->next_retired = p->retired;
        p->retired = old;
    }
    atomic_store_explicit(&p->table, t, memory_order_release);
    pthread_mutex_unlock(&p->mu);
    return PGG_OK;

oom:
    pthread_mutex_unlock(&p->mu);
    stmt_free(s);
    table_free(t);
    return pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
}
