/*
 * Error paths of the linux-aio backend, reached by replacing its system calls through
 * the rt__laio_sys table (and rt__posix_sys for the helper thread's fsync): what the
 * kernel does rarely or only under load, made to happen on every run.
 *
 *  - io_setup EAGAIN: a bounded context fails with RT_ERR_AIO_INSUFFICIENT_EVENTS, an
 *    unlimited one settles for fewer slots.
 *  - io_submit: EAGAIN, partial submission, a refused first iocb (EBADF), a refused
 *    IOCB_CMD_FSYNC (the flush then runs on a helper), EAGAIN with nothing in flight.
 *  - io_getevents: EINTR; completions carrying EIO, ENOSPC and short counts.
 *  - buffered files never reach io_submit() for reads and writes (they would run
 *    synchronously there), only for flushes.
 *  - how a submit is cut into io_submit() calls: an idle device gets the first request
 *    alone, then 8, then the rest; a busy one, two requests, or RT_AIO_SUBMIT=whole get
 *    one call (internal/early_start.h).
 *
 * Each fault function counts its calls so a test can prove the fault was hit.
 */
#include <config.h>

#include <errno.h>
#include <string.h>

#include <rt/file.h>
#include <rt/fileaio.h>
#include <rt/mem.h>

#include "internal/posix_sys.h"
#include "r3/linux/laio_sys.h"
#include "tst_common.h"

#define BLOCK 4096u
#define NREQS 16u

static struct rt__laio_sys real;
static rt_file_t file;
static char *buffer;
static char path[512];
static int calls; /* how often the current fault function ran */
static long fault_errno;

static void restore(void)
{
    rt__laio_sys_reset();
    rt__posix_sys_reset();
    calls = 0;
}

static int suite_setup(void)
{
    rt_aio_ctx_t ctx;
    real = rt__laio_sys;
    buffer = rt_mem_page_alloc(NREQS * BLOCK);
    if (buffer == NULL)
        return -1;
    tst_path(path, sizeof path, "faults.bin");
    /* O_DIRECT: only those reads and writes go to io_submit(); buffered ones go to the
     * helper pool (test_buffered_io_skips_the_kernel). */
    if (rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_CREATE_REPLACE | RT_FILE_NO_CACHE,
                     0) != RT_OK)
        return -1;
    memset(buffer, 0x5a, NREQS * BLOCK);
    if (rt_file_write_at(file, 0, buffer, NREQS * BLOCK, NULL) != RT_OK)
        return -1;
    /* Run the backend probes now, so a faked io_setup below meets only the context
     * under test. */
    if (rt_aio_ctx_create(&ctx, 1, RT_AIO_CTX_F_BACKEND_LINUX_AIO) != RT_OK)
        return -1;
    return rt_aio_ctx_destroy(ctx);
}

static int suite_teardown(void)
{
    restore();
    rt_file_close(file);
    rt_mem_page_free(buffer, NREQS * BLOCK);
    return 0;
}

/* Creates @a n requests reading block i into buffer block i. */
static void prepare_reads(rt_aio_req_t *reqs, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        TST_RC_FATAL(rt_aio_req_create(&reqs[i]), RT_OK);
        TST_RC_FATAL(rt_aio_req_prepare_read(reqs[i], file, (uint64_t)i * BLOCK, buffer + i * BLOCK,
                                             BLOCK, NULL),
                     RT_OK);
    }
}

/* Waits until all @a n submitted requests are back; returns how many came back. */
static unsigned reap_all(rt_aio_ctx_t ctx, unsigned n)
{
    rt_aio_req_t done[NREQS];
    unsigned total = 0;

    while (total < n) {
        uint32_t got = 0;
        int rc = rt_aio_ctx_wait(ctx, 1, 5000, done, NREQS, &got);
        total += got;
        if (rc != RT_OK) {
            fprintf(stderr, "  wait: %s after %u of %u\n", rt_status_name(rc), total, n);
            break;
        }
    }
    return total;
}

