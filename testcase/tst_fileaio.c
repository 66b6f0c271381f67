/*
 * Conformance suite for the file-AIO contract (doc/fileaio.md, rules 1-17).
 *
 * The same source is built once per backend (TST_BACKEND) and every context it makes
 * forces that backend by flag, so one body proves the rules for each backend; the rules
 * a test covers are named above it.
 *
 * Error paths get as much weight as happy paths.  The contract's hard promises are about
 * what does NOT happen: a refused batch submits nothing, a failed prepare leaves the
 * request alone, a cancelled request is never returned, one bad request does not strand
 * its batch.  A suite that only pushed I/O through would pass a library that breaks all
 * of these, so after every refusal the tests look at each request and at the context
 * (a zero-timeout wait saying "nothing outstanding") to prove nothing moved.
 *
 * Timing checks use wide margins (hundreds of milliseconds) so a loaded CI host does not
 * fail them, and a watchdog alarm turns a hung wait into a failed run instead of a stuck
 * `make check`.
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <rt/file.h>
#include <rt/mem.h>
#include <rt/time.h>

#include "internal/posix_sys.h"
#include "tst_common.h"
#include "tst_data.h"

#ifndef TST_BACKEND
#error "build with -DTST_BACKEND='\"threads\"' (or \"linux-aio\", \"io_uring\")"
#endif

/* A bound for things that should take microseconds; only a hang reaches it. */
#define LONG_MS 10000u
/* Slack allowed on top of a timeout before we call the wait late. */
#define LATE_MS 1500u
/* How much earlier than its timeout a wait may return (clock granularity). */
#define EARLY_MS 20u

/* The flag that forces TST_BACKEND; every context below is created with it. */
static uint32_t backend_flag;

/* Memory that never held a handle: the library must see no magic in it and answer
 * RT_ERR_INVALID_HANDLE.  Large, so a handle struct of any size fits inside it. */
static union {
    max_align_t align;
    unsigned char bytes[65536];
} zeroed;
#define ZERO_REQ  ((rt_aio_req_t)(void *)&zeroed)
#define ZERO_CTX  ((rt_aio_ctx_t)(void *)&zeroed)
#define ZERO_FILE ((rt_file_t)(void *)&zeroed)

/* Signal dispositions at start-up, to prove the library installs no handler (rule 9). */
static struct sigaction start_actions[NSIG];
static bool start_action_valid[NSIG];

static unsigned file_seq;

/* ------------------------------------------------------------------------------------ */
/* Helpers                                                                              */

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static bool all_bytes(const void *buf, size_t len, uint8_t value)
{
    const uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        if (p[i] != value)
            return false;
    return true;
}

static rt_aio_ctx_t ctx_new(uint32_t max_reqs, uint32_t flags)
{
    rt_aio_ctx_t ctx = RT_AIO_CTX_NIL;
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, max_reqs, backend_flag | flags), RT_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ctx);
    return ctx;
}

static rt_aio_req_t req_new(void)
{
    rt_aio_req_t req = RT_AIO_REQ_NIL;
    TST_RC_FATAL(rt_aio_req_create(&req), RT_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(req);
    return req;
}

/* A handle that was live a moment ago.  Use it at once: a later create may legitimately
 * recycle the memory. */
static rt_aio_req_t dead_req(void)
{
    rt_aio_req_t req = req_new();
    TST_RC(rt_aio_req_destroy(req), RT_OK);
    return req;
}

static rt_aio_ctx_t dead_ctx(void)
{
    rt_aio_ctx_t ctx = ctx_new(4, 0);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    return ctx;
}

/* Creates a scratch file of @a size pattern bytes (seed 0) and opens it with @a flags
 * (access mode and hints; RT_FILE_OPEN is added).  The contents go in through a plain
 * handle first, because a RT_FILE_NO_CACHE handle could not write an unaligned tail.
 * Returns the status of the final open, so callers can skip on RT_ERR_NOT_SUPPORTED. */
static int scratch_open(rt_file_t *file, uint64_t size, uint32_t flags)
{
    char name[32], path[600];
    rt_file_t init = RT_FILE_NIL;
    int rc;

    *file = RT_FILE_NIL;
    snprintf(name, sizeof name, "f%u", ++file_seq);
    tst_path(path, sizeof path, name);
    rc = rt_file_open(&init, path, RT_FILE_READWRITE | RT_FILE_CREATE, 0);
    if (rc != RT_OK) {
        fprintf(stderr, "  cannot create %s: %s\n", path, rt_strerror(rc));
        return rc;
    }
    if (size > 0) {
        uint8_t *buf = malloc((size_t)size);
        if (buf == NULL) {
            rt_file_close(init);
            return RT_ERR_NO_MEMORY;
        }
        pat_fill(buf, 0, (size_t)size, 0);
        rc = rt_file_write_at(init, 0, buf, (size_t)size, NULL);
        free(buf);
        if (rc != RT_OK) {
            fprintf(stderr, "  cannot fill %s: %s\n", path, rt_strerror(rc));
            rt_file_close(init);
            return rc;
        }
    }
    rc = rt_file_close(init);
    if (rc != RT_OK)
        return rc;
    return rt_file_open(file, path, flags | RT_FILE_OPEN, 0);
}

static rt_file_t scratch(uint64_t size, uint32_t flags)
{
    rt_file_t file;
    TST_RC_FATAL(scratch_open(&file, size, flags), RT_OK);
    return file;
}

static rt_file_t dead_file(void)
{
    rt_file_t file = scratch(0, RT_FILE_READWRITE);
    TST_RC(rt_file_close(file), RT_OK);
    return file;
}

/* Collects @a want completed requests into @a out, waiting at most @a ms in total.
 * Returns how many it got; anything but RT_OK or RT_ERR_TIMEOUT from wait fails the
 * test (nobody calls wakeup while a test reaps). */
static size_t reap(rt_aio_ctx_t ctx, rt_aio_req_t *out, size_t want, uint32_t ms)
{
    uint64_t deadline = rt_time_milli_ts() + ms;
    size_t have = 0;

    while (have < want) {
        uint64_t now = rt_time_milli_ts();
        uint32_t got = UINT32_MAX;
        int rc;

        if (now >= deadline)
            break;
        rc = rt_aio_ctx_wait(ctx, 1, (uint32_t)(deadline - now), out + have, want - have, &got);
        if (got > want - have) {
            fprintf(stderr, "  wait set *got to %u with room for %zu\n", got, want - have);
            CU_FAIL("wait returned more requests than it had room for");
            break;
        }
        have += got;
        if (rc != RT_OK && rc != RT_ERR_TIMEOUT) {
            fprintf(stderr, "  reap: wait -> %s after %zu of %zu\n", rt_status_name(rc), have,
                    want);
            CU_FAIL("unexpected status from wait while reaping");
            break;
        }
    }
    if (have != want)
        fprintf(stderr, "  reap: got %zu of %zu requests\n", have, want);
    return have;
}

/* Asserts the context has nothing outstanding: a non-blocking wait must say so.  On a
 * context made with RT_AIO_CTX_F_WAIT_WITHOUT_PENDING that answer is a timeout. */
static void expect_idle(rt_aio_ctx_t ctx, bool wait_without_pending)
{
    rt_aio_req_t out[4];
    uint32_t got = 77;
    TST_RC(rt_aio_ctx_wait(ctx, 1, 0, out, 4, &got),
           wait_without_pending ? RT_ERR_TIMEOUT : RT_ERR_AIO_NO_REQUEST);
    CU_ASSERT_EQUAL(got, 0);
}

static size_t index_of(rt_aio_req_t const *set, size_t n, rt_aio_req_t req)
{
    for (size_t i = 0; i < n; i++)
        if (set[i] == req)
            return i;
    return SIZE_MAX;
}

/* Checks that @a got holds each of @a want exactly once (in any order). */
static void expect_same_set(rt_aio_req_t const *got, size_t n_got, rt_aio_req_t const *want,
                            size_t n_want)
{
    bool seen[256] = {false};
    CU_ASSERT_EQUAL(n_got, n_want);
    CU_ASSERT_FATAL(n_want <= 256);
    for (size_t i = 0; i < n_got; i++) {
        size_t at = index_of(want, n_want, got[i]);
        if (at == SIZE_MAX) {
            CU_FAIL("wait returned a request that was not expected");
            continue;
        }
        if (seen[at])
            CU_FAIL("wait returned the same request twice");
        seen[at] = true;
    }
}

/* A wait run on another thread, with its outcome kept for the main thread to assert
 * (CUnit assertions are not thread-safe). */
struct bg_wait {
    pthread_t thread;
    rt_aio_ctx_t ctx;
    size_t min, n;
    uint32_t timeout_ms;
    rt_aio_req_t reqs[64];
    uint32_t got;
    int rc;
    uint64_t elapsed_ms;
    atomic_bool started, finished;
};

static void *bg_wait_main(void *arg)
{
    struct bg_wait *w = arg;
    uint64_t t0 = rt_time_milli_ts();
    atomic_store(&w->started, true);
    w->rc = rt_aio_ctx_wait(w->ctx, w->min, w->timeout_ms, w->reqs, w->n, &w->got);
    w->elapsed_ms = rt_time_milli_ts() - t0;
    atomic_store(&w->finished, true);
    return NULL;
}

static void bg_wait_start(struct bg_wait *w, rt_aio_ctx_t ctx, size_t min, size_t n,
                          uint32_t timeout_ms)
{
    memset(w, 0, sizeof *w);
    w->ctx = ctx;
    w->min = min;
    w->n = n;
    w->timeout_ms = timeout_ms;
    w->got = UINT32_MAX;
    w->rc = 1;
    atomic_init(&w->started, false);
    atomic_init(&w->finished, false);
    CU_ASSERT_FATAL(n <= 64);
    CU_ASSERT_FATAL(pthread_create(&w->thread, NULL, bg_wait_main, w) == 0);
    while (!atomic_load(&w->started))
        sleep_ms(1);
    /* Give it time to block inside wait; the tests hold up either way, this only makes
     * them exercise the blocked case rather than the remembered one. */
    sleep_ms(50);
}

static void bg_wait_join(struct bg_wait *w)
{
    pthread_join(w->thread, NULL);
}

/* ------------------------------------------------------------------------------------ */
/* Limits, contexts, backend choice                                                     */

/* rt_aio_get_limits: NULL refused; sane alignment every page-aligned buffer meets. */
static void test_limits(void)
{
    rt_aio_limits_t limits;
    size_t page = rt_mem_page_size();

    TST_RC(rt_aio_get_limits(NULL), RT_ERR_INVALID_POINTER);
    memset(&limits, 0, sizeof limits);
    TST_RC_FATAL(rt_aio_get_limits(&limits), RT_OK);
    CU_ASSERT(limits.max_reqs_outstanding > 0);
    CU_ASSERT_FATAL(limits.buffer_alignment > 0);
    CU_ASSERT((limits.buffer_alignment & (limits.buffer_alignment - 1)) == 0);
    CU_ASSERT(page > 0 && page % limits.buffer_alignment == 0);
}

/* Rule 14: create's argument checks, capacity reporting, handle checks of the getters. */
static void test_ctx_create(void)
{
    const uint32_t backends[3] = {RT_AIO_CTX_F_BACKEND_LINUX_AIO, RT_AIO_CTX_F_BACKEND_IO_URING,
                                  RT_AIO_CTX_F_BACKEND_THREADS};
    const uint32_t known =
        RT_AIO_CTX_F_WAIT_WITHOUT_PENDING | RT_AIO_CTX_F_SINGLE_THREAD | backends[0] | backends[1] |
        backends[2];
    rt_aio_ctx_t ctx;
    int rc;

    TST_RC(rt_aio_ctx_create(NULL, 8, backend_flag), RT_ERR_INVALID_POINTER);

    ctx = ZERO_CTX;
    TST_RC(rt_aio_ctx_create(&ctx, 0, backend_flag), RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_PTR_NULL(ctx);
    ctx = ZERO_CTX;
    TST_RC(rt_aio_ctx_create(&ctx, 0, backend_flag | RT_AIO_CTX_F_WAIT_WITHOUT_PENDING),
           RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_PTR_NULL(ctx);

    for (unsigned bit = 0; bit < 32; bit++) {
        uint32_t flag = 1u << bit;
        if (flag & known)
            continue;
        ctx = ZERO_CTX;
        rc = rt_aio_ctx_create(&ctx, 8, backend_flag | flag);
        if (rc != RT_ERR_INVALID_PARAMETER)
            fprintf(stderr, "  unknown flag 0x%08x -> %s\n", flag, rt_status_name(rc));
        CU_ASSERT_EQUAL(rc, RT_ERR_INVALID_PARAMETER);
        CU_ASSERT_PTR_NULL(ctx);
        if (rc == RT_OK)
            rt_aio_ctx_destroy(ctx);
    }

    /* Two backend flags contradict each other, whether or not either is available. */
    for (unsigned i = 0; i < 3; i++) {
        for (unsigned j = i + 1; j < 3; j++) {
            ctx = ZERO_CTX;
            rc = rt_aio_ctx_create(&ctx, 8, backends[i] | backends[j]);
            if (rc != RT_ERR_INVALID_PARAMETER)
                fprintf(stderr, "  flags 0x%x -> %s\n", backends[i] | backends[j],
                        rt_status_name(rc));
            CU_ASSERT_EQUAL(rc, RT_ERR_INVALID_PARAMETER);
            CU_ASSERT_PTR_NULL(ctx);
            if (rc == RT_OK)
                rt_aio_ctx_destroy(ctx);
        }
    }
    ctx = ZERO_CTX;
    TST_RC(rt_aio_ctx_create(&ctx, 8, backends[0] | backends[1] | backends[2]),
           RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_PTR_NULL(ctx);

    ctx = ctx_new(7, 0);
    CU_ASSERT_EQUAL(rt_aio_ctx_get_max_req_count(ctx), 7);
    CU_ASSERT_PTR_NOT_NULL(rt_aio_ctx_get_backend(ctx));
    if (rt_aio_ctx_get_backend(ctx) != NULL)
        CU_ASSERT_STRING_EQUAL(rt_aio_ctx_get_backend(ctx), TST_BACKEND);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);

    ctx = ctx_new(1, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING);
    CU_ASSERT_EQUAL(rt_aio_ctx_get_max_req_count(ctx), 1);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);

    /* "Unlimited" is accepted by every backend and reported as such. */
    ctx = ctx_new(RT_AIO_UNLIMITED_REQS, 0);
    CU_ASSERT_EQUAL(rt_aio_ctx_get_max_req_count(ctx), RT_AIO_UNLIMITED_REQS);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    ctx = ctx_new(RT_AIO_UNLIMITED_REQS, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING);
    CU_ASSERT_EQUAL(rt_aio_ctx_get_max_req_count(ctx), RT_AIO_UNLIMITED_REQS);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);

    CU_ASSERT_EQUAL(rt_aio_ctx_get_max_req_count(RT_AIO_CTX_NIL), 0);
    CU_ASSERT_EQUAL(rt_aio_ctx_get_max_req_count(ZERO_CTX), 0);
    CU_ASSERT_EQUAL(rt_aio_ctx_get_max_req_count(dead_ctx()), 0);
    CU_ASSERT_PTR_NULL(rt_aio_ctx_get_backend(RT_AIO_CTX_NIL));
    CU_ASSERT_PTR_NULL(rt_aio_ctx_get_backend(ZERO_CTX));
    CU_ASSERT_PTR_NULL(rt_aio_ctx_get_backend(dead_ctx()));
}

/* Rule 13 (context half): NIL is fine, a never-created or freed handle is refused. */
static void test_ctx_destroy_args(void)
{
    TST_RC(rt_aio_ctx_destroy(RT_AIO_CTX_NIL), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ZERO_CTX), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_ctx_destroy(dead_ctx()), RT_ERR_INVALID_HANDLE);
}

/* The backend name of a flagged context is the one asked for, and stays the same. */
static void test_ctx_get_backend(void)
{
    rt_aio_ctx_t ctx = ctx_new(4, 0);
    const char *name = rt_aio_ctx_get_backend(ctx);
    CU_ASSERT_PTR_NOT_NULL_FATAL(name);
    CU_ASSERT_STRING_EQUAL(name, TST_BACKEND);
    CU_ASSERT_PTR_EQUAL(rt_aio_ctx_get_backend(ctx), name);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
}

static bool known_backend_name(const char *name)
{
    return name != NULL && (strcmp(name, "linux-aio") == 0 || strcmp(name, "io_uring") == 0 ||
                            strcmp(name, "threads") == 0);
}

/* Backend choice: RT_AIO_BACKEND steers flagless contexts only; a name no build has is
 * a backend that is not available (RT_ERR_NOT_SUPPORTED, as the contract says for a
 * backend asked for by variable).  The caller's environment is restored afterwards. */
