/*
 * Internal: one host's circuit breaker.
 *
 * States (the public pgg_breaker_state): closed, open, half-open, and the
 * operator's forced-open, disabled and metrics-only.
 *
 * Closed -> open when any enabled condition holds after a recorded call:
 *   - failure rate >= failure_rate % over a window holding >= min_calls calls;
 *   - slow-call rate >= slow_call_rate % over the same window (a call is slow
 *     when its duration is strictly greater than slow_call_duration_ms,
 *     whether it succeeded or not);
 *   - consecutive_failures failures in a row (no min_calls needed);
 *   - the optional trip predicate, asked after every failure (gobreaker's
 *     ReadyToTrip), returns true.
 * Open -> half-open once the open time has elapsed: the next allow(), tick()
 *   or stats() at or after that instant moves it, so the pool's health thread
 *   can make it happen without traffic.  (open_strict: only strictly after
 *   it, as gobreaker and resilience4j; half_open_on_call_only: only allow()
 *   moves it, as resilience4j without its automatic transition.)
 * Half-open admits at most half_open_probes probe calls (a permit is given
 *   back when its call reports IGNORED) and tells everyone else "not now".
 *   With half_open_successes = S > 0 it closes as soon as S probes have
 *   succeeded without being slow, and reopens as soon as that has become
 *   impossible (more than probes - S failed or slow probes; with S equal to
 *   probes, the default, the first bad probe reopens it).  With S = 0 it
 *   waits for `probes` results (half_open_decide_early: min(min_calls,
 *   probes), as resilience4j) and closes when both rates are under their
 *   thresholds, as resilience4j does.  A half-open state older than
 *   half_open_max_ms (probes that never report) reopens.
 * Open time: open_ms * open_multiplier^k, capped at open_max_ms, minus a
 *   random fraction of at most open_jitter of it.  k counts the openings of
 *   the current unhealthy streak; each full healthy_decay_ms spent closed
 *   takes one off it (0: closing resets it, resilience4j's behaviour).
 *
 * Every admission returns a ticket holding the generation it was admitted
 * in (and its window's admission mark).  Every transition (and every
 * interval roll-over of a fixed window) starts a new generation, and a
 * result reported with an older ticket is counted as stale and otherwise
 * dropped: a call admitted while closed that finishes after the breaker
 * opened changes nothing (late_results_count: it counts in the current
 * state instead, as resilience4j).
 *
 * Presets (breaker.preset) build all of the above from gobreaker v2's or
 * resilience4j's own settings: see pgg__breaker_config_effective().
 *
 * Listeners hear every transition with from, to and the reason.  They run
 * with no lock held, one at a time and in transition order, on the thread
 * that made the transition (or on a thread already delivering events, which
 * delivers the newcomers before returning, or on the thread that held the
 * lock when the deliverer could not take it back: delivery never waits for
 * the lock).  A listener may call any
 * function of this breaker, including ones that cause transitions: those are
 * queued and delivered after it returns.  The trip predicate, by contrast,
 * runs under the breaker's lock and must not call into the breaker.
 *
 * Thread-safe.  No heap allocation after init.  Rejection while open or
 * forced-open takes no lock.  While closed, with a count window, no
 * interval, and rates far enough from their thresholds that no success
 * could trip them, admissions and results of successes that were not slow
 * take no lock either: they are counted in one atomic word and folded into
 * the window, in the same order, by the next locked operation (breaker.c,
 * "The closed fast path").  Everything else takes one short mutex, but a
 * result never waits for it: when it is busy the result is queued (a
 * note) and applied by the holder before it unlocks (breaker.c, "Notes"),
 * and pgg__breaker_try_allow, the event loop's admission, never waits
 * either.  Listeners are delivered by whichever thread holds the lock
 * when the deliverer cannot take it back.
 */
#ifndef PGG_BREAKER_H
#define PGG_BREAKER_H

#include "counter.h"
#include "pgguard.h"
#include "window.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* The state a breaker starts in (reset always returns it to closed). */
typedef enum pgg_breaker_mode {
    PGG_BREAKER_MODE_NORMAL = 0,       /* closed, and free to trip */
    PGG_BREAKER_MODE_DISABLED = 1,     /* always admits, records nothing */
    PGG_BREAKER_MODE_METRICS_ONLY = 2, /* always admits, records, never trips */
    PGG_BREAKER_MODE_FORCED_OPEN = 3   /* admits nothing */
} pgg_breaker_mode;

