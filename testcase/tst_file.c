/*
 * Files (<rt/file.h>): proves every disposition and access mode of rt_file_open, the
 * flag and mode validation, the descriptor flags the hints promise (O_CLOEXEC always,
 * O_DIRECT for RT_FILE_NO_CACHE or RT_ERR_NOT_SUPPORTED where the file system refuses,
 * O_DSYNC for RT_FILE_WRITE_THROUGH), positioned read/write with their end-of-file and
 * overflow rules, size and flush, and that NIL, closed and never-created handles are
 * answered with a status, never a crash.
 *
 * Error paths the disk will not produce on demand are reached through the syscall table
 * (rt__posix_sys): short transfers, EINTR, ENOSPC after a partial write, EIO, EMFILE,
 * failed allocation, a file system refusing O_DIRECT.  Every fault test puts the table
 * back with rt__posix_sys_reset() before it asserts anything.
 */
#ifdef HAVE_CONFIG_H
#include <config.h> /* the library's view of off_t must be ours */
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* O_DIRECT */
#endif

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <rt/file.h>
#include <rt/fileaio.h>
#include <rt/mem.h>

#include "internal/posix_sys.h"
#include "tst_common.h"

#define PATH_SIZE 1024

/* A sentinel that is neither NIL nor a handle: open must overwrite it on failure. */
static char not_a_handle_storage[64];
#define NOT_A_HANDLE ((rt_file_t)(void *)not_a_handle_storage)

/* ---- helpers ------------------------------------------------------------------- */

static char *path_for(char *buf, const char *name)
{
    return tst_path(buf, PATH_SIZE, name);
}

static bool path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Writes a file with plain POSIX calls, so the seed does not depend on the code under
 * test. */
static void seed_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(write(fd, data, len) == (ssize_t)len);
    close(fd);
}

static off_t size_of_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    return st.st_size;
}

static void fill_pattern(unsigned char *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)((i * 31u + seed * 7u + (i >> 8)) & 0xff);
}

static bool all_zero(const unsigned char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (buf[i] != 0)
            return false;
    return true;
}

static bool fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1 || errno != EBADF;
}

/* Opens a fresh read/write file that must succeed. */
static rt_file_t open_fresh(const char *name, char *path)
{
    rt_file_t file = RT_FILE_NIL;
    path_for(path, name);
    TST_RC_FATAL(rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_CREATE_REPLACE, 0), RT_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(file);
    return file;
}

/* ---- fault injection state ----------------------------------------------------- */

static int fake_calls;     /* calls the fake saw */
static int fake_errno;     /* what a failing fake sets */
static size_t fake_budget; /* bytes a pwrite fake lets through before failing */
static int fake_fds[16];   /* descriptors the tracking open fake handed out */
static int fake_nfds;
static int fake_direct_opens; /* open calls that asked for O_DIRECT */

static void fault_begin(void)
{
    rt__posix_sys_reset();
    fake_calls = 0;
    fake_errno = 0;
    fake_budget = 0;
    fake_nfds = 0;
    fake_direct_opens = 0;
}

static void fault_end(void)
{
    rt__posix_sys_reset();
}

static ssize_t pread_one_byte(int fd, void *buf, size_t len, off_t off)
{
    fake_calls++;
    return pread(fd, buf, len > 1 ? 1 : len, off);
}

static ssize_t pwrite_one_byte(int fd, const void *buf, size_t len, off_t off)
{
    fake_calls++;
    return pwrite(fd, buf, len > 1 ? 1 : len, off);
}

static ssize_t pread_eintr_once(int fd, void *buf, size_t len, off_t off)
{
    if (fake_calls++ == 0) {
        errno = EINTR;
        return -1;
    }
    return pread(fd, buf, len, off);
}

static ssize_t pwrite_eintr_once(int fd, const void *buf, size_t len, off_t off)
{
    if (fake_calls++ == 0) {
        errno = EINTR;
        return -1;
    }
    return pwrite(fd, buf, len, off);
}

static ssize_t pread_fail(int fd, void *buf, size_t len, off_t off)
{
    fake_calls++;
    errno = fake_errno;
    return -1;
}

static ssize_t pwrite_fail(int fd, const void *buf, size_t len, off_t off)
{
    fake_calls++;
    errno = fake_errno;
    return -1;
}

/* Lets fake_budget bytes through, at most 1000 per call, then fails with fake_errno. */
static ssize_t pwrite_short_then_fail(int fd, const void *buf, size_t len, off_t off)
{
    size_t n = len;
    fake_calls++;
    if (fake_budget == 0) {
        errno = fake_errno;
        return -1;
    }
    if (n > fake_budget)
        n = fake_budget;
    if (n > 1000)
        n = 1000;
    fake_budget -= n;
    return pwrite(fd, buf, n, off);
}

static int open_fail(const char *path, int flags, mode_t mode)
{
    fake_calls++;
    errno = fake_errno;
    return -1;
}

static int open_tracking(const char *path, int flags, mode_t mode)
{
    int fd = open(path, flags, mode);
    fake_calls++;
    if (fd >= 0 && fake_nfds < (int)(sizeof fake_fds / sizeof fake_fds[0]))
        fake_fds[fake_nfds++] = fd;
    return fd;
}

/* A file system that refuses O_DIRECT the way Linux ones do: EINVAL from open. */
static int open_refusing_direct(const char *path, int flags, mode_t mode)
{
    if (flags & O_DIRECT) {
        fake_calls++;
        fake_direct_opens++;
        errno = EINVAL;
        return -1;
    }
    return open_tracking(path, flags, mode);
}

/* What Linux does on a file system without O_DIRECT: O_CREAT creates the file first,
 * O_TRUNC does not get as far, and then the open fails with EINVAL. */
static int open_creating_then_refusing_direct(const char *path, int flags, mode_t mode)
{
    if (flags & O_DIRECT) {
        fake_calls++;
        fake_direct_opens++;
        if (flags & O_CREAT) {
            int fd = open(path, (flags & ~(O_DIRECT | O_TRUNC)), mode);
            if (fd < 0)
                return -1; /* EEXIST with O_EXCL, as the kernel would say */
            close(fd);
        } else if (access(path, F_OK) != 0) {
            errno = ENOENT;
            return -1;
        }
        errno = EINVAL;
        return -1;
    }
    return open_tracking(path, flags, mode);
}

static int fsync_fail(int fd)
{
    fake_calls++;
    errno = fake_errno;
    return -1;
}

static int fstat_fail(int fd, struct stat *st)
{
    fake_calls++;
    errno = fake_errno;
    return -1;
}

static int ftruncate_fail(int fd, off_t size)
{
    fake_calls++;
    errno = fake_errno;
    return -1;
}

/* close() that closes, then reports a deferred write error. */
static int close_then_eio(int fd)
{
    fake_calls++;
    close(fd);
    errno = EIO;
    return -1;
}

static void *malloc_null(size_t size)
{
    fake_calls++;
    errno = ENOMEM;
    return NULL;
}

static void *calloc_null(size_t count, size_t size)
{
    fake_calls++;
    errno = ENOMEM;
    return NULL;
}

/* ---- open: dispositions -------------------------------------------------------- */

static void test_open_missing_file(void)
{
    char path[PATH_SIZE];
    rt_file_t file = NOT_A_HANDLE;
    path_for(path, "missing");
    TST_RC(rt_file_open(&file, path, RT_FILE_READ | RT_FILE_OPEN, 0), RT_ERR_FILE_NOT_FOUND);
    CU_ASSERT_PTR_NULL(file);
    CU_ASSERT_FALSE(path_exists(path));

    file = NOT_A_HANDLE;
    TST_RC(rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_OPEN, 0), RT_ERR_FILE_NOT_FOUND);
    CU_ASSERT_PTR_NULL(file);
    CU_ASSERT_FALSE(path_exists(path));
}

