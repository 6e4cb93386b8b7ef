/*
 * ThreadSanitizer driver: the canceller's lock-free hand-offs (src/link.c):
 * cancels pushed with a compare-and-swap onto a slot's list that its worker
 * takes whole, bounded by an atomic count, and dropped sessions pushed onto
 * the closer's list.  Four threads drop their sessions onto one slot at
 * once (as loops' callbacks do when deadlines drop sessions), while its
 * worker sends what it took; then the canceller is freed.
 *
 * Besides TSan's verdict: every cancel queued is sent (the bound is above
 * the number dropped: none may be refused), every dropped session closed
 * by the closer, nothing leaked at the free.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "clock.h"
#include "harness.h"
#include "link.h"
#include "tsan_util.h"

#define THREADS 4
#define SESSIONS 8 /* per thread */

static pgg_canceller *canceller;
static const char *conninfo;
static pthread_barrier_t all_connected;

static void *dropper(void *arg)
{
    PGconn *conns[SESSIONS];

    (void)arg;
    for (int k = 0; k < SESSIONS; k++) {
        conns[k] = PQconnectdb(conninfo);
        CHECK(PQstatus(conns[k]) == CONNECTION_OK, "connect: %s", PQerrorMessage(conns[k]));
        PQsetnonblocking(conns[k], 1);
    }
    pthread_barrier_wait(&all_connected);
    for (int k = 0; k < SESSIONS; k++)
        pgg__canceller_drop(canceller, 0, conns[k]);
    return NULL;
}

int main(void)
{
    char err[2048];
    pgh_cluster *c = pgh_cluster_start(0, err, sizeof err);
    pgg_error e;
    pthread_t t[THREADS];

    if (!c) {
        fprintf(stderr, "cluster start: %s\n", err);
        return 1;
    }
    conninfo = pgh_node_conninfo(pgh_cluster_primary(c));
    canceller = pgg__canceller_new(1, THREADS * SESSIONS * 2, 30 * PGG_NS_PER_SEC, &e);
    CHECK(canceller != NULL, "%s", e.message);
    if (!canceller) {
        pgh_cluster_free(c);
        return tsan_exit("tsan_canceller");
    }
    pthread_barrier_init(&all_connected, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, dropper, NULL);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    /* Every cancel out (idle sessions: the server has nothing to cancel). */
    for (int i = 0; i < 3000 && pgg__canceller_sent(canceller) < THREADS * SESSIONS; i++)
        usleep(10000);
    CHECK(pgg__canceller_sent(canceller) == THREADS * SESSIONS, "%llu cancels sent of %d",
          (unsigned long long)pgg__canceller_sent(canceller), THREADS * SESSIONS);
    for (int i = 0; i < 3000 && pgg__canceller_closed(canceller) < THREADS * SESSIONS; i++)
        usleep(10000);
    CHECK(pgg__canceller_closed(canceller) == THREADS * SESSIONS, "%llu sessions closed of %d",
          (unsigned long long)pgg__canceller_closed(canceller), THREADS * SESSIONS);
    pgg__canceller_free(canceller, 5 * PGG_NS_PER_SEC);
    pthread_barrier_destroy(&all_connected);
    pgh_cluster_free(c);
    return tsan_exit("tsan_canceller");
}
