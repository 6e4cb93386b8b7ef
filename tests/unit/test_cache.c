/* The fallback cache without a server: keys, LRU order, the byte cap and
 * the age limits, on results built with libpq's own constructors. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "cache.h"

#define MS INT64_C(1000000)

/* A one-column, one-row text result holding `value`. */
static PGresult *make_result(const char *value)
{
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    PGresAttDesc att = {(char *)"v", 0, 0, 0, 25, -1, 0};
    cr_assert(PQsetResultAttrs(r, 1, &att));
    cr_assert(PQsetvalue(r, 0, 0, (char *)value, (int)strlen(value)));
    return r;
}

static void key_for(pgg_cache_key *k, const char *user, const char *sql, int n,
                    const char *const *vals)
{
    pgg_query q = {.sql = sql, .nparams = n, .values = vals};
    cr_assert_eq(pgg__cache_key(k, user, "db", &q), PGG_OK);
}

static bool same_key(const pgg_cache_key *a, const pgg_cache_key *b)
{
    return a->len == b->len && memcmp(a->bytes, b->bytes, a->len) == 0;
}

Test(cache_key, covers_user_database_sql_params_and_format)
{
    pgg_cache_key a, b;
    const char *v1[] = {"1"}, *v2[] = {"2"}, *vnull[] = {NULL}, *vempty[] = {""};

    key_for(&a, "alice", "SELECT $1", 1, v1);
    key_for(&b, "alice", "SELECT $1", 1, v1);
    cr_expect(same_key(&a, &b));
    cr_expect_eq(a.hash, b.hash);
    pgg__cache_key_done(&b);

    key_for(&b, "bob", "SELECT $1", 1, v1);
    cr_expect_not(same_key(&a, &b), "user is part of the key");
    pgg__cache_key_done(&b);
    key_for(&b, "alice", "SELECT $1 ", 1, v1);
    cr_expect_not(same_key(&a, &b), "SQL text is part of the key");
    pgg__cache_key_done(&b);
    key_for(&b, "alice", "SELECT $1", 1, v2);
    cr_expect_not(same_key(&a, &b), "parameter values are part of the key");
    pgg__cache_key_done(&b);
    key_for(&b, "alice", "SELECT $1", 1, vnull);
    pgg_cache_key c;
    key_for(&c, "alice", "SELECT $1", 1, vempty);
    cr_expect_not(same_key(&b, &c), "NULL differs from the empty string");
    pgg__cache_key_done(&b);
    pgg__cache_key_done(&c);

    pgg_query q = {.sql = "SELECT $1", .nparams = 1, .values = v1, .result_format = 1};
    cr_assert_eq(pgg__cache_key(&b, "alice", "db", &q), PGG_OK);
    cr_expect_not(same_key(&a, &b), "result format is part of the key");
    pgg__cache_key_done(&b);
    Oid t23 = 23, t20 = 20;
    pgg_query q23 = {.sql = "SELECT $1", .nparams = 1, .types = &t23, .values = v1};
    pgg_query q20 = {.sql = "SELECT $1", .nparams = 1, .types = &t20, .values = v1};
    cr_assert_eq(pgg__cache_key(&b, "alice", "db", &q23), PGG_OK);
    cr_assert_eq(pgg__cache_key(&c, "alice", "db", &q20), PGG_OK);
    cr_expect_not(same_key(&b, &c), "parameter types are part of the key");
    pgg__cache_key_done(&b);
    pgg__cache_key_done(&c);
    q = (pgg_query){.sql = "SELECT $1", .nparams = 1, .values = v1};
    cr_assert_eq(pgg__cache_key(&b, "alice", "other", &q), PGG_OK);
    cr_expect_not(same_key(&a, &b), "database is part of the key");
    pgg__cache_key_done(&b);
    /* Field boundaries cannot be shifted: ("ab","c") != ("a","bc"). */
    q = (pgg_query){.sql = "c"};
    cr_assert_eq(pgg__cache_key(&b, "ab", "db", &q), PGG_OK);
    q.sql = "bc";
    cr_assert_eq(pgg__cache_key(&c, "a", "db", &q), PGG_OK);
    cr_expect_not(same_key(&b, &c));
    pgg__cache_key_done(&b);
    pgg__cache_key_done(&c);
    pgg__cache_key_done(&a);
}

