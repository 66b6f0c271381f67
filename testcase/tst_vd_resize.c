/*
 * rt_vd_resize(), every format:
 *
 *   - growing keeps every byte and the new range reads as zeros (raw, QCOW2 v3 and v2,
 *     QCOW2 of 512-byte clusters whose L1 table must move to many new clusters, VDI
 *     dynamic and static), after a reopen, by rt_vd_check and by qemu-img check;
 *   - shrinking is refused without RT_VD_RESIZE_SHRINK, refused past data without
 *     RT_VD_RESIZE_DISCARD_DATA (and then changes nothing), and otherwise frees the
 *     clusters past the new end without leaks; a grow after it reads zeros there, also
 *     in the part of the last cluster a shrink kept;
 *   - an overlay grown over a larger backing file reads zeros, not the backing data;
 *   - the refusals: a VDI shrink, a VDI whose map has no room, an unaligned QCOW2 size,
 *     a busy or read-only image, unknown flags.
 */
#include "tst_common.h"
#include "tst_files.h"
#include "tst_qemu_img.h"
#include "tst_vd_helpers.h"

#include <rt/vd.h>

#include <stdbool.h>
#include <sys/stat.h>

#define KIB   1024u
#define MIB   (1024u * 1024u)
#define DISK  (4u * MIB)
#define GROWN (7u * MIB + 512u)

static uint8_t buf[2 * DISK];

struct shape {
    const char *name, *format;
    uint32_t version, unit;
    bool is_static;
};

static const struct shape shapes[] = {
    {"raw", "raw", 0, 0, false},
    {"qcow2 v3", "qcow2", 3, 64 * KIB, false},
    {"qcow2 v2", "qcow2", 2, 64 * KIB, false},
    {"qcow2 v3, 512-byte clusters", "qcow2", 3, 512, false},
    {"vdi", "vdi", 0, 1 * MIB, false},
    {"vdi static", "vdi", 0, 1 * MIB, true},
};

static uint8_t pattern(uint64_t i)
{
    return (uint8_t)((i * 131u >> 9) | 1u);
}

static void create(const struct shape *sh, const char *path, uint64_t size)
{
    unlink(path);
    rt_vd_create_opts_t opts = {.size = size, .version = sh->version, .block_size = sh->unit};
    if (sh->is_static)
        opts.flags = RT_VD_CREATE_STATIC;
    rt_vd_error_t err;
    int rc = rt_vd_create(path, sh->format, &opts, &err);
    if (rc != RT_OK)
        fprintf(stderr, "\n  create %s: %s", sh->name, err.msg);
    TST_RC_FATAL(rc, RT_OK);
}

static rt_vd_t open_rw(const struct shape *sh, const char *path, uint32_t flags)
{
    rt_vd_t vd = RT_VD_NIL;
    TST_RC_FATAL(rt_vd_open(&vd, path, sh->format, flags, NULL), RT_OK);
    return vd;
}

static uint64_t size_of(rt_vd_t vd)
{
    rt_vd_info_t info;
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    return info.virtual_size;
}

/* [off, off + len) of @a vd reads as the pattern (@a zero false) or as zeros. */
static bool reads_as(rt_vd_t vd, uint64_t off, uint64_t len, bool zero, const char *what)
{
    TST_RC(rt_vd_read(vd, off, buf, len), RT_OK);
    for (uint64_t i = 0; i < len; i++) {
        uint8_t want = zero ? 0 : pattern(off + i);
        if (buf[i] != want) {
            fprintf(stderr, "\n  %s: byte 0x%llx is 0x%02x, expected 0x%02x", what,
                    (unsigned long long)(off + i), buf[i], want);
            CU_FAIL("wrong data after resize");
            return false;
        }
    }
    return true;
}

