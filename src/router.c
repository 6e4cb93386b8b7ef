#include "router.h"

static int tier_of(pgg_breaker_state s)
{
    switch (s) {
    case PGG_BREAKER_HALF_OPEN:
        return 1;
    case PGG_BREAKER_OPEN:
    case PGG_BREAKER_FORCED_OPEN:
        return 2;
    case PGG_BREAKER_CLOSED:
    case PGG_BREAKER_DISABLED:
    case PGG_BREAKER_METRICS_ONLY:
        break;
    }
    return 0;
}

typedef struct {
    int group, tier, busy, spin, index;
} route_key;

static bool before(const route_key *a, const route_key *b)
{
    if (a->group != b->group)
        return a->group < b->group;
    if (a->tier != b->tier)
        return a->tier < b->tier;
    if (a->busy != b->busy)
        return a->busy < b->busy;
    return a->spin < b->spin;
}

int pgg__route(pgg_intent intent, pgg_read_policy policy,
               const pgg_route_host *hosts, int n, unsigned rotate, int *out)
{
    route_key keys[PGG_MAX_HOSTS];
    int m = 0, r;

    if (n > PGG_MAX_HOSTS)
        n = PGG_MAX_HOSTS;
    if (n <= 0)
        return 0;
    if (n == 1) {
        /* One host: nothing to order, only whether it may serve. */
        if (pgg__route_group(intent, policy, &hosts[0]) < 0)
            return 0;
        out[0] = 0;
        return 1;
    }
    r = (int)(rotate % (unsigned)n); /* one division per call, not per host */
    for (int i = 0; i < n; i++) {
        route_key k;
        int g = pgg__route_group(intent, policy, &hosts[i]);
        int j;

        if (g < 0)
            continue;
        k.group = g;
        k.tier = tier_of(hosts[i].state);
        k.busy = hosts[i].busy;
        k.spin = i >= r ? i - r : i + n - r;
        k.index = i;
        /* Insertion sort: n is small and usually sorted already. */
        for (j = m; j > 0 && before(&k, &keys[j - 1]); j--)
            keys[j] = keys[j - 1];
        keys[j] = k;
        m++;
    }
    for (int i = 0; i < m; i++)
        out[i] = keys[i].index;
    return m;
}
