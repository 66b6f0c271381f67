/*
 * The worker pool behind the "threads" backend (see internal/tpool.h).
 *
 * Hand-off: requests go from submitters to workers through a lock-free MPMC ring
 * (internal/mpmc_ring.h): a submit is a few atomic operations per request, and a
 * worker takes one the same way; neither side locks unless a worker sleeps.  Any
 * number of requests of the same file run at once: there is no per-file
 * serialization, unlike glibc's POSIX AIO.
 *
 *   submitters ──push──► ring (capacity ≥ 2 × the context's) ──pop──► workers
 *        │ ring full                                      ▲           │
 *        ▼                                                │           ▼
 *      spill FIFO (pool lock) ──moved into the ring as ───┘   execute, post_done
 *                                room frees up
 *
 * The spill FIFO only fills when the ring is full, which a bounded context cannot
 * cause (the ring holds twice its capacity, so even cancelled entries still waiting to
 * be skipped leave room); an unlimited context can.  Whoever spills moves what it can
 * back into the ring, and every worker that takes a request moves more: while the
 * spill FIFO is not empty the ring is full or about to be refilled, so nothing waits
 * there with idle workers.
 *
 * The ring can be switched off (RT_AIO_POOL_QUEUE=locked in the environment): then
 * the spill FIFO is the only queue and workers sleep on a condition variable, the
 * design this pool had before the ring.  It stays for the same-run comparison in
 * `make bench` (the peer "vrt, mutex queue"), which is how the ring has to keep earning
 * its place.
 *
 * The waiter's doze (rt__tpool_sleep): while RT__TPOOL_DOZE_BACKLOG or more requests
 * wait for a worker, the device has work whether or not the waiter hears of a
 * completion at once, so the waiter sleeps with waiter_dozing raised and a bound of
 * RT__TPOOL_DOZE_MAX_NS, and a worker that finishes a request with that backlog pushes
 * it without ringing while the flag is up (rt__aio_ctx_post_unless_dozing).  The first
 * request finished with a shallower backlog rings, and the waiter comes back to a dozen
 * completions instead of being woken, across vCPUs, for each.  Ordering: the worker's
 * push and its look at the flag are seq_cst, as are the waiter's raise and lower around
 * its sleep; a worker that saw the flag up pushed before it came down, so the waiter's
 * next look finds the request; one that saw it down rings as usual.  The bound covers a
 * backlog that is cancelled (tombstones count until a worker skips them) or a device
 * that stalls while a completion is held.
 *
 * Cancel: a request still in the ring is turned into a tombstone there (it fails if a
 * worker took it first); one in the spill FIFO is unlinked under the pool lock.
 *
 * Workers: they live in fixed slots, start when work arrives and no idle worker covers
 * it (one per request, up to max_workers), and leave after idle_ms without work.  A
 * worker that idles out marks its slot exited; the next start in that slot joins it
 * first, and destroy joins every slot, so no thread is ever left running on freed
 * memory.  A worker about to leave and a submitter that found enough workers must not
 * both miss the last request: the worker drops live_workers and then looks at the
 * queues, the submitter adds its request and then reads live_workers (all seq_cst), so
 * one of them sees the other (Dekker's pattern) and the request gets a worker.
 */
#include <config.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <rt/err.h>
#include <rt/time.h>

#include "internal/aio.h"
#include "internal/cpu.h"
#include "internal/doorbell.h"
#include "internal/mpmc_ring.h"
#include "internal/posix_sys.h"
#include "internal/req_queue.h"
#include "internal/sync.h"
#include "internal/tpool.h"

struct worker {
    struct rt__tpool *pool;
    rt__thread_t thread;
    bool started; /* a thread was created in this slot and not yet joined */
    bool exited;  /* ...and it has left its loop */
};

struct rt__tpool {
    struct rt__mpmc_ring *ring; /* NULL when switched off: the spill FIFO is the queue */

