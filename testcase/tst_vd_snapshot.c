/*
 * QCOW2 internal snapshots (rt_vd_snapshot_*):
 *
 *   - round trips on v3 (64 KiB and 512-byte clusters, the latter with L1 tables of
 *     several clusters) and v2 images: the disk after each create, write, discard, zero,
 *     apply and delete reads exactly as a model of it says, every snapshot keeps what
 *     the disk held when it was taken, and rt_vd_check and qemu-img check find nothing
 *     (no leak either) after every step;
 *   - apply gives the disk the snapshot's size; delete frees the space only it held;
 *   - IDs and names as qemu-img has them: numbering, duplicate names, apply matching IDs
 *     first and delete names first;
 *   - refusals that change nothing: raw, read-only, busy, bad names, an unknown snapshot,
 *     an image whose refcounts are wrong, refcounts too narrow for another reference;
 *   - crash points: for every metadata write an operation makes, a run in which that
 *     write and everything after it is lost (writes, fsyncs and truncates fail, as if
 *     the host died there); reopened, the image is consistent (leaks at most) and is
 *     exactly the state before or the state after, never a mix; also for a grow that
 *     writes a larger L1 table while a copied L2 table exists only in memory.
 */
#include "tst_common.h"
#include "tst_files.h"
#include "tst_qcow2.h"
#include "tst_qemu_img.h"
#include "tst_vd_helpers.h"

#include <rt/vd.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>

#include "internal/posix_sys.h"

#define DISK (4u * MIB)

struct shape {
    const char *name;
    uint32_t version, cluster;
};

static const struct shape shapes[] = {
    {"qcow2 v3", 3, 64 * KIB},
    {"qcow2 v3, 512-byte clusters", 3, 512},
    {"qcow2 v2", 2, 64 * KIB},
};

/* What the disk should read as now, and at the snapshots the tests take. */
static uint8_t model[DISK], at_a[DISK], at_b[DISK], back[DISK];

static void create_image(const char *path, const struct shape *sh, uint64_t size,
                         const char *const *options)
{
    unlink(path);
    rt_vd_create_opts_t opts = {
        .size = size, .version = sh->version, .block_size = sh->cluster, .options = options};
    rt_vd_error_t err;
    int rc = rt_vd_create(path, "qcow2", &opts, &err);
    if (rc != RT_OK)
        fprintf(stderr, "\n  create %s: %s", sh->name, err.msg);
    TST_RC_FATAL(rc, RT_OK);
}

static rt_vd_t open_image(const char *path, uint32_t flags)
{
    return tst_vd_open(path, "qcow2", flags);
}

static void fill(rt_vd_t vd, uint64_t off, uint64_t len, uint8_t seed)
{
    for (uint64_t i = 0; i < len; i++)
        model[off + i] = (uint8_t)(((off + i) * 7u >> 9) + seed) | 1u;
    TST_RC(rt_vd_write(vd, off, model + off, len), RT_OK);
}

static void zero(rt_vd_t vd, uint64_t off, uint64_t len, bool discard)
{
    memset(model + off, 0, len);
    TST_RC(discard ? rt_vd_discard(vd, off, len) : rt_vd_write_zeroes(vd, off, len, 0), RT_OK);
}

static uint64_t size_of(rt_vd_t vd)
{
    rt_vd_info_t info;
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    return info.virtual_size;
}

/* The disk reads as @a want over its first @a len bytes. */
static bool reads_as(rt_vd_t vd, const uint8_t *want, uint64_t len, const char *what)
{
    TST_RC(rt_vd_read(vd, 0, back, len), RT_OK);
    for (uint64_t i = 0; i < len; i++)
        if (back[i] != want[i]) {
            fprintf(stderr, "\n  %s: byte 0x%llx is 0x%02x, expected 0x%02x", what,
                    (unsigned long long)i, back[i], want[i]);
            CU_FAIL("the disk does not read as expected");
            return false;
        }
    return true;
}

