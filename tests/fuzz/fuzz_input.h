/*
 * What both fuzz targets share: turning the fuzzer's bytes into a text
 * with a known password planted in it, and the check that no message
 * shows that password.
 *
 * The byte 0x01 followed by a selector byte plants the secret in one of
 * the ways a user writes a password (key=value, quoted, escaped, URI user
 * info, URI query, percent-encoded, in a servers value); every other byte
 * is copied (NUL bytes are dropped: the APIs take C strings).  The fuzzer
 * owns everything around the password, so it also writes mistyped schemes,
 * unclosed brackets, stray quotes and newlines around it.
 */
#ifndef PGG_FUZZ_INPUT_H
#define PGG_FUZZ_INPUT_H

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgguard.h"

/* Letters and digits only, so that it can stand anywhere; no 4 of its
 * characters in a row occur in any message text of pgguard's own. */
#define FUZZ_SECRET "Qz9Vk2Jw7Hx4"
/* FUZZ_SECRET with every byte percent-encoded. */
#define FUZZ_SECRET_PCT "%51%7A%39%56%6B%32%4A%77%37%48%78%34"
/* FUZZ_SECRET with one byte encoded, in lower case. */
#define FUZZ_SECRET_PCT1 "Qz9V%6b2Jw7Hx4"

static const char *const fuzz_placements[] = {
    "password=" FUZZ_SECRET,
    "password='" FUZZ_SECRET "'",
    "password = " FUZZ_SECRET,
    ":" FUZZ_SECRET "@",
    "?password=" FUZZ_SECRET,
    "&password=" FUZZ_SECRET,
    "password=" FUZZ_SECRET_PCT,
    "pass%77ord=" FUZZ_SECRET,
    "sslpassword=" FUZZ_SECRET,
    "password='" FUZZ_SECRET "\\'" FUZZ_SECRET "'",
    "password=" FUZZ_SECRET "\\ " FUZZ_SECRET,
    ":" FUZZ_SECRET_PCT1 "@",
    "postgresql://u:" FUZZ_SECRET "@",
    "?password=" FUZZ_SECRET_PCT "&",
    "servers='password=" FUZZ_SECRET "'",
    "servers=postgresql://u:" FUZZ_SECRET "@",
    "password='" FUZZ_SECRET "\n" FUZZ_SECRET "'",
    "password=" FUZZ_SECRET "%zz",
};
#define FUZZ_NPLACEMENTS (sizeof fuzz_placements / sizeof fuzz_placements[0])

/* Whether s shows any 4 characters in a row of the secret, or any 2
 * encoded bytes in a row of its percent-encoded forms. */
static int fuzz_shows_secret(const char *s)
{
    static const char secret[] = FUZZ_SECRET;
    static const char pct[] = FUZZ_SECRET_PCT;
    char piece[8];

    for (size_t i = 0; i + 4 <= sizeof secret - 1; i++) {
        memcpy(piece, secret + i, 4);
        piece[4] = '\0';
        if (strstr(s, piece))
            return 1;
    }
    for (size_t i = 0; i + 6 <= sizeof pct - 1; i += 3) {
        memcpy(piece, pct + i, 6);
        piece[6] = '\0';
        if (strstr(s, piece))
            return 1;
    }
    return strstr(s, "%6b2J") != NULL;
}

/*
 * Whether the fuzzer's own bytes spell a piece of the secret once the
 * parsers have read them: backslashes and quotes dropped ("2J\\w7"), or
 * percent-decoded ("%51z9V").  In place: raw is scratch.
 */
