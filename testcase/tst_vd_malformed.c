/*
 * Malformed VDI images: every header field, block-map entry and file length that can
 * be wrong, one at a time, on copies of valid images made at test time.
 *
 * Each mutation must be refused by rt_vd_open() with the documented status
 * (RT_ERR_VD_CORRUPT for a broken image, RT_ERR_NOT_SUPPORTED for a valid one using a
 * feature this library lacks) and a message that names the problem (asserted on a
 * keyword), whether opened read-only, writable, or read-only by probing; a refused
 * writable open must leave the file untouched.  The unmutated copies must open, so the
 * suite cannot pass by refusing everything.
 *
 * rt_vd_check() is held to its contract on the two kinds of leak a crash or a tool can
 * leave: a header count above the blocks the map uses, and a hole (an unreferenced
 * data block below used ones).  The check reports them as leaks, not corruption; the
 * repair reclaims them (moving blocks to fill the hole) without changing a byte the
 * guest sees; a second check is clean, and so is qemu-img's when it is installed.
 *
 * The field offsets below are the VDI 1.1 format's (VirtualBox's VDIHEADER1), written
 * here independently of src/vd/vdi.c.
 */
#include <ctype.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>

#include <rt/vd.h>

#include "tst_common.h"
#include "tst_files.h"
#include "tst_qemu_img.h"

enum {
    OFF_SIGNATURE = 0x040,
    OFF_VERSION = 0x044,
    OFF_HEADER_SIZE = 0x048,
    OFF_TYPE = 0x04c,
    OFF_BMAP = 0x154,
    OFF_DATA = 0x158,
    OFF_SECTOR_SIZE = 0x168,
    OFF_DISK_SIZE = 0x170,
    OFF_BLOCK_SIZE = 0x178,
    OFF_BLOCK_EXTRA = 0x17c,
    OFF_BLOCKS = 0x180,
    OFF_ALLOCATED = 0x184,
    OFF_UUID_LINK = 0x1a8,
    OFF_UUID_PARENT = 0x1b8,
};

#define MIB         (1024u * 1024u)
#define DYN_SIZE    (8u * MIB)
#define STATIC_SIZE (4u * MIB)
#define BLOCK       MIB
#define ENTRY_FREE  0xffffffffu
#define ENTRY_ZERO  0xfffffffeu

/* The dynamic image's guest writes: these blocks, in this order, so they take data
 * blocks 0, 1, 2.  Each write covers part of its block, at an offset inside it. */
static const uint32_t dyn_blocks[] = {1, 4, 6};
#define DYN_WRITTEN   3u
#define DYN_WRITE_OFF 4096u
#define DYN_WRITE_LEN (64u * 1024u)

static char dyn_path[512], static_path[512];
/* Where the images' block maps and data areas start, read back from their headers. */
static uint32_t dyn_bmap, dyn_data, static_bmap, static_data;
static uint64_t dyn_file_size, static_file_size;

/* ---------------------------------------------------------------------------------- */
/* Files. */

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
    put_le32(p, (uint32_t)v);
    put_le32(p + 4, (uint32_t)(v >> 32));
}

static void patch32(const char *path, uint64_t off, uint32_t value)
{
    uint8_t le[4];
    put_le32(le, value);
    patch(path, off, le, sizeof le);
}

static void patch64(const char *path, uint64_t off, uint64_t value)
{
    uint8_t le[8];
    put_le64(le, value);
    patch(path, off, le, sizeof le);
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0)
        die("cannot stat", path);
    return (uint64_t)st.st_size;
}

static uint32_t read32(const char *path, uint64_t off)
{
    uint8_t le[4];
    int fd = open(path, O_RDONLY);
    if (fd < 0 || pread(fd, le, sizeof le, (off_t)off) != (ssize_t)sizeof le)
        die("cannot read", path);
    close(fd);
    return get_le32(le);
}

/* ---------------------------------------------------------------------------------- */
/* The valid images. */

/* The byte the dynamic image's write @a i stores. */
static uint8_t dyn_byte(unsigned i)
{
    return (uint8_t)(0x51 + 0x22 * i);
}

