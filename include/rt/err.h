/*
 * Status codes of the vrt runtime.
 *
 * Every fallible function returns an int status: RT_OK (0) on success, a negative
 * RT_ERR_* code on failure.  The codes, their values and their texts come from one
 * table, RT_STATUS_MAP, so the enum and rt_strerror() can never drift apart.
 */
#ifndef RT_ERR_H
#define RT_ERR_H

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, value, "text") for every status code.  Values are part of the ABI: append
 * new codes at the end with a fresh value, never renumber. */
#define RT_STATUS_MAP(X)                                                                           \
    X(RT_OK, 0, "success")                                                                         \
    X(RT_ERR_GENERAL_FAILURE, -1, "unexpected failure")                                            \
    X(RT_ERR_INVALID_PARAMETER, -2, "invalid parameter")                                           \
    X(RT_ERR_INVALID_POINTER, -3, "required pointer is NULL")                                      \
    X(RT_ERR_INVALID_HANDLE, -4, "invalid handle (NIL, never created, or already freed)")          \
    X(RT_ERR_OUT_OF_RANGE, -5, "count or offset out of range")                                     \
    X(RT_ERR_NO_MEMORY, -6, "out of memory")                                                       \
    X(RT_ERR_NOT_SUPPORTED, -7,                                                                    \
      "not supported by this platform, backend or file system "                                    \
      "(e.g. the file system refuses O_DIRECT for RT_FILE_NO_CACHE)")                              \
    X(RT_ERR_TIMEOUT, -8, "timed out")                                                             \
    X(RT_ERR_INTERRUPTED, -9,                                                                      \
      "interrupted (a wait ended by rt_aio_ctx_wakeup, or an interrupted call)")                   \
    X(RT_ERR_TRY_AGAIN, -10, "resource temporarily unavailable, try again")                        \
    X(RT_ERR_FILE_NOT_FOUND, -11, "file or directory not found")                                   \
    X(RT_ERR_ALREADY_EXISTS, -12, "file already exists")                                           \
    X(RT_ERR_ACCESS_DENIED, -13, "access denied")                                                  \
    X(RT_ERR_IO, -14, "input/output error")                                                        \
    X(RT_ERR_DISK_FULL, -15, "no space left on device or quota exceeded")                          \
    X(RT_ERR_AIO_IN_PROGRESS, -16, "asynchronous request is submitted and not yet completed")      \
    X(RT_ERR_AIO_NOT_SUBMITTED, -17, "asynchronous request is not in the submitted state")         \
    X(RT_ERR_AIO_BUSY, -18,                                                                        \
      "AIO context busy (requests outstanding, or another thread is waiting)")                     \
    X(RT_ERR_AIO_NO_REQUEST, -19, "nothing outstanding to wait for")                               \
    X(RT_ERR_AIO_CANCELED, -20, "asynchronous request was cancelled")                              \
    X(RT_ERR_AIO_INSUFFICIENT_RESOURCES, -21,                                                      \
      "submitting would exceed the AIO context's capacity; nothing was submitted")                 \
    X(RT_ERR_AIO_INSUFFICIENT_EVENTS, -22,                                                         \
      "the kernel refused the AIO event slots the context asked for "                              \
      "(raise /proc/sys/fs/aio-max-nr, or ask for fewer requests)")                                \
    X(RT_ERR_EOF, -23, "end of file reached before the full length was transferred")               \
    X(RT_ERR_IS_A_DIRECTORY, -24, "is a directory")                                                \
    X(RT_ERR_NOT_A_DIRECTORY, -25, "a path component is not a directory")                          \
    X(RT_ERR_TOO_MANY_OPEN_FILES, -26, "too many open files")                                      \
    X(RT_ERR_FILE_TOO_BIG, -27, "file too large")                                                  \
    X(RT_ERR_READ_ONLY_FS, -28, "read-only file system")                                           \
    X(RT_ERR_NAME_TOO_LONG, -29, "file name too long")                                             \
    X(RT_ERR_BAD_FILE, -30, "file descriptor not valid or not open for this direction")            \
    X(RT_ERR_BUSY, -31, "device or resource busy")                                                 \
    X(RT_ERR_NOT_PERMITTED, -32, "operation not permitted")                                        \
    X(RT_ERR_VD_UNKNOWN_FORMAT, -33, "not a disk image of any format this library knows")          \
    X(RT_ERR_VD_CORRUPT, -34, "disk image is malformed or corrupt")                                \
    X(RT_ERR_VD_READ_ONLY, -35, "disk image is open read-only")                                    \
    X(RT_ERR_VD_LOCKED, -36, "disk image is locked by another user of it")

/** The status codes. */
enum rt_status {
#define RT_STATUS_ENUM_(name, value, text) name = (value),
    RT_STATUS_MAP(RT_STATUS_ENUM_)
#undef RT_STATUS_ENUM_
};

/** True when @a rc is RT_OK or another non-negative (informational) status. */
#define RT_SUCCESS(rc) ((rc) >= 0)
/** True when @a rc is a failure status. */
#define RT_FAILURE(rc) ((rc) < 0)

/**
 * A stable, human-readable text for a status code.
 *
 * @param rc  any int; codes outside the table get the text "unknown status code".
 * @return a static string, never NULL.  Thread-safe.
 */
const char *rt_strerror(int rc);

/**
 * The name of a status code as written in this header ("RT_ERR_TIMEOUT").
 *
 * @param rc  any int; codes outside the table get "RT_ERR_UNKNOWN".
 * @return a static string, never NULL.  Thread-safe.
 */
const char *rt_status_name(int rc);

/**
 * Translates an errno value into a status code.
 *
 * @param errnum  an errno value (positive).  0 gives RT_OK; a negative value is taken
 *                as its absolute value, so raw-syscall results can be passed directly.
 * @return the matching RT_ERR_* code, or RT_ERR_GENERAL_FAILURE for an errno that has
 *         no better match.  Thread-safe.
 */
int rt_err_from_errno(int errnum);

#ifdef __cplusplus
}
#endif

#endif /* RT_ERR_H */
