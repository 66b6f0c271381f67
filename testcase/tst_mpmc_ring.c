/*
 * The multi-producer multi-consumer ring (src/internal/mpmc_ring.h).
 *
 * Single-threaded, it must round its capacity up, refuse the push after the last free
 * slot, hand items back in push order across many laps, time out on time, and account
 * for cancelled items so their slots come back.  Across threads: a push must wake a
 * sleeping consumer (a ping-pong of many hand-offs in which every pop sleeps catches a
 * lost wake-up as a multi-second stall), and close must wake a consumer that waits
 * forever while still handing out what is stored.  Allocation failure comes from the
 * rt__posix_sys table.
 *
 * The stress part runs 4 producers and 4 consumers on a ring of 8 slots, so positions
 * wrap constantly and two laps meet on one slot.  Each item is the address of its own
 * "times popped" counter in its producer's array, so a consumer learns who pushed it and
 * which one it is without the ring dereferencing anything.  Two producers cancel random
 * recent items of their own; consumers pop forever, with 1 ms deadlines, or by polling.
 * At the end every pushed item must have been popped exactly once or cancelled exactly
 * once, never both, and nothing else may have come out.  Each run takes about 0.7 s;
 * TST_SOAK_SECONDS=N repeats the rounds for N seconds.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <rt/time.h>

#include "internal/mpmc_ring.h"
#include "internal/posix_sys.h"
#include "internal/sync.h"
#include "tst_common.h"

#define MS (UINT64_C(1000000)) /* nanoseconds */

/* How long each stress variant runs; TST_SOAK_SECONDS overrides. */
static uint64_t stress_ns = 700 * MS;

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Waits up to 5 s for @a count consumers to be asleep in pop; true when they are. */
static bool wait_for_sleepers(struct rt__mpmc_ring *ring, unsigned count)
{
    for (int i = 0; i < 5000; i++) {
        if (rt__mpmc_ring_sleepers(ring) == count)
            return true;
        sleep_ms(1);
    }
    return false;
}

/* ---- single-threaded ------------------------------------------------------------- */

static void test_create_arguments(void)
{
    struct rt__mpmc_ring *ring = NULL;

    TST_RC(rt__mpmc_ring_create(NULL, 8, 0), RT_ERR_INVALID_POINTER);
    TST_RC(rt__mpmc_ring_create(&ring, RT__MPMC_RING_MAX_CAPACITY + 1, 0), RT_ERR_OUT_OF_RANGE);
    CU_ASSERT_PTR_NULL(ring);

    TST_RC_FATAL(rt__mpmc_ring_create(&ring, 0, 0), RT_OK);
    CU_ASSERT_EQUAL(rt__mpmc_ring_capacity(ring), 2);
    rt__mpmc_ring_destroy(ring);

    TST_RC_FATAL(rt__mpmc_ring_create(&ring, 64, 0), RT_OK);
    CU_ASSERT_EQUAL(rt__mpmc_ring_capacity(ring), 64);
    rt__mpmc_ring_destroy(ring);

    rt__mpmc_ring_destroy(NULL);
}