static void create_images(void)
{
    rt_vd_error_t err;
    rt_vd_create_opts_t dyn = {.size = DYN_SIZE, .block_size = BLOCK};
    rt_vd_create_opts_t stat_opts = {
        .size = STATIC_SIZE, .flags = RT_VD_CREATE_STATIC, .block_size = BLOCK};
    rt_vd_t vd = RT_VD_NIL;
    int rc;

    tst_path(dyn_path, sizeof dyn_path, "dynamic.vdi");
    tst_path(static_path, sizeof static_path, "static.vdi");
    if ((rc = rt_vd_create(dyn_path, "vdi", &dyn, &err)) != RT_OK ||
        (rc = rt_vd_create(static_path, "vdi", &stat_opts, &err)) != RT_OK) {
        fprintf(stderr, "cannot create the test images: %s: %s\n", rt_status_name(rc), err.msg);
        exit(1);
    }
    if ((rc = rt_vd_open(&vd, dyn_path, "vdi", 0, &err)) != RT_OK) {
        fprintf(stderr, "cannot open %s: %s: %s\n", dyn_path, rt_status_name(rc), err.msg);
        exit(1);
    }
    uint8_t *buf = malloc(DYN_WRITE_LEN);
    for (unsigned i = 0; i < DYN_WRITTEN && buf != NULL; i++) {
        memset(buf, dyn_byte(i), DYN_WRITE_LEN);
        rc = rt_vd_write(vd, (uint64_t)dyn_blocks[i] * BLOCK + DYN_WRITE_OFF, buf, DYN_WRITE_LEN);
        if (rc != RT_OK) {
            fprintf(stderr, "cannot write %s: %s\n", dyn_path, rt_status_name(rc));
            exit(1);
        }
    }
    free(buf);
    if ((rc = rt_vd_close(vd)) != RT_OK) {
        fprintf(stderr, "cannot close %s: %s\n", dyn_path, rt_status_name(rc));
        exit(1);
    }
    dyn_bmap = read32(dyn_path, OFF_BMAP);
    dyn_data = read32(dyn_path, OFF_DATA);
    static_bmap = read32(static_path, OFF_BMAP);
    static_data = read32(static_path, OFF_DATA);
    dyn_file_size = file_size(dyn_path);
    static_file_size = file_size(static_path);
    /* What the mutations below assume of the layout. */
    if (read32(dyn_path, OFF_ALLOCATED) != DYN_WRITTEN ||
        dyn_file_size != dyn_data + (uint64_t)DYN_WRITTEN * BLOCK || dyn_bmap % 512 != 0 ||
        dyn_data < dyn_bmap + 4 * (DYN_SIZE / BLOCK)) {
        fprintf(stderr, "%s: unexpected layout (bmap 0x%x, data 0x%x, %llu bytes)\n", dyn_path,
                dyn_bmap, dyn_data, (unsigned long long)dyn_file_size);
        exit(1);
    }
}

/* The guest contents of the dynamic image, as written. */
static uint8_t *dyn_expected(void)
{
    uint8_t *want = calloc(1, DYN_SIZE);
    CU_ASSERT_PTR_NOT_NULL_FATAL(want);
    for (unsigned i = 0; i < DYN_WRITTEN; i++)
        memset(want + (uint64_t)dyn_blocks[i] * BLOCK + DYN_WRITE_OFF, dyn_byte(i), DYN_WRITE_LEN);
    return want;
}