/* After a crash between raising a new snapshot's counts and clearing the COPIED flags
 * that the counts contradict, qemu-img check calls the flags errors, although no write
 * could lose data through them (the references are still 1); its repair must leave a
 * clean image.  Returns qemu-img check's status after repairing a copy. */
static int qemu_img_repairs(const char *path)
{
    char copy[600], cmd[1400];
    tst_path(copy, sizeof copy, "repaired.qcow2");
    copy_file(path, copy);
    snprintf(cmd, sizeof cmd, "%s check -r all -f qcow2 '%s' >/dev/null 2>&1", QEMU_IMG, copy);
    if (system(cmd) == -1)
        return 255;
    int status = qemu_img_check_status(copy, "qcow2");
    unlink(copy);
    return status;
}

/* rt_vd_check finds nothing (@a leaks_ok: no corruption), nor qemu-img check. */
static void check_clean(rt_vd_t vd, const char *path, bool leaks_ok, const char *what)
{
    rt_vd_check_result_t res;
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    if (res.corruptions != 0 || (!leaks_ok && res.leaks != 0))
        fprintf(stderr, "\n  %s: %llu corruptions, %llu leaks: %s", what,
                (unsigned long long)res.corruptions, (unsigned long long)res.leaks,
                res.first_problem);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    if (!leaks_ok)
        CU_ASSERT_EQUAL(res.leaks, 0);
    int q = qemu_img_check_status(path, "qcow2");
    if (leaks_ok && q == 2)
        q = qemu_img_repairs(path);
    if (q > 0 && !(leaks_ok && q == 3))
        CU_ASSERT_NOT_EQUAL(qemu_img_clean_as(path, "qcow2"), 0);
}

/* The snapshots' names, in order, joined by ','. */
static void names(rt_vd_t vd, char *out, size_t room)
{
    rt_vd_snapshot_t sn[8];
    uint32_t count = 0;
    out[0] = '\0';
    TST_RC(rt_vd_snapshot_list(vd, sn, 8, &count, NULL), RT_OK);
    for (uint32_t i = 0; i < count && i < 8; i++) {
        size_t used = strlen(out);
        snprintf(out + used, room - used, "%s%s", i ? "," : "", sn[i].name);
    }
}

static void expect_names(rt_vd_t vd, const char *want)
{
    char got[256];
    names(vd, got, sizeof got);
    if (strcmp(got, want) != 0)
        fprintf(stderr, "\n  snapshots '%s', expected '%s'", got, want);
    CU_ASSERT_STRING_EQUAL(got, want);
}

static void apply(rt_vd_t vd, const char *which)
{
    rt_vd_error_t err;
    int rc = rt_vd_snapshot_apply(vd, which, &err);
    if (rc != RT_OK)
        fprintf(stderr, "\n  apply %s: %s", which, err.msg);
    TST_RC(rc, RT_OK);
}

static void take(rt_vd_t vd, const char *name, rt_vd_snapshot_t *made)
{
    rt_vd_error_t err;
    int rc = rt_vd_snapshot_create(vd, name, made, &err);
    if (rc != RT_OK)
        fprintf(stderr, "\n  create %s: %s", name, err.msg);
    TST_RC(rc, RT_OK);
}

/* ---------------------------------------------------------------------------------- */

