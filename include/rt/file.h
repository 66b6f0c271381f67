/*
 * Files: open, positioned read/write, flush, size.
 *
 * A file handle may be used from several threads at once: every call is positioned
 * (pread/pwrite style), so there is no shared file offset to race on.  Closing a handle
 * while another thread still uses it is the caller's bug; the library then answers
 * RT_ERR_INVALID_HANDLE where it can tell, but cannot promise it.
 */
#ifndef RT_FILE_H
#define RT_FILE_H

#include <rt/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Access mode: exactly one. */
#define RT_FILE_READ        0x00000001u
#define RT_FILE_WRITE       0x00000002u
#define RT_FILE_READWRITE   0x00000003u
#define RT_FILE_ACCESS_MASK 0x00000003u

/* Disposition: exactly one. */
#define RT_FILE_OPEN             0x00000010u /**< the file must exist */
#define RT_FILE_CREATE           0x00000020u /**< the file must not exist */
#define RT_FILE_OPEN_CREATE      0x00000030u /**< open it, creating it if missing */
#define RT_FILE_CREATE_REPLACE   0x00000040u /**< create it, truncating an existing one */
#define RT_FILE_DISPOSITION_MASK 0x00000070u

/* Hints: any combination. */
/** Bypass the page cache (O_DIRECT).  Buffers, offsets and lengths must then be aligned
 *  to rt_aio_limits_t.buffer_alignment. */
#define RT_FILE_NO_CACHE 0x00000100u
/** Every write is durable when it returns (O_DSYNC). */
#define RT_FILE_WRITE_THROUGH 0x00000200u
/** The file will be used with the AIO API (<rt/fileaio.h>).  Accepted everywhere; it
 *  changes nothing on POSIX hosts today. */
#define RT_FILE_ASYNC_IO 0x00000400u

/**
 * Opens or creates a file.
 *
 * The descriptor is close-on-exec.
 *
 * @param file   receives the handle; set to RT_FILE_NIL on failure.
 * @param path   the path.
 * @param flags  one access mode | one disposition | any hints.
 * @param mode   permission bits for a created file (0 means 0644); at most 07777.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_POINTER    @a file or @a path is NULL.
 * @retval RT_ERR_INVALID_PARAMETER  no or several access modes or dispositions, an
 *                                   unknown flag bit, @a mode above 07777, empty path,
 *                                   RT_FILE_CREATE_REPLACE without write access.
 * @retval RT_ERR_NOT_SUPPORTED      RT_FILE_NO_CACHE on a file system that refuses
 *                                   O_DIRECT, or on a host without it: the file is not
 *                                   opened cached instead, and a file this call created
 *                                   is removed again.
 * @retval RT_ERR_FILE_NOT_FOUND, RT_ERR_ALREADY_EXISTS, RT_ERR_ACCESS_DENIED,
 *         RT_ERR_IS_A_DIRECTORY, RT_ERR_NOT_A_DIRECTORY, RT_ERR_TOO_MANY_OPEN_FILES,
 *         RT_ERR_NAME_TOO_LONG, RT_ERR_READ_ONLY_FS, RT_ERR_NO_MEMORY, ...
 *                                   what the OS said (see rt_err_from_errno()).
 * Thread-safe.
 */
int rt_file_open(rt_file_t *file, const char *path, uint32_t flags, uint32_t mode);

/**
 * Closes a file and frees its handle.
 *
 * @param file  the handle; RT_FILE_NIL is accepted and does nothing.
 * @retval RT_OK                  also for RT_FILE_NIL.
 * @retval RT_ERR_INVALID_HANDLE  @a file is not a live file handle.
 * @retval RT_ERR_IO              close() reported a deferred write error; the handle is
 *                                freed all the same.
 * Requests still submitted on this file when it is closed complete with an error or with
 * their data, as the OS decides; close after they complete.
 */
int rt_file_close(rt_file_t file);

/**
 * Reads at an offset, looping over EINTR and short transfers.
 *
 * @param file  a live handle opened for reading.
 * @param off   the file offset; @a off + @a len must not exceed INT64_MAX.
 * @param buf   destination.
 * @param len   bytes to read; 0 reads nothing and returns RT_OK.
 * @param done  receives the bytes read, or NULL.  With @a done, reaching end of file
 *              early is RT_OK with the short count; without it, it is RT_ERR_EOF.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE, RT_ERR_INVALID_POINTER (@a buf NULL with @a len > 0),
 *         RT_ERR_OUT_OF_RANGE (offset overflow), RT_ERR_EOF (short read, @a done NULL),
 *         RT_ERR_BAD_FILE (not open for reading), RT_ERR_IO, RT_ERR_INVALID_PARAMETER
 *         (misaligned O_DIRECT transfer).
 * Thread-safe.
 */
int rt_file_read_at(rt_file_t file, uint64_t off, void *buf, size_t len, size_t *done);

/**
 * Writes at an offset, looping over EINTR and short transfers.
 *
 * @param done  receives the bytes written, or NULL.  A write stops early only on an
 *              error; the count then tells how much reached the file before it.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE, RT_ERR_INVALID_POINTER, RT_ERR_OUT_OF_RANGE,
 *         RT_ERR_BAD_FILE (not open for writing), RT_ERR_DISK_FULL, RT_ERR_FILE_TOO_BIG,
 *         RT_ERR_IO, RT_ERR_INVALID_PARAMETER (misaligned O_DIRECT transfer).
 * Thread-safe.
 */
int rt_file_write_at(rt_file_t file, uint64_t off, const void *buf, size_t len, size_t *done);

/**
 * Makes every completed write to the file durable (fsync).
 *
 * @retval RT_OK, RT_ERR_INVALID_HANDLE, RT_ERR_IO, RT_ERR_DISK_FULL.
 * Thread-safe.
 */
int rt_file_flush(rt_file_t file);

/**
 * Gets the size of the file in bytes.
 *
 * @retval RT_OK, RT_ERR_INVALID_HANDLE, RT_ERR_INVALID_POINTER (@a size NULL), RT_ERR_IO.
 * Thread-safe.
 */
int rt_file_get_size(rt_file_t file, uint64_t *size);

/**
 * Truncates or extends the file (extension reads back as zeros).
 *
 * @retval RT_OK, RT_ERR_INVALID_HANDLE, RT_ERR_OUT_OF_RANGE (@a size above INT64_MAX),
 *         RT_ERR_BAD_FILE (not open for writing), RT_ERR_FILE_TOO_BIG, RT_ERR_IO.
 * Thread-safe.
 */
int rt_file_set_size(rt_file_t file, uint64_t size);

/**
 * The native descriptor behind a handle: the fd on POSIX.  The handle keeps owning it.
 *
 * @return the fd, or -1 for RT_FILE_NIL or a handle that is not a live file.
 */
intptr_t rt_file_to_native(rt_file_t file);

#ifdef __cplusplus
}
#endif

#endif /* RT_FILE_H */
