/*
 * Cached fallbacks and typed calls against a real cluster: with every host
 * stopped, a cacheable read is answered from earlier rows, marked stale.
 */
#include "pgg_config.h"
#include "pool_util.h"

#if PGG_HAVE_LIBPQTYPES
#include "pgguard_types.h"
#endif

#define CACHE_SETTINGS "cache.enabled=true cache.max_age_ms=60000"

static const pgg_call cacheable = {.timeout_ms = 2000, .flags = PGG_CALL_CACHEABLE};

static void setup_rows(pgh_cluster *c)
{
    make_table(c, "pgg_cache_t", "row", 50);
}

static void stop_all(pgh_cluster *c)
{
    cr_assert_eq(pgh_node_stop(pgh_cluster_primary(c), PGH_STOP_IMMEDIATE), 0);
    for (int i = 0; i < pgh_cluster_replica_count(c); i++)
        cr_assert_eq(pgh_node_stop(pgh_cluster_replica(c, i), PGH_STOP_IMMEDIATE), 0);
}

static PGresult *read_id(pgg_pool *p, const pgg_call *call, const char *id, pgg_info *info,
                         pgg_error *e)
{
    const char *vals[] = {id};
    return pgg_exec_params(p, PGG_READ, "SELECT v FROM pgg_cache_t WHERE id = $1", 1, NULL,
                           vals, NULL, NULL, call, info, e);
}

Test(cache, every_host_stopped_serves_earlier_rows_marked_stale)
{
    pgh_cluster *c = cluster_or_die(1);
    pgh_require_local(c, "stopping every server");
    setup_rows(c);
    pgg_pool *p = pool_for(c, CACHE_SETTINGS);
    pgg_info info;
    pgg_error e;

    PGresult *r = read_id(p, &cacheable, "7", &info, &e);
    cr_assert_not_null(r, "%s", e.message);
    cr_expect_eq(info.from_cache, 0);
    PQclear(r);
    /* A read the caller did not mark cacheable is never stored. */
    PQclear(read_id(p, NULL, "8", &info, &e));

    stop_all(c);
    sleep_ms(50);
    r = read_id(p, &cacheable, "7", &info, &e);
    cr_assert_not_null(r, "no fallback: %s %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), "row7");
    cr_expect_eq(info.from_cache, 1, "a stale answer must say so");
    cr_expect_geq(info.cache_age_ms, 50);
    cr_expect_neq(info.cause.code, PGG_OK, "the live read's failure is reported");
    cr_expect(info.cause.code == PGG_ECONNECT || info.cause.code == PGG_EOPEN ||
                  info.cause.code == PGG_ETIMEDOUT,
              "cause %s", pgg_err_name(info.cause.code));
    cr_expect_eq(e.code, PGG_OK);
    PQclear(r);

    /* Not marked cacheable: fails like any read with no host. */
    r = read_id(p, NULL, "7", &info, &e);
    cr_expect_null(r);
    cr_expect_neq(e.code, PGG_OK);
    cr_expect_eq(info.from_cache, 0);
    /* Cacheable, but never stored. */
    r = read_id(p, &cacheable, "8", &info, &e);
    cr_expect_null(r);
    cr_expect_neq(e.code, PGG_OK);

    pgg_stats s;
    pgg_pool_stats(p, &s);
    cr_expect_eq(s.cache_stores, 1);
    cr_expect_eq(s.cache_fallbacks, 1);
    cr_expect_eq(s.cache_hits, 1);
    cr_expect_geq(s.cache_misses, 1);
    cr_expect_eq(s.cache_entries, 1);
    cr_expect_gt(s.cache_bytes, 0);
    end_test(p, c);
}

Test(cache, past_the_maximum_age_it_fails_with_the_host_error)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "stopping the server");
    setup_rows(c);
    pgg_pool *p = pool_for(c, "cache.enabled=true cache.max_age_ms=300");
    pgg_info info;
    pgg_error e;

    PQclear(read_id(p, &cacheable, "3", &info, &e));
    stop_all(c);
    /* Within a caller's own bound... */
    pgg_call strict = cacheable;
    strict.max_stale_ms = 1;
    sleep_ms(20);
    PGresult *r = read_id(p, &strict, "3", &info, &e);
    cr_expect_null(r, "served an answer older than the caller accepts");
    /* ...and past the pool's maximum age. */
    sleep_ms(400);
    r = read_id(p, &cacheable, "3", &info, &e);
    cr_expect_null(r, "served an answer past cache.max_age_ms");
    cr_expect(e.code == PGG_ECONNECT || e.code == PGG_EOPEN || e.code == PGG_ENOPRIMARY,
              "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(info.from_cache, 0);
    PQclear(r);
    end_test(p, c);
}

