/*
 * QCOW2 images that push counts and sizes to their limits, built at test time:
 *
 *   - one L2 table named by every entry of a 16384-entry L1 table, each of its 2^18
 *     entries naming one data cluster: 2^32 references to that cluster.  Check must say
 *     it cannot count that far (a 32-bit count wraps to 0, calls the cluster leaked, and
 *     the repair frees live data); info and check must read the table once, not 16384
 *     times (32 GiB of reads);
 *   - a 64-bit refcount 2^63 above its references, repaired;
 *   - compressed clusters packed at refcount widths of 1 and 8 bits, where the count of
 *     a shared host cluster cannot grow without limit;
 *   - persistent bitmaps whose directory entries break QEMU's constraints (granularity,
 *     type, flags, a table too small for the disk or holding more than 512 MiB), each
 *     refused at open (as QEMU refuses them) before the table is read.
 *
 * The bitmap images are written by hand from the specification (docs/interop/qcow2.txt
 * and bitmaps.txt in QEMU); when qemu-img is installed it is the second opinion: it
 * calls the valid one clean and refuses each mutant too.
 */
#include <stdbool.h>
#include <stdint.h>

#include <rt/vd.h>

#include "tst_common.h"
#include "tst_files.h"
#include "tst_qcow2.h"
#include "tst_qemu_img.h"

static void create_or_die(const char *path, uint64_t size, uint32_t cluster,
                          const char *const *options)
{
    rt_vd_create_opts_t opts = {
        .size = size, .block_size = cluster, .version = 3, .options = options};
    rt_vd_error_t err;
    int rc = rt_vd_create(path, "qcow2", &opts, &err);
    if (rc != RT_OK) {
        fprintf(stderr, "cannot create %s: %s (%s)\n", path, rt_status_name(rc), err.msg);
        exit(1);
    }
}

/* Where the @a bytes wide refcount of @a cluster is: in the first refcount block. */
static uint64_t refcount_of_width(const char *path, uint32_t cluster_size, uint64_t cluster,
                                  unsigned bytes)
{
    uint64_t block = read_be(path, read_be(path, H_RT_OFFSET, 8), 8);
    CU_ASSERT_FATAL(block != 0 && cluster < cluster_size / bytes);
    return block + bytes * cluster;
}

/* ... for the default width of 16 bits. */
static uint64_t refcount_at(const char *path, uint32_t cluster_size, uint64_t cluster)
{
    return refcount_of_width(path, cluster_size, cluster, 2);
}

/* ---------------------------------------------------------------------------------- */
/* 2^32 references to one cluster. */

#define BIG_CLUSTER    (2u * MIB)
#define BIG_L1_ENTRIES 16384u
#define BIG_L2_ENTRIES (BIG_CLUSTER / 8u)

/* Builds the image: returns the data cluster's offset. */
static uint64_t make_shared_table_image(const char *path)
{
    /* Every L1 entry is needed: 16384 tables of 2^18 clusters of 2 MiB. */
    uint64_t size = (uint64_t)BIG_L1_ENTRIES * BIG_L2_ENTRIES * BIG_CLUSTER;
    create_or_die(path, size, BIG_CLUSTER, NULL);
    CU_ASSERT_FATAL(read_be(path, H_L1_SIZE, 4) == BIG_L1_ENTRIES);
    uint64_t file_size = 0;
    free(slurp(path, &file_size));
    uint64_t l2 = (file_size + BIG_CLUSTER - 1) / BIG_CLUSTER * BIG_CLUSTER;
    uint64_t data = l2 + BIG_CLUSTER;

    uint8_t *buf = malloc(BIG_CLUSTER);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    /* The data's only stored count is 1, so its entries say COPIED; the table's count
     * is the 16384 entries naming it, so theirs do not: only the count of the data
     * cluster is wrong, and only by being beyond counting. */
    for (uint32_t j = 0; j < BIG_L2_ENTRIES; j++)
        put_be(buf + 8u * j, data | COPIED, 8);
    patch(path, l2, buf, BIG_CLUSTER);
    memset(buf, 0x5a, BIG_CLUSTER);
    patch(path, data, buf, BIG_CLUSTER);
    for (uint32_t i = 0; i < BIG_L1_ENTRIES; i++)
        put_be(buf + 8u * i, l2, 8);
    patch(path, read_be(path, H_L1_OFFSET, 8), buf, 8u * BIG_L1_ENTRIES);
    free(buf);
    patch_be(path, refcount_at(path, BIG_CLUSTER, l2 / BIG_CLUSTER), BIG_L1_ENTRIES, 2);
    patch_be(path, refcount_at(path, BIG_CLUSTER, data / BIG_CLUSTER), 1, 2);
    return data;
}

