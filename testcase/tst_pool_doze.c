/*
 * The threads backend's doze (rt__tpool_sleep in src/generic/tpool.c): while enough
 * requests wait for a worker, a sleeping waiter is left asleep by the completions
 * that finish, until one finishes with a shallow backlog, a wakeup arrives, the
 * caller's deadline passes or the doze's own bound does.
 *
 * Every test but the stress run uses one worker and seven 4 KiB reads whose pread()
 * is gated (the rt__posix_sys table): each read blocks until the test opens its gate,
 * so the test decides which request finishes when and how many are still queued
 * behind it.  The waiter runs in its own thread and reports when its wait returns.
 *
 * With the bound raised to 10 s, a completion finished with 6, 5 and 4 requests still
 * queued must not end the wait (checked for 200 ms), and the one finished with 3 queued
 * must end it with all four.  With RT_AIO_POOL_DOZE=off the first completion ends it.
 * With the default bound a held completion arrives although nothing else finishes.
 * Before a gate opens, the test waits until the waiter is seen dozing (or, with dozing
 * off, asleep), so a completion cannot slip in while it is still awake.
 * Wakeups and the caller's timeout end a doze as they end any wait.  A stress run keeps
 * 32 reads in flight on 4 workers with a 10 s bound: a completion the ordering loses
 * would stall a wait for seconds.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include <rt/file.h>
#include <rt/time.h>

#include "internal/aio.h"
#include "internal/posix_sys.h"
#include "internal/tpool.h"
#include "tst_common.h"
#include "tst_data.h"

#define NREQS 7
#define BLOCK 4096u
#define MS    (UINT64_C(1000000)) /* nanoseconds */

static sem_t gates[NREQS];
static atomic_int entered[NREQS]; /* the worker reached this request's pread */
static ssize_t (*real_pread)(int fd, void *buf, size_t len, off_t off);

static ssize_t gated_pread(int fd, void *buf, size_t len, off_t off)
{
    int i = (int)(off / BLOCK);

    if (i >= 0 && i < NREQS) {
        atomic_fetch_add(&entered[i], 1);
        while (sem_wait(&gates[i]) != 0)
            ;
    }
    return real_pread(fd, buf, len, off);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Waits up to 5 s for the worker to enter request @a i; true when it has. */
static bool worker_reached(int i)
{
    for (int t = 0; t < 5000; t++) {
        if (atomic_load(&entered[i]) > 0)
            return true;
        sleep_ms(1);
    }
    return false;
}

/* One context, one worker, seven gated reads submitted. */
struct rig {
    rt_file_t file;
    rt_aio_ctx_t ctx;
    rt_aio_req_t reqs[NREQS];
    uint8_t *bufs;
    bool doze; /* RT_AIO_POOL_DOZE left on */
    pthread_t waiter;
    /* The waiter thread's wait and what it returned. */
    uint32_t timeout_ms;
    int rc;
    uint32_t got;
    rt_aio_req_t out[NREQS];
    atomic_bool returned;
    uint64_t returned_ns;
};

static void rig_start(struct rig *r, bool doze, uint64_t doze_max_ns)
{
    memset(r, 0, sizeof *r);
    r->doze = doze;
    for (int i = 0; i < NREQS; i++) {
        CU_ASSERT_EQUAL_FATAL(sem_init(&gates[i], 0, 0), 0);
        atomic_store(&entered[i], 0);
    }
    CU_ASSERT_EQUAL_FATAL(setenv("RT_AIO_THREADS", "1", 1), 0);
    CU_ASSERT_EQUAL_FATAL(
        doze ? unsetenv("RT_AIO_POOL_DOZE") : setenv("RT_AIO_POOL_DOZE", "off", 1), 0);
    r->file = tst_scratch_file("doze.dat", NREQS * BLOCK, RT_FILE_READWRITE, false);
    TST_RC_FATAL(rt_aio_ctx_create(&r->ctx, NREQS, RT_AIO_CTX_F_BACKEND_THREADS), RT_OK);
    rt__tpool_set_doze_max(r->ctx->backend_data, doze_max_ns);
    r->bufs = malloc(NREQS * BLOCK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r->bufs);
    for (int i = 0; i < NREQS; i++) {
        TST_RC_FATAL(rt_aio_req_create(&r->reqs[i]), RT_OK);
        TST_RC_FATAL(rt_aio_req_prepare_read(r->reqs[i], r->file, (uint64_t)i * BLOCK,
                                             r->bufs + i * BLOCK, BLOCK, (void *)(intptr_t)i),
                     RT_OK);
    }
    rt__posix_sys_reset(); /* a test that failed half-way may have left the gate in */
    real_pread = rt__posix_sys.pread;
    rt__posix_sys.pread = gated_pread;
    TST_RC_FATAL(rt_aio_ctx_submit(r->ctx, r->reqs, NREQS), RT_OK);
    CU_ASSERT_FATAL(worker_reached(0)); /* 6 queued behind it */
}

static void *waiter_main(void *arg)
{
    struct rig *r = arg;

    r->rc = rt_aio_ctx_wait(r->ctx, 1, r->timeout_ms, r->out, NREQS, &r->got);
    r->returned_ns = rt_time_nano_ts();
    atomic_store(&r->returned, true);
    return NULL;
}

/* Whether the waiter sleeps: in a doze when dozing is on, else on the doorbell. */
static bool rig_waiter_asleep(struct rig *r)
{
    if (r->doze)
        return rt__tpool_waiter_dozing(r->ctx->backend_data);
    return atomic_load(&r->ctx->waiter_sleeping);
}

/* Starts the waiter and waits (up to 5 s) until it sleeps. */
static void rig_wait_in_thread(struct rig *r, uint32_t timeout_ms)
{
    r->timeout_ms = timeout_ms;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&r->waiter, NULL, waiter_main, r), 0);
    for (int t = 0; t < 5000 && !rig_waiter_asleep(r); t++)
        sleep_ms(1);
    CU_ASSERT(rig_waiter_asleep(r));
    CU_ASSERT_FALSE(atomic_load(&r->returned));
}

