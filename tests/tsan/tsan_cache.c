/*
 * ThreadSanitizer driver: eight threads storing into and reading from one
 * fallback cache whose byte cap holds only part of the keys, so entries are
 * replaced and evicted while other threads copy them out; a ninth reads
 * the stats.  Besides TSan's verdict: every hit is the answer stored under
 * its own key (never another key's, never a freed one), and the counters
 * agree with what the threads did.
 */
#include <pthread.h>
#include <stdatomic.h>
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
    uint64_t stores, hits, misses, wrong;
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
            pgg__cache_store(C, &k, res, now);
            PQclear(res);
            t->stores++;
        } else {
            PGresult *res = pgg__cache_lookup(C, &k, now, INT64_C(60) * PGG_NS_PER_SEC, &age);

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

static void *scraper(void *arg)
{
    (void)arg;
    while (!atomic_load(&done)) {
        pgg_stats s;

        memset(&s, 0, sizeof s);
        pgg__cache_stats(C, &s);
        pgg__cache_note_fallback(C);
        tsan_sleep_ms(1);
    }
    return NULL;
}

int main(void)
{
    tally t[THREADS];
    pthread_t sc;
    pgg_stats s;
    uint64_t stores = 0, hits = 0, misses = 0, wrong = 0;

    /* entries take about 3.4 KB: about 19 of the 64 keys fit */
    C = pgg__cache_new(64 * 1024, INT64_C(60) * PGG_NS_PER_SEC, NULL);
    if (!C) {
        fprintf(stderr, "cache new failed\n");
        return 1;
    }
    pthread_create(&sc, NULL, scraper, NULL);
    for (int i = 0; i < THREADS; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].seed = 0x9E3779B97F4A7C15u * (uint64_t)(i + 3);
        pthread_create(&t[i].th, NULL, worker, &t[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i].th, NULL);
        stores += t[i].stores;
        hits += t[i].hits;
        misses += t[i].misses;
        wrong += t[i].wrong;
    }
    atomic_store(&done, 1);
    pthread_join(sc, NULL);
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
    CHECK(hits > 0 && misses > 0, "the workload did not mix hits and misses");
    CHECK(s.cache_bytes <= 64 * 1024, "%llu bytes over the cap", (unsigned long long)s.cache_bytes);
    pgg__cache_free(C);
    return tsan_exit("tsan_cache");
}
