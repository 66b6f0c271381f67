/*
 * A pool of worker threads that carry out AIO requests with plain positioned I/O
 * (rt__aio_execute) and post each finished request to its context's done list.
 *
 * The "threads" backend is this pool and nothing else; the kernel AIO backend uses one
 * for the work the kernel cannot do asynchronously.  Workers start when work arrives
 * and there is no idle one, up to max_workers, and leave after idle_ms without work.
 */
#ifndef RT_INTERNAL_TPOOL_H
#define RT_INTERNAL_TPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct rt_aio_req;
struct rt__doorbell;
struct rt__tpool;

/**
 * @param max_workers  at most this many threads at once (at least 1).
 * @param capacity     how many requests the owner may have queued at once (its
 *                     context's capacity; 0 or RT_AIO_UNLIMITED_REQS for no bound): sizes
 *                     the ring.
 * @param idle_ms      how long a worker waits for work before it exits.
 * @retval RT_OK, RT_ERR_NO_MEMORY, RT_ERR_GENERAL_FAILURE (no condition variable)
 *
 * RT_AIO_POOL_QUEUE=locked in the environment switches the lock-free ring off (one
 * mutex-protected FIFO instead), for comparing the two in one benchmark run.
 */
int rt__tpool_create(struct rt__tpool **pool, unsigned max_workers, uint32_t capacity,
                     uint32_t idle_ms);

/** Stops and joins every worker.  Nothing may be queued or running. */
void rt__tpool_destroy(struct rt__tpool *pool);

/**
 * Queues submitted requests; each is later posted to its own context's done list.  Any
 * thread.  If no worker can be started at all, the requests complete with
 * RT_ERR_TRY_AGAIN instead of waiting forever.
 */
void rt__tpool_queue(struct rt__tpool *pool, struct rt_aio_req **reqs, size_t n);

/**
 * Takes @a req out of the queue if no worker has picked it up yet.
 * @retval RT_OK                   removed; nothing will touch it again.
 * @retval RT_ERR_AIO_IN_PROGRESS  a worker has it, or it is not in this pool.
 */
int rt__tpool_cancel(struct rt__tpool *pool, struct rt_aio_req *req);

/**
 * The threads backend's sleep (rt__aio_backend.sleep) for the waiter of the one context
 * this pool serves: sleeps on @a bell until it rings or @a deadline_ns passes.
 *
 * While at least RT__TPOOL_DOZE_BACKLOG requests wait for a worker, the waiter dozes
 * instead: workers that finish a request leave it asleep as long as that backlog
 * lasts, and the sleep is bounded by RT__TPOOL_DOZE_MAX_NS (rounded up to poll()'s
 * millisecond).  The device has work queued, so an earlier wake-up would only cost a
 * cross-CPU wake per request; the first request posted with a shallower backlog rings
 * the bell and brings the waiter back before the workers run dry.  RT_AIO_POOL_DOZE=off
 * in the environment (read at create) turns dozing off, for same-run comparisons.
 *
 * @retval RT_OK           rung, or the doze's bound passed: look again.
 * @retval RT_ERR_TIMEOUT  @a deadline_ns passed.
 * The waiter only, with the bell cleared and its sleep announced (see wait_loop).
 */
int rt__tpool_sleep(struct rt__tpool *pool, struct rt__doorbell *bell, uint64_t deadline_ns);

/** Replaces the doze's bound (default RT__TPOOL_DOZE_MAX_NS), so that tests can tell a
 *  held completion from one the bound brought.  @a max_ns must be above 0 (0 would make
 *  the waiter loop without sleeping) and well below 2^63.  While no waiter sleeps. */
void rt__tpool_set_doze_max(struct rt__tpool *pool, uint64_t max_ns);

/** Whether the waiter is in a doze now, so that tests can wait for it.  Any thread. */
bool rt__tpool_waiter_dozing(struct rt__tpool *pool);

/**
 * The worker cap for a context of @a capacity requests: RT_AIO_THREADS from the
 * environment if set (1..1024), else the capacity, at most RT__TPOOL_DEFAULT_MAX.
 */
unsigned rt__tpool_default_workers(uint32_t capacity);

#define RT__TPOOL_DEFAULT_MAX 16u
#define RT__TPOOL_IDLE_MS     2000u

/* See rt__tpool_sleep().  Four queued requests give the waiter the time of about four
 * completions to wake and resubmit, more than the 10-15 us a cross-vCPU wake-up costs on
 * the reference VM at the rates the pool reaches there. */
#ifndef RT__TPOOL_DOZE_BACKLOG
#define RT__TPOOL_DOZE_BACKLOG 4u
#endif
#ifndef RT__TPOOL_DOZE_MAX_NS
#define RT__TPOOL_DOZE_MAX_NS 1000000u
#endif

#endif /* RT_INTERNAL_TPOOL_H */
