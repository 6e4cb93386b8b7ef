/*
 * The tracing hook (pgg_config_on_trace): what a tracer is told at the
 * start and the end of a call.  The calls reach here only when the pool has
 * a tracer: an untraced call pays the test of pool->traced and nothing else.
 */
#include "trace.h"

#include <string.h>

#include "error.h"

void *pgg__trace_begin(pgg_pool *pool, pgg_trace *t)
{
    t->host_index = -1;
    return pool->trace_start ? pool->trace_start(t, pool->trace_ud) : NULL;
}

void pgg__trace_finish(pgg_pool *pool, pgg_trace *t, void *span,
                       const pgg_info *info, const pgg_error *err)
{
    t->code = err->code;
    memcpy(t->sqlstate, err->sqlstate, sizeof t->sqlstate);
    t->sqlstate[sizeof t->sqlstate - 1] = '\0';
    if (info) {
        t->host = info->host[0] ? info->host : NULL;
        t->host_index = info->host[0] ? info->host_index : -1;
        t->attempts = info->attempts;
        t->sent = info->sent;
        t->from_cache = info->from_cache;
        t->elapsed_us = info->elapsed_us;
    }
    if (pool->trace_end)
        pool->trace_end(t, span, pool->trace_ud);
}