static void destroy_all(rt_aio_ctx_t ctx, rt_aio_req_t *reqs, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        TST_RC(rt_aio_req_destroy(reqs[i]), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
}

/* ---- io_setup ----------------------------------------------------------------------- */

static long setup_eagain(unsigned nr, laio_context_t *ctx)
{
    calls++;
    return -EAGAIN;
}

static void test_setup_eagain_bounded(void)
{
    rt_aio_ctx_t ctx = (rt_aio_ctx_t)&ctx;
    rt__laio_sys.io_setup = setup_eagain;
    TST_RC(rt_aio_ctx_create(&ctx, 64, RT_AIO_CTX_F_BACKEND_LINUX_AIO),
           RT_ERR_AIO_INSUFFICIENT_EVENTS);
    CU_ASSERT_PTR_NULL(ctx);
    CU_ASSERT(calls >= 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(rt_strerror(RT_ERR_AIO_INSUFFICIENT_EVENTS), "aio-max-nr"));
    restore();
}

/* Refuses anything above 8 events, as a host near aio-max-nr would. */
static long setup_at_most_8(unsigned nr, laio_context_t *ctx)
{
    calls++;
    return nr > 8 ? -EAGAIN : real.io_setup(nr, ctx);
}

static void test_setup_eagain_unlimited_settles(void)
{
    rt_aio_ctx_t ctx;
    rt_aio_req_t reqs[NREQS];

    rt__laio_sys.io_setup = setup_at_most_8;
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, RT_AIO_UNLIMITED_REQS, RT_AIO_CTX_F_BACKEND_LINUX_AIO),
                 RT_OK);
    CU_ASSERT(calls > 1); /* it asked for more first, then settled */
    CU_ASSERT_EQUAL(rt_aio_ctx_get_max_req_count(ctx), RT_AIO_UNLIMITED_REQS);
    /* Twice as many requests as kernel slots: the rest wait on the deferred list. */
    prepare_reads(reqs, NREQS);
    TST_RC(rt_aio_ctx_submit(ctx, reqs, NREQS), RT_OK);
    CU_ASSERT_EQUAL(reap_all(ctx, NREQS), NREQS);
    for (unsigned i = 0; i < NREQS; i++) {
        size_t got = 0;
        TST_RC(rt_aio_req_get_rc(reqs[i], &got), RT_OK);
        CU_ASSERT_EQUAL(got, BLOCK);
    }
    destroy_all(ctx, reqs, NREQS);
    restore();
}

static void test_setup_bounded_beyond_host(void)
{
    rt_aio_ctx_t ctx;
    rt__laio_sys.io_setup = setup_at_most_8;
    TST_RC(rt_aio_ctx_create(&ctx, 9, RT_AIO_CTX_F_BACKEND_LINUX_AIO),
           RT_ERR_AIO_INSUFFICIENT_EVENTS);
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, 8, RT_AIO_CTX_F_BACKEND_LINUX_AIO), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    restore();
}

/* ---- io_submit ---------------------------------------------------------------------- */

static long submit_eagain_once(laio_context_t ctx, long n, struct laio_iocb **iocbs)
{
    if (calls++ == 0)
        return -EAGAIN;
    return real.io_submit(ctx, n, iocbs);
}

static void run_batch_expect_ok(uint32_t capacity)
{
    rt_aio_ctx_t ctx;
    rt_aio_req_t reqs[NREQS];

    TST_RC_FATAL(rt_aio_ctx_create(&ctx, capacity, RT_AIO_CTX_F_BACKEND_LINUX_AIO), RT_OK);
    prepare_reads(reqs, NREQS);
    TST_RC(rt_aio_ctx_submit(ctx, reqs, NREQS), RT_OK);
    CU_ASSERT_EQUAL(reap_all(ctx, NREQS), NREQS);
    for (unsigned i = 0; i < NREQS; i++) {
        size_t got = 0;
        TST_RC(rt_aio_req_get_rc(reqs[i], &got), RT_OK);
        CU_ASSERT_EQUAL(got, BLOCK);
    }
    destroy_all(ctx, reqs, NREQS);
}

static void test_submit_eagain_is_retried(void)
{
    rt__laio_sys.io_submit = submit_eagain_once;
    run_batch_expect_ok(NREQS);
    CU_ASSERT(calls >= 2);
    restore();
}

static long submit_one_at_a_time(laio_context_t ctx, long n, struct laio_iocb **iocbs)
{
    calls++;
    return real.io_submit(ctx, 1, iocbs);
}

static void test_submit_partial_is_looped(void)
{
    rt__laio_sys.io_submit = submit_one_at_a_time;
    run_batch_expect_ok(NREQS);
    CU_ASSERT_EQUAL(calls, (int)NREQS);
    restore();
}