Test(cache, user_errors_and_writes_never_come_from_the_cache)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "stopping the server");
    setup_rows(c);
    pgg_pool *p = pool_for(c, CACHE_SETTINGS);
    pgg_info info;
    pgg_error e;

    /* A user error is an answer: it is neither stored nor replaced. */
    PGresult *r = pgg_exec(p, PGG_READ, "SELECT nope FROM pgg_cache_t", &cacheable, &info, &e);
    cr_assert_not_null(r);
    cr_expect_eq(e.code, PGG_ESERVER);
    cr_expect_eq(info.from_cache, 0);
    PQclear(r);
    /* A write is never stored, nor answered from the cache. */
    r = pgg_exec(p, PGG_WRITE, "SELECT v FROM pgg_cache_t WHERE id = 1", &cacheable, &info, &e);
    cr_assert_not_null(r);
    PQclear(r);
    pgg_stats s;
    pgg_pool_stats(p, &s);
    cr_expect_eq(s.cache_stores, 0);

    /* Same text as a read: stored; then the write with the same text
     * still fails once the server is gone. */
    PQclear(pgg_exec(p, PGG_READ, "SELECT v FROM pgg_cache_t WHERE id = 1", &cacheable, &info, &e));
    stop_all(c);
    r = pgg_exec(p, PGG_WRITE, "SELECT v FROM pgg_cache_t WHERE id = 1", &cacheable, &info, &e);
    cr_expect_null(r, "a write answered from the cache");
    cr_expect_eq(info.from_cache, 0);
    r = pgg_exec(p, PGG_READ, "SELECT v FROM pgg_cache_t WHERE id = 1", &cacheable, &info, &e);
    cr_expect_not_null(r);
    cr_expect_eq(info.from_cache, 1);
    PQclear(r);
    end_test(p, c);
}

Test(cache, one_users_rows_are_not_served_to_another)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "stopping the server");
    setup_rows(c);
    pgh_node *prim = pgh_cluster_primary(c);
    cr_assert_eq(pgh_node_exec(prim, "DROP ROLE IF EXISTS pgg_user_b;"
                                     "CREATE ROLE pgg_user_b LOGIN;"
                                     "GRANT SELECT ON pgg_cache_t TO pgg_user_b;"),
                 0, "%s", pgh_node_error(prim));
    char ci_a[256], ci_b[256];
    snprintf(ci_a, sizeof ci_a, "host=127.0.0.1 port=%d user=postgres dbname=postgres",
             pgh_node_port(prim));
    snprintf(ci_b, sizeof ci_b, "host=127.0.0.1 port=%d user=pgg_user_b dbname=postgres",
             pgh_node_port(prim));
    pgg_pool *a = pool_for_conninfo(ci_a, CACHE_SETTINGS);
    pgg_pool *b = pool_for_conninfo(ci_b, CACHE_SETTINGS);
    pgg_info info;
    pgg_error e;

    PQclear(read_id(a, &cacheable, "5", &info, &e));
    cr_expect_eq(e.code, PGG_OK, "%s", e.message);
    stop_all(c);
    PGresult *r = read_id(b, &cacheable, "5", &info, &e);
    cr_expect_null(r, "user B was served user A's cached rows");
    r = read_id(a, &cacheable, "5", &info, &e);
    cr_expect_not_null(r, "user A's own rows: %s", e.message);
    PQclear(r);
    assert_balanced(a);
    pgg_pool_free(a);
    end_test(b, c);
}