/* rt_vd_check finds nothing, nor (@a format not NULL) qemu-img check. */
static void check_clean(rt_vd_t vd, const char *path, const char *format, const char *what)
{
    rt_vd_check_result_t res;
    int rc = rt_vd_check(vd, 0, &res);
    if (rc != RT_ERR_NOT_SUPPORTED) {
        TST_RC(rc, RT_OK);
        if (res.corruptions != 0 || res.leaks != 0)
            fprintf(stderr, "\n  %s: %llu corruptions, %llu leaks: %s", what,
                    (unsigned long long)res.corruptions, (unsigned long long)res.leaks,
                    res.first_problem);
        CU_ASSERT_EQUAL(res.corruptions, 0);
        CU_ASSERT_EQUAL(res.leaks, 0);
    }
    if (format != NULL && strcmp(format, "raw") != 0)
        CU_ASSERT_NOT_EQUAL(qemu_img_clean_as(path, format), 0);
}

static void fill(rt_vd_t vd, uint64_t off, uint64_t len)
{
    for (uint64_t i = 0; i < len; i++)
        buf[i] = pattern(off + i);
    TST_RC(rt_vd_write(vd, off, buf, len), RT_OK);
}

static void test_grow_every_format(void)
{
    char path[600];
    tst_path(path, sizeof path, "grow.img");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const struct shape *sh = &shapes[s];
        create(sh, path, DISK);
        rt_vd_t vd = open_rw(sh, path, 0);
        fill(vd, 0, DISK);
        rt_vd_error_t err;
        int rc = rt_vd_resize(vd, GROWN, 0, &err);
        if (rc != RT_OK)
            fprintf(stderr, "\n  %s: %s", sh->name, err.msg);
        TST_RC(rc, RT_OK);
        CU_ASSERT_EQUAL(size_of(vd), GROWN);
        reads_as(vd, DISK, GROWN - DISK, true, sh->name);
        fill(vd, GROWN - 4096, 4096); /* the new range is usable */
        TST_RC(rt_vd_close(vd), RT_OK);

        vd = open_rw(sh, path, RT_VD_OPEN_READ_ONLY);
        CU_ASSERT_EQUAL(size_of(vd), GROWN);
        reads_as(vd, 0, DISK, false, sh->name);
        reads_as(vd, DISK, GROWN - DISK - 4096, true, sh->name);
        reads_as(vd, GROWN - 4096, 4096, false, sh->name);
        check_clean(vd, path, sh->format, sh->name);
        TST_RC(rt_vd_close(vd), RT_OK);
    }
    unlink(path);
}

/* Shrinks with and without permission to drop data, then grows back. */
static void shrink_run(const struct shape *sh)
{
    char path[600];
    tst_path(path, sizeof path, "shrink.img");
    create(sh, path, DISK);
    rt_vd_t vd = open_rw(sh, path, 0);
    fill(vd, 0, 1 * MIB + 100 * KIB); /* data up to 1.1 MiB */
    fill(vd, DISK - 4096, 4096);      /* and at the very end */
    TST_RC(rt_vd_flush(vd), RT_OK);
    struct stat before, after;
    CU_ASSERT_EQUAL(stat(path, &before), 0);

    rt_vd_error_t err;
    TST_RC(rt_vd_resize(vd, 2 * MIB, 0, &err), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_resize(vd, 2 * MIB, RT_VD_RESIZE_SHRINK, &err), RT_ERR_NOT_PERMITTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "holds data"));
    CU_ASSERT_EQUAL(size_of(vd), DISK);
    reads_as(vd, DISK - 4096, 4096, false, "refused shrink");

    /* The end's data may go; the 1.1 MiB must not, and shrinking into it is refused. */
    TST_RC(rt_vd_resize(vd, 1 * MIB, RT_VD_RESIZE_SHRINK, &err), RT_ERR_NOT_PERMITTED);
    TST_RC(rt_vd_discard(vd, DISK - 64 * KIB, 64 * KIB), RT_OK); /* whole units */
    TST_RC(rt_vd_resize(vd, 2 * MIB, RT_VD_RESIZE_SHRINK, &err), RT_OK);
    CU_ASSERT_EQUAL(size_of(vd), 2 * MIB);

    /* Dropping data: to 1 MiB + 4 KiB, inside a cluster that holds data past it. */
    uint64_t cut = 1 * MIB + 4 * KIB;
    TST_RC(rt_vd_resize(vd, cut, RT_VD_RESIZE_SHRINK | RT_VD_RESIZE_DISCARD_DATA, &err), RT_OK);
    CU_ASSERT_EQUAL(size_of(vd), cut);
    reads_as(vd, 0, cut, false, "after the shrink");
    TST_RC(rt_vd_close(vd), RT_OK);
    if (strcmp(sh->format, "qcow2") == 0) {
        /* The clusters past the end went back to the file system. */
        CU_ASSERT_EQUAL(stat(path, &after), 0);
        CU_ASSERT(after.st_blocks < before.st_blocks);
    }

    vd = open_rw(sh, path, 0);
    CU_ASSERT_EQUAL(size_of(vd), cut);
    check_clean(vd, path, sh->format, "after the shrink");
    TST_RC(rt_vd_resize(vd, DISK, 0, &err), RT_OK);
    reads_as(vd, 0, cut, false, "grown again");
    reads_as(vd, cut, DISK - cut, true, "grown again"); /* nothing of the old tail */
    TST_RC(rt_vd_close(vd), RT_OK);
    vd = open_rw(sh, path, RT_VD_OPEN_READ_ONLY);
    reads_as(vd, cut, DISK - cut, true, "grown again, reopened");
    check_clean(vd, path, sh->format, "grown again");
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(path);
}