/* Refuses the iocb at the head of any batch whose head reads offset 3 * BLOCK. */
static long submit_refuse_block3(laio_context_t ctx, long n, struct laio_iocb **iocbs)
{
    calls++;
    if (iocbs[0]->aio_offset == 3 * (int64_t)BLOCK)
        return -fault_errno;
    for (long i = 1; i < n; i++) {
        if (iocbs[i]->aio_offset == 3 * (int64_t)BLOCK)
            return real.io_submit(ctx, i, iocbs); /* stops before it, as the kernel does */
    }
    return real.io_submit(ctx, n, iocbs);
}

static void test_submit_refused_iocb_completes_alone(void)
{
    rt_aio_ctx_t ctx;
    rt_aio_req_t reqs[NREQS];

    fault_errno = EBADF;
    rt__laio_sys.io_submit = submit_refuse_block3;
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, NREQS, RT_AIO_CTX_F_BACKEND_LINUX_AIO), RT_OK);
    prepare_reads(reqs, NREQS);
    TST_RC(rt_aio_ctx_submit(ctx, reqs, NREQS), RT_OK);
    CU_ASSERT_EQUAL(reap_all(ctx, NREQS), NREQS);
    for (unsigned i = 0; i < NREQS; i++)
        TST_RC(rt_aio_req_get_rc(reqs[i], NULL), i == 3 ? RT_ERR_BAD_FILE : RT_OK);
    CU_ASSERT(calls >= 3); /* before, at, and after the refused one */
    destroy_all(ctx, reqs, NREQS);
    restore();
}

static long submit_always_eagain(laio_context_t ctx, long n, struct laio_iocb **iocbs)
{
    calls++;
    return -EAGAIN;
}

static void test_submit_eagain_forever_fails_with_try_again(void)
{
    rt_aio_ctx_t ctx;
    rt_aio_req_t reqs[4];

    rt__laio_sys.io_submit = submit_always_eagain;
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, 4, RT_AIO_CTX_F_BACKEND_LINUX_AIO), RT_OK);
    prepare_reads(reqs, 4);
    TST_RC(rt_aio_ctx_submit(ctx, reqs, 4), RT_OK);
    CU_ASSERT_EQUAL(reap_all(ctx, 4), 4);
    for (unsigned i = 0; i < 4; i++)
        TST_RC(rt_aio_req_get_rc(reqs[i], NULL), RT_ERR_TRY_AGAIN);
    destroy_all(ctx, reqs, 4);
    restore();
}

static int fsync_submits;
static int helper_fsyncs;

static long submit_refuse_fsync(laio_context_t ctx, long n, struct laio_iocb **iocbs)
{
    if (iocbs[0]->aio_lio_opcode == LAIO_CMD_FSYNC) {
        fsync_submits++;
        return -EINVAL;
    }
    return real.io_submit(ctx, n, iocbs);
}

static int counting_fsync(int fd)
{
    helper_fsyncs++;
    return fsync(fd);
}

static void test_flush_refused_by_kernel_runs_on_helper(void)
{
    rt_aio_ctx_t ctx;
    rt_aio_req_t req;

    fsync_submits = helper_fsyncs = 0;
    rt__laio_sys.io_submit = submit_refuse_fsync;
    rt__posix_sys.fsync = counting_fsync;
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, 4, RT_AIO_CTX_F_BACKEND_LINUX_AIO), RT_OK);
    TST_RC_FATAL(rt_aio_req_create(&req), RT_OK);
    for (int round = 0; round < 3; round++) {
        TST_RC(rt_aio_req_prepare_flush(req, file, NULL), RT_OK);
        TST_RC(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
        CU_ASSERT_EQUAL(reap_all(ctx, 1), 1);
        TST_RC(rt_aio_req_get_rc(req, NULL), RT_OK);
    }
    /* The kernel was asked once; after its refusal every flush went to the helper. */
    CU_ASSERT_EQUAL(fsync_submits, 1);
    CU_ASSERT_EQUAL(helper_fsyncs, 3);
    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    restore();
}

static int failing_fsync(int fd)
{
    errno = EIO;
    return -1;
}

