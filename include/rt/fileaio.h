/*
 * Asynchronous file I/O.
 *
 * A context (rt_aio_ctx_t) is where requests are submitted and reaped.  A request
 * (rt_aio_req_t) is created once and reused: prepare it (read, write, readv, writev or
 * flush), submit it with others in one batch, then wait for completions and read each
 * one's status with rt_aio_req_get_rc().
 *
 *     rt_aio_req_t req;  rt_aio_req_create(&req);
 *     rt_aio_req_prepare_read(req, file, 0, buf, 4096, cookie);
 *     rt_aio_ctx_submit(ctx, &req, 1);
 *     rt_aio_ctx_wait(ctx, 1, RT_INDEFINITE_WAIT, &done, 1, &got);
 *     rt_aio_req_get_rc(done, &bytes);
 *
 * Request states:  fresh --prepare--> prepared --submit--> submitted --wait/cancel-->
 * completed --prepare--> prepared ...  See the contract (doc/fileaio.md) for every rule;
 * each function below lists what it returns.
 *
 * Threads: one thread waits on a context at a time.  Submit, cancel, wakeup and the
 * request getters may be called from any thread, concurrently with the waiter and with
 * each other; a context created with RT_AIO_CTX_F_SINGLE_THREAD takes submit, wait,
 * cancel and buffer registration from its creating thread only.  Preparing or
 * destroying a request that another thread is submitting at the same moment is the
 * caller's race.
 *
 * Backends: "linux-aio" (the kernel's io_submit interface), "io_uring" and "threads" (a
 * portable pool of worker threads).  A context takes the first backend whose probe
 * succeeds on this host, unless a RT_AIO_CTX_F_BACKEND_* flag or the environment
 * variable RT_AIO_BACKEND names one; see doc/design.md for the order.
 *
 * The thread pool (the threads backend, and linux-aio's buffered requests) reads three
 * more variables when a context is created: RT_AIO_THREADS, the most worker threads
 * (1..1024; default the context's capacity, at most 16); RT_AIO_POOL_QUEUE=locked,
 * which replaces the lock-free ring between submitters and workers with a mutex queue;
 * and RT_AIO_POOL_DOZE=off, which stops the threads backend's waiter from dozing (while
 * at least 4 requests wait for a worker, finished requests are left for a sleeping
 * waiter to find within about 1 ms or at the first completion with fewer queued,
 * instead of each waking it; see doc/design.md).  The last two are for benchmarking
 * one design against the other.  The kernel backends read RT_AIO_SUBMIT=whole, which
 * hands every submit to the kernel in one system call even when the device is idle (by
 * default such a submit starts with its first request alone, so the device starts
 * sooner; see doc/design.md), again for benchmarking.
 *
 * linux-aio and buffered files: the kernel only runs O_DIRECT reads and writes
 * asynchronously; for a file opened without RT_FILE_NO_CACHE, io_submit() would do the
 * whole transfer inside the submitting thread.  So the linux-aio backend hands reads and
 * writes of buffered files to a pool of worker threads (as the threads backend does) and
 * submit returns at once; their completions arrive through rt_aio_ctx_wait() like the
 * kernel's.  Flushes go to the kernel (IOCB_CMD_FSYNC) either way, or to the pool where
 * the kernel refuses that command.
 *
 * io_uring: cancel reaches into the kernel (IORING_REGISTER_SYNC_CANCEL), so a request
 * still waiting there (a read of an empty pipe, say) can be cancelled; one the device
 * already has completes normally.
 *
 * Alignment: on a RT_FILE_NO_CACHE file, buffers, offsets and lengths must be multiples
 * of rt_aio_limits_t.buffer_alignment.  A misaligned request is not refused by prepare
 * or submit (they cannot know the file system's rule); it completes with the kernel's
 * verdict, RT_ERR_INVALID_PARAMETER, and is returned by wait like any other.
 */
