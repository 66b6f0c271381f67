/*
 * The "threads" backend: AIO emulated by a pool of worker threads doing positioned
 * POSIX I/O.  Runs on any POSIX host, for any file (buffered or O_DIRECT).
 *
 * Pool size: RT_AIO_THREADS in the environment if set (1..1024), else the context's
 * capacity capped at RT__TPOOL_DEFAULT_MAX (16).  Workers start only when work needs
 * them and leave after RT__TPOOL_IDLE_MS without work, so a large cap costs nothing
 * while idle.
 */
#include <config.h>

#include <rt/err.h>

#include "internal/aio.h"
#include "internal/tpool.h"

static int threads_probe(void)
{
    return RT_OK;
}

static int threads_init(struct rt_aio_ctx *ctx, uint32_t capacity)
{
    struct rt__tpool *pool;
    int rc = rt__tpool_create(&pool, rt__tpool_default_workers(capacity), capacity,
                              RT__TPOOL_IDLE_MS);
    if (rc == RT_OK)
        ctx->backend_data = pool;
    return rc;
}

static void threads_fini(struct rt_aio_ctx *ctx)
{
    rt__tpool_destroy(ctx->backend_data);
    ctx->backend_data = NULL;
}

static void threads_submit(struct rt_aio_ctx *ctx, struct rt_aio_req **reqs, size_t n)
{
    rt__tpool_queue(ctx->backend_data, reqs, n);
}

static int threads_sleep(struct rt_aio_ctx *ctx, uint64_t deadline_ns)
{
    return rt__tpool_sleep(ctx->backend_data, &ctx->doorbell, deadline_ns);
}

static int threads_cancel(struct rt_aio_ctx *ctx, struct rt_aio_req *req)
{
    return rt__tpool_cancel(ctx->backend_data, req);
}

/* A completion reaches the waiter through the doorbell (an eventfd write and a poll
 * wake-up), a round trip that costs more than a fast device's whole transfer on a VM:
 * let the waiter learn to spin across a fast device's latency instead. */
#ifndef THREADS_SPIN_MAX_NS
#define THREADS_SPIN_MAX_NS 100000u
#endif

const struct rt__aio_backend rt__tpool_backend = {
    .name = "threads",
    .flag = RT_AIO_CTX_F_BACKEND_THREADS,
    .spin_max_ns = THREADS_SPIN_MAX_NS,
    .probe = threads_probe,
    .init = threads_init,
    .fini = threads_fini,
    .submit = threads_submit,
    .reap = NULL,
    .has_completions = NULL,
    .sleep = threads_sleep,
    .cancel = threads_cancel,
};
