/*
 * Page memory (<rt/mem.h>) and monotonic time (<rt/time.h>): proves that
 * rt_mem_page_alloc gives page-aligned, zero-filled, fully writable memory for odd and
 * whole-page sizes, NULL for 0 and for sizes no host can give (no wrap-around when
 * rounding up), and that freeing NULL is harmless; and that the two clocks never go
 * back, tick at the right rate against a real sleep, and agree with each other
 * (milli == nano / 1e6).
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include <rt/mem.h>
#include <rt/time.h>

#include "tst_common.h"

#define MS (UINT64_C(1000000)) /* nanoseconds */

/* ---- memory -------------------------------------------------------------------- */

static void test_page_size(void)
{
    size_t page = rt_mem_page_size();
    long sys = sysconf(_SC_PAGESIZE);
    CU_ASSERT_TRUE(page >= 4096);
    CU_ASSERT_EQUAL(page & (page - 1), 0); /* a power of two */
    if (sys > 0)
        CU_ASSERT_EQUAL(page, (size_t)sys);
    CU_ASSERT_EQUAL(rt_mem_page_size(), page); /* stable */
}

static bool is_zero(const unsigned char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != 0)
            return false;
    return true;
}

/* Allocates @a size, checks alignment, zero fill and that every byte holds a value,
 * then frees it. */
