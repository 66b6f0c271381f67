/*
 * The doorbell as an eventfd: one descriptor that both the library and the kernel (AIO
 * completions with IOCB_FLAG_RESFD) can ring.
 */
#include <config.h>

#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <rt/err.h>

#include "internal/doorbell.h"

int rt__doorbell_init(struct rt__doorbell *bell)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0)
        return rt_err_from_errno(errno);
    bell->read_fd = fd;
    bell->write_fd = fd;
    return RT_OK;
}

void rt__doorbell_fini(struct rt__doorbell *bell)
{
    close(bell->read_fd);
    bell->read_fd = bell->write_fd = -1;
}

void rt__doorbell_ring(struct rt__doorbell *bell)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is at its maximum: it is rung already. */
    while (write(bell->write_fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

void rt__doorbell_clear(struct rt__doorbell *bell)
{
    uint64_t count;
    while (read(bell->read_fd, &count, sizeof count) < 0 && errno == EINTR)
        ;
}
