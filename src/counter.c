#include "counter.h"

PGG_TLS unsigned pgg__stripe_plus1;

unsigned pgg__stripe_slow(void)
{
    static atomic_uint next;
    unsigned s = atomic_fetch_add_explicit(&next, 1, memory_order_relaxed) %
                 PGG_STRIPES;

    pgg__stripe_plus1 = s + 1;
    return s;
}