/* "normal", "disabled", "metrics-only", "forced-open". */
const char *pgg__breaker_mode_name(pgg_breaker_mode mode);
/* Parse one of those names ('_' accepted for '-'); false if unknown. */
bool pgg__breaker_mode_parse(const char *s, pgg_breaker_mode *out);

/* Why a transition happened. */
typedef enum pgg_breaker_reason {
    PGG_BREAKER_REASON_FAILURE_RATE = 0,     /* closed->open, half-open->open */
    PGG_BREAKER_REASON_SLOW_CALL_RATE,       /* closed->open, half-open->open */
    PGG_BREAKER_REASON_CONSECUTIVE_FAILURES, /* closed->open */
    PGG_BREAKER_REASON_TRIP_PREDICATE,       /* closed->open */
    PGG_BREAKER_REASON_OPEN_ELAPSED,         /* open->half-open */
    PGG_BREAKER_REASON_PROBES_PASSED,        /* half-open->closed */
    PGG_BREAKER_REASON_PROBES_FAILED,        /* half-open->open */
    PGG_BREAKER_REASON_HALF_OPEN_TIMEOUT,    /* half-open->open */
    PGG_BREAKER_REASON_FORCED,               /* force_open / disable / metrics_only */
    PGG_BREAKER_REASON_RESET,                /* reset (from may equal to) */
    PGG_BREAKER_REASON_MANUAL,               /* pgg__breaker_transition */
    PGG_BREAKER_REASON_HOST_ANSWERED,        /* open->half-open: pgg__breaker_host_answered */
    PGG_BREAKER_REASON_HOST_BACK,            /* open or half-open->closed:
                                                pgg__breaker_host_back */
    PGG_BREAKER_REASON_HOST_SILENT           /* closed->open:
                                                pgg__breaker_host_silent */
} pgg_breaker_reason;

/* "failure-rate", "slow-call-rate", ...; never NULL. */
const char *pgg__breaker_reason_name(pgg_breaker_reason reason);

/*
 * What the trip predicate sees: gobreaker's Counts, plus the window.  Every
 * count describes the same window (window.h, "Requests"): requests is the
 * window's results plus the calls admitted since it was last cleared and
 * still running, or, in a time window that buckets by admission (the
 * gobreaker preset's rolling window), the calls admitted in its buckets.
 * So window.failures / requests is a ratio over one window, and it does
 * not shrink the longer the breaker stays closed.
 */
typedef struct pgg_breaker_counts {
    uint64_t requests;       /* == window.requests */
    pgg_window_stats window; /* successes = calls - failures */
} pgg_breaker_counts;

/* A library whose breaker the configuration reproduces (breaker.preset). */
typedef enum pgg_breaker_preset {
    PGG_BREAKER_PRESET_NONE = 0,        /* pgguard's own keys */
    PGG_BREAKER_PRESET_GOBREAKER = 1,   /* sony/gobreaker v2 */
    PGG_BREAKER_PRESET_RESILIENCE4J = 2 /* resilience4j CircuitBreaker */
} pgg_breaker_preset;

/* "none", "gobreaker", "resilience4j"; "unknown" otherwise. */
const char *pgg__breaker_preset_name(pgg_breaker_preset preset);

/*
 * gobreaker v2's Settings ("breaker.gobreaker.*" keys), with its own
 * meaning of zero: MaxRequests 0 is 1, Interval 0 never clears, Timeout 0
 * is 60 s, BucketPeriod 0 is a fixed window.  Its default ReadyToTrip is
 * "ConsecutiveFailures > consecutive_failures" [5]; a trip predicate set
 * in the C config replaces it, as a custom ReadyToTrip does.
 */
typedef struct pgg_gobreaker_settings {
    uint32_t max_requests;         /* MaxRequests [0] */
    int64_t interval_ms;           /* Interval [0] */
    int64_t bucket_period_ms;      /* BucketPeriod [0] */
    int64_t timeout_ms;            /* Timeout [0] */
    uint32_t consecutive_failures; /* default ReadyToTrip's 5 [5] */
} pgg_gobreaker_settings;