static void test_references_beyond_counting(void)
{
    char path[512];
    tst_path(path, sizeof path, "shared-l2.qcow2");
    uint64_t data = make_shared_table_image(path);
    uint64_t data_count = refcount_at(path, BIG_CLUSTER, data / BIG_CLUSTER);

    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    rt_vd_info_t info;
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    CU_ASSERT_EQUAL(info.blocks_total, 1ull << 32);
    CU_ASSERT_EQUAL(info.blocks_allocated, 1ull << 32);
    uint8_t back[4096];
    TST_RC(rt_vd_read(vd, 12345ull * BIG_CLUSTER * BIG_L2_ENTRIES + 777, back, sizeof back),
           RT_OK);
    CU_ASSERT(back[0] == 0x5a && back[sizeof back - 1] == 0x5a);
    TST_RC(rt_vd_close(vd), RT_OK);

    /* Check: a corruption (the count cannot hold 2^32), not a leak; the repair does not
     * touch the data cluster's count. */
    rt_vd_check_result_t res;
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, &err), RT_OK);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT(res.corruptions > 0);
    CU_ASSERT_EQUAL(res.leaks, 0);
    CU_ASSERT(mentions(res.first_problem, "references"));
    CU_ASSERT_EQUAL(res.blocks_allocated, 1ull << 32);
    TST_RC(rt_vd_check(vd, RT_VD_CHECK_REPAIR_LEAKS, &res), RT_OK);
    CU_ASSERT_EQUAL(res.leaks_fixed, 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    CU_ASSERT_EQUAL(read_be(path, data_count, 2), 1);
    unlink(path);
}

/* A 64-bit count far above the references (2^63 + 1 for one): a leak of 2^63, which
 * the repair lowers without any signed arithmetic on the difference (negating it as an
 * int64_t is undefined), and then gives the entry its COPIED flag back. */
