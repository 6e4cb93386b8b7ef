#include "pgguard.h"

const char *pgg_version(void)
{
    return PGG_VERSION_STRING;
}

unsigned pgg_version_number(void)
{
    return PGG_VERSION_NUMBER;
}
