/*
 * ThreadSanitizer driver: eight threads storing into and reading from one
 * fallback cache whose byte cap holds only part of the keys, so entries are
 * replaced and evicted while other threads copy them out; a ninth reads
 * the stats.  Half the threads are event loops (cache.c, "Loops"): their
 * stores never wait for the lock (queued for its holder when it is busy)
 * and their lookups answer "busy" instead of waiting (asked again, as a
 * loop's timer would), while the stats reader's sections are lengthened
 * inside (the unlock hook yields there, a holder preempted as it leaves).
 * Besides TSan's verdict: every hit is the answer stored under its own key
 * (never another key's, never a freed one), the counters agree with what
 * the threads did (every queued store applied once, none lost), and no
 * store is left queued once every thread is done, before anything takes
 * the lock again.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "clock.h"
#include "tsan_util.h"
#include "tests/unit/scenario_rand.h"

#define THREADS 8
#define OPS 20000
#define KEYS 64

static pgg_cache *C;
static atomic_int done;

typedef struct tally {
    pthread_t th;
    uint64_t seed;
    bool loop; /* the _loop variants, which never wait for the lock */
    uint64_t stores, hits, misses, wrong, busy;
} tally;

/* A one-column, one-row text result holding `value`. */
static PGresult *make_result(const char *value)
{
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    PGresAttDesc att = {(char *)"v", 0, 0, 0, 25, -1, 0};

    if (!r || !PQsetResultAttrs(r, 1, &att) ||
        !PQsetvalue(r, 0, 0, (char *)value, (int)strlen(value)))
        abort();
    return r;
}

static void key_for(pgg_cache_key *k, int key)
{
    char v[16];
    const char *vals[] = {v};
    pgg_query q = {.sql = "SELECT v FROM t WHERE id = $1", .nparams = 1, .values = vals};

    snprintf(v, sizeof v, "%d", key);
    if (pgg__cache_key(k, "alice", "db", &q) != PGG_OK)
        abort();
}

static void *worker(void *arg)
{
    tally *t = arg;
    char value[64], prefix[16];

    for (int i = 0; i < OPS; i++) {
        uint64_t r = scenario_xorshift(&t->seed);
        int key = (int)(r % KEYS);
        pgg_cache_key k;
        int64_t now = pgg__now_ns(), age;

        key_for(&k, key);
        snprintf(prefix, sizeof prefix, "k%d:", key);
        if ((r >> 8) % 3 == 0) {
            PGresult *res;

            /* padding makes entries big enough for the cap to bite */
            snprintf(value, sizeof value, "k%d:%llu:%032d", key, (unsigned long long)i, 0);
            res = make_result(value);
            if (t->loop)
                pgg__cache_store_loop(C, &k, res, now, 0);
            else
                pgg__cache_store(C, &k, res, now);
            PQclear(res);
            t->stores++;
        } else {
            PGresult *res;

            if (!t->loop) {
                res = pgg__cache_lookup(C, &k, now, INT64_C(60) * PGG_NS_PER_SEC, &age);
            } else {
                /* Busy: asked again, as the loop's call does on its timer. */
                while (pgg__cache_lookup_loop(C, &k, now, INT64_C(60) * PGG_NS_PER_SEC, 0,
                                              &age, NULL, &res) == PGG_CACHE_BUSY) {
                    t->busy++;
                    sched_yield();
                }
            }

            if (!res) {
                t->misses++;
            } else {
                t->hits++;
                if (PQntuples(res) != 1 ||
                    strncmp(PQgetvalue(res, 0, 0), prefix, strlen(prefix)) != 0)
                    t->wrong++;
                PQclear(res);
            }
        }
        pgg__cache_key_done(&k);
    }
    return NULL;
}

/* The stats reader's sections end late (a holder preempted as it
 * leaves): loops meet the lock busy.  The hook is set before any thread
 * starts; only the reader's slow rounds yield in it. */
static _Thread_local bool slow_here;