static void test_backend_env(void)
{
    const char *old = getenv("RT_AIO_BACKEND");
    char *saved = old != NULL ? strdup(old) : NULL;
    rt_aio_ctx_t ctx;
    int rc;

    CU_ASSERT_FATAL(old == NULL || saved != NULL);

    CU_ASSERT_EQUAL(setenv("RT_AIO_BACKEND", "no-such-backend", 1), 0);
    ctx = ZERO_CTX;
    rc = rt_aio_ctx_create(&ctx, 8, 0);
    TST_RC(rc, RT_ERR_NOT_SUPPORTED);
    CU_ASSERT_PTR_NULL(ctx);
    if (rc == RT_OK)
        rt_aio_ctx_destroy(ctx);
    ctx = ZERO_CTX;
    rc = rt_aio_ctx_create(&ctx, 8, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING);
    TST_RC(rc, RT_ERR_NOT_SUPPORTED);
    if (rc == RT_OK)
        rt_aio_ctx_destroy(ctx);

    /* A backend flag outranks the variable. */
    ctx = RT_AIO_CTX_NIL;
    rc = rt_aio_ctx_create(&ctx, 8, backend_flag);
    TST_RC(rc, RT_OK);
    if (rc == RT_OK) {
        CU_ASSERT_STRING_EQUAL(rt_aio_ctx_get_backend(ctx), TST_BACKEND);
        TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    }

    /* Naming this (available) backend makes a flagless context use it. */
    CU_ASSERT_EQUAL(setenv("RT_AIO_BACKEND", TST_BACKEND, 1), 0);
    ctx = RT_AIO_CTX_NIL;
    rc = rt_aio_ctx_create(&ctx, 8, 0);
    TST_RC(rc, RT_OK);
    if (rc == RT_OK) {
        const char *name = rt_aio_ctx_get_backend(ctx);
        CU_ASSERT_PTR_NOT_NULL(name);
        if (name != NULL)
            CU_ASSERT_STRING_EQUAL(name, TST_BACKEND);
        TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    }

    /* Without the variable the library picks one of its backends. */
    CU_ASSERT_EQUAL(unsetenv("RT_AIO_BACKEND"), 0);
    ctx = RT_AIO_CTX_NIL;
    rc = rt_aio_ctx_create(&ctx, 8, 0);
    TST_RC(rc, RT_OK);
    if (rc == RT_OK) {
        CU_ASSERT(known_backend_name(rt_aio_ctx_get_backend(ctx)));
        TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    }

    if (saved != NULL) {
        setenv("RT_AIO_BACKEND", saved, 1);
        free(saved);
    }
}

/* rt_aio_ctx_associate_with_file: accepted for live handles, refused otherwise; I/O
 * works on associated and on other files alike. */
static void test_associate(void)
{
    rt_aio_ctx_t ctx = ctx_new(4, 0);
    rt_file_t file = scratch(4096, RT_FILE_READWRITE);
    rt_file_t other = scratch(4096, RT_FILE_READ);
    rt_aio_req_t reqs[2] = {req_new(), req_new()}, out[2];
    uint8_t buf[2][512];
    size_t n;

    TST_RC(rt_aio_ctx_associate_with_file(ctx, file), RT_OK);
    TST_RC(rt_aio_ctx_associate_with_file(RT_AIO_CTX_NIL, file), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_ctx_associate_with_file(ZERO_CTX, file), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_ctx_associate_with_file(dead_ctx(), file), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_ctx_associate_with_file(ctx, RT_FILE_NIL), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_ctx_associate_with_file(ctx, ZERO_FILE), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_ctx_associate_with_file(ctx, dead_file()), RT_ERR_INVALID_HANDLE);

    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[0], file, 100, buf[0], 512, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[1], other, 200, buf[1], 512, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, 2), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 2, LONG_MS), 2);
    expect_same_set(out, 2, reqs, 2);
    for (int i = 0; i < 2; i++) {
        n = 0;
        TST_RC(rt_aio_req_get_rc(reqs[i], &n), RT_OK);
        CU_ASSERT_EQUAL(n, 512);
    }
    CU_ASSERT(pat_check(buf[0], 100, 512, 0));
    CU_ASSERT(pat_check(buf[1], 200, 512, 0));

    TST_RC(rt_aio_req_destroy(reqs[0]), RT_OK);
    TST_RC(rt_aio_req_destroy(reqs[1]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    TST_RC(rt_file_close(other), RT_OK);
}

/* Reads @a len bytes at @a off into @a buf through @a ctx and checks them against the
 * scratch pattern. */
static void read_and_check(rt_aio_ctx_t ctx, rt_file_t file, uint64_t off, void *buf, size_t len)
{
    rt_aio_req_t req = req_new(), out;
    size_t n = 0;

    memset(buf, 0xee, len);
    TST_RC_FATAL(rt_aio_req_prepare_read(req, file, off, buf, len, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, len);
    CU_ASSERT(pat_check(buf, off, len, 0));
    TST_RC(rt_aio_req_destroy(req), RT_OK);
}

/* The registered-buffer extension: argument checks, busy, and correct data from
 * buffers inside, across the edge of, and outside the registered regions.  The two
 * regions are registered in falling address order, so a backend that confused its
 * sorted table with the kernel's indices would point the kernel at the wrong region
 * (io_uring answers EFAULT) and fail here. */
static void test_register_buffers(void)
{
    enum { REGION = 16384 };
    rt_aio_ctx_t ctx = ctx_new(4, 0);
    rt_file_t file = scratch(4 * REGION, RT_FILE_READWRITE);
    uint8_t *mem = rt_mem_page_alloc(3 * REGION);
    rt_iovec_t regions[2], bad;
    rt_aio_req_t req = req_new(), out;
    size_t n = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(mem);
    regions[0].base = mem + 2 * REGION; /* the higher one first */
    regions[0].len = REGION;
    regions[1].base = mem;
    regions[1].len = REGION;

    TST_RC(rt_aio_ctx_register_buffers(RT_AIO_CTX_NIL, regions, 2), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_ctx_register_buffers(dead_ctx(), regions, 2), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_ctx_register_buffers(ctx, NULL, 1), RT_ERR_INVALID_POINTER);
    TST_RC(rt_aio_ctx_register_buffers(ctx, regions, RT_AIO_MAX_REGISTERED_BUFFERS + 1),
           RT_ERR_INVALID_PARAMETER);
    bad.base = NULL;
    bad.len = REGION;
    TST_RC(rt_aio_ctx_register_buffers(ctx, &bad, 1), RT_ERR_INVALID_POINTER);
    bad.base = mem;
    bad.len = 0;
    TST_RC(rt_aio_ctx_register_buffers(ctx, &bad, 1), RT_ERR_INVALID_PARAMETER);
    bad.len = RT_AIO_MAX_REGISTERED_BUFFER_SIZE + 1;
    TST_RC(rt_aio_ctx_register_buffers(ctx, &bad, 1), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_aio_ctx_register_buffers(ctx, NULL, 0), RT_OK); /* nothing to remove */

    TST_RC_FATAL(rt_aio_ctx_register_buffers(ctx, regions, 2), RT_OK);
    read_and_check(ctx, file, 0, mem + 2 * REGION, REGION);        /* all of region 0 */
    read_and_check(ctx, file, 4096, mem + 100, 4000);              /* inside region 1 */
    read_and_check(ctx, file, 8192, mem + REGION - 512, 4096);     /* across its end */
    read_and_check(ctx, file, REGION, mem + REGION + 512, 2048);   /* in neither */

    /* A write from a registered buffer lands. */
    pat_fill(mem + 2 * REGION, 3 * REGION, REGION, 0);
    TST_RC_FATAL(rt_aio_req_prepare_write(req, file, 3 * REGION, mem + 2 * REGION, REGION, NULL),
                 RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    /* Outstanding until reaped: no change now. */
    TST_RC(rt_aio_ctx_register_buffers(ctx, NULL, 0), RT_ERR_AIO_BUSY);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, REGION);
    read_and_check(ctx, file, 3 * REGION, mem, REGION);

    /* Replaced by one region, then removed: I/O goes on either way. */
    TST_RC(rt_aio_ctx_register_buffers(ctx, &regions[1], 1), RT_OK);
    read_and_check(ctx, file, 0, mem, REGION);
    read_and_check(ctx, file, 0, mem + 2 * REGION, REGION);
    TST_RC(rt_aio_ctx_register_buffers(ctx, NULL, 0), RT_OK);
    read_and_check(ctx, file, 0, mem, REGION);

    /* Destroying the context with buffers registered releases them. */
    TST_RC(rt_aio_ctx_register_buffers(ctx, regions, 2), RT_OK);
    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    rt_mem_page_free(mem, 3 * REGION);
}

/* ------------------------------------------------------------------------------------ */
/* Requests: creation, preparation, state machine                                       */

/* Rules 1, 11, 12, 13: a fresh request reports "not submitted" everywhere; every
 * request call refuses NIL, never-created and freed handles. */
static void test_req_create(void)
{
    rt_aio_req_t req = ZERO_REQ, second;
    size_t n = 12345;

    TST_RC(rt_aio_req_create(NULL), RT_ERR_INVALID_POINTER);
    TST_RC_FATAL(rt_aio_req_create(&req), RT_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(req);
    CU_ASSERT(req != ZERO_REQ);
    second = req_new();
    CU_ASSERT(second != req);

    TST_RC(rt_aio_req_get_rc(req, &n), RT_ERR_AIO_NOT_SUBMITTED);
    TST_RC(rt_aio_req_get_rc(req, NULL), RT_ERR_AIO_NOT_SUBMITTED);
    CU_ASSERT_PTR_NULL(rt_aio_req_get_user(req));
    TST_RC(rt_aio_req_cancel(req), RT_ERR_AIO_NOT_SUBMITTED);
    /* Still fresh after all that. */
    TST_RC(rt_aio_req_get_rc(req, NULL), RT_ERR_AIO_NOT_SUBMITTED);

    TST_RC(rt_aio_req_get_rc(RT_AIO_REQ_NIL, &n), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_req_get_rc(ZERO_REQ, &n), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_req_get_rc(dead_req(), &n), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_req_cancel(RT_AIO_REQ_NIL), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_req_cancel(ZERO_REQ), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_req_cancel(dead_req()), RT_ERR_INVALID_HANDLE);
    CU_ASSERT_PTR_NULL(rt_aio_req_get_user(RT_AIO_REQ_NIL));
    CU_ASSERT_PTR_NULL(rt_aio_req_get_user(ZERO_REQ));
    CU_ASSERT_PTR_NULL(rt_aio_req_get_user(dead_req()));

    TST_RC(rt_aio_req_destroy(RT_AIO_REQ_NIL), RT_OK);
    TST_RC(rt_aio_req_destroy(ZERO_REQ), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_req_destroy(req), RT_OK);
    /* Destroying twice: the second call sees a dead handle. */
    TST_RC(rt_aio_req_destroy(req), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_req_destroy(second), RT_OK);
}

/* What a failed prepare must not change. */
struct kept {
    rt_aio_req_t req;
    void *user; /* the user value of the last successful prepare */
    int state;  /* what get_rc reports: NOT_SUBMITTED when prepared, RT_OK when completed */
    size_t transferred;
};

static void expect_kept(int rc, int want, const char *what, const struct kept *k)
{
    size_t n = 999999;
    int state;

    if (rc != want)
        fprintf(stderr, "  %s -> %s, expected %s\n", what, rt_status_name(rc),
                rt_status_name(want));
    CU_ASSERT_EQUAL(rc, want);
    if (rt_aio_req_get_user(k->req) != k->user) {
        fprintf(stderr, "  %s changed the request's user value\n", what);
        CU_FAIL("failed prepare changed the user value");
    }
    state = rt_aio_req_get_rc(k->req, &n);
    if (state != k->state) {
        fprintf(stderr, "  after %s: get_rc -> %s, expected %s\n", what, rt_status_name(state),
                rt_status_name(k->state));
        CU_FAIL("failed prepare changed the request's state");
    }
    if (state == RT_OK && n != k->transferred)
        CU_FAIL("failed prepare changed the completed request's byte count");
}

/* Runs every invalid prepare the contract names against k->req (and against bad
 * request handles), checking after each that k->req is exactly as it was. */
static void bad_prepares(const struct kept *k, rt_file_t file)
{
    static uint8_t buf[512];
    static int other_user;
    const uint64_t max = (uint64_t)INT64_MAX;
    rt_iovec_t iov[2] = {{buf, 100}, {buf + 100, 100}};
    rt_iovec_t empty[2] = {{buf, 0}, {buf + 1, 0}};
    rt_iovec_t null_base[2] = {{buf, 10}, {NULL, 10}};
    rt_iovec_t huge[2] = {{buf, SIZE_MAX / 2 + 1}, {buf, SIZE_MAX / 2 + 1}};
    rt_iovec_t *many = calloc(1025, sizeof *many);
    rt_aio_req_t req = k->req;
    void *u = &other_user;
    rt_file_t dead;

    CU_ASSERT_PTR_NOT_NULL_FATAL(many);
    for (unsigned i = 0; i < 1025; i++) {
        many[i].base = buf + (i % 512);
        many[i].len = 1;
    }

    /* Bad request handles. */
    expect_kept(rt_aio_req_prepare_read(RT_AIO_REQ_NIL, file, 0, buf, 10, u), RT_ERR_INVALID_HANDLE,
                "read on NIL req", k);
    expect_kept(rt_aio_req_prepare_read(ZERO_REQ, file, 0, buf, 10, u), RT_ERR_INVALID_HANDLE,
                "read on zeroed req", k);
    expect_kept(rt_aio_req_prepare_read(dead_req(), file, 0, buf, 10, u), RT_ERR_INVALID_HANDLE,
                "read on dead req", k);
    expect_kept(rt_aio_req_prepare_write(RT_AIO_REQ_NIL, file, 0, buf, 10, u),
                RT_ERR_INVALID_HANDLE, "write on NIL req", k);
    expect_kept(rt_aio_req_prepare_write(ZERO_REQ, file, 0, buf, 10, u), RT_ERR_INVALID_HANDLE,
                "write on zeroed req", k);
    expect_kept(rt_aio_req_prepare_write(dead_req(), file, 0, buf, 10, u), RT_ERR_INVALID_HANDLE,
                "write on dead req", k);
    expect_kept(rt_aio_req_prepare_readv(RT_AIO_REQ_NIL, file, 0, iov, 2, u), RT_ERR_INVALID_HANDLE,
                "readv on NIL req", k);
    expect_kept(rt_aio_req_prepare_readv(ZERO_REQ, file, 0, iov, 2, u), RT_ERR_INVALID_HANDLE,
                "readv on zeroed req", k);
    expect_kept(rt_aio_req_prepare_readv(dead_req(), file, 0, iov, 2, u), RT_ERR_INVALID_HANDLE,
                "readv on dead req", k);
    expect_kept(rt_aio_req_prepare_writev(RT_AIO_REQ_NIL, file, 0, iov, 2, u),
                RT_ERR_INVALID_HANDLE, "writev on NIL req", k);
    expect_kept(rt_aio_req_prepare_writev(ZERO_REQ, file, 0, iov, 2, u), RT_ERR_INVALID_HANDLE,
                "writev on zeroed req", k);
    expect_kept(rt_aio_req_prepare_writev(dead_req(), file, 0, iov, 2, u), RT_ERR_INVALID_HANDLE,
                "writev on dead req", k);
    expect_kept(rt_aio_req_prepare_flush(RT_AIO_REQ_NIL, file, u), RT_ERR_INVALID_HANDLE,
                "flush on NIL req", k);
    expect_kept(rt_aio_req_prepare_flush(ZERO_REQ, file, u), RT_ERR_INVALID_HANDLE,
                "flush on zeroed req", k);
    expect_kept(rt_aio_req_prepare_flush(dead_req(), file, u), RT_ERR_INVALID_HANDLE,
                "flush on dead req", k);

    /* Bad file handles.  The dead file is made last so no allocation can recycle it. */
    dead = dead_file();
    expect_kept(rt_aio_req_prepare_read(req, RT_FILE_NIL, 0, buf, 10, u), RT_ERR_INVALID_HANDLE,
                "read NIL file", k);
    expect_kept(rt_aio_req_prepare_read(req, ZERO_FILE, 0, buf, 10, u), RT_ERR_INVALID_HANDLE,
                "read zeroed file", k);
    expect_kept(rt_aio_req_prepare_read(req, dead, 0, buf, 10, u), RT_ERR_INVALID_HANDLE,
                "read closed file", k);
    expect_kept(rt_aio_req_prepare_write(req, RT_FILE_NIL, 0, buf, 10, u), RT_ERR_INVALID_HANDLE,
                "write NIL file", k);
    expect_kept(rt_aio_req_prepare_write(req, ZERO_FILE, 0, buf, 10, u), RT_ERR_INVALID_HANDLE,
                "write zeroed file", k);
    expect_kept(rt_aio_req_prepare_write(req, dead, 0, buf, 10, u), RT_ERR_INVALID_HANDLE,
                "write closed file", k);
    expect_kept(rt_aio_req_prepare_readv(req, RT_FILE_NIL, 0, iov, 2, u), RT_ERR_INVALID_HANDLE,
                "readv NIL file", k);
    expect_kept(rt_aio_req_prepare_readv(req, ZERO_FILE, 0, iov, 2, u), RT_ERR_INVALID_HANDLE,
                "readv zeroed file", k);
    expect_kept(rt_aio_req_prepare_readv(req, dead, 0, iov, 2, u), RT_ERR_INVALID_HANDLE,
                "readv closed file", k);
    expect_kept(rt_aio_req_prepare_writev(req, RT_FILE_NIL, 0, iov, 2, u), RT_ERR_INVALID_HANDLE,
                "writev NIL file", k);
    expect_kept(rt_aio_req_prepare_writev(req, ZERO_FILE, 0, iov, 2, u), RT_ERR_INVALID_HANDLE,
                "writev zeroed file", k);
    expect_kept(rt_aio_req_prepare_writev(req, dead, 0, iov, 2, u), RT_ERR_INVALID_HANDLE,
                "writev closed file", k);
    expect_kept(rt_aio_req_prepare_flush(req, RT_FILE_NIL, u), RT_ERR_INVALID_HANDLE,
                "flush NIL file", k);
    expect_kept(rt_aio_req_prepare_flush(req, ZERO_FILE, u), RT_ERR_INVALID_HANDLE,
                "flush zeroed file", k);
    expect_kept(rt_aio_req_prepare_flush(req, dead, u), RT_ERR_INVALID_HANDLE, "flush closed file",
                k);

    /* NULL buffers and empty transfers. */
    expect_kept(rt_aio_req_prepare_read(req, file, 0, NULL, 10, u), RT_ERR_INVALID_POINTER,
                "read NULL buf", k);
    expect_kept(rt_aio_req_prepare_write(req, file, 0, NULL, 10, u), RT_ERR_INVALID_POINTER,
                "write NULL buf", k);
    expect_kept(rt_aio_req_prepare_readv(req, file, 0, NULL, 2, u), RT_ERR_INVALID_POINTER,
                "readv NULL iov", k);
    expect_kept(rt_aio_req_prepare_writev(req, file, 0, NULL, 2, u), RT_ERR_INVALID_POINTER,
                "writev NULL iov", k);
    expect_kept(rt_aio_req_prepare_readv(req, file, 0, null_base, 2, u), RT_ERR_INVALID_POINTER,
                "readv NULL base with a length", k);
    expect_kept(rt_aio_req_prepare_writev(req, file, 0, null_base, 2, u), RT_ERR_INVALID_POINTER,
                "writev NULL base with a length", k);
    expect_kept(rt_aio_req_prepare_read(req, file, 0, buf, 0, u), RT_ERR_INVALID_PARAMETER,
                "read len 0", k);
    expect_kept(rt_aio_req_prepare_write(req, file, 0, buf, 0, u), RT_ERR_INVALID_PARAMETER,
                "write len 0", k);
    expect_kept(rt_aio_req_prepare_readv(req, file, 0, iov, 0, u), RT_ERR_INVALID_PARAMETER,
                "readv iovcnt 0", k);
    expect_kept(rt_aio_req_prepare_writev(req, file, 0, iov, 0, u), RT_ERR_INVALID_PARAMETER,
                "writev iovcnt 0", k);
    expect_kept(rt_aio_req_prepare_readv(req, file, 0, empty, 2, u), RT_ERR_INVALID_PARAMETER,
                "readv total length 0", k);
    expect_kept(rt_aio_req_prepare_writev(req, file, 0, empty, 2, u), RT_ERR_INVALID_PARAMETER,
                "writev total length 0", k);
    expect_kept(rt_aio_req_prepare_readv(req, file, 0, many, 1025, u), RT_ERR_INVALID_PARAMETER,
                "readv 1025 entries", k);
    expect_kept(rt_aio_req_prepare_writev(req, file, 0, many, 1025, u), RT_ERR_INVALID_PARAMETER,
                "writev 1025 entries", k);

    /* Ranges past INT64_MAX, including ones whose end wraps around 2^64. */
    expect_kept(rt_aio_req_prepare_read(req, file, max, buf, 1, u), RT_ERR_OUT_OF_RANGE,
                "read at INT64_MAX", k);
    expect_kept(rt_aio_req_prepare_read(req, file, max - 50, buf, 100, u), RT_ERR_OUT_OF_RANGE,
                "read across INT64_MAX", k);
    expect_kept(rt_aio_req_prepare_read(req, file, UINT64_MAX, buf, 2, u), RT_ERR_OUT_OF_RANGE,
                "read wrapping 2^64", k);
    expect_kept(rt_aio_req_prepare_write(req, file, max - 50, buf, 100, u), RT_ERR_OUT_OF_RANGE,
                "write across INT64_MAX", k);
    expect_kept(rt_aio_req_prepare_write(req, file, UINT64_MAX - 1, buf, 10, u),
                RT_ERR_OUT_OF_RANGE, "write wrapping 2^64", k);
    expect_kept(rt_aio_req_prepare_readv(req, file, max - 150, iov, 2, u), RT_ERR_OUT_OF_RANGE,
                "readv across INT64_MAX", k);
    expect_kept(rt_aio_req_prepare_writev(req, file, max - 150, iov, 2, u), RT_ERR_OUT_OF_RANGE,
                "writev across INT64_MAX", k);
    expect_kept(rt_aio_req_prepare_readv(req, file, 0, huge, 2, u), RT_ERR_OUT_OF_RANGE,
                "readv total length overflowing", k);
    expect_kept(rt_aio_req_prepare_writev(req, file, 0, huge, 2, u), RT_ERR_OUT_OF_RANGE,
                "writev total length overflowing", k);
    if (SIZE_MAX > (uint64_t)INT64_MAX)
        expect_kept(rt_aio_req_prepare_read(req, file, 0, buf, SIZE_MAX, u), RT_ERR_OUT_OF_RANGE,
                    "read SIZE_MAX bytes", k);
    free(many);
}

/* Rule 3: every invalid argument gets its status, and a failed prepare leaves the
 * request exactly as it was, whether it was prepared (the later submit still does the
 * first preparation) or completed (it stays completed, with its result). */
static void test_prepare_args(void)
{
    rt_aio_ctx_t ctx = ctx_new(8, 0);
    rt_file_t file = scratch(4096, RT_FILE_READWRITE);
    rt_aio_req_t req = req_new(), out;
    uint8_t *buf = calloc(1, 4096);
    static int user_tag;
    struct kept k = {.req = req, .user = &user_tag};
    rt_iovec_t iov[3];
    size_t n;

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    TST_RC_FATAL(rt_aio_req_prepare_read(req, file, 100, buf, 300, &user_tag), RT_OK);
    k.state = RT_ERR_AIO_NOT_SUBMITTED;
    bad_prepares(&k, file);

    /* The request still does what the first, valid prepare said. */
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
    CU_ASSERT_PTR_EQUAL(out, req);
    n = 0;
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, 300);
    CU_ASSERT(pat_check(buf, 100, 300, 0));
    CU_ASSERT(all_bytes(buf + 300, 4096 - 300, 0));

    /* A failed prepare on a completed request must not make it prepared. */
    k.state = RT_OK;
    k.transferred = 300;
    bad_prepares(&k, file);
    TST_RC(rt_aio_ctx_submit(ctx, &req, 1), RT_ERR_AIO_NOT_SUBMITTED);
    expect_idle(ctx, false);

    /* The edges the contract accepts: off + len == INT64_MAX, a zero-length entry with a
     * NULL base, and exactly 1024 entries.  Prepare only; nothing is submitted. */
    TST_RC(rt_aio_req_prepare_read(req, file, (uint64_t)INT64_MAX - 300, buf, 300, NULL), RT_OK);
    TST_RC(rt_aio_req_prepare_write(req, file, (uint64_t)INT64_MAX - 1, buf, 1, NULL), RT_OK);
    TST_RC(rt_aio_req_get_rc(req, NULL), RT_ERR_AIO_NOT_SUBMITTED);

    /* A zero-length entry with a NULL base is harmless; run it to see the data. */
    memset(buf, 0, 4096);
    iov[0].base = NULL;
    iov[0].len = 0;
    iov[1].base = buf;
    iov[1].len = 150;
    iov[2].base = buf + 1000;
    iov[2].len = 50;
    TST_RC_FATAL(rt_aio_req_prepare_readv(req, file, 10, iov, 3, &user_tag), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
    n = 0;
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, 200);
    CU_ASSERT(pat_check(buf, 10, 150, 0));
    CU_ASSERT(pat_check(buf + 1000, 160, 50, 0));

    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    free(buf);
}

/* Rules 1, 2, 4, 11, 13, 15: fresh -> prepared -> prepared (replaced) -> submitted, where
 * every prepare, a second submit and destroy are refused without effect -> completed ->
 * prepared again. */
static void test_state_machine(void)
{
    rt_aio_ctx_t ctx = ctx_new(8, 0);
    rt_file_t file = scratch(8192, RT_FILE_READWRITE);
    rt_aio_req_t req = req_new(), out;
    uint8_t *buf = calloc(1, 4096), *other = calloc(1, 4096);
    static int first, second, third;
    rt_iovec_t iov[1];
    size_t n;

    CU_ASSERT_FATAL(buf != NULL && other != NULL);
    iov[0].base = other;
    iov[0].len = 64;

    TST_RC(rt_aio_req_get_rc(req, NULL), RT_ERR_AIO_NOT_SUBMITTED);
    TST_RC_FATAL(rt_aio_req_prepare_read(req, file, 0, buf, 100, &first), RT_OK);
    TST_RC(rt_aio_req_get_rc(req, NULL), RT_ERR_AIO_NOT_SUBMITTED);
    CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(req), &first);

    /* Preparing a prepared request replaces the preparation. */
    TST_RC_FATAL(rt_aio_req_prepare_read(req, file, 1000, buf, 200, &second), RT_OK);
    TST_RC(rt_aio_req_get_rc(req, NULL), RT_ERR_AIO_NOT_SUBMITTED);
    CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(req), &second);
    TST_RC(rt_aio_req_cancel(req), RT_ERR_AIO_NOT_SUBMITTED);

    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);

    /* Submitted until wait reaps it, however fast the I/O itself was. */
    sleep_ms(20);
    n = 4242;
    TST_RC(rt_aio_req_get_rc(req, &n), RT_ERR_AIO_IN_PROGRESS);
    TST_RC(rt_aio_req_prepare_read(req, file, 0, other, 64, &third), RT_ERR_AIO_IN_PROGRESS);
    TST_RC(rt_aio_req_prepare_write(req, file, 0, other, 64, &third), RT_ERR_AIO_IN_PROGRESS);
    TST_RC(rt_aio_req_prepare_readv(req, file, 0, iov, 1, &third), RT_ERR_AIO_IN_PROGRESS);
    TST_RC(rt_aio_req_prepare_writev(req, file, 0, iov, 1, &third), RT_ERR_AIO_IN_PROGRESS);
    TST_RC(rt_aio_req_prepare_flush(req, file, &third), RT_ERR_AIO_IN_PROGRESS);
    CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(req), &second);
    TST_RC(rt_aio_ctx_submit(ctx, &req, 1), RT_ERR_AIO_IN_PROGRESS);
    TST_RC(rt_aio_req_destroy(req), RT_ERR_AIO_IN_PROGRESS);
    TST_RC(rt_aio_req_get_rc(req, NULL), RT_ERR_AIO_IN_PROGRESS);

    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
    CU_ASSERT_PTR_EQUAL(out, req);
    expect_idle(ctx, false);
    n = 0;
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, 200);
    CU_ASSERT(pat_check(buf, 1000, 200, 0));
    CU_ASSERT(all_bytes(other, 4096, 0)); /* the refused prepares never ran */
    CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(req), &second);

    /* Completed: cancel and submit refuse, prepare starts the next round. */
    TST_RC(rt_aio_req_cancel(req), RT_ERR_AIO_NOT_SUBMITTED);
    TST_RC(rt_aio_ctx_submit(ctx, &req, 1), RT_ERR_AIO_NOT_SUBMITTED);
    expect_idle(ctx, false);
    TST_RC_FATAL(rt_aio_req_prepare_flush(req, file, &third), RT_OK);
    TST_RC(rt_aio_req_get_rc(req, NULL), RT_ERR_AIO_NOT_SUBMITTED);
    CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(req), &third);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
    n = 777;
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, 0);

    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    free(buf);
    free(other);
}

