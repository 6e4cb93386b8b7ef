#include "cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* ------------------------------------------------------------------ keys */

static bool key_reserve(pgg_cache_key *k, size_t more)
{
    size_t need = k->len + more;
    unsigned char *nb;
    size_t cap;

    if (need <= k->cap)
        return true;
    cap = k->cap * 2 > need ? k->cap * 2 : need;
    nb = malloc(cap);
    if (!nb)
        return false;
    memcpy(nb, k->bytes, k->len);
    if (k->bytes != k->inline_)
        free(k->bytes);
    k->bytes = nb;
    k->cap = cap;
    return true;
}

static bool key_put(pgg_cache_key *k, const void *p, size_t n)
{
    if (!key_reserve(k, n))
        return false;
    if (n)
        memcpy(k->bytes + k->len, p, n);
    k->len += n;
    return true;
}

static bool key_u32(pgg_cache_key *k, uint32_t v)
{
    return key_put(k, &v, sizeof v);
}

/* Length-prefixed, so that ("ab", "c") and ("a", "bc") differ. */
static bool key_str(pgg_cache_key *k, const char *s, size_t n)
{
    return key_u32(k, (uint32_t)n) && key_put(k, s, n);
}

/* FNV-1a, 64-bit: keys are short and hashed once per call. */
static uint64_t hash_bytes(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

int pgg__cache_key(pgg_cache_key *k, const char *user, const char *dbname,
                   const pgg_query *q)
{
    bool ok;

    k->bytes = k->inline_;
    k->len = 0;
    k->cap = sizeof k->inline_;
    k->hash = 0;
    user = user ? user : "";
    dbname = dbname ? dbname : "";
    /* A prepared statement's name stands for its parameter types too. */
    ok = key_str(k, user, strlen(user)) && key_str(k, dbname, strlen(dbname)) &&
         key_str(k, q->sql, strlen(q->sql)) &&
         key_str(k, q->stmt_name ? q->stmt_name : "",
                 q->stmt_name ? strlen(q->stmt_name) : 0) &&
         key_u32(k, (uint32_t)q->result_format) &&
         key_u32(k, (uint32_t)q->nparams);
    for (int i = 0; ok && i < q->nparams; i++) {
        int fmt = q->formats ? q->formats[i] : 0;
        const char *v = q->values ? q->values[i] : NULL;

        ok = key_u32(k, q->types ? q->types[i] : 0) && key_u32(k, (uint32_t)fmt);
        if (!ok)
            break;
        if (!v) {
            ok = key_u32(k, UINT32_MAX); /* NULL differs from every value */
        } else {
            /* libpq sends any non-zero format as binary, by its length. */
            size_t n = fmt != 0 && q->lengths ? (size_t)q->lengths[i] : strlen(v);
            ok = key_str(k, v, n);
        }
    }
    if (!ok) {
        pgg__cache_key_done(k);
        return PGG_ENOMEM;
    }
    k->hash = hash_bytes(k->bytes, k->len);
    return PGG_OK;
}

void pgg__cache_key_done(pgg_cache_key *k)
{
    if (k->bytes && k->bytes != k->inline_)
        free(k->bytes);
    k->bytes = k->inline_;
    k->len = 0;
    k->cap = sizeof k->inline_;
}

/* ----------------------------------------------------------------- cache */

typedef struct entry {
    struct entry *chain;      /* hash bucket */
    struct entry *prev, *next; /* LRU: head is most recent */
    PGresult *res;
    int64_t stored_ns;
    uint64_t lsn;             /* position the data includes; 0 unknown */
    size_t bytes;             /* what it counts against the cap */
    atomic_int refs;          /* the table's, plus readers copying out */
    uint64_t hash;
    size_t key_len;
    unsigned char key[];
} entry;

struct pgg_cache {
    pthread_mutex_t mu;
    int64_t max_bytes;
    int64_t max_age_ns;
    entry **buckets;
    size_t nbuckets; /* power of two */
    /* While the table grows: the previous one, half the size, whose
     * buckets from moved on are still to be moved (see grow). */
    entry **old;
    size_t nold, moved;
    size_t most_moved; /* the most entries moved in one step (tests) */
    size_t entries;
    int64_t bytes;
    entry *head, *tail;
    uint64_t hits, misses, stores, evictions, fallbacks;
};

static const int copy_flags =
    PG_COPYRES_ATTRS | PG_COPYRES_TUPLES | PG_COPYRES_EVENTS;

static void entry_unref(entry *e)
{
    if (atomic_fetch_sub(&e->refs, 1) == 1) {
        PQclear(e->res);
        free(e);
    }
}

pgg_cache *pgg__cache_new(int64_t max_bytes, int64_t max_age_ns,
                          pgg_error *err)
{
    pgg_cache *c;

    if (max_bytes <= 0 || max_age_ns <= 0) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                       "cache: max_bytes and max_age must be positive");
        return NULL;
    }
    c = calloc(1, sizeof *c);
    if (!c || !(c->buckets = calloc(64, sizeof *c->buckets))) {
        free(c);
        pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "cache: out of memory");
        return NULL;
    }
    c->nbuckets = 64;
    c->max_bytes = max_bytes;
    c->max_age_ns = max_age_ns;
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void pgg__cache_free(pgg_cache *c)
{
    entry *e, *next;

    if (!c)
        return;
    for (e = c->head; e; e = next) {
        next = e->next;
        entry_unref(e);
    }
    free(c->buckets);
    free(c->old);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* The slot holding the key, or the empty one at the end of its chain in
 * the table it goes to (the new one, while the table grows). */
static entry **find_slot(pgg_cache *c, const unsigned char *key, size_t len,
                         uint64_t hash)
{
    entry **pp;

    if (c->old && (hash & (c->nold - 1)) >= c->moved) {
        for (pp = &c->old[hash & (c->nold - 1)]; *pp; pp = &(*pp)->chain) {
            entry *e = *pp;
            if (e->hash == hash && e->key_len == len &&
                memcmp(e->key, key, len) == 0)
                return pp;
        }
    }
    pp = &c->buckets[hash & (c->nbuckets - 1)];
    for (; *pp; pp = &(*pp)->chain) {
        entry *e = *pp;
        if (e->hash == hash && e->key_len == len &&
            memcmp(e->key, key, len) == 0)
            break;
    }
    return pp;
}

static void lru_unlink(pgg_cache *c, entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(pgg_cache *c, entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

/* Take e out of the table and the list (mu held); the caller unrefs it
 * after unlocking. */
static void unlink_entry(pgg_cache *c, entry *e)
{
    entry **pp = find_slot(c, e->key, e->key_len, e->hash);

    if (*pp == e)
        *pp = e->chain;
    e->chain = NULL;
    lru_unlink(c, e);
    c->entries--;
    c->bytes -= (int64_t)e->bytes;
}

/* Buckets of the old table moved per store or lookup while the table
 * grows: a few entries per step, so that no caller holds mu for all of
 * them. */
#define GROW_STEP 8

/*
 * Growth (mu held).  Doubling the table once moved every entry under mu:
 * at the default 64 MB of small results, ~100k entries and a fresh MB of
 * buckets, milliseconds in which every cacheable read of every thread,
 * an event loop's included, waited for the lock (loop14).  The table now
 * grows step by step: the new one is allocated (calloc's fresh pages are
 * touched as buckets move in), the old one is kept, and each store or
 * lookup moves GROW_STEP of its buckets; a key is looked for in the old
 * table while its bucket has not moved.  Failure to grow is harmless:
 * chains just get longer.
 */
static void grow_step(pgg_cache *c)
{
    size_t n = 0, end;

    if (!c->old) {
        entry **nb;

        if (c->entries <= c->nbuckets * 2 || !(nb = calloc(c->nbuckets * 2, sizeof *nb)))
            return;
        c->old = c->buckets;
        c->nold = c->nbuckets;
        c->moved = 0;
        c->buckets = nb;
        c->nbuckets *= 2;
    }
    end = c->moved + GROW_STEP < c->nold ? c->moved + GROW_STEP : c->nold;
    for (; c->moved < end; c->moved++) {
        entry *e = c->old[c->moved];

        c->old[c->moved] = NULL;
        while (e) {
            entry *next = e->chain;
            size_t b = e->hash & (c->nbuckets - 1);

            e->chain = c->buckets[b];
            c->buckets[b] = e;
            e = next;
            n++;
        }
    }
    if (n > c->most_moved)
        c->most_moved = n;
    if (c->moved == c->nold) {
        free(c->old);
        c->old = NULL;
    }
}

size_t pgg__cache_most_moved(pgg_cache *c)
{
    size_t n;

    pthread_mutex_lock(&c->mu);
    n = c->most_moved;
    pthread_mutex_unlock(&c->mu);
    return n;
}

void pgg__cache_store(pgg_cache *c, const pgg_cache_key *k, const PGresult *res,
                      int64_t now_ns)
{
    pgg__cache_store_at(c, k, res, now_ns, 0);
}

void pgg__cache_store_at(pgg_cache *c, const pgg_cache_key *k,
                         const PGresult *res, int64_t now_ns, uint64_t lsn)
{
    entry *e, *old, *doomed = NULL;
    entry **pp;
    PGresult *copy;

    if (!c || !res)
        return;
    copy = PQcopyResult(res, copy_flags);
    if (!copy)
        return;
    e = malloc(sizeof *e + k->len);
    if (!e) {
        PQclear(copy);
        return;
    }
    memset(e, 0, sizeof *e);
    e->res = copy;
    e->stored_ns = now_ns;
    e->lsn = lsn;
    e->hash = k->hash;
    e->key_len = k->len;
    memcpy(e->key, k->bytes, k->len);
    e->bytes = PQresultMemorySize(copy) + sizeof *e + k->len;
    atomic_init(&e->refs, 1);
    if ((int64_t)e->bytes > c->max_bytes) {
        entry_unref(e);
        return;
    }

    pthread_mutex_lock(&c->mu);
    pp = find_slot(c, k->bytes, k->len, k->hash);
    old = *pp;
    if (old) {
        unlink_entry(c, old);
        old->chain = doomed;
        doomed = old;
        pp = find_slot(c, k->bytes, k->len, k->hash);
    }
    e->chain = *pp;
    *pp = e;
    lru_push_front(c, e);
    c->entries++;
    c->bytes += (int64_t)e->bytes;
    c->stores++;
    while (c->bytes > c->max_bytes && c->tail && c->tail != e) {
        entry *victim = c->tail;
        unlink_entry(c, victim);
        victim->chain = doomed;
        doomed = victim;
        c->evictions++;
    }
    grow_step(c);
    pthread_mutex_unlock(&c->mu);

    while (doomed) {
        entry *next = doomed->chain;
        entry_unref(doomed);
        doomed = next;
    }
}

PGresult *pgg__cache_lookup(pgg_cache *c, const pgg_cache_key *k, int64_t now_ns,
                            int64_t max_age_ns, int64_t *age_ns)
{
    return pgg__cache_lookup_at(c, k, now_ns, max_age_ns, 0, age_ns, NULL);
}

PGresult *pgg__cache_lookup_at(pgg_cache *c, const pgg_cache_key *k,
                               int64_t now_ns, int64_t max_age_ns,
                               uint64_t min_lsn, int64_t *age_ns,
                               uint64_t *lsn)
{
    entry *e, *doomed = NULL;
    PGresult *copy;
    int64_t age = 0;
    uint64_t at = 0;

    if (!c)
        return NULL;
    if (max_age_ns <= 0 || max_age_ns > c->max_age_ns)
        max_age_ns = c->max_age_ns;
    pthread_mutex_lock(&c->mu);
    if (c->old)
        grow_step(c);
    e = *find_slot(c, k->bytes, k->len, k->hash);
    if (e) {
        age = now_ns - e->stored_ns;
        if (age > c->max_age_ns) {
            /* Never served again: make room now. */
            unlink_entry(c, e);
            doomed = e;
            e = NULL;
        } else if (age > max_age_ns || e->lsn < min_lsn) {
            e = NULL; /* too old for this caller, maybe not for another */
        } else {
            at = e->lsn;
            lru_unlink(c, e);
            lru_push_front(c, e);
            atomic_fetch_add(&e->refs, 1);
        }
    }
    if (e)
        c->hits++;
    else
        c->misses++;
    pthread_mutex_unlock(&c->mu);
    if (doomed)
        entry_unref(doomed);
    if (!e)
        return NULL;
    copy = PQcopyResult(e->res, copy_flags);
    entry_unref(e);
    if (copy && age_ns)
        *age_ns = age;
    if (copy && lsn)
        *lsn = at;
    return copy;
}

void pgg__cache_note_fallback(pgg_cache *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->fallbacks++;
    pthread_mutex_unlock(&c->mu);
}

void pgg__cache_stats(pgg_cache *c, pgg_stats *out)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    out->cache_hits = c->hits;
    out->cache_misses = c->misses;
    out->cache_stores = c->stores;
    out->cache_evictions = c->evictions;
    out->cache_fallbacks = c->fallbacks;
    out->cache_bytes = (uint64_t)c->bytes;
    out->cache_entries = c->entries;
    pthread_mutex_unlock(&c->mu);
}

pthread_mutex_t *pgg__cache_mutex(pgg_cache *c)
{
    return &c->mu;
}
