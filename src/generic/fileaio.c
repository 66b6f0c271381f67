/*
 * The asynchronous file I/O front end: every rule of the contract that is not about
 * moving bytes lives here, once, for all backends (see internal/aio.h for the split).
 *
 * Request states and who moves them
 * ---------------------------------
 *   FRESH ──prepare──► PREPARED ──submit: claim──► SUBMITTING ──checks pass──► SUBMITTED
 *                        ▲  ▲                         │ checks fail                │
 *                        │  └─────────────────────────┘                            │
 *                        └──prepare── COMPLETED ◄──wait collects / cancel succeeds─┘
 *
 * Submit claims each request with a compare-and-swap PREPARED→SUBMITTING, which also
 * catches a request named twice in one array (the second claim fails) and two threads
 * submitting the same request.  If any check fails, the claimed ones go back to
 * PREPARED and nothing else changed.  Only the waiter (or a successful cancel) stores
 * COMPLETED, with release order, after the result fields are written and after the
 * outstanding count has dropped; a getter that sees COMPLETED (acquire) sees the result,
 * and the library never touches the request after that store.
 */
#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <rt/err.h>
#include <rt/fileaio.h>
#include <rt/time.h>

#include "internal/aio.h"
#include "internal/cpu.h"
#include "internal/file.h"
#include "internal/handle_pool.h"
#include "internal/magic.h"
#include "internal/posix_sys.h"
#include "internal/spin_budget.h"

static struct rt__handle_pool req_pool = RT__HANDLE_POOL_INIT(struct rt_aio_req, next_free);
static struct rt__handle_pool ctx_pool = RT__HANDLE_POOL_INIT(struct rt_aio_ctx, next_free);

_Static_assert(offsetof(struct rt_aio_req, slot) == 0,
               "the kernel slot must be the first member of a request");
_Static_assert(sizeof(rt_iovec_t) == 2 * sizeof(void *), "rt_iovec_t is {base, len}");

#define CTX_FLAG_BACKENDS                                                                          \
    (RT_AIO_CTX_F_BACKEND_LINUX_AIO | RT_AIO_CTX_F_BACKEND_IO_URING | RT_AIO_CTX_F_BACKEND_THREADS)
#define CTX_KNOWN_FLAGS                                                                            \
    (RT_AIO_CTX_F_WAIT_WITHOUT_PENDING | RT_AIO_CTX_F_SINGLE_THREAD | CTX_FLAG_BACKENDS)

/* The longest the waiter may learn to spin for news before it pays for a sleep and a
 * wake-up (internal/spin_budget.h), unless its backend says otherwise
 * (rt__aio_backend.spin_max_ns): a completion that is microseconds away then costs no
 * system call.  0 turns spinning off. */
#ifndef SPIN_NS
#define SPIN_NS 20000u
#endif

static bool req_is_live(const struct rt_aio_req *req)
{
    return req != NULL && req->magic == RT__MAGIC_AIO_REQ;
}

static bool ctx_is_live(const struct rt_aio_ctx *ctx)
{
    return ctx != NULL && ctx->magic == RT__MAGIC_AIO_CTX;
}

/*
 * Brackets every call that uses a context past its handle check, so destroy cannot
 * pull the context (its doorbell descriptor, its backend's rings) from under a submit,
 * wait, cancel or wakeup running in another thread.  Destroy sets dying and then looks
 * at callers; a call adds itself to callers and then looks at dying; both seq_cst, so
 * at least one of them sees the other and backs off.
 */
static bool enter(struct rt_aio_ctx *ctx)
{
    atomic_fetch_add_explicit(&ctx->callers, 1, memory_order_seq_cst);
    if (!atomic_load_explicit(&ctx->dying, memory_order_seq_cst))
        return true;
    atomic_fetch_sub_explicit(&ctx->callers, 1, memory_order_release);
    return false;
}

static void leave(struct rt_aio_ctx *ctx)
{
    atomic_fetch_sub_explicit(&ctx->callers, 1, memory_order_release);
}

/* Whether this thread may submit, wait, cancel and register buffers on @a ctx: any
 * thread, unless the context was created RT_AIO_CTX_F_SINGLE_THREAD.  Checked on every
 * backend alike, so a program that breaks the promise finds out on all of them, not
 * only where the kernel would refuse (io_uring's single-issuer ring). */
