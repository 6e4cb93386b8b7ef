/* Read your writes without a server: positions as text, what a call needs,
 * what the pool knows of each standby, and the order a read that needs a
 * position tries hosts in (on a pool object built by hand). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "visibility.h"

Test(lsn, text_round_trips_and_junk_is_refused)
{
    char buf[32];
    uint64_t v = 0;

    cr_assert_eq(pgg_lsn_format(UINT64_C(0x16B374D848), buf, sizeof buf), PGG_OK);
    cr_expect_str_eq(buf, "16/B374D848");
    cr_assert_eq(pgg_lsn_parse(buf, &v), PGG_OK);
    cr_expect_eq(v, UINT64_C(0x16B374D848));
    cr_assert_eq(pgg_lsn_format(UINT64_MAX, buf, sizeof buf), PGG_OK);
    cr_expect_str_eq(buf, "FFFFFFFF/FFFFFFFF");
    cr_expect_eq(pgg_lsn_format(1, buf, 17), PGG_EINVAL, "too short for the longest");
    cr_expect_eq(pgg_lsn_format(1, NULL, 32), PGG_EINVAL);
    const char *junk[] = {"", "1", "1/", "/1", "G/1", "1/2/3", "100000000/0", "1/x", " 1/1"};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        cr_expect_eq(pgg_lsn_parse(junk[i], &v), PGG_EINVAL, "\"%s\" accepted", junk[i]);
    cr_expect_eq(pgg_lsn_parse(NULL, &v), PGG_EINVAL);
    cr_expect_eq(pgg_lsn_parse("0/0", NULL), PGG_EINVAL);
}

Test(vis, what_a_call_needs)
{
    pgg_vis *off = pgg__vis_new(3, PGG_RYW_OFF, 1000, 10, NULL);
    pgg_vis *pool = pgg__vis_new(3, PGG_RYW_POOL, 1000, 10, NULL);
    pgg_vis_req r;
    pgg_call want = {.flags = PGG_CALL_WANT_LSN}, any = {.flags = PGG_CALL_ANY_LSN};
    pgg_call at = {.min_lsn = 500};

    cr_assert(off && pool);
    /* Writes: a position only when asked, or pool-wide. */
    cr_expect_not(pgg__vis_begin(off, PGG_WRITE, NULL, &r));
    cr_expect(pgg__vis_begin(off, PGG_WRITE, &want, &r) && r.want_lsn);
    cr_expect(pgg__vis_begin(pool, PGG_WRITE, NULL, &r) && r.want_lsn);
    /* Reads: nothing to wait for before the first write. */
    cr_expect_not(pgg__vis_begin(pool, PGG_READ, NULL, &r));
    pgg__vis_note_write(pool, 300);
    pgg__vis_note_write(pool, 200); /* older news changes nothing */
    cr_expect_eq(pgg__vis_latest(pool), 300);
    cr_expect(pgg__vis_begin(pool, PGG_READ, NULL, &r));
    cr_expect_eq(r.need, 300);
    cr_expect_not(pgg__vis_begin(pool, PGG_READ, &any, &r), "opted out");
    cr_expect(pgg__vis_begin(pool, PGG_READ, &at, &r));
    cr_expect_eq(r.need, 500, "the later of the two");
    cr_expect_not(pgg__vis_begin(pool, PGG_READ_PRIMARY, NULL, &r),
                  "the primary has every write it acknowledged");
    cr_expect_not(pgg__vis_begin(off, PGG_READ, NULL, &r));
    cr_expect(pgg__vis_begin(off, PGG_READ, &at, &r));
    cr_expect_eq(r.need, 500);
    pgg__vis_free(off);
    pgg__vis_free(pool);
}

Test(vis, a_probe_replaces_an_answer_raises)
{
    pgg_vis *v = pgg__vis_new(2, PGG_RYW_OFF, 1000, 10, NULL);

    pgg__vis_note_replayed(v, 1, 100, false);
    pgg__vis_note_replayed(v, 1, 50, false);
    cr_expect_eq(pgg__vis_replayed(v, 1), 100, "an older answer lowered it");
    pgg__vis_note_replayed(v, 1, 80, true);
    cr_expect_eq(pgg__vis_replayed(v, 1), 80, "a probe's word stands (a rebuilt standby)");
    pgg__vis_note_replayed(v, 7, 80, true); /* no such host: ignored */
    cr_expect_eq(pgg__vis_replayed(v, 7), 0);
    cr_expect_eq(pgg__vis_health_interval(v, 1000), 1000, "no one waits");
    pgg__vis_free(v);
}

