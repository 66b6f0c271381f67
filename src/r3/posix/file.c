/*
 * Files on POSIX hosts: open with dispositions and hints, positioned I/O that loops
 * over EINTR and short transfers, flush, size.
 */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rt/err.h>
#include <rt/file.h>

#include "internal/file.h"
#include "internal/handle_pool.h"
#include "internal/posix_sys.h"

#ifndef O_DIRECT
#define O_DIRECT 0 /* hosts without it refuse RT_FILE_NO_CACHE in open_flags() */
#endif

static struct rt__handle_pool file_pool = RT__HANDLE_POOL_INIT(struct rt_file, next_free);
/* Numbers each successful open (struct rt_file.generation); 0 is never used. */
static _Atomic uint64_t open_count;

#define KNOWN_FLAGS                                                                                \
    (RT_FILE_ACCESS_MASK | RT_FILE_DISPOSITION_MASK | RT_FILE_NO_CACHE | RT_FILE_WRITE_THROUGH |   \
     RT_FILE_ASYNC_IO)

/* Translates RT_FILE_* flags into open(2) flags; -1 when they do not make one valid
 * combination. */
static int open_flags(uint32_t flags)
{
    int oflags = O_CLOEXEC;

    if (flags & ~KNOWN_FLAGS)
        return -1;
    switch (flags & RT_FILE_ACCESS_MASK) {
    case RT_FILE_READ: oflags |= O_RDONLY; break;
    case RT_FILE_WRITE: oflags |= O_WRONLY; break;
    case RT_FILE_READWRITE: oflags |= O_RDWR; break;
    default: return -1;
    }
    switch (flags & RT_FILE_DISPOSITION_MASK) {
    case RT_FILE_OPEN: break;
    case RT_FILE_CREATE: oflags |= O_CREAT | O_EXCL; break;
    case RT_FILE_OPEN_CREATE: oflags |= O_CREAT; break;
    case RT_FILE_CREATE_REPLACE: oflags |= O_CREAT | O_TRUNC; break;
    default: return -1;
    }
    /* Truncating needs write access; O_TRUNC on a read-only open is unspecified. */
    if ((flags & RT_FILE_DISPOSITION_MASK) == RT_FILE_CREATE_REPLACE && !(flags & RT_FILE_WRITE))
        return -1;
    if (flags & RT_FILE_NO_CACHE) {
        if (O_DIRECT == 0)
            return -2; /* the host has no O_DIRECT at all */
        oflags |= O_DIRECT;
    }
    if (flags & RT_FILE_WRITE_THROUGH)
        oflags |= O_DSYNC;
    return oflags;
}

static int open_retrying(const char *path, int oflags, mode_t mode)
{
    int fd;
    do
        fd = rt__posix_sys.open(path, oflags, mode);
    while (fd < 0 && errno == EINTR);
    return fd;
}

/*
 * open() that leaves nothing behind when it fails.  Linux creates the file before it
 * finds that the file system refuses O_DIRECT, so a plain O_CREAT|O_DIRECT open can fail
 * and still leave a new empty file.  With O_DIRECT and O_CREAT we therefore first try the
 * file as an existing one, and create it only with O_EXCL, so we know it is ours to
 * remove if the open then fails.  A file system that refuses O_DIRECT is reported as
 * RT_ERR_NOT_SUPPORTED (Linux says EINVAL).
 */
static int open_no_leftovers(const char *path, int oflags, mode_t mode, int *rc)
{
    int fd;

    if (!(oflags & O_DIRECT) || !(oflags & O_CREAT)) {
        fd = open_retrying(path, oflags, mode);
    } else {
        for (;;) {
            if (!(oflags & O_EXCL)) {
                fd = open_retrying(path, oflags & ~O_CREAT, mode);
                if (fd >= 0 || errno != ENOENT)
                    break;
            }
            fd = open_retrying(path, oflags | O_EXCL, mode);
            if (fd >= 0)
                break;
            if (errno == EINVAL) {
                unlink(path); /* created by us a moment ago, then refused */
                errno = EINVAL;
                break;
            }
            if (errno != EEXIST || (oflags & O_EXCL))
                break;
            /* Someone created it between the two opens: open it as existing. */
        }
    }
    if (fd < 0)
        *rc = (errno == EINVAL && (oflags & O_DIRECT)) ? RT_ERR_NOT_SUPPORTED
                                                       : rt_err_from_errno(errno);
    return fd;
}