static void slow_unlock(pgg_cache *c)
{
    (void)c;
    if (!slow_here)
        return;
    sched_yield();
    sched_yield();
}

static void *scraper(void *arg)
{
    (void)arg;
    while (!atomic_load(&done)) {
        pgg_stats s;

        memset(&s, 0, sizeof s);
        pgg__cache_stats(C, &s);
        pgg__cache_note_fallback(C);
        tsan_sleep_ms(1);
        slow_here = true;
        for (int i = 0; i < 50; i++)
            pgg__cache_stats(C, &s);
        slow_here = false;
    }
    return NULL;
}

int main(void)
{
    tally t[THREADS];
    pthread_t sc;
    pgg_stats s;
    uint64_t stores = 0, hits = 0, misses = 0, wrong = 0, busy = 0, queued, later;

    /* entries take about 3.4 KB: about 19 of the 64 keys fit */
    C = pgg__cache_new(64 * 1024, INT64_C(60) * PGG_NS_PER_SEC, NULL);
    if (!C) {
        fprintf(stderr, "cache new failed\n");
        return 1;
    }
    pgg__cache_unlock_hook = slow_unlock;
    pthread_create(&sc, NULL, scraper, NULL);
    for (int i = 0; i < THREADS; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].seed = 0x9E3779B97F4A7C15u * (uint64_t)(i + 3);
        t[i].loop = i % 2 == 1;
        pthread_create(&t[i].th, NULL, worker, &t[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i].th, NULL);
        stores += t[i].stores;
        hits += t[i].hits;
        misses += t[i].misses;
        wrong += t[i].wrong;
        busy += t[i].busy;
    }
    atomic_store(&done, 1);
    pthread_join(sc, NULL);
    /* Before anything takes the lock again: every queued store was
     * applied by a holder or by its pusher's second try. */
    CHECK(pgg__cache_pending_empty(C), "a store was left queued");
    pgg__cache_loop_counts(C, &queued, &later);
    printf("loops: %llu stores queued, %llu lookups asked again\n",
           (unsigned long long)queued, (unsigned long long)later);
    CHECK(later == busy, "cache counted %llu busy lookups, loops saw %llu",
          (unsigned long long)later, (unsigned long long)busy);
    memset(&s, 0, sizeof s);
    pgg__cache_stats(C, &s);
    printf("%llu stores, %llu hits, %llu misses; cache: %llu stores %llu hits %llu misses "
           "%llu evictions, %llu entries, %llu bytes\n",
           (unsigned long long)stores, (unsigned long long)hits, (unsigned long long)misses,
           (unsigned long long)s.cache_stores, (unsigned long long)s.cache_hits,
           (unsigned long long)s.cache_misses, (unsigned long long)s.cache_evictions,
           (unsigned long long)s.cache_entries, (unsigned long long)s.cache_bytes);

    CHECK(wrong == 0, "%llu hits carried another key's answer", (unsigned long long)wrong);
    CHECK(s.cache_hits == hits, "cache counted %llu hits, threads saw %llu",
          (unsigned long long)s.cache_hits, (unsigned long long)hits);
    CHECK(s.cache_misses == misses, "cache counted %llu misses, threads saw %llu",
          (unsigned long long)s.cache_misses, (unsigned long long)misses);
    CHECK(s.cache_stores == stores, "cache counted %llu stores, threads made %llu",
          (unsigned long long)s.cache_stores, (unsigned long long)stores);
    CHECK(s.cache_evictions > 0, "nothing was evicted: the cap never bit");
    CHECK(queued > 0 && later > 0, "the loops never met the lock busy: nothing proved");
    CHECK(hits > 0 && misses > 0, "the workload did not mix hits and misses");
    CHECK(s.cache_bytes <= 64 * 1024, "%llu bytes over the cap", (unsigned long long)s.cache_bytes);
    pgg__cache_free(C);
    return tsan_exit("tsan_cache");
}