Test(cache_key, binary_parameters_use_their_length)
{
    const char bin1[] = {'a', 0, 'b'}, bin2[] = {'a', 0, 'c'};
    const char *v1[] = {bin1}, *v2[] = {bin2};
    int len[] = {3}, fmt[] = {1};
    pgg_query q1 = {.sql = "SELECT $1", .nparams = 1, .values = v1, .lengths = len, .formats = fmt};
    pgg_query q2 = {.sql = "SELECT $1", .nparams = 1, .values = v2, .lengths = len, .formats = fmt};
    pgg_cache_key a, b;

    cr_assert_eq(pgg__cache_key(&a, "u", "d", &q1), PGG_OK);
    cr_assert_eq(pgg__cache_key(&b, "u", "d", &q2), PGG_OK);
    cr_expect_not(same_key(&a, &b), "bytes after a NUL count in binary values");
    pgg__cache_key_done(&a);
    pgg__cache_key_done(&b);
}

Test(cache_key, any_nonzero_format_is_binary)
{
    /* No NUL terminator: a strlen() would read past the value. */
    const char bin1[] = {'a', 0, 'b'}, bin2[] = {'a', 0, 'c'};
    const char *v1[] = {bin1}, *v2[] = {bin2};
    int len[] = {3}, fmt[] = {2};
    pgg_query q1 = {.sql = "SELECT $1", .nparams = 1, .values = v1, .lengths = len, .formats = fmt};
    pgg_query q2 = {.sql = "SELECT $1", .nparams = 1, .values = v2, .lengths = len, .formats = fmt};
    pgg_cache_key a, b;

    cr_assert_eq(pgg__cache_key(&a, "u", "d", &q1), PGG_OK);
    cr_assert_eq(pgg__cache_key(&b, "u", "d", &q2), PGG_OK);
    cr_expect_not(same_key(&a, &b), "format 2 is binary to libpq: its length counts");
    pgg__cache_key_done(&a);
    pgg__cache_key_done(&b);
}

Test(cache_key, long_keys_go_to_the_heap)
{
    char sql[4096];
    pgg_cache_key a;

    memset(sql, 'x', sizeof sql - 1);
    sql[sizeof sql - 1] = 0;
    pgg_query q = {.sql = sql};
    cr_assert_eq(pgg__cache_key(&a, "u", "d", &q), PGG_OK);
    cr_expect_gt(a.len, sizeof a.inline_);
    cr_expect_neq((void *)a.bytes, (void *)a.inline_);
    pgg__cache_key_done(&a);
}

static void store(pgg_cache *c, const char *sql, const char *value, int64_t now)
{
    pgg_cache_key k;
    PGresult *r = make_result(value);
    key_for(&k, "u", sql, 0, NULL);
    pgg__cache_store(c, &k, r, now);
    pgg__cache_key_done(&k);
    PQclear(r);
}

static PGresult *lookup(pgg_cache *c, const char *sql, int64_t now, int64_t max_age)
{
    pgg_cache_key k;
    int64_t age;
    key_for(&k, "u", sql, 0, NULL);
    PGresult *r = pgg__cache_lookup(c, &k, now, max_age, &age);
    pgg__cache_key_done(&k);
    return r;
}

static size_t entry_size(const char *value)
{
    pgg_cache *c = pgg__cache_new(1 << 30, 1000 * MS, NULL);
    pgg_stats s = {0};
    store(c, "q", value, 0);
    pgg__cache_stats(c, &s);
    pgg__cache_free(c);
    return (size_t)s.cache_bytes;
}