static void test_shrink_raw(void)
{
    shrink_run(&shapes[0]);
}

static void test_shrink_qcow2(void)
{
    shrink_run(&shapes[1]);
    shrink_run(&shapes[2]);
    shrink_run(&shapes[3]);
}

/* An overlay smaller than its backing file, grown (and shrunk, then grown): the new
 * range reads zeros, never the backing file's bytes. */
static void test_overlay_hides_backing(void)
{
    char base[600], top[600];
    tst_path(base, sizeof base, "base.raw");
    tst_path(top, sizeof top, "top.qcow2");
    unlink(base);
    rt_vd_create_opts_t opts = {.size = 2 * DISK};
    TST_RC_FATAL(rt_vd_create(base, "raw", &opts, NULL), RT_OK);
    rt_vd_t vd;
    TST_RC_FATAL(rt_vd_open(&vd, base, "raw", 0, NULL), RT_OK);
    memset(buf, 0xbb, 2 * DISK);
    TST_RC(rt_vd_write(vd, 0, buf, 2 * DISK), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);

    for (uint32_t version = 2; version <= 3; version++) {
        unlink(top);
        rt_vd_create_opts_t o = {
            .size = DISK, .version = version, .backing_file = base, .backing_format = "raw"};
        TST_RC_FATAL(rt_vd_create(top, "qcow2", &o, NULL), RT_OK);
        TST_RC_FATAL(rt_vd_open(&vd, top, "qcow2", RT_VD_OPEN_ALLOW_BACKING, NULL), RT_OK);
        TST_RC(rt_vd_resize(vd, DISK + 3 * MIB, 0, NULL), RT_OK);
        TST_RC(rt_vd_read(vd, DISK - 512, buf, 512), RT_OK);
        CU_ASSERT_EQUAL(buf[0], 0xbb); /* the old range still shows the backing file */
        reads_as(vd, DISK, 3 * MIB, true, "grown overlay");
        /* (v2 wrote the zeros as data: dropping them needs the permission.) */
        TST_RC(rt_vd_resize(vd, MIB, RT_VD_RESIZE_SHRINK | RT_VD_RESIZE_DISCARD_DATA, NULL), RT_OK);
        TST_RC(rt_vd_resize(vd, 2 * DISK, 0, NULL), RT_OK);
        TST_RC(rt_vd_close(vd), RT_OK);
        TST_RC_FATAL(
            rt_vd_open(&vd, top, "qcow2", RT_VD_OPEN_ALLOW_BACKING | RT_VD_OPEN_READ_ONLY, NULL),
            RT_OK);
        CU_ASSERT_EQUAL(size_of(vd), 2 * DISK);
        reads_as(vd, MIB, 2 * DISK - MIB, true, "overlay shrunk and grown");
        TST_RC(rt_vd_read(vd, 0, buf, MIB), RT_OK);
        CU_ASSERT(buf[0] == 0xbb && buf[MIB - 1] == 0xbb);
        check_clean(vd, top, "qcow2", "overlay");
        TST_RC(rt_vd_close(vd), RT_OK);
    }
    unlink(top);
    unlink(base);
}

