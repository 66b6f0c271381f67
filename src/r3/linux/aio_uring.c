/*
 * The "io_uring" backend, on liburing.
 *
 * One ring per context.  Submitters may be any thread, and liburing's submission queue
 * has a single producer, so SQE preparation and io_uring_submit() run under sq_lock:
 * one io_uring_enter() per rt_aio_ctx_submit() call, three when the device is idle
 * (internal/early_start.h), more if the SQ fills.
 * The waiter reaps the CQ in user space (io_uring_peek_batch_cqe): no system call when
 * completions are already there.
 *
 *   submit ──sq_lock──► SQEs ──io_uring_enter──► kernel ──CQE──► reap()
 *            │ no free slot                                        │
 *            ▼                                                     ▼
 *         deferred list ◄──────── pump() after each reap ◄── short transfer:
 *                                                             resubmit the rest
 *
 * Sleeping: the waiter sleeps in io_uring_enter(GETEVENTS) itself, as fio does, so a
 * completion wakes it directly and the kernel posts the CQE on the way (one system
 * call).  The context's doorbell (wakeups, parked work, a canceller's postings) reaches
 * that sleep through the "doorbell watch": a poll on the doorbell's eventfd kept in the
 * ring, whose CQE (user_data WATCH_TAG) wakes the waiter.  It is one-shot: the reaper
 * that takes its CQE disarms it, and the waiter re-arms it before it sleeps again (the
 * bell rings rarely here, so the extra submit is rare).  Registering the eventfd with
 * the ring instead would make every CQE ring it, and the waiter then pays a poll(), a
 * restart after the completion's task work and a read() per sleep: about 5 us more at
 * depth 1, and 20 us more for buffered reads, whose completions take several rounds.
 * This needs IORING_FEAT_EXT_ARG (Linux 5.11) for a timeout without an SQE; the probe
 * refuses older kernels, which get the next backend.
 *
 * Slots: at most cq_entries - 1 requests are in the ring at once (one CQE is kept for
 * the doorbell watch), so the CQ can never overflow; what does not fit waits on the
 * deferred list (an unlimited context asks for UNLIMITED_ENTRIES and relies on it).
 *
 * Short transfers: a buffered read can return less than asked short of end of file (a
 * page-cache boundary, a signal), and one SQE moves at most MAX_CHUNK.  The caller
 * expects a full transfer, so the rest is resubmitted from the reap path (vectored
 * requests advance their own copy of the iovec) and the request completes only when it
 * is all done, an error occurs, or a read returns 0 (end of file).
 *
 * Cancel: io_uring_register_sync_cancel() asks the kernel to cancel the request and
 * waits (at most 1 ms) for the verdict.  Success means the request will never touch
 * its buffer again, but its CQE (-ECANCELED) is still on its way, and rule 17 forbids
 * the waiter from finding it after the caller has reused the request.  So the canceller
 * takes cq_lock (the waiter reaps under it too) and reaps until it has that CQE; the
 * other CQEs it meets are finished and posted to the done list for the waiter.  The
 * kernel also reports success for a request that finished normally while it retried,
 * so the CQE's own result decides whether the request was really cancelled.
 *
 * Fixed buffers: rt_aio_ctx_register_buffers() maps regions into the ring once; a read
 * or write whose buffer lies inside one goes out as READ_FIXED/WRITE_FIXED, so the
 * kernel does not pin and unpin its pages per transfer (the table is sorted by address
 * and searched under sq_lock, where prep() runs).
 *
 * Single-thread contexts (RT_AIO_CTX_F_SINGLE_THREAD): the ring is set up with
 * SINGLE_ISSUER, DEFER_TASKRUN, COOP_TASKRUN and TASKRUN_FLAG (see single_thread_setups).
 * The kernel then no longer interrupts the thread for each completion; it keeps them
 * until the thread enters io_uring with GETEVENTS, and flags IORING_SQ_TASKRUN
 * meanwhile.  So: every submit also fetches (submit_sq), the spinning waiter watches the
 * flag (has_completions) and fetches when the CQ is empty (reap), and the sleep fetches
 * as it wakes.
 *
 * A reap hands back what one look at the CQ finds, not all the kernel holds: a fetch
 * posts at most about 20 completions, and handing those back before fetching the rest
 * lets the caller resubmit them while the others are still on their way.  The device's
 * work then runs in staggered groups (about 14 requests per wait at depth 32, against
 * 29 when reap() fetched until nothing was left), as fio's loop does, which kept the
 * device busier: about 3% more IOPS at depth 32 for the same CPU (doc/design.md).
 *
 * Any other context uses none of these: SINGLE_ISSUER and DEFER_TASKRUN require every
 * submission (and the reaping) to come from one thread, and COOP_TASKRUN lets
 * completion work wait until the submitting thread next enters the kernel; in a
 * hypervisor that thread may be running guest code for a long time, so a completion
 * could stall while another thread waits.
 */