/* rt_aio_req_get_user: NULL when fresh, the last successful prepare's value after. */
static void test_req_get_user(void)
{
    rt_aio_ctx_t ctx = ctx_new(4, 0);
    rt_file_t file = scratch(4096, RT_FILE_READWRITE);
    rt_aio_req_t req = req_new(), out;
    static int a, b;
    uint8_t buf[64];

    CU_ASSERT_PTR_NULL(rt_aio_req_get_user(req));
    TST_RC_FATAL(rt_aio_req_prepare_read(req, file, 0, buf, sizeof buf, &a), RT_OK);
    CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(req), &a);
    TST_RC_FATAL(rt_aio_req_prepare_write(req, file, 0, buf, sizeof buf, &b), RT_OK);
    CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(req), &b);
    TST_RC(rt_aio_req_prepare_read(req, file, 0, buf, 0, &a), RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(req), &b);
    TST_RC_FATAL(rt_aio_req_prepare_read(req, file, 0, buf, sizeof buf, &a), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(req), &a);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
    CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(out), &a);
    TST_RC_FATAL(rt_aio_req_prepare_flush(req, file, NULL), RT_OK);
    CU_ASSERT_PTR_NULL(rt_aio_req_get_user(req));

    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
}

/* ------------------------------------------------------------------------------------ */
/* Submit                                                                               */

/* Asserts that a refused submit moved nothing: each of the prepared requests still says
 * "not submitted" and keeps its user value. */
static void expect_unsubmitted(rt_aio_req_t const *prepared, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = rt_aio_req_get_rc(prepared[i], NULL);
        if (rc != RT_ERR_AIO_NOT_SUBMITTED)
            fprintf(stderr, "  request %zu after a refused submit: %s\n", i, rt_status_name(rc));
        CU_ASSERT_EQUAL(rc, RT_ERR_AIO_NOT_SUBMITTED);
        CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(prepared[i]), (void *)(uintptr_t)(i + 1));
    }
}

static void submit_refused(rt_aio_ctx_t ctx, rt_aio_req_t *batch, size_t n, int want,
                           const char *what, rt_aio_req_t const *prepared, size_t n_prepared)
{
    int rc = rt_aio_ctx_submit(ctx, batch, n);
    if (rc != want)
        fprintf(stderr, "  submit %s -> %s, expected %s\n", what, rt_status_name(rc),
                rt_status_name(want));
    CU_ASSERT_EQUAL(rc, want);
    expect_unsubmitted(prepared, n_prepared);
}

/* Rule 4: submit's argument checks and all-or-nothing.  The offending entry is put last
 * (and once first) so a library that submits as it goes is caught: after each refusal
 * every other request must still be "not submitted" and the context idle. */
