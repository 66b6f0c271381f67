/*
 * Backing chains changed: rt_vd_rebase() and rt_vd_commit().
 *
 * rt_vd_rebase():
 *   - safe: an overlay moved from one backing file to another (QCOW2 and raw, larger
 *     and smaller than the overlay) reads exactly as before, through the same handle
 *     and after a reopen; both checkers find nothing; the new name and format are what
 *     info reports and what qemu-img reads; a probed format is recorded;
 *   - onto none: the overlay becomes standalone with the same contents;
 *   - unsafe: only the name changes (the disk then shows the new file beneath), also
 *     on an image opened writable without its backing file, which is gone;
 *   - the header's other extensions survive, byte for byte, and 512-byte clusters
 *     refuse a name that does not fit;
 *   - refusals that change nothing: flags, formats, names, raw and VDI, read-only,
 *     busy, a safe rebase without the old file open, a new backing file that is missing
 *     or is the image itself (locked).
 *
 * rt_vd_measure(): qemu-img's numbers for a size, a source's data counted in the new
 * image's clusters (64 KiB and 512 bytes), raw, and the refusals.
 *
 * rt_vd_commit():
 *   - the overlay's data (plain and zero ranges) lands in the backing file, which grows
 *     to the overlay's size; the overlay reads the same and is empty after (or keeps
 *     its data with RT_VD_COMMIT_KEEP); both checkers on both files; a three-deep chain
 *     commits into the middle only; an overlay's internal snapshot survives the
 *     emptying;
 *   - refusals: no backing file, none recorded format, read-only, busy, opened without
 *     its backing file, a backing file another handle holds (the handle still reads
 *     after).
 */
#include "tst_common.h"
#include "tst_files.h"
#include "tst_qcow2.h"
#include "tst_qemu_img.h"
#include "tst_vd_helpers.h"

#include <rt/vd.h>

#include <stdbool.h>

#define DISK (4u * MIB)

static uint8_t before[DISK], after[DISK], buf[DISK];

static void create(const char *path, const char *format, uint64_t size, const char *backing,
                   const char *backing_format, uint32_t cluster)
{
    unlink(path);
    rt_vd_create_opts_t opts = {.size = size,
                                .block_size = cluster,
                                .backing_file = backing,
                                .backing_format = backing_format};
    rt_vd_error_t err;
    int rc = rt_vd_create(path, format, &opts, &err);
    if (rc != RT_OK)
        fprintf(stderr, "\n  create %s: %s", path, err.msg);
    TST_RC_FATAL(rc, RT_OK);
}

