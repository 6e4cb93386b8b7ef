/*
 * libFuzzer target: a conninfo (key=value or URI) through
 * pgg_config_set_servers, the scanner and the redaction.
 *
 * Properties, for every input:
 *  - no crash, no sanitizer report;
 *  - no message shows the planted password, and every message is one line;
 *  - the scanner reads the text as libpq 15 does: it accepts exactly what
 *    PQconninfoParse accepts, with the same values, and stops at the same
 *    fault (and, where libpq gives one, the same position);
 *  - the redacted text parses as libpq parses the original, on every key
 *    but password and sslpassword, which read REDACTED; a text libpq
 *    rejects is redacted to a text it rejects too.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "conninfo.h"
#include "conninfo_scan.h"
#include "fuzz_input.h"
#include "options.h"

/* Every value the scanner stores, in order. */
typedef struct stored {
    int n, cap;
    char **kw, **val;
} stored;

static int collect(void *arg, const pgg__ci_value *v)
{
    stored *st = arg;

    if (st->n == st->cap) {
        int cap = st->cap ? st->cap * 2 : 16;
        char **kw = realloc(st->kw, (size_t)cap * sizeof *kw);
        char **val;

        if (!kw)
            return 1;
        st->kw = kw;
        val = realloc(st->val, (size_t)cap * sizeof *val);
        if (!val)
            return 1;
        st->val = val;
        st->cap = cap;
    }
    st->kw[st->n] = strdup(v->keyword);
    st->val[st->n] = strdup(v->value);
    if (!st->kw[st->n] || !st->val[st->n])
        abort();
    st->n++;
    return 0;
}

static void stored_free(stored *st)
{
    for (int i = 0; i < st->n; i++) {
        free(st->kw[i]);
        free(st->val[i]);
    }
    free(st->kw);
    free(st->val);
}

/* The value libpq keeps for kw: the last one stored. */
static const char *last(const stored *st, const char *kw)
{
    for (int i = st->n - 1; i >= 0; i--) {
        if (strcmp(st->kw[i], kw) == 0)
            return st->val[i];
    }
    return NULL;
}

/* libpq 15's message, as the scanner's fault. */
static pgg__ci_fault libpq_fault(const char *msg, long *pos)
{
    static const struct {
        const char *prefix;
        pgg__ci_fault f;
    } map[] = {
        {"missing \"=\" after", PGG__CI_MISSING_EQUALS},
        {"unterminated quoted string", PGG__CI_UNTERMINATED_QUOTE},
        {"invalid connection option", PGG__CI_UNKNOWN_KEYWORD},
        {"invalid URI query parameter", PGG__CI_UNKNOWN_KEYWORD},
        {"end of string reached when looking for matching \"]\"",
         PGG__CI_UNCLOSED_BRACKET},
        {"IPv6 host address may not be empty", PGG__CI_EMPTY_BRACKETS},
        {"unexpected character", PGG__CI_AFTER_BRACKET},
        {"extra key/value separator", PGG__CI_EXTRA_EQUALS},
        {"missing key/value separator", PGG__CI_NO_EQUALS},
        {"invalid percent-encoded token", PGG__CI_BAD_PERCENT},
        {"forbidden value %00", PGG__CI_PERCENT_00},
        {"out of memory", PGG__CI_NOMEM},
    };
    const char *at;

    *pos = -1;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        if (strncmp(msg, map[i].prefix, strlen(map[i].prefix)) != 0)
            continue;
        /* Only this message gives a position, before it quotes the URI. */
        if (map[i].f == PGG__CI_AFTER_BRACKET &&
            (at = strstr(msg, "at position ")) != NULL)
            *pos = strtol(at + 12, NULL, 10);
        return map[i].f;
    }
    return PGG__CI_OK;
}