#ifndef RT_FILEAIO_H
#define RT_FILEAIO_H

#include <rt/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A capacity meaning "as many as needed". */
#define RT_AIO_UNLIMITED_REQS UINT32_MAX

/** What the host allows. */
typedef struct rt_aio_limits {
    /** How many requests this host can have in flight now, or RT_AIO_UNLIMITED_REQS. */
    uint32_t max_reqs_outstanding;
    /** The alignment every buffer, offset and length must have on RT_FILE_NO_CACHE
     *  files. */
    size_t buffer_alignment;
} rt_aio_limits_t;

/**
 * Reports the host's limits.
 *
 * On Linux, max_reqs_outstanding is what /proc/sys/fs/aio-max-nr still leaves free for
 * kernel AIO contexts (other backends are not bound by it, so a context asking for more
 * still succeeds on them); buffer_alignment is the page size, which every block device
 * and file system accepts.
 *
 * @retval RT_OK
 * @retval RT_ERR_INVALID_POINTER  @a limits is NULL.
 * Thread-safe.
 */
int rt_aio_get_limits(rt_aio_limits_t *limits);

/**
 * Creates a fresh request.
 *
 * @param req  receives the handle; RT_AIO_REQ_NIL on failure.
 * @retval RT_OK, RT_ERR_INVALID_POINTER, RT_ERR_NO_MEMORY.
 * Thread-safe.
 */
int rt_aio_req_create(rt_aio_req_t *req);

/**
 * Destroys a request that is not submitted.
 *
 * @param req  the handle; RT_AIO_REQ_NIL is accepted and does nothing.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE   not a live request.
 * @retval RT_ERR_AIO_IN_PROGRESS  the request is submitted; it is kept.
 */
int rt_aio_req_destroy(rt_aio_req_t req);

/**
 * Prepares a read of @a len bytes at @a off into @a buf.
 *
 * The request remembers the file's descriptor; keep the file open until the request
 * completes.
 *
 * @param req   a fresh, prepared or completed request.
 * @param file  a live file opened for reading.
 * @param user  any value, returned by rt_aio_req_get_user().
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE     @a req or @a file is NIL or not live.
 * @retval RT_ERR_INVALID_POINTER    @a buf is NULL.
 * @retval RT_ERR_INVALID_PARAMETER  @a len is 0.
 * @retval RT_ERR_OUT_OF_RANGE       @a off + @a len is past INT64_MAX.
 * @retval RT_ERR_AIO_IN_PROGRESS    @a req is submitted; nothing changed.
 * A failed prepare leaves the request as it was.
 */
int rt_aio_req_prepare_read(rt_aio_req_t req, rt_file_t file, uint64_t off, void *buf, size_t len,
                            void *user);

/** Prepares a write of @a len bytes from @a buf at @a off.  As rt_aio_req_prepare_read(). */
int rt_aio_req_prepare_write(rt_aio_req_t req, rt_file_t file, uint64_t off, const void *buf,
                             size_t len, void *user);

/**
 * Prepares a scatter read into @a iovcnt buffers, filled in order from @a off.
 *
 * The iovec array is copied into the request, so it may be freed or reused as soon as
 * prepare returns; the buffers it points to must stay valid until the request completes.
 *
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE, RT_ERR_AIO_IN_PROGRESS  as rt_aio_req_prepare_read().
 * @retval RT_ERR_INVALID_POINTER    @a iov is NULL, or an entry with a length has a NULL
 *                                   base.
 * @retval RT_ERR_INVALID_PARAMETER  @a iovcnt is 0 or above 1024 (IOV_MAX), or the total
 *                                   length is 0.
 * @retval RT_ERR_OUT_OF_RANGE       the total length overflows, or @a off + total is
 *                                   past INT64_MAX.
 * @retval RT_ERR_NO_MEMORY          more than 8 entries and no memory to copy them.
 */
