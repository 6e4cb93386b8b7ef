/*
 * Internal: a shared lock taken on an event loop's thread is only tried,
 * never waited for (docs/DESIGN.md, "Locks"): a holder preempted inside
 * even a short section would make the loop sleep for a scheduler slice
 * (the closer's lock did, round 13: 3.9-5.7 ms).  A few tries, a pause
 * between, ride out a holder that is running and about to leave; one that
 * stays busy is deferred by the caller (each lock's own rule).
 */
#ifndef PGG_TRYLOCK_H
#define PGG_TRYLOCK_H

#include <pthread.h>
#include <stdbool.h>

#define PGG_TRYLOCK_TRIES 3

static inline void pgg__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* mu tried PGG_TRYLOCK_TRIES times (false: busy, not taken). */
static inline bool pgg__trylock_few(pthread_mutex_t *mu)
{
    for (int i = 0; i < PGG_TRYLOCK_TRIES; i++) {
        if (i)
            pgg__cpu_relax();
        if (pthread_mutex_trylock(mu) == 0)
            return true;
    }
    return false;
}

#endif