Test(cache, lru_order_under_the_byte_cap)
{
    char big[3000];
    memset(big, 'v', sizeof big - 1);
    big[sizeof big - 1] = 0;
    size_t one = entry_size(big);
    /* Room for three entries, not four. */
    pgg_cache *c = pgg__cache_new((int64_t)(one * 3 + one / 2), 1000 * MS, NULL);
    pgg_stats s = {0};

    store(c, "a", big, 1);
    store(c, "b", big, 2);
    store(c, "c", big, 3);
    PQclear(lookup(c, "a", 4, 0)); /* a is now the most recent: b is the oldest */
    store(c, "d", big, 5);
    pgg__cache_stats(c, &s);
    cr_expect_eq(s.cache_evictions, 1);
    cr_expect_eq(s.cache_entries, 3);
    cr_expect_leq(s.cache_bytes, one * 3 + one / 2);

    PGresult *r = lookup(c, "b", 6, 0);
    cr_expect_null(r, "the least recently used entry was kept");
    r = lookup(c, "a", 6, 0);
    cr_expect_not_null(r);
    PQclear(r);
    r = lookup(c, "c", 6, 0);
    cr_expect_not_null(r);
    PQclear(r);
    store(c, "e", big, 7); /* d is now the oldest */
    cr_expect_null(lookup(c, "d", 8, 0));
    pgg__cache_free(c);
}

Test(cache, replacing_an_entry_keeps_one_copy)
{
    pgg_cache *c = pgg__cache_new(1 << 20, 1000 * MS, NULL);
    pgg_stats s = {0};

    store(c, "q", "old", 1);
    store(c, "q", "new", 2);
    pgg__cache_stats(c, &s);
    cr_expect_eq(s.cache_entries, 1);
    cr_expect_eq(s.cache_stores, 2);
    PGresult *r = lookup(c, "q", 3, 0);
    cr_assert_not_null(r);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "new");
    PQclear(r);
    pgg__cache_free(c);
}

Test(cache, ages_limit_what_is_served)
{
    pgg_cache *c = pgg__cache_new(1 << 20, 100 * MS, NULL);
    pgg_stats s = {0};
    pgg_cache_key k;
    int64_t age = -1;

    store(c, "q", "x", 0);
    key_for(&k, "u", "q", 0, NULL);
    PGresult *r = pgg__cache_lookup(c, &k, 40 * MS, 0, &age);
    cr_assert_not_null(r);
    cr_expect_eq(age, 40 * MS);
    PQclear(r);
    cr_expect_null(pgg__cache_lookup(c, &k, 40 * MS, 10 * MS, &age),
                   "older than the caller's bound");
    r = pgg__cache_lookup(c, &k, 100 * MS, 0, &age);
    cr_expect_not_null(r, "exactly the maximum age is still served");
    PQclear(r);
    cr_expect_null(pgg__cache_lookup(c, &k, 100 * MS + 1, 0, &age), "past the maximum age");
    pgg__cache_stats(c, &s);
    cr_expect_eq(s.cache_entries, 0, "an expired entry is dropped when met");
    cr_expect_eq(s.cache_bytes, 0);
    /* A caller cannot stretch the pool's limit. */
    store(c, "q", "x", 200 * MS);
    cr_expect_null(pgg__cache_lookup(c, &k, 400 * MS, 1000 * MS, &age));
    pgg__cache_key_done(&k);
    pgg__cache_free(c);
}

Test(cache, copies_outlive_the_cache_and_too_big_is_not_stored)
{
    pgg_cache *c = pgg__cache_new(8192, 1000 * MS, NULL);
    char big[16384];
    pgg_stats s = {0};

    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = 0;
    store(c, "big", big, 1);
    pgg__cache_stats(c, &s);
    cr_expect_eq(s.cache_entries, 0);
    store(c, "small", "s", 1);
    PGresult *r = lookup(c, "small", 2, 0);
    pgg__cache_free(c);
    cr_assert_not_null(r);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "s");
    PQclear(r);
}

Test(cache, bad_arguments)
{
    pgg_error e;
    cr_expect_null(pgg__cache_new(0, 1, &e));
    cr_expect_eq(e.code, PGG_EINVAL);
    cr_expect_null(pgg__cache_new(1, 0, &e));
    pgg__cache_free(NULL);
    pgg_stats s = {0};
    pgg__cache_stats(NULL, &s);
    cr_expect_eq(s.cache_entries, 0);
}

/* Read your writes: an entry keeps the position its data includes, and a
 * lookup that needs a later one misses without losing the entry. */