/* What a descriptor that is neither a regular file nor a block device is, in words;
 * NULL for those two. */
static const char *not_a_disk(const struct stat *st)
{
    if (S_ISREG(st->st_mode) || S_ISBLK(st->st_mode))
        return NULL;
    if (S_ISDIR(st->st_mode))
        return "a directory";
    if (S_ISFIFO(st->st_mode))
        return "a FIFO (named pipe)";
    if (S_ISSOCK(st->st_mode))
        return "a socket";
    if (S_ISCHR(st->st_mode))
        return "a character device";
    return "not a regular file";
}

/* Opens @a path; with @a disk_only it must be a regular file or a block device (see
 * rt__file_open_disk). */
static int open_handle(rt_file_t *file, const char *path, uint32_t flags, uint32_t mode,
                       bool disk_only, const char **kind)
{
    struct rt_file *handle;
    int oflags;
    int fd;
    int rc;

    if (file == NULL)
        return RT_ERR_INVALID_POINTER;
    *file = RT_FILE_NIL;
    if (path == NULL)
        return RT_ERR_INVALID_POINTER;
    if (path[0] == '\0' || mode > 07777)
        return RT_ERR_INVALID_PARAMETER;
    oflags = open_flags(flags);
    if (oflags == -2)
        return RT_ERR_NOT_SUPPORTED;
    if (oflags < 0 || (disk_only && (oflags & O_CREAT)))
        return RT_ERR_INVALID_PARAMETER;

    handle = rt__handle_alloc(&file_pool);
    if (handle == NULL)
        return RT_ERR_NO_MEMORY;

    /* Without waiting: opening a FIFO for reading would block until a writer came. */
    fd = open_no_leftovers(path, disk_only ? oflags | O_NONBLOCK : oflags,
                           mode != 0 ? (mode_t)mode : 0644, &rc);
    if (fd < 0)
        goto fail;
    if (disk_only) {
        struct stat st;
        int fl;
        const char *what = NULL;
        if (rt__posix_sys.fstat(fd, &st) != 0) {
            rc = rt_err_from_errno(errno);
        } else if ((what = not_a_disk(&st)) != NULL) {
            rc = S_ISDIR(st.st_mode) ? RT_ERR_IS_A_DIRECTORY : RT_ERR_NOT_SUPPORTED;
            if (kind != NULL)
                *kind = what;
        } else if ((fl = fcntl(fd, F_GETFL)) < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
            rc = rt_err_from_errno(errno);
        } else {
            rc = RT_OK;
        }
        if (rc != RT_OK) {
            rt__posix_sys.close(fd);
            goto fail;
        }
    }

    handle->fd = fd;
    handle->flags = flags;
    handle->generation = atomic_fetch_add_explicit(&open_count, 1, memory_order_relaxed) + 1;
    handle->magic = RT__MAGIC_FILE;
    *file = handle;
    return RT_OK;

fail:
    handle->magic = RT__MAGIC_DEAD;
    rt__handle_free(&file_pool, handle);
    return rc;
}

int rt_file_open(rt_file_t *file, const char *path, uint32_t flags, uint32_t mode)
{
    return open_handle(file, path, flags, mode, false, NULL);
}

int rt__file_open_disk(rt_file_t *file, const char *path, uint32_t flags, const char **kind)
{
    if (kind != NULL)
        *kind = NULL;
    return open_handle(file, path, flags, 0, true, kind);
}

int rt_file_close(rt_file_t file)
{
    int fd;

    if (file == RT_FILE_NIL)
        return RT_OK;
    if (!rt__file_is_live(file))
        return RT_ERR_INVALID_HANDLE;
    fd = file->fd;
    file->magic = RT__MAGIC_DEAD;
    file->fd = -1;
    rt__handle_free(&file_pool, file);
    /* close() is not retried on EINTR: on Linux the descriptor is gone either way, and
     * retrying could close a descriptor another thread just opened. */
    if (rt__posix_sys.close(fd) != 0 && errno != EINTR)
        return errno == EIO ? RT_ERR_IO : rt_err_from_errno(errno);
    return RT_OK;
}