/* Waits up to 2 s for the waiter thread to return; true when it has (then joined). */
static bool rig_waiter_returned(struct rig *r)
{
    for (int t = 0; t < 2000 && !atomic_load(&r->returned); t++)
        sleep_ms(1);
    if (!atomic_load(&r->returned))
        return false;
    pthread_join(r->waiter, NULL);
    return true;
}

/* Opens every gate, collects every request not yet returned and tears down. */
static void rig_finish(struct rig *r, uint32_t already_returned)
{
    uint32_t left = NREQS - already_returned;

    for (int i = 0; i < NREQS; i++)
        sem_post(&gates[i]);
    while (left > 0) {
        uint32_t got = 0;
        int rc = rt_aio_ctx_wait(r->ctx, 1, 5000, r->out, NREQS, &got);
        TST_RC(rc, RT_OK);
        if (rc != RT_OK)
            break;
        left -= got;
    }
    rt__posix_sys_reset();
    for (int i = 0; i < NREQS; i++) {
        TST_RC(rt_aio_req_destroy(r->reqs[i]), RT_OK);
        sem_destroy(&gates[i]);
    }
    TST_RC(rt_aio_ctx_destroy(r->ctx), RT_OK);
    TST_RC(rt_file_close(r->file), RT_OK);
    free(r->bufs);
    unsetenv("RT_AIO_THREADS");
    unsetenv("RT_AIO_POOL_DOZE");
}

/* Lets request @a i finish and waits until the worker holds the next one. */
static void finish_one(int i)
{
    sem_post(&gates[i]);
    CU_ASSERT_FATAL(worker_reached(i + 1));
}

/* Completions finished with 6, 5 and 4 requests queued stay with the dozing waiter;
 * the one finished with 3 queued wakes it, and it returns all four. */
static void test_doze_holds_while_backlog_deep(void)
{
    struct rig r;

    rig_start(&r, true, 10000 * MS);
    rig_wait_in_thread(&r, RT_INDEFINITE_WAIT);
    finish_one(0);
    sleep_ms(200);
    CU_ASSERT_FALSE(atomic_load(&r.returned));
    finish_one(1);
    finish_one(2);
    sleep_ms(100);
    CU_ASSERT_FALSE(atomic_load(&r.returned));
    finish_one(3);
    CU_ASSERT_FATAL(rig_waiter_returned(&r));
    TST_RC(r.rc, RT_OK);
    CU_ASSERT_EQUAL(r.got, 4);
    for (uint32_t k = 0; k < r.got && k < NREQS; k++)
        CU_ASSERT((intptr_t)rt_aio_req_get_user(r.out[k]) < 4);
    rig_finish(&r, r.got);
}