static void test_capacity_and_fifo(void)
{
    static int items[16];
    struct rt__mpmc_ring *ring;
    size_t capacity;
    atomic_size_t pos;

    TST_RC_FATAL(rt__mpmc_ring_create(&ring, 5, 0), RT_OK);
    capacity = rt__mpmc_ring_capacity(ring);
    CU_ASSERT_TRUE(capacity >= 5);
    CU_ASSERT_EQUAL(capacity & (capacity - 1), 0); /* a power of two */
    CU_ASSERT_FATAL(capacity < sizeof items / sizeof items[0]);

    CU_ASSERT_FALSE(rt__mpmc_ring_push(ring, NULL, &pos));
    for (size_t i = 0; i < capacity; i++) {
        CU_ASSERT_TRUE(rt__mpmc_ring_push(ring, &items[i], &pos));
        CU_ASSERT_EQUAL(pos, i);
    }
    CU_ASSERT_EQUAL(rt__mpmc_ring_count(ring), capacity);
    CU_ASSERT_FALSE(rt__mpmc_ring_push(ring, &items[capacity], NULL)); /* full */
    CU_ASSERT_EQUAL(rt__mpmc_ring_count(ring), capacity);

    for (size_t i = 0; i < capacity; i++)
        CU_ASSERT_PTR_EQUAL(rt__mpmc_ring_pop(ring, 0), &items[i]);
    CU_ASSERT_PTR_NULL(rt__mpmc_ring_pop(ring, 0));
    CU_ASSERT_EQUAL(rt__mpmc_ring_count(ring), 0);

    /* Many laps with the ring half full: order survives the wrap, and the full check
     * counts free slots, not positions. */
    for (size_t lap = 0; lap < 50; lap++) {
        for (size_t i = 0; i < capacity; i++)
            CU_ASSERT_TRUE(rt__mpmc_ring_push(ring, &items[(lap + i) % capacity], NULL));
        CU_ASSERT_FALSE(rt__mpmc_ring_push(ring, &items[capacity], NULL));
        for (size_t i = 0; i < capacity; i++)
            CU_ASSERT_PTR_EQUAL(rt__mpmc_ring_pop(ring, 0), &items[(lap + i) % capacity]);
    }
    CU_ASSERT_PTR_NULL(rt__mpmc_ring_pop(ring, 0));
    CU_ASSERT_EQUAL(rt__mpmc_ring_sleepers(ring), 0);
    rt__mpmc_ring_destroy(ring);
}

static void check_timeout(uint64_t spin_ns, unsigned timeout_ms)
{
    struct rt__mpmc_ring *ring;
    uint64_t start, elapsed;

    TST_RC_FATAL(rt__mpmc_ring_create(&ring, 4, spin_ns), RT_OK);
    start = rt_time_nano_ts();
    CU_ASSERT_PTR_NULL(rt__mpmc_ring_pop(ring, start + timeout_ms * MS));
    elapsed = rt_time_nano_ts() - start;
    if (elapsed + MS < timeout_ms * MS || elapsed > 2000 * MS)
        fprintf(stderr, "  %u ms pop (spin %llu ns) took %llu us\n", timeout_ms,
                (unsigned long long)spin_ns, (unsigned long long)(elapsed / 1000));
    CU_ASSERT_TRUE(elapsed + MS >= timeout_ms * MS); /* not early */
    CU_ASSERT_TRUE(elapsed <= 2000 * MS);            /* not absurdly late */
    CU_ASSERT_EQUAL(rt__mpmc_ring_sleepers(ring), 0);
    rt__mpmc_ring_destroy(ring);
}

static void test_pop_deadline(void)
{
    struct rt__mpmc_ring *ring;
    uint64_t start;

    check_timeout(0, 50);
    check_timeout(200 * 1000, 50); /* spins 0.2 ms, then sleeps */
    check_timeout(1000 * MS, 20);  /* the spin stops at the deadline */
    check_timeout(UINT64_MAX, 10); /* a spin time that would overflow the clock */

    /* Deadlines now or past only poll. */
    TST_RC_FATAL(rt__mpmc_ring_create(&ring, 4, 10 * MS), RT_OK);
    start = rt_time_nano_ts();
    CU_ASSERT_PTR_NULL(rt__mpmc_ring_pop(ring, 0));
    CU_ASSERT_PTR_NULL(rt__mpmc_ring_pop(ring, start - 1));
    CU_ASSERT_TRUE(rt_time_nano_ts() - start < 50 * MS);
    rt__mpmc_ring_destroy(ring);
}