static void test_flush_on_helper_reports_its_failure(void)
{
    rt_aio_ctx_t ctx;
    rt_aio_req_t req;

    rt__laio_sys.io_submit = submit_refuse_fsync;
    rt__posix_sys.fsync = failing_fsync;
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, 4, RT_AIO_CTX_F_BACKEND_LINUX_AIO), RT_OK);
    TST_RC_FATAL(rt_aio_req_create(&req), RT_OK);
    TST_RC(rt_aio_req_prepare_flush(req, file, NULL), RT_OK);
    TST_RC(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    CU_ASSERT_EQUAL(reap_all(ctx, 1), 1);
    TST_RC(rt_aio_req_get_rc(req, NULL), RT_ERR_IO); /* never a false "durable" */
    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    restore();
}

/* ---- io_getevents ------------------------------------------------------------------- */

static long getevents_eintr_once(laio_context_t ctx, long min_nr, long nr,
                                 struct laio_event *events, struct laio_timespec *timeout)
{
    if (calls++ == 0)
        return -EINTR;
    return real.io_getevents(ctx, min_nr, nr, events, timeout);
}

static void test_getevents_eintr_is_retried(void)
{
    rt__laio_sys.io_getevents = getevents_eintr_once;
    run_batch_expect_ok(NREQS);
    CU_ASSERT(calls >= 2);
    restore();
}

/* Rewrites the result of every completion for block 5. */
static int64_t forced_result;

static long getevents_rewrite(laio_context_t ctx, long min_nr, long nr, struct laio_event *events,
                              struct laio_timespec *timeout)
{
    long got = real.io_getevents(ctx, min_nr, nr, events, timeout);
    for (long i = 0; i < got; i++) {
        struct laio_iocb *iocb = (struct laio_iocb *)(uintptr_t)events[i].obj;
        if (iocb->aio_offset == 5 * (int64_t)BLOCK) {
            events[i].res = forced_result;
            calls++;
        }
    }
    return got;
}

static void check_block5_result(int64_t result, int want_rc, size_t want_bytes)
{
    rt_aio_ctx_t ctx;
    rt_aio_req_t reqs[NREQS];

    forced_result = result;
    rt__laio_sys.io_getevents = getevents_rewrite;
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, NREQS, RT_AIO_CTX_F_BACKEND_LINUX_AIO), RT_OK);
    prepare_reads(reqs, NREQS);
    TST_RC(rt_aio_ctx_submit(ctx, reqs, NREQS), RT_OK);
    CU_ASSERT_EQUAL(reap_all(ctx, NREQS), NREQS);
    CU_ASSERT_EQUAL(calls, 1);
    for (unsigned i = 0; i < NREQS; i++) {
        size_t got = 0;
        int rc = rt_aio_req_get_rc(reqs[i], &got);
        if (i == 5) {
            TST_RC(rc, want_rc);
            if (want_rc == RT_OK)
                CU_ASSERT_EQUAL(got, want_bytes);
        } else {
            TST_RC(rc, RT_OK);
            CU_ASSERT_EQUAL(got, BLOCK);
        }
    }
    destroy_all(ctx, reqs, NREQS);
    restore();
}

static void test_completion_eio(void)
{
    check_block5_result(-EIO, RT_ERR_IO, 0);
}

static void test_completion_enospc(void)
{
    check_block5_result(-ENOSPC, RT_ERR_DISK_FULL, 0);
}

static void test_completion_short_read(void)
{
    check_block5_result(BLOCK / 2, RT_OK, BLOCK / 2);
}

/* ---- cancel of what the kernel has not seen ----------------------------------------- */

static void test_cancel_deferred_request(void)
{
    rt_aio_ctx_t ctx;
    rt_aio_req_t reqs[NREQS];
    rt_aio_req_t done[NREQS];
    unsigned canceled = 0, returned = 0;

    /* Every submit is refused with EAGAIN while requests are in flight, so the batch
     * stays on the deferred list until the waiter pumps it. */
    rt__laio_sys.io_submit = submit_always_eagain;
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, NREQS, RT_AIO_CTX_F_BACKEND_LINUX_AIO), RT_OK);
    prepare_reads(reqs, NREQS);
    TST_RC(rt_aio_ctx_submit(ctx, reqs, NREQS), RT_OK);
    for (unsigned i = 0; i < NREQS; i += 2) {
        TST_RC(rt_aio_req_cancel(reqs[i]), RT_OK);
        TST_RC(rt_aio_req_get_rc(reqs[i], NULL), RT_ERR_AIO_CANCELED);
        canceled++;
    }
    rt__laio_sys.io_submit = real.io_submit;
    while (returned + canceled < NREQS) {
        uint32_t got = 0;
        int rc = rt_aio_ctx_wait(ctx, 1, 5000, done, NREQS, &got);
        for (uint32_t i = 0; i < got; i++) {
            unsigned index = 0;
            while (reqs[index] != done[i])
                index++;
            CU_ASSERT(index % 2 == 1); /* a cancelled request never comes back */
        }
        returned += got;
        if (rc != RT_OK)
            break;
    }
    CU_ASSERT_EQUAL(returned, NREQS - canceled);
    destroy_all(ctx, reqs, NREQS);
    restore();
}