#include <config.h>

#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include <rt/err.h>
#include <rt/time.h>

#include "internal/aio.h"
#include "internal/doorbell.h"
#include "internal/early_start.h"
#include "internal/req_queue.h"
#include "internal/sync.h"

/* SQ entries an unlimited context asks for (the CQ gets twice as many). */
#define UNLIMITED_ENTRIES 1024u
/* The largest SQ a bounded context asks for; more requests wait on the deferred list. */
#define MAX_ENTRIES 4096u
/* Parked requests moved into the ring per io_uring_enter. */
#define PUMP_BATCH 64u
/* CQEs taken per peek. */
#define REAP_BATCH 64u
/* user_data of the doorbell watch's CQE: never a request's address. */
#define WATCH_TAG ((uint64_t)1)

struct uring {
    struct io_uring ring;
    rt__mutex_t sq_lock;      /* SQE preparation and io_uring_submit() */
    rt__mutex_t cq_lock;      /* reaping: the waiter, and a canceller swallowing a CQE */
    uint32_t slots;           /* requests the ring may hold: the CQ size */
    _Atomic uint32_t in_ring; /* under sq_lock to grow, any lock to shrink */
    atomic_bool sq_left;      /* a failed io_uring_submit() left SQEs for the pump */
    bool sync_cancel;         /* the kernel has IORING_REGISTER_SYNC_CANCEL */
    bool early_start;         /* internal/early_start.h allowed */
    /* Completions may wait in the kernel until this (the only) thread asks for them:
     * IORING_SQ_TASKRUN then says some are there (IORING_SETUP_TASKRUN_FLAG). */
    bool taskrun_flag;
    /* The doorbell watch is in the ring: set under sq_lock, cleared by the reaper that
     * takes its CQE (under cq_lock). */
    atomic_bool watch_armed;

    rt__mutex_t deferred_lock;
    struct rt__req_queue deferred;

    struct rt__doorbell *doorbell; /* the context's: rung when work is parked */

    /* Registered buffers, sorted by start; index i is the kernel's buffer i.  Under
     * sq_lock. */
    struct fixed_region {
        uintptr_t start, end;
        unsigned index;
    } *fixed;
    size_t n_fixed;
};

static struct uring *uring_of(struct rt_aio_ctx *ctx)
{
    return ctx->backend_data;
}

/* ------------------------------------------------------------------------------------
 * Setup
 */

static int uring_probe(void)
{
    static const int needed[] = {IORING_OP_READ,  IORING_OP_WRITE,    IORING_OP_READV,
                                 IORING_OP_WRITEV, IORING_OP_FSYNC,   IORING_OP_POLL_ADD};
    struct io_uring ring;
    struct io_uring_params params;
    struct io_uring_probe *probe;
    int rc = RT_OK;

    memset(&params, 0, sizeof params);
    if (io_uring_queue_init_params(2, &ring, &params) < 0)
        return RT_ERR_NOT_SUPPORTED; /* ENOSYS, EPERM (io_uring_disabled, seccomp), ... */
    probe = io_uring_get_probe_ring(&ring);
    if (probe == NULL || !(params.features & IORING_FEAT_EXT_ARG)) {
        rc = RT_ERR_NOT_SUPPORTED;
    } else {
        for (size_t i = 0; i < sizeof needed / sizeof needed[0]; i++) {
            if (!io_uring_opcode_supported(probe, needed[i]))
                rc = RT_ERR_NOT_SUPPORTED;
        }
    }
    if (probe != NULL)
        io_uring_free_probe(probe);
    io_uring_queue_exit(&ring);
    return rc;
}

static uint32_t round_up_pow2(uint32_t value)
{
    uint32_t pow2 = 1;
    while (pow2 < value)
        pow2 <<= 1;
    return pow2;
}

/* Does the kernel take a synchronous cancel?  Asking for a request that does not exist
 * answers ENOENT where it does, EINVAL where the opcode is unknown. */
static bool has_sync_cancel(struct io_uring *ring)
{
    struct io_uring_sync_cancel_reg reg;

    memset(&reg, 0, sizeof reg);
    reg.addr = 0;
    reg.fd = -1;
    reg.timeout.tv_sec = -1;
    reg.timeout.tv_nsec = -1;
    return io_uring_register_sync_cancel(ring, &reg) == -ENOENT;
}