static void test_repair_huge_count(void)
{
    char path[512];
    tst_path(path, sizeof path, "huge-count.qcow2");
    const char *options[] = {"refcount_bits=64", NULL};
    create_or_die(path, 4 * MIB, 64 * KIB, options);
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    uint8_t data[4096];
    memset(data, 0x71, sizeof data);
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, &err), RT_OK);
    TST_RC(rt_vd_write(vd, 0, data, sizeof data), RT_OK);
    rt_vd_extent_t ext;
    TST_RC(rt_vd_block_status(vd, 0, sizeof data, &ext), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    uint64_t count = refcount_of_width(path, 64 * KIB, ext.host_offset / (64 * KIB), 8);
    CU_ASSERT_EQUAL_FATAL(read_be(path, count, 8), 1);
    patch_be(path, count, (1ull << 63) + 1, 8);
    /* Consistent while the count is above 1: the entry does not own the cluster. */
    uint64_t l2 = read_be(path, read_be(path, H_L1_OFFSET, 8), 8) & ~COPIED;
    patch_be(path, l2, read_be(path, l2, 8) & ~COPIED, 8);

    rt_vd_check_result_t res;
    tst_qcow2_repair_one_leak(path, &vd, &res);
    CU_ASSERT_EQUAL(res.leaks, 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    CU_ASSERT_EQUAL(read_be(path, count, 8), 1);
    CU_ASSERT(qemu_img_clean_as(path, "qcow2") != 0);
    unlink(path);
}

/* ---------------------------------------------------------------------------------- */
/* Compressed clusters at narrow refcount widths. */

static void test_compressed_packing_widths(void)
{
    /* 320 clusters that deflate to about 100 bytes: several hundred would share a host
     * cluster, past what 8 bits count, and 1 bit counts only one. */
    const char *widths[] = {"refcount_bits=1", "refcount_bits=8", "refcount_bits=16"};
    const uint32_t cluster = 64 * KIB, clusters = 320;
    uint8_t *buf = malloc(cluster), *back = malloc(cluster);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_PTR_NOT_NULL_FATAL(back);
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
        char path[512];
        tst_path(path, sizeof path, "compressed-width.qcow2");
        const char *options[] = {widths[w], NULL};
        create_or_die(path, (uint64_t)clusters * cluster, cluster, options);
        rt_vd_t vd = RT_VD_NIL;
        rt_vd_error_t err;
        TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, &err), RT_OK);
        int rc = RT_OK;
        uint32_t written = 0;
        for (; written < clusters && rc == RT_OK; written++) {
            memset(buf, (int)(written * 7u + 1u), cluster);
            put_be(buf, written, 4);
            rc = rt_vd_write_compressed(vd, (uint64_t)written * cluster, buf, cluster);
        }
        if (rc != RT_OK)
            fprintf(stderr, "\n  %s: compressed write %u: %s", widths[w], written - 1,
                    rt_status_name(rc));
        CU_ASSERT_EQUAL(rc, RT_OK);
        TST_RC(rt_vd_close(vd), RT_OK);

        TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
        bool same = true;
        for (uint32_t i = 0; i < clusters && same; i++) {
            memset(buf, (int)(i * 7u + 1u), cluster);
            put_be(buf, i, 4);
            same = rt_vd_read(vd, (uint64_t)i * cluster, back, cluster) == RT_OK &&
                   memcmp(buf, back, cluster) == 0;
        }
        CU_ASSERT(same);
        rt_vd_check_result_t res;
        TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
        if (res.corruptions + res.leaks)
            fprintf(stderr, "\n  %s: %s", widths[w], res.first_problem);
        CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
        TST_RC(rt_vd_close(vd), RT_OK);
        CU_ASSERT(qemu_img_clean_as(path, "qcow2") != 0);
        unlink(path);
    }
    free(buf);
    free(back);
}

/* A compressed write whose data is written but whose L2 table turns out corrupt (an
 * entry past the end of the file, found when the table is loaded to point at the new
 * data) fails, and gives back the clusters it took: nothing names them.  Twice, so
 * that a second write cannot pack into the first one's orphan either. */
static void test_compressed_write_fails_cleanly(void)
{
    char path[512];
    tst_path(path, sizeof path, "compressed-corrupt-l2.qcow2");
    const uint32_t cluster = 64 * KIB;
    create_or_die(path, 4 * MIB, cluster, NULL);
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    uint8_t *buf = calloc(1, cluster);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    memset(buf, 0x42, cluster);
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, &err), RT_OK);
    TST_RC(rt_vd_write(vd, 0, buf, cluster), RT_OK); /* makes L2 table 0 */
    TST_RC(rt_vd_close(vd), RT_OK);
    uint64_t file_size = 0;
    free(slurp(path, &file_size));
    uint64_t l2 = read_be(path, read_be(path, H_L1_OFFSET, 8), 8) & OFFSET_MASK;
    patch_be(path, l2 + 8u * 5, (file_size + 16u * cluster) | COPIED, 8);

    /* The whole table is refused when it is loaded; the guest range written lies in a
     * part nothing has mapped yet. */
    rt_vd_check_result_t res;
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", 0, &err), RT_OK);
    /* A check first: it reports the table and leaves the lookup to the write's own
     * pointing step, which is where the data is already out. */
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT(res.corruptions > 0);
    for (int i = 0; i < 2; i++)
        TST_RC(rt_vd_write_compressed(vd, (uint64_t)(10 + i) * cluster, buf, cluster),
               RT_ERR_VD_CORRUPT);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK); /* as a close would leave it */
    if (res.leaks)
        fprintf(stderr, "\n  after the failed writes: %s", res.first_problem);
    CU_ASSERT_EQUAL(res.leaks, 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.leaks, 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    free(buf);
    unlink(path);
}