static void test_open_existing(void)
{
    char path[PATH_SIZE];
    rt_file_t file = RT_FILE_NIL;
    char buf[8] = {0};
    size_t done = 0;
    path_for(path, "existing");
    seed_file(path, "hello", 5);
    TST_RC_FATAL(rt_file_open(&file, path, RT_FILE_READ | RT_FILE_OPEN, 0), RT_OK);
    TST_RC(rt_file_read_at(file, 0, buf, sizeof buf, &done), RT_OK);
    CU_ASSERT_EQUAL(done, 5);
    CU_ASSERT_EQUAL(memcmp(buf, "hello", 5), 0);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_create_new_and_existing(void)
{
    char path[PATH_SIZE];
    rt_file_t file = RT_FILE_NIL;
    uint64_t size = 1;
    path_for(path, "create");
    TST_RC_FATAL(rt_file_open(&file, path, RT_FILE_WRITE | RT_FILE_CREATE, 0), RT_OK);
    CU_ASSERT_TRUE(path_exists(path));
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, 0);
    TST_RC(rt_file_write_at(file, 0, "abc", 3, NULL), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);

    file = NOT_A_HANDLE;
    TST_RC(rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_CREATE, 0), RT_ERR_ALREADY_EXISTS);
    CU_ASSERT_PTR_NULL(file);
    CU_ASSERT_EQUAL(size_of_path(path), 3); /* left untouched */
}

static void test_open_create_both_ways(void)
{
    char path[PATH_SIZE];
    rt_file_t file = RT_FILE_NIL;
    char buf[4] = {0};
    path_for(path, "open_create");
    CU_ASSERT_FALSE(path_exists(path));
    TST_RC_FATAL(rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_OPEN_CREATE, 0), RT_OK);
    CU_ASSERT_TRUE(path_exists(path));
    TST_RC(rt_file_write_at(file, 0, "xyz", 3, NULL), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);

    /* Existing: opened, not truncated. */
    TST_RC_FATAL(rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_OPEN_CREATE, 0), RT_OK);
    CU_ASSERT_EQUAL(size_of_path(path), 3);
    TST_RC(rt_file_read_at(file, 0, buf, 3, NULL), RT_OK);
    CU_ASSERT_EQUAL(memcmp(buf, "xyz", 3), 0);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_create_replace(void)
{
    char path[PATH_SIZE];
    rt_file_t file = RT_FILE_NIL;
    uint64_t size = 99;
    path_for(path, "replace");

    /* Missing: created. */
    TST_RC_FATAL(rt_file_open(&file, path, RT_FILE_WRITE | RT_FILE_CREATE_REPLACE, 0), RT_OK);
    CU_ASSERT_TRUE(path_exists(path));
    TST_RC(rt_file_close(file), RT_OK);

    /* Existing: truncated. */
    seed_file(path, "0123456789", 10);
    TST_RC_FATAL(rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_CREATE_REPLACE, 0), RT_OK);
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, 0);
    CU_ASSERT_EQUAL(size_of_path(path), 0);
    TST_RC(rt_file_close(file), RT_OK);
}

/* ---- open: access modes and descriptor flags ----------------------------------- */

static void check_access(uint32_t flags, int want_accmode)
{
    char path[PATH_SIZE];
    rt_file_t file = RT_FILE_NIL;
    int fl, fd_flags;
    intptr_t fd;
    path_for(path, "access");
    TST_RC_FATAL(rt_file_open(&file, path, flags | RT_FILE_OPEN_CREATE, 0), RT_OK);
    fd = rt_file_to_native(file);
    CU_ASSERT_FATAL(fd >= 0);
    fl = fcntl((int)fd, F_GETFL);
    fd_flags = fcntl((int)fd, F_GETFD);
    CU_ASSERT(fl != -1);
    CU_ASSERT_EQUAL(fl & O_ACCMODE, want_accmode);
    CU_ASSERT(fd_flags != -1 && (fd_flags & FD_CLOEXEC) != 0);
    /* No hint asked, none given. */
    CU_ASSERT_EQUAL(fl & O_DIRECT, 0);
    CU_ASSERT_EQUAL(fl & O_DSYNC, 0);
    TST_RC(rt_file_close(file), RT_OK);
    CU_ASSERT_FALSE(fd_is_open((int)fd));
}

static void test_access_modes_and_cloexec(void)
{
    check_access(RT_FILE_READ, O_RDONLY);
    check_access(RT_FILE_WRITE, O_WRONLY);
    check_access(RT_FILE_READWRITE, O_RDWR);
}

static void test_write_through_sets_dsync(void)
{
    char path[PATH_SIZE];
    rt_file_t file = RT_FILE_NIL;
    int fl;
    path_for(path, "dsync");
    TST_RC_FATAL(rt_file_open(&file, path,
                              RT_FILE_READWRITE | RT_FILE_CREATE_REPLACE | RT_FILE_WRITE_THROUGH,
                              0),
                 RT_OK);
    fl = fcntl((int)rt_file_to_native(file), F_GETFL);
    CU_ASSERT(fl != -1 && (fl & O_DSYNC) == O_DSYNC);
    TST_RC(rt_file_write_at(file, 0, "durable", 7, NULL), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    CU_ASSERT_EQUAL(size_of_path(path), 7);
}

static void test_async_io_hint_accepted(void)
{
    char path[PATH_SIZE];
    rt_file_t file = RT_FILE_NIL;
    path_for(path, "asyncio");
    TST_RC_FATAL(
        rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_CREATE_REPLACE | RT_FILE_ASYNC_IO, 0),
        RT_OK);
    TST_RC(rt_file_write_at(file, 0, "x", 1, NULL), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
}

/* Whether this directory's file system takes O_DIRECT, asked without the library. */
static bool fs_takes_direct(const char *dir)
{
    char probe[PATH_SIZE];
    int fd;
    snprintf(probe, sizeof probe, "%s/.vrt-direct-probe-%d", dir, (int)getpid());
    fd = open(probe, O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0644);
    if (fd >= 0)
        close(fd);
    unlink(probe);
    return fd >= 0;
}

/* On @a dir, NO_CACHE either gives an O_DIRECT descriptor that moves aligned data, or
 * is refused with RT_ERR_NOT_SUPPORTED, and only where the file system refuses. */
static void check_no_cache_in(const char *dir, const char *name)
{
    char path[PATH_SIZE];
    rt_file_t file = NOT_A_HANDLE;
    bool takes = fs_takes_direct(dir);
    size_t page = rt_mem_page_size();
    unsigned char *wbuf, *rbuf;
    int rc, fl;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    rc =
        rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_CREATE_REPLACE | RT_FILE_NO_CACHE, 0);
    if (rc != RT_OK && rc != RT_ERR_NOT_SUPPORTED)
        fprintf(stderr, "  NO_CACHE open in %s -> %s\n", dir, rt_status_name(rc));
    CU_ASSERT(rc == RT_OK || rc == RT_ERR_NOT_SUPPORTED);
    if (rc == RT_ERR_NOT_SUPPORTED) {
        CU_ASSERT_PTR_NULL(file);
        if (takes)
            fprintf(stderr, "  %s takes O_DIRECT, yet NO_CACHE was refused\n", dir);
        CU_ASSERT_FALSE(takes);
        unlink(path);
        return;
    }
    if (rc != RT_OK)
        return;
    CU_ASSERT_TRUE(takes);
    fl = fcntl((int)rt_file_to_native(file), F_GETFL);
    CU_ASSERT(fl != -1 && (fl & O_DIRECT) != 0);

    wbuf = rt_mem_page_alloc(2 * page);
    rbuf = rt_mem_page_alloc(2 * page);
    CU_ASSERT_FATAL(wbuf != NULL && rbuf != NULL);
    fill_pattern(wbuf, 2 * page, 3);
    TST_RC(rt_file_write_at(file, 0, wbuf, 2 * page, NULL), RT_OK);
    TST_RC(rt_file_read_at(file, 0, rbuf, 2 * page, NULL), RT_OK);
    CU_ASSERT_EQUAL(memcmp(wbuf, rbuf, 2 * page), 0);
    rt_mem_page_free(wbuf, 2 * page);
    rt_mem_page_free(rbuf, 2 * page);
    TST_RC(rt_file_close(file), RT_OK);
    unlink(path);
}

