/*
 * The "linux-aio" backend: the kernel's io_submit interface, driven by raw system
 * calls.
 *
 * How a request travels
 * ---------------------
 * A request embeds its iocb as its first member, so the caller's array of request
 * handles is passed to io_submit() as it is: no copy, no allocation.  Every iocb
 * carries IOCB_FLAG_RESFD with the context's doorbell eventfd, so a kernel completion
 * rings the same bell the front end's waiter sleeps on and that wakeups and software
 * completions ring.  The waiter reaps events straight from the completion ring the
 * kernel maps into our address space (one reader, so no lock), falling back to
 * io_getevents() where the ring's header is not the layout we know.
 *
 *   submit ──► io_submit(run of iocbs) ──► kernel ──► ring + eventfd ──► reap()
 *                │ EAGAIN / no free slot            │
 *                ▼                                  │
 *             deferred list ◄── pump() after each reap┘
 *                │ first iocb refused (EBADF, EINVAL, ...)
 *                ▼
 *             that request alone completes with the error (done list)
 *
 * io_submit() stops at the first iocb it cannot take and reports the error only if it
 * is the first of the batch; so a run is looped: count what went in, complete the
 * refused one with its error, go on with the rest.  A run that finds the device idle
 * goes in as three io_submit() calls, its first request alone (internal/early_start.h).
 *
 * Slots: the kernel gives a context a fixed number of event slots.  A bounded context
 * asks for exactly its capacity, and the front end never lets more be outstanding, so
 * the slots cannot run out.  An unlimited context asks for UNLIMITED_SLOTS (less if the
 * host refuses) and parks what does not fit on the deferred list; the waiter submits
 * it as completions free slots.  The deferred list is also where a batch goes when the
 * kernel says EAGAIN.
 *
 * Flushes: IOCB_CMD_FSYNC where the kernel takes it.  A kernel or file system that
 * refuses it (EINVAL on submit) makes that flush, and every later one on this context,
 * run as fsync() on a helper thread: a flush is never reported done without the data
 * being durable.
 *
 * Buffered files: the kernel runs reads and writes of a file opened without O_DIRECT
 * synchronously inside io_submit(), which would make every submit as slow as the I/O.
 * Those requests go to the same helper pool (sized like the threads backend) and their
 * completions arrive through the same wait as the kernel's.
 *
 * Cancel: the kernel cannot cancel file I/O (io_cancel answers EINVAL for it, and
 * even a successful io_cancel still posts the event), so only requests still on the
 * deferred list or queued for the helper can be cancelled.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <rt/err.h>
#include <rt/file.h>

#include "internal/aio.h"
#include "internal/doorbell.h"
#include "internal/early_start.h"
#include "internal/req_queue.h"
#include "internal/sync.h"
#include "internal/tpool.h"
#include "r3/linux/laio_sys.h"

_Static_assert(sizeof(struct laio_iocb) <= sizeof(union rt__aio_slot),
               "an iocb must fit in the request's kernel slot");

/* Event slots an unlimited context asks for; halved until the kernel agrees. */
#define UNLIMITED_SLOTS 1024u
/* Requests moved from the deferred list per io_submit() call. */
#define PUMP_BATCH 64u
/* The largest read or write given to the kernel in one iocb (see for_kernel). */
#define MAX_KERNEL_BYTES (1u << 30)
/* Events reaped per io_getevents() call when the ring cannot be read directly. */
#define GETEVENTS_BATCH 64u

struct laio {
    laio_context_t kernel_ctx;
    struct laio_ring *ring; /* NULL: reap with io_getevents() */
    uint32_t slots;         /* event slots the kernel granted */
    _Atomic uint32_t in_kernel;
    bool early_start; /* internal/early_start.h allowed */

    rt__mutex_t deferred_lock;
    struct rt__req_queue deferred;
    /* The waiter's last pump met EAGAIN with requests in flight: no pump can make
     * progress before one of them completes, so the waiter sleeps instead of retrying
     * io_submit() in a loop.  Written by the waiter only. */
    atomic_bool pump_stalled;

    atomic_bool fsync_refused;
    rt__mutex_t helper_lock;
    struct rt__tpool *helper;
};

static struct laio *laio_of(struct rt_aio_ctx *ctx)
{
    return ctx->backend_data;
}

static struct laio_iocb *iocb_of(struct rt_aio_req *req)
{
    return (struct laio_iocb *)req;
}