typedef enum pgg_r4j_window_type {
    PGG_R4J_COUNT_BASED = 0,
    PGG_R4J_TIME_BASED = 1
} pgg_r4j_window_type;

/*
 * resilience4j's CircuitBreakerConfig ("breaker.resilience4j.*" keys),
 * resilience4j's defaults in brackets.
 */
typedef struct pgg_resilience4j_settings {
    pgg_r4j_window_type sliding_window_type;          /* [COUNT_BASED] */
    uint32_t sliding_window_size;                     /* calls or seconds [100] */
    uint32_t minimum_number_of_calls;                 /* [100] */
    double failure_rate_threshold;                    /* % (0,100] [50] */
    double slow_call_rate_threshold;                  /* % (0,100] [100] */
    int64_t slow_call_duration_threshold_ms;          /* [60000] */
    int64_t wait_duration_in_open_state_ms;           /* [60000] */
    uint32_t permitted_calls_in_half_open_state; /* [10] */
    bool automatic_transition; /* [false] */
    int64_t max_wait_duration_in_half_open_state_ms;  /* 0: none [0] */
    /* waitIntervalFunctionInOpenState = IntervalFunction.ofExponentialBackoff(
     * wait_duration_in_open_state, multiplier, max) when enabled. */
    bool enable_exponential_backoff;                  /* [false] */
    double exponential_backoff_multiplier;            /* [1.5] */
    int64_t exponential_max_wait_ms;                  /* 0: no maximum [0] */
} pgg_resilience4j_settings;

typedef bool (*pgg_breaker_trip_fn)(void *ud, const pgg_breaker_counts *counts);
typedef void (*pgg_breaker_listener)(void *ud, pgg_breaker_state from,
                                     pgg_breaker_state to,
                                     pgg_breaker_reason reason);

/*
 * Every setting.  Field names are the config keys without "breaker."; the
 * defaults (pgg__breaker_config_defaults) are given in brackets.
 */
typedef struct pgg_breaker_config {
    double failure_rate;           /* % of calls failed to trip; 0 off [50] */
    double slow_call_rate;         /* % of calls slow to trip; 0 off [100] */
    int64_t slow_call_duration_ms; /* slower than this is slow, > 0 [10000] */
    uint32_t min_calls;            /* calls before a rate counts, >= 1 [20]
                                      (a count window caps it at its size) */
    pgg_window_type window_type;   /* count, time or fixed [count] */
    uint32_t window_size;          /* calls (count) or buckets (time) [100] */
    int64_t window_bucket_ms;      /* bucket width of a time window [1000] */
    uint32_t consecutive_failures; /* failures in a row to trip; 0 off [5] */
    int64_t open_ms;               /* first open time, > 0 [5000] */
    double open_multiplier;        /* growth per reopening, >= 1 [2] */
    int64_t open_max_ms;           /* cap, >= open_ms [60000] */
    double open_jitter;            /* fraction taken off at random, [0,1) [0.2] */
    uint32_t half_open_probes;     /* probe permits, >= 1 [3] */
    uint32_t half_open_successes;  /* good probes to close, <= probes;
                                      0: judge by rates after all probes [3] */
    int64_t half_open_max_ms;      /* longest half-open stay; 0 none [30000] */
    int64_t healthy_decay_ms;      /* closed time that forgives one reopening;
                                      0: closing forgives all [60000] */
    int64_t interval_ms;           /* clear the window this often while
                                      closed (gobreaker Interval); 0 never [0] */
    pgg_breaker_mode mode;         /* [normal] */
    bool answer_closes;            /* pgg__breaker_host_back may close it [true] */
    bool silence_opens;            /* pgg__breaker_host_silent may open it [true] */

    /*
     * breaker.preset: with one set, the breaker is built from that
     * library's settings below (pgg__breaker_config_effective) and every
     * other key above except mode is not used.
     */
    pgg_breaker_preset preset;            /* [none] */
    pgg_gobreaker_settings gobreaker;
    pgg_resilience4j_settings resilience4j;

    /*
     * Semantics the presets select; not config keys.  Defaults are
     * pgguard's own behaviour.
     */
    bool window_by_admission; /* time window: bucket a result by its admission */
    bool window_aligned;      /* time window: buckets at multiples of their width */
    bool open_strict;         /* half-open only once the open time has strictly
                                 passed (gobreaker's expiry.Before(now),
                                 resilience4j's isAfter) [false: at its end] */
    bool half_open_on_call_only; /* only a call ends the open time, not tick()
                                    or stats() (resilience4j without automatic
                                    transition) [false] */
    bool late_results_count;  /* a result admitted in an ended generation
                                 counts in the current state, as resilience4j
                                 does [false: dropped as stale] */
    bool half_open_decide_early; /* half_open_successes 0: decide after
                                    min(min_calls, probes) results, as
                                    resilience4j [false: after all probes] */

    /* Not config keys. */
    pgg_breaker_trip_fn trip; /* optional extra trip condition [NULL] */
    void *trip_ud;
    uint64_t seed; /* jitter's random seed; 0 picks one [0] */
} pgg_breaker_config;

