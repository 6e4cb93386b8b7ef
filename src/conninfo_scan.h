/*
 * Internal: reading a conninfo exactly as libpq 15's PQconninfoParse reads
 * it (key=value text, or a URI after "postgresql://" or "postgres://"),
 * reporting every value it stores together with where that value was
 * written, or the first fault and its byte position.
 *
 * This is what lets pgguard mask a password wherever libpq would find one,
 * and say what is wrong with a conninfo without quoting any of it: libpq's
 * own messages quote the text, password included.
 */
#ifndef PGG_CONNINFO_SCAN_H
#define PGG_CONNINFO_SCAN_H

#include <stdbool.h>
#include <stddef.h>

/* The first thing libpq rejects, in the order libpq checks. */
typedef enum pgg__ci_fault {
    PGG__CI_OK = 0,
    PGG__CI_NOMEM,
    PGG__CI_MISSING_EQUALS,     /* key=value: a keyword without "=" */
    PGG__CI_UNTERMINATED_QUOTE, /* key=value: a ' without its closing ' */
    PGG__CI_UNKNOWN_KEYWORD,    /* both forms: not one of libpq's keywords */
    PGG__CI_UNCLOSED_BRACKET,   /* URI: "[" without "]" */
    PGG__CI_EMPTY_BRACKETS,     /* URI: "[]" */
    PGG__CI_AFTER_BRACKET,      /* URI: "]" followed by other than : / ? , */
    PGG__CI_EXTRA_EQUALS,       /* URI: a second "=" in one query parameter */
    PGG__CI_NO_EQUALS,          /* URI: a query parameter without "=" */
    PGG__CI_BAD_PERCENT,        /* URI: "%" not followed by two hex digits */
    PGG__CI_PERCENT_00          /* URI: "%00" */
} pgg__ci_fault;

/* Which part of the text a value or a fault is in. */
typedef enum pgg__ci_part {
    PGG__CI_KEYVALUE, /* key=value text */
    PGG__CI_USER,     /* URI user name */
    PGG__CI_PASSWORD, /* URI password (user:password@) */
    PGG__CI_HOST,     /* URI host list */
    PGG__CI_PORT,     /* URI port list */
    PGG__CI_DBNAME,   /* URI path */
    PGG__CI_QUERY_KEY,  /* URI query parameter name */
    PGG__CI_QUERY_VALUE /* URI query parameter value */
} pgg__ci_part;

/* One value as libpq stores it. */
typedef struct pgg__ci_value {
    /* As libpq stores them: "requiressl" and the URI's "ssl=true" become
     * "sslmode", percent-encoding and quoting are undone. */
    const char *keyword;
    const char *value;
    /* The value as written, quotes and escapes included: text[start, end).
     * The host and port lists of a URI span all their pieces. */
    size_t start, end;
    pgg__ci_part part;
} pgg__ci_value;

/* Called for each value in the order libpq stores them; a later value of
 * a keyword replaces an earlier one.  Non-zero stops the scan with
 * PGG__CI_NOMEM. */
typedef int (*pgg__ci_visit)(void *arg, const pgg__ci_value *v);

typedef struct pgg__ci_result {
    pgg__ci_fault fault;
    size_t pos;        /* 0-based byte offset of the fault in the text */
    pgg__ci_part part; /* where the fault is */
    bool uri;          /* read as a URI */
    /*
     * For MISSING_EQUALS and UNKNOWN_KEYWORD: the keyword, decoded, cut to
     * fit.  Text of the conninfo: never for a message, only to compare
     * with libpq's keywords.
     */
    char keyword[64];
    bool keyword_cut;
} pgg__ci_result;

/*
 * Scan text as PQconninfoParse(text) would, calling visit (may be NULL)
 * for each stored value.  Returns res->fault: PGG__CI_OK exactly when
 * PQconninfoParse accepts the text.  Thread-safe.
 */
pgg__ci_fault pgg__conninfo_scan(const char *text, pgg__ci_visit visit,
                                 void *arg, pgg__ci_result *res);

/* Whether kw is one of the keywords the linked libpq knows. */
bool pgg__conninfo_is_keyword(const char *kw);

/* The known keyword closest to kw (edit distance <= 2), or NULL. */
const char *pgg__conninfo_suggest(const char *kw);

#endif
