/*
 * Forced-unit-access writes (RT_VD_WRITE_FUA), on the threads backend, where every data
 * op, fsync and fdatasync goes through the rt__posix_sys table and can be counted:
 *
 *   - into allocated, committed data: one fdatasync per FUA write (its RWF_DSYNC), no
 *     fsync: the image is not flushed;
 *   - a FUA write that allocates, or that lands in a unit whose allocation is not yet
 *     committed, commits: after it returns, a SIGKILL of the writing process (no flush,
 *     no close) loses nothing, where the same plain writes lose the allocation (the
 *     control: this test can fail);
 *   - queued FUA writes mixed with plain ones complete with their data;
 *   - unknown flags are refused.
 */
#include "tst_common.h"
#include "tst_qemu_img.h"

#include "internal/posix_sys.h"

#include <rt/vd.h>

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/wait.h>

#define KIB 1024u
#define MIB (1024u * 1024u)
#define DISK (16u * MIB)

static atomic_int fsyncs, fdatasyncs;

static int counting_fsync(int fd)
{
    atomic_fetch_add(&fsyncs, 1);
    return fsync(fd);
}

static int counting_fdatasync(int fd)
{
    atomic_fetch_add(&fdatasyncs, 1);
    return fdatasync(fd);
}

static void count_syncs(void)
{
    atomic_store(&fsyncs, 0);
    atomic_store(&fdatasyncs, 0);
    rt__posix_sys.fsync = counting_fsync;
    rt__posix_sys.fdatasync = counting_fdatasync;
}

struct format {
    const char *name;
    uint32_t unit;
};

static const struct format formats[] = {{"raw", 64 * KIB}, {"qcow2", 64 * KIB}, {"vdi", MIB}};

static void make(const char *path, const char *format, uint32_t unit)
{
    unlink(path);
    rt_vd_create_opts_t opts = {.size = DISK, .block_size = strcmp(format, "raw") ? unit : 0};
    TST_RC_FATAL(rt_vd_create(path, format, &opts, NULL), RT_OK);
}

static int fua_write(rt_vd_t vd, uint64_t off, const void *buf, size_t len)
{
    rt_iovec_t iov = {(void *)buf, len};
    return rt_vd_writev_flags(vd, off, &iov, 1, RT_VD_WRITE_FUA);
}

/* Into data that is allocated and committed: an RWF_DSYNC write, not a flush. */
static void test_fua_in_place_does_not_flush(void)
{
    static uint8_t buf[64 * KIB], back[64 * KIB];
    for (size_t f = 0; f < sizeof formats / sizeof formats[0]; f++) {
        char path[600];
        tst_path(path, sizeof path, "in-place.img");
        make(path, formats[f].name, formats[f].unit);
        rt_vd_t vd;
        TST_RC_FATAL(rt_vd_open(&vd, path, formats[f].name, 0, NULL), RT_OK);
        memset(buf, 1, sizeof buf);
        for (uint64_t off = 0; off < 4 * MIB; off += sizeof buf)
            TST_RC(rt_vd_write(vd, off, buf, sizeof buf), RT_OK);
        TST_RC(rt_vd_flush(vd), RT_OK);
        count_syncs();
        for (int i = 0; i < 8; i++) {
            memset(buf, 0x10 + i, sizeof buf);
            TST_RC(fua_write(vd, (uint64_t)i * 300 * KIB, buf, 4096 + i), RT_OK);
        }
        int syncs = atomic_load(&fsyncs), datasyncs = atomic_load(&fdatasyncs);
        rt__posix_sys_reset();
        if (syncs != 0 || datasyncs != 8)
            fprintf(stderr, "\n  %s: 8 FUA writes made %d fsyncs and %d fdatasyncs", formats[f].name,
                    syncs, datasyncs);
        CU_ASSERT_EQUAL(syncs, 0);
        CU_ASSERT_EQUAL(datasyncs, 8);
        for (int i = 0; i < 8; i++) {
            TST_RC(rt_vd_read(vd, (uint64_t)i * 300 * KIB, back, 4096 + i), RT_OK);
            memset(buf, 0x10 + i, sizeof buf);
            CU_ASSERT(memcmp(back, buf, 4096 + i) == 0);
        }
        TST_RC(rt_vd_close(vd), RT_OK);
        unlink(path);
    }
}

/* In a child: three writes, then SIGKILL before any flush or close.  The first
 * allocates unit 0 (FUA when @a fua); a plain write allocates unit 1; the third (FUA
 * when @a fua) lands in unit 1 as a plain data write, while unit 1's allocation is not
 * yet committed: as FUA it must commit that too. */
static void write_then_die(const char *path, const char *format, uint32_t unit, bool fua)
{
    pid_t pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        static uint8_t buf[64 * KIB];
        rt_vd_t vd;
        if (rt_vd_open(&vd, path, format, 0, NULL) != RT_OK)
            _exit(2);
        rt_iovec_t iov = {buf, sizeof buf};
        uint32_t flags = fua ? RT_VD_WRITE_FUA : 0;
        memset(buf, 0xa1, sizeof buf);
        if (rt_vd_writev_flags(vd, 0, &iov, 1, flags) != RT_OK)
            _exit(3);
        memset(buf, 0xb2, sizeof buf);
        if (rt_vd_write(vd, unit, buf, 4096) != RT_OK)
            _exit(4);
        iov.len = 4096;
        if (rt_vd_writev_flags(vd, unit + 8192, &iov, 1, flags) != RT_OK)
            _exit(5);
        raise(SIGKILL);
        _exit(6);
    }
    int status = 0;
    CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
    CU_ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