Test(cache, the_byte_cap_evicts_least_recently_used_entries)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "stopping the server");
    setup_rows(c);
    /* Each answer below is one ~10 kB row: a 32 kB cap holds two. */
    pgg_pool *p = pool_for(c, "cache.enabled=true cache.max_bytes=32768");
    pgg_info info;
    pgg_error e;
    const char *sql = "SELECT repeat(v, 2500) FROM pgg_cache_t WHERE id = $1";
    const char *one[] = {"1"}, *two[] = {"2"}, *three[] = {"3"};

    PQclear(pgg_exec_params(p, PGG_READ, sql, 1, NULL, one, NULL, NULL, &cacheable, &info, &e));
    PQclear(pgg_exec_params(p, PGG_READ, sql, 1, NULL, two, NULL, NULL, &cacheable, &info, &e));
    /* Touch "1" by storing it again: now "2" is the least recently used. */
    PQclear(pgg_exec_params(p, PGG_READ, sql, 1, NULL, one, NULL, NULL, &cacheable, &info, &e));
    pgg_stats s;
    pgg_pool_stats(p, &s);
    cr_expect_eq(s.cache_evictions, 0);
    PQclear(pgg_exec_params(p, PGG_READ, sql, 1, NULL, three, NULL, NULL, &cacheable, &info, &e));
    pgg_pool_stats(p, &s);
    cr_expect_geq(s.cache_evictions, 1, "nothing evicted at %llu bytes",
                  (unsigned long long)s.cache_bytes);
    cr_expect_leq(s.cache_bytes, 32768);

    stop_all(c);
    PGresult *r = pgg_exec_params(p, PGG_READ, sql, 1, NULL, two, NULL, NULL, &cacheable, &info, &e);
    cr_expect_null(r, "the least recently used entry survived");
    r = pgg_exec_params(p, PGG_READ, sql, 1, NULL, three, NULL, NULL, &cacheable, &info, &e);
    cr_expect_not_null(r, "the newest entry was evicted");
    cr_expect_eq(info.from_cache, 1);
    PQclear(r);
    end_test(p, c);
}

#if PGG_HAVE_LIBPQTYPES

Test(cache, pqgetf_works_on_a_fallback_after_its_connection_closed)
{
    pgh_cluster *c = cluster_or_die(0);
    pgh_require_local(c, "stopping the server");
    setup_rows(c);
    pgg_pool *p = pool_for(c, CACHE_SETTINGS);
    pgg_info info;
    pgg_error e;

    PGresult *r = pgg_execf(p, PGG_READ, &cacheable, &info, &e,
                            "SELECT id, v FROM pgg_cache_t WHERE id = %int4", 11);
    cr_assert_not_null(r, "%s", e.message);
    PQclear(r);
    stop_all(c);
    /* The pool drops the dead connections; the copy must not need them. */
    r = pgg_execf(p, PGG_READ, &cacheable, &info, &e,
                  "SELECT id, v FROM pgg_cache_t WHERE id = %int4", 11);
    cr_assert_not_null(r, "no fallback: %s", e.message);
    cr_expect_eq(info.from_cache, 1);
    PGint4 id = 0;
    PGtext v = NULL;
    cr_assert(PQgetf(r, 0, "%int4 %text", 0, &id, 1, &v), "PQgetf: %s", PQgeterror());
    cr_expect_eq(id, 11);
    cr_expect_str_eq(v, "row11");
    PQclear(r);
    /* Another argument is another key. */
    r = pgg_execf(p, PGG_READ, &cacheable, &info, &e,
                  "SELECT id, v FROM pgg_cache_t WHERE id = %int4", 12);
    cr_expect_null(r);
    end_test(p, c);
}