int rt_aio_req_prepare_readv(rt_aio_req_t req, rt_file_t file, uint64_t off, const rt_iovec_t *iov,
                             unsigned iovcnt, void *user);

/** Prepares a gather write.  As rt_aio_req_prepare_readv(). */
int rt_aio_req_prepare_writev(rt_aio_req_t req, rt_file_t file, uint64_t off, const rt_iovec_t *iov,
                              unsigned iovcnt, void *user);

/**
 * Prepares a flush: when it completes with RT_OK, every write that completed before it
 * was submitted is durable (fsync).  It transfers 0 bytes.
 *
 * @retval RT_OK, RT_ERR_INVALID_HANDLE, RT_ERR_AIO_IN_PROGRESS.
 */
int rt_aio_req_prepare_flush(rt_aio_req_t req, rt_file_t file, void *user);

/* rt_aio_req_set_flags() flags */
/** The write is durable when it completes with RT_OK: its data and the file metadata
 *  needed to read it back, as if an fdatasync of the file followed it (a forced unit
 *  access).  RWF_DSYNC on io_uring and linux-aio; an fdatasync after the transfer on
 *  the thread pool. */
#define RT_AIO_REQ_F_DSYNC 0x1u

/**
 * Sets flags on a prepared request, for its next submission; every prepare clears
 * them.  Thread-safe for different requests.
 *
 * @param flags  RT_AIO_REQ_F_* bits; RT_AIO_REQ_F_DSYNC only on a write or writev.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE     @a req is not a live request.
 * @retval RT_ERR_AIO_IN_PROGRESS    it is submitted.
 * @retval RT_ERR_INVALID_PARAMETER  it is not prepared (fresh, or completed), an unknown
 *                                   flag, or DSYNC on a read or flush.
 */
int rt_aio_req_set_flags(rt_aio_req_t req, uint32_t flags);

/**
 * The user value given to the last successful prepare.
 *
 * @return the value, or NULL for an invalid handle or a fresh request.  Thread-safe.
 */
void *rt_aio_req_get_user(rt_aio_req_t req);

/**
 * Cancels a submitted request if that can be done for certain.
 *
 * @retval RT_OK                     the request will never touch its buffer again and
 *                                   never be returned by wait; it is completed with
 *                                   status RT_ERR_AIO_CANCELED and no longer counts as
 *                                   outstanding.
 * @retval RT_ERR_AIO_IN_PROGRESS    it could not be stopped (the kernel or a worker has
 *                                   it); it completes normally.
 * @retval RT_ERR_AIO_NOT_SUBMITTED  the request is not submitted.
 * @retval RT_ERR_INVALID_HANDLE     not a live request.
 * @retval RT_ERR_NOT_PERMITTED      its context was created RT_AIO_CTX_F_SINGLE_THREAD
 *                                   by another thread; nothing changed.
 * Any thread, concurrently with the waiter.  Kernel AIO cannot cancel file I/O, so on
 * linux-aio only requests still queued inside the library can be cancelled.
 */
int rt_aio_req_cancel(rt_aio_req_t req);

/**
 * The outcome of a request.
 *
 * @param transferred  receives the bytes transferred when the status is RT_OK; may be
 *                     NULL.  A read that reaches end of file completes RT_OK with the
 *                     short count (0 at or past the end); a write may complete RT_OK with
 *                     a short count when the device took only part of it; a flush
 *                     reports 0.
 * @return the request's status when completed (RT_OK, RT_ERR_AIO_CANCELED, or the
 *         failure of that one request: RT_ERR_IO, RT_ERR_DISK_FULL, RT_ERR_BAD_FILE,
 *         RT_ERR_INVALID_PARAMETER for a misaligned O_DIRECT transfer, ...).
 * @retval RT_ERR_AIO_IN_PROGRESS    submitted and not yet reaped by wait.
 * @retval RT_ERR_AIO_NOT_SUBMITTED  fresh or prepared.
 * @retval RT_ERR_INVALID_HANDLE     not a live request.
 * Any thread.  Once this returns anything but RT_ERR_AIO_IN_PROGRESS, the library no
 * longer touches the request.
 */