/* ------------------------------------------------------------------------------------
 * Setup
 */

static int laio_probe(void)
{
    laio_context_t kernel_ctx = 0;
    long ret = rt__laio_sys.io_setup(1, &kernel_ctx);
    if (ret < 0)
        return RT_ERR_NOT_SUPPORTED;
    rt__laio_sys.io_destroy(kernel_ctx);
    return RT_OK;
}

static int setup_status(long ret)
{
    switch (-ret) {
    case EAGAIN:
    case EINVAL: /* more events than the kernel will ever give one context */
        return RT_ERR_AIO_INSUFFICIENT_EVENTS;
    case ENOSYS:
    case EPERM: return RT_ERR_NOT_SUPPORTED;
    default: return rt_err_from_errno((int)-ret);
    }
}

/* Asks the kernel for event slots: exactly @a capacity for a bounded context; for an
 * unlimited one as many as it grants, starting from UNLIMITED_SLOTS. */
static int setup_kernel_ctx(struct laio *laio, uint32_t capacity)
{
    uint32_t wanted = capacity == RT_AIO_UNLIMITED_REQS ? UNLIMITED_SLOTS : capacity;
    long ret;

    for (;;) {
        laio->kernel_ctx = 0;
        ret = rt__laio_sys.io_setup(wanted, &laio->kernel_ctx);
        if (ret >= 0)
            break;
        if (capacity != RT_AIO_UNLIMITED_REQS || wanted == 1 || (ret != -EAGAIN && ret != -EINVAL))
            return setup_status(ret);
        wanted /= 2;
    }
    laio->slots = wanted;
    return RT_OK;
}

/* The completion ring, if it has the layout we know and reaps are not being faked. */
static struct laio_ring *usable_ring(laio_context_t kernel_ctx)
{
    struct laio_ring *ring = (struct laio_ring *)kernel_ctx;

    if (!rt__laio_sys_getevents_is_real() || ring == NULL)
        return NULL;
    if (ring->magic != LAIO_RING_MAGIC || ring->incompat_features != 0 ||
        ring->header_length != sizeof *ring)
        return NULL;
    return ring;
}

static int laio_init(struct rt_aio_ctx *ctx, uint32_t capacity)
{
    struct laio *laio = calloc(1, sizeof *laio);
    int rc;

    if (laio == NULL)
        return RT_ERR_NO_MEMORY;
    rc = setup_kernel_ctx(laio, capacity);
    if (rc != RT_OK) {
        free(laio);
        return rc;
    }
    laio->ring = usable_ring(laio->kernel_ctx);
    atomic_init(&laio->in_kernel, 0);
    laio->early_start = rt__early_start_allowed();
    rt__req_queue_init(&laio->deferred);
    atomic_init(&laio->fsync_refused, false);
    rt__mutex_init(&laio->deferred_lock);
    rt__mutex_init(&laio->helper_lock);
    ctx->backend_data = laio;
    return RT_OK;
}

static void laio_fini(struct rt_aio_ctx *ctx)
{
    struct laio *laio = laio_of(ctx);

    rt__laio_sys.io_destroy(laio->kernel_ctx);
    rt__tpool_destroy(laio->helper);
    rt__mutex_destroy(&laio->helper_lock);
    rt__mutex_destroy(&laio->deferred_lock);
    free(laio);
    ctx->backend_data = NULL;
}

/* ------------------------------------------------------------------------------------
 * Submission
 */

static void fill_iocb(struct rt_aio_ctx *ctx, struct rt_aio_req *req)
{
    static const uint16_t opcodes[] = {
        [RT__AIO_OP_READ] = LAIO_CMD_PREAD,   [RT__AIO_OP_WRITE] = LAIO_CMD_PWRITE,
        [RT__AIO_OP_READV] = LAIO_CMD_PREADV, [RT__AIO_OP_WRITEV] = LAIO_CMD_PWRITEV,
        [RT__AIO_OP_FLUSH] = LAIO_CMD_FSYNC,
    };
    struct laio_iocb *iocb = iocb_of(req);

    memset(iocb, 0, sizeof *iocb);
    iocb->aio_data = (uintptr_t)req;
    iocb->aio_lio_opcode = opcodes[req->op];
    iocb->aio_fildes = (uint32_t)req->fd;
    iocb->aio_flags = LAIO_FLAG_RESFD;
    iocb->aio_resfd = (uint32_t)ctx->doorbell.write_fd;
    switch (req->op) {
    case RT__AIO_OP_READ:
    case RT__AIO_OP_WRITE:
        iocb->aio_buf = (uintptr_t)req->buf;
        iocb->aio_nbytes = req->len;
        iocb->aio_offset = (int64_t)req->off;
        break;
    case RT__AIO_OP_READV:
    case RT__AIO_OP_WRITEV:
        iocb->aio_buf = (uintptr_t)req->iov;
        iocb->aio_nbytes = req->iovcnt;
        iocb->aio_offset = (int64_t)req->off;
        break;
    default: /* flush: no buffer, no offset */ break;
    }
    if (req->req_flags & RT_AIO_REQ_F_DSYNC)
        iocb->aio_rw_flags = LAIO_RWF_DSYNC;
}