/* Common checks of read_at/write_at. */
static int check_transfer(rt_file_t file, uint64_t off, const void *buf, size_t len)
{
    if (!rt__file_is_live(file))
        return RT_ERR_INVALID_HANDLE;
    if (buf == NULL && len > 0)
        return RT_ERR_INVALID_POINTER;
    if (off > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - off)
        return RT_ERR_OUT_OF_RANGE;
    return RT_OK;
}

int rt_file_read_at(rt_file_t file, uint64_t off, void *buf, size_t len, size_t *done)
{
    size_t total = 0;
    int rc = check_transfer(file, off, buf, len);

    if (rc == RT_OK && !(file->flags & RT_FILE_READ))
        rc = RT_ERR_BAD_FILE;
    while (rc == RT_OK && total < len) {
        ssize_t n =
            rt__posix_sys.pread(file->fd, (char *)buf + total, len - total, (off_t)(off + total));
        if (n > 0)
            total += (size_t)n;
        else if (n == 0)
            break; /* end of file */
        else if (errno != EINTR)
            rc = rt_err_from_errno(errno);
    }
    if (done != NULL)
        *done = total;
    if (rc == RT_OK && total < len && done == NULL)
        rc = RT_ERR_EOF;
    return rc;
}

int rt_file_write_at(rt_file_t file, uint64_t off, const void *buf, size_t len, size_t *done)
{
    size_t total = 0;
    int rc = check_transfer(file, off, buf, len);

    if (rc == RT_OK && !(file->flags & RT_FILE_WRITE))
        rc = RT_ERR_BAD_FILE;
    while (rc == RT_OK && total < len) {
        ssize_t n = rt__posix_sys.pwrite(file->fd, (const char *)buf + total, len - total,
                                         (off_t)(off + total));
        if (n > 0)
            total += (size_t)n;
        else if (n == 0)
            rc = RT_ERR_DISK_FULL; /* no progress and no error: the device is full */
        else if (errno != EINTR)
            rc = rt_err_from_errno(errno);
    }
    if (done != NULL)
        *done = total;
    return rc;
}

int rt_file_flush(rt_file_t file)
{
    if (!rt__file_is_live(file))
        return RT_ERR_INVALID_HANDLE;
    while (rt__posix_sys.fsync(file->fd) != 0) {
        if (errno != EINTR)
            return rt_err_from_errno(errno);
    }
    return RT_OK;
}

int rt_file_get_size(rt_file_t file, uint64_t *size)
{
    struct stat st;

    if (!rt__file_is_live(file))
        return RT_ERR_INVALID_HANDLE;
    if (size == NULL)
        return RT_ERR_INVALID_POINTER;
    if (rt__posix_sys.fstat(file->fd, &st) != 0)
        return rt_err_from_errno(errno);
    if (S_ISBLK(st.st_mode)) {
        /* A block device's st_size is 0; its end is where it ends.  Reads and writes
         * are positioned, so moving the offset disturbs nothing. */
        off_t end = lseek(file->fd, 0, SEEK_END);
        if (end < 0)
            return rt_err_from_errno(errno);
        *size = (uint64_t)end;
        return RT_OK;
    }
    *size = (uint64_t)st.st_size;
    return RT_OK;
}

int rt_file_set_size(rt_file_t file, uint64_t size)
{
    if (!rt__file_is_live(file))
        return RT_ERR_INVALID_HANDLE;
    if (size > (uint64_t)INT64_MAX)
        return RT_ERR_OUT_OF_RANGE;
    if (!(file->flags & RT_FILE_WRITE))
        return RT_ERR_BAD_FILE;
    while (rt__posix_sys.ftruncate(file->fd, (off_t)size) != 0) {
        if (errno != EINTR)
            return rt_err_from_errno(errno);
    }
    return RT_OK;
}

intptr_t rt_file_to_native(rt_file_t file)
{
    if (!rt__file_is_live(file))
        return -1;
    return file->fd;
}