static void test_refusals(void)
{
    char path[600];
    tst_path(path, sizeof path, "refusals.img");
    rt_vd_error_t err;
    TST_RC(rt_vd_resize(RT_VD_NIL, MIB, 0, NULL), RT_ERR_INVALID_HANDLE);

    create(&shapes[1], path, DISK);
    rt_vd_t vd = open_rw(&shapes[1], path, 0);
    TST_RC(rt_vd_resize(vd, DISK * 2, 0x4, &err), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_resize(vd, DISK + 100, 0, &err), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_resize(vd, 1ull << 62, 0, &err), RT_ERR_OUT_OF_RANGE);
    TST_RC(rt_vd_resize(vd, DISK, 0, &err), RT_OK); /* the same size: nothing to do */
    /* Busy: a queued request outstanding. */
    struct tst_busy busy;
    tst_busy_begin(&busy, vd);
    TST_RC(rt_vd_resize(vd, 2 * DISK, 0, &err), RT_ERR_BUSY);
    tst_busy_end(&busy);
    CU_ASSERT_EQUAL(size_of(vd), DISK);
    TST_RC(rt_vd_close(vd), RT_OK);
    vd = open_rw(&shapes[1], path, RT_VD_OPEN_READ_ONLY);
    TST_RC(rt_vd_resize(vd, 2 * DISK, 0, &err), RT_ERR_VD_READ_ONLY);
    TST_RC(rt_vd_close(vd), RT_OK);

    /* VDI: no shrink; a grow past the map's room is refused and changes nothing. */
    const struct shape small_blocks = {"vdi, 4 KiB blocks", "vdi", 0, 4 * KIB, false};
    create(&small_blocks, path, DISK);
    vd = open_rw(&small_blocks, path, 0);
    TST_RC(rt_vd_resize(vd, MIB, RT_VD_RESIZE_SHRINK | RT_VD_RESIZE_DISCARD_DATA, &err),
           RT_ERR_NOT_SUPPORTED);
    TST_RC(rt_vd_resize(vd, 2048ull * MIB, 0, &err), RT_ERR_NOT_SUPPORTED);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "room"));
    CU_ASSERT_EQUAL(size_of(vd), DISK);
    TST_RC(rt_vd_resize(vd, 512ull * MIB, 0, &err), RT_OK); /* inside the room */
    TST_RC(rt_vd_close(vd), RT_OK);
    vd = open_rw(&small_blocks, path, RT_VD_OPEN_READ_ONLY);
    CU_ASSERT_EQUAL(size_of(vd), 512ull * MIB);
    check_clean(vd, path, NULL, "vdi grown"); /* qemu reads only 1 MiB blocks */
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(path);
}

/* A QCOW2 v2 overlay keeps the clusters a shrink "discarded" (v2 has no zero clusters,
 * and the backing file would show through a dropped one); a grow must zero them, not
 * show what the image held there before. */
