/*
 * Shared bits of the ThreadSanitizer drivers.
 *
 * Criterion does not start under TSan (its issue #274), so these are plain
 * main() programs: CHECK counts a failed check and goes on, so that one run
 * shows every problem; the driver's exit code is non-zero when any check
 * failed.  A data race stops the process from TSan itself
 * (TSAN_OPTIONS=halt_on_error=1, set by tests/tsan/run and meson).
 */
#ifndef PGG_TESTS_TSAN_UTIL_H
#define PGG_TESTS_TSAN_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <time.h>

static int tsan_failures;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (!(cond)) {                                                    \
            tsan_failures++;                                              \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__,        \
                    __LINE__, #cond);                                     \
            fprintf(stderr, __VA_ARGS__);                                 \
            fputc('\n', stderr);                                          \
        }                                                                 \
    } while (0)

/* The driver's exit code: 0 when every check passed. */
static inline int tsan_exit(const char *name)
{
    if (tsan_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, tsan_failures);
        return 1;
    }
    printf("%s: every check passed\n", name);
    return 0;
}

static inline void tsan_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

#endif