/* Fill *cfg with the defaults above. */
void pgg__breaker_config_defaults(pgg_breaker_config *cfg);

/*
 * NULL when *cfg is valid, else a static message that starts with the
 * offending key ("breaker.failure_rate must be ...").
 */
const char *pgg__breaker_config_check(const pgg_breaker_config *cfg);

/*
 * The configuration a breaker runs with: *in itself without a preset;
 * with one, pgguard's defaults overwritten by the preset's settings (mode,
 * trip, trip_ud and seed are kept from *in).  in may equal out.
 *
 * gobreaker: a fixed window cleared every Interval (never when 0), or with
 * a BucketPeriod a time window of ceil(Interval / BucketPeriod) buckets
 * that buckets by admission; ConsecutiveFailures > N trips (or the trip
 * predicate alone, when set); a constant Timeout, ended strictly after it;
 * MaxRequests probes that must all succeed; no rates, no half-open limit.
 *
 * resilience4j: a count window of sliding_window_size calls or a time
 * window of that many 1 s buckets aligned on the clock's seconds, bucketed
 * by completion; the two rate thresholds over minimum_number_of_calls; a
 * constant wait in open, ended strictly after it by a call, or by tick()
 * at its end with the automatic transition; permitted probes judged by the
 * rates after min(minimum_number_of_calls, permitted) results; late results
 * count in the state they arrive in.
 */
void pgg__breaker_config_effective(const pgg_breaker_config *in,
                                   pgg_breaker_config *out);

/*
 * gobreaker v2 with the given MaxRequests, Interval and Timeout, no
 * BucketPeriod and the default ReadyToTrip: defaults, preset gobreaker,
 * and the effective settings filled in (see above).  Set cfg->trip for a
 * custom ReadyToTrip.
 */
void pgg__breaker_config_gobreaker(pgg_breaker_config *cfg,
                                   uint32_t max_requests, int64_t interval_ms,
                                   int64_t timeout_ms);

/* Admission proof; pass it back, by value, to pgg__breaker_record(). */
typedef struct pgg_ticket {
    uint64_t generation;
    int64_t mark;            /* the window's admission mark (window.h) */
    pgg_breaker_state state; /* the state that admitted (or refused) it */
    uint32_t flags;          /* PGG_TICKET_* */
} pgg_ticket;

#define PGG_TICKET_PERMIT 0x1u    /* holds one half-open probe permit */
#define PGG_TICKET_UNTRACKED 0x2u /* admitted while disabled: record is a no-op */
#define PGG_TICKET_FAST 0x4u      /* admitted by the closed fast path (no mark) */
#define PGG_TICKET_NOTED 0x8u     /* admitted while the lock was busy, its
                                     admission queued (no mark; its result
                                     never takes the fast path, which could
                                     count it before its admission) */

#define PGG_BREAKER_MAX_LISTENERS 4
#define PGG_BREAKER_EVENT_QUEUE 32
/* Results and admissions that may wait queued for the lock's holder at
 * once (one bit each of a 64-bit word). */
#define PGG_BREAKER_NOTES 64

/* A result or an admission made while the lock was busy (breaker.c,
 * "Notes"): written by its caller, applied by the lock's holder. */
