/*
 * Handle memory that is recycled, never freed: see handle_pool.h for why.
 */
#include <config.h>

#include <string.h>

#include "internal/handle_pool.h"
#include "internal/posix_sys.h"

static void **link_of(struct rt__handle_pool *pool, void *handle)
{
    return (void **)((char *)handle + pool->link_offset);
}

void *rt__handle_alloc(struct rt__handle_pool *pool)
{
    void *handle;

    rt__mutex_lock(&pool->lock);
    handle = pool->free_list;
    if (handle != NULL)
        pool->free_list = *link_of(pool, handle);
    rt__mutex_unlock(&pool->lock);

    if (handle != NULL) {
        memset(handle, 0, pool->size);
        return handle;
    }
    /* calloc's alignment (max_align_t) covers every handle type; the assertion in each
     * owner's file keeps it that way. */
    return rt__posix_sys.calloc(1, pool->size);
}

void rt__handle_free(struct rt__handle_pool *pool, void *handle)
{
    rt__mutex_lock(&pool->lock);
    *link_of(pool, handle) = pool->free_list;
    pool->free_list = handle;
    rt__mutex_unlock(&pool->lock);
}