static void test_submit_all_or_nothing(void)
{
    rt_aio_ctx_t ctx = ctx_new(16, 0);
    rt_file_t file = scratch(65536, RT_FILE_READWRITE);
    rt_aio_req_t good[3] = {req_new(), req_new(), req_new()};
    rt_aio_req_t fresh = req_new(), completed = req_new(), busy = req_new();
    rt_aio_req_t batch[5], out[4];
    uint8_t *buf = calloc(6, 1024);
    uint32_t got;
    size_t n;

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    for (size_t i = 0; i < 3; i++)
        TST_RC_FATAL(rt_aio_req_prepare_read(good[i], file, i * 1024, buf + i * 1024, 1024,
                                             (void *)(uintptr_t)(i + 1)),
                     RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_read(completed, file, 0, buf + 3 * 1024, 16, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &completed, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 1, LONG_MS), 1);

    /* Argument checks. */
    submit_refused(RT_AIO_CTX_NIL, good, 3, RT_ERR_INVALID_HANDLE, "on NIL ctx", good, 3);
    submit_refused(ZERO_CTX, good, 3, RT_ERR_INVALID_HANDLE, "on zeroed ctx", good, 3);
    submit_refused(dead_ctx(), good, 3, RT_ERR_INVALID_HANDLE, "on dead ctx", good, 3);
    submit_refused(ctx, NULL, 3, RT_ERR_INVALID_POINTER, "NULL array", good, 3);
    submit_refused(ctx, good, 0, RT_ERR_INVALID_PARAMETER, "n == 0", good, 3);
    expect_idle(ctx, false);

    /* A bad handle anywhere in the array. */
    memcpy(batch, good, sizeof good);
    batch[3] = RT_AIO_REQ_NIL;
    submit_refused(ctx, batch, 4, RT_ERR_INVALID_HANDLE, "[a b c NIL]", good, 3);
    expect_idle(ctx, false);
    batch[0] = RT_AIO_REQ_NIL;
    memcpy(batch + 1, good, sizeof good);
    submit_refused(ctx, batch, 4, RT_ERR_INVALID_HANDLE, "[NIL a b c]", good, 3);
    expect_idle(ctx, false);
    memcpy(batch, good, sizeof good);
    batch[3] = ZERO_REQ;
    submit_refused(ctx, batch, 4, RT_ERR_INVALID_HANDLE, "[a b c zeroed]", good, 3);
    expect_idle(ctx, false);
    batch[3] = dead_req();
    submit_refused(ctx, batch, 4, RT_ERR_INVALID_HANDLE, "[a b c dead]", good, 3);
    expect_idle(ctx, false);

    /* Requests that are not prepared. */
    batch[3] = fresh;
    submit_refused(ctx, batch, 4, RT_ERR_AIO_NOT_SUBMITTED, "[a b c fresh]", good, 3);
    TST_RC(rt_aio_req_get_rc(fresh, NULL), RT_ERR_AIO_NOT_SUBMITTED);
    expect_idle(ctx, false);
    batch[3] = completed;
    submit_refused(ctx, batch, 4, RT_ERR_AIO_NOT_SUBMITTED, "[a b c completed]", good, 3);
    n = 0;
    TST_RC(rt_aio_req_get_rc(completed, &n), RT_OK);
    CU_ASSERT_EQUAL(n, 16);
    expect_idle(ctx, false);

    /* The same request twice. */
    batch[3] = good[0];
    submit_refused(ctx, batch, 4, RT_ERR_AIO_IN_PROGRESS, "[a b c a]", good, 3);
    expect_idle(ctx, false);
    batch[0] = good[1];
    batch[1] = good[1];
    submit_refused(ctx, batch, 2, RT_ERR_AIO_IN_PROGRESS, "[b b]", good, 3);
    expect_idle(ctx, false);

    /* A request that is already submitted: refused, and it stays submitted, returned
     * by wait exactly once. */
    TST_RC_FATAL(rt_aio_req_prepare_read(busy, file, 8192, buf + 4 * 1024, 1024, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &busy, 1), RT_OK);
    memcpy(batch, good, sizeof good);
    batch[3] = busy;
    submit_refused(ctx, batch, 4, RT_ERR_AIO_IN_PROGRESS, "[a b c submitted]", good, 3);
    TST_RC(rt_aio_req_get_rc(busy, NULL), RT_ERR_AIO_IN_PROGRESS);
    got = 77;
    TST_RC(rt_aio_ctx_wait(ctx, 1, LONG_MS, out, 4, &got), RT_OK);
    CU_ASSERT_EQUAL(got, 1);
    CU_ASSERT_PTR_EQUAL(out[0], busy);
    expect_idle(ctx, false);

    /* After all those refusals the requests still submit and run as prepared. */
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, good, 3), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 3, LONG_MS), 3);
    expect_same_set(out, 3, good, 3);
    for (size_t i = 0; i < 3; i++) {
        n = 0;
        TST_RC(rt_aio_req_get_rc(good[i], &n), RT_OK);
        CU_ASSERT_EQUAL(n, 1024);
        CU_ASSERT(pat_check(buf + i * 1024, i * 1024, 1024, 0));
    }
    expect_idle(ctx, false);

    for (size_t i = 0; i < 3; i++)
        TST_RC(rt_aio_req_destroy(good[i]), RT_OK);
    TST_RC(rt_aio_req_destroy(fresh), RT_OK);
    TST_RC(rt_aio_req_destroy(completed), RT_OK);
    TST_RC(rt_aio_req_destroy(busy), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    free(buf);
}

/* Rules 4, 14: a small capacity is enforced on the outstanding count (submitted and not
 * yet reaped), a refused batch changes nothing, and reaping frees room again. */
static void test_capacity(void)
{
    rt_aio_ctx_t ctx = ctx_new(4, 0);
    rt_file_t file = scratch(8192, RT_FILE_READWRITE);
    rt_aio_req_t reqs[5], out[5];
    uint8_t *buf = calloc(5, 512);
    size_t n;

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    for (size_t i = 0; i < 5; i++) {
        reqs[i] = req_new();
        TST_RC_FATAL(rt_aio_req_prepare_read(reqs[i], file, i * 512, buf + i * 512, 512,
                                             (void *)(uintptr_t)(i + 1)),
                     RT_OK);
    }

    submit_refused(ctx, reqs, 5, RT_ERR_AIO_INSUFFICIENT_RESOURCES, "5 into 4", reqs, 5);
    expect_idle(ctx, false);

    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, 3), RT_OK);
    /* Let them finish: completed but unreaped requests still count. */
    sleep_ms(20);
    submit_refused(ctx, reqs + 3, 2, RT_ERR_AIO_INSUFFICIENT_RESOURCES, "2 more into 1 free",
                   reqs + 3, 0);
    TST_RC(rt_aio_req_get_rc(reqs[3], NULL), RT_ERR_AIO_NOT_SUBMITTED);
    TST_RC(rt_aio_req_get_rc(reqs[4], NULL), RT_ERR_AIO_NOT_SUBMITTED);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs + 3, 1), RT_OK); /* exactly full */
    TST_RC(rt_aio_ctx_submit(ctx, reqs + 4, 1), RT_ERR_AIO_INSUFFICIENT_RESOURCES);
    TST_RC(rt_aio_req_get_rc(reqs[4], NULL), RT_ERR_AIO_NOT_SUBMITTED);

    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 4, LONG_MS), 4);
    expect_same_set(out, 4, reqs, 4);
    expect_idle(ctx, false);

    /* Room again: the refused one goes in, then a full batch of re-prepared ones. */
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs + 4, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 1, LONG_MS), 1);
    CU_ASSERT_PTR_EQUAL(out[0], reqs[4]);
    for (size_t i = 0; i < 5; i++) {
        n = 0;
        TST_RC(rt_aio_req_get_rc(reqs[i], &n), RT_OK);
        CU_ASSERT_EQUAL(n, 512);
        CU_ASSERT(pat_check(buf + i * 512, i * 512, 512, 0));
    }
    for (size_t i = 0; i < 4; i++)
        TST_RC_FATAL(
            rt_aio_req_prepare_read(reqs[i], file, 4096 + i * 512, buf + i * 512, 512, NULL),
            RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, 4), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 4, LONG_MS), 4);
    for (size_t i = 0; i < 4; i++)
        CU_ASSERT(pat_check(buf + i * 512, 4096 + i * 512, 512, 0));

    for (size_t i = 0; i < 5; i++)
        TST_RC(rt_aio_req_destroy(reqs[i]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    free(buf);
}

/* Rule 14: an unlimited context takes a batch larger than any default queue in one
 * submit call, and many more batches on top, without refusing for capacity.  COUNT is
 * beyond every backend's fixed structure (the thread pool's 1024-slot ring, io_uring's
 * 2048-entry CQ), so what overflows them is exercised too. */
static void test_unlimited(void)
{
    enum { COUNT = 3072, SIZE = 64 };
    rt_aio_ctx_t ctx = ctx_new(RT_AIO_UNLIMITED_REQS, 0);
    rt_file_t file = scratch(COUNT * SIZE, RT_FILE_READ);
    rt_aio_req_t *reqs = calloc(COUNT, sizeof *reqs), *out = calloc(COUNT, sizeof *out);
    uint8_t *buf = calloc(COUNT, SIZE);
    bool *seen = calloc(COUNT, sizeof *seen);
    size_t n, have;

    CU_ASSERT_FATAL(reqs != NULL && out != NULL && buf != NULL && seen != NULL);
    for (size_t i = 0; i < COUNT; i++) {
        reqs[i] = req_new();
        TST_RC_FATAL(rt_aio_req_prepare_read(reqs[i], file, i * SIZE, buf + i * SIZE, SIZE,
                                             (void *)(uintptr_t)(i + 1)),
                     RT_OK);
    }
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, COUNT), RT_OK);
    have = reap(ctx, out, COUNT, LONG_MS);
    CU_ASSERT_EQUAL_FATAL(have, COUNT);
    for (size_t i = 0; i < have; i++) {
        uintptr_t tag = (uintptr_t)rt_aio_req_get_user(out[i]);
        CU_ASSERT_FATAL(tag >= 1 && tag <= COUNT);
        CU_ASSERT(!seen[tag - 1]);
        seen[tag - 1] = true;
        n = 0;
        TST_RC(rt_aio_req_get_rc(out[i], &n), RT_OK);
        CU_ASSERT_EQUAL(n, SIZE);
    }
    CU_ASSERT(pat_check(buf, 0, COUNT * SIZE, 0));
    expect_idle(ctx, false);

    /* Again, in batches of 64, without reaping in between. */
    memset(buf, 0, COUNT * SIZE);
    for (size_t i = 0; i < COUNT; i++)
        TST_RC_FATAL(rt_aio_req_prepare_read(reqs[i], file, i * SIZE, buf + i * SIZE, SIZE, NULL),
                     RT_OK);
    for (size_t i = 0; i < COUNT; i += 64)
        TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs + i, 64), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, COUNT, LONG_MS), COUNT);
    CU_ASSERT(pat_check(buf, 0, COUNT * SIZE, 0));
    expect_idle(ctx, false);

    for (size_t i = 0; i < COUNT; i++)
        TST_RC(rt_aio_req_destroy(reqs[i]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    free(reqs);
    free(out);
    free(buf);
    free(seen);
}

/* Rule 5: requests that fail on their own (a file not open for that direction) do not
 * fail the submit and do not strand their batch: each completes with its own status and
 * is returned by wait; the others complete normally. */
static void test_per_request_failure(void)
{
    rt_aio_ctx_t ctx = ctx_new(8, 0);
    rt_file_t rw = scratch(8192, RT_FILE_READWRITE);
    rt_file_t ro = scratch(8192, RT_FILE_READ);
    rt_file_t wo = scratch(8192, RT_FILE_WRITE);
    const int bad_file = rt_err_from_errno(EBADF);
    rt_aio_req_t reqs[6], out[6];
    uint8_t *buf = calloc(6, 512), *data = malloc(512);
    rt_iovec_t iov[2];
    uint8_t check[512];
    size_t n;

    CU_ASSERT_FATAL(buf != NULL && data != NULL);
    pat_fill(data, 0, 512, 7);
    iov[0].base = data;
    iov[0].len = 100;
    iov[1].base = data + 100;
    iov[1].len = 412;
    for (size_t i = 0; i < 6; i++)
        reqs[i] = req_new();
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[0], rw, 0, buf, 512, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_write(reqs[1], ro, 0, data, 512, NULL), RT_OK); /* bad */
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[2], ro, 512, buf + 512, 512, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[3], wo, 0, buf + 1024, 512, NULL), RT_OK); /* bad */
    TST_RC_FATAL(rt_aio_req_prepare_writev(reqs[4], ro, 1024, iov, 2, NULL), RT_OK);     /* bad */
    TST_RC_FATAL(rt_aio_req_prepare_write(reqs[5], rw, 4096, data, 512, NULL), RT_OK);

    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, 6), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 6, LONG_MS), 6);
    expect_same_set(out, 6, reqs, 6);
    expect_idle(ctx, false);

    n = 0;
    TST_RC(rt_aio_req_get_rc(reqs[0], &n), RT_OK);
    CU_ASSERT_EQUAL(n, 512);
    CU_ASSERT(pat_check(buf, 0, 512, 0));
    TST_RC(rt_aio_req_get_rc(reqs[1], NULL), bad_file);
    n = 0;
    TST_RC(rt_aio_req_get_rc(reqs[2], &n), RT_OK);
    CU_ASSERT_EQUAL(n, 512);
    CU_ASSERT(pat_check(buf + 512, 512, 512, 0));
    TST_RC(rt_aio_req_get_rc(reqs[3], NULL), bad_file);
    CU_ASSERT(all_bytes(buf + 1024, 512, 0));
    TST_RC(rt_aio_req_get_rc(reqs[4], NULL), bad_file);
    n = 0;
    TST_RC(rt_aio_req_get_rc(reqs[5], &n), RT_OK);
    CU_ASSERT_EQUAL(n, 512);

    /* The failed writes did not reach the read-only file; the good one reached rw. */
    TST_RC(rt_file_read_at(ro, 0, check, 512, NULL), RT_OK);
    CU_ASSERT(pat_check(check, 0, 512, 0));
    TST_RC(rt_file_read_at(ro, 1024, check, 512, NULL), RT_OK);
    CU_ASSERT(pat_check(check, 1024, 512, 0));
    TST_RC(rt_file_read_at(rw, 4096, check, 512, NULL), RT_OK);
    CU_ASSERT(memcmp(check, data, 512) == 0);

    /* A request that failed is reusable like any other. */
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[1], rw, 4096, buf, 512, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &reqs[1], 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 1, LONG_MS), 1);
    n = 0;
    TST_RC(rt_aio_req_get_rc(reqs[1], &n), RT_OK);
    CU_ASSERT_EQUAL(n, 512);
    CU_ASSERT(memcmp(buf, data, 512) == 0);

    for (size_t i = 0; i < 6; i++)
        TST_RC(rt_aio_req_destroy(reqs[i]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(rw), RT_OK);
    TST_RC(rt_file_close(ro), RT_OK);
    TST_RC(rt_file_close(wo), RT_OK);
    free(buf);
    free(data);
}

/* Rule 5 on RT_FILE_NO_CACHE files, where kernel AIO backends hand the batch to the
 * kernel: a request the kernel refuses at submission (wrong direction) sits between
 * good ones, so the kernel takes only part of the batch.  The submit still succeeds,
 * the refused requests complete with their status, and the rest (before and after
 * them) complete with their data. */
static void test_no_cache_bad_direction(void)
{
    const size_t page = rt_mem_page_size();
    const int bad_file = rt_err_from_errno(EBADF);
    rt_aio_ctx_t ctx;
    rt_file_t rw, ro, wo;
    rt_aio_req_t reqs[6], out[6];
    uint8_t *mem;
    size_t n;
    int rc;

    rc = scratch_open(&rw, 8 * page, RT_FILE_READWRITE | RT_FILE_NO_CACHE);
    if (rc == RT_ERR_NOT_SUPPORTED) {
        printf("\n    SKIP: %s refuses O_DIRECT (%s) ", tst_dir(), rt_strerror(rc));
        return;
    }
    TST_RC_FATAL(rc, RT_OK);
    TST_RC_FATAL(scratch_open(&ro, 8 * page, RT_FILE_READ | RT_FILE_NO_CACHE), RT_OK);
    TST_RC_FATAL(scratch_open(&wo, 8 * page, RT_FILE_WRITE | RT_FILE_NO_CACHE), RT_OK);
    mem = rt_mem_page_alloc(6 * page);
    CU_ASSERT_PTR_NOT_NULL_FATAL(mem);
    pat_fill(mem + 5 * page, 0, page, 9);

    ctx = ctx_new(8, 0);
    for (size_t i = 0; i < 6; i++)
        reqs[i] = req_new();
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[0], rw, 0, mem, page, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_write(reqs[1], ro, 0, mem + 5 * page, page, NULL),
                 RT_OK); /* bad */
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[2], ro, page, mem + page, page, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[3], wo, 0, mem + 2 * page, page, NULL),
                 RT_OK); /* bad */
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[4], rw, 2 * page, mem + 3 * page, page, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_write(reqs[5], rw, 4 * page, mem + 5 * page, page, NULL),
                 RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, 6), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 6, LONG_MS), 6);
    expect_same_set(out, 6, reqs, 6);
    expect_idle(ctx, false);

    n = 0;
    TST_RC(rt_aio_req_get_rc(reqs[0], &n), RT_OK);
    CU_ASSERT_EQUAL(n, page);
    CU_ASSERT(pat_check(mem, 0, page, 0));
    TST_RC(rt_aio_req_get_rc(reqs[1], NULL), bad_file);
    n = 0;
    TST_RC(rt_aio_req_get_rc(reqs[2], &n), RT_OK);
    CU_ASSERT_EQUAL(n, page);
    CU_ASSERT(pat_check(mem + page, page, page, 0));
    TST_RC(rt_aio_req_get_rc(reqs[3], NULL), bad_file);
    CU_ASSERT(all_bytes(mem + 2 * page, page, 0));
    n = 0;
    TST_RC(rt_aio_req_get_rc(reqs[4], &n), RT_OK);
    CU_ASSERT_EQUAL(n, page);
    CU_ASSERT(pat_check(mem + 3 * page, 2 * page, page, 0));
    n = 0;
    TST_RC(rt_aio_req_get_rc(reqs[5], &n), RT_OK);
    CU_ASSERT_EQUAL(n, page);

    /* The refused write did not reach the read-only file. */
    TST_RC(rt_file_read_at(ro, 0, mem + 4 * page, page, NULL), RT_OK);
    CU_ASSERT(pat_check(mem + 4 * page, 0, page, 0));

    for (size_t i = 0; i < 6; i++)
        TST_RC(rt_aio_req_destroy(reqs[i]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(rw), RT_OK);
    TST_RC(rt_file_close(ro), RT_OK);
    TST_RC(rt_file_close(wo), RT_OK);
    rt_mem_page_free(mem, 6 * page);
}