static void round_trip(const struct shape *sh)
{
    char path[600];
    tst_path(path, sizeof path, "snap.qcow2");
    create_image(path, sh, DISK, NULL);
    memset(model, 0, sizeof model);
    rt_vd_t vd = open_image(path, 0);

    fill(vd, 0, 1 * MIB + 4096, 1);
    fill(vd, 3 * MIB - 512, 512, 2);
    time_t before = time(NULL);
    rt_vd_snapshot_t made;
    take(vd, "a", &made);
    memcpy(at_a, model, DISK);
    CU_ASSERT_STRING_EQUAL(made.id, "1");
    CU_ASSERT_STRING_EQUAL(made.name, "a");
    CU_ASSERT_EQUAL(made.disk_size, DISK);
    CU_ASSERT_EQUAL(made.vm_state_size, 0);
    CU_ASSERT(made.date_sec + 1 >= (uint64_t)before && made.date_sec <= (uint64_t)time(NULL));
    check_clean(vd, path, false, "after the first snapshot");

    /* The disk changes; the snapshot must not. */
    fill(vd, 4096, 8192, 3);        /* inside a shared cluster: copied first */
    fill(vd, 2 * MIB, 64 * KIB, 4); /* new */
    zero(vd, 512 * KIB, 128 * KIB, true);
    zero(vd, 768 * KIB, 64 * KIB, false);
    take(vd, "b", &made);
    memcpy(at_b, model, DISK);
    CU_ASSERT_STRING_EQUAL(made.id, "2");
    fill(vd, 0, 64 * KIB, 5);
    reads_as(vd, model, DISK, "the disk after writes");
    check_clean(vd, path, false, "after two snapshots and writes");

    apply(vd, "a");
    reads_as(vd, at_a, DISK, "after applying a");
    check_clean(vd, path, false, "after applying a");
    fill(vd, 100 * KIB, 4096, 6);
    apply(vd, "1"); /* by ID */
    reads_as(vd, at_a, DISK, "after applying a again, by ID");
    apply(vd, "b");
    reads_as(vd, at_b, DISK, "after applying b");
    expect_names(vd, "a,b");
    TST_RC(rt_vd_close(vd), RT_OK);

    vd = open_image(path, 0);
    reads_as(vd, at_b, DISK, "b, reopened");
    TST_RC(rt_vd_snapshot_delete(vd, "a", NULL), RT_OK);
    expect_names(vd, "b");
    reads_as(vd, at_b, DISK, "after deleting a");
    check_clean(vd, path, false, "after deleting a");
    TST_RC(rt_vd_snapshot_delete(vd, "2", NULL), RT_OK); /* no name "2": the ID */
    expect_names(vd, "");
    reads_as(vd, at_b, DISK, "after deleting b");
    check_clean(vd, path, false, "after deleting both");
    /* The disk owns its clusters again: a write in place allocates nothing. */
    rt_vd_info_t info;
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    uint64_t allocated = info.blocks_allocated;
    fill(vd, 0, 4096, 7);
    TST_RC(rt_vd_flush(vd), RT_OK);
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    CU_ASSERT_EQUAL(info.blocks_allocated, allocated);
    check_clean(vd, path, false, "after a write with no snapshots left");
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(path);
}

static void test_round_trip_every_shape(void)
{
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        round_trip(&shapes[i]);
}

/* Apply takes the snapshot's size; delete gives back what only the snapshot held. */
static void test_size_and_space(void)
{
    char path[600];
    tst_path(path, sizeof path, "size.qcow2");
    create_image(path, &shapes[0], 1 * MIB, NULL);
    memset(model, 0, sizeof model);
    rt_vd_t vd = open_image(path, 0);
    fill(vd, 0, 1 * MIB, 1);
    take(vd, "small", NULL);
    memcpy(at_a, model, 1 * MIB);
    TST_RC(rt_vd_resize(vd, 3 * MIB, 0, NULL), RT_OK);
    fill(vd, 2 * MIB, 1 * MIB, 2);
    take(vd, "large", NULL);
    memcpy(at_b, model, 3 * MIB);
    apply(vd, "small");
    CU_ASSERT_EQUAL(size_of(vd), 1 * MIB);
    reads_as(vd, at_a, 1 * MIB, "the small snapshot");
    apply(vd, "large");
    CU_ASSERT_EQUAL(size_of(vd), 3 * MIB);
    reads_as(vd, at_b, 3 * MIB, "the large snapshot");
    check_clean(vd, path, false, "after applying both sizes");

    /* Overwrite everything, then drop the snapshots: their clusters are freed. */
    fill(vd, 0, 3 * MIB, 3);
    TST_RC(rt_vd_flush(vd), RT_OK);
    rt_vd_info_t info;
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    uint64_t held = info.file_allocated;
    TST_RC(rt_vd_snapshot_delete(vd, "large", NULL), RT_OK);
    TST_RC(rt_vd_snapshot_delete(vd, "small", NULL), RT_OK);
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    if (info.file_allocated + 2 * MIB > held)
        fprintf(stderr, "\n  %llu bytes allocated before the deletes, %llu after",
                (unsigned long long)held, (unsigned long long)info.file_allocated);
    CU_ASSERT(info.file_allocated + 2 * MIB <= held);
    reads_as(vd, model, 3 * MIB, "after deleting both");
    check_clean(vd, path, false, "after freeing the snapshots' space");
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(path);
}

