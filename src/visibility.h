/*
 * Internal: read your writes across replicas.
 *
 * A write's visibility is a WAL position (an LSN): the primary's insert
 * position read right after the write committed, in the same pipeline as
 * the statement (read_your_writes=pool), or read later by a sample that
 * covers every write acknowledged before it (read_your_writes=sampled).  Every record up to it, the commit's included, has been
 * inserted, so a standby whose replay position has reached it shows the
 * write to every snapshot taken from then on.
 *
 * This module keeps what the pool knows about positions (the pool's latest
 * acknowledged write; each standby's replayed position, from health probes
 * and from answers) and decides where a read that needs a position goes:
 *
 *   1. a standby known to have replayed it: a plain read, no extra cost;
 *   2. else each standby the router offers, checked in the same round trip
 *      as the read (pipeline: its replay position, then the read, under one
 *      sync at read committed, with a sync between them otherwise); the
 *      answer is used only if the position was met;
 *   3. else wait (on a condition variable, no polling of our own: the
 *      health thread runs its rounds every read_your_writes.poll_ms while
 *      anyone waits) for a standby to reach it, at most
 *      read_your_writes.max_wait_ms and half the time left;
 *   4. then a standby that got there, or the primary (which has every write
 *      it acknowledged).  No host left: the call fails; old data never
 *      comes back.
 *
 * Thread-safe: positions are atomics read lock-free; the mutex is taken
 * only by readers that wait and by whoever wakes them.
 */
#ifndef PGG_VISIBILITY_H
#define PGG_VISIBILITY_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "classify.h"
#include "pgguard.h"

struct pgg_pool;
struct pgg_host;
struct pgg_link;
struct pgg_query;

typedef enum pgg_ryw_mode {
    PGG_RYW_OFF = 0,    /* only what a call's min_lsn asks */
    PGG_RYW_POOL = 1,   /* every read waits for the pool's latest write,
                           whose position every write learns */
    PGG_RYW_SAMPLED = 2 /* the same guarantee; writes only count, and a
                           read after new writes samples the primary's
                           position (one sample for all such reads) */
} pgg_ryw_mode;

typedef struct pgg_vis pgg_vis;

/* One call's visibility needs and what it learnt; lives on its stack. */
typedef struct pgg_vis_req {
    uint64_t need;   /* a read: the position its answer must include */
    uint64_t latest; /* the pool's latest write when the call began */
    bool want_lsn;   /* a write: learn the position of its commit */
    bool in_lease;   /* a lease's statement: never wrapped in BEGIN/COMMIT */
    bool checked;    /* the read went through a same-round-trip check */
    bool not_met;    /* the host had not replayed need: answer discarded */
    bool unmet_seen; /* some standby was behind during this call */
    bool waited;     /* the one wait of this call is spent */
    bool sample;     /* a read: needs a sample covering writes <= epoch */
    bool is_sample;  /* the sample's own query (answer: its position) */
    bool blind;      /* no position could be learnt: the primary only */
    uint64_t epoch;  /* the pool's acknowledged writes when it began */
    bool on_primary; /* a read with a position: a primary answered */
    uint64_t lsn;    /* out: see pgg_info.lsn */
    int64_t wait_ns; /* out: time spent waiting for a standby */
} pgg_vis_req;

/* cfg's read_your_writes* keys; NULL and *err when out of memory. */
pgg_vis *pgg__vis_new(int nhosts, int mode, int64_t max_wait_ms,
                      int64_t poll_ms, pgg_error *err);
/* No waiter may remain.  Accepts NULL. */
void pgg__vis_free(pgg_vis *v);
/* For tests (the loop guard): the waiting readers' lock (sample false)
 * and the sample's (true). */
pthread_mutex_t *pgg__vis_mutex(pgg_vis *v, bool sample);

/*
 * Fill *r for one call.  Returns true when the call needs this module on
 * its path (q->vis = r): a read with a position to meet, a write whose
 * position is wanted.  Cheap: a few loads.
 */
bool pgg__vis_begin(pgg_vis *v, pgg_intent intent, const pgg_call *call,
                    pgg_vis_req *r);
/* A lease: a read lease's acquisition needs the pool's latest write in
 * the pool-wide mode (unless PGG_CALL_ANY_LSN) and call->min_lsn (call
 * may be NULL); a write lease's statements want their position in the
 * pool-wide mode. */
bool pgg__vis_begin_lease(pgg_vis *v, pgg_intent intent, const pgg_call *call,
                          pgg_vis_req *r);

/*
 * Reorder the router's candidates for a read that needs r->need (first
 * pass: standbys known to have it, then standbys to check, no primary
 * while a wait may still bring a standby there; after the wait: standbys
 * known to have it, then the primary and hosts of unknown role).
 * Returns the new count.
 */
int pgg__vis_order(struct pgg_pool *pool, pgg_vis_req *r, bool can_check,
                   int *cand, int ncand);

/*
 * Run q on conn (pgg__link_exec's contract), the way r asks: a write
 * followed by its position, a read preceded by the host's replay
 * position.  Without r (q->vis NULL), exactly pgg__link_exec.
 */
int pgg__vis_exec(struct pgg_pool *pool, struct pgg_host *h,
                  struct pgg_link *l, const struct pgg_query *q,
                  int64_t deadline_ns, PGresult **out, pgg_attempt_end *end,
                  pgg_error *err);