static bool may_drive(const struct rt_aio_ctx *ctx)
{
    return !(ctx->flags & RT_AIO_CTX_F_SINGLE_THREAD) || rt__thread_is_self(&ctx->owner);
}

static uint32_t req_state(const struct rt_aio_req *req)
{
    return atomic_load_explicit(&((struct rt_aio_req *)req)->state, memory_order_acquire);
}

/* Submitted, or claimed by a submit call in progress: not the caller's to change. */
static bool in_flight(const struct rt_aio_req *req)
{
    uint32_t state = req_state(req);
    return state == RT__AIO_SUBMITTED || state == RT__AIO_SUBMITTING;
}

/* ------------------------------------------------------------------------------------
 * Requests
 */

int rt_aio_req_create(rt_aio_req_t *req)
{
    struct rt_aio_req *handle;

    if (req == NULL)
        return RT_ERR_INVALID_POINTER;
    *req = RT_AIO_REQ_NIL;
    handle = rt__handle_alloc(&req_pool);
    if (handle == NULL)
        return RT_ERR_NO_MEMORY;
    handle->fd = -1;
    atomic_init(&handle->state, RT__AIO_FRESH);
    handle->magic = RT__MAGIC_AIO_REQ;
    *req = handle;
    return RT_OK;
}

int rt_aio_req_destroy(rt_aio_req_t req)
{
    if (req == RT_AIO_REQ_NIL)
        return RT_OK;
    if (!req_is_live(req))
        return RT_ERR_INVALID_HANDLE;
    if (in_flight(req))
        return RT_ERR_AIO_IN_PROGRESS;
    free(req->iov_heap);
    req->iov_heap = NULL;
    req->magic = RT__MAGIC_DEAD;
    rt__handle_free(&req_pool, req);
    return RT_OK;
}

/* The checks every prepare shares.  On success the request may be written. */
static int prepare_check(struct rt_aio_req *req, rt_file_t file)
{
    if (!req_is_live(req) || !rt__file_is_live(file))
        return RT_ERR_INVALID_HANDLE;
    if (in_flight(req))
        return RT_ERR_AIO_IN_PROGRESS;
    return RT_OK;
}

static bool range_ok(uint64_t off, uint64_t len)
{
    return off <= (uint64_t)INT64_MAX && len <= (uint64_t)INT64_MAX - off;
}

/* Fills the fields every kind of request has and moves it to PREPARED. */
static void prepare_commit(struct rt_aio_req *req, rt_file_t file, enum rt__aio_op op, uint64_t off,
                           void *user)
{
    req->op = (uint8_t)op;
    req->req_flags = 0;
    req->fd = file->fd;
    req->file = file;
    req->file_generation = file->generation;
    req->file_flags = file->flags;
    req->off = off;
    req->user = user;
    req->rc = RT_OK;
    req->transferred = 0;
    atomic_store_explicit(&req->state, RT__AIO_PREPARED, memory_order_release);
}

static int prepare_buffer(struct rt_aio_req *req, rt_file_t file, enum rt__aio_op op, uint64_t off,
                          void *buf, size_t len, void *user)
{
    int rc = prepare_check(req, file);

    if (rc != RT_OK)
        return rc;
    if (buf == NULL)
        return RT_ERR_INVALID_POINTER;
    if (len == 0)
        return RT_ERR_INVALID_PARAMETER;
    if (!range_ok(off, len))
        return RT_ERR_OUT_OF_RANGE;
    req->buf = buf;
    req->len = len;
    req->iov = NULL;
    req->iovcnt = 0;
    prepare_commit(req, file, op, off, user);
    return RT_OK;
}

int rt_aio_req_prepare_read(rt_aio_req_t req, rt_file_t file, uint64_t off, void *buf, size_t len,
                            void *user)
{
    return prepare_buffer(req, file, RT__AIO_OP_READ, off, buf, len, user);
}

int rt_aio_req_prepare_write(rt_aio_req_t req, rt_file_t file, uint64_t off, const void *buf,
                             size_t len, void *user)
{
    /* The library never writes through a write request's buffer; the cast only lets one
     * field serve both directions. */
    return prepare_buffer(req, file, RT__AIO_OP_WRITE, off, (void *)buf, len, user);
}

