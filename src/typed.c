#include "pgg_config.h"

#if PGG_HAVE_LIBPQTYPES

/*
 * Typed calls (pgguard_types.h): pgg_execf and pgg_execvf, the template
 * (pgg_pool_param), pgg_pool_register_types.  They run through the public
 * calls and leases, so they sit at the top of the module graph; the
 * registrations every connection gets are types.c, below the attempt that
 * applies them.
 */
#include "typed.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <libpqtypes.h>

#include "error.h"
#include "lease.h"
#include "pgguard_types.h"
#include "pool_state.h"
#include "types.h"

int pgg_pool_register_types(pgg_pool *pool, int which,
                            const PGregisterType *types, int count,
                            pgg_error *err)
{
    pgg_lease *lease;
    int rc;

    if (!pool || !types || count <= 0 ||
        (which != PQT_SUBCLASS && which != PQT_COMPOSITE &&
         which != PQT_USERDEFINED))
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_pool_register_types: bad arguments");
    for (int i = 0; i < count; i++)
        if (!types[i].typname)
            return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                                  "pgg_pool_register_types: type %d", i);
    atomic_store(&pool->types_on, true);
    /* Try it on one connection first: a type the server does not have
     * must be refused here, not make every later call of the pool fail on
     * every new connection. */
    lease = pgg_acquire(pool, PGG_READ, 0, NULL, err);
    if (!lease)
        return err ? err->code : PGG_ECONNECT;
    rc = pgg__types_add(pool->types, which, types, count,
                        pgg__lease_link(lease),
                        pgg__now_ns() + pgg__pool_timeout_ns(pool, 0),
                        pgg_lease_host(lease), err);
    pgg_release(lease);
    return rc;
}

/* A copy of the template, connecting once for it when there is none (and
 * may_wait: an event loop may not). */
static PGparam *param_from_template(pgg_pool *pool, pgg_intent intent,
                                    int timeout_ms, bool may_wait,
                                    pgg_error *err)
{
    pgg_types *t = pool->types;
    PGparam *p = NULL;

    for (int round = 0; round < 2 && !p; round++) {
        p = pgg__types_template(t);
        if (!p && round == 0 && !may_wait) {
            pgg__error_set(err, PGG_ESTATE, NULL, NULL,
                           "no connection of the pool has been prepared for "
                           "libpqtypes yet, and the loop does not wait for "
                           "one: call pgg_pool_param (or make one blocking "
                           "typed call) first");
            return NULL;
        }
        if (!p && round == 0) {
            /* Borrowing prepares a connection, which makes the template. */
            pgg_lease *lease = pgg_acquire(pool, intent, timeout_ms, NULL, err);
            if (!lease)
                return NULL;
            pgg_release(lease);
        }
    }
    if (!p)
        pgg__error_set(err, PGG_ETYPES, NULL, NULL,
                       "no libpqtypes template: %s", PQgeterror());
    return p;
}

PGparam *pgg_pool_param(pgg_pool *pool, int timeout_ms, pgg_error *err)
{
    if (!pool) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL, "pgg_pool_param: NULL pool");
        return NULL;
    }
    atomic_store(&pool->types_on, true);
    return param_from_template(pool, PGG_READ, timeout_ms, true, err);
}

/*
 * libpqtypes keeps a PGparam's values in an array it does not expose; the
 * first members of struct pg_param (libpqtypes-int.h, 1.5) are read here
 * to pass them to our own bounded exec and to key the cache.  The layout is
 * verified once at run time against known values (layout_ok) and typed
 * calls refuse to run on a library whose layout differs.
 */
typedef struct {
    int ptrl;
    void *ptr;
    int datal;
    char *data;
    int format;
    Oid oid;
} pqt_value;

typedef struct {
    int vcnt;
    int vmax;
    pqt_value *vals;
} pqt_param_head;

/* The check's verdict, once made: 0 not yet, else 1 + good.  No lock:
 * typed calls run on event loops' threads too, and the check is pure (a
 * copy of the caller's sample), so threads that race to make it first
 * find the same and store the same. */
static _Atomic int layout_verdict;

static bool layout_ok(PGparam *sample)
{
    PGparam *p;
    const pqt_param_head *h;
    static const char want4[4] = {0x01, 0x02, 0x03, 0x04};
    int verdict = atomic_load_explicit(&layout_verdict, memory_order_relaxed);
    bool ok;

    if (verdict)
        return verdict == 2;
    p = PQparamDup(sample);
    PQparamReset(p);
    ok = p && PQputf(p, "%int4 %text", (PGint4)0x01020304, "pgg") &&
         PQparamCount(p) == 2;
    h = (const pqt_param_head *)p;
    ok = ok && h->vcnt == 2 && h->vmax >= 2 && h->vals &&
         h->vals[0].datal == 4 && h->vals[0].format == 1 &&
         h->vals[0].oid == 23 && memcmp(h->vals[0].data, want4, 4) == 0 &&
         h->vals[1].datal == 3 && h->vals[1].oid == 25 &&
         memcmp(h->vals[1].data, "pgg", 3) == 0;
    PQparamClear(p);
    atomic_store_explicit(&layout_verdict, ok ? 2 : 1, memory_order_relaxed);
    return ok;
}

