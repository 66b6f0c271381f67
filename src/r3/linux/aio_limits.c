/*
 * AIO limits on Linux: what /proc/sys/fs/aio-max-nr still leaves free for kernel AIO
 * contexts, and the page size as the O_DIRECT alignment every device accepts.
 */
#include <config.h>

#include <stdio.h>

#include <rt/err.h>
#include <rt/fileaio.h>
#include <rt/mem.h>

static int read_proc_number(const char *path, unsigned long long *value)
{
    FILE *file = fopen(path, "re");
    int ok;

    if (file == NULL)
        return 0;
    ok = fscanf(file, "%llu", value) == 1;
    fclose(file);
    return ok;
}

int rt_aio_get_limits(rt_aio_limits_t *limits)
{
    unsigned long long max_nr, nr;

    if (limits == NULL)
        return RT_ERR_INVALID_POINTER;
    limits->buffer_alignment = rt_mem_page_size();
    limits->max_reqs_outstanding = RT_AIO_UNLIMITED_REQS;
    if (read_proc_number("/proc/sys/fs/aio-max-nr", &max_nr) &&
        read_proc_number("/proc/sys/fs/aio-nr", &nr)) {
        unsigned long long left = max_nr > nr ? max_nr - nr : 0;
        limits->max_reqs_outstanding =
            left >= RT_AIO_UNLIMITED_REQS ? RT_AIO_UNLIMITED_REQS - 1 : (uint32_t)left;
    }
    return RT_OK;
}