static void test_no_cache_scratch_dir(void)
{
    check_no_cache_in(tst_dir(), "nocache");
}

static void test_no_cache_dev_shm(void)
{
    struct stat st;
    char dir[PATH_SIZE];
    char name[64];
    if (stat("/dev/shm", &st) != 0 || !S_ISDIR(st.st_mode) || access("/dev/shm", W_OK) != 0)
        return; /* nothing to try on this host */
    snprintf(dir, sizeof dir, "/dev/shm");
    snprintf(name, sizeof name, "vrt-tst-file-nocache-%d", (int)getpid());
    check_no_cache_in(dir, name);
}

/* A misaligned transfer on an O_DIRECT file is the kernel's EINVAL, reported as
 * RT_ERR_INVALID_PARAMETER (documented on read_at and write_at). */
static void test_no_cache_misaligned(void)
{
    char path[PATH_SIZE];
    rt_file_t file = RT_FILE_NIL;
    size_t page = rt_mem_page_size();
    unsigned char *buf;
    int rc;

    if (!fs_takes_direct(tst_dir()))
        return;
    path_for(path, "nocache_misaligned");
    rc =
        rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_CREATE_REPLACE | RT_FILE_NO_CACHE, 0);
    TST_RC_FATAL(rc, RT_OK);
    buf = rt_mem_page_alloc(2 * page);
    CU_ASSERT_FATAL(buf != NULL);
    TST_RC(rt_file_write_at(file, 0, buf, page, NULL), RT_OK);
    /* Some file systems take O_DIRECT without enforcing alignment (tmpfs): ask the
     * descriptor itself first. */
    if (pwrite((int)rt_file_to_native(file), buf + 1, page, 0) >= 0 || errno != EINVAL) {
        printf("(this file system does not enforce O_DIRECT alignment) ");
        goto out;
    }
    TST_RC(rt_file_write_at(file, 0, buf + 1, page, NULL), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_file_read_at(file, 0, buf + 1, page, NULL), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_file_read_at(file, 1, buf, page, NULL), RT_ERR_INVALID_PARAMETER);
out:
    rt_mem_page_free(buf, 2 * page);
    TST_RC(rt_file_close(file), RT_OK);
}

/* ---- open: permission mode ----------------------------------------------------- */