static int fuzz_unescaped_shows_secret(char *raw)
{
    static const char hex[] = "0123456789abcdef";
    size_t j = 0;
    char *copy = strdup(raw);
    int found;

    if (!copy)
        abort();
    for (size_t i = 0; raw[i]; i++) {
        if (raw[i] != '\\' && raw[i] != '\'')
            raw[j++] = raw[i];
    }
    raw[j] = '\0';
    found = fuzz_shows_secret(raw);
    j = 0;
    for (size_t i = 0; copy[i]; i++) {
        const char *h1, *h2;

        if (copy[i] == '%' && isxdigit((unsigned char)copy[i + 1]) &&
            isxdigit((unsigned char)copy[i + 2]) &&
            (h1 = strchr(hex, copy[i + 1] | 0x20)) != NULL &&
            (h2 = strchr(hex, copy[i + 2] | 0x20)) != NULL) {
            copy[j++] = (char)((h1 - hex) << 4 | (h2 - hex));
            i += 2;
        } else {
            copy[j++] = copy[i];
        }
    }
    copy[j] = '\0';
    found = found || fuzz_shows_secret(copy);
    free(copy);
    return found;
}

/*
 * The input as a malloc'd C string with the secret planted.  *raw_secret
 * is set when the fuzzer's own bytes spell a piece of the secret (its
 * comparison tracing learns them from the checks below): such a piece was
 * not planted as a password, so no message check applies to that input.
 */
static char *fuzz_text(const uint8_t *data, size_t size, int *raw_secret)
{
    size_t cap = size + 1, len = 0, rlen = 0;
    char *out, *raw;

    for (size_t i = 0; i + 1 < size; i++) {
        if (data[i] == 0x01)
            cap += strlen(fuzz_placements[data[i + 1] % FUZZ_NPLACEMENTS]);
    }
    out = malloc(cap);
    raw = malloc(size + 1);
    if (!out || !raw)
        abort();
    for (size_t i = 0; i < size; i++) {
        if (data[i] == 0x01 && i + 1 < size) {
            const char *p = fuzz_placements[data[++i] % FUZZ_NPLACEMENTS];

            memcpy(out + len, p, strlen(p));
            len += strlen(p);
            raw[rlen++] = '\n';
        } else if (data[i] != 0) {
            out[len++] = (char)data[i];
            raw[rlen++] = (char)data[i];
        }
    }
    out[len] = '\0';
    raw[rlen] = '\0';
    *raw_secret = fuzz_shows_secret(raw) || fuzz_unescaped_shows_secret(raw);
    free(raw);
    return out;
}

/* Stop the run (libFuzzer saves the input) on a broken property. */
#define FUZZ_REQUIRE(cond, text, ...)                                      \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "property broken: %s\n  input: ", #cond);      \
            fuzz_dump(text);                                               \
            fprintf(stderr, "\n  " __VA_ARGS__);                           \
            fprintf(stderr, "\n");                                         \
            abort();                                                       \
        }                                                                  \
    } while (0)

static void fuzz_dump(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;

        if (c >= 0x20 && c < 0x7f && c != '\\')
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
}

/* A message of pgguard's: one line of printable ASCII, and no secret
 * (unless the fuzzer spelled it itself: see fuzz_text). */
static void fuzz_check_error(const pgg_error *err, const char *text,
                             int raw_secret)
{
    FUZZ_REQUIRE(err->message[0] != '\0', text, "empty message");
    FUZZ_REQUIRE(raw_secret || !fuzz_shows_secret(err->message), text,
                 "message: %s", err->message);
    FUZZ_REQUIRE(raw_secret || !fuzz_shows_secret(err->host), text, "host: %s",
                 err->host);
    for (const char *p = err->message; *p; p++)
        FUZZ_REQUIRE((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f, text,
                     "control byte in message: %s", err->message);
}

/* libpq reads these where the conninfo leaves host or port out. */
static void fuzz_clean_env(void)
{
    static const char *const vars[] = {"PGHOST", "PGHOSTADDR", "PGPORT",
                                       "PGSERVICE", "PGSERVICEFILE",
                                       "PGTARGETSESSIONATTRS", "PGPASSWORD",
                                       "PGLOADBALANCEHOSTS"};

    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
}

#endif
