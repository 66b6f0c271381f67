/*
 * The AIO layer's internals: the request and context structures and the interface
 * between the generic front end (src/generic/fileaio.c) and the backends.
 *
 * Division of work
 * ----------------
 * The front end owns everything the contract says: handle and argument checks, the
 * request state machine, capacity, the single-waiter rule, wakeups and the wait loop.
 * A backend only moves I/O: it takes submitted requests, carries them out, and hands
 * them back either from its reap() (kernel completions the waiter pulls) or by calling
 * rt__aio_ctx_post_done() (completions pushed by other threads).  Only the front end's
 * wait loop turns a finished request into a completed one, so a request is never
 * "completed" while it still sits in some internal queue (rule 17).
 *
 *   submitter ──submit()──► backend ──kernel ring / worker──┐
 *                                                          ▼
 *   waiter ◄── reap() ◄── kernel completions      done list ◄── post_done()
 *      │                                               │
 *      └────── marks COMPLETED, outstanding-- ◄────────┘
 */
#ifndef RT_INTERNAL_AIO_H
#define RT_INTERNAL_AIO_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <rt/fileaio.h>

#include "internal/doorbell.h"
#include "internal/spin_budget.h"
#include "internal/sync.h"

enum rt__aio_op {
    RT__AIO_OP_READ,
    RT__AIO_OP_WRITE,
    RT__AIO_OP_READV,
    RT__AIO_OP_WRITEV,
    RT__AIO_OP_FLUSH,
};

enum rt__aio_state {
    RT__AIO_FRESH,
    RT__AIO_PREPARED,
    RT__AIO_SUBMITTING, /* claimed by a submit call that has not finished its checks */
    RT__AIO_SUBMITTED,
    RT__AIO_COMPLETED,
};

/* iovec arrays up to this many entries live inside the request. */
#define RT__AIO_INLINE_IOV 8
/* The most entries one vectored request may have (IOV_MAX on Linux). */
#define RT__AIO_MAX_IOV 1024u

/* Room for one backend's per-request kernel structure (the linux-aio iocb). */
union rt__aio_slot {
    uint64_t words[8];
    unsigned char bytes[64];
};

struct rt_aio_req {
    /* First, so a request handle is also the address of its kernel slot: an array of
     * handles can be passed to io_submit() as it is (linux-aio). */
    union rt__aio_slot slot;

    uint32_t magic;         /* RT__MAGIC_AIO_REQ while live */
    _Atomic uint32_t state; /* enum rt__aio_state */

    /* What to do: set by prepare, read by the backend while submitted. */
    uint8_t op;          /* enum rt__aio_op */
    uint8_t req_flags;   /* RT_AIO_REQ_F_*, cleared by every prepare */
    uint32_t file_flags; /* RT_FILE_* flags of the file */
    int fd;
    /* The open the request was prepared on: submit refuses it once that open is closed
     * (see struct rt_file.generation), so a reused descriptor number is never hit. */
    struct rt_file *file;
    uint64_t file_generation;
    uint64_t off;
    void *buf;       /* read/write */
    size_t len;      /* bytes (total over the iovec for readv/writev) */
    rt_iovec_t *iov; /* readv/writev: iov_inline or iov_heap */
    unsigned iovcnt;
    rt_iovec_t iov_inline[RT__AIO_INLINE_IOV];
    rt_iovec_t *iov_heap; /* kept across prepares, freed on destroy */
    unsigned iov_heap_capacity;
    void *user;

    /* The outcome: written by whoever finished the I/O before handing it back. */
    int rc;
    size_t transferred;

    /* While submitted.  ctx is atomic because cancel may read it while the request
     * completes and is resubmitted elsewhere. */
    _Atomic(struct rt_aio_ctx *) ctx;
    struct rt_aio_req *next; /* queue links: done list, backend queues */
    struct rt_aio_req *prev;
    /* The backend queue holding the request, which cancel may take it from; written
     * only under that queue's lock, NULL when in none. */
    _Atomic(void *) queue_owner;
    /* Its position in the thread pool's ring while it is there (for cancel). */
    atomic_size_t pool_pos;

    struct rt_aio_req *next_free; /* handle-pool link */
};

struct rt_aio_ctx;

/*
 * A backend: one file, one table, filled with designated initializers.
 */
struct rt__aio_backend {
    const char *name; /* "linux-aio", "io_uring", "threads" */
    uint32_t flag;    /* its RT_AIO_CTX_F_BACKEND_* flag */
    /* The longest the waiter may learn to spin before it sleeps
     * (internal/spin_budget.h); 0: the front end's SPIN_NS. */
    uint32_t spin_max_ns;

    /** RT_OK when this host can run the backend.  Called once, result cached. */
    int (*probe)(void);

    /**
     * Sets up ctx->backend_data for a context of @a capacity requests (or
     * RT_AIO_UNLIMITED_REQS).  ctx->doorbell is ready.
     * @retval RT_OK or the status rt_aio_ctx_create() returns.
     */
    int (*init)(struct rt_aio_ctx *ctx, uint32_t capacity);

    /** Frees what init made.  Nothing is outstanding. */
    void (*fini)(struct rt_aio_ctx *ctx);

    /**
     * Starts @a n requests, already in state SUBMITTED and counted as outstanding.
     * Cannot fail: a request that cannot start gets its rc set and goes to
     * rt__aio_ctx_post_done().  Any thread, concurrently with reap() and cancel().
     */
    void (*submit)(struct rt_aio_ctx *ctx, struct rt_aio_req **reqs, size_t n);

