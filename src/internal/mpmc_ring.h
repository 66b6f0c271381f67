/*
 * A bounded, lock-free ring of pointers for many producers and many consumers: the
 * hand-off between threads that submit AIO requests and the thread pool's workers.
 * Push never blocks (a full ring says so and the caller falls back); pop blocks with a
 * deadline; a pushed item can be cancelled until a consumer has taken it.  The design
 * and why it is safe are in src/generic/mpmc_ring.c.
 *
 * Items are the caller's pointers and are never NULL.  The ring does not own them:
 * destroy leaves whatever is still stored alone.
 */
#ifndef RT_INTERNAL_MPMC_RING_H
#define RT_INTERNAL_MPMC_RING_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct rt__mpmc_ring;

/** The largest capacity create accepts: far beyond any queue depth, small enough that
 * the slot array's size never overflows size_t on a 32-bit host. */
#define RT__MPMC_RING_MAX_CAPACITY ((size_t)1 << 26)

/**
 * Creates an empty, open ring.
 * @param ring          receives the ring.
 * @param min_capacity  at least this many items may be stored at once; rounded up to a
 *                      power of two, at least 2.
 * @param spin_ns       how long pop busy-waits for an item before it sleeps (0: sleep at
 *                      once).  Spinning saves a wake-up when work comes in quick
 *                      succession, at the price of CPU time.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_POINTER  @a ring is NULL.
 * @retval RT_ERR_OUT_OF_RANGE     @a min_capacity above RT__MPMC_RING_MAX_CAPACITY.
 * @retval RT_ERR_NO_MEMORY
 * @retval RT_ERR_GENERAL_FAILURE  the condition variable could not be set up.
 */
int rt__mpmc_ring_create(struct rt__mpmc_ring **ring, size_t min_capacity, uint64_t spin_ns);

/**
 * Frees the ring.  No thread may be inside any other call on it, nor enter one later.
 * Items still stored are not touched.  NULL is ignored.
 */
void rt__mpmc_ring_destroy(struct rt__mpmc_ring *ring);

/** How many items fit: min_capacity as rounded by create.  Any thread. */
size_t rt__mpmc_ring_capacity(struct rt__mpmc_ring *ring);

/**
 * Stores @a item for one consumer to take, waking a sleeping consumer if there is one.
 * Never sleeps; it may spin or yield for a moment while a consumer finishes taking the
 * item that held the same slot one lap earlier.  Any thread, any number at once.
 * A closed ring still accepts items (see rt__mpmc_ring_close).
 * @param item  the pointer to hand over; must not be NULL.
 * @param pos   if not NULL, receives the item's position, for rt__mpmc_ring_cancel,
 *              before any consumer can see the item (atomic, so a canceller may read
 *              it meanwhile).
 * @return true when stored; false, with nothing changed, when the ring is full or
 *         @a item is NULL.
 */
bool rt__mpmc_ring_push(struct rt__mpmc_ring *ring, void *item, atomic_size_t *pos);

/**
 * Takes one item, waiting until one is stored, the deadline passes or the ring is
 * closed.  Items come out in push order when one thread pushes and one pops; with more
 * threads only "every item exactly once" holds, not any order.  Any thread, any number
 * at once.
 * @param deadline_ns  monotonic time (rt_time_nano_ts() scale) to give up at;
 *                     UINT64_MAX waits forever, a time already past only polls.
 * @return the item, or NULL on timeout or when the ring is closed and holds nothing.
 */
void *rt__mpmc_ring_pop(struct rt__mpmc_ring *ring, uint64_t deadline_ns);

/**
 * Withdraws a pushed item no consumer has taken yet.  Any thread.
 * @param pos   the position push reported for @a item.
 * @param item  the item.  The caller must know it was pushed at @a pos and is (or was,
 *              until a pop returned it) stored there.  A stale @a pos can only make the
 *              cancel fail, or find the same pointer pushed again into that slot, which
 *              is still that item and still correct to cancel.
 * @return true when withdrawn: no pop will ever return this push of @a item.  false when
 *         a consumer has already taken it (or the slot holds something else).
 */
bool rt__mpmc_ring_cancel(struct rt__mpmc_ring *ring, size_t pos, void *item);

/**
 * Closes the ring: every pop blocked now or later returns NULL once the ring holds no
 * item.  Items already stored are still handed out, so nothing is lost on shutdown;
 * stop the producers first, because an item pushed after close is only found by a pop
 * that happens to come later.  Any thread; idempotent; there is no reopen.
 */
void rt__mpmc_ring_close(struct rt__mpmc_ring *ring);

/** Roughly how many items are stored (cancelled ones count until a consumer skips
 * them).  A hint for heuristics: it may be stale by the time it is used.  A seq_cst
 * load, so it can be one half of a Dekker pair with push.  Any thread. */
size_t rt__mpmc_ring_count(struct rt__mpmc_ring *ring);

/** How many consumers are asleep in pop right now: the pool's "start another worker?"
 * hint.  As stale as count.  Any thread. */
unsigned rt__mpmc_ring_sleepers(struct rt__mpmc_ring *ring);

#endif /* RT_INTERNAL_MPMC_RING_H */