static void test_cancel(void)
{
    static int a, b, c;
    struct rt__mpmc_ring *ring;
    atomic_size_t pos_a, pos_b, pos_c;
    size_t capacity;
    uint64_t start;

    TST_RC_FATAL(rt__mpmc_ring_create(&ring, 4, 0), RT_OK);
    capacity = rt__mpmc_ring_capacity(ring);
    CU_ASSERT_TRUE(rt__mpmc_ring_push(ring, &a, &pos_a));
    CU_ASSERT_TRUE(rt__mpmc_ring_push(ring, &b, &pos_b));
    CU_ASSERT_TRUE(rt__mpmc_ring_push(ring, &c, &pos_c));

    CU_ASSERT_FALSE(rt__mpmc_ring_cancel(ring, pos_b, &c)); /* the wrong item */
    CU_ASSERT_FALSE(rt__mpmc_ring_cancel(ring, pos_b, NULL));
    CU_ASSERT_TRUE(rt__mpmc_ring_cancel(ring, pos_b, &b));
    CU_ASSERT_FALSE(rt__mpmc_ring_cancel(ring, pos_b, &b)); /* already cancelled */

    CU_ASSERT_PTR_EQUAL(rt__mpmc_ring_pop(ring, 0), &a);
    CU_ASSERT_FALSE(rt__mpmc_ring_cancel(ring, pos_a, &a)); /* already taken */
    CU_ASSERT_PTR_EQUAL(rt__mpmc_ring_pop(ring, 0), &c);
    start = rt_time_nano_ts();
    CU_ASSERT_PTR_NULL(rt__mpmc_ring_pop(ring, start + 20 * MS));
    CU_ASSERT_TRUE(rt_time_nano_ts() - start + MS >= 20 * MS);
    CU_ASSERT_FALSE(rt__mpmc_ring_cancel(ring, pos_c, &c));

    /* A NULL cancel on an empty slot must not have planted a tombstone, and the
     * cancelled item's slot is free again: a full lap fits and comes back whole. */
    CU_ASSERT_EQUAL(rt__mpmc_ring_count(ring), 0);
    CU_ASSERT_FALSE(rt__mpmc_ring_cancel(ring, pos_c + 1, NULL));
    for (size_t i = 0; i < capacity; i++)
        CU_ASSERT_TRUE(rt__mpmc_ring_push(ring, &a, NULL));
    CU_ASSERT_FALSE(rt__mpmc_ring_push(ring, &a, NULL));
    for (size_t i = 0; i < capacity; i++)
        CU_ASSERT_PTR_EQUAL(rt__mpmc_ring_pop(ring, 0), &a);
    CU_ASSERT_PTR_NULL(rt__mpmc_ring_pop(ring, 0));

    /* Cancelling everything leaves nothing to pop and every slot free. */
    CU_ASSERT_TRUE(rt__mpmc_ring_push(ring, &a, &pos_a));
    CU_ASSERT_TRUE(rt__mpmc_ring_push(ring, &b, &pos_b));
    CU_ASSERT_TRUE(rt__mpmc_ring_cancel(ring, pos_b, &b));
    CU_ASSERT_TRUE(rt__mpmc_ring_cancel(ring, pos_a, &a));
    CU_ASSERT_PTR_NULL(rt__mpmc_ring_pop(ring, 0));
    CU_ASSERT_EQUAL(rt__mpmc_ring_count(ring), 0);
    for (size_t i = 0; i < capacity; i++)
        CU_ASSERT_TRUE(rt__mpmc_ring_push(ring, &c, NULL));
    CU_ASSERT_FALSE(rt__mpmc_ring_push(ring, &c, NULL));
    rt__mpmc_ring_destroy(ring);
}

static void *failing_calloc(size_t count, size_t size)
{
    errno = ENOMEM;
    return NULL;
}

static void test_no_memory(void)
{
    struct rt__mpmc_ring *ring = NULL;
    int rc;

    rt__posix_sys.calloc = failing_calloc;
    rc = rt__mpmc_ring_create(&ring, 8, 0);
    rt__posix_sys_reset();
    TST_RC(rc, RT_ERR_NO_MEMORY);
    CU_ASSERT_PTR_NULL(ring);

    TST_RC_FATAL(rt__mpmc_ring_create(&ring, 8, 0), RT_OK);
    rt__mpmc_ring_destroy(ring);
}

/* ---- two threads ----------------------------------------------------------------- */

struct blocked_pop {
    struct rt__mpmc_ring *ring;
    uint64_t deadline_ns;
    void *result;
};

static void *blocked_pop_main(void *opaque)
{
    struct blocked_pop *arg = opaque;
    arg->result = rt__mpmc_ring_pop(arg->ring, arg->deadline_ns);
    return NULL;
}

