#include "autoprep.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "error.h"
#include "link.h"

typedef pgg_autoprep_entry entry;
typedef pgg_autoprep_lru lru;

/*
 * The SQL is hashed on every call, so only its length, its first and its
 * last sixteen bytes (where statements of one program usually differ:
 * their verb and table, their last condition) and the parameter types go
 * in; a bucket's entries are told apart by the whole text.
 */
static uint64_t mix(uint64_t h, uint64_t w)
{
    h = (h ^ w) * 0xbf58476d1ce4e5b9u;
    return h ^ (h >> 29);
}

static uint64_t hash_query(const char *sql, size_t len, int nparams, const Oid *types)
{
    uint64_t h = 0x9E3779B97F4A7C15u ^ (uint64_t)len * 0xff51afd7ed558ccdu;
    uint64_t w[4] = {0, 0, 0, 0};

    if (len >= 32) {
        memcpy(w, sql, 16);
        memcpy(w + 2, sql + len - 16, 16);
    } else {
        memcpy(w, sql, len);
    }
    h = mix(mix(mix(mix(h, w[0]), w[1]), w[2]), w[3]);
    h ^= (uint64_t)(unsigned)nparams * 0x94d049bb133111ebu;
    if (types)
        for (int k = 0; k < nparams; k++)
            h = mix(h, types[k]);
    return h ^ (h >> 31);
}

pgg_autoprep *pgg__autoprep_new(int capacity)
{
    pgg_autoprep *ap;
    unsigned nb = 16;
    int n;

    if (capacity < 1 || capacity > PGG_AUTOPREP_MAX)
        return NULL;
    n = 2 * capacity;
    while (nb < (unsigned)n * 2)
        nb *= 2;
    ap = calloc(1, sizeof *ap);
    if (!ap)
        return NULL;
    ap->e = calloc((size_t)n, sizeof *ap->e);
    ap->bucket = malloc(nb * sizeof *ap->bucket);
    if (!ap->e || !ap->bucket) {
        free(ap->e);
        free(ap->bucket);
        free(ap);
        return NULL;
    }
    ap->cap = capacity;
    ap->mask = nb - 1;
    pgg__autoprep_clear(ap);
    return ap;
}

static void entry_drop(entry *e)
{
    free(e->sql);
    free(e->types);
    e->sql = NULL;
    e->types = NULL;
}

void pgg__autoprep_clear(pgg_autoprep *ap)
{
    int n;

    if (!ap)
        return;
    n = 2 * ap->cap;
    for (int i = 0; i < n; i++) {
        entry_drop(&ap->e[i]);
        ap->e[i].chain = i + 1 < n ? i + 1 : -1;
    }
    ap->free_head = 0;
    for (unsigned b = 0; b <= ap->mask; b++)
        ap->bucket[b] = -1;
    ap->tracked = (lru){-1, -1, 0};
    ap->prepared = (lru){-1, -1, 0};
    ap->pending = -1;
    ap->last = -1;
}

void pgg__autoprep_free(pgg_autoprep *ap)
{
    if (!ap)
        return;
    for (int i = 0; i < 2 * ap->cap; i++)
        entry_drop(&ap->e[i]);
    free(ap->e);
    free(ap->bucket);
    free(ap);
}

static void lru_unlink(pgg_autoprep *ap, lru *l, int i)
{
    entry *e = &ap->e[i];

    if (e->prev >= 0)
        ap->e[e->prev].next = e->next;
    else
        l->head = e->next;
    if (e->next >= 0)
        ap->e[e->next].prev = e->prev;
    else
        l->tail = e->prev;
    l->n--;
}

static void lru_push(pgg_autoprep *ap, lru *l, int i)
{
    entry *e = &ap->e[i];

    e->prev = -1;
    e->next = l->head;
    if (l->head >= 0)
        ap->e[l->head].prev = i;
    else
        l->tail = i;
    l->head = i;
    l->n++;
}

/* Out of the table altogether; its slot goes back to the free list. */
static void entry_remove(pgg_autoprep *ap, int i)
{
    entry *e = &ap->e[i];
    int *pp = &ap->bucket[e->hash & ap->mask];

    while (*pp != i)
        pp = &ap->e[*pp].chain;
    *pp = e->chain;
    lru_unlink(ap, e->prepared ? &ap->prepared : &ap->tracked, i);
    entry_drop(e);
    e->chain = ap->free_head;
    ap->free_head = i;
}

static bool same_query(const pgg_autoprep_entry *e, uint64_t hash, const char *sql, int nparams,
                       const Oid *types)
{
    return e->hash == hash && pgg__autoprep_same_text(e, sql, nparams, types);
}

