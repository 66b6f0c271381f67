/*
 * Carrying out one AIO request synchronously with positioned POSIX I/O: what the
 * thread pool's workers do, and the kernel AIO backend's fallback for flushes the
 * kernel will not take.
 */
#include <config.h>

#include <errno.h>
#include <limits.h>
#include <sys/uio.h>
#include <unistd.h>

#include <rt/err.h>

#include "internal/aio.h"
#include "internal/posix_sys.h"

_Static_assert(sizeof(rt_iovec_t) == sizeof(struct iovec) &&
                   offsetof(rt_iovec_t, base) == offsetof(struct iovec, iov_base) &&
                   offsetof(rt_iovec_t, len) == offsetof(struct iovec, iov_len),
               "rt_iovec_t must have the layout of struct iovec");

/* One system call's worth of the transfer starting @a done bytes in. */
static ssize_t transfer_once(struct rt_aio_req *req, size_t done, struct iovec *scratch)
{
    off_t off = (off_t)(req->off + done);

    switch (req->op) {
    case RT__AIO_OP_READ:
        return rt__posix_sys.pread(req->fd, (char *)req->buf + done, req->len - done, off);
    case RT__AIO_OP_WRITE:
        return rt__posix_sys.pwrite(req->fd, (const char *)req->buf + done, req->len - done, off);
    default: {
        /* Vectored: skip the entries already done, trim the first partial one. */
        const struct iovec *iov = (const struct iovec *)req->iov;
        unsigned count = req->iovcnt;
        size_t skip = done;
        while (skip >= iov->iov_len) {
            skip -= iov->iov_len;
            iov++;
            count--;
        }
        if (skip > 0) {
            /* Finish the partly transferred entry on its own; the next call goes on
             * from the entries after it. */
            scratch->iov_base = (char *)iov->iov_base + skip;
            scratch->iov_len = iov->iov_len - skip;
            iov = scratch;
            count = 1;
        }
        if (count > IOV_MAX)
            count = IOV_MAX;
        return req->op == RT__AIO_OP_READV ? rt__posix_sys.preadv(req->fd, iov, (int)count, off)
                                           : rt__posix_sys.pwritev(req->fd, iov, (int)count, off);
    }
    }
}

void rt__aio_execute(struct rt_aio_req *req)
{
    struct iovec scratch;
    size_t done = 0;

    req->rc = RT_OK;
    if (req->op == RT__AIO_OP_FLUSH) {
        while (rt__posix_sys.fsync(req->fd) != 0) {
            if (errno != EINTR) {
                req->rc = rt_err_from_errno(errno);
                break;
            }
        }
        req->transferred = 0;
        return;
    }
    while (done < req->len) {
        ssize_t n = transfer_once(req, done, &scratch);
        if (n > 0) {
            done += (size_t)n;
        } else if (n == 0) {
            /* A read at end of file, or a write the device took no more of: RT_OK with
             * the short count, as the kernel backends report it (the contract's "a
             * write may complete RT_OK with a short count"). */
            break;
        } else if (errno != EINTR) {
            req->rc = rt_err_from_errno(errno);
            break;
        }
    }
    req->transferred = done;
    /* A forced unit access where the call itself cannot take RWF_DSYNC. */
    if (req->rc == RT_OK && (req->req_flags & RT_AIO_REQ_F_DSYNC)) {
        while (rt__posix_sys.fdatasync(req->fd) != 0) {
            if (errno != EINTR) {
                req->rc = rt_err_from_errno(errno);
                break;
            }
        }
    }
}
