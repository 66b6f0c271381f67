/*
 * A FIFO of submitted requests, linked through the requests themselves: the pool's
 * work queue and the kernel backends' deferred lists.  The owner's lock protects it;
 * count may be read without the lock as a hint.
 *
 * Each queued request records which queue holds it (queue_owner), so cancel can check
 * "is it still in *this* queue" and unlink it in O(1) under the same lock the consumer
 * takes it with: whoever holds the lock first decides, and a request that meanwhile
 * completed and was resubmitted elsewhere is never unlinked from the wrong list.
 */
#ifndef RT_INTERNAL_REQ_QUEUE_H
#define RT_INTERNAL_REQ_QUEUE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "internal/aio.h"

struct rt__req_queue {
    struct rt_aio_req *head;
    struct rt_aio_req *tail;
    _Atomic size_t count;
};

static inline void rt__req_queue_init(struct rt__req_queue *queue)
{
    queue->head = queue->tail = NULL;
    atomic_init(&queue->count, 0);
}

/** How many are queued; exact under the lock, a hint without it. */
static inline size_t rt__req_queue_count(struct rt__req_queue *queue)
{
    return atomic_load_explicit(&queue->count, memory_order_relaxed);
}

/** Appends @a n requests in order.  Lock held. */
static inline void rt__req_queue_push(struct rt__req_queue *queue, struct rt_aio_req **reqs,
                                      size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct rt_aio_req *req = reqs[i];
        req->next = NULL;
        req->prev = queue->tail;
        if (queue->tail != NULL)
            queue->tail->next = req;
        else
            queue->head = req;
        queue->tail = req;
        atomic_store_explicit(&req->queue_owner, queue, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&queue->count, n, memory_order_relaxed);
}

static inline void rt__req_queue_unlink(struct rt__req_queue *queue, struct rt_aio_req *req)
{
    if (req->prev != NULL)
        req->prev->next = req->next;
    else
        queue->head = req->next;
    if (req->next != NULL)
        req->next->prev = req->prev;
    else
        queue->tail = req->prev;
    req->next = req->prev = NULL;
    atomic_store_explicit(&req->queue_owner, NULL, memory_order_relaxed);
    atomic_fetch_sub_explicit(&queue->count, 1, memory_order_relaxed);
}

/** Takes the oldest request, or NULL.  Lock held. */
static inline struct rt_aio_req *rt__req_queue_pop(struct rt__req_queue *queue)
{
    struct rt_aio_req *req = queue->head;
    if (req != NULL)
        rt__req_queue_unlink(queue, req);
    return req;
}

/** Puts @a req back at the head, where rt__req_queue_pop() took it from.  Lock held. */
static inline void rt__req_queue_push_front(struct rt__req_queue *queue, struct rt_aio_req *req)
{
    req->prev = NULL;
    req->next = queue->head;
    if (queue->head != NULL)
        queue->head->prev = req;
    else
        queue->tail = req;
    queue->head = req;
    atomic_store_explicit(&req->queue_owner, queue, memory_order_relaxed);
    atomic_fetch_add_explicit(&queue->count, 1, memory_order_relaxed);
}

/** Unlinks @a req if this queue holds it.  Lock held.  @return whether it did. */
static inline bool rt__req_queue_remove(struct rt__req_queue *queue, struct rt_aio_req *req)
{
    if (atomic_load_explicit(&req->queue_owner, memory_order_relaxed) != queue)
        return false;
    rt__req_queue_unlink(queue, req);
    return true;
}

#endif /* RT_INTERNAL_REQ_QUEUE_H */
