/*
 * Internal: a counter that many threads add to at once, striped so that
 * they do not fight over one cache line.  A thread adds to its own stripe
 * (picked round-robin the first time it counts anything); a reader sums the
 * stripes.  One shared atomic add costs ~70 ns per thread at two threads on
 * this VM (issue 10: an open breaker's refusals), a stripe ~2 ns.
 *
 * No alignment is required of whatever embeds one (pools and hosts come
 * from calloc): stripes are PGG_STRIPE_STRIDE bytes apart, more than a
 * cache line and its adjacent-line prefetch partner, so no two stripes
 * share a line wherever the counter lands.  A sum read while threads add is
 * a value the counter passed through or one close to it; counts only grow.
 */
#ifndef PGG_COUNTER_H
#define PGG_COUNTER_H

#include <stdatomic.h>
#include <stdint.h>

#include "tls.h"

#define PGG_STRIPES 8
#define PGG_STRIPE_STRIDE 128

typedef struct pgg_counter {
    struct {
        atomic_uint_fast64_t v;
        char pad[PGG_STRIPE_STRIDE - sizeof(atomic_uint_fast64_t)];
    } stripe[PGG_STRIPES];
} pgg_counter;

/* This thread's stripe, 0..PGG_STRIPES-1. */
unsigned pgg__stripe_slow(void);
extern PGG_TLS unsigned pgg__stripe_plus1;

static inline unsigned pgg__stripe(void)
{
    unsigned s = pgg__stripe_plus1;
    return s ? s - 1 : pgg__stripe_slow();
}

static inline void pgg__counter_init(pgg_counter *c)
{
    for (int i = 0; i < PGG_STRIPES; i++)
        atomic_init(&c->stripe[i].v, 0);
}

static inline void pgg__counter_add(pgg_counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(&c->stripe[pgg__stripe()].v, n,
                              memory_order_relaxed);
}

static inline uint64_t pgg__counter_sum(const pgg_counter *c)
{
    uint64_t sum = 0;

    for (int i = 0; i < PGG_STRIPES; i++)
        sum += atomic_load_explicit(
            (atomic_uint_fast64_t *)&c->stripe[i].v, memory_order_relaxed);
    return sum;
}

#endif