typedef struct pgg_breaker_note {
    pgg_ticket ticket;
    int64_t now;       /* the caller's time, as the locked path gets it */
    uint32_t next;     /* the note pushed before it: index + 1, 0 none */
    uint8_t kind;      /* breaker.c's NOTE_* */
    uint8_t outcome;   /* pgg_outcome */
    bool slow;
} pgg_breaker_note;

typedef struct pgg_breaker_event {
    pgg_breaker_state from;
    pgg_breaker_state to;
    pgg_breaker_reason reason;
} pgg_breaker_event;

/* A snapshot; see pgg__breaker_stats(). */
typedef struct pgg_breaker_stats {
    pgg_breaker_state state;
    uint64_t generation;
    int64_t state_since_ns;    /* when the current state began */
    int64_t open_remaining_ns; /* open: time left until half-open; else 0 */
    int64_t open_duration_ns;  /* length of the current or last open period */
    uint32_t reopens;          /* openings in the current streak (decayed) */

    /*
     * The closed-state window: live while closed or metrics-only, frozen
     * as it was at the trip while open and half-open.
     */
    pgg_window_stats window;
    double failure_rate;   /* %, or -1 below min_calls */
    double slow_call_rate; /* %, or -1 below min_calls */
    uint64_t requests;     /* closed, metrics-only: the window's requests,
                              as the trip predicate sees them; otherwise
                              admitted in this generation */

    /* Half-open only. */
    uint32_t probes_admitted; /* permits in use, finished or not */
    uint32_t probes_in_flight;
    uint32_t probe_successes;
    uint32_t probe_failures;
    uint32_t probe_slow;

    /* Totals since init. */
    uint64_t admitted;    /* allow() said yes (never counted while disabled) */
    uint64_t rejected;    /* allow() said no */
    uint64_t successes;   /* results counted, by outcome */
    uint64_t failures;
    uint64_t ignored;
    uint64_t stale;       /* results dropped: their generation had ended
                             (or, bucketed by admission, their admission
                             bucket had left the window) */
    uint64_t transitions;
    uint64_t trips_suppressed; /* metrics-only: times it would have tripped */
    uint64_t events_dropped;   /* listener queue overflowed (oldest dropped) */
    uint64_t noted;       /* results and admissions made while the lock was
                             busy, applied by its holder (breaker.c, "Notes") */
    uint64_t notes_full;  /* results that found every note taken and waited
                             for the lock */
} pgg_breaker_stats;

typedef struct pgg_breaker {
    /* Read without the lock by allow()'s fast paths, written only on a
     * change of state: kept off the lock's cache line (padding, as whatever
     * embeds a breaker need not be aligned), so that refusals while open
     * read a line nobody writes. */
    _Atomic uint32_t pub_state;
    _Atomic int64_t pub_open_until;
    /* The closed fast path (breaker.c): its word, and the generation it
     * belongs to.  Written by calls only while closed, when refusals are
     * not being served from this line. */
    _Atomic uint64_t fast;
    _Atomic uint64_t pub_generation;
    char pad_pub[128];
    /* Refusals without the lock, counted per thread stripe: one shared
     * counter cost every refusing thread a contended add. */
    pgg_counter rejected_fast;

    /* Notes (breaker.c): the free ones (bit i: notes[i]), the pushed ones
     * (a stack: index + 1 of the newest, 0 none), and a delivery of
     * listener events its deliverer handed to the lock's holder. */
    _Atomic uint64_t notes_free;
    _Atomic uint32_t notes_head;
    _Atomic bool orphaned;
    pgg_breaker_note notes[PGG_BREAKER_NOTES];
    /* Under the lock: the closed word the last fold() left in `fast`. */
    uint64_t fast_closed;

    pthread_mutex_t mu;
    pgg_breaker_config cfg;
    int64_t slow_ns, open_ns, open_max_ns, half_open_max_ns, decay_ns, interval_ns;
    uint32_t min_calls;       /* effective */
    uint32_t half_open_decide; /* results that decide half-open, successes 0 */

    pgg_breaker_state state;
    uint64_t generation;
    int64_t since;       /* current state's start */
    int64_t open_until;  /* open: when half-open may begin */
    int64_t open_len;    /* last open period's length */
    int64_t closed_since;
    int64_t interval_end; /* closed, fixed interval: roll over after this */
    uint32_t reopens;
    /* Openings of the streak after the host came back (decayed as reopens):
     * from closed, or from half-open once the host answered since it
     * opened (`answered`).  pgg__breaker_host_back closes only the first. */
    uint32_t relapses;
    bool answered;
    uint64_t requests;
    uint64_t rng;

    pgg_window window;
    uint32_t probes_admitted, probe_successes, probe_failures, probe_slow;
    uint32_t probe_good, probe_bad;

    uint64_t admitted, successes, failures, ignored, stale, transitions,
        trips_suppressed, events_dropped, rejected_locked, noted, notes_full;

    struct {
        pgg_breaker_listener fn;
        void *ud;
    } listeners[PGG_BREAKER_MAX_LISTENERS];
    pgg_breaker_event events[PGG_BREAKER_EVENT_QUEUE];
    uint32_t ev_head, ev_count;
    bool dispatching;
} pgg_breaker;

