/*
 * stress-watchdog: the watchdog's arm/disarm/expiry race, many threads on
 * short windows that expire while they close, as a plain main() so that it
 * runs under ThreadSanitizer (Criterion does not start there).  Exit 0 when
 * no socket was ever shut down outside its window and every expiry was
 * reported to its waiter; 1 otherwise.
 *
 *   stress-watchdog [threads, default 8] [windows per thread, default 5000]
 */
#include <stdio.h>
#include <stdlib.h>

#include "watchdog_race.h"

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 8;
    int rounds = argc > 2 ? atoi(argv[2]) : 5000;
    int won, lost, broken;
    uint64_t fired;
    pgg_error e;
    pgg_watchdog *wd = pgg__watchdog_new(50 * PGG_NS_PER_US, &e);

    if (!wd) {
        fprintf(stderr, "stress-watchdog: %s\n", e.message);
        return 1;
    }
    race_run(wd, threads, rounds, &won, &lost, &broken);
    fired = pgg__watchdog_fired(wd);
    pgg__watchdog_free(wd);
    printf("stress-watchdog: %d threads, %d windows left in time, %d expired, "
           "%llu shut down, %d broken\n",
           threads, won, lost, (unsigned long long)fired, broken);
    if (broken || (uint64_t)lost != fired || won + lost != threads * rounds) {
        fprintf(stderr, "stress-watchdog: FAILED\n");
        return 1;
    }
    return 0;
}