int rt_aio_req_get_rc(rt_aio_req_t req, size_t *transferred);

/* Context flags. */
/** rt_aio_ctx_wait() blocks even when nothing is outstanding. */
#define RT_AIO_CTX_F_WAIT_WITHOUT_PENDING 0x00000001u
/** Use the Linux kernel AIO backend, or fail with RT_ERR_NOT_SUPPORTED. */
#define RT_AIO_CTX_F_BACKEND_LINUX_AIO 0x00000010u
/** Use the io_uring backend, or fail with RT_ERR_NOT_SUPPORTED. */
#define RT_AIO_CTX_F_BACKEND_IO_URING 0x00000020u
/** Use the portable thread-pool backend. */
#define RT_AIO_CTX_F_BACKEND_THREADS 0x00000040u
/**
 * An extension to the contract: the caller promises that rt_aio_ctx_submit(),
 * rt_aio_ctx_wait(), rt_aio_req_cancel() and rt_aio_ctx_register_buffers() on this
 * context all come from the thread that created it, as in a hypervisor's I/O thread
 * or event loop.  Wakeup, the request getters and destroy stay open to any thread.
 * Every backend checks the promise: a call from another thread returns
 * RT_ERR_NOT_PERMITTED and changes nothing.
 *
 * io_uring uses it to let the kernel deliver completions where that thread already is,
 * instead of interrupting it for each one (IORING_SETUP_SINGLE_ISSUER, DEFER_TASKRUN
 * and COOP_TASKRUN, each dropped where the kernel does not know it).  linux-aio and
 * threads only check it.
 */
#define RT_AIO_CTX_F_SINGLE_THREAD 0x00000100u

/**
 * Creates a context that can have @a max_reqs requests outstanding at once.
 *
 * @param ctx       receives the handle; RT_AIO_CTX_NIL on failure.
 * @param max_reqs  the capacity, or RT_AIO_UNLIMITED_REQS: then the context queues
 *                  whatever the backend cannot take at once and never refuses a submit
 *                  for capacity.
 * @param flags     RT_AIO_CTX_F_*; at most one backend flag.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_POINTER           @a ctx is NULL.
 * @retval RT_ERR_INVALID_PARAMETER         @a max_reqs is 0, an unknown flag bit, or two
 *                                          backend flags.
 * @retval RT_ERR_NOT_SUPPORTED             the backend asked for (flag or RT_AIO_BACKEND)
 *                                          is not available on this host or build, or
 *                                          RT_AIO_BACKEND names no backend at all.
 * @retval RT_ERR_AIO_INSUFFICIENT_EVENTS   linux-aio: the kernel refused the event slots
 *                                          (io_setup EAGAIN: /proc/sys/fs/aio-max-nr).
 * @retval RT_ERR_NO_MEMORY, RT_ERR_TOO_MANY_OPEN_FILES, RT_ERR_GENERAL_FAILURE
 * Thread-safe.
 */
int rt_aio_ctx_create(rt_aio_ctx_t *ctx, uint32_t max_reqs, uint32_t flags);

/**
 * Destroys a context with nothing outstanding.
 *
 * @retval RT_OK                  also for RT_AIO_CTX_NIL.
 * @retval RT_ERR_INVALID_HANDLE  not a live context.
 * @retval RT_ERR_AIO_BUSY        requests are outstanding (submitted and not yet reaped
 *                                or cancelled), or a thread is waiting; it is kept.
 */
int rt_aio_ctx_destroy(rt_aio_ctx_t ctx);

/**
 * The capacity granted at creation: @a max_reqs, or RT_AIO_UNLIMITED_REQS.
 *
 * @return the capacity, or 0 for an invalid handle.  Thread-safe.
 */
