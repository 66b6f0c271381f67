/*
 * Image locks: one writer or many readers per image file, across processes and
 * handles, with the same open-file-description (OFD) lock bytes QEMU uses, so that a
 * QEMU guest and a vrt user of one image refuse each other exactly as two QEMUs do.
 *
 * QEMU's scheme (block/file-posix.c, "locking=on"): for each permission bit i (0
 * consistent read, 1 write, 2 write unchanged, 3 resize) a user holding it takes a
 * shared lock on byte 100 + i, and a user that does not let others have it takes a
 * shared lock on byte 200 + i.  An open first takes its bytes, then tests the opposite
 * ones for a lock held by anyone else: a permission it wants that someone refuses to
 * share (200 + i), or a permission it refuses to share that someone holds (100 + i).
 * Taking before testing makes two racing opens see each other (both may fail; neither
 * can slip past the other).
 *
 * A writer holds every permission and shares reading; a reader holds consistent read
 * and, as qemu-img does, shares neither write nor resize: a reader and a writer
 * exclude each other, readers share.  OFD locks belong to the open file, not the
 * process, so two handles in one process exclude each other too, and the kernel drops
 * them when the file is closed or the process dies (a crashed holder leaves none).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>

#include "vd/vd_internal.h"

#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200

enum { PERM_READ, PERM_WRITE, PERM_WRITE_UNCHANGED, PERM_RESIZE, PERM_COUNT };

static const char *const perm_names[PERM_COUNT] = {"consistent read", "write", "write unchanged",
                                                   "resize"};

#define BIT(p) (1u << (p))

struct lock_want {
    unsigned held;     /* permissions this open holds */
    unsigned unshared; /* permissions it lets nobody else hold */
};

static struct lock_want want_for(bool writer)
{
    if (writer)
        return (struct lock_want){.held = BIT(PERM_READ) | BIT(PERM_WRITE) |
                                          BIT(PERM_WRITE_UNCHANGED) | BIT(PERM_RESIZE),
                                  .unshared = BIT(PERM_WRITE) | BIT(PERM_RESIZE)};
    return (struct lock_want){.held = BIT(PERM_READ),
                              .unshared = BIT(PERM_WRITE) | BIT(PERM_RESIZE)};
}

static int lock_byte(int fd, off_t byte)
{
    struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    return fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno;
}

/* Does anyone else hold a lock on @a byte?  (An OFD's own locks never conflict with
 * a test through it.) */
static bool byte_taken(int fd, off_t byte)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    return fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
}

/* File systems and kernels without OFD locks: the open goes on unlocked, as QEMU's
 * locking=auto does. */
static bool unsupported(int error)
{
    return error == EINVAL || error == ENOLCK || error == EOPNOTSUPP || error == ENOSYS;
}

int rt__vd_lock(rt_file_t file, const char *path, bool writer, rt_vd_error_t *err)
{
    int fd = (int)rt_file_to_native(file);
    struct lock_want w = want_for(writer);
    for (unsigned p = 0; p < PERM_COUNT; p++) {
        int error = 0;
        if (w.held & BIT(p))
            error = lock_byte(fd, LOCK_PERM_BASE + p);
        if (error == 0 && (w.unshared & BIT(p)))
            error = lock_byte(fd, LOCK_SHARED_BASE + p);
        if (error != 0 && unsupported(error))
            return RT_OK;
        if (error == EAGAIN || error == EACCES) /* someone holds the byte exclusively */
            return rt__vd_fail(err, RT_ERR_VD_LOCKED,
                               "%s: cannot take the \"%s\" lock: another user of the image "
                               "holds it exclusively",
                               path, perm_names[p]);
        if (error != 0)
            return rt__vd_fail(err, rt_err_from_errno(error), "%s: cannot lock the image", path);
    }
    for (unsigned p = 0; p < PERM_COUNT; p++) {
        if ((w.held & BIT(p)) && byte_taken(fd, LOCK_SHARED_BASE + p))
            return rt__vd_fail(err, RT_ERR_VD_LOCKED,
                               "%s: cannot get the \"%s\" lock: another process (a running "
                               "guest, a tool) or handle has the image open and does not "
                               "share it",
                               path, perm_names[p]);
        if ((w.unshared & BIT(p)) && byte_taken(fd, LOCK_PERM_BASE + p))
            return rt__vd_fail(err, RT_ERR_VD_LOCKED,
                               "%s: cannot get the shared \"%s\" lock: another process (a "
                               "running guest, a tool) or handle has the image open for "
                               "writing",
                               path, perm_names[p]);
    }
    return RT_OK;
}