/*
 * Ring setup flags, best first; each next entry drops what an older kernel refuses
 * (EINVAL).  SUBMIT_ALL (5.18): one bad SQE does not stop the rest of its batch (it
 * gets its own failed CQE either way).
 *
 * A context any thread may drive can use nothing else: without these flags the kernel
 * interrupts the submitting thread to post each completion, which is what lets another
 * thread be the waiter.  A RT_AIO_CTX_F_SINGLE_THREAD context can let completions wait
 * for that one thread instead:
 *   COOP_TASKRUN + TASKRUN_FLAG (5.19)  no interrupt; they are posted at the thread's
 *                                       next system call, and the SQ flags show
 *                                       IORING_SQ_TASKRUN meanwhile (has_completions()
 *                                       looks at it, reap() then asks for them);
 *   SINGLE_ISSUER (6.0)                 only the creating thread submits;
 *   DEFER_TASKRUN (6.1)                 they are posted only when it waits or asks.
 * fio's io_uring engine sets the same three by default.
 */
static const unsigned shared_setups[] = {IORING_SETUP_SUBMIT_ALL, 0};
static const unsigned single_thread_setups[] = {
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
        IORING_SETUP_SINGLE_ISSUER,
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_SUBMIT_ALL,
    0,
};

static int uring_init(struct rt_aio_ctx *ctx, uint32_t capacity)
{
    struct uring *uring = calloc(1, sizeof *uring);
    const unsigned *setups =
        (ctx->flags & RT_AIO_CTX_F_SINGLE_THREAD) ? single_thread_setups : shared_setups;
    struct io_uring_params params;
    uint32_t entries = capacity == RT_AIO_UNLIMITED_REQS ? UNLIMITED_ENTRIES
                       : capacity > MAX_ENTRIES          ? MAX_ENTRIES
                                                         : round_up_pow2(capacity);
    int ret;

    if (uring == NULL)
        return RT_ERR_NO_MEMORY;
    for (;;) {
        memset(&params, 0, sizeof params);
        params.flags = *setups;
        ret = io_uring_queue_init_params(entries, &uring->ring, &params);
        if (ret == -EINVAL && *setups != 0) {
            setups++; /* an older kernel: fewer flags */
            continue;
        }
        /* Kernels before 5.12 charge rings to RLIMIT_MEMLOCK: an unlimited context
         * settles for a smaller ring rather than failing (the rest is deferred). */
        if (ret == -ENOMEM && capacity == RT_AIO_UNLIMITED_REQS && entries > 1) {
            entries /= 2;
            continue;
        }
        break;
    }
    if (ret < 0) {
        free(uring);
        return ret == -ENOMEM ? RT_ERR_NO_MEMORY : rt_err_from_errno(-ret);
    }
    uring->slots = params.cq_entries - 1; /* one CQE kept for the doorbell watch */
    uring->doorbell = &ctx->doorbell;
    uring->sync_cancel = has_sync_cancel(&uring->ring);
    uring->taskrun_flag = (uring->ring.flags & IORING_SETUP_TASKRUN_FLAG) != 0;
    uring->early_start = rt__early_start_allowed();
    atomic_init(&uring->in_ring, 0);
    atomic_init(&uring->sq_left, false);
    atomic_init(&uring->watch_armed, false);
    rt__mutex_init(&uring->sq_lock);
    rt__mutex_init(&uring->cq_lock);
    rt__mutex_init(&uring->deferred_lock);
    rt__req_queue_init(&uring->deferred);
    ctx->backend_data = uring;
    return RT_OK;
}

static void uring_fini(struct rt_aio_ctx *ctx)
{
    struct uring *uring = uring_of(ctx);

    io_uring_queue_exit(&uring->ring);
    free(uring->fixed);
    rt__mutex_destroy(&uring->deferred_lock);
    rt__mutex_destroy(&uring->cq_lock);
    rt__mutex_destroy(&uring->sq_lock);
    free(uring);
    ctx->backend_data = NULL;
}

/* ------------------------------------------------------------------------------------
 * Submission
 */

/* The most one SQE moves: io_uring lengths are 32 bits and the kernel stops a single
 * transfer near 2 GiB anyway; a larger request goes round again for the rest. */
#define MAX_CHUNK (1u << 30)

