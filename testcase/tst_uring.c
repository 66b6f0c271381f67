/*
 * What only the io_uring backend does, and the conformance suite cannot force:
 *
 *  - a cancel the kernel accepts.  A read of an empty FIFO waits inside io_uring and
 *    can be cancelled; the backend must then swallow its -ECANCELED completion, so the
 *    request is never returned by wait and can be reused at once without a stale
 *    completion being mistaken for the new one (rule 17).
 *  - the same while another thread is blocked in wait on the context.
 *  - more requests than the ring has completion slots: the rest wait on the deferred
 *    list and go in as slots free up.
 *  - a submit that finds the device short of work goes to the kernel in three parts
 *    (the first request, the next 8, the rest) and one that finds it busy in one: every
 *    size around those cuts, and submits while others are in flight (the SQ filling
 *    after the cuts is test_bounded_beyond_ring's 10000 requests in a 4096-entry SQ).
 */
#include <config.h>

#include <pthread.h>
#include <string.h>
#include <sys/stat.h>

#include <rt/file.h>
#include <rt/fileaio.h>
#include <rt/mem.h>

#include "tst_common.h"

#define FLAG RT_AIO_CTX_F_BACKEND_IO_URING

static rt_file_t open_fifo(const char *name)
{
    char path[512];
    rt_file_t fifo = RT_FILE_NIL;

    tst_path(path, sizeof path, name);
    unlink(path);
    CU_ASSERT_EQUAL_FATAL(mkfifo(path, 0600), 0);
    /* Read-write, so the open does not wait for a writer (Linux allows it on FIFOs). */
    TST_RC_FATAL(rt_file_open(&fifo, path, RT_FILE_READWRITE | RT_FILE_OPEN, 0), RT_OK);
    return fifo;
}

static rt_file_t regular_file(const char *name, const char *content)
{
    char path[512];
    rt_file_t file = RT_FILE_NIL;

    tst_path(path, sizeof path, name);
    TST_RC_FATAL(rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_CREATE_REPLACE, 0), RT_OK);
    TST_RC_FATAL(rt_file_write_at(file, 0, content, strlen(content), NULL), RT_OK);
    return file;
}