    rt__mutex_t lock;             /* worker slots, the spill FIFO */
    rt__cond_t work_ready;        /* without the ring: workers sleep here */
    struct rt__req_queue spilled; /* see the head comment */
    unsigned max_workers;
    _Atomic unsigned live_workers; /* changed under lock, read anywhere */
    unsigned idle_workers;         /* without the ring: asleep on work_ready (lock) */
    uint32_t idle_ms;
    atomic_bool stopping;
    atomic_bool spinning;      /* a worker is in spin_for_work() */
    bool doze;                 /* RT_AIO_POOL_DOZE is not "off": the waiter may doze */
    uint64_t doze_max_ns;      /* the doze's bound (RT__TPOOL_DOZE_MAX_NS) */
    atomic_bool waiter_dozing; /* the waiter is in rt__tpool_sleep()'s bounded sleep */
    struct worker workers[];
};

/* How long a worker that ran out of work looks for more before it sleeps: the request
 * that follows a completion (the waiter resubmitting) then needs no wake-up. */
#ifndef WORKER_SPIN_NS
#define WORKER_SPIN_NS 30000u
#endif

/* When a worker that starts waiting now gives up and may leave. */
static uint64_t idle_deadline(const struct rt__tpool *pool)
{
    return rt_time_nano_ts() + (uint64_t)pool->idle_ms * 1000000u;
}

/* Whether any queue holds work.  The ring's count is a seq_cst load: one half of the
 * exit/submit Dekker pair (the spill FIFO's count is exact under the lock, where that
 * pair runs). */
static bool has_work(struct rt__tpool *pool)
{
    return rt__req_queue_count(&pool->spilled) > 0 ||
           (pool->ring != NULL && rt__mpmc_ring_count(pool->ring) > 0);
}

/* How many queued requests no worker has taken yet.  A hint (the counts are read
 * without the lock), which is all a decision to let the waiter sleep on needs. */
static size_t backlog(struct rt__tpool *pool)
{
    return rt__req_queue_count(&pool->spilled) +
           (pool->ring != NULL ? rt__mpmc_ring_count(pool->ring) : 0);
}

/* Spins up to WORKER_SPIN_NS for work to arrive.  One worker spins at a time: that is
 * enough to catch the next request, and more would only take CPU from the workers
 * doing I/O.  Called without the lock. */
static void spin_for_work(struct rt__tpool *pool)
{
    uint64_t until;

    if (atomic_exchange_explicit(&pool->spinning, true, memory_order_relaxed))
        return;
    until = rt_time_nano_ts() + WORKER_SPIN_NS;
    while (!has_work(pool) && !atomic_load_explicit(&pool->stopping, memory_order_relaxed) &&
           rt_time_nano_ts() < until) {
        for (int i = 0; i < 32; i++)
            rt__cpu_relax();
    }
    atomic_store_explicit(&pool->spinning, false, memory_order_relaxed);
}

/* Moves spilled requests into the ring while it has room, oldest first.  Lock held. */
static void unspill_locked(struct rt__tpool *pool)
{
    struct rt_aio_req *req;

    while ((req = rt__req_queue_pop(&pool->spilled)) != NULL) {
        if (!rt__mpmc_ring_push(pool->ring, req, &req->pool_pos)) {
            rt__req_queue_push_front(&pool->spilled, req);
            return;
        }
    }
}

/* After a worker took a request from the ring: its slot is free, refill from the
 * spill FIFO if anything waits there. */
static void unspill(struct rt__tpool *pool)
{
    if (rt__req_queue_count(&pool->spilled) == 0)
        return;
    rt__mutex_lock(&pool->lock);
    unspill_locked(pool);
    rt__mutex_unlock(&pool->lock);
}

/* The next request from the ring, waiting at most idle_ms; NULL on idle or stop. */
static struct rt_aio_req *take_from_ring(struct rt__tpool *pool)
{
    struct rt_aio_req *req = rt__mpmc_ring_pop(pool->ring, 0); /* 0: only look */

    if (req == NULL) {
        spin_for_work(pool);
        req = rt__mpmc_ring_pop(pool->ring, idle_deadline(pool));
    }
    if (req != NULL)
        unspill(pool);
    return req;
}

/* Without the ring: the next request from the FIFO under the lock, waiting on the
 * condition variable at most idle_ms; NULL on idle or stop. */