/* Rule 5 on RT_FILE_NO_CACHE: misaligned buffer, length or offset are not refused by
 * submit; each such request completes with RT_ERR_INVALID_PARAMETER while aligned ones
 * in the same batch succeed.  Skipped where the file system refuses O_DIRECT, and per
 * kind where the file system does not enforce that alignment (plain pread agrees). */
static void test_no_cache_misaligned(void)
{
    const size_t page = rt_mem_page_size();
    rt_aio_ctx_t ctx;
    rt_file_t file;
    rt_aio_req_t reqs[5], out[5];
    uint8_t *mem;
    int probe_buf, probe_len, probe_off, rc;
    size_t n, done;

    rc = scratch_open(&file, 16 * page, RT_FILE_READ | RT_FILE_NO_CACHE);
    if (rc == RT_ERR_NOT_SUPPORTED) {
        printf("\n    SKIP: %s refuses O_DIRECT (%s) ", tst_dir(), rt_strerror(rc));
        return;
    }
    TST_RC_FATAL(rc, RT_OK);
    mem = rt_mem_page_alloc(8 * page);
    CU_ASSERT_PTR_NOT_NULL_FATAL(mem);

    /* What the file system itself says about each kind of misalignment. */
    probe_buf = rt_file_read_at(file, 0, mem + 1, page, &done);
    probe_len = rt_file_read_at(file, 0, mem, 100, &done);
    probe_off = rt_file_read_at(file, 1, mem, page, &done);
    if (probe_buf == RT_OK && probe_len == RT_OK && probe_off == RT_OK) {
        printf("\n    SKIP: %s does not enforce O_DIRECT alignment ", tst_dir());
        rt_mem_page_free(mem, 8 * page);
        rt_file_close(file);
        return;
    }
    memset(mem, 0, 8 * page);

    ctx = ctx_new(8, 0);
    for (size_t i = 0; i < 5; i++)
        reqs[i] = req_new();
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[0], file, 0, mem, page, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[1], file, 0, mem + 2 * page + 1, page, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[2], file, 0, mem + 4 * page, 100, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[3], file, 1, mem + 5 * page, page, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[4], file, 3 * page, mem + page, page, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, 5), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 5, LONG_MS), 5);
    expect_same_set(out, 5, reqs, 5);
    expect_idle(ctx, false);

    n = 0;
    TST_RC(rt_aio_req_get_rc(reqs[0], &n), RT_OK);
    CU_ASSERT_EQUAL(n, page);
    CU_ASSERT(pat_check(mem, 0, page, 0));
    n = 0;
    TST_RC(rt_aio_req_get_rc(reqs[4], &n), RT_OK);
    CU_ASSERT_EQUAL(n, page);
    CU_ASSERT(pat_check(mem + page, 3 * page, page, 0));
    if (probe_buf == RT_ERR_INVALID_PARAMETER)
        TST_RC(rt_aio_req_get_rc(reqs[1], NULL), RT_ERR_INVALID_PARAMETER);
    else
        printf("\n    note: misaligned buffer accepted by the file system (%s) ",
               rt_status_name(probe_buf));
    if (probe_len == RT_ERR_INVALID_PARAMETER)
        TST_RC(rt_aio_req_get_rc(reqs[2], NULL), RT_ERR_INVALID_PARAMETER);
    else
        printf("\n    note: misaligned length accepted by the file system (%s) ",
               rt_status_name(probe_len));
    if (probe_off == RT_ERR_INVALID_PARAMETER)
        TST_RC(rt_aio_req_get_rc(reqs[3], NULL), RT_ERR_INVALID_PARAMETER);
    else
        printf("\n    note: misaligned offset accepted by the file system (%s) ",
               rt_status_name(probe_off));

    for (size_t i = 0; i < 5; i++)
        TST_RC(rt_aio_req_destroy(reqs[i]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    rt_mem_page_free(mem, 8 * page);
}

/* ------------------------------------------------------------------------------------ */
/* Wait                                                                                 */

/* Rule 6: wait's argument checks set *got to 0 and consume nothing. */
static void test_wait_args(void)
{
    rt_aio_ctx_t ctx = ctx_new(8, 0);
    rt_file_t file = scratch(4096, RT_FILE_READ);
    rt_aio_req_t reqs[2] = {req_new(), req_new()}, out[4];
    uint8_t buf[2][256];
    uint32_t got;

    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[0], file, 0, buf[0], 256, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[1], file, 256, buf[1], 256, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, 2), RT_OK);
    sleep_ms(20);

    got = 77;
    TST_RC(rt_aio_ctx_wait(RT_AIO_CTX_NIL, 1, 0, out, 4, &got), RT_ERR_INVALID_HANDLE);
    CU_ASSERT_EQUAL(got, 0);
    got = 77;
    TST_RC(rt_aio_ctx_wait(ZERO_CTX, 1, 0, out, 4, &got), RT_ERR_INVALID_HANDLE);
    CU_ASSERT_EQUAL(got, 0);
    got = 77;
    TST_RC(rt_aio_ctx_wait(dead_ctx(), 1, 0, out, 4, &got), RT_ERR_INVALID_HANDLE);
    CU_ASSERT_EQUAL(got, 0);
    got = 77;
    TST_RC(rt_aio_ctx_wait(ctx, 1, 0, NULL, 4, &got), RT_ERR_INVALID_POINTER);
    CU_ASSERT_EQUAL(got, 0);
    TST_RC(rt_aio_ctx_wait(ctx, 1, 0, out, 4, NULL), RT_ERR_INVALID_POINTER);
    got = 77;
    TST_RC(rt_aio_ctx_wait(ctx, 0, 0, out, 0, &got), RT_ERR_INVALID_PARAMETER);
    CU_ASSERT_EQUAL(got, 0);
    got = 77;
    TST_RC(rt_aio_ctx_wait(ctx, 3, 0, out, 2, &got), RT_ERR_OUT_OF_RANGE);
    CU_ASSERT_EQUAL(got, 0);
    got = 77;
    TST_RC(rt_aio_ctx_wait(ctx, 5, LONG_MS, out, 4, &got), RT_ERR_OUT_OF_RANGE);
    CU_ASSERT_EQUAL(got, 0);

    /* Nothing was consumed by the refused calls: both requests are still there. */
    TST_RC(rt_aio_req_get_rc(reqs[0], NULL), RT_ERR_AIO_IN_PROGRESS);
    TST_RC(rt_aio_req_get_rc(reqs[1], NULL), RT_ERR_AIO_IN_PROGRESS);
    got = 77;
    TST_RC(rt_aio_ctx_wait(ctx, 2, LONG_MS, out, 2, &got), RT_OK);
    CU_ASSERT_EQUAL(got, 2);
    expect_same_set(out, got, reqs, 2);
    expect_idle(ctx, false);

    TST_RC(rt_aio_req_destroy(reqs[0]), RT_OK);
    TST_RC(rt_aio_req_destroy(reqs[1]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
}

/* Rule 6: wait returns at least max(min, 1) and at most n requests, each once. */
static void test_wait_min_n(void)
{
    enum { COUNT = 5 };
    rt_aio_ctx_t ctx = ctx_new(16, 0);
    rt_file_t file = scratch(COUNT * 512, RT_FILE_READ);
    rt_aio_req_t reqs[COUNT], out[8], all[COUNT];
    uint8_t *buf = calloc(COUNT, 512);
    uint32_t got;
    size_t have;
    int rc;

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    for (size_t i = 0; i < COUNT; i++)
        reqs[i] = req_new();

    /* min == n == 3 with 3 outstanding: all three, not fewer. */
    for (size_t i = 0; i < 3; i++)
        TST_RC_FATAL(rt_aio_req_prepare_read(reqs[i], file, i * 512, buf + i * 512, 512, NULL),
                     RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, 3), RT_OK);
    got = 77;
    TST_RC(rt_aio_ctx_wait(ctx, 3, LONG_MS, out, 3, &got), RT_OK);
    CU_ASSERT_EQUAL(got, 3);
    expect_same_set(out, got, reqs, 3);
    for (size_t i = 0; i < got; i++)
        TST_RC(rt_aio_req_get_rc(out[i], NULL), RT_OK);
    expect_idle(ctx, false);

    /* min 0 behaves as 1; n caps what one call returns; the rest come later, once. */
    for (size_t i = 0; i < COUNT; i++)
        TST_RC_FATAL(rt_aio_req_prepare_read(reqs[i], file, i * 512, buf + i * 512, 512, NULL),
                     RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, COUNT), RT_OK);
    got = 77;
    TST_RC(rt_aio_ctx_wait(ctx, 0, LONG_MS, out, 2, &got), RT_OK);
    CU_ASSERT(got >= 1 && got <= 2);
    have = got <= 2 ? got : 0;
    memcpy(all, out, have * sizeof *out);
    got = 77;
    rc = rt_aio_ctx_wait(ctx, 2, LONG_MS, out, 2, &got);
    TST_RC(rc, RT_OK);
    CU_ASSERT_EQUAL(got, 2);
    if (rc == RT_OK && got == 2) {
        memcpy(all + have, out, 2 * sizeof *out);
        have += 2;
    }
    have += reap(ctx, all + have, COUNT - have, LONG_MS);
    expect_same_set(all, have, reqs, COUNT);
    expect_idle(ctx, false);

    for (size_t i = 0; i < COUNT; i++)
        TST_RC(rt_aio_req_destroy(reqs[i]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    free(buf);
}

/* Rules 7, 8: timeout 0 never blocks, a timeout bounds the whole call (also when some
 * requests were collected, which are then completed), and with nothing outstanding wait
 * either says so at once or, with RT_AIO_CTX_F_WAIT_WITHOUT_PENDING, sits out the
 * timeout. */
static void test_wait_timeout(void)
{
    rt_aio_ctx_t idle = ctx_new(8, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING);
    rt_aio_ctx_t plain = ctx_new(8, 0);
    rt_file_t file = scratch(4096, RT_FILE_READ);
    rt_aio_req_t reqs[2] = {req_new(), req_new()}, out[3], all[2];
    uint8_t buf[2][300];
    uint64_t t0, elapsed;
    uint32_t got;
    size_t n, have;
    int rc;

    /* Nothing outstanding, waiting allowed: 0 returns at once, 300 waits 300. */
    got = 77;
    t0 = rt_time_milli_ts();
    TST_RC(rt_aio_ctx_wait(idle, 1, 0, out, 3, &got), RT_ERR_TIMEOUT);
    elapsed = rt_time_milli_ts() - t0;
    CU_ASSERT_EQUAL(got, 0);
    CU_ASSERT(elapsed < 500);

    got = 77;
    t0 = rt_time_milli_ts();
    TST_RC(rt_aio_ctx_wait(idle, 1, 300, out, 3, &got), RT_ERR_TIMEOUT);
    elapsed = rt_time_milli_ts() - t0;
    CU_ASSERT_EQUAL(got, 0);
    if (elapsed < 300 - EARLY_MS || elapsed > 300 + LATE_MS)
        fprintf(stderr, "  wait(300 ms) took %llu ms\n", (unsigned long long)elapsed);
    CU_ASSERT(elapsed >= 300 - EARLY_MS && elapsed <= 300 + LATE_MS);

    /* Nothing outstanding, plain context: at once, whatever the timeout. */
    got = 77;
    t0 = rt_time_milli_ts();
    TST_RC(rt_aio_ctx_wait(plain, 1, 3000, out, 3, &got), RT_ERR_AIO_NO_REQUEST);
    elapsed = rt_time_milli_ts() - t0;
    CU_ASSERT_EQUAL(got, 0);
    CU_ASSERT(elapsed < 1000);
    got = 77;
    TST_RC(rt_aio_ctx_wait(plain, 1, 0, out, 3, &got), RT_ERR_AIO_NO_REQUEST);
    CU_ASSERT_EQUAL(got, 0);

    /* Two requests, min 3: the timeout ends the call; what it collected is completed,
     * and nothing is lost (the rest, if any, comes with the next wait). */
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[0], file, 0, buf[0], 300, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[1], file, 300, buf[1], 300, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(idle, reqs, 2), RT_OK);
    got = 77;
    t0 = rt_time_milli_ts();
    TST_RC(rt_aio_ctx_wait(idle, 3, 400, out, 3, &got), RT_ERR_TIMEOUT);
    elapsed = rt_time_milli_ts() - t0;
    if (elapsed < 400 - EARLY_MS || elapsed > 400 + LATE_MS)
        fprintf(stderr, "  wait(min 3, 400 ms) took %llu ms\n", (unsigned long long)elapsed);
    CU_ASSERT(elapsed >= 400 - EARLY_MS && elapsed <= 400 + LATE_MS);
    CU_ASSERT_FATAL(got <= 2);
    if (got < 2)
        printf("\n    note: a timed-out wait returned %u of 2 finished requests ", got);
    have = got;
    memcpy(all, out, have * sizeof *out);
    for (size_t i = 0; i < have; i++) {
        n = 0;
        TST_RC(rt_aio_req_get_rc(out[i], &n), RT_OK);
        CU_ASSERT_EQUAL(n, 300);
    }
    have += reap(idle, all + have, 2 - have, LONG_MS);
    expect_same_set(all, have, reqs, 2);
    CU_ASSERT(pat_check(buf[0], 0, 300, 0));
    CU_ASSERT(pat_check(buf[1], 300, 300, 0));
    expect_idle(idle, true);

    /* Timeout 0 with a request outstanding does not block either. */
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[0], file, 0, buf[0], 300, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(plain, reqs, 1), RT_OK);
    got = 77;
    t0 = rt_time_milli_ts();
    rc = rt_aio_ctx_wait(plain, 1, 0, out, 3, &got);
    elapsed = rt_time_milli_ts() - t0;
    CU_ASSERT(elapsed < 500);
    CU_ASSERT((rc == RT_OK && got == 1) || (rc == RT_ERR_TIMEOUT && got == 0));
    if (rc == RT_ERR_TIMEOUT)
        CU_ASSERT_EQUAL(reap(plain, out, 1, LONG_MS), 1);
    CU_ASSERT_PTR_EQUAL(out[0], reqs[0]);
    expect_idle(plain, false);

    TST_RC(rt_aio_req_destroy(reqs[0]), RT_OK);
    TST_RC(rt_aio_req_destroy(reqs[1]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(idle), RT_OK);
    TST_RC(rt_aio_ctx_destroy(plain), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
}

/* Rule 8: a wait blocked on an empty RT_AIO_CTX_F_WAIT_WITHOUT_PENDING context returns
 * as soon as a request submitted later (from another thread) completes. */
static void test_wait_without_pending(void)
{
    rt_aio_ctx_t ctx = ctx_new(8, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING);
    rt_file_t file = scratch(4096, RT_FILE_READ);
    rt_aio_req_t req = req_new();
    struct bg_wait w;
    uint8_t buf[128];

    TST_RC_FATAL(rt_aio_req_prepare_read(req, file, 64, buf, sizeof buf, NULL), RT_OK);
    bg_wait_start(&w, ctx, 1, 4, 5000);
    sleep_ms(100);
    CU_ASSERT(!atomic_load(&w.finished)); /* still blocked: nothing was outstanding */
    TST_RC(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    bg_wait_join(&w);
    TST_RC(w.rc, RT_OK);
    CU_ASSERT_EQUAL(w.got, 1);
    CU_ASSERT_PTR_EQUAL(w.reqs[0], req);
    CU_ASSERT(w.elapsed_ms < 4000);
    TST_RC(rt_aio_req_get_rc(req, NULL), RT_OK);
    CU_ASSERT(pat_check(buf, 64, sizeof buf, 0));

    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
}

/* Rule 9: a wakeup ends a blocked wait with RT_ERR_INTERRUPTED; with nobody waiting it
 * is remembered and ends exactly one later wait (several wakeups are still one); a
 * pending wakeup beats "no request". */
static void test_wakeup(void)
{
    rt_aio_ctx_t idle = ctx_new(8, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING);
    rt_aio_ctx_t plain = ctx_new(8, 0);
    rt_aio_req_t out[4];
    struct bg_wait w;
    uint64_t t0, elapsed;
    uint32_t got;

    TST_RC(rt_aio_ctx_wakeup(RT_AIO_CTX_NIL), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_ctx_wakeup(ZERO_CTX), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_ctx_wakeup(dead_ctx()), RT_ERR_INVALID_HANDLE);

    /* Remembered, consumed by one wait. */
    TST_RC(rt_aio_ctx_wakeup(idle), RT_OK);
    got = 77;
    t0 = rt_time_milli_ts();
    TST_RC(rt_aio_ctx_wait(idle, 1, 5000, out, 4, &got), RT_ERR_INTERRUPTED);
    elapsed = rt_time_milli_ts() - t0;
    CU_ASSERT_EQUAL(got, 0);
    CU_ASSERT(elapsed < 1000);
    got = 77;
    TST_RC(rt_aio_ctx_wait(idle, 1, 200, out, 4, &got), RT_ERR_TIMEOUT);
    CU_ASSERT_EQUAL(got, 0);

    /* Three wakeups before a wait are one. */
    TST_RC(rt_aio_ctx_wakeup(idle), RT_OK);
    TST_RC(rt_aio_ctx_wakeup(idle), RT_OK);
    TST_RC(rt_aio_ctx_wakeup(idle), RT_OK);
    got = 77;
    TST_RC(rt_aio_ctx_wait(idle, 1, 5000, out, 4, &got), RT_ERR_INTERRUPTED);
    CU_ASSERT_EQUAL(got, 0);
    got = 77;
    TST_RC(rt_aio_ctx_wait(idle, 1, 200, out, 4, &got), RT_ERR_TIMEOUT);
    CU_ASSERT_EQUAL(got, 0);

    /* A pending wakeup takes precedence over "nothing outstanding", once. */
    TST_RC(rt_aio_ctx_wakeup(plain), RT_OK);
    got = 77;
    TST_RC(rt_aio_ctx_wait(plain, 1, 3000, out, 4, &got), RT_ERR_INTERRUPTED);
    CU_ASSERT_EQUAL(got, 0);
    expect_idle(plain, false);

    /* A wait blocked in another thread is ended by a wakeup from this one, and the
     * wakeup is spent on it. */
    bg_wait_start(&w, idle, 1, 4, LONG_MS);
    sleep_ms(100);
    CU_ASSERT(!atomic_load(&w.finished));
    TST_RC(rt_aio_ctx_wakeup(idle), RT_OK);
    bg_wait_join(&w);
    TST_RC(w.rc, RT_ERR_INTERRUPTED);
    CU_ASSERT_EQUAL(w.got, 0);
    CU_ASSERT(w.elapsed_ms < LONG_MS / 2);
    got = 77;
    TST_RC(rt_aio_ctx_wait(idle, 1, 200, out, 4, &got), RT_ERR_TIMEOUT);

    TST_RC(rt_aio_ctx_destroy(idle), RT_OK);
    TST_RC(rt_aio_ctx_destroy(plain), RT_OK);
}

/* Rule 9: an interrupted wait hands back what it had collected, and those requests are
 * completed; nothing is lost either way. */
static void test_wakeup_with_collected(void)
{
    rt_aio_ctx_t ctx = ctx_new(8, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING);
    rt_file_t file = scratch(4096, RT_FILE_READ);
    rt_aio_req_t req = req_new(), out[2];
    struct bg_wait w;
    uint8_t buf[100];
    size_t n;

    TST_RC_FATAL(rt_aio_req_prepare_read(req, file, 5, buf, sizeof buf, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    bg_wait_start(&w, ctx, 2, 2, LONG_MS);
    sleep_ms(250);
    TST_RC(rt_aio_ctx_wakeup(ctx), RT_OK);
    bg_wait_join(&w);
    TST_RC(w.rc, RT_ERR_INTERRUPTED);
    CU_ASSERT_FATAL(w.got <= 1);
    if (w.got == 1) {
        CU_ASSERT_PTR_EQUAL(w.reqs[0], req);
    } else {
        printf("\n    note: the interrupted wait returned nothing; reaping again ");
        CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 1, LONG_MS), 1);
        CU_ASSERT_PTR_EQUAL(out[0], req);
    }
    n = 0;
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, sizeof buf);
    CU_ASSERT(pat_check(buf, 5, sizeof buf, 0));
    expect_idle(ctx, true);

    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
}

/* Rules 10, 13: while one thread waits, a second wait returns RT_ERR_AIO_BUSY at once
 * (whatever its timeout) and the context cannot be destroyed. */
static void test_second_waiter_busy(void)
{
    rt_aio_ctx_t ctx = ctx_new(8, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING);
    rt_aio_req_t out[4];
    struct bg_wait w;
    uint64_t t0, elapsed;
    uint32_t got = 77;
    int rc = RT_OK;

    /* The first waiter may lose the race to our probe and get BUSY itself; then start
     * it again.  A probe that times out ran before the waiter blocked. */
    for (int attempt = 0; attempt < 5; attempt++) {
        bg_wait_start(&w, ctx, 1, 4, LONG_MS);
        for (int i = 0; i < 200 && !atomic_load(&w.finished); i++) {
            got = 77;
            rc = rt_aio_ctx_wait(ctx, 1, 0, out, 4, &got);
            if (rc != RT_ERR_TIMEOUT)
                break;
            sleep_ms(10);
        }
        if (rc == RT_ERR_AIO_BUSY || !atomic_load(&w.finished))
            break;
        bg_wait_join(&w);
        if (w.rc != RT_ERR_AIO_BUSY)
            break;
    }
    TST_RC(rc, RT_ERR_AIO_BUSY);
    CU_ASSERT_EQUAL(got, 0);
    CU_ASSERT_FATAL(!atomic_load(&w.finished));

    got = 77;
    t0 = rt_time_milli_ts();
    TST_RC(rt_aio_ctx_wait(ctx, 1, 2000, out, 4, &got), RT_ERR_AIO_BUSY);
    elapsed = rt_time_milli_ts() - t0;
    CU_ASSERT_EQUAL(got, 0);
    CU_ASSERT(elapsed < 1000);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_ERR_AIO_BUSY);

    /* The refused calls did not disturb the waiter. */
    CU_ASSERT(!atomic_load(&w.finished));
    TST_RC(rt_aio_ctx_wakeup(ctx), RT_OK);
    bg_wait_join(&w);
    TST_RC(w.rc, RT_ERR_INTERRUPTED);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
}