static void test_ids_and_names(void)
{
    char path[600];
    tst_path(path, sizeof path, "names.qcow2");
    create_image(path, &shapes[0], DISK, NULL);
    memset(model, 0, sizeof model);
    rt_vd_t vd = open_image(path, 0);
    rt_vd_snapshot_t made;
    fill(vd, 0, 4096, 1);
    take(vd, "x", &made); /* ID 1 */
    memcpy(at_a, model, DISK);
    fill(vd, 0, 4096, 2);
    take(vd, "1", &made); /* ID 2, named like ID 1 */
    CU_ASSERT_STRING_EQUAL(made.id, "2");
    memcpy(at_b, model, DISK);
    fill(vd, 0, 4096, 3);
    take(vd, "x", &made); /* a second "x": allowed, as qemu-img allows it */
    CU_ASSERT_STRING_EQUAL(made.id, "3");
    expect_names(vd, "x,1,x");

    apply(vd, "1"); /* IDs first: the snapshot with ID 1, named x */
    reads_as(vd, at_a, 4096, "apply 1");
    TST_RC(rt_vd_snapshot_delete(vd, "1", NULL), RT_OK); /* names first: the one named 1 */
    expect_names(vd, "x,x");
    TST_RC(rt_vd_snapshot_delete(vd, "x", NULL), RT_OK); /* the first of that name */
    rt_vd_snapshot_t sn[4];
    uint32_t count = 0;
    TST_RC(rt_vd_snapshot_list(vd, sn, 4, &count, NULL), RT_OK);
    CU_ASSERT_EQUAL_FATAL(count, 1);
    CU_ASSERT_STRING_EQUAL(sn[0].id, "3");
    take(vd, "y", &made);
    CU_ASSERT_STRING_EQUAL(made.id, "4"); /* one past the largest, never reused */

    /* A small array: the count still tells how many there are. */
    count = 0;
    TST_RC(rt_vd_snapshot_list(vd, sn, 1, &count, NULL), RT_OK);
    CU_ASSERT_EQUAL(count, 2);
    TST_RC(rt_vd_snapshot_list(vd, NULL, 0, &count, NULL), RT_OK);
    CU_ASSERT_EQUAL(count, 2);
    check_clean(vd, path, false, "after the name games");
    TST_RC(rt_vd_close(vd), RT_OK);

    /* qemu-img sees the same IDs and names. */
    if (access(QEMU_IMG, X_OK) == 0) {
        char cmd[1400], log[600];
        tst_path(log, sizeof log, "names.log");
        snprintf(cmd, sizeof cmd, "%s snapshot -U -l '%s' >'%s' 2>&1", QEMU_IMG, path, log);
        CU_ASSERT_EQUAL(system(cmd), 0);
        uint64_t n = 0;
        char *text = (char *)slurp(log, &n);
        CU_ASSERT(strstr(text, "\n3         x ") != NULL);
        CU_ASSERT(strstr(text, "\n4         y ") != NULL);
        free(text);
        unlink(log);
    }
    unlink(path);
}

/* The L2 entry of guest offset 0 and the refcount entry of the cluster it names: the
 * refcount is set to @a value by hand (a corrupt image when it is too low). */
static void set_refcount_of_first_cluster(const char *path, uint64_t value)
{
    uint32_t bits = (uint32_t)read_be(path, H_CLUSTER_BITS, 4);
    uint64_t l1 = read_be(path, H_L1_OFFSET, 8);
    uint64_t l2 = read_be(path, l1, 8) & OFFSET_MASK;
    uint64_t data = read_be(path, l2, 8) & OFFSET_MASK;
    uint64_t block = read_be(path, read_be(path, H_RT_OFFSET, 8), 8);
    CU_ASSERT_FATAL(l2 != 0 && data != 0 && block != 0);
    patch_be(path, block + 2 * (data >> bits), value, 2); /* 16-bit refcounts */
}