static struct rt_aio_req *take_locked(struct rt__tpool *pool)
{
    struct rt_aio_req *req;

    if (!has_work(pool))
        spin_for_work(pool);
    rt__mutex_lock(&pool->lock);
    while (rt__req_queue_count(&pool->spilled) == 0 &&
           !atomic_load_explicit(&pool->stopping, memory_order_relaxed)) {
        int rc;

        pool->idle_workers++;
        rc = rt__cond_wait_until(&pool->work_ready, &pool->lock, idle_deadline(pool));
        pool->idle_workers--;
        if (rc == RT_ERR_TIMEOUT)
            break;
    }
    req = rt__req_queue_pop(&pool->spilled);
    rt__mutex_unlock(&pool->lock);
    return req;
}

/* A worker that found no work: leaves if the pool stops or the queues are still empty
 * once it has stopped counting as live (see the head comment).  @return whether it
 * left; the caller then returns at once. */
static bool leave_if_idle(struct worker *self)
{
    struct rt__tpool *pool = self->pool;

    rt__mutex_lock(&pool->lock);
    atomic_fetch_sub_explicit(&pool->live_workers, 1, memory_order_seq_cst);
    if (!atomic_load_explicit(&pool->stopping, memory_order_relaxed) && has_work(pool)) {
        atomic_fetch_add_explicit(&pool->live_workers, 1, memory_order_seq_cst);
        rt__mutex_unlock(&pool->lock);
        return false;
    }
    self->exited = true;
    rt__mutex_unlock(&pool->lock);
    return true;
}

/* Hands a finished request to its context.  With a deep backlog a dozing waiter is
 * left asleep (see rt__tpool_sleep): the workers have enough to do without it. */
static void post_finished(struct rt__tpool *pool, struct rt_aio_req *req)
{
    struct rt_aio_ctx *ctx = atomic_load_explicit(&req->ctx, memory_order_relaxed);

    if (pool->doze && backlog(pool) >= RT__TPOOL_DOZE_BACKLOG)
        rt__aio_ctx_post_unless_dozing(ctx, req, &pool->waiter_dozing);
    else
        rt__aio_ctx_post_done(ctx, req);
}

static void *worker_main(void *arg)
{
    struct worker *self = arg;
    struct rt__tpool *pool = self->pool;

    for (;;) {
        struct rt_aio_req *req = pool->ring != NULL ? take_from_ring(pool) : take_locked(pool);

        if (req == NULL) {
            if (leave_if_idle(self))
                return NULL;
            continue;
        }
        rt__aio_execute(req);
        post_finished(pool, req);
    }
}

/* Starts one more worker if a slot is free.  Lock held. */
static int start_worker(struct rt__tpool *pool)
{
    for (unsigned i = 0; i < pool->max_workers; i++) {
        struct worker *slot = &pool->workers[i];
        int rc;

        if (slot->started && !slot->exited)
            continue;
        if (slot->started) {
            /* Its thread has left the loop and only needs to return: the join is
             * short, and the lock it wanted was released in leave_if_idle. */
            rt__thread_join(&slot->thread);
            slot->started = false;
        }
        slot->exited = false;
        rc = rt__thread_create(&slot->thread, worker_main, slot, "vrt-aio");
        if (rc != RT_OK)
            return rc;
        slot->started = true;
        atomic_fetch_add_explicit(&pool->live_workers, 1, memory_order_seq_cst);
        return RT_OK;
    }
    return RT_ERR_TRY_AGAIN;
}

/* Whether the environment variable @a name is set to @a value: the switches
 * RT_AIO_POOL_QUEUE=locked (the pool without the ring) and RT_AIO_POOL_DOZE=off. */
static bool env_is(const char *name, const char *value)
{
    const char *set = getenv(name);
    return set != NULL && strcmp(set, value) == 0;
}

/* The ring's size for a pool serving a context of @a capacity requests. */
static size_t ring_capacity(uint32_t capacity)
{
    if (capacity == 0 || capacity > 512u)
        return 1024u; /* unlimited or large: the spill FIFO takes the rest */
    return 2u * capacity;
}

