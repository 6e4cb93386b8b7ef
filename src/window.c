#include "window.h"

#include "pgguard.h"

#include <stdlib.h>
#include <string.h>

/*
 * A count window keeps one 32-bit word per call: two flag bits and the
 * number of ignored outcomes recorded just before that call, so ignored
 * outcomes leave the window together with the call that followed them.
 */
#define SLOT_FAILURE (UINT32_C(1) << 31)
#define SLOT_SLOW (UINT32_C(1) << 30)
#define SLOT_IGNORED_MAX ((UINT32_C(1) << 30) - 1)

struct pgg_window_bucket {
    int64_t idx;  /* which bucket this slot holds, -1 for none */
    int64_t next; /* next non-empty bucket, -1 after the newest */
    uint64_t calls;
    uint64_t failures;
    uint64_t slow;
    uint64_t slow_failures;
    uint64_t ignored;
};

const char *pgg__window_type_name(pgg_window_type type)
{
    switch (type) {
    case PGG_WINDOW_COUNT:
        return "count";
    case PGG_WINDOW_TIME:
        return "time";
    case PGG_WINDOW_FIXED:
        return "fixed";
    }
    return "unknown";
}

bool pgg__window_type_parse(const char *s, pgg_window_type *out)
{
    static const pgg_window_type all[] = {PGG_WINDOW_COUNT, PGG_WINDOW_TIME,
                                          PGG_WINDOW_FIXED};
    size_t i;

    if (!s)
        return false;
    for (i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(s, pgg__window_type_name(all[i])) == 0) {
            *out = all[i];
            return true;
        }
    }
    return false;
}

int pgg__window_init(pgg_window *w, pgg_window_type type, uint32_t size,
                     int64_t bucket_ns, int64_t now)
{
    uint32_t i;

    memset(w, 0, sizeof *w);
    if (type != PGG_WINDOW_FIXED && (size == 0 || size > PGG_WINDOW_MAX_SIZE))
        return PGG_EINVAL;
    if (type == PGG_WINDOW_TIME && bucket_ns <= 0)
        return PGG_EINVAL;
    w->type = type;
    w->size = type == PGG_WINDOW_FIXED ? 0 : size;
    w->bucket_ns = type == PGG_WINDOW_TIME ? bucket_ns : 0;
    switch (type) {
    case PGG_WINDOW_COUNT:
        w->ring = calloc(size, sizeof *w->ring);
        if (!w->ring)
            return PGG_ENOMEM;
        break;
    case PGG_WINDOW_TIME:
        w->buckets = malloc((size_t)size * sizeof *w->buckets);
        if (!w->buckets)
            return PGG_ENOMEM;
        for (i = 0; i < size; i++) {
            w->buckets[i].idx = -1;
            w->buckets[i].next = -1;
        }
        break;
    case PGG_WINDOW_FIXED:
        break;
    default:
        return PGG_EINVAL;
    }
    w->head = -1;
    pgg__window_reset(w, now);
    return PGG_OK;
}

void pgg__window_destroy(pgg_window *w)
{
    if (!w)
        return;
    free(w->ring);
    free(w->buckets);
    w->ring = NULL;
    w->buckets = NULL;
}

static int64_t end_of(int64_t start, int64_t len)
{
    return start > INT64_MAX - len ? INT64_MAX : start + len;
}

void pgg__window_reset(pgg_window *w, int64_t now)
{
    memset(&w->agg, 0, sizeof w->agg);
    w->pos = 0;
    w->pending = 0;
    if (w->type == PGG_WINDOW_TIME) {
        /*
         * Start numbering past every index the slots may still hold, so a
         * stale slot can never pass for a current one and the reset costs
         * O(1) whatever the window's size.
         */
        w->base = w->head < 0 ? 0 : w->head + (int64_t)w->size + 1;
        w->epoch = now;
        w->head = w->base;
        w->head_start = now;
        w->head_end = end_of(now, w->bucket_ns);
        w->oldest = -1;
        w->newest = -1;
    }
}

static void clamp_runs(pgg_window *w)
{
    /* A run is made of the newest calls; the window holds the newest ones. */
    if (w->agg.consecutive_failures > w->agg.calls)
        w->agg.consecutive_failures = w->agg.calls;
    if (w->agg.consecutive_successes > w->agg.calls)
        w->agg.consecutive_successes = w->agg.calls;
}

static void add_call(pgg_window_stats *a, bool failure, bool slow)
{
    a->calls++;
    if (failure) {
        a->failures++;
        a->consecutive_failures++;
        a->consecutive_successes = 0;
    } else {
        a->consecutive_successes++;
        a->consecutive_failures = 0;
    }
    if (slow) {
        a->slow++;
        if (failure)
            a->slow_failures++;
    }
}

/* ---------------------------------------------------------------- count */