/* Room for @a count iovec entries in the request.  Fails before touching anything, so
 * a failed prepare leaves the request as it was; once it succeeds, prepare commits. */
static rt_iovec_t *iov_room(struct rt_aio_req *req, unsigned count)
{
    rt_iovec_t *bigger;

    if (count <= RT__AIO_INLINE_IOV)
        return req->iov_inline;
    if (count <= req->iov_heap_capacity)
        return req->iov_heap;
    bigger = rt__posix_sys.malloc(count * sizeof *bigger);
    if (bigger == NULL)
        return NULL;
    free(req->iov_heap);
    req->iov_heap = bigger;
    req->iov_heap_capacity = count;
    return bigger;
}

static int prepare_vector(struct rt_aio_req *req, rt_file_t file, enum rt__aio_op op, uint64_t off,
                          const rt_iovec_t *iov, unsigned iovcnt, void *user)
{
    uint64_t total = 0;
    rt_iovec_t *room;
    unsigned i;
    int rc = prepare_check(req, file);

    if (rc != RT_OK)
        return rc;
    if (iov == NULL)
        return RT_ERR_INVALID_POINTER;
    if (iovcnt == 0 || iovcnt > RT__AIO_MAX_IOV)
        return RT_ERR_INVALID_PARAMETER;
    for (i = 0; i < iovcnt; i++) {
        if (iov[i].base == NULL && iov[i].len > 0)
            return RT_ERR_INVALID_POINTER;
        if (iov[i].len > (uint64_t)INT64_MAX - total)
            return RT_ERR_OUT_OF_RANGE;
        total += iov[i].len;
    }
    if (total == 0)
        return RT_ERR_INVALID_PARAMETER;
    if (!range_ok(off, total))
        return RT_ERR_OUT_OF_RANGE;
    room = iov_room(req, iovcnt);
    if (room == NULL)
        return RT_ERR_NO_MEMORY;
    memcpy(room, iov, iovcnt * sizeof *iov);
    req->iov = room;
    req->iovcnt = iovcnt;
    req->buf = NULL;
    req->len = (size_t)total;
    prepare_commit(req, file, op, off, user);
    return RT_OK;
}

int rt_aio_req_prepare_readv(rt_aio_req_t req, rt_file_t file, uint64_t off, const rt_iovec_t *iov,
                             unsigned iovcnt, void *user)
{
    return prepare_vector(req, file, RT__AIO_OP_READV, off, iov, iovcnt, user);
}

int rt_aio_req_prepare_writev(rt_aio_req_t req, rt_file_t file, uint64_t off, const rt_iovec_t *iov,
                              unsigned iovcnt, void *user)
{
    return prepare_vector(req, file, RT__AIO_OP_WRITEV, off, iov, iovcnt, user);
}

int rt_aio_req_prepare_flush(rt_aio_req_t req, rt_file_t file, void *user)
{
    int rc = prepare_check(req, file);

    if (rc != RT_OK)
        return rc;
    req->buf = NULL;
    req->len = 0;
    req->iov = NULL;
    req->iovcnt = 0;
    prepare_commit(req, file, RT__AIO_OP_FLUSH, 0, user);
    return RT_OK;
}

int rt_aio_req_set_flags(rt_aio_req_t req, uint32_t flags)
{
    if (!req_is_live(req))
        return RT_ERR_INVALID_HANDLE;
    if (in_flight(req))
        return RT_ERR_AIO_IN_PROGRESS;
    if (req_state(req) != RT__AIO_PREPARED || (flags & ~RT_AIO_REQ_F_DSYNC) != 0)
        return RT_ERR_INVALID_PARAMETER;
    if ((flags & RT_AIO_REQ_F_DSYNC) && req->op != RT__AIO_OP_WRITE &&
        req->op != RT__AIO_OP_WRITEV)
        return RT_ERR_INVALID_PARAMETER;
    req->req_flags = (uint8_t)flags;
    return RT_OK;
}

void *rt_aio_req_get_user(rt_aio_req_t req)
{
    if (!req_is_live(req) || req_state(req) == RT__AIO_FRESH)
        return NULL;
    return req->user;
}

