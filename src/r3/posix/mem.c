/*
 * Page-aligned memory straight from mmap: zero-filled, and aligned for O_DIRECT on any
 * device.
 */
#include <config.h>

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include <rt/mem.h>

size_t rt_mem_page_size(void)
{
    static size_t page_size;
    if (page_size == 0) {
        long size = sysconf(_SC_PAGESIZE);
        page_size = size > 0 ? (size_t)size : 4096;
    }
    return page_size;
}

/* @a size rounded up to whole pages; 0 when that would overflow. */
static size_t round_to_pages(size_t size)
{
    size_t page = rt_mem_page_size();
    if (size > SIZE_MAX - (page - 1))
        return 0;
    return (size + page - 1) & ~(page - 1);
}

void *rt_mem_page_alloc(size_t size)
{
    size_t rounded = round_to_pages(size);
    void *ptr;

    if (rounded == 0)
        return NULL;
    ptr = mmap(NULL, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return ptr == MAP_FAILED ? NULL : ptr;
}

void rt_mem_page_free(void *ptr, size_t size)
{
    if (ptr != NULL)
        munmap(ptr, round_to_pages(size));
}