uint32_t rt_aio_ctx_get_max_req_count(rt_aio_ctx_t ctx);

/**
 * Tells the context a file will be used with it.  Optional on every backend here: a
 * request may name any file.  Kept for API compatibility.
 *
 * @retval RT_OK, RT_ERR_INVALID_HANDLE (@a ctx or @a file not live).
 */
int rt_aio_ctx_associate_with_file(rt_aio_ctx_t ctx, rt_file_t file);

/** The most regions rt_aio_ctx_register_buffers() takes at once. */
#define RT_AIO_MAX_REGISTERED_BUFFERS 1024u
/** The largest region it takes (the io_uring limit). */
#define RT_AIO_MAX_REGISTERED_BUFFER_SIZE ((size_t)1 << 30)

/**
 * Registers memory that the context's requests will use as I/O buffers, so a backend
 * that can map it once skips mapping the pages on every request.  An extension to the
 * contract, and only a hint: requests may still use any memory; a read or write whose
 * buffer lies wholly inside one registered region takes the faster path.
 *
 * io_uring maps the regions as fixed buffers (IORING_OP_READ_FIXED/WRITE_FIXED), which
 * saves pinning the pages of every O_DIRECT transfer; linux-aio and threads accept the
 * call and change nothing.  The memory must stay allocated until the registration is
 * replaced or removed, or the context destroyed.  A new call replaces the previous
 * registration; @a count 0 removes it.
 *
 * @param bufs   @a count regions, each of 1 byte to RT_AIO_MAX_REGISTERED_BUFFER_SIZE;
 *               may be NULL when @a count is 0.
 * @param count  0 to RT_AIO_MAX_REGISTERED_BUFFERS.
 * @retval RT_OK
 * @retval RT_ERR_INVALID_HANDLE     @a ctx is not live.
 * @retval RT_ERR_INVALID_POINTER    @a bufs is NULL with @a count > 0, a region's base is
 *                                   NULL, or the kernel could not map a region (EFAULT).
 * @retval RT_ERR_INVALID_PARAMETER  @a count or a region's length is out of range.
 * @retval RT_ERR_AIO_BUSY           requests are outstanding; nothing changed.
 * @retval RT_ERR_NOT_PERMITTED      RT_AIO_CTX_F_SINGLE_THREAD and not the creating
 *                                   thread; nothing changed.
 * @retval RT_ERR_NO_MEMORY          the kernel could not pin the memory (older kernels
 *                                   charge it to RLIMIT_MEMLOCK); nothing is registered.
 * Thread-safe; a submit racing with it completes with either registration.
 */
int rt_aio_ctx_register_buffers(rt_aio_ctx_t ctx, const rt_iovec_t *bufs, size_t count);

/**
 * Submits @a n prepared requests.
 *
 * All or nothing for what can be checked up front: on any of the failures below no
 * request changes state.  A failure that belongs to one request (bad descriptor,
 * misaligned O_DIRECT buffer, I/O error) does not fail the call: that request completes
 * with the failure and is returned by wait like any other.
 *
 * @retval RT_OK                              every request is submitted.
 * @retval RT_ERR_INVALID_HANDLE              @a ctx, or an entry of @a reqs, is NIL or not
 *                                            live; or an entry was prepared on a file
 *                                            that has been closed since (even if its
 *                                            descriptor number was reused by another
 *                                            open: a request is bound to the open it
 *                                            was prepared on, not to the number).
 * @retval RT_ERR_INVALID_POINTER             @a reqs is NULL.
 * @retval RT_ERR_INVALID_PARAMETER           @a n is 0.
 * @retval RT_ERR_AIO_IN_PROGRESS             an entry is already submitted, or appears
 *                                            twice in @a reqs.
 * @retval RT_ERR_AIO_NOT_SUBMITTED           an entry is fresh or completed (not prepared).
 * @retval RT_ERR_AIO_INSUFFICIENT_RESOURCES  the outstanding count would exceed the
 *                                            capacity.
 * @retval RT_ERR_NOT_PERMITTED               RT_AIO_CTX_F_SINGLE_THREAD and not the
 *                                            creating thread; nothing changed.
 * Any thread, concurrently with the waiter.
 */