int rt_aio_req_get_rc(rt_aio_req_t req, size_t *transferred)
{
    if (!req_is_live(req))
        return RT_ERR_INVALID_HANDLE;
    switch (req_state(req)) {
    case RT__AIO_SUBMITTED: return RT_ERR_AIO_IN_PROGRESS;
    case RT__AIO_COMPLETED:
        if (req->rc == RT_OK && transferred != NULL)
            *transferred = req->transferred;
        return req->rc;
    default: /* fresh, prepared, or claimed by a submit that has not finished */
        return RT_ERR_AIO_NOT_SUBMITTED;
    }
}

/* Completes a request that left every backend queue: the one place a request becomes
 * COMPLETED.  Nothing may touch @a req after this. */
static void complete(struct rt_aio_ctx *ctx, struct rt_aio_req *req)
{
    req->next = req->prev = NULL;
    atomic_fetch_sub_explicit(&ctx->outstanding, 1, memory_order_acq_rel);
    atomic_store_explicit(&req->state, RT__AIO_COMPLETED, memory_order_release);
}

int rt_aio_req_cancel(rt_aio_req_t req)
{
    struct rt_aio_ctx *ctx;
    int rc;

    if (!req_is_live(req))
        return RT_ERR_INVALID_HANDLE;
    if (req_state(req) != RT__AIO_SUBMITTED)
        return RT_ERR_AIO_NOT_SUBMITTED;
    ctx = atomic_load_explicit(&req->ctx, memory_order_relaxed);
    if (!ctx_is_live(ctx) || !enter(ctx))
        return RT_ERR_AIO_IN_PROGRESS; /* it completed and moved on meanwhile */
    if (!may_drive(ctx)) {
        leave(ctx);
        return RT_ERR_NOT_PERMITTED;
    }
    rc = ctx->backend->cancel(ctx, req);
    if (rc == RT_OK) {
        req->rc = RT_ERR_AIO_CANCELED;
        req->transferred = 0;
        complete(ctx, req);
        /* A waiter may be asleep for this very request: let it look again (it returns
         * RT_ERR_AIO_NO_REQUEST if nothing is left to wait for). */
        rt__doorbell_ring(&ctx->doorbell);
    }
    leave(ctx);
    return rc == RT_OK ? RT_OK : RT_ERR_AIO_IN_PROGRESS;
}

/* ------------------------------------------------------------------------------------
 * Contexts
 */

/* Which backend a new context gets: its flag, else RT_AIO_BACKEND, else the default. */
static int choose_backend(uint32_t flags, const struct rt__aio_backend **chosen)
{
    const struct rt__aio_backend *backend;
    uint32_t backend_flag = flags & CTX_FLAG_BACKENDS;
    const char *name;

    if (backend_flag != 0) {
        backend = rt__aio_backend_by_flag(backend_flag);
    } else if ((name = getenv("RT_AIO_BACKEND")) != NULL && name[0] != '\0') {
        backend = rt__aio_backend_by_name(name); /* NULL for a name no build has */
    } else {
        *chosen = rt__aio_backend_default();
        return RT_OK;
    }
    if (backend == NULL || rt__aio_backend_probe(backend) != RT_OK)
        return RT_ERR_NOT_SUPPORTED;
    *chosen = backend;
    return RT_OK;
}

int rt_aio_ctx_create(rt_aio_ctx_t *ctx, uint32_t max_reqs, uint32_t flags)
{
    const struct rt__aio_backend *backend = NULL;
    struct rt_aio_ctx *handle;
    uint32_t backend_flag = flags & CTX_FLAG_BACKENDS;
    int rc;

    if (ctx == NULL)
        return RT_ERR_INVALID_POINTER;
    *ctx = RT_AIO_CTX_NIL;
    if (max_reqs == 0 || (flags & ~CTX_KNOWN_FLAGS) != 0 ||
        (backend_flag & (backend_flag - 1)) != 0)
        return RT_ERR_INVALID_PARAMETER;
    rc = choose_backend(flags, &backend);
    if (rc != RT_OK)
        return rc;

    handle = rt__handle_alloc(&ctx_pool);
    if (handle == NULL)
        return RT_ERR_NO_MEMORY;
    handle->flags = flags;
    handle->owner = rt__thread_self();
    handle->capacity = max_reqs;
    handle->backend = backend;
    atomic_init(&handle->outstanding, 0);
    atomic_init(&handle->callers, 0);
    atomic_init(&handle->dying, false);
    atomic_init(&handle->waiting, false);
    atomic_init(&handle->wakeup_pending, false);
    atomic_init(&handle->done_stack, NULL);
    atomic_init(&handle->waiter_sleeping, false);
    handle->done_spill = NULL;
    rt__spin_budget_init(&handle->spin, backend->spin_max_ns ? backend->spin_max_ns : SPIN_NS);
    rc = rt__doorbell_init(&handle->doorbell);
    if (rc != RT_OK)
        goto fail_doorbell;
    rc = backend->init(handle, max_reqs);
    if (rc != RT_OK)
        goto fail_backend;
    handle->magic = RT__MAGIC_AIO_CTX;
    *ctx = handle;
    return RT_OK;

fail_backend:
    rt__doorbell_fini(&handle->doorbell);
fail_doorbell:
    handle->magic = RT__MAGIC_DEAD;
    rt__handle_free(&ctx_pool, handle);
    return rc;
}