static void fill(const char *path, const char *format, uint64_t off, uint64_t len, uint8_t seed)
{
    rt_vd_t vd = RT_VD_NIL;
    TST_RC_FATAL(rt_vd_open(&vd, path, format, RT_VD_OPEN_ALLOW_BACKING, NULL), RT_OK);
    for (uint64_t i = 0; i < len; i++)
        buf[i] = (uint8_t)((((off + i) * 13u) >> 9) + seed) | 1u;
    TST_RC(rt_vd_write(vd, off, buf, len), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
}

static rt_vd_t open_overlay(const char *path, uint32_t flags)
{
    return tst_vd_open(path, "qcow2", flags);
}

static void read_all(rt_vd_t vd, uint8_t *out)
{
    TST_RC(rt_vd_read(vd, 0, out, DISK), RT_OK);
}

static void same(const uint8_t *a, const uint8_t *b, const char *what)
{
    for (size_t i = 0; i < DISK; i++)
        if (a[i] != b[i]) {
            fprintf(stderr, "\n  %s: byte 0x%zx is 0x%02x, expected 0x%02x", what, i, a[i], b[i]);
            CU_FAIL("contents changed");
            return;
        }
}

static void clean(rt_vd_t vd, const char *path, const char *what)
{
    rt_vd_check_result_t res;
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    if (res.corruptions || res.leaks)
        fprintf(stderr, "\n  %s: %s", what, res.first_problem);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    CU_ASSERT_EQUAL(res.leaks, 0);
    CU_ASSERT_NOT_EQUAL(qemu_img_clean_as(path, "qcow2"), 0);
}

static void names(rt_vd_t vd, const char *backing, const char *format)
{
    rt_vd_info_t info;
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    if (backing == NULL) {
        CU_ASSERT_PTR_NULL(info.backing_file);
    } else {
        CU_ASSERT_PTR_NOT_NULL_FATAL(info.backing_file);
        CU_ASSERT_STRING_EQUAL(info.backing_file, backing);
    }
    if (format == NULL) {
        CU_ASSERT_PTR_NULL(info.backing_format);
    } else {
        CU_ASSERT_PTR_NOT_NULL_FATAL(info.backing_format);
        CU_ASSERT_STRING_EQUAL(info.backing_format, format);
    }
}

struct files {
    char a[600], b[600], small[600], top[600];
};

/* A (qcow2, the disk's size), B (raw, different data), small (qcow2, 1 MiB), and an
 * overlay of A holding data of its own. */
static void make_files(struct files *f, uint32_t cluster)
{
    tst_path(f->a, sizeof f->a, "rebase-a.qcow2");
    tst_path(f->b, sizeof f->b, "rebase-b.raw");
    tst_path(f->small, sizeof f->small, "rebase-small.qcow2");
    tst_path(f->top, sizeof f->top, "rebase-top.qcow2");
    create(f->a, "qcow2", DISK, NULL, NULL, 0);
    fill(f->a, "qcow2", 0, 3 * MIB, 1);
    create(f->b, "raw", DISK, NULL, NULL, 0);
    fill(f->b, "raw", 512 * KIB, 3 * MIB, 2);
    create(f->small, "qcow2", MIB, NULL, NULL, 0);
    fill(f->small, "qcow2", 0, MIB, 3);
    create(f->top, "qcow2", DISK, "rebase-a.qcow2", "qcow2", cluster);
    fill(f->top, "qcow2", 100 * KIB, 300 * KIB, 4);
    fill(f->top, "qcow2", 3 * MIB + 7 * 512, 4096, 5); /* unaligned, past A's data */
}

static void remove_files(const struct files *f)
{
    unlink(f->a);
    unlink(f->b);
    unlink(f->small);
    unlink(f->top);
}

static void safe_rebases(uint32_t cluster)
{
    struct files f;
    make_files(&f, cluster);
    rt_vd_t vd = open_overlay(f.top, RT_VD_OPEN_ALLOW_BACKING);
    read_all(vd, before);

    rt_vd_error_t err;
    TST_RC(rt_vd_rebase(vd, "rebase-b.raw", "raw", 0, &err), RT_OK);
    names(vd, "rebase-b.raw", "raw");
    read_all(vd, after);
    same(after, before, "onto B, the same handle");
    clean(vd, f.top, "onto B");
    /* The probed format is recorded. */
    TST_RC(rt_vd_rebase(vd, "rebase-small.qcow2", NULL, 0, &err), RT_OK);
    names(vd, "rebase-small.qcow2", "qcow2");
    read_all(vd, after);
    same(after, before, "onto a smaller backing file");
    TST_RC(rt_vd_close(vd), RT_OK);

    vd = open_overlay(f.top, RT_VD_OPEN_ALLOW_BACKING);
    names(vd, "rebase-small.qcow2", "qcow2");
    read_all(vd, after);
    same(after, before, "reopened");
    clean(vd, f.top, "onto the small one");
    /* Onto none: standalone. */
    TST_RC(rt_vd_rebase(vd, "", NULL, 0, &err), RT_OK);
    names(vd, NULL, NULL);
    read_all(vd, after);
    same(after, before, "standalone");
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(f.small);
    unlink(f.a);
    vd = open_overlay(f.top, 0); /* nothing to follow any more */
    read_all(vd, after);
    same(after, before, "standalone, reopened without its old files");
    clean(vd, f.top, "standalone");
    TST_RC(rt_vd_close(vd), RT_OK);
    remove_files(&f);
}

static void test_safe(void)
{
    safe_rebases(64 * KIB);
    safe_rebases(512);
}

static void test_unsafe(void)
{
    struct files f;
    make_files(&f, 0);
    char moved[600];
    tst_path(moved, sizeof moved, "rebase-moved.qcow2");
    rt_vd_t vd = open_overlay(f.top, RT_VD_OPEN_ALLOW_BACKING);
    read_all(vd, before);
    TST_RC(rt_vd_close(vd), RT_OK);
    CU_ASSERT_FATAL(rename(f.a, moved) == 0);

    /* The old backing file is gone: opened alone, writable, named again. */
    vd = open_overlay(f.top, RT_VD_OPEN_NO_BACKING);
    TST_RC(rt_vd_read(vd, 0, buf, 512), RT_ERR_ACCESS_DENIED);
    TST_RC(rt_vd_write(vd, 0, buf, 512), RT_ERR_ACCESS_DENIED);
    TST_RC(rt_vd_resize(vd, 2 * DISK, 0, NULL), RT_ERR_ACCESS_DENIED);
    rt_vd_error_t err;
    TST_RC(rt_vd_rebase(vd, "rebase-moved.qcow2", "qcow2", 0, &err), RT_ERR_ACCESS_DENIED);
    TST_RC(rt_vd_rebase(vd, "rebase-moved.qcow2", "qcow2", RT_VD_REBASE_UNSAFE, &err), RT_OK);
    names(vd, "rebase-moved.qcow2", "qcow2");
    TST_RC(rt_vd_flush(vd), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    vd = open_overlay(f.top, RT_VD_OPEN_ALLOW_BACKING);
    read_all(vd, after);
    same(after, before, "after naming the moved file");
    clean(vd, f.top, "unsafe, moved");

    /* Unsafe onto different data: the disk shows the new file where it holds nothing. */
    TST_RC(rt_vd_rebase(vd, "rebase-b.raw", "raw", RT_VD_REBASE_UNSAFE, &err), RT_OK);
    read_all(vd, after);
    TST_RC(rt_vd_close(vd), RT_OK);
    rt_vd_t b = RT_VD_NIL;
    TST_RC_FATAL(rt_vd_open(&b, f.b, "raw", RT_VD_OPEN_READ_ONLY, NULL), RT_OK);
    TST_RC(rt_vd_read(b, 0, buf, DISK), RT_OK);
    TST_RC(rt_vd_close(b), RT_OK);
    CU_ASSERT(memcmp(after, buf, 64 * KIB) == 0);                             /* B shows through */
    CU_ASSERT(memcmp(after + 100 * KIB, before + 100 * KIB, 300 * KIB) == 0); /* ours stays */
    unlink(moved);
    remove_files(&f);
}

/* The feature-name table (and any other extension) is rewritten as it was. */
static void test_extensions_kept(void)
{
    struct files f;
    make_files(&f, 0);
    uint64_t size0 = 0;
    uint8_t *old = slurp(f.top, &size0);
    rt_vd_t vd = open_overlay(f.top, RT_VD_OPEN_ALLOW_BACKING);
    TST_RC(rt_vd_rebase(vd, "rebase-b.raw", "raw", 0, NULL), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    uint64_t size1 = 0;
    uint8_t *now = slurp(f.top, &size1);
    /* Every extension but the backing format's, at the same place: the first ones are
     * the backing format (changed) and then the feature names. */
    uint32_t at = 112;
    uint32_t type = get_be32(old + at);
    CU_ASSERT_EQUAL(type, EXT_BACKING_FMT);
    uint32_t old_next = at + 8 + ((get_be32(old + at + 4) + 7) & ~7u);
    uint32_t new_next = at + 8 + ((get_be32(now + at + 4) + 7) & ~7u);
    CU_ASSERT_EQUAL(get_be32(old + old_next), EXT_FEATURE_NAME);
    CU_ASSERT_EQUAL(get_be32(now + new_next), EXT_FEATURE_NAME);
    uint32_t names_len = get_be32(old + old_next + 4);
    CU_ASSERT(names_len > 0 && memcmp(old + old_next, now + new_next, 8 + names_len) == 0);
    free(old);
    free(now);
    CU_ASSERT_NOT_EQUAL(qemu_img_clean_as(f.top, "qcow2"), 0);
    remove_files(&f);

    /* 512-byte clusters: a name that does not fit beside the extensions. */
    make_files(&f, 512);
    vd = open_overlay(f.top, RT_VD_OPEN_ALLOW_BACKING);
    char name[400];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    rt_vd_error_t err;
    TST_RC(rt_vd_rebase(vd, name, "raw", RT_VD_REBASE_UNSAFE, &err), RT_ERR_OUT_OF_RANGE);
    CU_ASSERT(mentions(err.msg, "cluster 0"));
    names(vd, "rebase-a.qcow2", "qcow2");
    TST_RC(rt_vd_close(vd), RT_OK);
    remove_files(&f);
}

static void test_refusals(void)
{
    struct files f;
    make_files(&f, 0);
    TST_RC(rt_vd_rebase(RT_VD_NIL, "x", NULL, 0, NULL), RT_ERR_INVALID_HANDLE);
    uint64_t size0 = 0, size1 = 0;
    uint8_t *old = slurp(f.top, &size0);
    rt_vd_t vd = open_overlay(f.top, RT_VD_OPEN_ALLOW_BACKING);
    rt_vd_error_t err;
    TST_RC(rt_vd_rebase(vd, "rebase-b.raw", "raw", 0x8, &err), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_rebase(vd, "rebase-b.raw", "nope", 0, &err), RT_ERR_INVALID_PARAMETER);
    CU_ASSERT(mentions(err.msg, "nope"));
    TST_RC(rt_vd_rebase(vd, NULL, "raw", 0, &err), RT_ERR_INVALID_PARAMETER);
    char long_name[1100];
    memset(long_name, 'l', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    TST_RC(rt_vd_rebase(vd, long_name, "raw", RT_VD_REBASE_UNSAFE, &err), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_rebase(vd, "rebase-missing.qcow2", "qcow2", 0, &err), RT_ERR_FILE_NOT_FOUND);
    TST_RC(rt_vd_rebase(vd, "rebase-top.qcow2", "qcow2", 0, &err), RT_ERR_VD_LOCKED);
    /* Busy. */
    struct tst_busy busy;
    tst_busy_begin(&busy, vd);
    TST_RC(rt_vd_rebase(vd, "rebase-b.raw", "raw", 0, &err), RT_ERR_BUSY);
    tst_busy_end(&busy);
    names(vd, "rebase-a.qcow2", "qcow2");
    TST_RC(rt_vd_close(vd), RT_OK);
    uint8_t *now = slurp(f.top, &size1);
    CU_ASSERT(size0 == size1 && memcmp(old, now, (size_t)size0) == 0); /* nothing changed */
    free(old);
    free(now);

    vd = open_overlay(f.top, RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_ALLOW_BACKING);
    TST_RC(rt_vd_rebase(vd, "rebase-b.raw", "raw", 0, &err), RT_ERR_VD_READ_ONLY);
    TST_RC(rt_vd_close(vd), RT_OK);
    /* Formats without backing files. */
    rt_vd_t other = RT_VD_NIL;
    TST_RC_FATAL(rt_vd_open(&other, f.b, "raw", 0, NULL), RT_OK);
    TST_RC(rt_vd_rebase(other, "rebase-a.qcow2", "qcow2", 0, &err), RT_ERR_NOT_SUPPORTED);
    CU_ASSERT(mentions(err.msg, "raw"));
    TST_RC(rt_vd_close(other), RT_OK);
    char vdi[600];
    tst_path(vdi, sizeof vdi, "rebase.vdi");
    create(vdi, "vdi", MIB, NULL, NULL, 0);
    rt_vd_t v = RT_VD_NIL;
    TST_RC_FATAL(rt_vd_open(&v, vdi, "vdi", 0, NULL), RT_OK);
    TST_RC(rt_vd_rebase(v, "rebase-a.qcow2", "qcow2", 0, &err), RT_ERR_NOT_SUPPORTED);
    TST_RC(rt_vd_close(v), RT_OK);
    unlink(vdi);
    remove_files(&f);
}

/* ---------------------------------------------------------------------------------- */
/* Commit. */

static rt_vd_t open_rw(const char *path, const char *format)
{
    rt_vd_t vd = RT_VD_NIL;
    TST_RC_FATAL(rt_vd_open(&vd, path, format, RT_VD_OPEN_ALLOW_BACKING, NULL), RT_OK);
    return vd;
}

static void read_file_image(const char *path, const char *format, uint8_t *out, uint64_t len)
{
    rt_vd_t vd = RT_VD_NIL;
    TST_RC_FATAL(
        rt_vd_open(&vd, path, format, RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_ALLOW_BACKING, NULL),
        RT_OK);
    TST_RC(rt_vd_read(vd, 0, out, len), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
}

static uint64_t size_of_image(rt_vd_t vd)
{
    rt_vd_info_t info;
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    return info.virtual_size;
}

static uint64_t allocated(rt_vd_t vd)
{
    rt_vd_info_t info;
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    return info.blocks_allocated;
}

static void commit_run(bool keep)
{
    char base[600], top[600];
    tst_path(base, sizeof base, "commit-base.qcow2");
    tst_path(top, sizeof top, "commit-top.qcow2");
    create(base, "qcow2", 2 * MIB, NULL, NULL, 0); /* smaller: grown by the commit */
    fill(base, "qcow2", 0, 2 * MIB, 1);
    create(top, "qcow2", DISK, "commit-base.qcow2", "qcow2", 0);
    fill(top, "qcow2", 512 * KIB + 512, 100 * KIB, 2);
    fill(top, "qcow2", 3 * MIB, 64 * KIB, 3);
    rt_vd_t vd = open_rw(top, "qcow2");
    TST_RC(rt_vd_write_zeroes(vd, MIB, 128 * KIB, 0), RT_OK);
    read_all(vd, before);
    TST_RC(rt_vd_commit(vd, keep ? RT_VD_COMMIT_KEEP : 0, NULL), RT_OK);
    read_all(vd, after);
    same(after, before, "the overlay after its commit");
    if (keep) {
        CU_ASSERT(allocated(vd) > 0);
    } else {
        CU_ASSERT_EQUAL(allocated(vd), 0);
    }
    clean(vd, top, "the committed overlay");
    TST_RC(rt_vd_close(vd), RT_OK);
    read_file_image(base, "qcow2", after, DISK);
    same(after, before, "the backing file after the commit");
    vd = open_rw(base, "qcow2");
    CU_ASSERT_EQUAL(size_of_image(vd), DISK); /* grown */
    clean(vd, base, "the backing file");
    TST_RC(rt_vd_close(vd), RT_OK);
    read_file_image(top, "qcow2", after, DISK);
    same(after, before, "the overlay, reopened");
    unlink(top);
    unlink(base);
}

static void test_commit(void)
{
    commit_run(false);
    commit_run(true);
}

/* base0 <- mid <- top: the commit of top goes into mid only. */
static void test_commit_three_deep(void)
{
    char base0[600], mid[600], top[600];
    tst_path(base0, sizeof base0, "deep-0.qcow2");
    tst_path(mid, sizeof mid, "deep-1.qcow2");
    tst_path(top, sizeof top, "deep-2.qcow2");
    create(base0, "qcow2", DISK, NULL, NULL, 0);
    fill(base0, "qcow2", 0, DISK, 1);
    create(mid, "qcow2", DISK, "deep-0.qcow2", "qcow2", 0);
    fill(mid, "qcow2", MIB, MIB, 2);
    create(top, "qcow2", DISK, "deep-1.qcow2", "qcow2", 512);
    fill(top, "qcow2", 1536 * KIB + 1024, 4096, 3); /* partial units of mid: filled from 0 */
    static uint8_t base_before[DISK];
    read_file_image(base0, "qcow2", base_before, DISK);
    rt_vd_t vd = open_rw(top, "qcow2");
    read_all(vd, before);
    TST_RC(rt_vd_commit(vd, 0, NULL), RT_OK);
    read_all(vd, after);
    same(after, before, "top after committing into mid");
    TST_RC(rt_vd_close(vd), RT_OK);
    read_file_image(mid, "qcow2", after, DISK);
    same(after, before, "mid after the commit");
    read_file_image(base0, "qcow2", after, DISK);
    same(after, base_before, "base0, untouched");
    unlink(top);
    unlink(mid);
    unlink(base0);
}

/* An internal snapshot of the overlay keeps its data when the disk is emptied. */
static void test_commit_keeps_snapshot(void)
{
    char base[600], top[600];
    tst_path(base, sizeof base, "csnap-base.qcow2");
    tst_path(top, sizeof top, "csnap-top.qcow2");
    create(base, "qcow2", DISK, NULL, NULL, 0);
    create(top, "qcow2", DISK, "csnap-base.qcow2", "qcow2", 0);
    fill(top, "qcow2", 0, MIB, 4);
    rt_vd_t vd = open_rw(top, "qcow2");
    read_all(vd, before);
    TST_RC(rt_vd_snapshot_create(vd, "s", NULL, NULL), RT_OK);
    TST_RC(rt_vd_commit(vd, 0, NULL), RT_OK);
    CU_ASSERT_EQUAL(allocated(vd), 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    fill(base, "qcow2", 0, MIB, 5); /* the base changes under the emptied overlay */
    vd = open_rw(top, "qcow2");
    TST_RC(rt_vd_snapshot_apply(vd, "s", NULL), RT_OK);
    read_all(vd, after);
    same(after, before, "the overlay's snapshot after the commit");
    clean(vd, top, "overlay with a snapshot, committed");
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(top);
    unlink(base);
}

static void test_commit_refusals(void)
{
    char base[600], top[600], plain[600], other[600];
    tst_path(base, sizeof base, "cref-base.qcow2");
    tst_path(top, sizeof top, "cref-top.qcow2");
    tst_path(plain, sizeof plain, "cref-plain.qcow2");
    tst_path(other, sizeof other, "cref-other.qcow2");
    rt_vd_error_t err;
    TST_RC(rt_vd_commit(RT_VD_NIL, 0, NULL), RT_ERR_INVALID_HANDLE);
    create(plain, "qcow2", MIB, NULL, NULL, 0);
    rt_vd_t vd = open_rw(plain, "qcow2");
    TST_RC(rt_vd_commit(vd, 0, &err), RT_ERR_INVALID_PARAMETER);
    CU_ASSERT(mentions(err.msg, "no backing file"));
    TST_RC(rt_vd_close(vd), RT_OK);

    create(base, "qcow2", MIB, NULL, NULL, 0);
    create(top, "qcow2", MIB, "cref-base.qcow2", NULL, 0); /* no format recorded */
    vd = open_rw(top, "qcow2");
    TST_RC(rt_vd_commit(vd, 0x4, &err), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_commit(vd, 0, &err), RT_ERR_INVALID_PARAMETER);
    CU_ASSERT(mentions(err.msg, "format"));
    TST_RC(rt_vd_close(vd), RT_OK);

    create(top, "qcow2", MIB, "cref-base.qcow2", "qcow2", 0);
    fill(top, "qcow2", 0, 4096, 6);
    vd = open_overlay(top, RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_ALLOW_BACKING);
    TST_RC(rt_vd_commit(vd, 0, &err), RT_ERR_VD_READ_ONLY);
    TST_RC(rt_vd_close(vd), RT_OK);
    vd = open_overlay(top, RT_VD_OPEN_NO_BACKING);
    TST_RC(rt_vd_commit(vd, 0, &err), RT_ERR_ACCESS_DENIED);
    TST_RC(rt_vd_close(vd), RT_OK);

    /* Another overlay of the same base is open: its shared lock refuses the writer. */
    create(other, "qcow2", MIB, "cref-base.qcow2", "qcow2", 0);
    rt_vd_t holder = open_overlay(other, RT_VD_OPEN_READ_ONLY | RT_VD_OPEN_ALLOW_BACKING);
    vd = open_rw(top, "qcow2");
    TST_RC(rt_vd_read(vd, 0, buf, 4096), RT_OK);
    memcpy(before, buf, 4096);
    TST_RC(rt_vd_commit(vd, 0, &err), RT_ERR_VD_LOCKED);
    TST_RC(rt_vd_read(vd, 0, buf, 4096), RT_OK); /* the backing file is back */
    CU_ASSERT(memcmp(buf, before, 4096) == 0);
    CU_ASSERT(allocated(vd) > 0); /* not emptied */
    /* Busy. */
    struct tst_busy busy;
    tst_busy_begin(&busy, vd);
    TST_RC(rt_vd_commit(vd, 0, &err), RT_ERR_BUSY);
    tst_busy_end(&busy);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC(rt_vd_close(holder), RT_OK);
    unlink(other);
    unlink(top);
    unlink(base);
    unlink(plain);
}

/* ---------------------------------------------------------------------------------- */
/* Measure (the same numbers as qemu-img measure; img_compat.sh compares more). */

static void test_measure(void)
{
    rt_vd_measure_t m;
    rt_vd_error_t err;
    rt_vd_create_opts_t opts = {.size = 1ull << 30};
    TST_RC(rt_vd_measure("qcow2", &opts, RT_VD_NIL, &m, &err), RT_OK);
    CU_ASSERT_EQUAL(m.required, 393216); /* qemu-img measure --size 1G -O qcow2 */
    CU_ASSERT_EQUAL(m.fully_allocated, 1074135040);
    static const char *const narrow[] = {"refcount_bits=1", NULL};
    rt_vd_create_opts_t big = {.size = 100ull << 30, .block_size = 2u << 20, .options = narrow};
    TST_RC(rt_vd_measure("qcow2", &big, RT_VD_NIL, &m, &err), RT_OK);
    CU_ASSERT_EQUAL(m.required, 10485760); /* qemu-img's, for 2 MiB clusters */
    CU_ASSERT_EQUAL(m.fully_allocated, 107384668160ull);
    TST_RC(rt_vd_measure("raw", &opts, RT_VD_NIL, &m, &err), RT_OK);
    CU_ASSERT_EQUAL(m.required, 1ull << 30);
    CU_ASSERT_EQUAL(m.fully_allocated, 1ull << 30);

    /* A source: its data in the new image's clusters. */
    char path[600];
    tst_path(path, sizeof path, "measure.qcow2");
    create(path, "qcow2", DISK, NULL, NULL, 0);
    fill(path, "qcow2", 100, 1000, 1); /* one 64 KiB cluster */
    rt_vd_t vd = open_overlay(path, RT_VD_OPEN_READ_ONLY);
    rt_vd_create_opts_t copy = {0};
    TST_RC(rt_vd_measure("qcow2", &copy, vd, &m, &err), RT_OK);
    rt_vd_measure_t empty;
    rt_vd_create_opts_t same_size = {.size = DISK};
    TST_RC(rt_vd_measure("qcow2", &same_size, RT_VD_NIL, &empty, &err), RT_OK);
    CU_ASSERT_EQUAL(m.required, empty.required + 64 * KIB);
    CU_ASSERT_EQUAL(m.fully_allocated, empty.fully_allocated);
    rt_vd_create_opts_t small = {.block_size = 512};
    TST_RC(rt_vd_measure("qcow2", &small, vd, &m, &err), RT_OK);
    same_size.block_size = 512;
    TST_RC(rt_vd_measure("qcow2", &same_size, RT_VD_NIL, &empty, &err), RT_OK);
    /* The source reports its whole 64 KiB cluster as data: 128 small clusters. */
    CU_ASSERT_EQUAL(m.required, empty.required + 64 * KIB);

    /* Refusals. */
    TST_RC(rt_vd_measure(NULL, &opts, RT_VD_NIL, &m, &err), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_measure("qcow2", NULL, RT_VD_NIL, &m, &err), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_measure("qcow2", &opts, RT_VD_NIL, NULL, &err), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_measure("nope", &opts, RT_VD_NIL, &m, &err), RT_ERR_VD_UNKNOWN_FORMAT);
    TST_RC(rt_vd_measure("vdi", &opts, RT_VD_NIL, &m, &err), RT_ERR_NOT_SUPPORTED);
    rt_vd_create_opts_t odd = {.size = 1000};
    TST_RC(rt_vd_measure("qcow2", &odd, RT_VD_NIL, &m, &err), RT_ERR_INVALID_PARAMETER);
    rt_vd_create_opts_t backed = {.size = MIB, .backing_file = "x.qcow2"};
    TST_RC(rt_vd_measure("qcow2", &backed, RT_VD_NIL, &m, &err), RT_ERR_INVALID_PARAMETER);
    rt_vd_create_opts_t cluster = {.size = MIB, .block_size = 3000};
    TST_RC(rt_vd_measure("qcow2", &cluster, RT_VD_NIL, &m, &err), RT_ERR_INVALID_PARAMETER);
    static const char *const bad[] = {"refcount_bits=3", NULL};
    rt_vd_create_opts_t width = {.size = MIB, .options = bad};
    TST_RC(rt_vd_measure("qcow2", &width, RT_VD_NIL, &m, &err), RT_ERR_INVALID_PARAMETER);
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(path);
}

int main(void)
{
    CU_pSuite suite = tst_suite("rebase");
    TST_ADD(suite, test_refusals);
    TST_ADD(suite, test_safe);
    TST_ADD(suite, test_unsafe);
    TST_ADD(suite, test_extensions_kept);
    CU_pSuite commit = tst_suite("commit");
    TST_ADD(commit, test_commit_refusals);
    TST_ADD(commit, test_commit);
    TST_ADD(commit, test_commit_three_deep);
    TST_ADD(commit, test_commit_keeps_snapshot);
    CU_pSuite sizes = tst_suite("measure");
    TST_ADD(sizes, test_measure);
    return tst_run();
}