int rt__tpool_create(struct rt__tpool **pool, unsigned max_workers, uint32_t capacity,
                     uint32_t idle_ms)
{
    struct rt__tpool *created;
    int rc;

    if (max_workers == 0)
        max_workers = 1;
    created = rt__posix_sys.calloc(1, sizeof *created + max_workers * sizeof(struct worker));
    if (created == NULL)
        return RT_ERR_NO_MEMORY;
    if (!env_is("RT_AIO_POOL_QUEUE", "locked")) {
        rc = rt__mpmc_ring_create(&created->ring, ring_capacity(capacity), 0);
        if (rc != RT_OK) {
            free(created);
            return rc;
        }
    }
    rc = rt__cond_init(&created->work_ready);
    if (rc != RT_OK) {
        rt__mpmc_ring_destroy(created->ring);
        free(created);
        return rc;
    }
    rt__mutex_init(&created->lock);
    rt__req_queue_init(&created->spilled);
    atomic_init(&created->live_workers, 0);
    atomic_init(&created->stopping, false);
    atomic_init(&created->spinning, false);
    atomic_init(&created->waiter_dozing, false);
    created->doze = !env_is("RT_AIO_POOL_DOZE", "off");
    created->doze_max_ns = RT__TPOOL_DOZE_MAX_NS;
    created->max_workers = max_workers;
    created->idle_ms = idle_ms;
    for (unsigned i = 0; i < max_workers; i++)
        created->workers[i].pool = created;
    *pool = created;
    return RT_OK;
}

void rt__tpool_destroy(struct rt__tpool *pool)
{
    if (pool == NULL)
        return;
    rt__mutex_lock(&pool->lock);
    atomic_store_explicit(&pool->stopping, true, memory_order_relaxed);
    rt__cond_broadcast(&pool->work_ready);
    rt__mutex_unlock(&pool->lock);
    if (pool->ring != NULL)
        rt__mpmc_ring_close(pool->ring);
    for (unsigned i = 0; i < pool->max_workers; i++) {
        if (pool->workers[i].started)
            rt__thread_join(&pool->workers[i].thread);
    }
    rt__mpmc_ring_destroy(pool->ring);
    rt__cond_destroy(&pool->work_ready);
    rt__mutex_destroy(&pool->lock);
    free(pool);
}

/* Takes every queued request when no worker exists to run them; they are chained on
 * @a failed with RT_ERR_TRY_AGAIN.  Lock held. */
static void fail_all_locked(struct rt__tpool *pool, struct rt_aio_req **failed)
{
    struct rt_aio_req *req;

    for (;;) {
        req = rt__req_queue_pop(&pool->spilled);
        if (req == NULL && pool->ring != NULL)
            req = rt__mpmc_ring_pop(pool->ring, 0);
        if (req == NULL)
            return;
        req->rc = RT_ERR_TRY_AGAIN;
        req->transferred = 0;
        req->next = *failed;
        *failed = req;
    }
}

/* Workers that could take work without being started: asleep, or the one spinning. */
static unsigned idle_workers(struct rt__tpool *pool)
{
    unsigned idle = atomic_load_explicit(&pool->spinning, memory_order_relaxed) ? 1u : 0u;

    if (pool->ring != NULL)
        return idle + rt__mpmc_ring_sleepers(pool->ring);
    return idle + pool->idle_workers; /* lock held in this case */
}

/* Starts workers for @a n new requests that idle ones cannot cover, fails everything
 * queued if no worker exists at all, and wakes sleepers of the locked queue.  Lock
 * held.  Chains failed requests on @a failed. */
static void staff_locked(struct rt__tpool *pool, size_t n, struct rt_aio_req **failed)
{
    for (size_t wanted = n; wanted > idle_workers(pool) &&
                            atomic_load_explicit(&pool->live_workers, memory_order_seq_cst) <
                                pool->max_workers;
         wanted--) {
        if (start_worker(pool) != RT_OK)
            break;
    }
    if (atomic_load_explicit(&pool->live_workers, memory_order_seq_cst) == 0) {
        fail_all_locked(pool, failed);
    } else if (pool->ring == NULL) {
        /* One wake per new request an idle worker must take; busy workers come back
         * for the rest on their own.  A broadcast would wake them all for one request. */
        unsigned wakes = n < pool->idle_workers ? (unsigned)n : pool->idle_workers;
        while (wakes-- > 0)
            rt__cond_signal(&pool->work_ready);
    }
}

