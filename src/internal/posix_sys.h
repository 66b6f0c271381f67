/*
 * The POSIX calls the runtime makes, reached through one table so tests can inject
 * faults (SQLite's aSyscall[] in os_unix.c is the model).  Production code calls
 * rt__posix_sys.NAME(...); a test assigns its own function to a member, runs the code
 * under test, and calls rt__posix_sys_reset().
 *
 * The table is read without locks: change it only while no other thread of the
 * process is inside the library.
 */
#ifndef RT_INTERNAL_POSIX_SYS_H
#define RT_INTERNAL_POSIX_SYS_H

#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>

struct rt__posix_sys {
    int (*open)(const char *path, int flags, mode_t mode);
    int (*close)(int fd);
    ssize_t (*pread)(int fd, void *buf, size_t len, off_t off);
    ssize_t (*pwrite)(int fd, const void *buf, size_t len, off_t off);
    ssize_t (*preadv)(int fd, const struct iovec *iov, int iovcnt, off_t off);
    ssize_t (*pwritev)(int fd, const struct iovec *iov, int iovcnt, off_t off);
    int (*fsync)(int fd);
    int (*fdatasync)(int fd);
    int (*fstat)(int fd, struct stat *st);
    int (*ftruncate)(int fd, off_t size);
    void *(*malloc)(size_t size);
    void *(*calloc)(size_t count, size_t size);
};

extern struct rt__posix_sys rt__posix_sys;

/** Puts every member of rt__posix_sys back to the real call. */
void rt__posix_sys_reset(void);

#endif /* RT_INTERNAL_POSIX_SYS_H */
