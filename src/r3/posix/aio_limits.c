/*
 * AIO limits on POSIX hosts without kernel AIO: the thread pool has no host limit.
 */
#include <config.h>

#include <rt/err.h>
#include <rt/fileaio.h>
#include <rt/mem.h>

int rt_aio_get_limits(rt_aio_limits_t *limits)
{
    if (limits == NULL)
        return RT_ERR_INVALID_POINTER;
    limits->buffer_alignment = rt_mem_page_size();
    limits->max_reqs_outstanding = RT_AIO_UNLIMITED_REQS;
    return RT_OK;
}