/* ---- cutting a submit ---------------------------------------------------------------- */

static long submit_sizes[NREQS]; /* the nr of each io_submit() call, calls of them */

static long submit_recording(laio_context_t ctx, long n, struct laio_iocb **iocbs)
{
    if (calls < (int)NREQS)
        submit_sizes[calls] = n;
    calls++;
    return real.io_submit(ctx, n, iocbs);
}

/* Submits requests [0, n) of @a reqs in runs of @a runs[] before reaping any, and
 * checks that io_submit() saw exactly the calls @a want[] (@a n_want of them). */
static void check_cuts(const unsigned *runs, size_t n_runs, const long *want, int n_want)
{
    rt_aio_ctx_t ctx;
    rt_aio_req_t reqs[NREQS];
    unsigned n = 0;

    rt__laio_sys.io_submit = submit_recording;
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, NREQS, RT_AIO_CTX_F_BACKEND_LINUX_AIO), RT_OK);
    prepare_reads(reqs, NREQS);
    for (size_t i = 0; i < n_runs; n += runs[i++])
        TST_RC(rt_aio_ctx_submit(ctx, reqs + n, runs[i]), RT_OK);
    CU_ASSERT_EQUAL(reap_all(ctx, n), n);
    CU_ASSERT_EQUAL(calls, n_want);
    for (int i = 0; i < n_want && i < calls; i++) {
        if (submit_sizes[i] != want[i])
            fprintf(stderr, "  io_submit call %d took %ld, expected %ld\n", i, submit_sizes[i],
                    want[i]);
        CU_ASSERT_EQUAL(submit_sizes[i], want[i]);
    }
    for (unsigned i = 0; i < n; i++)
        TST_RC(rt_aio_req_get_rc(reqs[i], NULL), RT_OK);
    destroy_all(ctx, reqs, NREQS);
    restore();
}

static void test_idle_device_starts_early(void)
{
    static const unsigned runs[] = {16};
    static const long want[] = {1, 8, 7};

    check_cuts(runs, 1, want, 3);
}

/* Nothing is reaped between the submits, so the requests in flight are those submitted
 * before: 0 < 3 (1, then 2), 3 < 4 (1, then 3), 7 = 7 (one call). */
static void test_requests_in_flight_decide(void)
{
    static const unsigned runs[] = {3, 4, 7};
    static const long want[] = {1, 2, 1, 3, 7};

    check_cuts(runs, 3, want, 5);
}

static void test_two_requests_go_together(void)
{
    static const unsigned runs[] = {2};
    static const long want[] = {2};

    check_cuts(runs, 1, want, 1);
}

static void test_whole_submits_when_asked(void)
{
    static const unsigned runs[] = {16};
    static const long want[] = {16};

    setenv("RT_AIO_SUBMIT", "whole", 1);
    check_cuts(runs, 1, want, 1);
    unsetenv("RT_AIO_SUBMIT");
}

/* ---- buffered files ------------------------------------------------------------------ */

static int kernel_rw_submits;
static int kernel_fsync_submits;

static long submit_counting(laio_context_t ctx, long n, struct laio_iocb **iocbs)
{
    for (long i = 0; i < n; i++) {
        if (iocbs[i]->aio_lio_opcode == LAIO_CMD_FSYNC)
            kernel_fsync_submits++;
        else
            kernel_rw_submits++;
    }
    return real.io_submit(ctx, n, iocbs);
}