/* Takes up to @a wanted free kernel slots; returns how many it took. */
static uint32_t take_slots(struct laio *laio, size_t wanted)
{
    uint32_t used = atomic_load_explicit(&laio->in_kernel, memory_order_relaxed);
    uint32_t taking;

    do {
        uint32_t free_slots = used < laio->slots ? laio->slots - used : 0;
        taking = wanted < free_slots ? (uint32_t)wanted : free_slots;
        if (taking == 0)
            return 0;
    } while (!atomic_compare_exchange_weak_explicit(&laio->in_kernel, &used, used + taking,
                                                    memory_order_acq_rel, memory_order_relaxed));
    return taking;
}

static void give_back_slots(struct laio *laio, uint32_t count)
{
    if (count > 0)
        atomic_fetch_sub_explicit(&laio->in_kernel, count, memory_order_acq_rel);
}

/* Parks requests on the deferred list and rings the doorbell: only the waiter pumps
 * the list, and it may have gone to sleep after the last completion, so every park
 * must tell it (from the waiter itself the ring costs one spurious look). */
static void defer(struct rt_aio_ctx *ctx, struct rt_aio_req **reqs, size_t n)
{
    struct laio *laio = laio_of(ctx);

    rt__mutex_lock(&laio->deferred_lock);
    rt__req_queue_push(&laio->deferred, reqs, n);
    rt__mutex_unlock(&laio->deferred_lock);
    rt__doorbell_ring(&ctx->doorbell);
}

static void fail_request(struct rt_aio_ctx *ctx, struct rt_aio_req *req, int rc)
{
    req->rc = rc;
    req->transferred = 0;
    rt__aio_ctx_post_done(ctx, req);
}

/* Runs @a req on the helper pool: a buffered read or write, or a flush the kernel
 * refused.  The pool starts on first need. */
static void send_run_to_helper(struct rt_aio_ctx *ctx, struct rt_aio_req **reqs, size_t n)
{
    struct laio *laio = laio_of(ctx);
    int rc = RT_OK;

    rt__mutex_lock(&laio->helper_lock);
    if (laio->helper == NULL)
        rc = rt__tpool_create(&laio->helper, rt__tpool_default_workers(ctx->capacity),
                              ctx->capacity, RT__TPOOL_IDLE_MS);
    rt__mutex_unlock(&laio->helper_lock);
    if (rc == RT_OK) {
        rt__tpool_queue(laio->helper, reqs, n);
        return;
    }
    for (size_t i = 0; i < n; i++)
        fail_request(ctx, reqs[i], rc);
}

enum run_outcome { RUN_ALL_IN, RUN_STALLED };

/*
 * Gives the kernel a run of requests whose iocbs are filled, looping over partial
 * submits.  A refused first iocb completes alone with its error.  What the kernel
 * cannot take now (no free slot, EAGAIN) goes to the deferred list.  @a pumping says
 * the caller is the waiter emptying that list: then an EAGAIN with nothing in flight
 * (so no completion will come to retry it) fails the request with RT_ERR_TRY_AGAIN
 * rather than parking it forever.
 */