/* A new tracked entry for q, or -1 (no memory). */
static int entry_add(pgg_autoprep *ap, uint64_t hash, const pgg_query *q, size_t len)
{
    entry *e;
    int i;

    if (ap->tracked.n >= ap->cap)
        entry_remove(ap, ap->tracked.tail);
    i = ap->free_head; /* 2 * cap slots, at most cap in each list: never -1 */
    e = &ap->e[i];
    e->sql = malloc(len + 1);
    if (q->types && q->nparams > 0)
        e->types = malloc((size_t)q->nparams * sizeof *q->types);
    if (!e->sql || (q->types && q->nparams > 0 && !e->types)) {
        entry_drop(e);
        return -1;
    }
    ap->free_head = e->chain;
    memcpy(e->sql, q->sql, len + 1);
    if (e->types)
        memcpy(e->types, q->types, (size_t)q->nparams * sizeof *q->types);
    e->hash = hash;
    e->nparams = q->nparams;
    e->has_types = q->types != NULL;
    e->uses = 0;
    e->prepared = false;
    snprintf(e->name, sizeof e->name, "pgg_auto_%u", ap->next_id++);
    e->chain = ap->bucket[hash & ap->mask];
    ap->bucket[hash & ap->mask] = i;
    lru_push(ap, &ap->tracked, i);
    return i;
}

pgg_autoprep_step pgg__autoprep_lookup(pgg_autoprep *ap, const pgg_query *q,
                                       int after, const char **name,
                                       const char **evict)
{
    size_t len;
    uint64_t hash;
    entry *e;
    int i;

    *name = NULL;
    *evict = NULL;
    ap->pending = -1;
    ap->last = -1;
    if (ap->off || !q->sql || q->stmt || q->stmt_name || q->prepare ||
        (q->nparams == 0 && !q->types))
        return PGG_AUTOPREP_PLAIN;
    if ((*name = pgg__autoprep_again(ap, q)) != NULL)
        return PGG_AUTOPREP_RUN;
    len = strlen(q->sql);
    hash = hash_query(q->sql, len, q->nparams, q->nparams > 0 ? q->types : NULL);
    for (i = ap->bucket[hash & ap->mask]; i >= 0; i = ap->e[i].chain)
        if (same_query(&ap->e[i], hash, q->sql, q->nparams, q->types))
            break;
    if (i < 0 && (i = entry_add(ap, hash, q, len)) < 0)
        return PGG_AUTOPREP_PLAIN;
    e = &ap->e[i];
    if (e->prepared) {
        if (ap->prepared.head != i) {
            lru_unlink(ap, &ap->prepared, i);
            lru_push(ap, &ap->prepared, i);
        }
        *name = e->name;
        ap->last = i;
        return PGG_AUTOPREP_RUN;
    }
    if (ap->tracked.head != i) {
        lru_unlink(ap, &ap->tracked, i);
        lru_push(ap, &ap->tracked, i);
    }
    if (++e->uses < (unsigned)(after > 0 ? after : 1))
        return PGG_AUTOPREP_PLAIN;
    if (ap->prepared.n >= ap->cap) {
        memcpy(ap->evict, ap->e[ap->prepared.tail].name, sizeof ap->evict);
        *evict = ap->evict;
        entry_remove(ap, ap->prepared.tail);
    }
    ap->pending = ap->last = i;
    *name = e->name;
    return PGG_AUTOPREP_PREPARE;
}

void pgg__autoprep_prepared(pgg_autoprep *ap, bool ok)
{
    int i = ap->pending;
    entry *e;

    ap->pending = -1;
    if (i < 0)
        return;
    e = &ap->e[i];
    if (!ok) {
        e->uses = 0;
        return;
    }
    lru_unlink(ap, &ap->tracked, i);
    e->prepared = true;
    lru_push(ap, &ap->prepared, i);
}

void pgg__autoprep_forget_last(pgg_autoprep *ap)
{
    if (ap && ap->last >= 0) {
        entry_remove(ap, ap->last);
        ap->last = ap->pending = -1;
    }
}

void pgg__autoprep_counts(const pgg_autoprep *ap, int *entries, int *prepared)
{
    *entries = ap ? ap->tracked.n + ap->prepared.n : 0;
    *prepared = ap ? ap->prepared.n : 0;
}

void pgg__autoprep_stop(pgg_autoprep *ap)
{
    ap->off = true;
}

void pgg__autoprep_all_gone(pgg_autoprep *ap)
{
    /* Once is a lease's DEALLOCATE ALL; twice on one connection,
     * statements vanish under us (a pooler): stop preparing. */
    if (++ap->gone >= 2)
        ap->off = true;
    pgg__autoprep_clear(ap);
}
