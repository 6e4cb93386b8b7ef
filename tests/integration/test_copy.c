/*
 * COPY through the guard against a real server: bounded COPY FROM STDIN
 * and TO STDOUT on a lease, and a one-shot COPY refused clearly instead of
 * returning a PGRES_COPY_IN result nobody can use.
 */
#include <stdlib.h>
#include <string.h>

#include "pool_util.h"

#define ROWS 2000

typedef struct source {
    char *text;
    size_t len, off;
    size_t step;     /* bytes per call, to cross chunk boundaries */
    int fail_after;  /* calls before returning -1; 0: never */
    int sleep_ms;    /* per call */
    int calls;
} source;

static long read_source(void *ud, char *buf, size_t cap)
{
    source *s = ud;
    s->calls++;
    if (s->sleep_ms)
        sleep_ms(s->sleep_ms);
    if (s->fail_after && s->calls > s->fail_after)
        return -1;
    size_t n = s->len - s->off;
    if (n > s->step)
        n = s->step;
    if (n > cap)
        n = cap;
    memcpy(buf, s->text + s->off, n);
    s->off += n;
    return (long)n;
}

typedef struct sink {
    char *text;
    size_t len, cap;
    int rows;
    int stop_after; /* rows before returning non-zero; 0: never */
} sink;

static int write_sink(void *ud, const char *data, size_t len)
{
    sink *s = ud;
    if (s->len + len + 1 > s->cap) {
        s->cap = (s->len + len + 1) * 2;
        s->text = realloc(s->text, s->cap);
        cr_assert_not_null(s->text);
    }
    memcpy(s->text + s->len, data, len);
    s->len += len;
    s->text[s->len] = '\0';
    s->rows++;
    return s->stop_after && s->rows >= s->stop_after ? 7 : 0;
}

/* ROWS lines "id\trow id", ids from first on. */
static char *make_rows_from(int first, size_t *len)
{
    size_t cap = ROWS * 40;
    char *t = malloc(cap);
    cr_assert_not_null(t);
    size_t n = 0;
    for (int i = first; i < first + ROWS; i++)
        n += (size_t)snprintf(t + n, cap - n, "%d\trow %d\n", i, i);
    *len = n;
    return t;
}

static char *make_rows(size_t *len)
{
    return make_rows_from(1, len);
}

static pgh_cluster *copy_cluster(void)
{
    pgh_cluster *c = cluster_or_die(0);
    cr_assert_eq(pgh_node_exec(pgh_cluster_primary(c),
                               "DROP TABLE IF EXISTS pgg_copy_t;"
                               "CREATE TABLE pgg_copy_t (id int PRIMARY KEY, v text)"),
                 0, "%s", pgh_node_error(pgh_cluster_primary(c)));
    return c;
}

static void expect_count(pgg_lease *l, const char *want)
{
    pgg_error e;
    PGresult *r = pgg_lease_exec(l, "SELECT count(*) FROM pgg_copy_t", 0, &e);
    cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_str_eq(PQgetvalue(r, 0, 0), want);
    PQclear(r);
}

Test(copy, in_and_out_round_trip_through_a_lease)
{
    pgh_cluster *c = copy_cluster();
    pgg_pool *p = pool_for(c, NULL);
    pgg_error e;
    source src = {.step = 1000};
    src.text = make_rows(&src.len);

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    PGresult *r = pgg_lease_copy_in(l, "COPY pgg_copy_t FROM STDIN", read_source, &src, 0, &e);
    cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
    cr_expect_str_eq(PQcmdTuples(r), "2000");
    PQclear(r);
    cr_expect_gt(src.calls, 20, "the source was asked %d times", src.calls);
    expect_count(l, "2000");

    sink out = {0};
    r = pgg_lease_copy_out(l, "COPY (SELECT * FROM pgg_copy_t ORDER BY id) TO STDOUT", write_sink,
                           &out, 0, &e);
    cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
    cr_expect_str_eq(PQcmdTuples(r), "2000");
    PQclear(r);
    cr_expect_eq(out.rows, ROWS);
    cr_expect_eq(out.len, src.len);
    cr_expect(out.text && memcmp(out.text, src.text, src.len) == 0, "rows came back changed");

    /* In a transaction, rolled back: COPY is part of the lease's session. */
    PQclear(pgg_lease_exec(l, "BEGIN", 0, &e));
    source more = {.step = 1000};
    more.text = make_rows_from(ROWS + 1, &more.len);
    r = pgg_lease_copy_in(l, "COPY pgg_copy_t FROM STDIN", read_source, &more, 0, &e);
    cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
    PQclear(r);
    expect_count(l, "4000");
    PQclear(pgg_lease_exec(l, "ROLLBACK", 0, &e));
    expect_count(l, "2000");
    free(more.text);
    pgg_release(l);
    free(src.text);
    free(out.text);
    end_test(p, c);
}

