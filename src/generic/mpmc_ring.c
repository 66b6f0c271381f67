/*
 * A semaphore-guarded fetch-and-add ring (see internal/mpmc_ring.h for the contract).
 *
 * The ring is `capacity` slots, a power of two.  Producers and consumers each draw
 * positions from their own counter with fetch-and-add; position p lives in slot
 * p & mask.  A slot holds NULL (empty), an item, or TOMBSTONE (an item that was
 * cancelled and still waits for a consumer to clear it).
 *
 *   producer                                 consumer
 *   take 1 of `space` (none: return false)   take 1 of `avail` (none: sleep)
 *   p = tail++                               h = head++
 *   slots[p & 7]: NULL -> item               slots[h & 7]: item -> NULL
 *   avail++; wake a sleeper                  space++; got TOMBSTONE: take again
 *
 *         head = 9                    tail = 13
 *             v                           v
 *   +------+------+------+------+------+------+------+------+
 *   |      | A    | TOMB | B    | C    |      |      |      |   capacity 8
 *   +------+------+------+------+------+------+------+------+
 *   space = 4, avail = 4: the cancelled item's tombstone still holds its unit
 *
 * Why two semaphores in front of the counters.  Nothing on the hot path takes a lock,
 * so "is the ring full?" and "is there anything to take?" must be answered without
 * one, and answered *before* a position is claimed: a position drawn from a
 * fetch-and-add counter can never be handed back.  `space` counts the slots a producer
 * may still fill, `avail` the items a consumer may still take; each side takes a unit
 * (a compare-and-swap that never goes below zero) and only then draws its position.
 * A producer that finds no space returns false at once and the caller falls back; a
 * consumer that finds no item goes to sleep.  Either way nothing was claimed, which is
 * what lets a consumer time out and leave safely: it never abandons a position that a
 * producer is about to fill.
 *
 * The transient waits.  Having claimed a position, a thread may still find its slot
 * not ready: a consumer's item may not be stored yet, a producer's slot may still hold
 * the item of an earlier lap.  The units make these waits short.  A consumer holds
 * h+1 units of avail only after h+1 items were stored, so the producer of position h
 * has already claimed it.  A producer holds p+1 units of space only after p+1-capacity
 * items were taken, so every position of the previous lap has a consumer.  Counting
 * per slot gives the same: whenever a producer waits on a full slot, a consumer of that
 * slot has claimed and not yet taken, and whenever a consumer waits on an empty slot, a
 * producer of that slot has claimed and not yet stored.  Every wait is for a thread
 * already past its decision whose next step, on the slot as the waiter sees it,
 * succeeds: it is a few instructions from done.  We spin a few hundred
 * times and then yield each round: on a 2-CPU machine that thread may be preempted in
 * exactly that spot and only gets to run if we step aside.
 *
 * Why slots change by compare-and-swap and exchange, not by plain stores and loads.
 * The units count slots in total, not which slot: a slot may meet two laps at once.
 * With capacity 4, producer 4 may still be on its way to slot 0 when consumers 0..3
 * and 5 have finished, which gives producer 8 its unit, and it too finds slot 0 empty.
 * Two plain stores would lose one item.  So a producer fills a slot only by
 * NULL -> item and a consumer empties it only by exchange -> NULL; whoever loses the
 * race waits for the next turn of the same slot.  Two items of one slot may then leave
 * in swapped order, which is fine: across threads no order is promised, and a single
 * producer with a single consumer never meets itself on a slot.
 *
 * Cancel turns item -> TOMBSTONE by compare-and-swap on the item's slot; a lost race
 * means a consumer has it.  Only the slot matters, so an item that swapped laps as
 * above is still found.  The tombstone keeps the item's unit of avail: the consumer
 * that reaches it clears it, gives back the space and takes again, so the counts stay
 * exact.
 *
 * Sleeping.  A consumer that found nothing sleeps on a condition variable under the
 * `monitor` mutex and counts itself in `sleepers`; a producer takes the mutex only if
 * someone sleeps.  This is Dekker's pattern, with all four accesses sequentially
 * consistent:
 *
 *      producer                         consumer (monitor held)
 *      avail++                          sleepers++
 *      if (sleepers > 0)                if (avail == 0 && !closed)
 *          lock; signal; unlock             cond_wait (releases monitor)
 *
 * In the single order of seq_cst operations one of the two increments comes first, so
 * at least one side sees the other's.  If the producer sees the sleeper it signals
 * under the monitor, which it can only get once the consumer is inside cond_wait
 * (the consumer held the monitor from its check until the wait released it), so the
 * signal is not lost.  If the producer sees no sleeper, the consumer's check sees the
 * item and does not sleep.  Close sets `closed` and broadcasts under the monitor by
 * the same reasoning.
 *
 * Positions are size_t and wrap; since the capacity divides 2^N, p & mask stays
 * continuous across the wrap, and head and tail are never compared with each other.
 */
#include <config.h>

#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include <rt/err.h>
#include <rt/time.h>

#include "internal/cpu.h"
#include "internal/mpmc_ring.h"
#include "internal/posix_sys.h"
#include "internal/sync.h"

