/*
 * main() for Criterion test binaries that use the harness.
 *
 * Criterion counts a skipped test as neither passed nor failed and exits 0,
 * and meson records SKIP only on exit code 77: a binary whose selected tests
 * all skipped (external servers, a fault that cannot be injected) would show
 * as OK.  This main exits 77 in that case, and 1 when the filter selected no
 * test at all, so that a misspelt --filter in meson.build fails loudly.
 */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <stdio.h>

#include "harness_int.h"

static struct criterion_global_stats totals;
static bool have_totals;
/* Criterion counts the tests a --filter left out as skipped: count the ones
 * that started instead. */
static size_t started;

ReportHook(PRE_INIT)(struct criterion_test *test)
{
    (void)test;
    started++;
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats)
{
    totals = *stats;
    have_totals = true;
}

static void criterion_skip(const char *reason)
{
    cr_skip_test("%s", reason);
}

/* Before main, so that a worker process has it whatever way it starts. */
__attribute__((constructor)) static void install_skip_hook(void)
{
    pgh__skip_hook = criterion_skip;
}

int main(int argc, char *argv[])
{
    struct criterion_test_set *tests = criterion_initialize();
    int rc = 0;
    bool ran = false;
    if (criterion_handle_args(argc, argv, true)) {
        rc = !criterion_run_all_tests(tests);
        ran = true;
    }
    criterion_finalize(tests);
    if (!ran || rc != 0 || !have_totals)
        return rc;
    size_t passed = totals.tests_passed;
    size_t bad = totals.tests_failed + totals.tests_crashed;
    if (bad)
        return 1;
    if (started == 0) {
        fprintf(stderr, "no test selected: check --filter\n");
        return 1;
    }
    if (passed == 0) {
        fprintf(stderr, "every selected test skipped: exit 77 for meson\n");
        return 77;
    }
    return 0;
}
