/*
 * A standby held back from reads until it replays what it had reported
 * (hold.h tells why and who writes).
 */
#include "hold.h"

#include <stddef.h>

void pgg__hold_init(pgg_hold *hd)
{
    atomic_init(&hd->lag, -1);
    atomic_init(&hd->lag_measured, -1);
    atomic_init(&hd->high, 0);
    atomic_init(&hd->high_at, 0);
    atomic_init(&hd->until, 0);
    atomic_init(&hd->why, NULL);
    atomic_init(&hd->replay, 0);
    atomic_init(&hd->suspect, 0);
}

void pgg__hold_suspect(pgg_hold *hd, bool is_primary, int how, const char *why)
{
    if (!atomic_load(&hd->high) || is_primary ||
        atomic_load_explicit(&hd->suspect, memory_order_relaxed) >= how)
        return;
    if (!atomic_load(&hd->until))
        atomic_store(&hd->why, why);
    atomic_store(&hd->suspect, how);
}

bool pgg__hold_set(pgg_hold *hd, bool is_primary, const char *why)
{
    uint64_t high = atomic_load(&hd->high);
    uint64_t none = 0;

    if (!high || is_primary)
        return false;
    /* A hold under way keeps its target: the position known when it
     * began, which a probe's answer since may have raised. */
    if (atomic_compare_exchange_strong(&hd->until, &none, high))
        atomic_store(&hd->why, why);
    return atomic_exchange(&hd->lag, PGG_LAG_HELD) != PGG_LAG_HELD;
}

bool pgg__hold_release(pgg_hold *hd)
{
    int_fast64_t held = PGG_LAG_HELD;

    atomic_store(&hd->suspect, 0);
    atomic_store(&hd->until, 0);
    return atomic_compare_exchange_strong(&hd->lag, &held,
                                          atomic_load(&hd->lag_measured));
}

void pgg__hold_lag(pgg_hold *hd, int64_t lag)
{
    int_fast64_t old = atomic_load(&hd->lag);

    atomic_store(&hd->lag_measured, lag);
    /* A hold set meanwhile wins: only its release replaces it. */
    while (old != PGG_LAG_HELD &&
           !atomic_compare_exchange_weak(&hd->lag, &old, lag))
        ;
}

int pgg__hold_probed(pgg_hold *hd, uint64_t replay, uint64_t seen, int64_t now)
{
    uint64_t high = atomic_load(&hd->high);
    uint64_t until;

    atomic_store(&hd->replay, replay);
    /* What answers raised before the probe was sent: the server had
     * replayed that far when the probe asked (replay only moves forward on
     * a running server), so it counts as reported. */
    if (seen > high)
        high = seen;
    if (replay < high) {
        /* Behind what it reported: it went back (a restart). */
        uint64_t none = 0;

        if (atomic_compare_exchange_strong(&hd->until, &none, high))
            atomic_store(&hd->why, "came back behind the replay position it "
                                   "had reported");
        else if (none < high)
            atomic_store(&hd->until, high);
        if (atomic_load(&hd->high) < high) {
            atomic_store(&hd->high, high);
            atomic_store(&hd->high_at, now);
        }
        return atomic_exchange(&hd->lag, PGG_LAG_HELD) != PGG_LAG_HELD ? -1 : 0;
    }
    atomic_store(&hd->high, replay);
    atomic_store(&hd->high_at, now);
    atomic_store(&hd->suspect, 0);
    until = atomic_load(&hd->until);
    if (!until && !pgg__hold_on(hd))
        return 0;
    /* Held on a sign of a restart (or behind before): replayed up to the
     * target now, and up to everything it reported. */
    if (replay < until)
        return 0;
    return pgg__hold_release(hd) ? 1 : 0;
}

bool pgg__hold_primary_at(pgg_hold *hd, uint64_t lsn, int64_t at)
{
    uint64_t high = atomic_load(&hd->high);

    if (!high || lsn >= high || atomic_load(&hd->high_at) >= at)
        return false;
    /* Another history: what this host reported says nothing now. */
    atomic_store(&hd->high, 0);
    atomic_store(&hd->suspect, 0);
    return pgg__hold_release(hd);
}
