/*
 * Print the configuration key table as Markdown, generated from the one key
 * table in src/options.c, or splice it into a file between
 *   <!-- config-keys:begin -->  and  <!-- config-keys:end -->
 *
 *   gen_config_doc                    print the table
 *   gen_config_doc --update README.md rewrite the section in place
 *   gen_config_doc --check README.md  exit 1 if the section is stale
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"

static const char begin[] = "<!-- config-keys:begin -->\n";
static const char end[] = "<!-- config-keys:end -->";

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0, n;

    if (!f)
        return NULL;
    do {
        if (cap - len < 4096) {
            char *nb = realloc(buf, cap = cap * 2 + 8192);

            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
    } while (n > 0);
    fclose(f);
    buf[len] = '\0';
    return buf;
}

int main(int argc, char **argv)
{
    char *doc = pgg__config_doc_markdown();
    char *text, *b, *e;
    int rc = 0;

    if (!doc) {
        fprintf(stderr, "gen_config_doc: out of memory\n");
        return 2;
    }
    if (argc == 1) {
        fputs(doc, stdout);
        free(doc);
        return 0;
    }
    if (argc != 3 || (strcmp(argv[1], "--update") && strcmp(argv[1], "--check"))) {
        fprintf(stderr, "usage: %s [--update FILE | --check FILE]\n", argv[0]);
        free(doc);
        return 2;
    }
    text = slurp(argv[2]);
    if (!text) {
        perror(argv[2]);
        free(doc);
        return 2;
    }
    b = strstr(text, begin);
    e = b ? strstr(b, end) : NULL;
    if (!b || !e) {
        fprintf(stderr, "%s: no \"%.*s\" ... \"%s\" section\n", argv[2],
                (int)strlen(begin) - 1, begin, end);
        rc = 2;
    } else if (strcmp(argv[1], "--check") == 0) {
        b += strlen(begin);
        rc = (size_t)(e - b) == strlen(doc) && memcmp(b, doc, strlen(doc)) == 0 ? 0 : 1;
        if (rc)
            fprintf(stderr, "%s: the config key table is stale; run %s --update %s\n",
                    argv[2], argv[0], argv[2]);
    } else {
        FILE *f = fopen(argv[2], "wb");
        bool ok;

        b += strlen(begin);
        ok = f && fwrite(text, 1, (size_t)(b - text), f) == (size_t)(b - text) &&
             fputs(doc, f) != EOF && fputs(e, f) != EOF;
        if (f && fclose(f) != 0)
            ok = false;
        if (!ok) {
            perror(argv[2]);
            rc = 2;
        }
    }
    free(text);
    free(doc);
    return rc;
}