static void test_refusals(void)
{
    char path[600], raw[600];
    tst_path(path, sizeof path, "refuse.qcow2");
    tst_path(raw, sizeof raw, "refuse.raw");
    rt_vd_error_t err;
    uint32_t count = 7;
    TST_RC(rt_vd_snapshot_list(RT_VD_NIL, NULL, 0, &count, NULL), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_vd_snapshot_create(RT_VD_NIL, "a", NULL, NULL), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_vd_snapshot_apply(RT_VD_NIL, "a", NULL), RT_ERR_INVALID_HANDLE);
    TST_RC(rt_vd_snapshot_delete(RT_VD_NIL, "a", NULL), RT_ERR_INVALID_HANDLE);

    /* raw has none. */
    unlink(raw);
    rt_vd_create_opts_t ropts = {.size = MIB};
    TST_RC_FATAL(rt_vd_create(raw, "raw", &ropts, NULL), RT_OK);
    rt_vd_t vd = RT_VD_NIL;
    TST_RC_FATAL(rt_vd_open(&vd, raw, "raw", 0, NULL), RT_OK);
    TST_RC(rt_vd_snapshot_list(vd, NULL, 0, &count, &err), RT_ERR_NOT_SUPPORTED);
    CU_ASSERT(mentions(err.msg, "raw"));
    TST_RC(rt_vd_snapshot_create(vd, "a", NULL, &err), RT_ERR_NOT_SUPPORTED);
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(raw);

    create_image(path, &shapes[0], DISK, NULL);
    memset(model, 0, sizeof model);
    vd = open_image(path, 0);
    fill(vd, 0, 64 * KIB, 1);
    TST_RC(rt_vd_snapshot_list(vd, NULL, 0, NULL, NULL), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_snapshot_list(vd, NULL, 1, &count, NULL), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_snapshot_create(vd, NULL, NULL, NULL), RT_ERR_INVALID_POINTER);
    TST_RC(rt_vd_snapshot_create(vd, "", NULL, &err), RT_ERR_INVALID_PARAMETER);
    char long_name[300];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    TST_RC(rt_vd_snapshot_create(vd, long_name, NULL, &err), RT_ERR_INVALID_PARAMETER);
    long_name[RT_VD_SNAPSHOT_NAME_MAX] = '\0';
    take(vd, long_name, NULL); /* the longest allowed */
    TST_RC(rt_vd_snapshot_apply(vd, "nope", &err), RT_ERR_FILE_NOT_FOUND);
    CU_ASSERT(mentions(err.msg, "nope"));
    TST_RC(rt_vd_snapshot_delete(vd, "nope", &err), RT_ERR_FILE_NOT_FOUND);

    /* Busy: a queued request outstanding. */
    struct tst_busy busy;
    tst_busy_begin(&busy, vd);
    TST_RC(rt_vd_snapshot_create(vd, "busy", NULL, &err), RT_ERR_BUSY);
    TST_RC(rt_vd_snapshot_list(vd, NULL, 0, &count, &err), RT_ERR_BUSY);
    tst_busy_end(&busy);
    TST_RC(rt_vd_close(vd), RT_OK);

    /* Read-only: listed, not changed. */
    vd = open_image(path, RT_VD_OPEN_READ_ONLY);
    TST_RC(rt_vd_snapshot_list(vd, NULL, 0, &count, &err), RT_OK);
    CU_ASSERT_EQUAL(count, 1);
    TST_RC(rt_vd_snapshot_create(vd, "ro", NULL, &err), RT_ERR_VD_READ_ONLY);
    TST_RC(rt_vd_snapshot_apply(vd, "1", &err), RT_ERR_VD_READ_ONLY);
    TST_RC(rt_vd_snapshot_delete(vd, "1", &err), RT_ERR_VD_READ_ONLY);
    TST_RC(rt_vd_close(vd), RT_OK);

    /* Wrong refcounts: refused before anything is written. */
    vd = open_image(path, 0);
    TST_RC(rt_vd_snapshot_delete(vd, "1", NULL), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);
    set_refcount_of_first_cluster(path, 0);
    uint64_t size_before = 0, size_after = 0;
    uint8_t *before = slurp(path, &size_before);
    vd = open_image(path, 0);
    TST_RC(rt_vd_snapshot_create(vd, "bad", NULL, &err), RT_ERR_VD_CORRUPT);
    CU_ASSERT(mentions(err.msg, "inconsistent"));
    TST_RC(rt_vd_close(vd), RT_OK);
    uint8_t *after = slurp(path, &size_after);
    CU_ASSERT(size_before == size_after && memcmp(before, after, (size_t)size_before) == 0);
    free(before);
    free(after);

    /* 1-bit refcounts cannot count a second reference: refused, undone in memory. */
    static const char *const narrow[] = {"refcount_bits=1", NULL};
    create_image(path, &shapes[0], DISK, narrow);
    vd = open_image(path, 0);
    fill(vd, 0, 64 * KIB, 2);
    TST_RC(rt_vd_snapshot_create(vd, "wide", NULL, &err), RT_ERR_OUT_OF_RANGE);
    CU_ASSERT(mentions(err.msg, "1-bit"));
    TST_RC(rt_vd_snapshot_list(vd, NULL, 0, &count, NULL), RT_OK);
    CU_ASSERT_EQUAL(count, 0);
    fill(vd, 4096, 4096, 3); /* still a working disk */
    reads_as(vd, model, DISK, "after the refused snapshot");
    TST_RC(rt_vd_close(vd), RT_OK);
    vd = open_image(path, RT_VD_OPEN_READ_ONLY);
    check_clean(vd, path, false, "after the refused snapshot");
    reads_as(vd, model, DISK, "after the refused snapshot, reopened");
    TST_RC(rt_vd_close(vd), RT_OK);
    unlink(path);
}