/* ------------------------------------------------------------------------------------ */
/* Results, cancel, destroy                                                             */

/* Rule 11: byte counts of full reads, short reads at end of file, reads at and past the
 * end (RT_OK with 0), vectored short reads, flushes (0) and writes; transferred may be
 * NULL; a submitted request reports "in progress". */
static void test_get_rc_transferred(void)
{
    enum { SIZE = 10000 };
    rt_aio_ctx_t ctx = ctx_new(16, 0);
    rt_file_t file = scratch(SIZE, RT_FILE_READWRITE);
    rt_aio_req_t reqs[7], out[7];
    const size_t want[6] = {4096, SIZE - 8192, 0, 0, 0, 4000};
    uint8_t *buf = calloc(6, 8192), *data = malloc(333);
    rt_iovec_t iov[2];
    uint64_t size = 0;
    size_t n;

    CU_ASSERT_FATAL(buf != NULL && data != NULL);
    for (size_t i = 0; i < 7; i++)
        reqs[i] = req_new();
    iov[0].base = buf + 5 * 8192;
    iov[0].len = 300;
    iov[1].base = buf + 5 * 8192 + 1000;
    iov[1].len = 5000;
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[0], file, 0, buf, 4096, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[1], file, 8192, buf + 8192, 4096, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[2], file, SIZE, buf + 2 * 8192, 100, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[3], file, 50000, buf + 3 * 8192, 100, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_flush(reqs[4], file, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_req_prepare_readv(reqs[5], file, 6000, iov, 2, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, 6), RT_OK);
    for (size_t i = 0; i < 6; i++) {
        n = 4242;
        TST_RC(rt_aio_req_get_rc(reqs[i], &n), RT_ERR_AIO_IN_PROGRESS);
    }
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 6, LONG_MS), 6);
    expect_same_set(out, 6, reqs, 6);

    for (size_t i = 0; i < 6; i++) {
        n = 4242;
        TST_RC(rt_aio_req_get_rc(reqs[i], &n), RT_OK);
        if (n != want[i])
            fprintf(stderr, "  request %zu transferred %zu, expected %zu\n", i, n, want[i]);
        CU_ASSERT_EQUAL(n, want[i]);
        TST_RC(rt_aio_req_get_rc(reqs[i], NULL), RT_OK);
    }
    CU_ASSERT(pat_check(buf, 0, 4096, 0));
    CU_ASSERT(pat_check(buf + 8192, 8192, SIZE - 8192, 0));
    CU_ASSERT(all_bytes(buf + 8192 + (SIZE - 8192), 4096 - (SIZE - 8192), 0));
    CU_ASSERT(all_bytes(buf + 2 * 8192, 100, 0));
    CU_ASSERT(all_bytes(buf + 3 * 8192, 100, 0));
    CU_ASSERT(pat_check(buf + 5 * 8192, 6000, 300, 0));
    CU_ASSERT(pat_check(buf + 5 * 8192 + 1000, 6300, SIZE - 6300, 0));

    /* A write past the end reports its length and grows the file. */
    pat_fill(data, 20000, 333, 3);
    TST_RC_FATAL(rt_aio_req_prepare_write(reqs[6], file, 20000, data, 333, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &reqs[6], 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 1, LONG_MS), 1);
    n = 0;
    TST_RC(rt_aio_req_get_rc(reqs[6], &n), RT_OK);
    CU_ASSERT_EQUAL(n, 333);
    TST_RC(rt_file_get_size(file, &size), RT_OK);
    CU_ASSERT_EQUAL(size, 20333);

    for (size_t i = 0; i < 7; i++)
        TST_RC(rt_aio_req_destroy(reqs[i]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    free(buf);
    free(data);
}

/* Rules 12, 13, 15: cancel refuses unsubmitted requests.  On submitted ones it either
 * succeeds (status RT_ERR_AIO_CANCELED, never returned by wait, no longer outstanding,
 * buffer left alone) or says "in progress" (then wait returns it with its data).  A
 * cancelled request is reusable. */
static void test_cancel(void)
{
    enum { COUNT = 32, SIZE = 256 * 1024 };
    rt_aio_ctx_t ctx = ctx_new(COUNT, 0);
    rt_file_t file = scratch((uint64_t)COUNT * SIZE, RT_FILE_READ);
    rt_aio_req_t reqs[COUNT], out[COUNT], running[COUNT];
    uint8_t *buf = malloc((size_t)COUNT * SIZE);
    int verdict[COUNT];
    size_t n_running = 0, n_cancelled = 0, n;

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    memset(buf, 0, (size_t)COUNT * SIZE);
    for (size_t i = 0; i < COUNT; i++)
        reqs[i] = req_new();

    /* Not submitted: fresh, prepared. */
    TST_RC(rt_aio_req_cancel(reqs[0]), RT_ERR_AIO_NOT_SUBMITTED);
    for (size_t i = 0; i < COUNT; i++)
        TST_RC_FATAL(rt_aio_req_prepare_read(reqs[i], file, (uint64_t)i * SIZE,
                                             buf + (size_t)i * SIZE, SIZE,
                                             (void *)(uintptr_t)(i + 1)),
                     RT_OK);
    TST_RC(rt_aio_req_cancel(reqs[0]), RT_ERR_AIO_NOT_SUBMITTED);
    TST_RC(rt_aio_req_get_rc(reqs[0], NULL), RT_ERR_AIO_NOT_SUBMITTED);

    /* Submitted: cancel from the back, where queued requests are most likely. */
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, COUNT), RT_OK);
    for (size_t k = COUNT; k-- > 0;)
        verdict[k] = rt_aio_req_cancel(reqs[k]);
    for (size_t i = 0; i < COUNT; i++) {
        if (verdict[i] == RT_OK) {
            n_cancelled++;
            TST_RC(rt_aio_req_get_rc(reqs[i], NULL), RT_ERR_AIO_CANCELED);
            CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(reqs[i]), (void *)(uintptr_t)(i + 1));
            TST_RC(rt_aio_req_cancel(reqs[i]), RT_ERR_AIO_NOT_SUBMITTED);
            TST_RC(rt_aio_ctx_submit(ctx, &reqs[i], 1), RT_ERR_AIO_NOT_SUBMITTED);
            /* The library promised never to touch it again: mark it and look later. */
            memset(buf + i * SIZE, 0xA5, SIZE);
        } else if (verdict[i] == RT_ERR_AIO_IN_PROGRESS) {
            running[n_running++] = reqs[i];
        } else {
            fprintf(stderr, "  cancel of submitted request %zu -> %s\n", i,
                    rt_status_name(verdict[i]));
            CU_FAIL("cancel on a submitted request must be RT_OK or RT_ERR_AIO_IN_PROGRESS");
        }
    }
    printf("\n    %zu of %d cancelled ", n_cancelled, COUNT);

    /* Exactly the ones still running come back; then nothing is outstanding. */
    CU_ASSERT_EQUAL(reap(ctx, out, n_running, LONG_MS), n_running);
    expect_same_set(out, n_running, running, n_running);
    expect_idle(ctx, false);
    for (size_t i = 0; i < COUNT; i++) {
        if (verdict[i] == RT_OK) {
            CU_ASSERT(all_bytes(buf + i * SIZE, SIZE, 0xA5));
            TST_RC(rt_aio_req_get_rc(reqs[i], NULL), RT_ERR_AIO_CANCELED);
        } else if (verdict[i] == RT_ERR_AIO_IN_PROGRESS) {
            n = 0;
            TST_RC(rt_aio_req_get_rc(reqs[i], &n), RT_OK);
            CU_ASSERT_EQUAL(n, SIZE);
            CU_ASSERT(pat_check(buf + i * SIZE, (uint64_t)i * SIZE, SIZE, 0));
        }
        TST_RC(rt_aio_req_cancel(reqs[i]), RT_ERR_AIO_NOT_SUBMITTED);
    }

    /* Every request, cancelled or not, runs again. */
    memset(buf, 0, (size_t)COUNT * SIZE);
    for (size_t i = 0; i < COUNT; i++)
        TST_RC_FATAL(rt_aio_req_prepare_read(reqs[i], file, (uint64_t)i * SIZE,
                                             buf + (size_t)i * SIZE, SIZE, NULL),
                     RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, COUNT), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, COUNT, LONG_MS), COUNT);
    expect_same_set(out, COUNT, reqs, COUNT);
    for (size_t i = 0; i < COUNT; i++) {
        n = 0;
        TST_RC(rt_aio_req_get_rc(reqs[i], &n), RT_OK);
        CU_ASSERT_EQUAL(n, SIZE);
    }
    CU_ASSERT(pat_check(buf, 0, (size_t)COUNT * SIZE, 0));

    for (size_t i = 0; i < COUNT; i++)
        TST_RC(rt_aio_req_destroy(reqs[i]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    free(buf);
}

/* Rule 13: destroying a submitted request or a context with outstanding requests (even
 * finished but unreaped ones) is refused and keeps both fully working. */
static void test_destroy_busy(void)
{
    rt_aio_ctx_t ctx = ctx_new(4, 0), gone;
    rt_file_t file = scratch(4096, RT_FILE_READ);
    rt_aio_req_t req = req_new(), out;
    static int tag;
    uint8_t buf[256];
    size_t n;

    TST_RC_FATAL(rt_aio_req_prepare_read(req, file, 1, buf, sizeof buf, &tag), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    TST_RC(rt_aio_req_destroy(req), RT_ERR_AIO_IN_PROGRESS);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_ERR_AIO_BUSY);
    sleep_ms(50); /* finished by now, still not reaped */
    TST_RC(rt_aio_req_destroy(req), RT_ERR_AIO_IN_PROGRESS);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_ERR_AIO_BUSY);

    TST_RC(rt_aio_req_get_rc(req, NULL), RT_ERR_AIO_IN_PROGRESS);
    CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(req), &tag);
    CU_ASSERT_EQUAL(rt_aio_ctx_get_max_req_count(ctx), 4);
    CU_ASSERT_PTR_NOT_NULL(rt_aio_ctx_get_backend(ctx));
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
    CU_ASSERT_PTR_EQUAL(out, req);
    n = 0;
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, sizeof buf);
    CU_ASSERT(pat_check(buf, 1, sizeof buf, 0));

    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_req_destroy(req), RT_ERR_INVALID_HANDLE);
    gone = ctx;
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_aio_ctx_destroy(gone), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_file_close(file), RT_OK);
}

/* ------------------------------------------------------------------------------------ */
/* Reuse and data integrity                                                             */

/* Rules 15, 16: one request alternates between two contexts for many rounds, writing
 * and reading back; while submitted to one context it is invisible to the other. */
static void test_reuse(void)
{
    enum { ROUNDS = 200, BLOCK = 512 };
    rt_aio_ctx_t ctx[2] = {ctx_new(4, 0), ctx_new(4, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING)};
    rt_file_t file = scratch(16 * BLOCK, RT_FILE_READWRITE);
    rt_aio_req_t req = req_new(), out;
    uint8_t wbuf[BLOCK], rbuf[BLOCK];
    unsigned failures = 0;

    for (unsigned round = 0; round < ROUNDS && failures < 5; round++) {
        rt_aio_ctx_t here = ctx[round % 2], there = ctx[(round + 1) % 2];
        uint64_t off = (uint64_t)(round % 16) * BLOCK;
        size_t n = 0;
        uint32_t got = 77;
        int rc;

        pat_fill(wbuf, off, BLOCK, round + 1);
        TST_RC_FATAL(rt_aio_req_prepare_write(req, file, off, wbuf, BLOCK,
                                              (void *)(uintptr_t)(2 * round + 1)),
                     RT_OK);
        TST_RC_FATAL(rt_aio_ctx_submit(here, &req, 1), RT_OK);
        rc = rt_aio_ctx_wait(there, 1, 0, &out, 1, &got);
        CU_ASSERT(got == 0 && (rc == RT_ERR_AIO_NO_REQUEST || rc == RT_ERR_TIMEOUT));
        CU_ASSERT_EQUAL_FATAL(reap(here, &out, 1, LONG_MS), 1);
        CU_ASSERT_PTR_EQUAL(out, req);
        rc = rt_aio_req_get_rc(req, &n);
        if (rc != RT_OK || n != BLOCK)
            failures++;
        TST_RC(rc, RT_OK);
        CU_ASSERT_EQUAL(n, BLOCK);
        CU_ASSERT_PTR_EQUAL(rt_aio_req_get_user(req), (void *)(uintptr_t)(2 * round + 1));

        memset(rbuf, 0, BLOCK);
        TST_RC_FATAL(rt_aio_req_prepare_read(req, file, off, rbuf, BLOCK,
                                             (void *)(uintptr_t)(2 * round + 2)),
                     RT_OK);
        TST_RC_FATAL(rt_aio_ctx_submit(there, &req, 1), RT_OK);
        CU_ASSERT_EQUAL_FATAL(reap(there, &out, 1, LONG_MS), 1);
        n = 0;
        TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
        CU_ASSERT_EQUAL(n, BLOCK);
        if (!pat_check(rbuf, off, BLOCK, round + 1)) {
            failures++;
            CU_FAIL("read after write returned other data");
        }
    }
    expect_idle(ctx[0], false);
    expect_idle(ctx[1], true);

    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx[0]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx[1]), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
}