static void test_cancel_blocked_read_and_reuse(void)
{
    rt_aio_ctx_t ctx;
    rt_aio_req_t req, done[4];
    rt_file_t fifo = open_fifo("cancel.fifo");
    rt_file_t file = regular_file("cancel.txt", "fresh data");
    char buf[32];
    uint32_t got = 99;
    size_t bytes = 0;

    TST_RC_FATAL(rt_aio_ctx_create(&ctx, 4, FLAG), RT_OK);
    TST_RC_FATAL(rt_aio_req_create(&req), RT_OK);
    memset(buf, 'x', sizeof buf);
    TST_RC(rt_aio_req_prepare_read(req, fifo, 0, buf, sizeof buf, NULL), RT_OK);
    TST_RC(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    TST_RC(rt_aio_ctx_wait(ctx, 1, 50, done, 4, &got), RT_ERR_TIMEOUT); /* it blocks */
    CU_ASSERT_EQUAL(got, 0);

    /* The kernel can cancel a read waiting on a FIFO (IORING_REGISTER_SYNC_CANCEL,
     * Linux 6.0 and later). */
    TST_RC(rt_aio_req_cancel(req), RT_OK);
    TST_RC(rt_aio_req_get_rc(req, NULL), RT_ERR_AIO_CANCELED);
    CU_ASSERT_EQUAL(buf[0], 'x'); /* its buffer was not touched */
    TST_RC(rt_aio_ctx_wait(ctx, 1, 0, done, 4, &got), RT_ERR_AIO_NO_REQUEST);

    /* Reuse at once: the old -ECANCELED completion must not stand in for this one. */
    TST_RC(rt_aio_req_prepare_read(req, file, 0, buf, sizeof buf, (void *)file), RT_OK);
    TST_RC(rt_aio_ctx_submit(ctx, &req, 1), RT_OK);
    TST_RC(rt_aio_ctx_wait(ctx, 1, 5000, done, 4, &got), RT_OK);
    CU_ASSERT_EQUAL(got, 1);
    CU_ASSERT_PTR_EQUAL(done[0], req);
    TST_RC(rt_aio_req_get_rc(req, &bytes), RT_OK);
    CU_ASSERT_EQUAL(bytes, strlen("fresh data"));
    CU_ASSERT_EQUAL(memcmp(buf, "fresh data", bytes), 0);

    TST_RC(rt_aio_req_destroy(req), RT_OK);
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    rt_file_close(fifo);
    rt_file_close(file);
}

struct waiter {
    rt_aio_ctx_t ctx;
    rt_aio_req_t done[8];
    uint32_t got;
    int rc;
};

static void *wait_for_two(void *arg)
{
    struct waiter *w = arg;
    uint32_t total = 0;

    do {
        uint32_t got = 0;
        w->rc = rt_aio_ctx_wait(w->ctx, 1, 5000, w->done + total, 8 - total, &got);
        total += got;
    } while (w->rc == RT_OK && total < 2);
    w->got = total;
    return NULL;
}

static void test_cancel_while_another_thread_waits(void)
{
    struct waiter w = {0};
    rt_aio_req_t blocked, reads[2];
    rt_file_t fifo = open_fifo("race.fifo");
    rt_file_t file = regular_file("race.txt", "0123456789");
    char fifo_buf[8], buf[2][5];
    pthread_t thread;

    TST_RC_FATAL(rt_aio_ctx_create(&w.ctx, 8, FLAG | RT_AIO_CTX_F_WAIT_WITHOUT_PENDING), RT_OK);
    TST_RC_FATAL(rt_aio_req_create(&blocked), RT_OK);
    TST_RC(rt_aio_req_prepare_read(blocked, fifo, 0, fifo_buf, sizeof fifo_buf, NULL), RT_OK);
    TST_RC(rt_aio_ctx_submit(w.ctx, &blocked, 1), RT_OK);
    CU_ASSERT_EQUAL_FATAL(pthread_create(&thread, NULL, wait_for_two, &w), 0);
    usleep(20000); /* let it block */

    TST_RC(rt_aio_req_cancel(blocked), RT_OK);
    for (int i = 0; i < 2; i++) {
        TST_RC_FATAL(rt_aio_req_create(&reads[i]), RT_OK);
        TST_RC(rt_aio_req_prepare_read(reads[i], file, (uint64_t)i * 5, buf[i], 5, NULL), RT_OK);
    }
    TST_RC(rt_aio_ctx_submit(w.ctx, reads, 2), RT_OK);
    pthread_join(thread, NULL);

    TST_RC(w.rc, RT_OK);
    CU_ASSERT_EQUAL(w.got, 2);
    for (uint32_t i = 0; i < w.got; i++)
        CU_ASSERT(w.done[i] != blocked); /* the cancelled one never comes back */
    CU_ASSERT_EQUAL(memcmp(buf[0], "01234", 5), 0);
    CU_ASSERT_EQUAL(memcmp(buf[1], "56789", 5), 0);
    TST_RC(rt_aio_req_get_rc(blocked, NULL), RT_ERR_AIO_CANCELED);

    for (int i = 0; i < 2; i++)
        TST_RC(rt_aio_req_destroy(reads[i]), RT_OK);
    TST_RC(rt_aio_req_destroy(blocked), RT_OK);
    TST_RC(rt_aio_ctx_destroy(w.ctx), RT_OK);
    rt_file_close(fifo);
    rt_file_close(file);
}

/* A wait blocked on the only outstanding request ends when that request is cancelled:
 * nothing is left that could complete (rule 8), so it returns RT_ERR_AIO_NO_REQUEST
 * instead of sleeping forever. */
static void *wait_forever(void *arg)
{
    struct waiter *w = arg;
    w->rc = rt_aio_ctx_wait(w->ctx, 1, RT_INDEFINITE_WAIT, w->done, 8, &w->got);
    return NULL;
}

static void test_cancel_last_request_ends_wait(void)
{
    struct waiter w = {0};
    rt_aio_req_t blocked;
    rt_file_t fifo = open_fifo("last.fifo");
    char buf[8];
    pthread_t thread;

    TST_RC_FATAL(rt_aio_ctx_create(&w.ctx, 4, FLAG), RT_OK);
    TST_RC_FATAL(rt_aio_req_create(&blocked), RT_OK);
    TST_RC(rt_aio_req_prepare_read(blocked, fifo, 0, buf, sizeof buf, NULL), RT_OK);
    TST_RC(rt_aio_ctx_submit(w.ctx, &blocked, 1), RT_OK);
    w.got = 99;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&thread, NULL, wait_forever, &w), 0);
    usleep(50000); /* let it go to sleep */
    TST_RC(rt_aio_req_cancel(blocked), RT_OK);
    pthread_join(thread, NULL);
    TST_RC(w.rc, RT_ERR_AIO_NO_REQUEST);
    CU_ASSERT_EQUAL(w.got, 0);
    TST_RC(rt_aio_req_destroy(blocked), RT_OK);
    TST_RC(rt_aio_ctx_destroy(w.ctx), RT_OK);
    rt_file_close(fifo);
}

