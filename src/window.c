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
    uint64_t requests; /* admitted in this bucket (by-admission windows) */
    /* The runs among this bucket's own results, in the order they came. */
    uint64_t consecutive_failures;
    uint64_t consecutive_successes;
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
    return pgg__window_init_ex(w, type, size, bucket_ns, 0, now);
}

int pgg__window_init_ex(pgg_window *w, pgg_window_type type, uint32_t size,
                        int64_t bucket_ns, unsigned flags, int64_t now)
{
    uint32_t i;

    memset(w, 0, sizeof *w);
    if (type != PGG_WINDOW_FIXED && (size == 0 || size > PGG_WINDOW_MAX_SIZE))
        return PGG_EINVAL;
    if (type == PGG_WINDOW_TIME && bucket_ns <= 0)
        return PGG_EINVAL;
    if (flags & ~(PGG_WINDOW_BY_ADMISSION | PGG_WINDOW_ALIGNED))
        return PGG_EINVAL;
    w->by_admission = type == PGG_WINDOW_TIME && (flags & PGG_WINDOW_BY_ADMISSION);
    w->aligned = type == PGG_WINDOW_TIME && (flags & PGG_WINDOW_ALIGNED);
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

/*
 * A window that does not bucket by admission keeps
 *   requests == calls + ignored + in_flight
 * incrementally: an admission adds one (in flight), its result moves it
 * from in flight to the window (no change), a result with no admission of
 * this window adds one, and whatever leaves the window takes its share.
 */

void pgg__window_reset(pgg_window *w, int64_t now)
{
    int64_t start = now, off;

    memset(&w->agg, 0, sizeof w->agg);
    w->pos = 0;
    w->pending = 0;
    w->in_flight = 0;
    w->serial++;
    if (w->type == PGG_WINDOW_TIME) {
        if (w->aligned) {
            off = now % w->bucket_ns;
            if (off < 0)
                off += w->bucket_ns;
            start = now - off;
        }
        /*
         * Start numbering past every index the slots may still hold, so a
         * stale slot (or admission mark) can never pass for a current one
         * and the reset costs O(1) whatever the window's size.
         */
        w->base = w->head < 0 ? 0 : w->head + (int64_t)w->size + 1;
        w->epoch = start;
        w->head = w->base;
        w->head_start = start;
        w->head_end = end_of(start, w->bucket_ns);
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

/* A full count window: the call in the slot about to be written leaves. */
static inline void count_drop_oldest(pgg_window *w)
{
    pgg_window_stats *a = &w->agg;
    uint32_t old = w->ring[w->pos];

    a->calls--;
    if (old & SLOT_FAILURE)
        a->failures--;
    if (old & SLOT_SLOW) {
        a->slow--;
        if (old & SLOT_FAILURE)
            a->slow_failures--;
    }
    a->ignored -= old & SLOT_IGNORED_MAX;
    a->requests -= 1 + (old & SLOT_IGNORED_MAX);
    clamp_runs(w);
}

static void count_record(pgg_window *w, pgg_outcome outcome, bool slow)
{
    pgg_window_stats *a = &w->agg;
    bool failure = outcome == PGG_OUTCOME_FAILURE;

    if (outcome == PGG_OUTCOME_IGNORED) {
        /* Past the slot's capacity an ignored outcome is not counted at all. */
        if (w->pending < SLOT_IGNORED_MAX) {
            w->pending++;
            a->ignored++;
        } else {
            a->requests--; /* not kept, so no longer a request either */
        }
        return;
    }
    if (a->calls == w->size)
        count_drop_oldest(w);
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

/*
 * The newest run of failures reaches into a leaving bucket exactly when it
 * is as long as that bucket's own final run plus every failure of the
 * other buckets; then it loses that final run.  This is gobreaker v2's
 * rollingCounts.subtract, and with results kept in arrival order it is
 * the plain "a run never outlives its calls".  (Bucketed by admission, a
 * late result lands in an older bucket and arrival order is not bucket
 * order: the rule stays gobreaker's, so a preset keeps its numbers.)
 */
static uint64_t run_after_drop(uint64_t run, uint64_t bucket_run,
                               uint64_t others)
{
    if (run != bucket_run + others)
        return run;
    return run > bucket_run ? run - bucket_run : 0;
}

static void time_drop(pgg_window *w, const pgg_window_bucket *b)
{
    pgg_window_stats *a = &w->agg;

    a->consecutive_failures = run_after_drop(a->consecutive_failures,
                                             b->consecutive_failures,
                                             a->failures - b->failures);
    a->consecutive_successes = run_after_drop(
        a->consecutive_successes, b->consecutive_successes,
        (a->calls - a->failures) - (b->calls - b->failures));
    a->calls -= b->calls;
    a->failures -= b->failures;
    a->slow -= b->slow;
    a->slow_failures -= b->slow_failures;
    a->ignored -= b->ignored;
    a->requests -= w->by_admission ? b->requests : b->calls + b->ignored;
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
        if (!w->by_admission)
            w->agg.requests = w->in_flight;
        w->oldest = w->newest = -1;
        return;
    }
    /* Each non-empty bucket is visited here once in its life: amortised O(1). */
    while (w->oldest >= 0 && w->oldest <= limit) {
        b = slot_of(w, w->oldest);
        time_drop(w, b);
        w->oldest = b->next;
    }
    if (w->oldest < 0)
        w->newest = -1;
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

/* The head bucket, put on the list of non-empty ones. */
static pgg_window_bucket *time_head(pgg_window *w)
{
    pgg_window_bucket *b = slot_of(w, w->head);

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
    return b;
}

static void time_add(pgg_window *w, pgg_window_bucket *b, pgg_outcome outcome,
                     bool slow)
{
    bool failure = outcome == PGG_OUTCOME_FAILURE;

    if (outcome == PGG_OUTCOME_IGNORED) {
        b->ignored++;
        w->agg.ignored++;
        return;
    }
    b->calls++;
    if (failure) {
        b->failures++;
        b->consecutive_failures++;
        b->consecutive_successes = 0;
    } else {
        b->consecutive_successes++;
        b->consecutive_failures = 0;
    }
    if (slow) {
        b->slow++;
        if (failure)
            b->slow_failures++;
    }
    add_call(&w->agg, failure, slow);
}

static void time_record(pgg_window *w, pgg_outcome outcome, bool slow,
                        int64_t now)
{
    time_advance(w, now);
    time_add(w, time_head(w), outcome, slow);
}

int64_t pgg__window_admit_bucket(pgg_window *w, int64_t now)
{
    pgg_window_bucket *b;

    time_advance(w, now);
    b = time_head(w);
    b->requests++;
    w->agg.requests++;
    return w->head;
}

/* ---------------------------------------------------------------- common */

static void window_record(pgg_window *w, pgg_outcome outcome, bool slow,
                          int64_t now)
{
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

void pgg__window_record(pgg_window *w, pgg_outcome outcome, bool slow,
                        int64_t now)
{
    if (outcome == PGG_OUTCOME_IGNORED)
        slow = false;
    if (w->by_admission) {
        /* Admitted and finished at once: one request, one result. */
        pgg__window_record_admitted(w, pgg__window_admit_bucket(w, now),
                                    outcome, slow, now);
        return;
    }
    w->agg.requests++;
    window_record(w, outcome, slow, now);
}

/*
 * Out of line: its calls would make the compiler save registers on every
 * record of the other window shapes too.
 */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static bool record_in_admission_bucket(pgg_window *w, int64_t mark,
                                       pgg_outcome outcome, bool slow,
                                       int64_t now)
{
    pgg_window_bucket *b;

    time_advance(w, now);
    /* gobreaker: counted only while head - admission < buckets. */
    if (mark > w->head || w->head - mark >= (int64_t)w->size)
        return false;
    b = slot_of(w, mark);
    if (b->idx != mark)
        return false;
    time_add(w, b, outcome, slow);
    return true;
}

bool pgg__window_record_admitted(pgg_window *w, int64_t mark,
                                 pgg_outcome outcome, bool slow, int64_t now)
{
    if (outcome == PGG_OUTCOME_IGNORED)
        slow = false;
    if (w->by_admission)
        return record_in_admission_bucket(w, mark, outcome, slow, now);
    if (mark == w->serial && w->in_flight > 0)
        w->in_flight--;
    else
        w->agg.requests++;
    window_record(w, outcome, slow, now);
    return true;
}

void pgg__window_record_successes(pgg_window *w, int64_t mark, uint32_t n,
                                  int64_t now)
{
    pgg_window_stats *a = &w->agg;

    if (w->type != PGG_WINDOW_COUNT || w->by_admission) {
        while (n-- > 0)
            pgg__window_record_admitted(w, mark, PGG_OUTCOME_SUCCESS, false, now);
        return;
    }
    /*
     * Past size + 1 of them, a success only replaces another plain success
     * (the first size + 1 have pushed out every earlier call and the
     * ignored outcomes that came with them): the calls stay, the run stays
     * at its cap, and a success admitted in this window takes its request
     * out of flight while the one it pushes out leaves.  So only the first
     * size + 1 are walked.
     */
    if (n > w->size + 1u) {
        uint32_t skip = n - (w->size + 1u);
        uint64_t k;

        pgg__window_record_successes(w, mark, w->size + 1u, now);
        k = mark != w->serial ? 0 : w->in_flight < skip ? w->in_flight : skip;
        w->in_flight -= k;
        a->requests -= k;
        w->pos = (uint32_t)(((uint64_t)w->pos + skip) % w->size);
        return;
    }
    /* count_record() and add_call() for a success that is not slow. */
    for (; n > 0; n--) {
        if (mark == w->serial && w->in_flight > 0)
            w->in_flight--;
        else
            a->requests++;
        if (a->calls == w->size)
            count_drop_oldest(w);
        w->ring[w->pos] = w->pending;
        w->pending = 0;
        if (++w->pos == w->size)
            w->pos = 0;
        a->calls++;
        a->consecutive_successes++;
        a->consecutive_failures = 0;
    }
}

void pgg__window_advance(pgg_window *w, int64_t now)
{
    if (w->type == PGG_WINDOW_TIME)
        time_advance(w, now);
}

pgg_window_stats pgg__window_bucket_stats(const pgg_window *w, uint32_t back)
{
    pgg_window_stats st;
    const pgg_window_bucket *b;
    int64_t idx;

    memset(&st, 0, sizeof st);
    if (w->type != PGG_WINDOW_TIME || back >= w->size || w->head - back < w->base)
        return st;
    idx = w->head - (int64_t)back;
    b = &w->buckets[(uint64_t)idx % w->size];
    if (b->idx != idx)
        return st;
    st.calls = b->calls;
    st.failures = b->failures;
    st.slow = b->slow;
    st.slow_failures = b->slow_failures;
    st.ignored = b->ignored;
    st.consecutive_failures = b->consecutive_failures;
    st.consecutive_successes = b->consecutive_successes;
    st.requests = b->requests;
    return st;
}