/* The registered buffer holding all of [@a buf, @a buf + @a len), or -1.  sq_lock held. */
static int fixed_index(const struct uring *uring, const void *buf, size_t len)
{
    uintptr_t start = (uintptr_t)buf;
    size_t lo = 0, hi = uring->n_fixed;

    /* The last region starting at or before buf. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (uring->fixed[mid].start <= start)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    if (start >= uring->fixed[lo - 1].end || len > uring->fixed[lo - 1].end - start)
        return -1;
    return (int)uring->fixed[lo - 1].index;
}

/* Fills @a sqe for what is left of @a req (req->transferred bytes are done; for
 * vectored requests, req->iov has been advanced past them).  sq_lock held. */
static void prep(const struct uring *uring, struct io_uring_sqe *sqe, struct rt_aio_req *req)
{
    size_t done = req->transferred;
    size_t left = req->len - done;
    unsigned chunk = left > MAX_CHUNK ? MAX_CHUNK : (unsigned)left;
    uint64_t off = req->off + done;
    /* Vectored requests have no buf: arithmetic on NULL is undefined even for + 0. */
    char *buf = req->buf != NULL ? (char *)req->buf + done : NULL;
    int fixed = -1;

    if (uring->n_fixed > 0 && (req->op == RT__AIO_OP_READ || req->op == RT__AIO_OP_WRITE))
        fixed = fixed_index(uring, buf, chunk);
    switch (req->op) {
    case RT__AIO_OP_READ:
        if (fixed >= 0)
            io_uring_prep_read_fixed(sqe, req->fd, buf, chunk, off, fixed);
        else
            io_uring_prep_read(sqe, req->fd, buf, chunk, off);
        break;
    case RT__AIO_OP_WRITE:
        if (fixed >= 0)
            io_uring_prep_write_fixed(sqe, req->fd, buf, chunk, off, fixed);
        else
            io_uring_prep_write(sqe, req->fd, buf, chunk, off);
        break;
    case RT__AIO_OP_READV:
        io_uring_prep_readv(sqe, req->fd, (const struct iovec *)req->iov, req->iovcnt, off);
        break;
    case RT__AIO_OP_WRITEV:
        io_uring_prep_writev(sqe, req->fd, (const struct iovec *)req->iov, req->iovcnt, off);
        break;
    default: io_uring_prep_fsync(sqe, req->fd, 0); break;
    }
    if (req->req_flags & RT_AIO_REQ_F_DSYNC)
        sqe->rw_flags = RWF_DSYNC; /* each resubmitted remainder too */
    io_uring_sqe_set_data(sqe, req);
}

/* io_uring_submit(), which on a ring whose completions wait for this thread
 * (TASKRUN_FLAG) also fetches those, as fio's engine does: one system call for both,
 * and the wait that follows finds them in the CQ without one of its own. */
static int submit_sq(struct uring *uring)
{
    return uring->taskrun_flag ? io_uring_submit_and_get_events(&uring->ring)
                               : io_uring_submit(&uring->ring);
}

/* Hands prepared SQEs to the kernel.  EBUSY/EAGAIN leave them in the SQ: sq_left tells
 * the waiter's pump to try again.  sq_lock held. */
static void flush_sq(struct uring *uring)
{
    bool left;

    if (io_uring_sq_ready(&uring->ring) > 0)
        submit_sq(uring);
    left = io_uring_sq_ready(&uring->ring) > 0;
    atomic_store_explicit(&uring->sq_left, left, memory_order_relaxed);
    if (left)
        rt__doorbell_ring(uring->doorbell); /* nothing else may come to retry it */
}

/*
 * Puts requests into the ring while it has room; returns how many went in.  sq_lock
 * held.  Submits what it prepared: one io_uring_enter, three to start an idle device
 * early (internal/early_start.h), more if the SQ fills.
 */
static size_t fill_ring(struct uring *uring, struct rt_aio_req **reqs, size_t n)
{
    size_t done = 0;
    /* Where the next io_uring_enter goes before the end: after the first request of an
     * early start, else nowhere. */
    size_t cut = rt__early_start_wanted(uring->early_start,
                                        atomic_load_explicit(&uring->in_ring, memory_order_relaxed), n)
                     ? rt__early_start_part(0, n)
                     : n;

    while (done < n && atomic_load_explicit(&uring->in_ring, memory_order_relaxed) < uring->slots) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&uring->ring);
        if (sqe == NULL) {
            /* SQ full: hand what is there to the kernel and go on. */
            if (submit_sq(uring) <= 0)
                break;
            continue;
        }
        prep(uring, sqe, reqs[done++]);
        atomic_fetch_add_explicit(&uring->in_ring, 1, memory_order_release);
        if (done == cut && done < n) {
            submit_sq(uring);
            cut = done + rt__early_start_part(done, n - done);
        }
    }
    flush_sq(uring);
    return done;
}