int rt_aio_ctx_destroy(rt_aio_ctx_t ctx)
{
    if (ctx == RT_AIO_CTX_NIL)
        return RT_OK;
    if (!ctx_is_live(ctx))
        return RT_ERR_INVALID_HANDLE;
    if (atomic_load(&ctx->outstanding) != 0 || atomic_load(&ctx->waiting))
        return RT_ERR_AIO_BUSY;
    atomic_store_explicit(&ctx->dying, true, memory_order_seq_cst);
    if (atomic_load_explicit(&ctx->callers, memory_order_seq_cst) != 0 ||
        atomic_load(&ctx->outstanding) != 0 || atomic_load(&ctx->waiting)) {
        atomic_store_explicit(&ctx->dying, false, memory_order_seq_cst);
        return RT_ERR_AIO_BUSY; /* a call is inside it right now */
    }
    ctx->magic = RT__MAGIC_DEAD;
    ctx->backend->fini(ctx);
    rt__doorbell_fini(&ctx->doorbell);
    rt__handle_free(&ctx_pool, ctx);
    return RT_OK;
}

uint32_t rt_aio_ctx_get_max_req_count(rt_aio_ctx_t ctx)
{
    return ctx_is_live(ctx) ? ctx->capacity : 0;
}

const char *rt_aio_ctx_get_backend(rt_aio_ctx_t ctx)
{
    return ctx_is_live(ctx) ? ctx->backend->name : NULL;
}

int rt_aio_ctx_associate_with_file(rt_aio_ctx_t ctx, rt_file_t file)
{
    if (!ctx_is_live(ctx) || !rt__file_is_live(file))
        return RT_ERR_INVALID_HANDLE;
    return RT_OK;
}

int rt_aio_ctx_register_buffers(rt_aio_ctx_t ctx, const rt_iovec_t *bufs, size_t count)
{
    int rc = RT_OK;

    if (!ctx_is_live(ctx))
        return RT_ERR_INVALID_HANDLE;
    if (bufs == NULL && count > 0)
        return RT_ERR_INVALID_POINTER;
    if (count > RT_AIO_MAX_REGISTERED_BUFFERS)
        return RT_ERR_INVALID_PARAMETER;
    for (size_t i = 0; i < count; i++) {
        if (bufs[i].base == NULL)
            return RT_ERR_INVALID_POINTER;
        if (bufs[i].len == 0 || bufs[i].len > RT_AIO_MAX_REGISTERED_BUFFER_SIZE)
            return RT_ERR_INVALID_PARAMETER;
    }
    if (!may_drive(ctx))
        return RT_ERR_NOT_PERMITTED;
    if (!enter(ctx))
        return RT_ERR_INVALID_HANDLE;
    if (atomic_load(&ctx->outstanding) != 0)
        rc = RT_ERR_AIO_BUSY;
    else if (ctx->backend->register_buffers != NULL)
        rc = ctx->backend->register_buffers(ctx, bufs, count);
    leave(ctx);
    return rc;
}

/* Puts the first @a claimed requests back to PREPARED after a failed submit check. */
static void unclaim(struct rt_aio_req **reqs, size_t claimed)
{
    for (size_t i = 0; i < claimed; i++)
        atomic_store_explicit(&reqs[i]->state, RT__AIO_PREPARED, memory_order_release);
}