static enum run_outcome submit_run(struct rt_aio_ctx *ctx, struct rt_aio_req **reqs, size_t n,
                                   bool pumping)
{
    struct laio *laio = laio_of(ctx);
    size_t done = 0;
    bool early = rt__early_start_wanted(laio->early_start, atomic_load(&laio->in_kernel), n);

    while (done < n) {
        uint32_t taken = take_slots(laio, early ? rt__early_start_part(done, n - done) : n - done);
        long ret;

        if (taken == 0) {
            defer(ctx, reqs + done, n - done);
            return RUN_STALLED;
        }
        ret = rt__laio_sys.io_submit(laio->kernel_ctx, taken, (struct laio_iocb **)(reqs + done));
        if (ret > 0) {
            give_back_slots(laio, taken - (uint32_t)ret);
            done += (size_t)ret;
            continue;
        }
        give_back_slots(laio, taken);
        if (ret == -EINTR)
            continue;
        if (ret == -EAGAIN || ret == 0) {
            if (pumping && atomic_load(&laio->in_kernel) == 0) {
                fail_request(ctx, reqs[done++], RT_ERR_TRY_AGAIN);
                continue;
            }
            if (pumping)
                atomic_store(&laio->pump_stalled, true);
            defer(ctx, reqs + done, n - done);
            return RUN_STALLED;
        }
        if (ret == -EINVAL && reqs[done]->op == RT__AIO_OP_FLUSH) {
            atomic_store(&laio->fsync_refused, true);
            send_run_to_helper(ctx, &reqs[done++], 1);
            continue;
        }
        fail_request(ctx, reqs[done++], rt_err_from_errno((int)-ret));
    }
    return RUN_ALL_IN;
}

/* Whether the kernel runs @a req asynchronously.  Reads and writes only on O_DIRECT
 * files: on a buffered file io_submit() would do the whole transfer inside the
 * submitter's call.  Flushes whenever the kernel takes IOCB_CMD_FSYNC (it runs them on
 * its own workqueue, buffered file or not). */
static bool for_kernel(struct laio *laio, const struct rt_aio_req *req)
{
    if (req->op == RT__AIO_OP_FLUSH)
        return !atomic_load_explicit(&laio->fsync_refused, memory_order_relaxed);
    /* The kernel stops one transfer near 2 GiB (MAX_RW_COUNT) and would report a short
     * count with no end of file; the pool loops a larger request to the end. */
    return (req->file_flags & RT_FILE_NO_CACHE) != 0 && req->len <= MAX_KERNEL_BYTES;
}

static void laio_submit(struct rt_aio_ctx *ctx, struct rt_aio_req **reqs, size_t n)
{
    struct laio *laio = laio_of(ctx);
    size_t i = 0;

    while (i < n) {
        size_t end = i;

        if (!for_kernel(laio, reqs[i])) {
            while (end < n && !for_kernel(laio, reqs[end]))
                end++;
            send_run_to_helper(ctx, reqs + i, end - i);
            i = end;
            continue;
        }
        while (end < n && for_kernel(laio, reqs[end]))
            fill_iocb(ctx, reqs[end++]);
        /* Once requests are parked, newer ones queue behind them. */
        if (rt__req_queue_count(&laio->deferred) != 0)
            defer(ctx, reqs + i, end - i);
        else
            submit_run(ctx, reqs + i, end - i, false);
        i = end;
    }
}

/* Moves deferred requests into free kernel slots.  The waiter only. */
static void pump(struct rt_aio_ctx *ctx)
{
    struct laio *laio = laio_of(ctx);
    struct rt_aio_req *batch[PUMP_BATCH];

    while (rt__req_queue_count(&laio->deferred) != 0) {
        size_t count = 0;
        uint32_t in_kernel = atomic_load(&laio->in_kernel);
        size_t room = in_kernel < laio->slots ? laio->slots - in_kernel : 0;

        if (room == 0)
            return;
        rt__mutex_lock(&laio->deferred_lock);
        while (count < PUMP_BATCH && count < room &&
               (batch[count] = rt__req_queue_pop(&laio->deferred)) != NULL)
            count++;
        rt__mutex_unlock(&laio->deferred_lock);
        if (count == 0 || submit_run(ctx, batch, count, true) == RUN_STALLED)
            return;
    }
}

/* ------------------------------------------------------------------------------------
 * Completion
 */

static struct rt_aio_req *finish(const struct laio_event *event)
{
    struct rt_aio_req *req = (struct rt_aio_req *)(uintptr_t)event->data;

    if (event->res >= 0) {
        req->rc = RT_OK;
        req->transferred = (size_t)event->res;
    } else {
        req->rc = rt_err_from_errno((int)-event->res);
        req->transferred = 0;
    }
    return req;
}

