/*
 * Memory for handles that is never given back to the allocator.
 *
 * A freed handle goes on its pool's free list with its magic overwritten, and the next
 * allocation of that type reuses it.  So a stale handle always points at readable memory
 * whose magic says DEAD (or, once reused, at a live handle of the same type, which is the
 * same hazard as a reused file descriptor).  The cost is that handle memory is bounded by
 * the peak number of live handles, not the current number.
 */
#ifndef RT_INTERNAL_HANDLE_POOL_H
#define RT_INTERNAL_HANDLE_POOL_H

#include <stddef.h>

#include "internal/sync.h"

struct rt__handle_pool {
    size_t size;        /* bytes per handle */
    size_t align;       /* alignment per handle */
    size_t link_offset; /* where a free handle keeps its next pointer: not the magic */
    rt__mutex_t lock;
    void *free_list;
};

#define RT__HANDLE_POOL_INIT(type, link_member)                                                    \
    {                                                                                              \
        .size = sizeof(type), .align = _Alignof(type), .link_offset = offsetof(type, link_member), \
        .lock = {PTHREAD_MUTEX_INITIALIZER}, .free_list = NULL                                     \
    }

/**
 * A zero-filled handle from the pool.  The caller sets its magic.
 * @return the memory, or NULL when out of memory.
 */
void *rt__handle_alloc(struct rt__handle_pool *pool);

/**
 * Returns a handle to the pool.  The caller has already overwritten its magic with
 * RT__MAGIC_DEAD; the pool writes only the pointer at link_offset.
 */
void rt__handle_free(struct rt__handle_pool *pool, void *handle);

#endif /* RT_INTERNAL_HANDLE_POOL_H */