/* What survived: 1 when all three writes did, 0 when none did, -1 otherwise. */
static int survived(const char *path, const char *format, uint32_t unit)
{
    static uint8_t back[64 * KIB], want[64 * KIB];
    rt_vd_t vd;
    TST_RC_FATAL(rt_vd_open(&vd, path, format, RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
    TST_RC(rt_vd_read(vd, 0, back, sizeof back), RT_OK);
    memset(want, 0xa1, sizeof want);
    bool first = memcmp(back, want, sizeof back) == 0;
    TST_RC(rt_vd_read(vd, unit, back, 8192 + 4096), RT_OK);
    memset(want, 0xb2, sizeof want);
    bool rest = memcmp(back, want, 4096) == 0 && memcmp(back + 8192, want, 4096) == 0;
    TST_RC(rt_vd_close(vd), RT_OK);
    return first && rest ? 1 : !first && !rest ? 0 : -1;
}

static void test_fua_survives_sigkill(void)
{
    const struct format *allocating[] = {&formats[1], &formats[2]};
    for (size_t f = 0; f < 2; f++) {
        const struct format *fm = allocating[f];
        char path[600];
        tst_path(path, sizeof path, "killed.img");
        make(path, fm->name, fm->unit);
        write_then_die(path, fm->name, fm->unit, false);
        int plain = survived(path, fm->name, fm->unit);
        make(path, fm->name, fm->unit);
        write_then_die(path, fm->name, fm->unit, true);
        int fua = survived(path, fm->name, fm->unit);
        if (plain != 0 || fua != 1)
            fprintf(stderr, "\n  %s: after SIGKILL, plain writes survived: %d, FUA writes: %d",
                    fm->name, plain, fua);
        CU_ASSERT_EQUAL(plain, 0); /* the control: without FUA nothing was committed */
        CU_ASSERT_EQUAL(fua, 1);
        if (access(QEMU_IMG, X_OK) == 0)
            CU_ASSERT_EQUAL(qemu_img_check_status(path, fm->name), 0);
        unlink(path);
    }
}

struct tally {
    int done, failed;
};

static void tallied(void *user, int status)
{
    struct tally *t = user;
    t->done++;
    t->failed += status != RT_OK;
}

/* Queued: FUA and plain writes to new and allocated units, all in flight together. */
static void test_queued_fua(void)
{
    char path[600];
    tst_path(path, sizeof path, "queued.qcow2");
    make(path, "qcow2", 64 * KIB);
    rt_vd_t vd;
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, NULL), RT_OK);
    rt_vd_queue_t q;
    TST_RC_FATAL(rt_vd_queue_create(&q, 32), RT_OK);
    static uint8_t bufs[32][16 * KIB], back[16 * KIB];
    struct tally t = {0, 0};
    for (int i = 0; i < 32; i++) {
        memset(bufs[i], 0x40 + i, sizeof bufs[i]);
        rt_iovec_t iov = {bufs[i], sizeof bufs[i]};
        TST_RC(rt_vd_queue_write_flags(q, vd, (uint64_t)i * 48 * KIB, &iov, 1,
                                       i % 3 ? RT_VD_WRITE_FUA : 0, tallied, &t),
               RT_OK);
    }
    while (t.done < 32)
        TST_RC_FATAL(rt_vd_queue_run(q, 1, 10000, NULL), RT_OK);
    CU_ASSERT_EQUAL(t.failed, 0);
    TST_RC(rt_vd_queue_destroy(q), RT_OK);
    for (int i = 0; i < 32; i++) {
        TST_RC(rt_vd_read(vd, (uint64_t)i * 48 * KIB, back, sizeof back), RT_OK);
        CU_ASSERT(memcmp(back, bufs[i], sizeof back) == 0);
    }
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(path);
}

static void test_refusals(void)
{
    char path[600];
    tst_path(path, sizeof path, "refusals.raw");
    make(path, "raw", 0);
    rt_vd_t vd;
    TST_RC_FATAL(rt_vd_open(&vd, path, "raw", 0, NULL), RT_OK);
    uint8_t buf[512] = {0};
    rt_iovec_t iov = {buf, sizeof buf};
    TST_RC(rt_vd_writev_flags(vd, 0, &iov, 1, 0x2), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_writev_flags(vd, 0, &iov, 1, 0), RT_OK);
    TST_RC(rt_vd_writev_flags(vd, DISK, &iov, 1, RT_VD_WRITE_FUA), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_writev_flags(RT_VD_NIL, 0, &iov, 1, RT_VD_WRITE_FUA), RT_ERR_INVALID_HANDLE);
    rt_vd_queue_t q;
    TST_RC_FATAL(rt_vd_queue_create(&q, 4), RT_OK);
    struct tally t = {0, 0};
    TST_RC(rt_vd_queue_write_flags(q, vd, 0, &iov, 1, 0x80, tallied, &t), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_queue_write_flags(q, vd, 0, &iov, 1, RT_VD_WRITE_FUA, NULL, NULL),
           RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_queue_destroy(q), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, path, "raw", RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
    TST_RC(rt_vd_writev_flags(vd, 0, &iov, 1, RT_VD_WRITE_FUA), RT_ERR_VD_READ_ONLY);
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(path);
}

int main(void)
{
    /* Every data op and sync through the counting table. */
    setenv("RT_AIO_BACKEND", "threads", 1);
    tst_require_backend("threads");
    CU_pSuite suite = tst_suite("forced unit access");
    TST_ADD(suite, test_refusals);
    TST_ADD(suite, test_fua_in_place_does_not_flush);
    TST_ADD(suite, test_fua_survives_sigkill);
    TST_ADD(suite, test_queued_fua);
    return tst_run();
}