/* ---------------------------------------------------------------------------------- */
/* Bitmap directory entries. */

#define BM_CLUSTER 512u
#define BM_SIZE    (4u * MIB)

/* Where the one bitmap's directory entry is. */
struct bitmap_image {
    uint64_t dir, table;
};

/* A 4 MiB image with 512-byte clusters and one bitmap "b0" of granularity 512 bytes:
 * 8192 bits, 1024 bytes, a table of exactly 2 entries (both "all zeros"). */
static struct bitmap_image make_bitmap_image(const char *path)
{
    create_or_die(path, BM_SIZE, BM_CLUSTER, NULL);
    uint64_t file_size = 0;
    uint8_t *f = slurp(path, &file_size);
    struct bitmap_image bm;
    bm.dir = (file_size + BM_CLUSTER - 1) / BM_CLUSTER * BM_CLUSTER;
    bm.table = bm.dir + BM_CLUSTER;
    /* The bitmaps extension replaces the extensions (a feature name table, which a
     * 512-byte header cluster has no room for beside it). */
    uint32_t at = get_be32(f + H_HEADER_LENGTH);
    free(f);
    uint8_t ext[8 + 24 + 8] = {0};
    put_be(ext, EXT_BITMAPS, 4);
    put_be(ext + 4, 24, 4);
    put_be(ext + 8, 1, 4);         /* one bitmap */
    put_be(ext + 16, 32, 8);       /* directory size */
    put_be(ext + 24, bm.dir, 8);   /* directory offset */
    patch(path, at, ext, sizeof ext);
    uint8_t entry[BM_CLUSTER] = {0};
    put_be(entry, bm.table, 8);    /* table offset */
    put_be(entry + 8, 2, 4);       /* table size */
    entry[16] = 1;                 /* dirty tracking */
    entry[17] = 9;                 /* granularity 2^9 */
    put_be(entry + 18, 2, 2);      /* name size */
    memcpy(entry + 24, "b0", 2);
    patch(path, bm.dir, entry, sizeof entry);
    memset(entry, 0, sizeof entry);
    patch(path, bm.table, entry, sizeof entry);
    patch_be(path, H_AUTOCLEAR, AUTOCLEAR_BITS, 8);
    patch_be(path, refcount_at(path, BM_CLUSTER, bm.dir / BM_CLUSTER), 1, 2);
    patch_be(path, refcount_at(path, BM_CLUSTER, bm.table / BM_CLUSTER), 1, 2);
    return bm;
}

static bool qemu_img_opens(const char *path)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s info -f qcow2 '%s' >/dev/null 2>&1", QEMU_IMG, path);
    return system(cmd) == 0;
}