/* Parks requests on the deferred list and rings the doorbell, since only the waiter
 * pumps the list and it may be asleep. */
static void park(struct uring *uring, struct rt_aio_req **reqs, size_t n)
{
    rt__mutex_lock(&uring->deferred_lock);
    rt__req_queue_push(&uring->deferred, reqs, n);
    rt__mutex_unlock(&uring->deferred_lock);
    rt__doorbell_ring(uring->doorbell);
}

static void uring_submit(struct rt_aio_ctx *ctx, struct rt_aio_req **reqs, size_t n)
{
    struct uring *uring = uring_of(ctx);
    size_t in = 0;

    rt__mutex_lock(&uring->sq_lock);
    /* Behind requests already parked, newer ones park too (keeps order, and the pump
     * only runs in the waiter). */
    if (rt__req_queue_count(&uring->deferred) == 0)
        in = fill_ring(uring, reqs, n);
    rt__mutex_unlock(&uring->sq_lock);
    if (in < n)
        park(uring, reqs + in, n - in);
}

/*
 * Moves parked requests into the ring, PUMP_BATCH at a time (one io_uring_enter per
 * batch, from fill_ring), and flushes SQEs a failed submit left behind.  The waiter
 * only.
 */
static void pump(struct uring *uring)
{
    struct rt_aio_req *batch[PUMP_BATCH];
    bool filled = false;

    if (rt__req_queue_count(&uring->deferred) == 0 &&
        !atomic_load_explicit(&uring->sq_left, memory_order_relaxed))
        return;
    rt__mutex_lock(&uring->sq_lock);
    rt__mutex_lock(&uring->deferred_lock);
    for (;;) {
        uint32_t in_ring = atomic_load_explicit(&uring->in_ring, memory_order_relaxed);
        size_t room = in_ring < uring->slots ? uring->slots - in_ring : 0;
        size_t count = 0, in;

        while (count < PUMP_BATCH && count < room &&
               (batch[count] = rt__req_queue_pop(&uring->deferred)) != NULL)
            count++;
        if (count == 0)
            break;
        in = fill_ring(uring, batch, count);
        filled = true;
        if (in < count) { /* the kernel refused: later */
            rt__req_queue_push(&uring->deferred, batch + in, count - in);
            break;
        }
    }
    rt__mutex_unlock(&uring->deferred_lock);
    if (!filled)
        flush_sq(uring); /* fill_ring flushes after each batch */
    rt__mutex_unlock(&uring->sq_lock);
}

/* ------------------------------------------------------------------------------------
 * Sleeping: the doorbell watch
 */

/* Puts the doorbell watch into the ring unless it is there.  sq_lock held.  A poll on
 * a bell that is already rung completes at once, which is what a sleeper wants. */
static void arm_watch(struct uring *uring)
{
    struct io_uring_sqe *sqe;

    if (atomic_load_explicit(&uring->watch_armed, memory_order_relaxed))
        return;
    sqe = io_uring_get_sqe(&uring->ring);
    if (sqe == NULL) { /* SQ full of leftovers: hand them over and try once more */
        submit_sq(uring);
        sqe = io_uring_get_sqe(&uring->ring);
        if (sqe == NULL)
            return; /* the sleep below is bounded: see uring_sleep() */
    }
    io_uring_prep_poll_add(sqe, uring->doorbell->read_fd, POLLIN);
    io_uring_sqe_set_data64(sqe, WATCH_TAG);
    atomic_store_explicit(&uring->watch_armed, true, memory_order_relaxed);
    flush_sq(uring);
}

/* arm_watch() for a caller without sq_lock. */
static void arm_watch_unlocked(struct uring *uring)
{
    rt__mutex_lock(&uring->sq_lock);
    arm_watch(uring);
    rt__mutex_unlock(&uring->sq_lock);
}

/* How long the waiter sleeps at most when the watch could not be put in the kernel (the
 * SQ is full or the kernel refused the submit): it then looks at the bell this often. */
#define UNWATCHED_SLEEP_NS 1000000u

