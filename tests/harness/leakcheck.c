/* Leak checks that fail a test, not just print: Criterion runs each test in
 * a worker whose exit code LeakSanitizer and valgrind cannot set. */
#include "harness.h"

#if defined(__SANITIZE_ADDRESS__)
#define PGH_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PGH_ASAN 1
#endif
#endif

#ifdef PGH_ASAN
#include <sanitizer/lsan_interface.h>
#endif
#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define PGH_VALGRIND 1
#endif
#endif

int pgh_leak_check(void)
{
#ifdef PGH_ASAN
    /* prints the report itself */
    if (__lsan_do_recoverable_leak_check())
        return 1;
#endif
#ifdef PGH_VALGRIND
    if (RUNNING_ON_VALGRIND) {
        unsigned long leaked = 0, dubious = 0, reachable = 0, suppressed = 0;
        VALGRIND_DO_LEAK_CHECK;
        VALGRIND_COUNT_LEAKS(leaked, dubious, reachable, suppressed);
        (void)dubious;
        (void)reachable;
        (void)suppressed;
        if (leaked)
            return 1;
    }
#endif
    return 0;
}