static void test_push_wakes_sleeper(void)
{
    static int item;
    struct blocked_pop arg;
    rt__thread_t thread;
    uint64_t start;

    TST_RC_FATAL(rt__mpmc_ring_create(&arg.ring, 4, 0), RT_OK);
    start = rt_time_nano_ts();
    arg.deadline_ns = start + 10000 * MS;
    arg.result = NULL;
    TST_RC_FATAL(rt__thread_create(&thread, blocked_pop_main, &arg, "tst-pop"), RT_OK);
    CU_ASSERT_TRUE(wait_for_sleepers(arg.ring, 1));
    CU_ASSERT_TRUE(rt__mpmc_ring_push(arg.ring, &item, NULL));
    rt__thread_join(&thread);
    CU_ASSERT_PTR_EQUAL(arg.result, &item);
    CU_ASSERT_TRUE(rt_time_nano_ts() - start < 5000 * MS); /* woken, not timed out */
    CU_ASSERT_EQUAL(rt__mpmc_ring_sleepers(arg.ring), 0);
    rt__mpmc_ring_destroy(arg.ring);
}

/* Many hand-offs each way through two rings without spinning, so nearly every pop
 * sleeps: one lost wake-up stalls a round for the whole 5 s deadline and fails it. */
#define PING_PONG_ROUNDS 3000

struct ping_pong {
    struct rt__mpmc_ring *ping, *pong;
    int failures;
};

static void *pong_main(void *opaque)
{
    struct ping_pong *pp = opaque;
    for (int i = 0; i < PING_PONG_ROUNDS; i++) {
        void *ball = rt__mpmc_ring_pop(pp->ping, rt_time_nano_ts() + 5000 * MS);
        if (ball == NULL || !rt__mpmc_ring_push(pp->pong, ball, NULL)) {
            pp->failures++;
            break;
        }
    }
    return NULL;
}

static void test_ping_pong(void)
{
    static int ball;
    struct ping_pong pp = {.failures = 0};
    rt__thread_t thread;
    int lost = 0;

    TST_RC_FATAL(rt__mpmc_ring_create(&pp.ping, 2, 0), RT_OK);
    TST_RC_FATAL(rt__mpmc_ring_create(&pp.pong, 2, 0), RT_OK);
    TST_RC_FATAL(rt__thread_create(&thread, pong_main, &pp, "tst-pong"), RT_OK);
    for (int i = 0; i < PING_PONG_ROUNDS; i++) {
        if (!rt__mpmc_ring_push(pp.ping, &ball, NULL) ||
            rt__mpmc_ring_pop(pp.pong, rt_time_nano_ts() + 5000 * MS) != &ball) {
            lost++;
            break;
        }
    }
    if (lost != 0)
        rt__mpmc_ring_close(pp.ping); /* let the other side out */
    rt__thread_join(&thread);
    CU_ASSERT_EQUAL(lost, 0);
    CU_ASSERT_EQUAL(pp.failures, 0);
    rt__mpmc_ring_destroy(pp.ping);
    rt__mpmc_ring_destroy(pp.pong);
}

static void test_close(void)
{
    static int x, y;
    struct blocked_pop arg;
    rt__thread_t thread;
    uint64_t start;

    /* A consumer waiting forever comes back with NULL. */
    TST_RC_FATAL(rt__mpmc_ring_create(&arg.ring, 4, 0), RT_OK);
    arg.deadline_ns = UINT64_MAX;
    arg.result = &x;
    TST_RC_FATAL(rt__thread_create(&thread, blocked_pop_main, &arg, "tst-pop"), RT_OK);
    CU_ASSERT_TRUE(wait_for_sleepers(arg.ring, 1));
    start = rt_time_nano_ts();
    rt__mpmc_ring_close(arg.ring);
    rt__thread_join(&thread);
    CU_ASSERT_PTR_NULL(arg.result);
    CU_ASSERT_TRUE(rt_time_nano_ts() - start < 2000 * MS);
    /* ...and so does every later pop, at once. */
    CU_ASSERT_PTR_NULL(rt__mpmc_ring_pop(arg.ring, UINT64_MAX));
    rt__mpmc_ring_destroy(arg.ring);

    /* What was stored before close is still handed out, then NULL. */
    TST_RC_FATAL(rt__mpmc_ring_create(&arg.ring, 4, 1 * MS), RT_OK);
    CU_ASSERT_TRUE(rt__mpmc_ring_push(arg.ring, &x, NULL));
    CU_ASSERT_TRUE(rt__mpmc_ring_push(arg.ring, &y, NULL));
    rt__mpmc_ring_close(arg.ring);
    rt__mpmc_ring_close(arg.ring); /* idempotent */
    CU_ASSERT_PTR_EQUAL(rt__mpmc_ring_pop(arg.ring, UINT64_MAX), &x);
    CU_ASSERT_PTR_EQUAL(rt__mpmc_ring_pop(arg.ring, UINT64_MAX), &y);
    start = rt_time_nano_ts();
    CU_ASSERT_PTR_NULL(rt__mpmc_ring_pop(arg.ring, UINT64_MAX));
    CU_ASSERT_TRUE(rt_time_nano_ts() - start < 1000 * MS); /* closed: no spin, no sleep */
    rt__mpmc_ring_destroy(arg.ring);
}

