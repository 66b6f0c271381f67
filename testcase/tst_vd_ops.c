/*
 * What the image engine costs: the kernel ops and memory allocations of a stream of
 * whole-unit sequential writes to a new QCOW2 and a new VDI image, and the bytes that
 * partial writes into new QCOW2 clusters write.
 *
 * Ops are counted through the rt__posix_sys table on the threads backend, where every
 * data op is one preadv or pwritev.  New adjacent units must be written by one op per
 * request (not one per unit), nothing may be read first, and every guest byte is
 * written exactly once.  Allocations are counted by wrapping malloc, calloc, realloc
 * and mmap for the whole process: after the first requests have warmed the pools, a
 * request may cost no allocation of the engine at all (the drivers' tables grow by
 * doubling, so a few are allowed).  A sanitizer owns malloc, so under one the
 * allocation count is not taken (said so), the op count still is.
 */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <rt/vd.h>

#include "internal/posix_sys.h"
#include "tst_common.h"
#include "tst_qemu_img.h"

#define KIB 1024u
#define MIB (1024u * 1024u)

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif

static struct {
    atomic_ulong pwritev_calls, pwritev_bytes, preadv_calls;
    atomic_ulong allocations;
    atomic_bool counting_allocations;
} count;

static size_t iov_total(const struct iovec *iov, int n)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    return total;
}

static ssize_t counting_pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
    atomic_fetch_add(&count.pwritev_calls, 1);
    atomic_fetch_add(&count.pwritev_bytes, iov_total(iov, n));
    return pwritev(fd, iov, n, off);
}

static ssize_t counting_preadv(int fd, const struct iovec *iov, int n, off_t off)
{
    atomic_fetch_add(&count.preadv_calls, 1);
    return preadv(fd, iov, n, off);
}

#ifndef SANITIZED
/* The process's allocations, counted on the way to glibc's own. */
extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *ptr, size_t size);
extern void *__mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);

static void counted(void)
{
    if (atomic_load_explicit(&count.counting_allocations, memory_order_relaxed))
        atomic_fetch_add(&count.allocations, 1);
}

void *malloc(size_t size)
{
    counted();
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size)
{
    counted();
    return __libc_calloc(n, size);
}

void *realloc(void *ptr, size_t size)
{
    counted();
    return __libc_realloc(ptr, size);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    counted();
    return __mmap(addr, len, prot, flags, fd, off);
}
#endif

static void counters_reset(void)
{
    atomic_store(&count.pwritev_calls, 0);
    atomic_store(&count.pwritev_bytes, 0);
    atomic_store(&count.preadv_calls, 0);
    atomic_store(&count.allocations, 0);
}

struct stream {
    uint32_t pending;
    int status;
};

static void stream_done(void *user, int status)
{
    struct stream *s = user;
    s->pending--;
    if (status != RT_OK && s->status == RT_OK)
        s->status = status;
}

/* Writes @a requests requests of @a len bytes from @a first_off on, at most @a depth in
 * flight, and waits for all of them. */
static int write_stream(rt_vd_queue_t q, rt_vd_t vd, uint64_t first_off, uint64_t len,
                        unsigned requests, unsigned depth, uint8_t *buf)
{
    struct stream s = {0};
    unsigned issued = 0;
    while (issued < requests || s.pending > 0) {
        while (issued < requests && s.pending < depth) {
            rt_iovec_t iov = {buf, (size_t)len};
            int rc = rt_vd_queue_write(q, vd, first_off + issued * len, &iov, 1, stream_done, &s);
            if (rc != RT_OK)
                return rc;
            s.pending++;
            issued++;
        }
        int rc = rt_vd_queue_run(q, 1, 10000, NULL);
        if (rc != RT_OK)
            return rc;
    }
    return s.status;
}