/* A pool with just what the ordering reads: roles and positions. */
static pgg_pool *fake_pool(int n, const pgg_role *roles, const uint64_t *replayed,
                           int64_t max_wait_ms)
{
    pgg_pool *p = calloc(1, sizeof *p);
    cr_assert_not_null(p);
    p->nhosts = n;
    p->hosts = calloc((size_t)n, sizeof *p->hosts);
    p->vis = pgg__vis_new(n, PGG_RYW_POOL, max_wait_ms, 10, NULL);
    cr_assert(p->hosts && p->vis);
    for (int i = 0; i < n; i++) {
        p->hosts[i].index = i;
        atomic_store(&p->hosts[i].role, (int)roles[i]);
        pgg__vis_note_replayed(p->vis, i, replayed[i], true);
    }
    return p;
}

static void fake_free(pgg_pool *p)
{
    pgg__vis_free(p->vis);
    free(p->hosts);
    free(p);
}

static int order(pgg_pool *p, pgg_vis_req *r, bool can_check, const int *in, int n, int *out)
{
    memcpy(out, in, (size_t)n * sizeof *in);
    return pgg__vis_order(p, r, can_check, out, n);
}

Test(vis, known_standbys_first_then_checked_ones_then_after_the_wait_the_primary)
{
    pgg_role roles[] = {PGG_ROLE_PRIMARY, PGG_ROLE_STANDBY, PGG_ROLE_STANDBY, PGG_ROLE_UNKNOWN};
    uint64_t replayed[] = {0, 50, 150, 0};
    pgg_pool *p = fake_pool(4, roles, replayed, 1000);
    int router[] = {1, 2, 3, 0}; /* replicas, unknown, primary: the router's read order */
    int out[4];
    pgg_vis_req r = {.need = 100};

    /* First pass: host 2 has it; 1 and the unknown 3 are checked; the
     * primary waits for the wait. */
    cr_assert_eq(order(p, &r, true, router, 4, out), 3);
    cr_expect_eq(out[0], 2);
    cr_expect_eq(out[1], 1);
    cr_expect_eq(out[2], 3);
    /* After the wait: who has it, then the primary and hosts of unknown
     * role (checked); never a standby known to be behind. */
    r.waited = true;
    cr_assert_eq(order(p, &r, true, router, 4, out), 3);
    cr_expect_eq(out[0], 2);
    cr_expect_eq(out[1], 0);
    cr_expect_eq(out[2], 3);
    /* A lease cannot check: only who has it, and it notes the others. */
    pgg_vis_req lr = {.need = 100};
    cr_assert_eq(order(p, &lr, false, router, 4, out), 1);
    cr_expect_eq(out[0], 2);
    cr_expect(lr.unmet_seen);
    lr.waited = true;
    cr_assert_eq(order(p, &lr, false, router, 4, out), 2);
    cr_expect_eq(out[0], 2);
    cr_expect_eq(out[1], 0, "an unknown role is no place for a lease that needs a position");
    fake_free(p);
}

Test(vis, nothing_to_wait_for_means_the_primary_at_once)
{
    pgg_role roles[] = {PGG_ROLE_PRIMARY, PGG_ROLE_STANDBY};
    uint64_t replayed[] = {0, 50};
    pgg_pool *p = fake_pool(2, roles, replayed, 1000);
    int out[2];
    pgg_vis_req r = {.need = 100};

    /* Only the primary offered (read_policy=primary, replicas open...). */
    cr_assert_eq(order(p, &r, true, (int[]){0}, 1, out), 1);
    cr_expect_eq(out[0], 0);
    cr_expect(r.waited, "no standby could catch up: no wait");
    /* A lease with a standby behind and no wait budget. */
    fake_free(p);
    p = fake_pool(2, roles, replayed, 0);
    pgg_vis_req lr = {.need = 100};
    cr_assert_eq(order(p, &lr, false, (int[]){1, 0}, 2, out), 1);
    cr_expect_eq(out[0], 0);
    fake_free(p);
}

/* read_your_writes=sampled: writes learn nothing and count; a read after
 * none needs nothing, a read after new ones needs a sample. */