/* Rule 4: a request is bound to the open it was prepared on.  Closing that file and
 * opening another, which takes the same descriptor number (and, from the handle pool,
 * the same handle memory), must not let the request read or write the new file: the
 * submit is refused, in a batch too, and nothing moves.  Prepared again on the new
 * file, the same request works. */
static void test_closed_file_refused(void)
{
    enum { BLOCK = 512 };
    rt_aio_ctx_t ctx = ctx_new(4, 0);
    rt_aio_req_t stale = req_new(), fine = req_new(), batch[2], out;
    rt_file_t old_file = scratch(4 * BLOCK, RT_FILE_READWRITE);
    int old_fd = (int)rt_file_to_native(old_file);
    uint8_t wbuf[BLOCK], rbuf[BLOCK], check[BLOCK];

    memset(wbuf, 0xa5, BLOCK);
    TST_RC_FATAL(rt_aio_req_prepare_write(stale, old_file, 0, wbuf, BLOCK, NULL), RT_OK);
    TST_RC(rt_file_close(old_file), RT_OK);
    rt_file_t new_file = scratch(4 * BLOCK, RT_FILE_READWRITE);
    if ((int)rt_file_to_native(new_file) != old_fd || new_file != old_file)
        printf("\n  note: descriptor %d / handle %p not reused (%d / %p); still checked ",
               old_fd, (void *)old_file, (int)rt_file_to_native(new_file), (void *)new_file);

    TST_RC(rt_aio_ctx_submit(ctx, &stale, 1), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_req_get_rc(stale, NULL), RT_ERR_AIO_NOT_SUBMITTED);
    TST_RC_FATAL(rt_aio_req_prepare_read(fine, new_file, 0, rbuf, BLOCK, NULL), RT_OK);
    batch[0] = fine;
    batch[1] = stale;
    TST_RC(rt_aio_ctx_submit(ctx, batch, 2), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_aio_req_get_rc(fine, NULL), RT_ERR_AIO_NOT_SUBMITTED);
    expect_idle(ctx, false);
    /* The new file is untouched: still the pattern scratch() wrote. */
    TST_RC(rt_file_read_at(new_file, 0, check, BLOCK, NULL), RT_OK);
    CU_ASSERT(pat_check(check, 0, BLOCK, 0));

    /* Prepared again, on a live file, the same request goes through. */
    TST_RC_FATAL(rt_aio_req_prepare_write(stale, new_file, 0, wbuf, BLOCK, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &stale, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
    TST_RC(rt_aio_req_get_rc(stale, NULL), RT_OK);
    TST_RC(rt_file_read_at(new_file, 0, check, BLOCK, NULL), RT_OK);
    CU_ASSERT(all_bytes(check, BLOCK, 0xa5));

    TST_RC(rt_aio_req_destroy(stale), RT_OK);
    TST_RC(rt_aio_req_destroy(fine), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(new_file), RT_OK);
}

/* Rule 16: a gather write of many odd-sized pieces lands exactly; a flush after it
 * completes RT_OK with 0 bytes; a scatter read with another split, a plain synchronous
 * read and a 1024-entry readv all see the same bytes.  The iovec arrays are scribbled
 * over right after prepare: prepare must have copied them. */
static void test_vectored_integrity(void)
{
    static const size_t wsizes[] = {1, 3, 7,    4093, 13, 300, 1,    8191, 77,  511,
                                    2, 5, 4096, 999,  17, 1,   6000, 33,   123, 64};
    static const size_t rsizes[] = {5, 4000, 409, 1, 14000, 2048, 4001, 777, 3};
    enum { NW = sizeof wsizes / sizeof wsizes[0], NR = sizeof rsizes / sizeof rsizes[0] };
    const uint64_t base = 12345;
    rt_aio_ctx_t ctx = ctx_new(4, 0);
    rt_file_t file = scratch(65536, RT_FILE_READWRITE);
    rt_aio_req_t req = req_new(), out;
    rt_iovec_t wiov[NW], riov[NR], *many = calloc(1024, sizeof *many);
    uint8_t *data, *back, *junk = calloc(1, 65536), *sync = malloc(65536);
    size_t total = 0, rtotal = 0, at, n;

    CU_ASSERT_FATAL(many != NULL && junk != NULL && sync != NULL);
    for (size_t i = 0; i < NW; i++)
        total += wsizes[i];
    for (size_t i = 0; i < NR; i++)
        rtotal += rsizes[i];
    CU_ASSERT_FATAL(rtotal >= total);
    data = malloc(total);
    back = calloc(1, rtotal);
    CU_ASSERT_FATAL(data != NULL && back != NULL);
    pat_fill(data, base, total, 11);

    /* Pieces point into data in order, but not contiguously in memory order of the
     * array: each is a separate chunk, so a library that used only the first base
     * would write the wrong bytes. */
    at = 0;
    for (size_t i = 0; i < NW; i++) {
        wiov[i].base = data + at;
        wiov[i].len = wsizes[i];
        at += wsizes[i];
    }
    TST_RC_FATAL(rt_aio_req_prepare_writev(req, file, base, wiov, NW, NULL), RT_OK);
    for (size_t i = 0; i < NW; i++) {
        wiov[i].base = junk;
        wiov[i].len = 1;
    }
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
    n = 0;
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, total);

    /* Flush, submitted after the write completed. */
    TST_RC_FATAL(rt_aio_req_prepare_flush(req, file, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
    n = 99;
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, 0);

    /* Read back through another split; the read reaches past the written range into
     * the original contents. */
    at = 0;
    for (size_t i = 0; i < NR; i++) {
        riov[i].base = back + at;
        riov[i].len = rsizes[i];
        at += rsizes[i];
    }
    TST_RC_FATAL(rt_aio_req_prepare_readv(req, file, base, riov, NR, NULL), RT_OK);
    for (size_t i = 0; i < NR; i++) {
        riov[i].base = junk;
        riov[i].len = 1;
    }
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
    n = 0;
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, rtotal);
    CU_ASSERT(memcmp(back, data, total) == 0);
    CU_ASSERT(pat_check(back + total, base + total, rtotal - total, 0));
    CU_ASSERT(all_bytes(junk, 65536, 0)); /* nothing went through the scribbled copies */

    TST_RC(rt_file_read_at(file, base, sync, total, NULL), RT_OK);
    CU_ASSERT(memcmp(sync, data, total) == 0);
    TST_RC(rt_file_read_at(file, 0, sync, base, NULL), RT_OK);
    CU_ASSERT(pat_check(sync, 0, base, 0));

    /* 1024 one-byte entries (IOV_MAX), in reverse memory order. */
    memset(back, 0, rtotal);
    for (size_t i = 0; i < 1024; i++) {
        many[i].base = back + 1023 - i;
        many[i].len = 1;
    }
    TST_RC_FATAL(rt_aio_req_prepare_readv(req, file, base, many, 1024, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
    n = 0;
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, 1024);
    for (size_t i = 0; i < 1024; i++) {
        if (back[1023 - i] != data[i]) {
            CU_FAIL("1024-entry readv put a byte in the wrong place");
            break;
        }
    }

    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    free(many);
    free(junk);
    free(sync);
    free(data);
    free(back);
}

/* Rules 5, 16 on RT_FILE_NO_CACHE (the truly asynchronous path for linux-aio): aligned
 * writes, a gather write, a flush and reads back through AIO and through a cached
 * handle all agree. */
static void test_no_cache_integrity(void)
{
    const size_t page = rt_mem_page_size();
    rt_aio_ctx_t ctx;
    rt_file_t file, cached;
    rt_aio_req_t reqs[8], out[8];
    uint8_t *wmem, *rmem, *check;
    rt_iovec_t iov[2];
    char path[600], name[32];
    size_t n;
    int rc;

    rc = scratch_open(&file, 16 * page, RT_FILE_READWRITE | RT_FILE_NO_CACHE);
    if (rc == RT_ERR_NOT_SUPPORTED) {
        printf("\n    SKIP: %s refuses O_DIRECT (%s) ", tst_dir(), rt_strerror(rc));
        return;
    }
    TST_RC_FATAL(rc, RT_OK);
    snprintf(name, sizeof name, "f%u", file_seq);
    tst_path(path, sizeof path, name);
    wmem = rt_mem_page_alloc(8 * page);
    rmem = rt_mem_page_alloc(8 * page);
    check = malloc(8 * page);
    CU_ASSERT_FATAL(wmem != NULL && rmem != NULL && check != NULL);
    ctx = ctx_new(8, 0);
    for (size_t i = 0; i < 8; i++)
        reqs[i] = req_new();

    /* Pages 2..7 written one by one; pages 8 and 9 by one gather write whose pieces
     * are swapped in memory. */
    pat_fill(wmem, 2 * page, 6 * page, 5);
    for (size_t i = 0; i < 6; i++)
        TST_RC_FATAL(
            rt_aio_req_prepare_write(reqs[i], file, (2 + i) * page, wmem + i * page, page, NULL),
            RT_OK);
    pat_fill(rmem + page, 8 * page, page, 5);
    pat_fill(rmem, 9 * page, page, 5);
    iov[0].base = rmem + page;
    iov[0].len = page;
    iov[1].base = rmem;
    iov[1].len = page;
    TST_RC_FATAL(rt_aio_req_prepare_writev(reqs[6], file, 8 * page, iov, 2, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, 7), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 7, LONG_MS), 7);
    for (size_t i = 0; i < 7; i++) {
        n = 0;
        TST_RC(rt_aio_req_get_rc(reqs[i], &n), RT_OK);
        CU_ASSERT_EQUAL(n, i < 6 ? page : 2 * page);
    }
    TST_RC_FATAL(rt_aio_req_prepare_flush(reqs[7], file, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, &reqs[7], 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 1, LONG_MS), 1);
    n = 5;
    TST_RC(rt_aio_req_get_rc(reqs[7], &n), RT_OK);
    CU_ASSERT_EQUAL(n, 0);

    /* Pages 1..8 back in one read: page 1 original, 2..8 new. */
    memset(rmem, 0, 8 * page);
    TST_RC_FATAL(rt_aio_req_prepare_read(reqs[0], file, page, rmem, 8 * page, NULL), RT_OK);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, reqs, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, out, 1, LONG_MS), 1);
    n = 0;
    TST_RC(rt_aio_req_get_rc(reqs[0], &n), RT_OK);
    CU_ASSERT_EQUAL(n, 8 * page);
    CU_ASSERT(pat_check(rmem, page, page, 0));
    CU_ASSERT(pat_check(rmem + page, 2 * page, 7 * page, 5));

    /* Through the page cache, via another handle. */
    TST_RC_FATAL(rt_file_open(&cached, path, RT_FILE_READ | RT_FILE_OPEN, 0), RT_OK);
    TST_RC(rt_file_read_at(cached, 2 * page, check, 8 * page, NULL), RT_OK);
    CU_ASSERT(pat_check(check, 2 * page, 8 * page, 5));
    TST_RC(rt_file_read_at(cached, 10 * page, check, page, NULL), RT_OK);
    CU_ASSERT(pat_check(check, 10 * page, page, 0));
    TST_RC(rt_file_close(cached), RT_OK);

    for (size_t i = 0; i < 8; i++)
        TST_RC(rt_aio_req_destroy(reqs[i]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    rt_mem_page_free(wmem, 8 * page);
    rt_mem_page_free(rmem, 8 * page);
    free(check);
}

/* ------------------------------------------------------------------------------------ */
/* Threads                                                                              */

/* Rule 11 at sizes the kernel interfaces cannot move in one piece: io_uring takes 32-bit
 * lengths and both kernel interfaces stop one transfer near 2 GiB.  A 4 GiB + 4 KiB read
 * and a two-piece readv of a sparse file must still arrive whole: a marker written at
 * the far end must land at the end of the buffer.  Registered only with TST_HUGE=1
 * (see main); passes trivially on a host that cannot map 4 GiB, saying so. */
static void test_huge_transfer(void)
{
    const size_t len = ((size_t)4 << 30) + 4096;
    const uint64_t off = 4096;
    static const char marker[8] = "TAILMARK";
    rt_aio_ctx_t ctx;
    rt_file_t file;
    rt_aio_req_t req, out;
    rt_iovec_t iov[2];
    uint8_t *buf;
    size_t n = 0;

    if (sizeof(size_t) < 8)
        return; /* a 32-bit host cannot address it */
    buf = rt_mem_page_alloc(len);
    if (buf == NULL) {
        printf("\n    (skipped: cannot map %zu bytes)", len);
        return;
    }
    ctx = ctx_new(2, 0);
    file = scratch(0, RT_FILE_READWRITE);
    req = req_new();
    TST_RC_FATAL(rt_file_set_size(file, off + len + 4096), RT_OK);
    TST_RC_FATAL(rt_file_write_at(file, off + len - sizeof marker, marker, sizeof marker, NULL),
                 RT_OK);

    TST_RC(rt_aio_req_prepare_read(req, file, off, buf, len, NULL), RT_OK);
    TST_RC(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, 60000), 1);
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, len);
    CU_ASSERT_EQUAL(memcmp(buf + len - sizeof marker, marker, sizeof marker), 0);
    CU_ASSERT_EQUAL(buf[0], 0);
    CU_ASSERT_EQUAL(buf[len / 2], 0);

    memset(buf + len - sizeof marker, 0, sizeof marker);
    iov[0].base = buf;
    iov[0].len = ((size_t)5 << 29); /* 2.5 GiB */
    iov[1].base = buf + iov[0].len;
    iov[1].len = len - iov[0].len;
    TST_RC(rt_aio_req_prepare_readv(req, file, off, iov, 2, NULL), RT_OK);
    TST_RC(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, 60000), 1);
    n = 0;
    TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
    CU_ASSERT_EQUAL(n, len);
    CU_ASSERT_EQUAL(memcmp(buf + len - sizeof marker, marker, sizeof marker), 0);

    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    rt_mem_page_free(buf, len);
}

/* Rule 17: the moment get_rc stops saying "in progress", the request is the caller's.
 * Another thread polls, destroys each request as soon as it is completed and recycles
 * the memory into new requests while the wait that reaped them may still be returning;
 * the new requests must come out untouched. */
struct poll_state {
    rt_aio_req_t *reqs;
    size_t count;
    rt_aio_req_t *fresh; /* made by the poller after each destroy */
    int bad_rc;          /* first unexpected get_rc or destroy status, or RT_OK */
    size_t done;
};

static void *poll_and_recycle(void *arg)
{
    struct poll_state *ps = arg;
    bool *finished = calloc(ps->count, sizeof *finished);
    uint64_t deadline = rt_time_milli_ts() + LONG_MS;
    static int marker;

    if (finished == NULL)
        return NULL;
    while (ps->done < ps->count && rt_time_milli_ts() < deadline) {
        for (size_t i = 0; i < ps->count; i++) {
            int rc;
            if (finished[i])
                continue;
            rc = rt_aio_req_get_rc(ps->reqs[i], NULL);
            if (rc == RT_ERR_AIO_IN_PROGRESS)
                continue;
            if (rc != RT_OK && ps->bad_rc == RT_OK)
                ps->bad_rc = rc;
            rc = rt_aio_req_destroy(ps->reqs[i]);
            if (rc != RT_OK && ps->bad_rc == RT_OK)
                ps->bad_rc = rc;
            finished[i] = true;
            ps->done++;
            if (rt_aio_req_create(&ps->fresh[i]) == RT_OK)
                (void)rt_aio_req_prepare_flush(ps->fresh[i], RT_FILE_NIL, &marker);
        }
    }
    free(finished);
    return NULL;
}

