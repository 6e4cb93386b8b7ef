/*
 * Internal: the fallback cache.  Copies of successful cacheable reads
 * (PQcopyResult with attributes, tuples and events, so libpqtypes' PQgetf
 * works on them), served, marked stale, when no host can answer.
 *
 * Keyed by everything that changes the answer or who may see it: user,
 * database, SQL text, parameter types, values and formats, result format.
 * Bounded by a byte cap counting the real size of what is stored
 * (PQresultMemorySize plus key and bookkeeping), least recently used out
 * first, and by a maximum age past which an entry is never served.
 *
 * Thread-safe.  One short mutex guards the table and the LRU list; copying
 * a result in or out, the expensive part, happens outside it on a
 * reference-counted entry.  An event loop's thread never waits for it
 * (the _loop variants; cache.c, "Loops"): a store that finds it busy is
 * queued for its holder, a lookup answers PGG_CACHE_BUSY.
 */
#ifndef PGG_CACHE_H
#define PGG_CACHE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "link.h"
#include "pgguard.h"

typedef struct pgg_cache pgg_cache;

/* A key being built: inline storage for small keys, heap beyond. */
typedef struct pgg_cache_key {
    unsigned char *bytes;
    size_t len, cap;
    uint64_t hash;
    unsigned char inline_[512];
} pgg_cache_key;

/*
 * Encode the key of q for (user, database).  Returns PGG_OK or PGG_ENOMEM;
 * release with pgg__cache_key_done().
 */
int pgg__cache_key(pgg_cache_key *k, const char *user, const char *dbname,
                   const pgg_query *q);
void pgg__cache_key_done(pgg_cache_key *k);

/* max_bytes > 0, max_age_ns > 0. */
pgg_cache *pgg__cache_new(int64_t max_bytes, int64_t max_age_ns,
                          pgg_error *err);
/* Accepts NULL.  Results handed out earlier stay valid (they are copies). */
void pgg__cache_free(pgg_cache *c);
/* For tests (the loop guard): the table's lock. */
pthread_mutex_t *pgg__cache_mutex(pgg_cache *c);

/* Store a copy of res (a PGRES_TUPLES_OK result) under k, replacing any
 * older entry.  A result larger than the whole cap is not stored. */
void pgg__cache_store(pgg_cache *c, const pgg_cache_key *k, const PGresult *res,
                      int64_t now_ns);

/* The same, recording the WAL position the data is known to include
 * (0: unknown). */
void pgg__cache_store_at(pgg_cache *c, const pgg_cache_key *k,
                         const PGresult *res, int64_t now_ns, uint64_t lsn);

/*
 * A copy of the entry for k if it is at most max_age_ns old (also capped
 * by the cache's own maximum age), with *age_ns; NULL on a miss.  The copy
 * belongs to the caller (PQclear).
 */
PGresult *pgg__cache_lookup(pgg_cache *c, const pgg_cache_key *k, int64_t now_ns,
                            int64_t max_age_ns, int64_t *age_ns);

/* The same, also refusing an entry whose recorded position is below
 * min_lsn (a miss); *lsn (may be NULL) gets the entry's position. */
PGresult *pgg__cache_lookup_at(pgg_cache *c, const pgg_cache_key *k,
                               int64_t now_ns, int64_t max_age_ns,
                               uint64_t min_lsn, int64_t *age_ns,
                               uint64_t *lsn);

/* On an event loop's thread: the same, never waiting for the lock (a
 * store that finds it busy is queued and applied by its holder before it
 * unlocks; cache.c, "Loops"). */
void pgg__cache_store_loop(pgg_cache *c, const pgg_cache_key *k,
                           const PGresult *res, int64_t now_ns, uint64_t lsn);

enum { PGG_CACHE_MISS, PGG_CACHE_HIT, PGG_CACHE_BUSY };

/* On an event loop's thread: pgg__cache_lookup_at's answer in *out
 * (PGG_CACHE_HIT, or PGG_CACHE_MISS with *out NULL), or PGG_CACHE_BUSY:
 * the lock stayed busy, nothing looked at; ask again later (the loop's
 * call looks again on its timer). */
int pgg__cache_lookup_loop(pgg_cache *c, const pgg_cache_key *k,
                           int64_t now_ns, int64_t max_age_ns,
                           uint64_t min_lsn, int64_t *age_ns, uint64_t *lsn,
                           PGresult **out);

/* For tests: stores loops queued, lookups they were told to make again
 * (both since the cache's start). */
void pgg__cache_loop_counts(pgg_cache *c, uint64_t *queued, uint64_t *later);
/* For tests: no store is left queued. */
bool pgg__cache_pending_empty(pgg_cache *c);
/* For tests: called by every holder of the lock just before it applies
 * what is queued and unlocks (a stand-in for a holder preempted there). */
extern void (*pgg__cache_unlock_hook)(pgg_cache *c);

/* Count a stale answer actually served (a lookup hit used as fallback). */
void pgg__cache_note_fallback(pgg_cache *c);

/* Fill the cache_* fields of *out.  Accepts a NULL cache (all zero). */
void pgg__cache_stats(pgg_cache *c, pgg_stats *out);
/* The most entries one store or lookup moved to a grown table (tests: it
 * stays a few, whatever the cache holds). */
size_t pgg__cache_most_moved(pgg_cache *c);

#endif
