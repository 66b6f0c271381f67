/*
 * RT_AIO_CTX_F_SINGLE_THREAD, on every backend this host has (a backend it lacks is
 * skipped with the reason):
 *
 *  - The promise is checked.  Submit, wait, cancel and register_buffers from a thread
 *    other than the creator return RT_ERR_NOT_PERMITTED and change nothing: the
 *    request refused for submit is still prepared, the one refused for cancel still
 *    comes back.  Wakeup and destroy work from any thread.
 *  - The creating thread gets every promise of the contract.  On io_uring such a ring
 *    posts completions only when this thread asks for them (DEFER_TASKRUN), so the
 *    paths that differ are the ones below: completions reaching a waiter that spins or
 *    sleeps, a wakeup from another thread reaching it asleep, timeouts, data at depth
 *    on an O_DIRECT file, and (io_uring only) a cancel the kernel carries out.
 *  - rt_aio_ctx_wakeup() from a signal handler on the waiting thread ends its wait: the
 *    header promises it is async-signal-safe.
 *
 * A watchdog alarm turns a wait that is never woken into a failed run.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#include <rt/file.h>
#include <rt/fileaio.h>
#include <rt/mem.h>
#include <rt/time.h>

#include "tst_common.h"
#include "tst_data.h"

#define LONG_MS  10000u
#define LATE_MS  1500u
#define EARLY_MS 20u

enum { BLOCK = 4096, BLOCKS = 1024, DEPTH = 32 };

static const char *const backend_names[] = {"linux-aio", "threads", "io_uring"};
#define N_BACKENDS (sizeof backend_names / sizeof backend_names[0])

static rt_aio_ctx_t owned_ctx(const char *backend, uint32_t max_reqs, uint32_t flags)
{
    rt_aio_ctx_t ctx = RT_AIO_CTX_NIL;
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, max_reqs,
                                   tst_backend_flag(backend) | RT_AIO_CTX_F_SINGLE_THREAD | flags),
                 RT_OK);
    return ctx;
}

static rt_aio_req_t req_new(void)
{
    rt_aio_req_t req = RT_AIO_REQ_NIL;
    TST_RC_FATAL(rt_aio_req_create(&req), RT_OK);
    return req;
}

/* Waits until @a req comes back (and nothing else), within LONG_MS. */
static void reap_exactly(rt_aio_ctx_t ctx, rt_aio_req_t req)
{
    rt_aio_req_t done[4];
    uint32_t got = 0;

    TST_RC(rt_aio_ctx_wait(ctx, 1, LONG_MS, done, 4, &got), RT_OK);
    CU_ASSERT_EQUAL(got, 1);
    if (got >= 1)
        CU_ASSERT_PTR_EQUAL(done[0], req);
}

/* ------------------------------------------------------------------------------------ */
/* Calls from another thread                                                            */

struct stranger {
    rt_aio_ctx_t ctx;
    rt_aio_req_t submitted; /* in flight: cancel is refused */
    rt_aio_req_t prepared;  /* not submitted: submit is refused */
    void *buf;
    bool destroy; /* only destroy the context */
    int submit_rc, wait_rc, cancel_rc, register_rc, wakeup_rc, destroy_rc;
    uint32_t got;
};

static void *stranger_calls(void *arg)
{
    struct stranger *s = arg;
    rt_aio_req_t done[4] = {RT_AIO_REQ_NIL};
    rt_iovec_t region = {.base = s->buf, .len = BLOCK};

    if (s->destroy) {
        s->destroy_rc = rt_aio_ctx_destroy(s->ctx);
        return NULL;
    }
    s->got = 99;
    s->submit_rc = rt_aio_ctx_submit(s->ctx, &s->prepared, 1);
    s->wait_rc = rt_aio_ctx_wait(s->ctx, 1, 0, done, 4, &s->got);
    s->cancel_rc = rt_aio_req_cancel(s->submitted);
    s->register_rc = rt_aio_ctx_register_buffers(s->ctx, &region, 1);
    s->wakeup_rc = rt_aio_ctx_wakeup(s->ctx);
    return NULL;
}

static void as_stranger(struct stranger *s)
{
    pthread_t thread;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&thread, NULL, stranger_calls, s), 0);
    pthread_join(thread, NULL);
}