static void test_v2_overlay_shrink_then_grow(void)
{
    char base[600], top[600];
    tst_path(base, sizeof base, "v2-base.qcow2");
    tst_path(top, sizeof top, "v2-top.qcow2");
    create(&shapes[1], base, MIB);
    unlink(top);
    rt_vd_create_opts_t opts = {
        .size = 10 * MIB, .version = 2, .backing_file = base, .backing_format = "qcow2"};
    TST_RC_FATAL(rt_vd_create(top, "qcow2", &opts, NULL), RT_OK);
    rt_vd_t vd = RT_VD_NIL;
    TST_RC_FATAL(rt_vd_open(&vd, top, "qcow2", RT_VD_OPEN_ALLOW_BACKING, NULL), RT_OK);
    fill(vd, 8 * MIB, 64 * KIB);
    TST_RC(rt_vd_resize(vd, 2 * MIB, RT_VD_RESIZE_SHRINK | RT_VD_RESIZE_DISCARD_DATA, NULL), RT_OK);
    TST_RC(rt_vd_resize(vd, 10 * MIB, 0, NULL), RT_OK);
    reads_as(vd, 8 * MIB, 64 * KIB, true, "v2 overlay, shrunk and grown");
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, top, "qcow2", RT_VD_OPEN_ALLOW_BACKING, NULL), RT_OK);
    reads_as(vd, 2 * MIB, 8 * MIB, true, "v2 overlay, reopened");
    check_clean(vd, top, "qcow2", "v2 overlay, shrunk and grown");
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(top);
    unlink(base);
}

/* A VDI header may count more blocks than its size needs (open accepts it): a grow
 * within them adds no map entries, writes nothing past the map, and shows none of
 * their data. */
static void test_vdi_map_larger_than_size(void)
{
    char path[600];
    tst_path(path, sizeof path, "vdi-extra-blocks.vdi");
    create(&shapes[4], path, MIB);
    rt_vd_t vd = open_rw(&shapes[4], path, 0);
    fill(vd, 0, MIB);
    TST_RC(rt_vd_close(vd), RT_OK);
    uint8_t le[4];
    int fd = open(path, O_RDWR);
    CU_ASSERT_FATAL(fd >= 0);
    uint8_t hdr[0x200];
    CU_ASSERT_FATAL(pread(fd, hdr, sizeof hdr, 0) == (ssize_t)sizeof hdr);
    uint32_t map_at = (uint32_t)hdr[0x154] | (uint32_t)hdr[0x155] << 8 |
                      (uint32_t)hdr[0x156] << 16 | (uint32_t)hdr[0x157] << 24;
    le[0] = 4, le[1] = le[2] = le[3] = 0; /* four blocks for a 1 MiB disk */
    CU_ASSERT_FATAL(pwrite(fd, le, 4, 0x180) == 4);
    memset(le, 0xff, sizeof le); /* entries 1..3: free */
    for (int i = 1; i < 4; i++)
        CU_ASSERT_FATAL(pwrite(fd, le, 4, (off_t)map_at + 4 * i) == 4);
    close(fd);
    struct stat before;
    CU_ASSERT_FATAL(stat(path, &before) == 0);

    vd = open_rw(&shapes[4], path, 0);
    TST_RC(rt_vd_resize(vd, 3 * MIB, 0, NULL), RT_OK);
    CU_ASSERT_EQUAL(size_of(vd), 3 * MIB);
    reads_as(vd, 0, MIB, false, "the old block");
    reads_as(vd, MIB, 2 * MIB, true, "the blocks the header counted");
    TST_RC(rt_vd_close(vd), RT_OK);
    struct stat after;
    CU_ASSERT_FATAL(stat(path, &after) == 0);
    CU_ASSERT(after.st_size <= before.st_size + 3 * MIB); /* nothing written past the map */
    vd = open_rw(&shapes[4], path, RT_VD_OPEN_READ_ONLY);
    CU_ASSERT_EQUAL(size_of(vd), 3 * MIB);
    check_clean(vd, path, NULL, "vdi grown within its map");
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(path);
}

int main(void)
{
    CU_pSuite suite = tst_suite("resize");
    TST_ADD(suite, test_refusals);
    TST_ADD(suite, test_grow_every_format);
    TST_ADD(suite, test_shrink_raw);
    TST_ADD(suite, test_shrink_qcow2);
    TST_ADD(suite, test_overlay_hides_backing);
    TST_ADD(suite, test_v2_overlay_shrink_then_grow);
    TST_ADD(suite, test_vdi_map_larger_than_size);
    return tst_run();
}