static void test_buffered_io_skips_the_kernel(void)
{
    rt_aio_ctx_t ctx;
    rt_aio_req_t reqs[4];
    rt_file_t buffered;
    char buffered_path[512];
    static char data[4][100];

    kernel_rw_submits = kernel_fsync_submits = 0;
    tst_path(buffered_path, sizeof buffered_path, "buffered.bin");
    TST_RC_FATAL(
        rt_file_open(&buffered, buffered_path, RT_FILE_READWRITE | RT_FILE_CREATE_REPLACE, 0),
        RT_OK);
    rt__laio_sys.io_submit = submit_counting;
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, 4, RT_AIO_CTX_F_BACKEND_LINUX_AIO), RT_OK);
    for (unsigned i = 0; i < 3; i++) {
        memset(data[i], 'a' + (int)i, sizeof data[i]);
        TST_RC_FATAL(rt_aio_req_create(&reqs[i]), RT_OK);
        TST_RC(rt_aio_req_prepare_write(reqs[i], buffered, i * sizeof data[i], data[i],
                                        sizeof data[i], NULL),
               RT_OK);
    }
    TST_RC_FATAL(rt_aio_req_create(&reqs[3]), RT_OK);
    TST_RC(rt_aio_req_prepare_flush(reqs[3], buffered, NULL), RT_OK);
    TST_RC(rt_aio_ctx_submit(ctx, reqs, 3), RT_OK);
    CU_ASSERT_EQUAL(reap_all(ctx, 3), 3);
    TST_RC(rt_aio_ctx_submit(ctx, &reqs[3], 1), RT_OK);
    CU_ASSERT_EQUAL(reap_all(ctx, 1), 1);
    for (unsigned i = 0; i < 4; i++) {
        size_t bytes = 1;
        TST_RC(rt_aio_req_get_rc(reqs[i], &bytes), RT_OK);
        CU_ASSERT_EQUAL(bytes, i < 3 ? sizeof data[i] : 0);
    }
    CU_ASSERT_EQUAL(kernel_rw_submits, 0);    /* the writes ran on the pool */
    CU_ASSERT_EQUAL(kernel_fsync_submits, 1); /* the flush went to the kernel */
    rt__laio_sys.io_submit = real.io_submit;
    for (unsigned i = 0; i < 3; i++) {
        char back[100];
        TST_RC(rt_file_read_at(buffered, i * sizeof back, back, sizeof back, NULL), RT_OK);
        CU_ASSERT_EQUAL(memcmp(back, data[i], sizeof back), 0);
    }
    destroy_all(ctx, reqs, 4);
    TST_RC(rt_file_close(buffered), RT_OK);
    restore();
}

int main(void)
{
    CU_pSuite suite;

    tst_require_backend("linux-aio");
    {
        rt_file_t probe;
        char probe_path[512];
        int rc = rt_file_open(&probe, tst_path(probe_path, sizeof probe_path, "direct.probe"),
                              RT_FILE_READWRITE | RT_FILE_CREATE_REPLACE | RT_FILE_NO_CACHE, 0);
        if (rc == RT_ERR_NOT_SUPPORTED) {
            printf("SKIP: %s refuses O_DIRECT, which these tests need (set TMPDIR)\n", tst_dir());
            return TST_SKIP;
        }
        rt_file_close(probe);
    }
    suite = tst_suite("laio_faults");
    CU_set_suite_initfunc(suite, suite_setup);
    CU_set_suite_cleanupfunc(suite, suite_teardown);
    TST_ADD(suite, test_setup_eagain_bounded);
    TST_ADD(suite, test_setup_eagain_unlimited_settles);
    TST_ADD(suite, test_setup_bounded_beyond_host);
    TST_ADD(suite, test_submit_eagain_is_retried);
    TST_ADD(suite, test_submit_partial_is_looped);
    TST_ADD(suite, test_submit_refused_iocb_completes_alone);
    TST_ADD(suite, test_submit_eagain_forever_fails_with_try_again);
    TST_ADD(suite, test_flush_refused_by_kernel_runs_on_helper);
    TST_ADD(suite, test_flush_on_helper_reports_its_failure);
    TST_ADD(suite, test_getevents_eintr_is_retried);
    TST_ADD(suite, test_completion_eio);
    TST_ADD(suite, test_completion_enospc);
    TST_ADD(suite, test_completion_short_read);
    TST_ADD(suite, test_cancel_deferred_request);
    TST_ADD(suite, test_buffered_io_skips_the_kernel);
    TST_ADD(suite, test_idle_device_starts_early);
    TST_ADD(suite, test_requests_in_flight_decide);
    TST_ADD(suite, test_two_requests_go_together);
    TST_ADD(suite, test_whole_submits_when_asked);
    return tst_run();
}