static void test_release_on_completion(void)
{
    enum { COUNT = 32 };
    rt_aio_ctx_t ctx = ctx_new(COUNT, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING);
    rt_file_t file = scratch(COUNT * 512, RT_FILE_READ);
    rt_aio_req_t reqs[COUNT], fresh[COUNT], again[COUNT];
    uint8_t *buf = calloc(COUNT, 512);
    struct poll_state ps = {.reqs = reqs, .count = COUNT, .fresh = fresh, .bad_rc = RT_OK};
    struct bg_wait w;
    pthread_t poller;
    static int tag;

    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    for (size_t i = 0; i < COUNT; i++) {
        reqs[i] = req_new();
        fresh[i] = RT_AIO_REQ_NIL;
        TST_RC_FATAL(rt_aio_req_prepare_read(reqs[i], file, i * 512, buf + i * 512, 512, NULL),
                     RT_OK);
    }
    bg_wait_start(&w, ctx, COUNT, COUNT, LONG_MS);
    /* The poller starts after the submit: before it, "not submitted" is the truth. */
    TST_RC(rt_aio_ctx_submit(ctx, reqs, COUNT), RT_OK);
    CU_ASSERT_FATAL(pthread_create(&poller, NULL, poll_and_recycle, &ps) == 0);
    bg_wait_join(&w);
    pthread_join(poller, NULL);

    TST_RC(w.rc, RT_OK);
    CU_ASSERT_EQUAL(w.got, COUNT);
    expect_same_set(w.reqs, w.got <= COUNT ? w.got : 0, reqs, COUNT);
    TST_RC(ps.bad_rc, RT_OK);
    CU_ASSERT_EQUAL(ps.done, COUNT);
    CU_ASSERT(pat_check(buf, 0, COUNT * 512, 0));

    /* The recycled requests: a failed prepare left them fresh, nothing else touched
     * them.  They still work. */
    for (size_t i = 0; i < COUNT; i++) {
        CU_ASSERT_PTR_NOT_NULL_FATAL(fresh[i]);
        TST_RC(rt_aio_req_get_rc(fresh[i], NULL), RT_ERR_AIO_NOT_SUBMITTED);
        CU_ASSERT_PTR_NULL(rt_aio_req_get_user(fresh[i]));
        TST_RC_FATAL(rt_aio_req_prepare_read(fresh[i], file, i * 512, buf + i * 512, 512, &tag),
                     RT_OK);
    }
    memset(buf, 0, COUNT * 512);
    TST_RC_FATAL(rt_aio_ctx_submit(ctx, fresh, COUNT), RT_OK);
    CU_ASSERT_EQUAL_FATAL(reap(ctx, again, COUNT, LONG_MS), COUNT);
    expect_same_set(again, COUNT, fresh, COUNT);
    CU_ASSERT(pat_check(buf, 0, COUNT * 512, 0));
    expect_idle(ctx, true);

    for (size_t i = 0; i < COUNT; i++)
        TST_RC(rt_aio_req_destroy(fresh[i]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    free(buf);
}

/* Rule 10: several threads create, prepare, submit, poll and cancel on one context
 * while this thread waits.  Every request ends exactly once: returned by wait, or
 * cancelled with RT_OK, never both. */
enum { SUB_THREADS = 4, SUB_EACH = 32, SUB_BLOCK = 512 };

struct submitter {
    pthread_t thread;
    rt_aio_ctx_t ctx;
    rt_file_t file;
    unsigned id;
    rt_aio_req_t reqs[SUB_EACH];
    uint8_t *buf;
    bool cancelled[SUB_EACH];
    int bad_rc;
    atomic_bool finished;
};

static void submit_and_cancel(struct submitter *s)
{
    for (size_t i = 0; i < SUB_EACH; i++) {
        s->reqs[i] = RT_AIO_REQ_NIL;
        if (rt_aio_req_create(&s->reqs[i]) != RT_OK ||
            rt_aio_req_prepare_read(s->reqs[i], s->file,
                                    (uint64_t)(s->id * SUB_EACH + i) * SUB_BLOCK,
                                    s->buf + i * SUB_BLOCK, SUB_BLOCK,
                                    (void *)(uintptr_t)(s->id * SUB_EACH + i + 1)) != RT_OK) {
            s->bad_rc = RT_ERR_GENERAL_FAILURE;
            return;
        }
    }
    for (size_t i = 0; i < SUB_EACH; i += 4) {
        int rc = rt_aio_ctx_submit(s->ctx, s->reqs + i, 4);
        if (rc != RT_OK) {
            s->bad_rc = rc;
            return;
        }
        for (size_t k = i; k < i + 4; k++) {
            rc = rt_aio_req_get_rc(s->reqs[k], NULL);
            if (rc != RT_ERR_AIO_IN_PROGRESS && rc != RT_OK)
                s->bad_rc = rc;
        }
        /* Cancel every third one; the waiter may have it already. */
        rc = rt_aio_req_cancel(s->reqs[i + 1]);
        if (rc == RT_OK) {
            s->cancelled[i + 1] = true;
            if (rt_aio_req_get_rc(s->reqs[i + 1], NULL) != RT_ERR_AIO_CANCELED)
                s->bad_rc = RT_ERR_GENERAL_FAILURE;
        } else if (rc != RT_ERR_AIO_IN_PROGRESS && rc != RT_ERR_AIO_NOT_SUBMITTED) {
            s->bad_rc = rc;
        }
    }
}

static void *submitter_main(void *arg)
{
    struct submitter *s = arg;
    submit_and_cancel(s);
    atomic_store(&s->finished, true);
    return NULL;
}

static void test_concurrent_submitters(void)
{
    const size_t total = SUB_THREADS * SUB_EACH;
    rt_aio_ctx_t ctx = ctx_new((uint32_t)total, RT_AIO_CTX_F_WAIT_WITHOUT_PENDING);
    rt_file_t file = scratch(total * SUB_BLOCK, RT_FILE_READ);
    struct submitter *subs = calloc(SUB_THREADS, sizeof *subs);
    uint8_t *buf = calloc(total, SUB_BLOCK);
    unsigned *returned = calloc(total, sizeof *returned);
    rt_aio_req_t out[32];
    size_t reaped = 0, cancelled = 0;
    uint64_t deadline;
    unsigned live = SUB_THREADS;

    CU_ASSERT_FATAL(subs != NULL && buf != NULL && returned != NULL);
    for (unsigned t = 0; t < SUB_THREADS; t++) {
        subs[t].ctx = ctx;
        subs[t].file = file;
        subs[t].id = t;
        subs[t].buf = buf + (size_t)t * SUB_EACH * SUB_BLOCK;
        atomic_init(&subs[t].finished, false);
        CU_ASSERT_FATAL(pthread_create(&subs[t].thread, NULL, submitter_main, &subs[t]) == 0);
    }

    /* Reap until every submitter is done and every request is accounted for. */
    deadline = rt_time_milli_ts() + LONG_MS;
    for (;;) {
        uint32_t got = 0;
        int rc = rt_aio_ctx_wait(ctx, 1, 100, out, 32, &got);
        if (rc != RT_OK && rc != RT_ERR_TIMEOUT) {
            TST_RC(rc, RT_OK);
            break;
        }
        for (uint32_t i = 0; i < got && i < 32; i++) {
            uintptr_t tag = (uintptr_t)rt_aio_req_get_user(out[i]);
            if (tag < 1 || tag > total) {
                CU_FAIL("wait returned a request with an unknown user value");
                continue;
            }
            returned[tag - 1]++;
            reaped++;
        }
        if (live > 0) {
            live = 0;
            for (unsigned t = 0; t < SUB_THREADS; t++)
                live += !atomic_load(&subs[t].finished);
        }
        if (live == 0) {
            cancelled = 0;
            for (unsigned t = 0; t < SUB_THREADS; t++)
                for (size_t i = 0; i < SUB_EACH; i++)
                    cancelled += subs[t].cancelled[i];
            if (reaped + cancelled >= total)
                break;
        }
        if (rt_time_milli_ts() > deadline) {
            CU_FAIL("requests went missing: not all were returned or cancelled");
            break;
        }
    }
    for (unsigned t = 0; t < SUB_THREADS; t++)
        pthread_join(subs[t].thread, NULL);

    CU_ASSERT_EQUAL(reaped + cancelled, total);
    for (unsigned t = 0; t < SUB_THREADS; t++) {
        TST_RC(subs[t].bad_rc, RT_OK);
        for (size_t i = 0; i < SUB_EACH; i++) {
            size_t id = (size_t)t * SUB_EACH + i;
            unsigned ends = returned[id] + (subs[t].cancelled[i] ? 1u : 0u);
            if (ends != 1)
                fprintf(stderr, "  request %zu: returned %u times, cancelled %d\n", id,
                        returned[id], subs[t].cancelled[i]);
            CU_ASSERT_EQUAL(ends, 1);
            if (returned[id] == 1) {
                TST_RC(rt_aio_req_get_rc(subs[t].reqs[i], NULL), RT_OK);
                CU_ASSERT(pat_check(buf + id * SUB_BLOCK, id * SUB_BLOCK, SUB_BLOCK, 0));
            }
        }
    }
    expect_idle(ctx, true);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    for (unsigned t = 0; t < SUB_THREADS; t++)
        for (size_t i = 0; i < SUB_EACH; i++)
            TST_RC(rt_aio_req_destroy(subs[t].reqs[i]), RT_OK);
    TST_RC(rt_file_close(file), RT_OK);
    free(subs);
    free(buf);
    free(returned);
}

/* Rule 9: after everything above, the library has installed no signal handler, and it
 * never wrote into the zeroed memory posing as handles. */
static void test_no_signals_no_scribbles(void)
{
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction now;
        if (!start_action_valid[sig] || sigaction(sig, NULL, &now) != 0)
            continue;
        if (now.sa_handler != start_actions[sig].sa_handler ||
            (now.sa_flags & SA_SIGINFO) != (start_actions[sig].sa_flags & SA_SIGINFO)) {
            fprintf(stderr, "  signal %d (%s) has a new disposition\n", sig, strsignal(sig));
            CU_FAIL("the library installed a signal handler");
        }
    }
    CU_ASSERT(all_bytes(&zeroed, sizeof zeroed, 0));
}

/* RT_AIO_REQ_F_DSYNC: a durable write and writev read back right, cached and uncached;
 * set_flags refuses what it cannot mean; a prepare clears the flag.  On the thread pool
 * the durability is visible: one fdatasync per flagged write and none for a plain one. */
static atomic_int fdatasyncs;

static int counting_fdatasync(int fd)
{
    atomic_fetch_add(&fdatasyncs, 1);
    return fdatasync(fd);
}

static void test_dsync_write(void)
{
    enum { LEN = 8192 };
    const bool threads = strcmp(TST_BACKEND, "threads") == 0;
    rt_aio_ctx_t ctx = ctx_new(8, 0);
    rt_aio_req_t req = req_new(), out;
    uint8_t *buf = rt_mem_page_alloc(2 * LEN), *back = rt_mem_page_alloc(2 * LEN);
    CU_ASSERT_FATAL(buf != NULL && back != NULL);

    TST_RC(rt_aio_req_set_flags(req, RT_AIO_REQ_F_DSYNC), RT_ERR_INVALID_PARAMETER); /* fresh */
    TST_RC(rt_aio_req_set_flags(dead_req(), 0), RT_ERR_INVALID_HANDLE);
    if (threads)
        rt__posix_sys.fdatasync = counting_fdatasync;
    for (int uncached = 0; uncached < 2; uncached++) {
        rt_file_t file;
        int rc = scratch_open(&file, 2 * LEN, RT_FILE_READWRITE | (uncached ? RT_FILE_NO_CACHE : 0));
        if (rc != RT_OK) {
            fprintf(stderr, "\n  (no O_DIRECT on the scratch file system: uncached part left out)");
            break;
        }
        TST_RC(rt_aio_req_prepare_read(req, file, 0, back, LEN, NULL), RT_OK);
        TST_RC(rt_aio_req_set_flags(req, RT_AIO_REQ_F_DSYNC), RT_ERR_INVALID_PARAMETER);
        TST_RC(rt_aio_req_prepare_flush(req, file, NULL), RT_OK);
        TST_RC(rt_aio_req_set_flags(req, RT_AIO_REQ_F_DSYNC), RT_ERR_INVALID_PARAMETER);
        for (int k = 0; k < 3; k++) {
            int before = atomic_load(&fdatasyncs);
            pat_fill(buf, 0, 2 * LEN, (uint8_t)(k + 1 + 3 * uncached));
            rt_iovec_t iov[2] = {{buf, LEN}, {buf + LEN, LEN}};
            if (k == 1)
                TST_RC_FATAL(rt_aio_req_prepare_writev(req, file, 0, iov, 2, NULL), RT_OK);
            else
                TST_RC_FATAL(rt_aio_req_prepare_write(req, file, 0, buf, 2 * LEN, NULL), RT_OK);
            TST_RC(rt_aio_req_set_flags(req, 0x2), RT_ERR_INVALID_PARAMETER);
            if (k < 2) /* the third is plain: the prepare cleared the flag */
                TST_RC(rt_aio_req_set_flags(req, RT_AIO_REQ_F_DSYNC), RT_OK);
            TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
            int busy = rt_aio_req_set_flags(req, 0); /* in flight, or already complete */
            CU_ASSERT(busy == RT_ERR_AIO_IN_PROGRESS || busy == RT_ERR_INVALID_PARAMETER);
            CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
            size_t n = 0;
            TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
            CU_ASSERT_EQUAL(n, 2 * LEN);
            if (threads)
                CU_ASSERT_EQUAL(atomic_load(&fdatasyncs) - before, k < 2 ? 1 : 0);
            memset(back, 0xee, 2 * LEN);
            TST_RC_FATAL(rt_aio_req_prepare_read(req, file, 0, back, 2 * LEN, NULL), RT_OK);
            TST_RC_FATAL(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
            CU_ASSERT_EQUAL_FATAL(reap(ctx, &out, 1, LONG_MS), 1);
            TST_RC(rt_aio_req_get_rc(req, &n), RT_OK);
            CU_ASSERT(n == 2 * LEN && memcmp(back, buf, 2 * LEN) == 0);
        }
        TST_RC(rt_aio_req_set_flags(req, RT_AIO_REQ_F_DSYNC), RT_ERR_INVALID_PARAMETER); /* done */
        TST_RC(rt_file_close(file), RT_OK);
    }
    rt__posix_sys_reset();
    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    rt_mem_page_free(buf, 2 * LEN);
    rt_mem_page_free(back, 2 * LEN);
}

int main(void)
{
    CU_pSuite suite;

    /* Before the library runs at all. */
    for (int sig = 1; sig < NSIG; sig++)
        start_action_valid[sig] = sigaction(sig, NULL, &start_actions[sig]) == 0;
    /* A hung wait fails the run instead of stalling it (default action: terminate). */
    alarm(240);

    backend_flag = tst_backend_flag(TST_BACKEND);
    tst_require_backend(TST_BACKEND);

    suite = tst_suite("fileaio-" TST_BACKEND);
    TST_ADD(suite, test_limits);
    TST_ADD(suite, test_ctx_create);
    TST_ADD(suite, test_ctx_destroy_args);
    TST_ADD(suite, test_ctx_get_backend);
    TST_ADD(suite, test_backend_env);
    TST_ADD(suite, test_associate);
    TST_ADD(suite, test_register_buffers);
    TST_ADD(suite, test_req_create);
    TST_ADD(suite, test_prepare_args);
    TST_ADD(suite, test_state_machine);
    TST_ADD(suite, test_req_get_user);
    TST_ADD(suite, test_submit_all_or_nothing);
    TST_ADD(suite, test_capacity);
    TST_ADD(suite, test_unlimited);
    TST_ADD(suite, test_per_request_failure);
    TST_ADD(suite, test_no_cache_bad_direction);
    TST_ADD(suite, test_no_cache_misaligned);
    TST_ADD(suite, test_wait_args);
    TST_ADD(suite, test_wait_min_n);
    TST_ADD(suite, test_wait_timeout);
    TST_ADD(suite, test_wait_without_pending);
    TST_ADD(suite, test_wakeup);
    TST_ADD(suite, test_wakeup_with_collected);
    TST_ADD(suite, test_second_waiter_busy);
    TST_ADD(suite, test_get_rc_transferred);
    TST_ADD(suite, test_dsync_write);
    TST_ADD(suite, test_cancel);
    TST_ADD(suite, test_destroy_busy);
    TST_ADD(suite, test_reuse);
    TST_ADD(suite, test_closed_file_refused);
    TST_ADD(suite, test_vectored_integrity);
    TST_ADD(suite, test_no_cache_integrity);
    /* 4 GiB of page faults and copies: 20-30 s on a small VM.  ./dev.sh test runs it in
     * the plain configuration only (TST_HUGE=1); it is not registered otherwise, so
     * no skipped test counts as passed. */
    if (getenv("TST_HUGE") != NULL && strcmp(getenv("TST_HUGE"), "1") == 0)
        TST_ADD(suite, test_huge_transfer);
    TST_ADD(suite, test_release_on_completion);
    TST_ADD(suite, test_concurrent_submitters);
    TST_ADD(suite, test_no_signals_no_scribbles);
    return tst_run();
}