/* ---- stress ---------------------------------------------------------------------- */

#define PRODUCERS 4
#define CONSUMERS 4
/* Items one producer may push in one round; a round ends early when one runs out. */
#define ITEMS_PER_PRODUCER (1u << 20)
/* How far back a cancelling producer picks its victim. */
#define RECENT 16

struct stress;

struct producer {
    struct stress *stress;
    unsigned id;
    bool cancels;
    /* One counter per item, bumped by the consumer that pops it; the item pushed is
     * the counter's address. */
    _Atomic unsigned char *popped;
    unsigned char *cancelled; /* successful cancels per item; this producer's only */
    size_t pushed;
    size_t cancel_tries, cancel_wins, full;
};

struct consumer {
    struct stress *stress;
    unsigned id;
    size_t popped, timeouts;
};

struct stress {
    struct rt__mpmc_ring *ring;
    uint64_t end_ns;
    atomic_bool stopping;    /* the producers are done and the ring is about to close */
    atomic_size_t strangers; /* popped pointers no producer pushed */
    struct producer producers[PRODUCERS];
    struct consumer consumers[CONSUMERS];
};

static unsigned next_random(unsigned *state)
{
    /* xorshift32: cheap and good enough to pick a victim */
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    return *state;
}

static void *producer_main(void *opaque)
{
    struct producer *self = opaque;
    struct rt__mpmc_ring *ring = self->stress->ring;
    size_t recent_pos[RECENT];
    unsigned random = 0x9e3779b9u * (self->id + 1);

    while (self->pushed < ITEMS_PER_PRODUCER && rt_time_nano_ts() < self->stress->end_ns) {
        size_t seq = self->pushed;
        atomic_size_t pos;
        while (!rt__mpmc_ring_push(ring, (void *)&self->popped[seq], &pos)) {
            self->full++;
            sched_yield();
        }
        recent_pos[seq % RECENT] = pos;
        self->pushed++;

        if (self->cancels && next_random(&random) % 4 == 0) {
            size_t window = self->pushed < RECENT ? self->pushed : RECENT;
            size_t victim = self->pushed - 1 - next_random(&random) % window;
            self->cancel_tries++;
            if (rt__mpmc_ring_cancel(ring, recent_pos[victim % RECENT],
                                     (void *)&self->popped[victim])) {
                self->cancelled[victim]++;
                self->cancel_wins++;
            }
        }
    }
    return NULL;
}

/* Counts one pop of @a item against the producer whose array it points into. */
static void record_pop(struct stress *stress, void *item)
{
    for (unsigned p = 0; p < PRODUCERS; p++) {
        struct producer *producer = &stress->producers[p];
        uintptr_t offset = (uintptr_t)item - (uintptr_t)producer->popped;
        if (offset < ITEMS_PER_PRODUCER * sizeof producer->popped[0]) {
            atomic_fetch_add_explicit(&producer->popped[offset / sizeof producer->popped[0]], 1,
                                      memory_order_relaxed);
            return;
        }
    }
    atomic_fetch_add_explicit(&stress->strangers, 1, memory_order_relaxed);
}