int rt_aio_ctx_submit(rt_aio_ctx_t ctx, rt_aio_req_t *reqs, size_t n);

/**
 * Waits for completed requests.
 *
 * Returns completed requests in reqs[0 .. *got), in any order, once at least
 * max(@a min, 1) are there; each returned request is completed (rt_aio_req_get_rc()
 * gives its status).  *got is set on every path.
 *
 * @param min         how many to wait for (0 behaves as 1).
 * @param timeout_ms  bound on the whole call; 0 does not block; RT_INDEFINITE_WAIT none.
 * @param reqs        receives up to @a n requests.
 * @param n           room in @a reqs.
 * @param got         receives how many were returned.
 * @retval RT_OK                    at least max(@a min, 1) returned.
 * @retval RT_ERR_TIMEOUT           the timeout ran out first; what was collected is
 *                                  returned all the same.
 * @retval RT_ERR_INTERRUPTED       rt_aio_ctx_wakeup() was called (during or before this
 *                                  wait); what was collected is returned.
 * @retval RT_ERR_AIO_NO_REQUEST    nothing outstanding and the context was not created
 *                                  with RT_AIO_CTX_F_WAIT_WITHOUT_PENDING: at entry, or
 *                                  later because every outstanding request was
 *                                  cancelled before any came back.  A pending wakeup
 *                                  takes precedence over this.
 * @retval RT_ERR_AIO_BUSY          another thread is already waiting on this context.
 * @retval RT_ERR_NOT_PERMITTED     RT_AIO_CTX_F_SINGLE_THREAD and not the creating
 *                                  thread.
 * @retval RT_ERR_INVALID_HANDLE, RT_ERR_INVALID_POINTER (@a reqs or @a got NULL),
 *         RT_ERR_INVALID_PARAMETER (@a n is 0), RT_ERR_OUT_OF_RANGE (@a min > @a n).
 * One thread at a time.
 *
 * Latency: with the threads backend, while at least 4 requests wait for a worker, a
 * sleeping waiter may learn of a finished request up to about 1 ms late (it dozes; see
 * RT_AIO_POOL_DOZE above).  The device has work queued all that time, unless those
 * queued requests were cancelled; the timeout, wakeups and every other rule are
 * unchanged.
 */
int rt_aio_ctx_wait(rt_aio_ctx_t ctx, size_t min, uint32_t timeout_ms, rt_aio_req_t *reqs, size_t n,
                    uint32_t *got);

/**
 * Makes the thread blocked in rt_aio_ctx_wait() return RT_ERR_INTERRUPTED.  With no
 * thread waiting, the next wait returns RT_ERR_INTERRUPTED without blocking.  Several
 * wakeups before a wait are one wakeup: each wakeup ends at most one wait.  Uses no
 * signals.
 *
 * @retval RT_OK, RT_ERR_INVALID_HANDLE.
 * Any thread, also on a RT_AIO_CTX_F_SINGLE_THREAD context.  Async-signal-safe (it
 * touches only lock-free atomics and write()s one descriptor, and keeps errno), so a
 * SIGINT handler may end the wait of the thread it interrupted; the context must not be
 * destroyed while a handler may still call it.
 */
int rt_aio_ctx_wakeup(rt_aio_ctx_t ctx);

/**
 * The backend a context runs on: "linux-aio", "io_uring" or "threads".
 *
 * @return a static string, or NULL for an invalid handle.  Thread-safe.
 */
const char *rt_aio_ctx_get_backend(rt_aio_ctx_t ctx);

#ifdef __cplusplus
}
#endif

#endif /* RT_FILEAIO_H */