/* A new image of @a format with allocation unit @a unit: a warm-up of @a warm requests
 * of @a len bytes (enough to fill the engine's pools at the stream's depth), then
 * @a requests more counted.  Each request covers len / unit whole new units.  The
 * counted part needs at most @a tables new metadata tables (QCOW2 L2 tables and
 * refcount blocks): each may break a run of data in the file (one more op) and costs
 * the driver its two allocations. */
static void whole_unit_stream(const char *format, uint32_t unit, uint64_t len, unsigned warm,
                              unsigned requests, unsigned tables)
{
    char path[600];
    tst_path(path, sizeof path, "ops-stream");
    unlink(path);
    uint64_t size = (warm + requests) * len;
    rt_vd_create_opts_t opts = {.size = size, .block_size = unit};
    rt_vd_error_t err;
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_queue_t q = RT_VD_QUEUE_NIL;
    TST_RC(rt_vd_create(path, format, &opts, &err), RT_OK);
    TST_RC(rt_vd_open(&vd, path, format, 0, &err), RT_OK);
    TST_RC(rt_vd_queue_create(&q, 32), RT_OK);
    uint8_t *buf = malloc((size_t)len);
    CU_ASSERT_FATAL(vd != RT_VD_NIL && q != RT_VD_QUEUE_NIL && buf != NULL);
    memset(buf, 0x5a, (size_t)len);

    rt__posix_sys.pwritev = counting_pwritev;
    rt__posix_sys.preadv = counting_preadv;
    TST_RC(write_stream(q, vd, 0, len, warm, 4, buf), RT_OK);
    counters_reset();
    atomic_store(&count.counting_allocations, true);
    TST_RC(write_stream(q, vd, warm * len, len, requests, 4, buf), RT_OK);
    atomic_store(&count.counting_allocations, false);
    rt__posix_sys_reset();

    unsigned long ops = atomic_load(&count.pwritev_calls);
    unsigned long bytes = atomic_load(&count.pwritev_bytes);
    unsigned long reads = atomic_load(&count.preadv_calls);
    unsigned long allocations = atomic_load(&count.allocations);
    printf("\n    %s, %u-byte units, %u requests of %llu KiB: %lu data ops, %lu reads, "
           "%lu allocations ",
           format, unit, requests, (unsigned long long)(len / KIB), ops, reads, allocations);
    /* One op per request: the request's units were given adjacent space. */
    CU_ASSERT(ops <= requests + tables);
    CU_ASSERT_EQUAL(bytes, requests * len);
    CU_ASSERT_EQUAL(reads, 0);
#ifndef SANITIZED
    CU_ASSERT(allocations <= 8 + 2 * tables);
#endif

    /* And the data is there. */
    TST_RC(rt_vd_flush(vd), RT_OK);
    uint8_t *back = malloc((size_t)len);
    CU_ASSERT_FATAL(back != NULL);
    TST_RC(rt_vd_read(vd, size - len, back, (size_t)len), RT_OK);
    CU_ASSERT(memcmp(back, buf, (size_t)len) == 0);
    free(back);
    free(buf);
    TST_RC(rt_vd_queue_destroy(q), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(path);
}

static void test_qcow2_whole_cluster_stream(void)
{
    /* An L2 table maps 512 MiB: the counted 48 MiB may cross into a second. */
    whole_unit_stream("qcow2", 64 * KIB, MIB, 8, 48, 1);
}

static void test_qcow2_small_cluster_stream(void)
{
    /* 4 KiB clusters: 64 new units a request, still one op each.  An L2 table maps
     * 2 MiB and a refcount block 8 MiB: the counted 12 MiB need 7 and 2. */
    whole_unit_stream("qcow2", 4 * KIB, 256 * KIB, 8, 48, 9);
}

static void test_vdi_whole_block_stream(void)
{
    whole_unit_stream("vdi", MIB, 4 * MIB, 8, 12, 0);
}

/* 4 KiB writes, each into its own new 64 KiB cluster: the cluster's space past the end
 * of the file reads as zeros already, so only the guest's 4 KiB are written (QEMU does
 * the same); the rest of each cluster reads back as zeros, and qemu-img agrees. */
static void test_qcow2_partial_writes_into_fresh_clusters(void)
{
    char path[600];
    tst_path(path, sizeof path, "ops-fresh.qcow2");
    unlink(path);
    rt_vd_create_opts_t opts = {.size = 64 * MIB, .block_size = 64 * KIB};
    rt_vd_error_t err;
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_queue_t q = RT_VD_QUEUE_NIL;
    TST_RC(rt_vd_create(path, "qcow2", &opts, &err), RT_OK);
    TST_RC(rt_vd_open(&vd, path, "qcow2", 0, &err), RT_OK);
    TST_RC(rt_vd_queue_create(&q, 8), RT_OK);
    CU_ASSERT_FATAL(vd != RT_VD_NIL && q != RT_VD_QUEUE_NIL);
    static uint8_t buf[4096], back[64 * KIB];
    memset(buf, 0x6b, sizeof buf);
    counters_reset();
    rt__posix_sys.pwritev = counting_pwritev;
    rt__posix_sys.preadv = counting_preadv;
    /* Cluster i gets 4 KiB at a different place in it each time: first, middle, last. */
    struct stream s = {0};
    for (unsigned i = 0; i < 48; i++) {
        rt_iovec_t iov = {buf, sizeof buf};
        uint64_t at = (uint64_t)i * 64 * KIB + (i % 3) * 30 * KIB;
        TST_RC(rt_vd_queue_write(q, vd, at - at % 4096, &iov, 1, stream_done, &s), RT_OK);
        s.pending++;
    }
    while (s.pending > 0)
        TST_RC_FATAL(rt_vd_queue_run(q, 1, 10000, NULL), RT_OK);
    rt__posix_sys_reset();
    TST_RC(s.status, RT_OK);
    printf("\n    48 writes of 4 KiB into new clusters: %lu data bytes written ",
           (unsigned long)atomic_load(&count.pwritev_bytes));
    CU_ASSERT_EQUAL(atomic_load(&count.pwritev_bytes), 48 * 4096);
    CU_ASSERT_EQUAL(atomic_load(&count.preadv_calls), 0);
    /* The allocator grew the file ahead of itself (so these writes were not past its
     * end); close cuts it back to the last cluster in use. */
    struct stat st;
    CU_ASSERT(stat(path, &st) == 0 && (uint64_t)st.st_size >= 64 * MIB);
    TST_RC(rt_vd_queue_destroy(q), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    CU_ASSERT(stat(path, &st) == 0 && (uint64_t)st.st_size < 64 * 64 * KIB &&
              st.st_size % (64 * KIB) == 0);

    TST_RC(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    for (unsigned i = 0; i < 48; i++) {
        TST_RC(rt_vd_read(vd, (uint64_t)i * 64 * KIB, back, sizeof back), RT_OK);
        uint64_t at = (i % 3) * 30 * KIB;
        at -= at % 4096;
        for (uint64_t b = 0; b < sizeof back; b++)
            if (back[b] != (b >= at && b < at + 4096 ? 0x6b : 0)) {
                CU_FAIL("a fresh cluster reads back wrong");
                break;
            }
    }
    rt_vd_check_result_t res;
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    int checked = qemu_img_check_status(path, "qcow2");
    CU_ASSERT(checked == 0 || checked == -1);
    unlink(path);
}

int main(void)
{
    /* Every data op through the counting table. */
    setenv("RT_AIO_BACKEND", "threads", 1);
    tst_require_backend("threads");
#ifdef SANITIZED
    printf("note: sanitizer build: allocations are not counted, ops are\n");
#endif
    CU_pSuite suite = tst_suite("image engine ops and allocations");
    TST_ADD(suite, test_qcow2_whole_cluster_stream);
    TST_ADD(suite, test_qcow2_small_cluster_stream);
    TST_ADD(suite, test_vdi_whole_block_stream);
    TST_ADD(suite, test_qcow2_partial_writes_into_fresh_clusters);
    return tst_run();
}
