/*
 * Internal: sliding outcome windows, the memory a circuit breaker decides
 * from.
 *
 * Three shapes:
 * - count: the last `size` calls (successes and failures);
 * - time:  the last `size` buckets of `bucket_ns` each, bucket boundaries
 *          counted from the instant the window was last reset;
 * - fixed: everything since the last reset (gobreaker's Counts, which its
 *          breaker clears every Interval).
 *
 * A time window puts each result in a bucket in one of two ways:
 * - by completion (default): the bucket current when the result arrives,
 *   as resilience4j's SlidingTimeWindowMetrics does;
 * - by admission (PGG_WINDOW_BY_ADMISSION): the bucket current when the
 *   call was admitted (pgg__window_admit), as gobreaker v2's rolling
 *   window does; a result whose admission bucket has left the window is
 *   not counted at all.
 * Its buckets start at the instant of the last reset, or with
 * PGG_WINDOW_ALIGNED at multiples of the bucket width on the clock
 * (resilience4j's buckets are epoch seconds).
 *
 * Requests: every count in pgg_window_stats describes the same window.
 * `requests` is the results in the window (calls and ignored) plus the
 * calls admitted since the last reset and still in flight; in a window
 * that buckets by admission it is the calls admitted in its buckets,
 * finished or not (gobreaker's Counts.Requests).
 *
 * Every record keeps running totals, so reading the aggregates is free and
 * recording is O(1): a count window subtracts the one call it overwrites; a
 * time window subtracts only buckets that hold data, each once, found
 * through a list of non-empty buckets, so catching up after an idle gap
 * costs nothing per missed bucket (and a gap longer than the window is a
 * plain reset).
 *
 * Ignored outcomes are neither calls nor failures: they never displace a
 * call from a count window, and are kept as the number of ignored outcomes
 * recorded since the oldest call still in the window (for a time window,
 * those in the window's buckets).
 *
 * Not thread-safe: the breaker serialises access.  Memory is allocated
 * once, by init.
 */
#ifndef PGG_WINDOW_H
#define PGG_WINDOW_H

#include <stdbool.h>
#include <stdint.h>

/* What one call did to the host, as the classifier judged it. */
typedef enum pgg_outcome {
    PGG_OUTCOME_SUCCESS = 0, /* the host served the call (user errors included) */
    PGG_OUTCOME_FAILURE = 1, /* the host is sick: counts against it */
    PGG_OUTCOME_IGNORED = 2  /* says nothing about the host: neither */
} pgg_outcome;

typedef enum pgg_window_type {
    PGG_WINDOW_COUNT = 0,
    PGG_WINDOW_TIME = 1,
    PGG_WINDOW_FIXED = 2
} pgg_window_type;

/* Largest window_size accepted, in calls or buckets. */
#define PGG_WINDOW_MAX_SIZE (1u << 20)

/* "count", "time", "fixed"; "unknown" otherwise. */
const char *pgg__window_type_name(pgg_window_type type);
/* Parse one of those names; returns false (and leaves *out) if unknown. */
bool pgg__window_type_parse(const char *s, pgg_window_type *out);

typedef struct pgg_window_stats {
    uint64_t calls;         /* successes + failures */
    uint64_t failures;
    uint64_t slow;          /* slow calls, successes and failures */
    uint64_t slow_failures; /* slow calls that also failed */
    uint64_t ignored;
    /*
     * Lengths of the newest run of failures / successes among the calls
     * in the window (ignored outcomes do not break a run).  A run is cut
     * when its oldest calls leave the window.
     */
    uint64_t consecutive_failures;
    uint64_t consecutive_successes;
    uint64_t requests; /* see "Requests" above */
} pgg_window_stats;

/* pgg__window_init_ex flags. */
#define PGG_WINDOW_BY_ADMISSION 0x1u /* time: bucket a result by its admission */
#define PGG_WINDOW_ALIGNED 0x2u      /* time: buckets at multiples of bucket_ns */

typedef struct pgg_window_bucket pgg_window_bucket;

