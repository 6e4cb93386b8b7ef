/*
 * Internal: monotonic reads across a standby's restart.
 *
 * A hot standby stopped without a restartpoint (an immediate stop, a
 * crash) and started again takes sessions as soon as its replay reaches
 * its minRecoveryPoint, which can be behind what it had replayed, and
 * served, before: for a while it serves an older state than it did (a
 * table created minutes ago missing, 42P01).  A reader that saw newer data
 * there, or anywhere, would read back in time.
 *
 * So each host keeps the highest replay position it reported (pgg_hold.high:
 * the health probes', and the answers of reads that checked it in their
 * round trip, up to each probe).  A sign that it may have gone back (its
 * sessions ended, its probe's session dead, a probe failed, the host
 * unreachable) makes it suspect: nothing changes while it is down, but
 * once it is reached again no read runs on a new session there before its
 * replay position is checked (pool.c, role_fits; health.c, the probe).  A
 * check below `high` holds it back from reads (`until`: the position it
 * must replay first) until a probe shows it replayed that far again.
 * Writes are not affected (a held host that turns out to be primary is
 * released: a primary has every record it wrote).
 *
 * Zero cost on the path of a call: the hold is a value of the word the
 * router reads already (`lag`, the replay lag behind the primary, -1
 * unknown): PGG_LAG_HELD is above every max_replica_lag_bytes, and "no
 * limit" is the largest lag short of it (pgg__pool_lag_ok: one
 * comparison, where it made three).  The measured lag goes on in
 * `lag_measured`, for stats.
 *
 * Who writes: the health thread (probes: suspect, hold, release, lag),
 * calls on their cold paths (a dead idle session found at borrow: suspect;
 * a new session's check: hold or clear), role changes (promoted: release).
 * Atomics only.
 */
#ifndef PGG_HOLD_H
#define PGG_HOLD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* lag while the host is held back from reads. */
#define PGG_LAG_HELD INT64_MAX
/* The lag limit meaning "no limit" (max_replica_lag_bytes=0): every lag
 * but PGG_LAG_HELD is within it. */
#define PGG_LAG_NO_LIMIT (INT64_MAX - 1)

typedef struct pgg_hold {
    /* The router's word: the lag behind the primary in bytes, -1 unknown,
     * PGG_LAG_HELD while held.  Read by every call (host.h keeps it on the
     * line of the role). */
    _Atomic int_fast64_t lag;
    /* The lag as last measured (-1 unknown), held or not: stats. */
    _Atomic int_fast64_t lag_measured;
    /* The highest replay position the host reported (0: none yet), and
     * when (the clock, ns): a primary's position probed later and below
     * it means another history (a restore, a rebuilt cluster), not a
     * standby behind itself. */
    _Atomic uint64_t high;
    _Atomic int_fast64_t high_at;
    /* Held: the position it must have replayed before reads go there
     * again (0: not held); and why, a static string. */
    _Atomic uint64_t until;
    _Atomic(const char *) why;
    /* The replay position its last probe reported (0: none): stats. */
    _Atomic uint64_t replay;
    /* A sign that it may have gone back (its sessions ended, its probe's
     * session died, unreachable): nothing changes for the router, which
     * keeps trying it as ever while it is down; but once it is reached
     * again, no read runs on a new session there before its replay
     * position is checked (by that read in one round trip, or by the
     * health probe first).  Cleared by a check that finds it there.
     * PGG_SUSPECT_DOWN: it was seen down (unreachable, starting up), not
     * only its sessions ended (a pg_terminate_backend blip looks the
     * same as a restart from those): an event loop, which cannot check a
     * session itself, holds only such a host (pool.c, replay_checked). */
    _Atomic int suspect;
} pgg_hold;

void pgg__hold_init(pgg_hold *hd);

/* Held back from reads?  One relaxed load. */
static inline bool pgg__hold_on(const pgg_hold *hd)
{
    return atomic_load_explicit(&hd->lag, memory_order_relaxed) == PGG_LAG_HELD;
}

enum { PGG_SUSPECT_ENDED = 1, PGG_SUSPECT_DOWN = 2 };

/* A sign that the host may have gone back (hold.suspect, how: one of the
 * above; the stronger stays); nothing when it reported no replay position
 * or is primary. */
void pgg__hold_suspect(pgg_hold *hd, bool is_primary, int how, const char *why);

/* 0: not suspect, else PGG_SUSPECT_*. */
static inline int pgg__hold_suspected(const pgg_hold *hd)
{
    return atomic_load_explicit(&hd->suspect, memory_order_relaxed);
}

/*
 * Held back from reads until a probe shows it replayed `high` (a new
 * session of a suspect host that could not be checked).  Nothing when it
 * reported no replay position (never a standby seen: nothing to go back
 * from) or is primary (is_primary).  Returns true when it was not held
 * before.
 */
bool pgg__hold_set(pgg_hold *hd, bool is_primary, const char *why);

/* Not held any more (caught up, or primary now).  Returns true when it was. */
bool pgg__hold_release(pgg_hold *hd);

/* The measured lag (-1 unknown): the router's word too, unless held. */
void pgg__hold_lag(pgg_hold *hd, int64_t lag);

/* What a standby's probe (or a read's check of a new session) said: its
 * replay position `replay`, with `seen` the highest position known of it
 * before that probe was sent (answers included), at now.  Holds it when
 * behind (returns -1 when newly held); there, no longer suspect, and
 * released when held (+1), else 0. */
int pgg__hold_probed(pgg_hold *hd, uint64_t replay, uint64_t seen,
                     int64_t now);

/* The primary's position `lsn`, probed at `at`: a high position learnt
 * before it and beyond it is from another history (the cluster restored,
 * rebuilt): forgotten, and a hold on it released (returns true then). */
bool pgg__hold_primary_at(pgg_hold *hd, uint64_t lsn, int64_t at);

#endif