/*
 * Initialise an embedded breaker at instant now (the start of its first
 * state).  Returns PGG_OK, PGG_ECONFIG (err->message names the key) or
 * PGG_ENOMEM.  On failure there is nothing to destroy.
 */
int pgg__breaker_init(pgg_breaker *b, const pgg_breaker_config *cfg,
                      int64_t now, pgg_error *err);
/* No other thread may use b any more.  Accepts NULL. */
void pgg__breaker_destroy(pgg_breaker *b);

/* Heap variants of init/destroy; NULL on failure.  _free accepts NULL. */
pgg_breaker *pgg__breaker_new(const pgg_breaker_config *cfg, int64_t now,
                              pgg_error *err);
void pgg__breaker_free(pgg_breaker *b);

/*
 * May a call go to this host now?  True: the call is admitted and *ticket
 * must be passed to exactly one pgg__breaker_record() (IGNORED if the call
 * never ran).  False: "not now" (open, forced-open, or no half-open permit
 * left); nothing to record.  Applies due time-driven transitions first.
 */
static inline bool pgg__breaker_allow(pgg_breaker *b, int64_t now,
                                      pgg_ticket *ticket);

/*
 * allow() for a thread that must not wait for another (an event loop's):
 * PGG_BREAKER_ADMITTED and PGG_BREAKER_REFUSED mean what allow()'s true
 * and false do; PGG_BREAKER_BUSY (nothing to record) means the answer
 * needs the lock and another thread holds it: look again shortly (the
 * answer must not depend on a lock race).  Never waits.  A closed (or
 * metrics-only) breaker without an interval and whose window does not
 * bucket by admission admits even then: its admission is queued and
 * counted by the holder, as the fast path's are (breaker.c, "Notes");
 * half-open (permits), open past its time (the move to half-open),
 * closed with an interval (the roll-over) or bucketing by admission (the
 * bucket) answer BUSY.
 */
enum {
    PGG_BREAKER_REFUSED = 0,
    PGG_BREAKER_ADMITTED = 1,
    PGG_BREAKER_BUSY = -1
};
static inline int pgg__breaker_try_allow(pgg_breaker *b, int64_t now,
                                         pgg_ticket *ticket);

/*
 * Report how an admitted call went.  duration_ns decides whether it was
 * slow; now is when it finished.  Results from an ended generation are
 * counted as stale and change nothing else.  Never waits for the lock
 * while a note is free: a busy lock's holder applies it, with this now,
 * before it unlocks.
 */
static inline void pgg__breaker_record(pgg_breaker *b, pgg_ticket ticket,
                                       pgg_outcome outcome,
                                       int64_t duration_ns, int64_t now);

/*
 * The closed fast path (breaker.c, "The closed fast path"), inline: every
 * call admits and records, and on a closed breaker with room that is one
 * compare-and-swap each.  The word: the low 32 bits of the generation it
 * belongs to, an OK bit, the admissions (A) and the successes (P) made
 * without the lock since the last fold.
 */
#define PGG_BREAKER_FAST_P_MASK UINT64_C(0xFFFF)
#define PGG_BREAKER_FAST_A_ONE (UINT64_C(1) << 16)
#define PGG_BREAKER_FAST_A_MASK (UINT64_C(0x7FFF) << 16)
#define PGG_BREAKER_FAST_OK (UINT64_C(1) << 31)
/* Successes a fold applies one by one under the lock: at most this many,
 * so that a fold holds the lock briefly. */
