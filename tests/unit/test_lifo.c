/*
 * src/lifo.h, the hand-off list of the closer, the cancel workers and the
 * events thread: pushes report an empty list, a conditional push never
 * lands on an empty one (a consumer's mark counts as not empty), a take
 * leaves what it is told to, oldest first is the order of the pushes, and
 * under threads pushing at once while one takes, nothing is lost or seen
 * twice and each thread's pushes come out in its order.
 */
#include <criterion/criterion.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "lifo.h"

typedef struct item {
    pgg_lifo_node node; /* first */
    int who, seq;
} item;

static item *item_new(int who, int seq)
{
    item *it = malloc(sizeof *it);

    cr_assert_not_null(it);
    it->who = who;
    it->seq = seq;
    return it;
}

Test(lifo, pushes_say_when_the_list_was_empty_and_come_out_oldest_first)
{
    pgg_lifo l = {NULL};
    item a = {.seq = 1}, b = {.seq = 2}, c = {.seq = 3};
    pgg_lifo_node *got;

    cr_expect(pgg__lifo_empty(&l));
    cr_expect(pgg__lifo_push(&l, &a.node), "the first push found it empty");
    cr_expect_not(pgg__lifo_push(&l, &b.node));
    cr_expect_not(pgg__lifo_push(&l, &c.node));
    got = pgg__lifo_take(&l, NULL);
    cr_expect(pgg__lifo_empty(&l));
    cr_expect_eq(got, &c.node, "newest first as taken");
    got = pgg__lifo_oldest_first(got, NULL);
    for (int want = 1; want <= 3; want++, got = got->next)
        cr_expect_eq(((item *)got)->seq, want);
    cr_expect_null(got);
    cr_expect_null(pgg__lifo_oldest_first(pgg__lifo_take(&l, NULL), NULL));
}

Test(lifo, a_conditional_push_lands_only_on_a_list_in_use_and_the_mark_ends_a_take)
{
    static pgg_lifo_node mark;
    pgg_lifo l = {NULL};
    item a = {.seq = 1}, b = {.seq = 2}, c = {.seq = 3};
    pgg_lifo_node *got;

    cr_expect_not(pgg__lifo_push_nonempty(&l, &a.node), "pushed onto an empty list");
    cr_expect(pgg__lifo_empty(&l));
    cr_expect(pgg__lifo_push(&l, &a.node));
    cr_expect(pgg__lifo_push_nonempty(&l, &b.node));
    /* The consumer takes both and leaves its mark while it works. */
    got = pgg__lifo_take(&l, &mark);
    cr_expect_not(pgg__lifo_empty(&l), "the mark counts as not empty");
    cr_expect(pgg__lifo_push_nonempty(&l, &c.node), "refused behind the mark");
    got = pgg__lifo_oldest_first(got, NULL);
    cr_expect_eq(((item *)got)->seq, 1);
    cr_expect_eq(((item *)got->next)->seq, 2);
    cr_expect_null(got->next->next);
    /* Something came behind the mark: it stays, the consumer takes again. */
    cr_expect_not(pgg__lifo_unmark(&l, &mark));
    got = pgg__lifo_oldest_first(pgg__lifo_take(&l, &mark), &mark);
    cr_expect_eq(got, &c.node, "the mark ends the take");
    cr_expect_null(got->next);
    cr_expect(pgg__lifo_unmark(&l, &mark));
    cr_expect(pgg__lifo_empty(&l));
}

#define PUSHERS 4
#define EACH 20000

static pgg_lifo shared = {NULL};
static _Atomic int pushers_done;
static _Atomic int empties; /* pushes that found the list empty */

static void *pusher(void *arg)
{
    int who = (int)(intptr_t)arg;

    for (int i = 0; i < EACH; i++)
        if (pgg__lifo_push(&shared, &item_new(who, i)->node))
            atomic_fetch_add(&empties, 1);
    atomic_fetch_add(&pushers_done, 1);
    return NULL;
}

Test(lifo, threads_pushing_while_one_takes_lose_nothing_and_keep_each_ones_order)
{
    pthread_t t[PUSHERS];
    int next[PUSHERS] = {0}, seen = 0, takes_nonempty = 0;

    for (int i = 0; i < PUSHERS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, pusher, (void *)(intptr_t)i), 0);
    for (;;) {
        int done = atomic_load(&pushers_done);
        pgg_lifo_node *got = pgg__lifo_oldest_first(pgg__lifo_take(&shared, NULL), NULL);

        takes_nonempty += got != NULL;
        while (got) {
            item *it = (item *)got;

            got = got->next;
            cr_assert_eq(it->seq, next[it->who], "pusher %d: %d came after %d", it->who,
                         it->seq, next[it->who] - 1);
            next[it->who]++;
            seen++;
            free(it);
        }
        if (done == PUSHERS)
            break;
    }
    for (int i = 0; i < PUSHERS; i++)
        pthread_join(t[i], NULL);
    cr_expect_eq(seen, PUSHERS * EACH);
    /* Each non-empty take emptied the list, so the next push found it
     * empty: as many such pushes as takes that got something. */
    cr_expect_eq(atomic_load(&empties), takes_nonempty);
}