static void check_scanner(const char *text, const PQconninfoOption *opts,
                          const char *emsg)
{
    stored st = {0};
    pgg__ci_result res;
    pgg__ci_fault f = pgg__conninfo_scan(text, collect, &st, &res);

    if (f == PGG__CI_NOMEM) {
        stored_free(&st);
        return;
    }
    if (opts) {
        FUZZ_REQUIRE(f == PGG__CI_OK, text, "scanner fault %d at %zu, libpq accepts",
                     (int)f, res.pos);
        for (const PQconninfoOption *o = opts; o->keyword; o++) {
            const char *mine = last(&st, o->keyword);

            FUZZ_REQUIRE((mine == NULL) == (o->val == NULL), text,
                         "%s: scanner %s, libpq %s", o->keyword,
                         mine ? "set" : "unset", o->val ? "set" : "unset");
            FUZZ_REQUIRE(!mine || strcmp(mine, o->val) == 0, text,
                         "%s differs", o->keyword);
        }
    } else {
        long pos;
        pgg__ci_fault lf = libpq_fault(emsg, &pos);

        FUZZ_REQUIRE(f == lf, text, "scanner fault %d, libpq: %s", (int)f, emsg);
        FUZZ_REQUIRE(pos < 0 || (size_t)pos == res.pos + 1, text,
                     "scanner position %zu, libpq: %s", res.pos + 1, emsg);
    }
    stored_free(&st);
}

static bool is_secret(const char *kw)
{
    return strcmp(kw, "password") == 0 || strcmp(kw, "sslpassword") == 0;
}

static void check_redaction(const char *text, const PQconninfoOption *opts)
{
    char *red = pgg__conninfo_redact(text);
    char *emsg = NULL;
    PQconninfoOption *ropts;

    if (!red)
        return; /* out of memory */
    ropts = PQconninfoParse(red, &emsg);
    if (!opts) {
        FUZZ_REQUIRE(!ropts, text, "redacted: %s, accepted", red);
        FUZZ_REQUIRE(!fuzz_shows_secret(red), text, "redacted: %s", red);
    } else {
        FUZZ_REQUIRE(ropts, text, "redacted: %s, rejected: %s", red,
                     emsg ? emsg : "");
        for (int i = 0; opts[i].keyword; i++) {
            const char *a = opts[i].val, *b = ropts[i].val;

            FUZZ_REQUIRE(strcmp(opts[i].keyword, ropts[i].keyword) == 0, text,
                         "keyword order");
            if (is_secret(opts[i].keyword) && a && a[0]) {
                /* "REDACTED/" where the value held libpq's look-ahead stop */
                FUZZ_REQUIRE(b && (strcmp(b, "REDACTED") == 0 ||
                                   strcmp(b, "REDACTED/") == 0),
                             text,
                             "redacted: %s: %s not masked", red,
                             opts[i].keyword);
            } else if (is_secret(opts[i].keyword)) {
                FUZZ_REQUIRE((a == NULL) == (b == NULL), text, "redacted: %s",
                             red);
            } else {
                FUZZ_REQUIRE((a == NULL) == (b == NULL) &&
                                 (!a || strcmp(a, b) == 0),
                             text, "redacted: %s: %s differs", red,
                             opts[i].keyword);
            }
        }
    }
    PQconninfoFree(ropts);
    PQfreemem(emsg);
    free(red);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_clean_env();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A config of its own, freed below: libFuzzer runs a leak check after
     * any input whose mallocs and frees do not balance. */
    pgg_config *cfg = pgg_config_new();
    int raw_secret;
    char *text = fuzz_text(data, size, &raw_secret);
    char *emsg = NULL;
    PQconninfoOption *opts;
    pgg_error err;

    if (!cfg)
        abort();
    if (pgg_config_set_servers(cfg, text, &err) != PGG_OK)
        fuzz_check_error(&err, text, raw_secret);
    opts = PQconninfoParse(text, &emsg);
    if (opts || emsg) {
        check_scanner(text, opts, emsg);
        check_redaction(text, opts);
    }
    PQconninfoFree(opts);
    PQfreemem(emsg);
    pgg_config_free(cfg);
    free(text);
    return 0;
}