/* Reserves @a n slots of the context's capacity, or fails without reserving any. */
static bool reserve(struct rt_aio_ctx *ctx, size_t n)
{
    size_t before = atomic_load_explicit(&ctx->outstanding, memory_order_relaxed);

    if (ctx->capacity == RT_AIO_UNLIMITED_REQS) {
        atomic_fetch_add_explicit(&ctx->outstanding, n, memory_order_acq_rel);
        return true;
    }
    /* A compare-and-swap, not add-then-undo: two racing submits must not both fail
     * when one of them fits. */
    do {
        if (n > ctx->capacity || before > ctx->capacity - n)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&ctx->outstanding, &before, before + n,
                                                    memory_order_acq_rel, memory_order_relaxed));
    return true;
}

int rt_aio_ctx_submit(rt_aio_ctx_t ctx, rt_aio_req_t *reqs, size_t n)
{
    size_t claimed;
    int rc = RT_OK;

    if (!ctx_is_live(ctx))
        return RT_ERR_INVALID_HANDLE;
    if (reqs == NULL)
        return RT_ERR_INVALID_POINTER;
    if (n == 0)
        return RT_ERR_INVALID_PARAMETER;
    if (!may_drive(ctx))
        return RT_ERR_NOT_PERMITTED;
    if (!enter(ctx))
        return RT_ERR_INVALID_HANDLE;

    for (claimed = 0; claimed < n; claimed++) {
        struct rt_aio_req *req = reqs[claimed];
        uint32_t expected = RT__AIO_PREPARED;

        if (!req_is_live(req)) {
            rc = RT_ERR_INVALID_HANDLE;
            break;
        }
        if (!atomic_compare_exchange_strong_explicit(&req->state, &expected, RT__AIO_SUBMITTING,
                                                     memory_order_acq_rel, memory_order_acquire)) {
            rc = (expected == RT__AIO_SUBMITTED || expected == RT__AIO_SUBMITTING)
                     ? RT_ERR_AIO_IN_PROGRESS
                     : RT_ERR_AIO_NOT_SUBMITTED;
            break;
        }
        /* Prepared on a file that has been closed since: its descriptor number may
         * name another file by now. */
        if (!rt__file_is_generation(req->file, req->file_generation)) {
            claimed++;
            rc = RT_ERR_INVALID_HANDLE;
            break;
        }
    }
    if (rc == RT_OK && !reserve(ctx, n))
        rc = RT_ERR_AIO_INSUFFICIENT_RESOURCES;
    if (rc != RT_OK) {
        unclaim(reqs, claimed);
        leave(ctx);
        return rc;
    }

    /* SUBMITTED before the backend sees them: a completion may be collected by the
     * waiter before backend->submit() even returns. */
    for (size_t i = 0; i < n; i++) {
        atomic_store_explicit(&reqs[i]->ctx, ctx, memory_order_relaxed);
        atomic_store_explicit(&reqs[i]->state, RT__AIO_SUBMITTED, memory_order_release);
    }
    ctx->backend->submit(ctx, reqs, n);
    leave(ctx);
    return RT_OK;
}

/* Pushes @a req onto the done stack (seq_cst: one half of the pair in wait_loop). */
static void push_done(struct rt_aio_ctx *ctx, struct rt_aio_req *req)
{
    struct rt_aio_req *top = atomic_load_explicit(&ctx->done_stack, memory_order_relaxed);

    do
        req->next = top;
    while (!atomic_compare_exchange_weak_explicit(&ctx->done_stack, &top, req, memory_order_seq_cst,
                                                  memory_order_relaxed));
}

/* The poster's half of the sleep protocol, after its seq_cst push. */
static void ring_if_sleeping(struct rt_aio_ctx *ctx)
{
    /* seq_cst push, then seq_cst look at waiter_sleeping: see wait_loop.  Exchanging
     * the flag (not just reading it) makes only the first poster after the waiter fell
     * asleep pay for the ring; the ones behind it find the flag down and know the
     * waiter is already on its way. */
    if (atomic_load_explicit(&ctx->waiter_sleeping, memory_order_seq_cst) &&
        atomic_exchange_explicit(&ctx->waiter_sleeping, false, memory_order_seq_cst))
        rt__doorbell_ring(&ctx->doorbell);
}

void rt__aio_ctx_post_done(struct rt_aio_ctx *ctx, struct rt_aio_req *req)
{
    push_done(ctx, req);
    ring_if_sleeping(ctx);
}