Test(copy, a_one_shot_copy_is_refused_clearly)
{
    pgh_cluster *c = copy_cluster();
    pgg_pool *p = pool_for(c, NULL);
    pgg_info info;
    pgg_error e;

    PGresult *r = pgg_exec(p, PGG_WRITE, "COPY pgg_copy_t FROM STDIN", NULL, &info, &e);
    cr_expect_null(r, "a PGRES_COPY_IN result came back");
    PQclear(r);
    cr_expect_eq(e.code, PGG_ESTATE, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_not_null(strstr(e.message, "pgg_lease_copy_in"), "%s", e.message);
    r = pgg_exec(p, PGG_READ, "COPY pgg_copy_t TO STDOUT", NULL, &info, &e);
    cr_expect_null(r);
    PQclear(r);
    cr_expect_eq(e.code, PGG_ESTATE, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_not_null(strstr(e.message, "pgg_lease_copy_out"), "%s", e.message);

    pgg_host_stats h = host_stats(p, 0);
    cr_expect_eq(h.state, PGG_BREAKER_CLOSED);
    for (int k = PGG_CLASS_CONNECTION; k < PGG_CLASS__COUNT; k++)
        cr_expect_eq(h.failures[k], 0, "counted a %s failure", pgg_class_name((pgg_class)k));
    /* The mid-COPY connections were not pooled; the pool works on. */
    cr_expect_eq(h.conns_open, h.conns_idle);
    read_ok(p, PGG_WRITE, "SELECT count(*) FROM pgg_copy_t", 0);

    /* Not a COPY: said so, and the lease goes on. */
    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    sink out = {0};
    r = pgg_lease_copy_out(l, "SELECT 1", write_sink, &out, 0, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_EINVAL, "%s: %s", pgg_err_name(e.code), e.message);
    expect_count(l, "0");
    pgg_release(l);
    free(out.text);
    end_test(p, c);
}

Test(copy, a_bad_row_is_the_servers_error_and_the_lease_goes_on)
{
    pgh_cluster *c = copy_cluster();
    pgg_pool *p = pool_for(c, NULL);
    pgg_error e;
    char bad[] = "1\tone\nnot-a-number\ttwo\n";
    source src = {.text = bad, .len = strlen(bad), .step = 4096};

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    PGresult *r = pgg_lease_copy_in(l, "COPY pgg_copy_t FROM STDIN", read_source, &src, 0, &e);
    cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
    PQclear(r);
    cr_expect_eq(e.code, PGG_ESERVER);
    cr_expect_str_eq(e.sqlstate, "22P02");
    expect_count(l, "0");

    /* The source gives up: the COPY is aborted (57014), nothing kept. */
    char good[] = "1\tone\n2\ttwo\n";
    source failing = {.text = good, .len = strlen(good), .step = 6, .fail_after = 1};
    r = pgg_lease_copy_in(l, "COPY pgg_copy_t FROM STDIN", read_source, &failing, 0, &e);
    cr_assert_not_null(r, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
    cr_expect_str_eq(e.sqlstate, "57014");
    PQclear(r);
    expect_count(l, "0");
    pgg_release(l);
    cr_expect_eq(host_stats(p, 0).state, PGG_BREAKER_CLOSED);
    end_test(p, c);
}

Test(copy, a_copy_past_its_deadline_is_cut_and_the_lease_broken)
{
    pgh_cluster *c = copy_cluster();
    pgg_pool *p = pool_for(c, NULL);
    pgg_error e;
    source src = {.step = 100, .sleep_ms = 50};
    src.text = make_rows(&src.len);

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    double t0 = pgh_now_ms();
    PGresult *r = pgg_lease_copy_in(l, "COPY pgg_copy_t FROM STDIN", read_source, &src, 400, &e);
    double took = pgh_now_ms() - t0;
    cr_expect_null(r);
    PQclear(r);
    cr_expect_eq(e.code, PGG_ETIMEDOUT, "%s: %s", pgg_err_name(e.code), e.message);
    /* the source's own sleep is the only overshoot */
    cr_expect_lt(took, 400 + 50 + 250.0, "took %.0f ms", took);
    r = pgg_lease_exec(l, "SELECT 1", 0, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_ECONNECT, "%s: %s", pgg_err_name(e.code), e.message);
    pgg_release(l);

    /* The sink stops a COPY TO STDOUT: dropped, said so. */
    cr_assert_eq(pgh_node_exec(pgh_cluster_primary(c),
                               "INSERT INTO pgg_copy_t SELECT g, 'r' FROM generate_series(1, 5000) g"),
                 0);
    l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    sink out = {.stop_after = 10};
    r = pgg_lease_copy_out(l, "COPY pgg_copy_t TO STDOUT", write_sink, &out, 0, &e);
    cr_expect_null(r);
    cr_expect_eq(e.code, PGG_EINVAL, "%s: %s", pgg_err_name(e.code), e.message);
    cr_expect_eq(out.rows, 10);
    pgg_release(l);
    free(out.text);
    free(src.text);
    /* Nothing of the cut COPY was kept. */
    char n[32];
    cr_assert_eq(pgh_node_query_value(pgh_cluster_primary(c),
                                      "SELECT count(*) FROM pgg_copy_t WHERE id <= 2000 AND v <> 'r'",
                                      n, sizeof n),
                 0);
    cr_expect_str_eq(n, "0");
    end_test(p, c);
}

/* A COPY behind another statement in the same string ("SET ...; COPY ...")
 * is not one COPY statement: refused as bad input (the session, mid-COPY,
 * is dropped), not reported as a deadline that never fired. */
Test(copy, a_copy_behind_another_statement_is_bad_input_not_a_timeout)
{
    pgh_cluster *c = copy_cluster();
    pgg_pool *p = pool_for(c, NULL);
    pgg_error e;
    char rows[] = "1\tone\n";
    source src = {.text = rows, .len = strlen(rows), .step = 4096};
    sink out = {0};

    pgg_lease *l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    PGresult *r = pgg_lease_copy_in(l, "SELECT 1; COPY pgg_copy_t FROM STDIN", read_source,
                                    &src, 5000, &e);
    cr_expect_null(r);
    PQclear(r);
    cr_expect_eq(e.code, PGG_EINVAL, "%s: %s", pgg_err_name(e.code), e.message);
    r = pgg_lease_exec(l, "SELECT 1", 0, &e);
    cr_expect_null(r, "a session left mid-COPY was used again");
    PQclear(r);
    pgg_release(l);

    l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    r = pgg_lease_copy_out(l, "SELECT 1; COPY pgg_copy_t TO STDOUT", write_sink, &out, 5000,
                           &e);
    cr_expect_null(r);
    PQclear(r);
    cr_expect_eq(e.code, PGG_EINVAL, "%s: %s", pgg_err_name(e.code), e.message);
    pgg_release(l);
    free(out.text);

    l = pgg_acquire(p, PGG_WRITE, 0, NULL, &e);
    cr_assert_not_null(l, "%s", e.message);
    expect_count(l, "0");
    pgg_release(l);
    cr_expect_eq(host_stats(p, 0).state, PGG_BREAKER_CLOSED);
    end_test(p, c);
}
