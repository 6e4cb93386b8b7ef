/*
 * Internal: automatic prepared statements (issue 10, part 3).
 *
 * With auto_prepare = N > 0, each connection remembers the SQL of the last
 * N distinct parameterised one-shot calls (pgg_exec_params) it ran, least
 * recently used out first.  The auto_prepare_after-th time the same SQL
 * (with the same parameter types) runs on that connection, it is prepared
 * there under a name of its own ("pgg_auto_<n>"), in the round trip of that
 * use (Parse, Bind and Execute under one Sync, in pipeline mode; under
 * read-your-writes a PREPARE of its own first, one extra round trip), and
 * from then on executed by name (PQsendQueryPrepared):
 * the server neither parses nor plans it again, and libpq sends less.
 * A prepared entry pushed out of the cache is deallocated on the server
 * first (DEALLOCATE, one round trip), so a connection never holds more
 * than N of them.
 *
 * Only outside a transaction block: inside one (a lease's BEGIN ...), a
 * statement refused by name would abort the transaction, so the call runs
 * as it is there.
 *
 * The cache belongs to one connection and is used only by the thread that
 * borrowed it: no locking.  A lease's reset (DISCARD ALL) clears it; a
 * statement found missing on the server (26000: a lease's own DEALLOCATE)
 * clears it too, and the call runs unprepared at once (the statement never
 * started, so even a write runs once).
 *
 * Behind a pooler in transaction mode (PgBouncer before 1.21), a statement
 * prepared on one server session is missing on the next, and our name may
 * exist already on another: a PREPARE refused with 42P05, or a second
 * statement found missing (26000) on one connection, turns auto_prepare
 * off for that connection, and the call runs as it is (it never started).
 * Set auto_prepare=0 there to spare those round trips.
 *
 * On by default (auto_prepare=100, auto_prepare_after=2): measured in
 * issue 10, a one-parameter primary-key lookup costs the server about
 * 0.54x the CPU of PQexecParams and the client no more.
 */
#ifndef PGG_AUTOPREP_H
#define PGG_AUTOPREP_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <libpq-fe.h>

#include "classify.h"
#include "link.h"
#include "pgguard.h"

typedef struct pgg_autoprep pgg_autoprep;

/* A cache of `capacity` entries (1..PGG_AUTOPREP_MAX); NULL on no memory. */
pgg_autoprep *pgg__autoprep_new(int capacity);
/* Accepts NULL. */
void pgg__autoprep_free(pgg_autoprep *ap);
/* Forget every entry (the server's statements are already gone). */
void pgg__autoprep_clear(pgg_autoprep *ap);

#define PGG_AUTOPREP_MAX 10000

/* What to do with a call, from pgg__autoprep_lookup(). */
typedef enum pgg_autoprep_step {
    PGG_AUTOPREP_PLAIN = 0, /* run it as it is */
    PGG_AUTOPREP_RUN,       /* run it by name: prepared on this connection */
    PGG_AUTOPREP_PREPARE    /* prepare it under the name first, then run it */
} pgg_autoprep_step;

/*
 * Count one use of q's SQL and parameter types on this connection and say
 * how to run it; *name is the statement's name for RUN and PREPARE.  With
 * PREPARE, *evict may name a statement to DEALLOCATE first (prepared,
 * pushed out; NULL when none); the caller then reports the outcome with
 * pgg__autoprep_prepared().  `after`: uses before preparing (>= 1).
 * Only calls that use the extended protocol qualify (parameters, or
 * types given); anything else is PLAIN.  No memory allocation fails the
 * call: an entry that cannot be stored makes it PLAIN.
 */
pgg_autoprep_step pgg__autoprep_lookup(pgg_autoprep *ap, const struct pgg_query *q,
                                       int after, const char **name,
                                       const char **evict);

/*
 * The cache's layout, here so that the check of every call (below,
 * pgg__autoprep_again) is inline in the attempt; only autoprep.c changes
 * it.
 *
 * Two LRU lists share one table of entries: SQL seen but not prepared yet
 * (`tracked`, at most capacity of them), and SQL prepared on the server
 * (`prepared`, at most capacity).  New SQL only ever pushes out tracked
 * entries, which costs nothing; a stream of one-off statements therefore
 * never makes a prepared one go.  Only a promotion (the after-th use) can
 * push out a prepared statement, which is then deallocated.
 */
