/*
 * Status texts and the errno map.  The texts come from RT_STATUS_MAP in <rt/err.h>;
 * the errno map is the one table below.  Several errnos may map to one status; an
 * errno not listed is a general failure.
 */
#include <config.h>

#include <errno.h>
#include <stddef.h>

#include <rt/err.h>

/* X(errno, status).  Every row is a plain errno constant. */
#define RT_ERRNO_MAP(X)                                                                            \
    X(EINVAL, RT_ERR_INVALID_PARAMETER)                                                            \
    X(EFAULT, RT_ERR_INVALID_POINTER)                                                              \
    X(EBADF, RT_ERR_BAD_FILE)                                                                      \
    X(ERANGE, RT_ERR_OUT_OF_RANGE)                                                                 \
    X(EOVERFLOW, RT_ERR_OUT_OF_RANGE)                                                              \
    X(ENOMEM, RT_ERR_NO_MEMORY)                                                                    \
    X(ENOSYS, RT_ERR_NOT_SUPPORTED)                                                                \
    X(EOPNOTSUPP, RT_ERR_NOT_SUPPORTED)                                                            \
    X(ETIMEDOUT, RT_ERR_TIMEOUT)                                                                   \
    X(EINTR, RT_ERR_INTERRUPTED)                                                                   \
    X(EAGAIN, RT_ERR_TRY_AGAIN)                                                                    \
    X(ENOENT, RT_ERR_FILE_NOT_FOUND)                                                               \
    X(EEXIST, RT_ERR_ALREADY_EXISTS)                                                               \
    X(EACCES, RT_ERR_ACCESS_DENIED)                                                                \
    X(EPERM, RT_ERR_NOT_PERMITTED)                                                                 \
    X(EIO, RT_ERR_IO)                                                                              \
    X(ENXIO, RT_ERR_IO)                                                                            \
    X(ENOSPC, RT_ERR_DISK_FULL)                                                                    \
    X(EDQUOT, RT_ERR_DISK_FULL)                                                                    \
    X(EINPROGRESS, RT_ERR_AIO_IN_PROGRESS)                                                         \
    X(ECANCELED, RT_ERR_AIO_CANCELED)                                                              \
    X(EISDIR, RT_ERR_IS_A_DIRECTORY)                                                               \
    X(ENOTDIR, RT_ERR_NOT_A_DIRECTORY)                                                             \
    X(ELOOP, RT_ERR_NOT_A_DIRECTORY)                                                               \
    X(EMFILE, RT_ERR_TOO_MANY_OPEN_FILES)                                                          \
    X(ENFILE, RT_ERR_TOO_MANY_OPEN_FILES)                                                          \
    X(EFBIG, RT_ERR_FILE_TOO_BIG)                                                                  \
    X(EROFS, RT_ERR_READ_ONLY_FS)                                                                  \
    X(ENAMETOOLONG, RT_ERR_NAME_TOO_LONG)                                                          \
    X(EBUSY, RT_ERR_BUSY)                                                                          \
    X(ETXTBSY, RT_ERR_BUSY)

const char *rt_strerror(int rc)
{
    switch (rc) {
#define RT_STATUS_TEXT_(name, value, text)                                                         \
    case (value): return (text);
        RT_STATUS_MAP(RT_STATUS_TEXT_)
#undef RT_STATUS_TEXT_
    }
    return "unknown status code";
}

const char *rt_status_name(int rc)
{
    switch (rc) {
#define RT_STATUS_NAME_(name, value, text)                                                         \
    case (value): return #name;
        RT_STATUS_MAP(RT_STATUS_NAME_)
#undef RT_STATUS_NAME_
    }
    return "RT_ERR_UNKNOWN";
}

int rt_err_from_errno(int errnum)
{
    if (errnum < 0)
        errnum = -errnum;
    if (errnum == 0)
        return RT_OK;
        /* An if-chain rather than a switch: several errno names share a value on some
         * hosts (EOPNOTSUPP/ENOTSUP, EAGAIN/EWOULDBLOCK), which a switch would reject. */
#define RT_ERRNO_CASE_(e, status)                                                                  \
    if (errnum == (e))                                                                             \
        return (status);
    RT_ERRNO_MAP(RT_ERRNO_CASE_)
#undef RT_ERRNO_CASE_
    if (errnum == EWOULDBLOCK)
        return RT_ERR_TRY_AGAIN;
    return RT_ERR_GENERAL_FAILURE;
}