Test(cache, a_position_older_than_asked_is_a_miss)
{
    pgg_cache *c = pgg__cache_new(1 << 20, 1000 * MS, NULL);
    pgg_cache_key k;
    PGresult *r = make_result("at-100");
    uint64_t lsn = 0;
    int64_t age = 0;

    key_for(&k, "u", "q", 0, NULL);
    pgg__cache_store_at(c, &k, r, 1, 100);
    PQclear(r);
    r = pgg__cache_lookup_at(c, &k, 2, 0, 150, &age, &lsn);
    cr_expect_null(r, "an answer at 100 served to a read that needs 150");
    r = pgg__cache_lookup_at(c, &k, 3, 0, 100, &age, &lsn);
    cr_assert_not_null(r, "the entry is kept for reads it is good for");
    cr_expect_eq(lsn, 100);
    cr_expect_eq(age, 2);
    PQclear(r);
    /* The old entry points know no position: good only for reads that
     * need none. */
    store(c, "q", "unknown", 4);
    r = pgg__cache_lookup_at(c, &k, 5, 0, 1, &age, &lsn);
    cr_expect_null(r);
    r = pgg__cache_lookup_at(c, &k, 5, 0, 0, &age, &lsn);
    cr_expect_not_null(r);
    cr_expect_eq(lsn, 0);
    PQclear(r);
    pgg__cache_key_done(&k);
    pgg__cache_free(c);
}

/*
 * A cache of many entries grows its table a few buckets per store or
 * lookup, not all at once under its lock (where every cacheable read of
 * every thread, an event loop's too, waited for a whole rehash: ~16k
 * entries moved at once here, ~100k at the default 64 MB), and finds
 * every entry throughout: in the old table before its bucket moved, in
 * the new one after, replaced entries once.
 */
Test(cache, the_table_grows_a_few_entries_at_a_time_and_finds_every_entry)
{
    enum { N = 20000 };
    pgg_cache *c = pgg__cache_new(INT64_C(1) << 40, 1000 * MS, NULL);
    pgg_stats s = {0};
    char sql[32];
    int missing = 0;

    for (int i = 0; i < N; i++) {
        snprintf(sql, sizeof sql, "q%d", i);
        store(c, sql, "v", 1);
        /* Every tenth stored again: one copy, found in either table. */
        if (i % 10 == 0) {
            snprintf(sql, sizeof sql, "q%d", i / 2);
            store(c, sql, "w", 1);
        }
        /* Looked up while a growth is under way. */
        snprintf(sql, sizeof sql, "q%d", i / 3);
        PGresult *r = lookup(c, sql, 2, 0);
        missing += r == NULL;
        PQclear(r);
    }
    cr_expect_eq(missing, 0, "%d lookups missed a stored entry", missing);
    for (int i = 0; i < N; i++) {
        snprintf(sql, sizeof sql, "q%d", i);
        PGresult *r = lookup(c, sql, 2, 0);
        missing += r == NULL;
        PQclear(r);
    }
    cr_expect_eq(missing, 0, "%d of %d entries not found", missing, N);
    pgg__cache_stats(c, &s);
    cr_expect_eq(s.cache_entries, N);
    cr_expect_leq(pgg__cache_most_moved(c), 64,
                  "one store or lookup moved %zu entries to the grown table",
                  pgg__cache_most_moved(c));
    pgg__cache_free(c);
}

/* ------------------------------------------------- an event loop's thread
 * (cache.c, "Loops").  The test thread holds the lock itself where another
 * thread would be preempted inside it: a trylock by the owner of a
 * (non-recursive) mutex fails as it would for anyone else, and a loop
 * variant that waited for it would deadlock the test rather than pass. */

static pgg_cache *loop_cache;
static pgg_cache_key loop_key;

/* A loop's store made while the test thread is inside a real section
 * (the stats), just before it unlocks. */
static void store_as_a_loop(pgg_cache *c)
{
    PGresult *r = make_result("queued-in-a-section");

    pgg__cache_unlock_hook = NULL;
    pgg__cache_store_loop(c, &loop_key, r, 2, 0);
    PQclear(r);
    cr_expect_not(pgg__cache_pending_empty(c), "the store was not queued");
}