#define CACHE_LINE 64

/* How many times a thread spins for a committed partner before it starts yielding. */
#define SPINS_BEFORE_YIELD 256u

/* The "cancelled" marker: its address can be no caller's item. */
static char tombstone_object;
#define TOMBSTONE ((void *)&tombstone_object)

/* Each counter has a cache line of its own: producers hammer tail and space, consumers
 * head and avail, and a shared line would bounce between them on every operation. */
struct rt__mpmc_ring {
    /* Set by create, read-only after. */
    size_t mask;
    uint64_t spin_ns;
    void *allocation; /* what calloc returned; the ring itself is aligned inside it */

    alignas(CACHE_LINE) atomic_size_t tail;
    alignas(CACHE_LINE) atomic_size_t space;
    alignas(CACHE_LINE) atomic_size_t head;
    alignas(CACHE_LINE) atomic_size_t avail;

    /* The slow path: consumers with nothing to take. */
    alignas(CACHE_LINE) atomic_uint sleepers;
    atomic_bool closed;
    rt__mutex_t monitor;
    rt__cond_t wakeup;

    alignas(CACHE_LINE) _Atomic(void *) slots[];
};

/* Takes one unit of a counting semaphore if there is one; never waits. */
static bool take_unit(atomic_size_t *units)
{
    size_t seen = atomic_load_explicit(units, memory_order_relaxed);
    while (seen > 0) {
        if (atomic_compare_exchange_weak_explicit(units, &seen, seen - 1, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return true;
    }
    return false;
}

/* One round of waiting for a partner that is committed and nearly done (see the head
 * comment): spin while it is likely running, then yield in case it is preempted. */
static void pause_for_partner(unsigned *rounds)
{
    if (*rounds < SPINS_BEFORE_YIELD) {
        (*rounds)++;
        rt__cpu_relax();
    } else {
        sched_yield();
    }
}

/* Stores @a item once the slot is empty.  A compare-and-swap, because another lap's
 * producer may be after the same empty slot. */
static void fill_slot(_Atomic(void *) *slot, void *item)
{
    unsigned rounds = 0;
    for (;;) {
        void *expected = NULL;
        if (atomic_load_explicit(slot, memory_order_relaxed) == NULL &&
            atomic_compare_exchange_weak_explicit(slot, &expected, item, memory_order_release,
                                                  memory_order_relaxed))
            return;
        pause_for_partner(&rounds);
    }
}

/* Takes what the slot holds (an item or TOMBSTONE) once it holds something.  The
 * exchange can still come back empty when another lap's consumer was faster. */
static void *empty_slot(_Atomic(void *) *slot)
{
    unsigned rounds = 0;
    for (;;) {
        if (atomic_load_explicit(slot, memory_order_relaxed) != NULL) {
            void *taken = atomic_exchange_explicit(slot, NULL, memory_order_acquire);
            if (taken != NULL)
                return taken;
        }
        pause_for_partner(&rounds);
    }
}

static bool has_items(struct rt__mpmc_ring *ring)
{
    return atomic_load_explicit(&ring->avail, memory_order_seq_cst) > 0;
}

static bool is_closed(struct rt__mpmc_ring *ring)
{
    return atomic_load_explicit(&ring->closed, memory_order_seq_cst);
}

/* Busy-waits up to spin_ns (and not past the deadline) for an item; true if one came.
 * Only a hint: pop still has to win the unit. */
static bool spin_for_items(struct rt__mpmc_ring *ring, uint64_t now, uint64_t deadline_ns)
{
    uint64_t until;

    if (ring->spin_ns == 0)
        return false;
    until = deadline_ns - now <= ring->spin_ns ? deadline_ns : now + ring->spin_ns;
    while (now < until) {
        for (int i = 0; i < 32; i++)
            rt__cpu_relax();
        if (atomic_load_explicit(&ring->avail, memory_order_relaxed) > 0)
            return true;
        now = rt_time_nano_ts();
    }
    return false;
}

/* Called by a consumer that found no unit of avail.  Returns true when pop should try
 * to take again (an item may be there, or the wait ended early), false when it should
 * return NULL: the ring is closed or the deadline has passed, and nothing is stored. */
static bool wait_for_items(struct rt__mpmc_ring *ring, uint64_t deadline_ns)
{
    uint64_t now;
    int rc = RT_OK;

    if (is_closed(ring))
        return has_items(ring);
    now = rt_time_nano_ts();
    if (now >= deadline_ns)
        return has_items(ring);
    if (spin_for_items(ring, now, deadline_ns))
        return true;

    rt__mutex_lock(&ring->monitor);
    atomic_fetch_add_explicit(&ring->sleepers, 1, memory_order_seq_cst);
    /* The consumer's half of the Dekker pattern in the head comment. */
    if (!has_items(ring) && !is_closed(ring))
        rc = rt__cond_wait_until(&ring->wakeup, &ring->monitor, deadline_ns);
    atomic_fetch_sub_explicit(&ring->sleepers, 1, memory_order_seq_cst);
    rt__mutex_unlock(&ring->monitor);

    /* A signal and the deadline can arrive together; the item must not be left. */
    if (rc == RT_ERR_TIMEOUT)
        return has_items(ring);
    return true;
}

int rt__mpmc_ring_create(struct rt__mpmc_ring **ring, size_t min_capacity, uint64_t spin_ns)
{
    struct rt__mpmc_ring *created;
    size_t capacity = 2, bytes;
    void *allocation;
    int rc;

    if (ring == NULL)
        return RT_ERR_INVALID_POINTER;
    if (min_capacity > RT__MPMC_RING_MAX_CAPACITY)
        return RT_ERR_OUT_OF_RANGE;
    while (capacity < min_capacity)
        capacity *= 2;

    /* calloc promises less than a cache line of alignment: allocate one line more and
     * place the ring on a line boundary inside. */
    bytes = sizeof *created + capacity * sizeof created->slots[0] + CACHE_LINE - 1;
    allocation = rt__posix_sys.calloc(1, bytes);
    if (allocation == NULL)
        return RT_ERR_NO_MEMORY;
    created = (struct rt__mpmc_ring *)(((uintptr_t)allocation + CACHE_LINE - 1) &
                                       ~(uintptr_t)(CACHE_LINE - 1));

    rc = rt__cond_init(&created->wakeup);
    if (rc != RT_OK)
        goto fail;
    rt__mutex_init(&created->monitor);
    created->mask = capacity - 1;
    created->spin_ns = spin_ns;
    created->allocation = allocation;
    atomic_init(&created->tail, 0);
    atomic_init(&created->space, capacity);
    atomic_init(&created->head, 0);
    atomic_init(&created->avail, 0);
    atomic_init(&created->sleepers, 0);
    atomic_init(&created->closed, false);
    for (size_t i = 0; i < capacity; i++)
        atomic_init(&created->slots[i], NULL);
    *ring = created;
    return RT_OK;

fail:
    free(allocation);
    return rc;
}

void rt__mpmc_ring_destroy(struct rt__mpmc_ring *ring)
{
    if (ring == NULL)
        return;
    rt__cond_destroy(&ring->wakeup);
    rt__mutex_destroy(&ring->monitor);
    free(ring->allocation);
}

size_t rt__mpmc_ring_capacity(struct rt__mpmc_ring *ring)
{
    return ring->mask + 1;
}

bool rt__mpmc_ring_push(struct rt__mpmc_ring *ring, void *item, atomic_size_t *pos)
{
    size_t position;

    if (item == NULL || !take_unit(&ring->space))
        return false;
    position = atomic_fetch_add_explicit(&ring->tail, 1, memory_order_relaxed);
    /* Before the item is visible: a consumer may take it, and its owner complete and
     * push it again, before this call returns; a late store would then overwrite the
     * newer position.  The release in fill_slot publishes it with the item. */
    if (pos != NULL)
        atomic_store_explicit(pos, position, memory_order_relaxed);
    fill_slot(&ring->slots[position & ring->mask], item);

    /* The producer's half of the Dekker pattern in the head comment. */
    atomic_fetch_add_explicit(&ring->avail, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&ring->sleepers, memory_order_seq_cst) > 0) {
        rt__mutex_lock(&ring->monitor);
        rt__cond_signal(&ring->wakeup);
        rt__mutex_unlock(&ring->monitor);
    }
    return true;
}

void *rt__mpmc_ring_pop(struct rt__mpmc_ring *ring, uint64_t deadline_ns)
{
    for (;;) {
        if (take_unit(&ring->avail)) {
            size_t position = atomic_fetch_add_explicit(&ring->head, 1, memory_order_relaxed);
            void *item = empty_slot(&ring->slots[position & ring->mask]);

            atomic_fetch_add_explicit(&ring->space, 1, memory_order_release);
            if (item != TOMBSTONE)
                return item;
            /* Cancelled: the tombstone spent its own unit of avail; look again. */
            continue;
        }
        if (!wait_for_items(ring, deadline_ns))
            return NULL;
    }
}

bool rt__mpmc_ring_cancel(struct rt__mpmc_ring *ring, size_t pos, void *item)
{
    void *expected = item;

    /* NULL would turn an empty slot into a tombstone no unit of avail pays for. */
    if (item == NULL)
        return false;
    return atomic_compare_exchange_strong_explicit(&ring->slots[pos & ring->mask], &expected,
                                                   TOMBSTONE, memory_order_acq_rel,
                                                   memory_order_relaxed);
}

void rt__mpmc_ring_close(struct rt__mpmc_ring *ring)
{
    atomic_store_explicit(&ring->closed, true, memory_order_seq_cst);
    rt__mutex_lock(&ring->monitor);
    rt__cond_broadcast(&ring->wakeup);
    rt__mutex_unlock(&ring->monitor);
}

size_t rt__mpmc_ring_count(struct rt__mpmc_ring *ring)
{
    return atomic_load_explicit(&ring->avail, memory_order_seq_cst);
}

unsigned rt__mpmc_ring_sleepers(struct rt__mpmc_ring *ring)
{
    return atomic_load_explicit(&ring->sleepers, memory_order_relaxed);
}
