/*
 * Internal: leases (lease.c) as the pool and the helpers on a lease see
 * them: the registry's life (pgg_pool_new / pgg_pool_free), its checks and
 * stats (the health thread, pgg_pool_stats), and what COPY and LISTEN
 * (copy.c, notify.c) and typed calls do on a lease's connection.
 */
#ifndef PGG_LEASE_H
#define PGG_LEASE_H

#include <stdbool.h>
#include <stdint.h>

#include "pool_state.h"

/* The connection a lease holds (NULL once broken by a timeout). */
pgg_link *pgg__lease_link(pgg_lease *lease);

/* For helpers running their own protocol on a lease (copy.c, notify.c):
 * its live, idle connection, server name and the deadline timeout_ms gives
 * (<= 0: call_timeout_ms), or the error (orphan, broken, busy), fn naming
 * the public function. */
int pgg__lease_use(pgg_lease *lease, const char *fn, int timeout_ms, PGconn **conn,
                   const char **host, int64_t *deadline, pgg_error *err);
/* The helper's session broke (abandon false: discarded at release) or is
 * in an unknown state (abandon true: closed now, its query cancelled from
 * the canceller); later calls on the lease fail with PGG_ECONNECT. */
void pgg__lease_fail(pgg_lease *lease, bool abandon);
/* The lease waited for notifications: its session may hold LISTEN
 * registrations, so without lease_reset it is not pooled again. */
void pgg__lease_mark_listener(pgg_lease *lease);
/* The lease ran what pgguard cannot follow (a COPY): under
 * read_your_writes=pool a write lease learns the pool's position when it
 * is released. */
void pgg__lease_mark_unsettled(pgg_lease *lease);

/* Lease registry (lease.c).  init: first thing in pgg_pool_new;
 * orphan: pgg_pool_free, after the health thread stopped and before the
 * hosts close (each lease still out is reported, its connection closed, its
 * bulkhead slot returned; pgg_release later frees it); destroy: last. */
void pgg__leases_init(pgg_pool *pool);
void pgg__leases_orphan(pgg_pool *pool);
void pgg__leases_destroy(pgg_pool *pool);
/* Report (PGG_EVENT_LEASE_LEAK, once each) leases held past lease_leak_ms;
 * the health thread calls it every round. */
void pgg__leases_check(pgg_pool *pool, int64_t now_ns);
/* leases_out, lease_oldest_ms and lease_leaks of pgg_stats. */
void pgg__leases_stats(pgg_pool *pool, pgg_stats *out);

#endif