static void foreign_calls(const char *backend)
{
    rt_aio_ctx_t ctx = owned_ctx(backend, 8, 0);
    rt_file_t file = tst_scratch_file("foreign.dat", BLOCK, RT_FILE_READWRITE, false);
    uint8_t *buf = rt_mem_page_alloc(2 * BLOCK);
    rt_aio_req_t a = req_new(), b = req_new(), done[4];
    struct stranger s;
    rt_iovec_t region;
    uint32_t got = 0;
    size_t bytes = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    pat_fill(buf, 0, BLOCK, 7);
    TST_RC_FATAL(rt_file_write_at(file, 0, buf, BLOCK, NULL), RT_OK);
    memset(buf, 0, 2 * BLOCK);
    TST_RC(rt_aio_req_prepare_read(a, file, 0, buf, BLOCK, NULL), RT_OK);
    TST_RC(rt_aio_req_prepare_read(b, file, 0, buf + BLOCK, BLOCK, NULL), RT_OK);
    TST_RC(rt_aio_ctx_submit(ctx, &a, 1), RT_OK);

    memset(&s, 0, sizeof s);
    s.ctx = ctx;
    s.submitted = a;
    s.prepared = b;
    s.buf = buf;
    as_stranger(&s);
    TST_RC(s.submit_rc, RT_ERR_NOT_PERMITTED);
    TST_RC(s.wait_rc, RT_ERR_NOT_PERMITTED);
    CU_ASSERT_EQUAL(s.got, 0);
    TST_RC(s.cancel_rc, RT_ERR_NOT_PERMITTED);
    TST_RC(s.register_rc, RT_ERR_NOT_PERMITTED);
    TST_RC(s.wakeup_rc, RT_OK);

    /* Nothing moved: b is still only prepared, a still comes back, with its data. */
    TST_RC(rt_aio_req_get_rc(b, NULL), RT_ERR_AIO_NOT_SUBMITTED);
    TST_RC(rt_aio_ctx_wait(ctx, 1, LONG_MS, done, 4, &got), RT_ERR_INTERRUPTED);
    if (got == 0)
        reap_exactly(ctx, a);
    else
        CU_ASSERT(got == 1 && done[0] == a);
    TST_RC(rt_aio_req_get_rc(a, &bytes), RT_OK);
    CU_ASSERT_EQUAL(bytes, BLOCK);
    CU_ASSERT(pat_check(buf, 0, BLOCK, 7));

    /* The creating thread may do all of it. */
    region.base = buf;
    region.len = 2 * BLOCK;
    TST_RC(rt_aio_ctx_register_buffers(ctx, &region, 1), RT_OK);
    TST_RC(rt_aio_ctx_submit(ctx, &b, 1), RT_OK);
    reap_exactly(ctx, b);
    TST_RC(rt_aio_req_get_rc(b, &bytes), RT_OK);
    CU_ASSERT(pat_check(buf + BLOCK, 0, BLOCK, 7));
    TST_RC(rt_aio_ctx_register_buffers(ctx, NULL, 0), RT_OK);

    /* Destroy is open to any thread. */
    memset(&s, 0, sizeof s);
    s.ctx = ctx;
    s.destroy = true;
    s.destroy_rc = RT_ERR_GENERAL_FAILURE;
    as_stranger(&s);
    TST_RC(s.destroy_rc, RT_OK);

    TST_RC(rt_aio_req_destroy(a), RT_OK);
    TST_RC(rt_aio_req_destroy(b), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    rt_mem_page_free(buf, 2 * BLOCK);
}

/* ------------------------------------------------------------------------------------ */
/* The creating thread at depth                                                         */

struct blocks {
    rt_file_t file;
    uint8_t *mem; /* DEPTH * BLOCK: request i's buffer is slot i */
    rt_aio_req_t *reqs;
    unsigned seed;
    unsigned bad; /* blocks read back wrong */
    rt_iovec_t iov[DEPTH][2];
};

static unsigned slot_of(const struct blocks *b, rt_aio_req_t req)
{
    for (unsigned i = 0; i < DEPTH; i++)
        if (b->reqs[i] == req)
            return i;
    CU_FAIL_FATAL("a request that was never submitted came back");
    return 0;
}

static uint8_t *buf_of(const struct blocks *b, rt_aio_req_t req)
{
    return b->mem + (size_t)slot_of(b, req) * BLOCK;
}

/* Block n lands at a scattered position, so neighbours in time are not in space. */
static uint64_t block_off(unsigned n)
{
    return (uint64_t)((n * 389u) % BLOCKS) * BLOCK;
}

/* The user value of a request carries its block number + 1. */
static unsigned block_of(rt_aio_req_t req)
{
    return (unsigned)((uintptr_t)rt_aio_req_get_user(req) - 1);
}

static void prep_write(struct blocks *b, rt_aio_req_t req, unsigned n)
{
    uint8_t *buf = buf_of(b, req);

    pat_fill(buf, block_off(n), BLOCK, b->seed);
    TST_RC_FATAL(rt_aio_req_prepare_write(req, b->file, block_off(n), buf, BLOCK,
                                          (void *)(uintptr_t)(n + 1)),
                 RT_OK);
}

/* Odd blocks are read in two pieces, so vectored reads take the same path. */
static void prep_read(struct blocks *b, rt_aio_req_t req, unsigned n)
{
    unsigned slot = slot_of(b, req);
    uint8_t *buf = buf_of(b, req);

    memset(buf, 0, BLOCK);
    if (n % 2 == 0) {
        TST_RC_FATAL(rt_aio_req_prepare_read(req, b->file, block_off(n), buf, BLOCK,
                                             (void *)(uintptr_t)(n + 1)),
                     RT_OK);
        return;
    }
    b->iov[slot][0].base = buf;
    b->iov[slot][0].len = BLOCK / 2;
    b->iov[slot][1].base = buf + BLOCK / 2;
    b->iov[slot][1].len = BLOCK / 2;
    TST_RC_FATAL(rt_aio_req_prepare_readv(req, b->file, block_off(n), b->iov[slot], 2,
                                          (void *)(uintptr_t)(n + 1)),
                 RT_OK);
}

/*
 * Runs BLOCKS requests through @a ctx from this thread, up to DEPTH in flight, as a
 * hypervisor's I/O loop would: submit what is ready, wait for at least one, prepare
 * those again.  Every request must come back once, RT_OK, with its full length; a read
 * is checked before its buffer is reused.
 */
static void pipeline(rt_aio_ctx_t ctx, struct blocks *b,
                     void (*prep)(struct blocks *b, rt_aio_req_t req, unsigned n))
{
    rt_aio_req_t ready[DEPTH];
    unsigned next = 0, finished = 0, in_flight = 0, n_ready = 0;

    for (unsigned i = 0; i < DEPTH; i++) {
        prep(b, b->reqs[i], next++);
        ready[n_ready++] = b->reqs[i];
    }
    while (finished < BLOCKS) {
        rt_aio_req_t done[DEPTH];
        uint32_t got = 0;

        if (n_ready > 0) {
            TST_RC_FATAL(rt_aio_ctx_submit(ctx, ready, n_ready), RT_OK);
            in_flight += n_ready;
            n_ready = 0;
        }
        TST_RC_FATAL(rt_aio_ctx_wait(ctx, 1, LONG_MS, done, DEPTH, &got), RT_OK);
        CU_ASSERT_FATAL(got >= 1 && got <= in_flight);
        in_flight -= got;
        for (uint32_t i = 0; i < got; i++) {
            size_t bytes = 0;

            TST_RC(rt_aio_req_get_rc(done[i], &bytes), RT_OK);
            CU_ASSERT_EQUAL(bytes, BLOCK);
            if (prep == prep_read &&
                !pat_check(buf_of(b, done[i]), block_off(block_of(done[i])), BLOCK, b->seed))
                b->bad++;
            finished++;
            if (next < BLOCKS) {
                prep(b, done[i], next++);
                ready[n_ready++] = done[i];
            }
        }
    }
}

static void owner_at_depth(const char *backend, bool direct)
{
    rt_aio_ctx_t ctx = owned_ctx(backend, DEPTH, 0);
    rt_aio_req_t reqs[DEPTH];
    struct blocks b;
    rt_iovec_t region;

    memset(&b, 0, sizeof b);
    b.file = tst_scratch_file(direct ? "depth-direct.dat" : "depth-cached.dat",
                              (uint64_t)BLOCKS * BLOCK, RT_FILE_READWRITE, direct);
    b.mem = rt_mem_page_alloc((size_t)DEPTH * BLOCK);
    b.reqs = reqs;
    b.seed = direct ? 11 : 12;
    CU_ASSERT_PTR_NOT_NULL_FATAL(b.mem);
    for (unsigned i = 0; i < DEPTH; i++)
        reqs[i] = req_new();
    /* As a hypervisor's I/O thread would run it: buffers registered once. */
    region.base = b.mem;
    region.len = (size_t)DEPTH * BLOCK;
    TST_RC(rt_aio_ctx_register_buffers(ctx, &region, 1), RT_OK);

    pipeline(ctx, &b, prep_write);
    TST_RC(rt_aio_req_prepare_flush(reqs[0], b.file, NULL), RT_OK);
    TST_RC(rt_aio_ctx_submit(ctx, &reqs[0], 1), RT_OK);
    reap_exactly(ctx, reqs[0]);
    TST_RC(rt_aio_req_get_rc(reqs[0], NULL), RT_OK);
    pipeline(ctx, &b, prep_read);
    CU_ASSERT_EQUAL(b.bad, 0);

    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    for (unsigned i = 0; i < DEPTH; i++)
        TST_RC(rt_aio_req_destroy(reqs[i]), RT_OK);
    TST_RC(rt_file_close(b.file), RT_OK);
    rt_mem_page_free(b.mem, (size_t)DEPTH * BLOCK);
}

/* ------------------------------------------------------------------------------------ */
/* Sleeping: wakeups from other threads, timeouts                                        */

struct late_wakeup {
    rt_aio_ctx_t ctx;
    unsigned delay_ms;
};

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void *wake_later(void *arg)
{
    struct late_wakeup *w = arg;

    sleep_ms(w->delay_ms);
    TST_RC(rt_aio_ctx_wakeup(w->ctx), RT_OK);
    return NULL;
}

static void owner_sleeps(const char *backend)
{
    rt_aio_ctx_t ctx = owned_ctx(backend, 4, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING);
    rt_aio_req_t done[4];
    uint32_t got = 99;
    uint64_t start, ms;

    /* Asleep (well past any spin) when the wakeup comes, ten times over: each wakeup
     * must find the sleeper, not only the first. */
    for (unsigned round = 0; round < 10; round++) {
        struct late_wakeup w = {.ctx = ctx, .delay_ms = 20};
        pthread_t thread;

        CU_ASSERT_EQUAL_FATAL(pthread_create(&thread, NULL, wake_later, &w), 0);
        start = rt_time_milli_ts();
        TST_RC(rt_aio_ctx_wait(ctx, 1, LONG_MS, done, 4, &got), RT_ERR_INTERRUPTED);
        ms = rt_time_milli_ts() - start;
        CU_ASSERT_EQUAL(got, 0);
        CU_ASSERT(ms < LATE_MS);
        pthread_join(thread, NULL);
    }

    start = rt_time_milli_ts();
    TST_RC(rt_aio_ctx_wait(ctx, 1, 100, done, 4, &got), RT_ERR_TIMEOUT);
    ms = rt_time_milli_ts() - start;
    CU_ASSERT(ms + EARLY_MS >= 100 && ms < 100 + LATE_MS);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
}

/* A signal handler on the waiting thread itself ends its wait (rt_aio_ctx_wakeup is
 * async-signal-safe), and leaves errno as it found it. */
static _Atomic(rt_aio_ctx_t) signal_ctx;
static atomic_int handler_errno_changed;

static void on_usr1(int sig)
{
    int interrupted_errno = errno; /* a handler must give it back as it found it */

    (void)sig;
    errno = EDOM;
    rt_aio_ctx_wakeup(atomic_load(&signal_ctx));
    if (errno != EDOM)
        atomic_store(&handler_errno_changed, 1);
    errno = interrupted_errno;
}

struct signal_later {
    pthread_t target;
    unsigned delay_ms;
};

static void *signal_later(void *arg)
{
    struct signal_later *s = arg;

    sleep_ms(s->delay_ms);
    pthread_kill(s->target, SIGUSR1);
    return NULL;
}

static void wakeup_from_handler(const char *backend)
{
    rt_aio_ctx_t ctx = owned_ctx(backend, 4, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING);
    struct signal_later later = {.target = pthread_self(), .delay_ms = 50};
    struct sigaction sa, old;
    rt_aio_req_t done[4];
    uint32_t got = 99;
    pthread_t thread;
    uint64_t start;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    CU_ASSERT_EQUAL_FATAL(sigaction(SIGUSR1, &sa, &old), 0);
    atomic_store(&signal_ctx, ctx);
    atomic_store(&handler_errno_changed, 0);

    CU_ASSERT_EQUAL_FATAL(pthread_create(&thread, NULL, signal_later, &later), 0);
    start = rt_time_milli_ts();
    TST_RC(rt_aio_ctx_wait(ctx, 1, LONG_MS, done, 4, &got), RT_ERR_INTERRUPTED);
    CU_ASSERT(rt_time_milli_ts() - start < LATE_MS);
    CU_ASSERT_EQUAL(got, 0);
    CU_ASSERT_EQUAL(atomic_load(&handler_errno_changed), 0);
    pthread_join(thread, NULL);

    sigaction(SIGUSR1, &old, NULL);
    atomic_store(&signal_ctx, RT_AIO_CTX_NIL);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
}

/* ------------------------------------------------------------------------------------ */
/* io_uring: a cancel the kernel carries out                                            */

static void owner_cancels_blocked_read(void)
{
    rt_aio_ctx_t ctx = owned_ctx("io_uring", 4, 0);
    rt_aio_req_t req = req_new(), done[4];
    rt_file_t fifo = RT_FILE_NIL;
    char path[512], buf[16];
    uint32_t got = 99;
    int writer;

    tst_path(path, sizeof path, "blocked.fifo");
    unlink(path);
    CU_ASSERT_EQUAL_FATAL(mkfifo(path, 0600), 0);
    TST_RC_FATAL(rt_file_open(&fifo, path, RT_FILE_READWRITE | RT_FILE_OPEN, 0), RT_OK);
    memset(buf, 'x', sizeof buf);
    TST_RC(rt_aio_req_prepare_read(req, fifo, 0, buf, sizeof buf, NULL), RT_OK);
    TST_RC(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    TST_RC(rt_aio_ctx_wait(ctx, 1, 50, done, 4, &got), RT_ERR_TIMEOUT); /* it blocks */
    TST_RC(rt_aio_req_cancel(req), RT_OK);
    TST_RC(rt_aio_req_get_rc(req, NULL), RT_ERR_AIO_CANCELED);
    CU_ASSERT_EQUAL(buf[0], 'x');
    TST_RC(rt_aio_ctx_wait(ctx, 1, 0, done, 4, &got), RT_ERR_AIO_NO_REQUEST);

    /* Reused at once, on the same FIFO: the cancelled read's completion must not come
     * back in its place. */
    writer = open(path, O_WRONLY | O_NONBLOCK);
    CU_ASSERT_FATAL(writer >= 0);
    CU_ASSERT_EQUAL(write(writer, "hello", 5), 5);
    close(writer);
    TST_RC(rt_aio_req_prepare_read(req, fifo, 0, buf, 5, NULL), RT_OK);
    TST_RC(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    reap_exactly(ctx, req);
    TST_RC(rt_aio_req_get_rc(req, NULL), RT_OK);
    CU_ASSERT(memcmp(buf, "hello", 5) == 0);

    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_file_close(fifo), RT_OK);
    unlink(path);
}

/* ------------------------------------------------------------------------------------ */

#define PER_BACKEND(fn)                                                                            \
    static void fn##_linux_aio(void)                                                               \
    {                                                                                              \
        fn("linux-aio");                                                                           \
    }                                                                                              \
    static void fn##_threads(void)                                                                 \
    {                                                                                              \
        fn("threads");                                                                             \
    }                                                                                              \
    static void fn##_io_uring(void)                                                                \
    {                                                                                              \
        fn("io_uring");                                                                            \
    }

static void owner_direct(const char *backend)
{
    owner_at_depth(backend, true);
}

static void owner_cached(const char *backend)
{
    owner_at_depth(backend, false);
}

PER_BACKEND(foreign_calls)
PER_BACKEND(owner_direct)
PER_BACKEND(owner_cached)
PER_BACKEND(owner_sleeps)
PER_BACKEND(wakeup_from_handler)

int main(void)
{
    static const struct {
        const char *name;
        CU_TestFunc fn[N_BACKENDS];
    } tests[] = {
        {"calls from another thread",
         {foreign_calls_linux_aio, foreign_calls_threads, foreign_calls_io_uring}},
        {"the owner at depth, O_DIRECT",
         {owner_direct_linux_aio, owner_direct_threads, owner_direct_io_uring}},
        {"the owner at depth, cached",
         {owner_cached_linux_aio, owner_cached_threads, owner_cached_io_uring}},
        {"the owner asleep: wakeups, timeout",
         {owner_sleeps_linux_aio, owner_sleeps_threads, owner_sleeps_io_uring}},
        {"wakeup from a signal handler",
         {wakeup_from_handler_linux_aio, wakeup_from_handler_threads,
          wakeup_from_handler_io_uring}},
    };
    unsigned available = 0;

    alarm(240);
    for (unsigned b = 0; b < N_BACKENDS; b++) {
        CU_pSuite suite = tst_backend_suite("single-thread", backend_names[b]);

        if (suite == NULL)
            continue;
        available++;
        for (size_t t = 0; t < sizeof tests / sizeof tests[0]; t++) {
            if (CU_add_test(suite, tests[t].name, tests[t].fn[b]) == NULL) {
                fprintf(stderr, "CUnit: %s\n", CU_get_error_msg());
                return 1;
            }
        }
        if (strcmp(backend_names[b], "io_uring") == 0)
            TST_ADD(suite, owner_cancels_blocked_read);
    }
    if (available == 0) {
        printf("SKIP: no file-AIO backend available\n");
        return TST_SKIP;
    }
    return tst_run();
}
