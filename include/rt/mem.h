/*
 * Page-aligned memory, for buffers used with RT_FILE_NO_CACHE files.
 */
#ifndef RT_MEM_H
#define RT_MEM_H

#include <rt/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Allocates page-aligned, zero-filled memory.
 *
 * The memory comes straight from the OS (mmap on POSIX), so it satisfies every
 * O_DIRECT alignment rule (see rt_aio_limits_t.buffer_alignment).
 *
 * @param size  bytes wanted; rounded up to whole pages.  0 gives NULL.
 * @return the memory, or NULL when @a size is 0 or the allocation failed.
 *         Thread-safe.
 */
void *rt_mem_page_alloc(size_t size);

/**
 * Frees memory from rt_mem_page_alloc().
 *
 * @param ptr   the pointer returned by rt_mem_page_alloc(); NULL does nothing.
 * @param size  the size passed to rt_mem_page_alloc() for @a ptr.
 * Thread-safe.
 */
void rt_mem_page_free(void *ptr, size_t size);

/** The size of a memory page on this host, in bytes.  Thread-safe. */
size_t rt_mem_page_size(void);

#ifdef __cplusplus
}
#endif

#endif /* RT_MEM_H */
