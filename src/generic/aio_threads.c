/*
 * The "threads" backend: AIO emulated by a pool of worker threads doing positioned
 * POSIX I/O.  Runs on any POSIX host, for any file (buffered or O_DIRECT).
 *
 * Pool size: RT_AIO_THREADS in the environment if set (1..1024), else the context's
 * capacity capped at DEFAULT_MAX_WORKERS.  Workers start only when work needs them and
 * leave after IDLE_MS without work, so a large cap costs nothing while idle.
 */
#include <config.h>

#include <stdlib.h>

#include <rt/err.h>

#include "internal/aio.h"
#include "internal/tpool.h"

#define DEFAULT_MAX_WORKERS 16u
#define IDLE_MS 2000u

static unsigned worker_count(uint32_t capacity)
{
    const char *env = getenv("RT_AIO_THREADS");
    if (env != NULL && env[0] != '\0') {
        char *end;
        unsigned long wanted = strtoul(env, &end, 10);
        if (*end == '\0' && wanted >= 1 && wanted <= 1024)
            return (unsigned)wanted;
    }
    return capacity < DEFAULT_MAX_WORKERS ? capacity : DEFAULT_MAX_WORKERS;
}

static int threads_probe(void)
{
    return RT_OK;
}

static int threads_init(struct rt_aio_ctx *ctx, uint32_t capacity)
{
    struct rt__tpool *pool;
    int rc = rt__tpool_create(&pool, worker_count(capacity), IDLE_MS);
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

static int threads_cancel(struct rt_aio_ctx *ctx, struct rt_aio_req *req)
{
    return rt__tpool_cancel(ctx->backend_data, req);
}

const struct rt__aio_backend rt__tpool_backend = {
    .name = "threads",
    .flag = RT_AIO_CTX_F_BACKEND_THREADS,
    .probe = threads_probe,
    .init = threads_init,
    .fini = threads_fini,
    .submit = threads_submit,
    .reap = NULL,
    .cancel = threads_cancel,
};