    /**
     * Without blocking, hands back up to @a max finished requests (rc and transferred
     * set) into @a out.  The waiter only.  NULL when all completions are posted.
     * @return how many.
     */
    size_t (*reap)(struct rt_aio_ctx *ctx, struct rt_aio_req **out, size_t max);

    /**
     * Whether reap() would return something now, without side effects.  The waiter
     * polls it while spinning before it sleeps.  NULL when there is no reap().
     */
    bool (*has_completions)(struct rt_aio_ctx *ctx);

    /**
     * Sleeps until reap() has something, the context's doorbell rings, or the monotonic
     * @a deadline_ns passes (UINT64_MAX: none); may return early (a signal, or a bound
     * of its own: the threads backend's doze, see rt__tpool_sleep(), during which
     * completions may be posted without a ring).  The waiter only, after it cleared the
     * doorbell.  NULL: the front end sleeps on the doorbell, so every completion must
     * ring it.
     * @retval RT_OK           woken, or its own bound passed: look again.
     * @retval RT_ERR_TIMEOUT  the deadline passed.
     */
    int (*sleep)(struct rt_aio_ctx *ctx, uint64_t deadline_ns);

    /**
     * Takes @a req back if it has not started, so that nothing will touch it again.
     * @retval RT_OK                   taken back; the front end completes it as
     *                                 cancelled.
     * @retval RT_ERR_AIO_IN_PROGRESS  it runs to completion.
     * Any thread.
     */
    int (*cancel)(struct rt_aio_ctx *ctx, struct rt_aio_req *req);

    /**
     * Replaces the registered buffers with @a count regions (already checked; 0
     * removes them).  NULL: the backend has no use for them.
     * @retval RT_OK or the status rt_aio_ctx_register_buffers() returns.
     * Any thread; no request is outstanding as the call starts.
     */
    int (*register_buffers)(struct rt_aio_ctx *ctx, const rt_iovec_t *bufs, size_t count);
};

struct rt_aio_ctx {
    uint32_t magic;    /* RT__MAGIC_AIO_CTX while live */
    uint32_t flags;    /* RT_AIO_CTX_F_* */
    uint32_t capacity; /* granted: max_reqs or RT_AIO_UNLIMITED_REQS */
    const struct rt__aio_backend *backend;
    void *backend_data;
    rt__thread_t owner; /* the creating thread: with RT_AIO_CTX_F_SINGLE_THREAD, the only
                           one that may submit, wait, cancel and register buffers */

    _Atomic size_t outstanding; /* submitted and not yet completed */
    /* Calls inside the context beyond their handle check (submit, wait, cancel,
     * wakeup), and destroy's intent: destroy refuses while any call is inside, and a
     * call that finds the context dying leaves (see enter() in fileaio.c). */
    _Atomic uint32_t callers;
    atomic_bool dying;
    atomic_bool waiting; /* a thread is inside rt_aio_ctx_wait() */
    atomic_bool wakeup_pending;

    struct rt__doorbell doorbell;

    /* Requests finished by other threads, waiting for the waiter to collect them: a
     * lock-free stack that posters push onto and the waiter takes whole (one exchange,
     * so no ABA), then reverses into done_spill, its private FIFO. */
    _Atomic(struct rt_aio_req *) done_stack;
    struct rt_aio_req *done_spill; /* the waiter's only */
    struct rt__spin_budget spin;   /* the waiter's only */
    /* Set while the waiter is about to sleep or sleeping: only then must a poster ring
     * the doorbell (see wait_loop for the ordering argument). */
    atomic_bool waiter_sleeping;

    struct rt_aio_ctx *next_free; /* handle-pool link */
};

/**
 * Hands a finished request (rc and transferred set) to the context's waiter and rings
 * the doorbell.  Any thread.  The caller must not touch @a req afterwards.
 */
void rt__aio_ctx_post_done(struct rt_aio_ctx *ctx, struct rt_aio_req *req);

/**
 * Like rt__aio_ctx_post_done(), but leaves a sleeping waiter asleep while *@a dozing
 * is set.  The waiter sets *@a dozing only around a bounded sleep of its backend's
 * sleep() (the threads backend's doze, see rt__tpool_sleep()), and clears it before it
 * looks again: so it finds @a req when that sleep ends, or sooner when a later post
 * rings.  A waiter that is awake finds it on its next look, as always.  Any thread.
 */
void rt__aio_ctx_post_unless_dozing(struct rt_aio_ctx *ctx, struct rt_aio_req *req,
                                    const atomic_bool *dozing);

/**
 * Carries out a prepared request synchronously with positioned POSIX I/O (pread,
 * pwritev, fsync, ...), setting req->rc and req->transferred.  A read that hits end of
 * file stops there; a write or read is otherwise looped to its full length.
 */
void rt__aio_execute(struct rt_aio_req *req);

/** The backend called @a name if this build has it, or NULL. */
const struct rt__aio_backend *rt__aio_backend_by_name(const char *name);
/** The backend whose flag is @a flag if this build has it, or NULL. */
const struct rt__aio_backend *rt__aio_backend_by_flag(uint32_t flag);
/** The first backend in the build's order whose probe succeeds (never NULL: "threads"
 *  always works). */
const struct rt__aio_backend *rt__aio_backend_default(void);
/** RT_OK when @a backend's probe succeeded on this host (cached). */
int rt__aio_backend_probe(const struct rt__aio_backend *backend);

#endif /* RT_INTERNAL_AIO_H */