static int uring_sleep(struct rt_aio_ctx *ctx, uint64_t deadline_ns)
{
    struct uring *uring = uring_of(ctx);
    struct io_uring_getevents_arg arg;
    struct __kernel_timespec ts;
    uint64_t now = rt_time_nano_ts();
    uint64_t until = deadline_ns;
    int ret;

    if (now >= deadline_ns)
        return RT_ERR_TIMEOUT;
    if (!atomic_load_explicit(&uring->watch_armed, memory_order_relaxed)) {
        arm_watch_unlocked(uring);
        /* Not armed, or armed but left in the SQ by a refused submit (only the pump
         * retries it, and only after this sleep): look again soon. */
        if ((!atomic_load_explicit(&uring->watch_armed, memory_order_relaxed) ||
             atomic_load_explicit(&uring->sq_left, memory_order_relaxed)) &&
            until - now > UNWATCHED_SLEEP_NS)
            until = now + UNWATCHED_SLEEP_NS;
    }
    memset(&arg, 0, sizeof arg);
    if (until != UINT64_MAX) {
        ts.tv_sec = (long long)((until - now) / 1000000000u);
        ts.tv_nsec = (long long)((until - now) % 1000000000u);
        arg.ts = (uint64_t)(uintptr_t)&ts;
    }
    /* No SQEs (submitters own the SQ), no CQ access: the CQ is the reaper's, under
     * cq_lock, and this sleep must not hold that lock (a canceller needs it). */
    ret = io_uring_enter2((unsigned)uring->ring.ring_fd, 0, 1,
                          IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, (sigset_t *)&arg,
                          sizeof arg);
    if (ret == -ETIME && deadline_ns != UINT64_MAX && rt_time_nano_ts() >= deadline_ns)
        return RT_ERR_TIMEOUT;
    return RT_OK; /* woken, a signal (EINTR), or the unwatched bound: look again */
}

/* ------------------------------------------------------------------------------------
 * Completion
 */

/* Whether @a req needs another round for the rest of its transfer (a flush has no
 * length; a zero-byte read is end of file). */
static bool wants_more(struct rt_aio_req *req, int32_t res)
{
    return req->op != RT__AIO_OP_FLUSH && res > 0 && req->transferred < req->len;
}

/* Moves a vectored request's iovec past @a bytes just transferred.  The array is the
 * request's own copy (prepare copied it), and the next prepare starts it afresh. */
static void advance_iov(struct rt_aio_req *req, size_t bytes)
{
    while (bytes > 0 && req->iovcnt > 0) {
        if (bytes < req->iov->len) {
            req->iov->base = (char *)req->iov->base + bytes;
            req->iov->len -= bytes;
            return;
        }
        bytes -= req->iov->len;
        req->iov++;
        req->iovcnt--;
    }
}

/*
 * Applies one completion (@a res) to its request.  Returns the request when it is
 * finished (its ring slot is then the caller's to give back), NULL when the rest of a
 * short transfer went back into the ring, or onto the deferred list when the ring had
 * no room (and the doorbell rings, so the waiter pumps it even if the caller is a
 * canceller).  The CQE must already be consumed: see reap_locked().
 */
static struct rt_aio_req *finish(struct uring *uring, struct rt_aio_req *req, int32_t res)
{
    size_t in;

    /* -ECANCELED or -EINTR here is the kernel stopping the request without a cancel of
     * ours succeeding: its submitting thread exited (io_uring cancels an exiting task's
     * queued work), or a cancel that reported failure reached it after all.  The
     * caller was told it runs to completion, so it goes round again (cancels that did
     * succeed are swallowed before this point). */
    if (res < 0 && res != -ECANCELED && res != -EINTR) {
        req->rc = rt_err_from_errno(-res);
        req->transferred = 0;
        return req;
    }
    if (res > 0)
        req->transferred += (size_t)res;
    if (res >= 0 && !wants_more(req, res)) {
        req->rc = RT_OK;
        return req;
    }
    if (res > 0 && (req->op == RT__AIO_OP_READV || req->op == RT__AIO_OP_WRITEV))
        advance_iov(req, (size_t)res);
    atomic_fetch_sub_explicit(&uring->in_ring, 1, memory_order_relaxed);
    rt__mutex_lock(&uring->sq_lock);
    in = fill_ring(uring, &req, 1);
    rt__mutex_unlock(&uring->sq_lock);
    if (in == 0)
        park(uring, &req, 1);
    return NULL;
}

struct completion {
    struct rt_aio_req *req;
    int32_t res;
};

/*
 * Takes up to @a max finished requests off the CQ: the first batch that holds any,
 * leaving the rest for the next reap (see the head comment: staggered groups keep the
 * device busier).  cq_lock held.  The CQEs are copied and the CQ advanced before any
 * request is finished and its slot given back: a slot freed first could let a
 * submitter put one more request in the ring while its CQE still occupies the CQ, and
 * the CQ could overflow.
 */