static void *consumer_main(void *opaque)
{
    struct consumer *self = opaque;
    struct stress *stress = self->stress;

    for (;;) {
        uint64_t deadline;
        void *item;

        /* Consumer 0 waits forever (only close ends it), 3 polls, the rest wait 1 ms. */
        if (self->id == 0)
            deadline = UINT64_MAX;
        else if (self->id == 3)
            deadline = 0;
        else
            deadline = rt_time_nano_ts() + 1 * MS;
        item = rt__mpmc_ring_pop(stress->ring, deadline);
        if (item == NULL) {
            if (atomic_load_explicit(&stress->stopping, memory_order_acquire))
                break;
            self->timeouts++;
            if (deadline == 0)
                sched_yield();
            continue;
        }
        record_pop(stress, item);
        self->popped++;
    }
    return NULL;
}

/* Checks that every item was popped once or cancelled once; returns how many items
 * broke that rule (and says how). */
static size_t verify_round(struct stress *stress)
{
    size_t lost = 0, twice = 0, both = 0, unpushed = 0;

    for (unsigned p = 0; p < PRODUCERS; p++) {
        struct producer *producer = &stress->producers[p];
        for (size_t i = 0; i < ITEMS_PER_PRODUCER; i++) {
            unsigned pops = atomic_load_explicit(&producer->popped[i], memory_order_relaxed);
            unsigned cancels = producer->cancelled[i];
            if (i >= producer->pushed) {
                unpushed += pops + cancels != 0;
                continue;
            }
            if (pops + cancels == 1)
                continue;
            if (pops != 0 && cancels != 0)
                both++;
            else if (pops + cancels > 1)
                twice++;
            else
                lost++;
            if (lost + twice + both <= 5)
                fprintf(stderr, "  producer %u item %zu: popped %u times, cancelled %u times\n", p,
                        i, pops, cancels);
        }
    }
    if (lost + twice + both + unpushed != 0)
        fprintf(stderr, "  %zu lost, %zu twice, %zu popped and cancelled, %zu never pushed\n", lost,
                twice, both, unpushed);
    return lost + twice + both + unpushed;
}

/* One round: returns false when it found a failure (already asserted). */
static bool stress_round(uint64_t spin_ns, uint64_t duration_ns, bool verbose)
{
    struct stress *stress = calloc(1, sizeof *stress);
    rt__thread_t producers[PRODUCERS], consumers[CONSUMERS];
    size_t pushed = 0, popped = 0, cancelled = 0, tries = 0, timeouts = 0, full = 0;
    size_t drained = 0, bad;
    void *item;

    CU_ASSERT_FATAL(stress != NULL);
    TST_RC_FATAL(rt__mpmc_ring_create(&stress->ring, 8, spin_ns), RT_OK);
    CU_ASSERT_EQUAL_FATAL(rt__mpmc_ring_capacity(stress->ring), 8);
    atomic_init(&stress->stopping, false);
    atomic_init(&stress->strangers, 0);
    stress->end_ns = rt_time_nano_ts() + duration_ns;
    for (unsigned p = 0; p < PRODUCERS; p++) {
        struct producer *producer = &stress->producers[p];
        producer->stress = stress;
        producer->id = p;
        producer->cancels = p < 2;
        producer->popped = calloc(ITEMS_PER_PRODUCER, sizeof producer->popped[0]);
        producer->cancelled = calloc(ITEMS_PER_PRODUCER, 1);
        CU_ASSERT_FATAL(producer->popped != NULL && producer->cancelled != NULL);
    }

    for (unsigned c = 0; c < CONSUMERS; c++) {
        stress->consumers[c] = (struct consumer){.stress = stress, .id = c};
        TST_RC_FATAL(
            rt__thread_create(&consumers[c], consumer_main, &stress->consumers[c], "tst-consumer"),
            RT_OK);
    }
    for (unsigned p = 0; p < PRODUCERS; p++)
        TST_RC_FATAL(
            rt__thread_create(&producers[p], producer_main, &stress->producers[p], "tst-producer"),
            RT_OK);
    for (unsigned p = 0; p < PRODUCERS; p++)
        rt__thread_join(&producers[p]);
    atomic_store_explicit(&stress->stopping, true, memory_order_release);
    rt__mpmc_ring_close(stress->ring);
    for (unsigned c = 0; c < CONSUMERS; c++)
        rt__thread_join(&consumers[c]);

    /* A consumer may leave on a timeout that came just before the producers stopped;
     * whatever it left behind must still be there. */
    while ((item = rt__mpmc_ring_pop(stress->ring, 0)) != NULL) {
        record_pop(stress, item);
        drained++;
    }
    CU_ASSERT_EQUAL(rt__mpmc_ring_count(stress->ring), 0);
    CU_ASSERT_EQUAL(rt__mpmc_ring_sleepers(stress->ring), 0);

    for (unsigned p = 0; p < PRODUCERS; p++) {
        pushed += stress->producers[p].pushed;
        cancelled += stress->producers[p].cancel_wins;
        tries += stress->producers[p].cancel_tries;
        full += stress->producers[p].full;
    }
    for (unsigned c = 0; c < CONSUMERS; c++) {
        popped += stress->consumers[c].popped;
        timeouts += stress->consumers[c].timeouts;
    }
    popped += drained;
    if (verbose)
        printf("\n    spin %llu ns: %zu pushed, %zu popped (%zu drained), %zu of %zu cancels "
               "won, %zu full, %zu timeouts ",
               (unsigned long long)spin_ns, pushed, popped, drained, cancelled, tries, full,
               timeouts);

    bad = verify_round(stress);
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(atomic_load(&stress->strangers), 0);
    CU_ASSERT_EQUAL(popped + cancelled, pushed);
    CU_ASSERT_TRUE(pushed > 1000); /* the round did real work */
    CU_ASSERT_TRUE(cancelled > 0); /* ...and cancel won some races */

    rt__mpmc_ring_destroy(stress->ring);
    for (unsigned p = 0; p < PRODUCERS; p++) {
        free((void *)stress->producers[p].popped);
        free(stress->producers[p].cancelled);
    }
    bad += atomic_load(&stress->strangers) + (popped + cancelled != pushed);
    free(stress);
    return bad == 0;
}

