/*
 * Shared bits of the unit tests.
 *
 * Criterion runs every test in a forked worker whose exit code neither
 * LeakSanitizer nor valgrind can change, and ignores assertions made in a
 * .fini, so a leak is made to fail the test from inside its body: declare
 * tests with UTest(suite, name), which checks for leaks (and, under
 * valgrind, for new errors) after the body returns.
 */
#ifndef PGG_TESTS_UNIT_H
#define PGG_TESTS_UNIT_H

#include <criterion/criterion.h>

#include <stdint.h>
#include <time.h>

#include "clock.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNIT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNIT_ASAN 1
#endif
#endif

#ifdef UNIT_ASAN
#include <sanitizer/lsan_interface.h>
#endif

#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define UNIT_VALGRIND 1
#endif
#endif

#define MS(x) ((int64_t)(x) * PGG_NS_PER_MS)
#define SEC(x) ((int64_t)(x) * PGG_NS_PER_SEC)
/* Fake time starts far from zero so that no test leans on a zero instant. */
#define T0 SEC(1000)

typedef struct unit_leaks {
    unsigned long leaked;
    unsigned long errors;
} unit_leaks;

static inline void unit_leaks_begin(unit_leaks *l)
{
    l->leaked = l->errors = 0;
#ifdef UNIT_VALGRIND
    if (RUNNING_ON_VALGRIND) {
        unsigned long dubious = 0, reachable = 0, suppressed = 0;

        /* Criterion's own leftovers are the baseline. */
        VALGRIND_DO_LEAK_CHECK;
        VALGRIND_COUNT_LEAKS(l->leaked, dubious, reachable, suppressed);
        (void)dubious;
        (void)reachable;
        (void)suppressed;
        l->errors = VALGRIND_COUNT_ERRORS;
    }
#endif
}

static inline void unit_leaks_end(const unit_leaks *l)
{
#ifdef UNIT_ASAN
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "memory leaked (see the report above)");
#endif
#ifdef UNIT_VALGRIND
    if (RUNNING_ON_VALGRIND) {
        unsigned long leaked = 0, dubious = 0, reachable = 0, suppressed = 0;
        /* Before the leak check, which reports Criterion's leftovers again. */
        unsigned long errors = VALGRIND_COUNT_ERRORS;

        VALGRIND_DO_LEAK_CHECK;
        VALGRIND_COUNT_LEAKS(leaked, dubious, reachable, suppressed);
        (void)dubious;
        (void)reachable;
        (void)suppressed;
        cr_assert_eq(errors, l->errors, "valgrind reported %lu errors", errors - l->errors);
        cr_assert_leq(leaked, l->leaked, "valgrind: %lu bytes leaked by this test",
                      leaked - l->leaked);
    }
#else
    (void)l;
#endif
}

/* Test(suite, name) with a leak check after the body. */
#define UTest(suite, name)                             \
    static void unit_body_##suite##_##name(void);      \
    Test(suite, name)                                  \
    {                                                  \
        unit_leaks unit_l_;                            \
        unit_leaks_begin(&unit_l_);                    \
        unit_body_##suite##_##name();                  \
        unit_leaks_end(&unit_l_);                      \
    }                                                  \
    static void unit_body_##suite##_##name(void)

/* Real sleep, for the few tests that must let another thread run. */
static inline void unit_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0)
        ;
}

#endif