/*
 * Does q run on h as it is (no position to learn or check)?  Then r's
 * position fields are set as pgg__vis_exec sets them for a plain run.  A
 * driver that runs queries itself (the event loop) runs only these.
 */
bool pgg__vis_plain(struct pgg_pool *pool, struct pgg_host *h,
                    const struct pgg_query *q);

/*
 * For a driver that runs a write that wants its position as two round
 * trips (the event loop; the blocking path's fallback, write_slow, does
 * the same): does the write's answer on conn call for its position (it
 * committed and the session is idle), the query that asks for it, and the
 * position in that query's answer (0: unknown).
 */
bool pgg__vis_write_learns(PGconn *conn, const PGresult *res);
const struct pgg_query *pgg__vis_lsn_query(void);
uint64_t pgg__vis_lsn_of(const PGresult *res);

/*
 * The answer in *res came from a host that had not replayed r->need:
 * clear it, so the call moves on.  Returns true when it did.
 */
bool pgg__vis_discard(pgg_vis_req *r, PGresult **res);

/*
 * Nothing served a read that needs a position: wait once (bounded) for a
 * standby to reach it, then reorder the router's fresh candidates for a
 * second pass.  Returns the new count, or 0 when there is no second pass
 * (then, when a standby was behind and err holds nothing yet, err says
 * PGG_ETIMEDOUT).  can_check: the call can check a standby's position in
 * its own round trip (a statement; not a lease's acquisition).
 */
int pgg__vis_retry(struct pgg_pool *pool, pgg_vis_req *r, int64_t deadline,
                   pgg_intent intent, bool can_check, int *cand,
                   pgg_error *err);

/* A call was served: a write's position becomes the pool's latest, and a
 * write counts (read_your_writes=sampled).  Any call, with r filled by
 * pgg__vis_begin, whether or not it needed this module on its path. */
void pgg__vis_served(pgg_vis *v, pgg_vis_req *r, pgg_intent intent);

/* A write lease ran a statement or was released: it counts as a write
 * (read_your_writes=sampled). */
void pgg__vis_wrote(pgg_vis *v);

/*
 * read_your_writes=sampled, r->sample: learn a primary's position taken
 * after every write this pool acknowledged before the call began (one
 * sample in flight per pool; calls that come meanwhile wait for it, or
 * for the next when they need newer writes), bounded by deadline.  Sets
 * r->need to it; when none could be learnt (no primary, deadline, the
 * sample failed), r->blind: only a primary may serve the read, and err
 * says why.  Returns the clock when done.  sample takes one (sample.h's
 * pgg__sample_primary): passed down, because taking it runs an attempt
 * (pool.c), which sits above this module.
 */
typedef int (*pgg_sample_fn)(struct pgg_pool *pool, int64_t deadline,
                             uint64_t *lsn, pgg_error *err);
int64_t pgg__vis_sample(struct pgg_pool *pool, pgg_vis_req *r,
                        int64_t deadline, pgg_sample_fn sample,
                        pgg_error *err);

/* The same without a round trip, for the event loop: the pool's last
 * sample when it covers the call's writes, else r->blind (a primary only). */
void pgg__vis_sample_known(struct pgg_pool *pool, pgg_vis_req *r);

/* A COPY statement (its first keyword, past blanks and comments): its data
 * comes from the caller on the raw connection, which pipeline mode cannot
 * carry. */
bool pgg__vis_is_copy(const char *sql);

/* The primary's position now, in a round trip on an idle session, noted as
 * the pool's latest write: it covers whatever that session committed,
 * through pgguard or not.  0 when the session is not idle or it failed. */
uint64_t pgg__vis_learn(pgg_vis *v, PGconn *conn, int64_t deadline_ns,
                        const char *host);

/* The pool's latest acknowledged write (0: none); note a newer one. */
uint64_t pgg__vis_latest(pgg_vis *v);
void pgg__vis_note_write(pgg_vis *v, uint64_t lsn);

/* What a health probe or an answer says host i has replayed.  A probe's
 * word replaces (a rebuilt standby may be behind); an answer's raises. */
void pgg__vis_note_replayed(pgg_vis *v, int i, uint64_t lsn, bool probe);
uint64_t pgg__vis_replayed(pgg_vis *v, int i);

/*
 * lsn, or the start of its WAL page when lsn points just past that page's
 * header (where pg_current_wal_insert_lsn() points when the last record
 * ended on the page boundary; a replica's replay position stops at the
 * boundary).  blk, seg: the server's wal_block_size and wal_segment_size
 * (0: unknown, lsn returned as is).  For 64-bit servers' header sizes only.
 */
uint64_t pgg__lsn_page_floor(uint64_t lsn, uint32_t blk, uint64_t seg);

/* The servers' WAL layout, learnt by a health probe (the first wins; a
 * 32-bit server's is never given: its headers differ). */
void pgg__vis_set_layout(pgg_vis *v, uint32_t blk, uint64_t seg);

/* The ryw_* counters of pgg_stats. */
void pgg__vis_stats(pgg_vis *v, pgg_stats *out);

/* The health thread's sleep: poll_ms while reads wait, else normal_ns. */
int64_t pgg__vis_health_interval(pgg_vis *v, int64_t normal_ns);

#endif
