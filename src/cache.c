#include "cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "lifo.h"
#include "trylock.h"

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
    pgg_lifo_node node;       /* first: a store queued (pending) */
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
    uint64_t hits, misses, stores, evictions;
    /* Stores of event loops that found mu busy, newest first: applied by
     * the holder (see "Loops"). */
    pgg_lifo pending;
    atomic_uint_fast64_t fallbacks;
    atomic_uint_fast64_t queued, later; /* see "Loops" (tests, stats) */
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
    for (pgg_lifo_node *n = pgg__lifo_take(&c->pending, NULL), *nn; n; n = nn) {
        nn = n->next;
        entry_unref((entry *)n);
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

static void cache_lock(pgg_cache *c, entry **doomed);
static void cache_unlock(pgg_cache *c, entry **doomed);

size_t pgg__cache_most_moved(pgg_cache *c)
{
    entry *doomed = NULL;
    size_t n;

    cache_lock(c, &doomed);
    n = c->most_moved;
    cache_unlock(c, &doomed);
    return n;
}

void pgg__cache_store(pgg_cache *c, const pgg_cache_key *k, const PGresult *res,
                      int64_t now_ns)
{
    pgg__cache_store_at(c, k, res, now_ns, 0);
}

/*
 * Loops.  An event loop's thread never waits for mu (docs/DESIGN.md,
 * "Locks"): every thread's cacheable reads share it, and a holder
 * preempted inside its short section would make the loop sleep for a
 * scheduler slice.  On a loop (the _loop variants) mu is only tried
 * (trylock.h); when it stays busy:
 *
 *   - a store is queued: the entry, built and copied outside mu as
 *     always, is pushed (a compare-and-swap, lifo.h) on `pending`, and mu
 *     tried once more.  Every holder applies what is queued, oldest
 *     first, when it takes mu (so a lookup sees every store queued before
 *     it) and again before it unlocks; after unlocking it fences and
 *     looks at `pending` again, and the pusher tries mu after its push,
 *     so one of the two applies it (a Dekker pair, as the breaker's
 *     notes: breaker.c, "Notes").  A store is never skipped: a fallback
 *     served later depends on it.
 *   - a lookup answers "busy" (PGG_CACHE_BUSY): the call that wanted a
 *     fallback looks again on its loop's timer until mu is free (async.c,
 *     ST_CACHE), and is then served exactly as a blocking call that waited
 *     for mu would be.  A fallback is served always or never by the rules
 *     (age, position), not "usually": a miss for want of the lock would
 *     fail a call the cache could answer, at the very moment no host can.
 *     The call is held past its deadline by the holder's section only, as
 *     a blocking caller waiting for mu would be.
 *
 * Blocking callers still wait for mu, and apply what is queued.
 */

/* A queued store, applied (mu held); doomed: what it replaced or
 * evicted, unreffed after unlocking. */
static void store_locked(pgg_cache *c, entry *e, entry **doomed)
{
    entry *old;
    entry **pp;

    pp = find_slot(c, e->key, e->key_len, e->hash);
    old = *pp;
    if (old) {
        unlink_entry(c, old);
        old->chain = *doomed;
        *doomed = old;
        pp = find_slot(c, e->key, e->key_len, e->hash);
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
        victim->chain = *doomed;
        *doomed = victim;
        c->evictions++;
    }
    grow_step(c);
}

/* The stores loops queued, oldest first (mu held). */
static void drain_pending(pgg_cache *c, entry **doomed)
{
    pgg_lifo_node *n, *older = NULL, *next;

    if (pgg__lifo_empty(&c->pending))
        return;
    /* Newest first as taken: turned to oldest first, so that of two
     * stores of one key the later stays. */
    for (n = pgg__lifo_take(&c->pending, NULL); n; n = next) {
        next = n->next;
        n->next = older;
        older = n;
    }
    for (n = older; n; n = next) {
        next = n->next;
        store_locked(c, (entry *)n, doomed);
    }
}

static void cache_lock(pgg_cache *c, entry **doomed)
{
    pthread_mutex_lock(&c->mu);
    drain_pending(c, doomed);
}

static bool cache_trylock(pgg_cache *c, entry **doomed)
{
    if (!pgg__trylock_few(&c->mu))
        return false;
    drain_pending(c, doomed);
    return true;
}

/* Unlock, with what is queued applied first; a store queued as the lock
 * was released is applied here or by its pusher's try (see "Loops").
 * Then what was replaced or evicted is let go, outside mu. */
void (*pgg__cache_unlock_hook)(pgg_cache *c);

static void cache_unlock(pgg_cache *c, entry **doomed)
{
    if (pgg__cache_unlock_hook)
        pgg__cache_unlock_hook(c);
    for (;;) {
        drain_pending(c, doomed);
        pthread_mutex_unlock(&c->mu);
        atomic_thread_fence(memory_order_seq_cst);
        if (pgg__lifo_empty(&c->pending) ||
            pthread_mutex_trylock(&c->mu) != 0)
            break;
    }
    while (*doomed) {
        entry *next = (*doomed)->chain;

        entry_unref(*doomed);
        *doomed = next;
    }
}

/* The entry for a store, built outside mu (NULL: nothing to store). */
static entry *entry_new(pgg_cache *c, const pgg_cache_key *k,
                        const PGresult *res, int64_t now_ns, uint64_t lsn)
{
    entry *e;
    PGresult *copy;

    if (!c || !res)
        return NULL;
    copy = PQcopyResult(res, copy_flags);
    if (!copy)
        return NULL;
    e = malloc(sizeof *e + k->len);
    if (!e) {
        PQclear(copy);
        return NULL;
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
        return NULL;
    }
    return e;
}

void pgg__cache_store_at(pgg_cache *c, const pgg_cache_key *k,
                         const PGresult *res, int64_t now_ns, uint64_t lsn)
{
    entry *e = entry_new(c, k, res, now_ns, lsn), *doomed = NULL;

    if (!e)
        return;
    cache_lock(c, &doomed);
    store_locked(c, e, &doomed);
    cache_unlock(c, &doomed);
}

void pgg__cache_store_loop(pgg_cache *c, const pgg_cache_key *k,
                           const PGresult *res, int64_t now_ns, uint64_t lsn)
{
    entry *e = entry_new(c, k, res, now_ns, lsn), *doomed = NULL;

    if (!e)
        return;
    if (cache_trylock(c, &doomed)) {
        store_locked(c, e, &doomed);
        cache_unlock(c, &doomed);
        return;
    }
    /* Queued: the holder applies it (see "Loops"); one more try covers a
     * holder that looked before the push. */
    pgg__lifo_push(&c->pending, &e->node);
    atomic_fetch_add_explicit(&c->queued, 1, memory_order_relaxed);
    if (pthread_mutex_trylock(&c->mu) == 0)
        cache_unlock(c, &doomed);
}

PGresult *pgg__cache_lookup(pgg_cache *c, const pgg_cache_key *k, int64_t now_ns,
                            int64_t max_age_ns, int64_t *age_ns)
{
    return pgg__cache_lookup_at(c, k, now_ns, max_age_ns, 0, age_ns, NULL);
}

/* The entry for k, with a reader's reference, or NULL (mu held). */
static entry *lookup_locked(pgg_cache *c, const pgg_cache_key *k,
                            int64_t now_ns, int64_t max_age_ns,
                            uint64_t min_lsn, int64_t *age, entry **doomed)
{
    entry *e;

    if (max_age_ns <= 0 || max_age_ns > c->max_age_ns)
        max_age_ns = c->max_age_ns;
    if (c->old)
        grow_step(c);
    e = *find_slot(c, k->bytes, k->len, k->hash);
    if (e) {
        *age = now_ns - e->stored_ns;
        if (*age > c->max_age_ns) {
            /* Never served again: make room now. */
            unlink_entry(c, e);
            e->chain = *doomed;
            *doomed = e;
            e = NULL;
        } else if (*age > max_age_ns || e->lsn < min_lsn) {
            e = NULL; /* too old for this caller, maybe not for another */
        } else {
            lru_unlink(c, e);
            lru_push_front(c, e);
            atomic_fetch_add(&e->refs, 1);
        }
    }
    if (e)
        c->hits++;
    else
        c->misses++;
    return e;
}

/* The caller's copy of a found entry, outside mu. */
static PGresult *copy_out(entry *e, int64_t age, int64_t *age_ns,
                          uint64_t *lsn)
{
    PGresult *copy;

    if (!e)
        return NULL;
    copy = PQcopyResult(e->res, copy_flags);
    if (copy && age_ns)
        *age_ns = age;
    if (copy && lsn)
        *lsn = e->lsn;
    entry_unref(e);
    return copy;
}

PGresult *pgg__cache_lookup_at(pgg_cache *c, const pgg_cache_key *k,
                               int64_t now_ns, int64_t max_age_ns,
                               uint64_t min_lsn, int64_t *age_ns,
                               uint64_t *lsn)
{
    entry *e, *doomed = NULL;
    int64_t age = 0;

    if (!c)
        return NULL;
    cache_lock(c, &doomed);
    e = lookup_locked(c, k, now_ns, max_age_ns, min_lsn, &age, &doomed);
    cache_unlock(c, &doomed);
    return copy_out(e, age, age_ns, lsn);
}

int pgg__cache_lookup_loop(pgg_cache *c, const pgg_cache_key *k,
                           int64_t now_ns, int64_t max_age_ns,
                           uint64_t min_lsn, int64_t *age_ns, uint64_t *lsn,
                           PGresult **out)
{
    entry *e, *doomed = NULL;
    int64_t age = 0;

    *out = NULL;
    if (!c)
        return PGG_CACHE_MISS;
    if (!cache_trylock(c, &doomed)) {
        atomic_fetch_add_explicit(&c->later, 1, memory_order_relaxed);
        return PGG_CACHE_BUSY;
    }
    e = lookup_locked(c, k, now_ns, max_age_ns, min_lsn, &age, &doomed);
    cache_unlock(c, &doomed);
    *out = copy_out(e, age, age_ns, lsn);
    return *out ? PGG_CACHE_HIT : PGG_CACHE_MISS;
}

void pgg__cache_note_fallback(pgg_cache *c)
{
    if (!c)
        return;
    atomic_fetch_add_explicit(&c->fallbacks, 1, memory_order_relaxed);
}

void pgg__cache_stats(pgg_cache *c, pgg_stats *out)
{
    entry *doomed = NULL;

    if (!c)
        return;
    cache_lock(c, &doomed);
    out->cache_hits = c->hits;
    out->cache_misses = c->misses;
    out->cache_stores = c->stores;
    out->cache_evictions = c->evictions;
    out->cache_fallbacks =
        atomic_load_explicit(&c->fallbacks, memory_order_relaxed);
    out->cache_bytes = (uint64_t)c->bytes;
    out->cache_entries = c->entries;
    cache_unlock(c, &doomed);
}

void pgg__cache_loop_counts(pgg_cache *c, uint64_t *queued, uint64_t *later)
{
    *queued = atomic_load(&c->queued);
    *later = atomic_load(&c->later);
}

bool pgg__cache_pending_empty(pgg_cache *c)
{
    return pgg__lifo_empty(&c->pending);
}

pthread_mutex_t *pgg__cache_mutex(pgg_cache *c)
{
    return &c->mu;
}