void rt__tpool_queue(struct rt__tpool *pool, struct rt_aio_req **reqs, size_t n)
{
    struct rt_aio_req *failed = NULL;
    size_t in_ring = 0;

    if (pool->ring != NULL) {
        unsigned live;

        while (in_ring < n && rt__mpmc_ring_push(pool->ring, reqs[in_ring], &reqs[in_ring]->pool_pos))
            in_ring++;
        /* The hot path ends here: everything is in the ring and enough workers live
         * or idle (the seq_cst read is the submitter's half of the exit pair). */
        live = atomic_load_explicit(&pool->live_workers, memory_order_seq_cst);
        if (in_ring == n && live > 0 && (live == pool->max_workers || n <= idle_workers(pool)))
            return;
    }

    rt__mutex_lock(&pool->lock);
    if (in_ring < n) {
        rt__req_queue_push(&pool->spilled, reqs + in_ring, n - in_ring);
        if (pool->ring != NULL)
            unspill_locked(pool); /* workers may have freed slots meanwhile */
    }
    staff_locked(pool, n, &failed);
    rt__mutex_unlock(&pool->lock);

    while (failed != NULL) {
        struct rt_aio_req *req = failed;
        failed = req->next;
        rt__aio_ctx_post_done(atomic_load_explicit(&req->ctx, memory_order_relaxed), req);
    }
}

int rt__tpool_cancel(struct rt__tpool *pool, struct rt_aio_req *req)
{
    int rc = RT_ERR_AIO_IN_PROGRESS;

    if (pool->ring != NULL &&
        rt__mpmc_ring_cancel(pool->ring, atomic_load_explicit(&req->pool_pos, memory_order_relaxed),
                             req))
        return RT_OK;
    rt__mutex_lock(&pool->lock);
    if (rt__req_queue_remove(&pool->spilled, req))
        rc = RT_OK;
    rt__mutex_unlock(&pool->lock);
    return rc;
}

int rt__tpool_sleep(struct rt__tpool *pool, struct rt__doorbell *bell, uint64_t deadline_ns)
{
    uint64_t until;
    int rc;

    if (!pool->doze || backlog(pool) < RT__TPOOL_DOZE_BACKLOG)
        return rt__doorbell_wait(bell, deadline_ns);
    until = rt_time_nano_ts() + pool->doze_max_ns;
    if (until > deadline_ns || until < pool->doze_max_ns)
        until = deadline_ns;
    /* seq_cst both ways: the other half of rt__aio_ctx_post_unless_dozing()'s pair.  A
     * poster that saw the flag down rang as usual; one that saw it up pushed before the
     * flag came down, so the look that follows this call finds its request. */
    atomic_store_explicit(&pool->waiter_dozing, true, memory_order_seq_cst);
    rc = rt__doorbell_wait(bell, until);
    atomic_store_explicit(&pool->waiter_dozing, false, memory_order_seq_cst);
    if (rc == RT_ERR_TIMEOUT && until < deadline_ns)
        return RT_OK; /* the doze's bound, not the caller's deadline: look again */
    return rc;
}

void rt__tpool_set_doze_max(struct rt__tpool *pool, uint64_t max_ns)
{
    pool->doze_max_ns = max_ns;
}

bool rt__tpool_waiter_dozing(struct rt__tpool *pool)
{
    return atomic_load_explicit(&pool->waiter_dozing, memory_order_relaxed);
}

unsigned rt__tpool_default_workers(uint32_t capacity)
{
    const char *env = getenv("RT_AIO_THREADS");
    if (env != NULL && env[0] != '\0') {
        char *end;
        unsigned long wanted = strtoul(env, &end, 10);
        if (*end == '\0' && wanted >= 1 && wanted <= 1024)
            return (unsigned)wanted;
    }
    return capacity < RT__TPOOL_DEFAULT_MAX ? capacity : RT__TPOOL_DEFAULT_MAX;
}
