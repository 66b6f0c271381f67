/*
 * The fault-injection table of POSIX calls (see internal/posix_sys.h).
 */
#include <config.h>

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal/posix_sys.h"

static int real_open(const char *path, int flags, mode_t mode)
{
    return open(path, flags, mode);
}

/* fsync where there is no fdatasync: more than asked, never less. */
static int real_fdatasync(int fd)
{
#ifdef HAVE_FDATASYNC
    return fdatasync(fd);
#else
    return fsync(fd);
#endif
}

#define RT_POSIX_SYS_REAL                                                                          \
    {                                                                                              \
        .open = real_open, .close = close, .pread = pread, .pwrite = pwrite, .preadv = preadv,     \
        .pwritev = pwritev, .fsync = fsync, .fdatasync = real_fdatasync, .fstat = fstat,           \
        .ftruncate = ftruncate, .malloc = malloc, .calloc = calloc,                                \
    }

struct rt__posix_sys rt__posix_sys = RT_POSIX_SYS_REAL;

void rt__posix_sys_reset(void)
{
    static const struct rt__posix_sys real = RT_POSIX_SYS_REAL;
    rt__posix_sys = real;
}