Test(vis, the_sampled_mode_asks_for_a_sample_after_new_writes_only)
{
    pgg_vis *v = pgg__vis_new(3, PGG_RYW_SAMPLED, 1000, 10, NULL);
    pgg_call any = {.flags = PGG_CALL_ANY_LSN}, at = {.min_lsn = 500};
    pgg_vis_req r;

    cr_assert(v);
    cr_expect_not(pgg__vis_begin(v, PGG_WRITE, NULL, &r), "a write pays nothing");
    cr_expect_not(pgg__vis_begin(v, PGG_READ, NULL, &r), "no write yet");
    cr_expect_not(r.sample);
    pgg__vis_served(v, &r, PGG_WRITE);
    cr_expect(pgg__vis_begin(v, PGG_READ, NULL, &r));
    cr_expect(r.sample, "a write since the last sample");
    cr_expect_eq(r.epoch, 1);
    cr_expect_not(pgg__vis_begin(v, PGG_READ, &any, &r), "opted out");
    cr_expect_not(r.sample);
    cr_expect_not(pgg__vis_begin(v, PGG_READ_PRIMARY, NULL, &r));
    cr_expect_not(r.sample, "the primary has every write");
    cr_expect(pgg__vis_begin(v, PGG_READ, &at, &r));
    cr_expect(r.sample && r.need == 500, "a token and a sample: both");
    pgg__vis_wrote(v);
    cr_expect(pgg__vis_begin_lease(v, PGG_READ, NULL, &r) && r.sample && r.epoch == 2,
              "a write lease's statement counts; a read lease samples");
    cr_expect_not(pgg__vis_begin_lease(v, PGG_WRITE, NULL, &r));
    pgg__vis_free(v);
}

/* No position could be learnt (no primary for the sample): only a
 * primary, never a standby, however far it has replayed. */
Test(vis, a_blind_read_goes_to_the_primary_only)
{
    pgg_role roles[] = {PGG_ROLE_PRIMARY, PGG_ROLE_STANDBY, PGG_ROLE_STANDBY};
    uint64_t replayed[] = {0, UINT64_MAX, 150};
    pgg_pool *p = fake_pool(3, roles, replayed, 1000);
    int out[3];
    pgg_vis_req r = {.need = UINT64_MAX, .blind = true};

    cr_assert_eq(order(p, &r, true, (int[]){1, 2, 0}, 3, out), 1);
    cr_expect_eq(out[0], 0);
    cr_expect(r.waited, "nothing to wait for");
    pgg_vis_req lr = {.need = UINT64_MAX, .blind = true};
    cr_assert_eq(order(p, &lr, false, (int[]){1, 2}, 2, out), 0, "no primary: no host");
    fake_free(p);
}

Test(vis, a_copy_is_told_by_its_first_keyword)
{
    cr_expect(pgg__vis_is_copy("COPY t FROM STDIN"));
    cr_expect(pgg__vis_is_copy("  copy t to stdout"));
    cr_expect(pgg__vis_is_copy("-- load\n/* bulk */ Copy t FROM STDIN"));
    cr_expect_not(pgg__vis_is_copy("INSERT INTO copy VALUES (1)"));
    cr_expect_not(pgg__vis_is_copy("copying"));
    cr_expect_not(pgg__vis_is_copy("copy_t"));
    cr_expect_not(pgg__vis_is_copy("-- COPY\nSELECT 1"));
    cr_expect_not(pgg__vis_is_copy("/* unterminated"));
    cr_expect_not(pgg__vis_is_copy("-- only a comment"));
    cr_expect_not(pgg__vis_is_copy(""));
}

/* An insert position just past a page header (the last record ended on the
 * page boundary) is reached by a replica at the boundary; nothing else is
 * lowered, and nothing at all while the layout is unknown. */
Test(vis, a_position_just_past_a_page_header_is_the_page_boundary)
{
    const uint32_t blk = 8192;
    const uint64_t seg = 16u << 20, page = 5 * seg + 3 * blk;

    cr_expect_eq(pgg__lsn_page_floor(page + 24, blk, seg), page);
    cr_expect_eq(pgg__lsn_page_floor(5 * seg + 40, blk, seg), 5 * seg,
                 "a segment's first page has the long header");
    cr_expect_eq(pgg__lsn_page_floor(5 * seg + 24, blk, seg), 5 * seg + 24,
                 "24 bytes into a segment is record data after a long header");
    cr_expect_eq(pgg__lsn_page_floor(page + 40, blk, seg), page + 40,
                 "40 bytes into an inner page is record data");
    cr_expect_eq(pgg__lsn_page_floor(page + 32, blk, seg), page + 32,
                 "a record continued from the page before");
    cr_expect_eq(pgg__lsn_page_floor(page, blk, seg), page);
    cr_expect_eq(pgg__lsn_page_floor(page + 24, 0, seg), page + 24, "unknown");
    cr_expect_eq(pgg__lsn_page_floor(page + 24, blk, 0), page + 24, "unknown");

    /* A read's need is lowered only once the layout is known. */
    pgg_vis *v = pgg__vis_new(3, PGG_RYW_POOL, 1000, 10, NULL);
    pgg_vis_req r;

    cr_assert(v);
    pgg__vis_note_write(v, page + 24);
    cr_expect(pgg__vis_begin(v, PGG_READ, NULL, &r));
    cr_expect_eq(r.need, page + 24);
    pgg__vis_set_layout(v, blk, seg);
    cr_expect(pgg__vis_begin(v, PGG_READ, NULL, &r));
    cr_expect_eq(r.need, page);
    pgg__vis_free(v);
}