/* ---------------------------------------------------------------------------------- */
/* Crash points. */

static struct rt__posix_sys real;
static atomic_long writes_left; /* writes that still reach the file */
static atomic_bool crashed;

/* The reordering model: the writes since the last fsync, with what they replaced, so
 * that a crash can undo all but the newest (the disk wrote that one first). */
static bool reorder;
static struct unsynced {
    int fd;
    off_t off;
    size_t len;
    uint8_t *old, *new;
} journal[256];
static int journal_len;

static void journal_clear(void)
{
    for (int i = 0; i < journal_len; i++) {
        free(journal[i].old);
        free(journal[i].new);
    }
    journal_len = 0;
}

static void journal_note(int fd, const void *buf, size_t len, off_t off)
{
    if (!reorder || journal_len == (int)(sizeof journal / sizeof journal[0]))
        return;
    struct unsynced *u = &journal[journal_len++];
    *u = (struct unsynced){fd, off, len, calloc(1, len), malloc(len)};
    CU_ASSERT_FATAL(u->old != NULL && u->new != NULL);
    if (real.pread(fd, u->old, len, off) < 0)
        memset(u->old, 0, len);
    memcpy(u->new, buf, len);
}

/* The crash: of the unsynced writes only the newest reached the disk. */
static void journal_crash(void)
{
    if (!reorder || journal_len < 2)
        return;
    for (int i = journal_len - 2; i >= 0; i--)
        (void)!real.pwrite(journal[i].fd, journal[i].old, journal[i].len, journal[i].off);
    struct unsynced *last = &journal[journal_len - 1];
    (void)!real.pwrite(last->fd, last->new, last->len, last->off);
}

static bool lost(void)
{
    if (atomic_load(&crashed))
        return true;
    if (atomic_fetch_sub(&writes_left, 1) <= 0) {
        atomic_store(&crashed, true);
        journal_crash();
        return true;
    }
    return false;
}

