#include "pgg_config.h"
#include "pgguard.h"

const char *pgg_version(void)
{
    return PGG_VERSION_STRING;
}

int pgg_have_types(void)
{
    return PGG_HAVE_LIBPQTYPES;
}

unsigned pgg_version_number(void)
{
    return PGG_VERSION_NUMBER;
}
