/*
 * libFuzzer target: the options text through pgg_config_parse.
 *
 * Properties, for every input:
 *  - no crash, no sanitizer report, no leak;
 *  - no message shows the planted password, and every message is one line;
 *  - every value round-trips: what pgg_config_get gives back for a key,
 *    pgg_config_set takes, and gives back unchanged, one key at a time and
 *    as a whole text through pgg_config_parse again.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_input.h"
#include "options.h"

static void get_ok(const pgg_config *cfg, const char *key, char *buf,
                   size_t size, const char *text)
{
    pgg_error err;

    FUZZ_REQUIRE(pgg_config_get(cfg, key, buf, size, &err) == PGG_OK, text,
                 "get %s: %s", key, err.message);
}

/* One key: get, set on a fresh config, get again. */
static void round_trip_key(const pgg_config *cfg, pgg_config *fresh,
                           const char *key, const char *text, char **all,
                           size_t *len)
{
    char v[256], w[256];
    pgg_error err;
    size_t need;

    get_ok(cfg, key, v, sizeof v, text);
    FUZZ_REQUIRE(pgg_config_set(fresh, key, v, &err) == PGG_OK, text,
                 "set %s=%s: %s", key, v, err.message);
    get_ok(fresh, key, w, sizeof w, text);
    FUZZ_REQUIRE(strcmp(v, w) == 0, text, "%s: %s came back as %s", key, v, w);
    /* For the whole-text round trip: key='value' (no value has a quote). */
    need = strlen(key) + strlen(v) + 5;
    *all = realloc(*all, *len + need + 1);
    if (!*all)
        abort();
    *len += (size_t)snprintf(*all + *len, need + 1, "%s='%s'\n", key, v);
}

static void round_trip(const pgg_config *cfg, const char *text)
{
    char *all = NULL;
    size_t len = 0;
    /* One config takes every key in turn (a set replaces the value): the
     * round trip of one key does not depend on the others. */
    pgg_config *fresh = pgg_config_new();
    pgg_config *again = pgg_config_new();
    pgg_error err;
    char key[64], v[256], w[256];

    if (!fresh || !again)
        abort();
    for (int i = 0; i < pgg__config_key_count(); i++)
        round_trip_key(cfg, fresh, pgg__config_key_name(i), text, &all, &len);
    for (int i = 0; i < cfg->classifier.n; i++) {
        snprintf(key, sizeof key, "classify.%s", cfg->classifier.rules[i].sqlstate);
        round_trip_key(cfg, fresh, key, text, &all, &len);
    }
    pgg_config_free(fresh);
    FUZZ_REQUIRE(pgg_config_parse(again, all, &err) == PGG_OK, text,
                 "re-parse: %s", err.message);
    for (int i = 0; i < pgg__config_key_count(); i++) {
        get_ok(cfg, pgg__config_key_name(i), v, sizeof v, text);
        get_ok(again, pgg__config_key_name(i), w, sizeof w, text);
        FUZZ_REQUIRE(strcmp(v, w) == 0, text, "re-parse: %s", v);
    }
    free(all);
    pgg_config_free(again);
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
    int raw_secret;
    char *text = fuzz_text(data, size, &raw_secret);
    pgg_config *cfg = pgg_config_new();
    pgg_error err;

    if (!cfg)
        abort();
    if (pgg_config_parse(cfg, text, &err) != PGG_OK)
        fuzz_check_error(&err, text, raw_secret);
    else
        round_trip(cfg, text);
    if (pgg__config_validate(cfg, &err) != PGG_OK)
        fuzz_check_error(&err, text, raw_secret);
    pgg_config_free(cfg);
    free(text);
    return 0;
}