typedef struct pgg_window {
    pgg_window_type type;
    uint32_t size;
    int64_t bucket_ns;
    pgg_window_stats agg;
    bool by_admission;
    bool aligned;
    uint64_t in_flight; /* admitted since the last reset, no result yet */
    int64_t serial;     /* counts resets; the admission mark when not
                           bucketing by admission (else the bucket index) */

    /* count: one word per call, see window.c */
    uint32_t *ring;
    uint32_t pos;     /* next slot to write */
    uint32_t pending; /* ignored outcomes since the newest call */

    /* time */
    pgg_window_bucket *buckets;
    int64_t epoch;      /* bucket `base` starts here */
    int64_t base;       /* indices grow across resets, so stale slots never match */
    int64_t head;       /* index of the newest bucket reached */
    int64_t head_start; /* [head_start, head_end) is bucket `head` */
    int64_t head_end;
    int64_t oldest; /* oldest non-empty bucket, -1 when none */
    int64_t newest; /* newest non-empty bucket, -1 when none */
} pgg_window;

/*
 * size: calls (count) or buckets (time), 1..PGG_WINDOW_MAX_SIZE; ignored
 * by a fixed window.  bucket_ns > 0 for a time window.  now is the start
 * of the first bucket.  Returns 0, PGG_EINVAL or PGG_ENOMEM.
 */
int pgg__window_init(pgg_window *w, pgg_window_type type, uint32_t size,
                     int64_t bucket_ns, int64_t now);
/* The same with PGG_WINDOW_* flags (only meaningful for a time window). */
int pgg__window_init_ex(pgg_window *w, pgg_window_type type, uint32_t size,
                        int64_t bucket_ns, unsigned flags, int64_t now);
/* Accepts a zeroed or destroyed window; frees its memory. */
void pgg__window_destroy(pgg_window *w);

/* Forget everything; a time window's bucket 0 now starts at now. */
void pgg__window_reset(pgg_window *w, int64_t now);

/*
 * Add one outcome observed at now (time windows; a now older than the
 * newest bucket counts in the newest bucket).  slow: the call was slower
 * than the slow-call threshold.  Slow is ignored for an ignored outcome.
 * The result of a call that was never admitted: by completion always.
 */
void pgg__window_record(pgg_window *w, pgg_outcome outcome, bool slow,
                        int64_t now);

/* pgg__window_admit() of a window that buckets by admission. */
int64_t pgg__window_admit_bucket(pgg_window *w, int64_t now);

/*
 * A call is admitted at now: it counts as a request from now on.  Returns
 * its admission mark, to pass to pgg__window_record_admitted() with its
 * result (exactly once; after a reset the mark is simply stale).
 */
static inline int64_t pgg__window_admit(pgg_window *w, int64_t now)
{
    if (w->by_admission)
        return pgg__window_admit_bucket(w, now);
    w->in_flight++;
    w->agg.requests++;
    return w->serial;
}

/*
 * n calls admitted at once, as n pgg__window_admit() would (their mark is
 * w->serial).  Not for a window that buckets by admission.
 */
static inline void pgg__window_admit_n(pgg_window *w, uint64_t n)
{
    w->in_flight += n;
    w->agg.requests += n;
}

/*
 * The result of a call admitted with mark.  Returns false when it was not
 * counted: bucketed by admission, its bucket has left the window (or the
 * window was reset since).  A window bucketing by completion counts every
 * result, and only the results of calls admitted since its last reset
 * leave the in-flight count.
 */
bool pgg__window_record_admitted(pgg_window *w, int64_t mark,
                                 pgg_outcome outcome, bool slow, int64_t now);

/*
 * n successes, none slow, of calls admitted with mark, one after another:
 * the same as n pgg__window_record_admitted() calls, in a tight loop for a
 * count window.
 */
void pgg__window_record_successes(pgg_window *w, int64_t mark, uint32_t n,
                                  int64_t now);

/* Let a time window drop what is older than its span at now. */
void pgg__window_advance(pgg_window *w, int64_t now);

/*
 * One bucket of a time window: the one `back` buckets before the newest
 * bucket reached (0: the newest), its runs its own.  Zeros for a bucket
 * outside the window, never written, or of another window type.  For
 * tests and diagnostics: gobreaker's tests read its buckets so.
 */
pgg_window_stats pgg__window_bucket_stats(const pgg_window *w, uint32_t back);

/* The running totals; valid until the next call on w. */
static inline const pgg_window_stats *pgg__window_stats(const pgg_window *w)
{
    return &w->agg;
}

#endif