static void test_bitmap_constraints(void)
{
    char path[512];
    tst_path(path, sizeof path, "bitmap.qcow2");
    struct bitmap_image bm = make_bitmap_image(path);
    bool oracle = access(QEMU_IMG, X_OK) == 0;

    /* The valid image: opens both ways, checks clean (the bitmap's clusters counted),
     * and qemu-img agrees. */
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    rt_vd_check_result_t res;
    TST_RC_FATAL(rt_vd_open(&vd, path, "qcow2", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    if (res.corruptions + res.leaks)
        fprintf(stderr, "\n  the valid bitmap image: %s", res.first_problem);
    CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    if (oracle)
        CU_ASSERT_EQUAL(qemu_img_clean_as(path, "qcow2"), 1);

    /* Each mutant on a fresh copy; one field of the directory entry each. */
    const struct {
        const char *name;
        unsigned off, bytes;
        uint64_t value;
        const char *keyword;
    } mutants[] = {
        {"table size 0", 8, 4, 0, "bitmap table"},
        {"table too small for the disk", 8, 4, 1, "cover"},
        {"table over 512 MiB of data", 8, 4, (1u << 20) + 1, "512 MiB"},
        {"granularity 2^8", 17, 1, 8, "granularity"},
        {"granularity 2^32", 17, 1, 32, "granularity"},
        {"type 2", 16, 1, 2, "type"},
        {"reserved flag", 12, 4, 1u << 2, "flags"},
    };
    char mutant[512];
    tst_path(mutant, sizeof mutant, "bitmap-mutant.qcow2");
    for (size_t m = 0; m < sizeof mutants / sizeof mutants[0]; m++) {
        copy_file(path, mutant);
        patch_be(mutant, bm.dir + mutants[m].off, mutants[m].value, mutants[m].bytes);
        /* A table that large must be inside the file to get as far as its size. */
        if (mutants[m].value > 2 && mutants[m].off == 8)
            resize(mutant, bm.table + 8ull * mutants[m].value + BM_CLUSTER);
        const uint32_t flags[] = {RT_VD_OPEN_READ_ONLY, 0};
        for (int k = 0; k < 2; k++) {
            int rc = rt_vd_open(&vd, mutant, "qcow2", flags[k], &err);
            if (rc != RT_ERR_VD_CORRUPT || !mentions(err.msg, mutants[m].keyword))
                fprintf(stderr, "\n  %s: %s: %s", mutants[m].name, rt_status_name(rc),
                        rc == RT_OK ? "opened" : err.msg);
            CU_ASSERT_EQUAL(rc, RT_ERR_VD_CORRUPT);
            CU_ASSERT(mentions(err.msg, mutants[m].keyword));
            if (rc == RT_OK)
                rt_vd_close(vd);
        }
        if (oracle && qemu_img_opens(mutant)) {
            fprintf(stderr, "\n  %s: qemu-img opens it", mutants[m].name);
            CU_FAIL("qemu-img opens a bitmap it should refuse");
        }
    }

    /* The same short table on a bitmap marked in use is valid: QEMU leaves one like
     * that when the disk grew while the bitmap was loaded and the host then died. */
    copy_file(path, mutant);
    patch_be(mutant, bm.dir + 8, 1, 4);
    patch_be(mutant, bm.dir + 12, read_be(mutant, bm.dir + 12, 4) | 1u, 4);
    const uint32_t flags[] = {RT_VD_OPEN_READ_ONLY, 0};
    for (int k = 0; k < 2; k++) {
        int rc = rt_vd_open(&vd, mutant, "qcow2", flags[k], &err);
        if (rc != RT_OK)
            fprintf(stderr, "\n  short in-use bitmap: %s", err.msg);
        TST_RC(rc, RT_OK);
        if (rc == RT_OK)
            TST_RC(rt_vd_close(vd), RT_OK);
    }
    if (oracle)
        CU_ASSERT(qemu_img_opens(mutant));
    unlink(mutant);
    unlink(path);
}

int main(void)
{
    CU_pSuite suite = tst_suite("QCOW2 at its limits");
    TST_ADD(suite, test_references_beyond_counting);
    TST_ADD(suite, test_repair_huge_count);
    TST_ADD(suite, test_compressed_packing_widths);
    TST_ADD(suite, test_compressed_write_fails_cleanly);
    TST_ADD(suite, test_bitmap_constraints);
    return tst_run();
}
