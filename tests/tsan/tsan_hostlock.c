/*
 * ThreadSanitizer driver: what event loops owe a host (host.c, "Owed").
 * Two "loop" threads (pgg__host_loop set: the host's mu only tried) borrow
 * without waiting, make and fail connects (failures retried later or
 * owed), give back (parked, or released under mu or owed) and discard;
 * two blocking threads borrow and wait for connections (applying what is
 * owed as they look), and a fifth thread holds mu on and off, so that the
 * loops' tries fail often and their records are pushed while others apply
 * them.  Links carry no session (their conn is NULL: nothing is looked
 * at, sessions count as fresh), so the driver runs without a server.
 *
 * Besides TSan's verdict (a link lent twice is two threads writing its
 * marker): pool_max holds at every borrow, and once the loops settle what
 * they owe, every link made and not discarded is idle or parked, none
 * busy or connecting, and none lost.  A sixth thread plays the health
 * thread (review17): told by the first record of each batch
 * (pgg_host_loop.owed_first), it settles with a wait; the loops do not
 * settle at their end, so once every tell is handled nothing may be left
 * owed (a record nobody was told of would be).
 */
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "tsan_util.h"

#define LOOPS 2
#define BLOCKERS 2
#define ROUNDS 100000
#define MAX 4

static pgg_host H;
static atomic_bool stop;
static atomic_int made, discarded, owes, laters, relooks;
/* The health thread's part: tells (owed_first), and settles made. */
static sem_t told;
static atomic_int tells, settled;
static atomic_bool health_stop, asked;

/* The loop thread's tie (pgg_host_loop): a flag that it owes. */
typedef struct loop_tie {
    pgg_host_loop hl;
    bool owes;
} loop_tie;

static void tie_owe(pgg_host_loop *self)
{
    ((loop_tie *)self)->owes = true;
    atomic_fetch_add(&owes, 1);
}

/* As pgg__health_settle_owed: one wake-up until the thread begins its
 * turn. */
static void tie_owed_first(pgg_host_loop *self)
{
    (void)self;
    if (atomic_load_explicit(&asked, memory_order_relaxed) || atomic_exchange(&asked, true))
        return;
    atomic_fetch_add(&tells, 1);
    sem_post(&told);
}

/* As the health thread: each tell, one settling that waits for mu. */
static void *health_main(void *arg)
{
    (void)arg;
    for (;;) {
        while (sem_wait(&told) != 0)
            ;
        if (atomic_load(&health_stop))
            break;
        atomic_exchange(&asked, false);
        pgg__host_settle_owed(&H, true);
        atomic_fetch_add(&settled, 1);
    }
    return NULL;
}

/* The link is this thread's now: nobody else may touch it meanwhile. */
static void use(pgg_link *l, unsigned me)
{
    CHECK(l->types_gen == 0, "link %p lent twice (by %u and %u)", (void *)l,
          l->types_gen, me);
    l->types_gen = me;
    /* A call's time on it: the holder may take the lock meanwhile. */
    for (volatile int i = 0; i < 3000; i++)
        ;
    /* Lent, parked and owed links, never more than pool_max. */
    CHECK(atomic_load(&H.n_busy) <= MAX, "%d busy (pool_max %d)", atomic_load(&H.n_busy), MAX);
    CHECK(atomic_load(&made) - atomic_load(&discarded) <= MAX, "%d links live",
          atomic_load(&made) - atomic_load(&discarded));
    l->types_gen = 0;
}

static void back(pgg_link *l, bool drop)
{
    if (drop) {
        atomic_fetch_add(&discarded, 1);
        pgg__host_discard(&H, l);
    } else {
        pgg__host_give_back_judged(&H, l, pgg__now_ns(), true);
    }
}

static void *loop_main(void *arg)
{
    unsigned me = (unsigned)(uintptr_t)arg;
    unsigned seed = me * 2654435761u;
    loop_tie tie = {.hl = {.owe = tie_owe, .owed_first = tie_owed_first}};
    pgg_error refusal = {0}, e;
    int pending = 0; /* failed connects whose bookkeeping was LATER */

    strcpy(refusal.sqlstate, "08006");
    pgg__host_loop = &tie.hl;
    for (int round = 0; round < ROUNDS; round++) {
        int64_t now = pgg__now_ns();
        pgg_link *l = NULL;
        bool connect, busy;

        if (tie.owes && pgg__host_settle_owed(&H, false))
            tie.owes = false;
        while (pending > 0 && pgg__host_connect_failed(&H, &refusal, false, now, true) !=
                                  PGG_CONNECT_LATER)
            pending--;
        if (pgg__host_try_borrow(&H, now, now, now + 1000 * PGG_NS_PER_MS, &l, &connect,
                                 &busy, &e) !=
            PGG_OK) {
            if (busy)
                atomic_fetch_add(&relooks, 1);
            continue;
        }
        if (connect) {
            seed = seed * 1103515245u + 12345u;
            if ((seed >> 16) % 5 == 0) {
                if (pgg__host_connect_failed(&H, &refusal, false, now, (seed >> 20) & 1) ==
                    PGG_CONNECT_LATER) {
                    pending++;
                    atomic_fetch_add(&laters, 1);
                }
                continue;
            }
            CHECK(pgg__host_connected(&H, NULL, now, &l, &e) == PGG_OK, "connected: %s",
                  e.message);
            atomic_fetch_add(&made, 1);
        }
        use(l, me);
        seed = seed * 1103515245u + 12345u;
        back(l, (seed >> 16) % 7 == 0);
    }
    /* What is left: failed connects settled with waits; what it owes is
     * the health thread's (told), not settled here. */
    pgg__host_loop = NULL;
    while (pending-- > 0)
        pgg__host_connect_failed(&H, &refusal, false, pgg__now_ns(), false);
    return NULL;
}