typedef struct pgg_autoprep_entry {
    uint64_t hash;
    char *sql;
    Oid *types;     /* nparams of them, when given */
    bool has_types; /* types given (for none, "", the extended protocol) */
    int nparams;
    unsigned uses;
    char name[24]; /* pgg_auto_<n>, made once: snprintf costs a call's worth */
    bool prepared;
    int prev, next; /* in its list, most recent first; -1 ends */
    int chain;      /* next in its hash bucket, or in the free list */
} pgg_autoprep_entry;

typedef struct pgg_autoprep_lru {
    int head, tail, n;
} pgg_autoprep_lru;

struct pgg_autoprep {
    int cap;
    pgg_autoprep_entry *e; /* 2 * cap */
    int *bucket;           /* mask + 1 heads, -1 empty */
    unsigned mask;
    int free_head;
    pgg_autoprep_lru tracked, prepared;
    unsigned next_id;
    /* Off for good on this connection: its statements come and go
     * behind our back (a pooler in transaction mode, see above). */
    bool off;
    int gone;    /* times a statement of ours was found missing */
    int pending; /* the entry a PREPARE step is about, -1 none */
    int last;    /* the entry of the last RUN or PREPARE step, -1 none */
    char evict[24];
};

/* The same SQL text and parameter types as e's, compared whole. */
static inline bool pgg__autoprep_same_text(const pgg_autoprep_entry *e,
                                           const char *sql, int nparams,
                                           const Oid *types)
{
    if (e->nparams != nparams || e->has_types != (types != NULL))
        return false;
    if (types && nparams > 0 &&
        memcmp(e->types, types, (size_t)nparams * sizeof *types) != 0)
        return false;
    return strcmp(e->sql, sql) == 0;
}

/* For a call that qualifies (pgg__autoprep_wants): when q is the
 * prepared statement run last on this connection again (the same text and
 * parameter types), its name, and the use counted as pgg__autoprep_lookup's
 * RUN; else NULL, and nothing counted (ask pgg__autoprep_lookup).  The
 * common caller repeats one statement: it is told by its text alone,
 * without measuring and hashing it, and is already first in its list. */
static inline const char *pgg__autoprep_again(pgg_autoprep *ap,
                                              const struct pgg_query *q)
{
    int i = ap->prepared.head;

    if (ap->off || i < 0 || !q->sql ||
        !pgg__autoprep_same_text(&ap->e[i], q->sql, q->nparams, q->types))
        return NULL;
    ap->pending = -1;
    ap->last = i;
    return ap->e[i].name;
}

/* The PREPARE step's outcome: ok, the statement exists under *name; not
 * ok, it does not (the entry goes back to counting uses).  The eviction
 * named, if any, is done either way. */
void pgg__autoprep_prepared(pgg_autoprep *ap, bool ok);

/* Forget the statement of the last RUN or PREPARE step (the caller
 * deallocates it on the server, or knows it gone). */
void pgg__autoprep_forget_last(pgg_autoprep *ap);

/* Whether q is a call auto_prepare may prepare: the extended protocol
 * (parameters, or types given), not a statement of the pool's own.  Asked
 * before anything else, so that other calls pay one test. */
static inline bool pgg__autoprep_wants(const pgg_query *q)
{
    return (q->nparams > 0 || q->types) && !q->stmt && !q->stmt_name && !q->prepare;
}

/* Prepare nothing more on this connection (autoprep_exec.c: our name is
 * taken there, someone else's statements share the session). */
void pgg__autoprep_stop(pgg_autoprep *ap);
/* Every statement of ours was found gone (26000): forget them all, and
 * stop after the second time on one connection. */
void pgg__autoprep_all_gone(pgg_autoprep *ap);

/* Entries held, and how many of them are prepared (tests, stats). */
void pgg__autoprep_counts(const pgg_autoprep *ap, int *entries, int *prepared);

#endif