Test(types, typed_call_round_trips)
{
    pgh_cluster *c = cluster_or_die(1);
    pgg_pool *p = pool_for(c, NULL);
    pgg_info info;
    pgg_error e;

    PGbytea blob = {5, (char *)"\x00\x01\x02\xff\x7f"};
    PGtimestamp ts = {0};
    ts.date.year = 2026;
    ts.date.mon = 10; /* 0-based: November */
    ts.date.mday = 23;
    ts.time.hour = 3;
    ts.time.min = 36;
    ts.time.sec = 7;
    ts.time.usec = 123456;
    ts.time.gmtoff = 0;
    ts.time.withtz = 1;
    PGparam *arr_param = pgg_pool_param(p, 2000, &e);
    cr_assert_not_null(arr_param, "%s", e.message);
    for (int i = 1; i <= 3; i++)
        cr_assert(PQputf(arr_param, "%int4", i * 10), "%s", PQgeterror());
    PGarray arr = {0};
    arr.ndims = 0; /* one dimension, as many items as put */
    arr.param = arr_param;

    PGresult *r = pgg_execf(p, PGG_READ, NULL, &info, &e,
                            "SELECT %int4, %int8, %text, %timestamptz, %numeric, %bytea, %int4[]",
                            (PGint4)-42, (PGint8)9000000000LL, "héllo", &ts, "12345.678901",
                            &blob, &arr);
    PQparamClear(arr_param);
    cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));

    PGint4 i4;
    PGint8 i8;
    PGtext t;
    PGtimestamp ts2;
    PGnumeric num;
    PGbytea b2;
    PGarray a2;
    cr_assert(PQgetf(r, 0, "%int4 %int8 %text %timestamptz %numeric %bytea %int4[]", 0, &i4, 1,
                     &i8, 2, &t, 3, &ts2, 4, &num, 5, &b2, 6, &a2),
              "PQgetf: %s", PQgeterror());
    cr_expect_eq(i4, -42);
    cr_expect_eq(i8, 9000000000LL);
    cr_expect_str_eq(t, "héllo");
    cr_expect_eq(ts2.epoch, ts.epoch ? ts.epoch : ts2.epoch);
    cr_expect_eq(ts2.date.year, 2026);
    cr_expect_eq(ts2.time.usec, 123456);
    cr_expect_str_eq(num, "12345.678901");
    cr_expect_eq(b2.len, 5);
    cr_expect_eq(memcmp(b2.data, blob.data, 5), 0);
    cr_expect_eq(PQntuples(a2.res), 3);
    for (int i = 0; i < 3; i++) {
        PGint4 item;
        cr_assert(PQgetf(a2.res, i, "%int4", 0, &item));
        cr_expect_eq(item, (i + 1) * 10);
    }
    PQclear(a2.res);
    PQclear(r);

    /* A bad specifier is the caller's error, with libpqtypes' words. */
    r = pgg_execf(p, PGG_READ, NULL, &info, &e, "SELECT %nosuchtype", 1);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_ETYPES);
    cr_expect(strlen(e.message) > 0);
    end_test(p, c);
}

Test(types, a_type_the_server_lacks_is_refused_at_registration)
{
    pgh_cluster *c = cluster_or_die(0);
    pgg_pool *p = pool_for(c, "read_your_writes=pool");
    pgg_error e;
    pgg_info info;

    /* Created through the pool, not behind its back: with
     * read_your_writes=pool, the registration and the typed read below
     * find the type on whichever host serves them, a replica that has not
     * replayed it yet included (external mode, a fresh database). */
    PGresult *created = pgg_exec(p, PGG_WRITE,
                                 "SET client_min_messages = warning;"
                                 "DROP TYPE IF EXISTS pgg_pair;"
                                 "CREATE TYPE pgg_pair AS (a int4, b text);",
                                 NULL, &info, &e);
    cr_assert_not_null(created, "%s", e.message);
    cr_assert_eq(PQresultStatus(created), PGRES_COMMAND_OK, "%s", e.message);
    cr_assert_neq(info.lsn, 0, "the write's position is what the reads wait for");
    PQclear(created);

    PGregisterType missing[] = {{"no_such_composite", NULL, NULL}};
    cr_expect_eq(pgg_pool_register_types(p, PQT_COMPOSITE, missing, 1, &e), PGG_ETYPES,
                 "%s: %s", pgg_err_name(e.code), e.message);
    /* Nothing else suffers from it. */
    for (int i = 0; i < 5; i++) {
        PGresult *r = pgg_exec(p, PGG_READ, "SELECT 1", NULL, &info, &e);
        cr_expect_not_null(r, "after a refused registration: %s", e.message);
        PQclear(r);
    }
    uint64_t connects = host_stats(p, 0).connects;

    PGregisterType pair[] = {{"pgg_pair", NULL, NULL}};
    cr_assert_eq(pgg_pool_register_types(p, PQT_COMPOSITE, pair, 1, &e), PGG_OK, "%s", e.message);
    PGresult *r = pgg_execf(p, PGG_READ, NULL, &info, &e, "SELECT ROW(%int4, %text)::pgg_pair", 7, "x");
    cr_assert_not_null(r, "%s", e.message);
    PGresult *fields = NULL;
    cr_assert(PQgetf(r, 0, "%pgg_pair", 0, &fields), "PQgetf: %s", PQgeterror());
    PGint4 a;
    PGtext b;
    cr_assert(PQgetf(fields, 0, "%int4 %text", 0, &a, 1, &b), "%s", PQgeterror());
    cr_expect_eq(a, 7);
    cr_expect_str_eq(b, "x");
    PQclear(fields);
    PQclear(r);
    cr_expect_leq(host_stats(p, 0).connects, connects + 1, "a connection per call?");
    end_test(p, c);
}

#endif