void rt__aio_ctx_post_unless_dozing(struct rt_aio_ctx *ctx, struct rt_aio_req *req,
                                    const atomic_bool *dozing)
{
    push_done(ctx, req);
    /* seq_cst push, then seq_cst look at *dozing: if it is still up, the waiter has not
     * yet lowered it after its bounded sleep, so its next look (after the lowering) sees
     * this request; if it is down, post as usual. */
    if (atomic_load_explicit(dozing, memory_order_seq_cst))
        return;
    ring_if_sleeping(ctx);
}

/* Takes up to @a max requests off the done list, oldest first.  The waiter only. */
static size_t take_done(struct rt_aio_ctx *ctx, struct rt_aio_req **out, size_t max)
{
    size_t count = 0;

    if (ctx->done_spill == NULL &&
        atomic_load_explicit(&ctx->done_stack, memory_order_seq_cst) != NULL) {
        /* Take the whole stack and reverse it: posting order becomes FIFO order. */
        struct rt_aio_req *stack =
            atomic_exchange_explicit(&ctx->done_stack, NULL, memory_order_acquire);
        while (stack != NULL) {
            struct rt_aio_req *next = stack->next;
            stack->next = ctx->done_spill;
            ctx->done_spill = stack;
            stack = next;
        }
    }
    while (count < max && ctx->done_spill != NULL) {
        out[count++] = ctx->done_spill;
        ctx->done_spill = ctx->done_spill->next;
    }
    return count;
}

/* Collects finished requests into @a out and completes them.  The waiter only. */
static size_t collect(struct rt_aio_ctx *ctx, struct rt_aio_req **out, size_t max)
{
    size_t count = 0;

    if (ctx->backend->reap != NULL)
        count = ctx->backend->reap(ctx, out, max);
    if (count < max)
        count += take_done(ctx, out + count, max - count);
    for (size_t i = 0; i < count; i++)
        complete(ctx, out[i]);
    return count;
}

/* Whether collect() would find something now.  @a order is relaxed while spinning;
 * seq_cst for the last look before sleeping, where it is one half of the Dekker pair
 * with rt__aio_ctx_post_done() (a relaxed load could pass the seq_cst store of
 * waiter_sleeping on weakly ordered CPUs and miss a completion). */
static bool has_news(struct rt_aio_ctx *ctx, memory_order order)
{
    return ctx->done_spill != NULL || atomic_load_explicit(&ctx->done_stack, order) != NULL ||
           atomic_load_explicit(&ctx->wakeup_pending, order) ||
           (ctx->backend->has_completions != NULL && ctx->backend->has_completions(ctx));
}

/* Spins from @a start for the context's spin budget, or until news or @a deadline. */
static void spin_for_news(struct rt_aio_ctx *ctx, uint64_t start, uint64_t deadline)
{
    uint64_t until = start + ctx->spin.ns;

    if (ctx->spin.ns == 0)
        return;
    if (deadline < until)
        until = deadline;
    while (!has_news(ctx, memory_order_relaxed)) {
        for (int i = 0; i < 32; i++)
            rt__cpu_relax();
        if (rt_time_nano_ts() >= until)
            return;
    }
}

/* Sleeps where the backend's completions and the doorbell both reach this thread. */
static int sleep_for_news(struct rt_aio_ctx *ctx, uint64_t deadline)
{
    if (ctx->backend->sleep != NULL)
        return ctx->backend->sleep(ctx, deadline);
    return rt__doorbell_wait(&ctx->doorbell, deadline);
}

static bool take_wakeup(struct rt_aio_ctx *ctx)
{
    return atomic_load_explicit(&ctx->wakeup_pending, memory_order_relaxed) &&
           atomic_exchange_explicit(&ctx->wakeup_pending, false, memory_order_acq_rel);
}

/* The wait proper, once the arguments are known good and this thread is the waiter. */
static int wait_loop(struct rt_aio_ctx *ctx, size_t want, uint32_t timeout_ms,
                     struct rt_aio_req **reqs, size_t n, size_t *count)
{
    uint64_t deadline = rt__deadline_from_ms(timeout_ms);
    uint64_t spin_start;

    if (take_wakeup(ctx))
        return RT_ERR_INTERRUPTED;
    if (atomic_load(&ctx->outstanding) == 0 && !(ctx->flags & RT_AIO_CTX_F_WAIT_WITHOUT_PENDING))
        return RT_ERR_AIO_NO_REQUEST;