/* RT_AIO_POOL_DOZE=off: the first completion wakes the waiter, deep backlog or not. */
static void test_doze_off_wakes_at_once(void)
{
    struct rig r;

    rig_start(&r, false, 10000 * MS);
    rig_wait_in_thread(&r, RT_INDEFINITE_WAIT);
    finish_one(0);
    CU_ASSERT_FATAL(rig_waiter_returned(&r));
    TST_RC(r.rc, RT_OK);
    CU_ASSERT_EQUAL(r.got, 1);
    rig_finish(&r, r.got);
}

/* A held completion arrives within the doze's bound although nothing else finishes:
 * the next request stays gated, with 5 queued behind it, so no later post rings. */
static void test_doze_bound_delivers(void)
{
    struct rig r;
    uint64_t opened;

    rig_start(&r, true, RT__TPOOL_DOZE_MAX_NS);
    rig_wait_in_thread(&r, RT_INDEFINITE_WAIT);
    opened = rt_time_nano_ts();
    finish_one(0); /* posted with 6 queued: held */
    CU_ASSERT_FATAL(rig_waiter_returned(&r));
    TST_RC(r.rc, RT_OK);
    CU_ASSERT_EQUAL(r.got, 1);
    /* The bound is 1 ms; a second leaves room for a loaded or instrumented run. */
    CU_ASSERT(r.returned_ns - opened < 1000 * MS);
    rig_finish(&r, r.got);
}

/* The caller's timeout still ends a doze on time, neither later (a 10 s doze) nor
 * sooner (1 ms dozes, each ending by its bound). */
static void check_timeout(uint64_t doze_max_ns)
{
    struct rig r;
    uint64_t start;

    rig_start(&r, true, doze_max_ns);
    start = rt_time_nano_ts();
    rig_wait_in_thread(&r, 300);
    CU_ASSERT_FATAL(rig_waiter_returned(&r));
    TST_RC(r.rc, RT_ERR_TIMEOUT);
    CU_ASSERT_EQUAL(r.got, 0);
    CU_ASSERT(r.returned_ns - start >= 300 * MS);
    CU_ASSERT(r.returned_ns - start < 2000 * MS);
    rig_finish(&r, 0);
}

static void test_doze_timeout(void)
{
    check_timeout(10000 * MS);
    check_timeout(RT__TPOOL_DOZE_MAX_NS);
}

/* rt_aio_ctx_wakeup ends a doze at once (10 s bound, nothing finished). */
static void test_doze_wakeup(void)
{
    struct rig r;

    rig_start(&r, true, 10000 * MS);
    rig_wait_in_thread(&r, RT_INDEFINITE_WAIT);
    TST_RC(rt_aio_ctx_wakeup(r.ctx), RT_OK);
    CU_ASSERT_FATAL(rig_waiter_returned(&r));
    TST_RC(r.rc, RT_ERR_INTERRUPTED);
    CU_ASSERT_EQUAL(r.got, 0);
    rig_finish(&r, 0);
}

/*
 * Stress: 4 workers, 32 requests kept in flight, each read delayed 0-200 us, the doze's
 * bound raised to 10 s, and now and then a cancel by the waiter.  A completion the
 * ordering lets slip (pushed with the waiter asleep and nobody to ring) stalls a wait
 * for seconds: no wait may take 1 s, and every request submitted must come back or be
 * cancelled.  No wakeups here: one would end such a stall and hide it (wakeups during a
 * doze are test_doze_wakeup's).
 */
#define STRESS_DEPTH 32
#define STRESS_NS    (700 * MS)

/* The next of a 64-bit linear congruential sequence; its high bits are the random ones. */
static uint64_t next_random(uint64_t *state)
{
    *state = *state * 6364136223846793005u + 1442695040888963407u;
    return *state >> 33;
}

static _Thread_local uint64_t delay_seed;

static ssize_t delayed_pread(int fd, void *buf, size_t len, off_t off)
{
    struct timespec ts = {0, 0};

    if (delay_seed == 0)
        delay_seed = (uint64_t)(uintptr_t)&ts | 1u;
    ts.tv_nsec = (long)(next_random(&delay_seed) % 200000u);
    nanosleep(&ts, NULL);
    return real_pread(fd, buf, len, off);
}

