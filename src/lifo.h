/*
 * Internal: a lock-free hand-off list, for a queue that many threads fill
 * and one thread empties whole (the closer's and each cancel worker's in
 * link.c, the events thread's in events.c).
 *
 * Why no lock: the threads that fill these queues include event loops,
 * which must never wait for another thread; a consumer preempted holding a
 * queue's lock as it woke made every loop handing it work sleep for a
 * scheduler slice (the closer's lock, round 13: 3.9-5.7 ms).  A push is a
 * compare-and-swap on one word; the consumer takes everything with one
 * exchange and turns it oldest first itself.  A push never races a pop of
 * one element, so there is no ABA: the only writes to the word are pushes
 * (each sets its node's next to the head it replaces) and take-alls.
 *
 * An element embeds a pgg_lifo_node as its first member (a cast gets it
 * back).  Sequentially consistent throughout: as strong as each of the
 * three queues was before it shared this (release pushes, seq_cst for the
 * events' queue), and on x86 a locked compare-and-swap costs the same.
 */
#ifndef PGG_LIFO_H
#define PGG_LIFO_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct pgg_lifo_node {
    struct pgg_lifo_node *next;
} pgg_lifo_node;

typedef struct pgg_lifo {
    _Atomic(pgg_lifo_node *) head; /* newest first; NULL: empty */
} pgg_lifo;

/* Push n; true when the list was empty (a consumer that sleeps while it is
 * may need waking).  Once pushed, n is the consumer's (it may be taken,
 * relinked and freed at once): the head it replaced is kept apart. */
static inline bool pgg__lifo_push(pgg_lifo *l, pgg_lifo_node *n)
{
    pgg_lifo_node *head = atomic_load(&l->head);

    do
        n->next = head;
    while (!atomic_compare_exchange_weak(&l->head, &head, n));
    return head == NULL;
}

/* Push n only onto a list that is not empty, in the same step (false, n
 * not pushed: it was empty).  A consumer that leaves a mark in the list
 * while it works through what it took (pgg__lifo_take's leave) counts as
 * not empty. */
static inline bool pgg__lifo_push_nonempty(pgg_lifo *l, pgg_lifo_node *n)
{
    pgg_lifo_node *head = atomic_load(&l->head);

    do {
        if (!head)
            return false;
        n->next = head;
    } while (!atomic_compare_exchange_weak(&l->head, &head, n));
    return true;
}

/* Take everything, newest first, leaving leave (NULL: empty, or a mark of
 * the consumer's that ends the next take). */
static inline pgg_lifo_node *pgg__lifo_take(pgg_lifo *l, pgg_lifo_node *leave)
{
    return atomic_exchange(&l->head, leave);
}

/* The consumer's mark, left by its take, goes when nothing was pushed
 * behind it since (true: the list is empty now; false: take again). */
static inline bool pgg__lifo_unmark(pgg_lifo *l, pgg_lifo_node *mark)
{
    return atomic_compare_exchange_strong(&l->head, &mark, NULL);
}

/* Is the list empty? */
static inline bool pgg__lifo_empty(pgg_lifo *l)
{
    return atomic_load(&l->head) == NULL;
}

/* A taken list (newest first, down to end: NULL or a mark) turned oldest
 * first, NULL-terminated. */
static inline pgg_lifo_node *pgg__lifo_oldest_first(pgg_lifo_node *got, const pgg_lifo_node *end)
{
    pgg_lifo_node *fifo = NULL;

    while (got && got != end) {
        pgg_lifo_node *next = got->next;

        got->next = fifo;
        fifo = got;
        got = next;
    }
    return fifo;
}

#endif