    for (;;) {
        *count += collect(ctx, reqs + *count, n - *count);
        if (*count >= want)
            return RT_OK;
        if (take_wakeup(ctx))
            return RT_ERR_INTERRUPTED;
        /* Everything was cancelled under us before anything came back: nothing is
         * left that could end this wait (rule 8). */
        if (*count == 0 && atomic_load(&ctx->outstanding) == 0 &&
            !(ctx->flags & RT_AIO_CTX_F_WAIT_WITHOUT_PENDING))
            return RT_ERR_AIO_NO_REQUEST;
        if (timeout_ms == 0)
            return RT_ERR_TIMEOUT;
        spin_start = rt_time_nano_ts();
        spin_for_news(ctx, spin_start, deadline);
        if (has_news(ctx, memory_order_relaxed))
            continue;

        /* Going to sleep.  Announce it (seq_cst), clear the bell, and look once more
         * (seq_cst): a poster pushes (seq_cst) and then reads waiter_sleeping
         * (seq_cst), so either it sees the flag and rings, or this look sees its
         * request.  Wakeups ring unconditionally; kernel completions either ring too
         * or wake the backend's own sleep, which also watches the bell.  A pool worker
         * may also skip the ring while the threads backend dozes (a bounded sleep; see
         * rt__aio_ctx_post_unless_dozing()). */
        atomic_store_explicit(&ctx->waiter_sleeping, true, memory_order_seq_cst);
        rt__doorbell_clear(&ctx->doorbell);
        if (!has_news(ctx, memory_order_seq_cst) && sleep_for_news(ctx, deadline) == RT_ERR_TIMEOUT) {
            atomic_store_explicit(&ctx->waiter_sleeping, false, memory_order_relaxed);
            *count += collect(ctx, reqs + *count, n - *count);
            return *count >= want ? RT_OK : RT_ERR_TIMEOUT;
        }
        atomic_store_explicit(&ctx->waiter_sleeping, false, memory_order_relaxed);
        /* Completions (not a wakeup) ended the sleep: would a longer spin have caught
         * them? */
        if (!atomic_load_explicit(&ctx->wakeup_pending, memory_order_relaxed) &&
            has_news(ctx, memory_order_relaxed))
            rt__spin_budget_slept(&ctx->spin, rt_time_nano_ts() - spin_start);
    }
}

int rt_aio_ctx_wait(rt_aio_ctx_t ctx, size_t min, uint32_t timeout_ms, rt_aio_req_t *reqs, size_t n,
                    uint32_t *got)
{
    size_t count = 0;
    int rc;

    if (got != NULL)
        *got = 0;
    if (!ctx_is_live(ctx))
        return RT_ERR_INVALID_HANDLE;
    if (reqs == NULL || got == NULL)
        return RT_ERR_INVALID_POINTER;
    if (n == 0)
        return RT_ERR_INVALID_PARAMETER;
    if (min > n)
        return RT_ERR_OUT_OF_RANGE;
    if (!may_drive(ctx))
        return RT_ERR_NOT_PERMITTED;
    if (n > UINT32_MAX)
        n = UINT32_MAX; /* *got is 32 bits wide */
    if (!enter(ctx))
        return RT_ERR_INVALID_HANDLE;
    if (atomic_exchange_explicit(&ctx->waiting, true, memory_order_acq_rel)) {
        leave(ctx);
        return RT_ERR_AIO_BUSY;
    }

    rc = wait_loop(ctx, min > 0 ? min : 1, timeout_ms, reqs, n, &count);

    atomic_store_explicit(&ctx->waiting, false, memory_order_release);
    leave(ctx);
    *got = (uint32_t)count;
    return rc;
}

/* Async-signal-safe, as the header promises: atomics, one write(), errno kept. */
int rt_aio_ctx_wakeup(rt_aio_ctx_t ctx)
{
    int saved_errno = errno;

    if (!ctx_is_live(ctx) || !enter(ctx))
        return RT_ERR_INVALID_HANDLE;
    atomic_store_explicit(&ctx->wakeup_pending, true, memory_order_release);
    rt__doorbell_ring(&ctx->doorbell);
    leave(ctx);
    errno = saved_errno;
    return RT_OK;
}