/* Sums @a sizes[0..n). */
static unsigned total_of(const unsigned *sizes, size_t n)
{
    unsigned sum = 0;

    for (size_t i = 0; i < n; i++)
        sum += sizes[i];
    return sum;
}

/* Reads one-byte requests of a file whose byte i is i * 7, submitted in consecutive
 * submits of @a sizes[] requests before the first wait, and checks that every one
 * completes with its own byte. */
static void run_submits(uint32_t capacity, const unsigned *sizes, size_t n_sizes)
{
    const unsigned count = total_of(sizes, n_sizes);
    rt_aio_ctx_t ctx;
    rt_aio_req_t *reqs = calloc(count, sizeof *reqs);
    rt_aio_req_t *done = calloc(count, sizeof *done);
    unsigned char *bytes = calloc(count, 1);
    rt_file_t file;
    char path[512];
    unsigned total = 0;

    CU_ASSERT_FATAL(reqs != NULL && done != NULL && bytes != NULL);
    tst_path(path, sizeof path, "many.bin");
    TST_RC_FATAL(rt_file_open(&file, path, RT_FILE_READWRITE | RT_FILE_CREATE_REPLACE, 0), RT_OK);
    for (unsigned i = 0; i < count; i++) {
        unsigned char value = (unsigned char)(i * 7);
        TST_RC_FATAL(rt_file_write_at(file, i, &value, 1, NULL), RT_OK);
    }
    TST_RC_FATAL(rt_aio_ctx_create(&ctx, capacity, FLAG), RT_OK);
    for (unsigned i = 0; i < count; i++) {
        TST_RC_FATAL(rt_aio_req_create(&reqs[i]), RT_OK);
        TST_RC_FATAL(rt_aio_req_prepare_read(reqs[i], file, i, &bytes[i], 1, NULL), RT_OK);
    }
    for (size_t i = 0, first = 0; i < n_sizes; first += sizes[i++])
        TST_RC(rt_aio_ctx_submit(ctx, reqs + first, sizes[i]), RT_OK);
    while (total < count) {
        uint32_t got = 0;
        int rc = rt_aio_ctx_wait(ctx, 1, 10000, done, count, &got);
        total += got;
        if (rc != RT_OK)
            break;
    }
    CU_ASSERT_EQUAL(total, count);
    for (unsigned i = 0; i < count; i++) {
        TST_RC(rt_aio_req_get_rc(reqs[i], NULL), RT_OK);
        CU_ASSERT_EQUAL(bytes[i], (unsigned char)(i * 7));
        rt_aio_req_destroy(reqs[i]);
    }
    TST_RC(rt_aio_ctx_destroy(ctx), RT_OK);
    rt_file_close(file);
    free(reqs);
    free(done);
    free(bytes);
}

static void run_many(uint32_t capacity, unsigned count)
{
    run_submits(capacity, &count, 1);
}

/* 6000 reads in one submit: more than an unlimited context's 2048 completion slots
 * and a bounded context's 8192 (capacity 10000): the deferred list carries the rest. */
static void test_unlimited_beyond_ring(void)
{
    run_many(RT_AIO_UNLIMITED_REQS, 6000);
}

static void test_bounded_beyond_ring(void)
{
    run_many(10000, 10000);
}

/* Into an idle ring, each size around the cuts after the first and the ninth request. */
static void test_submit_sizes_around_the_cuts(void)
{
    static const unsigned counts[] = {1, 2, 3, 8, 9, 10, 11, 17, 33, 64};

    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++)
        run_many(64, counts[i]);
}

/* 40 in flight, then 8 more (a busy device: one part) and 50 more (fewer in flight
 * than it adds: three parts). */
static void test_submit_while_busy(void)
{
    static const unsigned sizes[] = {40, 8, 50};

    run_submits(128, sizes, 3);
}

int main(void)
{
    CU_pSuite suite;

    tst_require_backend("io_uring");
    suite = tst_suite("io_uring");
    TST_ADD(suite, test_cancel_blocked_read_and_reuse);
    TST_ADD(suite, test_cancel_while_another_thread_waits);
    TST_ADD(suite, test_cancel_last_request_ends_wait);
    TST_ADD(suite, test_unlimited_beyond_ring);
    TST_ADD(suite, test_bounded_beyond_ring);
    TST_ADD(suite, test_submit_sizes_around_the_cuts);
    TST_ADD(suite, test_submit_while_busy);
    return tst_run();
}