Test(cache, a_loops_store_and_lookup_never_wait_for_the_lock)
{
    pgg_cache *c = pgg__cache_new(1 << 20, 1000 * MS, NULL);
    pgg_cache_key k;
    PGresult *r = make_result("v1"), *out = NULL;
    uint64_t queued, later, lsn = 0;
    int64_t age = 0;
    pgg_stats s = {0};

    key_for(&k, "u", "q", 0, NULL);
    pthread_mutex_lock(pgg__cache_mutex(c));
    /* Queued, never skipped, never waited for. */
    pgg__cache_store_loop(c, &k, r, 1, 7);
    PQclear(r);
    cr_expect_not(pgg__cache_pending_empty(c));
    /* A lookup says busy: nothing looked at, no miss counted. */
    cr_expect_eq(pgg__cache_lookup_loop(c, &k, 2, 0, 0, &age, &lsn, &out), PGG_CACHE_BUSY);
    cr_expect_null(out);
    pgg__cache_loop_counts(c, &queued, &later);
    cr_expect_eq(queued, 1);
    cr_expect_eq(later, 1);
    pthread_mutex_unlock(pgg__cache_mutex(c));

    /* The next holder (this lookup) applies the queued store first. */
    cr_expect_eq(pgg__cache_lookup_loop(c, &k, 3, 0, 7, &age, &lsn, &out), PGG_CACHE_HIT);
    cr_assert_not_null(out);
    cr_expect_str_eq(PQgetvalue(out, 0, 0), "v1");
    cr_expect_eq(age, 2);
    cr_expect_eq(lsn, 7);
    PQclear(out);
    cr_expect(pgg__cache_pending_empty(c));
    cr_expect_eq(pgg__cache_lookup_loop(c, &k, 3, 0, 8, &age, &lsn, &out), PGG_CACHE_MISS,
                 "a position older than asked is a miss on a loop too");
    pgg__cache_stats(c, &s);
    cr_expect_eq(s.cache_stores, 1);
    cr_expect_eq(s.cache_hits, 1);
    cr_expect_eq(s.cache_misses, 1);
    pgg__cache_key_done(&k);
    pgg__cache_free(c);
}

Test(cache, a_store_queued_in_a_holders_section_is_applied_before_it_unlocks)
{
    pgg_stats s = {0};
    PGresult *r;

    loop_cache = pgg__cache_new(1 << 20, 1000 * MS, NULL);
    key_for(&loop_key, "u", "q", 0, NULL);
    pgg__cache_unlock_hook = store_as_a_loop;
    pgg__cache_stats(loop_cache, &s); /* a section: the hook stores inside it */
    cr_expect_null(pgg__cache_unlock_hook, "the hook did not run");
    /* Applied by that holder as it left, before anything else locked. */
    cr_expect(pgg__cache_pending_empty(loop_cache), "the holder left the store queued");
    r = lookup(loop_cache, "q", 3, 0);
    cr_assert_not_null(r);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "queued-in-a-section");
    PQclear(r);
    pgg__cache_key_done(&loop_key);
    pgg__cache_free(loop_cache);
}

/* Two stores of one key queued: the later one stays (applied oldest
 * first). */
Test(cache, queued_stores_keep_their_order)
{
    pgg_cache *c = pgg__cache_new(1 << 20, 1000 * MS, NULL);
    pgg_cache_key k;
    PGresult *r;

    key_for(&k, "u", "q", 0, NULL);
    pthread_mutex_lock(pgg__cache_mutex(c));
    r = make_result("older");
    pgg__cache_store_loop(c, &k, r, 1, 0);
    PQclear(r);
    r = make_result("newer");
    pgg__cache_store_loop(c, &k, r, 2, 0);
    PQclear(r);
    pthread_mutex_unlock(pgg__cache_mutex(c));
    r = lookup(c, "q", 3, 0);
    cr_assert_not_null(r);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "newer");
    PQclear(r);
    pgg__cache_key_done(&k);
    pgg__cache_free(c);
}