static void check_mode(const char *name, uint32_t mode, mode_t want)
{
    char path[PATH_SIZE];
    rt_file_t file = RT_FILE_NIL;
    struct stat st;
    path_for(path, name);
    TST_RC_FATAL(rt_file_open(&file, path, RT_FILE_WRITE | RT_FILE_CREATE, mode), RT_OK);
    CU_ASSERT_FATAL(stat(path, &st) == 0);
    if ((st.st_mode & 07777) != want)
        fprintf(stderr, "  mode %#o created %#o, expected %#o\n", (unsigned)mode,
                (unsigned)(st.st_mode & 07777), (unsigned)want);
    CU_ASSERT_EQUAL(st.st_mode & 07777, want);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_create_mode(void)
{
    mode_t old = umask(0); /* so the mode arrives unmasked */
    char path[PATH_SIZE];
    rt_file_t file = RT_FILE_NIL;
    struct stat st;

    check_mode("mode_default", 0, 0644);
    check_mode("mode_0600", 0600, 0600);
    check_mode("mode_0755", 0755, 0755);
    check_mode("mode_0640", 0640, 0640);
    check_mode("mode_0711", 0711, 0711);

    /* The mode is for created files only. */
    path_for(path, "mode_0600");
    TST_RC(rt_file_open(&file, path, RT_FILE_READ | RT_FILE_OPEN_CREATE, 0777), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    CU_ASSERT(stat(path, &st) == 0 && (st.st_mode & 07777) == 0600);
    umask(old);
}

/* ---- open: parameter validation ------------------------------------------------ */

static void check_bad_flags(uint32_t flags, uint32_t mode, int want)
{
    char path[PATH_SIZE];
    rt_file_t file = NOT_A_HANDLE;
    int rc;
    path_for(path, "bad_flags");
    rc = rt_file_open(&file, path, flags, mode);
    if (rc != want)
        fprintf(stderr, "  flags %#x mode %#o -> %s, expected %s\n", (unsigned)flags,
                (unsigned)mode, rt_status_name(rc), rt_status_name(want));
    CU_ASSERT_EQUAL(rc, want);
    CU_ASSERT_PTR_NULL(file);
    if (rc == RT_OK)
        rt_file_close(file);
    /* Refused before anything touched the file system. */
    CU_ASSERT_FALSE(path_exists(path));
    unlink(path);
}

static void test_open_bad_flags(void)
{
    const uint32_t create = RT_FILE_CREATE;
    check_bad_flags(0, 0, RT_ERR_INVALID_PARAMETER);
    check_bad_flags(create, 0, RT_ERR_INVALID_PARAMETER);            /* no access */
    check_bad_flags(RT_FILE_READWRITE, 0, RT_ERR_INVALID_PARAMETER); /* no disposition */
    check_bad_flags(RT_FILE_NO_CACHE | RT_FILE_READ, 0, RT_ERR_INVALID_PARAMETER);
    check_bad_flags(RT_FILE_READWRITE | RT_FILE_CREATE | RT_FILE_CREATE_REPLACE, 0,
                    RT_ERR_INVALID_PARAMETER); /* two dispositions */
    check_bad_flags(RT_FILE_READWRITE | RT_FILE_OPEN | RT_FILE_CREATE_REPLACE, 0,
                    RT_ERR_INVALID_PARAMETER);
    check_bad_flags(RT_FILE_READWRITE | RT_FILE_DISPOSITION_MASK, 0, RT_ERR_INVALID_PARAMETER);
    /* Unknown bits, alone or next to valid flags. */
    check_bad_flags(RT_FILE_READWRITE | create | 0x00000004u, 0, RT_ERR_INVALID_PARAMETER);
    check_bad_flags(RT_FILE_READWRITE | create | 0x00000008u, 0, RT_ERR_INVALID_PARAMETER);
    check_bad_flags(RT_FILE_READWRITE | create | 0x00000080u, 0, RT_ERR_INVALID_PARAMETER);
    check_bad_flags(RT_FILE_READWRITE | create | 0x00000800u, 0, RT_ERR_INVALID_PARAMETER);
    check_bad_flags(RT_FILE_READWRITE | create | 0x00010000u, 0, RT_ERR_INVALID_PARAMETER);
    check_bad_flags(RT_FILE_READWRITE | create | 0x80000000u, 0, RT_ERR_INVALID_PARAMETER);
    check_bad_flags(0xffffffffu, 0, RT_ERR_INVALID_PARAMETER);
    /* Mode above 07777. */
    check_bad_flags(RT_FILE_READWRITE | create, 010000, RT_ERR_INVALID_PARAMETER);
    check_bad_flags(RT_FILE_READWRITE | create, 0100644, RT_ERR_INVALID_PARAMETER);
    check_bad_flags(RT_FILE_READWRITE | create, 0xffffffffu, RT_ERR_INVALID_PARAMETER);
}

static void test_open_mode_limit_accepted(void)
{
    char path[PATH_SIZE];
    rt_file_t file = RT_FILE_NIL;
    path_for(path, "mode_07777");
    TST_RC(rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_CREATE, 07777), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_open_bad_pointers(void)
{
    char path[PATH_SIZE];
    rt_file_t file = NOT_A_HANDLE;
    path_for(path, "null_ptr");
    TST_RC(rt_file_open(NULL, path, RT_FILE_READWRITE | RT_FILE_CREATE, 0), RT_ERR_INVALID_POINTER);
    CU_ASSERT_FALSE(path_exists(path));
    TST_RC(rt_file_open(&file, NULL, RT_FILE_READWRITE | RT_FILE_CREATE, 0),
           RT_ERR_INVALID_POINTER);
    CU_ASSERT_PTR_NULL(file);
    file = NOT_A_HANDLE;
    TST_RC(rt_file_open(&file, "", RT_FILE_READWRITE | RT_FILE_OPEN_CREATE, 0),
           RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_PTR_NULL(file);
}

/* What the OS says about a path reaches the caller as the matching status. */
static void test_open_os_errors(void)
{
    char path[PATH_SIZE], sub[PATH_SIZE + 8], longname[PATH_SIZE];
    rt_file_t file = NOT_A_HANDLE;
    size_t dir_len = strlen(tst_dir());

    /* A directory cannot be opened for writing. */
    TST_RC(rt_file_open(&file, tst_dir(), RT_FILE_WRITE | RT_FILE_OPEN, 0), RT_ERR_IS_A_DIRECTORY);
    CU_ASSERT_PTR_NULL(file);

    /* A path through a regular file. */
    path_for(path, "plain");
    seed_file(path, "x", 1);
    snprintf(sub, sizeof sub, "%s/x", path);
    file = NOT_A_HANDLE;
    TST_RC(rt_file_open(&file, sub, RT_FILE_READWRITE | RT_FILE_OPEN_CREATE, 0),
           RT_ERR_NOT_A_DIRECTORY);
    CU_ASSERT_PTR_NULL(file);

    /* A missing directory on the way. */
    path_for(path, "no_such_dir/file");
    file = NOT_A_HANDLE;
    TST_RC(rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_OPEN_CREATE, 0),
           RT_ERR_FILE_NOT_FOUND);
    CU_ASSERT_PTR_NULL(file);

    /* A component longer than NAME_MAX. */
    CU_ASSERT_FATAL(dir_len + 2 + NAME_MAX + 10 < sizeof longname);
    snprintf(longname, sizeof longname, "%s/", tst_dir());
    memset(longname + dir_len + 1, 'n', NAME_MAX + 10);
    longname[dir_len + 1 + NAME_MAX + 10] = '\0';
    file = NOT_A_HANDLE;
    TST_RC(rt_file_open(&file, longname, RT_FILE_READWRITE | RT_FILE_OPEN_CREATE, 0),
           RT_ERR_NAME_TOO_LONG);
    CU_ASSERT_PTR_NULL(file);
}

/* ---- read and write ------------------------------------------------------------ */

static void test_round_trip(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("round_trip", path);
    const size_t len = 1024 * 1024 + 333;
    unsigned char *wbuf = malloc(len), *rbuf = malloc(len);
    size_t done = 0;
    uint64_t size = 0;

    CU_ASSERT_FATAL(wbuf != NULL && rbuf != NULL);
    fill_pattern(wbuf, len, 1);
    TST_RC(rt_file_write_at(file, 0, wbuf, len, &done), RT_OK);
    CU_ASSERT_EQUAL(done, len);
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, len);

    memset(rbuf, 0, len);
    done = 0;
    TST_RC(rt_file_read_at(file, 0, rbuf, len, &done), RT_OK);
    CU_ASSERT_EQUAL(done, len);
    CU_ASSERT_EQUAL(memcmp(wbuf, rbuf, len), 0);

    /* Positioned: a middle piece, and an overwrite in place. */
    memset(rbuf, 0, 100);
    TST_RC(rt_file_read_at(file, 4097, rbuf, 100, NULL), RT_OK);
    CU_ASSERT_EQUAL(memcmp(wbuf + 4097, rbuf, 100), 0);
    TST_RC(rt_file_write_at(file, 10, "OVERWRITE", 9, NULL), RT_OK);
    TST_RC(rt_file_read_at(file, 8, rbuf, 13, NULL), RT_OK);
    CU_ASSERT_EQUAL(memcmp(rbuf, wbuf + 8, 2), 0);
    CU_ASSERT_EQUAL(memcmp(rbuf + 2, "OVERWRITE", 9), 0);
    CU_ASSERT_EQUAL(memcmp(rbuf + 11, wbuf + 19, 2), 0);
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, len);

    TST_RC(rt_file_close(file), RT_OK);
    CU_ASSERT_EQUAL(size_of_path(path), (off_t)len);
    free(wbuf);
    free(rbuf);
}

static void test_write_past_end_leaves_hole(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("hole", path);
    unsigned char buf[8193];
    uint64_t size = 0;
    TST_RC(rt_file_write_at(file, 8192, "!", 1, NULL), RT_OK);
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, 8193);
    memset(buf, 0xee, sizeof buf);
    TST_RC(rt_file_read_at(file, 0, buf, sizeof buf, NULL), RT_OK);
    CU_ASSERT_TRUE(all_zero(buf, 8192));
    CU_ASSERT_EQUAL(buf[8192], '!');
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_read_past_eof(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("eof", path);
    unsigned char data[100], buf[200];
    size_t done = 12345;

    fill_pattern(data, sizeof data, 2);
    TST_RC(rt_file_write_at(file, 0, data, sizeof data, NULL), RT_OK);

    /* With done: RT_OK and the short count. */
    TST_RC(rt_file_read_at(file, 0, buf, sizeof buf, &done), RT_OK);
    CU_ASSERT_EQUAL(done, 100);
    CU_ASSERT_EQUAL(memcmp(buf, data, 100), 0);
    done = 12345;
    TST_RC(rt_file_read_at(file, 60, buf, sizeof buf, &done), RT_OK);
    CU_ASSERT_EQUAL(done, 40);
    CU_ASSERT_EQUAL(memcmp(buf, data + 60, 40), 0);
    done = 12345;
    TST_RC(rt_file_read_at(file, 100, buf, 10, &done), RT_OK);
    CU_ASSERT_EQUAL(done, 0);
    done = 12345;
    TST_RC(rt_file_read_at(file, 1000000, buf, 10, &done), RT_OK);
    CU_ASSERT_EQUAL(done, 0);

    /* Without done: RT_ERR_EOF. */
    TST_RC(rt_file_read_at(file, 0, buf, sizeof buf, NULL), RT_ERR_EOF);
    TST_RC(rt_file_read_at(file, 99, buf, 2, NULL), RT_ERR_EOF);
    TST_RC(rt_file_read_at(file, 100, buf, 1, NULL), RT_ERR_EOF);
    TST_RC(rt_file_read_at(file, 99, buf, 1, NULL), RT_OK);
    CU_ASSERT_EQUAL(buf[0], data[99]);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_zero_length(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("zero_len", path);
    char buf[4];
    size_t done = 777;
    uint64_t size = 1;

    TST_RC(rt_file_write_at(file, 0, buf, 0, &done), RT_OK);
    CU_ASSERT_EQUAL(done, 0);
    TST_RC(rt_file_write_at(file, 5000, buf, 0, NULL), RT_OK);
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, 0); /* a zero-length write extends nothing */
    done = 777;
    TST_RC(rt_file_read_at(file, 0, buf, 0, &done), RT_OK);
    CU_ASSERT_EQUAL(done, 0);
    TST_RC(rt_file_read_at(file, 0, buf, 0, NULL), RT_OK);
    TST_RC(rt_file_read_at(file, 0, NULL, 0, NULL), RT_OK); /* NULL is fine for 0 bytes */
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_null_buffers(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("null_buf", path);
    size_t done = 0;
    uint64_t size = 1;
    TST_RC(rt_file_read_at(file, 0, NULL, 1, &done), RT_ERR_INVALID_POINTER);
    TST_RC(rt_file_write_at(file, 0, NULL, 1, &done), RT_ERR_INVALID_POINTER);
    TST_RC(rt_file_get_size(file, NULL), RT_ERR_INVALID_POINTER);
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, 0);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_offset_overflow(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("overflow", path);
    char buf[16] = {0};
    size_t done = 0;
    uint64_t size = 1;

    TST_RC(rt_file_read_at(file, (uint64_t)INT64_MAX, buf, 2, &done), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_file_read_at(file, (uint64_t)INT64_MAX - 5, buf, 16, &done), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_file_read_at(file, UINT64_MAX, buf, 1, &done), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_file_read_at(file, UINT64_MAX - 2, buf, 16, &done), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_file_read_at(file, (uint64_t)INT64_MAX + 1, buf, 1, NULL), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_file_write_at(file, (uint64_t)INT64_MAX, buf, 1, &done), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_file_write_at(file, UINT64_MAX, buf, 1, NULL), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_file_write_at(file, UINT64_MAX - 2, buf, 16, NULL), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_file_write_at(file, (uint64_t)INT64_MAX - 5, buf, 16, NULL), RT_ERR_OUT_OF_RANGE);
    /* off + len == INT64_MAX is allowed: a read there finds end of file. */
    done = 99;
    TST_RC(rt_file_read_at(file, (uint64_t)INT64_MAX - 1, buf, 1, &done), RT_OK);
    CU_ASSERT_EQUAL(done, 0);
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, 0);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_wrong_direction(void)
{
    char path[PATH_SIZE];
    rt_file_t file = RT_FILE_NIL;
    char buf[8];
    size_t done = 0;

    path_for(path, "direction");
    seed_file(path, "abcdefgh", 8);

    TST_RC_FATAL(rt_file_open(&file, path, RT_FILE_READ | RT_FILE_OPEN, 0), RT_OK);
    TST_RC(rt_file_write_at(file, 0, "zz", 2, &done), RT_ERR_BAD_FILE);
    TST_RC(rt_file_write_at(file, 0, "zz", 2, NULL), RT_ERR_BAD_FILE);
    TST_RC(rt_file_set_size(file, 2), RT_ERR_BAD_FILE);
    TST_RC(rt_file_read_at(file, 0, buf, 8, NULL), RT_OK);
    CU_ASSERT_EQUAL(memcmp(buf, "abcdefgh", 8), 0);
    TST_RC(rt_file_close(file), RT_OK);
    CU_ASSERT_EQUAL(size_of_path(path), 8);

    TST_RC_FATAL(rt_file_open(&file, path, RT_FILE_WRITE | RT_FILE_OPEN, 0), RT_OK);
    TST_RC(rt_file_read_at(file, 0, buf, 8, &done), RT_ERR_BAD_FILE);
    TST_RC(rt_file_read_at(file, 0, buf, 8, NULL), RT_ERR_BAD_FILE);
    TST_RC(rt_file_write_at(file, 0, "AB", 2, NULL), RT_OK);
    TST_RC(rt_file_set_size(file, 4), RT_OK);
    TST_RC(rt_file_flush(file), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    CU_ASSERT_EQUAL(size_of_path(path), 4);
}

/* One handle, several threads, disjoint ranges: positioned I/O has no offset to race on. */
struct writer_arg {
    rt_file_t file;
    unsigned index;
    int rc;
};

#define WRITER_CHUNK (64 * 1024)
#define WRITERS      4

static void *writer_main(void *opaque)
{
    struct writer_arg *arg = opaque;
    unsigned char *buf = malloc(WRITER_CHUNK);
    if (buf == NULL) {
        arg->rc = RT_ERR_NO_MEMORY;
        return NULL;
    }
    fill_pattern(buf, WRITER_CHUNK, arg->index + 10);
    arg->rc = RT_OK;
    for (unsigned round = 0; round < 8 && arg->rc == RT_OK; round++) {
        uint64_t off = ((uint64_t)round * WRITERS + arg->index) * WRITER_CHUNK;
        arg->rc = rt_file_write_at(arg->file, off, buf, WRITER_CHUNK, NULL);
    }
    free(buf);
    return NULL;
}

static void test_threads_share_handle(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("threads", path);
    pthread_t threads[WRITERS];
    struct writer_arg args[WRITERS];
    unsigned char *want = malloc(WRITER_CHUNK), *got = malloc(WRITER_CHUNK);
    uint64_t size = 0;

    CU_ASSERT_FATAL(want != NULL && got != NULL);
    for (unsigned i = 0; i < WRITERS; i++) {
        args[i] = (struct writer_arg){.file = file, .index = i, .rc = -1000};
        CU_ASSERT_FATAL(pthread_create(&threads[i], NULL, writer_main, &args[i]) == 0);
    }
    for (unsigned i = 0; i < WRITERS; i++) {
        pthread_join(threads[i], NULL);
        TST_RC(args[i].rc, RT_OK);
    }
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, (uint64_t)8 * WRITERS * WRITER_CHUNK);
    for (unsigned round = 0; round < 8; round++)
        for (unsigned i = 0; i < WRITERS; i++) {
            fill_pattern(want, WRITER_CHUNK, i + 10);
            TST_RC(rt_file_read_at(file, ((uint64_t)round * WRITERS + i) * WRITER_CHUNK, got,
                                   WRITER_CHUNK, NULL),
                   RT_OK);
            CU_ASSERT_EQUAL(memcmp(want, got, WRITER_CHUNK), 0);
        }
    TST_RC(rt_file_close(file), RT_OK);
    free(want);
    free(got);
}

/* ---- size and flush ------------------------------------------------------------ */

static void test_set_size(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("set_size", path);
    unsigned char buf[10000];
    size_t done = 0;
    uint64_t size = 0;

    TST_RC(rt_file_write_at(file, 0, "abc", 3, NULL), RT_OK);

    /* Extend: the new part reads as zeros. */
    TST_RC(rt_file_set_size(file, sizeof buf), RT_OK);
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, sizeof buf);
    CU_ASSERT_EQUAL(size_of_path(path), (off_t)sizeof buf);
    memset(buf, 0xee, sizeof buf);
    TST_RC(rt_file_read_at(file, 0, buf, sizeof buf, &done), RT_OK);
    CU_ASSERT_EQUAL(done, sizeof buf);
    CU_ASSERT_EQUAL(memcmp(buf, "abc", 3), 0);
    CU_ASSERT_TRUE(all_zero(buf + 3, sizeof buf - 3));

    /* Truncate. */
    TST_RC(rt_file_set_size(file, 2), RT_OK);
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, 2);
    done = 0;
    TST_RC(rt_file_read_at(file, 0, buf, sizeof buf, &done), RT_OK);
    CU_ASSERT_EQUAL(done, 2);
    CU_ASSERT_EQUAL(memcmp(buf, "ab", 2), 0);

    /* Truncate-then-extend zeroes what was cut off. */
    TST_RC(rt_file_set_size(file, 3), RT_OK);
    TST_RC(rt_file_read_at(file, 0, buf, 3, NULL), RT_OK);
    CU_ASSERT_EQUAL(buf[2], 0);

    TST_RC(rt_file_set_size(file, 0), RT_OK);
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, 0);

    /* Above INT64_MAX. */
    TST_RC(rt_file_set_size(file, (uint64_t)INT64_MAX + 1), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_file_set_size(file, UINT64_MAX), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, 0);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_flush(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("flush", path);
    TST_RC(rt_file_flush(file), RT_OK);
    TST_RC(rt_file_write_at(file, 0, "data", 4, NULL), RT_OK);
    TST_RC(rt_file_flush(file), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    CU_ASSERT_EQUAL(size_of_path(path), 4);
}

/* ---- handles ------------------------------------------------------------------- */

static void test_to_native(void)
{
    char path[PATH_SIZE], path2[PATH_SIZE];
    rt_file_t a = open_fresh("native_a", path), b = open_fresh("native_b", path2);
    intptr_t fa = rt_file_to_native(a), fb = rt_file_to_native(b);
    struct stat st_fd, st_path;

    CU_ASSERT_EQUAL(rt_file_to_native(RT_FILE_NIL), -1);
    CU_ASSERT_TRUE(fa >= 0);
    CU_ASSERT_TRUE(fb >= 0);
    CU_ASSERT_NOT_EQUAL(fa, fb);
    /* It is the descriptor of that very file. */
    CU_ASSERT(fstat((int)fa, &st_fd) == 0 && stat(path, &st_path) == 0 &&
              st_fd.st_ino == st_path.st_ino && st_fd.st_dev == st_path.st_dev);
    /* Writes through the library show through the descriptor. */
    TST_RC(rt_file_write_at(a, 0, "seen", 4, NULL), RT_OK);
    CU_ASSERT(fstat((int)fa, &st_fd) == 0 && st_fd.st_size == 4);
    TST_RC(rt_file_close(a), RT_OK);
    TST_RC(rt_file_close(b), RT_OK);
    CU_ASSERT_FALSE(fd_is_open((int)fa));
    CU_ASSERT_FALSE(fd_is_open((int)fb));
}

/* Every call on @a file answers @a want (close too unless it is NIL). */
static void check_unusable(rt_file_t file, int want_close)
{
    char buf[8] = {0};
    size_t done = 5;
    uint64_t size = 5;
    TST_RC(rt_file_read_at(file, 0, buf, sizeof buf, &done), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_file_read_at(file, 0, buf, sizeof buf, NULL), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_file_write_at(file, 0, buf, sizeof buf, &done), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_file_write_at(file, 0, buf, sizeof buf, NULL), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_file_flush(file), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_file_get_size(file, &size), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_file_set_size(file, 0), RT_ERR_INVALID_HANDLE);
    CU_ASSERT_EQUAL(rt_file_to_native(file), -1);
    TST_RC(rt_file_close(file), want_close);
}

static void test_nil_handle(void)
{
    check_unusable(RT_FILE_NIL, RT_OK);
    TST_RC(rt_file_close(RT_FILE_NIL), RT_OK);
}

static void test_closed_handle(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("closed", path);
    intptr_t fd = rt_file_to_native(file);
    TST_RC(rt_file_write_at(file, 0, "12345678", 8, NULL), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    CU_ASSERT_FALSE(fd_is_open((int)fd));
    /* No other handle is created in between, so the memory still holds a dead one. */
    check_unusable(file, RT_ERR_INVALID_HANDLE);
    CU_ASSERT_EQUAL(size_of_path(path), 8);
}

static void test_never_created_handle(void)
{
    /* Bigger than any sane struct rt_file, and aligned for it. */
    void *zeroed = calloc(1, 4096);
    void *foreign = malloc(4096);
    CU_ASSERT_FATAL(zeroed != NULL && foreign != NULL);
    memset(foreign, 0xa5, 4096);
    check_unusable((rt_file_t)zeroed, RT_ERR_INVALID_HANDLE);
    check_unusable((rt_file_t)foreign, RT_ERR_INVALID_HANDLE);
    CU_ASSERT_TRUE(all_zero(zeroed, 4096)); /* not written to either */
    free(zeroed);
    free(foreign);
}

/* ---- fault injection ----------------------------------------------------------- */

static void test_fault_short_reads(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("fault_short_read", path);
    unsigned char data[300], buf[400];
    size_t done = 0;
    int rc1, rc2, rc3, calls_full;

    fill_pattern(data, sizeof data, 4);
    TST_RC_FATAL(rt_file_write_at(file, 0, data, sizeof data, NULL), RT_OK);
    memset(buf, 0, sizeof buf);

    fault_begin();
    rt__posix_sys.pread = pread_one_byte;
    rc1 = rt_file_read_at(file, 0, buf, 200, NULL);
    calls_full = fake_calls;
    /* With done, across end of file: 100 bytes one at a time, then 0. */
    rc2 = rt_file_read_at(file, 200, buf + 200, 200, &done);
    /* Without done, across end of file. */
    rc3 = rt_file_read_at(file, 250, buf + 200, 100, NULL);
    fault_end();

    TST_RC(rc1, RT_OK);
    CU_ASSERT_TRUE(calls_full >= 200); /* the fake was really used */
    CU_ASSERT_EQUAL(memcmp(buf, data, 200), 0);
    TST_RC(rc2, RT_OK);
    CU_ASSERT_EQUAL(done, 100);
    TST_RC(rc3, RT_ERR_EOF);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_fault_short_writes(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("fault_short_write", path);
    unsigned char data[500], buf[500];
    size_t done = 0;
    int rc;

    fill_pattern(data, sizeof data, 5);
    fault_begin();
    rt__posix_sys.pwrite = pwrite_one_byte;
    rc = rt_file_write_at(file, 7, data, sizeof data, &done);
    fault_end();

    TST_RC(rc, RT_OK);
    CU_ASSERT_EQUAL(done, sizeof data);
    CU_ASSERT_TRUE(fake_calls >= (int)sizeof data);
    TST_RC(rt_file_read_at(file, 7, buf, sizeof buf, NULL), RT_OK);
    CU_ASSERT_EQUAL(memcmp(buf, data, sizeof data), 0);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_fault_eintr_retried(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("fault_eintr", path);
    char buf[6] = {0};
    int rc_write, rc_read, write_calls;

    fault_begin();
    rt__posix_sys.pwrite = pwrite_eintr_once;
    rc_write = rt_file_write_at(file, 0, "retry!", 6, NULL);
    write_calls = fake_calls;
    fake_calls = 0;
    rt__posix_sys_reset();
    rt__posix_sys.pread = pread_eintr_once;
    rc_read = rt_file_read_at(file, 0, buf, 6, NULL);
    fault_end();

    TST_RC(rc_write, RT_OK);
    CU_ASSERT_EQUAL(write_calls, 2);
    TST_RC(rc_read, RT_OK);
    CU_ASSERT_EQUAL(fake_calls, 2);
    CU_ASSERT_EQUAL(memcmp(buf, "retry!", 6), 0);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_fault_disk_full_after_partial_write(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("fault_enospc", path);
    unsigned char data[8192], buf[8192];
    size_t done = 0;
    int rc, rc_nodone, rc_dquot;

    fill_pattern(data, sizeof data, 6);
    fault_begin();
    rt__posix_sys.pwrite = pwrite_short_then_fail;
    fake_errno = ENOSPC;
    fake_budget = 3000;
    rc = rt_file_write_at(file, 0, data, sizeof data, &done);
    fake_budget = 0;
    rc_nodone = rt_file_write_at(file, 3000, data, sizeof data, NULL);
    fake_errno = EDQUOT;
    rc_dquot = rt_file_write_at(file, 3000, data, sizeof data, NULL);
    fault_end();

    TST_RC(rc, RT_ERR_DISK_FULL);
    CU_ASSERT_EQUAL(done, 3000);
    TST_RC(rc_nodone, RT_ERR_DISK_FULL);
    TST_RC(rc_dquot, RT_ERR_DISK_FULL);
    /* What reached the file before the failure is there. */
    CU_ASSERT_EQUAL(size_of_path(path), 3000);
    TST_RC(rt_file_read_at(file, 0, buf, 3000, NULL), RT_OK);
    CU_ASSERT_EQUAL(memcmp(buf, data, 3000), 0);
    TST_RC(rt_file_close(file), RT_OK);
}

static ssize_t pwrite_short_then_nothing(int fd, const void *buf, size_t len, off_t off)
{
    size_t n = len < fake_budget ? len : fake_budget;
    fake_calls++;
    fake_budget -= n;
    return n == 0 ? 0 : pwrite(fd, buf, n, off);
}

/* The threads backend (and linux-aio's helper threads) report a write the device
 * stops taking as the kernel backends do: RT_OK with the short count. */
static void test_fault_aio_write_no_progress(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("fault_aio_short", path);
    unsigned char data[8192];
    rt_aio_ctx_t ctx;
    rt_aio_req_t req, got[1];
    uint32_t n = 0;
    size_t done = 99;

    fill_pattern(data, sizeof data, 8);
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, 4, RT_AIO_CTX_F_BACKEND_THREADS), RT_OK);
    TST_RC_FATAL(rt_aio_req_create(&req), RT_OK);
    fault_begin();
    rt__posix_sys.pwrite = pwrite_short_then_nothing;
    fake_budget = 3000;
    TST_RC(rt_aio_req_prepare_write(req, file, 0, data, sizeof data, NULL), RT_OK);
    TST_RC(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    TST_RC(rt_aio_ctx_wait(ctx, 1, 10000, got, 1, &n), RT_OK);
    fault_end();
    CU_ASSERT_EQUAL(n, 1);
    TST_RC(rt_aio_req_get_rc(req, &done), RT_OK);
    CU_ASSERT_EQUAL(done, 3000);
    CU_ASSERT_TRUE(fake_calls >= 2); /* it asked again after the short write */
    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_fault_write_errors(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("fault_write", path);
    size_t done = 99;
    int rc_io, rc_fbig;

    fault_begin();
    rt__posix_sys.pwrite = pwrite_fail;
    fake_errno = EIO;
    rc_io = rt_file_write_at(file, 0, "abc", 3, &done);
    fake_errno = EFBIG;
    rc_fbig = rt_file_write_at(file, 0, "abc", 3, NULL);
    fault_end();

    TST_RC(rc_io, RT_ERR_IO);
    CU_ASSERT_EQUAL(done, 0);
    TST_RC(rc_fbig, RT_ERR_FILE_TOO_BIG);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_fault_read_eio(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("fault_read", path);
    char buf[4];
    size_t done = 0;
    int rc_done, rc_nodone;

    TST_RC(rt_file_write_at(file, 0, "abcd", 4, NULL), RT_OK);
    fault_begin();
    rt__posix_sys.pread = pread_fail;
    fake_errno = EIO;
    rc_done = rt_file_read_at(file, 0, buf, 4, &done);
    rc_nodone = rt_file_read_at(file, 0, buf, 4, NULL);
    fault_end();

    TST_RC(rc_done, RT_ERR_IO);
    TST_RC(rc_nodone, RT_ERR_IO);
    CU_ASSERT_TRUE(fake_calls >= 2);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_fault_open_errors(void)
{
    static const struct {
        int errnum;
        int want;
    } cases[] = {
        {EMFILE, RT_ERR_TOO_MANY_OPEN_FILES}, {ENFILE, RT_ERR_TOO_MANY_OPEN_FILES},
        {EACCES, RT_ERR_ACCESS_DENIED},       {EROFS, RT_ERR_READ_ONLY_FS},
        {ENOMEM, RT_ERR_NO_MEMORY},           {EIO, RT_ERR_IO},
    };
    char path[PATH_SIZE];
    rt_file_t files[sizeof cases / sizeof cases[0]];
    int rcs[sizeof cases / sizeof cases[0]];
    int calls;

    path_for(path, "fault_open");
    fault_begin();
    rt__posix_sys.open = open_fail;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        files[i] = NOT_A_HANDLE;
        fake_errno = cases[i].errnum;
        rcs[i] = rt_file_open(&files[i], path, RT_FILE_READWRITE | RT_FILE_OPEN_CREATE, 0);
    }
    calls = fake_calls;
    fault_end();

    CU_ASSERT_TRUE(calls >= (int)(sizeof cases / sizeof cases[0]));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TST_RC(rcs[i], cases[i].want);
        CU_ASSERT_PTR_NULL(files[i]);
    }
    CU_ASSERT_FALSE(path_exists(path));
}

static void test_fault_fsync(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("fault_fsync", path);
    int rc_io, rc_nospc;

    fault_begin();
    rt__posix_sys.fsync = fsync_fail;
    fake_errno = EIO;
    rc_io = rt_file_flush(file);
    fake_errno = ENOSPC;
    rc_nospc = rt_file_flush(file);
    fault_end();

    TST_RC(rc_io, RT_ERR_IO);
    TST_RC(rc_nospc, RT_ERR_DISK_FULL);
    CU_ASSERT_EQUAL(fake_calls, 2);
    TST_RC(rt_file_flush(file), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_fault_size_calls(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("fault_size", path);
    uint64_t size = 0;
    int rc_get, rc_set, rc_fbig;

    fault_begin();
    fake_errno = EIO;
    rt__posix_sys.fstat = fstat_fail;
    rc_get = rt_file_get_size(file, &size);
    rt__posix_sys.ftruncate = ftruncate_fail;
    rc_set = rt_file_set_size(file, 100);
    fake_errno = EFBIG;
    rc_fbig = rt_file_set_size(file, 100);
    fault_end();

    TST_RC(rc_get, RT_ERR_IO);
    TST_RC(rc_set, RT_ERR_IO);
    TST_RC(rc_fbig, RT_ERR_FILE_TOO_BIG);
    CU_ASSERT_EQUAL(size_of_path(path), 0);
    TST_RC(rt_file_close(file), RT_OK);
}

static void test_fault_close_eio(void)
{
    char path[PATH_SIZE];
    rt_file_t file = open_fresh("fault_close", path);
    intptr_t fd = rt_file_to_native(file);
    int rc;

    fault_begin();
    rt__posix_sys.close = close_then_eio;
    rc = rt_file_close(file);
    fault_end();

    TST_RC(rc, RT_ERR_IO);
    CU_ASSERT_EQUAL(fake_calls, 1);
    CU_ASSERT_FALSE(fd_is_open((int)fd));
    /* Freed all the same. */
    CU_ASSERT_EQUAL(rt_file_to_native(file), -1);
    TST_RC(rt_file_close(file), RT_ERR_INVALID_HANDLE);
}

/* Out of memory for the handle: RT_ERR_NO_MEMORY, and the descriptor is not leaked.
 * Handle memory is recycled (handle_pool.h), so first hold more handles open than this
 * program ever had, leaving no free one to recycle. */
static void test_fault_no_memory(void)
{
    enum { HELD = 64 };
    char path[PATH_SIZE];
    rt_file_t held[HELD];
    rt_file_t file = NOT_A_HANDLE;
    int rc, nfds, alloc_calls;
    int fds[16];

    path_for(path, "fault_nomem_held");
    seed_file(path, "", 0);
    for (int i = 0; i < HELD; i++) {
        held[i] = RT_FILE_NIL;
        TST_RC_FATAL(rt_file_open(&held[i], path, RT_FILE_READ | RT_FILE_OPEN, 0), RT_OK);
    }

    path_for(path, "fault_nomem");
    fault_begin();
    rt__posix_sys.malloc = malloc_null;
    rt__posix_sys.calloc = calloc_null;
    rt__posix_sys.open = open_tracking;
    rc = rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_OPEN_CREATE, 0);
    alloc_calls = fake_calls - fake_nfds;
    nfds = fake_nfds;
    memcpy(fds, fake_fds, sizeof fds);
    fault_end();

    TST_RC(rc, RT_ERR_NO_MEMORY);
    CU_ASSERT_PTR_NULL(file);
    CU_ASSERT_TRUE(alloc_calls >= 1);
    for (int i = 0; i < nfds; i++)
        CU_ASSERT_FALSE(fd_is_open(fds[i]));
    if (rc == RT_OK)
        rt_file_close(file);

    for (int i = 0; i < HELD; i++)
        TST_RC(rt_file_close(held[i]), RT_OK);

    /* And with memory back, the same open works. */
    file = RT_FILE_NIL;
    TST_RC(rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_OPEN_CREATE, 0), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
}

/* A file system that refuses O_DIRECT: RT_ERR_NOT_SUPPORTED, the handle stays NIL and
 * no cached descriptor is left open in its place. */
static void test_fault_no_cache_refused(void)
{
    char path[PATH_SIZE];
    rt_file_t file = NOT_A_HANDLE;
    int rc, nfds, direct_opens;
    int fds[16];
    const char *text;

    path_for(path, "fault_nocache");
    seed_file(path, "x", 1);
    fault_begin();
    rt__posix_sys.open = open_refusing_direct;
    rc = rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_OPEN | RT_FILE_NO_CACHE, 0);
    nfds = fake_nfds;
    direct_opens = fake_direct_opens;
    memcpy(fds, fake_fds, sizeof fds);
    fault_end();

    TST_RC(rc, RT_ERR_NOT_SUPPORTED);
    CU_ASSERT_PTR_NULL(file);
    CU_ASSERT_TRUE(direct_opens >= 1);
    for (int i = 0; i < nfds; i++)
        CU_ASSERT_FALSE(fd_is_open(fds[i]));
    if (rc == RT_OK)
        rt_file_close(file);
    text = rt_strerror(RT_ERR_NOT_SUPPORTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "O_DIRECT"));

    /* A plain EINVAL without O_DIRECT in play stays an invalid parameter. */
    fault_begin();
    rt__posix_sys.open = open_fail;
    fake_errno = EINVAL;
    file = NOT_A_HANDLE;
    rc = rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_OPEN, 0);
    fault_end();
    TST_RC(rc, RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_PTR_NULL(file);
}

/* A refused O_DIRECT open leaves nothing behind: a file the call created is removed,
 * and a file that was there before is neither removed nor truncated. */
static void test_fault_no_cache_refused_leaves_nothing(void)
{
    static const uint32_t creating[] = {RT_FILE_CREATE, RT_FILE_OPEN_CREATE,
                                        RT_FILE_CREATE_REPLACE};
    char path[PATH_SIZE];
    struct stat st;
    rt_file_t file;

    path_for(path, "fault_nocache_new");
    for (size_t i = 0; i < sizeof creating / sizeof creating[0]; i++) {
        unlink(path);
        fault_begin();
        rt__posix_sys.open = open_creating_then_refusing_direct;
        file = NOT_A_HANDLE;
        TST_RC(rt_file_open(&file, path, RT_FILE_READWRITE | creating[i] | RT_FILE_NO_CACHE, 0),
               RT_ERR_NOT_SUPPORTED);
        CU_ASSERT_TRUE(fake_direct_opens >= 1);
        fault_end();
        CU_ASSERT_PTR_NULL(file);
        CU_ASSERT_EQUAL(stat(path, &st), -1); /* the new file is gone again */
    }

    path_for(path, "fault_nocache_old");
    for (size_t i = 1; i < sizeof creating / sizeof creating[0]; i++) {
        seed_file(path, "keep", 4);
        fault_begin();
        rt__posix_sys.open = open_creating_then_refusing_direct;
        file = NOT_A_HANDLE;
        TST_RC(rt_file_open(&file, path, RT_FILE_READWRITE | creating[i] | RT_FILE_NO_CACHE, 0),
               RT_ERR_NOT_SUPPORTED);
        fault_end();
        CU_ASSERT_PTR_NULL(file);
        CU_ASSERT_EQUAL_FATAL(stat(path, &st), 0);
        CU_ASSERT_EQUAL(st.st_size, 4); /* not truncated by CREATE_REPLACE */
    }
}

int main(void)
{
    CU_pSuite open_suite = tst_suite("open");
    CU_pSuite io = tst_suite("read and write");
    CU_pSuite size = tst_suite("size and flush");
    CU_pSuite handles = tst_suite("handles");
    CU_pSuite faults = tst_suite("fault injection");

    TST_ADD(open_suite, test_open_missing_file);
    TST_ADD(open_suite, test_open_existing);
    TST_ADD(open_suite, test_create_new_and_existing);
    TST_ADD(open_suite, test_open_create_both_ways);
    TST_ADD(open_suite, test_create_replace);
    TST_ADD(open_suite, test_access_modes_and_cloexec);
    TST_ADD(open_suite, test_write_through_sets_dsync);
    TST_ADD(open_suite, test_async_io_hint_accepted);
    TST_ADD(open_suite, test_no_cache_scratch_dir);
    TST_ADD(open_suite, test_no_cache_dev_shm);
    TST_ADD(open_suite, test_no_cache_misaligned);
    TST_ADD(open_suite, test_create_mode);
    TST_ADD(open_suite, test_open_bad_flags);
    TST_ADD(open_suite, test_open_mode_limit_accepted);
    TST_ADD(open_suite, test_open_bad_pointers);
    TST_ADD(open_suite, test_open_os_errors);

    TST_ADD(io, test_round_trip);
    TST_ADD(io, test_write_past_end_leaves_hole);
    TST_ADD(io, test_read_past_eof);
    TST_ADD(io, test_zero_length);
    TST_ADD(io, test_null_buffers);
    TST_ADD(io, test_offset_overflow);
    TST_ADD(io, test_wrong_direction);
    TST_ADD(io, test_threads_share_handle);

    TST_ADD(size, test_set_size);
    TST_ADD(size, test_flush);

    TST_ADD(handles, test_to_native);
    TST_ADD(handles, test_nil_handle);
    TST_ADD(handles, test_closed_handle);
    TST_ADD(handles, test_never_created_handle);

    TST_ADD(faults, test_fault_short_reads);
    TST_ADD(faults, test_fault_short_writes);
    TST_ADD(faults, test_fault_eintr_retried);
    TST_ADD(faults, test_fault_disk_full_after_partial_write);
    TST_ADD(faults, test_fault_aio_write_no_progress);
    TST_ADD(faults, test_fault_write_errors);
    TST_ADD(faults, test_fault_read_eio);
    TST_ADD(faults, test_fault_open_errors);
    TST_ADD(faults, test_fault_fsync);
    TST_ADD(faults, test_fault_size_calls);
    TST_ADD(faults, test_fault_close_eio);
    TST_ADD(faults, test_fault_no_memory);
    TST_ADD(faults, test_fault_no_cache_refused);
    TST_ADD(faults, test_fault_no_cache_refused_leaves_nothing);

    return tst_run();
}