#define PGG_BREAKER_FAST_P_MAX 1024u

/* The rest of allow and record, under the lock (breaker.c). */
bool pgg__breaker_allow_slow(pgg_breaker *b, int64_t now, pgg_ticket *ticket);
int pgg__breaker_try_allow_slow(pgg_breaker *b, int64_t now, pgg_ticket *ticket);
void pgg__breaker_record_slow(pgg_breaker *b, const pgg_ticket *ticket,
                              pgg_outcome outcome, bool slow, int64_t now);

/* The closed fast path's admission; false: ask the slow half. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline bool pgg__breaker_allow_fast(pgg_breaker *b, pgg_ticket *ticket)
{
    uint64_t w = atomic_load_explicit(&b->fast, memory_order_acquire);
    uint64_t g;

    if (!(w & PGG_BREAKER_FAST_OK) ||
        (w & PGG_BREAKER_FAST_A_MASK) == PGG_BREAKER_FAST_A_MASK)
        return false;
    g = atomic_load_explicit(&b->pub_generation, memory_order_relaxed);
    if ((uint32_t)g != (uint32_t)(w >> 32) ||
        !atomic_compare_exchange_strong_explicit(
            &b->fast, &w, w + PGG_BREAKER_FAST_A_ONE, memory_order_relaxed,
            memory_order_relaxed))
        return false;
    ticket->generation = g;
    ticket->mark = 0;
    ticket->state = PGG_BREAKER_CLOSED;
    ticket->flags = PGG_TICKET_FAST;
    return true;
}

static inline bool pgg__breaker_allow(pgg_breaker *b, int64_t now,
                                      pgg_ticket *ticket)
{
    if (pgg__breaker_allow_fast(b, ticket))
        return true;
    return pgg__breaker_allow_slow(b, now, ticket);
}

static inline int pgg__breaker_try_allow(pgg_breaker *b, int64_t now,
                                         pgg_ticket *ticket)
{
    if (pgg__breaker_allow_fast(b, ticket))
        return PGG_BREAKER_ADMITTED;
    return pgg__breaker_try_allow_slow(b, now, ticket);
}

/* pgg__breaker_record with the ticket by address (the pool's path of
 * every call): a 24-byte ticket by value is copied to the stack for the
 * locked half, even when the fast path returns first. */
static inline void pgg__breaker_record_held(pgg_breaker *b,
                                            const pgg_ticket *ticket,
                                            pgg_outcome outcome,
                                            int64_t duration_ns, int64_t now)
{
    bool slow;
    uint64_t w;

    if (ticket->flags & PGG_TICKET_UNTRACKED)
        return;
    slow = outcome != PGG_OUTCOME_IGNORED && duration_ns > b->slow_ns;
    if (outcome == PGG_OUTCOME_SUCCESS && !slow &&
        !(ticket->flags & (PGG_TICKET_PERMIT | PGG_TICKET_NOTED))) {
        w = atomic_load_explicit(&b->fast, memory_order_acquire);
        if ((w & PGG_BREAKER_FAST_OK) &&
            (w & PGG_BREAKER_FAST_P_MASK) < PGG_BREAKER_FAST_P_MAX &&
            (uint32_t)(w >> 32) == (uint32_t)ticket->generation &&
            atomic_load_explicit(&b->pub_generation, memory_order_relaxed) ==
                ticket->generation &&
            atomic_compare_exchange_strong_explicit(&b->fast, &w, w + 1,
                                                    memory_order_relaxed,
                                                    memory_order_relaxed))
            return;
    }
    pgg__breaker_record_slow(b, ticket, outcome, slow, now);
}

static inline void pgg__breaker_record(pgg_breaker *b, pgg_ticket ticket,
                                       pgg_outcome outcome,
                                       int64_t duration_ns, int64_t now)
{
    pgg__breaker_record_held(b, &ticket, outcome, duration_ns, now);
}

/* For tests: when set, a section ending in unlock_and_dispatch runs it
 * under the lock, after applying the notes and just before it unlocks (the
 * moment a note pushed now is the unlocker's recheck's to apply). */