static void check_alloc(size_t size)
{
    size_t page = rt_mem_page_size();
    unsigned char *p = rt_mem_page_alloc(size);
    if (p == NULL)
        fprintf(stderr, "  rt_mem_page_alloc(%zu) failed\n", size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL((uintptr_t)p % page, 0);
    CU_ASSERT_TRUE(is_zero(p, size));
    for (size_t i = 0; i < size; i++)
        p[i] = (unsigned char)(i * 7 + 1);
    for (size_t i = 0; i < size; i++)
        if (p[i] != (unsigned char)(i * 7 + 1)) {
            CU_FAIL("memory did not keep what was written");
            break;
        }
    rt_mem_page_free(p, size);
}

static void test_alloc_sizes(void)
{
    size_t page = rt_mem_page_size();
    const size_t sizes[] = {
        1,
        2,
        17,
        511,
        512,
        page - 1,
        page,
        page + 1,
        2 * page,
        3 * page + 17,
        64 * 1024,
        1024 * 1024 + 3,
        8 * 1024 * 1024,
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        check_alloc(sizes[i]);
}

/* Sizes are rounded up to whole pages: the tail of the last page is there too. */
static void test_alloc_rounds_up(void)
{
    size_t page = rt_mem_page_size();
    unsigned char *p = rt_mem_page_alloc(page + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_TRUE(is_zero(p, 2 * page));
    memset(p, 0x5a, 2 * page);
    rt_mem_page_free(p, page + 1);
}

/* Memory handed out again after a free is zero-filled again, and live blocks do not
 * overlap. */
static void test_alloc_reuse_zeroed(void)
{
    size_t page = rt_mem_page_size();
    enum { BLOCKS = 16 };
    unsigned char *blocks[BLOCKS];

    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < BLOCKS; i++) {
            blocks[i] = rt_mem_page_alloc(page * (size_t)(1 + i % 3));
            CU_ASSERT_PTR_NOT_NULL_FATAL(blocks[i]);
            CU_ASSERT_TRUE(is_zero(blocks[i], page * (size_t)(1 + i % 3)));
            memset(blocks[i], 0xc0 + i, page * (size_t)(1 + i % 3));
        }
        for (int i = 0; i < BLOCKS; i++) {
            size_t len = page * (size_t)(1 + i % 3);
            for (size_t j = 0; j < len; j += 97)
                if (blocks[i][j] != (unsigned char)(0xc0 + i)) {
                    CU_FAIL("live blocks overlap");
                    break;
                }
        }
        for (int i = 0; i < BLOCKS; i++)
            rt_mem_page_free(blocks[i], page * (size_t)(1 + i % 3));
    }
}

static void test_alloc_zero_and_huge(void)
{
    size_t page = rt_mem_page_size();
    void *p;

    CU_ASSERT_PTR_NULL(rt_mem_page_alloc(0));

    /* Rounding these up to a page would wrap past SIZE_MAX. */
    p = rt_mem_page_alloc(SIZE_MAX);
    CU_ASSERT_PTR_NULL(p);
    if (p != NULL)
        rt_mem_page_free(p, SIZE_MAX);
    p = rt_mem_page_alloc(SIZE_MAX - page + 2);
    CU_ASSERT_PTR_NULL(p);
    if (p != NULL)
        rt_mem_page_free(p, SIZE_MAX - page + 2);
    /* Larger than any address space. */
    p = rt_mem_page_alloc(SIZE_MAX / 2 + 1);
    CU_ASSERT_PTR_NULL(p);
    if (p != NULL)
        rt_mem_page_free(p, SIZE_MAX / 2 + 1);

    /* And the allocator still works afterwards. */
    check_alloc(page);
}

static void test_free_null(void)
{
    rt_mem_page_free(NULL, 0);
    rt_mem_page_free(NULL, 4096);
    rt_mem_page_free(NULL, SIZE_MAX);
    CU_PASS("freeing NULL did nothing");
}

/* ---- time ---------------------------------------------------------------------- */

static void test_nano_monotonic(void)
{
    uint64_t prev = rt_time_nano_ts(), now;
    uint64_t first = prev;
    int backwards = 0;
    CU_ASSERT_TRUE(prev > 0);
    for (int i = 0; i < 200000; i++) {
        now = rt_time_nano_ts();
        if (now < prev)
            backwards++;
        prev = now;
    }
    CU_ASSERT_EQUAL(backwards, 0);
    CU_ASSERT_TRUE(prev > first); /* 200000 calls take more than a nanosecond */
}

static void test_milli_monotonic(void)
{
    uint64_t prev = rt_time_milli_ts(), now;
    int backwards = 0;
    for (int i = 0; i < 200000; i++) {
        now = rt_time_milli_ts();
        if (now < prev)
            backwards++;
        prev = now;
    }
    CU_ASSERT_EQUAL(backwards, 0);
}

/* Several threads reading at once also never see time run back in their own view. */
static void *reader_main(void *arg)
{
    int *backwards = arg;
    uint64_t prev = rt_time_nano_ts();
    for (int i = 0; i < 50000; i++) {
        uint64_t now = rt_time_nano_ts();
        if (now < prev)
            (*backwards)++;
        prev = now;
    }
    return NULL;
}

static void test_monotonic_across_threads(void)
{
    pthread_t threads[4];
    int backwards[4] = {0};
    for (int i = 0; i < 4; i++)
        CU_ASSERT_FATAL(pthread_create(&threads[i], NULL, reader_main, &backwards[i]) == 0);
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        CU_ASSERT_EQUAL(backwards[i], 0);
    }
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void test_advances_with_sleep(void)
{
    uint64_t n0 = rt_time_nano_ts(), m0 = rt_time_milli_ts();
    uint64_t n1, m1;
    sleep_ms(50);
    n1 = rt_time_nano_ts();
    m1 = rt_time_milli_ts();
    if (n1 - n0 < 45 * MS || n1 - n0 > 2000 * MS)
        fprintf(stderr, "  50 ms sleep measured %llu ns\n", (unsigned long long)(n1 - n0));
    CU_ASSERT_TRUE(n1 - n0 >= 45 * MS);
    CU_ASSERT_TRUE(n1 - n0 <= 2000 * MS);
    CU_ASSERT_TRUE(m1 - m0 >= 45);
    CU_ASSERT_TRUE(m1 - m0 <= 2000);
}

/* Against the host's monotonic clock: same rate (catches a micro/nano mix-up that a
 * short sleep bound alone might let through). */
static void test_rate_matches_host_clock(void)
{
    struct timespec a, b;
    uint64_t n0, n1, host;
    int64_t diff;
    clock_gettime(CLOCK_MONOTONIC, &a);
    n0 = rt_time_nano_ts();
    sleep_ms(100);
    n1 = rt_time_nano_ts();
    clock_gettime(CLOCK_MONOTONIC, &b);
    host =
        (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000u + (uint64_t)b.tv_nsec - (uint64_t)a.tv_nsec;
    diff = (int64_t)(n1 - n0) - (int64_t)host;
    /* Ours lies inside the host's interval, so it can only be shorter, and not by much
     * (1 ms of slack lets the library use a raw or boot-time clock instead). */
    if (diff > (int64_t)MS || diff <= -(int64_t)(20 * MS))
        fprintf(stderr, "  100 ms: host %llu ns, rt_time_nano_ts %llu ns\n",
                (unsigned long long)host, (unsigned long long)(n1 - n0));
    CU_ASSERT_TRUE(diff <= (int64_t)MS);
    CU_ASSERT_TRUE(diff > -(int64_t)(20 * MS));
}

static void test_milli_is_nano_divided(void)
{
    for (int i = 0; i < 1000; i++) {
        uint64_t m0 = rt_time_milli_ts();
        uint64_t n = rt_time_nano_ts();
        uint64_t m1 = rt_time_milli_ts();
        if (!(m0 <= n / MS && n / MS <= m1)) {
            fprintf(stderr, "  milli %llu, nano %llu, milli %llu\n", (unsigned long long)m0,
                    (unsigned long long)n, (unsigned long long)m1);
            CU_FAIL("rt_time_milli_ts() is not rt_time_nano_ts() / 1000000");
            return;
        }
    }
}

int main(void)
{
    CU_pSuite mem = tst_suite("page memory");
    CU_pSuite time_suite = tst_suite("monotonic time");

    TST_ADD(mem, test_page_size);
    TST_ADD(mem, test_alloc_sizes);
    TST_ADD(mem, test_alloc_rounds_up);
    TST_ADD(mem, test_alloc_reuse_zeroed);
    TST_ADD(mem, test_alloc_zero_and_huge);
    TST_ADD(mem, test_free_null);

    TST_ADD(time_suite, test_nano_monotonic);
    TST_ADD(time_suite, test_milli_monotonic);
    TST_ADD(time_suite, test_monotonic_across_threads);
    TST_ADD(time_suite, test_advances_with_sleep);
    TST_ADD(time_suite, test_rate_matches_host_clock);
    TST_ADD(time_suite, test_milli_is_nano_divided);

    return tst_run();
}
