/*
 * The doorbell as a non-blocking pipe, for hosts without eventfd.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <rt/err.h>

#include "internal/doorbell.h"

static int make_nonblocking_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

int rt__doorbell_init(struct rt__doorbell *bell)
{
    int fds[2];
    int rc;

    if (pipe(fds) != 0)
        return rt_err_from_errno(errno);
    if (make_nonblocking_cloexec(fds[0]) != 0 || make_nonblocking_cloexec(fds[1]) != 0) {
        rc = rt_err_from_errno(errno);
        close(fds[0]);
        close(fds[1]);
        return rc;
    }
    bell->read_fd = fds[0];
    bell->write_fd = fds[1];
    return RT_OK;
}

void rt__doorbell_fini(struct rt__doorbell *bell)
{
    close(bell->read_fd);
    close(bell->write_fd);
    bell->read_fd = bell->write_fd = -1;
}

void rt__doorbell_ring(struct rt__doorbell *bell)
{
    char one = 1;
    /* EAGAIN: the pipe is full, so the bell is rung already. */
    while (write(bell->write_fd, &one, 1) < 0 && errno == EINTR)
        ;
}

void rt__doorbell_clear(struct rt__doorbell *bell)
{
    char sink[64];
    for (;;) {
        ssize_t n = read(bell->read_fd, sink, sizeof sink);
        if (n > 0 || (n < 0 && errno == EINTR))
            continue;
        break;
    }
}
