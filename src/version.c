#include "pgguard.h"

const char *pgg_version(void)
{
    return PGG_VERSION_STRING;
}

unsigned pgg_version_number(void)
{
    return PGG_VERSION_NUMBER;
}

const char *pgg_breaker_state_name(pgg_breaker_state state)
{
    switch (state) {
    case PGG_BREAKER_CLOSED:
        return "closed";
    case PGG_BREAKER_OPEN:
        return "open";
    case PGG_BREAKER_HALF_OPEN:
        return "half-open";
    case PGG_BREAKER_FORCED_OPEN:
        return "forced-open";
    case PGG_BREAKER_DISABLED:
        return "disabled";
    case PGG_BREAKER_METRICS_ONLY:
        return "metrics-only";
    }
    return "unknown";
}
