/*
 * Internal: the tracing hook (trace.c), called by the public calls
 * (pool_api.c) and leases.
 */
#ifndef PGG_TRACE_H
#define PGG_TRACE_H

#include "pool_state.h"

/* The tracer's two calls: t holds the call's kind, intent and
 * SQL; begin returns the span, finish fills the end fields from info and
 * err and hands the span back. */
void *pgg__trace_begin(pgg_pool *pool, pgg_trace *t);
void pgg__trace_finish(pgg_pool *pool, pgg_trace *t, void *span,
                       const pgg_info *info, const pgg_error *err);

#endif
