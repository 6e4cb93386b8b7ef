/* The stress scenarios' random numbers: xorshift64, seeded per thread, so
 * that a run is the same every time.  Shared by the unit and TSan drivers. */
#ifndef PGG_TESTS_SCENARIO_RAND_H
#define PGG_TESTS_SCENARIO_RAND_H

#include <stdint.h>

static inline uint64_t scenario_xorshift(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

#endif