void pgg__typed_done(pgg__typed *tc)
{
    free(tc->arrays);
    free(tc->stmt);
    PQparamClear(tc->param);
    memset(tc, 0, sizeof *tc);
}

/* Put cmdspec's arguments into param (taken: freed by pgg__typed_done,
 * whatever this returns) and lay them out as pgg_exec_params wants. */
static int typed_fill(PGparam *param, pgg__typed *tc, pgg_error *err,
                      const char *cmdspec, va_list ap)
{
    const pqt_param_head *h;
    size_t speclen;
    int n;

    memset(tc, 0, sizeof *tc);
    tc->param = param;
    if (!layout_ok(param))
        return pgg__error_set(err, PGG_ENOTSUP, NULL, NULL,
                              "this libpqtypes keeps parameters in a layout "
                              "pgguard does not know (built for 1.5)");
    speclen = strlen(cmdspec) + 1;
    tc->stmt = malloc(speclen);
    if (!tc->stmt)
        return pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
    if (!PQputvf(param, tc->stmt, speclen, cmdspec, ap))
        return pgg__error_set(err, PGG_ETYPES, NULL, NULL, "pgg_execf: %s",
                              PQgeterror());
    h = (const pqt_param_head *)param;
    n = h->vcnt;
    tc->arrays = malloc((size_t)(n ? n : 1) *
                        (sizeof *tc->oids + sizeof *tc->vals +
                         sizeof *tc->lens + sizeof *tc->fmts));
    if (!tc->arrays)
        return pgg__error_set(err, PGG_ENOMEM, NULL, NULL, "out of memory");
    tc->n = n;
    tc->vals = tc->arrays;
    tc->oids = (Oid *)(tc->vals + n);
    tc->lens = (int *)(tc->oids + n);
    tc->fmts = tc->lens + n;
    for (int i = 0; i < n; i++) {
        tc->vals[i] = h->vals[i].data;
        tc->lens[i] = h->vals[i].datal;
        tc->fmts[i] = h->vals[i].format;
        tc->oids[i] = h->vals[i].oid;
    }
    return PGG_OK;
}

int pgg__typed_build(pgg_pool *pool, pgg__typed *tc, pgg_error *err,
                     const char *cmdspec, va_list ap)
{
    PGparam *param;

    memset(tc, 0, sizeof *tc);
    if (!pool || !cmdspec || !*cmdspec)
        return pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                              "pgg_async_execf: NULL pool or empty cmdspec");
    atomic_store(&pool->types_on, true);
    param = param_from_template(pool, PGG_READ, 0, false, err);
    if (!param)
        return err->code;
    return typed_fill(param, tc, err, cmdspec, ap);
}

PGresult *pgg_execvf(pgg_pool *pool, pgg_intent intent, const pgg_call *call,
                     pgg_info *info, pgg_error *err, const char *cmdspec,
                     va_list ap)
{
    pgg_error local;
    PGparam *param;
    pgg__typed tc;
    PGresult *res = NULL;
    pgg_call typed = {.result_format = 1};
    int64_t deadline, left;

    if (!err)
        err = &local;
    pgg__error_reset(err);
    if (info) {
        memset(info, 0, sizeof *info);
        info->host_index = -1;
    }
    if (!pool || !cmdspec || !*cmdspec) {
        pgg__error_set(err, PGG_EINVAL, NULL, NULL,
                       "pgg_execf: NULL pool or empty cmdspec");
        return NULL;
    }
    /* From now on every connection is prepared as it is borrowed. */
    atomic_store(&pool->types_on, true);
    if (call)
        typed = *call;
    /* One deadline for the whole call: building the template (a borrow, on
     * a pool's first typed call) spends from it, the call gets the rest. */
    deadline = pgg__now_ns() + pgg__pool_timeout_ns(pool, typed.timeout_ms);
    param = param_from_template(pool, intent, typed.timeout_ms, true, err);
    if (!param)
        return NULL;
    left = deadline - pgg__now_ns();
    if (left < PGG_NS_PER_MS) {
        PQparamClear(param);
        pgg__error_set(err, PGG_ETIMEDOUT, NULL, NULL,
                       "pgg_execf: deadline exceeded before the call could "
                       "be sent");
        return NULL;
    }
    typed.timeout_ms = (int)(left / PGG_NS_PER_MS);
    if (typed_fill(param, &tc, err, cmdspec, ap) == PGG_OK)
        res = pgg_exec_params(pool, intent, tc.stmt, tc.n, tc.oids, tc.vals,
                              tc.lens, tc.fmts, &typed, info, err);
    pgg__typed_done(&tc);
    return res;
}

PGresult *pgg_execf(pgg_pool *pool, pgg_intent intent, const pgg_call *call,
                    pgg_info *info, pgg_error *err, const char *cmdspec, ...)
{
    va_list ap;
    PGresult *res;

    va_start(ap, cmdspec);
    res = pgg_execvf(pool, intent, call, info, err, cmdspec, ap);
    va_end(ap);
    return res;
}

#endif /* PGG_HAVE_LIBPQTYPES */