static void test_doze_stress(void)
{
    rt_file_t file;
    rt_aio_ctx_t ctx;
    rt_aio_req_t reqs[STRESS_DEPTH], out[STRESS_DEPTH];
    uint8_t *bufs = malloc(STRESS_DEPTH * BLOCK);
    uint64_t start, longest = 0, seed = 42;
    unsigned long submitted = 0, returned = 0, cancelled = 0, in_flight = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(bufs);
    CU_ASSERT_EQUAL_FATAL(setenv("RT_AIO_THREADS", "4", 1), 0);
    CU_ASSERT_EQUAL_FATAL(unsetenv("RT_AIO_POOL_DOZE"), 0);
    file = tst_scratch_file("stress.dat", STRESS_DEPTH * BLOCK, RT_FILE_READWRITE, false);
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, STRESS_DEPTH, RT_AIO_CTX_F_BACKEND_THREADS), RT_OK);
    rt__tpool_set_doze_max(ctx->backend_data, 10000 * MS);
    rt__posix_sys_reset();
    real_pread = rt__posix_sys.pread;
    rt__posix_sys.pread = delayed_pread;
    for (int i = 0; i < STRESS_DEPTH; i++) {
        TST_RC_FATAL(rt_aio_req_create(&reqs[i]), RT_OK);
        TST_RC_FATAL(rt_aio_req_prepare_read(reqs[i], file, (uint64_t)i * BLOCK, bufs + i * BLOCK,
                                             BLOCK, (void *)(intptr_t)i),
                     RT_OK);
    }
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, STRESS_DEPTH), RT_OK);
    submitted = in_flight = STRESS_DEPTH;

    start = rt_time_nano_ts();
    while (in_flight > 0) {
        bool more = rt_time_nano_ts() - start < STRESS_NS;
        uint64_t before = rt_time_nano_ts();
        uint32_t got = 0;
        int rc = rt_aio_ctx_wait(ctx, 1, 20000, out, STRESS_DEPTH, &got);
        uint64_t took = rt_time_nano_ts() - before;

        if (took > longest)
            longest = took;
        TST_RC(rc, RT_OK);
        if (rc != RT_OK)
            break;
        returned += got;
        in_flight -= got;
        for (uint32_t k = 0; k < got; k++) {
            size_t done = 0;
            TST_RC(rt_aio_req_get_rc(out[k], &done), RT_OK);
            CU_ASSERT_EQUAL(done, BLOCK);
        }
        /* Now and then cancel one still in flight: taken back or running, either is
         * fine, and one taken back is never returned. */
        if (next_random(&seed) % 16 == 0) {
            rt_aio_req_t victim = reqs[next_random(&seed) % STRESS_DEPTH];
            if (rt_aio_req_cancel(victim) == RT_OK) {
                cancelled++;
                in_flight--;
                out[got++] = victim;
            }
        }
        if (!more || got == 0)
            continue;
        for (uint32_t k = 0; k < got; k++) {
            intptr_t i = (intptr_t)rt_aio_req_get_user(out[k]);
            TST_RC_FATAL(rt_aio_req_prepare_read(out[k], file, (uint64_t)i * BLOCK,
                                                 bufs + (size_t)i * BLOCK, BLOCK, (void *)i),
                         RT_OK);
        }
        TST_RC_FATAL(rt_aio_ctx_submit(ctx, out, got), RT_OK);
        submitted += got;
        in_flight += got;
    }
    rt__posix_sys_reset();
    printf("\n    %lu submitted, %lu returned, %lu cancelled, longest wait %.1f ms ", submitted,
           returned, cancelled, (double)longest / (double)MS);
    CU_ASSERT(submitted > 1000);
    CU_ASSERT_EQUAL(returned + cancelled, submitted);
    CU_ASSERT(longest < 1000 * MS);
    for (int i = 0; i < STRESS_DEPTH; i++)
        TST_RC(rt_aio_req_destroy(reqs[i]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    free(bufs);
    unsetenv("RT_AIO_THREADS");
}

int main(void)
{
    CU_pSuite suite;

    tst_require_backend("threads");
    /* A held completion that nothing delivers hangs the waiter: fail instead. */
    alarm(120);
    suite = tst_suite("threads backend, dozing waiter");
    TST_ADD(suite, test_doze_holds_while_backlog_deep);
    TST_ADD(suite, test_doze_off_wakes_at_once);
    TST_ADD(suite, test_doze_bound_delivers);
    TST_ADD(suite, test_doze_timeout);
    TST_ADD(suite, test_doze_wakeup);
    TST_ADD(suite, test_doze_stress);
    return tst_run();
}