typedef void (*pgg__breaker_hook)(pgg_breaker *b);
extern _Atomic(pgg__breaker_hook) pgg__breaker_unlock_hook;

/*
 * Apply the time-driven transitions due at now (open -> half-open,
 * half-open timeout, interval roll-over) without any call, and return the
 * next instant at which one may be due (PGG_TIME_NEVER for none).
 */
int64_t pgg__breaker_tick(pgg_breaker *b, int64_t now);

/* The stored state, lock-free.  Use tick() first for the state at now. */
pgg_breaker_state pgg__breaker_state(const pgg_breaker *b);

/* tick(now), then a consistent snapshot into *out. */
void pgg__breaker_stats(pgg_breaker *b, int64_t now, pgg_breaker_stats *out);

/*
 * Add a transition listener (up to PGG_BREAKER_MAX_LISTENERS); returns
 * PGG_OK or PGG_ENOMEM when full.  Removing takes the same (fn, ud) pair;
 * a listener being called while it is removed may still hear that event.
 */
int pgg__breaker_listen(pgg_breaker *b, pgg_breaker_listener fn, void *ud);
void pgg__breaker_unlisten(pgg_breaker *b, pgg_breaker_listener fn, void *ud);

/*
 * Operator control.  force_open, disable and metrics_only enter those
 * states (reason FORCED); reset returns to closed with an empty window and
 * a forgiven streak (reason RESET, even from closed).  transition() moves
 * to closed, open or half-open by hand (reason MANUAL; an open period is
 * as long as the backoff says) and returns PGG_EINVAL for other states.
 */
void pgg__breaker_force_open(pgg_breaker *b, int64_t now);
void pgg__breaker_disable(pgg_breaker *b, int64_t now);
void pgg__breaker_metrics_only(pgg_breaker *b, int64_t now);
void pgg__breaker_reset(pgg_breaker *b, int64_t now);
int pgg__breaker_transition(pgg_breaker *b, pgg_breaker_state to, int64_t now);

/*
 * An active health check reached the host while the breaker is open: move
 * to half-open now instead of waiting out the (backed-off) open time, so
 * that real probes decide sooner.  Only from open, never from forced-open,
 * and never under a preset (neither library ends its open time early);
 * returns whether it moved.  Envoy's active health checking plays the same
 * part beside its outlier detection.
 */
bool pgg__breaker_host_answered(pgg_breaker *b, int64_t now);

/*
 * An active health check opened a session on the host while the breaker is
 * open or half-open, and the host has not failed again since it first came
 * back in its unhealthy streak: the outage is over, close now, so that
 * calls flow at once (a stopped, hung or restarted server is back the
 * moment it takes a session).  An open time that ran out while the host
 * was still down, and the half-open trial that failed then, are the same
 * outage, not a return (a restart longer than open_ms: before, its first
 * session only put the breaker on trial, and calls were refused meanwhile).
 * A host that failed again after coming back (an opening from closed, or a
 * failed trial once the host had answered a health check: `relapses`)
 * answers health checks but not calls: it is left to half-open trials
 * (pgg__breaker_host_answered), which reopen it on one bad call.  Only for
 * pgguard's own breaker (no preset: neither library ends its open time
 * early) with answer_closes set, never from forced-open.  Returns whether
 * it closed.
 */
bool pgg__breaker_host_back(pgg_breaker *b, int64_t now);

/*
 * The host answered nothing for a whole health probe bound, counted from
 * a call that got no answer there before its deadline, and a probe of its
 * own sent since got none either (health.c, "A call that got no answer"):
 * the host is hung, not a statement slow.  Closed -> open now (reason
 * HOST_SILENT), instead of waiting for the failures those calls would
 * still add up to (consecutive_failures of them, one deadline apart for
 * each caller).  A timeout is one result whatever it says of the host;
 * this is the evidence that it says the host.  Only from closed (in
 * metrics-only it counts as a suppressed trip), only for pgguard's own
 * breaker (no preset: neither library has active checks) with
 * silence_opens set.  The open time and the streak are a trip's.  Returns
 * whether it opened.
 */
bool pgg__breaker_host_silent(pgg_breaker *b, int64_t now);

#endif