/* Reads the whole guest disk of an open image into a malloc'ed buffer. */
static uint8_t *read_all(rt_vd_t vd, uint64_t size)
{
    uint8_t *buf = malloc((size_t)size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    TST_RC(rt_vd_read(vd, 0, buf, (size_t)size), RT_OK);
    return buf;
}

static int qemu_img_clean(const char *path)
{
    return qemu_img_clean_as(path, "vdi");
}

static void note_no_qemu_img(const char *what)
{
    printf("\n  note: %s not installed, %s not cross-checked with qemu-img check ", QEMU_IMG, what);
}

static void test_valid_images_open(void)
{
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    rt_vd_info_t info;
    rt_vd_check_result_t res;
    char copy[512];

    /* A copy made the way every mutation makes its own opens too. */
    tst_path(copy, sizeof copy, "valid-copy.vdi");
    copy_file(dyn_path, copy);
    const char *formats[] = {"vdi", NULL};
    for (int f = 0; f < 2; f++) {
        TST_RC_FATAL(rt_vd_open(&vd, copy, formats[f], RT_VD_OPEN_READ_ONLY, &err), RT_OK);
        TST_RC(rt_vd_get_info(vd, &info), RT_OK);
        CU_ASSERT_STRING_EQUAL(info.format, "vdi");
        CU_ASSERT_STRING_EQUAL(info.variant, "dynamic");
        CU_ASSERT_EQUAL(info.virtual_size, DYN_SIZE);
        CU_ASSERT_EQUAL(info.block_size, BLOCK);
        CU_ASSERT_EQUAL(info.blocks_allocated, DYN_WRITTEN);
        CU_ASSERT_EQUAL(info.blocks_total, DYN_SIZE / BLOCK);
        uint8_t *got = read_all(vd, DYN_SIZE), *want = dyn_expected();
        CU_ASSERT(memcmp(got, want, DYN_SIZE) == 0);
        free(got);
        free(want);
        TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
        CU_ASSERT_EQUAL(res.corruptions, 0);
        CU_ASSERT_EQUAL(res.leaks, 0);
        CU_ASSERT_STRING_EQUAL(res.first_problem, "");
        TST_RC(rt_vd_close(vd), RT_OK);
    }
    TST_RC_FATAL(rt_vd_open(&vd, copy, "vdi", 0, &err), RT_OK);
    TST_RC(rt_vd_close(vd), RT_OK);

    tst_path(copy, sizeof copy, "valid-static.vdi");
    copy_file(static_path, copy);
    TST_RC_FATAL(rt_vd_open(&vd, copy, NULL, RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    TST_RC(rt_vd_get_info(vd, &info), RT_OK);
    CU_ASSERT_STRING_EQUAL(info.format, "vdi");
    CU_ASSERT_STRING_EQUAL(info.variant, "static");
    CU_ASSERT_EQUAL(info.blocks_allocated, STATIC_SIZE / BLOCK);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
    TST_RC(rt_vd_close(vd), RT_OK);

    int clean = qemu_img_clean(dyn_path);
    if (clean < 0)
        note_no_qemu_img("the valid images are");
    else
        CU_ASSERT_EQUAL(clean + qemu_img_clean(static_path), 2);
}

/* ---------------------------------------------------------------------------------- */
/* Mutations. */

enum which { DYN, STATIC };
/* How a mutation's value is applied. */
enum op {
    SET32,      /* little-endian u32 at off */
    SET64,      /* little-endian u64 at off */
    UUID,       /* 16 bytes of value's low byte at off */
    ENTRY,      /* block map entry number off := value */
    TRUNC,      /* the file's length := value */
    TRUNC_DATA, /* the file's length := data offset + value */
    TRUNC_BMAP, /* the file's length := block map offset + value */
};
/* What probing (format NULL) does with it. */
enum probe { PROBE_SAME, PROBE_RAW };

struct mutation {
    const char *name;
    enum which image;
    enum op op;
    uint64_t off, value;
    /* A second field set too, 0/0 for none (always SET32). */
    uint64_t off2, value2;
    int want;
    const char *keyword;
    enum probe probe;
};

static void apply(const char *path, enum which image, enum op op, uint64_t off, uint64_t value)
{
    uint32_t bmap = image == DYN ? dyn_bmap : static_bmap;
    uint32_t data = image == DYN ? dyn_data : static_data;
    uint8_t uuid[16];
    switch (op) {
    case SET32: patch32(path, off, (uint32_t)value); break;
    case SET64: patch64(path, off, value); break;
    case UUID:
        memset(uuid, (int)(value & 0xff), sizeof uuid);
        patch(path, off, uuid, sizeof uuid);
        break;
    case ENTRY: patch32(path, bmap + 4 * off, (uint32_t)value); break;
    case TRUNC: resize(path, value); break;
    case TRUNC_DATA: resize(path, data + value); break;
    case TRUNC_BMAP: resize(path, bmap + value); break;
    }
}

/* One open attempt against the mutation's expectation. */
static void expect_refused(const struct mutation *m, const char *path, const char *format,
                           uint32_t flags)
{
    rt_vd_t vd = (rt_vd_t)(uintptr_t)1; /* must be reset to NIL */
    rt_vd_error_t err;
    memset(&err, 0, sizeof err);
    int rc = rt_vd_open(&vd, path, format, flags, &err);
    const char *how = format == NULL                   ? "probing"
                      : (flags & RT_VD_OPEN_READ_ONLY) ? "read-only"
                                                       : "writable";
    if (rc != m->want || (rc != RT_OK && !mentions(err.msg, m->keyword)))
        fprintf(stderr, "\n  %s (%s open): %s \"%s\", expected %s naming \"%s\"", m->name, how,
                rt_status_name(rc), err.msg, rt_status_name(m->want), m->keyword);
    CU_ASSERT_EQUAL(rc, m->want);
    if (rc == RT_OK) {
        CU_ASSERT_PTR_NOT_NULL(vd);
        rt_vd_close(vd);
        return;
    }
    CU_ASSERT_PTR_NULL(vd);
    CU_ASSERT(mentions(err.msg, m->keyword));
}

static void run_mutation(const struct mutation *m)
{
    char path[512];
    char name[80];
    snprintf(name, sizeof name, "mutant-%s.vdi", m->name);
    for (char *c = name; *c != '\0'; c++)
        if (*c == ' ' || *c == '/')
            *c = '-';
    tst_path(path, sizeof path, name);
    copy_file(m->image == DYN ? dyn_path : static_path, path);
    apply(path, m->image, m->op, m->off, m->value);
    if (m->off2 != 0)
        apply(path, m->image, SET32, m->off2, m->value2);

    uint64_t before_size = 0, after_size = 0;
    uint8_t *before = slurp(path, &before_size);

    expect_refused(m, path, "vdi", RT_VD_OPEN_READ_ONLY);
    expect_refused(m, path, "vdi", 0);
    if (m->probe == PROBE_SAME) {
        expect_refused(m, path, NULL, RT_VD_OPEN_READ_ONLY);
    } else {
        /* Without a VDI signature (or any header), the bytes are a raw image. */
        rt_vd_t vd = RT_VD_NIL;
        rt_vd_error_t err;
        rt_vd_info_t info;
        int rc = rt_vd_open(&vd, path, NULL, RT_VD_OPEN_READ_ONLY, &err);
        if (rc != RT_OK)
            fprintf(stderr, "\n  %s (probing): %s \"%s\", expected a raw image", m->name,
                    rt_status_name(rc), err.msg);
        CU_ASSERT_EQUAL(rc, RT_OK);
        if (rc == RT_OK) {
            TST_RC(rt_vd_get_info(vd, &info), RT_OK);
            CU_ASSERT_STRING_EQUAL(info.format, "raw");
            CU_ASSERT_EQUAL(info.virtual_size, before_size);
            rt_vd_close(vd);
        }
    }

    /* Refusing an image, even a writable open of it, changes nothing in the file. */
    uint8_t *after = slurp(path, &after_size);
    CU_ASSERT_EQUAL(after_size, before_size);
    if (after_size == before_size && memcmp(before, after, (size_t)before_size) != 0) {
        fprintf(stderr, "\n  %s: the refused open changed the file", m->name);
        CU_FAIL("refused open changed the file");
    }
    free(before);
    free(after);
    if (m->want == RT_OK || m->off2 != 0 || m->op == TRUNC || m->op == TRUNC_DATA ||
        m->op == TRUNC_BMAP || m->probe == PROBE_RAW)
        return;
    /* Undo the mutation and the same file opens again: the refusal was for that field. */
    uint64_t orig_size = 0;
    uint8_t *orig = slurp(m->image == DYN ? dyn_path : static_path, &orig_size);
    patch(path, 0, orig, 512);
    patch(path, m->image == DYN ? dyn_bmap : static_bmap,
          orig + (m->image == DYN ? dyn_bmap : static_bmap), 4 * 8);
    free(orig);
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    int rc = rt_vd_open(&vd, path, "vdi", RT_VD_OPEN_READ_ONLY, &err);
    if (rc != RT_OK)
        fprintf(stderr, "\n  %s undone: %s \"%s\"", m->name, rt_status_name(rc), err.msg);
    CU_ASSERT_EQUAL(rc, RT_OK);
    rt_vd_close(vd);
}

static void run_table(const struct mutation *table, size_t n)
{
    for (size_t i = 0; i < n; i++)
        run_mutation(&table[i]);
}

#define RUN(table) run_table((table), sizeof(table) / sizeof((table)[0]))

#define CORRUPT     RT_ERR_VD_CORRUPT
#define UNSUPPORTED RT_ERR_NOT_SUPPORTED

static void test_header_fields(void)
{
    static const struct mutation table[] = {
        {"signature", DYN, SET32, OFF_SIGNATURE, 0xbeda1070, 0, 0, CORRUPT, "signature", PROBE_RAW},
        {"signature zero", DYN, SET32, OFF_SIGNATURE, 0, 0, 0, CORRUPT, "signature", PROBE_RAW},
        {"version 1.0", DYN, SET32, OFF_VERSION, 0x00010000, 0, 0, UNSUPPORTED, "version",
         PROBE_SAME},
        {"version 2.1", DYN, SET32, OFF_VERSION, 0x00020001, 0, 0, UNSUPPORTED, "version",
         PROBE_SAME},
        {"version 0", DYN, SET32, OFF_VERSION, 0, 0, 0, UNSUPPORTED, "version", PROBE_SAME},
        {"header size 0", DYN, SET32, OFF_HEADER_SIZE, 0, 0, 0, CORRUPT, "header size", PROBE_SAME},
        {"header size small", DYN, SET32, OFF_HEADER_SIZE, 0x17c, 0, 0, CORRUPT, "header size",
         PROBE_SAME},
        {"header size big", DYN, SET32, OFF_HEADER_SIZE, 0x1b9, 0, 0, CORRUPT, "header size",
         PROBE_SAME},
        {"header size huge", DYN, SET32, OFF_HEADER_SIZE, 0xffffffff, 0, 0, CORRUPT, "header size",
         PROBE_SAME},
        {"type 0", DYN, SET32, OFF_TYPE, 0, 0, 0, CORRUPT, "type", PROBE_SAME},
        {"type 3 undo", DYN, SET32, OFF_TYPE, 3, 0, 0, UNSUPPORTED, "undo", PROBE_SAME},
        {"type 4 diff", DYN, SET32, OFF_TYPE, 4, 0, 0, UNSUPPORTED, "differencing", PROBE_SAME},
        {"type 99", DYN, SET32, OFF_TYPE, 99, 0, 0, CORRUPT, "type", PROBE_SAME},
        {"sector size 4096", DYN, SET32, OFF_SECTOR_SIZE, 4096, 0, 0, CORRUPT, "sector size",
         PROBE_SAME},
        {"sector size 0", DYN, SET32, OFF_SECTOR_SIZE, 0, 0, 0, CORRUPT, "sector size", PROBE_SAME},
        {"block size 0", DYN, SET32, OFF_BLOCK_SIZE, 0, 0, 0, CORRUPT, "block size", PROBE_SAME},
        {"block size odd", DYN, SET32, OFF_BLOCK_SIZE, MIB + 512, 0, 0, CORRUPT, "block size",
         PROBE_SAME},
        {"block size 256", DYN, SET32, OFF_BLOCK_SIZE, 256, 0, 0, CORRUPT, "block size",
         PROBE_SAME},
        {"block size 1G", DYN, SET32, OFF_BLOCK_SIZE, 1u << 30, 0, 0, CORRUPT, "block size",
         PROBE_SAME},
        {"block size 2G", DYN, SET32, OFF_BLOCK_SIZE, 1u << 31, 0, 0, CORRUPT, "block size",
         PROBE_SAME},
        {"block extra", DYN, SET32, OFF_BLOCK_EXTRA, 512, 0, 0, UNSUPPORTED, "extra", PROBE_SAME},
        {"parent uuid", DYN, UUID, OFF_UUID_PARENT, 0x11, 0, 0, UNSUPPORTED, "parent", PROBE_SAME},
        {"link uuid", DYN, UUID, OFF_UUID_LINK, 0x22, 0, 0, UNSUPPORTED, "parent", PROBE_SAME},
        {"static parent uuid", STATIC, UUID, OFF_UUID_PARENT, 0x33, 0, 0, UNSUPPORTED, "parent",
         PROBE_SAME},
        /* Edges that are valid: the header may end anywhere in 0x180..0x1b8 past 0x48. */
        {"header size max", DYN, SET32, OFF_HEADER_SIZE, 0x1b8, 0, 0, RT_OK, "", PROBE_SAME},
    };
    RUN(table);
}

static void test_sizes_and_counts(void)
{
    static const struct mutation table[] = {
        {"disk size odd", DYN, SET64, OFF_DISK_SIZE, DYN_SIZE - 1, 0, 0, CORRUPT, "disk size",
         PROBE_SAME},
        {"disk size 511", DYN, SET64, OFF_DISK_SIZE, 511, 0, 0, CORRUPT, "disk size", PROBE_SAME},
        {"disk size beyond blocks", DYN, SET64, OFF_DISK_SIZE, DYN_SIZE + 512, 0, 0, CORRUPT,
         "disk size", PROBE_SAME},
        {"disk size max", DYN, SET64, OFF_DISK_SIZE, UINT64_MAX, 0, 0, CORRUPT, "disk size",
         PROBE_SAME},
        {"disk size max aligned", DYN, SET64, OFF_DISK_SIZE, UINT64_MAX - 511, 0, 0, CORRUPT,
         "disk size", PROBE_SAME},
        {"static disk size beyond", STATIC, SET64, OFF_DISK_SIZE, 2ull * STATIC_SIZE, 0, 0, CORRUPT,
         "disk size", PROBE_SAME},
        {"blocks 0", DYN, SET32, OFF_BLOCKS, 0, 0, 0, CORRUPT, "disk size", PROBE_SAME},
        /* 16 GiB of block map in a 3 MiB file. */
        {"blocks huge", DYN, SET32, OFF_BLOCKS, 0xffffffff, 0, 0, CORRUPT, "blocks, more than", PROBE_SAME},
        {"allocated above blocks", DYN, SET32, OFF_ALLOCATED, DYN_SIZE / BLOCK + 1, 0, 0, CORRUPT,
         "allocated", PROBE_SAME},
        {"allocated max", DYN, SET32, OFF_ALLOCATED, 0xffffffff, 0, 0, CORRUPT, "allocated",
         PROBE_SAME},
        {"static allocated above", STATIC, SET32, OFF_ALLOCATED, STATIC_SIZE / BLOCK + 1, 0, 0,
         CORRUPT, "allocated", PROBE_SAME},
    };
    RUN(table);
}

static void test_offsets(void)
{
    static const struct mutation table[] = {
        {"bmap unaligned", DYN, SET32, OFF_BMAP, 513, 0, 0, CORRUPT, "block map offset",
         PROBE_SAME},
        {"bmap zero", DYN, SET32, OFF_BMAP, 0, 0, 0, CORRUPT, "block map offset", PROBE_SAME},
        {"bmap in header", DYN, SET32, OFF_BMAP, 0x100, 0, 0, CORRUPT, "block map offset",
         PROBE_SAME},
        {"bmap past eof", DYN, SET32, OFF_BMAP, 0x7ffffe00, 0, 0, CORRUPT, "block map", PROBE_SAME},
        {"bmap max", DYN, SET32, OFF_BMAP, 0xfffffe00, 0, 0, CORRUPT, "block map", PROBE_SAME},
        {"data unaligned", DYN, SET32, OFF_DATA, 4097, 0, 0, CORRUPT, "data offset", PROBE_SAME},
        {"data over bmap", DYN, SET32, OFF_DATA, 512, 0, 0, CORRUPT, "data offset", PROBE_SAME},
        {"data zero", DYN, SET32, OFF_DATA, 0, 0, 0, CORRUPT, "data offset", PROBE_SAME},
        /* Data blocks moved out past the end of the file by the data offset. */
        {"data far", DYN, SET32, OFF_DATA, 0x40000000, 0, 0, CORRUPT, "past the end", PROBE_SAME},
        {"static data over bmap", STATIC, SET32, OFF_DATA, 512, 0, 0, CORRUPT, "data offset",
         PROBE_SAME},
    };
    RUN(table);
}

static void test_map_entries(void)
{
    /* Blocks 1, 4, 6 hold data blocks 0, 1, 2; the rest are free. */
    static const struct mutation table[] = {
        /* Data block 3: the file holds only 0..2. */
        {"entry past the file", DYN, ENTRY, 2, 3, 0, 0, CORRUPT, "entry 2", PROBE_SAME},
        {"entry huge", DYN, ENTRY, 0, 0x7fffffff, 0, 0, CORRUPT, "entry 0", PROBE_SAME},
        {"entry fffffffd", DYN, ENTRY, 7, 0xfffffffd, 0, 0, CORRUPT, "entry 7", PROBE_SAME},
        /* The count admits data block 3, but the file ends before it. */
        {"entry past eof", DYN, ENTRY, 2, 3, OFF_ALLOCATED, 4, CORRUPT, "past the end", PROBE_SAME},
        {"entry duplicate", DYN, ENTRY, 2, 0, 0, 0, CORRUPT, "data block 0", PROBE_SAME},
        {"entry duplicate late", DYN, ENTRY, 7, 2, 0, 0, CORRUPT, "data block 2", PROBE_SAME},
        {"static duplicate", STATIC, ENTRY, 3, 1, 0, 0, CORRUPT, "data block 1", PROBE_SAME},
        {"static entry beyond", STATIC, ENTRY, 0, STATIC_SIZE / BLOCK, 0, 0, CORRUPT, "entry 0",
         PROBE_SAME},
    };
    RUN(table);
}

static void test_truncation(void)
{
    static const struct mutation table[] = {
        {"truncated 0", DYN, TRUNC, 0, 0, 0, 0, CORRUPT, "small", PROBE_RAW},
        {"truncated 100", DYN, TRUNC, 0, 100, 0, 0, CORRUPT, "small", PROBE_SAME},
        {"truncated 511", DYN, TRUNC, 0, 511, 0, 0, CORRUPT, "small", PROBE_SAME},
        {"truncated in bmap", DYN, TRUNC_BMAP, 0, 16, 0, 0, CORRUPT, "block map", PROBE_SAME},
        {"truncated at bmap", DYN, TRUNC_BMAP, 0, 0, 0, 0, CORRUPT, "block map", PROBE_SAME},
        {"truncated in data", DYN, TRUNC_DATA, 0, BLOCK + BLOCK / 2, 0, 0, CORRUPT, "past the end",
         PROBE_SAME},
        {"truncated by a byte", DYN, TRUNC_DATA, 0, DYN_WRITTEN * BLOCK - 1, 0, 0, CORRUPT,
         "past the end", PROBE_SAME},
        {"static truncated", STATIC, TRUNC_DATA, 0, STATIC_SIZE - 512, 0, 0, CORRUPT,
         "past the end", PROBE_SAME},
        /* Before any data block: a dynamic image with data needs its blocks. */
        {"truncated at data", DYN, TRUNC_DATA, 0, 0, 0, 0, CORRUPT, "past the end", PROBE_SAME},
    };
    RUN(table);
}

/* 0xfffffffe is a valid entry ("reads as zeros"): on a free block and over a data
 * block, whose data block then leaks. */
static void test_zero_entries_accepted(void)
{
    char path[512];
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    rt_vd_extent_t ext;
    rt_vd_check_result_t res;

    tst_path(path, sizeof path, "zero-entries.vdi");
    copy_file(dyn_path, path);
    patch32(path, dyn_bmap + 4 * 0, ENTRY_ZERO);
    patch32(path, dyn_bmap + 4 * dyn_blocks[0], ENTRY_ZERO);

    uint8_t *want = dyn_expected();
    memset(want + (uint64_t)dyn_blocks[0] * BLOCK, 0, BLOCK);
    const char *formats[] = {"vdi", NULL};
    for (int f = 0; f < 2; f++) {
        TST_RC_FATAL(rt_vd_open(&vd, path, formats[f], RT_VD_OPEN_READ_ONLY, &err), RT_OK);
        uint8_t *got = read_all(vd, DYN_SIZE);
        CU_ASSERT(memcmp(got, want, DYN_SIZE) == 0);
        free(got);
        /* Blocks 0 and 1: zeros the image records. */
        TST_RC(rt_vd_block_status(vd, 0, DYN_SIZE, &ext), RT_OK);
        CU_ASSERT_EQUAL(ext.offset, 0);
        CU_ASSERT_EQUAL(ext.length, 2 * BLOCK);
        CU_ASSERT_EQUAL(ext.flags, RT_VD_EXTENT_ZERO | RT_VD_EXTENT_ALLOCATED);
        CU_ASSERT_EQUAL(ext.host_offset, UINT64_MAX);
        /* Block 2: not described by the image. */
        TST_RC(rt_vd_block_status(vd, 2 * BLOCK, BLOCK, &ext), RT_OK);
        CU_ASSERT_EQUAL(ext.flags, RT_VD_EXTENT_ZERO);
        TST_RC(rt_vd_block_status(vd, (uint64_t)dyn_blocks[1] * BLOCK, BLOCK, &ext), RT_OK);
        CU_ASSERT_EQUAL(ext.flags, RT_VD_EXTENT_DATA | RT_VD_EXTENT_ALLOCATED);
        TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
        CU_ASSERT_EQUAL(res.corruptions, 0);
        CU_ASSERT_EQUAL(res.leaks, 1); /* data block 0, no longer referenced */
        TST_RC(rt_vd_close(vd), RT_OK);
    }

    /* A write into a zero block allocates it; the rest of the block stays zero. */
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", 0, &err), RT_OK);
    uint8_t small[1000];
    memset(small, 0xc3, sizeof small);
    TST_RC(rt_vd_write(vd, 5000, small, sizeof small), RT_OK);
    memcpy(want + 5000, small, sizeof small);
    uint8_t *got = read_all(vd, DYN_SIZE);
    CU_ASSERT(memcmp(got, want, DYN_SIZE) == 0);
    free(got);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    got = read_all(vd, DYN_SIZE);
    CU_ASSERT(memcmp(got, want, DYN_SIZE) == 0);
    free(got);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    free(want);
}

/* ---------------------------------------------------------------------------------- */
/* Check and leak repair. */

/* Checks, repairs and re-checks an image holding @a leaks leaked blocks; the guest
 * contents must be @a want throughout and after a reopen; the file must end up
 * holding exactly @a referenced data blocks. */
static void check_and_repair(const char *path, uint64_t leaks, const uint8_t *want,
                             uint32_t referenced)
{
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    rt_vd_check_result_t res;

    /* Read-only: reports, refuses to repair. */
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    CU_ASSERT_EQUAL(res.leaks, leaks);
    CU_ASSERT_EQUAL(res.leaks_fixed, 0);
    CU_ASSERT(mentions(res.first_problem, "unused") || mentions(res.first_problem, "leak"));
    TST_RC(rt_vd_check(vd, RT_VD_CHECK_REPAIR_LEAKS, &res), RT_ERR_VD_READ_ONLY);
    TST_RC(rt_vd_close(vd), RT_OK);

    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", 0, &err), RT_OK);
    uint8_t *got = read_all(vd, DYN_SIZE);
    CU_ASSERT(memcmp(got, want, DYN_SIZE) == 0);
    free(got);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    CU_ASSERT_EQUAL(res.leaks, leaks);
    CU_ASSERT_EQUAL(res.blocks_allocated, referenced);
    CU_ASSERT_EQUAL(res.blocks_total, DYN_SIZE / BLOCK);

    TST_RC(rt_vd_check(vd, RT_VD_CHECK_REPAIR_LEAKS, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    CU_ASSERT_EQUAL(res.leaks_fixed, leaks);
    CU_ASSERT_EQUAL(res.leaks, 0);

    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    CU_ASSERT_EQUAL(res.leaks, 0);
    CU_ASSERT_STRING_EQUAL(res.first_problem, "");
    got = read_all(vd, DYN_SIZE);
    CU_ASSERT(memcmp(got, want, DYN_SIZE) == 0);
    free(got);

    /* The repaired image takes new allocations after the moved blocks. */
    TST_RC(rt_vd_close(vd), RT_OK);

    CU_ASSERT_EQUAL(read32(path, OFF_ALLOCATED), referenced);
    CU_ASSERT_EQUAL(file_size(path), dyn_data + (uint64_t)referenced * BLOCK);
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    got = read_all(vd, DYN_SIZE);
    CU_ASSERT(memcmp(got, want, DYN_SIZE) == 0);
    free(got);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
    TST_RC(rt_vd_close(vd), RT_OK);

    int clean = qemu_img_clean(path);
    if (clean < 0)
        note_no_qemu_img("the repaired image is");
    else
        CU_ASSERT_EQUAL(clean, 1);
}

/* What a crash between commit's header write and its map writes leaves: a header count
 * above the blocks the map uses (here with the blocks' data never written). */
static void test_check_count_leak(void)
{
    char path[512];
    tst_path(path, sizeof path, "leak-count.vdi");
    copy_file(dyn_path, path);
    patch32(path, OFF_ALLOCATED, DYN_WRITTEN + 2);
    uint8_t *want = dyn_expected();
    check_and_repair(path, 2, want, DYN_WRITTEN);
    free(want);
}

/* The same with the leaked blocks' data written (the file extended past the count's
 * end too, as by an allocation whose count never reached the header). */
static void test_check_count_leak_with_data(void)
{
    char path[512];
    tst_path(path, sizeof path, "leak-data.vdi");
    copy_file(dyn_path, path);
    patch32(path, OFF_ALLOCATED, DYN_WRITTEN + 1);
    /* One leaked block inside the count, and a block and a half past it. */
    uint64_t end = dyn_data + (uint64_t)(DYN_WRITTEN + 2) * BLOCK + BLOCK / 2;
    resize(path, end);
    uint8_t junk[4096];
    memset(junk, 0xee, sizeof junk);
    patch(path, end - sizeof junk, junk, sizeof junk);
    uint8_t *want = dyn_expected();
    check_and_repair(path, 3, want, DYN_WRITTEN);
    free(want);
}

/* A hole: data block 0 unreferenced while 1 and 2 are used.  Repair moves the last
 * block into the hole and shrinks the file. */
static void test_check_hole_leak(void)
{
    char path[512];
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    rt_vd_extent_t ext;

    tst_path(path, sizeof path, "leak-hole.vdi");
    copy_file(dyn_path, path);
    patch32(path, dyn_bmap + 4 * dyn_blocks[0], ENTRY_FREE);
    uint8_t *want = dyn_expected();
    memset(want + (uint64_t)dyn_blocks[0] * BLOCK, 0, BLOCK);
    check_and_repair(path, 1, want, DYN_WRITTEN - 1);

    /* Data block 0 now holds what data block 2 held (guest block 6). */
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    TST_RC(rt_vd_block_status(vd, (uint64_t)dyn_blocks[2] * BLOCK, BLOCK, &ext), RT_OK);
    CU_ASSERT_EQUAL(ext.flags, RT_VD_EXTENT_DATA | RT_VD_EXTENT_ALLOCATED);
    CU_ASSERT_EQUAL(ext.host_offset, dyn_data);
    TST_RC(rt_vd_close(vd), RT_OK);

    /* And takes writes: a new block lands after the two, nothing else moves. */
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", 0, &err), RT_OK);
    uint8_t small[4096];
    memset(small, 0x7d, sizeof small);
    TST_RC(rt_vd_write(vd, 7 * (uint64_t)BLOCK, small, sizeof small), RT_OK);
    memcpy(want + 7 * (uint64_t)BLOCK, small, sizeof small);
    TST_RC(rt_vd_close(vd), RT_OK);
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    uint8_t *got = read_all(vd, DYN_SIZE);
    CU_ASSERT(memcmp(got, want, DYN_SIZE) == 0);
    free(got);
    TST_RC(rt_vd_close(vd), RT_OK);
    CU_ASSERT_EQUAL(read32(path, OFF_ALLOCATED), DYN_WRITTEN);
    free(want);
    if (qemu_img_clean(path) == 0)
        CU_FAIL("qemu-img check after a write to the repaired image");
}

/* Two holes and a zero entry over a once-used block: the repair fills both holes. */
static void test_check_two_holes(void)
{
    char path[512];
    tst_path(path, sizeof path, "leak-holes.vdi");
    copy_file(dyn_path, path);
    patch32(path, dyn_bmap + 4 * dyn_blocks[0], ENTRY_FREE);
    patch32(path, dyn_bmap + 4 * dyn_blocks[1], ENTRY_ZERO);
    uint8_t *want = dyn_expected();
    memset(want + (uint64_t)dyn_blocks[0] * BLOCK, 0, BLOCK);
    memset(want + (uint64_t)dyn_blocks[1] * BLOCK, 0, BLOCK);
    check_and_repair(path, 2, want, 1);
    free(want);
}

/* The image at @a path reopened read-only reads exactly @a want (freed), checks clean,
 * and qemu-img agrees (@a what names the case when it does not). */
static void expect_clean_copy(const char *path, uint8_t *want, const char *what)
{
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    rt_vd_check_result_t res;
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    uint8_t *got = read_all(vd, DYN_SIZE);
    CU_ASSERT(memcmp(got, want, DYN_SIZE) == 0);
    free(got);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions + res.leaks, 0);
    TST_RC(rt_vd_close(vd), RT_OK);
    free(want);
    if (qemu_img_clean(path) == 0)
        CU_FAIL(what);
}

/* An entry at or past the header's count, inside the file: what a machine crash can
 * leave of a commit's one write (the map sector landed, the header sector not).  It
 * opens and reads; check reports the count (another writer would append onto a block
 * in use); this driver appends past it and writes a right count at its next commit. */
static void test_entry_above_count(void)
{
    char path[512];
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    rt_vd_check_result_t res;

    tst_path(path, sizeof path, "above-count.vdi");
    copy_file(dyn_path, path);
    resize(path, dyn_data + (uint64_t)(DYN_WRITTEN + 1) * BLOCK);
    uint8_t mark[4096];
    memset(mark, 0x6e, sizeof mark);
    patch(path, dyn_data + (uint64_t)DYN_WRITTEN * BLOCK, mark, sizeof mark);
    patch32(path, dyn_bmap + 4 * 2, DYN_WRITTEN); /* guest block 2 -> data block 3 */
    uint8_t *want = dyn_expected();
    memcpy(want + 2 * (uint64_t)BLOCK, mark, sizeof mark);

    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", RT_VD_OPEN_READ_ONLY, &err), RT_OK);
    uint8_t *got = read_all(vd, DYN_SIZE);
    CU_ASSERT(memcmp(got, want, DYN_SIZE) == 0);
    free(got);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT(res.corruptions > 0);
    CU_ASSERT(mentions(res.first_problem, "counts"));
    TST_RC(rt_vd_close(vd), RT_OK);

    /* A write needing a block takes data block 4, and the count covers all of them. */
    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", 0, &err), RT_OK);
    uint8_t small[4096];
    memset(small, 0x33, sizeof small);
    TST_RC(rt_vd_write(vd, 7 * (uint64_t)BLOCK, small, sizeof small), RT_OK);
    memcpy(want + 7 * (uint64_t)BLOCK, small, sizeof small);
    TST_RC(rt_vd_close(vd), RT_OK);
    CU_ASSERT_EQUAL(read32(path, OFF_ALLOCATED), DYN_WRITTEN + 2);
    CU_ASSERT_EQUAL(read32(path, dyn_bmap + 4 * 7), DYN_WRITTEN + 1);
    expect_clean_copy(path, want, "qemu-img check after the count was rewritten");
}

/* Every data block counted, some only by leaks (a crash can leave that): a write that
 * needs a new block is refused or done, never lands on a used block; after the repair
 * it is done. */
static void test_full_count_with_leaks(void)
{
    char path[512];
    rt_vd_t vd = RT_VD_NIL;
    rt_vd_error_t err;
    rt_vd_check_result_t res;

    tst_path(path, sizeof path, "leak-full.vdi");
    copy_file(dyn_path, path);
    patch32(path, OFF_ALLOCATED, DYN_SIZE / BLOCK);
    uint8_t *want = dyn_expected();
    uint8_t small[4096];
    memset(small, 0x99, sizeof small);

    TST_RC_FATAL(rt_vd_open(&vd, path, "vdi", 0, &err), RT_OK);
    int rc = rt_vd_write(vd, 0, small, sizeof small);
    if (rc == RT_OK)
        memcpy(want, small, sizeof small);
    else
        printf("\n  note: a write needing a block on a full-count image: %s ", rt_status_name(rc));
    uint8_t *got = read_all(vd, DYN_SIZE);
    CU_ASSERT(memcmp(got, want, DYN_SIZE) == 0);
    free(got);
    TST_RC(rt_vd_check(vd, 0, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    TST_RC(rt_vd_check(vd, RT_VD_CHECK_REPAIR_LEAKS, &res), RT_OK);
    CU_ASSERT_EQUAL(res.corruptions, 0);
    TST_RC(rt_vd_write(vd, 0, small, sizeof small), RT_OK);
    memcpy(want, small, sizeof small);
    TST_RC(rt_vd_close(vd), RT_OK);
    expect_clean_copy(path, want, "qemu-img check after repairing a full-count image");
}

int main(void)
{
    create_images();

    CU_pSuite valid = tst_suite("valid images");
    CU_pSuite refused = tst_suite("malformed images refused");
    CU_pSuite check = tst_suite("check and leak repair");

    TST_ADD(valid, test_valid_images_open);
    TST_ADD(valid, test_zero_entries_accepted);

    TST_ADD(refused, test_header_fields);
    TST_ADD(refused, test_sizes_and_counts);
    TST_ADD(refused, test_offsets);
    TST_ADD(refused, test_map_entries);
    TST_ADD(refused, test_truncation);

    TST_ADD(check, test_check_count_leak);
    TST_ADD(check, test_check_count_leak_with_data);
    TST_ADD(check, test_check_hole_leak);
    TST_ADD(check, test_check_two_holes);
    TST_ADD(check, test_full_count_with_leaks);
    TST_ADD(check, test_entry_above_count);

    return tst_run();
}
