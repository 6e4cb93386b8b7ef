/*
 * Internal: turning the outcome of one attempt into what it says about the
 * host (a pgg_class), whether a read may be retried elsewhere, and the
 * error code the caller sees.  Table-driven; callers can override the class
 * of any SQLSTATE or SQLSTATE class.
 */
#ifndef PGG_CLASSIFY_H
#define PGG_CLASSIFY_H

#include <stdbool.h>

#include <libpq-fe.h>

#include "pgguard.h"

#define PGG_CLASSIFY_MAX_OVERRIDES 64

typedef struct pgg_class_rule {
    char sqlstate[6]; /* five characters, or a two-character class */
    pgg_class cls;
    bool retry;
} pgg_class_rule;

/* Overrides, consulted before the built-in table.  Plain data: copyable. */
typedef struct pgg_classifier {
    int n;
    pgg_class_rule rules[PGG_CLASSIFY_MAX_OVERRIDES];
} pgg_classifier;

/* How an attempt ended, as far as the connection is concerned. */
typedef enum pgg_attempt_end {
    PGG_END_RESULT = 0,     /* a result came back (maybe an error result) */
    PGG_END_CONNECT_FAILED, /* never connected: provably not sent */
    PGG_END_NOT_SENT,       /* connection found dead before sending */
    PGG_END_LOST,           /* connection broke after sending */
    PGG_END_DEADLINE,       /* our deadline fired; connection dropped */
    PGG_END_EXPIRED,        /* the deadline passed before sending (a
                               preparation used the time): not sent,
                               connection intact */
    PGG_END_REFUSED         /* libpq refused to send on a live connection
                               (a caller's raw use left it busy): not sent,
                               the connection is not reusable */
} pgg_attempt_end;

typedef struct pgg_verdict {
    pgg_class cls;
    bool retry;        /* a read may run again on another host */
    bool reprobe_role; /* the host's role is in doubt (25006 on a write) */
    int code;          /* PGG_OK, or the PGG_E* code the caller sees */
} pgg_verdict;

void pgg__classifier_init(pgg_classifier *c);
/* Add or replace a rule.  PGG_ECONFIG for a malformed SQLSTATE or a full
 * table. */
int pgg__classifier_override(pgg_classifier *c, const char *sqlstate,
                             pgg_class cls, bool retry, pgg_error *err);

/*
 * The pure decision: how the attempt ended, the result's status and
 * SQLSTATE (NULL when none), the intent, and whether the host is a standby.
 */
pgg_verdict pgg__classify(const pgg_classifier *c, pgg_attempt_end end,
                          ExecStatusType status, const char *sqlstate,
                          pgg_intent intent, bool on_standby);

/* The same, reading status and SQLSTATE from res (which may be NULL). */
pgg_verdict pgg__classify_result(const pgg_classifier *c, pgg_attempt_end end,
                                 const PGresult *res, pgg_intent intent,
                                 bool on_standby);

/*
 * A connection the server refused at startup, by the SQLSTATE its message
 * carried (NULL or "" when none: a network failure, a connect timeout):
 * 53300 (too many clients) and 57P03 (starting up, shutting down) are
 * capacity refusals of a live host (IGNORED, retry elsewhere, code
 * PGG_EUNAVAILABLE); other 53xxx and 57P0x are the host's (unavailable,
 * retry elsewhere); 28xxx
 * (authentication), 3D000 (no such database) and 42501 are the caller's
 * configuration (IGNORED, not retried, code PGG_ECONFIG); the rest count
 * as connection failures.  Overrides apply first.
 */
pgg_verdict pgg__classify_connect(const pgg_classifier *c, const char *sqlstate);

/* 53300 (too many clients) or 57P03 (starting up, shutting down): a live
 * server refusing a session for want of room or readiness.  NULL: false. */
bool pgg__capacity_refusal(const char *sqlstate);

/* Parse "failure"-style class names used in config ("connection", ...). */
int pgg__class_from_name(const char *name, pgg_class *out);

#endif