static size_t reap_locked(struct uring *uring, struct rt_aio_req **out, size_t max)
{
    struct io_uring_cqe *cqes[REAP_BATCH];
    struct completion done[REAP_BATCH];
    size_t count = 0;

    while (count == 0 && max > 0) {
        unsigned want = max < REAP_BATCH ? (unsigned)max : REAP_BATCH;
        unsigned got = io_uring_peek_batch_cqe(&uring->ring, cqes, want);

        if (got == 0)
            break;
        unsigned reqs = 0;

        for (unsigned i = 0; i < got; i++) {
            if (cqes[i]->user_data == WATCH_TAG) {
                atomic_store_explicit(&uring->watch_armed, false, memory_order_relaxed);
                continue; /* the bell rang: the front end looks at its queues anyway */
            }
            done[reqs].req = io_uring_cqe_get_data(cqes[i]);
            done[reqs++].res = cqes[i]->res;
        }
        io_uring_cq_advance(&uring->ring, got);
        /* Pairs with the release in fill_ring(): the submitter's writes to its requests
         * reach us through the kernel, which the memory model (and TSan) cannot see. */
        (void)atomic_load_explicit(&uring->in_ring, memory_order_acquire);
        for (unsigned i = 0; i < reqs; i++) {
            struct rt_aio_req *req = finish(uring, done[i].req, done[i].res);
            if (req != NULL) {
                out[count++] = req;
                atomic_fetch_sub_explicit(&uring->in_ring, 1, memory_order_release);
            }
        }
    }
    return count;
}

/* Whether completions wait in the kernel for this thread to ask (TASKRUN_FLAG rings). */
static bool taskrun_pending(struct uring *uring)
{
    return uring->taskrun_flag &&
           (__atomic_load_n(uring->ring.sq.kflags, __ATOMIC_RELAXED) & IORING_SQ_TASKRUN) != 0;
}

static size_t uring_reap(struct rt_aio_ctx *ctx, struct rt_aio_req **out, size_t max)
{
    struct uring *uring = uring_of(ctx);
    size_t count;

    /* Completions waiting in the kernel for this thread: fetch them when the CQ is
     * empty (liburing's peek fetches more as the CQ empties). */
    if (taskrun_pending(uring) && io_uring_cq_ready(&uring->ring) == 0)
        io_uring_get_events(&uring->ring); /* posts them to the CQ; no CQ access here */
    rt__mutex_lock(&uring->cq_lock);
    count = reap_locked(uring, out, max);
    rt__mutex_unlock(&uring->cq_lock);
    pump(uring);
    return count;
}

static bool uring_has_completions(struct rt_aio_ctx *ctx)
{
    struct uring *uring = uring_of(ctx);
    bool ready;

    rt__mutex_lock(&uring->cq_lock);
    ready = io_uring_cq_ready(&uring->ring) > 0;
    rt__mutex_unlock(&uring->cq_lock);
    return ready || taskrun_pending(uring) ||
           atomic_load_explicit(&uring->sq_left, memory_order_relaxed) ||
           (rt__req_queue_count(&uring->deferred) != 0 &&
            atomic_load_explicit(&uring->in_ring, memory_order_relaxed) < uring->slots);
}

/* ------------------------------------------------------------------------------------
 * Cancel
 */

/*
 * After the kernel's cancel said 0: reaps until @a target's CQE is found.  Other finished
 * requests go to the done list.  cq_lock held.
 *
 * The kernel also says 0 when the request was already running and finished normally
 * while it retried (io_sync_cancel() maps that to success), so the target's own result
 * decides: -ECANCELED (or -EINTR) means cancelled, and the CQE is swallowed; anything
 * else is a real outcome, which goes back to the waiter like any completion.
 *
 * @return whether the target was really cancelled.
 */
static bool swallow(struct rt_aio_ctx *ctx, struct uring *uring, struct rt_aio_req *target)
{
    bool took_watch = false;
    int cancelled = -1; /* not known yet */

    while (cancelled < 0) {
        struct io_uring_cqe *cqe = NULL;
        struct completion got;
        struct rt_aio_req *req;
        bool watch;

        /* The CQE is guaranteed; if it is not posted yet, wait for it in the kernel (no
         * SQE needed, unlike liburing's timeout variant). */
        if (io_uring_wait_cqe(&uring->ring, &cqe) < 0 || cqe == NULL)
            continue;
        watch = cqe->user_data == WATCH_TAG;
        got.req = io_uring_cqe_get_data(cqe);
        got.res = cqe->res;
        io_uring_cqe_seen(&uring->ring, cqe);
        if (watch) {
            atomic_store_explicit(&uring->watch_armed, false, memory_order_relaxed);
            took_watch = true;
            continue;
        }
        (void)atomic_load_explicit(&uring->in_ring, memory_order_acquire);
        if (got.req == target && (got.res == -ECANCELED || got.res == -EINTR)) {
            atomic_fetch_sub_explicit(&uring->in_ring, 1, memory_order_release);
            cancelled = 1;
            break;
        }
        req = finish(uring, got.req, got.res);
        if (req != NULL) {
            atomic_fetch_sub_explicit(&uring->in_ring, 1, memory_order_release);
            rt__aio_ctx_post_done(ctx, req);
        }
        if (got.req == target)
            cancelled = 0; /* it ran to completion (or went round again) after all */
    }
    /* The watch's CQE was meant for a waiter that may be asleep in the kernel and has
     * not seen it.  Only the waiter clears the bell, so it is still rung: a new watch
     * completes at once and wakes that waiter. */
    if (took_watch)
        arm_watch_unlocked(uring);
    return cancelled == 1;
}