static ssize_t crash_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    if (lost()) {
        errno = EIO;
        return -1;
    }
    journal_note(fd, buf, len, off);
    return real.pwrite(fd, buf, len, off);
}

static ssize_t crash_pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
    if (lost()) {
        errno = EIO;
        return -1;
    }
    return real.pwritev(fd, iov, n, off);
}

static int crash_fsync(int fd)
{
    if (atomic_load(&crashed)) {
        errno = EIO;
        return -1;
    }
    journal_clear();
    return real.fsync(fd);
}

static int crash_fdatasync(int fd)
{
    if (atomic_load(&crashed)) {
        errno = EIO;
        return -1;
    }
    journal_clear();
    return real.fdatasync(fd);
}

static int crash_ftruncate(int fd, off_t size)
{
    if (atomic_load(&crashed)) {
        errno = EIO;
        return -1;
    }
    return real.ftruncate(fd, size);
}

static void crash_after(long writes, bool reordered)
{
    real = rt__posix_sys;
    reorder = reordered;
    journal_clear();
    atomic_store(&writes_left, writes);
    atomic_store(&crashed, false);
    rt__posix_sys.pwrite = crash_pwrite;
    rt__posix_sys.pwritev = crash_pwritev;
    rt__posix_sys.fsync = crash_fsync;
    rt__posix_sys.fdatasync = crash_fdatasync;
    rt__posix_sys.ftruncate = crash_ftruncate;
}

enum op { OP_CREATE, OP_APPLY, OP_DELETE, OP_RESIZE };
static const char *const op_names[] = {"create", "apply", "delete", "resize"};

/* OP_RESIZE: a write that copies an L2 table s1 shares (the copy exists only in
 * memory), then a grow that needs a larger L1 table, which copies the L1 that names it;
 * at_c is the disk with that write. */
static uint8_t at_c[DISK];
#define RESIZE_WRITE_AT (200 * KIB)
#define RESIZE_TO       (64 * MIB)

/* The template: "s1" holds at_a, the disk at_b. */
static void make_template(const char *path, const struct shape *sh)
{
    create_image(path, sh, DISK, NULL);
    memset(model, 0, sizeof model);
    rt_vd_t vd = open_image(path, 0);
    fill(vd, 0, 256 * KIB, 1);
    fill(vd, 2 * MIB, 64 * KIB, 2);
    take(vd, "s1", NULL);
    memcpy(at_a, model, DISK);
    fill(vd, 64 * KIB, 64 * KIB, 3);
    fill(vd, 3 * MIB, 4096, 4);
    zero(vd, 2 * MIB, 64 * KIB, true);
    memcpy(at_b, model, DISK);
    TST_RC(rt_vd_close(vd), RT_OK);
}

/* Runs @a op on a copy of @a template with the writes from the @a n-th on lost (n < 0:
 * none), and with @a reordered of the unsynced ones before it only the newest kept;
 * returns how many writes it made, and its status in *@a status. */
static long run_op(enum op op, const char *template, const char *path, long n, bool reordered,
                   int *status)
{
    copy_file(template, path);
    rt_vd_t vd = open_image(path, 0);
    crash_after(n < 0 ? (long)1 << 40 : n, reordered);
    long start = atomic_load(&writes_left);
    if (op == OP_RESIZE) {
        rt__posix_sys_reset();
        memcpy(model, at_b, DISK);
        fill(vd, RESIZE_WRITE_AT, 4096, 9);
        memcpy(at_c, model, DISK);
        crash_after(n < 0 ? (long)1 << 40 : n, reordered);
        start = atomic_load(&writes_left);
    }
    switch (op) {
    case OP_RESIZE: *status = rt_vd_resize(vd, RESIZE_TO, 0, NULL); break;
    case OP_CREATE: *status = rt_vd_snapshot_create(vd, "s2", NULL, NULL); break;
    case OP_APPLY: *status = rt_vd_snapshot_apply(vd, "s1", NULL); break;
    default: *status = rt_vd_snapshot_delete(vd, "s1", NULL); break;
    }
    long made = start - atomic_load(&writes_left);
    (void)rt_vd_close(vd); /* fails after a crash: what it would write is lost */
    rt__posix_sys_reset();
    journal_clear();
    return made;
}