/*
 * Called after seeing events and before touching their requests.  Pairs with the
 * release in take_slots(), which every submitter passes after writing its request and
 * before io_submit().  The kernel already orders those writes before the event, but
 * only this pair is visible to the C memory model (and to ThreadSanitizer), which
 * cannot see through a system call.  It must come after the event is seen: an acquire
 * taken earlier could precede the submitter's release.
 */
static void sync_with_submitters(struct laio *laio)
{
    (void)atomic_load_explicit(&laio->in_kernel, memory_order_acquire);
}

/* Reads completions straight from the kernel's ring.  Only one thread reaps (the
 * waiter), so head needs no lock; the acquire on tail pairs with the kernel's barrier
 * before it publishes an event. */
static size_t reap_ring(struct laio *laio, struct rt_aio_req **out, size_t max)
{
    struct laio_ring *ring = laio->ring;
    uint32_t head = __atomic_load_n(&ring->head, __ATOMIC_RELAXED);
    uint32_t tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
    uint32_t nr = ring->nr;
    size_t count = 0;

    if (head != tail)
        sync_with_submitters(laio);
    while (head != tail && count < max) {
        out[count++] = finish(&ring->events[head]);
        head = head + 1 == nr ? 0 : head + 1;
    }
    if (count > 0)
        __atomic_store_n(&ring->head, head, __ATOMIC_RELEASE);
    return count;
}

static size_t reap_syscall(struct laio *laio, struct rt_aio_req **out, size_t max)
{
    struct laio_event events[GETEVENTS_BATCH];
    size_t count = 0;

    while (count < max) {
        struct laio_timespec no_wait = {0, 0};
        long want = (long)(max - count < GETEVENTS_BATCH ? max - count : GETEVENTS_BATCH);
        long got = rt__laio_sys.io_getevents(laio->kernel_ctx, 0, want, events, &no_wait);

        if (got == -EINTR)
            continue;
        if (got <= 0)
            break;
        sync_with_submitters(laio);
        for (long i = 0; i < got; i++)
            out[count++] = finish(&events[i]);
        if (got < want)
            break;
    }
    return count;
}

static size_t laio_reap(struct rt_aio_ctx *ctx, struct rt_aio_req **out, size_t max)
{
    struct laio *laio = laio_of(ctx);
    size_t count;

    count = laio->ring != NULL ? reap_ring(laio, out, max) : reap_syscall(laio, out, max);

    give_back_slots(laio, (uint32_t)count);
    if (count > 0)
        atomic_store(&laio->pump_stalled, false);
    if (!atomic_load(&laio->pump_stalled))
        pump(ctx);
    return count;
}

static bool laio_has_completions(struct rt_aio_ctx *ctx)
{
    struct laio *laio = laio_of(ctx);

    if (rt__req_queue_count(&laio->deferred) != 0 &&
        atomic_load_explicit(&laio->in_kernel, memory_order_relaxed) < laio->slots &&
        !atomic_load(&laio->pump_stalled))
        return true; /* a pump would make progress */
    if (laio->ring == NULL)
        return false; /* only io_getevents() could tell; the doorbell will */
    return __atomic_load_n(&laio->ring->head, __ATOMIC_RELAXED) !=
           __atomic_load_n(&laio->ring->tail, __ATOMIC_RELAXED);
}

static int laio_cancel(struct rt_aio_ctx *ctx, struct rt_aio_req *req)
{
    struct laio *laio = laio_of(ctx);
    int rc = RT_ERR_AIO_IN_PROGRESS;

    rt__mutex_lock(&laio->deferred_lock);
    if (rt__req_queue_remove(&laio->deferred, req))
        rc = RT_OK;
    rt__mutex_unlock(&laio->deferred_lock);

    if (rc != RT_OK) {
        rt__mutex_lock(&laio->helper_lock);
        if (laio->helper != NULL)
            rc = rt__tpool_cancel(laio->helper, req);
        rt__mutex_unlock(&laio->helper_lock);
    }
    return rc;
}

const struct rt__aio_backend rt__laio_backend = {
    .name = "linux-aio",
    .flag = RT_AIO_CTX_F_BACKEND_LINUX_AIO,
    .probe = laio_probe,
    .init = laio_init,
    .fini = laio_fini,
    .submit = laio_submit,
    .reap = laio_reap,
    .has_completions = laio_has_completions,
    .cancel = laio_cancel,
};