static void *blocker_main(void *arg)
{
    unsigned me = (unsigned)(uintptr_t)arg;

    while (!atomic_load(&stop)) {
        int64_t now = pgg__now_ns();
        pgg_link *l = NULL;
        pgg_borrow_fail why;
        pgg_error e;

        if (pgg__host_borrow(&H, now + 20 * PGG_NS_PER_MS, &now, &l, &why, &e) != PGG_OK) {
            /* Busy to its deadline, or a connect of its own (refused:
             * nothing listens on its port). */
            CHECK(e.code == PGG_ETIMEDOUT || e.code == PGG_ECONNECT, "borrow: %s %s",
                  pgg_err_name(e.code), e.message);
            continue;
        }
        use(l, me);
        back(l, false);
    }
    return NULL;
}

static void *holder_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        pthread_mutex_lock(&H.mu);
        for (volatile int i = 0; i < 2000; i++)
            ;
        pthread_mutex_unlock(&H.mu);
        /* Free as often as held, about. */
        for (volatile int i = 0; i < 2000; i++)
            ;
    }
    return NULL;
}

int main(void)
{
    static const char *const keys[] = {"host", "port", "connect_timeout", NULL};
    static const char *const vals[] = {"127.0.0.1", "1", "1", NULL};
    pgg_host_limits lim = {
        .max = MAX,
        .min_idle = 0,
        .idle_timeout_ns = 0,
        .max_lifetime_ns = 0,
        .validate_ns = INT64_MAX / 4,
        .connect_timeout_ns = (1000 * PGG_NS_PER_MS),
        .alive_check_ns = INT64_MAX / 4,
    };
    pgg_breaker_config bc;
    pgg_host_counts hc;
    pthread_t loops[LOOPS], blockers[BLOCKERS], holder, health;
    pgg_error e;
    int idle, handed = 0;

    pgg__breaker_config_defaults(&bc);
    if (pgg__host_init(&H, 0, "tsan", keys, vals, &lim, &bc, pgg__clock_system(), &e) != PGG_OK) {
        fprintf(stderr, "host init: %s\n", e.message);
        return 1;
    }
    sem_init(&told, 0, 0);
    pthread_create(&health, NULL, health_main, NULL);
    pthread_create(&holder, NULL, holder_main, NULL);
    for (int i = 0; i < BLOCKERS; i++)
        pthread_create(&blockers[i], NULL, blocker_main, (void *)(uintptr_t)(100 + i));
    for (int i = 0; i < LOOPS; i++)
        pthread_create(&loops[i], NULL, loop_main, (void *)(uintptr_t)(1 + i));
    for (int i = 0; i < LOOPS; i++)
        pthread_join(loops[i], NULL);
    atomic_store(&stop, true);
    for (int i = 0; i < BLOCKERS; i++)
        pthread_join(blockers[i], NULL);
    pthread_join(holder, NULL);

    /* Every tell handled: nothing owed is left for a loop to settle. */
    while (atomic_load(&settled) < atomic_load(&tells))
        sched_yield();
    CHECK(!atomic_load(&H.owed), "still owed with every tell settled (%d): a record nobody was told of",
          atomic_load(&tells));
    CHECK(atomic_load(&tells) > 0, "the health thread was never told");
    atomic_store(&health_stop, true);
    sem_post(&told);
    pthread_join(health, NULL);
    sem_destroy(&told);
    pgg__host_counts(&H, &hc);
    pthread_mutex_lock(&H.mu);
    idle = H.n_idle;
    CHECK(H.n_connecting == 0, "%d still connecting", H.n_connecting);
    /* A blocking borrower's connect its 20 ms deadline cut is handed on
     * (host.c, "Handed connects"): counted in n_spares, no health thread
     * here takes it. */
    for (pgg_handed *c = atomic_load(&H.handed); c; c = c->next)
        handed++;
    CHECK(H.n_spares == handed, "%d spares, %d handed", H.n_spares, handed);
    pthread_mutex_unlock(&H.mu);
    CHECK(hc.busy == 0, "%d still busy", hc.busy);
    CHECK(hc.open == hc.idle, "open %d, idle %d (idle list %d)", hc.open, hc.idle, idle);
    CHECK(hc.open <= MAX, "%d open (pool_max %d)", hc.open, MAX);
    CHECK(hc.open == atomic_load(&made) - atomic_load(&discarded),
          "%d open, %d made, %d discarded: links lost", hc.open, atomic_load(&made),
          atomic_load(&discarded));
    printf("made %d, discarded %d, %d open at the end; %d owed (%d tells), %d borrows and %d "
           "failed connects found the lock busy\n",
           atomic_load(&made), atomic_load(&discarded), hc.open, atomic_load(&owes),
           atomic_load(&tells), atomic_load(&relooks), atomic_load(&laters));
    /* The point of the driver: records pushed and tries refused. */
    CHECK(atomic_load(&owes) > 0 && atomic_load(&relooks) > 0, "the lock was never busy");
    pgg__host_close(&H);
    pgg__host_destroy(&H);
    return tsan_exit("tsan_hostlock");
}