/* After a crash at some point of @a op: consistent, and the state before or after. */
static void verify_crashed(enum op op, const char *path, long n)
{
    rt_vd_t vd = open_image(path, 0);
    char what[96];
    snprintf(what, sizeof what, "%s, writes from %ld lost", op_names[op], n);
    check_clean(vd, path, true, what);
    char got[64];
    names(vd, got, sizeof got);
    bool after;
    switch (op) {
    case OP_CREATE:
        after = strcmp(got, "s1,s2") == 0;
        CU_ASSERT(after || strcmp(got, "s1") == 0);
        reads_as(vd, at_b, DISK, what);
        if (after) {
            apply(vd, "s2");
            reads_as(vd, at_b, DISK, "the snapshot a crashed create made");
        }
        break;
    case OP_APPLY:
        CU_ASSERT_STRING_EQUAL(got, "s1");
        TST_RC(rt_vd_read(vd, 0, back, DISK), RT_OK);
        after = memcmp(back, at_a, DISK) == 0;
        if (!after && memcmp(back, at_b, DISK) != 0) {
            fprintf(stderr, "\n  %s: the disk is neither before nor after", what);
            CU_FAIL("a crashed apply left a mix");
        }
        break;
    case OP_DELETE:
        after = strcmp(got, "") == 0;
        CU_ASSERT(after || strcmp(got, "s1") == 0);
        reads_as(vd, at_b, DISK, what);
        break;
    default: {
        CU_ASSERT_STRING_EQUAL(got, "s1");
        uint64_t size = size_of(vd);
        after = size == RESIZE_TO;
        CU_ASSERT(after || size == DISK);
        TST_RC(rt_vd_read(vd, 0, back, DISK), RT_OK);
        /* The write before the resize was not flushed: it may be lost, but only whole. */
        if (memcmp(back, at_c, DISK) != 0 && memcmp(back, at_b, DISK) != 0) {
            fprintf(stderr, "\n  %s: the disk is neither with nor without the write", what);
            CU_FAIL("a crashed resize lost data");
        }
        break;
    }
    }
    /* Whatever it is, the snapshot that should be there still holds its data. */
    if (!(op == OP_DELETE && after)) {
        apply(vd, "s1");
        reads_as(vd, at_a, DISK, "s1 after the crash");
    }
    check_clean(vd, path, true, what);
    TST_RC(rt_vd_close(vd), RT_OK);
}

static void crash_points(const struct shape *sh)
{
    char template[600], path[600];
    tst_path(template, sizeof template, "crash-template.qcow2");
    tst_path(path, sizeof path, "crash.qcow2");
    make_template(template, sh);
    for (int op = OP_CREATE; op <= OP_RESIZE; op++) {
        int status;
        long writes = run_op(op, template, path, -1, false, &status);
        TST_RC(status, RT_OK);
        CU_ASSERT(writes >= 3);
        verify_crashed(op, path, writes); /* nothing lost: the state after */
        for (long n = 0; n < 2 * writes; n++) {
            run_op(op, template, path, n / 2, n % 2 == 1, &status);
            if (status == RT_OK)
                fprintf(stderr, "\n  %s: write %ld failed, yet the call succeeded", op_names[op],
                        n / 2);
            CU_ASSERT(status != RT_OK); /* every lost write is reported */
            verify_crashed(op, path, n / 2);
        }
        printf(" [%s %s: %ld crash points] ", sh->name, op_names[op], writes);
    }
    unlink(template);
    unlink(path);
}

static void test_crash_points(void)
{
    crash_points(&shapes[0]);
    crash_points(&shapes[1]);
}

int main(void)
{
    CU_pSuite suite = tst_suite("snapshot");
    TST_ADD(suite, test_refusals);
    TST_ADD(suite, test_round_trip_every_shape);
    TST_ADD(suite, test_size_and_space);
    TST_ADD(suite, test_ids_and_names);
    TST_ADD(suite, test_crash_points);
    return tst_run();
}