/* How long a cancel waits for the kernel's verdict.  The waiter cannot reap meanwhile
 * (cq_lock), so this bounds how much a cancel can delay a wait; a request the kernel
 * cannot stop in that time completes normally (RT_ERR_AIO_IN_PROGRESS). */
#define CANCEL_TIMEOUT_NS 1000000

static int uring_cancel(struct rt_aio_ctx *ctx, struct rt_aio_req *req)
{
    struct uring *uring = uring_of(ctx);
    struct io_uring_sync_cancel_reg reg;
    bool cancelled = false;
    int ret;

    rt__mutex_lock(&uring->deferred_lock);
    ret = rt__req_queue_remove(&uring->deferred, req);
    rt__mutex_unlock(&uring->deferred_lock);
    if (ret)
        return RT_OK;
    if (!uring->sync_cancel)
        return RT_ERR_AIO_IN_PROGRESS;

    memset(&reg, 0, sizeof reg);
    reg.addr = (uint64_t)(uintptr_t)req;
    reg.fd = -1;
    reg.timeout.tv_sec = 0;
    reg.timeout.tv_nsec = CANCEL_TIMEOUT_NS;
    /* Under cq_lock, so the waiter cannot reap (and complete) the request between the
     * kernel's verdict and the swallow. */
    rt__mutex_lock(&uring->cq_lock);
    ret = io_uring_register_sync_cancel(&uring->ring, &reg);
    if (ret == 0)
        cancelled = swallow(ctx, uring, req);
    rt__mutex_unlock(&uring->cq_lock);
    return cancelled ? RT_OK : RT_ERR_AIO_IN_PROGRESS;
}

/* ------------------------------------------------------------------------------------
 * Registered buffers
 */

static int by_start(const void *a, const void *b)
{
    const struct fixed_region *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

static int uring_register_buffers(struct rt_aio_ctx *ctx, const rt_iovec_t *bufs, size_t count)
{
    struct uring *uring = uring_of(ctx);
    struct fixed_region *table = NULL;
    int rc = RT_OK, ret;

    if (count > 0) {
        table = calloc(count, sizeof *table);
        if (table == NULL)
            return RT_ERR_NO_MEMORY;
        for (size_t i = 0; i < count; i++) {
            table[i].start = (uintptr_t)bufs[i].base;
            table[i].end = table[i].start + bufs[i].len;
            table[i].index = (unsigned)i;
        }
        qsort(table, count, sizeof *table, by_start);
    }
    rt__mutex_lock(&uring->sq_lock);
    if (uring->n_fixed > 0) {
        io_uring_unregister_buffers(&uring->ring);
        free(uring->fixed);
        uring->fixed = NULL;
        uring->n_fixed = 0;
    }
    if (count > 0) {
        /* rt_iovec_t has struct iovec's layout (types.h). */
        ret = io_uring_register_buffers(&uring->ring, (const struct iovec *)bufs, (unsigned)count);
        if (ret < 0) {
            rc = ret == -ENOMEM  ? RT_ERR_NO_MEMORY
                 : ret == -EFAULT ? RT_ERR_INVALID_POINTER
                                  : rt_err_from_errno(-ret);
            free(table);
        } else {
            uring->fixed = table;
            uring->n_fixed = count;
        }
    }
    rt__mutex_unlock(&uring->sq_lock);
    return rc;
}

const struct rt__aio_backend rt__uring_backend = {
    .name = "io_uring",
    .flag = RT_AIO_CTX_F_BACKEND_IO_URING,
    .probe = uring_probe,
    .init = uring_init,
    .fini = uring_fini,
    .submit = uring_submit,
    .reap = uring_reap,
    .has_completions = uring_has_completions,
    .sleep = uring_sleep,
    .cancel = uring_cancel,
    .register_buffers = uring_register_buffers,
};