static void count_record(pgg_window *w, pgg_outcome outcome, bool slow)
{
    pgg_window_stats *a = &w->agg;
    uint32_t old;
    bool failure = outcome == PGG_OUTCOME_FAILURE;

    if (outcome == PGG_OUTCOME_IGNORED) {
        /* Past the slot's capacity an ignored outcome is not counted at all. */
        if (w->pending < SLOT_IGNORED_MAX) {
            w->pending++;
            a->ignored++;
        }
        return;
    }
    if (a->calls == w->size) {
        old = w->ring[w->pos];
        a->calls--;
        if (old & SLOT_FAILURE)
            a->failures--;
        if (old & SLOT_SLOW) {
            a->slow--;
            if (old & SLOT_FAILURE)
                a->slow_failures--;
        }
        a->ignored -= old & SLOT_IGNORED_MAX;
        clamp_runs(w);
    }
    w->ring[w->pos] = (failure ? SLOT_FAILURE : 0) | (slow ? SLOT_SLOW : 0) | w->pending;
    w->pending = 0;
    if (++w->pos == w->size)
        w->pos = 0;
    add_call(a, failure, slow);
}

/* ----------------------------------------------------------------- time */

static pgg_window_bucket *slot_of(pgg_window *w, int64_t idx)
{
    return &w->buckets[(uint64_t)idx % w->size];
}

/* Make bucket idx the newest one and drop every bucket older than the span. */
static void time_move_head(pgg_window *w, int64_t idx)
{
    pgg_window_bucket *b;
    int64_t limit = idx - (int64_t)w->size; /* buckets <= limit are out */

    w->head = idx;
    if (w->newest >= 0 && w->newest <= limit) {
        /* An idle gap longer than the window: nothing survives. */
        memset(&w->agg, 0, sizeof w->agg);
        w->oldest = w->newest = -1;
        return;
    }
    /* Each non-empty bucket is visited here once in its life: amortised O(1). */
    while (w->oldest >= 0 && w->oldest <= limit) {
        b = slot_of(w, w->oldest);
        w->agg.calls -= b->calls;
        w->agg.failures -= b->failures;
        w->agg.slow -= b->slow;
        w->agg.slow_failures -= b->slow_failures;
        w->agg.ignored -= b->ignored;
        w->oldest = b->next;
    }
    if (w->oldest < 0)
        w->newest = -1;
    clamp_runs(w);
}

/* The index of the bucket that holds now (never older than the head). */
static int64_t time_bucket(pgg_window *w, int64_t now)
{
    uint64_t since;
    int64_t off;

    if (now < w->head_end)
        return w->head; /* the common case, and late arrivals */
    since = (uint64_t)now - (uint64_t)w->epoch;
    off = (int64_t)(since % (uint64_t)w->bucket_ns);
    w->head_start = now - off;
    w->head_end = end_of(w->head_start, w->bucket_ns);
    return w->base + (int64_t)(since / (uint64_t)w->bucket_ns);
}

static void time_advance(pgg_window *w, int64_t now)
{
    int64_t idx = time_bucket(w, now);

    if (idx > w->head)
        time_move_head(w, idx);
}

static void time_record(pgg_window *w, pgg_outcome outcome, bool slow,
                        int64_t now)
{
    pgg_window_bucket *b;
    bool failure = outcome == PGG_OUTCOME_FAILURE;

    time_advance(w, now);
    b = slot_of(w, w->head);
    if (b->idx != w->head) {
        memset(b, 0, sizeof *b);
        b->idx = w->head;
        b->next = -1;
        if (w->newest >= 0)
            slot_of(w, w->newest)->next = w->head;
        else
            w->oldest = w->head;
        w->newest = w->head;
    }
    if (outcome == PGG_OUTCOME_IGNORED) {
        b->ignored++;
        w->agg.ignored++;
        return;
    }
    b->calls++;
    if (failure)
        b->failures++;
    if (slow) {
        b->slow++;
        if (failure)
            b->slow_failures++;
    }
    add_call(&w->agg, failure, slow);
}

/* ---------------------------------------------------------------- common */

void pgg__window_record(pgg_window *w, pgg_outcome outcome, bool slow,
                        int64_t now)
{
    if (outcome == PGG_OUTCOME_IGNORED)
        slow = false;
    switch (w->type) {
    case PGG_WINDOW_COUNT:
        count_record(w, outcome, slow);
        break;
    case PGG_WINDOW_TIME:
        time_record(w, outcome, slow, now);
        break;
    case PGG_WINDOW_FIXED:
        if (outcome == PGG_OUTCOME_IGNORED)
            w->agg.ignored++;
        else
            add_call(&w->agg, outcome == PGG_OUTCOME_FAILURE, slow);
        break;
    }
}

void pgg__window_advance(pgg_window *w, int64_t now)
{
    if (w->type == PGG_WINDOW_TIME)
        time_advance(w, now);
}
