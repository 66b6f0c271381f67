/*
 * The worker pool behind the "threads" backend (see internal/tpool.h).
 *
 * One FIFO of requests (internal/req_queue.h) under one mutex, workers sleeping on one
 * condition variable.  Any number of requests of the same file may run at once: there
 * is no per-file serialization, unlike glibc's POSIX AIO.  Cancel unlinks a queued
 * request under the same lock a worker takes it with: whoever holds it first decides.
 *
 * Worker threads live in fixed slots.  A worker that idles out marks its slot exited;
 * the next start in that slot joins it first, and destroy joins every slot, so no
 * thread is ever left running on freed memory.
 */
#include <config.h>

#include <stdbool.h>
#include <stdlib.h>

#include <rt/err.h>
#include <rt/time.h>

#include "internal/aio.h"
#include "internal/cpu.h"
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
    rt__mutex_t lock;
    rt__cond_t work_ready;
    struct rt__req_queue queue;
    unsigned max_workers;
    unsigned live_workers;
    unsigned idle_workers;
    uint32_t idle_ms;
    bool stopping;
    atomic_bool spinning; /* a worker is in spin_for_work() */
    struct worker workers[];
};

/* Leaves the worker's loop: the slot is marked so the next start joins it. */
static void *worker_exit(struct worker *self)
{
    self->exited = true;
    self->pool->live_workers--;
    rt__mutex_unlock(&self->pool->lock);
    return NULL;
}

/* How long a worker that ran out of work looks for more before it sleeps: the request
 * that follows a completion (the waiter resubmitting) then needs no futex wake. */
#ifndef WORKER_SPIN_NS
#define WORKER_SPIN_NS 30000u
#endif

/* Drops the lock and spins up to WORKER_SPIN_NS for the queue to fill; returns with the
 * lock held again.  One worker spins at a time: that is enough to catch the next
 * request, and more would only take CPU from the workers doing I/O. */
static void spin_for_work(struct rt__tpool *pool)
{
    uint64_t until;

    if (atomic_exchange_explicit(&pool->spinning, true, memory_order_relaxed))
        return;
    until = rt_time_nano_ts() + WORKER_SPIN_NS;
    rt__mutex_unlock(&pool->lock);
    while (rt__req_queue_count(&pool->queue) == 0 && rt_time_nano_ts() < until) {
        for (int i = 0; i < 32; i++)
            rt__cpu_relax();
    }
    rt__mutex_lock(&pool->lock);
    atomic_store_explicit(&pool->spinning, false, memory_order_relaxed);
}

static void *worker_main(void *arg)
{
    struct worker *self = arg;
    struct rt__tpool *pool = self->pool;

    rt__mutex_lock(&pool->lock);
    for (;;) {
        struct rt_aio_req *req;

        if (rt__req_queue_count(&pool->queue) == 0 && !pool->stopping)
            spin_for_work(pool);
        while (rt__req_queue_count(&pool->queue) == 0 && !pool->stopping) {
            uint64_t deadline = rt_time_nano_ts() + (uint64_t)pool->idle_ms * 1000000u;
            int rc;
            pool->idle_workers++;
            rc = rt__cond_wait_until(&pool->work_ready, &pool->lock, deadline);
            pool->idle_workers--;
            if (rc == RT_ERR_TIMEOUT && rt__req_queue_count(&pool->queue) == 0)
                return worker_exit(self);
        }
        req = rt__req_queue_pop(&pool->queue);
        if (req == NULL) /* stopping, and nothing left */
            return worker_exit(self);
        rt__mutex_unlock(&pool->lock);

        rt__aio_execute(req);
        rt__aio_ctx_post_done(atomic_load_explicit(&req->ctx, memory_order_relaxed), req);

        rt__mutex_lock(&pool->lock);
    }
}

/* Starts one more worker if a slot is free.  Called with the lock held. */
static int start_worker(struct rt__tpool *pool)
{
    for (unsigned i = 0; i < pool->max_workers; i++) {
        struct worker *slot = &pool->workers[i];
        int rc;

        if (slot->started && !slot->exited)
            continue;
        if (slot->started) {
            /* Its thread has left the loop and only needs to return: the join is
             * short, and the lock it still wants was released in worker_exit. */
            rt__thread_join(&slot->thread);
            slot->started = false;
        }
        slot->exited = false;
        rc = rt__thread_create(&slot->thread, worker_main, slot, "vrt-aio");
        if (rc != RT_OK)
            return rc;
        slot->started = true;
        pool->live_workers++;
        return RT_OK;
    }
    return RT_ERR_TRY_AGAIN;
}

int rt__tpool_create(struct rt__tpool **pool, unsigned max_workers, uint32_t idle_ms)
{
    struct rt__tpool *created;
    int rc;

    if (max_workers == 0)
        max_workers = 1;
    created = rt__posix_sys.calloc(1, sizeof *created + max_workers * sizeof(struct worker));
    if (created == NULL)
        return RT_ERR_NO_MEMORY;
    rc = rt__cond_init(&created->work_ready);
    if (rc != RT_OK) {
        free(created);
        return rc;
    }
    rt__mutex_init(&created->lock);
    rt__req_queue_init(&created->queue);
    atomic_init(&created->spinning, false);
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
    pool->stopping = true;
    rt__cond_broadcast(&pool->work_ready);
    rt__mutex_unlock(&pool->lock);
    for (unsigned i = 0; i < pool->max_workers; i++) {
        if (pool->workers[i].started)
            rt__thread_join(&pool->workers[i].thread);
    }
    rt__cond_destroy(&pool->work_ready);
    rt__mutex_destroy(&pool->lock);
    free(pool);
}

/* Fails every queued request when no worker exists to run them. */
static void fail_all_locked(struct rt__tpool *pool, struct rt_aio_req **failed)
{
    struct rt_aio_req *req;

    while ((req = rt__req_queue_pop(&pool->queue)) != NULL) {
        req->rc = RT_ERR_TRY_AGAIN;
        req->transferred = 0;
        req->next = *failed;
        *failed = req;
    }
}

void rt__tpool_queue(struct rt__tpool *pool, struct rt_aio_req **reqs, size_t n)
{
    struct rt_aio_req *failed = NULL;

    rt__mutex_lock(&pool->lock);
    rt__req_queue_push(&pool->queue, reqs, n);
    /* Wake idle workers first; start new ones for what they cannot cover. */
    for (size_t wanted = n; wanted > pool->idle_workers && pool->live_workers < pool->max_workers;
         wanted--) {
        if (start_worker(pool) != RT_OK)
            break;
    }
    if (pool->live_workers == 0) {
        fail_all_locked(pool, &failed);
    } else {
        /* One wake per new request an idle worker must take; busy workers come back
         * for the rest on their own.  A broadcast would wake them all for one request. */
        unsigned wakes = n < pool->idle_workers ? (unsigned)n : pool->idle_workers;
        while (wakes-- > 0)
            rt__cond_signal(&pool->work_ready);
    }
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

    rt__mutex_lock(&pool->lock);
    if (rt__req_queue_remove(&pool->queue, req))
        rc = RT_OK;
    rt__mutex_unlock(&pool->lock);
    return rc;
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