static void run_stress(uint64_t spin_ns)
{
    uint64_t start = rt_time_nano_ts();
    unsigned rounds = 0;

    /* A normal run is one round; a soak repeats rounds until its time is up. */
    do {
        uint64_t left = stress_ns - (rt_time_nano_ts() - start);
        if (!stress_round(spin_ns, left < 700 * MS ? left : 700 * MS, rounds == 0))
            break;
        rounds++;
    } while (rt_time_nano_ts() - start + 10 * MS < stress_ns);
    if (rounds > 1)
        printf("(%u rounds) ", rounds);
}

static void test_stress_sleeping(void)
{
    run_stress(0);
}

static void test_stress_spinning(void)
{
    run_stress(50 * 1000);
}

int main(void)
{
    const char *soak = getenv("TST_SOAK_SECONDS");
    CU_pSuite basic, threads, stress;

    if (soak != NULL && soak[0] != '\0') {
        unsigned long seconds = strtoul(soak, NULL, 10);
        if (seconds == 0 || seconds > 7 * 24 * 3600) {
            fprintf(stderr, "TST_SOAK_SECONDS must be a number of seconds, not '%s'\n", soak);
            return 1;
        }
        stress_ns = (uint64_t)seconds * 1000 * MS;
    }
    /* A lost wake-up, or an item lost while a consumer waits for its slot, hangs:
     * fail instead.  A normal run takes about 2 s, 10 s under ThreadSanitizer. */
    alarm(60 + 3 * (unsigned)(stress_ns / (1000 * MS)));

    basic = tst_suite("mpmc ring, one thread");
    threads = tst_suite("mpmc ring, wake-ups");
    stress = tst_suite("mpmc ring, stress");

    TST_ADD(basic, test_create_arguments);
    TST_ADD(basic, test_capacity_and_fifo);
    TST_ADD(basic, test_pop_deadline);
    TST_ADD(basic, test_cancel);
    TST_ADD(basic, test_no_memory);

    TST_ADD(threads, test_push_wakes_sleeper);
    TST_ADD(threads, test_ping_pong);
    TST_ADD(threads, test_close);

    TST_ADD(stress, test_stress_sleeping);
    TST_ADD(stress, test_stress_spinning);

    return tst_run();
}
