/*
 * Raw kernel AIO system calls (see laio_sys.h).
 */
#include <config.h>

#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "r3/linux/laio_sys.h"

static long result(long ret)
{
    return ret < 0 ? -errno : ret;
}

static long sys_io_setup(unsigned nr_events, laio_context_t *ctx)
{
    return result(syscall(__NR_io_setup, nr_events, ctx));
}

static long sys_io_destroy(laio_context_t ctx)
{
    return result(syscall(__NR_io_destroy, ctx));
}

static long sys_io_submit(laio_context_t ctx, long n, struct laio_iocb **iocbs)
{
    return result(syscall(__NR_io_submit, ctx, n, iocbs));
}

static long sys_io_cancel(laio_context_t ctx, struct laio_iocb *iocb, struct laio_event *res)
{
    return result(syscall(__NR_io_cancel, ctx, iocb, res));
}

static long sys_io_getevents(laio_context_t ctx, long min_nr, long nr, struct laio_event *events,
                             struct laio_timespec *timeout)
{
    return result(syscall(__NR_io_getevents, ctx, min_nr, nr, events, timeout));
}

#define RT_LAIO_SYS_REAL                                                                           \
    {                                                                                              \
        .io_setup = sys_io_setup, .io_destroy = sys_io_destroy, .io_submit = sys_io_submit,        \
        .io_cancel = sys_io_cancel, .io_getevents = sys_io_getevents,                              \
    }

struct rt__laio_sys rt__laio_sys = RT_LAIO_SYS_REAL;

void rt__laio_sys_reset(void)
{
    static const struct rt__laio_sys real = RT_LAIO_SYS_REAL;
    rt__laio_sys = real;
}

int rt__laio_sys_getevents_is_real(void)
{
    return rt__laio_sys.io_getevents == sys_io_getevents;
}
